"""Fixed-step time integrators and the model flow over one observation interval.

A model is written for ONE state (a vector) and exposes its vector field
`model.vector_field(state)` for the autonomous ODE dy/dt = f(y). An
integrator is a small `eqx.Module` holding the step `dt` (a traced float leaf,
so it can be vmapped or differentiated) and the number of steps (a static int).
`Flow(model, integrator)` is the map Psi of the state-space model: the state
after one observation interval, `integrator.n_steps * integrator.dt` time
units. It is what a filter's `dynamics` is.

    flow = Flow(Lorenz96(), RK4(dt=0.05, n_steps=1))
    x1 = flow(x0)                      # one interval
    xs = trajectory(flow, x0, 1000)    # (1001, 40): x0 and 1000 intervals

Where an adaptive or stochastic solver is wanted, use diffrax with
`diffrax.ODETerm(lambda t, y, args: model.vector_field(y))`; none is written here.
"""

from __future__ import annotations

import abc
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from . import _params


def _axpy(a, x, y):
    """y + a * x leaf by leaf, with the scalar `a` cast to each leaf's dtype."""
    return jax.tree_util.tree_map(lambda xi, yi: yi + a.astype(yi.dtype) * xi, x, y)


def rk4_step(vector_field, state: PyTree, dt) -> PyTree:
    """One step of the classic fourth-order Runge-Kutta method for dy/dt = f(y).

        k1 = f(y), k2 = f(y + dt/2 k1), k3 = f(y + dt/2 k2), k4 = f(y + dt k3),
        y_new = y + dt/6 (k1 + 2 k2 + 2 k3 + k4).

    The local error is O(dt^5), the global error O(dt^4) (Butcher 2016,
    "Numerical Methods for Ordinary Differential Equations", sec. 23). This is
    the scheme of DAPPER's `rk4` (one step per `dt`).

    Args:
        vector_field: callable f(state) -> d state / dt, same structure and dtypes.
        state: an array (or pytree of arrays) y.
        dt: scalar step (Python float or traced scalar); cast to the state's dtype.

    Returns:
        The state after one step, same structure, shapes and dtypes as `state`.
    """
    dt = jnp.asarray(dt)
    half = 0.5 * dt
    k1 = vector_field(state)
    k2 = vector_field(_axpy(half, k1, state))
    k3 = vector_field(_axpy(half, k2, state))
    k4 = vector_field(_axpy(dt, k3, state))
    increment = jax.tree_util.tree_map(lambda a, b, c, d: a + 2 * b + 2 * c + d, k1, k2, k3, k4)
    return _axpy(dt / 6, increment, state)


def _check_step(dt, n_steps):
    dt = _params.as_parameter("dt", dt)
    _params.check_positive("dt", dt)
    n_steps = _params.as_size("n_steps", n_steps, 1)
    return dt, n_steps


def _repeat(step, state, n_steps: int):
    """Apply `step` n_steps times (a lax.scan, so reverse-mode grad works)."""
    if n_steps == 1:
        return step(state)

    def body(carry, _):
        return step(carry), None

    final, _ = jax.lax.scan(body, state, None, length=n_steps)
    return final


class AbstractEnsembleVectorField(eqx.Module):
    """Capability of a model: its vector field for a whole ensemble at once.

    `ensemble_vector_field(states)` takes the members on the fast (last) axis,
    states (d, J), and returns d states / dt (d, J), equal to the vector field
    of each column. On a CPU, XLA vectorises this layout several times better
    than a `vmap` of the one-state field (a Lorenz-96 `jnp.roll` then moves
    contiguous rows of J members); `Flow.ensemble` uses it when a model has it.
    """

    @abc.abstractmethod
    def ensemble_vector_field(self, states: Float[Array, "d J"]) -> Float[Array, "d J"]:
        """d states / dt for the members in the columns of `states`."""


class AbstractPeriodicStencil(AbstractEnsembleVectorField):
    """Capability of a model on a periodic 1-D grid: the field at row i depends only on
    the rows i - halo_before .. i + halo_after (Lorenz-96: 2 before, 1 after).

    `stencil_vector_field(extended, first_row)` evaluates the field on rows
    first_row .. first_row + n - 1 (indices modulo d) of an ensemble in columns, from
    `extended` (n + halo_before + halo_after, J), the rows first_row - halo_before ..
    first_row + n - 1 + halo_after. `RK4` then takes each step on one periodic
    extension of the members by 4 halos: every stage is plain slices and arithmetic,
    which XLA:CPU compiles to one vectorised loop, instead of rebuilding the periodic
    neighbours (a concatenation, whose fused form branches per element) at each of the
    four stages; measured 2.6-8x faster than DAPPER's NumPy step at d >= 4,000 in CPU
    time, where the per-stage form was 0.3-2.5x (benchmarks/results/forecast.md).
    """

    halo_before: eqx.AbstractClassVar[int]
    halo_after: eqx.AbstractClassVar[int]

    @abc.abstractmethod
    def stencil_vector_field(self, extended: Float[Array, "n_ext J"], first_row: int) -> Float[Array, "n J"]:
        """The field on rows first_row .. first_row + n - 1 from their extended rows."""



def periodic_rows(states: Float[Array, "d ..."], before: int, after: int) -> Float[Array, "n ..."]:
    """The rows -before .. d - 1 + after of `states` (d, ...), indices modulo d."""
    dim = states.shape[0]
    if before <= dim and after <= dim:
        return jnp.concatenate([states[dim - before :], states, states[:after]], axis=0)
    return jnp.take(states, np.arange(-before, dim + after) % dim, axis=0)


def rk4_periodic_step(model: AbstractPeriodicStencil, states: Float[Array, "d J"], dt) -> Float[Array, "d J"]:
    """`rk4_step` of `model.ensemble_vector_field` on states (d, J), the same arithmetic
    element by element, from one periodic extension of the states by four halos: stage s
    (s = 1..4) is evaluated on the rows -(4-s) halo_before .. d - 1 + (4-s) halo_after."""
    before, after = model.halo_before, model.halo_after
    dim = states.shape[0]
    dt = jnp.asarray(dt).astype(states.dtype)
    half = 0.5 * dt
    extended = periodic_rows(states, 4 * before, 4 * after)

    def halos(count):  # rows -count*before .. d-1+count*after of the states
        start = (4 - count) * before
        return extended[start : start + dim + count * (before + after)]

    k1 = model.stencil_vector_field(extended, -3 * before)
    k2 = model.stencil_vector_field(halos(3) + half * k1, -2 * before)
    k3 = model.stencil_vector_field(halos(2) + half * k2, -before)
    k4 = model.stencil_vector_field(halos(1) + dt * k3, 0)
    increment = (k1[3 * before : 3 * before + dim] + 2 * k2[2 * before : 2 * before + dim]
                 + 2 * k3[before : before + dim] + k4)
    return states + (dt / 6) * increment


class AbstractEnsembleDynamics(eqx.Module):
    """Capability of a model's map Psi: `ensemble(members)` applies it to every row of
    members (J, d) at once (the ensemble filters' forecast uses it instead of a `vmap`)."""

    @abc.abstractmethod
    def __call__(self, state):
        """Psi(state) for one state (d,)."""

    @abc.abstractmethod
    def ensemble(self, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """Psi of each row of `members`."""


def map_members(dynamics, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
    """Psi of each row of `members`: in one call for `AbstractEnsembleDynamics` (members on
    the fast axis of a batched field), else a `vmap` of the one-state map."""
    if isinstance(dynamics, AbstractEnsembleDynamics):
        return dynamics.ensemble(members)
    return jax.vmap(dynamics)(members)


def tangent_linear(dynamics, state: Float[Array, " d"], directions: Float[Array, "K d"]):
    """Psi(state) and the tangent-linear images Psi'(state) t of the rows t of `directions`
    (K, d), by forward-mode differentiation in one batched pass.

    For `AbstractEnsembleDynamics` (a `Flow` of Lorenz-96, ...) the JVP of `ensemble` at K
    copies of `state` carries the directions as members (on the fast axis of a batched
    vector field): measured 6-12x faster than a `vmap` of `jax.jvp` for the (40, 40)
    Jacobian of a Lorenz-96 flow on a CPU. Otherwise a `vmap` of `jax.jvp` over the rows.

    Returns:
        (Psi(state) (d,), images (K, d)).
    """
    if isinstance(dynamics, AbstractEnsembleDynamics):
        copies = jnp.broadcast_to(state, directions.shape)
        moved, images = jax.jvp(dynamics.ensemble, (copies,), (directions,))
        return moved[0], images
    moved = dynamics(state)
    images = jax.vmap(lambda direction: jax.jvp(dynamics, (state,), (direction,))[1])(directions)
    return moved, images


class AbstractIntegrator(eqx.Module):
    """Maps a model and a state to the state one observation interval later.

    Subclasses implement `integrate(model, state)`; `Flow` calls it.
    `integrate_ensemble(model, members)` maps an ensemble (J, d); by default a
    `vmap` of `integrate`.
    """

    @abc.abstractmethod
    def integrate(self, model, state):
        """The state after the integrator's interval, for `model`."""

    def integrate_ensemble(self, model, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """`integrate` of every row of `members`."""
        return jax.vmap(lambda state: self.integrate(model, state))(members)


class RK4(AbstractIntegrator):
    """Classic RK4 with a fixed step: `n_steps` steps of size `dt`.

    Args:
        dt: step size (> 0); a float leaf, so `jax.grad`/`vmap` over it work.
        n_steps: number of steps per call (static int >= 1); one call spans
            n_steps * dt time units (one observation interval).
        adjoint: differentiate `integrate` / `integrate_ensemble` in reverse mode by the
            discrete adjoint of the RK4 steps (a custom VJP: each step's four stages
            are recomputed from its start and their adjoints run backward; Hairer,
            Norsett & Wanner, sec. II.17; Sandu 2006) instead of reverse mode through
            the scan: the same gradient to round-off, measured 3.4x the forward run
            instead of 6-11x on an ensemble of Lorenz-96 forecasts on a CPU. Forward
            mode (`jax.jvp`, `jax.jacfwd`, hence the EKF) is then not available: keep
            the default False for those.

    Example:
        >>> rk4 = RK4(dt=0.01, n_steps=25)           # Lorenz-63 of Sakov et al. (2012)
        >>> x1 = rk4(Lorenz63().vector_field, x0)
    """

    dt: Float[Array, ""]
    n_steps: int = eqx.field(static=True)
    adjoint: bool = eqx.field(static=True)

    def __init__(self, dt, n_steps: int = 1, adjoint: bool = False):
        self.dt, self.n_steps = _check_step(dt, n_steps)
        self.adjoint = bool(adjoint)

    def __call__(self, vector_field, state):
        """Integrate dy/dt = vector_field(y) from `state` over n_steps * dt."""
        return _repeat(lambda y: rk4_step(vector_field, y, self.dt), state, self.n_steps)

    def _run(self, field, model, state):
        if self.adjoint:
            # strong-typed copies of the model's float leaves (a weakly typed scalar, e.g.
            # the gradient variable of a Python float, would reach the custom VJP as a literal)
            model = jax.tree_util.tree_map(
                lambda leaf: jnp.array(leaf, dtype=leaf.dtype) if eqx.is_inexact_array(leaf) else leaf, model
            )
            return _rk4_adjoint((model, self.dt, state), field, self.n_steps)
        return self(lambda y: field(model, y), state)

    def integrate(self, model, state):
        return self._run(_one_state_field, model, state)

    def integrate_ensemble(self, model, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """For a model with `ensemble_vector_field` (an `AbstractEnsembleVectorField`), the same
        RK4 steps on the transposed members (d, J), members on the fast axis; else a `vmap`."""
        if not isinstance(model, AbstractEnsembleVectorField):
            return super().integrate_ensemble(model, members)
        if isinstance(model, AbstractPeriodicStencil) and not self.adjoint:
            jax.eval_shape(model.ensemble_vector_field, members.T)  # the model's checks, no computation
            return _repeat(lambda y: rk4_periodic_step(model, y, self.dt), members.T, self.n_steps).T
        return self._run(_ensemble_field, model, members.T).T


def _one_state_field(model, state):
    return model.vector_field(state)


def _ensemble_field(model, states):
    return model.ensemble_vector_field(states)


def _rk4_steps(field, model, dt, state, n_steps):
    """The RK4 steps, and the state at the start of each (n_steps, ...)."""

    def step(y, _):
        return rk4_step(lambda x: field(model, x), y, dt), y

    return jax.lax.scan(step, state, None, length=n_steps)


@eqx.filter_custom_vjp
def _rk4_adjoint(inputs, field, n_steps):
    model, dt, state = inputs
    return _rk4_steps(field, model, dt, state, n_steps)[0]


@_rk4_adjoint.def_fwd
def _rk4_adjoint_forward(perturbed, inputs, field, n_steps):
    model, dt, state = inputs
    final, starts = _rk4_steps(field, model, dt, state, n_steps)
    return final, starts


def _add(a, b):
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)


@_rk4_adjoint.def_bwd
def _rk4_adjoint_backward(starts, cotangent, perturbed, inputs, field, n_steps):
    """The discrete adjoint of the RK4 steps (module docstring of `RK4`): each step's stages
    are recomputed from its start, linearised once, and their adjoints run backward."""
    model, dt, _ = inputs
    dt = dt.astype(starts.dtype)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def vjp_at(point):
        value, pullback = eqx.filter_vjp(lambda p, x: field(eqx.combine(p, static), x), params, point)
        return value, pullback

    def step(carry, start):
        adjoint, grad_params, grad_dt = carry
        k1, pull1 = vjp_at(start)
        k2, pull2 = vjp_at(start + (dt / 2) * k1)
        k3, pull3 = vjp_at(start + (dt / 2) * k2)
        k4, pull4 = vjp_at(start + dt * k3)
        g4, n4 = pull4((dt / 6) * adjoint)
        g3, n3 = pull3((dt / 3) * adjoint + dt * n4)
        g2, n2 = pull2((dt / 3) * adjoint + (dt / 2) * n3)
        g1, n1 = pull1((dt / 6) * adjoint + (dt / 2) * n2)
        # y' = y + dt/6 (k1 + 2 k2 + 2 k3 + k4), stage points y + dt/2 k1, y + dt/2 k2, y + dt k3
        grad_dt = (grad_dt + jnp.sum(adjoint * (k1 + 2 * k2 + 2 * k3 + k4)) / 6
                   + jnp.sum(n2 * k1) / 2 + jnp.sum(n3 * k2) / 2 + jnp.sum(n4 * k3))
        return (adjoint + n1 + n2 + n3 + n4, _add(grad_params, _add(_add(g1, g2), _add(g3, g4))), grad_dt), None

    zero_params = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry = (cotangent, zero_params, jnp.zeros((), starts.dtype))
    (adjoint, grad_params, grad_dt), _ = jax.lax.scan(step, carry, starts, reverse=True)
    return (grad_params, grad_dt.astype(inputs[1].dtype), adjoint)


class AbstractSemilinearModel(eqx.Module):
    """A model dz/dt = L z + N(z) in a basis where the linear part L is diagonal.

    For stiff linear parts (viscosity in a spectral PDE) `IntegratingFactorRK4`
    treats L exactly. Subclasses implement the four methods below, and also
    `vector_field(state)` so that plain `RK4` works too.
    """

    @abc.abstractmethod
    def to_spectral(self, state):
        """The state in the basis where L is diagonal (z)."""

    @abc.abstractmethod
    def from_spectral(self, z):
        """Inverse of `to_spectral`."""

    @abc.abstractmethod
    def spectral_linear(self, z):
        """The diagonal of L as a real array broadcastable against z."""

    @abc.abstractmethod
    def spectral_nonlinear(self, z):
        """N(z), the rest of the vector field (including any forcing), same shape as z."""


class IntegratingFactorRK4(AbstractIntegrator):
    """Integrating-factor RK4 (Lawson 1967) for dz/dt = L z + N(z), L diagonal.

    With v = exp(-L t) z, dv/dt = exp(-L t) N(exp(L t) v) is integrated by the
    classic RK4; in terms of z, with E = exp(L dt / 2):

        k1 = N(z)
        k2 = N(E (z + dt/2 k1))
        k3 = N(E z + dt/2 k2)
        k4 = N(E^2 z + dt E k3)
        z_new = E^2 z + dt/6 (E^2 k1 + 2 E (k2 + k3) + k4).

    The linear part (viscous decay) is exact, so the step is limited by the
    nonlinear term (advective CFL) only; with L = 0 this is the classic RK4.
    Fourth order (Lawson, "Generalized Runge-Kutta processes for stable systems
    with large Lipschitz constants", SIAM J. Numer. Anal. 4, 1967). The state is
    transformed once per call, not once per step.

    Args:
        dt: step size (> 0), a float leaf.
        n_steps: steps per call (static int >= 1).

    The model must be an `AbstractSemilinearModel` (for example `NavierStokes2D`).

    Example:
        >>> flow = Flow(NavierStokes2D(64), IntegratingFactorRK4(dt=0.01, n_steps=20))
    """

    dt: Float[Array, ""]
    n_steps: int = eqx.field(static=True)

    def __init__(self, dt, n_steps: int = 1):
        self.dt, self.n_steps = _check_step(dt, n_steps)

    def integrate(self, model, state):
        if not isinstance(model, AbstractSemilinearModel):
            raise TypeError(
                "IntegratingFactorRK4 needs a model with a diagonal linear part "
                f"(an AbstractSemilinearModel such as NavierStokes2D); got {type(model).__name__}. "
                "Use RK4 for other models."
            )
        z = model.to_spectral(state)
        real_dtype = jnp.real(z).dtype
        dt = self.dt.astype(real_dtype)
        half = jnp.exp(model.spectral_linear(z).astype(real_dtype) * (0.5 * dt)).astype(z.dtype)
        full = half * half
        dt_c = dt.astype(z.dtype)
        nonlinear = model.spectral_nonlinear

        def step(z):
            k1 = nonlinear(z)
            k2 = nonlinear(half * (z + (0.5 * dt_c) * k1))
            k3 = nonlinear(half * z + (0.5 * dt_c) * k2)
            k4 = nonlinear(full * z + dt_c * (half * k3))
            return full * z + (dt_c / 6) * (full * k1 + 2 * half * (k2 + k3) + k4)

        return model.from_spectral(_repeat(step, z, self.n_steps))


class Flow(AbstractEnsembleDynamics):
    """The model flow over one observation interval: Psi(v) in v_{n+1} = Psi(v_n) + xi_n.

    `Flow(model, integrator)(state)` integrates `model` with `integrator` from
    `state` (one state; vmap over an ensemble) and returns the state one
    interval later, same shape and dtype. Both fields are pytrees, so model
    parameters and `dt` are differentiable leaves of the flow.

    Attributes:
        model: a model with `vector_field(state)` (Lorenz63, Lorenz96, NavierStokes2D, ...).
        integrator: an `AbstractIntegrator` (`RK4`, `IntegratingFactorRK4`).

    Example:
        >>> flow = Flow(Lorenz63(), RK4(dt=0.01, n_steps=25))   # observe every 0.25 time units
        >>> x1 = flow(jnp.array([1.509, -1.531, 25.46]))
        >>> xs = jax.vmap(flow)(ensemble)                          # (J, 3)

    A Flow holds arrays, so it is not hashable: compile it with
    `eqx.filter_jit(flow)` or `jax.jit(lambda x: flow(x))`, or pass it as an
    argument, `jax.jit(lambda flow, x: flow(x))(flow, x)`, not `jax.jit(flow)`.
    """

    model: eqx.Module
    integrator: AbstractIntegrator

    def __check_init__(self):
        if not isinstance(self.integrator, AbstractIntegrator):
            raise TypeError(
                f"`integrator` must be an AbstractIntegrator such as RK4(dt, n_steps); "
                f"got {type(self.integrator).__name__}"
            )

    @property
    def interval(self) -> Float[Array, ""]:
        """Length in time units of one observation interval, n_steps * dt."""
        return self.integrator.n_steps * self.integrator.dt

    def __call__(self, state):
        return self.integrator.integrate(self.model, state)

    def ensemble(self, members: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """The flow of every member (J, d) (batched layout where the model allows: see
        `AbstractEnsembleVectorField`)."""
        return self.integrator.integrate_ensemble(self.model, members)


def trajectory(flow, state, n_intervals: int):
    """States at the start and after each of `n_intervals` applications of `flow`.

    Args:
        flow: callable state -> state (typically a `Flow`).
        state: initial state (d,) (or a pytree).
        n_intervals: static number of intervals (>= 0).

    Returns:
        Array (n_intervals + 1, d): row 0 is `state`, row t is flow applied t times.
    """
    n_intervals = _params.as_size("n_intervals", n_intervals, 0)

    def body(carry, _):
        new = flow(carry)
        return new, new

    _, states = jax.lax.scan(body, state, None, length=n_intervals)
    return jax.tree_util.tree_map(lambda x0, xs: jnp.concatenate([x0[None], xs], axis=0), state, states)


def substeps(dynamics):
    """(one model time step, steps per observation interval) of a model's map Psi.

    A `Flow` whose integrator takes `n_steps` fixed steps per call (`RK4`,
    `IntegratingFactorRK4`) is split into its steps: Psi is the one-step flow applied
    `n_steps` times, exactly (DAPPER's model time steps `dt` between observation times,
    where its "universal" statistics are taken). Any other map is one step: (dynamics, 1).
    """
    if isinstance(dynamics, Flow) and isinstance(dynamics.integrator, (RK4, IntegratingFactorRK4)):
        n_steps = dynamics.integrator.n_steps
        return Flow(dynamics.model, dataclasses.replace(dynamics.integrator, n_steps=1)), n_steps
    return dynamics, 1
