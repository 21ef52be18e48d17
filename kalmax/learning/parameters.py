"""Constrained parameters for learning: small Modules holding an unconstrained leaf.

Gradient steps move the unconstrained leaf freely; `.value` maps it to the
constrained parameter, so a learned variance stays positive, an inflation stays
at least 1 and a covariance stays positive definite:

    Positive(0.1)            value = exp(u)                      (variances, radii, scales)
    AtLeast(1.05, lower=1)   value = lower + exp(u)              (inflation >= 1)
    CholeskyCovariance(C)    value = L L^T, L lower triangular with diagonal exp(.)  (full covariances)

Each is an `equinox.Module`, so it is a pytree leaf holder that `fit`,
`eqx.partition` and `jax.grad` see; build the model or method from `.value`
inside the loss. Elementwise bounds of the inversion side (`kx.Bounds`) serve
the same purpose for parameter vectors with box constraints.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks


def _concrete(name: str, value) -> np.ndarray | None:
    array = jnp.asarray(value)
    return np.asarray(array) if _checks.is_concrete(array) else None


class Positive(eqx.Module):
    """A positive parameter (scalar or array): value = exp(log_value).

    Args:
        value: the initial value, > 0 everywhere.
    """

    log_value: Float[Array, "..."]

    def __init__(self, value):
        concrete = _concrete("value", value)
        if concrete is not None and not np.all(concrete > 0):
            raise ValueError(f"`value` of a Positive parameter must be > 0 everywhere; got {concrete}")
        self.log_value = jnp.log(_checks.as_float_array("value", value))

    @property
    def value(self) -> Float[Array, "..."]:
        return jnp.exp(self.log_value)


class AtLeast(eqx.Module):
    """A parameter bounded below: value = lower + exp(log_excess) (e.g. an inflation >= 1).

    Args:
        value: the initial value, > lower everywhere.
        lower: the bound (static float).
    """

    log_excess: Float[Array, "..."]
    lower: float = eqx.field(static=True)

    def __init__(self, value, lower: float):
        concrete = _concrete("value", value)
        lower = float(lower)
        if concrete is not None and not np.all(concrete > lower):
            raise ValueError(f"`value` must be > lower = {lower} everywhere; got {concrete}")
        self.lower = lower
        self.log_excess = jnp.log(_checks.as_float_array("value", value) - lower)

    @property
    def value(self) -> Float[Array, "..."]:
        return self.lower + jnp.exp(self.log_excess)


class CholeskyCovariance(eqx.Module):
    """A symmetric positive-definite matrix C = L L^T, with L lower triangular and its
    diagonal exp(log_diagonal) > 0; the free entries are the strict lower triangle.

    Args:
        matrix: the initial covariance (d, d), symmetric positive definite.
    """

    log_diagonal: Float[Array, " d"]
    strict_lower: Float[Array, "d d"]

    def __init__(self, matrix):
        matrix = _checks.as_float_array("matrix", matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`matrix` must be a square (d, d) covariance; got shape {tuple(matrix.shape)}")
        _checks.check_positive_definite("matrix", matrix)
        chol = jnp.linalg.cholesky(matrix)
        self.log_diagonal = jnp.log(jnp.diagonal(chol))
        self.strict_lower = jnp.tril(chol, -1)

    @property
    def factor(self) -> Float[Array, "d d"]:
        """L (lower triangular, positive diagonal)."""
        return jnp.tril(self.strict_lower, -1) + jnp.diag(jnp.exp(self.log_diagonal))

    @property
    def value(self) -> Float[Array, "d d"]:
        factor = self.factor
        return factor @ factor.T


__all__ = ["AtLeast", "CholeskyCovariance", "Positive"]
