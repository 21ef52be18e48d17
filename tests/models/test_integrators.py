"""RK4, the integrating-factor RK4, Flow and trajectory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from kalmax.models import (
    AbstractEnsembleDynamics,
    AbstractEnsembleVectorField,
    AbstractPeriodicStencil,
    RK4,
    AbstractSemilinearModel,
    Flow,
    IntegratingFactorRK4,
    Lorenz63,
    Lorenz96,
    periodic_rows,
    rk4_periodic_step,
    rk4_step,
    trajectory,
)
from kalmax.models.integrators import tangent_linear

# A damped rotation dy/dt = A y: exact solution expm(A t) y0.
A = np.array([[-0.3, 2.0], [-2.0, -0.1]])
Y0 = np.array([1.0, -0.5])


class LinearModel(eqx.Module):
    matrix: jax.Array

    def vector_field(self, state):
        return self.matrix @ state


def _rk4_error(dt, t_end=1.0):
    n = int(round(t_end / dt))
    out = RK4(dt, n)(LinearModel(jnp.asarray(A)).vector_field, jnp.asarray(Y0))
    return np.linalg.norm(np.asarray(out) - scipy.linalg.expm(A * t_end) @ Y0)


def test_rk4_is_fourth_order():
    errors = [_rk4_error(dt) for dt in (0.1, 0.05, 0.025)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for ratio in ratios:
        assert 14.0 < ratio < 18.0, (errors, ratios)


def test_rk4_step_matches_formula_and_handles_pytrees():
    f = lambda y: {"a": -y["a"] * y["b"], "b": y["a"] ** 2}  # noqa: E731
    y = {"a": jnp.array([0.3, -1.2]), "b": jnp.array([2.0, 0.5])}
    dt = 0.1
    out = rk4_step(f, y, dt)

    def plain(a, b):
        def g(v):
            return np.concatenate([-v[:2] * v[2:], v[:2] ** 2])
        v = np.concatenate([a, b])
        k1 = g(v)
        k2 = g(v + dt / 2 * k1)
        k3 = g(v + dt / 2 * k2)
        k4 = g(v + dt * k3)
        return v + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    ref = plain(np.asarray(y["a"]), np.asarray(y["b"]))
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), ref, rtol=1e-14)


class SemilinearToy(AbstractSemilinearModel):
    """dz/dt = -lam z + sin(z) + 0.5, diagonal linear part (stiff for large lam)."""

    lam: jax.Array

    def to_spectral(self, state):
        return state

    def from_spectral(self, z):
        return z

    def spectral_linear(self, z):
        return -self.lam

    def spectral_nonlinear(self, z):
        return jnp.sin(z) + 0.5

    def vector_field(self, state):
        return self.spectral_linear(state) * state + self.spectral_nonlinear(state)


def test_integrating_factor_rk4_is_fourth_order_and_exact_on_linear_part():
    model = SemilinearToy(jnp.array([0.5, 3.0, 20.0]))
    z0 = jnp.array([1.0, -2.0, 0.7])
    reference = RK4(1e-4, 10_000)(model.vector_field, z0)
    errors = [
        float(jnp.linalg.norm(Flow(model, IntegratingFactorRK4(dt, int(round(1 / dt))))(z0) - reference))
        for dt in (0.1, 0.05)
    ]
    assert 13.0 < errors[0] / errors[1] < 19.0, errors
    # With a zero linear part it is the classic RK4.
    flat = SemilinearToy(jnp.zeros(3))
    np.testing.assert_allclose(
        Flow(flat, IntegratingFactorRK4(0.1, 7))(z0), Flow(flat, RK4(0.1, 7))(z0), rtol=1e-14
    )


def test_flow_and_trajectory():
    model = Lorenz63()
    flow = Flow(model, RK4(0.01, 25))
    assert float(flow.interval) == pytest.approx(0.25)
    x0 = jnp.array([1.509, -1.531, 25.46])
    xs = jax.jit(lambda x: trajectory(flow, x, 4))(x0)
    assert xs.shape == (5, 3)
    np.testing.assert_array_equal(xs[0], x0)
    x = x0
    for t in range(1, 5):
        x = RK4(0.01, 25)(model.vector_field, x)
        np.testing.assert_allclose(xs[t], x, rtol=1e-12)
    # 25 steps of 0.01 = one step call repeated
    one = x0
    for _ in range(25):
        one = rk4_step(model.vector_field, one, 0.01)
    np.testing.assert_allclose(flow(x0), one, rtol=1e-12)


def test_bad_integrator_arguments():
    with pytest.raises(ValueError, match="n_steps"):
        RK4(0.1, 0)
    with pytest.raises(TypeError, match="n_steps"):
        RK4(0.1, 2.0)
    with pytest.raises(ValueError, match="dt"):
        RK4(-0.1, 1)
    with pytest.raises(ValueError, match="dt"):
        IntegratingFactorRK4(jnp.ones(2), 1)
    with pytest.raises(TypeError, match="integrator"):
        Flow(Lorenz63(), lambda f, x: x)
    with pytest.raises(TypeError, match="RK4"):
        Flow(Lorenz96(), IntegratingFactorRK4(0.01, 1))(jnp.zeros(40))
    with pytest.raises(ValueError, match="n_intervals"):
        trajectory(Flow(Lorenz63(), RK4(0.01)), jnp.zeros(3), -1)


# -- ensembles in the batched layout (members on the fast axis) ---------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "model",
    [Lorenz63(), Lorenz96(40), Lorenz96(12, forcing=jnp.linspace(7.0, 9.0, 12))],
    ids=["lorenz63", "lorenz96", "lorenz96-vector-forcing"],
)
def test_ensemble_vector_field_and_flow_equal_the_vmapped_forms(model, dtype):
    assert isinstance(model, AbstractEnsembleVectorField)
    dim = model.state_dim
    members = (3.0 * jax.random.normal(jax.random.key(0), (7, dim)) + 1.0).astype(dtype)
    fields = model.ensemble_vector_field(members.T).T
    np.testing.assert_allclose(fields, jax.vmap(model.vector_field)(members), rtol=1e-6 if dtype == jnp.float32 else 1e-14)
    flow = Flow(model, RK4(0.01, 3))
    assert isinstance(flow, AbstractEnsembleDynamics)
    batched = eqx.filter_jit(lambda f, x: f.ensemble(x))(flow, members)
    assert batched.dtype == dtype and batched.shape == members.shape
    np.testing.assert_allclose(batched, jax.vmap(flow)(members), rtol=1e-5 if dtype == jnp.float32 else 1e-13)
    # vmap over a batch of ensembles and the gradient with respect to the model's parameters
    stacked = jnp.stack([members, 1.1 * members])
    np.testing.assert_allclose(jax.vmap(flow.ensemble)(stacked)[1], flow.ensemble(1.1 * members), rtol=1e-5)
    grad_batched = jax.grad(lambda f: jnp.sum(f.ensemble(members) ** 2))(flow)
    grad_vmapped = jax.grad(lambda f: jnp.sum(jax.vmap(f)(members) ** 2))(flow)
    for a, b in zip(jax.tree_util.tree_leaves(grad_batched), jax.tree_util.tree_leaves(grad_vmapped)):
        np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == jnp.float32 else 1e-11)


@pytest.mark.parametrize("dim", [4, 5, 40])
def test_the_halo_step_is_the_rk4_step_of_the_ensemble_field(dim):
    """One periodic extension by four halos (wrapping more than once when the grid is shorter
    than the halos) gives the arithmetic of RK4 on the ensemble field (to rounding), in both layouts
    of the forecast (the discrete-adjoint RK4 keeps the per-stage field)."""
    model = Lorenz96(dim, forcing=jnp.linspace(6.0, 9.0, dim))
    assert isinstance(model, AbstractPeriodicStencil)
    states = 3.0 * jax.random.normal(jax.random.key(3), (dim, 6))
    np.testing.assert_array_equal(periodic_rows(states, 9, 5), np.asarray(states)[np.arange(-9, dim + 5) % dim])
    np.testing.assert_array_equal(periodic_rows(states, 2, 1), np.asarray(states)[np.arange(-2, dim + 1) % dim])
    halo = jax.jit(rk4_periodic_step)(model, states, 0.05)
    # the same operations; XLA contracts some of them into fused multiply-adds differently
    # (measured: equal at -O0 with the default emitters; at d = 40, 1.1e-16 apart at -O2 and
    # 8.9e-16 with the suite's fast-compile flags, for values up to 8)
    np.testing.assert_allclose(halo, jax.jit(rk4_step)(model.ensemble_vector_field, states, 0.05), rtol=0, atol=1e-14)
    members = states.T
    np.testing.assert_allclose(Flow(model, RK4(0.05, 2)).ensemble(members),
                               Flow(model, RK4(0.05, 2, adjoint=True)).ensemble(members), rtol=0, atol=1e-13)


def test_ensemble_vector_field_rejects_members_in_rows():
    with pytest.raises(ValueError, match=r"`states` must have shape \(40, J\)"):
        Lorenz96(40).ensemble_vector_field(jnp.zeros((5, 40)))


def test_linear_dynamics_maps_an_ensemble_in_one_product():
    from kalmax.ssm import LinearDynamics

    matrix = jax.random.normal(jax.random.key(1), (4, 4))
    dynamics = LinearDynamics(matrix, jnp.arange(4.0))
    members = jax.random.normal(jax.random.key(2), (6, 4))
    np.testing.assert_allclose(dynamics.ensemble(members), jax.vmap(dynamics)(members), rtol=1e-13)


@pytest.mark.parametrize("batched", [True, False], ids=["ensemble-flow", "plain-function"])
def test_tangent_linear_equals_the_jacobian(batched):
    """The batched JVP (directions carried as members) and the vmapped one both give
    Psi(x) and Psi'(x) t for every row t, as jax.jacfwd does."""
    flow = Flow(Lorenz96(12, forcing=jnp.linspace(7.0, 9.0, 12)), RK4(0.05, 3))
    dynamics = flow if batched else (lambda state: flow(state))
    state = 3.0 * jax.random.normal(jax.random.key(4), (12,)) + 1.0
    directions = jax.random.normal(jax.random.key(5), (5, 12))
    moved, images = jax.jit(lambda x, t: tangent_linear(dynamics, x, t))(state, directions)
    np.testing.assert_allclose(moved, flow(state), rtol=1e-13)
    np.testing.assert_allclose(images, directions @ jax.jacfwd(flow)(state).T, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rk4_adjoint_gradients_equal_reverse_mode(dtype):
    from kalmax.models import Lorenz63, Lorenz96

    x = (8 + jnp.sin(jnp.arange(12.0))).astype(dtype)
    members = x[None] + 0.1 * jnp.cos(jnp.arange(36.0)).reshape(3, 12).astype(dtype)

    def loss(flow):
        return jnp.sum(flow(x) ** 2) + jnp.sum(flow.ensemble(members) ** 3) / 10

    grads = {}
    for adjoint in (False, True):
        flow = Flow(Lorenz96(12, jnp.asarray(8.0, dtype)), RK4(jnp.asarray(0.01, dtype), 5, adjoint=adjoint))
        model_grad = eqx.filter_jit(eqx.filter_grad(loss))(flow)
        state_grad = jax.grad(lambda s: jnp.sum(flow.ensemble(s) ** 2))(members)
        grads[adjoint] = (model_grad.model.forcing, model_grad.integrator.dt, state_grad)
    rtol = 1e-4 if dtype == jnp.float32 else 1e-11
    for plain, adjoint in zip(grads[False], grads[True]):
        assert adjoint.dtype == dtype
        np.testing.assert_allclose(adjoint, plain, rtol=rtol)
    if dtype == jnp.float32:
        return
    # a model without an ensemble field: the adjoint runs under vmap
    flow63 = Flow(Lorenz63(), RK4(0.01, 10, adjoint=True))
    batch = jnp.stack([jnp.array([1.0, 2.0, 20.0]), jnp.array([-1.0, 0.5, 25.0])])
    g = jax.grad(lambda rho: jnp.sum(jax.vmap(eqx.tree_at(lambda f: f.model.rho, flow63, rho))(batch) ** 2))(28.0)
    g_plain = jax.grad(lambda rho: jnp.sum(jax.vmap(eqx.tree_at(
        lambda f: f.model.rho, Flow(Lorenz63(), RK4(0.01, 10)), rho))(batch) ** 2))(jnp.asarray(28.0))
    np.testing.assert_allclose(g, g_plain, rtol=1e-10)
    with pytest.raises(TypeError, match="(?i)custom_vjp|forward-mode"):
        jax.jacfwd(flow63)(batch[0])
