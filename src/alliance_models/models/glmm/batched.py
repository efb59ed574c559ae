"""Batched Laplace fits of random-intercept GLMMs, vectorised over replicates (power).

A power run fits the same binomial (or Poisson) mixed model to thousands of simulated
data sets. For a random part of random intercepts only -- one grouping factor
(``(1 | g)``) or two nested ones (``(1 | outer/inner)`` = ``(1 | outer) +
(1 | outer:inner)``) -- :func:`fit_glmm_batch` fits a whole batch at once and finds the
same estimates as the per-replicate fit (:mod:`.laplace`, lme4's ``glmer`` with
``nAGQ = 1``): the minimum over ``(theta, beta)`` of the Laplace deviance

    ``D = -2 sum loglik(eta) + ||u||^2 + log |A|``,  ``A = Lambda' Z' W Z Lambda + I``

at the conditional mode ``u`` (``beta`` fixed, lme4's second stage), with standard
errors from ``2 H^{-1}`` of the Hessian of ``D`` in ``(theta, beta)``.

Structure
---------
With nested intercepts ``A`` is block-arrow per outer cluster: the inner intercepts are
diagonal given the weights, plus one outer intercept bordering them. The penalised IRLS
(Newton) step for the modes, ``log |A|`` and every solve with ``A`` are therefore
Schur complements per outer cluster, O(n) per replicate, computed for all clusters and
replicates together from cluster sums (rows are sorted by cluster once, so a sum is one
``np.add.reduceat``). Where the per-replicate fit differences the deviance numerically,
this engine uses its exact gradient: by the envelope theorem the penalised deviance
contributes ``-2 (d eta / d phi)' (y - n mu)`` at fixed ``u``, and ``log |A|`` is
differentiated through its explicit dependence on ``theta`` and through the weights at
the mode (``dw / d eta`` times the implicit derivative of the mode,
``d eta = J + M A^{-1} (dM' g - M' W J)`` with ``M = Z Lambda``; checked against
differences of ``D`` in the tests). Steps on ``(theta, beta)`` with step halving start
from a cheap Hessian (the ``theta`` columns differenced, the penalised fit's information
for ``beta``) carried by BFGS updates; below a relative gradient of :data:`SWITCH_TOL`
the Hessian is the central difference of the exact gradient (one column per parameter,
steps scaled by the curvature) and Newton steps run until lme4's relative gradient
``max |L^{-1} g|`` (``H = L L'``) is below :data:`NEWTON_TOL`; the standard errors come
from that Hessian.

``D`` is even in each ``theta`` entry (the sign of a standard deviation is absorbed by
the modes), so ``theta`` is unconstrained during the iteration and reported as its
absolute value; an entry converging to zero is a singular fit (lme4's ``isSingular``,
``theta < 1e-4``). Replicates are marked, never silently returned, when the fixed
effects may be separated (then checked by linear programming), PIRLS fails or the
Newton iteration does not reach the tolerance (``status``); the caller refits those
one by one (:func:`alliance_models.fit_mixed`).

Start: the fixed effects of the GLM without random effects (IRLS) and ``theta`` at
:data:`THETA_START`. The per-replicate fit starts its second stage from lme4's first
(``nAGQ = 0``) stage instead; both end at the minimum of the same criterion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ModelSpecError
from .family import get_family
from .laplace import CONV_TOL, SINGULAR_TOL
from .separation import separating_direction

__all__ = ["GLMMBatchFit", "chunk_size", "fit_glmm_batch"]

#: Newton steps stop when lme4's relative gradient is below this.
NEWTON_TOL = 1e-8
#: Replicates whose relative gradient stays above this after :data:`MAXIT` steps are
#: marked unconverged (``status = "newton"``), for a per-replicate refit.
ACCEPT_TOL = 1e-6
MAXIT = 60
#: Below this relative gradient the carried (BFGS) Hessian is replaced by a differenced one.
SWITCH_TOL = 1e-5
#: A carried Hessian is differenced again after this many steps.
REFRESH = 8
#: Largest whitened distance between the estimate and the point where its Hessian was
#: differenced.
DIST_TOL = 1e-5
#: Step of the central differences of the gradient, in units of ``1 / sqrt(H_jj)``.
FD_STEP = 1e-4
#: PIRLS stops when the largest Newton step in the modes is below this, or when a full
#: step is below QUAD_TOL.
PIRLS_TOL = 1e-11
QUAD_TOL = 1e-7
PIRLS_MAXIT = 60
MAX_HALVINGS = 30
#: Starting relative SD of every random intercept.
THETA_START = 0.5
#: ``theta`` entries below this are left out of the Hessian that gives the SEs (the
#: deviance is even in theta, so its cross-derivatives with beta vanish there; the
#: per-replicate fit holds such entries at the bound).
HELD_TOL = 1e-6


#: Default working-memory budget of one batch, in bytes.
DEFAULT_MEMORY = 64 * 2**20
#: Largest useful batch.
MAX_CHUNK = 1024


def chunk_size(n: int, p: int, n_inner: int, *, memory: int = DEFAULT_MEMORY) -> int:
    """Replicates per call of :func:`fit_glmm_batch` for a working-memory budget.

    The working set is about ``8 * (n (4 p + 30) + n_inner (2 p + 20))`` bytes per
    replicate (the design, its weighted copy and cluster sums, a few dozen vectors).

    Examples
    --------
    >>> chunk_size(1440, 6, 240)  # 30 therapists x 8 patients x 6 sessions
    98
    """
    per = 8 * (n * (4 * p + 30) + n_inner * (2 * p + 20))
    return int(max(1, min(MAX_CHUNK, memory // per)))


@dataclass(frozen=True)
class GLMMBatchFit:
    """Laplace fits of a batch of replicates (arrays over the batch).

    Attributes
    ----------
    beta, se : ndarray, shape (B, p)
        Fixed effects (link scale) and their standard errors.
    theta : ndarray, shape (B, k)
        Random-intercept standard deviations (link scale; lme4's ``theta``), outer first
        (``k`` = 1 or 2).
    loglik : ndarray, shape (B,)
        Laplace log-likelihood (with the binomial coefficients, as ``GLMMFit.loglik``).
    rel_grad : ndarray, shape (B,)
        lme4's relative gradient at the estimate.
    converged : ndarray of bool, shape (B,)
        ``rel_grad`` below lme4's ``2e-3`` (``GLMMFit.converged``).
    singular : ndarray of bool, shape (B,)
        A ``theta`` below ``1e-4``.
    status : ndarray of str, shape (B,)
        ``""`` for a fit to the tolerance; ``"separation"`` (the fixed effects separate
        the outcome: infinite estimates), ``"pirls"`` (no conditional mode) or
        ``"newton"`` (relative gradient above :data:`ACCEPT_TOL`) for replicates whose
        numbers must not be used (they are NaN).
    iterations : ndarray of int, shape (B,)
        Newton steps.
    """

    beta: np.ndarray
    se: np.ndarray
    theta: np.ndarray
    loglik: np.ndarray
    rel_grad: np.ndarray
    converged: np.ndarray
    singular: np.ndarray
    status: np.ndarray
    iterations: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """Replicates fitted to the tolerance (``status == ""``)."""
        return self.status == ""


# --- clusters ------------------------------------------------------------------------

class _Clusters:
    """Rows sorted by (outer, inner) cluster; sums and expansions along axis 1."""

    def __init__(self, inner: np.ndarray, outer: np.ndarray | None) -> None:
        inner = np.asarray(inner).reshape(-1)
        if outer is None:
            order = np.argsort(inner, kind="stable")
        else:
            outer = np.asarray(outer).reshape(-1)
            if outer.shape != inner.shape:
                raise ModelSpecError("outer and inner cluster codes need one entry per row")
            order = np.lexsort((inner, outer))
        self.order = order
        si = inner[order]
        new = np.r_[True, si[1:] != si[:-1]]
        if outer is not None:
            so = outer[order]
            new |= np.r_[True, so[1:] != so[:-1]]
        self.row_start = np.flatnonzero(new)
        self.row_count = np.diff(np.r_[self.row_start, si.size])
        self.n_inner = self.row_start.size
        if np.unique(si).size != self.n_inner:
            raise ModelSpecError(
                "the inner clusters are not nested in the outer ones (an inner code occurs "
                "under two outer codes); the batched GLMM engine fits nested intercepts")
        self.nested = outer is not None
        if outer is not None:
            oi = so[self.row_start]
            newo = np.r_[True, oi[1:] != oi[:-1]]
            self.in_start = np.flatnonzero(newo)
            self.in_count = np.diff(np.r_[self.in_start, oi.size])
            self.out_rows = np.add.reduceat(self.row_count, self.in_start)
            self.n_outer = self.in_start.size

    def sum_in(self, a: np.ndarray) -> np.ndarray:
        return np.add.reduceat(a, self.row_start, axis=1)

    def sum_out(self, a: np.ndarray) -> np.ndarray:
        """Sum over the inner clusters of each outer cluster (``a`` per inner cluster)."""
        return np.add.reduceat(a, self.in_start, axis=1)

    def rows_in(self, a: np.ndarray) -> np.ndarray:
        return np.repeat(a, self.row_count, axis=1)

    def in_out(self, a: np.ndarray) -> np.ndarray:
        return np.repeat(a, self.in_count, axis=1)

    def rows_out(self, a: np.ndarray) -> np.ndarray:
        return np.repeat(a, self.out_rows, axis=1)


@dataclass
class _Mode:
    """Conditional modes at one (theta, beta) per replicate, with ``A``'s pieces."""

    v: np.ndarray  # inner modes (B, Gi)
    u: np.ndarray | None  # outer modes (B, Gt)
    eta: np.ndarray
    mu: np.ndarray  # mean(eta)
    dev: np.ndarray  # Laplace deviance (B,)
    ok: np.ndarray  # PIRLS converged


class _Problem:
    """One batch's data (rows in cluster order) and the Laplace criterion."""

    def __init__(self, X: np.ndarray, y: np.ndarray, nt: np.ndarray, fam_name: str,
                 cl: _Clusters) -> None:
        self.X, self.y, self.nt = X, y, nt
        self.fam = get_family(fam_name)
        self.cl = cl
        self.k = 2 if cl.nested else 1
        self.p = X.shape[2]
        self.const = self.fam.log_normaliser(y, nt).sum(axis=1)

    def subset(self, idx: np.ndarray) -> _Problem:
        out = object.__new__(_Problem)
        out.X, out.y, out.nt = self.X[idx], self.y[idx], self.nt[idx]
        out.fam, out.cl, out.k, out.p = self.fam, self.cl, self.k, self.p
        out.const = self.const[idx]
        return out

    # -- the modes ------------------------------------------------------------------
    def _eta(self, off: np.ndarray, th: np.ndarray, v: np.ndarray,
             u: np.ndarray | None) -> np.ndarray:
        eta = off + self.cl.rows_in(th[:, :1] * v)
        if u is not None:
            eta += self.cl.rows_out(th[:, 1:2] * u)
        return eta

    def _pdev(self, eta: np.ndarray, mu: np.ndarray, v: np.ndarray, u: np.ndarray | None,
              rows: np.ndarray | None = None) -> np.ndarray:
        """Penalised deviance ``-2 sum kernel + ||u||^2`` (``mu = mean(eta)``)."""
        y, nt = (self.y, self.nt) if rows is None else (self.y[rows], self.nt[rows])
        out = -2.0 * self.fam.loglik_kernel(eta, y, nt, mu).sum(axis=1)
        out += (v * v).sum(axis=1)
        if u is not None:
            out += (u * u).sum(axis=1)
        return out

    def _arrow(self, th: np.ndarray, Wp: np.ndarray) -> tuple[np.ndarray, ...]:
        """``A``'s inner diagonal, border and outer Schur complement (per cluster)."""
        tI = th[:, :1]
        App = 1.0 + tI * tI * Wp
        if not self.cl.nested:
            return App, None, None
        tO = th[:, 1:2]
        Atp = tI * tO * Wp
        St = 1.0 + tO * tO * self.cl.sum_out(Wp) - self.cl.sum_out(Atp * Atp / App)
        return App, Atp, St

    def _solve(self, App: np.ndarray, Atp: np.ndarray | None, St: np.ndarray | None,
               rv: np.ndarray, ru: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Solve ``A (zv, zu) = (rv, ru)``; ``rv``, ``ru`` may have a trailing axis."""
        if Atp is None:
            return rv / (App if rv.ndim == 2 else App[..., None]), None
        if rv.ndim == 3:
            App, Atp, St = App[..., None], Atp[..., None], St[..., None]
        zu = (ru - self.cl.sum_out(Atp * rv / App)) / St
        zv = (rv - Atp * self.cl.in_out(zu)) / App
        return zv, zu

    def mode(self, th: np.ndarray, beta: np.ndarray, v0: np.ndarray,
             u0: np.ndarray | None) -> _Mode:
        """PIRLS (Newton with step halving) for the modes at ``beta`` fixed.

        A replicate stops after a full step below :data:`QUAD_TOL` (Newton converges
        quadratically, so the error left is of the order of its square) or any step
        below :data:`PIRLS_TOL`.
        """
        cl, fam = self.cl, self.fam
        off = np.matmul(self.X, beta[:, :, None])[:, :, 0]
        v, u = v0.copy(), None if u0 is None else u0.copy()
        tI = th[:, :1]
        tO = th[:, 1:2] if cl.nested else None
        eta = self._eta(off, th, v, u)
        with np.errstate(over="ignore", invalid="ignore"):
            mu = fam.mean(eta)
            old = self._pdev(eta, mu, v, u)
        ok = np.zeros(th.shape[0], dtype=bool)
        active = np.arange(th.shape[0])
        for _ in range(PIRLS_MAXIT):
            whole = active.size == th.shape[0]
            sel = slice(None) if whole else active
            e, ya, nta = eta[sel], self.y[sel], self.nt[sel]
            g, w, _ = fam.derivatives(e, ya, nta, mu[sel])
            Wp, Gp = cl.sum_in(w), cl.sum_in(g)
            ta = th[sel]
            App, Atp, St = self._arrow(ta, Wp)
            va = v[sel]
            rv = tI[sel] * Gp - va
            ru = None
            ua = None
            if cl.nested:
                ua = u[sel]
                ru = tO[sel] * cl.sum_out(Gp) - ua
            dv, du = self._solve(App, Atp, St, rv, ru)
            step = np.abs(dv).max(axis=1)
            if du is not None:
                step = np.maximum(step, np.abs(du).max(axis=1))
            # full steps first; halved for the replicates whose criterion grew
            cv, cu = va + dv, None if du is None else ua + du
            ce = self._eta(off[sel], ta, cv, cu)
            with np.errstate(over="ignore", invalid="ignore"):
                cm = fam.mean(ce)
                cp = self._pdev(ce, cm, cv, cu, None if whole else active)
            pdev_a = old[sel]
            t = np.ones(active.size)
            bad = np.flatnonzero(~(np.isfinite(cp) & (cp <= pdev_a * (1 + 1e-15) + 1e-12)))
            for _h in range(MAX_HALVINGS):
                if bad.size == 0:
                    break
                t[bad] /= 2
                hv = va[bad] + t[bad, None] * dv[bad]
                hu = None if du is None else ua[bad] + t[bad, None] * du[bad]
                he = self._eta(off[active[bad]], ta[bad], hv, hu)
                with np.errstate(over="ignore", invalid="ignore"):
                    hm = fam.mean(he)
                    hp = self._pdev(he, hm, hv, hu, active[bad])
                good = np.isfinite(hp) & (hp <= pdev_a[bad] * (1 + 1e-15) + 1e-12)
                gi = bad[good]
                cv[gi], ce[gi], cm[gi], cp[gi] = hv[good], he[good], hm[good], hp[good]
                if cu is not None:
                    cu[gi] = hu[good]
                bad = bad[~good]
            if bad.size:  # no decrease at all: keep the old values (at the mode already)
                cv[bad], ce[bad], cm[bad], cp[bad] = va[bad], e[bad], mu[sel][bad], pdev_a[bad]
                if cu is not None:
                    cu[bad] = ua[bad]
                t[bad] = 0.0
            done = ((t == 1.0) & (step < QUAD_TOL)) | (step * t < PIRLS_TOL)
            v[sel], eta[sel], mu[sel], old[sel] = cv, ce, cm, cp
            if u is not None:
                u[sel] = cu
            ok[active[done]] = True
            active = active[~done]
            if active.size == 0:
                break
        dev, w = self._deviance(th, v, u, eta, mu)
        return _Mode(v=v, u=u, eta=eta, mu=mu, dev=dev, ok=ok & np.isfinite(dev))

    def _deviance(self, th: np.ndarray, v: np.ndarray, u: np.ndarray | None,
                  eta: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, w, _ = self.fam.derivatives(eta, self.y, self.nt, mu)
        App, _, St = self._arrow(th, self.cl.sum_in(w))
        with np.errstate(invalid="ignore", divide="ignore"):
            ld = np.log(App).sum(axis=1)
            if St is not None:
                ld += np.log(St).sum(axis=1)
            return self._pdev(eta, mu, v, u) + ld - 2.0 * self.const, w

    def beta_information(self, th: np.ndarray, m: _Mode) -> np.ndarray:
        """``2 X' (W - W M A^{-1} M' W) X`` at the modes (the penalised fit's beta block)."""
        cl = self.cl
        _, w, _ = self.fam.derivatives(m.eta, self.y, self.nt, m.mu)
        App, Atp, St = self._arrow(th, cl.sum_in(w))
        wX = w[:, :, None] * self.X
        SX = cl.sum_in(wX)
        rv = th[:, :1, None] * SX
        ru = th[:, 1:2, None] * cl.sum_out(SX) if cl.nested else None
        zv, zu = self._solve(App, Atp, St, rv, ru)
        info = np.matmul(wX.transpose(0, 2, 1), self.X)
        info -= np.matmul(rv.transpose(0, 2, 1), zv)
        if zu is not None:
            info -= np.matmul(ru.transpose(0, 2, 1), zu)
        return 2.0 * info

    # -- the exact gradient of the Laplace deviance -----------------------------------
    def gradient(self, th: np.ndarray, m: _Mode) -> np.ndarray:
        """Gradient of ``D`` in ``(theta, beta)`` at the modes ``m`` (see module text)."""
        cl = self.cl
        g, w, dw = self.fam.derivatives(m.eta, self.y, self.nt, m.mu)
        Wp, Gp = cl.sum_in(w), cl.sum_in(g)
        App, Atp, St = self._arrow(th, Wp)
        tI = th[:, :1]
        v, u = m.v, m.u
        # inverse of A: diagonal of the inner block, border, outer diagonal
        if cl.nested:
            tO = th[:, 1:2]
            St_in = cl.in_out(St)
            Ctt = 1.0 / St
            Ctp = -Atp / (App * St_in)
            Cpp = 1.0 / App + Atp * Atp / (App * App * St_in)
            h = tI * tI * Cpp + tO * tO * cl.in_out(Ctt) + 2.0 * tI * tO * Ctp
        else:
            Cpp = 1.0 / App
            h = tI * tI * Cpp
        a = dw * cl.rows_in(h)  # d log|A| / d eta through the weights, per row
        c = a - 2.0 * g
        Sa = cl.sum_in(a)
        za_v, za_u = self._solve(App, Atp, St, tI * Sa,
                                 th[:, 1:2] * cl.sum_out(Sa) if cl.nested else None)
        # M' W J for the fixed-effect columns J = X: (inner, outer) parts
        SX = cl.sum_in(w[:, :, None] * self.X)  # (B, Gi, p)
        mwx = np.einsum("bg,bgp->bp", za_v * tI, SX)
        if cl.nested:
            mwx += np.einsum("bg,bgp->bp", za_u * th[:, 1:2], cl.sum_out(SX))
        grad_beta = np.matmul(c[:, None, :], self.X)[:, 0, :] - mwx
        # theta_inner: J = v[inner]; M' W J = (tI Wp v, tO sum_out(Wp v)); dM' g = (Gp, 0)
        Sc = cl.sum_in(c)
        Wv = Wp * v
        gI = (Sc * v).sum(axis=1) - (za_v * (tI * Wv - Gp)).sum(axis=1)
        gI += (2.0 * tI * Cpp * Wp).sum(axis=1)
        if not cl.nested:
            return np.column_stack([gI, grad_beta])
        tO = th[:, 1:2]
        gI -= (za_u * tO * cl.sum_out(Wv)).sum(axis=1)
        gI += (2.0 * tO * Ctp * Wp).sum(axis=1)
        # theta_outer: J = u[outer]; M' W J = (tI Wp u_t, tO Wt u); dM' g = (0, Gt)
        Wt = cl.sum_out(Wp)
        Gt = cl.sum_out(Gp)
        u_in = cl.in_out(u)
        gO = (cl.sum_out(Sc) * u).sum(axis=1)
        gO -= (za_v * tI * Wp * u_in).sum(axis=1)
        gO -= (za_u * (tO * Wt * u - Gt)).sum(axis=1)
        gO += (2.0 * tO * Ctt * Wt).sum(axis=1) + (2.0 * tI * Ctp * Wp).sum(axis=1)
        return np.column_stack([gI, gO, grad_beta])


# --- the optimisation ----------------------------------------------------------------

def _glm_start(prob: _Problem, maxit: int = 30) -> np.ndarray:
    """Return the fixed effects of the GLM without random effects (IRLS, all replicates)."""
    fam = prob.fam
    X = prob.X
    B, _, p = X.shape
    eta = fam.start_eta(prob.y, np.where(prob.nt > 0, prob.nt, 1.0))
    beta = np.zeros((B, p))
    for it in range(maxit):
        g, w, _ = fam.derivatives(eta, prob.y, prob.nt)
        XtW = X * w[:, :, None]
        M = np.einsum("bnp,bnq->bpq", XtW, X)
        if it == 0:  # from the start eta: weighted least squares on the working response
            z = eta + g / np.where(w > 0, w, 1.0)
            rhs = np.einsum("bnp,bn->bp", XtW, z)
            new = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
        else:
            new = beta + np.linalg.solve(M, np.einsum("bnp,bn->bp", X, g)[:, :, None])[:, :, 0]
        done = np.abs(new - beta).max() < 1e-10
        beta = new
        eta = np.einsum("bnp,bp->bn", X, beta)
        if done:
            break
    return beta


def _rel_grad(g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """lme4's ``max |L^{-1} g|`` per replicate (``inf`` where ``H`` is not PD)."""
    out = np.full(g.shape[0], np.inf)
    try:
        L = np.linalg.cholesky(H)
        out[:] = np.abs(np.linalg.solve(L, g[:, :, None])[:, :, 0]).max(axis=1)
        return out
    except np.linalg.LinAlgError:
        pass
    for b in range(g.shape[0]):
        try:
            L = np.linalg.cholesky(H[b])
        except np.linalg.LinAlgError:
            continue
        out[b] = float(np.abs(np.linalg.solve(L, g[b])).max())
    return out


class _Point:
    """Parameters, modes, deviance and gradient of the active replicates."""

    def __init__(self, prob: _Problem, x: np.ndarray, m: _Mode, grad: np.ndarray) -> None:
        self.prob, self.x, self.m, self.grad = prob, x, m, grad

    @classmethod
    def at(cls, prob: _Problem, x: np.ndarray, v0: np.ndarray,
           u0: np.ndarray | None) -> _Point:
        th = x[:, : prob.k]
        m = prob.mode(th, x[:, prob.k:], v0, u0)
        with np.errstate(all="ignore"):
            grad = prob.gradient(th, m)
        return cls(prob, x, m, grad)


def _hessian(pt: _Point, scale: np.ndarray, *, full: bool = True) -> np.ndarray:
    """Central differences of the exact gradient, one column per parameter.

    With ``full=False`` only the ``theta`` columns (and rows) are differenced and the
    ``beta`` block is the information of the penalised fit at the modes
    (:meth:`_Problem.beta_information`, which leaves out the second derivatives of
    ``log |A|``): a cheap start for the quasi-Newton steps.
    """
    prob, x = pt.prob, pt.x
    B, d = x.shape
    H = np.empty((B, d, d))
    for j in range(d if full else prob.k):
        hj = FD_STEP * scale[:, j]
        cols = []
        for sgn in (1.0, -1.0):
            xx = x.copy()
            xx[:, j] += sgn * hj
            cols.append(_Point.at(prob, xx, pt.m.v, pt.m.u).grad)
        H[:, :, j] = (cols[0] - cols[1]) / (2.0 * hj[:, None])
    if not full:
        k = prob.k
        H[:, :k, k:] = H[:, k:, :k].transpose(0, 2, 1)
        H[:, k:, k:] = prob.beta_information(x[:, :k], pt.m)
    return (H + H.transpose(0, 2, 1)) / 2


def _newton_step(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``-H^{-1} g`` with ``H``'s eigenvalues made positive (a descent direction)."""
    w, V = np.linalg.eigh(H)
    wmax = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    w = np.maximum(np.abs(w), 1e-8 * wmax)
    return -np.einsum("bij,bj->bi", V, np.einsum("bji,bj->bi", V, g) / w)


def fit_glmm_batch(
    X: np.ndarray,
    Y: np.ndarray,
    inner: np.ndarray,
    outer: np.ndarray | None = None,
    *,
    trials: np.ndarray | float = 1.0,
    mask: np.ndarray | None = None,
    family: str = "binomial",
) -> GLMMBatchFit:
    """Fit a random-intercept binomial or Poisson GLMM to a batch of replicates (Laplace).

    Parameters
    ----------
    X : ndarray, shape (B, n, p) or (n, p)
        Fixed-effects design of every replicate (or one shared by all).
    Y : ndarray, shape (B, n)
        Successes (binomial) or counts (Poisson).
    inner : ndarray of int, shape (n,)
        Cluster codes of the single random intercept, or of the inner one of a nested
        pair (globally unique codes, such as a patient's).
    outer : ndarray of int, shape (n,), optional
        Codes of the outer cluster of a nested pair (``(1 | outer/inner)``); every inner
        cluster must lie in one outer cluster.
    trials : float or ndarray broadcastable to (B, n), default 1
        Binomial trials per row (ignored for Poisson).
    mask : ndarray of bool, shape (B, n), optional
        Rows to use (dropout); other rows are left out.
    family : {"binomial", "poisson"}

    Returns
    -------
    GLMMBatchFit

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(20), 5)
    >>> X = np.column_stack([np.ones(100), rng.normal(size=100)])
    >>> eta = 0.2 + 0.5 * X[:, 1] + rng.normal(0, 0.5, 20)[g]
    >>> Y = rng.binomial(6, 1 / (1 + np.exp(-eta)), size=(3, 100)).astype(float)
    >>> bf = fit_glmm_batch(X, Y, g, trials=6.0)
    >>> bf.beta.shape, bool(bf.ok.all())
    ((3, 2), True)
    """
    if family not in ("binomial", "poisson"):
        raise ModelSpecError(f"family={family!r}: the batched engine fits 'binomial' or 'poisson'")
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[None, :]
    B, n = Y.shape
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        X = np.broadcast_to(X, (B, *X.shape))
    if X.shape[:2] != (B, n):
        raise ModelSpecError(f"X has shape {X.shape}; expected ({B}, {n}, p) to match Y")
    nt = (np.broadcast_to(np.asarray(trials, dtype=float), (B, n)).copy()
          if family == "binomial" else np.ones((B, n)))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        nt = np.where(mask, nt, 0.0)
        Y = np.where(mask, Y, 0.0)
    cl = _Clusters(inner, outer)
    o = cl.order
    prob = _Problem(np.ascontiguousarray(X[:, o]), Y[:, o], nt[:, o], family, cl)
    k, p = prob.k, prob.p

    status = np.full(B, "", dtype=object)
    sep = _separated(prob)
    status[sep] = "separation"
    beta = np.full((B, p), np.nan)
    se = np.full((B, p), np.nan)
    theta = np.full((B, k), np.nan)
    loglik = np.full(B, np.nan)
    rel = np.full(B, np.inf)
    iters = np.zeros(B, dtype=np.int64)

    idx = np.flatnonzero(~sep)
    if idx.size:
        sub = prob.subset(idx)
        with np.errstate(all="ignore"):
            x0 = np.column_stack([np.full((idx.size, k), THETA_START), _glm_start(sub)])
        v0 = np.zeros((idx.size, cl.n_inner))
        u0 = np.zeros((idx.size, cl.n_outer)) if cl.nested else None
        res = _optimise(sub, x0, v0, u0)
        xb, Hb, devb, relb, itb, stb = res
        theta[idx] = np.abs(xb[:, :k])[:, ::-1]  # outer first
        beta[idx] = xb[:, k:]
        loglik[idx] = -0.5 * devb
        rel[idx] = relb
        iters[idx] = itb
        status[idx] = stb
        se[idx] = _standard_errors(xb, Hb, k)
    bad = status != ""
    beta[bad] = se[bad] = theta[bad] = np.nan
    loglik[bad] = np.nan
    with np.errstate(invalid="ignore"):
        singular = ~bad & (theta < SINGULAR_TOL).any(axis=1)
    return GLMMBatchFit(beta=beta, se=se, theta=theta, loglik=loglik, rel_grad=rel,
                        converged=~bad & (rel < CONV_TOL), singular=singular,
                        status=status.astype(str), iterations=iters)


def _separated(prob: _Problem) -> np.ndarray:
    """Replicates whose fixed effects separate the outcome (checked where possible).

    Separation needs a direction ``d`` with ``x_i' d = 0`` on every row strictly
    between the extremes, so full column rank of ``X`` on those rows rules it out
    (one Gram matrix per replicate); the rest go to the linear program of
    :func:`~alliance_models.models.glmm.separation.separating_direction`.
    """
    used = prob.nt > 0
    if prob.fam.name == "binomial":
        mid = used & (prob.y > 0) & (prob.y < prob.nt)
    else:
        mid = used & (prob.y > 0)
    Xm = prob.X * mid[:, :, None]
    G = np.einsum("bnp,bnq->bpq", Xm, Xm)
    with np.errstate(all="ignore"):
        ev = np.linalg.eigvalsh(G)
    full = ev[:, 0] > 1e-9 * np.maximum(ev[:, -1], 1e-300)
    out = np.zeros(prob.X.shape[0], dtype=bool)
    for b in np.flatnonzero(~full):
        r = used[b]
        out[b] = separating_direction(prob.X[b][r], prob.y[b][r], prob.nt[b][r],
                                      prob.fam.name) is not None
    return out


def _optimise(prob: _Problem, x: np.ndarray, v0: np.ndarray, u0: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                         np.ndarray]:
    """Quasi-Newton, then Newton steps on ``(theta, beta)`` (the active set shrinks).

    The Hessian is differenced at the start; BFGS updates carry it while the relative
    gradient is above :data:`SWITCH_TOL`; below, it is differenced again at the current
    point and Newton steps with it finish. A replicate is done when the relative
    gradient is below :data:`NEWTON_TOL` with a differenced Hessian from within
    :data:`DIST_TOL` (whitened distance) of the estimate, so its SEs are those of the
    estimate.
    """
    B, d = x.shape
    k = prob.k
    x_out = x.copy()
    H_out = np.full((B, d, d), np.nan)
    dev_out = np.full(B, np.nan)
    rel_out = np.full(B, np.inf)
    it_out = np.zeros(B, dtype=np.int64)
    st_out = np.full(B, "newton", dtype=object)
    act = np.arange(B)
    pt = _Point.at(prob, x, v0, u0)
    # curvature scales: theta from a unit guess, beta from the GLM information
    _, w, _ = prob.fam.derivatives(pt.m.eta, prob.y, prob.nt, pt.m.mu)
    info = 2.0 * np.einsum("bn,bnp->bp", w, prob.X * prob.X)
    scale = np.column_stack([np.full((B, k), 0.1), 1.0 / np.sqrt(np.maximum(info, 1e-12))])
    bad = ~pt.m.ok | ~np.isfinite(pt.grad).all(axis=1)
    if bad.any():
        st_out[bad] = "pirls"
        keep = ~bad
        act, pt, scale = act[keep], _sub_point(pt, keep), scale[keep]
    nA = act.size
    H = np.zeros((nA, d, d))
    fd_dist = np.full(nA, np.inf)  # whitened distance from where H was differenced
    need = np.zeros(nA, dtype=bool)  # a full differenced Hessian at this point
    cheap = np.ones(nA, dtype=bool)  # a start Hessian (theta columns differenced)
    rel = np.full(nA, np.inf)
    age = np.zeros(nA, dtype=np.int64)  # steps since the Hessian was formed
    for it in range(1, MAXIT + 1):
        if act.size == 0:
            break
        for which, full in ((need, True), (cheap, False)):
            if which.any():
                sub = _sub_point(pt, which)
                with np.errstate(all="ignore"):
                    Hn = _hessian(sub, scale[which], full=full)
                H[which] = np.where(np.isfinite(Hn).all(axis=(1, 2))[:, None, None], Hn,
                                    np.nan)
                fd_dist[which] = 0.0 if full else np.inf
                age[which] = 0
        finite = np.isfinite(H).all(axis=(1, 2))
        rel = np.where(finite, _rel_grad(pt.grad, np.where(finite[:, None, None], H,
                                                             np.eye(d))), np.inf)
        # below SWITCH_TOL a carried (BFGS) Hessian is differenced again at this point;
        # one that is not positive definite or carried for REFRESH steps is replaced by
        # a start Hessian there
        need = finite & (fd_dist > DIST_TOL) & (rel < SWITCH_TOL)
        cheap = (finite & ~need & (fd_dist > DIST_TOL) & (age >= 1)
                 & (~np.isfinite(rel) | (age > REFRESH)))
        age += 1
        done = finite & (rel < NEWTON_TOL) & (fd_dist <= DIST_TOL)
        fail = ~finite
        it_out[act] = it
        rel_out[act] = rel
        x_out[act], H_out[act], dev_out[act] = pt.x, H, pt.m.dev
        st_out[act[done]] = ""
        st_out[act[fail]] = "pirls"
        keep = ~(done | fail)
        if not keep.any():
            act = act[:0]
            break
        act, pt, H, scale = act[keep], _sub_point(pt, keep), H[keep], scale[keep]
        fd_dist, need, rel, age = fd_dist[keep], need[keep], rel[keep], age[keep]
        cheap = cheap[keep]
        move = ~(need | cheap)
        if not move.any():
            continue
        mv = _sub_point(pt, move)
        Hm = H[move]
        step = _newton_step(Hm, mv.grad)
        res = _line_search(mv, step)
        new, stalled = res
        s_ = new.x - mv.x
        y_ = new.grad - mv.grad
        newton = (rel[move] < SWITCH_TOL) & (fd_dist[move] <= DIST_TOL)
        # whitened length of the step under the current Hessian
        with np.errstate(all="ignore"):
            sHs = np.einsum("bi,bij,bj->b", s_, Hm, s_)
            sy = np.einsum("bi,bi->b", s_, y_)
            Hs = np.einsum("bij,bj->bi", Hm, s_)
            upd = (~newton & (sy > 1e-12 * np.maximum(np.abs(sHs), 1e-300)) & (sHs > 0))
            Hb = (Hm - np.einsum("bi,bj->bij", Hs, Hs) / np.where(upd, sHs, 1.0)[:, None, None]
                  + np.einsum("bi,bj->bij", y_, y_) / np.where(upd, sy, 1.0)[:, None, None])
        Hm = np.where(upd[:, None, None], Hb, Hm)
        dist = fd_dist[move]
        dist = np.where(newton, dist + np.sqrt(np.abs(sHs)), np.where(upd, np.inf, dist))
        idx = np.flatnonzero(move)
        H[idx], fd_dist[idx] = Hm, dist
        scale[idx] = 1.0 / np.sqrt(np.maximum(np.abs(np.diagonal(Hm, axis1=1, axis2=2)),
                                              1e-12))
        pt = _merge_point(pt, idx, new)
        if stalled.any():
            # no decrease along the step: as good as it gets; differenced Hessian needed
            si = idx[stalled]
            sel = rel[si] < ACCEPT_TOL
            st_out[act[si[sel]]] = ""
            st_out[act[si[~sel]]] = "newton"
            need[si] = fd_dist[si] > DIST_TOL  # recompute the Hessian once if carried
            drop = np.zeros(act.size, dtype=bool)
            drop[si] = ~need[si]
            if drop.any():
                keep = ~drop
                act, pt, H, scale = act[keep], _sub_point(pt, keep), H[keep], scale[keep]
                fd_dist, need, rel, age = fd_dist[keep], need[keep], rel[keep], age[keep]
                cheap = cheap[keep]
    ok = st_out == ""
    st_out[~ok & (rel_out < ACCEPT_TOL)] = ""
    return x_out, H_out, dev_out, rel_out, it_out, st_out


def _merge_point(pt: _Point, idx: np.ndarray, new: _Point) -> _Point:
    """``pt`` with the replicates ``idx`` replaced by ``new``'s."""
    x, grad = pt.x.copy(), pt.grad.copy()
    m = pt.m
    v, eta, mu, dev = m.v.copy(), m.eta.copy(), m.mu.copy(), m.dev.copy()
    u = None if m.u is None else m.u.copy()
    x[idx], grad[idx], v[idx], eta[idx], mu[idx], dev[idx] = (
        new.x, new.grad, new.m.v, new.m.eta, new.m.mu, new.m.dev)
    if u is not None:
        u[idx] = new.m.u
    return _Point(pt.prob, x, _Mode(v=v, u=u, eta=eta, mu=mu, dev=dev, ok=m.ok), grad)


def _sub_point(pt: _Point, keep: np.ndarray) -> _Point:
    idx = np.flatnonzero(keep)
    m = pt.m
    mm = _Mode(v=m.v[idx], u=None if m.u is None else m.u[idx], eta=m.eta[idx],
               mu=m.mu[idx], dev=m.dev[idx], ok=m.ok[idx])
    return _Point(pt.prob.subset(idx), pt.x[idx], mm, pt.grad[idx])


def _line_search(pt: _Point, step: np.ndarray) -> tuple[_Point, np.ndarray] | None:
    """Step halving until the deviance does not grow; returns the new point, stalled."""
    B = pt.x.shape[0]
    t = np.ones(B)
    x_new = pt.x.copy()
    v_new, u_new = pt.m.v.copy(), None if pt.m.u is None else pt.m.u.copy()
    eta_new, dev_new, mu_new = pt.m.eta.copy(), pt.m.dev.copy(), pt.m.mu.copy()
    grad_new = pt.grad.copy()
    todo = np.arange(B)
    accepted = np.zeros(B, dtype=bool)
    for _ in range(MAX_HALVINGS):
        sub = pt.prob.subset(todo)
        cand_x = pt.x[todo] + t[todo, None] * step[todo]
        with np.errstate(all="ignore"):
            cp = _Point.at(sub, cand_x, pt.m.v[todo],
                           None if pt.m.u is None else pt.m.u[todo])
        f0 = pt.m.dev[todo]
        good = (cp.m.ok & np.isfinite(cp.m.dev) & np.isfinite(cp.grad).all(axis=1)
                & (cp.m.dev <= f0 + 1e-10 * np.maximum(1.0, np.abs(f0))))
        gi = todo[good]
        x_new[gi], v_new[gi], eta_new[gi] = cand_x[good], cp.m.v[good], cp.m.eta[good]
        mu_new[gi] = cp.m.mu[good]
        dev_new[gi], grad_new[gi] = cp.m.dev[good], cp.grad[good]
        if u_new is not None:
            u_new[gi] = cp.m.u[good]
        accepted[gi] = True
        todo = todo[~good]
        if todo.size == 0:
            break
        t[todo] /= 2
    m = _Mode(v=v_new, u=u_new, eta=eta_new, mu=mu_new, dev=dev_new,
              ok=np.ones(B, dtype=bool))
    return _Point(pt.prob, x_new, m, grad_new), ~accepted


def _standard_errors(x: np.ndarray, H: np.ndarray, k: int) -> np.ndarray:
    """``sqrt(diag)`` of the beta block of ``2 H^{-1}`` (held theta entries left out)."""
    B, d = x.shape
    p = d - k
    se = np.full((B, p), np.nan)
    held = np.abs(x[:, :k]) < HELD_TOL
    for pattern in {tuple(r) for r in held}:
        rows = np.flatnonzero((held == np.array(pattern)).all(axis=1))
        free = np.r_[~np.array(pattern, dtype=bool), np.ones(p, dtype=bool)]
        Hf = H[rows][:, free][:, :, free]
        ok = np.isfinite(Hf).all(axis=(1, 2))
        if not ok.any():
            continue
        r_ok = rows[ok]
        try:
            V = 2.0 * np.linalg.inv(Hf[ok])
        except np.linalg.LinAlgError:
            continue
        dv = np.diagonal(V, axis1=1, axis2=2)[:, -p:]
        with np.errstate(invalid="ignore"):
            se[r_ok] = np.where(dv > 0, np.sqrt(dv), np.nan)
    return se
