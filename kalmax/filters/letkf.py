"""The local ensemble transform Kalman filter (LETKF; Hunt, Kostelich & Szunyogh 2007).

Notation as in `kalmax.filters.enkf` (rows are members): forecast members E
(J, d) with mean x and anomalies A = E - x; whitened observed anomalies
S = Y L^{-T} (J, p) and innovation dy = L^{-1}(y - y_hat) (p,), Gamma = L L^T,
computed once for all observations by `ensemble_space` (missing entries of y
give zero columns of S and zero entries of dy, so they carry nothing).

For each local domain b (a state point, or a block of points: see
`Localization`), a local ETKF in ensemble space in which observation k's
inverse error variance is multiplied by the taper rho_bk = rho(dist(b, k))
(Hunt et al. 2007, section 2.3; Greybush et al. 2011 "R-localisation"):

    W_b = diag(rho_b1, ..., rho_bK)             (K neighbours of b)
    G_b = S_b W_b S_b^T + (J - 1) I_J            (J, J)
    w_b = G_b^{-1} S_b W_b dy_b                  (J,)   mean weights
    T_b = sqrt(J - 1) G_b^{-1/2}                 (J, J) symmetric square root
    E_a[:, b] = x_b + (w_b 1^T + T_b)^T A[:, b]  (the same w_b and T_b for mean and anomalies)

which is DAPPER's "sqrt(taper) on the whitened anomalies and innovation"
(S_b W_b S_b^T = (S_b W_b^{1/2})(S_b W_b^{1/2})^T), written without the square
root so that the gradient with respect to the radius stays finite where the
taper vanishes. Observations with zero weight contribute exactly nothing, and
with rho = 1 for every observation each local analysis is the global ETKF.

Static shapes under `jit`: the K neighbours of each domain come from a static
neighbour list computed once in NumPy from the geometry, the observation
locations and the taper's static bound `max_radius` (`Localization.plan`),
padded with zero weights to the largest count K. The B local analyses are
`vmap`ped in batches of `batch_size` domains under `lax.map`, so the working
memory is O(batch_size * J * (J + K)) and no d x d (or d x p) array is formed:
a d = 40,000 state costs O(d J (J + K)) operations and O(J d + d K) memory.
With fewer local observations than members (K < J) each local analysis runs
in the K x K observation space instead (`_local_observation_space`, the
push-through identity; measured 8-12x faster at J = 100, K = 26).

Log-likelihood: `EnsembleInfo.log_likelihood` is by default the *global*
Gaussian-approximation term log N(y; y_hat, Y^T Y / (J - 1) + Gamma) with the
un-localised ensemble innovation covariance (as `EnKF` reports it, evaluated by
Woodbury in ensemble space): localisation changes the update, not this
estimate of p(y_{n+1} | y_{1:n}). With `localized_likelihood=True` it is
log N(y; y_hat, rho_yy o (Y^T Y / (J - 1)) + Gamma) with the taper rho_yy of the
distances between observations (AD-EnKF's localised likelihood, Chen,
Sanz-Alonso & Willett 2022): full rank for small ensembles and a function of
the radius, so that learning the radius by this likelihood is meaningful; it
factors a dense p x p matrix each cycle (O(p^3): meant for p up to a few thousand).

DAPPER's flavour (`LETKF.dapper`, `Localization.dapper`): blocks of 2
consecutive points with the mean distance over the block, Gaspari-Cohn with
half-width 1.82 * loc_rad, observations with taper <= 1e-3 dropped, and
multiplicative inflation of the analysis anomalies after the analysis, as in
`dapper/da_methods/ensemble.py` (`LETKF`, `local_analyses`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..covariance import DenseCovariance
from ..ensemble.inflation import AbstractInflation, as_inflation
from ..ensemble.localization import AbstractGeometry, LocalPlan, Localization
from ..gaussian import Ensemble
from ..linalg import cho_solve, logdet_from_chol, sym_inv_sqrt, sym_matrix_function
from ..ensemble.algebra import EnsembleSpace, ensemble_space, use_observation_space
from ..sharding import GridSharding
from .ensemble_base import AbstractEnsembleFilter, finish_analysis, member_model

# Working-set target of one batch of local analyses, in array elements (about
# 32 MiB in float64): the automatic `batch_size` keeps each batch below it.
_BATCH_ELEMENTS = 1 << 22


def default_batch_size(plan: LocalPlan, ensemble_size: int) -> int:
    """Local domains per vmapped batch so that one batch's working set is about
    2^22 elements: the gathered anomalies (K + b) J plus a few J x J matrices per domain."""
    n_blocks, points = plan.blocks.shape
    neighbours = plan.neighbours.shape[1]
    per_block = ensemble_size * (neighbours + points) + 4 * ensemble_size**2 + neighbours
    return int(max(1, min(n_blocks, _BATCH_ELEMENTS // per_block)))


def local_analyses(space: EnsembleSpace, localization: Localization, plan: LocalPlan,
                   batch_size: int | None = None, observation_space: bool | None = None,
                   grid_sharding: GridSharding | None = None) -> Float[Array, "J d"]:
    """The analysis members (J, d): one local ETKF per domain of `plan` (see module doc).

    Args:
        space: the global whitened quantities (`ensemble_space`).
        localization: gives the taper weights at its (traced) radius.
        plan: the static neighbour lists (`localization.plan(model)`).
        batch_size: domains per vmapped batch (None: `default_batch_size`).
        observation_space: do each local algebra in the K x K space of the local
            observations instead of the J x J ensemble space (None: when K < J;
            the two are equal up to rounding, see `_local_observation_space`).
        grid_sharding: a `GridSharding`: the domains are split over its devices (all
            domains in one `vmap`, each device its share; `batch_size` is not used).
    """
    size = space.anomalies.shape[0]
    dtype = space.anomalies.dtype
    ridge = jnp.asarray(size - 1, dtype)
    eye = jnp.eye(size, dtype=dtype)
    # rows are observations / state points, so each local gather reads contiguous rows
    obs_rows = space.obs_anomalies.T  # (p, J)
    state_rows = space.anomalies.T  # (d, J)
    weights = localization.weights(plan, dtype)  # (B, K)
    if observation_space is None:
        observation_space = use_observation_space(size, plan.neighbours.shape[1])

    def local(inputs):
        points, neighbours, rho = inputs
        s_loc = obs_rows[neighbours]  # (K, J)
        if observation_space:
            increments = _local_observation_space(s_loc, rho, space.innovation[neighbours], state_rows[points], ridge)
            return space.mean[points][:, None] + increments
        s_weighted = s_loc * rho[:, None]
        gram = s_weighted.T @ s_loc + ridge * eye  # (J, J)
        inv_sqrt = sym_inv_sqrt(gram)
        mean_weights = inv_sqrt @ (inv_sqrt @ (s_weighted.T @ space.innovation[neighbours]))
        transform = mean_weights[:, None] + jnp.sqrt(ridge) * inv_sqrt  # (J, J), T symmetric
        return space.mean[points][:, None] + state_rows[points] @ transform  # (b, J)

    inputs = (jnp.asarray(plan.blocks), jnp.asarray(plan.neighbours), weights)
    n_blocks = plan.blocks.shape[0]
    batch = default_batch_size(plan, size) if batch_size is None else int(batch_size)
    if grid_sharding is not None:
        inputs = tuple(grid_sharding.constrain_grid(values) for values in inputs)
        out = grid_sharding.constrain_grid(jax.vmap(local)(inputs))
    elif batch >= n_blocks:
        out = jax.vmap(local)(inputs)
    else:
        out = jax.lax.map(local, inputs, batch_size=batch)
    rows = out.reshape(-1, size)  # (d, J) in block order
    if plan.order is not None:
        rows = rows[jnp.asarray(plan.order)]
    return rows.T


def _safe_sqrt(x):
    """sqrt(x) for x >= 0 with derivative 0 (not inf) at x = 0, where the tapers vanish smoothly."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _inv_sqrt_minus_identity(mu, ridge):
    # ((mu + c)^{-1/2} - c^{-1/2}) / mu, written without the division (finite at mu = 0)
    root, root_c = jnp.sqrt(jnp.maximum(mu, 0.0) + ridge), jnp.sqrt(ridge)
    return -1.0 / (root_c * root * (root + root_c))


def _local_observation_space(s_loc, rho, innovation, rows, ridge):
    """One local ETKF in the K x K space of its observations (K < J): the increments (b, J) of `rows`.

    With M = W^{1/2} S_b (K x J, rows scaled by sqrt(rho)) and c = J - 1, so that
    G = M^T M + c I, the push-through identity gives

        w = G^{-1} M^T z = M^T (M M^T + c I)^{-1} z,        z = W^{1/2} dy_b,
        G^{-1/2} = c^{-1/2} I + M^T h(M M^T) M,              h(mu) = ((mu + c)^{-1/2} - c^{-1/2}) / mu,

    so the analysis rows are x_b + A_b (w 1^T + sqrt(c) G^{-1/2}) =
    x_b + (A_b w) 1^T + A_b + sqrt(c) ((A_b M^T) h(M M^T)) M: O(b J K + K^3), no J x J matrix.
    """
    m = s_loc * _safe_sqrt(rho)[:, None]  # (K, J)
    gram = m @ m.T  # (K, K)
    size = gram.shape[0]
    chol = jnp.linalg.cholesky(gram + ridge * jnp.eye(size, dtype=gram.dtype))
    mean_weights = m.T @ cho_solve(chol, _safe_sqrt(rho) * innovation)  # (J,)
    correction = sym_matrix_function(_inv_sqrt_minus_identity, gram, ridge)  # h(M M^T), (K, K)
    return (rows @ mean_weights)[:, None] + rows + jnp.sqrt(ridge) * (((rows @ m.T) @ correction) @ m)


def _check_obs_cov(obs_cov) -> None:
    if isinstance(obs_cov, DenseCovariance):
        matrix = obs_cov.covariance
        if not isinstance(matrix, jax.core.Tracer):
            values = np.asarray(matrix)
            if np.any(values - np.diag(np.diagonal(values))):
                raise ValueError(
                    "the LETKF localises observations one by one: `obs_cov` must be diagonal "
                    "(use DiagonalCovariance / ScalarCovariance, or decorrelate the observations first)"
                )


class LETKF(AbstractEnsembleFilter):
    """Local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007).

    A local ETKF for each state point (or block of points) in which each
    observation's inverse error variance is multiplied by a taper of its
    distance (see the module docstring for the equations, the static neighbour
    lists and the log-likelihood term). The cycle is that of `EnKF`: forecast
    every member (plus model noise); `inflation.prior`; the local analyses;
    `inflation.posterior`; the rotation.

    Args:
        ensemble_size: number of members J >= 2 (static).
        localization: a `Localization` (geometry, taper, observation locations,
            block size, cut-off).
        inflation: an inflation Module, or a number / (d,) array for multiplicative
            inflation of the analysis anomalies (DAPPER's `infl`), or None.
        rotate: a random mean-preserving rotation of the analysis anomalies after
            the inflation (DAPPER's `rot=True`).
        batch_size: local domains per vmapped batch (static; memory is
            O(batch_size J (J + K))). None: automatic (about 2^22 elements per
            batch). It does not change the result.
        localized_likelihood: report the localised log-likelihood term (module
            docstring) instead of the global one (static).
        sharding: a `kalmax.sharding.GridSharding` to split the grid over devices,
            of one process or several (`kalmax.distributed`): the members' state axis
            and the local analyses (static; the state dimension must be a multiple of
            the devices). None: one device.

    The state is an `Ensemble`, the info an `EnsembleInfo`.

    Example:
        >>> loc = kx.Localization(kx.Periodic1D(40), kx.GaspariCohn.dapper(4.0))
        >>> flt = kx.LETKF(7, loc, inflation=1.04, rotate=True)
        >>> final, history = kx.assimilate(model, flt, ys, jax.random.key(0))
    """

    ensemble_size: int = eqx.field(static=True)
    localization: Localization
    inflation: AbstractInflation
    rotate: bool = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    localized_likelihood: bool = eqx.field(static=True)
    sharding: GridSharding | None = eqx.field(static=True)

    def __init__(self, ensemble_size: int, localization: Localization, inflation=None, rotate: bool = False,
                 batch_size: int | None = None, localized_likelihood: bool = False, sharding=None):
        if isinstance(ensemble_size, bool) or int(ensemble_size) != ensemble_size or int(ensemble_size) < 2:
            raise ValueError(f"`ensemble_size` must be an integer >= 2; got {ensemble_size}")
        if not isinstance(localization, Localization):
            raise TypeError(
                "`localization` must be a kalmax.Localization(geometry, taper, ...); "
                f"got {type(localization).__name__}"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                       or int(batch_size) < 1):
            raise ValueError(f"`batch_size` must be a positive integer or None; got {batch_size}")
        self.ensemble_size = int(ensemble_size)
        self.localization = localization
        self.inflation = as_inflation(inflation)
        self.rotate = bool(rotate)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.localized_likelihood = bool(localized_likelihood)
        if sharding is not None and not isinstance(sharding, GridSharding):
            raise TypeError(f"`sharding` must be a GridSharding (kalmax.sharding) or None; got {type(sharding).__name__}")
        self.sharding = sharding

    @classmethod
    def dapper(cls, ensemble_size: int, geometry: AbstractGeometry, loc_rad, inflation=None, rotate: bool = False,
               block=2, batch_size: int | None = None, max_radius: float | None = None,
               localized_likelihood: bool = False, sharding=None) -> LETKF:
        """DAPPER's `LETKF(N, loc_rad, infl, rot)`: `Localization.dapper` (blocks of 2,
        mean block distance, Gaspari-Cohn half-width 1.82 loc_rad, taper cut-off
        1e-3) and the inflation applied to the analysis anomalies."""
        localization = Localization.dapper(geometry, loc_rad, block=block, max_radius=max_radius)
        return cls(ensemble_size, localization, inflation, rotate, batch_size, localized_likelihood, sharding)

    def constrain(self, members):
        """`members` constrained to the `sharding` (unchanged without one)."""
        return members if self.sharding is None else self.sharding.constrain(members)

    def check_model(self, model) -> None:
        """Checks before tracing (called by `assimilate`): geometry size, observation
        locations, blocks, a diagonal `obs_cov`, per-variable inflation size."""
        model = member_model(model, type(self).__name__)
        self.inflation.check_size(model.state_dim)
        self.localization.check(model)
        _check_obs_cov(model.obs_cov)
        if self.sharding is not None:
            self.sharding.check_size(self.ensemble_size, model.state_dim)

    def analysis_step(self, model, forecast: Ensemble, y, key):
        """The analysis without the argument checks of `analysis`."""
        plan = self.localization.plan(model)
        key_prior, key_post, key_rot = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        inflated = self.inflation.prior(forecast, key_prior)
        observed = jax.vmap(model.observe)(inflated.members)
        space = ensemble_space(inflated, observed, y, model.obs_cov)
        members = local_analyses(space, self.localization, plan, self.batch_size, grid_sharding=self.sharding)
        taper = self.localization.taper
        if taper.max_radius is not None and math.isfinite(taper.max_radius):
            members = eqx.error_if(
                members,
                taper.radius > taper.max_radius,
                f"LETKF: the taper's `radius` exceeds its static `max_radius` ({taper.max_radius}), from which "
                "the neighbour lists were built; construct the taper with a larger `max_radius`",
            )
        state, info = finish_analysis(self.inflation, self.rotate, inflated, members, space, key_post, key_rot)
        if self.localized_likelihood:
            tapered = self.localization.taper(jnp.asarray(self.localization.obs_distances(model), observed.dtype))
            info = eqx.tree_at(lambda i: i.log_likelihood, info,
                               localized_log_likelihood(observed, y, model.obs_cov, tapered))
        return state, info

    def analysis(self, model, state: Ensemble, y: Float[Array, " p"], key=None):
        """Assimilate y_{n+1} (NaN entries missing) into the forecast ensemble."""
        model = member_model(model, "LETKF.analysis")
        if state.members.shape[0] != self.ensemble_size:
            raise ValueError(
                f"`state` has {state.members.shape[0]} members but `ensemble_size` is {self.ensemble_size}"
            )
        y = jnp.asarray(y)
        if y.shape != (model.obs_dim,):
            raise ValueError(f"`y` must have shape ({model.obs_dim},) to match the model's observations; got {y.shape}")
        needs_key = self.rotate or self.inflation.stochastic
        if needs_key and key is None:
            raise ValueError("LETKF.analysis draws random numbers (rotation or inflation): a `key` is required")
        return self.analysis_step(model, state, y, key)


def localized_log_likelihood(observed: Float[Array, "J p"], y: Float[Array, " p"], obs_cov, taper) -> Float[Array, ""]:
    """log N(y_o; mean of `observed`, rho o (Y^T Y / (J - 1)) + Gamma) over the observed entries o
    of y (module docstring); `taper` is the (p, p) matrix rho of the observations' distances."""
    size, p = observed.shape
    dtype = observed.dtype
    mask = jnp.isfinite(y)
    mean = observed.mean(axis=0)
    anomalies = observed - mean
    cov = taper * (anomalies.T @ anomalies) / jnp.asarray(size - 1, dtype) + obs_cov.matrix()
    both = mask[:, None] & mask[None, :]
    cov = jnp.where(both, cov, jnp.eye(p, dtype=dtype))  # missing entries: an identity block, no innovation
    innovation = jnp.where(mask, y - mean, 0.0)
    factor = jnp.linalg.cholesky(cov)
    quad = innovation @ cho_solve(factor, innovation)
    n_observed = jnp.sum(mask).astype(dtype)
    return -0.5 * (quad + logdet_from_chol(factor) + n_observed * jnp.log(jnp.asarray(2 * math.pi, dtype)))


__all__ = ["LETKF", "default_batch_size", "local_analyses", "localized_log_likelihood"]
