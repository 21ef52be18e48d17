"""Nudging (Newtonian relaxation), a new filter written against kalmax's filter contract.

The worked example of docs/extending.md: the forecast runs the model from the
last estimate, the analysis relaxes it towards the data,

    m = m^- + strength * H^T (y - h(m^-)),

with H^T applied as the transpose of the observation operator's Jacobian
(`jax.vjp`), so any observation operator works (Hoke & Anthes 1976, "The
initialization of numerical models by a dynamic-initialization technique",
Mon. Wea. Rev. 104). NaN entries of y are missing and skipped.

    python examples/nudging.py                    # a Lorenz-96 twin experiment and a sweep
    kalmax twin --method examples/nudging.py:cli_method --model lorenz96
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import kalmax as kx


class PointEstimate(eqx.Module):
    mean: jax.Array  # (dx,)


class NudgingInfo(eqx.Module):
    log_likelihood: jax.Array  # log N(y; h(m^-), Gamma) of the observed entries (Gamma diagonal)
    status: jax.Array  # a kx.RESULTS code


class Nudging(kx.AbstractFilter):
    """m = m^- + strength * H^T (y - h(m^-)); `strength` is a traced leaf (vmap, grad, sweep)."""

    strength: jax.Array

    def __init__(self, strength=0.5):
        self.strength = jnp.asarray(strength)

    def check_model(self, model):
        if not isinstance(model, kx.StateSpaceModel):
            raise TypeError(f"Nudging needs a kx.StateSpaceModel; got {type(model).__name__}")

    def init(self, model, key=None):
        return PointEstimate(model.init_mean)

    def forecast(self, model, state, key=None):
        return PointEstimate(model.dynamics(state.mean))

    def analysis(self, model, state, y, key=None):
        observed = jnp.isfinite(y)
        predicted, transpose = jax.vjp(model.observe, state.mean)
        innovation = jnp.where(observed, y - predicted, 0.0)
        (correction,) = transpose(innovation)
        mean = state.mean + self.strength.astype(state.mean.dtype) * correction
        variances = model.obs_cov.diagonal()
        terms = innovation**2 / variances + jnp.log(2 * jnp.pi * variances)
        log_likelihood = -0.5 * jnp.sum(jnp.where(observed, terms, 0.0))
        ok = jnp.all(jnp.isfinite(mean))
        status = jnp.where(ok, kx.RESULTS.SUCCESSFUL, kx.RESULTS.NON_FINITE).astype(jnp.int32)
        return PointEstimate(mean), NudgingInfo(log_likelihood, status)


def cli_method(setup):
    """For `kalmax twin/sweep --method examples/nudging.py:cli_method`: (make_method, defaults);
    the command line's `--inflation` values set `strength` here."""
    return (lambda inflation: Nudging(inflation)), {"inflation": 0.5}


if __name__ == "__main__":
    from kalmax.presets import lorenz96_sakov2008

    setup = lorenz96_sakov2008(n_cycles=500)
    result = kx.twin_experiment(setup.model, Nudging(0.5), setup.n_cycles, jax.random.key(0), burn_in=100)
    print(result.stats.table("Nudging(0.5) on Lorenz-96"))
    swept = kx.sweep(setup.model, Nudging, setup.n_cycles, jax.random.key(1),
                     grid={"strength": [0.3, 0.5, 0.7]}, n_seeds=2, burn_in=100)
    print(swept.table())
