"""Learning through filters: losses of the learned pytree `(model, method)` (with the Kalman
filter's gradient in closed form, `fisher`), a fitting loop, constrained parameters, EM for
linear-Gaussian models, and parameter estimation by state augmentation."""

from .augmentation import AugmentedDynamics, augment_state, split_augmented
from .em import EM_FIELDS, EMResult, SufficientStatistics, e_step, em, m_step
from .fisher import kalman_negative_log_likelihood, log_likelihood_gradient
from .fit import FitResult, fit, make_step
from .losses import forecast_error, negative_log_likelihood, truncated_negative_log_likelihood
from .parameters import AtLeast, CholeskyCovariance, Positive

__all__ = [
    "AugmentedDynamics",
    "augment_state",
    "split_augmented",
    "EM_FIELDS",
    "EMResult",
    "SufficientStatistics",
    "e_step",
    "em",
    "m_step",
    "AtLeast",
    "CholeskyCovariance",
    "Positive",
    "kalman_negative_log_likelihood",
    "log_likelihood_gradient",
    "FitResult",
    "fit",
    "forecast_error",
    "make_step",
    "negative_log_likelihood",
    "truncated_negative_log_likelihood",
]
