"""The Lorenz-63 system (Lorenz 1963), the three-variable chaotic test bed."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _params
from .integrators import AbstractEnsembleVectorField


class Lorenz63(AbstractEnsembleVectorField):
    """Lorenz (1963), "Deterministic nonperiodic flow", J. Atmos. Sci. 20:

        dx/dt = sigma (y - x)
        dy/dt = x (rho - z) - y
        dz/dt = x y - beta z

    for one state (x, y, z) of shape (3,). The classic chaotic parameters are
    the defaults; the twin experiment of Sakov et al. (2012) integrates with
    RK4, dt = 0.01, 25 steps per observation interval.

    Attributes:
        sigma: scalar parameter (default 10). The three parameters are stored as
            float arrays (pytree leaves: `jax.grad`, `jit` and `vmap` trace them),
            cast to the state's dtype when the vector field is evaluated.
        rho: scalar parameter (default 28).
        beta: scalar parameter (default 8/3).

    Example:
        >>> flow = Flow(Lorenz63(), RK4(dt=0.01, n_steps=25))
        >>> x1 = flow(jnp.array([1.509, -1.531, 25.46]))
    """

    sigma: Float[Array, ""]
    rho: Float[Array, ""]
    beta: Float[Array, ""]

    def __init__(self, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
        self.sigma = _params.as_parameter("sigma", sigma)
        self.rho = _params.as_parameter("rho", rho)
        self.beta = _params.as_parameter("beta", beta)

    @property
    def state_dim(self) -> int:
        return 3

    def vector_field(self, state: Float[Array, "3"]) -> Float[Array, "3"]:
        """d state / dt for one state (3,), in the state's dtype."""
        _params.check_state("state", state, (3,), "Lorenz63")
        sigma, rho, beta = (p.astype(state.dtype) for p in (self.sigma, self.rho, self.beta))
        x, y, z = state[0], state[1], state[2]
        return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    def ensemble_vector_field(self, states: Float[Array, "3 J"]) -> Float[Array, "3 J"]:
        """d states / dt for the members in the columns of `states` (3, J)."""
        _params.check_ensemble_states("states", states, 3, "Lorenz63")
        sigma, rho, beta = (p.astype(states.dtype) for p in (self.sigma, self.rho, self.beta))
        x, y, z = states[0], states[1], states[2]
        return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])
