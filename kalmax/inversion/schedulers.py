"""Step-size schedulers for ensemble inversion: h_n from the current ensemble's outputs.

The algorithmic time is t_n = h_0 + ... + h_{n-1}. A scheduler with a finite
`final_time` T shortens its last step so that t reaches T exactly; `invert`
then stops with `REACHED_FINAL_TIME` (finite-time EKI: T = 1 approximates
the posterior for linear Gaussian problems).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class StepContext(eqx.Module):
    """What a scheduler may use to choose the next step (rows of failed members are zero).

    Attributes:
        residuals: (J, p) whitened residuals r_j = L^{-1}(y - G(u_j)).
        output_anomalies: (J, p) whitened output anomalies L^{-1}(G(u_j) - mean G).
        success: (J,) mask of members whose forward run succeeded.
        time: t_n, the algorithmic time so far.
    """

    residuals: Float[Array, "J p"]
    output_anomalies: Float[Array, "J p"]
    success: Bool[Array, " J"]
    time: Float[Array, ""]

    @property
    def n_success(self):
        return jnp.sum(self.success).astype(self.residuals.dtype)


class AbstractScheduler(eqx.Module):
    """Chooses h_n; `final_time` is the algorithmic time at which a run ends (inf: never)."""

    @abc.abstractmethod
    def raw_step(self, context: StepContext) -> Float[Array, ""]:
        """The step before it is shortened to end at `final_time`."""

    @property
    def final_time(self) -> float:
        return math.inf

    def __call__(self, context: StepContext) -> Float[Array, ""]:
        step = self.raw_step(context)
        if math.isfinite(self.final_time):
            step = jnp.minimum(step, jnp.maximum(self.final_time - context.time, 0.0))
        return step.astype(context.residuals.dtype)


def _check_positive(name: str, value) -> None:
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"`{name}` must be positive; got {value}")


def _check_final_time(final_time) -> None:
    if not (isinstance(final_time, (int, float)) and final_time > 0):
        raise ValueError(f"`final_time` must be a positive number (or math.inf); got {final_time!r}")


class FixedStep(AbstractScheduler):
    """h_n = step (Iglesias, Law & Stuart 2013 use step = 1).

    Attributes:
        step: the step h (traced: it can be learned or vmapped over).
        end: optional final time T; with T = n * step the run is finite-time EKI.
    """

    step: Float[Array, ""] | float = 1.0
    end: float = eqx.field(static=True, default=math.inf)

    def __check_init__(self):
        _check_positive("step", self.step)
        _check_final_time(self.end)

    @property
    def final_time(self) -> float:
        return self.end

    def raw_step(self, context):
        return jnp.asarray(self.step, context.residuals.dtype)


class DataMisfitController(AbstractScheduler):
    """The data-misfit controller of Iglesias & Yang (2021, Inverse Problems 37 025008).

    With Phi_j = |r_j|^2 / 2 over the successful members and p the data size,

        h_n = min( max( p / (2 mean Phi), sqrt(p / (2 var Phi)) ), T - t_n ),

    so that the steps are small while the misfit is large and the run ends at
    T (default 1: the finite-time, posterior-approximating regime).
    """

    end: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        _check_final_time(self.end)

    @property
    def final_time(self) -> float:
        return self.end

    def raw_step(self, context):
        n = context.n_success
        data_dim = context.residuals.shape[1]
        misfits = 0.5 * jnp.sum(context.residuals**2, axis=1)
        mean = jnp.sum(jnp.where(context.success, misfits, 0.0)) / n
        var = jnp.sum(jnp.where(context.success, (misfits - mean) ** 2, 0.0)) / (n - 1)
        tiny = jnp.finfo(misfits.dtype).tiny
        return jnp.maximum(data_dim / (2 * jnp.maximum(mean, tiny)), jnp.sqrt(data_dim / (2 * jnp.maximum(var, tiny))))


class EKSStableStep(AbstractScheduler):
    """dt_n = numerator / (|D_n|_F + nugget) (Garbuno-Inigo, Hoffmann, Li & Stuart 2020, sec. 4).

    D_n is the J x J matrix D_jk = <G(u_k) - mean G, Gamma^{-1}(G(u_j) - y)> / J
    of the EKS drift (J: the successful members); the rule keeps the explicit
    part of the step stable.
    """

    numerator: Float[Array, ""] | float = 1.0
    nugget: Float[Array, ""] | float = 1e-8
    end: float = eqx.field(static=True, default=math.inf)

    def __check_init__(self):
        _check_positive("numerator", self.numerator)
        _check_final_time(self.end)

    @property
    def final_time(self) -> float:
        return self.end

    def raw_step(self, context):
        drift = -(context.residuals @ context.output_anomalies.T) / context.n_success
        return self.numerator / (jnp.sqrt(jnp.sum(drift**2)) + self.nugget)


def mda_coefficients(coefficients) -> tuple[float, ...]:
    """The inflation coefficients alpha_1..alpha_Na of ES-MDA, checked: an int n gives n
    equal coefficients alpha_i = n; a sequence must be positive with sum(1 / alpha_i) = 1."""
    if isinstance(coefficients, bool):
        raise TypeError(f"`coefficients` must be a number of assimilations or a sequence of alphas; got {coefficients!r}")
    if isinstance(coefficients, int):
        if coefficients < 1:
            raise ValueError(f"`coefficients`: the number of assimilations must be >= 1; got {coefficients}")
        return (float(coefficients),) * coefficients
    try:
        values = tuple(float(a) for a in coefficients)
    except TypeError:
        raise TypeError(
            f"`coefficients` must be a number of assimilations or a sequence of alphas; got {type(coefficients).__name__}"
        ) from None
    if not values:
        raise ValueError("`coefficients` is empty: give at least one alpha")
    if not all(math.isfinite(a) and a > 0 for a in values):
        raise ValueError(f"`coefficients` must be positive and finite; got {values}")
    total = math.fsum(1.0 / a for a in values)
    if abs(total - 1.0) > 1e-8:
        raise ValueError(f"`coefficients`: the inverses of the alphas must sum to 1 (Emerick & Reynolds 2013); "
                         f"sum(1/alpha) = {total!r} for {values}")
    return values


class MDASchedule(AbstractScheduler):
    """The steps h_i = 1 / alpha_i of ES-MDA (Emerick & Reynolds 2013), ending at t = 1.

    Stochastic EKI with these steps is ES-MDA: the data noise is inflated by alpha_i
    (h^{-1} Gamma) and the perturbations by sqrt(alpha_i). The step of iteration i is
    found from the time t_i = 1/alpha_1 + ... + 1/alpha_{i-1} reached so far.

    Attributes:
        coefficients: the alphas (static), positive with sum(1 / alpha_i) = 1; an int n
            gives n equal alphas.
    """

    coefficients: tuple[float, ...] = eqx.field(static=True, converter=mda_coefficients)

    @property
    def final_time(self) -> float:
        return 1.0

    def raw_step(self, context):
        dtype = context.residuals.dtype
        steps = jnp.asarray([1.0 / a for a in self.coefficients], dtype)
        starts = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(steps)[:-1]])
        index = jnp.argmin(jnp.abs(starts - context.time))
        return steps[index]
