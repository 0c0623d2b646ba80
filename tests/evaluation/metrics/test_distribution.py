"""Distribution-level distances: MMD, energy distance, Fréchet distance, Sinkhorn divergence."""

from __future__ import annotations

import functools

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist

from simcell import SimcellError, SimcellWarning
from simcell.evaluation import metrics


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


# ----------------------------------------------------------------------------- MMD


@pytest.mark.parametrize("paired", [False, True])
def test_mmd_equals_brute_force(rng, brute_force_mmd, paired):
    x = rng.normal(size=(70, 6)) + 3.0
    y = rng.normal(size=(70, 6)) * 1.3 + 3.4
    bandwidths = (0.7, 1.9, 4.0)
    expected = brute_force_mmd(x, y, bandwidths, paired=paired)
    options = {"bandwidths": bandwidths, "device": "cpu", "paired": paired}
    assert metrics.mmd(x, y, precision="float64", **options) == pytest.approx(
        expected, rel=1e-10, abs=1e-13
    )
    assert metrics.mmd(x, y, **options) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_mmd_default_kernel_is_the_pooled_median_heuristic(two_samples, brute_force_mmd):
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


def test_mmd_of_a_sample_with_itself_matches_the_unbiased_formula(rng, brute_force_mmd):
    x = rng.normal(size=(40, 3))
    bandwidths = (1.0,)
    mean_off_diagonal = brute_force_mmd(x, x, bandwidths)
    kernel = np.exp(-cdist(x, x, "sqeuclidean") / 2)
    k_bar = (kernel.sum() - 40) / (40 * 39)
    assert mean_off_diagonal == pytest.approx(-2 * (1 - k_bar) / 40)
    assert metrics.mmd(x, x, bandwidths=bandwidths, precision="float64") == pytest.approx(
        mean_off_diagonal, rel=1e-10
    )
    paired = metrics.mmd(x, x, bandwidths=bandwidths, precision="float64", paired=True)
    assert abs(paired) < 1e-12


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
    from simcell.evaluation.metrics import _distances

    plan = _distances.rbf_plan([2.0, 0.125, 0.5, 0.3])
    assert plan == [(1.0, None), (pytest.approx(2.4), None), (4.0, None), (16.0, 2)]
    assert _distances.rbf_plan([1.0, 4.0, 16.0]) == [(1.0, None), (4.0, 2), (16.0, 2)]


# ----------------------------------------------------------------------------- energy


@pytest.mark.parametrize("paired", [False, True])
def test_energy_distance_equals_brute_force(rng, brute_force_energy, paired):
    x = rng.normal(size=(70, 6)) + 3.0
    y = rng.normal(size=(70, 6)) * 1.3 + 3.4
    expected = brute_force_energy(x, y, paired=paired)
    options = {"device": "cpu", "paired": paired}
    assert metrics.energy_distance(x, y, precision="float64", **options) == pytest.approx(
        expected, rel=1e-11
    )
    assert metrics.energy_distance(x, y, **options) == pytest.approx(expected, rel=1e-5)


def test_energy_distance_recomputes_near_pairs_exactly(rng, brute_force_energy):
    """Near-duplicate cells far from the centre: the norm expansion alone would cancel."""
    x = rng.normal(size=(50, 3)) + 1e3
    y = x + 1e-4 * rng.normal(size=x.shape)
    for paired in (False, True):
        expected = brute_force_energy(x, y, paired=paired)
        assert metrics.energy_distance(x, y, precision="float64", paired=paired) == pytest.approx(
            expected, rel=1e-6, abs=1e-9
        )
    assert metrics.energy_distance(x, y) == pytest.approx(brute_force_energy(x, y), rel=1e-3)


def test_energy_distance_is_not_squared():
    x = np.zeros((2, 2))
    y = np.array([[3.0, 4.0], [3.0, 4.0]])
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


def test_frechet_is_finite_on_rank_deficient_covariances(rng):
    direction = rng.normal(size=(6, 1))
    rank_one = direction @ direction.T
    low_rank = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 6))
    low_rank = low_rank @ low_rank.T
    for cov1, cov2 in [(rank_one, low_rank), (rank_one, rank_one), (np.zeros((6, 6)), rank_one)]:
        value = metrics.frechet_from_moments(np.zeros(6), cov1, np.zeros(6), cov2)
        assert np.isfinite(value) and value >= 0
    assert metrics.frechet_from_moments(np.zeros(6), rank_one, np.zeros(6), rank_one) < 1e-7
    few_cells = rng.normal(size=(4, 30))  # 4 cells in 30 dims: covariance of rank 3
    other = rng.normal(size=(5, 30)) + 3.0
    value = metrics.frechet_distance(few_cells, other, estimator="plugin")
    assert np.isfinite(value) and value > 0
    assert metrics.frechet_distance(few_cells, few_cells, estimator="plugin") < 1e-6
    with pytest.warns(SimcellWarning, match="4 cells in 30 dims; .* from about 60 cells"):
        value = metrics.frechet_distance(few_cells, other)
    assert np.isfinite(value) and value > 0
    with pytest.warns(SimcellWarning, match="bias correction"):
        assert abs(metrics.frechet_distance(few_cells, few_cells, paired=True)) < 1e-5


def test_frechet_distance_of_a_translated_sample_is_the_squared_shift(two_samples):
    x, _ = two_samples
    shift = np.arange(6) / 3
    expected = np.sum(shift**2)
    assert metrics.frechet_distance(x, x + shift, estimator="plugin") == pytest.approx(
        expected, rel=1e-8
    )
    # paired: the difference is constant, so both terms are exact
    assert metrics.frechet_distance(x, x + shift, paired=True) == pytest.approx(expected, rel=1e-8)


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
    scale = metrics.distribution.SINKHORN_EPSILON_SCALE
    epsilon = scale * np.median(pdist(np.vstack([x, y]), "sqeuclidean"))
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
        functools.partial(metrics.frechet_distance, paired=True),
        functools.partial(metrics.frechet_distance, estimator="plugin"),
        functools.partial(metrics.sinkhorn_divergence, epsilon_scale=0.5),
        functools.partial(metrics.energy_distance, paired=True),
        functools.partial(metrics.mmd, paired=True, precision="float64"),
    ],
    ids=["fid_paired", "fid_plugin", "sinkhorn", "energy_paired", "mmd_paired"],
)
def test_distance_of_a_sample_to_itself_is_zero(two_samples, distance):
    x, y = two_samples
    assert abs(distance(x, x.copy())) <= 1e-9 * distance(x[: len(y)], y)
    assert distance(x[: len(y)], y) > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: metrics.mmd(x, y[:, :3]), "different numbers of dims: 4 vs 3"),
        (lambda x, y: metrics.energy_distance(x[0], y), "must be 2-D"),
        (lambda x, y: metrics.frechet_distance(x[:2], y), "at least 3 cells"),
        (lambda x, y: metrics.frechet_distance(x[:1], y, estimator="plugin"), "at least 2"),
        (lambda x, y: metrics.frechet_distance(x, y, estimator="fid"), "estimator"),
        (lambda x, y: metrics.frechet_distance(x, y, n_blocks=1), "n_blocks"),
        (lambda x, y: metrics.mmd(x, y[:-1], paired=True), "paired=True needs as many"),
        (lambda x, y: metrics.energy_distance(x, y[:-1], paired=True), "paired=True"),
        (lambda x, y: metrics.frechet_distance(x, y[:-1], paired=True), "paired=True"),
        (lambda x, y: metrics.sinkhorn_divergence(x, y[:-1], paired=True), "paired=True"),
        (lambda x, y: metrics.mmd(x, y, block_size=0), "block_size"),
        (lambda x, y: metrics.mmd(x, y, bandwidths=(1.0, -1.0)), "bandwidth"),
        (lambda x, y: metrics.mmd(x, y, precision="float16"), "precision"),
        (lambda x, y: metrics.mmd(x, y, device="tpu"), "device"),
        (lambda x, y: metrics.sinkhorn_divergence(x, y, epsilon=0.0), "epsilon"),
    ],
)
def test_bad_input_raises_one_line_error(rng, call, message):
    x, y = rng.normal(size=(2, 20, 4))
    with pytest.raises(SimcellError, match=message) as error:
        call(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["mmd", "energy", "fid", "sinkhorn"])
def test_non_finite_values_raise(rng, name, bad):
    x, y = rng.normal(size=(2, 20, 4))
    y[3, 1] = bad
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.get_metric(name).fn(pred=x, truth=y)


def test_frechet_from_moments_rejects_invalid_covariances():
    with pytest.raises(SimcellError, match="not positive semi-definite"):
        metrics.frechet_from_moments(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(SimcellError, match="not symmetric"):
        metrics.frechet_from_moments(
            np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2)
        )
    with pytest.raises(SimcellError, match="same n_dims"):
        metrics.frechet_from_moments(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.frechet_from_moments(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


# ----------------------------------------------------------------------------- device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(two_samples):
    x, y = two_samples
    for fn in (metrics.mmd, metrics.energy_distance):
        for precision, rel in (("float64", 1e-9), ("float32", 1e-5)):
            on_gpu = fn(x, y, device="cuda", precision=precision)
            assert on_gpu == pytest.approx(fn(x, y, device="cpu", precision=precision), rel=rel)
        paired_x = x[: len(y)]
        assert fn(paired_x, y, device="cuda", precision="float64", paired=True) == pytest.approx(
            fn(paired_x, y, device="cpu", precision="float64", paired=True), rel=1e-9
        )
    assert metrics.sinkhorn_divergence(x, y, device="cuda") == pytest.approx(
        metrics.sinkhorn_divergence(x, y, device="cpu"), rel=1e-7
    )


# ----------------------------------------------------------------------------- paired rows, bias
# Issue 10, defect 4: a prediction paired row by row with its true twin must not
# gain from the pairing, and FID's finite-sample bias must not rank a perfect
# independent sample below a copy of the source cells.


def _paired_same_law(rng, n_cells, n_dims, correlation=0.98):
    """``truth`` and ``pred`` of the same law N(0, I), row i of each strongly correlated."""
    truth = rng.normal(size=(n_cells, n_dims))
    noise = rng.normal(size=(n_cells, n_dims))
    return correlation * truth + np.sqrt(1 - correlation**2) * noise, truth


@pytest.mark.parametrize(
    "distance",
    [
        functools.partial(metrics.mmd, bandwidths=(0.8, 1.6, 3.2), device="cpu"),
        functools.partial(metrics.energy_distance, device="cpu"),
    ],
    ids=["mmd", "energy"],
)
def test_paired_estimator_is_unbiased_where_the_independent_one_is_not(distance):
    """Same law (the distance is 0): over seeded replicates the paired estimator averages 0;
    the independent-samples estimator on the same paired rows does not (the old code)."""
    rng = np.random.default_rng(11)
    n_replicates, n_cells, n_dims = 200, 20, 3
    paired, unpaired, independent = [], [], []
    for _ in range(n_replicates):
        pred, truth = _paired_same_law(rng, n_cells, n_dims)
        paired.append(distance(pred, truth, paired=True))
        unpaired.append(distance(pred, truth))
        independent.append(distance(rng.normal(size=(n_cells, n_dims)), truth))
    paired, unpaired, independent = map(np.array, (paired, unpaired, independent))

    def standard_error(values):
        return values.std(ddof=1) / np.sqrt(n_replicates)

    assert abs(paired.mean()) < 3.5 * standard_error(paired)
    assert abs(independent.mean()) < 3.5 * standard_error(independent)
    # ignoring the pairing biases the estimate downwards: the copy looks better than the law
    assert unpaired.mean() < -10 * standard_error(unpaired)


def test_paired_mmd_of_a_noisy_copy_matches_the_closed_form():
    """pred = truth + noise (paired): the mean estimate is the Gaussian closed form of MMD²."""
    rng = np.random.default_rng(12)
    n_replicates, n_cells, n_dims, noise, width = 200, 20, 2, 0.5, 1.5

    def mean_kernel(
        var_a, var_b
    ):  # E exp(-|a - b|² / 2w²) for a ~ N(0, var_a I), b ~ N(0, var_b I)
        return (width**2 / (width**2 + var_a + var_b)) ** (n_dims / 2)

    pred_var = 1 + noise**2
    closed_form = mean_kernel(pred_var, pred_var) + mean_kernel(1, 1) - 2 * mean_kernel(pred_var, 1)
    values = []
    for _ in range(n_replicates):
        truth = rng.normal(size=(n_cells, n_dims))
        pred = truth + noise * rng.normal(size=truth.shape)
        values.append(metrics.mmd(pred, truth, paired=True, bandwidths=(width,), device="cpu"))
    values = np.array(values)
    assert abs(values.mean() - closed_form) < 3.5 * values.std(ddof=1) / np.sqrt(n_replicates)


def _gaussian(rng, mean, cov, n_cells):
    return rng.multivariate_normal(mean, cov, size=n_cells, method="cholesky")


def test_fid_of_two_samples_of_one_gaussian_in_128_dims_is_near_zero():
    """n = 1000 per sample, 128 dims: the plug-in FID is about 6; the estimator about 0."""
    rng = np.random.default_rng(13)
    n_dims, n_cells = 128, 1000
    factor = rng.normal(size=(n_dims, n_dims)) / np.sqrt(n_dims)
    cov = factor @ factor.T + 0.1 * np.eye(n_dims)
    root = np.linalg.cholesky(cov)
    plugin, unbiased = [], []
    for replicate in range(3):
        x = rng.normal(size=(n_cells, n_dims)) @ root.T
        y = rng.normal(size=(n_cells, n_dims)) @ root.T
        plugin.append(metrics.frechet_distance(x, y, estimator="plugin"))
        unbiased.append(metrics.frechet_distance(x, y, seed=replicate))
    assert min(plugin) > 4.0
    assert abs(np.mean(unbiased)) < 0.3
    assert max(np.abs(unbiased)) < 0.1 * min(plugin)


def test_fid_ranks_a_perfect_sample_above_a_copy_of_the_source_cells():
    """The artefact of the issue: identity (paired, shifted twins) beat a perfect sample."""
    rng = np.random.default_rng(14)
    n_dims, n_cells = 128, 1000
    truth = rng.normal(size=(n_cells, n_dims))
    shift = np.full(n_dims, np.sqrt(1.5 / n_dims))  # true FID of the copy: |shift|² = 1.5
    source_cells = truth - shift  # identity: each twin minus the effect, row for row
    perfect = rng.normal(size=(n_cells, n_dims))  # an independent sample of the true law
    plugin_identity = metrics.frechet_distance(source_cells, truth, estimator="plugin")
    plugin_perfect = metrics.frechet_distance(perfect, truth, estimator="plugin")
    assert plugin_perfect > plugin_identity  # the plug-in ranks them the wrong way round
    identity = metrics.frechet_distance(source_cells, truth, paired=True)
    assert identity == pytest.approx(1.5, rel=1e-6)
    assert abs(metrics.frechet_distance(perfect, truth)) < 0.3 < identity


@pytest.mark.parametrize("paired", [False, True])
def test_fid_matches_the_closed_form_of_two_gaussians(paired):
    """Seeded Monte Carlo: the mean estimate is eq. 53 of the two laws; the plug-in's is not."""
    rng = np.random.default_rng(15 + paired)
    n_replicates, n_dims, n_cells = 20, 24, 300
    factor = rng.normal(size=(n_dims, n_dims)) / np.sqrt(n_dims)
    cov_truth = factor @ factor.T + 0.2 * np.eye(n_dims)
    mixing = np.eye(n_dims) + 0.3 * rng.normal(size=(n_dims, n_dims)) / np.sqrt(n_dims)
    offset = 0.1 * rng.normal(size=n_dims)
    noise_var = 0.3
    # pred = truth @ mixing.T + offset + noise: Gaussian with these moments
    cov_pred = mixing @ cov_truth @ mixing.T + noise_var * np.eye(n_dims)
    closed_form = metrics.frechet_from_moments(offset, cov_pred, np.zeros(n_dims), cov_truth)
    root = np.linalg.cholesky(cov_truth)
    estimates, plugins = [], []
    for replicate in range(n_replicates):
        truth = rng.normal(size=(n_cells, n_dims)) @ root.T
        source = truth if paired else rng.normal(size=(n_cells, n_dims)) @ root.T
        pred = source @ mixing.T + offset + np.sqrt(noise_var) * rng.normal(size=truth.shape)
        estimates.append(metrics.frechet_distance(pred, truth, paired=paired, seed=replicate))
        plugins.append(metrics.frechet_distance(pred, truth, estimator="plugin"))
    estimates, plugins = np.array(estimates), np.array(plugins)
    standard_error = estimates.std(ddof=1) / np.sqrt(n_replicates)
    assert abs(estimates.mean() - closed_form) < max(3.5 * standard_error, 0.01 * closed_form)
    assert plugins.mean() - closed_form > 10 * standard_error


def test_paired_sinkhorn_gives_a_copy_of_the_twins_no_advantage():
    """S_ε of a near-copy of the truth is ~0, below a perfect independent sample; paired
    (disjoint halves), the two have the same law."""
    rng = np.random.default_rng(16)
    n_replicates, n_cells, n_dims, epsilon = 40, 40, 2, 0.5
    copy_paired, perfect_paired, copy_unpaired, perfect_unpaired = [], [], [], []
    for replicate in range(n_replicates):
        truth = rng.normal(size=(n_cells, n_dims))
        copy = truth + 0.01 * rng.normal(size=truth.shape)
        perfect = rng.normal(size=(n_cells, n_dims))
        options = {"epsilon": epsilon, "device": "cpu", "seed": replicate}
        copy_paired.append(metrics.sinkhorn_divergence(copy, truth, paired=True, **options))
        perfect_paired.append(metrics.sinkhorn_divergence(perfect, truth, paired=True, **options))
        copy_unpaired.append(metrics.sinkhorn_divergence(copy, truth, **options))
        perfect_unpaired.append(metrics.sinkhorn_divergence(perfect, truth, **options))
    copy_paired, perfect_paired = np.array(copy_paired), np.array(perfect_paired)
    assert np.mean(copy_unpaired) < 0.05 * np.mean(perfect_unpaired)
    difference = copy_paired - perfect_paired
    assert abs(difference.mean()) < 3.5 * difference.std(ddof=1) / np.sqrt(n_replicates)
    assert copy_paired.mean() > 0.5 * perfect_paired.mean()


def _fid_with_own_factors(x, y, *, paired, seed=0, n_blocks=10):
    """The jackknifed FID with every trace factored on the pred side, nothing reused."""
    from simcell.evaluation.metrics import _distances

    m, n = x.shape[0], y.shape[0]
    groups = min(n_blocks, m, n)
    rng = np.random.default_rng(seed)
    x_blocks = np.array_split(rng.permutation(m), groups)
    y_blocks = x_blocks if paired else np.array_split(rng.permutation(n), groups)
    cov_x, x_without = _distances.scatter_without_blocks(x - x.mean(0), x_blocks)
    cov_y, y_without = _distances.scatter_without_blocks(y - y.mean(0), y_blocks)
    if paired:
        d = x - y
        mean_term = d.mean(0) @ d.mean(0) - np.sum((d - d.mean(0)) ** 2) / ((n - 1) * n)
    else:
        diff = x.mean(0) - y.mean(0)
        mean_term = diff @ diff - np.trace(cov_x) / m - np.trace(cov_y) / n

    def trace(a, b):
        return np.trace(a) + np.trace(b) - 2 * _distances.frechet_trace_sqrt(a, b)

    without = np.mean([trace(a, b) for a, b in zip(x_without, y_without, strict=True)])
    return float(mean_term + groups * trace(cov_x, cov_y) - (groups - 1) * without)


@pytest.mark.parametrize("paired", [False, True])
def test_fid_reuses_the_truth_side_without_changing_a_value(rng, paired):
    truth = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    full_rank = truth + rng.normal(size=truth.shape)
    # rank 5 < 20 dims: singular covariances, factored on the truth's side
    low_rank = np.tile(truth[:, :5], 4) + 0.1
    for pred, rel in ((full_rank, 0.0), (low_rank, 1e-7)):
        expected = _fid_with_own_factors(pred, truth, paired=paired)
        first = metrics.frechet_distance(pred, truth, paired=paired)
        again = metrics.frechet_distance(pred, truth, paired=paired)  # truth's moments reused
        assert first == again
        assert first == pytest.approx(expected, rel=rel, abs=0)
    # another truth of the same shape is not served from the cache
    other = truth + 1.0 + rng.normal(size=truth.shape)
    assert metrics.frechet_distance(full_rank, other, paired=paired) == pytest.approx(
        _fid_with_own_factors(full_rank, other, paired=paired), rel=0, abs=0
    )
