"""fit_gee against R geepack, statsmodels called directly and the binomial GLM.

Reference CSVs come from tests/r/ols_gee_reference.R (R 4.2, geepack 1.3.9; lme4's cbpp).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import alliance_models as am
from alliance_models.errors import (
    ConvergenceWarning,
    DataValidationError,
    FewClustersWarning,
    MissingDataWarning,
    ModelSpecError,
)
from alliance_models.models.gee import GEEFit
from alliance_models.models.interface import FixedEffectsFit

R_DIR = Path(__file__).parent / "r"


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "gee_reference.csv")


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "gee_sim_data.csv")


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "cbpp_data.csv")


def _r(ref, case):
    return ref[ref.case == case].reset_index(drop=True)


def test_protocol_and_z_tests(sim):
    fit = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled")
    assert isinstance(fit, GEEFit) and isinstance(fit, FixedEffectsFit)
    assert fit.contrast_df(np.ones(4)) == np.inf
    assert fit.fixed_draws is None
    assert fit.n_clusters == 40 and fit.groups == "patient"
    assert "z" in fit.to_frame().columns


@pytest.mark.parametrize("case,formula,data_name,kw", [
    ("cbpp_independence", "incidence ~ C(period)", "cbpp", {"trials": "size", "groups": "herd"}),
    ("sim_independence", "attended ~ alliance * age", "sim", {"trials": "scheduled"}),
])
def test_independence_matches_geepack(request, ref, case, formula, data_name, kw):
    # same estimating equations and the same sandwich: agreement to rounding
    fit = am.fit_gee(formula, request.getfixturevalue(data_name),
                     cov_struct="independence", **kw)
    r = _r(ref, case)
    np.testing.assert_allclose(fit.params.to_numpy(), r["estimate"], rtol=1e-7)
    np.testing.assert_allclose(fit.to_frame()["se"].to_numpy(), r["se"], rtol=1e-7)


@pytest.mark.parametrize("case,formula,kw", [
    ("sim_exchangeable", "attended ~ alliance * age", {"trials": "scheduled"}),
    ("sim_binary_exchangeable", "any_missed ~ alliance", {}),
    ("sim_gaussian_exchangeable", "attended ~ alliance * age", {"family": "gaussian"}),
])
def test_exchangeable_matches_geepack(ref, sim, case, formula, kw):
    # equal trials within patient (or none): same estimating equations and the same
    # moment estimator of rho; agreement limited by the solvers' convergence (~1e-7)
    d = sim.assign(any_missed=(sim.attended < sim.scheduled).astype(int))
    fit = am.fit_gee(formula, d, cov_struct="exchangeable", **kw)
    r = _r(ref, case)
    np.testing.assert_allclose(fit.params.to_numpy(), r["estimate"], rtol=1e-6)
    np.testing.assert_allclose(fit.to_frame()["se"].to_numpy(), r["se"], rtol=1e-6)
    assert fit.working_correlation == pytest.approx(float(r["alpha"][0]), rel=1e-6)


def test_varying_trials_match_geepack_defaults(ref, cbpp):
    # trials varying within herd: geepack's estimator (the default) reproduces this
    # older geepack reference (geepack's default tolerance, hence 1e-5); the unweighted
    # moment estimator gives another rho (0.028 vs 0.041) and fits ~1% away
    r = _r(ref, "cbpp_exchangeable")
    fit = am.fit_gee("incidence ~ C(period)", cbpp, trials="size", groups="herd")
    np.testing.assert_allclose(fit.params.to_numpy(), r["estimate"], rtol=1e-5)
    np.testing.assert_allclose(fit.to_frame()["se"].to_numpy(), r["se"], rtol=1e-5)
    assert fit.working_correlation == pytest.approx(float(r["alpha"][0]), rel=1e-4)
    mom = am.fit_gee("incidence ~ C(period)", cbpp, trials="size", groups="herd",
                     cor_estimator="moment")
    assert abs(mom.working_correlation / float(r["alpha"][0]) - 1) > 0.2
    assert np.max(np.abs(mom.params.to_numpy() / r["estimate"] - 1)) > 1e-3


def test_independence_matches_statsmodels_called_directly(sim):
    fit = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled",
                     cov_struct="independence")
    X = np.column_stack([np.ones(len(sim)), sim.alliance, sim.age, sim.alliance * sim.age])
    res = sm.GEE(sim.attended / sim.scheduled, X, groups=sim.patient,
                 family=sm.families.Binomial(), cov_struct=sm.cov_struct.Independence(),
                 weights=sim.scheduled).fit(maxiter=100)
    np.testing.assert_allclose(fit.params.to_numpy(), res.params, rtol=1e-8)
    np.testing.assert_allclose(fit.cov_params().to_numpy(), res.cov_robust, rtol=1e-8)


def test_independence_equals_binomial_glm_point_estimates(cbpp):
    fit = am.fit_gee("incidence ~ C(period)", cbpp, trials="size", groups="herd",
                     cov_struct="independence")
    endog = np.column_stack([cbpp["incidence"], cbpp["size"] - cbpp["incidence"]])
    X = fit.frame.X
    glm = sm.GLM(endog, X, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(fit.params.to_numpy(), glm.params, rtol=1e-8)


def test_independence_equals_closed_form_logits():
    # one binary predictor: the MLE reproduces the two observed log-odds exactly
    rng = np.random.default_rng(4)
    d = pd.DataFrame({"patient": np.repeat(np.arange(20), 3), "arm": np.tile([0, 1, 1], 20),
                      "scheduled": rng.integers(3, 9, 60)})
    d["attended"] = rng.binomial(d.scheduled, np.where(d.arm == 1, 0.7, 0.4))
    fit = am.fit_gee("attended ~ arm", d, trials="scheduled", cov_struct="independence")
    p0 = d.attended[d.arm == 0].sum() / d.scheduled[d.arm == 0].sum()
    p1 = d.attended[d.arm == 1].sum() / d.scheduled[d.arm == 1].sum()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert fit.params["Intercept"] == pytest.approx(logit(p0), rel=1e-8)
    assert fit.params["arm"] == pytest.approx(logit(p1) - logit(p0), rel=1e-8)


def test_proportion_response_equals_counts(sim):
    a = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled")
    d = sim.assign(prop=sim.attended / sim.scheduled)
    b = am.fit_gee("prop ~ alliance * age", d, trials="scheduled")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10)
    np.testing.assert_allclose(a.cov_params(), b.cov_params(), rtol=1e-10)


def test_binary_response_without_trials(sim):
    d = sim.assign(any_missed=(sim.attended < sim.scheduled).astype(int))
    fit = am.fit_gee("any_missed ~ alliance", d, cov_struct="independence")
    res = sm.GEE(d.any_missed, fit.frame.X, groups=d.patient, family=sm.families.Binomial(),
                 cov_struct=sm.cov_struct.Independence()).fit(maxiter=100)
    np.testing.assert_allclose(fit.params.to_numpy(), res.params, rtol=1e-8)
    np.testing.assert_allclose(fit.cov_params().to_numpy(), res.cov_robust, rtol=1e-8)


def test_gaussian_family(sim):
    fit = am.fit_gee("age ~ alliance", sim, family="gaussian", cov_struct="independence")
    res = sm.GEE(sim.age, fit.frame.X, groups=sim.patient, family=sm.families.Gaussian(),
                 cov_struct=sm.cov_struct.Independence()).fit(maxiter=100)
    np.testing.assert_allclose(fit.params.to_numpy(), res.params, rtol=1e-8)
    np.testing.assert_allclose(fit.cov_params().to_numpy(), res.cov_robust, rtol=1e-8)
    assert "odds_ratio" not in fit.to_frame().columns
    np.testing.assert_allclose(fit.inverse_link(np.array([0.3])), [0.3])


def test_groups_from_formula_term(sim):
    a = am.fit_gee("attended ~ alliance + (1 | patient)", sim, trials="scheduled")
    b = am.fit_gee("attended ~ alliance", sim, trials="scheduled", groups="patient")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12)
    assert a.groups == "patient"


def test_odds_ratios_and_summary(sim):
    fit = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled")
    tab = fit.to_frame()
    np.testing.assert_allclose(tab["odds_ratio"], np.exp(tab["estimate"]), rtol=1e-12)
    np.testing.assert_allclose(tab["or_lower"], np.exp(tab["ci_lower"]), rtol=1e-12)
    np.testing.assert_allclose(tab["ci_lower"], tab["estimate"] - 1.959963984540054 * tab["se"],
                               rtol=1e-12)
    s = fit.summary()
    assert "odds_ratio" in s and "log-odds" in s and "rho =" in s and "40 clusters" in s
    np.testing.assert_allclose(fit.inverse_link(np.array([0.0])), [0.5])
    np.testing.assert_allclose(fit.observed_response, sim.attended / sim.scheduled)


# --------------------------------------------------------------------------- bad input
def test_successes_above_trials_names_rows(sim):
    d = sim.copy()
    d.loc[[3, 7], "attended"] = 9
    with pytest.raises(DataValidationError,
                       match=r"'attended' exceeds 'scheduled' in rows 3, 7 \(e\.g\. 9 > 4\)"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")


def test_negative_and_fractional_counts(sim):
    d = sim.copy()
    d.loc[5, "attended"] = -1
    with pytest.raises(DataValidationError, match=r"negative counts in row 5"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")
    d = sim.astype({"attended": float})
    d.loc[[1, 2], "attended"] = 2.5
    with pytest.raises(DataValidationError, match=r"mixes counts and fractions: rows 1, 2"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")


def test_bad_trials(sim):
    d = sim.copy()
    d.loc[11, "scheduled"] = 0
    with pytest.raises(DataValidationError, match=r"'scheduled' must hold positive whole.*row 11"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")


def test_binary_outcome_out_of_range_without_trials(sim):
    with pytest.raises(DataValidationError, match=r"'attended' has values outside \[0, 1\]"):
        am.fit_gee("attended ~ alliance", sim)


def test_random_slopes_rejected(sim):
    with pytest.raises(ModelSpecError, match="at most one random-intercept term"):
        am.fit_gee("attended ~ alliance + (alliance | patient)", sim, trials="scheduled")


def test_conflicting_groups(sim):
    d = sim.assign(therapist=sim.patient // 5)
    with pytest.raises(ModelSpecError, match="groups='therapist' contradicts"):
        am.fit_gee("attended ~ alliance + (1 | patient)", d, trials="scheduled",
                   groups="therapist")


def test_option_errors(sim):
    with pytest.raises(ModelSpecError, match="family 'poisson' is unknown; allowed: 'bin"):
        am.fit_gee("attended ~ alliance", sim, family="poisson")
    with pytest.raises(ModelSpecError, match="cov_struct 'ar2' is unknown; allowed: .*'ar1'"):
        am.fit_gee("attended ~ alliance", sim, trials="scheduled", cov_struct="ar2")
    with pytest.raises(ModelSpecError, match="cor_estimator 'lz' is unknown; allowed: 'gee"):
        am.fit_gee("attended ~ alliance", sim, trials="scheduled", cor_estimator="lz")
    with pytest.raises(ModelSpecError, match="trials= is for family='binomial'"):
        am.fit_gee("attended ~ alliance", sim, family="gaussian", trials="scheduled")
    with pytest.raises(ModelSpecError, match="data must be a pandas DataFrame, got dict"):
        am.fit_gee("attended ~ alliance", {"attended": [1]}, trials="scheduled")
    with pytest.raises(ModelSpecError, match="needs a cluster column"):
        am.fit_gee("attended ~ alliance", sim.drop(columns="patient"), trials="scheduled")


def test_model_based_covariance_when_not_robust(cbpp):
    # independence + model-based covariance with dispersion 1 is the binomial GLM
    fit = am.fit_gee("incidence ~ C(period)", cbpp, trials="size", groups="herd",
                     cov_struct="independence", robust=False)
    endog = np.column_stack([cbpp["incidence"], cbpp["size"] - cbpp["incidence"]])
    glm = sm.GLM(endog, fit.frame.X, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(fit.cov_params().to_numpy(), glm.cov_params(), rtol=1e-7)
    assert "model-based" in fit.summary()


def test_few_clusters_warn(sim):
    d = sim[sim.patient <= 3]
    with pytest.warns(FewClustersWarning, match="only 3 clusters of 'patient'"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")


def test_missing_column_lists_close_matches(sim):
    with pytest.raises(ModelSpecError, match=r"names column 'aliance'.*did you mean 'alliance'"):
        am.fit_gee("attended ~ aliance", sim, trials="scheduled")


def test_one_level_cluster_column(sim):
    with pytest.raises(ModelSpecError, match=r"cluster column 'patient' has one level \('1'\)"):
        am.fit_gee("attended ~ alliance", sim.assign(patient=1), trials="scheduled")


def test_constant_moderator(sim):
    with pytest.raises(ModelSpecError, match=r"term 'age' is constant \(50 in every one of 240"):
        am.fit_gee("attended ~ alliance * age", sim.assign(age=50.0), trials="scheduled")


def test_missing_values_dropped_listwise_and_counted(sim):
    d = sim.copy()
    d.loc[[3, 8], "alliance"] = np.nan
    d.loc[10, "scheduled"] = np.nan  # the trials column counts as a model column
    d.loc[12, "patient"] = np.nan  # and so does the cluster column
    with pytest.warns(MissingDataWarning,
                      match=r"4 of 240 rows.*alliance.*excluded listwise \(rows 3, 8, 10, 12\)"):
        fit = am.fit_gee("attended ~ alliance", d, trials="scheduled")
    assert fit.n_dropped == 4 and fit.n_obs == 236
    assert "excluded for missing values: 4" in fit.summary()
    complete = am.fit_gee("attended ~ alliance", d.dropna(), trials="scheduled")
    np.testing.assert_allclose(fit.params, complete.params, rtol=1e-10)


def test_accepts_a_parsed_model_spec(sim):
    spec = am.parse_formula("attended ~ alliance * age + (1 | patient)")
    a = am.fit_gee(spec, sim, trials="scheduled")
    b = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled", groups="patient")
    assert a.spec is spec and a.groups == "patient"
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12)


def test_missing_groups_or_trials_column_lists_close_matches(sim):
    with pytest.raises(ModelSpecError,
                       match=r"groups='patiant' is not a column.*did you mean 'patient'"):
        am.fit_gee("attended ~ alliance", sim, trials="scheduled", groups="patiant")
    with pytest.raises(ModelSpecError,
                       match=r"trials='sheduled' is not a column.*did you mean 'scheduled'"):
        am.fit_gee("attended ~ alliance", sim, trials="sheduled")


def test_non_finite_values_are_named(sim):
    d = sim.copy()
    d.loc[[4, 9], "alliance"] = -np.inf
    with pytest.raises(ModelSpecError,
                       match=r"'alliance' has non-finite values \(rows 4, 9: -inf\)"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")
    d = sim.astype({"scheduled": float})
    d.loc[7, "scheduled"] = np.inf
    with pytest.raises(ModelSpecError, match=r"'scheduled' has non-finite values \(row 7: inf\)"):
        am.fit_gee("attended ~ alliance", d, trials="scheduled")


def test_constant_count_with_varying_trials_is_a_varying_proportion(sim):
    """2 of 3 and 2 of 5 are different proportions: not a constant response."""
    d = sim.assign(attended=2, scheduled=np.where(sim.index % 2 == 0, 3, 6))
    fit = am.fit_gee("attended ~ 1", d, trials="scheduled", cov_struct="independence")
    np.testing.assert_allclose(np.unique(fit.observed_response), [1 / 3, 2 / 3])
    pooled = (2 * 240) / (3 * 120 + 6 * 120)  # binomial MLE: the pooled proportion
    assert fit.params["Intercept"] == pytest.approx(np.log(pooled / (1 - pooled)), rel=1e-8)


def test_iteration_limit_warns_with_advice(sim):
    with pytest.warns(ConvergenceWarning,
                      match=r"GEE did not converge in 2 iterations.*raise maxiter"):
        am.fit_gee("attended ~ alliance * age", sim, trials="scheduled", maxiter=2)
    # one iteration never uses the working correlation and statsmodels does not flag it
    with pytest.raises(ModelSpecError, match="maxiter must be an integer >= 2, got 1"):
        am.fit_gee("attended ~ alliance * age", sim, trials="scheduled", maxiter=1)
