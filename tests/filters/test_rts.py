"""RTS smoother against a NumPy RTS smoother and dense joint-Gaussian conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from tests import reference as ref
from tests.filters.test_kalman import CASES, make


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_smoother_matches_dense_joint_conditioning(case):
    np_model, model, ys = make(**case)
    result = kx.rts_smoother(model, ys)
    mean, cov, loglik = ref.condition_on(np_model, ys)
    dx, T = model.state_dim, len(ys)
    np.testing.assert_allclose(result.init_mean, mean[0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.mean, mean[1:], rtol=1e-8, atol=1e-10)
    blocks = lambda i, j: cov[i * dx : (i + 1) * dx, j * dx : (j + 1) * dx]
    np.testing.assert_allclose(result.init_cov, blocks(0, 0), rtol=1e-8, atol=1e-10)
    for n in range(T):
        np.testing.assert_allclose(result.cov[n], blocks(n + 1, n + 1), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(result.cross_cov[n], blocks(n + 1, n), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.log_likelihood, loglik, rtol=1e-10)


@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_smoother_matches_numpy_rts(case):
    np_model, model, ys = make(**case)
    expected_mean, expected_cov, expected_cross = ref.rts_smoother(np_model, ref.kalman_filter(np_model, ys))
    result = kx.rts_smoother(model, ys)
    np.testing.assert_allclose(result.mean, expected_mean[1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.cov, expected_cov[1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.cross_cov, expected_cross, rtol=1e-8, atol=1e-10)


def test_square_root_forward_pass_gives_the_same_smoother():
    _, model, ys = make(seed=4, offsets=True, missing="partial")
    a = kx.rts_smoother(model, ys)
    b = kx.rts_smoother(model, ys, square_root=True)
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.cov, a.cov, rtol=1e-10, atol=1e-12)


def test_smoother_float32():
    _, model64, ys64 = make(seed=3)
    _, model32, ys32 = make(seed=3, dtype=np.float32)
    a, b = kx.rts_smoother(model64, ys64), kx.rts_smoother(model32, ys32)
    assert b.mean.dtype == jnp.float32
    np.testing.assert_allclose(b.mean, a.mean, atol=5e-5 * np.max(np.abs(a.mean)))
    np.testing.assert_allclose(b.cov, a.cov, atol=5e-5 * np.max(np.abs(a.cov)))


def test_smoother_jit_vmap_grad():
    _, model, ys = make()
    batch = jnp.stack([jnp.asarray(ys), jnp.asarray(ys) + 0.5])
    means = jax.jit(jax.vmap(lambda y: kx.rts_smoother(model, y).mean))(batch)
    np.testing.assert_allclose(means[1], kx.rts_smoother(model, batch[1]).mean, rtol=1e-12, atol=1e-13)

    def smoothed_energy(obs_cov):
        m = kx.LinearGaussianSSM(model.dynamics, model.observation, model.dynamics_cov, obs_cov, model.init_mean, model.init_cov)
        return jnp.sum(kx.rts_smoother(m, ys).mean ** 2)

    grad = jax.grad(smoothed_energy)(model.obs_cov)
    eps = 1e-6
    direction = np.eye(2)
    fd = (smoothed_energy(model.obs_cov + eps * direction) - smoothed_energy(model.obs_cov - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-5)


def test_smoother_rejects_other_models():
    with pytest.raises(TypeError, match="LinearGaussianSSM"):
        kx.rts_smoother(object(), np.zeros((3, 2)))


def test_smoother_reports_a_failing_filter_cycle_and_checks_its_inputs():
    model = kx.LinearGaussianSSM(
        dynamics=np.eye(2), observation=np.eye(2), dynamics_cov=np.zeros((2, 2)),
        obs_cov=np.zeros((2, 2)), init_mean=np.zeros(2), init_cov=np.zeros((2, 2)),
    )  # fmt: skip
    ys = np.zeros((5, 2))
    with pytest.raises(kx.DivergenceError, match="cycle 0"):
        kx.rts_smoother(model, ys)
    assert kx.rts_smoother(model, ys, throw=False).filtered.info.status[0] == 1
    with pytest.raises(ValueError, match="ys"):
        kx.rts_smoother(model, np.zeros((5, 3)))
