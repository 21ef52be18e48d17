"""kalmax.learning losses: values against the filters' own outputs, gradients against
finite differences, truncation against the full gradient, jit/vmap/grad in both precisions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.learning import forecast_error, negative_log_likelihood, truncated_negative_log_likelihood
from kalmax.presets import lorenz96_sakov2008


def _linear(dtype=jnp.float64, n_cycles=40):
    dynamics = (0.9 * jnp.linalg.qr(jax.random.normal(jax.random.key(0), (3, 3)))[0]).astype(dtype)
    model = kx.LinearGaussianSSM(
        dynamics, jnp.eye(2, 3, dtype=dtype), 0.2 * jnp.eye(3, dtype=dtype), 0.5 * jnp.eye(2, dtype=dtype),
        jnp.zeros(3, dtype), jnp.eye(3, dtype=dtype), dynamics_offset=0.1 * jnp.ones(3, dtype),
    )
    _, ys = kx.simulate(model, jax.random.key(1), n_cycles)
    return model, ys.at[7, 1].set(jnp.nan)


def test_negative_log_likelihood_is_the_filters_and_its_gradient_matches_finite_differences():
    model, ys = _linear()
    pair = (model, kx.KalmanFilter())
    value = negative_log_likelihood(pair, ys)
    np.testing.assert_allclose(value, -kx.log_likelihood(model, kx.KalmanFilter(), ys), rtol=1e-13)
    grad = eqx.filter_grad(negative_log_likelihood)(pair, ys)[0].dynamics
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        bump = jnp.zeros((3, 3)).at[i, j].set(eps)
        plus = eqx.tree_at(lambda m: m.dynamics, model, model.dynamics + bump)
        minus = eqx.tree_at(lambda m: m.dynamics, model, model.dynamics - bump)
        fd = (negative_log_likelihood((plus, pair[1]), ys) - negative_log_likelihood((minus, pair[1]), ys)) / (2 * eps)
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-6, atol=1e-8)


def test_burn_in_leaves_out_the_first_terms_and_its_gradient_is_consistent():
    model, ys = _linear()
    pair = (model, kx.KalmanFilter(steady_state=False))
    _, history = kx.assimilate(model, pair[1], ys)
    value = negative_log_likelihood(pair, ys, burn_in=10)
    np.testing.assert_allclose(value, -jnp.sum(history.info.log_likelihood[10:]), rtol=1e-13)
    # the gradient of the later terms = full gradient - gradient of the first ten (closed form for both)
    full = eqx.filter_grad(negative_log_likelihood)(pair, ys)[0].dynamics
    early = eqx.filter_grad(negative_log_likelihood)(pair, ys[:10])[0].dynamics
    late = eqx.filter_grad(lambda p, y: negative_log_likelihood(p, y, burn_in=10))(pair, ys)[0].dynamics
    np.testing.assert_allclose(late, full - early, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("window", [40, 7])
def test_truncated_likelihood_keeps_the_value_and_with_one_window_the_gradient(window):
    model, ys = _linear()
    pair = (model, kx.KalmanFilter())
    full_value, full_grad = eqx.filter_value_and_grad(negative_log_likelihood)(pair, ys)
    value, grad = eqx.filter_value_and_grad(truncated_negative_log_likelihood)(pair, ys, window=window)
    np.testing.assert_allclose(value, full_value, rtol=1e-12)
    if window == ys.shape[0]:
        np.testing.assert_allclose(grad[0].dynamics, full_grad[0].dynamics, rtol=1e-10, atol=1e-12)
    else:  # truncation drops the cross-window terms: a different, finite gradient
        assert np.all(np.isfinite(grad[0].dynamics))
        assert not np.allclose(grad[0].dynamics, full_grad[0].dynamics, rtol=1e-6)


def test_forecast_error_with_lead_one_is_the_mean_squared_innovation_of_the_forecasts():
    model, ys = _linear()
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(forecast=True))
    predicted = history.forecast_mean[1:] @ model.observation.T
    residual = np.asarray(predicted - ys[1:])
    expected = np.nanmean(residual**2)
    np.testing.assert_allclose(forecast_error((model, kx.KalmanFilter()), ys, lead=1), expected, rtol=1e-12)
    assert forecast_error((model, kx.KalmanFilter()), ys, lead=3) > expected  # longer forecasts err more


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ensemble_losses_under_jit_vmap_and_grad(dtype):
    setup = lorenz96_sakov2008(30)
    model = setup.model
    if dtype == jnp.float32:
        model = jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model)
    batch = jnp.stack([kx.simulate(model, jax.random.key(s), 30)[1] for s in range(2)])
    pair = (model, kx.EnKF(10, kx.SquareRoot(), inflation=jnp.asarray(1.05, dtype)))
    key = jax.random.key(3)
    for loss, kwargs in ((negative_log_likelihood, {}), (forecast_error, {"lead": 2}),
                         (truncated_negative_log_likelihood, {"window": 8})):
        value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda p, y: loss(p, y, key, **kwargs)))
        values, grads = jax.vmap(value_and_grad, in_axes=(None, 0))(pair, batch)
        assert values.shape == (2,) and values.dtype == dtype and np.all(np.isfinite(values))
        inflation_grad = grads[1].inflation.factor
        assert inflation_grad.shape == (2,) and np.all(np.isfinite(inflation_grad)), loss.__name__


def test_bad_arguments_are_named():
    model, ys = _linear()
    pair = (model, kx.KalmanFilter())
    with pytest.raises(ValueError, match="`window` must be an int in"):
        truncated_negative_log_likelihood(pair, ys, window=0)
    with pytest.raises(ValueError, match="`window` must be an int in"):
        truncated_negative_log_likelihood(pair, ys, window=41)
    with pytest.raises(ValueError, match="`lead` must be a positive int"):
        forecast_error(pair, ys, lead=0)
    with pytest.raises(TypeError, match=r"the pair \(model, method\)"):
        negative_log_likelihood(model, ys)
    with pytest.raises(ValueError, match="`burn_in` must be an int in"):
        negative_log_likelihood(pair, ys, burn_in=40)
    with pytest.raises(ValueError, match="burn_in"):
        negative_log_likelihood(pair, ys, gradient="fisher", burn_in=5)
