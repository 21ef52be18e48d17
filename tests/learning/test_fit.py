"""kalmax.learning.fit: a short run recovers the Lorenz-96 forcing through an ETKF;
only the trainable leaves move; the step is reusable; bad input and non-finite steps are named."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kalmax as kx
from kalmax.learning import fit, make_step, negative_log_likelihood
from kalmax.models import RK4, Flow, Lorenz96


def _model(forcing, dim=8):
    return kx.StateSpaceModel(
        Flow(Lorenz96(dim, forcing), RK4(0.05, 1)), jnp.eye(dim), 0.01 * jnp.eye(dim), jnp.eye(dim),
        8.0 * jnp.ones(dim) + 0.1 * jnp.arange(dim, dtype=jnp.float64), jnp.eye(dim),
    )


def _forcing_only(pair):
    spec = jax.tree_util.tree_map(lambda _: False, pair)
    return eqx.tree_at(lambda p: p[0].dynamics.model.forcing, spec, True)


def test_fit_recovers_the_lorenz96_forcing_through_an_etkf():
    _, ys = kx.simulate(_model(8.0), jax.random.key(0), 100)
    pair = (_model(6.0), kx.EnKF(20, kx.SquareRoot(), inflation=1.02))
    result = fit(negative_log_likelihood, pair, ys, optax.adam(0.1), 80, jax.random.key(1),
                 trainable=_forcing_only(pair), progress=False)
    fitted_model, fitted_method = result.learned
    assert abs(float(fitted_model.dynamics.model.forcing) - 8.0) < 0.3
    assert result.n_epochs == 80 and not result.stopped_early and result.losses[-1] < result.losses[0]
    # the fixed leaves are untouched
    np.testing.assert_array_equal(fitted_method.inflation.factor, pair[1].inflation.factor)
    np.testing.assert_array_equal(fitted_model.init_mean, pair[0].init_mean)


def test_make_step_is_the_step_of_fit():
    _, ys = kx.simulate(_model(8.0), jax.random.key(0), 30)
    pair = (_model(7.0), kx.EnKF(10, kx.SquareRoot()))
    spec, optimizer, key = _forcing_only(pair), optax.sgd(1e-3), jax.random.key(2)
    step = make_step(negative_log_likelihood, optimizer, spec)
    learned, _, value, grads = step(pair, optimizer.init(eqx.filter(pair, spec)), ys, key)
    result = fit(negative_log_likelihood, pair, ys, optimizer, 1, key, trainable=spec, progress=True)
    np.testing.assert_allclose(result.learned[0].dynamics.model.forcing, learned[0].dynamics.model.forcing, rtol=1e-12)
    np.testing.assert_allclose(result.losses[0], value, rtol=1e-12)
    assert np.isfinite(float(grads[0].dynamics.model.forcing))


def test_non_finite_steps_name_the_epoch_and_the_leaf_or_are_skipped():
    learned = {"scale": jnp.asarray(0.0), "offset": jnp.asarray(1.0)}

    def loss(p, data, key):  # d sqrt(x) / dx is infinite at 0
        return jnp.sqrt(p["scale"]) + p["offset"] ** 2

    with pytest.raises(kx.LearningError, match=r"epoch 0 the gradient of leaf \['scale'\]"):
        fit(loss, learned, None, optax.sgd(0.1), 3, progress=False)
    with pytest.raises(kx.LearningError, match="epoch 0 the loss is not finite"):
        fit(lambda p, d, k: jnp.log(-p["offset"]), learned, None, optax.sgd(0.1), 3, progress=False)
    skipped = fit(loss, learned, None, optax.sgd(0.1), 3, skip_non_finite=True, progress=False)
    assert float(skipped.learned["offset"]) == 1.0 and skipped.n_epochs == 3


def test_a_plateau_stops_early():
    result = fit(lambda p, d, k: 0.0 * p["x"] + 1.0, {"x": jnp.asarray(1.0)}, None, optax.sgd(0.1), 50,
                 patience=4, progress=False)
    assert result.stopped_early and result.n_epochs == 5 and np.isnan(result.losses[5:]).all()


def test_bad_fits_are_refused_by_name():
    learned = {"x": jnp.ones(3)}
    with pytest.raises(TypeError, match="`loss` must return a scalar"):
        fit(lambda p, d, k: p["x"], learned, None, optax.sgd(0.1), 2, progress=False)
    with pytest.raises(ValueError, match="no trainable array"):
        fit(lambda p, d, k: jnp.sum(p["x"]), learned, None, optax.sgd(0.1), 2, trainable=lambda _: False,
            progress=False)
    with pytest.raises(ValueError, match="`n_epochs` must be a positive int"):
        fit(lambda p, d, k: jnp.sum(p["x"]), learned, None, optax.sgd(0.1), 0, progress=False)
