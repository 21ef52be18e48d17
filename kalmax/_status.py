"""Result codes that methods report per cycle in their `Info.status`."""

from __future__ import annotations

OK = 0
NOT_POSITIVE_DEFINITE = 1
NON_FINITE = 2
COLLAPSED = 3

MESSAGES = {
    OK: "success",
    NOT_POSITIVE_DEFINITE: "a covariance that must be positive definite is not "
    "(Cholesky factorisation failed)",
    NON_FINITE: "the state became non-finite (NaN or inf)",
    COLLAPSED: "the ensemble collapsed (its spread is zero)",
}


class DivergenceError(RuntimeError):
    """A run failed numerically; the message names the first failing cycle."""
