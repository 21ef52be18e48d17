"""Extended and unscented Rauch-Tung-Striebel smoothers for nonlinear models.

The forward pass is the extended or the unscented Kalman filter (`kx.assimilate`, keeping
the filtered and predicted means and covariances); the backward pass is the RTS
recursion with the smoother gain G_n = D_n (C^-_{n+1})^{-1} (Särkkä 2013, "Bayesian
Filtering and Smoothing", ch. 9):

    m^s_n = m_n + G_n (m^s_{n+1} - m^-_{n+1}),   C^s_n = C_n + G_n (C^s_{n+1} - C^-_{n+1}) G_n^T,

where D_n is the cross-covariance of v_n and v_{n+1} given y_{1:n}:

- extended (ERTS): D_n = C_n F_n^T with F_n = dPsi/dv(m_n) (`jax.jacfwd`, the Jacobian the
  EKF's forecast uses);
- unscented (URTS; Särkkä 2008, "Unscented Rauch-Tung-Striebel smoother", IEEE TAC 53):
  D_n = sum_i W^c_i (X_i - m_n)(Psi(X_i) - m^-_{n+1})^T over the sigma points X_i of
  N(m_n, C_n), with the UKF's weights.

Both equal the RTS smoother on linear-Gaussian models. The filter's `inflation` enters
through the predicted covariances C^-_{n+1} it saved.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..assimilate import assimilate
from ..filters.extended import ExtendedKalmanFilter, UnscentedKalmanFilter
from ..history import Save
from ..linalg import cho_solve, symmetrize
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model, n_times
from .base import AbstractSmoother
from .rts import SmootherResult


def _state_space_model(model, who: str) -> StateSpaceModel:
    if isinstance(model, LinearGaussianSSM):
        return as_state_space_model(model)
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"{who} needs a StateSpaceModel or a LinearGaussianSSM; got {type(model).__name__}")
    return model


def _check_time_invariant(model, who: str) -> None:
    if not isinstance(model, (StateSpaceModel, LinearGaussianSSM)):
        raise TypeError(f"`model`: {who} needs a StateSpaceModel or a LinearGaussianSSM; got {type(model).__name__}")
    if n_times(model) is not None:
        raise ValueError(f"`model`: {who} needs a time-invariant model (no `TimeVarying` fields)")


def _backward(model, filtered, cross_covariance):
    """The RTS recursion from the filter's history; `cross_covariance(mean, cov, pred_mean)`
    gives D_n. Returns (means, covs, cross_covs, init_mean, init_cov)."""

    def step(carry, inputs):
        smooth_mean, smooth_cov = carry  # of v_{n+1}
        mean, cov, pred_mean, pred_cov = inputs  # filtered v_n, predicted v_{n+1}
        cross = cross_covariance(mean, cov, pred_mean)  # D_n = Cov(v_n, v_{n+1} | y_1:n)
        gain = cho_solve(jnp.linalg.cholesky(pred_cov), cross.T).T
        update = (smooth_cov - pred_cov) @ gain.T
        new_mean = mean + gain @ (smooth_mean - pred_mean)
        new_cov = symmetrize(cov + gain @ update)
        # Cov(v_{n+1}, v_n | y_1:T) = C^s_{n+1} G_n^T = (C^s_{n+1} - C^-_{n+1}) G_n^T + D_n^T
        return (new_mean, new_cov), (smooth_mean, smooth_cov, update + cross.T)

    means = jnp.concatenate([model.init_mean[None], filtered.mean[:-1]], axis=0)
    covs = jnp.concatenate([model.init_cov.matrix()[None], filtered.cov[:-1]], axis=0)
    last = (filtered.mean[-1], filtered.cov[-1])
    inputs = (means, covs, filtered.forecast_mean, filtered.forecast_cov)
    (init_mean, init_cov), (smooth_means, smooth_covs, cross) = jax.lax.scan(step, last, inputs, reverse=True)
    return smooth_means, smooth_covs, cross, init_mean, init_cov


def _result(filtered, backward) -> SmootherResult:
    means, covs, cross, init_mean, init_cov = backward
    return SmootherResult(mean=means, cov=covs, cross_cov=cross, init_mean=init_mean, init_cov=init_cov,
                          filtered=filtered, log_likelihood=jnp.sum(filtered.info.log_likelihood))


class ExtendedRTSSmoother(AbstractSmoother):
    """Extended Kalman filter forward, RTS backward with the dynamics' Jacobian (module docstring).

    Attributes:
        filter: the forward `ExtendedKalmanFilter` (its inflation and Joseph option).

    Example:
        >>> smoothed = kx.smooth(model, kx.ExtendedRTSSmoother(), ys)
        >>> smoothed.mean, smoothed.cov
    """

    filter: ExtendedKalmanFilter = eqx.field(default_factory=ExtendedKalmanFilter)

    def __check_init__(self):
        if not isinstance(self.filter, ExtendedKalmanFilter):
            raise TypeError(f"`filter` must be an ExtendedKalmanFilter; got {type(self.filter).__name__}")

    def check_model(self, model) -> None:
        _check_time_invariant(model, "ExtendedRTSSmoother")
        self.filter.check_model(model)

    def run(self, model, ys, key=None, init_state=None) -> SmootherResult:
        model = _state_space_model(model, "ExtendedRTSSmoother")
        _, filtered = assimilate(model, self.filter, ys, save=Save(cov=True, forecast=True), throw=False,
                                 init_state=init_state)

        def cross_covariance(mean, cov, pred_mean):
            return cov @ jax.jacfwd(model.dynamics)(mean).T

        return _result(filtered, _backward(model, filtered, cross_covariance))


class UnscentedRTSSmoother(AbstractSmoother):
    """Unscented Kalman filter forward, unscented RTS backward (Särkkä 2008; module docstring).

    Attributes:
        filter: the forward `UnscentedKalmanFilter` (its sigma-point parameters and
            inflation); the backward pass uses the same sigma points.

    Example:
        >>> smoothed = kx.smooth(model, kx.UnscentedRTSSmoother(kx.UnscentedKalmanFilter(alpha=1.0)), ys)
    """

    filter: UnscentedKalmanFilter = eqx.field(default_factory=UnscentedKalmanFilter)

    def __check_init__(self):
        if not isinstance(self.filter, UnscentedKalmanFilter):
            raise TypeError(f"`filter` must be an UnscentedKalmanFilter; got {type(self.filter).__name__}")

    def check_model(self, model) -> None:
        _check_time_invariant(model, "UnscentedRTSSmoother")
        self.filter.check_model(model)

    def run(self, model, ys, key=None, init_state=None) -> SmootherResult:
        model = _state_space_model(model, "UnscentedRTSSmoother")
        _, filtered = assimilate(model, self.filter, ys, save=Save(cov=True, forecast=True), throw=False,
                                 init_state=init_state)
        dim = model.state_dim

        def cross_covariance(mean, cov, pred_mean):
            scale, _, cov_weights = self.filter.sigma_weights(dim, cov.dtype)
            points, _ = self.filter.sigma_points(mean, cov, scale)
            propagated = jax.vmap(model.dynamics)(points)
            return ((points - mean).T * cov_weights) @ (propagated - pred_mean)

        return _result(filtered, _backward(model, filtered, cross_covariance))


__all__ = ["ExtendedRTSSmoother", "UnscentedRTSSmoother"]
