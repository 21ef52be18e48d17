"""Long assimilations that survive interruptions: the run in chunks of cycles, each chunk's
history and the filter state after it saved atomically to a folder, and a killed run
resumed from its last saved chunk.

    final, history = kx.assimilate_resumable(model, method, ys, key, folder="run.ckpt", chunk_size=1000)

Run the same call again after a crash (or a SIGKILL): the chunks already saved are read
back and the run continues from the next one. The result is the same, bit for bit, as an
uninterrupted call: every chunk runs the same compiled program with the same per-cycle
keys (`jax.random.split(key, T + 1)`, as `assimilate`).

Files in `folder` (equinox's leaf serialisation; each written to a temporary name and
renamed, so a kill leaves either the old or the new file, never half of one):
    run.json        what the run is (T, chunk size, a fingerprint of ys, key, model and method)
    chunk-00000.eqx history of chunk 0, ...
    state.eqx       the filter state after the last saved chunk, and how many chunks are saved
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks, checkpoint
from .assimilate import check_status, compiled_run, prepare_run
from .history import Save
from .ssm import TimeVarying

_FORMAT = 1


def assimilate_resumable(
    model,
    method,
    ys: Float[Array, "T dy"],
    key: PRNGKeyArray | None = None,
    *,
    folder: str | os.PathLike,
    chunk_size: int,
    save: Save = Save(),
    throw: bool = True,
    progress: Callable[[int, int], None] | None = None,
):
    """`assimilate` in chunks of `chunk_size` cycles, saved to `folder` after each chunk;
    resumes from what `folder` holds.

    Args:
        model: as `assimilate`.
        method: as `assimilate`.
        ys: as `assimilate`.
        key: as `assimilate`.
        save: as `assimilate` (must be a `kalmax.Save`).
        throw: as `assimilate`.
        folder: where the checkpoints live (created if missing). A folder written by a
            different run (other data, key, model, method, T or chunk size) is refused
            with a ValueError rather than mixed in.
        chunk_size: cycles per chunk (int >= 1): what a crash can cost at most.
        progress: called as `progress(cycles_done, T)` after each saved chunk.

    Returns:
        (final_state, history) as `assimilate`.
    """
    if type(save) is not Save:
        raise TypeError(f"`save` must be a kalmax.Save (savers that read the cycle index are not chunked); "
                        f"got {type(save).__name__}")
    chunk_size = _checks.as_count("chunk_size", chunk_size)
    model, ys, loop = prepare_run(model, method, ys, key)
    n_cycles = ys.shape[0]
    keys = None if key is None else jax.random.split(key, n_cycles + 1)
    starts = list(range(0, n_cycles, chunk_size))

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description = _describe(model, method, ys, key, chunk_size, save)
    try:
        checkpoint.claim(folder, description)
    except ValueError as err:
        raise ValueError(f"`folder`: {err}") from None

    def chunk_inputs(index):
        start = starts[index]
        stop = min(start + chunk_size, n_cycles)
        chunk_model = jax.tree_util.tree_map(
            lambda leaf: TimeVarying(leaf.values[start:stop]) if isinstance(leaf, TimeVarying) else leaf,
            model, is_leaf=lambda leaf: isinstance(leaf, TimeVarying))
        # keys[0] starts the filter (`method.init`); the loop gives keys[1 + n] to cycle n
        chunk_keys = None if keys is None else jnp.concatenate([keys[:1], keys[start + 1: stop + 1]])
        return chunk_model, ys[start:stop], chunk_keys

    def run_chunk(index, state):
        chunk_model, chunk_ys, chunk_keys = chunk_inputs(index)
        return compiled_run(chunk_model, method, chunk_ys, chunk_keys, save, 1, state, loop)

    initial_shape = jax.eval_shape(lambda: run_chunk(0, None))[0]
    done, state = _load_state(folder, initial_shape)
    templates = {}  # history template per chunk length (all chunks but the last share one)
    pieces = []
    for index in range(done):
        length = min(chunk_size, n_cycles - starts[index])
        if length not in templates:
            shapes = jax.eval_shape(lambda s, i=index: run_chunk(i, s), initial_shape)[1]
            templates[length] = checkpoint.like(shapes)
        pieces.append(checkpoint.read_tree(folder / f"chunk-{index:05d}.eqx", templates[length]))
    for index in range(done, len(starts)):
        state, history = run_chunk(index, None if index == 0 else state)
        checkpoint.write_tree(folder / f"chunk-{index:05d}.eqx", history)
        checkpoint.write_tree(folder / "state.eqx", (jnp.asarray(index + 1), state))
        pieces.append(history)
        if progress is not None:
            progress(min(starts[index] + chunk_size, n_cycles), n_cycles)
    history = pieces[0] if len(pieces) == 1 else jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs, axis=0), *pieces)
    if throw:
        history = check_status(history, type(method).__name__)
    return state, history


def _describe(model, method, ys, key, chunk_size: int, save: Save) -> dict:
    return dict(
        format=_FORMAT, n_cycles=int(ys.shape[0]), chunk_size=chunk_size, ys=checkpoint.digest(ys),
        key=None if key is None else checkpoint.digest(key), method=type(method).__name__,
        method_arrays=checkpoint.digest(*checkpoint.array_leaves(method)), model=type(model).__name__,
        model_arrays=checkpoint.digest(*checkpoint.array_leaves(model)),
        method_structure=str(jax.tree_util.tree_structure(eqx.filter(method, eqx.is_array))),
        save=repr(save),
    )


def _load_state(folder: pathlib.Path, state_shape):
    path = folder / "state.eqx"
    if not path.exists():
        return 0, None
    done, state = checkpoint.read_tree(path, checkpoint.like((jnp.asarray(0), state_shape)))
    return int(done), state


__all__ = ["assimilate_resumable"]
