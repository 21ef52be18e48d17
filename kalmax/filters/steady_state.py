"""Steady-state detection for the Kalman filter on a time-invariant model.

For a time-invariant `LinearGaussianSSM` the covariance recursion (the Riccati
equation)

    C^-_{n+1} = M C_n M^T + Sigma,   S = H C^- H^T + Gamma,   C_{n+1} = C^- - C^- H^T S^{-1} H C^-

does not involve the data, and for a detectable, stabilisable model it
converges geometrically to a fixed point (Anderson & Moore 1979, Optimal
Filtering, ch. 4): for the random 32-dimensional models of
benchmarks/bench_kalman.py within about 50 cycles. Once two successive
forecast covariances of fully observed cycles agree to `STEADY_TOLERANCE`
units of round-off (relative to their largest entry), the filter keeps the
last covariances C^-, C, the Cholesky factor L_S of S and W = L_S^{-1} H C^-,
and a fully observed cycle only propagates the mean:

    m^- = M m + b,   w = L_S^{-1} (y - H m^- - d),   m = m^- + W^T w,
    log p(y | past) = -1/2 (|w|^2 + log det S + p log 2 pi),

O(dx^2) instead of O(dx^3). A cycle with missing entries runs the full
recursion (its gain differs) and detection starts again. This is the
"converged" mode of statsmodels' Kalman filter (Durbin & Koopman 2012,
Time Series Analysis by State Space Methods, sec. 4.3.4, "steady state").

This module holds the two cycles (`KalmanSteadyCycles`); the loop that
switches between them per chunk of cycles is the driver's `kx.SteadyStateScan`
(kalmax.loops).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..gaussian import Gaussian
from ..linalg import solve_lower
from ..ssm import LinearGaussianSSM
from .base import AbstractSteadyCycles
from .gaussian_update import KalmanInfo, analysis_status, covariance_analysis, innovation_log_likelihood, predict

STEADY_TOLERANCE = 64  # units of round-off (finfo(dtype).eps) in max |C^-_{n+1} - C^-_n| / max |C^-_{n+1}|


class SteadyCache(eqx.Module):
    """What a converged Kalman filter reuses (see the module docstring)."""

    converged: Bool[Array, ""]
    observed_all: Bool[Array, ""]  # the last cycle had no missing entry
    forecast_cov: Float[Array, "dx dx"]
    cov: Float[Array, "dx dx"]
    chol_innov: Float[Array, "dy dy"]
    weights: Float[Array, "dy dx"]


class KalmanSteadyCycles(AbstractSteadyCycles):
    """The full and the steady Kalman cycle of a time-invariant `LinearGaussianSSM`.

    Attributes:
        model: the model (no `TimeVarying` field).
        joseph: the full cycle's analysis in Joseph form.
    """

    model: LinearGaussianSSM
    joseph: bool = eqx.field(static=True, default=False)

    def initial_cache(self, state: Gaussian, ys) -> SteadyCache:
        dx, dtype = state.mean.shape[0], state.mean.dtype
        dy = ys.shape[1]
        false = jnp.asarray(False)
        return SteadyCache(
            converged=false,
            observed_all=false,
            forecast_cov=jnp.zeros((dx, dx), dtype),
            cov=jnp.zeros((dx, dx), dtype),
            chol_innov=jnp.eye(dy, dtype=dtype),
            weights=jnp.zeros((dy, dx), dtype),
        )

    def converged(self, cache: SteadyCache):
        return cache.converged

    def full(self, state: Gaussian, y, cache: SteadyCache):
        """The Riccati recursion of one cycle; the cache is converged once two fully
        observed cycles in a row have forecast covariances equal to `STEADY_TOLERANCE` ulps."""
        tolerance = STEADY_TOLERANCE * jnp.finfo(state.mean.dtype).eps
        forecast = predict(self.model, state)
        analysis, info, chol_innov, weights = covariance_analysis(self.model, forecast, y, self.joseph)
        observed_all = jnp.all(jnp.isfinite(y))
        change = jnp.max(jnp.abs(forecast.cov - cache.forecast_cov))
        settled = change <= tolerance * jnp.max(jnp.abs(forecast.cov))
        new_cache = SteadyCache(
            converged=observed_all & cache.observed_all & settled,
            observed_all=observed_all,
            forecast_cov=forecast.cov,
            cov=analysis.cov,
            chol_innov=chol_innov,
            weights=weights,
        )
        return forecast, analysis, info, new_cache

    def steady(self, state: Gaussian, y, cache: SteadyCache):
        """The mean alone, with the cached C^-, C, L_S and W (a fully observed cycle)."""
        model = self.model
        forecast_mean = model.predict_mean(state.mean)
        innovation = y - model.observe_mean(forecast_mean)
        whitened = solve_lower(cache.chol_innov, innovation)
        mean = forecast_mean + cache.weights.T @ whitened
        n_observed = jnp.asarray(y.shape[0], jnp.int32)
        info = KalmanInfo(
            innovation_log_likelihood(whitened, cache.chol_innov, n_observed),
            n_observed,
            analysis_status(cache.chol_innov, mean),
            jnp.sum(whitened**2),
        )
        return Gaussian(forecast_mean, cache.forecast_cov), Gaussian(mean, cache.cov), info, cache


__all__ = ["STEADY_TOLERANCE", "KalmanSteadyCycles", "SteadyCache"]
