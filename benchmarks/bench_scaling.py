"""How the ETKF's and the LETKF's cost grows with the state dimension d, the ensemble size N
and the number of processes: time per cycle and peak memory, the fitted exponents, and what
they predict for d = 10^7.

    .venv/bin/python benchmarks/bench_scaling.py            # d = 10^2 .. 10^6, N = 10 .. 1,000
    .venv/bin/python benchmarks/bench_scaling.py --quick    # d = 10^2 .. 10^3, N = 10 .. 20

The problem is Lorenz-96 of any dimension d, every variable observed (DAPPER's Sakov & Oke
2008 set-up: dt = 0.05, R = I), float64 on the CPU (float32 with `--float32`). Methods: the
ETKF (`EnKF(N, SquareRoot())`, the analysis in ensemble space: O(N^2 d + N^3)) and the LETKF
(`LETKF.dapper(N, Periodic1D(d), 4)`: one ETKF of about 9 local observations per block of 2
grid points, O(d (N^3 + N^2 p_local))). Each cell runs in a fresh worker process:

- time per cycle: the compiled `assimilate` over `cycles` cycles (the median of the calls
  after the first, divided by the cycles), wall and CPU;
- memory: the program's buffers as XLA assigns them (arguments + outputs + temporaries,
  `compiled.memory_analysis()`, the same on every device), and per member and variable
  (bytes / (N d)): a constant at large d means memory O(N d), a growing one would mean a
  d^2 term. Also measured: on a CPU, the growth of the process's peak resident memory
  (`ru_maxrss`) over the compilation and the runs (it includes the compiler's own memory,
  which dominates at small d); on a GPU, the device's `peak_bytes_in_use`.

Exponents: least squares of log(time) and log(XLA's buffers) against log(d) over the cells with
d >= 10^4 (fixed costs vanish there), and against log(N) at fixed d. The processes section
reuses `bench_distributed.measure` at d = 10^4. Results: benchmarks/results/scaling{,-quick}.md
and .json; `benchmarks/gpu.sh` runs the same cells on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

#: The d-sweep and N-sweep cells: (method, d, N), full and quick.
FULL = {
    "d": [("ETKF", d, n) for n in (20, 100) for d in (10**2, 10**3, 10**4, 10**5, 10**6)]
    + [("LETKF", d, 20) for d in (10**2, 10**3, 10**4, 10**5, 10**6)]
    + [("LETKF", d, 100) for d in (10**2, 10**3, 10**4, 10**5)],
    "N": [("ETKF", 10**4, n) for n in (10, 30, 100, 300, 1000)] + [("LETKF", 10**3, n) for n in (10, 20, 50, 100)],
}
QUICK = {
    "d": [("ETKF", d, 10) for d in (100, 300, 1000)] + [("LETKF", d, 10) for d in (100, 300, 1000)],
    "N": [("ETKF", 300, n) for n in (10, 20)] + [("LETKF", 300, n) for n in (10, 20)],
}
#: d from which the d-exponents are fitted (below it, fixed costs and compile memory dominate).
FIT_FROM_D = 10**4


def cycles_for(method: str, dim: int, members: int, quick: bool) -> int:
    """Enough cycles for a run of a few tenths of a second, at least 8."""
    if quick:
        return 5
    work = dim * members * (members if method == "LETKF" else 1)
    return int(min(100, max(8, 3e7 // work)))  # at least 8: a call's own costs (allocation) amortised


# -- worker side -----------------------------------------------------------------------


def make_method(name: str, dim: int, members: int):
    import kalmax as kx

    if name == "ETKF":
        return kx.EnKF(members, kx.SquareRoot(), inflation=1.02)
    return kx.LETKF.dapper(members, kx.Periodic1D(dim), 4.0, inflation=1.04)


def filter_cell(job) -> dict:
    """Time per cycle and memory of one (method, d, N) cell: `assimilate` under `jax.jit`,
    compiled ahead of time, so that XLA's buffer assignment (arguments, outputs and
    temporaries of the program) is read before it runs."""
    import jax
    import numpy as np

    import kalmax as kx
    from kalmax import presets

    dim, members, cycles = job["dim"], job["members"], job["cycles"]
    model = presets.lorenz96_sakov2008(cycles, dim=dim).model
    _, ys = kx.simulate(model, jax.random.key(1), cycles)
    jax.block_until_ready(ys)
    method = make_method(job["method"], dim, members)
    key = jax.random.key(2)
    resident_before = common.resident_bytes()
    started = time.perf_counter()
    compiled = jax.jit(lambda ys, key: kx.assimilate(model, method, ys, key, throw=False)[1]).lower(ys, key).compile()
    compile_s = time.perf_counter() - started
    buffers = compiled.memory_analysis()
    program_bytes = None if buffers is None else int(
        buffers.argument_size_in_bytes + buffers.output_size_in_bytes + buffers.temp_size_in_bytes
        - buffers.alias_size_in_bytes)

    timing, history = common.timed(lambda: compiled(ys, key).mean, job["repeats"], first_separate=True,
                                   max_total_s=job["max_total_s"])
    memory = common.peak_memory(resident_before)
    return dict(per_cycle_s=timing["median_s"] / cycles, per_cycle_cpu_s=timing["median_cpu_s"] / cycles,
                compile_s=compile_s, first_s=timing["first_s"], repeats=timing["repeats"],
                program_bytes=program_bytes,
                peak_bytes=memory["peak_bytes"], peak_kind=memory["peak_kind"],
                dtype=str(ys.dtype), backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
                finite=bool(np.all(np.isfinite(np.asarray(history)))))  # fmt: skip


def worker() -> None:
    common.serve_jobs({"filter": filter_cell})


# -- parent side -----------------------------------------------------------------------


def measure_cells(cells, quick: bool, float32: bool, timeout_s: float, workdir: Path, label: str) -> list[dict]:
    """Each cell in its own worker process (a fresh peak memory); a cell over `timeout_s` is
    recorded as `timeout` and the larger cells of the same method and N are skipped."""
    env = common.worker_env()
    if float32:
        env["JAX_ENABLE_X64"] = "0"
    rows, given_up = [], set()
    for method, dim, members in cells:
        job = dict(id=f"{label} {method} d={dim} N={members}", kind="filter", method=method, dim=dim,
                   members=members, cycles=cycles_for(method, dim, members, quick), repeats=3 if quick else 5,
                   max_total_s=5.0 if quick else 30.0)  # fmt: skip
        if (method, members, label) in given_up:
            rows.append({**job, "status": "skipped (a smaller d timed out)"})
            continue
        row = common.run_group(Path(__file__), [job], env, timeout_s, workdir, _progress)[job["id"]]
        if row["status"] == "timeout" and label == "d":
            given_up.add((method, members, label))
        rows.append(row)
    return rows


def _progress(r) -> str:
    if r["status"] != "ok":
        return f"{r['id']}: {r['status']} {r.get('error', '')}"
    return (f"{r['id']}: {common.fmt_time(r['per_cycle_s'])} per cycle, buffers "
            f"{common.fmt_bytes(r['program_bytes'])}, peak {common.fmt_bytes(r['peak_bytes'])}")


def fit_exponent(xs, ys) -> float | None:
    """Least-squares slope of log(y) against log(x) (None with fewer than 2 usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return None if sxx == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def working_bytes(row: dict) -> float | None:
    """XLA's buffers less the observations (argument) and the saved analysis means (output),
    2 T d numbers: the memory the filter itself works in (O(N d) if the algorithm is)."""
    if row.get("program_bytes") is None:
        return None
    itemsize = 4 if row["dtype"] == "float32" else 8
    return row["program_bytes"] - 2 * row["cycles"] * row["dim"] * itemsize


def affine_fit(xs, ys) -> tuple[float, float, float] | None:
    """Least squares y = a + b x: (a, b, the largest relative residual)."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2:
        return None
    n, sx, sy = len(pts), sum(p[0] for p in pts), sum(p[1] for p in pts)
    sxx, sxy = sum(p[0] ** 2 for p in pts), sum(p[0] * p[1] for p in pts)
    b = (n * sxy - sx * sy) / (n * sxx - sx**2)
    a = (sy - b * sx) / n
    return a, b, max(abs(a + b * x - y) / y for x, y in pts)


def fits(rows: list[dict], fit_from_d: int) -> list[dict]:
    """The d-exponents per (method, N) over d >= fit_from_d and the N-exponents per (method, d)."""
    ok = [r for r in rows if r["status"] == "ok"]

    def fit(method, against, fixed, sel, expected_time):
        xs = [r["dim" if against == "d" else "members"] for r in sel]
        return dict(method=method, against=against, fixed=fixed, range=_range(xs),
                    time=fit_exponent(xs, [r["per_cycle_s"] for r in sel]),
                    memory=fit_exponent(xs, [working_bytes(r) for r in sel]),
                    memory_affine=affine_fit([r["dim"] * r["members"] for r in sel], [working_bytes(r) for r in sel]),
                    expected_time=expected_time, expected_memory=1.0)

    out = []
    for method, members in sorted({(r["method"], r["members"]) for r in ok if r["sweep"] == "d"}):
        sel = sorted((r for r in ok if r["sweep"] == "d" and r["method"] == method and r["members"] == members
                      and r["dim"] >= fit_from_d), key=lambda r: r["dim"])  # fmt: skip
        out.append(fit(method, "d", f"N = {members}", sel, 1.0))
    for method, dim in sorted({(r["method"], r["dim"]) for r in ok if r["sweep"] == "N"}):
        sel = sorted((r for r in ok if r["sweep"] == "N" and r["method"] == method and r["dim"] == dim),
                     key=lambda r: r["members"])
        out.append(fit(method, "N", f"d = {dim}", sel,
                       "1 to 2 (forecast O(N d), analysis O(N^2 d))" if method == "ETKF"
                       else "2 to 3 while N <= p_local (J x J local algebra, O(d (N^2 p + N^3))); about 1 "
                       "beyond (p x p local algebra, O(d (p^2 N + p^3)))"))
    return out


def _range(xs) -> str:
    return f"{min(xs):,} .. {max(xs):,} ({len(xs)} points)" if xs else "—"


def extrapolate(rows: list[dict], fitted: list[dict]) -> dict:
    """d = 10^7, N = 100: memory from XLA's buffers per member and variable in the largest
    measured cell with N = 100 (else the largest); CPU time from that cell, linear in d and
    by the fitted N-exponent."""
    out = {}
    target_d, target_n = 10**7, 100
    for method in ("ETKF", "LETKF"):
        cells = [r for r in rows if r["status"] == "ok" and r["sweep"] == "d" and r["method"] == method]
        if not cells:
            continue
        largest = max(cells, key=lambda r: (r["members"] == target_n, r["dim"], r["members"]))
        working = working_bytes(largest)
        per_mv = None if working is None else working / (largest["dim"] * largest["members"])
        time_n_exponent = next((f["time"] for f in fitted if f["method"] == method and f["against"] == "N"
                                and f["time"] is not None), 1.0)
        out[method] = dict(from_cell=f"d = {largest['dim']:,}, N = {largest['members']}",
                           bytes_per_member_variable=per_mv,
                           memory_bytes=None if per_mv is None else per_mv * target_d * target_n,
                           cpu_time_s=largest["per_cycle_s"] * (target_d / largest["dim"])
                           * (target_n / largest["members"]) ** time_n_exponent,
                           time_n_exponent=time_n_exponent)  # fmt: skip
    return out


def report(rows, fitted, extra, processes, machine, args) -> str:
    lines = ["# Scaling: time per cycle and peak memory against d, N and processes", "",
             common.machine_markdown(machine), "",
             f"Lorenz-96 of dimension d, every variable observed, {'float32' if args.float32 else 'float64'}; "
             "ETKF = `EnKF(N, SquareRoot())`, LETKF = `LETKF.dapper(N, Periodic1D(d), 4)`. Each cell in a fresh "
             "process; `assimilate` under `jax.jit`, compiled ahead of time; time per cycle = median of the calls "
             "after the first, divided by the cycles. XLA buffers: the program's arguments, outputs and temporaries "
             "(`memory_analysis()`); bytes / (N d): its working memory (less the observations and the saved means) "
             "per member and variable. Peak: on a CPU the growth of the "
             "process's peak resident memory over the compilation and the runs (the compiler's own memory "
             "included), on a GPU the device's peak_bytes_in_use.", ""]  # fmt: skip
    header = ["method", "d", "N", "cycles", "time per cycle", "CPU per cycle", "XLA buffers", "bytes / (N d)",
              "peak"]
    for sweep, title in (("d", "Against d"), ("N", "Against N")):
        table = []
        for r in rows:
            if r["sweep"] != sweep:
                continue
            if r["status"] != "ok":
                table.append([r["method"], f"{r['dim']:,}", str(r["members"]), str(r["cycles"]), r["status"], "", "", "",
                              ""])
                continue
            table.append([r["method"], f"{r['dim']:,}", str(r["members"]), str(r["cycles"]),
                          common.fmt_time(r["per_cycle_s"]), common.fmt_time(r["per_cycle_cpu_s"]),
                          common.fmt_bytes(r["program_bytes"]),
                          "—" if working_bytes(r) is None else f"{working_bytes(r) / (r['dim'] * r['members']):.3g}",
                          common.fmt_bytes(r["peak_bytes"])])
        lines += [f"## {title}", "", common.markdown_table(header, table), ""]
    fmt = lambda x: "—" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))  # noqa: E731
    def affine(f):
        if not f.get("memory_affine"):
            return "—"
        a, b, residual = f["memory_affine"]
        return f"{common.fmt_bytes(a)} + {b:.3g} B x N d (residual {100 * residual:.1f}%)"

    lines += ["## Fitted exponents (least squares in log-log)", "",
              f"Against d over the cells with d >= {args.fit_from_d:,} (all cells with `--quick`). Memory: the "
              "working memory, XLA's buffers less the observations and the saved means (2 T d numbers, O(T d)); "
              "its affine fit a + b N d: b is the bytes per member and variable, a a constant (the LETKF's "
              "batches of local analyses are sized to a fixed working set), the residual the largest relative "
              "misfit (a d^2 term would show there).", "",
              common.markdown_table(["method", "against", "at", "range", "time exponent", "expected",
                                     "memory exponent", "expected", "memory = a + b N d"],
                                    [[f["method"], f["against"], f["fixed"], f["range"], fmt(f["time"]),
                                      fmt(f["expected_time"]), fmt(f["memory"]), fmt(f["expected_memory"]),
                                      affine(f)] for f in fitted]), ""]  # fmt: skip
    if processes:
        lines += ["## Processes", "",
                  f"`bench_distributed.measure` at d = {args.process_dim:,}: 4 CPU devices split over 1, 2 and 4 "
                  "processes (a coordinator on 127.0.0.1, Gloo collectives); on this 2-core machine processes "
                  "beyond 2 share cores.", "",
                  common.markdown_table(["method", "processes", "devices each", "wall per cycle", "max |diff| of means"],
                                        [[p["method"], str(p["processes"]), str(p["devices_per_process"]),
                                          common.fmt_time(p["wall_per_cycle_s"]), f"{p['max_difference']:.1e}"]
                                         for p in processes]), ""]  # fmt: skip
    if extra:
        lines += ["## Extrapolation to d = 10^7, N = 100", "",
                  common.markdown_table(["method", "from the cell", "bytes / (N d)", "memory at d = 10^7, N = 100",
                                         "CPU time per cycle (this machine)"],
                                        [[m, e["from_cell"], fmt(e["bytes_per_member_variable"]),
                                          common.fmt_bytes(e["memory_bytes"]), common.fmt_time(e["cpu_time_s"])]
                                         for m, e in extra.items()]), "",
                  "Memory: the working memory per member and variable in the cell named, times N d = 10^9 (the "
                  "observations and saved means add 2 T d numbers, T the cycles of a call). "
                  "The CPU time scales the largest cell linearly in d and by the fitted N-exponent. "
                  "docs/scaling.md turns these into device counts for an H100 (80 GB) and an H200 (141 GB).", ""]  # fmt: skip
    lines.append("Generated by `benchmarks/bench_scaling.py" + (" --quick" if args.quick else "") + "`.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    if argv is None and "--worker" in sys.argv:
        worker()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d up to 10^3, N up to 20, 5 cycles")
    parser.add_argument("--float32", action="store_true", help="float32 instead of float64")
    parser.add_argument("--no-processes", action="store_true", help="skip the several-processes section")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per cell before it is given up")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for scaling{,-quick}.md/.json")
    parser.add_argument("--rerun", metavar="TEXT", action="append",
                        help="measure again only the cells whose id contains TEXT (e.g. 'd ETKF'; repeatable) and "
                        "keep the other cells and the processes section of the saved .json")
    args = parser.parse_args(argv)
    args.fit_from_d = 100 if args.quick else FIT_FROM_D
    args.process_dim = 400 if args.quick else 10**4
    grid = QUICK if args.quick else FULL
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox"))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scaling-quick" if args.quick else "scaling"
    workdir = Path(tempfile.mkdtemp(prefix="kalmax-scaling-"))
    print(f"worker logs: {workdir / 'workers.log'}", flush=True)
    saved = json.loads((args.out / f"{stem}.json").read_text()) if args.rerun else None
    rows = []
    for sweep in ("d", "N"):
        cells = grid[sweep]
        if saved is not None:
            kept = {r["id"]: r for r in saved["rows"]}
            cells = [c for c in cells if any(t in f"{sweep} {c[0]} d={c[1]} N={c[2]}" for t in args.rerun)]
        measured = {r["id"]: {**r, "sweep": sweep}
                    for r in measure_cells(cells, args.quick, args.float32, args.timeout, workdir, sweep)}
        for method, dim, members in grid[sweep]:
            cell = f"{sweep} {method} d={dim} N={members}"
            rows.append(measured[cell] if cell in measured else kept[cell])
    fitted = fits(rows, args.fit_from_d)
    extra = extrapolate(rows, fitted)
    processes = []
    if saved is not None:
        processes = saved["processes"]
    elif not args.no_processes:
        import bench_distributed

        processes = bench_distributed.measure(args.process_dim, 5 if args.quick else 10)
    text = report(rows, fitted, extra, processes, machine, args)
    common.write_results(stem, text, dict(machine=machine, rows=rows, fits=fitted, extrapolation=extra,
                                          processes=processes), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
