"""The device benchmark: what a session lent a GPU runs first (`benchmarks/gpu.sh`).

    benchmarks/gpu.sh                    # on a GPU: full size, about 6-8 minutes
    benchmarks/gpu.sh --quick            # any machine: tiny sizes, under a minute on a CPU
    benchmarks/gpu.sh --out "$OUT"       # also where the results go (default benchmarks/results)

Every row is kalmax alone (the peers are CPU libraries or are not installed on the device
machine) on the default JAX device, in float32 (`--float64` for float64), and every job runs
in a fresh worker process with a timeout, so that its peak device memory is its own
(`peak_bytes_in_use`; on a CPU the growth of the process's peak resident memory):

1. Kalman filter, sequential `lax.scan` against the parallel-in-time associative scan
   (`assimilate(..., parallel=True)`): random stable models of `bench_kalman.make_problem`,
   dx in {4, 32}, T in {1,000, 10,000}; the time of one jitted filter call.
2. ETKF and LETKF time per cycle on Lorenz-96 for d in {10^3, 10^4, 10^5, 10^6} and
   N in {20, 100} (`bench_scaling.filter_cell`).
3. The sweep of `bench_ensemble` (d): LETKF N = 7 on Lorenz-96 d = 40, 8 inflations x 8
   radii x 8 seeds, 1,000 cycles, as one vmapped `kx.sweep` call.
4. EKI on Darcy (32 x 32 grid, 16 KL modes) with J = 1,000 members, 10 iterations.

The jobs run in the order 1, 3, 4, then 2 from the smallest d; no job starts after, or runs
beyond, `--budget` seconds (default 540), so that the run ends within the device's 10 minutes.
Results: gpu.md and gpu.json (gpu-quick.* with `--quick`), the device described.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_scaling  # noqa: E402
import common  # noqa: E402

SWEEP_INFLATIONS = [1.0 + 0.02 * i for i in range(8)]
SWEEP_RADII = [1.0 + 0.5 * i for i in range(8)]


def plan(quick: bool) -> list[dict]:
    """Every job of the benchmark, in order."""
    jobs = [dict(id="device", kind="device")]
    for dx, steps in ([(4, 100)] if quick else [(4, 1000), (4, 10000), (32, 1000), (32, 10000)]):
        for parallel in (False, True):
            jobs.append(dict(id=f"kalman dx={dx} T={steps} {'parallel' if parallel else 'sequential'}",
                             kind="kalman", dx=dx, steps=steps, parallel=parallel, repeats=3 if quick else 10))
    axis = 2 if quick else 8
    jobs.append(dict(id=f"sweep {axis}x{axis} settings x {axis} seeds", kind="sweep", axis=axis,
                     cycles=50 if quick else 1000, repeats=2 if quick else 3))
    jobs.append(dict(id=f"EKI Darcy J={20 if quick else 1000}", kind="eki", members=20 if quick else 1000,
                     grid=16 if quick else 32, iterations=2 if quick else 10, repeats=2 if quick else 3))
    # the filters last, smallest d first: the time budget, if spent, drops the largest cells
    dims, sizes = ([100], [10]) if quick else ([10**3, 10**4, 10**5, 10**6], [20, 100])
    for dim in dims:
        for method in ("ETKF", "LETKF"):
            for members in sizes:
                jobs.append(dict(id=f"{method} d={dim} N={members}", kind="filter", method=method, dim=dim,
                                 members=members, cycles=5 if quick else (20 if dim <= 10**5 else 8),
                                 repeats=3 if quick else 5, max_total_s=20.0))  # fmt: skip
    return jobs


# -- worker side -----------------------------------------------------------------------


def device_job(job) -> dict:
    """The default JAX device."""
    import jax

    device = jax.devices()[0]
    return dict(backend=jax.default_backend(), device_kind=device.device_kind, count=jax.device_count(),
                jax=jax.__version__)


def kalman_job(job) -> dict:
    import jax
    import jax.numpy as jnp

    import bench_kalman
    import kalmax as kx

    dtype = jnp.result_type(float)
    problem = {k: jnp.asarray(v, dtype) for k, v in bench_kalman.make_problem(job["dx"], job["steps"], 0).items()}
    resident_before = common.resident_bytes()

    @jax.jit
    def run(p):
        model = kx.LinearGaussianSSM(p["M"], p["H"], p["Q"], p["R"], p["m0"], p["C0"])
        _, history = kx.assimilate(model, kx.KalmanFilter(), p["ys"], parallel=job["parallel"])
        return history.mean, jnp.sum(history.info.log_likelihood)

    timing, (means, loglik) = common.timed(lambda: run(problem), job["repeats"], first_separate=True)
    return dict(time_s=timing["median_s"], first_s=timing["first_s"], log_likelihood=float(loglik),
                **common.peak_memory(resident_before))


def filter_job(job) -> dict:
    out = bench_scaling.filter_cell(job)
    return dict(time_s=out.pop("per_cycle_s"), unit="per cycle", **out)


def sweep_job(job) -> dict:
    import jax
    import numpy as np

    import kalmax as kx
    from kalmax import presets

    axis = job["axis"]
    model = presets.lorenz96_sakov2008(job["cycles"], dim=40).model
    grid = {"inflation": SWEEP_INFLATIONS[:axis], "loc_rad": SWEEP_RADII[:axis]}
    max_radius = max(grid["loc_rad"])

    def make(inflation, loc_rad):
        return kx.LETKF.dapper(7, kx.Periodic1D(40), loc_rad, inflation=inflation, rotate=True, max_radius=max_radius)

    resident_before = common.resident_bytes()

    def run():
        result = kx.sweep(model, make, job["cycles"], jax.random.key(0), grid=grid, n_seeds=axis, burn_in=20)
        return result.rmse_analysis

    timing, rmse = common.timed(run, job["repeats"], first_separate=True)
    rmse = np.asarray(rmse)
    return dict(time_s=timing["median_s"], first_s=timing["first_s"], runs=int(rmse.size),
                per_run_cycle_s=timing["median_s"] / (rmse.size * job["cycles"]),
                best_mean_rmse=float(np.nanmin(np.nanmean(rmse, axis=-1))), **common.peak_memory(resident_before))


def eki_job(job) -> dict:
    import jax
    import numpy as np

    import kalmax as kx
    from kalmax.problems.darcy import darcy_problem

    problem = darcy_problem(jax.random.key(0), grid_size=job["grid"], n_modes=16, noise_std=0.1)
    resident_before = common.resident_bytes()

    def run():
        return kx.invert(problem.problem, kx.EKI(job["members"]), jax.random.key(1), job["iterations"]).state.members

    timing, members = common.timed(run, job["repeats"], first_separate=True)
    error = np.linalg.norm(np.mean(np.asarray(members), axis=0) - np.asarray(problem.truth))
    return dict(time_s=timing["median_s"], first_s=timing["first_s"],
                per_iteration_s=timing["median_s"] / job["iterations"],
                parameter_error=float(error / np.linalg.norm(np.asarray(problem.truth))),
                **common.peak_memory(resident_before))


def worker() -> None:
    common.serve_jobs({"device": device_job, "kalman": kalman_job, "filter": filter_job, "sweep": sweep_job, "eki": eki_job})


# -- parent side -----------------------------------------------------------------------


def report(rows: list[dict], device: dict, machine: dict, args) -> str:
    fmt_mem = common.fmt_bytes
    lines = [f"# Device benchmark: {device['device_kind']} ({device['backend']})", "",
             common.machine_markdown(machine), f"- device: {device['count']} x {device['device_kind']} "
             f"(backend {device['backend']}, jax {device['jax']})", "",
             f"kalmax alone, {'float64' if args.float64 else 'float32'}, "
             + ("every job in one process (`--quick`: the peaks are cumulative)" if args.quick
                else "each job in a fresh process") + "; time = median "
             "after the first call (which compiles); peak = the device's peak_bytes_in_use (on a CPU: growth of the "
             "process's peak resident memory).", ""]  # fmt: skip
    kalman = {r["id"]: r for r in rows if r["kind"] == "kalman"}
    table = []
    for r in rows:
        if r["kind"] != "kalman" or r["parallel"]:
            continue
        par = kalman.get(r["id"].replace("sequential", "parallel"), {})
        ok = r["status"] == "ok" and par.get("status") == "ok"
        table.append([str(r["dx"]), f"{r['steps']:,}", _time(r), _time(par),
                      f"{r['time_s'] / par['time_s']:.2g}x" if ok else "", _mem(r, fmt_mem), _mem(par, fmt_mem)])
    lines += ["## 1. Kalman filter: sequential against parallel-in-time", "",
              common.markdown_table(["dx", "T", "sequential", "parallel", "speed-up", "peak (seq)", "peak (par)"],
                                    table), ""]  # fmt: skip
    table = [[r["method"], f"{r['dim']:,}", str(r["members"]), _time(r), _mem(r, fmt_mem),
              fmt_mem(r.get("program_bytes")) if r["status"] == "ok" else "",
              "—" if r["status"] != "ok" or bench_scaling.working_bytes(r) is None
              else f"{bench_scaling.working_bytes(r) / (r['dim'] * r['members']):.3g}"]
             for r in rows if r["kind"] == "filter"]  # fmt: skip
    lines += ["## 2. ETKF and LETKF on Lorenz-96: time per cycle", "",
              "`assimilate` under `jax.jit`, compiled ahead of time (`bench_scaling.filter_cell`); XLA buffers: "
              "the program's arguments, outputs and temporaries; bytes / (N d): its working memory (less the "
              "observations and the saved means) per member and variable.", "",
              common.markdown_table(["method", "d", "N", "per cycle", "peak", "XLA buffers", "bytes / (N d)"], table),
              ""]
    for r in rows:
        if r["kind"] == "sweep":
            extra = (f"{r['runs']} runs; {common.fmt_time(r['per_run_cycle_s'])} per run and cycle; best mean "
                     f"analysis RMSE {r['best_mean_rmse']:.3f}") if r["status"] == "ok" else ""
            lines += ["## 3. Sweep (LETKF N = 7, Lorenz-96 d = 40), one vmapped call", "",
                      common.markdown_table(["job", "time", "peak", "notes"],
                                            [[r["id"], _time(r), _mem(r, fmt_mem), extra]]), ""]  # fmt: skip
        if r["kind"] == "eki":
            extra = (f"{common.fmt_time(r['per_iteration_s'])} per iteration; relative parameter error "
                     f"{r['parameter_error']:.3f}") if r["status"] == "ok" else ""
            lines += [f"## 4. EKI on Darcy ({r['grid']} x {r['grid']} grid, {r['iterations']} iterations)", "",
                      common.markdown_table(["job", "time", "peak", "notes"],
                                            [[r["id"], _time(r), _mem(r, fmt_mem), extra]]), ""]  # fmt: skip
    failed = [r["id"] for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["Jobs that did not finish: " + ", ".join(f"{r['id']} ({r['status']})" for r in rows
                                                           if r["status"] != "ok") + ".", ""]
    lines.append("Generated by `benchmarks/gpu.sh" + (" --quick" if args.quick else "") + "`.")
    return "\n".join(lines) + "\n"


def _time(r) -> str:
    return common.fmt_time(r["time_s"]) if r.get("status") == "ok" else r.get("status", "—")


def _mem(r, fmt_mem) -> str:
    return fmt_mem(r.get("peak_bytes")) if r.get("status") == "ok" else ""


def main(argv=None) -> int:
    if argv is None and "--worker" in sys.argv:
        worker()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one worker process for every job")
    parser.add_argument("--float64", action="store_true", help="float64 instead of float32")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per job before it is given up")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds after which no job starts or goes on (the device is lent for minutes)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for gpu{,-quick}.md/.json")
    args = parser.parse_args(argv)
    env = common.worker_env()
    env["JAX_ENABLE_X64"] = "1" if args.float64 else "0"
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peak_bytes_in_use then counts what a job uses
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox"))
    jobs = plan(args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="kalmax-gpu-"))
    print(f"worker logs: {workdir / 'workers.log'}", flush=True)
    if args.quick:  # one worker for all: quick enough to be a test
        results = common.run_group(Path(__file__), jobs, env, args.timeout, workdir, _progress)
    else:
        results, started = {}, time.monotonic()
        for job in jobs:
            remaining = args.budget - (time.monotonic() - started)
            if remaining < 10:
                results[job["id"]] = {**job, "status": f"skipped (the {args.budget:.0f} s budget was spent)"}
                continue
            # a job may not outlast the budget either: the whole run ends within it
            results.update(common.run_group(Path(__file__), [job], env, min(args.timeout, remaining), workdir,
                                            _progress))
    rows = [{**job, **results[job["id"]]} for job in jobs]
    device = rows.pop(0)
    if device["status"] != "ok":
        raise RuntimeError(f"JAX did not start: {device.get('error', device['status'])}; see {workdir / 'workers.log'}")
    text = report(rows, device, machine, args)
    common.write_results("gpu-quick" if args.quick else "gpu", text, dict(machine=machine, device=device, rows=rows),
                         args.out)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


def _progress(r) -> str:
    if r["status"] != "ok":
        return f"{r['id']}: {r['status']} {r.get('error', '')}"
    if r["kind"] == "device":
        return f"device: {r['count']} x {r['device_kind']} ({r['backend']}, jax {r['jax']})"
    return f"{r['id']}: {common.fmt_time(r['time_s'])}, peak {common.fmt_bytes(r.get('peak_bytes'))}"


if __name__ == "__main__":
    sys.exit(main())
