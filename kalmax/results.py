"""One set of result codes for the whole package, and the errors that report them.

Every driver reports what happened with a code of `RESULTS`: `assimilate`
and the smoothers per cycle (`history.info.status`), `invert` per run
(`result.code`) and per member (`history.failures`). The codes are plain
integers (an `IntEnum`), so they live in int32 arrays inside `jit`, `vmap` and
`lax.scan`, compare with numbers, and `RESULTS(code).message` says them in words.

With `throw=True` a driver raises a subclass of `KalmaxError` naming what
failed and where: `DivergenceError` (a filter or smoother cycle) or
`InversionError` (an inversion run), `LearningError` (a fit).
"""

from __future__ import annotations

import enum


class RESULTS(enum.IntEnum):
    """Result codes (value, message). 0 is success everywhere.

    Per cycle of a filter or smoother:
        SUCCESSFUL, NOT_POSITIVE_DEFINITE, NON_FINITE, COLLAPSED, NOT_CONVERGED (an iterative
        smoother or 4D-Var window whose iterations ended above their tolerance, when strict).
    Why an inversion run ended:
        SUCCESSFUL (the requested steps were made), DISCREPANCY, FINAL_TIME,
        MAX_STEPS, TOO_FEW_SUCCESSES, NON_FINITE.
    Why one forward run of an inversion failed:
        FORWARD_NON_FINITE, FORWARD_REJECTED, FORWARD_RAISED.
    """

    def __new__(cls, value: int, message: str):
        item = int.__new__(cls, value)
        item._value_ = value
        item.message = message
        return item

    SUCCESSFUL = 0, "success"
    NOT_POSITIVE_DEFINITE = 1, "a covariance that must be positive definite is not (Cholesky factorisation failed)"
    NON_FINITE = 2, "the state became non-finite (NaN or inf)"
    COLLAPSED = 3, "the ensemble collapsed (its spread is zero)"
    DISCREPANCY = 4, "stopped by the discrepancy principle (data misfit at the noise level)"
    FINAL_TIME = 5, "reached the scheduler's final time"
    MAX_STEPS = 6, "reached max_steps before a stopping rule fired"
    TOO_FEW_SUCCESSES = 7, "too few forward runs succeeded to update"
    FORWARD_NON_FINITE = 8, "non-finite output"
    FORWARD_REJECTED = 9, "failed the problem's `failed_if` criterion"
    FORWARD_RAISED = 10, "the forward run raised an exception"
    NOT_CONVERGED = 11, "the iterations did not converge (the last increment stayed above wtol)"


def message(code) -> str:
    """The message of a (concrete) code, or "status N" for a code outside `RESULTS`."""
    try:
        return RESULTS(int(code)).message
    except ValueError:
        return f"status {int(code)}"


class KalmaxError(RuntimeError):
    """Base of the errors a kalmax driver raises for a run that failed (`throw=True`)."""


class DivergenceError(KalmaxError):
    """A filter or smoother failed numerically; the message names the first failing cycle."""


class InversionError(KalmaxError):
    """An inversion could not go on (too many failed members, or a non-finite ensemble)."""


class LearningError(KalmaxError):
    """A fit could not go on: a non-finite loss or gradient (the message names the epoch and leaf)."""


__all__ = ["RESULTS", "DivergenceError", "InversionError", "KalmaxError", "LearningError", "message"]
