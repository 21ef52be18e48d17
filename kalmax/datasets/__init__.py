"""Small real data sets for examples and tests, shipped as package data.

- `load_nile()`: annual flow of the Nile at Aswan, 1871-1970 (Durbin & Koopman's
  local-level example).
"""

from .nile import load_nile

__all__ = ["load_nile"]
