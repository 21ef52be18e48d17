"""Results as labelled data: `History`, `TwinResult`, `SweepResult` and `InversionResult`
as xarray Datasets with named dimensions, and saved to NetCDF.

    dataset = kx.to_xarray(result, method="ETKF N=24")   # xarray.Dataset
    kx.to_netcdf(result, "run.nc")                       # and back: xarray.open_dataset("run.nc")

Dimensions: `time` (assimilation cycle n, the analysis after y_{n+1}; `time` 0..T-1,
and `truth_time` 0..T for the truth v_0..v_T), `component` (state variable), `observed`
(observation entry), `member` (ensemble member), `rank` (rank-histogram bin), `seed`,
one dimension per swept hyperparameter (its values as coordinate), `iteration` (of an
inversion). Scalars go to `attrs` with the keyword attributes given (the method, its
settings). Fields the result does not hold (None) are left out; booleans are stored as
int8 (NetCDF has no boolean type).

xarray is an optional dependency (`pip install kalmax[labelled]`); NetCDF files are
written with the engine xarray chooses (netCDF4 or h5netcdf if installed, else SciPy's
NetCDF3 writer).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from .experiments import TwinResult
from .history import History
from .inversion.invert import InversionResult
from .results import RESULTS
from .sweep import SweepResult


def _xarray():
    try:
        import xarray
    except ImportError as err:  # pragma: no cover - the test extra installs it
        raise ImportError("labelled results need xarray: pip install 'kalmax[labelled]' (or pip install xarray)") \
            from err
    return xarray


def _array(x):
    array = np.asarray(x)
    return array.astype(np.int8) if array.dtype == np.bool_ else array


def _info_variables(info, dims: tuple[str, ...], prefix: str = "info_") -> dict:
    """Per-cycle fields of a method's `Info` (leading dims `dims`), named info_<field>."""
    out = {}
    for name in getattr(info, "__dataclass_fields__", {}):
        value = getattr(info, name)
        if value is None or not hasattr(value, "shape"):
            continue
        array = _array(value)
        extra = tuple(f"{name}_{k}" for k in range(array.ndim - len(dims)))
        out[prefix + name] = (dims + extra, array)
    return out


def history_dataset(history: History, **attrs):
    """A `History` as a Dataset: mean / forecast_mean (time, component), cov /
    forecast_cov (time, component, component_2), ensemble members of `Save(state=True)`
    (time, member, component), and the info fields (time)."""
    xr = _xarray()
    variables = {}
    for name in ("mean", "forecast_mean"):
        value = getattr(history, name)
        if value is not None:
            variables[name] = (("time", "component"), _array(value))
    for name in ("cov", "forecast_cov"):
        value = getattr(history, name)
        if value is not None:
            variables[name] = (("time", "component", "component_2"), _array(value))
    members = getattr(history.state, "members", None)
    if members is not None:
        variables["members"] = (("time", "member", "component"), _array(members))
    variables.update(_info_variables(history.info, ("time",)))
    dataset = xr.Dataset(variables)
    return dataset.assign_coords(time=np.arange(dataset.sizes["time"])).assign_attrs(attrs)


def twin_dataset(result: TwinResult, **attrs):
    """A `TwinResult` as a Dataset: truth (truth_time, component), ys (time, observed),
    the per-cycle scores (time) and analysis means (time, component), the time-averaged
    statistics as attributes (stats_<name>), the rank histogram (rank), and `burn_in`."""
    xr = _xarray()
    variables = {"truth": (("truth_time", "component"), _array(result.truth)),
                 "ys": (("time", "observed"), _array(result.ys))}
    cycles = result.cycles
    for name in ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast", "crps_analysis",
                 "rmse_universal"):
        value = getattr(cycles, name)
        if value is not None:
            variables[name] = (("time",), _array(value))
    if cycles.mean is not None:
        variables["mean"] = (("time", "component"), _array(cycles.mean))
    if cycles.rank_counts is not None:
        variables["rank_counts"] = (("time", "rank"), _array(cycles.rank_counts))
    variables.update(_info_variables(cycles.info, ("time",)))
    stats = result.stats
    if stats.rank_histogram is not None:
        variables["rank_histogram"] = (("rank",), _array(stats.rank_histogram))
    summary = {f"stats_{name}": float(getattr(stats, name))
               for name in ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast", "crps_analysis",
                            "nis_ratio", "rmse_smoothed", "spread_smoothed", "rmse_universal")
               if getattr(stats, name) is not None}
    summary["stats_diverged"] = int(bool(stats.diverged))
    dataset = xr.Dataset(variables, coords={"time": np.arange(result.ys.shape[0]),
                                            "truth_time": np.arange(result.truth.shape[0])})
    return dataset.assign_attrs(burn_in=result.burn_in, **summary, **attrs)


def sweep_dataset(result: SweepResult, **attrs):
    """A `SweepResult` as a Dataset: one dimension per hyperparameter (its values as
    coordinate) and `seed` for per-run scores; the summaries over seeds without `seed`."""
    xr = _xarray()
    names = list(result.grid)
    coords = {name: np.asarray(values) for name, values in result.grid.items()}
    coords["seed"] = np.arange(result.n_seeds)
    per_run = ("rmse_analysis", "rmse_forecast", "spread_analysis", "spread_forecast", "failed", "first_failure",
               "nis_ratio", "diverged", "rmse_smoothed", "rmse_universal")
    summaries = ("rmse_analysis_mean", "rmse_analysis_stderr", "rmse_forecast_mean", "rmse_forecast_stderr",
                 "spread_analysis_mean", "n_failed", "n_diverged", "rmse_smoothed_mean", "rmse_universal_mean")
    variables = {name: ((*names, "seed"), _array(getattr(result, name))) for name in per_run}
    variables.update({name: (tuple(names), _array(getattr(result, name))) for name in summaries})
    dataset = xr.Dataset(variables, coords=coords)
    return dataset.assign_attrs(n_cycles=result.n_cycles, burn_in=result.burn_in, **attrs)


def inversion_dataset(result: InversionResult, **attrs):
    """An `InversionResult` as a Dataset over `iteration` 0..n_iterations (the padding rows
    beyond the run are left out): means and variances (iteration, parameter), misfit, time,
    step size, failures (iteration, member), the final ensemble (member, parameter) when the
    method has one, and the stopping reason as attributes."""
    xr = _xarray()
    n = int(result.n_iterations) + 1
    history = result.history
    variables = {
        "mean": (("iteration", "parameter"), _array(history.mean[:n])),
        "variance": (("iteration", "parameter"), _array(history.variance[:n])),
        "physical_mean": (("iteration", "parameter"), _array(history.physical_mean[:n])),
        "misfit": (("iteration",), _array(history.misfit[:n])),
        "time": (("iteration",), _array(history.time[:n])),
        "step_size": (("iteration",), _array(history.step_size[:n])),
        "failures": (("iteration", "member"), _array(history.failures[:n])),
    }
    ensemble = getattr(result.state, "ensemble", None)
    if ensemble is not None and np.ndim(ensemble) == 2:
        variables["ensemble"] = (("member", "parameter"), _array(ensemble))
    dataset = xr.Dataset(variables, coords={"iteration": np.arange(n)})
    return dataset.assign_attrs(code=int(result.code), message=RESULTS(int(result.code)).message,
                                n_iterations=int(result.n_iterations), **attrs)


def to_xarray(result, **attrs):
    """`result` (a `History`, `TwinResult`, `SweepResult` or `InversionResult`) as an
    `xarray.Dataset`; `attrs` (str, int or float values, e.g. method="ETKF N=24") are
    added to its attributes."""
    for kind, convert in ((History, history_dataset), (TwinResult, twin_dataset), (SweepResult, sweep_dataset),
                          (InversionResult, inversion_dataset)):
        if isinstance(result, kind):
            for name, value in attrs.items():
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise TypeError(f"attribute `{name}` must be a str, int or float (NetCDF attributes); "
                                    f"got {type(value).__name__}")
            if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(result)):
                raise TypeError("`result` holds traced values: convert it outside jit / vmap / grad")
            return convert(result, **attrs)
    raise TypeError(f"`result` must be a History, TwinResult, SweepResult or InversionResult; "
                    f"got {type(result).__name__}")


def to_netcdf(result, path: str | os.PathLike, **attrs) -> str:
    """Save `to_xarray(result, **attrs)` to the NetCDF file `path`; returns the path.
    Read it back with `xarray.open_dataset(path)`."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"`path` {path}: the folder {folder} does not exist")
    to_xarray(result, **attrs).to_netcdf(path)
    return str(path)


__all__ = ["history_dataset", "inversion_dataset", "sweep_dataset", "to_netcdf", "to_xarray", "twin_dataset"]
