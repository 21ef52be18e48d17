"""The Kalman filter's exact log-likelihood gradient from one RTS smoother pass.

For a time-invariant `kx.LinearGaussianSSM`, log p(y_{1:T}) is differentiated in
closed form instead of by reverse-mode through the filter (Segal & Weinstein
1989, "A new method for evaluating the log-likelihood gradient, the Hessian, and
the Fisher information matrix for linear dynamic systems", IEEE Trans. Inf.
Theory 35(3); Cappé, Moulines & Rydén 2005, sec. 10.1, Fisher's identity).

Dynamics and prior, from the filtered N(m_{n-1}, C_{n-1}) (n = 1: the prior
N(m_0, C_0)), the forecast N(m^-_n, P_n) and the smoothed N(m^s_n, P^s_n):
log p(y) depends on (M, b, Q) at cycle n only through the forecast of v_n, and
for a Gaussian prior N(m^-, P) times any likelihood

    d log p / d m^- = a_n = P_n^{-1} (m^s_n - m^-_n)
    d log p / d P   = G_n = (P_n^{-1} (P^s_n - P_n) P_n^{-1} + a_n a_n^T) / 2

so, summing over cycles (m^-_n = M m_{n-1} + b, P_n = M C_{n-1} M^T + Q):

    dL/db = sum_n a_n,   dL/dQ = sum_n G_n,   dL/dM = sum_n (a_n m_{n-1}^T + 2 G_n M C_{n-1}),
    dL/dm_0 = M^T a_1,   dL/dC_0 = M^T G_1 M                      (no inverse of Q or C_0).

Observations, by Fisher's identity with the smoothed statistics of `em`
(C = [H d], S^o from `observation_statistics`, missing entries as latent):

    dL/dC = R^{-1} (S_yz - C S_zz^o),   dL/dR = R^{-1} (E - T R) R^{-1} / 2,
    E = S_yy - C S_yz^T - S_yz C^T + C S_zz^o C^T,
    dL/dy_n = -R^{-1} (E[y_n] - H m^s_n - d) at the observed entries.

The covariance gradients are symmetric (those of a function of the symmetric
part, as reverse-mode gives through kalmax's filter). The cost is one filter
(saving covariances) and one backward pass, about 2-3 filter runs, against ~6-10
for reverse-mode on a CPU, and its memory is that of the smoother.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..assimilate import assimilate
from ..history import Save
from ..linalg import cho_solve, symmetrize
from ..ssm import LinearGaussianSSM
from .em import observation_statistics


def _offset(offset, size, dtype):
    return jnp.zeros(size, dtype) if offset is None else offset


def log_likelihood_gradient(model: LinearGaussianSSM, ys, filtered, missing: bool):
    """(d log p(y) / d model, d log p(y) / d ys) from the filter's history (module docstring).

    Args:
        model: a time-invariant `LinearGaussianSSM`.
        ys: (T, dy) observations (NaN entries missing).
        filtered: the Kalman filter's `History` with `Save(cov=True, forecast=True)`.
        missing: whether ys may hold NaN entries (static).
    """
    dtype = model.dtype
    dx, dy = model.dynamics.shape[0], model.observation.shape[0]
    dynamics = model.dynamics
    previous_means = jnp.concatenate([model.init_mean[None], filtered.mean[:-1]])
    previous_covs = jnp.concatenate([model.init_cov[None], filtered.cov[:-1]])
    eye = jnp.eye(dx, dtype=dtype)

    # One reverse scan over n = T..1 fusing the RTS step with the gradient terms: the
    # inverse forecast covariance P_n^{-1} serves both (G_{n-1} = (M C_{n-1})^T P_n^{-1}).
    def step(carry, inputs):
        smooth_mean, smooth_cov, sums = carry  # smoothed v_n; running sums
        pred_mean, pred_cov, mean, cov = inputs  # forecast of v_n; filtered v_{n-1}
        precision = cho_solve(jnp.linalg.cholesky(pred_cov), eye)
        a = precision @ (smooth_mean - pred_mean)
        spread = symmetrize(precision @ (smooth_cov - pred_cov) @ precision)
        g = (spread + jnp.outer(a, a)) / 2
        dynamics_cov = dynamics @ cov  # M C_{n-1}
        sum_a, sum_g, sum_dynamics, _, _ = sums
        sums = (sum_a + a, sum_g + g, sum_dynamics + jnp.outer(a, mean) + 2 * g @ dynamics_cov, a, g)
        new_mean = mean + dynamics_cov.T @ a
        new_cov = symmetrize(cov + dynamics_cov.T @ spread @ dynamics_cov)
        return (new_mean, new_cov, sums), (smooth_mean, smooth_cov)

    zeros = (jnp.zeros(dx, dtype), jnp.zeros((dx, dx), dtype), jnp.zeros((dx, dx), dtype))
    sums = zeros + (jnp.zeros(dx, dtype), jnp.zeros((dx, dx), dtype))
    carry = (filtered.mean[-1], filtered.cov[-1], sums)
    inputs = (filtered.forecast_mean, filtered.forecast_cov, previous_means, previous_covs)
    (_, _, sums), (means, covs) = jax.lax.scan(step, carry, inputs, reverse=True)
    grad_offset, grad_dynamics_cov, grad_dynamics, first_a, first_g = sums  # first_*: of cycle n = 1
    grad_init_mean = dynamics.T @ first_a
    grad_init_cov = symmetrize(dynamics.T @ first_g @ dynamics)

    obs_zz, obs_yz, obs_yy, y_mean = observation_statistics(model, ys, means, covs, missing)
    obs_offset = _offset(model.obs_offset, dy, dtype)
    joint = jnp.concatenate([model.observation, obs_offset[:, None]], axis=1)
    obs_factor = jnp.linalg.cholesky(model.obs_cov)
    grad_joint = cho_solve(obs_factor, obs_yz - joint @ obs_zz)
    residual = obs_yy - joint @ obs_yz.T - obs_yz @ joint.T + joint @ obs_zz @ joint.T
    n_cycles = jnp.asarray(ys.shape[0], dtype)
    grad_obs_cov = symmetrize(cho_solve(obs_factor, cho_solve(obs_factor, residual - n_cycles * model.obs_cov).T)) / 2
    errors = y_mean - means @ model.observation.T - obs_offset
    grad_ys = -cho_solve(obs_factor, errors.T).T
    grad_ys = jnp.where(jnp.isnan(ys), 0.0, grad_ys)

    replace = [
        (lambda m: m.dynamics, grad_dynamics),
        (lambda m: m.observation, grad_joint[:, :dx]),
        (lambda m: m.dynamics_cov, grad_dynamics_cov),
        (lambda m: m.obs_cov, grad_obs_cov),
        (lambda m: m.init_mean, grad_init_mean),
        (lambda m: m.init_cov, grad_init_cov),
    ]
    if model.dynamics_offset is not None:
        replace.append((lambda m: m.dynamics_offset, grad_offset))
    if model.obs_offset is not None:
        replace.append((lambda m: m.obs_offset, grad_joint[:, dx]))
    gradient = model
    for where, value in replace:
        gradient = eqx.tree_at(where, gradient, value)
    return gradient, grad_ys


def kalman_negative_log_likelihood(model: LinearGaussianSSM, method, ys, loop=None):
    """-log p(y_{1:T}) by the Kalman filter `method`, with the closed-form gradient
    (module docstring) as its reverse-mode derivative (`jax.custom_vjp`).

    Forward-mode derivatives (`jax.jvp`, `jax.hessian`) are not defined for it:
    use `negative_log_likelihood(..., gradient="autodiff")` for those.
    """
    missing_static = None if not _checks.is_concrete(ys) else bool(np.isnan(np.asarray(ys)).any())

    def run(model, ys):
        _, filtered = assimilate(model, method, ys, save=Save(cov=True, forecast=True), throw=False, loop=loop)
        return -jnp.sum(filtered.info.log_likelihood), filtered

    @jax.custom_vjp
    def value(model, ys):
        return run(model, ys)[0]

    def forward(model, ys):
        total, filtered = run(model, ys)
        return total, (model, ys, filtered)

    def backward(residuals, cotangent):
        model, ys, filtered = residuals

        def gradient(missing):
            return lambda: log_likelihood_gradient(model, ys, filtered, missing)

        if missing_static is None:
            grad_model, grad_ys = jax.lax.cond(jnp.any(jnp.isnan(ys)), gradient(True), gradient(False))
        else:
            grad_model, grad_ys = gradient(missing_static)()
        scale = -cotangent
        return jax.tree_util.tree_map(lambda leaf: scale * leaf, grad_model), scale * grad_ys

    value.defvjp(forward, backward)
    return value(model, ys)


__all__ = ["kalman_negative_log_likelihood", "log_likelihood_gradient"]
