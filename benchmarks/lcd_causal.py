"""Causal recovery and held-out perturbations of ``lcd`` + CLIPR on the linear-sde process.

Usage: ``python benchmarks/lcd_causal.py [--genes 20 50] [--seeds 0 1 2] [--preset fast]``.
Prints one row per (d, seed, estimator) with directed and undirected AUROC / F1,
and per (d, seed) the held-out double errors of ``lcd`` against the additive
baseline, all against the exact twins of the gaussian observation.

Rows: ``lcd+clipr`` (CLIPR on the learned drift), ``de`` (differential
expression: the total effect), ``score-clipr`` (CLIPR on the exact stationary
score, i.e. −Σ⁻¹: what a perfectly trained score model gives), ``drift-clipr``
(CLIPR on the true drift: A itself, a check).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from simcell.evaluation import metrics as M
from simcell.models import create_model
from simcell.models.clipr import clipr, differential_expression_matrix
from simcell.simulator import linear_sde as L

SCORES = (
    "auroc",
    "auroc_undirected",
    "f1",
    "f1_undirected",
    "pearson",
    "pearson_undirected",
)


def causal_rows(d: int, seed: int, preset: str, device: str) -> tuple[list[dict], list[dict]]:
    params = L.LinearSDEParams(
        n_genes=d, cells_per_condition=200, n_doubles=4, n_heldout_singles=2, observation="gaussian"
    )
    data = L.simulate_linear_sde(params, seed)
    system, x, u = data.system, data.programs, data.indicators
    train = np.isin(data.condition, np.r_[0, 1 + data.train_singles])
    started = time.perf_counter()
    model = create_model("lcd", preset=preset, device=device, seed=seed, progress_bar=False)
    model.fit(x[train].astype(np.float32), u[train].astype(np.float32))
    seconds = time.perf_counter() - started
    singles = data.train_singles
    fixed = system.mean(np.eye(d)[singles])
    precision = np.linalg.inv(system.covariance)
    estimates = {
        "lcd+clipr": model.clipr(singles, tikhonov=0.0).drift_matrix,
        "de": differential_expression_matrix(x[train], u[train]),
        "score-clipr": clipr((precision @ fixed.T).T, fixed).drift_matrix,
        "drift-clipr": clipr(
            system.drift(np.zeros_like(fixed), np.eye(d)[singles]), fixed
        ).drift_matrix,
    }
    causal = []
    for name, matrix in estimates.items():
        row = {"d": d, "seed": seed, "estimator": name, "seconds": seconds}
        row.update({s: getattr(M, f"causal_{s}")(matrix, system.drift_matrix) for s in SCORES})
        causal.append(row)
    heldout = []
    for task in L.make_linear_sde_tasks(data):
        cells = np.flatnonzero(task.split == "intervene")
        target = data.conditions[task.target].astype(np.float64)
        twins = data.twin_programs(cells, np.repeat(target[None], cells.size, axis=0))
        source_u = u[cells]
        target_u = np.repeat(target[None], cells.size, axis=0)
        lcd = model.counterfactual(x[cells].astype(np.float32), source_u, target_u)
        ctrl = x[train & (data.condition == 0)].mean(axis=0)
        on = train & (data.condition == 1 + task.concept)
        # additive: add the trained single's mean shift (0 for an unseen single)
        additive = x[cells] + (x[on].mean(axis=0) - ctrl if on.any() else 0.0)
        kind = "double" if task.source else "single"
        for name, pred in (("lcd", lcd), ("additive", additive), ("identity", x[cells])):
            heldout.append(
                {
                    "d": d,
                    "seed": seed,
                    "task": f"{task.name}:{kind}",
                    "model": name,
                    "mse": float(M.mse(pred, twins).mean()),
                    "mean_rmse": float(np.sqrt(np.mean((pred.mean(0) - twins.mean(0)) ** 2))),
                    "sd_rmse": float(np.sqrt(np.mean((pred.std(0) - twins.std(0)) ** 2))),
                    "energy": float(M.energy_distance(pred, twins)),
                    "mmd": float(M.mmd(pred, twins, device="cpu")),
                }
            )
    print(f"# d={d} seed={seed}: lcd ({preset}) trained in {seconds:.0f} s", flush=True)
    return causal, heldout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--genes", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import pandas as pd

    causal, heldout = [], []
    for d in args.genes:
        for seed in args.seeds:
            c, h = causal_rows(d, seed, args.preset, args.device)
            causal += c
            heldout += h
    causal, heldout = pd.DataFrame(causal), pd.DataFrame(heldout)
    pd.set_option("display.width", 200)
    print(causal.round(3).to_string(index=False))
    print(causal.groupby(["d", "estimator"])[list(SCORES)].agg(["mean", "std"]).round(3))
    print(causal.groupby("d")["seconds"].mean().round(1).rename("lcd training seconds"))
    heldout["kind"] = heldout["task"].str.split(":").str[1]
    print(
        heldout.groupby(["d", "kind", "model"])[["mse", "mean_rmse", "sd_rmse", "energy", "mmd"]]
        .mean()
        .round(3)
    )


if __name__ == "__main__":
    main()
