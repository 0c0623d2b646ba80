"""Tests of the pure metric functions in ``simcell.evaluation.metrics``.

Each metric is checked against an independent reference: a brute-force
O(n²) formula written here, a closed form, or POT / scikit-learn called directly.
"""

from __future__ import annotations

import functools

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist
from sklearn.metrics import r2_score

from simcell import SimcellError, SimcellWarning
from simcell.evaluation import metrics

# ----------------------------------------------------------------------------- references


def brute_force_mmd(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
    """Unbiased squared MMD with full kernel matrices (Gretton et al. 2012, eq. 3)."""

    def kernel(a, b):
        sq_dist = cdist(a, b, "sqeuclidean")
        return np.mean([np.exp(-sq_dist / (2 * width**2)) for width in bandwidths], axis=0)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    return (
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2 * k_xy.mean()
    )


def brute_force_energy(x: np.ndarray, y: np.ndarray) -> float:
    return 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()


def pot_sinkhorn_divergence(x: np.ndarray, y: np.ndarray, epsilon: float) -> float:
    """Debiased entropic OT straight from POT's ``ot.solve`` (KL-regularised objective)."""

    def entropic(a, b):
        weights_a = np.full(len(a), 1 / len(a))
        weights_b = np.full(len(b), 1 / len(b))
        cost = ot.dist(a, b)
        return ot.solve(cost, weights_a, weights_b, reg=epsilon, max_iter=200_000, tol=1e-13).value

    return entropic(x, y) - 0.5 * entropic(x, x) - 0.5 * entropic(y, y)


def frechet_reference(mu1, cov1, mu2, cov2) -> float:
    """Eq. 53 with a general (non-symmetric) matrix square root from scipy."""
    root = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(root)))


def random_spd(rng: np.random.Generator, n_dims: int) -> np.ndarray:
    factor = rng.normal(size=(n_dims, n_dims))
    return factor @ factor.T + 0.1 * np.eye(n_dims)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run this module's many tiny torch calls on one intra-op thread.

    On a machine whose cores are busy with other processes, every OpenMP
    parallel region of a tiny tensor op waits milliseconds for its second thread;
    the results do not depend on the thread count. Restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def two_samples(rng):
    x = rng.normal(size=(90, 6)) + 3.0
    y = rng.normal(size=(70, 6)) * 1.3 + 3.4
    return x, y


# ----------------------------------------------------------------------------- registry

EXPECTED = {
    "mse": ("lower", "cell"),
    "mae": ("lower", "cell"),
    "pearson": ("higher", "cell"),
    "r2": ("higher", "cell"),
    "mmd": ("lower", "distribution"),
    "rmmd": ("lower", "distribution"),
    "fid": ("lower", "distribution"),
    "rfid": ("lower", "distribution"),
    "sinkhorn": ("lower", "distribution"),
    "rsd": ("lower", "distribution"),
    "energy": ("lower", "distribution"),
    "knn_accuracy": ("higher", "classification"),
    "concept_accuracy": ("higher", "classification"),
    "concept_f1": ("higher", "classification"),
    "nmi": ("higher", "classification"),
    "ari": ("higher", "classification"),
    "linear_r2": ("higher", "identifiability"),
    "mcc": ("higher", "identifiability"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_direction_and_level(name):
    metric = metrics.get_metric(name)
    assert (metric.direction, metric.level) == EXPECTED[name]
    assert metric.name == name
    assert callable(metric.fn)


def test_registry_holds_exactly_the_documented_metrics():
    assert {metric.name for metric in metrics.list_metrics()} == set(EXPECTED)
    for level in ("cell", "distribution", "classification", "identifiability"):
        names = {metric.name for metric in metrics.list_metrics(level)}
        assert names == {name for name, (_, lvl) in EXPECTED.items() if lvl == level}


def test_registry_functions_are_the_public_ones():
    assert metrics.get_metric("fid").fn is metrics.frechet_distance
    assert metrics.get_metric("sinkhorn").fn is metrics.sinkhorn_divergence
    assert metrics.get_metric("energy").fn is metrics.energy_distance
    assert metrics.get_metric("rmmd").fn is metrics.rmmd


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(SimcellError, match="unknown metric 'rmse'.*mae.*rmmd"):
        metrics.get_metric("rmse")


def test_register_metric_rejects_duplicates_and_bad_options(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))

    @metrics.register_metric("double_mse", direction="lower", level="cell")
    def double_mse(pred, truth):
        return 2 * metrics.mse(pred, truth)

    assert metrics.get_metric("double_mse").fn is double_mse
    with pytest.raises(SimcellError, match="already registered"):
        metrics.register_metric("mse", direction="lower", level="cell")(double_mse)
    with pytest.raises(SimcellError, match="direction"):
        metrics.register_metric("x", direction="smaller", level="cell")
    with pytest.raises(SimcellError, match="level"):
        metrics.list_metrics("gene")


# ----------------------------------------------------------------------------- cell level


def test_mse_and_mae_per_cell(rng):
    pred, truth = rng.normal(size=(2, 25, 8))
    np.testing.assert_allclose(metrics.mse(pred, truth), ((pred - truth) ** 2).mean(axis=1))
    np.testing.assert_allclose(metrics.mae(pred, truth), np.abs(pred - truth).mean(axis=1))
    assert metrics.mse(truth, truth).shape == (25,)
    np.testing.assert_array_equal(metrics.mse(truth, truth), 0.0)


def test_pearson_and_r2_match_numpy_and_sklearn(rng):
    truth = rng.normal(size=(30, 12))
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    expected_r = [np.corrcoef(p, t)[0, 1] for p, t in zip(pred, truth, strict=True)]
    expected_r2 = [r2_score(t, p) for p, t in zip(pred, truth, strict=True)]
    np.testing.assert_allclose(metrics.pearson(pred, truth), expected_r, rtol=1e-12)
    np.testing.assert_allclose(metrics.r2(pred, truth), expected_r2, rtol=1e-12)
    np.testing.assert_allclose(metrics.pearson(truth, truth), 1.0)
    np.testing.assert_allclose(metrics.r2(truth, truth), 1.0)


def test_constant_rows_are_nan_exactly_where_undefined(rng):
    truth = rng.normal(size=(4, 5))
    pred = truth + 0.1
    truth[1] = 2.5  # constant true row: Pearson and R² undefined
    pred[2] = -1.0  # constant predicted row: Pearson undefined, R² defined
    r = metrics.pearson(pred, truth)
    score = metrics.r2(pred, truth)
    np.testing.assert_array_equal(np.isnan(r), [False, True, True, False])
    np.testing.assert_array_equal(np.isnan(score), [False, True, False, False])
    assert score[2] < 0


# ----------------------------------------------------------------------------- MMD


def test_mmd_equals_brute_force(two_samples):
    x, y = two_samples
    bandwidths = (0.7, 1.9, 4.0)
    expected = brute_force_mmd(x, y, bandwidths)
    assert metrics.mmd(
        x, y, bandwidths=bandwidths, device="cpu", precision="float64"
    ) == pytest.approx(expected, rel=1e-10, abs=1e-13)
    assert metrics.mmd(x, y, bandwidths=bandwidths, device="cpu") == pytest.approx(
        expected, rel=1e-5, abs=1e-8
    )


def test_mmd_default_kernel_is_the_pooled_median_heuristic(two_samples):
    x, y = two_samples
    median = np.median(pdist(np.vstack([x, y])))
    bandwidths = metrics.median_heuristic_bandwidths(np.vstack([x, y]))
    np.testing.assert_allclose(bandwidths, [0.5 * median, median, 2 * median], rtol=1e-12)
    expected = brute_force_mmd(x, y, bandwidths)
    assert metrics.mmd(x, y, device="cpu", precision="float64") == pytest.approx(
        expected, rel=1e-10
    )


def test_median_heuristic_subsample_is_seeded(rng):
    sample = rng.normal(size=(1500, 3))
    first = metrics.median_heuristic_bandwidths(sample, seed=3)
    assert metrics.median_heuristic_bandwidths(sample, seed=3) == first
    assert metrics.median_heuristic_bandwidths(sample, seed=4) != first


def test_mmd_of_a_sample_with_itself_matches_the_unbiased_formula(rng):
    x = rng.normal(size=(40, 3))
    bandwidths = (1.0,)
    mean_off_diagonal = brute_force_mmd(x, x, bandwidths)
    kernel = np.exp(-cdist(x, x, "sqeuclidean") / 2)
    k_bar = (kernel.sum() - 40) / (40 * 39)
    assert mean_off_diagonal == pytest.approx(-2 * (1 - k_bar) / 40)
    assert metrics.mmd(x, x, bandwidths=bandwidths, precision="float64") == pytest.approx(
        mean_off_diagonal, rel=1e-10
    )


@pytest.mark.parametrize("bandwidths", [(0.8, 1.6, 3.2), None])
def test_mmd_is_unbiased_under_the_null_and_positive_under_a_shift(bandwidths):
    rng = np.random.default_rng(7)
    n_pairs, n_cells, n_dims = 200, 20, 3
    null = np.array(
        [
            metrics.mmd(
                rng.normal(size=(n_cells, n_dims)),
                rng.normal(size=(n_cells, n_dims)),
                bandwidths=bandwidths,
                device="cpu",
            )
            for _ in range(n_pairs)
        ]
    )
    shifted = np.array(
        [
            metrics.mmd(
                rng.normal(size=(n_cells, n_dims)),
                rng.normal(size=(n_cells, n_dims)) + 0.75,
                bandwidths=bandwidths,
                device="cpu",
            )
            for _ in range(n_pairs)
        ]
    )
    null_se = null.std(ddof=1) / np.sqrt(n_pairs)
    assert abs(null.mean()) < 3.5 * null_se
    assert (null < 0).mean() > 0.2  # the unbiased estimator goes negative under the null
    shifted_se = shifted.std(ddof=1) / np.sqrt(n_pairs)
    assert shifted.mean() > 10 * shifted_se
    assert shifted.mean() > 10 * abs(null.mean())


def test_biased_estimator_would_fail_the_null_test():
    """Guard that the null test can fail: a V-statistic MMD has a positive mean."""
    rng = np.random.default_rng(7)
    values = []
    for _ in range(200):
        x, y = rng.normal(size=(2, 20, 3))
        kernel = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * 1.6**2))  # noqa: E731
        values.append(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())
    values = np.array(values)
    assert values.mean() > 3.5 * values.std(ddof=1) / np.sqrt(len(values))


@pytest.mark.parametrize("block_size", [1, 7, 64, 100_000])
@pytest.mark.parametrize(("precision", "rel"), [("float64", 1e-11), ("float32", 1e-6)])
def test_mmd_and_energy_do_not_depend_on_block_size(two_samples, block_size, precision, rel):
    x, y = two_samples
    options = {"device": "cpu", "precision": precision}
    reference_mmd = metrics.mmd(x, y, block_size=32, **options)
    reference_energy = metrics.energy_distance(x, y, block_size=32, **options)
    assert metrics.mmd(x, y, block_size=block_size, **options) == pytest.approx(
        reference_mmd, rel=rel
    )
    assert metrics.energy_distance(x, y, block_size=block_size, **options) == pytest.approx(
        reference_energy, rel=rel
    )


def test_rbf_plan_squares_only_exact_powers_of_two():
    from simcell.evaluation import _distances

    plan = _distances.rbf_plan([2.0, 0.125, 0.5, 0.3])
    assert plan == [(1.0, None), (pytest.approx(2.4), None), (4.0, None), (16.0, 2)]
    assert _distances.rbf_plan([1.0, 4.0, 16.0]) == [(1.0, None), (4.0, 2), (16.0, 2)]


# ----------------------------------------------------------------------------- energy


def test_energy_distance_equals_brute_force(two_samples):
    x, y = two_samples
    expected = brute_force_energy(x, y)
    assert metrics.energy_distance(x, y, device="cpu", precision="float64") == pytest.approx(
        expected, rel=1e-11
    )
    assert metrics.energy_distance(x, y, device="cpu") == pytest.approx(expected, rel=1e-5)


def test_energy_distance_recomputes_near_pairs_exactly(rng):
    """Near-duplicate cells far from the centre: the norm expansion alone would cancel."""
    x = rng.normal(size=(50, 3)) + 1e3
    y = x + 1e-4 * rng.normal(size=x.shape)
    expected = brute_force_energy(x, y)
    assert metrics.energy_distance(x, y, precision="float64") == pytest.approx(expected, rel=1e-6)
    assert metrics.energy_distance(x, y) == pytest.approx(expected, rel=1e-3)


def test_energy_distance_is_not_squared(rng):
    x = np.zeros((1, 2))
    y = np.array([[3.0, 4.0]])
    assert metrics.energy_distance(x, y) == pytest.approx(10.0)  # 2 * |x - y| = 2 * 5


# ----------------------------------------------------------------------------- Fréchet


def test_frechet_from_moments_matches_the_closed_form(rng):
    for n_dims in (1, 3, 8):
        mu1, mu2 = rng.normal(size=(2, n_dims))
        cov1, cov2 = random_spd(rng, n_dims), random_spd(rng, n_dims)
        expected = frechet_reference(mu1, cov1, mu2, cov2)
        assert metrics.frechet_from_moments(mu1, cov1, mu2, cov2) == pytest.approx(
            expected, rel=1e-9
        )


def test_frechet_of_commuting_gaussians_is_exact():
    # Diagonal covariances: tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½) = Σ_k (√a_k - √b_k)².
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-12
    )


def test_frechet_is_finite_and_non_negative_on_rank_deficient_covariances(rng):
    direction = rng.normal(size=(6, 1))
    rank_one = direction @ direction.T
    low_rank = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 6))
    low_rank = low_rank @ low_rank.T
    for cov1, cov2 in [(rank_one, low_rank), (rank_one, rank_one), (np.zeros((6, 6)), rank_one)]:
        value = metrics.frechet_from_moments(np.zeros(6), cov1, np.zeros(6), cov2)
        assert np.isfinite(value) and value >= 0
    assert metrics.frechet_from_moments(np.zeros(6), rank_one, np.zeros(6), rank_one) < 1e-7
    few_cells = rng.normal(size=(4, 30))  # 4 cells in 30 dims: covariance of rank 3
    other = rng.normal(size=(5, 30))
    value = metrics.frechet_distance(few_cells, other)
    assert np.isfinite(value) and value > 0
    assert metrics.frechet_distance(few_cells, few_cells) < 1e-6


def test_frechet_distance_of_a_translated_sample_is_the_squared_shift(two_samples):
    x, _ = two_samples
    shift = np.arange(6) / 3
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(np.sum(shift**2), rel=1e-8)


# ----------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_divergence_equals_pot(rng):
    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(30, 3)) + 0.8
    epsilon = 0.5
    expected = pot_sinkhorn_divergence(x, y, epsilon)
    assert metrics.sinkhorn_divergence(x, y, epsilon=epsilon, device="cpu") == pytest.approx(
        expected, rel=1e-6
    )


def test_sinkhorn_default_epsilon_is_one_pooled_median_scale(rng):
    x = rng.normal(size=(30, 3))
    y = rng.normal(size=(25, 3)) + 1.0
    epsilon = 0.05 * np.median(pdist(np.vstack([x, y]), "sqeuclidean"))
    assert metrics.sinkhorn_divergence(x, y, device="cpu") == pytest.approx(
        metrics.sinkhorn_divergence(x, y, epsilon=epsilon, device="cpu"), rel=1e-9
    )


def test_sinkhorn_that_runs_out_of_iterations_says_how_far_it_got(rng):
    import warnings

    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(30, 3)) + 3.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics.sinkhorn_divergence(x, y, epsilon=0.01, max_iter=3, tol=1e-12, device="cpu")
    messages = [str(w.message) for w in caught]
    assert any(
        issubclass(w.category, SimcellWarning) and "marginal error" in str(w.message)
        for w in caught
    ), messages
    assert not any("Sinkhorn did not converge" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged solve warns about nothing
        metrics.sinkhorn_divergence(x, y, epsilon=0.5, device="cpu")


# ----------------------------------------------------------------------------- self distances


@pytest.mark.parametrize(
    "distance",
    [
        metrics.frechet_distance,
        functools.partial(metrics.sinkhorn_divergence, epsilon_scale=0.5),
        metrics.energy_distance,
    ],
    ids=["fid", "sinkhorn", "energy"],
)
def test_distance_of_a_sample_to_itself_is_zero(two_samples, distance):
    x, y = two_samples
    assert abs(distance(x, x.copy())) <= 1e-9 * distance(x, y)
    assert distance(x, y) > 0


# ----------------------------------------------------------------------------- ratios


@pytest.fixture
def ratio_populations(rng):
    target = rng.normal(size=(60, 4))
    pred = rng.normal(size=(40, 4)) + 0.3
    references = [rng.normal(size=(50, 4)) + shift for shift in (1.0, 1.5, 3.0)]
    return pred, target, references


def test_rmmd_is_the_ratio_to_the_closest_reference(ratio_populations):
    pred, target, references = ratio_populations
    bandwidths = np.median(pdist(target)) * np.array([0.5, 1.0, 2.0])
    numerator = brute_force_mmd(pred, target, bandwidths)
    denominator = min(brute_force_mmd(ref, target, bandwidths) for ref in references)
    assert metrics.rmmd(
        pred, target, references, device="cpu", precision="float64"
    ) == pytest.approx(numerator / denominator, rel=1e-9)
    assert metrics.rmmd(pred, target, references) < 1


def test_rfid_of_translated_populations_is_a_ratio_of_squared_shifts(rng):
    target = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 3))
    pred = target + np.array([0.5, 0.0, 0.0])
    references = [target + np.array([0.0, 2.0, 0.0]), target + np.array([1.0, 0.0, 1.0])]
    assert metrics.rfid(pred, target, references) == pytest.approx(0.25 / 2.0, rel=1e-7)


def test_rsd_uses_one_epsilon_from_the_target(ratio_populations):
    pred, target, references = ratio_populations
    epsilon = 0.5 * np.median(pdist(target, "sqeuclidean"))
    numerator = metrics.sinkhorn_divergence(pred, target, epsilon=epsilon)
    denominator = min(
        metrics.sinkhorn_divergence(ref, target, epsilon=epsilon) for ref in references
    )
    rsd = metrics.rsd(pred, target, references, epsilon_scale=0.5, device="cpu")
    assert rsd == pytest.approx(numerator / denominator, rel=1e-9)


def test_ratio_is_undefined_when_a_reference_matches_the_target(ratio_populations):
    pred, target, references = ratio_populations
    with pytest.raises(SimcellError, match="rmmd is undefined"):
        metrics.rmmd(pred, target, [*references, target.copy()])
    with pytest.raises(SimcellError, match="rfid is undefined"):
        metrics.rfid(pred, target, [target.copy()])
    with pytest.raises(SimcellError, match="at least one population"):
        metrics.rfid(pred, target, [])


# ----------------------------------------------------------------------------- classification


def separated_clusters(rng, n_per_cluster=40, n_clusters=3, n_dims=5):
    centres = 20.0 * np.eye(n_clusters, n_dims)
    labels = np.repeat(np.arange(n_clusters), n_per_cluster)
    cells = centres[labels] + rng.normal(size=(labels.size, n_dims))
    return cells, labels


def test_knn_accuracy(rng):
    reference, reference_labels = separated_clusters(rng)
    pred, pred_labels = separated_clusters(rng, n_per_cluster=10)
    assert metrics.knn_accuracy(pred, pred_labels, reference, reference_labels) == 1.0
    wrong = pred_labels.copy()
    wrong[:10] = 1  # the first cluster's cells claim the second cluster's label
    assert metrics.knn_accuracy(pred, wrong, reference, reference_labels) == pytest.approx(2 / 3)
    with pytest.raises(SimcellError, match="k must lie"):
        metrics.knn_accuracy(pred, pred_labels, reference[:5], reference_labels[:5], k=15)


def test_nmi_and_ari_are_one_on_separated_clusters(rng):
    cells, labels = separated_clusters(rng)
    names = np.array(["B", "T", "NK"])[labels]
    assert metrics.nmi(cells, names, seed=0) == pytest.approx(1.0)
    assert metrics.ari(cells, names, seed=0) == pytest.approx(1.0)
    noise = rng.normal(size=cells.shape)
    assert metrics.ari(noise, labels, seed=0) < 0.2


def test_concept_accuracy_and_f1(rng):
    n_cells = 400
    concepts = rng.integers(0, 2, size=(n_cells, 2))
    embedding = np.column_stack(
        [4.0 * concepts + rng.normal(scale=0.3, size=concepts.shape), rng.normal(size=n_cells)]
    )
    assert metrics.concept_accuracy(embedding, concepts, seed=1) > 0.97
    assert metrics.concept_f1(embedding, concepts, seed=1) > 0.97
    noise = rng.normal(size=(n_cells, 3))
    assert metrics.concept_accuracy(noise, concepts[:, 0], seed=1) < 0.7
    assert metrics.concept_accuracy(embedding, concepts, seed=1) == metrics.concept_accuracy(
        embedding, concepts, seed=1
    )
    with pytest.raises(SimcellError, match="discrete"):
        metrics.concept_accuracy(embedding, concepts + 0.5)


def test_concept_leakage_separates_clean_and_leaky_edits(rng):
    n_train = 400
    cell_type = rng.integers(0, 2, size=n_train)
    stimulated = rng.integers(0, 2, size=n_train)
    train = np.column_stack([6.0 * cell_type, 6.0 * stimulated]) + rng.normal(size=(n_train, 2))
    test_types = rng.integers(0, 2, size=100)
    before = np.column_stack([6.0 * test_types, np.zeros(100)]) + rng.normal(size=(100, 2))
    clean_edit = before + np.array([0.0, 6.0])
    leaky_edit = clean_edit.copy()
    leaky_edit[:, 0] = 3.0 + 6.0 * (1 - test_types)  # the edit also changes cell identity

    clean = metrics.concept_leakage(train, cell_type, stimulated, before, clean_edit, test_types)
    assert clean.concept_rate_before < 0.05 and clean.concept_rate_after > 0.95
    assert clean.cell_type_accuracy_before > 0.95 and clean.cell_type_accuracy_after > 0.95
    assert list(clean.by_cell_type.index) == [0, 1]
    assert clean.by_cell_type["n_cells"].sum() == 100

    leaky = metrics.concept_leakage(train, cell_type, stimulated, before, leaky_edit, test_types)
    assert leaky.concept_rate_after > 0.95
    assert leaky.cell_type_accuracy_after < 0.1


# ----------------------------------------------------------------------------- identifiability


def test_mcc_is_one_for_a_permuted_sign_flipped_copy(rng):
    true = rng.normal(size=(200, 5))
    learned = -3.0 * true[:, [2, 0, 4, 1, 3]] * np.array([1, -1, 1, -1, 1]) + 7.0
    assert metrics.mcc(learned, true) == pytest.approx(1.0)
    assert metrics.mcc(rng.normal(size=(200, 5)), true) < 0.3


def test_linear_r2_is_one_for_an_invertible_linear_map(rng):
    true = rng.normal(size=(300, 4))
    mixing = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    learned = true @ mixing + 1.5
    assert metrics.linear_r2(learned, true, seed=0) == pytest.approx(1.0, abs=1e-10)
    assert metrics.linear_r2(rng.normal(size=(300, 4)), true, seed=0) < 0.1


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_seeded_and_contains_the_mean(rng):
    values = rng.exponential(size=500)
    mean, low, high = metrics.bootstrap_ci(values, rng=np.random.default_rng(3))
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert metrics.bootstrap_ci(values, rng=np.random.default_rng(3)) == (mean, low, high)
    assert metrics.bootstrap_ci(values, rng=3) == (mean, low, high)
    assert metrics.bootstrap_ci(values, rng=4) != (mean, low, high)
    normal_half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(normal_half_width, rel=0.15)
    narrower = metrics.bootstrap_ci(values, level=0.5, rng=3)
    assert low < narrower[1] < narrower[2] < high


def test_bootstrap_ci_of_constant_values_is_degenerate():
    assert metrics.bootstrap_ci(np.full(10, 2.0), n_boot=50, rng=0) == (2.0, 2.0, 2.0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: metrics.mmd(x, y[:, :3]), "different numbers of dims: 4 vs 3"),
        (lambda x, y: metrics.energy_distance(x[0], y), "must be 2-D"),
        (lambda x, y: metrics.mse(x, y[:-1]), "same shape"),
        (lambda x, y: metrics.frechet_distance(x[:1], y), "at least 2 cells"),
        (lambda x, y: metrics.mmd(x, y, block_size=0), "block_size"),
        (lambda x, y: metrics.mmd(x, y, bandwidths=(1.0, -1.0)), "bandwidth"),
        (lambda x, y: metrics.mmd(x, y, precision="float16"), "precision"),
        (lambda x, y: metrics.mmd(x, y, device="tpu"), "device"),
        (lambda x, y: metrics.sinkhorn_divergence(x, y, epsilon=0.0), "epsilon"),
        (lambda x, y: metrics.rmmd(x, y, y), "sequence of populations"),
        (lambda x, y: metrics.mcc(x, y[:-1]), "same cells"),
        (lambda x, y: metrics.nmi(x, np.zeros(len(x))), "distinct values"),
        (lambda x, y: metrics.bootstrap_ci(x, rng=0), "1-D"),
        (lambda x, y: metrics.bootstrap_ci(x[:, 0], level=1.5, rng=0), "level"),
    ],
)
def test_bad_input_raises_one_line_error(rng, call, message):
    x, y = rng.normal(size=(2, 20, 4))
    with pytest.raises(SimcellError, match=message) as error:
        call(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "name", ["mse", "pearson", "mmd", "energy", "fid", "sinkhorn", "linear_r2", "mcc"]
)
def test_non_finite_values_raise(rng, name, bad):
    x, y = rng.normal(size=(2, 20, 4))
    y[3, 1] = bad
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.get_metric(name).fn(x, y)


def test_frechet_from_moments_rejects_invalid_covariances():
    with pytest.raises(SimcellError, match="not positive semi-definite"):
        metrics.frechet_from_moments(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(SimcellError, match="not symmetric"):
        metrics.frechet_from_moments(
            np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2)
        )
    with pytest.raises(SimcellError, match="same n_dims"):
        metrics.frechet_from_moments(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_non_finite_moments_and_labels_raise(rng):
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.frechet_from_moments(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(SimcellError, match="missing"):
        metrics.knn_accuracy(
            np.zeros((2, 1)), np.array([1.0, np.nan]), np.zeros((3, 1)), np.zeros(3), k=1
        )
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.bootstrap_ci(np.array([1.0, np.nan]), rng=0)


# ----------------------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(two_samples):
    x, y = two_samples
    for fn in (metrics.mmd, metrics.energy_distance):
        for precision, rel in (("float64", 1e-9), ("float32", 1e-5)):
            on_gpu = fn(x, y, device="cuda", precision=precision)
            assert on_gpu == pytest.approx(fn(x, y, device="cpu", precision=precision), rel=rel)
    assert metrics.sinkhorn_divergence(x, y, device="cuda") == pytest.approx(
        metrics.sinkhorn_divergence(x, y, device="cpu"), rel=1e-7
    )
