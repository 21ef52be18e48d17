"""Ensemble smoothers: the fixed-lag ensemble Kalman smoother (EnKS) and the ensemble
Rauch-Tung-Striebel smoother (EnRTS).

Notation as the EnKF (rows are members): the ensemble of v_n is E_n (J, d) with mean
x_n and anomalies A_n = E_n - x_n; `kx.EnKF`'s analysis of y_{n+1} maps the forecast
ensemble to the analysis one by an ensemble-space transform (square root, perturbed
observations or DEnKF).

- EnKS (Evensen & van Leeuwen 2000; Evensen 2009, "Data Assimilation", ch. 9; DAPPER's
  `EnKS`): the analysis of y_{n+1} is applied to the augmented ensemble
  [E_{n+1-L}, ..., E_{n+1}] (J, (L + 1) d), whose observed anomalies are those of the
  current block, so every lagged ensemble receives the same ensemble-space update
  (the cross-covariances between v_k and h(v_{n+1}) do the smoothing). Inflation acts
  on the current block only, as in DAPPER; the random rotation (`rotate=True`) is applied
  to every block, so that member j stays one trajectory across the window (DAPPER
  rotates the current block only, which decorrelates it from the lagged ones: measured on
  Lorenz-96, d = 10, J = 12, lag 20, smoothed rmse 0.22 against 0.08 without rotation). A window of L + 1 ensembles is
  carried through the scan; the block leaving it is final (it has seen L observation
  times after its own), so only its mean and spread are stored per cycle: memory
  O((L + 1) J d + T d), never T J d.
- EnRTS (Raanes 2016, "On the ensemble Rauch-Tung-Striebel smoother and its equivalence
  to the ensemble Kalman smoother", QJRMS 142; DAPPER's `EnRTS`): the EnKF forward,
  keeping forecast and analysis ensembles, then backward

      E^s_n = E^a_n + c (E^s_{n+1} - E^f_{n+1}) (A^f_{n+1})^+ A^a_n,

  with the truncated pseudo-inverse of the forecast anomalies (singular values kept
  until 0.99999 of their sum, DAPPER's `tinv`) and the decorrelation factor c
  (DAPPER's `DeCorr`). The products are formed in ensemble space (J x J), so no
  d x d matrix is built; it stores the T forecast and analysis ensembles.

For a linear-Gaussian model both tend to the RTS smoother as J grows (EnKS with a lag
covering the run, EnRTS with c = 1).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..assimilate import assimilate
from ..ensemble.algebra import ensemble_space
from ..filters.enkf import EnKF
from ..filters.ensemble_base import (
    AbstractEnsembleFilter,
    EnsembleInfo,
    finish_analysis,
    forecast_members,
    member_model,
)
from ..gaussian import Ensemble
from ..history import History, Save
from ..linalg import mean_preserving_rotation
from .base import AbstractSmoother


class EnsembleSmootherResult(eqx.Module):
    """Smoothed ensemble statistics of v_1..v_T (aligned with `History.mean`) and of v_0.

    Attributes:
        mean: (T, dx) smoothed means; `mean[n]` estimates v_{n+1}.
        spread: (T,) smoothed spreads sqrt(mean_i var_i) (ddof = 1); None for `FourDVar`
            (a point estimate).
        init_mean: (dx,) smoothed mean of v_0.
        filtered: the forward filter's `History` (analysis means, info with status codes).
        log_likelihood: the forward filter's estimate of log p(y_{1:T}).
    """

    mean: Float[Array, "T dx"]
    spread: Float[Array, " T"] | None
    init_mean: Float[Array, " dx"]
    filtered: History
    log_likelihood: Float[Array, ""]


def ensemble_spread(members: Float[Array, "... J d"]) -> Float[Array, "..."]:
    """sqrt(mean_i var_i) of ensembles (members on axis -2, ddof = 1): the twin experiment's spread."""
    return jnp.sqrt(jnp.mean(jnp.var(members, axis=-2, ddof=1), axis=-1))


def _check_enkf_parts(ensemble_size, update, inflation, rotate) -> EnKF:
    """The EnKF whose analysis the smoothers apply (its checks name the arguments)."""
    return EnKF(ensemble_size, update, inflation, rotate)


def _check_lag(lag) -> int:
    if isinstance(lag, bool) or not isinstance(lag, (int, jnp.integer)) or int(lag) < 1:
        raise ValueError(f"`lag` must be an integer >= 1 (observation cycles the smoother looks ahead); got {lag!r}")
    return int(lag)


def given_ensemble(init_state, ensemble_size: int, model) -> Ensemble | None:
    """A user's initial ensemble (`init_state` of `kx.smooth`: an `Ensemble` or a (J, dx) array)
    checked against the ensemble size and the model; None when none is given."""
    if init_state is None:
        return None
    members = init_state.members if isinstance(init_state, Ensemble) else jnp.asarray(init_state)
    if members.shape != (ensemble_size, model.state_dim):
        raise ValueError(
            f"`init_state` must be an Ensemble of shape ({ensemble_size}, {model.state_dim}) (members, dx); "
            f"got {tuple(members.shape)}"
        )
    if members.dtype != model.dtype:
        raise TypeError(f"`init_state` is {members.dtype} but the model's arrays are {model.dtype}")
    return Ensemble(members)


# -- EnKS ----------------------------------------------------------------------------------


class LaggedEnsemble(eqx.Module):
    """The EnKS state: the ensembles of the last L + 1 states, oldest first.

    Attributes:
        window: (L + 1, J, d); `window[-1]` is the current ensemble (its `members`).
    """

    window: Float[Array, "L1 J d"]

    @property
    def members(self) -> Float[Array, "J d"]:
        return self.window[-1]

    @property
    def mean(self) -> Float[Array, " d"]:
        return self.members.mean(axis=0)

    @property
    def size(self) -> int:
        return self.window.shape[1]


class LaggedInfo(eqx.Module):
    """`EnsembleInfo` of the current analysis plus the block leaving the window.

    Attributes:
        log_likelihood, n_observed, spread, status, nis: as `EnsembleInfo`.
        lagged_mean: (d,) final smoothed mean of the oldest state of the window
            (after the analysis of y_{n+1}: v_{n+1-L}).
        lagged_spread: its spread.
    """

    log_likelihood: Float[Array, ""]
    n_observed: Array
    spread: Float[Array, ""]
    status: Array
    nis: Float[Array, ""]
    lagged_mean: Float[Array, " d"]
    lagged_spread: Float[Array, ""]


class EnKS(AbstractEnsembleFilter, AbstractSmoother):
    """Fixed-lag ensemble Kalman smoother (Evensen & van Leeuwen 2000; module docstring).

    A filter and a smoother in one Module: through `kx.assimilate`, `kx.twin_experiment`
    or `kx.sweep` its history holds the filtered analyses (equal to the EnKF's with the
    same keys) and its info the finished smoothed mean of the state leaving the window
    (`LaggedInfo.lagged_mean`); through `kx.smooth` it returns the smoothed means.

    Attributes:
        ensemble_size: number of members J >= 2 (static).
        lag: L >= 1 (static): v_n is smoothed with y_{n+1}..y_{n+L} as well as the
            past. A lag covering the run (L >= T) gives the full-window smoother.
        enkf: the EnKF whose analysis is applied (`update`, `inflation`, `rotate` of
            the constructor); its inflation acts on the current ensemble only, its
            rotation on every ensemble of the window.

    Example:
        >>> smoothed = kx.smooth(model, kx.EnKS(24, lag=4, inflation=1.02), ys, jax.random.key(0))
        >>> smoothed.mean, smoothed.filtered.mean   # smoothed and filtered means (T, dx)
    """

    ensemble_size: int = eqx.field(static=True)
    lag: int = eqx.field(static=True)
    enkf: EnKF

    stochastic: ClassVar[bool] = True  # the initial ensemble is drawn

    def __init__(self, ensemble_size: int, lag: int, update=None, inflation=None, rotate: bool = False):
        self.enkf = _check_enkf_parts(ensemble_size, update, inflation, rotate)
        self.ensemble_size = self.enkf.ensemble_size
        self.lag = _check_lag(lag)

    def check_model(self, model) -> None:
        self.enkf.check_model(model)

    def init(self, model, key) -> LaggedEnsemble:
        """The EnKF's initial ensemble in every slot of the window (the slots before v_0
        then follow v_0's updates, so the oldest one is v_0 smoothed)."""
        first = self.enkf.init(model, key)
        return LaggedEnsemble(jnp.broadcast_to(first.members, (self.lag + 1, *first.members.shape)))

    def forecast(self, model, state: LaggedEnsemble, key=None) -> LaggedEnsemble:
        model = member_model(model, "EnKS.forecast")
        new = forecast_members(model, state.members, key)
        return LaggedEnsemble(jnp.concatenate([state.window[1:], new[None]], axis=0))

    def analysis(self, model, state: LaggedEnsemble, y, key=None):
        """The EnKF analysis of y_{n+1} applied to the whole window (augmented ensemble)."""
        model = member_model(model, "EnKS.analysis")
        enkf = self.enkf
        key_prior, key_analysis, key_post, key_rot = (None,) * 4 if key is None else tuple(jax.random.split(key, 4))
        inflated = enkf.inflation.prior(Ensemble(state.members), key_prior)
        window = state.window.at[-1].set(inflated.members)
        n_blocks, size, dim = window.shape
        augmented = Ensemble(jnp.transpose(window, (1, 0, 2)).reshape(size, n_blocks * dim))
        observed = jax.vmap(model.observe)(inflated.members)
        space = ensemble_space(augmented, observed, jnp.asarray(y), model.obs_cov)
        updated = enkf.update(space, key_analysis).reshape(size, n_blocks, dim).transpose(1, 0, 2)
        current, info = finish_analysis(enkf.inflation, False, inflated, updated[-1], space, key_post, None)
        window = updated.at[-1].set(current.members)
        if enkf.rotate:
            # one rotation of every block's anomalies: the members keep their identity
            # across the window (rotating the current block alone, as DAPPER does, breaks
            # the cross-covariances the smoothing uses)
            if key_rot is None:
                raise ValueError("`rotate=True` draws a random rotation: a `key` is required")
            rotation = mean_preserving_rotation(key_rot, size, window.dtype)
            means = window.mean(axis=1, keepdims=True)
            window = means + jnp.einsum("ij,bjd->bid", rotation, window - means)
        lagged = LaggedInfo(
            log_likelihood=info.log_likelihood, n_observed=info.n_observed, spread=info.spread, status=info.status,
            nis=info.nis, lagged_mean=window[0].mean(axis=0), lagged_spread=ensemble_spread(window[0]),
        )
        return LaggedEnsemble(window), lagged

    def finished_estimate(self, state: LaggedEnsemble) -> Ensemble:
        """The oldest ensemble of the window, v_{n+1-L}: final after cycle n (`info.lagged_mean`)."""
        return Ensemble(state.window[0])

    def run(self, model, ys, key=None, init_state=None) -> EnsembleSmootherResult:
        model = member_model(model, "EnKS")
        first = given_ensemble(init_state, self.ensemble_size, model)
        start = None if first is None else LaggedEnsemble(
            jnp.broadcast_to(first.members, (self.lag + 1, *first.members.shape)))
        final, filtered = assimilate(model, self, ys, key, save=Save(), throw=False, init_state=start)
        # rows: v_{1-L}, ..., v_{T-L} (emitted), then v_{T-L+1}, ..., v_T (still in the window);
        # the rows before v_0 are copies of v_0's ensemble and received the same updates
        means = jnp.concatenate([filtered.info.lagged_mean, final.window[1:].mean(axis=1)], axis=0)
        spreads = jnp.concatenate([filtered.info.lagged_spread, ensemble_spread(final.window[1:])], axis=0)
        return EnsembleSmootherResult(
            mean=means[self.lag:], spread=spreads[self.lag:], init_mean=means[self.lag - 1],
            filtered=filtered, log_likelihood=jnp.sum(filtered.info.log_likelihood),
        )


# -- EnRTS ---------------------------------------------------------------------------------


class EnsemblePair(eqx.Module):
    """The EnRTS forward state: the analysis ensemble and the forecast it came from.

    Attributes:
        members: (J, d) analysis members.
        forecast: (J, d) forecast members of the same time.
    """

    members: Float[Array, "J d"]
    forecast: Float[Array, "J d"]

    @property
    def mean(self) -> Float[Array, " d"]:
        return self.members.mean(axis=0)

    @property
    def size(self) -> int:
        return self.members.shape[0]


class EnKFKeepingForecast(AbstractEnsembleFilter):
    """The forward pass of `EnRTS`: `EnKF` whose state also keeps the forecast ensemble."""

    ensemble_size: int = eqx.field(static=True)
    enkf: EnKF

    def __init__(self, enkf: EnKF):
        self.enkf = enkf
        self.ensemble_size = enkf.ensemble_size

    def check_model(self, model) -> None:
        self.enkf.check_model(model)

    def init(self, model, key) -> EnsemblePair:
        first = self.enkf.init(model, key)
        return EnsemblePair(first.members, first.members)

    def forecast(self, model, state: EnsemblePair, key=None) -> Ensemble:
        return self.enkf.forecast(model, Ensemble(state.members), key)

    def analysis(self, model, state: Ensemble, y, key=None) -> tuple[EnsemblePair, EnsembleInfo]:
        analysis, info = self.enkf.analysis(model, state, y, key)
        return EnsemblePair(analysis.members, state.members), info


def truncated_pinv_weights(residual: Float[Array, "J d"], anomalies: Float[Array, "J d"],
                           threshold: float = 0.99999) -> Float[Array, "J J"]:
    """residual @ pinv(anomalies) (J x J), the pseudo-inverse truncated as DAPPER's `tinv`:
    the leading singular values whose cumulative sum stays below `threshold` of the total,
    plus the next one and any equal to it (within numpy's `isclose`)."""
    left, values, right = jnp.linalg.svd(anomalies, full_matrices=False)
    fraction = jnp.cumsum(values) / jnp.sum(values)
    rank = jnp.sum(fraction < threshold) + 1
    index = jnp.arange(values.shape[0])
    last = values[rank - 1]
    ties = (index >= rank) & (jnp.abs(last - values) <= 1e-8 + 1e-5 * jnp.abs(values))
    keep = (index < rank) | ties
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
    return ((residual @ right.T) * inverse[None, :]) @ left.T


class EnRTS(AbstractSmoother):
    """Ensemble Rauch-Tung-Striebel smoother (Raanes 2016; module docstring).

    Attributes:
        ensemble_size: number of members J >= 2 (static).
        decorrelation: c in (0, 1], damping of the smoother gain (DAPPER's `DeCorr`;
            1 is the plain EnRTS).
        update: the forward EnKF's analysis update (as `kx.EnKF`).
        inflation: as `kx.EnKF`.
        rotate: as `kx.EnKF`.

    Example:
        >>> smoothed = kx.smooth(model, kx.EnRTS(25, decorrelation=0.99, inflation=1.08), ys, key)
    """

    forward: EnKFKeepingForecast
    decorrelation: Float[Array, ""]

    stochastic: ClassVar[bool] = True

    def __init__(self, ensemble_size: int, decorrelation=1.0, update=None, inflation=None, rotate: bool = False):
        self.forward = EnKFKeepingForecast(_check_enkf_parts(ensemble_size, update, inflation, rotate))
        value = jnp.asarray(decorrelation)
        if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"`decorrelation` must be a number in (0, 1]; got {decorrelation!r}")
        if value.ndim != 0:
            raise ValueError(f"`decorrelation` must be a scalar in (0, 1]; got shape {value.shape}")
        if _checks.is_concrete(value) and not (0.0 < float(value) <= 1.0):
            raise ValueError(f"`decorrelation` must lie in (0, 1]; got {float(value)}")
        self.decorrelation = value

    @property
    def ensemble_size(self) -> int:
        return self.forward.ensemble_size

    def check_model(self, model) -> None:
        self.forward.check_model(model)

    def prepare_model(self, model):
        """As the forward filter's: a `LinearGaussianSSM` viewed as a `StateSpaceModel` before
        tracing, so that a zero `dynamics_cov` draws no noise."""
        return self.forward.prepare_model(model)

    def run(self, model, ys, key=None, init_state=None) -> EnsembleSmootherResult:
        model = member_model(model, "EnRTS")
        first = given_ensemble(init_state, self.ensemble_size, model)
        if first is None:  # the draw `assimilate` would make, kept to smooth v_0
            first = self.forward.enkf.init(model, jax.random.split(key, ys.shape[0] + 1)[0])
        start = EnsemblePair(first.members, first.members)
        _, filtered = assimilate(model, self.forward, ys, key, save=Save(state=True), throw=False, init_state=start)
        analyses = jnp.concatenate([first.members[None], filtered.state.members], axis=0)  # E^a_0..E^a_T
        forecasts = filtered.state.forecast  # E^f_1..E^f_T
        factor = self.decorrelation.astype(analyses.dtype)

        def backward(smoothed_next, inputs):
            analysis, forecast_next = inputs
            anomalies = analysis - analysis.mean(axis=0)
            forecast_anomalies = forecast_next - forecast_next.mean(axis=0)
            weights = truncated_pinv_weights(smoothed_next - forecast_next, forecast_anomalies)
            smoothed = analysis + factor * (weights @ anomalies)
            return smoothed, smoothed

        _, earlier = jax.lax.scan(backward, analyses[-1], (analyses[:-1], forecasts), reverse=True)
        smoothed = jnp.concatenate([earlier, analyses[-1:]], axis=0)  # v_0..v_T
        return EnsembleSmootherResult(
            mean=smoothed[1:].mean(axis=1), spread=ensemble_spread(smoothed[1:]), init_mean=smoothed[0].mean(axis=0),
            filtered=filtered, log_likelihood=jnp.sum(filtered.info.log_likelihood),
        )


__all__ = ["EnKS", "EnRTS", "EnsembleSmootherResult", "LaggedEnsemble", "LaggedInfo", "ensemble_spread",
           "given_ensemble", "truncated_pinv_weights"]
