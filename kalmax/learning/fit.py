"""`fit`: a small gradient-descent loop on optax for the losses of `kalmax.learning`.

    result = kx.learning.fit(loss, (model, method), ys, optax.adam(0.1), n_epochs=150, key=key,
                             trainable=spec)
    model, method = result.learned

One epoch is one optimiser step on `loss(learned, data, key)`. The trainable
leaves are chosen by an equinox filter spec (a pytree of bools with the
structure of `learned`, or a function of a leaf, default `eqx.is_inexact_array`);
the others are held fixed (`eqx.partition` / `eqx.combine`). The step is one
compiled function, `make_step`, public for users who write their own loop:

    step = kx.learning.make_step(loss, optimizer, spec)
    opt_state = optimizer.init(eqx.filter(learned, spec))
    learned, opt_state, value, grads = step(learned, opt_state, data, key)

The same `key` is passed at every epoch: the filter's random draws are then the
same at every step (reparameterised noise), so the loss is a deterministic
function of the parameters; fold the epoch into the key inside `loss` for fresh
draws. A loss or gradient that is not finite stops the fit with a
`LearningError` naming the epoch and the leaf (or skips the step with
`skip_non_finite=True`); `patience` stops early on a plateau.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _checks
from ..results import LearningError


class FitResult(eqx.Module):
    """What `fit` returns.

    Attributes:
        learned: the fitted pytree (the trainable leaves updated, the others as given).
        losses: (n_epochs,) the loss before each epoch's step (NaN after an early stop).
        n_epochs: the number of steps made.
        stopped_early: whether the plateau rule stopped the fit.
    """

    learned: Any
    losses: np.ndarray
    n_epochs: int = eqx.field(static=True)
    stopped_early: bool = eqx.field(static=True)


def _spec(learned, trainable):
    if trainable is None:
        trainable = eqx.is_inexact_array
    if callable(trainable):
        return jax.tree_util.tree_map(trainable, learned)
    return trainable


def make_step(loss: Callable, optimizer: optax.GradientTransformation, trainable=None):
    """The compiled optimiser step `step(learned, opt_state, data, key) -> (learned, opt_state,
    value, grads)` of `loss(learned, data, key)` over the leaves chosen by `trainable`
    (see the module docstring; `grads` has None at the fixed leaves)."""

    @eqx.filter_jit
    def step(learned, opt_state, data, key):
        spec = _spec(learned, trainable)
        params, static = eqx.partition(learned, spec)

        def objective(params):
            return loss(eqx.combine(params, static), data, key)

        value, grads = eqx.filter_value_and_grad(objective)(params)
        # optax mixes Python floats with its int32 step count (Adam's bias correction), which
        # strict dtype promotion refuses; the update is run under JAX's standard promotion
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            new_params = eqx.apply_updates(params, updates)
        return eqx.combine(new_params, static), opt_state, value, grads

    return step


def _first_non_finite_leaf(grads) -> str | None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        if leaf is not None and not bool(jnp.all(jnp.isfinite(leaf))):
            return jax.tree_util.keystr(path)
    return None


def fit(
    loss: Callable,
    learned,
    data,
    optimizer: optax.GradientTransformation,
    n_epochs: int,
    key=None,
    *,
    trainable=None,
    patience: int | None = None,
    min_delta: float = 0.0,
    skip_non_finite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Minimise `loss(learned, data, key)` over the trainable leaves of `learned` with `optimizer`.

    Args:
        loss: a scalar function of the learned pytree first (e.g. `negative_log_likelihood`).
        learned: the initial pytree (e.g. `(model, method)`).
        data: the loss's data (e.g. observations (T, dy), or a batch the loss vmaps over).
        optimizer: an optax optimiser (e.g. `optax.adam(0.1)`).
        n_epochs: the number of steps (int >= 1).
        key: PRNG key passed to `loss` at every step (see the module docstring).
        trainable: which leaves to train: an equinox filter spec or a function of a leaf
            (default: every floating-point array).
        patience: stop when the loss has not improved by more than `min_delta` for this
            many epochs (None: never stop early).
        min_delta: the improvement that counts.
        skip_non_finite: on a non-finite loss or gradient, skip the step instead of raising.
        progress: draw a progress bar with the current loss (tqdm, on stderr).

    Raises:
        ValueError: `n_epochs` not a positive int, or no trainable leaf.
        TypeError: `loss` does not return a scalar.
        LearningError: a non-finite loss or gradient (naming the epoch and the leaf).
    """
    if not callable(loss):
        raise TypeError(f"`loss` must be a function loss(learned, data, key) -> scalar; got {type(loss).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"`optimizer` must be an optax.GradientTransformation, e.g. optax.adam(1e-2); "
                        f"got {type(optimizer).__name__}")
    _checks.check_key("key", key, required=False)
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 1:
        raise ValueError(f"`n_epochs` must be a positive int; got {n_epochs!r}")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"`patience` must be a positive int or None; got {patience!r}")
    spec = _spec(learned, trainable)
    params = eqx.filter(learned, spec)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("`trainable` leaves no trainable array in `learned`: nothing to fit")
    shape = jax.eval_shape(lambda: loss(learned, data, key))
    if not hasattr(shape, "shape") or shape.shape != ():
        raise TypeError(f"`loss` must return a scalar; got {getattr(shape, 'shape', type(shape).__name__)}")
    step = make_step(loss, optimizer, trainable)
    opt_state = optimizer.init(params)
    losses = np.full(n_epochs, np.nan)
    best, since_best, stopped_early, done = np.inf, 0, False, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_epochs, desc="fit", leave=False)
    try:
        for epoch in range(n_epochs):
            new_learned, new_state, value, grads = step(learned, opt_state, data, key)
            value = float(value)
            bad_leaf = None if np.isfinite(value) else "the loss"
            bad_leaf = bad_leaf or _first_non_finite_leaf(grads)
            losses[epoch] = value
            done = epoch + 1
            if bad_leaf is not None:
                if not skip_non_finite:
                    what = "the loss is" if bad_leaf == "the loss" else f"the gradient of leaf {bad_leaf} is"
                    raise LearningError(
                        f"fit: at epoch {epoch} {what} not finite (loss {value}); lower the learning rate, "
                        "constrain the parameter, or pass skip_non_finite=True to skip such steps"
                    )
            else:
                learned, opt_state = new_learned, new_state
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.6g}")
            if value < best - min_delta:
                best, since_best = value, 0
            else:
                since_best += 1
            if patience is not None and since_best >= patience:
                stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    return FitResult(learned=learned, losses=losses, n_epochs=done, stopped_early=stopped_early)


__all__ = ["FitResult", "fit", "make_step"]
