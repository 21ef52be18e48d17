"""`invert`: run an inversion method to a stopping rule in one compiled loop.

Iteration n evaluates the forward model on the current ensemble (vmapped),
records the ensemble's summaries and data misfit, checks the stopping rules,
and, unless one fired, updates. A run with N updates therefore evaluates G
N + 1 times and its history has N + 1 rows: row n describes ensemble n.

Stopping rules: a fixed number of steps (`n_steps`: a `lax.scan`, reverse-mode
differentiable), the discrepancy principle (`stop=DiscrepancyPrinciple()`),
and the end of finite time (a scheduler with a finite `end`). Adaptive runs
use a `lax.while_loop` bounded by `max_steps` (forward-mode differentiable
only, as every while loop in JAX).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import _checks
from ..results import RESULTS, InversionError
from .base import AbstractInversion
from .problem import InverseProblem, failure_summary

RUNNING = -1  # the loop goes on (not a result: a run ends with a code of `RESULTS`)


class DiscrepancyPrinciple(eqx.Module):
    """Stop once |L^{-1}(y - mean G)| <= tau * noise_level (Morozov; Iglesias 2016).

    Attributes:
        tau: the safety factor (> 1; Iglesias 2016 uses 1/rho with rho < 1).
        noise_level: |L^{-1} eta|, the whitened noise size; default sqrt(p),
            its expected value to leading order.
    """

    tau: Float[Array, ""] | float = 1.25
    noise_level: Float[Array, ""] | float | None = None

    def __check_init__(self):
        if isinstance(self.tau, (int, float)) and not self.tau > 0:
            raise ValueError(f"`tau` must be positive; got {self.tau}")
        if isinstance(self.noise_level, (int, float)) and not self.noise_level > 0:
            raise ValueError(f"`noise_level` must be positive; got {self.noise_level}")

    def reached(self, misfit, data_dim: int):
        level = math.sqrt(data_dim) if self.noise_level is None else self.noise_level
        return misfit <= (self.tau * level) ** 2


class InversionHistory(eqx.Module):
    """Per-iteration records; row n describes ensemble n (rows after `n_iterations` are padding).

    Attributes:
        mean: (N + 1, d) mean of the unconstrained parameters.
        variance: (N + 1, d) their marginal variances.
        physical_mean: (N + 1, d) mean of the physical parameters (ensemble methods: the
            mean of T(u_j); UKI: T(mean)).
        misfit: (N + 1,) data misfit |L^{-1}(y - mean G)|^2 of ensemble n.
        time: (N + 1,) algorithmic time t_n.
        step_size: (N + 1,) the step h_n taken from ensemble n (NaN where none was).
        failures: (N + 1, J) why each member's forward run failed (0: success; codes in
            `kalmax.inversion.problem`).
    """

    mean: Float[Array, "N d"]
    variance: Float[Array, "N d"]
    physical_mean: Float[Array, "N d"]
    misfit: Float[Array, " N"]
    time: Float[Array, " N"]
    step_size: Float[Array, " N"]
    failures: Int[Array, "N J"]


class InversionResult(eqx.Module):
    """What `invert` returns.

    Attributes:
        state: the final state (its `ensemble` is in physical space).
        history: `InversionHistory`, rows 0..n_iterations valid.
        code: why the run ended (RESULTS.SUCCESSFUL, RESULTS.DISCREPANCY, RESULTS.FINAL_TIME, RESULTS.MAX_STEPS,
            RESULTS.TOO_FEW_SUCCESSES, RESULTS.NON_FINITE; `message` says it in words).
        n_iterations: the number of updates made.
    """

    state: eqx.Module
    history: InversionHistory
    code: Int[Array, ""]
    n_iterations: Int[Array, ""]

    @property
    def message(self) -> str:
        return RESULTS(int(self.code)).message

    @property
    def ensemble(self):
        """The final members (or sigma points) in physical space."""
        return self.state.ensemble

    @property
    def misfit(self):
        """The data misfit of the final ensemble."""
        return self.history.misfit[self.n_iterations]


def _row(method, problem, state, outputs, failures):
    mean, variance, physical_mean = method.summary(state)
    misfit = method.data_misfit(problem, outputs, failures == 0)
    return mean, variance, physical_mean, misfit


def _decide(method, problem, state, misfit, failures, n, n_limit, stop, adaptive):
    tol = 100 * jnp.finfo(problem.dtype).eps
    final_time = method.final_time()
    mean = method.summary(state)[0]
    code = jnp.int32(RUNNING)
    if adaptive:
        code = jnp.where(n >= n_limit, RESULTS.MAX_STEPS, code)
    else:
        code = jnp.where(n >= n_limit, RESULTS.SUCCESSFUL, code)
    if math.isfinite(final_time):
        code = jnp.where(state.time >= final_time * (1 - tol), RESULTS.FINAL_TIME, code)
    if stop is not None:
        code = jnp.where(stop.reached(misfit, problem.data_dim), RESULTS.DISCREPANCY, code)
    code = jnp.where(~method.enough_successes(failures), RESULTS.TOO_FEW_SUCCESSES, code)
    code = jnp.where(~jnp.all(jnp.isfinite(mean)), RESULTS.NON_FINITE, code)
    return code.astype(jnp.int32)


def _iterate(method, problem, stop, n_limit, adaptive, state, key, n):
    outputs = problem.evaluate(method.evaluation_points(state))
    return iterate_with_outputs(method, problem, stop, n_limit, adaptive, state, outputs, problem.member_failures(outputs), key, n)


def iterate_with_outputs(method, problem, stop, n_limit, adaptive, state, outputs, failures, key, n):
    """One iteration given ensemble n's outputs and failure codes (shared with `invert_external`).

    Returns (next state, result code or RUNNING, history row of ensemble n).
    """
    mean, variance, physical_mean, misfit = _row(method, problem, state, outputs, failures)
    code = _decide(method, problem, state, misfit, failures, n, n_limit, stop, adaptive)
    running = code == RUNNING
    new_state = jax.lax.cond(
        running,
        lambda s: method.tell(problem, s, outputs, key, failures),
        lambda s: s,
        state,
    )
    step = jnp.where(running, new_state.step_size, jnp.nan).astype(problem.dtype)
    row = (mean, variance, physical_mean, misfit, state.time, step, failures)
    return new_state, code, row


@eqx.filter_jit
def _run_fixed(problem, method, state, key, n_steps: int, stop):
    keys = None if key is None else jax.random.split(key, n_steps + 1)

    def body(carry, inputs):
        state, code, n_done = carry
        n, key_n = inputs
        new_state, new_code, row = _iterate(method, problem, stop, n_steps, False, state, key_n, n)
        # once stopped (failure or a rule), stay stopped and keep the state
        stopped = code != RUNNING
        new_state = jax.tree.map(lambda old, new: jnp.where(stopped, old, new), state, new_state)
        row = _mask_row(row, stopped)
        code = jnp.where(stopped, code, new_code)
        n_done = n_done + (new_code == RUNNING).astype(jnp.int32) * (~stopped).astype(jnp.int32)
        return (new_state, code, n_done), row

    init = (state, jnp.int32(RUNNING), jnp.int32(0))
    (state, code, n_done), rows = jax.lax.scan(body, init, (jnp.arange(n_steps + 1), keys))
    return state, code, n_done, rows


def _mask_row(row, stopped):
    mean, variance, physical_mean, misfit, time, step, failures = row
    nan = lambda x: jnp.where(stopped, jnp.nan, x)  # noqa: E731
    return (nan(mean), nan(variance), nan(physical_mean), nan(misfit), nan(time), nan(step),
            jnp.where(stopped, -1, failures))  # fmt: skip


@eqx.filter_jit
def _run_adaptive(problem, method, state, key, max_steps: int, stop):
    n_rows = max_steps + 1
    points = method.n_points(problem)
    d, dtype = problem.parameter_dim, problem.dtype
    rows = (
        jnp.full((n_rows, d), jnp.nan, dtype),
        jnp.full((n_rows, d), jnp.nan, dtype),
        jnp.full((n_rows, d), jnp.nan, dtype),
        jnp.full((n_rows,), jnp.nan, dtype),
        jnp.full((n_rows,), jnp.nan, dtype),
        jnp.full((n_rows,), jnp.nan, dtype),
        jnp.full((n_rows, points), -1, jnp.int32),
    )

    def cond(carry):
        return carry[2] == RUNNING

    def body(carry):
        state, key, _, n, rows = carry
        key, key_n = (None, None) if key is None else jax.random.split(key)
        state, code, row = _iterate(method, problem, stop, max_steps, True, state, key_n, n)
        rows = tuple(buffer.at[n].set(value.astype(buffer.dtype)) for buffer, value in zip(rows, row))
        return state, key, code, n + 1, rows

    init = (state, key, jnp.int32(RUNNING), jnp.int32(0), rows)
    state, _, code, n, rows = jax.lax.while_loop(cond, body, init)
    return state, code, n - 1, rows


def invert(
    problem: InverseProblem,
    method: AbstractInversion,
    key,
    n_steps: int | None = None,
    *,
    stop: DiscrepancyPrinciple | None = None,
    max_steps: int = 100,
    init_state=None,
    throw: bool = True,
) -> InversionResult:
    """Run `method` on `problem` until a stopping rule fires; one compiled loop.

    Args:
        problem: the `InverseProblem` (its `forward` must be JAX-traceable; for a
            forward model outside JAX use `invert_external`).
        method: `EKI`, `ETKI`, `EKS`, `UKI`, ...
        key: PRNG key (initial ensemble, perturbations, redraws of failed members);
            None only for deterministic methods started from `init_state`.
        n_steps: run exactly this many updates (a `lax.scan`, reverse-mode
            differentiable); with `stop` or a finite-time scheduler it is the bound
            instead of `max_steps`.
        stop: `DiscrepancyPrinciple(...)` or None.
        max_steps: the bound of adaptive runs (a bounded `lax.while_loop`).
        init_state: start from this state instead of `method.init(problem, key)`.
        throw: raise `InversionError` when too few members succeed or the
            ensemble becomes non-finite (under tracing: an `eqx.error_if` check);
            with False read `result.code`.

    Returns:
        `InversionResult(state, history, code, n_iterations)`.
    """
    n_steps = check_run(problem, method, key, n_steps, stop, max_steps)
    if problem.forward is None:
        raise ValueError("`problem.forward` is None: run a forward model outside JAX with kalmax.invert_external")
    adaptive = is_adaptive(method, stop)
    state, key = start(problem, method, key, init_state)

    if adaptive:
        bound = max_steps if n_steps is None else n_steps
        state, code, n_done, rows = _run_adaptive(problem, method, state, key, bound, stop)
    else:
        state, code, n_done, rows = _run_fixed(problem, method, state, key, n_steps, stop)
    history = InversionHistory(*rows)
    result = InversionResult(state=state, history=history, code=code, n_iterations=n_done)
    if throw:
        result = check_result(result, method)
    return result


def is_adaptive(method, stop) -> bool:
    """Whether a run stops by a rule (discrepancy principle, finite time) rather than a step count."""
    return stop is not None or math.isfinite(method.final_time())


def check_run(problem, method, key, n_steps, stop, max_steps) -> int | None:
    """The argument checks shared by `invert` and `invert_external`; returns `n_steps`
    (the method's own count for methods with a fixed number of iterations)."""
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"`problem` must be a kalmax InverseProblem; got {type(problem).__name__}")
    if not isinstance(method, AbstractInversion):
        raise TypeError(f"`method` must be a kalmax inversion method (EKI, ETKI, EKS, UKI, ESMDA); got {type(method).__name__}")
    if stop is not None and not isinstance(stop, DiscrepancyPrinciple):
        raise TypeError(f"`stop` must be a DiscrepancyPrinciple or None; got {type(stop).__name__}")
    if n_steps is not None and (not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0):
        raise ValueError(f"`n_steps` must be a non-negative int; got {n_steps!r}")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int; got {max_steps!r}")
    fixed = method.fixed_iterations()
    if fixed is not None:
        name = type(method).__name__
        if stop is not None:
            raise ValueError(f"`stop`: {name} runs a fixed number of iterations ({fixed}); it takes no stopping rule")
        if n_steps is not None and n_steps != fixed:
            raise ValueError(f"`n_steps`: {name} runs exactly {fixed} iterations; "
                             f"give n_steps={fixed} or None; got {n_steps}")
        n_steps = fixed
    if n_steps is None and not is_adaptive(method, stop):
        raise ValueError(
            "give `n_steps`, a stopping rule (`stop=DiscrepancyPrinciple()`), or a scheduler with a final time "
            "(e.g. DataMisfitController()): otherwise the run has no end"
        )
    if key is None and method.needs_key:
        raise ValueError(f"{type(method).__name__} needs a `key` (initial ensemble, perturbations, redraws)")
    _checks.check_key("key", key, required=False)
    return n_steps


def start(problem, method, key, init_state):
    """(initial state, key of the loop): `method.init` from the first half of `key` unless a state is given."""
    if init_state is not None:
        return init_state, key
    key_init, key = (None, None) if key is None else jax.random.split(key)
    return method.init(problem, key_init), key


def check_result(result: InversionResult, method) -> InversionResult:
    """Raise `InversionError` (or attach an `eqx.error_if` under tracing) if the run ended
    with too few successful forward runs or a non-finite ensemble."""
    name = type(method).__name__
    code = result.code
    if _checks.is_concrete(code):
        code = int(code)
        if code == RESULTS.TOO_FEW_SUCCESSES:
            n = int(result.n_iterations)
            failures = np.asarray(result.history.failures[n])
            raise InversionError(
                f"{name}: at iteration {n}, {failure_summary(failures)}; {method.success_requirement} "
                "(run with throw=False to inspect result.history.failures)"
            )
        if code == RESULTS.NON_FINITE:
            raise InversionError(
                f"{name}: the ensemble became non-finite at iteration {int(result.n_iterations)}; "
                "try a smaller step (scheduler) or check the forward model"
            )
        return result
    return eqx.error_if(
        result,
        (code == RESULTS.TOO_FEW_SUCCESSES) | (code == RESULTS.NON_FINITE),
        f"{name}: too few forward runs succeeded or the ensemble became non-finite; "
        "run with throw=False and read result.code and result.history.failures",
    )
