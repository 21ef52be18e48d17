"""The time loops `assimilate` can run: strategies chosen by the driver.

One driver (`kx.assimilate`) owns the loop over cycles; how the cycles are
scanned is a small Module, as diffrax's step-size controllers are:

- `SequentialScan()`: one `lax.scan`, each cycle `forecast` then `analysis`;
  every filter runs this way.
- `SteadyStateScan()`: for an `AbstractSteadyStateFilter` on a time-invariant
  model (the Kalman filter's converged Riccati recursion): chunks of cycles,
  each either the full recursion or the steady one (a `lax.cond` between two
  `lax.scan`s per chunk, so the cached quantities cross the switch once per
  chunk). Under `vmap` the switch becomes a select and both branches run; the
  results are the same.
- `ParallelScan()`: for an `AbstractParallelFilter`, the whole run as
  associative scans (O(log T) depth on accelerators).
- `CheckpointedScan(chunk_size)`: the sequential scan with `jax.checkpoint`
  per chunk of cycles, so that gradients through long runs need O(sqrt(T))
  stored states instead of O(T); chosen explicitly (`loop=`).

When `assimilate` is given no loop, it runs `ParallelScan` with
`parallel=True`, else `SteadyStateScan` where the method declares that
capability, has it switched on, and the model has no `TimeVarying` field, else
`SequentialScan`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .filters.base import AbstractFilter, AbstractParallelFilter, AbstractSteadyStateFilter
from .ssm import merge_time_step, n_times, split_time_varying

CHUNK = 16  # cycles per switch of `SteadyStateScan` when no divisor of T fits (see `chunk_size`)


def chunk_size(n_cycles: int) -> int:
    """Cycles per chunk: a divisor of `n_cycles` between 8 and 32 where there is one
    (the chunks then tile the run and no output is concatenated), else `CHUNK`."""
    for size in range(32, 7, -1):
        if n_cycles % size == 0:
            return size
    return min(CHUNK, n_cycles)


def chunked_scan(chunk, carry, inputs, reverse: bool = False, size: int | None = None):
    """`lax.scan` of `chunk(carry, inputs_of_a_chunk) -> (carry, outputs_of_the_chunk)`
    over chunks of `size` (default `chunk_size(T)`) cycles of `inputs` (arrays with T
    leading), in time order or in reverse; returns the carry and the outputs with their T
    axis restored. When the chunks do not tile T, the remainder is a last chunk in time
    (the first one in reverse) and its outputs are concatenated."""
    n_cycles = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    size = chunk_size(n_cycles) if size is None else min(int(size), n_cycles)
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


def initial_state(model, method: AbstractFilter, keys):
    """`method.init` with the model of the first cycle and the first key."""
    varying, constant = split_time_varying(model)
    first_model = merge_time_step(jax.tree_util.tree_map(lambda x: x[0], varying), constant)
    return method.init(first_model, None if keys is None else keys[0])


class AbstractTimeLoop(eqx.Module):
    """How `assimilate` scans the cycles.

    `check` runs before tracing and raises if the loop does not apply;
    `run` is traced inside the driver's compiled program and returns
    `(final_state, history)`.
    """

    @abc.abstractmethod
    def check(self, model, method: AbstractFilter, init_state) -> None:
        """Raise a ValueError naming what does not fit."""

    @abc.abstractmethod
    def run(self, model, method: AbstractFilter, init_state, ys, keys, save, unroll: int):
        """The run over `ys` (T, dy): keys (T + 1,) or None (key 0 for `init`)."""


def cycle_and_inputs(model, method: AbstractFilter, ys, keys, save):
    """(cycle, inputs): the scan body of one cycle, `method.forecast` then
    `method.analysis`, and its per-cycle inputs (time-varying fields, y, key, index)."""
    varying, constant = split_time_varying(model)

    def cycle(state, inputs):
        varying_step, y, key, n = inputs
        step_model = merge_time_step(varying_step, constant)
        key_forecast, key_analysis = (None, None) if key is None else jax.random.split(key)
        forecast = method.forecast(step_model, state, key_forecast)
        analysis, info = method.analysis(step_model, forecast, y, key_analysis)
        return analysis, save(forecast, analysis, info, n)

    step_keys = None if keys is None else keys[1:]
    return cycle, (varying, ys, step_keys, jnp.arange(ys.shape[0]))


class SequentialScan(AbstractTimeLoop):
    """One `lax.scan`: each cycle `method.forecast` then `method.analysis`.

    Attributes:
        remat: recompute each cycle in reverse-mode differentiation (`jax.checkpoint`
            per cycle): the gradient stores the filter state of each cycle and none of
            its intermediates, and recomputes them cycle by cycle. On a CPU this is
            faster as well as smaller (measured, Lorenz-96 d = 40, N = 50, T = 200:
            value_and_grad 4.2x the forward run for an ETKF instead of 6.1x, 2.9x
            instead of 3.6x for an LETKF); the values are the same. The losses of
            `kalmax.learning` use it by default. No effect without differentiation.
    """

    remat: bool = eqx.field(static=True, default=False)

    def check(self, model, method, init_state) -> None:
        return None

    def run(self, model, method, init_state, ys, keys, save, unroll: int):
        state = initial_state(model, method, keys) if init_state is None else init_state
        cycle, inputs = cycle_and_inputs(model, method, ys, keys, save)
        if self.remat:
            cycle = jax.checkpoint(cycle)
        return jax.lax.scan(cycle, state, inputs, unroll=unroll)


class CheckpointedScan(AbstractTimeLoop):
    """The sequential scan in chunks of `chunk_size` cycles, each under `jax.checkpoint`:
    reverse-mode differentiation (`jax.grad` of a loss over a long run) stores the filter
    state at chunk boundaries only and recomputes the cycles of one chunk at a time, so the
    memory of the residuals is O(T / c + c) filter states instead of O(T) (c = sqrt(T):
    O(sqrt(T))), for about one more forward pass of compute (Griewank & Walther 2008,
    "Evaluating Derivatives", ch. 12). The values equal `SequentialScan`'s; what
    `save` keeps per cycle is still stored (use `kx.Save(mean=False)` for a loss).

    Attributes:
        chunk_size: cycles per checkpointed chunk (static int >= 1); None: round(sqrt(T)).
    """

    chunk_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ValueError(f"`chunk_size` must be a positive int or None; got {self.chunk_size!r}")

    def check(self, model, method, init_state) -> None:
        return None

    def run(self, model, method, init_state, ys, keys, save, unroll: int):
        state = initial_state(model, method, keys) if init_state is None else init_state
        cycle, inputs = cycle_and_inputs(model, method, ys, keys, save)
        n_cycles = ys.shape[0]
        size = max(1, round(n_cycles**0.5)) if self.chunk_size is None else self.chunk_size

        @jax.checkpoint
        def chunk(carry, chunk_inputs):
            return jax.lax.scan(cycle, carry, chunk_inputs, unroll=unroll)

        return chunked_scan(chunk, state, inputs, size=size)


class SteadyStateScan(AbstractTimeLoop):
    """Chunks of cycles, each the full or the steady recursion of an
    `AbstractSteadyStateFilter` (see the module docstring); time-invariant models only.

    The steady filters draw no random numbers: keys are not used.
    """

    def check(self, model, method, init_state) -> None:
        if not isinstance(method, AbstractSteadyStateFilter):
            raise ValueError(f"`loop=SteadyStateScan()`: {type(method).__name__} has no steady-state form")
        if n_times(model) is not None:
            raise ValueError("`loop=SteadyStateScan()` needs a time-invariant model; `model` has `TimeVarying` fields")

    def run(self, model, method, init_state, ys, keys, save, unroll: int):
        state = initial_state(model, method, keys) if init_state is None else init_state
        cycles = method.steady_cycles(model)

        def run_with(cycle_fn):
            def body(carry, inputs):
                state, cache = carry
                y, n = inputs
                forecast, analysis, info, cache = cycle_fn(state, y, cache)
                return (analysis, cache), save(forecast, analysis, info, n)

            return body

        def chunk(carry, inputs):
            ys_chunk, _ = inputs
            steady_ok = cycles.converged(carry[1]) & jnp.all(jnp.isfinite(ys_chunk))

            def branch(cycle_fn):
                return lambda carry: jax.lax.scan(run_with(cycle_fn), carry, inputs, unroll=unroll)

            return jax.lax.cond(steady_ok, branch(cycles.steady), branch(cycles.full), carry)

        carry = (state, cycles.initial_cache(state, ys))
        (final, _), history = chunked_scan(chunk, carry, (ys, jnp.arange(ys.shape[0])))
        return final, history


class ParallelScan(AbstractTimeLoop):
    """The whole run of an `AbstractParallelFilter` as associative scans
    (Särkkä & García-Fernández 2021); the saver is applied to every cycle."""

    def check(self, model, method, init_state) -> None:
        if not isinstance(method, AbstractParallelFilter):
            raise ValueError(f"`parallel=True`: {type(method).__name__} has no parallel-in-time form")
        if init_state is not None:
            raise ValueError("`init_state` is not supported with `parallel=True`")

    def run(self, model, method, init_state, ys, keys, save, unroll: int):
        forecasts, analyses, info = method.parallel_run(model, ys)
        history = jax.vmap(save)(forecasts, analyses, info, jnp.arange(ys.shape[0]))
        return jax.tree_util.tree_map(lambda x: x[-1], analyses), history


def default_loop(model, method: AbstractFilter, parallel: bool) -> AbstractTimeLoop:
    """The loop `assimilate` runs when none is given (see the module docstring)."""
    if parallel:
        return ParallelScan()
    steady = isinstance(method, AbstractSteadyStateFilter) and type(method).uses_steady_state(method)
    if steady and n_times(model) is None:
        return SteadyStateScan()
    return SequentialScan()


__all__ = [
    "AbstractTimeLoop",
    "CheckpointedScan",
    "ParallelScan",
    "SequentialScan",
    "SteadyStateScan",
    "chunk_size",
    "chunked_scan",
    "cycle_and_inputs",
    "default_loop",
]
