"""Several processes (`kalmax.distributed`): an EnKF with its members, an LETKF with its grid and
a sweep with its runs split over two CPU processes of two devices each give the one-device
results; a coordinator that cannot be reached and bad arguments are named."""

import json
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import kalmax as kx
from kalmax import presets
from kalmax.distributed import DistributedError, launch_local

CYCLES = 12

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import kalmax as kx
    from kalmax import presets
    from kalmax.sweep import sweep

    kx.distributed.initialize(timeout_s=60)
    T = int(sys.argv[1])
    model = presets.lorenz96_sakov2008(T, dim=16).model
    _, ys = kx.simulate(model, jax.random.key(1), T)
    key = jax.random.key(2)
    out = {"process": jax.process_index(), "devices": jax.device_count(), "local": jax.local_device_count()}
    enkf = kx.EnKF(8, kx.SquareRoot(), inflation=1.02, rotate=True, sharding=kx.MemberSharding())
    final, history = kx.assimilate(model, enkf, ys, key)
    out["enkf"] = kx.distributed.gather(history.mean).tolist()
    out["enkf_local_shards"] = [list(s.data.shape) for s in final.members.addressable_shards]
    letkf = kx.LETKF.dapper(8, kx.Periodic1D(16), 4.0, inflation=1.02, rotate=True, sharding=kx.GridSharding())
    final, history = kx.assimilate(model, letkf, ys, key)
    out["letkf"] = kx.distributed.gather(history.mean).tolist()
    out["letkf_local_shards"] = [list(s.data.shape) for s in final.members.addressable_shards]
    make = lambda inflation: kx.EnKF(4, kx.SquareRoot(), inflation=inflation)
    runs = sweep(model, make, T, key, grid={"inflation": [1.0, 1.02, 1.05, 1.1]}, n_seeds=2, burn_in=4,
                 mesh=jax.devices())
    gathered = kx.distributed.gather(runs)  # the whole SweepResult, as NumPy on every process
    out["sweep"] = gathered.rmse_analysis.tolist()
    out["sweep_best"] = {name: float(value) for name, value in gathered.best().items()}
    out["refused"] = []  # counts that do not divide over the 4 devices of the 2 processes
    for make, dim in ((lambda: kx.EnKF(6, kx.SquareRoot(), sharding=kx.MemberSharding()), 16),
                      (lambda: kx.LETKF.dapper(8, kx.Periodic1D(18), 4.0, sharding=kx.GridSharding()), 18)):
        try:
            kx.assimilate(presets.lorenz96_sakov2008(T, dim=dim).model, make(), jax.numpy.zeros((T, dim)), key)
        except ValueError as err:
            out["refused"].append(str(err))
    print("@@" + json.dumps(out))
    """
)


def single_process_reference():
    from kalmax.sweep import sweep

    model = presets.lorenz96_sakov2008(CYCLES, dim=16).model
    _, ys = kx.simulate(model, jax.random.key(1), CYCLES)
    key = jax.random.key(2)
    enkf = kx.assimilate(model, kx.EnKF(8, kx.SquareRoot(), inflation=1.02, rotate=True), ys, key)[1].mean
    letkf = kx.LETKF.dapper(8, kx.Periodic1D(16), 4.0, inflation=1.02, rotate=True)
    letkf = kx.assimilate(model, letkf, ys, key)[1].mean
    runs = sweep(model, lambda inflation: kx.EnKF(4, kx.SquareRoot(), inflation=inflation), CYCLES, key,
                 grid={"inflation": [1.0, 1.02, 1.05, 1.1]}, n_seeds=2, burn_in=4)
    return {"enkf": np.asarray(enkf), "letkf": np.asarray(letkf), "sweep": np.asarray(runs.rmse_analysis),
            "sweep_best": {name: float(value) for name, value in runs.best().items()}}


def test_two_processes_give_the_one_device_results(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    runs = launch_local([script, str(CYCLES)], num_processes=2, devices_per_process=2, timeout_s=300)
    assert all(run.returncode == 0 for run in runs), [run.stderr[-3000:] for run in runs]
    outputs = [json.loads(line[2:]) for run in runs for line in run.stdout.splitlines() if line.startswith("@@")]
    assert sorted(out["process"] for out in outputs) == [0, 1]
    reference = single_process_reference()
    for out in outputs:
        assert out["devices"] == 4 and out["local"] == 2
        # each process holds its own half of the members / of the grid, in two shards
        assert out["enkf_local_shards"] == [[2, 16], [2, 16]]
        assert out["letkf_local_shards"] == [[8, 4], [8, 4]]
        for name in ("enkf", "letkf", "sweep"):
            np.testing.assert_allclose(np.asarray(out[name]), reference[name], rtol=0, atol=1e-12, err_msg=name)
        assert out["sweep_best"] == reference["sweep_best"]
        members, grid = out["refused"]
        assert "`ensemble_size` 6 is not a multiple of the 4 devices" in members
        assert "18" in grid and "4 devices" in grid, grid


def test_an_unreachable_coordinator_is_a_named_error_after_the_timeout():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DistributedError, match=rf"127\.0\.0\.1:{port} did not answer within 1 s"):
        kx.distributed.initialize(f"127.0.0.1:{port}", 2, 1, timeout_s=1.0)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "arguments, message",
    [(("127.0.0.1:5000", 2, 2), "`process_id` must be an int in \\[0, 2\\)"),
     (("127.0.0.1:5000", 0, 0), "`num_processes` must be an int >= 1"),
     (("localhost", 2, 0), "`coordinator_address` must be 'host:port'")],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        kx.distributed.initialize(*arguments)
    with pytest.raises(ValueError, match="`timeout_s` must be a positive number"):
        kx.distributed.initialize("127.0.0.1:5000", 2, 1, timeout_s=0)


def test_the_launcher_refuses_bad_input_in_one_line():
    with pytest.raises(ValueError, match="`devices_per_process`"):
        launch_local(["run.py"], 2, devices_per_process=0)
    with pytest.raises(ValueError, match="`argv`"):
        launch_local("run.py", 2)
    result = subprocess.run([sys.executable, "-m", "kalmax.cli", "launch", "--processes", "0", "run.py"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "kalmax launch: error: `num_processes` must be an int >= 1" in result.stderr


def test_importing_kalmax_leaves_the_backend_uninitialised():
    """`jax.distributed.initialize` must come before any computation: importing kalmax computes nothing
    (a device count set after the import still takes effect)."""
    code = ("import kalmax, jax; jax.config.update('jax_num_cpu_devices', 3); "
            "assert len(jax.devices()) == 3, jax.devices()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
