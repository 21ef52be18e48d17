"""The iterative ensemble Kalman smoother (iEnKS; Bocquet & Sakov 2014) and its special
cases: the iEnKF (lag 1; Sakov, Oliver & Bertino 2012), EnRML (perturbed observations;
Chen & Oliver 2012) and the multiple-data-assimilation form (MDA; Emerick & Reynolds 2013).

A data-assimilation window (DAW) of L = `lag` cycles runs from the state v_s at its
start (s = max(0, n + 1 - L)) to the newest observation time, v_{n+1}. The window is
analysed every S = `shift` cycles (1 <= S <= L) and assimilates the S observations that
entered it since the last analysis, y_{n+2-S}..y_{n+1} (the single-assimilation iEnKS of
Bocquet & Sakov 2014, sec. 2; S = 1 is DAPPER's `iEnKS`, which fixes the shift at 1). With
the ensemble E_s = x_0 + X_0 at the start (X_0: anomalies, J rows), the state is searched
as x_0 + w X_0 for weights w (J,), and the cost

    J(w) = (J - 1)/2 |w|^2 + 1/2 sum_{k=n+2-S}^{n+1} |y_k - h(M_{s->k}(x_0 + w X_0))|^2_Gamma

is minimised by Gauss-Newton in ensemble space: the S observations are stacked into one
observation vector of S p entries (below, Y and dy are the stacked, whitened ones). Each
iteration propagates the ensemble x_0 + (w + eps T) X_0 through the window, whitens its
observed anomalies Y and innovation dy (Gamma^{-1/2}), "de-conditions" them,
Y_0 = T^{-1} Y (the sensitivities of h o M at the current w), and steps

    grad = Y_0 dy - (J - 1) w,   C_w = (Y_0 Y_0^T + (J - 1) I)^{-1},   w <- w + grad C_w,

until |dw|^2 < wtol J or `n_iter` iterations. The anomaly transform is, by `update`:
`SquareRoot()` T = sqrt(J - 1) C_w^{1/2} (Bocquet & Sakov); `PerturbedObservations()`
(EnRML) T <- T + (-(Y + D) Y_0^T + (J - 1)(I - T)) C_w with centred perturbations D
drawn once per window; `DEnKF()` its first-order (half-gain) form. With `mda=True` the
iterations anneal instead (observation error inflated by `n_iter`, no de-conditioning):
ES-MDA for `PerturbedObservations()`. `bundle=True` propagates eps = 1e-4 times the
anomalies (finite-difference sensitivities, close to the iterative extended Kalman
smoother); otherwise eps = 1 (ensemble regression, the "transform" variant).

The finite-size variant (`xN`, the iEnKS-N of Bocquet & Sakov 2012, 2014) replaces the
prior weight J - 1 of |w|^2 (in the gradient and in C_w) by the EnKF-N's
zeta = (J - 1) c_L / (e_N + |w|^2), recomputed at every iteration from the current w
and the hyper-prior coefficients (e_N, c_L) of `kx.EnKFN` (mode correction from the
singular values of Y_0, confidence xN; DAPPER's `hyperprior_coeffs` and `zeta_a`): the
primal EnKF-N, an adaptive inflation sqrt((J - 1) / zeta) of the prior.

After the iterations the smoothed start ensemble x_0 + (w + T) X_0 is inflated and
rotated (DAPPER's `post_process`), its mean is the smoothed estimate of v_s given
y_1..y_{n+1}, and the window slides by S cycles (the start propagated to v_{s+S}) once it
is full; the states v_s..v_{s+S-1} leave it with their final estimates. The filtered
analysis of v_{n+1} is the last forecast plus the linearised final increment
(dw + T - T_old) X_f (DAPPER's convention: without re-running the model, and equal to the
EnKF's analysis when n_iter = 1). Between analyses (S > 1) the filtered estimate of v_{n+1}
is the window's forecast from its start, and the observation is kept for the next
analysis. The model must be perfect (no model noise), as in DAPPER.

The same module runs as a filter (`kx.assimilate`, `kx.twin_experiment`, `kx.sweep`:
its history holds the filtered analyses) and as a smoother (`kx.smooth`: the smoothed
means of v_0..v_T at lag L, and the filtered ones). For every shift, `info.lagged_mean[n]`
is the final estimate of v_{n+1-L} (for S > 1 kept from the analysis at which it left the
window, within the last S cycles).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .. import _checks
from ..assimilate import assimilate
from ..ensemble.algebra import ensemble_space, whitener
from ..ensemble.inflation import AbstractInflation, as_inflation
from ..filters.enkf import AbstractEnsembleAnalysis, DEnKF, PerturbedObservations, SquareRoot
from ..filters.enkf_n import hyperprior_coefficients
from ..filters.ensemble_base import (
    AbstractEnsembleFilter,
    ensemble_status,
    forecast_members,
    initial_members,
    member_model,
)
from ..gaussian import Ensemble
from ..history import Save
from ..linalg import mean_preserving_rotation, sym_matrix_function
from ..results import RESULTS
from ..ssm import n_times
from .base import AbstractSmoother
from .ensemble import EnsembleSmootherResult, ensemble_spread, given_ensemble
from .window import slide, through_window, window_trajectory

BUNDLE_EPS = 1e-4  # DAPPER's and Bocquet & Sakov's bundle scaling


class WindowState(eqx.Module):
    """The iEnKS state between cycles.

    Attributes:
        start: (J, d) the ensemble at the start of the next window, v_s.
        members: (J, d) the filtered analysis ensemble of the newest state (what
            `assimilate` saves and the twin experiment scores); after `forecast`, the
            forecast ensemble of the new observation time.
        cycle: the number of cycles done (int32), which sets the window's length while
            it grows from v_0.
        pending: (S, p) the observations of the window not yet assimilated, NaN where
            none yet (None for shift 1).
        recent: (S, J, d) the forecast ensembles of the window's last S times (after
            `forecast`; None for shift 1).
        finished: (S, J, d) the final smoothed ensembles of the states that left the window
            at the last analysis, v_s..v_{s+S-1} (inflated and rotated as the start; for
            shift 1 the window's smoothed start v_s).
    """

    start: Float[Array, "J d"]
    members: Float[Array, "J d"]
    cycle: Int[Array, ""]
    pending: Float[Array, "S p"] | None = None
    recent: Float[Array, "S J d"] | None = None
    finished: Float[Array, "S J d"] | None = None

    @property
    def mean(self) -> Float[Array, " d"]:
        return self.members.mean(axis=0)

    @property
    def size(self) -> int:
        return self.members.shape[0]


class IEnKSInfo(eqx.Module):
    """Per-cycle diagnostics of the iEnKS.

    Attributes:
        log_likelihood, n_observed, spread, status, nis: as `kx.EnsembleInfo` (the
            log-likelihood and NIS of the first-iteration forecast ensemble).
        n_iterations: Gauss-Newton iterations done (int32; 0 in a cycle without an
            analysis, when shift > 1).
        increment: |dw|^2 / J of the last iteration (convergence when below `wtol`).
        lagged_mean: (d,) the final smoothed mean of v_{n+1-L} (for shift 1 the window's
            start, given y up to y_{n+1}; rows n < L - 1 are not finished estimates).
        lagged_spread: its spread.
        prior_inflation: sqrt((J - 1) / zeta) of the last iteration, the finite-size
            variant's adaptive inflation (1 without `xN`; DAPPER's `stats.infl`).
    """

    log_likelihood: Float[Array, ""]
    n_observed: Array
    spread: Float[Array, ""]
    status: Array
    nis: Float[Array, ""]
    n_iterations: Int[Array, ""]
    increment: Float[Array, ""]
    lagged_mean: Float[Array, " d"]
    lagged_spread: Float[Array, ""]
    prior_inflation: Float[Array, ""]


def _power_plus(eigvals, ridge, exponent):
    """(l + ridge)^(-exponent), with l clipped at 0 (eigenvalues of Y0 Y0^T)."""
    return (jnp.maximum(eigvals, 0.0) + ridge) ** (-exponent)


def _power_plus_divided(eigvals, ridge, exponent):
    """((l + ridge)^(-e) - ridge^(-e)) / l, the divided difference at 0 (its limit -e ridge^(-e-1) at l = 0)."""
    eigvals = jnp.maximum(eigvals, 0.0)
    small = eigvals <= 1e-12 * ridge
    safe = jnp.where(small, 1.0, eigvals)
    divided = ((safe + ridge) ** (-exponent) - ridge ** (-exponent)) / safe
    return jnp.where(small, -exponent * ridge ** (-exponent - 1.0), divided)


def _cov_power(y0, ridge, exponent: float):
    """(Y0 Y0^T + ridge I)^(-exponent) (J x J) for Y0 (J, p): from the J x J eigendecomposition,
    or, with fewer observations than members, from the p x p one as
    ridge^(-e) I + Y0 g(Y0^T Y0) Y0^T with the divided difference g (cost O(J^2 p + p^3))."""
    size, n_obs = y0.shape
    if n_obs >= size:
        return sym_matrix_function(_power_plus, y0 @ y0.T, ridge, exponent)
    inner = sym_matrix_function(_power_plus_divided, y0.T @ y0, ridge, exponent)
    return ridge ** (-exponent) * jnp.eye(size, dtype=y0.dtype) + y0 @ inner @ y0.T


def _rank_pinv(matrix, rank: int):
    """The pseudo-inverse of `matrix` from its `rank` largest singular values (DAPPER's
    `tinv(T, threshold=N1)`)."""
    left, values, right = jnp.linalg.svd(matrix)
    keep = jnp.arange(values.shape[0]) < rank
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
    return (right.T * inverse[None, :]) @ left.T


def _center(members):
    """Anomalies and mean of ensembles (..., J, d) (members on axis -2)."""
    mean = members.mean(axis=-2)
    return members - mean[..., None, :], mean


def _cycle_info(model, forecast, y, estimate, lagged, *, n_iterations, increment, prior_inflation,
                finite_smoothed=True) -> IEnKSInfo:
    """A cycle's `IEnKSInfo`: the log-likelihood and NIS of the `forecast` ensemble (J, d) given
    y (p,), the spread and status of the filtered `estimate` (NON_FINITE also when the smoothed
    ensemble is not finite), the mean and spread of the `lagged` (finished) ensemble."""
    first = ensemble_space(Ensemble(forecast), jax.vmap(model.observe)(forecast), y, model.obs_cov)
    spread = ensemble_spread(estimate)
    status = jnp.where(finite_smoothed, ensemble_status(estimate, spread), RESULTS.NON_FINITE).astype(jnp.int32)
    return IEnKSInfo(
        log_likelihood=first.log_likelihood, n_observed=jnp.sum(jnp.isfinite(y)).astype(jnp.int32), spread=spread,
        status=status, nis=first.nis, n_iterations=n_iterations, increment=increment,
        lagged_mean=lagged.mean(axis=0), lagged_spread=ensemble_spread(lagged), prior_inflation=prior_inflation,
    )


class IEnKS(AbstractEnsembleFilter, AbstractSmoother):
    """Iterative ensemble Kalman smoother (Bocquet & Sakov 2014; module docstring).

    Attributes:
        ensemble_size: J >= 2 (static).
        lag: L >= 1, the window length in cycles (static); `lag=1` is the iEnKF.
        update: `SquareRoot()` (default, the iEnKS/iEnKF), `PerturbedObservations()`
            (EnRML) or `DEnKF()` (first order).
        n_iter: the most Gauss-Newton iterations per window (static, >= 1).
        wtol: stop when |dw|^2 < wtol J (0: always `n_iter`; DAPPER recommends 1e-5).
        stops_early: whether the iterations test `wtol` (static, set at construction: False
            when `wtol` is a known 0, whose runs then skip the test's branch; construct anew,
            not `eqx.tree_at`, to change `wtol` from 0).
        mda: anneal instead (multiple data assimilation, observation error x n_iter).
        bundle: finite-difference sensitivities (eps = 1e-4) instead of the ensemble
            regression (eps = 1).
        xN: None, or the finite-size variant's confidence in its inflation hyper-prior
            (> 0, as `kx.EnKFN`; DAPPER's `xN`).
        inflation: applied to the smoothed start ensemble after each window (a number
            is DAPPER's multiplicative `infl`).
        rotate: a random mean-preserving rotation of it (DAPPER's `rot`).
        shift: S, 1 <= S <= lag, the cycles between analyses and the window's slide
            (static); each analysis assimilates the S newest observations.

    Example:
        >>> ienks = kx.IEnKS(10, lag=2, inflation=1.02, rotate=True)
        >>> final, history = kx.assimilate(model, ienks, ys, key)   # filtered analyses
        >>> smoothed = kx.smooth(model, ienks, ys, key)              # and smoothed ones
    """

    ensemble_size: int = eqx.field(static=True)
    lag: int = eqx.field(static=True)
    update: AbstractEnsembleAnalysis
    n_iter: int = eqx.field(static=True)
    wtol: Float[Array, ""]
    stops_early: bool = eqx.field(static=True)
    mda: bool = eqx.field(static=True)
    bundle: bool = eqx.field(static=True)
    xN: Float[Array, ""] | None
    inflation: AbstractInflation
    rotate: bool = eqx.field(static=True)
    shift: int = eqx.field(static=True)

    stochastic: ClassVar[bool] = True

    def __init__(self, ensemble_size: int, lag: int = 1, update: AbstractEnsembleAnalysis | None = None,
                 n_iter: int = 10, wtol=0.0, mda: bool = False, bundle: bool = False, xN=None, inflation=None,
                 rotate: bool = False, shift: int = 1):
        if isinstance(ensemble_size, bool) or int(ensemble_size) != ensemble_size or int(ensemble_size) < 2:
            raise ValueError(f"`ensemble_size` must be an integer >= 2; got {ensemble_size}")
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
            raise ValueError(f"`lag` must be an integer >= 1 (the window length in cycles); got {lag!r}")
        if isinstance(shift, bool) or not isinstance(shift, int) or not 1 <= shift <= lag:
            raise ValueError(f"`shift` must be an integer with 1 <= shift <= lag = {lag} (the cycles the window "
                             f"slides between analyses); got {shift!r}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"`n_iter` must be an integer >= 1 (Gauss-Newton iterations per window); got {n_iter!r}")
        update = SquareRoot() if update is None else update
        if not isinstance(update, (SquareRoot, PerturbedObservations, DEnKF)):
            raise TypeError(f"`update` must be SquareRoot(), PerturbedObservations() or DEnKF(); got {type(update).__name__}")
        wtol = _checks.as_float_array("wtol", wtol)
        if wtol.ndim != 0 or (_checks.is_concrete(wtol) and not float(wtol) >= 0.0):
            raise ValueError(f"`wtol` must be a number >= 0; got {wtol}")
        if xN is not None:
            xN = _checks.as_float_array("xN", xN)
            if xN.ndim != 0:
                raise ValueError(f"`xN` must be a scalar; got shape {tuple(xN.shape)}")
            if _checks.is_concrete(xN) and not (bool(jnp.isfinite(xN)) and float(xN) > 0):
                raise ValueError(f"`xN` must be a finite number > 0 (the hyper-prior's confidence) or None; got "
                                 f"{float(xN)}")
        self.xN = xN
        self.ensemble_size = int(ensemble_size)
        self.lag = lag
        self.update = update
        self.n_iter = n_iter
        self.wtol = wtol
        self.stops_early = not (_checks.is_concrete(wtol) and float(wtol) == 0.0)
        self.mda = bool(mda)
        self.bundle = bool(bundle)
        self.inflation = as_inflation(inflation)
        self.rotate = bool(rotate)
        self.shift = shift

    # -- checks ----------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """A perfect model (no `dynamics_cov`) whose fields do not change with time."""
        if n_times(model) is not None:
            raise ValueError("IEnKS: `model` has `TimeVarying` fields; a window spans several cycles and needs a "
                             "time-invariant model")
        model = member_model(model, "IEnKS")
        if not model.dynamics_cov.is_zero():
            raise ValueError("IEnKS assumes a perfect model: `model.dynamics_cov` must be zero (kx.ZeroCovariance); "
                             "for model error use an EnKF or EnKS")
        self.inflation.check_size(model.state_dim)

    # -- the window ------------------------------------------------------------------------

    def _propagate(self, model, members, cycle):
        """(S, J, d): the ensemble from the window's start through its cycles, at the
        window's last S times (the last row is the newest state)."""
        def move(x):
            return forecast_members(model, x, None)

        if self.shift == 1:
            return through_window(move, members, cycle, self.lag)[None]
        return window_trajectory(move, members, cycle, self.lag, self.shift, self.shift)

    def _eps(self, dtype):
        return jnp.asarray(BUNDLE_EPS if self.bundle else 1.0, dtype)

    # -- the filter contract ---------------------------------------------------------------

    def start_state(self, model, members) -> WindowState:
        """The state before the first cycle, from the initial ensemble (J, d)."""
        if self.shift == 1:
            return WindowState(members, members, jnp.zeros((), jnp.int32), finished=members[None])
        size, dtype = self.shift, members.dtype
        n_obs = jax.eval_shape(model.observe, members[0]).shape[0]
        copies = jnp.broadcast_to(members, (size, *members.shape))
        return WindowState(members, members, jnp.zeros((), jnp.int32),
                           pending=jnp.full((size, n_obs), jnp.nan, dtype), recent=copies, finished=copies)

    def init(self, model, key) -> WindowState:
        model = member_model(model, "IEnKS.init")
        return self.start_state(model, initial_members(model, self.ensemble_size, key))

    def forecast(self, model, state: WindowState, key=None) -> WindowState:
        """The first iteration's forecast: the start ensemble (w = 0, T = I) through the window."""
        model = member_model(model, "IEnKS.forecast")
        anomalies, mean = _center(state.start)
        eps = self._eps(state.start.dtype)
        forecast = self._propagate(model, mean + eps * anomalies, state.cycle)
        if self.bundle:
            forecast_anomalies, forecast_mean = _center(forecast)
            forecast = forecast_mean[..., None, :] + forecast_anomalies / eps
        if self.shift == 1:
            return WindowState(state.start, forecast[0], state.cycle, finished=state.finished)
        return eqx.tree_at(lambda s: (s.members, s.recent), state, (forecast[-1], forecast))

    def analysis(self, model, state: WindowState, y, key=None) -> tuple[WindowState, IEnKSInfo]:
        """Gauss-Newton (or MDA) iterations on the window ending at y_{n+1}, then the slide
        (every `shift` cycles; in between, the observation is kept for the next analysis)."""
        model = member_model(model, "IEnKS.analysis")
        y = jnp.asarray(y)
        if self.shift == 1:
            return self._analyse_window(model, state, y[None], key)
        slot = state.cycle % self.shift
        state = eqx.tree_at(lambda s: s.pending, state, state.pending.at[slot].set(y))
        return jax.lax.cond(slot == self.shift - 1, lambda: self._analyse_window(model, state, state.pending, key),
                            lambda: self._wait(model, state, y))

    def _finished_row(self, cycle):
        """The row of `finished` holding v_{n+1-L} at cycle n = `cycle`: `finished` comes from the
        last analysis, of cycle n - (n + 1) % S, whose window started at v_max(0, n_a + 1 - L)."""
        last_analysis = cycle - (cycle + 1) % self.shift
        row = cycle + 1 - self.lag - jnp.maximum(0, last_analysis + 1 - self.lag)
        return jnp.clip(row, 0, self.shift - 1)

    def finished_estimate(self, state: WindowState) -> Ensemble:
        """The final smoothed ensemble of v_{n+1-L} after cycle n (the state `info.lagged_mean`
        describes): what the universal scores propagate between observation times."""
        if self.shift == 1:
            return Ensemble(state.finished[0])
        return Ensemble(state.finished[self._finished_row(state.cycle - 1)])

    def _wait(self, model, state: WindowState, y) -> tuple[WindowState, IEnKSInfo]:
        """A cycle without an analysis (shift > 1): the forecast stands, y waits in `pending`."""
        dtype = state.members.dtype
        info = _cycle_info(model, state.members, y, state.members, state.finished[self._finished_row(state.cycle)],
                           n_iterations=jnp.zeros((), jnp.int32), increment=jnp.zeros((), dtype),
                           prior_inflation=jnp.ones((), dtype))
        return eqx.tree_at(lambda s: s.cycle, state, state.cycle + 1), info

    def _analyse_window(self, model, state: WindowState, window_ys, key) -> tuple[WindowState, IEnKSInfo]:
        """The Gauss-Newton (or MDA) iterations on the window's S observations `window_ys` (S, p)."""
        y = window_ys.reshape(-1)  # stacked: y_{n+2-S}..y_{n+1}
        size = self.ensemble_size
        dtype = state.start.dtype
        ridge = jnp.asarray(size - 1, dtype)
        eps = self._eps(dtype)
        identity = jnp.eye(size, dtype=dtype)
        masks = jnp.isfinite(window_ys)
        mask = masks.reshape(-1)
        start_anomalies, start_mean = _center(state.start)
        key_noise, key_post, key_rot = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        perturbed = isinstance(self.update, PerturbedObservations)
        if perturbed and key is None:
            raise ValueError("IEnKS with PerturbedObservations (EnRML) draws perturbations: a `key` is required")
        noise_keys = None if key_noise is None else jax.random.split(key_noise, self.n_iter)

        def observe_whitened_one(forecast, y_k, mask_k):
            whiten, _ = whitener(model.obs_cov, mask_k)
            observed = jax.vmap(model.observe)(forecast)
            if self.bundle:
                obs_anomalies, obs_mean = _center(observed)
                observed = obs_mean + obs_anomalies / eps
            obs_anomalies, obs_mean = _center(observed)
            innovation = whiten(jnp.where(mask_k, y_k - obs_mean, 0.0))
            return whiten(obs_anomalies), innovation

        def observe_whitened(trajectory):  # (S, J, d) -> Y (J, S p), dy (S p)
            if self.shift == 1:
                return observe_whitened_one(trajectory[0], window_ys[0], masks[0])
            obs_anomalies, innovation = jax.vmap(observe_whitened_one)(trajectory, window_ys, masks)
            return jnp.moveaxis(obs_anomalies, 0, 1).reshape(size, -1), innovation.reshape(-1)

        def perturbations(index):
            shape = (size, y.shape[0])
            draws = jax.random.normal(noise_keys[index], shape, dtype)
            draws = jnp.where(mask[None, :], draws - draws.mean(axis=0), 0.0)
            return draws * jnp.sqrt(jnp.asarray(self.n_iter, dtype)) if self.mda else draws

        def step(carry, index, forecast):
            w, transform, transform_inv, noise, _ = carry
            obs_anomalies, innovation = observe_whitened(forecast)
            y0 = obs_anomalies if self.mda else transform_inv @ obs_anomalies
            za = ridge if self.xN is None else self._zeta(y0, w, ridge)
            za = za * self.n_iter if self.mda else za

            def cov_power(exponent):
                if self.xN is None:
                    return _cov_power(y0, za, exponent)
                # zeta depends on w and Y_0: scale it out of the matrix function (whose
                # parameters are constants to its derivative), (G + z I)^-e = z^-e (G / z + I)^-e
                return za ** (-exponent) * _cov_power(y0 / jnp.sqrt(za), jnp.ones((), dtype), exponent)

            cov_w = cov_power(1.0)
            if self.mda:
                cov_w = cov_w @ transform
                dw = (obs_anomalies @ innovation) @ cov_w
                if perturbed:
                    noise = perturbations(index)
                    transform = transform - (obs_anomalies + noise) @ obs_anomalies.T @ cov_w
                elif isinstance(self.update, SquareRoot):
                    transform = cov_power(0.5) * jnp.sqrt(za) @ transform
                else:
                    transform = transform - 0.5 * obs_anomalies @ obs_anomalies.T @ cov_w
            else:
                dw = (y0 @ innovation - w * za) @ cov_w
                if isinstance(self.update, SquareRoot):
                    transform = cov_power(0.5) * jnp.sqrt(ridge)
                    transform_inv = cov_power(-0.5) / jnp.sqrt(ridge)
                elif perturbed:
                    noise = jnp.where(index == 0, perturbations(0), noise)
                    gradient = -(obs_anomalies + noise) @ y0.T + ridge * (identity - transform)
                    transform = transform + gradient @ cov_w
                    transform_inv = jnp.linalg.inv(transform + 1.0)  # DAPPER's stabilised inverse
                else:
                    gradient = -0.5 * obs_anomalies @ y0.T + ridge * (identity - transform)
                    transform = transform + gradient @ cov_w
                    transform_inv = _rank_pinv(transform, size - 1)
            return (w + dw, transform, transform_inv, noise, za), dw

        def forecast_of(w, transform):
            """The window's forecast of x_0 + (w + eps T) X_0 (scaled by eps in bundle mode)."""
            return self._propagate(model, start_mean + (w[None, :] + eps * transform) @ start_anomalies, state.cycle)

        def unscaled(forecast):
            if not self.bundle:
                return forecast
            anomalies, mean = _center(forecast)
            return mean + anomalies / eps

        # iteration 0 from the forecast `forecast` made (kept unscaled); then the rest until converged
        forecast_first = state.members
        forecast_anomalies, _ = _center(forecast_first)
        noise0 = jnp.zeros((size, y.shape[0]), dtype)
        carry = (jnp.zeros(size, dtype), identity, identity, noise0, ridge)
        scaled_first = state.members[None] if self.shift == 1 else state.recent  # (S, J, d)
        if self.bundle:
            anomalies_first, means_first = _center(scaled_first)
            scaled_first = means_first[..., None, :] + eps * anomalies_first
        carry, dw = step(carry, 0, scaled_first)
        converged = dw @ dw < self.wtol * size
        loop = (carry, dw, identity, scaled_first, converged, jnp.ones((), jnp.int32))

        def iterate(loop, index):
            carry, dw, transform_old, forecast, converged, count = loop

            def advance(_):
                w, transform = carry[0], carry[1]
                new_forecast = forecast_of(w, transform)
                new_carry, new_dw = step(carry, index, new_forecast)
                return (new_carry, new_dw, transform, new_forecast, new_dw @ new_dw < self.wtol * size, count + 1)

            if not self.stops_early:  # a branch per iteration costs 1-6% of a cycle (measured)
                return advance(None), None
            return jax.lax.cond(converged, lambda _: loop, advance, None), None

        if self.n_iter > 1:
            loop, _ = jax.lax.scan(iterate, loop, jnp.arange(1, self.n_iter))
        (w, transform, _, _, za), dw, transform_old, forecast, _, count = loop
        prior_inflation = jnp.sqrt(ridge * (self.n_iter if self.mda else 1) / za)

        # the filtered analysis: the last forecast plus the linearised final increment
        analysis = unscaled(forecast[-1]) + (dw[None, :] + transform - transform_old) @ forecast_anomalies
        smoothed = start_mean + (w[None, :] + transform) @ start_anomalies
        smoothed = self.inflation.posterior(Ensemble(state.start), Ensemble(smoothed), key_post).members
        if self.rotate:
            if key_rot is None:
                raise ValueError("`rotate=True` draws a random rotation: a `key` is required")
            rotation = mean_preserving_rotation(key_rot, size, dtype)
            anomalies, mean = _center(smoothed)
            smoothed = mean + rotation @ anomalies

        if self.shift == 1:
            lagged = smoothed
            next_state = WindowState(slide(lambda x: forecast_members(model, x, None), smoothed, state.cycle, self.lag),
                                     analysis, state.cycle + 1, finished=smoothed[None])
        else:
            next_start, finished = self._slide(model, smoothed, state.cycle)
            lagged = finished[self._finished_row(state.cycle)]
            next_state = WindowState(next_start, analysis, state.cycle + 1, pending=jnp.full_like(state.pending, jnp.nan),
                                     recent=state.recent, finished=finished)
        info = _cycle_info(model, forecast_first, window_ys[-1], analysis, lagged, n_iterations=count,
                           increment=dw @ dw / size, prior_inflation=prior_inflation,
                           finite_smoothed=jnp.all(jnp.isfinite(smoothed)))
        return next_state, info

    def _slide(self, model, smoothed, cycle):
        """The smoothed start v_s moved to the next window's start v_{s'},
        s' = max(0, n + 1 + S - L), and the ensembles of v_s..v_{s+S-1} on the way (S, J, d;
        the states leaving the window: the first s' - s rows)."""
        n_move = jnp.maximum(0, cycle + 1 + self.shift - self.lag) - jnp.maximum(0, cycle + 1 - self.lag)

        def step(members, index):
            moved = forecast_members(model, members, None)
            return jnp.where(index < n_move, moved, members), members

        return jax.lax.scan(step, smoothed, jnp.arange(self.shift, dtype=jnp.int32))

    def _zeta(self, y0, w, ridge):
        """The finite-size prior weight zeta = (J - 1) c_L / (e_N + |w|^2) (DAPPER's `zeta_a`)
        with the hyper-prior coefficients from the Gram matrix of y0 (J, p)."""
        size, n_obs = y0.shape
        gram = y0.T @ y0 if n_obs < size else y0 @ y0.T
        chol_unit = jnp.linalg.cholesky(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype))
        e_n, c_l = hyperprior_coefficients(chol_unit, size, self.xN, 0)
        return ridge * c_l / (e_n + w @ w)

    # -- the smoother contract -------------------------------------------------------------

    def run(self, model, ys, key=None, init_state=None) -> EnsembleSmootherResult:
        """Filtered and smoothed means: `mean[n]` is v_{n+1} given all of y_1..y_T within the
        lag (the last states: the final window's smoothed start propagated forward). With a
        shift S that does not divide T, the run continues to the next multiple of S with
        missing observations, so that the last observations are assimilated too."""
        model = member_model(model, "IEnKS")
        first = given_ensemble(init_state, self.ensemble_size, model)
        start = None if first is None else self.start_state(model, first.members)
        n_cycles = ys.shape[0]
        n_run = -(-n_cycles // self.shift) * self.shift
        if n_run > n_cycles:
            ys = jnp.concatenate([ys, jnp.full((n_run - n_cycles, ys.shape[1]), jnp.nan, ys.dtype)], axis=0)
        final, filtered = assimilate(model, self, ys, key, save=Save(), throw=False, init_state=start)
        # lagged_mean[n] is the final estimate of v_{n+1-L}: v_0..v_{T'-L} from the rows n >= L - 1
        means, spreads = [filtered.info.lagged_mean[self.lag - 1:]], [filtered.info.lagged_spread[self.lag - 1:]]
        first_unfinished = max(0, n_run - self.lag + 1)
        final_start = max(0, n_run + self.shift - self.lag)  # where the window would start next
        if final_start > first_unfinished:  # left the window at the last analysis (shift > 1): its rows
            window_start = max(0, n_run - self.lag)
            rows = slice(first_unfinished - window_start, final_start - window_start)
            means.append(final.finished[rows].mean(axis=1))
            spreads.append(ensemble_spread(final.finished[rows]))

        def forward(members, _):
            moved = forecast_members(model, members, None)
            return moved, (moved.mean(axis=0), ensemble_spread(moved))

        _, (rest_means, rest_spreads) = jax.lax.scan(forward, final.start, None, length=n_run - final_start)
        means = jnp.concatenate([*means, final.start.mean(axis=0)[None], rest_means], axis=0)[: n_cycles + 1]
        spreads = jnp.concatenate([*spreads, ensemble_spread(final.start)[None], rest_spreads], axis=0)[: n_cycles + 1]
        if n_run > n_cycles:
            filtered = jax.tree.map(lambda leaf: leaf[:n_cycles], filtered)
        return EnsembleSmootherResult(
            mean=means[1:], spread=spreads[1:], init_mean=means[0], filtered=filtered,
            log_likelihood=jnp.sum(filtered.info.log_likelihood),
        )


__all__ = ["IEnKS", "IEnKSInfo", "WindowState"]
