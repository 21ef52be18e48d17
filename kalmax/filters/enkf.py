"""The ensemble Kalman filter: perturbed observations, square root (ETKF), DEnKF.

Notation (rows are members, DAPPER's convention): forecast members E (J, d)
with mean x and anomalies A = E - x; observed members h(E) (J, p) with mean
y_hat and anomalies Y; Gamma = L L^T. Everything is computed in ensemble
space from the whitened anomalies and innovation

    S_Y = Y L^{-T}  (J, p),   dy = L^{-1} (y - y_hat)  (p,),
    G   = S_Y S_Y^T + (J - 1) I_J   (J, J),

so no d x d (and no p x p) matrix is ever formed.

- `SquareRoot` (ETKF; Bishop, Etherton & Majumdar 2001; Hunt, Kostelich &
  Szunyogh 2007, symmetric square root): w = dy^T S_Y^T G^{-1},
  T = sqrt(J - 1) G^{-1/2}, E_a = x + w A + T A.
- `PerturbedObservations` (Evensen 1994; Burgers, van Leeuwen & Evensen 1998):
  each member is updated with its own perturbed innovation
  d_j = L^{-1}(y + eta_j - h(e_j)) (eta_j ~ N(0, Gamma), re-centred to zero
  mean as DAPPER does): e_j += (d_j^T S_Y^T G^{-1}) A, which is the gain
  K = A^T Y (Y^T Y + (J - 1) Gamma)^{-1} applied in ensemble space.
- `DEnKF` (Sakov & Oke 2008): the mean as the ETKF, anomalies
  A_a = (I - 1/2 S_Y S_Y^T G^{-1}) A (half the gain, no perturbations).

The log-likelihood term is the Gaussian approximation log N(y; y_hat, S)
with the ensemble innovation covariance S = Y^T Y / (J - 1) + Gamma,
evaluated by Woodbury and the determinant lemma in ensemble space.
Missing observations (NaN entries of y) get zero whitened anomalies and
innovation, so they carry no information, with static shapes.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..results import RESULTS
from ..covariance import DenseCovariance, DiagonalCovariance, ScalarCovariance
from ..ensemble.inflation import AbstractInflation, as_inflation
from ..gaussian import Ensemble
from ..linalg import (
    LOG_2PI,
    cho_solve,
    logdet_from_chol,
    mean_preserving_rotation,
    solve_lower,
    sym_inv_sqrt,
    sym_matrix_function,
)
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model


class EnsembleInfo(eqx.Module):
    """Per-cycle diagnostics of an ensemble analysis.

    Attributes:
        log_likelihood: Gaussian approximation of log p(y_{n+1} | y_{1:n}) with the
            ensemble innovation covariance.
        n_observed: number of non-missing entries of y_{n+1}.
        spread: sqrt(mean_i var_i) of the analysis ensemble (ddof = 1).
        status: result code (0 success, 2 non-finite member, 3 collapsed ensemble).
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    spread: Float[Array, ""]
    status: Int[Array, ""]


class EnsembleSpace(eqx.Module):
    """What every ensemble analysis needs, in whitened coordinates.

    With S = S_Y (J, p) and c = J - 1, the analysis algebra uses either the
    ensemble-space Gram matrix G = S S^T + c I_J (when p >= J) or the
    observation-space one M = S^T S + c I_p (when p < J, e.g. few observations
    and a large ensemble), related by the push-through identity
    G^{-1} S = S M^{-1}; the cost is then O(J^2 (p + d)) or O(p^2 (J + d)).

    Attributes:
        mean: (d,) forecast mean x.
        anomalies: (J, d) forecast anomalies A.
        obs_anomalies: (J, p) whitened observed anomalies S (zero where missing).
        innovation: (p,) whitened innovation dy (zero where missing).
        chol_gram: (J, J) Cholesky factor of G, or None in observation space.
        chol_obs_gram: (p, p) Cholesky factor of M, or None in ensemble space.
        mask: (p,) observed entries.
        log_likelihood: the Gaussian-approximation log-likelihood term.
    """

    mean: Float[Array, " d"]
    anomalies: Float[Array, "J d"]
    obs_anomalies: Float[Array, "J p"]
    innovation: Float[Array, " p"]
    chol_gram: Float[Array, "J J"] | None
    chol_obs_gram: Float[Array, "p p"] | None
    mask: Array
    log_likelihood: Float[Array, ""]

    @property
    def ridge(self):
        return jnp.asarray(self.anomalies.shape[0] - 1, self.anomalies.dtype)

    def gain_weights(self, innovations: Float[Array, "k p"]) -> Float[Array, "k J"]:
        """Rows (G^{-1} S d_k)^T: member weights of the gain applied to whitened innovations."""
        if self.chol_gram is not None:
            return cho_solve(self.chol_gram, self.obs_anomalies @ innovations.T).T
        return cho_solve(self.chol_obs_gram, innovations.T).T @ self.obs_anomalies.T

    def mean_weights(self) -> Float[Array, " J"]:
        """w = G^{-1} S dy: the analysis mean is x + w A."""
        return self.gain_weights(self.innovation[None, :])[0]

    def gain_increments(self, innovations: Float[Array, "J p"]) -> Float[Array, "J d"]:
        """Rows (G^{-1} S d_j)^T A = K d_j for whitened innovations d_j, one per member."""
        if self.chol_gram is not None:
            return self.gain_weights(innovations) @ self.anomalies
        return innovations @ cho_solve(self.chol_obs_gram, self.obs_anomalies.T @ self.anomalies)

    def sqrt_analysis(self) -> Float[Array, "J d"]:
        """The ETKF's analysis members x + w A + T A (w = G^{-1} S dy, T = sqrt(c) G^{-1/2}).

        In ensemble space one symmetric inverse square root G^{-1/2} (one
        eigendecomposition) gives both: w = G^{-1/2} (G^{-1/2} S dy).
        """
        if self.chol_gram is None:
            mean = self.mean + self.mean_weights() @ self.anomalies
            return mean[None, :] + self.sqrt_transform()
        inv_sqrt = sym_inv_sqrt(self.gram())
        weights = inv_sqrt @ (inv_sqrt @ (self.obs_anomalies @ self.innovation))
        transform = weights[None, :] + jnp.sqrt(self.ridge) * inv_sqrt  # row j: w^T + T_j
        return self.mean[None, :] + transform @ self.anomalies

    def gram(self) -> Float[Array, "J J"]:
        """G = S S^T + c I (ensemble space only)."""
        size = self.obs_anomalies.shape[0]
        return self.obs_anomalies @ self.obs_anomalies.T + self.ridge * jnp.eye(size, dtype=self.obs_anomalies.dtype)

    def sqrt_transform(self) -> Float[Array, "J d"]:
        """T A with the symmetric square root T = sqrt(c) G^{-1/2} (the ETKF's anomalies).

        In observation space, G^{-1/2} = c^{-1/2} I + S g(S^T S) S^T with the
        divided difference g(l) = ((c + l)^{-1/2} - c^{-1/2}) / l, so that
        T = I + S (sqrt(c) g)(S^T S) S^T, sqrt(c) g(l) = -1 / (sqrt(c + l) (sqrt(c + l) + sqrt(c))).
        """
        ridge = self.ridge
        if self.chol_gram is not None:
            return jnp.sqrt(ridge) * (sym_inv_sqrt(self.gram()) @ self.anomalies)
        inner = self.obs_anomalies.T @ self.obs_anomalies
        correction = sym_matrix_function(_scaled_inv_sqrt_divided, inner, ridge)
        return self.anomalies + self.obs_anomalies @ (correction @ (self.obs_anomalies.T @ self.anomalies))

    def half_gain_anomalies(self) -> Float[Array, "J d"]:
        """(I - 1/2 S S^T G^{-1}) A: DEnKF's anomalies (half the gain, no perturbations)."""
        spread_obs = self.obs_anomalies
        if self.chol_gram is not None:
            half = 0.5 * cho_solve(self.chol_gram, spread_obs @ spread_obs.T).T
            return self.anomalies - half @ self.anomalies
        return self.anomalies - 0.5 * spread_obs @ cho_solve(self.chol_obs_gram, spread_obs.T @ self.anomalies)


def _scaled_inv_sqrt_divided(eigvals, ridge):
    """sqrt(c) ((c + l)^{-1/2} - c^{-1/2}) / l = -1 / (sqrt(c + l) (sqrt(c + l) + sqrt(c)))."""
    shifted = jnp.sqrt(ridge + eigvals)
    return -1.0 / (shifted * (shifted + jnp.sqrt(ridge)))


def whitener(obs_cov, mask):
    """(whiten, logdet): whiten(X) applies L^{-1} to the rows' observation axis of
    X (..., p), zeroing missing entries; logdet is log det of Gamma's observed block.

    Diagonal and scalar covariances are whitened elementwise (O(p)); a dense one by
    the Cholesky factor of Gamma with the missing rows/columns replaced by identity.
    """
    dtype = obs_cov.dtype
    if isinstance(obs_cov, (DiagonalCovariance, ScalarCovariance)):
        variances = obs_cov.diagonal()
        scale = jnp.where(mask, 1.0 / jnp.sqrt(variances), 0.0)
        logdet = jnp.sum(jnp.where(mask, jnp.log(variances), 0.0))
        return (lambda x: x * scale), logdet
    matrix = obs_cov.matrix() if not isinstance(obs_cov, DenseCovariance) else obs_cov.covariance
    both = mask[:, None] & mask[None, :]
    chol = jnp.linalg.cholesky(jnp.where(both, matrix, jnp.eye(mask.shape[0], dtype=dtype)))

    def whiten(x):
        x = jnp.where(mask, x, 0.0)
        flat = x.reshape(-1, x.shape[-1])
        return solve_lower(chol, flat.T).T.reshape(x.shape)

    return whiten, logdet_from_chol(chol)


def ensemble_space(forecast: Ensemble, observed, y, obs_cov, observation_space: bool | None = None) -> EnsembleSpace:
    """Whitened ensemble-space quantities of a forecast ensemble and its observations.

    Args:
        forecast: the forecast `Ensemble` (J, d).
        observed: (J, p) observation operator applied to each member.
        y: (p,) observation, NaN where missing.
        obs_cov: Gamma, a covariance operator.
        observation_space: factor the p x p Gram matrix instead of the J x J one;
            default (None): when p < J.
    """
    size, p = observed.shape
    dtype = forecast.members.dtype
    mask = jnp.isfinite(y)
    obs_mean = observed.mean(axis=0)
    whiten, logdet_obs = whitener(obs_cov, mask)
    obs_anomalies = whiten(observed - obs_mean[None, :])
    innovation = whiten(jnp.where(mask, y - obs_mean, 0.0))
    ridge = jnp.asarray(size - 1, dtype)
    n_observed = jnp.sum(mask).astype(dtype)
    if observation_space is None:
        observation_space = p < size
    if observation_space:
        chol_obs = jnp.linalg.cholesky(obs_anomalies.T @ obs_anomalies + ridge * jnp.eye(p, dtype=dtype))
        chol_gram = None
        # whitened S = M / c: quad = c dy^T M^{-1} dy, log det = log det M - p log c
        quad = ridge * (innovation @ cho_solve(chol_obs, innovation))
        logdet = logdet_obs + logdet_from_chol(chol_obs) - p * jnp.log(ridge)
    else:
        chol_obs = None
        chol_gram = jnp.linalg.cholesky(obs_anomalies @ obs_anomalies.T + ridge * jnp.eye(size, dtype=dtype))
        # Woodbury and the determinant lemma in ensemble space
        projected = obs_anomalies @ innovation
        quad = innovation @ innovation - projected @ cho_solve(chol_gram, projected)
        logdet = logdet_obs + logdet_from_chol(chol_gram) - size * jnp.log(ridge)
    log_likelihood = -0.5 * (quad + logdet + n_observed * LOG_2PI)
    return EnsembleSpace(
        mean=forecast.mean,
        anomalies=forecast.anomalies,
        obs_anomalies=obs_anomalies,
        innovation=innovation,
        chol_gram=chol_gram,
        chol_obs_gram=chol_obs,
        mask=mask,
        log_likelihood=log_likelihood,
    )


class AbstractEnsembleAnalysis(eqx.Module):
    """How the forecast ensemble becomes the analysis ensemble (a strategy Module)."""

    stochastic: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, space: EnsembleSpace, key) -> Float[Array, "J d"]:
        """The analysis members (J, d)."""


class SquareRoot(AbstractEnsembleAnalysis):
    """ETKF with the symmetric square root T = sqrt(J-1) G^{-1/2} (DAPPER's 'Sqrt')."""

    def __call__(self, space, key=None):
        return space.sqrt_analysis()


class PerturbedObservations(AbstractEnsembleAnalysis):
    """Stochastic EnKF with perturbed observations (Burgers, van Leeuwen & Evensen 1998; DAPPER's 'PertObs').

    Each member j is updated towards y + eta_j with eta_j ~ N(0, R). The J draws
    are re-centred to zero mean and rescaled by sqrt(J / (J - 1)), so that their
    sample covariance is an unbiased estimate of R (DAPPER's `mean0` convention);
    without the rescaling the analysis spread is too small by a factor
    (J - 1) / J on the perturbation term, which costs accuracy at small J.
    """

    stochastic: ClassVar[bool] = True

    def __call__(self, space, key):
        if key is None:
            raise ValueError("PerturbedObservations draws observation perturbations: a `key` is required")
        size, p = space.obs_anomalies.shape
        noise = jax.random.normal(key, (size, p), space.anomalies.dtype)
        noise = (noise - noise.mean(axis=0, keepdims=True)) * jnp.sqrt(size / (size - 1.0))
        noise = jnp.where(space.mask[None, :], noise, 0.0)
        # whitened perturbed innovations of each member: L^{-1}(y + eta_j - h(e_j))
        innovations = space.innovation[None, :] - space.obs_anomalies + noise
        members = space.mean[None, :] + space.anomalies
        return members + space.gain_increments(innovations)


class DEnKF(AbstractEnsembleAnalysis):
    """Deterministic EnKF (Sakov & Oke 2008): ETKF mean, anomalies updated with half the gain."""

    def __call__(self, space, key=None):
        mean = space.mean + space.mean_weights() @ space.anomalies
        return mean[None, :] + space.half_gain_anomalies()


def _model(model, who: str) -> StateSpaceModel:
    if isinstance(model, LinearGaussianSSM):
        if model.n_times is not None:
            raise ValueError(f"{who}: `model` has `TimeVarying` fields; pass `model.at(n)`")
        return as_state_space_model(model)
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"{who} needs a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
    return model


def ensemble_status(members, spread):
    """NON_FINITE if any member is non-finite, COLLAPSED if the spread is zero."""
    non_finite = ~jnp.all(jnp.isfinite(members))
    scale = jnp.maximum(1.0, jnp.sqrt(jnp.mean(members.mean(axis=0) ** 2)))
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
    )
    return analysis, info


def forecast_members(model: StateSpaceModel, members, key):
    """Psi vmapped over members, plus N(0, Sigma) model noise when Sigma is not zero."""
    forecast = jax.vmap(model.dynamics)(members)
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


class AbstractEnsembleFilter(eqx.Module):
    """What every ensemble filter shares: drawing the initial ensemble, the
    forecast of every member, and viewing a `LinearGaussianSSM` before tracing.

    Final subclasses (`EnKF`, `LETKF`, `EnKFN`) hold `ensemble_size` and add their
    analysis; an optional `sharding` field constrains the members' layout.
    """

    ensemble_size: eqx.AbstractVar[int]
    stochastic: ClassVar[bool] = True  # the initial ensemble is drawn

    def prepare_model(self, model) -> StateSpaceModel:
        """Before tracing (called by `assimilate`): view a `LinearGaussianSSM` as a
        `StateSpaceModel` while its arrays are concrete, so that an all-zero
        `dynamics_cov` becomes a `ZeroCovariance` (no noise drawn)."""
        return _model(model, type(self).__name__) if isinstance(model, LinearGaussianSSM) else model

    def _constrain(self, members):
        sharding = getattr(self, "sharding", None)
        return members if sharding is None else sharding.constrain(members)

    def init(self, model, key) -> Ensemble:
        """J independent draws from the prior N(init_mean, init_cov).

        To start from a given ensemble, pass `init_state=kx.Ensemble(members)` to
        `assimilate` instead.
        """
        model = _model(model, f"{type(self).__name__}.init")
        return Ensemble(self._constrain(initial_members(model, self.ensemble_size, key)))

    def forecast(self, model, state: Ensemble, key=None) -> Ensemble:
        """Each member through the dynamics, plus model noise N(0, dynamics_cov).

        With a `sharding`, the members are constrained to it before and after, so
        the vmapped model runs on each device's own members.
        """
        model = _model(model, f"{type(self).__name__}.forecast")
        members = forecast_members(model, self._constrain(state.members), key)
        return Ensemble(self._constrain(members))


class EnKF(AbstractEnsembleFilter):
    """Ensemble Kalman filter (Evensen 1994, 2009), analysis chosen by a strategy.

    Args:
        ensemble_size: number of members J >= 2 (static).
        update: the analysis update: `SquareRoot()` (ETKF, default),
            `PerturbedObservations()` or `DEnKF()`.
        inflation: an inflation Module (`MultiplicativeInflation`, `RTPS`, ...), or
            a number / (d,) array for multiplicative inflation of the analysis
            anomalies (DAPPER's `infl`), or None.
        rotate: apply a random mean-preserving rotation to the analysis anomalies
            after the inflation (DAPPER's `rot=True`).
        sharding: a `kalmax.sharding.MemberSharding` to split the members over
            several devices (the forecast runs on each device's members), or None.

    The state is an `Ensemble` (members (J, d)), the info an `EnsembleInfo`.
    The cycle is: forecast every member (plus model noise); `inflation.prior`;
    the analysis; `inflation.posterior`; the rotation.

    Example:
        >>> flt = kx.EnKF(24, kx.SquareRoot(), inflation=1.013, rotate=True)
        >>> final, history = kx.assimilate(model, flt, ys, jax.random.key(0))
    """

    ensemble_size: int = eqx.field(static=True)
    update: AbstractEnsembleAnalysis
    inflation: AbstractInflation
    rotate: bool = eqx.field(static=True)
    sharding: object = eqx.field(static=True, default=None)

    def __init__(self, ensemble_size: int, update: AbstractEnsembleAnalysis | None = None, inflation=None,
                 rotate: bool = False, sharding=None):
        if isinstance(ensemble_size, bool) or int(ensemble_size) != ensemble_size or int(ensemble_size) < 2:
            raise ValueError(f"`ensemble_size` must be an integer >= 2; got {ensemble_size}")
        self.ensemble_size = int(ensemble_size)
        update = SquareRoot() if update is None else update
        if not isinstance(update, AbstractEnsembleAnalysis):
            raise TypeError(
                "`update` must be SquareRoot(), PerturbedObservations() or DEnKF(); "
                f"got {type(update).__name__}"
            )
        self.update = update
        self.inflation = as_inflation(inflation)
        self.rotate = bool(rotate)
        if sharding is not None:
            from ..sharding import AbstractEnsembleSharding

            if not isinstance(sharding, AbstractEnsembleSharding):
                raise TypeError(f"`sharding` must be a MemberSharding (kalmax.sharding) or None; got {type(sharding).__name__}")
            sharding.check_size(self.ensemble_size, None)
        self.sharding = sharding

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`)."""
        model = _model(model, type(self).__name__)
        self.inflation.check_size(model.state_dim)
        if self.sharding is not None:
            self.sharding.check_size(self.ensemble_size, model.state_dim)

    def analysis_step(self, model, forecast: Ensemble, y, key):
        """The analysis without checks (shared by `analysis` and subclasses)."""
        key_prior, key_analysis, key_post, key_rot = (
            (None,) * 4 if key is None else tuple(jax.random.split(key, 4))
        )
        inflated = self.inflation.prior(forecast, key_prior)
        observed = jax.vmap(model.observe)(inflated.members)
        space = ensemble_space(inflated, observed, y, model.obs_cov)
        members = self.update(space, key_analysis)
        return finish_analysis(self.inflation, self.rotate, inflated, members, space, key_post, key_rot)

    def analysis(self, model, state: Ensemble, y: Float[Array, " p"], key=None):
        """Assimilate y_{n+1} (NaN entries missing) into the forecast ensemble."""
        model = _model(model, "EnKF.analysis")
        if state.members.shape[0] != self.ensemble_size:
            raise ValueError(
                f"`state` has {state.members.shape[0]} members but `ensemble_size` is {self.ensemble_size}"
            )
        needs_key = self.update.stochastic or self.rotate or self.inflation.stochastic
        if needs_key and key is None:
            raise ValueError(f"{type(self).__name__}.analysis draws random numbers: a `key` is required")
        return self.analysis_step(model, state, jnp.asarray(y), key)


__all__ = [
    "DEnKF",
    "EnKF",
    "EnsembleInfo",
    "EnsembleSpace",
    "PerturbedObservations",
    "SquareRoot",
    "ensemble_space",
    "whitener",
]
