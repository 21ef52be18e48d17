"""Ensembles sharded over several devices with `jax.sharding`.

An ensemble is a (J, d) array, member axis first. Two layouts:

- `MemberSharding`: members split over the devices of a mesh axis,
  `PartitionSpec(axis, None)`. The forecast (the model `vmap`ped over members,
  the expensive part of an EnKF cycle) then runs on each device's own members;
  the ensemble-space analysis (J x J algebra, means over members) gathers what
  it needs through the collectives the compiler inserts.
- `GridSharding`: the state (grid) axis split over the devices,
  `PartitionSpec(None, axis)`, for local analyses (LETKF) that are independent
  per grid point.

Either is a small Module held by a method (e.g. `EnKF(..., sharding=...)`):
the method places its initial ensemble with `constrain` and constrains the
members before and after each forecast. Inside `jit` this is
`jax.lax.with_sharding_constraint`; the compiled program is the single-device
program partitioned by XLA, so the results equal the single-device run up to
the order of floating-point reductions.

Example:
    >>> sharding = kx.MemberSharding()               # all devices, axis "members"
    >>> flt = kx.EnKF(24, kx.SquareRoot(), inflation=1.02, sharding=sharding)
    >>> final, history = kx.assimilate(model, flt, ys, key)
    >>> final.members.sharding                       # NamedSharding(mesh, P('members', None))

On CPU, several devices can be simulated with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` set before jax is imported.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AbstractEnsembleSharding", "GridSharding", "MemberSharding", "device_mesh"]


def device_mesh(devices: Sequence | None = None, axis_name: str = "members") -> Mesh:
    """A one-axis `Mesh` over `devices` (default: all of `jax.devices()`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` is empty: a mesh needs at least one device")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _as_mesh(mesh, axis_name: str) -> Mesh:
    if mesh is None or not isinstance(mesh, Mesh):
        return device_mesh(mesh, axis_name)
    if axis_name not in mesh.axis_names:
        raise ValueError(f"`axis_name` {axis_name!r} is not an axis of the mesh; its axes are {mesh.axis_names}")
    return mesh


class AbstractEnsembleSharding(eqx.Module):
    """How an ensemble array (J, d) is laid out over the devices of a mesh axis.

    Fields are static (a mesh is not an array), so a method holding one stays a
    pytree of its traced hyperparameters only.
    """

    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True)

    def __init__(self, mesh: Mesh | Sequence | None = None, axis_name: str = "members"):
        """Args:
        mesh: a `jax.sharding.Mesh` with an axis `axis_name`, or a sequence of
            devices (a one-axis mesh is built over them), or None for all devices.
        axis_name: the mesh axis the ensemble is split over.
        """
        self.axis_name = str(axis_name)
        self.mesh = _as_mesh(mesh, self.axis_name)

    @property
    def n_shards(self) -> int:
        """Number of devices along the mesh axis."""
        return int(self.mesh.shape[self.axis_name])

    @property
    @abc.abstractmethod
    def spec(self) -> PartitionSpec:
        """The partition spec of a (J, d) ensemble."""

    @property
    def sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec)

    def constrain(self, members):
        """`with_sharding_constraint` of a (J, d) array (inside or outside `jit`)."""
        return jax.lax.with_sharding_constraint(members, self.sharding)

    def place(self, members):
        """`device_put` a concrete (J, d) array with this layout (e.g. a given initial ensemble)."""
        return jax.device_put(members, self.sharding)

    @abc.abstractmethod
    def check_size(self, ensemble_size: int, state_dim: int) -> None:
        """Raise a ValueError if the split axis does not divide over the devices."""


class MemberSharding(AbstractEnsembleSharding):
    """Members split over the devices of `axis_name`: `PartitionSpec(axis_name, None)`.

    The ensemble size must be a multiple of the number of devices on the axis.
    """

    @property
    def spec(self) -> PartitionSpec:
        return PartitionSpec(self.axis_name, None)

    def check_size(self, ensemble_size, state_dim):
        if int(ensemble_size) % self.n_shards:
            raise ValueError(
                f"`ensemble_size` {ensemble_size} is not a multiple of the {self.n_shards} devices of mesh axis "
                f"{self.axis_name!r} (MemberSharding splits the members evenly)"
            )


class GridSharding(AbstractEnsembleSharding):
    """The state (grid) axis split over the devices of `axis_name`:
    `PartitionSpec(None, axis_name)` (for per-grid-point local analyses, LETKF).

    The state dimension must be a multiple of the number of devices on the axis.
    """

    def __init__(self, mesh: Mesh | Sequence | None = None, axis_name: str = "grid"):
        super().__init__(mesh, axis_name)

    @property
    def spec(self) -> PartitionSpec:
        return PartitionSpec(None, self.axis_name)

    def constrain_grid(self, values):
        """Constrain an array whose *leading* axis is the grid, e.g. the (d, ...)
        output of local analyses `vmap`ped over grid points."""
        spec = PartitionSpec(self.axis_name, *([None] * (values.ndim - 1)))
        return jax.lax.with_sharding_constraint(values, NamedSharding(self.mesh, spec))

    def check_size(self, ensemble_size, state_dim):
        if state_dim is not None and int(state_dim) % self.n_shards:
            raise ValueError(
                f"the state dimension {state_dim} is not a multiple of the {self.n_shards} devices of mesh axis "
                f"{self.axis_name!r} (GridSharding splits the grid evenly)"
            )
