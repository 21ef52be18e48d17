"""EnRML against a NumPy float64 transcription of the ensemble-subspace Gauss-Newton
iteration (Evensen, Raanes, Stordal & Hove 2019, Algorithm 1 with perturbed data), the
ensemble smoother on a linear problem, the exact posterior for a large ensemble, and its
handling of failed forward runs (jit / vmap / grad: with EKI's, in test_eki.py)."""

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.results import RESULTS

from .test_eki import linear_problem


def numpy_enrml(prior, perturbed_data, forward, gamma, n_iter, beta):
    """Each member minimises |u - u_j0|^2_C0 + |G(u) - d_j|^2_Gamma by Gauss-Newton with the
    average sensitivity regressed in the prior subspace: E = E0 + A0 W, S = Y Omega^{-1}."""
    J = prior.shape[0]
    E0 = prior.T  # (d, J) columns are members
    A0 = (E0 - E0.mean(1, keepdims=True)) / np.sqrt(J - 1)
    W = np.zeros((J, J))
    Pi = np.eye(J) - np.ones((J, J)) / J
    gamma_inv_root = np.linalg.inv(np.linalg.cholesky(gamma))
    for _ in range(n_iter):
        E = E0 + A0 @ W
        G = np.stack([forward(E[:, j]) for j in range(J)], axis=1)  # (p, J)
        Y = gamma_inv_root @ (G - G.mean(1, keepdims=True)) / np.sqrt(J - 1)
        Omega = np.eye(J) + W @ Pi / np.sqrt(J - 1)
        S = Y @ np.linalg.inv(Omega)
        H = np.eye(J) + S.T @ S
        grad = W + S.T @ gamma_inv_root @ (G - perturbed_data.T)
        W = W - beta * np.linalg.solve(H, grad)
    return (E0 + A0 @ W).T


def nonlinear_problem():
    def forward(u):
        return jnp.stack([u[0] ** 2 + u[1], jnp.sin(u[1]) + 0.5 * u[2], u[0] * u[2], u[2] ** 3 / 3, u[0] - u[1]])

    gamma = 0.05 * np.eye(5) + 0.01
    y = np.asarray(forward(jnp.asarray([0.7, -0.3, 0.9]))) + 0.05
    problem = kx.InverseProblem(forward, y, gamma, kx.Prior(np.zeros(3), 0.5 * np.eye(3)))
    return problem, forward, gamma, y


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_iterations_equal_the_numpy_transcription_on_a_nonlinear_problem(beta):
    problem, forward, gamma, y = nonlinear_problem()
    method = kx.EnRML(12, n_iter=4, step_size=beta)
    result = kx.invert(problem, method, jax.random.key(3))
    state = result.state
    assert int(result.code) == RESULTS.SUCCESSFUL and int(state.iteration) == 4
    assert float(state.time) == pytest.approx(4 * beta)
    # the whitened perturbations the run drew, back in data space
    chol = np.linalg.cholesky(gamma)
    data = y + np.asarray(state.perturbations) @ chol.T
    expected = numpy_enrml(np.asarray(state.prior_members), data, lambda u: np.asarray(forward(jnp.asarray(u))),
                           gamma, 4, beta)
    np.testing.assert_allclose(state.members, expected, rtol=1e-10, atol=1e-10)
    # the misfit fell from the prior's
    assert float(result.history.misfit[-1]) < 0.2 * float(result.history.misfit[0])


def test_on_a_linear_problem_one_step_is_the_ensemble_smoother_and_its_fixed_point():
    problem, ref = linear_problem(d=4, p=6)
    method = kx.EnRML(30, n_iter=1)
    state = method.init(problem, jax.random.key(0))
    members = np.asarray(state.members)
    state = method.tell(problem, state, jnp.asarray(members @ ref["H"].T), jax.random.key(1))
    data = ref["y"] + np.asarray(state.perturbations) @ np.linalg.cholesky(ref["gamma"]).T
    du = members - members.mean(0)
    cov = du.T @ du / 29
    gain = cov @ ref["H"].T @ np.linalg.inv(ref["H"] @ cov @ ref["H"].T + ref["gamma"])
    smoother = members + (data - members @ ref["H"].T) @ gain.T
    np.testing.assert_allclose(state.members, smoother, rtol=1e-10, atol=1e-10)
    again = method.tell(problem, state, jnp.asarray(np.asarray(state.members) @ ref["H"].T), jax.random.key(2))
    np.testing.assert_allclose(again.members, state.members, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(again.perturbations, state.perturbations)  # drawn once


def test_a_large_ensemble_samples_the_linear_gaussian_posterior():
    problem, ref = linear_problem()
    results = jax.vmap(lambda k: kx.invert(problem, kx.EnRML(400, n_iter=2), k))(jax.random.split(jax.random.key(5), 6))
    means = np.asarray(results.state.members.mean(axis=1))
    assert np.max(np.abs(means - ref["mean"]) / np.sqrt(np.diag(ref["cov"]) / 400)) < 6.0
    cov = np.mean([np.cov(m.T) for m in np.asarray(results.state.members)], axis=0)
    assert np.linalg.norm(cov - ref["cov"]) / np.linalg.norm(ref["cov"]) < 0.15


def test_a_failed_member_is_not_moved_and_the_others_use_the_successful_sensitivity():
    problem, forward, gamma, y = nonlinear_problem()
    method = kx.EnRML(10, n_iter=3)
    state = method.init(problem, jax.random.key(4))
    state = method.tell(problem, state, jax.vmap(forward)(state.members), jax.random.key(5))
    outputs = jax.vmap(forward)(state.members).at[3].set(jnp.nan)
    after = method.tell(problem, state, outputs, jax.random.key(6))
    np.testing.assert_allclose(after.members[3], state.members[3])
    assert int(after.failures[3]) != 0 and np.all(np.isfinite(np.asarray(after.members)))
    moved = np.abs(np.asarray(after.members - state.members)).sum(axis=1)
    assert np.all(np.delete(moved, 3) > 0)
    # with all runs successful the masked regression is the plain one
    complete = jax.vmap(forward)(state.members)
    plain = method.tell(problem, state, complete, jax.random.key(6))
    masked = jax.lax.cond(True, lambda: method.tell(problem, state, complete, jax.random.key(6)), lambda: plain)
    np.testing.assert_allclose(masked.members, plain.members, rtol=1e-12)
    # fewer than two successes: nothing moves, the iteration is not counted
    none = method.tell(problem, state, jnp.full_like(complete, jnp.nan), jax.random.key(6))
    np.testing.assert_allclose(none.members, state.members)
    assert int(none.iteration) == int(state.iteration)


def test_external_runs_give_the_same_answer():
    problem, forward, _, _ = nonlinear_problem()
    method = kx.EnRML(8, n_iter=3)
    inside = kx.invert(problem, method, jax.random.key(9))
    with ThreadPoolExecutor(2) as pool:
        outside = kx.invert_external(problem, method, jax.random.key(9),
                                     lambda theta: np.asarray(forward(jnp.asarray(theta))), 3, executor=pool)
    np.testing.assert_allclose(outside.state.members, inside.state.members, rtol=1e-9, atol=1e-9)
