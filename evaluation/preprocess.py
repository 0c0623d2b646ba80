"""The harness's preprocessing: library-size normalisation, log1p, PCA on train cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA


def _dense(counts) -> np.ndarray:
    return counts.toarray() if sp.issparse(counts) else np.asarray(counts)


def lognormalise(counts, target_sum: float) -> np.ndarray:
    """log1p(x_ij / Σ_j x_ij · target_sum), shape (n_cells, n_genes), float64.

    A cell with no counts stays all zeros (nothing to normalise).
    """
    dense = _dense(counts).astype(np.float64)
    totals = dense.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * scale)


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """Normalisation and PCA fitted on one task's ``train`` cells.

    Attributes
    ----------
    target_sum : float
        Median total count of the train cells.
    pca : sklearn.decomposition.PCA
    """

    target_sum: float
    pca: PCA

    @classmethod
    def fit(cls, train_counts, *, n_components: int = 128, seed: int = 0) -> Preprocessor:
        """Fit on train counts, shape (n_train, n_genes)."""
        totals = np.asarray(train_counts.sum(axis=1)).ravel()
        target_sum = float(np.median(totals))
        lognorm = lognormalise(train_counts, target_sum)
        n = min(n_components, lognorm.shape[0] - 1, lognorm.shape[1])
        pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(lognorm)
        return cls(target_sum=target_sum, pca=pca)

    def lognorm(self, counts) -> np.ndarray:
        return lognormalise(counts, self.target_sum)

    def to_pca(self, lognorm: np.ndarray) -> np.ndarray:
        return self.pca.transform(lognorm).astype(np.float32)

    def to_genes(self, pcs: np.ndarray) -> np.ndarray:
        return self.pca.inverse_transform(np.asarray(pcs, dtype=np.float64))

    def to_genes_keeping(self, pcs: np.ndarray, factual_lognorm: np.ndarray) -> np.ndarray:
        """Gene-space prediction of a PCA-space model: its PCs, plus the factual cell's
        component outside the PCA subspace (which the model was never shown).

        x̂_genes = x_factual + Vᵀ (pcs − V (x_factual − μ)), so the identity prediction
        maps back to the factual cell exactly.
        """
        moved = np.asarray(pcs, dtype=np.float64) - self.pca.transform(factual_lognorm)
        return factual_lognorm + moved @ self.pca.components_
