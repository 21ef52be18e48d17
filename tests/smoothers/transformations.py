"""One check of jit, vmap and grad in float64 and float32 for a smoother, compiling each
program once: `run(model, ys, key)` returns the smoothed means (T, dx)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def check_jit_vmap_grad(run, make_model, ys, *, batch_over_keys: bool, fd_step: float = 1e-6,
                        fd_rtol: float = 1e-4):
    """vmap (over keys or shifted data) equals single jitted runs in each precision; the float64
    gradient with respect to the data matches central differences along a random direction, and
    the float32 gradient the float64 one (to 1%)."""
    keys = jax.random.split(jax.random.key(1), 2)
    gradients = {}
    for dtype in (jnp.float64, jnp.float32):
        model, observations = make_model(dtype), jnp.asarray(ys, dtype)
        single = eqx.filter_jit(run)
        if batch_over_keys:
            batched = eqx.filter_jit(jax.vmap(lambda k: run(model, observations, k)))(keys)
            reference = single(model, observations, keys[1])
        else:
            shifted = jnp.stack([observations, observations + 0.1])
            batched = eqx.filter_jit(jax.vmap(lambda y: run(model, y, keys[0])))(shifted)
            reference = single(model, observations + 0.1, keys[0])
        assert batched.dtype == dtype and bool(jnp.all(jnp.isfinite(batched)))
        np.testing.assert_allclose(batched[1], reference, rtol=0, atol=2e-3 if dtype == jnp.float32 else 1e-10)

        def loss(y, model=model):
            return jnp.sum(run(model, y, keys[0]))

        gradient = eqx.filter_jit(jax.grad(loss))(observations)
        assert gradient.dtype == dtype and bool(jnp.all(jnp.isfinite(gradient)))
        gradients[dtype] = np.asarray(gradient, np.float64)
        if dtype == jnp.float64:
            direction = jax.random.normal(jax.random.key(4), observations.shape, dtype)
            def value(y):  # the compiled single run again (same shapes and types: no new compilation)
                return jnp.sum(single(model, y, keys[0]))

            numeric = (value(observations + fd_step * direction) - value(observations - fd_step * direction)) / (
                2 * fd_step)
            assert float(jnp.sum(gradient * direction)) == pytest.approx(float(numeric), rel=fd_rtol)
    error = np.linalg.norm(gradients[jnp.float32] - gradients[jnp.float64]) / np.linalg.norm(gradients[jnp.float64])
    assert error < 1e-2
