"""Plots of twin experiments (matplotlib, imported lazily; the `plot` extra).

`plot_twin` draws what people look at after a twin run: truth vs estimate for
a few components with the observations, the RMSE (and spread) over time, the
rank histogram of an ensemble, and for gridded models a Hovmöller diagram
(Lorenz-96) or the vorticity fields (2-D Navier-Stokes) of truth, estimate and
error. `twin_figure` returns the figure instead of writing it.
"""

from __future__ import annotations

import math

import numpy as np

from .observations import IndexObservation, LinearObservation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_twin(
    result, path: str, *, interval: float = 1.0, title: str = "", kind: str = "generic", observation=None
) -> str:
    """Write a PNG summarising a `TwinResult` (`twin_figure`); returns the path written."""
    plt = _pyplot()
    fig = twin_figure(result, interval=interval, title=title, kind=kind, observation=observation)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def twin_figure(result, *, interval: float = 1.0, title: str = "", kind: str = "generic", observation=None):
    """The matplotlib figure of a `TwinResult`.

    Panels, every axis labelled and every map with a labelled colourbar:
    truth, analysis mean and observations of three components (not for
    Navier-Stokes, whose components are grid points); the analysis and forecast
    rmse and the spread over time, with the end of the burn-in marked; all time
    panels share one time axis over the whole run; for a smoother (EnKS, IEnKS, FourDVar)
    its smoothed mean and smoothed rmse beside the filtered ones; the rank histogram of an
    ensemble (frequencies against the flat line of a calibrated ensemble); for
    `kind="lorenz96"` Hovmöller diagrams of truth, analysis and error (truth and
    analysis on one colour scale), for `kind="navier-stokes"` the vorticity
    fields of the last cycle on the 2-D grid.

    Args:
        result: a `kalmax.experiments.TwinResult` (its `cycles.mean` must be kept).
        interval: model time per cycle (for the time axis).
        title: figure title.
        kind: "lorenz96", "navier-stokes", or anything else for the generic panels.
        observation: the model's observation operator; when it observes state
            components directly (`IndexObservation`, or an identity matrix), the
            observations are drawn on the component panels.
    """
    plt = _pyplot()
    truth = np.asarray(result.truth[1:])
    mean = np.asarray(result.cycles.mean)
    ys = np.asarray(result.ys)
    times = interval * np.arange(1, truth.shape[0] + 1)
    dx = truth.shape[1]
    gridded = kind in ("lorenz96", "navier-stokes")
    n_comp = 0 if kind == "navier-stokes" else min(3, dx)
    smoothed = _smoothed(result)  # (times, means) of a smoother's finished estimates, or None
    ranks = result.stats.rank_histogram
    rows = n_comp + 1 + (2 if gridded else 0) + (1 if ranks is not None else 0)
    fig = plt.figure(figsize=(12, 2.8 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 3)
    components = np.linspace(0, dx - 1, n_comp).round().astype(int)
    obs_map = _observed_components(observation, dx)
    first = None
    for row, comp in enumerate(components):
        ax = fig.add_subplot(grid[row, :], sharex=first)
        first = first or ax
        ax.plot(times, truth[:, comp], "k-", lw=1.2, label="truth")
        ax.plot(times, mean[:, comp], "C0-", lw=1.0, label="analysis mean")
        if smoothed is not None:
            ax.plot(interval * smoothed[0], smoothed[1][:, comp], "C4-", lw=1.0, label=f"smoothed mean (lag {result.lag})")
        if comp in obs_map:
            ax.plot(times, ys[:, obs_map[comp]], "C3.", ms=3, label="observations")
        ax.set_ylabel(f"v[{comp}]")
        ax.set_xlabel("time")
        if row == 0:
            ax.legend(loc="upper right", fontsize=8)
    ax = fig.add_subplot(grid[n_comp, :], sharex=first)
    ax.plot(times, np.asarray(result.cycles.rmse_analysis), "C0-", lw=0.8, label="analysis rmse")
    ax.plot(times, np.asarray(result.cycles.rmse_forecast), "C1-", lw=0.6, alpha=0.7, label="forecast rmse")
    if result.cycles.spread_analysis is not None:
        ax.plot(times, np.asarray(result.cycles.spread_analysis), "C2--", lw=0.8, label="analysis spread")
    if smoothed is not None:
        states = np.asarray(result.truth)[smoothed[0]]
        ax.plot(interval * smoothed[0], np.sqrt(np.mean((smoothed[1] - states) ** 2, axis=1)), "C4-", lw=0.8,
                label="smoothed rmse")
    if result.cycles.rmse_universal is not None:
        # row n follows the finished estimate of v_{n+1-lag} through the interval that starts there
        start = np.arange(result.cycles.rmse_universal.shape[0]) + 1 - (result.lag or 0)
        keep = start >= 0
        ax.plot(interval * (start[keep] + 0.5), np.asarray(result.cycles.rmse_universal)[keep], "C5-", lw=0.6,
                label="universal rmse (interval mean)")
    if result.burn_in > 0:
        ax.axvline(interval * result.burn_in, color="grey", ls=":", lw=1,
                   label=f"end of burn-in ({result.burn_in} cycles)")
    ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("rmse / spread")
    ax.legend(loc="upper right", fontsize=8)
    row = n_comp + 1
    if kind == "lorenz96":
        _hovmoller(fig, grid, row, times, truth, mean)
    elif kind == "navier-stokes":
        _vorticity(fig, grid, row, truth, mean)
    if ranks is not None:
        _rank_histogram(fig.add_subplot(grid[rows - 1, 1]), np.asarray(ranks, dtype=np.float64))
    if title:
        fig.suptitle(title)
    return fig


def _smoothed(result):
    """(state indices, smoothed means) of a smoother's twin run: `info.lagged_mean[n]`
    estimates v_{n + 1 - lag} for n >= lag - 1 (the finished estimates); None for a filter."""
    lagged = getattr(result.cycles.info, "lagged_mean", None)
    if result.lag is None or lagged is None or lagged.shape[0] < result.lag:
        return None
    means = np.asarray(lagged)[result.lag - 1:]
    return np.arange(means.shape[0]), means


def _observed_components(observation, dx: int) -> dict[int, int]:
    """Map state component -> observation column for operators that observe components."""

    if isinstance(observation, IndexObservation):
        return {component: column for column, component in enumerate(observation.indices)}
    if isinstance(observation, LinearObservation) and observation.offset is None:
        matrix = np.asarray(observation.matrix)
        if matrix.shape == (dx, dx) and np.array_equal(matrix, np.eye(dx)):
            return {i: i for i in range(dx)}
    return {}


def _maps(fig, grid, row, panels, extent, labels, colourbar_label, aspect):
    """Truth, analysis and error side by side: truth and analysis on the truth's colour
    scale, the error on its own symmetric one; each with a labelled colourbar."""
    vmax = max(float(np.max(np.abs(panels[0][1]))), 1e-12)
    for col, (name, field) in enumerate(panels):
        ax = fig.add_subplot(grid[row: row + 2, col])
        lim = vmax if name != "error" else max(float(np.max(np.abs(field))), 1e-12)
        image = ax.imshow(field, aspect=aspect, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent)
        ax.set_title(name)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        bar = fig.colorbar(image, ax=ax)
        bar.set_label(f"{colourbar_label} error" if name == "error" else colourbar_label)


def _hovmoller(fig, grid, row, times, truth, mean):
    panels = [("truth", truth), ("analysis mean", mean), ("error", mean - truth)]
    _maps(fig, grid, row, panels, [0, truth.shape[1], times[0], times[-1]], ("component k", "time"), "v_k", "auto")


def _vorticity(fig, grid, row, truth, mean):
    n = int(math.isqrt(truth.shape[1]))
    final_truth, final_mean = truth[-1].reshape(n, n).T, mean[-1].reshape(n, n).T
    panels = [("truth vorticity (last cycle)", final_truth), ("analysis vorticity", final_mean),
              ("error", final_mean - final_truth)]
    _maps(fig, grid, row, panels, [0, 2 * np.pi, 0, 2 * np.pi], ("x", "y"), "vorticity", "equal")


def _rank_histogram(ax, counts):
    frequencies = counts / max(counts.sum(), 1.0)
    ax.bar(np.arange(counts.size), frequencies, color="C0", width=0.9)
    ax.axhline(1.0 / counts.size, color="k", ls="--", lw=1, label="calibrated (flat)")
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency")
    ax.set_title("rank histogram (after burn-in)")
    ax.legend(loc="upper right", fontsize=8)
