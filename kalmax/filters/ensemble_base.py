"""What every ensemble filter shares: the abstract ensemble filter (its initial
ensemble and forecast), the per-cycle `EnsembleInfo`, and the end of every
ensemble analysis (inflation, rotation, diagnostics)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..ensemble.algebra import EnsembleSpace
from ..gaussian import Ensemble
from ..linalg import mean_preserving_rotation
from ..models.integrators import map_members
from ..results import RESULTS
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model
from .base import AbstractFilter


class EnsembleInfo(eqx.Module):
    """Per-cycle diagnostics of an ensemble analysis.

    Attributes:
        log_likelihood: Gaussian approximation of log p(y_{n+1} | y_{1:n}) with the
            ensemble innovation covariance.
        n_observed: number of non-missing entries of y_{n+1}.
        spread: sqrt(mean_i var_i) of the analysis ensemble (ddof = 1).
        status: result code (0 success, 2 non-finite member, 3 collapsed ensemble).
        nis: normalised innovation squared d^T S^{-1} d with the ensemble innovation
            covariance S (mean `n_observed` when the spread is right; see `KalmanInfo`).
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    spread: Float[Array, ""]
    status: Int[Array, ""]
    nis: Float[Array, ""]


def member_model(model, who: str) -> StateSpaceModel:
    """`model` as the `StateSpaceModel` an ensemble filter runs (a `LinearGaussianSSM` is
    viewed as one; it must have no `TimeVarying` field), or a TypeError naming `who`."""
    if isinstance(model, LinearGaussianSSM):
        if model.n_times is not None:
            raise ValueError(f"{who}: `model` has `TimeVarying` fields; pass `model.at(n)`")
        return as_state_space_model(model)
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"{who} needs a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
    return model


def ensemble_status(members, spread):
    """NON_FINITE if any member is non-finite or the ensemble's magnitude overflows,
    COLLAPSED if the spread is zero (relative to the members' magnitude)."""
    scale = jnp.maximum(1.0, jnp.sqrt(jnp.mean(members.mean(axis=0) ** 2)))
    # finite members whose squares overflow are a blow-up, not a collapse
    non_finite = ~jnp.all(jnp.isfinite(members)) | ~jnp.isfinite(scale) | ~jnp.isfinite(spread)
    collapsed = spread <= 100 * jnp.finfo(members.dtype).eps * scale
    return jnp.where(
        non_finite, RESULTS.NON_FINITE, jnp.where(collapsed, RESULTS.COLLAPSED, RESULTS.SUCCESSFUL)
    ).astype(jnp.int32)


def finish_analysis(inflation, rotate: bool, forecast: Ensemble, members, space: EnsembleSpace, key_post, key_rot):
    """The end of every ensemble analysis: posterior inflation, the optional
    mean-preserving rotation (DAPPER's `rot`), and the `EnsembleInfo`.

    Args:
        inflation: the method's inflation Module (its `posterior` hook is applied).
        rotate: whether to rotate the analysis anomalies at random.
        forecast: the (prior-inflated) forecast ensemble.
        members: (J, d) analysis members from the update.
        space: the `EnsembleSpace` of the analysis (for the log-likelihood and mask).
        key_post, key_rot: keys for the inflation and the rotation.
    """
    analysis = inflation.posterior(forecast, Ensemble(members), key_post)
    if rotate:
        if key_rot is None:
            raise ValueError("`rotate=True` draws a random rotation: a `key` is required")
        rotation = mean_preserving_rotation(key_rot, analysis.size, analysis.members.dtype)
        analysis = Ensemble(analysis.mean[None, :] + rotation @ analysis.anomalies)
    spread = jnp.sqrt(jnp.mean(jnp.var(analysis.members, axis=0, ddof=1)))
    info = EnsembleInfo(
        log_likelihood=space.log_likelihood,
        n_observed=jnp.sum(space.mask).astype(jnp.int32),
        spread=spread,
        status=ensemble_status(analysis.members, spread),
        nis=space.nis,
    )
    return analysis, info


def forecast_members(model: StateSpaceModel, members, key):
    """Psi of every member, plus N(0, Sigma) model noise when Sigma is not zero.

    Dynamics that map a whole ensemble (`kalmax.models.AbstractEnsembleDynamics`, such as
    a `Flow` of Lorenz-96 or a `LinearDynamics`) do so in one call; others are vmapped.
    """
    forecast = map_members(model.dynamics, members)
    if model.dynamics_cov.is_zero():
        return forecast
    if key is None:
        raise ValueError("the model has a `dynamics_cov`: a `key` is required to draw model noise")
    noise = jax.random.normal(key, forecast.shape, forecast.dtype)
    return forecast + model.dynamics_cov.sqrt_mv(noise.T).T


def initial_members(model: StateSpaceModel, size: int, key):
    """J draws from N(init_mean, init_cov) (never densifying init_cov)."""
    if key is None:
        raise ValueError("drawing the initial ensemble needs a `key`")
    noise = jax.random.normal(key, (size, model.state_dim), model.dtype)
    return model.init_mean[None, :] + model.init_cov.sqrt_mv(noise.T).T


class AbstractEnsembleFilter(AbstractFilter):
    """What every ensemble filter shares: drawing the initial ensemble, the
    forecast of every member, and viewing a `LinearGaussianSSM` before tracing.

    Capability marker of ensemble filters (the state is an `Ensemble` of
    `ensemble_size` members). Final subclasses (`EnKF`, `LETKF`, `EnKFN`) hold
    `ensemble_size` and add their analysis; `constrain` lays the members out
    on the devices (`EnKF` with a `sharding`).
    """

    stochastic: ClassVar[bool] = True  # the initial ensemble is drawn

    def prepare_model(self, model) -> StateSpaceModel:
        """Before tracing (called by `assimilate`): view a `LinearGaussianSSM` as a
        `StateSpaceModel` while its arrays are concrete, so that an all-zero
        `dynamics_cov` becomes a `ZeroCovariance` (no noise drawn)."""
        return member_model(model, type(self).__name__) if isinstance(model, LinearGaussianSSM) else model

    def constrain(self, members):
        """`members` laid out as the filter wants them on the devices (here unchanged;
        `EnKF` constrains them to its `sharding`)."""
        return members

    def init(self, model, key) -> Ensemble:
        """J independent draws from the prior N(init_mean, init_cov).

        To start from a given ensemble, pass `init_state=kx.Ensemble(members)` to
        `assimilate` instead.
        """
        model = member_model(model, f"{type(self).__name__}.init")
        return Ensemble(self.constrain(initial_members(model, self.ensemble_size, key)))

    def forecast(self, model, state: Ensemble, key=None) -> Ensemble:
        """Each member through the dynamics, plus model noise N(0, dynamics_cov).

        With a `sharding`, the members are constrained to it before and after, so
        the vmapped model runs on each device's own members.
        """
        model = member_model(model, f"{type(self).__name__}.forecast")
        members = forecast_members(model, self.constrain(state.members), key)
        return Ensemble(self.constrain(members))


__all__ = ["AbstractEnsembleFilter", "EnsembleInfo", "ensemble_status", "finish_analysis", "forecast_members", "initial_members", "member_model"]
