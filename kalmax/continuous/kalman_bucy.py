"""The Kalman-Bucy filter (Kalman & Bucy 1961) and its extended form, driven by observation
increments.

For dv = A v dt + Sigma^{1/2} dB, dz = H v dt + Gamma^{1/2} dW the filtering distribution is
N(m(t), C(t)) with

    dm = A m dt + K (dz - H m dt),            K = C H^T Gamma^{-1},
    dC/dt = A C + C A^T + Sigma - C H^T Gamma^{-1} H C      (the Riccati equation),

and the log-likelihood of the observation path (Girsanov's formula, the continuous
analogue of the innovation form of the discrete filter)

    log L = int (H m)^T Gamma^{-1} dz - 1/2 int |Gamma^{-1/2} H m|^2 dt.

The extended filter (Jazwinski 1970, sec. 8.3) uses f(m), h(m) and their Jacobians at m.
These are controlled differential equations driven by the path z; diffrax solves them
with the Ito-Euler scheme stepping exactly to the grid of the increments (`StepTo`), whose
control increment over a step is the data increment dz_k (the Ito integral needs the
left-point rule; a midpoint or Heun scheme would give the Stratonovich integral). The
discretisation error is O(dt), the order of the data's own time step.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..models.integrators import rk4_step
from ..results import DivergenceError
from .model import ContinuousModel, check_grid


class ContinuousFilterResult(eqx.Module):
    """The output of a continuous-time filter on the grid t_k = k dt, k = 0..T.

    Attributes:
        times: (T + 1,) t_k.
        mean: (T + 1, d) filtered means m(t_k) (m(0) = m_0).
        cov: (T + 1, d, d) filtered covariances (Kalman-Bucy), or None (ensembles).
        spread: (T + 1,) sqrt(mean_i var_i) of an ensemble, or None.
        log_likelihood: log L of the observation path (Girsanov; for an ensemble with the
            ensemble mean of h).
    """

    times: Float[Array, " T1"]
    mean: Float[Array, "T1 d"]
    cov: Float[Array, "T1 d d"] | None
    spread: Float[Array, " T1"] | None
    log_likelihood: Float[Array, ""]


def checked_result(result: ContinuousFilterResult, method: str) -> ContinuousFilterResult:
    """`result`, or a `DivergenceError` naming the first grid time whose mean (or covariance) is
    not finite. A result computed under a JAX transformation (jit, grad, vmap) is not checked:
    its values are not known there."""
    if not _checks.is_concrete(result.mean):
        return result
    finite = np.isfinite(np.asarray(result.mean)).all(axis=1)
    if result.cov is not None:
        finite &= np.isfinite(np.asarray(result.cov)).all(axis=(1, 2))
    if not finite.all():
        step = int(np.argmin(finite))
        raise DivergenceError(
            f"{method}: the filter became non-finite at grid step {step} (t = {float(result.times[step]):.4g}): "
            "it diverged, or its explicit steps are unstable at this `dt` (a smaller grid step, an ensemble "
            "filter, or for 3DVAR a smaller background covariance)")
    return result


class FilterTerm(diffrax.AbstractTerm):
    """A filter's whole right-hand side as one diffrax term, F(y) dt + G(y) dz (+ a noise
    part): the control over a step is (dt, the increments of `paths`) -- the observation
    path, and a Brownian motion for stochastic filters -- and `field` evaluates everything
    the step needs once (the ensemble statistics, the gain), `product` combines it with the
    control."""

    paths: tuple  # diffrax.AbstractPath: the observation path first
    field: object  # (t, y, args) -> what `product` needs
    product: object  # (field value, (dt, increments)) -> the increment of y

    def vf(self, t, y, args):
        return self.field(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0, tuple(path.evaluate(t0, t1) for path in self.paths)

    def prod(self, vf, control):
        return self.product(vf, control)


def observation_path(increments, dt) -> tuple[Float[Array, " T1"], diffrax.LinearInterpolation]:
    """The grid and the path z(t_k) = sum_{j<k} dz_j (z(0) = 0) of the increments."""
    n_steps, n_obs = increments.shape
    times = dt * jnp.arange(n_steps + 1, dtype=increments.dtype)
    cumulative = jnp.concatenate([jnp.zeros((1, n_obs), increments.dtype), jnp.cumsum(increments, axis=0)])
    return times, diffrax.LinearInterpolation(times, cumulative)


def drift_increment(drift, state, dt, rk4: bool):
    """The drift's part of a filter's step on a uniform grid: f(state) dt (Ito-Euler), or with
    `rk4` one RK4 step of f over dt minus the state (the filters' `rk4_drift`)."""
    return rk4_step(drift, state, dt) - state if rk4 else drift(state) * dt


def solve_on_grid(term: FilterTerm, start, times):
    """Ito-Euler from `start` stepping exactly to `times`, saving every grid point."""
    return diffrax.diffeqsolve(
        term, diffrax.Euler(), times[0], times[-1], None, start, saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.StepTo(ts=times), max_steps=times.shape[0] - 1,
    ).ys


class KalmanBucy(eqx.Module):
    """The Kalman-Bucy filter for a linear `ContinuousModel`, or with `extended=True` the
    extended Kalman-Bucy filter for a nonlinear one (module docstring).

    Example:
        >>> result = kx.KalmanBucy().run(model, data.increments, dt)   # result.mean, .cov
    """

    extended: bool = eqx.field(static=True, default=False)

    def run(self, model: ContinuousModel, increments: Float[Array, "T p"], dt) -> ContinuousFilterResult:
        """Filter the increments dz_k (T, p) on the grid of step `dt`.

        Raises `DivergenceError` naming the first grid step where the result is not finite
        (not under jit, grad or vmap, where the values are not known)."""
        if not isinstance(model, ContinuousModel):
            raise TypeError(f"`model` must be a kx.ContinuousModel; got {type(model).__name__}")
        if not self.extended and not model.linear:
            raise ValueError("`model` has a nonlinear drift or observation: the Kalman-Bucy filter needs matrices A "
                             "and H; use KalmanBucy(extended=True) or kx.EnKBF")
        dt, increments = check_grid(dt, increments, model)
        return checked_result(self._filter(model, increments, dt),
                              "KalmanBucy(extended=True)" if self.extended else "KalmanBucy()")

    @eqx.filter_jit
    def _filter(self, model: ContinuousModel, increments, dt) -> ContinuousFilterResult:
        """The solve, compiled once per model structure and shapes (the checks are `run`'s)."""
        times, path = observation_path(increments, dt)
        dim = model.state_dim
        diffusion = model.diffusion_cov.matrix() if not model.diffusion_cov.is_zero() else jnp.zeros((dim, dim),
                                                                                                    model.dtype)
        obs_cov = model.obs_cov

        def field(t, y, args):
            mean, cov, _ = y
            drift_jac, obs_jac = model.drift_jacobian(mean), model.obs_jacobian(mean)
            observed = model.observe(mean)
            gain = obs_cov.solve(obs_jac @ cov).T  # C H^T Gamma^{-1}
            riccati = drift_jac @ cov + cov @ drift_jac.T + diffusion - gain @ obs_jac @ cov
            weights = obs_cov.solve(observed)  # Gamma^{-1} h(m)
            return model.drift_of(mean), observed, gain, 0.5 * (riccati + riccati.T), weights

        def product(values, control):
            drift, observed, gain, riccati, weights = values
            dt, (dz,) = control
            return (drift * dt + gain @ (dz - observed * dt), riccati * dt,
                    weights @ dz - 0.5 * (weights @ observed) * dt)

        start = (model.init_mean, model.init_cov, jnp.zeros((), model.dtype))
        means, covs, log_likelihoods = solve_on_grid(FilterTerm((path,), field, product), start, times)
        return ContinuousFilterResult(times=times, mean=means, cov=covs, spread=None,
                                      log_likelihood=log_likelihoods[-1])


__all__ = ["ContinuousFilterResult", "FilterTerm", "KalmanBucy", "drift_increment", "observation_path", "solve_on_grid"]
