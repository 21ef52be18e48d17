#!/usr/bin/env bash
# The device benchmark (benchmarks/gpu.py): Kalman filter sequential vs parallel-in-time, ETKF and
# LETKF per cycle for d = 10^3 .. 10^6, the 64 x 8 sweep and EKI on Darcy with J = 1,000, with the
# peak device memory of each; writes benchmarks/results/gpu.md (gpu-quick.md with --quick).
#
#   benchmarks/gpu.sh                  # on the GPU machine: its own python3 (JAX with CUDA) runs
#                                      # kalmax from this checkout, nothing to install
#   benchmarks/gpu.sh --quick          # any machine, tiny sizes (tests/test_benchmarks.py runs it)
#   benchmarks/gpu.sh --out "$OUT"     # results also where the device tool fetches them from
#
# Python: $PYTHON if set, else this checkout's .venv if there is one, else python3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$root/benchmarks/gpu.py" "$@"
