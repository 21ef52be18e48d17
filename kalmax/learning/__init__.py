"""Learning through filters: losses of the learned pytree `(model, method)` and a fitting loop."""

from .fit import FitResult, fit, make_step
from .losses import forecast_error, negative_log_likelihood, truncated_negative_log_likelihood

__all__ = [
    "FitResult",
    "fit",
    "forecast_error",
    "make_step",
    "negative_log_likelihood",
    "truncated_negative_log_likelihood",
]
