"""Tapers, geometries, observation locations and static neighbour lists against NumPy."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.covariance import ScalarCovariance
from kalmax.ensemble.localization import (
    AbstractGeometry,
    GaspariCohn,
    GaussianTaper,
    Localization,
    ObservationLocations,
    Periodic1D,
    Periodic2D,
    StepTaper,
)
from kalmax.observations import IndexObservation, LinearObservation
from kalmax.ssm import StateSpaceModel


def numpy_gaspari_cohn(dist, c):
    """Gaspari & Cohn (1999) eq. (4.10), written out independently."""
    r = np.abs(np.asarray(dist, np.float64)) / c
    out = np.zeros_like(r)
    a = r <= 1
    out[a] = -(r[a] ** 5) / 4 + r[a] ** 4 / 2 + 5 * r[a] ** 3 / 8 - 5 * r[a] ** 2 / 3 + 1
    b = (r > 1) & (r <= 2)
    out[b] = r[b] ** 5 / 12 - r[b] ** 4 / 2 + 5 * r[b] ** 3 / 8 + 5 * r[b] ** 2 / 3 - 5 * r[b] + 4 - 2 / (3 * r[b])
    return out


@eqx.filter_jit
def evaluate(taper, distance):
    """taper(distance), compiled once per taper type and shape (eager dispatch is slow)."""
    return taper(distance)


def ring_model(dim=40, observation=None):
    observation = IndexObservation(range(dim), dim) if observation is None else observation
    return StateSpaceModel(
        dynamics=lambda v: v,
        observation=observation,
        dynamics_cov=None,
        obs_cov=ScalarCovariance(jnp.asarray(1.0), observation.obs_dim),
        init_mean=jnp.zeros(dim),
        init_cov=ScalarCovariance(jnp.asarray(1.0), dim),
    )


# -- tapers ---------------------------------------------------------------------------


def test_gaspari_cohn_matches_the_formula_and_is_continuous_and_compact():
    dist = np.linspace(0.0, 12.0, 1201)
    taper = GaspariCohn(3.0)
    np.testing.assert_allclose(evaluate(taper, jnp.asarray(dist)), numpy_gaspari_cohn(dist, 3.0), rtol=1e-13, atol=1e-14)
    assert float(evaluate(taper, jnp.asarray(0.0))) == 1.0
    np.testing.assert_allclose(evaluate(taper, jnp.asarray(6.0)), 0.0, atol=1e-14)  # support end 2c
    assert np.all(np.asarray(evaluate(taper, jnp.asarray(dist[dist >= 6.0]))) == 0.0)
    eps = 1e-9
    for knot in [3.0, 6.0]:  # continuity of the value across both knots
        left, right = evaluate(taper, jnp.asarray([knot - eps, knot + eps]))
        assert abs(float(left) - float(right)) < 1e-8
    assert np.all(np.diff(np.asarray(evaluate(taper, jnp.asarray(dist)))) <= 1e-15)  # non-increasing
    np.testing.assert_allclose(evaluate(taper, jnp.asarray(3.0)), 5.0 / 24.0, rtol=1e-13)  # rho(c) = 0.208


def test_dapper_convention_is_half_width_1_82_loc_rad():
    taper = GaspariCohn.dapper(4.0)
    dist = np.linspace(0.0, 20.0, 401)
    np.testing.assert_allclose(evaluate(taper, jnp.asarray(dist)), numpy_gaspari_cohn(dist, 1.82 * 4.0), rtol=1e-13, atol=1e-14)
    assert taper.reach(4.0) == pytest.approx(2 * 1.82 * 4.0)
    assert float(taper.radius) == 4.0 and taper.scale == 1.82
    # close to a Gaussian of standard deviation loc_rad at distance loc_rad
    assert abs(float(evaluate(taper, jnp.asarray(4.0))) - math.exp(-0.5)) < 0.03


def test_gaussian_and_step_tapers():
    dist = jnp.linspace(0.0, 10.0, 101)
    np.testing.assert_allclose(evaluate(GaussianTaper(2.0), dist), np.exp(-0.5 * (np.asarray(dist) / 2.0) ** 2), rtol=1e-14)
    np.testing.assert_array_equal(evaluate(StepTaper(2.5), dist), (np.asarray(dist) <= 2.5).astype(float))
    np.testing.assert_array_equal(evaluate(StepTaper(math.inf), dist), np.ones(101))
    assert GaussianTaper(1.0).reach(1.0) == math.inf and StepTaper(2.0).reach(2.0) == 2.0


def test_tapers_under_jit_vmap_grad_and_float32():
    dist = jnp.asarray([0.0, 1.0, 2.5, 5.0, 7.9, 8.0, 9.0, 30.0])

    def total(radius):
        return jnp.sum(GaspariCohn(radius, max_radius=10.0)(dist))

    grad = jax.jit(jax.grad(total))(4.0)
    h = 1e-6
    value = jax.jit(total)
    fd = (value(4.0 + h) - value(4.0 - h)) / (2 * h)
    assert np.isfinite(grad) and abs(float(grad) - float(fd)) < 1e-6
    radii = jnp.asarray([1.0, 2.0, 4.0])
    batched = jax.vmap(lambda r: GaspariCohn(r)(dist))(radii)
    for row, r in zip(batched, [1.0, 2.0, 4.0]):
        np.testing.assert_allclose(row, numpy_gaspari_cohn(np.asarray(dist), r), rtol=1e-13, atol=1e-14)
    gauss_grad = jax.grad(lambda r: jnp.sum(GaussianTaper(r)(dist)))(2.0)
    assert np.isfinite(gauss_grad)
    single = evaluate(GaspariCohn(3.0), dist.astype(jnp.float32))
    assert single.dtype == jnp.float32
    np.testing.assert_allclose(single, numpy_gaspari_cohn(np.asarray(dist), 3.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("taper", [GaspariCohn, GaussianTaper, StepTaper])
@pytest.mark.parametrize("radius", [0.0, -1.0, float("nan")])
def test_radius_must_be_positive(taper, radius):
    with pytest.raises(ValueError, match="radius"):
        taper(radius)


def test_radius_arguments():
    assert GaspariCohn(4).radius.dtype == jnp.float64  # an int radius is accepted
    assert GaspariCohn(4.0).max_radius == 4.0 and GaspariCohn(4.0, max_radius=6).max_radius == 6.0
    with pytest.raises(ValueError, match="radius"):
        GaspariCohn(jnp.ones(2))
    with pytest.raises(ValueError, match="max_radius"):
        GaspariCohn(5.0, max_radius=4.0)
    with pytest.raises(ValueError, match="scale"):
        GaspariCohn(5.0, scale=0.0)
    # a radius traced at construction has no static bound: every observation is a neighbour
    assert eqx.filter_jit(lambda r: jnp.asarray(GaspariCohn(r).max_radius is None))(jnp.asarray(2.0))


# -- geometries -----------------------------------------------------------------------


def test_periodic1d_distances():
    ring = Periodic1D(10)
    locations = np.array([[0.0], [3.5], [9.0], [12.0]])  # 12 wraps to 2
    got = ring.distances(np.arange(10), locations)
    expect = np.empty((10, 4))
    for i in range(10):
        for k, x in enumerate([0.0, 3.5, 9.0, 2.0]):
            expect[i, k] = min(abs(i - x), 10 - abs(i - x))
    np.testing.assert_allclose(got, expect, atol=1e-14)
    # a block's distance is the mean of its points' distances (DAPPER's batches)
    blocks = ring.blocks(2)
    np.testing.assert_array_equal(blocks, np.arange(10).reshape(5, 2))
    np.testing.assert_allclose(ring.distances(blocks, locations), expect.reshape(5, 2, 4).mean(axis=1), atol=1e-14)
    with pytest.raises(ValueError, match="block"):
        ring.blocks(3)
    with pytest.raises(ValueError, match="size"):
        Periodic1D(0)


def test_periodic2d_distances_layout_and_blocks():
    grid = Periodic2D((6, 8))
    assert grid.size == 48
    coords = grid.coordinates()
    # NavierStokes2D's layout: state[i * n1 + j] = w(x_i, y_j)
    k = 3 * 8 + 5
    np.testing.assert_array_equal(coords[k], [3.0, 5.0])
    rng = np.random.default_rng(0)
    locations = np.column_stack([rng.uniform(0, 6, 7), rng.uniform(0, 8, 7)])
    got = grid.distances(np.arange(48), locations)
    expect = np.empty((48, 7))
    for s in range(48):
        i, j = divmod(s, 8)
        for o, (a, b) in enumerate(locations):
            di, dj = abs(i - a), abs(j - b)
            expect[s, o] = math.hypot(min(di, 6 - di), min(dj, 8 - dj))
    np.testing.assert_allclose(got, expect, atol=1e-13)
    blocks = grid.blocks((2, 4))
    assert blocks.shape == (6, 8)
    np.testing.assert_array_equal(np.sort(blocks.ravel()), np.arange(48))
    for block in blocks:
        rows, cols = np.divmod(block, 8)
        assert np.ptp(rows) == 1 and np.ptp(cols) == 3
    assert Periodic2D(4).shape == (4, 4)
    with pytest.raises(ValueError, match="block"):
        grid.blocks(4)


# -- neighbour lists --------------------------------------------------------------------


def brute_force_neighbours(geometry, blocks, locations, taper_np, cutoff):
    dist = geometry.distances(blocks, locations)
    return [set(np.flatnonzero(taper_np(row) > cutoff)) for row in dist], dist


@pytest.mark.parametrize(
    "localization, observation",
    [
        (Localization(Periodic1D(40), GaspariCohn(3.0)), IndexObservation.every(2, 40)),
        (Localization.dapper(Periodic1D(40), 4.0), IndexObservation(range(40), 40)),
        (Localization(Periodic1D(40), GaussianTaper(2.0), cutoff=1e-3, block=4), IndexObservation.every(3, 40)),
        (Localization(Periodic1D(40), StepTaper(5.0), block=5), IndexObservation.every(2, 40, offset=1)),
    ],
)
def test_1d_neighbour_lists_equal_brute_force(localization, observation):
    model = ring_model(40, observation)
    plan = localization.plan(model)
    geometry, taper = localization.geometry, localization.taper
    locations = geometry.coordinates()[np.asarray(observation.indices)]
    expect, dist = brute_force_neighbours(
        geometry, plan.blocks, locations, lambda d: taper.shape(d, float(taper.radius), np), localization.cutoff
    )
    for b in range(plan.blocks.shape[0]):
        got = set(plan.neighbours[b][plan.valid[b]].tolist())
        assert got == expect[b]
        np.testing.assert_allclose(plan.distances[b][plan.valid[b]], dist[b, plan.neighbours[b][plan.valid[b]]])
    # the faster window search gives the same candidates as the generic brute force
    fast, fast_valid = geometry.candidates(plan.blocks, locations, 6.0)
    slow, slow_valid = AbstractGeometry.candidates(geometry, plan.blocks, locations, 6.0)
    for b in range(plan.blocks.shape[0]):
        assert set(fast[b][fast_valid[b]].tolist()) == set(slow[b][slow_valid[b]].tolist())


@pytest.mark.parametrize("block", [1, 2])
def test_2d_neighbour_lists_equal_brute_force(block):
    n = 16
    indices = [i * n + j for i in range(0, n, 4) for j in range(0, n, 4)]
    model = ring_model(n * n, IndexObservation(indices, n * n))
    localization = Localization(Periodic2D(n), GaspariCohn(2.5), block=block)
    plan = localization.plan(model)
    locations = localization.geometry.coordinates()[np.asarray(indices)]
    expect, _ = brute_force_neighbours(
        localization.geometry, plan.blocks, locations, lambda d: numpy_gaspari_cohn(d, 2.5), 0.0
    )
    for b in range(plan.blocks.shape[0]):
        assert set(plan.neighbours[b][plan.valid[b]].tolist()) == expect[b]
    # the separable window search returns a superset (a box around the disc) of the brute force
    fast, fast_valid = localization.geometry.candidates(plan.blocks, locations, 5.0)
    slow, slow_valid = AbstractGeometry.candidates(localization.geometry, plan.blocks, locations, 5.0)
    for b in range(plan.blocks.shape[0]):
        assert set(fast[b][fast_valid[b]].tolist()) >= set(slow[b][slow_valid[b]].tolist())
    if block == 1:
        assert plan.order is None
    else:  # 2 x 2 blocks are not in state order: the plan carries the permutation back
        np.testing.assert_array_equal(plan.blocks.reshape(-1)[plan.order], np.arange(n * n))


def test_unbounded_radius_makes_every_observation_a_neighbour():
    model = ring_model(12)
    for taper in [StepTaper(math.inf), GaussianTaper(1.0), GaspariCohn(1.0, max_radius=math.inf)]:
        plan = Localization(Periodic1D(12), taper).plan(model)
        assert plan.neighbours.shape == (12, 12) and plan.valid.all()


def test_observation_locations():
    grid = Periodic2D(8)
    locs = ObservationLocations.from_indices(grid, [0, 9, 63])
    np.testing.assert_array_equal(locs.array, [[0, 0], [1, 1], [7, 7]])
    assert locs.count == 3
    assert ObservationLocations([1.0, 2.5]).array.shape == (2, 1)
    with pytest.raises(ValueError, match="coordinates"):
        ObservationLocations([[np.nan]])
    # a LinearObservation needs explicit locations; with them its plan equals the IndexObservation's
    H = np.eye(40)[::2]
    linear = ring_model(40, LinearObservation(jnp.asarray(H)))
    with pytest.raises(ValueError, match="locations"):
        Localization(Periodic1D(40), GaspariCohn(3.0)).plan(linear)
    explicit = Localization(Periodic1D(40), GaspariCohn(3.0), locations=ObservationLocations(np.arange(0, 40, 2.0)))
    index = Localization(Periodic1D(40), GaspariCohn(3.0)).plan(ring_model(40, IndexObservation.every(2, 40)))
    got = explicit.plan(linear)
    np.testing.assert_array_equal(got.neighbours, index.neighbours)
    with pytest.raises(ValueError, match="20 observations"):
        Localization(Periodic1D(40), GaspariCohn(3.0), locations=ObservationLocations([1.0, 2.0])).plan(linear)


def test_localization_errors():
    with pytest.raises(ValueError, match="geometry.*30 points.*state has 40"):
        Localization(Periodic1D(30), GaspariCohn(3.0)).plan(ring_model(40))
    with pytest.raises(ValueError, match="block"):
        Localization(Periodic1D(40), GaspariCohn(3.0), block=3)
    with pytest.raises(ValueError, match="cutoff"):
        Localization(Periodic1D(40), GaspariCohn(3.0), cutoff=1.0)
    with pytest.raises(TypeError, match="geometry"):
        Localization(40, GaspariCohn(3.0))
    with pytest.raises(TypeError, match="taper"):
        Localization(Periodic1D(40), 3.0)


def test_weights_apply_the_cutoff_and_padding():
    localization = Localization.dapper(Periodic1D(40), 4.0)
    plan = localization.plan(ring_model(40))
    weights = np.asarray(localization.weights(plan, jnp.float64))
    rho = numpy_gaspari_cohn(plan.distances, 1.82 * 4.0)
    np.testing.assert_allclose(weights, np.where(plan.valid & (rho > 1e-3), rho, 0.0), rtol=1e-13, atol=1e-14)
    assert weights.shape[1] == int(plan.valid.sum(axis=1).max())
