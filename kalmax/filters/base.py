"""The contract every filter keeps, and the capabilities a filter can declare.

A filter is an `equinox.Module` whose fields are its hyperparameters; its
methods are pure functions of pytrees (DESIGN.md):

    state = method.init(model, key)                      # the prior of v_0
    state = method.forecast(model, state, key)           # v_n -> v_{n+1}
    state, info = method.analysis(model, state, y, key)  # condition on y_{n+1}

`kx.assimilate` owns the time loop: it calls `check_model` and
`prepare_model` once before tracing, then `init` and, in every cycle,
`forecast` and `analysis` with the model of that cycle. The state must have a
`mean` (dx,) (and `cov` (dx, dx) to be saved with `Save(cov=True)`); the info
must have `log_likelihood` (a scalar) and `status` (an int32 code of
`kalmax.RESULTS`, 0 on success).

Capabilities are declared by the type, so the driver dispatches with
`isinstance` (the pattern of diffrax's `AbstractAdaptiveSolver`):

- `AbstractFilter.stochastic` (a class variable): the filter draws random
  numbers, so `assimilate` requires a key;
- `AbstractEnsembleFilter` (kalmax.filters.ensemble_base): the state is an
  ensemble of `ensemble_size` members;
- `AbstractSteadyStateFilter`: on a time-invariant model the filter has a
  cheaper cycle once a recursion has converged (`kx.SteadyStateScan` runs it);
- `AbstractParallelFilter`: the whole run has a parallel-in-time form
  (`kx.ParallelScan`, `assimilate(..., parallel=True)`).

Every concrete filter is final: subclass an abstract class, never a concrete one.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, Bool, Float


class AbstractFilter(eqx.Module):
    """A sequential filter: `init`, `forecast` and `analysis` (see the module docstring).

    Class variables:
        stochastic: whether the filter draws random numbers (then `assimilate`
            requires a key). Default False.
    """

    stochastic: ClassVar[bool] = False

    def check_model(self, model) -> None:
        """Raise a clear error if `model` does not suit this filter (called by
        `assimilate` once, before tracing, with concrete arrays). Default: no check."""

    def prepare_model(self, model):
        """The model the run uses (called by `assimilate` before tracing, after
        `check_model`), e.g. a `LinearGaussianSSM` viewed as a `StateSpaceModel`.
        Default: `model` itself."""
        return model

    def finished_estimate(self, state):
        """The estimate that the universal scores (`kx.twin_experiment(..., universal=True)`)
        move between observation times after the cycle that returned `state`: by default the
        analysis of v_{n+1} itself; a smoother run as a filter returns its finished smoothed
        estimate of v_{n+1-lag} (the state of its `info.lagged_mean`). Anything with a `mean`
        (and, for an ensemble, `members`)."""
        return state

    @abc.abstractmethod
    def init(self, model, key=None):
        """The filter's state for the prior of v_0."""

    @abc.abstractmethod
    def forecast(self, model, state, key=None):
        """Predict v_{n+1} from the state of v_n."""

    @abc.abstractmethod
    def analysis(self, model, state, y: Float[Array, " dy"], key=None) -> tuple[Any, Any]:
        """Condition the forecast on y_{n+1} (NaN entries missing): (state, info)."""


class AbstractSteadyCycles(eqx.Module):
    """The two cycles of a filter with a steady state, for one time-invariant model.

    `kx.SteadyStateScan` carries a cache beside the filter state; a cycle is
    `full` until `converged(cache)`, then `steady` for whole chunks of cycles
    whose observations are complete. Both return (forecast, analysis, info, cache).
    """

    @abc.abstractmethod
    def initial_cache(self, state, ys) -> Any:
        """The cache before the first cycle (nothing converged)."""

    @abc.abstractmethod
    def converged(self, cache) -> Bool[Array, ""]:
        """Whether the steady cycle may be used from now on."""

    @abc.abstractmethod
    def full(self, state, y, cache) -> tuple[Any, Any, Any, Any]:
        """A cycle of the full recursion, updating the cache."""

    @abc.abstractmethod
    def steady(self, state, y, cache) -> tuple[Any, Any, Any, Any]:
        """A cycle that reuses the converged quantities of the cache."""


class AbstractSteadyStateFilter(AbstractFilter):
    """Capability: a cheaper cycle once a recursion has converged on a time-invariant model."""

    @abc.abstractmethod
    def uses_steady_state(self) -> bool:
        """Whether the steady-state path is switched on (a static choice of the filter)."""

    @abc.abstractmethod
    def steady_cycles(self, model) -> AbstractSteadyCycles:
        """The full and the steady cycle for the (time-invariant) `model`."""


class AbstractParallelFilter(AbstractFilter):
    """Capability: the whole run as a parallel-in-time (associative) scan."""

    @abc.abstractmethod
    def parallel_run(self, model, ys) -> tuple[Any, Any, Any]:
        """(forecasts, analyses, infos) of every cycle, time axis first, from the prior."""


__all__ = ["AbstractFilter", "AbstractParallelFilter", "AbstractSteadyCycles", "AbstractSteadyStateFilter"]
