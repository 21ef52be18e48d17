"""Hyperparameter sweeps of twin experiments in one compiled call.

A sweep runs a twin experiment for every combination of the values in a grid
of hyperparameters (inflation x localisation radius x ...) and for every seed.
The truth and observations of each seed are simulated once and shared by all
settings, so settings are compared under common random numbers, as in DAPPER's
`xpList` launches. Hyperparameters are traced leaves of the methods
(equinox Modules), so the whole sweep is `vmap`ped over settings and seeds and
compiled once; a setting that diverges reports NaN and a failure flag instead of
stopping the sweep.

Scores follow DAPPER (../shared/reference/twin-experiments.md): per seed, the
analysis/forecast rmse and spread are averaged over the analysis cycles
n >= burn_in; per setting, `SweepResult` gives their mean over the seeds that
did not fail and its standard error std(ddof=1) / sqrt(n_ok).

Example:
    >>> setup = kx.presets.lorenz96_sakov2008()
    >>> result = kx.sweep(
    ...     setup.model,
    ...     lambda inflation: kx.EnKF(24, kx.SquareRoot(), inflation=inflation, rotate=True),
    ...     2000, jax.random.key(0),
    ...     grid={"inflation": [1.0, 1.01, 1.02, 1.04]}, n_seeds=8, burn_in=setup.burn_in,
    ... )
    >>> print(result.table())
"""

from __future__ import annotations

import keyword
import math
import sys
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._compile import dual_jit, prefers_serial, state_size
from .experiments import check_run_length, failed_cycles, run_scored, time_averages, twin_keys, universal_scores
from .simulate import simulate
from .sharding import device_mesh

__all__ = ["SweepResult", "sweep"]


# -- one run -----------------------------------------------------------------------------


class RunStats(eqx.Module):
    """The time-averaged scores of one run of a sweep (NaN spread for point estimates)."""

    rmse_analysis: Float[Array, ""]
    rmse_forecast: Float[Array, ""]
    spread_analysis: Float[Array, ""]
    spread_forecast: Float[Array, ""]
    failed: Bool[Array, ""]
    first_failure: Array  # first failing cycle, -1 if none
    nis_ratio: Float[Array, ""]  # NaN when the method's info has no `nis`
    diverged: Bool[Array, ""]
    rmse_smoothed: Float[Array, ""]  # NaN for methods that do not smooth
    rmse_universal: Float[Array, ""]  # NaN without universal scores


def run_one(model, make_method, burn_in: int, params: dict, seed_key, truth, ys, universal: bool = False) -> RunStats:
    """One twin experiment; equals `twin_experiment(model, make_method(**params), T,
    seed_key, burn_in=burn_in, universal=universal)` (same key derivation, same scores)."""
    try:
        method = make_method(**params)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
            jax.errors.TracerBoolConversionError) as err:
        raise TypeError(
            f"make_method({', '.join(params)}) needs a concrete value: grid values are traced, so the grid may only "
            "hold traceable hyperparameters (inflation, radius, ...); fix shape-setting ones such as the ensemble "
            "size inside make_method and run one sweep per value"
        ) from err
    _, method_keys = twin_keys(seed_key)  # the key of an unchunked twin experiment
    lag = getattr(method, "lag", None)
    scores = universal_scores(model, method, truth, 0, lag) if universal else None
    _, cycles = run_scored(model, method, truth, ys, method_keys[0], keep_mean=False, distribution_scores=False,
                           universal=scores)
    stats = time_averages(cycles, burn_in, truth, lag)
    nan = jnp.full((), jnp.nan, truth.dtype)
    bad_cycle = failed_cycles(cycles)
    return RunStats(
        rmse_analysis=stats.rmse_analysis,
        rmse_forecast=stats.rmse_forecast,
        spread_analysis=nan if stats.spread_analysis is None else stats.spread_analysis,
        spread_forecast=nan if stats.spread_forecast is None else stats.spread_forecast,
        failed=jnp.any(bad_cycle) | ~jnp.isfinite(stats.rmse_analysis),
        first_failure=jnp.where(jnp.any(bad_cycle), jnp.argmax(bad_cycle), -1).astype(jnp.int32),
        nis_ratio=nan if stats.nis_ratio is None else stats.nis_ratio,
        diverged=jnp.asarray(stats.diverged),
        rmse_smoothed=nan if stats.rmse_smoothed is None else stats.rmse_smoothed,
        rmse_universal=nan if stats.rmse_universal is None else stats.rmse_universal,
    )


# -- the sweep ---------------------------------------------------------------------------


def _flatten_grid(grid: Mapping, dtype) -> tuple[dict, dict, tuple[int, ...]]:
    """(values per name, flattened settings per name (S,), grid shape)."""
    if not isinstance(grid, Mapping):
        raise TypeError(f"`grid` must be a mapping of hyperparameter name -> 1-D values; got {type(grid).__name__}")
    values = {}
    for name, raw in grid.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"`grid` names must be Python identifiers (keyword arguments of make_method); got {name!r}")
        array = np.asarray(raw)
        if array.ndim == 0:
            array = array[None]
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"`grid[{name!r}]` must be a non-empty 1-D array of values; got shape {array.shape}")
        if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(f"`grid[{name!r}]` must hold real numbers; got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"`grid[{name!r}]` has non-finite values: {array.tolist()}")
        values[name] = jnp.asarray(array, dtype)
    shape = tuple(int(v.shape[0]) for v in values.values())
    mesh = np.meshgrid(*[np.asarray(v) for v in values.values()], indexing="ij") if values else []
    flat = {name: jnp.asarray(m.reshape(-1), dtype) for name, m in zip(values, mesh)}
    return values, flat, shape


def _check_settings(make_method, flat: dict, n_settings: int) -> None:
    """Build every setting's method with concrete values first, so bad values give
    the method's own construction-time errors (naming the setting) before tracing."""
    for index in range(n_settings):
        params = {name: v[index] for name, v in flat.items()}
        try:
            make_method(**params)
        except (ValueError, TypeError) as err:
            shown = ", ".join(f"{k}={float(v):g}" for k, v in params.items())
            raise type(err)(f"make_method({shown}) failed: {err}") from err


def _summarise(values, failed):
    """Mean over the seeds that did not fail (last axis) and its standard error."""
    ok = ~failed
    n_ok = jnp.sum(ok, axis=-1).astype(values.dtype)
    total = jnp.sum(jnp.where(ok, values, 0.0), axis=-1)
    mean = total / n_ok  # NaN when every seed failed
    squares = jnp.sum(jnp.where(ok, (values - mean[..., None]) ** 2, 0.0), axis=-1)
    stderr = jnp.sqrt(squares / (n_ok - 1.0) / n_ok)  # NaN with fewer than 2 seeds
    return mean, stderr


def _progress_reporter(progress, total: int):
    """(report(done), bar): `report` is None without progress; `bar` a tqdm bar to close, or None."""
    if progress is False or progress is None:
        return None, None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sweep runs", leave=True, file=sys.stderr)

        def report(done: int) -> None:
            bar.update(done - bar.n)

        return report, bar
    if callable(progress):
        return (lambda done: progress(done, total)), None
    raise TypeError(f"`progress` must be True, False or a callable progress(done, total); got {type(progress).__name__}")


@eqx.filter_jit
def _simulate_seeds(model, truth_keys, n_cycles: int):
    return jax.vmap(lambda k: simulate(model, k, n_cycles))(truth_keys)


def _sweep_vectorized_body(model, make_method, burn_in: int, n_settings: int, flat: dict, seed_keys, truth, ys,
                      batch_size, run_sharding=None, universal: bool = False):
    # the index gives vmap a batched input even for an empty grid
    indexed = dict(flat, __index__=jnp.arange(n_settings))
    if run_sharding is not None:
        # settings split over the devices; XLA propagates the layout through the runs
        indexed = jax.lax.with_sharding_constraint(indexed, run_sharding)

    def per_setting(params):
        params = {k: v for k, v in params.items() if k != "__index__"}
        return jax.vmap(lambda k, tr, y: run_one(model, make_method, burn_in, params, k, tr, y, universal))(
            seed_keys, truth, ys)

    if batch_size is None or batch_size >= n_settings:
        runs = jax.vmap(per_setting)(indexed)
    else:
        runs = jax.lax.map(per_setting, indexed, batch_size=batch_size)
    if run_sharding is not None:
        runs = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(
                x, NamedSharding(run_sharding.mesh, PartitionSpec(*run_sharding.spec, *([None] * (x.ndim - 1))))
            ),
            runs,
        )
    return runs


def _single_run_body(model, make_method, burn_in: int, params: dict, seed_key, truth, ys, universal: bool = False):
    return run_one(model, make_method, burn_in, params, seed_key, truth, ys, universal)


_sweep_vectorized_default, _sweep_vectorized_serial = dual_jit(_sweep_vectorized_body)
_single_run_default, _single_run_serial = dual_jit(_single_run_body)


class SweepResult(eqx.Module):
    """Scores of a sweep: one entry per setting (the grid's combinations) and seed.

    Arrays of per-seed scores have shape `(*grid_shape, n_seeds)` with
    `grid_shape = tuple(len(v) for v in grid.values())` (the grid's names in
    order, `indexing="ij"`); summaries over seeds have shape `grid_shape`.

    Attributes:
        grid: name -> (n_k,) values of each hyperparameter.
        rmse_analysis, rmse_forecast: time-averaged rmse of the analysis / forecast
            mean per setting and seed (NaN where the run diverged).
        spread_analysis, spread_forecast: time-averaged spread (NaN for point estimates).
        failed: whether the run reported a non-OK status (non-finite or collapsed
            ensemble, failed factorisation) on any cycle.
        first_failure: first failing cycle of the run, -1 if none.
        rmse_analysis_mean, rmse_analysis_stderr: mean over the seeds that did not
            fail and its standard error std(ddof=1) / sqrt(n_ok) (NaN when fewer
            than two seeds succeeded).
        rmse_forecast_mean, rmse_forecast_stderr: the same for the forecast.
        spread_analysis_mean: mean analysis spread over the seeds that did not fail.
        n_failed: number of failed seeds per setting.
        nis_ratio: innovation consistency of each run (`TwinStats.nis_ratio`; NaN when
            the method's info has no `nis`).
        diverged: whether each run's innovations say it lost the truth (`TwinStats.diverged`).
        n_diverged: number of diverged seeds per setting (failed seeds are counted in
            `n_failed`, not here).
        rmse_smoothed: time-averaged rmse of a smoother's finished estimates per setting
            and seed (`TwinStats.rmse_smoothed`; NaN for filters).
        rmse_smoothed_mean: its mean over the seeds that did not fail.
        rmse_universal, rmse_universal_mean: DAPPER's rmse.u per run and its mean over the
            seeds that did not fail (`TwinStats.rmse_universal`; NaN unless `universal`).
        n_cycles, burn_in: the run length and the cycles left out of the averages.
    """

    grid: dict[str, Float[Array, " n"]]
    rmse_analysis: Float[Array, "*grid seeds"]
    rmse_forecast: Float[Array, "*grid seeds"]
    spread_analysis: Float[Array, "*grid seeds"]
    spread_forecast: Float[Array, "*grid seeds"]
    failed: Bool[Array, "*grid seeds"]
    first_failure: Array
    rmse_analysis_mean: Float[Array, "*grid"]
    rmse_analysis_stderr: Float[Array, "*grid"]
    rmse_forecast_mean: Float[Array, "*grid"]
    rmse_forecast_stderr: Float[Array, "*grid"]
    spread_analysis_mean: Float[Array, "*grid"]
    n_failed: Array
    nis_ratio: Float[Array, "*grid seeds"]
    diverged: Bool[Array, "*grid seeds"]
    n_diverged: Array
    rmse_smoothed: Float[Array, "*grid seeds"]
    rmse_smoothed_mean: Float[Array, "*grid"]
    rmse_universal: Float[Array, "*grid seeds"]
    rmse_universal_mean: Float[Array, "*grid"]
    n_cycles: int = eqx.field(static=True)
    burn_in: int = eqx.field(static=True)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(int(v.shape[0]) for v in self.grid.values())

    @property
    def n_seeds(self) -> int:
        return int(self.rmse_analysis.shape[-1])

    def settings(self) -> list[dict[str, float]]:
        """The settings in row order of `table()` (C order over the grid)."""
        values = {k: np.asarray(v) for k, v in self.grid.items()}
        return [
            {name: float(values[name][i]) for name, i in zip(self.names, index)}
            for index in np.ndindex(*self.grid_shape)
        ]

    def best(self) -> dict[str, float]:
        """The setting with the lowest mean analysis rmse among those where no seed failed."""
        means = np.asarray(self.rmse_analysis_mean, dtype=np.float64).reshape(-1)
        means = np.where(np.asarray(self.n_failed).reshape(-1) == 0, means, np.inf)
        if not np.any(np.isfinite(means)):
            raise ValueError("every setting failed on at least one seed")
        return self.settings()[int(np.argmin(means))]

    def table(self, title: str = "") -> str:
        """A DAPPER-like table: one row per setting with its parameters, the mean
        analysis and forecast rmse ± standard error over seeds, the mean analysis
        spread, and the numbers of failed and of diverged seeds."""

        def fmt(x):
            return "nan" if not math.isfinite(x) else f"{x:.4f}"

        def pm(mean, err):
            return f"{fmt(mean)} ± {fmt(err)}" if math.isfinite(err) else fmt(mean)

        a_mean, a_err = np.asarray(self.rmse_analysis_mean).reshape(-1), np.asarray(self.rmse_analysis_stderr).reshape(-1)
        f_mean, f_err = np.asarray(self.rmse_forecast_mean).reshape(-1), np.asarray(self.rmse_forecast_stderr).reshape(-1)
        spread = np.asarray(self.spread_analysis_mean).reshape(-1)
        failed = np.asarray(self.n_failed).reshape(-1)
        diverged = np.asarray(self.n_diverged).reshape(-1)
        smoothed = np.asarray(self.rmse_smoothed_mean).reshape(-1)
        smoothing = bool(np.any(np.isfinite(np.asarray(self.rmse_smoothed))))
        universal = np.asarray(self.rmse_universal_mean).reshape(-1)
        scoring_universal = bool(np.any(np.isfinite(np.asarray(self.rmse_universal))))
        header = [*self.names, "rmse.a ± stderr", "rmse.f ± stderr", *(["rmse.s"] if smoothing else []),
                  *(["rmse.u"] if scoring_universal else []), "spread.a", "failed", "diverged"]
        rows = []
        for i, setting in enumerate(self.settings()):
            rows.append([
                *(f"{v:g}" for v in setting.values()),
                pm(float(a_mean[i]), float(a_err[i])),
                pm(float(f_mean[i]), float(f_err[i])),
                *([fmt(float(smoothed[i]))] if smoothing else []),
                *([fmt(float(universal[i]))] if scoring_universal else []),
                fmt(float(spread[i])),
                f"{int(failed[i])}/{self.n_seeds}",
                f"{int(diverged[i])}/{self.n_seeds}",
            ])
        widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
        n_params = len(self.names)

        def line(cells):
            left = "  ".join(c.rjust(w) for c, w in zip(cells[:n_params], widths))
            right = "  ".join(c.rjust(w) for c, w in zip(cells[n_params:], widths[n_params:]))
            return f"{left} | {right}" if n_params else right

        lines = [title] if title else []
        lines.append(
            f"{self.n_seeds} seeds, {self.n_cycles} cycles, averages over cycles {self.burn_in}..{self.n_cycles - 1}"
        )
        lines.append(line(header))
        lines.append("-" * len(lines[-1]))
        lines.extend(line(r) for r in rows)
        return "\n".join(lines)


def sweep(
    model,
    make_method: Callable[..., object],
    n_cycles: int,
    key: PRNGKeyArray,
    *,
    grid: Mapping[str, object],
    n_seeds: int = 1,
    burn_in: int = 0,
    truth: Float[Array, "S T1 dx"] | None = None,
    ys: Float[Array, "S T dy"] | None = None,
    vectorize: bool = True,
    batch_size: int | None = None,
    mesh: Mesh | Sequence | None = None,
    progress: bool | Callable[[int, int], None] = False,
    universal: bool = False,
) -> SweepResult:
    """Twin experiments for every combination of `grid` values and every seed.

    Seed s uses `jax.random.split(key, n_seeds)[s]`: its truth and observations
    are simulated once and shared by every setting, and the run of setting p
    equals `twin_experiment(model, make_method(**p), n_cycles, seed_key,
    burn_in=burn_in)` (the same truth, data, method key and scores; without its
    `throw`: a diverging run is reported in `failed` instead of raising).

    Args:
        model: the state-space model (the truth and the filter share it).
        make_method: builds the method from keyword arguments named as the grid,
            e.g. `lambda inflation: kx.EnKF(24, kx.SquareRoot(), inflation=inflation)`.
            It is called with traced scalars (of the model's dtype), so the grid
            may only hold traceable hyperparameters; parameters that fix shapes
            (the ensemble size) are fixed inside `make_method` (one sweep per value).
        n_cycles: number of assimilation cycles T of each run.
        key: PRNG key of the sweep.
        grid: hyperparameter name -> 1-D array of values; every combination is run
            (an empty mapping runs `make_method()` once per seed).
        n_seeds: number of seeds (independent truths, data and initial ensembles).
        burn_in: cycles n < burn_in are left out of the time averages.
        truth: optional given truths (n_seeds, T + 1, dx), with `ys`, instead of
            simulating them (then `key` drives only the methods).
        ys: the observations (n_seeds, T, dy) of `truth`; give both or neither.
        vectorize: True runs everything in one compiled call (vmapped over settings
            and seeds); False runs the same settings and seeds one after another
            (one compiled run, called n_settings * n_seeds times) for comparison.
        batch_size: with `vectorize`, run the settings in batches of this many
            (`lax.map` over batches of a `vmap`) to bound memory; None: all at once.
        mesh: split the settings over several devices: a one-axis
            `jax.sharding.Mesh` or a sequence of devices (with `vectorize`). The
            settings are padded to a multiple of the device count (repeating the
            last one); the results equal the single-device sweep.
        progress: True draws a progress bar of the runs (tqdm, on stderr); a callable
            is called as `progress(runs_done, n_settings * n_seeds)`. With `vectorize`
            the settings then run in chunks (of `batch_size`, or a tenth of the grid),
            each chunk one call of the same compiled program, so that progress can be
            reported between chunks; the scores equal those of one call.
        universal: also score DAPPER's rmse.u (`twin_experiment`'s `universal`).

    Returns:
        A `SweepResult`; `result.table()` prints the DAPPER-like table.
    """
    n_cycles, burn_in = check_run_length(n_cycles, burn_in, key)
    if isinstance(n_seeds, bool) or int(n_seeds) != n_seeds or int(n_seeds) < 1:
        raise ValueError(f"`n_seeds` must be a positive integer; got {n_seeds}")
    n_seeds = int(n_seeds)
    if batch_size is not None and (int(batch_size) != batch_size or int(batch_size) < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None; got {batch_size}")
    if not callable(make_method):
        raise TypeError(f"`make_method` must be a callable building the method; got {type(make_method).__name__}")
    dtype = model.dtype
    values, flat, shape = _flatten_grid(grid, dtype)
    n_settings = math.prod(shape)
    _check_settings(make_method, flat, n_settings)

    seed_keys = jax.random.split(key, n_seeds)
    if (truth is None) != (ys is None):
        raise ValueError("give both `truth` and `ys`, or neither")
    if truth is None:
        truth_keys = jax.vmap(lambda k: twin_keys(k)[0])(seed_keys)
        truth, ys = _simulate_seeds(model, truth_keys, n_cycles)
    else:
        truth, ys = jnp.asarray(truth), jnp.asarray(ys)
        if truth.shape != (n_seeds, n_cycles + 1, model.state_dim):
            raise ValueError(
                f"`truth` must have shape {(n_seeds, n_cycles + 1, model.state_dim)} (seeds, v_0..v_T, dx); "
                f"got {tuple(truth.shape)}"
            )
        if ys.shape != (n_seeds, n_cycles, model.obs_dim):
            raise ValueError(
                f"`ys` must have shape {(n_seeds, n_cycles, model.obs_dim)} (seeds, T, dy); got {tuple(ys.shape)}"
            )

    first_method = make_method(**{name: v[0] for name, v in flat.items()})
    report, bar = _progress_reporter(progress, n_settings * n_seeds)

    def serial(n_runs):  # the schedule of `kalmax._compile` for the runs batched in one program
        return prefers_serial(state_size(model, first_method, n_runs))

    if vectorize:
        run_sharding, n_padded, flat_in = None, n_settings, flat
        if mesh is not None:
            mesh = mesh if isinstance(mesh, Mesh) else device_mesh(mesh, "runs")
            if len(mesh.axis_names) != 1:
                raise ValueError(f"`mesh` must have one axis (the settings are split over it); got axes {mesh.axis_names}")
            n_devices = int(mesh.devices.size)
            n_padded = -(-n_settings // n_devices) * n_devices
            flat_in = {k: jnp.concatenate([v, jnp.repeat(v[-1:], n_padded - n_settings)]) for k, v in flat.items()}
            run_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        if report is None:
            _sweep_vectorized = _sweep_vectorized_serial if serial(n_settings * n_seeds) else _sweep_vectorized_default
            runs = _sweep_vectorized(
                model, make_method, burn_in, n_padded, flat_in, seed_keys, truth, ys,
                None if batch_size is None else int(batch_size), run_sharding, universal,
            )
        else:
            n_devices = 1 if run_sharding is None else int(run_sharding.mesh.devices.size)
            chunk = int(batch_size) if batch_size is not None else -(-n_settings // min(n_settings, 10))
            chunk = -(-chunk // n_devices) * n_devices
            n_chunks = -(-n_settings // chunk)
            # every chunk has the same shape (the last one padded): one compiled program
            flat_in = {k: jnp.concatenate([v, jnp.repeat(v[-1:], n_chunks * chunk - v.shape[0])]) for k, v in flat.items()}
            _sweep_vectorized = _sweep_vectorized_serial if serial(chunk * n_seeds) else _sweep_vectorized_default
            pieces = []
            for index in range(n_chunks):
                part = {k: v[index * chunk:(index + 1) * chunk] for k, v in flat_in.items()}
                piece = _sweep_vectorized(model, make_method, burn_in, chunk, part, seed_keys, truth, ys, None, run_sharding,
                                          universal)
                pieces.append(jax.block_until_ready(piece))
                report(min((index + 1) * chunk, n_settings) * n_seeds)
            runs = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *pieces)
        runs = jax.tree_util.tree_map(lambda x: x[:n_settings], runs)
    else:
        _single_run = _single_run_serial if serial(1) else _single_run_default
        pieces = []
        for index in range(n_settings):
            params = {name: v[index] for name, v in flat.items()}
            per_seed = []
            for s in range(n_seeds):
                per_seed.append(_single_run(model, make_method, burn_in, params, seed_keys[s], truth[s], ys[s],
                                            universal))
                if report is not None:
                    jax.block_until_ready(per_seed[-1])
                    report(index * n_seeds + s + 1)
            pieces.append(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_seed))
        runs = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *pieces)

    if bar is not None:
        bar.close()

    def shaped(x):
        return x.reshape(*shape, n_seeds)

    runs = jax.tree_util.tree_map(shaped, runs)
    a_mean, a_err = _summarise(runs.rmse_analysis, runs.failed)
    f_mean, f_err = _summarise(runs.rmse_forecast, runs.failed)
    s_mean, _ = _summarise(runs.spread_analysis, runs.failed)
    return SweepResult(
        grid=values,
        rmse_analysis=runs.rmse_analysis,
        rmse_forecast=runs.rmse_forecast,
        spread_analysis=runs.spread_analysis,
        spread_forecast=runs.spread_forecast,
        failed=runs.failed,
        first_failure=runs.first_failure,
        rmse_analysis_mean=a_mean,
        rmse_analysis_stderr=a_err,
        rmse_forecast_mean=f_mean,
        rmse_forecast_stderr=f_err,
        spread_analysis_mean=s_mean,
        n_failed=jnp.sum(runs.failed, axis=-1).astype(jnp.int32),
        nis_ratio=runs.nis_ratio,
        diverged=runs.diverged,
        n_diverged=jnp.sum(runs.diverged & ~runs.failed, axis=-1).astype(jnp.int32),
        rmse_smoothed=runs.rmse_smoothed,
        rmse_smoothed_mean=_summarise(runs.rmse_smoothed, runs.failed)[0],
        rmse_universal=runs.rmse_universal,
        rmse_universal_mean=_summarise(runs.rmse_universal, runs.failed)[0],
        n_cycles=n_cycles,
        burn_in=burn_in,
    )
