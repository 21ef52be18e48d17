"""How kalmax's own compiled runs are scheduled on a CPU.

XLA:CPU runs independent operations of one program concurrently on its thread
pool. Inside a filter cycle of a small problem (a Lorenz-96 ensemble of 24 x
40, a 32-dimensional Kalman filter) those operations take microseconds, and
handing them between threads costs more than it saves: with a random rotation
(DAPPER's `rot=True`), whose random matrix and QR factorisation are
independent of the analysis, a 24-member ETKF cycle on Lorenz-96 took 101 us
of wall and 137 us of CPU time with the concurrent schedule and 89 us / 89 us
with the serial one; a 10-member Lorenz-63 stochastic EnKF 16 / 32 us against
11 / 11 us (benchmarks/results/ensemble.md). For large problems (a d = 1,000
LETKF, a 128-dimensional smoother) the concurrent schedule was 5-20% faster.
So kalmax compiles its runs with XLA's serial schedule when the filter state
is small and the default backend is the CPU, and leaves every other case to
XLA's defaults. This is a per-program compiler option: nothing global changes,
and a run traced inside the user's own `jax.jit` follows that jit's options.
"""

from __future__ import annotations

import equinox as eqx
import jax

from .filters.base import AbstractFilter
from .filters.ensemble_base import AbstractEnsembleFilter

SERIAL_SCHEDULE = {"xla_cpu_enable_concurrency_optimized_scheduler": False}
SMALL_STATE = 4096  # filter-state entries (members x state dimension, or dx (dx + 1)) up to which CPU runs are serial


def state_size(model, method: AbstractFilter, n_runs: int = 1) -> int:
    """Entries of the filter state: J d for an ensemble method, d (d + 1) for a
    Gaussian one (mean and covariance); times the runs batched together."""
    dim = model.state_dim
    per_run = dim * method.ensemble_size if isinstance(method, AbstractEnsembleFilter) else dim * (dim + 1)
    return per_run * n_runs


def at_top_level() -> bool:
    """Whether no transformation is tracing (compiler options apply to top-level jits only)."""
    return jax.core.trace_ctx.is_top_level()


def prefers_serial(size: int | None) -> bool:
    """Whether a run whose filter state has `size` entries is compiled serially:
    small, on the CPU, and called at the top level (inside a user's `jit`,
    `vmap` or `grad` the run is part of the user's program and its options)."""
    return size is not None and size <= SMALL_STATE and jax.default_backend() == "cpu" and at_top_level()


def dual_jit(fun):
    """`(default, serial)`: `fun` under `eqx.filter_jit` with XLA's default
    options and with its serial CPU schedule (each compiles on first use)."""
    return eqx.filter_jit(fun), eqx.filter_jit(fun, compiler_options=SERIAL_SCHEDULE)
