"""KalmanFilter against independent NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from tests import reference as ref

FORMS = {
    "covariance": kx.KalmanFilter(),
    "joseph": kx.KalmanFilter(joseph=True),
    "square_root": kx.KalmanFilter(square_root=True),
}


def make(seed=0, dx=3, dy=2, T=12, time_varying=False, offsets=False, missing=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    np_model, ys = ref.random_problem(rng, dx, dy, T, time_varying, offsets)
    if missing == "partial":
        ys[2, 0] = np.nan
        ys[5, -1] = np.nan
    elif missing == "rows":
        ys[3] = np.nan
        ys[4, 0] = np.nan
        ys[-1] = np.nan
    elif missing == "first":
        ys[0] = np.nan
    model = ref.to_kalmax(np_model, time_varying, offsets, dtype)
    return np_model, model, ys.astype(dtype)


CASES = [
    dict(),
    dict(time_varying=True),
    dict(offsets=True),
    dict(time_varying=True, offsets=True, missing="partial"),
    dict(missing="rows"),
    dict(missing="first", dx=4, dy=4),
    dict(dx=5, dy=1, offsets=True, missing="partial"),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_filter_matches_numpy_float64(form, case):
    np_model, model, ys = make(**case)
    expected = ref.kalman_filter(np_model, ys)
    _, history = kx.assimilate(model, FORMS[form], ys, save=kx.Save(cov=True, forecast=True))
    np.testing.assert_allclose(history.mean, expected["mean"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(history.cov, expected["cov"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(history.forecast_mean, expected["pred_mean"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(history.forecast_cov, expected["pred_cov"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(history.info.log_likelihood, expected["loglik"], rtol=1e-8, atol=1e-10)
    n_obs = np.isfinite(ys).sum(axis=1)
    np.testing.assert_array_equal(history.info.n_observed, n_obs)
    assert history.info.status.dtype == jnp.int32 and not np.any(history.info.status)


@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_filter_matches_dense_joint_conditioning(case):
    """Filtered moments at n equal the dense conditioning of the trajectory on y_1..y_n."""
    np_model, model, ys = make(**case)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    dx = model.state_dim
    total = 0.0
    for n in [1, 4, len(ys)]:
        mean, cov, loglik = ref.condition_on(np_model, ys, upto=n)
        np.testing.assert_allclose(history.mean[n - 1], mean[n], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(history.cov[n - 1], cov[n * dx : (n + 1) * dx, n * dx : (n + 1) * dx], rtol=1e-8, atol=1e-10)
        total = loglik
    np.testing.assert_allclose(jnp.sum(history.info.log_likelihood), total, rtol=1e-10)


def test_fully_missing_row_is_a_forecast_only_step():
    _, model, ys = make(missing="rows")
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True, forecast=True))
    np.testing.assert_array_equal(history.mean[3], history.forecast_mean[3])
    np.testing.assert_array_equal(history.cov[3], history.forecast_cov[3])
    assert history.info.log_likelihood[3] == 0.0
    assert history.info.n_observed[3] == 0


@pytest.mark.parametrize("form", list(FORMS))
def test_float32_agrees_with_float64(form):
    """float32 tracks float64 to a few hundred ulps of its eps (1.2e-7): the random
    problems have condition numbers O(10-100) and 12 cycles of round-off."""
    _, model64, ys64 = make(seed=3, offsets=True, missing="partial")
    _, model32, ys32 = make(seed=3, offsets=True, missing="partial", dtype=np.float32)
    _, h64 = kx.assimilate(model64, FORMS[form], ys64, save=kx.Save(cov=True))
    _, h32 = kx.assimilate(model32, FORMS[form], ys32, save=kx.Save(cov=True))
    assert h32.mean.dtype == jnp.float32 and h32.info.log_likelihood.dtype == jnp.float32
    scale = np.max(np.abs(h64.mean))
    np.testing.assert_allclose(h32.mean, h64.mean, atol=2e-5 * scale)
    np.testing.assert_allclose(h32.cov, h64.cov, atol=2e-5 * np.max(np.abs(h64.cov)))
    np.testing.assert_allclose(h32.info.log_likelihood, h64.info.log_likelihood, rtol=1e-4, atol=1e-4)


def test_square_root_stays_positive_definite_in_float32_where_covariance_form_is_fragile():
    """A nearly-perfect sensor (obs variance 1e-8 of the state variance): the
    square-root form keeps a valid factor; its covariance is PSD by construction."""
    dx = 4
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(dx, dtype=np.float32),
        observation=np.eye(dx, dtype=np.float32)[:2],
        dynamics_cov=1e-6 * np.eye(dx, dtype=np.float32),
        obs_cov=1e-8 * np.eye(2, dtype=np.float32),
        init_mean=np.zeros(dx, np.float32),
        init_cov=np.eye(dx, dtype=np.float32),
    )
    ys = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    _, history = kx.assimilate(model, kx.KalmanFilter(square_root=True), ys, save=kx.Save(cov=True, state=True))
    eig = np.linalg.eigvalsh(np.asarray(history.cov, np.float64))
    assert eig.min() >= -1e-12
    assert np.all(np.isfinite(history.state.chol))


def test_joseph_and_symmetric_updates_agree_with_square_root():
    _, model, ys = make(seed=7, dx=6, dy=3, T=30, offsets=True, missing="partial")
    outs = {k: kx.assimilate(model, f, ys, save=kx.Save(cov=True))[1] for k, f in FORMS.items()}
    for key in ["joseph", "square_root"]:
        np.testing.assert_allclose(outs[key].mean, outs["covariance"].mean, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(outs[key].cov, outs["covariance"].cov, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(outs[key].info.log_likelihood, outs["covariance"].info.log_likelihood, rtol=1e-10)


def test_streaming_init_forecast_analysis_equals_assimilate():
    """The public per-step methods give the same answer as the scan driver."""
    _, model, ys = make(time_varying=True, offsets=True, missing="partial")
    flt = kx.KalmanFilter()
    _, history = kx.assimilate(model, flt, ys, save=kx.Save(cov=True))
    state = flt.init(model.at(0))
    for n, y in enumerate(ys):
        cycle_model = model.at(n)
        state = flt.forecast(cycle_model, state)
        state, info = flt.analysis(cycle_model, state, jnp.asarray(y))
        np.testing.assert_allclose(state.mean, history.mean[n], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(info.log_likelihood, history.info.log_likelihood[n], rtol=1e-12)


def test_jit_equals_no_jit():
    _, model, ys = make(offsets=True, missing="partial")
    _, jitted = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    with jax.disable_jit():
        _, eager = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    np.testing.assert_allclose(jitted.mean, eager.mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jitted.cov, eager.cov, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jitted.info.log_likelihood, eager.info.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("form", ["covariance", "square_root"])
def test_vmap_over_sequences_equals_loop(form):
    np_model, model, _ = make()
    rng = np.random.default_rng(11)
    batch = np.stack([ref.random_problem(np.random.default_rng(s), 3, 2, 12)[1] for s in range(4)])
    batch[1, 2, 0] = np.nan

    def run(ys):
        _, history = kx.assimilate(model, FORMS[form], ys, save=kx.Save(cov=True))
        return history.mean, history.info.log_likelihood

    means, logliks = jax.jit(jax.vmap(run))(jnp.asarray(batch))
    for b in range(batch.shape[0]):
        m, ll = run(jnp.asarray(batch[b]))
        np.testing.assert_allclose(means[b], m, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(logliks[b], ll, rtol=1e-12)
    del rng, np_model


def test_vmap_over_model_parameters():
    """Hyper-parameter sweeps: vmap over a batch of observation noise levels."""
    _, model, ys = make()

    def loglik(scale):
        m = kx.LinearGaussianSSM(
            model.dynamics, model.observation, model.dynamics_cov, scale * model.obs_cov,
            model.init_mean, model.init_cov,
        )
        return kx.log_likelihood(m, kx.KalmanFilter(), ys)

    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(loglik)(scales)
    for i, s in enumerate(scales):
        np.testing.assert_allclose(batched[i], loglik(s), rtol=1e-12)


def _finite_difference_grad(fun, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (float(fun(jnp.asarray(up))) - float(fun(jnp.asarray(down)))) / (2 * eps)
    return grad


@pytest.mark.parametrize("form", ["covariance", "square_root"])
@pytest.mark.parametrize(
    "name",
    ["dynamics", "observation", "dynamics_cov", "obs_cov", "init_mean", "init_cov", "dynamics_offset", "obs_offset"],
)
def test_gradient_of_log_likelihood_matches_finite_differences(form, name):
    """d log p(y_1:T) / d(model array), every array, against central differences.

    Covariances are parametrised by a factor, C = A A^T, so that perturbations stay symmetric
    positive definite; the gradient then flows through the covariance argument.
    """
    _, model, ys = make(seed=5, dx=3, dy=2, T=8, offsets=True, missing="partial")
    flt = FORMS[form]
    is_cov = name.endswith("cov")
    base = np.asarray(getattr(model, name))
    param0 = np.linalg.cholesky(base) if is_cov else base

    def loglik(param):
        value = param @ param.T if is_cov else param
        fields = dict(
            dynamics=model.dynamics, observation=model.observation, dynamics_cov=model.dynamics_cov,
            obs_cov=model.obs_cov, init_mean=model.init_mean, init_cov=model.init_cov,
            dynamics_offset=model.dynamics_offset, obs_offset=model.obs_offset,
        )
        fields[name] = value
        return kx.log_likelihood(kx.LinearGaussianSSM(**fields), flt, ys)

    grad = jax.grad(loglik)(jnp.asarray(param0))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, _finite_difference_grad(loglik, param0), rtol=1e-5, atol=1e-6)


def test_gradient_under_jit_equals_eager_and_is_float32_in_float32():
    _, model32, ys32 = make(seed=2, dtype=np.float32)
    grad = jax.jit(jax.grad(lambda m: kx.log_likelihood(m, kx.KalmanFilter(), ys32)))(model32)
    assert grad.dynamics.dtype == jnp.float32
    assert np.all(np.isfinite(grad.dynamics))
    _, model64, ys64 = make(seed=2)
    grad64 = jax.grad(lambda m: kx.log_likelihood(m, kx.KalmanFilter(), ys64))(model64)
    np.testing.assert_allclose(grad.dynamics, grad64.dynamics, rtol=2e-3, atol=2e-3)


def test_no_recompilation_for_new_data_of_the_same_shape():
    traces = []

    class CountingFilter(kx.KalmanFilter):
        def init(self, model, key=None):  # called once per trace, whichever loop runs
            traces.append(1)
            return super().init(model, key)

    _, model, ys = make()
    flt = CountingFilter()
    kx.assimilate(model, flt, ys)
    kx.assimilate(model, flt, ys + 1.0)
    new_model = kx.LinearGaussianSSM(
        2.0 * model.dynamics / 3.0, model.observation, model.dynamics_cov, model.obs_cov,
        model.init_mean, model.init_cov,
    )
    kx.assimilate(new_model, flt, ys - 1.0)
    assert len(traces) == 1


def test_divergence_is_reported_with_the_cycle():
    """A singular innovation covariance (exact observation of an exactly known
    state) is a Cholesky failure: raised with its cycle, or returned as a status."""
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(2), observation=np.eye(2), dynamics_cov=np.zeros((2, 2)),
        obs_cov=np.zeros((2, 2)), init_mean=np.zeros(2), init_cov=np.zeros((2, 2)),
    )
    ys = np.zeros((5, 2))
    with pytest.raises(kx.DivergenceError, match="cycle 0"):
        kx.assimilate(model, kx.KalmanFilter(), ys)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, throw=False)
    assert history.info.status[0] == 1


def test_traced_failure_raises_inside_jit():
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(2), observation=np.eye(2), dynamics_cov=np.zeros((2, 2)),
        obs_cov=np.zeros((2, 2)), init_mean=np.zeros(2), init_cov=np.zeros((2, 2)),
    )

    @jax.jit
    def run(ys):
        return kx.assimilate(model, kx.KalmanFilter(), ys)[1].mean

    with pytest.raises(Exception, match="failed numerically"):
        jax.block_until_ready(run(jnp.zeros((5, 2))))


def test_square_root_needs_positive_definite_noise():
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(2), observation=np.eye(2), dynamics_cov=np.diag([0.0, 1.0]),
        obs_cov=np.eye(2), init_mean=np.zeros(2), init_cov=np.eye(2),
    )
    with pytest.raises(ValueError, match="`dynamics_cov` is not positive definite"):
        kx.assimilate(model, kx.KalmanFilter(square_root=True), np.zeros((3, 2)))
    # the covariance form accepts a singular process noise
    kx.assimilate(model, kx.KalmanFilter(), np.zeros((3, 2)))


def test_time_varying_forecast_needs_one_cycle_model():
    _, model, _ = make(time_varying=True)
    flt = kx.KalmanFilter()
    with pytest.raises(ValueError, match=r"model.at\(n\)"):
        flt.forecast(model, flt.init(model))
