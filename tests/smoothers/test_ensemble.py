"""Ensemble smoothers (EnKS, EnRTS): against plain NumPy float64 transcriptions of their
equations (DAPPER's EnKS and EnRTS), the RTS smoother in the large-ensemble limit, and
the EnKF they run forward; jit, vmap and grad in float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.models import RK4, Flow, Lorenz63

from .transformations import check_jit_vmap_grad

N_MEMBERS, N_CYCLES = 10, 40


# -- NumPy float64 references (DAPPER 1.7.1's EnKS / EnRTS with the 'Sqrt' update) ----------


def lorenz63_step(x, dt=0.01, n_steps=5, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    def field(v):
        return np.stack([sigma * (v[..., 1] - v[..., 0]), v[..., 0] * (rho - v[..., 2]) - v[..., 1],
                         v[..., 0] * v[..., 1] - beta * v[..., 2]], axis=-1)

    for _ in range(n_steps):
        k1 = field(x)
        k2 = field(x + dt / 2 * k1)
        k3 = field(x + dt / 2 * k2)
        k4 = field(x + dt * k3)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def sqrt_analysis(E, Eo, R, y):
    """The ETKF of Hunt et al. (2007) in DAPPER's 'eig' form; E may be an augmented ensemble."""
    N = E.shape[0]
    mu, xo = E.mean(0), Eo.mean(0)
    A, Y = E - mu, Eo - xo
    Rinv = np.linalg.inv(R)
    d, V = np.linalg.eigh(Y @ Rinv @ Y.T + (N - 1) * np.eye(N))
    T = V @ np.diag(d ** -0.5) @ V.T * np.sqrt(N - 1)
    Pw = V @ np.diag(1 / d) @ V.T
    w = (y - xo) @ Rinv @ Y.T @ Pw
    return mu + w @ A + T @ A


def inflate(E, infl):
    mu = E.mean(0)
    return mu + infl * (E - mu)


def numpy_enks(E0, ys, R, lag, infl):
    """DAPPER's EnKS: the analysis applied to the ensembles of the last `lag` cycles too."""
    E = [E0]
    for n, y in enumerate(ys):
        E.append(lorenz63_step(E[-1]))
        k = n + 1
        kk = list(range(max(0, k - lag), k + 1))
        stacked = np.concatenate([E[i] for i in kk], axis=1)
        updated = sqrt_analysis(stacked, E[k], R, y)
        for b, i in enumerate(kk):
            E[i] = updated[:, b * 3:(b + 1) * 3]
        E[k] = inflate(E[k], infl)
    return np.stack(E)


def truncated_pinv(A, threshold=0.99999):
    U, s, VT = np.linalg.svd(A, full_matrices=False)
    r = int(np.sum(np.cumsum(s) / np.sum(s) < threshold)) + 1
    r += int(np.sum(np.isclose(s[r - 1], s[r:])))
    return (VT[:r].T * s[:r] ** -1.0) @ U[:, :r].T


def numpy_enrts(E0, ys, R, decorrelation, infl):
    """DAPPER's EnRTS: the EnKF forward, then E_k += c (E_{k+1} - Ef_{k+1}) tinv(Af_{k+1}) A_k."""
    E, Ef = [E0], [E0]
    for y in ys:
        forecast = lorenz63_step(E[-1])
        Ef.append(forecast)
        E.append(inflate(sqrt_analysis(forecast, forecast, R, y), infl))
    E = np.stack(E)
    for k in range(len(ys) - 1, -1, -1):
        A = E[k] - E[k].mean(0)
        Af = Ef[k + 1] - Ef[k + 1].mean(0)
        E[k] = E[k] + (E[k + 1] - Ef[k + 1]) @ (decorrelation * (truncated_pinv(Af) @ A))
    return E


# -- the set-up -------------------------------------------------------------------------------


def lorenz63_model(dtype=jnp.float64):
    return kx.StateSpaceModel(
        dynamics=Flow(Lorenz63(), RK4(dt=0.01, n_steps=5)),
        observation=kx.IndexObservation([0, 1, 2], 3),
        dynamics_cov=kx.ZeroCovariance(3, dtype),
        obs_cov=kx.ScalarCovariance(jnp.asarray(2.0, dtype), 3),
        init_mean=jnp.array([1.509, -1.531, 25.46], dtype),
        init_cov=kx.ScalarCovariance(jnp.asarray(2.0, dtype), 3),
    )


@pytest.fixture(scope="module")
def data():
    model = lorenz63_model()
    truth, ys = kx.simulate(model, jax.random.key(0), N_CYCLES)
    E0 = np.asarray(truth[0]) + np.sqrt(2.0) * np.random.default_rng(1).standard_normal((N_MEMBERS, 3))
    return model, truth, ys, E0


@pytest.mark.parametrize("lag", [1, 3, 60])
def test_enks_equals_the_numpy_transcription(data, lag):
    model, _, ys, E0 = data
    result = kx.smooth(model, kx.EnKS(N_MEMBERS, lag, inflation=1.03), ys, jax.random.key(2),
                       init_state=kx.Ensemble(jnp.asarray(E0)))
    reference = numpy_enks(E0, np.asarray(ys), 2.0 * np.eye(3), lag, 1.03)
    np.testing.assert_allclose(result.mean, reference[1:].mean(1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.init_mean, reference[0].mean(0), rtol=0, atol=1e-9)
    spread = np.sqrt(np.mean(np.var(reference[1:], axis=1, ddof=1), axis=1))
    np.testing.assert_allclose(result.spread, spread, rtol=1e-9)


def test_enrts_equals_the_numpy_transcription(data):
    model, _, ys, E0 = data
    result = kx.smooth(model, kx.EnRTS(N_MEMBERS, decorrelation=0.9, inflation=1.03), ys, jax.random.key(2),
                       init_state=kx.Ensemble(jnp.asarray(E0)))
    reference = numpy_enrts(E0, np.asarray(ys), 2.0 * np.eye(3), 0.9, 1.03)
    np.testing.assert_allclose(result.mean, reference[1:].mean(1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.init_mean, reference[0].mean(0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("update", [kx.SquareRoot(), kx.PerturbedObservations(), kx.DEnKF()])
def test_the_forward_pass_is_the_enkf_and_smoothing_helps(data, update):
    model, truth, ys, _ = data
    key = jax.random.key(3)
    _, filtered = kx.assimilate(model, kx.EnKF(N_MEMBERS, update, inflation=1.05, rotate=True), ys, key)
    for smoother in (kx.EnKS(N_MEMBERS, 4, update, inflation=1.05, rotate=True),
                     kx.EnRTS(N_MEMBERS, 1.0, update, inflation=1.05, rotate=True)):
        result = kx.smooth(model, smoother, ys, key)
        np.testing.assert_allclose(result.filtered.mean, filtered.mean, rtol=0, atol=1e-10)
        assert float(result.log_likelihood) == pytest.approx(float(jnp.sum(filtered.info.log_likelihood)))

        def rmse(mean):
            return float(jnp.sqrt(jnp.mean((mean[5:] - truth[6:]) ** 2)))

        assert rmse(result.mean) < rmse(filtered.mean), type(smoother).__name__


def test_a_linear_gaussian_model_gives_the_rts_smoother_for_a_large_ensemble():
    model = kx.LinearGaussianSSM(
        dynamics=jnp.array([[1.0, 0.5], [-0.15, 0.9]]), observation=jnp.array([[1.0, 0.0]]),
        dynamics_cov=0.1 * jnp.eye(2), obs_cov=0.5 * jnp.eye(1), init_mean=jnp.zeros(2), init_cov=jnp.eye(2))
    _, ys = kx.simulate(model, jax.random.key(0), 20)
    exact = kx.rts_smoother(model, ys)
    std = np.sqrt(np.diagonal(np.asarray(exact.cov), axis1=1, axis2=2))
    exact_spread = np.sqrt(np.mean(std**2, axis=1))
    for smoother in (kx.EnKS(4000, 20), kx.EnRTS(4000)):
        result = kx.smooth(model, smoother, ys, jax.random.key(1))
        # Monte-Carlo error: measured 0.12 / 0.08 std at J = 4,000, halving at 16,000
        assert np.max(np.abs(result.mean - exact.mean) / std) < 0.25, type(smoother).__name__
        np.testing.assert_allclose(result.spread, exact_spread, rtol=0.03)
        np.testing.assert_allclose(result.init_mean, exact.init_mean, atol=0.1)


@pytest.mark.parametrize("name", ["enks", "enrts"])
def test_jit_vmap_and_grad(data, name):
    start = data[3][:6]  # a given initial ensemble: the draws differ between precisions
    smoother = kx.EnKS(6, 3, inflation=1.02) if name == "enks" else kx.EnRTS(6, 0.95)

    def run(model, ys, key):
        return smoother.run(model, ys, key, kx.Ensemble(jnp.asarray(start, model.dtype))).mean

    check_jit_vmap_grad(run, lorenz63_model, data[2][:12], batch_over_keys=False, fd_step=1e-5, fd_rtol=1e-3)


def test_bad_input_is_named(data):
    model, _, ys, E0 = data
    with pytest.raises(ValueError, match="`lag`"):
        kx.EnKS(10, 0)
    with pytest.raises(ValueError, match="`lag`"):
        kx.EnKS(10, 2.5)
    with pytest.raises(ValueError, match="`ensemble_size`"):
        kx.EnKS(1, 2)
    with pytest.raises(ValueError, match="`decorrelation`"):
        kx.EnRTS(10, 0.0)
    with pytest.raises(ValueError, match="`decorrelation`"):
        kx.EnRTS(10, 1.5)
    with pytest.raises(ValueError, match="`init_state`"):
        kx.smooth(model, kx.EnKS(10, 2), ys, jax.random.key(0), init_state=kx.Ensemble(jnp.asarray(E0[:5])))
    with pytest.raises(ValueError, match="`key`"):
        kx.smooth(model, kx.EnRTS(10), ys)
    with pytest.raises(TypeError, match="`key`"):
        kx.smooth(model, kx.EnRTS(10), ys, 3)
