"""EKS (ensemble Kalman sampler, with and without the ALDI correction) against NumPy float64 references.

The linear Gaussian problem y = H u + eta, eta ~ N(0, Gamma), u ~ N(m_0, C_0)
has the posterior N(m, P), P = (H^T Gamma^{-1} H + C_0^{-1})^{-1},
m = P (H^T Gamma^{-1} y + C_0^{-1} m_0), computed here in NumPy float64.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.results import RESULTS
from kalmax.covariance import DiagonalCovariance
from kalmax.inversion.base import EnsembleInversionState
from kalmax.inversion.eks import EKS
from kalmax.inversion.invert import InversionError, invert
from kalmax.inversion.problem import InverseProblem, Prior
from kalmax.inversion.schedulers import EKSStableStep, FixedStep

D, P = 10, 20


def _linear_gaussian(seed=0, diagonal=False):
    """NumPy float64 pieces of a linear Gaussian problem (dense or diagonal Gamma and C_0) and its posterior."""
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(P, D)) / np.sqrt(D)
    m0 = rng.normal(size=D)
    if diagonal:
        C0 = np.diag(rng.uniform(0.5, 2.0, size=D))
        Gamma = np.diag(rng.uniform(0.05, 0.2, size=P))
    else:
        B = rng.normal(size=(D, D))
        C0 = B @ B.T / D + 0.5 * np.eye(D)
        G = rng.normal(size=(P, P))
        Gamma = 0.1 * (G @ G.T / P + 0.5 * np.eye(P))
    u_true = m0 + np.linalg.cholesky(C0) @ rng.normal(size=D)
    y = H @ u_true + np.linalg.cholesky(Gamma) @ rng.normal(size=P)
    post_cov = np.linalg.inv(H.T @ np.linalg.solve(Gamma, H) + np.linalg.inv(C0))
    post_mean = post_cov @ (H.T @ np.linalg.solve(Gamma, y) + np.linalg.solve(C0, m0))
    return dict(H=H, m0=m0, C0=C0, Gamma=Gamma, y=y, post_mean=post_mean, post_cov=post_cov, diagonal=diagonal)


def _linear(H, u):
    return H @ u


def _nan_if_large(H, threshold, u):
    return jnp.where(u[0] > threshold, jnp.nan, H @ u)


# Steps and tells compiled once per method and problem structure (forward models are `Partial`s of
# module-level functions, so rebuilt problems hit the cache).
_step = eqx.filter_jit(lambda method, problem, state, key: method.step(problem, state, key))
_tell = eqx.filter_jit(
    lambda method, problem, state, outputs, key, failures: method.tell(problem, state, outputs, key, failures)
)


def _problem(ref, dtype=jnp.float64, y=None, forward=None):
    H = jnp.asarray(ref["H"], dtype)
    y = jnp.asarray(ref["y"], dtype) if y is None else y
    if ref["diagonal"]:
        obs_cov = DiagonalCovariance(jnp.asarray(np.diag(ref["Gamma"]), dtype))
        prior_cov = DiagonalCovariance(jnp.asarray(np.diag(ref["C0"]), dtype))
    else:
        obs_cov, prior_cov = jnp.asarray(ref["Gamma"], dtype), jnp.asarray(ref["C0"], dtype)
    forward = jax.tree_util.Partial(_linear, H) if forward is None else forward
    return InverseProblem(forward, y, obs_cov, Prior(jnp.asarray(ref["m0"], dtype), prior_cov))


def _numpy_eks_step(u, g, y, Gamma, m0, C0, z, step=None, numerator=1.0, nugget=1e-8, correction=True):
    """One EKS step in plain NumPy float64: dense Gamma^{-1}, a dense d x d implicit solve.

    Returns (new members, dt). `step=None` uses dt = numerator / (|D|_F + nugget).
    """
    J, d = u.shape
    A = u - u.mean(axis=0)
    Dm = (g - g.mean(axis=0)) @ np.linalg.solve(Gamma, (g - y).T)  # [k, j] = <G_k - mean G, Gamma^{-1}(G_j - y)>
    Dm = Dm.T / J
    dt = numerator / (np.linalg.norm(Dm) + nugget) if step is None else step
    C = A.T @ A / J
    rhs = u - dt * Dm @ A + np.sqrt(2 * dt / J) * z @ A + dt * (C @ np.linalg.solve(C0, m0))
    if correction:
        rhs = rhs + dt * (d + 1) / J * A
    new = np.linalg.solve(np.eye(d) + dt * C @ np.linalg.inv(C0), rhs.T).T
    return new, dt


def _noise(key, J, dtype):
    """The (J, J) standard normals z that EKS.tell draws from `key` (its first split)."""
    key_noise, _ = jax.random.split(key)
    return np.asarray(jax.random.normal(key_noise, (J, J), dtype), np.float64)


# J < d: the ensemble-space (J x J) solve; J > d: the parameter-space (d x d) one
@pytest.mark.parametrize("diagonal, size, correction", [(False, 5, True), (True, 30, False)])
def test_single_step_matches_numpy(diagonal, size, correction):
    ref = _linear_gaussian(1, diagonal)
    problem = _problem(ref)
    eks = EKS(size, scheduler=EKSStableStep(numerator=0.7), finite_ensemble_correction=correction)
    state = eks.init(problem, jax.random.key(3))
    key = jax.random.key(4)
    new = _step(eks, problem, state, key)
    u = np.asarray(state.members)
    expected, dt = _numpy_eks_step(
        u, u @ ref["H"].T, ref["y"], ref["Gamma"], ref["m0"], ref["C0"], _noise(key, size, jnp.float64),
        numerator=0.7, correction=correction,
    )  # fmt: skip
    np.testing.assert_allclose(new.members, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.step_size, dt, rtol=1e-12)
    np.testing.assert_allclose(new.time, dt, rtol=1e-12)
    assert int(new.iteration) == 1
    residual = np.linalg.cholesky(ref["Gamma"])
    misfit = np.sum(np.linalg.solve(residual, ref["y"] - (u @ ref["H"].T).mean(axis=0)) ** 2)
    np.testing.assert_allclose(new.misfit, misfit, rtol=1e-12)
    np.testing.assert_array_equal(new.failures, 0)
    # a second step accumulates the time
    newer = _step(eks, problem, new, jax.random.key(5))
    np.testing.assert_allclose(newer.time, dt + float(newer.step_size), rtol=1e-12)


def _sample_run(problem, eks, key, n_steps):
    """Ensemble means and (ddof = 1) covariances of every iterate, from a scan over `eks.step`."""

    @jax.jit
    def run(key):
        key_init, key_run = jax.random.split(key)
        state = eks.init(problem, key_init)

        def body(state, key):
            state = eks.step(problem, state, key)
            return state, (state.mean, state.cov)

        return jax.lax.scan(body, state, jax.random.split(key_run, n_steps))[1]

    return run(key)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("correction", [True, False])
def test_time_averaged_ensemble_matches_posterior(correction):
    # With the default EKSStableStep (dt ~ 0.28 here) J = 200 gives (measured over 4 keys): mean error
    # 0.2-0.3%, covariance error 7.0-7.2% (ALDI, trace ratio 1.07-1.08) and 6.8-7.9% (plain EKS, trace
    # ratio 1.02-1.03). The time discretisation inflates the covariance by about 7%, which plain EKS's
    # finite-ensemble deflation (~(d + 1)/J = 5.5%) partly cancels; with numerator 0.25 (dt ~ 0.08) the
    # errors are 2.1% (ALDI, trace 1.02) and 3.3% (plain, trace 0.98).
    ref = _linear_gaussian(0)
    problem = _problem(ref)
    eks = EKS(200, finite_ensemble_correction=correction)
    n_steps, burn_in = 400, 100
    if correction:  # through the driver: history.mean holds the per-iteration means
        result = invert(problem, eks, jax.random.key(1), n_steps)
        assert int(result.n_iterations) == n_steps
        assert np.all(np.asarray(result.history.time[1:]) > 0)
        assert _rel(np.asarray(result.history.mean[burn_in:]).mean(axis=0), ref["post_mean"]) < 0.05
    means, covs = _sample_run(problem, eks, jax.random.key(2), n_steps)
    mean_error = _rel(np.asarray(means[burn_in:]).mean(axis=0), ref["post_mean"])
    cov_error = _rel(np.asarray(covs[burn_in:]).mean(axis=0), ref["post_cov"])
    assert mean_error < 0.05 and cov_error < 0.15, (mean_error, cov_error)  # measured 0.003, 0.075-0.079


def test_finite_ensemble_correction_removes_small_ensemble_bias():
    # J = 20, d = 10: plain EKS's invariant ensemble is too narrow (measured over 4 keys: covariance error
    # 53-56%, trace ratio 0.46-0.48), ALDI's is the posterior (error 4-8%, trace ratio 0.99-1.04) up to an
    # O(dt) bias, small with numerator 0.25 (dt ~ 0.07).
    ref = _linear_gaussian(0)
    problem = _problem(ref)
    errors, traces = {}, {}
    for correction in (True, False):
        eks = EKS(20, scheduler=EKSStableStep(numerator=0.25), finite_ensemble_correction=correction)
        means, covs = _sample_run(problem, eks, jax.random.key(7), 3000)
        cov = np.asarray(covs[500:]).mean(axis=0)
        errors[correction] = _rel(cov, ref["post_cov"])
        traces[correction] = np.trace(cov) / np.trace(ref["post_cov"])
        assert _rel(np.asarray(means[500:]).mean(axis=0), ref["post_mean"]) < 0.05
    assert errors[True] < 0.15 and 0.9 < traces[True] < 1.1
    assert errors[False] > 0.3 and traces[False] < 0.7


def test_jit_float32_step_matches_numpy_float64():
    # The float32 step against the float64 reference on the same (float32-representable) inputs: the
    # solves are of condition number ~1e2 and D sums J * p products, so float32's eps 1.2e-7 grows to
    # ~1e-5 relative; 1e-4 leaves a margin.
    ref = _linear_gaussian(1)
    problem = _problem(ref, jnp.float32)
    eks = EKS(30)
    state = eks.init(problem, jax.random.key(3))
    key = jax.random.key(4)
    new = _step(eks, problem, state, key)
    assert new.members.dtype == jnp.float32
    cast = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    u = np.asarray(state.members, np.float64)
    expected, _ = _numpy_eks_step(
        u, u @ cast(ref["H"]).T, cast(ref["y"]), cast(ref["Gamma"]), cast(ref["m0"]), cast(ref["C0"]),
        _noise(key, 30, jnp.float32),
    )  # fmt: skip
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(new.members, np.float64), expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_vmap_over_keys_and_y_matches_single_runs(dtype, rtol):
    ref = _linear_gaussian(1)
    eks = EKS(12)

    def run(key, y):
        return invert(_problem(ref, dtype, y=y), eks, key, 4).state.members

    keys = jax.random.split(jax.random.key(0), 3)
    ys = jnp.asarray(ref["y"][None, :] + np.random.default_rng(2).normal(size=(3, P)) * 0.1, dtype)
    batched = jax.jit(jax.vmap(run))(keys, ys)
    single = jax.jit(run)
    assert batched.shape == (3, 12, D) and batched.dtype == dtype
    for i in range(3):
        np.testing.assert_allclose(batched[i], single(keys[i], ys[i]), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype, eps, rtol", [(jnp.float64, 1e-6, 1e-6), (jnp.float32, 1e-2, 1e-2)])
def test_grad_of_final_mean_wrt_y_matches_finite_differences(dtype, eps, rtol):
    # y -> final ensemble mean after 4 steps (fixed key) is smooth: the steps depend on y through |D|_F.
    # float32: central differences with eps = 1e-2 (y entries are O(1)) have rounding error
    # ~ eps32 |f| / eps ~ 1e-5 |f| and truncation error O(eps^2); 1e-2 of the largest entry bounds both.
    ref = _linear_gaussian(1)
    eks = EKS(12)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=D), dtype)

    @jax.jit
    def loss(y):
        return jnp.sum(weights * invert(_problem(ref, dtype, y=y), eks, jax.random.key(5), 4).state.mean)

    y = jnp.asarray(ref["y"], dtype)
    grad = jax.jit(jax.grad(loss))(y)
    assert grad.dtype == dtype
    basis = np.eye(P, dtype=dtype) * eps
    fd = np.array([(float(loss(y + basis[i])) - float(loss(y - basis[i]))) / (2 * eps) for i in range(P)])
    np.testing.assert_allclose(grad, fd, rtol=rtol, atol=rtol * np.abs(fd).max())


def _nan_forward(H, threshold):
    return jax.tree_util.Partial(_nan_if_large, jnp.asarray(H), threshold)


def test_failed_members_are_redrawn_and_the_rest_update_on_the_successful_members():
    ref = _linear_gaussian(1)
    J, threshold = 30, float(ref["m0"][0]) + 0.5
    problem = _problem(ref, forward=_nan_forward(ref["H"], threshold))
    eks = EKS(J, scheduler=FixedStep(0.05))
    state = eks.init(problem, jax.random.key(3))
    u = np.asarray(state.members)
    failed = u[:, 0] > threshold
    assert 2 < failed.sum() < J - 2
    key = jax.random.key(4)
    new = _step(eks, problem, state, key)
    np.testing.assert_array_equal(new.failures, np.where(failed, RESULTS.FORWARD_NON_FINITE, RESULTS.SUCCESSFUL))
    ok = ~failed
    z = _noise(key, J, jnp.float64)[np.ix_(ok, ok)]
    expected, _ = _numpy_eks_step(
        u[ok], u[ok] @ ref["H"].T, ref["y"], ref["Gamma"], ref["m0"], ref["C0"], z, step=0.05
    )
    np.testing.assert_allclose(np.asarray(new.members)[ok], expected, rtol=1e-10, atol=1e-12)
    redrawn = np.asarray(new.members)[failed]
    assert np.all(np.isfinite(redrawn)) and not np.allclose(redrawn, u[failed])
    # failures told from outside (a run that raised): those members are left out too
    told = _tell(eks, problem, state, u @ ref["H"].T, jax.random.key(4), np.where(failed, 3, 0))
    np.testing.assert_allclose(np.asarray(told.members)[ok], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(told.failures, np.where(failed, 3, 0))


def test_invert_records_failures_and_raises_with_fewer_than_two_successes():
    ref = _linear_gaussian(1)
    J, threshold = 30, float(ref["m0"][0]) + 0.5
    problem = _problem(ref, forward=_nan_forward(ref["H"], threshold))
    result = invert(problem, EKS(J), jax.random.key(0), 5)
    failures = np.asarray(result.history.failures)
    assert failures.shape == (6, J) and failures[0].sum() > 0
    assert set(np.unique(failures)) <= {RESULTS.SUCCESSFUL, RESULTS.FORWARD_NON_FINITE}
    assert np.all(np.isfinite(np.asarray(result.state.members)))

    eks = EKS(5)
    members = np.tile(ref["m0"], (5, 1)) + np.random.default_rng(0).normal(size=(5, D)) * 0.1
    members[1:, 0] = threshold + 1.0  # only member 0 succeeds
    state = eks.init(problem, None, members=members)
    with pytest.raises(InversionError, match=re.escape("4 of 5 members failed")):
        invert(problem, eks, jax.random.key(0), 3, init_state=state)
    # tell with a single success keeps the ensemble and does not advance
    kept = _step(eks, problem, state, jax.random.key(1))
    np.testing.assert_array_equal(kept.members, state.members)
    assert int(kept.iteration) == 0 and float(kept.time) == 0.0


def test_bad_input():
    ref = _linear_gaussian(1)
    problem = _problem(ref)
    with pytest.raises(ValueError, match="`ensemble_size` must be at least 2"):
        EKS(1)
    with pytest.raises(TypeError, match="`ensemble_size` must be an int"):
        EKS(10.0)
    with pytest.raises(ValueError, match="`numerator` must be positive"):
        EKS(10, scheduler=EKSStableStep(numerator=0.0))
    with pytest.raises(ValueError, match="`numerator` must be positive"):
        EKSStableStep(numerator=-1.0)
    with pytest.raises(TypeError, match="`scheduler` must be a kalmax scheduler"):
        EKS(10, scheduler=0.1)
    with pytest.raises(TypeError, match="`finite_ensemble_correction` must be a bool"):
        EKS(10, finite_ensemble_correction="yes")
    eks = EKS(10)
    state = eks.init(problem, jax.random.key(0))
    assert isinstance(state, EnsembleInversionState)
    outputs = np.zeros((10, P + 1))
    with pytest.raises(ValueError, match=re.escape(f"`outputs` (the forward runs) must have shape (10, {P})")):
        eks.tell(problem, state, outputs, jax.random.key(1))
    with pytest.raises(ValueError, match="needs a `key`"):
        eks.tell(problem, state, np.zeros((10, P)))
    with pytest.raises(ValueError, match=re.escape("`failures` must have shape (10,)")):
        eks.tell(problem, state, np.zeros((10, P)), jax.random.key(1), failures=np.zeros(9))
    with pytest.raises(ValueError, match=re.escape(f"`members` must have shape (10, {D})")):
        eks.init(problem, None, members=np.zeros((9, D)))
    with pytest.raises(ValueError, match=re.escape(f"`state.members` must have shape (12, {D})")):
        EKS(12).tell(problem, state, np.zeros((12, P)), jax.random.key(1))
