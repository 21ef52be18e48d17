"""The finite-size ensemble Kalman filter EnKF-N, in its dual form.

The EnKF-N (Bocquet 2011; Bocquet, Raanes & Hannart 2015) treats the forecast
ensemble as a finite sample: the prior mean and covariance of the truth are
unknown and integrated out under a Jeffreys hyper-prior, so the filter infers
an inflation of the forecast anomalies at every cycle instead of being given a
tuned one. In the dual form (DAPPER's `EnKF_N(dual=True)`) that inflation is
the minimiser of a scalar cost.

Notation as in `kalmax.filters.enkf`: J members, N1 = J - 1, whitened observed
anomalies S_Y (J, p) and innovation dy (p,) (zero where missing). With l1 the
anomaly inflation (prior covariance times l1^2), the dual cost is (DAPPER's
normalisation)

    D(l1) = dy^T (l1^2 S_Y^T S_Y + N1 I_p)^{-1} dy + eN / l1^2 + cL log l1^2.

Everything is computed with the smaller Gram matrix, r x r with r = min(J, p):
G0 = S_Y S_Y^T (J x J; the quadratic term is then, by Woodbury,
(|dy|^2 - l1^2 c^T (l1^2 G0 + N1 I_J)^{-1} c) / N1 with c = S_Y dy) or, when
p < J, K = S_Y^T S_Y (p x p). The hyper-prior coefficients are (DAPPER's
`hyperprior_coeffs`, after eq. 36 of Bocquet, Raanes & Hannart 2015)

    eN = (J + 1) / J,   cL = (J + g) / N1,   m = eN / cL   (the prior mode of l1^2),
    I_KH = N1 / J * tr((G0 + N1 I_J)^{-1})   (about the prior's weight, 1 / (1 + HBH^T/R)),
    mc = sqrt(m ** I_KH),   eN <- xN * eN / mc,   cL <- xN * cL * mc,

where `g` counts gauge degrees of freedom of the anomalies and `xN` scales the
confidence in the hyper-prior (xN = 1: fully agnostic, for chaotic or stochastic
models; xN > 1 for more linear or deterministic ones). The mode correction
makes l1 = 1 exactly when nothing is observed.

With the minimiser l1, the analysis is the ETKF of the inflated anomalies
A_l = l1 A, S_l = l1 S_Y (DAPPER's `Hess=False`):

    M = l1^2 G0 + N1 I_J,   w = l1 M^{-1} S_Y dy,   T = sqrt(N1) M^{-1/2},
    E_a = x + (w + T) A_l

(in observation space through the push-through identity, see `_transform`).

Minimisation. Write t = log l1^2, phi(t) = D(e^{t/2}), and let lambda_i be the
eigenvalues of G0 and b_i the components of S_Y dy on its eigenvectors, so that
phi(t) = const - sum_i b_i^2 x / (N1 (x lambda_i + N1)) + eN / x + cL t with
x = e^t. Every stationary point lies in [t_lo, t_hi] with t_lo = log(eN / cL)
(phi' < 0 below) and t_hi = log((eN + sum_i b_i^2 / lambda_i^2) / cL) (phi' > 0
above); t_hi is capped at t_lo + log(1e8), i.e. an inflation of at most 1e4
times sqrt(eN / cL). The dual cost can have several local minima (an innovation
large along a weakly spread direction); DAPPER's Newton iteration from l1 = 1
stops at the nearest one, while here phi is evaluated on a fixed grid of 64
points of [t_lo, t_hi] (O(64 r) with the eigenvalues) to find the global
minimum's basin, and `n_iterations` safeguarded Newton steps on phi' (a Newton
step inside the current sign bracket, bisection otherwise) polish it, all with a
fixed iteration count inside jit. The minimiser runs on stop-gradient inputs;
gradients flow through the implicit function theorem,
dt = -(d phi'/d theta) / phi'', with phi' evaluated by a Cholesky factorisation
(no eigenvector derivatives, which do not exist at the repeated eigenvalues of
G0 when p < J).

The per-cycle log-likelihood is the Gaussian approximation with the inflated
ensemble innovation covariance, log N(y; y_hat, l1^2 Y^T Y / N1 + Gamma).

References:
    Bocquet, M. (2011). Ensemble Kalman filtering without the intrinsic need for
    inflation. Nonlinear Processes in Geophysics 18, 735-750.
    Bocquet, M., Raanes, P. N. & Hannart, A. (2015). Expanding the validity of the
    ensemble Kalman filter without the intrinsic need for inflation. Nonlinear
    Processes in Geophysics 22, 645-662.
    DAPPER, `dapper.da_methods.ensemble.EnKF_N` (Raanes et al.).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .. import _checks
from ..ensemble.inflation import AbstractInflation, as_inflation
from ..gaussian import Ensemble
from ..linalg import cho_solve, logdet_from_chol, solve_lower, sym_inv_sqrt, symmetrize
from ..ensemble.algebra import EnsembleSpace, ensemble_space, use_observation_space
from .ensemble_base import AbstractEnsembleFilter, finish_analysis, member_model

_GRID_POINTS = 64
_MAX_LOG_RANGE = math.log(1e8)  # t = log l1^2 spans at most 8 decades above t_lo


class EnKFNInfo(eqx.Module):
    """Per-cycle diagnostics of an EnKF-N analysis (`EnsembleInfo` plus the inflation).

    Attributes:
        log_likelihood: Gaussian approximation of log p(y_{n+1} | y_{1:n}) with the
            adaptively inflated ensemble innovation covariance l1^2 Y^T Y / (J - 1) + Gamma.
        n_observed: number of non-missing entries of y_{n+1}.
        spread: sqrt(mean_i var_i) of the analysis ensemble (ddof = 1).
        status: result code (0 success, 2 non-finite member, 3 collapsed ensemble).
        inflation: the anomaly inflation l1 the dual cost chose (covariance times l1^2);
            DAPPER's `stats.infl`.
        nis: normalised innovation squared with the inflated innovation covariance
            (see `KalmanInfo`).
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    spread: Float[Array, ""]
    status: Int[Array, ""]
    inflation: Float[Array, ""]
    nis: Float[Array, ""]


class DualProblem(eqx.Module):
    """The scalar dual problem of one EnKF-N analysis.

    Everything is computed with the smaller of the two Gram matrices: the J x J
    G0 = S_Y S_Y^T (ensemble space) or, when p < J, the p x p K = S_Y^T S_Y
    (observation space), which share their nonzero eigenvalues; the push-through
    identity (x G0 + N1 I_J)^{-1} S_Y = S_Y (x K + N1 I_p)^{-1} moves between them.

    Attributes:
        obs_anomalies: whitened observed anomalies S_Y (J, p) (zero where missing).
        innovation: whitened innovation dy (p,) (zero where missing).
        eN, cL: the hyper-prior coefficients (after mode correction and xN).
        observation_space: work with K (p x p) rather than G0 (J x J) (static).
    """

    obs_anomalies: Float[Array, "J p"]
    innovation: Float[Array, " p"]
    eN: Float[Array, ""]
    cL: Float[Array, ""]
    observation_space: bool = eqx.field(static=True)

    @property
    def ridge(self) -> int:
        return self.obs_anomalies.shape[0] - 1

    def gram(self) -> Float[Array, "r r"]:
        """K = S_Y^T S_Y (observation space) or G0 = S_Y S_Y^T (ensemble space)."""
        s = self.obs_anomalies
        return s.T @ s if self.observation_space else s @ s.T

    def rhs(self) -> Float[Array, " r"]:
        """dy (observation space) or c = S_Y dy (ensemble space)."""
        return self.innovation if self.observation_space else self.obs_anomalies @ self.innovation

    def chol(self, x) -> Float[Array, "r r"]:
        """Cholesky factor of x K + N1 I_p or x G0 + N1 I_J."""
        gram = self.gram()
        return jnp.linalg.cholesky(x * gram + self.ridge * jnp.eye(gram.shape[0], dtype=gram.dtype))

    def quadratic(self, x, chol) -> Float[Array, ""]:
        """dy^T (x S_Y^T S_Y + N1 I_p)^{-1} dy, given `chol` = self.chol(x)."""
        rhs = self.rhs()
        solved = cho_solve(chol, rhs)
        if self.observation_space:
            return rhs @ solved
        return (self.innovation @ self.innovation - x * (rhs @ solved)) / self.ridge

    def cost(self, l1) -> Float[Array, ""]:
        """D(l1) = dy^T (l1^2 S_Y^T S_Y + N1 I)^{-1} dy + eN / l1^2 + cL log l1^2.

        (DAPPER's `J(l1)` keeps only the part of dy in the row space of S_Y when
        p > J; the two differ by a constant.)
        """
        x = jnp.asarray(l1, self.obs_anomalies.dtype) ** 2
        return self.quadratic(x, self.chol(x)) + self.eN / x + self.cL * jnp.log(x)

    def slope(self, t) -> Float[Array, ""]:
        """phi'(t) = dD/dt at t = log l1^2: cL - eN / x - x |z|^2 with
        z = (x G0 + N1 I)^{-1} S_Y dy (differentiable; one Cholesky factorisation)."""
        x = jnp.exp(t)
        solved = cho_solve(self.chol(x), self.rhs())
        if self.observation_space:
            z_sq = solved @ (self.gram() @ solved)
        else:
            z_sq = solved @ solved
        return self.cL - self.eN / x - x * z_sq

    def spectrum(self):
        """(lambda, b^2): eigenvalues of the Gram matrix and squared components of
        S_Y dy on the corresponding ensemble-space eigenvectors."""
        eigvals, eigvecs = jnp.linalg.eigh(self.gram())
        eigvals = jnp.maximum(eigvals, 0.0)
        projected = eigvecs.T @ self.rhs()
        # observation space: v_i = S_Y u_i / s_i, so v_i^T S_Y dy = s_i u_i^T dy
        b2 = eigvals * projected**2 if self.observation_space else projected**2
        return eigvals, b2


def hyperprior_coefficients(chol_unit, size: int, xN, g: int):
    """(eN, cL): DAPPER's `hyperprior_coeffs`, from the Cholesky factor of the r x r
    Gram matrix plus N1 I at unit inflation (`DualProblem.chol(1)`).

    I_KH = N1 / J * tr((G0 + N1 I_J)^{-1}) = N1 / J * (|L^{-1}|_F^2 + (J - r) / N1),
    the J - r missing eigenvalues of the smaller Gram matrix being zero; it is
    differentiable without an eigendecomposition.
    """
    dtype = chol_unit.dtype
    rank = chol_unit.shape[0]
    n1 = size - 1
    e_n = (size + 1) / size
    c_l = (size + g) / n1
    inv_chol = solve_lower(chol_unit, jnp.eye(rank, dtype=dtype))
    trace = jnp.sum(inv_chol**2) + (size - rank) / n1
    prior_weight = n1 / size * trace
    correction = jnp.sqrt(jnp.asarray(e_n / c_l, dtype) ** prior_weight)
    xN = jnp.asarray(xN).astype(dtype)
    return xN * e_n / correction, xN * c_l * correction


def dual_problem(space: EnsembleSpace, xN, g: int, observation_space: bool | None = None):
    """(the `DualProblem` of an ensemble-space analysis, the Cholesky factor at unit inflation).

    Args:
        space: `ensemble_space`'s output (only its whitened S_Y and dy are used).
        xN, g: the hyper-prior's confidence and gauge degrees of freedom.
        observation_space: use the p x p Gram matrix; default (None): when p < J.
    """
    size, p = space.obs_anomalies.shape
    obs_space = use_observation_space(size, p) if observation_space is None else bool(observation_space)
    dtype = space.obs_anomalies.dtype
    problem = DualProblem(
        obs_anomalies=space.obs_anomalies,
        innovation=space.innovation,
        eN=jnp.zeros((), dtype),
        cL=jnp.zeros((), dtype),
        observation_space=obs_space,
    )
    chol_unit = problem.chol(1.0)
    e_n, c_l = hyperprior_coefficients(chol_unit, size, xN, g)
    return eqx.tree_at(lambda d: (d.eN, d.cL), problem, (e_n, c_l)), chol_unit


def _minimise(problem: DualProblem, n_iterations: int):
    """(t, phi''(t)) at the minimiser t = log l1^2 of the dual cost (no gradients).

    Grid search over [t_lo, t_hi] for the global basin, then safeguarded Newton.
    """
    problem = jax.lax.stop_gradient(problem)
    dtype = problem.obs_anomalies.dtype
    n1 = problem.ridge
    eigvals, b2 = problem.spectrum()
    e_n, c_l = problem.eN, problem.cL

    t_lo = jnp.log(e_n / c_l)
    # beyond x = (eN + sum b^2 / lambda^2) / cL the slope phi' is positive
    tiny = jnp.finfo(dtype).eps * jnp.maximum(jnp.max(eigvals), 1.0) * eigvals.shape[0]
    ratio = jnp.where(eigvals > tiny, b2 / jnp.where(eigvals > tiny, eigvals, 1.0) ** 2, 0.0)
    t_bound = jnp.log((e_n + jnp.sum(ratio)) / c_l)
    t_hi = t_lo + jnp.clip(t_bound - t_lo, math.log(2.0), _MAX_LOG_RANGE)

    def cost(t):  # phi(t) up to the constant |dy|^2 / N1
        x = jnp.exp(t)
        return -jnp.sum(b2 * x / (x * eigvals + n1)) / n1 + e_n / x + c_l * t

    def derivatives(t):
        x = jnp.exp(t)
        denom = x * eigvals + n1
        slope = c_l - e_n / x - jnp.sum(b2 * x / denom**2)
        curvature = e_n / x - jnp.sum(b2 * x * (n1 - x * eigvals) / denom**3)
        return slope, curvature

    grid = t_lo + (t_hi - t_lo) * jnp.linspace(0.0, 1.0, _GRID_POINTS, dtype=dtype)
    best = jnp.argmin(jax.vmap(cost)(grid))
    lower = grid[jnp.maximum(best - 1, 0)]
    upper = grid[jnp.minimum(best + 1, _GRID_POINTS - 1)]

    def newton(_, carry):
        t, lower, upper = carry
        slope, curvature = derivatives(t)
        lower = jnp.where(slope < 0, t, lower)
        upper = jnp.where(slope > 0, t, upper)
        step = t - slope / jnp.where(curvature > 0, curvature, 1.0)
        accept = (curvature > 0) & (step >= lower) & (step <= upper) & jnp.isfinite(step)
        return jnp.where(accept, step, 0.5 * (lower + upper)), lower, upper

    t, _, _ = jax.lax.fori_loop(0, n_iterations, newton, (grid[best], lower, upper))
    return t, derivatives(t)[1]


def adaptive_inflation(problem: DualProblem, n_iterations: int = 30) -> Float[Array, ""]:
    """l1 = argmin D(l1), the EnKF-N anomaly inflation; differentiable (implicit function theorem).

    The value is the minimiser's; its derivative is -(d phi'/d theta) / phi'' at the
    minimum (zero where the minimum is not interior, phi'' <= 0).
    """
    t_star, curvature = _minimise(problem, n_iterations)
    # phi'(t*; theta) - stop_gradient(...) is zero in value and carries d phi'/d theta
    slope = problem.slope(t_star)
    slope = slope - jax.lax.stop_gradient(slope)
    safe = jnp.where(curvature > 0, curvature, 1.0)
    t = t_star - jnp.where(curvature > 0, slope / safe, 0.0)
    return jnp.exp(0.5 * t)


def _transform(problem: DualProblem, space: EnsembleSpace, l1, chol) -> Float[Array, "J d"]:
    """The ETKF of the inflated anomalies l1 A, l1 S_Y: E_a = x + (w + T) l1 A.

    Ensemble space: M = l1^2 G0 + N1 I_J, w = l1 M^{-1} S_Y dy, T = sqrt(N1) M^{-1/2}.
    Observation space (p < J), by push-through: M_p = l1^2 K + N1 I_p,
    w = l1 S_Y M_p^{-1} dy and T = I + l1^2 S_Y F S_Y^T with
    F = -M_p^{-1/2} (M_p^{1/2} + sqrt(N1) I)^{-1}, the matrix function
    f(l) = (sqrt(N1 / (N1 + l)) - 1) / l of l1^2 K. `chol` is `problem.chol(l1^2)`.
    """
    dtype = space.anomalies.dtype
    x = l1**2
    n1 = jnp.asarray(problem.ridge, dtype)
    gram = problem.gram()
    eye = jnp.eye(gram.shape[0], dtype=dtype)
    matrix = x * gram + n1 * eye
    solved = cho_solve(chol, problem.rhs())
    anomalies = l1 * space.anomalies
    if not problem.observation_space:
        weights = l1 * solved
        transformed = jnp.sqrt(n1) * (sym_inv_sqrt(matrix) @ anomalies)
    else:
        obs = space.obs_anomalies
        weights = l1 * (obs @ solved)
        inv_root = sym_inv_sqrt(matrix)
        root = symmetrize(matrix @ inv_root)
        middle = -inv_root @ cho_solve(jnp.linalg.cholesky(root + jnp.sqrt(n1) * eye), eye)
        transformed = anomalies + x * (obs @ (symmetrize(middle) @ (obs.T @ anomalies)))
    return space.mean[None, :] + weights @ anomalies + transformed


class EnKFN(AbstractEnsembleFilter):
    """Finite-size ensemble Kalman filter (EnKF-N), dual form: no tuned inflation.

    Each analysis chooses the anomaly inflation l1 that minimises the EnKF-N dual
    cost (module docstring; Bocquet 2011; Bocquet, Raanes & Hannart 2015; DAPPER's
    `EnKF_N(dual=True, Hess=False)`), then applies the symmetric square-root ETKF
    update to the inflated forecast anomalies l1 A.

    Args:
        ensemble_size: number of members J >= 2 (static).
        xN: confidence in the inflation hyper-prior, > 0 (a traced leaf; 1 is the
            agnostic default, 2 suits more linear or deterministic models).
        g: number of gauge degrees of freedom of the anomalies (static int >= 0;
            DAPPER's default 0).
        rotate: apply a random mean-preserving rotation to the analysis anomalies
            (DAPPER's `rot=True`).
        inflation: optional extra inflation Module (or number) applied around the
            analysis exactly as in `EnKF` (`prior` before, `posterior` after); None
            by default, as the EnKF-N needs none without model error.
        n_iterations: safeguarded Newton iterations of the dual minimiser after the
            64-point grid search (static).

    The state is an `Ensemble` (members (J, d)); the info an `EnKFNInfo` whose
    `inflation` is l1. Missing observations (NaN entries of y) carry no
    information, as in `EnKF`; with nothing observed l1 = 1 and the ensemble is
    unchanged.

    Example:
        >>> from kalmax.presets import lorenz96_sakov2008
        >>> setup = lorenz96_sakov2008(10_000)
        >>> flt = kx.EnKFN(24, rotate=True)
        >>> result = kx.twin_experiment(setup.model, flt, setup.n_cycles, jax.random.key(0),
        ...                             burn_in=setup.burn_in)
    """

    ensemble_size: int = eqx.field(static=True)
    xN: Float[Array, ""]
    g: int = eqx.field(static=True)
    rotate: bool = eqx.field(static=True)
    inflation: AbstractInflation
    n_iterations: int = eqx.field(static=True)

    def __init__(self, ensemble_size: int, xN=1.0, g: int = 0, rotate: bool = False, inflation=None,
                 n_iterations: int = 30):
        if isinstance(ensemble_size, bool) or int(ensemble_size) != ensemble_size or int(ensemble_size) < 2:
            raise ValueError(f"`ensemble_size` must be an integer >= 2; got {ensemble_size}")
        self.ensemble_size = int(ensemble_size)
        xN = _checks.as_float_array("xN", xN)
        if xN.ndim != 0:
            raise ValueError(f"`xN` must be a scalar; got shape {tuple(xN.shape)}")
        if _checks.is_concrete(xN) and not (bool(jnp.isfinite(xN)) and float(xN) > 0):
            raise ValueError(f"`xN` must be a finite number > 0 (the hyper-prior's confidence); got {float(xN)}")
        self.xN = xN
        if isinstance(g, bool) or int(g) != g or int(g) < 0:
            raise ValueError(f"`g` must be an integer >= 0 (gauge degrees of freedom); got {g}")
        self.g = int(g)
        self.rotate = bool(rotate)
        self.inflation = as_inflation(inflation)
        if isinstance(n_iterations, bool) or int(n_iterations) != n_iterations or int(n_iterations) < 1:
            raise ValueError(f"`n_iterations` must be an integer >= 1; got {n_iterations}")
        self.n_iterations = int(n_iterations)

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`)."""
        model = member_model(model, type(self).__name__)
        self.inflation.check_size(model.state_dim)

    def analysis_step(self, model, forecast: Ensemble, y, key):
        """The analysis without checks."""
        key_prior, key_post, key_rot = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        inflated = self.inflation.prior(forecast, key_prior)
        observed = jax.vmap(model.observe)(inflated.members)
        space = ensemble_space(inflated, observed, y, model.obs_cov)
        problem, chol_unit = dual_problem(space, self.xN, self.g)
        l1 = adaptive_inflation(problem, self.n_iterations)
        x = l1**2
        chol_l = problem.chol(x)
        members = _transform(problem, space, l1, chol_l)
        analysis, info = finish_analysis(self.inflation, self.rotate, inflated, members, space, key_post, key_rot)

        # the log-likelihood with the inflated prior, from the uninflated one of
        # `ensemble_space`: with Q(x) = dy^T (x S_Y^T S_Y / N1 + I)^{-1} dy and the
        # determinant lemma, only the r x r factors at x = 1 and x = l1^2 are needed
        n1 = problem.ridge
        quadratic_change = n1 * (problem.quadratic(x, chol_l) - problem.quadratic(1.0, chol_unit))
        delta = quadratic_change + logdet_from_chol(chol_l) - logdet_from_chol(chol_unit)
        info = EnKFNInfo(
            log_likelihood=space.log_likelihood - 0.5 * delta,
            n_observed=info.n_observed,
            spread=info.spread,
            status=info.status,
            inflation=l1,
            nis=space.nis + quadratic_change,
        )
        return analysis, info

    def analysis(self, model, state: Ensemble, y: Float[Array, " p"], key=None):
        """Assimilate y_{n+1} (NaN entries missing) into the forecast ensemble."""
        model = member_model(model, "EnKFN.analysis")
        if state.members.shape[0] != self.ensemble_size:
            raise ValueError(
                f"`state` has {state.members.shape[0]} members but `ensemble_size` is {self.ensemble_size}"
            )
        if (self.rotate or self.inflation.stochastic) and key is None:
            raise ValueError("EnKFN.analysis draws random numbers: a `key` is required")
        return self.analysis_step(model, state, jnp.asarray(y), key)


__all__ = ["DualProblem", "EnKFN", "EnKFNInfo", "adaptive_inflation", "dual_problem", "hyperprior_coefficients"]
