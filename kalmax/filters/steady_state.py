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

The switch is made per chunk of `chunk_size(T)` cycles (a `lax.cond` between two
`lax.scan`s over the chunk), so that the cached matrices pass through the
switch once per chunk; a chunk is steady when the recursion had converged
before it and none of its observations is missing. Under `vmap` the switch
becomes a select and both branches run; the results are the same.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..gaussian import Gaussian
from ..linalg import solve_lower
from . import rts
from .kalman import KalmanInfo, analysis_status, innovation_log_likelihood

CHUNK = 16  # cycles per switch between the full and the steady recursion (see `chunk_size`)
STEADY_TOLERANCE = 64  # units of round-off (finfo(dtype).eps) in max |C^-_{n+1} - C^-_n| / max |C^-_{n+1}|


class SteadyCache(eqx.Module):
    """What a converged Kalman filter reuses (see the module docstring)."""

    converged: Bool[Array, ""]
    observed_all: Bool[Array, ""]  # the last cycle had no missing entry
    forecast_cov: Float[Array, "dx dx"]
    cov: Float[Array, "dx dx"]
    chol_innov: Float[Array, "dy dy"]
    weights: Float[Array, "dy dx"]


def chunk_size(n_cycles: int) -> int:
    """Cycles per chunk: a divisor of `n_cycles` between 8 and 32 where there is one
    (the chunks then tile the run and no output is concatenated), else `CHUNK`."""
    for size in range(32, 7, -1):
        if n_cycles % size == 0:
            return size
    return min(CHUNK, n_cycles)


def chunked_scan(chunk, carry, inputs, reverse: bool = False):
    """`lax.scan` of `chunk(carry, inputs_of_a_chunk) -> (carry, outputs_of_the_chunk)`
    over chunks of `chunk_size(T)` cycles of `inputs` (arrays with T leading), in time
    order or in reverse; returns the carry and the outputs with their T axis restored.
    When the chunks do not tile T, the remainder is a last chunk in time (the first
    one in reverse) and its outputs are concatenated."""
    n_cycles = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    size = chunk_size(n_cycles)
    n_chunks, rest = divmod(n_cycles, size)
    start = rest if reverse else 0
    tiled = jax.tree_util.tree_map(
        lambda x: x[start : start + n_chunks * size].reshape(n_chunks, size, *x.shape[1:]), inputs
    )
    carry, outputs = jax.lax.scan(chunk, carry, tiled, reverse=reverse)
    outputs = jax.tree_util.tree_map(lambda x: x.reshape(n_chunks * size, *x.shape[2:]), outputs)
    if rest:
        remainder = jax.tree_util.tree_map(lambda x: x[:rest] if reverse else x[n_chunks * size :], inputs)
        carry, extra = chunk(carry, remainder)
        ordered = (extra, outputs) if reverse else (outputs, extra)
        outputs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), *ordered)
    return carry, outputs


def _initial_cache(state: Gaussian, dy: int) -> SteadyCache:
    dx, dtype = state.mean.shape[0], state.mean.dtype
    false = jnp.asarray(False)
    return SteadyCache(
        converged=false,
        observed_all=false,
        forecast_cov=jnp.zeros((dx, dx), dtype),
        cov=jnp.zeros((dx, dx), dtype),
        chol_innov=jnp.eye(dy, dtype=dtype),
        weights=jnp.zeros((dy, dx), dtype),
    )


def steady_state_scan(method, model, state: Gaussian, ys, save, unroll: int):
    """The filter over `ys` (T, dy) from `state`, as `assimilate`'s `lax.scan`
    returns it, skipping the covariance recursion once it has converged."""
    dtype = state.mean.dtype
    tolerance = STEADY_TOLERANCE * jnp.finfo(dtype).eps

    def full(state, y, cache):
        forecast = method.forecast(model, state)
        analysis, info, chol_innov, weights = method.covariance_analysis(model, forecast, y)
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

    def steady(state, y, cache):
        forecast_mean = model.predict_mean(state.mean)
        innovation = y - model.observe_mean(forecast_mean)
        whitened = solve_lower(cache.chol_innov, innovation)
        mean = forecast_mean + cache.weights.T @ whitened
        n_observed = jnp.asarray(y.shape[0], jnp.int32)
        info = KalmanInfo(
            innovation_log_likelihood(whitened, cache.chol_innov, n_observed),
            n_observed,
            analysis_status(cache.chol_innov, mean),
        )
        return Gaussian(forecast_mean, cache.forecast_cov), Gaussian(mean, cache.cov), info, cache

    def run(cycle_fn):
        def body(carry, inputs):
            state, cache = carry
            y, n = inputs
            forecast, analysis, info, cache = cycle_fn(state, y, cache)
            return (analysis, cache), save(forecast, analysis, info, n)

        return body

    def chunk(carry, inputs):
        # one switch per chunk of cycles: what the branches pass through (the cached
        # matrices) is copied once per chunk instead of once per cycle
        ys_chunk, _ = inputs
        steady_ok = carry[1].converged & jnp.all(jnp.isfinite(ys_chunk))

        def branch(cycle_fn):
            return lambda carry: jax.lax.scan(run(cycle_fn), carry, inputs, unroll=unroll)

        return jax.lax.cond(steady_ok, branch(steady), branch(full), carry)

    carry = (state, _initial_cache(state, ys.shape[1]))
    (final, _), history = chunked_scan(chunk, carry, (ys, jnp.arange(ys.shape[0])))
    return final, history


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
    """The RTS backward pass of `kalmax.filters.rts` for a time-invariant model,
    skipping the covariance recursion where it has converged.

    Where the filter ran in steady state its saved covariances C_n and C^-_{n+1}
    are the same from cycle to cycle, so the smoother gain
    G = C M^T (C^-)^{-1} is constant and the backward recursion
    C^s_n = C + G (C^s_{n+1} - C^-) G^T converges too (it contracts like the
    filter's). Once two successive C^s agree to `STEADY_TOLERANCE` units of
    round-off with unchanged inputs, a chunk of cycles whose inputs are
    (bitwise) those of the cache only propagates the mean,
    m^s_n = m_n + G (m^s_{n+1} - m^-_{n+1}). Returns what `rts._backward` does.
    """
    dtype = filtered.mean.dtype
    tolerance = STEADY_TOLERANCE * jnp.finfo(dtype).eps
    dynamics = model.dynamics

    def filtered_at(n):
        return rts.filtered_at(model, filtered, n)

    def full(carry, cache, inputs):
        smooth_mean, smooth_cov = carry  # of v_{n+1}
        pred_mean, pred_cov, n = inputs
        mean, cov = filtered_at(n)
        new_mean, new_cov, cross, gain = rts.backward_step(
            dynamics, mean, cov, pred_mean, pred_cov, smooth_mean, smooth_cov
        )
        same_inputs = jnp.all(cov == cache.cov) & jnp.all(pred_cov == cache.pred_cov)
        settled = jnp.max(jnp.abs(new_cov - smooth_cov)) <= tolerance * jnp.max(jnp.abs(new_cov))
        new_cache = BackwardCache(same_inputs & settled, cov, pred_cov, gain, new_cov, cross)
        return (new_mean, new_cov), (smooth_mean, smooth_cov, cross), new_cache

    def steady(carry, cache, inputs):
        smooth_mean, smooth_cov = carry
        pred_mean, _, n = inputs
        mean, _ = filtered_at(n)
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
        _, covs = jax.vmap(filtered_at)(ns)
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
