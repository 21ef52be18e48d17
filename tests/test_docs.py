"""docs/extending.md works as written: its filter is the one in examples/nudging.py, its
Python blocks run in order, and its command lines run."""

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"


def _blocks(language: str, page: pathlib.Path = PAGE) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def test_the_page_shows_the_example_file():
    example = (ROOT / "examples" / "nudging.py").read_text()
    assert _blocks("python")[0].strip() in example


def test_the_python_blocks_run_and_track_the_truth(capsys):
    namespace: dict = {}
    for block in _blocks("python"):
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    out = capsys.readouterr().out
    rmse = float(out.splitlines()[0])
    assert 0.3 < rmse < 0.9  # nudging with strength 0.5 under unit observation noise
    assert np.isfinite(float(namespace["slope"]))
    assert np.all(np.asarray(namespace["swept"].n_failed) == 0)
    assert isinstance(namespace["Nudging"](0.5), namespace["kx"].AbstractFilter)


def test_the_command_lines_run():
    for line in _blocks("bash")[0].strip().splitlines():
        args = line.split()[1:]
        args[args.index("--cycles") + 1] = "150"
        done = subprocess.run([sys.executable, "-m", "kalmax.cli", *args, "--burn-in", "50"], cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        assert "rmse" in done.stdout


def test_the_learning_page_runs_and_recovers_the_forcing(capsys):
    page = ROOT / "docs" / "learning.md"
    namespace: dict = {}
    for block in _blocks("python", page):
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - the page's own code
    lines = capsys.readouterr().out.splitlines()
    assert abs(float(lines[0]) - 8.0) < 0.3  # gradient fit
    assert abs(float(lines[1]) - 8.0) < 0.3  # state augmentation
    obs_var, level_var = (float(x) for x in lines[2].split())  # EM on the Nile
    assert abs(obs_var / 15099 - 1) < 0.01 and abs(level_var / 1469.1 - 1) < 0.01
    assert np.isfinite(float(namespace["loss"]))
