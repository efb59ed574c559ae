"""End to end: read_data -> score -> prepare on the shipped export and on simulated studies."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import alliance_models as am
from alliance_models.datasets import example_path, load_example, simulate_study
from alliance_models.errors import MissingDataWarning

WAI = [f"wai_{i}" for i in range(1, 13)]


def _read_and_score(path):
    raw = am.read_data(path)
    # some forms have too many blank items to pro-rate: score() warns, prepare reports them
    with pytest.warns(MissingDataWarning, match="WAI-SR"):
        scored, wai_rep = am.score(raw, "wai-sr", items="wai_{i}", prorate=True, return_report=True)
    scored, hccq_rep = am.score(scored, "hccq-short", items="hccq_{i}", return_report=True)
    return raw, scored, [wai_rep, hccq_rep]


@pytest.fixture(scope="module")
def example():
    raw, scored, reports = _read_and_score(example_path())
    data, report = am.prepare(scored, scoring=reports)
    return raw, scored, data, report


def test_every_row_is_accounted_for(example):
    raw, scored, data, report = example
    export = load_example()
    n_session_rows = int((export["redcap_event_name"] == "treatment_arm_1").sum())
    # the reader makes one row per session form; prepare sees every one of them
    assert len(raw) == len(scored) == n_session_rows == report.rows_in
    assert report.rows_in == report.rows_out + report.n_excluded
    assert report.rows_out == len(data)
    # the used and excluded row labels partition the input exactly
    used = set(data.index)
    excluded = set(report.excluded["row"])
    assert used.isdisjoint(excluded)
    assert used | excluded == set(scored.index)
    assert (report.excluded["reason"].str.len() > 0).all()
    assert report.n_therapists == 40
    # patients absent from the output had every row excluded
    gone = set(scored["record_id"].astype(str)) - set(data["patient"])
    ex_pat = report.excluded.groupby("patient").size()
    per_pat = scored.groupby(scored["record_id"].astype(str)).size()
    for p in gone:
        assert ex_pat[p] == per_pat[p]


def test_reasons_match_the_raw_export(example):
    _, scored, _, report = example
    ex = report.excluded.set_index("row")
    not_attended = scored.index[scored["attended"] == 0]
    # every not-attended session is excluded, and its reason says so first
    assert ex.loc[not_attended, "reason"].str.startswith("session not attended").all()
    # rows with a few blank items are pro-rated and kept; too many blanks are excluded
    # with the scoring reason
    blanks = scored[WAI].isna().sum(axis=1)
    too_many = scored.index[(scored["attended"] == 1) & (blanks >= 4)]
    assert len(too_many) > 0
    assert ex.loc[too_many, "reason"].str.contains("items missing").all()
    no_age = scored.index[scored["age"].isna() & (scored["attended"] == 1)]
    assert len(no_age) > 0
    assert ex.loc[no_age, "reason"].str.contains("age missing").all()
    no_diary = scored.index[scored["ex_completed"].isna() & (scored["attended"] == 1)]
    assert len(no_diary) > 0
    assert ex.loc[no_diary, "reason"].str.contains("ex_completed and ex_prescribed missing").all()
    text = report.summary()
    assert "session not attended" in text and "WAI-SR" in text


def test_prepared_values_against_independent_computation(example):
    _, scored, data, _ = example
    src = scored.loc[data.index]
    complete = src[WAI].notna().all(axis=1)
    # alliance: WAI-SR total = sum of the 12 items (no reversed items)
    np.testing.assert_allclose(
        data.loc[complete, "alliance"], src.loc[complete, WAI].sum(axis=1), rtol=0, atol=1e-12
    )
    hccq = src[[f"hccq_{i}" for i in (1, 2, 4, 7, 10, 14)]].mean(axis=1)
    np.testing.assert_allclose(data["autonomy"], hccq, rtol=1e-12)
    np.testing.assert_allclose(
        data["adherence"], src["ex_completed"] / src["ex_prescribed"], rtol=1e-12
    )
    pm = data.groupby("patient")["alliance"].transform("mean")
    np.testing.assert_allclose(data["alliance_pm"], pm, rtol=1e-12)
    np.testing.assert_allclose(data["alliance_pmc"], data["alliance"] - pm, atol=1e-10)
    ages = data.groupby("patient")["age"].first()
    np.testing.assert_allclose(data["age_c"], data["age"] - ages.mean(), atol=1e-10)
    assert data["session"].dtype == np.int64 and data["completed"].dtype == np.int64
    assert data["therapist"].str.match(r"^T\d\d$").all()


def test_patient_level_attendance_pipeline(example):
    _, scored, _, _ = example
    data, report = am.prepare(scored, adherence="attendance", level="patient")
    assert report.rows_in == report.rows_used + report.n_excluded
    assert report.rows_out == len(data) == data["patient"].nunique()
    used = scored.drop(index=report.excluded["row"])
    totals = used.groupby(used["record_id"].astype(str))[["attended", "scheduled"]].sum()
    totals = totals.loc[data["patient"]]
    np.testing.assert_array_equal(data["attended"], totals["attended"])
    np.testing.assert_array_equal(data["scheduled"], totals["scheduled"])
    assert (data["attended"] <= data["scheduled"]).all()


def test_simulated_effect_signs_are_recovered(tmp_path):
    # a large study with clear moderation, through the real pipeline, fitted by OLS with
    # therapist-clustered SEs (an independent statsmodels fit, not the package's)
    raw = simulate_study(
        n_therapists=60,
        patients_per_therapist=15,
        seed=2024,
        alliance_x_age=-0.4,
        alliance_x_autonomy=0.4,
    )
    path = tmp_path / "study.csv"
    raw.to_csv(path, index=False)
    scored = am.score(am.read_data(path), "wai-sr", items="wai_{i}")
    scored = am.score(scored, "hccq-short", items="hccq_{i}")
    data, report = am.prepare(scored, standardize=("alliance", "age", "autonomy"))
    assert report.rows_in == report.rows_out + report.n_excluded
    X = pd.DataFrame(
        {
            "const": 1.0,
            "alliance": data["alliance_z"],
            "age": data["age_z"],
            "autonomy": data["autonomy_z"],
            "alliance:age": data["alliance_z"] * data["age_z"],
            "alliance:autonomy": data["alliance_z"] * data["autonomy_z"],
        }
    )
    groups = pd.factorize(data["therapist"])[0]
    fit = sm.OLS(data["adherence"].to_numpy(), X).fit(
        cov_type="cluster", cov_kwds={"groups": groups}
    )
    z = fit.params / fit.bse
    assert z["alliance"] > 3  # simulated +0.4 per SD (logit)
    assert z["autonomy"] > 2  # +0.2
    assert z["alliance:age"] < -3  # -0.4
    assert z["alliance:autonomy"] > 3  # +0.4
