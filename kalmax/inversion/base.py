"""The contract every inversion method keeps, and what the ensemble methods share.

An inversion method is an `equinox.Module` whose fields are its
hyperparameters, with pure methods, as a filter is (kalmax.filters.base):

    state = method.init(problem, key)                        # from the prior
    points = method.ask(state)                               # (n, d) physical parameters to evaluate
    state = method.tell(problem, state, outputs, key)        # outputs: (n, p) forward runs
    state = method.step(problem, state, key)                 # ask + evaluate G inside jit + tell

`kx.invert` (and `kx.invert_external`) owns the loop over iterations and
reports why it ended with a code of `kalmax.RESULTS`. Capabilities are
declared by the type: the class variable `needs_key` (whether `tell` draws
random numbers, so that a key is required: the filters' `stochastic`, named
apart from EKI's own `stochastic` field), `final_time()` (where a run ends by
itself), `enough_successes` (how many forward runs must succeed).

A method's state keeps, besides its ensemble (or mean and covariance), the
algorithmic time t_n, the iteration count, and diagnostics of the last
`tell`: the data misfit |L^{-1}(y - mean G)|^2 of the told outputs, the step
taken, and why each member failed (codes in `problem.py`).

Failed members (non-finite output, the problem's `failed_if`, or a forward run
that raised) are handled as EnsembleKalmanProcesses.jl's `SampleSuccGauss`:
the update uses the successful members only, and the failed ones are redrawn
from the Gaussian with the mean and empirical covariance of the updated
successful members, drawn from their deviations (no matrix square root).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .constraints import Bounds
from .problem import InverseProblem, successes
from .schedulers import StepContext


class EnsembleInversionState(eqx.Module):
    """The state of an ensemble inversion method (EKI, ETKI, EKS).

    Attributes:
        members: (J, d) unconstrained members u_j.
        bounds: the problem's `Bounds` (so that `ask(state)` returns physical parameters).
        time: t_n = h_0 + ... + h_{n-1}.
        iteration: n, the number of updates so far.
        misfit: |L^{-1}(y - mean G)|^2 of the outputs told last (NaN before the first tell).
        failures: (J,) failure codes of the members told last (0: success).
        step_size: h of the last update (NaN before the first).
    """

    members: Float[Array, "J d"]
    bounds: Bounds
    time: Float[Array, ""]
    iteration: Int[Array, ""]
    misfit: Float[Array, ""]
    failures: Int[Array, " J"]
    step_size: Float[Array, ""]

    @property
    def size(self) -> int:
        return self.members.shape[0]

    @property
    def ensemble(self) -> Float[Array, "J d"]:
        """The members in physical space, theta_j = T(u_j)."""
        return self.bounds.constrain(self.members)

    @property
    def mean(self) -> Float[Array, " d"]:
        """Mean of the unconstrained members."""
        return self.members.mean(axis=0)

    @property
    def cov(self) -> Float[Array, "d d"]:
        """Empirical (ddof = 1) covariance of the unconstrained members."""
        anomalies = self.members - self.mean
        return anomalies.T @ anomalies / (self.size - 1)


class AbstractInversion(eqx.Module):
    """An inversion method: `init`, `ask`, `tell` (abstract), `step`, and the summaries `invert`
    records (see the module docstring).

    Class variables:
        needs_key: whether `tell` draws random numbers (perturbations, redraws of failed members),
            so that `invert` requires a key. Default True.
        success_requirement: what `enough_successes` asks, in words (for error messages).
    """

    needs_key: ClassVar[bool] = True
    success_requirement: ClassVar[str] = "at least two successful forward runs are needed to update"

    @abc.abstractmethod
    def init(self, problem: InverseProblem, key, members=None): ...

    @abc.abstractmethod
    def ask(self, state) -> Float[Array, "n d"]:
        """The physical parameter vectors on which to evaluate the forward model."""

    @abc.abstractmethod
    def tell(self, problem: InverseProblem, state, outputs, key=None, failures=None): ...

    @abc.abstractmethod
    def evaluation_points(self, state) -> Float[Array, "n d"]:
        """The unconstrained points whose outputs `tell` expects."""

    @abc.abstractmethod
    def summary(self, state) -> tuple[Float[Array, " d"], Float[Array, " d"], Float[Array, " d"]]:
        """(mean of u, marginal variances of u, physical mean) of a state."""

    @abc.abstractmethod
    def n_points(self, problem: InverseProblem) -> int:
        """How many forward runs one iteration asks for."""

    def final_time(self) -> float:
        """The algorithmic time at which a run ends by itself (inf: never). Default: never."""
        return math.inf

    def fixed_iterations(self) -> int | None:
        """The number of iterations that completes the method (ES-MDA: one per alpha), which
        `invert` then runs as a fixed, differentiable scan; None (default): no such number."""
        return None

    def enough_successes(self, failures) -> jax.Array:
        """Whether enough forward runs succeeded to update (ensembles: at least two)."""
        return jnp.sum(failures == 0) >= 2

    def step(self, problem: InverseProblem, state, key=None):
        """One iteration with the forward model evaluated (vmapped) inside the trace."""
        outputs = problem.evaluate(self.evaluation_points(state))
        return self.tell(problem, state, outputs, key)

    def data_misfit(self, problem: InverseProblem, outputs, success) -> Float[Array, ""]:
        """|L^{-1}(y - mean G)|^2 over the successful outputs."""
        weights = success.astype(outputs.dtype)
        safe = jnp.where(success[:, None], outputs, 0.0)
        mean = weights @ safe / jnp.maximum(weights.sum(), 1.0)
        return jnp.sum(problem.whiten((problem.y - mean)[None, :]) ** 2)


def check_ensemble_size(size) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"`ensemble_size` must be an int; got {type(size).__name__}")
    if size < 2:
        raise ValueError(f"`ensemble_size` must be at least 2 (an ensemble needs two members for a covariance); got {size}")


def checked_tell_inputs(problem: InverseProblem, state, size: int, outputs, failures):
    """The argument checks of an ensemble method's `tell`: (outputs (J, p), per-member failure
    codes (J,): the problem's own codes where `failures` gives none)."""
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"`problem` must be a kalmax InverseProblem; got {type(problem).__name__}")
    if state.members.shape != (size, problem.parameter_dim):
        raise ValueError(
            f"`state.members` must have shape ({size}, {problem.parameter_dim}); "
            f"got {tuple(state.members.shape)} (was the state made by this method and problem?)"
        )
    return checked_outputs_and_failures(problem, outputs, failures, size)


def checked_outputs_and_failures(problem: InverseProblem, outputs, failures, count: int, each: str = ""):
    """The `count` forward outputs (count, p) checked by the problem, and one failure code per
    run: the problem's own (non-finite outputs) where `failures` gives 0 or is None. `each`
    words the shape error's note (e.g. " (one code a sigma point)")."""
    outputs = problem.check_outputs(outputs, count)
    codes = problem.member_failures(outputs)
    if failures is not None:
        failures = jnp.asarray(failures, jnp.int32)
        if failures.shape != (count,):
            raise ValueError(f"`failures` must have shape ({count},){each}; got {tuple(failures.shape)}")
        codes = jnp.where(failures != 0, failures, codes)
    return outputs, codes


def initial_state(problem: InverseProblem, size: int, key, members=None) -> EnsembleInversionState:
    """Members drawn from the prior (or given, unconstrained, shape (size, d))."""
    dtype = problem.dtype
    if members is None:
        if key is None:
            raise ValueError("init draws the initial ensemble from the prior: a `key` is required (or pass `members`)")
        members = problem.prior.sample(key, size)
    else:
        members = jnp.asarray(members)
        if members.shape != (size, problem.parameter_dim):
            raise ValueError(
                f"`members` must have shape ({size}, {problem.parameter_dim}) (ensemble_size, parameter dim); "
                f"got {tuple(members.shape)}"
            )
        members = members.astype(dtype)
    return EnsembleInversionState(
        members=members,
        bounds=problem.prior.bounds,
        time=jnp.zeros((), dtype),
        iteration=jnp.zeros((), jnp.int32),
        misfit=jnp.full((), jnp.nan, dtype),
        failures=jnp.zeros((size,), jnp.int32),
        step_size=jnp.full((), jnp.nan, dtype),
    )


class WhitenedEnsemble(eqx.Module):
    """Whitened ensemble quantities of one update, over the successful members only.

    With n successful members, Gamma = L L^T and C_0 = L_0 L_0^T:

        A_u = (u_j - mean u) / sqrt(n - 1)              (J, d)  zero rows for failed members
        S   = L^{-1}(G(u_j) - mean G) / sqrt(n - 1)     (J, p)
        r_j = L^{-1}(y - G(u_j))                        (J, p)

    With `tikhonov`, the data are augmented by the prior, y <- [y, m_0],
    G(u) <- [G(u), u], Gamma <- diag(Gamma, C_0) (Chada, Stuart & Tong 2020),
    which appends L_0^{-1}-whitened columns to S and r.
    """

    members: Float[Array, "J d"]
    success: Bool[Array, " J"]
    n_success: Float[Array, ""]
    mean: Float[Array, " d"]
    anomalies: Float[Array, "J d"]
    whitened_anomalies: Float[Array, "J q"]
    residuals: Float[Array, "J q"]
    context: StepContext

    @classmethod
    def build(cls, problem: InverseProblem, members, outputs, failures, time, tikhonov: bool = False):
        success = successes(failures)
        weights = success.astype(members.dtype)
        n = weights.sum()
        scale = jnp.sqrt(jnp.maximum(n - 1.0, 1.0))
        mean = weights @ members / jnp.maximum(n, 1.0)
        deviations = jnp.where(success[:, None], members - mean, 0.0)
        safe = jnp.where(success[:, None], outputs, 0.0)
        output_mean = weights @ safe / jnp.maximum(n, 1.0)
        output_anomalies = jnp.where(success[:, None], problem.whiten(safe - output_mean), 0.0)
        residuals = jnp.where(success[:, None], problem.whiten(problem.y - safe), 0.0)
        context = StepContext(residuals, output_anomalies, success, time)
        if tikhonov:
            output_anomalies = jnp.concatenate([output_anomalies, problem.prior_whiten(deviations)], axis=1)
            prior_residuals = jnp.where(success[:, None], problem.prior_whiten(problem.prior.mean - members), 0.0)
            residuals = jnp.concatenate([residuals, prior_residuals], axis=1)
        return cls(members, success, n, mean, deviations / scale, output_anomalies / scale, residuals, context)

    def mean_data_residual(self) -> Float[Array, " p"]:
        """Mean over the successful members of L^{-1}(y - G(u_j)) (without the Tikhonov rows)."""
        r = self.context.residuals
        return self.success.astype(r.dtype) @ r / jnp.maximum(self.n_success, 1.0)

    def mean_residual(self) -> Float[Array, " q"]:
        return self.success.astype(self.residuals.dtype) @ self.residuals / jnp.maximum(self.n_success, 1.0)

    def gram(self) -> Float[Array, "J J"]:
        """S S^T."""
        return self.whitened_anomalies @ self.whitened_anomalies.T


def resample_failed(key, members, success) -> Float[Array, "J d"]:
    """Replace failed rows by draws from N(mean, C) of the successful rows (C empirical, ddof = 1).

    A draw is mean + A^T z / sqrt(n - 1) with z ~ N(0, I_J) over the successful
    deviations A, which has exactly that Gaussian law without forming C. Skipped
    (a `lax.cond`) when every member succeeded.
    """

    def redraw(members):
        weights = success.astype(members.dtype)
        n = weights.sum()
        mean = weights @ members / jnp.maximum(n, 1.0)
        deviations = jnp.where(success[:, None], members - mean, 0.0)
        size = members.shape[0]
        z = jax.random.normal(key, (size, size), members.dtype) * weights[None, :]
        draws = mean + z @ deviations / jnp.sqrt(jnp.maximum(n - 1.0, 1.0))
        return jnp.where(success[:, None], members, draws)

    return jax.lax.cond(jnp.all(success), lambda m: m, redraw, members)
