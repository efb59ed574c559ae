"""Profile-likelihood confidence intervals of variance components (lme4's method).

As lme4's ``confint(fit, method = "profile")``, the parameters are the random-effect
standard deviations and correlations of every term (lower triangle of the SD/correlation
matrix, column by column, as lme4 names them ``sd_x|g`` and ``cor_x.(Intercept)|g``) and
the residual SD ``sigma``, and the criterion is the **ML** deviance with the fixed
effects profiled out, whatever criterion the fit used. For a parameter ``psi_j`` the
profile deviance ``d(psi_j)`` minimises the deviance over all other parameters; the
interval is ``{psi_j : d(psi_j) - d_min <= chi2_1(level)}``, its ends found by root
finding on the exact profile (lme4 interpolates a spline through profile points, so the
two agree to about 1e-3 relative). An end that the profile never reaches before a bound
(an SD at 0, a correlation at -1 or 1) is that bound, as in lme4.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize as sopt
from scipy import stats

from .dense import LMMProblem

__all__ = ["profile_intervals", "sdcor_from_theta", "theta_from_sdcor"]

#: Correlations are kept inside (-1 + COR_EDGE, 1 - COR_EDGE) while optimising.
COR_EDGE = 1e-9


def _layout(problem: LMMProblem) -> list[tuple[int, int, int]]:
    """(block, row, col) of every SD/correlation entry, theta order; sigma last."""
    out: list[tuple[int, int, int]] = []
    for k, b in enumerate(problem.blocks):
        out.extend((k, r, c) for r, c in b.theta_index)
    return out


def sdcor_from_theta(problem: LMMProblem, theta: np.ndarray, sigma: float) -> np.ndarray:
    """SDs and correlations of every term (theta order), then ``sigma``.

    Examples
    --------
    >>> from alliance_models.models.lmm.dense import RandomBlock
    >>> b = RandomBlock(np.ones((4, 2)), np.array([0, 0, 1, 1]), 2)
    >>> prob = LMMProblem(np.arange(4.0), np.ones((4, 1)), [b])
    >>> sdcor_from_theta(prob, np.array([1.0, 0.5, 0.5]), 2.0).round(4).tolist()
    [2.0, 0.7071, 1.4142, 2.0]
    """
    out = []
    for lam, b in zip(problem.lambdas(theta), problem.blocks, strict=True):
        cov = sigma**2 * lam @ lam.T
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        for r, c in b.theta_index:
            if r == c:
                out.append(sd[r])
            else:
                den = sd[r] * sd[c]
                out.append(cov[r, c] / den if den > 0 else 0.0)
    return np.array([*out, sigma])


def theta_from_sdcor(problem: LMMProblem, v: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse of :func:`sdcor_from_theta`: ``theta`` and ``sigma``.

    Examples
    --------
    >>> from alliance_models.models.lmm.dense import RandomBlock
    >>> b = RandomBlock(np.ones((4, 2)), np.array([0, 0, 1, 1]), 2)
    >>> prob = LMMProblem(np.arange(4.0), np.ones((4, 1)), [b])
    >>> v = sdcor_from_theta(prob, np.array([1.0, 0.5, 0.5]), 2.0)
    >>> theta, sigma = theta_from_sdcor(prob, v)
    >>> theta.round(6).tolist(), sigma
    ([1.0, 0.5, 0.5], 2.0)
    """
    sigma = float(v[-1])
    theta = np.empty(problem.n_theta)
    pos = 0
    for b, s in zip(problem.blocks, problem.theta_slices, strict=True):
        vals = v[pos:pos + len(b.theta_index)]
        pos += len(b.theta_index)
        sd = np.zeros(b.q)
        R = np.eye(b.q)
        for val, (r, c) in zip(vals, b.theta_index, strict=True):
            if r == c:
                sd[r] = val
            else:
                R[r, c] = R[c, r] = val
        cov = (sd[:, None] * R * sd[None, :]) / sigma**2
        # Cholesky that tolerates zero SDs (semi-definite covariance)
        lam = np.zeros((b.q, b.q))
        for j in range(b.q):
            d = cov[j, j] - lam[j, :j] @ lam[j, :j]
            lam[j, j] = np.sqrt(max(d, 0.0))
            for i in range(j + 1, b.q):
                off = cov[i, j] - lam[i, :j] @ lam[j, :j]
                lam[i, j] = off / lam[j, j] if lam[j, j] > 0 else 0.0
        theta[s] = [lam[r, c] for r, c in b.theta_index]
    return theta, sigma


def _bounds(problem: LMMProblem) -> list[tuple[float, float]]:
    out = []
    for _, r, c in _layout(problem):
        out.append((0.0, np.inf) if r == c else (-1.0 + COR_EDGE, 1.0 - COR_EDGE))
    out.append((1e-12, np.inf))
    return out


def profile_intervals(
    problem: LMMProblem, theta: np.ndarray, sigma: float, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ML estimates and profile-likelihood interval ends of every SD/correlation and sigma.

    Parameters
    ----------
    problem : LMMProblem
    theta, sigma : ndarray, float
        The **ML** estimate.
    level : float
        Confidence level.

    Returns
    -------
    estimate, lower, upper : ndarray
        In the order of :func:`sdcor_from_theta`.
    """
    v_hat = sdcor_from_theta(problem, theta, sigma)
    bounds = _bounds(problem)
    m = v_hat.size

    def dev(v: np.ndarray) -> float:
        th, sg = theta_from_sdcor(problem, v)
        try:
            return float(problem.deviance_vp(np.append(th, sg), reml=False))
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    d_min = dev(v_hat)
    crit = float(stats.chi2.ppf(level, 1))
    lower, upper = np.empty(m), np.empty(m)
    for j in range(m):
        others = [i for i in range(m) if i != j]
        start = {"x": v_hat[others]}

        def prof(x: float, j: int = j, others: list[int] = others,
                 start: dict = start) -> float:
            def f(w: np.ndarray) -> float:
                v = v_hat.copy()
                v[j] = x
                v[others] = w
                return dev(v)

            x0 = np.clip(start["x"], [bounds[i][0] for i in others],
                         [bounds[i][1] for i in others])
            res = sopt.minimize(f, x0, method="L-BFGS-B",
                                bounds=[bounds[i] for i in others],
                                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500})
            start["x"] = res.x
            return float(res.fun) - d_min - crit

        is_cor = j < m - 1 and _layout(problem)[j][1] != _layout(problem)[j][2]
        exact = (-1.0, 1.0) if is_cor else (0.0, np.inf)
        step0 = 0.1 if is_cor else 0.25 * max(abs(v_hat[j]), 1e-3 * sigma)
        for side, edge, bound, out in ((-1, bounds[j][0], exact[0], lower),
                                       (1, bounds[j][1], exact[1], upper)):
            start["x"] = v_hat[others].copy()
            inner, step, found = v_hat[j], step0, None
            for _ in range(60):
                cand = inner + side * step
                if np.isfinite(edge) and (cand - edge) * side >= 0:
                    cand = edge
                if prof(cand) >= 0:
                    found = cand
                    break
                if cand == edge:
                    break
                inner, step = cand, step * 2
            if found is None:
                out[j] = bound
                continue
            start["x"] = v_hat[others].copy()
            out[j] = sopt.brentq(prof, *sorted((inner, found)), xtol=1e-12, rtol=1e-10)
    return v_hat, lower, upper
