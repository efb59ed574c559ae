"""fit_ols against R (lm + sandwich), hand-written sandwich formulas and nested F tests.

Reference CSVs come from tests/r/ols_gee_reference.R (R 4.2, sandwich 3.0-2).
Tolerances: coefficients and SEs vs R rtol 1e-8 (same double-precision algebra);
hand-computed sandwich formulas rtol 1e-10; nested F rtol 1e-8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import alliance_models as am
from alliance_models.errors import MissingDataWarning, ModelSpecError
from alliance_models.models.interface import FixedEffectsFit
from alliance_models.models.ols import OLSFit, hc_covariance

R_DIR = Path(__file__).parent / "r"
FORMULAS = ["y ~ x * w", "y ~ x * w + x * z", "y ~ x * w * z"]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "ols_data.csv")


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "ols_reference.csv")


def _r_term(name: str) -> str:
    return "(Intercept)" if name == "Intercept" else name


def _hand_hc(X: np.ndarray, e: np.ndarray, kind: str) -> np.ndarray:
    """Sandwich covariance written out row by row, independently of hc_covariance."""
    n, p = X.shape
    Q, R = np.linalg.qr(X)
    h = np.sum(Q**2, axis=1)  # leverages from the QR factor
    bread = np.linalg.solve(R, np.linalg.solve(R.T, np.eye(p)))  # (X'X)^-1 via R
    meat = np.zeros((p, p))
    for i in range(n):
        if kind == "HC0":
            om = e[i] ** 2
        elif kind == "HC1":
            om = e[i] ** 2 * n / (n - p)
        elif kind == "HC2":
            om = e[i] ** 2 / (1 - h[i])
        elif kind == "HC3":
            om = e[i] ** 2 / (1 - h[i]) ** 2
        else:  # HC4, Cribari-Neto (2004)
            om = e[i] ** 2 / (1 - h[i]) ** min(4.0, n * h[i] / p)
        meat += om * np.outer(X[i], X[i])
    return bread @ meat @ bread


def test_satisfies_fit_protocol(data):
    fit = am.fit_ols("y ~ x * w", data)
    assert isinstance(fit, OLSFit)
    assert isinstance(fit, FixedEffectsFit)
    assert fit.fixed_draws is None
    assert fit.contrast_df(np.ones(4)) == len(data) - 4


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("hc", [None, "HC0", "HC1", "HC2", "HC3", "HC4"])
def test_coefficients_and_se_match_r_sandwich(data, ref, formula, hc):
    fit = am.fit_ols(formula, data, hc=hc)
    r = ref[(ref.formula == formula) & (ref.type == (hc or "const"))].set_index("term")
    terms = [_r_term(t) for t in fit.params.index]
    # R names x:w:z the same way formulaic does for these formulas
    np.testing.assert_allclose(fit.params.to_numpy(), r.loc[terms, "estimate"], rtol=1e-8)
    se = fit.to_frame()["se"].to_numpy()
    np.testing.assert_allclose(se, r.loc[terms, "se"].astype(float), rtol=1e-8)


@pytest.mark.parametrize("kind", ["HC0", "HC1", "HC2", "HC3", "HC4"])
def test_hc_matches_hand_written_sandwich(data, kind):
    fit = am.fit_ols("y ~ x * w * z", data, hc=kind)
    X, y = fit.frame.X, fit.frame.y
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    V = _hand_hc(X, y - X @ beta, kind)
    np.testing.assert_allclose(fit.cov_params().to_numpy(), V, rtol=1e-10)


@pytest.mark.parametrize("kind", ["HC0", "HC1", "HC2", "HC3"])
def test_hc_matches_statsmodels(data, kind):
    fit = am.fit_ols("y ~ x * w", data, hc=kind)
    sm_res = sm.OLS(fit.frame.y, fit.frame.X).fit(cov_type=kind)
    np.testing.assert_allclose(fit.cov_params().to_numpy(), sm_res.cov_params(), rtol=1e-10)


def test_t_tests_use_n_minus_p(data):
    fit = am.fit_ols("y ~ x * w", data, hc="HC3")
    tab = fit.to_frame()
    df = len(data) - 4
    assert (tab["df"] == df).all()
    np.testing.assert_allclose(tab["p"], 2 * stats.t.sf(np.abs(tab["t"]), df), rtol=1e-12)
    q = stats.t.ppf(0.975, df)
    np.testing.assert_allclose(tab["ci_upper"], tab["estimate"] + q * tab["se"], rtol=1e-12)


@pytest.mark.parametrize("formula", FORMULAS)
def test_r2_matches_r(data, ref, formula):
    fit = am.fit_ols(formula, data)
    r2 = float(ref[(ref.formula == formula) & (ref.type == "r2")]["estimate"].iloc[0])
    assert fit.r2 == pytest.approx(r2, rel=1e-10)


def test_r2_change_is_nested_f_of_highest_order_term(data, ref):
    fit = am.fit_ols("y ~ x * w * z", data, hc="HC3")
    row = fit.r2_change.loc["x:w:z"]
    # against R's anova(reduced, full)
    r = ref[ref.type == "anovaF"].iloc[0]
    assert row["F"] == pytest.approx(float(r["estimate"]), rel=1e-8)
    assert row["p"] == pytest.approx(float(r["se"]), rel=1e-8)
    # and against a direct numpy computation
    X, y = fit.frame.X, fit.frame.y
    keep = [i for i, n in enumerate(fit.frame.x_names) if n != "x:w:z"]

    def rss(M):
        b = np.linalg.lstsq(M, y, rcond=None)[0]
        return float(np.sum((y - M @ b) ** 2))

    tss = float(np.sum((y - y.mean()) ** 2))
    dr2 = (rss(X[:, keep]) - rss(X)) / tss
    assert row["R2_change"] == pytest.approx(dr2, rel=1e-10)
    assert row["df1"] == 1 and row["df2"] == len(y) - 8
    # with one term the robust Wald F is the squared HC3 t statistic
    t = fit.to_frame().loc["x:w:z", "t"]
    assert row["F_hc"] == pytest.approx(t**2, rel=1e-10)


def test_model2_has_separate_and_joint_r2_change(data):
    fit = am.fit_ols("y ~ x * w + x * z", data, hc=None)
    tab = fit.r2_change
    assert list(tab.index) == ["x:w", "x:z", "all (joint)"]
    assert tab.loc["all (joint)", "df1"] == 2
    assert "F_hc" not in tab.columns
    X, y = fit.frame.X, fit.frame.y
    red = X[:, [0, 1, 2, 3]]  # intercept, x, w, z
    b_f = np.linalg.lstsq(X, y, rcond=None)[0]
    b_r = np.linalg.lstsq(red, y, rcond=None)[0]
    rss_f, rss_r = np.sum((y - X @ b_f) ** 2), np.sum((y - red @ b_r) ** 2)
    F = ((rss_r - rss_f) / 2) / (rss_f / (len(y) - 6))
    assert tab.loc["all (joint)", "F"] == pytest.approx(F, rel=1e-10)


def test_no_interaction_gives_no_r2_change(data):
    assert am.fit_ols("y ~ x + w", data).r2_change is None


def test_center_true_centres_product_variables(data):
    raw = am.fit_ols("y ~ x * w", data)
    cen = am.fit_ols("y ~ x * w", data, center=True)
    assert set(cen.centering) == {"x", "w"}
    assert cen.centering["w"] == pytest.approx(data["w"].mean(), rel=1e-12)
    np.testing.assert_allclose(cen.frame.data["w"].mean(), 0.0, atol=1e-12)
    # the interaction and the fit are invariant; the x slope becomes the slope at mean w
    assert cen.params["x:w"] == pytest.approx(raw.params["x:w"], rel=1e-10)
    assert cen.r2 == pytest.approx(raw.r2, rel=1e-10)
    mx, mw = data["x"].mean(), data["w"].mean()
    assert cen.params["x"] == pytest.approx(raw.params["x"] + raw.params["x:w"] * mw, rel=1e-9)
    assert cen.params["w"] == pytest.approx(raw.params["w"] + raw.params["x:w"] * mx, rel=1e-9)
    assert "Mean-centred" in cen.summary()


def test_center_list_only_those_columns(data):
    fit = am.fit_ols("y ~ x * w", data, center=["w"])
    assert list(fit.centering) == ["w"]
    assert fit.frame.data["x"].equals(data["x"])


def test_bootstrap_is_seeded_and_close_to_hc_se(data):
    a = am.fit_ols("y ~ x * w", data, bootstrap=400, seed=11)
    b = am.fit_ols("y ~ x * w", data, bootstrap=400, seed=11)
    c = am.fit_ols("y ~ x * w", data, bootstrap=400, seed=12)
    pd.testing.assert_frame_equal(a.boot_params, b.boot_params)
    assert not a.boot_params.equals(c.boot_params)
    assert a.boot_params.shape == (400, 4)
    # bootstrap SD vs HC3 SE: the relative Monte Carlo error of an SD from 400 draws is
    # about 1/sqrt(2*400) = 3.5%; allow 30% for the bootstrap/HC3 difference itself
    ratio = a.boot_params.std(ddof=1) / a.to_frame()["se"]
    assert ((ratio > 0.7) & (ratio < 1.3)).all(), ratio


def test_bootstrap_draws_are_refits_on_resampled_rows(data):
    """Each draw is the OLS fit to n rows drawn with replacement by the seeded generator."""
    fit = am.fit_ols("y ~ x * w", data, bootstrap=3, seed=11)
    X, y = fit.frame.X, fit.frame.y
    rng = np.random.default_rng(11)
    for k in range(3):
        idx = rng.integers(0, len(y), size=len(y))
        b = np.linalg.lstsq(X[idx], y[idx], rcond=None)[0]
        np.testing.assert_allclose(fit.boot_params.iloc[k], b, rtol=1e-10)


def test_bootstrap_params_method_matches_stored(data):
    a = am.fit_ols("y ~ x * w", data, bootstrap=50, seed=3)
    again = a.bootstrap_params(50, seed=3)
    pd.testing.assert_frame_equal(a.boot_params, again)


def test_missing_values_are_counted(data):
    d = data.copy()
    d.loc[[2, 5, 9], "w"] = np.nan
    with pytest.warns(MissingDataWarning, match="3 of 150 rows"):
        fit = am.fit_ols("y ~ x * w", d)
    assert fit.frame.n_dropped == 3 and fit.n_dropped == 3  # the warning names n_dropped
    assert fit.n_obs == 147
    assert "excluded for missing values: 3" in fit.summary()


def test_summary_mentions_hc_and_r2_change(data):
    s = am.fit_ols("y ~ x * w * z", data, hc="HC4").summary()
    assert "HC4" in s and "R2_change" in s and "highest-order" in s
    assert "x:w:z" in s


def test_random_terms_are_rejected(data):
    d = data.assign(g=np.arange(len(data)) % 10)
    with pytest.raises(ModelSpecError, match=r"random-effects terms.*\(1 \| g\).*fit_mixed"):
        am.fit_ols("y ~ x * w + (1 | g)", d)


def test_bad_hc(data):
    with pytest.raises(ModelSpecError, match="hc 'HC9' is unknown; allowed: 'HC0'"):
        am.fit_ols("y ~ x * w", data, hc="HC9")


def test_center_bad_column(data):
    with pytest.raises(ModelSpecError, match="center: column 'q' is not a predictor"):
        am.fit_ols("y ~ x * w", data, center=["q"])
    with pytest.raises(ModelSpecError, match="center: column 'y' is not a predictor"):
        am.fit_ols("y ~ x * w", data, center=["y"])
    d = data.assign(s=np.where(data.x > 0, "a", "b"))
    with pytest.raises(ModelSpecError, match="center: column 's' has dtype"):
        am.fit_ols("y ~ x * w + s", d, center=["s"])


def test_missing_column_lists_close_matches(data):
    with pytest.raises(ModelSpecError, match=r"names column 'ww'.*did you mean 'w'"):
        am.fit_ols("y ~ x * ww", data)


def test_constant_moderator(data):
    d = data.assign(w=2.0)
    with pytest.raises(ModelSpecError, match="term 'w' is constant"):
        am.fit_ols("y ~ x * w", d)


def test_rank_deficient_design(data):
    d = data.assign(x2=2 * data["x"])
    with pytest.raises(ModelSpecError, match="rank deficient"):
        am.fit_ols("y ~ x + x2", d)


def test_bad_bootstrap_argument(data):
    with pytest.raises(ModelSpecError, match="bootstrap must be a non-negative integer"):
        am.fit_ols("y ~ x * w", data, bootstrap=-5)


def test_hc_covariance_rejects_unknown_kind():
    with pytest.raises(ModelSpecError, match="HC7"):
        hc_covariance(np.eye(3), np.ones(3), "HC7")


@pytest.mark.parametrize("formula,model", [
    ("y ~ x * w", 1),
    ("y ~ x * w + z", 1),  # a covariate
    ("y ~ x * w + x * z", 2),
    ("y ~ x * w * z", 3),
    ("y ~ x + w + z", None),
    ("y ~ x * w + w * z + x * z", None),
    ("y ~ x + w + x:w:z", None),
])
def test_process_model_number(data, formula, model):
    fit = am.fit_ols(formula, data)
    assert fit.process_model == model
    assert (f"PROCESS model {model}" in fit.summary()) == (model is not None)


@pytest.mark.parametrize("hc", [None, "HC3"])
def test_model_f_test_by_hand(data, hc):
    """Whole-model F: classical F from R2 (no hc), robust Wald F of all slopes (hc)."""
    fit = am.fit_ols("y ~ x * w * z", data, hc=hc)
    X, y = fit.frame.X, fit.frame.y
    n, p = X.shape
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ b
    if hc is None:
        tss = np.sum((y - y.mean()) ** 2)
        F = ((tss - e @ e) / (p - 1)) / ((e @ e) / (n - p))
    else:
        V = _hand_hc(X, e, hc)[1:, 1:]
        F = b[1:] @ np.linalg.solve(V, b[1:]) / (p - 1)
    mt = fit.model_test
    assert (mt["df1"], mt["df2"]) == (p - 1, n - p)
    assert mt["F"] == pytest.approx(F, rel=1e-10)
    assert mt["p"] == pytest.approx(stats.f.sf(F, p - 1, n - p), rel=1e-10)


def test_model2_single_term_r2_change_by_hand(data):
    fit = am.fit_ols("y ~ x * w + x * z", data, hc="HC3")
    X, y = fit.frame.X, fit.frame.y
    names = list(fit.frame.x_names)
    tss = float(np.sum((y - y.mean()) ** 2))

    def rss(M):
        b = np.linalg.lstsq(M, y, rcond=None)[0]
        return float(np.sum((y - M @ b) ** 2))

    for term in ("x:w", "x:z"):
        keep = [i for i, nm in enumerate(names) if nm != term]
        dr2 = (rss(X[:, keep]) - rss(X)) / tss
        row = fit.r2_change.loc[term]
        assert row["R2_change"] == pytest.approx(dr2, rel=1e-10)
        assert row["F"] == pytest.approx(dr2 / ((rss(X) / tss) / (len(y) - 6)), rel=1e-10)
        assert row["F_hc"] == pytest.approx(fit.to_frame().loc[term, "t"] ** 2, rel=1e-10)


def test_accepts_a_parsed_model_spec(data):
    spec = am.parse_formula("y ~ x * w")
    a = am.fit_ols(spec, data)
    b = am.fit_ols("y ~ x * w", data)
    assert a.spec is spec
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


def test_non_finite_values_and_constant_response(data):
    d = data.copy()
    d.loc[[4, 9], "x"] = np.inf
    with pytest.raises(ModelSpecError, match=r"'x' has non-finite values \(rows 4, 9: inf\)"):
        am.fit_ols("y ~ x * w", d)
    with pytest.raises(ModelSpecError, match=r"response 'y' is constant \(2 in all 150 rows\)"):
        am.fit_ols("y ~ x * w", data.assign(y=2.0))
