"""The one formatting rule: numbers, p-values, table cells and values quoted in messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models._format import fmt_cell, fmt_num, fmt_p, fmt_value, table_text


@pytest.mark.parametrize("value,text", [
    (0.123456, "0.1235"), (-2.5, "-2.5000"), (12.0, "12"), (-3.0, "-3"),
    (0.00012345, "1.234e-04"), (1e-13, "0"), (2.5e9, "2500000000.0000"),
    (float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan"),
    (np.float32(0.5), "0.5000"), (7, "7"),
    # below 0.1: four significant digits, so a small coefficient keeps its precision
    (0.0067997, "0.006800"), (-0.05, "-0.05000"), (0.0011411, "0.001141"),
])
def test_fmt_num(value, text):
    assert fmt_num(value) == text


@pytest.mark.parametrize("value,text", [
    (0.0312, "0.03120"), (1e-12, "1.000e-12"), (9.9e-13, "<1e-12"), (0.0, "<1e-12"),
    (1.0, "1"), (float("nan"), "nan"),
])
def test_fmt_p_never_prints_a_tiny_p_as_zero(value, text):
    assert fmt_p(value) == text


def test_fmt_cell_and_table_text_agree_with_fmt_num():
    assert [fmt_cell(v) for v in (None, np.nan, np.True_, np.int64(4), 0.25, "x")] == [
        "", "", "True", "4", "0.2500", "x"]
    assert fmt_cell(1e-20, p_value=True) == "<1e-12"
    tab = pd.DataFrame({"estimate": [0.123456, 1e-5], "p": [0.5, 1e-20]}, index=["a", "b"])
    lines = table_text(tab).splitlines()
    assert lines[1].split() == ["a", fmt_num(0.123456), fmt_num(0.5)]
    assert lines[2].split() == ["b", fmt_num(1e-5), "<1e-12"]


def test_fmt_value_quotes_text_and_writes_whole_floats_as_integers():
    values = (3.0, np.float64(2.5), np.int64(7), "p1", None, float("nan"), 1e16)
    assert [fmt_value(v) for v in values] == [
        "3", "2.5", "7", "'p1'", "None", "nan", "1e+16"]


def test_model_summaries_use_the_rule():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"x": rng.normal(size=60), "w": rng.normal(size=60)})
    d["y"] = 5 * d.x + rng.normal(size=60)
    fit = am.fit_ols("y ~ x * w", d, hc=None)
    text = fit.summary()
    assert table_text(fit.to_frame()) in text
    assert f"R2 = {fmt_num(fit.r2)}" in text
    assert "p = <1e-12" in text  # the overall F test: p far below 1e-12
