"""The inverse problem y = G(theta) + eta, eta ~ N(0, Gamma), with a Gaussian prior.

Methods work with unconstrained parameters u (Gaussian prior N(m_0, C_0)) and
physical parameters theta = T(u) (see `constraints.py`); the forward model
takes theta.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .. import _checks
from ..results import RESULTS
from ..covariance import AbstractCovariance, as_covariance
from .constraints import Bounds, unbounded

# Why a member failed: the per-member codes of `RESULTS` kept in every history.
MEMBER_FAILURES = (RESULTS.FORWARD_NON_FINITE, RESULTS.FORWARD_REJECTED, RESULTS.FORWARD_RAISED)


class Prior(eqx.Module):
    """Gaussian prior N(mean, cov) on the unconstrained parameters u, and their bounds.

    Attributes:
        mean: (d,) prior mean m_0 of u.
        cov: (d, d) prior covariance C_0 of u as an operator (a dense array,
            `DiagonalCovariance` or `ScalarCovariance` is accepted).
        bounds: `Bounds` mapping u to theta (default: none, theta = u).
    """

    mean: Float[Array, " d"]
    cov: AbstractCovariance
    bounds: Bounds

    def __init__(self, mean, cov, bounds: Bounds | None = None):
        mean = _checks.as_float_array("prior mean", mean)
        if mean.ndim != 1:
            raise ValueError(f"`prior mean` must be a (d,) vector; got shape {tuple(mean.shape)}")
        d = mean.shape[0]
        self.mean = mean
        self.cov = as_covariance("prior cov", cov, d, mean.dtype, allow_zero=False)
        if bounds is None:
            bounds = unbounded(d, mean.dtype)
        if not isinstance(bounds, Bounds):
            raise TypeError(f"`bounds` must be a kalmax Bounds (positive, bounded, ...); got {type(bounds).__name__}")
        if bounds.dim != d:
            raise ValueError(f"`bounds` must have size {d} (the prior mean's); got {bounds.dim}")
        self.bounds = bounds

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def sample(self, key, size: int) -> Float[Array, "size d"]:
        """`size` draws of u from N(mean, cov)."""
        noise = jax.random.normal(key, (self.dim, size), self.mean.dtype)
        return (self.mean[:, None] + self.cov.sqrt_mv(noise)).T


class InverseProblem(eqx.Module):
    """Find theta from data y = G(theta) + eta, eta ~ N(0, Gamma), theta = T(u), u ~ prior.

    Attributes:
        forward: G, mapping one (d,) physical parameter vector to (p,) predicted
            data; a JAX-traceable function (methods `vmap` it over members), or
            None for a forward model run outside JAX (`ask` / `tell`,
            `invert_external`).
        y: (p,) observed data.
        obs_cov: (p, p) noise covariance Gamma (array or operator; use
            `DiagonalCovariance` for large p: nothing p x p is formed then).
        prior: `Prior` on the unconstrained parameters.
        failed_if: optional criterion `failed_if(output) -> bool` on one member's
            (p,) output (e.g. a magnitude outlier); flagged members are treated
            like members whose run failed.
        map_batch_size: None (default) evaluates the members with `jax.vmap`; an
            int k evaluates them k at a time with `jax.lax.map(..., batch_size=k)`
            inside the same compiled program: less memory for large forward
            models, and on CPU often faster for solvers made of many small
            LAPACK calls, whose batched forms XLA:CPU runs slower (measured on
            the Darcy solve at 32 x 32: k = 1 is 1.7x faster than vmap).
    """

    forward: Callable | None
    y: Float[Array, " p"]
    obs_cov: AbstractCovariance
    prior: Prior
    failed_if: Callable | None = None
    map_batch_size: int | None = eqx.field(static=True, default=None)

    def __init__(
        self, forward, y, obs_cov, prior: Prior, *, failed_if: Callable | None = None, map_batch_size: int | None = None
    ):
        y = _checks.as_float_array("y", y)
        if y.ndim != 1:
            raise ValueError(f"`y` must be a (p,) data vector; got shape {tuple(y.shape)}")
        if _checks.is_concrete(y) and not np.all(np.isfinite(np.asarray(y))):
            raise ValueError("`y` must be finite (no NaN or inf entries)")
        if not isinstance(prior, Prior):
            raise TypeError(f"`prior` must be a kalmax Prior(mean, cov, bounds); got {type(prior).__name__}")
        if prior.mean.dtype != y.dtype:
            raise TypeError(f"dtype mix: `y` is {y.dtype} but the prior mean is {prior.mean.dtype}")
        if forward is not None and not callable(forward):
            raise TypeError(f"`forward` must be callable (theta -> predicted data) or None; got {type(forward).__name__}")
        if failed_if is not None and not callable(failed_if):
            raise TypeError(f"`failed_if` must be callable (output -> bool) or None; got {type(failed_if).__name__}")
        if map_batch_size is not None and (
            not isinstance(map_batch_size, int) or isinstance(map_batch_size, bool) or map_batch_size < 1
        ):
            raise ValueError(f"`map_batch_size` must be None (vmap) or a positive int; got {map_batch_size!r}")
        p = y.shape[0]
        self.forward, self.y, self.prior, self.failed_if = forward, y, prior, failed_if
        self.map_batch_size = map_batch_size
        self.obs_cov = as_covariance("obs_cov", obs_cov, p, y.dtype, allow_zero=False)
        if forward is not None:
            try:
                out = jax.eval_shape(forward, jax.ShapeDtypeStruct((prior.dim,), y.dtype))
            except Exception as err:  # noqa: BLE001 - re-raised with the argument named
                raise ValueError(
                    f"`forward` could not be traced on a ({prior.dim},) parameter vector (the prior's size): "
                    f"{type(err).__name__}: {err}. A forward model outside JAX must be passed as forward=None "
                    "and run with ask/tell or invert_external"
                ) from err
            if not hasattr(out, "shape") or tuple(out.shape) != (p,):
                shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
                raise ValueError(
                    f"`forward` must map a ({prior.dim},) parameter vector to ({p},) data (the size of `y`); "
                    f"it returns {shape}"
                )

    @property
    def parameter_dim(self) -> int:
        return self.prior.dim

    @property
    def data_dim(self) -> int:
        return self.y.shape[0]

    @property
    def dtype(self):
        return self.y.dtype

    def constrain(self, u: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """Physical parameters theta = T(u)."""
        return self.prior.bounds.constrain(u)

    def unconstrain(self, theta: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """Unconstrained parameters u = T^{-1}(theta)."""
        return self.prior.bounds.unconstrain(theta)

    def evaluate(self, members: Float[Array, "J d"]) -> Float[Array, "J p"]:
        """G(T(u_j)) for every row of the unconstrained `members` (`vmap`, or `lax.map` with `map_batch_size`)."""
        if self.forward is None:
            raise ValueError(
                "this InverseProblem has forward=None (a model outside JAX): evaluate it yourself with "
                "method.ask / method.tell, or use kalmax.invert_external"
            )
        def run(u):
            return self.forward(self.constrain(u))

        if self.map_batch_size is None:
            return jax.vmap(run)(members)
        return jax.lax.map(run, members, batch_size=self.map_batch_size)

    def check_outputs(self, outputs, size: int) -> jax.Array:
        """`outputs` as a (size, p) array in the problem's dtype, or a clear error."""
        outputs = jnp.asarray(outputs)
        if outputs.shape != (size, self.data_dim):
            raise ValueError(
                f"`outputs` (the forward runs) must have shape ({size}, {self.data_dim}): one row of {self.data_dim} "
                f"predicted data (the size of `y`) per point from `ask`; got {tuple(outputs.shape)}"
            )
        if not jnp.issubdtype(outputs.dtype, jnp.floating):
            raise TypeError(f"`outputs` must be floats; got {outputs.dtype}")
        return outputs.astype(self.dtype)

    def member_failures(self, outputs: Float[Array, "J p"]) -> Int[Array, " J"]:
        """Per-member failure codes (RESULTS.SUCCESSFUL, RESULTS.FORWARD_NON_FINITE, RESULTS.FORWARD_REJECTED)."""
        finite = jnp.all(jnp.isfinite(outputs), axis=1)
        codes = jnp.where(finite, RESULTS.SUCCESSFUL, RESULTS.FORWARD_NON_FINITE)
        if self.failed_if is not None:
            safe = jnp.where(finite[:, None], outputs, 0.0)
            flagged = jax.vmap(lambda g: jnp.asarray(self.failed_if(g), bool).reshape(()))(safe)
            codes = jnp.where(finite & flagged, RESULTS.FORWARD_REJECTED, codes)
        return codes.astype(jnp.int32)

    def whiten(self, vectors: Float[Array, "J p"]) -> Float[Array, "J p"]:
        """Rows v_j -> L^{-1} v_j with Gamma = L L^T."""
        return self.obs_cov.inv_sqrt_mv(vectors.T).T

    def prior_whiten(self, vectors: Float[Array, "J d"]) -> Float[Array, "J d"]:
        """Rows u_j -> L_0^{-1} u_j with C_0 = L_0 L_0^T."""
        return self.prior.cov.inv_sqrt_mv(vectors.T).T


def failure_summary(codes) -> str:
    """'3 of 10 members failed (2 non-finite output, 1 ...)' for a (J,) code array."""
    codes = np.asarray(codes)
    failed = codes != RESULTS.SUCCESSFUL
    parts = [f"{int(np.sum(codes == c))} {c.message}" for c in MEMBER_FAILURES if np.any(codes == c)]
    return f"{int(failed.sum())} of {codes.size} members failed" + (f" ({', '.join(parts)})" if parts else "")


def successes(codes: Int[Array, " J"]) -> Bool[Array, " J"]:
    return codes == RESULTS.SUCCESSFUL
