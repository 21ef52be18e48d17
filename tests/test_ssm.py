"""Bad input gets a clear error naming the argument, before any tracing."""

import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx


def fields(**overrides):
    base = dict(
        dynamics=np.eye(2), observation=np.ones((1, 2)), dynamics_cov=0.1 * np.eye(2),
        obs_cov=np.eye(1), init_mean=np.zeros(2), init_cov=np.eye(2),
    )
    base.update(overrides)
    return base


def test_valid_model_properties():
    model = kx.LinearGaussianSSM(**fields())
    assert model.state_dim == 2 and model.obs_dim == 1 and model.n_times is None
    assert model.dtype == jnp.float64


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(dynamics=np.eye(3)), r"`dynamics` must have shape \(2, 2\) per cycle to match `init_mean` \(2,\); got \(3, 3\)"),
        (dict(observation=np.ones((1, 3))), r"`observation` must have shape \(dy, 2\)"),
        (dict(obs_cov=np.eye(2)), r"`obs_cov` must have shape \(1, 1\) to match `observation`; got \(2, 2\)"),
        (dict(dynamics_cov=np.ones((2, 3))), r"`dynamics_cov` must be a square covariance matrix; got shape \(2, 3\)"),
        (dict(init_cov=np.eye(3)), r"`init_cov` must have shape \(2, 2\) to match `init_mean`; got \(3, 3\)"),
        (dict(init_mean=np.zeros((2, 1))), r"`init_mean` must be a vector"),
        (dict(dynamics_cov=np.array([[1.0, 0.5], [0.0, 1.0]])), r"`dynamics_cov` is not symmetric"),
        (dict(obs_cov=np.array([[np.nan]])), r"`obs_cov` has non-finite entries"),
        (dict(init_cov=np.array([[1.0, 0.0], [0.0, np.inf]])), r"`init_cov` has non-finite entries"),
        (dict(dynamics_cov=np.array([[1.0, 2.0], [2.0, 1.0]])), r"`dynamics_cov` is not positive semi-definite \(smallest eigenvalue -1"),
        (dict(dynamics=np.array([[np.nan, 0.0], [0.0, 1.0]])), r"`dynamics` has non-finite entries"),
        (dict(dynamics_offset=np.zeros(3)), r"`dynamics_offset` must have shape \(2,\) per cycle; got \(3,\)"),
        (dict(obs_offset=np.zeros(2)), r"`obs_offset` must have shape \(1,\) per cycle; got \(2,\)"),
        (dict(dynamics=kx.TimeVarying(np.stack([np.eye(3)] * 4))), r"`dynamics` must have shape \(2, 2\) per cycle"),
        (dict(obs_cov=kx.TimeVarying(np.ones((4, 2, 2)))), r"`obs_cov` must have shape \(1, 1\) per cycle"),
    ],
)
def test_shape_and_value_errors_name_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        kx.LinearGaussianSSM(**fields(**overrides))


def test_dtype_errors():
    with pytest.raises(TypeError, match=r"dtype mix: `obs_cov` is float32 but `dynamics` is float64"):
        kx.LinearGaussianSSM(**fields(obs_cov=np.eye(1, dtype=np.float32)))
    with pytest.raises(TypeError, match=r"`dynamics` must have a floating dtype"):
        kx.LinearGaussianSSM(**fields(dynamics=np.eye(2, dtype=np.int64)))
    with pytest.raises(TypeError, match=r"`init_mean` and `init_cov` describe v_0"):
        kx.LinearGaussianSSM(**fields(init_mean=kx.TimeVarying(np.zeros((3, 2)))))


def test_time_varying_lengths_must_agree():
    with pytest.raises(ValueError, match="time-varying fields disagree"):
        kx.LinearGaussianSSM(**fields(
            dynamics=kx.TimeVarying(np.stack([np.eye(2)] * 4)),
            obs_cov=kx.TimeVarying(np.ones((5, 1, 1))),
        ))


@pytest.mark.parametrize(
    "ys, error, match",
    [
        (np.zeros(5), ValueError, r"`ys` must be a \(T, dy\) array of observations, time first \(rank 2\); got shape \(5,\)"),
        (np.zeros((5, 1, 1)), ValueError, r"`ys` must be a \(T, dy\) array.*got shape \(5, 1, 1\)"),
        (np.zeros((5, 3)), ValueError, r"`ys` must have shape \(T, 1\) to match the model's observation dimension 1; got \(5, 3\)"),
        (np.zeros((5, 1), np.float32), TypeError, r"dtype mix: `ys` is float32 but the model's arrays are float64"),
        (np.array([[0.0], [np.inf]]), ValueError, r"`ys` has infinite entries \(use NaN to mark a missing observation\)"),
        (np.zeros((5, 1), np.int32), TypeError, r"`ys` must have a floating dtype"),
    ],
)
def test_observation_errors(ys, error, match):
    model = kx.LinearGaussianSSM(**fields())
    with pytest.raises(error, match=match):
        kx.assimilate(model, kx.KalmanFilter(), ys)


def test_time_varying_length_must_match_ys():
    model = kx.LinearGaussianSSM(**fields(dynamics=kx.TimeVarying(np.stack([np.eye(2)] * 4))))
    with pytest.raises(ValueError, match=r"`ys` has 5 cycles but the model's `TimeVarying` fields have 4"):
        kx.assimilate(model, kx.KalmanFilter(), np.zeros((5, 1)))


def test_bad_save_and_parallel_arguments():
    model = kx.LinearGaussianSSM(**fields())
    with pytest.raises(TypeError, match=r"`save` must be a kalmax.Save"):
        kx.assimilate(model, kx.KalmanFilter(), np.zeros((3, 1)), save="cov")
    with pytest.raises(ValueError, match="`parallel=True` runs the covariance form"):
        kx.assimilate(model, kx.KalmanFilter(square_root=True), np.zeros((3, 1)), parallel=True)
    with pytest.raises(ValueError, match="`joseph=True` applies to the covariance form"):
        kx.KalmanFilter(square_root=True, joseph=True)


def test_simulate_is_reproducible_and_follows_the_time_convention():
    import jax

    model = kx.LinearGaussianSSM(**fields(dynamics=2.0 * np.eye(2), dynamics_cov=np.zeros((2, 2)), obs_cov=np.zeros((1, 1))))
    states, ys = kx.simulate(model, jax.random.key(0), 4)
    again, _ = kx.simulate(model, jax.random.key(0), 4)
    np.testing.assert_array_equal(states, again)
    assert states.shape == (5, 2) and ys.shape == (4, 1)
    np.testing.assert_allclose(states[1:], 2.0 * states[:-1])
    np.testing.assert_allclose(ys[:, 0], states[1:].sum(axis=1))
