"""Truth and observation increments of a continuous-time model, for twin experiments.

The state and the observation path are integrated together as one SDE,

    d(v, z) = (f(v), h(v)) dt + (Sigma^{1/2} dB, Gamma^{1/2} dW),

by diffrax (a `VirtualBrownianTree`, `substeps` solver steps per grid step, Heun's method
by default: the noise is additive, so the Ito and Stratonovich solutions agree), and the
increments dz_k = z(t_{k+1}) - z(t_k) are returned with the states at the grid times.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import as_covariance
from .model import ContinuousModel


class ContinuousData(eqx.Module):
    """A simulated continuous-time twin experiment.

    Attributes:
        times: (T + 1,) the grid t_k = k dt.
        truth: (T + 1, d) v(t_k).
        increments: (T, p) dz_k = z(t_{k+1}) - z(t_k).
    """

    times: Float[Array, " T1"]
    truth: Float[Array, "T1 d"]
    increments: Float[Array, "T p"]


def simulate_continuous(model: ContinuousModel, key, n_steps: int, dt, substeps: int = 1,
                        solver: diffrax.AbstractSolver | None = None) -> ContinuousData:
    """Simulate v and the observation increments on the grid t_k = k dt, k = 0..n_steps.

    Args:
        model: the `ContinuousModel`.
        key: a JAX PRNG key (the initial state and the Brownian motions).
        n_steps: grid steps T (static, >= 1).
        dt: the grid step (> 0).
        substeps: solver steps per grid step (static, >= 1).
        solver: a diffrax SDE solver (default `diffrax.Heun()`).
    """
    if not isinstance(model, ContinuousModel):
        raise TypeError(f"`model` must be a kx.ContinuousModel; got {type(model).__name__}")
    _checks.check_key("key", key)
    for name, value in (("n_steps", n_steps), ("substeps", substeps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
    dt = _checks.as_float_array("dt", dt)
    if dt.ndim != 0:
        raise ValueError(f"`dt` must be a scalar time step; got shape {tuple(dt.shape)}")
    if _checks.is_concrete(dt) and not float(dt) > 0:
        raise ValueError(f"`dt` must be > 0; got {float(dt)}")
    solver = diffrax.Heun() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver (e.g. diffrax.Heun()); got {type(solver).__name__}")
    if not isinstance(solver, (diffrax.AbstractItoSolver, diffrax.AbstractStratonovichSolver)):
        raise ValueError(f"`solver` {type(solver).__name__} is an ODE solver: the model is an SDE (give an SDE solver "
                         "such as diffrax.Heun() or diffrax.Euler())")
    # the Brownian tree's tolerance sets its depth: a Python number when dt is concrete
    tol = float(dt) / (2 * substeps) if _checks.is_concrete(dt) else None
    # the initial draw outside the compiled solve: a zero C_0 is recognised on its concrete values
    key_init, key_noise = jax.random.split(key)
    init_cov = as_covariance("init_cov", model.init_cov, model.state_dim, model.dtype)
    start = model.init_mean + init_cov.sqrt_mv(jax.random.normal(key_init, (model.state_dim,), model.dtype))
    return _simulate(model, start, key_noise, n_steps, dt.astype(model.dtype), substeps, solver, tol)


@eqx.filter_jit
def _simulate(model: ContinuousModel, start, key_noise, n_steps: int, dt, substeps: int, solver,
              tol) -> ContinuousData:
    """The solve of `simulate_continuous`, compiled once per model structure and sizes."""
    dtype, dim, n_obs = model.dtype, model.state_dim, model.obs_dim
    times = dt * jnp.arange(n_steps + 1, dtype=dtype)
    sqrt_diffusion = model.diffusion_cov.sqrt_mv(jnp.eye(dim, dtype=dtype))
    sqrt_obs = model.obs_cov.sqrt_mv(jnp.eye(n_obs, dtype=dtype))

    def drift(t, y, args):
        state, _ = y
        return model.drift_of(state), model.observe(state)

    def diffusion(t, y, args):
        return sqrt_diffusion, sqrt_obs

    shape = (jax.ShapeDtypeStruct((dim,), dtype), jax.ShapeDtypeStruct((n_obs,), dtype))
    brownian = diffrax.VirtualBrownianTree(times[0], times[-1], tol=dt / (2 * substeps) if tol is None else tol,
                                          shape=shape, key=key_noise)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))
    try:
        solution = diffrax.diffeqsolve(
            terms, solver, times[0], times[-1], dt / substeps, (start, jnp.zeros(n_obs, dtype)),
            saveat=diffrax.SaveAt(ts=times), stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=n_steps * substeps + 1,
        )
    except Exception as err:  # noqa: BLE001 - diffrax refuses solvers that do not fit the terms
        raise ValueError(f"`solver` {type(solver).__name__} cannot solve this SDE (additive noise, a drift and a "
                         f"Brownian control term): {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    states, path = solution.ys
    return ContinuousData(times=times, truth=states, increments=jnp.diff(path, axis=0))


__all__ = ["ContinuousData", "simulate_continuous"]
