"""Twin experiments: simulate a truth and its observations from a model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .linalg import psd_sqrt
from .ssm import LinearGaussianSSM, merge_time_step, split_time_varying


def simulate(model: LinearGaussianSSM, key, n_steps: int):
    """Draw v_0 ~ N(m_0, C_0), then v_{n+1} and y_{n+1} for n = 0..n_steps-1.

    Reproducible from `key`. Noise factors are symmetric square roots, so
    singular (e.g. zero) covariances are allowed.

    Returns:
        (states, ys): states (n_steps + 1, dx) holding v_0..v_T; ys (n_steps, dy)
        holding y_1..y_T (so `ys[n]` observes `states[n + 1]`).
    """
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"`model` must be a LinearGaussianSSM; got {type(model).__name__}")
    if model.n_times is not None and model.n_times != n_steps:
        raise ValueError(
            f"`n_steps` is {n_steps} but the model's `TimeVarying` fields have {model.n_times} cycles"
        )
    varying, constant = split_time_varying(model)
    key_init, key_run = jax.random.split(key)
    dtype = model.dtype
    v0 = model.init_mean + psd_sqrt(model.init_cov) @ jax.random.normal(
        key_init, (model.state_dim,), dtype
    )

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
