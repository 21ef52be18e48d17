"""Several processes, one program: `jax.distributed` for ensembles and grids over machines.

JAX runs one Python process per host (or per GPU); `jax.distributed.initialize` connects them,
after which `jax.devices()` lists the devices of every process and a mesh over them spans the
machines. kalmax's shardings (`kx.MemberSharding`, `kx.GridSharding`) build their mesh over
`jax.devices()`, so an EnKF or LETKF with a sharding runs unchanged over several processes:
each process runs the same script on the same inputs, holds its own members or grid points,
and XLA inserts the collectives (Gloo on CPU, NCCL on GPU). `gather` brings a result back to
every process as a NumPy array.

    import kalmax as kx
    kx.distributed.initialize()                     # before any computation
    flt = kx.EnKF(96, kx.SquareRoot(), sharding=kx.MemberSharding())
    final, history = kx.assimilate(model, flt, ys, key)
    means = kx.distributed.gather(history.mean)     # (T, d) on every process

`initialize()` without arguments reads the variables `launch_local` sets (below), else leaves
the discovery to JAX, which reads SLURM's, Open MPI's and Kubernetes' variables (one task per
host, e.g. `srun --ntasks-per-node=1 python run.py`). For local runs,
`launch_local(["run.py"], num_processes=4, devices_per_process=2)` starts the processes with a
coordinator on 127.0.0.1, or from the command line
`kalmax launch --processes 4 --devices-per-process 2 run.py`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

__all__ = ["DistributedError", "ProcessRun", "gather", "initialize", "launch_local"]

COORDINATOR = "KALMAX_COORDINATOR"
NUM_PROCESSES = "KALMAX_NUM_PROCESSES"
PROCESS_ID = "KALMAX_PROCESS_ID"


class DistributedError(RuntimeError):
    """Processes that could not be connected (an unreachable coordinator, mismatched versions)."""


def _check_num_processes(num_processes) -> int:
    if isinstance(num_processes, bool) or not isinstance(num_processes, (int, np.integer)) or num_processes < 1:
        raise ValueError(f"`num_processes` must be an int >= 1; got {num_processes!r}")
    return int(num_processes)


def _check_process_arguments(coordinator_address: str, num_processes, process_id) -> tuple[str, int, int, int]:
    _check_num_processes(num_processes)
    if isinstance(process_id, bool) or not isinstance(process_id, (int, np.integer)) or not (
            0 <= process_id < num_processes):
        raise ValueError(f"`process_id` must be an int in [0, {num_processes}); got {process_id!r}")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"`coordinator_address` must be 'host:port' (e.g. '127.0.0.1:12345'); got "
                         f"{coordinator_address!r}")
    return host, int(port), int(num_processes), int(process_id)


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Return once the coordinator accepts connections; DistributedError after `timeout_s`.

    JAX's own wait ends the process (a fatal log, not an exception), so the processes that do
    not host the coordinator probe it first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {host}:{port} did not answer within {timeout_s:g} s ({error}); start "
                    "process 0 first, check the address and that the port is open") from None
            time.sleep(0.2)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: float = 120.0) -> None:
    """Connect this process to the others (`jax.distributed.initialize`), before any computation.

    Args:
        coordinator_address: 'host:port' of process 0, which hosts the coordinator. None: the
            variables set by `launch_local` if present, else JAX's cluster detection (SLURM,
            Open MPI, Kubernetes).
        num_processes: the number of processes (>= 1).
        process_id: this process's index in [0, num_processes).
        timeout_s: how long the other processes wait for the coordinator to answer, and all
            of them for every process to join; a DistributedError names the address after it
            (JAX itself ends a process whose peers never join).

    On CPU the cross-process collectives are Gloo's. After the connection the processes
    compare their jax and kalmax versions and raise a DistributedError if they differ.
    """
    if coordinator_address is None and num_processes is None and process_id is None and COORDINATOR in os.environ:
        coordinator_address = os.environ[COORDINATOR]
        num_processes, process_id = int(os.environ[NUM_PROCESSES]), int(os.environ[PROCESS_ID])
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"`timeout_s` must be a positive number of seconds; got {timeout_s!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU client's; GPUs use NCCL
    timeout = max(1, int(np.ceil(timeout_s)))
    if coordinator_address is None:  # a cluster's scheduler tells JAX everything
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        host, port, num_processes, process_id = _check_process_arguments(coordinator_address, num_processes,
                                                                           process_id)
        if process_id != 0:
            _wait_for_coordinator(host, port, timeout_s)
        jax.distributed.initialize(coordinator_address=f"{host}:{port}", num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    _check_versions()


def _version_numbers(version: str) -> list[int]:
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return numbers + [0] * (3 - len(numbers))


def _check_versions() -> None:
    """Every process runs the same jax and kalmax: compared through one all-gather."""
    if jax.process_count() == 1:
        return
    from importlib.metadata import version

    from jax.experimental import multihost_utils

    mine = np.asarray(_version_numbers(jax.__version__) + _version_numbers(version("kalmax")), np.int32)
    every = np.asarray(multihost_utils.process_allgather(mine))
    if np.any(every != every[0]):
        raise DistributedError(
            "the processes run different versions (jax major.minor.patch, kalmax major.minor.patch per process): "
            + "; ".join(f"process {i}: {row.tolist()}" for i, row in enumerate(every)))


def gather(tree):
    """Every array of a result (a pytree), whole, as NumPy on every process.

    Arrays spread over the devices of several processes are all-gathered
    (`multihost_utils.process_allgather`); the others are copied to the host."""
    from jax.experimental import multihost_utils

    def whole(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf) if isinstance(leaf, (jax.Array, np.ndarray)) else leaf

    return jax.tree_util.tree_map(whole, tree)


@dataclass(frozen=True)
class ProcessRun:
    """What one process of `launch_local` did: its index, exit code, and output."""

    process_id: int
    returncode: int
    stdout: str
    stderr: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_local(argv: Sequence[str], num_processes: int, devices_per_process: int = 1, *,
                 timeout_s: float = 600.0, env: dict | None = None) -> list[ProcessRun]:
    """Run `python *argv` as `num_processes` processes on this machine, connected through a
    coordinator on 127.0.0.1 (the script calls `kx.distributed.initialize()`), each with
    `devices_per_process` CPU devices. Returns one ProcessRun per process; if any fails or the
    run exceeds `timeout_s`, the others are stopped.

    Args:
        argv: the script and its arguments (run with this Python).
        num_processes: >= 1.
        devices_per_process: CPU devices per process (>= 1; `JAX_NUM_CPU_DEVICES`).
        timeout_s: the whole run's limit.
        env: extra environment variables for every process.
    """
    num_processes = _check_num_processes(num_processes)
    if isinstance(devices_per_process, bool) or not isinstance(devices_per_process, (int, np.integer)) or (
            devices_per_process < 1):
        raise ValueError(f"`devices_per_process` must be an int >= 1; got {devices_per_process!r}")
    if isinstance(argv, str) or not argv:
        raise ValueError(f"`argv` must be a non-empty list: the script and its arguments; got {argv!r}")
    address = f"127.0.0.1:{_free_port()}"
    processes, files = [], []
    with contextlib.ExitStack() as stack:
        for process_id in range(num_processes):
            child_env = dict(os.environ, **(env or {}))
            child_env.update({COORDINATOR: address, NUM_PROCESSES: str(num_processes), PROCESS_ID: str(process_id),
                              "JAX_NUM_CPU_DEVICES": str(devices_per_process)})
            # files, not pipes: a child writing more than a pipe holds would block until killed
            out, err = (stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            files.append((out, err))
            processes.append(subprocess.Popen([sys.executable, *map(str, argv)], env=child_env, text=True,
                                              stdout=out, stderr=err))
        deadline = time.monotonic() + timeout_s
        while any(process.poll() is None for process in processes):
            failed = any(process.poll() not in (None, 0) for process in processes)
            if failed or time.monotonic() > deadline:  # the others would wait for it forever
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                break
            time.sleep(0.05)
        runs = []
        for process_id, (process, (out, err)) in enumerate(zip(processes, files)):
            out.seek(0)
            err.seek(0)
            runs.append(ProcessRun(process_id, process.returncode, out.read(), err.read()))
    return runs
