"""Covariance operators: dense, diagonal, scalar times identity, zero.

Noise and background covariances of large models are structured: a diagonal
of size 10^5 must never be densified. Each operator applies C, C^{-1},
C^{1/2} and C^{-1/2} to vectors or to the columns of a matrix in its own
representation, and forms `matrix()` only when asked. A method written against
`AbstractCovariance` works with every representation (and with structured ones
added later, e.g. covariances diagonal in Fourier space).

`as_covariance` turns a user's argument into an operator: a 2-D array is a
dense covariance; diagonal and scalar covariances are asked for explicitly
(`DiagonalCovariance(variances)`, `ScalarCovariance(variance, dim)`); None
is a zero covariance (no noise).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _checks
from .linalg import cho_solve, logdet_from_chol, semidefinite_cholesky, solve_lower


class AbstractCovariance(eqx.Module):
    """A symmetric positive semi-definite d x d operator.

    `x` arguments are (d,) vectors or (d, k) matrices (operators act on columns).
    """

    @property
    @abc.abstractmethod
    def dim(self) -> int: ...

    @property
    @abc.abstractmethod
    def dtype(self): ...

    @abc.abstractmethod
    def matrix(self) -> Float[Array, "d d"]:
        """The dense d x d matrix (only for small d)."""

    @abc.abstractmethod
    def diagonal(self) -> Float[Array, " d"]: ...

    @abc.abstractmethod
    def mv(self, x):
        """C x."""

    @abc.abstractmethod
    def solve(self, x):
        """C^{-1} x."""

    @abc.abstractmethod
    def sqrt_mv(self, x):
        """L x for a square root L L^T = C (used to draw N(0, C) samples)."""

    @abc.abstractmethod
    def inv_sqrt_mv(self, x):
        """L^{-1} x for the same square root: |L^{-1} x|^2 = x^T C^{-1} x (whitening)."""

    @abc.abstractmethod
    def logdet(self) -> Float[Array, ""]: ...

    @abc.abstractmethod
    def scaled(self, factor) -> AbstractCovariance:
        """The operator of factor * C (factor a non-negative scalar)."""

    def is_zero(self) -> bool:
        """True only for `ZeroCovariance` (static: decides whether noise is drawn)."""
        return False


class DenseCovariance(AbstractCovariance):
    """A dense covariance matrix; square roots are Cholesky factors. Whitening (`solve`,
    `inv_sqrt_mv`, `logdet`) needs it positive definite; sampling (`sqrt_mv`) also accepts
    exactly zero rows and columns (components without noise, `linalg.semidefinite_cholesky`).
    Use `ZeroCovariance` for no noise at all."""

    covariance: Float[Array, "d d"]

    def __init__(self, covariance):
        self.covariance = _checks.as_float_array("covariance", covariance)
        _checks.check_covariance("covariance", self.covariance)

    @property
    def dim(self) -> int:
        return self.covariance.shape[0]

    @property
    def dtype(self):
        return self.covariance.dtype

    def matrix(self):
        return self.covariance

    def diagonal(self):
        return jnp.diagonal(self.covariance)

    def mv(self, x):
        return self.covariance @ x

    def cholesky(self):
        return jnp.linalg.cholesky(self.covariance)

    def solve(self, x):
        return cho_solve(self.cholesky(), x)

    def sqrt_mv(self, x):
        # draws need only L L^T = C: zero rows (unperturbed components) give zero noise, not NaN
        return semidefinite_cholesky(self.covariance) @ x

    def inv_sqrt_mv(self, x):
        return solve_lower(self.cholesky(), x)

    def logdet(self):
        return logdet_from_chol(self.cholesky())

    def scaled(self, factor):
        return DenseCovariance(factor * self.covariance)


def _columns(scale, x):
    """Multiply the rows of x (a (d,) vector or (d, k) matrix) by a (d,) scale."""
    return scale * x if x.ndim == 1 else scale[:, None] * x


class DiagonalCovariance(AbstractCovariance):
    """diag(variances): O(d) storage and work.

    Args:
        variances: (d,) non-negative variances.
    """

    variances: Float[Array, " d"]

    def __init__(self, variances):
        self.variances = _checks.as_float_array("variances", variances)
        _checks.check_ndim("variances", self.variances, 1, "a vector of variances (d,)")
        _checks.check_finite("variances", self.variances)
        if _checks.is_concrete(self.variances) and bool(jnp.any(self.variances < 0)):
            raise ValueError("`variances` of a DiagonalCovariance must be non-negative")

    @property
    def dim(self) -> int:
        return self.variances.shape[0]

    @property
    def dtype(self):
        return self.variances.dtype

    def matrix(self):
        return jnp.diag(self.variances)

    def diagonal(self):
        return self.variances

    def mv(self, x):
        return _columns(self.variances, x)

    def solve(self, x):
        return _columns(1.0 / self.variances, x)

    def sqrt_mv(self, x):
        return _columns(jnp.sqrt(self.variances), x)

    def inv_sqrt_mv(self, x):
        return _columns(1.0 / jnp.sqrt(self.variances), x)

    def logdet(self):
        return jnp.sum(jnp.log(self.variances))

    def scaled(self, factor):
        return DiagonalCovariance(factor * self.variances)


class ScalarCovariance(AbstractCovariance):
    """variance * I_d: O(1) storage.

    Args:
        variance: scalar variance (a traced leaf: differentiable, vmappable).
        dim: the dimension d (static).
    """

    variance: Float[Array, ""]
    size: int = eqx.field(static=True)

    def __init__(self, variance, dim: int):
        self.variance = _checks.as_float_array("variance", variance)
        if self.variance.ndim != 0:
            raise ValueError(f"`variance` of a ScalarCovariance must be a scalar; got shape {self.variance.shape}")
        _checks.check_finite("variance", self.variance)
        if _checks.is_concrete(self.variance) and float(self.variance) < 0:
            raise ValueError(f"`variance` of a ScalarCovariance must be non-negative; got {float(self.variance)}")
        if int(dim) < 1:
            raise ValueError(f"`dim` must be a positive integer; got {dim}")
        self.size = int(dim)

    @property
    def dim(self) -> int:
        return self.size

    @property
    def dtype(self):
        return self.variance.dtype

    def matrix(self):
        return self.variance * jnp.eye(self.size, dtype=self.variance.dtype)

    def diagonal(self):
        return jnp.full((self.size,), self.variance)

    def mv(self, x):
        return self.variance * x

    def solve(self, x):
        return x / self.variance

    def sqrt_mv(self, x):
        return jnp.sqrt(self.variance) * x

    def inv_sqrt_mv(self, x):
        return x / jnp.sqrt(self.variance)

    def logdet(self):
        return self.size * jnp.log(self.variance)

    def scaled(self, factor):
        return ScalarCovariance(factor * self.variance, self.size)


class ZeroCovariance(AbstractCovariance):
    """The zero covariance (no noise): sampling returns zeros; it cannot be inverted."""

    size: int = eqx.field(static=True)
    zero_dtype: object = eqx.field(static=True)

    def __init__(self, dim: int, dtype=jnp.float64):
        self.size = int(dim)
        self.zero_dtype = jnp.dtype(dtype)

    @property
    def dim(self) -> int:
        return self.size

    @property
    def dtype(self):
        return self.zero_dtype

    def matrix(self):
        return jnp.zeros((self.size, self.size), self.zero_dtype)

    def diagonal(self):
        return jnp.zeros((self.size,), self.zero_dtype)

    def mv(self, x):
        return jnp.zeros_like(x)

    def solve(self, x):
        raise ValueError("a zero covariance cannot be inverted")

    def sqrt_mv(self, x):
        return jnp.zeros_like(x)

    def inv_sqrt_mv(self, x):
        raise ValueError("a zero covariance cannot be inverted")

    def logdet(self):
        raise ValueError("a zero covariance has no log-determinant")

    def scaled(self, factor):
        return self

    def is_zero(self) -> bool:
        return True


def as_covariance(name: str, value, dim: int, dtype, *, allow_zero: bool = True) -> AbstractCovariance:
    """Turn a user's covariance argument into an operator of dimension `dim`.

    Args:
        name: the argument's name (for error messages).
        value: an `AbstractCovariance`, a (dim, dim) array (dense), or None (zero).
        dim: the required dimension.
        dtype: the model's dtype (a mismatch is a TypeError naming `name`).
        allow_zero: whether None / `ZeroCovariance` is acceptable.
    """
    if value is None:
        if not allow_zero:
            raise ValueError(f"`{name}` is required (a covariance of size {dim})")
        return ZeroCovariance(dim, dtype)
    if not isinstance(value, AbstractCovariance):
        array = _checks.as_float_array(name, value)
        if array.ndim != 2:
            raise ValueError(
                f"`{name}` must be a ({dim}, {dim}) covariance matrix or a covariance operator "
                f"(DiagonalCovariance, ScalarCovariance); got an array of shape {tuple(array.shape)}"
            )
        _checks.check_covariance(name, array, dim)
        if allow_zero and _checks.is_concrete(array) and not np.any(np.asarray(array) != 0):
            return ZeroCovariance(dim, dtype)  # an all-zero matrix means no noise
        value = DenseCovariance(array)
    if value.dim != dim:
        raise ValueError(f"`{name}` must have size {dim}; got a {type(value).__name__} of size {value.dim}")
    if value.is_zero() and not allow_zero:
        raise ValueError(f"`{name}` cannot be zero")
    if not allow_zero and isinstance(value, (ScalarCovariance, DiagonalCovariance)):
        variances = value.variance if isinstance(value, ScalarCovariance) else value.variances
        if _checks.is_concrete(variances) and float(jnp.min(variances)) <= 0:
            raise ValueError(f"`{name}` must be positive definite; its smallest variance is {float(jnp.min(variances))}")
    if not value.is_zero() and value.dtype != dtype:
        raise TypeError(f"dtype mix: `{name}` is {value.dtype} but the model's arrays are {dtype}")
    if value.is_zero() and value.dtype != dtype:
        value = ZeroCovariance(dim, dtype)
    return value
