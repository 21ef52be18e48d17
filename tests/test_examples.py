"""The examples run and show what they claim (small sizes)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (equinox Modules) look their module up
    spec.loader.exec_module(module)
    return module


def test_3dvar_synchronises_navier_stokes_while_the_free_forecast_does_not(tmp_path):
    example = load("navier_stokes_3dvar")
    # 32 x 32 observed on every 2nd point: the same 16 x 16 observation grid as the
    # example's 64 x 64 / every 4th point (3DVAR needs enough low modes observed).
    out = example.run(grid_size=32, n_cycles=40, seed=1, observe_every=2)
    assert out["start_error"] > 20 * out["obs_std"]
    assert np.mean(out["rmse_3dvar"][-10:]) < out["obs_std"]
    assert np.mean(out["rmse_free"][-10:]) > 20 * out["obs_std"]
    path = example.plot(out, str(tmp_path / "ns.png"))
    assert Path(path).stat().st_size > 10_000


def test_tracking_example_runs_and_the_smoother_beats_the_filter(tmp_path, capsys):
    example = load("tracking_kalman")
    example.main(["--out", str(tmp_path / "tracking.png")])
    out = capsys.readouterr().out
    assert "RTS smoother" in out and (tmp_path / "tracking.png").stat().st_size > 10_000
    truth, ys, history, smoothed = example.run_experiment(seed=5)[:4]
    assert example.rmse(smoothed.mean[:, :2], truth[:, :2]) < example.rmse(history.mean[:, :2], truth[:, :2])


def test_darcy_inversion_example_recovers_the_field(tmp_path):
    example = load("darcy_inversion")
    out = example.run(grid_size=16, n_modes=8, ensemble_size=30, seed=0, eks_steps=40)
    runs = out["runs"]
    assert set(runs) == {"EKI", "ETKI", "UKI", "EKS"}
    for name in ("EKI", "ETKI"):
        assert runs[name]["message"].startswith("stopped by the discrepancy principle")
        assert runs[name]["error"] < out["prior_error"] / 3
    assert runs["UKI"]["error"] < out["prior_error"] / 3
    assert "EKI" in example.table(out)
    path = example.plot(out, str(tmp_path / "darcy.png"))
    assert Path(path).stat().st_size > 10_000


def test_learning_example_moves_the_forcing_towards_the_truth_both_ways(tmp_path):
    example = load("learn_lorenz96")
    out = example.run(dim=8, n_sequences=1, n_obs=50, n_epochs=6, n_members=10, n_augment=300, learning_rate=0.25)
    # halfway from 6 to 8 or better both ways; the accuracy of each route is tested in tests/learning
    assert abs(out["forcing"][-1] - 8.0) < abs(6.0 - 8.0) / 2
    assert out["augmented_forcing"].shape == (300,)
    assert abs(example.augmented_estimate(out) - 8.0) < abs(6.0 - 8.0) / 2
    path = example.plot(out, str(tmp_path / "learn.png"))
    assert Path(path).stat().st_size > 10_000


def test_a_longer_4dvar_window_does_better_on_lorenz96(tmp_path):
    example = load("lorenz96_4dvar")
    out = example.run(n_cycles=90, burn_in=30)
    rmse, smoothed = out["rmse"], out["rmse_smoothed"]
    lag1, lag4 = rmse["4D-Var, lag 1 (B = 0.2 clim.)"], rmse["4D-Var, lag 4 (B = 0.02 clim.)"]
    assert lag4 < lag1 < rmse["3DVAR (B = 0.05 clim.)"]
    assert smoothed["4D-Var, lag 4 (B = 0.02 clim.)"] < lag4
    assert rmse["iEnKS, N = 20, lag 4, xN = 2"] < lag4
    assert "smoothed" in example.table(out)
    path = example.plot(out, str(tmp_path / "l96.png"))
    assert Path(path).stat().st_size > 10_000


def test_3dvar_overcomes_the_butterfly_effect(tmp_path):
    example = load("butterfly_3dvar")
    out = example.run(horizon=12.0, dt=0.004)
    late = out["times"] >= 6.0
    error = {name: values[late].mean() for name, values in out["errors"].items()}
    free, var3d, weak, enkbf = (error[name] for name in out["errors"])
    assert free > 3.0 and weak > 3.0  # the free forecast and the under-weighted 3DVAR are lost
    assert var3d < 1.5 and enkbf < var3d  # 3DVAR tracks at the noise's level, the EnKBF closer still
    assert "rmse" in example.table(out)
    assert Path(example.plot(out, str(tmp_path / "butterfly.png"))).stat().st_size > 10_000


def test_the_iterative_smoother_beats_the_enkf_on_lorenz63(tmp_path, capsys):
    example = load("lorenz63_smoothers")
    out = example.run(n_cycles=200, burn_in=50)
    rmse = out["rmse"]
    assert rmse["iEnKF (iEnKS, lag 1)"] < 0.8 * rmse["EnKF (ETKF)"]
    assert out["rmse_smoothed"]["iEnKS, lag 2"] < rmse["iEnKS, lag 2"]
    assert "filtered" in example.table(out)
    path = example.plot(out, str(tmp_path / "smoothers.png"), window=40)
    assert Path(path).stat().st_size > 10_000
