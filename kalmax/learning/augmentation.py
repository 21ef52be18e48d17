"""Parameter estimation by state augmentation: the classical data-assimilation way.

The unknown parameter theta (p values taken from one leaf of the model's
dynamics) is appended to the state, z = [v; theta], and evolves by persistence
with an optional random walk (Bocquet & Sakov 2013, sec. 3.3; DAPPER's
param_estim example):

    v_{n+1} = Psi_theta(v_n) + xi_n,   theta_{n+1} = theta_n + zeta_n,  zeta_n ~ N(0, walk_cov)
    y_{n+1} = h(v_{n+1}) + eta,        [v_0; theta_0] ~ N([m_0; theta_prior], diag(C_0, theta_cov))

Any filter then estimates theta jointly with the state; the ensemble's
cross-covariances between observed variables and theta carry the information
(a Kalman filter cannot, the map being non-linear in (v, theta)). No gradient
is involved: compare `kx.learning.fit`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import DenseCovariance, DiagonalCovariance, ZeroCovariance
from ..observations import FunctionObservation, IndexObservation, LinearObservation
from ..ssm import StateSpaceModel


class AugmentedDynamics(eqx.Module):
    """z = [v; theta] -> [Psi_theta(v); theta]: the dynamics with the leaf chosen by
    `where` read from the state's last p entries.

    Attributes:
        dynamics: the model's map Psi (a pytree holding the parameter leaf).
        where: a function of `dynamics` returning the leaf (as in `eqx.tree_at`).
        state_dim: dx, the size of v.
        shape: the leaf's shape.
    """

    dynamics: Callable
    where: Callable = eqx.field(static=True)
    state_dim: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, state: Float[Array, " n"]) -> Float[Array, " n"]:
        states, parameter = state[: self.state_dim], state[self.state_dim :]
        dynamics = eqx.tree_at(self.where, self.dynamics, parameter.reshape(self.shape))
        return jnp.concatenate([dynamics(states), parameter])


def split_augmented(model: StateSpaceModel, values: Float[Array, "... n"]):
    """(v, theta) parts of augmented states (any leading axes), theta with the leaf's shape."""
    dx = model.dynamics.state_dim
    return values[..., :dx], values[..., dx:].reshape(values.shape[:-1] + model.dynamics.shape)


def _block_diagonal(first, second):
    n, m = first.shape[0], second.shape[0]
    top = jnp.concatenate([first, jnp.zeros((n, m), first.dtype)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((m, n), first.dtype), second], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def augment_state(
    model: StateSpaceModel,
    where: Callable,
    prior_mean,
    prior_cov,
    walk_cov=None,
) -> StateSpaceModel:
    """The model on z = [v; theta] (module docstring).

    Args:
        model: a `kx.StateSpaceModel` whose `dynamics` holds the parameter.
        where: a function of `model.dynamics` returning the parameter's leaf, e.g.
            `lambda flow: flow.model.forcing` for `Flow(Lorenz96(...), RK4(...))`.
        prior_mean: theta's prior mean (the leaf's shape).
        prior_cov: theta's prior covariance, (p, p) or a scalar variance.
        walk_cov: covariance of theta's random walk per cycle, (p, p), a scalar, or
            None (persistence: theta_{n+1} = theta_n).

    Returns:
        A `kx.StateSpaceModel` of dimension dx + p: dynamics `AugmentedDynamics`,
        the same observations of v, block-diagonal covariances.

    Raises:
        TypeError: if `model` is not a StateSpaceModel or `where` does not find an array leaf.
        ValueError: on a prior of the wrong shape or a covariance that is not positive.
    """
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"`model` must be a kx.StateSpaceModel; got {type(model).__name__}")
    dx, dtype = model.state_dim, model.dtype
    try:
        leaf = where(model.dynamics)
    except Exception as err:  # noqa: BLE001 - the user's selector, reported with context
        raise TypeError(f"`where` failed on `model.dynamics` ({type(model.dynamics).__name__}): {err}") from err
    if not isinstance(leaf, jnp.ndarray) or not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(f"`where` must select a float array leaf of `model.dynamics`; got {type(leaf).__name__}")
    shape = tuple(leaf.shape)
    size = int(np.prod(shape, dtype=int))
    prior_mean = _checks.as_float_array("prior_mean", prior_mean).astype(dtype)
    if prior_mean.shape != shape:
        raise ValueError(f"`prior_mean` must have the parameter's shape {shape}; got {tuple(prior_mean.shape)}")

    def square(name, value):
        array = _checks.as_float_array(name, value).astype(dtype)
        if array.ndim == 0:
            array = array * jnp.eye(size, dtype=dtype)
        if array.shape != (size, size):
            raise ValueError(f"`{name}` must be a scalar or ({size}, {size}); got {tuple(array.shape)}")
        if _checks.is_concrete(array):
            values = np.asarray(array)
            if not np.allclose(values, values.T) or np.linalg.eigvalsh((values + values.T) / 2).min() < 0:
                raise ValueError(f"`{name}` must be symmetric positive semi-definite")
        return array

    prior_cov = square("prior_cov", prior_cov)
    walk = jnp.zeros((size, size), dtype) if walk_cov is None else square("walk_cov", walk_cov)

    def dense(cov):
        return jnp.zeros((dx, dx), dtype) if cov is None else cov.matrix()

    dynamics = AugmentedDynamics(model.dynamics, where, dx, shape)
    observation = model.observation
    if isinstance(observation, IndexObservation):
        observation = IndexObservation(observation.indices, dx + size)
    elif isinstance(observation, LinearObservation):
        matrix = jnp.concatenate([observation.matrix, jnp.zeros((observation.matrix.shape[0], size), dtype)], axis=1)
        observation = LinearObservation(matrix, observation.offset)
    else:
        inner = observation
        observation = FunctionObservation(lambda state: inner(state[:dx]), inner.obs_dim)
    has_noise = walk_cov is not None or not isinstance(model.dynamics_cov, (type(None), ZeroCovariance))
    return StateSpaceModel(
        dynamics,
        observation,
        _covariance(_block_diagonal(dense(model.dynamics_cov), walk)) if has_noise else None,
        model.obs_cov,
        jnp.concatenate([model.init_mean, prior_mean.reshape(-1)]),
        _covariance(_block_diagonal(dense(model.init_cov), prior_cov)),
    )


def _covariance(matrix):
    """A diagonal operator when the (concrete) matrix is diagonal (zero variances allowed,
    e.g. no model noise on v beside a random walk on theta), else a dense one."""
    if _checks.is_concrete(matrix):
        values = np.asarray(matrix)
        if np.array_equal(values, np.diag(np.diagonal(values))):
            return DiagonalCovariance(jnp.diagonal(matrix))
    return DenseCovariance(matrix)


__all__ = ["AugmentedDynamics", "augment_state", "split_augmented"]
