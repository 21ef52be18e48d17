"""The `kalmax` command: twin experiments from the shell.

    kalmax list
    kalmax twin --model lorenz96 --method 3dvar --cycles 1000 --seed 0 --plot out.png

Methods take their published hyperparameters for each preset by default
(e.g. DAPPER's `Var3D(xB=0.02)` and `ExtKF(infl=10)` on Lorenz-96); options
override them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# Hyperparameters published with the reference set-ups (../shared/reference).
_DEFAULT_XB = {"lorenz63-sakov2012": 0.1, "lorenz96-sakov2008": 0.02}
_DEFAULT_EKF_INFL = {"lorenz63-sakov2012": 180.0, "lorenz96-sakov2008": 10.0}


@dataclass(frozen=True)
class MethodEntry:
    """A method the command can build for a preset."""

    build: Callable
    description: str


def _build_3dvar(setup, args, key):
    import jax.numpy as jnp

    from .experiments import climatology_cov
    from .filters.var3d import ThreeDVar

    if setup.name == "navier-stokes-law-stuart":
        from .spectral_covariance import FourierCovariance

        n = int(round(setup.model.state_dim**0.5))
        beta = 0.5 if args.beta is None else args.beta
        return ThreeDVar(FourierCovariance(n, beta=beta, alpha=2.0, dtype=setup.model.dtype))
    xb = args.xb if args.xb is not None else _DEFAULT_XB.get(setup.name, 0.1)
    clim = climatology_cov(setup.model, key, args.climatology_steps, spin_up=500)
    return ThreeDVar(jnp.asarray(xb, clim.dtype) * clim)


def _build_ekf(setup, args, key):
    from .filters.extended import ExtendedKalmanFilter

    infl = args.inflation if args.inflation is not None else _DEFAULT_EKF_INFL.get(setup.name, 1.0)
    return ExtendedKalmanFilter.per_unit_time(infl, setup.interval)


def _build_ukf(setup, args, key):
    from .filters.extended import UnscentedKalmanFilter

    infl = args.inflation if args.inflation is not None else 1.0
    return UnscentedKalmanFilter(alpha=args.alpha, beta=2.0, kappa=0.0, inflation=infl)


METHODS: dict[str, MethodEntry] = {
    "3dvar": MethodEntry(_build_3dvar, "ThreeDVar: B = xB * climatology (Fourier-diagonal for Navier-Stokes)"),
    "ekf": MethodEntry(_build_ekf, "ExtendedKalmanFilter: inflation per unit time (DAPPER's ExtKF(infl))"),
    "ukf": MethodEntry(_build_ukf, "UnscentedKalmanFilter: 2d+1 sigma points"),
}


def _progress_bar(stream):
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - start
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} cycles  {elapsed:6.1f} s")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return report


def _cmd_list(args) -> int:
    from .presets import MODELS, PRESETS

    print("models (--model):")
    for name, preset in MODELS.items():
        print(f"  {name:<16} default preset {preset}")
    print("presets (--preset):")
    for name, factory in PRESETS.items():
        doc = (factory.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<26} {doc}")
    print("methods (--method):")
    for name, entry in METHODS.items():
        print(f"  {name:<8} {entry.description}")
    return 0


def _cmd_twin(args) -> int:
    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    from .experiments import twin_experiment
    from .plotting import plot_twin
    from .presets import MODELS, get_preset

    if args.method not in METHODS:
        print(f"error: unknown method {args.method!r}; valid methods: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    try:
        setup = get_preset(args.preset or args.model, n_cycles=args.cycles)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    key = jax.random.key(args.seed)
    key_method, key_run = jax.random.split(key)
    method = METHODS[args.method].build(setup, args, key_method)
    burn_in = setup.burn_in if args.burn_in is None else args.burn_in
    # Chunked scans only to draw a progress bar on a terminal (one compiled chunk).
    chunk = max(1, setup.n_cycles // 40) if (setup.n_cycles >= 200 and sys.stderr.isatty()) else None
    print(f"{setup.name}: {type(method).__name__}, {setup.n_cycles} cycles, seed {args.seed}, burn-in {burn_in} cycles")
    started = time.perf_counter()
    result = twin_experiment(
        setup.model, method, setup.n_cycles, key_run, burn_in=burn_in,
        chunk_size=chunk, progress=_progress_bar(sys.stderr) if chunk else None,
    )
    elapsed = time.perf_counter() - started
    print(result.stats.table(f"time-averaged over cycles {burn_in}..{setup.n_cycles - 1} ({elapsed:.1f} s)"))
    if setup.reference:
        print(f"reference: {setup.reference}")
    if args.plot:
        kind = {v: k for k, v in MODELS.items()}.get(setup.name, "generic")
        path = plot_twin(
            result, args.plot, interval=setup.interval, title=f"{setup.name}: {args.method}", kind=kind,
            observation=setup.model.observation,
        )
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kalmax", description="JAX data assimilation: twin experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models, presets and methods").set_defaults(run=_cmd_list)
    twin = sub.add_parser("twin", help="run a twin experiment and print its statistics")
    twin.add_argument("--model", default="lorenz96", help="model name (see `kalmax list`); default lorenz96")
    twin.add_argument("--preset", default=None, help="preset name (overrides --model)")
    twin.add_argument("--method", default="3dvar", help="method name (see `kalmax list`); default 3dvar")
    twin.add_argument("--cycles", type=int, default=1000, help="number of assimilation cycles")
    twin.add_argument("--seed", type=int, default=0, help="PRNG seed of the truth, data and method")
    twin.add_argument("--burn-in", type=int, default=None, help="cycles left out of the averages (default: preset's)")
    twin.add_argument("--plot", default=None, help="write a PNG of the run to this path")
    twin.add_argument("--xb", type=float, default=None, help="3dvar: B = xB * climatological covariance")
    twin.add_argument("--beta", type=float, default=None, help="3dvar on navier-stokes: background amplitude")
    twin.add_argument("--climatology-steps", type=int, default=10000, help="3dvar: length of the free run for B")
    twin.add_argument("--inflation", type=float, default=None, help="ekf: inflation per unit time; ukf: per cycle")
    twin.add_argument("--alpha", type=float, default=1.0, help="ukf: sigma-point spread")
    twin.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    twin.set_defaults(run=_cmd_twin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
