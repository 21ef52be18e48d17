"""Covariance operators agree with their dense matrices; bad input is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.covariance import as_covariance


def operators(dtype=np.float64):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    return {
        "dense": kx.DenseCovariance((A @ A.T + np.eye(5)).astype(dtype)),
        "diagonal": kx.DiagonalCovariance(rng.uniform(0.5, 2.0, size=5).astype(dtype)),
        "scalar": kx.ScalarCovariance(np.asarray(1.7, dtype), 5),
    }


@pytest.mark.parametrize("name", ["dense", "diagonal", "scalar"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_operator_matches_dense_matrix(name, dtype, tol):
    cov = operators(dtype)[name]
    C = np.asarray(cov.matrix(), np.float64)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(dtype)
    v = x[:, 0]
    assert cov.dim == 5 and cov.dtype == dtype
    assert cov.mv(jnp.asarray(x)).dtype == dtype
    np.testing.assert_allclose(cov.mv(x), C @ x, rtol=tol, atol=tol)
    np.testing.assert_allclose(cov.mv(v), C @ v, rtol=tol, atol=tol)
    np.testing.assert_allclose(cov.solve(x), np.linalg.solve(C, x), rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(cov.diagonal(), np.diag(C), rtol=tol)
    # sqrt_mv applies a factor L with L L^T = C; inv_sqrt_mv applies its inverse
    L = np.asarray(cov.sqrt_mv(jnp.eye(5, dtype=dtype)), np.float64)
    np.testing.assert_allclose(L @ L.T, C, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(cov.inv_sqrt_mv(cov.sqrt_mv(x)), x, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(cov.logdet(), np.linalg.slogdet(C)[1], rtol=10 * tol)
    np.testing.assert_allclose(cov.scaled(2.0).matrix(), 2.0 * C, rtol=tol)


def test_zero_covariance():
    zero = kx.ZeroCovariance(3)
    assert zero.is_zero() and not kx.ScalarCovariance(1.0, 3).is_zero()
    np.testing.assert_array_equal(zero.sqrt_mv(jnp.ones(3)), 0.0)
    with pytest.raises(ValueError, match="cannot be inverted"):
        zero.solve(jnp.ones(3))


def test_traced_scalar_variance_jit_vmap_grad():
    def quad(variance):
        return jnp.sum(kx.ScalarCovariance(variance, 4).solve(jnp.ones(4)))

    np.testing.assert_allclose(jax.jit(quad)(2.0), 2.0)
    np.testing.assert_allclose(jax.vmap(quad)(jnp.array([1.0, 4.0])), [4.0, 1.0])
    np.testing.assert_allclose(jax.grad(quad)(2.0), -1.0)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (np.ones(3), ValueError, r"`obs_cov` must be a \(3, 3\) covariance matrix or a covariance operator.*got an array of shape \(3,\)"),
        (np.eye(4), ValueError, r"`obs_cov` must have shape \(3, 3\); got \(4, 4\)"),
        (kx.DiagonalCovariance(np.ones(4)), ValueError, r"`obs_cov` must have size 3; got a DiagonalCovariance of size 4"),
        (kx.DiagonalCovariance(np.ones(3, np.float32)), TypeError, r"dtype mix: `obs_cov` is float32"),
        (None, ValueError, r"`obs_cov` is required"),
        (np.array([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]]), ValueError, r"`obs_cov` is not positive semi-definite"),
    ],
)
def test_as_covariance_errors(value, error, match):
    with pytest.raises(error, match=match):
        as_covariance("obs_cov", value, 3, jnp.float64, allow_zero=False)


def test_diagonal_and_scalar_validation():
    with pytest.raises(ValueError, match="must be non-negative"):
        kx.DiagonalCovariance(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"`variances` must be a vector"):
        kx.DiagonalCovariance(np.eye(2))
    with pytest.raises(ValueError, match=r"`variance` of a ScalarCovariance must be a scalar"):
        kx.ScalarCovariance(np.ones(2), 2)
    with pytest.raises(ValueError, match=r"`dim` must be a positive integer"):
        kx.ScalarCovariance(1.0, 0)
