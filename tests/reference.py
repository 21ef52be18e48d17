"""Independent references in plain NumPy float64 (no JAX): a textbook Kalman
filter and RTS smoother that drop missing entries explicitly, and dense
joint-Gaussian conditioning of a whole linear-Gaussian trajectory.

Models are given as plain per-cycle lists so time variation is explicit:
  dynamics[n], dynamics_offset[n], dynamics_cov[n] map v_n -> v_{n+1};
  observation[n], obs_offset[n], obs_cov[n] observe v_{n+1} as ys[n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NumpyLGSSM:
    dynamics: list
    dynamics_offset: list
    dynamics_cov: list
    observation: list
    obs_offset: list
    obs_cov: list
    init_mean: np.ndarray
    init_cov: np.ndarray


def _logpdf(residual, cov):
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (residual @ np.linalg.solve(cov, residual) + logdet + len(residual) * np.log(2 * np.pi))


def kalman_filter(model: NumpyLGSSM, ys):
    """Returns filtered means/covs (T, dx)/(T, dx, dx), predicted means/covs, log-lik terms (T,)."""
    mean, cov = model.init_mean.copy(), model.init_cov.copy()
    out = {"mean": [], "cov": [], "pred_mean": [], "pred_cov": [], "loglik": []}
    for n, y in enumerate(ys):
        M, b, Q = model.dynamics[n], model.dynamics_offset[n], model.dynamics_cov[n]
        mean = M @ mean + b
        cov = M @ cov @ M.T + Q
        out["pred_mean"].append(mean)
        out["pred_cov"].append(cov)
        observed = np.isfinite(y)
        if observed.any():
            H = model.observation[n][observed]
            d = model.obs_offset[n][observed]
            R = model.obs_cov[n][np.ix_(observed, observed)]
            S = H @ cov @ H.T + R
            K = cov @ H.T @ np.linalg.inv(S)
            residual = y[observed] - H @ mean - d
            out["loglik"].append(_logpdf(residual, S))
            mean = mean + K @ residual
            cov = cov - K @ S @ K.T
        else:
            out["loglik"].append(0.0)
        out["mean"].append(mean)
        out["cov"].append(cov)
    return {k: np.array(v) for k, v in out.items()}


def rts_smoother(model: NumpyLGSSM, filt):
    """Smoothed means/covs of v_0..v_T (T+1 entries) and Cov(v_{n+1}, v_n | all) (T entries)."""
    T = len(filt["mean"])
    means = [model.init_mean] + list(filt["mean"])
    covs = [model.init_cov] + list(filt["cov"])
    sm_mean, sm_cov = [None] * (T + 1), [None] * (T + 1)
    sm_mean[T], sm_cov[T] = means[T], covs[T]
    cross = [None] * T
    for n in range(T - 1, -1, -1):
        G = covs[n] @ model.dynamics[n].T @ np.linalg.inv(filt["pred_cov"][n])
        sm_mean[n] = means[n] + G @ (sm_mean[n + 1] - filt["pred_mean"][n])
        sm_cov[n] = covs[n] + G @ (sm_cov[n + 1] - filt["pred_cov"][n]) @ G.T
        cross[n] = sm_cov[n + 1] @ G.T
    return np.array(sm_mean), np.array(sm_cov), np.array(cross)


def joint_gaussian(model: NumpyLGSSM, T: int):
    """Mean and covariance of the stacked trajectory (v_0..v_T) and observations (y_1..y_T)."""
    dx = model.init_mean.shape[0]
    dy = model.observation[0].shape[0]
    mv = np.zeros((T + 1) * dx)
    Cv = np.zeros(((T + 1) * dx, (T + 1) * dx))
    mv[:dx] = model.init_mean
    Cv[:dx, :dx] = model.init_cov
    for n in range(T):
        M = model.dynamics[n]
        sl_prev, sl = slice(n * dx, (n + 1) * dx), slice((n + 1) * dx, (n + 2) * dx)
        mv[sl] = M @ mv[sl_prev] + model.dynamics_offset[n]
        # Cov(v_{n+1}, v_k) = M Cov(v_n, v_k) for k <= n
        Cv[sl, : (n + 1) * dx] = M @ Cv[sl_prev, : (n + 1) * dx]
        Cv[: (n + 1) * dx, sl] = Cv[sl, : (n + 1) * dx].T
        Cv[sl, sl] = M @ Cv[sl_prev, sl_prev] @ M.T + model.dynamics_cov[n]
    Hbig = np.zeros((T * dy, (T + 1) * dx))
    Rbig = np.zeros((T * dy, T * dy))
    dbig = np.zeros(T * dy)
    for n in range(T):
        Hbig[n * dy : (n + 1) * dy, (n + 1) * dx : (n + 2) * dx] = model.observation[n]
        Rbig[n * dy : (n + 1) * dy, n * dy : (n + 1) * dy] = model.obs_cov[n]
        dbig[n * dy : (n + 1) * dy] = model.obs_offset[n]
    my = Hbig @ mv + dbig
    Cy = Hbig @ Cv @ Hbig.T + Rbig
    Cvy = Cv @ Hbig.T
    return mv, Cv, my, Cy, Cvy


def condition_on(model: NumpyLGSSM, ys, upto: int | None = None):
    """Dense conditioning of v_0..v_T on the observed entries of y_1..y_upto.

    Returns posterior mean (T+1, dx), the full posterior covariance ((T+1)dx square)
    and log p(observed y_1..y_upto).
    """
    T, dy = ys.shape
    dx = model.init_mean.shape[0]
    mv, Cv, my, Cy, Cvy = joint_gaussian(model, T)
    flat = ys.reshape(-1).copy()
    use = np.isfinite(flat)
    if upto is not None:
        use &= np.arange(T * dy) < upto * dy
    if not use.any():
        return mv.reshape(T + 1, dx), Cv, 0.0
    S = Cy[np.ix_(use, use)]
    gain = Cvy[:, use] @ np.linalg.inv(S)
    residual = flat[use] - my[use]
    mean = mv + gain @ residual
    cov = Cv - gain @ Cvy[:, use].T
    return mean.reshape(T + 1, dx), cov, _logpdf(residual, S)


def random_problem(rng, dx, dy, T, time_varying=False, offsets=False):
    """A random stable problem as a NumpyLGSSM (per-cycle lists) plus its data."""

    def spd(d, scale):
        A = rng.normal(size=(d, d))
        return scale * (A @ A.T / d + 0.5 * np.eye(d))

    def dyn():
        A = rng.normal(size=(dx, dx))
        return 0.9 * A / np.max(np.abs(np.linalg.eigvals(A)))

    n_distinct = T if time_varying else 1
    Ms = [dyn() for _ in range(n_distinct)]
    Hs = [rng.normal(size=(dy, dx)) for _ in range(n_distinct)]
    Qs = [spd(dx, 0.3) for _ in range(n_distinct)]
    Rs = [spd(dy, 0.5) for _ in range(n_distinct)]
    bs = [rng.normal(size=dx) if offsets else np.zeros(dx) for _ in range(n_distinct)]
    ds = [rng.normal(size=dy) if offsets else np.zeros(dy) for _ in range(n_distinct)]

    def per_cycle(items):
        return items if time_varying else items * T

    model = NumpyLGSSM(
        dynamics=per_cycle(Ms),
        dynamics_offset=per_cycle(bs),
        dynamics_cov=per_cycle(Qs),
        observation=per_cycle(Hs),
        obs_offset=per_cycle(ds),
        obs_cov=per_cycle(Rs),
        init_mean=rng.normal(size=dx),
        init_cov=spd(dx, 1.0),
    )
    # data from the model itself
    v = rng.multivariate_normal(model.init_mean, model.init_cov)
    ys = []
    for n in range(T):
        v = model.dynamics[n] @ v + model.dynamics_offset[n] + rng.multivariate_normal(
            np.zeros(dx), model.dynamics_cov[n]
        )
        ys.append(model.observation[n] @ v + model.obs_offset[n] + rng.multivariate_normal(np.zeros(dy), model.obs_cov[n]))
    return model, np.array(ys)


def to_kalmax(model: NumpyLGSSM, time_varying: bool, offsets: bool, dtype=np.float64):
    """The same model as a kalmax.LinearGaussianSSM (TimeVarying fields when time_varying)."""
    import kalmax as kx

    def field(items):
        if time_varying:
            return kx.TimeVarying(np.asarray(items, dtype=dtype))
        return np.asarray(items[0], dtype=dtype)

    return kx.LinearGaussianSSM(
        dynamics=field(model.dynamics),
        observation=field(model.observation),
        dynamics_cov=field(model.dynamics_cov),
        obs_cov=field(model.obs_cov),
        init_mean=np.asarray(model.init_mean, dtype=dtype),
        init_cov=np.asarray(model.init_cov, dtype=dtype),
        dynamics_offset=field(model.dynamics_offset) if offsets else None,
        obs_offset=field(model.obs_offset) if offsets else None,
    )
