"""Constrained parameters: values round-trip, stay in their sets under any update, have
finite gradients, and bad initial values are refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kalmax as kx
from kalmax.learning import AtLeast, CholeskyCovariance, Positive, fit


def test_values_round_trip_and_stay_constrained_after_any_step():
    cov = jnp.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])
    params = {"var": Positive(jnp.array([0.1, 2.0])), "infl": AtLeast(1.05, 1.0), "cov": CholeskyCovariance(cov)}
    np.testing.assert_allclose(params["var"].value, [0.1, 2.0], rtol=1e-14)
    np.testing.assert_allclose(params["infl"].value, 1.05, rtol=1e-14)
    np.testing.assert_allclose(params["cov"].value, cov, rtol=1e-13, atol=1e-15)
    # a large random step on every unconstrained leaf keeps the values in their sets
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    moved = jax.tree_util.tree_unflatten(treedef, [x + 5.0 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    assert np.all(np.asarray(moved["var"].value) > 0) and float(moved["infl"].value) > 1.0
    np.linalg.cholesky(np.asarray(moved["cov"].value))  # positive definite
    np.testing.assert_allclose(moved["cov"].value, moved["cov"].value.T, rtol=1e-14)


def test_fitting_a_variance_through_the_kalman_filter_keeps_it_positive():
    true = kx.LinearGaussianSSM(jnp.array([[0.9]]), jnp.eye(1), 0.5 * jnp.eye(1), 0.2 * jnp.eye(1), jnp.zeros(1), jnp.eye(1))
    _, ys = kx.simulate(true, jax.random.key(1), 400)

    def loss(noise, ys, key):
        model = kx.LinearGaussianSSM(jnp.array([[0.9]]), jnp.eye(1), noise.value * jnp.eye(1), 0.2 * jnp.eye(1),
                                     jnp.zeros(1), jnp.eye(1))
        return -kx.log_likelihood(model, kx.KalmanFilter(), ys)

    grad = jax.grad(loss)(Positive(0.05), ys, None)
    assert np.isfinite(float(grad.log_value))
    result = fit(loss, Positive(0.05), ys, optax.adam(0.2), 60, progress=False)
    assert 0.25 < float(result.learned.value) < 1.0  # the MLE of 400 cycles, around the true 0.5


def test_bad_initial_values_are_named():
    with pytest.raises(ValueError, match="Positive parameter must be > 0"):
        Positive(jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"must be > lower = 1.0"):
        AtLeast(0.9, 1.0)
    with pytest.raises(ValueError, match="`matrix` is not positive definite"):
        CholeskyCovariance(jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match=r"square \(d, d\)"):
        CholeskyCovariance(jnp.ones((2, 3)))
