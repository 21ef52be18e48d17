"""Filters: the abstract filter and its capabilities (base.py, ensemble_base.py), one file a family."""

from .base import AbstractFilter, AbstractParallelFilter, AbstractSteadyCycles, AbstractSteadyStateFilter
from .enkf import DEnKF, EnKF, PerturbedObservations, SquareRoot
from .enkf_n import EnKFN, EnKFNInfo
from .ensemble_base import AbstractEnsembleFilter, EnsembleInfo
from .extended import ExtendedKalmanFilter, UnscentedKalmanFilter
from .kalman import KalmanFilter, KalmanInfo
from .letkf import LETKF
from .var3d import ThreeDVar, ThreeDVarState

__all__ = [
    "AbstractEnsembleFilter",
    "AbstractFilter",
    "AbstractParallelFilter",
    "AbstractSteadyCycles",
    "AbstractSteadyStateFilter",
    "DEnKF",
    "EnKF",
    "EnKFN",
    "EnKFNInfo",
    "EnsembleInfo",
    "ExtendedKalmanFilter",
    "KalmanFilter",
    "KalmanInfo",
    "LETKF",
    "PerturbedObservations",
    "SquareRoot",
    "ThreeDVar",
    "ThreeDVarState",
]
