"""Draw a truth and its observations from a state-space model (the twin experiment's data)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ._checks import as_count, check_key
from .linalg import psd_sqrt
from .ssm import LinearGaussianSSM, StateSpaceModel, merge_time_step, split_time_varying


def simulate(model, key: PRNGKeyArray, n_steps: int):
    """Draw a truth v_0 ~ N(m_0, C_0), v_{n+1} = Psi(v_n) + xi_n, and y_{n+1} = h(v_{n+1}) + eta.

    Reproducible from `key`; works for `LinearGaussianSSM` (noise factors are
    symmetric square roots, so singular covariances are allowed) and
    `StateSpaceModel` (noise from the covariance operators, never densified).

    Returns:
        (states, ys): states (n_steps + 1, dx) holding v_0..v_T; ys (n_steps, dy)
        holding y_1..y_T (so `ys[n]` observes `states[n + 1]`).
    """
    n_steps = as_count("n_steps", n_steps)
    check_key("key", key)
    if isinstance(model, LinearGaussianSSM):
        return _simulate_linear(model, key, n_steps)
    if isinstance(model, StateSpaceModel):
        return _simulate_nonlinear(model, key, n_steps)
    raise TypeError(f"`model` must be a LinearGaussianSSM or StateSpaceModel; got {type(model).__name__}")


@eqx.filter_jit
def _simulate_linear(model: LinearGaussianSSM, key, n_steps: int):
    if model.n_times is not None and model.n_times != n_steps:
        raise ValueError(
            f"`n_steps` is {n_steps} but the model's `TimeVarying` fields have {model.n_times} cycles"
        )
    varying, constant = split_time_varying(model)
    key_init, key_run = jax.random.split(key)
    dtype = model.dtype
    v0 = model.init_mean + psd_sqrt(model.init_cov) @ jax.random.normal(key_init, (model.state_dim,), dtype)

    def step(state, inputs):
        varying_step, step_key = inputs
        m = merge_time_step(varying_step, constant)
        key_dyn, key_obs = jax.random.split(step_key)
        noise = psd_sqrt(m.dynamics_cov) @ jax.random.normal(key_dyn, state.shape, dtype)
        new_state = m.predict_mean(state) + noise
        obs_noise = psd_sqrt(m.obs_cov) @ jax.random.normal(key_obs, (m.obs_dim,), dtype)
        return new_state, (new_state, m.observe_mean(new_state) + obs_noise)

    _, (states, ys) = jax.lax.scan(step, v0, (varying, jax.random.split(key_run, n_steps)))
    return jnp.concatenate([v0[None], states], axis=0), ys


@eqx.filter_jit
def _simulate_nonlinear(model: StateSpaceModel, key, n_steps: int):
    key_init, key_run = jax.random.split(key)
    dtype = model.dtype
    v0 = model.init_mean + model.init_cov.sqrt_mv(jax.random.normal(key_init, (model.state_dim,), dtype))

    def step(state, step_key):
        key_dyn, key_obs = jax.random.split(step_key)
        new_state = model.dynamics(state)
        if not model.dynamics_cov.is_zero():
            new_state = new_state + model.dynamics_cov.sqrt_mv(jax.random.normal(key_dyn, state.shape, dtype))
        obs_noise = model.obs_cov.sqrt_mv(jax.random.normal(key_obs, (model.obs_dim,), dtype))
        return new_state, (new_state, model.observe(new_state) + obs_noise)

    _, (states, ys) = jax.lax.scan(step, v0, jax.random.split(key_run, n_steps))
    return jnp.concatenate([v0[None], states], axis=0), ys


__all__ = ["simulate"]
