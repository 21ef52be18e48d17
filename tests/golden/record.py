"""Write the golden outputs: `python -m tests.golden.record` (from the repository root)."""

import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from .runs import runs  # noqa: E402

if __name__ == "__main__":
    path = pathlib.Path(__file__).with_name("outputs.npz")
    outputs = runs()
    np.savez_compressed(path, **outputs)
    print(f"wrote {len(outputs)} arrays to {path}")
