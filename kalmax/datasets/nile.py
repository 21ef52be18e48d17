"""Annual flow of the river Nile at Aswan, 1871-1970.

One hundred annual volumes in units of 10^8 m^3, with an apparent change
point near 1898 (the first Aswan dam). This is R's `datasets::Nile`, also
shipped by statsmodels as `statsmodels.datasets.nile`, and the running
example of Durbin & Koopman's local-level model.

Sources:
    Cobb, G. W. (1978). The problem of the Nile: conditional solution to a
    change-point problem. Biometrika 65(2), 243-251, Table 1, p. 249.

    Durbin, J. & Koopman, S. J. (2012). Time Series Analysis by State Space
    Methods, 2nd ed., Oxford University Press, sections 2.2 and 2.10.

    R Core Team, `datasets::Nile` (public domain data).

The values in `nile.csv` sum to 91935 (mean 919.35).
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

NILE_CSV = "nile.csv"


def load_nile() -> tuple[np.ndarray, np.ndarray]:
    """Load the Nile flow series.

    Returns:
        (years, flow): `years` an int64 array 1871..1970 of shape (100,), and
        `flow` a float64 array of shape (100,), the annual flow at Aswan in
        10^8 m^3.

    Example:
        >>> from kalmax.datasets import load_nile
        >>> years, flow = load_nile()
        >>> ys = jnp.asarray(flow)[:, None]  # (T, 1) observations for kx.assimilate
    """
    text = resources.files(__package__).joinpath(NILE_CSV).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != ["year", "flow"]:
        raise ValueError(f"{NILE_CSV}: expected the header 'year,flow'; got {reader.fieldnames}")
    rows = list(reader)
    years = np.array([int(row["year"]) for row in rows], dtype=np.int64)
    flow = np.array([float(row["flow"]) for row in rows], dtype=np.float64)
    return years, flow
