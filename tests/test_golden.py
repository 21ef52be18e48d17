"""Behaviour is kept across refactors: the recorded float64 runs of every method
(tests/golden/runs.py, recorded in tests/golden/outputs.npz) are reproduced to 1e-12."""

import pathlib

import numpy as np
import pytest

from .golden.runs import GROUPS, runs

RECORDED = pathlib.Path(__file__).parent / "golden" / "outputs.npz"


@pytest.mark.parametrize("group", list(GROUPS))
def test_recorded_outputs_are_reproduced(group):
    recorded = np.load(RECORDED)
    reproduced = runs(group)
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
