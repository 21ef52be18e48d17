"""LETKF against the global ETKF, plain NumPy per-domain loops and DAPPER's conventions."""

import importlib.util
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.covariance import ScalarCovariance
from kalmax.ensemble.localization import (
    GaspariCohn,
    GaussianTaper,
    Localization,
    ObservationLocations,
    Periodic1D,
    Periodic2D,
    StepTaper,
)
from kalmax.filters.letkf import LETKF
from kalmax.models import RK4, Flow, Lorenz96
from kalmax.presets import lorenz96_sakov2008

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# -- independent references (plain NumPy float64) -----------------------------------


def numpy_gaspari_cohn(dist, c):
    r = np.abs(np.asarray(dist, np.float64)) / c
    out = np.zeros_like(r)
    a = r <= 1
    out[a] = -(r[a] ** 5) / 4 + r[a] ** 4 / 2 + 5 * r[a] ** 3 / 8 - 5 * r[a] ** 2 / 3 + 1
    b = (r > 1) & (r <= 2)
    out[b] = r[b] ** 5 / 12 - r[b] ** 4 / 2 + 5 * r[b] ** 3 / 8 + 5 * r[b] ** 2 / 3 - 5 * r[b] + 4 - 2 / (3 * r[b])
    return out


def ring_distance(i, x, n):
    delta = np.abs(i - np.asarray(x, np.float64)) % n
    return np.minimum(delta, n - delta)


def numpy_local_etkf(E, y, obs_index, obs_std, domains, block_distance, taper, cutoff=0.0):
    """Hunt et al. (2007) LETKF, one local ETKF per domain in a Python loop; the taper
    multiplies R^{-1} (sqrt(taper) on the whitened anomalies and innovation)."""
    J = E.shape[0]
    x, A = E.mean(axis=0), E - E.mean(axis=0)
    Eo = E[:, obs_index]
    xo = Eo.mean(axis=0)
    Y, dy = (Eo - xo) / obs_std, (y - xo) / obs_std
    observed = np.isfinite(y)
    out = E.copy()
    for domain in domains:
        rho = taper(block_distance(domain))
        use = observed & (rho > cutoff)
        if not use.any():
            continue
        Yl, dyl = Y[:, use] * np.sqrt(rho[use]), dy[use] * np.sqrt(rho[use])
        lam, V = np.linalg.eigh(Yl @ Yl.T + (J - 1) * np.eye(J))
        T = (V * lam**-0.5) @ V.T * np.sqrt(J - 1)
        w = dyl @ Yl.T @ (V / lam) @ V.T
        out[:, domain] = x[domain] + (w[None, :] + T) @ A[:, domain]
    return out


def dapper_letkf_analysis(E, y, loc_rad):
    """DAPPER's LETKF analysis on Lorenz-96 with H = I, R = I, re-implemented from its
    conventions: batches of 2 consecutive points, mean periodic distance to each
    observation, Gaspari-Cohn with half-width 1.82 loc_rad, taper <= 1e-3 dropped,
    sqrt(taper) on the scaled anomalies and innovation, then a local 'Sqrt' EnKF
    analysis (re-centred, by the SVD of the local anomalies, as DAPPER's for N > 2)."""
    N, d = E.shape
    N1 = N - 1
    xo = E.mean(axis=0)
    Y, dy = E - xo, y - xo
    out = E.copy()
    for start in range(0, d, 2):
        ii = np.arange(start, start + 2)
        dists = np.mean([ring_distance(i, np.arange(d), d) for i in ii], axis=0)
        coeffs = numpy_gaspari_cohn(dists, 1.82 * loc_rad)
        inds = np.flatnonzero(coeffs > 1e-3)
        if inds.size == 0:
            continue
        tpr = np.sqrt(coeffs[inds])
        Eii = E[:, ii]
        mu, A = Eii.mean(axis=0), Eii - Eii.mean(axis=0)
        Eo = Y[:, inds] * tpr
        Yl = Eo - Eo.mean(axis=0)
        dyl = dy[inds] * tpr - Eo.mean(axis=0)
        V, s, _ = np.linalg.svd(Yl, full_matrices=True)
        dd = np.concatenate([s**2, np.zeros(N - s.size)]) + N1
        Pw = (V * dd**-1.0) @ V.T
        T = (V * dd**-0.5) @ V.T * np.sqrt(N1)
        w = dyl @ Yl.T @ Pw
        out[:, ii] = mu + w @ A + T @ A
    return out


def numpy_lorenz96_rk4(E, dt=0.05, forcing=8.0):
    def f(x):
        return (np.roll(x, -1, axis=-1) - np.roll(x, 2, axis=-1)) * np.roll(x, 1, axis=-1) - x + forcing

    k1 = f(E)
    k2 = f(E + dt / 2 * k1)
    k3 = f(E + dt / 2 * k2)
    k4 = f(E + dt * k3)
    return E + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


# -- helpers ------------------------------------------------------------------------


def l96_model(observation=None, dtype=jnp.float64, obs_std=1.0, dim=40):
    observation = kx.IndexObservation(range(dim), dim) if observation is None else observation
    return kx.StateSpaceModel(
        dynamics=Flow(Lorenz96(dim, 8.0), RK4(jnp.asarray(0.05, dtype), 1)),
        observation=observation,
        dynamics_cov=None,
        obs_cov=ScalarCovariance(jnp.asarray(obs_std**2, dtype), observation.obs_dim),
        init_mean=jnp.zeros(dim, dtype).at[0].set(1.0),
        init_cov=ScalarCovariance(jnp.asarray(0.001, dtype), dim),
    )


def spun_up_ensemble(seed, size, dim=40):
    """Members near a Lorenz-96 attractor state (so the analysis is non-trivial)."""
    rng = np.random.default_rng(seed)
    x = 8.0 + rng.normal(size=dim)
    for _ in range(200):
        x = numpy_lorenz96_rk4(x)
    return x + rng.normal(scale=0.8, size=(size, dim)), x


@eqx.filter_jit
def analyse_with_info(flt, model, E, y, key=None):
    analysis, info = flt.analysis(model, kx.Ensemble(E), y, key)
    return analysis.members, info


def analyse(flt, model, E, y, key=None):
    return analyse_with_info(flt, model, E, y, key)[0]


# -- reductions and references ----------------------------------------------------


@pytest.mark.parametrize(
    "observation, missing, taper, block",
    [
        (None, False, StepTaper(math.inf), 1),
        (kx.IndexObservation.every(2, 40), True, StepTaper(math.inf), 2),
        (kx.IndexObservation.every(3, 40, offset=1), True, StepTaper(100.0), 4),  # radius beyond the domain
        (None, True, GaussianTaper(math.inf), 1),
    ],
)
def test_unbounded_localisation_equals_the_global_etkf(observation, missing, taper, block):
    model = l96_model(observation)
    E, _ = spun_up_ensemble(0, 10)
    rng = np.random.default_rng(1)
    y = rng.normal(size=model.obs_dim) + np.asarray(E.mean(axis=0))[np.asarray(model.observation.indices)]
    if missing:
        y[[1, 4]] = np.nan
    E, y = jnp.asarray(E), jnp.asarray(y)
    flt = LETKF(10, Localization(Periodic1D(40), taper, block=block))
    got, info = analyse_with_info(flt, model, E, y)
    expect, expect_info = analyse_with_info(kx.EnKF(10, kx.SquareRoot()), model, E, y)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-10)
    np.testing.assert_allclose(info.log_likelihood, expect_info.log_likelihood, rtol=1e-12)
    assert int(info.n_observed) == int(expect_info.n_observed) == model.obs_dim - 2 * missing


@pytest.mark.parametrize("batch_size", [None, 7])
def test_local_analysis_matches_a_numpy_loop_with_partial_and_missing_observations(batch_size):
    observation = kx.IndexObservation.every(2, 40)
    model = l96_model(observation, obs_std=0.7)
    E, _ = spun_up_ensemble(2, 8)
    rng = np.random.default_rng(3)
    obs_index = np.arange(0, 40, 2)
    y = E.mean(axis=0)[obs_index] + rng.normal(scale=0.7, size=20)
    y[[0, 7, 8]] = np.nan
    radius = 3.0
    flt = LETKF(8, Localization(Periodic1D(40), GaspariCohn(radius)), batch_size=batch_size)
    got = analyse(flt, model, jnp.asarray(E), jnp.asarray(y), None)
    expect = numpy_local_etkf(
        E, y, obs_index, 0.7, [np.array([i]) for i in range(40)],
        lambda dom: ring_distance(dom[0], obs_index, 40), lambda dist: numpy_gaspari_cohn(dist, radius),
    )
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-10)
    # it is really local: far from the global ETKF
    glob = analyse(kx.EnKF(8, kx.SquareRoot()), model, jnp.asarray(E), jnp.asarray(y))
    assert np.max(np.abs(np.asarray(glob) - expect)) > 0.1


def test_periodic2d_blocks_match_a_numpy_loop():
    n = 8
    indices = np.array([i * n + j for i in range(0, n, 2) for j in range(1, n, 2)])
    observation = kx.IndexObservation(indices, n * n)
    model = kx.StateSpaceModel(
        dynamics=lambda v: v, observation=observation, dynamics_cov=None,
        obs_cov=ScalarCovariance(jnp.asarray(0.25), indices.size),
        init_mean=jnp.zeros(n * n), init_cov=ScalarCovariance(jnp.asarray(1.0), n * n),
    )
    rng = np.random.default_rng(4)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(12, n, n)), axis=1), axis=2).reshape(12, -1) / 4
    y = smooth.mean(axis=0)[indices] + rng.normal(scale=0.5, size=indices.size)
    y[3] = np.nan
    geometry = Periodic2D(n)
    flt = LETKF(12, Localization(geometry, GaspariCohn(1.5), block=(2, 2)), batch_size=5)
    got = analyse(flt, model, jnp.asarray(smooth), jnp.asarray(y), None)
    coords = geometry.coordinates()
    obs_coords = coords[indices]

    def block_distance(domain):
        delta = np.abs(coords[domain][:, None, :] - obs_coords[None, :, :])
        delta = np.minimum(delta, n - delta)
        return np.sqrt((delta**2).sum(axis=-1)).mean(axis=0)

    domains = [np.array([i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1])
               for i in range(0, n, 2) for j in range(0, n, 2)]
    expect = numpy_local_etkf(smooth, y, indices, 0.5, domains, block_distance, lambda d: numpy_gaspari_cohn(d, 1.5))
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-10)


def test_linear_observation_with_explicit_locations_equals_index_observation():
    E, _ = spun_up_ensemble(5, 7)
    y = jnp.asarray(np.random.default_rng(6).normal(size=20) + E.mean(axis=0)[::2])
    index_model = l96_model(kx.IndexObservation.every(2, 40))
    linear_model = l96_model(kx.LinearObservation(jnp.eye(40)[::2]))
    locations = ObservationLocations(np.arange(0.0, 40.0, 2.0))
    a = analyse(LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0))), index_model, jnp.asarray(E), y, None)
    b = analyse(LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0), locations=locations)),
                linear_model, jnp.asarray(E), y, None)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="locations"):
        LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0))).check_model(linear_model)


def test_dapper_flavour_reproduces_dappers_letkf_over_many_cycles():
    """DAPPER's conventions (batches of 2, mean distance, GC half-width 1.82 loc_rad,
    cut-off 1e-3, infl on the analysis anomalies) against a NumPy re-implementation."""
    model = lorenz96_sakov2008(60).model
    rng = np.random.default_rng(7)
    truth = 8.0 + rng.normal(size=40)
    for _ in range(300):
        truth = numpy_lorenz96_rk4(truth)
    T, N, infl, loc_rad = 60, 7, 1.04, 4.0
    ys = []
    for _ in range(T):
        truth = numpy_lorenz96_rk4(truth)
        ys.append(truth + rng.normal(size=40))
    ys = np.array(ys)
    E0 = truth + rng.normal(size=(N, 40)) * 2.0  # a poor start, so the analyses do work
    E = E0.copy()
    means = []
    for t in range(T):
        E = numpy_lorenz96_rk4(E)
        E = dapper_letkf_analysis(E, ys[t], loc_rad)
        mu = E.mean(axis=0)
        E = mu + infl * (E - mu)
        means.append(E.mean(axis=0))
    flt = LETKF.dapper(N, Periodic1D(40), loc_rad, inflation=infl)
    _, history = kx.assimilate(model, flt, jnp.asarray(ys), jax.random.key(0), init_state=kx.Ensemble(jnp.asarray(E0)))
    np.testing.assert_allclose(history.mean, np.array(means), rtol=0, atol=1e-9)


# -- transformations ------------------------------------------------------------------


def short_run(n_cycles=4, seed=8):
    model = lorenz96_sakov2008(n_cycles).model
    truth, ys = kx.simulate(model, jax.random.key(seed), n_cycles)
    return model, ys


def letkf(radius, inflation, max_radius=6.0):
    return LETKF(7, Localization(Periodic1D(40), GaspariCohn(radius, max_radius=max_radius)), inflation=inflation)


def test_vmap_over_radii_and_inflations_equals_separate_runs():
    model, ys = short_run()
    key = jax.random.key(9)

    @jax.jit
    def final_mean(radius, inflation):
        final, _ = kx.assimilate(model, letkf(radius, inflation), ys, key, save=kx.Save(mean=False))
        return final.mean

    radii = jnp.asarray([2.0, 3.5, 5.0, 3.0, 3.0])
    inflations = jnp.asarray([1.02, 1.02, 1.02, 1.0, 1.1])
    batched = jax.vmap(final_mean)(radii, inflations)
    for k in range(5):
        np.testing.assert_allclose(batched[k], final_mean(radii[k], inflations[k]), rtol=0, atol=1e-12)
    assert np.max(np.abs(np.asarray(batched[0] - batched[2]))) > 1e-3
    assert np.max(np.abs(np.asarray(batched[3] - batched[4]))) > 1e-3


def test_gradients_with_respect_to_radius_and_inflation_match_finite_differences():
    model, ys = short_run()
    key = jax.random.key(10)

    @jax.jit
    def loglik(radius, inflation):
        return kx.log_likelihood(model, letkf(radius, inflation), ys, key)

    grads = jax.grad(loglik, argnums=(0, 1))(3.0, 1.05)
    h = 1e-5
    fd_radius = (loglik(3.0 + h, 1.05) - loglik(3.0 - h, 1.05)) / (2 * h)
    fd_infl = (loglik(3.0, 1.05 + h) - loglik(3.0, 1.05 - h)) / (2 * h)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(grads[0], fd_radius, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1], fd_infl, rtol=1e-5, atol=1e-7)
    assert abs(float(grads[0])) > 1e-4 and abs(float(grads[1])) > 1e-4


def test_float32_run_tracks_float64():
    E, _ = spun_up_ensemble(11, 7)
    ys = np.array(kx.simulate(lorenz96_sakov2008(15).model, jax.random.key(3), 15)[1])
    ys[2, 5] = np.nan
    out = {}
    for dtype in [jnp.float32, jnp.float64]:
        model = l96_model(dtype=dtype)
        flt = LETKF.dapper(7, Periodic1D(40), 4.0, inflation=1.04)
        _, history = kx.assimilate(model, flt, jnp.asarray(ys, dtype), jax.random.key(0),
                                   init_state=kx.Ensemble(jnp.asarray(E, dtype)))
        out[dtype] = history
    assert out[jnp.float32].mean.dtype == jnp.float32
    assert np.all(np.isfinite(out[jnp.float32].mean))
    np.testing.assert_allclose(out[jnp.float32].mean, out[jnp.float64].mean, rtol=0, atol=2e-3)


def test_a_new_radius_does_not_recompile_and_batch_size_does_not_change_the_result():
    model, ys = short_run()
    traces = []

    @eqx.filter_jit
    def run(flt):
        traces.append(None)
        return kx.assimilate(model, flt, ys, jax.random.key(0))[1].mean

    flt = LETKF.dapper(7, Periodic1D(40), 4.0, inflation=1.04, batch_size=3)
    a = run(flt)
    b = run(eqx.tree_at(lambda f: f.localization.taper.radius, flt, jnp.asarray(3.0)))
    assert len(traces) == 1  # the radius is a traced leaf
    assert np.max(np.abs(np.asarray(a - b))) > 1e-6
    # a radius beyond the static bound of the neighbour lists is caught at run time
    with pytest.raises(Exception, match="max_radius"):
        jax.block_until_ready(run(eqx.tree_at(lambda f: f.localization.taper.radius, flt, jnp.asarray(5.0))))
    c = run(LETKF.dapper(7, Periodic1D(40), 4.0, inflation=1.04))  # automatic batch size: all 20 blocks
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


# -- errors --------------------------------------------------------------------------


def test_bad_arguments():
    loc = Localization(Periodic1D(40), GaspariCohn(3.0))
    with pytest.raises(ValueError, match="ensemble_size"):
        LETKF(1, loc)
    with pytest.raises(ValueError, match="radius"):
        LETKF.dapper(7, Periodic1D(40), 0.0)
    with pytest.raises(ValueError, match="radius"):
        LETKF(7, Localization(Periodic1D(40), GaspariCohn(-2.0)))
    with pytest.raises(ValueError, match="batch_size"):
        LETKF(7, loc, batch_size=0)
    with pytest.raises(TypeError, match="localization"):
        LETKF(7, GaspariCohn(3.0))
    with pytest.raises(ValueError, match="inflation"):
        LETKF(7, loc, inflation=0.9)


def test_model_checks():
    model, ys = short_run()
    with pytest.raises(ValueError, match="geometry.*30 points.*state has 40"):
        kx.assimilate(model, LETKF(7, Localization(Periodic1D(30), GaspariCohn(3.0))), ys, jax.random.key(0))
    with pytest.raises(ValueError, match="inflation"):
        kx.assimilate(model, LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0)), inflation=jnp.ones(30)),
                      ys, jax.random.key(0))
    correlated = kx.StateSpaceModel(
        dynamics=model.dynamics, observation=model.observation, dynamics_cov=None,
        obs_cov=jnp.eye(40) + 0.1 * jnp.eye(40, k=1) + 0.1 * jnp.eye(40, k=-1),
        init_mean=model.init_mean, init_cov=model.init_cov,
    )
    with pytest.raises(ValueError, match="diagonal"):
        LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0))).check_model(correlated)
    flt = LETKF(7, Localization(Periodic1D(40), GaspariCohn(3.0)), rotate=True)
    E = kx.Ensemble(jnp.ones((7, 40)))
    with pytest.raises(ValueError, match="key"):
        flt.analysis(model, E, ys[0])
    with pytest.raises(ValueError, match="members"):
        flt.analysis(model, kx.Ensemble(jnp.ones((6, 40))), ys[0], jax.random.key(0))
    with pytest.raises(ValueError, match="`y`"):
        flt.analysis(model, E, ys[0, :30], jax.random.key(0))


# -- a real run -----------------------------------------------------------------------


def test_lorenz96_letkf_n7_reaches_the_published_accuracy():
    """Sakov & Oke (2008) set-up, DAPPER's LETKF(N=7, infl=1.04, loc_rad=4, rot=True):
    published 0.22 on 10,000 cycles; 1,500 cycles here."""
    setup = lorenz96_sakov2008(1500)
    flt = LETKF(7, Localization.dapper(Periodic1D(40), 4.0), inflation=1.04, rotate=True)
    result = kx.twin_experiment(setup.model, flt, 1500, jax.random.key(3), burn_in=setup.burn_in, keep_mean=False)
    rmse, spread = float(result.stats.rmse_analysis), float(result.stats.spread_analysis)
    assert rmse < 0.28, rmse
    assert 0.5 * rmse < spread < 2.0 * rmse


def test_navier_stokes_example_runs_small(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("navier_stokes_letkf", EXAMPLES / "navier_stokes_letkf.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.run(grid_size=16, n_cycles=10, ensemble_size=10, observe_every=2, seed=1)
    assert out["rmse"][-1] < 0.5 * out["rmse_prior"]
    path = example.plot(out, str(tmp_path / "ns_letkf.png"))
    assert Path(path).stat().st_size > 10_000


@pytest.mark.parametrize("size", [8, 30])
def test_observation_space_and_ensemble_space_local_algebra_agree(size):
    """K < J uses the K x K form (push-through identity); both forms give the same members."""
    from kalmax.ensemble.algebra import ensemble_space
    from kalmax.filters.letkf import local_analyses

    model = l96_model(kx.IndexObservation.every(2, 40), obs_std=0.7)
    E, _ = spun_up_ensemble(4, size)
    rng = np.random.default_rng(5)
    y = E.mean(axis=0)[np.arange(0, 40, 2)] + rng.normal(scale=0.7, size=20)
    y[[3]] = np.nan
    E, y = jnp.asarray(E), jnp.asarray(y)
    localization = Localization(Periodic1D(40), GaspariCohn(2.5, max_radius=4.0), block=2)
    plan = localization.plan(model)
    assert plan.neighbours.shape[1] < size or size == 8
    space = ensemble_space(kx.Ensemble(E), jax.vmap(model.observation)(E), y, model.obs_cov)
    analyses = jax.jit(lambda s, obs: local_analyses(s, localization, plan, observation_space=obs), static_argnums=1)
    observation = analyses(space, True)
    ensemble = analyses(space, False)
    np.testing.assert_allclose(observation, ensemble, rtol=0, atol=1e-11)

    def total(radius, observation_space):
        loc = Localization(Periodic1D(40), GaspariCohn(radius, max_radius=4.0), block=2)
        return jnp.sum(local_analyses(space, loc, plan, observation_space=observation_space) ** 2)

    gradient = jax.jit(jax.grad(total), static_argnums=1)  # compiled: eager dispatch of the local map is slow
    g_obs = gradient(2.5, True)
    g_ens = gradient(2.5, False)
    assert np.isfinite(float(g_obs)) and float(g_obs) == pytest.approx(float(g_ens), rel=1e-8)


def test_localized_likelihood_against_a_numpy_transcription_and_its_radius_gradient():
    from scipy.stats import multivariate_normal

    from kalmax.filters.letkf import localized_log_likelihood

    rng = np.random.default_rng(11)
    J, p = 6, 10
    observed = rng.normal(size=(J, p))
    y = rng.normal(size=p)
    y[4] = np.nan
    gamma = np.diag(rng.uniform(0.5, 1.5, size=p))
    distances = np.abs(np.subtract.outer(np.arange(p), np.arange(p)))
    distances = np.minimum(distances, p - distances)
    taper = np.asarray(kx.GaspariCohn(2.0)(jnp.asarray(distances, jnp.float64)))
    anomalies = observed - observed.mean(0)
    cov = taper * (anomalies.T @ anomalies) / (J - 1) + gamma
    o = ~np.isnan(y)
    expected = multivariate_normal(observed.mean(0)[o], cov[np.ix_(o, o)]).logpdf(y[o])
    got = localized_log_likelihood(jnp.asarray(observed), jnp.asarray(y), kx.DiagonalCovariance(jnp.diag(gamma)),
                                   jnp.asarray(taper))
    np.testing.assert_allclose(got, expected, rtol=1e-12)

    # in a filter run: finite, and a smooth function of the radius
    d = 12
    model = kx.StateSpaceModel(Flow(Lorenz96(d, 8.0), RK4(0.05, 1)), kx.IndexObservation(range(d), d), None,
                               jnp.eye(d), 8.0 + jnp.sin(jnp.arange(d, dtype=jnp.float64)), jnp.eye(d))
    _, ys = kx.simulate(model, jax.random.key(0), 15)

    @jax.jit
    def loss(radius):
        loc = kx.Localization(kx.Periodic1D(d), kx.GaspariCohn(radius, max_radius=6.0))
        _, history = kx.assimilate(model, kx.LETKF(8, loc, inflation=1.02, localized_likelihood=True), ys,
                                   jax.random.key(1), save=kx.Save(mean=False))
        return jnp.sum(history.info.log_likelihood)

    value, slope = jax.value_and_grad(loss)(jnp.asarray(3.0))
    step = 1e-5
    numeric = (loss(jnp.asarray(3.0 + step)) - loss(jnp.asarray(3.0 - step))) / (2 * step)
    assert np.isfinite(value) and abs(float(slope) - float(numeric)) < 1e-5 * max(1.0, abs(float(numeric)))
