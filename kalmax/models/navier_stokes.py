"""Incompressible 2-D Navier-Stokes on the periodic torus, vorticity form, pseudo-spectral.

The test bed of the 3DVAR studies of Law & Stuart (2012), "Evaluating data
assimilation algorithms", Mon. Wea. Rev. 140, and Blömker, Law, Stuart &
Zygalakis (2013), "Accuracy and stability of the continuous-time 3DVAR filter
for the Navier-Stokes equation", Nonlinearity 26.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _checks
from . import _params
from .integrators import AbstractSemilinearModel


def _wavenumbers(n: int):
    """Integer wavenumbers on the rfft2 grid (n, n//2 + 1) and the 2/3-rule mask.

    Axis 0 is x (all wavenumbers, fftfreq order), axis 1 is y (0..n/2).
    Orszag's 2/3 rule keeps |k_x| < n/3 and |k_y| < n/3: the product of two
    fields with such modes has |k| < 2n/3, whose aliases k - n fall outside
    the kept set, so the projected quadratic term is computed exactly.
    """
    kx = np.fft.fftfreq(n, 1.0 / n)[:, None]
    ky = np.fft.rfftfreq(n, 1.0 / n)[None, :]
    k2 = kx**2 + ky**2
    inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    keep = (3 * np.abs(kx) < n) & (3 * np.abs(ky) < n)
    return kx, ky, k2, inv_k2, keep.astype(np.float64)


def _const(array, dtype):
    return jnp.asarray(np.asarray(array).astype(np.dtype(dtype)))


def kolmogorov_forcing(grid_size: int = 64, amplitude=1.0, wavenumber: int = 4, dtype=None):
    """Kolmogorov vorticity forcing f(x, y) = -amplitude * k * cos(k y) on [0, 2 pi)^2.

    It is the curl of the shear body force amplitude * sin(k y) e_x (Kolmogorov
    flow, as in Kochkov et al. 2021, "Machine learning-accelerated computational
    fluid dynamics", PNAS, without their linear drag), and has zero mean.

    Args:
        grid_size: n, the grid is n x n with x_i = 2 pi i / n (axis 0), y_j = 2 pi j / n (axis 1).
        amplitude: A (a float).
        wavenumber: k (int >= 1).
        dtype: float dtype (default: JAX's default float).

    Returns:
        (grid_size, grid_size) array f[i, j] = f(x_i, y_j).
    """
    n = _params.as_size("grid_size", grid_size, 1)
    k = _params.as_size("wavenumber", wavenumber, 1)
    dtype = jnp.result_type(float) if dtype is None else dtype
    y = 2 * np.pi * np.arange(n) / n
    profile = _const(np.broadcast_to(-k * np.cos(k * y)[None, :], (n, n)), dtype)
    return _params.as_parameter("amplitude", amplitude).astype(profile.dtype) * profile


class NavierStokes2D(AbstractSemilinearModel):
    """2-D incompressible Navier-Stokes in vorticity form on the torus [0, 2 pi)^2.

        dw/dt + u . grad w = nu Lap w + f,     -Lap psi = w,     u = (d psi/dy, -d psi/dx),

    so that w = dv/dx - du/dy and div u = 0. Pseudo-spectral in space (rfft2 on
    an n x n grid, derivatives exact in Fourier space, the advection term
    computed in physical space in the conservative form d(u w)/dx + d(v w)/dy
    with Orszag's 2/3-rule dealiasing of the inputs and output). The truncated
    system is a Galerkin method: with nu = 0 and f = 0 it conserves the energy
    1/2 mean |u|^2 and the enstrophy 1/2 mean w^2 exactly in continuous time.
    The spatial mean of w is not advected (it is fixed by the mean of f, which
    must be zero). Law & Stuart (2012) and Blömker et al. (2013) use this
    equation, with a steady forcing that is the curl of one low Fourier mode;
    the default here is Kolmogorov forcing (`kolmogorov_forcing`), not their
    exact constants.

    State layout (what filters see): the vorticity on the grid, FLATTENED in
    row-major order, shape (n*n,): state[i * n + j] = w(x_i, y_j) with
    x_i = 2 pi i / n and y_j = 2 pi j / n. `to_grid(state)` gives the (n, n)
    field w[i, j] (axis 0 is x, axis 1 is y) and `from_grid(field)` flattens it.

    Time stepping: `IntegratingFactorRK4` treats the viscous term exactly (the
    better choice); plain `RK4` on `vector_field` also works when dt is small
    enough for both the advective CFL and the viscous limit
    dt * nu * max|k|^2 < 2.78. For the defaults at n = 64, dt = 0.01 is safe
    (the advective CFL dt * max|u| / (2 pi / n) stays well below 1).

    Args:
        grid_size: n, even and >= 4 (static: it fixes the state shape (n*n,)).
        viscosity: nu >= 0, a float leaf (differentiable).
        forcing: steady vorticity forcing f, shape (n, n) on the grid (a float
            leaf, zero spatial mean); default `kolmogorov_forcing(n)`.

    Parameters are cast to the state's dtype when evaluated, so float32 states
    stay float32.

    Example:
        >>> model = NavierStokes2D(grid_size=64, viscosity=0.01)
        >>> flow = Flow(model, IntegratingFactorRK4(dt=0.01, n_steps=20))
        >>> w0 = model.random_initial_condition(jax.random.key(0))   # (4096,)
        >>> ws = trajectory(flow, w0, 100)                          # (101, 4096)
    """

    viscosity: Float[Array, ""]
    forcing: Float[Array, "n n"]
    grid_size: int = eqx.field(static=True)

    def __init__(self, grid_size: int = 64, viscosity=0.01, forcing=None):
        n = _params.as_size("grid_size", grid_size, 4)
        if n % 2:
            raise ValueError(f"`grid_size` must be even (for the FFT grid); got {n}")
        self.grid_size = n
        self.viscosity = _params.as_parameter("viscosity", viscosity)
        _params.check_positive("viscosity", self.viscosity, allow_zero=True)
        if forcing is None:
            forcing = kolmogorov_forcing(n, dtype=self.viscosity.dtype)
        self.forcing = _params.as_parameter("forcing", forcing, ((n, n),))
        if _checks.is_concrete(self.forcing):
            values = np.asarray(self.forcing, dtype=np.float64)
            scale = max(float(np.max(np.abs(values))), 1.0)
            if abs(values.mean()) > 1e-5 * scale:
                raise ValueError(
                    f"`forcing` must have zero spatial mean (a vorticity forcing is the curl of a "
                    f"periodic force); got mean {values.mean():.3g}. Subtract its mean."
                )

    # -- layout ------------------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        return self.grid_size**2

    def to_grid(self, state: Float[Array, " n*n"]) -> Float[Array, "n n"]:
        """The (n, n) vorticity field w[i, j] = w(x_i, y_j) of a flattened state."""
        _params.check_state("state", state, (self.state_dim,), self._name)
        return state.reshape(self.grid_size, self.grid_size)

    def from_grid(self, field: Float[Array, "n n"]) -> Float[Array, " n*n"]:
        """Flatten an (n, n) field (row-major) to a state (n*n,)."""
        _params.check_state("field", field, (self.grid_size, self.grid_size), self._name)
        return field.reshape(self.state_dim)

    def grid_points(self, dtype=None) -> tuple[Array, Array]:
        """Coordinates (x, y), each (n, n): x[i, j] = 2 pi i / n, y[i, j] = 2 pi j / n."""
        dtype = self.viscosity.dtype if dtype is None else dtype
        axis = 2 * np.pi * np.arange(self.grid_size) / self.grid_size
        x, y = np.meshgrid(axis, axis, indexing="ij")
        return _const(x, dtype), _const(y, dtype)

    @property
    def _name(self) -> str:
        return f"NavierStokes2D(grid_size={self.grid_size})"

    # -- the semilinear split dz/dt = L z + N(z), z = rfft2(w) ----------------------------

    def to_spectral(self, state: Float[Array, " n*n"]):
        """rfft2 of the vorticity: complex (n, n//2 + 1)."""
        return jnp.fft.rfft2(self.to_grid(state))

    def from_spectral(self, z) -> Float[Array, " n*n"]:
        """Inverse of `to_spectral`: the flattened vorticity (n*n,)."""
        n = self.grid_size
        return jnp.fft.irfft2(z, s=(n, n)).reshape(n * n)

    def spectral_linear(self, z):
        """-nu |k|^2 on the rfft2 grid (real, in z's real dtype)."""
        real = jnp.real(z).dtype
        _, _, k2, _, _ = _wavenumbers(self.grid_size)
        return -self.viscosity.astype(real) * _const(k2, real)

    def spectral_nonlinear(self, z):
        """-P[d(u w)/dx + d(v w)/dy] + f_hat, with P the 2/3-rule projection."""
        n = self.grid_size
        kx, ky, _, inv_k2, keep = _wavenumbers(n)
        real = jnp.real(z).dtype
        ikx, iky = _const(1j * kx, z.dtype), _const(1j * ky, z.dtype)
        keep = _const(keep, z.dtype)
        z = keep * z
        psi = _const(inv_k2, z.dtype) * z
        irfft = functools.partial(jnp.fft.irfft2, s=(n, n))
        u, v, w = irfft(iky * psi), irfft(-ikx * psi), irfft(z)
        advection = ikx * jnp.fft.rfft2(u * w) + iky * jnp.fft.rfft2(v * w)
        forcing = jnp.fft.rfft2(self.forcing.astype(real))
        return forcing - keep * advection

    # -- the model as an ODE in physical space ---------------------------------------------

    def vector_field(self, state: Float[Array, " n*n"]) -> Float[Array, " n*n"]:
        """dw/dt = -u . grad w + nu Lap w + f for one flattened state (n*n,)."""
        z = self.to_spectral(state)
        dz = self.spectral_linear(z).astype(z.dtype) * z + self.spectral_nonlinear(z)
        return self.from_spectral(dz)

    def fourier_observation(self, max_wavenumber: int, dtype=None) -> Float[Array, "p n*n"]:
        """H (p, n*n): the observation of the low Fourier modes 0 < max(|k_x|, |k_y|) <= K of the
        vorticity, as an orthonormal set of real modes (rows sqrt(2/n^2) cos(k . x) and
        sqrt(2/n^2) sin(k . x), one k of each pair +-k), so that H H^T = I and H^T H is the
        orthogonal projection onto those modes: the observation P_K w of Blömker, Law, Stuart &
        Zygalakis (2013) and of Law & Stuart (2012), with p = (2K + 1)^2 - 1.

        Args:
            max_wavenumber: K, 1 <= K < n / 2 (below the Nyquist mode, whose sine vanishes).
            dtype: float dtype (default the viscosity's).
        """
        n = self.grid_size
        k_max = _params.as_size("max_wavenumber", max_wavenumber, 1)
        if 2 * k_max >= n:
            raise ValueError(f"`max_wavenumber` must be below n/2 = {n // 2} for {self._name}; got {k_max}")
        axis = 2 * np.pi * np.arange(n) / n
        x, y = np.meshgrid(axis, axis, indexing="ij")
        rows = []
        for kx in range(0, k_max + 1):
            for ky in range(-k_max, k_max + 1):
                if kx == 0 and ky <= 0:  # one of each pair +-k, and not k = 0
                    continue
                phase = kx * x + ky * y
                rows += [np.cos(phase).ravel(), np.sin(phase).ravel()]
        dtype = self.viscosity.dtype if dtype is None else dtype
        return _const(np.sqrt(2.0 / n**2) * np.stack(rows), dtype)

    # -- diagnostics -----------------------------------------------------------------------

    def stream_function(self, state: Float[Array, " n*n"]) -> Float[Array, "n n"]:
        """psi on the grid (n, n), solving -Lap psi = w with zero mean."""
        z = self.to_spectral(state)
        _, _, _, inv_k2, _ = _wavenumbers(self.grid_size)
        return jnp.fft.irfft2(_const(inv_k2, z.dtype) * z, s=(self.grid_size,) * 2)

    def velocity(self, state: Float[Array, " n*n"]) -> Float[Array, "2 n n"]:
        """The velocity (u, v) = (d psi/dy, -d psi/dx) on the grid, shape (2, n, n).

        Divergence-free, and its curl dv/dx - du/dy is w minus its mean.
        """
        n = self.grid_size
        z = self.to_spectral(state)
        kx, ky, _, inv_k2, _ = _wavenumbers(n)
        psi = _const(inv_k2, z.dtype) * z
        u = jnp.fft.irfft2(_const(1j * ky, z.dtype) * psi, s=(n, n))
        v = jnp.fft.irfft2(_const(-1j * kx, z.dtype) * psi, s=(n, n))
        return jnp.stack([u, v])

    def energy(self, state: Float[Array, " n*n"]) -> Float[Array, ""]:
        """Kinetic energy per unit area, 1/2 mean over the grid of |u|^2."""
        return 0.5 * jnp.mean(jnp.sum(self.velocity(state) ** 2, axis=0))

    def enstrophy(self, state: Float[Array, " n*n"]) -> Float[Array, ""]:
        """Enstrophy per unit area, 1/2 mean over the grid of w^2."""
        return 0.5 * jnp.mean(self.to_grid(state) ** 2)

    def random_initial_condition(
        self, key: PRNGKeyArray, alpha: float = 2.0, rms: float = 1.0, dtype=None
    ) -> Float[Array, " n*n"]:
        """A smooth random vorticity field with zero mean, flattened (n*n,).

        A Gaussian field with covariance proportional to (-Lap)^(-alpha) (the
        prior of Law & Stuart 2012 has this form), restricted to the dealiased
        modes, scaled so that the expected mean of w^2 is rms^2:

            w_hat(k) = c |k|^(-alpha) xi_hat(k),  k != 0 and |k_x|, |k_y| < n/3,

        with xi white noise on the grid. Larger alpha gives a smoother field.

        Args:
            key: a JAX PRNG key.
            alpha: spectral decay (a Python float, > 0).
            rms: expected root-mean-square vorticity (a Python float).
            dtype: float dtype of the result (default: the dtype of `viscosity`).
        """
        n = self.grid_size
        dtype = self.viscosity.dtype if dtype is None else jnp.dtype(dtype)
        kx, ky, k2, _, keep = _wavenumbers(n)
        amplitude = np.where(k2 > 0, np.where(k2 > 0, k2, 1.0) ** (-alpha / 2), 0.0) * keep
        # Expected mean w^2 = sum over the full FFT grid of amplitude^2 / n^2.
        kfull = np.fft.fftfreq(n, 1.0 / n)
        k2_full = kfull[:, None] ** 2 + kfull[None, :] ** 2
        keep_full = (3 * np.abs(kfull)[:, None] < n) & (3 * np.abs(kfull)[None, :] < n)
        amp_full = np.where(k2_full > 0, np.where(k2_full > 0, k2_full, 1.0) ** (-alpha / 2), 0.0) * keep_full
        scale = rms / np.sqrt(np.sum(amp_full**2) / n**2)
        noise = jax.random.normal(key, (n, n), dtype)
        z = jnp.fft.rfft2(noise)
        field = jnp.fft.irfft2(_const(scale * amplitude, z.dtype) * z, s=(n, n))
        return field.reshape(n * n)
