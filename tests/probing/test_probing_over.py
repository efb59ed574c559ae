"""simple_slopes / conditional_effects: moderator values over rows or over patients.

``at="meansd"`` and ``"percentiles"`` take the moderator's distribution over the fitted
rows (sessions, the default) or, with ``over="patient"``, one value per patient, the
convention ``prepare`` centres patient-level moderators by. Expected values below are
computed by hand from the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import ModelSpecError

# 5 patients with 4, 1, 2, 3, 1 sessions; age is patient-level
AGES = {"p1": 30.0, "p2": 40.0, "p3": 50.0, "p4": 60.0, "p5": 80.0}
SESSIONS = {"p1": 4, "p2": 1, "p3": 2, "p4": 3, "p5": 1}


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    patient = [p for p, k in SESSIONS.items() for _ in range(k)]
    d = pd.DataFrame({"patient": patient, "age": [AGES[p] for p in patient]})
    d["therapist"] = np.where(d.patient.isin(["p1", "p2"]), "t1", "t2")
    d["alliance"] = rng.normal(size=len(d))
    d["mood"] = rng.normal(size=len(d))  # varies within patient
    d["y"] = d.alliance * (1 + 0.02 * d.age) + 0.3 * d.mood * d.alliance + rng.normal(
        0, 0.5, len(d))
    return d


def test_meansd_over_rows_and_over_patients_by_hand(small):
    fit = am.fit_ols("y ~ alliance * age", small)
    # sessions: (4*30 + 40 + 2*50 + 3*60 + 80) / 11 = 520 / 11
    row_mean = 520 / 11
    row_sd = np.sqrt((4 * (30 - row_mean) ** 2 + (40 - row_mean) ** 2
                      + 2 * (50 - row_mean) ** 2 + 3 * (60 - row_mean) ** 2
                      + (80 - row_mean) ** 2) / 10)
    # patients: (30 + 40 + 50 + 60 + 80) / 5 = 52, SD sqrt((22^2+12^2+2^2+8^2+28^2)/4)
    pat_mean, pat_sd = 52.0, np.sqrt(370.0)
    rows = am.simple_slopes(fit, focal="alliance", moderator="age")
    pats = am.simple_slopes(fit, focal="alliance", moderator="age", over="patient")
    np.testing.assert_allclose(rows.table["age_value"],
                               [row_mean - row_sd, row_mean, row_mean + row_sd], rtol=1e-12)
    np.testing.assert_allclose(pats.table["age_value"],
                               [pat_mean - pat_sd, pat_mean, pat_mean + pat_sd], rtol=1e-12)
    b = fit.params
    np.testing.assert_allclose(pats.table["estimate"],
                               b["alliance"] + b["alliance:age"] * pats.table["age_value"],
                               rtol=1e-12)
    # percentiles over patients: of the five ages, numpy's linear rule
    pct = am.simple_slopes(fit, focal="alliance", moderator="age", at="percentiles",
                           over="patient")
    np.testing.assert_allclose(pct.table["age_value"],
                               [30 + 0.64 * 10, 50.0, 60 + 0.36 * 20], rtol=1e-12)
    # given values are used as they are
    given = am.simple_slopes(fit, focal="alliance", moderator="age", at=[45.0],
                             over="patient")
    assert given.table["age_value"].tolist() == [45.0]


def test_mean_row_at_zero_for_prepared_patient_level_moderator(example_data):
    # prepare() centres age at the mean over patients: with over="patient" the "mean"
    # row is at age_c = 0; over sessions it is not (patients have unequal sessions)
    d = example_data
    assert d.groupby("patient").size().nunique() > 1
    fit = am.fit_ols("adherence ~ alliance * age_c", d)
    assert fit.n_dropped == 0
    pats = am.simple_slopes(fit, focal="alliance", moderator="age_c", over="patient")
    rows = am.simple_slopes(fit, focal="alliance", moderator="age_c")
    assert pats.table["age_c_value"][1] == pytest.approx(0.0, abs=1e-10)
    assert abs(rows.table["age_c_value"][1]) > 1e-3
    per_patient = d.groupby("patient")["age_c"].first()
    assert pats.table["age_c_value"][2] == pytest.approx(per_patient.std(ddof=1), rel=1e-12)


def test_over_two_columns_and_over2(small):
    fit = am.fit_ols("y ~ alliance * age + alliance * mood", small)
    a = am.simple_slopes(fit, focal="alliance", moderator="age", over="therapist:patient")
    b = am.simple_slopes(fit, focal="alliance", moderator="age", over=("therapist", "patient"))
    c = am.simple_slopes(fit, focal="alliance", moderator="age", over="patient")
    np.testing.assert_allclose(a.table["age_value"], c.table["age_value"], rtol=1e-12)
    np.testing.assert_allclose(b.table["age_value"], c.table["age_value"], rtol=1e-12)
    # a session-level second moderator stays over rows
    g = am.simple_slopes(fit, focal="alliance", moderator="age", moderator2="mood",
                         over="patient", over2="rows")
    m = small["mood"]
    expected = np.tile([m.mean() - m.std(ddof=1), m.mean(), m.mean() + m.std(ddof=1)], 1)
    np.testing.assert_allclose(np.unique(g.table["mood_value"]), np.sort(expected),
                               rtol=1e-12)
    np.testing.assert_allclose(np.unique(g.table["age_value"]),
                               np.unique(c.table["age_value"]), rtol=1e-12)


def test_conditional_effects_over_patients(small):
    fit = am.fit_ols("y ~ alliance * age", small)
    ce = am.conditional_effects(fit, focal="alliance", moderator="age", over="patient",
                                n_points=3)
    assert sorted(ce.table["age_value"].unique()) == pytest.approx(
        [52 - np.sqrt(370.0), 52, 52 + np.sqrt(370.0)], rel=1e-12)


def test_over_errors(small):
    fit = am.fit_ols("y ~ alliance * mood", small)
    with pytest.raises(ModelSpecError,
                       match=r"'mood' varies within patient 'p1' .*rows 0, 1, 2, 3.*"
                             r"over='rows'"):
        am.simple_slopes(fit, focal="alliance", moderator="mood", over="patient")
    with pytest.raises(ModelSpecError,
                       match=r"over='patinet': 'patinet' is not a column .*patient"):
        am.simple_slopes(fit, focal="alliance", moderator="mood", over="patinet")
    with pytest.raises(ModelSpecError, match=r"over=3 is not allowed; use 'rows'"):
        am.simple_slopes(fit, focal="alliance", moderator="mood", over=3)
    d = small.assign(patient=small.patient.where(small.index != 2))
    fit2 = am.fit_ols("y ~ alliance * age", d)
    with pytest.raises(ModelSpecError, match=r"column 'patient' is missing in row 2"):
        am.simple_slopes(fit2, focal="alliance", moderator="age", over="patient")
