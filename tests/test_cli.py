"""The `kalmax` command: list, twin runs with tables and plots, clear errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import kalmax as kx
from kalmax import cli, presets


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_names_models_presets_and_methods(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ["lorenz63", "lorenz96", "navier-stokes", "lorenz96-sakov2008", "3dvar", "ekf", "ukf"]:
        assert name in out


def test_twin_prints_a_table_and_writes_a_plot(capsys, tmp_path):
    out_png = tmp_path / "run.png"
    code, out, _ = run_cli(
        capsys, "twin", "--model", "lorenz96", "--method", "ekf", "--cycles", "150", "--burn-in", "50",
        "--seed", "1", "--plot", str(out_png),
    )
    assert code == 0
    assert "analysis rmse" in out and "analysis spread" in out
    assert out_png.exists() and out_png.stat().st_size > 10_000
    rmse = float(next(line for line in out.splitlines() if line.startswith("analysis rmse")).split()[-1])
    assert rmse < 0.5  # EKF on Lorenz-96 (published long-run 0.24); observation noise is 1


def test_twin_3dvar_lorenz63(capsys):
    code, out, _ = run_cli(
        capsys, "twin", "--model", "lorenz63", "--method", "3dvar", "--cycles", "300", "--climatology-steps", "2000",
    )
    assert code == 0
    rmse = float(next(line for line in out.splitlines() if line.startswith("analysis rmse")).split()[-1])
    assert rmse < 1.4  # published long-run 1.04; observation noise std sqrt(2)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["twin", "--model", "lorenz99"], "unknown preset or model 'lorenz99'; valid presets: lorenz63-sakov2012"),
        (["twin", "--method", "enkff"], "unknown method 'enkff'; valid methods: 3dvar, ekf, ukf"),
    ],
)
def test_unknown_names_list_the_valid_ones(capsys, argv, match):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert match in err


def test_help_is_complete():
    for argv in (["--help"], ["twin", "--help"]):
        result = subprocess.run([sys.executable, "-m", "kalmax.cli", *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0
    assert "--inflation" in result.stdout and "--plot" in result.stdout and "--xb" in result.stdout


def test_presets_match_the_reference_definitions():
    l63 = presets.lorenz63_sakov2012(1000)
    assert l63.interval == pytest.approx(0.25) and l63.burn_in == 64
    np.testing.assert_allclose(l63.model.init_mean, [1.509, -1.531, 25.46])
    np.testing.assert_allclose(l63.model.obs_cov.matrix(), 2 * np.eye(3))
    np.testing.assert_allclose(l63.model.init_cov.matrix(), 2 * np.eye(3))
    l96 = presets.lorenz96_sakov2008(1000)
    assert l96.interval == pytest.approx(0.05) and l96.burn_in == 400
    np.testing.assert_allclose(l96.model.init_mean, np.eye(40)[0])
    np.testing.assert_allclose(l96.model.init_cov.diagonal(), 0.001)
    np.testing.assert_allclose(l96.model.obs_cov.diagonal(), 1.0)
    assert l96.model.dynamics_cov.is_zero()
    with pytest.raises(ValueError, match="valid presets"):
        presets.get_preset("nope")
    assert presets.per_cycle_inflation(180.0, 0.25) == pytest.approx(180.0**0.25)


def test_plot_twin_for_lorenz63(tmp_path):
    jax.config.update("jax_enable_x64", True)
    from kalmax.plotting import plot_twin

    setup = presets.lorenz63_sakov2012(80)
    result = kx.twin_experiment(setup.model, kx.ExtendedKalmanFilter.per_unit_time(180.0, setup.interval), 80,
                                jax.random.key(0), burn_in=10)
    path = plot_twin(result, str(tmp_path / "l63.png"), interval=setup.interval, observation=setup.model.observation)
    assert (tmp_path / "l63.png").stat().st_size > 10_000 and path.endswith("l63.png")
