"""The Kalman filter's steady-state detection (kalmax.filters.steady_state) against
the full recursion and the NumPy float64 reference, on runs long enough to converge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from tests import reference as ref

T = 211  # prime: no divisor in [8, 32], so 13 chunks of 16 and a remainder of 3 (both code paths)


def make(missing: bool, dtype=np.float64, offsets=True, seed=4, n_cycles=T):
    rng = np.random.default_rng(seed)
    np_model, ys = ref.random_problem(rng, 4, 3, n_cycles, time_varying=False, offsets=offsets)
    if missing:
        ys[120] = np.nan  # a forecast-only cycle after convergence
        ys[150, 1] = np.nan  # a partially observed one
        ys[n_cycles - 1, 0] = np.nan  # in the last chunk (the remainder when T is prime)
    return np_model, ref.to_kalmax(np_model, False, offsets, dtype), ys.astype(dtype)


class CountingFilter:
    """Delegates to the Kalman filter's steady-state cycles, counting (at run time) the
    cycles of the full recursion."""

    def __init__(self, counter: list):
        self.counter = counter

    def steady_cycles(self, model):
        cycles = kx.KalmanFilter().steady_cycles(model)
        counter = self.counter

        class Counting:
            initial_cache, converged, steady = cycles.initial_cache, cycles.converged, cycles.steady

            def full(self, state, y, cache):
                jax.debug.callback(lambda: counter.append(1))
                return cycles.full(state, y, cache)

        return Counting()


@pytest.mark.parametrize("n_cycles", [T, 208], ids=["remainder", "tiled"])  # 208 = 8 chunks of 26
@pytest.mark.parametrize("missing", [False, True])
def test_steady_state_equals_the_full_recursion_and_numpy(missing, n_cycles):
    np_model, model, ys = make(missing, n_cycles=n_cycles)
    save = kx.Save(cov=True, forecast=True)
    _, steady = kx.assimilate(model, kx.KalmanFilter(), ys, save=save)
    _, full = kx.assimilate(model, kx.KalmanFilter(steady_state=False), ys, save=save)
    expected = ref.kalman_filter(np_model, ys)
    for name, key in (("mean", "mean"), ("cov", "cov"), ("forecast_mean", "pred_mean"), ("forecast_cov", "pred_cov")):
        np.testing.assert_allclose(getattr(steady, name), getattr(full, name), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(getattr(steady, name), expected[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(steady.info.log_likelihood, full.info.log_likelihood, rtol=1e-11, atol=1e-12)
    _, keyed = kx.assimilate(model, kx.KalmanFilter(), ys, jax.random.key(0), save=save)  # a key changes nothing
    np.testing.assert_array_equal(keyed.mean, steady.mean)
    np.testing.assert_array_equal(steady.info.n_observed, np.isfinite(ys).sum(axis=1))
    assert not np.any(steady.info.status)


def test_full_recursion_runs_until_convergence_and_after_missing_data_only():
    _, model, ys = make(False)
    state = kx.KalmanFilter().init(model)
    for missing, most in ((False, 48), (True, 48 + 3 * 16 + 3)):
        data = ys.copy()
        if missing:
            data[120] = np.nan
            data[T - 1, 0] = np.nan
        counter = []
        loop = kx.SteadyStateScan()
        run = jax.jit(lambda y: loop.run(model, CountingFilter(counter), state, y, None, kx.Save(), 1)[0].mean)
        jax.block_until_ready(run(jnp.asarray(data)))
        # this model converges within 2 chunks of 16 cycles; a missing entry costs its chunk, the next
        # one (detection restarts) and, at most, one more; the remainder's missing entry costs the remainder
        assert 16 <= len(counter) <= most, len(counter)


def test_float32_steady_state_agrees_with_the_float64_reference():
    np_model, model, ys = make(True, dtype=np.float32)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    expected = ref.kalman_filter(np_model, ys.astype(np.float64))
    assert history.mean.dtype == jnp.float32
    # float32 round-off accumulates over 200 cycles of a contracting recursion: a few 1e-6 relative
    np.testing.assert_allclose(history.mean, expected["mean"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(history.cov, expected["cov"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(history.info.log_likelihood, expected["loglik"], rtol=2e-4, atol=2e-4)


def test_gradients_and_vmap_equal_the_full_recursion():
    _, model, ys = make(True)

    def loglik(dynamics, obs_cov, steady_state):
        changed = kx.LinearGaussianSSM(
            dynamics, model.observation, model.dynamics_cov, obs_cov, model.init_mean, model.init_cov,
            dynamics_offset=model.dynamics_offset, obs_offset=model.obs_offset,
        )  # fmt: skip
        return kx.log_likelihood(changed, kx.KalmanFilter(steady_state=steady_state), ys)

    grads = {s: jax.jit(jax.grad(loglik, argnums=(0, 1)), static_argnums=2)(model.dynamics, model.obs_cov, s)
             for s in (True, False)}  # fmt: skip
    for steady, full in zip(grads[True], grads[False]):
        np.testing.assert_allclose(steady, full, rtol=1e-8, atol=1e-8 * np.abs(full).max())

    batch = jnp.stack([jnp.asarray(ys), jnp.asarray(ys[::-1])])
    means = jax.vmap(lambda y: kx.assimilate(model, kx.KalmanFilter(), y)[1].mean)(batch)
    for b in range(2):
        np.testing.assert_allclose(means[b], kx.assimilate(model, kx.KalmanFilter(), batch[b])[1].mean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_cycles", [T, 208], ids=["remainder", "tiled"])
@pytest.mark.parametrize("missing", [False, True])
def test_smoother_backward_steady_state_equals_the_full_backward_pass_and_numpy(missing, n_cycles):
    from kalmax.smoothers.rts import backward_pass

    np_model, model, ys = make(missing, n_cycles=n_cycles)
    smoothed = kx.rts_smoother(model, ys)
    full = backward_pass(model, smoothed.filtered)  # the backward recursion at every cycle
    for got, want in zip((smoothed.mean, smoothed.cov, smoothed.cross_cov, smoothed.init_mean, smoothed.init_cov), full):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    means, covs, cross = ref.rts_smoother(np_model, ref.kalman_filter(np_model, ys))  # v_0..v_T
    np.testing.assert_allclose(smoothed.mean, means[1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(smoothed.cov, covs[1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(smoothed.cross_cov, cross, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(smoothed.init_cov, covs[0], rtol=1e-8, atol=1e-10)
