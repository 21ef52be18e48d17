"""kalmax.learning.augment_state: the Lorenz-96 forcing estimated jointly with the state by an
ETKF and an EnKF-N (Bocquet & Sakov 2013, sec. 3.3); the augmented model's pieces; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.learning import AugmentedDynamics, augment_state, split_augmented
from kalmax.models import RK4, Flow, Lorenz96


def _model(forcing, dim=40, observation=None):
    return kx.StateSpaceModel(Flow(Lorenz96(dim, forcing), RK4(0.05, 1)),
                              jnp.eye(dim) if observation is None else observation, None, jnp.eye(dim),
                              8.0 + jnp.sin(jnp.arange(dim, dtype=jnp.float64)), jnp.eye(dim))


@pytest.mark.parametrize("method", [kx.EnKF(30, kx.SquareRoot(), inflation=1.02), kx.EnKFN(30)],
                         ids=["ETKF", "EnKF-N"])
def test_forcing_is_recovered_by_state_augmentation(method):
    truth, ys = kx.simulate(_model(8.0), jax.random.key(0), 300)
    augmented = augment_state(_model(6.0), lambda flow: flow.model.forcing, 6.0, 1.0, walk_cov=1e-5)
    _, history = kx.assimilate(augmented, method, ys, jax.random.key(1))
    states, forcing = split_augmented(augmented, history.mean)
    assert forcing.shape == (300,) and states.shape == (300, 40)
    assert abs(float(jnp.mean(forcing[100:])) - 8.0) < 0.1
    assert float(jnp.sqrt(jnp.mean((states[100:] - truth[101:]) ** 2))) < 0.3


def test_augmented_model_pieces():
    model = _model(6.0, dim=8)
    augmented = augment_state(model, lambda flow: flow.model.forcing, 6.5, 0.5)
    assert isinstance(augmented.dynamics, AugmentedDynamics) and augmented.state_dim == 9
    z = jnp.concatenate([model.init_mean, jnp.array([7.0])])
    expected = Flow(Lorenz96(8, 7.0), RK4(0.05, 1))(model.init_mean)
    np.testing.assert_allclose(augmented.dynamics(z), jnp.concatenate([expected, jnp.array([7.0])]), rtol=1e-13)
    np.testing.assert_allclose(augmented.observe(z), model.observe(model.init_mean))
    np.testing.assert_allclose(augmented.init_mean[-1], 6.5)
    np.testing.assert_allclose(augmented.init_cov.matrix()[-1, -1], 0.5)
    assert isinstance(augmented.dynamics_cov, kx.ZeroCovariance)  # persistence, no model noise
    # a per-variable forcing and the other observation kinds
    vector = kx.StateSpaceModel(Flow(Lorenz96(8, jnp.full(8, 6.0)), RK4(0.05, 1)), kx.IndexObservation([0, 2], 8),
                                None, jnp.eye(2), model.init_mean, jnp.eye(8))
    aug = augment_state(vector, lambda flow: flow.model.forcing, jnp.full(8, 6.0), 1.0, walk_cov=0.01)
    z = jnp.concatenate([model.init_mean, jnp.full(8, 6.0)])
    assert aug.state_dim == 16 and aug.observe(z).shape == (2,)
    np.testing.assert_allclose(aug.dynamics_cov.matrix()[8:, 8:], 0.01 * np.eye(8))
    function = kx.StateSpaceModel(Flow(Lorenz96(8, 6.0), RK4(0.05, 1)), lambda v: v[:3] ** 2, None, jnp.eye(3),
                                  model.init_mean, jnp.eye(8))
    aug = augment_state(function, lambda flow: flow.model.forcing, 6.0, 1.0)
    np.testing.assert_allclose(aug.observe(jnp.concatenate([model.init_mean, jnp.array([1.0])])),
                               model.init_mean[:3] ** 2)


def test_bad_input_is_named():
    model = _model(6.0, dim=8)
    forcing = lambda flow: flow.model.forcing  # noqa: E731
    with pytest.raises(TypeError, match="where"):
        augment_state(model, lambda flow: flow.model.nothing, 6.0, 1.0)
    with pytest.raises(ValueError, match="prior_mean"):
        augment_state(model, forcing, jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="prior_cov"):
        augment_state(model, forcing, 6.0, -1.0)
    with pytest.raises(ValueError, match="walk_cov"):
        augment_state(model, forcing, 6.0, 1.0, walk_cov=jnp.ones((2, 2)))
    with pytest.raises(TypeError, match="model"):
        augment_state(kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2)),
                      forcing, 6.0, 1.0)
