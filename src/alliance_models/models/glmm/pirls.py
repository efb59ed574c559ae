"""Penalised iteratively reweighted least squares (lme4's PIRLS) on the blocked layout.

The GLMM is ``g(E[y | b]) = X beta + Z b`` with ``b = Lambda(theta) u``, ``u ~ N(0, I)``,
the same random-effects parameterisation as the Gaussian core
(:mod:`alliance_models.models.lmm.dense`): ``theta`` are lme4's ``getME(fit, "theta")``
(no residual scale: the covariance of term ``k`` is ``Lambda_k Lambda_k'``).

For fixed ``theta`` (and ``beta``, when ``u_only``) PIRLS finds the conditional mode of
``u`` by Newton steps on the penalised deviance ``sum dev_resid + ||u||^2``: each step
solves the weighted, penalised least-squares problem with the IRLS working weights ``w``
and working response, exactly as lme4's ``pwrssUpdate`` (full steps, halved while the
penalised deviance grows). The random-effect columns keep the Gaussian core's block
structure: ``A = Lambda' Z' W Z Lambda + I`` is block diagonal (one block per therapist
for ``(1 | therapist/patient)``, one per group for a single factor, one dense block for
crossed factors), so every Cholesky factor is a batched operation on small matrices.
The weighted cross-products ``Z' W Z`` and ``Z' W X`` of every block are one sparse
matrix-vector product with the weights (:class:`GLMMProblem` builds the maps once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..lmm.dense import LMMProblem, RandomBlock
from .family import Family

__all__ = ["GLMMProblem", "Mode", "PIRLSError"]

#: PIRLS stops when the relative change of the penalised deviance is below this and the
#: largest change in ``u`` below ``U_TOL`` (tight: the Laplace deviance is differenced
#: numerically for the Hessian, so it must be a smooth function of the parameters).
PDEV_TOL = 1e-14
U_TOL = 1e-13
MAXIT = 100
MAX_HALVINGS = 20


class PIRLSError(ArithmeticError):
    """PIRLS could not reduce the penalised deviance (or produced non-finite values)."""


@dataclass(frozen=True)
class Mode:
    """The conditional mode at one ``(theta, beta)``.

    Attributes
    ----------
    u : ndarray, shape (q,)
        Spherical random effects in block order (``b = Lambda u``).
    beta : ndarray, shape (p,)
    eta : ndarray, shape (n,)
        Linear predictor ``X beta + Z Lambda u``.
    ldl2 : float
        ``log |Lambda' Z' W Z Lambda + I|`` at the weights of ``eta``.
    chol_diag : ndarray, shape (q,)
        Diagonal of the Cholesky factor of that matrix (block order).
    iterations : int
    """

    u: np.ndarray
    beta: np.ndarray
    eta: np.ndarray
    ldl2: float
    chol_diag: np.ndarray
    iterations: int


class GLMMProblem:
    """One GLMM's data and block maps, ready for PIRLS at many ``(theta, beta)``.

    Parameters
    ----------
    y : ndarray, shape (n,)
        Successes (binomial) or counts (Poisson).
    n_trials : ndarray, shape (n,)
        Trials per row (binomial); ones for Poisson.
    X : ndarray, shape (n, p)
    blocks : sequence of RandomBlock
    family : Family

    Examples
    --------
    >>> from alliance_models.models.glmm.family import get_family
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(8), 5)
    >>> n = np.full(40, 6.0)
    >>> y = rng.binomial(6, 0.4, size=40).astype(float)
    >>> X = np.ones((40, 1))
    >>> prob = GLMMProblem(y, n, X, [RandomBlock(X, g, 8)], get_family("binomial"))
    >>> m = prob.pirls(np.array([0.5]), np.zeros(1), u_only=False)
    >>> bool(np.isfinite(prob.laplace(m)))
    True
    """

    def __init__(
        self,
        y: np.ndarray,
        n_trials: np.ndarray,
        X: np.ndarray,
        blocks: list[RandomBlock],
        family: Family,
    ) -> None:
        self.y = np.asarray(y, dtype=float)
        self.n_trials = np.asarray(n_trials, dtype=float)
        self.X = np.asarray(X, dtype=float)
        self.family = family
        self.layout = LMMProblem(self.y, self.X, list(blocks))
        lay = self.layout
        self.blocks = lay.blocks
        self.n, self.p = self.X.shape
        self.q = lay.q
        self.n_theta = lay.n_theta
        self.lower = lay.lower
        self.Zs = lay.Zs.tocsr()
        # Blocks of A (connected components of the random-effect columns) are stacked in
        # classes of one padded size: position q is a dummy that pads a smaller block
        # (its rows and columns of A are the identity). Padding every block to the
        # largest is used unless it costs much more than the blocks themselves (one
        # large crossed block next to many small ones), in which case sizes stay apart.
        starts = np.array([c.start for c in lay.components], dtype=np.int64)
        sizes = np.array([c.stop - c.start for c in lay.components], dtype=np.int64)
        m_all = int(sizes.max())
        if len(sizes) * m_all**3 <= 4 * int((sizes.astype(float) ** 3).sum()) + 200_000:
            class_of = np.zeros(len(sizes), dtype=np.int64)
            widths = [m_all]
        else:
            widths = [int(m) for m in np.unique(sizes)]
            class_of = np.searchsorted(widths, sizes)
        cls = np.empty(self.q, dtype=np.int64)
        row = np.empty(self.q, dtype=np.int64)
        loc = np.empty(self.q, dtype=np.int64)
        self.sizes = []
        self.class_index = []
        for c, m in enumerate(widths):
            which = np.flatnonzero(class_of == c)
            nb = which.size
            index = np.full((nb, m), self.q, dtype=np.int64)
            for r, comp in enumerate(which):
                a, k = starts[comp], sizes[comp]
                index[r, :k] = np.arange(a, a + k)
                cls[a : a + k] = c
                row[a : a + k] = r
                loc[a : a + k] = np.arange(k)
            self.sizes.append((nb, m))
            self.class_index.append(index)
        # nonzero pattern of every row of Z: K = sum_k q_k positions and values
        pos = np.column_stack([lay.cols[k][b.codes] for k, b in enumerate(self.blocks)])
        val = np.column_stack([b.Z for b in self.blocks])
        rows = np.broadcast_to(np.arange(self.n)[:, None], pos.shape)
        K = pos.shape[1]
        self._ztwz: list[sp.csr_matrix] = []
        self._zt: list[sp.csr_matrix] = []
        for c, (nb, m) in enumerate(self.sizes):
            fl, ri, vv = [], [], []
            for a in range(K):
                sel = cls[pos[:, a]] == c
                for b in range(K):
                    fl.append(row[pos[sel, a]] * m * m + loc[pos[sel, a]] * m + loc[pos[sel, b]])
                    ri.append(rows[sel, a])
                    vv.append(val[sel, a] * val[sel, b])
            self._ztwz.append(
                sp.csr_matrix(
                    (np.concatenate(vv), (np.concatenate(fl), np.concatenate(ri))),
                    shape=(nb * m * m, self.n),
                )
            )
            fl, ri, vv = [], [], []
            for a in range(K):
                sel = cls[pos[:, a]] == c
                fl.append(row[pos[sel, a]] * m + loc[pos[sel, a]])
                ri.append(rows[sel, a])
                vv.append(val[sel, a])
            self._zt.append(
                sp.csr_matrix(
                    (np.concatenate(vv), (np.concatenate(fl), np.concatenate(ri))),
                    shape=(nb * m, self.n),
                )
            )
        # where each term's group blocks sit, for the Lambda stacks
        self._lam_cache: tuple[bytes, list[np.ndarray]] | None = None
        self._lam_where = []
        for k in range(len(self.blocks)):
            idx = lay.cols[k]
            self._lam_where.append((cls[idx[:, 0]], row[idx[:, 0]], loc[idx]))

    # -- parameter maps ---------------------------------------------------------------
    def default_theta(self) -> np.ndarray:
        """lme4's start: 1 on the diagonals of every ``Lambda_k``, 0 elsewhere."""
        return self.layout.default_theta()

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Return the ``q_k x q_k`` factors ``Lambda_k``."""
        return self.layout.lambdas(np.asarray(theta, dtype=float))

    def term_values(self, v: np.ndarray, k: int) -> np.ndarray:
        """Entries of a block-order vector for term ``k``, shape (n_groups, q_k)."""
        return self.layout.term_values(v, k)

    def _lambda_stacks(self, theta: np.ndarray) -> list[np.ndarray]:
        key = np.asarray(theta, dtype=float).tobytes()
        if self._lam_cache is not None and self._lam_cache[0] == key:
            return self._lam_cache[1]
        out = [np.zeros((nb, m, m)) for nb, m in self.sizes]
        for lam, (cls, row, loc) in zip(self.lambdas(theta), self._lam_where, strict=True):
            for c in np.unique(cls):
                sel = cls == c
                out[c][row[sel][:, None, None], loc[sel][:, :, None], loc[sel][:, None, :]] = lam
        self._lam_cache = (key, out)
        return out

    def b_of_u(self, theta: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Random effects ``b = Lambda u`` (block order)."""
        b = np.zeros(self.q + 1)
        u = np.append(u, 0.0)
        for idx, lam in zip(self.class_index, self._lambda_stacks(theta), strict=True):
            b[idx] = (lam @ u[idx][:, :, None])[:, :, 0]
        return b[: self.q]

    # -- one penalised weighted least-squares solve ---------------------------------
    def _solve(
        self,
        lam_st: list[np.ndarray],
        w: np.ndarray,
        z: np.ndarray,
        beta: np.ndarray,
        u_only: bool,
    ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """Minimise ``||W^1/2 (z - X beta - Z Lambda u)||^2 + ||u||^2``.

        ``z`` is the working response (linear predictor plus working residual). With
        ``u_only`` the fixed effects stay at ``beta``. Returns ``u, beta, log|A|`` and the
        Cholesky diagonal of ``A``.
        """
        wz = w * (z - self.X @ beta) if u_only else w * z
        chol_diag = np.ones(self.q + 1)
        ldl2 = 0.0
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        u_only_parts: list[np.ndarray] = []
        if not u_only:
            wx = w[:, None] * self.X
            M = self.X.T @ wx
            rhs = self.X.T @ wz
        for c, ((nb, m), lam) in enumerate(zip(self.sizes, lam_st, strict=True)):
            ztwz = (self._ztwz[c] @ w).reshape(nb, m, m)
            lt = lam.transpose(0, 2, 1)
            a = lt @ ztwz @ lam
            a = (a + a.transpose(0, 2, 1)) / 2 + np.eye(m)
            chol = np.linalg.cholesky(a)
            d = np.diagonal(chol, axis1=1, axis2=2)
            chol_diag[self.class_index[c]] = d
            ldl2 += 2.0 * float(np.log(d).sum())
            ltr = lt @ (self._zt[c] @ wz).reshape(nb, m, 1)
            if u_only:  # one solve with A itself (cheaper than two with its factor)
                u_only_parts.append(np.linalg.solve(a, ltr)[:, :, 0])
                continue
            cu = np.linalg.solve(chol, ltr)[:, :, 0]
            ztwx = (self._zt[c] @ wx).reshape(nb, m, self.p)
            rzx = np.linalg.solve(chol, lt @ ztwx)
            M -= np.einsum("bmp,bmq->pq", rzx, rzx)
            rhs -= np.einsum("bmp,bm->p", rzx, cu)
            parts.append((chol, cu, rzx))
        if not u_only:
            M = (M + M.T) / 2
            beta = np.linalg.solve(M, rhs)
        u = np.zeros(self.q + 1)
        for c, uc in enumerate(u_only_parts):
            u[self.class_index[c]] = uc
        for c, (chol, cu, rz) in enumerate(parts):
            u[self.class_index[c]] = np.linalg.solve(
                chol.transpose(0, 2, 1), (cu - rz @ beta)[:, :, None]
            )[:, :, 0]
        return u[: self.q], beta, ldl2, chol_diag[: self.q]

    def eta(self, theta: np.ndarray, beta: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Linear predictor ``X beta + Z Lambda u``."""
        return self.X @ beta + self.Zs @ self.b_of_u(theta, u)

    def penalised_deviance(self, eta: np.ndarray, u: np.ndarray) -> float:
        """``sum dev_resid(eta) + ||u||^2``, the criterion PIRLS minimises."""
        return float(self.family.dev_resid(eta, self.y, self.n_trials).sum() + u @ u)

    def pirls(
        self,
        theta: np.ndarray,
        beta: np.ndarray,
        *,
        u_only: bool,
        u0: np.ndarray | None = None,
        eta0: np.ndarray | None = None,
    ) -> Mode:
        """Conditional mode of ``u`` (and ``beta`` unless ``u_only``) at ``theta``.

        Parameters
        ----------
        theta, beta : ndarray
        u_only : bool
            Keep ``beta`` fixed (lme4's second stage); otherwise update both (its
            ``nAGQ = 0`` first stage).
        u0 : ndarray, optional
            Start for ``u`` (default zero).
        eta0 : ndarray, optional
            Start for the linear predictor of the first weights (default: from ``u0``
            and ``beta``); the family's start values when both are missing.

        Raises
        ------
        PIRLSError
            Step halving failed to lower the penalised deviance, or values went
            non-finite.
        """
        theta = np.asarray(theta, dtype=float)
        beta = np.asarray(beta, dtype=float).copy()
        lam_st = self._lambda_stacks(theta)
        u = np.zeros(self.q) if u0 is None else np.asarray(u0, dtype=float).copy()
        if eta0 is not None:
            eta = np.asarray(eta0, dtype=float)
        elif u0 is None and not u_only:
            eta = self.family.start_eta(self.y, self.n_trials)
        else:
            eta = self.X @ beta + self.Zs @ self.b_of_u(theta, u)
        old = np.inf
        fam = self.family
        it = 0
        for it in range(1, MAXIT + 1):  # noqa: B007 - the count is reported
            w, r = fam.working(eta, self.y, self.n_trials)
            u_new, beta_new, ldl2, cdiag = self._solve(lam_st, w, eta + r, beta, u_only)
            du, db = u_new - u, beta_new - beta
            eta_new = self.X @ beta_new + self.Zs @ self.b_of_u(theta, u_new)
            pdev = self.penalised_deviance(eta_new, u_new)
            k = 0
            stalled = False
            while not (np.isfinite(pdev) and pdev <= old * (1 + 1e-15)) and np.isfinite(old):
                k += 1
                if k > MAX_HALVINGS:
                    # at the mode already (the remaining change is rounding noise)?
                    if abs(pdev - old) <= 1e-10 * max(1.0, old):
                        stalled = True
                        break
                    raise PIRLSError(
                        "PIRLS step halvings failed to reduce the penalised deviance"
                    )
                du, db = du / 2, db / 2
                u_new, beta_new = u + du, beta + db
                eta_new = self.X @ beta_new + self.Zs @ self.b_of_u(theta, u_new)
                pdev = self.penalised_deviance(eta_new, u_new)
            if stalled:
                break
            if not np.isfinite(pdev):
                raise PIRLSError("PIRLS produced a non-finite penalised deviance")
            u, beta, eta = u_new, beta_new, eta_new
            step = float(max(np.abs(du).max(initial=0.0), np.abs(db).max(initial=0.0)))
            if abs(old - pdev) <= PDEV_TOL * max(1.0, pdev) and step < U_TOL:
                break
            if step == 0.0:
                break
            old = pdev
        else:
            raise PIRLSError(f"PIRLS did not converge in {MAXIT} iterations")
        # log-determinant and Cholesky diagonal at the weights of the mode itself
        w, r = fam.working(eta, self.y, self.n_trials)
        _, _, ldl2, cdiag = self._solve(lam_st, w, eta + r, beta, True)
        return Mode(u=u, beta=beta, eta=eta, ldl2=ldl2, chol_diag=cdiag, iterations=it)

    # -- criteria ---------------------------------------------------------------------
    def laplace(self, mode: Mode) -> float:
        """Laplace deviance ``-2 sum loglik + ||u||^2 + log|L|^2`` (lme4's ``devfun``)."""
        ll = self.family.loglik(mode.eta, self.y, self.n_trials).sum()
        return float(-2.0 * ll + mode.u @ mode.u + mode.ldl2)
