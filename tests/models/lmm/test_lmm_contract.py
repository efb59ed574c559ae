"""The contract of both REML engines (dense and batched), each with the shared search.

For random-intercept models (one factor or two nested) both engines must return the
global optimum of the restricted (or full) likelihood over the closed domain -- faces
with a variance at zero included -- and the same inference. References:

* a brute-force grid of the REML/ML criterion, written here from the textbook formula
  with a dense ``V`` (independent of both engines' algebra): every component on
  ``{0} + 48 log-spaced relative SDs in [1e-3, 30]`` (every face of the domain is on the
  grid), evaluated everywhere, and the best grid point of every zero pattern refined by
  a bounded local minimiser; no start of either engine is used;
* the dense reference fit of ``lmm_cases.dense_fit`` (variance parametrisation, its own
  Satterthwaite df) for estimates, SEs, df and the log-likelihood.
"""

from __future__ import annotations

import doctest
import importlib
import itertools

import numpy as np
import pytest
from lmm_cases import (
    DF_RTOL,
    REGRESSION_CASES,
    SE_RTOL,
    assert_beta_close,
    dense_fit,
    make_design,
    simulate_y,
)
from scipy import optimize

from alliance_models.models.lmm import dense, satterthwaite, search
from alliance_models.models.lmm.batch_fit import fit_batch

#: The brute-force grid of relative SDs (per component).
BRUTE_GRID = np.r_[0.0, np.geomspace(1e-3, 30.0, 48)]
#: The engines' optimum may not be worse than the brute-force one by more than this
#: (criterion units, -2 log L); the flattest regression case differs by 2e-7.
CRIT_ATOL = 5e-8


# ----------------------------------------------------------------------------------
# the brute-force reference
# ----------------------------------------------------------------------------------
def brute_criterion(y, X, groups, S, *, reml=True):
    """Profiled -2 log L (up to a constant) at relative SDs ``S`` (m, k), dense ``V``."""
    n, p = X.shape
    G = [(g[:, None] == g[None, :]).astype(float) for g in groups]
    out = np.empty(len(S))
    for lo in range(0, len(S), 256):
        s2 = np.asarray(S[lo:lo + 256], dtype=float) ** 2
        H = np.eye(n)[None] + sum(s2[:, i, None, None] * G[i] for i in range(len(G)))
        Hi = np.linalg.inv(H)
        XtHi = np.swapaxes(Hi @ X, 1, 2)  # (m, p, n)
        XHX = XtHi @ X
        beta = np.linalg.solve(XHX, (XtHi @ y)[..., None])[..., 0]
        r = y[None] - beta @ X.T
        rHr = np.einsum("mi,mij,mj->m", r, Hi, r)
        f = np.linalg.slogdet(H)[1] + (n - p if reml else n) * np.log(rHr)
        if reml:
            f = f + np.linalg.slogdet(XHX)[1]
        out[lo:lo + 256] = f
    return out


def brute_force_optimum(y, X, groups, *, reml=True):
    """Minimum of the criterion: the full grid, then the best point of every zero
    pattern refined (bounded L-BFGS-B on its free components, numeric gradient)."""
    k = len(groups)
    pts = np.array(list(itertools.product(BRUTE_GRID, repeat=k)))
    f = brute_criterion(y, X, groups, pts, reml=reml)
    best_f, best_s = np.inf, None
    for pattern in itertools.product([False, True], repeat=k):
        on = np.flatnonzero(((pts == 0.0) == np.array(pattern)).all(axis=1))
        j = on[np.argmin(f[on])]
        free = np.flatnonzero(~np.array(pattern))
        s = pts[j].copy()
        if free.size:
            def fun(t, s=s, free=free):
                x = s.copy()
                x[free] = t
                return brute_criterion(y, X, groups, x[None], reml=reml)[0]

            res = optimize.minimize(fun, s[free], method="L-BFGS-B",
                                    bounds=[(0.0, 60.0)] * free.size,
                                    options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 500})
            s[free] = res.x
        fs = brute_criterion(y, X, groups, s[None], reml=reml)[0]
        if fs < best_f:
            best_f, best_s = fs, s
    return best_f, best_s


# ----------------------------------------------------------------------------------
# the engines, as fit_mixed and the power engine run them
# ----------------------------------------------------------------------------------
def fit_dense_engine(y, X, groups, *, reml=True):
    """lme4's start, the local optimiser, then the search; Satterthwaite df per row."""
    blocks = [dense.RandomBlock(np.ones((len(y), 1)), g, int(g.max()) + 1) for g in groups]
    prob = dense.LMMProblem(y, X, blocks)
    theta = dense.optimize_theta(prob, prob.default_theta(), reml=reml)[0]
    theta = dense.newton_polish(prob, theta, reml=reml)[0]
    theta = search.search(dense.DenseCriterion(prob, reml=reml), theta[None],
                          np.array([True]))[0][0]
    setup = dense.satterthwaite_setup(prob, theta, reml=reml)
    ev = prob.evaluate(theta)
    df = np.array([satterthwaite.contrast_df(setup, row) for row in np.eye(X.shape[1])])
    loglik = -0.5 * prob.deviance(theta, reml=reml)
    return {"theta": theta, "beta": ev.beta, "se": np.sqrt(np.diag(setup.vcov)), "df": df,
            "loglik": loglik}


def fit_batched_engine(y, X, groups, *, reml=True):
    """The batched engine (one replicate), df of every coefficient."""
    inner = groups[1] if len(groups) > 1 else None
    fits = [fit_batch(X, y, groups[0], inner, contrast=j, reml=reml) for j in range(X.shape[1])]
    first = fits[0]
    return {"theta": first.theta[0], "beta": first.beta[0], "se": first.se[0],
            "df": np.array([f.df[0] for f in fits]), "loglik": first.loglik[0]}


ENGINES = {"dense": fit_dense_engine, "batched": fit_batched_engine}


def _replicates(case):
    """The two replicates of a regression case: (y, X, groups) with dropped rows removed."""
    two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed = case
    rng = np.random.default_rng(seed)
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, effect, 0.01, effect / 2]),
                   sd_outer, sd_inner, 2)
    mask = rng.random(Y.shape) > dropout if dropout else np.ones(Y.shape, bool)
    mask[:, :2] = True
    out = []
    for b in range(2):
        k = mask[b]
        groups = [outer[k]] + ([inner[k]] if two else [])
        out.append((Y[b, k], X[k], [pd_codes(g) for g in groups]))
    return out


def pd_codes(g):
    """Codes 0..G-1 in order of first appearance (levels emptied by dropout removed)."""
    _, codes = np.unique(g, return_inverse=True)
    return codes


def _random_case(seed, two):
    rng = np.random.default_rng(seed)
    n_outer = int(rng.integers(5, 9))
    inner_per = list(rng.integers(1, 4, size=n_outer)) if two else [1] * n_outer
    sizes = list(rng.integers(2 if two else 3, 7, size=sum(inner_per)))
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    sd = rng.choice([0.0, 0.3, 1.0], size=2)
    y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.01, 0.1]), sd[0], sd[1], 1)[0]
    return y, X, [outer] + ([inner] if two else [])


PROBLEMS = {
    f"{name}-{b}": (lambda case=case, b=b: _replicates(case)[b])
    for name, case in REGRESSION_CASES.items() for b in range(2)
}
PROBLEMS.update({
    f"random-{'nested' if two else 'one'}-{seed}": (lambda seed=seed, two=two:
                                                    _random_case(seed, two))
    for seed in range(3) for two in (True, False)
})


# ----------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_engine_reaches_the_brute_force_optimum(engine, problem):
    y, X, groups = PROBLEMS[problem]()
    f_brute, s_brute = brute_force_optimum(y, X, groups)
    fit = ENGINES[engine](y, X, groups)
    f_fit = brute_criterion(y, X, groups, fit["theta"][None])[0]
    # no worse than the brute force (and the brute force no worse than it: both are
    # the minimum, so this also checks the reference)
    assert f_fit <= f_brute + CRIT_ATOL, (fit["theta"], s_brute)
    assert f_fit >= f_brute - 1e-6
    # the estimate sits on the same face as the brute-force optimum
    far_from_zero = s_brute > 1e-2
    assert np.all(fit["theta"][far_from_zero] > 0.0)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_engine_inference_matches_the_dense_reference(engine, problem):
    y, X, groups = PROBLEMS[problem]()
    ref = dense_fit(y, X, groups)
    fit = ENGINES[engine](y, X, groups)
    assert_beta_close(fit["beta"], ref["beta"], ref["se"])
    np.testing.assert_allclose(fit["se"], ref["se"], rtol=SE_RTOL)
    np.testing.assert_allclose(fit["df"], ref["df"], rtol=DF_RTOL)
    np.testing.assert_allclose(fit["loglik"], ref["loglik"], atol=1e-6)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("problem", ["FACE_BEATS_FACE-0", "FAR_OUT-1", "random-nested-1"])
def test_ml_fit_reaches_the_brute_force_optimum(engine, problem):
    y, X, groups = PROBLEMS[problem]()
    f_brute, _ = brute_force_optimum(y, X, groups, reml=False)
    fit = ENGINES[engine](y, X, groups, reml=False)
    f_fit = brute_criterion(y, X, groups, fit["theta"][None], reml=False)[0]
    assert f_brute - 1e-6 <= f_fit <= f_brute + CRIT_ATOL


def test_the_engines_agree_on_every_regression_case():
    for name in PROBLEMS:
        y, X, groups = PROBLEMS[name]()
        a, b = fit_dense_engine(y, X, groups), fit_batched_engine(y, X, groups)
        np.testing.assert_allclose(a["loglik"], b["loglik"], atol=1e-7, err_msg=name)
        np.testing.assert_allclose(a["df"], b["df"], rtol=DF_RTOL, err_msg=name)


def test_brute_force_reference_sees_every_face():
    # the reference itself: one factor with no group variance has its optimum at zero
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 4)
    y = rng.normal(size=32)
    y = y - (np.bincount(g, y) / 4)[g] * 0.9  # group means shrunk: variance below zero
    X = np.ones((32, 1))
    f, s = brute_force_optimum(y, X, [g])
    assert s[0] == 0.0
    grid_min = brute_criterion(y, X, [g], BRUTE_GRID[:, None]).min()
    assert f <= grid_min


@pytest.mark.parametrize(
    "module", ["search", "satterthwaite", "dense", "batched", "batched_slopes", "batch_fit"]
)
def test_docstring_examples_run(module):
    res = doctest.testmod(
        importlib.import_module(f"alliance_models.models.lmm.{module}"),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert res.attempted > 0 and res.failed == 0


class _Bowl:
    """Four scalar SDs (face checks, no grid), minimum at ``center`` (default 1 in each):
    ``sum rise_i (t_i - center_i)^2``; polish records its starts and returns the optimum
    with ``held`` at zero (the other entries at their centre)."""

    n_rep, k = 1, 4
    bounded = scalar = np.ones(4, dtype=bool)

    def __init__(self, rise, center=(1.0, 1.0, 1.0, 1.0)):
        self.rise = np.asarray(rise, dtype=float)
        self.center = np.asarray(center, dtype=float)
        self.runs = []

    def values(self, rep, t):
        t = np.asarray(t, dtype=float)
        return (self.rise * (t - self.center) ** 2).sum(axis=1)

    def polish(self, rep, t0, held):
        self.runs.append((held, np.array(t0)))
        out = np.broadcast_to(self.center, t0.shape).copy()
        out[:, list(held)] = 0.0
        return out, np.ones(len(t0), dtype=bool)


def test_face_checks_skip_starts_far_above_the_solution():
    # entry 0 held at zero starts rise[0] above the solution: run when within
    # START_MARGIN, not run beyond it (it would have to fall further than that to win)
    m = search.START_MARGIN
    crit = _Bowl([0.5 * m, 2.0 * m, 0.9 * m, 3.0 * m])
    theta, _ = search.search(crit, np.ones((1, 4)), np.array([True]))
    held = sorted(h for h, _ in crit.runs)
    assert held == [(0,), (2,)]
    np.testing.assert_array_equal(theta, np.ones((1, 4)))  # no face is better


def test_reruns_from_inside_skip_starts_far_above_the_solution():
    # the solution has entry 3 at zero (its optimum); the reruns from inside start it at
    # INSIDE = (0.3, 1.0), 0.09 * rise and 1.0 * rise above: only the first is within
    # START_MARGIN, so only it runs
    m = search.START_MARGIN
    assert search.INSIDE == (0.3, 1.0)
    crit = _Bowl([1.0, 1.0, 1.0, 2.0 * m], center=(1.0, 1.0, 1.0, 0.0))
    theta = np.array([[1.0, 1.0, 1.0, 0.0]])
    state = (theta, crit.values(None, theta), np.array([True]))
    search._inside_step(crit, state, np.array([0]))
    assert [(h, t[0, 3]) for h, t in crit.runs] == [((), 0.3)]
    np.testing.assert_array_equal(state[0], [[1.0, 1.0, 1.0, 0.0]])
