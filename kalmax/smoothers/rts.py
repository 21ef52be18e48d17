"""Rauch-Tung-Striebel smoother for a `LinearGaussianSSM` (Rauch, Tung & Striebel 1965).

Backward over n = T-1, ..., 0, from the filtered N(m_n, C_n) and the forecast
N(m^-_{n+1}, C^-_{n+1}) of the Kalman filter:

    G_n   = C_n M_n^T (C^-_{n+1})^{-1}
    m^s_n = m_n + G_n (m^s_{n+1} - m^-_{n+1})
    C^s_n = C_n + G_n (C^s_{n+1} - C^-_{n+1}) G_n^T
    Cov(v_{n+1}, v_n | y_{1:T}) = C^s_{n+1} G_n^T      (lag-one, for EM)

(Särkkä 2013, Bayesian Filtering and Smoothing, Thm 8.2 and eq. 12.4.)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..assimilate import assimilate
from ..filters.kalman import KalmanFilter
from ..filters.parallel_kalman import parallel_smoother
from ..filters.steady_state import STEADY_TOLERANCE
from ..history import History, Save
from ..linalg import cho_solve, symmetrize
from ..loops import ParallelScan, chunked_scan
from ..ssm import LinearGaussianSSM, merge_time_step, n_times, split_time_varying
from .base import AbstractSmoother, smooth


class SmootherResult(eqx.Module):
    """Smoothed marginals p(v_n | y_{1:T}).

    Attributes:
        mean: (T, dx) smoothed means of v_1..v_T (aligned with `History.mean`).
        cov: (T, dx, dx) smoothed covariances of v_1..v_T.
        cross_cov: (T, dx, dx); `cross_cov[n]` = Cov(v_{n+1}, v_n | y_{1:T}), so
            `cross_cov[0]` couples v_1 with v_0.
        init_mean: (dx,) smoothed mean of v_0.
        init_cov: (dx, dx) smoothed covariance of v_0.
        filtered: the filter's `History` (means, covariances, forecasts, info).
        log_likelihood: log p(y_{1:T}).
    """

    mean: Float[Array, "T dx"]
    cov: Float[Array, "T dx dx"]
    cross_cov: Float[Array, "T dx dx"]
    init_mean: Float[Array, " dx"]
    init_cov: Float[Array, "dx dx"]
    filtered: History
    log_likelihood: Float[Array, ""]


def filtered_at(model: LinearGaussianSSM, filtered: History, n):
    """The filtered N(m_n, C_n) of v_n: `filtered[n - 1]`, or the model's prior for n = 0."""
    previous, first = jnp.maximum(n - 1, 0), n == 0
    mean = jnp.where(first, model.init_mean, filtered.mean[previous])
    cov = jnp.where(first, model.init_cov, filtered.cov[previous])
    return mean, cov


def backward_step(dynamics, mean, cov, pred_mean, pred_cov, smooth_mean, smooth_cov):
    """One RTS step (module docstring) from the smoothed v_{n+1} to v_n; returns
    (m^s_n, C^s_n, Cov(v_{n+1}, v_n | y_{1:T}), G_n)."""
    dynamics_cov = dynamics @ cov  # M C_n
    gain = cho_solve(jnp.linalg.cholesky(pred_cov), dynamics_cov).T
    update = (smooth_cov - pred_cov) @ gain.T
    new_mean = mean + gain @ (smooth_mean - pred_mean)
    new_cov = symmetrize(cov + gain @ update)
    # C^s_{n+1} G^T = (C^s_{n+1} - C^-_{n+1}) G^T + M C_n, since C^-_{n+1} G^T = M C_n
    cross = update + dynamics_cov
    return new_mean, new_cov, cross, gain


def backward_pass(model: LinearGaussianSSM, filtered: History):
    """The RTS backward recursion at every cycle (module docstring) from the filter's
    history (`Save(cov=True, forecast=True)`): (means, covs, cross_covs, init_mean, init_cov)."""
    # Reverse scan over n = T-1, ..., 0 whose carry is the smoothed v_{n+1}: emitting the
    # carry it receives stacks the smoothed v_1..v_T in place (no T x dx x dx concatenation),
    # and the filtered v_n is read by index from the history (v_0 from the model).
    varying, constant = split_time_varying(model)
    n_times = filtered.mean.shape[0]

    def step(carry, inputs):
        smooth_mean, smooth_cov = carry  # of v_{n+1}
        varying_step, pred_mean, pred_cov, n = inputs
        mean, cov = filtered_at(model, filtered, n)
        dynamics = merge_time_step(varying_step, constant).dynamics
        new_mean, new_cov, cross, _ = backward_step(dynamics, mean, cov, pred_mean, pred_cov, smooth_mean, smooth_cov)
        return (new_mean, new_cov), (smooth_mean, smooth_cov, cross)

    last = (filtered.mean[-1], filtered.cov[-1])
    inputs = (varying, filtered.forecast_mean, filtered.forecast_cov, jnp.arange(n_times))
    (init_mean, init_cov), (means, covs, cross) = jax.lax.scan(step, last, inputs, reverse=True)
    return means, covs, cross, init_mean, init_cov


class BackwardCache(eqx.Module):
    """What a converged RTS backward pass reuses: the inputs C_n, C^-_{n+1} it was
    converged for, the gain G, and the converged C^s and lag-one cross-covariance."""

    converged: Bool[Array, ""]
    cov: Float[Array, "dx dx"]
    pred_cov: Float[Array, "dx dx"]
    gain: Float[Array, "dx dx"]
    smooth_cov: Float[Array, "dx dx"]
    cross: Float[Array, "dx dx"]


def steady_state_backward(model, filtered):
    """The RTS backward pass for a time-invariant model,
    skipping the covariance recursion where it has converged.

    Where the filter ran in steady state its saved covariances C_n and C^-_{n+1}
    are the same from cycle to cycle, so the smoother gain
    G = C M^T (C^-)^{-1} is constant and the backward recursion
    C^s_n = C + G (C^s_{n+1} - C^-) G^T converges too (it contracts like the
    filter's). Once two successive C^s agree to `STEADY_TOLERANCE` units of
    round-off with unchanged inputs, a chunk of cycles whose inputs are
    (bitwise) those of the cache only propagates the mean,
    m^s_n = m_n + G (m^s_{n+1} - m^-_{n+1}). Returns what `backward_pass` does.
    """
    dtype = filtered.mean.dtype
    tolerance = STEADY_TOLERANCE * jnp.finfo(dtype).eps
    dynamics = model.dynamics

    def at(n):
        return filtered_at(model, filtered, n)

    def full(carry, cache, inputs):
        smooth_mean, smooth_cov = carry  # of v_{n+1}
        pred_mean, pred_cov, n = inputs
        mean, cov = at(n)
        new_mean, new_cov, cross, gain = backward_step(
            dynamics, mean, cov, pred_mean, pred_cov, smooth_mean, smooth_cov
        )
        same_inputs = jnp.all(cov == cache.cov) & jnp.all(pred_cov == cache.pred_cov)
        settled = jnp.max(jnp.abs(new_cov - smooth_cov)) <= tolerance * jnp.max(jnp.abs(new_cov))
        new_cache = BackwardCache(same_inputs & settled, cov, pred_cov, gain, new_cov, cross)
        return (new_mean, new_cov), (smooth_mean, smooth_cov, cross), new_cache

    def steady(carry, cache, inputs):
        smooth_mean, smooth_cov = carry
        pred_mean, _, n = inputs
        mean, _ = at(n)
        new_mean = mean + cache.gain @ (smooth_mean - pred_mean)
        return (new_mean, cache.smooth_cov), (smooth_mean, smooth_cov, cache.cross), cache

    def run(step):
        def body(carry, inputs):
            state, cache = carry
            state, out, cache = step(state, cache, inputs)
            return (state, cache), out

        return body

    def chunk(carry, inputs):
        _, cache = carry
        _, pred_covs, ns = inputs
        _, covs = jax.vmap(at)(ns)
        steady_ok = cache.converged & jnp.all(covs == cache.cov) & jnp.all(pred_covs == cache.pred_cov)

        def branch(step):
            return lambda carry: jax.lax.scan(run(step), carry, inputs, reverse=True)

        return jax.lax.cond(steady_ok, branch(steady), branch(full), carry)

    n_cycles, dx = filtered.mean.shape
    eye = jnp.eye(dx, dtype=dtype)
    cache = BackwardCache(jnp.asarray(False), 0 * eye, 0 * eye, 0 * eye, 0 * eye, 0 * eye)
    inputs = (filtered.forecast_mean, filtered.forecast_cov, jnp.arange(n_cycles))
    carry = ((filtered.mean[-1], filtered.cov[-1]), cache)
    carry, outputs = chunked_scan(chunk, carry, inputs, reverse=True)
    (init_mean, init_cov), _ = carry
    means, covs, cross = outputs
    return means, covs, cross, init_mean, init_cov


class RTSSmoother(AbstractSmoother):
    """Kalman filter forward, Rauch-Tung-Striebel smoother backward (module docstring).

    Attributes:
        parallel: run both passes as associative scans (Särkkä & García-Fernández 2021).
        square_root: run the forward pass in square-root form.
        steady_state: on a time-invariant model, reuse the converged covariances
            and gains forward (`KalmanFilter(steady_state=True)`) and backward
            (`steady_state_backward`); False runs both recursions every cycle.

    Example:
        >>> smoothed = kx.smooth(model, kx.RTSSmoother(), ys)
        >>> smoothed.mean, smoothed.cov, smoothed.log_likelihood
    """

    parallel: bool = eqx.field(static=True, default=False)
    square_root: bool = eqx.field(static=True, default=False)
    steady_state: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.parallel and self.square_root:
            raise ValueError("`parallel=True` runs the covariance form; use square_root=False")

    @property
    def filter(self) -> KalmanFilter:
        """The forward filter."""
        return KalmanFilter(square_root=self.square_root, steady_state=self.steady_state)

    def check_model(self, model) -> None:
        if not isinstance(model, LinearGaussianSSM):
            raise TypeError(f"`model` must be a LinearGaussianSSM; got {type(model).__name__}")
        self.filter.check_model(model)

    def run(self, model: LinearGaussianSSM, ys, key=None, init_state=None) -> SmootherResult:
        if init_state is not None:
            raise ValueError("`init_state`: RTSSmoother starts from the model's prior (set init_mean, init_cov)")
        method = self.filter
        loop = ParallelScan() if self.parallel else None
        _, filtered = assimilate(model, method, ys, save=Save(cov=True, forecast=True), throw=False, loop=loop)
        if self.parallel:
            mean, cov, cross, init_mean, init_cov = parallel_smoother(model, filtered)
        elif method.uses_steady_state() and n_times(model) is None:
            mean, cov, cross, init_mean, init_cov = steady_state_backward(model, filtered)
        else:
            mean, cov, cross, init_mean, init_cov = backward_pass(model, filtered)
        return SmootherResult(
            mean=mean,
            cov=cov,
            cross_cov=cross,
            init_mean=init_mean,
            init_cov=init_cov,
            filtered=filtered,
            log_likelihood=jnp.sum(filtered.info.log_likelihood),
        )


def rts_smoother(
    model: LinearGaussianSSM,
    ys: Float[Array, "T dy"],
    *,
    parallel: bool = False,
    square_root: bool = False,
    throw: bool = True,
    steady_state: bool = True,
) -> SmootherResult:
    """Kalman filter forward, Rauch-Tung-Striebel smoother backward:
    `kx.smooth(model, kx.RTSSmoother(parallel, square_root, steady_state), ys, throw=throw)`.

    Args:
        model: a `LinearGaussianSSM` (fields may be `TimeVarying`).
        ys: (T, dy) observations y_1..y_T; NaN entries are missing.
        parallel: run both passes as associative scans (Särkkä & García-Fernández 2021).
        square_root: run the forward pass in square-root form.
        throw: raise on a numerical failure (see `assimilate`).
        steady_state: on a time-invariant model, reuse the converged covariances
            and gains forward and backward; False runs both recursions every cycle.

    Returns:
        A `SmootherResult` with smoothed means and covariances of v_1..v_T,
        the lag-one cross-covariances, the smoothed v_0 and the filter's history.

    Example:
        >>> smoothed = kx.rts_smoother(model, ys)
        >>> smoothed.mean, smoothed.cov, smoothed.log_likelihood
    """
    smoother = RTSSmoother(parallel=parallel, square_root=square_root, steady_state=steady_state)
    return smooth(model, smoother, ys, throw=throw)


__all__ = ["RTSSmoother", "SmootherResult", "backward_pass", "rts_smoother", "steady_state_backward"]
