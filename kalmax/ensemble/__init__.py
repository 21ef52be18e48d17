"""Machinery shared by ensemble filters and ensemble inversion: inflation, localisation."""

from .inflation import (
    AbstractInflation,
    AdditiveInflation,
    Inflations,
    MultiplicativeInflation,
    NoInflation,
    RTPP,
    RTPS,
    as_inflation,
)
from .localization import (
    DAPPER_CUTOFF,
    DAPPER_GC_SCALE,
    AbstractGeometry,
    AbstractTaper,
    GaspariCohn,
    GaussianTaper,
    LocalPlan,
    Localization,
    ObservationLocations,
    Periodic1D,
    Periodic2D,
    StepTaper,
)

__all__ = [
    "DAPPER_CUTOFF",
    "DAPPER_GC_SCALE",
    "AbstractGeometry",
    "AbstractTaper",
    "GaspariCohn",
    "GaussianTaper",
    "LocalPlan",
    "Localization",
    "ObservationLocations",
    "Periodic1D",
    "Periodic2D",
    "StepTaper",
    "AbstractInflation",
    "AdditiveInflation",
    "Inflations",
    "MultiplicativeInflation",
    "NoInflation",
    "RTPP",
    "RTPS",
    "as_inflation",
]
