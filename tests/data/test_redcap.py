"""Tests of read_redcap: REDCap flat exports -> one row per repeat instance.

The reference is the truth the export was built from: tests write small REDCap-style
CSVs (baseline event, repeating session instrument, discharge event) from known
per-record and per-session values, and check that flattening gives them back exactly.
A hypothesis property test does this for random studies (flat -> export -> flat).
"""

from importlib import resources

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alliance_models as am
from alliance_models import DataValidationError
from alliance_models.data.readers import read_redcap
from alliance_models.data.redcap import flatten_redcap, is_redcap_export

BASE = ["therapist_id", "age", "sex", "hccq_1"]
SESS = ["session_date", "attended", "scheduled", "wai_1", "wai_2"]
DISCH = ["ears_1", "ears_2"]
META = ["record_id", "redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance"]


def build_export(records):
    """records: list of dicts with id, base (dict), sessions (list of dicts), discharge."""
    rows = []
    for rec in records:
        rows.append({"record_id": rec["id"], "redcap_event_name": "baseline_arm_1", **rec["base"]})
        for k, s in enumerate(rec["sessions"], start=1):
            rows.append(
                {
                    "record_id": rec["id"],
                    "redcap_event_name": "treatment_arm_1",
                    "redcap_repeat_instrument": "session",
                    "redcap_repeat_instance": k,
                    **s,
                }
            )
        if rec.get("discharge") is not None:
            rows.append(
                {"record_id": rec["id"], "redcap_event_name": "discharge_arm_1", **rec["discharge"]}
            )
    return pd.DataFrame(rows, columns=META + BASE + SESS + DISCH)


def expected_flat(records):
    rows = []
    for rec in records:
        carried = {**rec["base"], **(rec.get("discharge") or {})}
        if not rec["sessions"]:
            rows.append({"record_id": rec["id"], "session": np.nan, **carried})
        for k, s in enumerate(rec["sessions"], start=1):
            rows.append({"record_id": rec["id"], "session": k, **s, **carried})
    return pd.DataFrame(rows, columns=["record_id", "session"] + BASE + SESS + DISCH)


def assert_same_values(got, exp):
    assert len(got) == len(exp)
    for c in exp.columns:
        a, b = got[c].reset_index(drop=True), exp[c].reset_index(drop=True)
        assert (a.isna() == b.isna()).all(), c
        keep = b.notna()
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            np.testing.assert_array_equal(a[keep].to_numpy(float), b[keep].to_numpy(float), c)
        else:
            assert a[keep].astype(str).tolist() == b[keep].astype(str).tolist(), c


def example_records():
    return [
        {
            "id": "P1",
            "base": {"therapist_id": "T1", "age": 44, "sex": "female", "hccq_1": 6},
            "sessions": [
                {"session_date": "2024-01-02", "attended": 1, "scheduled": 1, "wai_1": 5,
                 "wai_2": 4},
                {"session_date": "2024-01-09", "attended": 0, "scheduled": 1},
                {"session_date": "2024-01-16", "attended": 1, "scheduled": 1, "wai_1": 3,
                 "wai_2": 3},
            ],
            "discharge": {"ears_1": 3, "ears_2": 1},
        },
        {
            "id": "P2",
            "base": {"therapist_id": "T1", "age": 61, "sex": "male", "hccq_1": 4},
            "sessions": [
                {"session_date": "2024-02-01", "attended": 1, "scheduled": 1, "wai_1": 2,
                 "wai_2": 5},
            ],
            "discharge": None,  # did not complete
        },
        {
            "id": "P3",  # enrolled, never came
            "base": {"therapist_id": "T2", "age": 38, "sex": "female", "hccq_1": 7},
            "sessions": [],
            "discharge": None,
        },
    ]  # fmt: skip


def test_example_layout_from_csv(tmp_path):
    recs = example_records()
    path = tmp_path / "export.csv"
    build_export(recs).to_csv(path, index=False)
    flat = read_redcap(path)
    assert list(flat.columns) == [
        "record_id", "redcap_event_name", "redcap_repeat_instrument", "session", *BASE, *SESS,
        *DISCH,
    ]  # fmt: skip
    assert_same_values(flat, expected_flat(recs))
    assert flat["record_id"].tolist() == ["P1", "P1", "P1", "P2", "P3"]
    assert flat["redcap_event_name"].iloc[:4].tolist() == ["treatment_arm_1"] * 4
    info = flat.attrs["redcap"]
    assert info["n_records"] == 3 and info["n_rows"] == 5
    assert info["records_without_repeats"] == ["P3"]
    assert info["repeating_instruments"] == ["session"]
    assert info["record_fields"] == BASE + DISCH
    assert info["repeat_fields"] == {"session": SESS}
    # complete whole-number columns come back as integers; gaps keep float
    assert flat["age"].dtype == np.int64 and flat["wai_1"].dtype == np.float64


def test_flatten_is_the_frame_step_of_reading(tmp_path):
    # read_redcap(path) = read the file, then flatten_redcap (which reads nothing)
    raw = build_export(example_records())
    path = tmp_path / "export.csv"
    raw.to_csv(path, index=False)
    before = raw.copy()
    flat = flatten_redcap(raw)
    pd.testing.assert_frame_equal(raw, before)  # the input is not changed
    pd.testing.assert_frame_equal(flat, read_redcap(path))
    assert flat.attrs["redcap"] == read_redcap(path).attrs["redcap"]
    with pytest.raises(DataValidationError, match=f"'nope' is not in '{path}'"):
        read_redcap(path, record_id="nope")  # messages name the file it came from
    with pytest.raises(DataValidationError, match="'nope' is not in my export"):
        flatten_redcap(raw, record_id="nope", source="my export")


def test_session_is_integer_when_every_record_has_sessions():
    recs = example_records()[:2]
    flat = read_redcap(build_export(recs))
    assert flat["session"].tolist() == [1, 2, 3, 1] and flat["session"].dtype == np.int64


def test_scoring_the_flattened_export():
    recs = example_records()
    flat = read_redcap(build_export(recs))
    inst = am.Instrument("two", items=(1, 2), min=1, max=5, stem="wai")
    out = am.score(flat, inst)
    # P1 sessions: 5+4, (not attended), 3+3; P2: 2+5; P3: no session
    np.testing.assert_array_equal(out["two_total"].to_numpy(), [9, np.nan, 6, 7, np.nan])


def test_field_names_are_discovered_not_hard_coded():
    raw = pd.DataFrame(
        {
            "pid": ["a", "a", "a", "b"],
            "redcap_event_name": ["intake", "visits", "visits", "intake"],
            "redcap_repeat_instrument": [None, "pain_log", "pain_log", None],
            "redcap_repeat_instance": [None, 2, 1, None],
            "bmi": [22.5, None, None, 30.1],
            "pain": [None, 3, 6, None],
            "pain_log_complete": [None, 2, 2, None],
            "intake_complete": [2, None, None, 1],
        }
    )
    flat = read_redcap(raw)  # record id defaults to the first column
    assert list(flat.columns) == [
        "pid", "redcap_event_name", "redcap_repeat_instrument", "session", "bmi", "pain",
        "pain_log_complete", "intake_complete",
    ]  # fmt: skip
    # sorted by instance within record
    assert flat["pid"].tolist() == ["a", "a", "b"]
    np.testing.assert_array_equal(flat["session"], [1, 2, np.nan])
    assert flat["pain"].iloc[:2].tolist() == [6.0, 3.0]
    assert flat["bmi"].tolist() == [22.5, 22.5, 30.1]
    assert flat.attrs["redcap"]["record_fields"] == ["bmi", "intake_complete"]
    with pytest.raises(DataValidationError, match=r"record-id column 'record_id' is not in"):
        read_redcap(raw, record_id="record_id")


def _two_instruments():
    return pd.DataFrame(
        {
            "record_id": ["r1"] * 6 + ["r2"] * 2,
            "redcap_event_name": ["base"] + ["tx"] * 5 + ["base", "tx"],
            "redcap_repeat_instrument": [None, "session", "session", "diary", "diary", "diary",
                                         None, "session"],
            "redcap_repeat_instance": [None, 1, 2, 1, 2, 3, None, 1],
            "age": [50, None, None, None, None, None, 60, None],
            "wai_1": [None, 4, 5, None, None, None, None, 3],
            "ex_done": [None, None, None, 1, 0, 1, None, None],
        }
    )  # fmt: skip


def test_several_repeating_instruments_stacked():
    flat = read_redcap(_two_instruments())
    assert len(flat) == 6  # r1: 2 sessions + 3 diaries, r2: 1 session
    assert flat["redcap_repeat_instrument"].tolist() == ["session", "session", "diary",
                                                         "diary", "diary", "session"]  # fmt: skip
    assert flat["session"].tolist() == [1, 2, 1, 2, 3, 1]
    np.testing.assert_array_equal(flat["wai_1"], [4, 5, np.nan, np.nan, np.nan, 3])
    np.testing.assert_array_equal(flat["ex_done"], [np.nan, np.nan, 1, 0, 1, np.nan])
    assert flat["age"].tolist() == [50] * 5 + [60]
    assert flat.attrs["redcap"]["repeat_fields"] == {"session": ["wai_1"], "diary": ["ex_done"]}


def test_several_repeating_instruments_merged_by_instance():
    flat = read_redcap(_two_instruments(), merge_repeats=True)
    assert "redcap_repeat_instrument" not in flat.columns
    assert flat["record_id"].tolist() == ["r1", "r1", "r1", "r2"]
    assert flat["session"].tolist() == [1, 2, 3, 1]
    np.testing.assert_array_equal(flat["wai_1"], [4, 5, np.nan, 3])
    np.testing.assert_array_equal(flat["ex_done"], [1, 0, 1, np.nan])
    assert flat["age"].tolist() == [50, 50, 50, 60]


def test_conflicting_non_repeating_values_name_record_and_field():
    recs = example_records()
    raw = build_export(recs)
    # a discharge-event copy of age that disagrees with baseline for P2 and P1
    raw["age"] = raw["age"].astype(float)
    extra = pd.DataFrame(
        {"record_id": ["P2", "P1"], "redcap_event_name": ["discharge_arm_1"] * 2,
         "age": [62.0, 45.0]}
    )  # fmt: skip
    bad = pd.concat([raw, extra], ignore_index=True)
    with pytest.raises(
        DataValidationError,
        match=r"record 'P1' has conflicting values for field 'age' across events: "
        r"44 \(baseline_arm_1\), 45 \(discharge_arm_1\); also record 'P2'",
    ):
        read_redcap(bad)
    # the same value in two events is not a conflict
    same = pd.concat([raw, extra.assign(age=[61.0, 44.0])], ignore_index=True)
    assert read_redcap(same)["age"].tolist() == [44, 44, 44, 61, 38]


def test_field_on_repeating_and_non_repeating_rows_is_an_error():
    raw = build_export(example_records())
    raw.loc[0, "wai_1"] = 4  # a session item on P1's baseline row
    with pytest.raises(
        DataValidationError,
        match=r"field 'wai_1' holds values both on rows of repeating instrument 'session' "
        r"and on non-repeating rows \(baseline_arm_1\)",
    ):
        read_redcap(raw)


def test_duplicate_and_bad_instances_and_missing_ids():
    raw = build_export(example_records())
    dup = pd.concat([raw, raw.iloc[[1]]], ignore_index=True)
    with pytest.raises(
        DataValidationError,
        match=r"record 'P1' has instance 1 of 'session' more than once \(rows 1, 8\)",
    ):
        read_redcap(dup)
    bad = raw.copy()
    bad["redcap_repeat_instance"] = bad["redcap_repeat_instance"].astype(object)
    bad.loc[2, "redcap_repeat_instance"] = "x"
    bad.loc[3, "redcap_repeat_instance"] = 0
    with pytest.raises(
        DataValidationError,
        match=r"column 'redcap_repeat_instance' rows 2, 3 have 'x', 0; repeat instances are "
        r"whole numbers >= 1",
    ):
        read_redcap(bad)
    orphan = raw.copy()
    orphan.loc[1, "redcap_repeat_instance"] = np.nan
    with pytest.raises(DataValidationError, match=r"'redcap_repeat_instance' is blank in row 1"):
        read_redcap(orphan)
    noid = raw.copy()
    noid["record_id"] = noid["record_id"].astype(object)
    noid.loc[[4, 5], "record_id"] = None
    with pytest.raises(
        DataValidationError, match=r"column 'record_id' rows 4, 5 have no record id"
    ):
        read_redcap(noid)
    with pytest.raises(DataValidationError, match="is not a REDCap export"):
        read_redcap(pd.DataFrame({"record_id": [1], "age": [3]}))


def test_classic_project_without_events_and_repeating_events():
    classic = pd.DataFrame(
        {
            "record_id": [1, 1, 2],
            "redcap_repeat_instrument": [None, "visit", None],
            "redcap_repeat_instance": [None, 1, None],
            "age": [30, None, 40],
            "score": [None, 7, None],
        }
    )
    flat = read_redcap(classic)
    assert "redcap_event_name" not in flat.columns
    np.testing.assert_array_equal(flat["session"], [1, np.nan])
    assert flat["age"].tolist() == [30, 40]
    # a repeating *event*: instance set, instrument blank
    rep_event = pd.DataFrame(
        {
            "record_id": [1, 1, 1],
            "redcap_event_name": ["baseline", "weekly", "weekly"],
            "redcap_repeat_instrument": [None, None, None],
            "redcap_repeat_instance": [None, 1, 2],
            "age": [30, None, None],
            "pain": [None, 5, 4],
        }
    )
    flat = read_redcap(rep_event)
    assert flat["session"].tolist() == [1, 2] and flat["pain"].tolist() == [5, 4]
    assert flat.attrs["redcap"]["repeating_instruments"] == ["event weekly"]


def test_dag_column_blank_strings_and_empty_fields():
    raw = build_export(example_records()).astype(object)
    raw["redcap_data_access_group"] = ["site_a"] * 5 + ["site_b"] * 3  # on every row
    raw = raw.where(raw.notna(), "")  # a DataFrame with blank strings instead of NaN
    raw["never_used"] = ""
    flat = read_redcap(raw)
    assert flat["redcap_data_access_group"].tolist() == ["site_a"] * 3 + ["site_b"] * 2
    assert flat["never_used"].isna().all()
    assert pd.to_numeric(flat["age"]).tolist() == [44, 44, 44, 61, 38]


def test_export_without_any_repeating_rows_gives_one_row_per_record():
    raw = pd.DataFrame(
        {
            "record_id": [1, 2, 2],
            "redcap_event_name": ["baseline", "baseline", "follow_up"],
            "redcap_repeat_instrument": [None, None, None],
            "redcap_repeat_instance": [None, None, None],
            "age": [30, 40, None],
            "pain": [None, None, 3],
        }
    )
    flat = read_redcap(raw)
    assert flat["record_id"].tolist() == [1, 2] and flat["session"].isna().all()
    assert flat["age"].tolist() == [30, 40]
    np.testing.assert_array_equal(flat["pain"], [np.nan, 3.0])
    assert flat.attrs["redcap"]["records_without_repeats"] == [1, 2]


def test_session_column_name_must_not_hide_a_field():
    raw = build_export(example_records()).rename(columns={"session_date": "session"})
    with pytest.raises(DataValidationError, match=r"already has a column 'session'.*session="):
        read_redcap(raw)
    flat = read_redcap(raw, session="visit")
    assert flat["visit"].iloc[:4].tolist() == [1, 2, 3, 1]
    assert flat["session"].iloc[0] == "2024-01-02"


def test_is_redcap_export():
    assert is_redcap_export(["record_id", "redcap_repeat_instrument"])
    assert not is_redcap_export(["record_id", "age"])
    assert not is_redcap_export(["redcap_event_name", "age"])


sessions = st.lists(
    st.fixed_dictionaries(
        {
            "attended": st.integers(0, 1),
            "scheduled": st.just(1),
            "wai_1": st.one_of(st.none(), st.integers(1, 5)),
            "wai_2": st.integers(1, 5),
        }
    ),
    max_size=4,
)
records = st.lists(
    st.fixed_dictionaries(
        {
            "base": st.fixed_dictionaries(
                {
                    "therapist_id": st.sampled_from(["T1", "T2", "T3"]),
                    "age": st.integers(18, 85),
                    "sex": st.sampled_from(["female", "male"]),
                    "hccq_1": st.integers(1, 7),
                }
            ),
            "sessions": sessions,
            "discharge": st.one_of(
                st.none(),
                st.fixed_dictionaries({"ears_1": st.integers(0, 4), "ears_2": st.integers(0, 4)}),
            ),
        }
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records)
def test_flat_to_export_to_flat_round_trips(recs, tmp_path_factory):
    recs = [{"id": f"R{k:02d}", **r} for k, r in enumerate(recs)]
    path = tmp_path_factory.mktemp("rc") / "export.csv"
    build_export(recs).to_csv(path, index=False)
    flat = am.read_data(path)
    assert_same_values(flat, expected_flat(recs))
    assert flat.attrs["redcap"]["records_without_repeats"] == [
        r["id"] for r in recs if not r["sessions"]
    ]


def test_shipped_example_export():
    path = resources.files("alliance_models.datasets") / "example_redcap.csv"
    assert path.is_file()  # shipped with the package (package data)
    raw = pd.read_csv(path)
    flat = am.read_data(path)
    is_session = raw["redcap_repeat_instance"].notna()
    n_without = raw.loc[~raw["record_id"].isin(raw.loc[is_session, "record_id"]), "record_id"]
    assert len(flat) == int(is_session.sum()) + n_without.nunique()
    assert flat["record_id"].nunique() == raw["record_id"].nunique()
    # baseline fields are constant within a record and equal to the baseline row
    base = raw[raw["redcap_event_name"] == "baseline_arm_1"].set_index("record_id")
    carried = flat.groupby("record_id")[["age", "therapist_id"]].agg(["nunique", "first"])
    assert (carried[("age", "nunique")] <= 1).all()
    np.testing.assert_array_equal(
        carried[("age", "first")].to_numpy(float),
        base.loc[carried.index, "age"].to_numpy(float),
    )
    # session values are those of the matching (record, instance) row
    sess = raw[is_session].set_index(["record_id", "redcap_repeat_instance"])["wai_1"]
    got = flat.dropna(subset=["session"]).set_index(["record_id", "session"])["wai_1"]
    np.testing.assert_array_equal(got.to_numpy(float), sess.loc[got.index].to_numpy(float))
