"""Write the golden outputs: `python -m tests.golden.record` (from the repository root).

`--group NAME --out PATH` writes one group's outputs to PATH instead (tests/test_golden.py
runs this in a fresh process, compiled at XLA's default optimisation level as when recorded).
"""

import argparse
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from .runs import GROUPS, runs  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", choices=sorted(GROUPS), default=None, help="one group only")
    parser.add_argument("--out", default=None, help="where to write (default: tests/golden/outputs.npz)")
    args = parser.parse_args()
    path = pathlib.Path(args.out) if args.out else pathlib.Path(__file__).with_name("outputs.npz")
    outputs = runs(args.group)
    np.savez_compressed(path, **outputs)
    print(f"wrote {len(outputs)} arrays to {path}")
