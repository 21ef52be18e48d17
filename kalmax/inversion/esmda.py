"""ES-MDA: the ensemble smoother with multiple data assimilation (Emerick & Reynolds 2013,
"Ensemble smoother with multiple data assimilation", Computers & Geosciences 55).

The data are assimilated N_a times, each time with the noise covariance inflated by
alpha_i (sum_i 1 / alpha_i = 1):

    u_j <- u_j + C^{uG} (C^{GG} + alpha_i Gamma)^{-1} (y + sqrt(alpha_i) eta_j - G(u_j)),
    eta_j ~ N(0, Gamma),

which is stochastic EKI with steps h_i = 1 / alpha_i run to time 1 (`MDASchedule`).
For a linear G and a large ensemble the final ensemble samples the posterior exactly
(the alphas split one Bayesian update into N_a tempered ones); with N_a = 1 it is the
ensemble smoother (ES).
"""

from __future__ import annotations

import math

import equinox as eqx

from .eki import EKI, AbstractEnsembleInversion
from .problem import InverseProblem
from .schedulers import MDASchedule


class ESMDA(AbstractEnsembleInversion):
    """Ensemble smoother with multiple data assimilation (module docstring).

    Attributes:
        ensemble_size: J (at least 2).
        scheduler: the `MDASchedule` of the alphas; build with `ESMDA(J, coefficients)`,
            `coefficients` an int N_a (alpha_i = N_a) or a sequence with sum(1/alpha) = 1.

    `kx.invert(problem, ESMDA(J, 4), key)` runs the N_a assimilations as one fixed,
    differentiable scan (`n_steps`, if given, must be N_a).

    Example:
        >>> result = kx.invert(problem, kx.ESMDA(100, [28 / 3, 7.0, 4.0, 2.0]), key)
    """

    ensemble_size: int = eqx.field(static=True)
    scheduler: MDASchedule

    def __init__(self, ensemble_size: int, coefficients=4):
        self.ensemble_size = ensemble_size
        self.scheduler = coefficients if isinstance(coefficients, MDASchedule) else MDASchedule(coefficients)

    @property
    def n_assimilations(self) -> int:
        return len(self.scheduler.coefficients)

    def final_time(self) -> float:
        """None of its own: `invert` runs the N_a assimilations as a fixed scan (`fixed_iterations`)."""
        return math.inf

    def fixed_iterations(self) -> int:
        """N_a: one assimilation per coefficient."""
        return self.n_assimilations

    def tell(self, problem: InverseProblem, state, outputs, key=None, failures=None):
        """One assimilation: stochastic EKI with h_i = 1 / alpha_i (same checks and failure handling)."""
        return EKI(self.ensemble_size, self.scheduler, stochastic=True).tell(problem, state, outputs, key, failures)


__all__ = ["ESMDA"]
