"""Linearised Gaussian filters for nonlinear models: the extended and the
unscented Kalman filter.

Both keep a dense Gaussian N(m, C) of the state of a (possibly nonlinear)
`StateSpaceModel`

    v_{n+1} = Psi(v_n) + xi_n,   xi_n ~ N(0, Sigma),     y_{n+1} = h(v_{n+1}) + eta,  eta ~ N(0, Gamma),

and reduce to the Kalman filter when Psi and h are affine. They form d x d
matrices (O(d^2) memory, O(d^3) work per cycle): use them for small and
moderate d (Lorenz-63, Lorenz-96 with d = 40, ...), ensemble methods beyond.

Extended Kalman filter (Jazwinski 1970, ch. 8): Psi and h are linearised at the
current mean with `jax.jacfwd`,

    forecast:  m^- = Psi(m),  F = dPsi/dv(m),  C^- = inflation * F C F^T + Sigma
    analysis:  H = dh/dv(m^-),  S = H C^- H^T + Gamma,  K = C^- H^T S^{-1},
               m = m^- + K (y - h(m^-)),  C = C^- - K S K^T.

Unscented Kalman filter (Julier & Uhlmann 1997; the scaled form of Wan & van
der Merwe 2000): the Gaussian is represented by 2d + 1 sigma points

    X_0 = m,  X_i = m + sqrt(d + lambda) L_i,  X_{d+i} = m - sqrt(d + lambda) L_i,  i = 1..d,

with L L^T = C (Cholesky; L_i its columns) and lambda = alpha^2 (d + kappa) - d,
weighted by

    W^m_0 = lambda / (d + lambda),  W^c_0 = W^m_0 + 1 - alpha^2 + beta,
    W^m_i = W^c_i = 1 / (2 (d + lambda)),  i = 1..2d,

pushed through the nonlinear map, and re-summarised by their weighted mean and
covariance:

    forecast:  Y_i = Psi(X_i),  m^- = sum W^m_i Y_i,
               C^- = inflation * sum W^c_i (Y_i - m^-)(Y_i - m^-)^T + Sigma
    analysis:  (sigma points X_i of N(m^-, C^-)),  Z_i = h(X_i),  y_hat = sum W^m_i Z_i,
               S = sum W^c_i (Z_i - y_hat)(Z_i - y_hat)^T + Gamma,
               C_vy = sum W^c_i (X_i - m^-)(Z_i - y_hat)^T,  K = C_vy S^{-1},
               m = m^- + K (y - y_hat),  C = C^- - K S K^T.

Both report log N(y; y_hat, S) (y_hat = h(m^-) for the EKF) as the
log-likelihood term of each cycle, an approximation of log p(y_{n+1} | y_{1:n})
that is exact for linear-Gaussian models.

Missing observations (NaN entries of y) are handled as in the Kalman filter
(`masked_observation_model`): their rows of H (EKF) or of the centred
observation sigma points Z_i - y_hat (UKF) are zeroed, their innovation is
zero, and they are decoupled with unit variance, so shapes stay static under
`jit`/`vmap`; the log-likelihood counts the observed entries only.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..gaussian import Gaussian
from ..linalg import solve_lower, symmetrize
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model
from .base import AbstractFilter
from .gaussian_update import KalmanInfo, analysis_status, gaussian_update, innovation_log_likelihood, masked_observation_model

__all__ = ["ExtendedKalmanFilter", "UnscentedKalmanFilter"]


# -- shared helpers ---------------------------------------------------------------------


def _hyperparameter(name: str, value) -> Float[Array, ""]:
    """A scalar float array (a traced pytree leaf), or a clear error naming `name`."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise TypeError(f"`{name}` must be a float; got {type(value).__name__}")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, np.ndarray):
        # Python numbers stay weakly typed, so they take the dtype of the model at use.
        array = jnp.asarray(float(value))
    else:
        array = jnp.asarray(value) if not isinstance(value, jax.Array) else value
        if jnp.issubdtype(array.dtype, jnp.integer):
            array = array.astype(jnp.result_type(float))
        array = _checks.as_float_array(name, array)
    if array.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {tuple(array.shape)}")
    _checks.check_finite(name, array)
    return array


def _check_at_least(name: str, value, lower: float, strict: bool, why: str) -> None:
    """Value check when concrete (skipped under `jit`/`vmap`/`grad` tracing)."""
    if not _checks.is_concrete(value):
        return
    v = float(value)
    ok = v > lower if strict else v >= lower
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {relation} {lower:g} ({why}); got {v:g}")


def _as_model(model, who: str) -> StateSpaceModel:
    """The `StateSpaceModel` view of a model (a time-invariant `LinearGaussianSSM` is converted)."""
    if isinstance(model, StateSpaceModel):
        return model
    if isinstance(model, LinearGaussianSSM):
        if model.n_times is not None:
            raise ValueError(
                f"{who}: `model` has `TimeVarying` fields; pass the model of one cycle, "
                "`model.at(n)` (kx.assimilate does this for you)"
            )
        return as_state_space_model(model)
    raise TypeError(f"{who} needs a `StateSpaceModel` or a `LinearGaussianSSM`; got {type(model).__name__}")


def _check_model_type(model, name: str) -> None:
    if not isinstance(model, (StateSpaceModel, LinearGaussianSSM)):
        raise TypeError(f"{name} needs a `StateSpaceModel` or a `LinearGaussianSSM`; got {type(model).__name__}")


def _value_and_jacobian(function, x):
    """(f(x), df/dx(x)) in one forward-mode pass."""

    def both(v):
        out = function(v)
        return out, out

    jacobian, value = jax.jacfwd(both, has_aux=True)(x)
    return value, jacobian


def _add_noise(cov, noise_cov):
    """cov + Sigma, skipping a `ZeroCovariance` statically (no d x d zeros formed)."""
    return cov if noise_cov.is_zero() else cov + noise_cov.matrix()


def _init(model, who: str) -> Gaussian:
    model = _as_model(model, who)
    return Gaussian(model.init_mean, model.init_cov.matrix())


# -- the extended Kalman filter ---------------------------------------------------------


class ExtendedKalmanFilter(AbstractFilter):
    """Extended Kalman filter: Jacobians of Psi and h by `jax.jacfwd` at the mean.

        forecast:  m^- = Psi(m),  F = dPsi/dv(m),  C^- = inflation * F C F^T + Sigma
        analysis:  H = dh/dv(m^-),  S = H C^- H^T + Gamma,
                   m = m^- + C^- H^T S^{-1} (y - h(m^-)),  C = C^- - C^- H^T S^{-1} H C^-

    (Jazwinski 1970, "Stochastic Processes and Filtering Theory", ch. 8). On an
    affine model it is the Kalman filter exactly (inflation 1). The state is a
    `Gaussian` (mean (dx,), cov (dx, dx)), the info a `KalmanInfo` with the
    log-likelihood term log N(y; h(m^-), S) of the observed entries.

    Args:
        inflation: multiplicative covariance inflation per cycle (>= 1; default
            1.0, none). A traced float leaf: `jax.vmap` over a batch of
            inflations and `jax.grad` with respect to it work.
        joseph: use the Joseph form C = (I - K H) C^- (I - K H)^T + K Gamma K^T
            for the analysis covariance (static).

    Inflation per unit time (DAPPER's `ExtKF(infl=...)`): DAPPER multiplies the
    forecast covariance by infl**dt at each model step of length dt,
    P <- infl**dt F_k P F_k^T + dt Q. Without model noise the factors of the
    dko steps of one observation interval compose to infl**(dko * dt), so the
    per-cycle inflation here is `infl ** interval` with interval = dko * dt
    (`Flow.interval`); `ExtendedKalmanFilter.per_unit_time(infl, interval)`
    does this conversion. (With model noise DAPPER also inflates the noise
    added earlier in the interval; here Sigma, the noise of the whole interval,
    is added after the inflation.) The linearisations differ: here F is the
    exact (`jax.jacfwd`) Jacobian of the discrete flow Psi over the whole
    interval at the analysis mean, while DAPPER approximates the resolvent of
    each model step after taking it (I + dt J on Lorenz-63, expm(dt J) on
    Lorenz-96, its `integrate_TLM`). The analysis means therefore differ from
    DAPPER's, and so do the scores: on Lorenz-63 (Sakov et al. 2012,
    infl = 180) both give a long-run RMSE of 0.92; on Lorenz-96 (Sakov & Oke
    2008, infl = 10) the exact Jacobian gives 0.220 against DAPPER's 0.238
    (benchmarks/results/twin.md).

    Example:
        >>> from kalmax.models import Lorenz63, Flow, RK4
        >>> flow = Flow(Lorenz63(), RK4(dt=0.01, n_steps=25))
        >>> ekf = kx.ExtendedKalmanFilter.per_unit_time(180.0, flow.interval)  # ExtKF(infl=180)
        >>> final, history = kx.assimilate(model, ekf, ys)
    """

    inflation: Float[Array, ""]
    joseph: bool = eqx.field(static=True, default=False)

    def __init__(self, inflation=1.0, joseph: bool = False):
        self.inflation = _hyperparameter("inflation", inflation)
        _check_at_least("inflation", self.inflation, 1.0, False, "a multiplicative covariance inflation")
        self.joseph = bool(joseph)

    @classmethod
    def per_unit_time(cls, infl, interval, **kwargs) -> ExtendedKalmanFilter:
        """The filter equivalent to DAPPER's `ExtKF(infl=infl)` for observations every
        `interval` time units: per-cycle inflation infl ** interval.

        Args:
            infl: inflation per unit time (>= 1), e.g. 180 for Lorenz-63 (Sakov et al. 2012).
            interval: time between observations, dko * dt (> 0), e.g. `flow.interval`.
            **kwargs: other arguments of `ExtendedKalmanFilter` (`joseph`).
        """
        infl = _hyperparameter("infl", infl)
        interval = _hyperparameter("interval", interval)
        _check_at_least("infl", infl, 1.0, False, "an inflation per unit time")
        _check_at_least("interval", interval, 0.0, True, "the time between observations")
        return cls(inflation=infl**interval, **kwargs)

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`): the model's type."""
        _check_model_type(model, "ExtendedKalmanFilter")

    def init(self, model, key=None) -> Gaussian:
        """The prior of v_0: N(init_mean, init_cov)."""
        return _init(model, "ExtendedKalmanFilter.init")

    def forecast(self, model, state: Gaussian, key=None) -> Gaussian:
        """m^- = Psi(m), C^- = inflation * F C F^T + Sigma with F = dPsi/dv(m)."""
        model = _as_model(model, "ExtendedKalmanFilter.forecast")
        mean, jacobian = _value_and_jacobian(model.dynamics, state.mean)
        inflation = self.inflation.astype(state.cov.dtype)
        cov = _add_noise(inflation * (jacobian @ state.cov @ jacobian.T), model.dynamics_cov)
        return Gaussian(mean, symmetrize(cov))

    def analysis(self, model, state: Gaussian, y: Float[Array, " dy"], key=None) -> tuple[Gaussian, KalmanInfo]:
        """Condition N(m^-, C^-) on y (NaN entries missing), h linearised at m^-."""
        model = _as_model(model, "ExtendedKalmanFilter.analysis")
        predicted, jacobian = _value_and_jacobian(model.observe, state.mean)
        target, obs_matrix, obs_cov, mask = masked_observation_model(y, jacobian, model.obs_cov.matrix(), None)
        innovation = jnp.where(mask, target - predicted, 0.0)
        return gaussian_update(state.mean, state.cov, obs_matrix, innovation, obs_cov, mask, joseph=self.joseph)


# -- the unscented Kalman filter --------------------------------------------------------


class UnscentedKalmanFilter(AbstractFilter):
    """Unscented Kalman filter with 2d + 1 scaled sigma points.

    Sigma points X_0 = m, X_{i} = m +/- sqrt(d + lambda) L_i (L L^T = C by
    Cholesky) with lambda = alpha^2 (d + kappa) - d and weights

        W^m_0 = lambda / (d + lambda),  W^c_0 = W^m_0 + 1 - alpha^2 + beta,
        W^m_i = W^c_i = 1 / (2 (d + lambda)),

    are pushed through Psi (forecast) and h (analysis), both `vmap`ped:

        forecast:  m^- = sum W^m_i Psi(X_i),
                   C^- = inflation * sum W^c_i (Psi(X_i) - m^-)(...)^T + Sigma
        analysis:  y_hat = sum W^m_i h(X_i) (X_i the sigma points of N(m^-, C^-)),
                   S = sum W^c_i (h(X_i) - y_hat)(...)^T + Gamma,
                   C_vy = sum W^c_i (X_i - m^-)(h(X_i) - y_hat)^T,
                   m = m^- + C_vy S^{-1} (y - y_hat),  C = C^- - C_vy S^{-1} C_vy^T

    (Julier & Uhlmann 1997, "A new extension of the Kalman filter to nonlinear
    systems"; Wan & van der Merwe 2000, "The unscented Kalman filter for
    nonlinear estimation"). The weighted sigma points match the mean and
    covariance of N(m, C) exactly, so the filter is the Kalman filter on an
    affine model; the transformed mean is exact for quadratic maps, and with
    beta = alpha^2 and alpha^2 (d + kappa) = 2 so is the covariance of quadratic
    maps whose quadratic part is diagonal in the coordinates xi of v = m + L xi
    (e.g. v -> v**2 for a diagonal C). The state
    is a `Gaussian`, the info a `KalmanInfo` with log N(y; y_hat, S).

    Args:
        alpha: spread of the sigma points around the mean (> 0; default 1.0).
        beta: prior-knowledge weight on the centre point (default 2.0, optimal
            for Gaussians).
        kappa: secondary scaling (default 0.0); alpha^2 (d + kappa) must be > 0.
        inflation: multiplicative forecast-covariance inflation per cycle (>= 1;
            default 1.0).

    All four are traced float leaves (vmap/grad over them work).

    Negative centre weights: for alpha^2 (d + kappa) < d, lambda < 0 and the
    centre weights are negative, W^m_0 = 1 - d / (alpha^2 (d + kappa)) (about
    -1/alpha^2 for kappa = 0 and small alpha); the summed
    covariances are then differences of large terms and can come out
    indefinite. They are symmetrised; a Cholesky failure of C^-, S or the
    analysis covariance is reported as status `NOT_POSITIVE_DEFINITE` in
    `KalmanInfo.status` (raised by `assimilate` unless `throw=False`). The
    sigma points need a positive-definite covariance (Cholesky), so a singular
    prior or forecast covariance is reported the same way.

    Example:
        >>> ukf = kx.UnscentedKalmanFilter(alpha=1.0, beta=2.0, kappa=0.0)
        >>> final, history = kx.assimilate(model, ukf, ys, save=kx.Save(cov=True))
    """

    alpha: Float[Array, ""]
    beta: Float[Array, ""]
    kappa: Float[Array, ""]
    inflation: Float[Array, ""]

    def __init__(self, alpha=1.0, beta=2.0, kappa=0.0, inflation=1.0):
        self.alpha = _hyperparameter("alpha", alpha)
        self.beta = _hyperparameter("beta", beta)
        self.kappa = _hyperparameter("kappa", kappa)
        self.inflation = _hyperparameter("inflation", inflation)
        _check_at_least("alpha", self.alpha, 0.0, True, "the spread of the sigma points")
        _check_at_least("inflation", self.inflation, 1.0, False, "a multiplicative covariance inflation")

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`): the model's type, and
        alpha^2 (d + kappa) > 0 for its state dimension d."""
        _check_model_type(model, "UnscentedKalmanFilter")
        d = model.state_dim
        if _checks.is_concrete(self.kappa) and _checks.is_concrete(self.alpha):
            spread = float(self.alpha) ** 2 * (d + float(self.kappa))
            if not spread > 0:
                raise ValueError(
                    f"`kappa` must satisfy d + kappa > 0 for the state dimension d = {d} "
                    f"(the sigma points lie at m +/- sqrt(alpha^2 (d + kappa)) L_i); got kappa = {float(self.kappa):g}"
                )

    def sigma_weights(self, d: int, dtype):
        """(sqrt(d + lambda), W^m, W^c) for 2d + 1 sigma points."""
        alpha, beta, kappa = (p.astype(dtype) for p in (self.alpha, self.beta, self.kappa))
        spread = alpha**2 * (d + kappa)  # d + lambda
        centre = (spread - d) / spread  # lambda / (d + lambda)
        mean_weights = jnp.concatenate([centre[None], jnp.full((2 * d,), 0.5 / spread)])
        cov_weights = mean_weights.at[0].add(1.0 - alpha**2 + beta)
        return jnp.sqrt(spread), mean_weights, cov_weights

    @staticmethod
    def sigma_points(mean, cov, scale):
        """(2d + 1, d) sigma points [m, m + scale L_i, m - scale L_i] and the Cholesky factor L."""
        chol = jnp.linalg.cholesky(cov)
        offsets = scale * chol.T  # row i is scale * L_i
        return jnp.concatenate([mean[None], mean + offsets, mean - offsets], axis=0), chol

    def init(self, model, key=None) -> Gaussian:
        """The prior of v_0: N(init_mean, init_cov)."""
        return _init(model, "UnscentedKalmanFilter.init")

    def forecast(self, model, state: Gaussian, key=None) -> Gaussian:
        """Unscented transform of N(m, C) through Psi, then inflation and + Sigma."""
        model = _as_model(model, "UnscentedKalmanFilter.forecast")
        d, dtype = state.mean.shape[0], state.cov.dtype
        scale, mean_weights, cov_weights = self.sigma_weights(d, dtype)
        points, _ = self.sigma_points(state.mean, state.cov, scale)
        propagated = jax.vmap(model.dynamics)(points)
        mean = mean_weights @ propagated
        centred = propagated - mean
        cov = self.inflation.astype(dtype) * ((centred.T * cov_weights) @ centred)
        return Gaussian(mean, symmetrize(_add_noise(cov, model.dynamics_cov)))

    def analysis(self, model, state: Gaussian, y: Float[Array, " dy"], key=None) -> tuple[Gaussian, KalmanInfo]:
        """Condition N(m^-, C^-) on y (NaN entries missing) by the unscented transform of h."""
        model = _as_model(model, "UnscentedKalmanFilter.analysis")
        d, dtype = state.mean.shape[0], state.cov.dtype
        scale, mean_weights, cov_weights = self.sigma_weights(d, dtype)
        points, chol_prior = self.sigma_points(state.mean, state.cov, scale)
        observed = jax.vmap(model.observe)(points)  # (2d + 1, dy)
        predicted = mean_weights @ observed
        # Missing entries: zero their rows of the centred observation points (as
        # rows of H in the Kalman filter), so S and C_vy ignore them.
        target, centred_obs, obs_cov, mask = masked_observation_model(
            y, (observed - predicted).T, model.obs_cov.matrix(), None
        )
        innovation = jnp.where(mask, target - predicted, 0.0)
        centred_state = points - state.mean
        weighted_obs = centred_obs * cov_weights  # (dy, 2d + 1)
        innov_cov = symmetrize(weighted_obs @ centred_obs.T + obs_cov)
        cross = centred_state.T @ weighted_obs.T  # C_vy, (d, dy)
        chol_innov = jnp.linalg.cholesky(innov_cov)
        # w = L_S^{-1} v and W = L_S^{-1} C_vy^T, so that K v = W^T w and K S K^T = W^T W.
        solved = solve_lower(chol_innov, jnp.concatenate([innovation[:, None], cross.T], axis=1))
        whitened, gain_factor = solved[:, 0], solved[:, 1:]
        mean = state.mean + gain_factor.T @ whitened
        cov = symmetrize(state.cov - gain_factor.T @ gain_factor)
        n_observed = jnp.sum(mask).astype(jnp.int32)
        # Non-PD is reported for the forecast covariance (sigma points), S, or the
        # analysis covariance (the next forecast's sigma points).
        chol_post = jnp.linalg.cholesky(cov)
        factors = jnp.concatenate([chol_innov.ravel(), chol_prior.ravel(), chol_post.ravel()])
        info = KalmanInfo(
            innovation_log_likelihood(whitened, chol_innov, n_observed), n_observed, analysis_status(factors, mean),
            jnp.sum(whitened**2),
        )
        return Gaussian(mean, cov), info
