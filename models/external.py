"""Adapters of external packages behind the model interface: biolord and CINEMA-OT.

The packages are the optional extra ``simcell[baselines]`` and are imported
lazily, when a model is built; without them ``create_model("biolord")`` raises a
one-line :class:`simcell.SimcellError` naming ``pip install 'simcell[baselines]'``
and :func:`simcell.models.available_models` leaves the model out.

Both packages draw from the global NumPy / torch / Python random states (and
biolord reseeds them when it builds its module). The adapters therefore run
them inside :func:`_package_scope`, which seeds those states from the model's
seed and restores them afterwards, so nothing outside the call sees a change
and a fit is reproducible.

* ``biolord`` (Piran et al., Nature Biotechnology 2024): an auto-decoder whose
  known attributes are the concepts (categorical ``"0"`` / ``"1"`` /
  ``"missing"`` for binary concepts, ordered for continuous ones) and the cell
  type (from the :class:`FitContext`); the unknown attributes are a trained
  per-cell embedding. Because that embedding exists only for cells seen in
  training, :meth:`Biolord.fit` records the training cells and
  :meth:`Biolord.counterfactual` trains biolord on them together with the
  query cells (under their factual annotations; the query cells' cell types are
  assigned by a 15-nearest-neighbour vote of the training cells), then asks
  ``compute_prediction_adata`` for the query cells under the target concept.
* ``cinemaot`` (Dong et al., Nature Methods 2023): for each group of query cells
  that share the edit, the reference population is the training cells that
  carry the target value of the edited concepts. ``cinemaot_unweighted``
  separates confounder components (ICA of the PCs, Chatterjee's ξ against the
  condition) and matches each query cell to the reference cells by entropic
  optimal transport on them; its treatment effect of a query cell is
  x − Σ_j T_ij x_j / Σ_j T_ij, and the counterfactual is x − treatment effect.

Only binary concepts can be edited (both methods compare discrete conditions);
editing a continuous concept raises :class:`simcell.SimcellError`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import random
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from simcell import SimcellError

from ._common import ModelBase
from ._concepts import check_counterfactual_inputs, check_fit_inputs, edited_mask
from ._config import ModelConfig, check_non_negative, check_positive
from ._trainer import derive_seed
from .base import ConceptKind
from .scgen import context_cell_types

if TYPE_CHECKING:  # FitContext comes with the input-space interface (models/base.py)
    from .base import FitContext  # type: ignore[attr-defined]

__all__ = [
    "BIOLORD_PRESETS",
    "CINEMAOT_PRESETS",
    "EXTRA",
    "Biolord",
    "BiolordConfig",
    "CinemaOT",
    "CinemaOTConfig",
    "ExternalModel",
    "missing_packages",
]

EXTRA = "simcell[baselines]"
"""The optional extra that installs the external packages."""

_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")


def missing_packages(packages: tuple[str, ...]) -> tuple[str, ...]:
    """The import names among ``packages`` that are not installed (none imported)."""
    return tuple(name for name in packages if importlib.util.find_spec(name) is None)


@contextlib.contextmanager
def _package_scope(seed: int, *, quiet: bool = True) -> Iterator[None]:
    """Run a package with seeded global random states, restored on exit, and quiet logs.

    Seeds Python's ``random``, NumPy's legacy global state and torch's CPU (and
    CUDA) generators with ``seed``; afterwards puts back every state as it was,
    Lightning's ``PL_GLOBAL_SEED`` variable and the loggers' levels included.
    Third-party warnings raised inside are silenced, and with ``quiet`` the
    packages' own progress bars on stderr too.
    """
    # the packages use the legacy global state: it is saved, seeded and restored here
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    environ = os.environ.get("PL_GLOBAL_SEED")
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with (
            torch.random.fork_rng(devices=devices),
            warnings.catch_warnings(),
            contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext(),
        ):
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
        if environ is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = environ
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class ExternalModel(ModelBase):
    """Base of the adapters: checks the extra at construction; no checkpoints.

    Subclasses list the import names of their packages in ``requires``.
    """

    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any) -> None:
        missing = missing_packages(self.requires)
        if missing:
            raise SimcellError(
                f"model {self.name!r} needs the package(s) {', '.join(missing)}: "
                f"pip install '{EXTRA}'"
            )
        super().__init__(config, **kwargs)

    def _fit_inputs(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        concept_kinds: tuple[ConceptKind, ...] | None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[ConceptKind, ...]]:
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        for k, kind in enumerate(kinds):
            observed = concepts[~np.isnan(concepts[:, k]), k]
            if kind == "binary" and np.any((observed != 0) & (observed != 1)):
                raise SimcellError(
                    f"{self.name}: binary concept {k} has annotations not in {{0, 1}}"
                )
        self._set_dims(x.shape[1], kinds)
        self.x_train_ = np.array(x, dtype=np.float32, copy=True)
        self.concepts_train_ = np.array(concepts, dtype=np.float32, copy=True)
        return self.x_train_, self.concepts_train_, kinds

    def _edit_groups(
        self, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> dict[tuple[tuple[int, float], ...], np.ndarray]:
        """Query cells grouped by their edit ((concept, target value), ...) -> row indices;
        cells without an edit are left out."""
        assert self.concept_kinds_ is not None
        edited = edited_mask(concepts, target_concepts)
        continuous = [
            k
            for k, kind in enumerate(self.concept_kinds_)
            if kind != "binary" and edited[:, k].any()
        ]
        if continuous:
            raise SimcellError(
                f"{self.name} can only edit binary concepts; concept(s) {continuous} are continuous"
            )
        targets = target_concepts[edited]
        if np.any((targets != 0) & (targets != 1)):
            raise SimcellError(f"{self.name}: binary target concepts must be 0 or 1")
        groups: dict[tuple[tuple[int, float], ...], list[int]] = {}
        for row in np.flatnonzero(edited.any(axis=1)):
            key = tuple(
                (int(k), float(target_concepts[row, k])) for k in np.flatnonzero(edited[row])
            )
            groups.setdefault(key, []).append(int(row))
        return {key: np.asarray(rows) for key, rows in groups.items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Not supported: an adapter's fitted state lives in the external package."""
        raise SimcellError(f"model {self.name!r} (an external package's adapter) cannot be saved")


# ----------------------------------------------------------------------------- biolord


@dataclass(frozen=True, kw_only=True)
class BiolordConfig(ModelConfig):
    """Hyperparameters of the biolord adapter (names as in ``biolord``).

    Parameters
    ----------
    n_latent : int
        Dimension of the unknown-attributes embedding of each cell.
    decoder_width, decoder_depth : int
        The decoder MLP.
    attribute_nn_width, attribute_nn_depth : int
        The networks of the ordered (continuous) attributes.
    n_latent_attribute_categorical : int
        Embedding size of each categorical attribute.
    reconstruction_penalty, unknown_attribute_penalty, unknown_attribute_noise_param : float
        Loss weights and the noise on the unknown-attributes embedding.
    use_batch_norm : bool
        Batch normalisation in the decoder.
    max_epochs, batch_size : int
    latent_lr, decoder_lr, attribute_nn_lr : float
        Learning rates of the embeddings, the decoder and the attribute networks.
    cosine_scheduler : bool
        Cosine learning-rate schedule (to 1e-5).
    validation_fraction : float
        Cells held out (seeded) to monitor training, as biolord always does; with
        ``early_stopping`` training stops after 20 checks without improvement.
    early_stopping : bool
    cell_type_attribute : bool
        Give biolord the cell type as a categorical attribute (when the
        :class:`FitContext` has cell types).
    residual_abduction : bool
        ``False`` (biolord): the prediction under the target attributes.
        ``True``: x + f(target) − f(factual), keeping what biolord does not
        reconstruct (the ``fast`` preset, as for the built-in VAEs).
    """

    n_latent: int
    decoder_width: int
    decoder_depth: int
    attribute_nn_width: int = 64
    attribute_nn_depth: int = 2
    n_latent_attribute_categorical: int = 4
    reconstruction_penalty: float = 1e2
    unknown_attribute_penalty: float = 1e1
    unknown_attribute_noise_param: float = 1e-1
    use_batch_norm: bool = False
    max_epochs: int
    batch_size: int
    latent_lr: float
    decoder_lr: float
    attribute_nn_lr: float
    cosine_scheduler: bool = True
    validation_fraction: float = 0.1
    early_stopping: bool = False
    cell_type_attribute: bool = True
    residual_abduction: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(
            self,
            "n_latent",
            "decoder_width",
            "decoder_depth",
            "attribute_nn_width",
            "attribute_nn_depth",
            "n_latent_attribute_categorical",
            "max_epochs",
            "batch_size",
        )
        check_non_negative(
            self,
            "reconstruction_penalty",
            "unknown_attribute_penalty",
            "unknown_attribute_noise_param",
        )
        if not 0 < self.validation_fraction < 1:
            raise SimcellError("BiolordConfig.validation_fraction must be in (0, 1)")
        for name in ("latent_lr", "decoder_lr", "attribute_nn_lr"):
            if not getattr(self, name) > 0:
                raise SimcellError(f"BiolordConfig.{name} must be > 0")


_BIOLORD_PAPER = BiolordConfig(
    # the settings of biolord's own tutorials (Piran et al. 2024)
    n_latent=32,
    decoder_width=1024,
    decoder_depth=4,
    attribute_nn_width=512,
    attribute_nn_depth=2,
    n_latent_attribute_categorical=4,
    reconstruction_penalty=1e2,
    unknown_attribute_penalty=1e1,
    unknown_attribute_noise_param=1e-1,
    max_epochs=500,
    batch_size=512,
    latent_lr=1e-4,
    decoder_lr=1e-4,
    attribute_nn_lr=1e-2,
    validation_fraction=0.1,
    early_stopping=True,
)

BIOLORD_PRESETS: dict[str, BiolordConfig] = {
    "paper": _BIOLORD_PAPER,
    "synthetic": _BIOLORD_PAPER,
    "fast": BiolordConfig(
        n_latent=16,
        decoder_width=128,
        decoder_depth=2,
        attribute_nn_width=32,
        max_epochs=30,
        batch_size=256,
        latent_lr=1e-2,
        decoder_lr=1e-3,
        attribute_nn_lr=1e-2,
        residual_abduction=True,
    ),
}


def _concept_category(values: np.ndarray) -> np.ndarray:
    """Binary annotations as categories: "0", "1", and "missing" for NaN."""
    return np.where(np.isnan(values), "missing", np.where(values == 1, "1", "0")).astype(object)


def _prediction_blocks(
    predicted, attributes: list[str], n_cells: int
) -> dict[tuple[str, ...], np.ndarray]:
    """``compute_prediction_adata`` output as {category of each attribute: (n_cells, n_dims)};
    the package stacks one block of all source cells per combination of categories."""
    values = np.asarray(predicted.X, dtype=np.float32)
    if values.shape[0] % n_cells:
        raise SimcellError(f"biolord returned {values.shape[0]} rows for {n_cells} cells")
    categories = predicted.obs[attributes].astype(str).to_numpy()
    return {
        tuple(categories[start]): values[start : start + n_cells]
        for start in range(0, values.shape[0], n_cells)
    }


class Biolord(ExternalModel):
    """biolord through its own API (``biolord.Biolord``, ``compute_prediction_adata``).

    See the module docstring. ``fit`` records the training cells (and the cell
    types of the :class:`FitContext`); ``counterfactual`` trains and predicts.

    Attributes
    ----------
    biolord_ : biolord.Biolord
        The package's model of the last :meth:`counterfactual` call.
    """

    name: ClassVar[str] = "biolord"
    requires: ClassVar[tuple[str, ...]] = ("biolord", "scvi")
    input_space: ClassVar[str] = "lognorm"
    config_class = BiolordConfig
    presets: ClassVar[Mapping[str, BiolordConfig]] = BIOLORD_PRESETS
    config: BiolordConfig

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> Biolord:
        """Record the training cells ``x`` (n_cells, n_dims), annotations and cell types."""
        x, concepts, _ = self._fit_inputs(x, concepts, concept_kinds)
        self.cell_types_ = context_cell_types(context, len(x))
        if not self.config.cell_type_attribute:
            self.cell_types_ = None
        if self.cell_types_ is not None:
            from sklearn.neighbors import KNeighborsClassifier

            self.cell_type_classifier_ = KNeighborsClassifier(n_neighbors=min(15, len(x))).fit(
                x, self.cell_types_
            )
        return self

    def _anndata(self, x: np.ndarray, concepts: np.ndarray, cell_types: np.ndarray | None):
        import anndata as ad
        import pandas as pd

        assert self.concept_kinds_ is not None
        obs = pd.DataFrame(index=[f"cell_{i}" for i in range(len(x))])
        categorical, ordered = [], []
        for k, kind in enumerate(self.concept_kinds_):
            key = f"concept{k}"
            if kind == "binary":
                obs[key] = pd.Categorical(_concept_category(concepts[:, k]))
                categorical.append(key)
            else:  # missing -> the training mean (biolord has no missing ordered values)
                column = concepts[:, k].astype(np.float64)
                mean = np.nanmean(self.concepts_train_[:, k]) if self.n_concepts_ else 0.0
                obs[key] = np.where(np.isnan(column), 0.0 if np.isnan(mean) else mean, column)
                ordered.append(key)
        if cell_types is not None:
            obs["celltype"] = pd.Categorical(cell_types)
            categorical.append("celltype")
        adata = ad.AnnData(np.ascontiguousarray(x, dtype=np.float32), obs=obs)
        return adata, categorical, ordered

    def _train_biolord(self, adata, categorical: list[str], ordered: list[str]):
        import biolord

        config = self.config
        biolord.Biolord.setup_anndata(
            adata, categorical_attributes_keys=categorical, ordered_attributes_keys=ordered
        )
        module_params = {
            "decoder_width": config.decoder_width,
            "decoder_depth": config.decoder_depth,
            "attribute_nn_width": config.attribute_nn_width,
            "attribute_nn_depth": config.attribute_nn_depth,
            "n_latent_attribute_categorical": config.n_latent_attribute_categorical,
            "gene_likelihood": "normal",
            "reconstruction_penalty": config.reconstruction_penalty,
            "unknown_attribute_penalty": config.unknown_attribute_penalty,
            "unknown_attribute_noise_param": config.unknown_attribute_noise_param,
            "use_batch_norm": config.use_batch_norm,
            "use_layer_norm": False,
            "seed": derive_seed(self.seed, "biolord-module") % 2**32,
        }
        model = biolord.Biolord(
            adata, n_latent=config.n_latent, model_name="simcell", module_params=module_params
        )
        device = self._resolved_device()
        with tempfile.TemporaryDirectory(prefix="simcell-biolord-") as root:
            model.train(
                max_epochs=config.max_epochs,
                batch_size=config.batch_size,
                accelerator="gpu" if device.type == "cuda" else "cpu",
                device=[device.index or 0] if device.type == "cuda" else "auto",
                train_size=1.0 - config.validation_fraction,
                early_stopping=config.early_stopping,
                enable_checkpointing=False,
                enable_progress_bar=self.progress_bar,
                enable_model_summary=False,
                logger=False,
                default_root_dir=root,
                plan_kwargs={
                    "latent_lr": config.latent_lr,
                    "latent_wd": 1e-4,
                    "decoder_lr": config.decoder_lr,
                    "decoder_wd": 1e-4,
                    "attribute_nn_lr": config.attribute_nn_lr,
                    "attribute_nn_wd": 4e-8,
                    "step_size_lr": 45,
                    "cosine_scheduler": config.cosine_scheduler,
                    "scheduler_final_lr": 1e-5,
                },
            )
        return model

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """biolord's prediction of each cell under ``target_concepts``; shape (n_cells, n_dims).

        Cells without an edit are returned unchanged.
        """
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        groups = self._edit_groups(concepts, target_concepts)
        prediction = np.array(x, dtype=np.float32, copy=True)
        if not groups:
            return prediction
        cell_types = None
        if self.cell_types_ is not None:
            cell_types = np.concatenate([self.cell_types_, self.cell_type_classifier_.predict(x)])
        n_train = len(self.x_train_)
        import biolord  # noqa: F401  (imported outside the scope: it sets its loggers' levels)

        adata, categorical, ordered = self._anndata(
            np.concatenate([self.x_train_, x]),
            np.concatenate([self.concepts_train_, concepts]),
            cell_types,
        )
        with _package_scope(derive_seed(self.seed, "biolord"), quiet=not self.progress_bar):
            self.biolord_ = self._train_biolord(adata, categorical, ordered)
            for key, rows in groups.items():
                attributes = [f"concept{k}" for k, _ in key]
                wanted = ["1" if value == 1 else "0" for _, value in key]
                source = adata[n_train + rows].copy()
                predicted = self.biolord_.compute_prediction_adata(adata, source, attributes)
                blocks = _prediction_blocks(predicted, attributes, len(rows))
                if tuple(wanted) not in blocks:
                    raise SimcellError(f"biolord returned no prediction for {dict(key)}")
                block = blocks[tuple(wanted)]
                if self.config.residual_abduction:  # x + f(target) - f(factual)
                    own = source.obs[attributes].astype(str).to_numpy()
                    factual = np.stack(
                        [blocks[tuple(own[i])][i] for i in range(len(rows))]
                    ).reshape(block.shape)
                    block = prediction[rows] + block - factual
                prediction[rows] = block
        if not np.all(np.isfinite(prediction)):
            raise SimcellError("biolord predicted non-finite values (training diverged)")
        return prediction


# ----------------------------------------------------------------------------- CINEMA-OT


@dataclass(frozen=True, kw_only=True)
class CinemaOTConfig(ModelConfig):
    """Hyperparameters of ``cinemaot.cinemaot_unweighted`` (names as there).

    Parameters
    ----------
    dim : int
        Independent components (of as many PCs) searched for confounders.
    thres : float
        Chatterjee ξ below which a component counts as a confounder.
    smoothness : float
        Entropic regularisation of the transport (per confounder).
    eps : float
        Stopping tolerance of the Sinkhorn iterations.
    max_reference_cells : int
        Reference cells drawn (seeded, without replacement) when more carry the
        target value; bounds the n_query × n_reference transport problem.
    """

    dim: int = 20
    thres: float = 0.15
    smoothness: float = 1e-4
    eps: float = 1e-3
    max_reference_cells: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "dim", "max_reference_cells")
        for name in ("thres", "smoothness", "eps"):
            if not getattr(self, name) > 0:
                raise SimcellError(f"CinemaOTConfig.{name} must be > 0")


CINEMAOT_PRESETS: dict[str, CinemaOTConfig] = {
    # the package's defaults (Dong et al. 2023)
    "paper": CinemaOTConfig(max_reference_cells=10_000),
    "synthetic": CinemaOTConfig(max_reference_cells=10_000),
    "fast": CinemaOTConfig(max_reference_cells=2_000),
}


class CinemaOT(ExternalModel):
    """CINEMA-OT's counterfactual, x − treatment effect (``cinemaot.cinemaot_unweighted``).

    See the module docstring. Transductive: ``fit`` records the training cells;
    each :meth:`counterfactual` call runs CINEMA-OT on the query cells against
    the training cells that carry the target concept values.
    """

    name: ClassVar[str] = "cinemaot"
    requires: ClassVar[tuple[str, ...]] = ("cinemaot",)
    input_space: ClassVar[str] = "lognorm"
    config_class = CinemaOTConfig
    presets: ClassVar[Mapping[str, CinemaOTConfig]] = CINEMAOT_PRESETS
    config: CinemaOTConfig

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> CinemaOT:
        """Record the training cells ``x`` (n_cells, n_dims) and their annotations."""
        self._fit_inputs(x, concepts, concept_kinds)
        return self

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """x − CINEMA-OT's treatment effect towards the target; shape (n_cells, n_dims).

        Cells without an edit are returned unchanged.

        Raises
        ------
        simcell.SimcellError
            If no training cell carries a target, CINEMA-OT finds no confounder
            component, or its transport is not finite.
        """
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        prediction = np.array(x, dtype=np.float32, copy=True)
        for key, rows in self._edit_groups(concepts, target_concepts).items():
            carries = np.ones(len(self.x_train_), dtype=bool)
            for k, value in key:
                carries &= self.concepts_train_[:, k] == value
            reference = np.flatnonzero(carries)
            if reference.size < 2:
                raise SimcellError(
                    f"cinemaot: {reference.size} training cell(s) carry the target {dict(key)}"
                )
            stream = "cinemaot-" + "-".join(f"{k}:{v:g}" for k, v in key)
            rng = np.random.default_rng(derive_seed(self.seed, stream))
            if reference.size > self.config.max_reference_cells:
                reference = np.sort(
                    rng.choice(reference, self.config.max_reference_cells, replace=False)
                )
            with _package_scope(derive_seed(self.seed, stream), quiet=not self.progress_bar):
                effect = self._treatment_effect(x[rows], self.x_train_[reference])
            prediction[rows] = x[rows] - effect
        if not np.all(np.isfinite(prediction)):
            raise SimcellError(
                "cinemaot: the transport plan is not finite; raise 'smoothness' in the preset"
            )
        return prediction

    def _treatment_effect(self, query: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """CINEMA-OT's treatment effect of each query cell, shape (n_query, n_dims)."""
        import anndata as ad
        import pandas as pd
        import scanpy as sc
        from cinemaot import cinemaot

        cells = np.concatenate([query, reference]).astype(np.float32)
        condition = np.array(["query"] * len(query) + ["reference"] * len(reference))
        adata = ad.AnnData(
            cells, obs=pd.DataFrame({"condition": condition}, index=map(str, range(len(cells))))
        )
        n_pcs = min(max(self.config.dim, 50), cells.shape[1] - 1, cells.shape[0] - 1)
        dim = min(self.config.dim, n_pcs)
        sc.pp.pca(adata, n_comps=n_pcs, random_state=0)
        try:
            _, _, effect = cinemaot.cinemaot_unweighted(
                adata,
                obs_label="condition",
                ref_label="query",
                expr_label="reference",
                dim=dim,
                thres=self.config.thres,
                smoothness=self.config.smoothness,
                eps=self.config.eps,
            )
        except ValueError as error:  # "No confounder components identified..."
            raise SimcellError(f"cinemaot: {str(error).strip().splitlines()[0]}") from None
        return np.asarray(effect.X, dtype=np.float32)
