"""Learning through filters: losses of the learned pytree `(model, method)`."""

from .losses import forecast_error, negative_log_likelihood, truncated_negative_log_likelihood

__all__ = ["forecast_error", "negative_log_likelihood", "truncated_negative_log_likelihood"]
