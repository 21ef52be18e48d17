"""Twin experiments: simulate a truth and its observations, assimilate, score.

Scores follow DAPPER's conventions (../shared/reference/twin-experiments.md):
per analysis time, rmse = sqrt(mean_i (mean_i - truth_i)^2) of the estimate's
mean and spread = sqrt(mean_i var_i) (ensemble variance with ddof = 1); both
are then averaged over the analysis times after a burn-in. Scores are computed
inside the compiled scan, so a long run keeps O(T) numbers, not T ensembles.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import _checks, metrics
from .assimilate import assimilate, check_status
from .simulate import simulate
from .gaussian import Gaussian, SqrtGaussian
from .results import RESULTS, DivergenceError
from .models.integrators import map_members, substeps
from .ssm import StateSpaceModel, as_state_space_model


# -- scoring inside the scan ------------------------------------------------------------


def state_variances(state) -> Float[Array, " dx"] | None:
    """Per-component variances of a filter's belief, or None for point estimates.

    Ensembles (states with `members` (J, dx)) use ddof = 1; Gaussian states their
    covariance diagonal (from a square-root factor without forming C).
    """
    if hasattr(state, "members"):
        return jnp.var(state.members, axis=0, ddof=1)
    if isinstance(state, SqrtGaussian):
        return jnp.sum(state.chol**2, axis=1)
    if isinstance(state, Gaussian):
        return jnp.diagonal(state.cov)
    return None


class CycleScores(eqx.Module):
    """Per-cycle scores of a twin experiment (time axis first once stacked).

    Attributes:
        rmse_analysis, rmse_forecast: rmse of the analysis / forecast mean.
        spread_analysis, spread_forecast: sqrt(mean_i var_i) (None for point estimates).
        crps_analysis: CRPS of the analysis (ensemble form, or the Gaussian closed form).
        rank_counts: (J + 1,) rank histogram counts of the truth among the members (ensembles).
        mean: (dx,) analysis mean, when kept.
        info: the method's `Info`.
        rmse_universal: with universal scores, the rmse of the method's finished estimate
            (`finished_estimate`) moved through the model's time steps of the next
            interval, averaged over those steps (see `universal_rmse`); else None.
    """

    rmse_analysis: Float[Array, ""]
    rmse_forecast: Float[Array, ""]
    spread_analysis: Float[Array, ""] | None
    spread_forecast: Float[Array, ""] | None
    crps_analysis: Float[Array, ""] | None
    rank_counts: Int[Array, " J1"] | None
    mean: Float[Array, " dx"] | None
    info: object
    rmse_universal: Float[Array, ""] | None = None


def universal_rmse(step, n_steps: int, estimate, true_state) -> Float[Array, ""]:
    """The mean over j = 0..n_steps-1 of rmse(estimate moved j model steps, truth moved j
    steps): DAPPER's universal ("u") statistics, taken at every model time step rather than
    at the observation times only. `estimate` has a `mean` (moved as a point, e.g. a Kalman
    filter's mean forecast) or `members` (each member moved; the rmse of their mean);
    `step` is one model time step (`kalmax.models.integrators.substeps`). The truth between
    observation times is the deterministic flow from `true_state` (model noise enters at
    the end of an interval)."""
    members = estimate.members if hasattr(estimate, "members") else None
    moving = estimate.mean if members is None else members

    def move(state):
        return step(state) if members is None else map_members(step, state)

    def body(carry, _):
        state, truth = carry
        mean = state if members is None else state.mean(axis=0)
        return (move(state), step(truth)), metrics.rmse(mean, truth)

    _, errors = jax.lax.scan(body, (moving, true_state), None, length=n_steps)
    return jnp.mean(errors)


class UniversalScores(eqx.Module):
    """What the universal scores of a twin experiment need (see `universal_rmse`).

    Attributes:
        step: one model time step (`kalmax.models.integrators.substeps`).
        n_steps: model time steps per observation interval (static).
        finished_estimate: the method's `finished_estimate` (a bound method).
        truths: (T, dx) the true state of each cycle's finished estimate: v_{n+1} for a
            filter, v_{n+1-lag} for a smoother (v_0 for the rows before).
    """

    step: object
    n_steps: int = eqx.field(static=True)
    finished_estimate: Callable
    truths: Float[Array, "T dx"]

    def __call__(self, analysis, cycle) -> Float[Array, ""]:
        return universal_rmse(self.step, self.n_steps, self.finished_estimate(analysis), self.truths[cycle])


class ScoreAgainstTruth(eqx.Module):
    """A saver for `assimilate` that scores each cycle against the truth.

    Args:
        truth: (T + 1, dx) true states v_0..v_T (cycle n is scored against v_{n+1}).
        keep_mean: also keep the analysis means (T, dx) (for plots).
        distribution_scores: also score the CRPS and the rank histogram (a sweep
            keeps the rmse and spread only).
        universal: None, or the `UniversalScores` to take per cycle.
    """

    truth: Float[Array, "T1 dx"]
    keep_mean: bool = eqx.field(static=True, default=True)
    distribution_scores: bool = eqx.field(static=True, default=True)
    universal: UniversalScores | None = None

    def __call__(self, forecast, analysis, info, cycle) -> CycleScores:
        true_state = self.truth[cycle + 1]
        var_a, var_f = state_variances(analysis), state_variances(forecast)
        if not self.distribution_scores:
            crps, counts = None, None
        elif hasattr(analysis, "members"):
            crps = metrics.crps(analysis.members, true_state)
            counts = metrics.rank_histogram(analysis.members[None], true_state[None])
        elif var_a is not None:
            crps = metrics.crps_gaussian(analysis.mean, jnp.sqrt(var_a), true_state)
            counts = None
        else:
            crps, counts = None, None
        return CycleScores(
            rmse_analysis=metrics.rmse(analysis.mean, true_state),
            rmse_forecast=metrics.rmse(forecast.mean, true_state),
            spread_analysis=None if var_a is None else jnp.sqrt(jnp.mean(var_a)),
            spread_forecast=None if var_f is None else jnp.sqrt(jnp.mean(var_f)),
            crps_analysis=crps,
            rank_counts=counts,
            mean=analysis.mean if self.keep_mean else None,
            info=info,
            rmse_universal=None if self.universal is None else self.universal(analysis, cycle),
        )


# A filter whose innovations are on average this many times larger (in squared, whitened
# units) than it predicts has lost the truth: a consistent filter gives 1 (the chi-square
# mean), a tracking but overconfident one 1-2; diverged runs give 10-1000 (tests/test_divergence.py).
DIVERGENCE_NIS_RATIO = 3.0


class TwinStats(eqx.Module):
    """Time averages over the analysis cycles n >= burn_in (DAPPER's `.a` and `.f` stats;
    `.s` for smoothers, see `smoothed_averages`).

    Fields are scalars (or None where the method has no spread/CRPS); `rank_histogram`
    is the summed (J + 1,) counts for ensembles. `nis_ratio` is the innovation
    consistency sum_n NIS_n / sum_n n_observed_n (1 for a filter whose uncertainty is
    right; None when the method's info has no `nis`); `diverged` flags a ratio above
    `DIVERGENCE_NIS_RATIO` (3), and `spread_skill` is spread / rmse of the analysis
    (about 1 for a calibrated ensemble, near 0 for a collapsed one).
    """

    rmse_analysis: Float[Array, ""]
    rmse_forecast: Float[Array, ""]
    spread_analysis: Float[Array, ""] | None
    spread_forecast: Float[Array, ""] | None
    crps_analysis: Float[Array, ""] | None
    rank_histogram: Int[Array, " J1"] | None
    nis_ratio: Float[Array, ""] | None = None
    rmse_smoothed: Float[Array, ""] | None = None
    spread_smoothed: Float[Array, ""] | None = None
    rmse_universal: Float[Array, ""] | None = None

    @property
    def diverged(self):
        """Whether the innovations say the filter lost the truth (False without `nis_ratio`);
        an array under `vmap`."""
        if self.nis_ratio is None:
            return False
        return self.nis_ratio > DIVERGENCE_NIS_RATIO

    @property
    def spread_skill(self):
        """Analysis spread / analysis rmse (None for point estimates)."""
        return None if self.spread_analysis is None else self.spread_analysis / self.rmse_analysis

    def table(self, title: str = "") -> str:
        """A small text table of the statistics."""
        rows = [
            ("analysis rmse", self.rmse_analysis),
            ("forecast rmse", self.rmse_forecast),
            ("analysis spread", self.spread_analysis),
            ("forecast spread", self.spread_forecast),
            ("analysis crps", self.crps_analysis),
            ("spread / rmse", self.spread_skill),
            ("NIS / observed", self.nis_ratio),
            ("smoothed rmse", self.rmse_smoothed),
            ("smoothed spread", self.spread_smoothed),
            ("universal rmse", self.rmse_universal),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [title] if title else []
        for name, value in rows:
            if value is not None:
                lines.append(f"{name:<{width}}  {float(value):.4f}")
        if self.rank_histogram is not None:
            counts = np.asarray(self.rank_histogram, dtype=np.float64)
            freq = counts / max(counts.sum(), 1.0)
            lines.append(f"{'rank histogram':<{width}}  " + " ".join(f"{f:.3f}" for f in freq))
        if self.nis_ratio is not None and bool(self.diverged):
            lines.append(divergence_warning(float(self.nis_ratio)))
        return "\n".join(lines)


def divergence_warning(nis_ratio: float) -> str:
    """The one-line warning of a diverged run."""
    return (f"warning: the filter diverged: its innovations are {nis_ratio:.1f} times the variance it predicts "
            f"(NIS / observed > {DIVERGENCE_NIS_RATIO:g}); more members, inflation or localisation may help")


class TwinResult(eqx.Module):
    """Everything a twin experiment produced.

    Attributes:
        truth: (T + 1, dx) true states v_0..v_T.
        ys: (T, dy) observations y_1..y_T.
        cycles: per-cycle `CycleScores` (time axis first).
        stats: `TwinStats` averaged over cycles n >= burn_in.
        final_state: the method's state after the last analysis.
        burn_in: number of leading cycles left out of `stats`.
        lag: a smoother's lag (its `info.lagged_mean[n]` estimates v_{max(0, n + 1 - lag)}),
            None for a filter.
    """

    truth: Float[Array, "T1 dx"]
    ys: Float[Array, "T dy"]
    cycles: CycleScores
    stats: TwinStats
    final_state: object
    burn_in: int = eqx.field(static=True)
    lag: int | None = eqx.field(static=True, default=None)


def _average(series, burn_in: int):
    return None if series is None else jnp.mean(series[burn_in:], axis=0)


def smoothed_averages(info, truth, lag: int | None, burn_in: int):
    """(rmse, spread) of a smoother's finished estimates, DAPPER's rmse.s and spread.s (None, None
    for a method without them): `info.lagged_mean[n]` (EnKS, IEnKS) estimates v_{n+1-lag} given
    y_1..y_{n+1}, the history index n - lag; the rows with n - lag >= burn_in are averaged (the
    last `lag` states, still in the final window, are left out)."""
    lagged = getattr(info, "lagged_mean", None)
    if lagged is None or lag is None or lag + burn_in >= lagged.shape[0]:
        return None, None
    rows = slice(lag + burn_in, lagged.shape[0])
    estimates = lagged[rows]
    states = truth[1 + burn_in: 1 + burn_in + estimates.shape[0]]
    rmse = jnp.mean(jnp.sqrt(jnp.mean((estimates - states) ** 2, axis=-1)))
    spread = getattr(info, "lagged_spread", None)
    return rmse, None if spread is None else jnp.mean(spread[rows])


def universal_average(cycles: CycleScores, lag: int | None, burn_in: int):
    """DAPPER's rmse.u: the per-cycle universal rmse averaged over the intervals after the
    burn-in (cycles n >= burn_in, and n >= lag + burn_in for a smoother, whose row n
    follows v_{n+1-lag}); None without universal scores."""
    if cycles.rmse_universal is None:
        return None
    first = burn_in + (lag or 0)
    if first >= cycles.rmse_universal.shape[0]:
        return None
    return jnp.mean(cycles.rmse_universal[first:])


def time_averages(cycles: CycleScores, burn_in: int, truth=None, lag: int | None = None) -> TwinStats:
    """The `TwinStats` of per-cycle scores: averages over the cycles n >= burn_in; with the
    `truth` (T + 1, dx) and a smoother's `lag`, also the smoothed scores."""
    rmse_smoothed, spread_smoothed = (None, None) if truth is None else smoothed_averages(
        cycles.info, truth, lag, burn_in)
    return TwinStats(
        rmse_analysis=_average(cycles.rmse_analysis, burn_in),
        rmse_forecast=_average(cycles.rmse_forecast, burn_in),
        spread_analysis=_average(cycles.spread_analysis, burn_in),
        spread_forecast=_average(cycles.spread_forecast, burn_in),
        crps_analysis=_average(cycles.crps_analysis, burn_in),
        rank_histogram=None if cycles.rank_counts is None else jnp.sum(cycles.rank_counts[burn_in:], axis=0),
        nis_ratio=nis_ratio(cycles.info, burn_in),
        rmse_smoothed=rmse_smoothed,
        spread_smoothed=spread_smoothed,
        rmse_universal=universal_average(cycles, lag, burn_in),
    )


def nis_ratio(info, burn_in: int = 0):
    """sum_n NIS_n / sum_n n_observed_n over cycles n >= burn_in of a stacked `Info`
    (None when the info has no `nis`): 1 for a consistent filter."""
    nis = getattr(info, "nis", None)
    if nis is None:
        return None
    observed = jnp.sum(info.n_observed[burn_in:]).astype(nis.dtype)
    return jnp.sum(nis[burn_in:]) / jnp.maximum(observed, 1.0)


def check_simulated_truth(truth) -> None:
    """Raise if a simulated truth (T + 1, dx) blew up, naming the first non-finite state
    (before the filter would report the observations drawn from it as bad input)."""
    if not _checks.is_concrete(truth):
        return
    finite = np.all(np.isfinite(np.asarray(truth).reshape(truth.shape[0], -1)), axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise DivergenceError(
            f"the truth simulated from `model` became non-finite at v_{first} (cycle {first - 1}'s forecast): the "
            "model blows up from its initial law; check its time step and parameters"
        )


def check_run_length(n_cycles, burn_in, key) -> tuple[int, int]:
    """(n_cycles, burn_in) as ints after checking them and the key (twin experiments, sweeps):
    at least one cycle, and at least one scored after the burn-in."""
    n_cycles = _checks.as_count("n_cycles", n_cycles)
    burn_in = _checks.as_count("burn_in", burn_in, minimum=0)
    if burn_in >= n_cycles:
        raise ValueError(f"`burn_in` must lie in [0, n_cycles={n_cycles}): no cycle would be scored; got {burn_in}")
    _checks.check_key("key", key)
    return n_cycles, burn_in


def failed_cycles(cycles: CycleScores):
    """(T,) whether each cycle failed: a status other than success, or a non-finite rmse."""
    status = cycles.info.status
    bad = jnp.any((status != RESULTS.SUCCESSFUL).reshape(status.shape[0], -1), axis=1)
    return bad | ~jnp.isfinite(cycles.rmse_analysis)


def twin_keys(key: PRNGKeyArray, n_chunks: int = 1):
    """(truth key, one method key per chunk of cycles): how a twin experiment splits its key."""
    key_truth, key_method = jax.random.split(key)
    return key_truth, jax.random.split(key_method, n_chunks)


def universal_scores(model, method, truth, first_cycle: int = 0, lag: int | None = None) -> UniversalScores:
    """The `UniversalScores` of `method` on `model` for the cycles first_cycle..T-1 of a run
    whose truth up to v_T is `truth`: the model split into its time steps, and the true state
    of each cycle's finished estimate (v_{n+1}, or v_{n+1-lag} for a smoother's `lag`)."""
    model = model if isinstance(model, StateSpaceModel) else as_state_space_model(model)
    step, n_steps = substeps(model.dynamics)
    lag = lag or 0
    n_cycles = truth.shape[0] - 1 - first_cycle
    rows = np.clip(np.arange(first_cycle, first_cycle + n_cycles) + 1 - lag, 0, None)
    return UniversalScores(step, n_steps, method.finished_estimate, truth[rows])


def run_scored(model, method, truth, ys, key, *, keep_mean: bool = True, distribution_scores: bool = True,
               init_state=None, universal: UniversalScores | None = None):
    """One assimilation of `ys` scored cycle by cycle against `truth` (T + 1, dx): the core
    of `twin_experiment` (per chunk of cycles) and of `sweep` (vmapped over settings and
    seeds); `universal` adds the universal scores. Returns (final state, `CycleScores`);
    failures are left in the scores' status."""
    saver = ScoreAgainstTruth(truth, keep_mean=keep_mean, distribution_scores=distribution_scores,
                              universal=universal)
    return assimilate(model, method, ys, key if method.stochastic else None, save=saver, throw=False,
                      init_state=init_state)


def twin_experiment(
    model,
    method,
    n_cycles: int,
    key: PRNGKeyArray,
    *,
    burn_in: int = 0,
    truth: Float[Array, "T1 dx"] | None = None,
    ys: Float[Array, "T dy"] | None = None,
    keep_mean: bool = True,
    throw: bool = True,
    chunk_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    universal: bool = False,
) -> TwinResult:
    """Simulate a truth and data from `model`, assimilate them with `method`, score.

    Args:
        model: the state-space model (the truth and the filter share it, as in DAPPER).
        method: any filter (`KalmanFilter`, `ThreeDVar`, `ExtendedKalmanFilter`, ensembles...).
        n_cycles: number of assimilation cycles T.
        key: PRNG key; split into the truth's key and the method's key.
        burn_in: cycles n < burn_in are left out of the time averages. DAPPER's
            BurnIn in time units B corresponds to burn_in = round(B / interval).
        truth: an existing truth (T + 1, dx), with `ys` (e.g. exported from DAPPER);
            then `key` only drives the method.
        ys: the observations (T, dy) of `truth`; give both or neither.
        keep_mean: keep the (T, dx) analysis means in `cycles.mean`.
        throw: raise `DivergenceError` naming the first failing cycle.
        chunk_size: run the scan in chunks of this many cycles (same compiled
            function for every full chunk), calling `progress(done, total)` after
            each; None runs one scan.
        progress: callback for chunked runs (the `kalmax` command draws a bar).
        universal: also score DAPPER's universal rmse (`stats.rmse_universal`, rmse.u):
            the finished estimate (the analysis, or a smoother's smoothed estimate)
            moved through every model time step of the next interval, against the truth
            there (`universal_rmse`). Costs about one more forecast per cycle.

    Returns:
        A `TwinResult`; `result.stats.table()` prints the averages.
    """
    n_cycles, burn_in = check_run_length(n_cycles, burn_in, key)
    chunk = n_cycles if chunk_size is None else max(1, int(chunk_size))
    key_truth, chunk_keys = twin_keys(key, -(-n_cycles // chunk))
    if (truth is None) != (ys is None):
        raise ValueError("give both `truth` and `ys`, or neither")
    if truth is None:
        truth, ys = simulate(model, key_truth, n_cycles)
        check_simulated_truth(truth)
    else:
        truth, ys = jnp.asarray(truth), jnp.asarray(ys)
        if truth.shape != (n_cycles + 1, model.state_dim):
            raise ValueError(
                f"`truth` must have shape {(n_cycles + 1, model.state_dim)} (v_0..v_T); got {tuple(truth.shape)}"
            )
        if ys.shape[0] != n_cycles:
            raise ValueError(f"`ys` must have {n_cycles} rows; got {ys.shape[0]}")
    lag = getattr(method, "lag", None)
    state, pieces = None, []
    for index, start in enumerate(range(0, n_cycles, chunk)):
        stop = min(start + chunk, n_cycles)
        state, scores = run_scored(
            model, method, truth[start : stop + 1], ys[start:stop], chunk_keys[index], keep_mean=keep_mean,
            init_state=state,
            universal=universal_scores(model, method, truth[: stop + 1], start, lag) if universal else None,
        )
        pieces.append(scores)
        if progress is not None:
            progress(stop, n_cycles)
    final = state
    cycles = pieces[0] if len(pieces) == 1 else jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs, axis=0), *pieces
    )
    if throw:
        cycles = check_status(cycles, type(method).__name__)
    stats = time_averages(cycles, burn_in, truth, lag)
    return TwinResult(truth=truth, ys=ys, cycles=cycles, stats=stats, final_state=final, burn_in=burn_in, lag=lag)


def climatology_cov(model: StateSpaceModel, key: PRNGKeyArray, n_steps: int, spin_up: int = 0) -> Float[Array, "dx dx"]:
    """Covariance of a free run of the model's dynamics (the climatology).

    DAPPER's Var3D uses B = xB * cov(truth); a long free run (after a spin-up)
    gives the documented scores. Starts from a draw of the model's prior.
    """
    states, _ = simulate(model, key, int(n_steps) + int(spin_up))
    return jnp.cov(states[int(spin_up) + 1 :], rowvar=False)
