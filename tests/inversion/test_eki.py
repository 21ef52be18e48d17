"""EKI, TEKI and ETKI against NumPy float64 formulas and closed-form linear Gaussian answers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.inversion.eki import EKI, ETKI
from kalmax.inversion.enrml import EnRML
from kalmax.inversion.esmda import ESMDA
from kalmax.inversion.invert import invert
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.schedulers import FixedStep


def linear_problem(d=10, p=20, seed=0, dtype=np.float64, noise=0.1, forward=None):
    """y = H u + eta with a random H, a dense Gamma and a non-trivial prior; the exact posterior (float64).

    `forward` replaces u -> H u in the problem (the references stay those of H).
    """
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(p, d))
    root = rng.normal(size=(p, p)) * 0.3
    gamma = noise * (root @ root.T / p + np.eye(p))
    prior_mean = rng.normal(size=d) * 0.5
    c = rng.normal(size=(d, d))
    prior_cov = c @ c.T / d + 0.5 * np.eye(d)
    truth = rng.multivariate_normal(prior_mean, prior_cov)
    y = H @ truth + rng.multivariate_normal(np.zeros(p), gamma)
    precision = H.T @ np.linalg.solve(gamma, H)
    post_cov = np.linalg.inv(precision + np.linalg.inv(prior_cov))
    post_mean = post_cov @ (H.T @ np.linalg.solve(gamma, y) + np.linalg.solve(prior_cov, prior_mean))
    lsq = np.linalg.solve(precision, H.T @ np.linalg.solve(gamma, y))
    H_j = jnp.asarray(H, dtype)
    if forward is None:
        forward = lambda u: H_j @ u  # noqa: E731
    problem = InverseProblem(
        forward, y.astype(dtype), gamma.astype(dtype), Prior(prior_mean.astype(dtype), prior_cov.astype(dtype))
    )
    ref = dict(H=H, gamma=gamma, y=y, m0=prior_mean, C0=prior_cov, mean=post_mean, cov=post_cov, lsq=lsq,
               lsq_cov=np.linalg.inv(precision))  # fmt: skip
    return problem, ref


def numpy_eki_step(members, outputs, y_perturbed, gamma, h):
    """u_j + C^{uw} (C^{ww} + Gamma / h)^{-1} (y_j - G(u_j)), empirical covariances (ddof = 1)."""
    du = members - members.mean(0)
    dg = outputs - outputs.mean(0)
    n = len(members)
    c_uw = du.T @ dg / (n - 1)
    c_ww = dg.T @ dg / (n - 1)
    gain = c_uw @ np.linalg.inv(c_ww + gamma / h)
    return members + (y_perturbed - outputs) @ gain.T


def _perturbations(key, size, q, h, chol):
    """The data perturbations EKI.tell draws: y_j = y + h^{-1/2} L xi_j (whitened xi from the key's first half)."""
    key_noise, _ = jax.random.split(key)
    xi = np.asarray(jax.random.normal(key_noise, (size, q), jnp.float64))
    return xi @ chol.T / np.sqrt(h)


@pytest.mark.parametrize("size, p", [(8, 20), (40, 5)], ids=["ensemble-space", "data-space"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_eki_step_matches_numpy(size, p, stochastic):
    problem, ref = linear_problem(d=6, p=p)
    method = EKI(size, FixedStep(0.7), stochastic=stochastic)
    state = method.init(problem, jax.random.key(1))
    members = np.asarray(state.members)
    outputs = members @ ref["H"].T
    key = jax.random.key(2)
    new = method.tell(problem, state, jnp.asarray(outputs), key)
    y = np.broadcast_to(ref["y"], outputs.shape)
    if stochastic:
        y = y + _perturbations(key, size, p, 0.7, np.linalg.cholesky(ref["gamma"]))
    expected = numpy_eki_step(members, outputs, y, ref["gamma"], 0.7)
    np.testing.assert_allclose(new.members, expected, rtol=1e-9, atol=1e-10)
    assert float(new.time) == pytest.approx(0.7) and int(new.iteration) == 1
    misfit = (ref["y"] - outputs.mean(0)) @ np.linalg.solve(ref["gamma"], ref["y"] - outputs.mean(0))
    assert float(new.misfit) == pytest.approx(misfit, rel=1e-10)


def test_teki_step_is_eki_on_the_prior_augmented_problem():
    problem, ref = linear_problem(d=5, p=7)
    method = EKI(12, FixedStep(0.5), stochastic=False, tikhonov=True)
    state = method.init(problem, jax.random.key(3))
    members = np.asarray(state.members)
    outputs = members @ ref["H"].T
    new = method.tell(problem, state, jnp.asarray(outputs), jax.random.key(4))
    aug_outputs = np.concatenate([outputs, members], axis=1)
    aug_y = np.broadcast_to(np.concatenate([ref["y"], ref["m0"]]), aug_outputs.shape)
    aug_gamma = np.block([[ref["gamma"], np.zeros((7, 5))], [np.zeros((5, 7)), ref["C0"]]])
    np.testing.assert_allclose(new.members, numpy_eki_step(members, aug_outputs, aug_y, aug_gamma, 0.5), rtol=1e-9)


@pytest.mark.parametrize("size, p", [(8, 20), (40, 5)], ids=["ensemble-space", "data-space"])
def test_etki_step_matches_the_ensemble_transform(size, p):
    problem, ref = linear_problem(d=6, p=p)
    h = 0.8
    method = ETKI(size, FixedStep(h))
    state = method.init(problem, jax.random.key(5))
    members = np.asarray(state.members)
    outputs = members @ ref["H"].T
    new = np.asarray(method.tell(problem, state, jnp.asarray(outputs), jax.random.key(6)).members)
    # mean: the EKI gain applied to the mean residual
    du = members - members.mean(0)
    dg = outputs - outputs.mean(0)
    c_uw, c_ww = du.T @ dg / (size - 1), dg.T @ dg / (size - 1)
    gain = c_uw @ np.linalg.inv(c_ww + ref["gamma"] / h)
    np.testing.assert_allclose(new.mean(0), members.mean(0) + gain @ (ref["y"] - outputs.mean(0)), rtol=1e-9)
    # anomalies: T A with the symmetric T = (I + h S S^T)^{-1/2}, S = L^{-1}-whitened output anomalies / sqrt(J-1)
    chol = np.linalg.cholesky(ref["gamma"])
    S = np.linalg.solve(chol, dg.T).T / np.sqrt(size - 1)
    lam, vec = np.linalg.eigh(np.eye(size) + h * S @ S.T)
    transform = vec @ np.diag(lam**-0.5) @ vec.T
    np.testing.assert_allclose(new - new.mean(0), transform @ du, rtol=1e-8, atol=1e-10)
    # for a linear G the analysis covariance is the Kalman one with the ensemble's prior covariance
    cov_a = np.cov(new.T)
    np.testing.assert_allclose(cov_a, np.cov(members.T) - gain @ c_uw.T, rtol=1e-8, atol=1e-10)


def test_finite_time_stochastic_eki_matches_the_posterior_mean_within_monte_carlo_error():
    problem, ref = linear_problem()
    method = EKI(400, FixedStep(0.25, end=1.0))
    keys = jax.random.split(jax.random.key(7), 8)
    results = jax.vmap(lambda k: invert(problem, method, k))(keys)
    assert np.all(np.asarray(results.code) == RESULTS.FINAL_TIME) and np.all(np.asarray(results.n_iterations) == 4)
    np.testing.assert_allclose(results.history.time[:, 4], 1.0, rtol=1e-12)
    means = np.asarray(results.state.members.mean(axis=1))  # (seeds, d)
    # the seed-average against the posterior mean, in units of its Monte-Carlo standard error
    z = (means.mean(0) - ref["mean"]) / (means.std(0, ddof=1) / np.sqrt(len(keys)))
    assert np.max(np.abs(z)) < 4.5, z
    # and each run's error is of the Monte-Carlo size sqrt(post var / J) (a few times, not more)
    err = np.abs(means - ref["mean"]) / np.sqrt(np.diag(ref["cov"]) / 400)
    assert np.max(err) < 6.0
    cov = np.mean([np.cov(m.T) for m in np.asarray(results.state.members)], axis=0)
    assert np.linalg.norm(cov - ref["cov"]) / np.linalg.norm(ref["cov"]) < 0.15


def test_finite_time_etki_is_close_to_the_posterior_for_a_large_ensemble():
    problem, ref = linear_problem()
    result = invert(problem, ETKI(2000, FixedStep(0.5, end=1.0)), jax.random.key(8))
    members = np.asarray(result.state.members)
    # deterministic: only the prior sample's error remains
    assert np.max(np.abs(members.mean(0) - ref["mean"]) / np.sqrt(np.diag(ref["cov"]))) < 0.15
    assert np.linalg.norm(np.cov(members.T) - ref["cov"]) / np.linalg.norm(ref["cov"]) < 0.1


@pytest.mark.parametrize(
    "method, slope",
    [
        (EKI(30, stochastic=False), -0.5),
        (ETKI(30), -1.0),
        (EKI(30, stochastic=False, tikhonov=True), -0.5),
        (ETKI(30, tikhonov=True), -1.0),
    ],
    ids=["EKI", "ETKI", "TEKI", "ETKI-tikhonov"],
)
def test_infinite_time_runs_converge_to_least_squares_or_the_map_at_their_rates(method, slope):
    """J > d, linear G: EKI's mean -> least squares (TEKI: -> the MAP = posterior mean).

    The deterministic EKI ensemble collapses like C_n ~ (2 n H^T Gamma^{-1} H)^{-1}, twice as fast as
    the Kalman covariance, so its mean error decays like n^{-1/2}; ETKI's anomalies follow the
    Kalman covariance, C_n ~ (n H^T Gamma^{-1} H)^{-1}, and its mean error decays like 1/n.
    """
    problem, ref = linear_problem()
    target = ref["mean"] if method.tikhonov else ref["lsq"]
    result = invert(problem, method, jax.random.key(9), 2000)
    errors = np.linalg.norm(np.asarray(result.history.mean) - target, axis=1) / np.linalg.norm(target)
    measured = np.log(errors[2000] / errors[250]) / np.log(2000 / 250)
    assert measured == pytest.approx(slope, abs=0.1)
    assert errors[2000] < (6e-3 if slope == -0.5 else 1e-4)
    assert np.all(np.diff(errors[50:]) < 0)
    if not method.tikhonov:
        misfit = np.asarray(result.history.misfit)
        residual = ref["y"] - ref["H"] @ ref["lsq"]
        floor = residual @ np.linalg.solve(ref["gamma"], residual)
        assert np.all(misfit[1:] >= floor * (1 - 1e-9)) and misfit[-1] == pytest.approx(floor, rel=1e-3)


def test_eki_float32_follows_float64():
    problem64, _ = linear_problem()
    problem32, _ = linear_problem(dtype=np.float32)
    method = EKI(50, FixedStep(0.5), stochastic=False)
    state64 = method.init(problem64, jax.random.key(11))
    state32 = method.init(problem32, None, members=state64.members.astype(jnp.float32))
    r64 = invert(problem64, method, jax.random.key(11), 10, init_state=state64)
    r32 = invert(problem32, method, jax.random.key(11), 10, init_state=state32)
    assert r32.state.members.dtype == jnp.float32 and r32.history.misfit.dtype == jnp.float32
    # the same initial ensemble: float32 rounding only (float32 eps ~ 1e-7, 10 steps, gains of size ~1)
    np.testing.assert_allclose(r32.state.members, r64.state.members, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r32.history.misfit, r64.history.misfit, rtol=1e-4)


def test_etki_cost_is_linear_in_the_data_size_no_p_by_p_matrix():
    """A 10^5-dimensional diagonal-noise problem runs (a p x p matrix would need 80 GB)."""
    from kalmax.covariance import DiagonalCovariance

    p, d = 100_000, 3
    grid = jnp.linspace(0.0, 1.0, p)

    def forward(u):
        return u[0] + u[1] * grid + u[2] * grid**2

    truth = jnp.array([0.5, -1.0, 2.0])
    y = forward(truth) + 0.01 * jax.random.normal(jax.random.key(0), (p,))
    problem = InverseProblem(forward, y, DiagonalCovariance(jnp.full(p, 1e-4)), Prior(jnp.zeros(d), jnp.eye(d)))
    result = invert(problem, ETKI(10), jax.random.key(1), 5)
    np.testing.assert_allclose(result.state.members.mean(0), truth, atol=1e-3)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: EKI(1), ValueError, "`ensemble_size` must be at least 2"),
        (lambda: EKI(2.5), TypeError, "`ensemble_size` must be an int"),
        (lambda: ETKI(10, scheduler=0.5), TypeError, "`scheduler` must be a kalmax scheduler"),
        (lambda: EKI(10, FixedStep(0.0)), ValueError, "`step` must be positive"),
        (lambda: EKI(10, FixedStep(-1.0)), ValueError, "`step` must be positive"),
        (lambda: FixedStep(1.0, end=0.0), ValueError, "`final_time` must be a positive number"),
    ],
)
def test_bad_method_input(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_tell_bad_input():
    problem, _ = linear_problem(d=3, p=4)
    method = EKI(5)
    state = method.init(problem, jax.random.key(0))
    good = problem.evaluate(state.members)
    with pytest.raises(ValueError, match=re.escape("`outputs` (the forward runs) must have shape (5, 4)")):
        method.tell(problem, state, good[:, :3], jax.random.key(1))
    with pytest.raises(ValueError, match="needs a `key`"):
        method.tell(problem, state, good, None)
    with pytest.raises(ValueError, match=re.escape("`failures` must have shape (5,)")):
        method.tell(problem, state, good, jax.random.key(1), failures=np.zeros(4, int))
    with pytest.raises(ValueError, match=re.escape("`state.members` must have shape (6, 3)")):
        EKI(6).tell(problem, state, good, jax.random.key(1))
    with pytest.raises(ValueError, match=re.escape("`members` must have shape (5, 3)")):
        method.init(problem, None, members=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="a `key` is required"):
        method.init(problem, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "method",
    [EKI(8, FixedStep(0.5)), ETKI(8, FixedStep(0.5), tikhonov=True), ESMDA(8, 2), EnRML(8, n_iter=2)],
    ids=["EKI", "ETKI-tikhonov", "ESMDA", "EnRML"],
)
def test_jit_vmap_grad_in_both_precisions(method, dtype):
    problem, ref = linear_problem(d=3, p=5, dtype=dtype)
    key = jax.random.key(14)

    def final(y):
        prob = InverseProblem(problem.forward, y, problem.obs_cov, problem.prior)
        return invert(prob, method, key, method.fixed_iterations() or 3).state.members

    y = jnp.asarray(ref["y"], dtype)
    eager = final(y)
    assert eager.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-11
    batched = jax.jit(jax.vmap(final))(jnp.stack([y, y + 0.1]))
    np.testing.assert_allclose(batched[0], eager, rtol=tol, atol=tol)
    np.testing.assert_allclose(batched[1], final(y + 0.1), rtol=tol, atol=tol)

    def loss(y):
        return jnp.sum(final(y).mean(0) ** 2)

    grad = jax.grad(loss)(y)
    assert grad.dtype == dtype
    eps = 1e-2 if dtype == np.float32 else 1e-6
    direction = jnp.asarray(np.random.default_rng(0).normal(size=5), dtype)
    fd = (loss(y + eps * direction) - loss(y - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(grad @ direction, fd, rtol=3e-2 if dtype == np.float32 else 1e-6)
