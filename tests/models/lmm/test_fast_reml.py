"""Tests of the batched REML engine (models/lmm/batched.py, models/lmm/batch_fit.py).

References, each independent of the engine:

* ``dense_fit`` below: the exact REML/ML likelihood with ``V`` built as a dense matrix,
  optimised with scipy in the *variance* parametrisation ``(sigma2, tau2...)``, with
  analytic gradient and observed Hessian (``-tr(P V_i P V_j) + 2 y'P V_i P V_j P y``)
  and the Satterthwaite df from that Hessian (a different parametrisation than the
  engine's ``(theta, sigma)``: lmerTest's df is invariant at an interior optimum; a
  component at zero is held fixed in both);
* lme4 1.1-31 + lmerTest 3.1-3 values in ``tests/r/fast_reml_reference.csv`` (written by
  ``tests/r/fast_reml_reference.R``);
* statsmodels MixedLM (looser tolerance: it stops earlier);
* ``models/lmm/dense.py``, the dense lme4-style core behind ``fit_mixed``; and ``fit_mixed``
  itself once it is importable.

Tolerances (from the issue): fixed effects rtol 1e-6 (absolute floor 1e-6 x SE for
coefficients near zero), SE rtol 1e-4, df rtol 1e-3; log-likelihood to 1e-6 absolute.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmm_cases import (
    BETA_RTOL,
    DF_RTOL,
    FACE_BEATS_INNER,
    REGRESSION_CASES,
    SE_RTOL,
    assert_beta_close,
    assert_matches,
    dense_fit,
    make_design,
    simulate_y,
)
from scipy import stats

from alliance_models import parse_formula
from alliance_models.errors import DataValidationError, ModelSpecError, SingularFitWarning
from alliance_models.models.lmm import batched as core
from alliance_models.models.lmm import dense, satterthwaite, search
from alliance_models.models.lmm.batch_fit import (
    BatchFit,
    chunk_size,
    fit_batch,
    frame_codes,
    qualifies,
)

R_DIR = Path(__file__).parents[2] / "r"

@st.composite
def designs(draw):
    two = draw(st.booleans())
    n_outer = draw(st.integers(5, 8))
    inner_per = draw(st.lists(st.integers(1, 3), min_size=n_outer, max_size=n_outer))
    if two:
        inner_per[0] = max(inner_per[0], 2)
    else:
        inner_per = [1] * n_outer
    k = sum(inner_per)
    lo = 2 if two else 3
    sizes = draw(st.lists(st.integers(lo, 6 if two else 10), min_size=k, max_size=k))
    sd_outer = draw(st.sampled_from([0.0, 0.3, 1.0]))
    sd_inner = draw(st.sampled_from([0.0, 0.5, 1.5]))
    effect = draw(st.sampled_from([0.0, 0.2, 1.0]))
    dropout = draw(st.sampled_from([0.0, 0.25]))
    seed = draw(st.integers(0, 2**31))
    return two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed


def _check_dense(case, y_scale=1.0):
    two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed = case
    rng = np.random.default_rng(seed)
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    B = 2
    beta = np.array([1.0, effect, 0.01, effect / 2])
    Y = y_scale * simulate_y(rng, X, outer, inner, beta, sd_outer, sd_inner, B)
    mask = rng.random(Y.shape) > dropout if dropout else None
    if mask is not None:
        mask[:, :2] = True  # keep every design column estimable
    fit = fit_batch(X, Y, outer, inner, mask=mask)
    assert fit.converged.all()
    for b in range(B):
        keep = np.ones(X.shape[0], bool) if mask is None else mask[b]
        groups = [outer[keep]] + ([inner[keep]] if two else [])
        ref = dense_fit(Y[b, keep], X[keep], groups)
        assert_matches(fit, b, ref)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(designs(), st.sampled_from([1.0, 1e-3, 1e3]))
def test_agrees_with_dense_reference_over_random_designs(case, y_scale):
    _check_dense(case, y_scale)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(designs(), st.sampled_from([1.0, 1e-3, 1e3]))
def test_agrees_with_dense_reference_many_designs(case, y_scale):
    _check_dense(case, y_scale)


def test_boundary_component_is_exactly_zero_and_held_fixed():
    # no therapist variance at all, many replicates: several fits sit on the boundary
    rng = np.random.default_rng(11)
    X, outer, inner = make_design(rng, 6, [2] * 6, [4] * 12)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.1]), 0.0, 0.8, 12)
    fit = fit_batch(X, Y, outer, inner, contrast=3)
    at_zero = np.flatnonzero(fit.tau2[:, 0] == 0.0)
    assert at_zero.size >= 2
    assert fit.singular[at_zero].all()
    for b in at_zero[:3]:
        ref = dense_fit(Y[b], X, [outer, inner], contrasts=np.eye(4)[3])
        assert ref["tau2"][0] == 0.0
        np.testing.assert_allclose(fit.df[b], ref["df"][0], rtol=DF_RTOL)
        assert_beta_close(fit.beta[b], ref["beta"], ref["se"])
        np.testing.assert_allclose(fit.se[b], ref["se"], rtol=SE_RTOL)


def test_global_optimum_when_two_faces_hold_local_optima():
    # 5 therapists, 8 patients with 2 sessions each: the restricted likelihood has one
    # local optimum with the patient variance at zero and a better one with the
    # therapist variance at zero (found by the slow hypothesis run); the engine must
    # return the better one, as the dense reference does
    case = (True, 5, [2, 2, 2, 1, 1], [2] * 8, 1.0, 1.5, 0.0, 0.0, 2)
    _check_dense(case)
    two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed = case
    rng = np.random.default_rng(seed)
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.0, 0.01, 0.0]), 1.0, 1.5, 2)
    st_ = core.sufficient_stats(X, Y[:1], core.make_layout(outer, inner))
    f_other = core.criterion(st_, np.array([[1.88110155, 0.0]]))[0]
    fit = fit_batch(X, Y[:1], outer, inner)
    assert fit.theta[0, 0] == 0.0 and fit.theta[0, 1] > 0.5
    f_fit = core.criterion(st_, fit.theta)[0]
    assert f_fit < f_other - 1e-3  # the other face's optimum is worse by 0.0019


@pytest.mark.parametrize("case", list(REGRESSION_CASES.values()), ids=list(REGRESSION_CASES))
def test_two_local_optima_global_one_everywhere(case):
    _check_dense(case)
    _check_fit_mixed(case)


def test_search_moves_fit_mixed_core_off_an_inner_local_optimum():
    two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed = (
        FACE_BEATS_INNER)
    rng = np.random.default_rng(seed)
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, effect, 0.01, effect / 2]),
                   sd_outer, sd_inner, 2)
    prob = dense.LMMProblem(Y[1], X, [dense.RandomBlock(np.ones((X.shape[0], 1)), c,
                                                        int(c.max()) + 1)
                                      for c in (inner, outer)])
    # the inner local optimum lme4's start leads to (theta in lme4's order: patient,
    # therapist), polished to a zero gradient
    inner_opt, gmax = dense.newton_polish(prob, np.array([1.38, 1.47]))
    assert gmax < 1e-6 and np.all(inner_opt > 1.0)
    crit = dense.DenseCriterion(prob, reml=True)
    face = search.search(crit, inner_opt[None], np.array([True]))[0][0]
    assert face[1] == 0.0 and face[0] > 1.5
    assert prob.deviance(face) < prob.deviance(inner_opt) - 0.03
    again = search.search(crit, face[None], np.array([True]))[0][0]
    np.testing.assert_array_equal(again, face)  # nothing better from there


def test_ml_and_contrast_vector_against_dense_reference():
    rng = np.random.default_rng(5)
    X, outer, inner = make_design(rng, 7, [3] * 7, list(rng.integers(2, 6, size=21)))
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.5, 0.02, 0.3]), 0.5, 0.7, 3)
    L = np.array([0.0, 1.0, 0.0, 2.0])
    for reml in (True, False):
        fit = fit_batch(X, Y, outer, inner, contrast=L, reml=reml)
        for b in range(3):
            ref = dense_fit(Y[b], X, [outer, inner], reml=reml, contrasts=L)
            assert_beta_close(fit.beta[b], ref["beta"], ref["se"])
            np.testing.assert_allclose(fit.estimate[b], L @ ref["beta"], rtol=1e-6)
            np.testing.assert_allclose(fit.estimate_se[b], np.sqrt(ref["var_l"][0]), rtol=1e-4)
            np.testing.assert_allclose(fit.df[b], ref["df"][0], rtol=DF_RTOL)
            np.testing.assert_allclose(fit.loglik[b], ref["loglik"], atol=1e-6)


# ----------------------------------------------------------------------------------
# lme4 / lmerTest, statsmodels, the fit_mixed core
# ----------------------------------------------------------------------------------
def _r_design(d, setname):
    x = d[d["set"] == setname]
    al, ag, au = (x[c].to_numpy(float) for c in ("alliance", "age", "autonomy"))
    one = np.ones(len(x))
    if setname == "onefactor":
        X, inner = np.column_stack([one, al, au, al * au]), None
    else:
        X = np.column_stack([one, al, ag, au, al * ag, al * au])
        inner = pd.factorize(x["patient"])[0]
    return X, x["y"].to_numpy(float), pd.factorize(x["therapist"])[0], inner


@pytest.mark.parametrize("setname", ["nested", "boundary", "onefactor"])
def test_matches_lme4_lmertest(setname):
    d = pd.read_csv(R_DIR / "fast_reml_data.csv")
    ref = pd.read_csv(R_DIR / "fast_reml_reference.csv")
    ref = ref[ref["set"] == setname].set_index("term")
    X, y, outer, inner = _r_design(d, setname)
    p = X.shape[1]
    fit = fit_batch(X, y, outer, inner)
    est = ref["estimate"].astype(float).to_numpy()[:p]
    se = ref["se"].astype(float).to_numpy()[:p]
    df = ref["df"].astype(float).to_numpy()[:p]
    # lme4's bobyqa stops at ~1e-7 relative in theta: fixed effects to 1e-5 of their SE
    np.testing.assert_array_less(np.abs(fit.beta[0] - est), 1e-5 * se)
    np.testing.assert_allclose(fit.se[0], se, rtol=SE_RTOL)
    np.testing.assert_allclose(fit.df[0], df, rtol=DF_RTOL)
    # our optimum is at least as good as lme4's and equal to 1e-8
    ll = float(ref.loc["logLik", "estimate"])
    assert fit.loglik[0] >= ll - 1e-8
    assert fit.loglik[0] - ll < 1e-6
    np.testing.assert_allclose(fit.sigma2[0], float(ref.loc["var:Residual", "estimate"]),
                               rtol=1e-5)
    tau_ref = float(ref.loc["var:therapist", "estimate"])
    np.testing.assert_allclose(fit.tau2[0, 0], tau_ref, rtol=1e-5, atol=1e-10)
    assert bool(fit.singular[0]) == bool(float(ref.loc["isSingular", "estimate"]))
    ml = fit_batch(X, y, outer, inner, reml=False)
    np.testing.assert_allclose(ml.loglik[0], float(ref.loc["logLik_ML", "estimate"]), atol=1e-6)


def test_against_statsmodels_mixedlm():
    import statsmodels.formula.api as smf

    d = pd.read_csv(R_DIR / "fast_reml_data.csv")
    d = d[d["set"] == "nested"].reset_index(drop=True)
    X, y, outer, inner = _r_design(d, "nested")
    fit = fit_batch(X, y, outer, inner)
    md = smf.mixedlm("y ~ alliance * (age + autonomy)", d, groups="therapist",
                     re_formula="1", vc_formula={"patient": "0 + C(patient)"})
    res = md.fit(reml=True, method="lbfgs")
    np.testing.assert_allclose(fit.beta[0], res.fe_params.to_numpy(), rtol=1e-4, atol=1e-6)
    # (statsmodels' bse_fe come from the joint information of fixed effects and variance
    # parameters, not lme4's sigma^2 (X'V^-1 X)^-1, so SEs are compared with lme4 only)
    np.testing.assert_allclose(fit.loglik[0], res.llf, atol=1e-4)
    np.testing.assert_allclose(fit.sigma2[0], res.scale, rtol=1e-3)
    np.testing.assert_allclose(fit.tau2[0], [res.cov_re.iloc[0, 0], res.vcomp[0]], rtol=1e-2)


def _lmm_fit(y, X, groups, L):
    blocks = [dense.RandomBlock(np.ones((len(y), 1)), g, int(g.max()) + 1) for g in groups]
    prob = dense.LMMProblem(y, X, blocks)
    theta = dense.optimize_theta(prob, prob.default_theta(), reml=True)[0]
    theta = dense.newton_polish(prob, theta, reml=True)[0]
    theta = search.search(dense.DenseCriterion(prob, reml=True), theta[None],
                          np.array([True]))[0][0]
    setup = dense.satterthwaite_setup(prob, theta, reml=True)
    ev = prob.evaluate(theta)
    return (ev.beta, np.sqrt(np.diag(setup.vcov)), satterthwaite.contrast_df(setup, L),
            theta)


def test_replicate_by_replicate_against_fit_mixed_core_with_dropout():
    # the dense lme4-formulation core that fit_mixed uses (models/lmm/dense.py)
    rng = np.random.default_rng(2026)
    X, outer, inner = make_design(rng, 10, [3] * 10, list(rng.integers(2, 7, size=30)))
    Y = simulate_y(rng, X, outer, inner, np.array([0.5, 0.2, 0.01, 0.15]), 0.4, 0.6, 6)
    mask = rng.random(Y.shape) > 0.2
    mask[:, 0] = True
    L = np.eye(4)[3]
    fit = fit_batch(X, Y, outer, inner, mask=mask, contrast=3)
    for b in range(Y.shape[0]):
        k = mask[b]
        beta, se, df, theta = _lmm_fit(Y[b, k], X[k], [outer[k], inner[k]], L)
        assert_beta_close(fit.beta[b], beta, se)
        np.testing.assert_allclose(fit.se[b], se, rtol=SE_RTOL)
        np.testing.assert_allclose(fit.df[b], df, rtol=DF_RTOL)
        np.testing.assert_allclose(fit.theta[b], theta, rtol=1e-5, atol=1e-6)


def _fit_mixed_replicate(y, X, outer, inner, expect_singular):
    """fit_mixed on one replicate (columns x1, x2, x12 of ``make_design``)."""
    import warnings

    import alliance_models as am

    data = pd.DataFrame({"y": y, "x1": X[:, 1], "x2": X[:, 2], "x12": X[:, 3],
                         "therapist": [f"t{c}" for c in outer]})
    formula = "y ~ x1 + x2 + x12 + (1 | therapist)"
    if inner is not None:
        data["patient"] = [f"p{c}" for c in inner]
        formula = "y ~ x1 + x2 + x12 + (1 | therapist/patient)"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mf = am.fit_mixed(formula, data)
    singular_warned = any(issubclass(w.category, SingularFitWarning) for w in rec)
    # the same scale-free rule (lme4's isSingular, theta < 1e-4) on both sides
    assert singular_warned == bool(expect_singular)
    return mf


def _check_against_fit_mixed(fit, b, mf):
    params = mf.params.to_numpy()
    se = np.sqrt(np.diag(mf.cov_params().to_numpy()))
    assert_beta_close(fit.beta[b], params, se)
    np.testing.assert_allclose(fit.se[b], se, rtol=SE_RTOL)
    np.testing.assert_allclose(fit.df[b], mf.contrast_df(np.eye(4)[3]), rtol=DF_RTOL)
    # variance components (fit_mixed's varcomp table: therapist, [patient,] Residual) and
    # the REML log-likelihood; a component at the boundary is zero to 1e-6 x sigma^2
    vc = mf.varcomp["vcov"].to_numpy(float)
    np.testing.assert_allclose(fit.sigma2[b], vc[-1], rtol=1e-4)
    np.testing.assert_allclose(fit.tau2[b], vc[:-1], rtol=1e-4, atol=1e-6 * vc[-1])
    np.testing.assert_allclose(fit.loglik[b], mf.loglik, atol=1e-6)


needs_fit_mixed = pytest.mark.skipif(
    importlib.util.find_spec("alliance_models.models.mixed") is None,
    reason="fit_mixed (models/mixed.py) has not landed yet",
)


@needs_fit_mixed
def test_replicate_by_replicate_against_fit_mixed():
    rng = np.random.default_rng(77)
    X, outer, inner = make_design(rng, 8, [3] * 8, list(rng.integers(3, 7, size=24)))
    Y = simulate_y(rng, X, outer, inner, np.array([0.5, 0.2, 0.01, 0.15]), 0.5, 0.6, 4)
    Y[1] = simulate_y(rng, X, outer, inner, np.array([0.5, 0.2, 0.01, 0.15]), 0.0, 0.6, 1)[0]
    fit = fit_batch(X, Y, outer, inner, contrast=3)
    assert fit.singular.any() and not fit.singular.all()  # both kinds are exercised
    for b in range(Y.shape[0]):
        mf = _fit_mixed_replicate(Y[b], X, outer, inner, fit.singular[b])
        _check_against_fit_mixed(fit, b, mf)


@needs_fit_mixed
def test_design_r1_replicates_equal_fit_mixed():
    # the reference design R1: 30 therapists x 8 patients x 6 sessions (1,440
    # rows), adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)
    import alliance_models as am

    nt, npat, ns = 30, 8, 6
    n = nt * npat * ns
    ther, pat = np.repeat(np.arange(nt), npat * ns), np.repeat(np.arange(nt * npat), ns)
    rng = np.random.default_rng(7)
    al = (0.45 * rng.standard_normal(nt)[ther] + 0.7 * rng.standard_normal(nt * npat)[pat]
          + 0.55 * rng.standard_normal(n))
    age = np.round(rng.normal(50, 14, nt * npat))[pat]
    au = rng.standard_normal(nt * npat)[pat]
    X = np.column_stack([np.ones(n), al, age, au, al * age, al * au])
    Y = (X @ [0.0, 0.25, 0.0, 0.1, 0.05 / 14, 0.1]
         + np.sqrt(0.05) * rng.standard_normal((2, nt))[:, ther]
         + np.sqrt(0.30) * rng.standard_normal((2, nt * npat))[:, pat]
         + np.sqrt(0.65) * rng.standard_normal((2, n)))
    fit = fit_batch(X, Y, ther, pat, contrast=5)
    L = np.eye(6)[5]
    for b in range(2):
        d = pd.DataFrame({"adherence": Y[b], "alliance": al, "age": age, "autonomy": au,
                          "therapist": ther, "patient": pat})
        mf = am.fit_mixed("adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)", d)
        se = np.sqrt(np.diag(mf.cov_params().to_numpy()))
        assert_beta_close(fit.beta[b], mf.params.to_numpy(), se)
        np.testing.assert_allclose(fit.se[b], se, rtol=SE_RTOL)
        np.testing.assert_allclose(fit.df[b], mf.contrast_df(L), rtol=DF_RTOL)
        np.testing.assert_allclose(fit.estimate[b], mf.params.iloc[5], rtol=BETA_RTOL)
        vc = mf.varcomp["vcov"].to_numpy(float)
        np.testing.assert_allclose(fit.tau2[b], vc[:-1], rtol=1e-4)
        np.testing.assert_allclose(fit.sigma2[b], vc[-1], rtol=1e-4)


def _check_fit_mixed(case):
    two, n_outer, inner_per, sizes, sd_outer, sd_inner, effect, dropout, seed = case
    rng = np.random.default_rng(seed)
    X, outer, inner = make_design(rng, n_outer, inner_per, sizes, two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, effect, 0.01, effect / 2]),
                   sd_outer, sd_inner, 2)
    mask = rng.random(Y.shape) > dropout if dropout else None
    if mask is not None:
        mask[:, :2] = True
    fit = fit_batch(X, Y, outer, inner, mask=mask, contrast=3)
    for b in range(2):
        k = np.ones(X.shape[0], bool) if mask is None else mask[b]
        mf = _fit_mixed_replicate(Y[b, k], X[k], outer[k], None if inner is None else inner[k],
                                  fit.singular[b])
        _check_against_fit_mixed(fit, b, mf)


@needs_fit_mixed
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(designs())
def test_agrees_with_fit_mixed_over_random_designs(case):
    _check_fit_mixed(case)


@needs_fit_mixed
@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(designs())
def test_agrees_with_fit_mixed_many_designs(case):
    _check_fit_mixed(case)


# ----------------------------------------------------------------------------------
# structure, invariances, memory
# ----------------------------------------------------------------------------------
def test_threads_give_the_same_fits_as_one_thread():
    # chunks run in threads: every replicate is fitted on its own row, so the threaded
    # fit equals the single-threaded one, masks included. Chunks of other shapes take other
    # BLAS code paths, whose rounding the optimiser carries to ~1e-10 relative (seen with
    # the Prescott kernel), so the bound is 1e-8: far below any statistical difference.
    rng = np.random.default_rng(41)
    X, outer, inner = make_design(rng, 7, [3] * 7, [4] * 21)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.5, 0.6, 40)
    mask = rng.random(Y.shape) > 0.2
    one = fit_batch(X, Y, outer, inner, mask=mask, contrast=3)
    many = fit_batch(X, Y, outer, inner, mask=mask, contrast=3, threads=3, memory=2**14)
    assert chunk_size(X.shape[0], 4, 21, 7, 4, memory=2**14) < 40  # several chunks
    for a, b in [(one.beta, many.beta), (one.se, many.se), (one.df, many.df),
                 (one.tau2, many.tau2), (one.loglik, many.loglik)]:
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(many.converged, one.converged)
    every = fit_batch(X, Y, outer, inner, mask=mask, contrast=3, threads=-1)
    np.testing.assert_allclose(every.df, one.df, rtol=1e-8)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ModelSpecError, match=r"threads must be a positive number.*got"):
            fit_batch(X, Y, outer, inner, threads=bad)


def test_moment_start_is_near_the_truth_on_a_large_balanced_design():
    # the ANOVA start recovers the variance ratios of a large balanced nested design
    # (truth g_outer = 0.49 / 1, g_inner = 0.36 / 1) to within 25%, and the Newton
    # iteration from it reaches the REML optimum (zero gradient, 1e-6)
    rng = np.random.default_rng(5)
    X, outer, inner = make_design(rng, 200, [5] * 200, [6] * 1000)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.7, 0.6, 3)
    stt = core.sufficient_stats(X, Y, core.make_layout(outer, inner))
    s0 = core._moment_start(stt)
    np.testing.assert_allclose(s0**2, np.tile([0.49, 0.36], (3, 1)), rtol=0.25)
    fit = fit_batch(X, Y, outer, inner)
    g = core.gradient(stt, fit.theta)
    assert np.abs(g).max() < 1e-6
    # one factor: between/within ratio
    X1, o1, _ = make_design(rng, 400, [1] * 400, [8] * 400, two_levels=False)
    Y1 = simulate_y(rng, X1, o1, None, np.array([1.0, 0.3, 0.0, 0.2]), 0.4, 0.0, 2)
    st1 = core.sufficient_stats(X1, Y1, core.make_layout(o1))
    np.testing.assert_allclose(core._moment_start(st1) ** 2, 0.16, rtol=0.25)


def test_invariant_to_row_order_shared_vs_per_replicate_X_and_chunking():
    rng = np.random.default_rng(3)
    X, outer, inner = make_design(rng, 8, [2] * 8, [5] * 16)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.5, 0.5, 9)
    mask = rng.random(Y.shape) > 0.15
    base = fit_batch(X, Y, outer, inner, mask=mask)
    # per-replicate X and tiny memory budget (one replicate per chunk)
    Xb = np.broadcast_to(X, (9, *X.shape)).copy()
    small = fit_batch(Xb, Y, outer, inner, mask=mask, memory=1)
    np.testing.assert_allclose(small.beta, base.beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(small.df, base.df, rtol=1e-8)
    # rows shuffled and cluster labels permuted
    perm = rng.permutation(X.shape[0])
    relabel_o = rng.permutation(outer.max() + 1)
    relabel_i = rng.permutation(inner.max() + 1)
    shuf = fit_batch(X[perm], Y[:, perm], relabel_o[outer[perm]], relabel_i[inner[perm]],
                     mask=mask[:, perm])
    np.testing.assert_allclose(shuf.beta, base.beta, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(shuf.se, base.se, rtol=1e-8)
    np.testing.assert_allclose(shuf.df, base.df, rtol=1e-6)
    shuf3 = fit_batch(Xb[:, perm], Y[:, perm], relabel_o[outer[perm]], relabel_i[inner[perm]],
                      mask=mask[:, perm], memory=2**16)
    np.testing.assert_allclose(shuf3.beta, base.beta, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(shuf3.df, base.df, rtol=1e-6)
    # a masked row is the same as a deleted row
    k = mask[4]
    one = fit_batch(X[k], Y[4, k], outer[k], inner[k])
    np.testing.assert_allclose(one.beta[0], base.beta[4], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one.df[0], base.df[4], rtol=1e-6)


def test_scale_equivariance():
    rng = np.random.default_rng(8)
    X, outer, inner = make_design(rng, 6, [3] * 6, [4] * 18)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.5, 0.5, 2)
    a = fit_batch(X, Y, outer, inner)
    b = fit_batch(X, 1000.0 * Y + 5e4, outer, inner)
    np.testing.assert_allclose(b.beta[:, 1:], 1000 * a.beta[:, 1:], rtol=1e-7)
    np.testing.assert_allclose(b.se, 1000 * a.se, rtol=1e-7)
    np.testing.assert_allclose(b.df, a.df, rtol=1e-6)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-6)


def test_peak_memory_does_not_grow_with_replicates():
    rng = np.random.default_rng(4)
    X, outer, inner = make_design(rng, 10, [4] * 10, [6] * 40)
    budget = 2 * 2**20
    Y_small = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.4, 0.6, 100)
    Y_big = np.concatenate([Y_small] * 8)

    def peak(Y):
        tracemalloc.start()
        fit_batch(X, Y, outer, inner, contrast=1, memory=budget)
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return pk

    per_rep_chunk = chunk_size(X.shape[0], 4, 40, 10, 6, memory=budget)
    assert per_rep_chunk < 100  # both runs are chunked
    small, big = peak(Y_small), peak(Y_big)
    outputs = 8 * 100 * 4 * 8 * 4  # the (B, p) result arrays of the extra replicates
    assert big < 1.3 * small + outputs
    assert big < 4 * budget


def _python_calls(fn):
    """Number of Python and C function calls made while ``fn()`` runs (sys.setprofile)."""
    import sys

    n = [0]

    def prof(frame, event, arg):
        if event in ("call", "c_call"):
            n[0] += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n[0]


@pytest.mark.parametrize("two", [True, False])
def test_hot_path_has_no_python_loop_over_replicates_or_clusters(two):
    # Vectorisation shows in the call count: a Python loop over replicates or clusters
    # would add at least one function call per replicate (cluster) per pass.
    rng = np.random.default_rng(31)
    X, outer, inner = make_design(rng, 6, [3] * 6, [4] * 18, two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.5,
                   0.6 if two else 0.0, 3)
    mask = rng.random(Y.shape) > 0.2
    mask[:, :2] = True
    big = np.tile(Y, (100, 1)), np.tile(mask, (100, 1))  # 300 replicates, same trajectories

    def fit(Yb, mb):
        return lambda: fit_batch(X, Yb, outer, inner, mask=mb, contrast=1, memory=2**30)

    n3, n300 = _python_calls(fit(Y, mask)), _python_calls(fit(*big))
    assert n300 - n3 < 100  # 297 more replicates
    # the same work per call for 6 and 60 outer clusters (18 and 180 inner ones)
    counts = []
    for n_outer in (6, 60):
        Xc, oc, ic = make_design(rng, n_outer, [3] * n_outer, [4] * (3 * n_outer), two)
        Yc = simulate_y(rng, Xc, oc, ic, np.array([1.0, 0.3, 0.0, 0.2]), 0.5, 0.6, 5)
        lay = core.make_layout(oc, ic)
        stc = core.sufficient_stats(Xc, Yc, lay)
        s = np.full((5, 2 if two else 1), 0.5)
        counts.append([
            _python_calls(lambda oc=oc, ic=ic: core.make_layout(oc, ic)),
            _python_calls(lambda Xc=Xc, Yc=Yc, lay=lay: core.sufficient_stats(Xc, Yc, lay)),
            _python_calls(lambda stc=stc, s=s: core.criterion(stc, s)),
            _python_calls(lambda stc=stc, s=s: core.gradient(stc, s)),
        ])
    assert counts[0] == counts[1]


def test_qualifies_and_frame_codes():
    q = [
        ("y ~ x + (1 | t)", True),
        ("y ~ x + (1 | t/p)", True),
        ("y ~ x + (1 | t) + (1 | t:p)", True),
        ("y ~ x + (1 | p:t) + (1 | t)", True),
        ("y ~ x + (1 | t) + (1 | p)", False),
        ("y ~ x + (1 + x | t)", False),
        ("y ~ x + (0 + x | t)", False),
        ("y ~ x + (1 | a/b/c)", False),
        ("y ~ x", False),
    ]
    for f, want in q:
        assert qualifies(parse_formula(f)) is want, f
    d = pd.DataFrame({
        "y": np.arange(12.0), "x": np.r_[0:12] % 5,
        "t": np.repeat(list("abcdef"), 2), "p": [f"p{i}" for i in range(12)],
    })
    fr = parse_formula("y ~ x + (1 | t) + (1 | t:p)").build(d)
    outer, inner = frame_codes(fr)
    assert outer.tolist() == np.repeat(np.arange(6), 2).tolist()
    assert len(np.unique(inner)) == 12
    fr1 = parse_formula("y ~ x + (1 + x | t)").build(d)
    with pytest.raises(ModelSpecError, match="does not qualify"):
        frame_codes(fr1)


def test_batchfit_frame_summary_and_p_values():
    rng = np.random.default_rng(9)
    X, outer, inner = make_design(rng, 6, [2] * 6, [5] * 12)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.4, 0.5, 5)
    fit = fit_batch(X, Y, outer, inner, contrast=1, names=["b0", "b1", "b2", "b3"],
                    components=("therapist", "patient"))
    assert isinstance(fit, BatchFit)
    fr = fit.to_frame()
    assert fr.shape[0] == 5
    assert {"beta[b1]", "se[b3]", "df", "tau2[therapist]", "tau2[patient]"} <= set(fr.columns)
    np.testing.assert_allclose(fr["beta[b1]"], fit.beta[:, 1])
    p = fit.p_values()
    t = fit.beta[:, 1] / fit.se[:, 1]
    np.testing.assert_allclose(p, 2 * stats.t.sf(np.abs(t), fit.df))
    s = fit.summary()
    assert "5 replicates" in s and "b3" in s and "converged: 5/5" in s
    allc = fit_batch(X, Y, outer, inner)
    assert allc.df.shape == (5, 4)
    assert "df[x2]" in allc.to_frame().columns


def test_error_messages():
    rng = np.random.default_rng(1)
    X, outer, inner = make_design(rng, 5, [2] * 5, [3] * 10)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.4, 0.5, 2)
    bad_inner = inner.copy()
    bad_inner[outer == 1] = 0  # inner code 0 now under therapists 0 and 1
    msg = r"inner code 0 appears under outer codes \[0, 1\]"
    with pytest.raises(DataValidationError, match=msg):
        fit_batch(X, Y, outer, bad_inner)
    Yn = Y.copy()
    Yn[1, 7] = np.nan
    with pytest.raises(DataValidationError, match=r"Y has non-finite values .*\(1, 7\)"):
        fit_batch(X, Yn, outer, inner)
    mask = np.ones(Y.shape, bool)
    mask[1, 7] = False
    # a masked NaN (in Y, or in a per-replicate X) is ignored: same fit as a finite value
    ref = fit_batch(X, Y, outer, inner, mask=mask)
    got = fit_batch(X, Yn, outer, inner, mask=mask)
    Xn = np.broadcast_to(X, (2, *X.shape)).copy()
    Xn[1, 7, 1] = np.inf
    got_x = fit_batch(Xn, Yn, outer, inner, mask=mask)
    for g in (got, got_x):
        assert g.converged.all()
        np.testing.assert_allclose(g.beta, ref.beta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.df, ref.df, rtol=1e-10)
    with pytest.raises(DataValidationError,
                       match=r"X has non-finite values .* row \(1, 7, 1\) \(first value inf\)"):
        fit_batch(Xn, Y, outer, inner)
    Ym = Y.copy()
    Ym[:, :8] = np.nan  # 16 bad entries: five shown, the rest counted
    with pytest.raises(DataValidationError, match=r"rows \(0, 0\), .*, \(0, 4\) \(and 11 more\) "
                       r"\(first value nan\)"):
        fit_batch(X, Ym, outer, inner)
    with pytest.raises(DataValidationError, match="mask must be a boolean array"):
        fit_batch(X, Y, outer, inner, mask=mask.astype(int))
    with pytest.raises(DataValidationError, match="X has 29 rows but Y has 30"):
        fit_batch(X[:-1], Y, outer, inner)
    with pytest.raises(DataValidationError, match="outer has 29 codes"):
        fit_batch(X, Y, outer[:-1], None)
    with pytest.raises(DataValidationError, match=r"outer must hold integer cluster codes; "
                       r"rows 0, 1, 2, 3, 4 \(and 25 more\) have 0\.5, 0\.5, 0\.5, 0\.5, "
                       r"0\.5; allowed: integers"):
        fit_batch(X, Y, outer + 0.5, inner)
    bad_codes = outer.astype(float)
    bad_codes[3] = np.nan
    with pytest.raises(DataValidationError, match=r"codes; row 3 has nan; allowed"):
        fit_batch(X, Y, bad_codes, inner)
    with pytest.raises(ModelSpecError, match=r"contrast index 4 is out of range .*0\.\.3"):
        fit_batch(X, Y, outer, inner, contrast=4)
    with pytest.raises(ModelSpecError, match="vector of length 4"):
        fit_batch(X, Y, outer, inner, contrast=np.ones(3))
    few = np.zeros(Y.shape, bool)
    few[0] = True
    few[1, :4] = True
    with pytest.raises(ModelSpecError, match="replicates row 1 have 4 observations"):
        fit_batch(X, Y, outer, inner, mask=few)


def test_rank_deficient_replicate_is_flagged_not_raised():
    rng = np.random.default_rng(12)
    X, outer, inner = make_design(rng, 6, [2] * 6, [4] * 12)
    Xb = np.broadcast_to(X, (3, *X.shape)).copy()
    Xb[1, :, 3] = Xb[1, :, 1]  # duplicate column in replicate 1 only
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.3, 0.0, 0.2]), 0.4, 0.5, 3)
    fit = fit_batch(Xb, Y, outer, inner, contrast=1)
    assert fit.converged.tolist() == [True, False, True]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("two", [True, False])
def test_core_gradient_matches_finite_differences(reml, two):
    rng = np.random.default_rng(21)
    X, outer, inner = make_design(rng, 7, [3] * 7, list(rng.integers(2, 6, size=21)), two)
    Y = simulate_y(rng, X, outer, inner, np.array([1.0, 0.5, 0.02, 0.3]), 0.5, 0.7, 4)
    mask = rng.random(Y.shape) > 0.2
    mask[:, 0] = True
    stats_ = core.sufficient_stats(X, Y, core.make_layout(outer, inner), mask)
    k = 2 if two else 1
    s = rng.uniform(0.1, 1.5, size=(4, k))
    g = core.gradient(stats_, s, reml=reml)
    h = 1e-6
    for i in range(k):
        e = np.zeros(k)
        e[i] = h
        fp = core.criterion(stats_, s + e, reml=reml)[0]
        fm = core.criterion(stats_, s - e, reml=reml)[0]
        np.testing.assert_allclose(g[:, i], (fp - fm) / (2 * h), rtol=1e-5, atol=1e-5)
    # the criterion is even in each relative SD, so its gradient vanishes at zero
    s0 = s.copy()
    s0[:, 0] = 0.0
    assert np.all(core.gradient(stats_, s0, reml=reml)[:, 0] == 0.0)


# ----------------------------------------------------------------------------------
# am.power(method="auto") runs the batched engine and says so
# ----------------------------------------------------------------------------------
@needs_fit_mixed
@pytest.mark.parametrize(
    ("changes", "formula", "test"),
    [
        # nested factors, unbalanced by dropout (the stacked-arrays route with a mask)
        ({"dropout": 0.4}, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
         "alliance:autonomy"),
        # one factor; no therapist variance, so some replicates sit on the boundary
        ({"icc_therapist": 0.0, "icc_patient": 0.0},
         "adherence ~ alliance * autonomy + (1 | therapist)", "alliance"),
    ],
)
def test_power_auto_uses_fast_engine_and_equals_fit_mixed(changes, formula, test):
    import alliance_models as am

    d = am.Design(therapists=10, patients_per_therapist=4, sessions=4, icc_therapist=0.15,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.1}).replace(**changes)
    kw = {"test": test, "n_sims": 6, "seed": 31, "n_jobs": 1, "progress": False}
    auto = am.power(d, formula, method="auto", **kw)
    assert auto.method == "fast"
    assert auto.to_frame().loc[0, "method"] == "fast" and "engine: fast" in auto.summary()
    mixed = am.power(d, formula, method="mixed", **kw)
    assert mixed.method == "mixed"
    f, m = auto.replicates, mixed.replicates
    assert not f["failed"].any() and f["converged"].all()
    # the tolerances, replicate by replicate
    assert_beta_close(f["estimate"].to_numpy(), m["estimate"].to_numpy(), m["se"].to_numpy())
    np.testing.assert_allclose(f["se"], m["se"], rtol=SE_RTOL)
    np.testing.assert_allclose(f["df"], m["df"], rtol=DF_RTOL)
    np.testing.assert_array_equal(f["singular"], m["singular"])
    np.testing.assert_array_equal(f["reject"], m["reject"])
    if "therapist)" in formula:
        assert f["singular"].any()  # the boundary is exercised


def test_power_auto_falls_back_when_the_model_does_not_qualify():
    import alliance_models as am

    d = am.Design(therapists=6, patients_per_therapist=2, sessions=4, icc_therapist=0.2,
                  moderators={}, effects={"alliance": 0.3})
    res = am.power(d, "adherence ~ alliance + (1 + alliance | therapist)", test="alliance",
                   method="auto", n_sims=2, seed=1, n_jobs=1, progress=False)
    assert res.method == "mixed"
    binom = d.replace(family="binomial")
    from alliance_models.planning.run import _resolve_method

    spec = parse_formula("adherence ~ alliance + (1 | therapist)")
    assert _resolve_method("auto", spec, d) == "fast"
    assert _resolve_method("auto", spec, binom) != "fast"


@pytest.mark.slow
def test_power_peak_memory_grows_only_by_the_per_replicate_outputs():
    # am.power fits in batches of bounded size: tripling n_sims adds only the replicate
    # table (about 0.1 KB per replicate, transiently a few copies of it), not the batch
    # working set (about 5 KB per replicate for this design: one batch of all replicates
    # would add megabytes)
    import alliance_models as am

    d = am.Design(therapists=8, patients_per_therapist=3, sessions=3, icc_therapist=0.1,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.1})
    f = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
    kw = {"test": "alliance:autonomy", "seed": 1, "n_jobs": 1, "progress": False,
          "batch_size": 25}
    am.power(d, f, n_sims=25, **kw)  # imports and caches outside the measurement

    def peak(n_sims):
        tracemalloc.start()
        res = am.power(d, f, n_sims=n_sims, **kw)
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert res.method == "fast" and res.n_completed == n_sims
        return pk

    small, big = peak(500), peak(1500)
    assert big - small < 1000 * 1024  # < 1 KB per extra replicate
