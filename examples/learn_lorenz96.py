"""Learn the Lorenz-96 forcing and model-error variance through an ensemble filter (AD-EnKF),
and estimate the forcing by state augmentation, from the same data; plot both.

    .venv/bin/python examples/learn_lorenz96.py --out learn_lorenz96.png

Data: Lorenz-96 (d = 40, F = 8) with model error Q = 0.1 I, observed everywhere
every 0.05 time units with R = I. Gradient route (Chen, Sanz-Alonso & Willett
2022): an LETKF's log-likelihood, truncated backpropagation over windows of 20
cycles, Adam; learned F (from 6) and q in Q = q I (from 1). Augmentation route
(Bocquet & Sakov 2013): F appended to the state with a small random walk, one
EnKF-N pass over a record of 300 cycles. The plot shows F and q against the epoch, and the augmented
filter's F against the cycle.
"""

from __future__ import annotations

import argparse
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kalmax as kx
from kalmax.learning import Positive, augment_state, make_step, split_augmented, truncated_negative_log_likelihood
from kalmax.models import RK4, Flow, Lorenz96, trajectory

jax.config.update("jax_enable_x64", True)


class Parameters(eqx.Module):
    forcing: jax.Array
    model_error: Positive


def model(forcing, variance, init_mean, dim):
    noise = None if variance is None else kx.ScalarCovariance(variance, dim)
    return kx.StateSpaceModel(Flow(Lorenz96(dim, forcing), RK4(0.01, 5)), kx.IndexObservation(range(dim), dim),
                              noise, kx.ScalarCovariance(1.0, dim), init_mean, kx.ScalarCovariance(1.0, dim))


def run(dim=40, n_sequences=2, n_obs=100, n_epochs=60, n_members=30, n_augment=300, learning_rate=0.1, seed=0):
    """Returns a dict with the learning curves (`n_sequences` records of `n_obs` cycles) and the
    forcing estimated by the augmented filter over one record of `n_augment` cycles."""
    keys = jax.random.split(jax.random.key(seed), n_sequences + 3)

    def observations(key, n_cycles):
        k_start, k_sim, k_obs = jax.random.split(key, 3)
        x0 = trajectory(Flow(Lorenz96(dim, 8.0), RK4(0.01, 5)), 8.0 + jax.random.normal(k_start, (dim,)), 200)[-1]
        truth_model = model(8.0, 0.1, x0, dim)
        truth_model = eqx.tree_at(lambda m: m.init_cov, truth_model, kx.ScalarCovariance(1e-12, dim))
        _, y = kx.simulate(truth_model, k_sim, n_cycles)
        return y, x0 + jax.random.normal(k_obs, (dim,))  # a noisy look at v_0 to start from

    ys, starts = (jnp.stack(a) for a in zip(*(observations(key, n_obs) for key in keys[:n_sequences])))
    method = kx.LETKF(n_members, kx.Localization(kx.Periodic1D(dim), kx.GaspariCohn(5.0)))

    def loss(params, data, key):
        ys, starts = data

        def one(y, start, k):
            pair = (model(params.forcing, params.model_error.value, start, dim), method)
            return truncated_negative_log_likelihood(pair, y, k, window=20)

        return jnp.sum(jax.vmap(one)(ys, starts, jax.random.split(key, ys.shape[0]))) / ys.size

    # the loop of `kx.learning.fit`, written out to record the path of the parameters
    forcings, variances = [], []
    params = Parameters(jnp.asarray(6.0), Positive(1.0))
    optimizer = optax.adam(learning_rate)
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, params)
    step = make_step(loss, optimizer, spec)
    opt_state = optimizer.init(eqx.filter(params, spec))
    for _ in range(n_epochs):
        params, opt_state, _, _ = step(params, opt_state, (ys, starts), keys[-1])
        forcings.append(float(params.forcing))
        variances.append(float(params.model_error.value))

    # augmentation needs a longer record than one gradient window: its own sequence
    long_ys, long_start = observations(keys[-3], n_augment)
    augmented = augment_state(model(6.0, 0.1, long_start, dim), lambda flow: flow.model.forcing, 6.0, 1.0,
                              walk_cov=1e-4)
    _, history = kx.assimilate(augmented, kx.EnKFN(n_members), long_ys, keys[-2])
    _, forcing_path = split_augmented(augmented, history.mean)
    return dict(epochs=np.arange(1, n_epochs + 1), forcing=np.array(forcings), variance=np.array(variances),
                augmented_forcing=np.asarray(forcing_path))


def augmented_estimate(out):
    """The augmented filter's forcing averaged over the second half of its record."""
    path = out["augmented_forcing"]
    return float(np.mean(path[len(path) // 2:]))


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(out["epochs"], out["forcing"], label="F (truth 8)")
    left.plot(out["epochs"], 10 * out["variance"], label="10 q (truth 1)")
    left.axhline(8.0, color="grey", lw=0.8)
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_xlabel("epoch")
    left.set_title("gradient through the LETKF")
    left.legend()
    right.plot(out["augmented_forcing"], label="EnKF-N, F in the state")
    right.axhline(8.0, color="grey", lw=0.8)
    right.set_xlabel("cycle")
    right.set_title("state augmentation")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="learn_lorenz96.png", help="where to write the plot")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    out = run(n_epochs=args.epochs)
    print(f"gradient: F = {out['forcing'][-1]:.3f}, q = {out['variance'][-1]:.3f}; "
          f"augmentation: F = {augmented_estimate(out):.3f} (truth 8, 0.1)")
    print(plot(out, args.out))


if __name__ == "__main__":
    main()
