"""ES-MDA against the NumPy formula of one assimilation and the exact posterior of a linear
Gaussian problem; its schedule and bad coefficients (jit / vmap / grad: with EKI's, in test_eki.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.inversion.schedulers import MDASchedule
from kalmax.results import RESULTS

from .test_eki import _perturbations, linear_problem, numpy_eki_step

EMERICK = (28 / 3, 7.0, 4.0, 2.0)  # Emerick & Reynolds (2013): decreasing alphas, sum(1/alpha) = 1


def test_each_assimilation_is_the_numpy_update_with_inflated_noise():
    problem, ref = linear_problem(d=4, p=12)
    method = kx.ESMDA(16, EMERICK)
    state = method.init(problem, jax.random.key(0))
    members = np.asarray(state.members)
    chol = np.linalg.cholesky(ref["gamma"])
    for alpha in EMERICK:
        key = jax.random.key(int(alpha * 10))
        outputs = members @ ref["H"].T
        perturbed = ref["y"] + _perturbations(key, 16, 12, 1.0 / alpha, chol)
        expected = numpy_eki_step(members, outputs, perturbed, ref["gamma"], 1.0 / alpha)
        state = method.tell(problem, state, jnp.asarray(outputs), key)
        np.testing.assert_allclose(state.members, expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(state.step_size, 1.0 / alpha, rtol=1e-12)
        members = expected
    assert float(state.time) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("coefficients", [4, EMERICK], ids=["four-equal", "emerick"])
def test_a_large_ensemble_samples_the_linear_gaussian_posterior(coefficients):
    problem, ref = linear_problem()
    method = kx.ESMDA(400, coefficients)
    keys = jax.random.split(jax.random.key(7), 8)
    results = jax.vmap(lambda k: kx.invert(problem, method, k))(keys)
    # N_a assimilations, ending at time 1
    assert np.all(np.asarray(results.code) == RESULTS.SUCCESSFUL)
    assert method.n_assimilations == 4 and np.all(np.asarray(results.n_iterations) == 4)
    np.testing.assert_allclose(results.history.time[:, -1], 1.0, rtol=1e-12)
    means = np.asarray(results.state.members.mean(axis=1))
    z = (means.mean(0) - ref["mean"]) / (means.std(0, ddof=1) / np.sqrt(len(keys)))
    assert np.max(np.abs(z)) < 4.5, z
    assert np.max(np.abs(means - ref["mean"]) / np.sqrt(np.diag(ref["cov"]) / 400)) < 6.0
    cov = np.mean([np.cov(m.T) for m in np.asarray(results.state.members)], axis=0)
    assert np.linalg.norm(cov - ref["cov"]) / np.linalg.norm(ref["cov"]) < 0.15


def test_the_schedule_steps_through_the_alphas():
    schedule = MDASchedule(EMERICK)
    assert schedule.final_time == 1.0 and MDASchedule(3).coefficients == (3.0, 3.0, 3.0)
    residuals = jnp.zeros((4, 2))
    time = 0.0
    for alpha in EMERICK:
        context = kx.inversion.StepContext(residuals, residuals, jnp.ones(4, bool), jnp.asarray(time))
        step = float(schedule(context))
        assert step == pytest.approx(1.0 / alpha, rel=1e-12)
        time += step


@pytest.mark.parametrize(
    "coefficients, error, message",
    [
        ((2.0, 2.0, 2.0), ValueError, "sum to 1"),
        ((1.0, -1.0), ValueError, "positive"),
        ((), ValueError, "empty"),
        (0, ValueError, ">= 1"),
        (True, TypeError, "`coefficients`"),
        ("4", ValueError, "sum to 1"),
        (None, TypeError, "`coefficients`"),
    ],
)
def test_bad_coefficients_are_named(coefficients, error, message):
    with pytest.raises(error, match=message):
        kx.ESMDA(10, coefficients)


def test_bad_ensemble_size_step_count_and_stopping_rule():
    with pytest.raises(ValueError, match="ensemble_size"):
        kx.ESMDA(1, 4)
    problem, _ = linear_problem(d=3, p=5)
    with pytest.raises(ValueError, match="`n_steps`: ESMDA runs exactly 4 iterations"):
        kx.invert(problem, kx.ESMDA(10, 4), jax.random.key(0), 6)
    with pytest.raises(ValueError, match="`stop`"):
        kx.invert(problem, kx.ESMDA(10, 4), jax.random.key(0), stop=kx.DiscrepancyPrinciple())


# jit / vmap / grad in both precisions: tests/inversion/test_eki.py::test_jit_vmap_grad_in_both_precisions[ESMDA-*]
