"""The shipped data sets, and the Nile maximum-likelihood example against published values."""

import importlib.util
import pathlib

import numpy as np
import pytest

from kalmax.datasets import load_nile

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _import_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"kalmax_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nile_loads_the_published_series():
    years, flow = load_nile()
    assert years.shape == (100,) and flow.shape == (100,)
    assert np.issubdtype(years.dtype, np.integer)
    assert flow.dtype == np.float64
    np.testing.assert_array_equal(years, np.arange(1871, 1971))
    assert flow.sum() == 91935.0
    np.testing.assert_array_equal(flow[:10], [1120, 1160, 963, 1210, 1160, 1160, 813, 1230, 1370, 1140])
    assert flow[-1] == 740.0


@pytest.fixture(scope="module")
def nile_mle():
    return _import_example("nile_mle")


@pytest.fixture(scope="module")
def nile_fit(nile_mle):
    """(obs_var, level_var, log_likelihood), fitted once for the module (compiling dominates)."""
    return nile_mle.fit_nile(n_steps=30)


def test_nile_mle_reproduces_durbin_koopman(nile_fit):
    """Exact diffuse MLE of the local-level model: Durbin & Koopman (2012) sec. 2.10.3."""
    obs_var, level_var, log_likelihood = nile_fit
    assert obs_var == pytest.approx(15099.0, rel=0.02)
    assert level_var == pytest.approx(1469.1, rel=0.02)
    assert np.isfinite(log_likelihood)


def test_nile_mle_is_a_maximum(nile_mle, nile_fit):
    """The fitted log-likelihood is not beaten by nearby variances (the optimiser converged)."""
    import jax.numpy as jnp

    _, flow = load_nile()
    obs_var, level_var, best = nile_fit
    for factor_obs, factor_level in [(1.05, 1.0), (0.95, 1.0), (1.0, 1.1), (1.0, 0.9)]:
        log_variances = jnp.log(jnp.array([obs_var * factor_obs, level_var * factor_level]))
        assert float(nile_mle.diffuse_log_likelihood(log_variances, jnp.asarray(flow))) < best
