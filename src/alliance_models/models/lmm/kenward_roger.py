"""Kenward-Roger adjusted covariance and denominator df, as pbkrtest implements them.

Kenward & Roger (1997) correct two small-sample problems of Wald tests in REML fits:
``Phi = (X' Sigma^{-1} X)^{-1}`` evaluated at the estimated variance parameters
underestimates the covariance of ``beta_hat``, and the reference distribution of the
Wald statistic is not chi-square. This module follows pbkrtest 0.5.2
(``vcovAdj_internal``, ``Lb_ddf`` and ``.KR_adjust``) term by term:

* The variance parameters ``gamma`` are the entries of every random term's covariance
  matrix (lower triangle, column by column; the same order as lme4's ``theta``) and the
  residual variance, so ``Sigma = sum_r gamma_r G_r`` is linear in them (pbkrtest's
  ``get_SigmaG``) and the second-derivative terms ``R_ij`` of the paper vanish.
* With ``P_r = -X' Sigma^{-1} G_r Sigma^{-1} X`` and
  ``Q_rs = X' Sigma^{-1} G_r Sigma^{-1} G_s Sigma^{-1} X``, the expected information of
  the REML criterion is ``I_rs / 2`` with
  ``I_rs = tr(Sigma^{-1} G_r Sigma^{-1} G_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s)``,
  ``W = 2 I^{-1}`` (a pseudo-inverse when the smallest ``|eigenvalue|`` of ``I`` is
  below ``1e-10``) and the adjusted covariance is
  ``Phi_A = Phi + 2 Phi (sum_rs W_rs (Q_rs - P_r Phi P_s)) Phi``.
* For ``q`` linearly independent contrasts ``L`` (rows), with
  ``Theta = L' (L Phi L')^{-1} L``, ``A1 = sum_rs W_rs tr(Theta Phi P_r Phi)
  tr(Theta Phi P_s Phi)`` and ``A2 = sum_rs W_rs tr(Theta Phi P_r Phi Theta Phi P_s
  Phi)``, the denominator df and the F scaling are the paper's ``m`` and ``lambda``
  (:func:`df_and_scaling`).

``Sigma`` is block diagonal over groups of rows that share no level of any grouping
factor (therapists for ``(1 | therapist/patient)``; one block for crossed factors), so
every product above is a sum over those blocks; the cost is about
``n_gamma * sum_c n_c^3`` for row blocks of size ``n_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse import csgraph

from .dense import LMMProblem, RandomBlock

__all__ = [
    "KenwardRogerSetup",
    "contrast_df",
    "df_and_scaling",
    "f_test",
    "kenward_roger_setup",
    "row_clusters",
]

#: pbkrtest's threshold on the smallest |eigenvalue| of the information for ``solve``.
INFO_COND = 1e-10


@dataclass(frozen=True)
class KenwardRogerSetup:
    """What Kenward-Roger inference for any contrast of one fit needs (computed once).

    Attributes
    ----------
    vcov : ndarray, shape (p, p)
        Unadjusted ``Phi = (X' Sigma^{-1} X)^{-1}``.
    vcov_adj : ndarray, shape (p, p)
        Adjusted ``Phi_A`` (pbkrtest's ``vcovAdj``).
    P : ndarray, shape (g, p, p)
        ``P_r`` per variance parameter.
    W : ndarray, shape (g, g)
        ``2 I^{-1}``: the asymptotic covariance of the variance parameters.
    condition : float
        Smallest ``|eigenvalue|`` of the information ``I``.
    """

    vcov: np.ndarray
    vcov_adj: np.ndarray
    P: np.ndarray
    W: np.ndarray
    condition: float


def row_clusters(blocks: list[RandomBlock], n: int) -> list[np.ndarray]:
    """Split the rows into groups linked by a shared level of any grouping factor.

    Examples
    --------
    >>> b1 = RandomBlock(np.ones((4, 1)), np.array([0, 0, 1, 1]), 2)
    >>> b2 = RandomBlock(np.ones((4, 1)), np.array([0, 1, 2, 3]), 4)
    >>> [c.tolist() for c in row_clusters([b1, b2], 4)]
    [[0, 1], [2, 3]]
    """
    offs = np.cumsum([0] + [b.n_groups for b in blocks])
    rows = np.concatenate([np.arange(n) for _ in blocks])
    cols = np.concatenate([n + offs[k] + b.codes for k, b in enumerate(blocks)])
    size = n + int(offs[-1])
    adj = sp.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size))
    _, label = csgraph.connected_components(adj, directed=False)
    lab = label[:n]
    order = np.argsort(lab, kind="stable")
    cuts = np.flatnonzero(np.diff(lab[order])) + 1
    return np.split(order, cuts)


def _parameters(problem: LMMProblem, theta: np.ndarray, sigma2: float) -> list[tuple]:
    """``(gamma_r, block index, row, col)`` per covariance entry; residual last."""
    out = []
    for k, (b, lam) in enumerate(zip(problem.blocks, problem.lambdas(theta), strict=True)):
        cov = sigma2 * lam @ lam.T
        for r, c in b.theta_index:
            out.append((float(cov[r, c]), k, r, c))
    out.append((float(sigma2), -1, -1, -1))
    return out


def kenward_roger_setup(
    problem: LMMProblem, theta: np.ndarray, sigma2: float
) -> KenwardRogerSetup:
    """Compute ``Phi``, ``Phi_A``, ``P_r`` and ``W`` at a REML estimate.

    Parameters
    ----------
    problem : LMMProblem
    theta : ndarray
        REML estimate of the relative covariance parameters.
    sigma2 : float
        REML residual variance.

    Returns
    -------
    KenwardRogerSetup

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(6), 4)
    >>> X = np.column_stack([np.ones(24), rng.normal(size=24)])
    >>> y = X @ [1.0, 0.5] + rng.normal(size=6)[g] + rng.normal(size=24)
    >>> prob = LMMProblem(y, X, [RandomBlock(np.ones((24, 1)), g, 6)])
    >>> kr = kenward_roger_setup(prob, np.array([1.0]), 1.0)
    >>> bool(np.all(np.diag(kr.vcov_adj) >= np.diag(kr.vcov)))
    True
    """
    theta = np.asarray(theta, dtype=float)
    pars = _parameters(problem, theta, sigma2)
    g = len(pars)
    X = problem.X
    p = X.shape[1]
    PP = np.zeros((g, p, p))
    QQ = np.zeros((g, g, p, p))
    K = np.zeros((g, g))
    XtSX = np.zeros((p, p))
    for idx in row_clusters(problem.blocks, problem.n):
        nc = idx.size
        same = [b.codes[idx][:, None] == b.codes[idx][None, :] for b in problem.blocks]
        G = np.empty((g, nc, nc))
        for i, (_, k, r, c) in enumerate(pars):
            if k < 0:
                G[i] = np.eye(nc)
                continue
            z = problem.blocks[k].Z[idx]
            outer = np.outer(z[:, r], z[:, c])
            if r != c:
                outer = outer + outer.T
            G[i] = np.where(same[k], outer, 0.0)
        Sigma = np.einsum("r,rij->ij", np.array([pr[0] for pr in pars]), G)
        Sinv = sla.cho_solve(sla.cho_factor(Sigma, lower=True), np.eye(nc))
        Sinv = (Sinv + Sinv.T) / 2
        Xc = X[idx]
        TT = Sinv @ Xc
        HH = G @ Sinv  # G_r Sigma^{-1}
        OO = HH @ Xc  # G_r Sigma^{-1} X
        PP -= np.einsum("rnp,nq->rpq", OO, TT)
        SO = Sinv @ OO
        QQ += np.einsum("rnp,snq->rspq", OO, SO)
        K += np.einsum("rij,sji->rs", HH, HH)
        XtSX += Xc.T @ TT
    PP = (PP + PP.transpose(0, 2, 1)) / 2
    Phi = np.linalg.inv(XtSX)
    Phi = (Phi + Phi.T) / 2
    PhiP = np.einsum("ij,rjk->rik", Phi, PP)  # Phi P_r
    info = (
        K
        - 2.0 * np.einsum("ij,rsij->rs", Phi, QQ)
        + np.einsum("rij,sji->rs", PhiP, PhiP)
    )
    info = (info + info.T) / 2
    condition = float(np.min(np.abs(np.linalg.eigvalsh(info))))
    W = 2.0 * (np.linalg.inv(info) if condition > INFO_COND else np.linalg.pinv(info))
    W = (W + W.T) / 2
    PPhiP = np.einsum("rij,jk,skl->rsil", PP, Phi, PP)  # P_r Phi P_s
    U = np.einsum("rs,rsij->ij", W, QQ - PPhiP)
    U = (U + U.T) / 2
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    return KenwardRogerSetup(
        vcov=Phi, vcov_adj=(PhiA + PhiA.T) / 2, P=PP, W=W, condition=condition
    )


def _as_rows(L: np.ndarray, p: int) -> np.ndarray:
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.shape[1] != p:
        raise ValueError(f"L must have {p} columns, got shape {L.shape}")
    return L


def df_and_scaling(setup: KenwardRogerSetup, L: np.ndarray) -> tuple[float, float]:
    """Kenward-Roger denominator df and F scaling ``lambda`` for contrast rows ``L``.

    ``L`` (shape (q, p), or (p,) for one contrast) must have full row rank. The scaling
    is 1 when the df are within 0.01 of 2 (pbkrtest's rule).

    Examples
    --------
    >>> s = KenwardRogerSetup(np.eye(1), np.eye(1), np.full((1, 1, 1), -0.1),
    ...                       np.array([[2.0]]), 1.0)
    >>> ddf, scale = df_and_scaling(s, np.array([1.0]))
    >>> round(ddf, 6), round(scale, 6)
    (100.0, 1.0)
    """
    Phi = setup.vcov
    L = _as_rows(L, Phi.shape[0])
    q = L.shape[0]
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ij,jk,rkl,lm->rim", Theta, Phi, setup.P, Phi)  # Theta Phi P_r Phi
    tr = np.einsum("rii->r", u)
    A1 = float(tr @ setup.W @ tr)
    A2 = float(np.einsum("rs,rij,sji->", setup.W, u, u))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    gg = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3.0 * q + 2.0 * (1.0 - gg)
    c1, c2, c3 = gg / den, (q - gg) / den, (q + 2 - gg) / den
    V0 = 1.0 + c1 * B
    V1 = 1.0 - c2 * B
    V2 = 1.0 - c3 * B
    if abs(V0) < 1e-10:
        V0 = 0.0
    num = 1.0 - A2 / q
    ratio = 1.0 if abs(num) < 1e-14 and abs(V1) < 1e-14 else num / V1
    rho = ratio**2 * V0 / V2 / q
    ddf = 4.0 + (q + 2.0) / (q * rho - 1.0)
    scale = 1.0 if abs(ddf - 2.0) < 0.01 else ddf * (1.0 - A2 / q) / (ddf - 2.0)
    return float(ddf), float(scale)


def contrast_df(setup: KenwardRogerSetup, L: np.ndarray) -> float:
    """Kenward-Roger df of one contrast ``L @ beta`` (pbkrtest's ``Lb_ddf``).

    Examples
    --------
    >>> s = KenwardRogerSetup(np.eye(1), np.eye(1), np.full((1, 1, 1), -0.1),
    ...                       np.array([[2.0]]), 1.0)
    >>> round(contrast_df(s, np.array([1.0])), 6)
    100.0
    """
    return df_and_scaling(setup, L)[0]


def f_test(
    setup: KenwardRogerSetup, L: np.ndarray, beta: np.ndarray, rhs: np.ndarray | None = None
) -> dict[str, float]:
    """Kenward-Roger F test of ``L beta = rhs`` (pbkrtest's ``KRmodcomp``).

    Returns
    -------
    dict
        ``F`` (scaled: ``lambda`` times the Wald statistic on ``Phi_A`` over ``q``),
        ``F_unscaled``, ``scaling``, ``ndf`` (``q``), ``ddf``.

    Examples
    --------
    >>> s = KenwardRogerSetup(np.eye(1), np.eye(1), np.full((1, 1, 1), -0.1),
    ...                       np.array([[2.0]]), 1.0)
    >>> f_test(s, np.array([1.0]), np.array([2.0]))["F"]
    4.0
    """
    L = _as_rows(L, setup.vcov.shape[0])
    diff = L @ np.asarray(beta, dtype=float)
    if rhs is not None:
        diff = diff - np.asarray(rhs, dtype=float)
    q = L.shape[0]
    wald = float(diff @ np.linalg.solve(L @ setup.vcov_adj @ L.T, diff))
    ddf, scale = df_and_scaling(setup, L)
    return {
        "F": scale * wald / q,
        "F_unscaled": wald / q,
        "scaling": scale,
        "ndf": float(q),
        "ddf": ddf,
    }
