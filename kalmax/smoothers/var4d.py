"""Strong-constraint 4D-Var, cycled over a sliding window (DAPPER's `Var4D`).

A window of L = `lag` cycles runs from v_s (s = max(0, n + 1 - L)) to the newest
observation time v_{n+1} (`kalmax.smoothers.window`); each window assimilates its newest
observation y_{n+1}. With the background x_0 at the window's start (the previous window's
smoothed start, moved one cycle) and a fixed background covariance B = B^{1/2} B^{T/2}, the
start is sought as x_0 + B^{1/2} w minimising

    J(w) = 1/2 |w|^2 + 1/2 |y_{n+1} - h(M(x_0 + B^{1/2} w))|^2_Gamma,

M the (perfect) model through the window (Talagrand & Courtier 1987; Lorenc 1986's
variational form over a time window). The gradient and the Jacobians come from automatic
differentiation of the model (no hand-written tangent-linear or adjoint code). Solvers:

- `"gauss-newton"` (default, DAPPER's): each iteration forms the whitened Jacobian
  Y = Gamma^{-1/2} H M' B^{1/2} (p x d, forward mode) and steps
  w <- w + (Y^T Y + I)^{-1} (Y^T dy - w): the incremental form with the inner quadratic
  problem solved exactly, relinearised every outer iteration.
- `"incremental"`: the same outer loop, the inner problem (I + Y^T Y) dw = Y^T dy - w
  solved matrix-free by conjugate gradients (`jax.scipy.sparse.linalg.cg`) with
  `jax.linearize` (tangent-linear) and its transpose (adjoint): nothing d x d or p x d is
  formed, for large models.
- `"lbfgs"`: L-BFGS on the nonlinear J(w) directly (`optax.lbfgs` with its zoom line
  search), gradient by reverse mode.

The iterations stop when |dw|^2 < wtol d (or after `n_iter`). The filtered analysis of
v_{n+1} is DAPPER's: the last forecast plus the tangent-linear image of the last
increment (Gauss-Newton, incremental), or the forecast of the minimiser (L-BFGS). The
smoothed start x_0 + B^{1/2} w is the estimate of v_s; the window then slides.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

from .. import _checks
from ..assimilate import assimilate
from ..ensemble.algebra import whitener
from ..filters.base import AbstractFilter
from ..filters.gaussian_update import innovation_log_likelihood
from ..filters.var3d import as_background
from ..history import Save
from ..linalg import solve_lower
from ..models.integrators import tangent_linear
from ..results import RESULTS
from ..ssm import LinearGaussianSSM, StateSpaceModel, as_state_space_model, n_times
from .base import AbstractSmoother
from .ensemble import EnsembleSmootherResult
from .window import slide, through_window

SOLVERS = ("gauss-newton", "incremental", "lbfgs")


class FourDVarState(eqx.Module):
    """The 4D-Var state between cycles.

    Attributes:
        start: (d,) the background at the start of the next window.
        mean: (d,) the newest state's estimate: the forecast after `forecast`, the
            filtered analysis after `analysis`.
        cycle: cycles done (int32).
        finished: (d,) the smoothed start of the last window, v_s (its `lagged_mean`).
    """

    start: Float[Array, " d"]
    mean: Float[Array, " d"]
    cycle: Int[Array, ""]
    finished: Float[Array, " d"]


class FourDVarInfo(eqx.Module):
    """Per-cycle diagnostics of 4D-Var.

    Attributes:
        log_likelihood: log N(y_{n+1}; h(x_f), Gamma^{1/2} (Y Y^T + I) Gamma^{T/2}) with the
            first iteration's linearisation Y (the window's forecast uncertainty B pushed
            through the tangent-linear model).
        n_observed: observed entries of y_{n+1}.
        status: result code (`RESULTS.NOT_CONVERGED` when `strict` and the iterations ended
            above `wtol`).
        nis: normalised innovation squared with the same covariance.
        n_iterations: outer iterations done.
        increment: |dw|^2 / d of the last iteration.
        converged: whether the last increment was below `wtol`.
        lagged_mean: (d,) the smoothed estimate of the window's start v_s.
    """

    log_likelihood: Float[Array, ""]
    n_observed: Int[Array, ""]
    status: Int[Array, ""]
    nis: Float[Array, ""]
    n_iterations: Int[Array, ""]
    increment: Float[Array, ""]
    converged: Bool[Array, ""]
    lagged_mean: Float[Array, " d"]


def _check_differentiable(model) -> None:
    """A clear error, before tracing, when the model's step cannot be differentiated."""
    try:
        jax.eval_shape(lambda x: jax.jvp(model.dynamics, (x,), (x,)), model.init_mean)
        jax.eval_shape(lambda x: jax.jvp(model.observe, (x,), (x,)), model.init_mean)
    except Exception as err:  # noqa: BLE001 - any failure to trace a JVP is the user's model
        raise ValueError(
            "FourDVar differentiates the model (tangent-linear and adjoint by automatic differentiation), but "
            f"`model.dynamics` or the observation cannot be differentiated by JAX: {type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}. Write the step in JAX (no NumPy or callbacks), or use an ensemble "
            "method (IEnKS, EnKS) that needs no derivatives"
        ) from None


class FourDVar(AbstractFilter, AbstractSmoother):
    """Strong-constraint 4D-Var over a sliding window (module docstring).

    Attributes:
        background_cov: B, a (d, d) array or covariance operator (e.g. `xB` times
            `kx.climatology_cov`, as for `ThreeDVar`).
        lag: the window length in cycles L >= 1 (static).
        n_iter: the most outer iterations per window (static, >= 1).
        wtol: stop when |dw|^2 < wtol d (0: always `n_iter`).
        solver: `"gauss-newton"`, `"incremental"` or `"lbfgs"` (static).
        n_inner: the most conjugate-gradient iterations of the incremental solver per outer
            iteration (static; CG stops earlier at a relative residual of eps^0.8).
        strict: report `RESULTS.NOT_CONVERGED` (so `assimilate` raises) for a window whose
            iterations end above `wtol` (with `wtol > 0`).

    Example:
        >>> B = 0.1 * kx.climatology_cov(model, key, 5000)
        >>> final, history = kx.assimilate(model, kx.FourDVar(B, lag=2), ys)   # filtered analyses
        >>> smoothed = kx.smooth(model, kx.FourDVar(B, lag=2), ys)              # and smoothed ones
    """

    background_cov: object
    lag: int = eqx.field(static=True)
    n_iter: int = eqx.field(static=True)
    wtol: Float[Array, ""]
    solver: str = eqx.field(static=True)
    n_inner: int = eqx.field(static=True)
    strict: bool = eqx.field(static=True)

    stochastic: ClassVar[bool] = False

    def __init__(self, background_cov, lag: int = 1, n_iter: int = 10, wtol=0.0, solver: str = "gauss-newton",
                 n_inner: int = 20, strict: bool = False):
        self.background_cov = as_background(background_cov)
        for name, value in (("lag", lag), ("n_iter", n_iter), ("n_inner", n_inner)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
        if solver not in SOLVERS:
            raise ValueError(f"`solver` must be one of {', '.join(SOLVERS)}; got {solver!r}")
        wtol = _checks.as_float_array("wtol", wtol)
        if wtol.ndim != 0 or (_checks.is_concrete(wtol) and not float(wtol) >= 0.0):
            raise ValueError(f"`wtol` must be a number >= 0; got {wtol}")
        self.lag, self.n_iter, self.n_inner, self.solver = lag, n_iter, n_inner, solver
        self.wtol = wtol
        self.strict = bool(strict)

    # -- checks ----------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """A time-invariant, perfect, differentiable model whose size matches B."""
        if not isinstance(model, (StateSpaceModel, LinearGaussianSSM)):
            raise TypeError(f"`model`: FourDVar needs a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
        if n_times(model) is not None:
            raise ValueError("`model` has `TimeVarying` fields; FourDVar's window spans several cycles and needs a "
                             "time-invariant model")
        model = self.prepare_model(model)
        if not model.dynamics_cov.is_zero():
            raise ValueError("FourDVar is strong-constraint (a perfect model): `model.dynamics_cov` must be zero")
        if self.background_cov.dim != model.state_dim:
            raise ValueError(f"`background_cov` is {self.background_cov.dim} x {self.background_cov.dim} but the state "
                             f"has {model.state_dim} components")
        _check_differentiable(model)

    def prepare_model(self, model):
        return as_state_space_model(model) if isinstance(model, LinearGaussianSSM) else model

    # -- the filter contract ---------------------------------------------------------------

    def init(self, model, key=None) -> FourDVarState:
        model = self.prepare_model(model)
        return FourDVarState(model.init_mean, model.init_mean, jnp.zeros((), jnp.int32), model.init_mean)

    def forecast(self, model, state: FourDVarState, key=None) -> FourDVarState:
        """The background start moved through the window: the forecast of the newest state."""
        model = self.prepare_model(model)
        return FourDVarState(state.start, through_window(model.dynamics, state.start, state.cycle, self.lag),
                             state.cycle, state.finished)

    def analysis(self, model, state: FourDVarState, y, key=None) -> tuple[FourDVarState, FourDVarInfo]:
        model = self.prepare_model(model)
        y = jnp.asarray(y)
        dim, dtype = state.start.shape[0], state.start.dtype
        mask = jnp.isfinite(y)
        whiten, logdet_obs = whitener(model.obs_cov, mask)
        target = jnp.where(mask, y, 0.0)
        background = self.background_cov
        start = state.start

        def forecast(w):  # the newest state of the window from the start x_0 + B^{1/2} w
            return through_window(model.dynamics, start + background.sqrt_mv(w), state.cycle, self.lag)

        def residual(x):  # whitened innovation Gamma^{-1/2} (y - h(x)), zero where missing
            return whiten(jnp.where(mask, target - model.observe(x), 0.0))

        sqrt_background = background.sqrt_mv(jnp.eye(dim, dtype=dtype))  # B^{1/2}, (d, d)

        def move_tangents(pair):  # (x, V) -> (M(x), M'(x) V) for the rows of V, one cycle
            return tangent_linear(model.dynamics, *pair)

        def linearised(w):  # (x, dy, Y, X): forecast, whitened innovation and Jacobians at w
            # X = M' B^{1/2}: the columns of B^{1/2} moved through the window as tangents
            x, moved = through_window(move_tangents, (start + background.sqrt_mv(w), sqrt_background.T), state.cycle,
                                      self.lag)
            state_matrix = moved.T
            obs_jacobian = jax.jacfwd(model.observe)(x)
            return x, residual(x), whiten((obs_jacobian @ state_matrix).T).T, state_matrix

        # the first linearisation also gives the innovation statistics
        first_linearisation = linearised(jnp.zeros(dim, dtype))
        _, dy_first, y_first, _ = first_linearisation
        innovation_cov = y_first @ y_first.T + jnp.eye(y.shape[0], dtype=dtype)
        chol = jnp.linalg.cholesky(jnp.where(mask[:, None] & mask[None, :], innovation_cov, jnp.eye(y.shape[0],
                                                                                                      dtype=dtype)))
        whitened = solve_lower(chol, dy_first)
        n_observed = jnp.sum(mask).astype(jnp.int32)
        log_likelihood = innovation_log_likelihood(whitened, chol, n_observed) - 0.5 * logdet_obs

        if self.solver == "lbfgs":
            w, analysis, count, dw = self._lbfgs(forecast, residual, dim, dtype)
        else:
            w, analysis, count, dw = self._newton(forecast, residual, linearised, first_linearisation, dim, dtype)
        increment = dw @ dw / dim
        converged = dw @ dw < self.wtol * dim
        smoothed = start + background.sqrt_mv(w)
        finite = jnp.all(jnp.isfinite(analysis)) & jnp.all(jnp.isfinite(smoothed))
        status = jnp.where(~finite, RESULTS.NON_FINITE, RESULTS.SUCCESSFUL)
        if self.strict:
            status = jnp.where(finite & ~converged & (self.wtol > 0), RESULTS.NOT_CONVERGED, status)
        info = FourDVarInfo(log_likelihood=log_likelihood, n_observed=n_observed, status=status.astype(jnp.int32),
                            nis=jnp.sum(whitened**2), n_iterations=count, increment=increment, converged=converged,
                            lagged_mean=smoothed)
        next_start = slide(model.dynamics, smoothed, state.cycle, self.lag)
        return FourDVarState(next_start, analysis, state.cycle + 1, smoothed), info

    def finished_estimate(self, state: FourDVarState) -> FourDVarState:
        """The smoothed start of the last window, v_{n+1-L} once the window is full
        (`info.lagged_mean`), as the state's `mean`."""
        return eqx.tree_at(lambda s: s.mean, state, state.finished)

    def _newton(self, forecast, residual, linearised, first_linearisation, dim: int, dtype):
        """Gauss-Newton outer iterations, the inner problem solved exactly or by CG."""
        identity = jnp.eye(dim, dtype=dtype)

        def step(w, linearisation=None):
            if self.solver == "gauss-newton":
                # the first step reuses the linearisation the innovation statistics took
                x, dy, jacobian, state_matrix = linearised(w) if linearisation is None else linearisation
                normal = jacobian.T @ jacobian + identity
                dw = jnp.linalg.solve(normal, jacobian.T @ dy - w)
                return dw, x + state_matrix @ dw
            x, state_tangent = jax.linearize(forecast, w)
            _, obs_tangent = jax.linearize(residual, x)  # -Gamma^{-1/2} H dx

            def jacobian(v):
                return -obs_tangent(state_tangent(v))

            adjoint = jax.linear_transpose(jacobian, w)
            dy = residual(x)

            def normal(v):
                return v + adjoint(jacobian(v))[0]

            rhs = adjoint(dy)[0] - w
            tolerance = float(jnp.finfo(dtype).eps) ** 0.8  # relative residual: 3e-13 in float64, 3e-6 in float32
            dw, _ = jax.scipy.sparse.linalg.cg(normal, rhs, tol=tolerance, maxiter=self.n_inner)
            return dw, x + state_tangent(dw)

        w0 = jnp.zeros(dim, dtype)
        dw, analysis = step(w0, first_linearisation)
        loop = (w0 + dw, dw, analysis, dw @ dw < self.wtol * dim, jnp.ones((), jnp.int32))

        def iterate(loop, _):
            w, dw, analysis, converged, count = loop

            def advance(_):
                new_dw, new_analysis = step(w)
                return (w + new_dw, new_dw, new_analysis, new_dw @ new_dw < self.wtol * dim, count + 1)

            return jax.lax.cond(converged, lambda _: loop, advance, None), None

        if self.n_iter > 1:
            loop, _ = jax.lax.scan(iterate, loop, None, length=self.n_iter - 1)
        w, dw, analysis, _, count = loop
        return w, analysis, count, dw

    def _lbfgs(self, forecast, residual, dim: int, dtype):
        """L-BFGS on J(w) = |w|^2 / 2 + |dy(w)|^2 / 2 (optax), gradient by reverse mode."""

        def cost(w):
            return 0.5 * (w @ w + jnp.sum(residual(forecast(w)) ** 2))

        optimizer = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(cost)
        w0 = jnp.zeros(dim, dtype)

        def iterate(carry, _):
            w, opt_state, dw, converged, count = carry

            def advance(_):
                value, grad = value_and_grad(w, state=opt_state)
                updates, new_state = optimizer.update(grad, opt_state, w, value=value, grad=grad, value_fn=cost)
                new_w = optax.apply_updates(w, updates)
                step = new_w - w
                return (new_w, new_state, step, step @ step < self.wtol * dim, count + 1)

            return jax.lax.cond(converged, lambda _: carry, advance, None), None

        # optax's L-BFGS mixes int32 and int64 indices, which JAX's strict dtype promotion
        # (a user's choice) refuses: trace it under the standard rules
        with jax.numpy_dtype_promotion("standard"):
            carry = (w0, optimizer.init(w0), jnp.full(dim, jnp.inf, dtype), jnp.zeros((), bool),
                     jnp.zeros((), jnp.int32))
            (w, _, dw, _, count), _ = jax.lax.scan(iterate, carry, None, length=self.n_iter)
        return w, forecast(w), count, dw

    # -- the smoother contract -------------------------------------------------------------

    def run(self, model, ys, key=None, init_state=None) -> EnsembleSmootherResult:
        """Filtered and smoothed means (`mean[n]` is v_{n+1}; the last `lag` states are the
        final window's smoothed start moved forward); `spread` is None (no ensemble)."""
        model = self.prepare_model(model)
        n_cycles = ys.shape[0]
        final, filtered = assimilate(model, self, ys, save=Save(), throw=False, init_state=init_state)
        from_windows = filtered.info.lagged_mean[self.lag - 1:]
        n_rest = n_cycles - max(0, n_cycles - self.lag + 1)

        def forward(x, _):
            moved = model.dynamics(x)
            return moved, moved

        _, rest = jax.lax.scan(forward, final.start, None, length=n_rest)
        means = jnp.concatenate([from_windows, final.start[None], rest], axis=0)
        return EnsembleSmootherResult(
            mean=means[1:], spread=None, init_mean=means[0], filtered=filtered,
            log_likelihood=jnp.sum(filtered.info.log_likelihood),
        )


__all__ = ["FourDVar", "FourDVarInfo", "FourDVarState", "SOLVERS"]
