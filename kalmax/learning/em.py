"""Expectation-maximisation for a linear-Gaussian state-space model.

    v_{n+1} = M v_n + b + xi_n,   xi_n ~ N(0, Q);   y_{n+1} = H v_{n+1} + d + eta,  eta ~ N(0, R);
    v_0 ~ N(m_0, C_0)                                  (`kx.LinearGaussianSSM`, n = 0..T-1)

E-step: the Kalman filter and RTS smoother under the current parameters give
the smoothed moments of v_0..v_T and the lag-one cross-covariances, hence the
expected sufficient statistics (with z_n = [v_n; 1]):

    dynamics:     S_zz = sum_{n=0}^{T-1} E[z_n z_n^T],  S_xz = sum_{n=1}^{T} E[v_n z_{n-1}^T],
                  S_xx = sum_{n=1}^{T} E[v_n v_n^T]
    observation:  S_zz^o = sum_{n=1}^{T} E[z_n z_n^T],  S_yz = sum E[y_n z_n^T],  S_yy = sum E[y_n y_n^T]

A missing entry of y_n (NaN) is a latent variable: given v_n and the observed
entries o, y_n is Gaussian with mean (I - K) (H v_n + d) + K y_n and covariance
(I - K) R (I - K)^T, where K = R_{:,o} R_{oo}^{-1} (zero columns off o), which
gives E[y_n ...] in closed form (Shumway & Stoffer 1982, sec. 3; Shumway &
Stoffer 2017, Time Series Analysis and Its Applications, sec. 6.4). A fully
observed y_n has K = I and contributes y_n y_n^T.

M-step (closed form; Shumway & Stoffer 1982; Ghahramani & Hinton 1996):

    [M b] = S_xz S_zz^{-1},   Q = (S_xx - A S_xz^T - S_xz A^T + A S_zz A^T) / T  with A = [M b]
    [H d] = S_yz S_zz^o{}^{-1},  R = (S_yy - C S_yz^T - S_yz C^T + C S_zz^o C^T) / T  with C = [H d]
    m_0 = E[v_0],   C_0 = E[(v_0 - m_0)(v_0 - m_0)^T]

Any of the eight fields can be held fixed (`fixed=("observation", ...)`): a
fixed M with a free b gives b = mean of E[v_n] - M E[v_{n-1}], a free M with a
fixed b regresses on v alone, and each covariance is then the expected
residual covariance under the (new or fixed) linear part, so every M-step
maximises the expected complete-data log-likelihood over the free fields and
the marginal log-likelihood log p(y_{1:T}) cannot decrease. An offset that is
`None` in the model stays `None` (give a zero offset to learn it). Several
independent sequences (ys of shape (B, T, dy)) add their statistics.

Other libraries (dynamax, pykalman, statsmodels) let y_1 observe the initial
state itself; `observe_initial=True` fits that model (an identity first
transition without noise, so the sums over transitions run over n = 2..T and
(m_0, C_0) is the law of the first observed state): kalmax's iterations then
equal dynamax's `fit_em` (benchmarks/results/learning.md).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..linalg import symmetrize
from ..smoothers.rts import rts_smoother
from ..ssm import LinearGaussianSSM, TimeVarying

EM_FIELDS = (
    "dynamics",
    "dynamics_offset",
    "dynamics_cov",
    "observation",
    "obs_offset",
    "obs_cov",
    "init_mean",
    "init_cov",
)


class SufficientStatistics(eqx.Module):
    """Expected complete-data sufficient statistics (module docstring); sums over
    cycles and sequences, so the statistics of independent sequences add.

    Attributes:
        init_mean: (dx,) sum of E[v_0] over sequences.
        init_outer: (dx, dx) sum of E[v_0 v_0^T].
        n_sequences: number of sequences.
        dynamics_zz: (dx+1, dx+1) S_zz; dynamics_xz: (dx, dx+1) S_xz; dynamics_xx: (dx, dx) S_xx.
        obs_zz: (dx+1, dx+1) S_zz^o; obs_yz: (dy, dx+1) S_yz; obs_yy: (dy, dy) S_yy.
        n_cycles: number of observation times T (the counts of the regressions are the
            corners of `dynamics_zz` and `obs_zz`).
    """

    init_mean: Float[Array, " dx"]
    init_outer: Float[Array, "dx dx"]
    n_sequences: Float[Array, ""]
    dynamics_zz: Float[Array, "dx1 dx1"]
    dynamics_xz: Float[Array, "dx dx1"]
    dynamics_xx: Float[Array, "dx dx"]
    obs_zz: Float[Array, "dx1 dx1"]
    obs_yz: Float[Array, "dy dx1"]
    obs_yy: Float[Array, "dy dy"]
    n_cycles: Float[Array, ""]


class EMResult(eqx.Module):
    """What `em` returns.

    Attributes:
        model: the model after the last M-step.
        log_likelihood: (n_iterations,) log p(y | parameters) before each M-step
            (entry 0 is the initial model's); non-decreasing up to round-off.
    """

    model: LinearGaussianSSM
    log_likelihood: Float[Array, " n_iterations"]


def _outer_sum(means, covs):
    return jnp.sum(covs, axis=0) + means.T @ means


def _augmented(second_moment, first_sum, count):
    """[[sum E[v v^T], sum E[v]], [sum E[v]^T, count]] for z = [v; 1]."""
    top = jnp.concatenate([second_moment, first_sum[:, None]], axis=1)
    bottom = jnp.concatenate([first_sum, count[None]])[None, :]
    return jnp.concatenate([top, bottom], axis=0)


def _missing_moments(y, mean, second, observation, obs_offset, obs_cov):
    """E[y], E[y y^T] and E[y v^T] of one cycle given v ~ (mean, second moment) and the
    observed entries of y (module docstring)."""
    dy = y.shape[0]
    observed = ~jnp.isnan(y)
    eye = jnp.eye(dy, dtype=mean.dtype)
    both = observed[:, None] & observed[None, :]
    padded = jnp.where(both, obs_cov, eye)  # R_oo, identity on the missing block
    gain = jnp.linalg.solve(padded, jnp.where(observed[:, None], obs_cov, 0.0)).T  # R_{:,o} R_oo^{-1}
    rest = eye - gain
    filled = jnp.where(observed, y, 0.0)
    linear = rest @ observation  # E[y | v, y_o] = linear v + constant
    constant = rest @ obs_offset + gain @ filled
    residual_cov = rest @ obs_cov @ rest.T
    cross_mean = linear @ mean
    y_mean = cross_mean + constant
    y_state = linear @ second + jnp.outer(constant, mean)  # E[y v^T]
    y_outer = (
        linear @ second @ linear.T
        + jnp.outer(cross_mean, constant)
        + jnp.outer(constant, cross_mean)
        + jnp.outer(constant, constant)
        + residual_cov
    )
    return y_mean, symmetrize(y_outer), y_state


def first_observed(model: LinearGaussianSSM, n_cycles: int) -> LinearGaussianSSM:
    """The model in which y_1 observes v_0 itself (dynamax's, pykalman's and statsmodels'
    convention): a time-varying model whose first transition is the identity without
    noise, then the model's dynamics for the T - 1 others."""
    dtype = model.dtype
    dx = model.dynamics.shape[0]

    def first_then(first, rest):
        return TimeVarying(jnp.concatenate([first[None], jnp.broadcast_to(rest, (n_cycles - 1,) + rest.shape)]))

    offset = None
    if model.dynamics_offset is not None:
        offset = first_then(jnp.zeros(dx, dtype), model.dynamics_offset)
    return LinearGaussianSSM(
        dynamics=first_then(jnp.eye(dx, dtype=dtype), model.dynamics),
        observation=model.observation,
        dynamics_cov=first_then(jnp.zeros((dx, dx), dtype), model.dynamics_cov),
        obs_cov=model.obs_cov,
        init_mean=model.init_mean,
        init_cov=model.init_cov,
        dynamics_offset=offset,
        obs_offset=model.obs_offset,
    )


def e_step(
    model: LinearGaussianSSM,
    ys: Float[Array, "T dy"],
    *,
    missing: bool | None = None,
    observe_initial: bool = False,
) -> tuple[SufficientStatistics, Float[Array, ""]]:
    """Expected sufficient statistics of one sequence and its log-likelihood (module docstring).

    Args:
        model: the current `LinearGaussianSSM` (time-invariant).
        ys: (T, dy) observations y_1..y_T; NaN entries are missing.
        missing: whether `ys` may hold NaN entries (static). False takes the
            complete-data statistics y y^T directly (no per-cycle conditioning);
            None decides from `ys` when it is concrete and assumes True when traced.
        observe_initial: y_1 observes v_0 itself (`first_observed`): T - 1 transitions.

    Returns:
        (statistics, log p(y_{1:T})).
    """
    if missing is None:
        missing = not _checks.is_concrete(ys) or bool(np.isnan(np.asarray(ys)).any())
    filter_model = first_observed(model, ys.shape[0]) if observe_initial else model
    smoothed = rts_smoother(filter_model, ys, throw=False, steady_state=False)
    dtype = model.dtype
    states = jnp.concatenate([smoothed.init_mean[None], smoothed.mean])  # v_0..v_T
    covs = jnp.concatenate([smoothed.init_cov[None], smoothed.cov])
    n_cycles = jnp.asarray(ys.shape[0], dtype)

    # the transitions v_{n-1} -> v_n the parameters govern: n = 1..T, or n = 2..T when v_1 = v_0
    first = 1 if observe_initial else 0
    previous, previous_covs = states[first:-1], covs[first:-1]
    following, following_covs = states[first + 1 :], covs[first + 1 :]
    n_transitions = jnp.asarray(previous.shape[0], dtype)
    dynamics_zz = _augmented(_outer_sum(previous, previous_covs), previous.sum(0), n_transitions)
    cross = jnp.sum(smoothed.cross_cov[first:], axis=0) + following.T @ previous  # sum E[v_n v_{n-1}^T]
    dynamics_xz = jnp.concatenate([cross, following.sum(0)[:, None]], axis=1)
    dynamics_xx = _outer_sum(following, following_covs)

    obs_zz, obs_yz, obs_yy, _ = observation_statistics(model, ys, states[1:], covs[1:], missing)

    statistics = SufficientStatistics(
        init_mean=smoothed.init_mean,
        init_outer=smoothed.init_cov + jnp.outer(smoothed.init_mean, smoothed.init_mean),
        n_sequences=jnp.asarray(1, dtype),
        dynamics_zz=dynamics_zz,
        dynamics_xz=dynamics_xz,
        dynamics_xx=dynamics_xx,
        obs_zz=obs_zz,
        obs_yz=obs_yz,
        obs_yy=obs_yy,
        n_cycles=n_cycles,
    )
    return statistics, smoothed.log_likelihood


def observation_statistics(model: LinearGaussianSSM, ys, means, covs, missing: bool):
    """The observation part of the statistics from smoothed moments of v_1..v_T:
    (S_zz^o, S_yz, S_yy, E[y_n | y_obs] per cycle (T, dy)); see the module docstring."""
    dtype = model.dtype
    n_cycles = jnp.asarray(ys.shape[0], dtype)
    if missing:
        seconds = covs + means[:, :, None] * means[:, None, :]
        obs_offset = _offset(model.obs_offset, model.observation.shape[0], dtype)
        y_mean, y_outer, y_state = jax.vmap(_missing_moments, in_axes=(0, 0, 0, None, None, None))(
            ys, means, seconds, model.observation, obs_offset, model.obs_cov
        )
        y_state, y_sum, y_outer = y_state.sum(0), y_mean.sum(0), y_outer.sum(0)
    else:
        y_mean = ys
        y_state, y_sum, y_outer = ys.T @ means, ys.sum(0), ys.T @ ys
    obs_zz = _augmented(_outer_sum(means, covs), means.sum(0), n_cycles)
    obs_yz = jnp.concatenate([y_state, y_sum[:, None]], axis=1)
    return obs_zz, obs_yz, y_outer, y_mean


def _offset(offset, size, dtype):
    return jnp.zeros(size, dtype) if offset is None else offset


def _regression(matrix, offset, free_matrix, free_offset, target_z, zz, target_target):
    """Maximise the expected Gaussian regression log-likelihood of target = matrix v + offset + noise
    over the free parts; returns (matrix, offset, noise covariance). The number of terms is
    the corner of S_zz (z = [v; 1])."""
    size = zz.shape[0] - 1
    count = zz[size, size]
    if free_matrix and free_offset:
        joint = jnp.linalg.solve(zz, target_z.T).T  # S_tz S_zz^{-1} (S_zz symmetric)
        matrix, offset = joint[:, :size], joint[:, size]
    elif free_matrix:
        rhs = target_z[:, :size] - jnp.outer(offset, zz[size, :size])
        matrix = jnp.linalg.solve(zz[:size, :size], rhs.T).T
    elif free_offset:
        offset = (target_z[:, size] - matrix @ zz[:size, size]) / count
    joint = jnp.concatenate([matrix, offset[:, None]], axis=1)
    residual = target_target - joint @ target_z.T - target_z @ joint.T + joint @ zz @ joint.T
    return matrix, offset, symmetrize(residual / count)


def m_step(model: LinearGaussianSSM, statistics: SufficientStatistics, fixed: tuple[str, ...] = ()) -> LinearGaussianSSM:
    """The closed-form M-step (module docstring).

    Args:
        model: the model of the E-step (supplies the fixed fields).
        statistics: the expected sufficient statistics from `e_step` (summed over sequences).
        fixed: names of fields kept as they are (any of `EM_FIELDS`).

    Returns:
        The model whose free fields maximise the expected complete-data log-likelihood.
    """
    free = {name: name not in fixed for name in EM_FIELDS}
    dtype = model.dtype
    dx, dy = model.dynamics.shape[0], model.observation.shape[0]
    dynamics, dynamics_offset, dynamics_cov = _regression(
        model.dynamics,
        _offset(model.dynamics_offset, dx, dtype),
        free["dynamics"],
        free["dynamics_offset"] and model.dynamics_offset is not None,
        statistics.dynamics_xz,
        statistics.dynamics_zz,
        statistics.dynamics_xx,
    )
    observation, obs_offset, obs_cov = _regression(
        model.observation,
        _offset(model.obs_offset, dy, dtype),
        free["observation"],
        free["obs_offset"] and model.obs_offset is not None,
        statistics.obs_yz,
        statistics.obs_zz,
        statistics.obs_yy,
    )
    first = statistics.init_mean / statistics.n_sequences  # mean of E[v_0] over sequences
    init_mean = first if free["init_mean"] else model.init_mean
    # E[(v_0 - m_0)(v_0 - m_0)^T] averaged over sequences, at the new (or fixed) m_0
    init_cov = (
        statistics.init_outer / statistics.n_sequences
        - jnp.outer(first, init_mean)
        - jnp.outer(init_mean, first)
        + jnp.outer(init_mean, init_mean)
    )

    def chosen(name, new):
        return new if free[name] else getattr(model, name)

    return LinearGaussianSSM(
        dynamics=chosen("dynamics", dynamics),
        observation=chosen("observation", observation),
        dynamics_cov=chosen("dynamics_cov", dynamics_cov),
        obs_cov=chosen("obs_cov", obs_cov),
        init_mean=init_mean,
        init_cov=chosen("init_cov", symmetrize(init_cov)),
        dynamics_offset=None if model.dynamics_offset is None else dynamics_offset,
        obs_offset=None if model.obs_offset is None else obs_offset,
    )


def check_em_inputs(model, ys, fixed, n_iterations) -> tuple[Array, tuple[str, ...]]:
    """Validate `em`'s arguments; returns ys as a (B, T, dy) array and `fixed` as a tuple."""
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(
            "`model` must be a kx.LinearGaussianSSM: EM's closed-form M-step needs a linear-Gaussian model; "
            f"got {type(model).__name__} (learn a non-linear model by gradients: kx.learning.fit)"
        )
    for name in EM_FIELDS:
        if isinstance(getattr(model, name), TimeVarying):
            raise ValueError(f"EM learns time-invariant parameters; `model.{name}` is TimeVarying")
    fixed = (fixed,) if isinstance(fixed, str) else tuple(fixed)
    unknown = [name for name in fixed if name not in EM_FIELDS]
    if unknown:
        raise ValueError(f"`fixed` names unknown fields {unknown}; expected some of {list(EM_FIELDS)}")
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 1:
        raise ValueError(f"`n_iterations` must be a positive int; got {n_iterations!r}")
    ys = _checks.as_float_array("ys", ys).astype(model.dtype)
    dy = model.observation.shape[0]
    if ys.ndim == 2:
        ys = ys[None]
    if ys.ndim != 3 or ys.shape[-1] != dy or ys.shape[1] < 1:
        raise ValueError(f"`ys` must have shape (T, {dy}) or (B, T, {dy}) with T >= 1; got {tuple(ys.shape)}")
    return ys, fixed


def em(
    model: LinearGaussianSSM,
    ys: Float[Array, "T dy"] | Float[Array, "B T dy"],
    n_iterations: int,
    *,
    fixed: tuple[str, ...] = (),
    observe_initial: bool = False,
) -> EMResult:
    """Fit a linear-Gaussian state-space model by expectation-maximisation (module docstring).

    Args:
        model: the initial guess, a time-invariant `kx.LinearGaussianSSM`.
        ys: (T, dy) observations y_1..y_T, or (B, T, dy) for B independent sequences
            sharing the parameters; NaN entries are missing.
        n_iterations: number of E- and M-steps (one compiled `lax.scan`).
        fixed: names of fields held at their initial values, some of `EM_FIELDS`
            ("dynamics", "dynamics_offset", "dynamics_cov", "observation", "obs_offset",
            "obs_cov", "init_mean", "init_cov").
        observe_initial: y_1 observes v_0 itself (the convention of dynamax, pykalman and
            statsmodels: T - 1 transitions, and (init_mean, init_cov) is the law of the
            first observed state); False: kalmax's convention, v_0 one cycle before y_1.

    Returns:
        An `EMResult`: the fitted model and the log-likelihood before each M-step.

    Raises:
        TypeError: if `model` is not a `LinearGaussianSSM`.
        ValueError: for TimeVarying fields, unknown `fixed` names, a bad `n_iterations`
            or `ys` of the wrong shape.

    Example:
        >>> result = kx.learning.em(guess, ys, 100, fixed=("observation",))
        >>> result.model.dynamics_cov, result.log_likelihood[-1]
    """
    ys, fixed = check_em_inputs(model, ys, fixed, n_iterations)
    if observe_initial and ys.shape[1] < 2:
        raise ValueError("`observe_initial=True` needs T >= 2 observations (T - 1 transitions)")
    missing = not _checks.is_concrete(ys) or bool(np.isnan(np.asarray(ys)).any())
    return _em_loop(model, ys, n_iterations, fixed, missing, bool(observe_initial))


@eqx.filter_jit
def _em_loop(model, ys, n_iterations, fixed, missing, observe_initial):
    def iteration(current, _):
        statistics, log_likelihoods = jax.vmap(
            lambda y: e_step(current, y, missing=missing, observe_initial=observe_initial)
        )(ys)
        statistics = jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), statistics)
        return m_step(current, statistics, fixed), jnp.sum(log_likelihoods)

    final, log_likelihood = jax.lax.scan(iteration, model, None, length=n_iterations)
    return EMResult(model=final, log_likelihood=log_likelihood)


__all__ = ["EMResult", "EM_FIELDS", "SufficientStatistics", "e_step", "em", "first_observed", "m_step", "observation_statistics"]
