"""The fixed part expands as R's terms() does (formula_terms.py, formula.py, spec.py).

References: tests/r/formula_terms.R (R 4.2.2 stats::terms after lme4::nobars) writes
tests/r/formula_terms.csv; tests/r/mixed_cross_reference.R (lme4 1.1-31, lmerTest 3.1-3)
fits (x_w + x_b) * (m + s) on tests/r/nested_data.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models import parse_formula
from alliance_models.errors import ModelSpecError
from alliance_models.formula_terms import expand_fixed

R_DIR = Path(__file__).parent / "r"
R_TERMS = pd.read_csv(R_DIR / "formula_terms.csv", keep_default_na=False)


def _norm(label: str) -> str:
    """R deparses calls with its own spacing and ^ for powers."""
    return "".join(label.split()).replace("**", "^")


@pytest.mark.parametrize("row", R_TERMS.to_dict("records"), ids=list(R_TERMS.formula))
def test_terms_match_r(row):
    spec = parse_formula(row["formula"])
    t = spec.fixed_terms
    expected = [x for x in row["terms"].split("|") if x]
    assert [_norm(x) for x in t.terms] == [_norm(x) for x in expected]
    assert t.intercept == bool(row["intercept"])
    offsets = [x for x in row["offset"].split("|") if x]
    assert [_norm(f"offset({x})") for x in t.offset] == [_norm(x) for x in offsets]


def test_random_part_unchanged_by_the_fixed_expansion():
    spec = parse_formula(
        "adherence ~ (alliance_w + alliance_b) * (age_c + autonomy_c) + (1 | therapist/patient)")
    assert [str(r) for r in spec.random] == ["(1 | therapist)", "(1 | therapist:patient)"]
    assert spec.fixed == "(alliance_w + alliance_b) * (age_c + autonomy_c)"
    assert set(spec.variables) == {"adherence", "alliance_w", "alliance_b", "age_c",
                                   "autonomy_c", "therapist", "patient"}
    assert spec.expanded_formula == (
        "adherence ~ alliance_w + alliance_b + age_c + autonomy_c + alliance_w:age_c + "
        "alliance_w:autonomy_c + alliance_b:age_c + alliance_b:autonomy_c")
    # random terms between fixed ones, and with slopes
    spec = parse_formula("y ~ a + (1 + a | g) + b:a + (b || h)")
    assert spec.fixed_terms.terms == ("a", "a:b")
    assert [str(r) for r in spec.random] == ["(1 + a | g)", "(b || h)"]


def test_random_term_must_be_its_own_summand():
    with pytest.raises(ModelSpecError, match=r"not a summand of its own; add each one"):
        parse_formula("y ~ x + (1 | g) - 1")
    spec = parse_formula("y ~ x - 1 + (1 | g)")
    assert not spec.fixed_terms.intercept and [str(r) for r in spec.random] == ["(1 | g)"]


def test_python_spellings():
    # ** is ^ (formulaic's spelling); inside a call R's ^ is evaluated as Python's **
    assert expand_fixed("(a + b + c)**2").terms == expand_fixed("(a + b + c)^2").terms
    assert expand_fixed("I(x^2) + np.log(m + 5)").terms == ("I(x**2)", "np.log(m + 5)")
    assert expand_fixed("C(arm, Treatment('b')) * x").terms == (
        "C(arm, Treatment('b'))", "x", "C(arm, Treatment('b')):x")
    # the same call written with other spacing is one variable
    assert expand_fixed("log(m+5) + log(m + 5):x").terms == ("log(m+5)", "log(m+5):x")


def test_design_follows_r_order_and_is_evaluated():
    rng = np.random.default_rng(0)
    d = pd.DataFrame(rng.normal(size=(40, 5)), columns=["y", "a", "b", "c", "x"])
    fr = parse_formula("y ~ (a + b) * c - b:c + I(x^2)").build(d)
    assert fr.x_names == ("Intercept", "a", "b", "c", "I(x ** 2)", "a:c")
    np.testing.assert_allclose(fr.X[:, 4], d.x**2)
    np.testing.assert_allclose(fr.X[:, 5], d.a * d.c)
    fr = parse_formula("y ~ 0 + a/b").build(d)
    assert fr.x_names == ("a", "a:b")
    fr = parse_formula("y ~ a %in% b").build(d)
    assert fr.x_names == ("Intercept", "a:b")


def test_offset_is_read_but_not_fitted():
    spec = parse_formula("y ~ a + offset(log(days))")
    assert spec.fixed_terms.offset == ("log(days)",)
    assert "days" in spec.variables
    d = pd.DataFrame({"y": [1.0, 2, 3, 5], "a": [0.0, 1, 2, 3], "days": [1.0, 2, 3, 4]})
    with pytest.raises(ModelSpecError, match=r"offset\(log\(days\)\).*no fitting function"):
        spec.build(d)


@pytest.mark.parametrize(
    ("formula", "message", "column"),
    [
        ("y ~ a + * b", "unexpected '\\*'", 9),
        ("y ~ a b", "unexpected 'b' \\(an operator is missing\\)", 7),
        ("y ~ (a + b", "unbalanced parentheses", 5),
        ("y ~ a + b)", "unexpected '\\)'", 10),
        ("y ~ a %on% b", "unknown operator '%on%'", 7),
        ("y ~ (a + b)^c", "'\\^' needs a whole number", 12),
        ("y ~ a + 2", "the number 2 is not a term", 9),
        ("y ~ a:(1 | g)", "random-effects term .* must be added with '\\+'", 7),
        ("y ~ a + $b", "unexpected '\\$'", 9),
        ("y ~ a +", "the formula ends where a term is expected", 8),
        ("y ~ .", "'\\.' \\(all other columns\\) is not supported", 5),
    ],
)
def test_syntax_error_points_at_the_token(formula, message, column):
    with pytest.raises(ModelSpecError, match=message) as err:
        parse_formula(formula)
    text = str(err.value)
    assert f"at column {column}" in text
    shown, caret = text.splitlines()[-2:]
    assert shown.strip() == formula
    assert caret.index("^") - 4 == column - 1  # the caret sits under that column


def test_fit_mixed_on_crossed_sums_matches_lmer():
    d = pd.read_csv(R_DIR / "nested_data.csv")
    d["x_b"] = d.groupby(["therapist", "patient"])["x"].transform("mean")
    d["x_w"] = d["x"] - d["x_b"]
    d["s"] = d["session"] - 3
    fit = am.fit_mixed("y ~ (x_w + x_b) * (m + s) + (1 | therapist/patient)", d)
    ref = pd.read_csv(R_DIR / "mixed_cross_fixef.csv")
    assert [t if t != "Intercept" else "(Intercept)" for t in fit.fixed.index] == list(
        ref["term"])
    # measured: estimates and SEs 2e-8, df 2e-7 (relative)
    np.testing.assert_allclose(fit.fixed["estimate"], ref["estimate"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixed["se"], ref["se"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixed["df"], ref["df"], rtol=1e-5)
