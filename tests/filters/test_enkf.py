"""EnKF (ETKF, perturbed observations, DEnKF) against exact and NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.ensemble.algebra import ensemble_space
from tests import reference as ref


def ensemble_with_moments(rng, mean, cov, size):
    """Members whose sample mean and covariance (ddof 1) equal `mean` and `cov` exactly."""
    d = mean.shape[0]
    gauss = rng.normal(size=(size, d))
    gauss -= gauss.mean(axis=0)
    basis, _ = np.linalg.qr(gauss)  # orthonormal columns orthogonal to the ones vector
    return mean[None, :] + np.sqrt(size - 1) * basis @ np.linalg.cholesky(cov).T


def linear_problem(seed=0, dx=4, dy=3, offsets=True):
    rng = np.random.default_rng(seed)
    np_model, ys = ref.random_problem(rng, dx, dy, 6, offsets=offsets)
    return np_model, ref.to_kalmax(np_model, False, offsets), ys


def numpy_kf_analysis(mean, cov, H, d, R, y):
    obs = np.isfinite(y)
    H, d, R, y = H[obs], d[obs], R[np.ix_(obs, obs)], y[obs]
    S = H @ cov @ H.T + R
    K = cov @ H.T @ np.linalg.inv(S)
    r = y - H @ mean - d
    sign, logdet = np.linalg.slogdet(S)
    loglik = -0.5 * (r @ np.linalg.solve(S, r) + logdet + len(r) * np.log(2 * np.pi))
    return mean + K @ r, cov - K @ S @ K.T, loglik


@pytest.mark.parametrize("size", [8, 30])
@pytest.mark.parametrize("observation_space", [False, True])
@pytest.mark.parametrize("missing", [False, True])
def test_etkf_analysis_of_an_exact_ensemble_equals_the_kalman_analysis(size, observation_space, missing):
    np_model, model, ys = linear_problem()
    rng = np.random.default_rng(1)
    mean, cov = rng.normal(size=4), np.asarray(model.init_cov)
    members = ensemble_with_moments(rng, mean, cov, size)
    y = ys[0].copy()
    if missing:
        y[1] = np.nan
    H, d, R = np_model.observation[0], np_model.obs_offset[0], np_model.obs_cov[0]
    kf_mean, kf_cov, kf_loglik = numpy_kf_analysis(mean, cov, H, d, R, y)
    ssm = kx.as_state_space_model(model)
    forecast = kx.Ensemble(jnp.asarray(members))
    observed = jax.vmap(ssm.observe)(forecast.members)
    space = ensemble_space(forecast, observed, jnp.asarray(y), ssm.obs_cov, observation_space=observation_space)
    analysis = kx.Ensemble(kx.SquareRoot()(space))
    np.testing.assert_allclose(analysis.mean, kf_mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(analysis.cov, kf_cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(space.log_likelihood, kf_loglik, rtol=1e-10)
    # DEnKF: exact mean, approximate covariance (half gain): C_a = C - KHC + 1/4 KHCH^TK^T
    denkf = kx.Ensemble(kx.DEnKF()(space))
    np.testing.assert_allclose(denkf.mean, kf_mean, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("update", [kx.SquareRoot(), kx.PerturbedObservations(), kx.DEnKF()], ids=lambda u: type(u).__name__)
def test_ensemble_and_observation_space_give_the_same_analysis(update):
    np_model, model, ys = linear_problem(seed=2, dx=5, dy=3)
    rng = np.random.default_rng(3)
    ssm = kx.as_state_space_model(model)
    forecast = kx.Ensemble(jnp.asarray(rng.normal(size=(7, 5))))
    observed = jax.vmap(ssm.observe)(forecast.members)
    y = jnp.asarray(ys[1]).at[0].set(jnp.nan)
    key = jax.random.key(4)
    outs = []
    for observation_space in (False, True):
        space = ensemble_space(forecast, observed, y, ssm.obs_cov, observation_space=observation_space)
        outs.append((update(space, key), space.log_likelihood))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-12)


def numpy_enkf_analysis(members, observed, y, R, kind, noise=None):
    """DAPPER's formulas in plain NumPy (../shared/reference/twin-experiments.md)."""
    N = members.shape[0]
    obs = np.isfinite(y)
    Y = (observed - observed.mean(0))[:, obs]
    A = members - members.mean(0)
    Rm = R[np.ix_(obs, obs)]
    dy = y[obs] - observed.mean(0)[obs]
    if kind == "PertObs":
        D = (noise[:, obs] - noise[:, obs].mean(0)) * np.sqrt(len(noise) / (len(noise) - 1.0))  # DAPPER's mean0
        D = D @ np.linalg.cholesky(Rm).T
        K = A.T @ Y @ np.linalg.inv(Y.T @ Y + (N - 1) * Rm)
        return members + (y[obs][None] + D - observed[:, obs]) @ K.T
    Rinv_half = np.linalg.inv(np.linalg.cholesky(Rm))
    Ys = Y @ Rinv_half.T
    C = Ys @ Ys.T + (N - 1) * np.eye(N)
    L, V = np.linalg.eigh(C)
    w = (dy @ Rinv_half.T) @ Ys.T @ V @ np.diag(1 / L) @ V.T
    if kind == "Sqrt":
        T = V @ np.diag(L**-0.5) @ V.T * np.sqrt(N - 1)
        return members.mean(0) + w @ A + T @ A
    K = A.T @ Ys @ np.linalg.inv(Ys.T @ Ys + (N - 1) * np.eye(Ys.shape[1])) @ Rinv_half
    return members.mean(0) + w @ A + A - 0.5 * (K @ Y.T).T


@pytest.mark.parametrize("kind, update", [("Sqrt", kx.SquareRoot()), ("PertObs", kx.PerturbedObservations()), ("DEnKF", kx.DEnKF())])
@pytest.mark.parametrize("size", [5, 12])
def test_analysis_matches_numpy_dapper_formulas(kind, update, size):
    rng = np.random.default_rng(5)
    d, p = 6, 8
    members = rng.normal(size=(size, d))
    H = rng.normal(size=(p, d))
    A = rng.normal(size=(p, p))
    R = A @ A.T / p + np.eye(p)
    y = rng.normal(size=p)
    y[3] = np.nan
    key = jax.random.key(0)
    noise = np.asarray(jax.random.normal(key, (size, p), jnp.float64))
    expected = numpy_enkf_analysis(members, members @ H.T, y, R, kind, noise)
    forecast = kx.Ensemble(jnp.asarray(members))
    space = ensemble_space(forecast, forecast.members @ H.T, jnp.asarray(y), kx.DenseCovariance(R))
    np.testing.assert_allclose(update(space, key), expected, rtol=1e-9, atol=1e-10)


def test_large_perturbed_observation_ensemble_matches_the_kalman_filter():
    """100,000 members: means, covariances and log-likelihood within Monte Carlo error
    (relative error ~ 1/sqrt(J) = 3e-3 per cycle; 1e-2 leaves a margin over 5 cycles)."""
    np_model, model, ys = linear_problem(seed=6, dx=3, dy=2, offsets=False)
    ys = ys[:5]
    _, exact = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    flt = kx.EnKF(100_000, kx.PerturbedObservations())
    _, history = kx.assimilate(model, flt, ys, jax.random.key(0), save=kx.Save(cov=True))
    scale = np.sqrt(np.max(np.diagonal(exact.cov, axis1=1, axis2=2)))
    np.testing.assert_allclose(history.mean, exact.mean, atol=1e-2 * scale)
    np.testing.assert_allclose(history.cov, exact.cov, atol=1e-2 * np.max(np.abs(exact.cov)))
    np.testing.assert_allclose(history.info.log_likelihood, exact.info.log_likelihood, rtol=1e-2)


def test_etkf_with_a_large_ensemble_tracks_the_kalman_filter_with_model_noise():
    np_model, model, ys = linear_problem(seed=7, dx=3, dy=2)
    _, exact = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    _, history = kx.assimilate(model, kx.EnKF(20_000), ys, jax.random.key(1), save=kx.Save(cov=True))
    np.testing.assert_allclose(history.mean, exact.mean, atol=3e-2)
    np.testing.assert_allclose(history.cov, exact.cov, atol=3e-2)


def test_inflation_and_rotation():
    rng = np.random.default_rng(8)
    ens = kx.Ensemble(jnp.asarray(rng.normal(size=(6, 3))))
    inflated = kx.MultiplicativeInflation(1.1).posterior(ens, ens, None)
    np.testing.assert_allclose(inflated.mean, ens.mean, rtol=1e-12)
    np.testing.assert_allclose(inflated.cov, 1.21 * ens.cov, rtol=1e-12)
    before = kx.MultiplicativeInflation(1.1, on_forecast=True)
    np.testing.assert_allclose(before.prior(ens, None).cov, 1.21 * ens.cov, rtol=1e-12)
    np.testing.assert_array_equal(before.posterior(ens, ens, None).members, ens.members)
    analysis = kx.Ensemble(ens.mean + 0.5 * ens.anomalies)
    rtps = kx.RTPS(0.5).posterior(ens, analysis, None)
    np.testing.assert_allclose(np.std(rtps.members, 0, ddof=1), 0.75 * np.std(ens.members, 0, ddof=1), rtol=1e-12)
    rtpp = kx.RTPP(1.0).posterior(ens, analysis, None)
    np.testing.assert_allclose(rtpp.members, ens.members, rtol=1e-12)
    per_variable = kx.MultiplicativeInflation(jnp.array([1.0, 2.0, 1.0])).posterior(ens, ens, None)
    np.testing.assert_allclose(np.diag(per_variable.cov), np.diag(ens.cov) * np.array([1, 4, 1]), rtol=1e-12)
    both = kx.Inflations(kx.RTPS(0.5), kx.MultiplicativeInflation(2.0)).posterior(ens, analysis, None)
    np.testing.assert_allclose(both.cov, 4 * rtps.cov, rtol=1e-12)
    added = kx.AdditiveInflation(0.01 * np.eye(3)).prior(ens, jax.random.key(0))
    assert not np.allclose(added.members, ens.members)


def test_rotated_etkf_keeps_mean_and_covariance():
    np_model, model, ys = linear_problem(seed=9)
    key = jax.random.key(3)
    state = kx.EnKF(10).init(model, key)
    plain = kx.EnKF(10, kx.SquareRoot())
    rotated = kx.EnKF(10, kx.SquareRoot(), rotate=True)
    a, _ = plain.analysis(model, state, jnp.asarray(ys[0]), key)
    b, _ = rotated.analysis(model, state, jnp.asarray(ys[0]), key)
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-10, atol=1e-12)
    assert not np.allclose(a.members, b.members)


def test_missing_rows_are_forecast_only():
    np_model, model, ys = linear_problem()
    ys = ys.copy()
    ys[2] = np.nan
    _, history = kx.assimilate(model, kx.EnKF(10), ys, jax.random.key(0), save=kx.Save(forecast=True))
    np.testing.assert_allclose(history.mean[2], history.forecast_mean[2], rtol=1e-12)
    assert history.info.log_likelihood[2] == 0.0 and history.info.n_observed[2] == 0


def test_given_initial_ensemble_and_streaming_equal_assimilate():
    np_model, model, ys = linear_problem()
    members = jnp.asarray(np.random.default_rng(0).normal(size=(9, 4)))
    flt = kx.EnKF(9, kx.SquareRoot(), inflation=1.02)
    _, history = kx.assimilate(model, flt, ys, jax.random.key(0), init_state=kx.Ensemble(members))
    state = kx.Ensemble(members)
    keys = jax.random.split(jax.random.key(0), len(ys) + 1)[1:]  # as assimilate splits its key
    for n, y in enumerate(ys):
        key_forecast, key_analysis = jax.random.split(keys[n])
        state = flt.forecast(model, state, key_forecast)
        state, _ = flt.analysis(model, state, jnp.asarray(y), key_analysis)
        np.testing.assert_allclose(state.mean, history.mean[n], rtol=1e-10, atol=1e-12)


def test_gradients_of_the_ensemble_log_likelihood_are_finite_and_match_finite_differences():
    """d loglik / d (forcing, inflation) under common random numbers (fixed key)."""
    from kalmax.models import RK4, Flow, Lorenz96

    dim = 8
    truth_model = kx.StateSpaceModel(Flow(Lorenz96(dim, 8.0), RK4(0.05, 1)), kx.IndexObservation.every(2, dim),
                                     None, kx.ScalarCovariance(1.0, dim // 2), jnp.ones(dim), kx.ScalarCovariance(1.0, dim))
    _, ys = kx.simulate(truth_model, jax.random.key(0), 12)

    def loglik(forcing, inflation):
        model = kx.StateSpaceModel(Flow(Lorenz96(dim, forcing), RK4(0.05, 1)), kx.IndexObservation.every(2, dim),
                                   None, kx.ScalarCovariance(1.0, dim // 2), jnp.ones(dim), kx.ScalarCovariance(1.0, dim))
        flt = kx.EnKF(12, kx.SquareRoot(), inflation=inflation)
        return kx.log_likelihood(model, flt, ys, jax.random.key(1))

    grads = jax.grad(loglik, argnums=(0, 1))(8.0, 1.05)
    assert all(np.isfinite(g) for g in grads)
    eps = 1e-5
    fd_forcing = (loglik(8.0 + eps, 1.05) - loglik(8.0 - eps, 1.05)) / (2 * eps)
    fd_inflation = (loglik(8.0, 1.05 + eps) - loglik(8.0, 1.05 - eps)) / (2 * eps)
    np.testing.assert_allclose(grads[0], fd_forcing, rtol=1e-4)
    np.testing.assert_allclose(grads[1], fd_inflation, rtol=1e-4)
    # perturbed observations too (reparameterised noise)
    def loglik_po(forcing):
        model = kx.StateSpaceModel(Flow(Lorenz96(dim, forcing), RK4(0.05, 1)), kx.IndexObservation.every(2, dim),
                                   None, kx.ScalarCovariance(1.0, dim // 2), jnp.ones(dim), kx.ScalarCovariance(1.0, dim))
        return kx.log_likelihood(model, kx.EnKF(12, kx.PerturbedObservations(), 1.05), ys, jax.random.key(1))

    grad = jax.grad(loglik_po)(8.0)
    fd = (loglik_po(8.0 + eps) - loglik_po(8.0 - eps)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-4)


def test_vmap_over_inflation_and_jit_and_float32():
    np_model, model, ys = linear_problem()

    def rmse_like(inflation):
        _, history = kx.assimilate(model, kx.EnKF(8, inflation=inflation), ys, jax.random.key(0))
        return jnp.sum(history.mean**2)

    batch = jax.jit(jax.vmap(rmse_like))(jnp.array([1.0, 1.1]))
    np.testing.assert_allclose(batch[1], rmse_like(1.1), rtol=1e-10)
    model32 = ref.to_kalmax(np_model, False, True, np.float32)
    _, h32 = kx.assimilate(model32, kx.EnKF(8, kx.PerturbedObservations()), ys.astype(np.float32), jax.random.key(0))
    assert h32.mean.dtype == jnp.float32 and np.all(np.isfinite(h32.mean))


def test_collapsed_and_non_finite_ensembles_are_reported():
    np_model, model, ys = linear_problem(offsets=False)
    collapsed = kx.Ensemble(jnp.zeros((5, 4)))
    model_no_noise = kx.LinearGaussianSSM(model.dynamics, model.observation, np.zeros((4, 4)), model.obs_cov,
                                          model.init_mean, model.init_cov)
    with pytest.raises(kx.DivergenceError, match="the ensemble collapsed .* at cycle 0"):
        kx.assimilate(model_no_noise, kx.EnKF(5), ys, jax.random.key(0), init_state=collapsed)
    _, history = kx.assimilate(model_no_noise, kx.EnKF(5), ys, jax.random.key(0), init_state=collapsed, throw=False)
    assert int(history.info.status[0]) == 3
    bad = kx.Ensemble(jnp.zeros((5, 4)).at[0, 0].set(jnp.nan))
    with pytest.raises(kx.DivergenceError, match="non-finite"):
        kx.assimilate(model, kx.EnKF(5), ys, jax.random.key(0), init_state=bad)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: kx.EnKF(1), ValueError, r"`ensemble_size` must be an integer >= 2; got 1"),
        (lambda: kx.EnKF(10, inflation=0.9), ValueError, r"`inflation` must be >= 1.0"),
        (lambda: kx.EnKF(10, update="sqrt"), TypeError, r"`update` must be SquareRoot\(\)"),
        (lambda: kx.RTPS(1.5), ValueError, r"`alpha` must be in \[0.0, 1.0\]"),
        (lambda: kx.Inflations(1.02), TypeError, "`Inflations` takes inflation Modules"),
    ],
)
def test_bad_hyperparameters(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_model_checks():
    np_model, model, ys = linear_problem()
    with pytest.raises(ValueError, match=r"`inflation` has 3 entries but the state has 4"):
        kx.assimilate(model, kx.EnKF(5, inflation=jnp.ones(3)), ys, jax.random.key(0))
    with pytest.raises(ValueError, match="`key` is required"):
        kx.assimilate(model, kx.EnKF(5), ys)
    with pytest.raises(TypeError, match="needs a StateSpaceModel or LinearGaussianSSM"):
        kx.EnKF(5).check_model(object())
