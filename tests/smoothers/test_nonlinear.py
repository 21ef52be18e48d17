"""Extended and unscented RTS smoothers: the RTS smoother on linear-Gaussian models, plain NumPy
float64 transcriptions of their backward passes on Lorenz-63 (Jacobians by central
differences, sigma points by hand), better than the filters, jit / vmap / grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.models import RK4, Flow, Lorenz63

from .test_ensemble import lorenz63_step
from .transformations import check_jit_vmap_grad


def lorenz63(dtype=jnp.float64):
    return kx.StateSpaceModel(
        dynamics=Flow(Lorenz63(), RK4(dt=0.01, n_steps=5)), observation=kx.IndexObservation([0, 2], 3),
        dynamics_cov=kx.ScalarCovariance(jnp.asarray(0.01, dtype), 3), obs_cov=kx.ScalarCovariance(jnp.asarray(1.0, dtype), 2),
        init_mean=jnp.array([1.509, -1.531, 25.46], dtype), init_cov=kx.ScalarCovariance(jnp.asarray(1.0, dtype), 3))


SMOOTHERS = {
    "extended": lambda: kx.ExtendedRTSSmoother(kx.ExtendedKalmanFilter(inflation=1.05)),
    "unscented": lambda: kx.UnscentedRTSSmoother(kx.UnscentedKalmanFilter(alpha=1.0, beta=2.0, kappa=0.0, inflation=1.05)),
}


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_a_linear_gaussian_model_gives_the_rts_smoother(name):
    model = kx.LinearGaussianSSM(
        dynamics=jnp.array([[0.95, 0.2], [-0.1, 0.9]]), observation=jnp.array([[1.0, 0.0]]),
        dynamics_cov=0.1 * jnp.eye(2), obs_cov=0.5 * jnp.eye(1), init_mean=jnp.zeros(2), init_cov=jnp.eye(2))
    _, ys = kx.simulate(model, jax.random.key(0), 25)
    exact = kx.rts_smoother(model, ys, steady_state=False)
    smoother = kx.ExtendedRTSSmoother() if name == "extended" else kx.UnscentedRTSSmoother()
    result = kx.smooth(model, smoother, ys)
    for field in ("mean", "cov", "cross_cov", "init_mean", "init_cov"):
        np.testing.assert_allclose(getattr(result, field), getattr(exact, field), rtol=0, atol=1e-10, err_msg=field)
    assert float(result.log_likelihood) == pytest.approx(float(exact.log_likelihood), rel=1e-10)


def numpy_backward(filtered, prior_mean, prior_cov, cross_covariance):
    """The RTS recursion m^s_n = m_n + G_n (m^s_{n+1} - m^-_{n+1}), G_n = D_n (C^-_{n+1})^{-1}."""
    means = [prior_mean] + list(np.asarray(filtered.mean))
    covs = [prior_cov] + list(np.asarray(filtered.cov))
    pred_means, pred_covs = np.asarray(filtered.forecast_mean), np.asarray(filtered.forecast_cov)
    smooth_mean, smooth_cov = means[-1], covs[-1]
    out = [smooth_mean]
    for n in range(len(pred_means) - 1, -1, -1):
        gain = cross_covariance(means[n], covs[n], pred_means[n]) @ np.linalg.inv(pred_covs[n])
        smooth_cov = covs[n] + gain @ (smooth_cov - pred_covs[n]) @ gain.T
        smooth_mean = means[n] + gain @ (smooth_mean - pred_means[n])
        out.append(smooth_mean)
    return np.stack(out[::-1])  # v_0..v_T


def extended_cross(mean, cov, pred_mean, step=1e-6):
    jacobian = np.stack([(lorenz63_step(mean + step * e) - lorenz63_step(mean - step * e)) / (2 * step)
                         for e in np.eye(3)], axis=1)
    return cov @ jacobian.T


def unscented_cross(mean, cov, pred_mean, alpha=1.0, beta=2.0, kappa=0.0):
    d = 3
    spread = alpha**2 * (d + kappa)
    chol = np.linalg.cholesky(cov)
    points = np.concatenate([mean[None], mean + np.sqrt(spread) * chol.T, mean - np.sqrt(spread) * chol.T])
    weights = np.full(2 * d + 1, 0.5 / spread)
    weights[0] = (spread - d) / spread + 1 - alpha**2 + beta
    return ((points - mean).T * weights) @ (lorenz63_step(points) - pred_mean)


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_the_backward_pass_equals_a_numpy_transcription(name):
    model = lorenz63()
    truth, ys = kx.simulate(model, jax.random.key(1), 40)
    result = kx.smooth(model, SMOOTHERS[name](), ys)
    cross = extended_cross if name == "extended" else unscented_cross
    reference = numpy_backward(result.filtered, np.asarray(model.init_mean), np.eye(3), cross)
    tolerance = 1e-6 if name == "extended" else 1e-9  # central differences
    np.testing.assert_allclose(result.init_mean, reference[0], rtol=0, atol=tolerance)
    np.testing.assert_allclose(result.mean, reference[1:], rtol=0, atol=tolerance)

    def rmse(mean):
        return float(jnp.sqrt(jnp.mean((mean - truth[1:]) ** 2)))

    assert rmse(result.mean) < 0.8 * rmse(result.filtered.mean)


@pytest.mark.parametrize("name", list(SMOOTHERS))
def test_jit_vmap_and_grad(name):
    _, ys = kx.simulate(lorenz63(), jax.random.key(2), 12)
    smoother = SMOOTHERS[name]()

    def run(model, observations, key):
        return smoother.run(model, observations).mean

    check_jit_vmap_grad(run, lorenz63, ys, batch_over_keys=False, fd_rtol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="`filter`"):
        kx.ExtendedRTSSmoother(kx.UnscentedKalmanFilter())
    with pytest.raises(TypeError, match="`filter`"):
        kx.UnscentedRTSSmoother(kx.KalmanFilter())
    with pytest.raises(TypeError, match="`model`"):
        kx.smooth("model", kx.ExtendedRTSSmoother(), jnp.zeros((3, 2)))
