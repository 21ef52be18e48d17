"""Filters: one file a family."""

from .kalman import KalmanFilter, KalmanInfo
from .rts import SmootherResult, rts_smoother

__all__ = ["KalmanFilter", "KalmanInfo", "SmootherResult", "rts_smoother"]
