"""ThreeDVar against independent references: one Kalman analysis, a NumPy
static-gain loop, scipy's minimiser of the 3DVAR cost, dense backgrounds."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import kalmax as kx
from kalmax.filters.var3d import ThreeDVar, ThreeDVarState
from kalmax.spectral_covariance import FourierCovariance
from tests import reference as ref


def _logpdf(residual, cov):
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (residual @ np.linalg.solve(cov, residual) + logdet + len(residual) * np.log(2 * np.pi))


def numpy_3dvar(dynamics, observation, obs_offset, obs_cov, background, init_mean, ys):
    """Static-gain 3DVAR in NumPy float64, dropping missing entries explicitly.

    `dynamics` is a callable on NumPy vectors; returns analysis means (T, dx),
    forecast means and the pseudo-log-likelihood terms (T,)."""
    mean = np.asarray(init_mean, np.float64)
    out = {"mean": [], "forecast": [], "loglik": []}
    for y in ys:
        mean = dynamics(mean)
        out["forecast"].append(mean)
        observed = np.isfinite(y)
        if observed.any():
            H, d = observation[observed], obs_offset[observed]
            S = H @ background @ H.T + obs_cov[np.ix_(observed, observed)]
            gain = background @ H.T @ np.linalg.inv(S)
            residual = y[observed] - H @ mean - d
            out["loglik"].append(_logpdf(residual, S))
            mean = mean + gain @ residual
        else:
            out["loglik"].append(0.0)
        out["mean"].append(mean)
    return {k: np.array(v) for k, v in out.items()}


def spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


def lgssm(seed=0, dx=4, dy=3, T=10, offsets=True, missing=True, dtype=np.float64):
    rng = np.random.default_rng(seed)
    np_model, ys = ref.random_problem(rng, dx, dy, T, offsets=offsets)
    if missing:
        ys[2, 0] = np.nan
        ys[4] = np.nan
        ys[7, -1] = np.nan
    return np_model, ref.to_kalmax(np_model, False, offsets, dtype), ys.astype(dtype)


# -- 3DVAR is one Kalman analysis when B is the Kalman forecast covariance -------------


@pytest.mark.parametrize("observed", ["all", "partial", "none"])
@pytest.mark.parametrize("background", ["dense", "operator"])
def test_equals_one_kalman_analysis_with_the_kalman_forecast_covariance(observed, background):
    _, model, ys = lgssm(seed=1, missing=False)
    kf = kx.KalmanFilter()
    forecast = kf.forecast(model, kf.init(model))
    y = jnp.asarray(ys[0])
    if observed == "partial":
        y = y.at[1].set(jnp.nan)
    elif observed == "none":
        y = jnp.full_like(y, jnp.nan)
    expected, expected_info = kf.analysis(model, forecast, y)
    cov = forecast.cov if background == "dense" else kx.DenseCovariance(forecast.cov)
    flt = ThreeDVar(cov)
    state, info = flt.analysis(model, ThreeDVarState(forecast.mean), y)
    np.testing.assert_allclose(state.mean, expected.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(info.log_likelihood, expected_info.log_likelihood, rtol=1e-10, atol=1e-12)
    assert int(info.n_observed) == int(expected_info.n_observed) and int(info.status) == 0
    # The same through a StateSpaceModel and through jit.
    ssm = kx.as_state_space_model(model)
    state2, _ = eqx.filter_jit(ThreeDVar.analysis)(flt, ssm, ThreeDVarState(forecast.mean), y)
    np.testing.assert_allclose(state2.mean, expected.mean, rtol=1e-10, atol=1e-12)


# -- many cycles against a NumPy static-gain loop ---------------------------------------


@pytest.mark.parametrize("background", ["dense", "diagonal", "scalar"])
def test_multi_cycle_matches_numpy_static_gain_loop(background):
    np_model, model, ys = lgssm(seed=2, dx=5, dy=3, T=15)
    rng = np.random.default_rng(5)
    B = {"dense": spd(rng, 5), "diagonal": np.diag(rng.uniform(0.5, 2.0, 5)), "scalar": 0.7 * np.eye(5)}[background]
    operator = {
        "dense": B,
        "diagonal": kx.DiagonalCovariance(np.diag(B)),
        "scalar": kx.ScalarCovariance(0.7, 5),
    }[background]
    M, b = np_model.dynamics[0], np_model.dynamics_offset[0]
    expected = numpy_3dvar(
        lambda v: M @ v + b, np_model.observation[0], np_model.obs_offset[0], np_model.obs_cov[0],
        B, np_model.init_mean, ys,
    )
    _, history = kx.assimilate(model, ThreeDVar(operator), ys, save=kx.Save(forecast=True))
    np.testing.assert_allclose(history.mean, expected["mean"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(history.forecast_mean, expected["forecast"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(history.info.log_likelihood, expected["loglik"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(history.info.n_observed, np.isfinite(ys).sum(axis=1))
    assert history.info.status.dtype == jnp.int32 and not np.any(history.info.status)
    assert history.cov is None


def test_streaming_steps_equal_assimilate_and_time_varying_models():
    """init/forecast/analysis by hand give the scan's result; a TimeVarying
    LinearGaussianSSM is sliced per cycle by `assimilate`."""
    np_model, _, ys = lgssm(seed=3)
    rng = np.random.default_rng(0)
    np_model.dynamics = [0.9 * np.linalg.qr(rng.normal(size=(4, 4)))[0] for _ in range(len(ys))]
    model = ref.to_kalmax(np_model, True, True)
    flt = ThreeDVar(spd(rng, 4))
    _, history = kx.assimilate(model, flt, ys)
    state = flt.init(model.at(0))
    for n, y in enumerate(ys):
        state = flt.forecast(model.at(n), state)
        state, info = flt.analysis(model.at(n), state, jnp.asarray(y))
        np.testing.assert_allclose(state.mean, history.mean[n], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(info.log_likelihood, history.info.log_likelihood[n], rtol=1e-12)


# -- observation operators and background operators give the same answers ----------------


def ssm(observation, dx, obs_cov, dynamics=None, dtype=np.float64):
    rng = np.random.default_rng(4)
    matrix = 0.95 * np.linalg.qr(rng.normal(size=(dx, dx)))[0]
    dynamics = dynamics or kx.LinearDynamics(jnp.asarray(matrix, dtype))
    return kx.StateSpaceModel(
        dynamics=dynamics, observation=observation, dynamics_cov=None, obs_cov=obs_cov,
        init_mean=rng.normal(size=dx).astype(dtype), init_cov=np.eye(dx, dtype=dtype),
    )


def grid_backgrounds():
    fourier = FourierCovariance(8, beta=1.5, alpha=1.5)  # singular: mean-zero fields
    fourier_mean = FourierCovariance(8, beta=1.0, alpha=2.0, mean_variance=0.3)
    return {
        "fourier": (fourier, fourier.matrix()),
        "fourier+mean": (fourier_mean, fourier_mean.matrix()),
        "diagonal": (kx.DiagonalCovariance(np.linspace(0.5, 2.0, 64)), np.diag(np.linspace(0.5, 2.0, 64))),
        "scalar": (kx.ScalarCovariance(0.4, 64), 0.4 * np.eye(64)),
    }


@pytest.mark.parametrize("name", list(grid_backgrounds()))
def test_operator_backgrounds_equal_their_dense_matrix_and_index_equals_matrix(name):
    """An 8 x 8 grid (d = 64), every 3rd component observed, some missing: the
    operator background equals its dense matrix, and IndexObservation equals
    the equivalent selection matrix."""
    operator, dense = grid_backgrounds()[name]
    index = kx.IndexObservation.every(3, 64)
    selection = np.eye(64)[list(index.indices)]
    dy = index.obs_dim
    obs_cov = spd(np.random.default_rng(1), dy, 0.2)
    ys = np.random.default_rng(2).normal(size=(6, dy))
    ys[1, 3] = np.nan
    ys[4, :5] = np.nan
    runs = {}
    combinations = [("index-op", index, operator), ("matrix-dense", selection, dense)]
    if name == "fourier":  # the other two paths, once
        combinations += [("index-dense", index, dense), ("matrix-op", selection, operator)]
    for label, observation, background in combinations:
        runs[label] = kx.assimilate(ssm(observation, 64, obs_cov), ThreeDVar(background), ys)[1]
    base = runs["matrix-dense"]
    for label, history in runs.items():
        np.testing.assert_allclose(history.mean, base.mean, rtol=1e-10, atol=1e-12, err_msg=label)
        np.testing.assert_allclose(history.info.log_likelihood, base.info.log_likelihood, rtol=1e-10, err_msg=label)


def test_fourier_background_with_a_dense_observation_matrix():
    operator = FourierCovariance(8, beta=1.0, alpha=2.5, mean_variance=0.1)
    H = np.random.default_rng(7).normal(size=(10, 64)) / 8
    ys = np.random.default_rng(8).normal(size=(5, 10))
    model = ssm(H, 64, 0.3 * np.eye(10))
    _, h_op = kx.assimilate(model, ThreeDVar(operator), ys)
    _, h_dense = kx.assimilate(model, ThreeDVar(operator.matrix()), ys)
    np.testing.assert_allclose(h_op.mean, h_dense.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_op.info.log_likelihood, h_dense.info.log_likelihood, rtol=1e-10)


# -- nonlinear observations: Gauss-Newton minimises J -----------------------------------


def nonlinear_h(v):
    return jnp.stack([v[0] * v[1], jnp.sin(v[2]), v[0] + 0.1 * v[3] ** 3, jnp.exp(0.2 * v[1])])


@pytest.mark.parametrize("missing", [False, True])
def test_gauss_newton_equals_scipy_minimiser_of_the_cost(missing):
    rng = np.random.default_rng(6)
    dx = 4
    B = spd(rng, dx, 0.5)
    gamma = spd(rng, 4, 0.1)
    model = ssm(nonlinear_h, dx, gamma)
    v_hat = np.array([0.8, -0.5, 0.3, 1.0])
    y = np.asarray(nonlinear_h(jnp.asarray(v_hat + 0.3 * rng.normal(size=dx)))) + 0.1 * rng.normal(size=4)
    if missing:
        y[1] = np.nan
    observed = np.isfinite(y)
    B_inv, gamma_inv = np.linalg.inv(B), np.linalg.inv(gamma[np.ix_(observed, observed)])

    def cost(v):
        r = y[observed] - np.asarray(nonlinear_h(jnp.asarray(v)))[observed]
        return 0.5 * (v - v_hat) @ B_inv @ (v - v_hat) + 0.5 * r @ gamma_inv @ r

    jac = jax.jit(jax.jacfwd(nonlinear_h))

    def grad(v):
        r = y[observed] - np.asarray(nonlinear_h(jnp.asarray(v)))[observed]
        return B_inv @ (v - v_hat) - np.asarray(jac(jnp.asarray(v)))[observed].T @ gamma_inv @ r

    best = scipy.optimize.minimize(cost, v_hat, jac=grad, method="BFGS", options={"gtol": 1e-12, "maxiter": 10_000})
    flt = ThreeDVar(B, n_iterations=30)
    state, info = eqx.filter_jit(ThreeDVar.analysis)(flt, model, ThreeDVarState(jnp.asarray(v_hat)), jnp.asarray(y))
    np.testing.assert_allclose(state.mean, best.x, atol=1e-6)
    assert np.linalg.norm(grad(np.asarray(state.mean))) < 1e-9
    # The pseudo-likelihood: log N(y; h(v_hat), H B H^T + Gamma) with H the Jacobian at v_hat.
    H = np.asarray(jac(jnp.asarray(v_hat)))[observed]
    residual = y[observed] - np.asarray(nonlinear_h(jnp.asarray(v_hat)))[observed]
    np.testing.assert_allclose(
        info.log_likelihood, _logpdf(residual, H @ B @ H.T + gamma[np.ix_(observed, observed)]), rtol=1e-10
    )
    assert int(info.n_observed) == observed.sum() and int(info.status) == 0


def test_one_gauss_newton_step_is_exact_for_a_linear_function():
    """A linear h given as a callable (FunctionObservation, Jacobians by AD) with
    n_iterations=1 equals the closed form on the matrix, in both AD modes."""
    rng = np.random.default_rng(9)
    for dx, dy in [(3, 5), (6, 2)]:  # jacfwd (dx <= dy) and jacrev (dx > dy)
        H = rng.normal(size=(dy, dx))
        B, gamma = spd(rng, dx), spd(rng, dy, 0.3)
        ys = rng.normal(size=(4, dy))
        ys[1, 0] = np.nan
        h_matrix = kx.assimilate(ssm(H, dx, gamma), ThreeDVar(B), ys)[1]
        Hj = jnp.asarray(H)
        h_function = kx.assimilate(ssm(lambda v: Hj @ v, dx, gamma), ThreeDVar(B, n_iterations=1), ys)[1]
        np.testing.assert_allclose(h_function.mean, h_matrix.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_function.info.log_likelihood, h_matrix.info.log_likelihood, rtol=1e-10)


# -- jit, vmap, grad --------------------------------------------------------------------


class Damped(eqx.Module):
    """A small nonlinear map with a differentiable parameter."""

    rate: jax.Array

    def __call__(self, v):
        return v + 0.1 * (-self.rate * v + jnp.sin(jnp.roll(v, 1)))


def damped_problem(rate=0.5, dtype=np.float64):
    dx = 6
    model = ssm(kx.IndexObservation.every(2, dx), dx, 0.2 * np.eye(3, dtype=dtype),
                dynamics=Damped(jnp.asarray(rate, dtype)), dtype=dtype)
    rng = np.random.default_rng(10)
    truth = [np.asarray(model.init_mean, np.float64) + 1.0]
    ys = []
    for _ in range(20):
        truth.append(np.asarray(Damped(jnp.asarray(0.5))(jnp.asarray(truth[-1]))))
        ys.append(truth[-1][::2] + 0.4 * rng.normal(size=3))
    ys = np.array(ys)
    ys[3, 1] = np.nan
    return model, ys.astype(dtype), np.array(truth[1:])


def test_vmap_over_observation_batches_and_background_scales():
    model, ys, _ = damped_problem()
    B = spd(np.random.default_rng(0), 6)
    flt = ThreeDVar(B)

    def run(ys):
        _, h = kx.assimilate(model, flt, ys)
        return h.mean, h.info.log_likelihood

    batch = np.stack([ys, ys[::-1], ys + 0.1])
    means, lls = jax.jit(jax.vmap(run))(jnp.asarray(batch))
    for b in range(3):
        m, ll = run(jnp.asarray(batch[b]))
        np.testing.assert_allclose(means[b], m, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lls[b], ll, rtol=1e-12)

    def by_scale(scale):  # DAPPER's xB, as a traced leaf
        return kx.assimilate(model, ThreeDVar(kx.DenseCovariance(B).scaled(scale)), ys)[1].mean

    def by_scalar(scale):
        return kx.assimilate(model, ThreeDVar(kx.ScalarCovariance(scale, 6)), ys)[1].mean

    scales = jnp.array([0.05, 0.5, 2.0])
    for fun, dense in [(by_scale, lambda s: s * B), (by_scalar, lambda s: s * np.eye(6))]:
        batched = jax.vmap(fun)(scales)
        for i, s in enumerate(np.asarray(scales)):
            single = kx.assimilate(model, ThreeDVar(dense(s)), ys)[1].mean
            np.testing.assert_allclose(batched[i], single, rtol=1e-11, atol=1e-12)


def test_grad_through_a_run_matches_finite_differences():
    """d/d(background scale) and d/d(dynamics rate) of the pseudo-log-likelihood
    and of the squared analysis error against the truth."""
    model, ys, truth = damped_problem()
    B = spd(np.random.default_rng(1), 6)

    def losses(scale, rate):
        m = eqx.tree_at(lambda m: m.dynamics.rate, model, rate)
        _, h = kx.assimilate(m, ThreeDVar(kx.DenseCovariance(B).scaled(scale)), ys)
        return jnp.sum(h.info.log_likelihood), jnp.sum((h.mean - truth) ** 2)

    x0 = (0.7, 0.4)
    jac = jax.jit(jax.jacrev(losses, argnums=(0, 1)))(*x0)
    f = jax.jit(losses)  # (jacrev's compiled function does not return the values)
    eps = 1e-6
    for which in range(2):  # the two outputs
        for arg in range(2):  # the two parameters
            up, down = list(x0), list(x0)
            up[arg] += eps
            down[arg] -= eps
            fd = (f(*up)[which] - f(*down)[which]) / (2 * eps)
            np.testing.assert_allclose(jac[which][arg], fd, rtol=1e-6, atol=1e-8)


def test_grad_through_a_fourier_background_and_a_nonlinear_observation():
    """Gradients flow through FourierCovariance's beta/alpha and Gauss-Newton."""
    dx = 16
    model = ssm(lambda v: jnp.tanh(v[::2]) + 0.1 * v[1::2] ** 2, dx, 0.1 * np.eye(8))
    ys = np.random.default_rng(3).normal(size=(5, 8)) * 0.5

    def loss(beta, alpha):
        flt = ThreeDVar(FourierCovariance(4, beta, alpha, 0.2), n_iterations=3)
        _, h = kx.assimilate(model, flt, ys)
        return jnp.sum(h.info.log_likelihood) + jnp.sum(h.mean**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compilation for both
    _, grads = value_and_grad(0.8, 1.5)
    f, eps = (lambda *args: value_and_grad(*args)[0]), 1e-6
    fd = [(f(0.8 + eps, 1.5) - f(0.8 - eps, 1.5)) / (2 * eps), (f(0.8, 1.5 + eps) - f(0.8, 1.5 - eps)) / (2 * eps)]
    np.testing.assert_allclose(grads, fd, rtol=1e-6)


def test_float32_runs_and_agrees_with_float64():
    model64, ys64, _ = damped_problem()
    model32, ys32, _ = damped_problem(dtype=np.float32)
    B = spd(np.random.default_rng(0), 6)
    nonlinear = lambda v: jnp.sin(v[:3]) + v[3:]  # noqa: E731
    for m64, m32 in [(model64, model32), (eqx.tree_at(lambda m: m.observation, model64,
                                                       kx.FunctionObservation(nonlinear, 3)),
                                           eqx.tree_at(lambda m: m.observation, model32,
                                                       kx.FunctionObservation(nonlinear, 3)))]:
        _, h64 = kx.assimilate(m64, ThreeDVar(B), ys64)
        _, h32 = kx.assimilate(m32, ThreeDVar(B.astype(np.float32)), ys32)
        assert h32.mean.dtype == jnp.float32 and h32.info.log_likelihood.dtype == jnp.float32
        np.testing.assert_allclose(h32.mean, h64.mean, atol=1e-5 * np.abs(h64.mean).max())
        np.testing.assert_allclose(h32.info.log_likelihood, h64.info.log_likelihood, rtol=1e-4, atol=1e-4)
    fourier = FourierCovariance(4, 1.0, 2.0, 0.1, dtype=jnp.float32)
    model = ssm(kx.IndexObservation.every(2, 16), 16, np.eye(8, dtype=np.float32), dtype=np.float32)
    _, h = kx.assimilate(model, ThreeDVar(fourier), np.ones((3, 8), np.float32))
    assert h.mean.dtype == jnp.float32 and np.all(np.isfinite(h.mean))


# -- failures and bad input -------------------------------------------------------------


def test_divergence_is_reported_with_the_cycle():
    model = ssm(np.eye(2), 2, np.eye(2), dynamics=lambda v: 1e200 * v)
    ys = np.ones((4, 2))
    _, history = kx.assimilate(model, ThreeDVar(np.eye(2)), ys, throw=False)
    assert history.info.status[0] == 0 and np.any(history.info.status != 0)
    with pytest.raises(kx.DivergenceError, match=r"ThreeDVar: .* at cycle 1"):
        kx.assimilate(model, ThreeDVar(np.eye(2)), ys)


@pytest.mark.parametrize(
    "background, n_iterations, error, match",
    [
        (np.ones((3, 4)), 10, ValueError, r"`background_cov` must be a square covariance matrix; got shape \(3, 4\)"),
        (np.ones(3), 10, ValueError, r"`background_cov` must be a \(d, d\) covariance matrix or a covariance operator .* got an array of shape \(3,\)"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), 10, ValueError, r"`background_cov` is not symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), 10, ValueError, r"`background_cov` is not positive semi-definite"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), 10, ValueError, r"`background_cov` has non-finite entries"),
        (np.eye(2, dtype=np.int64), 10, TypeError, r"`background_cov` must have a floating dtype"),
        (kx.ZeroCovariance(2), 10, ValueError, r"`background_cov` cannot be zero"),
        (np.eye(2), 0, ValueError, r"`n_iterations` must be >= 1; got 0"),
        (np.eye(2), 2.0, TypeError, r"`n_iterations` must be a Python int; got float"),
        (np.eye(2), True, TypeError, r"`n_iterations` must be a Python int; got bool"),
    ],
)
def test_bad_construction(background, n_iterations, error, match):
    with pytest.raises(error, match=match):
        ThreeDVar(background, n_iterations=n_iterations)


def test_bad_use():
    _, model, ys = lgssm(dx=4, dy=3)
    with pytest.raises(ValueError, match=r"`background_cov` has size 3 but the model's state has size 4"):
        kx.assimilate(model, ThreeDVar(np.eye(3)), ys)
    with pytest.raises(ValueError, match=r"`background_cov` has size 16 but the model's state has size 4"):
        kx.assimilate(model, ThreeDVar(FourierCovariance(4)), ys)
    with pytest.raises(TypeError, match=r"dtype mix: `background_cov` is float32 but the model's arrays are float64"):
        kx.assimilate(model, ThreeDVar(np.eye(4, dtype=np.float32)), ys)
    with pytest.raises(AttributeError, match=r"ThreeDVar keeps no covariance"):
        kx.assimilate(model, ThreeDVar(np.eye(4)), ys, save=kx.Save(cov=True))
    with pytest.raises(TypeError, match=r"ThreeDVar needs a StateSpaceModel or LinearGaussianSSM; got dict"):
        ThreeDVar(np.eye(4)).check_model({})
    flt = ThreeDVar(np.eye(4))
    state = flt.init(model)
    with pytest.raises(ValueError, match=r"`y` must have shape \(3,\) to match the model; got \(2,\)"):
        flt.analysis(model, state, jnp.zeros(2))
    time_varying = ref.to_kalmax(ref.random_problem(np.random.default_rng(0), 4, 3, 5, time_varying=True)[0], True, False)
    with pytest.raises(ValueError, match=r"time-varying LinearGaussianSSM cannot be viewed"):
        flt.forecast(time_varying, state)


# -- Lorenz-96 smoke run (Sakov & Oke 2008 set-up, DAPPER's Var3D(xB=0.02)) -------------


def test_lorenz96_3dvar_smoke():
    models = pytest.importorskip("kalmax.models")
    flow = models.Flow(models.Lorenz96(40, 8.0), models.RK4(dt=0.05, n_steps=1))
    key_init, key_obs = jax.random.split(jax.random.key(0))
    # One long free run (one compilation): 500 steps of spin-up, 2000 steps of
    # climatology for B = 0.02 * their covariance, then the truth's 500 cycles.
    n_cycles, burn_in = 500, 200
    run = models.trajectory(flow, 8.0 + jax.random.normal(key_init, (40,)), 2500 + n_cycles)
    B = 0.02 * np.cov(np.asarray(run[500:2500]).T)
    truth = run[2500 + 1 :]
    ys = truth + jax.random.normal(key_obs, truth.shape)  # y = x + N(0, I)
    model = kx.StateSpaceModel(
        dynamics=flow, observation=np.eye(40), dynamics_cov=None, obs_cov=np.eye(40),
        init_mean=np.eye(40)[0], init_cov=kx.ScalarCovariance(1e-3, 40),
    )
    _, history = kx.assimilate(model, ThreeDVar(B), ys)
    rmse = np.sqrt(np.mean((np.asarray(history.mean) - np.asarray(truth)) ** 2, axis=1))
    score = rmse[burn_in:].mean()
    print(f"Lorenz-96 3DVAR analysis RMSE over cycles {burn_in}..{n_cycles}: {score:.3f}")
    # Published long-run value 0.41 (DAPPER); the observations alone score 1.0.
    assert 0.3 < score < 0.5, score
    assert math.isfinite(score)
