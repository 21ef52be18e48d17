"""A linear Gaussian inverse problem with its exact posterior: the reference test of every method.

    y = H u + eta,  eta ~ N(0, Gamma),  u ~ N(m_0, C_0)

has the Gaussian posterior N(m, C) (e.g. Stuart 2010, "Inverse problems: a
Bayesian perspective", Acta Numerica 19, Example 6.23; Kaipio & Somersalo 2005, Thm 3.7):

    C = C_0 - C_0 H^T (H C_0 H^T + Gamma)^{-1} H C_0,    m = m_0 + C_0 H^T (H C_0 H^T + Gamma)^{-1} (y - H m_0),

and, for p >= d and H of full column rank, the least-squares solution
u_LS = argmin |L^{-1}(y - H u)|^2 = (H^T Gamma^{-1} H)^{-1} H^T Gamma^{-1} y, the limit of
EKI in infinite time (J > d).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import AbstractCovariance, as_covariance
from ..gaussian import Gaussian
from ..inversion.problem import InverseProblem, Prior


class LinearForward(eqx.Module):
    """G(u) = H u. The matrix is a pytree leaf (differentiable, vmappable).

    Attributes:
        matrix: (p, d) forward matrix H.
    """

    matrix: Float[Array, "p d"]

    def __call__(self, u: Float[Array, " d"]) -> Float[Array, " p"]:
        return self.matrix @ u


def _dense(name, cov, dim, dtype) -> Float[Array, "n n"]:
    if isinstance(cov, AbstractCovariance):
        cov = as_covariance(name, cov, dim, dtype, allow_zero=False)
        return cov.matrix()
    array = _checks.as_float_array(name, cov)
    _checks.check_covariance(name, array, dim)
    return array


def gaussian_posterior(H, y, obs_cov, prior_mean, prior_cov) -> Gaussian:
    """The exact posterior N(m, C) of u given y = H u + eta, eta ~ N(0, obs_cov), u ~ N(prior_mean, prior_cov).

    Gain form with one Cholesky factorisation of the (p, p) innovation covariance
    H C_0 H^T + Gamma; the covariance is symmetrised. Meant for reference
    solutions of moderate size (it forms p x p and d x d matrices).

    Args:
        H: (p, d) forward matrix.
        y: (p,) data.
        obs_cov: (p, p) noise covariance Gamma (array or kalmax covariance operator).
        prior_mean: (d,) m_0.
        prior_cov: (d, d) C_0 (array or operator).

    Returns:
        `kalmax.gaussian.Gaussian(mean (d,), cov (d, d))`.
    """
    H = _checks.as_float_array("H", H)
    if H.ndim != 2:
        raise ValueError(f"`H` must be a (p, d) matrix; got shape {tuple(H.shape)}")
    p, d = H.shape
    y = _checks.as_float_array("y", y)
    if y.shape != (p,):
        raise ValueError(f"`y` must have shape ({p},) (the rows of H); got {tuple(y.shape)}")
    prior_mean = _checks.as_float_array("prior_mean", prior_mean)
    if prior_mean.shape != (d,):
        raise ValueError(f"`prior_mean` must have shape ({d},) (the columns of H); got {tuple(prior_mean.shape)}")
    _checks.check_same_dtype([("H", H), ("y", y), ("prior_mean", prior_mean)])
    gamma = _dense("obs_cov", obs_cov, p, H.dtype)
    c0 = _dense("prior_cov", prior_cov, d, H.dtype)
    _checks.check_same_dtype([("H", H), ("obs_cov", gamma), ("prior_cov", c0)])
    cross = c0 @ H.T  # (d, p)
    chol = jnp.linalg.cholesky(H @ cross + gamma)
    gain_t = jax.scipy.linalg.cho_solve((chol, True), cross.T)  # K^T = (H C_0 H^T + Gamma)^{-1} H C_0
    mean = prior_mean + gain_t.T @ (y - H @ prior_mean)
    cov = c0 - cross @ gain_t
    return Gaussian(mean=mean, cov=0.5 * (cov + cov.T))


def least_squares(H, y, obs_cov) -> Float[Array, " d"]:
    """argmin_u |L^{-1}(y - H u)|^2 (Gamma = L L^T), by least squares on the whitened system."""
    H = _checks.as_float_array("H", H)
    y = _checks.as_float_array("y", y)
    if H.ndim != 2 or y.shape != (H.shape[0],):
        raise ValueError(f"`H` must be (p, d) and `y` (p,); got {tuple(H.shape)} and {tuple(y.shape)}")
    cov = as_covariance("obs_cov", obs_cov, H.shape[0], H.dtype, allow_zero=False)
    whitened_h = cov.inv_sqrt_mv(H)
    whitened_y = cov.inv_sqrt_mv(y[:, None])[:, 0]
    return jnp.linalg.lstsq(whitened_h, whitened_y)[0]


class LinearGaussianProblem(eqx.Module):
    """A linear Gaussian inverse problem and its reference answers (`linear_gaussian`).

    Attributes:
        problem: the `InverseProblem` (forward u -> H u, unbounded prior).
        matrix: (p, d) forward matrix H.
        truth: (d,) the parameter that generated the data.
        posterior: exact posterior `Gaussian(mean (d,), cov (d, d))`.
        least_squares: (d,) the Gamma-weighted least-squares solution (the infinite-time EKI limit).
    """

    problem: InverseProblem
    matrix: Float[Array, "p d"]
    truth: Float[Array, " d"]
    posterior: Gaussian
    least_squares: Float[Array, " d"]


def linear_gaussian(
    key,
    parameter_dim: int = 10,
    data_dim: int = 20,
    *,
    noise_std=0.1,
    prior_std=1.0,
    dtype=None,
) -> LinearGaussianProblem:
    """A random linear Gaussian problem y = H u + eta with its exact posterior.

    H has i.i.d. N(0, 1/d) entries, the prior is N(0, prior_std^2 I), the truth is
    a prior draw and Gamma = noise_std^2 I.

    Args:
        key: PRNG key (H, the truth and the noise).
        parameter_dim: d.
        data_dim: p (p >= d for a unique least-squares solution).
        noise_std: the noise standard deviation (> 0).
        prior_std: the prior standard deviation (> 0).
        dtype: float dtype (default JAX's default float).

    Returns:
        `LinearGaussianProblem(problem, matrix, truth, posterior, least_squares)`.

    Example:
        >>> lin = linear_gaussian(jax.random.key(0), 5, 20)
        >>> result = kx.invert(lin.problem, EKI(50), key, 20)
    """
    for name, value in (("parameter_dim", parameter_dim), ("data_dim", data_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    for name, value in (("noise_std", noise_std), ("prior_std", prior_std)):
        if _checks.is_concrete(value) and not float(value) > 0:
            raise ValueError(f"`{name}` must be positive; got {value}")
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    H, truth, y, obs_cov, prior_mean, prior_cov = _draw(
        key, parameter_dim, data_dim, jnp.asarray(noise_std, dtype), jnp.asarray(prior_std, dtype)
    )
    problem = InverseProblem(LinearForward(H), y, obs_cov, Prior(prior_mean, prior_cov))
    posterior, solution = _references(H, y, obs_cov, prior_mean, prior_cov)
    return LinearGaussianProblem(
        problem=problem, matrix=H, truth=truth, posterior=posterior, least_squares=solution
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, d: int, p: int, noise_std, prior_std):
    dtype = noise_std.dtype
    key_h, key_truth, key_noise = jax.random.split(key, 3)
    H = jax.random.normal(key_h, (p, d), dtype) / jnp.sqrt(jnp.asarray(d, dtype))
    truth = prior_std * jax.random.normal(key_truth, (d,), dtype)
    y = H @ truth + noise_std * jax.random.normal(key_noise, (p,), dtype)
    obs_cov = noise_std**2 * jnp.eye(p, dtype=dtype)
    prior_cov = prior_std**2 * jnp.eye(d, dtype=dtype)
    return H, truth, y, obs_cov, jnp.zeros((d,), dtype), prior_cov


@jax.jit
def _references(H, y, obs_cov, prior_mean, prior_cov):
    return gaussian_posterior(H, y, obs_cov, prior_mean, prior_cov), least_squares(H, y, obs_cov)
