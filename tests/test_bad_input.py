"""The catalogue of bad input: every public entry point answers a wrong argument with a clear
error that names the argument (or the command-line option) and says what was expected.

Each case is (id, call, exception type, pattern): `call()` must raise the type, and the
message must match the pattern, which names the argument. Module tests check the same
errors where they belong; this file keeps them all in one place so a new entry point is
added here with its bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import kalmax as kx
from kalmax import cli
from kalmax.learning import (AtLeast, CholeskyCovariance, Positive, augment_state, em, fit, forecast_error,
                             negative_log_likelihood, truncated_negative_log_likelihood)
from kalmax.models import RK4, Flow, Lorenz63, Lorenz96, Lorenz96Closure, Lorenz96TwoScale, NavierStokes2D, trajectory
from kalmax.problems import darcy_problem, linear_gaussian, lorenz96_problem

KEY = jax.random.key(0)


def linear(dx=2, dy=2):
    return kx.LinearGaussianSSM(0.9 * jnp.eye(dx), jnp.eye(dy, dx), 0.1 * jnp.eye(dx), 0.5 * jnp.eye(dy),
                                jnp.zeros(dx), jnp.eye(dx))


def lorenz(dim=8):
    return kx.StateSpaceModel(Flow(Lorenz96(dim), RK4(0.05)), jnp.eye(dim), None, jnp.eye(dim), 8.0 * jnp.ones(dim),
                              jnp.eye(dim))


def ys(n=5, dy=2):
    return jnp.zeros((n, dy))


def problem():
    return kx.InverseProblem(lambda u: u, jnp.zeros(2), jnp.eye(2), kx.Prior(jnp.zeros(2), jnp.eye(2)))


def etkf():
    return kx.EnKF(5, kx.SquareRoot())


def letkf(dim=8):
    return kx.LETKF(5, kx.Localization(kx.Periodic1D(dim), kx.GaspariCohn(2.0)))


def nll_pair():
    return (linear(), kx.KalmanFilter())


SIMULATE = [
    ("simulate-key-int", lambda: kx.simulate(linear(), 0, 5), TypeError, "`key` must be a JAX PRNG key"),
    ("simulate-key-none", lambda: kx.simulate(linear(), None, 5), ValueError, "`key` is required"),
    ("simulate-key-batch", lambda: kx.simulate(linear(), jax.random.split(KEY, 3), 5), ValueError,
     r"`key` must be one PRNG key .*batch"),
    ("simulate-key-raw-batch", lambda: kx.simulate(linear(), jax.random.split(jax.random.PRNGKey(0), 3), 5),
     ValueError, "`key` must be one PRNG key"),
    ("simulate-key-floats", lambda: kx.simulate(linear(), jnp.ones(2), 5), TypeError, "`key` must be a JAX PRNG key"),
    ("simulate-steps-float", lambda: kx.simulate(linear(), KEY, 10.5), TypeError, "`n_steps` must be an integer"),
    ("simulate-steps-bool", lambda: kx.simulate(linear(), KEY, True), TypeError, "`n_steps` must be an integer"),
    ("simulate-steps-zero", lambda: kx.simulate(linear(), KEY, 0), ValueError, "`n_steps` must be an integer >= 1"),
    ("simulate-steps-negative", lambda: kx.simulate(linear(), KEY, -3), ValueError, "`n_steps`"),
    ("simulate-steps-string", lambda: kx.simulate(linear(), KEY, "5"), TypeError, "`n_steps`"),
    ("simulate-model", lambda: kx.simulate("model", KEY, 5), TypeError, "`model` must be"),
]

ASSIMILATE = [
    ("assimilate-method-string", lambda: kx.assimilate(linear(), "kalman", ys()), TypeError, "`method` must be"),
    ("assimilate-method-class", lambda: kx.assimilate(linear(), kx.KalmanFilter, ys()), TypeError, "`method`"),
    ("assimilate-ys-empty", lambda: kx.assimilate(linear(), kx.KalmanFilter(), jnp.zeros((0, 2))), ValueError,
     "`ys` has no cycles"),
    ("assimilate-ys-1d", lambda: kx.assimilate(linear(), kx.KalmanFilter(), jnp.zeros(5)), ValueError, "`ys`"),
    ("assimilate-ys-width", lambda: kx.assimilate(linear(), kx.KalmanFilter(), jnp.zeros((5, 3))), ValueError,
     r"`ys` must have shape \(T, 2\)"),
    ("assimilate-ys-inf", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys().at[0, 0].set(jnp.inf)), ValueError,
     "`ys` has infinite entries"),
    ("assimilate-ys-strings", lambda: kx.assimilate(linear(), kx.KalmanFilter(), [["a", "b"]]), TypeError, "`ys`"),
    ("assimilate-ys-dtype", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys().astype(jnp.float32)), TypeError,
     "`ys` is float32"),
    ("assimilate-ensemble-key-none", lambda: kx.assimilate(lorenz(), etkf(), ys(3, 8)), ValueError,
     "`key` is required: EnKF is stochastic"),
    ("assimilate-ensemble-key-int", lambda: kx.assimilate(lorenz(), etkf(), ys(3, 8), 3), TypeError,
     "`key` must be a JAX PRNG key"),
    ("assimilate-ensemble-key-batch", lambda: kx.assimilate(lorenz(), etkf(), ys(3, 8), jax.random.split(KEY, 2)),
     ValueError, "`key` must be one PRNG key"),
    ("assimilate-kf-key-int", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys(), 1), TypeError, "`key`"),
    ("assimilate-save", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys(), save="cov"), TypeError, "`save`"),
    ("assimilate-loop", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys(), loop="scan"), TypeError, "`loop`"),
    ("assimilate-loop-and-parallel", lambda: kx.assimilate(linear(), kx.KalmanFilter(), ys(), parallel=True,
                                                           loop=kx.SequentialScan()), ValueError, "`parallel=True`"),
    ("assimilate-kf-nonlinear", lambda: kx.assimilate(lorenz(), kx.KalmanFilter(), ys(3, 8)), TypeError,
     "KalmanFilter"),
    ("log_likelihood-method", lambda: kx.log_likelihood(linear(), None, ys()), TypeError, "`method`"),
    ("checkpointed-chunk", lambda: kx.CheckpointedScan(0), ValueError, "`chunk_size`"),
    ("resumable-chunk", lambda: kx.assimilate_resumable(linear(), kx.KalmanFilter(), ys(), folder="/tmp/x",
                                                        chunk_size=2.5), TypeError, "`chunk_size`"),
    ("resumable-save", lambda: kx.assimilate_resumable(linear(), kx.KalmanFilter(), ys(), folder="/tmp/x",
                                                       chunk_size=2, save=None), TypeError, "`save`"),
    ("resumable-key", lambda: kx.assimilate_resumable(lorenz(), etkf(), ys(3, 8), 5, folder="/tmp/x", chunk_size=2),
     TypeError, "`key`"),
]

MODELS = [
    ("lgssm-dynamics-shape", lambda: kx.LinearGaussianSSM(jnp.eye(3), jnp.eye(2), jnp.eye(2), jnp.eye(2),
                                                           jnp.zeros(2), jnp.eye(2)), ValueError, "`dynamics`"),
    ("lgssm-observation-shape", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(3), jnp.eye(2), jnp.eye(2),
                                                              jnp.zeros(2), jnp.eye(2)), ValueError, "`observation`"),
    ("lgssm-obs_cov-shape", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.eye(3),
                                                          jnp.zeros(2), jnp.eye(2)), ValueError, "`obs_cov`"),
    ("lgssm-obs_cov-asymmetric", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2),
                                                               jnp.array([[1.0, 0.5], [0.0, 1.0]]), jnp.zeros(2),
                                                               jnp.eye(2)), ValueError, "`obs_cov`"),
    ("lgssm-obs_cov-negative", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2), -jnp.eye(2),
                                                             jnp.zeros(2), jnp.eye(2)), ValueError, "`obs_cov`"),
    ("lgssm-init_mean-shape", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.eye(2),
                                                            jnp.zeros(3), jnp.eye(2)), ValueError, "`init_mean`"),
    ("lgssm-init_cov-nan", lambda: kx.LinearGaussianSSM(jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.zeros(2),
                                                         jnp.full((2, 2), jnp.nan)), ValueError, "`init_cov`"),
    ("lgssm-dtype-mix", lambda: kx.LinearGaussianSSM(jnp.eye(2, dtype=jnp.float32), jnp.eye(2), jnp.eye(2),
                                                      jnp.eye(2), jnp.zeros(2), jnp.eye(2)), TypeError, "dtype mix"),
    ("lgssm-dynamics-string", lambda: kx.LinearGaussianSSM("A", jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.zeros(2),
                                                            jnp.eye(2)), TypeError, "`dynamics`"),
    ("ssm-dynamics-not-callable", lambda: kx.StateSpaceModel(3.0, jnp.eye(2), None, jnp.eye(2), jnp.zeros(2),
                                                              jnp.eye(2)), TypeError, "`dynamics`"),
    ("ssm-obs_cov-none", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2), None, None, jnp.zeros(2), jnp.eye(2)),
     ValueError, "`obs_cov` is required"),
    ("ssm-obs_cov-scalar-zero", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2), None, kx.ScalarCovariance(0.0, 2),
                                                            jnp.zeros(2), jnp.eye(2)), ValueError,
     "`obs_cov` must be positive definite"),
    ("ssm-obs_cov-diagonal-zero", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2), None,
                                                              kx.DiagonalCovariance(jnp.array([1.0, 0.0])),
                                                              jnp.zeros(2), jnp.eye(2)), ValueError, "`obs_cov`"),
    ("ssm-obs_cov-size", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2), None, kx.ScalarCovariance(1.0, 3),
                                                     jnp.zeros(2), jnp.eye(2)), ValueError, "`obs_cov` must have size 2"),
    ("ssm-init_cov-size", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2), None, jnp.eye(2), jnp.zeros(2),
                                                      jnp.eye(3)), ValueError, "`init_cov`"),
    ("ssm-observation-width", lambda: kx.StateSpaceModel(lambda v: v, jnp.eye(2, 3), None, jnp.eye(2), jnp.zeros(2),
                                                          jnp.eye(2)), ValueError, "`observation`"),
    ("ssm-dynamics-wrong-output", lambda: kx.StateSpaceModel(lambda v: v[:1], jnp.eye(2), None, jnp.eye(2),
                                                              jnp.zeros(2), jnp.eye(2)), ValueError, "`dynamics`"),
    ("scalar-cov-negative", lambda: kx.ScalarCovariance(-1.0, 3), ValueError, "`variance`.*non-negative"),
    ("scalar-cov-nan", lambda: kx.ScalarCovariance(jnp.nan, 3), ValueError, "`variance` has non-finite"),
    ("scalar-cov-vector", lambda: kx.ScalarCovariance(jnp.ones(2), 3), ValueError, "`variance`"),
    ("scalar-cov-dim", lambda: kx.ScalarCovariance(1.0, 0), ValueError, "`dim`"),
    ("diagonal-cov-negative", lambda: kx.DiagonalCovariance(jnp.array([1.0, -1.0])), ValueError, "`variances`"),
    ("diagonal-cov-matrix", lambda: kx.DiagonalCovariance(jnp.eye(2)), ValueError, "`variances`"),
    ("dense-cov-vector", lambda: kx.DenseCovariance(jnp.ones(3)), ValueError, "`covariance`"),
    ("index-observation-out-of-range", lambda: kx.IndexObservation([0, 5], 3), ValueError, "`indices`"),
    ("index-observation-empty", lambda: kx.IndexObservation([], 3), ValueError, "`indices`"),
    ("timevarying-scalar", lambda: kx.TimeVarying(1.0), ValueError, "`TimeVarying.values`"),
    ("lorenz96-dim", lambda: Lorenz96(3), ValueError, "`dim`"),
    ("lorenz96-dim-float", lambda: Lorenz96(8.5), (TypeError, ValueError), "`dim`"),
    ("lorenz96-forcing-nan", lambda: Lorenz96(8, jnp.nan), ValueError, "`forcing`"),
    ("lorenz63-sigma-vector", lambda: Lorenz63(jnp.ones(2)), ValueError, "`sigma`"),
    ("rk4-dt-negative", lambda: RK4(-0.1), ValueError, "`dt`"),
    ("rk4-steps-zero", lambda: RK4(0.1, 0), ValueError, "`n_steps`"),
    ("flow-integrator", lambda: Flow(Lorenz96(8), "rk4"), TypeError, "`integrator`"),
    ("trajectory-intervals", lambda: trajectory(Flow(Lorenz96(8), RK4(0.05)), jnp.ones(8), -1), ValueError,
     "`n_intervals`"),
    ("navier-stokes-grid", lambda: NavierStokes2D(7), ValueError, "`grid_size`"),
    ("navier-stokes-viscosity", lambda: NavierStokes2D(16, -1.0), ValueError, "`viscosity`"),
    ("two-scale-slow", lambda: Lorenz96TwoScale(n_slow=2), ValueError, "`n_slow`"),
    ("two-scale-time-scale", lambda: Lorenz96TwoScale(time_scale=0.0), ValueError, "`time_scale`"),
    ("closure-not-callable", lambda: Lorenz96Closure(8, 20.0, 3.0), TypeError, "`closure`"),
]

FILTERS = [
    ("enkf-size-one", lambda: kx.EnKF(1, kx.SquareRoot()), ValueError, "`ensemble_size`"),
    ("enkf-size-float", lambda: kx.EnKF(10.5, kx.SquareRoot()), (TypeError, ValueError), "`ensemble_size`"),
    ("enkf-inflation-below-one", lambda: kx.EnKF(5, kx.SquareRoot(), inflation=0.9), ValueError, "`inflation`"),
    ("enkf-update-string", lambda: kx.EnKF(5, "sqrt"), TypeError, "`update`"),
    ("letkf-localization", lambda: kx.LETKF(5, "gc"), TypeError, "`localization`"),
    ("letkf-size", lambda: kx.LETKF(1, kx.Localization(kx.Periodic1D(8), kx.GaspariCohn(2.0))), ValueError,
     "`ensemble_size`"),
    ("letkf-model-size", lambda: kx.assimilate(lorenz(10), letkf(8), ys(3, 10), KEY), ValueError, "8"),
    ("enkf-n-xn", lambda: kx.EnKFN(5, xN=0.0), ValueError, "`xN`"),
    ("enkf-n-size", lambda: kx.EnKFN(1), ValueError, "`ensemble_size`"),
    ("gaspari-cohn-radius", lambda: kx.GaspariCohn(-1.0), ValueError, "`radius`"),
    ("periodic1d-size", lambda: kx.Periodic1D(0), ValueError, "`size`"),
    ("localization-geometry", lambda: kx.Localization("ring", kx.GaspariCohn(2.0)), TypeError, "`geometry`"),
    ("localization-taper", lambda: kx.Localization(kx.Periodic1D(8), 2.0), TypeError, "`taper`"),
    ("rtpp-alpha", lambda: kx.RTPP(1.5), ValueError, "`alpha`"),
    ("rtps-alpha", lambda: kx.RTPS(-0.1), ValueError, "`alpha`"),
    ("multiplicative-inflation", lambda: kx.MultiplicativeInflation(0.5), ValueError, "`factor`|`inflation`"),
    ("ekf-inflation", lambda: kx.ExtendedKalmanFilter(inflation=0.5), ValueError, "`inflation`"),
    ("ukf-alpha", lambda: kx.UnscentedKalmanFilter(alpha=0.0), ValueError, "`alpha`"),
    ("3dvar-background-shape", lambda: kx.assimilate(linear(), kx.ThreeDVar(jnp.eye(3)), ys()), ValueError,
     "`background_cov`"),
    ("3dvar-background-string", lambda: kx.ThreeDVar("B"), TypeError, "`background_cov`"),
    ("rts-model", lambda: kx.rts_smoother(lorenz(), ys(3, 8)), TypeError, "`model`"),
    ("rts-ys", lambda: kx.rts_smoother(linear(), jnp.zeros((5, 3))), ValueError, "`ys`"),
]

EXPERIMENTS = [
    ("twin-key-int", lambda: kx.twin_experiment(lorenz(), etkf(), 5, 0), TypeError, "`key` must be a JAX PRNG key"),
    ("twin-key-none", lambda: kx.twin_experiment(lorenz(), etkf(), 5, None), ValueError, "`key` is required"),
    ("twin-cycles-zero", lambda: kx.twin_experiment(lorenz(), etkf(), 0, KEY), ValueError, "`n_cycles`"),
    ("twin-cycles-float", lambda: kx.twin_experiment(lorenz(), etkf(), 5.5, KEY), TypeError, "`n_cycles`"),
    ("twin-burn-in", lambda: kx.twin_experiment(lorenz(), etkf(), 5, KEY, burn_in=5), ValueError, "`burn_in`"),
    ("twin-burn-in-negative", lambda: kx.twin_experiment(lorenz(), etkf(), 5, KEY, burn_in=-1), ValueError,
     "`burn_in`"),
    ("twin-truth-without-ys", lambda: kx.twin_experiment(lorenz(), etkf(), 5, KEY, truth=jnp.zeros((6, 8))),
     ValueError, "`truth` and `ys`"),
    ("twin-truth-shape", lambda: kx.twin_experiment(lorenz(), etkf(), 5, KEY, truth=jnp.zeros((5, 8)),
                                                    ys=jnp.zeros((5, 8))), ValueError, "`truth` must have shape"),
    ("sweep-key", lambda: kx.sweep(lorenz(), lambda inflation: etkf(), 5, 0, grid={"inflation": [1.0]}), TypeError,
     "`key`"),
    ("sweep-cycles", lambda: kx.sweep(lorenz(), lambda inflation: etkf(), 0, KEY, grid={"inflation": [1.0]}),
     ValueError, "`n_cycles`"),
    ("sweep-seeds", lambda: kx.sweep(lorenz(), lambda inflation: etkf(), 5, KEY, grid={"inflation": [1.0]},
                                     n_seeds=0), ValueError, "`n_seeds`"),
    ("sweep-grid-name", lambda: kx.sweep(lorenz(), lambda inflation: etkf(), 5, KEY, grid={"in flation": [1.0]}),
     ValueError, "`grid` names"),
    ("sweep-progress", lambda: kx.sweep(lorenz(), lambda inflation: etkf(), 5, KEY, grid={"inflation": [1.0]},
                                        progress="yes"), TypeError, "`progress`"),
    ("climatology-steps", lambda: kx.climatology_cov(lorenz(), KEY, 0), ValueError, "`n_steps`"),
    ("to-xarray-result", lambda: kx.to_xarray({"mean": 1.0}), TypeError, "`result` must be a History"),
    ("to-netcdf-folder", lambda: kx.to_netcdf(kx.assimilate(linear(), kx.KalmanFilter(), ys())[1],
                                              "/no/such/folder/run.nc"), ValueError, "`path`"),
]

INVERSION = [
    ("problem-forward", lambda: kx.InverseProblem("f", jnp.zeros(2), jnp.eye(2), kx.Prior(jnp.zeros(2), jnp.eye(2))),
     TypeError, "`forward`"),
    ("problem-y-2d", lambda: kx.InverseProblem(lambda u: u, jnp.zeros((2, 2)), jnp.eye(2),
                                               kx.Prior(jnp.zeros(2), jnp.eye(2))), ValueError, "`y`"),
    ("problem-obs_cov-shape", lambda: kx.InverseProblem(lambda u: u, jnp.zeros(2), jnp.eye(3),
                                                        kx.Prior(jnp.zeros(2), jnp.eye(2))), ValueError, "`obs_cov`"),
    ("problem-prior", lambda: kx.InverseProblem(lambda u: u, jnp.zeros(2), jnp.eye(2), jnp.zeros(2)), TypeError,
     "`prior`"),
    ("prior-cov-shape", lambda: kx.Prior(jnp.zeros(2), jnp.eye(3)), ValueError, "`prior cov`"),
    ("prior-cov-negative", lambda: kx.Prior(jnp.zeros(2), -jnp.eye(2)), ValueError, "`prior cov`"),
    ("bounded-order", lambda: kx.bounded(1.0, 0.0), ValueError, "`lower`|`upper`"),
    ("eki-size", lambda: kx.EKI(1), ValueError, "`ensemble_size`"),
    ("eki-scheduler", lambda: kx.EKI(10, scheduler=0.5), TypeError, "`scheduler`"),
    ("eks-size", lambda: kx.EKS(1), ValueError, "`ensemble_size`"),
    ("uki-alpha", lambda: kx.UKI(alpha=1.5), ValueError, "`alpha`"),
    ("fixed-step", lambda: kx.FixedStep(0.0), ValueError, "`step`"),
    ("discrepancy-tau", lambda: kx.DiscrepancyPrinciple(-0.5), ValueError, "`tau`"),
    ("invert-problem", lambda: kx.invert("p", kx.EKI(10), KEY, 2), TypeError, "`problem`"),
    ("invert-method", lambda: kx.invert(problem(), "eki", KEY, 2), TypeError, "`method`"),
    ("invert-key-none", lambda: kx.invert(problem(), kx.EKI(10), None, 2), ValueError, "needs a `key`"),
    ("invert-key-int", lambda: kx.invert(problem(), kx.EKI(10), 5, 2), TypeError, "`key` must be a JAX PRNG key"),
    ("invert-key-batch", lambda: kx.invert(problem(), kx.EKI(10), jax.random.split(KEY, 2), 2), ValueError,
     "`key` must be one PRNG key"),
    ("invert-steps-float", lambda: kx.invert(problem(), kx.EKI(10), KEY, 2.5), ValueError, "`n_steps`"),
    ("invert-no-end", lambda: kx.invert(problem(), kx.EKI(10), KEY), ValueError, "`n_steps`"),
    ("invert-max-steps", lambda: kx.invert(problem(), kx.EKI(10), KEY, 2, max_steps=0), ValueError, "`max_steps`"),
    ("invert-stop", lambda: kx.invert(problem(), kx.EKI(10), KEY, 2, stop=1.0), TypeError, "`stop`"),
    ("invert-external-forward", lambda: kx.invert_external(problem(), kx.EKI(10), KEY, "run.sh", 2), TypeError,
     "`forward`"),
    ("invert-external-key", lambda: kx.invert_external(problem(), kx.EKI(10), 3, lambda u: u, 2), TypeError, "`key`"),
    ("eki-flow-members", lambda: kx.eki_flow(problem(), jnp.zeros(2), 1.0), ValueError, "`members`"),
    ("eki-flow-time", lambda: kx.eki_flow(problem(), jnp.zeros((5, 2)), -1.0), ValueError, "`t1`"),
    ("linear-gaussian-dims", lambda: linear_gaussian(KEY, 0), ValueError, "`parameter_dim`"),
    ("darcy-grid", lambda: darcy_problem(KEY, grid_size=2), ValueError, "`grid_size`"),
    ("lorenz96-problem-dim", lambda: lorenz96_problem(KEY, dim=2), ValueError, "`dim`"),
]


def _nll_loss(pair, data, key):
    return negative_log_likelihood(pair, data)


LEARNING = [
    ("nll-pair", lambda: negative_log_likelihood(linear(), ys()), TypeError, r"the pair \(model, method\)"),
    ("nll-burn-in", lambda: negative_log_likelihood(nll_pair(), ys(), burn_in=5), ValueError, "`burn_in`"),
    ("nll-gradient", lambda: negative_log_likelihood(nll_pair(), ys(), gradient="exact"), ValueError, "`gradient`"),
    ("nll-ensemble-key", lambda: negative_log_likelihood((lorenz(), etkf()), ys(3, 8)), ValueError, "`key`"),
    ("nll-ys-width", lambda: negative_log_likelihood(nll_pair(), jnp.zeros((5, 3))), ValueError, "`ys`"),
    ("tbptt-window-zero", lambda: truncated_negative_log_likelihood(nll_pair(), ys(), window=0), ValueError,
     "`window`"),
    ("tbptt-window-long", lambda: truncated_negative_log_likelihood(nll_pair(), ys(), window=6), ValueError,
     "`window`"),
    ("forecast-error-lead", lambda: forecast_error(nll_pair(), ys(), lead=0), ValueError, "`lead`"),
    ("fit-optimizer", lambda: fit(_nll_loss, nll_pair(), ys(), "adam", 3, progress=False), TypeError, "`optimizer`"),
    ("fit-epochs", lambda: fit(_nll_loss, nll_pair(), ys(), optax.adam(0.1), 0, progress=False), ValueError,
     "`n_epochs`"),
    ("fit-no-trainable", lambda: fit(_nll_loss, nll_pair(), ys(), optax.adam(0.1), 2, progress=False,
                                     trainable=lambda leaf: False), ValueError, "trainable"),
    ("fit-loss-not-scalar", lambda: fit(lambda p, d, k: jnp.ones(2) * p[0].init_mean.sum(), nll_pair(), ys(),
                                        optax.adam(0.1), 2, progress=False), TypeError, "`loss` must return a scalar"),
    ("fit-loss-not-callable", lambda: fit("nll", nll_pair(), ys(), optax.adam(0.1), 2, progress=False), TypeError,
     "`loss`"),
    ("fit-key-int", lambda: fit(_nll_loss, nll_pair(), ys(), optax.adam(0.1), 2, 7, progress=False), TypeError,
     "`key`"),
    ("em-model", lambda: em(lorenz(), ys(3, 8), 2), TypeError, "`model`"),
    ("em-iterations", lambda: em(linear(), ys(), 0), ValueError, "`n_iterations`"),
    ("em-fixed", lambda: em(linear(), ys(), 2, fixed=("A",)), ValueError, "`fixed`"),
    ("em-ys", lambda: em(linear(), jnp.zeros((5, 3)), 2), ValueError, "`ys`"),
    ("positive-value", lambda: Positive(-1.0), ValueError, "positive|`value`"),
    ("at-least-value", lambda: AtLeast(0.5, 1.0), ValueError, "`value`|lower"),
    ("cholesky-covariance", lambda: CholeskyCovariance(-jnp.eye(2)), ValueError, "`matrix`|positive definite"),
    ("augment-where", lambda: augment_state(lorenz(), lambda flow: flow.model.nothing, 6.0, 1.0), TypeError, "`where`"),
    ("augment-prior-cov", lambda: augment_state(lorenz(), lambda flow: flow.model.forcing, 6.0, -1.0), ValueError,
     "`prior_cov`"),
]


def _cli(*argv):
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


COMMAND_LINE = [
    ("cli-cycles-zero", ("twin", "--cycles", "0"), "--cycles"),
    ("cli-cycles-negative", ("twin", "--cycles", "-5"), "--cycles"),
    ("cli-cycles-float", ("twin", "--cycles", "10.5"), "--cycles"),
    ("cli-burn-in-long", ("twin", "--burn-in", "5000", "--cycles", "100"), "--burn-in"),
    ("cli-burn-in-negative", ("twin", "--burn-in", "-1"), "--burn-in"),
    ("cli-preset-burn-in", ("twin", "--cycles", "100"), "burn-in"),
    ("cli-plot-folder", ("twin", "--cycles", "10", "--burn-in", "1", "--plot", "/no/such/folder/run.png"), "--plot"),
    ("cli-twin-option", ("twin", "--method", "3dvar", "--inflation", "1.1", "--cycles", "10", "--burn-in", "1",
                         "--climatology-steps", "50"), "--inflation"),
    ("cli-sweep-option", ("sweep", "--method", "etkf", "--radius", "2", "4"), "--radius"),
    ("cli-method", ("twin", "--method", "etkff"), "unknown method"),
    ("cli-model", ("twin", "--model", "lorenz99"), "unknown preset or model"),
    ("cli-ensemble-size", ("twin", "--method", "etkf", "--ensemble-size", "1"), "--ensemble-size"),
    ("cli-seeds", ("sweep", "--seeds", "0"), "--seeds"),
    ("cli-batch-size", ("sweep", "--batch-size", "0"), "--batch-size"),
    ("cli-inflation-below-one", ("sweep", "--method", "etkf", "--inflation", "0.9", "--cycles", "10", "--burn-in",
                                 "2"), "`inflation` must be >= 1"),
    ("cli-user-method-file", ("twin", "--method", "missing.py:make"), "cannot load method"),
    ("cli-letkf-lorenz63", ("twin", "--method", "letkf", "--model", "lorenz63"), "letkf needs a spatial model"),
    ("cli-lag-not-a-smoother", ("twin", "--method", "etkf", "--lag", "2"), "--lag"),
    ("cli-n-iter-enks", ("twin", "--method", "enks", "--n-iter", "2"), "--n-iter"),
    ("cli-lag-zero", ("twin", "--method", "ienks", "--lag", "0"), "--lag"),
    ("cli-save-folder", ("twin", "--cycles", "10", "--burn-in", "1", "--save", "/no/such/folder/run.nc"), "--save"),
]

# the issue titled 08: smoothers and iterative ensemble methods
SMOOTHERS = [
    ("enks-lag-zero", lambda: kx.EnKS(10, 0), ValueError, "`lag`"),
    ("enks-lag-float", lambda: kx.EnKS(10, 2.5), ValueError, "`lag`"),
    ("enks-ensemble-size", lambda: kx.EnKS(1, 2), ValueError, "`ensemble_size`"),
    ("enks-update", lambda: kx.EnKS(10, 2, update="sqrt"), TypeError, "`update`"),
    ("enrts-decorrelation-zero", lambda: kx.EnRTS(10, 0.0), ValueError, "`decorrelation`"),
    ("enrts-decorrelation-above-one", lambda: kx.EnRTS(10, 1.5), ValueError, "`decorrelation`"),
    ("enrts-decorrelation-vector", lambda: kx.EnRTS(10, jnp.ones(2)), ValueError, "`decorrelation`"),
    ("smooth-not-a-smoother", lambda: kx.smooth(linear(), kx.KalmanFilter(), ys()), TypeError, "`smoother`"),
    ("smooth-ensemble-key-missing", lambda: kx.smooth(lorenz(), kx.EnKS(10, 2), ys(5, 8)), ValueError, "`key`"),
    ("smooth-ensemble-key-int", lambda: kx.smooth(lorenz(), kx.EnRTS(10), ys(5, 8), 3), TypeError, "`key`"),
    ("smooth-init-state-shape", lambda: kx.smooth(lorenz(), kx.EnKS(10, 2), ys(5, 8), KEY,
                                                 init_state=kx.Ensemble(jnp.zeros((4, 8)))), ValueError,
     "`init_state`"),
    ("smooth-rts-init-state", lambda: kx.smooth(linear(), kx.RTSSmoother(), ys(), init_state=kx.Ensemble(jnp.zeros((4, 2)))),
     ValueError, "`init_state`"),
    ("erts-filter", lambda: kx.ExtendedRTSSmoother(kx.UnscentedKalmanFilter()), TypeError, "`filter`"),
    ("urts-filter", lambda: kx.UnscentedRTSSmoother(kx.KalmanFilter()), TypeError, "`filter`"),
    ("erts-model", lambda: kx.smooth("model", kx.ExtendedRTSSmoother(), ys()), TypeError, "`model`"),
    ("ienks-lag", lambda: kx.IEnKS(10, 0), ValueError, "`lag`"),
    ("ienks-n-iter", lambda: kx.IEnKS(10, 1, n_iter=0), ValueError, "`n_iter`"),
    ("ienks-wtol", lambda: kx.IEnKS(10, 1, wtol=-1.0), ValueError, "`wtol`"),
    ("ienks-update", lambda: kx.IEnKS(10, 1, update="Sqrt"), TypeError, "`update`"),
    ("ienks-model-error", lambda: kx.assimilate(
        kx.StateSpaceModel(Flow(Lorenz96(8), RK4(0.05)), jnp.eye(8), 0.1 * jnp.eye(8), jnp.eye(8), 8.0 * jnp.ones(8),
                           jnp.eye(8)), kx.IEnKS(10, 1), ys(5, 8), KEY), ValueError, "dynamics_cov"),
    ("4dvar-lag", lambda: kx.FourDVar(jnp.eye(8), lag=0), ValueError, "`lag`"),
    ("4dvar-solver", lambda: kx.FourDVar(jnp.eye(8), solver="newton"), ValueError, "`solver`"),
    ("4dvar-background-shape", lambda: kx.assimilate(lorenz(), kx.FourDVar(jnp.eye(3)), ys(5, 8)), ValueError,
     "`background_cov`"),
    ("4dvar-background-zero", lambda: kx.FourDVar(kx.ZeroCovariance(8)), ValueError, "`background_cov`"),
    ("4dvar-wtol", lambda: kx.FourDVar(jnp.eye(8), wtol=-1.0), ValueError, "`wtol`"),
    ("esmda-coefficients-sum", lambda: kx.ESMDA(10, (2.0, 2.0, 2.0)), ValueError, "`coefficients`"),
    ("esmda-coefficients-negative", lambda: kx.ESMDA(10, (2.0, -2.0)), ValueError, "`coefficients`"),
    ("esmda-coefficients-zero", lambda: kx.ESMDA(10, 0), ValueError, "`coefficients`"),
    ("esmda-ensemble-size", lambda: kx.ESMDA(1, 4), ValueError, "`ensemble_size`"),
    ("esmda-n-steps", lambda: kx.invert(problem(), kx.ESMDA(10, 4), KEY, 3), ValueError, "`n_steps`"),
    ("esmda-stop", lambda: kx.invert(problem(), kx.ESMDA(10, 4), KEY, stop=kx.DiscrepancyPrinciple()), ValueError,
     "`stop`"),
    ("ienks-xn-negative", lambda: kx.IEnKS(10, 2, xN=-1.0), ValueError, "`xN`"),
    ("ienks-xn-vector", lambda: kx.IEnKS(10, 2, xN=[1.0, 2.0]), ValueError, "`xN`"),
    ("enrml-ensemble-size", lambda: kx.EnRML(1), ValueError, "`ensemble_size`"),
    ("enrml-n-iter", lambda: kx.EnRML(10, n_iter=0), ValueError, "`n_iter`"),
    ("enrml-step-size", lambda: kx.EnRML(10, step_size=1.5), ValueError, "`step_size`"),
    ("enrml-n-steps", lambda: kx.invert(problem(), kx.EnRML(10, n_iter=4), KEY, 3), ValueError, "`n_steps`"),
    ("enrml-no-key", lambda: kx.EnRML(10).tell(problem(), kx.EnRML(10).init(problem(), KEY),
                                             jnp.zeros((10, problem().y.shape[0]))), ValueError, "`key`"),
]



def ou():
    eye = jnp.eye(1)
    return kx.ContinuousModel(-eye, 0.5 * eye, eye, 0.2 * eye, jnp.zeros(1), eye)


# the issues titled 09 and 10: continuous time, several processes
CONTINUOUS = [
    ("continuous-increments-columns", lambda: kx.KalmanBucy().run(ou(), jnp.zeros((5, 2)), 0.1), ValueError,
     r"`increments` must have shape \(T, 1\)"),
    ("continuous-increments-vector", lambda: kx.EnKBF(4).run(ou(), jnp.zeros(5), 0.1, KEY), ValueError,
     "`increments`"),
    ("continuous-increments-empty", lambda: kx.KalmanBucy().run(ou(), jnp.zeros((0, 1)), 0.1), ValueError,
     "`increments` is empty"),
    ("continuous-increments-nan", lambda: kx.ContinuousThreeDVar(jnp.eye(1)).run(
        ou(), jnp.zeros((5, 1)).at[3, 0].set(jnp.nan), 0.1), ValueError, "non-finite entries \\(first at time step 3"),
    ("continuous-increments-dtype", lambda: kx.KalmanBucy().run(ou(), jnp.zeros((5, 1), jnp.float32), 0.1),
     TypeError, "dtype mix: `increments`"),
    ("continuous-dt-negative", lambda: kx.KalmanBucy().run(ou(), jnp.zeros((5, 1)), -0.1), ValueError, "`dt` must be > 0"),
    ("continuous-dt-vector", lambda: kx.KalmanBucy().run(ou(), jnp.zeros((5, 1)), jnp.ones(5)), ValueError,
     "`dt` must be a scalar"),
    ("continuous-3dvar-background", lambda: kx.ContinuousThreeDVar(jnp.eye(2)).run(ou(), jnp.zeros((5, 1)), 0.1),
     ValueError, "`background_cov` has size 2"),
    ("continuous-model-not", lambda: kx.EnKBF(4).run("model", jnp.zeros((5, 1)), 0.1, KEY), TypeError, "`model`"),
    ("distributed-process-id", lambda: kx.distributed.initialize("127.0.0.1:5000", 2, 5), ValueError,
     "`process_id`"),
    ("distributed-address", lambda: kx.distributed.initialize("5000", 2, 0), ValueError, "`coordinator_address`"),
    ("distributed-devices", lambda: kx.distributed.launch_local(["run.py"], 2, devices_per_process=0), ValueError,
     "`devices_per_process`"),
    ("letkf-sharding-members", lambda: kx.LETKF.dapper(8, kx.Periodic1D(8), 2.0, sharding=kx.MemberSharding()),
     TypeError, "`sharding` must be a GridSharding"),
]

CASES = SIMULATE + ASSIMILATE + MODELS + FILTERS + EXPERIMENTS + INVERSION + LEARNING + SMOOTHERS + CONTINUOUS


def test_the_catalogue_is_large():
    assert len(CASES) + len(COMMAND_LINE) >= 130
    names = [case[0] for case in CASES] + [case[0] for case in COMMAND_LINE]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name, call, error, pattern", CASES, ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(name, call, error, pattern):
    with pytest.raises(error, match=pattern) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message.strip() or len(message) < 2000  # no dump of a traced program
    assert "jaxpr" not in message and "Traced<" not in message, message


@pytest.mark.parametrize("name, argv, pattern", COMMAND_LINE, ids=[case[0] for case in COMMAND_LINE])
def test_the_command_line_answers_in_one_line_with_exit_code_2(capsys, name, argv, pattern):
    code = _cli(*argv)
    err = capsys.readouterr().err
    assert code == 2, err
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert len(error_lines) == 1 and pattern in error_lines[0], err
    assert "Traceback" not in err

