"""Shared helpers for the benchmarks: timing, machine description, guarded workers, tables.

Every benchmark script in this folder follows one pattern:

- the parent process (this file's `run_jobs`) imports no JAX; it hands lists of
  jobs to worker processes (the same script run with `--worker`), one worker per
  library and dtype, and waits on each job with a timeout, so that a library that
  deadlocks (dynamax's and cuthbert's parallel filters on some jaxlib versions on
  2-core CPUs) costs one row marked `timeout`, not the whole run;
- the worker prints `@@START <job id>` before and `@@RESULT <json>` after each
  job; anything else it prints goes to the log;
- timings are taken after compilation: the first call (compile + run) is timed
  on its own, then the median of `repeats` further calls, each ended with
  `jax.block_until_ready`; compile time is reported as first call minus median.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
START, RESULT = "@@START ", "@@RESULT "


# -- timing (worker side) --------------------------------------------------------------


def _block(out):
    try:
        import jax

        return jax.block_until_ready(out)
    except ImportError:  # NumPy-only worker
        return out


def time_call(fn, args=(), repeats: int = 5, max_total_s: float | None = None):
    """Time `fn(*args)`: the first call, then the median of `repeats` more.

    Args:
        fn: the function (a compiled JAX function or a NumPy one).
        args: its arguments.
        repeats: number of timed calls after the first.
        max_total_s: stop repeating once the repeats took this long (at least
            one repeat is always made); the number actually made is returned.

    Returns:
        dict(first_s, median_s, min_s, times, repeats) and the last output.
    """
    t0 = time.perf_counter()
    out = _block(fn(*args))
    first = time.perf_counter() - t0
    times = []
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _block(fn(*args))
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if max_total_s is not None and spent > max_total_s:
            break
    med = statistics.median(times)
    return {
        "first_s": first,
        "median_s": med,
        "min_s": min(times),
        "compile_s": max(first - med, 0.0),
        "times": times,
        "repeats": len(times),
    }, out


def emit(tag: str, payload) -> None:
    """Write one protocol line to the parent."""
    sys.stdout.write(tag + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n")
    sys.stdout.flush()


def timed(fn, repeats: int, first_separate: bool, max_total_s: float | None = None):
    """Wall and CPU time of `fn()` (a NumPy or a JAX function; JAX outputs are waited for).

    With `first_separate` (JAX: compilation) the first call is reported on its
    own and the medians are over `repeats` further calls; otherwise the medians
    are over `repeats` calls in all. `max_total_s` stops repeating early (at
    least one timed call is always made). Returns (timings dict, last output).
    """
    walls, cpus, out, first = [], [], None, None
    n = repeats + (1 if first_separate else 0)
    spent = 0.0
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        out = _block(fn())
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if first_separate and i == 0:
            first = {"wall_s": wall, "cpu_s": cpu}
            continue
        walls.append(wall)
        cpus.append(cpu)
        spent += wall
        if max_total_s is not None and spent > max_total_s:
            break
    result = {"median_s": statistics.median(walls), "min_s": min(walls), "median_cpu_s": statistics.median(cpus),
              "min_cpu_s": min(cpus), "times": walls, "cpu_times": cpus, "repeats": len(walls),
              "load": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    if first is not None:
        result.update(first_s=first["wall_s"], first_cpu_s=first["cpu_s"],
                      compile_s=max(first["wall_s"] - result["median_s"], 0.0))  # fmt: skip
    return result, out


def serve_jobs(jobs_table: dict) -> None:
    """The worker side of `run_jobs`: read a JSON list of jobs from stdin and run each with
    `jobs_table[job["kind"]](job)` (a dict of results), emitting START and RESULT lines;
    an exception is reported as the job's error and the next job runs."""
    import traceback

    if os.environ.get(ONE_CORE) == "1":
        hold_to_one_core()
    jobs = json.loads(sys.stdin.read())
    for job in jobs:
        emit(START, job["id"])
        result = dict(job)
        try:
            result.update(status="ok", **jobs_table[job["kind"]](job))
        except Exception as e:  # noqa: BLE001 - report and go on with the next job
            traceback.print_exc()
            result.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        emit(RESULT, result)


ONE_CORE = "KALMAX_BENCH_ONE_CORE"


def hold_to_one_core() -> None:
    """Hold this process to one CPU core. Call it before anything starts XLA: XLA sizes its
    thread pool from the affinity, and threads started later inherit it."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def worker_env(one_blas_thread: bool = True, extra: dict | None = None, one_core: bool = False) -> dict:
    """The environment of a worker process: float64 JAX, no warnings, a headless matplotlib,
    and one OpenBLAS/OMP/MKL thread (or the libraries' defaults with `one_blas_thread=False`);
    with `one_core`, the worker holds itself to one CPU core before its first job (`serve_jobs`)."""
    env = dict(os.environ)
    env.update(extra or {})
    env.pop(ONE_CORE, None)
    if one_core:
        env[ONE_CORE] = "1"
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["JAX_ENABLE_X64"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if one_blas_thread:
            env[var] = "1"
        else:
            env.pop(var, None)
    return env


def run_group(script: Path, jobs: list[dict], env: dict, timeout_s: float, workdir: Path, progress, label: str = ""):
    """Run `jobs` in one worker process of `script` (a fresh one after a timeout or crash),
    logging to workdir/workers.log and printing `progress(result)` per job; results by id."""
    out = {}
    with open(workdir / "workers.log", "a") as log:
        for r in run_jobs(script, jobs, env, timeout_s, log, label):
            out[r["id"]] = r
            print("  " + progress(r), flush=True)
    return out


def write_results(stem: str, text: str, payload: dict, folder: Path = RESULTS) -> None:
    """Write a benchmark's report `folder/stem.md` and its raw numbers `folder/stem.json`, and
    print the report."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(text)
    (folder / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
    print(text)


# -- memory (worker side) ---------------------------------------------------------------


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (Linux: `ru_maxrss` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak_bytes() -> int | None:
    """The default device's `peak_bytes_in_use` (GPU, TPU); None where JAX keeps no count (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def peak_memory(resident_before: int) -> dict:
    """The peak memory of the work done since `resident_bytes()` returned `resident_before`:
    the device's peak where JAX counts it, else the growth of the peak resident memory (which
    includes the compiler's). Meaningful once per fresh process."""
    device_peak = device_peak_bytes()
    if device_peak is None:
        return dict(peak_bytes=peak_resident_bytes() - resident_before, peak_kind="growth of the peak resident memory")
    return dict(peak_bytes=device_peak, peak_kind="device peak_bytes_in_use")


def fmt_bytes(b) -> str:
    if b is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b} B"


# -- guarded workers (parent side) -----------------------------------------------------


def _reader(stream, q):
    for line in iter(stream.readline, ""):
        q.put(line)
    q.put(None)


def run_jobs(script: Path, jobs: list[dict], env: dict, timeout_s: float, log, label: str = ""):
    """Run `jobs` in a worker `python script --worker`, each job under `timeout_s`.

    The worker is started in its own session; a job that does not report within
    `timeout_s` is recorded as `timeout`, the worker (and only it, by its process
    group id) is killed, and a fresh worker continues with the remaining jobs. A
    worker that dies records its current job as `crashed`.

    Yields:
        one result dict per job, in order (with `status` "ok", "skipped",
        "timeout", "crashed" or "error").
    """
    remaining = list(jobs)
    while remaining:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
        )
        proc.stdin.write(json.dumps(remaining))
        proc.stdin.close()
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
        current = None
        deadline = time.monotonic() + timeout_s  # also covers the worker's import time
        while True:
            try:
                line = q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                job = current or remaining[0]
                print(f"  [{label}] TIMEOUT after {timeout_s:.0f} s: {job['id']}", flush=True)
                _kill(proc)
                yield {**job, "status": "timeout", "timeout_s": timeout_s}
                remaining = remaining[remaining.index(job) + 1 :]
                break
            if line is None:  # worker exited
                proc.wait()
                if current is not None or remaining:
                    job = current or remaining[0]
                    print(f"  [{label}] worker died (rc={proc.returncode}) during {job['id']}", flush=True)
                    yield {**job, "status": "crashed", "returncode": proc.returncode}
                    remaining = remaining[remaining.index(job) + 1 :]
                break
            if line.startswith(START):
                job_id = line[len(START) :].strip()
                current = next(j for j in remaining if j["id"] == job_id)
                deadline = time.monotonic() + timeout_s
            elif line.startswith(RESULT):
                result = json.loads(line[len(RESULT) :])
                done = next(j for j in remaining if j["id"] == result["id"])
                remaining = remaining[remaining.index(done) + 1 :]
                current = None
                deadline = time.monotonic() + timeout_s
                yield result
            else:
                log.write(line)
                log.flush()
        if proc.poll() is None:
            _kill(proc)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group only
    except ProcessLookupError:
        pass
    proc.wait()


# -- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
            else:
                name = platform.processor() or "unknown"
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
        )
        extra = [f"family {fields[k]}" if k == "CPU family" else f"model {fields[k]}" for k in ("CPU family", "Model") if k in fields]
        flags = fields.get("Flags", "")
        simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
        if "L3 cache" in fields:
            extra.append(f"L3 {fields['L3 cache']}")
        if fields.get("Hypervisor vendor"):
            extra.append(f"VM ({fields['Hypervisor vendor']})")
        return f"{name} ({', '.join([*extra, simd] if simd else extra)})"
    except Exception:  # noqa: BLE001 - best effort description
        return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def versions(packages) -> dict:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def describe_machine(packages=("jax", "jaxlib", "numpy", "equinox")) -> dict:
    """CPU model, cores, memory, load, Python and library versions, date."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": _mem_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions(packages),
        "kalmax_commit": git_commit(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def machine_markdown(m: dict, shared_note: str | None = None) -> str:
    lines = [
        f"- date: {m['date']}; kalmax commit {m['kalmax_commit']}",
        f"- CPU: {m['cpu']}; {m['cores']} cores ({m['cores_usable']} usable); {m['memory_gib']} GiB RAM; {m['os']}",
        f"- load average at start: {m['load_average_at_start']}",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
    ]
    if m.get("blas_threads") is not None:
        lines.append(f"- OpenBLAS/OMP threads per process (jax's CPU LAPACK calls): {m['blas_threads']}")
    if m.get("XLA_FLAGS"):
        lines.append(f"- XLA_FLAGS={m['XLA_FLAGS']}")
    if shared_note:
        lines.append(f"- {shared_note}")
    return "\n".join(lines)


# -- tables ----------------------------------------------------------------------------


def fmt_time(s) -> str:
    if s is None:
        return "—"
    if isinstance(s, str):
        return s
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_ratio(r) -> str:
    if r is None:
        return ""
    return f"{r:.2g}x" if r < 10 else f"{r:.0f}x"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table for the terminal, with the header as the first line."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
