"""Tiny seeded h5ad files in the exact layouts the public datasets are distributed in.

Never fetched: each writer draws Poisson counts from a small seeded model (a
profile per cell type, a shift per subtype, a shift per condition and cell type)
and lays the cells out as the distribution does (obs / var names, dtypes, where
the counts live). Test modules load this file with :func:`load` (the test suite
runs in importlib mode, without packages).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _counts(
    cell_types: np.ndarray,
    subtypes: np.ndarray,
    conditions: np.ndarray,
    n_genes: int,
    seed: int,
    effect: float = 1.2,
) -> sp.csr_matrix:
    """Poisson counts: log rate = type profile + subtype shift + condition x type shift."""
    rng = np.random.default_rng(seed)
    log_rate = np.zeros((cell_types.size, n_genes))
    for level_set, scale in ((cell_types, 1.0), (subtypes, 0.8)):
        for level in np.unique(level_set):
            log_rate[level_set == level] += rng.normal(0.0, scale, n_genes)
    for t in np.unique(cell_types):
        for c in np.unique(conditions):
            members = (cell_types == t) & (conditions == c)
            if c not in ("ctrl", "control", "0", "PBS"):
                log_rate[members] += effect * rng.normal(0.0, 1.0, n_genes)
    library = rng.normal(0.0, 0.2, cell_types.size)[:, None]
    counts = rng.poisson(np.exp(log_rate + library + 0.5))
    return sp.csr_matrix(counts.astype(np.float32))


def _design(types: list[str], conditions: list[str], per_group: int, seed: int):
    """Every (type, subtype in {0, 1}, condition) group with ``per_group`` cells."""
    rows = [
        (t, f"{t} {s}", c)
        for t in types
        for s in (0, 1)
        for c in conditions
        for _ in range(per_group)
    ]
    order = np.random.default_rng(seed).permutation(len(rows))
    table = np.asarray(rows, dtype=object)[order]
    return table[:, 0].astype(str), table[:, 1].astype(str), table[:, 2].astype(str)


def _barcodes(n: int, seed: int, suffix: str = "-1") -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.asarray(list("ACGT"))
    return ["".join(rng.choice(letters, 14)) + f"{i:04d}" + suffix for i in range(n)]


def _genes(n: int) -> pd.DataFrame:
    return pd.DataFrame(index=[f"GENE{i}" for i in range(n)])


KANG_TYPES = ["B cells", "CD4 T cells", "CD14+ Monocytes", "NK cells"]


def kang_pertpy(path: Path, *, per_group: int = 30, n_genes: int = 60, seed: int = 0) -> Path:
    """pertpy ``kang_2018`` / ``kang_counts_25k.h5ad``: counts in X (float32 CSR),
    obs ``label`` (ctrl / stim), ``cell_type``, ``replicate`` and Seurat QC columns,
    plus a handful of megakaryocytes (dropped, as in the paper)."""
    types, subtypes, labels = _design(KANG_TYPES, ["ctrl", "stim"], per_group, seed)
    types = np.concatenate([types, ["Megakaryocytes"] * 6])
    subtypes = np.concatenate([subtypes, ["Megakaryocytes 0"] * 6])
    labels = np.concatenate([labels, ["ctrl", "stim"] * 3])
    counts = _counts(types, subtypes, labels, n_genes, seed)
    rng = np.random.default_rng(seed + 1)
    obs = pd.DataFrame(
        {
            "nCount_RNA": np.asarray(counts.sum(axis=1)).ravel().astype(np.float64),
            "nFeature_RNA": np.asarray((counts > 0).sum(axis=1)).ravel().astype(np.int32),
            "tsne1": rng.normal(size=types.size),
            "tsne2": rng.normal(size=types.size),
            "label": pd.Categorical(labels, categories=["ctrl", "stim"]),
            "cluster": rng.integers(1, 14, types.size).astype(np.int32),
            "cell_type": pd.Categorical(types),
            "replicate": pd.Categorical(rng.choice(["patient_101", "patient_1015"], types.size)),
        },
        index=_barcodes(types.size, seed),
    )
    adata = ad.AnnData(X=counts, obs=obs, var=_genes(n_genes))
    adata.uns["true_subtype"] = subtypes  # for tests only
    adata.write_h5ad(path)
    return path


def kang_scgen(path: Path, *, per_group: int = 30, n_genes: int = 60, seed: int = 0) -> Path:
    """scGen ``kang_count.h5ad``: counts in X, obs ``condition`` (control /
    stimulated) and ``cell_type`` with scGen's short names."""
    short = ["B", "CD4T", "CD14+Mono", "NK"]
    types, subtypes, conditions = _design(short, ["control", "stimulated"], per_group, seed)
    counts = _counts(types, subtypes, conditions, n_genes, seed)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(conditions), "cell_type": pd.Categorical(types)},
        index=_barcodes(types.size, seed),
    )
    ad.AnnData(X=counts, obs=obs, var=_genes(n_genes)).write_h5ad(path)
    return path


def norman_scperturb(path: Path, *, per_group: int = 40, n_genes: int = 60, seed: int = 0) -> Path:
    """scPerturb ``NormanWeissman2019_filtered.h5ad``: counts in X (float32 CSR), obs
    ``perturbation`` (``control``, single genes, pairs joined by ``_``), ``nperts``,
    ``cell_line`` (K562), ``gemgroup`` and scPerturb's harmonised columns."""
    perturbations = ["control", "CEBPE", "KLF1", "SET", "CEBPE_KLF1", "KLF1_SET"]
    labels = np.repeat(perturbations, per_group)
    labels = np.concatenate([labels, np.repeat("control", per_group)])  # more controls
    rng = np.random.default_rng(seed)
    labels = labels[rng.permutation(labels.size)]
    cells = np.full(labels.size, "K562")
    counts = _counts(cells, cells, labels, n_genes, seed)
    nperts = np.asarray([0 if p == "control" else p.count("_") + 1 for p in labels])
    obs = pd.DataFrame(
        {
            "guide_id": pd.Categorical([f"{p}__guide" for p in labels]),
            "gemgroup": rng.integers(1, 9, labels.size).astype(np.int64),
            "tissue_type": pd.Categorical(np.full(labels.size, "cell_line")),
            "cell_line": pd.Categorical(cells),
            "celltype": pd.Categorical(np.full(labels.size, "lymphoblasts")),
            "perturbation_type": pd.Categorical(np.full(labels.size, "CRISPR")),
            "perturbation": pd.Categorical(labels),
            "nperts": nperts.astype(np.int64),
            "ncounts": np.asarray(counts.sum(axis=1)).ravel(),
        },
        index=_barcodes(labels.size, seed),
    )
    ad.AnnData(X=counts, obs=obs, var=_genes(n_genes)).write_h5ad(path)
    return path


NAULT_TYPES = ["Hepatocytes - central", "Hepatocytes - portal", "Cholangiocytes", "Stellate Cells"]


def nault_scvidr(path: Path, *, per_group: int = 25, n_genes: int = 60, seed: int = 0) -> Path:
    """scVIDR ``nault2021_multiDose.h5ad``: counts in X, obs ``Dose`` (float64 µg/kg,
    0 = control), ``batch`` and ``celltype``."""
    doses = ["0", "3", "30"]
    types, subtypes, dose = _design(NAULT_TYPES, doses, per_group, seed)
    counts = _counts(types, subtypes, dose, n_genes, seed)
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "Dose": dose.astype(np.float64),
            "batch": pd.Categorical(rng.choice(["0", "1"], types.size)),
            "celltype": pd.Categorical(types),
        },
        index=_barcodes(types.size, seed),
    )
    ad.AnnData(X=counts, obs=obs, var=_genes(n_genes)).write_h5ad(path)
    return path


def cui_dictionary(path: Path, *, per_group: int = 25, n_genes: int = 60, seed: int = 0) -> Path:
    """Immune Dictionary: log-normalised X, raw counts in ``layers["counts"]``, obs
    ``sample`` (PBS control, cytokines) and ``celltype``."""
    types, subtypes, sample = _design(
        ["T cell CD4", "NK cell"], ["PBS", "IL15", "TNFa"], per_group, seed
    )
    counts = _counts(types, subtypes, sample, n_genes, seed)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    lognorm = sp.csr_matrix(np.log1p(sp.diags(1e4 / totals) @ counts).astype(np.float32))
    obs = pd.DataFrame(
        {"sample": pd.Categorical(sample), "celltype": pd.Categorical(types)},
        index=_barcodes(types.size, seed),
    )
    adata = ad.AnnData(X=lognorm, obs=obs, var=_genes(n_genes))
    adata.layers["counts"] = counts
    adata.write_h5ad(path)
    return path


WRITERS = {
    "kang2017": kang_pertpy,
    "norman2019": norman_scperturb,
    "nault2023": nault_scvidr,
    "cui2024": cui_dictionary,
}
