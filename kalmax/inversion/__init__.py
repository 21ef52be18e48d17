"""Ensemble Kalman inversion and sampling: find u from y = G(u) + eta with ensembles."""

from .base import AbstractInversion, EnsembleInversionState
from .constraints import Bounds, bounded, positive, unbounded
from .eki import EKI, ETKI
from .enrml import EnRML, EnRMLState
from .esmda import ESMDA
from .invert import (
    DiscrepancyPrinciple,
    InversionError,
    InversionHistory,
    InversionResult,
    invert,
)
from .problem import (
    InverseProblem,
    Prior,
)
from .eks import EKS
from .external import IterationReport, invert_external
from .flow import EKIFlowResult, eki_flow, eki_velocity
from .uki import UKI, UKIState
from .schedulers import (
    AbstractScheduler,
    DataMisfitController,
    EKSStableStep,
    FixedStep,
    MDASchedule,
    StepContext,
)

__all__ = [
    "IterationReport",
    "invert_external",
    "AbstractInversion",
    "AbstractScheduler",
    "Bounds",
    "DataMisfitController",
    "DiscrepancyPrinciple",
    "EKI",
    "EKS",
    "EKSStableStep",
    "EKIFlowResult",
    "ETKI",
    "ESMDA",
    "EnRML",
    "EnRMLState",
    "EnsembleInversionState",
    "FixedStep",
    "InverseProblem",
    "MDASchedule",
    "InversionError",
    "InversionHistory",
    "InversionResult",
    "Prior",
    "StepContext",
    "UKI",
    "UKIState",
    "bounded",
    "eki_flow",
    "eki_velocity",
    "invert",
    "positive",
    "unbounded",
]
