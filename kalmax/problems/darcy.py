"""The Darcy-flow inverse problem: recover the log-permeability from pressure data.

The elliptic inverse problem of Iglesias, Law & Stuart (2013), "Ensemble Kalman
methods for inverse problems", Inverse Problems 29, 045001, in the setting of
Garbuno-Inigo, Hoffmann, Li & Stuart (2020), "Interacting Langevin diffusions:
gradient structure and ensemble Kalman sampler", SIAM J. Appl. Dyn. Syst. 19,
Section 5.2: the unknown is the vector theta of Karhunen-Loeve coefficients of
the log-permeability u = sum_l sqrt(lambda_l) theta_l phi_l (see
`kalmax.models.Darcy`), with prior theta ~ N(0, I); the data are the pressure
at the observation points (by default the 7 x 7 grid x = (a/8, b/8)) with
noise N(0, noise_std^2 I), noise_std = 0.1 as in Garbuno-Inigo et al.

By default the truth is a prior draw, so it lies in the span of the modes
being inverted for (an "inverse crime": the same discretisation generates and
inverts the data); pass `truth` to use another.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .. import _checks
from ..covariance import ScalarCovariance
from ..inversion.problem import InverseProblem, Prior
from ..models.darcy import Darcy


class DarcyProblem(eqx.Module):
    """The Darcy inverse problem and what is needed to score an estimate (`darcy_problem`).

    Attributes:
        problem: the `InverseProblem` on the (n_modes,) KL coefficients, prior N(0, I).
        model: the `kalmax.models.Darcy` forward model (its `log_permeability(theta)`
            maps coefficients to the (n, n) field at the cell centres).
        truth: (n_modes,) the true KL coefficients.
        log_permeability: (n, n) the true log-permeability field at the cell centres.
        noise_std: the noise standard deviation of the data.
    """

    problem: InverseProblem
    model: Darcy
    truth: Float[Array, " n_modes"]
    log_permeability: Float[Array, "n n"]
    noise_std: Float[Array, ""]

    def field(self, theta: Float[Array, "... n_modes"]) -> Float[Array, "... n n"]:
        """The log-permeability field of coefficients `theta` (batched over leading axes)."""
        theta = jnp.asarray(theta)
        flat = theta.reshape(-1, self.model.n_modes)
        fields = jax.vmap(self.model.log_permeability)(flat)
        return fields.reshape(theta.shape[:-1] + fields.shape[1:])

    def relative_error(self, log_permeability: Float[Array, "... n n"]) -> Float[Array, "..."]:
        """|u_est - u_true| / |u_true| in the discrete L^2 norm over the cell centres.

        Args:
            log_permeability: (..., n, n) estimated fields (e.g. `self.field(ensemble_mean)`).

        Returns:
            (...) relative errors.
        """
        n = self.model.grid_size
        estimate = jnp.asarray(log_permeability)
        if estimate.shape[-2:] != (n, n):
            raise ValueError(
                f"`log_permeability` must be (..., {n}, {n}) fields at the cell centres; got {tuple(estimate.shape)} "
                "(map coefficients with `.field(theta)` first)"
            )
        truth = self.log_permeability.astype(estimate.dtype)
        error = jnp.sqrt(jnp.sum((estimate - truth) ** 2, axis=(-2, -1)))
        return error / jnp.sqrt(jnp.sum(truth**2))


def darcy_problem(
    key,
    grid_size: int = 32,
    n_modes: int = 16,
    *,
    noise_std=0.1,
    truth=None,
    alpha=2.0,
    tau=3.0,
    source=None,
    observation_points=None,
    dtype=None,
    map_batch_size: int | None = None,
) -> DarcyProblem:
    """The Darcy inverse problem y = G(theta) + eta with a known truth.

    Args:
        key: PRNG key (the truth, when not given, and the noise).
        grid_size: n, the n x n finite-volume grid (static int >= 4).
        n_modes: the number of KL coefficients, the parameter dimension.
        noise_std: the data noise standard deviation (> 0); Gamma = noise_std^2 I.
        truth: optional (n_modes,) true coefficients; default a draw from the prior N(0, I).
        alpha: passed to `kalmax.models.Darcy`.
        tau: passed to `kalmax.models.Darcy`.
        source: passed to `kalmax.models.Darcy`.
        observation_points: passed to `kalmax.models.Darcy`.
        dtype: float dtype (default JAX's default float).
        map_batch_size: passed to `InverseProblem` (None: members vmapped; an int k: `lax.map`
            k at a time, faster on CPU for this solver, see `InverseProblem`).

    Returns:
        `DarcyProblem(problem, model, truth, log_permeability, noise_std)`.

    Example:
        >>> darcy = darcy_problem(jax.random.key(0), grid_size=16, n_modes=8)
        >>> result = kx.invert(darcy.problem, EKI(50), key, stop=DiscrepancyPrinciple())
        >>> darcy.relative_error(darcy.field(result.state.mean))
    """
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if _checks.is_concrete(noise_std) and not float(noise_std) > 0:
        raise ValueError(f"`noise_std` must be positive; got {noise_std}")
    model = Darcy(
        grid_size=grid_size,
        n_modes=n_modes,
        alpha=alpha,
        tau=tau,
        source=source,
        observation_points=observation_points,
    )
    key_truth, key_noise = jax.random.split(key)
    if truth is None:
        truth = jax.random.normal(key_truth, (n_modes,), dtype)
    else:
        truth = _checks.as_float_array("truth", truth)
        if truth.shape != (n_modes,):
            raise ValueError(
                f"`truth` must have shape ({n_modes},) (n_modes KL coefficients); got {tuple(truth.shape)}"
            )
        truth = truth.astype(dtype)
    noise_std = jnp.asarray(noise_std, dtype)
    clean = _evaluate(model, truth)
    y = clean + noise_std * jax.random.normal(key_noise, clean.shape, dtype)
    prior = Prior(jnp.zeros((n_modes,), dtype), ScalarCovariance(jnp.ones((), dtype), n_modes))
    problem = InverseProblem(
        model, y, ScalarCovariance(noise_std**2, model.data_dim), prior, map_batch_size=map_batch_size
    )
    return DarcyProblem(
        problem=problem,
        model=model,
        truth=truth,
        log_permeability=model.log_permeability(truth),
        noise_std=noise_std,
    )


@eqx.filter_jit
def _evaluate(model, theta):
    return model(theta)  # compiled: the solver's scans are slow op by op
