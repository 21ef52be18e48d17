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
from jaxtyping import Array, Float

from ..assimilate import History, Save, assimilate, check_observations, check_status
from ..linalg import cho_solve, symmetrize
from ..ssm import LinearGaussianSSM, merge_time_step, n_times, split_time_varying
from .kalman import KalmanFilter


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


@eqx.filter_jit
def _backward(model: LinearGaussianSSM, filtered: History):
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


def rts_smoother(
    model: LinearGaussianSSM,
    ys: Float[Array, "T dy"],
    *,
    parallel: bool = False,
    square_root: bool = False,
    throw: bool = True,
    steady_state: bool = True,
) -> SmootherResult:
    """Kalman filter forward, Rauch-Tung-Striebel smoother backward.

    Args:
        model: a `LinearGaussianSSM` (fields may be `TimeVarying`).
        ys: (T, dy) observations y_1..y_T; NaN entries are missing.
        parallel: run both passes as associative scans (Särkkä & García-Fernández 2021).
        square_root: run the forward pass in square-root form.
        throw: raise on a numerical failure (see `assimilate`).
        steady_state: on a time-invariant model, reuse the converged covariances
            and gains forward (`KalmanFilter(steady_state=True)`) and backward
            (`kalmax.filters.steady_state`); False runs both recursions every cycle.

    Returns:
        A `SmootherResult` with smoothed means and covariances of v_1..v_T,
        the lag-one cross-covariances, the smoothed v_0 and the filter's history.

    Example:
        >>> smoothed = kx.rts_smoother(model, ys)
        >>> smoothed.mean, smoothed.cov, smoothed.log_likelihood
    """
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"`model` must be a LinearGaussianSSM; got {type(model).__name__}")
    if parallel and square_root:
        raise ValueError("`parallel=True` runs the covariance form; use square_root=False")
    method = KalmanFilter(square_root=square_root, steady_state=steady_state)
    # the checks `assimilate` makes on concrete inputs, then both passes in one compiled program
    method.check_model(model)
    ys = check_observations(model, ys)
    result = _smooth(model, method, ys, parallel)
    if throw:
        result = eqx.tree_at(lambda r: r.filtered, result, check_status(result.filtered, "KalmanFilter"))
    return result


@eqx.filter_jit
def _smooth(model: LinearGaussianSSM, method: KalmanFilter, ys, parallel: bool) -> SmootherResult:
    _, filtered = assimilate(model, method, ys, save=Save(cov=True, forecast=True), throw=False, parallel=parallel)
    if parallel:
        from .parallel_kalman import parallel_smoother

        mean, cov, cross, init_mean, init_cov = parallel_smoother(model, filtered)
    elif method.steady_state and n_times(model) is None and not method.square_root:
        from .steady_state import steady_state_backward

        mean, cov, cross, init_mean, init_cov = steady_state_backward(model, filtered)
    else:
        mean, cov, cross, init_mean, init_cov = _backward(model, filtered)
    return SmootherResult(
        mean=mean,
        cov=cov,
        cross_cov=cross,
        init_mean=init_mean,
        init_cov=init_cov,
        filtered=filtered,
        log_likelihood=jnp.sum(filtered.info.log_likelihood),
    )
