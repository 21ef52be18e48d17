"""Darcy flow: the elliptic inverse problem of ensemble Kalman inversion.

The test problem of Iglesias, Law & Stuart (2013), "Ensemble Kalman methods
for inverse problems", Inverse Problems 29, 045001, and of Garbuno-Inigo,
Hoffmann, Li & Stuart (2020), "Interacting Langevin diffusions: gradient
structure and ensemble Kalman sampler", SIAM J. Appl. Dyn. Syst. 19 (Section
5.2, Darcy flow): recover the log-permeability u from noisy pressure data.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _params


def _sorted_wavenumbers(grid_size: int, n_candidates: int) -> np.ndarray:
    """Wavenumbers (k1, k2) >= 0 by increasing |k|^2, ties by k1 then k2.

    lambda_k = (pi^2 |k|^2 + tau^2)^(-alpha) decreases with |k|^2 for every
    alpha > 0 and tau, so the order by decreasing eigenvalue does not depend on
    (alpha, tau) and is fixed once, statically. The candidate box 0..M with
    M = max(grid_size, n_candidates) holds the first n_candidates modes: a k
    outside it has |k|^2 > M^2, and the quarter disk |k| <= M holds more than
    M points.
    """
    m = max(grid_size, n_candidates)
    k1, k2 = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
    k = np.stack([k1.ravel(), k2.ravel()], axis=1)
    order = np.lexsort((k[:, 1], k[:, 0], k[:, 0] ** 2 + k[:, 1] ** 2))
    return k[order]


def max_modes(grid_size: int) -> int:
    """The largest `n_modes` for a `grid_size` grid: the leading modes with both k1, k2 < grid_size.

    The cosines cos(pi k (i + 1/2) / n), k = 0..n-1, are exactly orthogonal on the
    n cell centres (the DCT-II); k >= n aliases a lower mode on the grid.
    """
    n = _params.as_size("grid_size", grid_size, 4)
    k = _sorted_wavenumbers(n, 0)
    return int(np.argmax(k.max(axis=1) >= n))


def garbuno_inigo_source(grid_size: int, dtype=None) -> Float[Array, "n n"]:
    """The piecewise constant source of Garbuno-Inigo et al. (2020), Section 5.2, at the cell centres:

        f(x) = 1000 for x2 in [0, 4/6),  2000 for x2 in [4/6, 5/6),  3000 for x2 in [5/6, 1].

    Args:
        grid_size: n; cell centres ((i + 1/2)/n, (j + 1/2)/n), x1 on axis 0, x2 on axis 1.
        dtype: float dtype (default: JAX's default float).

    Returns:
        (n, n) array f[i, j].
    """
    n = _params.as_size("grid_size", grid_size, 1)
    x2 = (np.arange(n) + 0.5) / n
    profile = np.where(x2 < 4 / 6, 1000.0, np.where(x2 < 5 / 6, 2000.0, 3000.0))
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jnp.asarray(np.broadcast_to(profile[None, :], (n, n)).astype(np.dtype(dtype)))


def _interpolation(points: np.ndarray, n: int):
    """Piecewise bilinear interpolation from the cell centres, with p = 0 on the boundary.

    On each axis the nodes are 0, (1/2)/n, (3/2)/n, ..., (n - 1/2)/n, 1: the
    cell centres and the two boundary points (the nodes 0 and n + 1 of the
    zero-padded (n + 2)-vector). Returns the lower node index (int, (m, 2)) and
    the weight of the upper node ((m, 2)).
    """
    nodes = np.concatenate([[0.0], (np.arange(n) + 0.5) / n, [1.0]])
    lower = np.clip(np.searchsorted(nodes, points, side="right") - 1, 0, n)
    weight = (points - nodes[lower]) / (nodes[lower + 1] - nodes[lower])
    return lower.astype(np.int32), weight


class Darcy(eqx.Module):
    """Steady Darcy flow on the unit square with a Karhunen-Loeve log-permeability:

        -div(exp(u(x)) grad p(x)) = f(x),  x in D = (0, 1)^2,   p = 0 on the boundary of D,
        u(x) = sum_{l=1}^{n_modes} sqrt(lambda_l) theta_l phi_l(x),

    a truncated Karhunen-Loeve expansion of the Gaussian field N(0, (-Lap + tau^2)^(-alpha))
    with Neumann boundary conditions: phi_k(x) = c_k1 c_k2 cos(pi k1 x1) cos(pi k2 x2),
    k = (k1, k2) >= 0, c_0 = 1 and c_k = sqrt(2) otherwise (orthonormal in L^2(D)),
    lambda_k = (pi^2 |k|^2 + tau^2)^(-alpha), the modes ordered by decreasing
    lambda (ties by increasing k1: (0, 1) comes before (1, 0)). With theta ~ N(0, I)
    u is a draw of the truncated prior. alpha = 2, tau = 3 and the source are
    those of Garbuno-Inigo, Hoffmann, Li & Stuart (2020), Section 5.2 (see
    `garbuno_inigo_source`); the problem is that of Iglesias, Law & Stuart (2013).

    The forward map G(theta) = (p(x_1), ..., p(x_m)) is the pressure at the
    observation points.

    Discretisation: cell-centred finite volumes on n x n square cells of side
    h = 1/n (centres ((i + 1/2) h, (j + 1/2) h), x1 on axis 0, x2 on axis 1),
    the five-point scheme

        sum over the 4 faces of T_face (p_cell - p_neighbour) = h^2 f_cell,

    with u and f evaluated at the cell centres, the face transmissibility the
    HARMONIC mean 2 k_a k_b / (k_a + k_b) of the two cells' permeabilities
    k = exp(u) (continuity of the flux across a jump), and on a boundary face
    T = 2 k_cell with p = 0 at the face (a half cell away). For smooth k the
    pressure converges at second order in h.

    Solver: the matrix is symmetric positive definite and block tridiagonal
    (n blocks of n x n, the blocks along x1). It is solved exactly by block
    elimination (the block Thomas algorithm: a `lax.scan` over the n Schur
    complements, each factored by Cholesky and inverted, O(n^4) flops and
    O(n^3) memory, against O(n^6) for a dense solve; the substitutions are then
    matrix-vector products only), wrapped in `lax.custom_linear_solve`:
    derivatives are implicit (dp = A^{-1}(df - dA p), the transpose solve being
    the same solve since A is symmetric), not through the elimination. Being a
    direct solve, its residual is at round-off level (about cond(A) eps,
    cond(A) ~ (max k / min k) n^2), with no iteration count or tolerance to
    tune, and it vmaps to batched small Cholesky factorisations.

    Args:
        grid_size: n (static int >= 4): the grid is n x n cells, n^2 unknowns.
        n_modes: number of Karhunen-Loeve modes, the parameter dimension
            (static int, 1 <= n_modes <= `max_modes(grid_size)`, the leading
            modes that the grid resolves: both wavenumbers below n).
        alpha: regularity alpha > 0 of the prior covariance (float leaf).
        tau: inverse length scale tau > 0 (float leaf).
        source: f at the cell centres: a scalar or an (n, n) array (float
            leaf); default `garbuno_inigo_source(n)`.
        observation_points: (m, 2) coordinates (x1, x2) in the open unit square
            where p is observed, bilinearly interpolated from the cell centres
            and the boundary; default the 7 x 7 regular grid x = (a/8, b/8),
            a, b = 1..7 (m = 49).

    Example:
        >>> darcy = Darcy(grid_size=32, n_modes=16)
        >>> thetas = jax.random.normal(key, (100, 16))      # prior ensemble
        >>> data = jax.vmap(darcy)(thetas)                  # (100, 49)
    """

    alpha: Float[Array, ""]
    tau: Float[Array, ""]
    source: Float[Array, "n n"]
    observation_points: Float[Array, "m 2"]
    obs_weight: Float[Array, "m 2"]
    grid_size: int = eqx.field(static=True)
    n_modes: int = eqx.field(static=True)
    wavenumbers: tuple[tuple[int, int], ...] = eqx.field(static=True)
    # static (hashable) so that the module has float leaves only and plain jax.grad applies
    obs_lower: tuple[tuple[int, int], ...] = eqx.field(static=True)

    def __init__(
        self,
        grid_size: int = 32,
        n_modes: int = 16,
        alpha=2.0,
        tau=3.0,
        source=None,
        observation_points=None,
    ):
        n = _params.as_size("grid_size", grid_size, 4)
        limit = max_modes(n)
        if isinstance(n_modes, (bool, np.bool_)) or not isinstance(n_modes, (int, np.integer)):
            raise TypeError(f"`n_modes` must be a Python int (it fixes array shapes); got {type(n_modes).__name__}")
        if not 1 <= n_modes <= limit:
            raise ValueError(
                f"`n_modes` must be between 1 and {limit} for grid_size={n} (the leading modes with "
                f"both wavenumbers below grid_size, which the grid resolves); got {n_modes}"
            )
        self.grid_size = n
        self.n_modes = int(n_modes)
        k = _sorted_wavenumbers(n, self.n_modes)[: self.n_modes]
        self.wavenumbers = tuple((int(a), int(b)) for a, b in k)
        self.alpha = _params.as_parameter("alpha", alpha)
        _params.check_positive("alpha", self.alpha)
        self.tau = _params.as_parameter("tau", tau)
        _params.check_positive("tau", self.tau)  # tau = 0 would give the constant mode lambda = inf
        if source is None:
            source = garbuno_inigo_source(n)
        self.source = jnp.broadcast_to(_params.as_parameter("source", source, ((), (n, n))), (n, n))
        if observation_points is None:
            axis = np.arange(1, 8) / 8
            a, b = np.meshgrid(axis, axis, indexing="ij")
            points = np.stack([a.ravel(), b.ravel()], axis=1)
        else:
            try:
                points = np.asarray(observation_points, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"`observation_points` must be an (m, 2) array of floats; got {type(observation_points).__name__}"
                ) from err
            if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
                raise ValueError(f"`observation_points` must have shape (m, 2) with m >= 1; got {points.shape}")
            if not np.all((points > 0) & (points < 1)):
                raise ValueError("`observation_points` must lie in the open unit square (0, 1)^2")
        lower, weight = _interpolation(points, n)
        dtype = jnp.result_type(float)
        self.observation_points = jnp.asarray(points.astype(np.dtype(dtype)))
        self.obs_lower = tuple((int(a), int(b)) for a, b in lower)
        self.obs_weight = jnp.asarray(weight.astype(np.dtype(dtype)))

    @property
    def parameter_dim(self) -> int:
        return self.n_modes

    @property
    def data_dim(self) -> int:
        return int(self.observation_points.shape[0])

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x1, x2), each (n, n): x1[i, j] = (i + 1/2)/n, x2[i, j] = (j + 1/2)/n."""
        axis = (np.arange(self.grid_size) + 0.5) / self.grid_size
        x1, x2 = np.meshgrid(axis, axis, indexing="ij")
        return x1, x2

    def eigenvalues(self, dtype=None) -> Float[Array, " n_modes"]:
        """lambda_l = (pi^2 |k_l|^2 + tau^2)^(-alpha), decreasing."""
        dtype = self.alpha.dtype if dtype is None else dtype
        k2 = jnp.asarray(np.array([a * a + b * b for a, b in self.wavenumbers], dtype=np.dtype(dtype)))
        alpha, tau = self.alpha.astype(dtype), self.tau.astype(dtype)
        return (np.pi**2 * k2 + tau**2) ** (-alpha)

    def modes(self, dtype=None) -> Float[Array, "n_modes n n"]:
        """The eigenfunctions phi_l at the cell centres, (n_modes, n, n), orthonormal in L^2(D).

        On the grid they are orthonormal for the midpoint rule h^2 sum_ij to
        round-off (DCT-II orthogonality, as all wavenumbers are below n).
        """
        dtype = jnp.result_type(float) if dtype is None else dtype
        x1, x2 = self.cell_centres()
        phis = []
        for a, b in self.wavenumbers:
            scale = (1.0 if a == 0 else np.sqrt(2.0)) * (1.0 if b == 0 else np.sqrt(2.0))
            phis.append(scale * np.cos(np.pi * a * x1) * np.cos(np.pi * b * x2))
        return jnp.asarray(np.stack(phis).astype(np.dtype(dtype)))

    def _check_theta(self, theta) -> None:
        _params.check_state("theta", theta, (self.n_modes,), f"Darcy(n_modes={self.n_modes})")

    def log_permeability(self, theta: Float[Array, " n_modes"]) -> Float[Array, "n n"]:
        """u = sum_l sqrt(lambda_l) theta_l phi_l at the cell centres, (n, n), in theta's dtype."""
        self._check_theta(theta)
        coefficients = jnp.sqrt(self.eigenvalues(theta.dtype)) * theta
        return jnp.tensordot(coefficients, self.modes(theta.dtype), axes=1)

    def _transmissibilities(self, log_k):
        """Face transmissibilities: x1 faces (n + 1, n), x2 faces (n, n + 1); harmonic means inside."""
        k = jnp.exp(log_k)
        # harmonic mean 2 k_a k_b / (k_a + k_b) = 2 / (1/k_a + 1/k_b), with no overflow of the product
        inner1 = 2.0 / (1.0 / k[1:, :] + 1.0 / k[:-1, :])
        inner2 = 2.0 / (1.0 / k[:, 1:] + 1.0 / k[:, :-1])
        t1 = jnp.concatenate([2.0 * k[:1, :], inner1, 2.0 * k[-1:, :]], axis=0)
        t2 = jnp.concatenate([2.0 * k[:, :1], inner2, 2.0 * k[:, -1:]], axis=1)
        return t1, t2

    def pressure(self, theta: Float[Array, " n_modes"]) -> Float[Array, "n n"]:
        """The pressure p at the cell centres, (n, n), in theta's dtype."""
        log_k = self.log_permeability(theta)
        h = 1.0 / self.grid_size
        rhs = (h * h) * self.source.astype(theta.dtype)
        return solve_darcy(log_k, rhs, self._transmissibilities)

    def observe(self, pressure: Float[Array, "n n"]) -> Float[Array, " m"]:
        """p at the observation points, bilinear between cell centres and the zero boundary."""
        padded = jnp.pad(pressure, 1)
        lower = np.asarray(self.obs_lower, dtype=np.int32).reshape(-1, 2)
        i, j = lower[:, 0], lower[:, 1]
        w = self.obs_weight.astype(pressure.dtype)
        w1, w2 = w[:, 0], w[:, 1]
        return (
            (1 - w1) * (1 - w2) * padded[i, j]
            + w1 * (1 - w2) * padded[i + 1, j]
            + (1 - w1) * w2 * padded[i, j + 1]
            + w1 * w2 * padded[i + 1, j + 1]
        )

    def __call__(self, theta: Float[Array, " n_modes"]) -> Float[Array, " m"]:
        """The forward map G(theta): the pressure at the observation points, (m,)."""
        return self.observe(self.pressure(theta))


def apply_operator(t1, t2, p):
    """The five-point operator (A p)_c = sum_faces T_face (p_c - p_neighbour), p = 0 outside."""
    g1 = t1 * jnp.diff(jnp.pad(p, ((1, 1), (0, 0))), axis=0)  # (n + 1, n) face fluxes
    g2 = t2 * jnp.diff(jnp.pad(p, ((0, 0), (1, 1))), axis=1)
    return -(jnp.diff(g1, axis=0) + jnp.diff(g2, axis=1))


def _factor(t1, t2):
    """Block Cholesky (block Thomas) elimination of the block-tridiagonal operator.

    Block i is the row p[i, :]; the diagonal block D_i is tridiagonal (x2 faces)
    plus the x1-face terms on its diagonal, the off-diagonal block between rows
    i - 1 and i is -diag(c_i), c_i = t1[i]. The Schur complements

        S_0 = D_0,   S_i = D_i - diag(c_i) S_{i-1}^{-1} diag(c_i),

    are SPD (A is); each is factored by Cholesky and inverted explicitly, so that
    the solve itself is matrix-vector products only (batched matrix products
    under vmap, where the small batched LAPACK calls are the cost). Returns
    S_i^{-1}, (n, n, n), and the couplings c_i, (n,), with c_0 = 0.
    """
    n = t2.shape[0]
    sub = t2[:, 1:-1]  # (n, n - 1) couplings along x2 inside each row
    diag = t1[:-1] + t1[1:] + t2[:, :-1] + t2[:, 1:]  # (n, n)
    blocks = jax.vmap(lambda d, s: jnp.diag(d) - jnp.diag(s, 1) - jnp.diag(s, -1))(diag, sub)
    c_in = jnp.concatenate([jnp.zeros_like(t1[:1]), t1[1:-1]], axis=0)  # c_i couples rows i - 1 and i
    identity = jnp.eye(n, dtype=t1.dtype)

    def body(correction, inputs):
        block, c_next = inputs
        chol = jnp.linalg.cholesky(block - correction)
        inverse = jax.scipy.linalg.cho_solve((chol, True), identity)
        # diag(c_{i+1}) S_i^{-1} diag(c_{i+1}): what S_{i+1} subtracts
        return c_next[:, None] * inverse * c_next[None, :], inverse

    c_next = jnp.concatenate([c_in[1:], jnp.zeros_like(t1[:1])], axis=0)
    _, inverses = jax.lax.scan(body, jnp.zeros((n, n), dtype=t1.dtype), (blocks, c_next))
    return inverses, c_in


def _solve_factored(inverses, c_in, b):
    """Forward g_i = b_i + c_i y_{i-1}, y_i = S_i^{-1} g_i; back x_i = y_i + S_i^{-1} (c_{i+1} x_{i+1})."""

    def forward(y_prev, inputs):
        inverse, c, b_i = inputs
        y = inverse @ (b_i + c * y_prev)
        return y, y

    _, ys = jax.lax.scan(forward, jnp.zeros_like(b[0]), (inverses, c_in, b))
    c_next = jnp.concatenate([c_in[1:], jnp.zeros_like(c_in[:1])], axis=0)

    def backward(x_next, inputs):
        y, inverse, c = inputs
        x = y + inverse @ (c * x_next)
        return x, x

    _, xs = jax.lax.scan(backward, jnp.zeros_like(b[0]), (ys, inverses, c_next), reverse=True)
    return xs


def solve_darcy(log_k, rhs, transmissibilities):
    """Solve A(k) p = rhs for p, differentiable in log_k and rhs (implicit derivatives)."""
    t1, t2 = transmissibilities(log_k)
    # the factorisation is closed over by `solve` only: custom_linear_solve differentiates
    # through `matvec`'s dependence on (t1, t2) and never through the elimination
    factors = _factor(jax.lax.stop_gradient(t1), jax.lax.stop_gradient(t2))
    return jax.lax.custom_linear_solve(
        lambda p: apply_operator(t1, t2, p),
        rhs,
        solve=lambda _, b: _solve_factored(*factors, b),
        symmetric=True,
    )
