"""The data-assimilation window shared by the iterative smoothers (iEnKS, 4D-Var).

A window of L = `lag` cycles ends at the newest observation time v_{n+1} and starts at
v_s, s = max(0, n + 1 - L): while the run is shorter than the window it grows from v_0,
then it slides by S = `shift` cycles after each analysis (shift 1, as DAPPER's iEnKS and
Var4D: one analysis per cycle; shift S: one analysis every S cycles). Shapes stay static:
a window always takes L steps, the first L - min(n + 1, L) of them the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def active_cycles(cycle, lag: int, shift: int = 1):
    """The cycles from the window's start to v_{n+1} at cycle n = `cycle`: the start is that of
    the window of the next analysis (cycle n' >= n with (n' + 1) % shift == 0), v_max(0, n' + 1 - lag);
    min(n + 1, lag) for shift 1."""
    next_analysis = cycle + (shift - 1 - cycle % shift)
    return cycle + 1 - jnp.maximum(0, next_analysis + 1 - lag)


def _masked(moved, state, step, n_active, lag: int):
    """`moved` where step `step` of the window's `lag` is one of its last `n_active`, else `state`."""
    return jax.tree.map(lambda new, old: jnp.where(step >= lag - n_active, new, old), moved, state)


def through_window(move, state, cycle, lag: int):
    """`state` (at the window's start; a pytree of arrays) moved to the newest state v_{n+1}
    of cycle n = `cycle` by `move` (one cycle), min(n + 1, lag) steps (shift 1)."""
    n_active = active_cycles(cycle, lag)

    def growing(x):
        return jax.lax.fori_loop(0, lag, lambda step, v: _masked(move(v), v, step, n_active, lag), x)

    def full(x):
        return jax.lax.fori_loop(0, lag, lambda _, v: move(v), x)

    # the full window without the mask: its reverse mode measured 1.5-2x cheaper
    return jax.lax.cond(n_active >= lag, full, growing, state)


def window_trajectory(move, state, cycle, lag: int, keep: int, shift: int = 1):
    """(keep, ...): `state` moved through the window of cycle `cycle` as `through_window`
    does, and its values at the window's last `keep` times (oldest first; the last row is
    the newest state)."""
    n_active = active_cycles(cycle, lag, shift)

    def run(masked):
        def body(v, step):
            moved = _masked(move(v), v, step, n_active, lag) if masked else move(v)
            return moved, moved

        _, states = jax.lax.scan(body, state, jnp.arange(lag, dtype=jnp.int32))
        return jax.tree.map(lambda x: x[lag - keep:], states)

    return jax.lax.cond(n_active >= lag, lambda: run(False), lambda: run(True))


def slide(move, start, cycle, lag: int):
    """The next window's start: `start` moved one cycle once the window is full, else kept (v_0)."""
    return jnp.where(cycle + 1 >= lag, move(start), start)


__all__ = ["active_cycles", "slide", "through_window", "window_trajectory"]
