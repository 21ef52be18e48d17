"""The continuous-time limit of deterministic EKI, integrated by an adaptive ODE solver.

Deterministic EKI with step h, u_j <- u_j + C^{uw} (C^{ww} + h^{-1} Gamma)^{-1} (y - G(u_j)),
is, as h -> 0, the Euler scheme of the EKI flow (Schillings & Stuart 2017,
"Analysis of the ensemble Kalman filter for inverse problems", SIAM J. Numer.
Anal. 55(3), eq. (2.4)):

    du_j/dt = -(1/J) sum_k <G(u_k) - G_bar, Gamma^{-1}(G(u_j) - y)> (u_k - u_bar),

that is du_j/dt = C^{uw}(u) Gamma^{-1} (y - G(u_j)). For a linear G = H it is the
preconditioned gradient flow du_j/dt = -C(u) grad Phi(u_j), Phi(u) = 1/2 |L^{-1}(y - H u)|^2,
the ensemble stays in the span of the initial one, and with J > d (a full-rank
initial ensemble) C(t)^{-1} = C(0)^{-1} + 2 H^T Gamma^{-1} H t, so the mean's error
in the range of H decays like t^{-1/2} and the data misfit (above its least-squares
minimum) like 1/t.

Computed in whitened ensemble form, as `eki.EKI` (Gamma = L L^T, N = J - ddof):

    S_k = L^{-1}(G(u_k) - G_bar) / sqrt(N),   A_k = (u_k - u_bar) / sqrt(N),   r_j = L^{-1}(y - G(u_j)),
    du_j/dt = sum_k <S_k, r_j> A_k,

a (J, J) matrix r S^T applied to A: cost O(J^2 (p + d)), nothing p x p or d x d.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from .problem import InverseProblem


class EKIFlowResult(eqx.Module):
    """What `eki_flow` returns.

    Attributes:
        ts: (T,) the save times.
        members: (T, J, d) the unconstrained members u_j(t) at the save times.
        misfit: (T,) the data misfit |L^{-1}(y - mean_j G(u_j(t)))|^2 at the save times.
        result: diffrax's `RESULTS` code (`diffrax.RESULTS.successful` when the solve succeeded).
        stats: diffrax's statistics (`num_steps`, `num_accepted_steps`, `num_rejected_steps`, ...).
    """

    ts: Float[Array, " T"]
    members: Float[Array, "T J d"]
    misfit: Float[Array, " T"]
    result: diffrax.RESULTS
    stats: dict

    @property
    def mean(self) -> Float[Array, "T d"]:
        """The ensemble mean of the unconstrained members at the save times."""
        return self.members.mean(axis=1)

    @property
    def succeeded(self):
        """Whether the solve reached t1 (a boolean array; `result` says why not)."""
        return self.result == diffrax.RESULTS.successful


def eki_velocity(problem: InverseProblem, members: Float[Array, "J d"], tikhonov: bool = False, ddof=1):
    """du_j/dt of the EKI flow for the (J, d) unconstrained `members`, (J, d).

    With `tikhonov`, the prior is appended to the data as in TEKI (Chada, Stuart &
    Tong 2020; see `base.EnsembleSpace`): y <- [y, m_0], G(u) <- [G(u), u],
    Gamma <- diag(Gamma, C_0), whose flow has the MAP estimate as its fixed point for linear G.
    """
    outputs = problem.evaluate(members)
    size = members.shape[0]
    deviations = members - members.mean(axis=0)
    anomalies = problem.whiten(outputs - outputs.mean(axis=0))
    residuals = problem.whiten(problem.y - outputs)
    if tikhonov:
        anomalies = jnp.concatenate([anomalies, problem.prior_whiten(deviations)], axis=1)
        residuals = jnp.concatenate([residuals, problem.prior_whiten(problem.prior.mean - members)], axis=1)
    coefficients = residuals @ anomalies.T  # (J, J): <r_j, S_k> before the 1/N
    return (coefficients @ deviations) / (size - ddof)


def _data_misfit(problem: InverseProblem, members):
    outputs = problem.evaluate(members)
    return jnp.sum(problem.whiten((problem.y - outputs.mean(axis=0))[None, :]) ** 2)


@eqx.filter_jit
def _solve(problem, members, t1, ts, solver, controller, adjoint, dt0, max_steps, throw, tikhonov, ddof):
    dtype = problem.dtype

    def vector_field(t, u, args):
        return eki_velocity(args, u, tikhonov, ddof)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=jnp.zeros((), dtype),
        t1=t1,
        dt0=dt0,
        y0=members,
        args=problem,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
    )
    saved = solution.ys
    misfit = jax.vmap(lambda u: _data_misfit(problem, u))(saved)
    return EKIFlowResult(ts=solution.ts, members=saved, misfit=misfit, result=solution.result, stats=solution.stats)


def eki_flow(
    problem: InverseProblem,
    members,
    t1,
    *,
    saveat=None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    dt0=None,
    max_steps: int = 4096,
    adjoint: diffrax.AbstractAdjoint | None = None,
    tikhonov: bool = False,
    ddof: int = 1,
    throw: bool = True,
) -> EKIFlowResult:
    """Integrate the continuous EKI flow du_j/dt = C^{uw} Gamma^{-1} (y - G(u_j)) from t = 0 to `t1`.

    Args:
        problem: the `InverseProblem` (a JAX-traceable `forward`); G is applied as
            `problem.evaluate` does, G(T(u)), to the unconstrained members.
        members: (J, d) initial unconstrained members (J >= 2), e.g. `problem.prior.sample(key, J)`.
        t1: the final time (> 0; may be traced, e.g. under `jax.grad`).
        saveat: (T,) non-decreasing times in [0, t1] at which to save; default (t1,).
        solver: a diffrax solver (default `diffrax.Tsit5()`).
        stepsize_controller: default `diffrax.PIDController(rtol, atol)` (adaptive);
            with `diffrax.ConstantStepSize()` give `dt0`.
        rtol: relative tolerance of the default controller.
        atol: absolute tolerance of the default controller.
        dt0: the first step (default: chosen by the controller).
        max_steps: the solver's step bound (diffrax's `max_steps`).
        adjoint: how to differentiate the solve (default diffrax's
            `RecursiveCheckpointAdjoint`: reverse mode through the steps).
        tikhonov: append the prior to the data (the TEKI flow).
        ddof: the covariances are normalised by 1/(J - ddof). The default 1 is the
            convention of `EKI` (ddof = 1 empirical covariances), so that deterministic
            `EKI` with `FixedStep(h)` run to time t tends to this flow at t as h -> 0;
            ddof = 0 is Schillings & Stuart's 1/J, the same flow in the time
            s = t J / (J - 1).
        throw: raise if the solve fails (diffrax's `throw`); with False read `result`.

    Returns:
        `EKIFlowResult(ts, members, misfit, result, stats)`.

    Example:
        >>> members = problem.prior.sample(key, 20)
        >>> sol = eki_flow(problem, members, 100.0, saveat=jnp.geomspace(1.0, 100.0, 10))
        >>> sol.misfit            # (10,): decays like 1/t for linear G and J > d
    """
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"`problem` must be a kalmax InverseProblem; got {type(problem).__name__}")
    if problem.forward is None:
        raise ValueError("`problem.forward` is None: the EKI flow evaluates G inside the solve (a JAX forward model)")
    dtype = problem.dtype
    members = _checks.as_float_array("members", members)
    if members.ndim != 2 or members.shape[1] != problem.parameter_dim or members.shape[0] < 2:
        raise ValueError(
            f"`members` must have shape (J, {problem.parameter_dim}) with J >= 2 (ensemble size, parameter dim); "
            f"got {tuple(members.shape)}"
        )
    members = members.astype(dtype)
    if not isinstance(ddof, int) or isinstance(ddof, bool) or not 0 <= ddof < members.shape[0]:
        raise ValueError(f"`ddof` must be an int in [0, J) = [0, {members.shape[0]}); got {ddof!r}")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int; got {max_steps!r}")
    t1 = jnp.asarray(t1).astype(dtype)
    if t1.shape != ():
        raise ValueError(f"`t1` must be a scalar; got shape {tuple(t1.shape)}")
    if _checks.is_concrete(t1) and not float(t1) > 0:
        raise ValueError(f"`t1` must be positive; got {float(t1)}")
    if saveat is None:
        ts = t1[None]
    else:
        ts = jnp.asarray(saveat).astype(dtype)
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"`saveat` must be a (T,) vector of times; got shape {tuple(ts.shape)}")
        if _checks.is_concrete(ts) and _checks.is_concrete(t1):
            values = np.asarray(ts)
            if np.any(np.diff(values) < 0) or values[0] < 0 or values[-1] > float(t1):
                raise ValueError(f"`saveat` must be non-decreasing times in [0, t1] = [0, {float(t1)}]; got {values}")
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver (e.g. diffrax.Tsit5()); got {type(solver).__name__}")
    if stepsize_controller is None:
        # array tolerances are traced, so another tolerance does not recompile
        stepsize_controller = diffrax.PIDController(rtol=jnp.asarray(rtol, dtype), atol=jnp.asarray(atol, dtype))
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    ddof = jnp.asarray(ddof, dtype)  # traced: ddof = 0 and 1 share one compilation
    return _solve(
        problem, members, t1, ts, solver, stepsize_controller, adjoint, dt0, max_steps, throw, tikhonov, ddof
    )
