"""The Lorenz-96 system (Lorenz 1996), the standard scalable chaotic test bed."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _params
from .integrators import AbstractPeriodicStencil, periodic_rows


class Lorenz96(AbstractPeriodicStencil):
    """Lorenz (1996), "Predictability: a problem partly solved" (ECMWF seminar):

        dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F,   i = 0, ..., dim-1,

    with periodic indices (x_{-1} = x_{dim-1}, x_dim = x_0). The advection term
    conserves the energy 1/2 |x|^2, so d/dt (1/2 |x|^2) = -|x|^2 + sum_i F_i x_i.
    With dim = 40 and F = 8 (Lorenz & Emanuel 1998; the twin experiment of
    Sakov & Oke 2008 integrates with RK4, dt = 0.05) the system is chaotic with
    climatological mean about 2.3 and standard deviation about 3.6.

    Args:
        dim: number of variables (static int >= 4; fixes the state shape (dim,)).
        forcing: F, a scalar or a per-variable vector (dim,); a float leaf
            (differentiable), cast to the state's dtype when evaluated.

    Example:
        >>> flow = Flow(Lorenz96(dim=40, forcing=8.0), RK4(dt=0.05))
        >>> xs = trajectory(flow, x0, 1000)            # (1001, 40)
    """

    forcing: Float[Array, ""] | Float[Array, " dim"]
    dim: int = eqx.field(static=True)
    halo_before = 2
    halo_after = 1

    def __init__(self, dim: int = 40, forcing=8.0):
        self.dim = _params.as_size("dim", dim, 4)
        self.forcing = _params.as_parameter("forcing", forcing, ((), (self.dim,)))

    @property
    def state_dim(self) -> int:
        return self.dim

    def vector_field(self, state: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """d state / dt for one state (dim,), in the state's dtype."""
        _params.check_state("state", state, (self.dim,), f"Lorenz96(dim={self.dim})")
        forcing = self.forcing.astype(state.dtype)
        # jnp.roll(x, s)[i] = x[i - s]
        advection = (jnp.roll(state, -1) - jnp.roll(state, 2)) * jnp.roll(state, 1)
        return advection - state + forcing

    def ensemble_vector_field(self, states: Float[Array, "dim J"]) -> Float[Array, "dim J"]:
        """d states / dt for the members in the columns of `states` (dim, J)."""
        _params.check_ensemble_states("states", states, self.dim, f"Lorenz96(dim={self.dim})")
        return self.stencil_vector_field(periodic_rows(states, 2, 1), 0)

    def stencil_vector_field(self, extended: Float[Array, "n_ext J"], first_row: int) -> Float[Array, "n J"]:
        """The field on rows first_row .. first_row + n - 1 (modulo dim) of an ensemble in
        columns, from `extended` (n + 3, J), its rows first_row - 2 .. first_row + n."""
        rows = extended.shape[0] - 3
        forcing = self.forcing.astype(extended.dtype)
        if forcing.ndim == 1:
            forcing = jnp.take(forcing, np.arange(first_row, first_row + rows) % self.dim)[:, None]
        # row i of the output is row i + 2 of `extended`: x_{i+1} - x_{i-2}, times x_{i-1}
        advection = (extended[3 : rows + 3] - extended[0:rows]) * extended[1 : rows + 1]
        return advection - extended[2 : rows + 2] + forcing
