"""Covariances on a periodic 2-D grid that are diagonal in Fourier space.

A stationary (translation-invariant) covariance on the n x n grid of the torus
[0, 2 pi)^2 is a circulant-of-circulants matrix: the 2-D discrete Fourier
transform diagonalises it,

    C x = IDFT( mu * DFT(x) ),

with one real eigenvalue mu_k >= 0 per wavenumber k = (k_x, k_y), even in k
(mu_k = mu_{-k}) so that C is real and symmetric. C, C^{-1}, C^{1/2} and
C^{-1/2} are then O(n^2 log n) FFTs and nothing of size n^2 x n^2 is ever
formed (`matrix()` is only for tests on small grids).

The classic example is the prior / 3DVAR background of Law & Stuart (2012),
"Evaluating data assimilation algorithms", Mon. Wea. Rev. 140, and Blömker,
Law, Stuart & Zygalakis (2013), Nonlinearity 26, for 2-D Navier-Stokes:
C = beta^2 (-Laplacian)^(-alpha) on mean-zero fields (`FourierCovariance`).
`SpectralCovariance` takes any spectrum.

State layout: the field on the grid FLATTENED row-major, as
`kalmax.models.NavierStokes2D` stores its vorticity: state[i * n + j] =
w(x_i, y_j) with x_i = 2 pi i / n (axis 0) and y_j = 2 pi j / n (axis 1).

Singular spectra (for example a zero-mean constraint, mu_0 = 0) are allowed:
`solve`, `inv_sqrt_mv` and `logdet` are then the pseudo-inverse, its square
root and the log pseudo-determinant (sums and inverses over the modes with
mu_k > 0 only), i.e. they act on the subspace the covariance lives on.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _checks
from .covariance import AbstractCovariance


def _wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer wavenumbers (k_x, k_y) on the full (n, n) FFT grid, in `fftfreq` order.

    Axis 0 is x and axis 1 is y, matching `jnp.fft.fft2` of the (n, n) field.
    The rfft2 grid (n, n//2 + 1) is the slice [:, : n//2 + 1] of it (up to the
    sign of the Nyquist wavenumber, which no even spectrum sees).
    """
    k = np.fft.fftfreq(n, 1.0 / n)
    kx, ky = np.meshgrid(k, k, indexing="ij")
    return kx, ky


def _as_grid_size(grid_size) -> int:
    if isinstance(grid_size, (bool, np.bool_)) or not isinstance(grid_size, (int, np.integer)):
        raise TypeError(f"`grid_size` must be a Python int (it fixes the state size n*n); got {type(grid_size).__name__}")
    if grid_size < 2:
        raise ValueError(f"`grid_size` must be >= 2; got {grid_size}")
    return int(grid_size)


class AbstractSpectralCovariance(AbstractCovariance):
    """A covariance on the flattened n x n periodic grid, diagonal in Fourier space.

    Subclasses give `grid_size` and `eigenvalues()` (the (n, n) spectrum mu on
    the full FFT grid); every operator is implemented here with real FFTs:

        mv(x)          = IDFT(mu * DFT(x))
        solve(x)       = IDFT(mu^+ * DFT(x))          (mu^+ = 1/mu where mu > 0, else 0)
        sqrt_mv(x)     = IDFT(mu^(1/2) * DFT(x))      (the symmetric square root)
        inv_sqrt_mv(x) = IDFT((mu^+)^(1/2) * DFT(x))
        diagonal()     = mean_k mu_k                   (constant: C is stationary)
        logdet()       = sum_{mu_k > 0} log mu_k

    `x` is a (n*n,) state or a (n*n, m) matrix of states (columns).
    """


    @abc.abstractmethod
    def eigenvalues(self) -> Float[Array, "n n"]:
        """The eigenvalues mu_k of the grid matrix on the full (n, n) FFT grid
        (`fftfreq` order, axis 0 = k_x, axis 1 = k_y)."""

    @property
    def dim(self) -> int:
        return self.grid_size**2

    def _apply(self, factor_full, x):
        n = self.grid_size
        if x.ndim not in (1, 2) or x.shape[0] != n * n:
            raise ValueError(
                f"{type(self).__name__}(grid_size={n}) acts on states ({n * n},) or matrices "
                f"({n * n}, m); got shape {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"dtype mix: the operand is {x.dtype} but the covariance is {self.dtype}")
        # Columns to a leading batch axis: (m, n, n) fields, row-major within each.
        fields = x.reshape(n, n) if x.ndim == 1 else jnp.moveaxis(x.reshape(n, n, x.shape[1]), -1, 0)
        z = jnp.fft.rfft2(fields)
        factor = factor_full[:, : n // 2 + 1].astype(z.dtype)
        out = jnp.fft.irfft2(factor * z, s=(n, n))
        return out.reshape(n * n) if x.ndim == 1 else jnp.moveaxis(out, 0, -1).reshape(n * n, x.shape[1])

    def _positive(self):
        mu = self.eigenvalues()
        positive = mu > 0
        # Double `where` so that gradients stay finite on the null modes.
        return mu, positive, jnp.where(positive, mu, jnp.ones_like(mu))

    def mv(self, x):
        return self._apply(self.eigenvalues(), x)

    def solve(self, x):
        _, positive, safe = self._positive()
        return self._apply(jnp.where(positive, 1.0 / safe, 0.0), x)

    def sqrt_mv(self, x):
        _, positive, safe = self._positive()
        return self._apply(jnp.where(positive, jnp.sqrt(safe), 0.0), x)

    def inv_sqrt_mv(self, x):
        _, positive, safe = self._positive()
        return self._apply(jnp.where(positive, 1.0 / jnp.sqrt(safe), 0.0), x)

    def diagonal(self):
        return jnp.full((self.dim,), jnp.mean(self.eigenvalues()))

    def logdet(self):
        _, positive, safe = self._positive()
        return jnp.sum(jnp.where(positive, jnp.log(safe), 0.0))

    def matrix(self):
        """The dense (n*n, n*n) matrix (for tests on small grids only)."""
        return self.mv(jnp.eye(self.dim, dtype=self.dtype))

    def rank(self) -> Array:
        """Number of modes with mu_k > 0 (n^2 when the covariance is invertible)."""
        return jnp.sum(self.eigenvalues() > 0)


def _common_dtype(named_values, dtype):
    """Convert scalars to one float dtype: `dtype` if given, else that of the array arguments."""
    arrays = {}
    explicit = []
    for name, value in named_values:
        array = _checks.as_float_array(name, value)
        if array.ndim != 0:
            raise ValueError(f"`{name}` must be a scalar; got shape {tuple(array.shape)}")
        arrays[name] = array
        if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not getattr(value, "weak_type", False):
            explicit.append((name, array))
    if dtype is None:
        if explicit:
            _checks.check_same_dtype(explicit)
            dtype = explicit[0][1].dtype
        else:
            dtype = jnp.result_type(float)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}")
    return {name: array.astype(dtype) for name, array in arrays.items()}


class FourierCovariance(AbstractSpectralCovariance):
    """C = beta^2 (-Laplacian)^(-alpha) on the periodic n x n grid of [0, 2 pi)^2.

    The covariance of the grid values of the Gaussian random field
    N(0, beta^2 (-Lap)^(-alpha)) on the torus (Law & Stuart 2012; Blömker, Law,
    Stuart & Zygalakis 2013, where it is the fixed 3DVAR background for 2-D
    Navier-Stokes), truncated to the wavenumbers the grid resolves. With the
    L^2-orthonormal Fourier basis e_k(x) = exp(i k.x) / (2 pi), the field has
    Fourier coefficients of variance lambda_k = beta^2 |k|^(-2 alpha), so

        Cov(w(x_i), w(x_j)) = (1 / 4 pi^2) sum_k lambda_k cos(k . (x_i - x_j)),

    and the grid matrix has the eigenvalues

        mu_k = (n / 2 pi)^2 beta^2 |k|^(-2 alpha)   (k != 0),   mu_0 = n^2 * mean_variance.

    This scaling makes the point variance independent of the resolution:
    C_ii = (1 / 4 pi^2) sum_{k != 0} beta^2 |k|^(-2 alpha) + mean_variance
    (it converges as n grows for alpha > 1). The zero mode (the spatial mean
    of the field) is not covered by (-Lap)^(-alpha): `mean_variance` is the
    variance of the spatial mean, and its default 0 gives a singular
    covariance of mean-zero fields (as for vorticity on the torus); `solve`,
    `inv_sqrt_mv` and `logdet` are then pseudo-inverse / pseudo-determinant
    forms on the mean-zero subspace. Larger alpha gives smoother fields.

    Args:
        grid_size: n (static int >= 2); the state is the field flattened
            row-major, size n*n (as `kalmax.models.NavierStokes2D`).
        beta: amplitude beta > 0 (a traced float leaf: vmappable, differentiable).
        alpha: spectral decay alpha (a traced float leaf; any real, typically > 1).
        mean_variance: variance of the spatial mean (>= 0; a traced float leaf).
        dtype: float dtype of the parameters (default: that of the array
            arguments, else JAX's default float).

    Example:
        >>> B = FourierCovariance(64, beta=0.5, alpha=2.0)          # 4096-dim, never densified
        >>> flt = kx.ThreeDVar(B)
        >>> sample = B.sqrt_mv(jax.random.normal(key, (64 * 64,)))  # a draw from N(0, B)
    """

    beta: Float[Array, ""]
    alpha: Float[Array, ""]
    mean_variance: Float[Array, ""]
    grid_size: int = eqx.field(static=True)

    def __init__(self, grid_size: int, beta=1.0, alpha=2.0, mean_variance=0.0, *, dtype=None):
        self.grid_size = _as_grid_size(grid_size)
        values = _common_dtype([("beta", beta), ("alpha", alpha), ("mean_variance", mean_variance)], dtype)
        self.beta, self.alpha, self.mean_variance = values["beta"], values["alpha"], values["mean_variance"]
        for name in ("beta", "alpha", "mean_variance"):
            _checks.check_finite(name, getattr(self, name))
        if _checks.is_concrete(self.beta) and not float(self.beta) > 0:
            raise ValueError(f"`beta` must be positive; got {float(self.beta)}")
        if _checks.is_concrete(self.mean_variance) and float(self.mean_variance) < 0:
            raise ValueError(f"`mean_variance` must be non-negative; got {float(self.mean_variance)}")

    @property
    def dtype(self):
        return self.beta.dtype

    def eigenvalues(self):
        n = self.grid_size
        kx, ky = _wavenumbers(n)
        k2 = kx**2 + ky**2
        zero = jnp.asarray(k2 == 0)
        k2 = jnp.asarray(np.where(k2 == 0, 1.0, k2), self.dtype)
        scale = jnp.asarray((n / (2 * math.pi)) ** 2, self.dtype)
        modes = scale * self.beta**2 * k2 ** (-self.alpha)
        return jnp.where(zero, jnp.asarray(n * n, self.dtype) * self.mean_variance, modes)

    def scaled(self, factor):
        factor = jnp.asarray(factor, self.dtype)
        return FourierCovariance(
            self.grid_size, self.beta * jnp.sqrt(factor), self.alpha, self.mean_variance * factor
        )


class SpectralCovariance(AbstractSpectralCovariance):
    """A stationary covariance on the periodic n x n grid given by its spectrum.

        C x = IDFT(mu * DFT(x)),   mu: (n, n) eigenvalues on the full FFT grid

    (`numpy.fft.fftfreq` order, axis 0 = k_x, axis 1 = k_y), even in k
    (mu[k] = mu[-k mod n], so C is real symmetric) and non-negative. mu_0 is
    n^2 times the variance of the spatial mean; the point variance is mean(mu).
    Zero eigenvalues are allowed (pseudo-inverse forms, see the module doc).

    Args:
        eigenvalues: (n, n) spectrum mu (a traced float leaf).

    Example:
        >>> # a squared-exponential-like spectrum with length scale 0.3:
        >>> B = SpectralCovariance.from_spectrum(32, lambda kx, ky: jnp.exp(-0.09 * (kx**2 + ky**2)))
    """

    spectrum: Float[Array, "n n"]
    grid_size: int = eqx.field(static=True)

    def __init__(self, eigenvalues):
        self.spectrum = _checks.as_float_array("eigenvalues", eigenvalues)
        shape = tuple(self.spectrum.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"`eigenvalues` must be an (n, n) array on the FFT grid; got shape {shape}")
        self.grid_size = _as_grid_size(shape[0])
        if _checks.is_concrete(self.spectrum):
            values = np.asarray(self.spectrum, np.float64)
            _checks.check_finite("eigenvalues", values)
            if np.any(values < 0):
                raise ValueError(f"`eigenvalues` must be non-negative; got min {values.min():.3g}")
            mirrored = np.roll(values[::-1, ::-1], 1, axis=(0, 1))  # mu[-k mod n]
            asym = np.max(np.abs(values - mirrored))
            tol = 1e3 * np.finfo(np.dtype(self.spectrum.dtype)).eps * max(np.max(np.abs(values)), 1e-300)
            if asym > tol:
                raise ValueError(
                    f"`eigenvalues` must be even, mu[k] = mu[-k] (else C is not real symmetric); "
                    f"max |mu[k] - mu[-k]| = {asym:.3g}"
                )

    @classmethod
    def from_spectrum(cls, grid_size: int, spectrum, mean_variance=0.0, *, dtype=None) -> SpectralCovariance:
        """The grid covariance of a stationary random field on [0, 2 pi)^2 whose
        Fourier coefficients (in the L^2-orthonormal basis exp(i k.x) / 2 pi) have
        variances spectrum(k_x, k_y), k != 0; the scaling is that of
        `FourierCovariance` (which is the case spectrum = beta^2 |k|^(-2 alpha)):

            mu_k = (n / 2 pi)^2 spectrum(k_x, k_y),   mu_0 = n^2 mean_variance.

        Args:
            grid_size: n.
            spectrum: callable (k_x, k_y) -> variances, applied to (n, n) float
                arrays of integer wavenumbers (never to k = 0); must be even in k.
            mean_variance: variance of the spatial mean (>= 0).
            dtype: float dtype (default JAX's default float).
        """
        n = _as_grid_size(grid_size)
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        kx, ky = _wavenumbers(n)
        zero = (kx == 0) & (ky == 0)
        # Evaluate away from k = 0 (a power law is infinite there), then overwrite.
        values = jnp.asarray(spectrum(jnp.asarray(np.where(zero, 1.0, kx), dtype), jnp.asarray(ky, dtype)))
        values = jnp.broadcast_to(values, (n, n)).astype(dtype)
        mean_variance = _checks.as_float_array("mean_variance", mean_variance).astype(dtype)
        scale = jnp.asarray((n / (2 * math.pi)) ** 2, dtype)
        return cls(jnp.where(jnp.asarray(zero), jnp.asarray(n * n, dtype) * mean_variance, scale * values))

    @property
    def dtype(self):
        return self.spectrum.dtype

    def eigenvalues(self):
        return self.spectrum

    def scaled(self, factor):
        return SpectralCovariance(jnp.asarray(factor, self.dtype) * self.spectrum)
