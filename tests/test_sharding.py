"""Ensembles sharded over devices: the same results as one device, members actually split.

The main test process has one CPU device; the multi-device checks run in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4` set before
jax is imported.
"""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec

import kalmax as kx
from kalmax.sharding import GridSharding, MemberSharding, device_mesh

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import kalmax as kx
    from jax.sharding import PartitionSpec as P
    from kalmax import presets
    from kalmax.sharding import GridSharding, MemberSharding, device_mesh
    from kalmax.sweep import sweep

    assert len(jax.devices()) == 4, jax.devices()
    T = 20
    model = presets.lorenz96_sakov2008(T, dim=16).model
    truth, ys = kx.simulate(model, jax.random.key(1), T)
    key = jax.random.key(2)
    cases = [(MemberSharding(), kx.SquareRoot()), (MemberSharding(), kx.PerturbedObservations()),
             (GridSharding(), kx.SquareRoot())]
    for sharding, update in cases:
        base = kx.EnKF(8, update, inflation=1.02, rotate=True)
        split = kx.EnKF(8, update, inflation=1.02, rotate=True, sharding=sharding)
        final0, hist0 = kx.assimilate(model, base, ys, key)
        final1, hist1 = kx.assimilate(model, split, ys, key)
        name = type(sharding).__name__ + " " + type(update).__name__
        np.testing.assert_allclose(final1.members, final0.members, rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(hist1.mean, hist0.mean, rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(hist1.info.log_likelihood, hist0.info.log_likelihood, rtol=1e-10, err_msg=name)
        # the members are split over the 4 devices
        assert final1.members.sharding.is_equivalent_to(sharding.sharding, 2), (name, final1.members.sharding)
        shards = final1.members.addressable_shards
        assert len({s.device for s in shards}) == 4, name
        expected = (2, 16) if isinstance(sharding, MemberSharding) else (8, 4)
        assert all(s.data.shape == expected for s in shards), (name, [s.data.shape for s in shards])
        assert len(final0.members.addressable_shards) == 1

    # a given initial ensemble placed on the devices; the forecast keeps the layout
    sharding = MemberSharding(device_mesh(jax.devices(), "ens"), "ens")
    flt = kx.EnKF(8, kx.SquareRoot(), inflation=1.02, sharding=sharding)
    init = sharding.place(kx.EnKF(8).init(model, jax.random.key(5)).members)
    assert [s.data.shape for s in init.addressable_shards] == [(2, 16)] * 4
    forecast = jax.jit(lambda s: flt.forecast(model, s))(kx.Ensemble(init))
    assert forecast.members.sharding.is_equivalent_to(sharding.sharding, 2), forecast.members.sharding
    final, _ = kx.assimilate(model, flt, ys, key, init_state=kx.Ensemble(init))
    final0, _ = kx.assimilate(model, kx.EnKF(8, kx.SquareRoot(), inflation=1.02), ys, key,
                              init_state=kx.Ensemble(np.asarray(init)))
    np.testing.assert_allclose(final.members, final0.members, rtol=0, atol=1e-10)

    # members that do not divide over the devices are refused with a clear message
    try:
        kx.EnKF(6, sharding=MemberSharding())
    except ValueError as err:
        assert "not a multiple of the 4 devices" in str(err), err
    else:
        raise AssertionError("EnKF(6, sharding=...) on 4 devices did not raise")

    # a sweep with its settings split over the devices equals the one-device sweep
    make = lambda inflation: kx.EnKF(4, kx.SquareRoot(), inflation=inflation)
    grid = {"inflation": [1.0, 1.02, 1.05, 1.1]}
    one = sweep(model, make, T, key, grid=grid, n_seeds=2, burn_in=5)
    many = sweep(model, make, T, key, grid=grid, n_seeds=2, burn_in=5, mesh=jax.devices())
    np.testing.assert_allclose(many.rmse_analysis, one.rmse_analysis, rtol=0, atol=1e-10)
    assert many.rmse_analysis.sharding.spec == P("runs"), many.rmse_analysis.sharding
    assert len({s.device for s in many.rmse_analysis.addressable_shards}) == 4
    padded = sweep(model, make, T, key, grid={"inflation": grid["inflation"][:3]}, n_seeds=2, burn_in=5,
                   mesh=jax.devices())
    np.testing.assert_allclose(padded.rmse_analysis, one.rmse_analysis[:3], rtol=0, atol=1e-10)
    print("SHARDING OK")
    """
)


def test_sharded_runs_equal_the_single_device_run():
    # the suite's compile flags (conftest.py) and four host devices
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "SHARDING OK" in result.stdout


def test_layouts_and_errors_on_one_device():
    members = MemberSharding()
    assert members.spec == PartitionSpec("members", None) and members.n_shards == len(jax.devices())
    grid = GridSharding(jax.devices())
    assert grid.spec == PartitionSpec(None, "grid") and grid.mesh.axis_names == ("grid",)
    assert kx.EnKF(4, sharding=members).sharding is members
    with pytest.raises(ValueError, match="`axis_name` 'x' is not an axis of the mesh"):
        MemberSharding(device_mesh(axis_name="members"), "x")
    with pytest.raises(ValueError, match="`devices` is empty"):
        device_mesh([])
    with pytest.raises(TypeError, match="`sharding` must be a MemberSharding"):
        kx.EnKF(4, sharding="members")
    # the sharding is static: the filter stays a pytree of its hyperparameters only
    leaves = jax.tree_util.tree_leaves(kx.EnKF(4, inflation=1.02, sharding=members))
    assert len(leaves) == 1
