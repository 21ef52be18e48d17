"""invert: stopping rules, schedulers, history rows, failed members, result codes, errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.inversion.constraints import positive
from kalmax.inversion.eki import EKI, ETKI
from kalmax.inversion.invert import (
    DiscrepancyPrinciple,
    InversionError,
    invert,
)
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.schedulers import DataMisfitController, EKSStableStep, FixedStep, StepContext

from .test_eki import linear_problem


def test_history_rows_describe_each_ensemble():
    problem, ref = linear_problem(d=4, p=6)
    method = EKI(10, FixedStep(0.5), stochastic=False)
    key = jax.random.key(0)
    result = invert(problem, method, key, 3)
    assert int(result.code) == RESULTS.SUCCESSFUL and int(result.n_iterations) == 3
    assert result.history.mean.shape == (4, 4) and result.history.failures.shape == (4, 10)
    # replay by hand: init from the same key split, step with the per-iteration keys
    key_init, key_loop = jax.random.split(key)
    state = method.init(problem, key_init)
    keys = jax.random.split(key_loop, 4)
    for n in range(4):
        np.testing.assert_allclose(result.history.mean[n], state.members.mean(0), rtol=1e-12)
        assert float(result.history.time[n]) == pytest.approx(0.5 * n)
        outputs = np.asarray(state.members) @ ref["H"].T
        residual = ref["y"] - outputs.mean(0)
        assert float(result.history.misfit[n]) == pytest.approx(residual @ np.linalg.solve(ref["gamma"], residual))
        if n < 3:
            state = method.step(problem, state, keys[n])
    np.testing.assert_allclose(result.state.members, state.members, rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(result.history.step_size), [False, False, False, True])
    assert result.misfit == result.history.misfit[3]


def test_discrepancy_principle_stops_at_the_first_ensemble_below_the_noise_level():
    problem, ref = linear_problem()
    stop = DiscrepancyPrinciple(tau=1.5)
    result = invert(problem, EKI(30, FixedStep(0.05), stochastic=False), jax.random.key(1), stop=stop)
    n = int(result.n_iterations)
    assert int(result.code) == RESULTS.DISCREPANCY and result.message.startswith("stopped by the discrepancy")
    misfit = np.asarray(result.history.misfit)
    level = (1.5**2) * 20
    assert misfit[n] <= level < misfit[n - 1]
    assert np.all(np.isnan(misfit[n + 1 :]))
    np.testing.assert_allclose(result.history.mean[n], result.state.members.mean(0), rtol=1e-12)


def test_discrepancy_with_max_steps_reports_max_steps():
    problem, _ = linear_problem()
    stop = DiscrepancyPrinciple(tau=1e-3)  # never reached
    result = invert(problem, EKI(20, stochastic=False), jax.random.key(2), stop=stop, max_steps=7)
    assert int(result.code) == RESULTS.MAX_STEPS and int(result.n_iterations) == 7
    assert not np.isnan(np.asarray(result.history.misfit[7]))


def test_data_misfit_controller_steps_and_final_time():
    problem, ref = linear_problem()
    method = EKI(100, DataMisfitController())
    result = invert(problem, method, jax.random.key(3))
    n = int(result.n_iterations)
    assert int(result.code) == RESULTS.FINAL_TIME
    steps = np.asarray(result.history.step_size[:n])
    assert np.sum(steps) == pytest.approx(1.0, rel=1e-12) and float(result.history.time[n]) == pytest.approx(1.0)
    # the first step by the formula of Iglesias & Yang (2021), from the prior ensemble
    key_init, _ = jax.random.split(jax.random.key(3))
    members = np.asarray(method.init(problem, key_init).members)
    chol = np.linalg.cholesky(ref["gamma"])
    phi = 0.5 * np.sum(np.linalg.solve(chol, (ref["y"] - members @ ref["H"].T).T) ** 2, axis=0)
    expected = min(max(20 / (2 * phi.mean()), np.sqrt(20 / (2 * phi.var(ddof=1)))), 1.0)
    assert steps[0] == pytest.approx(expected, rel=1e-10)


def test_eks_stable_step_formula():
    rng = np.random.default_rng(0)
    residuals, anomalies = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    context = StepContext(jnp.asarray(residuals), jnp.asarray(anomalies), jnp.ones(6, bool), jnp.zeros(()))
    drift = (-residuals) @ anomalies.T / 6  # D_jk = <G_k - mean G, Gamma^{-1}(G_j - y)> / J
    assert float(EKSStableStep(2.0, 0.1)(context)) == pytest.approx(2.0 / (np.linalg.norm(drift) + 0.1))


def test_fixed_step_with_an_end_shortens_the_last_step():
    problem, _ = linear_problem(d=3, p=5)
    result = invert(problem, EKI(10, FixedStep(0.3, end=1.0)), jax.random.key(4))
    n = int(result.n_iterations)
    assert n == 4 and int(result.code) == RESULTS.FINAL_TIME
    np.testing.assert_allclose(result.history.step_size[:n], [0.3, 0.3, 0.3, 0.1], rtol=1e-12)


def _failing_problem(threshold, failed_if=None):
    problem, ref = linear_problem(d=3, p=5)
    H = jnp.asarray(ref["H"])

    def forward(u):
        return jnp.where(u[0] > threshold, jnp.nan, 1.0) * (H @ u)

    return InverseProblem(forward, problem.y, problem.obs_cov, problem.prior, failed_if=failed_if), ref


def test_failed_members_are_recorded_and_redrawn_from_the_successful_ones():
    problem, _ = _failing_problem(threshold=0.9)
    method = EKI(40, FixedStep(0.5))
    result = invert(problem, method, jax.random.key(5), 3)
    failures = np.asarray(result.history.failures)
    assert np.all(np.isin(failures, [0, RESULTS.FORWARD_NON_FINITE]))
    assert failures[0].sum() > 0  # the prior ensemble has members above the threshold
    assert np.all(np.isfinite(np.asarray(result.state.members)))
    # a tell where members failed: the successful ones get the EKI update of the successful sub-ensemble,
    # the failed ones are redrawn near them
    key_init, _ = jax.random.split(jax.random.key(5))
    state = method.init(problem, key_init)
    outputs = problem.evaluate(state.members)
    ok = np.all(np.isfinite(np.asarray(outputs)), axis=1)
    new = method.tell(problem, state, outputs, jax.random.key(6))
    sub = EKI(int(ok.sum()), FixedStep(0.5))
    sub_state = sub.init(problem, None, members=state.members[ok])
    expected = sub.tell(problem, sub_state, outputs[ok], jax.random.key(6))
    # same update algebra on the successful rows (perturbations differ by row position, so compare deterministic)
    det, det_sub = EKI(40, FixedStep(0.5), stochastic=False), EKI(int(ok.sum()), FixedStep(0.5), stochastic=False)
    new_det = det.tell(problem, state, outputs, jax.random.key(6))
    exp_det = det_sub.tell(problem, sub_state, outputs[ok], jax.random.key(6))
    np.testing.assert_allclose(np.asarray(new_det.members)[ok], exp_det.members, rtol=1e-10)
    redrawn = np.asarray(new.members)[~ok]
    centre, spread = np.asarray(expected.members).mean(0), np.asarray(expected.members).std(0)
    assert np.all(np.abs(redrawn - centre) < 6 * spread)
    np.testing.assert_array_equal(new.failures, np.where(ok, 0, RESULTS.FORWARD_NON_FINITE))


def test_failed_if_criterion_is_applied():
    problem, _ = _failing_problem(threshold=np.inf, failed_if=lambda g: jnp.max(jnp.abs(g)) > 3.0)
    result = invert(problem, EKI(20), jax.random.key(7), 2, throw=False)
    assert np.any(np.asarray(result.history.failures) == RESULTS.FORWARD_REJECTED)


def test_too_few_successes_raises_with_counts_and_reasons():
    problem, _ = _failing_problem(threshold=-np.inf)
    with pytest.raises(InversionError, match=re.escape("at iteration 0, 12 of 12 members failed (12 non-finite output)")):
        invert(problem, EKI(12), jax.random.key(8), 3)
    result = invert(problem, EKI(12), jax.random.key(8), 3, throw=False)
    assert int(result.code) == RESULTS.TOO_FEW_SUCCESSES and int(result.n_iterations) == 0
    adaptive = invert(problem, EKI(12), jax.random.key(8), stop=DiscrepancyPrinciple(), throw=False)
    assert int(adaptive.code) == RESULTS.TOO_FEW_SUCCESSES


def test_constrained_parameters_stay_in_their_bounds():
    rng = np.random.default_rng(1)
    H = jnp.asarray(rng.uniform(0.5, 1.5, size=(8, 2)))
    truth = np.array([0.5, 2.0])
    y = np.asarray(H) @ truth + 0.01 * rng.normal(size=8)
    problem = InverseProblem(lambda theta: H @ theta, y, 1e-4 * np.eye(8), Prior(np.zeros(2), np.eye(2), positive(2)))
    result = invert(problem, EKI(20, stochastic=False), jax.random.key(10), 30)
    ensemble = np.asarray(result.ensemble)
    assert np.all(ensemble > 0)
    np.testing.assert_allclose(ensemble.mean(0), truth, rtol=0.05)
    np.testing.assert_allclose(result.history.physical_mean[-1], ensemble.mean(0), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(n_steps=None), ValueError, "give `n_steps`, a stopping rule"),
        (dict(n_steps=-1), ValueError, "`n_steps` must be a non-negative int"),
        (dict(n_steps=2, max_steps=0), ValueError, "`max_steps` must be a positive int"),
        (dict(n_steps=2, stop=1.0), TypeError, "`stop` must be a DiscrepancyPrinciple"),
        (dict(n_steps=2, key=None), ValueError, "EKI needs a `key`"),
        (dict(n_steps=2, method="EKI"), TypeError, "`method` must be a kalmax inversion method"),
        (dict(n_steps=2, problem=(1, 2)), TypeError, "`problem` must be a kalmax InverseProblem"),
    ],
)
def test_invert_bad_input(kwargs, error, message):
    problem, _ = linear_problem(d=3, p=5)
    args = dict(problem=problem, method=EKI(5), key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        invert(args.pop("problem"), args.pop("method"), args.pop("key"), **args)


def test_discrepancy_bad_input():
    with pytest.raises(ValueError, match="`tau` must be positive"):
        DiscrepancyPrinciple(tau=0.0)
    with pytest.raises(ValueError, match="`noise_level` must be positive"):
        DiscrepancyPrinciple(noise_level=-1.0)


def test_forward_none_problem_points_to_invert_external():
    problem, _ = linear_problem(d=3, p=5)
    external = InverseProblem(None, problem.y, problem.obs_cov, problem.prior)
    with pytest.raises(ValueError, match="invert_external"):
        invert(external, EKI(5), jax.random.key(0), 2)


def test_etki_under_invert_with_a_non_finite_ensemble_reports_it():
    problem, ref = linear_problem(d=3, p=5)
    state = ETKI(5).init(problem, jax.random.key(0))
    bad = type(state)(
        members=state.members.at[0, 0].set(jnp.inf), bounds=state.bounds, time=state.time, iteration=state.iteration,
        misfit=state.misfit, failures=state.failures, step_size=state.step_size,
    )  # fmt: skip
    with pytest.raises(InversionError, match="non-finite at iteration 0"):
        invert(problem, ETKI(5), jax.random.key(1), 2, init_state=bad)
