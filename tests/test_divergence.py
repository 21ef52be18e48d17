"""Filter divergence detected from the innovations: the normalised innovation squared
(NIS) in every filter's info against a NumPy transcription, its chi-square mean for a
consistent filter, and the `diverged` flag of twin experiments, sweeps and the command
line on set-ups known to track and known to diverge (Lorenz-96, Sakov & Oke 2008)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax import cli
from kalmax.experiments import DIVERGENCE_NIS_RATIO
from kalmax.filters.ensemble_base import ensemble_status
from kalmax.presets import lorenz96_sakov2008


def _linear():
    rng = np.random.default_rng(0)
    dynamics = 0.95 * np.linalg.qr(rng.standard_normal((3, 3)))[0]
    return kx.LinearGaussianSSM(jnp.asarray(dynamics), jnp.asarray(rng.standard_normal((2, 3))), 0.2 * jnp.eye(3),
                                0.5 * jnp.eye(2), jnp.zeros(3), jnp.eye(3))


def test_kalman_nis_is_the_innovation_quadratic_form_and_averages_to_the_observed_count():
    model = _linear()
    _, ys = kx.simulate(model, jax.random.key(0), 2000)
    ys = ys.at[7, 1].set(jnp.nan)
    _, history = kx.assimilate(model, kx.KalmanFilter(steady_state=False), ys, save=kx.Save(forecast=True, cov=True))
    A, H, R = (np.asarray(x) for x in (model.dynamics, model.observation, model.obs_cov))
    for n in (0, 7, 100):
        m, P = np.asarray(history.forecast_mean[n]), np.asarray(history.forecast_cov[n])
        y = np.asarray(ys[n])
        seen = np.isfinite(y)
        d = (y - H @ m)[seen]
        S = (H @ P @ H.T + R)[np.ix_(seen, seen)]
        np.testing.assert_allclose(history.info.nis[n], d @ np.linalg.solve(S, d), rtol=1e-10)
    # chi-square with n_observed degrees of freedom: mean 2 per cycle, std of the mean 2/sqrt(2000)
    ratio = float(np.sum(np.asarray(history.info.nis)) / np.sum(np.asarray(history.info.n_observed)))
    assert abs(ratio - 1.0) < 0.1
    # the steady-state and parallel forms give the same NIS
    _, steady = kx.assimilate(model, kx.KalmanFilter(), ys)
    _, parallel = kx.assimilate(model, kx.KalmanFilter(), ys, parallel=True)
    np.testing.assert_allclose(steady.info.nis, history.info.nis, rtol=1e-8)
    np.testing.assert_allclose(parallel.info.nis, history.info.nis, rtol=1e-8)


def test_ensemble_nis_uses_the_ensemble_innovation_covariance():
    setup = lorenz96_sakov2008(5)
    model = setup.model
    rng = np.random.default_rng(1)
    members = 8.0 + rng.standard_normal((10, 40))
    y = np.asarray(model.observe(jnp.asarray(members[0]))) + rng.standard_normal(40)
    y[3] = np.nan
    for method in (kx.EnKF(10, kx.SquareRoot()), kx.EnKF(10, kx.SquareRoot(), inflation=1.1),
                   kx.LETKF(10, kx.Localization(kx.Periodic1D(40), kx.GaspariCohn(4.0)))):
        _, info = method.analysis(model, kx.Ensemble(jnp.asarray(members)), jnp.asarray(y), jax.random.key(0))
        # (inflation=1.1 multiplies the analysis anomalies, after S is formed)
        anomalies = members - members.mean(axis=0)
        seen = np.isfinite(y)
        S = anomalies.T @ anomalies / 9 + np.asarray(model.obs_cov.matrix())
        d = (y - members.mean(axis=0))[seen]
        np.testing.assert_allclose(info.nis, d @ np.linalg.solve(S[np.ix_(seen, seen)], d), rtol=1e-9)
    # EnKF-N: with the inflation l1 it chose, S = l1^2 Y^T Y / (J - 1) + R
    _, info = kx.EnKFN(10).analysis(model, kx.Ensemble(jnp.asarray(members)), jnp.asarray(y), jax.random.key(0))
    anomalies = members - members.mean(axis=0)
    S = float(info.inflation) ** 2 * anomalies.T @ anomalies / 9 + np.asarray(model.obs_cov.matrix())
    d = (y - members.mean(axis=0))[seen]
    np.testing.assert_allclose(info.nis, d @ np.linalg.solve(S[np.ix_(seen, seen)], d), rtol=1e-8)


@pytest.fixture(scope="module")
def lorenz96():
    return lorenz96_sakov2008(500)


@pytest.mark.parametrize("name, make, diverges", [
    ("ETKF N=20", lambda model: kx.EnKF(20, kx.SquareRoot(), inflation=1.02, rotate=True), False),
    ("EnKF-N N=20", lambda model: kx.EnKFN(20), False),
    ("EKF", lambda model: kx.ExtendedKalmanFilter.per_unit_time(10.0, 0.05), False),
    ("ETKF N=3 without inflation", lambda model: kx.EnKF(3, kx.SquareRoot()), True),
    ("3DVAR with a tiny B", lambda model: kx.ThreeDVar(1e-4 * jnp.eye(40)), True),
])
def test_divergence_is_flagged_on_setups_known_to_diverge_and_only_there(lorenz96, name, make, diverges):
    result = kx.twin_experiment(lorenz96.model, make(lorenz96.model), 500, jax.random.key(1), burn_in=100)
    stats = result.stats
    assert bool(stats.diverged) == diverges, (name, float(stats.nis_ratio), float(stats.rmse_analysis))
    if diverges:
        assert float(stats.nis_ratio) > 3 * DIVERGENCE_NIS_RATIO and float(stats.rmse_analysis) > 2.0
        assert "warning: the filter diverged" in stats.table()
    else:
        assert 0.5 < float(stats.nis_ratio) < 2.0 and float(stats.rmse_analysis) < 0.5
        assert "diverged" not in stats.table()
        if stats.spread_analysis is not None:
            assert 0.5 < float(stats.spread_skill) < 2.0


def test_sweep_counts_diverged_seeds_beside_failed_ones(lorenz96):
    def make(inflation):
        return kx.EnKF(4, kx.SquareRoot(), inflation=inflation)

    result = kx.sweep(lorenz96.model, make, 300, jax.random.key(2), grid={"inflation": [1.0, 1.02]}, n_seeds=2,
                      burn_in=100)
    assert result.diverged.shape == (2, 2) and result.nis_ratio.shape == (2, 2)
    np.testing.assert_array_equal(result.n_diverged, np.sum(np.asarray(result.diverged & ~result.failed), axis=-1))
    assert int(result.n_diverged[0]) == 2  # N = 4 without inflation loses the truth
    table = result.table()
    assert "diverged" in table.splitlines()[1]
    # the same ratio and flag as the twin experiment of one seed (a diverged chaotic run
    # amplifies the rounding differences of the vmapped sweep to 1e-3: compare loosely)
    seed_key = jax.random.split(jax.random.key(2), 2)[0]
    single = kx.twin_experiment(lorenz96.model, make(1.0), 300, seed_key, burn_in=100)
    np.testing.assert_allclose(result.nis_ratio[0, 0], single.stats.nis_ratio, rtol=1e-2)
    assert bool(result.diverged[0, 0]) == bool(single.stats.diverged)


def test_the_command_line_warns_of_a_diverged_run(capsys):
    code = cli.main(["twin", "--method", "etkf", "--ensemble-size", "3", "--inflation", "1.0", "--no-rotate",
                     "--cycles", "300", "--burn-in", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: the filter diverged" in out and "NIS / observed" in out


def _blowing_up(scale):
    return kx.StateSpaceModel(lambda v: scale * v, jnp.eye(3), None, jnp.eye(3), jnp.ones(3), jnp.eye(3))


def test_an_overflowing_model_is_reported_as_such_not_as_a_collapse():
    # finite members whose squares overflow: the spread reads 0 (no digits left for the
    # deviations) and the magnitude is inf; that is a blow-up, not a collapse
    members = jnp.full((5, 3), 1e200)
    spread = jnp.sqrt(jnp.mean(jnp.var(members, axis=0, ddof=1)))
    assert int(ensemble_status(members, spread)) == kx.RESULTS.NON_FINITE
    assert int(ensemble_status(jnp.ones((5, 3)), jnp.asarray(0.0))) == kx.RESULTS.COLLAPSED
    assert int(ensemble_status(jnp.arange(15.0).reshape(5, 3), jnp.asarray(1.0))) == kx.RESULTS.SUCCESSFUL
    _, ys = kx.simulate(_blowing_up(1.0), jax.random.key(0), 5)
    with pytest.raises(kx.DivergenceError, match="non-finite") as raised:
        kx.assimilate(_blowing_up(1e200), kx.EnKF(5, kx.SquareRoot()), ys, jax.random.key(1))
    assert "collapsed" not in str(raised.value)


def test_a_truth_that_blows_up_is_named_with_its_first_non_finite_state():
    with pytest.raises(kx.DivergenceError, match=r"truth simulated from `model` became non-finite at v_2 "):
        kx.twin_experiment(_blowing_up(1e200), kx.EnKF(5, kx.SquareRoot()), 5, jax.random.key(0))
