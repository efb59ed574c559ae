"""simulate_study, the shipped example export and its generator script.

Monte Carlo checks use large simulated studies and tolerances of about 4-5 standard
errors (stated per test), so they hold for any seed, not just the one used here.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.datasets import (
    EXPORT_COLUMNS,
    example_path,
    load_example,
    simulate_study,
)
from alliance_models.datasets._simulate_study import ordinal_items
from alliance_models.errors import DesignError

ROOT = Path(__file__).resolve().parents[1]
WAI = [f"wai_{i}" for i in range(1, 13)]
HCCQ = [f"hccq_{i}" for i in (1, 2, 4, 7, 10, 14)]
EARS = [f"ears_{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def big():
    """A large study (about 3,000 patients) for distributional checks."""
    return simulate_study(n_therapists=150, patients_per_therapist=20, seed=11)


def _rows(df, event):
    return df[df["redcap_event_name"] == event]


# --------------------------------------------------------------------------- shipped file


def test_example_path_and_load_example():
    path = example_path()
    assert isinstance(path, Path) and path.name == "example_redcap.csv" and path.is_file()
    assert path.stat().st_size < 500_000  # modest size
    raw = load_example()
    assert list(raw.columns) == list(EXPORT_COLUMNS)
    assert raw["record_id"].nunique() == 400
    assert _rows(raw, "baseline_arm_1")["therapist_id"].nunique() == 40
    assert am.datasets.load_example().equals(raw)  # reachable via the lazy public name


def test_shipped_file_is_reproduced_by_the_script(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_example", ROOT / "scripts/make_example_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.make(tmp_path / "example.csv")
    assert out.read_bytes() == example_path().read_bytes()


def test_shipped_file_has_the_documented_messes():
    raw = load_example()
    ses = _rows(raw, "treatment_arm_1")
    attended = ses[ses["attended"] == 1]
    partial = attended[WAI].isna().any(axis=1)
    # missing_items=0.01 of attended sessions, missing_diary=0.02, missing_age=0.01 of patients
    assert 0 < partial.sum() < 0.03 * len(attended)
    assert 0 < attended["ex_completed"].isna().sum() < 0.05 * len(attended)
    assert 0 < _rows(raw, "baseline_arm_1")["age"].isna().sum() < 0.04 * 400
    # not-attended sessions have no items and no diary
    missed = ses[ses["attended"] == 0]
    assert missed[WAI + ["ex_completed", "ex_prescribed"]].isna().all().all()


# --------------------------------------------------------------------------- layout


def test_layout_and_ranges():
    raw = simulate_study(n_therapists=5, patients_per_therapist=6, seed=3)
    assert list(raw.columns) == list(EXPORT_COLUMNS)
    base = _rows(raw, "baseline_arm_1")
    ses = _rows(raw, "treatment_arm_1")
    dis = _rows(raw, "discharge_arm_1")
    assert len(base) == 30 and base["record_id"].is_unique
    assert base[["redcap_repeat_instrument", "redcap_repeat_instance"]].isna().all().all()
    assert base[WAI + EARS + ["attended"]].isna().all().all()
    assert (ses["redcap_repeat_instrument"] == "session").all()
    # instances are 1..k within each record, in order
    for _, g in ses.groupby("record_id"):
        assert g["redcap_repeat_instance"].tolist() == list(range(1, len(g) + 1))
    assert set(ses["attended"].unique()) <= {0, 1} and (ses["scheduled"] == 1).all()
    assert (ses.loc[ses["redcap_repeat_instance"] == 1, "attended"] == 1).all()
    # WAI blank exactly when not attended (no messes by default)
    assert (ses[WAI].isna().all(axis=1) == (ses["attended"] == 0)).all()
    items = ses[WAI].stack().dropna()
    assert items.between(1, 5).all()
    assert base[HCCQ].stack().dropna().between(1, 7).all()
    assert dis[EARS].stack().dropna().between(0, 4).all()
    assert (ses["ex_completed"].dropna() <= ses["ex_prescribed"].dropna()).all()
    assert base["age"].between(18, 85).all()
    assert set(base["sex"]) <= {"female", "male"}
    # each record's therapist is constant and ids look like T01..T05
    assert set(base["therapist_id"]) <= {f"T{i:02d}" for i in range(1, 6)}
    # dates are ISO and increase within a record
    d = pd.to_datetime(ses["session_date"], format="%Y-%m-%d")
    assert (d.groupby(ses["record_id"]).diff().dropna() > pd.Timedelta(0)).all()


def test_seed_reproducible_and_different_seeds_differ():
    a = simulate_study(n_therapists=4, patients_per_therapist=5, seed=42)
    b = simulate_study(n_therapists=4, patients_per_therapist=5, seed=np.random.default_rng(42))
    c = simulate_study(n_therapists=4, patients_per_therapist=5, seed=43)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_cluster_sizes():
    raw = simulate_study(n_therapists=30, patients_per_therapist=10, seed=5)
    sizes = _rows(raw, "baseline_arm_1").groupby("therapist_id").size()
    assert sizes.sum() == 300 and sizes.min() >= 1 and sizes.nunique() > 1
    eq = simulate_study(n_therapists=6, patients_per_therapist=4, seed=5, unequal_sizes=False)
    assert (_rows(eq, "baseline_arm_1").groupby("therapist_id").size() == 4).all()
    given = simulate_study(n_therapists=3, patients_per_therapist=[1, 2, 5], seed=5)
    assert _rows(given, "baseline_arm_1").groupby("therapist_id").size().tolist() == [1, 2, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_therapists": 0}, "n_therapists must be >= 1; got 0"),
        ({"patients_per_therapist": 0}, "patients_per_therapist must be >= 1; got 0"),
        ({"patients_per_therapist": [1, 2]}, r"one positive count per therapist \(40\)"),
        ({"dropout": 1.2}, r"dropout must lie in \(0, 1\), got 1.2"),
        ({"adherence_icc": 0.0}, r"adherence_icc must lie in \(0, 1\)"),
        ({"missing_items": -0.1}, r"missing_items must lie in \[0, 1\], got -0.1"),
        ({"autonomy_alliance_corr": 1.0}, r"autonomy_alliance_corr must lie in \(-1, 1\)"),
        ({"sessions_dispersion": 0}, "sessions_dispersion must be > 0"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(DesignError, match=match):
        simulate_study(seed=1, **kwargs)


def test_ordinal_items_thresholds_closed_form():
    # latent 0, noise sd 1, cuts (-1, 1): P(1)=Phi(-1), P(2)=Phi(1)-Phi(-1), P(3)=1-Phi(1)
    from scipy.stats import norm

    x = ordinal_items(np.zeros(40_000), 1, (-1.0, 1.0), 1.0, np.random.default_rng(2))
    freq = np.bincount(x.ravel(), minlength=4)[1:] / x.size
    expected = np.array([norm.cdf(-1), norm.cdf(1) - norm.cdf(-1), 1 - norm.cdf(1)])
    se = np.sqrt(expected * (1 - expected) / x.size)
    np.testing.assert_array_less(np.abs(freq - expected), 5 * se)
    with pytest.raises(DesignError, match="thresholds must increase"):
        ordinal_items(np.zeros(2), 1, (1.0, 0.0), 1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- distributions


def test_age_distribution(big):
    age = _rows(big, "baseline_arm_1")["age"].astype(float)
    assert age.between(18, 85).all()
    # truncated N(50, 14) on [18, 85]: mean about 50.3, sd about 13.2 (closed form below)
    from scipy.stats import truncnorm

    dist = truncnorm((18 - 50) / 14, (85 - 50) / 14, loc=50, scale=14)
    se = dist.std() / np.sqrt(len(age))
    assert abs(age.mean() - dist.mean()) < 5 * se  # rounding to whole years adds < 0.01
    assert abs(age.std() - dist.std()) < 0.05 * dist.std()


def test_alliance_ceiling_and_hccq_reliability(big):
    ses = _rows(big, "treatment_arm_1")
    answers = ses[WAI].stack().dropna().astype(int)
    share = answers.value_counts(normalize=True)
    assert share[5] > 0.4 and share[5] > share[4] > share[3] > share[2]  # left-skewed
    hccq = _rows(big, "baseline_arm_1")[HCCQ].astype(float)
    cov = hccq.cov().to_numpy()
    alpha = 6 / 5 * (1 - np.trace(cov) / cov.sum())
    assert 0.88 < alpha < 0.94  # documented: about .91


def test_sessions_and_dropout(big):
    ses = _rows(big, "treatment_arm_1")
    n_pat = big["record_id"].nunique()
    completers = set(_rows(big, "discharge_arm_1")["record_id"])
    k = ses.groupby("record_id").size()
    k_done = k[k.index.isin(completers)]
    # completers' session count: 1 + NegBin(mean 7, size 4) capped at 20; mean just under 8
    assert abs(k_done.mean() - 8.0) < 0.5
    assert k.min() >= 1 and k.max() <= 20
    drop_rate = 1 - len(completers) / n_pat
    # about 15% of patients with >= 2 sessions (binomial SE about 0.007 here)
    assert 0.09 < drop_rate < 0.2
    # dropouts end with one or two no-shows
    last = ses.groupby("record_id").tail(1)
    dropped = last[~last["record_id"].isin(completers)]
    assert (dropped["attended"] == 0).all()


def test_ears_reversed_items_run_against_the_others(big):
    ears = _rows(big, "discharge_arm_1")[EARS].astype(float)
    corr = ears.corr().to_numpy()
    rev = [1, 2, 4]  # items 2, 3, 5 (0-based)
    pos = [0, 3, 5]
    assert (corr[np.ix_(rev, pos)] < -0.2).all()
    assert (corr[np.ix_(pos, pos)][np.triu_indices(3, 1)] > 0.2).all()


def test_adherence_rises_with_alliance(big):
    ses = _rows(big, "treatment_arm_1").dropna(subset=["wai_1", "ex_completed"])
    total = ses[WAI].astype(float).sum(axis=1)
    adh = ses["ex_completed"].astype(float) / ses["ex_prescribed"].astype(float)
    r = np.corrcoef(total, adh)[0, 1]
    # documented: roughly .2-.3 at the defaults (SE of r about 0.005 with ~20,000 sessions)
    assert 0.15 < r < 0.4
    att = _rows(big, "treatment_arm_1")
    assert 0.75 < att["attended"].mean() < 0.9  # about 0.87 at average covariates


def test_adherence_variance_components_match_the_documented_icc():
    # With every covariate effect off, the diary probability is constant within a patient,
    # so the logit of a patient's pooled completion (8 x 200 trials) is v_t + v_p + const
    # plus small binomial noise. One-way ANOVA over therapists (m = 20 patients each) then
    # recovers sd_t^2 = 0.05 (0.8^2 + pi^2/3) / 0.95 = 0.207 (SE about 0.025) and
    # sd_p^2 = 0.64 (plus about 0.01 binomial noise; SE about 0.015).
    from scipy.special import logit

    raw = simulate_study(
        n_therapists=200,
        patients_per_therapist=20,
        seed=8,
        unequal_sizes=False,
        alliance_effect=0,
        age_effect=0,
        autonomy_effect=0,
        alliance_x_age=0,
        alliance_x_autonomy=0,
        prescribed_per_week=200,
    )
    ses = _rows(raw, "treatment_arm_1").dropna(subset=["ex_completed"])
    pooled = ses.groupby("record_id")[["ex_completed", "ex_prescribed"]].sum()
    ther = _rows(raw, "baseline_arm_1").set_index("record_id")["therapist_id"]
    y = pd.Series(
        logit(np.clip(pooled["ex_completed"] / pooled["ex_prescribed"], 1e-3, 1 - 1e-3)),
        index=pooled.index,
    )
    grp = y.groupby(ther.loc[pooled.index].to_numpy())
    m = grp.size().mean()
    msb = m * grp.mean().var(ddof=1)
    msw = (grp.var(ddof=1) * (grp.size() - 1)).sum() / (len(y) - grp.ngroups)
    sd_t2 = (msb - msw) / m
    expected_t2 = 0.05 * (0.8**2 + np.pi**2 / 3) / 0.95
    assert abs(sd_t2 - expected_t2) < 0.1
    assert abs(msw - 0.65) < 0.06
    icc = sd_t2 / (sd_t2 + msw + np.pi**2 / 3)
    assert 0.03 < icc < 0.07
