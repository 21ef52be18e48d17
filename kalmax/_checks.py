"""Input validation at the Python level, before anything is traced.

Every check names the argument and states what was expected and what was
given. Value checks (finite, symmetric, positive semi-definite) run only on
concrete arrays: inside `jit`/`vmap`/`grad` the values are tracers and only the
shape checks apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, value) -> jax.Array:
    """Convert to a JAX array and require a floating dtype."""
    if isinstance(value, jax.Array):
        array = value
    else:
        try:
            array = jnp.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be an array of floats; got {type(value).__name__}") from err
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype (float32 or float64); got {array.dtype}"
        )
    return array


def check_same_dtype(named_arrays: Sequence[tuple[str, jax.Array]]) -> None:
    """All arrays share one floating dtype; otherwise name the first mismatch."""
    named = [(n, a) for n, a in named_arrays if a is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, array in named[1:]:
        if array.dtype != first.dtype:
            raise TypeError(
                f"dtype mix: `{name}` is {array.dtype} but `{first_name}` is {first.dtype}; "
                "cast all model arrays and observations to one dtype"
            )


def check_ndim(name: str, array, ndim: int, what: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must be {what} (rank {ndim}); got shape {tuple(array.shape)}")


def check_shape(name: str, array, expected: tuple, because: str = "") -> None:
    if tuple(array.shape) != tuple(expected):
        reason = f" {because}" if because else ""
        raise ValueError(
            f"`{name}` must have shape {tuple(expected)}{reason}; got {tuple(array.shape)}"
        )


def check_covariance(name: str, cov, dim: int | None = None, because: str = "") -> None:
    """Square, matching `dim`, and (when concrete) finite, symmetric and PSD."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"`{name}` must be a square covariance matrix; got shape {tuple(cov.shape)}")
    if dim is not None and cov.shape[0] != dim:
        reason = f" {because}" if because else ""
        raise ValueError(
            f"`{name}` must have shape {(dim, dim)}{reason}; got {tuple(cov.shape)}"
        )
    if not is_concrete(cov):
        return
    values = np.asarray(cov, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` has non-finite entries (NaN or inf)")
    scale = max(np.max(np.abs(values)), np.finfo(np.float64).tiny)
    tol = 1e3 * np.finfo(np.dtype(cov.dtype)).eps * scale
    asym = np.max(np.abs(values - values.T))
    if asym > tol:
        raise ValueError(
            f"`{name}` is not symmetric (max |C - C^T| = {asym:.3g}, tolerance {tol:.3g})"
        )
    smallest = np.linalg.eigvalsh(0.5 * (values + values.T))[0]
    if smallest < -tol * values.shape[0]:
        raise ValueError(
            f"`{name}` is not positive semi-definite (smallest eigenvalue {smallest:.3g})"
        )


def check_positive_definite(name: str, cov) -> None:
    """For covariances that must be invertible (when concrete): Cholesky must succeed."""
    if not is_concrete(cov):
        return
    try:
        np.linalg.cholesky(np.asarray(cov, dtype=np.float64))  # batched over leading axes
    except np.linalg.LinAlgError as err:
        raise ValueError(
            f"`{name}` is not positive definite (Cholesky factorisation failed)"
        ) from err


def check_finite(name: str, array) -> None:
    if is_concrete(array) and not np.all(np.isfinite(np.asarray(array))):
        raise ValueError(f"`{name}` has non-finite entries (NaN or inf)")


def check_key(name: str, key, required: bool = True, what: str = "") -> None:
    """Require one JAX PRNG key: a typed key (`jax.random.key(seed)`, shape ()) or a legacy
    raw key (`jax.random.PRNGKey(seed)`, uint32 of shape (2,)). Works on tracers (only the
    dtype and shape are read). `what` says why the key is needed (for None)."""
    if key is None:
        if required:
            raise ValueError(f"`{name}` is required{what}; pass jax.random.key(seed)")
        return
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is None or not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(f"`{name}` must be a JAX PRNG key, e.g. jax.random.key(0); got {type(key).__name__}"
                        + (f" {key!r}" if isinstance(key, (int, float)) else ""))
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"`{name}` must be one PRNG key (shape ()); got a batch of keys of shape {shape}: "
                             "pass one key, or vmap over the batch")
        return
    if dtype == np.uint32 and shape == (2,):
        return  # legacy raw key, jax.random.PRNGKey(seed)
    if dtype == np.uint32 and len(shape) >= 2 and shape[-1] == 2:
        raise ValueError(f"`{name}` must be one PRNG key; got a batch of raw keys of shape {shape}: "
                         "pass one key, or vmap over the batch")
    raise TypeError(f"`{name}` must be a JAX PRNG key, e.g. jax.random.key(0); got an array of dtype {dtype} "
                    f"and shape {shape}")


def as_count(name: str, value, minimum: int = 1) -> int:
    """A Python int >= minimum from an int (or a NumPy / concrete JAX integer scalar);
    floats and bools are refused (10.5 steps is a mistake, not 10)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer >= {minimum}; got the bool {value}")
    if isinstance(value, (int, np.integer)):
        count = int(value)
    elif isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and is_concrete(value) \
            and jnp.issubdtype(value.dtype, jnp.integer):
        count = int(value)
    else:
        raise TypeError(f"`{name}` must be an integer >= {minimum}; got {type(value).__name__} {value!r}")
    if count < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {count}")
    return count
