"""The `kalmax` command: twin experiments and hyperparameter sweeps from the shell.

    kalmax list
    kalmax twin --model lorenz96 --method 3dvar --cycles 1000 --seed 0 --plot out.png
    kalmax twin --model lorenz96 --method etkf --ensemble-size 24 --inflation 1.013 --rotate
    kalmax sweep --model lorenz96 --method etkf --inflation 1.0 1.02 1.04 --seeds 8 --cycles 2000

Methods take their published hyperparameters for each preset by default
(e.g. DAPPER's `Var3D(xB=0.02)`, `ExtKF(infl=10)` and `EnKF('Sqrt', N=24,
infl=1.013, rot=True)` on Lorenz-96); options override them. `sweep` runs
every combination of the given values and seeds in one compiled call and
prints the mean rmse with its standard error per setting.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


def _integer_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse

# Sweepable hyperparameters: the name passed to `make_method` -> the option that gives values.
_GRID_OPTIONS = {"inflation": "--inflation", "xb": "--xb", "beta": "--beta", "radius": "--radius", "xn": "--xn"}
# options that fix a method's structure (not swept), and the methods that take them
_STRUCTURE_OPTIONS = {"lag": ("--lag", ("enks", "ienks")), "n_iter": ("--n-iter", ("ienks",)),
                      "shift": ("--shift", ("ienks",))}


@dataclass(frozen=True)
class MethodEntry:
    """A method the command can build for a preset.

    `factory(setup, args, key)` returns `(make_method, defaults)`: `make_method(**params)`
    builds the method from (traceable) hyperparameters, `defaults` maps each of their
    names to the preset's default value. `twin` builds one method from the options or
    defaults; `sweep` vmaps `make_method` over a grid of values.
    """

    factory: Callable
    description: str

    def build(self, setup, args, key):
        """The method of `twin`: the factory's defaults overridden by the options given;
        an option the method does not have is refused (ValueError naming it)."""
        make_method, defaults = self.factory(setup, args, key)
        check_options_apply(args, defaults, setup)
        params = {}
        for name, default in defaults.items():
            value = getattr(args, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0]
            params[name] = default if value is None else value
        return make_method(**params)


def check_options_apply(args, defaults, setup) -> None:
    """Refuse hyperparameter options (--inflation, --radius, ...) that the chosen method does not
    take: silently ignoring them would report a run the user did not ask for."""
    unused = [option for name, option in _GRID_OPTIONS.items()
              if getattr(args, name, None) is not None and name not in defaults]
    unused += [option for name, (option, methods) in _STRUCTURE_OPTIONS.items()
               if getattr(args, name, None) is not None and args.method not in methods]
    if unused:
        valid = ", ".join(_GRID_OPTIONS[name] for name in defaults) or "none"
        raise ValueError(f"{', '.join(unused)} does not apply to --method {args.method} on {setup.name}; "
                         f"its options: {valid}")


def _factory_3dvar(setup, args, key):
    import jax.numpy as jnp

    from .experiments import climatology_cov
    from .filters.var3d import ThreeDVar

    defaults = setup.defaults
    if defaults.fourier_beta is not None:
        from .spectral_covariance import FourierCovariance

        n = int(round(setup.model.state_dim**0.5))
        dtype = setup.model.dtype
        return (lambda beta: ThreeDVar(FourierCovariance(n, beta=beta, alpha=2.0, dtype=dtype))), {
            "beta": defaults.fourier_beta
        }
    clim = climatology_cov(setup.model, key, args.climatology_steps, spin_up=500)

    def make(xb):
        return ThreeDVar(jnp.asarray(xb, clim.dtype) * clim)

    return make, {"xb": defaults.xb}


def _factory_ekf(setup, args, key):
    from .filters.extended import ExtendedKalmanFilter

    interval = setup.interval
    return (lambda inflation: ExtendedKalmanFilter.per_unit_time(inflation, interval)), {
        "inflation": setup.defaults.ekf_inflation
    }


def _factory_ukf(setup, args, key):
    from .filters.extended import UnscentedKalmanFilter

    alpha = args.alpha
    return (lambda inflation: UnscentedKalmanFilter(alpha=alpha, beta=2.0, kappa=0.0, inflation=inflation)), {
        "inflation": 1.0
    }


def _ensemble_factory(settings_of: Callable, update_name: str):
    def factory(setup, args, key):
        from .filters import enkf

        settings = settings_of(setup.defaults)
        size, infl, rotate = settings.size, settings.inflation, settings.rotate
        size = size if getattr(args, "ensemble_size", None) is None else args.ensemble_size
        rotate = rotate if getattr(args, "rotate", None) is None else args.rotate
        update = getattr(enkf, update_name)

        def make(inflation):
            return enkf.EnKF(size, update(), inflation=inflation, rotate=rotate)

        return make, {"inflation": infl}

    return factory


def _factory_letkf(setup, args, key):
    from .ensemble.localization import GaspariCohn, Localization
    from .filters.letkf import LETKF

    settings = setup.defaults.letkf
    if settings is None:
        raise ValueError(f"letkf needs a spatial model with a localisation geometry; the preset {setup.name} has none")
    size, infl, rotate = settings.ensemble.size, settings.ensemble.inflation, settings.ensemble.rotate
    radius, geometry = settings.radius, settings.geometry
    size = size if getattr(args, "ensemble_size", None) is None else args.ensemble_size
    rotate = rotate if getattr(args, "rotate", None) is None else args.rotate
    given = getattr(args, "radius", None)
    # the static neighbour lists are built for the largest radius of a sweep
    max_radius = float(max(given)) if isinstance(given, (list, tuple)) else float(given or radius)
    if settings.dapper:

        def localization(r):
            return Localization.dapper(geometry, r, max_radius=max_radius)
    else:

        def localization(r):
            return Localization(geometry, GaspariCohn(r, max_radius=max_radius))

    def make(inflation, radius):
        return LETKF(size, localization(radius), inflation=inflation, rotate=rotate)

    return make, {"inflation": infl, "radius": radius}


def _smoother_factory(kind: str):
    """EnKS / IEnKS with the preset's published ETKF settings (size, inflation, rotation);
    --lag (default: 4 for the EnKS, 1 for the iEnKS, the iEnKF), --n-iter (default 10) and
    --shift (default 1)."""

    def factory(setup, args, key):
        from .smoothers.ensemble import EnKS
        from .smoothers.ienks import IEnKS

        settings = setup.defaults.etkf
        size = settings.size if getattr(args, "ensemble_size", None) is None else args.ensemble_size
        rotate = settings.rotate if getattr(args, "rotate", None) is None else args.rotate
        lag = getattr(args, "lag", None) or (4 if kind == "enks" else 1)
        n_iter = getattr(args, "n_iter", None) or 10
        shift = getattr(args, "shift", None) or 1

        def make(inflation):
            if kind == "enks":
                return EnKS(size, lag, inflation=inflation, rotate=rotate)
            return IEnKS(size, lag, n_iter=n_iter, inflation=inflation, rotate=rotate, shift=shift)

        return make, {"inflation": settings.inflation}

    return factory


def _factory_enkf_n(setup, args, key):
    from .filters.enkf_n import EnKFN

    size, rotate = setup.defaults.enkf_n.size, setup.defaults.enkf_n.rotate
    size = size if getattr(args, "ensemble_size", None) is None else args.ensemble_size
    rotate = rotate if getattr(args, "rotate", None) is None else args.rotate

    def make(xn):
        return EnKFN(size, xN=xn, rotate=rotate)

    return make, {"xn": 1.0}


METHODS: dict[str, MethodEntry] = {
    "3dvar": MethodEntry(_factory_3dvar, "ThreeDVar: B = xB * climatology (Fourier-diagonal for Navier-Stokes)"),
    "ekf": MethodEntry(_factory_ekf, "ExtendedKalmanFilter: inflation per unit time (DAPPER's ExtKF(infl))"),
    "ukf": MethodEntry(_factory_ukf, "UnscentedKalmanFilter: 2d+1 sigma points"),
    "enkf": MethodEntry(
        _ensemble_factory(lambda d: d.enkf, "PerturbedObservations"),
        "EnKF, perturbed observations (DAPPER's EnKF('PertObs', N, infl))",
    ),
    "etkf": MethodEntry(
        _ensemble_factory(lambda d: d.etkf, "SquareRoot"),
        "EnKF, symmetric square root / ETKF (DAPPER's EnKF('Sqrt', N, infl, rot))",
    ),
    "denkf": MethodEntry(
        _ensemble_factory(lambda d: d.denkf, "DEnKF"), "EnKF, deterministic DEnKF of Sakov & Oke 2008 (DAPPER's 'DEnKF')"
    ),
    "enkf-n": MethodEntry(
        _factory_enkf_n, "EnKFN: finite-size EnKF, adaptive inflation (DAPPER's EnKF_N(N, rot, xN))"
    ),
    "letkf": MethodEntry(
        _factory_letkf,
        "LETKF with Gaspari-Cohn localisation (DAPPER's LETKF(N, infl, rot, loc_rad) on Lorenz-96)",
    ),
    "enks": MethodEntry(
        _smoother_factory("enks"), "EnKS: fixed-lag ensemble Kalman smoother, square root, --lag cycles (default 4)"
    ),
    "ienks": MethodEntry(
        _smoother_factory("ienks"),
        "IEnKS: iterative ensemble Kalman smoother, --lag cycles (1: the iEnKF), --n-iter Gauss-Newton iterations, "
        "--shift cycles between analyses (DAPPER's iEnKS('Sqrt', N, Lag, nIter, infl, rot))",
    ),
}


def _progress_bar(stream, unit: str = "cycles"):
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - start
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}  {elapsed:6.1f} s")
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


def load_method_entry(name: str) -> MethodEntry:
    """The entry of a built-in method, or of a user's method given as `MODULE:FACTORY` or
    `path/to/file.py:FACTORY`, where `FACTORY(setup)` returns `(make_method, defaults)`:
    `make_method(**params)` builds the filter from traceable hyperparameters and `defaults`
    maps their names (inflation, radius, xb, beta or xn, so that options set them) to values.

    Raises:
        ValueError: naming the method, when it is unknown or cannot be loaded.
    """
    if name in METHODS:
        return METHODS[name]
    if ":" not in name:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {', '.join(METHODS)}, or MODULE:FACTORY / FILE.py:FACTORY"
        )
    import importlib
    import importlib.util

    where, attribute = name.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location(pathlib.Path(where).stem, where)
            if spec is None or not pathlib.Path(where).is_file():
                raise FileNotFoundError(f"no file {where}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        factory = getattr(module, attribute)
    except (ImportError, FileNotFoundError, AttributeError, SyntaxError) as err:
        raise ValueError(f"cannot load method {name!r}: {err}") from None
    if not callable(factory):
        raise ValueError(f"method {name!r}: {attribute} is not callable")
    return MethodEntry(lambda setup, args, key: factory(setup), f"user method {name}")


def _prepare(args):
    """(method entry, setup, method key, run key, burn-in) for `twin` and `sweep`; a user error
    raises ValueError before anything runs."""
    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    from .presets import get_preset

    if getattr(args, "plot", None):
        check_writable(args.plot, "--plot")
    if args.save:
        check_writable(args.save, "--save")
    entry = load_method_entry(args.method)
    setup = get_preset(args.preset or args.model, n_cycles=args.cycles)
    if args.burn_in is None:
        burn_in = setup.burn_in
        if args.cycles > 1 and burn_in >= args.cycles - 1:
            natural = get_preset(args.preset or args.model).burn_in
            raise ValueError(
                f"--cycles {args.cycles} leaves no cycles to score after the preset's burn-in of {natural} cycles; "
                f"give more cycles or --burn-in B with B < {args.cycles}"
            )
    else:
        burn_in = args.burn_in
        if burn_in >= args.cycles:
            raise ValueError(f"--burn-in {burn_in} must be smaller than --cycles {args.cycles}: no cycle would be scored")
    key_method, key_run = jax.random.split(jax.random.key(args.seed))
    return entry, setup, key_method, key_run, burn_in


def check_writable(path: str, option: str) -> None:
    """The file `path` can be written: its folder exists and is writable (checked before a run,
    not after it)."""
    import os

    folder = pathlib.Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable")
    if pathlib.Path(path).is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name such as run.png")


def _cmd_twin(args) -> int:
    from .experiments import twin_experiment
    from .plotting import plot_twin
    from .presets import MODELS

    entry, setup, key_method, key_run, burn_in = _prepare(args)
    method = entry.build(setup, args, key_method)
    # Chunked scans only to draw a progress bar on a terminal (one compiled chunk).
    chunk = max(1, setup.n_cycles // 40) if (setup.n_cycles >= 200 and sys.stderr.isatty()) else None
    print(f"{setup.name}: {args.method} ({type(method).__name__}), {setup.n_cycles} cycles, seed {args.seed}, burn-in {burn_in} cycles")
    started = time.perf_counter()
    result = twin_experiment(
        setup.model, method, setup.n_cycles, key_run, burn_in=burn_in,
        chunk_size=chunk, progress=_progress_bar(sys.stderr) if chunk else None, universal=args.universal,
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
    if args.save:
        _save(result, args, setup)
    return 0


def _save(result, args, setup) -> None:
    from .labelled import to_netcdf

    path = to_netcdf(result, args.save, method=args.method, preset=setup.name, seed=args.seed,
                     float32=int(args.float32))
    print(f"wrote {path}")


def _cmd_sweep(args) -> int:
    from .sweep import sweep

    entry, setup, key_method, key_run, burn_in = _prepare(args)
    make_method, defaults = entry.factory(setup, args, key_method)
    check_options_apply(args, defaults, setup)
    grid = {name: (default if getattr(args, name, None) is None else getattr(args, name)) for name, default in defaults.items()}
    n_settings = 1
    for values in grid.values():
        n_settings *= len(values) if isinstance(values, list) else 1
    mode = "one after another" if args.sequential else "in one compiled call"
    print(
        f"{setup.name}: {args.method}, {n_settings} settings x {args.seeds} seeds {mode}, "
        f"{setup.n_cycles} cycles, seed {args.seed}, burn-in {burn_in} cycles"
    )
    started = time.perf_counter()
    result = sweep(
        setup.model, make_method, setup.n_cycles, key_run, grid=grid, n_seeds=args.seeds, burn_in=burn_in,
        vectorize=not args.sequential, batch_size=args.batch_size,
        progress=_progress_bar(sys.stderr, "runs") if sys.stderr.isatty() else False, universal=args.universal,
    )
    result.rmse_analysis.block_until_ready()
    elapsed = time.perf_counter() - started
    print(result.table(f"({elapsed:.1f} s, compile included)"))
    if setup.reference:
        print(f"reference: {setup.reference}")
    if args.save:
        _save(result, args, setup)
    return 0


def _add_common(parser: argparse.ArgumentParser, default_method: str) -> None:
    parser.add_argument("--model", default="lorenz96", help="model name (see `kalmax list`); default lorenz96")
    parser.add_argument("--preset", default=None, help="preset name (overrides --model)")
    parser.add_argument(
        "--method", default=default_method,
        help=f"method name (see `kalmax list`), or a method of your own as MODULE:FACTORY or FILE.py:FACTORY "
             f"(docs/extending.md); default {default_method}"
    )
    parser.add_argument("--cycles", type=_integer_at_least(1), default=1000,
                        help="number of assimilation cycles (default: %(default)s)")
    parser.add_argument("--burn-in", type=_integer_at_least(0), default=None,
                        help="cycles left out of the averages (default: the preset's)")
    parser.add_argument("--ensemble-size", type=_integer_at_least(2), default=None,
                        help="ensemble methods: number of members N (default: the preset's published one)")
    parser.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                        help="ensemble methods: random mean-preserving rotation of the analysis anomalies "
                             "(DAPPER's rot; default: the preset's published setting)")
    parser.add_argument("--lag", type=_integer_at_least(1), default=None,
                        help="enks, ienks: smoother lag / window length in cycles (default: 4 for enks, 1 for ienks)")
    parser.add_argument("--n-iter", type=_integer_at_least(1), default=None,
                        help="ienks: the most Gauss-Newton iterations per window (default: 10)")
    parser.add_argument("--shift", type=_integer_at_least(1), default=None,
                        help="ienks: cycles between analyses, the window's slide, at most --lag (default: 1)")
    parser.add_argument("--universal", action="store_true",
                        help="also score DAPPER's universal rmse (rmse.u): the analysis, or a smoother's finished "
                             "estimate, at every model time step between observations")
    parser.add_argument("--climatology-steps", type=_integer_at_least(1), default=10000,
                        help="3dvar: length of the free run for B (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=1.0, help="ukf: sigma-point spread (default: %(default)s)")
    parser.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    parser.add_argument("--save", default=None, metavar="PATH.nc",
                        help="write the results as labelled data (xarray Dataset) to this NetCDF file")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="kalmax", description="JAX data assimilation: twin experiments.")
    parser.add_argument("--version", action="version", version=f"kalmax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models, presets and methods").set_defaults(run=_cmd_list)
    twin = sub.add_parser("twin", help="run a twin experiment and print its statistics")
    _add_common(twin, "3dvar")
    twin.add_argument("--seed", type=int, default=0, help="PRNG seed of the truth, data and method (default: %(default)s)")
    twin.add_argument("--plot", default=None, help="write a PNG of the run to this path")
    twin.add_argument("--xb", type=float, default=None, help="3dvar: B = xB * climatological covariance")
    twin.add_argument("--xn", type=float, default=None, help="enkf-n: confidence in the inflation hyper-prior (DAPPER's xN)")
    twin.add_argument("--beta", type=float, default=None, help="3dvar on navier-stokes: background amplitude")
    twin.add_argument("--radius", type=float, default=None,
                      help="letkf: localisation radius (DAPPER's loc_rad on Lorenz-96; Gaspari-Cohn half-width "
                           "in grid units on Navier-Stokes)")
    twin.add_argument("--inflation", type=float, default=None,
                      help="ensemble methods: multiplicative inflation of the analysis anomalies (DAPPER's infl); "
                           "ekf: inflation per unit time; ukf: per cycle")
    twin.set_defaults(run=_cmd_twin)

    sweep = sub.add_parser(
        "sweep",
        help="run a twin experiment for every combination of hyperparameter values and seeds in one compiled "
        "call; print the mean rmse ± standard error per setting",
        description="Sweep hyperparameters: every combination of the values given to --inflation, --xb, --beta "
        "and --radius (whichever the method has; others stay at the preset's default) times --seeds seeds, vmapped in one "
        "compiled call. Seeds share their truth and data across settings.",
    )
    _add_common(sweep, "etkf")
    sweep.add_argument("--seeds", type=_integer_at_least(1), default=4,
                       help="number of seeds (truths, data, initial ensembles) (default: %(default)s)")
    sweep.add_argument("--seed", type=int, default=0, help="base PRNG seed of the sweep (default: %(default)s)")
    sweep.add_argument("--inflation", type=float, nargs="+", default=None,
                       help="values of the inflation: ensemble methods multiply the analysis anomalies "
                            "(DAPPER's infl); ekf: per unit time; ukf: per cycle")
    sweep.add_argument("--xb", type=float, nargs="+", default=None, help="3dvar: values of xB (B = xB * climatology)")
    sweep.add_argument("--xn", type=float, nargs="+", default=None, help="enkf-n: values of xN")
    sweep.add_argument("--beta", type=float, nargs="+", default=None,
                       help="3dvar on navier-stokes: values of the background amplitude")
    sweep.add_argument("--radius", type=float, nargs="+", default=None,
                       help="letkf: values of the localisation radius (DAPPER's loc_rad on Lorenz-96)")
    sweep.add_argument("--batch-size", type=_integer_at_least(1), default=None,
                       help="run the settings in batches of this many (bounds memory); default all at once")
    sweep.add_argument("--sequential", action="store_true",
                       help="run the settings and seeds one after another instead of vmapped (for timing)")
    sweep.set_defaults(run=_cmd_sweep)

    launch = sub.add_parser(
        "launch", help="run a script as several connected JAX processes on this machine",
        description="Start N copies of `python SCRIPT ARGS` connected through a coordinator on 127.0.0.1 "
        "(the script calls kx.distributed.initialize()); each process's output is printed with its index.")
    launch.add_argument("--processes", type=int, required=True, help="number of processes")
    launch.add_argument("--devices-per-process", type=int, default=1,
                        help="CPU devices per process (default: %(default)s)")
    launch.add_argument("--timeout", type=float, default=3600.0, help="limit of the whole run in seconds")
    launch.add_argument("script", nargs=argparse.REMAINDER, help="the script and its arguments")
    launch.set_defaults(run=_cmd_launch)
    return parser


def _cmd_launch(args) -> int:
    from .distributed import launch_local

    runs = launch_local(args.script, args.processes, args.devices_per_process, timeout_s=args.timeout)
    for run in runs:
        for line in run.stdout.splitlines():
            print(f"[{run.process_id}] {line}")
        if run.returncode != 0:
            print(f"[{run.process_id}] exit code {run.returncode}: {run.stderr.strip()[-2000:]}", file=sys.stderr)
    return 0 if all(run.returncode == 0 for run in runs) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # jaxlib's CPU linear algebra runs on SciPy's OpenBLAS, whose threads slow the
    # small matrices of filters several-fold (8x measured on a Lorenz-96 EKF); the
    # command runs one BLAS thread, as DAPPER does. Library users choose for themselves.
    from threadpoolctl import threadpool_limits

    from .results import KalmaxError

    with threadpool_limits(1, user_api="blas"):
        try:
            return args.run(args)
        except (ValueError, TypeError) as err:  # the user's options or data: one line, like argparse
            print(f"kalmax {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except KalmaxError as err:  # the run failed (divergence, a failed inversion): said, not a traceback
            print(f"kalmax {args.command}: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
            return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    raise SystemExit(main())
