"""Scores of a twin experiment: RMSE, spread, CRPS, rank histogram, time averages.

Conventions follow DAPPER (Raanes et al., doi:10.5281/zenodo.2029296), the
NumPy benchmark suite whose published tables kalmax is compared with:

- scores are computed per analysis time and *then* averaged over the analysis
  times after a burn-in (`time_average`): the reported RMSE is the arithmetic
  mean over time of the instantaneous RMSEs, not the root of a mean square;
- an ensemble is an array with the member axis second to last, `(J, d)`, or
  `(T, J, d)` for a history; states and truths are `(d,)` or `(T, d)`; every
  score reduces the last (component) axis and is batched over the leading ones.

Every function is pure JAX: it can be `jit`ted, `vmap`ped and (where it is
differentiable) differentiated. Shapes and dtypes are checked at the Python
level, before tracing, and a mismatch raises a `ValueError` (or `TypeError`
for dtypes) naming the argument and both shapes. The arithmetic then runs in
one small jitted kernel per function, so an eager call compiles once per
input shape instead of once per operation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.stats as jss
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._checks import as_float_array, check_same_dtype, check_shape, is_concrete

__all__ = [
    "crps",
    "crps_gaussian",
    "rank_histogram",
    "rmse",
    "spread",
    "spread_from_cov",
    "time_average",
]

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


# --------------------------------------------------------------------------- helpers


def _safe_sqrt(x: Array) -> Array:
    """sqrt(x) whose gradient at x = 0 is 0 instead of inf (NaN after the chain rule).

    A score of exactly zero (a perfect estimate, a collapsed ensemble) then has
    a zero gradient, the usual subgradient choice for a norm at the origin.
    Negative inputs still give NaN, so a bad covariance is not hidden.
    """
    zero = x == 0
    return jnp.where(zero, jnp.zeros_like(x), jnp.sqrt(jnp.where(zero, jnp.ones_like(x), x)))


def _check_ensemble(name: str, ensemble) -> jax.Array:
    ensemble = as_float_array(name, ensemble)
    if ensemble.ndim < 2:
        raise ValueError(
            f"`{name}` must be an ensemble of shape (..., J, d), members on axis -2; "
            f"got shape {tuple(ensemble.shape)}"
        )
    return ensemble


def _check_vector(name: str, array) -> jax.Array:
    array = as_float_array(name, array)
    if array.ndim < 1:
        raise ValueError(
            f"`{name}` must have shape (..., d), components on the last axis; got a scalar"
        )
    return array


def _check_truth_for_ensemble(ensemble: jax.Array, truth) -> jax.Array:
    truth = _check_vector("truth", truth)
    expected = ensemble.shape[:-2] + ensemble.shape[-1:]
    check_shape(
        "truth", truth, expected,
        because=f"to match `ensemble` of shape {tuple(ensemble.shape)} (..., J, d)",
    )
    check_same_dtype([("ensemble", ensemble), ("truth", truth)])
    return truth


# --------------------------------------------------------------------------- RMSE and spread


def rmse(estimate: Float[Array, "... d"], truth: Float[Array, "... d"]) -> Float[Array, "..."]:
    """Root-mean-square error over the components (the last axis).

        rmse = sqrt( (1/d) sum_i (estimate_i - truth_i)^2 )

    DAPPER's instantaneous RMSE; for an ensemble pass its mean,
    `ensemble.mean(axis=-2)`. Average over time with `time_average`.

    Args:
        estimate: (..., d) estimates, e.g. (d,) one analysis mean or (T, d) a history.
        truth: (..., d) true states, the same shape and dtype as `estimate`.

    Returns:
        (...) the RMSE of each state: a scalar for (d,), (T,) for (T, d). Its
        gradient at an exact estimate is 0 (not NaN).

    Raises:
        ValueError: if the shapes differ or the inputs are scalars.
        TypeError: if the dtypes are not one floating dtype.

    Example:
        A DAPPER-style score of a Lorenz-63 run (analysis every 0.25 time
        units, BurnIn = 16), `history.mean` and `truth` of shape (T, 3)::

            per_time = rmse(history.mean, truth)             # (T,)
            score = time_average(per_time, burn_in=64)       # scalar
    """
    estimate = _check_vector("estimate", estimate)
    truth = _check_vector("truth", truth)
    check_shape("truth", truth, estimate.shape, because="to match `estimate`")
    check_same_dtype([("estimate", estimate), ("truth", truth)])
    return _rmse(estimate, truth)


@jax.jit
def _rmse(estimate: Array, truth: Array) -> Array:
    return _safe_sqrt(jnp.mean((estimate - truth) ** 2, axis=-1))


def spread(ensemble: Float[Array, "... J d"]) -> Float[Array, "..."]:
    """Ensemble spread: the root of the mean over components of the member variance.

        spread = sqrt( (1/d) sum_i var_i ),
        var_i  = 1/(J - 1) sum_j (x_ji - xbar_i)^2      (ddof = 1)

    DAPPER's spread; it is sqrt(trace(C) / d) for the ensemble covariance C,
    computed without forming C. In a well-tuned filter it matches the RMSE of
    the ensemble mean on average.

    Args:
        ensemble: (..., J, d) ensemble with members on axis -2 and J >= 2,
            e.g. (J, d) one analysis or (T, J, d) a history.

    Returns:
        (...) the spread: a scalar for (J, d), (T,) for (T, J, d). Its gradient
        for a collapsed ensemble is 0 (not NaN).

    Raises:
        ValueError: if the ensemble has fewer than 2 dimensions or members.
    """
    ensemble = _check_ensemble("ensemble", ensemble)
    if ensemble.shape[-2] < 2:
        raise ValueError(
            f"`ensemble` needs at least 2 members (axis -2) for a ddof=1 variance; "
            f"got shape {tuple(ensemble.shape)}"
        )
    return _spread(ensemble)


@jax.jit
def _spread(ensemble: Array) -> Array:
    variance = jnp.var(ensemble, axis=-2, ddof=1)
    return _safe_sqrt(jnp.mean(variance, axis=-1))


def spread_from_cov(cov: Float[Array, "... d d"]) -> Float[Array, "..."]:
    """Spread of a Gaussian filter: sqrt( trace(C) / d ), the analogue of `spread`.

    Args:
        cov: (..., d, d) covariance matrices, e.g. (T, d, d) a history of
            Kalman-filter covariances.

    Returns:
        (...) the spread of each covariance. A negative mean diagonal (an
        invalid covariance) gives NaN.

    Raises:
        ValueError: if the last two axes are not square.
    """
    cov = as_float_array("cov", cov)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(
            f"`cov` must be covariance matrices of shape (..., d, d); got shape {tuple(cov.shape)}"
        )
    return _spread_from_cov(cov)


@jax.jit
def _spread_from_cov(cov: Array) -> Array:
    return _safe_sqrt(jnp.mean(jnp.diagonal(cov, axis1=-2, axis2=-1), axis=-1))


# --------------------------------------------------------------------------- CRPS


def crps(
    ensemble: Float[Array, "... J d"],
    truth: Float[Array, "... d"],
    *,
    fair: bool = False,
) -> Float[Array, "..."]:
    """Continuous ranked probability score of an ensemble, averaged over components.

    For each component, with the ensemble's empirical distribution (Gneiting &
    Raftery 2007, eq. 21, the "energy form"):

        CRPS = (1/J) sum_j |x_j - y|  -  1/(2 J^2)     sum_{j,k} |x_j - x_k|

    and with ``fair=True`` the unbiased ("fair") estimator of the CRPS of the
    distribution the members are drawn from (Ferro 2014):

        CRPS = (1/J) sum_j |x_j - y|  -  1/(2 J (J-1)) sum_{j,k} |x_j - x_k|

    Small ensembles form the pair sum directly (a (..., J, J, d) array of at
    most `_PAIRWISE_MAX` entries: one fused pass, several times faster than a
    sort on CPU); larger ones in O(J log J) per component and without a J x J
    array: with the members sorted, x_(1) <= ... <= x_(J),

        sum_{j,k} |x_j - x_k| = 2 sum_k (2k - J - 1) x_(k).

    The members are first centred on the truth, which leaves the score
    unchanged and keeps float32 accurate for values with a large offset.
    Lower is better; for one member (standard form) it is the absolute error.

    Args:
        ensemble: (..., J, d) ensemble with members on axis -2.
        truth: (..., d) verifying states, the same dtype.
        fair: use the fair estimator (needs J >= 2).

    Returns:
        (...) the CRPS averaged over the d components: a scalar for (J, d) vs
        (d,), (T,) for (T, J, d) vs (T, d). Differentiable almost everywhere
        with respect to both arguments.

    Raises:
        ValueError: on mismatched shapes, or ``fair=True`` with one member.

    References:
        T. Gneiting & A. E. Raftery (2007), Strictly proper scoring rules,
        prediction, and estimation, JASA 102(477), 359-378.
        C. A. T. Ferro (2014), Fair scores for ensemble forecasts, QJRMS 140, 1917-1923.
        A. Jordan, F. Krüger & S. Lerch (2019), Evaluating probabilistic forecasts
        with scoringRules, J. Stat. Softw. 90(12) (the sorted-ensemble formula).
    """
    ensemble = _check_ensemble("ensemble", ensemble)
    truth = _check_truth_for_ensemble(ensemble, truth)
    n_members = ensemble.shape[-2]
    if fair and n_members < 2:
        raise ValueError(
            f"the fair CRPS needs at least 2 members (axis -2 of `ensemble`); "
            f"got shape {tuple(ensemble.shape)}"
        )
    return _crps(ensemble, truth, fair)


_PAIRWISE_MAX = 2**20  # entries of the (..., J, J, d) pair array below which the CRPS forms it


@jax.jit(static_argnums=2)
def _crps(ensemble: Array, truth: Array, fair: bool) -> Array:
    n_members = ensemble.shape[-2]
    errors = ensemble - truth[..., None, :]  # (..., J, d)
    abs_term = jnp.mean(jnp.abs(errors), axis=-2)
    if n_members * errors.size <= _PAIRWISE_MAX:
        pair_diffs = errors[..., :, None, :] - errors[..., None, :, :]
        half_pair_sum = 0.5 * jnp.sum(jnp.abs(pair_diffs), axis=(-3, -2))
    else:
        weights = jnp.asarray(2 * np.arange(1, n_members + 1) - n_members - 1, dtype=ensemble.dtype)
        half_pair_sum = jnp.sum(weights[:, None] * jnp.sort(errors, axis=-2), axis=-2)
    denominator = n_members * (n_members - 1) if fair else n_members**2
    per_component = abs_term - half_pair_sum / denominator
    return jnp.mean(per_component, axis=-1)


def crps_gaussian(
    mean: Float[Array, "... d"],
    std: Float[Array, "... d"],
    truth: Float[Array, "... d"],
) -> Float[Array, "..."]:
    """Closed-form CRPS of independent Gaussian marginals, averaged over components.

        CRPS(N(mu, s^2), y) = s [ z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi) ],  z = (y - mu) / s

    (Gneiting et al. 2005, eq. 5), with Phi and phi the standard normal CDF and
    density. For a Gaussian filter pass ``std = sqrt(diag(C))``; the limit
    s -> 0 is the absolute error, used where ``std == 0``.

    Args:
        mean: (..., d) predictive means.
        std: (..., d) predictive standard deviations (>= 0), the same shape.
        truth: (..., d) verifying states, the same shape.

    Returns:
        (...) the CRPS averaged over the d components.

    Raises:
        ValueError: if the shapes differ.

    References:
        T. Gneiting, A. E. Raftery, A. H. Westveld & T. Goldman (2005),
        Calibrated probabilistic forecasting using ensemble model output
        statistics and minimum CRPS estimation, Mon. Wea. Rev. 133, 1098-1118.
    """
    mean = _check_vector("mean", mean)
    std = _check_vector("std", std)
    truth = _check_vector("truth", truth)
    check_shape("std", std, mean.shape, because="to match `mean`")
    check_shape("truth", truth, mean.shape, because="to match `mean`")
    check_same_dtype([("mean", mean), ("std", std), ("truth", truth)])
    return _crps_gaussian(mean, std, truth)


@jax.jit
def _crps_gaussian(mean: Array, std: Array, truth: Array) -> Array:
    positive = std > 0
    safe_std = jnp.where(positive, std, jnp.ones_like(std))
    z = (truth - mean) / safe_std
    score = safe_std * (z * (2 * jss.norm.cdf(z) - 1) + 2 * jss.norm.pdf(z) - _INV_SQRT_PI)
    score = jnp.where(positive, score, jnp.abs(truth - mean))
    return jnp.mean(score, axis=-1)


# --------------------------------------------------------------------------- rank histogram


def rank_histogram(
    ensemble: Float[Array, "... J d"],
    truth: Float[Array, "... d"],
    key: PRNGKeyArray | None = None,
) -> Int[Array, " J+1"]:
    """Rank (Talagrand) histogram: how often the truth has each rank among the members.

    For every time and component the rank of the truth is the number of
    members strictly below it, r = #{j : x_j < y} in {0, ..., J}; the result
    counts each rank over all leading axes and components. A calibrated
    ensemble (truth statistically indistinguishable from a member) gives a
    flat histogram; a U shape means too little spread, a dome too much, and a
    slope a bias.

    Ties (members equal to the truth, e.g. a collapsed ensemble or bounded
    variables) all count as "not below" without a key, which biases the
    histogram to the left. With a `key`, ties are broken at random as Hamill
    (2001) recommends: the rank is drawn uniformly from
    {#below, ..., #below + #equal}. For continuous variables ties have
    probability zero and the key changes nothing.

    Entries whose truth is NaN (missing) are not counted, so the counts sum
    to the number of finite truth entries. NaN members compare as not below.

    Args:
        ensemble: (..., J, d) ensemble with members on axis -2, e.g. (T, J, d).
        truth: (..., d) verifying states, e.g. (T, d), the same dtype.
        key: optional PRNG key for random tie-breaking.

    Returns:
        (J + 1,) counts in the default integer dtype; bin r counts rank r.

    Raises:
        ValueError: on mismatched shapes.

    References:
        J. L. Anderson (1996), A method for producing and evaluating
        probabilistic forecasts from ensemble model integrations, J. Climate 9, 1518-1530.
        T. M. Hamill (2001), Interpretation of rank histograms for verifying
        ensemble forecasts, Mon. Wea. Rev. 129, 550-560.
    """
    ensemble = _check_ensemble("ensemble", ensemble)
    truth = _check_truth_for_ensemble(ensemble, truth)
    return _rank_histogram(ensemble, truth, key)


@jax.jit
def _rank_histogram(ensemble: Array, truth: Array, key: Array | None) -> Array:
    n_members = ensemble.shape[-2]
    truth_b = truth[..., None, :]
    ranks = jnp.sum(ensemble < truth_b, axis=-2)  # (..., d)
    if key is not None:
        n_equal = jnp.sum(ensemble == truth_b, axis=-2)
        ranks = ranks + jax.random.randint(key, ranks.shape, 0, n_equal + 1, dtype=ranks.dtype)
    # Missing truths go to an extra bin J + 1 that is dropped.
    ranks = jnp.where(jnp.isnan(truth), n_members + 1, ranks)
    counts = jnp.bincount(ranks.ravel(), length=n_members + 2)
    return counts[: n_members + 1]


# --------------------------------------------------------------------------- time averages


def time_average(series: Float[Array, "T ..."], burn_in) -> Float[Array, "..."]:
    """Mean over the time axis (axis 0) of the entries after a burn-in.

        average = 1/(T - b) sum_{t=b}^{T-1} series[t]

    i.e. the first `burn_in` = b entries are discarded. DAPPER averages over
    the analysis times t > BurnIn (in model time units); with kalmax's
    convention that `history[k]` is the analysis after y_{k+1}, at time
    (k + 1) * dt_obs, that is ``burn_in = round(BurnIn / dt_obs)`` entries
    (64 for Lorenz-63 with BurnIn = 16 and dt_obs = 0.25; 400 for Lorenz-96
    with BurnIn = 20 and dt_obs = 0.05). For a pytree of histories use
    ``jax.tree.map(lambda s: time_average(s, b), history)``.

    Args:
        series: (T, ...) per-time scores or states, e.g. `rmse(...)` of shape (T,).
        burn_in: number of leading entries to drop, 0 <= burn_in < T. A Python
            int is checked; an integer array may also be traced (under `jit`)
            and then is not checked (burn_in >= T gives NaN).

    Returns:
        (...) the average over the kept times.

    Raises:
        ValueError: if `series` is a scalar or `burn_in` is out of range.
        TypeError: if `burn_in` is not an integer.
    """
    series = as_float_array("series", series)
    if series.ndim < 1:
        raise ValueError("`series` must have a leading time axis, shape (T, ...); got a scalar")
    n_times = series.shape[0]
    if isinstance(burn_in, bool) or not (
        isinstance(burn_in, (int, np.integer))
        or (hasattr(burn_in, "dtype") and jnp.issubdtype(burn_in.dtype, jnp.integer))
    ):
        raise TypeError(f"`burn_in` must be an integer number of time steps; got {burn_in!r}")
    if jnp.ndim(burn_in) != 0:
        raise ValueError(f"`burn_in` must be a scalar; got shape {tuple(jnp.shape(burn_in))}")
    if is_concrete(burn_in):
        value = int(burn_in)
        if not 0 <= value < n_times:
            raise ValueError(
                f"`burn_in` must satisfy 0 <= burn_in < T = {n_times} (series shape "
                f"{tuple(series.shape)}) so that some times remain; got {value}"
            )
    return _time_average(series, jnp.asarray(burn_in))


@jax.jit
def _time_average(series: Array, burn_in: Array) -> Array:
    # A mask instead of a slice, so that one compilation serves every burn_in
    # and a traced burn_in keeps shapes static.
    n_times = series.shape[0]
    index = jnp.arange(n_times)
    kept = index >= jnp.asarray(burn_in).astype(index.dtype)  # strict promotion: one int dtype
    kept_b = kept.reshape((n_times,) + (1,) * (series.ndim - 1))
    total = jnp.sum(jnp.where(kept_b, series, jnp.zeros_like(series)), axis=0)
    return total / jnp.sum(kept).astype(series.dtype)
