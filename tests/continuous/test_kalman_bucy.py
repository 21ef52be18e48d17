"""The Kalman-Bucy filter against the closed-form scalar Riccati solution and a NumPy float64
Ito-Euler transcription, the discrete Kalman filter's convergence to it (first order in
tau), the EnKBF's convergence to it as the ensemble grows, and jit / vmap / grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.continuous import aggregate_increments, discretise


def scalar_model(a=-1.0, sigma2=0.5, gamma2=0.2, c0=1.0, dtype=jnp.float64):
    eye = jnp.eye(1, dtype=dtype)
    return kx.ContinuousModel(a * eye, sigma2 * eye, eye, gamma2 * eye, jnp.zeros(1, dtype), c0 * eye)


def two_dimensional_model(dtype=jnp.float64):
    drift = jnp.asarray([[-0.5, 1.0], [-1.0, -0.5]], dtype)
    return kx.ContinuousModel(drift, 0.3 * jnp.eye(2, dtype=dtype), jnp.asarray([[1.0, 0.0]], dtype),
                              0.1 * jnp.eye(1, dtype=dtype), jnp.asarray([1.0, 0.0], dtype), 0.5 * jnp.eye(2, dtype=dtype))


def test_the_covariance_is_the_closed_form_riccati_solution():
    a, sigma2, gamma2, c0 = -1.0, 0.5, 0.2, 1.0
    model = scalar_model(a, sigma2, gamma2, c0)
    errors = []
    for dt in (2e-3, 1e-3):
        n = int(round(1.0 / dt))
        data = kx.simulate_continuous(model, jax.random.key(0), n, dt)
        result = kx.KalmanBucy().run(model, data.increments, dt)
        # dC/dt = 2 a C + sigma2 - C^2 / gamma2: C(t) between the roots c_-, c_+ of the right-hand side
        root = np.sqrt(a * a + sigma2 / gamma2)
        c_plus, c_minus = gamma2 * (a + root), gamma2 * (a - root)
        ratio = (c0 - c_plus) / (c0 - c_minus)
        decay = np.exp(-2 * root * np.asarray(result.times))
        exact = (c_plus - c_minus * ratio * decay) / (1 - ratio * decay)
        errors.append(np.max(np.abs(np.asarray(result.cov[:, 0, 0]) - exact)))
    assert errors[1] < 2e-3
    assert 1.8 < errors[0] / errors[1] < 2.2  # the Euler scheme's first order


def numpy_kalman_bucy(A, Sigma, H, Gamma, m0, C0, increments, dt):
    """Ito-Euler of dm = A m dt + K (dz - H m dt), dC = (A C + C A^T + Sigma - K H C) dt, and
    log L = sum (H m)^T Gamma^{-1} dz - 1/2 |H m|^2_Gamma dt."""
    m, C, log_l = m0.copy(), C0.copy(), 0.0
    means, covs = [m.copy()], [C.copy()]
    Gi = np.linalg.inv(Gamma)
    for dz in increments:
        K = C @ H.T @ Gi
        Hm = H @ m
        log_l += Hm @ Gi @ dz - 0.5 * Hm @ Gi @ Hm * dt
        m, C = m + A @ m * dt + K @ (dz - Hm * dt), C + (A @ C + C @ A.T + Sigma - K @ H @ C) * dt
        means.append(m.copy())
        covs.append(C.copy())
    return np.stack(means), np.stack(covs), log_l


def test_equals_the_numpy_transcription_with_its_likelihood():
    model = two_dimensional_model()
    dt = 0.01
    data = kx.simulate_continuous(model, jax.random.key(1), 300, dt, substeps=4)
    result = kx.KalmanBucy().run(model, data.increments, dt)
    means, covs, log_l = numpy_kalman_bucy(np.asarray(model.drift), 0.3 * np.eye(2), np.asarray(model.observation),
                                           0.1 * np.eye(1), np.asarray([1.0, 0.0]), 0.5 * np.eye(2),
                                           np.asarray(data.increments), dt)
    np.testing.assert_allclose(result.mean, means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.cov, covs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.log_likelihood, log_l, rtol=1e-10)
    # the extended filter on a linear model is the same filter
    extended = kx.KalmanBucy(extended=True).run(model, data.increments, dt)
    np.testing.assert_allclose(extended.mean, result.mean, rtol=1e-12, atol=1e-12)
    # consistent: the normalised squared errors average to the dimension
    errors = np.asarray(data.truth - result.mean)[100:]
    nees = np.einsum("ti,tij,tj->t", errors, np.linalg.inv(np.asarray(result.cov)[100:]), errors)
    assert 1.0 < nees.mean() < 3.5


def test_the_discrete_kalman_filter_converges_to_it_at_first_order():
    model = two_dimensional_model()
    fine, horizon = 2.0**-12, 1.0
    data = kx.simulate_continuous(model, jax.random.key(2), int(horizon / fine), fine)
    reference = kx.KalmanBucy().run(model, data.increments, fine)
    taus, errors = [], []
    for factor in (8, 16, 32, 64, 128):  # tau = 2^-9 .. 2^-5
        tau = factor * fine
        ys = aggregate_increments(data.increments, factor, fine)
        _, history = kx.assimilate(discretise(model, tau), kx.KalmanFilter(), ys)
        # the discrete analyses at t_n = n tau against the continuous filter there
        at = np.arange(1, ys.shape[0] + 1) * factor
        errors.append(np.max(np.abs(np.asarray(history.mean) - np.asarray(reference.mean)[at])))
        taus.append(tau)
    slope = np.polyfit(np.log(taus), np.log(errors), 1)[0]
    assert 0.85 < slope < 1.15, (slope, errors)


def test_the_enkbf_approaches_the_kalman_bucy_filter_as_the_ensemble_grows():
    """A large ensemble's mean and spread are the Kalman-Bucy filter's within Monte-Carlo
    error (the rate in J, slope -1/2, is measured in benchmarks/bench_continuous.py)."""
    model = scalar_model()
    dt = 5e-3
    data = kx.simulate_continuous(model, jax.random.key(3), 160, dt)
    exact = kx.KalmanBucy().run(model, data.increments, dt)
    for form in ("square-root", "perturbed"):
        errors = {}
        for size in (8, 512):
            run = kx.EnKBF(size, form).run(model, data.increments, dt, jax.random.key(4))
            errors[size] = float(jnp.sqrt(jnp.mean((run.mean - exact.mean) ** 2)))
        # 64 times the members: about an eighth of the error (one seed: a loose bound)
        assert errors[512] < 0.4 * errors[8] and errors[512] < 0.05, (form, errors)
        np.testing.assert_allclose(float(run.spread[-1]) ** 2, exact.cov[-1, 0, 0], rtol=0.2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_jit_vmap_and_grad(dtype):
    dt = 0.02
    data = kx.simulate_continuous(scalar_model(dtype=dtype), jax.random.key(6), 30, dt)

    def log_likelihood(a, increments):
        return kx.KalmanBucy().run(scalar_model(a, dtype=dtype), increments, dt).log_likelihood

    # the method's own compiled run (`run` compiles its solve) against the same run under an outer
    # jit with its gradient (one compilation for both), and a vmap over the parameter that also
    # evaluates the two points of the central difference (one compilation)
    value = log_likelihood(jnp.asarray(-1.0, dtype), data.increments)
    assert value.dtype == dtype
    jitted, grad = jax.jit(jax.value_and_grad(log_likelihood))(jnp.asarray(-1.0, dtype), data.increments)
    np.testing.assert_allclose(jitted, value, rtol=1e-5 if dtype == jnp.float32 else 1e-12)
    eps = 1e-2 if dtype == jnp.float32 else 1e-5
    batched = jax.jit(jax.vmap(log_likelihood, in_axes=(0, None)))(
        jnp.asarray([-1.0, -1.0 + eps, -1.0 - eps], dtype), data.increments)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(batched[0], value, rtol=tol)
    fd = (batched[1] - batched[2]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=2e-2 if dtype == jnp.float32 else 1e-6)
    # through the ensemble filter too
    def ensemble_loss(a):
        model = scalar_model(a, sigma2=0.0, dtype=dtype)  # no model noise: the gain's path only
        return jnp.sum(kx.EnKBF(8).run(model, data.increments, dt, jax.random.key(7)).mean ** 2)

    value, grad = jax.jit(jax.value_and_grad(ensemble_loss))(jnp.asarray(-1.0, dtype))
    assert value.dtype == grad.dtype == dtype
    ends = jax.jit(jax.vmap(ensemble_loss))(jnp.asarray([-1.0 + eps, -1.0 - eps], dtype))  # vmap over the drift
    fd = (ends[0] - ends[1]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=2e-2 if dtype == jnp.float32 else 1e-5)


def test_bad_input_is_named():
    model = scalar_model()
    with pytest.raises(ValueError, match="`dt`"):
        kx.KalmanBucy().run(model, jnp.zeros((5, 1)), -0.1)
    with pytest.raises(ValueError, match="`increments`"):
        kx.KalmanBucy().run(model, jnp.zeros((5, 2)), 0.1)
    with pytest.raises(ValueError, match="`obs_cov`"):
        kx.ContinuousModel(-jnp.eye(1), jnp.eye(1), jnp.eye(1), -jnp.eye(1), jnp.zeros(1), jnp.eye(1))
    with pytest.raises(ValueError, match="`drift`"):
        kx.ContinuousModel(-jnp.eye(2), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1))
    with pytest.raises(ValueError, match="nonlinear"):
        kx.KalmanBucy().run(kx.ContinuousModel(lambda v: -v**3, jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1),
                                               jnp.eye(1)), jnp.zeros((5, 1)), 0.1)
    with pytest.raises(ValueError, match="`form`"):
        kx.EnKBF(10, form="square")
    with pytest.raises(ValueError, match="`ensemble_size`"):
        kx.EnKBF(1)
    with pytest.raises(TypeError, match="`solver`"):
        kx.simulate_continuous(model, jax.random.key(0), 5, 0.1, solver="euler")
    with pytest.raises(ValueError, match="`solver`"):
        kx.simulate_continuous(model, jax.random.key(0), 5, 0.1, solver=diffrax_ode_only())
    with pytest.raises(ValueError, match="`solver`"):  # needs a Brownian motion with Levy area
        kx.simulate_continuous(model, jax.random.key(0), 5, 0.1, solver=shark())
    with pytest.raises(ValueError, match="`tau`"):
        discretise(model, 0.0)


def shark():
    import diffrax

    return diffrax.ShARK()


def diffrax_ode_only():
    import diffrax

    return diffrax.Tsit5()  # an ODE solver: no Brownian control term


def test_continuous_3dvar_with_the_stationary_covariance_is_the_kalman_bucy_mean():
    a, sigma2, gamma2 = -1.0, 0.5, 0.2
    root = np.sqrt(a * a + sigma2 / gamma2)
    stationary = gamma2 * (a + root)  # the Riccati equation's stable fixed point
    model = scalar_model(a, sigma2, gamma2, c0=stationary)
    dt = 1e-3
    data = kx.simulate_continuous(model, jax.random.key(8), 500, dt)
    bucy = kx.KalmanBucy().run(model, data.increments, dt)
    var3d = kx.ContinuousThreeDVar(stationary * jnp.eye(1)).run(model, data.increments, dt)
    np.testing.assert_allclose(bucy.cov[:, 0, 0], stationary, rtol=1e-10)
    np.testing.assert_allclose(var3d.mean, bucy.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var3d.log_likelihood, bucy.log_likelihood, rtol=1e-10)
    # the RK4 drift increment: m_{k+1} = m_k + (e^{a dt} to fourth order - 1) m_k + C H^T Gamma^-1 (dz - m_k dt)
    rk4 = kx.ContinuousThreeDVar(stationary * jnp.eye(1), rk4_drift=True).run(model, data.increments, dt)
    z = a * dt
    growth = z + z**2 / 2 + z**3 / 6 + z**4 / 24
    means = [0.0]
    for dz in np.asarray(data.increments)[:, 0]:
        means.append(means[-1] + growth * means[-1] + stationary / gamma2 * (dz - means[-1] * dt))
    np.testing.assert_allclose(rk4.mean[:, 0], means, rtol=1e-10, atol=1e-13)


def test_continuous_3dvar_synchronises_lorenz63_from_a_wrong_start():
    from kalmax.models import Lorenz63

    lorenz = Lorenz63()
    noise = 0.05
    model = kx.ContinuousModel(lorenz.vector_field, None, jnp.eye(3), noise * jnp.eye(3), jnp.asarray([1.0, 1.0, 1.0]),
                               jnp.zeros((3, 3)))
    dt = 0.002
    data = kx.simulate_continuous(model, jax.random.key(9), 2500, dt, substeps=2)
    late = {}
    for variance in (2.0, 0.02):
        result = kx.ContinuousThreeDVar(variance * jnp.eye(3)).run(model, data.increments, dt,
                                                                   init_mean=jnp.asarray([-8.0, 5.0, 30.0]))
        error = np.sqrt(np.mean(np.asarray(result.mean - data.truth) ** 2, axis=1))
        assert error[0] > 10
        late[variance] = error[-500:].mean()
    # enough variance in C (a strong enough gain) synchronises to the noise's level; too little does not
    assert late[2.0] < 1.2 and late[0.02] > 3.0, late


def test_the_etkf_converges_to_the_square_root_enkbf_with_the_same_ensemble_and_data():
    drift = jnp.asarray([[-0.5, 1.0], [-1.0, -0.5]])
    model = kx.ContinuousModel(drift, None, jnp.asarray([[1.0, 0.0]]), 0.1 * jnp.eye(1), jnp.asarray([1.0, 0.0]),
                               0.5 * jnp.eye(2))
    fine = 2.0**-12
    data = kx.simulate_continuous(model, jax.random.key(10), int(1.0 / fine), fine)
    members = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)) * 0.7 + np.asarray([1.0, 0.0]))
    reference = kx.EnKBF(6).run(model, data.increments, fine, jax.random.key(0), init_members=members)
    taus, errors = [], []
    for factor in (64, 128, 256, 512):
        ys = aggregate_increments(data.increments, factor, fine)
        etkf = kx.EnKF(6, kx.SquareRoot())
        _, history = kx.assimilate(discretise(model, factor * fine), etkf, ys, jax.random.key(0),
                                   init_state=kx.Ensemble(members))
        at = np.arange(1, ys.shape[0] + 1) * factor
        errors.append(np.max(np.abs(np.asarray(history.mean) - np.asarray(reference.mean)[at])))
        taus.append(factor * fine)
    slope = np.polyfit(np.log(taus), np.log(errors), 1)[0]
    assert 0.8 < slope < 1.2, (slope, errors)


def test_enkbf_localisation_tapers_the_gain_and_a_taper_of_ones_changes_nothing():
    from kalmax.models import Lorenz96

    dim = 8
    model = kx.ContinuousModel(Lorenz96(dim), None, jnp.eye(dim), 0.1 * jnp.eye(dim), 8.0 + jnp.arange(dim) / 10,
                               jnp.eye(dim))
    dt = 0.01
    data = kx.simulate_continuous(model, jax.random.key(11), 100, dt)
    plain = kx.EnKBF(6).run(model, data.increments, dt, jax.random.key(12))
    wide = kx.EnKBF(6, localization=kx.Localization(kx.Periodic1D(dim), kx.StepTaper(100.0)))
    np.testing.assert_allclose(wide.run(model, data.increments, dt, jax.random.key(12)).mean, plain.mean, rtol=1e-10)
    narrow = kx.EnKBF(6, localization=kx.Localization(kx.Periodic1D(dim), kx.StepTaper(0.5)))
    np.testing.assert_allclose(narrow.taper(model), np.eye(dim))  # each point sees its own observation only
    assert np.max(np.abs(np.asarray(narrow.run(model, data.increments, dt, jax.random.key(12)).mean - plain.mean))) > 1e-3
    with pytest.raises(ValueError, match="`localization`"):
        kx.EnKBF(6, localization=kx.Localization(kx.Periodic1D(dim + 1), kx.StepTaper(0.5))).run(
            model, data.increments, dt, jax.random.key(0))


def test_a_filter_that_becomes_non_finite_raises_naming_the_grid_step():
    # an unstable drift on a coarse grid: the explicit steps overflow (no NaN is returned silently)
    model = kx.ContinuousModel(50.0 * jnp.eye(1), 0.5 * jnp.eye(1), jnp.eye(1), 0.2 * jnp.eye(1), jnp.zeros(1),
                               jnp.eye(1))
    increments = jnp.zeros((200, 1))
    with pytest.raises(kx.DivergenceError, match=r"KalmanBucy\(\): the filter became non-finite at grid step \d+"):
        kx.KalmanBucy().run(model, increments, 0.1)
    with pytest.raises(kx.DivergenceError, match=r"EnKBF\(4\): the filter became non-finite at grid step"):
        kx.EnKBF(4).run(model, increments, 0.1, jax.random.key(0))
    # under jit the values are not known: the result comes back as it is, for the caller to check
    mean = jax.jit(lambda dz: kx.KalmanBucy().run(model, dz, 0.1).mean)(increments)
    assert not bool(jnp.all(jnp.isfinite(mean)))
