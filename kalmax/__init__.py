"""kalmax: JAX-accelerated, differentiable data assimilation.

Public names are re-exported here explicitly; implementations live in modules
named after what they hold.
"""

from . import (continuous, datasets, distributed, experiments, inversion, learning, loops, metrics, models, problems,
               smoothers)
from .results import RESULTS, DivergenceError, InversionError, KalmaxError, LearningError
from .assimilate import assimilate, log_likelihood
from .resumable import assimilate_resumable
from .history import History, Save
from .loops import AbstractTimeLoop, CheckpointedScan, ParallelScan, SequentialScan, SteadyStateScan
from .covariance import (
    AbstractCovariance,
    DenseCovariance,
    DiagonalCovariance,
    ScalarCovariance,
    ZeroCovariance,
)
from .experiments import TwinResult, climatology_cov, twin_experiment
from .simulate import simulate
from .ensemble.inflation import (
    AdditiveInflation,
    Inflations,
    MultiplicativeInflation,
    NoInflation,
    RTPP,
    RTPS,
)
from .ensemble.localization import (
    AbstractGeometry,
    AbstractTaper,
    GaspariCohn,
    GaussianTaper,
    Localization,
    ObservationLocations,
    Periodic1D,
    Periodic2D,
    StepTaper,
)
from .filters.base import AbstractFilter, AbstractParallelFilter, AbstractSteadyStateFilter
from .filters.enkf import DEnKF, EnKF, PerturbedObservations, SquareRoot
from .filters.ensemble_base import AbstractEnsembleFilter, EnsembleInfo
from .filters.enkf_n import EnKFN, EnKFNInfo
from .filters.extended import ExtendedKalmanFilter, UnscentedKalmanFilter
from .filters.kalman import KalmanFilter, KalmanInfo
from .filters.letkf import LETKF
from .filters.var3d import ThreeDVar, ThreeDVarState
from .gaussian import Ensemble, Gaussian, SqrtGaussian
from .inversion import (
    EKI,
    EKS,
    ESMDA,
    EnRML,
    EnRMLState,
    ETKI,
    Bounds,
    DataMisfitController,
    DiscrepancyPrinciple,
    EKSStableStep,
    FixedStep,
    InverseProblem,
    InversionResult,
    Prior,
    UKI,
    bounded,
    eki_flow,
    invert,
    invert_external,
    positive,
)
from .observations import FunctionObservation, IndexObservation, LinearObservation
from .spectral_covariance import FourierCovariance, SpectralCovariance
from .sharding import GridSharding, MemberSharding, device_mesh
from .smoothers import (
    AbstractSmoother,
    EnKS,
    EnRTS,
    EnsembleSmootherResult,
    ExtendedRTSSmoother,
    FourDVar,
    FourDVarInfo,
    IEnKS,
    IEnKSInfo,
    RTSSmoother,
    SmootherResult,
    UnscentedRTSSmoother,
    rts_smoother,
    smooth,
)
from .sweep import SweepResult, sweep
from .labelled import to_netcdf, to_xarray
from .ssm import LinearDynamics, LinearGaussianSSM, StateSpaceModel, TimeVarying, as_state_space_model
from .continuous import (
    ContinuousData,
    ContinuousFilterResult,
    ContinuousModel,
    ContinuousThreeDVar,
    EnKBF,
    KalmanBucy,
    simulate_continuous,
)

__version__ = "0.1.0"

__all__ = [
    "ContinuousData",
    "ContinuousFilterResult",
    "ContinuousModel",
    "ContinuousThreeDVar",
    "EnKBF",
    "KalmanBucy",
    "simulate_continuous",
    "AbstractEnsembleFilter",
    "AbstractFilter",
    "AbstractParallelFilter",
    "AbstractSmoother",
    "AbstractSteadyStateFilter",
    "AbstractTimeLoop",
    "CheckpointedScan",
    "ParallelScan",
    "RTSSmoother",
    "EnKS",
    "EnRTS",
    "EnsembleSmootherResult",
    "IEnKS",
    "IEnKSInfo",
    "ExtendedRTSSmoother",
    "FourDVar",
    "FourDVarInfo",
    "UnscentedRTSSmoother",
    "SequentialScan",
    "SteadyStateScan",
    "smooth",
    "EKI",
    "EKS",
    "ESMDA",
    "EnRML",
    "EnRMLState",
    "ETKI",
    "Bounds",
    "DataMisfitController",
    "DiscrepancyPrinciple",
    "EKSStableStep",
    "FixedStep",
    "InverseProblem",
    "InversionError",
    "InversionResult",
    "Prior",
    "UKI",
    "bounded",
    "eki_flow",
    "invert",
    "invert_external",
    "positive",
    "inversion",
    "problems",
    "AbstractCovariance",
    "EnKFN",
    "EnKFNInfo",
    "GridSharding",
    "MemberSharding",
    "SweepResult",
    "device_mesh",
    "sweep",
    "AbstractGeometry",
    "AbstractTaper",
    "GaspariCohn",
    "GaussianTaper",
    "LETKF",
    "Localization",
    "ObservationLocations",
    "Periodic1D",
    "Periodic2D",
    "StepTaper",
    "AdditiveInflation",
    "DEnKF",
    "EnKF",
    "Ensemble",
    "EnsembleInfo",
    "Inflations",
    "MultiplicativeInflation",
    "NoInflation",
    "PerturbedObservations",
    "RTPP",
    "RTPS",
    "SquareRoot",
    "ExtendedKalmanFilter",
    "FourierCovariance",
    "SpectralCovariance",
    "ThreeDVar",
    "ThreeDVarState",
    "UnscentedKalmanFilter",
    "DenseCovariance",
    "DiagonalCovariance",
    "FunctionObservation",
    "IndexObservation",
    "LinearDynamics",
    "LinearObservation",
    "ScalarCovariance",
    "StateSpaceModel",
    "ZeroCovariance",
    "as_state_space_model",
    "DivergenceError",
    "KalmaxError",
    "LearningError",
    "RESULTS",
    "Gaussian",
    "History",
    "KalmanFilter",
    "KalmanInfo",
    "LinearGaussianSSM",
    "Save",
    "SmootherResult",
    "SqrtGaussian",
    "TimeVarying",
    "assimilate",
    "assimilate_resumable",
    "log_likelihood",
    "rts_smoother",
    "simulate",
    "to_netcdf",
    "to_xarray",
    "twin_experiment",
    "TwinResult",
    "climatology_cov",
    "datasets",
    "experiments",
    "metrics",
    "models",
]
