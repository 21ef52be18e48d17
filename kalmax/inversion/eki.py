"""Ensemble Kalman inversion: EKI (Iglesias, Law & Stuart 2013), its Tikhonov form, and ETKI.

One EKI iteration with step h moves every member towards the data,

    u_j <- u_j + C^{uw} (C^{ww} + h^{-1} Gamma)^{-1} (y_j - G(u_j)),

y_j = y (deterministic) or y + h^{-1/2} eta_j, eta_j ~ N(0, Gamma) (stochastic).
It is computed in ensemble space (notation of `base.WhitenedEnsemble`): with
C^{uw} = A_u^T S L^T and C^{ww} = L S^T S L^T, the Woodbury identity gives

    du_j = A_u^T (S S^T + h^{-1} I_J)^{-1} S r_j,

a J x J Cholesky solve: cost O(J^2 (d + p) + J^3) and memory O(J (d + p));
no p x p or d x d matrix is formed, so data vectors of 10^5-10^6 entries are fine.

Regimes: finite time (steps summing to 1, stochastic: for linear Gaussian
problems the ensemble approximates the posterior) and infinite time
(optimisation: with J > d and a linear G the ensemble collapses onto the
least-squares solution). `tikhonov=True` is TEKI (Chada, Stuart & Tong 2020):
the prior is appended to the data, so the iteration converges to the
Tikhonov-regularised (MAP) estimate instead of over-fitting.

`ETKI` is the ensemble transform Kalman inversion (the ETKF analysis with
noise h^{-1} Gamma; Huang, Huang, Reich & Stuart 2022 "Efficient derivative-free
Bayesian inference for large-scale inverse problems"): the mean moves by the
EKI gain applied to the mean residual, the anomalies are transformed by
T = (I + h S S^T)^{-1/2}. Deterministic, cost linear in p.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..ensemble.algebra import gain_increments, gram_cholesky, transform_anomalies, use_observation_space
from ..linalg import sym_matrix_function
from .base import (
    AbstractInversion,
    EnsembleInversionState,
    WhitenedEnsemble,
    check_ensemble_size,
    checked_tell_inputs,
    initial_state,
    resample_failed,
)
from .problem import InverseProblem
from .schedulers import AbstractScheduler, FixedStep


def _check_scheduler(scheduler) -> None:
    if not isinstance(scheduler, AbstractScheduler):
        raise TypeError(
            f"`scheduler` must be a kalmax scheduler (FixedStep, DataMisfitController, EKSStableStep); "
            f"got {type(scheduler).__name__}"
        )


class AbstractEnsembleInversion(AbstractInversion):
    """What EKI, ETKI and EKS share: J members from the prior, asked in physical space.

    Subclasses declare the fields `ensemble_size` (static int >= 2) and `scheduler`.
    """


    def __check_init__(self):
        check_ensemble_size(self.ensemble_size)
        _check_scheduler(self.scheduler)

    def init(self, problem: InverseProblem, key, members=None) -> EnsembleInversionState:
        """J members drawn from the prior (or the given unconstrained (J, d) `members`)."""
        return initial_state(problem, self.ensemble_size, key, members)

    def ask(self, state: EnsembleInversionState):
        """The members in physical space, theta_j = T(u_j): (J, d)."""
        return state.ensemble

    def evaluation_points(self, state):
        return state.members

    def n_points(self, problem: InverseProblem) -> int:
        return self.ensemble_size

    def final_time(self) -> float:
        """The scheduler's final time (finite for finite-time EKI)."""
        return self.scheduler.final_time

    def checked_outputs(self, problem: InverseProblem, state: EnsembleInversionState, outputs, key, failures):
        """`tell`'s argument checks: (outputs (J, p), per-member failure codes (J,))."""
        if key is None:
            raise ValueError(
                f"{type(self).__name__}.tell needs a `key`: it draws the data perturbations (stochastic EKI) and "
                "redraws failed members"
            )
        return checked_tell_inputs(problem, state, self.ensemble_size, outputs, failures)

    def finish(self, problem, state, space: WhitenedEnsemble, updated, codes, step, key) -> EnsembleInversionState:
        """Redraw failed members, keep the old ensemble if fewer than two succeeded, advance time."""
        enough = space.n_success >= 2
        members = resample_failed(key, updated, space.success)
        members = jnp.where(enough, members, state.members)
        return EnsembleInversionState(
            members=members,
            bounds=state.bounds,
            time=state.time + jnp.where(enough, step, 0.0),
            iteration=state.iteration + enough.astype(jnp.int32),
            misfit=jnp.zeros((), problem.dtype) + jnp.sum(space.mean_data_residual() ** 2),
            failures=codes,
            step_size=jnp.where(enough, step, jnp.nan).astype(problem.dtype),
        )

    def summary(self, state):
        members = state.members
        mean = members.mean(axis=0)
        variance = jnp.sum((members - mean) ** 2, axis=0) / (members.shape[0] - 1)
        return mean, variance, state.ensemble.mean(axis=0)


class EKI(AbstractEnsembleInversion):
    """Ensemble Kalman inversion (stochastic or deterministic), optionally Tikhonov-regularised (TEKI).

    Attributes:
        ensemble_size: J (at least 2; J > d for the infinite-time least-squares limit).
        scheduler: the step-size rule (default `FixedStep(1.0)`; `FixedStep(1/n, end=1)` or
            `DataMisfitController()` for finite-time use).
        stochastic: perturb the data, y_j = y + h^{-1/2} eta_j (default True, as Iglesias et al. 2013).
        tikhonov: append the prior to the data (TEKI).
    """

    ensemble_size: int = eqx.field(static=True)
    scheduler: AbstractScheduler = FixedStep(1.0)
    stochastic: bool = eqx.field(static=True, default=True)
    tikhonov: bool = eqx.field(static=True, default=False)

    def tell(self, problem: InverseProblem, state: EnsembleInversionState, outputs, key=None, failures=None):
        """Update with the forward runs `outputs` (J, p) of the points from `ask` (rows failed as coded)."""
        outputs, codes = self.checked_outputs(problem, state, outputs, key, failures)
        space = WhitenedEnsemble.build(problem, state.members, outputs, codes, state.time, self.tikhonov)
        step = self.scheduler(space.context)
        key_noise, key_resample = jax.random.split(key)
        residuals = space.residuals
        if self.stochastic:
            noise = jax.random.normal(key_noise, residuals.shape, residuals.dtype)
            residuals = residuals + jnp.where(space.success[:, None], noise, 0.0) / jnp.sqrt(step)
        S = space.whitened_anomalies
        # a q x q system in data space (q < J) or a J x J one in ensemble space
        observation_space = use_observation_space(*S.shape)
        chol = gram_cholesky(S, 1.0 / step, observation_space)
        updated = state.members + gain_increments(chol, S, residuals, space.anomalies, observation_space)
        return self.finish(problem, state, space, updated, codes, step, key_resample)


class ETKI(AbstractEnsembleInversion):
    """Ensemble transform Kalman inversion: deterministic, square-root update, cost linear in p.

    mean <- mean + A_u^T (S S^T + h^{-1} I)^{-1} S r_bar,  A_u <- (I + h S S^T)^{-1/2} A_u.

    Attributes:
        ensemble_size: J (at least 2).
        scheduler: the step-size rule (default `FixedStep(1.0)`).
        tikhonov: append the prior to the data (as TEKI).
    """

    ensemble_size: int = eqx.field(static=True)
    scheduler: AbstractScheduler = FixedStep(1.0)
    tikhonov: bool = eqx.field(static=True, default=False)

    def tell(self, problem: InverseProblem, state: EnsembleInversionState, outputs, key=None, failures=None):
        """Update with the forward runs `outputs` (J, p); the key only redraws failed members."""
        outputs, codes = self.checked_outputs(problem, state, outputs, key, failures)
        space = WhitenedEnsemble.build(problem, state.members, outputs, codes, state.time, self.tikhonov)
        step = self.scheduler(space.context)
        S, anomalies = space.whitened_anomalies, space.anomalies
        scale = jnp.sqrt(jnp.maximum(space.n_success - 1.0, 1.0))
        observation_space = use_observation_space(*S.shape)
        if observation_space:
            inner = sym_matrix_function(_gain_eigenvalues, S.T @ S, step)  # (S^T S + I/h)^{-1}
            mean = space.mean + (S @ (inner @ space.mean_residual())) @ anomalies
        else:
            gain = sym_matrix_function(_gain_eigenvalues, S @ S.T, step)  # (S S^T + I/h)^{-1}
            mean = space.mean + (gain @ (S @ space.mean_residual())) @ anomalies
        transformed = transform_anomalies(
            _transform_eigenvalues, _transform_minus_one_over_lambda, step, S, anomalies, observation_space
        )
        updated = mean + scale * transformed
        return self.finish(problem, state, space, updated, codes, step, key)


# Eigenvalue functions of the ETKI update (lam: eigenvalues of S S^T or S^T S, h: the step).
def _gain_eigenvalues(lam, h):
    return h / (1.0 + h * jnp.maximum(lam, 0.0))


def _transform_eigenvalues(lam, h):
    return jax.lax.rsqrt(1.0 + h * jnp.maximum(lam, 0.0))


def _transform_minus_one_over_lambda(lam, h):
    root = jnp.sqrt(1.0 + h * jnp.maximum(lam, 0.0))
    return -h / (root * (1.0 + root))
