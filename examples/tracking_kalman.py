"""A Kalman-filter twin experiment on 2-D constant-velocity tracking (filter and RTS smoother).

A target moves in the plane with nearly constant velocity. The state is
v = (x, y, vx, vy) and, with time step dt,

    v_{n+1} = M v_n + xi_n,   M = [[I, dt I], [0, I]],
    xi_n ~ N(0, q [[dt^3/3 I, dt^2/2 I], [dt^2/2 I, dt I]])   (white-noise acceleration),
    y_{n+1} = (x, y)_{n+1} + eta,   eta ~ N(0, r^2 I),

so only the position is observed. A truth and its observations are drawn with
`kx.simulate` from a fixed seed; some observations are then removed (single
coordinates at random, whole fixes at random, and one long outage) and marked
missing with NaN. The truth is estimated back with `kx.KalmanFilter` (given
y_1..y_n) and `kx.rts_smoother` (given all of y_1..y_T), and both are scored
against it: RMSE of position and velocity, the fraction of truth components
inside the 95% bands (about 0.95 if the filter is calibrated), and the
log-likelihood log p(y_1..y_T).

Run:
    python examples/tracking_kalman.py [--out tracking.png] [--seed 5]
"""

from __future__ import annotations

import argparse
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kalmax as kx  # noqa: E402

Z_95 = 1.959963984540054  # the 97.5% quantile of N(0, 1)
OUTAGE = (45, 57)  # ys[45:57] missing: cycles 46-57 have no fix
COORDINATES = ("x", "y", "vx", "vy")


def constant_velocity_model(
    dt: float = 1.0, accel_var: float = 0.1, obs_std: float = 4.0
) -> kx.LinearGaussianSSM:
    """The 2-D constant-velocity model with white-noise acceleration, position observed.

    Args:
        dt: time step.
        accel_var: spectral density q of the white-noise acceleration.
        obs_std: standard deviation r of the position measurement noise.
    """
    eye = jnp.eye(2, dtype=jnp.float64)
    zero = jnp.zeros((2, 2), dtype=jnp.float64)
    dynamics = jnp.block([[eye, dt * eye], [zero, eye]])
    dynamics_cov = accel_var * jnp.block(
        [[dt**3 / 3 * eye, dt**2 / 2 * eye], [dt**2 / 2 * eye, dt * eye]]
    )
    return kx.LinearGaussianSSM(
        dynamics=dynamics,
        observation=jnp.block([eye, zero]),
        dynamics_cov=dynamics_cov,
        obs_cov=obs_std**2 * eye,
        init_mean=jnp.zeros(4, dtype=jnp.float64),
        init_cov=jnp.diag(jnp.array([4.0, 4.0, 1.0, 1.0])),
    )


def drop_observations(ys: jax.Array, rng: np.random.Generator, outage: tuple[int, int]) -> jax.Array:
    """Mark observations missing (NaN): 10% of single coordinates, 10% of whole fixes, an outage.

    Args:
        ys: (T, 2) observations.
        rng: NumPy generator choosing which ones go missing.
        outage: (start, stop): `ys[start:stop]` are all missing.
    """
    missing = rng.uniform(size=ys.shape) < 0.1
    missing |= (rng.uniform(size=ys.shape[:1]) < 0.1)[:, None]
    missing[outage[0] : outage[1]] = True
    return jnp.where(jnp.asarray(missing), jnp.nan, ys)


def rmse(estimate, truth) -> float:
    """Root-mean-square error over all cycles and components."""
    return float(np.sqrt(np.mean((np.asarray(estimate) - np.asarray(truth)) ** 2)))


def coverage(mean, cov, truth) -> float:
    """Fraction of truth components inside their marginal 95% band mean +- 1.96 sd."""
    sd = np.sqrt(np.diagonal(np.asarray(cov), axis1=-2, axis2=-1))
    return float(np.mean(np.abs(np.asarray(truth) - np.asarray(mean)) <= Z_95 * sd))


def run_experiment(seed: int = 5, n_steps: int = 80, outage: tuple[int, int] = OUTAGE):
    """Simulate, drop observations, filter and smooth.

    Args:
        seed: PRNG seed of the truth, the observations and which go missing.
        n_steps: number of cycles T.
        outage: (start, stop): `ys[start:stop]` are all missing.

    Returns:
        (truth, ys, history, smoothed): truth (T, 4) holds v_1..v_T (aligned with
        `ys`), ys (T, 2) has NaN for missing entries, `history` the filter's
        `History` (means and covariances), `smoothed` the `SmootherResult`.
    """
    model = constant_velocity_model()
    states, ys = kx.simulate(model, jax.random.key(seed), n_steps)
    ys = drop_observations(ys, np.random.default_rng(seed), outage)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True))
    smoothed = kx.rts_smoother(model, ys)
    return states[1:], ys, history, smoothed


def print_table(truth, ys, history, smoothed, outage: tuple[int, int]) -> None:
    """Filter vs smoother scores against the truth."""
    truth = np.asarray(truth)
    ys = np.asarray(ys)
    observed = np.isfinite(ys)
    obs_rmse = float(np.sqrt(np.mean((ys[observed] - truth[:, :2][observed]) ** 2)))
    print(f"2-D constant-velocity tracking, T = {len(ys)} cycles, "
          f"{np.mean(~observed):.0%} of position readings missing")
    print(f"{'':>20} {'position RMSE':>14} {'velocity RMSE':>14} {'in 95% band':>12}")
    print(f"{'observations':>20} {obs_rmse:14.3f} {'-':>14} {'-':>12}")
    for name, mean, cov in [
        ("Kalman filter", history.mean, history.cov),
        ("RTS smoother", smoothed.mean, smoothed.cov),
    ]:
        print(
            f"{name:>20} {rmse(mean[:, :2], truth[:, :2]):14.3f} "
            f"{rmse(mean[:, 2:], truth[:, 2:]):14.3f} {coverage(mean, cov, truth):12.2f}"
        )
    log_likelihood = float(jnp.sum(history.info.log_likelihood))
    print(f"log-likelihood log p(y_1..y_T) = {log_likelihood:.2f}")
    print(f"(scores over all cycles, including the outage with no fixes in cycles "
          f"{outage[0] + 1}-{outage[1]}, where the filter can only extrapolate)")


def plot(truth, ys, history, smoothed, outage: tuple[int, int], out: pathlib.Path) -> None:
    """Write a PNG: each coordinate over time, and the 2-D track."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, ys = np.asarray(truth), np.asarray(ys)
    times = np.arange(1, len(ys) + 1)
    estimates = [
        ("filter", np.asarray(history.mean), np.asarray(history.cov), "tab:blue"),
        ("smoother", np.asarray(smoothed.mean), np.asarray(smoothed.cov), "tab:red"),
    ]
    fig = plt.figure(figsize=(13, 8))
    grid = fig.add_gridspec(4, 2, width_ratios=[1.3, 1])
    for i, name in enumerate(COORDINATES):
        ax = fig.add_subplot(grid[i, 0])
        ax.axvspan(outage[0] + 0.5, outage[1] + 0.5, color="tab:orange", alpha=0.12, label="outage")
        ax.plot(times, truth[:, i], color="k", lw=1.2, label="truth")
        if i < 2:
            ax.plot(times, ys[:, i], ".", color="0.45", ms=4, label="observation")
        for label, mean, cov, color in estimates:
            sd = np.sqrt(cov[:, i, i])
            ax.plot(times, mean[:, i], color=color, lw=1.2, label=f"{label} mean")
            ax.fill_between(times, mean[:, i] - Z_95 * sd, mean[:, i] + Z_95 * sd,
                            color=color, alpha=0.18, label=f"{label} 95% band")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if i < 3:
            ax.tick_params(labelbottom=False)
    ax.set_xlabel("cycle n")
    fig.axes[0].legend(loc="best", fontsize=7, ncol=3)
    fig.axes[0].set_title("each coordinate over time (cycle n: after observation y_n)")

    track = fig.add_subplot(grid[:, 1])
    track.plot(truth[:, 0], truth[:, 1], color="k", lw=1.2, label="truth")
    track.plot(ys[:, 0], ys[:, 1], ".", color="0.45", ms=4, label="observations (both coordinates)")
    for label, mean, _, color in estimates:
        track.plot(mean[:, 0], mean[:, 1], color=color, lw=1.2, label=f"{label} mean")
    gap = slice(max(outage[0] - 1, 0), outage[1] + 1)
    track.plot(truth[gap, 0], truth[gap, 1], color="tab:orange", lw=5, alpha=0.35, zorder=0,
               label=f"truth during the outage (cycles {outage[0] + 1}-{outage[1]})")
    track.plot(truth[0, 0], truth[0, 1], "k^", ms=7, label="start")
    track.set_xlabel("x")
    track.set_ylabel("y")
    track.set_aspect("equal", adjustable="datalim")
    track.grid(alpha=0.3)
    track.legend(loc="best", fontsize=8)
    track.set_title("2-D track")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tracking.png"),
                        help="where to write the PNG plot (default: tracking.png)")
    parser.add_argument("--seed", type=int, default=5,
                        help="PRNG seed of the twin experiment (default 5: a track that turns during the outage)")
    args = parser.parse_args(argv)

    outage = OUTAGE
    truth, ys, history, smoothed = run_experiment(seed=args.seed, outage=outage)
    print_table(truth, ys, history, smoothed, outage)
    plot(truth, ys, history, smoothed, outage, args.out)
    print(f"wrote {args.out.resolve()}")
    print("parameter estimation by maximum likelihood on real data: python examples/nile_mle.py")


if __name__ == "__main__":
    main()
