"""State-space models: the user's model, kept separate from the methods.

    v_{n+1} = M_n v_n + b_n + xi_n,        xi_n    ~ N(0, Sigma_n)
    y_{n+1} = H_n v_{n+1} + d_n + eta_{n+1}, eta_{n+1} ~ N(0, Gamma_n)
    v_0 ~ N(m_0, C_0).

Time convention (DESIGN.md): cycle n = 0, ..., T-1 forecasts v_n -> v_{n+1}
and then assimilates y_{n+1}; `ys[n]` is y_{n+1}. A time-varying quantity is
given explicitly as `TimeVarying(values)` with `values[n]` used in cycle n:
nothing is guessed from the number of dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, Float

from . import _checks
from .covariance import as_covariance
from .models.integrators import AbstractEnsembleDynamics
from .observations import LinearObservation, as_observation


class TimeVarying(eqx.Module):
    """A model quantity that changes from cycle to cycle.

    `values[n]` is used in cycle n (forecast v_n -> v_{n+1}, then analysis of
    y_{n+1}), so `values` has a leading time axis of length T = len(ys).

    Example:
        >>> dynamics = kx.TimeVarying(jnp.stack([rotation(0.1 * n) for n in range(T)]))
    """

    values: Float[Array, "T ..."]

    def __init__(self, values):
        self.values = _checks.as_float_array("TimeVarying.values", values)
        if self.values.ndim < 1:
            raise ValueError("`TimeVarying.values` needs a leading time axis; got a scalar")

    @property
    def n_times(self) -> int:
        return self.values.shape[0]

    @property
    def step_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])


def _is_time_varying(x) -> bool:
    return isinstance(x, TimeVarying)


def step_shape(x) -> tuple[int, ...]:
    """Shape of one cycle's value of a field that may be `TimeVarying`."""
    return x.step_shape if isinstance(x, TimeVarying) else tuple(x.shape)


def _step_value(x):
    return x.values[0] if isinstance(x, TimeVarying) else x


def n_times(model) -> int | None:
    """Length of the time axis of a model's `TimeVarying` fields (None if none).

    Raises:
        ValueError: if two time-varying fields disagree on their length.
    """
    lengths = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_time_varying)[0]:
        if isinstance(leaf, TimeVarying):
            lengths[jax.tree_util.keystr(path)] = leaf.n_times
    if not lengths:
        return None
    if len(set(lengths.values())) > 1:
        raise ValueError(f"time-varying fields disagree on the number of cycles: {lengths}")
    return next(iter(lengths.values()))


def split_time_varying(model) -> tuple[Any, Any]:
    """Split a model into (time-varying part, constant part) for `lax.scan`.

    The first is a pytree whose leaves have a leading time axis (scan over it as
    `xs`); `merge_time_step` puts one cycle's slice back into the model.
    """
    return eqx.partition(model, _is_time_varying, is_leaf=_is_time_varying)


def merge_time_step(varying_step, constant):
    """Recombine one cycle's slice of the time-varying part with the constant part."""
    merged = eqx.combine(varying_step, constant, is_leaf=_is_time_varying)
    return jax.tree_util.tree_map(
        lambda x: x.values if isinstance(x, TimeVarying) else x, merged, is_leaf=_is_time_varying
    )


def model_at(model, n):
    """The model of cycle n: every `TimeVarying` field replaced by its values[n]."""
    return jax.tree_util.tree_map(
        lambda x: x.values[n] if isinstance(x, TimeVarying) else x, model, is_leaf=_is_time_varying
    )


class AbstractStateSpaceModel(eqx.Module):
    """What every state-space model shares: its dtype and its time axis (`TimeVarying` fields).

    Subclasses have the field `init_mean` (dx,). (Required fields are documented rather than
    declared as `eqx.AbstractVar`: under `from __future__ import annotations` equinox would
    make such a declaration a field of the base.)
    """


    @property
    def dtype(self):
        return self.init_mean.dtype

    @property
    def n_times(self) -> int | None:
        """Number of cycles fixed by `TimeVarying` fields, or None if time-invariant."""
        return n_times(self)

    def at(self, n):
        """The model of cycle n (every `TimeVarying` field replaced by its n-th value)."""
        return model_at(self, n)


class LinearGaussianSSM(AbstractStateSpaceModel):
    """Linear-Gaussian state-space model (every array a differentiable leaf).

        v_{n+1} = dynamics v_n + dynamics_offset + xi_n,   xi_n  ~ N(0, dynamics_cov)
        y_{n+1} = observation v_{n+1} + obs_offset + eta,   eta   ~ N(0, obs_cov)
        v_0 ~ N(init_mean, init_cov)

    Args:
        dynamics: (dx, dx) matrix M, or `TimeVarying` (T, dx, dx).
        observation: (dy, dx) matrix H, or `TimeVarying` (T, dy, dx).
        dynamics_cov: (dx, dx) covariance Sigma (positive semi-definite), or `TimeVarying`.
        obs_cov: (dy, dy) covariance Gamma, or `TimeVarying`.
        init_mean: (dx,) prior mean m_0 of v_0.
        init_cov: (dx, dx) prior covariance C_0 of v_0.
        dynamics_offset: optional (dx,) offset b (a control term B u_n), or `TimeVarying` (T, dx).
        obs_offset: optional (dy,) offset d, or `TimeVarying` (T, dy).

    All arrays must share one floating dtype. Shapes, symmetry, finiteness and
    positive semi-definiteness are checked here (values only when concrete).

    Example:
        >>> model = kx.LinearGaussianSSM(
        ...     dynamics=jnp.eye(2), observation=jnp.eye(1, 2),
        ...     dynamics_cov=0.1 * jnp.eye(2), obs_cov=jnp.eye(1),
        ...     init_mean=jnp.zeros(2), init_cov=jnp.eye(2))
        >>> final, history = kx.assimilate(model, kx.KalmanFilter(), ys)
    """

    dynamics: Float[Array, "dx dx"] | TimeVarying
    observation: Float[Array, "dy dx"] | TimeVarying
    dynamics_cov: Float[Array, "dx dx"] | TimeVarying
    obs_cov: Float[Array, "dy dy"] | TimeVarying
    init_mean: Float[Array, " dx"]
    init_cov: Float[Array, "dx dx"]
    dynamics_offset: Float[Array, " dx"] | TimeVarying | None = None
    obs_offset: Float[Array, " dy"] | TimeVarying | None = None

    def __init__(
        self,
        dynamics,
        observation,
        dynamics_cov,
        obs_cov,
        init_mean,
        init_cov,
        dynamics_offset=None,
        obs_offset=None,
    ):
        def convert(name, value):
            if value is None or isinstance(value, TimeVarying):
                return value
            return _checks.as_float_array(name, value)

        self.dynamics = convert("dynamics", dynamics)
        self.observation = convert("observation", observation)
        self.dynamics_cov = convert("dynamics_cov", dynamics_cov)
        self.obs_cov = convert("obs_cov", obs_cov)
        self.init_mean = convert("init_mean", init_mean)
        self.init_cov = convert("init_cov", init_cov)
        self.dynamics_offset = convert("dynamics_offset", dynamics_offset)
        self.obs_offset = convert("obs_offset", obs_offset)
        self._validate()

    def _fields(self):
        return [
            ("dynamics", self.dynamics),
            ("observation", self.observation),
            ("dynamics_cov", self.dynamics_cov),
            ("obs_cov", self.obs_cov),
            ("init_mean", self.init_mean),
            ("init_cov", self.init_cov),
            ("dynamics_offset", self.dynamics_offset),
            ("obs_offset", self.obs_offset),
        ]

    def _validate(self) -> None:
        if isinstance(self.init_mean, TimeVarying) or isinstance(self.init_cov, TimeVarying):
            raise TypeError("`init_mean` and `init_cov` describe v_0 and cannot be `TimeVarying`")
        _checks.check_ndim("init_mean", self.init_mean, 1, "a vector (dx,)")
        dx = self.init_mean.shape[0]
        dyn = step_shape(self.dynamics)
        if dyn != (dx, dx):
            raise ValueError(
                f"`dynamics` must have shape {(dx, dx)} per cycle to match `init_mean` {(dx,)}; got {dyn}"
            )
        obs = step_shape(self.observation)
        if len(obs) != 2 or obs[1] != dx:
            raise ValueError(
                f"`observation` must have shape (dy, {dx}) per cycle to match `init_mean` {(dx,)}; got {obs}"
            )
        dy = obs[0]
        for name, value, dim, partner in [
            ("init_cov", self.init_cov, dx, "`init_mean`"),
            ("dynamics_cov", self.dynamics_cov, dx, "`init_mean`"),
            ("obs_cov", self.obs_cov, dy, "`observation`"),
        ]:
            if isinstance(value, TimeVarying):
                if value.step_shape != (dim, dim):
                    raise ValueError(
                        f"`{name}` must have shape {(dim, dim)} per cycle to match {partner}; "
                        f"got {value.step_shape}"
                    )
                _checks.check_finite(f"{name}.values", value.values)
            else:
                _checks.check_covariance(name, value, dim, f"to match {partner}")
        for name, value, dim in [("dynamics_offset", self.dynamics_offset, dx), ("obs_offset", self.obs_offset, dy)]:
            if value is not None and step_shape(value) != (dim,):
                raise ValueError(f"`{name}` must have shape {(dim,)} per cycle; got {step_shape(value)}")
        for name, value in [("dynamics", self.dynamics), ("observation", self.observation)]:
            _checks.check_finite(name, value.values if isinstance(value, TimeVarying) else value)
        _checks.check_finite("init_mean", self.init_mean)
        arrays = [
            (n, v.values if isinstance(v, TimeVarying) else v) for n, v in self._fields() if v is not None
        ]
        _checks.check_same_dtype(arrays)
        n_times(self)  # raises if time-varying lengths disagree

    @property
    def state_dim(self) -> int:
        return self.init_mean.shape[0]

    @property
    def obs_dim(self) -> int:
        return step_shape(self.observation)[0]

    # -- the pieces a filter needs, for one (time-invariant) cycle ---------------------

    def predict_mean(self, mean: Float[Array, " dx"]) -> Float[Array, " dx"]:
        """M v + b."""
        out = self.dynamics @ mean
        return out if self.dynamics_offset is None else out + self.dynamics_offset

    def observe_mean(self, mean: Float[Array, " dx"]) -> Float[Array, " dy"]:
        """H v + d."""
        out = self.observation @ mean
        return out if self.obs_offset is None else out + self.obs_offset


class LinearDynamics(AbstractEnsembleDynamics):
    """v -> M v (+ b): linear dynamics as a callable, for nonlinear-model methods."""

    matrix: Float[Array, "dx dx"]
    offset: Float[Array, " dx"] | None = None

    def __call__(self, state):
        out = self.matrix @ state
        return out if self.offset is None else out + self.offset

    def ensemble(self, members):
        """M v (+ b) for each row of members (J, dx): one matrix product."""
        out = members @ self.matrix.T
        return out if self.offset is None else out + self.offset


class StateSpaceModel(AbstractStateSpaceModel):
    """A (possibly nonlinear) state-space model for one state; methods vmap it.

        v_{n+1} = Psi(v_n) + xi_n,       xi_n ~ N(0, Sigma)
        y_{n+1} = h(v_{n+1}) + eta,      eta  ~ N(0, Gamma)
        v_0 ~ N(m_0, C_0)

    Args:
        dynamics: Psi, a callable mapping one state (dx,) to the state one
            observation interval later (dx,), e.g.
            `kalmax.models.Flow(Lorenz96(), RK4(dt=0.05, n_steps=1))`. Use an
            `equinox.Module` so its parameters are differentiable leaves.
        observation: h: a (dy, dx) matrix, an `IndexObservation`, or a callable.
        dynamics_cov: Sigma: None (no model noise), a (dx, dx) array, or a
            covariance operator (`DiagonalCovariance`, `ScalarCovariance`, ...).
        obs_cov: Gamma: a (dy, dy) array or a covariance operator.
        init_mean: (dx,) mean m_0 of v_0.
        init_cov: C_0: a (dx, dx) array or a covariance operator.

    Diagonal and scalar covariances are stored as such (a diagonal of size 10^5
    is never densified). The dynamics and observation are checked once on
    `init_mean` with `jax.eval_shape` (nothing is computed).

    Example:
        >>> from kalmax.models import Lorenz96, Flow, RK4
        >>> model = kx.StateSpaceModel(
        ...     dynamics=Flow(Lorenz96(40), RK4(dt=0.05, n_steps=1)),
        ...     observation=jnp.eye(40), dynamics_cov=None,
        ...     obs_cov=jnp.eye(40), init_mean=jnp.zeros(40).at[0].set(1.0),
        ...     init_cov=kx.ScalarCovariance(1e-3, 40))
    """

    dynamics: Callable
    observation: Any
    dynamics_cov: Any
    obs_cov: Any
    init_mean: Float[Array, " dx"]
    init_cov: Any

    def __init__(self, dynamics, observation, dynamics_cov, obs_cov, init_mean, init_cov):

        self.init_mean = _checks.as_float_array("init_mean", init_mean)
        _checks.check_ndim("init_mean", self.init_mean, 1, "a vector (dx,)")
        _checks.check_finite("init_mean", self.init_mean)
        dx, dtype = self.init_mean.shape[0], self.init_mean.dtype
        if not callable(dynamics):
            raise TypeError(f"`dynamics` must be a callable mapping a state ({dx},) to ({dx},); got {type(dynamics).__name__}")
        try:
            out = jax.eval_shape(dynamics, self.init_mean)
        except Exception as err:  # noqa: BLE001 - report the user's error with context
            raise ValueError(f"`dynamics` failed on a state of shape ({dx},): {err}") from err
        if getattr(out, "shape", None) != (dx,):
            raise ValueError(
                f"`dynamics` must return the shape of its input ({dx},); got {getattr(out, 'shape', type(out))}"
            )
        if out.dtype != dtype:
            raise TypeError(f"dtype mix: `dynamics` returns {out.dtype} for a {dtype} state")
        self.dynamics = dynamics
        self.observation = as_observation(observation, self.init_mean)
        if isinstance(self.observation, LinearObservation) and self.observation.matrix.dtype != dtype:
            raise TypeError(f"dtype mix: `observation` is {self.observation.matrix.dtype} but `init_mean` is {dtype}")
        dy = self.observation.obs_dim
        self.dynamics_cov = as_covariance("dynamics_cov", dynamics_cov, dx, dtype)
        self.obs_cov = as_covariance("obs_cov", obs_cov, dy, dtype, allow_zero=False)
        self.init_cov = as_covariance("init_cov", init_cov, dx, dtype)

    @property
    def state_dim(self) -> int:
        return self.init_mean.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observation.obs_dim

    def observe(self, state):
        """h(v) for one state (dx,)."""
        return self.observation(state)


def as_state_space_model(model) -> StateSpaceModel:
    """View a `LinearGaussianSSM` (time-invariant) as a `StateSpaceModel`, so that
    nonlinear methods (EKF, UKF, 3DVAR, EnKF) run on it; a `StateSpaceModel` is returned as is."""
    if isinstance(model, StateSpaceModel):
        return model
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"`model` must be a StateSpaceModel or LinearGaussianSSM; got {type(model).__name__}")
    if model.n_times is not None:
        raise ValueError("a time-varying LinearGaussianSSM cannot be viewed as a StateSpaceModel; use model.at(n)")

    return StateSpaceModel(
        dynamics=LinearDynamics(model.dynamics, model.dynamics_offset),
        observation=LinearObservation(model.observation, model.obs_offset),
        dynamics_cov=model.dynamics_cov,
        obs_cov=model.obs_cov,
        init_mean=model.init_mean,
        init_cov=model.init_cov,
    )
