"""kalmax.metrics against plain NumPy references written out with explicit loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kalmax import metrics

DTYPES = [np.float64, np.float32]
# float32 results are compared with float64 references of the same (rounded) inputs.
RTOL = {np.float64: 1e-12, np.float32: 2e-5}
ATOL = {np.float64: 1e-12, np.float32: 2e-6}


# --------------------------------------------------------------------------- NumPy references


def np_rmse(estimate, truth):
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    flat_e, flat_t = estimate.reshape(-1, estimate.shape[-1]), truth.reshape(-1, truth.shape[-1])
    out = [np.sqrt(np.mean((e - t) ** 2)) for e, t in zip(flat_e, flat_t)]
    return np.array(out).reshape(estimate.shape[:-1])


def np_spread(ensemble):
    ensemble = np.asarray(ensemble, np.float64)
    flat = ensemble.reshape((-1,) + ensemble.shape[-2:])
    out = []
    for members in flat:
        J = members.shape[0]
        mean = members.sum(axis=0) / J
        var = ((members - mean) ** 2).sum(axis=0) / (J - 1)
        out.append(np.sqrt(var.mean()))
    return np.array(out).reshape(ensemble.shape[:-2])


def np_crps(ensemble, truth, fair=False):
    """The energy form with the O(J^2) double loop, one component at a time."""
    ensemble, truth = np.asarray(ensemble, np.float64), np.asarray(truth, np.float64)
    flat_x = ensemble.reshape((-1,) + ensemble.shape[-2:])
    flat_y = truth.reshape(-1, truth.shape[-1])
    out = []
    for x, y in zip(flat_x, flat_y):
        J, d = x.shape
        scores = []
        for i in range(d):
            abs_term = sum(abs(x[j, i] - y[i]) for j in range(J)) / J
            pairs = sum(abs(x[j, i] - x[k, i]) for j in range(J) for k in range(J))
            scores.append(abs_term - pairs / (2 * J * (J - 1) if fair else 2 * J * J))
        out.append(np.mean(scores))
    return np.array(out).reshape(ensemble.shape[:-2])


def np_crps_gaussian(mean, std, truth):
    mean, std, truth = (np.asarray(a, np.float64) for a in (mean, std, truth))
    z = (truth - mean) / std
    score = std * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    return score.mean(axis=-1)


def np_rank_histogram(ensemble, truth):
    ensemble, truth = np.asarray(ensemble), np.asarray(truth)
    J = ensemble.shape[-2]
    counts = np.zeros(J + 1, dtype=np.int64)
    flat_x = ensemble.reshape((-1,) + ensemble.shape[-2:])
    flat_y = truth.reshape(-1, truth.shape[-1])
    for x, y in zip(flat_x, flat_y):
        for i in range(len(y)):
            if np.isnan(y[i]):
                continue
            rank = 0
            for j in range(J):
                if x[j, i] < y[i]:
                    rank += 1
            counts[rank] += 1
    return counts


def data(seed, shape, dtype, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


# --------------------------------------------------------------------------- RMSE and spread


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4,), (2, 6, 4)])
def test_rmse_matches_numpy(dtype, shape):
    estimate, truth = data(0, shape, dtype), data(1, shape, dtype)
    out = metrics.rmse(estimate, truth)
    assert out.shape == shape[:-1] and out.dtype == dtype
    np.testing.assert_allclose(out, np_rmse(estimate, truth), rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (2, 7, 5, 3), (2, 1)])
def test_spread_matches_numpy(dtype, shape):
    ensemble = data(2, shape, dtype)
    out = metrics.spread(ensemble)
    assert out.shape == shape[:-2] and out.dtype == dtype
    np.testing.assert_allclose(out, np_spread(ensemble), rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_spread_from_cov_equals_spread_of_the_ensemble_covariance(dtype):
    ensemble = data(3, (6, 8, 4), dtype)  # (T, J, d)
    covs = np.stack([np.cov(members, rowvar=False, ddof=1) for members in ensemble]).astype(dtype)
    out = metrics.spread_from_cov(covs)
    assert out.shape == (6,) and out.dtype == dtype
    np.testing.assert_allclose(out, np_spread(ensemble), rtol=10 * RTOL[dtype], atol=ATOL[dtype])
    single = metrics.spread_from_cov(covs[0])
    assert single.shape == ()
    np.testing.assert_allclose(single, np.sqrt(np.trace(covs[0]) / 4), rtol=RTOL[dtype])


def test_spread_from_cov_of_an_invalid_covariance_is_nan_not_hidden():
    assert np.isnan(metrics.spread_from_cov(-np.eye(2)))


# --------------------------------------------------------------------------- CRPS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fair", [False, True])
@pytest.mark.parametrize(("ens_shape", "truth_shape"), [((7, 3), (3,)), ((2, 3, 5, 2), (2, 3, 2))])
def test_crps_matches_numpy_double_loop(dtype, fair, ens_shape, truth_shape):
    ensemble, truth = data(4, ens_shape, dtype), data(5, truth_shape, dtype, scale=1.5)
    out = metrics.crps(ensemble, truth, fair=fair)
    assert out.shape == ens_shape[:-2] and out.dtype == dtype
    expected = np_crps(ensemble, truth, fair=fair)
    np.testing.assert_allclose(out, expected, rtol=10 * RTOL[dtype], atol=10 * ATOL[dtype])


@pytest.mark.parametrize("fair", [False, True])
def test_crps_pairwise_and_sorted_forms_agree(fair):
    # small ensembles form the J x J pair sum, large ones sort: both must equal the double loop
    J, d = 64, 3
    ensemble, truth = data(11, (J, d), np.float64), data(12, (d,), np.float64)
    assert J * J * d <= metrics._PAIRWISE_MAX  # the pairwise form
    expected = np_crps(ensemble, truth, fair=fair)
    np.testing.assert_allclose(metrics.crps(ensemble, truth, fair=fair), expected, rtol=1e-12)
    big = np.tile(ensemble, (1, 1 + metrics._PAIRWISE_MAX // (J * J * d)))  # the same columns repeated
    assert J * big.size > metrics._PAIRWISE_MAX  # the sorted form
    np.testing.assert_allclose(metrics.crps(big, np.tile(truth, big.shape[1] // d), fair=fair), expected, rtol=1e-12)


def test_crps_with_ties_matches_numpy():
    # Integer-valued members: many exact ties, which the sorted formula must handle.
    rng = np.random.default_rng(6)
    ensemble = rng.integers(-2, 3, size=(5, 9, 3)).astype(np.float64)
    truth = rng.integers(-2, 3, size=(5, 3)).astype(np.float64)
    for fair in (False, True):
        out = metrics.crps(ensemble, truth, fair=fair)
        np.testing.assert_allclose(out, np_crps(ensemble, truth, fair), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crps_of_one_member_is_the_absolute_error(dtype):
    ensemble, truth = data(7, (10, 1, 4), dtype), data(8, (10, 4), dtype)
    out = metrics.crps(ensemble, truth)
    np.testing.assert_allclose(out, np.abs(ensemble[:, 0] - truth).mean(-1), rtol=RTOL[dtype], atol=ATOL[dtype])


def test_crps_float32_is_accurate_for_values_with_a_large_offset():
    # Members centred on the truth before the weighted sum: no cancellation of 1e4 * J terms.
    ensemble = data(9, (40, 3), np.float32, loc=1e4)
    truth = data(10, (3,), np.float32, loc=1e4)
    expected = np_crps(ensemble, truth)  # float64 from the same float32 inputs
    np.testing.assert_allclose(metrics.crps(ensemble, truth), expected, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crps_gaussian_matches_scipy(dtype):
    mean, truth = data(11, (6, 3), dtype), data(12, (6, 3), dtype)
    std = np.abs(data(13, (6, 3), dtype)) + dtype(0.1)
    out = metrics.crps_gaussian(mean, std, truth)
    assert out.shape == (6,) and out.dtype == dtype
    np.testing.assert_allclose(out, np_crps_gaussian(mean, std, truth), rtol=10 * RTOL[dtype], atol=10 * ATOL[dtype])


def test_crps_gaussian_with_zero_std_is_the_absolute_error_with_finite_gradients():
    mean, truth = jnp.array([0.5, -1.0]), jnp.array([0.0, 1.0])
    std = jnp.array([0.0, 0.0])
    value, grads = jax.jit(jax.value_and_grad(metrics.crps_gaussian, argnums=(0, 1, 2)))(mean, std, truth)
    np.testing.assert_allclose(value, 1.25)
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crps_gaussian_equals_crps_of_a_large_gaussian_ensemble(dtype):
    # J = 20000 draws per component, d = 8 components. The fair CRPS is unbiased for the
    # Gaussian CRPS; its Monte Carlo standard deviation is about sd(|X - y|) / sqrt(J) per
    # component, < 1.5 * 0.6 / 141 ~ 0.0065, and ~0.0025 for the mean of the 8 independent
    # components. The standard form adds a bias E|X - X'| / (2 J) = s / (sqrt(pi) J) < 1e-4.
    # A tolerance of 0.015 is > 5 standard deviations; with the fixed seed the error is smaller.
    J, d = 20_000, 8
    rng = np.random.default_rng(14)
    mean = rng.normal(size=d)
    std = rng.uniform(0.5, 1.5, size=d)
    truth = mean + std * rng.normal(size=d)
    ensemble = mean + std * rng.standard_normal((J, d))
    args = [a.astype(dtype) for a in (ensemble, truth)]
    exact = metrics.crps_gaussian(mean.astype(dtype), std.astype(dtype), truth.astype(dtype))
    for fair in (False, True):
        np.testing.assert_allclose(metrics.crps(*args, fair=fair), exact, atol=0.015)


def test_crps_gradient_matches_finite_differences():
    ensemble, truth = data(15, (6, 3), np.float64), data(16, (3,), np.float64)
    # One compilation for both estimators (XLA compiles dominate this file's run time).
    @jax.jit
    def both_grads(e, y):
        return [jax.grad(metrics.crps, argnums=(0, 1))(e, y, fair=fair) for fair in (False, True)]

    all_grads = both_grads(ensemble, truth)
    for fair, (g_ens, g_truth) in zip((False, True), all_grads):
        assert np.all(np.isfinite(g_ens)) and np.all(np.isfinite(g_truth))
        eps = 1e-6
        for index in [(0, 0), (3, 1), (5, 2)]:
            step = np.zeros_like(ensemble)
            step[index] = eps
            fd = np_crps(ensemble + step, truth, fair) - np_crps(ensemble - step, truth, fair)
            fd /= 2 * eps
            np.testing.assert_allclose(g_ens[index], fd, rtol=1e-6, atol=1e-8)
        step = np.zeros_like(truth)
        step[1] = eps
        fd = np_crps(ensemble, truth + step, fair) - np_crps(ensemble, truth - step, fair)
        fd /= 2 * eps
        np.testing.assert_allclose(g_truth[1], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_are_finite_including_at_zero(dtype):
    estimate, truth = data(17, (5, 3), dtype), data(18, (5, 3), dtype)
    collapsed = np.broadcast_to(truth[0], (4, 3)).astype(dtype)

    @jax.jit
    def grads(estimate, truth, collapsed):
        rmse_sum = lambda e: metrics.rmse(e, truth).sum()
        return (
            jax.grad(rmse_sum)(estimate),
            # A perfect estimate and a collapsed ensemble: zero scores with zero (not NaN) gradients.
            jax.grad(rmse_sum)(truth),
            jax.grad(metrics.spread)(collapsed),
            jax.grad(metrics.crps)(collapsed, truth[0]),
            jax.grad(metrics.crps, argnums=1)(collapsed, truth[0]),
        )

    g_rmse, g_perfect, g_spread, g_crps, g_crps_truth = grads(estimate, truth, collapsed)
    assert g_rmse.dtype == dtype and np.all(np.isfinite(g_rmse))
    expected = (estimate - truth) / (3 * np_rmse(estimate, truth)[:, None])  # d rmse / d estimate
    np.testing.assert_allclose(g_rmse, expected, rtol=10 * RTOL[dtype])
    assert np.all(g_perfect == 0) and np.all(g_spread == 0)
    assert np.all(np.isfinite(g_crps)) and np.all(np.isfinite(g_crps_truth))


# --------------------------------------------------------------------------- rank histogram


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("ens_shape", "truth_shape"), [((6, 5), (5,)), ((3, 10, 6, 2), (3, 10, 2))])
def test_rank_histogram_matches_numpy_loops(dtype, ens_shape, truth_shape):
    ensemble, truth = data(19, ens_shape, dtype), data(20, truth_shape, dtype, scale=1.3)
    counts = metrics.rank_histogram(ensemble, truth)
    assert counts.shape == (ens_shape[-2] + 1,) and jnp.issubdtype(counts.dtype, jnp.integer)
    np.testing.assert_array_equal(counts, np_rank_histogram(ensemble, truth))
    assert int(counts.sum()) == truth.size


def test_rank_histogram_ties_count_members_strictly_below_without_a_key():
    rng = np.random.default_rng(21)
    ensemble = rng.integers(0, 3, size=(50, 4, 3)).astype(np.float64)
    truth = rng.integers(0, 3, size=(50, 3)).astype(np.float64)
    np.testing.assert_array_equal(metrics.rank_histogram(ensemble, truth), np_rank_histogram(ensemble, truth))


def test_rank_histogram_breaks_ties_at_random_with_a_key():
    # A collapsed ensemble equal to the truth: every entry is a (J+1)-way tie.
    J, n = 4, 5000
    truth = data(22, (n // 5, 5), np.float64)
    ensemble = np.broadcast_to(truth[:, None, :], (n // 5, J, 5))
    without = metrics.rank_histogram(ensemble, truth)
    np.testing.assert_array_equal(without, [n, 0, 0, 0, 0])
    with_key = metrics.rank_histogram(ensemble, truth, jax.random.key(0))
    assert int(with_key.sum()) == n
    chi2 = np.sum((np.asarray(with_key) - n / (J + 1)) ** 2 / (n / (J + 1)))
    assert chi2 < stats.chi2.ppf(0.999, J)
    # Without ties the key changes nothing (same shapes as above: one compilation).
    ens, tr = data(23, (n // 5, J, 5), np.float64), data(24, (n // 5, 5), np.float64)
    with_key = metrics.rank_histogram(ens, tr, jax.random.key(1))
    np.testing.assert_array_equal(with_key, metrics.rank_histogram(ens, tr))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_histogram_of_a_calibrated_ensemble_is_flat(dtype):
    # Truth and members drawn from one distribution: each rank has probability 1/(J+1).
    # Pearson's statistic is then ~ chi^2 with J degrees of freedom (entries independent);
    # the 99.9% quantile (27.9 for J = 9) fails a correct code once in 1000 seeds.
    T, J, d = 2000, 9, 5
    rng = np.random.default_rng(25)
    centre = rng.normal(size=(T, 1, d))  # a different distribution at every time and component
    scale = rng.uniform(0.5, 2.0, size=(T, 1, d))
    draws = (centre + scale * rng.standard_normal((T, J + 1, d))).astype(dtype)
    ensemble, truth = draws[:, :J], draws[:, J]
    counts = np.asarray(metrics.rank_histogram(ensemble, truth))
    expected = T * d / (J + 1)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.999, J), counts
    # An under-dispersed ensemble (half the spread) is U-shaped and fails the same test.
    narrow = (centre + 0.5 * (draws[:, :J] - centre)).astype(dtype)
    u_counts = np.asarray(metrics.rank_histogram(narrow, truth))
    assert np.sum((u_counts - expected) ** 2 / expected) > 10 * stats.chi2.ppf(0.999, J)
    assert u_counts[0] > 2 * expected and u_counts[-1] > 2 * expected


def test_rank_histogram_skips_missing_truths():
    ensemble, truth = data(26, (10, 5, 3), np.float64), data(27, (10, 3), np.float64)
    truth[2, 1] = np.nan
    truth[7] = np.nan
    counts = metrics.rank_histogram(ensemble, truth)
    np.testing.assert_array_equal(counts, np_rank_histogram(ensemble, truth))
    assert int(counts.sum()) == 30 - 4


# --------------------------------------------------------------------------- time averages


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12,), (12, 2, 3)])
def test_time_average_matches_numpy(dtype, shape):
    series = data(28, shape, dtype)
    for burn_in in (0, 5, 11):
        out = metrics.time_average(series, burn_in)
        assert out.shape == shape[1:] and out.dtype == dtype
        expected = np.asarray(series, np.float64)[burn_in:].mean(axis=0)
        np.testing.assert_allclose(out, expected, rtol=10 * RTOL[dtype], atol=10 * ATOL[dtype])


def test_time_average_with_a_traced_burn_in_and_nan_spin_up():
    series = data(29, (10, 2), np.float64)
    series[:3] = np.nan  # a diverged spin-up must not leak into the average
    f = jax.jit(metrics.time_average)
    for burn_in in (3, 6):
        out = f(series, jnp.asarray(burn_in, jnp.int32))
        np.testing.assert_allclose(out, series[burn_in:].mean(0), rtol=1e-12)
    g = jax.grad(lambda s: metrics.time_average(s, 3).sum())(series)
    np.testing.assert_array_equal(g[:3], 0)


def test_dapper_style_score_of_a_history():
    # rmse and spread per analysis time, then averaged after the burn-in (DAPPER's order).
    T, J, d, burn_in = 20, 6, 4, 5
    ensemble, truth = data(30, (T, J, d), np.float64), data(31, (T, d), np.float64)
    score = metrics.time_average(metrics.rmse(ensemble.mean(axis=1), truth), burn_in)
    kept = range(burn_in, T)
    expected = np.mean([np.sqrt(np.mean((ensemble[t].mean(0) - truth[t]) ** 2)) for t in kept])
    np.testing.assert_allclose(score, expected, rtol=1e-12)
    spread = metrics.time_average(metrics.spread(ensemble), burn_in)
    expected = np.mean([np.sqrt(np.var(ensemble[t], 0, ddof=1).mean()) for t in kept])
    np.testing.assert_allclose(spread, expected, rtol=1e-12)


# --------------------------------------------------------------------------- jit and vmap


def _cases(dtype):
    T, J, d = 7, 5, 3
    ens, truth = data(32, (T, J, d), dtype), data(33, (T, d), dtype)
    std = np.abs(data(34, (T, d), dtype)) + dtype(0.2)
    anomalies = ens - ens.mean(1, keepdims=True)
    covs = np.einsum("tji,tjk->tik", anomalies, anomalies) / (J - 1)
    return {
        "rmse": (metrics.rmse, (ens.mean(1), truth)),
        "spread": (metrics.spread, (ens,)),
        "spread_from_cov": (metrics.spread_from_cov, (covs.astype(dtype),)),
        "crps": (metrics.crps, (ens, truth)),
        "crps_fair": (lambda e, y: metrics.crps(e, y, fair=True), (ens, truth)),
        "crps_gaussian": (metrics.crps_gaussian, (ens.mean(1), std, truth)),
    }


@pytest.mark.parametrize("name", list(_cases(np.float64)))
def test_jit_of_vmap_agrees_with_the_batched_call(name):
    # Dtypes are covered by the reference tests; XLA compiles are the cost here.
    fn, args = _cases(np.float64)[name]
    batched = fn(*args)
    assert batched.shape == (7,)
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(*args), batched, rtol=1e-12, atol=1e-14)


def test_rank_histogram_under_jit_and_vmap():
    ens, truth = data(35, (8, 5, 3), np.float64), data(36, (8, 3), np.float64)
    total = metrics.rank_histogram(ens, truth)
    np.testing.assert_array_equal(jax.jit(metrics.rank_histogram)(ens, truth), total)
    per_time = jax.vmap(metrics.rank_histogram)(ens, truth)
    assert per_time.shape == (8, 6)
    np.testing.assert_array_equal(per_time.sum(0), total)


def test_fair_is_a_static_python_flag_under_jit():
    # `fair` is a Python bool (it picks the estimator); it works as a static argument of jit.
    ens, truth = data(37, (5, 3), np.float64), data(38, (3,), np.float64)
    f = jax.jit(metrics.crps, static_argnames="fair")
    np.testing.assert_allclose(f(ens, truth, fair=True), np_crps(ens, truth, fair=True), rtol=1e-12)


# --------------------------------------------------------------------------- bad input


def test_errors_name_the_argument_and_both_shapes():
    T, d = 5, 3
    x = np.zeros((T, d))
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\) to match `estimate`; got \(5, 4\)"):
        metrics.rmse(x, np.zeros((T, d + 1)))
    with pytest.raises(ValueError, match=r"`estimate` must have shape \(\.\.\., d\)"):
        metrics.rmse(1.0, 1.0)
    with pytest.raises(TypeError, match=r"dtype mix: `truth` is float32 but `estimate` is float64"):
        metrics.rmse(x, x.astype(np.float32))
    with pytest.raises(TypeError, match=r"`estimate` must have a floating dtype"):
        metrics.rmse(np.zeros((T, d), np.int32), x)

    ens = np.zeros((T, 4, d))
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\) to match `ensemble` of shape \(5, 4, 3\)"):
        metrics.crps(ens, np.zeros((T, d + 1)))
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\)"):
        metrics.crps(ens, np.zeros((4, d)))  # the member axis is not the time axis
    with pytest.raises(ValueError, match=r"`ensemble` must be an ensemble of shape \(\.\.\., J, d\).*got shape \(3,\)"):
        metrics.crps(np.zeros(d), np.zeros(d))
    with pytest.raises(ValueError, match=r"fair CRPS needs at least 2 members"):
        metrics.crps(np.zeros((1, d)), np.zeros(d), fair=True)
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\)"):
        metrics.rank_histogram(ens, np.zeros((T, d + 1)))

    with pytest.raises(ValueError, match=r"`ensemble` needs at least 2 members.*got shape \(1, 3\)"):
        metrics.spread(np.zeros((1, d)))
    with pytest.raises(ValueError, match=r"`cov` must be covariance matrices of shape \(\.\.\., d, d\); got shape \(3, 2\)"):
        metrics.spread_from_cov(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"`std` must have shape \(5, 3\) to match `mean`; got \(3,\)"):
        metrics.crps_gaussian(x, np.ones(d), x)
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\) to match `mean`"):
        metrics.crps_gaussian(x, x, x[0])

    with pytest.raises(ValueError, match=r"0 <= burn_in < T = 5.*got 5"):
        metrics.time_average(np.zeros(T), 5)
    with pytest.raises(ValueError, match=r"got -1"):
        metrics.time_average(np.zeros(T), -1)
    with pytest.raises(TypeError, match=r"`burn_in` must be an integer"):
        metrics.time_average(np.zeros(T), 2.0)
    with pytest.raises(ValueError, match=r"`series` must have a leading time axis"):
        metrics.time_average(np.float64(1.0), 0)


def test_shape_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match=r"`truth` must have shape \(5, 3\)"):
        jax.jit(metrics.crps)(np.zeros((5, 4, 3)), np.zeros((5, 4)))
