"""Shared pieces of the mixed-model engine tests: designs, the regression cases and the
dense reference fit (an exact REML/ML likelihood with ``V`` built as a dense matrix,
optimised in the *variance* parametrisation ``(sigma2, tau2...)`` with analytic
gradient and observed Hessian, and its own Satterthwaite df).

Importable from the test modules of this folder (pytest puts it on ``sys.path``).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

BETA_RTOL, SE_RTOL, DF_RTOL = 1e-6, 1e-4, 1e-3


# ----------------------------------------------------------------------------------
# the dense reference
# ----------------------------------------------------------------------------------
def dense_fit(y, X, groups, *, reml=True, contrasts=None):
    """Exact REML/ML fit with dense V; returns a dict like the engine's (one replicate).

    The outcome is divided by its SD for the optimiser and the results mapped back.
    """
    sd = float(np.std(y))
    out = _dense_fit_unit(y / sd, X, groups, reml=reml, contrasts=contrasts)
    n, p = X.shape
    out["beta"] = out["beta"] * sd
    out["se"] = out["se"] * sd
    out["sigma2"] = out["sigma2"] * sd**2
    out["tau2"] = out["tau2"] * sd**2
    out["var_l"] = out["var_l"] * sd**2
    out["loglik"] = out["loglik"] - (n - p if reml else n) * np.log(sd)
    return out


def _dense_fit_unit(y, X, groups, *, reml=True, contrasts=None):
    n, p = X.shape
    Gs = [(g[:, None] == g[None, :]).astype(float) for g in groups]
    k = len(Gs)
    Vs = [np.eye(n), *Gs]  # dV / d phi_i for phi = (sigma2, tau2_1, ...)

    def parts(phi):
        V = sum(ph * Vi for ph, Vi in zip(phi, Vs, strict=True))
        Vinv = np.linalg.inv(V)
        XVX = X.T @ Vinv @ X
        C = np.linalg.inv(XVX)
        P = Vinv - Vinv @ X @ C @ X.T @ Vinv
        return V, Vinv, XVX, C, P

    def dev(phi):
        try:
            V, Vinv, XVX, C, P = parts(phi)
        except np.linalg.LinAlgError:
            return np.inf
        s1, ld = np.linalg.slogdet(V)
        if s1 <= 0:
            return np.inf
        out = ld + y @ P @ y
        if reml:
            out += np.linalg.slogdet(XVX)[1]
        return out

    def grad(phi):
        V, Vinv, XVX, C, P = parts(phi)
        A = P if reml else Vinv
        Py = P @ y
        return np.array([np.trace(A @ Vi) - Py @ Vi @ Py for Vi in Vs])

    def hess(phi):
        V, Vinv, XVX, C, P = parts(phi)
        A = P if reml else Vinv
        Py = P @ y
        H = np.empty((k + 1, k + 1))
        for i in range(k + 1):
            for j in range(k + 1):
                H[i, j] = -np.trace(A @ Vs[i] @ A @ Vs[j]) + 2 * Py @ Vs[i] @ P @ Vs[j] @ Py
        return H

    v0 = float(np.var(y))
    best = None
    # two interior starts, and the optimum on each face (one variance held at zero): the
    # restricted likelihood can have a local optimum inside and a better one on a face,
    # and the global minimum over the closed domain is the best of these
    runs = [([v0 / 2] + [v0 / 4] * k, [(0.0, None)] * k),
            ([v0 * 0.9] + [v0 / 50] * k, [(0.0, None)] * k),
            ([v0 / 50] + [v0] * k, [(0.0, None)] * k)]  # variance ratios near 50
    for j in range(k):
        runs.append(([v0 / 2] + [0.0 if i == j else v0 / 4 for i in range(k)],
                     [(0.0, 0.0) if i == j else (0.0, None) for i in range(k)]))
    for start, bounds in runs:
        res = optimize.minimize(
            dev, np.array(start), jac=grad, method="L-BFGS-B",
            bounds=[(1e-8 * v0, None), *bounds],
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000},
        )
        if best is None or res.fun < best.fun:
            best = res
    phi = best.x.copy()
    # Newton polish on the free parameters (a component at 0 with gradient >= 0 stays)
    for _ in range(50):
        g = grad(phi)
        free = np.r_[True, ~((phi[1:] <= 0) & (g[1:] >= 0))]
        if np.abs(g[free]).max() < 1e-10:
            break
        H = hess(phi)[np.ix_(free, free)]
        step = np.linalg.solve(H, g[free])
        new = phi.copy()
        new[free] -= step
        new[1:] = np.maximum(new[1:], 0.0)
        t = 1.0
        while dev(new) > dev(phi) + 1e-12 and t > 1e-8:
            t /= 2
            new = phi.copy()
            new[free] -= t * step
            new[1:] = np.maximum(new[1:], 0.0)
        phi = new
    V, Vinv, XVX, C, P = parts(phi)
    beta = C @ X.T @ Vinv @ y
    free = np.r_[True, phi[1:] > 0]
    H = hess(phi)[np.ix_(free, free)]
    acov = 2 * np.linalg.inv(H)
    L = np.eye(p) if contrasts is None else np.atleast_2d(contrasts)
    dfs = []
    for ell in L:
        v = ell @ C @ ell
        gv = np.array([ell @ C @ X.T @ Vinv @ Vi @ Vinv @ X @ C @ ell for Vi in Vs])[free]
        dfs.append(2 * v**2 / (gv @ acov @ gv))
    const = (n - p if reml else n) * np.log(2 * np.pi)
    return {
        "beta": beta,
        "se": np.sqrt(np.diag(C)),
        "df": np.array(dfs),
        "sigma2": phi[0],
        "tau2": phi[1:],
        "loglik": -0.5 * (dev(phi) + const),
        "var_l": np.array([ell @ C @ ell for ell in L]),
    }


def assert_beta_close(b, ref, se):
    np.testing.assert_array_less(np.abs(b - ref), BETA_RTOL * np.maximum(np.abs(ref), se) + 1e-14)


def assert_matches(fit, b, ref, *, df_index=None):
    assert_beta_close(fit.beta[b], ref["beta"], ref["se"])
    np.testing.assert_allclose(fit.se[b], ref["se"], rtol=SE_RTOL)
    df = fit.df[b] if df_index is None else fit.df[b]
    np.testing.assert_allclose(df, ref["df"] if df_index is None else ref["df"][0], rtol=DF_RTOL)
    np.testing.assert_allclose(fit.loglik[b], ref["loglik"], atol=1e-6)
    np.testing.assert_allclose(fit.sigma2[b], ref["sigma2"], rtol=1e-4)
    np.testing.assert_allclose(fit.tau2[b], ref["tau2"], rtol=1e-4, atol=1e-6 * ref["sigma2"])

def make_design(rng, n_outer, inner_per, sizes, two_levels=True):
    """Codes and a design with an obs-level, an inner-level and an interaction column."""
    outer, inner = [], []
    k = 0
    for j in range(n_outer):
        for _ in range(inner_per[j]):
            m = sizes[k]
            outer += [j] * m
            inner += [k] * m
            k += 1
    outer, inner = np.array(outer), np.array(inner)
    n = outer.size
    x1 = rng.normal(size=n) + rng.normal(size=n_outer)[outer] * 0.5
    x2 = rng.normal(50, 10, size=k)[inner]
    X = np.column_stack([np.ones(n), x1, x2, x1 * x2 / 50])
    return X, outer, inner if two_levels else None


def simulate_y(rng, X, outer, inner, beta, sd_outer, sd_inner, B):
    n = X.shape[0]
    Y = X @ beta + rng.normal(size=(B, n))
    Y += sd_outer * rng.normal(size=(B, outer.max() + 1))[:, outer]
    if inner is not None:
        Y += sd_inner * rng.normal(size=(B, inner.max() + 1))[:, inner]
    return Y




# found by the slow hypothesis runs: the restricted likelihood has a local optimum
# inside and a better one on a face (or the reverse); every fitter must return the better
#  - one factor, no true therapist variance: a local minimum at zero and the global one
#    at theta = 1.0 (the fast engine stopped at zero)
INNER_BEATS_ZERO = (False, 5, [1, 1, 1, 1, 1], [3, 4, 3, 5, 8], 0.0, 0.0, 0.0, 0.0, 1)
#  - nested: replicate 1 has a local optimum inside, theta (1.47, 1.38), and the global
#    one with the therapist variance at zero (fit_mixed, like lme4, stopped inside)
FACE_BEATS_INNER = (True, 5, [2, 2, 2, 1, 2], [5, 2, 6, 3, 3, 4, 2, 6, 2], 0.0, 1.5, 0.0,
                    0.0, 0)


#  - nested: replicate 1's Newton run ends inside, theta (0.94, 1.36), while the face
#    optimum (0, 1.58) is better by 0.019; the face's grid points are not (the fast
#    engine searched faces only for boundary solutions)
FACE_BEATS_INNER_GRID = (True, 7, [3, 3, 2, 1, 1, 2, 1],
                         [2, 3, 5, 6, 3, 3, 5, 6, 5, 3, 3, 3, 6], 0.3, 1.5, 0.0, 0.0, 596)


#  - nested: replicate 0 has an optimum on each face; fit_mixed stopped on the worse
#    one (therapist SD zero) and its face check did not move the other SD off zero
FACE_BEATS_FACE = (True, 7, [2, 1, 1, 2, 1, 1, 1], [4, 6, 2, 2, 3, 6, 2, 5, 6], 0.0, 1.5,
                   0.0, 0.0, 5)


#  - the same with fit_mixed's first L-BFGS-B step on the other face landing on zero (a
#    stationary point): the face check must probe inwards from there
FACE_BEATS_FACE_2 = (True, 8, [3, 2, 2, 1, 3, 2, 3, 1],
                     [2, 2, 2, 2, 2, 2, 2, 6, 6, 5, 6, 6, 6, 6, 6, 6, 6], 0.3, 0.0, 0.0,
                     0.0, 41903)


#  - with dropout: replicate 0's therapist SD is 0.0056, an optimum only 1e-7 in the
#    log-likelihood below the boundary (fit_mixed's probe inwards from zero missed it)
FLAT_NEAR_ZERO = (True, 8, [3, 2, 2, 1, 3, 2, 3, 1],
                  [2, 2, 2, 2, 2, 2, 3, 5, 6, 5, 6, 6, 6, 6, 6, 6, 6], 0.3, 0.0, 0.0, 0.25,
                  41903)


#  - one factor with dropout: replicate 1's optimum is far out (theta = 9.5, variance
#    ratio 90) and zero a local optimum; fit_mixed probed inwards only up to theta 1
FAR_OUT = (False, 6, [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], 0.3, 0.0, 0.0, 0.25, 9355)


#  - nested: replicate 1's fit_mixed solution sits on a face (therapist SD zero), a local
#    optimum across it too, while the better one is inside at (1.71, 0.34)
INNER_BEATS_FACE = (True, 6, [2, 1, 2, 1, 1, 2], [3, 6, 5, 5, 6, 4, 6, 2, 4], 0.0, 1.5, 0.0,
                    0.0, 5)


#  - one factor, 11 observed rows: the fast engine's optimum is far out (theta 9.0) and
#    zero a local one; its interior check reached only theta 2 and needed a grid point
#    that beats zero
FAR_OUT_FAST = (False, 5, [1, 1, 1, 1, 1], [3, 3, 3, 3, 3], 0.0, 0.0, 1.0, 0.25, 79)


#: The nine regression cases above: real multimodal surfaces.
REGRESSION_CASES = {
    "INNER_BEATS_ZERO": INNER_BEATS_ZERO,
    "FACE_BEATS_INNER": FACE_BEATS_INNER,
    "FACE_BEATS_INNER_GRID": FACE_BEATS_INNER_GRID,
    "FACE_BEATS_FACE": FACE_BEATS_FACE,
    "FACE_BEATS_FACE_2": FACE_BEATS_FACE_2,
    "FLAT_NEAR_ZERO": FLAT_NEAR_ZERO,
    "FAR_OUT": FAR_OUT,
    "INNER_BEATS_FACE": INNER_BEATS_FACE,
    "FAR_OUT_FAST": FAR_OUT_FAST,
}
