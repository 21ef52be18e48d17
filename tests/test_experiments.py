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


def _numpy_lorenz63_step(x, dt=0.01):
    """One RK4 step of Lorenz-63 (sigma 10, rho 28, beta 8/3) in NumPy float64."""
    def field(v):
        return np.stack([10.0 * (v[..., 1] - v[..., 0]), v[..., 0] * (28.0 - v[..., 2]) - v[..., 1],
                         v[..., 0] * v[..., 1] - 8.0 / 3.0 * v[..., 2]], axis=-1)

    k1 = field(x)
    k2 = field(x + dt / 2 * k1)
    k3 = field(x + dt / 2 * k2)
    k4 = field(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("make, lag", [
    (lambda: kx.EnKF(8, kx.SquareRoot(), inflation=1.02), 0),
    (lambda: kx.IEnKS(8, 2, n_iter=2, inflation=1.02), 2),
    (lambda: kx.IEnKS(8, 4, n_iter=2, inflation=1.02, shift=2), 4),
    (lambda: kx.EnKS(8, 3, inflation=1.02), 3),
], ids=["etkf", "ienks", "ienks-shift2", "enks"])
def test_universal_scores_follow_the_finished_estimate_through_every_model_step(make, lag):
    """DAPPER's rmse.u: the analysis (a filter) or the finished smoothed ensemble of v_{n+1-lag}
    (a smoother) moved through the 25 RK4 steps of the next interval against the truth there,
    recomputed in NumPy from the saved ensembles. (benchmarks/bench_smoothers.py checks it
    against DAPPER's own rmse.u for the iEnKS.)"""
    from kalmax.experiments import twin_keys
    from kalmax.presets import lorenz63_sakov2012

    setup = lorenz63_sakov2012(30)  # RK4(0.01, 25): 25 model steps per interval
    method, key, burn_in = make(), jax.random.key(5), 4
    result = kx.twin_experiment(setup.model, method, 30, key, burn_in=burn_in, universal=True)
    _, history = kx.assimilate(setup.model, method, result.ys, twin_keys(key)[1][0], save=kx.Save(state=True))
    states = history.state
    if lag == 0:
        finished = np.asarray(states.members)
    elif isinstance(method, kx.EnKS):
        finished = np.asarray(states.window[:, 0])
    else:
        finished = np.asarray(jax.vmap(method.finished_estimate)(states).members)
    truth = np.asarray(result.truth)
    expected = []
    for n in range(30):
        members, true_state = finished[n], truth[max(0, n + 1 - lag)]
        errors = []
        for _ in range(25):
            errors.append(np.sqrt(np.mean((members.mean(0) - true_state) ** 2)))
            members, true_state = _numpy_lorenz63_step(members), _numpy_lorenz63_step(true_state)
        expected.append(np.mean(errors))
    np.testing.assert_allclose(result.cycles.rmse_universal, expected, rtol=1e-9)
    assert float(result.stats.rmse_universal) == pytest.approx(np.mean(expected[burn_in + lag:]), rel=1e-12)
    if lag:  # its first model step is the smoothed estimate the smoothed scores take
        smoothed = np.asarray(result.cycles.info.lagged_mean)
        np.testing.assert_allclose(smoothed, finished.mean(axis=1), rtol=1e-12)
    assert "universal rmse" in result.stats.table()


def test_universal_scores_of_a_one_step_model_are_the_analysis_scores_and_the_sweep_agrees():
    """With one model step per interval (a linear-Gaussian model) rmse.u is rmse.a; a sweep
    reports the same rmse.u as the twin experiment of each setting."""
    model = kx.LinearGaussianSSM(0.9 * jnp.eye(2), jnp.eye(2), 0.1 * jnp.eye(2), 0.5 * jnp.eye(2), jnp.zeros(2),
                                 jnp.eye(2))
    result = kx.twin_experiment(model, kx.KalmanFilter(), 40, jax.random.key(1), burn_in=5, universal=True)
    np.testing.assert_allclose(result.cycles.rmse_universal, result.cycles.rmse_analysis, rtol=1e-12)
    assert kx.twin_experiment(model, kx.KalmanFilter(), 40, jax.random.key(1)).stats.rmse_universal is None
    from kalmax.presets import lorenz63_sakov2012

    setup = lorenz63_sakov2012(40)
    swept = kx.sweep(setup.model, lambda inflation: kx.IEnKS(8, 2, n_iter=2, inflation=inflation), 40,
                     jax.random.key(2), grid={"inflation": jnp.array([1.02])}, burn_in=5, universal=True)
    seed_key = jax.random.split(jax.random.key(2), 1)[0]
    twin = kx.twin_experiment(setup.model, kx.IEnKS(8, 2, n_iter=2, inflation=1.02), 40, seed_key, burn_in=5,
                              universal=True)
    np.testing.assert_allclose(swept.rmse_universal[0, 0], twin.stats.rmse_universal, rtol=1e-10)
    assert "rmse.u" in swept.table()
