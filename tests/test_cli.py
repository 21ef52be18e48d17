"""The `kalmax` command: list, twin runs with tables and plots, clear errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import kalmax as kx
from kalmax import cli, presets


def run_cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_names_models_presets_and_methods(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ["lorenz63", "lorenz96", "navier-stokes", "lorenz96-sakov2008", "3dvar", "ekf", "ukf", "enkf", "etkf",
                 "denkf", "letkf"]:
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


def test_help_is_complete(capsys):
    # the entry point itself, once in a process of its own; the subcommands' help in this process
    result = subprocess.run([sys.executable, "-m", "kalmax.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    outputs = {"--help": result.stdout}
    for argv in (["twin", "--help"], ["sweep", "--help"]):
        code, out, _ = run_cli(capsys, *argv)
        assert code == 0
        outputs[argv[0]] = out
    assert "sweep" in outputs["--help"] and "twin" in outputs["--help"]
    for option in ["--inflation", "--plot", "--xb", "--ensemble-size", "--rotate", "--no-rotate", "--radius"]:
        assert option in outputs["twin"], option
    for option in ["--inflation", "--seeds", "--ensemble-size", "--radius", "--rotate", "--batch-size", "--sequential",
                   "--cycles"]:
        assert option in outputs["sweep"], option


@pytest.mark.parametrize(
    "preset, method, expected",
    [
        ("lorenz96", "etkf", (24, 1.013, True, "SquareRoot")),
        ("lorenz96", "enkf", (40, 1.06, False, "PerturbedObservations")),
        ("lorenz96", "denkf", (40, 1.01, False, "DEnKF")),
        ("lorenz63", "etkf", (10, 1.02, True, "SquareRoot")),
        ("lorenz63", "enkf", (10, 1.04, False, "PerturbedObservations")),
    ],
)
def test_ensemble_methods_default_to_the_published_settings(preset, method, expected):
    jax.config.update("jax_enable_x64", True)
    args = cli.build_parser().parse_args(["twin", "--model", preset, "--method", method])
    flt = cli.METHODS[method].build(presets.get_preset(preset), args, jax.random.key(0))
    size, infl, rotate, update = expected
    assert isinstance(flt, kx.EnKF) and type(flt.update).__name__ == update
    assert (flt.ensemble_size, flt.rotate) == (size, rotate)
    assert float(flt.inflation.factor) == pytest.approx(infl)
    args = cli.build_parser().parse_args(
        ["twin", "--model", preset, "--method", method, "--ensemble-size", "6", "--inflation", "1.1", "--no-rotate"]
    )
    flt = cli.METHODS[method].build(presets.get_preset(preset), args, jax.random.key(0))
    assert (flt.ensemble_size, flt.rotate, float(flt.inflation.factor)) == (6, False, pytest.approx(1.1))


def test_letkf_defaults_to_dappers_setting():
    args = cli.build_parser().parse_args(["twin", "--method", "letkf"])
    flt = cli.METHODS["letkf"].build(presets.get_preset("lorenz96"), args, jax.random.key(0))
    assert isinstance(flt, kx.LETKF) and (flt.ensemble_size, flt.rotate) == (7, True)
    assert float(flt.inflation.factor) == pytest.approx(1.04)
    assert float(flt.localization.taper.radius) == 4.0 and flt.localization.taper.scale == pytest.approx(1.82)
    assert flt.localization.block == 2


def test_twin_etkf_lorenz96(capsys):
    code, out, _ = run_cli(capsys, "twin", "--model", "lorenz96", "--method", "etkf", "--cycles", "80", "--burn-in", "30")
    assert code == 0 and "etkf (EnKF)" in out
    rmse = float(next(line for line in out.splitlines() if line.startswith("analysis rmse")).split()[-1])
    assert rmse < 0.4  # published long-run 0.18 (N=24, infl 1.013, rotation)


def test_sweep_prints_a_table(capsys):
    # LETKF over a traced localisation radius: inflation x radius x seeds in one call
    code, out, err = run_cli(
        capsys, "sweep", "--model", "lorenz96", "--method", "letkf", "--ensemble-size", "8", "--inflation", "1.04",
        "--radius", "2", "4", "--seeds", "2", "--cycles", "40", "--burn-in", "10",
    )
    assert code == 0, err
    assert "2 settings x 2 seeds in one compiled call" in out and "rmse.a ± stderr" in out
    rows = [line for line in out.splitlines() if " | " in line and "rmse" not in line]
    assert [row.split()[:2] for row in rows] == [["1.04", "2"], ["1.04", "4"]]
    assert all(row.endswith("0/2") for row in rows)
    rmse = [float(row.split("|")[1].split()[0]) for row in rows]
    assert all(0 < r < 0.5 for r in rmse)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sweep", "--method", "etkff"], "unknown method 'etkff'; valid methods: 3dvar, ekf, ukf, enkf, etkf, denkf, enkf-n, letkf"),
        (["sweep", "--method", "etkf", "--radius", "2", "4"],
         "--radius does not apply to --method etkf on lorenz96-sakov2008; its options: --inflation"),
        (["sweep", "--method", "letkf", "--model", "lorenz63"], "letkf needs a spatial model"),
        (["twin", "--method", "letkf", "--model", "lorenz63"], "letkf needs a spatial model"),
        (["sweep", "--model", "lorenz99"], "unknown preset or model 'lorenz99'"),
        (["sweep", "--method", "etkf", "--inflation", "0.9", "--cycles", "10", "--burn-in", "2"],
         "make_method(inflation=0.9) failed: `inflation` must be >= 1"),
        (["twin", "--method", "etkf", "--ensemble-size", "1"], "argument --ensemble-size: must be an integer >= 2; got 1"),
        (["twin", "--method", "etkf", "--shift", "2", "--cycles", "10", "--burn-in", "2"],
         "--shift does not apply to --method etkf on lorenz96-sakov2008; its options: --inflation"),
        (["twin", "--method", "ienks", "--lag", "2", "--shift", "3", "--cycles", "10", "--burn-in", "2"],
         "`shift` must be an integer with 1 <= shift <= lag = 2"),
    ],
)
def test_sweep_errors_are_clear(capsys, argv, match):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert match in err


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


def test_twin_enkf_n_lorenz63(capsys):
    code, out, _ = run_cli(capsys, "twin", "--model", "lorenz63", "--method", "enkf-n", "--cycles", "300")
    assert code == 0
    rmse = float(next(line for line in out.splitlines() if line.startswith("analysis rmse")).split()[-1])
    assert rmse < 0.9  # published long-run 0.54 (EnKF_N N=10 rot); observation noise std sqrt(2)


@pytest.mark.parametrize("kind", ["lorenz96", "navier-stokes"])
def test_twin_figure_labels_every_axis_and_colourbar(kind):
    import matplotlib

    matplotlib.use("Agg")
    from kalmax.plotting import twin_figure

    setup = presets.get_preset(kind, n_cycles=30) if kind == "lorenz96" else presets.get_preset(
        kind, n_cycles=30, grid_size=16)
    method = kx.EnKF(8, kx.SquareRoot(), inflation=1.05) if kind == "lorenz96" else kx.ThreeDVar(
        kx.ScalarCovariance(0.1, setup.model.state_dim))
    result = kx.twin_experiment(setup.model, method, 30, jax.random.key(0), burn_in=5)
    fig = twin_figure(result, interval=setup.interval, kind=kind, observation=setup.model.observation)
    axes = fig.get_axes()
    colourbars = [ax for ax in axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in axes if ax.get_label() != "<colorbar>"]
    assert len(colourbars) == 3 and all(bar.get_ylabel() for bar in colourbars)
    for ax in panels:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    time_panels = [ax for ax in panels if ax.get_xlabel() == "time"]
    assert len({ax.get_xlim() for ax in time_panels}) == 1  # one time axis
    legends = " ".join(text.get_text() for ax in panels if ax.get_legend() for text in ax.get_legend().get_texts())
    assert "end of burn-in (5 cycles)" in legends
    if kind == "lorenz96":
        assert any(ax.get_title().startswith("rank histogram") for ax in panels)
    else:
        assert not any("v[" in ax.get_ylabel() for ax in panels)  # no 'component 2048' of a flattened grid
        assert {ax.get_xlabel() for ax in panels if "vorticity" in ax.get_title() or ax.get_title() == "error"} == {"x"}


def test_twin_and_sweep_run_the_smoothers_and_report_the_smoothed_rmse(capsys):
    code, out, _ = run_cli(capsys, "twin", "--model", "lorenz63", "--method", "ienks", "--lag", "4", "--shift", "2",
                           "--n-iter", "3", "--cycles", "120", "--burn-in", "20")
    assert code == 0 and "(IEnKS)" in out

    def value(name):
        return float(next(line for line in out.splitlines() if line.startswith(name)).split()[-1])

    assert value("smoothed rmse") < value("analysis rmse") < 0.6
    code, out, _ = run_cli(capsys, "sweep", "--model", "lorenz63", "--method", "enks", "--lag", "3", "--inflation",
                           "1.02", "1.05", "--seeds", "2", "--cycles", "80", "--burn-in", "20")
    assert code == 0 and "rmse.s" in out


def test_twin_figure_draws_a_smoothers_smoothed_mean_and_rmse():
    import matplotlib

    matplotlib.use("Agg")
    from kalmax.plotting import twin_figure

    setup = presets.get_preset("lorenz63", n_cycles=40)
    result = kx.twin_experiment(setup.model, kx.IEnKS(8, lag=3, n_iter=2, inflation=1.02), 40, jax.random.key(0),
                                burn_in=5)
    assert result.lag == 3
    fig = twin_figure(result, interval=setup.interval, observation=setup.model.observation)
    panels = [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>"]
    legends = " ".join(text.get_text() for ax in panels if ax.get_legend() for text in ax.get_legend().get_texts())
    assert "smoothed mean (lag 3)" in legends and "smoothed rmse" in legends
    rmse_panel = next(ax for ax in panels if ax.get_ylabel() == "rmse / spread")
    line = next(line for line in rmse_panel.get_lines() if line.get_label() == "smoothed rmse")
    # the finished estimates v_0..v_{T-lag}; their mean after the burn-in is the twin's rmse.s
    values = np.asarray(line.get_ydata())
    assert values.shape == (40 - 3 + 1,)
    np.testing.assert_allclose(values[1 + 5:].mean(), float(result.stats.rmse_smoothed), rtol=1e-10)
