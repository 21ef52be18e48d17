"""Observation operators h: state (dx,) -> predicted observation (dy,).

`as_observation` turns a user's argument into an operator: a (dy, dx) array
is a `LinearObservation`; an `IndexObservation` observes a subset of the
components (every k-th grid point, say) without ever forming a matrix; any
other callable is a nonlinear operator, differentiated by `jax.jacfwd` where a
method needs its Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _checks


class LinearObservation(eqx.Module):
    """h(v) = H v (+ offset).

    Args:
        matrix: (dy, dx) observation matrix H.
        offset: optional (dy,) offset.
    """

    matrix: Float[Array, "dy dx"]
    offset: Float[Array, " dy"] | None = None

    def __init__(self, matrix, offset=None):
        self.matrix = _checks.as_float_array("observation", matrix)
        _checks.check_ndim("observation", self.matrix, 2, "a (dy, dx) observation matrix")
        _checks.check_finite("observation", self.matrix)
        self.offset = None if offset is None else _checks.as_float_array("obs_offset", offset)
        if self.offset is not None:
            _checks.check_shape("obs_offset", self.offset, (self.matrix.shape[0],))

    @property
    def obs_dim(self) -> int:
        return self.matrix.shape[0]

    def __call__(self, state):
        out = self.matrix @ state
        return out if self.offset is None else out + self.offset

    def as_matrix(self, state_dim: int):
        return self.matrix


class IndexObservation(eqx.Module):
    """h(v) = v[indices]: observe a subset of the components.

    Args:
        indices: the observed components (a sequence of ints, static).
        state_dim: dx, for validation.

    Example:
        >>> kx.IndexObservation.every(2, state_dim=40)   # components 0, 2, 4, ...
    """

    indices: tuple[int, ...] = eqx.field(static=True)
    state_dim: int = eqx.field(static=True)

    def __init__(self, indices: Sequence[int], state_dim: int):
        idx = tuple(int(i) for i in np.asarray(indices).reshape(-1))
        if not idx:
            raise ValueError("`indices` must name at least one observed component")
        if min(idx) < 0 or max(idx) >= state_dim:
            raise ValueError(f"`indices` must lie in [0, {state_dim}); got min {min(idx)}, max {max(idx)}")
        self.indices = idx
        self.state_dim = int(state_dim)

    @classmethod
    def every(cls, step: int, state_dim: int, offset: int = 0) -> IndexObservation:
        """Observe components offset, offset + step, offset + 2 step, ..."""
        if step < 1:
            raise ValueError(f"`step` must be a positive integer; got {step}")
        return cls(range(offset, state_dim, step), state_dim)

    @property
    def obs_dim(self) -> int:
        return len(self.indices)

    def __call__(self, state):
        return state[jnp.asarray(self.indices)]

    def as_matrix(self, state_dim: int):
        return jnp.eye(state_dim)[jnp.asarray(self.indices)]


class FunctionObservation(eqx.Module):
    """A nonlinear observation operator h given as a function of one state."""

    function: Callable
    size: int = eqx.field(static=True)

    @property
    def obs_dim(self) -> int:
        return self.size

    def __call__(self, state):
        return self.function(state)

    def as_matrix(self, state_dim: int):
        raise TypeError("a nonlinear observation operator has no matrix; use its Jacobian")


def as_observation(value, init_mean) -> LinearObservation | IndexObservation | FunctionObservation:
    """Turn a user's `observation` argument into an operator, checking its output shape."""
    dx = init_mean.shape[0]
    if isinstance(value, (LinearObservation, IndexObservation, FunctionObservation)):
        operator = value
    elif callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        try:
            out = jax.eval_shape(value, init_mean)
        except Exception as err:  # noqa: BLE001 - report the user's error with context
            raise ValueError(f"`observation` failed on a state of shape ({dx},): {err}") from err
        if not hasattr(out, "shape") or len(out.shape) != 1:
            raise ValueError(
                f"`observation` must map a state ({dx},) to a vector (dy,); got {getattr(out, 'shape', type(out))}"
            )
        operator = FunctionObservation(value, out.shape[0])
    else:
        operator = LinearObservation(value)
    if isinstance(operator, LinearObservation) and operator.matrix.shape[1] != dx:
        raise ValueError(
            f"`observation` must have shape (dy, {dx}) to match `init_mean` ({dx},); "
            f"got {tuple(operator.matrix.shape)}"
        )
    if isinstance(operator, IndexObservation) and operator.state_dim != dx:
        raise ValueError(f"`observation` indexes a state of size {operator.state_dim} but `init_mean` has size {dx}")
    return operator
