"""The continuous EKI flow: a NumPy/SciPy reference of Schillings & Stuart's formula, the closed-form
covariance and the 1/t misfit decay for linear G, the h -> 0 limit of deterministic EKI, TEKI's MAP,
jit/vmap/grad, float32, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from kalmax.inversion.eki import EKI
from kalmax.inversion.flow import eki_flow
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.schedulers import FixedStep
from kalmax.problems.linear import linear_gaussian

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _correlated(rng, n, scale):
    a = rng.standard_normal((n, n))
    return scale * (a @ a.T / n + np.eye(n))


def _nonlinear_problem(dtype=jnp.float64):
    """G(u) = H u + 0.3 sin(H u) with correlated Gamma and C_0 (d = 3, p = 8)."""
    rng = np.random.default_rng(3)
    d, p = 3, 8
    H = rng.standard_normal((p, d)) / np.sqrt(d)
    gamma = _correlated(rng, p, 0.5)
    c0 = _correlated(rng, d, 1.0)
    m0 = rng.standard_normal(d) * 0.3
    y = H @ rng.standard_normal(d) + rng.multivariate_normal(np.zeros(p), gamma)
    Hj = jnp.asarray(H, dtype)
    problem = InverseProblem(
        lambda u: Hj @ u + 0.3 * jnp.sin(Hj @ u),
        jnp.asarray(y, dtype),
        jnp.asarray(gamma, dtype),
        Prior(jnp.asarray(m0, dtype), jnp.asarray(c0, dtype)),
    )
    numpy_forward = lambda u: H @ u + 0.3 * np.sin(H @ u)  # noqa: E731
    return problem, (numpy_forward, y, gamma, m0, c0)


def _numpy_flow(members, t1, forward, y, gamma, m0=None, c0=None):
    """Schillings & Stuart (2017) eq. (2.4) verbatim, with 1/J, integrated by SciPy's DOP853.

    du_j/dt = -(1/J) sum_k <G(u_k) - G_bar, Gamma^{-1}(G(u_j) - y)> (u_k - u_bar);
    with (m0, c0) the prior is appended to the data (TEKI).
    """
    J, d = members.shape
    gamma_inv = np.linalg.inv(gamma)

    def rhs(_, flat):
        u = flat.reshape(J, d)
        g = np.stack([forward(u_j) for u_j in u])
        g_bar, u_bar = g.mean(axis=0), u.mean(axis=0)
        du = np.zeros_like(u)
        for j in range(J):
            for k in range(J):
                weight = (g[k] - g_bar) @ gamma_inv @ (g[j] - y)
                if c0 is not None:
                    weight += (u[k] - u_bar) @ np.linalg.solve(c0, u[j] - m0)
                du[j] -= weight * (u[k] - u_bar) / J
        return du.ravel()

    sol = solve_ivp(rhs, (0.0, t1), members.ravel(), method="DOP853", rtol=1e-11, atol=1e-12)
    assert sol.success
    return sol.y[:, -1].reshape(J, d)


# one problem (and J = 5) for the tests below, so that they share compilations
PROBLEM, REFERENCE = _nonlinear_problem()
J = 5


@pytest.mark.parametrize("tikhonov", [False, True])
def test_matches_numpy_reference_of_the_paper_formula(tikhonov):
    problem, (forward, y, gamma, m0, c0) = PROBLEM, REFERENCE
    members = problem.prior.sample(jax.random.key(0), J)
    sol = eki_flow(problem, members, 1.5, ddof=0, tikhonov=tikhonov, **TIGHT)
    assert sol.succeeded
    expected = _numpy_flow(np.asarray(members), 1.5, forward, y, gamma, *((m0, c0) if tikhonov else ()))
    np.testing.assert_allclose(sol.members[-1], expected, rtol=1e-7, atol=1e-8)
    # ddof = 1 (EKI's convention) is the same flow: time s with 1/J is time s (J - 1) / J with 1/(J - 1)
    rescaled = eki_flow(problem, members, 1.5 * 4 / 5, ddof=1, tikhonov=tikhonov, **TIGHT)
    np.testing.assert_allclose(rescaled.members[-1], expected, rtol=1e-7, atol=1e-8)
    # the misfit is that of the saved ensemble's mean output
    outputs = np.stack([forward(u) for u in np.asarray(sol.members[-1])])
    residual = y - outputs.mean(axis=0)
    np.testing.assert_allclose(sol.misfit[-1], residual @ np.linalg.solve(gamma, residual), rtol=1e-9)


@pytest.fixture(scope="module")
def linear_run():
    lin = linear_gaussian(jax.random.key(0), parameter_dim=4, data_dim=12)
    members = lin.problem.prior.sample(jax.random.key(1), 10)  # J = 10 > d = 4
    ts = jnp.geomspace(1.0, 1e4, 9)
    return lin, members, ts, eki_flow(lin.problem, members, 1e4, saveat=ts)


def test_linear_covariance_has_closed_form(linear_run):
    """Linear G: dC/dt = -2 C B C with B = H^T Gamma^{-1} H, so C(t)^{-1} = C(0)^{-1} + 2 B t (ddof = 1 both)."""
    lin, members, ts, sol = linear_run
    H, gamma = np.asarray(lin.matrix), np.asarray(lin.problem.obs_cov.matrix())
    B = H.T @ np.linalg.solve(gamma, H)
    c_init = np.cov(np.asarray(members).T)
    for t, u in zip(np.asarray(ts)[::4], np.asarray(sol.members)[::4]):
        expected = np.linalg.inv(np.linalg.inv(c_init) + 2 * t * B)
        np.testing.assert_allclose(np.cov(u.T), expected, rtol=1e-3)  # measured 2e-4 at t = 1e4


def test_linear_misfit_decays_like_one_over_t(linear_run):
    """Schillings & Stuart (2017): for linear G and J > d the residual in the range of H is O(t^{-1/2}).

    The data misfit is |L^{-1}(y - H u_LS)|^2 + |L^{-1} H (u_bar - u_LS)|^2 (normal equations), so
    the excess over the least-squares misfit decays like 1/t: measured log-log slope -0.9999 on [1e2, 1e4].
    """
    lin, members, ts, sol = linear_run
    assert sol.succeeded
    H, y = np.asarray(lin.matrix), np.asarray(lin.problem.y)
    gamma = np.asarray(lin.problem.obs_cov.matrix())
    residual_ls = y - H @ np.asarray(lin.least_squares)
    excess = np.asarray(sol.misfit) - residual_ls @ np.linalg.solve(gamma, residual_ls)
    assert np.all(np.diff(excess) < 0) and np.all(excess > 0)
    late = slice(4, None)  # t in [1e2, 1e4]
    slope = np.polyfit(np.log(np.asarray(ts)[late]), np.log(excess[late]), 1)[0]
    assert -1.3 < slope < -0.7
    np.testing.assert_allclose(slope, -1.0, atol=0.01)


def test_deterministic_eki_tends_to_the_flow_at_first_order():
    """Deterministic EKI with FixedStep(h) is a consistent first-order scheme for the flow (ddof = 1)."""
    problem = PROBLEM
    members = problem.prior.sample(jax.random.key(2), J)
    t1 = 2.0
    target = np.asarray(eki_flow(problem, members, t1, **TIGHT).members[-1])

    @jax.jit
    def run(h, n):
        eki = EKI(J, FixedStep(h), stochastic=False)
        state = eki.init(problem, None, members=members)
        key = jax.random.key(0)  # unused by deterministic EKI with no failures
        return jax.lax.fori_loop(0, n, lambda _, s: eki.step(problem, s, key), state)

    errors = []
    for n in (50, 100, 200, 400):
        state = run(jnp.asarray(t1 / n), n)
        np.testing.assert_allclose(state.time, t1, rtol=1e-12)
        errors.append(np.abs(np.asarray(state.members) - target).max())
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    # measured 2.17, 2.09, 2.04: the error halves with h, as O(h) with an O(h^2) remainder
    assert np.all((ratios > 1.85) & (ratios < 2.3)) and abs(ratios[-1] - 2.0) < 0.08
    assert errors[-1] < 1e-3


def test_tikhonov_flow_tends_to_the_posterior_mean(linear_run):
    """Linear Gaussian: TEKI's fixed point is the MAP = the exact posterior mean, approached like t^{-1/2}."""
    lin, members, _, _ = linear_run
    times = jnp.asarray([1e2, 1e4])
    sol = eki_flow(lin.problem, members, 1e4, saveat=times, tikhonov=True, **TIGHT)
    errors = np.linalg.norm(np.asarray(sol.mean) - np.asarray(lin.posterior.mean), axis=1)
    print("TEKI errors at t = 1e2, 1e4:", errors)
    np.testing.assert_allclose(errors[1] / errors[0], 0.1, rtol=0.2)
    assert errors[1] < 1e-2 * np.linalg.norm(np.asarray(lin.posterior.mean))


def test_jit_vmap_and_grad_wrt_data():
    problem = PROBLEM
    members = problem.prior.sample(jax.random.key(6), J)

    def final_misfit(y):
        return eki_flow(eqx.tree_at(lambda p: p.y, problem, y), members, 1.0, **TIGHT).misfit[-1]

    y = problem.y
    ys = jnp.stack([y, y + 0.1])
    batched = jax.jit(jax.vmap(final_misfit))(ys)
    np.testing.assert_allclose(batched, [final_misfit(y), final_misfit(y + 0.1)], rtol=1e-10)
    grad = jax.grad(final_misfit)(y)
    eps = 1e-6
    fd = np.array(
        [(final_misfit(y.at[i].add(eps)) - final_misfit(y.at[i].add(-eps))) / (2 * eps) for i in range(y.shape[0])]
    )
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_float32_runs_and_agrees_with_float64():
    problem64, (problem32, _) = PROBLEM, _nonlinear_problem(jnp.float32)
    members = problem64.prior.sample(jax.random.key(7), J)
    sol32 = eki_flow(problem32, members.astype(jnp.float32), 2.0, rtol=1e-5, atol=1e-6)
    sol64 = eki_flow(problem64, members, 2.0)
    assert sol32.members.dtype == jnp.float32 and sol32.misfit.dtype == jnp.float32
    assert sol32.succeeded
    np.testing.assert_allclose(sol32.members, sol64.members, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sol32.misfit, sol64.misfit, rtol=1e-3)


def test_failed_solve_is_reported_or_raised():
    members = PROBLEM.prior.sample(jax.random.key(9), J)
    sol = eki_flow(PROBLEM, members, 50.0, max_steps=3, throw=False)
    assert not sol.succeeded
    with pytest.raises(Exception, match="max_steps"):
        eki_flow(PROBLEM, members, 50.0, max_steps=3)


def test_bad_input_is_named():
    problem = PROBLEM
    members = problem.prior.sample(jax.random.key(8), J)
    with pytest.raises(ValueError, match=r"`members` must have shape \(J, 3\)"):
        eki_flow(problem, members[:, :2], 1.0)
    with pytest.raises(ValueError, match="`t1` must be positive"):
        eki_flow(problem, members, 0.0)
    with pytest.raises(ValueError, match="`saveat` must be non-decreasing times in"):
        eki_flow(problem, members, 1.0, saveat=jnp.asarray([0.5, 2.0]))
    with pytest.raises(ValueError, match="`ddof` must be an int"):
        eki_flow(problem, members, 1.0, ddof=5)
    with pytest.raises(TypeError, match="`problem` must be a kalmax InverseProblem"):
        eki_flow(object(), members, 1.0)
