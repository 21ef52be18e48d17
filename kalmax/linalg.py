"""Covariance algebra shared by every method.

Small, pure functions: symmetrisation, Cholesky-based solves, the "triangularise"
operation of square-root filters, and Gaussian log-densities from a Cholesky
factor. Nothing here forms a matrix larger than its inputs.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

LOG_2PI = math.log(2.0 * math.pi)


def symmetrize(matrix: Float[Array, "... d d"]) -> Float[Array, "... d d"]:
    """Return (A + A^T) / 2, the nearest symmetric matrix in Frobenius norm."""
    return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def tria(factor: Float[Array, "d k"]) -> Float[Array, "d d"]:
    """Lower-triangular L with L L^T = A A^T, by a QR decomposition of A^T.

    This is the "triangularisation" of square-root filters (Arasaratnam &
    Haykin 2008; Yaghoobi et al. 2022): the sum of outer products of any
    factors, [A1, A2] [A1, A2]^T, is factored without ever forming it, so the
    result stays positive semi-definite in finite precision. Signs are chosen
    so that the diagonal of L is non-negative.

    Args:
        factor: (d, k) matrix A with k >= d (or any k; the result is d x d).
    """
    d = factor.shape[0]
    r = jnp.linalg.qr(factor.T, mode="r")  # (min(k, d), d)
    if r.shape[0] < d:
        r = jnp.concatenate([r, jnp.zeros((d - r.shape[0], d), factor.dtype)], axis=0)
    lower = r.T
    signs = jnp.where(jnp.diagonal(lower) < 0, -1.0, 1.0).astype(factor.dtype)
    return lower * signs[None, :]


def cho_solve(chol: Float[Array, "d d"], rhs: Float[Array, "d ..."]) -> Float[Array, "d ..."]:
    """Solve (L L^T) x = rhs given the lower Cholesky factor L."""
    return jsl.cho_solve((chol, True), rhs)


def solve_lower(chol: Float[Array, "d d"], rhs: Float[Array, "d ..."]) -> Float[Array, "d ..."]:
    """Solve L x = rhs for lower-triangular L."""
    return jsl.solve_triangular(chol, rhs, lower=True)


def semidefinite_cholesky(matrix: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """A lower-triangular L with L L^T = matrix that stays finite when rows (and columns) of a
    positive semi-definite matrix are exactly zero: components without noise, or a zero matrix
    built under `jit`, where it cannot be recognised as `ZeroCovariance`. Those rows of L are
    zero; the other entries are the Cholesky factor of the remaining block. For a positive
    definite matrix it is `jnp.linalg.cholesky`, bit for bit (the diagonal shift is zero).
    (Plain Cholesky divides by the zero pivot: NaN.)"""
    zero_rows = jnp.all(matrix == 0, axis=-1)
    shifted = matrix + jnp.diag(zero_rows.astype(matrix.dtype))  # a unit pivot for each zero row
    return jnp.where(zero_rows[:, None], jnp.zeros((), matrix.dtype), jnp.linalg.cholesky(shifted))


def logdet_from_chol(chol: Float[Array, "d d"]) -> Float[Array, ""]:
    """log det(L L^T) = 2 sum log |diag L|."""
    return 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol))))


def gaussian_logpdf_chol(
    residual: Float[Array, " d"], chol: Float[Array, "d d"]
) -> Float[Array, ""]:
    """log N(residual; 0, L L^T) = -1/2 (|L^{-1} r|^2 + log det(L L^T) + d log 2 pi)."""
    whitened = solve_lower(chol, residual)
    d = residual.shape[-1]
    return -0.5 * (jnp.sum(whitened**2) + logdet_from_chol(chol) + d * LOG_2PI)


def psd_sqrt(cov: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """Symmetric square root S with S S^T = C for a positive *semi*-definite C.

    Uses an eigendecomposition (negative round-off eigenvalues clipped to 0), so
    it also serves singular covariances such as a zero process noise. Used for
    sampling; filters use Cholesky factors.
    """
    eigvals, eigvecs = jnp.linalg.eigh(symmetrize(cov))
    return (eigvecs * jnp.sqrt(jnp.clip(eigvals, 0.0))[None, :]) @ eigvecs.T


def _loewner(eigvals, values, derivs, tol):
    """Divided differences (f(l_i) - f(l_j)) / (l_i - l_j), with f'(l) on (near-)ties."""
    diff = eigvals[:, None] - eigvals[None, :]
    close = jnp.abs(diff) <= tol
    safe = jnp.where(close, 1.0, diff)
    mean_deriv = 0.5 * (derivs[:, None] + derivs[None, :])
    return jnp.where(close, mean_deriv, (values[:, None] - values[None, :]) / safe)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def sym_matrix_function(function, matrix: Float[Array, "n n"], *params) -> Float[Array, "n n"]:
    """f(C) = V f(L) V^T for a symmetric C = V L V^T and a scalar function f.

    By an eigendecomposition; differentiable everywhere including at repeated
    eigenvalues (where the derivative of `eigh` itself is undefined), through the
    Daleckii-Krein formula dF = V (D o (V^T dC V)) V^T with the divided
    differences D of f. Ensemble transforms need this: the ETKF's
    (Y Y^T + (N-1) I)^{-1/2} has N - p repeated eigenvalues when there are fewer
    observations p than members.

    Args:
        function: `function(eigvals, *params)`, elementwise in the eigenvalues; a
            module-level function (static: it must not close over traced values).
        matrix: (n, n) symmetric matrix.
        *params: arrays passed to `function`, treated as constants (no derivative
            flows to them).
    """
    eigvals, eigvecs = jnp.linalg.eigh(symmetrize(matrix))
    return (eigvecs * function(eigvals, *params)) @ eigvecs.T


@sym_matrix_function.defjvp
def _sym_matrix_function_jvp(function, primals, tangents):
    matrix, params = primals[0], primals[1:]
    tangent = tangents[0]
    eigvals, eigvecs = jnp.linalg.eigh(symmetrize(matrix))
    values = function(eigvals, *params)
    derivs = jax.vmap(jax.grad(lambda x: function(x[None], *params)[0]))(eigvals)
    out = (eigvecs * values) @ eigvecs.T
    tol = 1e3 * jnp.finfo(eigvals.dtype).eps * jnp.maximum(jnp.max(jnp.abs(eigvals)), 1.0)
    loewner = _loewner(eigvals, values, derivs, tol)
    rotated = eigvecs.T @ symmetrize(tangent) @ eigvecs
    return out, eigvecs @ (loewner * rotated) @ eigvecs.T


def sym_inv_sqrt(matrix: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """C^{-1/2}, the symmetric inverse square root of a symmetric positive-definite C
    (differentiable at repeated eigenvalues: see `sym_matrix_function`)."""
    return sym_matrix_function(_inv_sqrt, matrix)


def _inv_sqrt(x):
    return x**-0.5


def mean_preserving_rotation(key, size: int, dtype) -> Float[Array, "n n"]:
    """A random orthogonal n x n matrix Q with Q 1 = 1 (so Q^T 1 = 1).

    Applied to ensemble anomalies (rows), it changes the members but not their
    mean or covariance: DAPPER's `rot=True` (its `genOG_1`). Built as
    Q = B diag(1, Q') B with B the Householder reflection that maps e_1 to
    1/sqrt(n) (closed form, B = B^T = B^{-1}) and Q' Haar-distributed on
    O(n - 1) (QR of a Gaussian matrix with the signs of R's diagonal fixed;
    Mezzadri 2007).

    For float64 the Gaussian entries are drawn in float32 and the QR runs in
    float64: the rotation is orthogonal to float64 precision, the rounding of
    the draws to 24 bits is immaterial to its distribution, and float64's
    normal transform would cost 7 us of a 95 us Lorenz-96 ETKF cycle.
    """
    return rotate_rows(key, jnp.eye(size, dtype=dtype))


def _haar_orthogonal(key, size: int, dtype):
    """A Haar-distributed orthogonal size x size matrix (see `mean_preserving_rotation`)."""
    draw_dtype = jnp.float32 if jnp.dtype(dtype) == jnp.float64 else dtype
    gauss = jax.random.normal(key, (size, size), draw_dtype).astype(dtype)
    q, r = jnp.linalg.qr(gauss)
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def rotate_rows(key, rows: Float[Array, "n d"]) -> Float[Array, "n d"]:
    """Q X for the random mean-preserving rotation Q of `mean_preserving_rotation(key, n, X.dtype)`.

    Q = B diag(1, Q') B is applied without forming it: the reflection
    B = I - 2 u u^T / |u|^2 (u = e_1 - 1/sqrt(n), |u|^2 = 2 (1 - 1/sqrt(n)))
    as two rank-one updates and Q' to rows 1..n-1, O(n^2 d) with one matrix
    product instead of three. (The filters form Q = `rotate_rows(key, I)` and
    multiply: under `vmap` XLA:CPU threads the batched product of Q' with a
    slice, which costs more than it saves on small ensembles.)
    """
    size, dtype = rows.shape[0], rows.dtype
    inner = _haar_orthogonal(key, size - 1, dtype)
    root = jnp.sqrt(jnp.asarray(size, dtype))
    direction = jnp.full((size,), -1.0 / root, dtype).at[0].add(1.0)
    scale = 1.0 / (1.0 - 1.0 / root)  # 2 / |u|^2

    def reflect(x):
        return x - scale * jnp.outer(direction, direction @ x)

    reflected = reflect(rows)
    return reflect(jnp.concatenate([reflected[:1], inner @ reflected[1:]], axis=0))
