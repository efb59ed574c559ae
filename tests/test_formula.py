"""The lme4-style formula parser (formula.py) and ModelSpec.build (spec.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alliance_models import parse_formula
from alliance_models.errors import FewClustersWarning, MissingDataWarning, ModelSpecError


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 48
    return pd.DataFrame(
        {
            "therapist": np.repeat([f"T{i}" for i in range(6)], 8),
            "patient": np.tile(np.repeat(["a", "b"], 4), 6),  # labels reused across therapists
            "session": np.tile(np.arange(1, 5), 12),
            "alliance": rng.normal(5, 1, n),
            "age": rng.normal(50, 12, n),
            "arm": np.tile([0, 1], 24),
            "adherence": rng.normal(size=n),
            "wai.total": rng.normal(size=n),
        }
    )


# -- parsing ------------------------------------------------------------------------------
def test_nested_bar_expands_to_one_term_per_level():
    spec = parse_formula("y ~ x + (1 | clinic/therapist/patient)")
    assert [str(t) for t in spec.random] == [
        "(1 | clinic)",
        "(1 | clinic:therapist)",
        "(1 | clinic:therapist:patient)",
    ]
    assert spec.random[2].factors == ("clinic", "therapist", "patient")
    assert spec.grouping_factors == ("clinic", "therapist", "patient")
    # the explicit form gives the same terms
    explicit = parse_formula("y ~ x + (1 | clinic) + (1 | clinic:therapist)")
    assert explicit.random == parse_formula("y ~ x + (1 | clinic/therapist)").random


def test_double_bar_means_uncorrelated():
    (t,) = parse_formula("y ~ days + (days || subject)").random
    assert not t.correlated and t.intercept and t.slopes == ("days",)
    assert str(t) == "(days || subject)"
    (c,) = parse_formula("y ~ days + (days | subject)").random
    assert c.correlated


@pytest.mark.parametrize(
    ("term", "intercept", "slopes"),
    [
        ("(1 | g)", True, ()),
        ("(x | g)", True, ("x",)),  # lme4: implicit intercept
        ("(1 + x + z | g)", True, ("x", "z")),
        ("(0 + x | g)", False, ("x",)),
        ("(x - 1 | g)", False, ("x",)),
    ],
)
def test_random_slopes_and_intercepts(term, intercept, slopes):
    (t,) = parse_formula(f"y ~ x + {term}").random
    assert (t.intercept, t.slopes) == (intercept, slopes)
    assert t.n_coef == int(intercept) + len(slopes)
    assert t.coef_names[: int(intercept)] == (("(Intercept)",) if intercept else ())


def test_fixed_part_and_variables():
    spec = parse_formula("np.log(y) ~ C(arm) + I(age**2) + alliance * wai.total + (1 + s | g)")
    assert spec.fixed == "C(arm) + I(age**2) + alliance * wai.total"
    assert spec.fixed_formula == f"np.log(y) ~ {spec.fixed}"
    # function and module names are not columns; R-style dotted names are
    assert set(spec.variables) == {"y", "arm", "age", "alliance", "wai.total", "s", "g"}
    assert parse_formula("y ~ 1 + (1 | g)").fixed == "1"
    assert not parse_formula("y ~ x").has_random


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y x", "must be a string 'response ~ terms'"),
        ("~ x", "has no response left of '~'"),
        ("y ~ ", "has no terms right of '~'"),
        ("y ~ x + (1 | g", "unbalanced parentheses"),
        ("y ~ x + ( | g)", r"needs both expr and group"),
        ("y ~ x + (0 | g)", "has neither an intercept nor a slope"),
        ("y ~ x + (1 | log(g))", r"grouping factor 'log\(g\)' .* must be a column name"),
        ("y ~ x + (1 | g | h)", r"must have the form \(expr \| group\)"),
        ("y ~ x + (1 | g) + (1 | g)", r"random term \(1 \| g\) appears twice"),
    ],
)
def test_malformed_formulas(formula, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_formula(formula)


# -- ModelSpec.build ------------------------------------------------------------------------
def test_build_encodes_fixed_part_groups_and_slopes(data):
    spec = parse_formula("adherence ~ alliance * C(arm) + (1 + session | therapist/patient)")
    fr = spec.build(data)
    assert fr.x_names == ("Intercept", "alliance", "C(arm)[T.1]", "alliance:C(arm)[T.1]")
    np.testing.assert_allclose(fr.X[:, 3], data.alliance * data.arm)
    np.testing.assert_allclose(fr.y, data.adherence)
    # patient labels are reused across therapists: nesting makes them distinct
    assert fr.n_groups == {"therapist": 6, "therapist:patient": 12}
    assert fr.group_labels["therapist:patient"][0] == "T0:a"
    codes = fr.groups["therapist:patient"]
    assert codes[0] == codes[3] != codes[4]
    Z = fr.Z["(1 + session | therapist:patient)"]
    np.testing.assert_allclose(Z, np.column_stack([np.ones(48), data.session]))
    # new data are encoded like the fit (one arm level only is fine here)
    new = pd.DataFrame({"alliance": [4.0, 6.0], "arm": [1, 1]})
    np.testing.assert_allclose(fr.fixed_design(new), [[1, 4, 1, 4], [1, 6, 1, 6]])


def test_missing_column_message_lists_close_matches(data):
    spec = parse_formula("adherence ~ aliance * age + (1 | therapist)")
    with pytest.raises(
        ModelSpecError, match=r"column 'aliance'.*did you mean 'alliance', 'adherence'\?"
    ):
        spec.build(data)
    with pytest.raises(
        ModelSpecError,
        match=r"'zzz', which is not in the data\. Available columns: therapist, patient",
    ):
        parse_formula("adherence ~ zzz + (1 | therapist)").build(data)


def test_grouping_factor_with_one_level(data):
    spec = parse_formula("adherence ~ alliance + (1 | therapist)")
    with pytest.raises(ModelSpecError, match=r"'therapist' has only one level \('T0'\)"):
        spec.build(data.assign(therapist="T0"))


@pytest.mark.parametrize(
    ("formula", "column", "value", "message"),
    [
        ("adherence ~ alliance * age + (1 | therapist)", "age", 50.0, r"term 'age' is constant"),
        ("adherence ~ alliance + C(arm) + (1 | therapist)", "arm", 1, r"term 'C\(arm\)' gives no"),
    ],
)
def test_constant_predictor(data, formula, column, value, message):
    with pytest.raises(ModelSpecError, match=message + ".*constant predictor or moderator"):
        parse_formula(formula).build(data.assign(**{column: value}))


def test_non_numeric_response(data):
    d = data.assign(adherence=data.adherence.astype(object))
    d.loc[[2, 9], "adherence"] = "high"
    with pytest.raises(ModelSpecError, match=r"'adherence' must be numeric.*rows 2, 9.*'high'"):
        parse_formula("adherence ~ alliance + (1 | therapist)").build(d)


def test_fewer_than_five_clusters_warns(data):
    d = data[data.therapist.isin(["T0", "T1", "T2", "T3"])]
    with pytest.warns(FewClustersWarning, match="'therapist' has only 4 levels.*unstable"):
        fr = parse_formula("adherence ~ alliance + (1 | therapist)").build(d)
    assert fr.n_groups["therapist"] == 4


def test_missing_values_are_dropped_listwise_and_counted(data):
    d = data.copy()
    d.loc[[1, 30], "age"] = np.nan
    d.loc[7, "therapist"] = None
    d.loc[9, "session"] = np.nan  # not a model column: must not drop the row
    with pytest.warns(
        MissingDataWarning, match=r"3 of 48 rows .*\(age, therapist\).*rows 1, 7, 30"
    ):
        fr = parse_formula("adherence ~ alliance * age + (1 | therapist)").build(d)
    assert fr.n_dropped == 3 and fr.n_obs == 45
    assert list(fr.dropped_index) == [1, 7, 30]
    assert 9 in fr.data.index and 1 not in fr.data.index


def test_build_rejects_non_dataframes():
    with pytest.raises(ModelSpecError, match="must be a pandas DataFrame, got dict"):
        parse_formula("y ~ x + (1 | g)").build({"y": [1.0]})  # type: ignore[arg-type]


def test_stray_text_in_numeric_column_names_rows_and_values():
    import pandas as pd

    from alliance_models import DataValidationError, fit_ols

    rng = np.random.default_rng(0)
    d = pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30).astype(object)})
    d.loc[[4, 9], "x"] = ["high", " n/a "]
    msg = r"column 'x'.*rows 4, 9: 'high', ' n/a '.*C\(x\)"
    with pytest.raises(DataValidationError, match=msg):
        fit_ols("y ~ x", d)


def test_text_factor_is_left_alone():
    import pandas as pd

    from alliance_models import fit_ols

    d = pd.DataFrame({"y": np.arange(12.0), "g": list("abc") * 4})
    assert "C(g)[T.b]" in fit_ols("y ~ C(g)", d).params.index
