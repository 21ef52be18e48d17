"""Ready-made test problems: the exact linear Gaussian posterior against NumPy conditioning,
EKI on Darcy flow (error reduction, discrepancy-principle stop), Lorenz-96 calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.inversion.eki import EKI
from kalmax.inversion.invert import DiscrepancyPrinciple, invert
from kalmax.problems.darcy import darcy_problem
from kalmax.problems.linear import gaussian_posterior, linear_gaussian
from kalmax.problems.lorenz96 import lorenz96_problem


def _spd(rng, n, scale):
    a = rng.standard_normal((n, n))
    return scale * (a @ a.T / n + 0.5 * np.eye(n))


def _numpy_joint_conditioning(H, y, gamma, m0, c0):
    """Condition the joint Gaussian of (u, y) on y: the Schur complement of the dense joint covariance."""
    d = m0.shape[0]
    joint_mean = np.concatenate([m0, H @ m0])
    joint_cov = np.block([[c0, c0 @ H.T], [H @ c0, H @ c0 @ H.T + gamma]])
    cov_uu, cov_uy, cov_yy = joint_cov[:d, :d], joint_cov[:d, d:], joint_cov[d:, d:]
    mean = joint_mean[:d] + cov_uy @ np.linalg.solve(cov_yy, y - joint_mean[d:])
    cov = cov_uu - cov_uy @ np.linalg.solve(cov_yy, cov_uy.T)
    return mean, cov


def _numpy_information_form(H, y, gamma, m0, c0):
    precision = np.linalg.inv(c0) + H.T @ np.linalg.solve(gamma, H)
    cov = np.linalg.inv(precision)
    return cov @ (np.linalg.solve(c0, m0) + H.T @ np.linalg.solve(gamma, y)), cov


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-10), (jnp.float32, 2e-3)])
def test_gaussian_posterior_matches_numpy_conditioning(dtype, rtol):
    rng = np.random.default_rng(0)
    d, p = 4, 7
    H, y = rng.standard_normal((p, d)), rng.standard_normal(p)
    gamma, c0, m0 = _spd(rng, p, 0.3), _spd(rng, d, 2.0), rng.standard_normal(d)
    posterior = jax.jit(gaussian_posterior)(*(jnp.asarray(a, dtype) for a in (H, y, gamma, m0, c0)))
    assert posterior.mean.dtype == dtype and posterior.cov.shape == (d, d)
    for mean, cov in (_numpy_joint_conditioning(H, y, gamma, m0, c0), _numpy_information_form(H, y, gamma, m0, c0)):
        np.testing.assert_allclose(posterior.mean, mean, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(posterior.cov, cov, rtol=rtol, atol=rtol * np.abs(cov).max())
    with pytest.raises(ValueError, match=r"`y` must have shape \(7,\)"):
        gaussian_posterior(H, y[:5], gamma, m0, c0)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_linear_gaussian_problem_and_references(dtype):
    lin = linear_gaussian(jax.random.key(0), parameter_dim=5, data_dim=12, noise_std=0.2, prior_std=1.5, dtype=dtype)
    problem = lin.problem
    assert (problem.parameter_dim, problem.data_dim, problem.dtype) == (5, 12, dtype)
    assert lin.matrix.shape == (12, 5) and lin.truth.shape == (5,) and lin.posterior.cov.shape == (5, 5)
    H, y = np.asarray(lin.matrix, np.float64), np.asarray(problem.y, np.float64)
    gamma = np.asarray(problem.obs_cov.matrix(), np.float64)
    np.testing.assert_allclose(gamma, 0.04 * np.eye(12), rtol=1e-6)
    members = jnp.stack([lin.truth, lin.truth + 1])
    np.testing.assert_allclose(problem.evaluate(members), members @ lin.matrix.T, rtol=1e-6)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-4
    mean, cov = _numpy_information_form(H, y, gamma, np.zeros(5), 2.25 * np.eye(5))
    np.testing.assert_allclose(lin.posterior.mean, mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(lin.posterior.cov, cov, rtol=rtol, atol=rtol * np.abs(cov).max())
    np.testing.assert_allclose(lin.least_squares, np.linalg.lstsq(H, y, rcond=None)[0], rtol=rtol, atol=rtol)
    # the data are H truth + noise at the noise level
    chi2 = np.sum((y - H @ np.asarray(lin.truth, np.float64)) ** 2) / 0.04
    assert 2 < chi2 < 30


@pytest.fixture(scope="module")
def darcy():
    return darcy_problem(jax.random.key(0), grid_size=16, n_modes=8)


def test_darcy_problem_shapes_and_scores(darcy):
    problem = darcy.problem
    assert (problem.parameter_dim, problem.data_dim) == (8, 49)
    assert darcy.truth.shape == (8,) and darcy.log_permeability.shape == (16, 16)
    np.testing.assert_allclose(darcy.log_permeability, darcy.model.log_permeability(darcy.truth), rtol=1e-14)
    np.testing.assert_allclose(darcy.field(jnp.stack([darcy.truth, 0 * darcy.truth])), jnp.stack(
        [darcy.log_permeability, jnp.zeros((16, 16))]), atol=1e-14)
    np.testing.assert_allclose(darcy.relative_error(darcy.log_permeability), 0.0, atol=1e-14)
    np.testing.assert_allclose(darcy.relative_error(jnp.zeros((2, 16, 16))), [1.0, 1.0], rtol=1e-14)
    # prior N(0, I), Gamma = 0.1^2 I, and the noise at its level
    np.testing.assert_array_equal(problem.prior.cov.matrix(), np.eye(8))
    np.testing.assert_allclose(problem.obs_cov.matrix(), 0.01 * np.eye(49), rtol=1e-14)
    noise = (np.asarray(problem.y) - np.asarray(darcy.model(darcy.truth))) / 0.1
    assert 20 < np.sum(noise**2) < 90
    with pytest.raises(ValueError, match=r"`log_permeability` must be \(\.\.\., 16, 16\)"):
        darcy.relative_error(darcy.truth)
    with pytest.raises(ValueError, match=r"`truth` must have shape \(8,\)"):
        darcy_problem(jax.random.key(1), grid_size=16, n_modes=8, truth=jnp.zeros(3))


def test_eki_on_darcy_reduces_the_error_and_stops_by_discrepancy(darcy):
    """EKI (J = 30, d = 8) from the prior: the log-permeability error 1.00 -> 0.10 -> 0.02, stopped by Morozov."""
    result = invert(darcy.problem, EKI(30), jax.random.key(1), stop=DiscrepancyPrinciple(), max_steps=20)
    assert int(result.code) == RESULTS.DISCREPANCY
    n = int(result.n_iterations)
    errors = np.asarray(darcy.relative_error(darcy.field(result.history.mean[: n + 1])))
    print(f"Darcy EKI: {n} iterations, relative errors {errors}, misfits {result.history.misfit[: n + 1]}")
    assert 1 <= n < 20
    assert errors[0] > 0.5 and errors[-1] < 0.1 and errors[-1] < 0.2 * errors[0]
    assert result.misfit <= (1.25 * np.sqrt(49)) ** 2


@pytest.fixture(scope="module")
def lorenz():
    return lorenz96_problem(jax.random.key(0))


def test_lorenz96_problem_statistics_and_noise(lorenz):
    problem = lorenz.problem
    assert (problem.parameter_dim, problem.data_dim) == (2, 8)
    assert lorenz.window_statistics.shape == (200, 8)
    np.testing.assert_allclose(problem.constrain(problem.prior.mean), [10.0, 10.0], rtol=1e-12)
    np.testing.assert_allclose(problem.obs_cov.matrix(), np.cov(np.asarray(lorenz.window_statistics).T), rtol=1e-10)
    # G at the truth is y up to the internal variability: a whitened misfit of order p
    outputs = problem.evaluate(problem.unconstrain(jnp.stack([lorenz.truth, lorenz.truth * 1.2])))
    misfit = np.sum(np.asarray(problem.whiten(problem.y - outputs)) ** 2, axis=1)
    assert misfit[0] < 40 and misfit[1] > 10 * misfit[0]
    # the sector with the larger forcing has the larger mean and second moment
    stats = np.asarray(outputs[0])
    assert stats[:2].max() < stats[2:4].min() and stats[4:6].max() < stats[6:].min()
    with pytest.raises(ValueError, match="`n_groups` must be a positive int dividing dim"):
        lorenz96_problem(jax.random.key(0), n_groups=3)


def test_eki_calibrates_lorenz96_forcings(lorenz):
    """10 deterministic EKI iterations of 20 members recover (F_1, F_2) = (8, 10) to a few percent."""
    result = invert(lorenz.problem, EKI(20, stochastic=False), jax.random.key(1), 10)
    estimate = result.state.ensemble.mean(axis=0)
    errors = np.asarray(lorenz.relative_error(estimate))
    print(f"Lorenz-96 EKI: estimate {estimate}, relative errors {errors}")
    assert np.all(errors < 0.05)
    assert result.misfit < 40
