"""Several processes (`kalmax.distributed`): the EnKF with its members and the LETKF with its
grid split over 1, 2 and 4 CPU processes holding 4 devices in all, on this machine.

    .venv/bin/python benchmarks/bench_distributed.py            # d = 400, 100 cycles
    .venv/bin/python benchmarks/bench_distributed.py --quick    # d = 40, 20 cycles

Each configuration runs the same script through `kx.distributed.launch_local`; every process
times the compiled run (median of 3 calls after the first) and gathers the analysis means.
Reported: the largest difference of the means from the one-process run (target 1e-12 in
float64) and the wall time per cycle. On this 2-core machine, processes beyond 2 share cores:
the times show the cost of the collectives between processes, not a speed-up.
Results: benchmarks/results/distributed{,-quick}.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import kalmax as kx
    from kalmax import presets

    kx.distributed.initialize(timeout_s=120)
    dim, cycles = int(sys.argv[1]), int(sys.argv[2])
    model = presets.lorenz96_sakov2008(cycles, dim=dim).model
    _, ys = kx.simulate(model, jax.random.key(1), cycles)
    key = jax.random.key(2)
    methods = {
        "EnKF, N = 40, members split": kx.EnKF(40, kx.SquareRoot(), inflation=1.02, sharding=kx.MemberSharding()),
        "LETKF, N = 20, grid split": kx.LETKF.dapper(20, kx.Periodic1D(dim), 4.0, inflation=1.04,
                                                      sharding=kx.GridSharding()),
    }
    out = {}
    for name, method in methods.items():
        run = lambda: kx.assimilate(model, method, ys, key)[1].mean.block_until_ready()
        run()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            means = run()
            times.append(time.perf_counter() - started)
        out[name] = {"wall_per_cycle_s": statistics.median(times) / cycles,
                     "means": kx.distributed.gather(means).tolist()}
    if jax.process_index() == 0:
        print("@@" + json.dumps(out))
    """
)

LAYOUTS = [(1, 4), (2, 2), (4, 1)]  # (processes, devices per process): 4 devices in all


def measure(dim: int, cycles: int) -> list[dict]:
    import numpy as np

    from kalmax.distributed import launch_local

    rows, reference = [], None
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "run.py"
        script.write_text(SCRIPT)
        for processes, devices in LAYOUTS:
            runs = launch_local([script, str(dim), str(cycles)], processes, devices, timeout_s=1200,
                                env={"OPENBLAS_NUM_THREADS": "1"})
            failed = [run.stderr[-2000:] for run in runs if run.returncode != 0]
            if failed:
                raise RuntimeError(f"{processes} processes failed: {failed}")
            line = next(line for run in runs for line in run.stdout.splitlines() if line.startswith("@@"))
            result = json.loads(line[2:])
            reference = reference or result
            for name, values in result.items():
                difference = float(np.max(np.abs(np.asarray(values["means"]) - np.asarray(reference[name]["means"]))))
                rows.append(dict(method=name, processes=processes, devices_per_process=devices,
                                 wall_per_cycle_s=values["wall_per_cycle_s"], max_difference=difference))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], machine: dict, dim: int, cycles: int, quick: bool) -> str:
    table = [[r["method"], str(r["processes"]), str(r["devices_per_process"]), common.fmt_time(r["wall_per_cycle_s"]),
              f"{r['max_difference']:.1e}"] for r in rows]
    worst = max(r["max_difference"] for r in rows)
    lines = ["# Several processes: EnKF and LETKF over 1, 2 and 4 processes", "",
             common.machine_markdown(machine), "",
             f"Lorenz-96, d = {dim}, {cycles} cycles, float64; 4 CPU devices in all, split over the processes "
             "(`kx.distributed.launch_local`, a coordinator on 127.0.0.1, Gloo collectives). Wall time per cycle of "
             "the compiled run (median of 3 after the first call); the largest difference of the analysis means "
             "from the one-process run (one process holding the 4 devices). On this 2-core machine more than 2 processes share cores: the times show "
             "the cost of the collectives between processes, not a speed-up.", "",
             common.markdown_table(["method", "processes", "devices each", "wall per cycle", "max |diff| of means"],
                                   table), "",
             f"Largest difference: {worst:.1e} (target 1e-12: {'pass' if worst <= 1e-12 else 'FAIL'}).", "",
             "Generated by `benchmarks/bench_distributed.py`" + (" --quick" if quick else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    dim, cycles = (40, 20) if args.quick else (400, 100)
    machine = common.describe_machine(("jax", "jaxlib", "numpy", "equinox"))
    rows = measure(dim, cycles)
    text = report(rows, machine, dim, cycles, args.quick)
    common.write_results("distributed-quick" if args.quick else "distributed", text, dict(machine=machine, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
