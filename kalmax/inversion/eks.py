"""The ensemble Kalman sampler (EKS), optionally with the ALDI finite-ensemble correction.

EKS (Garbuno-Inigo, Hoffmann, Li & Stuart 2020, "Interacting Langevin
diffusions: gradient structure and ensemble Kalman sampler", SIAM J. Appl.
Dyn. Syst. 19(1), eq. (4.8)) puts EKI in a heat bath: for a prior N(m_0, C_0)
on the unconstrained u, its members follow

    du_j = -C(U) grad Phi(u_j) dt - C(U) C_0^{-1}(u_j - m_0) dt + sqrt(2 C(U)) dW_j

with the data misfit's gradient replaced by ensemble differences, so that for
a linear G the ensemble samples the posterior (no derivative of G is needed).
One step of size dt (rows are members, mean over the J members):

    u_j' = u_j - dt sum_k D_jk (u_k - mean u)                    EKI drift
               - dt C(U) C_0^{-1} (u_j' - m_0)                   prior, implicit
               + dt (d + 1) / J (u_j - mean u)                   ALDI correction
               + sqrt(2 dt) C(U)^{1/2} xi_j,

    D_jk = <G(u_k) - mean G, Gamma^{-1} (G(u_j) - y)> / J,
    C(U) = (1/J) sum_k (u_k - mean u)(u_k - mean u)^T = A^T A / J,
    C(U)^{1/2} xi_j = (1/sqrt J) sum_k (u_k - mean u) z_jk,  z ~ N(0, I_J).

The noise uses the generalised square root A^T / sqrt(J) (d x J): it has
exactly the law N(0, C(U)) without a matrix square root. The correction term
(d + 1)/J (u_j - mean u) is the one of ALDI (Garbuno-Inigo, Nüsken & Reich
2020, "Affine invariant interacting Langevin dynamics for Bayesian inference",
SIAM J. Appl. Dyn. Syst. 19(3)): with it the continuous-time dynamics leave
the posterior exactly invariant (product measure) for every J > d + 1, not
only as J -> infinity. Both papers normalise C(U) and D by 1/J (not 1/(J-1)),
and the correction (d + 1)/J is derived for that normalisation together with
the square root A^T / sqrt(J); this module keeps it. With failed members J is
the number n of successful ones.

The implicit prior step is the linear system (I + dt C C_0^{-1}) x_j' = x_j in
x = u - m_0. Writing W = A L_0^{-T} (rows L_0^{-1}(u_k - mean u), C_0 = L_0 L_0^T),
x~ = L_0^{-1} x and c = dt / J, Woodbury gives, for the rows X of x,

    X' = X - c (X~ W^T) (I_J + c W W^T)^{-1} A        (ensemble space, J x J)
       = X - c X~ (I_d + c W^T W)^{-1} (W^T A)        (parameter space, d x d)

(the push-through identity (I + c W W^T)^{-1} W = W (I + c W^T W)^{-1}). The
smaller system is solved by Cholesky: cost O(J^2 (d + p) + min(J, d)^3 + J min(J, d) d)
plus whitening 2J prior rows (O(J d) for a diagonal C_0, O(J d^2 + d^3) for a
dense one) and J output rows; memory O(J (d + p) + J^2). No d x d prior
inverse and nothing p x p is formed (only the small Gram matrix of W when d < J).

The step dt comes from the scheduler, by default the EKS rule
dt_n = numerator / (|D_n|_F + nugget) (`EKSStableStep`, sec. 4 of the EKS
paper), which keeps the explicit drift stable. EKS is run for many steps and
the posterior is estimated from the ensembles after a burn-in (pooled over
iterations).

Failed members (non-finite outputs, the problem's `failed_if`) are left out of
every ensemble quantity above and redrawn afterwards from the updated
successful members (as EKI: `base.resample_failed`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..ensemble.algebra import use_observation_space
from ..linalg import cho_solve
from .base import EnsembleInversionState, WhitenedEnsemble
from .eki import AbstractEnsembleInversion
from .problem import InverseProblem
from .schedulers import AbstractScheduler, EKSStableStep


class EKS(AbstractEnsembleInversion):
    """Ensemble Kalman sampler (Garbuno-Inigo, Hoffmann, Li & Stuart 2020), with the ALDI correction.

    The update is in this module's docstring. The state is an
    `EnsembleInversionState`: (J, d) unconstrained members, the time t_n (sum of
    the steps), the data misfit and failure codes of the last told outputs.

    Attributes:
        ensemble_size: J (at least 2; J > d + 1 for the ALDI correction to make the posterior
            exactly invariant).
        scheduler: the step-size rule (default `EKSStableStep()`: dt = 1 / (|D|_F + 1e-8)).
        finite_ensemble_correction: add dt (d + 1)/J (u_j - mean u) (ALDI; default True).

    Example:
        >>> eks = EKS(100)
        >>> result = invert(problem, eks, key, n_steps=500)
        >>> posterior_mean = result.history.mean[100:].mean(axis=0)  # after a burn-in
    """

    ensemble_size: int = eqx.field(static=True)
    scheduler: AbstractScheduler = EKSStableStep()
    finite_ensemble_correction: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not isinstance(self.finite_ensemble_correction, bool):
            raise TypeError(
                f"`finite_ensemble_correction` must be a bool; got {type(self.finite_ensemble_correction).__name__}"
            )

    def tell(self, problem: InverseProblem, state: EnsembleInversionState, outputs, key=None, failures=None):
        """One EKS step with the forward runs `outputs` (J, p) of the points from `ask`.

        Args:
            problem: the `InverseProblem`.
            state: the current `EnsembleInversionState`.
            outputs: (J, p) forward runs G(T(u_j)).
            key: PRNG key; split into the Langevin noise z (J, J) and the redraws of failed members.
            failures: optional (J,) codes of members that failed outside JAX (0: success).

        Returns:
            The next `EnsembleInversionState` (unchanged members if fewer than two succeeded).
        """
        outputs, codes = self.checked_outputs(problem, state, outputs, key, failures)
        space = WhitenedEnsemble.build(problem, state.members, outputs, codes, state.time)
        step = self.scheduler(space.context)
        key_noise, key_resample = jax.random.split(key)
        updated = self._update(problem, state.members, space, step, key_noise)
        return self.finish(problem, state, space, updated, codes, step, key_resample)

    def _update(self, problem, members, space: WhitenedEnsemble, step, key):
        dtype = members.dtype
        size, dim = members.shape
        n = jnp.maximum(space.n_success, 1.0)
        # WhitenedEnsemble scales by 1/sqrt(n - 1); EKS uses the 1/n normalisation (see the module docstring)
        rescale = jnp.sqrt(jnp.maximum(space.n_success - 1.0, 1.0))
        deviations = space.anomalies * rescale  # A: (J, d), zero rows for failed members
        output_anomalies = space.context.output_anomalies  # L^{-1}(G(u_k) - mean G), (J, p)
        drift_matrix = -(space.context.residuals @ output_anomalies.T) / n  # D (J, J)
        rhs = members - step * (drift_matrix @ deviations)
        if self.finite_ensemble_correction:
            rhs = rhs + (step * (dim + 1) / n) * deviations
        z = jax.random.normal(key, (size, size), dtype)
        rhs = rhs + jnp.sqrt(2.0 * step / n) * (z @ deviations)
        x = rhs - problem.prior.mean
        whitened = problem.prior_whiten(jnp.concatenate([deviations, x], axis=0))
        w, x_white = whitened[:size], whitened[size:]
        c = step / n
        if use_observation_space(size, dim):  # parameter space: (I_d + c W^T W)^{-1}, a d x d system
            chol = jnp.linalg.cholesky(jnp.eye(dim, dtype=dtype) + c * (w.T @ w))
            correction = cho_solve(chol, x_white.T).T @ (w.T @ deviations)
        else:  # ensemble space: (I_J + c W W^T)^{-1}, a J x J system
            chol = jnp.linalg.cholesky(jnp.eye(size, dtype=dtype) + c * (w @ w.T))
            correction = cho_solve(chol, w @ x_white.T).T @ deviations
        return problem.prior.mean + x - c * correction
