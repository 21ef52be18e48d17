"""What `assimilate` keeps per cycle: the `History` pytree and the `Save` choice."""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Float


class History(eqx.Module):
    """Per-cycle outputs of `assimilate`, time axis first (T, ...).

    A field is None when `Save` did not ask for it.

    Attributes:
        mean: (T, dx) analysis means.
        cov: (T, dx, dx) analysis covariances.
        forecast_mean: (T, dx) forecast means.
        forecast_cov: (T, dx, dx) forecast covariances.
        state: the whole analysis state of each cycle (for ensembles: the members).
        info: the method's per-cycle `Info` (log-likelihood terms, diagnostics); always kept.
    """

    mean: Float[Array, "T dx"] | None
    cov: Float[Array, "T dx dx"] | None
    forecast_mean: Float[Array, "T dx"] | None
    forecast_cov: Float[Array, "T dx dx"] | None
    state: Any
    info: Any


class Save(eqx.Module):
    """What `assimilate` keeps per cycle, so memory stays bounded on long runs.

    Attributes:
        mean: keep the analysis mean (T, dx).
        cov: keep the analysis covariance (T, dx, dx) (for ensembles: empirical, d x d).
        forecast: also keep the forecast mean (and covariance when `cov`).
        state: keep the whole analysis state (for ensembles: (T, J, dx) members).

    The method's `Info` (log-likelihood terms, status codes) is always kept.

    Example:
        >>> kx.assimilate(model, kx.KalmanFilter(), ys, save=kx.Save(cov=True, forecast=True))
    """

    mean: bool = eqx.field(static=True, default=True)
    cov: bool = eqx.field(static=True, default=False)
    forecast: bool = eqx.field(static=True, default=False)
    state: bool = eqx.field(static=True, default=False)

    def __call__(self, forecast_state, analysis_state, info, cycle=None) -> History:
        """Select what to keep of cycle `cycle` (the index is unused here; savers that
        score against a truth, as in `kalmax.experiments`, use it)."""
        return History(
            mean=analysis_state.mean if self.mean else None,
            cov=analysis_state.cov if self.cov else None,
            forecast_mean=forecast_state.mean if (self.forecast and self.mean) else None,
            forecast_cov=forecast_state.cov if (self.forecast and self.cov) else None,
            state=analysis_state if self.state else None,
            info=info,
        )


__all__ = ["History", "Save"]
