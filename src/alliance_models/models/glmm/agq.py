"""Adaptive Gauss-Hermite quadrature (lme4's ``nAGQ > 1``) for one scalar random effect.

With a single grouping factor and one random coefficient the likelihood is a product of
one-dimensional integrals, one per group. Around the conditional mode ``u_g`` (from
PIRLS at ``(theta, beta)``) with scale ``s_g = 1 / L_gg`` (the Laplace curvature), the
integral of group ``g`` is approximated by ``K`` nodes ``z_k`` with normal weights
``w_k``: ``sum_k w_k exp(-(d_g(u_g + z_k s_g) - d_g(u_g)) / 2 + z_k^2 / 2)`` where
``d_g(u) = u^2 + sum_{i in g} dev_resid_i``. The deviance is lme4's ``glmerAGQ``:
``sum_g d_g(u_g) + log|L|^2 - 2 sum_g log(integral_g)``, plus ``-2`` times the saturated
log-likelihood so that it is on the same scale as the Laplace deviance (lme4 leaves that
constant out for ``nAGQ > 1``; with one node the two deviances are equal).
"""

from __future__ import annotations

import functools

import numpy as np

from .pirls import GLMMProblem, Mode

__all__ = ["agq_deviance", "gh_rule"]


@functools.lru_cache(maxsize=32)
def gh_rule(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``k``-point Gauss-Hermite rule for ``N(0, 1)``.

    Weights sum to one; nodes and weights are symmetrised as in lme4's ``GHrule``.

    Examples
    --------
    >>> z, w = gh_rule(3)
    >>> np.round(z, 6).tolist(), round(float(w @ z**2), 12)
    ([-1.732051, 0.0, 1.732051], 1.0)
    """
    z, w = np.polynomial.hermite_e.hermegauss(k)
    w = w / w.sum()
    z = (z - z[::-1]) / 2
    w = (w + w[::-1]) / 2
    return z, w


def agq_deviance(problem: GLMMProblem, theta: np.ndarray, mode: Mode, n_agq: int) -> float:
    """AGQ deviance at the mode of ``(theta, mode.beta)`` (full-likelihood scale).

    Parameters
    ----------
    problem : GLMMProblem
        One random-effects term with one coefficient.
    theta : ndarray, shape (1,)
    mode : Mode
        PIRLS result at ``theta`` (``u_only``).
    n_agq : int
        Number of quadrature nodes.
    """
    blk = problem.blocks[0]
    fam = problem.family
    y, n = problem.y, problem.n_trials
    pos = problem.layout.cols[0][:, 0]
    u = mode.u[pos]
    sd = 1.0 / mode.chol_diag[pos]
    codes = blk.codes
    zcol = float(theta[0]) * blk.Z[:, 0]
    fixed = problem.X @ mode.beta
    G = blk.n_groups

    def devc(ug: np.ndarray) -> np.ndarray:
        eta = fixed + zcol * ug[codes]
        return ug * ug + np.bincount(codes, fam.dev_resid(eta, y, n), minlength=G)

    d0 = devc(u)
    mult = np.zeros(G)
    for zk, wk in zip(*gh_rule(n_agq), strict=True):
        if zk == 0.0:
            mult += wk
            continue
        mult += wk * np.exp(-0.5 * (devc(u + zk * sd) - d0) + 0.5 * zk * zk)
    dev = float(d0.sum() + mode.ldl2 - 2.0 * np.log(mult).sum())
    return dev - 2.0 * fam.saturated_loglik(y, n)
