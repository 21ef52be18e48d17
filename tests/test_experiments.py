"""Twin experiments: simulation, in-scan scores against NumPy formulas, stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.models import RK4, Flow, Lorenz96


def tracking_model():
    return kx.LinearGaussianSSM(
        np.array([[1.0, 1.0], [0.0, 1.0]]), np.eye(2)[:1], 0.01 * np.eye(2), np.eye(1), np.zeros(2), np.eye(2)
    )


def lorenz96_model(dim=8):
    return kx.StateSpaceModel(
        dynamics=Flow(Lorenz96(dim, 8.0), RK4(0.05, 1)),
        observation=kx.IndexObservation.every(2, dim),
        dynamics_cov=kx.ScalarCovariance(0.01, dim),
        obs_cov=kx.DiagonalCovariance(jnp.full(dim // 2, 0.5)),
        init_mean=jnp.ones(dim),
        init_cov=kx.ScalarCovariance(0.1, dim),
    )


def test_simulate_nonlinear_model_follows_the_dynamics_and_noise():
    model = lorenz96_model()
    states, ys = kx.simulate(model, jax.random.key(1), 200)
    assert states.shape == (201, 8) and ys.shape == (200, 4)
    again, _ = kx.simulate(model, jax.random.key(1), 200)
    np.testing.assert_array_equal(states, again)
    model_noise = states[1:] - jax.vmap(model.dynamics)(states[:-1])
    np.testing.assert_allclose(np.var(model_noise), 0.01, rtol=0.15)
    obs_noise = ys - states[1:, ::2]
    np.testing.assert_allclose(np.var(obs_noise), 0.5, rtol=0.15)


def test_scores_match_numpy_formulas():
    model = tracking_model()
    result = kx.twin_experiment(model, kx.KalmanFilter(), 60, jax.random.key(0), burn_in=10)
    _, history = kx.assimilate(model, kx.KalmanFilter(), result.ys, save=kx.Save(cov=True, forecast=True))
    truth = np.asarray(result.truth[1:])
    rmse_a = np.sqrt(np.mean((np.asarray(history.mean) - truth) ** 2, axis=1))
    rmse_f = np.sqrt(np.mean((np.asarray(history.forecast_mean) - truth) ** 2, axis=1))
    spread_a = np.sqrt(np.mean(np.diagonal(np.asarray(history.cov), axis1=1, axis2=2), axis=1))
    np.testing.assert_allclose(result.cycles.rmse_analysis, rmse_a, rtol=1e-12)
    np.testing.assert_allclose(result.cycles.rmse_forecast, rmse_f, rtol=1e-12)
    np.testing.assert_allclose(result.cycles.spread_analysis, spread_a, rtol=1e-12)
    np.testing.assert_allclose(result.stats.rmse_analysis, rmse_a[10:].mean(), rtol=1e-12)
    np.testing.assert_allclose(result.cycles.mean, history.mean, rtol=1e-12)
    assert "analysis rmse" in result.stats.table()


def test_given_truth_and_data_are_used_as_is():
    model = tracking_model()
    truth, ys = kx.simulate(model, jax.random.key(3), 30)
    result = kx.twin_experiment(model, kx.KalmanFilter(), 30, jax.random.key(99), truth=truth, ys=ys)
    np.testing.assert_array_equal(result.ys, ys)
    with pytest.raises(ValueError, match=r"`truth` must have shape \(31, 2\)"):
        kx.twin_experiment(model, kx.KalmanFilter(), 30, jax.random.key(0), truth=truth[1:], ys=ys)
    with pytest.raises(ValueError, match="give both `truth` and `ys`"):
        kx.twin_experiment(model, kx.KalmanFilter(), 30, jax.random.key(0), truth=truth)


def test_twin_run_jit_vmap_grad():
    """A whole twin run is a traceable function: vmap over seeds, grad w.r.t. a parameter."""
    model = tracking_model()

    def mean_rmse(key, obs_scale):
        m = kx.LinearGaussianSSM(model.dynamics, model.observation, model.dynamics_cov, obs_scale * model.obs_cov,
                                 model.init_mean, model.init_cov)
        return kx.twin_experiment(m, kx.KalmanFilter(), 40, key, burn_in=5).stats.rmse_analysis

    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(mean_rmse, in_axes=(0, None)))(keys, 1.0)
    for i in range(3):
        np.testing.assert_allclose(batched[i], mean_rmse(keys[i], 1.0), rtol=1e-12)
    grad = jax.grad(mean_rmse, argnums=1)(keys[0], 1.0)
    eps = 1e-6
    fd = (mean_rmse(keys[0], 1.0 + eps) - mean_rmse(keys[0], 1.0 - eps)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_cycles=0), "`n_cycles` must be an integer >= 1"),
        (dict(n_cycles=10, burn_in=10), r"`burn_in` must lie in \[0, n_cycles=10\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kx.twin_experiment(tracking_model(), kx.KalmanFilter(), key=jax.random.key(0), **kwargs)


def test_climatology_of_lorenz96():
    model = kx.StateSpaceModel(Flow(Lorenz96(40, 8.0), RK4(0.05, 1)), np.eye(40), None, np.eye(40),
                               jnp.zeros(40).at[0].set(1.0), kx.ScalarCovariance(1e-3, 40))
    cov = kx.climatology_cov(model, jax.random.key(0), 4000, spin_up=500)
    assert cov.shape == (40, 40)
    np.testing.assert_allclose(np.sqrt(np.mean(np.diag(cov))), 3.6, rtol=0.1)


@pytest.mark.parametrize("make", [lambda: kx.EnKS(8, 3, inflation=1.02), lambda: kx.IEnKS(8, 2, n_iter=2, inflation=1.02)],
                         ids=["enks", "ienks"])
def test_smoothers_report_smoothed_scores_equal_to_their_smoothed_means(make):
    from kalmax.experiments import twin_keys
    from kalmax.presets import lorenz63_sakov2012

    setup = lorenz63_sakov2012(60)
    method, key, burn_in = make(), jax.random.key(5), 10
    result = kx.twin_experiment(setup.model, method, 60, key, burn_in=burn_in)
    smoothed = kx.smooth(setup.model, method, result.ys, twin_keys(key)[1][0])
    np.testing.assert_allclose(smoothed.filtered.mean, result.cycles.mean, rtol=0, atol=1e-12)
    last = 60 - method.lag  # the states still in the final window are not scored
    errors = np.sqrt(np.mean((np.asarray(smoothed.mean[burn_in:last]) - np.asarray(result.truth[burn_in + 1:last + 1])) ** 2,
                             axis=1))
    assert float(result.stats.rmse_smoothed) == pytest.approx(errors.mean(), rel=1e-12)
    assert float(result.stats.spread_smoothed) == pytest.approx(float(np.mean(smoothed.spread[burn_in:last])), rel=1e-12)
    assert float(result.stats.rmse_smoothed) < float(result.stats.rmse_analysis)
    assert "smoothed rmse" in result.stats.table()
    filtered = kx.twin_experiment(setup.model, kx.EnKF(8, kx.SquareRoot()), 60, key, burn_in=burn_in)
    assert filtered.stats.rmse_smoothed is None and "smoothed" not in filtered.stats.table()
