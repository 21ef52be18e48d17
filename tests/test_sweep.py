"""Sweeps: one vmapped call equals the individual twin experiments; summaries, failures, table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax import presets
from kalmax.ensemble.inflation import Inflations, MultiplicativeInflation, RTPS
from kalmax.sweep import SweepResult, _summarise, sweep

N_CYCLES, BURN_IN, N_SEEDS = 40, 10, 2
GRID = {"inflation": [1.01, 1.05], "rtps": [0.0, 0.3, 0.6]}


def make_etkf(inflation, rtps):
    # RTPS then multiplicative inflation of the analysis anomalies, with rotation (uses the key)
    return kx.EnKF(8, kx.SquareRoot(), inflation=Inflations(RTPS(rtps), MultiplicativeInflation(inflation)),
                   rotate=True)


@pytest.fixture(scope="module")
def setup():
    return presets.lorenz96_sakov2008(N_CYCLES, dim=12)


@pytest.fixture(scope="module")
def result(setup):
    return sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid=GRID, n_seeds=N_SEEDS, burn_in=BURN_IN)


def test_shapes(result):
    assert isinstance(result, SweepResult)
    assert result.names == ("inflation", "rtps") and result.grid_shape == (2, 3) and result.n_seeds == N_SEEDS
    for name in ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast", "failed", "first_failure"):
        assert getattr(result, name).shape == (2, 3, N_SEEDS), name
    for name in ("rmse_analysis_mean", "rmse_analysis_stderr", "rmse_forecast_mean", "rmse_forecast_stderr",
                 "spread_analysis_mean", "n_failed"):
        assert getattr(result, name).shape == (2, 3), name
    np.testing.assert_allclose(result.grid["inflation"], GRID["inflation"])
    assert result.settings()[4] == pytest.approx({"inflation": 1.05, "rtps": 0.3})
    assert not np.any(result.failed) and np.all(np.asarray(result.first_failure) == -1)
    assert np.all(np.isfinite(result.rmse_analysis)) and float(jnp.max(result.rmse_analysis)) < 1.0


def test_sweep_equals_individual_twin_experiments(setup, result):
    seed_keys = jax.random.split(jax.random.key(3), N_SEEDS)
    for i, inflation in enumerate(GRID["inflation"]):
        for j, rtps in enumerate(GRID["rtps"]):
            for s in range(N_SEEDS):
                stats = kx.twin_experiment(setup.model, make_etkf(inflation, rtps), N_CYCLES, seed_keys[s],
                                           burn_in=BURN_IN).stats
                for name in ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast"):
                    np.testing.assert_allclose(getattr(result, name)[i, j, s], getattr(stats, name), rtol=0,
                                               atol=1e-10, err_msg=f"{name} {inflation} {rtps} seed {s}")


def test_sequential_runs_equal_the_vmapped_sweep(setup, result):
    grid = {"inflation": GRID["inflation"][1:], "rtps": GRID["rtps"][:2]}
    one_by_one = sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid=grid, n_seeds=N_SEEDS,
                       burn_in=BURN_IN, vectorize=False)
    np.testing.assert_allclose(one_by_one.rmse_analysis, result.rmse_analysis[1:, :2], rtol=0, atol=1e-10)
    np.testing.assert_allclose(one_by_one.spread_forecast, result.spread_forecast[1:, :2], rtol=0, atol=1e-10)


def test_mean_and_stderr_match_numpy(result):
    values = np.asarray(result.rmse_analysis)
    np.testing.assert_allclose(result.rmse_analysis_mean, values.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(result.rmse_analysis_stderr, values.std(-1, ddof=1) / np.sqrt(N_SEEDS), rtol=1e-10)
    # failed seeds are left out of the mean and the standard error
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 1.0, (4, 5))
    failed = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    values[1, 3] = np.nan
    mean, stderr = _summarise(jnp.asarray(values), jnp.asarray(failed))
    for row in range(3):
        ok = values[row][~failed[row]]
        np.testing.assert_allclose(mean[row], ok.mean(), rtol=1e-12)
        if ok.size > 1:
            np.testing.assert_allclose(stderr[row], ok.std(ddof=1) / np.sqrt(ok.size), rtol=1e-12)
    assert np.isnan(stderr[2])  # one seed: no standard error
    assert np.isnan(mean[3]) and np.isnan(stderr[3])  # every seed failed


def test_table_contains_the_values(result):
    table = result.table("ETKF sweep")
    lines = table.splitlines()
    assert lines[0] == "ETKF sweep" and "rmse.a ± stderr" in table and "spread.a" in table and "failed" in table
    assert len(lines) == 4 + 6  # title, run line, header, rule, one row per setting
    row = lines[4 + 4]  # setting 4: inflation 1.05, rtps 0.3
    assert row.split()[:2] == ["1.05", "0.3"]
    assert f"{float(result.rmse_analysis_mean[1, 1]):.4f} ± {float(result.rmse_analysis_stderr[1, 1]):.4f}" in row
    assert f"{float(result.rmse_forecast_mean[1, 1]):.4f}" in row
    assert f"{float(result.spread_analysis_mean[1, 1]):.4f}" in row and row.endswith("0/2")
    assert result.best() in result.settings()


def test_a_diverging_setting_is_reported_not_raised(setup):
    def make(inflation):
        return kx.EnKF(4, kx.SquareRoot(), inflation=inflation)

    # anomalies times 1e300 overflow at the first analysis: NaN members, a failed status
    result = sweep(setup.model, make, 20, jax.random.key(0), grid={"inflation": [1.02, 1e300, 1.05]},
                   n_seeds=2, burn_in=5, batch_size=2)
    np.testing.assert_array_equal(result.n_failed, [0, 2, 0])
    np.testing.assert_array_equal(result.first_failure[1], [0, 0])
    assert np.isnan(result.rmse_analysis_mean[1]) and np.all(np.isfinite(np.asarray(result.rmse_analysis_mean)[[0, 2]]))
    rows = result.table().splitlines()
    assert rows[-2].split()[-2:] == ["2/2", "0/2"] and "nan" in rows[-2]  # failed, not counted as diverged
    assert result.best()["inflation"] in (1.02, 1.05)
    with pytest.raises(kx.DivergenceError, match="at cycle 0"):
        kx.twin_experiment(setup.model, make(1e300), 20, jax.random.split(jax.random.key(0), 2)[0])


def test_bad_input_is_named():
    setup = presets.lorenz96_sakov2008(10, dim=8)
    model, key = setup.model, jax.random.key(0)

    def make(inflation):
        return kx.EnKF(4, inflation=inflation)

    with pytest.raises(ValueError, match="Python identifiers"):
        sweep(model, make, 10, key, grid={"infl ation": [1.0]})
    with pytest.raises(ValueError, match=r"non-empty 1-D array"):
        sweep(model, make, 10, key, grid={"inflation": [[1.0, 1.1]]})
    with pytest.raises(ValueError, match=r"make_method\(inflation=0.5\) failed: `inflation` must be >= 1"):
        sweep(model, make, 10, key, grid={"inflation": [1.0, 0.5]})
    with pytest.raises(ValueError, match="`burn_in` must lie in"):
        sweep(model, make, 10, key, grid={"inflation": [1.0]}, burn_in=10)
    with pytest.raises(ValueError, match="`n_seeds` must be a positive integer"):
        sweep(model, make, 10, key, grid={"inflation": [1.0]}, n_seeds=0)
    with pytest.raises(ValueError, match=r"`truth` must have shape \(2, 11, 8\)"):
        sweep(model, make, 10, key, grid={"inflation": [1.0]}, n_seeds=2, truth=jnp.zeros((1, 11, 8)),
              ys=jnp.zeros((1, 10, 8)))
    with pytest.raises(TypeError, match="grid values are traced"):
        sweep(model, lambda size: kx.EnKF(int(size)), 10, key, grid={"size": [4.0, 6.0]})


def test_letkf_sweep_over_the_localisation_radius_equals_individual_runs(setup):
    # the radius is traced; the static neighbour lists are built for max_radius
    def make(radius):
        loc = kx.Localization.dapper(kx.Periodic1D(12), radius, max_radius=3.0)
        return kx.LETKF(6, loc, inflation=1.05)

    result = sweep(setup.model, make, 20, jax.random.key(1), grid={"radius": [1.5, 3.0]}, n_seeds=1, burn_in=5)
    seed_key = jax.random.split(jax.random.key(1), 1)[0]
    for i, radius in enumerate([1.5, 3.0]):
        stats = kx.twin_experiment(setup.model, make(radius), 20, seed_key, burn_in=5).stats
        np.testing.assert_allclose(result.rmse_analysis[i, 0], stats.rmse_analysis, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.spread_forecast[i, 0], stats.spread_forecast, rtol=0, atol=1e-10)
    assert result.rmse_analysis[0, 0] != result.rmse_analysis[1, 0]


def test_progress_reports_every_run_and_keeps_the_scores(setup, result):
    calls = []
    chunked = sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid=GRID, n_seeds=N_SEEDS, burn_in=BURN_IN,
                    batch_size=4, progress=lambda done, total: calls.append((done, total)))
    # 6 settings in chunks of 4 (the last one padded): two calls of one compiled program
    assert calls == [(4 * N_SEEDS, 6 * N_SEEDS), (6 * N_SEEDS, 6 * N_SEEDS)]
    for name in ("rmse_analysis", "rmse_forecast", "spread_analysis", "nis_ratio"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(result, name), rtol=1e-12, atol=0, err_msg=name)
    one_by_one = []
    sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid={"inflation": [1.02], "rtps": [0.1]},
          n_seeds=N_SEEDS, burn_in=BURN_IN, vectorize=False, progress=lambda done, total: one_by_one.append(done))
    assert one_by_one == list(range(1, N_SEEDS + 1))
    with pytest.raises(TypeError, match="`progress`"):
        sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid=GRID, progress="yes")


def test_progress_bar_draws_on_stderr(setup, capsys):
    sweep(setup.model, make_etkf, N_CYCLES, jax.random.key(3), grid={"inflation": [1.02], "rtps": [0.0, 0.1]},
          progress=True)
    assert "sweep runs" in capsys.readouterr().err


def test_a_sweep_of_a_smoother_reports_its_smoothed_rmse(setup):
    grid = {"inflation": [1.02, 1.05]}
    swept = sweep(setup.model, lambda inflation: kx.EnKS(8, 2, inflation=inflation), N_CYCLES, jax.random.key(3),
                  grid=grid, n_seeds=N_SEEDS, burn_in=BURN_IN)
    seed_keys = jax.random.split(jax.random.key(3), N_SEEDS)
    for i, inflation in enumerate(grid["inflation"]):
        stats = kx.twin_experiment(setup.model, kx.EnKS(8, 2, inflation=inflation), N_CYCLES, seed_keys[1],
                                   burn_in=BURN_IN).stats
        np.testing.assert_allclose(swept.rmse_smoothed[i, 1], stats.rmse_smoothed, rtol=1e-10)
    assert np.all(np.asarray(swept.rmse_smoothed) < np.asarray(swept.rmse_analysis))
    assert "rmse.s" in swept.table()
    plain = sweep(setup.model, lambda inflation: kx.EnKF(8, inflation=inflation), N_CYCLES, jax.random.key(3),
                  grid=grid, burn_in=BURN_IN)
    assert np.all(np.isnan(np.asarray(plain.rmse_smoothed))) and "rmse.s" not in plain.table()
