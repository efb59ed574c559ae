"""Tests of the questionnaire keys and of score().

References are hand computations (written out in the comments) and an independent,
row-by-row pure-Python scorer (`_reference_score`) that shares no code with the
vectorised implementation. Tolerances: exact for whole-number sums, 1e-12 relative for
means and pro-rated scores.
"""

import doctest
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance_models import DataValidationError, MissingDataWarning
from alliance_models.instruments import (
    WAI_S_SUBSCALES_ALT,
    Instrument,
    ScoringReport,
    get_instrument,
    keys,
    list_instruments,
    register_instrument,
    reverse_items,
    score,
    score_matrix,
    scoring,
)

# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------


def test_wai_key_structure():
    wai = get_instrument("wai")
    assert wai.items == tuple(range(1, 37)) and (wai.min, wai.max) == (1, 7)
    subs = wai.subscales
    assert sorted(subs) == ["bond", "goal", "task"]
    assert all(len(v) == 12 for v in subs.values())
    # the three subscales partition the 36 items
    assert sorted(i for v in subs.values() for i in v) == list(range(1, 37))
    assert wai.reversed == (1, 3, 7, 9, 10, 11, 12, 15, 20, 27, 29, 31, 33, 34)


def test_wai_s_key_is_consistent_with_the_36_item_key():
    """WAI-S item j is WAI item m[j]; its reversal and subscale must follow the WAI."""
    m = {1: 2, 2: 4, 3: 8, 4: 12, 5: 21, 6: 22, 7: 23, 8: 24, 9: 26, 10: 27, 11: 32, 12: 35}
    wai, wai_s = get_instrument("wai"), get_instrument("wai-s")
    assert wai_s.reversed == tuple(j for j in range(1, 13) if m[j] in wai.reversed) == (4, 10)
    for sub, its in wai_s.subscales.items():
        assert {m[j] for j in its} <= set(wai.subscales[sub]), sub
    assert sorted(i for v in wai_s.subscales.values() for i in v) == list(range(1, 13))


def test_wai_sr_and_other_keys():
    sr = get_instrument("wai-sr")
    assert (sr.min, sr.max, sr.reversed, sr.method) == (1, 5, (), "sum")
    assert dict(sr.subscales) == {
        "task": (1, 2, 10, 12),
        "goal": (4, 6, 8, 11),
        "bond": (3, 5, 7, 9),
    }
    assert dict(WAI_S_SUBSCALES_ALT) == dict(sr.subscales)
    hccq = get_instrument("hccq")
    assert (hccq.n_items, hccq.reversed, hccq.method, hccq.score_range) == (
        15,
        (13,),
        "mean",
        (1.0, 7.0),
    )
    short = get_instrument("hccq-short")
    assert short.items == (1, 2, 4, 7, 10, 14) and short.reversed == () and short.stem == "hccq"
    ears = get_instrument("ears")
    assert (ears.items, ears.reversed, ears.score_range) == (tuple(range(1, 7)), (2, 3, 5), (0, 24))
    siras = get_instrument("siras")
    assert (siras.n_items, siras.score_range) == (3, (3.0, 15.0))


def test_every_builtin_cites_a_source_and_list_instruments():
    tab = list_instruments()
    builtin = {"wai", "wai-s", "wai-sr", "hccq", "hccq-short", "ears", "siras"}
    assert builtin <= set(tab["key"])
    for key in builtin:
        inst = get_instrument(key)
        assert re.search(r"\((19|20)\d\d\)", inst.citation), key
        assert inst.note
        assert inst.key in inst.describe()
    assert "verify" in get_instrument("wai").note  # uncertainty is flagged


def test_instrument_is_hashable_picklable_and_read_only():
    import copy
    import pickle

    wai = get_instrument("wai")
    assert pickle.loads(pickle.dumps(wai)) == wai
    assert copy.deepcopy(wai) == wai and hash(wai) == hash(copy.copy(wai))
    with pytest.raises(TypeError):
        wai.subscales["task"] = (1,)  # type: ignore[index]
    _, rep = score(_frame("siras", (1, 2, 3), [[1, 2, 3]]), "siras", return_report=True)
    assert pickle.loads(pickle.dumps(rep)).summary() == rep.summary()


def test_instrument_to_frame_and_summary():
    tab = get_instrument("wai-sr").to_frame()
    assert tab["item"].tolist() == list(range(1, 13))
    assert tab.loc[tab["subscale"] == "goal", "item"].tolist() == [4, 6, 8, 11]
    assert not tab["reversed"].any() and set(tab["max"]) == {5}
    assert "subscale bond: 3, 5, 7, 9" in get_instrument("wai-sr").summary()


def test_get_instrument_is_case_insensitive_and_unknown_key_lists_keys():
    assert get_instrument(" WAI-SR ") is get_instrument("wai-sr")
    with pytest.raises(DataValidationError, match=r"unknown instrument 'nope'.*'wai-sr'"):
        get_instrument("nope")


@pytest.fixture
def registry(monkeypatch):
    """Isolate registry changes made by a test."""
    monkeypatch.setattr(keys, "_REGISTRY", dict(keys._REGISTRY))
    return keys._REGISTRY


def test_register_instrument_new_and_override(registry):
    inst = register_instrument(
        "pain", items=[1, 2, 3], min=0, max=10, reversed=[3], method="mean", citation="x"
    )
    assert get_instrument("pain") is inst
    df = pd.DataFrame({"pain_1": [2], "pain_2": [4], "pain_3": [10]})
    # mean of 2, 4 and (0 + 10 - 10) = 0 -> 2
    assert score(df, "pain")["pain_mean"].item() == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(DataValidationError, match="'pain' is already registered.*replace=True"):
        register_instrument("pain", items=[1], min=0, max=1)
    with pytest.raises(DataValidationError, match="'wai-s' is already registered"):
        register_instrument("wai-s", items=[1, 2], min=1, max=7)
    # overriding a built-in key needs replace=True (e.g. the alternative WAI-S subscales)
    alt = Instrument(
        "wai-s",
        items=tuple(range(1, 13)),
        min=1,
        max=7,
        reversed=(4, 10),
        subscales=WAI_S_SUBSCALES_ALT,
    )
    assert register_instrument(alt, replace=True) is alt
    assert get_instrument("wai-s").subscales["task"] == (1, 2, 10, 12)


def test_register_instrument_rejects_inconsistent_definitions(registry):
    with pytest.raises(DataValidationError, match=r"reversed items \[9\] are not among"):
        register_instrument("bad", items=[1, 2], min=1, max=5, reversed=[9])
    with pytest.raises(DataValidationError, match=r"min \(5\) must be smaller than max \(5\)"):
        register_instrument("bad", items=[1, 2], min=5, max=5)
    with pytest.raises(DataValidationError, match="method must be 'sum' or 'mean'"):
        register_instrument("bad", items=[1, 2], min=1, max=5, method="median")
    with pytest.raises(DataValidationError, match=r"subscale 'a' lists items \[7\]"):
        register_instrument("bad", items=[1, 2], min=1, max=5, subscales={"a": [1, 7]})
    with pytest.raises(DataValidationError, match=r"items \[2\] are listed twice"):
        register_instrument("bad", items=[1, 2, 2], min=1, max=5)
    with pytest.raises(DataValidationError, match="whole item numbers, got 1.5"):
        register_instrument("bad", items=[1, 1.5], min=1, max=5)
    with pytest.raises(DataValidationError, match="reserved for the total"):
        register_instrument("bad", items=[1, 2], min=1, max=5, subscales={"total": [1]})
    with pytest.raises(DataValidationError, match="items, min and max are required"):
        register_instrument("bad", items=[1, 2])
    with pytest.raises(DataValidationError, match="max must be a whole number, got 4.5"):
        register_instrument("bad", items=[1, 2], min=1, max=4.5)
    with pytest.raises(DataValidationError, match="item numbers must be >= 1, got 0"):
        register_instrument("bad", items=[0, 1], min=1, max=5)
    with pytest.raises(DataValidationError, match="must be letters, digits or '_'"):
        register_instrument("bad", items=[1, 2], min=1, max=5, subscales={"a b": [1]})
    with pytest.raises(DataValidationError, match="subscale 'a' is empty"):
        register_instrument("bad", items=[1, 2], min=1, max=5, subscales={"a": []})
    with pytest.raises(DataValidationError, match="non-empty key"):
        register_instrument(" ", items=[1, 2], min=1, max=5)
    with pytest.raises(DataValidationError, match="either an Instrument or its fields"):
        register_instrument(get_instrument("siras"), items=[1], replace=True)
    assert "bad" not in registry


# ---------------------------------------------------------------------------
# reverse scoring
# ---------------------------------------------------------------------------

scales = st.tuples(st.integers(-5, 5), st.integers(1, 10)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=200, deadline=None)
@given(scale=scales, data=st.data())
def test_reverse_twice_is_identity_and_maps_scale_onto_itself(scale, data):
    lo, hi = scale
    vals = data.draw(
        st.lists(st.one_of(st.integers(lo, hi).map(float), st.just(math.nan)), max_size=30)
    )
    x = np.array(vals, dtype=float)
    once = reverse_items(x, lo, hi)
    twice = reverse_items(once, lo, hi)
    np.testing.assert_array_equal(twice, x)  # NaN compares equal in assert_array_equal
    answered = ~np.isnan(x)
    assert np.all((once[answered] >= lo) & (once[answered] <= hi))
    assert np.all(once[answered] + x[answered] == lo + hi)


def test_reverse_items_examples_and_bad_scale():
    assert reverse_items([1, 3, 5], 1, 5).tolist() == [5.0, 3.0, 1.0]
    assert reverse_items(np.array([[0, 4]]), 0, 4).tolist() == [[4.0, 0.0]]
    with pytest.raises(DataValidationError, match="min .7. must be smaller than max .1."):
        reverse_items([1], 7, 1)


# ---------------------------------------------------------------------------
# totals against hand computation
# ---------------------------------------------------------------------------


def _frame(stem, items, rows):
    return pd.DataFrame([dict(zip([f"{stem}_{i}" for i in items], r, strict=True)) for r in rows])


def test_wai_all_sevens_by_hand():
    # every response 7: the 14 reversed items count 1, the 22 others 7 -> 22*7 + 14 = 168
    # task has reversed 7, 11, 15, 31, 33 -> 7*7 + 5 = 54; goal 3, 9, 10, 12, 27, 34 ->
    # 6*7 + 6 = 48; bond 1, 20, 29 -> 9*7 + 3 = 66
    df = _frame("wai", range(1, 37), [[7] * 36])
    out = score(df, "wai")
    assert out.loc[0, ["wai_total", "wai_task", "wai_goal", "wai_bond"]].tolist() == [
        168.0,
        54.0,
        48.0,
        66.0,
    ]
    raw = score(df, "wai", reverse=False, prefix="raw")
    assert raw.loc[0, "raw_total"] == 252.0


def test_wai_sr_by_hand():
    # items 1..12 = 1 2 3 4 5 1 2 3 4 5 1 2 (no reversed items)
    # task 1,2,10,12 -> 1+2+5+2 = 10; goal 4,6,8,11 -> 4+1+3+1 = 9;
    # bond 3,5,7,9 -> 3+5+2+4 = 14; total 33
    df = _frame("wai", range(1, 13), [[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]])
    out = score(df, "wai-sr")
    got = out.loc[0, ["wai_sr_total", "wai_sr_task", "wai_sr_goal", "wai_sr_bond"]]
    assert got.tolist() == [33.0, 10.0, 9.0, 14.0]
    assert list(out.columns[-4:]) == ["wai_sr_total", "wai_sr_task", "wai_sr_goal", "wai_sr_bond"]


def test_wai_s_by_hand():
    # all responses 6; items 4 and 10 reversed -> 1 + 7 - 6 = 2
    # task 1,2,8,12 -> 24; goal 4,6,10,11 -> 2+6+2+6 = 16; bond -> 24; total 64
    out = score(_frame("wai", range(1, 13), [[6] * 12]), "wai-s")
    assert out.loc[0, ["wai_s_total", "wai_s_task", "wai_s_goal", "wai_s_bond"]].tolist() == [
        64.0,
        24.0,
        16.0,
        24.0,
    ]


def test_ears_hccq_siras_by_hand():
    # EARS [1,2,3,4,0,2]: items 2,3,5 reversed on 0-4 -> 2, 1, 4 -> 1+2+1+4+4+2 = 14
    # and [4,0,0,4,0,4] is the most adherent answer pattern -> 24
    ears = score(_frame("ears", range(1, 7), [[1, 2, 3, 4, 0, 2], [4, 0, 0, 4, 0, 4]]), "ears")
    assert ears["ears_total"].tolist() == [14.0, 24.0]
    # HCCQ: items 1..15 = 1..7,1..7,1 ; item 13 = 6 reversed -> 2
    # sum = (28 + 28 + 1) - 6 + 2 = 53 -> mean 53/15
    row = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 1]
    hccq = score(_frame("hccq", range(1, 16), [row]), "hccq")
    assert hccq["hccq_mean"].item() == pytest.approx(53 / 15, rel=1e-12)
    # HCCQ-short reads only items 1,2,4,7,10,14 of the long-form columns: 1+2+4+7+3+7 = 24
    short = score(_frame("hccq", range(1, 16), [row]), "hccq-short")
    assert short["hccq_short_mean"].item() == pytest.approx(24 / 6, rel=1e-12)
    siras = score(_frame("siras", (1, 2, 3), [[5, 4, 1], [1, 1, 1]]), "siras")
    assert siras["siras_total"].tolist() == [10.0, 3.0]


def _reference_score(row, inst, prorate, limit_per_sub):
    """Independent row-wise scorer: dicts and loops only."""
    vals = {}
    for i, v in row.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        vals[i] = inst.min + inst.max - v if i in inst.reversed else v

    def unit(its, limit):
        got = [vals[i] for i in its if i in vals]
        miss = len(its) - len(got)
        if not got or miss > (limit if prorate else 0):
            return math.nan
        mean = sum(got) / len(got)
        return mean * len(its) if inst.method == "sum" else mean

    subs = {s: unit(its, limit_per_sub) for s, its in inst.subscales.items()}
    total = unit(inst.items, limit_per_sub * max(1, len(subs)))
    if any(math.isnan(v) for v in subs.values()):
        total = math.nan
    return total, subs


MIXED = Instrument(
    "mixed",
    items=tuple(range(1, 9)),
    min=0,
    max=6,
    reversed=(2, 5, 8),
    subscales={"a": (1, 2, 3), "b": (4, 5, 6, 7, 8)},
    method="mean",
)


@pytest.mark.parametrize("key", ["wai", "wai-s", "wai-sr", "hccq", "hccq-short", "ears", MIXED])
@pytest.mark.parametrize("prorate", [False, True])
def test_random_data_matches_independent_scorer(key, prorate):
    inst = get_instrument(key)
    rng = np.random.default_rng(20261126)
    n = 60
    x = rng.integers(inst.min, inst.max + 1, size=(n, inst.n_items)).astype(float)
    # a few rows with 1, 2 or all items missing
    for r in range(0, n, 4):
        k = (1, 2, inst.n_items)[r % 3]
        x[r, rng.choice(inst.n_items, size=k, replace=False)] = np.nan
    df = pd.DataFrame(x, columns=[f"{inst.stem}_{i}" for i in inst.items])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, rep = score(df, key, prorate=prorate, max_missing=1, return_report=True)
    expect_warning = False
    for r in range(n):
        total, subs = _reference_score(dict(zip(inst.items, x[r], strict=True)), inst, prorate, 1)
        got = out.loc[r, f"{inst.default_prefix}_{inst.score_suffix}"]
        assert (math.isnan(total) and math.isnan(got)) or got == pytest.approx(total, rel=1e-12)
        for s, v in subs.items():
            g = out.loc[r, f"{inst.default_prefix}_{s}"]
            assert (math.isnan(v) and math.isnan(g)) or g == pytest.approx(v, rel=1e-12)
        some_nan = math.isnan(total) or any(math.isnan(v) for v in subs.values())
        expect_warning |= some_nan and not np.isnan(x[r]).all()
    # warned exactly when a row with answered items lost a score
    assert [w.category for w in caught] == ([MissingDataWarning] if expect_warning else [])
    assert rep.n_nan == int(out[list(rep.columns)].isna().sum().sum())


# ---------------------------------------------------------------------------
# pro-rating and missing items
# ---------------------------------------------------------------------------


def _wai_sr(rows):
    return _frame("wai", range(1, 13), rows)


def test_prorating_within_limit_by_hand():
    row = [4] * 12
    row[2] = np.nan  # item 3 (bond) missing
    row[4] = 2  # item 5 (bond) = 2
    df = _wai_sr([row])
    out, rep = score(df, "wai-sr", prorate=True, return_report=True)
    # bond: answered 2, 4, 4 (items 5, 7, 9) -> mean 10/3 -> 4 * 10/3 = 40/3
    assert out.loc[0, "wai_sr_bond"] == pytest.approx(40 / 3, rel=1e-12)
    # total: answered 10 fours and one 2 -> mean 42/11 -> 12 * 42/11
    assert out.loc[0, "wai_sr_total"] == pytest.approx(12 * 42 / 11, rel=1e-12)
    assert out.loc[0, "wai_sr_task"] == 16.0
    fr = rep.to_frame()
    bond = fr[fr["score"] == "wai_sr_bond"].iloc[0]
    assert bond["status"] == "prorated"
    assert bond["reason"] == "pro-rated: 1 of 4 items missing (limit 1)"
    assert rep.n_prorated == 2 and rep.n_nan == 0


def test_beyond_limit_is_nan_with_reason_and_warning():
    row = [4] * 12
    row[2] = row[4] = np.nan  # items 3 and 5: two bond items missing
    df = _wai_sr([[5] * 12, row])
    with pytest.warns(MissingDataWarning, match=r"2 score\(s\) set to NaN.*row 1"):
        out, rep = score(df, "wai-sr", prorate=True, max_missing=1, return_report=True)
    assert math.isnan(out.loc[1, "wai_sr_bond"]) and math.isnan(out.loc[1, "wai_sr_total"])
    assert out.loc[1, "wai_sr_task"] == 16.0
    reasons = rep.to_frame(only_nan=True).set_index("score")["reason"]
    assert reasons["wai_sr_bond"] == "2 of 4 items missing (limit 1)"
    assert reasons["wai_sr_total"] == "subscale bond not scored (2 of 12 items missing)"
    # a fraction of one half allows 2 of the 4 bond items: (4 + 4) / 2 * 4 = 16
    out2 = score(df, "wai-sr", prorate=True, max_missing=0.5)
    assert out2.loc[1, "wai_sr_bond"] == 16.0
    # per-subscale mapping: bond may miss 2, the others 0, total 2
    out3 = score(
        df, "wai-sr", prorate=True, max_missing={"bond": 2, "task": 0, "goal": 0, "total": 2}
    )
    assert out3.loc[1, "wai_sr_total"] == pytest.approx(48.0, rel=1e-12)


def test_total_limit_from_mapping_is_enforced():
    row = [4] * 12
    row[2] = row[4] = np.nan
    df = _wai_sr([row])
    with pytest.warns(MissingDataWarning, match="wai_sr_total: 1"):
        out, rep = score(
            df,
            "wai-sr",
            prorate=True,
            max_missing={"bond": 2, "task": 0, "goal": 0, "total": 1},
            return_report=True,
        )
    assert out.loc[0, "wai_sr_bond"] == 16.0 and math.isnan(out.loc[0, "wai_sr_total"])
    assert rep.to_frame(only_nan=True)["reason"].tolist() == ["2 of 12 items missing (limit 1)"]


def test_without_prorating_any_missing_item_gives_nan_and_warns():
    row = [3] * 12
    row[0] = np.nan  # item 1, task
    with pytest.warns(MissingDataWarning, match=r"wai_sr_total: 1, wai_sr_task: 1.*prorate=True"):
        out, rep = score(_wai_sr([row]), "wai-sr", return_report=True)
    assert out.loc[0, ["wai_sr_goal", "wai_sr_bond"]].tolist() == [12.0, 12.0]
    assert math.isnan(out.loc[0, "wai_sr_total"])
    assert "1 of 4 items missing and prorate=False" in rep.to_frame()["reason"].tolist()


def test_rows_with_no_items_are_nan_without_warning():
    df = _wai_sr([[2] * 12, [np.nan] * 12])
    df.index = [10, 11]
    out, rep = score(df, "wai-sr", prorate=True, return_report=True)  # no warning (error filter)
    assert out.loc[11, list(rep.columns)].isna().all()
    nan = rep.to_frame(only_nan=True)
    assert set(nan["row"]) == {11} and set(nan["reason"]) == {"no items answered"}
    assert rep.counts().loc["wai_sr_total", "no items answered"] == 1
    assert "no items answered 1" in rep.summary()


def test_report_is_frozen_dataclass_with_summary_and_frame():
    row = [3] * 12
    row[0] = np.nan
    df = _wai_sr([[2] * 12, row, [np.nan] * 12])
    out, rep = score(df, "wai-sr", prorate=True, return_report=True)
    assert isinstance(rep, ScoringReport) and rep.n_rows == 3
    with pytest.raises(AttributeError):
        rep.prorate = False  # type: ignore[misc]
    fr = rep.to_frame()
    assert list(fr.columns) == ["row", "score", "n_items", "n_missing", "status", "reason"]
    assert len(fr) == 3 * 4
    text = rep.summary()
    assert "WAI-SR scoring: 3 rows, 4 score columns, prorate=True" in text
    assert "NaN scores: 4; pro-rated scores: 2" in text
    assert dict(rep.limits) == {"task": 1, "goal": 1, "bond": 1, "total": 3}


def test_bad_max_missing_values():
    df = _wai_sr([[2] * 12])
    with pytest.raises(DataValidationError, match=r"read as a fraction.*got 1.5"):
        score(df, "wai-sr", prorate=True, max_missing=1.5)
    with pytest.raises(DataValidationError, match=r"must be >= 0, got -1"):
        score(df, "wai-sr", prorate=True, max_missing=-1)
    with pytest.raises(DataValidationError, match=r"every subscale.*missing \['goal'\]"):
        score(df, "wai-sr", prorate=True, max_missing={"bond": 1, "task": 1})
    with pytest.raises(DataValidationError, match=r"names \['mood'\]"):
        score(df, "wai-sr", prorate=True, max_missing={"mood": 1})
    with pytest.raises(DataValidationError, match="must be a count .* got True"):
        score(df, "wai-sr", prorate=True, max_missing=True)
    with pytest.raises(DataValidationError, match="must give a 'total' limit"):
        score(_frame("siras", (1, 2, 3), [[1, 2, 3]]), "siras", max_missing={})


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_out_of_range_message_matches_the_style_guide():
    df = _wai_sr([[3] * 12 for _ in range(20)])
    df.loc[17, "wai_3"] = 9
    with pytest.raises(
        DataValidationError, match=re.escape("column 'wai_3' row 17 has 9; WAI-SR items take 1-5")
    ):
        score(df, "wai-sr")


def test_out_of_range_many_rows_lists_first_five():
    df = _wai_sr([[3] * 12 for _ in range(10)])
    df["wai_12"] = [0, 6, 3, 7, 8, 9, 3, 6, 3, 0]
    with pytest.raises(
        DataValidationError,
        match=re.escape(
            "column 'wai_12' rows 0, 1, 3, 4, 5 (and 2 more) have 0, 6, 7, 8, 9; "
            "WAI-SR items take 1-5"
        ),
    ):
        score(df, "wai-sr")
    ears = _frame("ears", range(1, 7), [[0, 1, 2, 3, 4, 5]])
    with pytest.raises(
        DataValidationError, match="column 'ears_6' row 0 has 5; EARS items take 0-4"
    ):
        score(ears, "ears")


def test_non_numeric_item():
    df = _wai_sr([[3] * 12, [3] * 12, [3] * 12])
    df["wai_5"] = df["wai_5"].astype(object)
    df.loc[2, "wai_5"] = "abc"
    with pytest.raises(
        DataValidationError,
        match=r"column 'wai_5' row 2 has 'abc'; WAI-SR items take whole numbers 1-5 "
        r"\(found a value that is not a number\)",
    ):
        score(df, "wai-sr")


def test_numeric_strings_and_blanks_are_accepted():
    df = _wai_sr([[3] * 12, [3] * 12]).astype(str)  # text columns, as from a raw export
    df.loc[0, "wai_1"] = " 5 "
    df.loc[1, "wai_1"] = " "
    out = score(df, "wai-sr", prorate=True)
    assert out.loc[0, "wai_sr_task"] == 3 + 3 + 3 + 5
    assert out.loc[1, "wai_sr_task"] == 12.0  # item 1 blank -> pro-rated 4 * 3


def test_non_integer_item():
    df = _wai_sr([[3] * 12, [3] * 12]).astype(float)
    df.loc[1, "wai_4"] = 2.5
    with pytest.raises(
        DataValidationError,
        match=re.escape("column 'wai_4' row 1 has 2.5; WAI-SR items take whole numbers 1-5"),
    ):
        score(df, "wai-sr")


def test_boolean_and_infinite_items():
    df = _frame("siras", (1, 2, 3), [[True, True, False]])
    with pytest.raises(DataValidationError, match=r"column 'siras_1' row 0 has True.*True/False"):
        score(df, "siras")
    df = _frame("siras", (1, 2, 3), [[1.0, np.inf, 2.0]])
    with pytest.raises(DataValidationError, match="column 'siras_2' row 0 has inf; SIRAS items"):
        score(df, "siras")


def test_missing_item_column_lists_available_columns():
    df = _wai_sr([[3] * 12]).drop(columns=["wai_7"])
    df["patient"] = "p1"
    with pytest.raises(
        DataValidationError,
        match=r"WAI-SR needs item column\(s\) 'wai_7' \(item 7\) that are not in the data; "
        r"available columns: 'wai_1', .*'wai_12', 'patient'",
    ):
        score(df, "wai-sr")


def test_items_argument_forms():
    base = _wai_sr([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]])
    renamed = base.rename(columns=lambda c: c.replace("wai_", "Q"))
    expect = score(base, "wai-sr")["wai_sr_total"].item()
    assert score(renamed, "wai-sr", items="Q{i}")["wai_sr_total"].item() == expect
    mapping = {i: f"Q{i}" for i in range(1, 13)}
    assert score(renamed, "wai-sr", items=mapping)["wai_sr_total"].item() == expect
    ordered = [f"Q{i}" for i in range(1, 13)]
    assert score(renamed, "wai-sr", items=ordered, prefix="a")["a_total"].item() == expect
    with pytest.raises(DataValidationError, match=r"must be a format string containing '\{i\}'"):
        score(renamed, "wai-sr", items="Q")
    with pytest.raises(DataValidationError, match=r"missing items \[12\], unknown items \[13\]"):
        score(renamed, "wai-sr", items={**{i: f"Q{i}" for i in range(1, 12)}, 13: "Q12"})
    with pytest.raises(DataValidationError, match="items lists 2 columns but WAI-SR has 12"):
        score(renamed, "wai-sr", items=["Q1", "Q2"])
    with pytest.raises(DataValidationError, match="to the same column"):
        score(renamed, "wai-sr", items=["Q1"] * 12)


def test_existing_score_column_and_input_not_modified():
    df = _wai_sr([[3] * 12])
    before = df.copy()
    out = score(df, "wai-sr")
    pd.testing.assert_frame_equal(df, before)
    with pytest.raises(DataValidationError, match=r"\['wai_sr_total'.*already exist.*prefix"):
        score(out, "wai-sr")
    with pytest.raises(DataValidationError, match="needs a pandas DataFrame"):
        score(np.ones((2, 12)), "wai-sr")


def test_value_labelled_categoricals_are_mapped_back_to_codes():
    labels = {1.0: "Seldom", 2.0: "Sometimes", 3.0: "Fairly often", 4.0: "Very often",
              5.0: "Always"}  # fmt: skip
    df = _wai_sr([[5] * 12, [1] * 12])
    for c in df.columns:
        df[c] = pd.Categorical(df[c].map(labels))
    df.attrs["value_labels"] = {c: labels for c in df.columns}
    out = score(df, "wai-sr")
    assert out["wai_sr_total"].tolist() == [60.0, 12.0]
    # numeric categories work without labels
    num = _wai_sr([[2] * 12]).astype("category")
    assert score(num, "wai-sr")["wai_sr_total"].item() == 24.0
    # labels that cannot be mapped are non-numeric
    df.attrs = {}
    with pytest.raises(
        DataValidationError, match="column 'wai_1' rows 0, 1 have 'Always', 'Seldom'"
    ):
        score(df, "wai-sr")


def test_empty_frame_scores_to_empty_columns():
    df = _wai_sr([[3] * 12]).iloc[:0]
    out, rep = score(df, "wai-sr", return_report=True)
    assert len(out) == 0 and "wai_sr_total" in out and rep.n_nan == 0


def test_score_matrix_shape_check():
    with pytest.raises(DataValidationError, match=r"needs an \(n_rows, 12\) array"):
        score_matrix(np.ones((2, 3)), "wai-sr")


def test_public_names_reexported():
    import alliance_models as am

    assert am.score is score and am.get_instrument is get_instrument
    assert am.Instrument is Instrument and am.register_instrument is register_instrument
    assert am.list_instruments is list_instruments


@pytest.mark.parametrize("module", [keys, scoring])
def test_docstring_examples_run(module):
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0


def test_mean_scored_prorating_and_total_only_mapping():
    # HCCQ-short row with item 14 missing: mean of the five answered items (no scaling)
    df = _frame("hccq", (1, 2, 4, 7, 10, 14), [[7, 6, 5, 4, 3, np.nan]])
    out = score(df, "hccq-short", prorate=True, max_missing={"total": 1})
    assert out["hccq_short_mean"].item() == pytest.approx(25 / 5, rel=1e-12)
    # SIRAS (sum) with one of three missing: 3 * mean(4, 5) = 13.5
    siras = _frame("siras", (1, 2, 3), [[4, np.nan, 5]])
    assert score(siras, "siras", prorate=True)["siras_total"].item() == 13.5
    with pytest.warns(MissingDataWarning, match=r"Raise max_missing"):
        score(siras, "siras", prorate=True, max_missing=0)
