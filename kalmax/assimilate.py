"""The driver shared by every filter: one `jit`-compiled `lax.scan` over time.

Each cycle n = 0, ..., T-1 is `method.forecast` (v_n -> v_{n+1}) then
`method.analysis` of `ys[n]` = y_{n+1}; `history[n]` describes the analysis
after y_{n+1} (DESIGN.md's time convention).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from .results import RESULTS, DivergenceError, message
from ._compile import dual_jit, prefers_serial, state_size
from .ssm import merge_time_step, n_times, split_time_varying


class History(eqx.Module):
    """Per-cycle outputs of `assimilate`, time axis first (T, ...).

    A field is None when `Save` did not ask for it.

    Attributes:
        mean: (T, dx) analysis means.
        cov: (T, dx, dx) analysis covariances.
        forecast_mean: (T, dx) forecast means.
        forecast_cov: (T, dx, dx) forecast covariances.
        state: the whole analysis state of each cycle (for ensembles: the members).
        info: the method's per-cycle `Info` (log-likelihood terms, diagnostics); always kept.
    """

    mean: Float[Array, "T dx"] | None
    cov: Float[Array, "T dx dx"] | None
    forecast_mean: Float[Array, "T dx"] | None
    forecast_cov: Float[Array, "T dx dx"] | None
    state: Any
    info: Any


class Save(eqx.Module):
    """What `assimilate` keeps per cycle, so memory stays bounded on long runs.

    Args:
        mean: keep the analysis mean (T, dx).
        cov: keep the analysis covariance (T, dx, dx) (for ensembles: empirical, d x d).
        forecast: also keep the forecast mean (and covariance when `cov`).
        state: keep the whole analysis state (for ensembles: (T, J, dx) members).

    The method's `Info` (log-likelihood terms, status codes) is always kept.

    Example:
        >>> kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True, forecast=True))
    """

    mean: bool = eqx.field(static=True, default=True)
    cov: bool = eqx.field(static=True, default=False)
    forecast: bool = eqx.field(static=True, default=False)
    state: bool = eqx.field(static=True, default=False)

    def __call__(self, forecast_state, analysis_state, info, cycle=None) -> History:
        """Select what to keep of cycle `cycle` (the index is unused here; savers that
        score against a truth, as in `kalmax.experiments`, use it)."""
        return History(
            mean=analysis_state.mean if self.mean else None,
            cov=analysis_state.cov if self.cov else None,
            forecast_mean=forecast_state.mean if (self.forecast and self.mean) else None,
            forecast_cov=forecast_state.cov if (self.forecast and self.cov) else None,
            state=analysis_state if self.state else None,
            info=info,
        )


def _is_stochastic(method) -> bool:
    return bool(getattr(method, "stochastic", False))


def check_observations(model, ys, name: str = "ys") -> jax.Array:
    """Validate a (T, dy) observation array against a model; NaN marks missing entries."""
    ys = _checks.as_float_array(name, ys)
    _checks.check_ndim(name, ys, 2, "a (T, dy) array of observations, time first")
    dy = model.obs_dim
    if ys.shape[1] != dy:
        raise ValueError(
            f"`{name}` must have shape (T, {dy}) to match the model's observation dimension {dy}; "
            f"got {tuple(ys.shape)}"
        )
    if ys.dtype != model.dtype:
        raise TypeError(
            f"dtype mix: `{name}` is {ys.dtype} but the model's arrays are {model.dtype}; "
            "cast them to one dtype"
        )
    t_model = n_times(model)
    if t_model is not None and t_model != ys.shape[0]:
        raise ValueError(
            f"`{name}` has {ys.shape[0]} cycles but the model's `TimeVarying` fields have {t_model}"
        )
    if _checks.is_concrete(ys) and np.any(np.isinf(np.asarray(ys))):
        raise ValueError(f"`{name}` has infinite entries (use NaN to mark a missing observation)")
    return ys


def _scan_body(model, method, ys, keys, save: Save, unroll: int, init_state=None):
    varying, constant = split_time_varying(model)
    if init_state is None:
        init_model = merge_time_step(jax.tree_util.tree_map(lambda x: x[0], varying), constant)
        state = method.init(init_model, None if keys is None else keys[0])
    else:
        state = init_state
    scan_time_invariant = getattr(method, "scan_time_invariant", None)
    if scan_time_invariant is not None and not jax.tree_util.tree_leaves(varying):
        # a method's own scan for time-invariant models (the Kalman filter's steady-state detection)
        run = scan_time_invariant(model, state, ys, save, unroll)
        if run is not None:
            return run

    def cycle(state, inputs):
        varying_step, y, key, n = inputs
        step_model = merge_time_step(varying_step, constant)
        key_forecast, key_analysis = (None, None) if key is None else jax.random.split(key)
        forecast = method.forecast(step_model, state, key_forecast)
        analysis, info = method.analysis(step_model, forecast, y, key_analysis)
        return analysis, save(forecast, analysis, info, n)

    step_keys = None if keys is None else keys[1:]
    cycles = jnp.arange(ys.shape[0])
    return jax.lax.scan(cycle, state, (varying, ys, step_keys, cycles), unroll=unroll)


_scan_default, _scan_serial = dual_jit(_scan_body)


def _scan(model, method, ys, keys, save: Save, unroll: int, init_state=None):
    """The compiled run (serially scheduled for small states on CPU: see `kalmax._compile`)."""
    run = _scan_serial if prefers_serial(state_size(model, method)) else _scan_default
    return run(model, method, ys, keys, save, unroll, init_state)


def raise_on_failure(status, method_name: str) -> None:
    """Raise `DivergenceError` naming the first cycle whose (concrete) status is not OK."""
    status = np.asarray(status)
    per_cycle = status.reshape(status.shape[0], -1)
    failed = np.flatnonzero((per_cycle != RESULTS.SUCCESSFUL).any(axis=1))
    if failed.size:
        first = int(failed[0])
        code = int(per_cycle[first][per_cycle[first] != RESULTS.SUCCESSFUL][0])
        raise DivergenceError(
            f"{method_name}: {message(code)} at cycle {first} "
            f"(observation ys[{first}]); pass throw=False to get the run with the status codes in "
            "history.info.status instead"
        )


def check_status(history, method_name: str):
    """Raise if any cycle of `history.info.status` failed.

    With concrete values, a `DivergenceError` names the first failing cycle;
    under tracing (`jit`, `vmap`, `grad`) an `eqx.error_if` check is attached to
    the returned history instead.
    """
    status = history.info.status
    if _checks.is_concrete(status):
        raise_on_failure(status, method_name)
        return history
    return eqx.error_if(
        history,
        jnp.any(status != RESULTS.SUCCESSFUL),
        f"{method_name}: a cycle failed numerically (non-positive-definite covariance or "
        "non-finite state); run with throw=False and read history.info.status",
    )


def assimilate(
    model,
    method,
    ys: Float[Array, "T dy"],
    key: PRNGKeyArray | None = None,
    *,
    save: Save = Save(),
    throw: bool = True,
    parallel: bool = False,
    unroll: int = 1,
    init_state=None,
):
    """Run a filter over a sequence of observations with one compiled `lax.scan`.

    Args:
        model: the state-space model (e.g. `LinearGaussianSSM`); fields wrapped in
            `TimeVarying` are sliced per cycle.
        method: a filter with `init`/`forecast`/`analysis` (e.g. `KalmanFilter()`).
        ys: (T, dy) observations y_1..y_T, time first; NaN entries are missing.
        key: PRNG key; required by stochastic methods, may be None for deterministic ones.
        save: what to keep per cycle (`Save`); the `Info` is always kept. Any
            `equinox.Module` called as `save(forecast, analysis, info, cycle)`
            and returning a pytree with an `info` field can take its place
            (`kalmax.experiments` scores against a truth this way).
        throw: raise `DivergenceError` naming the first failing cycle if any cycle
            reports a non-zero status; with False, read `history.info.status`.
        parallel: use the method's parallel-in-time (associative scan) form,
            O(log T) depth on accelerators (Särkkä & García-Fernández 2021).
        unroll: `lax.scan` unroll factor (a speed knob for tiny state dimensions).
        init_state: start from this state instead of `method.init(model, key)`
            (to continue a run in chunks, or from a given initial ensemble).

    Returns:
        (final_state, history): the analysis state after y_T and a `History`.
    """
    if _is_stochastic(method) and key is None:
        raise ValueError(
            f"`key` is required: {type(method).__name__} is stochastic; pass jax.random.key(seed)"
        )
    if not isinstance(save, eqx.Module) or not callable(save):
        raise TypeError(f"`save` must be a kalmax.Save (or another saver Module); got {type(save).__name__}")
    check_model = getattr(method, "check_model", None)
    if check_model is not None:
        check_model(model)
    prepare_model = getattr(method, "prepare_model", None)
    if prepare_model is not None:
        model = prepare_model(model)
    ys = check_observations(model, ys)
    if parallel:
        if init_state is not None:
            raise ValueError("`init_state` is not supported with `parallel=True`")
        run_parallel = getattr(method, "assimilate_parallel", None)
        if run_parallel is None:
            raise ValueError(f"`parallel=True`: {type(method).__name__} has no parallel-in-time form")
        final, history = run_parallel(model, ys, save=save)
    else:
        keys = None if key is None else jax.random.split(key, ys.shape[0] + 1)
        final, history = _scan(model, method, ys, keys, save, unroll, init_state)
    if throw:
        history = check_status(history, type(method).__name__)
    return final, history


def log_likelihood(model, method, ys, key=None, *, parallel: bool = False) -> Float[Array, ""]:
    """log p(y_1:T) (or the method's estimate of it), summed over cycles.

    Differentiable with respect to every array of `model` (and the method's
    traced hyperparameters). Missing entries are marginalised out.
    """
    _, history = assimilate(model, method, ys, key, save=Save(mean=False), parallel=parallel)
    return jnp.sum(history.info.log_likelihood)
