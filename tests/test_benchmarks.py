"""The device benchmark runs unchanged on a CPU in its quick form (so that the first session
lent a GPU only has to run it), and the scaling benchmark's fits recover known exponents."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_scaling  # noqa: E402


def test_the_device_benchmark_runs_on_a_cpu_in_its_quick_form(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)  # with the suite's compile flags (conftest.py)
    result = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--quick", "--out", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "gpu-quick.md").read_text()
    for section in ("## 1. Kalman filter", "## 2. ETKF and LETKF", "## 3. Sweep", "## 4. EKI on Darcy"):
        assert section in report
    saved = json.loads((tmp_path / "gpu-quick.json").read_text())
    assert saved["device"]["backend"] == "cpu"
    rows = {row["id"]: row for row in saved["rows"]}
    assert all(row["status"] == "ok" and row["time_s"] > 0 and row["peak_bytes"] is not None for row in rows.values())
    # the parallel-in-time filter computes the sequential one's likelihood (float32)
    sequential, parallel = (rows[f"kalman dx=4 T=100 {form}"]["log_likelihood"] for form in ("sequential", "parallel"))
    assert parallel == pytest.approx(sequential, rel=1e-4)
    assert all(row["finite"] for row in rows.values() if row["kind"] == "filter")
    assert rows["EKI Darcy J=20"]["parameter_error"] < 1.0


def test_the_scaling_fits_recover_known_exponents():
    dims, members = [10**4, 10**5, 10**6], [10, 100, 1000]
    assert bench_scaling.fit_exponent(dims, [3e-9 * d for d in dims]) == pytest.approx(1.0)
    assert bench_scaling.fit_exponent(members, [2.0 * n**2.5 for n in members]) == pytest.approx(2.5)
    assert bench_scaling.fit_exponent([1], [1.0]) is None  # one point: no slope
    # XLA's buffers: 8 bytes per member and variable, plus the observations and means of 2 cycles
    rows = [dict(status="ok", sweep="d", method="LETKF", dim=d, members=20, per_cycle_s=1e-6 * d, cycles=2,
                 dtype="float64", program_bytes=8.0 * 20 * d + 2 * 2 * d * 8) for d in (100, *dims)]
    rows += [dict(status="ok", sweep="N", method="LETKF", dim=1000, members=n, per_cycle_s=1e-9 * n**3, cycles=2,
                  dtype="float64", program_bytes=8.0 * 1000 * n + 2 * 2 * 1000 * 8) for n in members]
    rows.append(dict(status="timeout", sweep="d", method="LETKF", dim=10**7, members=20))
    fitted = {(f["against"], f["method"]): f for f in bench_scaling.fits(rows, fit_from_d=10**4)}
    assert fitted["d", "LETKF"]["range"].startswith("10,000 .. 1,000,000 (3 points)")
    np.testing.assert_allclose([fitted["d", "LETKF"]["time"], fitted["d", "LETKF"]["memory"]], [1.0, 1.0])
    np.testing.assert_allclose([fitted["N", "LETKF"]["time"], fitted["N", "LETKF"]["memory"]], [3.0, 1.0])
    constant, per_member_variable, residual = fitted["d", "LETKF"]["memory_affine"]
    np.testing.assert_allclose([constant, per_member_variable, residual], [0.0, 8.0, 0.0], atol=1e-6)
    # d = 10^7, N = 100 from the largest cell: memory linear in N d, time scaled by the fitted exponents
    extrapolated = bench_scaling.extrapolate(rows, list(fitted.values()))["LETKF"]
    assert extrapolated["from_cell"] == "d = 1,000,000, N = 20"
    np.testing.assert_allclose(extrapolated["memory_bytes"], 8.0 * 10**9)
    np.testing.assert_allclose(extrapolated["cpu_time_s"], 1e-6 * 10**7 * 5.0**3)


def test_the_gold_standard_particle_filters_reproduce_the_kalman_filters_on_linear_models():
    """Law & Stuart's evaluation (bench_continuous parts 6 and 7) rests on its particle filters:
    on linear-Gaussian models they must give the Kalman (Kalman-Bucy) filter's mean and covariance."""
    import jax
    import jax.numpy as jnp

    import bench_continuous
    import kalmax as kx
    from kalmax.observations import IndexObservation

    drift = jnp.asarray([[0.9, 0.2], [-0.2, 0.9]])
    model = kx.StateSpaceModel(lambda v: drift @ v, IndexObservation([0], 2), 0.1 * jnp.eye(2), 0.5 * jnp.eye(1),
                               jnp.asarray([1.0, -1.0]), jnp.eye(2))
    linear = kx.LinearGaussianSSM(drift, jnp.eye(1, 2), 0.1 * jnp.eye(2), 0.5 * jnp.eye(1), jnp.asarray([1.0, -1.0]),
                                  jnp.eye(2))
    _, ys = kx.simulate(linear, jax.random.key(0), 15)
    means, covs, ess = bench_continuous.particle_filter(model, ys, jax.random.key(1), 40_000)
    _, exact = kx.assimilate(linear, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    assert float(jnp.min(ess)) > 5_000
    np.testing.assert_allclose(means, exact.mean, atol=0.03)
    np.testing.assert_allclose(covs, exact.cov, atol=0.03)

    continuous = kx.ContinuousModel(-0.5 * jnp.eye(2), 0.3 * jnp.eye(2), jnp.eye(1, 2), 0.1 * jnp.eye(1),
                                    jnp.asarray([1.0, 0.0]), 0.5 * jnp.eye(2))
    dt, every = 0.005, 20
    data = kx.simulate_continuous(continuous, jax.random.key(2), 10 * every, dt)
    means, covs, _ = bench_continuous.continuous_particle_filter(continuous, data.increments, dt,
                                                                 jax.random.key(3), 40_000, every)
    bucy = kx.KalmanBucy().run(continuous, data.increments, dt)
    np.testing.assert_allclose(means, bucy.mean[every::every], atol=0.03)
    np.testing.assert_allclose(covs, bucy.cov[every::every], atol=0.03)
