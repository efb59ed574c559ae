"""Plain-numpy core of the linear mixed model (lme4's formulation, blockwise dense algebra).

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
  problem for one ``theta``.
* the profiled REML / ML deviance and its analytic gradient in ``theta``;
* :func:`optimize_theta` (bounded L-BFGS-B, BFGS, Powell or Nelder-Mead) and
  :func:`newton_polish` (Newton steps on the exact criterion until the gradient is
  below ``1e-8``);
* :func:`satterthwaite_setup` / :func:`satterthwaite_df` -- the Jacobian of
  ``vcov(beta)`` in the variance parameters ``(theta, sigma)`` and their asymptotic
  covariance ``2 H^{-1}`` are computed once, so a df for any contrast ``L`` costs a few
  small matrix products (lmerTest's method, same parameterisation);
* :func:`nakagawa_r2` and :func:`is_singular` (lme4's scale-free ``isSingular``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.optimize as sopt
import scipy.sparse as sp
from scipy.sparse import csgraph

__all__ = [
    "GRAD_TOL",
    "SINGULAR_TOL",
    "Evaluation",
    "LMMProblem",
    "RandomBlock",
    "SatterthwaiteSetup",
    "is_singular",
    "nakagawa_r2",
    "newton_polish",
    "optimize_theta",
    "snap_to_boundary",
    "satterthwaite_df",
    "satterthwaite_setup",
]

#: Convergence target: max |d deviance / d theta| over free parameters after polishing.
GRAD_TOL = 1e-8
#: lme4's ``isSingular`` tolerance on the bounded (diagonal) entries of theta.
SINGULAR_TOL = 1e-4


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

    def theta_from_cov(self, covs: list[np.ndarray], sigma2: float) -> np.ndarray:
        """``theta`` whose ``sigma2 * Lambda_k Lambda_k'`` reproduces ``covs`` (PSD-safe)."""
        theta = np.zeros(self.n_theta)
        for b, s, cov in zip(self.blocks, self.theta_slices, covs, strict=True):
            rel = np.atleast_2d(np.asarray(cov, dtype=float)) / sigma2
            if not b.correlated:
                rel = np.diag(np.diag(rel))
            w, v = np.linalg.eigh((rel + rel.T) / 2)
            rel = (v * np.clip(w, 1e-10, None)) @ v.T
            lam = np.linalg.cholesky(rel)
            theta[s] = [lam[r, c] for r, c in b.theta_index]
        return theta

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
) -> tuple[np.ndarray, bool]:
    """Minimise the profiled deviance over ``theta`` from ``theta0``.

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

    Returns
    -------
    theta : ndarray
    ok : bool
        Whether scipy reported success.
    """
    lo = problem.lower
    x0 = np.maximum(np.asarray(theta0, dtype=float), np.where(np.isfinite(lo), lo, -np.inf))
    bounds = [(None if not np.isfinite(v) else v, None) for v in lo]

    def f(t: np.ndarray) -> float:
        return problem.deviance(t, reml=reml)

    def g(t: np.ndarray) -> np.ndarray:
        return problem.gradient(t, reml=reml)

    for _restart in range(5):
        theta, ok = _minimize(f, g, x0, bounds, method, maxiter)
        theta = canonical_theta(problem, theta)
        # the deviance is even in a 1x1 Lambda_k, so its gradient is exactly zero at a
        # bound of 0 even when that is a maximum: probe inwards before accepting it
        escaped = escape_boundary(problem, theta, reml=reml)
        if escaped is None:
            return theta, ok
        x0 = escaped
    return theta, ok


def escape_boundary(problem: LMMProblem, theta: np.ndarray, *, reml: bool,
                    hold: tuple[int, ...] = ()) -> np.ndarray | None:
    """Return a better point with a bounded entry moved off zero (``None`` if none).

    Entries in ``hold`` stay where they are.
    """
    theta = np.asarray(theta, dtype=float)
    f0 = problem.deviance(theta, reml=reml)
    # the deviance is computed to ~1e-14 relative; a very flat inner optimum (a variance
    # just above zero) lowers it by only ~1e-10 relative at the first probe
    best, fbest = None, f0 - 1e-12 * max(1.0, abs(f0))
    at_zero = np.isfinite(problem.lower) & (theta <= problem.lower + 1e-8)
    at_zero[list(hold)] = False
    for i in np.flatnonzero(at_zero):
        for h in (1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0):  # relative SDs; far out too
            cand = theta.copy()
            cand[i] = h
            fc = problem.deviance(cand, reml=reml)
            if fc < fbest:
                best, fbest = cand, fc
    return best


def better_face(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool = True, maxiter: int = 1000
) -> np.ndarray | None:
    """Return the best optimum on a face with one random-intercept SD at zero, if better.

    The profiled deviance of variance components can have a local minimum inside and
    a better one on a face where one variance is zero (e.g. few therapists with a few
    patients each: therapist or patient variance at zero). An optimiser started inside
    stops at the inner one, as lme4 does. For every scalar term (a ``1 x 1``
    ``Lambda_k``) not already at zero, the deviance is minimised with that entry held
    at zero; the best such optimum is returned when it beats ``theta`` (by more than
    rounding), else ``None``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(8), 5)
    >>> X = np.ones((40, 1))
    >>> y = rng.normal(size=8)[g] + rng.normal(size=40)
    >>> prob = LMMProblem(y, X, [RandomBlock(X, g, 8)])
    >>> better_face(prob, np.array([1.0])) is None  # the optimum is inside here
    True
    """
    theta = np.asarray(theta, dtype=float)
    f0 = problem.deviance(theta, reml=reml)
    best, fbest = None, f0 - 1e-9 * max(1.0, abs(f0))
    lo = problem.lower
    for b, sl in zip(problem.blocks, problem.theta_slices, strict=True):
        i = sl.start
        if b.q != 1 or theta[i] == 0.0:
            continue
        x0 = theta.copy()
        # the other variances at zero start inside (the deviance is even in a 1 x 1
        # Lambda_k: zero is a stationary point an optimiser would not leave)
        x0[np.isfinite(lo) & (x0 <= lo)] = 1.0
        x0[i] = 0.0
        free = np.flatnonzero(np.arange(theta.size) != i)
        if free.size:
            def f(t: np.ndarray, free: np.ndarray = free, x0: np.ndarray = x0) -> float:
                full = x0.copy()
                full[free] = t
                return problem.deviance(full, reml=reml)

            def g(t: np.ndarray, free: np.ndarray = free, x0: np.ndarray = x0) -> np.ndarray:
                full = x0.copy()
                full[free] = t
                return problem.gradient(full, reml=reml)[free]

            bounds = [(None if not np.isfinite(lo[j]) else lo[j], None) for j in free]
            start = x0[free]
            for _restart in range(5):
                x, _ = _minimize(f, g, start, bounds, "lbfgs", maxiter)
                x0[free] = x
                x0 = canonical_theta(problem, x0)
                # a first long step can land on a free zero (a stationary point): probe
                # inwards, as optimize_theta does
                escaped = escape_boundary(problem, x0, reml=reml, hold=(i,))
                if escaped is None:
                    break
                start = escaped[free]
        fx = problem.deviance(x0, reml=reml)
        if np.isfinite(fx) and fx < fbest:
            best, fbest = x0, fx
    return best


#: relative SDs of the interior grid that :func:`better_inside` tries
_INSIDE_GRID = (0.1, 0.3, 0.8, 2.0)


def better_inside(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool = True, maxiter: int = 1000
) -> np.ndarray | None:
    """Return a better optimum inside than a solution with a variance at zero, if any.

    A solution on a face can be a local optimum while a better one lies well inside
    (in no direction a probe from the face would try). For models whose random part is
    scalar terms only (random intercepts; at most three), the deviance is evaluated on
    a grid of relative SDs (``_INSIDE_GRID`` in every component); unless every grid
    point is worse than ``theta`` by 3 or more, the optimiser runs from the best one and
    its optimum is returned when it is better than ``theta`` (by more than rounding).
    Otherwise ``None``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(10), 4)
    >>> X = np.ones((40, 1))
    >>> y = 2.0 * rng.normal(size=10)[g] + rng.normal(size=40)
    >>> prob = LMMProblem(y, X, [RandomBlock(X, g, 10)])
    >>> better = better_inside(prob, np.array([0.0]))  # zero is no optimum here
    >>> bool(better[0] > 1.0)
    True
    """
    theta = np.asarray(theta, dtype=float)
    k = theta.size
    if (k > 3 or not all(b.q == 1 for b in problem.blocks)
            or not np.any(theta <= problem.lower)):
        return None
    f0 = problem.deviance(theta, reml=reml)
    tol = 1e-9 * max(1.0, abs(f0))
    grid = np.array(np.meshgrid(*[_INSIDE_GRID] * k, indexing="ij")).reshape(k, -1).T
    fg = np.array([problem.deviance(pt, reml=reml) for pt in grid])
    # a coarse grid point can be well above the optimum near it: optimise from the best
    # one unless it is far worse (the fast engine's FACE_MARGIN, deviance units)
    if not np.isfinite(fg).any() or np.nanmin(fg) >= f0 + 3.0:
        return None
    cand, _ = optimize_theta(problem, grid[int(np.nanargmin(fg))], reml=reml,
                             maxiter=maxiter)
    cand, _ = newton_polish(problem, cand, reml=reml, maxiter=min(50, maxiter))
    return cand if problem.deviance(cand, reml=reml) < f0 - tol else None


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


def _free_mask(problem: LMMProblem, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Parameters not held at their lower bound (KKT: at the bound and gradient >= 0)."""
    at_bound = np.isfinite(problem.lower) & (theta <= problem.lower + 1e-10)
    return ~(at_bound & (grad >= -1e-10))


def projected_gradient(problem: LMMProblem, theta: np.ndarray, *, reml: bool) -> np.ndarray:
    """Gradient with components of parameters held at their bound set to zero."""
    g = problem.gradient(theta, reml=reml)
    return np.where(_free_mask(problem, theta, g), g, 0.0)


def numeric_hessian(
    fun,  # noqa: ANN001
    x: np.ndarray,
    rel_step: float = 1e-5,
    floor: np.ndarray | None = None,
) -> np.ndarray:
    """Symmetrised central-difference Jacobian of a gradient function ``fun`` at ``x``.

    The step for ``x[i]`` is ``rel_step * max(floor[i], |x[i]|)``; ``floor`` defaults to 1,
    right for the scale-free ``theta`` but not for ``sigma``, whose floor must carry the
    outcome's units (else a small-scale outcome gets a far too large step).
    """
    x = np.asarray(x, dtype=float)
    k = x.size
    fl = np.ones(k) if floor is None else np.asarray(floor, dtype=float)
    H = np.empty((k, k))
    for i in range(k):
        h = rel_step * max(fl[i], abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        H[:, i] = (fun(xp) - fun(xm)) / (2 * h)
    return (H + H.T) / 2


def newton_polish(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool = True, maxiter: int = 50
) -> tuple[np.ndarray, float]:
    """Newton steps on the exact profiled criterion (bounded parameters kept feasible).

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
        free = _free_mask(problem, theta, g)
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
    theta = snap_to_boundary(problem, theta, reml=reml)
    g = projected_gradient(problem, theta, reml=reml)
    return theta, float(np.abs(g).max()) if g.size else 0.0


def snap_to_boundary(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool, tol: float = 1e-5
) -> np.ndarray:
    """Set bounded entries below ``tol`` to exactly zero when the deviance does not rise.

    An optimiser approaching a zero variance from inside can stop a hair above it; the
    estimate on the boundary is then the better (and reproducible) answer.
    """
    theta = np.array(theta, dtype=float)
    f0 = problem.deviance(theta, reml=reml)
    near = np.isfinite(problem.lower) & (theta > problem.lower) & (theta < tol)
    for i in np.flatnonzero(near):
        cand = theta.copy()
        cand[i] = 0.0
        fc = problem.deviance(cand, reml=reml)
        if fc <= f0:
            theta, f0 = cand, fc
    return theta


# -- inference ------------------------------------------------------------------------
@dataclass(frozen=True)
class SatterthwaiteSetup:
    """Precomputed pieces for Satterthwaite df of any contrast (lmerTest's method).

    Attributes
    ----------
    vcov : ndarray, shape (p, p)
        ``vcov(beta)`` at the estimate.
    jac : ndarray, shape (m, p, p)
        ``d vcov(beta) / d phi`` over the ``m`` variance parameters kept (theta entries
        not on their boundary, and sigma).
    acov : ndarray, shape (m, m)
        Asymptotic covariance of those parameters, ``2 H^{-1}`` with ``H`` the Hessian of
        the (non-profiled) deviance in ``(theta, sigma)``.
    hessian_eigmin : float
        Smallest eigenvalue of the theta block of ``H`` divided by ``max(1, largest)``
        (scale-free; ``<= 0`` means not positive definite).
    """

    vcov: np.ndarray
    jac: np.ndarray
    acov: np.ndarray
    hessian_eigmin: float


def satterthwaite_setup(
    problem: LMMProblem, theta: np.ndarray, *, reml: bool = True, boundary_tol: float = 1e-8
) -> SatterthwaiteSetup:
    """Compute once what :func:`satterthwaite_df` needs.

    Variance parameters are ``phi = (theta, sigma)`` as in lmerTest. Entries of ``theta``
    estimated on their lower bound (a zero variance) are held fixed (dropped from
    ``phi``): the deviance is flat to first order there and they carry no sampling
    variance.
    """
    ev = problem.evaluate(theta)
    sigma = float(np.sqrt(problem.sigma2(ev, reml=reml)))
    phi = np.append(np.asarray(theta, dtype=float), sigma)
    keep = np.append(
        ~(np.isfinite(problem.lower) & (np.asarray(theta) <= problem.lower + boundary_tol)), True
    )
    idx = np.flatnonzero(keep)

    def gsub(t: np.ndarray) -> np.ndarray:
        full = phi.copy()
        full[idx] = t
        return problem.gradient_vp(full, reml=reml)[idx]

    # theta is relative to sigma (scale-free); sigma's step must scale with sigma itself
    floor = np.append(np.ones(len(theta)), sigma)[idx]
    H = numeric_hessian(gsub, phi[idx], floor=floor)
    # scale-free identifiability check on the theta block (theta is relative to sigma)
    if idx.size > 1:
        w = np.linalg.eigvalsh(H[:-1, :-1])
        eigmin = float(w.min() / max(1.0, np.abs(w).max()))
    else:
        eigmin = 1.0
    try:
        acov = 2.0 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        acov = 2.0 * np.linalg.pinv(H)
    jac = problem.vcov_jacobian(np.asarray(theta, dtype=float), sigma, reml=reml)[idx]
    vcov = sigma**2 * np.linalg.inv(ev.M)
    return SatterthwaiteSetup(vcov=(vcov + vcov.T) / 2, jac=jac, acov=acov, hessian_eigmin=eigmin)


def satterthwaite_df(setup: SatterthwaiteSetup, L: np.ndarray) -> float:
    """Satterthwaite denominator df of the contrast ``L @ beta``.

    ``df = 2 (L V L')^2 / (g' A g)`` with ``g_i = L (dV/dphi_i) L'`` and ``A`` the
    asymptotic covariance of ``phi``. Returns ``inf`` when the denominator is not
    positive.

    Examples
    --------
    >>> s = SatterthwaiteSetup(np.eye(1), np.ones((1, 1, 1)), np.array([[0.2]]), 1.0)
    >>> satterthwaite_df(s, np.array([1.0]))
    10.0
    """
    L = np.asarray(L, dtype=float).ravel()
    var = float(L @ setup.vcov @ L)
    g = np.einsum("i,kij,j->k", L, setup.jac, L)
    denom = float(g @ setup.acov @ g)
    if not denom > 0:
        return float("inf")
    return 2.0 * var * var / denom


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
