"""Smoothers: the abstract smoother, the `smooth` driver, the RTS smoother and the
ensemble smoothers (EnKS, EnRTS, the iterative IEnKS)."""

from .base import AbstractSmoother, smooth
from .ensemble import EnKS, EnRTS, EnsembleSmootherResult
from .ienks import IEnKS, IEnKSInfo
from .rts import RTSSmoother, SmootherResult, rts_smoother

__all__ = ["AbstractSmoother", "EnKS", "EnRTS", "EnsembleSmootherResult", "IEnKS", "IEnKSInfo", "RTSSmoother",
           "SmootherResult", "rts_smoother", "smooth"]
