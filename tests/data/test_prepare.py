"""prepare() and DataReport: hand-computed outputs, every exclusion reason, every error message."""

import numpy as np
import pandas as pd
import pytest

from alliance_models import DataReport, prepare
from alliance_models.errors import DataValidationError, MissingDataWarning

NAN = np.nan


def scored() -> pd.DataFrame:
    """Three patients, two therapists; rows 2 (not attended) and 6 (no diary) incomplete."""
    return pd.DataFrame(
        {
            "record_id": [1, 1, 1, 2, 2, 3, 3, 3, 3],
            "therapist_id": ["T1", "T1", "T1", "T1", "T1", "T2", "T2", "T2", "T2"],
            "session": [1, 2, 3, 1, 2, 1, 2, 3, 4],
            "wai_sr_total": [48.0, 52.0, NAN, 40.0, 44.0, 55.0, 50.0, 57.0, 59.0],
            "age": [30.0, 30.0, 30.0, 60.0, 60.0, 51.0, 51.0, 51.0, 51.0],
            "hccq_short_mean": [6.0, 6.0, 6.0, 4.0, 4.0, 5.5, 5.5, 5.5, 5.5],
            "attended": [1, 1, 0, 1, 1, 1, 1, 1, 1],
            "scheduled": [1, 1, 1, 1, 1, 1, 1, 1, 1],
            "ex_completed": [7, 5, NAN, 3, 4, 6, NAN, 7, 2],
            "ex_prescribed": [7, 7, NAN, 7, 7, 7, NAN, 7, 7],
        }
    )


# --------------------------------------------------------------------------- outputs


def test_session_level_columns_values_and_report():
    data, rep = prepare(scored())
    assert list(data.columns) == [
        "therapist",
        "patient",
        "session",
        "alliance",
        "alliance_pm",
        "alliance_pmc",
        "age",
        "autonomy",
        "adherence",
        "completed",
        "prescribed",
        "age_c",
        "autonomy_c",
        "alliance_cwc",
    ]
    assert data.index.tolist() == [0, 1, 3, 4, 5, 7, 8]  # input row labels kept
    assert data["patient"].tolist() == ["1", "1", "2", "2", "3", "3", "3"]
    assert data["session"].dtype == np.int64
    assert data["completed"].dtype == np.int64
    # within/between by hand: patient means 50, 42, 57
    np.testing.assert_allclose(data["alliance_pm"], [50, 50, 42, 42, 57, 57, 57], atol=1e-12)
    np.testing.assert_allclose(data["alliance_pmc"], [-2, 2, -2, 2, -2, 0, 2], atol=1e-12)
    np.testing.assert_allclose(data["alliance_cwc"], data["alliance_pmc"], atol=1e-12)
    # age centred at the mean over patients (30 + 60 + 51) / 3 = 47, not over rows (47.57)
    np.testing.assert_allclose(data["age_c"], [-17, -17, 13, 13, 4, 4, 4], atol=1e-12)
    np.testing.assert_allclose(
        data["autonomy_c"], np.array([6, 6, 4, 4, 5.5, 5.5, 5.5]) - 15.5 / 3, atol=1e-12
    )
    np.testing.assert_allclose(data["adherence"], np.array([7, 5, 3, 4, 6, 7, 2]) / 7, rtol=1e-14)
    # the report accounts for every row
    assert (rep.rows_in, rep.rows_used, rep.rows_out, rep.n_excluded) == (9, 7, 7, 2)
    assert rep.rows_in == rep.rows_out + rep.n_excluded
    assert (rep.n_patients, rep.n_therapists) == (3, 2)
    assert rep.sessions_per_patient.to_dict() == {"1": 2, "2": 2, "3": 3}
    ex = rep.to_frame()
    assert ex.to_dict("records") == [
        {"row": 2, "patient": "1", "session": 3, "column": "attended",
         "reason": "session not attended"},
        {"row": 6, "patient": "3", "session": 2, "column": "ex_completed, ex_prescribed",
         "reason": "ex_completed and ex_prescribed missing"},
    ]  # fmt: skip
    text = rep.summary()
    assert "rows in 9 = used 7 + excluded 2; rows out 7" in text
    assert "1  session not attended" in text
    assert "adherence: diary: ex_completed / ex_prescribed" in text
    assert "sessions per patient: min 2, median 2, mean 2.33, max 3" in text


def test_attendance_adherence_keeps_counts():
    data, rep = prepare(scored(), adherence="attendance")
    # row 6 has no diary but was attended: usable for attendance
    assert data.index.tolist() == [0, 1, 3, 4, 5, 6, 7, 8]
    assert {"attended", "scheduled"} <= set(data.columns)
    assert "completed" not in data.columns
    np.testing.assert_array_equal(data["adherence"], 1.0)
    assert rep.excluded["reason"].tolist() == ["session not attended"]
    assert rep.adherence == "attendance: attended / scheduled"


def test_patient_level_aggregation_by_hand():
    data, rep = prepare(scored(), adherence="attendance", level="patient")
    assert data["patient"].tolist() == ["1", "2", "3"]
    # patient 1: 2 of 3 scheduled sessions attended; alliance mean over rated sessions
    np.testing.assert_array_equal(data["attended"], [2, 2, 4])
    np.testing.assert_array_equal(data["scheduled"], [3, 2, 4])
    np.testing.assert_allclose(data["adherence"], [2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(data["alliance"], [50.0, 42.0, 221 / 4])
    np.testing.assert_array_equal(data["n_sessions"], [3, 2, 4])
    np.testing.assert_array_equal(data["n_rated"], [2, 2, 4])
    assert "alliance_pm" not in data.columns
    # at patient level, _cwc centres within therapist: T1 has patients 1, 2
    t1 = (50.0 + 42.0) / 2
    np.testing.assert_allclose(data["alliance_cwc"][:2], [50 - t1, 42 - t1])
    assert data.loc[2, "alliance_cwc"] == pytest.approx(0.0)
    np.testing.assert_allclose(data["age_c"], np.array([30, 60, 51]) - 47.0)
    # nothing excluded: the not-attended row still counts as a scheduled session
    assert (rep.rows_in, rep.rows_used, rep.rows_out, rep.n_excluded) == (9, 9, 3, 0)
    assert rep.level == "patient"


def test_patient_level_excludes_patient_without_rated_session():
    df = scored()
    df.loc[[3, 4], "wai_sr_total"] = NAN
    data, rep = prepare(df, adherence="attendance", level="patient")
    assert data["patient"].tolist() == ["1", "3"]
    assert rep.excluded["row"].tolist() == [3, 4]
    assert set(rep.excluded["reason"]) == {"patient has no session with an alliance score"}
    assert rep.rows_in == rep.rows_used + rep.n_excluded


def test_missing_moderators_and_zero_denominator_are_reported():
    df = scored()
    df.loc[3, "age"] = NAN
    df.loc[4, "hccq_short_mean"] = NAN
    df.loc[0, ["ex_completed", "ex_prescribed"]] = 0
    data, rep = prepare(df)
    reasons = dict(zip(rep.excluded["row"], rep.excluded["reason"], strict=True))
    assert reasons == {
        0: "ex_prescribed is 0: adherence undefined",
        2: "session not attended",
        3: "age missing",
        4: "hccq_short_mean missing",
        6: "ex_completed and ex_prescribed missing",
    }
    assert len(data) + rep.n_excluded == len(df)


def test_several_reasons_on_one_row_are_joined():
    df = scored()
    df.loc[5, ["age", "hccq_short_mean"]] = NAN
    _, rep = prepare(df)
    row = rep.excluded.set_index("row").loc[5]
    assert row["reason"] == "age missing; hccq_short_mean missing"
    assert row["column"] == "age, hccq_short_mean"


def test_drop_incomplete_false_keeps_rows_and_counts_them():
    data, rep = prepare(scored(), drop_incomplete=False)
    assert len(data) == 9 and rep.n_excluded == 0
    assert rep.n_incomplete_kept == 2
    assert np.isnan(data.loc[2, "alliance"]) and np.isnan(data.loc[6, "adherence"])
    assert data["completed"].dtype == "Int64"
    # patient mean ignores the missing alliance: patient 1 mean is still 50
    assert data.loc[0, "alliance_pm"] == pytest.approx(50.0)
    assert "2 incomplete row(s) kept" in rep.summary()


def test_standardize_by_hand():
    data, _ = prepare(scored(), standardize=("alliance", "age", "adherence"))
    a = data["alliance"].to_numpy()
    np.testing.assert_allclose(data["alliance_z"], (a - a.mean()) / a.std(ddof=1), rtol=1e-12)
    ages = np.array([30.0, 60.0, 51.0])  # one value per patient
    np.testing.assert_allclose(
        data["age_z"], (data["age"] - ages.mean()) / ages.std(ddof=1), rtol=1e-12
    )


def test_arm_keep_and_canonical_names():
    df = scored().rename(
        columns={"record_id": "patient", "therapist_id": "therapist", "wai_sr_total": "alliance"}
    )
    df["grp"] = [0, 0, 0, 1, 1, 0, 0, 0, 0]
    df["sex"] = ["f"] * 3 + ["m"] * 2 + ["f"] * 4
    data, rep = prepare(df, arm="grp", keep=["sex"])
    assert data["arm"].tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert data["sex"].tolist() == ["f", "f", "m", "m", "f", "f", "f"]
    assert rep.columns["patient"] == "patient" and rep.columns["arm"] == "grp"


def test_moderator_switched_off():
    df = scored().drop(columns="hccq_short_mean")
    data, _ = prepare(df, autonomy=None)
    assert "autonomy" not in data.columns and "autonomy_c" not in data.columns


def test_continuous_adherence_column():
    df = scored()
    df["ears_total"] = [20.0, 20, 20, 10, 10, NAN, NAN, NAN, NAN]
    data, rep = prepare(df, adherence="ears_total")
    np.testing.assert_array_equal(data["adherence"], [20.0, 20, 10, 10])
    assert "ears_total missing" in set(rep.excluded["reason"])
    assert rep.rows_in == rep.rows_out + rep.n_excluded


def test_scoring_reasons_are_surfaced():
    from alliance_models.instruments import score

    items = pd.DataFrame({f"wai_{i}": [4.0] * 4 for i in range(1, 13)})
    items.loc[1, ["wai_1", "wai_2", "wai_3", "wai_4", "wai_5"]] = NAN  # too many missing
    items.loc[2, "wai_7"] = NAN  # one missing: pro-rated
    items.loc[3, :] = NAN  # not attended
    base = pd.DataFrame(
        {
            "record_id": [1, 1, 1, 1],
            "therapist_id": ["T1"] * 4,
            "session": [1, 2, 3, 4],
            "age": [40.0] * 4,
            "hccq_short_mean": [5.0] * 4,
            "attended": [1, 1, 1, 0],
            "scheduled": [1] * 4,
        }
    )
    with pytest.warns(MissingDataWarning, match="WAI-SR"):
        df, srep = score(
            pd.concat([base, items], axis=1), "wai-sr", prorate=True, return_report=True
        )
    data, rep = prepare(df, adherence="attendance", scoring=srep)
    assert data.index.tolist() == [0, 2]
    reasons = dict(zip(rep.excluded["row"], rep.excluded["reason"], strict=True))
    assert reasons[3] == "session not attended"
    assert reasons[1].startswith("WAI-SR wai_sr_total:") and "items missing" in reasons[1]
    assert any("pro-rated" in note for note in rep.notes)


def test_report_rejects_counts_that_do_not_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        DataReport(
            rows_in=3,
            rows_used=1,
            rows_out=1,
            n_patients=1,
            n_therapists=1,
            sessions_per_patient=pd.Series({"a": 1}),
            excluded=pd.DataFrame(columns=["row", "patient", "session", "column", "reason"]),
        )


# --------------------------------------------------------------------------- errors


def test_missing_column_lists_available():
    with pytest.raises(
        DataValidationError,
        match=r"'age' \(age\) not found; available columns: \['record_id', 'therapist_id'",
    ):
        prepare(scored().drop(columns="age"))


def test_missing_count_column_named():
    with pytest.raises(DataValidationError, match=r"'scheduled' \(scheduled\) not found"):
        prepare(scored().drop(columns="scheduled"), adherence="attendance")


@pytest.mark.parametrize("blank", [None, "  "])
def test_blank_therapist_id(blank):
    df = scored()
    df["therapist_id"] = df["therapist_id"].astype(object)
    df.loc[3, "therapist_id"] = blank
    with pytest.raises(
        DataValidationError,
        match=r"column 'therapist_id' \(therapist id\) row 3 is blank; every row needs",
    ):
        prepare(df)


def test_blank_patient_id():
    df = scored()
    df["record_id"] = df["record_id"].astype(float)
    df.loc[[0, 4], "record_id"] = NAN
    with pytest.raises(
        DataValidationError, match=r"'record_id' \(patient id\) rows 0, 4 are blank"
    ):
        prepare(df)


@pytest.mark.parametrize(("value", "shown"), [("two", "'two'"), (0, "0"), (1.5, "1.5")])
def test_bad_session_number(value, shown):
    df = scored()
    df["session"] = df["session"].astype(object)
    df.loc[4, "session"] = value
    with pytest.raises(
        DataValidationError,
        match=rf"column 'session' \(session\) row 4 has {shown}; session numbers must be whole",
    ):
        prepare(df)


def test_blank_session():
    df = scored()
    df["session"] = df["session"].astype(float)
    df.loc[8, "session"] = NAN
    with pytest.raises(DataValidationError, match=r"'session' \(session\) row 8 is blank"):
        prepare(df)


def test_duplicated_patient_session():
    df = scored()
    df.loc[1, "session"] = 1
    with pytest.raises(
        DataValidationError,
        match=r"duplicated \(record_id, session\) at rows 0, 1: patient '1' session 1 appears",
    ):
        prepare(df)


def test_patient_with_two_therapists_when_nested():
    df = scored()
    df.loc[4, "therapist_id"] = "T2"
    with pytest.raises(
        DataValidationError,
        match=r"patient '2' is seen by therapists 'T1', 'T2' \(rows 3, 4\); with nested=True",
    ):
        prepare(df)
    data, _ = prepare(df, nested=False)  # crossed designs are allowed when asked for
    assert data.loc[4, "therapist"] == "T2"


def test_attended_greater_than_scheduled():
    df = scored()
    df.loc[5, "attended"] = 2
    with pytest.raises(
        DataValidationError,
        match=r"column 'attended' exceeds 'scheduled' in row 5 \(2 > 1\); attended must not "
        r"exceed scheduled",
    ):
        prepare(df, adherence="attendance")


def test_completed_greater_than_prescribed():
    df = scored()
    df.loc[[0, 1, 3, 4, 5, 7], "ex_completed"] = [8, 9, 8, 8, 10, 8]
    with pytest.raises(
        DataValidationError,
        match=r"column 'ex_completed' exceeds 'ex_prescribed' in rows 0, 1, 3, 4, 5 "
        r"\(and 1 more\) \(8 > 7, 9 > 7, 8 > 7, 8 > 7, 10 > 7\); ex_completed must not exceed",
    ):
        prepare(df)


def test_negative_count():
    df = scored()
    df.loc[3, "ex_completed"] = -1
    with pytest.raises(
        DataValidationError,
        match=r"column 'ex_completed' row 3 has -1; counts must be whole numbers >= 0",
    ):
        prepare(df)


def test_fractional_count():
    df = scored()
    df.loc[3, "ex_prescribed"] = 6.5
    with pytest.raises(DataValidationError, match=r"'ex_prescribed' row 3 has 6.5; counts must"):
        prepare(df)


def test_impossible_age():
    df = scored()
    df.loc[[3, 4], "age"] = [150, -2]
    with pytest.raises(
        DataValidationError,
        match=r"column 'age' \(age\) rows 3, 4 have 150, -2; allowed ages are 0-120 years",
    ):
        prepare(df)


def test_age_outside_user_bounds():
    df = scored()
    df.loc[0:2, "age"] = 17
    with pytest.raises(
        DataValidationError, match=r"rows 0, 1, 2 have 17, 17, 17; allowed ages are 18-85 years"
    ):
        prepare(df, age_range=(18, 85))


def test_text_in_numeric_column():
    df = scored()
    df["hccq_short_mean"] = df["hccq_short_mean"].astype(object)
    df.loc[7, "hccq_short_mean"] = "high"
    with pytest.raises(
        DataValidationError,
        match=r"column 'hccq_short_mean' \(autonomy support\) row 7 has 'high'; allowed: numbers",
    ):
        prepare(df)


def test_text_numbers_and_blanks_are_accepted():
    df = scored()
    df["wai_sr_total"] = ["48", "52", "", "40", "44", "55", "50", "57", "59"]
    data, rep = prepare(df)
    assert data["alliance"].dtype == float and rep.n_excluded == 2


def test_arm_must_be_binary():
    df = scored()
    df["arm"] = 2
    with pytest.raises(
        DataValidationError,
        match=r"column 'arm' \(arm\) rows 0, 1, 2, 3, 4 \(and 4 more\) have 2, 2, 2, 2, 2; "
        r"allowed arms are 0 and 1",
    ):
        prepare(df, arm="arm")


def test_arm_constant_within_patient():
    df = scored()
    df["arm"] = [0, 1, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(DataValidationError, match=r"changes within patient '1' \(rows 0, 1, 2\)"):
        prepare(df, arm="arm")


def test_unknown_centring_variable():
    with pytest.raises(DataValidationError, match=r"center names 'weight'.*allowed: \['alliance'"):
        prepare(scored(), center=("weight",))


def test_empty_and_non_frame_input():
    with pytest.raises(DataValidationError, match="no rows"):
        prepare(scored().iloc[:0])
    with pytest.raises(DataValidationError, match="needs a pandas DataFrame, got dict"):
        prepare({"a": [1]})  # type: ignore[arg-type]


def test_redcap_record_without_sessions_is_excluded_with_reason():
    from alliance_models.data.readers import read_redcap

    raw = pd.DataFrame(
        {
            "record_id": [1, 1, 1, 2],
            "redcap_event_name": ["baseline_arm_1", "treatment_arm_1", "treatment_arm_1",
                                  "baseline_arm_1"],
            "redcap_repeat_instrument": [None, "session", "session", None],
            "redcap_repeat_instance": [None, 1, 2, None],
            "therapist_id": ["T1", None, None, "T1"],
            "age": [40, None, None, 50],
            "hccq_short_mean": [5.0, None, None, 6.0],
            "wai_sr_total": [None, 50.0, 55.0, None],
            "attended": [None, 1, 1, None],
            "scheduled": [None, 1, 1, None],
        }
    )  # fmt: skip
    flat = read_redcap(raw)
    assert flat["session"].isna().sum() == 1
    data, rep = prepare(flat, adherence="attendance")
    assert data["patient"].tolist() == ["1", "1"]
    assert rep.excluded[["patient", "column", "reason"]].to_dict("records") == [
        {
            "patient": "2",
            "column": "session",
            "reason": "record has no session rows (REDCap export)",
        }
    ]
    assert rep.rows_in == rep.rows_out + rep.n_excluded


def test_patient_level_diary_names_not_attended_sessions():
    data, rep = prepare(scored(), level="patient")
    # rows 2 (not attended) and 6 (attended, no diary) are excluded from the diary sums
    reasons = dict(zip(rep.excluded["row"], rep.excluded["reason"], strict=True))
    assert reasons == {2: "session not attended", 6: "ex_completed and ex_prescribed missing"}
    np.testing.assert_array_equal(data["completed"], [12, 7, 15])
    np.testing.assert_array_equal(data["prescribed"], [14, 14, 21])
    np.testing.assert_allclose(data["adherence"], [12 / 14, 7 / 14, 15 / 21])
    # alliance still averages every rated session kept: patient 3 without row 6
    np.testing.assert_allclose(data["alliance"], [50.0, 42.0, 57.0])


def test_attendance_column_with_another_name():
    df = scored().rename(columns={"attended": "came", "scheduled": "booked"})
    data, rep = prepare(df, adherence="attendance", numerator="came", denominator="booked")
    assert rep.excluded[["row", "column", "reason"]].to_dict("records") == [
        {"row": 2, "column": "came", "reason": "session not attended"}
    ]
    assert rep.columns["attended"] == "came" and data["attended"].sum() == 8


def test_single_name_for_center_is_accepted():
    data, _ = prepare(scored(), center="age", center_within=(), standardize="alliance")
    assert "age_c" in data.columns and "autonomy_c" not in data.columns
    assert "alliance_z" in data.columns and "alliance_cwc" not in data.columns


@pytest.mark.parametrize(
    ("column", "what", "value"),
    [
        ("wai_sr_total", "alliance", np.inf),
        ("hccq_short_mean", "autonomy support", -np.inf),
        ("age", "age in years", np.inf),
        ("ex_prescribed", "prescribed count", np.inf),
    ],
)
def test_infinite_values_raise(column, what, value):
    # an infinite value would otherwise turn the patient means and centred columns into
    # inf/NaN without an exclusion reason
    df = scored()
    df.loc[4, column] = value
    with pytest.raises(
        DataValidationError,
        match=rf"column '{column}' \({what}\) row 4 has {value!r}; allowed: finite numbers",
    ):
        prepare(df)


def test_infinite_session_raises():
    df = scored()
    df["session"] = df["session"].astype(float)
    df.loc[2, "session"] = np.inf
    with pytest.raises(
        DataValidationError, match=r"column 'session' \(session\) row 2 has inf; session numbers"
    ):
        prepare(df)


def test_repeated_index_labels_raise():
    # the DataReport names excluded rows by index label: repeated labels would make the
    # account of excluded rows ambiguous
    df = pd.concat([scored().iloc[:5], scored().iloc[5:]])
    df.index = [0, 1, 2, 3, 4, 0, 1, 2, 3]
    with pytest.raises(
        DataValidationError,
        match=r"index repeats the label\(s\) 0, 1, 2, 3; .*reset_index\(drop=True\)",
    ):
        prepare(df)
    data, rep = prepare(df.reset_index(drop=True))
    assert rep.rows_in == len(data) + rep.n_excluded == 9
