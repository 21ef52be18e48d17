"""The LETKF on 2-D Navier-Stokes from partial observations.

The truth is 2-D incompressible Navier-Stokes on the torus (vorticity form,
pseudo-spectral, 64 x 64 by default), a draw from a smooth random field
N(0, beta^2 (-Laplacian)^(-2)) (`kalmax.presets.navier_stokes_law_stuart`);
every 4th grid point in each direction is observed with noise (1/16 of the
field). A 20-member LETKF (Hunt, Kostelich & Szunyogh 2007) starts from 20
independent draws of the same prior (whose mean, the zero field, is far from
the truth), with Gaspari-Cohn localisation on the periodic grid
(`Periodic2D`, distances in grid units): each grid point is analysed with the
observations within twice the localisation radius, so 20 members suffice for
a 4,096-dimensional state. The plot shows the truth, the analysis mean and
the error vorticity at the last time, and the rmse and ensemble spread
against time.

    python examples/navier_stokes_letkf.py [--grid 64] [--cycles 100] [--members 20] [--out ns_letkf.png]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import kalmax as kx  # noqa: E402
from kalmax.ensemble.localization import GaspariCohn, Localization, Periodic2D  # noqa: E402
from kalmax.filters.letkf import LETKF  # noqa: E402
from kalmax.presets import navier_stokes_law_stuart  # noqa: E402


def run(grid_size: int = 64, n_cycles: int = 100, ensemble_size: int = 20, observe_every: int = 4,
        seed: int = 0, radius: float | None = None, inflation: float = 1.05, batch_size: int | None = None):
    """Truth and observations from the preset, then the LETKF from prior draws.

    Args:
        radius: Gaspari-Cohn half-width c in grid units (zero beyond 2c);
            default: the observation spacing `observe_every`.

    Returns:
        dict with times (T,), rmse (T,) and spread (T,) of the analysis,
        rmse_prior (error of the prior mean), obs_std, seconds (wall time of the
        compiled run, compile included), and the last truth / analysis fields (n, n).
    """
    setup = navier_stokes_law_stuart(n_cycles=n_cycles, grid_size=grid_size, observe_every=observe_every)
    model = setup.model
    key_truth, key_filter = jax.random.split(jax.random.key(seed))
    truth, ys = kx.simulate(model, key_truth, n_cycles)
    radius = float(observe_every) if radius is None else float(radius)
    localization = Localization(Periodic2D(grid_size), GaspariCohn(radius))
    flt = LETKF(ensemble_size, localization, inflation=inflation, batch_size=batch_size)
    start = time.perf_counter()
    _, history = kx.assimilate(model, flt, ys, key_filter)
    means = jax.block_until_ready(history.mean)
    seconds = time.perf_counter() - start
    n = grid_size
    return {
        "times": setup.interval * np.arange(1, n_cycles + 1),
        "rmse": np.asarray(kx.metrics.rmse(means, truth[1:])),
        "spread": np.asarray(history.info.spread),
        "rmse_prior": float(kx.metrics.rmse(model.init_mean, truth[0])),
        "obs_std": float(jnp.sqrt(model.obs_cov.diagonal()[0])),
        "seconds": seconds,
        "grid_size": n,
        "ensemble_size": ensemble_size,
        "truth": np.asarray(truth[-1]).reshape(n, n),
        "analysis": np.asarray(means[-1]).reshape(n, n),
    }


def plot(out: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, :])
    ax.semilogy(out["times"], out["rmse"], "C0-", label="LETKF analysis rmse")
    ax.semilogy(out["times"], out["spread"], "C0--", label="LETKF ensemble spread")
    ax.axhline(out["rmse_prior"], color="C3", ls="-.", label="error of the prior mean")
    ax.axhline(out["obs_std"], color="k", ls=":", label="observation noise std")
    ax.set_xlabel("time")
    ax.set_ylabel("vorticity")
    ax.legend()
    n = out["grid_size"]
    ax.set_title(f"LETKF, {out['ensemble_size']} members, on 2-D Navier-Stokes {n} x {n} (partial observations)")
    lim = np.max(np.abs(out["truth"]))
    extent = [0, 2 * np.pi, 0, 2 * np.pi]
    panels = [("truth", out["truth"], lim), ("analysis mean", out["analysis"], lim)]
    err = out["analysis"] - out["truth"]
    panels.append(("error (analysis - truth)", err, max(np.max(np.abs(err)), 1e-12)))
    for col, (title, field, vlim) in enumerate(panels):
        axf = fig.add_subplot(grid[1, col])
        image = axf.imshow(field.T, origin="lower", cmap="RdBu_r", vmin=-vlim, vmax=vlim, extent=extent)
        axf.set_title(f"{title} (last time)")
        fig.colorbar(image, ax=axf, shrink=0.8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--observe-every", type=int, default=4)
    parser.add_argument("--radius", type=float, default=None, help="Gaspari-Cohn half-width in grid units")
    parser.add_argument("--inflation", type=float, default=1.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ns_letkf.png")
    args = parser.parse_args(argv)
    out = run(args.grid, args.cycles, args.members, args.observe_every, args.seed, args.radius, args.inflation)
    tail = slice(len(out["times"]) // 2, None)
    print(f"state dimension {args.grid ** 2}, {args.members} members, {args.cycles} cycles")
    print(f"run time {out['seconds']:.1f} s (compile included), {1e3 * out['seconds'] / args.cycles:.1f} ms per cycle")
    print(f"error of the prior mean {out['rmse_prior']:.3f}; observation noise std {out['obs_std']:.3f}")
    print(f"second-half mean: rmse {out['rmse'][tail].mean():.4f}, spread {out['spread'][tail].mean():.4f}")
    print(f"wrote {plot(out, args.out)}")


if __name__ == "__main__":
    main()
