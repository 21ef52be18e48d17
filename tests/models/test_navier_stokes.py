"""NavierStokes2D against an analytic reference, invariants, jit/vmap/grad, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kalmax.models import RK4, Flow, IntegratingFactorRK4, NavierStokes2D, kolmogorov_forcing, trajectory

N = 32


def _grid(n):
    axis = 2 * np.pi * np.arange(n) / n
    return np.meshgrid(axis, axis, indexing="ij")


def test_vector_field_matches_analytic_reference():
    """A trig polynomial with low modes (no dealiasing at play): every derivative by hand."""
    x, y = _grid(N)
    rng = np.random.default_rng(0)
    modes = [(1, 0), (0, 2), (1, 1), (2, -1), (3, 1), (-1, 3)]
    coeffs = rng.standard_normal((len(modes), 2))
    w = np.zeros((N, N))
    wx, wy, lap_w, psi_x, psi_y = (np.zeros((N, N)) for _ in range(5))
    for (kx, ky), (a, b) in zip(modes, coeffs):
        phase = kx * x + ky * y
        c, s = np.cos(phase), np.sin(phase)
        k2 = kx**2 + ky**2
        w += a * c + b * s
        dphase = -a * s + b * c  # d/dphase of (a cos + b sin)
        wx += kx * dphase
        wy += ky * dphase
        lap_w -= k2 * (a * c + b * s)
        psi_x += kx * dphase / k2  # psi = w_mode / |k|^2 mode by mode
        psi_y += ky * dphase / k2
    u, v = psi_y, -psi_x
    nu = 0.03
    forcing = np.asarray(kolmogorov_forcing(N, amplitude=0.7, wavenumber=2))
    expected = -(u * wx + v * wy) + nu * lap_w + forcing

    model = NavierStokes2D(N, viscosity=nu, forcing=forcing)
    state = jnp.asarray(w.reshape(-1))
    np.testing.assert_allclose(model.vector_field(state), expected.reshape(-1), atol=1e-11)
    np.testing.assert_allclose(model.velocity(state), np.stack([u, v]), atol=1e-12)
    np.testing.assert_allclose(model.energy(state), 0.5 * np.mean(u**2 + v**2), rtol=1e-12)
    np.testing.assert_allclose(model.enstrophy(state), 0.5 * np.mean(w**2), rtol=1e-12)
    np.testing.assert_array_equal(model.to_grid(state), w)
    np.testing.assert_array_equal(model.from_grid(model.to_grid(state)), state)
    gx, gy = model.grid_points()
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


def test_velocity_is_divergence_free_and_its_curl_is_the_vorticity():
    model = NavierStokes2D(N)
    state = model.random_initial_condition(jax.random.key(3))
    u, v = np.asarray(model.velocity(state))
    k = np.fft.fftfreq(N, 1.0 / N)
    kx, ky = k[:, None], k[None, :]
    div = np.fft.ifft2(1j * kx * np.fft.fft2(u) + 1j * ky * np.fft.fft2(v)).real
    curl = np.fft.ifft2(1j * kx * np.fft.fft2(v) - 1j * ky * np.fft.fft2(u)).real
    assert np.max(np.abs(div)) < 1e-12
    np.testing.assert_allclose(curl.reshape(-1), state - jnp.mean(state), atol=1e-12)


def test_energy_and_enstrophy_budgets_at_random_states():
    """dE/dt = -2 nu Z + mean(psi f) and dZ/dt = -nu mean|grad w|^2 + mean(w f): advection conserves both."""
    nu = 0.02
    model = NavierStokes2D(N, viscosity=nu)
    state = model.random_initial_condition(jax.random.key(1), alpha=1.0)
    dstate = model.vector_field(state)
    _, dE = jax.jvp(model.energy, (state,), (dstate,))
    _, dZ = jax.jvp(model.enstrophy, (state,), (dstate,))
    w = np.asarray(model.to_grid(state))
    f = np.asarray(model.forcing)
    k = np.fft.fftfreq(N, 1.0 / N)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    psi = np.fft.ifft2(np.fft.fft2(w) / np.where(k2 > 0, k2, np.inf)).real
    w_hat = np.fft.fft2(w)
    grad2 = np.sum(k2 * np.abs(w_hat) ** 2) / N**4  # Parseval: mean |grad w|^2
    expected_dE = -2 * nu * 0.5 * np.mean(w**2) + np.mean(psi * f)
    expected_dZ = -nu * grad2 + np.mean(w * f)
    np.testing.assert_allclose(dE, expected_dE, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dZ, expected_dZ, rtol=1e-10, atol=1e-12)


def test_dealiased_advection_conserves_energy_and_enstrophy_even_for_rough_states():
    """Without the 2/3 rule these rates are O(1e-5) and O(1e-2) for white noise."""
    model = NavierStokes2D(N, viscosity=0.0, forcing=jnp.zeros((N, N)))
    w = jax.random.normal(jax.random.key(7), (N * N,))
    w = w - jnp.mean(w)
    dw = model.vector_field(w)
    assert abs(float(jax.jvp(model.energy, (w,), (dw,))[1])) < 1e-14
    assert abs(float(jax.jvp(model.enstrophy, (w,), (dw,))[1])) < 1e-14


def _run(model, integrator, state, n):
    return jax.jit(lambda m, s: trajectory(Flow(m, integrator), s, n))(model, state)


def test_inviscid_unforced_flow_conserves_energy_and_enstrophy():
    model = NavierStokes2D(N, viscosity=0.0, forcing=jnp.zeros((N, N)))
    w0 = model.random_initial_condition(jax.random.key(0), alpha=1.5)
    ws = _run(model, RK4(0.02, 10), w0, 10)  # t = 2, max CFL ~ 0.2
    energies = jax.vmap(model.energy)(ws)
    enstrophies = jax.vmap(model.enstrophy)(ws)
    assert float(jnp.linalg.norm(ws[-1] - w0) / jnp.linalg.norm(w0)) > 0.3  # the flow did evolve
    assert float(jnp.max(jnp.abs(energies / energies[0] - 1))) < 1e-6
    assert float(jnp.max(jnp.abs(enstrophies / enstrophies[0] - 1))) < 1e-6
    # the integrating factor is the classic RK4 when nu = 0
    w_if = Flow(model, IntegratingFactorRK4(0.02, 10))(w0)
    np.testing.assert_allclose(w_if, ws[1], atol=1e-12)


def test_viscous_unforced_energy_decays_and_single_shell_decays_exactly():
    nu = 0.05
    model = NavierStokes2D(N, viscosity=nu, forcing=jnp.zeros((N, N)))
    w0 = model.random_initial_condition(jax.random.key(2))
    ws = _run(model, IntegratingFactorRK4(0.05, 4), w0, 10)
    energies = np.asarray(jax.vmap(model.energy)(ws))
    assert np.all(np.diff(energies) < 0)
    assert energies[-1] < 0.95 * energies[0]

    # Modes on one shell |k|^2 = 2 form a steady Euler flow: w(t) = w0 exp(-2 nu t).
    x, y = _grid(N)
    shell = (np.sin(x + y) + 0.5 * np.cos(x - y)).reshape(-1)
    t = 2.0
    exact = shell * np.exp(-2 * nu * t)
    out = Flow(model, IntegratingFactorRK4(0.5, 4))(jnp.asarray(shell))
    np.testing.assert_allclose(out, exact, atol=1e-13)  # exact: the linear part is integrated exactly


def test_grid_64_runs_and_stays_smooth():
    model = NavierStokes2D(64)
    w0 = model.random_initial_condition(jax.random.key(0))
    assert w0.shape == (4096,)
    w1 = eqx.filter_jit(Flow(model, IntegratingFactorRK4(0.01, 20)))(w0)
    assert w1.shape == (4096,) and bool(jnp.all(jnp.isfinite(w1)))
    assert 0.5 < float(model.enstrophy(w1) / model.enstrophy(w0)) < 2.0


def test_grad_viscosity_matches_finite_differences():
    base = NavierStokes2D(N, viscosity=0.02)
    w0 = base.random_initial_condition(jax.random.key(4))
    integrator = IntegratingFactorRK4(0.02, 5)

    @jax.jit
    def loss(nu):
        return jnp.sum(Flow(NavierStokes2D(N, viscosity=nu, forcing=base.forcing), integrator)(w0) ** 2)

    grad = jax.jit(jax.grad(loss))(0.02)
    h = 1e-6
    np.testing.assert_allclose(grad, (loss(0.02 + h) - loss(0.02 - h)) / (2 * h), rtol=1e-6)
    assert float(grad) < 0  # more viscosity, less vorticity


def test_vmap_and_float32():
    model = NavierStokes2D(N, viscosity=0.02)
    batch = jax.vmap(model.random_initial_condition)(jax.random.split(jax.random.key(5), 3))
    assert batch.shape == (3, N * N)
    flow = Flow(model, IntegratingFactorRK4(0.02, 5))
    apply = jax.jit(lambda fl, w: fl(w))
    batched = jax.jit(jax.vmap(flow))(batch)
    for j in range(3):
        np.testing.assert_allclose(batched[j], apply(flow, batch[j]), atol=1e-12)

    out32 = apply(flow, batch[0].astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, batched[0], atol=1e-4 * float(jnp.max(jnp.abs(batched[0]))))
    rk4_32 = Flow(model, RK4(0.02, 1))(batch[0].astype(jnp.float32))
    assert rk4_32.dtype == jnp.float32
    w32 = model.random_initial_condition(jax.random.key(0), dtype=jnp.float32)
    assert w32.dtype == jnp.float32
    assert model.energy(w32).dtype == jnp.float32


def test_random_initial_condition():
    model = NavierStokes2D(N)
    keys = jax.random.split(jax.random.key(6), 200)
    ws = jax.vmap(lambda k: model.random_initial_condition(k, alpha=1.0, rms=2.0))(keys)
    np.testing.assert_allclose(jnp.mean(ws, axis=1), 0.0, atol=1e-12)
    assert float(jnp.mean(ws**2)) == pytest.approx(4.0, rel=0.1)
    spectrum = np.abs(np.fft.fft2(np.asarray(ws[0]).reshape(N, N)))
    k = np.abs(np.fft.fftfreq(N, 1.0 / N))
    outside = (3 * k[:, None] >= N) | (3 * k[None, :] >= N)
    assert np.max(spectrum[outside]) < 1e-10  # only dealiased modes
    np.testing.assert_array_equal(ws[0], model.random_initial_condition(keys[0], alpha=1.0, rms=2.0))


def test_bad_input():
    for size in (31, 0, -4):
        with pytest.raises(ValueError, match="`grid_size`"):
            NavierStokes2D(grid_size=size)
    with pytest.raises(TypeError, match="`grid_size`"):
        NavierStokes2D(grid_size=32.0)
    with pytest.raises(ValueError, match="`state`.*\\(1024,\\).*\\(32, 32\\)"):
        NavierStokes2D(N).vector_field(jnp.zeros((N, N)))
    with pytest.raises(ValueError, match="`state`"):
        eqx.filter_jit(Flow(NavierStokes2D(N), RK4(0.01)))(jnp.zeros(N * N + 1))
    with pytest.raises(ValueError, match="`forcing`.*\\(32, 32\\)"):
        NavierStokes2D(N, forcing=jnp.zeros((16, 16)))
    with pytest.raises(ValueError, match="`forcing`.*mean"):
        NavierStokes2D(N, forcing=jnp.ones((N, N)))
    with pytest.raises(ValueError, match="`viscosity`"):
        NavierStokes2D(N, viscosity=-0.1)


def test_fourier_observation_is_an_orthonormal_set_of_the_low_modes():
    """H H^T = I, and H^T H w keeps exactly the modes 0 < |k|_inf <= K of w (checked with the FFT)."""
    n, k_max = 16, 3
    model = NavierStokes2D(n)
    observation = np.asarray(model.fourier_observation(k_max))
    assert observation.shape == ((2 * k_max + 1) ** 2 - 1, n * n)
    np.testing.assert_allclose(observation @ observation.T, np.eye(observation.shape[0]), rtol=0, atol=1e-12)
    field = np.random.default_rng(0).normal(size=(n, n))
    projected = (observation.T @ (observation @ field.ravel())).reshape(n, n)
    wavenumbers = np.fft.fftfreq(n, 1.0 / n)
    kept = (np.maximum(np.abs(wavenumbers)[:, None], np.abs(wavenumbers)[None, :]) <= k_max)
    kept[0, 0] = False
    expected = np.real(np.fft.ifft2(np.where(kept, np.fft.fft2(field), 0.0)))
    np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-12)
    assert model.fourier_observation(1, dtype=jnp.float32).dtype == jnp.float32
    with pytest.raises(ValueError, match="`max_wavenumber`"):
        model.fourier_observation(8)
