"""Real-data bundles from the public datasets' layouts (fixtures written by
tests/real_layouts.py, never fetched)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from simcell import SimcellError
from simcell.simulator import read_bundle, schema
from simcell.simulator.real import (
    OBS_BROAD_CELL_TYPE,
    OBS_CONDITION,
    discover_subtypes,
    find_counts,
    real_bundle,
)


def _layouts():
    path = Path(__file__).resolve().parents[1] / "real_layouts.py"
    spec = importlib.util.spec_from_file_location("real_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


L = _layouts()
FAST = {"top_genes": None, "min_cells": 10}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    written = {name: writer(root / f"{name}.h5ad") for name, writer in L.WRITERS.items()}
    written["kang_scgen"] = L.kang_scgen(root / "kang_count.h5ad")
    return written


@pytest.fixture(scope="module")
def kang(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "kang"
    real_bundle(files["kang2017"], "kang2017", out, **FAST)
    return read_bundle(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kang_bundle_holds_the_files_counts_concepts_and_checksum(files, kang):
    source = ad.read_h5ad(files["kang2017"])
    factual = kang.factual
    assert kang.counterfactual is None and not schema.has_truth(kang)
    assert kang.manifest[schema.MANIFEST_PARAMS]["input_sha256"] == _sha256(files["kang2017"])
    assert list(kang.manifest[schema.MANIFEST_CHECKSUMS]) == [schema.FACTUAL]
    # megakaryocytes are dropped (paper D.1.1); every other cell keeps its exact counts
    kept = source.obs["cell_type"].to_numpy() != "Megakaryocytes"
    assert list(factual.obs_names) == list(source.obs_names[kept])
    assert factual.X.dtype == np.int32
    assert (factual.X != sp.csr_matrix(source.X[kept]).astype(np.int32)).nnz == 0
    # concepts: the stimulation and the broad cell types, exactly the file's columns
    concepts = factual.obsm[schema.CONCEPTS]
    assert list(concepts.columns) == [
        "label=stim",
        *[f"cell_type={t}" for t in sorted(L.KANG_TYPES)],
    ]
    label = source.obs["label"].to_numpy()[kept].astype(str)
    np.testing.assert_array_equal(concepts["label=stim"].to_numpy(), label == "stim")
    broad = factual.obs[OBS_BROAD_CELL_TYPE].to_numpy().astype(str)
    for t in L.KANG_TYPES:
        np.testing.assert_array_equal(concepts[f"cell_type={t}"].to_numpy(), broad == t)
    np.testing.assert_array_equal(factual.obs[OBS_CONDITION].to_numpy().astype(str), label)


def test_kang_proxy_tasks_hold_out_one_subtype_under_stimulation(kang):
    factual = kang.factual
    tasks = schema.read_tasks(factual)
    # plain subtype discovery finds the two subtypes of each of the four broad types
    assert [t.name for t in tasks] == [
        "B_cells_0",
        "B_cells_1",
        "CD14_Monocytes_0",
        "CD14_Monocytes_1",
        "CD4_T_cells_0",
        "CD4_T_cells_1",
        "NK_cells_0",
        "NK_cells_1",
    ]
    subtype = schema.cell_types(factual)
    stim = factual.obs[OBS_CONDITION].to_numpy().astype(str) == "stim"
    for task in tasks:
        assert task.concept == "label=stim"
        split = schema.read_split(factual, task.name)
        in_type = subtype == task.cell_type
        np.testing.assert_array_equal(split == schema.HELDOUT, in_type & stim)
        controls = in_type & ~stim
        edited = split == schema.INTERVENE
        assert not (edited & ~controls).any()
        assert edited.sum() == controls.sum() - controls.sum() // 2
        assert (split[~(in_type & stim) & ~edited] == schema.TRAIN).all()


def test_plain_subtypes_recover_the_planted_ones_and_are_seeded(files):
    source = ad.read_h5ad(files["kang2017"])
    truth = np.asarray(source.uns["true_subtype"]).astype(str)
    counts, _ = find_counts(source)
    broad = source.obs["cell_type"].to_numpy().astype(str)
    label = source.obs["label"].to_numpy().astype(str)
    found = discover_subtypes(counts, broad, label, "ctrl", mode="plain", min_cells=10, seed=3)
    assert adjusted_rand_score(truth, found) > 0.95
    again = discover_subtypes(counts, broad, label, "ctrl", mode="plain", min_cells=10, seed=3)
    np.testing.assert_array_equal(found, again)
    # "none": the broad type is its own subtype
    same = discover_subtypes(counts, broad, label, "ctrl", mode="none")
    np.testing.assert_array_equal(same, broad)


def test_scanpy_subtypes_need_the_extra():
    if importlib.util.find_spec("scanpy") and importlib.util.find_spec("harmonypy"):
        pytest.skip("scanpy and harmonypy are installed")
    counts = sp.csr_matrix(np.ones((60, 5), dtype=np.int32))
    broad = np.full(60, "T")
    label = np.repeat(["ctrl", "stim"], 30)
    with pytest.raises(SimcellError, match=r"pip install 'simcell\[real\]'"):
        discover_subtypes(counts, broad, label, "ctrl", mode="scanpy", min_cells=5)


@pytest.mark.slow
def test_scanpy_subtypes_as_in_the_paper(files):
    """Harmony + Leiden (measured: ARI 0.74 against the planted subtypes; Leiden at
    resolution 0.3 splits some of these 60-cell groups further)."""
    pytest.importorskip("scanpy")
    pytest.importorskip("harmonypy")
    source = ad.read_h5ad(files["kang2017"])
    truth = np.asarray(source.uns["true_subtype"]).astype(str)
    counts, _ = find_counts(source)
    broad = source.obs["cell_type"].to_numpy().astype(str)
    label = source.obs["label"].to_numpy().astype(str)
    found = discover_subtypes(counts, broad, label, "ctrl", mode="scanpy", min_cells=10)
    assert adjusted_rand_score(truth, found) > 0.5
    assert all(f.startswith(b) for f, b in zip(found, broad, strict=True))


def test_scgen_layout_is_recognised(files, tmp_path):
    data = real_bundle(files["kang_scgen"], "kang2017", tmp_path / "b", subtypes="none", **FAST)
    assert data.params["condition_key"] == "condition" and data.params["control"] == "control"
    assert [t["concept"] for t in data.tasks] == ["condition=stimulated"] * 4
    assert [t["cell_type"] for t in data.tasks] == ["B", "CD14+Mono", "CD4T", "NK"]


def test_norman_combinations_switch_on_each_perturbation(files, tmp_path):
    data = real_bundle(files["norman2019"], "norman2019", tmp_path / "b", **FAST)
    factual = data.factual
    concepts = factual.obsm[schema.CONCEPTS]
    assert list(concepts.columns) == [
        "perturbation=CEBPE",
        "perturbation=KLF1",
        "perturbation=SET",
        "cell_line=K562",
    ]
    condition = factual.obs[OBS_CONDITION].to_numpy().astype(str)
    on = concepts.to_numpy()[:, :3] == 1
    expected = {
        "control": [0, 0, 0],
        "CEBPE": [1, 0, 0],
        "KLF1": [0, 1, 0],
        "SET": [0, 0, 1],
        "CEBPE_KLF1": [1, 1, 0],
        "KLF1_SET": [0, 1, 1],
    }
    for value, row in expected.items():
        assert (on[condition == value] == np.asarray(row, dtype=bool)).all()
    # one task per single perturbation; its held-out cells are that perturbation alone
    assert [t["concept"] for t in data.tasks] == list(concepts.columns[:3])
    assert [t["name"] for t in data.tasks] == ["K562__CEBPE", "K562__KLF1", "K562__SET"]
    split = factual.obs[schema.split_column("K562__KLF1")].to_numpy().astype(str)
    np.testing.assert_array_equal(split == schema.HELDOUT, condition == "KLF1")
    assert set(condition[split == schema.INTERVENE]) == {"control"}
    with pytest.raises(SimcellError, match="combination of perturbations"):
        real_bundle(
            files["norman2019"],
            "norman2019",
            tmp_path / "c",
            tasks=[("K562", "CEBPE_KLF1")],
            **FAST,
        )


def test_nault_numeric_dose_control_and_cui_counts_layer(files, tmp_path):
    nault = real_bundle(files["nault2023"], "nault2023", tmp_path / "n", **FAST)
    assert nault.params["control"] == "0"
    assert {t["concept"] for t in nault.tasks} == {"Dose=3", "Dose=30"}
    assert len(nault.tasks) == 2 * len(L.NAULT_TYPES)
    cui = real_bundle(files["cui2024"], "cui2024", tmp_path / "c", **FAST)
    source = ad.read_h5ad(files["cui2024"])
    assert cui.params["counts_from"] == "layers['counts']"
    assert (cui.factual.X != sp.csr_matrix(source.layers["counts"]).astype(np.int32)).nnz == 0
    assert read_bundle(tmp_path / "c").counterfactual is None


def test_generic_perturbation_scenario_and_top_genes(files, tmp_path):
    data = real_bundle(
        files["cui2024"],
        "perturbation",
        tmp_path / "b",
        condition_key="sample",
        control="PBS",
        cell_type_key="celltype",
        tasks=[("NK cell", "IL15")],
        top_genes=20,
        min_cells=10,
    )
    assert data.factual.n_vars == 20 and [t["name"] for t in data.tasks] == ["NK_cell__IL15"]
    counts = ad.read_h5ad(files["cui2024"]).layers["counts"]
    totals = np.asarray(counts.sum(axis=0)).ravel()
    kept = np.sort(np.argsort(-totals, kind="stable")[:20])
    assert list(data.factual.var_names) == [f"GENE{i}" for i in kept]


def test_given_subtypes_are_held_out_and_broad_types_are_concepts(files, tmp_path):
    def with_subtypes(adata):
        adata.obs["subtype"] = np.asarray(adata.uns["true_subtype"]).astype(str)

    path = _rewrite(files["kang2017"], tmp_path / "f.h5ad", with_subtypes)
    data = real_bundle(path, "kang2017", tmp_path / "b", subtype_key="subtype", **FAST)
    assert data.params["subtypes"] == "given"
    subtype = data.factual.obs[schema.OBS_CELL_TYPE].to_numpy().astype(str)
    given = ad.read_h5ad(path).obs["subtype"].astype(str)
    np.testing.assert_array_equal(subtype, given[data.factual.obs_names].to_numpy())
    assert [t["cell_type"] for t in data.tasks][:2] == ["B cells 0", "B cells 1"]
    assert "cell_type=B cells" in data.factual.obsm[schema.CONCEPTS].columns


# ----------------------------------------------------------------------------- bad input


def _rewrite(source: Path, path: Path, edit) -> Path:
    adata = ad.read_h5ad(source)
    edit(adata)
    adata.write_h5ad(path)
    return path


def _one_line_error(match: str, *args, **kwargs):
    with pytest.raises(SimcellError, match=match) as caught:
        real_bundle(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_missing_column(files, tmp_path):
    _one_line_error(
        "no obs column 'label'",
        _rewrite(
            files["kang2017"],
            tmp_path / "f.h5ad",
            lambda a: a.obs.drop(columns="label", inplace=True),
        ),
        "kang2017",
        tmp_path / "b",
        **FAST,
    )
    _one_line_error(
        "no obs column 'dose'",
        files["nault2023"],
        "perturbation",
        tmp_path / "b",
        condition_key="dose",
        control="0",
        cell_type_key="celltype",
    )
    _one_line_error(
        "needs --control",
        files["nault2023"],
        "perturbation",
        tmp_path / "b",
        condition_key="Dose",
        cell_type_key="celltype",
    )


def test_control_value_that_does_not_occur(files, tmp_path):
    _one_line_error(
        "control value 'untreated' does not occur in obs column 'label'",
        files["kang2017"],
        "kang2017",
        tmp_path / "b",
        control="untreated",
        **FAST,
    )


def test_log_normalised_values_are_refused(files, tmp_path):
    def lognorm_only(adata):
        del adata.layers["counts"]

    path = _rewrite(files["cui2024"], tmp_path / "f.h5ad", lognorm_only)
    _one_line_error(r"no raw counts.*X holds non-integer values", path, "cui2024", tmp_path / "b")
    _one_line_error("has no layer 'raw'", files["cui2024"], "cui2024", tmp_path / "b", layer="raw")
    _one_line_error(
        r"layers\['counts'\] holds non-integer",
        _rewrite(
            files["cui2024"], tmp_path / "g.h5ad", lambda a: a.layers.__setitem__("counts", a.X)
        ),
        "cui2024",
        tmp_path / "b",
        layer="counts",
    )


def test_negative_counts_are_refused(files, tmp_path):
    def negative(adata):
        adata.X = adata.X.copy()
        adata.X.data[0] = -1.0

    path = _rewrite(files["kang2017"], tmp_path / "f.h5ad", negative)
    _one_line_error("X holds negative values", path, "kang2017", tmp_path / "b", **FAST)


@pytest.mark.filterwarnings("ignore:Observation names are not unique")  # writing the fixture
def test_duplicated_cell_names_are_refused(files, tmp_path):
    def duplicate(adata):
        names = adata.obs_names.to_numpy().copy()
        names[1] = names[0]
        adata.obs_names = names

    path = _rewrite(files["kang2017"], tmp_path / "f.h5ad", duplicate)
    _one_line_error("1 duplicated cell names", path, "kang2017", tmp_path / "b", **FAST)


def test_too_few_cells(files, tmp_path):
    _one_line_error("too few cells", files["kang2017"], "kang2017", tmp_path / "b", min_cells=200)
    _one_line_error(
        "too few cells for any task",
        files["kang2017"],
        "kang2017",
        tmp_path / "b",
        subtypes="none",
        top_genes=None,
        min_cells=40,
    )
    _one_line_error(
        r"too few cells for task \('NK cells', 'stim'\)",
        files["kang2017"],
        "kang2017",
        tmp_path / "b",
        subtypes="none",
        tasks=[("NK cells", "stim")],
        top_genes=None,
        min_cells=35,
    )
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_unreadable_file_and_unknown_scenario(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not an h5ad file")
    _one_line_error("cannot read .* as h5ad", bad, "kang2017", tmp_path / "b")
    _one_line_error("no such file", tmp_path / "none.h5ad", "kang2017", tmp_path / "b")
    _one_line_error("unknown real-data scenario", bad.parent / "x", "synthetic2", tmp_path / "b")
