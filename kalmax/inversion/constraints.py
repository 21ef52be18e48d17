"""Constraining transforms: unconstrained parameters u in R^d -> physical theta.

Ensemble inversion methods update unconstrained parameters (where the prior
is Gaussian and Kalman updates make sense) and report physical ones. The
transform acts elementwise, each component with its own bounds (the
convention of EnsembleKalmanProcesses.jl's `bounded_below`, `bounded_above`,
`bounded`):

    no bounds          theta = u
    lower a            theta = a + exp(u)
    upper b            theta = b - exp(-u)
    interval (a, b)    theta = a + (b - a) / (1 + exp(-u))

Bounds are traced arrays, so a problem can be `vmap`ped over them; +-inf
marks an absent bound.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks


class Bounds(eqx.Module):
    """Elementwise bounds lower < theta < upper (use -inf / inf for none).

    Attributes:
        lower: (d,) lower bounds, -inf where unbounded below.
        upper: (d,) upper bounds, inf where unbounded above.
    """

    lower: Float[Array, " d"]
    upper: Float[Array, " d"]

    def __init__(self, lower, upper):
        lower = _checks.as_float_array("lower", lower)
        upper = _checks.as_float_array("upper", upper)
        lower, upper = jnp.broadcast_arrays(jnp.atleast_1d(lower), jnp.atleast_1d(upper))
        if lower.ndim != 1:
            raise ValueError(f"`lower` and `upper` must be scalars or (d,) vectors; got shape {tuple(lower.shape)}")
        if _checks.is_concrete(lower) and _checks.is_concrete(upper):
            lo, hi = np.asarray(lower), np.asarray(upper)
            if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
                raise ValueError("Bounds: `lower` and `upper` must not be NaN (use -inf / inf for no bound)")
            bad = np.flatnonzero(~(lo < hi))
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"Bounds: `lower` must be below `upper`; at index {i} lower = {lo[i]} >= upper = {hi[i]} "
                    "(inverted or empty interval)"
                )
        self.lower, self.upper = lower, upper

    @property
    def dim(self) -> int:
        return self.lower.shape[0]

    def _parts(self, like):
        lower = jnp.broadcast_to(self.lower.astype(like.dtype), like.shape)
        upper = jnp.broadcast_to(self.upper.astype(like.dtype), like.shape)
        has_lower, has_upper = jnp.isfinite(lower), jnp.isfinite(upper)
        # finite stand-ins so that unselected branches never produce inf * 0 = NaN gradients
        return jnp.where(has_lower, lower, 0.0), jnp.where(has_upper, upper, 1.0), has_lower, has_upper

    def constrain(self, u: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """theta = transform(u), elementwise."""
        lower, upper, has_lower, has_upper = self._parts(u)
        both, only_lower, only_upper = has_lower & has_upper, has_lower & ~has_upper, ~has_lower & has_upper
        u_both = jnp.where(both, u, 0.0)
        u_lower = jnp.where(only_lower, u, 0.0)
        u_upper = jnp.where(only_upper, u, 0.0)
        return jnp.where(
            both,
            lower + (upper - lower) * jax.nn.sigmoid(u_both),
            jnp.where(only_lower, lower + jnp.exp(u_lower), jnp.where(only_upper, upper - jnp.exp(-u_upper), u)),
        )

    def unconstrain(self, theta: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """u = transform^{-1}(theta), elementwise; theta must lie strictly inside the bounds."""
        lower, upper, has_lower, has_upper = self._parts(theta)
        both, only_lower, only_upper = has_lower & has_upper, has_lower & ~has_upper, ~has_lower & has_upper
        fraction = jnp.where(both, (theta - lower) / (upper - lower), 0.5)
        above = jnp.where(only_lower, theta - lower, 1.0)
        below = jnp.where(only_upper, upper - theta, 1.0)
        return jnp.where(
            both,
            jnp.log(fraction) - jnp.log1p(-fraction),
            jnp.where(only_lower, jnp.log(above), jnp.where(only_upper, -jnp.log(below), theta)),
        )


def unbounded(dim: int, dtype=None) -> Bounds:
    """No constraint on any of `dim` components (theta = u)."""
    dtype = dtype or jnp.result_type(float)
    return Bounds(jnp.full((dim,), -jnp.inf, dtype), jnp.full((dim,), jnp.inf, dtype))


def positive(dim: int, dtype=None) -> Bounds:
    """theta > 0 componentwise (theta = exp(u))."""
    dtype = dtype or jnp.result_type(float)
    return Bounds(jnp.zeros((dim,), dtype), jnp.full((dim,), jnp.inf, dtype))


def bounded(lower, upper) -> Bounds:
    """lower < theta < upper componentwise (either may be +-inf)."""
    return Bounds(lower, upper)
