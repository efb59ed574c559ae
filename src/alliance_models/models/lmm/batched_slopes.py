"""Batched REML / ML for a correlated random slope with a nested random intercept.

The model is ``(1 + x | outer) + (1 | outer:inner)``, e.g.
``(1 + alliance | therapist) + (1 | therapist:patient)``:

``y = X beta + Z_j b_j + 1 c_jk + e``, ``Z_j = [1, x]`` in outer cluster ``j``,
``b_j ~ N(0, sigma^2 Lambda Lambda')``, ``c_jk ~ N(0, sigma^2 s_b^2)``,
``e ~ N(0, sigma^2 I)``.

``Lambda = [[l11, 0], [l21, l22]]`` is lme4's relative covariance factor of the outer term
and ``theta = (l11, l21, l22, s_b)`` (lme4's ``theta`` for this term order, with ``x``
scaled; see below). The criterion is invariant under a sign flip of either column of
``Lambda`` and even in ``s_b``, so the engine's quasi-Newton runs unconstrained in
``theta`` and maps the result to non-negative diagonals (:meth:`SlopeStats.canonical`);
the closed domain of lme4 (``l11, l22, s_b >= 0``) is covered, and a rank-one
``Lambda Lambda'`` (``l22 = 0``: correlation +-1, or no slope variance) is a stationary
point in ``l22`` that the shared search (:mod:`.search`) probes across.

Algebra (everything from per-cluster sums, no Python loop over clusters or replicates)
-------------------------------------------------------------------------------------
With ``W = [X, r, 1, x]`` (``r`` the OLS residual of ``y``; ``Xa = [X, r]`` has ``q = p + 1``
columns), level-1 (inner) clusters ``k`` of size ``m_k`` and column sums ``sigma_k = 1'W_k``,
``zeta_k = (m_k, sum x)`` (the last two entries of ``sigma_k``), ``A = I + s_b^2 Z_b Z_b'``
has ``A^{-1} = I - c_k 11'`` per inner cluster (``c = g / (1 + m g)``, ``g = s_b^2``, and
``a = 1 / (1 + m g)``). For outer cluster ``j`` let

* ``G_j = Z_j' A^{-1} W_j = C_j - sum_t c_t P_tj`` with ``C_j = Z_j' W_j`` and
  ``P_tj = sum_{k in j, m_k = m_t} zeta_k sigma_k'`` (2 x (q + 2));
* ``F_j`` its last two columns (``Z_j' A^{-1} Z_j``), ``S = Lambda Lambda'``,
  ``N_j = I + F_j S`` and ``K_j = S N_j^{-1}`` (symmetric; Woodbury:
  ``A^{-1} Z_j Lambda (I + Lambda' F_j Lambda)^{-1} Lambda' Z_j' A^{-1}`` contracts to
  ``K_j``, and it is defined for singular ``S``).

Then ``Xa' H^{-1} Xa = Xa'Xa - sum_t c_t Q_t - sum_j G_j' K_j G_j`` (``Q_t = sum sigma_k
sigma_k'`` over inner clusters of size ``m_t``, the Xa block), and
``log|H| = sum_k log(1 + m_k g) + sum_j log|N_j|``. Its Cholesky factor gives ``beta``,
``R`` and ``log|X'H^{-1}X|`` as in :mod:`.batched`.

Gradient: ``Z_j' H^{-1} W = N_j^{-1} G_j`` and ``Z_j' H^{-1} Z_j = N_j^{-1} F_j``, so for an
entry ``l`` of ``Lambda`` with ``D = dS/dl``, ``dR = -<D, sum_j (V_j u)(V_j u)'>``,
``d log|H| = <D, sum_j N_j^{-1} F_j>`` and ``d log|M| = -<D, sum_j V_jx M^{-1} V_jx'>``
(``V_j = N_j^{-1} G_j``, ``u = (-beta, 1)``, ``M = X'H^{-1}X``). For ``g``, with
``1_k' H^{-1} W = a_k (sigma_k - G_j' K_j zeta_k)``, the sums over inner clusters of the
squares of these vectors contract with ``u`` and ``M^{-1}`` into sums of ``Q_t``,
``P_tj`` and ``zeta zeta'`` blocks (see :meth:`SlopeStats.evaluate`). The Hessian is
left to the quasi-Newton of :mod:`.batched` (differences of this gradient, then BFGS)
and the Satterthwaite df to :func:`.batched.batched_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import batched as core

__all__ = ["SlopeStats", "slope_stats"]

#: Most replicates whose working copies :func:`slope_stats` holds at once.
_ROW_BLOCK = 16
#: Starting values tried for ``l22`` (relative slope SD, scaled ``x``); the best is used.
_L22_STARTS = (0.1, 0.3, 1.0)


@dataclass(frozen=True)
class SlopeStats:
    """Per-replicate sufficient statistics of the slope model (module docstring).

    ``q = p + 1``; ``W`` has ``q + 2`` columns ``[X, r, 1, x]`` (``X`` and ``x`` scaled by
    ``scale``). ``theta`` is in the scaled units of ``x``: lme4's factor of the original
    ``x`` is ``diag(1, zscale) Lambda``.
    """

    xtx: np.ndarray  # (B, q, q)
    sizes: np.ndarray  # (T,) distinct inner-cluster sizes
    Q: np.ndarray  # (B, T, q, q)
    count: np.ndarray  # (B, T)
    C: np.ndarray  # (B, J, 2, q + 2) Z_j' W_j
    P: np.ndarray  # (B, T, J, 2, q + 2) sum of zeta_k sigma_k' per size and outer cluster
    n: np.ndarray  # (B,)
    scale: np.ndarray  # (B, p)
    beta0: np.ndarray  # (B, p)
    p: int
    full_rank: np.ndarray  # (B,)
    zscale: np.ndarray  # (B,) scale of the slope column

    #: theta entries: l11, l21, l22, s_b
    k = 4
    #: entries with a lower bound of zero (diagonals of Lambda, the inner SD)
    bounded = np.array([True, False, True, True])
    #: entries that are the SD of a scalar term
    scalar = np.array([False, False, False, True])

    @property
    def n_rep(self) -> int:
        """Replicates."""
        return int(self.xtx.shape[0])

    @cached_property
    def Pz(self) -> np.ndarray:  # noqa: N802 - the module docstring's name
        """``sum zeta_k zeta_k'`` per size and outer cluster (B, T, J, 2, 2), contiguous."""
        return np.ascontiguousarray(self.P[..., self.p + 1:])

    def take(self, idx: np.ndarray) -> SlopeStats:
        """Return the statistics of the replicates ``idx``."""
        out = SlopeStats(
            self.xtx[idx], self.sizes, self.Q[idx], self.count[idx], self.C[idx],
            self.P[idx], self.n[idx], self.scale[idx], self.beta0[idx], self.p,
            self.full_rank[idx], self.zscale[idx],
        )
        if "Pz" in self.__dict__:  # the cached copy, taken along
            out.__dict__["Pz"] = self.Pz[idx]
        return out

    @staticmethod
    def canonical(s: np.ndarray) -> np.ndarray:
        """Flip columns of ``Lambda`` to non-negative diagonals; ``|s_b|`` (same criterion)."""
        s = np.array(s, dtype=float)
        neg = s[:, 0] < 0
        s[neg, :2] = -s[neg, :2]
        s[:, 2:] = np.abs(s[:, 2:])
        return s

    def to_lme4(self, s: np.ndarray) -> np.ndarray:
        """``theta`` for the original (unscaled) slope variable, lme4's parametrisation."""
        out = np.array(s, dtype=float)
        out[:, 1:3] *= self.zscale[:, None]
        return out

    def intercept_stats(self) -> core.SuffStats:
        """Return the nested random-intercept statistics of the same data (for the start)."""
        q = self.p + 1
        m = self.sizes[None, :, None]
        safe = np.where(m > 0, m, 1.0)
        S2 = self.P[:, :, :, 0, :q] / safe[..., None]
        N2 = self.P[:, :, :, 0, q] / safe**2
        return core.SuffStats(self.xtx, self.sizes, self.Q, self.count, S2, N2, self.n,
                              self.scale, self.beta0, self.p, self.full_rank)

    def start(self, reml: bool) -> np.ndarray:
        """Return the start (B, 4) of the quasi-Newton.

        The nested intercept model's moment estimates for ``l11`` and ``s_b``,
        ``l21 = 0`` and the best of :data:`_L22_STARTS` for ``l22``.
        """
        s0 = core._moment_start(self.intercept_stats())
        B = self.n_rep
        cands = []
        for v in _L22_STARTS:
            t = np.column_stack([s0[:, 0], np.zeros(B), np.full(B, v), s0[:, 1]])
            cands.append((core.criterion(self, t, reml=reml)[0], t))
        f = np.column_stack([c[0] for c in cands])
        best = f.argmin(axis=1)
        return np.stack([c[1] for c in cands], axis=1)[np.arange(B), best]

    def evaluate(self, s: np.ndarray, reml: bool, grad: bool) -> tuple[np.ndarray, ...]:
        """Criterion pieces at ``theta`` (B, 4), as :func:`.batched._evaluate` returns them.

        ``(f, R, h, L)`` and, with ``grad``, ``dR`` and ``dh`` (B, 4).

        Every 2 x 2 matrix of an outer cluster (``F_j``, ``N_j^{-1}``, ``K_j``, ...) is held
        as its entries, arrays of shape (B, J), and multiplied out by hand; the
        contractions over clusters and columns are batched matrix products over the
        flattened (cluster, row) axis.
        """
        p, q = self.p, self.p + 1
        r = q + 2
        B = s.shape[0]
        J = self.C.shape[1]
        m = self.sizes[None, :]
        g = (s[:, 3] ** 2)[:, None]
        a = 1.0 / (1.0 + m * g)  # (B, T)
        c = g * a
        logdet = (self.count * np.log1p(m * g)).sum(axis=1)
        M = self.xtx - core._tsum(c, self.Q)
        Gf = self.C - core._tsum(c, self.P)  # (B, J, 2, r): [G_j, F_j]
        f00 = Gf[..., 0, q]
        f11 = Gf[..., 1, q + 1]
        f01 = 0.5 * (Gf[..., 0, q + 1] + Gf[..., 1, q])
        l11, l21, l22 = s[:, 0, None], s[:, 1, None], s[:, 2, None]
        s00, s01, s11 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22  # S (B, 1)
        # N = I + F S and its inverse (entries (B, J))
        n00 = 1.0 + f00 * s00 + f01 * s01
        n01 = f00 * s01 + f01 * s11
        n10 = f01 * s00 + f11 * s01
        n11 = 1.0 + f01 * s01 + f11 * s11
        detN = n00 * n11 - n01 * n10
        with np.errstate(divide="ignore", invalid="ignore"):
            i00, i01, i10, i11 = n11 / detN, -n01 / detN, -n10 / detN, n00 / detN
            logdet = logdet + np.log(detN).sum(axis=1)
        # K = S N^{-1} (symmetric)
        k00 = s00 * i00 + s01 * i10
        k11 = s01 * i01 + s11 * i11
        k01 = 0.5 * ((s00 * i01 + s01 * i11) + (s01 * i00 + s11 * i10))
        # M = Xa'H^-1 Xa = M0 - sum_j G_j' K_j G_j, over the flattened (j, row) axis
        K = np.empty((B, J, 2, 2))
        K[..., 0, 0], K[..., 1, 1] = k00, k11
        K[..., 0, 1] = K[..., 1, 0] = k01
        KG = K @ Gf  # (stacked 2 x 2 products: faster than broadcasting the entries)
        GKG = np.swapaxes(KG.reshape(B, 2 * J, r), 1, 2) @ Gf.reshape(B, 2 * J, r)
        M = M - GKG[:, :q, :q]
        M = 0.5 * (M + np.swapaxes(M, 1, 2))
        L = core._chol(M)
        dg = np.diagonal(L, axis1=1, axis2=2)
        R = dg[:, p] ** 2
        nu = self.n - p if reml else self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            h = logdet + (2.0 * np.log(dg[:, :p]).sum(axis=1) if reml else 0.0)
            f = nu * np.log(R) + h
        f = np.where(np.isfinite(f), f, np.inf)
        if not grad:
            return f, R, h, L
        Lf = core._finite_chol(L)
        Li = core.tri_inv(Lf[:, :p, :p])
        Mi = np.swapaxes(Li, 1, 2) @ Li  # (X'H^-1 X)^-1, scaled X
        beta = (np.swapaxes(Li, 1, 2) @ Lf[:, p, :p, None])[..., 0]
        up = np.zeros((B, r))  # u = (-beta, 1), padded with zeros to the columns of W
        up[:, :p] = -beta
        up[:, p] = 1.0
        u = up[:, :q]
        # -- the entries of Lambda; w_j = G_j u, V_j u = N_j^-1 w_j
        w = (Gf.reshape(B, 2 * J, r) @ up[:, :, None]).reshape(B, J, 2)
        w0, w1 = w[..., 0], w[..., 1]
        v0, v1 = i00 * w0 + i01 * w1, i10 * w0 + i11 * w1
        tu = np.stack([(v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)], axis=1)
        # sum_j N_j^-1 F_j (symmetrised)
        tz = np.stack([(i00 * f00 + i01 * f01).sum(1),
                       0.5 * ((i00 * f01 + i01 * f11) + (i10 * f00 + i11 * f01)).sum(1),
                       (i10 * f01 + i11 * f11).sum(1)], axis=1)
        if reml:
            # Y_j = G_jx M^-1 G_jx' and sum_j N_j^-1 Y_j N_j^-T
            Gx = Gf[..., :p].reshape(B, 2 * J, p)
            GxM = (Gx @ Mi).reshape(B, J, 2, p)
            Gx = Gx.reshape(B, J, 2, p)
            y00 = np.linalg.vecdot(GxM[:, :, 0], Gx[:, :, 0])
            y01 = np.linalg.vecdot(GxM[:, :, 0], Gx[:, :, 1])
            y11 = np.linalg.vecdot(GxM[:, :, 1], Gx[:, :, 1])
            a00, a01 = i00 * y00 + i01 * y01, i00 * y01 + i01 * y11
            a10, a11 = i10 * y00 + i11 * y01, i10 * y01 + i11 * y11
            tk = np.stack([(a00 * i00 + a01 * i01).sum(1),
                           0.5 * ((a00 * i10 + a01 * i11) + (a10 * i00 + a11 * i01)).sum(1),
                           (a10 * i10 + a11 * i11).sum(1)], axis=1)
            tz = tz - tk
        dR = np.empty((B, 4))
        dh = np.empty((B, 4))
        # <dS/dl, T> for T = (T00, T01, T11): l11, l21, l22
        l1, l2, l3 = s[:, 0, None], s[:, 1, None], s[:, 2, None]
        for out, t, sign in ((dR, tu, -1.0), (dh, tz, 1.0)):
            out[:, 0:1] = sign * 2.0 * (l1 * t[:, 0:1] + l2 * t[:, 1:2])
            out[:, 1:2] = sign * 2.0 * (l1 * t[:, 1:2] + l2 * t[:, 2:3])
            out[:, 2:3] = sign * 2.0 * l3 * t[:, 2:3]
        # -- the inner SD: 1_k' H^-1 Xa = a_k (sigma_k - G_j' K_j zeta_k) =: a_k v_k'. Per
        # size t, Phi_t = sum_k v_k v_k' = Q_t - A_t - A_t' + X_t with A_t = sum_j (K_j G_j)'
        # P_tj (a product over (j, row)) and X_t = sum_j G_j' K_j Pz_tj K_j G_j, which
        # enters only as u' X_t u = sum_j e_j' Pz_tj e_j (e_j = K_j w_j) and
        # <M^-1, X_t> = sum_j <K_j Pz_tj K_j, Y_j>
        T = self.P.shape[1]
        KGt = np.swapaxes(KG.reshape(B, 1, 2 * J, r), 2, 3)
        A = KGt @ self.P.reshape(B, T, 2 * J, r)  # (B, T, r, r)
        Aq = A[..., :q, :q]
        Pz = self.Pz  # (B, T, J, 2, 2), symmetric
        pz00, pz01, pz11 = Pz[..., 0, 0], Pz[..., 0, 1], Pz[..., 1, 1]
        e0 = (k00 * w0 + k01 * w1)[:, None]
        e1 = (k01 * w0 + k11 * w1)[:, None]
        ePe = (e0 * e0 * pz00 + 2.0 * e0 * e1 * pz01 + e1 * e1 * pz11).sum(axis=2)
        uQAu = np.linalg.vecdot(((self.Q - 2.0 * Aq) @ u[:, None, :, None])[..., 0],
                                u[:, None, :])  # (B, T)
        a2 = a**2
        uu_b = (a2 * (uQAu + ePe)).sum(axis=1)
        c00, c01, c11 = k00[:, None], k01[:, None], k11[:, None]
        KPz = (c00 * pz00 + 2.0 * c01 * pz01 + c11 * pz11).sum(axis=2)
        tr_b = (self.count * a * m).sum(axis=1) - (a2 * KPz).sum(axis=1)
        if reml:
            m00, m01 = c00 * pz00 + c01 * pz01, c00 * pz01 + c01 * pz11  # K Pz
            m10, m11 = c01 * pz00 + c11 * pz01, c01 * pz01 + c11 * pz11
            z00, z11 = m00 * c00 + m01 * c01, m10 * c01 + m11 * c11  # K Pz K
            z01 = 0.5 * ((m00 * c01 + m01 * c11) + (m10 * c00 + m11 * c01))
            XY = (z00 * y00[:, None] + 2.0 * z01 * y01[:, None] + z11 * y11[:, None]).sum(axis=2)
            QA = (self.Q - 2.0 * Aq)[..., :p, :p]  # <M^-1, A> = <M^-1, A'>
            PM = np.linalg.vecdot(QA.reshape(B, T, p * p), Mi.reshape(B, 1, p * p)) + XY
            kk_b = (a2 * PM).sum(axis=1)
        else:
            kk_b = np.zeros(B)
        sb = s[:, 3]
        dR[:, 3] = -2.0 * sb * uu_b
        dh[:, 3] = 2.0 * sb * (tr_b - kk_b)
        bad = ~np.isfinite(R)
        dR[bad] = np.nan
        dh[bad] = np.nan
        return f, R, h, L, dR, dh



def slope_stats(
    X: np.ndarray,
    Y: np.ndarray,
    layout: core.ClusterLayout,
    slope: int,
    mask: np.ndarray | None = None,
    *,
    row_block: int = 64,
) -> SlopeStats:
    """Reduce a batch of replicates to the sufficient statistics of the slope model.

    Parameters
    ----------
    X : ndarray, shape (n, p) or (B, n, p)
        Fixed-effects design, shared or per replicate.
    Y : ndarray, shape (B, n)
        Responses.
    layout : ClusterLayout
        From :func:`.batched.make_layout` with two nested factors.
    slope : int
        Column of ``X`` that has a random slope over the outer factor.
    mask : ndarray of bool, shape (B, n), optional
        ``False`` marks a missing observation.
    row_block : int, default 64
        Replicates whose working copies are held at once (at most :data:`_ROW_BLOCK`:
        the ``(n, p + 3)`` copies of more replicates leave the CPU caches, which makes
        the sums slower, not faster).

    Returns
    -------
    SlopeStats

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ther, pat = np.repeat(np.arange(6), 8), np.repeat(np.arange(24), 2)
    >>> X = np.column_stack([np.ones(48), rng.normal(size=48)])
    >>> st = slope_stats(X, rng.normal(size=(3, 48)), core.make_layout(ther, pat), 1)
    >>> st.C.shape, st.P.shape
    ((3, 6, 2, 5), (3, 1, 6, 2, 5))
    """
    if layout.outer_starts is None:
        raise ValueError("the slope model needs two nested factors (outer and inner codes)")
    B, n = Y.shape
    p = X.shape[-1]
    q = p + 1
    r_cols = q + 2
    row_block = max(1, min(row_block, _ROW_BLOCK))
    order = layout.order
    srt = layout.is_sorted
    Ys = Y if srt else Y[:, order]
    Ms = None if mask is None else (mask if srt else mask[:, order]).astype(float)
    K = layout.n_inner
    J = layout.outer_starts.shape[0]
    m_in = core._equal_segments(layout.inner_starts, n)
    m_out = core._equal_segments(layout.outer_starts, K)
    if Ms is None:
        nk1 = np.diff(np.r_[layout.inner_starts, n]).astype(float)
        sizes, tidx1 = np.unique(nk1, return_inverse=True)
        tidx = np.broadcast_to(tidx1.reshape(1, K), (B, K))
    else:
        nk = core._row_segment_sum(Ms, layout.inner_starts, m_in)
        sizes, tidx = np.unique(nk, return_inverse=True)
        tidx = tidx.reshape(B, K)
    T = sizes.shape[0]
    onehot = (tidx[:, :, None] == np.arange(T)).astype(float)  # (B, K, T)
    count = onehot.sum(axis=1)
    xtx = np.zeros((B, q, q))
    Q = np.empty((B, T, q, q))
    C = np.empty((B, J, 2, r_cols))
    P = np.empty((B, T, J, 2, r_cols))
    scale = np.empty((B, p))
    beta0 = np.empty((B, p))
    full = np.empty(B, dtype=bool)
    zscale = np.empty(B)
    nobs = np.full(B, float(n)) if Ms is None else Ms.sum(axis=1)
    Xs = X[order] if (X.ndim == 2 and not srt) else X
    for lo in range(0, B, row_block):
        hi = min(B, lo + row_block)
        b = hi - lo
        mb = None if Ms is None else Ms[lo:hi]
        yb = Ys[lo:hi] if mb is None else np.where(mb > 0, Ys[lo:hi], 0.0)
        if X.ndim == 2:
            xb = np.broadcast_to(Xs, (b,) + Xs.shape)
        else:
            xb = X[lo:hi] if srt else X[lo:hi][:, order]
        xm = xb if mb is None else np.where(mb[..., None] > 0, xb, 0.0)
        Gm = np.swapaxes(xm, 1, 2) @ xm
        xty = (np.swapaxes(xm, 1, 2) @ yb[..., None])[..., 0]
        rms = np.sqrt(np.diagonal(Gm, axis1=1, axis2=2) / nobs[lo:hi, None])
        sc = 1.0 / np.where(rms > 0, rms, 1.0)
        Gs = Gm * sc[:, :, None] * sc[:, None, :]
        full[lo:hi], b0s = core._rank_and_ols(Gs, xty * sc)
        b0 = b0s * sc
        r = yb - (xm @ b0[..., None])[..., 0]
        if mb is not None:
            r = r * mb
        W = np.empty((b, n, r_cols))
        W[..., :p] = xm * sc[:, None, :]
        W[..., p] = r
        W[..., q] = 1.0 if mb is None else mb
        W[..., q + 1] = W[..., slope]
        sk = core._row_segment_sum(W, layout.inner_starts, m_in)  # (b, K, r): sigma_k
        xw = core._row_segment_sum(W * W[..., q + 1, None], layout.inner_starts, m_in)
        zeta = sk[..., q:]  # (b, K, 2)
        Cj = np.stack([sk, xw], axis=2)  # (b, K, 2, r): Z_k' W_k
        C[lo:hi] = core._row_segment_sum(Cj.reshape(b, K, -1), layout.outer_starts,
                                         m_out).reshape(b, J, 2, r_cols)
        zs = zeta[..., :, None] * sk[..., None, :]  # (b, K, 2, r)
        oh = onehot[lo:hi]
        for t in range(T):
            wt = sk[..., :q] if T == 1 else sk[..., :q] * oh[:, :, t, None]
            Q[lo:hi, t] = np.swapaxes(wt, 1, 2) @ sk[..., :q]
            zt = zs if T == 1 else zs * oh[:, :, t, None, None]
            P[lo:hi, t] = core._row_segment_sum(zt.reshape(b, K, -1), layout.outer_starts,
                                                m_out).reshape(b, J, 2, r_cols)
        xtx[lo:hi, :p, :p] = Gs
        xtx[lo:hi, p, p] = np.linalg.vecdot(r, r)
        scale[lo:hi] = sc
        beta0[lo:hi] = b0s
        zscale[lo:hi] = sc[:, slope]
    return SlopeStats(xtx, sizes.astype(float), Q, count, C, P, nobs, scale, beta0, p, full,
                      zscale)
