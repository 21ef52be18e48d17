"""3DVAR: the model/data compromise with a fixed background covariance.

Forecast (no model noise is drawn; the mean is propagated by the model):

    v_hat = Psi(v)

Analysis: the minimiser of

    J(v) = 1/2 |v - v_hat|^2_B + 1/2 |y - h(v)|^2_Gamma

with a FIXED background covariance B = C_hat (climatology, or a simple
computable structure such as a covariance diagonal in Fourier space; Lorenc
1986, "Analysis methods for numerical weather prediction", QJRMS 112; Law &
Stuart 2012, Mon. Wea. Rev. 140; DAPPER's `Var3D`). For a linear observation
h(v) = H v + d the minimiser is the static-gain update

    S = H B H^T + Gamma,   m = v_hat + B H^T S^{-1} (y - h(v_hat)),

computed with B applied to the dy columns of H^T (`B.mv`; for an
`IndexObservation`, the dy columns of B at the observed components), so only
d x dy and dy x dy matrices are formed. For a nonlinear h, J is minimised by
Gauss-Newton with a fixed number of iterations (differentiable, jit/vmap
friendly): with H_k the Jacobian of h at v_k, v_0 = v_hat,

    v_{k+1} = v_hat + B H_k^T (H_k B H_k^T + Gamma)^{-1} (y - h(v_k) - H_k (v_hat - v_k)),

each step the exact minimiser of J with h linearised at v_k (one step is exact
for linear h). Its fixed points are the stationary points of J. There is no
line search: for a strongly nonlinear h (or a large innovation) increase
`n_iterations` or check the result.

Missing observations: NaN entries of y are skipped, as in `KalmanFilter`
(their rows of H are zeroed and they are decoupled with unit variance).

Log-likelihood term: log N(y; h(v_hat), H B H^T + Gamma) of the observed
entries, with H the Jacobian at the forecast v_hat for a nonlinear h. This is
a 3DVAR *pseudo*-likelihood: it is the exact log p(y_{n+1} | y_{1:n}) only if
B happened to be the true forecast covariance; it is a consistent score for
tuning B (e.g. DAPPER's `xB`) or model parameters by gradient descent.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import AbstractCovariance, DenseCovariance
from ..linalg import solve_lower, symmetrize
from ..observations import IndexObservation, LinearObservation
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model
from .base import AbstractFilter
from .gaussian_update import KalmanInfo, analysis_status, innovation_log_likelihood


class ThreeDVarState(eqx.Module):
    """The state of `ThreeDVar`: the current estimate (forecast or analysis).

    Attributes:
        mean: (dx,) the state estimate.

    3DVAR propagates no covariance (its background B is fixed), so there is no
    `cov`: asking for it (e.g. `kx.Save(cov=True)`) raises an AttributeError
    that says so. The background is `ThreeDVar.background_cov`.
    """

    mean: Float[Array, " dx"]

    @property
    def cov(self):
        raise AttributeError(
            "ThreeDVar keeps no covariance: its background covariance is fixed "
            "(`ThreeDVar.background_cov`) and no analysis covariance is propagated; "
            "use kx.Save(cov=False) (the default)"
        )


def as_background(value) -> AbstractCovariance:
    """`value` (a (d, d) array or a covariance operator) as the checked background covariance of a
    variational method (3DVAR, 4D-Var): not zero, floating, symmetric positive semi-definite."""
    if isinstance(value, AbstractCovariance):
        if value.is_zero():
            raise ValueError(
                "`background_cov` cannot be zero (3DVAR would ignore every observation)"
            )
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"`background_cov` must have a floating dtype; got {value.dtype}")
        return value
    array = _checks.as_float_array("background_cov", value)
    if array.ndim != 2:
        raise ValueError(
            "`background_cov` must be a (d, d) covariance matrix or a covariance operator "
            "(DenseCovariance, DiagonalCovariance, ScalarCovariance, FourierCovariance, ...); "
            f"got an array of shape {tuple(array.shape)}"
        )
    _checks.check_covariance("background_cov", array)
    return DenseCovariance(array)


def _model_parts(model):
    """(dynamics, observation operator, obs_cov operator) of a model, for one cycle."""
    if isinstance(model, LinearGaussianSSM):
        model = as_state_space_model(model)
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"ThreeDVar needs a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
    return model.dynamics, model.observation, model.obs_cov


def _one_hot_columns(indices, dim: int, dtype):
    """(dim, len(indices)) matrix whose columns are the unit vectors e_i (without an I_d)."""
    return (jnp.arange(dim)[:, None] == jnp.asarray(indices)[None, :]).astype(dtype)


class ThreeDVar(AbstractFilter):
    """3DVAR with a fixed background covariance B (see the module docstring).

        forecast:  v_hat = Psi(v)
        analysis:  argmin_v 1/2 |v - v_hat|^2_B + 1/2 |y - h(v)|^2_Gamma

    Closed form (static Kalman gain K = B H^T (H B H^T + Gamma)^{-1}) for a
    linear observation (a matrix, `LinearObservation`, `IndexObservation`, the
    H of a `LinearGaussianSSM`); `n_iterations` Gauss-Newton steps for a
    nonlinear `FunctionObservation`. The model's `dynamics_cov` and
    `init_cov` are not used: `init` starts from `init_mean`.

    Args:
        background_cov: B, a (d, d) array (checked square, symmetric, finite,
            PSD) or any covariance operator: `DiagonalCovariance`,
            `ScalarCovariance` (DAPPER's `xB` times I), `FourierCovariance`, ...
            Operators are applied to d x dy blocks only, never densified. Its
            arrays are traced leaves (vmap over, or differentiate with respect
            to, a background scale via `B.scaled(s)`).
        n_iterations: Gauss-Newton iterations for a nonlinear observation
            (static int >= 1; ignored for linear observations, where one is exact).

    The state is a `ThreeDVarState` (just `.mean`), the info a `KalmanInfo`
    whose `log_likelihood` is the pseudo-likelihood log N(y; h(v_hat), H B H^T + Gamma).

    Example:
        >>> # DAPPER's Var3D on Lorenz-96: B = xB * climatological covariance
        >>> flt = kx.ThreeDVar(0.02 * jnp.cov(free_run.T))
        >>> final, history = kx.assimilate(model, flt, ys)
        >>> flt = kx.ThreeDVar(kx.ScalarCovariance(0.1, 40))              # B = 0.1 I
        >>> flt = kx.ThreeDVar(FourierCovariance(64, beta=0.5, alpha=2.0))  # Navier-Stokes
    """

    background_cov: AbstractCovariance
    n_iterations: int = eqx.field(static=True)

    def __init__(self, background_cov, n_iterations: int = 10):
        self.background_cov = as_background(background_cov)
        if isinstance(n_iterations, (bool, np.bool_)) or not isinstance(n_iterations, (int, np.integer)):
            raise TypeError(f"`n_iterations` must be a Python int; got {type(n_iterations).__name__}")
        if n_iterations < 1:
            raise ValueError(f"`n_iterations` must be >= 1; got {n_iterations}")
        self.n_iterations = int(n_iterations)

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`): the model type, the size
        and dtype of `background_cov` against the state."""
        if not isinstance(model, (StateSpaceModel, LinearGaussianSSM)):
            raise TypeError(f"ThreeDVar needs a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
        dx = model.state_dim
        if self.background_cov.dim != dx:
            raise ValueError(
                f"`background_cov` has size {self.background_cov.dim} but the model's state has size {dx} "
                f"(a {type(self.background_cov).__name__} of size {self.background_cov.dim}; it must be {dx})"
            )
        if self.background_cov.dtype != model.dtype:
            raise TypeError(
                f"dtype mix: `background_cov` is {self.background_cov.dtype} but the model's arrays are {model.dtype}"
            )

    def init(self, model, key=None) -> ThreeDVarState:
        """Start from the model's prior mean m_0 (`init_mean`)."""
        self.check_model(model)
        return ThreeDVarState(model.init_mean)

    def forecast(self, model, state: ThreeDVarState, key=None) -> ThreeDVarState:
        """v_hat = Psi(v): the model's dynamics, no noise."""
        dynamics, _, _ = _model_parts(model)
        return ThreeDVarState(dynamics(state.mean))

    def analysis(self, model, state: ThreeDVarState, y: Float[Array, " dy"], key=None):
        """The 3DVAR analysis of y_{n+1} (NaN entries are missing).

        Returns:
            (ThreeDVarState, KalmanInfo).
        """
        self.check_model(model)
        _, observation, obs_cov = _model_parts(model)
        y = jnp.asarray(y)
        if y.shape != (observation.obs_dim,):
            raise ValueError(f"`y` must have shape ({observation.obs_dim},) to match the model; got {tuple(y.shape)}")
        if y.dtype != state.mean.dtype:
            raise TypeError(f"dtype mix: `y` is {y.dtype} but the state is {state.mean.dtype}")
        mask = jnp.isfinite(y)
        target = jnp.where(mask, y, 0.0)
        both = mask[:, None] & mask[None, :]
        eye = jnp.eye(y.shape[0], dtype=y.dtype)
        # Missing entries: decoupled, unit variance (as `masked_observation_model`).
        gamma = jnp.where(both, obs_cov.matrix(), eye)
        background = self.background_cov
        forecast = state.mean

        def solve(cross, obs_block, innovation):
            """Given B H^T (d, dy), H B H^T (dy, dy) and an innovation, return the
            increment B H^T S^{-1} innovation, L_S^{-1} innovation and L_S."""
            cross = jnp.where(mask[None, :], cross, 0.0)
            innov_cov = symmetrize(jnp.where(both, obs_block, 0.0) + gamma)
            chol = jnp.linalg.cholesky(innov_cov)
            innovation = jnp.where(mask, innovation, 0.0)
            whitened = solve_lower(chol, innovation)
            weights = jsl.solve_triangular(chol, whitened, lower=True, trans="T")
            return cross @ weights, whitened, chol

        n_observed = jnp.sum(mask).astype(jnp.int32)
        if isinstance(observation, (LinearObservation, IndexObservation)):
            if isinstance(observation, IndexObservation):
                idx = np.asarray(observation.indices)
                if isinstance(background, DenseCovariance):
                    cross = background.covariance[:, idx]
                else:
                    cross = background.mv(_one_hot_columns(idx, forecast.shape[0], forecast.dtype))
                obs_block = cross[idx, :]
            else:
                matrix = jnp.where(mask[:, None], observation.matrix, 0.0)
                cross = background.mv(matrix.T)
                obs_block = matrix @ cross
            increment, whitened, chol = solve(cross, obs_block, target - observation(forecast))
            mean = forecast + increment
            status = analysis_status(chol, mean)
        else:
            mean, whitened, chol, all_pd = self._gauss_newton(observation, background, forecast, target, mask, solve)
            status = analysis_status(jnp.where(all_pd, chol, jnp.nan), mean)
        info = KalmanInfo(innovation_log_likelihood(whitened, chol, n_observed), n_observed, status,
                          jnp.sum(whitened**2))
        return ThreeDVarState(mean), info

    def _gauss_newton(self, observation, background, forecast, target, mask, solve):
        dx, dy = forecast.shape[0], target.shape[0]
        # Forward mode costs dx JVPs, reverse mode dy VJPs: take the cheaper one.
        jacobian = jax.jacfwd(observation) if dx <= dy else jax.jacrev(observation)

        def step(iterate):
            predicted = observation(iterate)
            obs_matrix = jnp.where(mask[:, None], jacobian(iterate), 0.0)
            cross = background.mv(obs_matrix.T)
            innovation = target - predicted - obs_matrix @ (forecast - iterate)
            increment, whitened, chol = solve(cross, obs_matrix @ cross, innovation)
            return forecast + increment, whitened, chol

        # The first step linearises at the forecast: its innovation statistics give
        # the (pseudo-)likelihood N(y; h(v_hat), H B H^T + Gamma).
        iterate, whitened, chol = step(forecast)
        all_pd = jnp.all(jnp.isfinite(chol))

        def body(_, carry):
            iterate, all_pd = carry
            new, _, chol_k = step(iterate)
            return new, all_pd & jnp.all(jnp.isfinite(chol_k))

        iterate, all_pd = jax.lax.fori_loop(1, self.n_iterations, body, (iterate, all_pd))
        return iterate, whitened, chol, all_pd
