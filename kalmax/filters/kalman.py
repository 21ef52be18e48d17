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

Missing observations: NaN entries of y are skipped. Their rows of H are zeroed
and they are decoupled from the observed ones with unit variance, so the shapes
stay static under `jit`/`vmap`; the log-likelihood is corrected by the unit
Gaussian terms so that it equals log p of the observed entries only.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .. import _checks
from ..results import RESULTS
from ..gaussian import Gaussian, SqrtGaussian
from ..linalg import LOG_2PI, cho_solve, logdet_from_chol, solve_lower, symmetrize, tria
from ..ssm import LinearGaussianSSM, TimeVarying, n_times


class KalmanInfo(eqx.Module):
    """Per-cycle diagnostics of a Kalman analysis.

    Attributes:
        log_likelihood: log p(y_{n+1} | y_{1:n}) of the observed entries.
        n_observed: number of non-missing entries of y_{n+1}.
        status: result code (0 = success; see `kalmax._status`).
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    status: Int[Array, ""]


def masked_observation_model(y, observation, obs_cov, obs_offset):
    """Zero the rows of a linear observation model where y is missing (NaN).

    Returns:
        (innovation_target, observation, obs_cov, mask) where missing entries have
        observation rows 0, unit variance decoupled from the rest, and a target
        equal to the (then zero) prediction, so they contribute nothing.
    """
    mask = jnp.isfinite(y)
    observation = jnp.where(mask[:, None], observation, 0.0)
    both = mask[:, None] & mask[None, :]
    eye = jnp.eye(y.shape[0], dtype=obs_cov.dtype)
    obs_cov = jnp.where(both, obs_cov, eye)
    offset = jnp.zeros_like(y) if obs_offset is None else jnp.where(mask, obs_offset, 0.0)
    target = jnp.where(mask, y, 0.0)
    return target - offset, observation, obs_cov, mask


def analysis_status(chol_innovation, mean):
    not_pd = ~jnp.all(jnp.isfinite(chol_innovation))
    non_finite = ~jnp.all(jnp.isfinite(mean))
    return jnp.where(
        not_pd, RESULTS.NOT_POSITIVE_DEFINITE, jnp.where(non_finite, RESULTS.NON_FINITE, RESULTS.SUCCESSFUL)
    ).astype(jnp.int32)


def _require_one_cycle(model, who: str) -> None:
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"KalmanFilter.{who} needs a `LinearGaussianSSM`; got {type(model).__name__}")
    if n_times(model) is not None:
        raise ValueError(
            f"KalmanFilter.{who}: `model` has `TimeVarying` fields; pass the model of one cycle, "
            "`model.at(n)` (kx.assimilate does this for you)"
        )


def innovation_log_likelihood(whitened, chol_innov, n_observed):
    """log N(v; 0, S) of the observed entries, from w = L_S^{-1} v (missing entries
    are decoupled unit-variance zeros and their log N(0; 0, 1) terms are removed)."""
    dy = whitened.shape[0]
    n_missing = (dy - n_observed).astype(whitened.dtype)
    return (
        -0.5 * (jnp.sum(whitened**2) + logdet_from_chol(chol_innov) + dy * LOG_2PI)
        + 0.5 * LOG_2PI * n_missing
    )


def gaussian_update(
    mean: Float[Array, " dx"],
    cov: Float[Array, "dx dx"],
    obs_matrix: Float[Array, "dy dx"],
    innovation: Float[Array, " dy"],
    obs_cov: Float[Array, "dy dy"],
    mask,
    joseph: bool = False,
) -> tuple[Gaussian, KalmanInfo]:
    """The Kalman analysis of N(mean, cov) given an innovation y - h(mean) with
    (linearised) observation matrix H, shared by the KF, the EKF and their kin.

        S = H C H^T + Gamma,  m+ = m + C H^T S^{-1} v,  C+ = C - C H^T S^{-1} H C

    `mask` (dy,) marks the observed entries; rows of `obs_matrix`, `innovation`
    and `obs_cov` for missing entries must already be neutralised (see
    `masked_observation_model`). Returns the posterior and a `KalmanInfo` with
    log N(v; 0, S) of the observed entries.
    """
    posterior, info, _, _ = gaussian_update_parts(mean, cov, obs_matrix, innovation, obs_cov, mask, joseph)
    return posterior, info


def gaussian_update_parts(mean, cov, obs_matrix, innovation, obs_cov, mask, joseph: bool = False):
    """`gaussian_update`, also returning the Cholesky factor L_S of S and the
    whitened cross-covariance W = L_S^{-1} H C (so that m+ = m + W^T L_S^{-1} v)."""
    dx = mean.shape[0]
    innov_cov = symmetrize(obs_matrix @ cov @ obs_matrix.T + obs_cov)
    chol_innov = jnp.linalg.cholesky(innov_cov)
    # One triangular solve for both: w = L_S^{-1} v and W = L_S^{-1} H C,
    # so that K v = W^T w and K S K^T = W^T W.
    solved = solve_lower(chol_innov, jnp.concatenate([innovation[:, None], obs_matrix @ cov], axis=1))
    whitened, weights = solved[:, 0], solved[:, 1:]
    new_mean = mean + weights.T @ whitened
    if joseph:
        gain = cho_solve(chol_innov, obs_matrix @ cov).T
        reduce = jnp.eye(dx, dtype=cov.dtype) - gain @ obs_matrix
        new_cov = reduce @ cov @ reduce.T + gain @ obs_cov @ gain.T
    else:
        new_cov = cov - weights.T @ weights
    n_observed = jnp.sum(mask).astype(jnp.int32)
    info = KalmanInfo(
        innovation_log_likelihood(whitened, chol_innov, n_observed), n_observed, analysis_status(chol_innov, new_mean)
    )
    return Gaussian(new_mean, symmetrize(new_cov)), info, chol_innov, weights


class KalmanFilter(eqx.Module):
    """Exact filter for a `LinearGaussianSSM` (Kalman 1960).

    Args:
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
        mean = model.predict_mean(state.mean)
        if self.square_root:
            chol_noise = jnp.linalg.cholesky(model.dynamics_cov)
            chol = tria(jnp.concatenate([model.dynamics @ state.chol, chol_noise], axis=1))
            return SqrtGaussian(mean, chol)
        cov = symmetrize(model.dynamics @ state.cov @ model.dynamics.T + model.dynamics_cov)
        return Gaussian(mean, cov)

    def analysis(self, model: LinearGaussianSSM, state, y: Float[Array, " dy"], key=None):
        """Condition the forecast on y_{n+1} (NaN entries are missing)."""
        _require_one_cycle(model, "analysis")
        target, obs_matrix, obs_cov, mask = masked_observation_model(
            y, model.observation, model.obs_cov, model.obs_offset
        )
        if not self.square_root:
            posterior, info, _, _ = self.covariance_analysis(model, state, y)
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
            innovation_log_likelihood(whitened, chol_innov, n_observed), n_observed, analysis_status(chol_innov, mean)
        )
        return SqrtGaussian(mean, lower[dy:, dy:]), info

    def covariance_analysis(self, model: LinearGaussianSSM, state: Gaussian, y):
        """The covariance-form analysis, also returning L_S and W = L_S^{-1} H C^-
        (see `gaussian_update_parts`; the steady-state scan caches them)."""
        target, obs_matrix, obs_cov, mask = masked_observation_model(
            y, model.observation, model.obs_cov, model.obs_offset
        )
        innovation = jnp.where(mask, target - obs_matrix @ state.mean, 0.0)
        return gaussian_update_parts(state.mean, state.cov, obs_matrix, innovation, obs_cov, mask, self.joseph)

    def scan_time_invariant(self, model: LinearGaussianSSM, state, ys, save, unroll: int):
        """`assimilate`'s scan for a time-invariant model with steady-state detection
        (None where it does not apply: square-root form, or `steady_state=False`).
        The filter draws no random numbers, so a key given to `assimilate` changes nothing."""
        if self.square_root or not self.steady_state:
            return None
        from .steady_state import steady_state_scan

        return steady_state_scan(self, model, state, ys, save, unroll)

    def assimilate_parallel(self, model: LinearGaussianSSM, ys, *, save):
        """The whole filter as an associative scan (used by `assimilate(..., parallel=True)`).

        O(log T) depth (Särkkä & García-Fernández 2021); equal to the sequential
        filter up to round-off. Covariance form only.
        """
        if self.square_root:
            raise ValueError("`parallel=True` runs the covariance form; use KalmanFilter(square_root=False)")
        from .parallel_kalman import parallel_filter

        return parallel_filter(model, ys, save)
