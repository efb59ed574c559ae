"""Robustness scenarios (planning/scenarios.py): perturbations, presets, scenario runs.

Statistical checks compare with closed forms within Monte Carlo error: a replicate-level
statistic is averaged over independent replicates and compared with its expectation
within ``Z`` standard errors of that mean (``Z = 4``: a false alarm about once in 16,000
runs per check); rejection rates use their binomial SE.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

import alliance_models as am
from alliance_models.errors import DesignError, ModelSpecError
from alliance_models.planning import run as engine
from alliance_models.planning.scenarios import (
    PRESETS,
    Scenario,
    heteroskedasticity_factors,
    mnar_dropout,
    resolve_scenarios,
    skewed_from_normal,
)
from alliance_models.planning.simulate import batch_arrays, simulate_arrays

Z = 4.0
FORMULA = "adherence ~ alliance + (1 | therapist/patient)"


def _within(values: np.ndarray, expected: float, z: float = Z) -> tuple[float, float]:
    """Assert the mean of iid ``values`` is within ``z`` SE of ``expected``."""
    values = np.asarray(values, float)
    mean, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))
    assert abs(mean - expected) <= z * se, (mean, expected, se)
    return mean, se


def _batch_stats(x: np.ndarray, n_batches: int = 100) -> np.ndarray:
    """Split draws into batches and return mean, variance and skewness per batch."""
    xb = x.reshape(n_batches, -1)
    return np.column_stack([xb.mean(axis=1), xb.var(axis=1), stats.skew(xb, axis=1),
                            stats.kurtosis(xb, axis=1)])


# --- validation and resolution ------------------------------------------------------

def test_docstring_examples_run():
    from alliance_models.planning import scenarios

    res = doctest.testmod(scenarios, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 5 and res.failed == 0


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("residuals", "cauchy", "'normal', 't', 'skewed'"),
    ("random_effects", "laplace", "'normal', 't', 'skewed'"),
    ("residual_df", 2.0, "above 2"),
    ("random_effect_df", -1, "above 2"),
    ("residual_skewness", 0.0, "non-zero and between -4 and 4"),
    ("random_effect_skewness", 5.0, "non-zero and between -4 and 4"),
    ("heteroskedasticity_cv", -0.1, "between 0"),
    ("dropout_odds_ratio", 0.0, "between 0.01 and 100"),
    ("alliance_reliability", 1.2, "in (0, 1]"),
    ("alliance_reliability", math.nan, "finite number"),
    ("residual_df", "8", "finite number"),
])
def test_bad_fields_name_the_field_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(DesignError) as err:
        Scenario(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg and allowed in msg


def test_resolve_scenarios_presets_names_and_errors():
    assert list(resolve_scenarios(True)) == ["baseline", "optimistic", "realistic",
                                             "pessimistic"]
    assert resolve_scenarios(True)["realistic"] is PRESETS["realistic"]
    got = resolve_scenarios({"weak": "pessimistic", "noisy": Scenario(alliance_reliability=.6)})
    assert list(got) == ["baseline", "weak", "noisy"]
    assert got["weak"].name == "weak" and got["weak"].residuals == "skewed"
    # a null scenario given by the user is the reference: no extra baseline
    assert list(resolve_scenarios([Scenario(name="as planned"), "realistic"])) == [
        "as planned", "realistic"]
    assert list(resolve_scenarios("optimistic")) == ["baseline", "optimistic"]
    with pytest.raises(DesignError, match="unique; 'realistic'"):
        resolve_scenarios(["realistic", "realistic"])
    with pytest.raises(DesignError, match="kept for the unperturbed design"):
        resolve_scenarios({"baseline": Scenario(heteroskedasticity_cv=0.2)})
    with pytest.raises(DesignError, match="preset 'doomer' is unknown; allowed: "
                                          "'optimistic', 'realistic', 'pessimistic'"):
        resolve_scenarios(["doomer"])
    with pytest.raises(DesignError, match="scenarios must be True, a preset name"):
        resolve_scenarios(3)
    with pytest.raises(DesignError, match="holds no scenario"):
        resolve_scenarios([])


def test_presets_are_documented_values():
    opt, real, pess = (PRESETS[n] for n in ("optimistic", "realistic", "pessimistic"))
    assert (opt.residuals, opt.residual_df, opt.random_effects) == ("t", 10, "normal")
    assert (real.residual_df, real.random_effect_df, real.heteroskedasticity_cv) == (8, 10,
                                                                                     0.15)
    assert (pess.residuals, pess.residual_skewness, pess.random_effect_df) == ("skewed", -2,
                                                                               5)
    assert [p.dropout_odds_ratio for p in (opt, real, pess)] == [0.9, 0.75, 0.58]
    assert [p.alliance_reliability for p in (opt, real, pess)] == [0.9, 0.8, 0.7]
    assert "alliance reliability 0.70" in pess.describe()
    assert Scenario().is_null and not any(p.is_null for p in PRESETS.values())


def test_scenario_that_cannot_perturb_the_design_is_refused():
    binom = am.Design(therapists=6, patients_per_therapist=3, sessions=2, family="binomial")
    with pytest.raises(DesignError, match="residuals and heteroskedasticity_cv perturb the "
                                          "session-level residual, which a binomial"):
        PRESETS["realistic"].check(binom)
    Scenario(random_effects="t", alliance_reliability=0.8).check(binom)  # these apply
    flat = am.Design(therapists=6, patients_per_therapist=3, sessions=2,
                     alliance_components=(0, 0, 1))
    with pytest.raises(DesignError, match="dropout_odds_ratio = 0.5 links dropout"):
        am.simulate(flat, 1, scenario=Scenario(dropout_odds_ratio=0.5))


# --- the shapes keep the variance (closed forms, large draws) ---------------------------

@pytest.mark.parametrize("skew", [-2.0, -1.0, 0.5, 2.0])
def test_skewed_shape_is_standardised_chi_square_with_the_stated_skewness(skew):
    z = np.random.default_rng(11).standard_normal(1_000_000)
    x = skewed_from_normal(z, skew)
    b = _batch_stats(x)
    k = 8 / skew**2
    _within(b[:, 0], 0.0)
    _within(b[:, 1], 1.0)
    _within(b[:, 2], skew)  # skewness of chi-square(k): sqrt(8 / k)
    _within(b[:, 3], 12 / k)  # its excess kurtosis
    assert np.all(np.diff(x[np.argsort(z)]) >= 0)  # monotone in the normal draw


def test_heteroskedasticity_factors_have_mean_square_one_and_the_stated_cv():
    z = np.random.default_rng(12).standard_normal(1_000_000)
    for cv in (0.15, 0.3, 1.0):
        s = heteroskedasticity_factors(z, cv)
        sb = s.reshape(100, -1)
        _within((sb**2).mean(axis=1), 1.0)
        _within(np.log(sb).var(axis=1), math.log1p(cv * cv))  # lognormal: var(log s)


def _components(design: am.Design, scenario: Scenario | None, n_reps: int, seed: int):
    """Per replicate: the within-patient, patient-mean and therapist-mean variances."""
    seeds = np.random.SeedSequence(seed).spawn(n_reps)
    _, Y, _, _, _, _ = batch_arrays(design, "adherence", ("Intercept",), seeds, sims=False,
                                    scenario=scenario)
    T, m, S = design.n_therapists, design.patients_per_therapist, design.sessions
    y = Y.reshape(n_reps, T, m, S)
    within = y.var(axis=3, ddof=1).mean(axis=(1, 2))
    pmeans = y.mean(axis=3)
    between_p = pmeans.var(axis=2, ddof=1).mean(axis=1)
    between_t = pmeans.mean(axis=2).var(axis=1, ddof=1)
    return within, between_p, between_t, y


@pytest.mark.parametrize("scenario", [
    Scenario(residuals="t", residual_df=5),
    Scenario(residuals="skewed", residual_skewness=-2),
    Scenario(random_effects="t", random_effect_df=3.5),
    Scenario(random_effects="skewed", random_effect_skewness=1.5),
    Scenario(heteroskedasticity_cv=0.5),
    PRESETS["pessimistic"],
], ids=["t-resid", "skew-resid", "t-re", "skew-re", "hetero", "pessimistic"])
def test_simulated_variance_components_keep_the_design_variances(scenario):
    # unbiased moment identities of a balanced nested layout, for any distribution:
    # E[within-patient var] = s2e, E[var of patient means in a therapist] = icc_p + s2e/S,
    # E[var of therapist means] = icc_t + icc_p/m + s2e/(m S)
    d = am.Design(therapists=30, patients_per_therapist=6, sessions=4, icc_therapist=0.2,
                  icc_patient=0.3, moderators={}, effects={})
    within, between_p, between_t, _ = _components(d, scenario, 600, 3)
    s2e, m, S = 0.5, 6, 4
    _within(within, s2e)
    _within(between_p, 0.3 + s2e / S)
    _within(between_t, 0.2 + 0.3 / m + s2e / (m * S))


def test_residual_shape_in_the_simulator_is_the_stated_distribution():
    # without random intercepts and effects the outcome is the residual itself
    d = am.Design(therapists=20, patients_per_therapist=10, sessions=5, icc_therapist=0.0,
                  icc_patient=0.0, moderators={}, effects={})
    for sc, skew, kurt in ((Scenario(residuals="t", residual_df=8), 0.0, 6 / (8 - 4)),
                           (Scenario(residuals="skewed", residual_skewness=-1), -1.0, 1.5)):
        *_, y = _components(d, sc, 1000, 4)
        flat = y.reshape(100, -1)
        _within(flat.var(axis=1), 1.0)
        _within(stats.skew(flat, axis=1), skew)
        _within(stats.kurtosis(flat, axis=1), kurt)


def test_therapist_residual_sds_vary_with_the_stated_cv():
    # var(log of a therapist's sample SD) = log(1 + cv^2) + trigamma((n - 1) / 2) / 4 for
    # normal residuals with n residuals per therapist (no random intercepts here)
    d = am.Design(therapists=40, patients_per_therapist=20, sessions=10,
                  icc_therapist=0.0, icc_patient=0.0, moderators={}, effects={})
    *_, y = _components(d, Scenario(heteroskedasticity_cv=0.3), 300, 5)
    n = 20 * 10
    log_sd = 0.5 * np.log(y.reshape(300, 40, n).var(axis=2, ddof=1))
    expected = math.log1p(0.3**2) + special.polygamma(1, (n - 1) / 2) / 4
    _within(log_sd.var(axis=1, ddof=1), expected)


# --- dropout linked to alliance -------------------------------------------------------

def test_mnar_intercepts_keep_each_arms_dropout_share():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((4, 300))
    arm = (rng.random((4, 300)) < 0.5).astype(np.int64)
    p0 = np.where(arm == 1, 0.1, 0.4)
    p = mnar_dropout(Scenario(dropout_odds_ratio=3.0), p0, z, arm)
    for a, want in ((0, 0.4), (1, 0.1)):
        got = [p[b][arm[b] == a].mean() for b in range(4)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the log odds ratio between any two patients of an arm is log(3) per SD
    lo = special.logit(p)
    i, j = np.flatnonzero(arm[0] == 0)[:2]
    assert math.isclose((lo[0, i] - lo[0, j]) / (z[0, i] - z[0, j]), math.log(3.0),
                        rel_tol=1e-9)


def test_mnar_dropout_changes_the_observed_alliance_as_specified():
    # all alliance variance at patient level (normal), 2 sessions, drop-outs leave after
    # session 1: session 1 shows every patient's alliance z, session 2 the completers'
    d = am.Design(therapists=100, patients_per_therapist=10, sessions=2, dropout=0.3,
                  dropout_timing=1, alliance_components=(0, 1, 0), alliance_skew=0,
                  moderators={}, effects={})
    odds = 0.5
    n_reps = 40
    seeds = np.random.SeedSequence(7).spawn(n_reps)
    _, _, _, _, mask, sims = batch_arrays(d, "adherence", ("Intercept",), seeds,
                                          scenario=Scenario(dropout_odds_ratio=odds))
    P = d.n_therapists * 10
    z = np.stack([s.columns["alliance"].reshape(P, 2)[:, 0] for s in sims])
    dropped = ~mask.reshape(n_reps, P, 2)[:, :, 1]
    # population intercept a with E[expit(a + b z)] = 0.3 for z ~ N(0, 1)
    b = math.log(odds)

    def mean_p(a: float, weight=lambda z: 1.0) -> float:
        return integrate.quad(lambda t: weight(t) * special.expit(a + b * t)
                              * stats.norm.pdf(t), -12, 12)[0]

    from scipy.optimize import brentq
    a = brentq(lambda a: mean_p(a) - 0.3, -10, 10)
    # 1) the dropout share is the design's
    _within(dropped.mean(axis=1), 0.3)
    # 2) the completers' mean alliance is E[z (1 - p(z))] / (1 - 0.3), the drop-outs'
    #    E[z p(z)] / 0.3 (closed form by quadrature)
    stay = np.array([z[r][~dropped[r]].mean() for r in range(n_reps)])
    gone = np.array([z[r][dropped[r]].mean() for r in range(n_reps)])
    _within(stay, -mean_p(a, lambda t: t) / 0.7)
    _within(gone, mean_p(a, lambda t: t) / 0.3)
    # 3) the log odds ratio of dropping out per SD of alliance (pooled logistic fit)
    import statsmodels.api as sm

    X = sm.add_constant(z.reshape(-1))
    fit = sm.Logit(dropped.reshape(-1).astype(float), X).fit(disp=0)
    assert abs(fit.params[1] - b) <= Z * fit.bse[1], (fit.params[1], b, fit.bse[1])
    # without the scenario, dropout is unrelated to alliance (same draws otherwise)
    _, _, _, _, mask0, _ = batch_arrays(d, "adherence", ("Intercept",), seeds, sims=False)
    fit0 = sm.Logit((~mask0.reshape(n_reps, P, 2)[:, :, 1]).reshape(-1).astype(float),
                    X).fit(disp=0)
    assert abs(fit0.params[1]) <= Z * fit0.bse[1]


# --- common random numbers and batching -------------------------------------------------

def test_scenarios_change_only_the_draws_they_perturb():
    d = am.Design(therapists=6, patients_per_therapist=4, sessions=3, dropout=0.3)
    base = simulate_arrays(d, 9)
    me = simulate_arrays(d, 9, scenario=Scenario(alliance_reliability=0.7))
    np.testing.assert_array_equal(me.columns["adherence"], base.columns["adherence"])
    np.testing.assert_array_equal(me.columns["alliance_true"], base.columns["alliance"])
    np.testing.assert_array_equal(me.observed, base.observed)
    assert not np.allclose(me.columns["alliance"], base.columns["alliance"])
    shaped = simulate_arrays(d, 9, scenario=Scenario(residuals="t", random_effects="skewed"))
    np.testing.assert_array_equal(shaped.columns["alliance"], base.columns["alliance"])
    np.testing.assert_array_equal(shaped.eta, base.eta)
    np.testing.assert_array_equal(shaped.observed, base.observed)
    # the measurement error is the same whether or not other perturbations are on
    both = simulate_arrays(d, 9, scenario=Scenario(alliance_reliability=0.7,
                                                   heteroskedasticity_cv=0.4))
    np.testing.assert_array_equal(both.columns["alliance"], me.columns["alliance"])
    # dropout linked to alliance uses the design's dropout draws: the same share, other
    # patients
    mnar = simulate_arrays(d, 9, scenario=Scenario(dropout_odds_ratio=0.3))
    np.testing.assert_array_equal(mnar.columns["alliance"], base.columns["alliance"])


@pytest.mark.parametrize("design", [
    am.Design(therapists=6, patients_per_therapist=4, sessions=3, dropout=(0.2, 0.4),
              randomisation="patient", effects={"alliance": 0.3, "arm": 0.2}),
    am.Design(therapists=5, patients_per_therapist=("poisson", 4), sessions=("negbin", 4, 2),
              dropout=0.3),
], ids=["fixed", "random-structure"])
def test_batched_replicates_equal_single_replicates_under_a_scenario(design):
    seeds = np.random.SeedSequence(4).spawn(6)
    sc = PRESETS["pessimistic"]
    X, Y, _, _, mask, sims = batch_arrays(design, "adherence", ("Intercept", "alliance"),
                                          seeds, scenario=sc,
                                          padded=not design.has_fixed_structure)
    for b in range(6):
        one = simulate_arrays(design, seeds[b], scenario=sc)
        np.testing.assert_array_equal(sims[b].columns["adherence"], one.columns["adherence"])
        np.testing.assert_array_equal(sims[b].observed, one.observed)
        np.testing.assert_array_equal(sims[b].columns["alliance"], one.columns["alliance"])
    if design.has_fixed_structure:
        np.testing.assert_array_equal(Y[2], simulate_arrays(design, seeds[2], scenario=sc)
                                      .columns["adherence"])


def test_scenario_runs_reproducible_and_independent_of_n_jobs(tmp_path):
    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3, dropout=0.25,
                  moderators={})
    kw = {"test": "alliance", "n_sims": 60, "seed": 21, "progress": False, "batch_size": 16}
    one = am.power(d, FORMULA, n_jobs=1, scenarios=True, **kw)
    again = am.power(d, FORMULA, n_jobs=1, scenarios=True, checkpoint=tmp_path / "ck.csv",
                     **kw)
    assert one.names == ("baseline", "optimistic", "realistic", "pessimistic")
    for name in one.names:
        pd.testing.assert_frame_equal(one[name].replicates, again[name].replicates)
        assert (tmp_path / f"ck-scenario={name}.csv").exists()
    # in loky worker processes: the same replicates
    two = am.power(d, FORMULA, n_jobs=2, scenarios=["pessimistic"], **kw)
    pd.testing.assert_frame_equal(one["pessimistic"].replicates,
                                  two["pessimistic"].replicates)
    # the baseline is the design as given, with the same seed
    plain = am.power(d, FORMULA, n_jobs=1, **kw)
    pd.testing.assert_frame_equal(one["baseline"].replicates, plain.replicates)
    assert one["pessimistic"].scenario is PRESETS["pessimistic"]
    assert "scenario pessimistic: residuals skewed" in one["pessimistic"].summary()
    # a single scenario gives its PowerResult
    single = am.power(d, FORMULA, n_jobs=1, scenario=PRESETS["realistic"], **kw)
    pd.testing.assert_frame_equal(single.replicates, one["realistic"].replicates)


def test_frame_route_simulates_the_same_scenario_data():
    # method="mixed" (one data frame per replicate) and the batched engine fit the same
    # perturbed data: their estimates agree as the two engines do
    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3, dropout=0.25,
                  moderators={})
    kw = {"test": "alliance", "n_sims": 4, "seed": 2, "n_jobs": 1, "progress": False,
          "scenario": PRESETS["pessimistic"]}
    fast = am.power(d, FORMULA, method="fast", **kw)
    mixed = am.power(d, FORMULA, method="mixed", **kw)
    np.testing.assert_allclose(fast.replicates["estimate"], mixed.replicates["estimate"],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("design", "formula"), [
    (am.Design(therapists=10, patients_per_therapist=4, sessions=4, family="binomial",
               counts="attendance", moderators={}, effects={"alliance": 0.4}, dropout=0.2),
     "attended ~ alliance + (1 | therapist/patient)"),
    (am.Design(therapists=10, patients_per_therapist=4, sessions=4, moderators={},
               alliance_slope_sd=0.2, dropout=0.2),
     "adherence ~ alliance + (1 + alliance | therapist) + (1 | therapist:patient)"),
], ids=["binomial-laplace", "random-slope"])
def test_every_batched_route_simulates_the_scenario(design, formula):
    # the batched engines (Laplace for binomial counts, REML with a random slope) fit the
    # same perturbed data as one fit_mixed per replicate, and differ from the design as
    # given
    sc = Scenario(random_effects="t", random_effect_df=4, alliance_reliability=0.6,
                  dropout_odds_ratio=0.5)
    kw = {"test": "alliance", "n_sims": 4, "seed": 3, "n_jobs": 1, "progress": False}
    fast = am.power(design, formula, scenario=sc, **kw)
    mixed = am.power(design, formula, method="mixed", scenario=sc, **kw)
    plain = am.power(design, formula, **kw)
    assert fast.method == "fast"
    np.testing.assert_allclose(fast.replicates["estimate"], mixed.replicates["estimate"],
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(fast.replicates["estimate"], plain.replicates["estimate"])


def test_power_scenario_argument_errors(monkeypatch):
    d = am.Design(therapists=6, patients_per_therapist=3, sessions=2, moderators={})
    kw = {"test": "alliance", "n_sims": 5, "seed": 1, "n_jobs": 1}
    with pytest.raises(ModelSpecError, match="not both"):
        am.power(d, FORMULA, scenario=PRESETS["realistic"], scenarios=True, **kw)
    with pytest.raises(ModelSpecError, match="scenario must be an alliance_models.Scenario"):
        am.power(d, FORMULA, scenario="realistic", **kw)
    with pytest.raises(DesignError, match="checkpoint needs a fixed seed"):
        am.power(d, FORMULA, scenarios=True, checkpoint="x.csv", test="alliance", n_sims=5)
    binom = d.replace(family="binomial")
    with pytest.raises(DesignError, match="scenario 'optimistic': residuals perturb"):
        am.power(binom, "completed ~ alliance + (1 | therapist)", scenarios=True, **kw)

    # a batch route that does not simulate scenarios is refused, not silently ignored
    def other_route(job, reps, seeds):  # pragma: no cover - never runs
        raise AssertionError

    monkeypatch.setitem(engine.BATCH_ROUTES, "ols", other_route)
    with pytest.raises(ModelSpecError, match="does not simulate robustness scenarios"):
        am.power(d, "adherence ~ alliance", method="ols", scenario=PRESETS["realistic"],
                 **kw)
    with pytest.raises(ModelSpecError, match="compare one test"):
        am.power(d, FORMULA, test=["alliance", "Intercept"], n_sims=5, n_jobs=1,
                 scenarios=True)
    with pytest.raises(ModelSpecError, match="compare one test"):
        am.power_curve(d, FORMULA, test=["alliance", "Intercept"], n_sims=5, n_jobs=1,
                       vary={"therapists": [6, 8]}, scenarios=True)
    # one scenario and several tests: the multi-test result under the scenario
    multi = am.power(d, FORMULA, test=["alliance", "Intercept"], n_sims=5, n_jobs=1,
                     seed=1, scenario=PRESETS["pessimistic"])
    single = am.power(d, FORMULA, test="alliance", n_sims=5, n_jobs=1, seed=1,
                      scenario=PRESETS["pessimistic"])
    row = multi.to_frame().set_index("test").loc["alliance"]
    assert row["power"] == single.power
    with pytest.raises(DesignError, match="one scenario at a time"):
        am.sample_size(d, FORMULA, test="alliance", vary="therapists", lo=4, hi=8,
                       n_sims=5, n_jobs=1, seed=1, scenarios=True)


# --- power moves as the perturbation implies -------------------------------------------

def test_measurement_error_attenuates_the_estimate_and_lowers_power():
    # alliance purely session-level and normal, measured with reliability r: the slope
    # on observed alliance estimates r * beta (errors in variables) and power falls;
    # the truth stays beta
    beta, rel = 0.2, 0.7
    d = am.Design(therapists=12, patients_per_therapist=5, sessions=4,
                  alliance_components=(0, 0, 1), alliance_skew=0, moderators={},
                  effects={"alliance": beta})
    res = am.power(d, FORMULA, test="alliance", n_sims=1000, n_jobs=1, seed=5,
                   progress=False, scenarios={"unreliable": Scenario(alliance_reliability=rel)})
    me, base = res["unreliable"], res["baseline"]
    assert me.truth == base.truth == pytest.approx(beta, abs=1e-12)
    _within(me.replicates["estimate"], rel * beta)
    _within(base.replicates["estimate"], beta)
    row = res.to_frame().set_index("scenario").loc["unreliable"]
    assert row["diff"] < 0 and abs(row["diff"]) > Z * row["diff_se"]
    assert row["bias"] == pytest.approx(me.replicates["estimate"].mean() - beta)


def test_presets_lower_power_in_order():
    d = am.Design(therapists=20, patients_per_therapist=6, sessions=4, dropout=0.2,
                  moderators={})
    res = am.power(d, FORMULA, test="alliance", n_sims=600, n_jobs=1, seed=1,
                   progress=False, scenarios=True)
    df = res.to_frame().set_index("scenario")
    assert df.loc["pessimistic", "diff"] < 0
    assert abs(df.loc["pessimistic", "diff"]) > Z * df.loc["pessimistic", "diff_se"]
    assert (df.loc["pessimistic", "power"] <= df.loc["realistic", "power"]
            <= df.loc["baseline", "power"])
    # attenuation by the presets' reliabilities shows as bias toward zero
    assert df.loc["pessimistic", "bias"] < df.loc["realistic", "bias"] < 0


@pytest.mark.parametrize("n_sims", [
    2000, pytest.param(8000, marks=pytest.mark.slow)])
def test_heavy_tails_keep_the_null_rejection_rate(n_sims):
    # (the unperturbed engine itself rejects about 5.4% here, 30 therapists with
    # Satterthwaite df; the paired check compares the heavy tails with exactly that)
    d = am.Design(therapists=30, patients_per_therapist=5, sessions=4, moderators={},
                  effects={})
    heavy = Scenario(name="heavy", residuals="t", residual_df=5, random_effects="t",
                     random_effect_df=5)
    res = am.power(d, FORMULA, test="alliance", n_sims=n_sims, n_jobs=1, seed=8,
                   progress=False, scenarios=[heavy])
    df = res.to_frame().set_index("scenario")
    se = math.sqrt(0.05 * 0.95 / n_sims)
    for name in ("baseline", "heavy"):
        assert abs(df.loc[name, "type_i"] - 0.05) <= Z * se, (name, df.loc[name, "type_i"])
    # paired with the normal design (same seeds): heavy tails do not move the rate
    assert abs(df.loc["heavy", "diff"]) <= Z * df.loc["heavy", "diff_se"]
    assert "type-I error" in res.summary()


@pytest.mark.slow
def test_skewed_residuals_keep_the_null_rejection_rate_slow():
    d = am.Design(therapists=30, patients_per_therapist=5, sessions=4, moderators={},
                  effects={})
    skew = Scenario(name="skewed", residuals="skewed", residual_skewness=-2,
                    random_effects="skewed", random_effect_skewness=-1.5)
    res = am.power(d, FORMULA, test="alliance", n_sims=8000, n_jobs=1, seed=9,
                   progress=False, scenarios=[skew, "pessimistic"])
    se = math.sqrt(0.05 * 0.95 / 8000)
    df = res.to_frame().set_index("scenario")
    for name in ("skewed", "pessimistic"):
        assert abs(df.loc[name, "type_i"] - 0.05) <= Z * se, (name, df.loc[name, "type_i"])
        assert abs(df.loc[name, "diff"]) <= Z * df.loc[name, "diff_se"]


# --- curves, plots and the report -------------------------------------------------------

def test_power_curve_with_scenarios_plot_and_report(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = am.Design(therapists=10, patients_per_therapist=4, sessions=3, moderators={})
    curve = am.power_curve(d, FORMULA, test="alliance", vary={"therapists": [6, 10]},
                           n_sims=40, n_jobs=1, seed=3, progress=False,
                           scenarios=["realistic", "pessimistic"])
    assert isinstance(curve, am.ScenarioCurve)
    frame = curve.to_frame()
    assert frame[["scenario", "therapists"]].values.tolist() == [
        ["baseline", 6], ["baseline", 10], ["realistic", 6], ["realistic", 10],
        ["pessimistic", 6], ["pessimistic", 10]]
    # the baseline curve is the plain curve with the same seed
    plain = am.power_curve(d, FORMULA, test="alliance", vary={"therapists": [6, 10]},
                           n_sims=40, n_jobs=1, seed=3, progress=False)
    assert [r.power for r in curve["baseline"].results] == [r.power for r in plain.results]
    ax = curve.plot()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "baseline", "realistic", "pessimistic"]
    plt.close("all")
    assert "realistic" in curve.summary() and "therapists" in curve.summary()

    res = am.power(d, FORMULA, test="alliance", n_sims=40, n_jobs=1, seed=3,
                   progress=False, scenarios=True)
    ax = res.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == list(res.names)
    plt.close("all")
    page = am.report(tmp_path / "r.html", power=res).read_text(encoding="utf-8")
    assert "Power under robustness scenarios" in page and "Power by scenario" in page
    assert page.count("<td>pessimistic</td>") == 1 and "diff_se" in page
    page = am.report(tmp_path / "c.html", power=curve).read_text(encoding="utf-8")
    assert "Power curve by scenario" in page


def test_sample_size_under_one_scenario():
    d = am.Design(therapists=10, patients_per_therapist=4, sessions=3, moderators={},
                  effects={"alliance": 0.4})
    ss = am.sample_size(d, FORMULA, test="alliance", vary="therapists", lo=6, hi=18,
                        step=6, n_sims=40, n_jobs=1, seed=3, progress=False,
                        scenario=PRESETS["pessimistic"])
    assert all(r.scenario is PRESETS["pessimistic"] for r in ss.results)
