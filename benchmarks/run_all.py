"""Run every benchmark in this folder (`make bench`).

    .venv/bin/python benchmarks/run_all.py            # every benchmarks/bench_*.py, full size
    .venv/bin/python benchmarks/run_all.py --quick    # the same, each in its quick form
    .venv/bin/python benchmarks/run_all.py --only kalman --dx 4 32   # one script, its own flags

Each script writes its tables into benchmarks/results/ and prints them. Every
argument except `--only NAME` (which picks the scripts whose name contains
NAME; repeatable) is passed on to every script. Exits non-zero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    flags, picks = [], []
    it = iter(argv)
    for a in it:
        if a == "--only":
            picks.append(next(it, ""))
        elif a.startswith("--only="):
            picks.append(a.split("=", 1)[1])
        else:
            flags.append(a)
    scripts = sorted(HERE.glob("bench_*.py"))
    if picks:
        scripts = [s for s in scripts if any(p in s.stem for p in picks)]
    if not scripts:
        print(f"no benchmark matches {picks}; have: {[s.stem for s in sorted(HERE.glob('bench_*.py'))]}")
        return 2
    failed = []
    for script in scripts:
        print(f"=== {script.name} {' '.join(flags)}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script), *flags])
        print(f"=== {script.name}: exit {rc} after {time.time() - t0:.0f} s\n", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    print("results in " + str(HERE / "results"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
