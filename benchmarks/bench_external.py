"""Forward runs outside JAX (`invert_external`) on a process pool and on a Dask cluster: the
overhead kalmax adds per forward run, and the rate of forward runs at which kalmax's own
update would become the bottleneck.

    .venv/bin/python benchmarks/bench_external.py            # J = 100 and 1,000, 5 iterations
    .venv/bin/python benchmarks/bench_external.py --quick    # J = 50, 3 iterations

Executors, each with 2 worker processes of one thread on this machine: a bare
`ProcessPoolExecutor` (spawn) and a Dask `LocalCluster` (`client.get_executor()`).
The forward model is a linear map of d = 8 parameters to p = 16 data (microseconds of work),
so what is timed is the traffic. For each executor and ensemble size J:

- bare: `list(executor.map(forward, points))` for the J points of one iteration, what a user's
  own loop costs (median of the iterations);
- kalmax: `invert_external(problem, EKI(J), ..., executor=executor)`, the `IterationReport`'s
  `forward_seconds` (submit, run, gather, check each output) and `update_seconds` (the jitted
  decision and update: compiled in the first iteration, reused after);
- overhead per member: (kalmax's forward time - bare) / J, the medians over the iterations
  after the first. Target: under 5 ms on localhost.
- the update's ceiling: J / update_seconds, the forward runs per second beyond which the
  update, not the forward model, would set the pace.

Results: benchmarks/results/external{,-quick}.md and .json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

PARAMETERS, DATA = 8, 16
_MATRIX = np.random.default_rng(0).normal(size=(DATA, PARAMETERS)) / np.sqrt(PARAMETERS)
TARGET_OVERHEAD_S = 5e-3


def linear_forward(theta):
    """The forward model: microseconds of NumPy (module level: pickled by reference)."""
    return _MATRIX @ np.asarray(theta)


def make_problem():
    import kalmax as kx

    truth = np.linspace(-1.0, 1.0, PARAMETERS)
    data = linear_forward(truth) + 0.05 * np.random.default_rng(1).normal(size=DATA)
    return kx.InverseProblem(None, data, 0.05**2 * np.eye(DATA), kx.Prior(np.zeros(PARAMETERS), np.eye(PARAMETERS)))


def measure(executor, members: int, iterations: int) -> dict:
    import jax

    import kalmax as kx
    from kalmax.inversion.external import invert_external

    rng = np.random.default_rng(2)
    bare = []
    for _ in range(iterations + 1):
        points = rng.normal(size=(members, PARAMETERS))
        started = time.perf_counter()
        list(executor.map(linear_forward, points))
        bare.append(time.perf_counter() - started)
    reports = []
    started = time.perf_counter()
    invert_external(make_problem(), kx.EKI(members), jax.random.key(3), linear_forward, iterations,
                    executor=executor, callback=reports.append)
    total = time.perf_counter() - started
    forward = [r.forward_seconds for r in reports]
    update = [r.update_seconds for r in reports]
    bare_s, forward_s, update_s = statistics.median(bare[1:]), statistics.median(forward[1:]), statistics.median(update[1:])
    return dict(members=members, iterations=iterations, bare_s=bare_s, forward_s=forward_s,
                first_update_s=update[0], update_s=update_s, total_s=total,
                overhead_per_member_s=(forward_s - bare_s) / members,
                bare_per_member_s=bare_s / members,
                update_ceiling_runs_per_s=members / update_s if update_s > 0 else None)  # fmt: skip


def run(sizes, iterations: int) -> list[dict]:
    rows = []
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(linear_forward, np.zeros(PARAMETERS)).result()  # workers started
        for members in sizes:
            rows.append(dict(executor="ProcessPoolExecutor (2 processes, spawn)", **measure(pool, members, iterations)))
            print(json.dumps(rows[-1]), flush=True)
    try:
        import distributed
    except ImportError:
        print("dask.distributed is not installed: no Dask rows", flush=True)
        return rows
    # the workers import this module by name to unpickle `linear_forward`
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:  # fmt: skip
        executor = client.get_executor()
        executor.submit(linear_forward, np.zeros(PARAMETERS)).result()
        for members in sizes:
            rows.append(dict(executor="Dask LocalCluster (2 worker processes)", **measure(executor, members, iterations)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def against_pool_lines(against_pool: list[tuple[int, float]]) -> list[str]:
    """kalmax on Dask against the bare process pool at the same J: the cost per run of moving the
    forward runs to a cluster, on one machine."""
    if not against_pool:
        return []
    worst = max(x for _, x in against_pool)
    cells = "; ".join(f"J = {j:,}: {common.fmt_time(x)}" for j, x in against_pool)
    return [f"kalmax on Dask against a bare process pool of the same size, per run: {cells} (target under 5 ms: "
            f"{'pass' if worst < TARGET_OVERHEAD_S else 'FAIL'}).", ""]


def report(rows: list[dict], machine: dict, quick: bool) -> str:
    table = [[r["executor"], f"{r['members']:,}", common.fmt_time(r["bare_s"]), common.fmt_time(r["forward_s"]),
              common.fmt_time(r["bare_per_member_s"]), common.fmt_time(r["overhead_per_member_s"]),
              common.fmt_time(r["first_update_s"]), common.fmt_time(r["update_s"]),
              f"{r['update_ceiling_runs_per_s']:,.0f}" if r["update_ceiling_runs_per_s"] else "—"] for r in rows]
    worst = max(r["overhead_per_member_s"] for r in rows)
    pool = {r["members"]: r for r in rows if r["executor"].startswith("ProcessPool")}
    against_pool = [(r["members"], (r["forward_s"] - pool[r["members"]]["bare_s"]) / r["members"])
                    for r in rows if r["executor"].startswith("Dask") and r["members"] in pool]
    lines = ["# Forward runs outside JAX: overhead per run and the update's ceiling", "",
             common.machine_markdown(machine), "",
             f"EKI on a linear forward model (d = {PARAMETERS}, p = {DATA}: microseconds of work, so the times are "
             "the traffic); medians over the iterations after the first. bare = `executor.map` over one iteration's "
             "points; kalmax = `invert_external`'s forward time (submit, run, gather, check). overhead = "
             "(kalmax - bare) / J. update = the jitted decision and update (the first iteration compiles it); "
             "ceiling = J / update: forward runs per second beyond which the update sets the pace.", "",
             common.markdown_table(["executor", "J", "bare map", "kalmax forward", "bare per run",
                                    "kalmax overhead per run", "first update", "update", "ceiling (runs/s)"],
                                   table), "",
             f"Largest overhead per run: {common.fmt_time(worst)} (target under 5 ms: "
             f"{'pass' if worst < TARGET_OVERHEAD_S else 'FAIL'}).", "",
             *against_pool_lines(against_pool),
             "Generated by `benchmarks/bench_external.py" + (" --quick" if quick else "") + "`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox", "distributed"))
    rows = run([50] if args.quick else [100, 1000], 3 if args.quick else 5)
    text = report(rows, machine, args.quick)
    common.write_results("external-quick" if args.quick else "external", text, dict(machine=machine, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
