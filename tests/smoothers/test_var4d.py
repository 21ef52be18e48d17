"""Strong-constraint 4D-Var: the closed form on linear models, a plain NumPy float64
transcription of DAPPER's Var4D loop on Lorenz-63 (tangent-linear models by central
differences), the three solvers agreeing, jit / vmap / grad, bad input (better than 3DVAR:
docs/methods/smoothers.md, run by tests/test_docs.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.results import RESULTS

from .test_ensemble import lorenz63_model, lorenz63_step
from .transformations import check_jit_vmap_grad


def linear_model(dim=3):
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))[0]
    return kx.LinearGaussianSSM(
        dynamics=jnp.asarray(0.98 * rotation), observation=jnp.eye(2, dim), dynamics_cov=jnp.zeros((dim, dim)),
        obs_cov=jnp.array([[0.5, 0.1], [0.1, 0.4]]), init_mean=jnp.ones(dim), init_cov=jnp.eye(dim))


@pytest.mark.parametrize("solver", ["gauss-newton", "incremental", "lbfgs"])
def test_the_first_window_is_the_exact_posterior_of_v0_on_a_linear_model(solver):
    model = linear_model()
    _, ys = kx.simulate(model, jax.random.key(0), 1)
    method = kx.FourDVar(model.init_cov, lag=1, n_iter=30, solver=solver)
    smoothed = kx.smooth(model, method, ys)
    exact = kx.rts_smoother(model, ys)
    tolerance = 1e-6 if solver == "lbfgs" else 1e-12
    np.testing.assert_allclose(smoothed.init_mean, exact.init_mean, rtol=0, atol=tolerance)
    np.testing.assert_allclose(smoothed.filtered.mean, exact.mean, rtol=0, atol=tolerance)
    # the innovation log-likelihood of the linearisation is the exact one
    assert float(smoothed.log_likelihood) == pytest.approx(float(exact.log_likelihood), rel=1e-10)


def test_each_window_has_the_closed_form_solution_on_a_linear_model():
    model = linear_model()
    _, ys = kx.simulate(model, jax.random.key(1), 12)
    B = 0.5 * np.eye(3)
    lag = 3
    M, H = np.asarray(model.dynamics), np.eye(2, 3)
    R = np.asarray(model.obs_cov)
    start, analyses, smoothed = np.ones(3), [], []
    for n, y in enumerate(np.asarray(ys)):  # DAPPER's cycling with one Gauss-Newton step (exact here)
        steps = min(n + 1, lag)
        window = np.linalg.matrix_power(M, steps)
        G = H @ window
        gain = B @ G.T @ np.linalg.inv(G @ B @ G.T + R)
        new_start = start + gain @ (y - G @ start)
        analyses.append(window @ new_start)
        smoothed.append(new_start)
        start = M @ new_start if n + 1 >= lag else new_start
    for solver in ("gauss-newton", "incremental"):
        _, history = kx.assimilate(model, kx.FourDVar(jnp.asarray(B), lag=lag, n_iter=2, solver=solver), ys)
        np.testing.assert_allclose(history.mean, np.stack(analyses), rtol=0, atol=1e-12)
        np.testing.assert_allclose(history.info.lagged_mean, np.stack(smoothed), rtol=0, atol=1e-12)


def numpy_var4d(ys, B, R, x0, lag, n_iter, wtol, step=1e-6):
    """DAPPER's Var4D loop (Gauss-Newton, B^{1/2} symmetric) on Lorenz-63 observed everywhere,
    with the tangent-linear model of each cycle by central differences."""
    values, vectors = np.linalg.eigh(B)
    B12 = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    values, vectors = np.linalg.eigh(R)
    Rm12 = vectors @ np.diag(values**-0.5) @ vectors.T

    def tangent(x):
        return np.stack([(lorenz63_step(x + step * e) - lorenz63_step(x - step * e)) / (2 * step) for e in np.eye(3)],
                        axis=1)

    x, analyses, smoothed = x0.copy(), [], []
    for n, y in enumerate(ys):
        steps = min(n + 1, lag)
        w, start = np.zeros(3), x.copy()
        for _ in range(n_iter):
            x, X = start + B12 @ w, B12
            for _ in range(steps):
                X = tangent(x) @ X
                x = lorenz63_step(x)
            Y, dy = Rm12 @ X, Rm12 @ (y - x)
            dw = np.linalg.solve(Y.T @ Y + np.eye(3), Y.T @ dy - w)
            w = w + dw
            if dw @ dw < wtol * 3:
                break
        analyses.append(x + X @ dw)
        x = start + B12 @ w
        smoothed.append(x)
        if n + 1 >= lag:
            x = lorenz63_step(x)
    return np.stack(analyses), np.stack(smoothed)


@pytest.mark.parametrize("lag, n_iter, wtol", [(1, 3, 0.0), (3, 10, 1e-8)])
def test_gauss_newton_equals_the_numpy_transcription_of_dappers_var4d(lag, n_iter, wtol):
    model = lorenz63_model()
    _, ys = kx.simulate(model, jax.random.key(3), 25)
    B = np.diag([4.0, 5.0, 6.0]) + 0.5
    method = kx.FourDVar(jnp.asarray(B), lag=lag, n_iter=n_iter, wtol=wtol)
    _, history = kx.assimilate(model, method, ys)
    analyses, smoothed = numpy_var4d(np.asarray(ys), B, 2.0 * np.eye(3), np.asarray(model.init_mean), lag, n_iter, wtol)
    np.testing.assert_allclose(history.mean, analyses, rtol=0, atol=1e-5)  # central differences
    np.testing.assert_allclose(history.info.lagged_mean, smoothed, rtol=0, atol=1e-5)
    if wtol > 0:
        assert np.all(np.asarray(history.info.n_iterations) < n_iter) and bool(np.all(history.info.converged))


def test_the_solvers_agree_on_lorenz63():
    model = lorenz63_model()
    B = jnp.diag(jnp.asarray([6.0, 8.0, 7.0]))  # about 0.1 of Lorenz-63's climatological variances
    _, ys = kx.simulate(model, jax.random.key(1), 8)
    means = {}
    for solver, n_iter in (("gauss-newton", 20), ("incremental", 20), ("lbfgs", 60)):
        _, history = kx.assimilate(model, kx.FourDVar(B, lag=1, n_iter=n_iter, solver=solver), ys)
        means[solver] = np.asarray(history.info.lagged_mean)
    # one minimum, found by all three (L-BFGS is a few 1e-6 away in the slowest windows)
    np.testing.assert_allclose(means["incremental"], means["gauss-newton"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(means["lbfgs"], means["gauss-newton"], rtol=0, atol=2e-5)
    # the incremental solver is differentiable (CG by implicit differentiation; Gauss-Newton's
    # gradient is checked in test_jit_vmap_and_grad)
    def loss(y):
        return jnp.sum(kx.FourDVar(B, lag=2, n_iter=2, solver="incremental").run(model, y).mean)

    gradient = eqx.filter_jit(jax.grad(loss))(ys[:3])
    direction = jax.random.normal(jax.random.key(4), ys[:3].shape, ys.dtype)
    value = eqx.filter_jit(loss)
    numeric = (value(ys[:3] + 1e-6 * direction) - value(ys[:3] - 1e-6 * direction)) / 2e-6
    assert float(jnp.sum(gradient * direction)) == pytest.approx(float(numeric), rel=1e-5)
    # better than 3DVAR with the same background: docs/methods/smoothers.md (run by tests/test_docs.py)


def test_jit_vmap_and_grad():
    _, ys = kx.simulate(lorenz63_model(), jax.random.key(2), 6)

    def run(model, observations, key):
        background = jnp.asarray(np.diag([4.0, 5.0, 6.0]), model.dtype)
        return kx.FourDVar(background, lag=2, n_iter=2).run(model, observations).mean

    check_jit_vmap_grad(run, lorenz63_model, ys, batch_over_keys=False, fd_rtol=1e-5)


def test_bad_input_and_non_convergence_are_named():
    model = lorenz63_model()
    _, ys = kx.simulate(model, jax.random.key(0), 5)
    B = jnp.eye(3)
    with pytest.raises(ValueError, match="`lag`"):
        kx.FourDVar(B, lag=0)
    with pytest.raises(ValueError, match="`n_iter`"):
        kx.FourDVar(B, n_iter=0)
    with pytest.raises(ValueError, match="`solver`"):
        kx.FourDVar(B, solver="newton")
    with pytest.raises(ValueError, match="`background_cov`"):
        kx.assimilate(model, kx.FourDVar(jnp.eye(4)), ys)
    noisy = eqx.tree_at(lambda m: m.dynamics_cov, model, kx.ScalarCovariance(0.1, 3))
    with pytest.raises(ValueError, match="dynamics_cov"):
        kx.assimilate(noisy, kx.FourDVar(B), ys)

    def numpy_step(x):  # a model JAX cannot differentiate
        return jax.pure_callback(lambda v: np.asarray(v) * 0.9, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    opaque = kx.StateSpaceModel(numpy_step, jnp.eye(3), None, jnp.eye(3), jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match="cannot be differentiated"):
        kx.assimilate(opaque, kx.FourDVar(B), ys)
    # one iteration cannot reach a tiny tolerance: reported per window, raised when strict
    loose = kx.FourDVar(10.0 * B, lag=2, n_iter=1, wtol=1e-12)
    _, history = kx.assimilate(model, loose, ys)
    assert not bool(np.any(history.info.converged)) and np.all(np.asarray(history.info.n_iterations) == 1)
    with pytest.raises(kx.DivergenceError, match="did not converge"):
        kx.assimilate(model, kx.FourDVar(10.0 * B, lag=2, n_iter=1, wtol=1e-12, strict=True), ys)
    assert RESULTS.NOT_CONVERGED.message.startswith("the iterations did not converge")
