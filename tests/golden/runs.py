"""A fixed set of float64 runs covering every method, recorded before a refactor.

`runs()` returns {name: array}; `python -m tests.golden.record` writes them to
`outputs.npz` beside this file, and tests/test_golden.py checks that the code
still reproduces them to 1e-12. Record anew only when a change is meant to
alter results (and say so in the commit).

The runs are short (tens of cycles) so that round-off differences from a
reordering of operations are not amplified by chaos beyond the tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import kalmax as kx
from kalmax.models import RK4, Flow, Lorenz63, Lorenz96
from kalmax.presets import lorenz96_sakov2008
from kalmax.problems import linear_gaussian


def _linear_model(dx=4, dy=2):
    key = jax.random.key(3)
    k1, k2 = jax.random.split(key)
    dynamics = 0.9 * jnp.linalg.qr(jax.random.normal(k1, (dx, dx)))[0]
    observation = jax.random.normal(k2, (dy, dx))
    return kx.LinearGaussianSSM(
        dynamics=dynamics, observation=observation, dynamics_cov=0.1 * jnp.eye(dx),
        obs_cov=0.5 * jnp.eye(dy), init_mean=jnp.ones(dx), init_cov=jnp.eye(dx),
        dynamics_offset=0.1 * jnp.ones(dx), obs_offset=0.2 * jnp.ones(dy),
    )


def _with_missing(ys):
    ys = np.array(ys)
    ys[5, 0] = np.nan
    ys[9, :] = np.nan
    return jnp.asarray(ys)


def _kalman_runs(out):
    model = _linear_model()
    _, ys = kx.simulate(model, jax.random.key(1), 60)
    ys = _with_missing(ys)
    save = kx.Save(cov=True, forecast=True)
    methods = {
        "kf": kx.KalmanFilter(),
        "kf_full": kx.KalmanFilter(steady_state=False),
        "kf_sqrt": kx.KalmanFilter(square_root=True),
        "kf_joseph": kx.KalmanFilter(joseph=True),
    }
    for name, method in methods.items():
        _, history = kx.assimilate(model, method, ys, save=save)
        if name == "kf_sqrt":
            out[f"{name}/mean"] = history.mean
        else:
            out[f"{name}/mean"], out[f"{name}/cov"] = history.mean, history.cov
            out[f"{name}/forecast_cov"] = history.forecast_cov
        out[f"{name}/loglik"] = history.info.log_likelihood
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys, save=save, parallel=True)
    out["kf_parallel/mean"], out["kf_parallel/cov"] = history.mean, history.cov
    out["kf_parallel/loglik"] = history.info.log_likelihood
    # a time-invariant model without missing data reaches the steady state
    _, ys_full = kx.simulate(model, jax.random.key(2), 120)
    _, history = kx.assimilate(model, kx.KalmanFilter(), ys_full, save=save)
    out["kf_steady/mean"], out["kf_steady/loglik"] = history.mean, history.info.log_likelihood
    for name, kwargs in {"rts": {}, "rts_full": {"steady_state": False}, "rts_parallel": {"parallel": True}}.items():
        smoothed = kx.rts_smoother(model, ys_full, **kwargs)
        out[f"{name}/mean"], out[f"{name}/cov"] = smoothed.mean, smoothed.cov
        out[f"{name}/cross"], out[f"{name}/init_mean"] = smoothed.cross_cov, smoothed.init_mean
        out[f"{name}/loglik"] = smoothed.log_likelihood
    varying = kx.LinearGaussianSSM(
        dynamics=model.dynamics, observation=model.observation, dynamics_cov=model.dynamics_cov,
        obs_cov=kx.TimeVarying(jnp.linspace(0.3, 1.0, 60)[:, None, None] * jnp.eye(2)),
        init_mean=model.init_mean, init_cov=model.init_cov,
    )
    smoothed = kx.rts_smoother(varying, ys)
    out["rts_varying/mean"], out["rts_varying/loglik"] = smoothed.mean, smoothed.log_likelihood
    grad = jax.grad(lambda m: kx.log_likelihood(m, kx.KalmanFilter(), ys))(model)
    out["kf_grad/dynamics"] = grad.dynamics


def _lorenz63_model():
    return kx.StateSpaceModel(
        dynamics=Flow(Lorenz63(), RK4(0.01, 5)), observation=jnp.eye(3), dynamics_cov=0.01 * jnp.eye(3),
        obs_cov=2.0 * jnp.eye(3), init_mean=jnp.array([1.5, -1.5, 25.0]), init_cov=jnp.eye(3),
    )


def _nonlinear_runs(out):
    model = _lorenz63_model()
    truth, ys = kx.simulate(model, jax.random.key(4), 40)
    out["simulate_l63/truth"] = truth
    for name, method in {
        "ekf": kx.ExtendedKalmanFilter(inflation=1.1),
        "ukf": kx.UnscentedKalmanFilter(alpha=1.0, beta=2.0, kappa=0.0),
    }.items():
        _, history = kx.assimilate(model, method, ys, save=kx.Save(cov=True))
        out[f"{name}/mean"], out[f"{name}/cov"] = history.mean, history.cov
        out[f"{name}/loglik"] = history.info.log_likelihood
    model96 = lorenz96_sakov2008(30).model
    truth, ys = kx.simulate(model96, jax.random.key(5), 30)
    out["simulate_l96/ys"] = ys
    _, history = kx.assimilate(model96, kx.ThreeDVar(0.5 * jnp.eye(40)), ys)
    out["3dvar/mean"] = history.mean
    out["3dvar/loglik"] = history.info.log_likelihood
    loc = kx.Localization(kx.Periodic1D(40), kx.GaspariCohn(4.0))
    ensembles = {
        "etkf": kx.EnKF(20, kx.SquareRoot(), inflation=1.02, rotate=True),
        "pertobs": kx.EnKF(20, kx.PerturbedObservations(), inflation=1.02),
        "denkf": kx.EnKF(20, kx.DEnKF(), inflation=kx.RTPS(0.5)),
        "etkf_obs_space": kx.EnKF(50, kx.SquareRoot(), inflation=1.02),
        "letkf": kx.LETKF(10, loc, inflation=1.04, rotate=True),
        "letkf_dapper": kx.LETKF.dapper(10, kx.Periodic1D(40), 4.0, inflation=1.04),
        "enkfn": kx.EnKFN(20),
    }
    ys_half = ys[:, ::2]
    half_model = lorenz96_sakov2008(30).model
    for name, method in ensembles.items():
        use = ys
        m = model96
        if name == "etkf_obs_space":
            # 20 observations < 50 members: the observation-space algebra
            m = kx.StateSpaceModel(
                dynamics=half_model.dynamics, observation=kx.IndexObservation(jnp.arange(0, 40, 2), 40),
                dynamics_cov=half_model.dynamics_cov, obs_cov=kx.ScalarCovariance(1.0, 20),
                init_mean=half_model.init_mean, init_cov=half_model.init_cov,
            )
            use = ys_half
        _, history = kx.assimilate(m, method, use, jax.random.key(6), save=kx.Save(state=True))
        out[f"{name}/members"] = history.state.members
        out[f"{name}/loglik"] = history.info.log_likelihood
        if name == "enkfn":
            out[f"{name}/inflation"] = history.info.inflation


def _experiment_runs(out):
    setup = lorenz96_sakov2008(40)
    result = kx.twin_experiment(setup.model, kx.EnKF(20, kx.SquareRoot(), inflation=1.02, rotate=True), 40,
                                jax.random.key(7), burn_in=10)
    out["twin/rmse"], out["twin/spread"] = result.cycles.rmse_analysis, result.cycles.spread_analysis
    out["twin/crps"] = result.cycles.crps_analysis
    swept = kx.sweep(setup.model, lambda inflation: kx.EnKF(20, kx.SquareRoot(), inflation=inflation), 30,
                     jax.random.key(8), grid={"inflation": [1.0, 1.02]}, n_seeds=2, burn_in=5)
    out["sweep/rmse"], out["sweep/spread"] = swept.rmse_analysis, swept.spread_analysis


def _inversion_runs(out):
    lin = linear_gaussian(jax.random.key(9), 5, 12)
    problem = lin.problem
    methods = {
        "eki": kx.EKI(20),
        "eki_det": kx.EKI(20, stochastic=False),
        "teki": kx.EKI(20, tikhonov=True),
        "etki": kx.ETKI(20),
        "etki_data_space": kx.ETKI(30),
        "eks": kx.EKS(20),
        "eki_dmc": kx.EKI(20, kx.DataMisfitController()),
    }
    for name, method in methods.items():
        result = kx.invert(problem, method, jax.random.key(10), 8)
        out[f"{name}/mean"], out[f"{name}/variance"] = result.history.mean, result.history.variance
        out[f"{name}/misfit"] = result.history.misfit
    result = kx.invert(problem, kx.UKI(), None, 8)
    out["uki/mean"], out["uki/variance"] = result.history.mean, result.history.variance
    result = kx.invert(problem, kx.EKI(20, stochastic=False), jax.random.key(11), stop=kx.DiscrepancyPrinciple())
    out["eki_discrepancy/mean"] = result.history.mean
    out["eki_discrepancy/n"] = result.n_iterations
    out["eki_discrepancy/code"] = result.code
    members = problem.prior.sample(jax.random.key(12), 10)
    flow = kx.eki_flow(problem, members, 1.0)
    out["eki_flow/members"] = flow.members


GROUPS = {"kalman": _kalman_runs, "nonlinear": _nonlinear_runs, "experiments": _experiment_runs,
          "inversion": _inversion_runs}


def runs(group: str | None = None) -> dict[str, np.ndarray]:
    """The recorded outputs of one group of `GROUPS` (all with None), as NumPy arrays
    named "group:run/field"."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("the golden runs are float64: enable jax_enable_x64 first")
    out: dict = {}
    for name, record in GROUPS.items():
        if group is None or group == name:
            part: dict = {}
            record(part)
            out.update({f"{name}:{key}": np.asarray(value) for key, value in part.items()})
    return out
