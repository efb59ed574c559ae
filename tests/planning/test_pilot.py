"""Design.from_fit / Design.from_data: planning from pilot data (planning/pilot.py).

Recovery: pilots are simulated with the package's simulator from a known Design, fitted
with fit_mixed, and the design read back. Each estimate is compared with the truth in
units of its sampling error, over several seeds:

* effects: the fit's standard error (as stated in the provenance), |z| < 5 per seed;
* ICCs and alliance shares: the large-sample SE of balanced nested-ANOVA variance
  components, ``SE(s2_t) ~ sqrt(2 / (T - 1)) (s2_t + s2_p / n + s2_e / (n m))`` and
  ``SE(s2_p) ~ sqrt(2 / (T (n - 1))) (s2_p + s2_e / m)`` over the total, |z| < 5;
* dropout share: the binomial SE ``sqrt(p (1 - p) / P)``, |z| < 5;
* alliance skewness (the design's implied skewness): ``sqrt(6 / P)``, P patients (the
  patient part dominates; rows within a patient are dependent), |z| < 5;
* age mean and SD: ``sd / sqrt(P)`` and ``sd / sqrt(2 P)``, |z| < 5.
The slow test repeats this over 24 seeds and also bounds the mean z (bias) by 4 / sqrt(24).
"""

from __future__ import annotations

import doctest
import math
import re
import warnings

import numpy as np
import pytest

import alliance_models as am
from alliance_models.cli.power_file import design_from_toml
from alliance_models.errors import AllianceModelsWarning, DesignError, SingularFitWarning
from alliance_models.planning import pilot as pilot_mod
from alliance_models.planning.simulate import age_moments

TRUE = am.Design(
    therapists=60, patients_per_therapist=8, sessions=6, randomisation="patient",
    icc_therapist=0.08, icc_patient=0.30, alliance_components=(0.2, 0.5, 0.3),
    alliance_skew=-4.0, dropout=0.15,
    effects={"alliance": 0.25, "arm": 0.3, "age": -0.1, "alliance:age": 0.1,
             "alliance:autonomy": 0.08},
)
FORMULA = "adherence ~ alliance * (age + autonomy) + arm + (1 | therapist/patient)"
Z_MAX = 5.0


def _implied_skew(d: am.Design) -> float:
    """Standardised skewness of the simulator's alliance for design ``d``."""
    delta = d.alliance_skew / math.sqrt(1 + d.alliance_skew**2)
    b = delta * math.sqrt(2 / math.pi)
    g = (4 - math.pi) / 2 * b**3 / (1 - b * b) ** 1.5
    _, c_p, c_s = d.alliance_components
    return g * (c_p**1.5 + c_s**1.5)


def _vc_se(d: am.Design, share_t: float, share_p: float) -> tuple[float, float]:
    """Approximate SEs of the therapist and patient shares (nested ANOVA, balanced)."""
    T, n, m = d.n_therapists, d.patients_per_therapist, d.sessions
    s_e = 1 - share_t - share_p
    se_t = math.sqrt(2 / (T - 1)) * (share_t + share_p / n + s_e / (n * m))
    se_p = math.sqrt(2 / (T * (n - 1))) * (share_p + s_e / m)
    return se_t, se_p


def _effect_se(design: am.Design, term: str) -> float:
    text = design.provenance[f"effects[{term!r}]"]
    return float(re.search(r"(?:SE|SD) ([0-9.e+-]+)\)", text).group(1))


def _z_scores(est: am.Design, truth: am.Design) -> dict[str, float]:
    n_pat = truth.n_therapists * truth.patients_per_therapist
    z = {}
    for term, beta in truth.effects.items():
        z[f"effects[{term}]"] = (est.effects[term] - beta) / _effect_se(est, term)
    se_t, se_p = _vc_se(truth, truth.icc_therapist, truth.icc_patient)
    z["icc_therapist"] = (est.icc_therapist - truth.icc_therapist) / se_t
    z["icc_patient"] = (est.icc_patient - truth.icc_patient) / se_p
    c_t, c_p, _ = truth.alliance_components
    se_t, se_p = _vc_se(truth, c_t, c_p)
    z["alliance_t"] = (est.alliance_components[0] - c_t) / se_t
    z["alliance_p"] = (est.alliance_components[1] - c_p) / se_p
    p = truth.dropout
    z["dropout"] = (est.dropout - p) / math.sqrt(p * (1 - p) / n_pat)
    z["skew"] = (_implied_skew(est) - _implied_skew(truth)) / math.sqrt(6 / n_pat)
    (m0, s0), (m1, s1) = age_moments(truth), age_moments(est)
    z["age_mean"] = (m1 - m0) / (s0 / math.sqrt(n_pat))
    z["age_sd"] = (s1 - s0) / (s0 / math.sqrt(2 * n_pat))
    return z


def _recover(seed: int, truth: am.Design = TRUE) -> am.Design:
    pilot = am.simulate(truth, seed=seed)
    return am.Design.from_fit(am.fit_mixed(FORMULA, pilot))


def _check_layout(est: am.Design) -> None:
    assert est.therapists == TRUE.therapists
    assert est.patients_per_therapist == TRUE.patients_per_therapist
    assert est.sessions == TRUE.sessions
    assert est.randomisation == "patient"
    assert dict(est.moderators) == {"age": "patient", "autonomy": "patient"}
    assert est.family == "gaussian"
    lo, hi = est.age_distribution[2:]
    assert 18 <= lo < 25 and 78 < hi <= 85  # the observed range within the true one
    assert set(est.effects) == set(TRUE.allowed_terms()) - {
        "arm:age", "arm:autonomy", "alliance:arm", "age:autonomy", "alliance:arm:age",
        "alliance:arm:autonomy", "alliance:age:autonomy", "arm:age:autonomy",
        "alliance:arm:age:autonomy"}


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_from_fit_recovers_the_pilot_within_its_sampling_error(seed):
    est = _recover(seed)
    _check_layout(est)
    z = _z_scores(est, TRUE)
    bad = {k: round(v, 2) for k, v in z.items() if abs(v) > Z_MAX}
    assert not bad, bad
    # terms the pilot's model has but the truth lacks are estimated near 0
    assert abs(est.effects["autonomy"]) < Z_MAX * _effect_se(est, "autonomy")


@pytest.mark.slow
def test_from_fit_recovery_is_unbiased_over_many_seeds():
    zs = [_z_scores(_recover(seed), TRUE) for seed in range(100, 124)]
    for key in zs[0]:
        vals = np.array([z[key] for z in zs])
        assert np.all(np.abs(vals) < Z_MAX), (key, vals.round(2))
        assert abs(vals.mean()) < 4 / math.sqrt(len(vals)), (key, vals.mean())


def test_from_fit_maps_centred_and_split_alliance_columns_to_the_same_design():
    pilot = am.simulate(TRUE, seed=5)
    raw = am.Design.from_fit(am.fit_mixed(FORMULA, pilot))
    # the same model in centred moderators and standardised alliance: the same design
    z = pilot.assign(alliance_z=(pilot.alliance - pilot.alliance.mean())
                     / pilot.alliance.std(ddof=1))
    cen = am.Design.from_fit(am.fit_mixed(
        "adherence ~ alliance_z * (age_c + autonomy_c) + arm + (1 | therapist/patient)", z))
    for term, val in raw.effects.items():
        assert cen.effects[term] == pytest.approx(val, abs=2e-4), term
    assert cen.icc_therapist == pytest.approx(raw.icc_therapist, abs=1e-4)
    # within- and between-patient slopes: one alliance slope, both stated
    split = am.Design.from_fit(am.fit_mixed(
        "adherence ~ alliance_pm + alliance_pmc + arm + (1 | therapist/patient)", pilot))
    text = split.provenance["effects['alliance']"]
    assert "within-patient slope" in text and "between-patient slope" in text
    assert abs(split.effects["alliance"] - 0.25) < Z_MAX * _effect_se(split, "alliance")


SLOPES = am.Design(therapists=60, patients_per_therapist=8, sessions=6, icc_therapist=0.1,
                   moderators={}, effects={"alliance": 0.25}, alliance_slope_sd=0.15,
                   alliance_slope_correlation=0.3)


def test_from_fit_maps_a_therapist_random_slope_of_alliance():
    # sampling SDs over 30 seeds of this design (measured): slope SD 0.040, correlation
    # 0.28; the mean of 6 seeds must lie within 4 of its SEs (SD / sqrt(6))
    est = []
    for seed in range(6):
        pilot = am.simulate(SLOPES, seed=seed)
        if seed == 0:  # the slope on raw (shifted, scaled) alliance: the same design
            fit = am.fit_mixed("adherence ~ alliance + (1 + alliance | therapist) + "
                               "(1 | patient)", pilot.assign(alliance=2 * pilot.alliance + 3))
            shifted = am.Design.from_fit(fit)
        fit = am.fit_mixed("adherence ~ alliance + (1 + alliance | therapist) + (1 | patient)",
                           pilot)
        d = am.Design.from_fit(fit)
        est.append((d.alliance_slope_sd, d.alliance_slope_correlation))
        if seed == 0:
            assert shifted.alliance_slope_sd == pytest.approx(d.alliance_slope_sd, abs=2e-4)
            assert shifted.alliance_slope_correlation == pytest.approx(
                d.alliance_slope_correlation, abs=2e-3)
            assert shifted.icc_therapist == pytest.approx(d.icc_therapist, abs=2e-4)
            assert "random slope of alliance by therapist" in d.provenance["alliance_slope_sd"]
    sd, rho = np.mean(est, axis=0)
    assert abs(sd - 0.15) < 4 * 0.040 / math.sqrt(6)
    assert abs(rho - 0.3) < 4 * 0.28 / math.sqrt(6)


def test_from_fit_binomial_glmm_gives_latent_scale_iccs_and_effects():
    truth = am.Design(therapists=40, patients_per_therapist=8, sessions=6, family="binomial",
                      icc_therapist=0.08, icc_patient=0.2, baseline_adherence=0.7,
                      moderators={"age": "patient"},
                      effects={"alliance": 0.25, "alliance:age": 0.1})
    pilot = am.simulate(truth, seed=3)
    fit = am.fit_mixed("completed ~ alliance * age_c + (1 | therapist/patient)", pilot,
                       family="binomial", trials="prescribed")
    est = am.Design.from_fit(fit)
    assert (est.family, est.counts, est.trials) == ("binomial", "diary", 7)
    for term, beta in truth.effects.items():
        assert abs(est.effects[term] - beta) < Z_MAX * _effect_se(est, term), term
    se_t, se_p = _vc_se(truth, truth.icc_therapist, truth.icc_patient)
    assert abs(est.icc_therapist - truth.icc_therapist) < Z_MAX * se_t
    assert abs(est.icc_patient - truth.icc_patient) < Z_MAX * se_p
    # the intercept at the predictors' means is logit(baseline) (SE about 0.1 on logit)
    assert abs(np.log(est.baseline_adherence / (1 - est.baseline_adherence))
               - np.log(0.7 / 0.3)) < 0.5
    assert "latent logistic variance" in est.provenance["icc_therapist"]


def test_round_trip_estimated_design_runs_a_power_analysis():
    pilot = am.simulate(TRUE.replace(therapists=20), seed=8)
    est = am.Design.from_fit(am.fit_mixed(FORMULA, pilot), therapists=30,
                             effects={"alliance": 0.25, "alliance:age": 0.1})
    assert est.provenance["therapists"] == "given"
    assert est.provenance["effects"] == "given"
    assert not any(k.startswith("effects[") for k in est.provenance)
    res = am.power(est, FORMULA, test="alliance:age", n_sims=20, seed=1, n_jobs=1)
    assert res.n_sims == 20 and 0 <= res.power <= 1
    assert res.design == est
    # the power report names the design in one line and points at its provenance
    text = res.summary()
    assert "where the values came from: design.provenance" in text
    assert "provenance:" not in text


def test_provenance_lists_every_estimated_field_and_keeps_equality():
    pilot = am.simulate(TRUE.replace(therapists=20), seed=9)
    est = am.Design.from_fit(am.fit_mixed(FORMULA, pilot))
    estimated = {"therapists", "patients_per_therapist", "sessions", "randomisation",
                 "icc_therapist", "icc_patient", "alliance_components", "alliance_skew",
                 "moderators", "effects", "family", "dropout", "dropout_timing",
                 "age_distribution", "alliance_slope_sd"}
    assert estimated <= set(est.provenance)
    assert {f"effects[{t!r}]" for t in est.effects} <= set(est.provenance)
    assert "(REML)" in est.provenance["icc_therapist"]
    assert "a pilot's effect sizes are noisy" in est.provenance["effects['alliance']"]
    text = est.describe()
    assert "provenance:" in text and "  icc_patient: icc_patient = " in text
    # provenance is a record: equal parameters are equal designs, with the same hash,
    # the same to_dict (power-run fingerprints) and TOML round trip
    plain = am.Design(**est.to_dict())
    assert plain == est and hash(plain) == hash(est)
    assert "provenance" not in est.to_dict()
    toml_like = {k: list(v) if isinstance(v, tuple) else v for k, v in est.to_dict().items()}
    assert design_from_toml(toml_like) == est
    # replace marks the fields it changes as given
    more = est.replace(therapists=40, icc_therapist=0.05)
    assert more.provenance["therapists"] == more.provenance["icc_therapist"] == "given"
    assert more.provenance["icc_patient"] == est.provenance["icc_patient"]
    with pytest.raises(TypeError):
        est.provenance["therapists"] = "x"  # read-only


def test_caseload_and_session_distributions_and_observed_list():
    truth = am.Design(therapists=30, patients_per_therapist=("poisson", 6),
                      sessions=("negbin", 6, 3), moderators={}, effects={"alliance": 0.2})
    pilot = am.simulate(truth, seed=4)
    fit = am.fit_mixed("adherence ~ alliance + (1 | therapist/patient)", pilot)
    est = am.Design.from_fit(fit)
    sizes = pilot.groupby("therapist").patient.nunique().to_numpy()
    kind, mean = est.patients_per_therapist[:2]
    assert kind in ("poisson", "negbin") and mean == pytest.approx(sizes.mean(), abs=1e-3)
    # sessions: fewer than half of the patients have the most sessions -> a distribution
    m = pilot.groupby("patient").size().to_numpy()
    assert est.sessions[0] == "negbin" and est.sessions[1] == pytest.approx(m.mean(), abs=1e-3)
    assert est.dropout == 0.0 and "not separable" in est.provenance["dropout"]
    listed = am.Design.from_fit(fit, caseloads="observed")
    assert sorted(listed.patients_per_therapist) == sorted(sizes.tolist())
    assert listed.provenance["patients_per_therapist"] == "list of 30 observed caseloads"


def test_therapist_level_autonomy_and_therapist_randomisation():
    truth = am.Design(therapists=24, patients_per_therapist=5, sessions=4,
                      randomisation="therapist", moderators={"autonomy": "therapist"},
                      effects={"arm": 0.3, "alliance:autonomy": 0.1})
    est = am.Design.from_data(am.simulate(truth, seed=6))
    assert est.randomisation == "therapist"
    assert dict(est.moderators) == {"autonomy": "therapist"}
    assert "12 control, 12 treatment" in est.provenance["randomisation"]


def test_from_data_on_the_shipped_example_gives_sensible_values():
    raw = am.read_data(am.datasets.example_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AllianceModelsWarning)  # the example's messes
        scored = am.score(am.score(raw, "wai-sr", items="wai_{i}"), "hccq-short",
                          items="hccq_{i}")
        data, _ = am.prepare(scored)
    est = am.Design.from_data(data)
    # the example: 40 therapists, 400 patients (unequal caseloads, mean 10), diary counts
    assert est.n_therapists == 40 and est.family == "binomial" and est.counts == "diary"
    assert est.patients_per_therapist[0] in ("poisson", "negbin")
    assert 8 < est.patients_per_therapist[1] < 12
    assert 0 < est.icc_therapist < 0.3 and 0 < est.icc_patient < 0.6
    assert 0 < est.baseline_adherence < 1 and est.trials == 7
    lo, hi = est.age_distribution[2:]
    assert 18 <= lo < hi <= 85
    assert est.alliance_skew < 0  # WAI ceiling: left skew
    assert set(est.effects) == {"alliance", "age", "autonomy", "alliance:age",
                                "alliance:autonomy"}
    assert est.effects["alliance"] > 0
    assert "alliance_z * (age_z + autonomy_z)" in est.provenance["effects"]
    # effects and ICCs given: no model is fitted, they are used as given
    given = am.Design.from_data(data, effects={"alliance": 0.2}, icc_therapist=0.05,
                                icc_patient=0.3, baseline_adherence=0.6)
    assert dict(given.effects) == {"alliance": 0.2}
    assert given.provenance["icc_patient"] == "given"


def test_unknown_terms_and_random_parts_are_dropped_with_a_warning_naming_them():
    pilot = am.simulate(TRUE.replace(therapists=20), seed=2)
    fit = am.fit_mixed("adherence ~ alliance + session + (1 | therapist/patient)", pilot)
    with pytest.warns(AllianceModelsWarning, match=r"dropped: session \("):
        est = am.Design.from_fit(fit)
    assert set(est.effects) == {"alliance"}
    with warnings.catch_warnings():  # no slope variance in the truth: may be singular
        warnings.simplefilter("ignore", SingularFitWarning)
        fit = am.fit_mixed("adherence ~ alliance + (1 + age_c | therapist) + (1 | patient)",
                           pilot)
    with pytest.warns(AllianceModelsWarning, match=r"random slope \(age_c \| therapist\)"):
        est = am.Design.from_fit(fit)
    assert est.alliance_slope_sd == 0


def test_errors_name_the_column_and_value():
    pilot = am.simulate(TRUE.replace(therapists=10), seed=1)
    bad = pilot.assign(arm=pilot.arm.replace({1: 2}))
    with pytest.raises(DesignError, match=r"column 'arm' must be 0/1.*found 2"):
        am.Design.from_data(bad)
    bad = pilot.copy()
    bad.loc[bad.index[1], "age"] = 99.0
    with pytest.raises(DesignError, match=r"column 'age' must be constant within patient.*"
                                          r"patient 'P01' has 2 values"):
        am.Design.from_data(bad)
    bad = pilot.copy()
    bad.loc[bad.patient == "P03", "age"] = np.nan
    with pytest.raises(DesignError, match=r"column 'age' must be a finite number for every "
                                          r"patient; 1 patient\(s\) .*\('P03', e.g. nan\)"):
        am.Design.from_data(bad)
    with pytest.raises(DesignError, match=r"needs the column\(s\) 'therapist'"):
        am.Design.from_data(pilot.drop(columns="therapist"))
    fit = am.fit_mixed("adherence ~ alliance + alliance_pmc + (1 | therapist/patient)", pilot)
    with pytest.raises(DesignError, match="both as 'alliance' and as alliance_pm"):
        am.Design.from_fit(fit)
    with pytest.raises(DesignError, match="fit of am.fit_mixed"):
        am.Design.from_fit(object())
    with pytest.raises(DesignError, match="family='binomial' differs from the fit's"):
        am.Design.from_fit(am.fit_mixed(FORMULA, pilot), family="binomial")
    with pytest.raises(DesignError, match="caseloads must be 'auto' or 'observed'"):
        am.Design.from_data(pilot, caseloads="list")


def test_skewness_inversion_and_truncated_normal_match():
    for shape in (-8.0, -4.0, -1.0, 0.5, 3.0):
        delta = shape / math.sqrt(1 + shape**2)
        assert pilot_mod._sn_shape(pilot_mod._sn_skewness(delta)) == pytest.approx(
            shape, rel=1e-6)
    d = am.Design(age_distribution=(55.0, 20.0, 18.0, 85.0))
    m, s = age_moments(d)
    mu, sig = pilot_mod._truncnorm_for(m, s, 18.0, 85.0)
    assert (mu, sig) == pytest.approx((55.0, 20.0), rel=1e-6)


def test_docstring_examples_run():
    from alliance_models.planning import design

    for mod in (pilot_mod, design):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0


@pytest.mark.slow
def test_from_fit_of_fit_bayes_uses_posterior_means_close_to_reml():
    truth = TRUE.replace(therapists=30)
    pilot = am.simulate(truth, seed=21)
    bfit = am.fit_bayes(FORMULA, pilot, draws=1000, tune=1000, chains=2, seed=1)
    est = am.Design.from_fit(bfit)
    reml = am.Design.from_fit(am.fit_mixed(FORMULA, pilot))
    assert "posterior mean" in est.provenance["icc_therapist"]
    assert "posterior mean, SD" in est.provenance["effects['alliance']"]
    # the same layout and predictors; posterior means within 2 posterior SDs of REML
    assert est.to_dict() | {"icc_therapist": 0, "icc_patient": 0, "effects": {}} == (
        reml.to_dict() | {"icc_therapist": 0, "icc_patient": 0, "effects": {}})
    for term, val in reml.effects.items():
        assert abs(est.effects[term] - val) < 2 * _effect_se(est, term), term
    sd_t = float(re.search(r"posterior SD ([0-9.e+-]+)", est.provenance["icc_therapist"])[1])
    assert abs(est.icc_therapist - reml.icc_therapist) < 2 * sd_t + 0.02
