"""`invert_external`: inversion with a forward model outside JAX (a simulator, a script).

The forward model is a plain Python callable ``forward(theta) -> (p,) array``
on one NumPy (d,) physical parameter vector. Each iteration asks the method
for its points, runs ``forward`` on every point through a
`concurrent.futures.Executor`, and tells the method the outputs:

    points = method.ask(state)                         # (J, d) physical, on the host
    outputs[j] = forward(points[j])                    # on the executor's workers
    state = method.tell(problem, state, outputs, key, failures=codes)   # jitted once

Executors: a local `ProcessPoolExecutor` (the default, created and shut down
by the call, with the "spawn" start method: forking a process that runs JAX
can deadlock), a `ThreadPoolExecutor` (for a forward that releases the GIL or
launches subprocesses itself), or a Dask cluster over several machines via
``distributed.Client(...).get_executor()``. A process pool pickles ``forward``
by reference, so it must be defined at module level (under spawn, a script's
own functions need the ``if __name__ == "__main__":`` guard); Dask uses
cloudpickle and also takes closures, but a function pickled by reference must
be importable on its workers (or registered with
``cloudpickle.register_pickle_by_value``): a task that cannot be unpickled on
a Dask worker never completes, so give `timeout` on a cluster.

What the loop does with the runs:
- a run that raises gets the code `RESULTS.FORWARD_RAISED` and a NaN row: the method
  redraws that member from the successful ones; the first few exception
  messages of each iteration are logged (logger ``kalmax.inversion.external``,
  level WARNING), passed to `callback`, and quoted in the `InversionError`
  raised when too few runs succeed;
- a run that does not finish within `timeout` seconds counts as raised (a
  process pool cannot stop a running task: its worker stays busy);
- a run that returns something other than a (p,) array of numbers is a bug,
  not a failed run: `invert_external` raises a `ValueError` (`TypeError` for
  non-numbers) naming the member, the iteration and the expected shape;
- non-finite outputs and the problem's `failed_if` are coded by `tell`.

Stopping rules, history and result codes are those of `invert` (row n of the
history describes ensemble n; N updates evaluate the forward model N + 1
times), and with the same key the run reproduces `invert` with the equivalent
JAX forward model. The decision and the update of one iteration are a single
`eqx.filter_jit` function, compiled on the first iteration and reused.

Driving the loop yourself (for example with a job scheduler, one job a
member); `tell` is compiled once by `eqx.filter_jit`::

    import equinox as eqx
    import jax
    import numpy as np
    from kalmax.inversion.eki import EKI
    from kalmax import RESULTS, InverseProblem, Prior

    def simulator(theta):  # stands for a job: a Fortran code, a script, ...
        if theta[1] > 3.0:
            raise RuntimeError("solver diverged")
        return np.array([theta[0] + theta[1], theta[0] - theta[1], 2.0 * theta[1]])

    problem = InverseProblem(
        None, np.array([1.0, 0.2, 0.8]), 0.01 * np.eye(3), Prior(np.zeros(2), np.eye(2))
    )
    eki = EKI(ensemble_size=20)
    tell = eqx.filter_jit(eki.tell)
    key, key_init = jax.random.split(jax.random.key(0))
    state = eki.init(problem, key_init)
    for n in range(10):
        thetas = np.asarray(eki.ask(state))  # (J, d) physical parameters
        outputs = np.full((len(thetas), problem.data_dim), np.nan)
        codes = np.zeros(len(thetas), np.int32)
        for j, theta in enumerate(thetas):  # submit the jobs, then collect them
            try:
                outputs[j] = simulator(theta)
            except RuntimeError:
                codes[j] = RESULTS.FORWARD_RAISED  # redrawn from the successful members
        key, key_n = jax.random.split(key)
        state = tell(problem, state, outputs, key_n, failures=codes)
    estimate = state.ensemble.mean(axis=0)  # close to (0.6, 0.4)
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing
import os
import pathlib
import pickle
import shutil
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .base import AbstractInversion
from .invert import (
    RUNNING,
    DiscrepancyPrinciple,
    InversionError,
    InversionHistory,
    InversionResult,
    check_result,
    check_run,
    is_adaptive,
    iterate_with_outputs,
    start,
)
from .. import checkpoint as ckpt
from ..results import RESULTS
from .problem import InverseProblem

logger = logging.getLogger(__name__)

#: How many exception messages of one iteration are kept (logged, passed to the callback, raised).
MAX_MESSAGES = 3
_TIMEOUT = "TimeoutError: did not finish"


@dataclasses.dataclass(frozen=True)
class IterationReport:
    """What `invert_external` passes to `callback` after each iteration (host-side NumPy values).

    Attributes:
        iteration: n, the row of the history this iteration filled.
        points: (J, d) physical parameters the forward model ran on (ensemble n).
        outputs: (J, p) its outputs (NaN rows for runs that raised or timed out).
        failures: (J,) failure codes of ensemble n (as `history.failures[n]`).
        errors: up to `MAX_MESSAGES` pairs (member, "ExceptionType: message").
        n_raised: how many runs raised or timed out.
        code: RUNNING (-1) if the run goes on, else the final result code.
        state: the state after this iteration (the updated one, or ensemble n if
            the run stopped): pass it as `init_state` to resume.
        forward_seconds: wall time of the executor round trip (submit, run, gather).
        update_seconds: wall time of the jitted decision and update.
    """

    iteration: int
    points: np.ndarray
    outputs: np.ndarray
    failures: np.ndarray
    errors: tuple[tuple[int, str], ...]
    n_raised: int
    code: int
    state: eqx.Module
    forward_seconds: float
    update_seconds: float


@eqx.filter_jit
def _ask(method, state):
    return method.ask(state)


@eqx.filter_jit
def _update(problem, method, stop, adaptive: bool, state, outputs, raised, key, n, n_limit):
    """One iteration of `invert`'s loop (`invert._iterate`) with the outputs given instead of evaluated."""
    failures = problem.member_failures(outputs)
    failures = jnp.where(raised != RESULTS.SUCCESSFUL, raised, failures)
    return iterate_with_outputs(method, problem, stop, n_limit, adaptive, state, outputs, failures, key, n)


def _run_members(executor, forward, points: np.ndarray, data_dim: int, dtype, timeout, iteration: int,
                 folder: pathlib.Path | None = None):
    """Run `forward` on every row of `points`: (J, p) outputs, (J,) raised codes, [(member, message)].

    With a checkpoint `folder`, each output is saved there as its run finishes, and runs
    whose output is already there (from a killed attempt at this iteration) are not repeated."""
    size = points.shape[0]
    saved = {}
    if folder is not None:
        folder.mkdir(exist_ok=True)
        if (folder / "points.npy").exists():
            if not np.array_equal(np.load(folder / "points.npy"), points):
                raise ValueError(f"`checkpoint`: {folder} holds forward runs of other parameters than this "
                                 "iteration asks for; the folder does not belong to this run")
            saved = {j: np.load(folder / f"member-{j:05d}.npy") for j in range(size)
                     if (folder / f"member-{j:05d}.npy").exists()}
        else:
            ckpt.write_array(folder / "points.npy", points)

    def keep(j):
        def done(future):
            if future.cancelled() or future.exception() is not None:
                return
            try:
                output = _as_output(future.result(), j, iteration, points[j], data_dim, dtype)
            except (TypeError, ValueError):
                return  # reported by the caller
            ckpt.write_array(folder / f"member-{j:05d}.npy", output)
        return done

    futures = []
    try:
        for j, theta in enumerate(points):
            if j in saved:
                future = cf.Future()
                future.set_result(saved[j])
            else:
                future = executor.submit(forward, np.array(theta))
                if folder is not None:
                    future.add_done_callback(keep(j))
            futures.append(future)
        _, pending = cf.wait(futures, timeout=timeout)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    for future in pending:
        future.cancel()
    outputs = np.full((size, data_dim), np.nan, dtype)
    raised = np.zeros(size, np.int32)
    messages = []
    for j, future in enumerate(futures):
        if future in pending:
            raised[j] = RESULTS.FORWARD_RAISED
            messages.append((j, f"{_TIMEOUT} within timeout={timeout} s"))
            continue
        err = future.exception()
        if err is not None:
            raised[j] = RESULTS.FORWARD_RAISED
            messages.append((j, f"{type(err).__name__}: {err}"))
            continue
        outputs[j] = _as_output(future.result(), j, iteration, points[j], data_dim, dtype)
    return outputs, raised, messages


def _as_output(value, member: int, iteration: int, theta, data_dim: int, dtype) -> np.ndarray:
    theta = np.array2string(theta, precision=4)
    where = f"the forward run of member {member} at iteration {iteration} (theta = {theta})"
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - re-raised with the member named
        raise TypeError(f"{where} returned a {type(value).__name__}, not an array: {err}") from err
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{where} returned a {type(value).__name__} of dtype {array.dtype}; `forward` must return a "
            f"({data_dim},) array of real numbers (the size of `y`)"
        )
    if array.shape != (data_dim,):
        raise ValueError(
            f"{where} returned shape {array.shape}; `forward` must return a ({data_dim},) array "
            f"(one predicted datum per entry of `y`)"
        )
    return array.astype(dtype)


def _check_picklable(forward) -> None:
    try:
        pickle.dumps(forward)
    except Exception as err:  # noqa: BLE001 - re-raised with the argument named
        raise TypeError(
            f"`forward` must be picklable to run in a process pool (a function defined at module level, not a "
            f"lambda or a local function): {type(err).__name__}: {err}. Use a ThreadPoolExecutor or a Dask "
            "client's executor (cloudpickle) for closures"
        ) from err


def invert_external(
    problem: InverseProblem,
    method: AbstractInversion,
    key,
    forward: Callable,
    n_steps: int | None = None,
    *,
    executor: cf.Executor | None = None,
    stop: DiscrepancyPrinciple | None = None,
    max_steps: int = 100,
    init_state=None,
    throw: bool = True,
    timeout: float | None = None,
    callback: Callable[[IterationReport], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> InversionResult:
    """Run `method` on `problem` with a forward model outside JAX, evaluated on `executor`.

    The loop, the stopping rules, the history and the result are those of
    `invert` (same key: same history, up to rounding); only the forward runs
    differ: `forward(theta)` on each (d,) NumPy row of `method.ask(state)`,
    submitted to `executor` and gathered before the (jitted) update.

    Args:
        problem: the `InverseProblem`; its `forward` is ignored (None is usual).
        method: `EKI`, `ETKI`, `EKS`, `UKI`, ...
        key: PRNG key (as `invert`).
        forward: `forward(theta) -> (p,)` array-like, theta a (d,) NumPy array of
            physical parameters in the problem's dtype.
        n_steps: the number of updates, or the bound of an adaptive run (as `invert`).
        executor: a `concurrent.futures.Executor`; default: a `ProcessPoolExecutor`
            (spawn, one worker per core) created and shut down by this call.
        stop: `DiscrepancyPrinciple(...)` or None.
        max_steps: the bound of adaptive runs when `n_steps` is None.
        init_state: start from this state instead of `method.init(problem, key)`.
        throw: raise `InversionError` when too few runs succeed or the ensemble
            becomes non-finite; with False read `result.code`.
        timeout: seconds to wait for one iteration's runs; runs still going then
            count as raised (RESULTS.FORWARD_RAISED). None: wait for ever.
        callback: called as `callback(IterationReport)` after every iteration
            (progress, checkpoints); its return value is ignored.
        checkpoint: a folder where the run saves itself: each forward run's output as it
            finishes and, after each iteration, the state, key and history (atomic
            writes). Called again with the same arguments after a crash, the run reads the
            folder back, does not repeat the iterations or the forward runs that finished,
            and ends with the same result as an uninterrupted run. A folder of another run
            (other data, prior, method, key or length) is refused.
        progress: draw a progress bar of the iterations with the current misfit and the
            time of the forward runs (tqdm, on stderr).

    Returns:
        `InversionResult(state, history, code, n_iterations)`, as `invert`.

    Raises:
        InversionError: (with `throw`) too few successful runs, quoting the first
            exception messages, or a non-finite ensemble.
        ValueError / TypeError: bad arguments, or a run returning a wrong shape.
    """
    n_steps = check_run(problem, method, key, n_steps, stop, max_steps)
    if not callable(forward):
        raise TypeError(f"`forward` must be callable (theta -> (p,) predicted data); got {type(forward).__name__}")
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(
            "`executor` must be a concurrent.futures.Executor (ProcessPoolExecutor, ThreadPoolExecutor, "
            f"distributed.Client(...).get_executor()) or None; got {type(executor).__name__}"
        )
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"`timeout` must be a positive number of seconds or None; got {timeout!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable (IterationReport -> None) or None; got {type(callback).__name__}")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False; got {type(progress).__name__}")
    adaptive = is_adaptive(method, stop)
    if executor is None or isinstance(executor, cf.ProcessPoolExecutor):
        _check_picklable(forward)

    # the key sequence of `invert`, so that both runs draw the same numbers
    state, key = start(problem, method, key, init_state)
    n_limit = (max_steps if n_steps is None else n_steps) if adaptive else n_steps
    keys = None if (adaptive or key is None) else jax.random.split(key, n_steps + 1)
    run_folder = None
    if checkpoint is not None:
        run_folder = RunFolder(pathlib.Path(checkpoint), problem, method, key, state, n_limit, stop, adaptive)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_limit + 1, desc=f"{type(method).__name__} iterations", leave=True, file=sys.stderr)
        callback = _with_bar(bar, callback)
    owned = executor is None
    if owned:
        executor = cf.ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
    timed_out = [False]
    try:
        state, code, rows, last_messages, n_done = _loop(
            problem, method, forward, executor, state, key, keys, n_limit, adaptive, stop, timeout, callback,
            timed_out, run_folder,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
        if owned:
            # runs that timed out may still be going: do not wait for them
            executor.shutdown(wait=not timed_out[0], cancel_futures=True)

    history = InversionHistory(*(jnp.asarray(r) for r in rows))
    result = InversionResult(state=state, history=history, code=jnp.int32(code), n_iterations=jnp.int32(n_done))
    if throw:
        try:
            result = check_result(result, method)
        except InversionError as err:
            if code == RESULTS.TOO_FEW_SUCCESSES and last_messages:
                quoted = "; ".join(f"member {j}: {m}" for j, m in last_messages)
                raise InversionError(f"{err}. First errors of the forward runs: {quoted}") from None
            raise
    return result


def _with_bar(bar, callback):
    """The callback that also advances the progress bar (misfit of the last ensemble, forward time)."""

    def report(iteration: IterationReport) -> None:
        misfit = float(np.asarray(iteration.state.misfit)) if hasattr(iteration.state, "misfit") else float("nan")
        bar.set_postfix(misfit=f"{misfit:.4g}", forward=f"{iteration.forward_seconds:.2f}s",
                        failed=iteration.n_raised)
        bar.update(1)
        if callback is not None:
            callback(iteration)

    return report


def _empty_rows(problem, method, n_limit):
    n_rows = n_limit + 1
    n_points = method.n_points(problem)
    d = problem.parameter_dim
    dtype = np.dtype(problem.dtype)
    return [
        np.full((n_rows, d), np.nan, dtype),
        np.full((n_rows, d), np.nan, dtype),
        np.full((n_rows, d), np.nan, dtype),
        np.full((n_rows,), np.nan, dtype),
        np.full((n_rows,), np.nan, dtype),
        np.full((n_rows,), np.nan, dtype),
        np.full((n_rows, n_points), -1, np.int32),
    ]


class RunFolder:
    """The checkpoint folder of one `invert_external` run: run.json (what the run is),
    progress.eqx (iterations done, state, key, history rows; after each iteration) and
    iteration-N/ (points.npy, and member-J.npy for each forward run that finished)."""

    def __init__(self, folder, problem, method, key, state, n_limit, stop, adaptive):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        description = dict(
            format=1, method=type(method).__name__, method_arrays=ckpt.digest(*ckpt.array_leaves(method)),
            problem=ckpt.digest(problem.y, *ckpt.array_leaves(problem)), key=None if key is None else ckpt.digest(key),
            n_limit=int(n_limit), adaptive=bool(adaptive), stop=repr(stop),
        )
        try:
            ckpt.claim(folder, description)
        except ValueError as err:
            raise ValueError(f"`checkpoint`: {err}") from None
        # the key is saved as its raw data and rewrapped as it came (typed, with its
        # implementation, or a legacy uint32 key)
        self.key_impl = None
        if key is not None and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            self.key_impl = jax.random.key_impl(key)
        self.template = (jnp.asarray(0), jnp.asarray(0), state, self._key_data(key),
                         [jnp.asarray(r) for r in _empty_rows(problem, method, n_limit)])

    def _key_data(self, key):
        if key is None:
            return jnp.zeros(0, jnp.uint32)
        return jax.random.key_data(key) if self.key_impl is not None else jnp.asarray(key)

    def load(self):
        """(iterations done, code of the last one, state, key, rows), or None before the
        first iteration ends."""
        path = self.folder / "progress.eqx"
        if not path.exists():
            return None
        done, code, state, key_data, rows = ckpt.read_tree(path, self.template)
        if not key_data.size:
            key = None
        elif self.key_impl is not None:
            key = jax.random.wrap_key_data(key_data, impl=self.key_impl)
        else:
            key = key_data
        return int(done), int(code), state, key, [np.array(r) for r in rows]

    def save(self, done, code, state, key, rows) -> None:
        ckpt.write_tree(self.folder / "progress.eqx", (jnp.asarray(done), jnp.asarray(code), state,
                                                       self._key_data(key), [jnp.asarray(r) for r in rows]))
        shutil.rmtree(self.iteration(done - 1), ignore_errors=True)

    def iteration(self, n) -> pathlib.Path:
        return self.folder / f"iteration-{n:05d}"


def _loop(problem, method, forward, executor, state, key, keys, n_limit, adaptive, stop, timeout, callback, timed_out,
          run_folder=None):
    n_rows = n_limit + 1
    p = problem.data_dim
    dtype = np.dtype(problem.dtype)
    rows = _empty_rows(problem, method, n_limit)
    first = 0
    saved = None if run_folder is None else run_folder.load()
    messages = []
    if saved is not None:
        first, code, state, key, rows = saved
        if code != RUNNING:  # the saved run had ended: its result, nothing rerun
            return state, code, rows, messages, first - 1
    for n in range(first, n_rows):
        if keys is not None:
            key_n = keys[n]
        elif key is not None:
            key, key_n = jax.random.split(key)
        else:
            key_n = None
        start = time.perf_counter()
        points = np.asarray(_ask(method, state), dtype)
        member_folder = None if run_folder is None else run_folder.iteration(n)
        outputs, raised, errors = _run_members(executor, forward, points, p, dtype, timeout, n, member_folder)
        timed_out[0] = timed_out[0] or any(m.startswith(_TIMEOUT) for _, m in errors)
        forward_done = time.perf_counter()
        messages = errors[:MAX_MESSAGES]
        if errors:
            logger.warning(
                "iteration %d: %d of %d forward runs raised; %s",
                n, len(errors), len(points), "; ".join(f"member {j}: {m}" for j, m in messages),
            )  # fmt: skip
        state, code, row = _update(
            problem, method, stop, adaptive, state, outputs, raised, key_n, jnp.int32(n), jnp.int32(n_limit)
        )
        row = jax.device_get(row)
        code = int(code)
        update_done = time.perf_counter()
        for buffer, value in zip(rows, row):
            buffer[n] = value
        if run_folder is not None:
            run_folder.save(n + 1, code, state, key, rows)
        if callback is not None:
            callback(
                IterationReport(
                    iteration=n,
                    points=points,
                    outputs=outputs,
                    failures=np.asarray(row[-1]),
                    errors=tuple(messages),
                    n_raised=len(errors),
                    code=code,
                    state=state,
                    forward_seconds=forward_done - start,
                    update_seconds=update_done - forward_done,
                )
            )
        if code != RUNNING:
            return state, code, rows, messages, n
    raise AssertionError("unreachable: the decision stops the run at n_limit")  # pragma: no cover
