"""The Gaussian (Kalman) update shared by the Kalman filter, its parallel and
steady-state forms, the EKF, the UKF and 3DVAR.

Forecast of a linear-Gaussian model (v_{n+1} = M v_n + b + xi, xi ~ N(0, Sigma)):

    m^- = M m + b,        C^- = M C M^T + Sigma

Analysis of y = H v + d + eta, eta ~ N(0, Gamma) (Kalman 1960):

    S = H C^- H^T + Gamma,   K = C^- H^T S^{-1}
    m = m^- + K (y - H m^- - d),   C = C^- - K S K^T     (or Joseph form)

with the log-likelihood term log p(y_{n+1} | y_{1:n}) = log N(y; H m^- + d, S).

Missing observations: NaN entries of y are skipped. Their rows of H are zeroed
and they are decoupled from the observed ones with unit variance, so the shapes
stay static under `jit`/`vmap`; the log-likelihood is corrected by the unit
Gaussian terms so that it equals log p of the observed entries only.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..gaussian import Gaussian
from ..linalg import LOG_2PI, cho_solve, logdet_from_chol, solve_lower, symmetrize
from ..results import RESULTS
from ..ssm import LinearGaussianSSM


class KalmanInfo(eqx.Module):
    """Per-cycle diagnostics of a Kalman analysis.

    Attributes:
        log_likelihood: log p(y_{n+1} | y_{1:n}) of the observed entries.
        n_observed: number of non-missing entries of y_{n+1}.
        status: result code (0 = success; see `kalmax._status`).
        nis: normalised innovation squared d^T S^{-1} d, d = y_{n+1} - h(forecast mean),
            S its predicted covariance; chi-square with `n_observed` degrees of freedom
            (mean n_observed) when the filter's uncertainty is right (Bar-Shalom et al.
            2001, sec. 5.4). Much larger on average: the filter is overconfident, the
            first sign of divergence without a truth.
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    status: Int[Array, ""]
    nis: Float[Array, ""]


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
        innovation_log_likelihood(whitened, chol_innov, n_observed), n_observed, analysis_status(chol_innov, new_mean),
        jnp.sum(whitened**2),
    )
    return Gaussian(new_mean, symmetrize(new_cov)), info, chol_innov, weights


def predict(model: LinearGaussianSSM, state: Gaussian) -> Gaussian:
    """The forecast N(M m + b, M C M^T + Sigma) of one cycle."""
    cov = symmetrize(model.dynamics @ state.cov @ model.dynamics.T + model.dynamics_cov)
    return Gaussian(model.predict_mean(state.mean), cov)


def covariance_analysis(model: LinearGaussianSSM, state: Gaussian, y, joseph: bool = False):
    """The covariance-form Kalman analysis of y (NaN entries missing), also returning
    L_S and W = L_S^{-1} H C^- (see `gaussian_update_parts`; the steady-state scan caches them)."""
    target, obs_matrix, obs_cov, mask = masked_observation_model(y, model.observation, model.obs_cov, model.obs_offset)
    innovation = jnp.where(mask, target - obs_matrix @ state.mean, 0.0)
    return gaussian_update_parts(state.mean, state.cov, obs_matrix, innovation, obs_cov, mask, joseph)
