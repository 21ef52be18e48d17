"""The data-assimilation window shared by the iterative smoothers (iEnKS, 4D-Var).

A window of L = `lag` cycles ends at the newest observation time v_{n+1} and starts at
v_s, s = max(0, n + 1 - L): while the run is shorter than the window it grows from v_0,
then it slides by one cycle after each analysis (shift 1, as DAPPER's iEnKS and Var4D).
Shapes stay static: a window always takes L steps, the first L - min(n + 1, L) of them
the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def through_window(move, state, cycle, lag: int):
    """`state` (at the window's start; a pytree of arrays) moved to the newest state of the
    window of cycle `cycle` by `move` (one cycle), which has min(cycle + 1, lag) cycles."""
    n_active = jnp.minimum(cycle + 1, lag)

    def masked_move(step, v):
        return jax.tree.map(lambda new, old: jnp.where(step >= lag - n_active, new, old), move(v), v)

    def growing(x):
        return jax.lax.fori_loop(0, lag, masked_move, x)

    def full(x):
        return jax.lax.fori_loop(0, lag, lambda _, v: move(v), x)

    # the full window without the mask: its reverse mode measured 1.5-2x cheaper
    return jax.lax.cond(cycle + 1 >= lag, full, growing, state)


def slide(move, start, cycle, lag: int):
    """The next window's start: `start` moved one cycle once the window is full, else kept (v_0)."""
    return jnp.where(cycle + 1 >= lag, move(start), start)


__all__ = ["slide", "through_window"]
