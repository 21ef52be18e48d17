"""kx.to_xarray / kx.to_netcdf: History, TwinResult, SweepResult and InversionResult as
labelled Datasets with the documented dimensions, and a NetCDF round trip that gives back
the same numbers; the command line's --save."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

xr = pytest.importorskip("xarray")

import kalmax as kx  # noqa: E402
from kalmax import cli  # noqa: E402
from kalmax.presets import lorenz96_sakov2008  # noqa: E402
from kalmax.problems import linear_gaussian  # noqa: E402


def _round_trip(result, path, **attrs):
    kx.to_netcdf(result, path, **attrs)
    with xr.open_dataset(path) as loaded:
        return loaded.load()


def test_history_of_a_kalman_filter_and_of_an_ensemble(tmp_path):
    model = kx.LinearGaussianSSM(0.9 * jnp.eye(3), jnp.eye(2, 3), 0.1 * jnp.eye(3), jnp.eye(2), jnp.zeros(3),
                                 jnp.eye(3))
    _, ys = kx.simulate(model, jax.random.key(0), 20)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True, forecast=True))
    dataset = kx.to_xarray(history, method="KalmanFilter")
    assert dataset["mean"].dims == ("time", "component") and dataset.sizes["time"] == 20
    assert dataset["cov"].dims == ("time", "component", "component_2")
    assert {"info_log_likelihood", "info_nis", "info_status", "info_n_observed"} <= set(dataset.data_vars)
    assert dataset.attrs["method"] == "KalmanFilter"
    loaded = _round_trip(history, tmp_path / "kf.nc", method="KalmanFilter")
    np.testing.assert_array_equal(loaded["mean"].values, history.mean)
    np.testing.assert_array_equal(loaded["forecast_cov"].values, history.forecast_cov)
    np.testing.assert_array_equal(loaded["info_log_likelihood"].values, history.info.log_likelihood)
    setup = lorenz96_sakov2008(10)
    _, ys = kx.simulate(setup.model, jax.random.key(1), 10)
    _, history = kx.assimilate(setup.model, kx.EnKF(6, kx.SquareRoot()), ys, jax.random.key(2),
                               save=kx.Save(state=True))
    loaded = _round_trip(history, tmp_path / "etkf.nc")
    assert loaded["members"].dims == ("time", "member", "component") and loaded["members"].shape == (10, 6, 40)
    np.testing.assert_array_equal(loaded["members"].values, history.state.members)


def test_twin_result(tmp_path):
    setup = lorenz96_sakov2008(60)
    result = kx.twin_experiment(setup.model, kx.EnKF(20, kx.SquareRoot(), inflation=1.02), 60, jax.random.key(0),
                                burn_in=20)
    loaded = _round_trip(result, tmp_path / "twin.nc", method="ETKF N=20")
    assert loaded["truth"].dims == ("truth_time", "component") and loaded.sizes["truth_time"] == 61
    assert loaded["ys"].dims == ("time", "observed") and loaded["rmse_analysis"].dims == ("time",)
    assert loaded["rank_histogram"].dims == ("rank",) and loaded.sizes["rank"] == 21
    np.testing.assert_array_equal(loaded["rmse_analysis"].values, result.cycles.rmse_analysis)
    np.testing.assert_array_equal(loaded["truth"].values, result.truth)
    assert loaded.attrs["burn_in"] == 20 and loaded.attrs["method"] == "ETKF N=20"
    assert loaded.attrs["stats_rmse_analysis"] == pytest.approx(float(result.stats.rmse_analysis), rel=1e-15)
    assert loaded.attrs["stats_diverged"] == int(bool(result.stats.diverged)) == 0
    # 3DVAR: no spread, no members; the Dataset leaves them out
    var3d = kx.twin_experiment(setup.model, kx.ThreeDVar(0.5 * jnp.eye(40)), 60, jax.random.key(0))
    dataset = kx.to_xarray(var3d)
    assert "spread_analysis" not in dataset and "rank_histogram" not in dataset


def test_sweep_result_has_one_dimension_per_hyperparameter(tmp_path):
    setup = lorenz96_sakov2008(40)
    result = kx.sweep(setup.model, lambda inflation, radius: kx.LETKF(
        8, kx.Localization(kx.Periodic1D(40), kx.GaspariCohn(radius, max_radius=6.0)), inflation=inflation),
        40, jax.random.key(0), grid={"inflation": [1.0, 1.05], "radius": [3.0, 4.0, 6.0]}, n_seeds=2, burn_in=10)
    loaded = _round_trip(result, tmp_path / "sweep.nc")
    assert loaded["rmse_analysis"].dims == ("inflation", "radius", "seed")
    assert loaded["rmse_analysis_mean"].dims == ("inflation", "radius")
    np.testing.assert_array_equal(loaded["radius"].values, [3.0, 4.0, 6.0])
    np.testing.assert_array_equal(loaded["rmse_analysis"].values, result.rmse_analysis)
    np.testing.assert_array_equal(loaded["failed"].values.astype(bool), result.failed)
    best = loaded["rmse_analysis_mean"].where(loaded["n_failed"] == 0)
    index = np.unravel_index(int(np.nanargmin(best.values)), best.shape)
    assert {"inflation": float(loaded["inflation"][index[0]]), "radius": float(loaded["radius"][index[1]])} == \
        result.best()


def test_inversion_result_is_cut_at_the_last_iteration(tmp_path):
    problem = linear_gaussian(jax.random.key(0), 3, 6)
    result = kx.invert(problem.problem, kx.EKI(20), jax.random.key(1), stop=kx.DiscrepancyPrinciple(), max_steps=30)
    loaded = _round_trip(result, tmp_path / "eki.nc")
    n = int(result.n_iterations)
    assert loaded.sizes["iteration"] == n + 1 and loaded["ensemble"].dims == ("member", "parameter")
    np.testing.assert_array_equal(loaded["misfit"].values, result.history.misfit[: n + 1])
    assert loaded.attrs["message"] == result.message


def test_bad_input_and_the_command_line(tmp_path, capsys):
    with pytest.raises(TypeError, match="`result` must be a History"):
        kx.to_xarray(np.zeros(3))
    model = kx.LinearGaussianSSM(0.9 * jnp.eye(2), jnp.eye(2), 0.1 * jnp.eye(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2))
    _, ys = kx.simulate(model, jax.random.key(0), 5)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys)
    with pytest.raises(TypeError, match="attribute `settings`"):
        kx.to_xarray(history, settings={"a": 1})
    with pytest.raises(ValueError, match="`path`"):
        kx.to_netcdf(history, tmp_path / "missing" / "run.nc")
    path = tmp_path / "twin.nc"
    code = cli.main(["twin", "--model", "lorenz63", "--method", "etkf", "--cycles", "80", "--burn-in", "10",
                     "--save", str(path)])
    assert code == 0 and f"wrote {path}" in capsys.readouterr().out
    with xr.open_dataset(path) as loaded:
        assert loaded.sizes["time"] == 80 and loaded.attrs["method"] == "etkf" and "preset" in loaded.attrs
    path = tmp_path / "sweep.nc"
    code = cli.main(["sweep", "--model", "lorenz63", "--method", "etkf", "--inflation", "1.0", "1.02", "--seeds", "2",
                     "--cycles", "40", "--burn-in", "10", "--save", str(path)])
    assert code == 0
    with xr.open_dataset(path) as loaded:
        assert loaded["rmse_analysis"].dims == ("inflation", "seed")
    code = cli.main(["twin", "--cycles", "50", "--burn-in", "5", "--save", str(tmp_path / "no" / "x.nc")])
    assert code == 2 and "--save" in capsys.readouterr().err
