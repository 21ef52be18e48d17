"""Parallel-in-time (associative scan) Kalman filter and RTS smoother against the sequential ones.

The sequential `KalmanFilter` and RTS smoother are themselves checked against
NumPy references and dense joint-Gaussian conditioning (test_kalman.py,
test_rts.py), so equality to round-off here ties the parallel forms to those
references. All problems share dx = 3, dy = 2, T = 12 (odd lengths occur inside
the scan) and one of two model structures (time-invariant without offsets, or
time-varying with offsets), so that compiled functions are reused across tests:
the associative scan is slow to compile.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.filters.parallel_kalman import parallel_smoother
from kalmax.smoothers.rts import backward_pass

DX, DY, T = 3, 2, 12
FULL = kx.Save(cov=True, forecast=True, state=True)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def make(seed=0, time_varying=False, offsets=False, missing=None):
    """A random stable `LinearGaussianSSM` and observations drawn from it.

    missing: None; "partial" (single NaN entries); "rows" (whole rows, the first
    and the last included); "mixed" (both).
    """
    rng = np.random.default_rng(seed)

    def per_cycle(draw):
        if time_varying:
            return kx.TimeVarying(np.stack([draw() for _ in range(T)]))
        return draw()

    def dynamics():
        q, _ = np.linalg.qr(rng.normal(size=(DX, DX)))
        return rng.uniform(0.7, 1.0) * q  # spectral radius < 1: a stable, well-conditioned problem

    model = kx.LinearGaussianSSM(
        dynamics=per_cycle(dynamics),
        observation=per_cycle(lambda: rng.normal(size=(DY, DX))),
        dynamics_cov=per_cycle(lambda: _spd(rng, DX)),
        obs_cov=per_cycle(lambda: _spd(rng, DY)),
        init_mean=rng.normal(size=DX),
        init_cov=_spd(rng, DX),
        dynamics_offset=per_cycle(lambda: rng.normal(size=DX)) if offsets else None,
        obs_offset=per_cycle(lambda: rng.normal(size=DY)) if offsets else None,
    )
    _, ys = kx.simulate(model, jax.random.key(seed), T)
    ys = np.array(ys)
    if missing in ("partial", "mixed"):
        ys[2, 0] = np.nan
        ys[7, 1] = np.nan
    if missing in ("rows", "mixed"):
        ys[0] = np.nan
        ys[5] = np.nan
        ys[6] = np.nan
        ys[-1] = np.nan
    return model, jnp.asarray(ys)


GENERAL = dict(time_varying=True, offsets=True)
CASES = [
    dict(),
    dict(missing="rows", seed=1),
    dict(GENERAL, seed=2),
    dict(GENERAL, missing="partial", seed=3),
    dict(GENERAL, missing="mixed", seed=4),
]
CASE_IDS = ["-".join(f"{k}={v}" for k, v in c.items()) or "plain" for c in CASES]


def assert_close(actual, expected, rtol, name=""):
    """max |actual - expected| <= rtol * max |expected| (norm-wise relative, so near-zero
    entries of a well-scaled array are judged against its scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
    err = np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    scale = np.max(np.abs(expected.astype(np.float64)))
    assert err <= rtol * scale, f"{name}: max error {err:.3e} > {rtol:.1e} * scale {scale:.3e}"


def assert_trees_close(actual, expected, rtol):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, exp), act in zip(paths, jax.tree_util.tree_leaves(actual)):
        name = jax.tree_util.keystr(path)
        if jnp.issubdtype(exp.dtype, jnp.integer):
            np.testing.assert_array_equal(act, exp, err_msg=name)
            assert act.dtype == exp.dtype, name
        else:
            assert_close(act, exp, rtol, name)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_filter_and_smoother_match_sequential_float64(case):
    """Filtered, forecast and smoothed moments, cross-covariances, v_0 and every
    `KalmanInfo` field of `rts_smoother(parallel=True)` equal the sequential ones."""
    model, ys = make(**case)
    expected = kx.rts_smoother(model, ys)
    actual = kx.rts_smoother(model, ys, parallel=True)
    assert_trees_close(actual, expected, rtol=1e-8)
    n_observed = np.isfinite(np.asarray(ys)).sum(axis=1)
    np.testing.assert_array_equal(actual.filtered.info.n_observed, n_observed)
    assert not np.any(actual.filtered.info.status)


def test_assimilate_parallel_saves_what_sequential_saves():
    """Same `History` fields as the sequential run with everything saved (the per-cycle
    `state` included), and the same final state; `Save()` is checked under vmap below."""
    model, ys = make(**GENERAL, missing="mixed")
    expected = kx.assimilate(model, kx.KalmanFilter(), ys, save=FULL)
    actual = kx.assimilate(model, kx.KalmanFilter(), ys, save=FULL, parallel=True)
    assert isinstance(actual[0], kx.Gaussian) and isinstance(actual[1].state, kx.Gaussian)
    assert_trees_close(actual, expected, rtol=1e-8)


def test_fully_missing_row_is_a_forecast_only_step():
    model, ys = make(**GENERAL, missing="rows")
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=FULL, parallel=True)
    for n in (0, 5, 6, T - 1):  # the rows that `make` blanks
        np.testing.assert_allclose(history.mean[n], history.forecast_mean[n], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(history.cov[n], history.forecast_cov[n], rtol=1e-12, atol=1e-12)
        assert abs(history.info.log_likelihood[n]) < 1e-12 and history.info.n_observed[n] == 0


def test_smoother_directly_matches_backward_pass():
    """`parallel_smoother` on a given filter history equals `backward_pass` on it."""
    model, ys = make(**GENERAL, missing="partial")
    _, filtered = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True, forecast=True), parallel=True)
    assert_trees_close(parallel_smoother(model, filtered), backward_pass(model, filtered), rtol=1e-8)


def test_single_cycle():
    model, ys = make()
    ys = ys[:1]
    expected = kx.rts_smoother(model, ys)
    actual = kx.rts_smoother(model, ys, parallel=True)
    assert_trees_close(actual, expected, rtol=1e-10)


def test_float32():
    """Float32 parallel and sequential runs agree with the float64 run to 1e-5 relative.

    Both are backward-stable compositions of O(T) well-conditioned steps (cond of
    the covariances <~ 10^2 here); on such problems the observed float32 error of
    either form is 1e-7 to 3e-7 relative to the array's scale (eps = 1.2e-7), so
    1e-5 (about 80 eps) leaves a margin of 30 while still catching a wrong formula
    or a silent float64 promotion (checked through the dtypes).
    """
    model64, ys64 = make(**GENERAL, missing="mixed", seed=5)
    model32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), model64)
    ys32 = ys64.astype(jnp.float32)
    reference = kx.rts_smoother(model64, ys64)
    sequential = kx.rts_smoother(model32, ys32)
    parallel = kx.rts_smoother(model32, ys32, parallel=True)
    for name in ("mean", "cov", "cross_cov", "init_mean", "init_cov", "log_likelihood"):
        expected = np.asarray(getattr(reference, name)).astype(np.float32)
        assert_close(getattr(parallel, name), expected, 1e-5, name)
        assert_close(getattr(sequential, name), expected, 1e-5, name)
    for name in ("mean", "cov", "forecast_mean", "forecast_cov"):
        assert_close(getattr(parallel.filtered, name), getattr(sequential.filtered, name), 1e-5, name)
    assert_close(
        parallel.filtered.info.log_likelihood, sequential.filtered.info.log_likelihood, 1e-5, "log_likelihood"
    )


def test_grad_of_log_likelihood_matches_sequential():
    """jax.grad of the parallel log p(y_1:T) with respect to every model array equals
    the sequential gradient (time-varying fields, offsets and missing entries included)."""
    model, ys = make(**GENERAL, missing="mixed")

    def loglik(model, parallel):
        return kx.log_likelihood(model, kx.KalmanFilter(), ys, parallel=parallel)

    value_seq, grad_seq = jax.value_and_grad(loglik)(model, False)
    value_par, grad_par = jax.value_and_grad(loglik)(model, True)
    assert_close(value_par, value_seq, 1e-10, "log_likelihood")
    assert_trees_close(grad_par, grad_seq, rtol=1e-8)
    assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(grad_par)[0])))


def test_vmap_over_observation_batches_and_jit():
    """A jitted, vmapped parallel run over a batch of observation sequences (with
    different missing entries) equals sequential runs one by one, with `Save()`."""
    model, _ = make(**GENERAL)
    patterns = ["partial", "rows", None]
    batch = jnp.stack([make(**GENERAL, missing=m, seed=s)[1] for s, m in enumerate(patterns)])

    @jax.jit
    @jax.vmap
    def run(ys):
        final, history = kx.assimilate(model, kx.KalmanFilter(), ys, parallel=True)
        return final, history, jnp.sum(history.info.log_likelihood)

    finals, histories, logliks = run(batch)
    for i in range(batch.shape[0]):
        final, history = kx.assimilate(model, kx.KalmanFilter(), batch[i])
        assert history.cov is None and histories.cov is None
        actual = jax.tree_util.tree_map(lambda x: x[i], (finals, histories))
        assert_trees_close(actual, (final, history), rtol=1e-8)
        expected = kx.log_likelihood(model, kx.KalmanFilter(), batch[i])
        assert_close(logliks[i], expected, 1e-10, "log_likelihood")


def test_square_root_form_is_rejected():
    model, ys = make()
    with pytest.raises(ValueError, match="covariance form"):
        kx.assimilate(model, kx.KalmanFilter(square_root=True), ys, parallel=True)
    with pytest.raises(ValueError, match="square_root=False"):
        kx.rts_smoother(model, ys, parallel=True, square_root=True)
