"""The contract every smoother keeps, and `smooth`, the driver that runs one.

A smoother is an `equinox.Module` whose fields are its hyperparameters:

    result = smoother.run(model, ys, key)        # traced: forward filter and backward pass
    result = kx.smooth(model, smoother, ys, key) # checks, one compiled program, result codes

`run` returns a result with the filter's `History` in `result.filtered`
(whose `info.status` carries `kalmax.RESULTS` codes) and the smoothed
quantities; `smooth` calls `check_model` before tracing and raises
`DivergenceError` for a failing cycle unless `throw=False`. Smoothers run
their forward filter through `kx.assimilate`, so the time loop stays in one
driver.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx

from .. import _checks
from ..assimilate import check_observations, check_status


class AbstractSmoother(eqx.Module):
    """A smoother of a whole observation sequence (see the module docstring).

    Class variables:
        stochastic: whether the smoother draws random numbers (then `smooth` requires a key).
    """

    stochastic: ClassVar[bool] = False

    def check_model(self, model) -> None:
        """Raise a clear error if `model` does not suit the smoother (before tracing). Default: none."""

    def prepare_model(self, model):
        """The model the run uses, made before tracing (while its arrays are concrete). Default: `model`."""
        return model

    @abc.abstractmethod
    def run(self, model, ys, key=None, init_state=None) -> Any:
        """The smoothed result over `ys` (T, dy), with the filter's history in `.filtered`;
        `init_state` (optional) replaces the draw from the model's prior."""


@eqx.filter_jit
def _run(model, smoother: AbstractSmoother, ys, key, init_state):
    return smoother.run(model, ys, key, init_state)


def smooth(model, smoother: AbstractSmoother, ys, key=None, *, throw: bool = True, init_state=None):
    """Run `smoother` over `ys` in one compiled program.

    Args:
        model: the state-space model.
        smoother: an `AbstractSmoother` (e.g. `kx.RTSSmoother()`).
        ys: (T, dy) observations y_1..y_T; NaN entries are missing.
        key: PRNG key (required by stochastic smoothers).
        throw: raise `DivergenceError` naming the first failing cycle of the
            forward filter; with False, read `result.filtered.info.status`.
        init_state: start from this state instead of the model's prior (ensemble
            smoothers: a `kx.Ensemble` of the initial members, e.g. exported from DAPPER).
    """
    if not isinstance(smoother, AbstractSmoother):
        raise TypeError(f"`smoother` must be a kalmax smoother (e.g. kx.RTSSmoother()); got {type(smoother).__name__}")
    if smoother.stochastic and key is None:
        raise ValueError(f"`key` is required: {type(smoother).__name__} is stochastic; pass jax.random.key(seed)")
    type(smoother).check_model(smoother, model)  # through the class: no bound-method pytree per call
    model = type(smoother).prepare_model(smoother, model)
    ys = check_observations(model, ys)
    if key is not None:
        _checks.check_key("key", key)
    result = _run(model, smoother, ys, key, init_state)
    if throw:
        result = eqx.tree_at(lambda r: r.filtered, result, check_status(result.filtered, type(smoother).__name__))
    return result


__all__ = ["AbstractSmoother", "smooth"]
