"""Losses for learning through filters: functions of the learned pytree first.

The learned thing is the pair `(model, method)`: any leaf of either can be
trained (a model's forcing or a neural closure, a method's inflation or
localisation radius, covariance parameters), and `eqx.partition` with a filter
spec chooses which. Every loss is a pure function of that pair, so
`eqx.filter_value_and_grad(loss)((model, method), ys, key)` works, and so do
`jit` and `vmap` (over minibatches of sequences).

- `negative_log_likelihood`: -sum_n log p(y_{n+1} | y_{1:n}) as the filter
  estimates it: exact for the Kalman filter (and the RTS forward pass), the
  linearised or unscented Gaussian for the EKF/UKF, and for ensemble filters
  the Gaussian approximation with the forecast ensemble's innovation covariance,
  sum_n log N(y_n; h(forecast mean), Y^T Y / (J - 1) + Gamma) (AD-EnKF: Chen,
  Sanz-Alonso & Willett 2022, SIAM J. Math. Data Sci. 4(2)).
- `forecast_error`: the mean squared error of `lead`-step forecasts started from
  the analyses, h(Psi^lead(m_n)) against y_{n+lead} (what practitioners use
  when the likelihood is poor).
- `truncated_negative_log_likelihood`: truncated backpropagation through time
  (AD-EnKF): the run is split into windows of `window` cycles and the filter
  state is carried from one window to the next with its gradient stopped, so
  gradients flow within windows only; the value equals the full one.

Random methods take a key: keep it fixed across training steps (reparameterised
noise: the same draws at every step) or split it per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..assimilate import assimilate
from ..history import Save
from ..loops import AbstractTimeLoop, SequentialScan, default_loop
from ..filters.kalman import KalmanFilter
from ..ssm import LinearGaussianSSM
from .fisher import kalman_negative_log_likelihood


def _differentiable_loop(model, method, loop):
    """The loop a loss runs: the given one, else the driver's default with per-cycle
    rematerialisation where that is the plain scan (`SequentialScan(remat=True)`)."""
    if loop is not None:
        return loop
    chosen = default_loop(model, method, False)
    return SequentialScan(remat=True) if isinstance(chosen, SequentialScan) else chosen


def _unpack(pair, who: str):
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise TypeError(f"{who}: the learned pytree must be the pair (model, method); got {type(pair).__name__}")
    return pair


GRADIENTS = ("auto", "fisher", "autodiff")


def _fisher_applies(model, method) -> bool:
    return isinstance(model, LinearGaussianSSM) and isinstance(method, KalmanFilter) and model.n_times is None


def negative_log_likelihood(
    pair,
    ys: Float[Array, "T dy"],
    key: PRNGKeyArray | None = None,
    *,
    loop: AbstractTimeLoop | None = None,
    gradient: str = "auto",
    burn_in: int = 0,
) -> Float[Array, ""]:
    """-sum_n log p(y_{n+1} | y_{1:n}) of the filter `method` on `model` (module docstring).

    Args:
        pair: `(model, method)`, the pytree being learned.
        ys: (T, dy) observations (NaN entries missing).
        key: PRNG key for random methods (fixed across training steps for
            reparameterised noise).
        loop: the time loop (e.g. `kx.CheckpointedScan()` for long runs: O(sqrt(T))
            memory for the gradient); None: the driver's default, with the plain scan
            as `kx.SequentialScan(remat=True)` (cheaper gradients, same values).
        gradient: how reverse-mode derivatives are taken. "autodiff": through the
            filter. "fisher": for a Kalman filter on a time-invariant
            `LinearGaussianSSM`, the exact gradient in closed form from one RTS
            smoother pass (`kalmax.learning.fisher`; 2-3 filter runs instead of
            ~6-10, reverse mode only: no `jax.jvp` / `jax.hessian`). "auto" (default):
            "fisher" where it applies, else "autodiff". (Measured dx = 32, T = 1000,
            one BLAS thread: value_and_grad 79 ms against 209 ms by reverse mode, the
            forward run 26 ms; with the steady-state filter 58 ms against 103 ms.)
        burn_in: leave out the terms of the first `burn_in` cycles (static int in
            [0, T)): -sum_{n >= burn_in} log p(y_{n+1} | y_{1:n}), so that the spin-up
            of a filter started far from the truth does not drive what is learned
            (e.g. an LETKF's radius). With burn_in > 0 the gradient is by reverse mode.
    """
    model, method = _unpack(pair, "negative_log_likelihood")
    n_cycles = jnp.shape(ys)[0]
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or not 0 <= burn_in < n_cycles:
        raise ValueError(f"`burn_in` must be an int in [0, T = {n_cycles}); got {burn_in!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}; got {gradient!r}")
    fisher = _fisher_applies(model, method)
    if gradient == "fisher" and not fisher:
        raise ValueError(
            '`gradient="fisher"` needs a kx.KalmanFilter on a time-invariant kx.LinearGaussianSSM; got '
            f"{type(method).__name__} on {type(model).__name__} (use gradient=\"autodiff\")"
        )
    if fisher and gradient == "fisher" and burn_in:
        raise ValueError('`gradient="fisher"` differentiates the whole log-likelihood; with `burn_in` use "auto"')
    if fisher and gradient != "autodiff" and not burn_in:
        return kalman_negative_log_likelihood(model, method, jnp.asarray(ys, model.dtype), loop=loop)
    loop = _differentiable_loop(model, method, loop)
    _, history = assimilate(model, method, ys, key, save=Save(mean=False), throw=False, loop=loop)
    return -jnp.sum(history.info.log_likelihood[burn_in:])


def _step(model, mean):
    return model.predict_mean(mean) if isinstance(model, LinearGaussianSSM) else model.dynamics(mean)


def _observe(model, mean):
    return model.observe_mean(mean) if isinstance(model, LinearGaussianSSM) else model.observe(mean)


def forecast_error(
    pair,
    ys: Float[Array, "T dy"],
    key: PRNGKeyArray | None = None,
    *,
    lead: int = 1,
    loop: AbstractTimeLoop | None = None,
) -> Float[Array, ""]:
    """Mean squared error of `lead`-step forecasts from the analyses against the data.

    With analysis means m_n (after y_{n+1} = ys[n]), the forecast of y_{n+1+lead} is
    h(Psi^lead(m_n)) (the model's mean dynamics, no noise), compared with ys[n + lead]
    over its observed entries; the loss is the mean over all compared entries.

    Args:
        pair: `(model, method)` (time-invariant model).
        ys: (T, dy) observations, T > lead.
        key: PRNG key for random methods.
        lead: forecast length in cycles (static int >= 1).
        loop: the time loop of the filter run (None: as in `negative_log_likelihood`).
    """
    model, method = _unpack(pair, "forecast_error")
    if isinstance(lead, bool) or not isinstance(lead, int) or lead < 1:
        raise ValueError(f"`lead` must be a positive int; got {lead!r}")
    if ys.shape[0] <= lead:
        raise ValueError(f"`ys` has {ys.shape[0]} cycles: a `lead` of {lead} needs more than {lead}")
    loop = _differentiable_loop(model, method, loop)
    _, history = assimilate(model, method, ys, key, save=Save(), throw=False, loop=loop)

    def predict(mean):
        for _ in range(lead):
            mean = _step(model, mean)
        return _observe(model, mean)

    predicted = jax.vmap(predict)(history.mean[:-lead])  # forecasts of ys[lead:]
    target = ys[lead:]
    observed = jnp.isfinite(target)
    errors = jnp.where(observed, predicted - jnp.where(observed, target, 0.0), 0.0)
    return jnp.sum(errors**2) / jnp.maximum(jnp.sum(observed), 1).astype(errors.dtype)


def truncated_negative_log_likelihood(
    pair,
    ys: Float[Array, "T dy"],
    key: PRNGKeyArray | None = None,
    *,
    window: int,
    loop: AbstractTimeLoop | None = None,
) -> Float[Array, ""]:
    """`negative_log_likelihood` with truncated backpropagation through time.

    The T cycles are split into windows of `window` cycles (a `lax.scan` over the
    full windows, then the remainder); each window starts from the filter state at
    the end of the previous one with its gradient stopped (`lax.stop_gradient`),
    so that the gradient's chain, and its memory, are bounded by the window
    (AD-EnKF's truncation). The initial state is `method.init(model, key)`; window w
    draws with `jax.random.fold_in(key, w)`. For a deterministic method the value
    equals the untruncated one, and with `window = T` so does the gradient.

    Args:
        pair: `(model, method)` (time-invariant model).
        ys: (T, dy) observations.
        key: PRNG key for random methods.
        window: cycles per window (static int, 1 <= window <= T).
        loop: the time loop within each window (None: as in `negative_log_likelihood`).
    """
    model, method = _unpack(pair, "truncated_negative_log_likelihood")
    n_cycles = ys.shape[0]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= n_cycles:
        raise ValueError(f"`window` must be an int in [1, T = {n_cycles}] (cycles per window); got {window!r}")
    if model.n_times is not None:
        raise ValueError("truncated_negative_log_likelihood needs a time-invariant model (no `TimeVarying` field)")
    method.check_model(model)
    model = method.prepare_model(model)
    state = method.init(model, key)
    n_windows, rest = divmod(n_cycles, window)
    loop = _differentiable_loop(model, method, loop)

    def run(state, ys_window, index):
        window_key = None if key is None else jax.random.fold_in(key, index)
        state, history = assimilate(
            model, method, ys_window, window_key, save=Save(mean=False), throw=False,
            init_state=jax.lax.stop_gradient(state), loop=loop,
        )
        return state, -jnp.sum(history.info.log_likelihood)

    tiled = ys[: n_windows * window].reshape(n_windows, window, ys.shape[1])
    state, losses = jax.lax.scan(lambda s, inputs: run(s, *inputs), state, (tiled, jnp.arange(n_windows)))
    total = jnp.sum(losses)
    if rest:
        _, last = run(state, ys[n_windows * window :], n_windows)
        total = total + last
    return total


__all__ = ["forecast_error", "negative_log_likelihood", "truncated_negative_log_likelihood"]
