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

__all__ = [
    "AbstractInflation",
    "AdditiveInflation",
    "Inflations",
    "MultiplicativeInflation",
    "NoInflation",
    "RTPP",
    "RTPS",
    "as_inflation",
]
