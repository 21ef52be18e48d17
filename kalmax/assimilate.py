"""The driver shared by every filter: one `jit`-compiled loop over time.

Each cycle n = 0, ..., T-1 is `method.forecast` (v_n -> v_{n+1}) then
`method.analysis` of `ys[n]` = y_{n+1}; `history[n]` describes the analysis
after y_{n+1} (DESIGN.md's time convention). How the cycles are scanned is a
strategy of `kalmax.loops` (sequential, steady-state or parallel-in-time),
chosen from the method's declared capabilities unless given.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks
from ._compile import dual_jit, prefers_serial, state_size
from .filters.base import AbstractFilter
from .history import Save
from .loops import AbstractTimeLoop, default_loop
from .results import RESULTS, DivergenceError, message
from .ssm import n_times


def check_observations(model, ys, name: str = "ys") -> jax.Array:
    """Validate a (T, dy) observation array against a model; NaN marks missing entries."""
    ys = _checks.as_float_array(name, ys)
    _checks.check_ndim(name, ys, 2, "a (T, dy) array of observations, time first")
    if ys.shape[0] == 0:
        raise ValueError(f"`{name}` has no cycles (shape {tuple(ys.shape)}): give at least one observation time")
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


def _run_body(model, method, ys, keys, save: Save, unroll: int, init_state, loop: AbstractTimeLoop):
    return loop.run(model, method, init_state, ys, keys, save, unroll)


_run_default, _run_serial = dual_jit(_run_body)


def compiled_run(model, method, ys, keys, save: Save, unroll: int, init_state, loop: AbstractTimeLoop):
    """The compiled run (serially scheduled for small states on CPU: see `kalmax._compile`)."""
    run = _run_serial if prefers_serial(state_size(model, method)) else _run_default
    return run(model, method, ys, keys, save, unroll, init_state, loop)


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
    loop: AbstractTimeLoop | None = None,
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
            O(log T) depth on accelerators (Särkkä & García-Fernández 2021);
            the same as `loop=kx.ParallelScan()`.
        unroll: `lax.scan` unroll factor (a speed knob for tiny state dimensions).
        init_state: start from this state instead of `method.init(model, key)`
            (to continue a run in chunks, or from a given initial ensemble).
        loop: how the cycles are scanned (`kalmax.loops`: `SequentialScan()`,
            `SteadyStateScan()`, `ParallelScan()`); None chooses from the method's
            capabilities (`kalmax.loops.default_loop`).

    Returns:
        (final_state, history): the analysis state after y_T and a `History`.
    """
    if not isinstance(save, eqx.Module) or not callable(save):
        raise TypeError(f"`save` must be a kalmax.Save (or another saver Module); got {type(save).__name__}")
    model, ys, loop = prepare_run(model, method, ys, key, loop, parallel, init_state)
    keys = None if key is None else jax.random.split(key, ys.shape[0] + 1)
    final, history = compiled_run(model, method, ys, keys, save, unroll, init_state, loop)
    if throw:
        history = check_status(history, type(method).__name__)
    return final, history


def prepare_run(model, method, ys, key, loop: AbstractTimeLoop | None = None, parallel: bool = False,
                init_state=None):
    """The checks and preparation of a run, before anything is traced: the method, the key,
    the loop (chosen from the method's capabilities when None), the model (the method's
    `check_model` / `prepare_model`) and the observations. Returns (model, ys, loop)."""
    if not isinstance(method, AbstractFilter):
        raise TypeError(
            f"`method` must be a kalmax filter (a subclass of kalmax.filters.AbstractFilter, e.g. kx.KalmanFilter()); "
            f"got {type(method).__name__}"
        )
    _checks.check_key("key", key, required=method.stochastic, what=f": {type(method).__name__} is stochastic")
    if loop is None:
        loop = default_loop(model, method, parallel)
    elif not isinstance(loop, AbstractTimeLoop):
        raise TypeError(f"`loop` must be a kalmax loop (SequentialScan, SteadyStateScan, ParallelScan, CheckpointedScan); got {type(loop).__name__}")
    elif parallel:
        raise ValueError("give `parallel=True` or `loop`, not both (parallel=True is loop=kx.ParallelScan())")
    # Hooks are called through the class: `module.method` builds an equinox bound-method
    # pytree on every access (~25 us each), which is most of a short run's Python overhead.
    kind = type(method)
    kind.check_model(method, model)
    model = kind.prepare_model(method, model)
    ys = check_observations(model, ys)
    type(loop).check(loop, model, method, init_state)
    return model, ys, loop


def log_likelihood(model, method, ys, key=None, *, parallel: bool = False) -> Float[Array, ""]:
    """log p(y_1:T) (or the method's estimate of it), summed over cycles.

    Differentiable with respect to every array of `model` (and the method's
    traced hyperparameters). Missing entries are marginalised out.
    """
    _, history = assimilate(model, method, ys, key, save=Save(mean=False), parallel=parallel)
    return jnp.sum(history.info.log_likelihood)
