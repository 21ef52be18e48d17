"""Small shared containers for Gaussian beliefs."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float


class Gaussian(eqx.Module):
    """A Gaussian N(mean, cov): the state of covariance-form filters.

    Attributes:
        mean: (d,) mean.
        cov: (d, d) covariance.
    """

    mean: Float[Array, " d"]
    cov: Float[Array, "d d"]


class SqrtGaussian(eqx.Module):
    """A Gaussian N(mean, chol chol^T) kept by its lower-triangular square root.

    The state of square-root filters: propagating `chol` instead of the
    covariance keeps the covariance positive semi-definite in float32.

    Attributes:
        mean: (d,) mean.
        chol: (d, d) lower-triangular factor L with covariance L L^T.
    """

    mean: Float[Array, " d"]
    chol: Float[Array, "d d"]

    @property
    def cov(self) -> Float[Array, "d d"]:
        return self.chol @ self.chol.T


class Ensemble(eqx.Module):
    """An ensemble of J members, member axis first: the state of ensemble filters.

    Attributes:
        members: (J, d) members.

    `mean` and `anomalies` are computed on demand; `cov` forms the d x d
    empirical covariance (ddof = 1) and is meant for small d only.
    """

    members: Float[Array, "J d"]

    @property
    def size(self) -> int:
        return self.members.shape[0]

    @property
    def mean(self) -> Float[Array, " d"]:
        return self.members.mean(axis=0)

    @property
    def anomalies(self) -> Float[Array, "J d"]:
        """Members minus their mean (not scaled)."""
        return self.members - self.mean[None, :]

    @property
    def cov(self) -> Float[Array, "d d"]:
        anomalies = self.anomalies
        return anomalies.T @ anomalies / (self.size - 1)
