"""StateSpaceModel: nonlinear models for one state, checked before tracing."""

import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx


def test_large_diagonal_is_not_densified():
    d = 100_000
    model = kx.StateSpaceModel(
        dynamics=lambda v: 0.5 * v, observation=kx.IndexObservation.every(10, d),
        dynamics_cov=kx.DiagonalCovariance(jnp.full(d, 0.1)), obs_cov=kx.ScalarCovariance(1.0, d // 10),
        init_mean=jnp.zeros(d), init_cov=kx.DiagonalCovariance(jnp.ones(d)),
    )
    assert model.obs_dim == d // 10
    assert model.dynamics_cov.variances.shape == (d,)
    assert model.observe(jnp.arange(d, dtype=jnp.float64)).shape == (d // 10,)


def test_dense_arrays_become_dense_covariances_and_matrices_linear_observations():
    model = kx.StateSpaceModel(lambda v: v, np.eye(3)[:2], None, np.eye(2), np.zeros(3), np.eye(3))
    assert isinstance(model.obs_cov, kx.DenseCovariance)
    assert isinstance(model.observation, kx.LinearObservation)
    assert model.dynamics_cov.is_zero()


def test_callable_observation_infers_its_size():
    model = kx.StateSpaceModel(lambda v: v, lambda v: jnp.stack([v[0] * v[1]]), None, np.eye(1), np.ones(3), np.eye(3))
    assert model.obs_dim == 1
    np.testing.assert_allclose(model.observe(jnp.array([2.0, 3.0, 0.0])), [6.0])


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(dynamics=lambda v: v[:2]), ValueError, r"`dynamics` must return the shape of its input \(3,\); got \(2,\)"),
        (dict(dynamics=lambda v: v.astype(jnp.float32)), TypeError, r"dtype mix: `dynamics` returns float32"),
        (dict(dynamics=3.0), TypeError, r"`dynamics` must be a callable"),
        (dict(dynamics=lambda v: v @ jnp.ones((4, 4))), ValueError, r"`dynamics` failed on a state of shape \(3,\)"),
        (dict(observation=np.eye(4)), ValueError, r"`observation` must have shape \(dy, 3\) to match `init_mean` \(3,\); got \(4, 4\)"),
        (dict(observation=lambda v: v[0]), ValueError, r"`observation` must map a state \(3,\) to a vector"),
        (dict(obs_cov=np.eye(3)), ValueError, r"`obs_cov` must have shape \(2, 2\); got \(3, 3\)"),
        (dict(init_cov=kx.ScalarCovariance(1.0, 4)), ValueError, r"`init_cov` must have size 3"),
        (dict(init_mean=np.array([0.0, np.nan, 0.0])), ValueError, r"`init_mean` has non-finite entries"),
        (dict(observation=kx.IndexObservation([0, 1], 5)), ValueError, r"`observation` indexes a state of size 5"),
    ],
)
def test_bad_input_names_the_argument(overrides, error, match):
    args = dict(dynamics=lambda v: v, observation=np.eye(3)[:2], dynamics_cov=None, obs_cov=np.eye(2),
                init_mean=np.zeros(3), init_cov=np.eye(3))
    args.update(overrides)
    with pytest.raises(error, match=match):
        kx.StateSpaceModel(**args)


def test_index_observation():
    op = kx.IndexObservation.every(3, 10, offset=1)
    assert op.indices == (1, 4, 7)
    np.testing.assert_array_equal(op.as_matrix(10) @ jnp.arange(10.0), [1.0, 4.0, 7.0])
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 10\)"):
        kx.IndexObservation([0, 10], 10)
    with pytest.raises(ValueError, match="`step` must be a positive integer"):
        kx.IndexObservation.every(0, 10)


def test_linear_gaussian_ssm_view():
    lg = kx.LinearGaussianSSM(2.0 * np.eye(2), np.ones((1, 2)), 0.1 * np.eye(2), np.eye(1), np.zeros(2), np.eye(2),
                              dynamics_offset=np.ones(2), obs_offset=np.ones(1))
    model = kx.as_state_space_model(lg)
    np.testing.assert_allclose(model.dynamics(jnp.ones(2)), [3.0, 3.0])
    np.testing.assert_allclose(model.observe(jnp.ones(2)), [3.0])
    with pytest.raises(TypeError, match="must be a StateSpaceModel or LinearGaussianSSM"):
        kx.as_state_space_model(object())
