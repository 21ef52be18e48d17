"""Conversion and checks of model parameters (private to kalmax.models).

Parameters become JAX float arrays so that they are pytree leaves traced by
`jit`, `vmap` and `grad`. Python numbers take the default float dtype (float64
when x64 is enabled); arrays keep their floating dtype. Models cast their
parameters to the dtype of the state when they evaluate, so a float32 state
stays float32 whatever the parameters' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


def as_parameter(name: str, value, shapes: tuple[tuple[int, ...], ...] = ((),)) -> jax.Array:
    """A float array with one of the allowed `shapes`, or a clear error naming `name`."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"`{name}` must be a float or an array of floats; got {type(value).__name__}")
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        array = jnp.asarray(value)
    else:
        try:
            array = jnp.asarray(value, dtype=jnp.result_type(float))
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a float or an array of floats; got {type(value).__name__}") from err
    if jnp.issubdtype(array.dtype, jnp.integer):
        array = array.astype(jnp.result_type(float))
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a real floating dtype (float32 or float64); got {array.dtype}")
    if tuple(array.shape) not in shapes:
        allowed = " or ".join(str(s) for s in shapes)
        raise ValueError(f"`{name}` must have shape {allowed}; got {tuple(array.shape)}")
    _checks.check_finite(name, array)
    return array


def check_positive(name: str, array, allow_zero: bool = False) -> None:
    """Value check, only when the array is concrete (skipped under tracing)."""
    if not _checks.is_concrete(array):
        return
    values = np.asarray(array)
    bad = np.any(values < 0) if allow_zero else np.any(values <= 0)
    if bad:
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be {what}; got {values if values.ndim == 0 else values.min()}")


def as_size(name: str, value, minimum: int) -> int:
    """A static Python int >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a Python int (it fixes array shapes); got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}")
    return int(value)


def check_state(name: str, state, shape: tuple[int, ...], model: str) -> None:
    """Static shape and dtype check of one state (fine under jit: shapes are static)."""
    if not hasattr(state, "shape") or not hasattr(state, "dtype"):
        raise TypeError(f"`{name}` must be an array of shape {shape} for {model}; got {type(state).__name__}")
    if tuple(state.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} for {model} (one state; vmap over an ensemble); "
            f"got {tuple(state.shape)}"
        )
    if not jnp.issubdtype(state.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a real floating dtype (float32 or float64); got {state.dtype}")


def check_ensemble_states(name: str, states, dim: int, model: str) -> None:
    """Static shape and dtype check of an ensemble in columns, (dim, J)."""
    if not hasattr(states, "shape") or states.ndim != 2 or states.shape[0] != dim:
        raise ValueError(
            f"`{name}` must have shape ({dim}, J) for {model} (members in the columns); "
            f"got {getattr(states, 'shape', type(states).__name__)}"
        )
    if not jnp.issubdtype(states.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a real floating dtype (float32 or float64); got {states.dtype}")
