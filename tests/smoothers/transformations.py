"""One check of jit, vmap and grad in float64 and float32 for a smoother, compiling two
programs per precision: `run(model, ys, key)` returns the smoothed means (T, dx)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def check_jit_vmap_grad(run, make_model, ys, *, batch_over_keys: bool, fd_step: float = 1e-6,
                        fd_rtol: float = 1e-4):
    """vmap (over keys, or over data) equals the jitted single run in each precision; the
    float64 gradient with respect to the data matches central differences along a random
    direction, and the float32 gradient the float64 one (to 1%).

    Two compiled programs per precision: the gradient, whose auxiliary output is the single
    run's means (the reference of the vmap), and the vmapped run over (data, key) pairs,
    which also evaluates the two points of the central difference."""
    keys = jax.random.split(jax.random.key(1), 2)
    gradients = {}
    for dtype in (jnp.float64, jnp.float32):
        model, observations = make_model(dtype), jnp.asarray(ys, dtype)

        def loss(y, key, model=model):
            means = run(model, y, key)
            return jnp.sum(means), means

        gradient, reference = eqx.filter_jit(jax.grad(loss, has_aux=True))(observations, keys[0])
        assert gradient.dtype == dtype and bool(jnp.all(jnp.isfinite(gradient)))
        gradients[dtype] = np.asarray(gradient, np.float64)
        batched_run = eqx.filter_jit(jax.vmap(lambda y, key, model=model: run(model, y, key)))
        other = (observations, keys[1]) if batch_over_keys else (observations + 0.1, keys[0])
        batched = batched_run(jnp.stack([other[0], observations]), jnp.stack([other[1], keys[0]]))
        assert batched.dtype == dtype and bool(jnp.all(jnp.isfinite(batched)))
        np.testing.assert_allclose(batched[1], reference, rtol=0, atol=2e-3 if dtype == jnp.float32 else 1e-10)
        assert not np.allclose(batched[0], batched[1]), "the two runs of the vmap should differ"
        if dtype == jnp.float64:
            direction = jax.random.normal(jax.random.key(4), observations.shape, dtype)
            # the vmapped program again (same shapes and types: no new compilation)
            ends = batched_run(jnp.stack([observations + fd_step * direction, observations - fd_step * direction]),
                               jnp.stack([keys[0], keys[0]]))
            numeric = (jnp.sum(ends[0]) - jnp.sum(ends[1])) / (2 * fd_step)
            assert float(jnp.sum(gradient * direction)) == pytest.approx(float(numeric), rel=fd_rtol)
    error = np.linalg.norm(gradients[jnp.float32] - gradients[jnp.float64]) / np.linalg.norm(gradients[jnp.float64])
    assert error < 1e-2
