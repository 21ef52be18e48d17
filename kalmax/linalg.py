"""Covariance algebra shared by every method.

Small, pure functions: symmetrisation, Cholesky-based solves, the "triangularise"
operation of square-root filters, and Gaussian log-densities from a Cholesky
factor. Nothing here forms a matrix larger than its inputs.
"""

from __future__ import annotations

import math

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
