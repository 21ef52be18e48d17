"""Localisation for ensemble methods: tapers, geometries and observation locations.

A localised analysis (the LETKF of `kalmax.filters.letkf`) weights the
observation y_k in the analysis of a state point (or block of points) b by a
taper rho(dist(b, k)) of their distance: rho(0) = 1, rho decreases with the
distance and (for compactly supported tapers) vanishes beyond a finite reach,
so far observations contribute nothing (Houtekamer & Mitchell 2001; Hunt,
Kostelich & Szunyogh 2007).

The pieces are small Modules, and users may add their own:

- tapers (`AbstractTaper`): `GaspariCohn`, `GaussianTaper`, `StepTaper`. The
  `radius` is a traced leaf (vmap a sweep over it, differentiate with respect
  to it); `max_radius` is a static bound on it, from which the static list of
  each block's neighbouring observations is built (see `Localization`).
- geometries (`AbstractGeometry`): where the state points are and how far
  apart two points are. `Periodic1D(size)` (Lorenz-96: a ring of `size` points,
  distances in grid units) and `Periodic2D(grid_size)` (the flattened n x n
  torus grid of `kalmax.models.NavierStokes2D`, state[i * n + j] at (i, j),
  Euclidean distance with periodic wrap in each direction, in grid units).
- observation locations (`ObservationLocations`): coordinates of the
  observations in the geometry's coordinates. An `IndexObservation` locates
  each observation at the state point it observes; other observation
  operators need explicit locations.
- `Localization(geometry, taper, ...)`: all of it together, with the size of
  the local domains (`block`) and DAPPER's cut-off; `Localization.dapper`
  builds DAPPER's conventions.

Everything about *which* observations can reach which block is computed once
in NumPy from static data (the geometry, the observation locations,
`max_radius` and `cutoff`): `Localization.plan(model)` returns a `LocalPlan`
of fixed-shape arrays (each block's K nearest-in-taper observations, padded),
so that under `jit` every local analysis has the same static shape and a
d = 40,000 state never needs a d x p (let alone d x d) array at run time.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks
from ..observations import IndexObservation

# DAPPER's Gaspari-Cohn half-width factor: c = 1.82 * loc_rad, so that the taper
# is close to exp(-1/2) at distance loc_rad, like a Gaussian of standard deviation
# loc_rad (dapper/tools/localization.py, `dist2coeff`; 1.82 ~ sqrt(10/3)).
DAPPER_GC_SCALE = 1.82
# DAPPER drops observations whose taper is <= 1e-3 (`inds_and_coeffs`).
DAPPER_CUTOFF = 1e-3


# -- tapers ---------------------------------------------------------------------------


def _as_radius(value) -> jax.Array:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`radius` must be a positive number; got {value!r}")
    if isinstance(value, (int, np.integer)):
        value = float(value)
    radius = _checks.as_float_array("radius", value)
    if radius.ndim != 0:
        raise ValueError(
            f"`radius` must be a scalar (vmap over a batch of radii instead); got shape {tuple(radius.shape)}"
        )
    if _checks.is_concrete(radius):
        r = float(radius)
        if math.isnan(r) or r <= 0:
            raise ValueError(f"`radius` must be > 0 (math.inf for no localisation); got {r}")
    return radius


def _static_bound(radius: jax.Array, max_radius) -> float | None:
    """The static bound on `radius`: given, or the concrete radius itself."""
    if max_radius is None:
        return float(radius) if _checks.is_concrete(radius) else None
    bound = float(max_radius)
    if math.isnan(bound) or bound <= 0:
        raise ValueError(f"`max_radius` must be > 0; got {max_radius}")
    if _checks.is_concrete(radius) and float(radius) > bound:
        raise ValueError(f"`radius` ({float(radius)}) exceeds `max_radius` ({bound})")
    return bound


class AbstractTaper(eqx.Module):
    """A taper rho(distance) with rho(0) = 1, non-increasing in the distance and
    non-decreasing in the radius (the static neighbour lists rely on both).

    Subclasses have a traced scalar `radius`, a static `max_radius` (a bound on
    `radius`, or None) and implement `shape(distance, radius, xp)` for both NumPy
    (`xp=np`, the static neighbour search) and JAX (`xp=jnp`), and `reach(radius)`:
    the distance beyond which the taper is exactly zero (math.inf if never).
    """


    @abc.abstractmethod
    def shape(self, distance, radius, xp):
        """rho(distance) for the given radius, with the array namespace `xp` (np or jnp)."""

    @abc.abstractmethod
    def reach(self, radius: float) -> float:
        """The distance beyond which rho is zero for this radius (math.inf if none)."""

    def __call__(self, distance: Float[Array, "..."]) -> Float[Array, "..."]:
        """rho(distance) with the (traced) radius, in the dtype of `distance`."""
        distance = jnp.asarray(distance)
        return self.shape(distance, self.radius.astype(distance.dtype), jnp)


def _gaspari_cohn(ratio, xp):
    """Gaspari & Cohn (1999), eq. (4.10), of r = distance / c: support [0, 2]."""
    inner = ratio <= 1.0
    outer = (ratio > 1.0) & (ratio < 2.0)
    # evaluate each branch only where it applies (safe values elsewhere, so that
    # gradients through xp.where stay finite: the outer branch divides by r)
    r1 = xp.where(inner, ratio, 0.0)
    r2 = xp.where(outer, ratio, 1.5)
    near = 1.0 + r1**2 * (-(r1**3) / 4.0 + r1**2 / 2.0) + r1**3 * (5.0 / 8.0) - r1**2 * (5.0 / 3.0)
    far = (
        r2**2 * (r2**3 / 12.0 - r2**2 / 2.0)
        + r2**3 * (5.0 / 8.0)
        + r2**2 * (5.0 / 3.0)
        - r2 * 5.0
        + 4.0
        - (2.0 / 3.0) / r2
    )
    return xp.where(inner, near, xp.where(outer, far, 0.0))


class GaspariCohn(AbstractTaper):
    """The Gaspari & Cohn (1999) fifth-order piecewise rational taper, eq. (4.10).

    With r = distance / c:

        rho = -r^5/4 + r^4/2 + 5 r^3/8 - 5 r^2/3 + 1                    (0 <= r <= 1)
        rho = r^5/12 - r^4/2 + 5 r^3/8 + 5 r^2/3 - 5 r + 4 - 2/(3 r)     (1 < r <= 2)
        rho = 0                                                          (r > 2)

    a compactly supported approximation of a Gaussian, zero beyond 2c.

    Convention: the half-width is c = scale * radius. With the default
    scale = 1, `radius` IS Gaspari & Cohn's c: the taper is 0.208 at distance
    `radius` and zero from 2 * radius on. DAPPER's `loc_rad` uses scale = 1.82
    (c = 1.82 loc_rad, support 3.64 loc_rad, rho(loc_rad) = 0.63, close to a
    Gaussian of standard deviation loc_rad): `GaspariCohn.dapper(loc_rad)`.

    Args:
        radius: traced scalar > 0 (math.inf: no tapering).
        scale: static factor, c = scale * radius.
        max_radius: static bound on `radius` used to build the static neighbour
            lists (default: `radius` when it is concrete; None if it is traced,
            which makes every observation a neighbour). Give it when `radius`
            will be swept or differentiated beyond its initial value.

    Example:
        >>> taper = kx.GaspariCohn.dapper(4.0)     # DAPPER's LETKF loc_rad = 4
        >>> taper(jnp.arange(16.0))                # zero from 2 * 1.82 * 4 = 14.56 on
    """

    radius: Float[Array, ""]
    scale: float = eqx.field(static=True, default=1.0)
    max_radius: float | None = eqx.field(static=True, default=None)

    def __init__(self, radius, scale: float = 1.0, max_radius: float | None = None):
        self.radius = _as_radius(radius)
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"`scale` must be a positive finite number; got {scale!r}")
        self.scale = float(scale)
        self.max_radius = _static_bound(self.radius, max_radius)

    @classmethod
    def dapper(cls, loc_rad, max_radius: float | None = None) -> GaspariCohn:
        """DAPPER's convention: half-width c = 1.82 * loc_rad (radius = loc_rad)."""
        return cls(loc_rad, scale=DAPPER_GC_SCALE, max_radius=max_radius)

    def shape(self, distance, radius, xp):
        half_width = self.scale * radius
        return _gaspari_cohn(xp.abs(distance) / half_width, xp)

    def reach(self, radius):
        return 2.0 * self.scale * radius


class GaussianTaper(AbstractTaper):
    """rho = exp(-distance^2 / (2 radius^2)) (DAPPER's 'Gauss'): never exactly zero.

    Every observation then reaches every point: truncate it with the
    `Localization(cutoff=...)` (e.g. 1e-3) to keep neighbour lists short.

    Args:
        radius: traced scalar > 0, the standard deviation of the Gaussian.
        max_radius: static bound on `radius` (see `GaspariCohn`).
    """

    radius: Float[Array, ""]
    max_radius: float | None = eqx.field(static=True, default=None)

    def __init__(self, radius, max_radius: float | None = None):
        self.radius = _as_radius(radius)
        self.max_radius = _static_bound(self.radius, max_radius)

    def shape(self, distance, radius, xp):
        return xp.exp(-0.5 * (distance / radius) ** 2)

    def reach(self, radius):
        return math.inf


class StepTaper(AbstractTaper):
    """rho = 1 for distance <= radius, 0 beyond (a hard cut-off, DAPPER's 'Step').

    With radius = math.inf every observation has full weight: the LETKF is then
    the global ETKF. Its derivative with respect to `radius` is zero.

    Args:
        radius: traced scalar > 0.
        max_radius: static bound on `radius` (see `GaspariCohn`).
    """

    radius: Float[Array, ""]
    max_radius: float | None = eqx.field(static=True, default=None)

    def __init__(self, radius, max_radius: float | None = None):
        self.radius = _as_radius(radius)
        self.max_radius = _static_bound(self.radius, max_radius)

    def shape(self, distance, radius, xp):
        return xp.where(distance <= radius, 1.0, 0.0).astype(distance.dtype)

    def reach(self, radius):
        return radius


# -- geometries -----------------------------------------------------------------------


def _as_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _pack(mask: np.ndarray, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a boolean (n, p) mask as padded index lists (n, K) and their validity."""
    counts = mask.sum(axis=1)
    width = max(int(counts.max(initial=0)), minimum)
    rows, cols = np.nonzero(mask)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slots = np.arange(rows.size) - starts[rows]
    index = np.zeros((mask.shape[0], width), np.int64)
    valid = np.zeros((mask.shape[0], width), bool)
    index[rows, slots] = cols
    valid[rows, slots] = True
    return index, valid


class AbstractGeometry(eqx.Module):
    """Where the d state points are and how far apart two locations are (static, NumPy).

    Subclasses implement `size`, `coordinates()` (d, ndim), `distance(a, b)`
    (broadcasting over leading axes of coordinate arrays (..., ndim)) and
    `blocks(block)` (a partition of the state points into equal local domains).
    `candidates` may be overridden with a faster neighbour search.
    """

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The number of state points d."""

    @abc.abstractmethod
    def coordinates(self) -> np.ndarray:
        """(d, ndim) coordinates of the state points (float64)."""

    @abc.abstractmethod
    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between coordinates a (..., ndim) and b (..., ndim), broadcast."""

    @abc.abstractmethod
    def blocks(self, block) -> np.ndarray:
        """(n_blocks, points_per_block) state indices: a partition into local domains."""

    def wrap(self, coordinates: np.ndarray) -> np.ndarray:
        """Coordinates mapped into the domain (identity unless periodic)."""
        return np.asarray(coordinates, np.float64)

    def distances(self, points, locations) -> np.ndarray:
        """Distances between state points and locations.

        Args:
            points: (n,) state indices, or (n, b) blocks of state indices (the
                distance of a block is the mean of its points' distances, DAPPER's
                convention).
            locations: (p, ndim) coordinates (e.g. `ObservationLocations.array`).

        Returns:
            (n, p) distances.
        """
        points = np.asarray(points)
        blocks = points[:, None] if points.ndim == 1 else points
        coords = self.coordinates()[blocks]  # (n, b, ndim)
        locations = self.wrap(np.asarray(locations, np.float64).reshape(-1, coords.shape[-1]))
        return self.distance(coords[:, :, None, :], locations[None, None, :, :]).mean(axis=1)

    def candidates(self, blocks: np.ndarray, locations: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
        """Observations within `reach` of at least one point of each block (a superset
        of those whose mean block distance is within `reach`), as padded lists
        (n_blocks, K) with validity. Brute force in chunks: O(n_blocks * p)."""
        n, p = blocks.shape[0], locations.shape[0]
        if not math.isfinite(reach):
            return np.broadcast_to(np.arange(p), (n, p)).copy(), np.ones((n, p), bool)
        coords = self.coordinates()
        chunk = max(1, (1 << 22) // max(1, p * blocks.shape[1]))
        masks = []
        for start in range(0, n, chunk):
            pts = coords[blocks[start : start + chunk]]  # (c, b, ndim)
            dist = self.distance(pts[:, :, None, :], locations[None, None, :, :])
            masks.append((dist <= reach).any(axis=1))
        return _pack(np.concatenate(masks, axis=0))


def _periodic_delta(a, b, length):
    delta = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) % length
    return np.minimum(delta, length - delta)


class Periodic1D(AbstractGeometry):
    """A ring of `size` points (Lorenz-96): point i at coordinate i, distance
    min(|i - j|, size - |i - j|) in grid units.

    Local domains (`blocks(b)`): b consecutive points (DAPPER uses b = 2 for its
    Lorenz-96 LETKF); `size` must be a multiple of b.

    Example:
        >>> kx.Periodic1D(40).distances([0, 39], [[20.0], [1.0]])   # [[20, 1], [19, 2]]
    """

    n_points: int = eqx.field(static=True)

    def __init__(self, size: int):
        self.n_points = _as_size("size", size)

    @property
    def size(self) -> int:
        return self.n_points

    def coordinates(self):
        return np.arange(self.n_points, dtype=np.float64)[:, None]

    def wrap(self, coordinates):
        return np.asarray(coordinates, np.float64) % self.n_points

    def distance(self, a, b):
        return _periodic_delta(a, b, self.n_points)[..., 0]

    def blocks(self, block):
        b = _as_size("block", block[0] if isinstance(block, tuple) and len(block) == 1 else block)
        if self.n_points % b:
            raise ValueError(f"`block` ({b}) must divide the number of state points ({self.n_points})")
        return np.arange(self.n_points).reshape(-1, b)

    def candidates(self, blocks, locations, reach):
        """Sorted-window search: O((n_blocks + p) log p) instead of brute force."""
        p, size = locations.shape[0], self.n_points
        span = blocks.max(axis=1) - blocks.min(axis=1)
        contiguous = np.all(span == blocks.shape[1] - 1)
        if not math.isfinite(reach) or not contiguous or np.any(span + 2 * reach >= size):
            return super().candidates(blocks, locations, reach)
        x = self.wrap(locations[:, 0])
        order = np.argsort(x, kind="stable")
        tiled = np.concatenate([x[order] - size, x[order], x[order] + size])
        low = np.searchsorted(tiled, blocks.min(axis=1) - reach, side="left")
        high = np.searchsorted(tiled, blocks.max(axis=1) + reach, side="right")
        counts = high - low
        width = max(int(counts.max(initial=0)), 1)
        slots = np.arange(width)
        valid = slots[None, :] < counts[:, None]
        index = order[np.minimum(low[:, None] + slots[None, :], 3 * p - 1) % p]
        return np.where(valid, index, 0), valid


class Periodic2D(AbstractGeometry):
    """The flattened n0 x n1 torus grid of `kalmax.models.NavierStokes2D`.

    State point k = i * n1 + j sits at (i, j) (row-major, as NavierStokes2D's
    state[i * n + j] = w(x_i, y_j)); distances are Euclidean with periodic wrap
    in each direction, in grid units (multiply by 2 pi / n for the torus
    [0, 2 pi)^2).

    Args:
        grid_size: n (an n x n grid) or (n0, n1).

    Local domains (`blocks(b)`): b x b (or b0 x b1) rectangles of grid points.
    """

    shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, grid_size):
        if isinstance(grid_size, (tuple, list)):
            if len(grid_size) != 2:
                raise ValueError(f"`grid_size` must be n or (n0, n1); got {grid_size!r}")
            self.shape = (_as_size("grid_size", grid_size[0]), _as_size("grid_size", grid_size[1]))
        else:
            n = _as_size("grid_size", grid_size)
            self.shape = (n, n)

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def coordinates(self):
        i, j = np.unravel_index(np.arange(self.size), self.shape)
        return np.stack([i, j], axis=-1).astype(np.float64)

    def wrap(self, coordinates):
        return np.asarray(coordinates, np.float64) % np.asarray(self.shape, np.float64)

    def distance(self, a, b):
        delta = _periodic_delta(a, b, np.asarray(self.shape, np.float64))
        return np.sqrt(np.sum(delta**2, axis=-1))

    def blocks(self, block):
        b0, b1 = (block, block) if not isinstance(block, (tuple, list)) else tuple(block)
        b0, b1 = _as_size("block", b0), _as_size("block", b1)
        n0, n1 = self.shape
        if n0 % b0 or n1 % b1:
            raise ValueError(f"`block` ({b0}, {b1}) must divide the grid shape {self.shape}")
        grid = np.arange(self.size).reshape(n0 // b0, b0, n1 // b1, b1)
        return grid.transpose(0, 2, 1, 3).reshape(-1, b0 * b1)

    def candidates(self, blocks, locations, reach):
        """Separable window search: an observation within `reach` of a block point is
        within `reach` of the block's row range and of its column range; the two
        per-axis masks are computed once per distinct range, O(n_blocks * p) booleans."""
        if not math.isfinite(reach):
            return super().candidates(blocks, locations, reach)
        coords = self.coordinates()[blocks]  # (B, b, 2)
        low, high = coords.min(axis=1), coords.max(axis=1)  # (B, 2)
        if not np.all((high - low + 1).prod(axis=1) == blocks.shape[1]):  # not rectangles
            return super().candidates(blocks, locations, reach)
        axis_masks, inverse = [], []
        for axis, length in enumerate(self.shape):
            ranges, inv = np.unique(np.stack([low[:, axis], high[:, axis]], axis=1), axis=0, return_inverse=True)
            delta = (locations[None, :, axis] - ranges[:, :1]) % length  # (U, p)
            width = ranges[:, 1:] - ranges[:, :1]
            near = (delta <= width + reach) | (delta >= length - reach) | (2 * reach + width >= length)
            axis_masks.append(near)
            inverse.append(inv.reshape(-1))
        n, p = blocks.shape[0], locations.shape[0]
        chunk = max(1, (1 << 24) // max(p, 1))
        masks = [
            axis_masks[0][inverse[0][start : start + chunk]] & axis_masks[1][inverse[1][start : start + chunk]]
            for start in range(0, n, chunk)
        ]
        return _pack(np.concatenate(masks, axis=0))


# -- observation locations ------------------------------------------------------------


class ObservationLocations(eqx.Module):
    """Coordinates of the p observations in a geometry's coordinates (static).

    Needed for observation operators other than `IndexObservation` (whose
    observations sit at the state points they observe), e.g. a
    `LinearObservation` of local averages, or a nonlinear operator.

    Args:
        coordinates: (p, ndim) (or (p,) for a 1-D geometry) coordinates.

    Example:
        >>> locs = kx.ObservationLocations([[0.5], [10.5], [20.5]])   # between grid points
        >>> locs = kx.ObservationLocations.from_indices(kx.Periodic2D(64), indices)
    """

    coordinates: tuple[tuple[float, ...], ...] = eqx.field(static=True)

    def __init__(self, coordinates):
        array = np.asarray(coordinates, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"`coordinates` must have shape (p, ndim) with p >= 1; got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError("`coordinates` has non-finite entries")
        self.coordinates = tuple(tuple(float(v) for v in row) for row in array)

    @classmethod
    def from_indices(cls, geometry: AbstractGeometry, indices: Sequence[int]) -> ObservationLocations:
        """Observations located at the given state points."""
        return cls(geometry.coordinates()[np.asarray(indices, dtype=np.int64)])

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.coordinates, dtype=np.float64)

    @property
    def count(self) -> int:
        return len(self.coordinates)


# -- the localisation strategy ----------------------------------------------------------


class LocalPlan(NamedTuple):
    """Static (NumPy) description of the local analyses, built once per model.

    Attributes:
        blocks: (B, b) state indices of each local domain.
        neighbours: (B, K) indices of the observations that can reach each block
            (padded with index 0 where `valid` is False).
        distances: (B, K) block-to-observation distances.
        valid: (B, K) which entries are real neighbours.
        order: (d,) permutation putting block-ordered results back in state order,
            or None when the blocks are already in state order.
    """

    blocks: np.ndarray
    neighbours: np.ndarray
    distances: np.ndarray
    valid: np.ndarray
    order: np.ndarray | None


class Localization(eqx.Module):
    """Domain localisation: which observations weigh how much in each local analysis.

    The state is partitioned into local domains of `block` points
    (`geometry.blocks(block)`); the distance of a block to an observation is the
    mean of its points' distances (DAPPER's convention; with block = 1 it is the
    point's distance). The observation's inverse error variance is multiplied by
    the taper of that distance; tapers <= `cutoff` count as zero.

    Static neighbour lists: for each block, the observations whose taper at
    the static bound `taper.max_radius` exceeds `cutoff` (all observations when
    the bound is None or infinite), padded to the largest count K with zero
    weight. Since tapers do not decrease when the radius grows, this is a
    superset of the neighbours at any radius <= max_radius (checked at run time).

    Args:
        geometry: an `AbstractGeometry` whose size is the state dimension.
        taper: an `AbstractTaper` (default of `LETKF`: Gaspari-Cohn).
        locations: `ObservationLocations` (required unless the model's observation
            is an `IndexObservation`).
        block: points per local domain (an int; (b0, b1) for `Periodic2D`).
        cutoff: taper values <= cutoff are set to zero (DAPPER: 1e-3).

    Example:
        >>> loc = kx.Localization(kx.Periodic1D(40), kx.GaspariCohn(4.0))
        >>> loc = kx.Localization.dapper(kx.Periodic1D(40), loc_rad=4.0)
    """

    geometry: AbstractGeometry
    taper: AbstractTaper
    locations: ObservationLocations | None = None
    block: int | tuple[int, ...] = eqx.field(static=True, default=1)
    cutoff: float = eqx.field(static=True, default=0.0)

    def __init__(self, geometry: AbstractGeometry, taper: AbstractTaper,
                 locations: ObservationLocations | None = None, block=1, cutoff: float = 0.0):
        if not isinstance(geometry, AbstractGeometry):
            raise TypeError(
                f"`geometry` must be a geometry Module (Periodic1D, Periodic2D, ...); got {type(geometry).__name__}"
            )
        if not isinstance(taper, AbstractTaper):
            raise TypeError(
                f"`taper` must be a taper Module (GaspariCohn, GaussianTaper, StepTaper); got {type(taper).__name__}"
            )
        if locations is not None and not isinstance(locations, ObservationLocations):
            locations = ObservationLocations(locations)
        cutoff = float(cutoff)
        if not 0.0 <= cutoff < 1.0:
            raise ValueError(f"`cutoff` must lie in [0, 1); got {cutoff}")
        self.geometry = geometry
        self.taper = taper
        self.locations = locations
        self.block = tuple(int(b) for b in block) if isinstance(block, (tuple, list)) else int(block)
        self.cutoff = cutoff
        geometry.blocks(self.block)  # raises if the blocks do not partition the state

    @classmethod
    def dapper(cls, geometry: AbstractGeometry, loc_rad, locations: ObservationLocations | None = None,
               block=2, max_radius: float | None = None) -> Localization:
        """DAPPER's LETKF conventions (`dapper/da_methods/ensemble.py`, `LETKF`):
        blocks of 2 consecutive points (`block`), the mean distance over a block,
        Gaspari-Cohn with half-width 1.82 * loc_rad, observations with taper
        <= 1e-3 dropped."""
        return cls(geometry, GaspariCohn.dapper(loc_rad, max_radius=max_radius), locations, block, DAPPER_CUTOFF)

    # -- static set-up (NumPy, outside any trace) ----------------------------------------

    def obs_coordinates(self, model) -> np.ndarray:
        """(p, ndim) observation coordinates for `model` (static)."""

        observation = model.observation
        p = model.obs_dim
        if self.locations is not None:
            if self.locations.count != p:
                raise ValueError(
                    f"`locations` gives {self.locations.count} observation coordinates "
                    f"but the model has {p} observations"
                )
            coords = self.geometry.wrap(self.locations.array)
            ndim = self.geometry.coordinates().shape[1]
            if coords.shape[1] != ndim:
                raise ValueError(f"`locations` must have {ndim} coordinates per observation; got {coords.shape[1]}")
            return coords
        if isinstance(observation, IndexObservation):
            return self.geometry.coordinates()[np.asarray(observation.indices, dtype=np.int64)]
        raise ValueError(
            f"localisation needs the observations' locations: the observation operator is a "
            f"{type(observation).__name__}; pass `locations=kx.ObservationLocations(...)` to the `Localization` "
            "(an IndexObservation is located at the state points it observes)"
        )

    def obs_distances(self, model) -> np.ndarray:
        """(p, p) distances between the observation locations (static)."""
        coords = self.obs_coordinates(model)
        return self.geometry.distance(coords[:, None, :], coords[None, :, :])

    def check(self, model) -> None:
        """Raise a ValueError if the geometry or locations do not fit `model`."""
        if self.geometry.size != model.state_dim:
            raise ValueError(
                f"`localization.geometry` has {self.geometry.size} points ({type(self.geometry).__name__}) "
                f"but the state has {model.state_dim}"
            )
        self.obs_coordinates(model)

    def plan(self, model) -> LocalPlan:
        """The static `LocalPlan` for `model` (NumPy; built where the analysis is traced, so
        once per compilation: 0.1 s for d = 40,000 points)."""
        self.check(model)
        coords = self.obs_coordinates(model)
        return _build_plan(self.geometry, self.taper, coords, self.block, self.cutoff, self.taper.max_radius)

    def weights(self, plan: LocalPlan, dtype) -> Float[Array, "B K"]:
        """(B, K) taper weights of each block's neighbours at the traced radius (zero
        for padding and for tapers <= cutoff)."""
        rho = self.taper(jnp.asarray(plan.distances, dtype))
        keep = jnp.asarray(plan.valid) & (rho > self.cutoff)
        return jnp.where(keep, rho, 0.0)


def _build_plan(geometry, taper, coords, block, cutoff, bound) -> LocalPlan:
    blocks = geometry.blocks(block)
    reach = math.inf if bound is None else taper.reach(bound)
    candidates, valid = geometry.candidates(blocks, coords, reach)
    # exact block distances of the candidates, then keep those the taper reaches
    points = geometry.coordinates()[blocks]  # (B, b, ndim)
    cand_coords = coords[candidates]  # (B, K, ndim)
    distances = geometry.distance(points[:, :, None, :], cand_coords[:, None, :, :]).mean(axis=1)
    if bound is None:  # a traced radius without a static bound: every observation
        keep = valid
    else:
        keep = valid & (np.asarray(taper.shape(distances, bound, np)) > cutoff)
    slots, kept = _pack(keep)
    neighbours = np.take_along_axis(candidates, slots, axis=1)
    dist = np.take_along_axis(distances, slots, axis=1)
    neighbours = np.where(kept, neighbours, 0).astype(np.int32)
    dist = np.where(kept, dist, 0.0)
    flat = blocks.reshape(-1)
    order = None if np.array_equal(flat, np.arange(flat.size)) else np.argsort(flat).astype(np.int32)
    return LocalPlan(blocks.astype(np.int32), neighbours, dist, kept, order)


__all__ = [
    "AbstractGeometry",
    "AbstractTaper",
    "DAPPER_CUTOFF",
    "DAPPER_GC_SCALE",
    "GaspariCohn",
    "GaussianTaper",
    "LocalPlan",
    "Localization",
    "ObservationLocations",
    "Periodic1D",
    "Periodic2D",
    "StepTaper",
]
