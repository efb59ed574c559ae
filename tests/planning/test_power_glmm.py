"""am.power for binomial designs analysed by the binomial GLMM (fit_mixed family='binomial').

Replicate i is replicate i of am.simulate (seeds from SeedSequence.spawn), so the engine's
estimate equals a direct fit; the truth is the conditional (subject-specific) coefficient
of the simulated linear predictor, so bias, RMSE and coverage are defined. method="auto"
fits random-intercept formulas with the batched Laplace engine (models/glmm/batched.py),
whose fits equal fit_mixed's to the optimisers' tolerance (1e-5 relative here; see
tests/models/glmm/test_glmm_batched.py), and refits what it marks one by one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

import alliance_models as am

DESIGN = am.Design(therapists=10, patients_per_therapist=4, sessions=4, family="binomial",
                   counts="attendance", trials=4, effects={"alliance": 0.4})
FORMULA = "attended ~ alliance + (1 | therapist/patient)"


def test_binomial_design_uses_the_glmm_with_a_conditional_truth():
    res = am.power(DESIGN, FORMULA, test="alliance", n_sims=4, seed=3, n_jobs=1,
                   progress=False, method="mixed")
    assert res.method == "mixed" and res.truth_exact and res.truth > 0
    assert np.isfinite(res.bias) and np.isfinite(res.coverage) and np.isfinite(res.rmse)
    reps = res.replicates
    assert np.all(np.isinf(reps["df"]))  # Wald z tests
    data = am.simulate(DESIGN, seed=np.random.SeedSequence(3).spawn(4)[2])
    with warnings.catch_warnings():
        # a replicate may be singular; the comparison holds all the same
        warnings.simplefilter("ignore", am.errors.SingularFitWarning)
        fit = am.fit_mixed(FORMULA, data, family="binomial", trials="scheduled")
    assert reps["estimate"].iloc[2] == pytest.approx(fit.params["alliance"], rel=1e-12)
    assert reps["se"].iloc[2] == pytest.approx(fit.fixed.loc["alliance", "se"], rel=1e-12)
    z = fit.params["alliance"] / fit.fixed.loc["alliance", "se"]
    assert reps["p_value"].iloc[2] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def _direct(design: am.Design, formula: str, seed: np.random.SeedSequence):
    data = am.simulate(design, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return am.fit_mixed(formula, data, family="binomial", trials="scheduled")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_auto_fits_the_batch_with_the_batched_engine(dropout):
    design = DESIGN.replace(dropout=dropout)
    res = am.power(design, FORMULA, test="alliance", n_sims=6, seed=5, n_jobs=1,
                   progress=False)
    assert res.method == "fast" and res.truth_exact and res.truth > 0
    assert np.isfinite(res.bias) and np.isfinite(res.coverage)
    reps = res.replicates
    assert not reps["failed"].any() and np.all(np.isinf(reps["df"]))
    seeds = np.random.SeedSequence(5).spawn(6)
    for i in (0, 3, 5):
        fit = _direct(design, FORMULA, seeds[i])
        se = fit.fixed.loc["alliance", "se"]
        assert abs(reps["estimate"].iloc[i] - fit.params["alliance"]) < 1e-5 * se
        assert reps["se"].iloc[i] == pytest.approx(se, rel=2e-5)
        assert bool(reps["singular"].iloc[i]) == fit.singular


def test_random_caseloads_and_sessions_use_the_padded_batch():
    design = DESIGN.replace(patients_per_therapist=("poisson", 4), sessions=("negbin", 4, 4),
                            randomisation="patient", effects={"arm": 0.3})
    f = "attended ~ arm * alliance + (1 | therapist/patient)"
    res = am.power(design, f, test="arm", n_sims=3, seed=8, n_jobs=1, progress=False)
    assert res.method == "fast" and not res.replicates["failed"].any()
    seeds = np.random.SeedSequence(8).spawn(3)
    for i in (0, 2):
        fit = _direct(design, f, seeds[i])
        se = fit.fixed.loc["arm", "se"]
        assert abs(res.replicates["estimate"].iloc[i] - fit.params["arm"]) < 1e-5 * se
        assert res.replicates["se"].iloc[i] == pytest.approx(se, rel=2e-5)


def test_marked_replicates_are_refitted_one_by_one(monkeypatch):
    from alliance_models.models.glmm import batched

    real = batched.fit_glmm_batch

    def marking(*args, **kwargs):
        bf = real(*args, **kwargs)
        status = bf.status.copy()
        status[1] = "newton"
        beta = bf.beta.copy()
        beta[1] = np.nan
        return dataclasses.replace(bf, status=status, beta=beta)

    monkeypatch.setattr(batched, "fit_glmm_batch", marking)
    res = am.power(DESIGN, FORMULA, test="alliance", n_sims=3, seed=3, n_jobs=1,
                   progress=False)
    assert res.method == "fast" and not res.replicates["failed"].any()
    fit = _direct(DESIGN, FORMULA, np.random.SeedSequence(3).spawn(3)[1])
    # replicate 1 is fit_mixed's own result (the method="mixed" record)
    assert res.replicates["estimate"].iloc[1] == pytest.approx(fit.params["alliance"],
                                                                rel=1e-12)


def test_random_slopes_fall_back_to_the_per_replicate_fit():
    f = "attended ~ alliance + (1 + alliance | therapist)"
    res = am.power(DESIGN, f, test="alliance", n_sims=2, seed=1, n_jobs=1, progress=False)
    assert res.method == "mixed"
    with pytest.raises(am.errors.ModelSpecError, match="random intercepts"):
        am.power(DESIGN, f, test="alliance", n_sims=2, seed=1, n_jobs=1, progress=False,
                 method="fast")


def test_proportion_formula_keeps_the_linear_model():
    res = am.power(DESIGN, "adherence ~ alliance + (1 | therapist/patient)", test="alliance",
                   n_sims=2, seed=1, n_jobs=1, progress=False)
    assert math.isnan(res.truth)  # a linear model of the proportion has no true value


@pytest.mark.slow
def test_null_type_one_error_of_the_glmm():
    """2,000 null replicates: the rejection rate is 0.05 within Monte Carlo error."""
    null = DESIGN.replace(effects={"alliance": 0.0})
    res = am.power(null, FORMULA, test="alliance", n_sims=2000, seed=20261203, n_jobs=-1,
                   progress=False)
    n = res.n_completed
    assert res.method == "fast" and n >= 1990
    # 3 Monte Carlo SEs around the nominal level (measured: 101 / 2,000)
    assert abs(res.power - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / n)


@pytest.mark.slow
def test_null_type_one_error_of_the_batched_glmm_on_r1():
    """R1 (30 x 8 x 6 rows, 8 trials each), every effect 0: 2,000 replicates.

    The test of alliance:autonomy in alliance * (age + autonomy) rejects at 0.05 within
    3 Monte Carlo SEs, every replicate is fitted and converged, and the 95% intervals
    cover the true 0 at 0.95 within 3 Monte Carlo SEs.
    """
    r1 = am.Design(therapists=30, patients_per_therapist=8, sessions=6, family="binomial",
                   counts="attendance", trials=8, effects={})
    f = "attended ~ alliance * (age + autonomy) + (1 | therapist/patient)"
    res = am.power(r1, f, test="alliance:autonomy", n_sims=2000, seed=20261204, n_jobs=-1,
                   progress=False)
    reps = res.replicates
    assert res.method == "fast" and res.n_completed == 2000 and not reps["failed"].any()
    assert reps["converged"].all()
    assert abs(res.power - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / 2000)
    assert abs(res.coverage - 0.95) <= 3 * math.sqrt(0.05 * 0.95 / 2000)
