"""EnRML: the ensemble randomised maximum likelihood method, an iterative ensemble smoother
(Chen & Oliver 2012, "Ensemble randomized maximum likelihood method as an iterative
ensemble smoother", Math. Geosci. 44; in the ensemble-subspace form of Evensen, Raanes,
Stordal & Hove 2019, "Efficient implementation of an iterative ensemble smoother for data
assimilation and reservoir history matching", Front. Appl. Math. Stat. 5).

Each member j minimises its own randomised maximum-likelihood cost

    J_j(u) = 1/2 |u - u_j^0|^2_{C_0} + 1/2 |G(u) - y - eta_j|^2_Gamma,   eta_j ~ N(0, Gamma),

(u_j^0 its prior draw, eta_j drawn once) by Gauss-Newton with one sensitivity for all
members: the ensemble average of dG/du, estimated by regression. The members stay in the
prior ensemble's subspace, u_j = u_j^0 + A_0 w_j with A_0 = (u^0 - mean u^0) / sqrt(J - 1)
(d x J, C_0 = A_0 A_0^T), so the weights W = [w_1 .. w_J] (J x J) are the unknowns. With
the whitened output anomalies Y = Gamma^{-1/2} (G(u) - mean G) / sqrt(J - 1) (p x J) and
Omega = I + W Pi / sqrt(J - 1) (Pi the centring matrix; the current anomalies are A_0 Omega),
the average sensitivity in the subspace is S = Y Omega^{-1}, and the Gauss-Newton step of
length beta is

    W <- W - beta (I + S^T S)^{-1} (W + S^T Gamma^{-1/2} (G(u_j) - y - eta_j)_j),

a J x J solve (cost O(J^2 p + J^3), nothing d x d or p x p is formed). For a linear G one
step with beta = 1 is the ensemble smoother with perturbed observations and the next steps
stay there (its fixed point); for a linear G and a large ensemble the members sample the
posterior. `beta < 1` damps the steps (Chen & Oliver's Levenberg-Marquardt-like
relaxation, fixed here).

Failed forward runs (as for EKI: non-finite outputs, `failed_if`, or a raising run): the
sensitivity is regressed on the successful members only (least squares,
S = Y_s Omega_s^+) and a failed member keeps its weights (it is not moved, and is asked
again); with fewer than two successes the iteration is skipped.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from .base import AbstractInversion, EnsembleInversionState, check_ensemble_size, checked_tell_inputs, initial_state
from .problem import InverseProblem, successes


class EnRMLState(EnsembleInversionState):
    """The state of EnRML: an ensemble inversion state (members u_j = u_j^0 + A_0 w_j, the
    algorithmic time as the sum of the step lengths beta) with what the iteration keeps.

    Attributes:
        prior_members: (J, d) the prior draws u_j^0.
        weights: (J, J) W, column j the weights w_j of member j.
        perturbations: (J, p) the whitened data perturbations Gamma^{-1/2} eta_j (drawn at
            the first `tell`).
    """

    prior_members: Float[Array, "J d"]
    weights: Float[Array, "J J"]
    perturbations: Float[Array, "J p"]


class EnRML(AbstractInversion):
    """Ensemble randomised maximum likelihood (module docstring).

    Attributes:
        ensemble_size: J (at least 2).
        n_iter: Gauss-Newton iterations (static, >= 1); `invert` runs them as one fixed,
            differentiable scan (`n_steps`, if given, must equal it).
        step_size: beta in (0, 1], the length of each Gauss-Newton step (1: undamped).

    Example:
        >>> result = kx.invert(problem, kx.EnRML(100, n_iter=6), key)
    """

    ensemble_size: int = eqx.field(static=True)
    n_iter: int = eqx.field(static=True)
    step_size: Float[Array, ""]

    def __init__(self, ensemble_size: int, n_iter: int = 10, step_size=1.0):
        check_ensemble_size(ensemble_size)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"`n_iter` must be an integer >= 1 (Gauss-Newton iterations); got {n_iter!r}")
        step_size = _checks.as_float_array("step_size", step_size)
        if step_size.ndim != 0:
            raise ValueError(f"`step_size` must be a scalar; got shape {tuple(step_size.shape)}")
        if _checks.is_concrete(step_size) and not 0.0 < float(step_size) <= 1.0:
            raise ValueError(f"`step_size` must be in (0, 1] (the Gauss-Newton step length beta); got {float(step_size)}")
        self.ensemble_size, self.n_iter, self.step_size = ensemble_size, n_iter, step_size

    def fixed_iterations(self) -> int:
        return self.n_iter

    def init(self, problem: InverseProblem, key, members=None) -> EnRMLState:
        """J members drawn from the prior (or the given unconstrained (J, d) `members`)."""
        start = initial_state(problem, self.ensemble_size, key, members)
        size, dtype = self.ensemble_size, problem.dtype
        return EnRMLState(
            members=start.members, bounds=start.bounds, time=start.time, iteration=start.iteration,
            misfit=start.misfit, failures=start.failures, step_size=start.step_size, prior_members=start.members,
            weights=jnp.zeros((size, size), dtype), perturbations=jnp.zeros((size, problem.y.shape[0]), dtype),
        )

    def ask(self, state: EnRMLState):
        """The members in physical space, theta_j = T(u_j): (J, d)."""
        return state.ensemble

    def evaluation_points(self, state: EnRMLState):
        return state.members

    def n_points(self, problem: InverseProblem) -> int:
        return self.ensemble_size

    def summary(self, state: EnRMLState):
        members = state.members
        mean = members.mean(axis=0)
        variance = jnp.sum((members - mean) ** 2, axis=0) / (members.shape[0] - 1)
        return mean, variance, state.ensemble.mean(axis=0)

    def tell(self, problem: InverseProblem, state: EnRMLState, outputs, key=None, failures=None) -> EnRMLState:
        """One Gauss-Newton step with the forward runs `outputs` (J, p) of `ask(state)`; the key
        draws the data perturbations at the first step."""
        if key is None:
            raise ValueError("EnRML.tell needs a `key`: it draws the data perturbations eta_j at the first step")
        size = self.ensemble_size
        outputs, codes = checked_tell_inputs(problem, state, size, outputs, failures)
        success = successes(codes)
        dtype = state.members.dtype
        weights_mask = success.astype(dtype)
        n = weights_mask.sum()
        enough = n >= 2

        # whitened data perturbations, centred over the ensemble, drawn once
        fresh = jax.random.normal(key, state.perturbations.shape, dtype)
        fresh = fresh - fresh.mean(axis=0)
        perturbations = jnp.where(state.iteration == 0, fresh, state.perturbations)

        safe = jnp.where(success[:, None], outputs, 0.0)
        output_mean = weights_mask @ safe / jnp.maximum(n, 1.0)
        scale = jnp.sqrt(jnp.maximum(n - 1.0, 1.0))
        # columns: members; zero for the failed ones
        obs_anomalies = jnp.where(success[:, None], problem.whiten(safe - output_mean), 0.0).T / scale  # (p, J)
        residuals = jnp.where(success[:, None], problem.whiten(safe - problem.y) - perturbations, 0.0)  # (J, p)
        weights = state.weights
        root = jnp.sqrt(jnp.asarray(size - 1, dtype))
        identity = jnp.eye(size, dtype=dtype)

        def all_succeeded(_):
            centring = identity - jnp.full((size, size), 1.0 / size, dtype)
            omega = identity + weights @ centring / root
            return jnp.linalg.solve(omega.T, obs_anomalies.T).T  # S = Y Omega^{-1}

        def some_failed(_):
            # anomalies over the successful members: A_0 (sqrt(J - 1) I + W) Pi_s / sqrt(n - 1)
            centring = jnp.diag(weights_mask) - jnp.outer(weights_mask, weights_mask) / jnp.maximum(n, 1.0)
            omega = (root * identity + weights) @ centring / scale
            return obs_anomalies @ jnp.linalg.pinv(omega)

        sensitivity = jax.lax.cond(jnp.all(success), all_succeeded, some_failed, None)  # (p, J)
        normal = identity + sensitivity.T @ sensitivity
        gradient = weights + sensitivity.T @ residuals.T  # (J, J): column j the gradient of member j
        step = jnp.linalg.solve(normal, gradient)
        beta = self.step_size.astype(dtype)
        moved = jnp.where(success[None, :] & enough, weights - beta * step, weights)
        prior_anomalies = (state.prior_members - state.prior_members.mean(axis=0)) / root  # (J, d): rows
        members = state.prior_members + moved.T @ prior_anomalies
        data_residual = jnp.where(success[:, None], problem.whiten(problem.y - safe), 0.0)
        misfit = jnp.sum((weights_mask @ data_residual / jnp.maximum(n, 1.0)) ** 2)
        return EnRMLState(
            members=members, bounds=state.bounds, time=state.time + jnp.where(enough, beta, 0.0),
            iteration=state.iteration + enough.astype(jnp.int32), misfit=jnp.zeros((), problem.dtype) + misfit,
            failures=codes, step_size=jnp.where(enough, beta, jnp.nan).astype(problem.dtype),
            prior_members=state.prior_members, weights=moved, perturbations=perturbations,
        )


__all__ = ["EnRML", "EnRMLState"]
