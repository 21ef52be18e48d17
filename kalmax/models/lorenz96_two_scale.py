"""The two-scale Lorenz-96 system (Lorenz 1996), the test bed for learned closures."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _params


def _advection(ring):
    """x_{i-1} (x_{i+1} - x_{i-2}) on a periodic ring (jnp.roll(x, s)[i] = x[i - s])."""
    return jnp.roll(ring, 1) * (jnp.roll(ring, -1) - jnp.roll(ring, 2))


class Lorenz96TwoScale(eqx.Module):
    """Lorenz (1996) with K slow variables X_k, each coupled to J fast variables Y_{j,k}:

        dX_k/dt     = X_{k-1} (X_{k+1} - X_{k-2}) - X_k + F - (h c / b) sum_j Y_{j,k}
        dY_{j,k}/dt = c b Y_{j+1,k} (Y_{j-1,k} - Y_{j+2,k}) - c Y_{j,k} + (h c / b) X_k

    with periodic X (X_{-1} = X_{K-1}) and the fast variables on one ring of K J
    (Y_{J,k} = Y_{0,k+1}). The state is the vector [X_0..X_{K-1}, Y_{0,0}..Y_{J-1,0},
    Y_{0,1}, ...] of size K (J + 1). The defaults are Arnold, Moroz & Palmer
    (2013, Phil. Trans. R. Soc. A 371, 20110479) with c = 10: K = 8, J = 32, h = 1,
    b = 10, F = 20; the fast variables need a time step of about 0.001-0.005 with RK4.

    The one-scale model with a closure, `Lorenz96Closure`, replaces the coupling
    term by a learned function of the slow variables.

    Args:
        n_slow: K (static int >= 4).
        n_fast: J, fast variables per slow one (static int >= 1).
        coupling: h; time_scale: c; amplitude_scale: b; forcing: F (float leaves).
    """

    coupling: Float[Array, ""]
    time_scale: Float[Array, ""]
    amplitude_scale: Float[Array, ""]
    forcing: Float[Array, ""]
    n_slow: int = eqx.field(static=True)
    n_fast: int = eqx.field(static=True)

    def __init__(self, n_slow: int = 8, n_fast: int = 32, coupling=1.0, time_scale=10.0, amplitude_scale=10.0,
                 forcing=20.0):
        self.n_slow = _params.as_size("n_slow", n_slow, 4)
        self.n_fast = _params.as_size("n_fast", n_fast, 1)
        self.coupling = _params.as_parameter("coupling", coupling)
        self.time_scale = _params.as_parameter("time_scale", time_scale)
        self.amplitude_scale = _params.as_parameter("amplitude_scale", amplitude_scale)
        self.forcing = _params.as_parameter("forcing", forcing)
        _params.check_positive("time_scale", self.time_scale)
        _params.check_positive("amplitude_scale", self.amplitude_scale)

    @property
    def state_dim(self) -> int:
        return self.n_slow * (self.n_fast + 1)

    def split(self, state: Float[Array, " n"]) -> tuple[Float[Array, " K"], Float[Array, "K J"]]:
        """(X (K,), Y (K, J)) from the state vector."""
        return state[: self.n_slow], state[self.n_slow :].reshape(self.n_slow, self.n_fast)

    def coupling_term(self, state: Float[Array, " n"]) -> Float[Array, " K"]:
        """The fast variables' effect on the slow tendencies, -(h c / b) sum_j Y_{j,k} (K,):
        what a closure of the one-scale model approximates."""
        _, fast = self.split(state)
        dtype = state.dtype
        scale = self.coupling.astype(dtype) * self.time_scale.astype(dtype) / self.amplitude_scale.astype(dtype)
        return -scale * jnp.sum(fast, axis=1)

    def vector_field(self, state: Float[Array, " n"]) -> Float[Array, " n"]:
        """d state / dt for one state (K (J + 1),), in the state's dtype."""
        _params.check_state("state", state, (self.state_dim,), f"Lorenz96TwoScale({self.n_slow}, {self.n_fast})")
        dtype = state.dtype
        h, c, b, forcing = (p.astype(dtype) for p in (self.coupling, self.time_scale, self.amplitude_scale, self.forcing))
        slow = state[: self.n_slow]
        fast = state[self.n_slow :]  # one ring of K J
        slow_tendency = _advection(slow) - slow + forcing + self.coupling_term(state)
        # Y_{i+1} (Y_{i-1} - Y_{i+2}) = -[Y_{i+1} (Y_{i+2} - Y_{i-1})]
        fast_advection = jnp.roll(fast, -1) * (jnp.roll(fast, 1) - jnp.roll(fast, -2))
        fast_tendency = c * b * fast_advection - c * fast + (h * c / b) * jnp.repeat(slow, self.n_fast)
        return jnp.concatenate([slow_tendency, fast_tendency])


class Lorenz96Closure(eqx.Module):
    """The one-scale Lorenz-96 model with a closure g for the unresolved scales:

        dX_k/dt = X_{k-1} (X_{k+1} - X_{k-2}) - X_k + F + g(X_{k-1}, X_k, X_{k+1})

    with g one function shared by every k (applied with `vmap` to the local
    stencil), e.g. an `equinox.nn.MLP` mapping 3 inputs to a scalar, or None for
    no closure. Arnold, Moroz & Palmer (2013) fit a cubic polynomial in X_k
    alone; the stencil lets g also use the neighbours. Its parameters are leaves
    of this Module, so gradients through a filter reach them.

    Args:
        dim: K (static int >= 4).
        forcing: F (float leaf).
        closure: a callable mapping the stencil (3,) to a scalar (an eqx.Module to learn it), or None.
    """

    forcing: Float[Array, ""]
    closure: Callable | None
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int = 8, forcing=20.0, closure: Callable | None = None):
        self.dim = _params.as_size("dim", dim, 4)
        self.forcing = _params.as_parameter("forcing", forcing)
        if closure is not None and not callable(closure):
            raise TypeError(f"`closure` must be a callable (stencil (3,) -> scalar) or None; got {type(closure).__name__}")
        self.closure = closure

    @property
    def state_dim(self) -> int:
        return self.dim

    def closure_term(self, state: Float[Array, " K"]) -> Float[Array, " K"]:
        """g of each variable's stencil (K,) (zeros without a closure)."""
        if self.closure is None:
            return jnp.zeros_like(state)
        stencils = jnp.stack([jnp.roll(state, 1), state, jnp.roll(state, -1)], axis=1)  # (K, 3)
        values = jax.vmap(self.closure)(stencils)
        return jnp.reshape(values, state.shape).astype(state.dtype)

    def vector_field(self, state: Float[Array, " K"]) -> Float[Array, " K"]:
        """d state / dt for one state (K,), in the state's dtype."""
        _params.check_state("state", state, (self.dim,), f"Lorenz96Closure(dim={self.dim})")
        forcing = self.forcing.astype(state.dtype)
        return _advection(state) - state + forcing + self.closure_term(state)
