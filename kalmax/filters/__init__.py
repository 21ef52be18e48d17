"""Filters: one file a family."""

from .enkf import DEnKF, EnKF, EnsembleInfo, PerturbedObservations, SquareRoot
from .enkf_n import EnKFN, EnKFNInfo
from .extended import ExtendedKalmanFilter, UnscentedKalmanFilter
from .kalman import KalmanFilter, KalmanInfo
from .letkf import LETKF
from .rts import SmootherResult, rts_smoother
from .var3d import ThreeDVar, ThreeDVarState

__all__ = [
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
    "SmootherResult",
    "SquareRoot",
    "ThreeDVar",
    "ThreeDVarState",
    "UnscentedKalmanFilter",
    "rts_smoother",
]
