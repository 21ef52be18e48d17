"""The Kalman filter's closed-form log-likelihood gradient (Fisher's identity via the RTS smoother)
equals reverse-mode through the filter: every model array and the observations, with offsets,
missing entries, the steady-state and square-root filters, under jit and vmap, float32 and float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.learning import negative_log_likelihood

FIELDS = ("dynamics", "observation", "dynamics_cov", "obs_cov", "init_mean", "init_cov", "dynamics_offset",
          "obs_offset")


def _problem(dtype=jnp.float64, offsets=True, T=40):
    rng = np.random.default_rng(0)
    dx, dy = 3, 2
    A, B = rng.normal(size=(dx, dx)), rng.normal(size=(dx, dx))
    model = kx.LinearGaussianSSM(
        0.9 * A / np.max(np.abs(np.linalg.eigvals(A))), rng.normal(size=(dy, dx)), 0.3 * np.eye(dx) + 0.05 * B @ B.T,
        np.array([[0.5, 0.2], [0.2, 0.4]]), np.ones(dx), np.eye(dx) + 0.1 * B @ B.T,
        dynamics_offset=0.1 * np.ones(dx) if offsets else None, obs_offset=np.array([0.3, -0.2]) if offsets else None)
    _, ys = kx.simulate(model, jax.random.key(0), T)
    model = jax.tree_util.tree_map(lambda x: x.astype(dtype), model)
    return model, np.array(ys, dtype)


def _grads(model, method, ys, gradient):
    loss = lambda m, y: negative_log_likelihood((m, method), y, gradient=gradient)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(model, ys)


@pytest.mark.parametrize("method,missing", [(kx.KalmanFilter(steady_state=False), True), (kx.KalmanFilter(), False),
                                            (kx.KalmanFilter(square_root=True), True)],
                         ids=["covariance-missing", "steady", "sqrt-missing"])
def test_fisher_gradient_equals_reverse_mode(method, missing):
    model, ys = _problem()
    if missing:
        ys[3, 0] = np.nan
        ys[5] = np.nan
    value_f, (model_f, ys_f) = _grads(model, method, ys, "fisher")
    value_a, (model_a, ys_a) = _grads(model, method, ys, "autodiff")
    np.testing.assert_allclose(value_f, value_a, rtol=1e-12)
    for name in FIELDS:
        auto, closed = np.asarray(getattr(model_a, name)), np.asarray(getattr(model_f, name))
        np.testing.assert_allclose(closed, auto, rtol=1e-8, atol=1e-9 * np.abs(auto).max(), err_msg=name)
    np.testing.assert_allclose(ys_f, ys_a, rtol=1e-8, atol=1e-10)
    if missing:
        assert np.all(np.asarray(ys_f)[5] == 0) and np.asarray(ys_f)[3, 0] == 0


def test_fisher_is_the_default_and_works_without_offsets_in_float32_and_under_vmap():
    model, ys = _problem(jnp.float32, offsets=False, T=20)
    method = kx.KalmanFilter(steady_state=False)
    value, (grad, _) = _grads(model, method, ys, "auto")
    assert grad.dynamics.dtype == jnp.float32 and grad.dynamics_offset is None
    model64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), model)
    _, (grad64, _) = _grads(model64, method, ys.astype(np.float64), "autodiff")
    for name in FIELDS[:6]:
        np.testing.assert_allclose(getattr(grad, name), getattr(grad64, name), rtol=2e-3, atol=2e-3)
    batch = np.stack([ys, ys[::-1]])
    per_sequence = jax.vmap(jax.grad(lambda m, y: negative_log_likelihood((m, method), y)), in_axes=(None, 0))(model, batch)
    assert per_sequence.dynamics.shape == (2, 3, 3)
    np.testing.assert_allclose(per_sequence.dynamics[0], grad.dynamics, rtol=1e-4, atol=1e-4)


def test_gradient_choice_is_checked():
    model, ys = _problem(T=8)
    with pytest.raises(ValueError, match="gradient"):
        negative_log_likelihood((model, kx.KalmanFilter()), ys, gradient="adjoint")
    nonlinear = kx.StateSpaceModel(lambda v: 0.9 * v, jnp.eye(2, 3), jnp.eye(3), jnp.eye(2), jnp.zeros(3), jnp.eye(3))
    with pytest.raises(ValueError, match="fisher.*KalmanFilter"):
        negative_log_likelihood((nonlinear, kx.EnKF(5, kx.SquareRoot())), ys, jax.random.key(0), gradient="fisher")
    # forward mode needs the reverse-mode-free path
    hessian = jax.hessian(lambda q: negative_log_likelihood(
        (eqx.tree_at(lambda m: m.obs_offset, model, q), kx.KalmanFilter()), ys, gradient="autodiff"))(model.obs_offset)
    assert hessian.shape == (2, 2) and np.all(np.isfinite(hessian))
