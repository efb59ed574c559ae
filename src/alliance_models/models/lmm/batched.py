"""Batched REML / ML for Gaussian random-intercept models (plain numpy core).

Many replicates of one design are fitted at once: no Python loop over replicates or
clusters in the hot path. Two random-effects structures qualify:

* one grouping factor: ``y = X beta + a_j + e`` (e.g. ``(1 | therapist)``);
* two nested factors: ``y = X beta + a_j + b_jk + e`` (``(1 | therapist/patient)``).

Notation and method
-------------------
``V = sigma^2 H`` with ``H = I + g_a Z_a Z_a' + g_b Z_b Z_b'`` and variance ratios
``g = tau^2 / sigma^2``. The optimiser works on the relative standard deviations
``s = sqrt(g)``, which are lme4's ``theta`` for random intercepts; the criterion is an
even function of each ``s``, so an unconstrained Newton iteration in ``s`` reaches a
variance estimate of zero (the boundary) with a zero derivative there.

Level-1 clusters are the finest groups (patients; the only factor in the one-factor
case); level-2 clusters are the outer groups (therapists). For a level-1 cluster of
size ``m`` the inner block is ``A = I + g_b 11'`` with ``A^{-1} = I - c 11'``,
``c = g_b / (1 + m g_b)`` (Woodbury); the outer block ``H_j = A_j + g_a 11'`` is
inverted by Woodbury once more. Every quadratic form ``u' H^{-1} v`` is then a
function of per-cluster sums only. With ``Xa = [X, y]`` (``q = p + 1`` columns) the
data enter through

* ``Xa' Xa`` (one ``q x q`` matrix per replicate);
* ``Q_t``: the sum of ``s_k s_k'`` over level-1 clusters of size ``m_t``, where ``s_k``
  is the column-sum vector of ``Xa`` in cluster ``k`` (sizes are few, so this is tiny);
* ``S_tj``: per level-2 cluster ``j``, the sum of ``s_k`` over its level-1 clusters of
  size ``m_t``, with their counts ``N_jt``.

Outer clusters with the same size profile (column of ``N_jt``) share every scalar of the
outer Woodbury step, so when the profiles are few (``G T^2 < J``: balanced designs, or
no dropout) the sums over ``j`` are taken once, in ``sufficient_stats``, as
``P_g[t, u] = sum_{j in g} S_tj S_uj'`` per profile group ``g`` (``_profile_groups``).

At given ``s`` the matrix ``Xa' H^{-1} Xa`` costs ``O(T q^2 + J T q + J q^2)`` per
replicate (``T`` distinct cluster sizes, ``J`` outer clusters; ``O((T + G T^2) q^2)``
with profile groups); its Cholesky factor gives
``beta``, ``R = r' H^{-1} r`` (the last pivot squared) and ``log|X' H^{-1} X|``.
``log|H| = sum_k log(1 + m_k g_b) + sum_j log(1 + g_a W_j)`` with
``W_j = sum_k m_k / (1 + m_k g_b)``. The profiled criterion (``-2 log L`` up to a
constant) is ``nu log R + log|H| [+ log|X'H^{-1}X|]`` with ``nu = n - p`` (REML) or
``n`` (ML).

Optimisation: a method-of-moments (ANOVA) start from the OLS residuals (the best
interior grid point where the criterion fails there), then quasi-Newton steps on the
profiled criterion, all replicates at once (:func:`_newton`): the gradient is analytic
(contracted from the sufficient statistics), the Hessian starts as a forward difference
of that gradient (eigenvalues made positive) and is then updated by BFGS (refreshed by
a new difference when the curvature condition fails), steps are capped and backtracked
(Armijo). The solutions then go through the boundary/optimum search shared with the
dense engine (:mod:`.search`, through :class:`BatchedCriterion`).

Satterthwaite df (:mod:`.satterthwaite`): the Hessian of the unprofiled deviance
``D = nu log(2 pi sigma^2) + log|H| [+ log|X'H^{-1}X|] + R / sigma^2`` in
``phi = (s, sigma)`` is assembled from derivatives of ``R`` and of the log-determinants
in ``s`` (central differences of their analytic first derivatives) and the closed-form
``sigma`` parts, and ``g = d Var(L beta) / d phi`` by the same differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import DataValidationError, format_rows
from .satterthwaite import DF_STEP, central_jacobian, degrees_of_freedom
from .search import GRAD_TOL, GRID, HELD_TOL, ROUNDING, SINGULAR_TOL, search

if TYPE_CHECKING:
    from .batched_slopes import SlopeStats

__all__ = [
    "BatchedCriterion",
    "ClusterLayout",
    "SuffStats",
    "batched_fit",
    "criterion",
    "gradient",
    "make_layout",
    "sufficient_stats",
    "sufficient_stats_from_sums",
    "tri_inv",
]

#: A replicate whose scaled X'X has eigenvalue ratio below this is rank deficient.
RANK_TOL = 1e-10
#: Iterations of the quasi-Newton optimiser.
_MAX_ITER = 60
#: Forward-difference step (times ``max(1, |s|)``) for the Newton Hessians.
_NEWTON_STEP = 1e-5


# ----------------------------------------------------------------------------------
# cluster layout and sufficient statistics
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterLayout:
    """Row order and cluster boundaries shared by every replicate.

    Attributes
    ----------
    order : ndarray of int, shape (n,)
        Permutation that sorts the rows by (outer, inner) cluster.
    inner_starts : ndarray of int, shape (K,)
        First sorted row of each level-1 cluster.
    outer_starts : ndarray of int, shape (J,) or None
        First level-1 cluster of each level-2 cluster (None with one factor).
    n_obs : int
        Rows (before any mask).
    """

    order: np.ndarray
    inner_starts: np.ndarray
    outer_starts: np.ndarray | None
    n_obs: int

    @property
    def n_levels(self) -> int:
        """Number of random-intercept factors (1 or 2)."""
        return 1 if self.outer_starts is None else 2

    @property
    def is_sorted(self) -> bool:
        """Whether the rows already come in cluster order (no reordering copy needed)."""
        return bool(np.array_equal(self.order, np.arange(self.n_obs)))

    @property
    def n_inner(self) -> int:
        """Number of level-1 clusters."""
        return int(self.inner_starts.shape[0])


def _codes(x: object, name: str, n: int | None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise DataValidationError(
            f"{name} must be a 1-D array of cluster codes, got shape {a.shape}"
        )
    if n is not None and a.shape[0] != n:
        raise DataValidationError(
            f"{name} has {a.shape[0]} entries but the data have {n} rows; give one code per row"
        )
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            verb = "has" if bad.size == 1 else "have"
            vals = ", ".join(repr(float(v)) for v in a[bad[:5]])
            raise DataValidationError(
                f"{name} must hold integer cluster codes; {format_rows(bad.tolist())} {verb} "
                f"{vals}; allowed: integers (e.g. from pandas.factorize)"
            )
    elif a.dtype.kind not in "iub":
        raise DataValidationError(
            f"{name} must hold integer cluster codes, got dtype {a.dtype}; "
            "use pandas.factorize to turn labels into codes"
        )
    return a.astype(np.int64)


def make_layout(outer: np.ndarray, inner: np.ndarray | None = None) -> ClusterLayout:
    """Sort rows into clusters and check that ``inner`` is nested in ``outer``.

    Parameters
    ----------
    outer : ndarray of int, shape (n,)
        Codes of the outer (or only) grouping factor.
    inner : ndarray of int, shape (n,), optional
        Codes of the nested factor, unique across ``outer`` (a patient code identifies
        its therapist).

    Returns
    -------
    ClusterLayout

    Raises
    ------
    DataValidationError
        Non-integer codes, mismatched lengths, or an inner code under two outer codes.

    Examples
    --------
    >>> lay = make_layout(np.array([1, 0, 1, 0]), np.array([2, 0, 3, 1]))
    >>> lay.n_levels, lay.n_inner
    (2, 4)
    """
    o = _codes(outer, "outer", None)
    n = o.shape[0]
    if inner is None:
        order = np.argsort(o, kind="stable")
        so = o[order]
        starts = np.flatnonzero(np.r_[True, so[1:] != so[:-1]])
        return ClusterLayout(order, starts, None, n)
    i = _codes(inner, "inner", n)
    order = np.lexsort((i, o))
    so, si = o[order], i[order]
    new_inner = np.r_[True, (si[1:] != si[:-1]) | (so[1:] != so[:-1])]
    starts = np.flatnonzero(new_inner)
    # nesting: an inner code must not appear in two level-1 clusters
    inner_of_cluster = si[starts]
    u, cnt = np.unique(inner_of_cluster, return_counts=True)
    if np.any(cnt > 1):
        bad_code = u[cnt > 1][0]
        rows = np.flatnonzero(i == bad_code)
        outs = np.unique(o[rows])
        raise DataValidationError(
            f"inner code {bad_code} appears under outer codes {outs.tolist()} "
            f"({format_rows(list(rows))}); the inner factor must be nested in the outer "
            "one with codes unique across outer clusters (e.g. code therapist:patient)"
        )
    outer_of_cluster = so[starts]
    outer_starts = np.flatnonzero(np.r_[True, outer_of_cluster[1:] != outer_of_cluster[:-1]])
    return ClusterLayout(order, starts, outer_starts, n)


@dataclass(frozen=True)
class SuffStats:
    """Per-replicate sufficient statistics (see the module docstring).

    ``q = p + 1``: the last column of the augmented design is the response (after an OLS
    residualisation, see ``beta0``); columns of ``X`` are scaled by ``scale``.
    """

    xtx: np.ndarray  # (B, q, q)
    sizes: np.ndarray  # (T,) distinct level-1 cluster sizes (float)
    Q: np.ndarray  # (B, T, q, q)
    count: np.ndarray  # (B, T) number of level-1 clusters of each size
    S2: np.ndarray | None  # (B, T, J, q)
    N2: np.ndarray | None  # (B, T, J)
    n: np.ndarray  # (B,) observations
    scale: np.ndarray  # (B, p) column scale factors: X_used = X * scale
    beta0: np.ndarray  # (B, p) OLS coefficients (scaled X) removed from y
    p: int
    full_rank: np.ndarray  # (B,) bool: the observed rows of X have full column rank
    # outer clusters grouped by size profile (see ``_profile_groups``); None: not used
    P2: np.ndarray | None = None  # (B, G, T, T, q, q) sum over a group of S_tj S_uj'
    N2g: np.ndarray | None = None  # (B, T, G) the group's profile (a column of N2)
    Ng: np.ndarray | None = None  # (B, G) outer clusters in the group (0: padding)
    # the stacked matrices of ``_evaluate_basis`` (``_basis``); None: formed when needed
    basis: np.ndarray | None = None  # (B, nb, q * q)

    @property
    def n_rep(self) -> int:
        """Replicates."""
        return int(self.xtx.shape[0])

    @property
    def n_levels(self) -> int:
        """Random-intercept factors (1 or 2)."""
        return 1 if self.S2 is None else 2

    def take(self, idx: np.ndarray) -> SuffStats:
        """Return the statistics of the replicates ``idx``."""
        return SuffStats(
            self.xtx[idx], self.sizes, self.Q[idx], self.count[idx],
            None if self.S2 is None else self.S2[idx],
            None if self.N2 is None else self.N2[idx],
            self.n[idx], self.scale[idx], self.beta0[idx], self.p, self.full_rank[idx],
            None if self.P2 is None else self.P2[idx],
            None if self.N2g is None else self.N2g[idx],
            None if self.Ng is None else self.Ng[idx],
            None if self.basis is None else self.basis[idx],
        )


def _solve_sym(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched solve of ``A x = b``; singular systems get a least-squares solution."""
    try:
        return np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(A) @ b[..., None])[..., 0]


def _segment_sum(a: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    if a.shape[axis] == 0:  # pragma: no cover - guarded by callers
        return a
    return np.add.reduceat(a, starts, axis=axis)


def _equal_segments(starts: np.ndarray, n: int) -> int:
    """Return the common length of the segments starting at ``starts`` in ``n`` rows, or 0."""
    if starts.size == 0 or n % starts.size:
        return 0
    m = n // starts.size
    return m if np.array_equal(starts, np.arange(0, n, m)) else 0


def _row_segment_sum(a: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """Sum ``a`` (b, n[, c]) over the row segments (axis 1) that start at ``starts``.

    ``m`` is ``_equal_segments(starts, n)``. For 3-D ``a``, segments of one length ``m``
    are summed as ``m`` strided slices of the ``(b, K, m, c)`` view, added in row order
    (elementwise, so a replicate's sums do not depend on the rest of its batch; a BLAS
    product would be faster but its rounding depends on the operand's shape), about
    1.5x as fast as ``np.add.reduceat`` over a non-contiguous axis. 2-D arrays (reduced
    along their contiguous axis) keep ``np.add.reduceat``.
    """
    if not m or a.ndim == 2:
        return _segment_sum(a, starts, axis=1)
    v = a.reshape((a.shape[0], starts.size, m) + a.shape[2:])
    out = v[:, :, 0].copy()
    for i in range(1, m):
        out += v[:, :, i]
    return out


def _profile_groups(N2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Group the outer clusters of each replicate by their size profile.

    Two outer clusters with the same profile (the same number of level-1 clusters of
    each size, i.e. equal columns of ``N2``) have the same ``W_j``, ``d_j`` and ``e1_j``
    in ``_evaluate``, so every sum over ``j`` there collapses to a sum over profile
    groups of ``sum_{j in group} S_tj S_uj'``. That pays when the groups are few: the
    grouped form costs ``O(G T^2 q^2)`` per replicate and evaluation against
    ``O(J T q + J q^2)`` for the per-cluster form.

    Parameters
    ----------
    N2 : ndarray, shape (B, T, J)
        Level-1 cluster counts per size and outer cluster.

    Returns
    -------
    tuple or None
        ``(member, N2g, Ng)``: ``member`` (B, G, J) bool, outer cluster ``j`` belongs to
        group ``g``; ``N2g`` (B, T, G) the group's profile; ``Ng`` (B, G) its number of
        outer clusters. Replicates with fewer than ``G`` groups are padded with empty
        groups (``Ng = 0``, no members). None when ``G T^2 >= J`` (the per-cluster form
        is not dearer).
    """
    B, T, J = N2.shape
    if B == 0 or J == 0 or T * T >= J:  # even one group would not pay
        return None
    if np.all(N2 == N2[:, :, :1]):  # one profile in every replicate (balanced designs)
        return np.ones((B, 1, J), dtype=bool), N2[:, :, :1].copy(), np.full((B, 1), float(J))
    # one exact scalar key per profile (counts are small integers: digits in base c+1)
    base = float(N2.max()) + 1.0
    if base**T >= 2.0**53:  # pragma: no cover - keys would not be exact
        return None
    key = (np.swapaxes(N2, 1, 2) @ base ** np.arange(T)).astype(np.int64)  # (B, J)
    order = np.argsort(key, axis=1, kind="stable")
    ks = np.take_along_axis(key, order, axis=1)
    new = np.ones((B, J), dtype=np.int64)
    new[:, 1:] = ks[:, 1:] != ks[:, :-1]
    if int(new.sum(axis=1).max()) * T * T >= J:  # too many groups somewhere
        return None
    # group id: the rank of the replicate's profile among its distinct profiles
    gid = np.empty((B, J), dtype=np.int64)
    np.put_along_axis(gid, order, np.cumsum(new, axis=1) - 1, axis=1)
    G = int(gid.max()) + 1
    member = gid[:, None, :] == np.arange(G)[None, :, None]  # (B, G, J)
    Ng = member.sum(axis=2).astype(float)
    # the members' profiles are equal: their mean is the profile (exact for counts)
    N2g = (N2 @ np.swapaxes(member, 1, 2)) / np.where(Ng > 0, Ng, 1.0)[:, None, :]
    return member, N2g, Ng


def _rank_and_ols(Gs: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-rank flags and the solutions of ``Gs b = rhs`` for scaled Gram matrices.

    A matrix is full rank when its eigenvalue ratio exceeds ``RANK_TOL``. For a
    symmetric positive definite ``Gs``, ``lambda_max <= tr(Gs)`` and
    ``lambda_min >= 1 / tr(Gs^{-1})``, so ``1 / tr(Gs^{-1}) > RANK_TOL tr(Gs)`` proves
    full rank from the inverse (which also gives ``b``); only the matrices this bound
    cannot clear get the eigenvalues (and the solver) of the general path.
    """
    B = Gs.shape[0]
    full = np.zeros(B, dtype=bool)
    b = np.empty(rhs.shape)
    try:
        Gi = np.linalg.inv(Gs)
    except np.linalg.LinAlgError:
        todo = np.arange(B)
    else:
        tr = np.trace(Gs, axis1=1, axis2=2)
        tri = np.trace(Gi, axis1=1, axis2=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = (tri > 0) & (1.0 / tri > RANK_TOL * tr)
        full[ok] = True
        b[ok] = (Gi[ok] @ rhs[ok, :, None])[..., 0]
        todo = np.flatnonzero(~ok)
    if todo.size:
        ev = np.linalg.eigvalsh(Gs[todo])
        full[todo] = ev[:, 0] > RANK_TOL * ev[:, -1]
        b[todo] = _solve_sym(Gs[todo], rhs[todo])
    return full, b


def sufficient_stats(
    X: np.ndarray,
    Y: np.ndarray,
    layout: ClusterLayout,
    mask: np.ndarray | None = None,
    *,
    row_block: int = 64,
) -> SuffStats:
    """Reduce a batch of replicates to per-cluster sufficient statistics.

    Parameters
    ----------
    X : ndarray, shape (n, p) or (B, n, p)
        Fixed-effects design, shared or per replicate.
    Y : ndarray, shape (B, n)
        Responses.
    layout : ClusterLayout
        From :func:`make_layout`.
    mask : ndarray of bool, shape (B, n), optional
        ``False`` marks a missing observation.
    row_block : int, default 64
        Replicates whose ``(n, p + 1)`` working copy is held at once.

    Returns
    -------
    SuffStats
    """
    B, n = Y.shape
    p = X.shape[-1]
    q = p + 1
    order = layout.order
    srt = layout.is_sorted
    Ys = Y if srt else Y[:, order]
    Ms = None if mask is None else (mask if srt else mask[:, order]).astype(float)
    K = layout.n_inner
    # level-1 cluster sizes and their distinct values
    m_in = _equal_segments(layout.inner_starts, n)  # one level-1 cluster size, or 0
    if Ms is None:
        nk1 = np.diff(np.r_[layout.inner_starts, n]).astype(float)
        sizes, tidx1 = np.unique(nk1, return_inverse=True)
        tidx = np.broadcast_to(tidx1.reshape(1, K), (B, K))
    else:
        nk = _row_segment_sum(Ms, layout.inner_starts, m_in)
        sizes, tidx = np.unique(nk, return_inverse=True)
        tidx = tidx.reshape(B, K)
    xtx = np.zeros((B, q, q))
    sk = np.empty((B, K, q))
    scale = np.empty((B, p))
    beta0 = np.empty((B, p))
    full = np.empty(B, dtype=bool)
    nobs = np.full(B, float(n)) if Ms is None else Ms.sum(axis=1)
    shared = X.ndim == 2
    if shared:
        Xsh = X if srt else X[order]
        if Ms is None:  # one design for all: its cross-products and sums once
            G_sh = Xsh.T @ Xsh
            sx_sh = _segment_sum(Xsh, layout.inner_starts, axis=0)

    for lo in range(0, B, row_block):
        hi = min(B, lo + row_block)
        b = hi - lo
        mb = None if Ms is None else Ms[lo:hi]
        # masked entries are set to zero (not multiplied: a masked NaN must not spread)
        yb = Ys[lo:hi] if mb is None else np.where(mb > 0, Ys[lo:hi], 0.0)
        if shared and mb is None:
            G = np.broadcast_to(G_sh, (b, p, p))
            xty = yb @ Xsh
        else:
            xb = Xsh[None] if shared else (X[lo:hi] if srt else X[lo:hi][:, order])
            xm = xb if mb is None else np.where(mb[..., None] > 0, xb, 0.0)  # masked rows: 0
            G = np.swapaxes(xm, 1, 2) @ xm
            xty = (np.swapaxes(xm, 1, 2) @ yb[..., None])[..., 0]
        # column scaling (RMS over observed rows) for conditioning
        rms = np.sqrt(np.diagonal(G, axis1=1, axis2=2) / nobs[lo:hi, None])
        sc = 1.0 / np.where(rms > 0, rms, 1.0)
        Gs = G * sc[:, :, None] * sc[:, None, :]
        full[lo:hi], b0s = _rank_and_ols(Gs, xty * sc)
        # OLS residualisation of y (keeps the cross-products well conditioned); the
        # residual is orthogonal to the columns of X, so X'r = 0 exactly
        b0 = b0s * sc
        if shared and mb is None:
            r = yb - b0 @ Xsh.T
            sx = sx_sh[None] * sc[:, None, :]
        else:
            r = yb - (xm @ b0[..., None])[..., 0]
            sx = _row_segment_sum(xm, layout.inner_starts, m_in) * sc[:, None, :]
        if mb is not None:
            r = r * mb
        sk[lo:hi, :, :p] = sx
        sk[lo:hi, :, p] = _row_segment_sum(r, layout.inner_starts, m_in)
        xtx[lo:hi, :p, :p] = Gs
        xtx[lo:hi, p, p] = np.linalg.vecdot(r, r)
        scale[lo:hi] = sc
        beta0[lo:hi] = b0s
    return _cluster_part(xtx, sk, sizes, tidx, layout, nobs, scale, beta0, full)


def sufficient_stats_from_sums(
    G: np.ndarray,
    xty: np.ndarray,
    yty: np.ndarray,
    sx: np.ndarray,
    sy: np.ndarray,
    nk: np.ndarray,
    layout: ClusterLayout,
) -> SuffStats:
    """:func:`sufficient_stats` from cross-products and level-1 cluster sums.

    For callers that can form the sums without the ``(B, n, p)`` design (a simulator
    whose columns are products of cluster-level and row-level variables). Observed rows
    only; the level-1 clusters in the order of ``layout``.

    Parameters
    ----------
    G : ndarray, shape (B, p, p)
        ``X'X`` of each replicate.
    xty : ndarray, shape (B, p)
        ``X'y``.
    yty : ndarray, shape (B,)
        ``y'y``.
    sx : ndarray, shape (B, K, p)
        Column sums of ``X`` in each level-1 cluster (any memory order; a transposed view
        of a ``(B, p, K)`` array is read fastest).
    sy : ndarray, shape (B, K)
        Sums of ``y`` in each level-1 cluster.
    nk : ndarray, shape (B, K)
        Observed rows in each level-1 cluster (at least one).
    layout : ClusterLayout
        From :func:`make_layout` (only its cluster structure is used).

    Returns
    -------
    SuffStats
        As :func:`sufficient_stats` gives for the same data, up to rounding: the OLS
        residual enters through ``r'r = y'y - 2 b0'X'y + b0'X'X b0`` and its cluster sums
        ``sy - sx b0``.
    """
    B, K, p = sx.shape
    sizes, tidx = _size_classes(nk)
    nobs = nk.sum(axis=1).astype(float)
    rms = np.sqrt(np.diagonal(G, axis1=1, axis2=2) / nobs[:, None])
    sc = 1.0 / np.where(rms > 0, rms, 1.0)
    Gs = G * sc[:, :, None] * sc[:, None, :]
    full, b0s = _rank_and_ols(Gs, xty * sc)
    b0 = b0s * sc
    xtx = np.zeros((B, p + 1, p + 1))
    xtx[:, :p, :p] = Gs
    Gb = (G @ b0[..., None])[..., 0]
    xtx[:, p, p] = yty - 2.0 * np.linalg.vecdot(b0, xty) + np.linalg.vecdot(b0, Gb)
    sxT = np.swapaxes(sx, 1, 2)  # (B, p, K)

    def columns(lo: int, hi: int) -> np.ndarray:
        """``[sx * scale, sy - sx b0]`` of replicates ``lo:hi`` as (b, q, K) columns."""
        out = np.empty((hi - lo, p + 1, K))
        np.multiply(sxT[lo:hi], sc[lo:hi, :, None], out=out[:, :p])
        np.subtract(sy[lo:hi], (b0[lo:hi, None, :] @ sxT[lo:hi])[:, 0], out=out[:, p])
        return out

    return _cluster_part(xtx, columns, sizes, tidx, layout, nobs, sc, b0s, full)


def _size_classes(nk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct level-1 cluster sizes (sorted) and each cluster's index into them (B, K).

    As ``np.unique(nk, return_inverse=True)``; row counts (small whole numbers) by a
    table instead of a sort.
    """
    B, K = nk.shape
    if nk.size and np.all(nk == nk.flat[0]):  # one size (no dropout, equal caseloads)
        return nk.reshape(-1)[:1].copy(), np.zeros((B, K), np.int64)
    top = float(nk.max()) if nk.size else 0.0
    ints = nk.astype(np.int64)
    if nk.size == 0 or top > 4 * nk.size + 64 or not np.array_equal(ints, nk) or ints.min() < 0:
        sizes, tidx = np.unique(nk, return_inverse=True)
        return sizes, tidx.reshape(B, K)
    present = np.bincount(ints.reshape(-1), minlength=int(top) + 1) > 0
    where = np.cumsum(present) - 1
    return np.flatnonzero(present).astype(nk.dtype), where[ints]


#: Replicates whose level-1 cluster columns (B, q, K) :func:`_cluster_part` holds at once.
_CLUSTER_CHUNK = 64


def _cluster_part(xtx: np.ndarray, columns: np.ndarray | Callable[[int, int], np.ndarray],
                  sizes: np.ndarray, tidx: np.ndarray, layout: ClusterLayout,
                  nobs: np.ndarray, scale: np.ndarray, beta0: np.ndarray,
                  full: np.ndarray) -> SuffStats:
    """Return the statistics given the level-1 cluster sums ``s_k`` of ``[X, r]``.

    ``columns`` is the (B, K, q) array of the sums, or a function giving those of the
    replicates ``lo:hi`` as (b, q, K) columns (then formed :data:`_CLUSTER_CHUNK`
    replicates at a time, so that they stay in cache). ``Q``, ``S2``,
    the size profiles and their groups; ``tidx`` (B, K) is each cluster's index into
    ``sizes``. Every sum is a product per replicate (stacked matrix products: a
    replicate's statistics do not depend on the others in the batch).
    """
    if callable(columns):
        cols_of, chunk = columns, _CLUSTER_CHUNK
    else:
        sk, chunk = columns, max(1, columns.shape[0])

        def cols_of(lo: int, hi: int) -> np.ndarray:
            return np.swapaxes(sk[lo:hi], 1, 2)

    B, K = tidx.shape
    q = xtx.shape[-1]
    T = sizes.shape[0]
    onehot = None if T == 1 else tidx[:, :, None] == np.arange(T)  # (B, K, T)
    count = np.full((B, 1), float(K)) if onehot is None else onehot.sum(axis=1).astype(float)
    two = layout.outer_starts is not None
    J = 0 if layout.outer_starts is None else layout.outer_starts.shape[0]
    S2 = np.empty((B, T, J, q)) if two else None
    N2 = None
    m_out = 0 if layout.outer_starts is None else _equal_segments(layout.outer_starts, K)
    if two:
        # E[k, j] = 1 when level-1 cluster k is in outer cluster j
        outer_of = np.cumsum(np.isin(np.arange(K), layout.outer_starts)) - 1
        E = (outer_of[:, None] == np.arange(J)).astype(float)
        if onehot is None:
            N2 = np.broadcast_to(E.sum(axis=0), (B, 1, J)).copy()
        else:
            N2 = np.swapaxes(onehot.astype(float), 1, 2) @ E  # (B, T, J)
    groups = _profile_groups(N2) if two else None  # type: ignore[arg-type]
    Q = np.empty((B, T, q, q))
    for lo in range(0, B, chunk):
        hi = min(B, lo + chunk)
        c = cols_of(lo, hi)  # (b, q, K)
        cT = np.swapaxes(c, 1, 2)
        for t in range(T):
            # one size: every cluster counts
            w = c if onehot is None else c * onehot[lo:hi, None, :, t]
            Q[lo:hi, t] = w @ cT
            if two:  # sums over each outer cluster's (contiguous) level-1 clusters
                if m_out:  # m_out clusters each: strided slices added in order
                    v = w.reshape(w.shape[:2] + (J, m_out))
                    s2 = v[..., 0].copy()
                    for i in range(1, m_out):
                        s2 += v[..., i]
                else:
                    s2 = np.add.reduceat(w, layout.outer_starts, axis=-1)
                S2[lo:hi, t] = np.swapaxes(s2, 1, 2)  # type: ignore[index]
    P2 = None
    if groups is not None:
        member = groups[0]
        P2 = np.empty((B, member.shape[1], T, T, q, q))
        Sj = np.swapaxes(S2, 1, 2).reshape(B, J, T * q)  # type: ignore[arg-type]
        SjT = np.swapaxes(Sj, 1, 2)
        for g in range(member.shape[1]):
            # P2[b, g, t, u] = sum over the group's outer clusters j of S_tj S_uj'
            # (one group: every outer cluster is a member)
            Pg = (SjT if member.shape[1] == 1 else SjT * member[:, g, None, :]) @ Sj
            P2[:, g] = np.swapaxes(Pg.reshape(B, T, q, T, q), 2, 3)
    grp = (None, None) if groups is None else (groups[1], groups[2])
    # evaluated from the stacked matrices: with one factor or in profile groups
    basis = _basis(xtx, Q, P2) if P2 is not None or not two else None
    return SuffStats(xtx, sizes.astype(float), Q, count, S2, N2, nobs, scale, beta0,
                     q - 1, full, P2, *grp, basis)


# ----------------------------------------------------------------------------------
# the criterion at given relative SDs
# ----------------------------------------------------------------------------------
def _chol(A: np.ndarray) -> np.ndarray:
    """Batched Cholesky; matrices that are not (numerically) positive definite give NaN.

    The fast path factors the whole batch at once; only when LAPACK rejects some matrix
    are the matrices screened (eigenvalues relative to the largest) and, if needed,
    factored one by one (a rank-deficient replicate, which is then reported as not
    converged).
    """
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        pass
    A = A.copy()
    ok = np.all(np.isfinite(A), axis=(1, 2))
    w = np.zeros((A.shape[0], A.shape[1]))
    w[ok] = np.linalg.eigvalsh(A[ok])
    bad = ~ok | ~(w[:, 0] > 1e-12 * np.abs(w[:, -1]))
    A[bad] = np.eye(A.shape[1])
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        L = np.empty_like(A)
        for i in range(A.shape[0]):
            try:
                L[i] = np.linalg.cholesky(A[i])
            except np.linalg.LinAlgError:
                bad[i] = True
    L[bad] = np.nan
    return L


def _tsum(w: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``sum_t w[:, t] * A[:, t]`` for A of shape (B, T, ...) (a loop over the few sizes)."""
    shape = (-1,) + (1,) * (A.ndim - 2)
    out = w[:, 0].reshape(shape) * A[:, 0]
    for t in range(1, A.shape[1]):
        out = out + w[:, t].reshape(shape) * A[:, t]
    return out


def _wsum(w: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``sum_i w[:, :, i, None] * A[:, None, i]``: w (B, r, n), A (B, n, ...) -> (B, r, ...).

    A loop over the few ``n`` (broadcast products beat a batched matmul with inner
    dimension ``n`` for such small operands).
    """
    Af = A.reshape(A.shape[:2] + (-1,))
    out = w[:, :, 0, None] * Af[:, None, 0]
    for i in range(1, A.shape[1]):
        out += w[:, :, i, None] * Af[:, None, i]
    return out.reshape(w.shape[:2] + A.shape[2:])


def _basis(xtx: np.ndarray, Q: np.ndarray, P2: np.ndarray | None) -> np.ndarray:
    """Stack the matrices that ``Xa' H^{-1} Xa`` and its derivatives combine (B, nb, q * q).

    ``xtx``, the ``Q_t`` and (profile groups) the ``P2[g, t, u]``, in that order: with one
    factor, or two whose outer clusters fall into profile groups, every matrix of
    :func:`_evaluate` is a weighted sum of these (see there).
    """
    B, q = xtx.shape[0], xtx.shape[-1]
    parts = [xtx.reshape(B, 1, q * q), Q.reshape(B, -1, q * q)]
    if P2 is not None:
        parts.append(P2.reshape(B, -1, q * q))
    return np.concatenate(parts, axis=1)


def _evaluate_basis(st: SuffStats, s: np.ndarray, reml: bool, grad: bool
                    ) -> tuple[np.ndarray, ...]:
    """:func:`_evaluate` with one factor, or two in profile groups (few large products).

    ``M = Xa' H^{-1} Xa`` is ``xtx - sum_t c_t Q_t - sum_g d_g sum_{t,u} a_t a_u
    P2[g, t, u]`` and ``Phi_a``, ``Phi_b`` are weighted sums of the same matrices (see
    the grouped branch of :func:`_evaluate`), so each is one product of a weight vector
    with the stacked :func:`_basis`, and the contractions ``u' Phi_i u`` and
    ``<Phi_i, K>`` are those of every basis matrix with ``u u'`` and ``K`` (one product)
    weighted the same way (another). ``u`` and ``K`` come from the inverse of the
    Cholesky factor: its last row is ``(-beta' / sqrt(R), 1 / sqrt(R))``.
    """
    basis = st.basis if st.basis is not None else _basis(st.xtx, st.Q, st.P2)
    Bn, nb = basis.shape[:2]
    p = st.p
    q = p + 1
    T = st.sizes.shape[0]
    m = st.sizes[None, :]
    gb = (s[:, -1] ** 2)[:, None]  # level-1 ratio (the only one with one factor)
    mg = m * gb
    a = 1.0 / (1.0 + mg)  # (B, T)
    logdet = (st.count * np.log1p(mg)).sum(axis=1)
    w = np.empty((Bn, 1, nb))  # the weights of M
    w[:, 0, 0] = 1.0
    np.multiply(gb, a, out=w[:, 0, 1:T + 1])
    np.negative(w[:, 0, 1:T + 1], out=w[:, 0, 1:T + 1])
    grouped = st.P2 is not None
    if grouped:
        assert st.N2g is not None and st.Ng is not None
        ga = s[:, :1] ** 2  # (B, 1)
        am = a * m
        W = (am[:, None, :] @ st.N2g)[:, 0, :]  # (B, G)
        omw = 1.0 + ga * W
        d = ga / omw
        aa = (a[:, :, None] * a[:, None, :]).reshape(Bn, 1, T * T)  # a_t a_u
        np.multiply(d[:, :, None], -aa, out=w[:, 0, T + 1:].reshape(Bn, -1, T * T))
        logdet = logdet + (st.Ng * np.log1p(ga * W)).sum(axis=1)
    M = (w @ basis).reshape(Bn, q, q)
    L = _chol(M)
    dg = np.diagonal(L, axis1=1, axis2=2)
    R = dg[:, p] ** 2
    # the pivots are positive, or NaN where the factorisation failed (_chol): their
    # logarithms raise no floating-point warning (log R = 2 log L[p, p] cannot underflow)
    lg = np.log(dg)
    h = logdet + (2.0 * lg[:, :p].sum(axis=1) if reml else 0.0)
    nu = st.n - p if reml else st.n
    f = (2.0 * nu) * lg[:, p] + h
    f = np.where(np.isfinite(f), f, np.inf)
    if not grad:
        return f, R, h, L
    bad = ~np.all(np.isfinite(dg), axis=1)
    Lf = np.where(bad[:, None, None], np.eye(q), L) if bad.any() else L
    Li = tri_inv(Lf)  # (B, q, q); its leading p x p block is Lxx^{-1}
    u = Li[:, p, :] * Lf[:, p, p, None]  # (-beta, 1)
    u[:, p] = 1.0
    k = 2 if grouped else 1
    V = np.zeros((Bn, q, q, 2))  # u u' and K = M^{-1}[:p, :p] padded
    np.multiply(u[:, :, None], u[:, None, :], out=V[..., 0])
    if reml:
        Lx = Li[:, :p, :p]
        np.matmul(np.swapaxes(Lx, 1, 2), Lx, out=V[:, :p, :p, 1])
    X = basis[:, 1:] @ V.reshape(Bn, q * q, 2)  # (B, nb - 1, 2): u'Bu, <B, K>
    wg = np.zeros((Bn, k, nb - 1))  # weights of Phi_a (grouped) and Phi_b
    wg[:, k - 1, :T] = a**2
    if grouped:
        inv1 = 1.0 / omw
        e1 = (am[:, None, :] ** 2 @ st.N2g)[:, 0, :]  # (B, G)
        wa = wg[:, 0, T:].reshape(Bn, -1, T * T)
        np.multiply((inv1**2)[:, :, None], aa, out=wa)
        wb = wg[:, 1, T:].reshape(Bn, -1, T * T)
        amu = (am[:, :, None] + am[:, None, :]).reshape(Bn, 1, T * T)
        np.multiply(aa, (d**2 * e1)[:, :, None] - d[:, :, None] * amu, out=wb)
        tr = np.stack([(st.Ng * W * inv1).sum(axis=1),
                       (st.count * am).sum(axis=1) - (st.Ng * d * e1).sum(axis=1)], axis=1)
    else:
        tr = (st.count * a * m).sum(axis=1)[:, None]
    Y = wg @ X  # (B, k, 2)
    # chain rule to the relative SD: dg/ds = 2 s
    dR = -2.0 * s * Y[:, :, 0]
    dh = 2.0 * s * (tr - Y[:, :, 1])
    dR[bad | ~np.isfinite(R)] = np.nan
    dh[bad | ~np.isfinite(R)] = np.nan
    return f, R, h, L, dR, dh


def _evaluate(
    st: SuffStats | SlopeStats, s: np.ndarray, reml: bool, grad: bool
) -> tuple[np.ndarray, ...]:
    """Criterion pieces at relative SDs ``s`` (B, k), optionally with analytic gradients.

    Returns ``(f, R, h, L)`` and, with ``grad``, also ``dR`` and ``dh`` (B, k): the
    derivatives of ``R`` and ``h`` in ``s``. ``L`` is the Cholesky factor of
    ``Xa' H^{-1} Xa``.

    The derivatives use ``d(Xa'H^{-1}Xa)/d g_i = -Phi_i`` with ``Phi_i = sum_g v_g v_g'``
    over the clusters ``g`` of component ``i`` and ``v_g = 1_g' H^{-1} Xa``, and
    ``d log|H| / d g_i = sum_g 1_g' H^{-1} 1_g``. With ``u = (-beta, 1)``:
    ``dR/dg_i = -u' Phi_i u`` and ``d log|M| / d g_i = -<Phi_i[:p, :p], M^{-1}>``; both
    are contracted without forming ``Phi_i``.

    Other statistics (the random-slope model's :class:`.batched_slopes.SlopeStats`)
    evaluate themselves.
    """
    if not isinstance(st, SuffStats):
        return st.evaluate(s, reml, grad)
    if st.P2 is not None or st.S2 is None:
        return _evaluate_basis(st, s, reml, grad)
    m = st.sizes[None, :]
    gb = (s[:, -1] ** 2)[:, None]  # level-1 ratio (the only one with one factor)
    a = 1.0 / (1.0 + m * gb)  # (B, T)
    c = gb * a
    logdet = (st.count * np.log1p(m * gb)).sum(axis=1)
    S2, N2 = st.S2, st.N2
    two = S2 is not None and N2 is not None
    grouped = st.P2 is not None and st.N2g is not None and st.Ng is not None
    if grouped:
        assert st.P2 is not None and st.N2g is not None and st.Ng is not None
        # Profile groups (see ``_profile_groups``). W_j, d_j and e1_j are shared by the
        # outer clusters of a group g, and T2_j = sum_t a_t S_tj, so
        #   sum_j d_j T2_j T2_j' = sum_g d_g sum_{t,u} a_t a_u P2[g, t, u];
        # likewise Phi_a = sum_j w1_j T2_j T2_j' (w1 = (1 + g_a W)^-2) and the outer part
        # of Phi_b, sum_j e2_j T2_j T2_j' - d_j (U_j T2_j' + T2_j U_j') with
        # U_j = sum_t m_t a_t^2 S_tj, whose (t, u) weight a_t a_u (e2_g - d_g (m_t a_t +
        # m_u a_u)) is symmetric. Every matrix is a weighted sum of the Q_t and P2[g, t, u].
        ga = s[:, 0] ** 2
        Bn, G = st.Ng.shape
        am = a * m
        W = (am[:, None, :] @ st.N2g)[:, 0, :]  # (B, G)
        omw = 1.0 + ga[:, None] * W
        d = ga[:, None] / omw
        aa = (a[:, :, None] * a[:, None, :])[:, None]  # (B, 1, T, T)
        wq = [c]
        wp = [d[:, :, None, None] * aa]
        if grad:
            e1 = (am[:, None, :] ** 2 @ st.N2g)[:, 0, :]  # (B, G)
            inv1 = 1.0 / omw
            wq.append(a**2)
            wp.append(inv1[:, :, None, None] ** 2 * aa)
            wp.append(aa * ((d**2 * e1)[:, :, None, None]
                            - d[:, :, None, None] * (am[:, None, :, None] + am[:, None, None, :])))
        CQ = _wsum(np.stack(wq, axis=1), st.Q)  # (B, 1 or 2, q, q)
        CP = _wsum(np.stack(wp, axis=1).reshape(Bn, len(wp), -1),
                   st.P2.reshape((Bn, -1) + st.Q.shape[2:]))  # (B, 1 or 3, q, q)
        M = st.xtx - (CQ[:, 0] + CP[:, 0])
        logdet = logdet + (st.Ng * np.log1p(ga[:, None] * W)).sum(axis=1)
    else:
        M = st.xtx - _tsum(c, st.Q)
        if two:  # per outer cluster
            assert S2 is not None and N2 is not None
            ga = s[:, 0] ** 2
            T2 = _tsum(a, S2)  # (B, J, q): sum_k a_k s_k per outer cluster
            W = _tsum(a * m, N2)  # (B, J)
            d = ga[:, None] / (1.0 + ga[:, None] * W)
            M = M - np.swapaxes(T2 * d[:, :, None], 1, 2) @ T2
            logdet = logdet + np.log1p(ga[:, None] * W).sum(axis=1)
    L = _chol(M)
    p = st.p
    dg = np.diagonal(L, axis1=1, axis2=2)
    R = dg[:, p] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        h = logdet + (2.0 * np.log(dg[:, :p]).sum(axis=1) if reml else 0.0)
        nu = st.n - p if reml else st.n
        f = nu * np.log(R) + h
    f = np.where(np.isfinite(f), f, np.inf)
    if not grad:
        return f, R, h, L
    Lf = _finite_chol(L)
    # u = (-beta, 1) in the scaled/residualised coordinates; K = M^{-1} padded to q x q.
    # With Li = Lxx^{-1}: beta = Li' l (l the last row of L) and M^{-1}[:p, :p] = Li' Li.
    Li = tri_inv(Lf[:, :p, :p])
    LiT = np.swapaxes(Li, 1, 2)
    beta = (LiT @ Lf[:, p, :p, None])[..., 0]
    u = np.concatenate([-beta, np.ones((beta.shape[0], 1))], axis=1)
    Bn, q = u.shape
    if reml:
        K = np.zeros_like(M)
        K[:, :p, :p] = LiT @ Li

    if grouped:  # Phi_a and Phi_b as formed above
        assert st.Ng is not None
        Phi = np.stack([CP[:, 1], CQ[:, 1] + CP[:, 2]], axis=1)  # (B, 2, q, q)
        uPu = np.linalg.vecdot((Phi @ u[:, None, :, None])[..., 0], u[:, None, :])
        if reml:
            kPk = np.linalg.vecdot(Phi.reshape(Bn, 2, q * q), K.reshape(Bn, 1, q * q))
        else:
            kPk = np.zeros((Bn, 2))
        tr_a = (st.Ng * W * inv1).sum(axis=1)
        tr_b = (st.count * a * m).sum(axis=1) - (st.Ng * d * e1).sum(axis=1)
        # chain rule to the relative SD: dg/ds = 2 s
        dR = -2.0 * s * uPu
        dh = 2.0 * s * (np.stack([tr_a, tr_b], axis=1) - kPk)
        bad = ~np.isfinite(R)
        dR[bad] = np.nan
        dh[bad] = np.nan
        return f, R, h, L, dR, dh
    Q = st.Q  # (B, T, q, q)
    qQu = np.linalg.vecdot((Q @ u[:, None, :, None])[..., 0], u[:, None, :])
    uu_b = (a**2 * qQu).sum(axis=1)
    if reml:
        qQk = np.linalg.vecdot(Q.reshape(Bn, -1, q * q), K.reshape(Bn, 1, q * q))
        kk_b = (a**2 * qQk).sum(axis=1)
    tr_b = (st.count * a * m).sum(axis=1)
    out_u, out_k, out_t = [], [], []
    if two:
        assert S2 is not None and N2 is not None
        U = _tsum(m * a**2, S2)  # (B, J, q)
        uc = u[:, :, None]
        Tu = (T2 @ uc)[..., 0]  # (B, J)
        Uu = (U @ uc)[..., 0]
        e1 = _tsum((m * a) ** 2, N2)  # (B, J)
        e2 = d**2 * e1
        uu_b = uu_b - 2.0 * (d * Uu * Tu).sum(axis=1) + (e2 * Tu**2).sum(axis=1)
        tr_b = tr_b - (d * e1).sum(axis=1)
        inv1 = 1.0 / (1.0 + ga[:, None] * W)
        w1 = inv1**2
        out_u.append((w1 * Tu**2).sum(axis=1))
        out_t.append((W * inv1).sum(axis=1))
        if reml:
            KT = T2 @ K  # (B, J, q)
            TKT = np.linalg.vecdot(KT, T2)
            UKT = np.linalg.vecdot(KT, U)
            kk_b = kk_b - 2.0 * (d * UKT).sum(axis=1) + (e2 * TKT).sum(axis=1)
            out_k.append((w1 * TKT).sum(axis=1))
        else:
            out_k.append(np.zeros(Bn))
    if not reml:
        kk_b = np.zeros(Bn)
    out_u.append(uu_b)
    out_k.append(kk_b)
    out_t.append(tr_b)
    dR = np.empty((s.shape[0], len(out_u)))
    dh = np.empty_like(dR)
    for i, (uu, kk, tr) in enumerate(zip(out_u, out_k, out_t, strict=True)):
        # chain rule to the relative SD: dg/ds = 2 s
        dR[:, i] = -2.0 * s[:, i] * uu
        dh[:, i] = 2.0 * s[:, i] * (tr - kk)
    bad = ~np.isfinite(R)
    dR[bad] = np.nan
    dh[bad] = np.nan
    return f, R, h, L, dR, dh


def criterion(
    st: SuffStats | SlopeStats, s: np.ndarray, *, reml: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiled criterion pieces at relative SDs ``s``.

    Parameters
    ----------
    st : SuffStats
    s : ndarray, shape (B, k)
        Relative standard deviations ``tau / sigma`` (outer first with two factors).
    reml : bool, default True

    Returns
    -------
    f : ndarray (B,)
        ``nu log R + log|H| [+ log|X'H^{-1}X|]`` (``-2 log L`` minus constants).
    R : ndarray (B,)
        ``r' H^{-1} r`` at the GLS estimate.
    h : ndarray (B,)
        ``log|H| [+ log|X'H^{-1}X|]``.
    """
    f, R, h, _ = _evaluate(st, s, reml, grad=False)
    return f, R, h


def gradient(st: SuffStats | SlopeStats, s: np.ndarray, *, reml: bool = True) -> np.ndarray:
    """Analytic gradient (B, k) of the profiled criterion ``f`` in ``s``."""
    _, R, _, _, dR, dh = _evaluate(st, s, reml, grad=True)
    nu = st.n - st.p if reml else st.n
    return nu[:, None] * dR / R[:, None] + dh


def _solve_all(
    st: SuffStats | SlopeStats, L: np.ndarray, Lrows: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Beta (scaled X), ``diag(L M^{-1} L')`` per contrast row, and ``diag(M^{-1})``.

    ``L`` is the Cholesky factor of ``Xa' H^{-1} Xa`` at the estimate (from ``_evaluate``).
    """
    p = st.p
    Lf = _finite_chol(L)
    Lxx = Lf[:, :p, :p]
    lxy = Lf[:, p, :p]
    beta = np.linalg.solve(np.swapaxes(Lxx, 1, 2), lxy[..., None])[..., 0]
    cvals = _contrast_quad(Lxx, Lrows, st.scale)
    Li = np.linalg.solve(Lxx, np.broadcast_to(np.eye(p), Lxx.shape))
    mdiag = (Li**2).sum(axis=1)
    return beta, cvals, mdiag


def tri_inv(L: np.ndarray) -> np.ndarray:
    """Inverses of a batch of lower-triangular matrices ``L`` (B, p, p) with nonzero diagonals.

    Forward substitution row by row, vectorised over the batch (for the small ``p`` of
    fixed effects about 3x as fast as ``np.linalg.inv``, which factors each matrix anew).

    Examples
    --------
    >>> L = np.array([[[2.0, 0.0], [1.0, 4.0]]])
    >>> tri_inv(L)
    array([[[ 0.5  ,  0.   ],
            [-0.125,  0.25 ]]])
    """
    p = L.shape[-1]
    X = np.zeros(L.shape)
    d = 1.0 / np.diagonal(L, axis1=1, axis2=2)
    X[:, 0, 0] = d[:, 0]
    for i in range(1, p):
        X[:, i, :i] = -np.einsum("bk,bkj->bj", L[:, i, :i], X[:, :i, :i]) * d[:, i, None]
        X[:, i, i] = d[:, i]
    return X


def _contrast_quad(Lxx: np.ndarray, Lrows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``diag(L M^{-1} L')`` (B, r) from the Cholesky factor ``Lxx`` of ``M``, row by row.

    Each contrast row is solved on its own, with the arrays a single row has, so the
    value of a row does not depend on which other rows are asked for (a power run of
    several tests gives each test the bits of its own run).
    """
    out = []
    for j in range(Lrows.shape[0]):
        Lt = Lrows[None, j:j + 1, :] * scale[:, None, :]  # contrast on the scaled coefficients
        Zc = np.linalg.solve(Lxx, np.swapaxes(Lt, 1, 2))  # (B, p, 1)
        out.append((Zc**2).sum(axis=1))
    return out[0] if len(out) == 1 else np.concatenate(out, axis=1)


def _finite_chol(L: np.ndarray) -> np.ndarray:
    """Replace failed (NaN) Cholesky factors by the identity (results are masked later)."""
    bad = ~np.all(np.isfinite(L), axis=(1, 2))
    return np.where(bad[:, None, None], np.eye(L.shape[1]), L) if bad.any() else L


# ----------------------------------------------------------------------------------
# optimisation
# ----------------------------------------------------------------------------------
def _moment_start(st: SuffStats) -> np.ndarray:
    """ANOVA (method-of-moments) estimates of the relative SDs, as Newton's start (B, k).

    Built from the OLS residuals already held in the sufficient statistics (the last
    column): the within-, between-inner- and (with two factors) between-outer-cluster
    sums of squares give ``sigma^2``, ``tau_b^2`` and ``tau_a^2`` by the usual
    unbalanced-ANOVA expected mean squares (ignoring the fixed effects' share of the
    degrees of freedom: this is a start, not an estimate). Ratios are clipped to
    ``[0.01, 100]`` (relative SDs in ``[0.1, 10]``; zero is a stationary point in ``s``,
    so the start stays inside); undefined ratios start at ``0.25`` (``s = 0.5``).
    """
    p = st.p
    m = st.sizes[None, :]
    n = st.n
    cnt = st.count
    K = cnt.sum(axis=1)
    sse = st.xtx[:, p, p]
    # clusters emptied by the mask (size 0) contribute nothing
    ssi = (st.Q[:, :, p, p] / np.where(m > 0, m, 1.0)).sum(axis=1)
    sm2 = (cnt * m**2).sum(axis=1)  # sum of squared inner-cluster sizes
    with np.errstate(divide="ignore", invalid="ignore"):
        s2w = (sse - ssi) / (n - K)
        if st.S2 is None or st.N2 is None:
            c1 = (n - sm2 / n) / (K - 1.0)
            tb = (ssi / (K - 1.0) - s2w) / c1
            g = (tb / s2w)[:, None]
        else:
            sj = _tsum(np.ones_like(m), st.S2[..., p])  # (B, J) outer residual sums
            nj = _tsum(np.broadcast_to(m, cnt.shape), st.N2)  # (B, J) outer sizes
            m2j = _tsum(np.broadcast_to(m**2, cnt.shape), st.N2)  # sum of m_k^2 per outer
            has = nj > 0
            nj_safe = np.where(has, nj, 1.0)
            J = has.sum(axis=1).astype(float)
            sso = np.where(has, sj**2 / nj_safe, 0.0).sum(axis=1)
            a2 = np.where(has, m2j / nj_safe, 0.0).sum(axis=1)  # sum_j sum_k m_k^2 / n_j
            c1 = (n - a2) / (K - J)
            c2 = (a2 - sm2 / n) / (J - 1.0)
            c3 = (n - (nj**2).sum(axis=1) / n) / (J - 1.0)
            tb = ((ssi - sso) / (K - J) - s2w) / c1
            ta = (sso / (J - 1.0) - s2w - c2 * np.maximum(tb, 0.0)) / c3
            g = np.column_stack([ta / s2w, tb / s2w])
    g = np.where(np.isfinite(g), np.clip(g, 0.01, 100.0), 0.25)
    return np.sqrt(g)


def _start(st: SuffStats | SlopeStats, reml: bool) -> np.ndarray:
    """Moment-estimate start per replicate (B, k).

    Where the criterion fails at the moment estimate, the best point of the interior of
    the search grid (:data:`.search.GRID` without zero) is the start instead.
    """
    if not isinstance(st, SuffStats):  # the random-slope model
        return st.start(reml)
    k = st.n_levels
    s0 = _moment_start(st)
    bad = np.flatnonzero(~np.isfinite(criterion(st, s0, reml=reml)[0]))
    if bad.size:
        g1 = np.array([v for v in GRID if v > 0.0])
        pts = np.stack(np.meshgrid(*[g1] * k, indexing="ij"), -1).reshape(-1, k)
        sub = st.take(np.repeat(bad, pts.shape[0]))
        fg = criterion(sub, np.tile(pts, (bad.size, 1)), reml=reml)[0]
        s0[bad] = pts[fg.reshape(bad.size, pts.shape[0]).argmin(axis=1)]
    return s0


def _hold_mask(fixed: tuple[int, ...] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return ``fixed`` as a (B, k) mask (one tuple of components for every row, or per row)."""
    if isinstance(fixed, np.ndarray):
        return fixed
    hold = np.zeros(shape, dtype=bool)
    hold[:, list(fixed)] = True
    return hold


def _fd_hessian(
    sub: SuffStats | SlopeStats,
    sa: np.ndarray,
    g: np.ndarray,
    reml: bool,
    fixed: tuple[int, ...] | np.ndarray = (),
) -> np.ndarray:
    """Forward differences of the analytic gradient (k extra evaluations), symmetrised.

    Components in ``fixed`` (a tuple for every row, or a (B, k) mask) are not
    differenced: their rows and columns are the identity.
    """
    B, k = sa.shape
    hold = _hold_mask(fixed, (B, k))
    step = _NEWTON_STEP * np.maximum(1.0, np.abs(sa))
    cols = []
    for i in range(k):
        col = np.zeros((B, k))
        col[:, i] = 1.0
        free = np.flatnonzero(~hold[:, i])
        if free.size:
            x = sa[free].copy()
            x[:, i] += step[free, i]
            sub_i = sub if free.size == B else sub.take(free)
            gi = (gradient(sub_i, x, reml=reml) - g[free]) / step[free, i, None]
            gi[hold[free]] = 0.0
            col[free] = gi
        cols.append(col)
    H = np.stack(cols, axis=2)
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    return np.where(np.isfinite(H), H, 0.0)


def _make_pd(H: np.ndarray) -> np.ndarray:
    """Replace the eigenvalues of symmetric (B, k, k) matrices by their absolute values."""
    w, U = np.linalg.eigh(H)
    floor = 1e-8 * np.maximum(1.0, np.abs(w).max(axis=1, keepdims=True))
    w = np.maximum(np.abs(w), floor)
    return (U * w[:, None, :]) @ np.swapaxes(U, 1, 2)


def _newton(
    st: SuffStats | SlopeStats, s: np.ndarray, reml: bool,
    fixed: tuple[int, ...] | np.ndarray = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Quasi-Newton minimisation of the profiled criterion; returns (s, converged).

    The gradient is analytic. The Hessian starts as a forward difference of the
    gradient (made positive definite) and is then kept up to date by BFGS updates; a
    replicate whose update fails the curvature condition gets a fresh difference
    Hessian. Steps are capped and backtracked (Armijo). Converged means
    ``max |df/ds| <= GRAD_TOL``, or a negligible step / a line search that cannot
    improve while the gradient is below ``1e-5`` (the numerical floor).

    The components in ``fixed`` (a boundary face; one tuple for every replicate, or a
    (B, k) mask, a face per replicate) stay at their start values: their gradient
    entries and steps are zero, their Hessian rows and columns the identity.

    For the random-slope model, whose gradient costs a small multiple of its criterion,
    the first trial point of each line search (the full step, which is usually taken) is
    evaluated with its gradient, which the next iteration then reuses; the iterates are
    those of evaluating the gradient afresh at every accepted point. (For the
    random-intercept statistics the gradient costs more than the criterion calls it
    saves.)
    """
    B, k = s.shape
    hold = _hold_mask(fixed, (B, k))
    held = bool(hold.any())
    s = s.copy()
    conv = np.zeros(B, dtype=bool)
    Hq = np.zeros((B, k, k))
    need_fd = np.ones(B, dtype=bool)
    s_prev = np.zeros_like(s)
    g_prev = np.zeros_like(s)
    active = np.arange(B)
    # criterion and raw gradient at s, where known from the last line search
    f_at = np.empty(B)
    g_at = np.empty((B, k))
    known = np.zeros(B, dtype=bool)
    fuse = not isinstance(st, SuffStats)

    def fg(sub_: SuffStats | SlopeStats, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fx, Rx, _, _, dRx, dhx = _evaluate(sub_, x, reml, grad=True)
        nux = sub_.n - sub_.p if reml else sub_.n
        return fx, nux[:, None] * dRx / Rx[:, None] + dhx

    for _ in range(_MAX_ITER):
        if active.size == 0:
            break
        sub = st.take(active) if active.size < B else st
        sa = s[active]
        new = np.flatnonzero(~known[active])
        if new.size:
            f_new, g_new = fg(sub.take(new) if new.size < active.size else sub, sa[new])
            f_at[active[new]], g_at[active[new]] = f_new, g_new
        f0, g = f_at[active], g_at[active].copy()
        if held:
            g[hold[active]] = 0.0
        gmax = np.abs(g).max(axis=1)
        done = gmax <= GRAD_TOL
        # BFGS update from the previous step
        upd = ~need_fd[active]
        if upd.any():
            yv = g - g_prev[active]
            sv = sa - s_prev[active]
            Hs_old = Hq[active]
            hs = (Hs_old @ sv[..., None])[..., 0]
            ys = (yv * sv).sum(axis=1)
            shs = (sv * hs).sum(axis=1)
            good = upd & (ys > 1e-10 * np.sqrt((yv**2).sum(1) * (sv**2).sum(1))) & (shs > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                Hn = (Hs_old + yv[:, :, None] * yv[:, None, :] / ys[:, None, None]
                      - hs[:, :, None] * hs[:, None, :] / shs[:, None, None])
            Hq[active[good]] = Hn[good]
            need_fd[active[upd & ~good]] = True
        fd = need_fd[active] & ~done
        if fd.any():
            idx = np.flatnonzero(fd)
            sub_fd = sub.take(idx) if idx.size < active.size else sub
            Hq[active[idx]] = _make_pd(_fd_hessian(sub_fd, sa[idx], g[idx], reml,
                                                   hold[active[idx]]))
            need_fd[active[idx]] = False
        Hs = Hq[active]
        gf = np.where(np.isfinite(g), g, 0.0)
        with np.errstate(invalid="ignore"):
            d = -np.linalg.solve(np.where(np.isfinite(Hs), Hs, 0.0)
                                 + np.where(done, 1.0, 0.0)[:, None, None] * np.eye(k),
                                 gf[..., None])[..., 0]
        d = np.where(np.isfinite(d), d, 0.0)
        if held:  # exactly: eigh in _make_pd may mix the blocks at rounding level
            d[hold[active]] = 0.0
        # cap the step length (relative SDs live on an O(1) scale)
        cap = 2.0 * np.maximum(1.0, np.abs(sa).max(axis=1))
        nrm = np.sqrt((d**2).sum(axis=1))
        d *= np.minimum(1.0, cap / np.maximum(nrm, 1e-300))[:, None]
        slope = (g * d).sum(axis=1)
        # an uphill direction (stale BFGS matrix): refresh the Hessian and retry
        uphill = ~done & ~(slope < 0)
        need_fd[active[uphill]] = True
        # a negligible step means convergence (the gradient is at its noise floor)
        done |= np.abs(d).max(axis=1) <= 1e-10 * np.maximum(1.0, np.abs(sa).max(axis=1))
        t = np.ones(active.size)
        accepted = done | ~np.isfinite(f0) | uphill
        snew = sa.copy()
        # predicted decrease below the rounding level of f (ROUNDING, as in the search):
        # the line search cannot tell the points apart, so take the full step (with a
        # stricter level, 1e-13, the noise of f, 2e-13 relative with OpenBLAS's Haswell
        # kernel, let a run creep by lucky points until _MAX_ITER, unconverged)
        tiny = ~accepted & (-slope < ROUNDING * np.maximum(1.0, np.abs(f0)))
        snew[tiny] = sa[tiny] + d[tiny]
        accepted |= tiny
        known[active[~accepted | tiny]] = False  # rows that move
        for _ls in range(40):
            todo = np.flatnonzero(~accepted)
            if todo.size == 0:
                break
            x = sa[todo] + t[todo, None] * d[todo]
            sub2 = sub.take(todo) if todo.size < active.size else sub
            if fuse and _ls == 0:  # the full step, with its gradient (next iteration's)
                fx, gx = fg(sub2, x)
            else:
                fx = criterion(sub2, x, reml=reml)[0]
            ok = fx <= f0[todo] + 1e-4 * t[todo] * slope[todo]
            snew[todo[ok]] = x[ok]
            accepted[todo[ok]] = True
            if fuse and _ls == 0:
                f_at[active[todo[ok]]], g_at[active[todo[ok]]] = fx[ok], gx[ok]
                known[active[todo[ok]]] = True
            t[todo[~ok]] *= 0.5
        stuck = ~accepted
        done |= stuck & (gmax < 1e-5)
        # a failed line search with a stale BFGS matrix gets one more try with a fresh one
        retry = stuck & ~done & ~need_fd[active]
        need_fd[active[retry]] = True
        s_prev[active] = sa
        g_prev[active] = g
        s[active] = snew
        conv[active[done]] = True
        keep = ~done & (~stuck | retry) & np.isfinite(f0)
        active = active[keep]
    return s, conv


class BatchedCriterion:
    """The batched engine as :func:`.search.search` sees it: many replicates at once.

    Its local optimiser is :func:`_newton` (components held at zero stay there).

    Parameters
    ----------
    st : SuffStats
    reml : bool

    Examples
    --------
    >>> from alliance_models.models.lmm.search import search
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(10), 4)
    >>> Y = (2.0 * rng.normal(size=10)[g] + rng.normal(size=40))[None, :]
    >>> crit = BatchedCriterion(sufficient_stats(np.ones((40, 1)), Y, make_layout(g)), True)
    >>> s, _ = search(crit, np.array([[0.0]]), np.array([True]))  # zero: no optimum
    >>> bool(s[0, 0] > 1.0)
    True
    """

    def __init__(self, st: SuffStats | SlopeStats, reml: bool) -> None:
        self.st = st
        self.reml = reml
        self.n_rep = st.n_rep
        if isinstance(st, SuffStats):
            self.k = st.n_levels
            self.bounded = np.ones(self.k, dtype=bool)
            self.scalar = np.ones(self.k, dtype=bool)
        else:  # the random-slope model: its own entries (and sign symmetry)
            self.k, self.bounded, self.scalar = st.k, st.bounded, st.scalar

    def _sub(self, rep: np.ndarray) -> SuffStats | SlopeStats:
        whole = rep.size == self.n_rep and np.array_equal(rep, np.arange(self.n_rep))
        return self.st if whole else self.st.take(rep)

    def values(self, rep: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Profiled criterion of replicate ``rep[i]`` at ``s[i]``."""
        return criterion(self._sub(rep), s, reml=self.reml)[0]

    def polish(
        self, rep: np.ndarray, s0: np.ndarray, held: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Quasi-Newton from ``s0[i]`` for ``rep[i]``; ``held`` stays at zero."""
        sub = self._sub(rep)
        s, conv = _newton(sub, s0, self.reml, fixed=held)
        return (s if isinstance(sub, SuffStats) else sub.canonical(s)), conv

    def polish_faces(
        self, jobs: list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`polish` for several ``(rep, s0, held)`` at once, in one quasi-Newton run.

        Each row keeps its own held components, so the results are those of one
        :meth:`polish` per job, with fewer (larger) evaluations.
        """
        sizes = [j[0].size for j in jobs]
        if sum(sizes) == 0:
            return [(j[1].copy(), np.ones(0, dtype=bool)) for j in jobs]
        rep = np.concatenate([j[0] for j in jobs])
        s0 = np.concatenate([j[1] for j in jobs])
        hold = np.zeros(s0.shape, dtype=bool)
        lo = 0
        for (_, _, held), m in zip(jobs, sizes, strict=True):
            hold[lo:lo + m, list(held)] = True
            lo += m
        sub = self._sub(rep)
        s, conv = _newton(sub, s0, self.reml, fixed=hold)
        if not isinstance(sub, SuffStats):
            s = sub.canonical(s)
        cuts = np.cumsum(sizes)[:-1]
        return list(zip(np.split(s, cuts), np.split(conv, cuts), strict=True))


def _finish_on_face(
    st: SlopeStats, s: np.ndarray, conv: np.ndarray, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Polish unconverged solutions on their face (random-slope model).

    A run that approaches a zero entry slowly (the criterion is flat there) stops short;
    the search snaps it onto the face but keeps the run's flag. Such solutions are
    polished with their zero entries held, and the result is taken when the criterion
    does not rise (beyond rounding).
    """
    slow = np.flatnonzero(~conv)
    if slow.size == 0:
        return s, conv
    s, conv = s.copy(), conv.copy()
    zero = (s[slow] == 0.0) & st.bounded[None, :]
    for pattern in np.unique(zero, axis=0):
        idx = slow[(zero == pattern).all(axis=1)]
        held = tuple(int(i) for i in np.flatnonzero(pattern))
        sub = st.take(idx)
        cand, ok = _newton(sub, s[idx], reml, fixed=held)
        cand = st.canonical(cand)
        f0 = criterion(sub, s[idx], reml=reml)[0]
        fc = criterion(sub, cand, reml=reml)[0]
        take = ok & (fc <= f0 + ROUNDING * np.maximum(1.0, np.abs(f0)))
        s[idx[take]] = cand[take]
        conv[idx[take]] = True
    return s, conv


def batched_fit(
    st: SuffStats | SlopeStats, Lrows: np.ndarray, *, reml: bool = True
) -> dict[str, np.ndarray]:
    """Fit every replicate in ``st`` and compute the Satterthwaite df for ``Lrows``.

    The local optimum from the moment start (:func:`_newton`) goes through the search of
    :func:`.search.search`; the df come from :func:`.satterthwaite.degrees_of_freedom`.

    Parameters
    ----------
    st : SuffStats
        From :func:`sufficient_stats`.
    Lrows : ndarray, shape (r, p)
        Contrast rows (on the original coefficient scale) whose df are wanted.
    reml : bool, default True
        REML (lme4's default) or ML.

    Returns
    -------
    dict
        ``beta`` (B, p), ``se`` (B, p), ``var_l`` (B, r) ``Var(L beta)``, ``df`` (B, r),
        ``sigma2`` (B,), ``tau2`` (B, k), ``theta`` (B, k) relative SDs, ``loglik`` (B,),
        ``converged`` (B,) and ``singular`` (B,).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(12), 6)
    >>> X = np.column_stack([np.ones(72), rng.normal(size=72)])
    >>> Y = (X @ [1.0, 0.5] + rng.normal(size=12)[g] + rng.normal(size=72))[None, :]
    >>> st = sufficient_stats(X, Y, make_layout(g))
    >>> out = batched_fit(st, np.eye(2)[[1]])
    >>> bool(out["converged"][0]), out["beta"].shape
    (True, (1, 2))
    """
    B = st.n_rep
    slope_st = None if isinstance(st, SuffStats) else st
    k = st.n_levels if isinstance(st, SuffStats) else st.k
    p = st.p
    s, conv = _newton(st, _start(st, reml), reml)
    if slope_st is not None:
        s = slope_st.canonical(s)
    s, conv = search(BatchedCriterion(st, reml), s, conv)
    if slope_st is not None:
        s = slope_st.canonical(s)
        s, conv = _finish_on_face(slope_st, s, conv, reml)
    f, R, h, Lc0, gR, _ = _evaluate(st, s, reml, grad=True)
    nu = st.n - p if reml else st.n
    sigma2 = R / nu
    beta_s, cvals_s, mdiag = _solve_all(st, Lc0, np.asarray(Lrows, dtype=float))
    beta = (beta_s + st.beta0) * st.scale
    se = np.sqrt(sigma2[:, None] * mdiag) * st.scale
    var_l = sigma2[:, None] * cvals_s
    # undo the column scaling in log|X'H^{-1}X| (X_used = X diag(scale))
    h_orig = h - (2.0 * np.log(st.scale).sum(axis=1) if reml else 0.0)
    loglik = -0.5 * (nu * (1.0 + np.log(2.0 * np.pi * R / nu)) + h_orig)

    # Satterthwaite: Hessian of the unprofiled deviance in phi = (s, sigma), assembled
    # from differences of the analytic derivatives of R and h in s and closed-form
    # sigma parts; the gradient of Var(L beta) by the same differences
    Lr = np.asarray(Lrows, dtype=float)

    def fun(x: np.ndarray) -> tuple[np.ndarray, ...]:
        _, _, _, Lc, dRx, dhx = _evaluate(st, x, reml, grad=True)
        return dRx, dhx, _contrast_quad(_finite_chol(Lc)[:, :p, :p], Lr, st.scale)

    jR, jh, gc = central_jacobian(fun, s, DF_STEP * np.maximum(1.0, np.abs(s)))
    # jR[:, i, j] = d(dR/ds_j)/ds_i: symmetric Hessians of R and h; gc: (B, k, r)
    HR = 0.5 * (jR + np.swapaxes(jR, 1, 2))
    Hh = 0.5 * (jh + np.swapaxes(jh, 1, 2))
    sig = np.sqrt(sigma2)
    Hd = np.empty((B, k + 1, k + 1))
    Hd[:, :k, :k] = HR / sigma2[:, None, None] + Hh
    Hd[:, :k, k] = -2.0 * gR / sig[:, None] ** 3
    Hd[:, k, :k] = Hd[:, :k, k]
    Hd[:, k, k] = 4.0 * nu / sigma2
    # gradient of Var(L beta) in phi: (B, k + 1, r)
    G = np.empty((B, k + 1, cvals_s.shape[1]))
    G[:, :k, :] = sigma2[:, None, None] * gc
    G[:, k, :] = 2.0 * sig[:, None] * cvals_s
    bounded = np.ones(k, dtype=bool) if slope_st is None else slope_st.bounded
    held = np.concatenate([(s <= HELD_TOL) & bounded, np.zeros((B, 1), dtype=bool)], axis=1)
    # row by row, as the contrast quadratic forms (a row's df does not depend on the others)
    df = np.concatenate([degrees_of_freedom(var_l[:, j:j + 1], G[:, :, j:j + 1], Hd, held)
                         for j in range(var_l.shape[1])], axis=1)
    ok = np.all(np.isfinite(beta), axis=1) & np.isfinite(loglik) & st.full_rank
    conv = conv & ok
    # rank-deficient replicates (lme4 would drop columns): no estimates, not converged
    for arr in (beta, se, var_l, df):
        arr[~st.full_rank] = np.nan
    if slope_st is not None:
        # (var outer intercept, cov, var slope, var inner) in the units of the slope
        # variable, and lme4's theta (the singular test is on its diagonal entries)
        th = slope_st.to_lme4(s)
        tau2 = sigma2[:, None] * np.column_stack([
            th[:, 0] ** 2, th[:, 0] * th[:, 1], th[:, 1] ** 2 + th[:, 2] ** 2, th[:, 3] ** 2])
        singular = np.any((th < SINGULAR_TOL) & bounded, axis=1)
        s = th
    else:
        tau2 = s**2 * sigma2[:, None]
        singular = np.any(s < SINGULAR_TOL, axis=1)
    return {
        "beta": beta,
        "se": se,
        "var_l": var_l,
        "df": df,
        "sigma2": sigma2,
        "tau2": tau2,
        "theta": s,
        "loglik": loglik,
        "converged": conv,
        "singular": singular,
    }
