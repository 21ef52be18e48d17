"""Lorenz-63 and Lorenz-96 against plain NumPy, invariants, climatology, jit/vmap/grad, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.models import RK4, Flow, Lorenz63, Lorenz96, trajectory


def numpy_lorenz63(x, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    return np.array([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])


def numpy_lorenz96(x, forcing):
    d = len(x)
    forcing = np.broadcast_to(forcing, (d,))
    return np.array([(x[(i + 1) % d] - x[i - 2]) * x[i - 1] - x[i] + forcing[i] for i in range(d)])


def test_lorenz63_vector_field_matches_numpy():
    rng = np.random.default_rng(0)
    model = Lorenz63(sigma=9.0, rho=27.0, beta=2.5)
    for x in 10 * rng.standard_normal((5, 3)):
        np.testing.assert_allclose(
            model.vector_field(jnp.asarray(x)), numpy_lorenz63(x, 9.0, 27.0, 2.5), rtol=1e-13, atol=1e-12
        )


@pytest.mark.parametrize("dim", [4, 5, 40])
def test_lorenz96_vector_field_matches_numpy(dim):
    rng = np.random.default_rng(dim)
    x = 3 * rng.standard_normal(dim)
    np.testing.assert_allclose(
        Lorenz96(dim, 8.0).vector_field(jnp.asarray(x)), numpy_lorenz96(x, 8.0), rtol=1e-13, atol=1e-12
    )
    forcing = rng.standard_normal(dim)
    np.testing.assert_allclose(
        Lorenz96(dim, forcing).vector_field(jnp.asarray(x)), numpy_lorenz96(x, forcing), rtol=1e-13, atol=1e-12
    )


def test_lorenz96_energy_budget():
    """d/dt 1/2|x|^2 = x . f(x) = -|x|^2 + F sum(x): the advection term conserves energy."""
    rng = np.random.default_rng(1)
    model = Lorenz96(40, 8.0)
    for x in 5 * rng.standard_normal((10, 40)):
        rate = float(jnp.dot(jnp.asarray(x), model.vector_field(jnp.asarray(x))))
        expected = -np.sum(x**2) + 8.0 * np.sum(x)
        assert abs(rate - expected) <= 1e-10 * np.sum(x**2)


def test_lorenz96_climatology():
    """Long free run, d=40, F=8, dt=0.05: mean about 2.3 and std about 3.6 (Sakov & Oke 2008's climatology)."""
    flow = Flow(Lorenz96(40, 8.0), RK4(0.05, 1))
    x0 = 8.0 + jnp.zeros(40).at[0].set(0.01)
    spin = jax.jit(lambda x: trajectory(Flow(flow.model, RK4(0.05, 1000)), x, 1)[-1])
    xs = jax.jit(lambda x: trajectory(flow, x, 20_000))(spin(x0))
    assert bool(jnp.all(jnp.isfinite(xs)))
    assert float(jnp.mean(xs)) == pytest.approx(2.35, abs=0.15)
    assert float(jnp.std(xs)) == pytest.approx(3.63, abs=0.15)


def test_lorenz63_stays_on_the_attractor():
    flow = Flow(Lorenz63(), RK4(0.01, 25))
    xs = jax.jit(lambda x: trajectory(flow, x, 4000))(jnp.array([1.509, -1.531, 25.46]))
    assert float(jnp.max(jnp.abs(xs[:, :2]))) < 30.0
    assert float(jnp.mean(xs[200:, 2])) == pytest.approx(23.5, abs=1.0)


def _fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def test_jit_vmap_grad_lorenz96():
    x0 = 8.0 + jnp.sin(jnp.arange(40.0))

    @jax.jit
    def loss(forcing, dt):
        return jnp.sum(Flow(Lorenz96(40, forcing), RK4(dt, 10))(x0) ** 2)

    # gradients with respect to the forcing and dt leaves of the Flow pytree
    flow = Flow(Lorenz96(40, 8.0), RK4(0.05, 10))
    grads = eqx.filter_jit(eqx.filter_grad(lambda fl: jnp.sum(fl(x0) ** 2)))(flow)
    np.testing.assert_allclose(grads.model.forcing, _fd(lambda f: loss(f, 0.05), 8.0, 1e-5), rtol=1e-6)
    np.testing.assert_allclose(grads.integrator.dt, _fd(lambda dt: loss(8.0, dt), 0.05, 1e-7), rtol=1e-6)

    # vmap over a batch of states equals one at a time (a Flow is a pytree: pass it to jit)
    apply = jax.jit(lambda fl, x: fl(x))
    batch = x0 + 0.1 * jax.random.normal(jax.random.key(0), (5, 40))
    batched = jax.jit(jax.vmap(flow))(batch)
    for j in range(5):
        np.testing.assert_allclose(batched[j], apply(flow, batch[j]), rtol=1e-12)
    # vmap over parameters
    losses = jax.jit(jax.vmap(loss, in_axes=(0, None)))(jnp.array([7.0, 8.0, 9.0]), 0.05)
    np.testing.assert_allclose(losses[1], loss(8.0, 0.05), rtol=1e-12)


def test_grad_lorenz63_rho():
    x0 = jnp.array([1.509, -1.531, 25.46])
    loss = jax.jit(lambda rho: jnp.sum(Flow(Lorenz63(rho=rho), RK4(0.01, 25))(x0) ** 2))
    np.testing.assert_allclose(jax.grad(loss)(28.0), _fd(loss, 28.0, 1e-5), rtol=1e-6)


@pytest.mark.parametrize("model,x0", [(Lorenz63(), [1.509, -1.531, 25.46]), (Lorenz96(40), list(np.linspace(-2, 8, 40)))])
def test_float32_stays_float32(model, x0):
    flow = eqx.filter_jit(Flow(model, RK4(0.01, 10)))
    out32 = flow(jnp.asarray(x0, jnp.float32))
    out64 = flow(jnp.asarray(x0, jnp.float64))
    assert out32.dtype == jnp.float32 and out64.dtype == jnp.float64
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4)
    # float32 parameters with float64 states are fine too (cast to the state's dtype)
    assert Lorenz96(4, jnp.float32(8.0)).vector_field(jnp.zeros(4)).dtype == jnp.float64


def test_bad_input():
    with pytest.raises(ValueError, match="`dim`"):
        Lorenz96(dim=3)
    with pytest.raises(TypeError, match="`dim`"):
        Lorenz96(dim=40.0)
    with pytest.raises(ValueError, match="`forcing`"):
        Lorenz96(dim=40, forcing=jnp.ones(39))
    with pytest.raises(TypeError, match="`rho`"):
        Lorenz63(rho="28")
    with pytest.raises(ValueError, match="`state`.*\\(40,\\).*\\(39,\\)"):
        Lorenz96(40).vector_field(jnp.zeros(39))
    with pytest.raises(ValueError, match="`state`"):
        eqx.filter_jit(Flow(Lorenz63(), RK4(0.01)))(jnp.zeros(4))
    with pytest.raises(ValueError, match="`state`"):
        jax.vmap(Lorenz63().vector_field)(jnp.zeros((5, 3, 1)))
    with pytest.raises(TypeError, match="`state`"):
        Lorenz63().vector_field(jnp.zeros(3, dtype=jnp.int32))
