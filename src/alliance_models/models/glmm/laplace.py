"""The GLMM criterion over ``(theta, beta)`` and its optimisation (lme4's two stages).

:class:`Criterion` evaluates the Laplace (``n_agq = 1``) or adaptive Gauss-Hermite
(``n_agq > 1``) deviance at ``x = (theta, beta)``: PIRLS finds the conditional mode of
``u`` with ``beta`` fixed (warm-started from the mode at the best point so far) and the
deviance is read off it. :func:`optimize` follows ``glmer``:

1. **Stage 1** (lme4's ``nAGQ = 0``): ``beta`` is updated inside PIRLS with ``u`` and the
   Laplace deviance is minimised over ``theta`` alone (bounded L-BFGS-B, then bounded
   Powell when that fails), from lme4's start (identity ``Lambda``).
2. **Stage 2**: the deviance is minimised over ``(theta, beta)`` jointly from stage 1's
   estimate by Newton steps on central-difference derivatives in whitened coordinates
   until the relative gradient ``max |L^{-1} g|`` (``H = L L'``, lme4's convergence
   check) is below ``NEWTON_TOL``; when they stall above ``RETRY_TOL``, bounded L-BFGS-B (with
   central-difference gradients) runs first and Newton steps polish its result.

:func:`deriv12` is lme4's central-difference gradient and Hessian. lme4's default
standard errors come from ``2 H^{-1}`` of the finite-difference Hessian of the deviance
in ``(theta, beta)`` (``vcov(fit, use.hessian = TRUE)``; absolute steps ``1e-4``); ours
come from the same Hessian, differenced in the whitened coordinates of the last Newton
step (the two agree to the differencing error, ~1e-6 relative in the SEs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize as sopt

from .agq import agq_deviance
from .pirls import GLMMProblem, Mode, PIRLSError

__all__ = ["Criterion", "Optimum", "deriv12", "optimize", "relative_gradient"]

#: lme4's step of the finite-difference derivatives (``deriv12(delta = 1e-4)``); used
#: here for the axis-wise second differences that start the whitening.
DELTA = 1e-4
#: Newton steps stop when lme4's relative gradient is below this.
NEWTON_TOL = 1e-8
#: Step of the Newton derivatives in whitened coordinates (a unit moves the deviance by
#: about 1/2 there, so 1e-3 is far above the deviance's rounding and far below its
#: curvature scale).
WHITE_DELTA = 1e-3
#: Above this relative gradient after Newton steps from stage 1, L-BFGS-B runs first.
RETRY_TOL = 1e-5
#: lme4's ``check.conv.grad`` tolerance: a larger relative gradient is a warning.
CONV_TOL = 2e-3
#: lme4's ``isSingular`` tolerance on bounded theta entries.
SINGULAR_TOL = 1e-4


class Criterion:
    """Deviance of one GLMM as a function of ``x = (theta, beta)``.

    Parameters
    ----------
    problem : GLMMProblem
    n_agq : int
        1 for the Laplace approximation, more for adaptive Gauss-Hermite quadrature
        (one scalar random-effects term only).
    """

    def __init__(self, problem: GLMMProblem, n_agq: int = 1) -> None:
        self.problem = problem
        self.n_agq = n_agq
        self.k = problem.n_theta
        self.best_f = np.inf
        self.best_u = np.zeros(problem.q)
        self.n_eval = 0

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` and ``beta`` parts of ``x``."""
        x = np.asarray(x, dtype=float)
        return x[: self.k], x[self.k :]

    def mode(self, x: np.ndarray) -> Mode:
        """PIRLS mode of ``u`` at ``x`` (``beta`` fixed)."""
        theta, beta = self.split(x)
        return self.problem.pirls(theta, beta, u_only=True, u0=self.best_u)

    def deviance_at(self, x: np.ndarray, mode: Mode) -> float:
        """Return the criterion value from a mode computed at ``x``."""
        if self.n_agq == 1:
            return self.problem.laplace(mode)
        return agq_deviance(self.problem, self.split(x)[0], mode, self.n_agq)

    def __call__(self, x: np.ndarray) -> float:
        """Return the deviance at ``x`` (``inf`` where PIRLS fails)."""
        self.n_eval += 1
        try:
            # far from the optimum exp() can overflow: the deviance is then inf and the
            # point is rejected, which is all that matters
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                m = self.mode(x)
                f = self.deviance_at(x, m)
        except (PIRLSError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        if np.isfinite(f) and f < self.best_f:
            self.best_f, self.best_u = f, m.u
        return f


def deriv12(
    fun: Callable[[np.ndarray], float], x: np.ndarray, fx: float, delta: float = DELTA
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian of ``fun`` at ``x`` (lme4's ``deriv12``).

    Examples
    --------
    >>> g, H = deriv12(lambda v: float(v @ v + v[0] * v[1]), np.array([1.0, 2.0]), 7.0)
    >>> np.round(g, 6).tolist(), np.round(H, 6).tolist()
    ([4.0, 5.0], [[2.0, 1.0], [1.0, 2.0]])
    """
    x = np.asarray(x, dtype=float)
    nx = x.size
    g = np.empty(nx)
    H = np.empty((nx, nx))
    for j in range(nx):
        e_j = np.zeros(nx)
        e_j[j] = delta
        fadd, fsub = fun(x + e_j), fun(x - e_j)
        H[j, j] = (fadd - 2 * fx + fsub) / delta**2
        g[j] = (fadd - fsub) / (2 * delta)
        for i in range(j):
            e_i = np.zeros(nx)
            e_i[i] = delta
            H[i, j] = H[j, i] = (
                fun(x + e_i + e_j) - fun(x + e_i - e_j) - fun(x - e_i + e_j)
                + fun(x - e_i - e_j)
            ) / (4 * delta**2)
    return g, H


def relative_gradient(g: np.ndarray, H: np.ndarray) -> float:
    """lme4's scaled gradient ``max |L^{-1} g|`` with ``H = L L'`` (``inf`` if not PD)."""
    if g.size == 0:
        return 0.0
    try:
        L = np.linalg.cholesky((H + H.T) / 2)
    except np.linalg.LinAlgError:
        return float("inf")
    return float(np.abs(np.linalg.solve(L, g)).max())


@dataclass(frozen=True)
class Optimum:
    """Where :func:`optimize` stopped.

    Attributes
    ----------
    x : ndarray
        ``(theta, beta)``.
    deviance : float
    mode : Mode
        PIRLS mode at ``x``.
    gradient, hessian : ndarray
        Central-difference gradient and Hessian at ``x`` (original coordinates; rows
        of held parameters come from axis-wise differences).
    free : ndarray of bool
        Parameters not held at a bound (theta entries at zero are held).
    rel_grad : float
        lme4's relative gradient at ``x`` over the free parameters (from the whitened
        derivatives of the last Newton step).
    stage : str
        Which stage-2 optimiser led to the estimate.
    n_eval : int
        Criterion evaluations.
    """

    x: np.ndarray
    deviance: float
    mode: Mode
    gradient: np.ndarray
    hessian: np.ndarray
    free: np.ndarray
    rel_grad: float
    stage: str
    n_eval: int


def _stage1(problem: GLMMProblem, maxiter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Theta by the ``nAGQ = 0`` criterion (beta inside PIRLS); returns theta, beta, u."""
    theta0 = problem.default_theta()
    cache: dict[str, object] = {"f": np.inf, "mode": None}

    def f(theta: np.ndarray) -> float:
        best = cache["mode"]
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                if best is None:
                    m = problem.pirls(theta, np.zeros(problem.p), u_only=False)
                else:
                    assert isinstance(best, Mode)
                    m = problem.pirls(theta, best.beta, u_only=False, u0=best.u)
                val = problem.laplace(m)
        except (PIRLSError, np.linalg.LinAlgError, FloatingPointError):
            return np.inf
        if val < cache["f"]:  # type: ignore[operator]
            cache["f"], cache["mode"] = val, m
        return val

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in problem.lower]
    f(theta0)
    if cache["mode"] is None:
        raise PIRLSError("PIRLS failed at the starting values")
    # derivative-free, as lme4 (bobyqa / Nelder-Mead): at a zero variance the deviance is
    # even in theta, so a finite-difference gradient there is zero and a gradient method
    # can stop on the boundary next to a better interior optimum
    res = sopt.minimize(f, theta0, method="Nelder-Mead", bounds=bounds,
                        options={"maxiter": 200 * max(1, theta0.size), "xatol": 1e-4,
                                 "fatol": 1e-7, "adaptive": theta0.size > 2})
    m = cache["mode"]
    assert isinstance(m, Mode)
    theta = np.maximum(np.asarray(res.x, dtype=float), problem.lower)
    return theta, m.beta, m.u


def _held(problem: GLMMProblem, x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
    """Bounded theta entries at zero (a zero variance), kept out of the Newton steps."""
    k = problem.n_theta
    held = np.zeros(x.size, dtype=bool)
    held[:k] = np.isfinite(problem.lower) & (x[:k] <= problem.lower + 1e-10)
    if g is not None:
        held &= g >= -1e-8  # leaving the bound would not lower the deviance
    return held


def _whitener(H: np.ndarray) -> np.ndarray:
    """``T`` with ``T' H T = I`` (eigenvalues made positive), so ``x = x0 + T z``."""
    w, v = np.linalg.eigh((H + H.T) / 2)
    wmax = max(float(np.abs(w).max()), 1e-12)
    w = np.maximum(np.abs(w), 1e-8 * wmax)
    return v / np.sqrt(w)


def _diag_hessian(crit: Criterion, x: np.ndarray, f: float,
                  delta: float = DELTA) -> np.ndarray:
    """Central second differences along each axis (``2 d`` evaluations)."""
    h = np.empty(x.size)
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = delta
        h[j] = (crit(x + e) - 2 * f + crit(x - e)) / delta**2
    return h


def _newton(crit: Criterion, x: np.ndarray, f: float, maxit: int = 30) -> tuple[
        np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, float]:
    """Newton steps in whitened coordinates (bounded theta kept feasible).

    The derivatives are central differences in ``z`` with ``x = x0 + T z`` and
    ``T' H T = I`` (``H`` the previous Hessian; the axis-wise second differences at the
    start): an absolute step in ``x`` would be far too large along a coefficient of a
    widely spread covariate (age in years), whose third derivative then biases the
    gradient; in ``z`` every direction moves the deviance alike. Returns ``x, f``, the
    gradient and Hessian at ``x`` in the original coordinates, the free parameters and
    the relative gradient.
    """
    problem = crit.problem
    lower = np.concatenate([problem.lower, np.full(problem.p, -np.inf)])
    diag = _diag_hessian(crit, x, f)
    H_all = np.diag(np.where(diag > 0, diag, np.maximum(np.abs(diag), 1.0)))
    g_all = np.zeros(x.size)
    rel = float("inf")
    current = False  # whether g_all, H_all were computed at x
    for _ in range(maxit):
        # a zero variance with negative curvature is a saddle, not an optimum: step inside
        curv = diag if not current else np.diag(H_all)
        edge = _held(problem, x) & (curv < 0)
        if edge.any():
            for inside in (0.1, 0.01, 0.001):
                cand = x.copy()
                cand[edge] = inside
                fc = crit(cand)
                if fc < f:
                    x, f = cand, fc
                    diag = _diag_hessian(crit, x, f)
                    H_all = np.diag(np.maximum(np.abs(diag), 1e-8))
                    current = False
                    break
            else:
                edge[:] = False
            if edge.any():
                continue
        free = ~_held(problem, x, g_all if current else None)
        if not free.any():
            rel = 0.0
            break
        T = _whitener(H_all[np.ix_(free, free)])
        base = x.copy()

        def fz(z: np.ndarray, T: np.ndarray = T, base: np.ndarray = base,
               free: np.ndarray = free) -> float:
            xx = base.copy()
            xx[free] = base[free] + T @ z
            return crit(xx)

        gz, Hz = deriv12(fz, np.zeros(int(free.sum())), f, delta=WHITE_DELTA)
        Tinv = np.linalg.pinv(T)
        H_all[np.ix_(free, free)] = Tinv.T @ Hz @ Tinv
        g_all = np.zeros(x.size)
        g_all[free] = Tinv.T @ gz
        current = True
        rel = relative_gradient(gz, Hz)
        if rel < NEWTON_TOL:
            break
        w, v = np.linalg.eigh((Hz + Hz.T) / 2)
        w = np.maximum(np.abs(w), 1e-6)
        step = np.zeros_like(x)
        step[free] = T @ (-(v / w) @ (v.T @ gz))
        t, moved = 1.0, False
        for _ls in range(30):
            cand = np.maximum(x + t * step, lower)
            fc = crit(cand)
            if fc <= f:
                moved = True
                break
            t /= 2
        if not moved or np.allclose(cand, x, rtol=0, atol=1e-14):
            break
        x, f = cand, fc
        current = False
    if not current:
        return _newton_final(crit, x, f, H_all)
    return x, f, g_all, H_all, ~_held(problem, x, g_all), rel


def _newton_final(crit: Criterion, x: np.ndarray, f: float, H_all: np.ndarray) -> tuple[
        np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, float]:
    """Whitened derivatives at the last point (after ``maxit`` steps)."""
    problem = crit.problem
    T = _whitener(H_all)

    def fz(z: np.ndarray) -> float:
        return crit(x + T @ z)

    gz, Hz = deriv12(fz, np.zeros(x.size), f, delta=WHITE_DELTA)
    Tinv = np.linalg.pinv(T)
    g, H = Tinv.T @ gz, Tinv.T @ Hz @ Tinv
    free = ~_held(problem, x, g)
    return x, f, g, H, free, relative_gradient(g[free], H[np.ix_(free, free)])


def optimize(problem: GLMMProblem, *, n_agq: int = 1, maxiter: int = 1000) -> Optimum:
    """Fit by lme4's two stages, then polish by Newton steps (see the module text).

    Raises
    ------
    PIRLSError
        When PIRLS fails at the start values.
    """
    theta1, beta1, u1 = _stage1(problem, maxiter)
    crit = Criterion(problem, n_agq)
    crit.best_u = u1
    lower = np.concatenate([problem.lower, np.full(problem.p, -np.inf)])
    x0 = np.concatenate([theta1, beta1])
    f0 = crit(x0)
    stage = "newton"
    x, f, g, H, free, rel = _newton(crit, x0, f0)
    if rel > RETRY_TOL or not np.isfinite(f):
        # Newton from stage 1 did not get there: bounded L-BFGS-B, then Newton again
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
        res = sopt.minimize(crit, x0, method="L-BFGS-B", jac="3-point", bounds=bounds,
                            options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-9})
        if np.isfinite(res.fun):
            x2 = np.maximum(np.asarray(res.x, dtype=float), lower)
            cand = _newton(crit, x2, crit(x2))
            if cand[1] < f or not np.isfinite(f):
                x, f, g, H, free, rel = cand
                stage = "lbfgs"
    mode = crit.mode(x)
    f = crit.deviance_at(x, mode)
    return Optimum(
        x=x, deviance=f, mode=mode, gradient=g, hessian=H, free=free,
        rel_grad=rel, stage=stage,
        n_eval=crit.n_eval,
    )
