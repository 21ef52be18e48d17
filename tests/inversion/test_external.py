"""invert_external: forward models outside JAX on process pools, threads and Dask.

The reference is `invert` with the equivalent JAX forward model and the same
key: the external loop must reproduce its history row by row.
"""

import concurrent.futures as cf
import logging
import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.inversion import external
from kalmax.inversion.eki import EKI, ETKI
from kalmax.inversion.external import IterationReport, invert_external
from kalmax.inversion.invert import (
    RUNNING,
    DiscrepancyPrinciple,
    InversionError,
    invert,
)
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.schedulers import DataMisfitController

from . import _external_models as models

J = 10


def make_problems(dtype=jnp.float64):
    """The same problem with a JAX forward (for `invert`) and with forward=None."""
    truth = np.array([0.3, -0.2, 0.5])
    noise = 0.05 * np.array([0.3, -1.0, 0.2, 0.5, -0.1])
    y = jnp.asarray(models.A @ truth + noise, dtype)
    prior = Prior(jnp.zeros(3, dtype), jnp.eye(3, dtype=dtype))
    obs_cov = 0.01 * jnp.eye(5, dtype=dtype)
    matrix = jnp.asarray(models.A, dtype)
    jax_problem = InverseProblem(lambda theta: matrix @ theta, y, obs_cov, prior)
    external_problem = InverseProblem(None, y, obs_cov, prior)
    return jax_problem, external_problem


def assert_same_result(reference, result, rtol=1e-10, atol=1e-12):
    assert int(result.code) == int(reference.code)
    assert int(result.n_iterations) == int(reference.n_iterations)
    for name in ("mean", "variance", "physical_mean", "misfit", "time", "step_size"):
        ref, got = getattr(reference.history, name), getattr(result.history, name)
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(result.history.failures, reference.history.failures)
    np.testing.assert_allclose(result.state.members, reference.state.members, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.state.time, reference.state.time, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def process_pool():
    # spawn: forking a process that has started JAX's threads can deadlock
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client.get_executor()
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def fixed_reference():
    jax_problem, _ = make_problems()
    return invert(jax_problem, EKI(J), jax.random.PRNGKey(3), 6)


def test_process_pool_matches_invert(process_pool, fixed_reference):
    _, problem = make_problems()
    result = invert_external(problem, EKI(J), jax.random.PRNGKey(3), models.linear, 6, executor=process_pool)
    assert_same_result(fixed_reference, result)
    assert int(result.code) == RESULTS.SUCCESSFUL and result.history.mean.shape == (7, 3)


def test_dask_cluster_matches_invert(dask_executor, fixed_reference):
    _, problem = make_problems()
    result = invert_external(problem, EKI(J), jax.random.PRNGKey(3), models.linear, 6, executor=dask_executor)
    assert_same_result(fixed_reference, result)


def test_default_executor_is_a_process_pool_it_shuts_down(fixed_reference):
    _, problem = make_problems()
    children = set(multiprocessing.active_children())
    result = invert_external(problem, EKI(J), jax.random.PRNGKey(3), models.linear, 6)
    assert_same_result(fixed_reference, result)
    assert set(multiprocessing.active_children()) == children  # its workers have exited


@pytest.mark.parametrize(
    "method, stop",
    [
        (EKI(J, scheduler=DataMisfitController()), None),  # ends at the final time
        (ETKI(J, scheduler=DataMisfitController()), DiscrepancyPrinciple(tau=2.0)),
    ],
)
def test_adaptive_runs_match_invert(method, stop):
    jax_problem, problem = make_problems()
    key = jax.random.PRNGKey(7)
    reference = invert(jax_problem, method, key, stop=stop, max_steps=30)
    assert int(reference.code) in (RESULTS.DISCREPANCY, RESULTS.FINAL_TIME)
    with cf.ThreadPoolExecutor(2) as pool:
        result = invert_external(problem, method, key, models.linear, stop=stop, max_steps=30, executor=pool)
    assert_same_result(reference, result)
    assert result.history.mean.shape == (31, 3)


def test_float32_matches_invert():
    jax_problem, problem = make_problems(jnp.float32)
    key = jax.random.PRNGKey(5)
    reference = invert(jax_problem, EKI(J), key, 4)
    with cf.ThreadPoolExecutor(2) as pool:
        result = invert_external(problem, EKI(J), key, models.linear, 4, executor=pool)
    assert result.state.members.dtype == jnp.float32 and result.history.misfit.dtype == jnp.float32
    assert_same_result(reference, result, rtol=1e-4, atol=1e-5)


def test_update_is_traced_once_and_reused():
    traces = []

    def never_fails(output):  # runs only while `_update` is being traced
        traces.append(1)
        return jnp.zeros((), bool)

    _, base = make_problems()
    problem = InverseProblem(None, base.y, base.obs_cov, base.prior, failed_if=never_fails)
    with cf.ThreadPoolExecutor(2) as pool:
        invert_external(problem, EKI(J), jax.random.PRNGKey(0), models.linear, 8, executor=pool)
        first = len(traces)
        # one trace of `_update`: `failed_if` is called by the loop and again inside `tell`
        assert first == 2
        invert_external(problem, EKI(J), jax.random.PRNGKey(1), models.linear, 3, executor=pool)
    assert len(traces) == first  # another key and another n_steps: no new trace


def test_raising_members_are_coded_and_redrawn(process_pool, caplog):
    # reference: a JAX forward giving NaN where the external one raises; the update is the same
    jax_problem, problem = make_problems()
    matrix = jnp.asarray(models.A)
    nan_problem = InverseProblem(
        lambda t: jnp.where(t[0] > models.THRESHOLD, jnp.nan, matrix @ t), jax_problem.y, jax_problem.obs_cov,
        jax_problem.prior,
    )
    key = jax.random.PRNGKey(11)
    reference = invert(nan_problem, EKI(J), key, 5)
    reports = []
    with caplog.at_level(logging.WARNING, logger="kalmax.inversion.external"):
        result = invert_external(
            problem, EKI(J), key, models.raises_above_threshold, 5, executor=process_pool, callback=reports.append
        )
    failures = np.asarray(result.history.failures)
    expected = np.where(np.asarray(reference.history.failures) == RESULTS.FORWARD_NON_FINITE, RESULTS.FORWARD_RAISED, RESULTS.SUCCESSFUL)
    np.testing.assert_array_equal(failures, expected)
    assert np.any(failures == RESULTS.FORWARD_RAISED)
    points = np.stack([r.points for r in reports])
    np.testing.assert_array_equal(failures == RESULTS.FORWARD_RAISED, points[:, :, 0] > models.THRESHOLD)
    for name in ("mean", "variance", "misfit", "step_size"):  # NaN where both record a failed iteration's value
        np.testing.assert_allclose(getattr(result.history, name), getattr(reference.history, name), rtol=1e-10,
                                   equal_nan=True)
    # members that raised were redrawn: the next ensemble is finite and moved
    assert np.all(np.isfinite(np.asarray(result.state.members)))
    first_failing = int(np.argmax(failures.any(axis=1)))
    report = reports[first_failing]
    assert report.n_raised == int((failures[first_failing] == RESULTS.FORWARD_RAISED).sum())
    assert 1 <= len(report.errors) <= external.MAX_MESSAGES
    assert "ValueError: solver diverged: theta[0] =" in report.errors[0][1]
    assert np.all(np.isnan(report.outputs[failures[first_failing] == RESULTS.FORWARD_RAISED]))
    assert any(f"iteration {first_failing}:" in r.getMessage() and "solver diverged" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_all_members_raising_is_an_error_saying_how_many_and_why(process_pool):
    _, problem = make_problems()
    message = (
        r"EKI: at iteration 0, 10 of 10 members failed \(10 the forward run raised an exception\).*"
        r"First errors of the forward runs: member 0: RuntimeError: license server unreachable"
    )
    with pytest.raises(InversionError, match=message):
        invert_external(problem, EKI(J), jax.random.PRNGKey(0), models.always_raises, 3, executor=process_pool)
    result = invert_external(
        problem, EKI(J), jax.random.PRNGKey(0), models.always_raises, 3, executor=process_pool, throw=False
    )
    assert int(result.code) == RESULTS.TOO_FEW_SUCCESSES and int(result.n_iterations) == 0
    np.testing.assert_array_equal(result.history.failures[0], RESULTS.FORWARD_RAISED)
    np.testing.assert_array_equal(result.history.failures[1:], -1)


def test_wrong_shape_is_a_clear_error(process_pool):
    _, problem = make_problems()
    with pytest.raises(ValueError, match=r"member 0 at iteration 0 .* returned shape \(4,\); .* a \(5,\) array"):
        invert_external(problem, EKI(J), jax.random.PRNGKey(0), models.wrong_shape, 2, executor=process_pool)
    with pytest.raises(TypeError, match=r"member 0 at iteration 0 .* returned a NoneType .* \(5,\) array of real"):
        invert_external(problem, EKI(J), jax.random.PRNGKey(0), models.returns_none, 2, executor=process_pool)


def test_timeout_codes_slow_members_as_raised():
    _, problem = make_problems()
    reports = []
    with cf.ThreadPoolExecutor(J) as pool:
        result = invert_external(
            problem, EKI(J), jax.random.PRNGKey(2), models.slow_above_threshold, 1, executor=pool, timeout=0.1,
            callback=reports.append, throw=False,
        )  # fmt: skip
    slow = reports[0].points[:, 0] > models.THRESHOLD
    assert slow.any() and not slow.all()
    np.testing.assert_array_equal(np.asarray(result.history.failures[0]) == RESULTS.FORWARD_RAISED, slow)
    assert "did not finish within timeout=0.1 s" in reports[0].errors[0][1]


def test_callback_reports():
    _, problem = make_problems()
    reports = []
    with cf.ThreadPoolExecutor(2) as pool:
        result = invert_external(problem, EKI(J), jax.random.PRNGKey(4), models.linear, 3, executor=pool,
                                 callback=reports.append)  # fmt: skip
    assert [r.iteration for r in reports] == [0, 1, 2, 3]
    assert [r.code for r in reports] == [RUNNING, RUNNING, RUNNING, RESULTS.SUCCESSFUL]
    assert all(isinstance(r, IterationReport) and r.forward_seconds > 0 and r.update_seconds > 0 for r in reports)
    np.testing.assert_allclose(reports[1].outputs, reports[1].points @ models.A.T, rtol=1e-12)
    np.testing.assert_allclose(reports[-1].state.members, result.state.members)
    np.testing.assert_allclose(reports[0].state.members, problem.unconstrain(reports[1].points), rtol=1e-12)


def test_argument_errors():
    _, problem = make_problems()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="give `n_steps`, a stopping rule"):
        invert_external(problem, EKI(J), key, models.linear)
    with pytest.raises(TypeError, match="`executor` must be a concurrent.futures.Executor"):
        invert_external(problem, EKI(J), key, models.linear, 2, executor="dask")
    with pytest.raises(TypeError, match="`forward` must be callable"):
        invert_external(problem, EKI(J), key, np.ones(3), 2)
    with pytest.raises(TypeError, match="`forward` must be picklable to run in a process pool"):
        invert_external(problem, EKI(J), key, lambda theta: models.A @ theta, 2)
    with pytest.raises(ValueError, match="`timeout` must be a positive number"):
        invert_external(problem, EKI(J), key, models.linear, 2, timeout=0.0)
    with pytest.raises(ValueError, match="EKI needs a `key`"):
        invert_external(problem, EKI(J), None, models.linear, 2)
    with pytest.raises(TypeError, match="`stop` must be a DiscrepancyPrinciple"):
        invert_external(problem, EKI(J), key, models.linear, 2, stop=1.0)


def test_module_docstring_example_runs():
    """The ask/tell loop of the module docstring, executed as written."""
    block = re.search(r"with a job scheduler.*?::\n\n(.*?)\n\"\"\"", external.__doc__ + '\n"""', re.S)
    assert block is not None
    namespace = {}
    exec(textwrap.dedent(block.group(1)), namespace)  # noqa: S102 - our own docstring
    state = namespace["state"]
    assert int(state.iteration) == 10
    np.testing.assert_allclose(namespace["estimate"], [0.6, 0.4], atol=0.05)


CHECKPOINT_CHILD = """
import concurrent.futures as cf, os, signal, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import kalmax as kx
from kalmax.problems import linear_gaussian

folder, kill_at, out, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
setup = linear_gaussian(jax.random.key(0), 3, 5)
matrix = np.asarray(setup.matrix)
calls = [0]

def forward(theta):
    calls[0] += 1
    if calls[0] == kill_at:  # killed in the middle of this forward run
        os.kill(os.getpid(), signal.SIGKILL)
    with open(log, "a") as handle:
        handle.write("run\\n")  # one line per forward run that finished
    return matrix @ theta

with cf.ThreadPoolExecutor(max_workers=1) as pool:
    result = kx.invert_external(setup.problem, kx.EKI(6), jax.random.key(1), forward, 4, executor=pool,
                                checkpoint=folder,
                                callback=lambda report: print("iteration", report.iteration, flush=True))
np.savez(out, mean=np.asarray(result.history.mean), ensemble=np.asarray(result.ensemble),
         misfit=np.asarray(result.history.misfit))
"""


def _checkpoint_child(tmp_path, folder, kill_at, out, log):
    script = tmp_path / "child.py"
    script.write_text(CHECKPOINT_CHILD)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), str(folder), str(kill_at), str(out), str(log)],
                          cwd=pathlib.Path(__file__).parent.parent.parent, env=env, capture_output=True, text=True,
                          timeout=240)


def test_a_calibration_killed_mid_iteration_resumes_without_repeating_finished_runs(tmp_path):
    folder, log = tmp_path / "calibration", tmp_path / "runs.log"
    # 6 members x 5 ensembles (4 updates): run 15 is member 2 of iteration 2
    killed = _checkpoint_child(tmp_path, folder, 15, tmp_path / "never.npz", log)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert killed.stdout.split() == ["iteration", "0", "iteration", "1"]
    assert len(log.read_text().split()) == 14
    assert sorted(p.name for p in (folder / "iteration-00002").iterdir()) == [
        "member-00000.npy", "member-00001.npy", "points.npy"]
    resumed = _checkpoint_child(tmp_path, folder, -1, tmp_path / "resumed.npz", log)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split() == ["iteration", "2", "iteration", "3", "iteration", "4"]
    assert len(log.read_text().split()) == 30  # every forward run finished exactly once
    whole_log = tmp_path / "whole.log"
    whole = _checkpoint_child(tmp_path, tmp_path / "whole", -1, tmp_path / "whole.npz", whole_log)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert len(whole_log.read_text().split()) == 30
    resumed, whole = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "whole.npz")
    for name in ("mean", "ensemble", "misfit"):
        np.testing.assert_array_equal(resumed[name], whole[name])
    # called once more, the finished run is read back: no forward run, the same result
    again = _checkpoint_child(tmp_path, folder, -1, tmp_path / "again.npz", log)
    assert again.returncode == 0 and len(log.read_text().split()) == 30
    np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["ensemble"], whole["ensemble"])


def test_a_checkpoint_folder_of_another_calibration_is_refused(tmp_path):
    from kalmax.problems import linear_gaussian

    setup = linear_gaussian(jax.random.key(0), 3, 5)
    matrix = np.asarray(setup.matrix)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        first = invert_external(setup.problem, EKI(6), jax.random.key(1), lambda theta: matrix @ theta, 2,
                                executor=pool, checkpoint=tmp_path)
        with pytest.raises(ValueError, match="`checkpoint`: the checkpoint folder .* holds another run .*key"):
            invert_external(setup.problem, EKI(6), jax.random.key(2), lambda theta: matrix @ theta, 2,
                            executor=pool, checkpoint=tmp_path)
        # adaptive: a run stopped by the discrepancy principle is read back as stopped
        adaptive = invert_external(setup.problem, EKI(6), jax.random.key(1), lambda theta: matrix @ theta,
                                   executor=pool, stop=DiscrepancyPrinciple(), max_steps=30,
                                   checkpoint=tmp_path / "adaptive")
        again = invert_external(setup.problem, EKI(6), jax.random.key(1), lambda theta: (_ for _ in ()).throw(
            AssertionError("no forward run expected")), executor=pool, stop=DiscrepancyPrinciple(), max_steps=30,
            checkpoint=tmp_path / "adaptive")
    assert int(again.n_iterations) == int(adaptive.n_iterations) and again.message == adaptive.message
    np.testing.assert_array_equal(again.ensemble, adaptive.ensemble)
    assert first.history.mean.shape[0] == 3


def test_progress_bar_counts_the_iterations(capsys):
    from kalmax.problems import linear_gaussian

    setup = linear_gaussian(jax.random.key(0), 3, 5)
    matrix = np.asarray(setup.matrix)
    seen = []
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        invert_external(setup.problem, EKI(6), jax.random.key(1), lambda theta: matrix @ theta, 3, executor=pool,
                        progress=True, callback=lambda report: seen.append(report.iteration))
    err = capsys.readouterr().err
    assert "EKI iterations" in err and "4/4" in err and "misfit=" in err
    assert seen == [0, 1, 2, 3]  # the user's callback still runs
    with pytest.raises(TypeError, match="`progress`"):
        invert_external(setup.problem, EKI(6), jax.random.key(1), lambda theta: matrix @ theta, 3, progress="yes")


def test_a_checkpointed_calibration_keeps_legacy_and_non_default_keys(tmp_path):
    from kalmax.problems import linear_gaussian

    setup = linear_gaussian(jax.random.key(0), 3, 5)
    matrix = np.asarray(setup.matrix)
    for index, key in enumerate((jax.random.PRNGKey(1), jax.random.key(1, impl="rbg"))):
        with cf.ThreadPoolExecutor(max_workers=2) as pool:
            runs = [invert_external(setup.problem, EKI(6), key, lambda theta: matrix @ theta, 3, executor=pool,
                                    checkpoint=tmp_path / str(index)) for _ in range(2)]
            plain = invert_external(setup.problem, EKI(6), key, lambda theta: matrix @ theta, 3, executor=pool)
        for run in runs:
            np.testing.assert_array_equal(run.ensemble, plain.ensemble)
