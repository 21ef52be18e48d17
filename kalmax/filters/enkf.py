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
from jaxtyping import Array, Float

from ..ensemble.algebra import EnsembleSpace, ensemble_space
from ..ensemble.inflation import AbstractInflation, as_inflation
from ..gaussian import Ensemble
from .ensemble_base import AbstractEnsembleFilter, finish_analysis, member_model
from ..sharding import AbstractEnsembleSharding


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

            if not isinstance(sharding, AbstractEnsembleSharding):
                raise TypeError(f"`sharding` must be a MemberSharding (kalmax.sharding) or None; got {type(sharding).__name__}")
            sharding.check_size(self.ensemble_size, None)
        self.sharding = sharding

    def constrain(self, members):
        """`members` constrained to the `sharding` (unchanged without one)."""
        return members if self.sharding is None else self.sharding.constrain(members)

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`)."""
        model = member_model(model, type(self).__name__)
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
        model = member_model(model, "EnKF.analysis")
        if state.members.shape[0] != self.ensemble_size:
            raise ValueError(
                f"`state` has {state.members.shape[0]} members but `ensemble_size` is {self.ensemble_size}"
            )
        needs_key = self.update.stochastic or self.rotate or self.inflation.stochastic
        if needs_key and key is None:
            raise ValueError(f"{type(self).__name__}.analysis draws random numbers: a `key` is required")
        return self.analysis_step(model, state, jnp.asarray(y), key)


__all__ = ["DEnKF", "EnKF", "PerturbedObservations", "SquareRoot"]
