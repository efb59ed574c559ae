"""Term structure of a fitted design, read from the formulaic encoding (not from names)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models._terms import design_columns, factor_variables


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 60
    return pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "m": rng.normal(size=n),
        "w": rng.uniform(1, 2, size=n), "arm": rng.choice(["a", "b", "c"], size=n),
    })


def test_columns_match_the_design_and_list_their_factors(data):
    frame = am.parse_formula(
        "y ~ x * C(arm) + poly(w, 2):x + np.log(w):x:m + center(m)").build(data)
    cols = design_columns(frame.fixed_model_spec)
    assert tuple(c.name for c in cols) == frame.x_names
    by_name = {c.name: c for c in cols}
    assert by_name["Intercept"].factors == ()
    assert by_name["x:C(arm)[T.b]"].factors == ("x", "C(arm)[T.b]")
    assert by_name["x:C(arm)[T.b]"].categorical == (False, True)
    assert by_name["x:C(arm)[T.b]"].reads == (("x",), ("arm",))
    # as in R's terms(), the variables of a term follow their first appearance in the
    # formula (x before poly(w, 2)), not the order written in that term
    assert by_name["x:poly(w, 2)[2]"].factors == ("x", "poly(w, 2)[2]")
    assert by_name["x:np.log(w):m"].factors == ("x", "np.log(w)", "m")
    assert by_name["x:np.log(w):m"].reads == (("x",), ("w",), ("m",))
    for c in cols:  # a product column is named by its factor columns
        assert ":".join(c.factors) == (c.name if c.factors else "")


def test_a_level_label_with_brackets_or_colons_does_not_confuse_the_structure(data):
    # a string parser of names split "C(g)[T.b) x:y]:x" in the wrong place
    d = data.assign(g=np.where(data.m > 0, "b) x:y", "a"))
    frame = am.parse_formula("y ~ C(g) * x").build(d)
    cols = design_columns(frame.fixed_model_spec)
    assert [c.factors for c in cols] == [
        (), ("C(g)[T.b) x:y]",), ("x",), ("C(g)[T.b) x:y]", "x")]


def test_factor_variables_follow_the_package_formula_parser():
    assert factor_variables("center(m)") == ("m",)
    assert factor_variables("I(x ** 2)") == ("x",)
    assert factor_variables("np.log(w)") == ("w",)
    assert factor_variables("x") == ("x",)


def test_a_level_label_that_repeats_the_next_factor_is_cut_where_it_fits(data):
    d = data.assign(g=np.where(data.m > 0, "b:x", "a"))
    frame = am.parse_formula("y ~ C(g) * x").build(d)
    assert design_columns(frame.fixed_model_spec)[-1].factors == ("C(g)[T.b:x]", "x")
