"""The iterative ensemble Kalman smoother against the EnKF on Lorenz-63, with 4D-Var beside them.

    .venv/bin/python examples/lorenz63_smoothers.py --out lorenz63_smoothers.png

The set-up of Sakov, Oliver & Bertino (2012) as DAPPER runs it (`kalmax.presets.
lorenz63_sakov2012`): all three variables observed every 0.25 time units (25 RK4 steps)
with noise variance 2, long enough between observations for the dynamics to be strongly
nonlinear. A 10-member ETKF (inflation 1.02, rotation) loses accuracy there (DAPPER's
published rmse 0.60); the iEnKF, the same ensemble with Gauss-Newton iterations over
the interval (`kx.IEnKS(10, lag=1)`), reaches 0.31, and the iEnKS with a window of two
intervals also smooths the past (Bocquet & Sakov 2014). Strong-constraint 4D-Var
(`kx.FourDVar`, background 0.1 x climatology) is shown for comparison. The plot shows
the three variables of the truth, the observations and each method's filtered
estimate, and the rmse of each against time.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import kalmax as kx  # noqa: E402
from kalmax.presets import lorenz63_sakov2012  # noqa: E402


def run(n_cycles: int = 1000, burn_in: int = 200, seed: int = 0) -> dict:
    """Truth, data and the estimates of each method; the time-averaged rmse after `burn_in`."""
    setup = lorenz63_sakov2012(n_cycles)
    model = setup.model
    key_truth, key_method, key_clim = jax.random.split(jax.random.key(seed), 3)
    truth, ys = kx.simulate(model, key_truth, n_cycles)
    background = 0.1 * kx.climatology_cov(model, key_clim, 5000, spin_up=200)
    methods = {
        "EnKF (ETKF)": kx.EnKF(10, kx.SquareRoot(), inflation=1.02, rotate=True),
        "iEnKF (iEnKS, lag 1)": kx.IEnKS(10, lag=1, inflation=1.02, rotate=True),
        "iEnKS, lag 2": kx.IEnKS(10, lag=2, inflation=1.02, rotate=True),
        "4D-Var, lag 1": kx.FourDVar(background, lag=1, n_iter=5),
    }
    out = {"times": setup.interval * np.arange(n_cycles + 1), "truth": np.asarray(truth), "ys": np.asarray(ys),
           "estimates": {}, "smoothed": {}, "rmse": {}, "rmse_smoothed": {}, "burn_in": burn_in}

    def rmse_of(mean):
        return float(np.mean(np.sqrt(np.mean((np.asarray(mean[burn_in:]) - np.asarray(truth[burn_in + 1:])) ** 2,
                                             axis=1))))

    for name, method in methods.items():
        if isinstance(method, kx.AbstractSmoother):
            result = kx.smooth(model, method, ys, None if isinstance(method, kx.FourDVar) else key_method)
            filtered, smoothed = result.filtered.mean, result.mean
            out["smoothed"][name] = np.asarray(smoothed)
            out["rmse_smoothed"][name] = rmse_of(smoothed)
        else:
            _, history = kx.assimilate(model, method, ys, key_method)
            filtered = history.mean
        out["estimates"][name] = np.asarray(filtered)
        out["rmse"][name] = rmse_of(filtered)
    return out


def table(out: dict) -> str:
    lines = [f"rmse averaged over cycles {out['burn_in']}..{len(out['ys']) - 1} (DAPPER lists 0.60 for the EnKF, "
             "0.31 for the iEnKF):", f"{'method':<22} {'filtered':>9} {'smoothed':>9}"]
    for name, value in out["rmse"].items():
        smoothed = out["rmse_smoothed"].get(name)
        lines.append(f"{name:<22} {value:9.3f} {'' if smoothed is None else f'{smoothed:9.3f}'}")
    return "\n".join(lines)


def plot(out: dict, path: str, window: int = 60) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, truth = out["times"], out["truth"]
    last = slice(len(times) - window, len(times))
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True, constrained_layout=True)
    styles = {"EnKF (ETKF)": ("C3", "--"), "iEnKF (iEnKS, lag 1)": ("C0", "-"), "iEnKS, lag 2": ("C2", "-."),
              "4D-Var, lag 1": ("C4", ":")}
    for component, ax in enumerate(axes[:3]):
        ax.plot(times[last], truth[last, component], "k-", lw=2, label="truth")
        ax.plot(times[last], out["ys"][last.start - 1:, component], "k.", ms=4, label="observations")
        for name, estimate in out["estimates"].items():
            colour, style = styles[name]
            ax.plot(times[last], estimate[last.start - 1:, component], color=colour, ls=style, label=name)
        ax.set_ylabel("xyz"[component])
    axes[0].legend(ncol=3, fontsize=8, loc="upper left")
    axes[0].set_title("Lorenz-63, observed every 0.25 time units: filtered estimates over the last cycles")
    ax = axes[3]
    for name, estimate in out["estimates"].items():
        colour, style = styles[name]
        error = np.sqrt(np.mean((estimate[last.start - 1:] - truth[last]) ** 2, axis=1))
        ax.plot(times[last], error, color=colour, ls=style, label=f"{name} (mean {out['rmse'][name]:.2f})")
    ax.set_ylabel("rmse")
    ax.set_xlabel("time")
    ax.legend(ncol=2, fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="lorenz63_smoothers.png")
    args = parser.parse_args(argv)
    out = run(args.cycles, min(200, args.cycles // 5), args.seed)
    print(table(out))
    print(f"wrote {plot(out, args.out)}")


if __name__ == "__main__":
    main()
