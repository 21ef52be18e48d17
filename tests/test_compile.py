"""kalmax._compile: small CPU runs compiled with XLA's serial schedule give the same results."""

import jax
import jax.numpy as jnp
import numpy as np

import kalmax as kx
from kalmax import _compile, presets


def test_serial_schedule_only_for_small_states_at_the_top_level():
    assert _compile.prefers_serial(960) == (jax.default_backend() == "cpu")
    assert not _compile.prefers_serial(_compile.SMALL_STATE + 1)
    assert not _compile.prefers_serial(None)
    seen = []
    jax.jit(lambda x: seen.append(_compile.prefers_serial(960)) or x)(0.0)  # a nested jit cannot take options
    assert seen == [False]
    setup = presets.lorenz96_sakov2008(n_cycles=5)
    assert _compile.state_size(setup.model, kx.EnKF(24)) == 24 * 40
    assert _compile.state_size(setup.model, kx.EnKF(24), n_runs=3) == 3 * 24 * 40
    assert _compile.state_size(setup.model, kx.ExtendedKalmanFilter()) == 40 * 41


def test_serial_and_default_schedules_give_the_same_run():
    setup = presets.lorenz96_sakov2008(n_cycles=30)
    _, ys = kx.simulate(setup.model, jax.random.key(1), 30)
    method = kx.EnKF(12, kx.SquareRoot(), inflation=1.02, rotate=True)
    key = jax.random.key(2)
    top = kx.assimilate(setup.model, method, ys, key)[1].mean  # serial on CPU (12 x 40 state)
    nested = jax.jit(lambda y, k: kx.assimilate(setup.model, method, y, k)[1].mean)(ys, key)  # XLA's defaults
    np.testing.assert_allclose(np.asarray(top), np.asarray(nested), rtol=1e-12, atol=1e-12)
    assert jnp.all(jnp.isfinite(top))
