"""FourierCovariance / SpectralCovariance against dense NumPy references.

The reference matrix is built without any FFT, from the covariance function of
the Gaussian random field N(0, beta^2 (-Lap)^(-alpha)) on [0, 2 pi)^2:
C_ij = (1/4 pi^2) sum_{k != 0} beta^2 |k|^(-2 alpha) cos(k . (x_i - x_j)) + mean_variance,
summed over the wavenumbers the n x n grid resolves.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kalmax as kx
from kalmax.spectral_covariance import FourierCovariance, SpectralCovariance


def grid_wavenumbers(n):
    return np.fft.fftfreq(n, 1.0 / n)


def reference_matrix(n, beta, alpha, mean_variance):
    """Dense covariance of the grid values (state[i * n + j] = w(x_i, y_j)), by explicit sums."""
    axis = 2 * np.pi * np.arange(n) / n
    x, y = np.meshgrid(axis, axis, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    dxs, dys = x[:, None] - x[None, :], y[:, None] - y[None, :]
    cov = np.full((n * n, n * n), float(mean_variance))
    for kx_ in grid_wavenumbers(n):
        for ky_ in grid_wavenumbers(n):
            if kx_ == 0 and ky_ == 0:
                continue
            lam = beta**2 * (kx_**2 + ky_**2) ** (-alpha)
            cov += lam * np.cos(kx_ * dxs + ky_ * dys) / (4 * np.pi**2)
    return cov


CASES = [
    dict(n=8, beta=1.3, alpha=2.0, mean_variance=0.0),
    dict(n=8, beta=0.7, alpha=1.5, mean_variance=0.25),
    dict(n=5, beta=1.0, alpha=2.5, mean_variance=0.1),  # odd grid: no Nyquist mode
    dict(n=6, beta=2.0, alpha=0.0, mean_variance=0.0),  # white noise on mean-zero fields
]
IDS = [f"n{c['n']}-a{c['alpha']}-m{c['mean_variance']}" for c in CASES]


def make(case, dtype=None):
    return FourierCovariance(case["n"], case["beta"], case["alpha"], case["mean_variance"], dtype=dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matrix_equals_covariance_function_reference(case):
    cov = make(case)
    dense = np.asarray(cov.matrix())
    expected = reference_matrix(case["n"], case["beta"], case["alpha"], case["mean_variance"])
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(dense, expected, atol=1e-12 * scale)
    np.testing.assert_allclose(dense, dense.T, atol=1e-14 * scale)
    # PSD with exactly the spectrum as eigenvalues (the zero mode included).
    eig = np.linalg.eigvalsh(0.5 * (dense + dense.T))
    np.testing.assert_allclose(eig, np.sort(np.asarray(cov.eigenvalues()).reshape(-1)), atol=1e-12 * scale)
    assert eig.min() >= -1e-12 * scale
    np.testing.assert_allclose(cov.diagonal(), np.diag(expected), rtol=1e-12)
    assert cov.dim == case["n"] ** 2 and cov.dtype == jnp.float64


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_operators_agree_with_the_dense_matrix(case):
    cov = make(case)
    dense = np.asarray(cov.matrix())
    d = cov.dim
    rng = np.random.default_rng(0)
    vec, mat = rng.normal(size=d), rng.normal(size=(d, 3))
    scale = np.max(np.abs(dense))
    # The pseudo-inverse and the symmetric square roots from an eigendecomposition.
    eig, vecs = np.linalg.eigh(dense)
    keep = eig > 1e-9 * scale
    pinv = (vecs[:, keep] / eig[keep]) @ vecs[:, keep].T
    sqrt = (vecs[:, keep] * np.sqrt(eig[keep])) @ vecs[:, keep].T
    inv_sqrt = (vecs[:, keep] / np.sqrt(eig[keep])) @ vecs[:, keep].T
    for x in (vec, mat):
        xj = jnp.asarray(x)
        assert cov.mv(xj).shape == x.shape
        np.testing.assert_allclose(cov.mv(xj), dense @ x, atol=1e-12 * scale * np.abs(x).max())
        for op, ref in [(cov.solve, pinv), (cov.sqrt_mv, sqrt), (cov.inv_sqrt_mv, inv_sqrt)]:
            expected = ref @ x
            np.testing.assert_allclose(op(xj), expected, atol=1e-10 * np.abs(expected).max())
    # The defining identities: L L^T = C, |L^{-1} x|^2 = x^T C^+ x, L^{-1} L = projection.
    root = np.asarray(cov.sqrt_mv(jnp.eye(d)))
    np.testing.assert_allclose(root @ root.T, dense, atol=1e-12 * scale)
    np.testing.assert_allclose(
        np.sum(np.asarray(cov.inv_sqrt_mv(jnp.asarray(vec))) ** 2), vec @ pinv @ vec, rtol=1e-10
    )
    np.testing.assert_allclose(cov.logdet(), np.sum(np.log(eig[keep])), rtol=1e-11)
    assert int(cov.rank()) == int(keep.sum())
    if case["mean_variance"] > 0:
        np.testing.assert_allclose(cov.logdet(), np.linalg.slogdet(dense)[1], rtol=1e-11)
        np.testing.assert_allclose(cov.solve(jnp.asarray(mat)), np.linalg.solve(dense, mat), rtol=1e-9, atol=1e-10)
    else:
        # Mean-zero fields: the spatial mean of every output is zero.
        np.testing.assert_allclose(np.asarray(cov.mv(jnp.asarray(mat))).mean(axis=0), 0.0, atol=1e-13 * scale)


def test_scaled_and_spectral_constructors_agree():
    case = CASES[1]
    cov = make(case)
    np.testing.assert_allclose(cov.scaled(3.0).matrix(), 3.0 * cov.matrix(), rtol=1e-12, atol=1e-15)
    beta, alpha, mv = case["beta"], case["alpha"], case["mean_variance"]
    general = SpectralCovariance.from_spectrum(
        case["n"], lambda kx_, ky_: beta**2 * (kx_**2 + ky_**2) ** (-alpha), mean_variance=mv
    )
    np.testing.assert_allclose(general.matrix(), cov.matrix(), rtol=1e-12, atol=1e-15)
    direct = SpectralCovariance(cov.eigenvalues())
    x = jnp.asarray(np.random.default_rng(1).normal(size=(cov.dim, 2)))
    for name in ("mv", "solve", "sqrt_mv", "inv_sqrt_mv"):
        np.testing.assert_allclose(getattr(direct, name)(x), getattr(cov, name)(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(direct.logdet(), cov.logdet(), rtol=1e-12)
    np.testing.assert_allclose(direct.scaled(2.0).matrix(), 2.0 * cov.matrix(), rtol=1e-12, atol=1e-15)
    # A Gaussian (squared-exponential-like) spectrum is a valid, non-power-law example.
    gauss = SpectralCovariance.from_spectrum(8, lambda kx_, ky_: jnp.exp(-0.2 * (kx_**2 + ky_**2)), mean_variance=1.0)
    dense = np.asarray(gauss.matrix())
    np.testing.assert_allclose(dense, dense.T, atol=1e-14)
    assert np.linalg.eigvalsh(dense).min() > 0


def test_samples_have_the_covariance():
    """Monte Carlo: with N draws, each entry of the sample covariance (known zero mean)
    has standard deviation sqrt((C_ii C_jj + C_ij^2) / N) <= sqrt(2 / N) max_i C_ii; a
    6-sigma bound over the 4096 entries fails with probability ~1e-5 (fixed seed)."""
    cov = FourierCovariance(8, beta=1.0, alpha=1.5, mean_variance=0.05)
    n_samples = 20_000
    draws = jax.jit(lambda c, key: c.sqrt_mv(jax.random.normal(key, (c.dim, n_samples), jnp.float64)))(
        cov, jax.random.key(0)
    )
    empirical = np.asarray(draws @ draws.T) / n_samples
    dense = np.asarray(cov.matrix())
    tol = 6 * math.sqrt(2 / n_samples) * np.max(np.diag(dense))
    assert np.max(np.abs(empirical - dense)) < tol
    # The spatial mean has variance `mean_variance`; without it, samples have zero mean.
    np.testing.assert_allclose(np.var(np.asarray(draws).mean(axis=0)), 0.05, rtol=6 * math.sqrt(2 / n_samples))
    zero_mean = FourierCovariance(8, beta=1.0, alpha=1.5)
    draws = zero_mean.sqrt_mv(jax.random.normal(jax.random.key(1), (64, 100), jnp.float64))
    np.testing.assert_allclose(np.asarray(draws).mean(axis=0), 0.0, atol=1e-14)


def test_jit_vmap_grad_over_parameters():
    x = jnp.asarray(np.random.default_rng(2).normal(size=64))

    def quad(beta, alpha):
        cov = FourierCovariance(8, beta, alpha, 0.1)
        return x @ cov.mv(x) + x @ cov.solve(x) + cov.logdet()

    value = quad(1.2, 1.7)
    np.testing.assert_allclose(jax.jit(quad)(1.2, 1.7), value, rtol=1e-13)
    quad_jit = jax.jit(quad)
    betas = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(jax.vmap(quad, in_axes=(0, None))(betas, 1.7), [quad(b, 1.7) for b in betas], rtol=1e-13)
    grads = jax.jit(jax.grad(quad, argnums=(0, 1)))(1.2, 1.7)
    eps = 1e-6
    fd_beta = (quad_jit(1.2 + eps, 1.7) - quad_jit(1.2 - eps, 1.7)) / (2 * eps)
    fd_alpha = (quad_jit(1.2, 1.7 + eps) - quad_jit(1.2, 1.7 - eps)) / (2 * eps)
    np.testing.assert_allclose(grads, [fd_beta, fd_alpha], rtol=1e-7)
    # The operator is a pytree with traced leaves: it can be passed through jit itself.
    cov = FourierCovariance(8, 1.2, 1.7, 0.1)
    np.testing.assert_allclose(eqx_filter_jit_mv(cov, x), cov.mv(x), rtol=1e-13)


def eqx_filter_jit_mv(cov, x):
    return jax.jit(lambda c, v: c.mv(v))(cov, x)


def test_float32():
    case = CASES[1]
    cov32, cov64 = make(case, dtype=jnp.float32), make(case)
    assert cov32.dtype == jnp.float32 and cov32.eigenvalues().dtype == jnp.float32
    x = np.random.default_rng(3).normal(size=(64, 2))
    for name in ("mv", "solve", "sqrt_mv", "inv_sqrt_mv"):
        out32 = getattr(cov32, name)(jnp.asarray(x, jnp.float32))
        out64 = getattr(cov64, name)(jnp.asarray(x))
        assert out32.dtype == jnp.float32
        # condition number ~1e3 times float32 eps ~1e-7
        np.testing.assert_allclose(out32, out64, atol=1e-4 * np.abs(out64).max())
    # float32 array parameters fix the dtype without the `dtype` argument.
    assert FourierCovariance(8, jnp.float32(1.0), 2.0).dtype == jnp.float32
    assert cov64.scaled(2.0).dtype == jnp.float64


def test_usable_as_a_model_covariance():
    """The operator plugs into a StateSpaceModel (e.g. as the prior C_0) without densifying."""
    cov = FourierCovariance(4, beta=1.0, alpha=2.0, mean_variance=1.0)
    model = kx.StateSpaceModel(
        dynamics=lambda v: 0.9 * v, observation=kx.IndexObservation.every(2, 16),
        dynamics_cov=cov, obs_cov=np.eye(8), init_mean=np.zeros(16), init_cov=cov,
    )
    assert model.init_cov is cov


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(grid_size=8.0), TypeError, r"`grid_size` must be a Python int"),
        (dict(grid_size=1), ValueError, r"`grid_size` must be >= 2; got 1"),
        (dict(grid_size=8, beta=0.0), ValueError, r"`beta` must be positive; got 0.0"),
        (dict(grid_size=8, beta=np.nan), ValueError, r"`beta` has non-finite entries"),
        (dict(grid_size=8, mean_variance=-1.0), ValueError, r"`mean_variance` must be non-negative"),
        (dict(grid_size=8, alpha=np.ones(2)), ValueError, r"`alpha` must be a scalar; got shape \(2,\)"),
        (dict(grid_size=8, beta=np.float32(1.0), alpha=np.float64(2.0)), TypeError, r"dtype mix: `alpha` is float64 but `beta` is float32"),
        (dict(grid_size=8, alpha=1), TypeError, r"`alpha` must have a floating dtype"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        FourierCovariance(**kwargs)


def test_bad_spectra_and_operands():
    mu = np.ones((4, 4))
    with pytest.raises(ValueError, match=r"`eigenvalues` must be an \(n, n\) array on the FFT grid; got shape \(4, 3\)"):
        SpectralCovariance(mu[:, :3])
    with pytest.raises(ValueError, match=r"`eigenvalues` must be non-negative"):
        SpectralCovariance(-mu)
    odd = mu.copy()
    odd[1, 0] = 2.0  # mu[(1, 0)] != mu[(-1, 0)] = mu[3, 0]
    with pytest.raises(ValueError, match=r"`eigenvalues` must be even"):
        SpectralCovariance(odd)
    cov = FourierCovariance(4)
    with pytest.raises(ValueError, match=r"acts on states \(16,\) or matrices \(16, m\); got shape \(15,\)"):
        cov.mv(jnp.zeros(15))
    with pytest.raises(TypeError, match=r"dtype mix: the operand is float32 but the covariance is float64"):
        cov.mv(jnp.zeros(16, jnp.float32))
