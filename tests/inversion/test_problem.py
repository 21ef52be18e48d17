"""InverseProblem, Prior and Bounds: transforms, validation, error messages."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.covariance import DiagonalCovariance
from kalmax.inversion.constraints import Bounds, bounded, positive, unbounded
from kalmax.inversion.problem import (
    InverseProblem,
    Prior,
    failure_summary,
)


def test_bounds_round_trip_and_known_values():
    lower = np.array([-np.inf, 0.0, -np.inf, 1.0])
    upper = np.array([np.inf, np.inf, 2.0, 3.0])
    bounds = Bounds(lower, upper)
    u = jnp.array([[-1.5, 0.3, -0.7, 2.0], [0.0, -4.0, 1.0, -1.0]])
    theta = bounds.constrain(u)
    expected = np.stack(
        [u[:, 0], np.exp(u[:, 1]), 2.0 - np.exp(-u[:, 2]), 1.0 + 2.0 / (1.0 + np.exp(-u[:, 3]))], axis=1
    )
    np.testing.assert_allclose(theta, expected, rtol=1e-14)
    np.testing.assert_allclose(bounds.unconstrain(theta), u, rtol=1e-12, atol=1e-13)
    assert np.all(np.asarray(theta[:, 3]) > 1.0) and np.all(np.asarray(theta[:, 3]) < 3.0)


def test_bounds_gradients_are_finite_for_extreme_inputs():
    bounds = Bounds(np.array([-np.inf, 0.0, -np.inf, 1.0]), np.array([np.inf, np.inf, 2.0, 3.0]))
    u = jnp.array([800.0, 800.0, -800.0, 800.0])
    jac = jax.jacfwd(bounds.constrain)(jnp.array([1.0, -2.0, 0.5, 40.0]))
    np.testing.assert_allclose(np.diag(jac)[:3], [1.0, np.exp(-2.0), np.exp(-0.5)], rtol=1e-12)
    grad = jax.grad(lambda v: jnp.sum(bounds.constrain(v)))(u)
    assert np.all(np.isfinite(np.asarray(grad)[[0, 3]]))
    round_trip = jax.grad(lambda v: jnp.sum(bounds.unconstrain(bounds.constrain(v))))(u * 0.01)
    np.testing.assert_allclose(round_trip, 1.0, rtol=1e-8)


def test_bounds_float32_and_helpers():
    bounds = positive(3, jnp.float32)
    u = jnp.array([-1.0, 0.0, 1.0], jnp.float32)
    assert bounds.constrain(u).dtype == jnp.float32
    np.testing.assert_allclose(bounds.constrain(u), np.exp([-1.0, 0.0, 1.0]), rtol=1e-6)
    np.testing.assert_array_equal(unbounded(2).constrain(jnp.array([1.0, -2.0])), [1.0, -2.0])
    np.testing.assert_allclose(bounded(0.0, 1.0).constrain(jnp.zeros(1)), [0.5])


@pytest.mark.parametrize(
    "lower, upper, message",
    [
        ([0.0, 2.0], [1.0, 1.0], "at index 1 lower = 2.0 >= upper = 1.0"),
        ([0.0], [0.0], "at index 0"),
        ([np.nan], [1.0], "must not be NaN"),
    ],
)
def test_inverted_bounds_are_rejected(lower, upper, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Bounds(np.array(lower), np.array(upper))


def _problem(**overrides):
    d, p = 3, 5
    H = jnp.asarray(np.random.default_rng(0).normal(size=(p, d)))
    kwargs = dict(forward=lambda u: H @ u, y=np.ones(p), obs_cov=np.eye(p), prior=Prior(np.zeros(d), np.eye(d)))
    kwargs.update(overrides)
    return InverseProblem(**kwargs)


def test_problem_properties_and_evaluate():
    problem = _problem(prior=Prior(np.zeros(3), np.eye(3), positive(3)))
    assert (problem.parameter_dim, problem.data_dim) == (3, 5)
    members = jnp.array([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5]])
    out = problem.evaluate(members)
    np.testing.assert_allclose(out, jax.vmap(problem.forward)(jnp.exp(members)), rtol=1e-14)
    whitened = _problem(obs_cov=DiagonalCovariance(jnp.full(5, 4.0))).whiten(jnp.ones((2, 5)))
    np.testing.assert_allclose(whitened, 0.5)


def test_map_batch_size_evaluates_like_vmap():
    members = jax.random.normal(jax.random.key(0), (7, 3))
    expected = _problem().evaluate(members)
    for k in (1, 3, 7):
        np.testing.assert_allclose(_problem(map_batch_size=k).evaluate(members), expected, rtol=1e-14)
    with pytest.raises(ValueError, match=re.escape("`map_batch_size` must be None (vmap) or a positive int; got 0")):
        _problem(map_batch_size=0)


def test_member_failures_codes_and_summary():
    problem = _problem(failed_if=lambda g: jnp.max(jnp.abs(g)) > 100.0)
    outputs = jnp.array([[1.0] * 5, [np.nan] + [1.0] * 4, [1e3] + [1.0] * 4, [np.inf] * 5])
    codes = problem.member_failures(outputs)
    np.testing.assert_array_equal(codes, [RESULTS.SUCCESSFUL, RESULTS.FORWARD_NON_FINITE, RESULTS.FORWARD_REJECTED, RESULTS.FORWARD_NON_FINITE])
    assert failure_summary(codes) == "3 of 4 members failed (2 non-finite output, 1 failed the problem's `failed_if` criterion)"


def test_prior_sample_has_the_prior_moments():
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    prior = Prior(np.array([1.0, -1.0]), cov)
    draws = np.asarray(prior.sample(jax.random.key(0), 200_000))
    np.testing.assert_allclose(draws.mean(0), [1.0, -1.0], atol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.03)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(y=np.ones((5, 1))), ValueError, "`y` must be a (p,) data vector; got shape (5, 1)"),
        (dict(y=np.array([1.0, np.nan, 1, 1, 1])), ValueError, "`y` must be finite"),
        (dict(obs_cov=np.eye(4)), ValueError, "obs_cov"),
        (dict(forward=lambda u: jnp.ones(4)), ValueError, "`forward` must map a (3,) parameter vector to (5,) data"),
        (dict(forward=lambda u: jnp.ones((5, 1))), ValueError, "it returns (5, 1)"),
        (dict(forward=lambda u: u[jnp.array([0, 1, 2, 3, 4])] * jnp.ones((2, 2))), ValueError, "could not be traced"),
        (dict(forward=3.0), TypeError, "`forward` must be callable"),
        (dict(prior=(np.zeros(3), np.eye(3))), TypeError, "`prior` must be a kalmax Prior"),
        (dict(y=np.ones(5, np.float32)), TypeError, "dtype mix"),
        (dict(failed_if=1), TypeError, "`failed_if` must be callable"),
    ],
)
def test_problem_bad_input(overrides, error, message):
    with pytest.raises(error, match=re.escape(message)):
        _problem(**overrides)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((np.zeros((2, 2)), np.eye(2)), ValueError, "`prior mean` must be a (d,) vector"),
        ((np.zeros(2), np.eye(3)), ValueError, "prior cov"),
        ((np.zeros(2), np.eye(2), positive(3)), ValueError, "`bounds` must have size 2"),
        ((np.zeros(2), np.eye(2), (0, 1)), TypeError, "`bounds` must be a kalmax Bounds"),
    ],
)
def test_prior_bad_input(args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        Prior(*args)


def test_check_outputs_names_the_expected_shape():
    problem = _problem()
    with pytest.raises(ValueError, match=re.escape("`outputs` (the forward runs) must have shape (4, 5)")):
        problem.check_outputs(np.ones((4, 6)), 4)


def test_forward_none_is_allowed_but_cannot_be_evaluated():
    problem = _problem(forward=None)
    with pytest.raises(ValueError, match="forward=None"):
        problem.evaluate(jnp.zeros((2, 3)))
