import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import alliance_models as am
from alliance_models.planning.simulate import (
    age_moments,
    batch_arrays,
    design_matrix,
    latent_scale,
    simulate_arrays,
)

CANONICAL = ["therapist", "patient", "session", "arm", "alliance", "alliance_pm",
             "alliance_pmc", "age", "autonomy", "adherence", "age_c", "autonomy_c",
             "alliance_cwc"]


def test_canonical_shape_and_types():
    d = am.Design(therapists=6, patients_per_therapist=4, sessions=3, randomisation="patient",
                  effects={"arm": 0.3})
    df = am.simulate(d, seed=1)
    assert list(df.columns) == CANONICAL
    assert len(df) == 6 * 4 * 3
    assert df["therapist"].nunique() == 6 and df["patient"].nunique() == 24
    # patient ids are unique across therapists
    assert (df.groupby("patient")["therapist"].nunique() == 1).all()
    assert df["session"].dtype == np.int64 and df["arm"].dtype == np.int64
    assert df.groupby("patient")["session"].apply(lambda s: list(s) == [1, 2, 3]).all()
    assert df[["alliance", "age", "autonomy", "adherence"]].notna().all().all()


def test_no_arm_or_moderators_when_the_design_lacks_them():
    df = am.simulate(am.Design(therapists=5, moderators={}), seed=2)
    assert "arm" not in df and "age" not in df and "autonomy" not in df


def test_same_seed_same_data_and_seedsequence_reuse():
    d = am.Design(therapists=5, patients_per_therapist=("poisson", 4), sessions=("negbin", 5, 2),
                  dropout=0.3)
    pd.testing.assert_frame_equal(am.simulate(d, 7), am.simulate(d, 7))
    ss = np.random.SeedSequence(11)
    pd.testing.assert_frame_equal(am.simulate(d, ss), am.simulate(d, ss))
    assert not am.simulate(d, 7)["adherence"].equals(am.simulate(d, 8)["adherence"])


def test_alliance_components_and_left_skew():
    # 400 therapists x 10 patients x 10 sessions; ANOVA-type moment estimates of the three
    # variance shares; tolerances are about 4 Monte Carlo SEs of each estimate
    d = am.Design(therapists=400, patients_per_therapist=10, sessions=10, moderators={},
                  alliance_components=(0.2, 0.5, 0.3), alliance_skew=-4.0)
    sa = simulate_arrays(d, 3)
    a = sa.columns["alliance"]
    assert abs(a.mean()) < 0.06 and abs(a.var() - 1) < 0.06
    pm = pd.Series(a).groupby(sa.patient).transform("mean").to_numpy()
    within = np.var(a - pm, ddof=0) * 10 / 9  # session share
    tm = pd.Series(a).groupby(sa.therapist).mean().to_numpy()
    pmeans = pd.Series(a).groupby(sa.patient).mean().to_numpy()
    pt = np.repeat(tm, 10)
    patient_share = np.var(pmeans - pt, ddof=0) * 10 / 9 - within / 10
    therapist_share = np.var(tm, ddof=1) - patient_share / 10 - within / 100
    assert within == pytest.approx(0.3, abs=0.01)
    assert patient_share == pytest.approx(0.5, abs=0.06)  # SE about 0.014
    assert therapist_share == pytest.approx(0.2, abs=0.08)  # SE about 0.017
    assert stats.skew(a) < -0.2  # ceiling effect: left skew


def test_age_is_truncated_normal_in_years():
    d = am.Design(therapists=200, patients_per_therapist=20, sessions=1)
    sa = simulate_arrays(d, 4)
    age = sa.columns["age"]
    assert age.min() >= 18 and age.max() <= 85
    mu, sd = age_moments(d)
    ref = stats.truncnorm((18 - 50) / 14, (85 - 50) / 14, loc=50, scale=14)
    assert (mu, sd) == pytest.approx((ref.mean(), ref.std()), rel=1e-10)
    assert age.mean() == pytest.approx(mu, abs=4 * sd / math.sqrt(len(age)))
    assert stats.kstest(age, ref.cdf).pvalue > 1e-4


def test_autonomy_on_therapist_level_is_constant_within_therapist():
    d = am.Design(therapists=8, moderators={"autonomy": "therapist"})
    df = am.simulate(d, 5)
    assert (df.groupby("therapist")["autonomy"].nunique() == 1).all()
    assert df["autonomy"].nunique() == 8


def test_randomisation_balance():
    d = am.Design(therapists=(7, 9), patients_per_therapist=5, sessions=2,
                  randomisation="therapist", effects={"arm": 0.2})
    df = am.simulate(d, 6)
    per = df.groupby("therapist")["arm"].agg(["nunique", "first"])
    assert (per["nunique"] == 1).all() and per["first"].sum() == 9
    d2 = am.Design(therapists=10, patients_per_therapist=5, sessions=2,
                   randomisation="patient", effects={"arm": 0.2})
    pats = am.simulate(d2, 6).groupby("patient").agg(t=("therapist", "first"), a=("arm", "first"))
    counts = pats.groupby("t")["a"].sum()
    assert counts.isin([2, 3]).all()  # 5 patients: 2 or 3 treated per therapist


def test_patient_means_use_observed_sessions():
    d = am.Design(therapists=6, patients_per_therapist=5, sessions=6, dropout=0.5)
    df = am.simulate(d, 8)
    pm = df.groupby("patient")["alliance"].transform("mean")
    np.testing.assert_allclose(df["alliance_pm"], pm, rtol=1e-12)
    np.testing.assert_allclose(df["alliance_pmc"], df["alliance"] - pm, atol=1e-12)


def test_dropout_share_and_timing():
    d = am.Design(therapists=100, patients_per_therapist=20, sessions=8, dropout=0.3)
    df = am.simulate(d, 9)
    n = df.groupby("patient").size()
    share = (n < 8).mean()
    assert share == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / 2000))
    assert n.min() >= 1
    # uniform timing: last session of drop-outs is uniform on 1..7
    last = n[n < 8]
    assert stats.chisquare(np.bincount(last, minlength=8)[1:]).pvalue > 1e-4
    d2 = d.replace(dropout_timing=3)
    n2 = am.simulate(d2, 9).groupby("patient").size()
    assert set(n2.unique()) == {3, 8}


def test_dropout_by_arm():
    d = am.Design(therapists=100, patients_per_therapist=20, sessions=4,
                  randomisation="patient", effects={"arm": 0.2}, dropout=(0.1, 0.4))
    df = am.simulate(d, 10)
    per = df.groupby("patient").agg(arm=("arm", "first"), n=("session", "size"))
    rate = per.assign(drop=per["n"] < 4).groupby("arm")["drop"].mean()
    se = math.sqrt(0.4 * 0.6 / 1000)
    assert rate[0] == pytest.approx(0.1, abs=4 * se) and rate[1] == pytest.approx(0.4, abs=4 * se)


def test_count_distributions_have_the_requested_means():
    d = am.Design(therapists=400, patients_per_therapist=("poisson", 6),
                  sessions=("negbin", 8, 2))
    sa = simulate_arrays(d, 12)
    sizes = np.array(sa.sizes)
    assert sizes.min() >= 1
    assert sizes.mean() == pytest.approx(6, abs=4 * math.sqrt(5 / 400))
    m = np.bincount(sa.patient)
    # 1 + NB(mean 7, size 2): variance 7 + 49 / 2
    assert m.min() >= 1
    assert m.mean() == pytest.approx(8, abs=4 * math.sqrt((7 + 24.5) / len(m)))


def test_gaussian_effects_and_variance_components_are_recovered():
    # independent check: OLS on the standardised generating terms recovers the effects,
    # and the mixed model recovers the ICCs
    effects = {"alliance": 0.25, "age": -0.1, "autonomy": 0.15, "alliance:autonomy": 0.1,
               "alliance:age": 0.05}
    d = am.Design(therapists=60, patients_per_therapist=10, sessions=6, effects=effects,
                  icc_therapist=0.1, icc_patient=0.3)
    df = am.simulate(d, 13)
    mu, sd = age_moments(d)
    z = df.assign(agez=(df["age"] - mu) / sd)
    X = sm.add_constant(np.column_stack([z.alliance, z.agez, z.autonomy,
                                         z.alliance * z.autonomy, z.alliance * z.agez]))
    fit = sm.OLS(z["adherence"].to_numpy(), X).fit(cov_type="cluster",
                                                    cov_kwds={"groups": pd.factorize(
                                                        z["therapist"])[0]})
    want = np.array([0, 0.25, -0.1, 0.15, 0.1, 0.05])
    assert np.all(np.abs(fit.params - want) < 4 * fit.bse)


def _three_level_shares(x, therapist, patient, n, m):
    """ANOVA moment estimates of (therapist, patient, session) variances, balanced data."""
    s = pd.Series(x)
    pmean = s.groupby(patient).transform("mean").to_numpy()
    within = np.var(x - pmean) * m / (m - 1)
    tm = s.groupby(therapist).mean().to_numpy()
    pm = s.groupby(patient).mean().to_numpy()
    pat = np.var(pm - np.repeat(tm, n)) * n / (n - 1) - within / m
    ther = np.var(tm, ddof=1) - pat / n - within / (n * m)
    return ther, pat, within


def test_outcome_variance_components_match_the_iccs():
    d = am.Design(therapists=300, patients_per_therapist=10, sessions=6,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.1},
                  icc_therapist=0.1, icc_patient=0.3)
    sa = simulate_arrays(d, 17)
    resid = sa.columns["adherence"] - sa.eta  # the random part: u + v + e
    ther, pat, sess = _three_level_shares(resid, sa.therapist, sa.patient, 10, 6)
    assert sess == pytest.approx(0.6, abs=0.03)  # SE about 0.007
    assert pat == pytest.approx(0.3, abs=0.05)  # SE about 0.009
    assert ther == pytest.approx(0.1, abs=0.05)  # SE about 0.01


def test_simulated_data_fit_with_fit_mixed():
    d = am.Design(therapists=12, patients_per_therapist=5, sessions=4, icc_therapist=0.2,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.1})
    fit = am.fit_mixed("adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)",
                       am.simulate(d, 15))
    assert fit.n_obs == 240 and fit.converged
    assert list(fit.params.index) == ["Intercept", "alliance", "age", "autonomy",
                                      "alliance:age", "alliance:autonomy"]


def test_binomial_counts_and_logit_effect():
    # with ICCs of zero the conditional and marginal logit slopes coincide, so a plain
    # logistic GLM (statsmodels) must recover scale * beta
    d = am.Design(therapists=100, patients_per_therapist=10, sessions=4, family="binomial",
                  icc_therapist=0.0, icc_patient=0.0, moderators={}, effects={"alliance": 0.3},
                  baseline_adherence=0.7)
    df = am.simulate(d, 14)
    assert {"completed", "prescribed"} <= set(df.columns)
    assert (df["prescribed"] == 7).all() and df["completed"].between(0, 7).all()
    np.testing.assert_allclose(df["adherence"], df["completed"] / 7)
    y = np.column_stack([df["completed"], 7 - df["completed"]])
    glm = sm.GLM(y, sm.add_constant(df["alliance"].to_numpy()),
                 family=sm.families.Binomial()).fit()
    scale = latent_scale(d)
    assert scale == pytest.approx(math.pi / math.sqrt(3))
    assert abs(glm.params[1] - 0.3 * scale) < 4 * glm.bse[1]
    assert abs(glm.params[0] - math.log(0.7 / 0.3)) < 4 * glm.bse[0]


def test_simulated_data_fit_the_canonical_formula():
    d = am.Design(therapists=12, patients_per_therapist=5, sessions=4,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.1})
    df = am.simulate(d, 15)
    spec = am.parse_formula("adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)")
    frame = spec.build(df)
    assert frame.x_names == ("Intercept", "alliance", "age", "autonomy", "alliance:age",
                             "alliance:autonomy")
    assert frame.n_groups == {"therapist": 12, "therapist:patient": 60}


def test_design_matrix_matches_formulaic():
    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3, dropout=0.4,
                  randomisation="patient", effects={"arm": 0.2})
    sa = simulate_arrays(d, 16)
    df = am.simulate(d, 16)
    frame = am.parse_formula("adherence ~ alliance * age * autonomy + arm").build(df)
    X = design_matrix(sa.columns, frame.x_names, rows=sa.observed)
    np.testing.assert_allclose(X, frame.X, rtol=1e-12)
    assert design_matrix(sa.columns, ("Intercept", "C(arm)[T.1]")) is None


def test_batch_arrays_stack_replicates():
    d = am.Design(therapists=5, patients_per_therapist=3, sessions=4, dropout=0.5)
    seeds = np.random.SeedSequence(1).spawn(3)
    X, Y, outer, inner, mask, sims = batch_arrays(d, "adherence", ("Intercept", "alliance"),
                                                  seeds)
    assert X.shape == (3, 60, 2) and Y.shape == (3, 60) and mask.shape == (3, 60)
    assert outer.max() == 4 and inner.max() == 14
    one = am.simulate(d, seeds[1])
    np.testing.assert_allclose(Y[1][mask[1]], one["adherence"].to_numpy())
    with pytest.raises(am.ModelSpecError, match="fixed caseloads"):
        batch_arrays(d.replace(sessions=("poisson", 4)), "adherence", ("Intercept",), seeds)


def test_unequal_caseloads_from_a_list():
    d = am.Design(therapists=4, patients_per_therapist=[2, 5, 1, 3], sessions=2,
                  randomisation="therapist", effects={"arm": 0.2})
    df = am.simulate(d, 18)
    per = df.groupby("therapist")["patient"].nunique()
    assert per.tolist() == [2, 5, 1, 3] and len(df) == 11 * 2
    assert d.has_fixed_structure  # the same layout in every replicate
    assert sorted(df.groupby("therapist")["arm"].first()) == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "changes",
    [
        {"dropout": 0.4, "randomisation": "patient", "effects": {"arm": 0.2}},
        {"moderators": {"age": "patient", "autonomy": "therapist"},
         "patients_per_therapist": ("poisson", 4), "sessions": ("negbin", 4, 2)},
        {"family": "binomial"},
    ],
)
def test_simulate_gives_what_prepare_gives(changes):
    # am.prepare run on the simulator's core columns must reproduce the whole frame,
    # derived (centred) columns included, so one formula fits simulated and real data
    d = am.Design(therapists=8, patients_per_therapist=5, sessions=4).replace(**changes)
    sim = am.simulate(d, 19)
    core = sim.drop(columns=["alliance_pm", "alliance_pmc", "age_c", "autonomy_c",
                             "alliance_cwc"])
    kw = {"arm": "arm"} if "arm" in sim else {}
    if d.family == "binomial":
        core = core.drop(columns="adherence")
        kw["adherence"] = "diary"
    else:
        kw["adherence"] = "adherence"
    prepared, _ = am.prepare(core, **kw)
    assert sorted(prepared.columns) == sorted(sim.columns)
    pd.testing.assert_frame_equal(prepared[list(sim.columns)].reset_index(drop=True), sim,
                                  check_dtype=False, rtol=1e-12)


def test_demo_formula_with_centred_columns_fits_simulated_data():
    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.1})
    frame = am.parse_formula("adherence ~ alliance * (age_c + autonomy_c) + "
                             "(1 | therapist/patient)").build(am.simulate(d, 20))
    assert frame.x_names[-2:] == ("alliance:age_c", "alliance:autonomy_c")


@pytest.mark.parametrize("padded", [False, True])
def test_batch_arrays_carry_the_centred_columns(padded):
    d = am.Design(therapists=5, patients_per_therapist=3, sessions=4, dropout=0.3,
                  moderators={"age": "patient", "autonomy": "therapist"})
    if padded:
        d = d.replace(patients_per_therapist=("poisson", 3))
    seeds = np.random.SeedSequence(4).spawn(3)
    names = ("Intercept", "alliance_cwc", "age_c", "autonomy_c", "alliance_cwc:autonomy_c")
    X, Y, outer, inner, mask, sims = batch_arrays(d, "adherence", names, seeds, padded=padded)
    for b, ss in enumerate(seeds):
        one = am.simulate(d, ss)
        want = one[["alliance_cwc", "age_c", "autonomy_c"]].to_numpy()
        np.testing.assert_array_equal(X[b][mask[b]][:, 1:4], want)
        # centred at the mean over patients (each counted once)
        pats = one.groupby("patient")[["age", "autonomy"]].first()
        np.testing.assert_allclose(one["age_c"], one["age"] - pats["age"].mean(), atol=1e-12)
        np.testing.assert_allclose(one["autonomy_c"], one["autonomy"] - pats["autonomy"].mean(),
                                   atol=1e-12)
