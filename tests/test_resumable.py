"""kx.assimilate_resumable: the chunked, checkpointed run equals `assimilate` bit for bit;
a run killed with SIGKILL in the middle of a chunk resumes from its last saved chunk, does
not redo the saved ones and ends identical to an uninterrupted run; a folder of another
run is refused; bad input named."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.presets import lorenz96_sakov2008

ROOT = pathlib.Path(__file__).parent.parent


def test_chunked_checkpointed_runs_equal_assimilate_bit_for_bit(tmp_path):
    setup = lorenz96_sakov2008(100)
    _, ys = kx.simulate(setup.model, jax.random.key(0), 100)
    etkf = kx.EnKF(10, kx.SquareRoot(), inflation=1.02, rotate=True)
    final, history = kx.assimilate_resumable(setup.model, etkf, ys, jax.random.key(1), folder=tmp_path / "etkf",
                                             chunk_size=30)
    final_plain, plain = kx.assimilate(setup.model, etkf, ys, jax.random.key(1))
    np.testing.assert_array_equal(history.mean, plain.mean)
    np.testing.assert_array_equal(history.info.log_likelihood, plain.info.log_likelihood)
    np.testing.assert_array_equal(final.members, final_plain.members)
    assert sorted(p.name for p in (tmp_path / "etkf").iterdir()) == [
        "chunk-00000.eqx", "chunk-00001.eqx", "chunk-00002.eqx", "chunk-00003.eqx", "run.json", "state.eqx"]
    # called again: everything is read back, nothing recomputed, same result
    again = kx.assimilate_resumable(setup.model, etkf, ys, jax.random.key(1), folder=tmp_path / "etkf", chunk_size=30)
    np.testing.assert_array_equal(again[1].mean, plain.mean)
    # a linear model with a time-varying field, covariances saved
    model = kx.LinearGaussianSSM(0.9 * jnp.eye(2), jnp.eye(2), 0.1 * jnp.eye(2),
                                 kx.TimeVarying(jnp.linspace(0.5, 1.0, 50)[:, None, None] * jnp.eye(2)),
                                 jnp.zeros(2), jnp.eye(2))
    _, ys = kx.simulate(model, jax.random.key(3), 50)
    save = kx.Save(cov=True, forecast=True)
    _, chunked = kx.assimilate_resumable(model, kx.KalmanFilter(), ys, folder=tmp_path / "kf", chunk_size=7, save=save)
    _, plain = kx.assimilate(model, kx.KalmanFilter(), ys, save=save)
    for a, b in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(a, b)


CHILD = textwrap.dedent('''
    import os, signal, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    import kalmax as kx
    from kalmax.models import Flow, Lorenz96, RK4

    kill_at = int(sys.argv[2])
    calls = [0]

    def tick(_):
        calls[0] += 1
        if calls[0] == kill_at:  # in the middle of a compiled chunk
            os.kill(os.getpid(), signal.SIGKILL)

    flow = Flow(Lorenz96(8), RK4(0.05))

    def dynamics(v):
        jax.debug.callback(tick, v[0])
        return flow(v)

    model = kx.StateSpaceModel(dynamics, jnp.eye(8), None, jnp.eye(8), 8.0 + jnp.sin(jnp.arange(8.0)), jnp.eye(8))
    _, ys = kx.simulate(kx.StateSpaceModel(flow, jnp.eye(8), None, jnp.eye(8), 8.0 + jnp.sin(jnp.arange(8.0)),
                                           jnp.eye(8)), jax.random.key(0), 200)
    method = kx.ThreeDVar(0.5 * jnp.eye(8))
    final, history = kx.assimilate_resumable(model, method, ys, folder=sys.argv[1], chunk_size=40,
                                             progress=lambda done, total: print("saved", done, flush=True))
    np.savez(sys.argv[3], mean=np.asarray(history.mean), final=np.asarray(final.mean),
             nis=np.asarray(history.info.nis), calls=calls[0])
''')


def _child(tmp_path, folder, kill_at, out):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), str(folder), str(kill_at), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def test_a_run_killed_mid_chunk_resumes_and_ends_identical(tmp_path):
    folder = tmp_path / "run.ckpt"
    killed = _child(tmp_path, folder, 100, tmp_path / "never.npz")  # cycle 100: inside chunk 2 (cycles 80-119)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert killed.stdout.split() == ["saved", "40", "saved", "80"]
    assert not (tmp_path / "never.npz").exists()
    resumed = _child(tmp_path, folder, -1, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split() == ["saved", "120", "saved", "160", "saved", "200"]
    whole = _child(tmp_path, tmp_path / "whole.ckpt", -1, tmp_path / "whole.npz")
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed, whole = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "whole.npz")
    assert int(resumed["calls"]) == 120 and int(whole["calls"]) == 200  # the saved chunks were not rerun
    for name in ("mean", "final", "nis"):
        np.testing.assert_array_equal(resumed[name], whole[name])


def test_a_folder_of_another_run_is_refused_and_bad_input_named(tmp_path):
    model = kx.LinearGaussianSSM(0.9 * jnp.eye(2), jnp.eye(2), 0.1 * jnp.eye(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2))
    _, ys = kx.simulate(model, jax.random.key(0), 20)
    kx.assimilate_resumable(model, kx.KalmanFilter(), ys, folder=tmp_path, chunk_size=5)
    with pytest.raises(ValueError, match="`folder`: the checkpoint folder .* holds another run .*ys"):
        kx.assimilate_resumable(model, kx.KalmanFilter(), ys + 1.0, folder=tmp_path, chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size"):
        kx.assimilate_resumable(model, kx.KalmanFilter(), ys, folder=tmp_path, chunk_size=4)
    with pytest.raises(ValueError, match="`chunk_size` must be an integer >= 1"):
        kx.assimilate_resumable(model, kx.KalmanFilter(), ys, folder=tmp_path / "b", chunk_size=0)
    with pytest.raises(TypeError, match="`save` must be a kalmax.Save"):
        kx.assimilate_resumable(model, kx.KalmanFilter(), ys, folder=tmp_path / "c", chunk_size=5,
                                save=lambda *args: None)
    with pytest.raises(ValueError, match="`key` is required"):
        kx.assimilate_resumable(model, kx.EnKF(5, kx.SquareRoot()), ys, folder=tmp_path / "d", chunk_size=5)
    with pytest.raises(TypeError, match="`method`"):
        kx.assimilate_resumable(model, "kf", ys, folder=tmp_path / "e", chunk_size=5)
