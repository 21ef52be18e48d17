"""Continuous-time 3DVAR (Blömker, Law, Stuart & Zygalakis 2013, "Accuracy and stability of
the continuous-time 3DVAR filter for the Navier-Stokes equation", Nonlinearity 26):

    dm = f(m) dt + C H^T Gamma^{-1} (dz - H m dt),

the Kalman-Bucy mean equation with a fixed covariance C instead of the Riccati solution
(the continuous limit of discrete 3DVAR with B = C; with enough observed directions and
enough variance inflation in C it synchronises with the truth to within the noise level).
A nonlinear h uses h(m) in the innovation and its Jacobian at m in the gain. Solved by
diffrax with the Ito-Euler scheme on the increments' grid (as `KalmanBucy`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..covariance import AbstractCovariance, as_covariance
from .kalman_bucy import (ContinuousFilterResult, FilterTerm, checked_result, drift_increment, observation_path,
                          solve_on_grid)
from .model import ContinuousModel, check_grid


class ContinuousThreeDVar(eqx.Module):
    """Continuous-time 3DVAR with a fixed background covariance (module docstring).

    Attributes:
        background_cov: C, a (d, d) array or covariance operator (e.g. `kx.ScalarCovariance`,
            or a spectral covariance for Navier-Stokes).
        rk4_drift: the drift's increment by one RK4 step of f over the grid step (static;
            default False: f(m) dt, the Ito-Euler scheme). Explicit Euler amplifies the
            weakly damped advective modes of a PDE such as Navier-Stokes; RK4 keeps them
            stable at the same step (the data term stays Euler).

    Example:
        >>> result = kx.ContinuousThreeDVar(0.1 * jnp.eye(3)).run(model, data.increments, dt)
    """

    background_cov: object
    rk4_drift: bool = eqx.field(static=True)

    def __init__(self, background_cov, rk4_drift: bool = False):
        if not isinstance(background_cov, AbstractCovariance):
            background_cov = jnp.asarray(background_cov)
            if background_cov.ndim != 2 or background_cov.shape[0] != background_cov.shape[1]:
                raise ValueError(f"`background_cov` must be a square (d, d) covariance; got shape "
                                 f"{tuple(background_cov.shape)}")
            background_cov = as_covariance("background_cov", background_cov, background_cov.shape[0],
                                           background_cov.dtype, allow_zero=False)
        self.background_cov = background_cov
        self.rk4_drift = bool(rk4_drift)

    def run(self, model: ContinuousModel, increments: Float[Array, "T p"], dt,
            init_mean: Float[Array, " d"] | None = None) -> ContinuousFilterResult:
        """Filter the increments dz_k (T, p) on the grid of step `dt` from `init_mean` (default
        the model's m_0). Raises `DivergenceError` naming the first grid step where the mean
        is not finite (not under jit, grad or vmap, where the values are not known)."""
        if not isinstance(model, ContinuousModel):
            raise TypeError(f"`model` must be a kx.ContinuousModel; got {type(model).__name__}")
        if self.background_cov.dim != model.state_dim:
            raise ValueError(f"`background_cov` has size {self.background_cov.dim} but the state has "
                             f"{model.state_dim} components")
        dt, increments = check_grid(dt, increments, model)
        start = model.init_mean if init_mean is None else jnp.asarray(init_mean, model.dtype)
        if start.shape != (model.state_dim,):
            raise ValueError(f"`init_mean` must have shape ({model.state_dim},); got {tuple(start.shape)}")
        return checked_result(self._filter(model, increments, dt, start), "ContinuousThreeDVar")

    @eqx.filter_jit
    def _filter(self, model: ContinuousModel, increments, dt, start) -> ContinuousFilterResult:
        """The solve, compiled once per model structure and shapes (the checks are `run`'s)."""
        times, path = observation_path(increments, dt)
        obs_cov, background = model.obs_cov, self.background_cov

        def gain_of(mean):  # C H^T Gamma^{-1}, (d, p)
            return background.mv(obs_cov.solve(model.obs_jacobian(mean)).T)

        def field(t, y, args):
            mean, _ = y
            observed = model.observe(mean)
            drift = drift_increment(model.drift_of, mean, dt, self.rk4_drift)
            return drift, observed, gain_of(mean), obs_cov.solve(observed)

        def product(values, control):
            drift, observed, gain, weights = values
            dt, (dz,) = control
            return drift + gain @ (dz - observed * dt), weights @ dz - 0.5 * (weights @ observed) * dt

        means, log_likelihoods = solve_on_grid(FilterTerm((path,), field, product),
                                               (start, jnp.zeros((), model.dtype)), times)
        return ContinuousFilterResult(times=times, mean=means, cov=None, spread=None,
                                      log_likelihood=log_likelihoods[-1])


__all__ = ["ContinuousThreeDVar"]
