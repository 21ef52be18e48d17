"""Atomic checkpoint files for runs that must survive a crash (`assimilate_resumable`,
`invert_external(checkpoint=...)`).

Every file is written to a temporary name, flushed to disk and renamed over the target,
so a kill leaves the old file or the new one, never half of one. A folder is claimed by
one run through its `run.json` (a description with digests of the run's inputs): a folder
of another run is refused instead of mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def digest(*arrays) -> str:
    """SHA-256 of the arrays' shapes, dtypes and bytes (typed PRNG keys by their key data)."""
    hashed = hashlib.sha256()
    for array in arrays:
        if isinstance(array, jax.Array) and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        array = np.asarray(array)
        hashed.update(str((array.shape, array.dtype)).encode())
        hashed.update(np.ascontiguousarray(array).tobytes())
    return hashed.hexdigest()


def array_leaves(tree) -> list:
    """The array leaves of a pytree (to digest a model, a method or a problem)."""
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))


def claim(folder: pathlib.Path, description: dict) -> None:
    """Write `folder`/run.json, or check that the one there describes this run (ValueError
    naming `argument` and what differs otherwise)."""
    path = folder / "run.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != description:
            differing = sorted(k for k in description if found.get(k) != description[k])
            raise ValueError(f"the checkpoint folder {folder} holds another run (it differs in "
                             f"{', '.join(differing)}); give a new folder or delete this one")
        return
    write_bytes(path, json.dumps(description, indent=1).encode())


def like(shapes):
    """Zeros shaped as a tree of `jax.ShapeDtypeStruct` (the template to read a tree back)."""
    return jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, shapes)


def read_tree(path: pathlib.Path, template):
    """The pytree saved at `path`, with the structure, shapes and dtypes of `template`."""
    return eqx.tree_deserialise_leaves(path, template)


def write_tree(path: pathlib.Path, tree) -> None:
    temporary = path.with_name(path.name + ".tmp")
    eqx.tree_serialise_leaves(temporary, tree)
    _sync_and_replace(temporary, path)


def write_array(path: pathlib.Path, array) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, np.asarray(array))
    _sync_and_replace(temporary, path)


def write_bytes(path: pathlib.Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    _sync_and_replace(temporary, path)


def _sync_and_replace(temporary: pathlib.Path, path: pathlib.Path) -> None:
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


__all__ = ["array_leaves", "claim", "digest", "like", "read_tree", "write_array", "write_bytes", "write_tree"]
