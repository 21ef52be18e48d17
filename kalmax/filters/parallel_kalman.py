"""Parallel-in-time Kalman filter and RTS smoother by associative scans.

Särkkä & García-Fernández (2021), "Temporal parallelization of Bayesian
smoothers", IEEE Trans. Automatic Control 66(1), 299-306,
doi:10.1109/TAC.2020.2976316 (arXiv:1905.13002): the linear-Gaussian case.
Both passes are `jax.lax.associative_scan`s: O(log T) depth on an accelerator
(O(T) total work, about twice that of the sequential recursions), and equal to
the sequential `KalmanFilter` and RTS smoother up to round-off.

Model (cycle n = 0..T-1, DESIGN.md's time convention, `ys[n]` = y_{n+1}):

    v_{n+1} = F_n v_n + u_n + xi_n,  xi_n ~ N(0, Q_n)
    y_{n+1} = H_n v_{n+1} + d_n + eta, eta ~ N(0, R_n),   v_0 ~ N(m_0, P_0)

Filtering elements. Element n is the conditional p(v_{n+1} | v_n, y_{n+1})
= N(A_n v_n + b_n, C_n) together with the likelihood of v_n given y_{n+1},
proportional to N_I(v_n; eta_n, J_n) = exp(-1/2 v^T J_n v + eta_n^T v):

    S_n = H Q H^T + R,   K_n = Q H^T S_n^{-1},   r_n = y_{n+1} - H u - d
    A_n = (I - K_n H) F,   b_n = u + K_n r_n,   C_n = (I - K_n H) Q
    eta_n = (H F)^T S_n^{-1} r_n,   J_n = (H F)^T S_n^{-1} (H F)

(all at cycle n). Element 0 absorbs the prior v_0 ~ N(m_0, P_0) through the
first forecast m^-_1 = F_0 m_0 + u_0, P^-_1 = F_0 P_0 F_0^T + Q_0: it is the
formula above with F := 0, u := m^-_1, Q := P^-_1, so A_0 = 0, eta_0 = 0,
J_0 = 0 and (b_0, C_0) is the first analysis. The associative operator
(a_i earlier, a_j later; written with M = I + C_i J_j):

    A_ij = A_j M^{-1} A_i
    b_ij = A_j M^{-1} (b_i + C_i eta_j) + b_j
    C_ij = A_j M^{-1} C_i A_j^T + C_j
    eta_ij = A_i^T M^{-T} (eta_j - J_j b_i) + eta_i
    J_ij = A_i^T M^{-T} J_j A_i + J_i

and the prefix a_0 x ... x a_n has A = 0, b = m_{n+1}, C = P_{n+1}: the
filtered moments. M is not symmetric but C_i J_j is similar to the PSD
J_j^{1/2} C_i J_j^{1/2}, so M has real eigenvalues >= 1 and is never singular;
it is solved by LU with partial pivoting (Cholesky does not apply, and C_i or
J_j may be singular, so neither can be factored instead). One solve against
[A_i | b_i + C_i eta_j | C_i] gives every term, since A_i^T M^{-T} = (M^{-1} A_i)^T.

Smoothing elements, over v_0..v_T so that the smoothed v_0
comes out too, from the filtered N(m_n, P_n) (N(m_0, P_0) for n = 0) and the
forecast N(m^-_{n+1}, P^-_{n+1}):

    E_n = P_n F_n^T (P^-_{n+1})^{-1}   (the RTS gain)
    g_n = m_n - E_n m^-_{n+1},   L_n = P_n - E_n F_n P_n,    n = 0..T-1
    E_T = 0,   g_T = m_T,   L_T = P_T

so that v_n | v_{n+1}, y_{1:n} ~ N(E_n v_{n+1} + g_n, L_n). The operator
(a_i earlier, a_j later) is E_ij = E_i E_j, g_ij = E_i g_j + g_i,
L_ij = E_i L_j E_i^T + L_i, and the suffix a_n x ... x a_T holds (0, m^s_n,
P^s_n), computed by a reverse associative scan.

Missing observations (NaN entries of y) are handled exactly as in
`KalmanFilter.analysis`, through `masked_observation_model`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..gaussian import Gaussian
from ..linalg import cho_solve, solve_lower, symmetrize
from ..ssm import LinearGaussianSSM, merge_time_step, split_time_varying
from .gaussian_update import KalmanInfo, analysis_status, innovation_log_likelihood, masked_observation_model


class FilterElement(eqx.Module):
    """An element (A, b, C, eta, J) of the parallel filter; leading (T,) axis when stacked.

    Attributes:
        A: (dx, dx) transition of the conditional mean.
        b: (dx,) offset of the conditional mean.
        C: (dx, dx) conditional covariance.
        eta: (dx,) information vector of the likelihood of the previous state.
        J: (dx, dx) information matrix of the likelihood of the previous state.
    """

    A: Float[Array, "dx dx"]
    b: Float[Array, " dx"]
    C: Float[Array, "dx dx"]
    eta: Float[Array, " dx"]
    J: Float[Array, "dx dx"]


class SmootherElement(eqx.Module):
    """An element (E, g, L) of the parallel smoother: v_n | v_{n+1} ~ N(E v_{n+1} + g, L)."""

    E: Float[Array, "dx dx"]
    g: Float[Array, " dx"]
    L: Float[Array, "dx dx"]


def _offset(value, dim, dtype):
    return jnp.zeros((dim,), dtype) if value is None else value


def _filter_element(step: LinearGaussianSSM, y, is_first, first_mean, first_cov) -> FilterElement:
    """The element of one cycle (see the module docstring); element 0 absorbs the prior."""
    dtype = step.dtype
    dx = step.state_dim
    dynamics = jnp.where(is_first, jnp.zeros((dx, dx), dtype), step.dynamics)
    shift = jnp.where(is_first, first_mean, _offset(step.dynamics_offset, dx, dtype))
    # Q enters below through H Q as well as symmetrically; symmetrising it makes the gradient
    # with respect to `dynamics_cov` symmetric, as in the sequential filter.
    noise = jnp.where(is_first, first_cov, symmetrize(step.dynamics_cov))
    target, obs_matrix, obs_cov, mask = masked_observation_model(
        y, step.observation, step.obs_cov, step.obs_offset
    )
    residual = jnp.where(mask, target - obs_matrix @ shift, 0.0)
    chol = jnp.linalg.cholesky(symmetrize(obs_matrix @ noise @ obs_matrix.T + obs_cov))
    # With S = L L^T, W_Q = L^{-1} H Q, W_F = L^{-1} H F and z = L^{-1} r: K = W_Q^T L^{-1},
    # so K H F = W_Q^T W_F, K r = W_Q^T z, K S K^T = W_Q^T W_Q, J = W_F^T W_F, eta = W_F^T z.
    whitened = solve_lower(
        chol, jnp.concatenate([obs_matrix @ noise, obs_matrix @ dynamics, residual[:, None]], axis=1)
    )
    w_noise, w_dyn, z = whitened[:, :dx], whitened[:, dx : 2 * dx], whitened[:, 2 * dx]
    return FilterElement(
        A=dynamics - w_noise.T @ w_dyn,
        b=shift + w_noise.T @ z,
        C=symmetrize(noise - w_noise.T @ w_noise),
        eta=w_dyn.T @ z,
        J=symmetrize(w_dyn.T @ w_dyn),
    )


def _combine_filter(earlier: FilterElement, later: FilterElement) -> FilterElement:
    """The filtering operator a_i x a_j (Särkkä & García-Fernández 2021) for one pair.

    One linear solve (LU with partial pivoting), N = M^{-1} [A_i | b_i + C_i eta_j | C_i]
    with M = I + C_i J_j, gives every term: A_j M^{-1} X = A_j N_X, and
    A_i^T M^{-T} = (M^{-1} A_i)^T = N_A^T.
    """
    dx = earlier.b.shape[0]
    eye = jnp.eye(dx, dtype=earlier.b.dtype)
    rhs = jnp.concatenate([earlier.A, (earlier.b + earlier.C @ later.eta)[:, None], earlier.C], axis=1)
    solved = jnp.linalg.solve(eye + earlier.C @ later.J, rhs)
    solved_a, solved_b, solved_c = solved[:, :dx], solved[:, dx], solved[:, dx + 1 :]
    return FilterElement(
        A=later.A @ solved_a,
        b=later.A @ solved_b + later.b,
        C=symmetrize(later.A @ solved_c @ later.A.T + later.C),
        eta=solved_a.T @ (later.eta - later.J @ earlier.b) + earlier.eta,
        J=symmetrize(solved_a.T @ later.J @ earlier.A + earlier.J),
    )


def _combine_smoother(later: SmootherElement, earlier: SmootherElement) -> SmootherElement:
    """a_i x a_j of the smoother (a_i earlier in time), argument order of a reverse scan."""
    return SmootherElement(
        E=earlier.E @ later.E,
        g=earlier.E @ later.g + earlier.g,
        L=symmetrize(earlier.E @ later.L @ earlier.E.T + earlier.L),
    )


def _predict(step: LinearGaussianSSM, mean, cov):
    """m^- = F m + u, P^- = F P F^T + Q."""
    cov = symmetrize(step.dynamics @ cov @ step.dynamics.T + step.dynamics_cov)
    return step.predict_mean(mean), cov


def _step_info(step: LinearGaussianSSM, pred_mean, pred_cov, y, mean) -> KalmanInfo:
    """`KalmanInfo` of one cycle as `KalmanFilter.analysis` reports it: log N(y_{n+1}; H m^- + d, S)
    of the observed entries, their number, and the status from the Cholesky factor of S and the
    analysis mean."""
    target, obs_matrix, obs_cov, mask = masked_observation_model(
        y, step.observation, step.obs_cov, step.obs_offset
    )
    innovation = jnp.where(mask, target - obs_matrix @ pred_mean, 0.0)
    chol = jnp.linalg.cholesky(symmetrize(obs_matrix @ pred_cov @ obs_matrix.T + obs_cov))
    n_observed = jnp.sum(mask).astype(jnp.int32)
    whitened = solve_lower(chol, innovation)
    log_likelihood = innovation_log_likelihood(whitened, chol, n_observed)
    return KalmanInfo(log_likelihood, n_observed, analysis_status(chol, mean), jnp.sum(whitened**2))


def parallel_filter(model: LinearGaussianSSM, ys: Float[Array, "T dy"]) -> tuple[Gaussian, Gaussian, KalmanInfo]:
    """The Kalman filter as one associative scan (Särkkä & García-Fernández 2021).

    Builds the T elements (module docstring) in one `vmap`, scans them with
    `jax.lax.associative_scan`, then, in a second `vmap`, recomputes the
    forecasts N(m^-_{n+1}, P^-_{n+1}) from the filtered moments of cycle n-1
    (the prior for n = 0) and the per-cycle `KalmanInfo`.

    Args:
        model: a `LinearGaussianSSM`; `TimeVarying` fields are sliced per cycle.
        ys: (T, dy) observations y_1..y_T; NaN entries are missing.

    Returns:
        (forecasts, analyses, info): `Gaussian`s with (T, dx) means and (T, dx, dx)
        covariances of every forecast and analysis, and the `KalmanInfo` with (T,)
        fields, as the sequential `KalmanFilter` gives them (`kx.ParallelScan`
        saves them as `assimilate` does).
    """
    varying, constant = split_time_varying(model)
    n_steps = ys.shape[0]
    first_model = merge_time_step(jax.tree_util.tree_map(lambda x: x[0], varying), constant)
    first_mean, first_cov = _predict(first_model, model.init_mean, model.init_cov)
    is_first = jnp.arange(n_steps) == 0

    def element(varying_step, y, first):
        step = merge_time_step(varying_step, constant)
        return _filter_element(step, y, first, first_mean, first_cov)

    elements = jax.vmap(element)(varying, ys, is_first)
    scanned = jax.lax.associative_scan(jax.vmap(_combine_filter), elements)
    means, covs = scanned.b, scanned.C

    prev_means = jnp.concatenate([model.init_mean[None], means[:-1]], axis=0)
    prev_covs = jnp.concatenate([model.init_cov[None], covs[:-1]], axis=0)

    def forecast_and_info(varying_step, prev_mean, prev_cov, y, mean):
        step = merge_time_step(varying_step, constant)
        pred_mean, pred_cov = _predict(step, prev_mean, prev_cov)
        return pred_mean, pred_cov, _step_info(step, pred_mean, pred_cov, y, mean)

    pred_means, pred_covs, info = jax.vmap(forecast_and_info)(varying, prev_means, prev_covs, ys, means)
    return Gaussian(pred_means, pred_covs), Gaussian(means, covs), info


def parallel_smoother(model: LinearGaussianSSM, filtered):
    """The RTS smoother as one reverse associative scan (Särkkä & García-Fernández 2021).

    Args:
        model: the `LinearGaussianSSM` the filter ran on.
        filtered: the filter's history with `mean`, `cov`, `forecast_mean` and
            `forecast_cov` (as `kx.Save(cov=True, forecast=True)` keeps).

    Returns:
        (mean, cov, cross_cov, init_mean, init_cov) as `kalmax.smoothers.rts.backward_pass`: smoothed
        means (T, dx) and covariances (T, dx, dx) of v_1..v_T; `cross_cov[n]` =
        Cov(v_{n+1}, v_n | y_{1:T}) = P^s_{n+1} E_n^T (T, dx, dx); and the smoothed
        v_0, (dx,) and (dx, dx).
    """
    varying, constant = split_time_varying(model)
    prev_mean = jnp.concatenate([model.init_mean[None], filtered.mean[:-1]], axis=0)
    prev_cov = jnp.concatenate([model.init_cov[None], filtered.cov[:-1]], axis=0)

    def element(varying_step, mean, cov, pred_mean, pred_cov):
        dynamics = merge_time_step(varying_step, constant).dynamics
        dyn_cov = dynamics @ cov  # F P
        gain = cho_solve(jnp.linalg.cholesky(pred_cov), dyn_cov).T  # P F^T (P^-)^{-1}
        return SmootherElement(E=gain, g=mean - gain @ pred_mean, L=symmetrize(cov - gain @ dyn_cov))

    inner = jax.vmap(element)(varying, prev_mean, prev_cov, filtered.forecast_mean, filtered.forecast_cov)
    last = SmootherElement(
        E=jnp.zeros_like(filtered.cov[-1:]), g=filtered.mean[-1:], L=filtered.cov[-1:]
    )
    elements = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), inner, last)
    scanned = jax.lax.associative_scan(jax.vmap(_combine_smoother), elements, reverse=True)
    means, covs = scanned.g, scanned.L  # v_0..v_T
    cross = covs[1:] @ jnp.swapaxes(inner.E, -1, -2)
    return means[1:], covs[1:], cross, means[0], covs[0]
