"""Continuous time: models observed continuously (increments dz on a fine grid), their
simulation, and the continuous-time filters (Kalman-Bucy, extended Kalman-Bucy, ensemble
Kalman-Bucy), solved with diffrax."""

from .enkbf import EnKBF
from .kalman_bucy import ContinuousFilterResult, KalmanBucy
from .limits import aggregate_increments, discretise
from .model import ContinuousModel
from .simulate import ContinuousData, simulate_continuous
from .var3d import ContinuousThreeDVar

__all__ = [
    "ContinuousData",
    "ContinuousFilterResult",
    "ContinuousModel",
    "ContinuousThreeDVar",
    "EnKBF",
    "KalmanBucy",
    "aggregate_increments",
    "discretise",
    "simulate_continuous",
]
