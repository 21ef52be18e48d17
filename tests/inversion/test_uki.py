"""UKI against a plain NumPy float64 transcription of Huang, Schneider & Stuart (2022) and closed-form posteriors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from kalmax.results import RESULTS
from kalmax.inversion.constraints import Bounds
from kalmax.inversion.invert import DiscrepancyPrinciple, InversionError, invert
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.uki import UKI, UKIState

from .test_eki import linear_problem


def numpy_uki_step(m, C, forward, y, gamma, m0, C0, alpha, impose_prior, update_evolution):
    """One UKI iteration as written in the paper, dense float64: prediction, sigma points, analysis.

    Returns (sigma points (2d + 1, d), m_{n+1}, C_{n+1}).
    """
    d = m.size
    # prediction, r = m_0, Sigma_omega = (2 - alpha^2) Lambda
    lam_cov = C if update_evolution else C0
    m_hat = m0 + alpha * (m - m0)
    C_hat = alpha**2 * C + (2.0 - alpha**2) * lam_cov
    # modified unscented transform: kappa = 0, beta = 2, a = min(sqrt(4 / (d + kappa)), 1)
    kappa, beta = 0.0, 2.0
    a = min(math.sqrt(4.0 / (d + kappa)), 1.0)
    lam = a**2 * (d + kappa) - d
    c = math.sqrt(d + lam)
    chol = np.linalg.cholesky(C_hat)
    points = np.vstack([m_hat, m_hat + c * chol.T, m_hat - c * chol.T])
    mean_weights = np.zeros(2 * d + 1)
    mean_weights[0] = 1.0
    cov_weights = np.full(2 * d + 1, 1.0 / (2.0 * (d + lam)))
    cov_weights[0] = lam / (d + lam) + 1.0 - a**2 + beta
    outputs = np.stack([forward(u) for u in points])
    y_obs, noise = y, gamma
    if impose_prior:
        outputs = np.hstack([outputs, points])
        y_obs = np.concatenate([y, m0])
        noise = np.block([[gamma, np.zeros((y.size, d))], [np.zeros((d, y.size)), C0]])
    # analysis, Sigma_nu = 2 Gamma(_aug)
    y_hat = mean_weights @ outputs
    u_hat = mean_weights @ points
    du, dy = points - u_hat, outputs - y_hat
    C_uy = (du * cov_weights[:, None]).T @ dy
    C_yy = (dy * cov_weights[:, None]).T @ dy + 2.0 * noise
    gain = C_uy @ np.linalg.inv(C_yy)
    return points, m_hat + gain @ (y_obs - y_hat), C_hat - gain @ C_uy.T


def _nonlinear(H):
    """G(u) = H tanh(u) + 0.3 (H u)^2 / p, a smooth nonlinear map (NumPy and JAX versions)."""
    p = H.shape[0]
    H_j = jnp.asarray(H)
    return (lambda u: H @ np.tanh(u) + 0.3 * (H @ u) ** 2 / p), (lambda u: H_j @ jnp.tanh(u) + 0.3 * (H_j @ u) ** 2 / p)


def _random_state(d, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d) * 0.3, a @ a.T / d * 0.2 + 0.05 * np.eye(d)


# --- one step against the paper's equations --------------------------------------------------------


@pytest.mark.parametrize("d", [3, 10], ids=["d<4", "d>=4"])
@pytest.mark.parametrize(
    "kwargs, alpha, impose, update",
    [
        (dict(), 1.0, True, True),
        (dict(alpha=0.7), 0.7, True, True),
        (dict(alpha=0.6, impose_prior=False), 0.6, False, False),
        (dict(impose_prior=False, update_evolution=True), 1.0, False, True),
    ],
    ids=["prior-imposed", "prior-imposed-alpha", "paper-original", "no-prior-updated"],
)
def test_one_step_matches_numpy_paper_equations(d, kwargs, alpha, impose, update):
    H = np.random.default_rng(5).normal(size=(7, d))
    g_np, g_jax = _nonlinear(H)
    problem, ref = linear_problem(d=d, p=7, forward=g_jax)
    uki = UKI(**kwargs)
    m, C = _random_state(d, seed=11)
    state = uki.init(problem, None, mean=m, cov=C)
    setting = (ref["y"], ref["gamma"], ref["m0"], ref["C0"], alpha, impose, update)
    points, mean, cov = numpy_uki_step(m, C, g_np, *setting)
    np.testing.assert_allclose(uki.ask(state), points, rtol=1e-12, atol=1e-12)
    outputs = np.stack([g_np(u) for u in points])
    new = uki.tell(problem, state, jnp.asarray(outputs))
    np.testing.assert_allclose(new.mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.cov, cov, rtol=1e-10, atol=1e-12)
    # the next sigma points are the prediction from (m_{n+1}, C_{n+1})
    next_points, _, _ = numpy_uki_step(mean, cov, g_np, *setting)
    np.testing.assert_allclose(new.sigma_points, next_points, rtol=1e-9, atol=1e-11)
    assert int(new.iteration) == 1 and float(new.time) == 1.0 and float(new.step_size) == 1.0
    r = ref["y"] - outputs[0]
    assert float(new.misfit) == pytest.approx(r @ np.linalg.solve(ref["gamma"], r), rel=1e-10)
    np.testing.assert_array_equal(new.failures, np.zeros(2 * d + 1))


def test_step_evaluates_forward_inside_and_matches_tell_under_jit():
    problem, ref = linear_problem()
    uki = UKI()
    state = uki.init(problem, None)
    stepped = jax.jit(lambda s: uki.step(problem, s))(state)
    told = uki.tell(problem, state, np.asarray(state.sigma_points) @ ref["H"].T)
    np.testing.assert_allclose(stepped.mean, told.mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(stepped.cov, told.cov, rtol=1e-12, atol=1e-13)


# --- fixed points for a linear G ---------------------------------------------------------------------


def test_prior_imposed_fixed_point_is_the_exact_posterior():
    problem, ref = linear_problem()
    uki = UKI()
    result = invert(problem, uki, None, n_steps=50)
    assert int(result.code) == 0 and int(result.n_iterations) == 50
    state = result.state
    assert np.linalg.norm(state.mean - ref["mean"]) / np.linalg.norm(ref["mean"]) < 1e-6
    assert np.linalg.norm(state.cov - ref["cov"]) / np.linalg.norm(ref["cov"]) < 1e-6
    # the history: row n describes iterate n; variance -> diag of the posterior
    np.testing.assert_allclose(result.history.variance[-1], np.diag(ref["cov"]), rtol=1e-6)
    np.testing.assert_allclose(result.history.mean[0], ref["m0"], rtol=1e-14)
    np.testing.assert_allclose(result.history.physical_mean[-1], state.mean, rtol=1e-14)
    # the misfit is |L^{-1}(y - H m^)|^2 of the centre sigma point
    r = ref["y"] - ref["H"] @ np.asarray(result.history.mean[-2])
    assert float(result.history.misfit[-1]) == pytest.approx(r @ np.linalg.solve(ref["gamma"], r), rel=1e-8)
    # ask / tell with the forward model run outside JAX (NumPy) gives the same iterates
    tell = eqx.filter_jit(uki.tell)
    state = uki.init(problem, None)
    for _ in range(4):
        theta = np.asarray(uki.ask(state))
        state = tell(problem, state, theta @ ref["H"].T)
    np.testing.assert_allclose(state.mean, result.history.mean[4], rtol=1e-12)
    np.testing.assert_allclose(np.diag(state.cov), result.history.variance[4], rtol=1e-12)
    assert uki.n_points(problem) == 21 and not uki.needs_key


def test_without_prior_fixed_point_is_least_squares():
    problem, ref = linear_problem()
    uki = UKI(impose_prior=False, update_evolution=True)
    result = invert(problem, uki, None, n_steps=50)
    np.testing.assert_allclose(result.state.mean, ref["lsq"], rtol=1e-8)
    np.testing.assert_allclose(result.state.cov, ref["lsq_cov"], rtol=1e-7, atol=1e-12)
    # the adaptive (while_loop) driver without a key: the discrepancy principle stops it
    stopped = invert(problem, uki, None, stop=DiscrepancyPrinciple(), max_steps=30)
    assert int(stopped.code) == RESULTS.DISCREPANCY and 1 <= int(stopped.n_iterations) < 30
    assert float(stopped.misfit) <= 1.25**2 * problem.data_dim


# --- a nonlinear problem: UKI near the MAP ------------------------------------------------------------


def exponential_problem(dtype=np.float64):
    """theta = (amplitude, rate > 0), G(theta) = amplitude exp(-rate t) at 8 times; u = (amplitude, log rate)."""
    times = np.linspace(0.0, 2.0, 8)
    truth = np.array([2.0, 0.8])
    noise = 0.05
    rng = np.random.default_rng(3)
    y = truth[0] * np.exp(-truth[1] * times) + noise * rng.normal(size=times.size)
    gamma = noise**2 * np.eye(times.size)
    m0, C0 = np.array([1.5, 0.0]), np.diag([1.0, 0.25])
    times_j = jnp.asarray(times, dtype)
    forward = lambda theta: theta[0] * jnp.exp(-theta[1] * times_j)  # noqa: E731
    bounds = Bounds(np.array([-np.inf, 0.0], dtype), np.array([np.inf, np.inf], dtype))
    prior = Prior(m0.astype(dtype), C0.astype(dtype), bounds)
    problem = InverseProblem(forward, y.astype(dtype), gamma.astype(dtype), prior)
    return problem, dict(times=times, y=y, gamma=gamma, m0=m0, C0=C0)


def _map_and_laplace(ref):
    t, y, gamma, m0, C0 = ref["times"], ref["y"], ref["gamma"], ref["m0"], ref["C0"]

    def G(u):
        return u[0] * np.exp(-np.exp(u[1]) * t)

    def jac(u):
        e = np.exp(-np.exp(u[1]) * t)
        return np.stack([e, -u[0] * t * np.exp(u[1]) * e], axis=1)

    def neg_log_post(u):
        r, q = y - G(u), u - m0
        return 0.5 * r @ np.linalg.solve(gamma, r) + 0.5 * q @ np.linalg.solve(C0, q)

    def grad(u):
        return -jac(u).T @ np.linalg.solve(gamma, y - G(u)) + np.linalg.solve(C0, u - m0)

    u_map = scipy.optimize.minimize(neg_log_post, m0, jac=grad, method="BFGS", options=dict(gtol=1e-12)).x
    J = jac(u_map)
    laplace = np.linalg.inv(J.T @ np.linalg.solve(gamma, J) + np.linalg.inv(C0))  # Gauss-Newton Hessian
    return u_map, laplace


def test_nonlinear_exponential_model_converges_near_the_map():
    problem, ref = exponential_problem()
    u_map, laplace = _map_and_laplace(ref)
    result = invert(problem, UKI(), None, n_steps=40)
    state = result.state
    std = np.sqrt(np.diag(laplace))
    assert np.all(np.abs(np.asarray(state.mean) - u_map) < 5e-3 * std)  # measured 5e-4
    np.testing.assert_allclose(np.diag(state.cov), np.diag(laplace), rtol=1e-2)  # measured 2e-3
    # converged: the last iterations no longer move
    assert np.max(np.abs(np.diff(result.history.mean[-5:], axis=0))) < 1e-8
    theta = np.asarray(result.history.physical_mean[-1])
    np.testing.assert_allclose(theta, [u_map[0], np.exp(u_map[1])], rtol=1e-2)


# --- jit, vmap, grad ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, eps, rtol", [(np.float64, 1e-6, 1e-6), (np.float32, 1e-2, 1e-3)])
def test_grad_of_final_mean_wrt_data_matches_finite_differences(dtype, eps, rtol):
    base, ref = exponential_problem(dtype)
    weights = jnp.asarray([1.0, -2.0], dtype)

    def loss(y):
        problem = InverseProblem(base.forward, y, base.obs_cov, base.prior)
        return weights @ invert(problem, UKI(), None, n_steps=6).state.mean

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one compilation serves the gradient and the differences
    loss_at = lambda y: float(value_and_grad(y)[0])  # noqa: E731
    y = jnp.asarray(ref["y"], dtype)
    grad = np.asarray(value_and_grad(y)[1], np.float64)
    fd = np.array([(loss_at(y.at[i].add(eps)) - loss_at(y.at[i].add(-eps))) / (2 * eps) for i in range(y.size)])
    np.testing.assert_allclose(grad, fd, rtol=rtol, atol=rtol * np.max(np.abs(fd)))
    assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 1e-2


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_vmap_over_alpha_and_data_matches_a_loop(dtype, rtol):
    problem, ref = linear_problem(d=5, p=8, dtype=dtype)
    alphas = jnp.asarray([0.5, 0.8, 1.0], dtype)
    ys = jnp.asarray(ref["y"][None, :] + np.linspace(-0.2, 0.2, 3)[:, None], dtype)

    def run(alpha, y):
        prob = InverseProblem(problem.forward, y, problem.obs_cov, problem.prior)
        uki = UKI(alpha=alpha, impose_prior=False)
        state = uki.init(prob, None)
        for _ in range(3):
            state = uki.step(prob, state)
        return state.mean, state.cov

    means, covs = jax.jit(jax.vmap(run))(alphas, ys)
    run_one = jax.jit(run)
    for i in range(3):
        mean, cov = run_one(alphas[i], ys[i])
        np.testing.assert_allclose(means[i], mean, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(covs[i], cov, rtol=rtol, atol=rtol)
    assert means.dtype == dtype


def test_float32_fixed_point_and_grad_wrt_alpha():
    problem32, ref = linear_problem(dtype=np.float32)
    state = invert(problem32, UKI(), None, n_steps=30).state
    assert state.mean.dtype == jnp.float32
    np.testing.assert_allclose(state.mean, ref["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.cov, ref["cov"], rtol=1e-4, atol=1e-5)
    assert np.all(np.linalg.eigvalsh(np.asarray(state.cov, np.float64)) > 0)

    problem, _ = linear_problem(d=4, p=6)

    def mean_sum(alpha):
        uki = UKI(alpha=alpha, impose_prior=False)
        state = uki.init(problem, None)
        for _ in range(4):
            state = uki.step(problem, state)
        return jnp.sum(state.mean)

    value_and_grad = jax.jit(jax.value_and_grad(mean_sum))
    grad = value_and_grad(0.7)[1]
    fd = (value_and_grad(0.7 + 1e-6)[0] - value_and_grad(0.7 - 1e-6)[0]) / 2e-6
    assert float(grad) == pytest.approx(float(fd), rel=1e-6)


# --- failures and bad inputs -------------------------------------------------------------------------


def test_a_failed_sigma_point_stops_invert_with_too_few_successes():
    base, ref = linear_problem(d=4, p=6)
    threshold = ref["m0"][0] + 1.0  # the outermost sigma point along u_0 passes it
    forward = lambda u: jnp.where(u[0] > threshold, jnp.nan, 1.0) * base.forward(u)  # noqa: E731
    problem = InverseProblem(forward, base.y, base.obs_cov, base.prior)
    result = invert(problem, UKI(), None, n_steps=3, throw=False)
    assert int(result.code) == RESULTS.TOO_FEW_SUCCESSES and int(result.n_iterations) == 0
    np.testing.assert_allclose(result.state.mean, ref["m0"])
    failed = np.asarray(result.history.failures[0])
    assert failed.shape == (9,) and np.any(failed == RESULTS.FORWARD_NON_FINITE)
    with pytest.raises(InversionError, match=r"UKI: at iteration 0, 1 of 9 members failed \(1 non-finite"):
        invert(problem, UKI(), None, n_steps=3)


def test_tell_with_a_failure_keeps_the_state():
    problem, ref = linear_problem(d=4, p=6)
    uki = UKI()
    state = uki.init(problem, None)
    outputs = np.asarray(state.sigma_points) @ ref["H"].T
    outputs[3, 2] = np.nan
    tell = eqx.filter_jit(uki.tell)
    new = tell(problem, state, outputs)
    for name in ("mean", "cov", "sigma_points", "time", "iteration"):
        np.testing.assert_array_equal(getattr(new, name), getattr(state, name))
    assert int(new.failures[3]) == RESULTS.FORWARD_NON_FINITE and np.isnan(float(new.step_size))
    assert not bool(uki.enough_successes(new.failures))
    # a failure reported by the caller (e.g. a crashed external run) is refused the same way
    outputs[3, 2] = 0.0
    flagged = tell(problem, state, outputs, failures=np.eye(9, dtype=np.int32)[5] * 3)
    np.testing.assert_array_equal(flagged.mean, state.mean)
    assert int(flagged.failures[5]) == 3 and int(flagged.iteration) == 0


def test_bad_inputs_raise_clear_errors():
    problem, ref = linear_problem(d=4, p=6)
    for alpha in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"`alpha` must lie in \(0, 1\]"):
            UKI(alpha=alpha)
    with pytest.raises(ValueError, match="`observation_inflation`.*must be positive"):
        UKI(observation_inflation=0.0)
    with pytest.raises(ValueError, match="`evolution_scale`.*non-negative"):
        UKI(evolution_scale=-1.0)
    with pytest.raises(TypeError, match="`impose_prior` must be a bool"):
        UKI(impose_prior="yes")
    uki = UKI()
    state = uki.init(problem, None)
    with pytest.raises(ValueError, match=r"`outputs` .* must have shape \(9, 6\).*got \(8, 6\)"):
        uki.tell(problem, state, np.zeros((8, 6)))
    with pytest.raises(ValueError, match=r"`outputs` .* must have shape \(9, 6\).*got \(9, 5\)"):
        uki.tell(problem, state, np.zeros((9, 5)))
    with pytest.raises(ValueError, match=r"`failures` must have shape \(9,\)"):
        uki.tell(problem, state, np.zeros((9, 6)), failures=np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="UKI has no ensemble members"):
        uki.init(problem, None, members=np.zeros((9, 4)))
    with pytest.raises(ValueError, match=r"`mean` must have shape \(4,\)"):
        uki.init(problem, None, mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"`cov` must have shape \(4, 4\)"):
        uki.init(problem, None, cov=np.eye(3))
    other, _ = linear_problem(d=3, p=6)
    with pytest.raises(ValueError, match=r"`state` must hold a \(3,\) mean and \(7, 3\) sigma points"):
        uki.tell(other, state, np.zeros((7, 6)))
    with pytest.raises(TypeError, match="`state` must be a UKIState"):
        uki.tell(problem, ref, np.zeros((9, 6)))


def test_state_contract_and_summary():
    problem, ref = exponential_problem()
    uki = UKI()
    state = uki.init(problem, None)
    assert isinstance(state, UKIState) and state.size == 5
    np.testing.assert_allclose(state.ensemble, problem.constrain(state.members))
    assert np.all(np.asarray(uki.ask(state))[:, 1] > 0)  # physical rates are positive
    mean, variance, physical = uki.summary(state)
    np.testing.assert_allclose(mean, ref["m0"])
    np.testing.assert_allclose(variance, np.diag(ref["C0"]))
    np.testing.assert_allclose(physical, [ref["m0"][0], 1.0])
    keyed = uki.init(problem, jax.random.key(0))  # the key is ignored
    for name in ("mean", "cov", "sigma_points", "failures"):
        np.testing.assert_array_equal(getattr(keyed, name), getattr(state, name))
