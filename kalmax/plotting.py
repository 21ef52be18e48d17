"""Plots of twin experiments (matplotlib, imported lazily; the `plot` extra).

`plot_twin` draws what people look at after a twin run: truth vs estimate for
a few components with the observations, the RMSE (and spread) over time, and
for gridded models a Hovmöller diagram (Lorenz-96) or a vorticity snapshot
(2-D Navier-Stokes) of truth, estimate and error.
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
    """Write a PNG summarising a `TwinResult`; returns the path written.

    Args:
        result: a `kalmax.experiments.TwinResult` (its `cycles.mean` must be kept).
        path: output PNG path.
        interval: model time per cycle (for the time axis).
        title: figure title.
        kind: "lorenz96" adds a Hovmöller diagram, "navier-stokes" a vorticity
            snapshot; anything else draws the generic panels only.
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
    extra = kind in ("lorenz96", "navier-stokes")
    n_comp = min(3, dx)
    fig = plt.figure(figsize=(12, 3.0 * (n_comp + 1 + (2 if extra else 0))), constrained_layout=True)
    rows = n_comp + 1 + (2 if extra else 0)
    grid = fig.add_gridspec(rows, 3)
    components = np.linspace(0, dx - 1, n_comp).round().astype(int)
    show = slice(0, min(len(times), 400))
    obs_map = _observed_components(observation, dx)
    for row, comp in enumerate(components):
        ax = fig.add_subplot(grid[row, :])
        ax.plot(times[show], truth[show, comp], "k-", lw=1.2, label="truth")
        ax.plot(times[show], mean[show, comp], "C0-", lw=1.0, label="analysis mean")
        if comp in obs_map:
            ax.plot(times[show], ys[show, obs_map[comp]], "C3.", ms=3, label="observations")
        ax.set_ylabel(f"component {comp}")
        if row == 0:
            ax.legend(loc="upper right", fontsize=8)
    ax = fig.add_subplot(grid[n_comp, :])
    ax.plot(times, np.asarray(result.cycles.rmse_analysis), "C0-", lw=0.8, label="analysis rmse")
    ax.plot(times, np.asarray(result.cycles.rmse_forecast), "C1-", lw=0.6, alpha=0.7, label="forecast rmse")
    if result.cycles.spread_analysis is not None:
        ax.plot(times, np.asarray(result.cycles.spread_analysis), "C2--", lw=0.8, label="analysis spread")
    ax.axvline(interval * result.burn_in, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("rmse")
    ax.legend(loc="upper right", fontsize=8)
    if kind == "lorenz96":
        _hovmoller(fig, grid, n_comp + 1, times, truth, mean, plt)
    elif kind == "navier-stokes":
        _vorticity(fig, grid, n_comp + 1, truth, mean, plt)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _observed_components(observation, dx: int) -> dict[int, int]:
    """Map state component -> observation column for operators that observe components."""

    if isinstance(observation, IndexObservation):
        return {component: column for column, component in enumerate(observation.indices)}
    if isinstance(observation, LinearObservation) and observation.offset is None:
        matrix = np.asarray(observation.matrix)
        if matrix.shape == (dx, dx) and np.array_equal(matrix, np.eye(dx)):
            return {i: i for i in range(dx)}
    return {}


def _hovmoller(fig, grid, row, times, truth, mean, plt):
    show = slice(0, min(len(times), 200))
    panels = [("truth", truth[show]), ("analysis mean", mean[show]), ("error", mean[show] - truth[show])]
    vmax = np.max(np.abs(truth[show]))
    for col, (name, field) in enumerate(panels):
        ax = fig.add_subplot(grid[row : row + 2, col])
        lim = vmax if name != "error" else max(np.max(np.abs(field)), 1e-12)
        image = ax.imshow(field, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                          extent=[0, field.shape[1], times[show][0], times[show][-1]])
        ax.set_title(f"Hovmöller: {name}")
        ax.set_xlabel("component")
        ax.set_ylabel("time")
        fig.colorbar(image, ax=ax)


def _vorticity(fig, grid, row, truth, mean, plt):
    n = int(math.isqrt(truth.shape[1]))
    final_truth, final_mean = truth[-1].reshape(n, n), mean[-1].reshape(n, n)
    panels = [("truth vorticity", final_truth), ("analysis vorticity", final_mean), ("error", final_mean - final_truth)]
    vmax = np.max(np.abs(final_truth))
    for col, (name, field) in enumerate(panels):
        ax = fig.add_subplot(grid[row : row + 2, col])
        lim = vmax if name != "error" else max(np.max(np.abs(field)), 1e-12)
        image = ax.imshow(field.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=[0, 2 * np.pi, 0, 2 * np.pi])
        ax.set_title(f"{name} (last cycle)")
        fig.colorbar(image, ax=ax)
