"""Ensemble algebra shared by the ensemble filters and ensemble inversion.

Rows are members (DAPPER's convention): members E (J, d) with mean x and
anomalies A = E - x; observed anomalies Y (J, p); an observation covariance
Gamma = L L^T. Everything is computed from the whitened anomalies S = Y L^{-T}
and whitened innovations, with the Gram matrix either in ensemble space,
G = S S^T + c I_J (J x J), or in observation space, M = S^T S + c I_p
(p x p), related by the push-through identity G^{-1} S = S M^{-1}; the
smaller one is factored (`use_observation_space`). No d x d (and no p x p
when p >= J) matrix is formed.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..covariance import DenseCovariance, DiagonalCovariance, ScalarCovariance
from ..gaussian import Ensemble
from ..linalg import LOG_2PI, cho_solve, logdet_from_chol, solve_lower, sym_inv_sqrt, sym_matrix_function


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
        nis: the normalised innovation squared dy^T S^{-1} dy with the ensemble's
            innovation covariance S (its quadratic term).
    """

    mean: Float[Array, " d"]
    anomalies: Float[Array, "J d"]
    obs_anomalies: Float[Array, "J p"]
    innovation: Float[Array, " p"]
    chol_gram: Float[Array, "J J"] | None
    chol_obs_gram: Float[Array, "p p"] | None
    mask: Array
    log_likelihood: Float[Array, ""]
    nis: Float[Array, ""]

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
        observation_space = self.chol_gram is None
        chol = self.chol_obs_gram if observation_space else self.chol_gram
        return gain_increments(chol, self.obs_anomalies, innovations, self.anomalies, observation_space)

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
        # f(l) = sqrt(c / (c + l)) is only needed through its divided difference here
        return transform_anomalies(None, _scaled_inv_sqrt_divided, ridge, self.obs_anomalies, self.anomalies, True)

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
        observation_space = use_observation_space(size, p)
    if observation_space:
        chol_obs = gram_cholesky(obs_anomalies, ridge, True)
        chol_gram = None
        # whitened S = M / c: quad = c dy^T M^{-1} dy, log det = log det M - p log c
        quad = ridge * (innovation @ cho_solve(chol_obs, innovation))
        logdet = logdet_obs + logdet_from_chol(chol_obs) - p * jnp.log(ridge)
    else:
        chol_obs = None
        chol_gram = gram_cholesky(obs_anomalies, ridge, False)
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
        nis=quad,
    )


def use_observation_space(n_members: int, n_obs: int) -> bool:
    """Whether to factor the n_obs x n_obs Gram matrix S^T S + c I rather than the
    n_members x n_members one S S^T + c I: when it is the smaller (the push-through
    identity makes the two equal)."""
    return n_obs < n_members


def gram_cholesky(obs_anomalies: Float[Array, "J p"], ridge, observation_space: bool) -> Float[Array, "r r"]:
    """Cholesky factor of S S^T + c I_J (ensemble space) or S^T S + c I_p (observation space)."""
    s = obs_anomalies
    if observation_space:
        return jnp.linalg.cholesky(s.T @ s + ridge * jnp.eye(s.shape[1], dtype=s.dtype))
    return jnp.linalg.cholesky(s @ s.T + ridge * jnp.eye(s.shape[0], dtype=s.dtype))


def gain_increments(chol, obs_anomalies, residuals: Float[Array, "k p"], anomalies: Float[Array, "J d"],
                    observation_space: bool) -> Float[Array, "k d"]:
    """Rows A^T (S S^T + c I)^{-1} S r_k = A^T S (S^T S + c I)^{-1} r_k: the Kalman gain in
    ensemble form applied to whitened residuals r_k, from `chol` = `gram_cholesky(S, c, ...)`."""
    if observation_space:
        return cho_solve(chol, residuals.T).T @ (obs_anomalies.T @ anomalies)
    return cho_solve(chol, obs_anomalies @ residuals.T).T @ anomalies


def transform_anomalies(function, divided, argument, obs_anomalies, anomalies: Float[Array, "J d"],
                        observation_space: bool) -> Float[Array, "J d"]:
    """f(S S^T) A for a spectral function f (with a scalar `argument`), computed as
    f(S S^T) A in ensemble space or as A + S g(S^T S) S^T A in observation space with the
    divided difference g(l) = (f(l) - f(0)) / l, given as `divided` (f(0) = 1 is assumed)."""
    s = obs_anomalies
    if observation_space:
        correction = sym_matrix_function(divided, s.T @ s, argument)
        return anomalies + s @ (correction @ (s.T @ anomalies))
    return sym_matrix_function(function, s @ s.T, argument) @ anomalies
