"""Continuous-time models with continuous observations (Stuart's "Blending Data and Models",
the continuous-time limits; Jazwinski 1970, ch. 7; Bain & Crisan 2009, ch. 3):

    dv = f(v) dt + Sigma^{1/2} dB,        v(0) ~ N(m_0, C_0),
    dz = h(v) dt + Gamma^{1/2} dW,

B, W independent Brownian motions. The data are the observation increments
dz_k = z(t_{k+1}) - z(t_k) on a grid of step `dt` (the natural discrete form of a
continuous record). f and h are linear, v -> A v and v -> H v, when given as matrices
(the Kalman-Bucy setting), or any JAX functions.

The link to the discrete models: observing y_n = (z(t_n + tau) - z(t_n)) / tau every tau
is observing h(v) with noise covariance Gamma / tau, and as tau -> 0 the discrete filters
of such data converge to the continuous ones (`discretise`).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import AbstractCovariance, as_covariance
from ..models.integrators import AbstractEnsembleVectorField


class ContinuousModel(eqx.Module):
    """A continuous-time state-space model (module docstring).

    Args:
        drift: a (d, d) matrix A (f(v) = A v), a model with a vector field for whole
            ensembles (`kalmax.models.AbstractEnsembleVectorField`, e.g. `Lorenz96(40)`: the
            ensemble filters then use its batched field), or a function f of one state
            (d,) -> (d,).
        diffusion_cov: Sigma (d x d, positive semi-definite; an array, a covariance
            operator, or None for no model noise).
        observation: a (p, d) matrix H (h(v) = H v) or a function h of one state (d,) -> (p,).
        obs_cov: Gamma (p x p, positive definite).
        init_mean: (d,) m_0.
        init_cov: (d, d) C_0.

    Example:
        >>> model = kx.ContinuousModel(drift=-jnp.eye(1), diffusion_cov=jnp.eye(1),
        ...                            observation=jnp.eye(1), obs_cov=0.1 * jnp.eye(1),
        ...                            init_mean=jnp.zeros(1), init_cov=jnp.eye(1))
    """

    drift: Float[Array, "d d"] | AbstractEnsembleVectorField | Callable
    diffusion_cov: AbstractCovariance
    observation: Float[Array, "p d"] | Callable
    obs_cov: AbstractCovariance
    init_mean: Float[Array, " d"]
    init_cov: Float[Array, "d d"]

    def __init__(self, drift, diffusion_cov, observation, obs_cov, init_mean, init_cov):
        init_mean = _checks.as_float_array("init_mean", init_mean)
        if init_mean.ndim != 1:
            raise ValueError(f"`init_mean` must be a vector (d,); got shape {tuple(init_mean.shape)}")
        dim, dtype = init_mean.shape[0], init_mean.dtype
        init_cov = _checks.as_float_array("init_cov", init_cov)
        _checks.check_covariance("init_cov", init_cov, dim)
        if isinstance(drift, AbstractEnsembleVectorField):
            _check_function("drift", drift.vector_field, init_mean, (dim,))
        elif callable(drift) and not isinstance(drift, jax.Array):
            _check_function("drift", drift, init_mean, (dim,))
        else:
            drift = _checks.as_float_array("drift", drift)
            if drift.shape != (dim, dim):
                raise ValueError(f"`drift` must be a ({dim}, {dim}) matrix A or a function of the state; got shape "
                                 f"{tuple(drift.shape)}")
        if callable(observation) and not isinstance(observation, jax.Array):
            shape = _check_function("observation", observation, init_mean, None)
            if len(shape) != 1:
                raise ValueError(f"`observation` must return a vector (p,); it returns shape {shape}")
            n_obs = shape[0]
        else:
            observation = _checks.as_float_array("observation", observation)
            if observation.ndim != 2 or observation.shape[1] != dim:
                raise ValueError(f"`observation` must be a (p, {dim}) matrix H or a function of the state; got shape "
                                 f"{tuple(observation.shape)}")
            n_obs = observation.shape[0]
        for name, value in (("drift", drift), ("observation", observation), ("init_cov", init_cov)):
            if isinstance(value, jax.Array) and value.dtype != dtype:
                raise TypeError(f"dtype mix: `{name}` is {value.dtype} but `init_mean` is {dtype}")
        self.drift, self.observation = drift, observation
        self.diffusion_cov = as_covariance("diffusion_cov", diffusion_cov, dim, dtype)
        self.obs_cov = as_covariance("obs_cov", obs_cov, n_obs, dtype, allow_zero=False)
        self.init_mean, self.init_cov = init_mean, init_cov

    @property
    def state_dim(self) -> int:
        return self.init_mean.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.obs_cov.dim

    @property
    def dtype(self):
        return self.init_mean.dtype

    @property
    def linear(self) -> bool:
        """Whether both f and h are matrices (the Kalman-Bucy setting)."""
        return isinstance(self.drift, jax.Array) and isinstance(self.observation, jax.Array)

    def drift_of(self, state: Float[Array, " d"]) -> Float[Array, " d"]:
        """f(v)."""
        if isinstance(self.drift, jax.Array):
            return self.drift @ state
        if isinstance(self.drift, AbstractEnsembleVectorField):
            return self.drift.vector_field(state)
        return self.drift(state)

    def ensemble_drift(self, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """f of every row of `members` (a model's batched field when it has one)."""
        if isinstance(self.drift, jax.Array):
            return members @ self.drift.T
        if isinstance(self.drift, AbstractEnsembleVectorField):
            return self.drift.ensemble_vector_field(members.T).T
        return jax.vmap(self.drift)(members)

    def observe(self, state: Float[Array, " d"]) -> Float[Array, " p"]:
        """h(v)."""
        return self.observation @ state if isinstance(self.observation, jax.Array) else self.observation(state)

    def drift_jacobian(self, state: Float[Array, " d"]) -> Float[Array, "d d"]:
        """df/dv at `state` (A for a linear drift)."""
        return self.drift if isinstance(self.drift, jax.Array) else jax.jacfwd(self.drift_of)(state)

    def obs_jacobian(self, state: Float[Array, " d"]) -> Float[Array, "p d"]:
        """dh/dv at `state` (H for a linear observation)."""
        return self.observation if isinstance(self.observation, jax.Array) else jax.jacfwd(self.observation)(state)


def _check_function(name: str, function, state, expected):
    try:
        out = jax.eval_shape(function, state)
    except Exception as err:  # noqa: BLE001 - the user's function failed on a state
        raise ValueError(f"`{name}` could not be evaluated on a state of shape {tuple(state.shape)}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    if not hasattr(out, "shape"):
        raise ValueError(f"`{name}` must return an array; got {type(out).__name__}")
    if expected is not None and tuple(out.shape) != expected:
        raise ValueError(f"`{name}` must map a state {tuple(state.shape)} to shape {expected}; got {tuple(out.shape)}")
    return tuple(out.shape)


def check_grid(dt, increments, model: ContinuousModel) -> tuple[Float[Array, ""], Float[Array, "T p"]]:
    """The time step (> 0, a scalar) and the increments (T, p) checked against the model."""
    dt = _checks.as_float_array("dt", dt)
    if dt.ndim != 0:
        raise ValueError(f"`dt` must be a scalar time step; got shape {tuple(dt.shape)}")
    if _checks.is_concrete(dt) and not float(dt) > 0:
        raise ValueError(f"`dt` must be > 0 (the time step of the observation increments); got {float(dt)}")
    increments = jnp.asarray(increments)
    if increments.ndim != 2 or increments.shape[1] != model.obs_dim:
        raise ValueError(f"`increments` must have shape (T, {model.obs_dim}) (one observation increment dz per time "
                         f"step); got {tuple(increments.shape)}")
    if increments.shape[0] < 1:
        raise ValueError("`increments` is empty: give at least one time step")
    if increments.dtype != model.dtype:
        raise TypeError(f"dtype mix: `increments` is {increments.dtype} but the model's arrays are {model.dtype}")
    finite = np.isfinite(np.asarray(increments)).all(axis=1) if _checks.is_concrete(increments) else None
    if finite is not None and not finite.all():  # NumPy: a concrete array stays concrete under an outer jit
        bad = int(np.argmin(finite))
        raise ValueError(f"`increments` has non-finite entries (first at time step {bad}): the continuous filters "
                         "have no missing data; give every increment")
    return dt.astype(model.dtype), increments


__all__ = ["ContinuousModel", "check_grid"]
