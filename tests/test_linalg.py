"""kalmax.linalg: the random mean-preserving rotation (DAPPER's `rot=True`) and the semi-definite Cholesky factor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.linalg import mean_preserving_rotation, rotate_rows


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rotation_is_orthogonal_mean_preserving_and_has_haar_moments(dtype):
    # Q = 11^T/n + U Q' U^T with U an orthonormal basis of 1's complement and Q' Haar on O(n-1):
    # E[Q] = 11^T/n, and E[(Q - 11^T/n)_ij^2] = P_ii P_jj / (n-1) = (n-1)/n^2 (P = I - 11^T/n).
    n, draws = 5, 4000
    keys = jax.random.split(jax.random.key(0), draws)
    rotations = np.asarray(jax.jit(jax.vmap(lambda k: mean_preserving_rotation(k, n, dtype)))(keys), np.float64)
    assert rotations.dtype == np.float64 and jax.eval_shape(lambda: mean_preserving_rotation(keys[0], n, dtype)).dtype == dtype
    tol = 1e-12 if dtype == jnp.float64 else 1e-5
    eye = np.eye(n)
    np.testing.assert_allclose(np.einsum("sij,skj->sik", rotations, rotations), np.broadcast_to(eye, rotations.shape), atol=tol)
    np.testing.assert_allclose(rotations.sum(axis=2), 1.0, atol=tol)  # Q 1 = 1
    centred = rotations - 1.0 / n
    # entries have variance (n-1)/n^2 = 0.16 and |entries| <= 1: the Monte-Carlo sd of a mean over 4000
    # draws is < 0.4 / 63 ~ 0.0063, of a mean square < 0.5 / 63 ~ 0.008; tolerances are ~5 sd
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=0.035)
    np.testing.assert_allclose((centred**2).mean(axis=0), (n - 1) / n**2, atol=0.04)
    # Haar, not a fixed-sign family: det(Q') = +-1 equally often
    dets = np.linalg.det(rotations)
    assert abs(np.mean(dets > 0) - 0.5) < 0.05


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rotate_rows_applies_the_rotation_without_forming_it(dtype):
    key = jax.random.key(3)
    rows = jax.random.normal(jax.random.key(4), (7, 11), dtype)
    expected = np.asarray(mean_preserving_rotation(key, 7, dtype), np.float64) @ np.asarray(rows, np.float64)
    out = jax.jit(rotate_rows)(key, rows)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1e-12 if dtype == jnp.float64 else 1e-5)


def test_semidefinite_cholesky_keeps_zero_rows_finite_and_is_cholesky_otherwise():
    from kalmax.linalg import semidefinite_cholesky

    spd = np.array([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 1.0]])
    np.testing.assert_array_equal(semidefinite_cholesky(jnp.asarray(spd)), jnp.linalg.cholesky(jnp.asarray(spd)))
    # components 0 and 2 without noise (plain Cholesky: NaN from the zero first pivot)
    partial = np.zeros((4, 4))
    partial[np.ix_([1, 3], [1, 3])] = [[1.0, 0.4], [0.4, 2.0]]
    assert not np.all(np.isfinite(np.asarray(jnp.linalg.cholesky(jnp.asarray(partial)))))
    for matrix in (partial, np.zeros((3, 3))):
        factor = np.asarray(jax.jit(semidefinite_cholesky)(jnp.asarray(matrix)))
        assert np.all(np.isfinite(factor)) and np.allclose(np.tril(factor), factor)
        np.testing.assert_allclose(factor @ factor.T, matrix, rtol=0, atol=1e-15)
    # a zero covariance built under jit (not recognisable as ZeroCovariance) samples zero noise,
    # and the gradient through the factor of the noisy block is finite
    draw = jax.jit(lambda scale: kx.DenseCovariance(scale * jnp.eye(2)).sqrt_mv(jnp.ones(2)))(0.0)
    np.testing.assert_array_equal(draw, np.zeros(2))
    grad = jax.grad(lambda s: jnp.sum(kx.DenseCovariance(s * jnp.asarray(partial)).sqrt_mv(jnp.ones(4))))(2.0)
    assert np.isfinite(grad)
