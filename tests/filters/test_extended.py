"""ExtendedKalmanFilter and UnscentedKalmanFilter against independent references:
the Kalman filter on linear-Gaussian models (both views of the model), NumPy
linearised and inflated Kalman updates, exact moments of quadratic maps, and
finite differences for gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.results import RESULTS
from kalmax.filters.extended import ExtendedKalmanFilter, UnscentedKalmanFilter
from tests import reference as ref

FILTERS = {
    "ekf": ExtendedKalmanFilter(),
    "ukf": UnscentedKalmanFilter(),
    "ukf-julier": UnscentedKalmanFilter(alpha=1.0, beta=0.0, kappa=1.0),
    # negative centre weights: lambda = 0.09 * 3 - 3, W^m_0 = -10.1
    "ukf-small-alpha": UnscentedKalmanFilter(alpha=0.3, beta=2.0, kappa=0.0),
}
TOL = dict(rtol=1e-8, atol=1e-10)


def make(seed=0, dx=3, dy=2, T=12, time_varying=False, offsets=False, missing=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    np_model, ys = ref.random_problem(rng, dx, dy, T, time_varying, offsets)
    if missing == "partial":
        ys[2, 0] = np.nan
        ys[5, -1] = np.nan
    elif missing == "rows":
        ys[0] = np.nan
        ys[4, 0] = np.nan
        ys[7] = np.nan
    model = ref.to_kalmax(np_model, time_varying, offsets, dtype)
    return np_model, model, ys.astype(dtype)


def assert_histories_close(history, expected, tol=TOL):
    np.testing.assert_allclose(history.mean, expected.mean, **tol)
    np.testing.assert_allclose(history.cov, expected.cov, **tol)
    np.testing.assert_allclose(history.forecast_mean, expected.forecast_mean, **tol)
    np.testing.assert_allclose(history.forecast_cov, expected.forecast_cov, **tol)
    np.testing.assert_allclose(history.info.log_likelihood, expected.info.log_likelihood, **tol)
    np.testing.assert_array_equal(history.info.n_observed, expected.info.n_observed)


SAVE = kx.Save(cov=True, forecast=True)
CASES = [
    dict(offsets=True, missing="partial"),
    dict(missing="rows", dx=4, dy=4),
    dict(dx=5, dy=1, offsets=True, missing="partial"),
]


def case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items()) or "plain"


# -- reduction to the Kalman filter --------------------------------------------------


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_linear_model_equals_kalman_filter(name, case):
    """On a linear-Gaussian model both filters are the Kalman filter, whether
    given the LinearGaussianSSM or its StateSpaceModel view."""
    np_model, model, ys = make(**case)
    _, expected = kx.assimilate(model, kx.KalmanFilter(), ys, save=SAVE)
    np.testing.assert_allclose(expected.mean, ref.kalman_filter(np_model, ys)["mean"], **TOL)
    for view in [model, kx.as_state_space_model(model)]:
        _, history = kx.assimilate(view, FILTERS[name], ys, save=SAVE)
        assert_histories_close(history, expected)
        assert history.info.status.dtype == jnp.int32 and not np.any(history.info.status)


def test_time_varying_linear_model_and_joseph_form_equal_kalman_filter():
    """`assimilate` hands each cycle's model to the filter, so a time-varying
    LinearGaussianSSM works too (converted cycle by cycle)."""
    _, model, ys = make(time_varying=True, missing="partial")
    _, expected = kx.assimilate(model, kx.KalmanFilter(), ys, save=SAVE)
    for flt in [ExtendedKalmanFilter(joseph=True), UnscentedKalmanFilter()]:
        _, history = kx.assimilate(model, flt, ys, save=SAVE)
        assert_histories_close(history, expected)


@pytest.mark.parametrize("name", ["ekf", "ukf"])
def test_structured_operators_equal_kalman_filter(name):
    """Index observations, diagonal/scalar covariances and no model noise (a
    ZeroCovariance, skipped) give the Kalman filter of the dense equivalent."""
    dx, T = 4, 10
    rng = np.random.default_rng(4)
    A = rng.normal(size=(dx, dx))
    M = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))
    obs_var = np.array([0.3, 0.7])
    ys = rng.normal(size=(T, 2))
    ys[3, 1] = np.nan
    ssm = kx.StateSpaceModel(
        dynamics=kx.LinearDynamics(jnp.asarray(M)),
        observation=kx.IndexObservation([0, 2], dx),
        dynamics_cov=None,
        obs_cov=kx.DiagonalCovariance(obs_var),
        init_mean=np.ones(dx),
        init_cov=kx.ScalarCovariance(2.0, dx),
    )
    assert ssm.dynamics_cov.is_zero()
    lgssm = kx.LinearGaussianSSM(
        dynamics=M, observation=np.eye(dx)[[0, 2]], dynamics_cov=np.zeros((dx, dx)),
        obs_cov=np.diag(obs_var), init_mean=np.ones(dx), init_cov=2.0 * np.eye(dx),
    )
    _, expected = kx.assimilate(lgssm, kx.KalmanFilter(), ys, save=SAVE)
    _, history = kx.assimilate(ssm, FILTERS[name], ys, save=SAVE)
    assert_histories_close(history, expected)


@pytest.mark.parametrize("name", ["ekf", "ukf"])
def test_streaming_init_forecast_analysis_equals_assimilate(name):
    """The per-step methods, run eagerly, equal the jit-compiled scan driver."""
    build, ys = nonlinear_problem(T=5)
    model = build(0.5)
    flt = FILTERS[name]
    _, history = kx.assimilate(model, flt, ys, save=kx.Save(cov=True))
    state = flt.init(model)
    assert isinstance(state, kx.Gaussian)
    for n, y in enumerate(ys):
        state = flt.forecast(model, state)
        state, info = flt.analysis(model, state, jnp.asarray(y))
        assert isinstance(info, kx.KalmanInfo)
        np.testing.assert_allclose(state.mean, history.mean[n], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(state.cov, history.cov[n], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(info.log_likelihood, history.info.log_likelihood[n], rtol=1e-12)


def test_fully_missing_row_is_a_forecast_only_step():
    _, model, ys = make(missing="rows", dx=4, dy=4)
    for flt in [FILTERS["ekf"], FILTERS["ukf"]]:
        _, history = kx.assimilate(model, flt, ys, save=SAVE)
        for n in [0, 7]:
            np.testing.assert_array_equal(history.mean[n], history.forecast_mean[n])
            np.testing.assert_array_equal(history.cov[n], history.forecast_cov[n])
            assert history.info.log_likelihood[n] == 0.0 and history.info.n_observed[n] == 0


# -- inflation ----------------------------------------------------------------------


def numpy_inflated_kalman_filter(np_model, ys, inflation):
    """The Kalman filter with C^- = inflation * M C M^T + Q (NumPy float64, time-invariant)."""
    M, b, Q = np_model.dynamics[0], np_model.dynamics_offset[0], np_model.dynamics_cov[0]
    H, d, R = np_model.observation[0], np_model.obs_offset[0], np_model.obs_cov[0]
    mean, cov = np_model.init_mean, np_model.init_cov
    means, covs, logliks = [], [], []
    for y in ys:
        mean = M @ mean + b
        cov = inflation * M @ cov @ M.T + Q
        obs = np.isfinite(y)
        Ho, Ro, ro = H[obs], R[np.ix_(obs, obs)], y[obs] - H[obs] @ mean - d[obs]
        S = Ho @ cov @ Ho.T + Ro
        K = cov @ Ho.T @ np.linalg.inv(S)
        logliks.append(ref._logpdf(ro, S) if obs.any() else 0.0)
        mean, cov = mean + K @ ro, cov - K @ S @ K.T
        means.append(mean)
        covs.append(cov)
    return np.array(means), np.array(covs), np.array(logliks)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_inflation_on_linear_model_equals_inflated_kalman_filter(cls):
    np_model, model, ys = make(offsets=True, missing="partial")
    means, covs, logliks = numpy_inflated_kalman_filter(np_model, ys, 1.7)
    _, history = kx.assimilate(model, cls(inflation=1.7), ys, save=kx.Save(cov=True))
    np.testing.assert_allclose(history.mean, means, **TOL)
    np.testing.assert_allclose(history.cov, covs, **TOL)
    np.testing.assert_allclose(history.info.log_likelihood, logliks, **TOL)


def test_per_unit_time_inflation_reproduces_dapper_per_step_inflation():
    """DAPPER's ExtKF applies P <- infl**dt F P F^T at each of the dko model steps of
    an observation interval (no model noise); per cycle that is infl**(dko dt)."""
    rng = np.random.default_rng(2)
    dx, dt, dko, infl, T = 3, 0.05, 5, 40.0, 6
    step = np.eye(dx) + dt * rng.normal(size=(dx, dx))
    H, R = rng.normal(size=(2, dx)), 0.5 * np.eye(2)
    ys = rng.normal(size=(T, 2))
    mean, cov = np.zeros(dx), np.eye(dx)
    dapper_means, dapper_covs = [], []
    for y in ys:
        for _ in range(dko):
            mean, cov = step @ mean, infl**dt * step @ cov @ step.T
        K = cov @ H.T @ np.linalg.inv(H @ cov @ H.T + R)
        mean, cov = mean + K @ (y - H @ mean), (np.eye(dx) - K @ H) @ cov
        dapper_means.append(mean)
        dapper_covs.append(cov)
    model = kx.StateSpaceModel(
        dynamics=kx.LinearDynamics(jnp.asarray(np.linalg.matrix_power(step, dko))),
        observation=H, dynamics_cov=None, obs_cov=R, init_mean=np.zeros(dx), init_cov=np.eye(dx),
    )
    ekf = ExtendedKalmanFilter.per_unit_time(infl, dko * dt)
    np.testing.assert_allclose(ekf.inflation, infl ** (dko * dt), rtol=1e-14)
    _, history = kx.assimilate(model, ekf, ys, save=kx.Save(cov=True))
    np.testing.assert_allclose(history.mean, dapper_means, **TOL)
    np.testing.assert_allclose(history.cov, dapper_covs, **TOL)


# -- nonlinear references --------------------------------------------------------------


def h_nonlinear(v):
    return jnp.stack([jnp.sin(v[0]) * v[1], v[2] ** 2, jnp.exp(0.3 * v[0])])


def h_nonlinear_jacobian(v):
    return np.array(
        [
            [np.cos(v[0]) * v[1], np.sin(v[0]), 0.0],
            [0.0, 0.0, 2 * v[2]],
            [0.3 * np.exp(0.3 * v[0]), 0.0, 0.0],
        ]
    )


def psi_nonlinear(v):
    return v + 0.1 * jnp.sin(v[::-1])


def psi_nonlinear_jacobian(v):
    return np.eye(3) + 0.1 * np.diag(np.cos(v[::-1]))[:, ::-1]


@pytest.mark.parametrize("missing", [False, True])
def test_ekf_nonlinear_cycle_matches_numpy_linearisation(missing):
    rng = np.random.default_rng(6)
    m0 = rng.normal(size=3)
    A = rng.normal(size=(3, 3))
    C0 = A @ A.T / 3 + 0.2 * np.eye(3)
    Q = 0.1 * np.eye(3)
    R = np.diag([0.2, 0.3, 0.4])
    y = np.array([0.3, 1.1, np.nan if missing else 0.9])
    model = kx.StateSpaceModel(psi_nonlinear, h_nonlinear, Q, R, m0, C0)
    ekf = ExtendedKalmanFilter(inflation=1.3)
    forecast = ekf.forecast(model, ekf.init(model))
    analysis, info = ekf.analysis(model, forecast, jnp.asarray(y))

    F = psi_nonlinear_jacobian(m0)
    mf = np.asarray(psi_nonlinear(jnp.asarray(m0)))
    Cf = 1.3 * F @ C0 @ F.T + Q
    np.testing.assert_allclose(forecast.mean, mf, rtol=1e-13)
    np.testing.assert_allclose(forecast.cov, Cf, rtol=1e-12)
    obs = np.isfinite(y)
    H = h_nonlinear_jacobian(mf)[obs]
    residual = y[obs] - np.asarray(h_nonlinear(jnp.asarray(mf)))[obs]
    S = H @ Cf @ H.T + R[np.ix_(obs, obs)]
    K = Cf @ H.T @ np.linalg.inv(S)
    np.testing.assert_allclose(analysis.mean, mf + K @ residual, rtol=1e-11)
    np.testing.assert_allclose(analysis.cov, Cf - K @ S @ K.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(info.log_likelihood, ref._logpdf(residual, S), rtol=1e-11)
    assert int(info.n_observed) == obs.sum() and int(info.status) == 0


def test_ukf_is_exact_for_quadratic_maps():
    """For v ~ N(m, diag(s^2)) and component-wise quadratics, with beta = alpha^2 and
    alpha^2 (d + kappa) = 2 the sigma points reproduce the exact mean, covariance and
    cross-covariance (4th moments E xi^4 = 3 included), so both steps are exact."""
    d = 3
    m = np.array([0.5, -1.0, 2.0])
    s2 = np.array([0.4, 0.9, 0.25])
    a = 0.1
    Q = 0.05 * np.eye(d)
    R = 0.3 * np.eye(d)
    model = kx.StateSpaceModel(lambda v: v + a * v**2, lambda v: v**2, Q, R, m, np.diag(s2))
    ukf = UnscentedKalmanFilter(alpha=1.0, beta=1.0, kappa=2.0 - d)

    # forecast: x + a x^2, x ~ N(m, s2): mean m + a (m^2 + s2); var (1 + 2 a m)^2 s2 + 2 a^2 s2^2
    forecast = ukf.forecast(model, ukf.init(model))
    np.testing.assert_allclose(forecast.mean, m + a * (m**2 + s2), rtol=1e-13)
    np.testing.assert_allclose(forecast.cov, np.diag((1 + 2 * a * m) ** 2 * s2 + 2 * a**2 * s2**2) + Q, rtol=1e-12, atol=1e-14)

    # analysis on a diagonal prior: E x^2 = m^2 + s2, Var x^2 = 4 m^2 s2 + 2 s2^2, Cov(x, x^2) = 2 m s2
    prior = kx.Gaussian(jnp.asarray(m), jnp.asarray(np.diag(s2)))
    y = np.array([0.1, 1.5, 4.5])
    analysis, info = ukf.analysis(model, prior, jnp.asarray(y))
    S = np.diag(4 * m**2 * s2 + 2 * s2**2) + R
    cross = np.diag(2 * m * s2)
    K = cross @ np.linalg.inv(S)
    residual = y - (m**2 + s2)
    np.testing.assert_allclose(analysis.mean, m + K @ residual, rtol=1e-12)
    np.testing.assert_allclose(analysis.cov, np.diag(s2) - K @ S @ K.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(info.log_likelihood, ref._logpdf(residual, S), rtol=1e-12)


def test_ukf_mean_of_a_quadratic_is_exact_for_any_scaling_and_correlation():
    """E[Psi(v)] for quadratic Psi depends on the first two moments only, which the
    sigma points match for any alpha, kappa and a correlated covariance."""
    rng = np.random.default_rng(8)
    m = rng.normal(size=4)
    A = rng.normal(size=(4, 4))
    C = A @ A.T / 4 + 0.1 * np.eye(4)
    B = rng.normal(size=(4, 4))
    model = kx.StateSpaceModel(lambda v: v * (B @ v), np.eye(4), None, np.eye(4), m, C)
    # E[v_i (B v)_i] = m_i (B m)_i + (C B^T)_ii
    expected = m * (B @ m) + np.diag(C @ B.T)
    for ukf in [UnscentedKalmanFilter(), UnscentedKalmanFilter(alpha=0.4, kappa=1.0), UnscentedKalmanFilter(alpha=2.0)]:
        np.testing.assert_allclose(ukf.forecast(model, ukf.init(model)).mean, expected, rtol=1e-12)


# -- jit, vmap, grad, float32 ---------------------------------------------------------


class NonlinearDynamics(eqx.Module):
    """v -> 0.8 roll(v) + theta sin(v): a scalar dynamics parameter, a pytree leaf."""

    theta: jax.Array

    def __call__(self, v):
        return 0.8 * jnp.roll(v, 1) + self.theta.astype(v.dtype) * jnp.sin(v)


def observe_nonlinear(v):
    return jnp.stack([v[0], jnp.sin(v[1]) + v[2]])


def nonlinear_problem(theta=0.5, T=10, dtype=np.float64):
    rng = np.random.default_rng(12)
    truth = np.array([1.0, -0.5, 0.3])
    ys = []
    for _ in range(T):
        truth = 0.8 * np.roll(truth, 1) + theta * np.sin(truth) + 0.1 * rng.normal(size=3)
        ys.append([truth[0], np.sin(truth[1]) + truth[2]] + 0.2 * rng.normal(size=2))
    ys = np.array(ys, dtype=dtype)
    ys[4, 1] = np.nan

    def model(theta):
        return kx.StateSpaceModel(
            dynamics=NonlinearDynamics(jnp.asarray(theta, dtype)),
            observation=observe_nonlinear,
            dynamics_cov=0.01 * np.eye(3, dtype=dtype),
            obs_cov=0.04 * np.eye(2, dtype=dtype),
            init_mean=np.array([0.8, -0.3, 0.2], dtype),
            init_cov=0.2 * np.eye(3, dtype=dtype),
        )

    return model, ys


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_gradient_wrt_dynamics_parameter_and_hyperparameters_match_finite_differences(cls):
    """d log-likelihood / d(theta, inflation[, alpha]) through the whole run (reverse
    mode over the forward-mode Jacobians / sigma points) against central differences."""
    model, ys = nonlinear_problem()
    x0 = [0.5, 1.2] + ([0.7] if cls is UnscentedKalmanFilter else [])

    def loglik(*params):
        theta, inflation, *alpha = params
        flt = cls(inflation=inflation) if not alpha else cls(inflation=inflation, alpha=alpha[0], kappa=1.0)
        return kx.log_likelihood(model(theta), flt, ys)

    grads = jax.grad(loglik, argnums=tuple(range(len(x0))))(*map(jnp.asarray, x0))
    for i, grad in enumerate(grads):
        eps = 1e-6

        def shifted(delta, i=i):
            return loglik(*[x + (delta if j == i else 0.0) for j, x in enumerate(x0)])

        fd = (float(shifted(eps)) - float(shifted(-eps))) / (2 * eps)
        assert np.isfinite(grad) and abs(float(grad)) > 1e-3
        np.testing.assert_allclose(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_vmap_over_inflations_equals_loop(cls):
    model, ys = nonlinear_problem()
    inflations = jnp.array([1.0, 1.1, 1.5, 2.0])

    def run(inflation):
        _, history = kx.assimilate(model(0.5), cls(inflation=inflation), ys, save=kx.Save(cov=True))
        return history.mean, history.cov, history.info.log_likelihood

    batched = jax.jit(jax.vmap(run))(inflations)
    for i, inflation in enumerate(inflations):
        for got, want in zip(batched, run(float(inflation))):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["ekf", "ukf"])
def test_vmap_over_observation_sequences_equals_loop(name):
    _, model, _ = make(offsets=True)
    batch = np.stack([ref.random_problem(np.random.default_rng(s), 3, 2, 12, offsets=True)[1] for s in range(3)])
    batch[1, 2, 0] = np.nan

    def run(ys):
        _, history = kx.assimilate(model, FILTERS[name], ys, save=kx.Save(cov=True))
        return history.mean, history.info.log_likelihood

    means, logliks = jax.jit(jax.vmap(run))(jnp.asarray(batch))
    for b in range(batch.shape[0]):
        m, ll = run(jnp.asarray(batch[b]))
        np.testing.assert_allclose(means[b], m, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(logliks[b], ll, rtol=1e-12)


@pytest.mark.parametrize("cls", [ExtendedKalmanFilter, UnscentedKalmanFilter])
def test_float32_preserves_dtype_and_agrees_with_float64(cls):
    """float32 tracks float64 to a few hundred ulps of its eps (1.2e-7) on mildly
    conditioned problems over ~10 cycles."""
    flt = cls(inflation=1.1)
    for build in ["linear", "nonlinear"]:
        if build == "linear":
            _, m64, ys64 = make(seed=3, offsets=True, missing="partial")
            _, m32, ys32 = make(seed=3, offsets=True, missing="partial", dtype=np.float32)
        else:
            model, ys64 = nonlinear_problem()
            m64, (m32, ys32) = model(0.5), (nonlinear_problem(dtype=np.float32)[0](0.5), ys64.astype(np.float32))
        _, h64 = kx.assimilate(m64, flt, ys64, save=kx.Save(cov=True))
        _, h32 = kx.assimilate(m32, flt, ys32, save=kx.Save(cov=True))
        for field in [h32.mean, h32.cov, h32.info.log_likelihood]:
            assert field.dtype == jnp.float32
        np.testing.assert_allclose(h32.mean, h64.mean, atol=2e-5 * np.max(np.abs(h64.mean)))
        np.testing.assert_allclose(h32.cov, h64.cov, atol=2e-5 * np.max(np.abs(h64.cov)))
        np.testing.assert_allclose(h32.info.log_likelihood, h64.info.log_likelihood, rtol=1e-4, atol=1e-4)


# -- failures and bad input ---------------------------------------------------------------


def test_indefinite_ukf_covariance_from_negative_centre_weight_is_reported():
    """d = 3, kappa = -2.5, beta = 0: d + lambda = 0.5, W^c_0 = -5. For h(v) = |v|^2 at
    N(0, I) the sigma-point variance is -5 * 9 + 6 * 2.5^2 = -7.5, so S = -6.5 < 0."""
    model = kx.StateSpaceModel(lambda v: v, lambda v: jnp.sum(v**2, keepdims=True), None, np.eye(1), np.zeros(3), np.eye(3))
    ukf = UnscentedKalmanFilter(alpha=1.0, beta=0.0, kappa=-2.5)
    _, info = ukf.analysis(model, ukf.init(model), jnp.array([3.0]))
    assert int(info.status) == RESULTS.NOT_POSITIVE_DEFINITE
    with pytest.raises(kx.DivergenceError, match="cycle 0"):
        kx.assimilate(model, ukf, np.array([[3.0]]))


def test_singular_covariance_is_reported_with_the_cycle():
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(2), observation=np.eye(2), dynamics_cov=np.zeros((2, 2)),
        obs_cov=np.zeros((2, 2)), init_mean=np.zeros(2), init_cov=np.zeros((2, 2)),
    )
    for flt in [ExtendedKalmanFilter(), UnscentedKalmanFilter()]:
        with pytest.raises(kx.DivergenceError, match="cycle 0"):
            kx.assimilate(model, flt, np.zeros((4, 2)))
        _, history = kx.assimilate(model, flt, np.zeros((4, 2)), throw=False)
        assert history.info.status[0] == RESULTS.NOT_POSITIVE_DEFINITE


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ExtendedKalmanFilter(inflation=0.9), r"`inflation` must be >= 1"),
        (lambda: UnscentedKalmanFilter(inflation=0.5), r"`inflation` must be >= 1"),
        (lambda: UnscentedKalmanFilter(alpha=0.0), r"`alpha` must be > 0"),
        (lambda: UnscentedKalmanFilter(alpha=-1.0), r"`alpha` must be > 0"),
        (lambda: ExtendedKalmanFilter(inflation=np.ones(2)), r"`inflation` must be a scalar; got shape \(2,\)"),
        (lambda: ExtendedKalmanFilter(inflation=np.nan), r"`inflation` has non-finite entries"),
        (lambda: ExtendedKalmanFilter.per_unit_time(0.5, 0.25), r"`infl` must be >= 1"),
        (lambda: ExtendedKalmanFilter.per_unit_time(180.0, 0.0), r"`interval` must be > 0"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_types_raise_type_error():
    _, model, ys = make()
    with pytest.raises(TypeError, match="`inflation` must be a float; got str"):
        ExtendedKalmanFilter(inflation="big")
    for flt in [ExtendedKalmanFilter(), UnscentedKalmanFilter()]:
        name = type(flt).__name__
        with pytest.raises(TypeError, match=f"{name} needs a `StateSpaceModel` or a `LinearGaussianSSM`; got dict"):
            flt.check_model({"dynamics": 1})
        with pytest.raises(TypeError, match=f"{name}.init needs a `StateSpaceModel`"):
            flt.init(kx.KalmanFilter())
        with pytest.raises(TypeError, match=f"{name}.analysis needs"):
            flt.analysis(object(), flt.init(model), ys[0])


def test_kappa_too_negative_for_the_state_dimension():
    _, model, ys = make()
    with pytest.raises(ValueError, match=r"`kappa` must satisfy d \+ kappa > 0 .* d = 3"):
        kx.assimilate(model, UnscentedKalmanFilter(kappa=-3.0), ys)


def test_time_varying_model_in_streaming_use_needs_one_cycle():
    _, model, _ = make(time_varying=True)
    ekf = ExtendedKalmanFilter()
    with pytest.raises(ValueError, match=r"model.at\(n\)"):
        ekf.forecast(model, ekf.init(model.at(0)))


# -- Lorenz-63 smoke run ------------------------------------------------------------------


def test_lorenz63_twin_experiment_beats_the_observation_noise():
    """Sakov et al. (2012) set-up: dt = 0.01, 25 RK4 steps per cycle, H = I, R = 2 I,
    ExtKF(infl=180) per unit time. DAPPER's long-run RMSE is 0.92 (5,000 cycles here:
    0.90-0.96 over seeds); 300-cycle runs scatter 0.88-1.17, so the bound is on the
    mean over 4 seeds, each also well below the noise level sqrt(2)."""
    models = pytest.importorskip("kalmax.models")
    flow = models.Flow(models.Lorenz63(), models.RK4(dt=0.01, n_steps=25))
    mu0 = jnp.array([1.509, -1.531, 25.46])
    model = kx.StateSpaceModel(flow, jnp.eye(3), None, 2.0 * jnp.eye(3), mu0, 2.0 * jnp.eye(3))
    T, burn_in = 300, 64  # 16 time units
    filters = {
        "ekf": ExtendedKalmanFilter.per_unit_time(180.0, flow.interval),
        "ukf": UnscentedKalmanFilter(inflation=180.0 ** float(flow.interval)),
    }
    scores = {name: [] for name in filters}
    for seed in range(4):
        key_x0, key_obs = jax.random.split(jax.random.key(seed))
        truth = models.trajectory(flow, mu0 + jnp.sqrt(2.0) * jax.random.normal(key_x0, (3,)), T)[1:]
        ys = truth + jnp.sqrt(2.0) * jax.random.normal(key_obs, truth.shape)
        for name, flt in filters.items():
            _, history = kx.assimilate(model, flt, ys)
            rmse = jnp.sqrt(jnp.mean((history.mean - truth) ** 2, axis=1))
            scores[name].append(float(jnp.mean(rmse[burn_in:])))
    for name, values in scores.items():
        assert max(values) < 1.3, (name, values)
        assert np.mean(values) < 1.1, (name, values)
