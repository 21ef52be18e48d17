"""Test-bed models for twin experiments, and their time integrators.

Each model is an `equinox.Module` written for ONE state (a vector; methods
`vmap` it over ensembles) with `vector_field(state)`; its parameters are
float leaves, so `jax.grad` with respect to them works. `Flow(model,
integrator)` maps a state over one observation interval: it is the `dynamics`
of a state-space model.

    flow = Flow(Lorenz96(dim=40, forcing=8.0), RK4(dt=0.05, n_steps=1))
    xs = trajectory(flow, x0, 1000)
"""

from .integrators import (
    RK4,
    AbstractEnsembleDynamics,
    AbstractEnsembleVectorField,
    AbstractIntegrator,
    AbstractPeriodicStencil,
    AbstractSemilinearModel,
    Flow,
    IntegratingFactorRK4,
    periodic_rows,
    rk4_periodic_step,
    rk4_step,
    trajectory,
)
from .darcy import Darcy, garbuno_inigo_source, max_modes
from .lorenz63 import Lorenz63
from .lorenz96 import Lorenz96
from .lorenz96_two_scale import Lorenz96Closure, Lorenz96TwoScale
from .navier_stokes import NavierStokes2D, kolmogorov_forcing

__all__ = [
    "AbstractEnsembleDynamics",
    "AbstractEnsembleVectorField",
    "AbstractPeriodicStencil",
    "Darcy",
    "garbuno_inigo_source",
    "max_modes",
    "RK4",
    "AbstractIntegrator",
    "AbstractSemilinearModel",
    "Flow",
    "IntegratingFactorRK4",
    "Lorenz63",
    "Lorenz96",
    "Lorenz96Closure",
    "Lorenz96TwoScale",
    "NavierStokes2D",
    "kolmogorov_forcing",
    "rk4_step",
    "trajectory",
]
