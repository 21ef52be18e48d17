"""The discrete models whose filters converge to the continuous ones (Stuart's "Blending
Data and Models", the continuous-time limits; Kelly, Law & Stuart 2014).

Observing a continuous record every tau, y_{n+1} = (z(t_n + tau) - z(t_n)) / tau, is a
discrete observation of h(v) with noise covariance Gamma / tau. For a linear model the
exact discrete dynamics over tau are M = exp(A tau) with noise covariance
Q = int_0^tau exp(A s) Sigma exp(A^T s) ds (Van Loan 1978: one matrix exponential of the
block matrix [[-A, Sigma], [0, A^T]] tau). The discrete Kalman filter of those data
converges to the Kalman-Bucy filter as tau -> 0, at first order in tau.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg
from jaxtyping import Array, Float

from .. import _checks
from ..ssm import LinearGaussianSSM
from .model import ContinuousModel


def discretise(model: ContinuousModel, tau) -> LinearGaussianSSM:
    """The `LinearGaussianSSM` of a linear `ContinuousModel` observed every `tau` (module
    docstring): M = exp(A tau), Q by Van Loan's method, H, and Gamma / tau."""
    if not isinstance(model, ContinuousModel):
        raise TypeError(f"`model` must be a kx.ContinuousModel; got {type(model).__name__}")
    if not model.linear:
        raise ValueError("`model` must be linear (matrices A and H) to be discretised exactly")
    tau = _checks.as_float_array("tau", tau).astype(model.dtype)
    if tau.ndim != 0 or (_checks.is_concrete(tau) and not float(tau) > 0):
        raise ValueError(f"`tau` must be a time > 0; got {tau}")
    dim = model.state_dim
    drift = model.drift
    diffusion = jnp.zeros((dim, dim), model.dtype) if model.diffusion_cov.is_zero() else model.diffusion_cov.matrix()
    block = jnp.block([[-drift, diffusion], [jnp.zeros_like(drift), drift.T]]) * tau
    exponential = jax.scipy.linalg.expm(block)
    transition = exponential[dim:, dim:].T
    noise = transition @ exponential[:dim, dim:]
    noise = 0.5 * (noise + noise.T)
    return LinearGaussianSSM(dynamics=transition, observation=model.observation, dynamics_cov=noise,
                             obs_cov=model.obs_cov.matrix() / tau, init_mean=model.init_mean, init_cov=model.init_cov)


def aggregate_increments(increments: Float[Array, "T p"], factor: int, dt) -> Float[Array, "n p"]:
    """Discrete observations y_{n+1} = (sum of `factor` increments) / (factor dt) from the
    increments dz (T, p) of step `dt`: T // factor rows (a trailing part is dropped)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"`factor` must be an integer >= 1; got {factor!r}")
    increments = jnp.asarray(increments)
    if increments.ndim != 2:
        raise ValueError(f"`increments` must have shape (T, p); got {tuple(increments.shape)}")
    n = increments.shape[0] // factor
    if n < 1:
        raise ValueError(f"`factor` {factor} is longer than the {increments.shape[0]} increments")
    grouped = increments[: n * factor].reshape(n, factor, increments.shape[1]).sum(axis=1)
    return grouped / (factor * jnp.asarray(dt, increments.dtype))


__all__ = ["aggregate_increments", "discretise"]
