"""Covariance inflation for ensemble methods: small Modules shared by every filter.

Each inflation acts at two points of a cycle: `prior(forecast, key)` on the
forecast ensemble before the analysis, and `posterior(forecast, analysis, key)`
on the analysis ensemble after it. Parameters are traced leaves (vmap a sweep
over them, differentiate with respect to them).

- `MultiplicativeInflation(factor)`: anomalies times `factor` (covariance times
  factor^2), after the analysis (DAPPER's `infl`) or, with `on_forecast=True`,
  before it (Anderson & Anderson 1999).
- `AdditiveInflation(cov)`: forecast members plus N(0, cov) draws (Mitchell &
  Houtekamer 2000).
- `RTPS(alpha)`: relaxation to prior spread (Whitaker & Hamill 2012):
  sigma_a <- (1 - alpha) sigma_a + alpha sigma_b, per variable.
- `RTPP(alpha)`: relaxation to prior perturbations (Zhang et al. 2004):
  A_a <- (1 - alpha) A_a + alpha A_b.
- `Inflations(parts)`: several, applied in order.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import AbstractCovariance
from ..gaussian import Ensemble
from ..covariance import DenseCovariance


def _scalar_or_vector(name: str, value, minimum: float, maximum: float | None, what: str) -> jax.Array:
    array = _checks.as_float_array(name, value)
    if array.ndim > 1:
        raise ValueError(f"`{name}` must be a scalar or a per-variable vector (d,); got shape {tuple(array.shape)}")
    _checks.check_finite(name, array)
    if _checks.is_concrete(array):
        low, high = float(jnp.min(array)), float(jnp.max(array))
        if low < minimum or (maximum is not None and high > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"`{name}` must be {bounds} ({what}); got {array.tolist() if array.ndim else float(array)}")
    return array


def _with_anomalies(ensemble: Ensemble, anomalies) -> Ensemble:
    return Ensemble(ensemble.mean[None, :] + anomalies)


class AbstractInflation(eqx.Module):
    """Inflation hooks; the defaults leave the ensemble unchanged."""

    stochastic: ClassVar[bool] = False

    def prior(self, forecast: Ensemble, key) -> Ensemble:
        return forecast

    def posterior(self, forecast: Ensemble, analysis: Ensemble, key) -> Ensemble:
        return analysis

    def check_size(self, state_dim: int) -> None:
        """Raise a ValueError if a per-variable parameter disagrees with the state size."""


class NoInflation(AbstractInflation):
    """No inflation."""


class MultiplicativeInflation(AbstractInflation):
    """Multiply the anomalies by `factor` (>= 1; a scalar or a per-variable (d,) vector).

    Args:
        factor: the anomaly factor (covariance times factor^2): DAPPER's `infl`.
        on_forecast: inflate the forecast before the analysis instead of the
            analysis after it (DAPPER's convention is after, on the analysis).
    """

    factor: Float[Array, ""] | Float[Array, " d"]
    on_forecast: bool = eqx.field(static=True, default=False)

    def __init__(self, factor, on_forecast: bool = False):
        self.factor = _scalar_or_vector("inflation", factor, 1.0, None, "a multiplicative inflation")
        self.on_forecast = bool(on_forecast)

    def _inflate(self, ensemble: Ensemble) -> Ensemble:
        factor = self.factor.astype(ensemble.members.dtype)
        return _with_anomalies(ensemble, ensemble.anomalies * factor)

    def prior(self, forecast, key):
        return self._inflate(forecast) if self.on_forecast else forecast

    def posterior(self, forecast, analysis, key):
        return analysis if self.on_forecast else self._inflate(analysis)

    def check_size(self, state_dim):
        if self.factor.ndim == 1 and self.factor.shape[0] != state_dim:
            raise ValueError(f"`inflation` has {self.factor.shape[0]} entries but the state has {state_dim}")


class AdditiveInflation(AbstractInflation):
    """Add independent N(0, cov) draws to the forecast members (a stochastic model-error term).

    Args:
        cov: a covariance operator or a (d, d) array.
    """

    cov: AbstractCovariance
    stochastic: ClassVar[bool] = True

    def __init__(self, cov):

        self.cov = cov if isinstance(cov, AbstractCovariance) else DenseCovariance(cov)

    def prior(self, forecast, key):
        if key is None:
            raise ValueError("AdditiveInflation draws random perturbations: a `key` is required")
        noise = jax.random.normal(key, forecast.members.shape, forecast.members.dtype)
        return Ensemble(forecast.members + self.cov.sqrt_mv(noise.T).T)

    def check_size(self, state_dim):
        if self.cov.dim != state_dim:
            raise ValueError(f"`AdditiveInflation.cov` has size {self.cov.dim} but the state has {state_dim}")


class RTPS(AbstractInflation):
    """Relaxation to prior spread (Whitaker & Hamill 2012), per variable:

        A_a <- A_a * (1 + alpha (sigma_b - sigma_a) / sigma_a)

    so that sigma_a becomes (1 - alpha) sigma_a + alpha sigma_b.

    Args:
        alpha: relaxation in [0, 1] (a traced leaf).
    """

    alpha: Float[Array, ""]

    def __init__(self, alpha):
        self.alpha = _scalar_or_vector("alpha", alpha, 0.0, 1.0, "a relaxation coefficient")

    def posterior(self, forecast, analysis, key):
        dtype = analysis.members.dtype
        sigma_b = jnp.std(forecast.members, axis=0, ddof=1)
        sigma_a = jnp.std(analysis.members, axis=0, ddof=1)
        safe = jnp.where(sigma_a > 0, sigma_a, 1.0)
        scale = jnp.where(sigma_a > 0, 1.0 + self.alpha.astype(dtype) * (sigma_b - sigma_a) / safe, 1.0)
        return _with_anomalies(analysis, analysis.anomalies * scale[None, :])


class RTPP(AbstractInflation):
    """Relaxation to prior perturbations (Zhang, Snyder & Sun 2004):

        A_a <- (1 - alpha) A_a + alpha A_b

    Args:
        alpha: relaxation in [0, 1] (a traced leaf).
    """

    alpha: Float[Array, ""]

    def __init__(self, alpha):
        self.alpha = _scalar_or_vector("alpha", alpha, 0.0, 1.0, "a relaxation coefficient")

    def posterior(self, forecast, analysis, key):
        alpha = self.alpha.astype(analysis.members.dtype)
        return _with_anomalies(analysis, (1.0 - alpha) * analysis.anomalies + alpha * forecast.anomalies)


class Inflations(AbstractInflation):
    """Several inflations applied in order (e.g. RTPS then multiplicative)."""

    parts: tuple[AbstractInflation, ...]

    def __init__(self, *parts: AbstractInflation):
        for part in parts:
            if not isinstance(part, AbstractInflation):
                raise TypeError(f"`Inflations` takes inflation Modules; got {type(part).__name__}")
        self.parts = tuple(parts)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return any(part.stochastic for part in self.parts)

    def prior(self, forecast, key):
        keys = [None] * len(self.parts) if key is None else list(jax.random.split(key, len(self.parts)))
        for part, part_key in zip(self.parts, keys):
            forecast = part.prior(forecast, part_key)
        return forecast

    def posterior(self, forecast, analysis, key):
        keys = [None] * len(self.parts) if key is None else list(jax.random.split(key, len(self.parts)))
        for part, part_key in zip(self.parts, keys):
            analysis = part.posterior(forecast, analysis, part_key)
        return analysis

    def check_size(self, state_dim):
        for part in self.parts:
            part.check_size(state_dim)


def as_inflation(value) -> AbstractInflation:
    """None -> no inflation; a number or (d,) array -> multiplicative (after the analysis)."""
    if value is None:
        return NoInflation()
    if isinstance(value, AbstractInflation):
        return value
    return MultiplicativeInflation(value)
