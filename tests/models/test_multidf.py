"""Multi-df inference for fit_mixed: Type III F tests, joint contrasts, likelihood-ratio
tests and profile intervals of variance components, against lmerTest / lme4.

References are written by ``tests/r/multidf_reference.R`` (R 4.2.2, lme4 1.1-31,
lmerTest 3.1-3, pbkrtest 0.5.2) on the data sets of ``tests/r/mixed_reference.R``.

Tolerances (relative unless stated): F statistics and sums of squares ``rtol 1e-5``,
denominator df ``rtol 1e-3``, p values ``rtol 1e-4`` (measured agreement of all four is
about 1e-7); log-likelihoods, AIC and BIC ``atol 1e-6``, chi-square statistics
``rtol 1e-6``; profile interval ends ``rtol 5e-4`` (lme4 interpolates a spline through
profile points, the package finds the exact root; measured 6e-5).
"""

from __future__ import annotations

import doctest
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import ModelSpecError, SingularFitWarning
from alliance_models.models import anova as anova_mod
from alliance_models.models import compare as compare_mod
from alliance_models.models.lmm import profile as profile_mod

R_DIR = Path(__file__).resolve().parents[1] / "r"
RTOL_F, RTOL_DF, RTOL_P = 1e-5, 1e-3, 1e-4

FORMULAS = {
    "nested": ("nested", "y ~ x * m + (1 | therapist/patient)"),
    "nested_slope": ("nested", "y ~ x * m + (1 + x | therapist) + (1 | therapist:patient)"),
    "unbalanced": ("unbalanced", "y ~ x * m + (1 + x | g)"),
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    "nested_factor": ("nested", "y ~ x * m + C(session) + (1 | therapist/patient)"),
}
_FITS: dict[str, am.MixedFit] = {}


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(R_DIR / f"{name}.csv")


def fit(name: str, formula: str | None = None) -> am.MixedFit:
    key = formula or name
    if key not in _FITS:
        data, f = FORMULAS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularFitWarning)  # nested_slope, as lme4
            _FITS[key] = am.fit_mixed(formula or f, _read(f"{data}_data"))
    return _FITS[key]


def _check_ftable(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    np.testing.assert_allclose(ours["NumDF"], ref["NumDF"], rtol=0)
    np.testing.assert_allclose(ours["F value"], ref["F"], rtol=RTOL_F)
    np.testing.assert_allclose(ours["Sum Sq"], ref["SumSq"], rtol=RTOL_F)
    np.testing.assert_allclose(ours["Mean Sq"], ref["MeanSq"], rtol=RTOL_F)
    np.testing.assert_allclose(ours["DenDF"], ref["DenDF"], rtol=RTOL_DF)
    np.testing.assert_allclose(ours["Pr(>F)"], ref["p"], rtol=RTOL_P)


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
@pytest.mark.parametrize("name", ["nested", "nested_slope", "unbalanced", "nested_factor"])
def test_type3_anova_matches_lmertest(name, ddf):
    ref = _read("mdf_anova").query("model == @name and ddf == @ddf")
    tab = fit(name).anova(ddf=ddf.lower())
    assert len(tab) == len(ref)
    _check_ftable(tab, ref)


def test_anova_defaults_to_the_fits_method():
    data, f = FORMULAS["nested"]
    kr = am.fit_mixed(f, _read(f"{data}_data"), ddf="kenward-roger")
    ref = _read("mdf_anova").query("model == 'nested' and ddf == 'Kenward-Roger'")
    _check_ftable(kr.anova(), ref)
    assert list(kr.anova().index) == ["x", "m", "x:m"]


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
@pytest.mark.parametrize("name", list(FORMULAS))
def test_joint_contrast_matches_contest(name, ddf):
    ref = _read("mdf_contest").query("model == @name and ddf == @ddf")
    L = np.array([[float(v) for v in row.split()] for row in ref["what"].iloc[0].split(";")])
    _check_ftable(fit(name).contrast(L, ddf=ddf.lower()), ref)


def test_one_row_satterthwaite_f_is_t_squared():
    f = fit("nested")
    L = np.array([0.0, 1.0, 0.0, 2.0])
    t = f.test_contrast(L)
    tab = f.contrast(L[None, :])
    np.testing.assert_allclose(tab["F value"].iloc[0], t["t"] ** 2, rtol=1e-10)
    np.testing.assert_allclose(tab["DenDF"].iloc[0], t["df"], rtol=1e-10)


def test_contrast_rhs_and_frame():
    f = fit("nested")
    names = list(f.fixed.index)
    L = pd.DataFrame([[0, 1, 0, 0]], columns=names)
    shifted = f.contrast(L, rhs=f.params["x"])
    np.testing.assert_allclose(shifted["F value"].iloc[0], 0.0, atol=1e-12)


def test_contrast_errors():
    f = fit("nested")
    with pytest.raises(ModelSpecError, match="one column per fixed effect"):
        f.contrast(np.ones((2, 3)))
    with pytest.raises(ModelSpecError, match="row 1 column 'm' is nan"):
        f.contrast([[0, 1, 0, 0], [0, 0, np.nan, 0]])
    with pytest.raises(ModelSpecError, match="linearly dependent"):
        f.contrast([[0, 1, 0, 0], [0, 2, 0, 0]], ddf="kenward-roger")
    with pytest.raises(ModelSpecError, match="ddf 'residual' is unknown; allowed: 'satt"):
        f.anova(ddf="residual")


def test_type3_refuses_a_factor_inside_an_interaction():
    data, _ = FORMULAS["nested"]
    d = _read(f"{data}_data")
    f = am.fit_mixed("y ~ x * C(session) + (1 | therapist/patient)", d)
    with pytest.raises(ModelSpecError, match=r"Type III test of term 'C\(session\)'"):
        f.anova()


def test_kr_needs_a_reml_fit():
    data, f = FORMULAS["nested"]
    ml = am.fit_mixed(f, _read(f"{data}_data"), reml=False)
    with pytest.raises(ModelSpecError, match="REML fits only"):
        ml.anova(ddf="kenward-roger")


# -- likelihood-ratio tests ----------------------------------------------------------
def _lrt_cases():
    nested = FORMULAS["nested"][1]
    return {
        "fixed": ("nested", "y ~ x + m + (1 | therapist/patient)", nested),
        "random": ("nested", "y ~ x * m + (1 | therapist)", nested),
        "slope": ("sleepstudy", "Reaction ~ Days + (1 | Subject)",
                  FORMULAS["sleepstudy"][1]),
    }


@pytest.mark.parametrize("case", ["fixed", "random", "slope"])
def test_compare_matches_lme4_anova(case):
    name, f0, f1 = _lrt_cases()[case]
    ref = _read("mdf_lrt").query("comparison == @case")
    res = am.compare(fit(name, f1), fit(name, f0))  # order does not matter
    assert isinstance(res, compare_mod.LikelihoodRatioTest)
    tab = res.table
    assert res.criterion == "ML" and set(res.refitted) == {"model1", "model2"}
    np.testing.assert_array_equal(tab["npar"], ref["npar"])
    for col in ("logLik", "deviance", "AIC", "BIC"):
        np.testing.assert_allclose(tab[col], ref[col], rtol=0, atol=1e-6)
    np.testing.assert_allclose(tab["Chisq"].iloc[1], ref["Chisq"].iloc[1], rtol=1e-6)
    assert tab["Df"].iloc[1] == ref["Df"].iloc[1]
    np.testing.assert_allclose(tab["p"].iloc[1], ref["p"].iloc[1], rtol=1e-5)
    assert "Refitted with ML" in res.summary()


def test_compare_with_ml_fits_needs_no_refit():
    name, f0, f1 = _lrt_cases()["fixed"]
    d = _read(f"{FORMULAS[name][0]}_data")
    res = am.compare({"additive": am.fit_mixed(f0, d, reml=False),
                      "moderated": am.fit_mixed(f1, d, reml=False)})
    assert res.refitted == ()
    assert list(res.table.index) == ["additive", "moderated"]
    ref = _read("mdf_lrt").query("comparison == 'fixed'")
    np.testing.assert_allclose(res.table["logLik"], ref["logLik"], rtol=0, atol=1e-6)


def test_compare_reml_without_refit():
    name, f0, f1 = _lrt_cases()["random"]
    res = am.compare(fit(name, f0), fit(name, f1), refit=False)
    assert res.criterion == "REML" and res.refitted == ()
    np.testing.assert_allclose(res.table["logLik"],
                               sorted([fit(name, f0).loglik, fit(name, f1).loglik]))
    name, f0, f1 = _lrt_cases()["fixed"]
    with pytest.raises(ModelSpecError, match="not comparable"):
        am.compare(fit(name, f0), fit(name, f1), refit=False)


def test_compare_errors():
    a = fit("nested")
    with pytest.raises(ModelSpecError, match="at least two"):
        am.compare(a)
    with pytest.raises(ModelSpecError, match="'model2' is a str, not a MixedFit"):
        am.compare(a, "b")
    with pytest.raises(ModelSpecError, match="same rows of the same response"):
        am.compare(a, fit("sleepstudy"))


# -- profile intervals ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["nested", "sleepstudy"])
def test_profile_intervals_match_lme4(name):
    ref = _read("mdf_profile").query("model == @name").copy()
    ref["parm"] = ref["parm"].str.replace("patient:therapist", "therapist:patient")
    ref = ref.set_index("parm")
    ci = fit(name).varcomp_ci()
    assert sorted(ci.index) == sorted(ref.index)
    ref = ref.loc[ci.index]
    np.testing.assert_allclose(ci["lower"], ref["lower"], rtol=5e-4, atol=1e-8)
    np.testing.assert_allclose(ci["upper"], ref["upper"], rtol=5e-4)
    # the ML estimate lies inside, the REML SDs are not what is profiled
    assert np.all((ci["lower"] <= ci["estimate"]) & (ci["estimate"] <= ci["upper"]))


def test_profile_interval_level():
    ci90 = fit("nested").varcomp_ci(level=0.90)
    ci95 = fit("nested").varcomp_ci()
    inner = ci95.index[ci95["lower"] > 0]
    assert np.all(ci90.loc[inner, "lower"] > ci95.loc[inner, "lower"])
    assert np.all(ci90["upper"] < ci95["upper"])
    with pytest.raises(ModelSpecError, match="level"):
        fit("nested").varcomp_ci(level=1.5)


@pytest.mark.parametrize("module", [anova_mod, compare_mod, profile_mod])
def test_module_doctests(module):
    res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
