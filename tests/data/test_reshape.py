"""Reshape and centring helpers: hand computations and long -> wide -> long round trips."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance_models.data.reshape import (
    grand_mean_center,
    group_mean,
    group_mean_center,
    standardize,
    to_long,
    to_wide,
    within_between,
)
from alliance_models.errors import DataValidationError

NAN = np.nan

# --------------------------------------------------------------------------- centring


def test_group_mean_by_hand_with_nan():
    x = [4.0, 5.0, NAN, 3.0, NAN]
    g = ["p1", "p1", "p1", "p2", "p3"]
    # p1: (4+5)/2 = 4.5 (NaN ignored); p2: 3; p3: nothing observed -> NaN
    np.testing.assert_array_equal(group_mean(x, g), [4.5, 4.5, 4.5, 3.0, NAN])


def test_group_mean_center_and_within_between_by_hand():
    x = np.array([40.0, 44.0, 48.0, 30.0, 34.0])
    g = np.array([1, 1, 1, 2, 2])
    np.testing.assert_allclose(group_mean_center(x, g), [-4.0, 0.0, 4.0, -2.0, 2.0], atol=0)
    between, within = within_between(x, g)
    np.testing.assert_allclose(between, [44.0, 44.0, 44.0, 32.0, 32.0], atol=0)
    np.testing.assert_allclose(within, [-4.0, 0.0, 4.0, -2.0, 2.0], atol=0)
    np.testing.assert_allclose(between + within, x, rtol=0, atol=1e-12)


def test_within_part_has_zero_mean_in_every_group():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 20, 500)
    x = rng.normal(size=500)
    _, within = within_between(x, g)
    sums = np.bincount(g, weights=within, minlength=20)
    np.testing.assert_allclose(sums, 0.0, atol=1e-10)


def test_grand_mean_center_rows_vs_units():
    # patient a has 3 sessions with age 40, patient b one with age 60
    age = [40.0, 40.0, 40.0, 60.0]
    units = ["a", "a", "a", "b"]
    # over rows: mean 45
    np.testing.assert_allclose(grand_mean_center(age), [-5.0, -5.0, -5.0, 15.0])
    # over units: mean of (40, 60) = 50; each patient counts once
    np.testing.assert_allclose(grand_mean_center(age, units=units), [-10, -10, -10, 10])


def test_grand_mean_center_keeps_nan():
    out = grand_mean_center([1.0, NAN, 3.0])
    np.testing.assert_array_equal(out, [-1.0, NAN, 1.0])


def test_standardize_matches_hand_and_units():
    x = np.array([2.0, 4.0, 9.0])
    sd = np.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2)
    np.testing.assert_allclose(standardize(x), (x - 5.0) / sd, rtol=1e-14)
    # unit level: unit means 3 (a) and 9 (b): mean 6, sd sqrt(18)
    np.testing.assert_allclose(
        standardize(x, units=["a", "a", "b"]), (x - 6.0) / np.sqrt(18.0), rtol=1e-14
    )


def test_standardize_constant_raises():
    with pytest.raises(DataValidationError, match="constant variable.*standard deviation > 0"):
        standardize([3.0, 3.0, 3.0])


def test_group_labels_missing_raise():
    with pytest.raises(DataValidationError, match="groups are missing at row 1"):
        group_mean([1.0, 2.0], ["a", None])


# --------------------------------------------------------------------------- reshape


def _long_example():
    return pd.DataFrame(
        {
            "patient": ["p1", "p1", "p2", "p2", "p2"],
            "session": [1, 2, 1, 2, 4],
            "therapist": ["t1", "t1", "t1", "t1", "t1"],
            "age": [40.0, 40.0, 61.0, 61.0, 61.0],
            "alliance": [50.0, 55.0, 40.0, 41.0, 45.0],
            "attended": [1, 1, 1, 0, 1],
        }
    )


def test_to_wide_by_hand():
    wide = to_wide(_long_example())
    assert list(wide.columns) == [
        "patient",
        "therapist",
        "age",
        "alliance_1",
        "alliance_2",
        "alliance_4",
        "attended_1",
        "attended_2",
        "attended_4",
    ]
    assert wide["patient"].tolist() == ["p1", "p2"]
    np.testing.assert_array_equal(wide["alliance_4"], [NAN, 45.0])
    np.testing.assert_array_equal(wide["attended_2"], [1.0, 0.0])


def test_to_long_inverts_to_wide_on_example():
    long = _long_example()
    back = to_long(to_wide(long))
    assert (
        back[["patient", "session"]].values.tolist() == long[["patient", "session"]].values.tolist()
    )
    for c in ["therapist", "age", "alliance"]:
        assert back[c].tolist() == long[c].tolist()
    np.testing.assert_array_equal(back["attended"].astype(float), long["attended"].astype(float))


def test_to_wide_duplicate_raises():
    long = _long_example()
    long.loc[1, "session"] = 1
    with pytest.raises(DataValidationError, match=r"duplicated \(patient, session\) at rows 0, 1"):
        to_wide(long)


def test_to_wide_keep_must_be_constant():
    long = _long_example()
    long.loc[4, "age"] = 62.0
    with pytest.raises(DataValidationError, match="column 'age' varies within patient 'p2'"):
        to_wide(long, keep=["therapist", "age"], values=["alliance"])


def test_to_wide_non_integer_session_raises():
    long = _long_example()
    long["session"] = long["session"].astype(float)
    long.loc[2, "session"] = 1.5
    with pytest.raises(DataValidationError, match="column 'session' row 2 has 1.5"):
        to_wide(long)


def test_to_long_unknown_stub_lists_columns():
    with pytest.raises(DataValidationError, match="stub.*'wai'.*available columns"):
        to_long(to_wide(_long_example()), stubs=["wai"])


def test_to_long_missing_id_lists_columns():
    with pytest.raises(DataValidationError, match="'record'.*available columns"):
        to_long(to_wide(_long_example()), id="record")


@st.composite
def long_frames(draw):
    n_pat = draw(st.integers(1, 6))
    rows = []
    for p in range(n_pat):
        sessions = draw(st.lists(st.integers(1, 9), min_size=1, max_size=6, unique=True))
        age = draw(st.floats(18, 85, allow_nan=False))
        for s in sessions:
            alliance = draw(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)))
            attended = draw(st.integers(0, 1))
            rows.append((f"p{p}", s, f"t{p % 2}", age, alliance, attended))
    df = pd.DataFrame(
        rows, columns=["patient", "session", "therapist", "age", "alliance", "attended"]
    )
    order = draw(st.permutations(range(len(df))))
    return df.iloc[list(order)].reset_index(drop=True)


def _normalise(df):
    out = df.sort_values(["patient", "session"]).reset_index(drop=True)
    for c in ["age", "alliance", "attended"]:
        out[c] = out[c].astype(float)
    out["session"] = out["session"].astype("int64")
    out["patient"] = out["patient"].astype(str)
    out["therapist"] = out["therapist"].astype(str)
    return out[sorted(out.columns)]


@settings(max_examples=60, deadline=None)
@given(long_frames())
def test_long_wide_long_round_trips(long):
    wide = to_wide(long, keep=["therapist", "age"], values=["alliance", "attended"])
    assert len(wide) == long["patient"].nunique()
    back = to_long(wide, stubs=["alliance", "attended"])
    # each long row has attended observed, so dropna never removes a real row
    pd.testing.assert_frame_equal(_normalise(back), _normalise(long))
