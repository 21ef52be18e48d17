"""kalmax.loops: the strategies `assimilate` scans cycles with give the same runs; the
checkpointed scan gives the same values and gradients with far less stored memory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.presets import lorenz96_sakov2008


def _linear_problem():
    key = jax.random.key(0)
    dynamics = 0.9 * jnp.linalg.qr(jax.random.normal(key, (4, 4)))[0]
    model = kx.LinearGaussianSSM(dynamics, jnp.eye(2, 4), 0.1 * jnp.eye(4), 0.5 * jnp.eye(2), jnp.zeros(4), jnp.eye(4))
    _, ys = kx.simulate(model, jax.random.key(1), 103)
    return model, ys.at[10, 0].set(jnp.nan)


@pytest.mark.parametrize("chunk", [None, 1, 10, 103, 500])
def test_checkpointed_scan_equals_the_sequential_scan(chunk):
    model, ys = _linear_problem()
    save = kx.Save(cov=True, forecast=True)
    _, plain = kx.assimilate(model, kx.KalmanFilter(), ys, save=save, loop=kx.SequentialScan())
    _, checkpointed = kx.assimilate(model, kx.KalmanFilter(), ys, save=save, loop=kx.CheckpointedScan(chunk))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(checkpointed)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_checkpointed_gradients_equal_plain_gradients_for_an_ensemble_filter():
    setup = lorenz96_sakov2008(60)
    _, ys = kx.simulate(setup.model, jax.random.key(2), 60)
    key = jax.random.key(3)

    def loss(inflation, loop):
        etkf = kx.EnKF(10, kx.SquareRoot(), inflation=inflation, rotate=True)
        _, history = kx.assimilate(setup.model, etkf, ys, key, save=kx.Save(mean=False), loop=loop)
        return jnp.sum(history.info.log_likelihood)

    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss))  # one compiled program per loop
    plain = value_and_grad(1.05, kx.SequentialScan())
    checkpointed = value_and_grad(1.05, kx.CheckpointedScan(7))
    np.testing.assert_allclose(checkpointed[0], plain[0], rtol=1e-12)
    np.testing.assert_allclose(checkpointed[1], plain[1], rtol=1e-10)
    rematerialised = value_and_grad(1.05, kx.SequentialScan(remat=True))
    np.testing.assert_allclose(rematerialised[0], plain[0], rtol=1e-12)
    np.testing.assert_allclose(rematerialised[1], plain[1], rtol=1e-10)


def test_checkpointing_bounds_the_memory_of_a_long_gradient():
    setup = lorenz96_sakov2008(2000)
    _, ys = kx.simulate(setup.model, jax.random.key(4), 2000)

    def temp_bytes(loop):
        def loss(inflation):
            etkf = kx.EnKF(20, kx.SquareRoot(), inflation=inflation)
            _, history = kx.assimilate(setup.model, etkf, ys, jax.random.key(5), save=kx.Save(mean=False), loop=loop)
            return jnp.sum(history.info.log_likelihood)

        compiled = jax.jit(jax.grad(loss)).lower(1.02).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, checkpointed = temp_bytes(kx.SequentialScan()), temp_bytes(kx.CheckpointedScan())
    assert checkpointed < 0.2 * plain, (checkpointed, plain)


def test_bad_loops_are_refused_by_name():
    model, ys = _linear_problem()
    with pytest.raises(ValueError, match="chunk_size"):
        kx.CheckpointedScan(0)
    with pytest.raises(TypeError, match="`loop` must be a kalmax loop"):
        kx.assimilate(model, kx.KalmanFilter(), ys, loop="sequential")
    with pytest.raises(ValueError, match="not both"):
        kx.assimilate(model, kx.KalmanFilter(), ys, parallel=True, loop=kx.SequentialScan())
    setup = lorenz96_sakov2008(5)
    with pytest.raises(ValueError, match="no steady-state form"):
        kx.assimilate(setup.model, kx.EnKF(5), jnp.zeros((5, 40)), jax.random.key(0), loop=kx.SteadyStateScan())
