"""Smoothers: the abstract smoother, the `smooth` driver, the RTS smoother and the
ensemble smoothers (EnKS, EnRTS, the iterative IEnKS), the extended and unscented RTS smoothers, and strong-constraint 4D-Var."""

from .base import AbstractSmoother, smooth
from .ensemble import EnKS, EnRTS, EnsembleSmootherResult
from .ienks import IEnKS, IEnKSInfo
from .nonlinear import ExtendedRTSSmoother, UnscentedRTSSmoother
from .var4d import FourDVar, FourDVarInfo
from .rts import RTSSmoother, SmootherResult, rts_smoother

__all__ = ["AbstractSmoother", "EnKS", "EnRTS", "EnsembleSmootherResult", "ExtendedRTSSmoother", "FourDVar", "FourDVarInfo", "IEnKS",
           "IEnKSInfo",
           "RTSSmoother", "SmootherResult", "UnscentedRTSSmoother", "rts_smoother", "smooth"]
