"""Reference twin-experiment set-ups, defined exactly as in DAPPER's modules.

- `lorenz63_sakov2012`: `dapper/mods/Lorenz63/sakov2012.py` (Sakov, Oliver &
  Bertino 2012): dt = 0.01, 25 RK4 steps per cycle (observations every 0.25
  time units), H = I_3, R = 2 I_3, X0 = N([1.509, -1.531, 25.46], 2 I_3),
  burn-in 16 time units.
- `lorenz96_sakov2008`: `dapper/mods/Lorenz96/sakov2008.py` (Sakov & Oke
  2008): d = 40, F = 8, dt = 0.05, one RK4 step per cycle, H = I_40, R = I_40,
  X0 = N(e_1, 0.001 I_40), burn-in 20 time units.
- `navier_stokes_law_stuart`: 2-D Navier-Stokes on the torus with partial
  observations of the vorticity on a coarse sub-grid, in the spirit of the
  3DVAR studies of Law & Stuart (2012) and Blömker, Law, Stuart & Zygalakis (2013).

The documented RMSE of DAPPER's methods on the first two are in
../shared/reference/twin-experiments.md and in each preset's `reference`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .covariance import ScalarCovariance
from .ensemble.localization import AbstractGeometry, Periodic1D, Periodic2D
from .observations import IndexObservation
from .ssm import StateSpaceModel
from .models import RK4, Flow, IntegratingFactorRK4, Lorenz63, Lorenz96, NavierStokes2D
from .spectral_covariance import FourierCovariance


class EnsembleSettings(eqx.Module):
    """A preset's published ensemble-filter configuration (DAPPER's EnKF(upd, N, infl, rot)).

    Attributes:
        size: ensemble size N.
        inflation: multiplicative inflation of the analysis anomalies.
        rotate: random mean-preserving rotation.
    """

    size: int = eqx.field(static=True)
    inflation: float = eqx.field(static=True, default=1.0)
    rotate: bool = eqx.field(static=True, default=False)


class LETKFSettings(eqx.Module):
    """A preset's LETKF configuration: ensemble settings, the localisation geometry and
    radius, and whether DAPPER's localisation conventions apply (`Localization.dapper`)."""

    ensemble: EnsembleSettings
    geometry: AbstractGeometry
    radius: float = eqx.field(static=True)
    dapper: bool = eqx.field(static=True, default=False)


class MethodDefaults(eqx.Module):
    """The hyperparameters published with a preset, per method (the command line's defaults).

    Attributes:
        xb: 3DVAR background B = xb * climatology (DAPPER's Var3D(xB)); None when the preset
            uses a Fourier-diagonal background instead.
        fourier_beta: beta of the Fourier-diagonal background (alpha = 2), or None.
        ekf_inflation: EKF inflation per unit time (DAPPER's ExtKF(infl)).
        etkf, enkf, denkf: square-root, perturbed-observation and DEnKF settings.
        enkf_n: EnKF-N ensemble size and rotation (its inflation is adaptive).
        letkf: LETKF settings, or None for a model without a localisation geometry.
    """

    xb: float | None = eqx.field(static=True, default=0.1)
    fourier_beta: float | None = eqx.field(static=True, default=None)
    ekf_inflation: float = eqx.field(static=True, default=1.0)
    etkf: EnsembleSettings = EnsembleSettings(20, 1.02)
    enkf: EnsembleSettings = EnsembleSettings(20, 1.02)
    denkf: EnsembleSettings = EnsembleSettings(20, 1.02)
    enkf_n: EnsembleSettings = EnsembleSettings(20, 1.0, True)
    letkf: LETKFSettings | None = None


class TwinSetup(eqx.Module):
    """A twin-experiment set-up: the model and how long to run and score it.

    Attributes:
        name: the preset's name.
        model: the `StateSpaceModel` that generates the truth and is assimilated.
        n_cycles: default number of assimilation cycles.
        burn_in: cycles left out of time averages (DAPPER's BurnIn / interval).
        interval: model time between observations.
        reference: published RMSE of reference methods (text).
        defaults: the methods' published hyperparameters for this set-up (`MethodDefaults`).
    """

    name: str = eqx.field(static=True)
    model: StateSpaceModel
    n_cycles: int = eqx.field(static=True)
    burn_in: int = eqx.field(static=True)
    interval: float = eqx.field(static=True)
    reference: str = eqx.field(static=True, default="")
    defaults: MethodDefaults = MethodDefaults()


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def lorenz63_sakov2012(n_cycles: int = 1000) -> TwinSetup:
    """Lorenz-63 set-up of Sakov, Oliver & Bertino (2012), as in DAPPER."""

    dtype, dt, steps = _dtype(), 0.01, 25
    model = StateSpaceModel(
        dynamics=Flow(Lorenz63(), RK4(jnp.asarray(dt, dtype), steps)),
        observation=jnp.eye(3, dtype=dtype),
        dynamics_cov=None,
        obs_cov=2.0 * jnp.eye(3, dtype=dtype),
        init_mean=jnp.array([1.509, -1.531, 25.46], dtype),
        init_cov=ScalarCovariance(jnp.asarray(2.0, dtype), 3),
    )
    interval = dt * steps
    return TwinSetup(
        name="lorenz63-sakov2012",
        model=model,
        n_cycles=int(n_cycles),
        burn_in=min(round(16 / interval), int(n_cycles) - 1),
        interval=interval,
        reference="DAPPER: Var3D(xB=0.1) 1.04, ExtKF(infl=180) 0.92, EnKF Sqrt N=10 infl 1.02 rot 0.60, "
        "PertObs N=10 infl 1.04 0.65",
        # DAPPER's documented configurations (../shared/reference); DEnKF is not in its table: the Sqrt setting
        defaults=MethodDefaults(
            xb=0.1, ekf_inflation=180.0, etkf=EnsembleSettings(10, 1.02, True), enkf=EnsembleSettings(10, 1.04),
            denkf=EnsembleSettings(10, 1.02), enkf_n=EnsembleSettings(10, 1.0, True),
        ),
    )


def lorenz96_sakov2008(n_cycles: int = 1000, dim: int = 40) -> TwinSetup:
    """Lorenz-96 set-up of Sakov & Oke (2008), as in DAPPER (any `dim`)."""

    dtype, dt = _dtype(), 0.05
    model = StateSpaceModel(
        dynamics=Flow(Lorenz96(dim, 8.0), RK4(jnp.asarray(dt, dtype), 1)),
        observation=IndexObservation(range(dim), dim),
        dynamics_cov=None,
        obs_cov=ScalarCovariance(jnp.asarray(1.0, dtype), dim),
        init_mean=jnp.zeros(dim, dtype).at[0].set(1.0),
        init_cov=ScalarCovariance(jnp.asarray(0.001, dtype), dim),
    )
    return TwinSetup(
        name="lorenz96-sakov2008",
        model=model,
        n_cycles=int(n_cycles),
        burn_in=min(round(20 / dt), int(n_cycles) - 1),
        interval=dt,
        reference="DAPPER (10,000 cycles): Var3D(xB=0.02) 0.41, ExtKF(infl=10) 0.24, EnKF Sqrt N=24 0.18, "
        "PertObs N=40 0.22, LETKF N=7 0.22",
        defaults=MethodDefaults(
            xb=0.02, ekf_inflation=10.0, etkf=EnsembleSettings(24, 1.013, True), enkf=EnsembleSettings(40, 1.06),
            denkf=EnsembleSettings(40, 1.01), enkf_n=EnsembleSettings(24, 1.0, True),
            # DAPPER's LETKF(N=7, infl=1.04, rot=True, loc_rad=4) with its localisation conventions
            letkf=LETKFSettings(EnsembleSettings(7, 1.04, True), Periodic1D(dim), 4.0, dapper=True),
        ),
    )


def navier_stokes_law_stuart(
    n_cycles: int = 200,
    grid_size: int = 64,
    observe_every: int = 4,
    obs_std: float = 0.05,
    interval: float = 0.2,
    dt: float = 0.02,
) -> TwinSetup:
    """2-D Navier-Stokes with the vorticity observed on every `observe_every`-th
    grid point in each direction (Law & Stuart 2012; Blömker et al. 2013).

    The prior of v_0 is a smooth random field N(0, beta^2 (-Laplacian)^(-2))
    with a point standard deviation of about 3 (`FourierCovariance`); the truth
    is one draw from it and methods start from its mean, the zero field, far
    from the truth, so that synchronisation of the estimate with the truth can
    be seen.
    """

    dtype = _dtype()
    n = int(grid_size)
    steps = max(1, round(interval / dt))
    ns = NavierStokes2D(grid_size=n, viscosity=0.01)
    rows = range(0, n, observe_every)
    indices = [i * n + j for i in rows for j in rows]
    model = StateSpaceModel(
        dynamics=Flow(ns, IntegratingFactorRK4(jnp.asarray(dt, dtype), steps)),
        observation=IndexObservation(indices, n * n),
        dynamics_cov=None,
        obs_cov=ScalarCovariance(jnp.asarray(obs_std**2, dtype), len(indices)),
        init_mean=jnp.zeros(n * n, dtype),
        init_cov=FourierCovariance(n, beta=7.7, alpha=2.0, dtype=dtype),
    )
    return TwinSetup(
        name="navier-stokes-law-stuart",
        model=model,
        n_cycles=int(n_cycles),
        burn_in=min(10, int(n_cycles) - 1),
        interval=steps * dt,
        reference="3DVAR synchronises with the truth from partial observations (Law & Stuart 2012)",
        # a Fourier-diagonal 3DVAR background; the LETKF of examples/navier_stokes_letkf.py
        defaults=MethodDefaults(
            xb=None, fourier_beta=0.5,
            letkf=LETKFSettings(EnsembleSettings(20, 1.05), Periodic2D(n), 4.0),
        ),
    )


PRESETS: dict[str, Callable[..., TwinSetup]] = {
    "lorenz63-sakov2012": lorenz63_sakov2012,
    "lorenz96-sakov2008": lorenz96_sakov2008,
    "navier-stokes-law-stuart": navier_stokes_law_stuart,
}

# The `--model` names of the command line, each with its default preset.
MODELS: dict[str, str] = {
    "lorenz63": "lorenz63-sakov2012",
    "lorenz96": "lorenz96-sakov2008",
    "navier-stokes": "navier-stokes-law-stuart",
}


def get_preset(name: str, **kwargs) -> TwinSetup:
    """A preset by name (or by model name); unknown names list the valid ones."""
    key = MODELS.get(name, name)
    if key not in PRESETS:
        raise ValueError(
            f"unknown preset or model {name!r}; valid presets: {', '.join(PRESETS)}; "
            f"valid models: {', '.join(MODELS)}"
        )
    return PRESETS[key](**kwargs)


def per_cycle_inflation(infl_per_unit_time: float, interval: float) -> float:
    """DAPPER's ExtKF inflation is per unit time (P <- infl^dt F P F^T each model
    step); with no model noise this is infl**interval per observation interval."""
    return float(math.pow(infl_per_unit_time, interval))
