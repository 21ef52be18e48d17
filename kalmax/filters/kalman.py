"""The Kalman filter, in covariance form and in square-root form.

Forecast (v_{n+1} = M v_n + b + xi, xi ~ N(0, Sigma)):

    m^- = M m + b,        C^- = M C M^T + Sigma

Analysis of y = H v + d + eta, eta ~ N(0, Gamma) (Kalman 1960):

    S = H C^- H^T + Gamma,   K = C^- H^T S^{-1}
    m = m^- + K (y - H m^- - d),   C = C^- - K S K^T     (or Joseph form)

with the log-likelihood term log p(y_{n+1} | y_{1:n}) = log N(y; H m^- + d, S).

Square-root form (Arasaratnam & Haykin 2008; Grewal & Andrews, ch. 6):
the Cholesky factor L of C is propagated by QR triangularisation,

    L^- = tria([M L, L_Sigma]),
    tria([[L_Gamma, H L^-], [0, L^-]]) = [[L_S, 0], [G, L]],   K = G L_S^{-1},

so C = L L^T stays positive semi-definite in float32.

Missing observations: NaN entries of y are skipped (see
`kalmax.filters.gaussian_update`, which holds the update shared with the EKF,
UKF, 3DVAR and the parallel and steady-state forms).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..gaussian import Gaussian, SqrtGaussian
from ..linalg import solve_lower, tria
from ..ssm import LinearGaussianSSM, TimeVarying, n_times
from .base import AbstractParallelFilter, AbstractSteadyStateFilter
from .gaussian_update import (
    KalmanInfo,
    analysis_status,
    covariance_analysis,
    innovation_log_likelihood,
    masked_observation_model,
    predict,
)
from .parallel_kalman import parallel_filter
from .steady_state import KalmanSteadyCycles


def _require_one_cycle(model, who: str) -> None:
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"KalmanFilter.{who} needs a `LinearGaussianSSM`; got {type(model).__name__}")
    if n_times(model) is not None:
        raise ValueError(
            f"KalmanFilter.{who}: `model` has `TimeVarying` fields; pass the model of one cycle, "
            "`model.at(n)` (kx.assimilate does this for you)"
        )


class KalmanFilter(AbstractSteadyStateFilter, AbstractParallelFilter):
    """Exact filter for a `LinearGaussianSSM` (Kalman 1960).

    Attributes:
        square_root: propagate the Cholesky factor of the covariance by QR
            (numerically robust in float32; needs positive-definite
            `dynamics_cov`/`obs_cov`) instead of the covariance itself.
        joseph: covariance form only; use the Joseph update
            C = (I - K H) C^- (I - K H)^T + K Gamma K^T, which stays positive
            semi-definite for any gain, instead of the cheaper symmetric update
            C = C^- - W^T W with W = L_S^{-1} H C^-.
        steady_state: covariance form, time-invariant models: once the Riccati
            recursion has converged (see `kalmax.filters.steady_state`), `assimilate`
            reuses its covariances and gain on fully observed cycles, so that a
            cycle costs matrix-vector products only. The outputs equal the full
            recursion's to a few units of round-off; False runs it every cycle.

    The state is a `Gaussian` (or `SqrtGaussian`), the info a `KalmanInfo`.

    Example:
        >>> final, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
        >>> history.info.log_likelihood.sum()  # log p(y_1:T)
    """

    square_root: bool = eqx.field(static=True, default=False)
    joseph: bool = eqx.field(static=True, default=False)
    steady_state: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.square_root and self.joseph:
            raise ValueError("`joseph=True` applies to the covariance form; the square-root form needs no Joseph update")

    def check_model(self, model: LinearGaussianSSM) -> None:
        """Checks before tracing (called by `assimilate`): the model type, and for the
        square-root form positive-definite covariances (their Cholesky factors are used)."""
        if not isinstance(model, LinearGaussianSSM):
            raise TypeError(f"KalmanFilter needs a `LinearGaussianSSM`; got {type(model).__name__}")
        if self.square_root:
            for name in ("dynamics_cov", "obs_cov", "init_cov"):
                value = getattr(model, name)
                values = value.values if isinstance(value, TimeVarying) else value
                _checks.check_positive_definite(name, values)

    def init(self, model: LinearGaussianSSM, key=None) -> Gaussian | SqrtGaussian:
        """The prior of v_0: N(init_mean, init_cov)."""
        if self.square_root:
            return SqrtGaussian(model.init_mean, jnp.linalg.cholesky(model.init_cov))
        return Gaussian(model.init_mean, model.init_cov)

    def forecast(self, model: LinearGaussianSSM, state, key=None):
        """Predict v_{n+1} from v_n: m^- = M m + b, C^- = M C M^T + Sigma."""
        _require_one_cycle(model, "forecast")
        if not self.square_root:
            return predict(model, state)
        chol_noise = jnp.linalg.cholesky(model.dynamics_cov)
        chol = tria(jnp.concatenate([model.dynamics @ state.chol, chol_noise], axis=1))
        return SqrtGaussian(model.predict_mean(state.mean), chol)

    def analysis(self, model: LinearGaussianSSM, state, y: Float[Array, " dy"], key=None):
        """Condition the forecast on y_{n+1} (NaN entries are missing)."""
        _require_one_cycle(model, "analysis")
        target, obs_matrix, obs_cov, mask = masked_observation_model(
            y, model.observation, model.obs_cov, model.obs_offset
        )
        if not self.square_root:
            posterior, info, _, _ = covariance_analysis(model, state, y, self.joseph)
            return posterior, info
        innovation = jnp.where(mask, target - obs_matrix @ state.mean, 0.0)
        dy, dx = obs_matrix.shape
        lower = tria(
            jnp.block(
                [
                    [jnp.linalg.cholesky(obs_cov), obs_matrix @ state.chol],
                    [jnp.zeros((dx, dy), y.dtype), state.chol],
                ]
            )
        )
        chol_innov, cross = lower[:dy, :dy], lower[dy:, :dy]
        whitened = solve_lower(chol_innov, innovation)
        mean = state.mean + cross @ whitened
        n_observed = jnp.sum(mask).astype(jnp.int32)
        info = KalmanInfo(
            innovation_log_likelihood(whitened, chol_innov, n_observed), n_observed, analysis_status(chol_innov, mean),
            jnp.sum(whitened**2),
        )
        return SqrtGaussian(mean, lower[dy:, dy:]), info

    def uses_steady_state(self) -> bool:
        """The steady-state path applies to the covariance form with `steady_state=True`.
        The filter draws no random numbers, so a key given to `assimilate` changes nothing."""
        return self.steady_state and not self.square_root

    def steady_cycles(self, model: LinearGaussianSSM) -> KalmanSteadyCycles:
        """The full and the steady cycle on a time-invariant model (`kalmax.filters.steady_state`)."""
        return KalmanSteadyCycles(model, self.joseph)

    def parallel_run(self, model: LinearGaussianSSM, ys):
        """The whole filter as an associative scan (`assimilate(..., parallel=True)`).

        O(log T) depth (Särkkä & García-Fernández 2021); equal to the sequential
        filter up to round-off. Covariance form only.
        """
        if self.square_root:
            raise ValueError("`parallel=True` runs the covariance form; use KalmanFilter(square_root=False)")
        return parallel_filter(model, ys)


__all__ = ["KalmanFilter", "KalmanInfo"]
