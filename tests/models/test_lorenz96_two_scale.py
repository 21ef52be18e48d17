"""Two-scale Lorenz-96 (Lorenz 1996; Arnold, Moroz & Palmer 2013) and the one-scale model with a
closure: vector fields against a NumPy transcription, reductions to Lorenz-96, jit/grad, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.models import RK4, Flow, Lorenz96, Lorenz96Closure, Lorenz96TwoScale, trajectory


def _numpy_two_scale(state, K, J, h, c, b, F):
    X, Y = state[:K], state[K:]
    dX = np.empty(K)
    for k in range(K):
        dX[k] = X[k - 1] * (X[(k + 1) % K] - X[k - 2]) - X[k] + F - h * c / b * Y[k * J:(k + 1) * J].sum()
    n = K * J
    dY = np.empty(n)
    for i in range(n):
        dY[i] = -c * b * Y[(i + 1) % n] * (Y[(i + 2) % n] - Y[i - 1]) - c * Y[i] + h * c / b * X[i // J]
    return np.concatenate([dX, dY])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_two_scale_vector_field_equals_the_numpy_transcription(dtype):
    model = Lorenz96TwoScale(n_slow=5, n_fast=4, coupling=0.7, time_scale=3.0, amplitude_scale=2.0, forcing=9.0)
    state = np.random.default_rng(0).normal(size=model.state_dim)
    got = jax.jit(lambda s: model.vector_field(s))(jnp.asarray(state, dtype))
    assert got.dtype == dtype and got.shape == (25,)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(got, _numpy_two_scale(state, 5, 4, 0.7, 3.0, 2.0, 9.0), rtol=rtol, atol=rtol)
    slow, fast = model.split(jnp.asarray(state))
    assert slow.shape == (5,) and fast.shape == (5, 4)


def test_uncoupled_slow_variables_follow_lorenz96_and_closure_none_is_lorenz96():
    state = jnp.asarray(np.random.default_rng(1).normal(size=8 * 33))
    uncoupled = Lorenz96TwoScale(coupling=0.0)
    np.testing.assert_allclose(uncoupled.vector_field(state)[:8], Lorenz96(8, 20.0).vector_field(state[:8]), rtol=1e-13)
    np.testing.assert_allclose(Lorenz96Closure(8, 20.0).vector_field(state[:8]),
                               Lorenz96(8, 20.0).vector_field(state[:8]), rtol=1e-13)
    # the coupling term is what the closure stands for
    coupled = Lorenz96TwoScale()
    np.testing.assert_allclose(coupled.vector_field(state)[:8] - uncoupled.vector_field(state)[:8],
                               coupled.coupling_term(state), rtol=1e-12, atol=1e-12)


def test_closure_term_uses_the_stencil_and_gradients_reach_the_network():
    x = jnp.arange(6.0)
    linear = Lorenz96Closure(6, 8.0, closure=lambda s: s[0] - 2 * s[1] + 3 * s[2])
    expected = np.roll(x, 1) - 2 * x + 3 * np.roll(x, -1)
    np.testing.assert_allclose(linear.closure_term(x), expected)
    mlp = eqx.nn.MLP(3, "scalar", 8, 2, key=jax.random.key(0))
    flow = Flow(Lorenz96Closure(6, 8.0, closure=mlp), RK4(0.01, 5))
    grads = eqx.filter_grad(lambda f: jnp.sum(trajectory(f, x + 1.0, 3) ** 2))(flow)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads.model.closure, eqx.is_inexact_array))
    assert leaves and all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert any(np.any(leaf != 0) for leaf in leaves)


def test_two_scale_attractor_statistics():
    # Arnold et al. (2013), c = 10: X has climatological mean about 3.5 and std about 5 (their fig. 1)
    model = Lorenz96TwoScale()
    rng = np.random.default_rng(2)
    state = jnp.asarray(np.concatenate([rng.normal(size=8) * 5, 0.1 * rng.normal(size=256)]))
    xs = trajectory(Flow(model, RK4(0.005, 10)), state, 600)[100:, :8]
    assert np.all(np.isfinite(xs))
    assert 1.5 < float(np.mean(xs)) < 5.5 and 3.0 < float(np.std(xs)) < 7.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="n_slow"):
        Lorenz96TwoScale(n_slow=3)
    with pytest.raises(ValueError, match="time_scale"):
        Lorenz96TwoScale(time_scale=-1.0)
    with pytest.raises(TypeError, match="closure"):
        Lorenz96Closure(8, 20.0, closure=3.0)
    with pytest.raises(ValueError, match="state"):
        Lorenz96TwoScale().vector_field(jnp.zeros(8))
