"""EnKFN (finite-size EnKF, dual form) against independent references: a NumPy
re-implementation of DAPPER's dual EnKF-N equations (SVD of R^{-1/2}-whitened
anomalies, missing entries dropped explicitly), brute-force minimisation of the
dual cost, the Kalman filter on a large sample-matched ensemble, finite
differences for gradients, and a Lorenz-96 twin experiment."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import kalmax as kx
from kalmax.ensemble.algebra import ensemble_space
from kalmax.filters.enkf_n import EnKFN, EnKFNInfo, adaptive_inflation, dual_problem
from kalmax.presets import lorenz96_sakov2008
from tests import reference as ref

# -- a NumPy reference of the dual EnKF-N (DAPPER's EnKF_N, dual=True, Hess=False) -----


def np_hyperprior(s, N, xN, g):
    """eN, cL after the mode correction and the xN boost (DAPPER's hyperprior_coeffs)."""
    N1 = N - 1
    eN, cL = (N + 1) / N, (N + g) / N1
    diagonal = np.concatenate([s**2, np.zeros(N - len(s))]) + N1
    prior_weight = np.mean(1.0 / diagonal) * N1
    mc = np.sqrt((eN / cL) ** prior_weight)
    return xN * eN / mc, xN * cL * mc


def np_dual(YR, dyR, xN, g):
    """(V, s, J, J', eN, cL) of the dual cost in l1, from the SVD of YR (N, p)."""
    N, p = YR.shape
    N1 = N - 1
    V, s, UT = np.linalg.svd(YR, full_matrices=N > p)
    du = UT @ dyR
    eN, cL = np_hyperprior(s, N, xN, g)

    def J(l1):
        return np.sum(du**2 / ((l1 * s) ** 2 + N1)) + eN / l1**2 + cL * np.log(l1**2)

    def Jp(l1):
        return -2 * l1 * np.sum(s**2 * du**2 / ((l1 * s) ** 2 + N1) ** 2) - 2 * eN / l1**3 + 2 * cL / l1

    return V, s, J, Jp, eN, cL


def np_minimise(J, Jp, eN, cL):
    """Global minimiser of J over l1 > 0: all stationary points lie above sqrt(eN/cL);
    a dense log grid picks the basin and a root finder solves J' = 0 to rounding."""
    grid = np.sqrt(eN / cL) * np.logspace(0, 4, 4001)
    k = int(np.argmin([J(l) for l in grid]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    if Jp(lo) >= 0:
        return lo
    return scipy.optimize.brentq(Jp, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)


def np_enkf_n(E, Eo, y, R, xN=1.0, g=0):
    """The EnKF-N analysis ensemble, inflation and inflated log-likelihood (float64)."""
    observed = np.isfinite(y)
    Eo, y, R = Eo[:, observed], y[observed], R[np.ix_(observed, observed)]
    N = E.shape[0]
    N1 = N - 1
    mu, xo = E.mean(0), Eo.mean(0)
    A, Y, dy = E - mu, Eo - xo, y - xo
    evals, evecs = np.linalg.eigh(R)
    Rm12 = evecs @ np.diag(evals**-0.5) @ evecs.T  # DAPPER's R.sym_sqrt_inv
    YR, dyR = Y @ Rm12, dy @ Rm12
    V, s, J, Jp, eN, cL = np_dual(YR, dyR, xN, g)
    l1 = np_minimise(J, Jp, eN, cL)
    A, Y, YR = l1 * A, l1 * Y, l1 * YR
    dgn = np.concatenate([(l1 * s) ** 2, np.zeros(N - len(s))]) + N1
    Pw = (V / dgn) @ V.T
    w = dyR @ YR.T @ Pw
    T = (V * dgn**-0.5) @ V.T * np.sqrt(N1)
    S = Y.T @ Y / N1 + R
    _, logdet = np.linalg.slogdet(S)
    loglik = -0.5 * (dy @ np.linalg.solve(S, dy) + logdet + len(dy) * np.log(2 * np.pi))
    return mu + w @ A + T @ A, l1, loglik


def observe_nonlinear(v):
    """h: R^6 -> R^p with p = 5 or 12 entries (mixing linear and nonlinear terms)."""
    base = jnp.stack([v[0], v[1] + 0.3 * v[2] ** 2, jnp.sin(v[3]) + v[4], v[5] - v[0], 0.5 * v[2] * v[4]])
    return base


def observe_nonlinear_np(E):
    return np.stack([E[:, 0], E[:, 1] + 0.3 * E[:, 2] ** 2, np.sin(E[:, 3]) + E[:, 4], E[:, 5] - E[:, 0],
                     0.5 * E[:, 2] * E[:, 4]], axis=1)


def analysis_problem(seed, p=5, dense_R=False, missing=False, size=10, dx=6):
    """A forecast ensemble (J, dx), observation y (p,) and a model with Gamma (p, p)."""
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(size, dx)) * np.linspace(0.5, 2.0, dx) + rng.normal(size=dx)
    H = rng.normal(size=(p, dx)) if p != 5 else None
    if dense_R:
        B = rng.normal(size=(p, p))
        R = 0.3 * (B @ B.T / p + np.eye(p))
    else:
        R = np.diag(rng.uniform(0.2, 1.0, size=p))
    if H is None:
        observation, Eo = observe_nonlinear, observe_nonlinear_np(E)
    else:
        observation, Eo = H, E @ H.T
    y = Eo.mean(0) + 3.0 * rng.normal(size=p)  # an innovation larger than the spread: l1 > 1
    if missing:
        y[[1, p - 1]] = np.nan
    model = kx.StateSpaceModel(identity, observation, None, R, np.zeros(dx), np.eye(dx))
    return model, E, Eo, y, R


CASES = [
    dict(seed=0),
    dict(seed=1, missing=True, xN=2.0, g=1),
    dict(seed=2, dense_R=True, missing=True),
    dict(seed=3, p=12, dense_R=True, missing=True, xN=0.5, g=2),  # p > J
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_analysis_matches_numpy_dual_enkf_n(case):
    """One analysis, J = 10, against the NumPy dual EnKF-N (its own SVD, symmetric
    R^{-1/2}, missing entries dropped): members, inflation and log-likelihood to 1e-10."""
    case = dict(case)
    xN, g = case.pop("xN", 1.0), case.pop("g", 0)
    model, E, Eo, y, R = analysis_problem(**case)
    members, l1, loglik = np_enkf_n(E, Eo, y, R, xN, g)
    flt = EnKFN(10, xN=xN, g=g)
    analysis, info = flt.analysis(model, kx.Ensemble(jnp.asarray(E)), jnp.asarray(y))
    assert isinstance(info, EnKFNInfo)
    assert l1 > 1.01  # the test exercises a real inflation
    np.testing.assert_allclose(info.inflation, l1, rtol=1e-10)
    np.testing.assert_allclose(analysis.members, members, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(info.log_likelihood, loglik, rtol=1e-10)
    assert int(info.n_observed) == np.isfinite(y).sum() and int(info.status) == 0
    np.testing.assert_allclose(info.spread, np.sqrt(np.mean(np.var(members, axis=0, ddof=1))), rtol=1e-10)
    # rotation changes the members but neither their mean nor their covariance
    rotated, _ = EnKFN(10, xN=xN, g=g, rotate=True).analysis(model, kx.Ensemble(jnp.asarray(E)), y, jax.random.key(3))
    np.testing.assert_allclose(rotated.mean, members.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rotated.cov, np.cov(members, rowvar=False), rtol=1e-9, atol=1e-12)
    assert not np.allclose(rotated.members, members)


def test_inflation_agrees_with_dapper():
    """DAPPER 1.7.1's EnKF_N on this problem (run outside the tests; identity dynamics,
    one analysis) chose l1 = 1.5056491 (dual=True) and 1.5056634 (primal, its default):
    its Newton iterations stop at xtol = 1e-4 with an approximate Hessian, so they
    agree with the exact minimiser to ~2e-5, as do its analysis members (3.7e-5)."""
    rng = np.random.default_rng(0)
    E = rng.normal(size=(10, 6)) * np.linspace(0.5, 2, 6) + rng.normal(size=6)
    H = rng.normal(size=(5, 6))
    B = rng.normal(size=(5, 5))
    R = 0.3 * (B @ B.T / 5 + np.eye(5))
    y = (E @ H.T).mean(0) + 3 * rng.normal(size=5)
    model = kx.StateSpaceModel(identity, H, None, R, np.zeros(6), np.eye(6))
    _, info = EnKFN(10).analysis(model, kx.Ensemble(jnp.asarray(E)), jnp.asarray(y))
    for dapper_l1 in [1.5056491304, 1.5056633662]:
        np.testing.assert_allclose(info.inflation, dapper_l1, rtol=3e-5)
    np.testing.assert_allclose(info.inflation, np_enkf_n(E, E @ H.T, y, R)[1], rtol=1e-10)


def test_nothing_observed_leaves_the_ensemble_unchanged():
    """With every entry missing the mode correction makes l1 = 1 exactly and the ETKF
    transform is the identity."""
    model, E, _, y, _ = analysis_problem(4)
    analysis, info = EnKFN(10, xN=3.0, g=0).analysis(model, kx.Ensemble(jnp.asarray(E)), np.full_like(y, np.nan))
    np.testing.assert_allclose(info.inflation, 1.0, rtol=1e-12)
    np.testing.assert_allclose(analysis.members, E, rtol=1e-12, atol=1e-12)
    assert float(info.log_likelihood) == 0.0 and int(info.n_observed) == 0


# -- the dual minimiser ------------------------------------------------------------------------


def bimodal_space(size=10):
    """An ensemble space whose dual cost has two local minima (the global one at l1 ~ 167,
    the other near l1 ~ 1.6 where Newton from l1 = 1 would stop)."""
    rng = np.random.default_rng(5)
    lam, b2 = np.array([23.03, 0.003874]), np.array([4930.0, 0.545])
    V, _ = np.linalg.qr(rng.normal(size=(size, size)))
    V = V - V.mean(0)  # anomalies: rows sum to zero; orthonormalise in the centred subspace
    V, _ = np.linalg.qr(V[:, :2])
    U, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    s = np.sqrt(lam)
    S = V @ np.diag(s) @ U.T  # (J, p = 2)
    dy = U @ (np.sqrt(b2) / s)
    members = np.concatenate([S, np.zeros((size, 1))], axis=1)
    model = kx.StateSpaceModel(identity, np.eye(2, 3), None, np.eye(2), np.zeros(3), np.eye(3))
    y = members.mean(0)[:2] + dy
    return model, members, y


@pytest.mark.parametrize("build", ["random", "missing", "bimodal"])
def test_dual_minimiser_finds_the_global_minimum_of_the_dual_cost(build):
    """The minimiser agrees with a brute-force log grid (20,001 points over four decades)
    refined by scipy's bounded scalar minimiser of the cost itself: the minimiser of a
    smooth cost is determined to ~sqrt(eps) by cost values, hence rtol 1e-6 on l1, while
    the cost at our minimiser must not exceed the brute-force one by more than rounding."""
    if build == "bimodal":
        model, E, y = bimodal_space()
        xN, g = 1.0, 0
    else:
        model, E, _, y, _ = analysis_problem(6, missing=build == "missing")
        xN, g = 1.5, 1
    observed = jax.vmap(model.observe)(jnp.asarray(E))
    space = ensemble_space(kx.Ensemble(jnp.asarray(E)), observed, jnp.asarray(y), model.obs_cov)
    problem, _ = dual_problem(space, xN, g)
    l1 = float(adaptive_inflation(problem))

    lo = np.sqrt(float(problem.eN) / float(problem.cL))
    grid = lo * np.logspace(0, 4, 20001)
    costs = np.asarray(jax.vmap(problem.cost)(jnp.asarray(grid)))
    k = int(np.argmin(costs))
    res = scipy.optimize.minimize_scalar(
        lambda l: float(problem.cost(l)), bounds=(grid[max(k - 1, 0)], grid[k + 1]), method="bounded",
        options=dict(xatol=1e-12),
    )
    np.testing.assert_allclose(l1, res.x, rtol=1e-6)
    assert float(problem.cost(l1)) <= res.fun + 1e-12 * abs(res.fun)
    if build == "bimodal":
        assert l1 > 100  # the global minimum, not the local one near 1.6
        # and the NumPy reference agrees on the whole analysis
        members, l1_ref, _ = np_enkf_n(E, E[:, :2], y, np.eye(2))
        analysis, info = EnKFN(10).analysis(model, kx.Ensemble(jnp.asarray(E)), jnp.asarray(y))
        np.testing.assert_allclose(info.inflation, l1_ref, rtol=1e-10)
        np.testing.assert_allclose(analysis.members, members, rtol=1e-9, atol=1e-9)


# -- the large-ensemble limit ---------------------------------------------------------------------


def sample_matched_ensemble(rng, mean, cov, size):
    """J members whose sample mean and covariance (ddof = 1) are exactly mean and cov."""
    Z = rng.normal(size=(size, mean.shape[0]))
    Q, _ = np.linalg.qr(Z - Z.mean(0))
    return mean + np.sqrt(size - 1) * Q @ np.linalg.cholesky(cov).T


def kalman_update(mean, cov, H, R, y):
    S = H @ cov @ H.T + R
    K = cov @ H.T @ np.linalg.inv(S)
    return mean + K @ (y - H @ mean), cov - K @ S @ K.T


def test_large_ensemble_approaches_the_kalman_analysis():
    """For an ensemble whose sample mean and covariance are the prior's, the EnKF-N
    analysis is exactly the Kalman analysis with the prior covariance times l1^2
    (1e-9). The dual cost's data term is O(p / J) against an O(1) hyper-prior, so
    l1^2 - 1 = O(p / J): it shrinks as J grows, and the distance to the (uninflated)
    Kalman analysis is first order in l1^2 - 1, bounded by |l1^2 - 1| times the
    Kalman analysis' derivative with respect to the prior's scale s (x 1.5 for the
    second-order term)."""
    rng = np.random.default_rng(7)
    np_model, ys = ref.random_problem(rng, 3, 2, 1)
    mean, cov, H, R = np_model.init_mean, np_model.init_cov, np_model.observation[0], np_model.obs_cov[0]
    model = kx.StateSpaceModel(identity, H, None, R, mean, cov)
    y = ys[0]
    kf_mean, kf_cov = kalman_update(mean, cov, H, R, y)
    h = 1e-6
    d_mean = (kalman_update(mean, (1 + h) * cov, H, R, y)[0] - kalman_update(mean, (1 - h) * cov, H, R, y)[0]) / (2 * h)
    d_cov = (kalman_update(mean, (1 + h) * cov, H, R, y)[1] - kalman_update(mean, (1 - h) * cov, H, R, y)[1]) / (2 * h)
    gaps = []
    for size in [20, 100, 500]:
        E = sample_matched_ensemble(rng, mean, cov, size)
        analysis, info = EnKFN(size).analysis(model, kx.Ensemble(jnp.asarray(E)), jnp.asarray(y))
        s = float(info.inflation) ** 2
        exact_mean, exact_cov = kalman_update(mean, s * cov, H, R, y)
        np.testing.assert_allclose(analysis.mean, exact_mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(analysis.cov, exact_cov, rtol=1e-9, atol=1e-10)
        gap = abs(s - 1)
        assert gap * size / 2 < 3  # |l1^2 - 1| = O(p / J), p = 2
        np.testing.assert_allclose(analysis.mean, kf_mean, atol=1.5 * gap * np.max(np.abs(d_mean)) + 1e-10)
        np.testing.assert_allclose(analysis.cov, kf_cov, atol=1.5 * gap * np.max(np.abs(d_cov)) + 1e-10)
        gaps.append(gap)
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 1e-2


# -- jit, vmap, grad, float32 ------------------------------------------------------------------


class NonlinearDynamics(eqx.Module):
    """v -> 0.8 roll(v) + theta sin(v): a scalar dynamics parameter, a pytree leaf."""

    theta: jax.Array

    def __call__(self, v):
        return 0.8 * jnp.roll(v, 1) + self.theta.astype(v.dtype) * jnp.sin(v)


def observe_three(v):
    return jnp.stack([v[0], jnp.sin(v[1]) + v[2], v[3]])


def identity(v):
    return v


def nonlinear_problem(theta=0.5, T=12, dtype=np.float64, noise=True):
    rng = np.random.default_rng(12)
    truth = np.array([1.0, -0.5, 0.3, 0.8])
    ys = []
    for _ in range(T):
        truth = 0.8 * np.roll(truth, 1) + theta * np.sin(truth) + 0.1 * rng.normal(size=4)
        ys.append([truth[0], np.sin(truth[1]) + truth[2], truth[3]] + 0.2 * rng.normal(size=3))
    ys = np.array(ys, dtype=dtype)
    ys[4, 1] = np.nan
    ys[7] = np.nan

    def model(theta):
        return kx.StateSpaceModel(
            dynamics=NonlinearDynamics(jnp.asarray(theta, dtype)),
            observation=observe_three,
            dynamics_cov=0.01 * np.eye(4, dtype=dtype) if noise else None,
            obs_cov=0.04 * np.eye(3, dtype=dtype),
            init_mean=np.array([0.8, -0.3, 0.2, 0.5], dtype),
            init_cov=0.2 * np.eye(4, dtype=dtype),
        )

    return model, ys


def test_jit_and_vmap_over_xN_equal_the_eager_loop():
    model, ys = nonlinear_problem()
    key = jax.random.key(1)
    xNs = jnp.array([0.5, 1.0, 2.0, 4.0])

    def run(xN):
        _, history = kx.assimilate(model(0.5), EnKFN(8, xN=xN, rotate=True), ys, key)
        return history.mean, history.info.inflation, history.info.log_likelihood

    batched = jax.jit(jax.vmap(run))(xNs)
    # the batched and the single programs fuse (and so round) differently; the dual minimiser locates a
    # flat minimum only to ~1e-8 of ulp-level changes of its cost (an error ~ noise / curvature), and the
    # nonlinear run with rotations carries that on: measured 1.6e-8 relative in l1 at cycle 5
    for i, xN in enumerate(xNs):
        for got, want in zip(batched, run(float(xN))):
            np.testing.assert_allclose(got[i], want, rtol=1e-7, atol=1e-9)
    # more confidence in the hyper-prior (larger xN) pulls l1^2 towards its mode: less spread in l1
    spreads = np.std(np.asarray(batched[1]), axis=1)
    assert spreads[0] > spreads[-1]
    # the missing row is a forecast-only step: no inflation
    np.testing.assert_allclose(batched[1][:, 7], 1.0, rtol=1e-12)


def test_gradient_wrt_dynamics_parameter_and_xN_match_finite_differences():
    """d(summed log-likelihood)/d(theta, xN) through the whole run, under a fixed key
    (common random numbers: initial ensemble, model noise, rotations), by reverse mode
    through the implicit-function derivative of the dual minimiser and sym_inv_sqrt,
    against central differences."""
    model, ys = nonlinear_problem()
    key = jax.random.key(2)

    def loglik(theta, xN):
        return kx.log_likelihood(model(theta), EnKFN(8, xN=xN, rotate=True), ys, key)

    x0 = np.array([0.5, 1.3])
    grads = jax.jit(jax.grad(loglik, argnums=(0, 1)))(*map(jnp.asarray, x0))
    eps = 1e-6
    for i, grad in enumerate(grads):
        step = eps * np.eye(2)[i]
        fd = (float(loglik(*(x0 + step))) - float(loglik(*(x0 - step)))) / (2 * eps)
        assert np.isfinite(grad) and abs(float(grad)) > 1e-3
        np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_float32_preserves_dtype_and_agrees_with_float64():
    """The same deterministic run (given initial ensemble, no model noise, no rotation)
    in float32 and float64: float32 stays float32 and tracks float64 to ~1e-4 of the
    state scale over 12 cycles (a few hundred ulps of float32's eps 1.2e-7, as the
    dual minimiser and the transforms are well conditioned here)."""
    members = np.random.default_rng(4).normal(size=(8, 4)) * 0.5
    out = {}
    for dtype in [np.float32, np.float64]:
        build, ys = nonlinear_problem(dtype=dtype, noise=False)
        _, history = kx.assimilate(
            build(0.5), EnKFN(8, xN=1.5), ys, jax.random.key(0), init_state=kx.Ensemble(jnp.asarray(members, dtype))
        )
        out[dtype] = history
    h32, h64 = out[np.float32], out[np.float64]
    for field in [h32.mean, h32.info.inflation, h32.info.log_likelihood, h32.info.spread]:
        assert field.dtype == jnp.float32
    np.testing.assert_allclose(h32.mean, h64.mean, atol=1e-4 * np.max(np.abs(h64.mean)))
    np.testing.assert_allclose(h32.info.inflation, h64.info.inflation, rtol=1e-4)
    np.testing.assert_allclose(h32.info.log_likelihood, h64.info.log_likelihood, rtol=1e-4, atol=1e-4)


def test_extra_inflation_module_is_applied_after_the_analysis():
    """An optional multiplicative inflation multiplies the analysis anomalies, as in EnKF."""
    model, E, _, y, _ = analysis_problem(8)
    plain, info = EnKFN(10).analysis(model, kx.Ensemble(jnp.asarray(E)), y)
    inflated, info2 = EnKFN(10, inflation=1.1).analysis(model, kx.Ensemble(jnp.asarray(E)), y)
    np.testing.assert_allclose(inflated.anomalies, 1.1 * plain.anomalies, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(inflated.mean, plain.mean, rtol=1e-12)
    np.testing.assert_allclose(info2.inflation, info.inflation, rtol=1e-14)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ensemble_size=1), "ensemble_size"),
        (dict(ensemble_size=2.5), "ensemble_size"),
        (dict(ensemble_size=True), "ensemble_size"),
        (dict(ensemble_size=10, xN=0.0), "xN"),
        (dict(ensemble_size=10, xN=-1.0), "xN"),
        (dict(ensemble_size=10, xN=np.nan), "xN"),
        (dict(ensemble_size=10, xN=[1.0, 2.0]), "xN.*scalar"),
        (dict(ensemble_size=10, g=-1), "`g`"),
        (dict(ensemble_size=10, n_iterations=0), "n_iterations"),
        (dict(ensemble_size=10, inflation=0.9), "inflation"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnKFN(**kwargs)


def test_bad_use_is_reported():
    model, E, _, y, _ = analysis_problem(9)
    with pytest.raises(ValueError, match="has 10 members but `ensemble_size` is 12"):
        EnKFN(12).analysis(model, kx.Ensemble(jnp.asarray(E)), y)
    with pytest.raises(ValueError, match="key"):
        EnKFN(10, rotate=True).analysis(model, kx.Ensemble(jnp.asarray(E)), y)
    with pytest.raises(TypeError, match="StateSpaceModel"):
        EnKFN(10).init(object(), jax.random.key(0))
    with pytest.raises(TypeError, match="xN"):
        EnKFN(10, xN="one")


def test_non_finite_forecast_is_reported_in_status():
    model, E, _, y, _ = analysis_problem(10)
    E[3, 2] = np.nan
    _, info = EnKFN(10).analysis(model, kx.Ensemble(jnp.asarray(E)), y)
    assert int(info.status) != 0


# -- Lorenz-96 --------------------------------------------------------------------------------------


def test_lorenz96_sakov2008_without_tuned_inflation():
    """EnKF-N N = 24 with rotation on Lorenz-96 (Sakov & Oke 2008): DAPPER documents
    rmse 0.21 over 10,000 cycles; 1,500 cycles (burn-in 400) must be well below 0.3,
    and the chosen inflation is a modest one, > 1 on average."""
    setup = lorenz96_sakov2008(1500)
    result = kx.twin_experiment(
        setup.model, EnKFN(24, rotate=True), setup.n_cycles, jax.random.key(0), burn_in=setup.burn_in,
        keep_mean=False,
    )
    assert float(result.stats.rmse_analysis) < 0.26
    inflation = np.asarray(result.cycles.info.inflation)[setup.burn_in :]
    assert 1.0 < inflation.mean() < 1.2 and np.all(inflation > 0.95)
