"""Learning through filters: losses of the learned pytree `(model, method)`, a fitting loop,
constrained parameters, and EM for linear-Gaussian models."""

from .augmentation import AugmentedDynamics, augment_state, split_augmented
from .em import EM_FIELDS, EMResult, SufficientStatistics, e_step, em, m_step
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
    "FitResult",
    "fit",
    "forecast_error",
    "make_step",
    "negative_log_likelihood",
    "truncated_negative_log_likelihood",
]
