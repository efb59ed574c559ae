"""The dense engine: lme4's formulation of the linear mixed model, blockwise dense algebra.

The model is ``y = X beta + Z b + e`` with ``b = Lambda(theta) u``, ``u ~ N(0, sigma^2 I)``
and ``e ~ N(0, sigma^2 I)``. ``Lambda`` is block diagonal: every random term ``k`` has a
``q_k x q_k`` lower-triangular relative covariance factor ``Lambda_k`` repeated once per
level of its grouping factor, so the random-effect covariance of term ``k`` is
``sigma^2 Lambda_k Lambda_k'``. ``theta`` holds the free entries of the ``Lambda_k``
(column-major lower triangle for correlated terms, the diagonal for ``||`` terms), the
same parameters as lme4's ``getME(fit, "theta")``.

What lives here (no pandas, no statsmodels):

* :class:`LMMProblem` -- cross-products precomputed once from ``y``, ``X`` and the
  random-effect blocks; :meth:`LMMProblem.evaluate` solves the penalised least-squares
  problem for one ``theta``;
* the profiled REML / ML deviance and its analytic gradient in ``theta``;
* the local optimiser: :func:`optimize_theta` (bounded L-BFGS-B, BFGS, Powell or
  Nelder-Mead, optionally on a face) and :func:`newton_polish` (Newton steps on the
  exact criterion until the gradient is below ``GRAD_TOL``); :class:`DenseCriterion`
  hands both to the one boundary/optimum search of :mod:`.search`;
* :func:`satterthwaite_setup` -- the Jacobian of ``vcov(beta)`` in the variance
  parameters ``(theta, sigma)`` and the Hessian of the deviance, computed once for
  :func:`.satterthwaite.contrast_df`;
* :func:`nakagawa_r2` and :func:`is_singular` (lme4's scale-free ``isSingular``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.optimize as sopt
import scipy.sparse as sp
from scipy.sparse import csgraph

from .satterthwaite import DF_STEP, SatterthwaiteSetup, central_jacobian
from .search import GRAD_TOL, HELD_TOL, SINGULAR_TOL

__all__ = [
    "DenseCriterion",
    "Evaluation",
    "LMMProblem",
    "RandomBlock",
    "canonical_theta",
    "is_singular",
    "nakagawa_r2",
    "newton_polish",
    "optimize_theta",
    "projected_gradient",
    "satterthwaite_setup",
]


@dataclass(frozen=True)
class RandomBlock:
    """One random-effects term: its columns, grouping codes and covariance pattern.

    Attributes
    ----------
    Z : ndarray, shape (n, q_k)
        Random-effect columns (``1`` for an intercept, the slope variables).
    codes : ndarray of int, shape (n,)
        Group index ``0..n_groups-1`` of every row.
    n_groups : int
        Number of levels.
    correlated : bool
        Full lower-triangular ``Lambda_k`` when ``True``, diagonal (``||``) otherwise.
    """

    Z: np.ndarray
    codes: np.ndarray
    n_groups: int
    correlated: bool = True

    @property
    def q(self) -> int:
        """Random coefficients per group."""
        return int(self.Z.shape[1])

    @property
    def theta_index(self) -> list[tuple[int, int]]:
        """(row, col) of every theta entry in ``Lambda_k`` (column-major, like lme4)."""
        if self.correlated:
            return [(r, c) for c in range(self.q) for r in range(c, self.q)]
        return [(c, c) for c in range(self.q)]


@dataclass(frozen=True)
class Evaluation:
    """The penalised least-squares solution at one ``theta``.

    Attributes
    ----------
    theta : ndarray
    beta : ndarray, shape (p,)
        Fixed effects (GLS estimate given theta).
    u : ndarray, shape (q,)
        Spherical random effects (``b = Lambda u``), in the problem's block order; use
        :meth:`LMMProblem.term_values` to read one term's values.
    r2 : float
        Penalised residual sum of squares ``||y - X beta - Z Lambda u||^2 + ||u||^2``.
    logdet_l : float
        ``log |Lambda' Z' Z Lambda + I|``.
    logdet_rx : float
        ``log |X' W^{-1} X|`` with ``W = I + Z Lambda Lambda' Z'``.
    M : ndarray, shape (p, p)
        ``X' W^{-1} X`` (so ``vcov(beta) = sigma^2 M^{-1}``).
    """

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    r2: float
    logdet_l: float
    logdet_rx: float
    M: np.ndarray
    #: per block-size class: (Lambda stack, Cholesky stack, L^{-1} Lambda' Z'X stack)
    parts: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] = field(repr=False, default=())


@dataclass(frozen=True)
class _SizeClass:
    """Independent diagonal blocks of ``A`` that share one size ``m`` (stacked)."""

    index: np.ndarray  # (n_blocks, m) positions in the block order
    ztz: np.ndarray  # (n_blocks, m, m)
    ztx: np.ndarray  # (n_blocks, m, p)
    zty: np.ndarray  # (n_blocks, m)


class LMMProblem:
    """Cross-products of one LMM, ready for repeated evaluation at different ``theta``.

    Random-effect columns that share rows form independent diagonal blocks of
    ``A = Lambda' Z'Z Lambda + I`` (one block per therapist for ``(1 | therapist/patient)``,
    one per group for a single factor, a single block for crossed factors). Blocks of
    equal size are stacked, so every Cholesky factor and solve is a batched operation on
    small matrices; the cost grows with the number and cube of the block sizes, not with
    the cube of the number of random effects.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Full column rank.
    blocks : sequence of RandomBlock

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(10), 5)
    >>> y = rng.normal(size=50) + rng.normal(size=10)[g]
    >>> prob = LMMProblem(y, np.ones((50, 1)), [RandomBlock(np.ones((50, 1)), g, 10)])
    >>> theta = optimize_theta(prob, prob.default_theta(), reml=True)[0]
    >>> bool(np.abs(prob.gradient(theta, reml=True)).max() < 1e-4)
    True
    """

    def __init__(self, y: np.ndarray, X: np.ndarray, blocks: list[RandomBlock]) -> None:
        self.y = np.asarray(y, dtype=float)
        self.X = np.asarray(X, dtype=float)
        self.blocks = list(blocks)
        self.n, self.p = self.X.shape
        # natural layout: term-major, then group, then coefficient
        offsets: list[int] = []
        off = 0
        for b in self.blocks:
            offsets.append(off)
            off += b.n_groups * b.q
        self.q = off
        rows, cols, vals = [], [], []
        for b, o in zip(self.blocks, offsets, strict=True):
            for c in range(b.q):
                rows.append(np.arange(self.n))
                cols.append(o + b.codes * b.q + c)
                vals.append(b.Z[:, c])
        z_nat = sp.csc_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.n, self.q),
        )
        # group blocks: every group's q_k columns stay together; columns linked through
        # shared rows (or a group's coefficients) belong to one block of A
        link = sp.csr_matrix(abs(z_nat.T) @ abs(z_nat))
        for b, o in zip(self.blocks, offsets, strict=True):
            first = o + np.arange(b.n_groups) * b.q
            for c in range(1, b.q):
                link = link + sp.csr_matrix(
                    (np.ones(b.n_groups), (first, first + c)), shape=(self.q, self.q)
                )
        _, label = csgraph.connected_components(link, directed=False)
        perm = np.argsort(label, kind="stable")
        pos = np.empty(self.q, dtype=np.int64)
        pos[perm] = np.arange(self.q)
        bounds = np.flatnonzero(np.diff(label[perm])) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        sizes = np.diff(np.concatenate([starts, [self.q]]))
        self.components = [slice(int(a), int(a + m)) for a, m in zip(starts, sizes, strict=True)]
        #: positions (in the block order) of term k's columns, shape (n_groups, q_k)
        self.cols = [
            pos[o + np.arange(b.n_groups * b.q)].reshape(b.n_groups, b.q)
            for b, o in zip(self.blocks, offsets, strict=True)
        ]
        self.Zs = z_nat[:, perm].tocsc()
        ztz = (self.Zs.T @ self.Zs).tocsr()
        self.ZtX = np.asarray(self.Zs.T @ self.X)
        self.Zty = np.asarray(self.Zs.T @ self.y).ravel()
        self.XtX = self.X.T @ self.X
        self.Xty = self.X.T @ self.y
        # stack blocks of equal size
        comp_of = np.repeat(np.arange(len(starts)), sizes)
        self.classes: list[_SizeClass] = []
        cls_of_comp = np.empty(len(starts), dtype=np.int64)
        row_of_comp = np.empty(len(starts), dtype=np.int64)
        for ci, m in enumerate(np.unique(sizes)):
            which = np.flatnonzero(sizes == m)
            cls_of_comp[which] = ci
            row_of_comp[which] = np.arange(which.size)
            index = starts[which][:, None] + np.arange(m)[None, :]
            ri = np.broadcast_to(index[:, :, None], (which.size, m, m)).ravel()
            cj = np.broadcast_to(index[:, None, :], (which.size, m, m)).ravel()
            self.classes.append(
                _SizeClass(
                    index=index,
                    ztz=np.asarray(ztz[ri, cj]).reshape(which.size, m, m),
                    ztx=self.ZtX[index],
                    zty=self.Zty[index],
                )
            )
        # where each term's group blocks sit: (class, row in class, local positions)
        self._where: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
        for idx in self.cols:
            comp = comp_of[idx[:, 0]]
            local = idx - starts[comp][:, None]
            entries = []
            for ci in range(len(self.classes)):
                sel = np.flatnonzero(cls_of_comp[comp] == ci)
                if sel.size:
                    entries.append((ci, row_of_comp[comp[sel]], local[sel]))
            self._where.append(entries)
        # theta layout
        self.theta_slices: list[slice] = []
        lower: list[float] = []
        start = 0
        for b in self.blocks:
            tidx = b.theta_index
            self.theta_slices.append(slice(start, start + len(tidx)))
            lower.extend(0.0 if r == c else -np.inf for r, c in tidx)
            start += len(tidx)
        self.n_theta = start
        self.lower = np.array(lower)

    # -- parameter maps -------------------------------------------------------------
    def default_theta(self) -> np.ndarray:
        """lme4's starting value: identity ``Lambda_k`` (1 on diagonals, 0 elsewhere)."""
        return np.where(np.isfinite(self.lower), 1.0, 0.0)

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Return the ``q_k x q_k`` factors ``Lambda_k`` for ``theta``."""
        out = []
        for b, s in zip(self.blocks, self.theta_slices, strict=True):
            lam = np.zeros((b.q, b.q))
            for v, (r, c) in zip(theta[s], b.theta_index, strict=True):
                lam[r, c] = v
            out.append(lam)
        return out

    def term_values(self, v: np.ndarray, k: int) -> np.ndarray:
        """Entries of a length-``q`` vector belonging to term ``k``, shape (n_groups, q_k)."""
        return np.asarray(v)[self.cols[k]]

    def _lambda_stacks(self, lams: list[np.ndarray]) -> list[np.ndarray]:
        """``Lambda`` restricted to every block, stacked per size class."""
        out = [np.zeros_like(c.ztz) for c in self.classes]
        for lam, entries in zip(lams, self._where, strict=True):
            for ci, rows, local in entries:
                out[ci][rows[:, None, None], local[:, :, None], local[:, None, :]] = lam
        return out

    # -- the penalised least-squares solve -----------------------------------------
    def evaluate(self, theta: np.ndarray) -> Evaluation:
        """Solve the penalised least-squares problem at ``theta``.

        Raises
        ------
        numpy.linalg.LinAlgError
            When ``X' W^{-1} X`` is not positive definite (rank-deficient ``X``).
        """
        theta = np.asarray(theta, dtype=float)
        lam_st = self._lambda_stacks(self.lambdas(theta))
        M = self.XtX.copy()
        rhs = self.Xty.copy()
        logdet_l = 0.0
        parts, cus = [], []
        for c, lam in zip(self.classes, lam_st, strict=True):
            lt = lam.transpose(0, 2, 1)
            a = lt @ c.ztz @ lam
            a = (a + a.transpose(0, 2, 1)) / 2
            a += np.eye(a.shape[1])
            chol = np.linalg.cholesky(a)
            logdet_l += 2.0 * float(np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())
            rzx = np.linalg.solve(chol, lt @ c.ztx)  # (nb, m, p)
            cu = np.linalg.solve(chol, (lt @ c.zty[:, :, None]))[:, :, 0]
            M -= np.einsum("bmp,bmq->pq", rzx, rzx)
            rhs -= np.einsum("bmp,bm->p", rzx, cu)
            parts.append((lam, chol, rzx))
            cus.append(cu)
        M = (M + M.T) / 2
        rx = np.linalg.cholesky(M)
        beta = sla.cho_solve((rx, True), rhs)
        u = np.empty(self.q)
        b = np.empty(self.q)
        for c, (lam, chol, rzx), cu in zip(self.classes, parts, cus, strict=True):
            w = cu - rzx @ beta
            uc = np.linalg.solve(chol.transpose(0, 2, 1), w[:, :, None])[:, :, 0]
            u[c.index] = uc
            b[c.index] = (lam @ uc[:, :, None])[:, :, 0]
        resid = self.y - self.X @ beta - self.Zs @ b
        r2 = float(resid @ resid + u @ u)
        return Evaluation(
            theta=theta,
            beta=beta,
            u=u,
            r2=r2,
            logdet_l=logdet_l,
            logdet_rx=2.0 * float(np.log(np.diag(rx)).sum()),
            M=M,
            parts=tuple(parts),
        )

    def deviance(self, theta: np.ndarray, *, reml: bool = True) -> float:
        """Profiled deviance (``-2 log L`` with ``sigma`` and, for ML, ``beta`` profiled).

        REML: ``log|L|^2 + log|R_X|^2 + (n-p)(1 + log(2 pi r2 / (n-p)))``;
        ML: ``log|L|^2 + n(1 + log(2 pi r2 / n))`` -- lme4's ``devfun``.
        """
        try:
            ev = self.evaluate(theta)
        except (np.linalg.LinAlgError, ValueError):
            return np.inf
        return self.deviance_from(ev, reml=reml)

    def deviance_from(self, ev: Evaluation, *, reml: bool) -> float:
        """Profiled deviance from an :class:`Evaluation`."""
        if reml:
            nu = self.n - self.p
            return ev.logdet_l + ev.logdet_rx + nu * (1.0 + np.log(2.0 * np.pi * ev.r2 / nu))
        return ev.logdet_l + self.n * (1.0 + np.log(2.0 * np.pi * ev.r2 / self.n))

    def deviance_vp(self, phi: np.ndarray, *, reml: bool = True) -> float:
        """Deviance at variance parameters ``phi = (theta, sigma)`` (sigma not profiled)."""
        theta, sigma = np.asarray(phi[:-1], dtype=float), float(phi[-1])
        ev = self.evaluate(theta)
        s2 = sigma * sigma
        if reml:
            nu = self.n - self.p
            return ev.logdet_l + ev.logdet_rx + nu * np.log(2 * np.pi * s2) + ev.r2 / s2
        return ev.logdet_l + self.n * np.log(2 * np.pi * s2) + ev.r2 / s2

    def sigma2(self, ev: Evaluation, *, reml: bool) -> float:
        """Residual variance estimate: ``r2 / (n - p)`` (REML) or ``r2 / n`` (ML)."""
        return ev.r2 / (self.n - self.p if reml else self.n)

    # -- analytic derivatives -------------------------------------------------------
    def _theta_derivs(
        self, ev: Evaluation, reml: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-theta derivatives of the log-determinant part, of ``r2`` and of ``M``.

        With ``W = I + Z Lambda Lambda' Z'`` and ``dW_i = Z D_i Z'``,
        ``D_i = dLambda_i Lambda' + Lambda dLambda_i'``:
        ``d(log|W| [+ log|X'W^{-1}X|]) = tr(Q D_i)`` with ``Q = Z'PZ`` (REML) or
        ``Z'W^{-1}Z`` (ML), ``d r2 = -r' D_i r`` with ``r = Z'W^{-1}(y - X beta)``, and
        ``dM = -B' D_i B`` with ``B = Z'W^{-1}X``. ``Q`` is block diagonal like ``A``
        apart from the low-rank REML term, and only its per-group diagonal blocks enter.
        """
        lams = self.lambdas(ev.theta)
        minv = np.linalg.inv(ev.M)
        # residual r = Z'W^{-1}(y - X beta) = Z'(y - X beta - Z b)
        b = np.empty(self.q)
        for c, (lam, _, _) in zip(self.classes, ev.parts, strict=True):
            b[c.index] = (lam @ ev.u[c.index][:, :, None])[:, :, 0]
        r = np.asarray(self.Zs.T @ (self.y - self.X @ ev.beta - self.Zs @ b)).ravel()
        qs, bs, rs = [], [], []
        for c, (lam, chol, rzx) in zip(self.classes, ev.parts, strict=True):
            # W^{-1} = I - Z Lambda A^{-1} Lambda' Z' with A = L L'
            T = np.linalg.solve(chol, lam.transpose(0, 2, 1) @ c.ztz)
            Bc = c.ztx - T.transpose(0, 2, 1) @ rzx
            Qc = c.ztz - T.transpose(0, 2, 1) @ T
            if reml:
                Qc = Qc - Bc @ minv @ Bc.transpose(0, 2, 1)
            qs.append(Qc)
            bs.append(Bc)
            rs.append(r[c.index])
        dlog = np.empty(self.n_theta)
        dr2 = np.empty(self.n_theta)
        dM = np.empty((self.n_theta, self.p, self.p))
        for blk, s, lam, entries in zip(
            self.blocks, self.theta_slices, lams, self._where, strict=True
        ):
            S = np.zeros((blk.q, blk.q))
            RT = np.zeros((blk.q, blk.q))
            Bk_all, Ck_all = [], []
            for ci, rows, local in entries:
                qblk = qs[ci][rows[:, None, None], local[:, :, None], local[:, None, :]]
                S += (qblk @ lam).sum(axis=0)
                R = rs[ci][rows[:, None], local]
                RT += R.T @ (R @ lam)
                Bk = bs[ci][rows[:, None], local]  # (G, q_k, p)
                Bk_all.append(Bk)
                Ck_all.append(lam.T @ Bk)  # rows of Lambda' B
            Bk = np.concatenate(Bk_all)
            Ck = np.concatenate(Ck_all)
            for i, (rr, cc) in enumerate(blk.theta_index):
                dlog[s.start + i] = 2.0 * S[rr, cc]
                dr2[s.start + i] = -2.0 * RT[rr, cc]
                E = Bk[:, rr, :].T @ Ck[:, cc, :]
                dM[s.start + i] = -(E + E.T)
        return dlog, dr2, dM

    def gradient(self, theta: np.ndarray, *, reml: bool = True) -> np.ndarray:
        """Analytic gradient of :meth:`deviance` with respect to ``theta``."""
        ev = self.evaluate(theta)
        dlog, dr2, _ = self._theta_derivs(ev, reml)
        nu = self.n - self.p if reml else self.n
        return dlog + nu * dr2 / ev.r2

    def gradient_vp(self, phi: np.ndarray, *, reml: bool = True) -> np.ndarray:
        """Analytic gradient of :meth:`deviance_vp` in ``(theta, sigma)``."""
        theta, sigma = np.asarray(phi[:-1], dtype=float), float(phi[-1])
        ev = self.evaluate(theta)
        dlog, dr2, _ = self._theta_derivs(ev, reml)
        nu = self.n - self.p if reml else self.n
        s2 = sigma * sigma
        return np.append(dlog + dr2 / s2, 2.0 * nu / sigma - 2.0 * ev.r2 / (s2 * sigma))

    def vcov_jacobian(self, theta: np.ndarray, sigma: float, *, reml: bool) -> np.ndarray:
        """``d vcov(beta) / d phi`` for ``phi = (theta, sigma)``; shape (k + 1, p, p)."""
        ev = self.evaluate(theta)
        _, _, dM = self._theta_derivs(ev, reml)
        minv = np.linalg.inv(ev.M)
        jac = np.empty((self.n_theta + 1, self.p, self.p))
        for i in range(self.n_theta):
            jac[i] = -(sigma**2) * minv @ dM[i] @ minv
        jac[-1] = 2.0 * sigma * minv
        return (jac + jac.transpose(0, 2, 1)) / 2


# -- optimisation ---------------------------------------------------------------------
def optimize_theta(
    problem: LMMProblem,
    theta0: np.ndarray,
    *,
    reml: bool = True,
    method: str = "lbfgs",
    maxiter: int = 1000,
    held: tuple[int, ...] = (),
) -> tuple[np.ndarray, bool]:
    """Minimise the profiled deviance over ``theta`` from ``theta0`` (one local run).

    Parameters
    ----------
    problem : LMMProblem
    theta0 : ndarray
        Start (clipped into the bounds).
    reml : bool
    method : {"lbfgs", "bfgs", "powell", "nm"}
        Bounded L-BFGS-B (analytic gradient), unconstrained BFGS (analytic gradient; the
        deviance is symmetric under sign flips of a column of ``Lambda_k``, so the
        result is mapped back to non-negative diagonals), bounded Powell or bounded
        Nelder-Mead.
    maxiter : int
    held : tuple of int
        Entries kept at their value in ``theta0`` (a face of the domain).

    Returns
    -------
    theta : ndarray
    ok : bool
        Whether scipy reported success.
    """
    lo = problem.lower
    x0 = np.maximum(np.asarray(theta0, dtype=float), np.where(np.isfinite(lo), lo, -np.inf))
    free = np.flatnonzero(~np.isin(np.arange(problem.n_theta), held))
    if free.size == 0:
        return x0, True
    bounds = [(None if not np.isfinite(lo[j]) else lo[j], None) for j in free]

    def full(t: np.ndarray) -> np.ndarray:
        out = x0.copy()
        out[free] = t
        return out

    def f(t: np.ndarray) -> float:
        return problem.deviance(full(t), reml=reml)

    def g(t: np.ndarray) -> np.ndarray:
        return problem.gradient(full(t), reml=reml)[free]

    x, ok = _minimize(f, g, x0[free], bounds, method, maxiter)
    return canonical_theta(problem, full(x)), ok


def _minimize(f, g, x0, bounds, method, maxiter):  # noqa: ANN001, ANN202
    if method == "lbfgs":
        res = sopt.minimize(
            f,
            x0,
            jac=g,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-10, "maxls": 50},
        )
    elif method == "bfgs":
        res = sopt.minimize(f, x0, jac=g, method="BFGS", options={"maxiter": maxiter, "gtol": 1e-9})
    elif method == "powell":
        res = sopt.minimize(
            f,
            x0,
            method="Powell",
            bounds=bounds,
            options={"maxiter": maxiter, "xtol": 1e-10, "ftol": 1e-14},
        )
    elif method == "nm":
        res = sopt.minimize(
            f,
            x0,
            method="Nelder-Mead",
            bounds=bounds,
            options={"maxiter": maxiter * 10, "xatol": 1e-10, "fatol": 1e-14, "adaptive": True},
        )
    else:  # pragma: no cover - validated by the caller
        raise ValueError(f"unknown optimizer {method!r}")
    return res.x, bool(res.success) and bool(np.isfinite(res.fun))


def canonical_theta(problem: LMMProblem, theta: np.ndarray) -> np.ndarray:
    """Flip column signs of each ``Lambda_k`` so its diagonal is non-negative."""
    theta = np.array(theta, dtype=float)
    for b, s in zip(problem.blocks, problem.theta_slices, strict=True):
        vals = theta[s]
        idx = b.theta_index
        for c in range(b.q):
            pos = [i for i, (r, cc) in enumerate(idx) if cc == c]
            diag = [i for i in pos if idx[i][0] == c]
            if diag and vals[diag[0]] < 0:
                vals[pos] = -vals[pos]
        theta[s] = vals
    return theta


def _free_mask(
    problem: LMMProblem, theta: np.ndarray, grad: np.ndarray, held: tuple[int, ...] = ()
) -> np.ndarray:
    """Parameters not held at their lower bound (KKT: at the bound and gradient >= 0)."""
    at_bound = np.isfinite(problem.lower) & (theta <= problem.lower + 1e-10)
    free = ~(at_bound & (grad >= -1e-10))
    free[list(held)] = False
    return free


def projected_gradient(problem: LMMProblem, theta: np.ndarray, *, reml: bool) -> np.ndarray:
    """Gradient with components of parameters held at their bound set to zero."""
    g = problem.gradient(theta, reml=reml)
    return np.where(_free_mask(problem, theta, g), g, 0.0)


def numeric_hessian(
    fun,  # noqa: ANN001
    x: np.ndarray,
    rel_step: float = 1e-5,
) -> np.ndarray:
    """Symmetrised central-difference Jacobian of a gradient function ``fun`` at ``x``.

    The step for ``x[i]`` is ``rel_step * max(1, |x[i]|)`` (``theta`` is scale-free).
    """
    x = np.asarray(x, dtype=float)
    step = (rel_step * np.maximum(1.0, np.abs(x)))[None, :]
    H = central_jacobian(lambda t: (np.array([fun(t[0])]),), x[None, :], step)[0][0].T
    return (H + H.T) / 2


def newton_polish(
    problem: LMMProblem,
    theta: np.ndarray,
    *,
    reml: bool = True,
    maxiter: int = 50,
    held: tuple[int, ...] = (),
) -> tuple[np.ndarray, float]:
    """Newton steps on the exact profiled criterion (bounded parameters kept feasible).

    Entries in ``held`` stay where they are.

    Returns
    -------
    theta : ndarray
        Polished estimate.
    grad_max : float
        ``max |projected gradient|`` at the returned ``theta`` (target: < ``GRAD_TOL``).
    """
    theta = canonical_theta(problem, theta)
    f0 = problem.deviance(theta, reml=reml)
    for _ in range(maxiter):
        g = problem.gradient(theta, reml=reml)
        free = _free_mask(problem, theta, g, held)
        gmax = float(np.abs(g[free]).max()) if free.any() else 0.0
        if gmax < GRAD_TOL:
            break
        idx = np.flatnonzero(free)

        def gsub(t: np.ndarray, idx: np.ndarray = idx, base: np.ndarray = theta) -> np.ndarray:
            full = base.copy()
            full[idx] = t
            return problem.gradient(full, reml=reml)[idx]

        H = numeric_hessian(gsub, theta[idx])
        w, v = np.linalg.eigh(H)
        wmax = max(1.0, float(np.abs(w).max()))
        if w.min() <= 1e-10 * wmax:
            w = np.clip(np.abs(w), 1e-6 * wmax, None)
        step = -(v / w) @ (v.T @ g[idx])
        improved = False
        t = 1.0
        for _ls in range(30):
            cand = theta.copy()
            cand[idx] = theta[idx] + t * step
            cand = np.maximum(cand, problem.lower)
            fc = problem.deviance(cand, reml=reml)
            if fc <= f0 + 1e-12 * max(1.0, abs(f0)):
                improved = True
                break
            t /= 2
        if not improved:
            break
        if np.allclose(cand, theta, rtol=0, atol=1e-14):
            theta = cand
            break
        theta, f0 = cand, fc
    g = problem.gradient(theta, reml=reml)
    g = np.where(_free_mask(problem, theta, g, held), g, 0.0)
    return theta, float(np.abs(g).max()) if g.size else 0.0


class DenseCriterion:
    """The dense engine as :func:`.search.search` sees it (one replicate).

    Its local optimiser is bounded L-BFGS-B on the free entries followed by
    :func:`newton_polish`.

    Parameters
    ----------
    problem : LMMProblem
    reml : bool
    maxiter : int
        Iterations of each L-BFGS-B run.

    Examples
    --------
    >>> from alliance_models.models.lmm.search import search
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(10), 4)
    >>> X = np.ones((40, 1))
    >>> y = 2.0 * rng.normal(size=10)[g] + rng.normal(size=40)
    >>> crit = DenseCriterion(LMMProblem(y, X, [RandomBlock(X, g, 10)]), reml=True)
    >>> theta, _ = search(crit, np.array([[0.0]]), np.array([True]))  # zero: no optimum
    >>> bool(theta[0, 0] > 1.0)
    True
    """

    n_rep = 1

    def __init__(self, problem: LMMProblem, *, reml: bool, maxiter: int = 1000) -> None:
        self.problem = problem
        self.reml = reml
        self.maxiter = maxiter
        self.k = problem.n_theta
        self.bounded = np.isfinite(problem.lower)
        scalar = np.zeros(self.k, dtype=bool)
        for b, s in zip(problem.blocks, problem.theta_slices, strict=True):
            scalar[s] = b.q == 1
        self.scalar = scalar

    def values(self, rep: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Profiled deviance at every row of ``theta``."""
        return np.array([self.problem.deviance(t, reml=self.reml) for t in theta])

    def polish(
        self, rep: np.ndarray, theta0: np.ndarray, held: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """L-BFGS-B and Newton steps from every row of ``theta0``, ``held`` at zero."""
        out = np.empty_like(theta0, dtype=float)
        conv = np.zeros(len(theta0), dtype=bool)
        for i, t0 in enumerate(theta0):
            start = np.array(t0, dtype=float)
            start[list(held)] = 0.0
            t, _ = optimize_theta(self.problem, start, reml=self.reml, maxiter=self.maxiter,
                                  held=held)
            out[i], gmax = newton_polish(self.problem, t, reml=self.reml,
                                         maxiter=min(50, self.maxiter), held=held)
            conv[i] = gmax < GRAD_TOL
        return out, conv


# -- inference ------------------------------------------------------------------------
def satterthwaite_setup(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool = True
) -> SatterthwaiteSetup:
    """Compute once what :func:`.satterthwaite.contrast_df` needs for this fit.

    Variance parameters are ``phi = (theta, sigma)`` as in lmerTest; entries of
    ``theta`` at their lower bound (a zero variance) are held fixed.
    """
    theta = np.asarray(theta, dtype=float)
    ev = problem.evaluate(theta)
    sigma = float(np.sqrt(problem.sigma2(ev, reml=reml)))
    phi = np.append(theta, sigma)
    held = np.append(np.isfinite(problem.lower) & (theta <= problem.lower + HELD_TOL), False)
    idx = np.flatnonzero(~held)

    def gsub(t: np.ndarray) -> tuple[np.ndarray]:
        full = phi.copy()
        full[idx] = t[0]
        return (problem.gradient_vp(full, reml=reml)[idx][None],)

    # theta is relative to sigma (scale-free); sigma's step must scale with sigma itself
    floor = np.append(np.ones(len(theta)), sigma)[idx]
    step = (DF_STEP * np.maximum(floor, np.abs(phi[idx])))[None]
    Hk = central_jacobian(gsub, phi[idx][None], step)[0][0]
    Hk = (Hk + Hk.T) / 2
    H = np.eye(phi.size)
    H[np.ix_(idx, idx)] = Hk
    # scale-free identifiability check on the theta block (theta is relative to sigma)
    if idx.size > 1:
        w = np.linalg.eigvalsh(Hk[:-1, :-1])
        eigmin = float(w.min() / max(1.0, np.abs(w).max()))
    else:
        eigmin = 1.0
    jac = problem.vcov_jacobian(theta, sigma, reml=reml)
    vcov = sigma**2 * np.linalg.inv(ev.M)
    return SatterthwaiteSetup(vcov=(vcov + vcov.T) / 2, jac=jac, hessian=H, held=held,
                              hessian_eigmin=eigmin)


def nakagawa_r2(
    X: np.ndarray,
    beta: np.ndarray,
    z_blocks: list[np.ndarray],
    covs: list[np.ndarray],
    sigma2: float,
) -> tuple[float, float]:
    """Marginal and conditional R2 (Nakagawa & Schielzeth 2013; Johnson 2014).

    ``sigma2_f = var(X beta)`` (``n - 1`` denominator, as in R), every random term
    contributes ``mean_i z_i' Sigma_k z_i``; ``R2_m = sigma2_f / total`` and
    ``R2_c = (sigma2_f + sum_k sigma2_k) / total`` with
    ``total = sigma2_f + sum_k sigma2_k + sigma2``.

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [0.0, 1, 2, 3]])
    >>> r2m, r2c = nakagawa_r2(X, np.array([0.0, 1.0]), [np.ones((4, 1))], [np.eye(1)], 1.0)
    >>> round(r2m, 4), round(r2c, 4)
    (0.4545, 0.7273)
    """
    vf = float(np.var(X @ beta, ddof=1))
    vr = sum(
        float(np.mean(np.einsum("ij,jk,ik->i", Z, S, Z)))
        for Z, S in zip(z_blocks, covs, strict=True)
    )
    tot = vf + vr + sigma2
    return vf / tot, (vf + vr) / tot


def is_singular(problem: LMMProblem, theta: np.ndarray, tol: float = SINGULAR_TOL) -> bool:
    """lme4's ``isSingular``: a bounded theta entry (a relative SD) below ``tol``.

    ``theta`` is relative to the residual SD, so the verdict does not depend on the
    outcome's units.

    Examples
    --------
    >>> b = RandomBlock(np.ones((4, 1)), np.array([0, 0, 1, 1]), 2)
    >>> prob = LMMProblem(np.arange(4.0), np.ones((4, 1)), [b])
    >>> is_singular(prob, np.array([0.0])), is_singular(prob, np.array([0.5]))
    (True, False)
    """
    bounded = np.isfinite(problem.lower)
    return bool(np.any(np.asarray(theta)[bounded] < tol))


def varcomp_rows(
    random: Sequence[Any], blocks: Sequence[RandomBlock], covs: Sequence[np.ndarray]
) -> list[tuple[str, str, str, float, float]]:
    """Rows ``(group, var1, var2, vcov, sdcor)`` of the random-effect covariances.

    As lme4's ``VarCorr`` table: a variance and SD per coefficient, then (correlated terms)
    each covariance with its correlation (``nan`` where an SD is zero).
    """
    rows: list[tuple[str, str, str, float, float]] = []
    for t, blk, cov in zip(random, blocks, covs, strict=True):
        cn = t.coef_names
        sds = np.sqrt(np.clip(np.diag(cov), 0, None))
        for i in range(blk.q):
            rows.append((t.group, cn[i], "", float(cov[i, i]), float(sds[i])))
        if t.correlated:
            for j in range(blk.q):
                for i in range(j + 1, blk.q):
                    den = sds[i] * sds[j]
                    corr = float(cov[i, j] / den) if den > 0 else float("nan")
                    rows.append((t.group, cn[j], cn[i], float(cov[i, j]), corr))
    return rows
