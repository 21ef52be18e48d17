"""Unscented Kalman inversion (UKI; Huang, Schneider & Stuart 2022).

UKI solves y = G(u) + eta, eta ~ N(0, Gamma), by filtering the artificial
dynamical system

    u_{n+1} = r + alpha (u_n - r) + omega_{n+1},   omega ~ N(0, Sigma_omega),
    y       = G(u_{n+1}) + nu_{n+1},               nu    ~ N(0, Sigma_nu),

with the unscented Kalman filter, keeping a Gaussian N(m_n, C_n) of the
unconstrained parameters. One iteration is

    prediction:  m^ = r + alpha (m_n - r),   C^ = alpha^2 C_n + Sigma_omega
    sigma points (modified unscented transform, 2d + 1 points):
                 u^_0 = m^,  u^_j = m^ + c [sqrt C^]_j,  u^_{j+d} = m^ - c [sqrt C^]_j  (j = 1..d)
    analysis:    y^_j = G(u^_j),  y^ = y^_0 (the modified transform's mean is G(m^))
                 C^{uy} = sum_{j>=1} W_j (u^_j - m^)(y^_j - y^)^T
                 C^{yy} = sum_{j>=1} W_j (y^_j - y^)(y^_j - y^)^T + Sigma_nu
                 m_{n+1} = m^ + C^{uy} (C^{yy})^{-1} (y - y^)
                 C_{n+1} = C^ - C^{uy} (C^{yy})^{-1} (C^{uy})^T

with sqrt C^ the lower Cholesky factor. The modified unscented transform
(Huang, Schneider & Stuart 2022, Sec. 3; EnsembleKalmanProcesses.jl's
`Unscented`) takes kappa = 0, beta = 2, a = min(sqrt(4 / d), 1),
lambda = a^2 d - d, so

    c = sqrt(d + lambda) = sqrt(min(d, 4)),    W_j = 1 / (2 (d + lambda)) = 1 / (2 min(d, 4))  (j >= 1),

and replaces the mean weights by (1, 0, ..., 0): the predicted data is G(m^).
The centre's covariance weight lambda / (d + lambda) + 1 - a^2 + beta
multiplies u^_0 - m^ = 0 and y^_0 - y^ = 0, so it never enters.

Hyperparameters (the paper's choices, also EnsembleKalmanProcesses.jl's):
r = m_0 (the prior mean), Sigma_nu = 2 Gamma and Sigma_omega = (2 - alpha^2) Lambda
with Lambda = C_0 (fixed) or Lambda = C_n (updated every iteration).

With `impose_prior` the prior is appended to the data (Tikhonov form;
Chada, Stuart & Tong 2020; Huang et al. 2022): y <- [y, m_0], G(u) <- [G(u), u],
Gamma <- diag(Gamma, C_0). With alpha = 1, Sigma_nu = 2 Gamma_aug and
Sigma_omega = C_n (so C^ = 2 C_n) the iteration's fixed point for a linear G is
the exact posterior: C_inf^{-1} = H^T Gamma^{-1} H + C_0^{-1}.

Computation, in whitened form (Gamma = L L^T, C_0 = L_0 L_0^T; the augmented
data are whitened block by block, so nothing p x p is formed):

    A = sqrt(W) (u^_j - m^)_{j>=1}                      (2d, d)   A^T A = C^
    S = sqrt(W) L_aug^{-1} (y^_j - y^)_{j>=1}           (2d, q)   q = p (+ d with the prior)
    r = L_aug^{-1} (y_aug - y^_aug)                     (q,)
    M = S S^T + s I_{2d} = R_M R_M^T,   X = R_M^{-1} A   (Sigma_nu = s Gamma_aug)
    m_{n+1} = m^ + X^T R_M^{-1} S r,    C_{n+1} = s X^T X

(Woodbury / push-through: C^{uy} (C^{yy})^{-1} = A^T (S S^T + s I)^{-1} S L_aug^{-1}).
The next prediction's Cholesky factor is formed from the square-root factor
sqrt(s) X (and L_0) by a QR decomposition (`linalg.tria`), never from C_{n+1},
so it stays positive semi-definite in float32. Cost per iteration:
O(d^2 q + d^3); memory O(d (d + q)).
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import _checks
from ..linalg import solve_lower, symmetrize, tria
from .base import AbstractInversion, checked_outputs_and_failures
from .constraints import Bounds
from .problem import InverseProblem


class UKIState(eqx.Module):
    """The state of UKI: the Gaussian N(mean, cov) of u and the sigma points of the next prediction.

    Attributes:
        mean: (d,) m_n, the analysis mean of the unconstrained parameters.
        cov: (d, d) C_n, their analysis covariance.
        sigma_points: (2d + 1, d) unconstrained sigma points of the prediction from
            (m_n, C_n), centre first (what `evaluation_points` returns).
        bounds: the problem's `Bounds` (so that `ask(state)` returns physical parameters).
        time: t_n; UKI takes unit steps, so t_n = n.
        iteration: n, the number of updates so far.
        misfit: |L^{-1}(y - G(m^))|^2 of the outputs told last (NaN before the first tell).
        failures: (2d + 1,) failure codes of the sigma points told last (0: success).
        step_size: 1.0 after an update, NaN before the first or after a refused one.
    """

    mean: Float[Array, " d"]
    cov: Float[Array, "d d"]
    sigma_points: Float[Array, "n d"]
    bounds: Bounds
    time: Float[Array, ""]
    iteration: Int[Array, ""]
    misfit: Float[Array, ""]
    failures: Int[Array, " n"]
    step_size: Float[Array, ""]

    @property
    def size(self) -> int:
        """The number of sigma points, 2d + 1."""
        return self.sigma_points.shape[0]

    @property
    def members(self) -> Float[Array, "n d"]:
        """The unconstrained sigma points (alias of `sigma_points`)."""
        return self.sigma_points

    @property
    def ensemble(self) -> Float[Array, "n d"]:
        """The sigma points in physical space, theta_j = T(u_j) (what `ask` returns)."""
        return self.bounds.constrain(self.sigma_points)


def unscented_weights(d: int) -> tuple[float, float]:
    """(c, W) of the modified unscented transform for d parameters: c = sqrt(min(d, 4)), W = 1 / (2 min(d, 4)).

    From kappa = 0, a = min(sqrt(4 / d), 1), lambda = a^2 d - d: c = sqrt(d + lambda),
    W_j = 1 / (2 (d + lambda)) for the 2d outer points (Huang, Schneider & Stuart 2022).
    """
    spread = float(min(d, 4))
    return math.sqrt(spread), 1.0 / (2.0 * spread)


def _is_concrete_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and _checks.is_concrete(value) and np.ndim(value) == 0


class UKI(AbstractInversion):
    """Unscented Kalman inversion: a Gaussian N(m_n, C_n) of u moved by 2d + 1 forward runs per iteration.

    Deterministic (no key), derivative-free, d x d covariance: for parameter
    dimensions up to a few hundred. See the module docstring for the equations.

    Attributes:
        alpha: regularisation alpha in (0, 1]: the prediction pulls the mean towards
            r = m_0, m^ = m_0 + alpha (m_n - m_0) (default 1.0, no pull; traced).
        impose_prior: append the prior to the data, y <- [y, m_0], G(u) <- [G(u), u],
            Gamma <- diag(Gamma, C_0) (default True; static).
        update_evolution: Sigma_omega = evolution_scale * C_n (True) or
            evolution_scale * C_0 (False); default (None): True with the prior imposed,
            False without (static).
        evolution_scale: gamma in Sigma_omega = gamma Lambda; default (None) 2 - alpha^2
            (traced).
        observation_inflation: s in Sigma_nu = s Gamma (s Gamma_aug with the prior
            imposed); default 2.0 (traced).

    The defaults are the paper's choice with the prior imposed: alpha = 1,
    Sigma_nu = 2 Gamma_aug, Sigma_omega = C_n; for a linear G the iteration
    converges (geometrically, about a factor 2 an iteration) to the exact
    posterior. `UKI(alpha=a, impose_prior=False)` is the paper's original form,
    Sigma_omega = (2 - a^2) C_0, r = m_0, Sigma_nu = 2 Gamma.

    Example:
        >>> uki = UKI()
        >>> result = kx.invert(problem, uki, None, n_steps=30)
        >>> mean, cov = result.state.mean, result.state.cov

    Reference: D. Z. Huang, T. Schneider, A. M. Stuart (2022), "Iterated Kalman
    methodology for inverse problems", J. Comput. Phys. 463:111262.
    """

    needs_key: ClassVar[bool] = False
    success_requirement: ClassVar[str] = "every sigma point must succeed to update (a failed one cannot be redrawn)"

    alpha: Float[Array, ""] | float = 1.0
    impose_prior: bool = eqx.field(static=True, default=True)
    update_evolution: bool | None = eqx.field(static=True, default=None)
    evolution_scale: Float[Array, ""] | float | None = None
    observation_inflation: Float[Array, ""] | float = 2.0

    def __check_init__(self):
        if not isinstance(self.impose_prior, bool):
            raise TypeError(f"`impose_prior` must be a bool; got {type(self.impose_prior).__name__}")
        if self.update_evolution is not None and not isinstance(self.update_evolution, bool):
            raise TypeError(f"`update_evolution` must be a bool or None; got {type(self.update_evolution).__name__}")
        if _is_concrete_number(self.alpha) and not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(
                f"`alpha` must lie in (0, 1] (regularisation towards the prior mean); got {float(self.alpha)}"
            )
        if _is_concrete_number(self.observation_inflation) and not float(self.observation_inflation) > 0.0:
            raise ValueError(
                "`observation_inflation` (s in Sigma_nu = s Gamma) must be positive; "
                f"got {float(self.observation_inflation)}"
            )
        if _is_concrete_number(self.evolution_scale) and not float(self.evolution_scale) >= 0.0:
            raise ValueError(
                "`evolution_scale` (gamma in Sigma_omega = gamma Lambda) must be non-negative; "
                f"got {float(self.evolution_scale)}"
            )

    @property
    def updates_evolution(self) -> bool:
        """Whether Sigma_omega follows C_n (True) or stays at C_0 (False)."""
        return self.impose_prior if self.update_evolution is None else self.update_evolution

    # --- the contract -------------------------------------------------------------------------

    def n_points(self, problem: InverseProblem) -> int:
        return 2 * problem.parameter_dim + 1

    def enough_successes(self, failures) -> jax.Array:
        """Every sigma point must succeed: a failed sigma point cannot be redrawn."""
        return jnp.all(failures == 0)

    def init(self, problem: InverseProblem, key=None, members=None, *, mean=None, cov=None) -> UKIState:
        """The Gaussian N(m_0, C_0) of the prior (or N(mean, cov)) and its prediction's sigma points.

        Args:
            problem: the `InverseProblem`.
            key: unused (UKI is deterministic); accepted for the common signature.
            members: not supported (UKI has no ensemble to start from); pass `mean`, `cov`.
            mean: optional (d,) initial mean of u (default: the prior mean).
            cov: optional (d, d) positive-definite initial covariance of u (default: the prior's).
        """
        _check_problem(problem)
        if members is not None:
            raise ValueError("UKI has no ensemble members to start from: pass `mean=` and `cov=` instead of `members`")
        d, dtype = problem.parameter_dim, problem.dtype
        if mean is None:
            mean = problem.prior.mean
        else:
            mean = _checks.as_float_array("mean", mean)
            _checks.check_shape("mean", mean, (d,), "(the parameter dimension)")
            mean = mean.astype(dtype)
        if cov is None:
            cov = problem.prior.cov.matrix().astype(dtype)
            root = problem.prior.cov.sqrt_mv(jnp.eye(d, dtype=dtype)).T  # rows B with B^T B = C_0
        else:
            cov = _checks.as_float_array("cov", cov)
            _checks.check_covariance("cov", cov, d, "(the parameter dimension)")
            cov = cov.astype(dtype)
            root = jnp.linalg.cholesky(cov).T
        n = 2 * d + 1
        return UKIState(
            mean=mean,
            cov=cov,
            sigma_points=self._predict(problem, mean, root),
            bounds=problem.prior.bounds,
            time=jnp.zeros((), dtype),
            iteration=jnp.zeros((), jnp.int32),
            misfit=jnp.full((), jnp.nan, dtype),
            failures=jnp.zeros((n,), jnp.int32),
            step_size=jnp.full((), jnp.nan, dtype),
        )

    def ask(self, state: UKIState) -> Float[Array, "n d"]:
        """The (2d + 1, d) sigma points in physical space, centre first."""
        return state.ensemble

    def evaluation_points(self, state: UKIState) -> Float[Array, "n d"]:
        return state.sigma_points

    def summary(self, state: UKIState):
        """(m_n, diag C_n, T(m_n))."""
        return state.mean, jnp.diagonal(state.cov), state.bounds.constrain(state.mean)

    def data_misfit(self, problem: InverseProblem, outputs, success) -> Float[Array, ""]:
        """|L^{-1}(y - G(m^))|^2: the modified unscented mean is the centre's output (NaN if it failed)."""
        centre = jnp.where(success[0], outputs[0], 0.0)
        misfit = jnp.sum(problem.whiten((problem.y - centre)[None, :]) ** 2)
        return jnp.where(success[0], misfit, jnp.nan)

    def tell(self, problem: InverseProblem, state: UKIState, outputs, key=None, failures=None) -> UKIState:
        """One analysis with the (2d + 1, p) forward runs of the sigma points from `ask`, then the next prediction.

        If any sigma point failed (non-finite output, the problem's `failed_if`, or a
        non-zero code in `failures`), mean, covariance, sigma points, time and
        iteration are kept; `failures`, `misfit` and `step_size` (NaN) record the refusal.

        Args:
            problem: the `InverseProblem`.
            state: the `UKIState` whose sigma points were evaluated.
            outputs: (2d + 1, p) forward outputs G(theta_j), in the order of `ask`.
            key: unused (UKI is deterministic).
            failures: optional (2d + 1,) codes of runs known to have failed (0: success).
        """
        _check_problem(problem)
        if not isinstance(state, UKIState):
            raise TypeError(f"`state` must be a UKIState (from UKI.init); got {type(state).__name__}")
        d = problem.parameter_dim
        n = 2 * d + 1
        if state.mean.shape != (d,) or state.sigma_points.shape != (n, d):
            raise ValueError(
                f"`state` must hold a ({d},) mean and ({n}, {d}) sigma points for this problem; got "
                f"{tuple(state.mean.shape)} and {tuple(state.sigma_points.shape)} (was it made for another problem?)"
            )
        outputs, codes = checked_outputs_and_failures(problem, outputs, failures, n, " (one code a sigma point)")
        success = codes == 0
        ok = jnp.all(success)
        safe = jnp.where(success[:, None], outputs, 0.0)

        mean, root = self._analysis(problem, state.sigma_points, safe)
        cov = symmetrize(root.T @ root)
        points = self._predict(problem, mean, root)
        dtype = problem.dtype
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        return UKIState(
            mean=keep(mean, state.mean),
            cov=keep(cov, state.cov),
            sigma_points=keep(points, state.sigma_points),
            bounds=state.bounds,
            time=state.time + jnp.where(ok, 1.0, 0.0).astype(dtype),
            iteration=state.iteration + ok.astype(jnp.int32),
            misfit=jnp.zeros((), dtype) + self.data_misfit(problem, outputs, success),
            failures=codes,
            step_size=jnp.where(ok, 1.0, jnp.nan).astype(dtype),
        )

    # --- the algebra --------------------------------------------------------------------------

    def _analysis(self, problem: InverseProblem, points, outputs):
        """(m_{n+1}, B) with B^T B = C_{n+1}, B = sqrt(s) X of shape (2d, d)."""
        dtype = problem.dtype
        d = problem.parameter_dim
        _, weight = unscented_weights(d)
        root_weight = math.sqrt(weight)
        centre = points[0]
        anomalies = root_weight * (points[1:] - centre)  # A, (2d, d)
        S = root_weight * problem.whiten(outputs[1:] - outputs[0])  # (2d, p)
        r = problem.whiten((problem.y - outputs[0])[None, :])[0]
        if self.impose_prior:
            S = jnp.concatenate([S, problem.prior_whiten(anomalies)], axis=1)
            r = jnp.concatenate([r, problem.prior_whiten((problem.prior.mean - centre)[None, :])[0]])
        s = jnp.asarray(self.observation_inflation).astype(dtype)
        chol = jnp.linalg.cholesky(S @ S.T + s * jnp.eye(2 * d, dtype=dtype))
        X = solve_lower(chol, anomalies)
        mean = centre + X.T @ solve_lower(chol, S @ r)
        return mean, jnp.sqrt(s) * X

    def _predict(self, problem: InverseProblem, mean, root):
        """Sigma points [m^, m^ + c L^_j, m^ - c L^_j] of N(m^, C^) from rows `root` with root^T root = C_n."""
        dtype = problem.dtype
        d = problem.parameter_dim
        alpha = jnp.asarray(self.alpha).astype(dtype)
        gamma = 2.0 - alpha**2 if self.evolution_scale is None else jnp.asarray(self.evolution_scale).astype(dtype)
        prior_mean = problem.prior.mean
        centre = prior_mean + alpha * (mean - prior_mean)
        if self.updates_evolution:  # C^ = (alpha^2 + gamma) C_n
            chol = jnp.sqrt(alpha**2 + gamma) * tria(root.T)
        else:  # C^ = alpha^2 C_n + gamma C_0
            prior_root = problem.prior.cov.sqrt_mv(jnp.eye(d, dtype=dtype))
            chol = tria(jnp.concatenate([alpha * root.T, jnp.sqrt(gamma) * prior_root], axis=1))
        c, _ = unscented_weights(d)
        offsets = c * chol.T  # row j: c times column j of the Cholesky factor
        return jnp.concatenate([centre[None, :], centre + offsets, centre - offsets], axis=0)


def _check_problem(problem) -> None:
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"`problem` must be a kalmax InverseProblem; got {type(problem).__name__}")
