"""Behaviour is kept across refactors: the recorded float64 runs of every method
(tests/golden/runs.py, recorded in tests/golden/outputs.npz) are reproduced to 1e-12.

The chaotic groups (ensemble filters and twin experiments on Lorenz models) are reproduced
in a fresh process compiled as they were recorded (XLA's default optimisation level): the
rest of the suite compiles at -O0 (tests/conftest.py), whose code rounds differently, and
chaotic runs carry that difference to 1e-8. The other groups (Kalman filters, inversion)
are reproduced in the test process itself, where -O0's rounding was measured at 2e-14
(and where the programs compiled by the other tests are reused)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from .golden.runs import GROUPS, runs

IN_PROCESS = ("kalman", "inversion")  # not chaotic: -O0 rounds them within 1e-12

RECORDED = pathlib.Path(__file__).parent / "golden" / "outputs.npz"
ROOT = pathlib.Path(__file__).parent.parent


def reproduce(group: str, out: pathlib.Path) -> dict[str, np.ndarray]:
    env = dict(os.environ, XLA_FLAGS=os.environ.get("KALMAX_TESTS_USER_XLA_FLAGS", ""), OPENBLAS_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "tests.golden.record", "--group", group, "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as reproduced:
        return {name: reproduced[name] for name in reproduced.files}


@pytest.mark.parametrize("group", list(GROUPS))
def test_recorded_outputs_are_reproduced(group, tmp_path):
    recorded = np.load(RECORDED)
    if group in IN_PROCESS:
        reproduced = runs(group)  # float64: tests/conftest.py enables it
    else:
        reproduced = reproduce(group, tmp_path / f"{group}.npz")
    expected_names = sorted(name for name in recorded.files if name.startswith(f"{group}:"))
    assert expected_names and sorted(reproduced) == expected_names
    mismatched = []
    for name in expected_names:
        expected, got = recorded[name], reproduced[name]
        assert got.shape == expected.shape, name
        # NaN only where the recording has it (padding of adaptive inversion histories)
        assert np.array_equal(np.isnan(got), np.isnan(expected)), f"{name}: NaN pattern changed"
        finite = np.isfinite(expected)
        assert finite.any(), f"{name}: nothing finite was recorded"
        scale = max(1.0, float(np.max(np.abs(expected[finite]))))
        error = float(np.max(np.abs(got[finite] - expected[finite]))) / scale
        if error > 1e-12:
            mismatched.append(f"{name}: {error:.2e}")
    assert not mismatched, "outputs changed: " + ", ".join(mismatched)
