"""Darcy flow: manufactured-solution convergence, KL modes, the direct solver, jit/vmap/grad, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.models.darcy import Darcy, apply_operator, garbuno_inigo_source, max_modes

N = 32
MODES = 16


def _theta(seed=0, dtype=jnp.float64, shape=(MODES,)):
    return jax.random.normal(jax.random.key(seed), shape, dtype=dtype)


_forward = jax.jit(lambda model, theta: model(theta))


def _centres(n):
    axis = (np.arange(n) + 0.5) / n
    return np.meshgrid(axis, axis, indexing="ij")


def test_second_order_convergence_for_constant_permeability():
    """theta = 0 gives u = 0, k = 1: -Lap p = 2 pi^2 sin(pi x) sin(pi y) has p = sin(pi x) sin(pi y)."""
    errors = []
    for n in (8, 16, 32):
        x1, x2 = _centres(n)
        exact = np.sin(np.pi * x1) * np.sin(np.pi * x2)
        darcy = Darcy(grid_size=n, n_modes=4, source=2 * np.pi**2 * exact)
        theta = jnp.zeros(4)
        np.testing.assert_array_equal(darcy.log_permeability(theta), 0.0)
        pressure = jax.jit(lambda m, t: m.pressure(t))(darcy, theta)
        errors.append(np.abs(np.asarray(pressure) - exact).max())
    orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    assert errors[-1] < 2e-3
    np.testing.assert_allclose(orders, 2.0, atol=0.15)


def test_modes_are_orthonormal_on_the_grid_and_ordered():
    """DCT-II orthogonality: exact on the cell centres for wavenumbers below n, so round-off only."""
    for n, n_modes in ((8, max_modes(8)), (N, MODES)):
        darcy = Darcy(grid_size=n, n_modes=n_modes)
        phi = np.asarray(darcy.modes()).reshape(n_modes, -1)
        gram = phi @ phi.T / n**2  # midpoint rule for the L^2(D) inner product
        np.testing.assert_allclose(gram, np.eye(n_modes), atol=1e-12)
        lam = np.asarray(darcy.eigenvalues())
        assert np.all(np.diff(lam) <= 0)
    darcy = Darcy(grid_size=N, n_modes=MODES)
    assert darcy.wavenumbers[:5] == ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2))
    np.testing.assert_allclose(darcy.eigenvalues()[1], (np.pi**2 + 9.0) ** -2.0, rtol=1e-14)


def test_log_permeability_matches_the_expansion():
    darcy = Darcy(grid_size=N, n_modes=MODES, alpha=1.5, tau=2.0)
    theta = np.asarray(_theta(1))
    x1, x2 = _centres(N)
    expected = np.zeros((N, N))
    for t, (a, b) in zip(theta, darcy.wavenumbers):
        lam = (np.pi**2 * (a * a + b * b) + 4.0) ** -1.5
        norm = (np.sqrt(2) if a else 1.0) * (np.sqrt(2) if b else 1.0)
        expected += np.sqrt(lam) * t * norm * np.cos(np.pi * a * x1) * np.cos(np.pi * b * x2)
    np.testing.assert_allclose(darcy.log_permeability(jnp.asarray(theta)), expected, rtol=1e-12, atol=1e-14)


def test_direct_solver_residual_and_dense_reference():
    """Block elimination against the assembled dense matrix; residual at round-off (cond(A) ~ 1e4 here)."""
    n = 16
    darcy = Darcy(grid_size=n, n_modes=MODES)
    theta = 2.0 * _theta(2)
    p = darcy.pressure(theta)
    t1, t2 = darcy._transmissibilities(darcy.log_permeability(theta))
    rhs = np.asarray(darcy.source) / n**2
    residual = np.asarray(apply_operator(t1, t2, p)) - rhs
    assert np.abs(residual).max() < 1e-11 * np.abs(rhs).max()
    columns = jax.vmap(lambda e: apply_operator(t1, t2, e.reshape(n, n)).ravel())(jnp.eye(n * n))
    dense = np.asarray(columns).T
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    assert np.linalg.eigvalsh(dense).min() > 0
    np.testing.assert_allclose(p.ravel(), np.linalg.solve(dense, rhs.ravel()), rtol=1e-10)


def test_harmonic_face_means():
    darcy = Darcy(grid_size=4, n_modes=4)
    log_k = jnp.log(jnp.arange(1.0, 17.0).reshape(4, 4))
    t1, t2 = darcy._transmissibilities(log_k)
    k = np.arange(1.0, 17.0).reshape(4, 4)
    assert t1.shape == (5, 4) and t2.shape == (4, 5)
    np.testing.assert_allclose(t1[1:-1], 2 * k[1:] * k[:-1] / (k[1:] + k[:-1]), rtol=1e-14)
    np.testing.assert_allclose(t2[:, 1:-1], 2 * k[:, 1:] * k[:, :-1] / (k[:, 1:] + k[:, :-1]), rtol=1e-14)
    np.testing.assert_allclose(t1[0], 2 * k[0], rtol=1e-14)  # boundary face: a half cell to p = 0
    np.testing.assert_allclose(t2[:, -1], 2 * k[:, -1], rtol=1e-14)


def test_observations_interpolate_the_pressure():
    centres = np.array([[0.5 / N, 0.5 / N], [10.5 / N, 20.5 / N], [(N - 0.5) / N, 3.5 / N]])
    darcy = Darcy(grid_size=N, n_modes=MODES, observation_points=centres)
    theta = _theta(3)
    p = jax.jit(lambda m, t: m.pressure(t))(darcy, theta)
    np.testing.assert_allclose(_forward(darcy, theta), [p[0, 0], p[10, 20], p[N - 1, 3]], rtol=1e-14)
    default = Darcy(grid_size=N, n_modes=MODES)
    data = _forward(default, theta)
    assert data.shape == (49,) and default.data_dim == 49 and default.parameter_dim == MODES
    # x = 1/8 lies on the face between centres 3 and 4 (of 32): the mean of the four neighbours
    np.testing.assert_allclose(data[0], p[3:5, 3:5].mean(), rtol=1e-14)
    # the Garbuno-Inigo et al. source and a non-trivial, positive pressure
    np.testing.assert_array_equal(np.unique(np.asarray(garbuno_inigo_source(N))), [1000.0, 2000.0, 3000.0])
    assert np.all(np.asarray(p) > 0)


def test_jit_and_vmap_equal_a_loop():
    darcy = Darcy(grid_size=N, n_modes=MODES)
    thetas = _theta(4, shape=(8, MODES))
    batched = jax.jit(jax.vmap(lambda m, t: m(t), in_axes=(None, 0)))(darcy, thetas)
    looped = np.stack([np.asarray(_forward(darcy, t)) for t in thetas])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    fields = jax.vmap(darcy.pressure)(thetas)
    assert fields.shape == (8, N, N)


def test_grad_matches_finite_differences():
    """Implicit derivative dp = A^{-1}(-dA p) against central differences, in theta and in tau."""
    darcy = Darcy(grid_size=16, n_modes=MODES)
    theta = _theta(5)
    weights = jnp.linspace(0.5, 1.5, darcy.data_dim)

    @jax.jit
    def loss(model, t):
        return jnp.sum(weights * model(t)) / 100.0

    grad_theta = jax.jit(jax.grad(loss, argnums=1))(darcy, theta)
    direction = _theta(6)
    eps = 1e-5
    fd = (loss(darcy, theta + eps * direction) - loss(darcy, theta - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(grad_theta @ direction, fd, rtol=1e-7)
    jac_fwd = jax.jit(jax.jacfwd(lambda t: darcy(t)))(theta)
    jac_rev = jax.jit(jax.jacrev(lambda t: darcy(t)))(theta)
    np.testing.assert_allclose(jac_fwd, jac_rev, rtol=1e-10, atol=1e-12)

    grad_model = jax.grad(loss)(darcy, theta)
    shifted = [Darcy(grid_size=16, n_modes=MODES, tau=3.0 + s) for s in (eps, -eps)]
    fd_tau = (loss(shifted[0], theta) - loss(shifted[1], theta)) / (2 * eps)
    np.testing.assert_allclose(grad_model.tau, fd_tau, rtol=1e-6)


def test_float32():
    darcy = Darcy(grid_size=N, n_modes=MODES)
    theta = _theta(7)
    single = _forward(darcy, theta.astype(jnp.float32))
    assert single.dtype == jnp.float32
    np.testing.assert_allclose(single, _forward(darcy, theta), rtol=1e-4)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(darcy(t))))(theta.astype(jnp.float32))
    assert grad.dtype == jnp.float32 and np.all(np.isfinite(grad))


def test_bad_input():
    with pytest.raises(ValueError, match="grid_size"):
        Darcy(grid_size=3)
    with pytest.raises(TypeError, match="grid_size"):
        Darcy(grid_size=32.0)
    with pytest.raises(ValueError, match="n_modes"):
        Darcy(grid_size=8, n_modes=0)
    with pytest.raises(ValueError, match="n_modes"):
        Darcy(grid_size=8, n_modes=max_modes(8) + 1)
    with pytest.raises(ValueError, match="alpha"):
        Darcy(alpha=-1.0)
    with pytest.raises(ValueError, match="tau"):
        Darcy(tau=0.0)
    with pytest.raises(ValueError, match="source"):
        Darcy(grid_size=8, n_modes=4, source=np.ones((4, 4)))
    with pytest.raises(ValueError, match="observation_points"):
        Darcy(observation_points=[[0.5, 1.0]])
    with pytest.raises(ValueError, match="observation_points"):
        Darcy(observation_points=[0.5, 0.5])
    darcy = Darcy(grid_size=8, n_modes=4)
    with pytest.raises(ValueError, match="theta"):
        darcy(jnp.zeros(5))
    with pytest.raises(ValueError, match="theta"):
        jax.vmap(darcy.pressure)(jnp.zeros((3, 2, 4)))
    with pytest.raises(TypeError, match="theta"):
        darcy(jnp.zeros(4, dtype=jnp.int32))
