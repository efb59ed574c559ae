"""fit_mixed against lme4 / lmerTest reference values and independent computations.

Reference CSVs are written by ``tests/r/mixed_reference.R`` (R 4.2.2, lme4 1.1-31,
lmerTest 3.1-3; versions are also recorded in every ``*_info.csv``).

Tolerances (relative unless stated):

* fixed effects ``rtol 1e-4``; standard errors ``rtol 1e-3``;
* variance components (variances, covariances, SDs, correlations) ``rtol 1e-3``;
* Satterthwaite df ``rtol 1e-2`` (fixed effects and lmerTest ``contest`` contrasts);
* log-likelihoods (REML and ML) ``atol 1e-3``; AIC/BIC (ML) ``atol 2e-3``;
* Nakagawa R2 (computed by hand in R from lme4's estimates) ``rtol 1e-3``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alliance_models as am
from alliance_models.errors import (
    ConvergenceWarning,
    FewClustersWarning,
    MissingDataWarning,
    ModelSpecError,
    SingularFitWarning,
)
from alliance_models.models import mixed
from alliance_models.models.interface import FixedEffectsFit
from alliance_models.models.lmm import dense

R_DIR = Path(__file__).parent / "r"
RTOL_FE, RTOL_SE, RTOL_VC, RTOL_DF, ATOL_LL, RTOL_R2 = 1e-4, 1e-3, 1e-3, 1e-2, 1e-3, 1e-3

CASES = {
    "sleepstudy": "Reaction ~ Days + (Days | Subject)",
    "sleepstudy_uncorr": "Reaction ~ Days + (Days || Subject)",
    "nested": "y ~ x * m + (1 | therapist/patient)",
    "unbalanced": "y ~ x * m + (1 + x | g)",
    "penicillin": "diameter ~ 1 + (1 | plate) + (1 | sample)",
    # singular in lme4 too (intercept-slope correlation -1): checks the boundary handling
    "nested_slope": "y ~ x * m + (1 + x | therapist) + (1 | therapist:patient)",
}


def _read(name: str, what: str) -> pd.DataFrame:
    return pd.read_csv(R_DIR / f"{name}_{what}.csv", keep_default_na=False, na_values=[""])


def _info(name: str) -> dict[str, str]:
    d = _read(name, "info")
    return dict(zip(d.key, d.value.astype(str), strict=True))


def _fit(name: str, reml: bool = True) -> am.MixedFit:
    if _info(name)["singular"] == "TRUE":
        with pytest.warns(SingularFitWarning, match="singular fit"):
            return am.fit_mixed(CASES[name], _read(name, "data"), reml=reml)
    return am.fit_mixed(CASES[name], _read(name, "data"), reml=reml)


@pytest.fixture(scope="module")
def fits() -> dict[tuple[str, bool], am.MixedFit]:
    return {(n, reml): _fit(n, reml) for n in CASES for reml in (True, False)}


def _norm_group(g: str) -> str:
    """lme4 names ``g1/g2`` terms ``g2:g1`` and ``||`` terms ``g.1``: compare as sets."""
    g = g.split(".")[0]
    return ":".join(sorted(g.split(":")))


def _vc_key(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["key"] = [
        f"{_norm_group(g)}|{v1 if isinstance(v1, str) else ''}|{v2 if isinstance(v2, str) else ''}"
        for g, v1, v2 in zip(out.group, out.var1, out.var2, strict=True)
    ]
    return out.set_index("key")


# -- agreement with lme4 / lmerTest ------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_fixed_effects_se_df_match_lmertest(fits, name):
    fit = fits[(name, True)]
    ref = _read(name, "fixef")
    ours = fit.fixed
    assert [t.replace("(Intercept)", "Intercept") for t in ref.term] == list(ours.index)
    np.testing.assert_allclose(ours["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(ours["se"], ref["se"], rtol=RTOL_SE)
    np.testing.assert_allclose(ours["df"], ref["df"], rtol=RTOL_DF)
    np.testing.assert_allclose(ours["t"], ref["t"], rtol=RTOL_SE)
    np.testing.assert_allclose(ours["p"], ref["p"], rtol=2e-2, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("reml", [True, False])
def test_variance_components_match_lme4(fits, name, reml):
    fit = fits[(name, reml)]
    ref = _vc_key(_read(name, "varcomp" if reml else "ml_varcomp").rename(columns={"grp": "group"}))
    ours = _vc_key(fit.varcomp)
    assert sorted(ours.index) == sorted(ref.index)
    ref = ref.loc[ours.index]
    np.testing.assert_allclose(ours["vcov"], ref["vcov"], rtol=RTOL_VC, atol=1e-10)
    np.testing.assert_allclose(ours["sdcor"], ref["sdcor"], rtol=RTOL_VC, atol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_loglik_aic_bic_and_r2_match_lme4(fits, name):
    info = _info(name)
    reml_fit, ml_fit = fits[(name, True)], fits[(name, False)]
    assert reml_fit.loglik == pytest.approx(float(info["loglik_reml"]), abs=ATOL_LL)
    assert ml_fit.loglik == pytest.approx(float(info["loglik_ml"]), abs=ATOL_LL)
    assert ml_fit.aic == pytest.approx(float(info["aic_ml"]), abs=2e-3)
    assert ml_fit.bic == pytest.approx(float(info["bic_ml"]), abs=2e-3)
    assert reml_fit.sigma == pytest.approx(float(info["sigma"]), rel=RTOL_VC)
    assert reml_fit.n_obs == int(info["n"])
    assert reml_fit.r2_marginal == pytest.approx(float(info["r2_marginal"]), rel=RTOL_R2, abs=1e-9)
    assert reml_fit.r2_conditional == pytest.approx(float(info["r2_conditional"]), rel=RTOL_R2)
    assert reml_fit.singular is (info["singular"] == "TRUE")


@pytest.mark.parametrize("name", ["sleepstudy", "nested", "unbalanced", "penicillin"])
def test_r2_matches_performance_r2_nakagawa(fits, name):
    """Independent implementation: R performance::r2_nakagawa (tests/r/nakagawa_reference.R)."""
    ref = pd.read_csv(R_DIR / "nakagawa_performance.csv").set_index("case").loc[name]
    fit = fits[(name, True)]
    assert fit.r2_marginal == pytest.approx(ref["r2_marginal"], rel=RTOL_R2, abs=1e-9)
    assert fit.r2_conditional == pytest.approx(ref["r2_conditional"], rel=RTOL_R2)


@pytest.mark.parametrize("name", list(CASES))
def test_ml_fixed_effects_match_lme4(fits, name):
    ref = _read(name, "ml_fixef")
    ours = fits[(name, False)].fixed
    np.testing.assert_allclose(ours["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(ours["se"], ref["se"], rtol=RTOL_SE)
    np.testing.assert_allclose(ours["df"], ref["df"], rtol=RTOL_DF)


@pytest.mark.parametrize("name", ["sleepstudy", "nested", "unbalanced", "nested_slope"])
def test_contrast_df_matches_lmertest_contest(fits, name):
    fit = fits[(name, True)]
    ref = _read(name, "contrast").iloc[0]
    L = np.array([float(v) for v in ref["L"].split()])
    res = fit.test_contrast(L)
    assert res["estimate"] == pytest.approx(ref["estimate"], rel=RTOL_FE)
    assert res["se"] == pytest.approx(ref["se"], rel=RTOL_SE)
    assert fit.contrast_df(L) == pytest.approx(ref["df"], rel=RTOL_DF)
    assert res["t"] == pytest.approx(ref["t"], rel=RTOL_SE)


def test_formula_features_match_lmertest():
    """C(), I(), a transformation and a ':' product (tests/r/mixed_formula_reference.R)."""
    d = _read("nested", "data")
    fit = am.fit_mixed(
        "y ~ x + x:m + C(session) + I(x**2) + np.log(m + 5) + (1 | therapist/patient)", d
    )
    ref = pd.read_csv(R_DIR / "formula_fixef.csv")
    r_names = {f"C(session)[T.{k}]": f"factor(session){k}" for k in range(2, 6)}
    r_names |= {"Intercept": "(Intercept)", "I(x ** 2)": "I(x^2)", "np.log(m + 5)": "log(m + 5)"}
    ref = ref.set_index("term").loc[[r_names.get(t, t) for t in fit.fixed.index]]
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(fit.fixed["se"], ref["se"], rtol=RTOL_SE)
    np.testing.assert_allclose(fit.fixed["df"], ref["df"], rtol=RTOL_DF)
    np.testing.assert_allclose(fit.fixed["t"], ref["t"], rtol=RTOL_SE)
    vc = pd.read_csv(R_DIR / "formula_varcomp.csv").set_index("grp")["vcov"]
    ours = fit.varcomp.set_index("group")["vcov"]
    for g_ours, g_r in [("therapist", "therapist"), ("therapist:patient", "patient:therapist"),
                        ("Residual", "Residual")]:
        assert ours[g_ours] == pytest.approx(vc[g_r], rel=RTOL_VC)


def test_explicit_nesting_equals_slash_and_lme4(fits):
    """``(1 | g1) + (1 | g1:g2)`` is the same model as ``(1 | g1/g2)``."""
    d = _read("nested", "data")
    fit = am.fit_mixed("y ~ x * m + (1 | therapist) + (1 | therapist:patient)", d)
    ref = fits[("nested", True)]
    np.testing.assert_allclose(fit.fixed.to_numpy(), ref.fixed.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(fit.varcomp["vcov"], ref.varcomp["vcov"], rtol=1e-8)
    lme4 = _read("nested", "fixef")
    np.testing.assert_allclose(fit.fixed["df"], lme4["df"], rtol=RTOL_DF)


def test_separate_terms_equal_double_bar_and_match_lme4():
    """``(1 | S) + (0 + Days | S)`` is lme4's expansion of ``(Days || S)``."""
    d = _read("sleepstudy_uncorr", "data")
    fit = am.fit_mixed("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", d)
    ref = _read("sleepstudy_uncorr", "fixef")
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(fit.fixed["se"], ref["se"], rtol=RTOL_SE)
    np.testing.assert_allclose(fit.fixed["df"], ref["df"], rtol=RTOL_DF)
    vc = _read("sleepstudy_uncorr", "varcomp")["vcov"].to_numpy()
    np.testing.assert_allclose(fit.varcomp["vcov"], vc, rtol=RTOL_VC)
    assert fit.sm_result is None  # two terms on one factor: fitted by the numpy core only


def test_row_order_does_not_matter(fits):
    d = _read("nested", "data").sample(frac=1.0, random_state=3)
    fit = am.fit_mixed(CASES["nested"], d)
    ref = fits[("nested", True)]
    np.testing.assert_allclose(fit.fixed.to_numpy(), ref.fixed.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_blups_match_lme4_ranef(fits, name):
    fit = fits[(name, True)]
    ref = _read(name, "ranef")
    ref["key"] = [
        f"{_norm_group(g)}|{t}|{':'.join(sorted(str(v).split(':')))}"
        for g, t, v in zip(ref.grpvar, ref.term, ref.grp, strict=True)
    ]
    ref = ref.set_index("key")["condval"]
    ours = {}
    for term in fit.spec.random:
        re = fit.random_effects[str(term)]
        for lab, row in re.iterrows():
            for coef, val in row.items():
                ours[
                    f"{_norm_group(term.group)}|{coef}|{':'.join(sorted(str(lab).split(':')))}"
                ] = val
    ours = pd.Series(ours)
    assert sorted(ours.index) == sorted(ref.index)
    scale = np.abs(ref.to_numpy()).max()
    np.testing.assert_allclose(ours[ref.index], ref, rtol=RTOL_VC, atol=RTOL_VC * scale)


def test_nested_icc_from_variance_components(fits):
    fit = fits[("nested", True)]
    vc = _read("nested", "varcomp").set_index("grp")["vcov"]
    total = vc.sum()
    assert fit.icc.loc["therapist", "icc"] == pytest.approx(vc["therapist"] / total, rel=1e-3)
    both = (vc["therapist"] + vc["patient:therapist"]) / total
    assert fit.icc.loc["therapist:patient", "icc"] == pytest.approx(both, rel=1e-3)
    share = vc["patient:therapist"] / total
    assert fit.icc.loc["therapist:patient", "share"] == pytest.approx(share, rel=1e-3)
    assert fits[("sleepstudy", True)].icc.empty  # random slopes: no ICC


# -- the numpy core against independent computations --------------------------------------
def test_core_gradient_and_vcov_jacobian_match_finite_differences():
    d = _read("unbalanced", "data")
    fit = am.fit_mixed(CASES["unbalanced"], d)
    prob = dense.LMMProblem(
        fit.frame.y,
        fit.frame.X,
        [dense.RandomBlock(fit.frame.Z["(1 + x | g)"], fit.frame.groups["g"], 20)],
    )
    theta = fit.theta + np.array([0.1, -0.05, 0.02])
    h = 1e-6
    num = [
        (prob.deviance(theta + h * e) - prob.deviance(theta - h * e)) / (2 * h) for e in np.eye(3)
    ]
    np.testing.assert_allclose(prob.gradient(theta), num, rtol=1e-5, atol=1e-6)
    phi = np.append(theta, 1.3)

    def vcov(p):
        return p[-1] ** 2 * np.linalg.inv(prob.evaluate(p[:-1]).M)

    h = 1e-4  # x:m is uncentred (m ~ 50): smaller steps drown in rounding error
    num_j = np.array([(vcov(phi + h * e) - vcov(phi - h * e)) / (2 * h) for e in np.eye(4)])
    np.testing.assert_allclose(prob.vcov_jacobian(theta, 1.3, reml=True), num_j, atol=1e-7)


def test_core_deviance_matches_dense_marginal_likelihood():
    """REML deviance from the penalised least-squares solve equals the textbook formula."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(6), [2, 3, 4, 5, 6, 7])
    n = g.size
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    Zs = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n)
    prob = dense.LMMProblem(y, X, [dense.RandomBlock(Zs, g, 6)])
    assert len(prob.components) == 6  # one independent block of A per group
    theta, sigma = np.array([0.7, 0.2, 0.4]), 1.3
    lam = prob.lambdas(theta)[0]
    G = sigma**2 * lam @ lam.T
    Z = np.zeros((n, 12))
    for i in range(n):
        Z[i, 2 * g[i] : 2 * g[i] + 2] = Zs[i]
    V = sigma**2 * np.eye(n) + Z @ np.kron(np.eye(6), G) @ Z.T
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    r = y - X @ beta
    dev = (
        np.linalg.slogdet(V)[1]
        + np.linalg.slogdet(X.T @ Vi @ X)[1]
        + r @ Vi @ r
        + (n - 2) * np.log(2 * np.pi)
    )
    assert prob.deviance_vp(np.append(theta, sigma), reml=True) == pytest.approx(dev, rel=1e-10)
    np.testing.assert_allclose(prob.evaluate(theta).beta, beta, rtol=1e-10)


def _dense_reml_deviance(y, X, z_blocks, covs, sigma):
    n = y.size
    V = sigma**2 * np.eye(n)
    for (Zk, codes, G), cov in zip(z_blocks, covs, strict=True):
        q = Zk.shape[1]
        Z = np.zeros((n, G * q))
        for i in range(n):
            Z[i, codes[i] * q : codes[i] * q + q] = Zk[i]
        V += Z @ np.kron(np.eye(G), cov) @ Z.T
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    beta = np.linalg.solve(XVX, X.T @ Vi @ y)
    r = y - X @ beta
    p = X.shape[1]
    dev = (
        np.linalg.slogdet(V)[1]
        + np.linalg.slogdet(XVX)[1]
        + r @ Vi @ r
        + (n - p) * np.log(2 * np.pi)
    )
    return dev, beta


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    structure=st.sampled_from(["nested", "crossed", "slopes", "nested_slopes"]),
)
def test_block_algebra_equals_dense_formula(seed, structure):
    """Property: for random designs and parameters the blockwise core reproduces the
    dense marginal REML deviance and GLS estimate (rtol 1e-9)."""
    rng = np.random.default_rng(seed)
    n_outer = int(rng.integers(2, 5))
    sizes = rng.integers(1, 6, size=n_outer * 2)  # two inner groups per outer group
    inner = np.repeat(np.arange(sizes.size), sizes)
    outer = inner // 2
    n = inner.size
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = rng.normal(size=n) * 3 + 10
    one = np.ones((n, 1))
    if structure == "nested":
        spec = [(one, outer, n_outer, True, 1), (one, inner, sizes.size, True, 1)]
    elif structure == "crossed":
        cross = rng.integers(0, 3, size=n)
        spec = [(one, outer, n_outer, True, 1), (one, cross, 3, True, 1)]
    elif structure == "slopes":
        spec = [(np.column_stack([one[:, 0], x]), inner, sizes.size, True, 2)]
    else:
        spec = [
            (np.column_stack([one[:, 0], x]), outer, n_outer, False, 2),
            (one, inner, sizes.size, True, 1),
        ]
    blocks = [dense.RandomBlock(Z, c, G, corr) for Z, c, G, corr, _ in spec]
    prob = dense.LMMProblem(y, X, blocks)
    theta = np.abs(rng.normal(size=prob.n_theta)) + 0.1
    sigma = float(rng.uniform(0.5, 2.0))
    covs = [sigma**2 * lam @ lam.T for lam in prob.lambdas(theta)]
    dev, beta = _dense_reml_deviance(y, X, [(Z, c, G) for Z, c, G, *_ in spec], covs, sigma)
    phi = np.append(theta, sigma)
    assert prob.deviance_vp(phi, reml=True) == pytest.approx(dev, rel=1e-9)
    np.testing.assert_allclose(prob.evaluate(theta).beta, beta, rtol=1e-8, atol=1e-10)
    # and the analytic gradient in (theta, sigma) matches central differences
    h = 1e-6
    num = [
        (prob.deviance_vp(phi + h * e) - prob.deviance_vp(phi - h * e)) / (2 * h)
        for e in np.eye(phi.size)
    ]
    np.testing.assert_allclose(prob.gradient_vp(phi), num, rtol=1e-4, atol=1e-5)


def test_satterthwaite_df_for_unit_contrasts_equals_table(fits):
    fit = fits[("nested", True)]
    for j, name in enumerate(fit.params.index):
        L = np.eye(len(fit.params))[j]
        assert fit.contrast_df(L) == pytest.approx(fit.fixed.loc[name, "df"], rel=1e-12)


def test_blups_match_statsmodels_random_effects(fits):
    import statsmodels.formula.api as smf

    fit = fits[("sleepstudy", True)]
    # an independent implementation: statsmodels MixedLM fitted here
    sm = smf.mixedlm("Reaction ~ Days", fit.frame.data, groups="Subject",
                     re_formula="~Days").fit(reml=True, method="lbfgs")
    ours = fit.random_effects["(Days | Subject)"]
    for label, blup in sm.random_effects.items():
        np.testing.assert_allclose(
            ours.loc[str(label)].to_numpy(), np.asarray(blup), rtol=1e-3, atol=1e-3
        )


def test_predict_fixed_and_conditional(fits):
    fit = fits[("sleepstudy", True)]
    d = fit.frame.data
    fixed = fit.predict(d)
    np.testing.assert_allclose(fixed, fit.frame.X @ fit.params.to_numpy(), rtol=1e-12)
    cond = fit.predict(d, include_random=True)
    re = fit.random_effects["(Days | Subject)"].loc[d.Subject.astype(str)].to_numpy()
    manual = fixed.to_numpy() + re[:, 0] + re[:, 1] * d.Days.to_numpy()
    np.testing.assert_allclose(cond, manual, rtol=1e-12)
    # BLUP property: conditional residuals are smaller than marginal ones
    y = fit.frame.y
    assert np.sum((y - cond) ** 2) < np.sum((y - fixed) ** 2)
    new = pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["unseen", "unseen"]})
    np.testing.assert_allclose(fit.predict(new, include_random=True), fit.predict(new))
    with pytest.raises(ModelSpecError, match="'Subject'"):
        fit.predict(new[["Days"]], include_random=True)


def test_protocol_and_result_api(fits):
    fit = fits[("nested", True)]
    assert isinstance(fit, FixedEffectsFit)
    assert fit.fixed_draws is None
    assert list(fit.cov_params().index) == list(fit.params.index)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov_params())), fit.fixed["se"])
    ci = fit.conf_int(0.10)
    from scipy import stats

    q = stats.t.ppf(0.95, fit.fixed["df"])
    np.testing.assert_allclose(ci["upper"], fit.fixed["estimate"] + q * fit.fixed["se"])
    np.testing.assert_allclose(fit.conf_int()["lower"], fit.fixed["ci_lower"])
    assert fit.to_frame().columns.tolist() == [
        "estimate",
        "se",
        "df",
        "t",
        "p",
        "ci_lower",
        "ci_upper",
    ]
    text = fit.summary()
    for part in (
        "Satterthwaite",
        "Random effects",
        "therapist:patient",
        "x:m",
        "Intraclass",
        "marginal",
        "compare fixed effects only with reml=False",
    ):
        assert part in text
    assert fit.n_groups == {"therapist": 12, "therapist:patient": 72}
    sizes = fit.group_sizes
    assert (sizes["therapist"] == 30).all() and (sizes["therapist:patient"] == 5).all()
    assert "therapist 30-30 (median 30)" in text
    unb = fits[("unbalanced", True)].group_sizes["g"]
    raw = _read("unbalanced", "data").g.value_counts()
    assert unb.sort_index().tolist() == raw.sort_index().tolist()
    assert fit.converged and fit.grad_max < mixed.CONVERGED_GRAD
    assert fit.optimizer == "lbfgs"
    with pytest.raises(ModelSpecError, match="4 finite weights"):
        fit.contrast_df([1, 0])


def test_ddf_residual_and_none():
    d = _read("nested", "data")
    res = am.fit_mixed(CASES["nested"], d, ddf="residual")
    assert res.contrast_df(np.ones(4)) == 360 - 4
    np.testing.assert_allclose(res.fixed["df"], 356)
    z = am.fit_mixed(CASES["nested"], d, ddf="none")
    assert z.contrast_df(np.ones(4)) == np.inf
    from scipy import stats

    np.testing.assert_allclose(z.fixed["p"], 2 * stats.norm.sf(np.abs(z.fixed["t"])))
    np.testing.assert_allclose(z.fixed["estimate"], res.fixed["estimate"])


def test_outcome_units_do_not_change_relative_parameters():
    d = _read("nested", "data")
    base = am.fit_mixed(CASES["nested"], d)
    scaled = am.fit_mixed(CASES["nested"], d.assign(y=d.y * 1000))
    np.testing.assert_allclose(scaled.theta, base.theta, rtol=1e-6)
    np.testing.assert_allclose(scaled.fixed["estimate"], 1000 * base.fixed["estimate"], rtol=1e-6)
    np.testing.assert_allclose(scaled.fixed["df"], base.fixed["df"], rtol=1e-6)


# -- diagnostics --------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1.0, 1000.0, 0.001])
def test_singular_fit_warned_whatever_the_units(factor):
    d = _read("singular", "data")
    d = d.assign(y=d.y * factor)
    with pytest.warns(SingularFitWarning, match=r"\(1 \| therapist\).*simplify the random"):
        fit = am.fit_mixed("y ~ x + (1 | therapist/patient)", d)
    assert fit.singular
    assert fit.varcomp.set_index("group").loc["therapist", "vcov"] == pytest.approx(0, abs=1e-12)
    assert "singular fit" in fit.summary()
    # the patient variance agrees with lme4 (rescaled)
    ref = _read("singular", "varcomp").set_index("grp")
    ours = fit.varcomp.set_index("group")
    assert ours.loc["therapist:patient", "vcov"] == pytest.approx(
        ref.loc["patient:therapist", "vcov"] * factor**2, rel=RTOL_VC
    )


def test_no_singular_warning_for_small_but_real_variance_in_small_units():
    """statsmodels' absolute 0.01 rule would flag this; the scale-free rule must not."""
    import statsmodels.formula.api as smf

    d = _read("nested", "data").assign(y=lambda t: t.y * 0.001)
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        smf.mixedlm("y ~ x * m", d, groups="therapist", vc_formula={"p": "0 + C(patient)"}).fit(
            reml=True
        )
    assert any("boundary" in str(w.message) for w in raw)  # statsmodels does flag it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ... but none of its warnings reach the user
        fit = am.fit_mixed(CASES["nested"], d)
    assert not fit.singular
    assert fit.varcomp.set_index("group").loc["therapist", "vcov"] < 0.01


def test_fallback_optimizer_is_recorded(monkeypatch):
    real = dense.optimize_theta
    calls: list[str] = []

    def flaky(problem, theta0, *, method="lbfgs", **kwargs):
        calls.append(method)
        if len(calls) == 1:  # the first optimiser of the chain fails
            raise np.linalg.LinAlgError("Singular matrix")
        return real(problem, theta0, method=method, **kwargs)

    monkeypatch.setattr(dense, "optimize_theta", flaky)
    fit = am.fit_mixed(CASES["sleepstudy"], _read("sleepstudy", "data"))
    assert calls[:2] == ["lbfgs", "bfgs"]
    assert fit.optimizer == "bfgs"
    ref = _read("sleepstudy", "fixef")
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=RTOL_FE)


def test_unconverged_optimizer_is_followed_by_the_next(monkeypatch):
    """An optimiser that ends without converging (no exception) hands over to the next one;
    the result records the one that converged and no warning is raised."""
    real = dense.newton_polish
    calls: list[int] = []

    def first_stalls(problem, theta, *, reml=True, maxiter=50, held=()):
        if held:  # the search's face checks (not the optimiser chain)
            return real(problem, theta, reml=reml, maxiter=maxiter, held=held)
        calls.append(1)
        if len(calls) == 1:
            return np.asarray(theta, float), 1.0  # lbfgs: gradient far above CONVERGED_GRAD
        return real(problem, theta, reml=reml, maxiter=maxiter)

    monkeypatch.setattr(dense, "newton_polish", first_stalls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = am.fit_mixed(CASES["sleepstudy"], _read("sleepstudy", "data"))
    assert len(calls) == 2
    assert fit.optimizer == "bfgs" and fit.converged and fit.grad_max < mixed.CONVERGED_GRAD
    ref = _read("sleepstudy", "fixef")
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(fit.fixed["df"], ref["df"], rtol=RTOL_DF)


def test_nested_fit_needs_no_statsmodels_start():
    # the core reaches lme4's optimum from lme4's start (no statsmodels MixedLM start)
    fit = am.fit_mixed(CASES["nested"], _read("nested", "data"))
    assert fit.sm_result is None and fit.converged and fit.optimizer == "lbfgs"
    ref = _read("nested", "fixef")
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=RTOL_FE)
    np.testing.assert_allclose(fit.fixed["se"], ref["se"], rtol=RTOL_SE)
    np.testing.assert_allclose(fit.fixed["df"], ref["df"], rtol=RTOL_DF)


def test_one_parsed_spec_serves_mixed_and_gee():
    """The formula is parsed once; fit_mixed and fit_gee take the same ModelSpec."""
    d = _read("nested", "data")
    spec = am.parse_formula("y ~ x * m + (1 | therapist)")
    fit = am.fit_mixed(spec, d)
    assert fit.spec is spec
    pd.testing.assert_frame_equal(
        fit.fixed, am.fit_mixed("y ~ x * m + (1 | therapist)", d).fixed
    )
    gee = am.fit_gee(spec, d, family="gaussian")
    assert gee.spec is spec and gee.groups == "therapist"


@pytest.mark.parametrize("opt", ["powell", "nm", "bfgs"])
def test_each_optimizer_reaches_the_lme4_optimum(opt):
    fit = am.fit_mixed(CASES["penicillin"], _read("penicillin", "data"), optimizer=opt)
    assert fit.optimizer == opt
    assert fit.loglik == pytest.approx(float(_info("penicillin")["loglik_reml"]), abs=ATOL_LL)


def test_non_convergence_warns_with_advice():
    d = _read("unbalanced", "data")
    with pytest.warns(ConvergenceWarning, match="did not converge.*rescale predictors"):
        fit = am.fit_mixed(CASES["unbalanced"], d, optimizer="nm", maxiter=1)
    assert not fit.converged
    # with several optimisers, all are tried before giving up and the warning names them
    with pytest.warns(ConvergenceWarning, match=r"after trying nm, powell; best: (nm|powell)"):
        fit2 = am.fit_mixed(CASES["unbalanced"], d, optimizer=["nm", "powell"], maxiter=1)
    assert not fit2.converged and fit2.optimizer in ("nm", "powell")
    assert "NOT converged" in fit.summary()


def test_non_positive_definite_hessian_warns():
    """A random 'slope' on a column equal to the intercept is not identifiable: only the
    variance of the sum is, so the Hessian in theta has a zero eigenvalue.

    Where on the ridge of equal likelihood the optimiser stops depends on floating-point
    details (BLAS kernel, CPU): inside it, the Hessian check fires (ConvergenceWarning); at
    its singular end, the singular-fit check fires (SingularFitWarning). Either or both may
    be raised, in any order; nothing else may, and at least one must.
    """
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(15), 6)
    d = pd.DataFrame({"g": g, "x": rng.normal(size=90), "one": 1.0})
    d["y"] = 0.5 * d.x + rng.normal(0, 1, 15)[g] + rng.normal(size=90)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit = am.fit_mixed("y ~ x + (1 + one | g)", d)
    kinds = {type(w.message) for w in rec}
    assert kinds, "a non-identifiable random part must be diagnosed"
    assert kinds <= {ConvergenceWarning, SingularFitWarning}, [str(w.message) for w in rec]
    for w in rec:
        if isinstance(w.message, ConvergenceWarning):
            assert re.search("not positive definite.*simplify the random", str(w.message))
        else:
            assert re.search(r"singular fit.*simplify the random", str(w.message))
    assert fit.singular == (SingularFitWarning in kinds)
    # the identifiable part is right wherever the optimiser stopped: the total intercept
    # variance equals (1 | g)'s
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simple = am.fit_mixed("y ~ x + (1 | g)", d)
    lam = np.array([[fit.theta[0], 0.0], [fit.theta[1], fit.theta[2]]])
    total = fit.sigma**2 * np.ones(2) @ lam @ lam.T @ np.ones(2)
    ref = simple.varcomp.set_index("group").loc["g", "vcov"]
    assert total == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(fit.fixed["estimate"], simple.fixed["estimate"], rtol=1e-6)


def test_statsmodels_warnings_do_not_leak_in_a_fresh_process():
    """statsmodels' first import adds 'always' filters; they must not beat ours."""
    import subprocess
    import sys

    code = (
        "import warnings, pandas as pd, alliance_models as am\n"
        "warnings.simplefilter('error')\n"
        f"d = pd.read_csv({str(R_DIR / 'nested_data.csv')!r})\n"
        "d['y'] = d['y'] * 0.001\n"  # statsmodels flags this as 'on the boundary'
        f"fit = am.fit_mixed({CASES['nested']!r}, d)\n"
        "assert not fit.singular\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_statsmodels_warnings_do_not_leak():
    # filterwarnings=error turns any leaked statsmodels warning into a failure
    d = _read("singular", "data")
    with pytest.warns(SingularFitWarning) as rec:
        am.fit_mixed("y ~ x + (1 | therapist/patient)", d)
    assert {type(w.message) for w in rec} == {SingularFitWarning}


# -- bad input ----------------------------------------------------------------------------
@pytest.fixture
def small() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    g = np.repeat([f"t{i}" for i in range(8)], 10)
    return pd.DataFrame(
        {
            "therapist": g,
            "alliance": rng.normal(size=80),
            "age": rng.normal(50, 10, size=80),
            "adherence": rng.normal(size=80) + np.repeat(rng.normal(0, 1.5, size=8), 10),
        }
    )


def test_missing_column_lists_close_matches(small):
    with pytest.raises(ModelSpecError, match=r"'aliance'.*did you mean 'alliance'"):
        am.fit_mixed("adherence ~ aliance + (1 | therapist)", small)


def test_one_level_grouping_factor(small):
    with pytest.raises(ModelSpecError, match=r"'therapist' has only one level \('t0'\)"):
        am.fit_mixed("adherence ~ alliance + (1 | therapist)", small.assign(therapist="t0"))


def test_constant_moderator(small):
    with pytest.raises(ModelSpecError, match=r"term 'age' is constant \(50 in every one"):
        am.fit_mixed("adherence ~ alliance * age + (1 | therapist)", small.assign(age=50.0))


def test_few_clusters_warning(small):
    d = small[small.therapist.isin(["t0", "t1", "t2"])]
    with pytest.warns(FewClustersWarning, match="'therapist' has only 3 levels; variance "
                      "estimates with fewer than 5 clusters are unstable"):
        fit = am.fit_mixed("adherence ~ alliance + (1 | therapist)", d)
    assert fit.n_groups == {"therapist": 3}


def test_missing_values_dropped_listwise_and_counted(small):
    d = small.copy()
    d.loc[[3, 17, 40], "age"] = np.nan
    d.loc[5, "adherence"] = np.nan
    with pytest.warns(MissingDataWarning, match=r"4 of 80 rows.*age.*rows 3, 5, 17, 40"):
        fit = am.fit_mixed("adherence ~ alliance * age + (1 | therapist)", d)
    assert fit.n_dropped == 4 and fit.n_obs == 76
    assert "4 dropped" in fit.summary()
    complete = am.fit_mixed("adherence ~ alliance * age + (1 | therapist)", d.dropna())
    np.testing.assert_allclose(fit.fixed["estimate"], complete.fixed["estimate"], rtol=1e-10)


@pytest.mark.parametrize(
    ("formula", "kwargs", "column"),
    [
        ("adherence ~ alliance + (1 | therapist)", {"family": "gamma"}, None),
        ("cbind(att, miss) ~ alliance + (1 | therapist)", {}, None),
        ("att01 ~ alliance + (1 | therapist)", {}, "att01"),
    ],
)
def test_binomial_requests_point_to_the_glmm_gee_or_bayes(small, formula, kwargs, column):
    d = small.assign(att=3, miss=1, att01=(small.alliance > 0).astype(int))
    with pytest.raises(ModelSpecError, match=r"family='binomial', trials='scheduled'.*fit_gee"
                                             r".*fit_bayes\(\.\.\., family='binomial'\)"):
        am.fit_mixed(formula, d, **kwargs)


def test_non_finite_values_and_constant_response(small):
    f = "adherence ~ alliance + (1 | therapist)"
    d = small.copy()
    d.loc[[4, 9], "alliance"] = np.inf
    with pytest.raises(ModelSpecError, match=r"'alliance' has non-finite values \(rows 4, 9"):
        am.fit_mixed(f, d)
    with pytest.raises(ModelSpecError, match=r"response 'adherence' is constant \(3 in all 80"):
        am.fit_mixed(f, small.assign(adherence=3.0))


def test_other_bad_options(small):
    f = "adherence ~ alliance + (1 | therapist)"
    with pytest.raises(ModelSpecError, match="has no random-effects term.*fit_ols"):
        am.fit_mixed("adherence ~ alliance", small)
    with pytest.raises(ModelSpecError, match="ddf 'kenwardroger' is unknown; allowed: 'sat"):
        am.fit_mixed(f, small, ddf="kenwardroger")
    with pytest.raises(ModelSpecError, match="optimizer.*'newton'.*not known"):
        am.fit_mixed(f, small, optimizer="newton")
    with pytest.raises(ModelSpecError, match="rank deficient.*alliance2"):
        am.fit_mixed(
            "adherence ~ alliance + alliance2 + (1 | therapist)",
            small.assign(alliance2=2 * small.alliance),
        )
    with pytest.raises(ModelSpecError, match="'row' has 80 levels for 80 rows"):
        am.fit_mixed("adherence ~ alliance + (1 | row)", small.assign(row=np.arange(80)))
