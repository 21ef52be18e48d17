"""Smoothers: the abstract smoother, the `smooth` driver, and the RTS smoother."""

from .base import AbstractSmoother, smooth
from .rts import RTSSmoother, SmootherResult, rts_smoother

__all__ = ["AbstractSmoother", "RTSSmoother", "SmootherResult", "rts_smoother", "smooth"]
