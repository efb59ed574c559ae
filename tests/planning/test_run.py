import importlib.util
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

import alliance_models as am
from alliance_models.errors import AllianceModelsWarning, DesignError, ModelSpecError
from alliance_models.planning import analytic
from alliance_models.planning.results import wilson_interval
from alliance_models.planning.simulate import age_moments

HAS_FAST = importlib.util.find_spec("alliance_models.models.lmm.batch_fit") is not None
NO_FAST = "batched REML engine (models/lmm/batch_fit.py) not available"

# independent observations: one patient per therapist, one session, no clustering
INDEP = am.Design(therapists=60, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                  icc_patient=0.0, moderators={}, effects={"alliance": 0.3})
OLS = {"method": "ols", "fit_kwargs": {"hc": None}, "n_jobs": 1, "progress": False}

CALLS: list[int] = []
#: counting_ols behaves like a user pressing Ctrl-C during this call (0: never)
INTERRUPT_AT: list[int] = [0]


def counting_ols(formula, data, **kwargs):
    """A custom fitting function that records how often it ran."""
    CALLS.append(1)
    if len(CALLS) == INTERRUPT_AT[0]:
        raise KeyboardInterrupt
    return am.fit_ols(formula, data, hc=None)


def ctrl_c_on_fifth(formula, data, **kwargs):
    """Behaves like a user pressing Ctrl-C during the fifth fit."""
    CALLS.append(1)
    if len(CALLS) == 5:
        raise KeyboardInterrupt
    return am.fit_ols(formula, data, hc=None)


def mc_tol(p, n, k=3.0):
    return k * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (80, 100), (100, 100), (17, 403)])
def test_wilson_interval_matches_statsmodels(k, n):
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-10)


def test_power_result_fields_summary_and_frame():
    res = am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=30, seed=1, **OLS)
    assert res.method == "ols" and res.n_sims == res.n_completed == 30
    k = int(res.replicates["reject"].sum())
    assert res.power == k / 30 and res.ci == wilson_interval(k, 30)
    assert list(res.replicates["rep"]) == list(range(30))
    assert res.replicates["df"].eq(58).all()  # n - p for OLS
    frame = res.to_frame()
    assert frame.loc[0, "power"] == res.power and frame.loc[0, "n_completed"] == 30
    text = res.summary()
    assert "power for 'alliance'" in text and "engine: ols" in text and "coverage" in text
    assert not res.interrupted and res.seed == 1


def test_type_one_error_equals_alpha_ols():
    d = INDEP.replace(therapists=80, effects={"alliance": 0.0})
    res = am.power(d, "adherence ~ alliance", test="alliance", n_sims=400, seed=11, **OLS)
    assert res.truth == 0.0 and math.isnan(res.type_s_rate)
    assert abs(res.power - 0.05) < mc_tol(0.05, 400)


def test_bias_rmse_coverage_against_their_definitions():
    res = am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=200, seed=3, **OLS)
    r = res.replicates
    assert res.truth == pytest.approx(0.3, abs=1e-12) and res.truth_exact
    assert res.bias == pytest.approx(np.mean(r["estimate"] - 0.3))
    assert res.rmse == pytest.approx(math.sqrt(np.mean((r["estimate"] - 0.3) ** 2)))
    cover = np.mean((r["ci_low"] <= 0.3) & (0.3 <= r["ci_high"]))
    assert res.coverage == pytest.approx(cover)
    # the statistics themselves behave: unbiased, nominal coverage, SE ~ empirical SD
    assert abs(res.bias) < 4 * res.empirical_sd / math.sqrt(200)
    assert abs(res.coverage - 0.95) < mc_tol(0.95, 200, 3.5)
    assert res.mean_se == pytest.approx(res.empirical_sd, rel=0.2)


def test_truth_maps_standardised_effects_to_the_analysis_scale():
    d = am.Design(therapists=30, patients_per_therapist=2, sessions=2,
                  moderators={"age": "patient"},
                  effects={"alliance": 0.25, "age": -0.1, "alliance:age": 0.08})
    mu, sd = age_moments(d)
    want = {"alliance:age": 0.08 / sd, "age": -0.1 / sd, "alliance": 0.25 - 0.08 * mu / sd}
    for test, value in want.items():
        res = am.power(d, "adherence ~ alliance * age", test=test, n_sims=2, seed=1, **OLS)
        assert res.truth == pytest.approx(value, rel=1e-9) and res.truth_exact
    # a three-way interaction: the slope of alliance x autonomy changes per year of age
    d3w = d.replace(moderators={"age": "patient", "autonomy": "patient"},
                    effects={"alliance:autonomy": 0.1, "alliance:age:autonomy": 0.05})
    want3 = {"alliance:age:autonomy": 0.05 / sd, "alliance:autonomy": 0.1 - 0.05 * mu / sd,
             "alliance:age": 0.0}
    for test, value in want3.items():
        res = am.power(d3w, "adherence ~ alliance * age * autonomy", test=test, n_sims=2,
                       seed=1, **OLS)
        assert res.truth == pytest.approx(value, rel=1e-9, abs=1e-12) and res.truth_exact
    # a formula that omits a simulated term gets a projection, flagged as such
    res = am.power(d, "adherence ~ alliance", test="alliance", n_sims=2, seed=1, **OLS)
    assert not res.truth_exact and "(projection)" in res.summary()
    # treatment x moderator with arm coded 0/1
    d3 = am.Design(therapists=12, patients_per_therapist=4, sessions=2, randomisation="patient",
                   moderators={"age": "patient"}, effects={"arm": 0.3, "arm:age": 0.1})
    res = am.power(d3, "adherence ~ arm * age", test="arm:age", n_sims=2, seed=1, **OLS)
    assert res.truth == pytest.approx(0.1 / sd, rel=1e-9) and res.truth_exact
    res = am.power(d3, "adherence ~ arm * age", test="arm", n_sims=2, seed=1, **OLS)
    assert res.truth == pytest.approx(0.3 - 0.1 * mu / sd, rel=1e-9)
    # between/within split of alliance: both parts carry the alliance effect exactly
    d2 = d.replace(moderators={}, effects={"alliance": 0.25})
    res = am.power(d2, "adherence ~ alliance_pm + alliance_pmc", test="alliance_pmc", n_sims=2,
                   seed=1, **OLS)
    assert res.truth == pytest.approx(0.25) and res.truth_exact


def test_binomial_design_with_linear_model_has_no_truth():
    d = INDEP.replace(family="binomial")
    res = am.power(d, "adherence ~ alliance", test="alliance", n_sims=5, seed=1, **OLS)
    assert math.isnan(res.truth) and math.isnan(res.bias) and math.isnan(res.coverage)
    assert 0 <= res.power <= 1


def logging_ols(formula, data, *, log, **kwargs):
    """OLS that appends '<pid> <BLAS threads>' to ``log`` for every replicate it fits."""
    import os

    from threadpoolctl import threadpool_info

    blas = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {max(blas)}\n")
    return am.fit_ols(formula, data, hc=None)


def test_results_do_not_depend_on_n_jobs_or_batch_size(tmp_path, monkeypatch):
    import os

    from alliance_models.planning import executors

    kw = {**OLS, "n_sims": 24, "seed": 9}
    one = am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=5, **kw)
    pooled = {"n_jobs": 2, "method": logging_ols}
    # a short run without running workers stays in this process
    log = tmp_path / "short.log"
    monkeypatch.setattr(executors, "_running_executor", lambda workers: None)
    short = am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=5,
                     **{**kw, **pooled, "fit_kwargs": {"log": log}})
    pd.testing.assert_frame_equal(one.replicates, short.replicates)
    assert {int(line.split()[0]) for line in log.read_text().splitlines()} == {os.getpid()}
    # told that the rest is long, it starts the workers and computes here while they
    # start: the same replicates, wherever each batch ran
    log = tmp_path / "start.log"
    monkeypatch.setattr(executors, "WORKER_START_SECONDS", 0.0)
    started = am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=5,
                       **{**kw, **pooled, "fit_kwargs": {"log": log}})
    pd.testing.assert_frame_equal(one.replicates, started.replicates)
    monkeypatch.undo()
    # with workers running, every replicate runs in a loky worker process, with BLAS
    # pinned to one thread
    assert executors._running_executor(2) is not None
    log = tmp_path / "fits.log"
    two = am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=5,
                   **{**kw, **pooled, "fit_kwargs": {"log": log}})
    pd.testing.assert_frame_equal(one.replicates, two.replicates)
    rows = [line.split() for line in log.read_text().splitlines()]
    pids = [int(pid) for pid, _ in rows]
    assert len(rows) == 24 and os.getpid() not in pids
    assert {threads for _, threads in rows} == {"1"}
    other = am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=7, **kw)
    pd.testing.assert_frame_equal(one.replicates, other.replicates)
    # a different seed gives different replicates
    kw["seed"] = 10
    diff = am.power(INDEP, "adherence ~ alliance", test="alliance", **kw)
    assert not np.allclose(one.replicates["estimate"], diff.replicates["estimate"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_checkpoint_resume_does_not_repeat_work(tmp_path, suffix):
    ck = tmp_path / f"run{suffix}"
    kw = {"n_sims": 40, "seed": 5, "batch_size": 10, "method": counting_ols, "n_jobs": 1,
          "progress": False}
    full = am.power(INDEP, "adherence ~ alliance", test="alliance", **kw)
    CALLS.clear()
    INTERRUPT_AT[0] = 21  # Ctrl-C in the third batch
    try:
        with pytest.warns(AllianceModelsWarning, match=r"interrupted after 20 of 40 "
                                                       r"replicates.*rerun to resume"):
            part = am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint=ck,
                            **kw)
    finally:
        INTERRUPT_AT[0] = 0
    assert part.interrupted and part.n_completed == 20
    saved = pd.read_parquet(ck) if suffix == ".parquet" else pd.read_csv(ck)
    assert len(saved) == 20 and saved["fingerprint"].nunique() == 1
    CALLS.clear()
    resumed = am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint=ck, **kw)
    assert len(CALLS) == 20  # only the missing replicates ran
    assert not resumed.interrupted and resumed.n_completed == 40
    pd.testing.assert_frame_equal(resumed.replicates, full.replicates, check_exact=False,
                                  rtol=1e-12)
    assert resumed.power == full.power
    # a finished checkpoint: nothing left to do
    CALLS.clear()
    again = am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint=ck, **kw)
    assert len(CALLS) == 0 and again.power == full.power
    # a different run refuses the file
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint=ck,
                 **{**kw, "seed": 6})


def test_ctrl_c_returns_partial_result_with_honest_ci():
    CALLS.clear()
    with pytest.warns(AllianceModelsWarning, match="interrupted after 4 of 30 replicates"):
        res = am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=30, seed=2,
                       batch_size=2, method=ctrl_c_on_fifth, n_jobs=1, progress=False)
    assert res.interrupted and res.n_completed == 4 and res.n_sims == 30
    k = int(res.replicates["reject"].sum())
    assert res.ci == wilson_interval(k, 4)
    assert "INTERRUPTED" in res.summary()


def test_progress_bar_when_asked(capsys):
    am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=4, seed=1, batch_size=1,
             method="ols", n_jobs=1, progress=True)
    assert "power alliance" in capsys.readouterr().err


def test_input_errors():
    with pytest.raises(ModelSpecError, match=r"test 'alliance:age' is not a coefficient.*"
                                             r"coefficients: Intercept, alliance"):
        am.power(INDEP, "adherence ~ alliance", test="alliance:age", n_sims=2, **OLS)
    with pytest.raises(ModelSpecError, match="method 'lme4' is unknown"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", method="lme4")
    with pytest.raises(ModelSpecError, match="backend 'ray' is unknown"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=4, batch_size=1,
                 method="ols", n_jobs=2, backend="ray", seed=1)
    with pytest.raises(DesignError, match="checkpoint needs a fixed seed"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint="x.csv", **OLS)
    with pytest.raises(DesignError, match="must end in .parquet or .csv"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", checkpoint="x.json", seed=1,
                 **OLS)
    with pytest.raises(ModelSpecError, match="n_sims must be a positive integer"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=0)
    for bad in (0, 1.5, "2"):
        with pytest.raises(ModelSpecError, match=rf"n_jobs must be a positive number .*"
                                                 rf"got {bad!r}"):
            am.power(INDEP, "adherence ~ alliance", test="alliance", n_jobs=bad, seed=1)
    with pytest.raises(ModelSpecError, match="batch_size must be a positive integer, got 0"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", batch_size=0, **OLS)
    with pytest.raises(ModelSpecError, match="method='fast' needs"):
        am.power(INDEP, "adherence ~ alliance", test="alliance", method="fast")


def test_auto_picks_ols_without_random_terms():
    res = am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=3, seed=1,
                   method="auto", n_jobs=1, progress=False)
    assert res.method == "ols"


def test_cluster_randomised_power_agrees_with_analytic_mixed():
    # balanced two-level cluster-randomised trial analysed by REML (fit_mixed); noncentral-t
    # power from power.analytic; 80 replicates keep this fast (a plumbing check with a
    # tolerance of 3 MC SE; the 1000-replicate version is marked slow)
    d = am.Design(therapists=12, patients_per_therapist=5, sessions=1, randomisation="therapist",
                  icc_therapist=0.2, icc_patient=0.0, moderators={}, effects={"arm": 0.9})
    want = analytic.design_power(d)
    res = am.power(d, "adherence ~ arm + (1 | therapist)", test="arm", n_sims=80, seed=21,
                   method="mixed", n_jobs=1, progress=False)
    assert res.method == "mixed"
    assert abs(res.power - want) < mc_tol(want, 80)
    assert res.replicates["df"].median() == pytest.approx(10, abs=0.5)  # J - 2


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_cluster_randomised_power_agrees_with_analytic_fast():
    d = am.Design(therapists=16, patients_per_therapist=6, sessions=1, randomisation="therapist",
                  icc_therapist=0.15, icc_patient=0.0, moderators={}, effects={"arm": 0.7})
    want = analytic.design_power(d)
    res = am.power(d, "adherence ~ arm + (1 | therapist)", test="arm", n_sims=1500, seed=22,
                   n_jobs=1, progress=False)
    assert res.method == "fast"
    assert abs(res.power - want) < mc_tol(want, 1500)


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_type_one_error_clustered_fast():
    d = am.Design(therapists=20, patients_per_therapist=6, sessions=4, icc_therapist=0.1,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.0})
    res = am.power(d, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
                   test="alliance:autonomy", n_sims=1500, seed=23, n_jobs=1, progress=False)
    assert res.method == "fast"
    assert abs(res.power - 0.05) < mc_tol(0.05, 1500)
    assert res.truth == 0.0 and res.coverage == pytest.approx(0.95, abs=mc_tol(0.95, 1500))


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
@pytest.mark.parametrize(
    ("changes", "formula", "test"),
    [
        # shared layout with dropout: stacked arrays and a mask
        ({"dropout": 0.4}, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
         "alliance:autonomy"),
        # random caseloads and session counts: one layout per replicate
        ({"patients_per_therapist": ("poisson", 4), "sessions": ("negbin", 4, 3)},
         "adherence ~ alliance * autonomy + (1 | therapist/patient)", "alliance"),
        # a formulaic term (C(arm)): the data-frame route into the batched engine
        ({"randomisation": "patient", "effects": {"arm": 0.4}},
         "adherence ~ C(arm) + alliance + (1 | therapist)", "C(arm)[T.1]"),
    ],
)
def test_fast_engine_replicates_equal_fit_mixed(changes, formula, test):
    d = am.Design(therapists=10, patients_per_therapist=4, sessions=4, icc_therapist=0.15,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.1}).replace(**changes)
    kw = {"test": test, "n_sims": 4, "seed": 31, "n_jobs": 1, "progress": False}
    fast = am.power(d, formula, method="fast", **kw).replicates
    mixed = am.power(d, formula, method="mixed", **kw).replicates
    np.testing.assert_allclose(fast["estimate"], mixed["estimate"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(fast["se"], mixed["se"], rtol=1e-3)
    np.testing.assert_allclose(fast["df"], mixed["df"], rtol=1e-2)


@pytest.mark.slow
def test_cluster_randomised_power_agrees_with_analytic_mixed_slow():
    d = am.Design(therapists=16, patients_per_therapist=6, sessions=2, randomisation="therapist",
                  icc_therapist=0.15, icc_patient=0.1, moderators={}, effects={"arm": 0.7})
    want = analytic.design_power(d)
    res = am.power(d, "adherence ~ arm + (1 | therapist/patient)", test="arm", n_sims=1000,
                   seed=24, method="mixed", progress=False)
    assert abs(res.power - want) < mc_tol(want, 1000)


@pytest.mark.slow
def test_type_one_error_clustered_mixed_slow():
    d = am.Design(therapists=20, patients_per_therapist=6, sessions=4, icc_therapist=0.1,
                  effects={"alliance": 0.25, "alliance:autonomy": 0.0})
    res = am.power(d, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
                   test="alliance:autonomy", n_sims=1000, seed=25, method="mixed",
                   progress=False)
    assert abs(res.power - 0.05) < mc_tol(0.05, 1000)


def test_power_curve_table_and_plot():
    pc = am.power_curve(INDEP, "adherence ~ alliance", test="alliance",
                        vary={"therapists": [20, 90]}, n_sims=60, seed=4, **OLS)
    df = pc.to_frame()
    assert df["therapists"].tolist() == [20, 90] and list(df.columns[:2]) == ["therapists",
                                                                              "test"]
    assert pc.results[1].power > pc.results[0].power
    assert [r.design.therapists for r in pc.results] == [20, 90]
    assert "over therapists" in pc.summary()
    ax = pc.plot()
    xs = ax.lines[0].get_xdata()
    assert list(xs) == [20, 90] and ax.get_ylabel() == "power"
    with pytest.raises(DesignError, match="cannot vary 'clinics'"):
        am.power_curve(INDEP, "adherence ~ alliance", test="alliance", vary={"clinics": [1]})


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_sample_size_bisection_matches_analytic_therapist_count():
    # balanced cluster-randomised trial: the analytic answer is 22 therapists
    d = am.Design(therapists=20, patients_per_therapist=10, sessions=1, randomisation="therapist",
                  icc_therapist=0.05, icc_patient=0.0, moderators={}, effects={"arm": 0.5})
    want = analytic.cluster_randomised_therapists(0.5, patients_per_therapist=10,
                                                  icc_therapist=0.05, target=0.8)
    assert want == 22
    ss = am.sample_size(d, "adherence ~ arm + (1 | therapist)", test="arm", target=0.8,
                        vary="therapists", lo=6, hi=80, step=2, n_sims=300, seed=8, n_jobs=1,
                        progress=False)
    ev = ss.evaluations
    assert len(ev) <= math.ceil(math.log2(74 / 2)) + 2  # bisection, not a grid
    assert ev["therapists"].is_unique and (ev["therapists"] % 2 == 0).all()
    # power changes by about 0.02 per 2 therapists near 22; the MC SE is 0.023 per point
    assert ss.value is not None and abs(ss.value - want) <= 6
    assert ss.power >= 0.8 and ss.power == ev.loc[ev["therapists"] == ss.value, "power"].item()
    below = ev[ev["therapists"] < ss.value]
    assert (below["power"] < 0.8).all()  # every smaller value tried fell short
    assert abs(ss.smooth_value - want) <= 6
    assert ss.smooth_ci[0] < ss.smooth_value < ss.smooth_ci[1]
    assert "smallest therapists reaching power 0.8" in ss.summary()
    assert ss.results[0].method == "fast"


def test_sample_size_target_not_reached_warns():
    with pytest.warns(AllianceModelsWarning, match="not reached at therapists=12"):
        ss = am.sample_size(INDEP.replace(effects={"alliance": 0.05}), "adherence ~ alliance",
                            test="alliance", vary="therapists", lo=6, hi=12, n_sims=20, seed=1,
                            **OLS)
    assert ss.value is None and "not reached" in ss.summary()


@pytest.mark.slow
def test_bayes_assurance_tiny():
    d = am.Design(therapists=8, patients_per_therapist=4, sessions=2, moderators={},
                  effects={"alliance": 0.6})
    res = am.power(d, "adherence ~ alliance + (1 | therapist)", test="alliance", n_sims=2,
                   seed=1, method="bayes", n_jobs=1, progress=False,
                   bayes_kwargs={"draws": 200, "tune": 200, "chains": 2})
    assert res.method == "bayes" and res.n_completed == 2
    assert res.assurance_rule.startswith("95% interval excludes")
    assert np.isinf(res.replicates["df"]).all()


BLAS_THREADS: list[int] = []


def blas_recording_ols(formula, data, **kwargs):
    """Record the BLAS thread counts seen while a replicate is fitted."""
    from threadpoolctl import threadpool_info

    BLAS_THREADS.extend(info["num_threads"] for info in threadpool_info()
                        if info["user_api"] == "blas")
    return am.fit_ols(formula, data, hc=None)


def test_replicates_run_with_blas_pinned_to_one_thread():
    BLAS_THREADS.clear()
    am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=2, seed=1,
             method=blas_recording_ols, n_jobs=1, progress=False)
    assert BLAS_THREADS and set(BLAS_THREADS) == {1}


def test_am_power_is_a_function_and_the_analytic_names_are_public():
    # am.Design imports the planning package first; am.power is the function, and the
    # closed-form power functions (alliance_models.power.analytic before) are public names
    import subprocess
    import sys

    code = textwrap.dedent("""
        import inspect
        import alliance_models as am
        am.Design
        d = am.Design(therapists=6, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                      icc_patient=0.0, moderators={}, effects={"alliance": 0.3})
        r = am.power(d, "adherence ~ alliance", test="alliance", n_sims=2, seed=1,
                     method="ols", n_jobs=1, progress=False)
        print(r.n_completed, inspect.isfunction(am.power), am.design_effect(0.1, 2))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["2", "True", "1.1"]
    for name in analytic.__all__:
        assert name in am.__all__ and getattr(am, name) is getattr(analytic, name)


def test_gee_method_uses_the_design_family():
    d = am.Design(therapists=12, patients_per_therapist=4, sessions=3, moderators={},
                  effects={"alliance": 0.3})
    res = am.power(d, "adherence ~ alliance + (1 | therapist)", test="alliance", n_sims=6,
                   seed=1, method="gee", n_jobs=1, progress=False)
    assert res.method == "gee" and res.truth == pytest.approx(0.3) and res.failure_rate == 0
    assert np.isinf(res.replicates["df"]).all()  # z tests
    b = am.power(d.replace(family="binomial"), "completed ~ alliance + (1 | patient)",
                 test="alliance", n_sims=4, seed=1, method="gee", n_jobs=1, progress=False)
    assert b.failure_rate == 0 and math.isnan(b.truth)
    assert "not defined for this family and method" in b.summary()


def test_power_curve_checkpoints_per_value(tmp_path):
    ck = tmp_path / "curve.csv"
    kw = {"test": "alliance", "vary": {"therapists": [20, 30]}, "n_sims": 6, "seed": 4,
          "checkpoint": ck, "method": counting_ols, "n_jobs": 1, "progress": False}
    pc = am.power_curve(INDEP, "adherence ~ alliance", **kw)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["curve-therapists=20.csv", "curve-therapists=30.csv"]
    CALLS.clear()
    again = am.power_curve(INDEP, "adherence ~ alliance", **kw)
    assert CALLS == []  # everything came from the checkpoints
    pd.testing.assert_frame_equal(again.to_frame().drop(columns="elapsed"),
                                  pc.to_frame().drop(columns="elapsed"))
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power_curve(INDEP, "adherence ~ alliance", **{**kw, "seed": 5})


def test_sample_size_checkpoints_per_evaluated_size(tmp_path):
    # one file per power run of the search (one file for all would be refused as "a
    # different run" from the second evaluation on); a rerun resumes every run from it
    ck = tmp_path / "search.csv"
    d = am.Design(therapists=10, patients_per_therapist=4, randomisation="patient",
                  moderators={}, effects={"arm": 0.5})
    kw = {"test": "arm", "vary": "therapists", "lo": 4, "hi": 24, "step": 4, "n_sims": 8,
          "seed": 3, "checkpoint": ck, "method": counting_ols, "n_jobs": 1,
          "progress": False}
    res = am.sample_size(d, "adherence ~ arm", **kw)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"search-therapists={v}.csv" for v in res.evaluations["therapists"])
    assert len(files) >= 2
    CALLS.clear()
    again = am.sample_size(d, "adherence ~ arm", **kw)
    assert CALLS == []  # every evaluation came from its checkpoint
    assert again.value == res.value


def test_joint_sample_size_checkpoints_per_pair(tmp_path):
    ck = tmp_path / "joint.parquet"
    d = am.Design(therapists=10, patients_per_therapist=4, randomisation="patient",
                  moderators={}, effects={"arm": 0.5})
    kw = {"test": "arm", "vary": ("therapists", "patients_per_therapist"),
          "cost": {"therapist": 5.0, "patient": 1.0},
          "lo": {"therapists": 4, "patients_per_therapist": 2},
          "hi": {"therapists": 16, "patients_per_therapist": 4}, "step": {"therapists": 4},
          "n_sims": 8, "seed": 3, "checkpoint": ck, "method": counting_ols, "n_jobs": 1,
          "progress": False}
    res = am.sample_size(d, "adherence ~ arm", **kw)
    ev = res.evaluations
    want = sorted(f"joint-therapists={t}-patients_per_therapist={n}.parquet"
                  for t, n in zip(ev["therapists"], ev["patients_per_therapist"], strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == want
    CALLS.clear()
    am.sample_size(d, "adherence ~ arm", **kw)
    assert CALLS == []


def test_sample_size_checks_the_search_range_first():
    d = am.Design(therapists=10, patients_per_therapist=4, randomisation="patient",
                  effects={"arm": 0.3})
    with pytest.raises(DesignError, match="at least 2 patients"):
        am.sample_size(d, "adherence ~ arm", test="arm", vary="patients_per_therapist", lo=1,
                       hi=20, n_sims=5, seed=1, **OLS)
    with pytest.raises(DesignError, match="need integers 1 <= lo <= hi"):
        am.sample_size(d, "adherence ~ arm", test="arm", vary="therapists", lo=20, hi=10)


def flaky_ols(formula, data, **kwargs):
    """Fails (singular matrix) on every third call."""
    CALLS.append(1)
    if len(CALLS) % 3 == 0:
        raise np.linalg.LinAlgError("Singular matrix")
    return am.fit_ols(formula, data, hc=None)


def test_failed_fits_are_recorded_not_raised():
    CALLS.clear()
    res = am.power(INDEP, "adherence ~ alliance", test="alliance", n_sims=9, seed=1,
                   method=flaky_ols, n_jobs=1, progress=False)
    r = res.replicates
    assert res.n_completed == 9 and res.failure_rate == pytest.approx(3 / 9)
    assert r["failed"].sum() == 3 and (r.loc[r["failed"], "error"] ==
                                       "LinAlgError: Singular matrix").all()
    assert not r.loc[r["failed"], "reject"].any()  # failures count as non-rejections
    assert res.power == r["reject"].sum() / 9
    assert res.nonconvergence_rate == pytest.approx(3 / 9)
    # diagnosands use the successful fits only
    ok = r[~r["failed"]]
    assert res.bias == pytest.approx((ok["estimate"] - res.truth).mean())


class _FakeBayesFit:
    def __init__(self, draws):
        self.fixed_draws = pd.DataFrame({"alliance": draws})
        self.converged = True


@pytest.mark.parametrize(
    ("rule", "rope", "threshold", "shift", "want"),
    [
        ("interval", 0.0, 0.975, 3.0, True),  # interval well above 0
        ("interval", 0.0, 0.975, 1.0, False),  # interval covers 0
        ("interval", 2.5, 0.975, 3.0, False),  # clears 0 but not the ROPE [-2.5, 2.5]
        ("pd", 0.0, 0.80, 1.0, True),  # P(direction) about 0.84
        ("pd", 0.0, 0.90, 1.0, False),
    ],
)
def test_bayes_assurance_rules(rule, rope, threshold, shift, want):
    from scipy import stats

    from alliance_models.planning.run import _bayes_record, _Job

    draws = stats.norm.ppf((np.arange(4000) + 0.5) / 4000) + shift  # N(shift, 1) quantiles
    job = _Job(design=INDEP, formula="adherence ~ alliance", test="alliance", test_index=1,
               x_names=("Intercept", "alliance"), method="bayes", alpha=0.05,
               bayes_rule=rule, threshold=threshold, rope=rope)
    rec = _bayes_record(job, 0, _FakeBayesFit(draws), True)
    assert rec["reject"] is want
    assert rec["ci_low"] == pytest.approx(shift - 1.96, abs=5e-3)  # 4000-point grid
    assert rec["p_value"] == pytest.approx(2 * stats.norm.sf(shift), abs=1e-3)


def test_attendance_counts_are_simulated():
    d = am.Design(therapists=6, patients_per_therapist=3, sessions=4, family="binomial",
                  counts="attendance")
    df = am.simulate(d, 3)
    assert {"attended", "scheduled"} <= set(df.columns) and "completed" not in df
    assert (df["scheduled"] == 1).all() and set(df["attended"].unique()) <= {0, 1}


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_sample_size_over_caseload_is_monotone_in_the_evaluations():
    d = am.Design(therapists=16, patients_per_therapist=4, sessions=1, randomisation="therapist",
                  icc_therapist=0.05, icc_patient=0.0, moderators={}, effects={"arm": 0.5})
    ss = am.sample_size(d, "adherence ~ arm + (1 | therapist)", test="arm", target=0.7,
                        lo=2, hi=40, n_sims=200, seed=2, n_jobs=1, progress=False)
    assert ss.vary == "patients_per_therapist"
    ev = ss.evaluations.sort_values("patients_per_therapist")
    # common random numbers: the estimates rise with the caseload (allowing MC wiggle)
    assert (np.diff(ev["power"]) > -0.05).all()
    # analytic power at the answer and one below brackets the target within MC error
    kw = {"therapists": 16, "icc_therapist": 0.05}
    at = analytic.cluster_randomised_power(0.5, patients_per_therapist=ss.value, **kw)
    below = analytic.cluster_randomised_power(0.5, patients_per_therapist=ss.value - 1, **kw)
    assert at >= 0.7 - mc_tol(0.7, 200) and below <= 0.7 + mc_tol(0.7, 200)


def test_progress_bar_appears_on_its_own_only_for_long_runs(capsys, monkeypatch):
    from alliance_models.planning import run

    kw = {"test": "alliance", "n_sims": 6, "seed": 1, "batch_size": 1, "method": "ols",
          "fit_kwargs": {"hc": None}, "n_jobs": 1}
    am.power(INDEP, "adherence ~ alliance", **kw)  # progress=None, a short run: no bar
    assert "power alliance" not in capsys.readouterr().err

    class SlowClock:
        """A clock on which every reading is 3 s after the previous one."""

        t = 0.0

        def perf_counter(self):
            self.t += 3.0
            return self.t

    monkeypatch.setattr(run, "time", SlowClock())
    am.power(INDEP, "adherence ~ alliance", **kw)  # first batch looks 3 s long: 5 more
    assert "power alliance" in capsys.readouterr().err


def test_singular_rate_and_type_s_rate_against_their_definitions():
    from scipy import stats

    from alliance_models._random import spawn as spawn_seeds
    from alliance_models.planning.simulate import simulate_arrays

    # one-way random-intercept model with no therapist variance: REML puts the therapist
    # SD at 0 exactly when the ANOVA F = MSB / MSW is <= 1 (balanced design), so every
    # replicate's singular flag is known from its data
    d = am.Design(therapists=8, patients_per_therapist=5, sessions=1, icc_therapist=0.0,
                  icc_patient=0.0, moderators={}, effects={"alliance": 0.0})
    res = am.power(d, "adherence ~ 1 + (1 | therapist)", test="Intercept", n_sims=40, seed=3,
                   method="mixed", n_jobs=1, progress=False)
    f_stats = []
    for ss in spawn_seeds(np.random.SeedSequence(3), 40):
        sa = simulate_arrays(d, ss)
        y, g = sa.columns["adherence"], sa.therapist
        means = np.bincount(g, y) / np.bincount(g)
        msb = 5 * np.sum((means - y.mean()) ** 2) / 7
        msw = np.sum((y - means[g]) ** 2) / 32
        f_stats.append(msb / msw)
    f_stats = np.array(f_stats)
    np.testing.assert_array_equal(res.replicates["singular"].to_numpy(), f_stats <= 1)
    assert res.singular_rate == pytest.approx(np.mean(f_stats <= 1))
    p_sing = stats.f.cdf(1, 7, 32)  # about 0.55
    assert abs(res.singular_rate - p_sing) < mc_tol(p_sing, 40, 4)
    # type-S: among rejections, the share with the wrong sign (small true effect)
    small = am.power(INDEP.replace(effects={"alliance": 0.05}), "adherence ~ alliance",
                     test="alliance", n_sims=300, seed=7, **OLS)
    r = small.replicates
    rej = r[r["reject"]]
    assert len(rej) > 0 and (rej["estimate"] < 0).any()
    assert small.type_s_rate == pytest.approx(np.mean(rej["estimate"] < 0))


def test_checkpoint_fingerprint_covers_the_whole_seed(tmp_path):
    ck = tmp_path / "run.csv"
    kw = {"test": "alliance", "n_sims": 4, "checkpoint": ck, **OLS}
    am.power(INDEP, "adherence ~ alliance", seed=[1, 2], **kw)
    again = am.power(INDEP, "adherence ~ alliance", seed=[1, 2], **kw)  # same run: resumes
    assert again.n_completed == 4
    # seeds given as sequences, or SeedSequence children with the same entropy, are
    # different runs
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power(INDEP, "adherence ~ alliance", seed=[3, 4], **kw)
    ck.unlink()
    a, b = np.random.SeedSequence(8).spawn(2)
    am.power(INDEP, "adherence ~ alliance", seed=a, **kw)
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power(INDEP, "adherence ~ alliance", seed=b, **kw)


def test_curve_and_sample_size_input_errors():
    f = "adherence ~ alliance"
    with pytest.raises(DesignError, match=r"vary must be a mapping with one design field.*"
                                          r"got \{'therapists': \[10\], 'sessions': \[2\]\}"):
        am.power_curve(INDEP, f, test="alliance", vary={"therapists": [10], "sessions": [2]})
    with pytest.raises(DesignError, match=r"vary\['therapists'\] holds no values"):
        am.power_curve(INDEP, f, test="alliance", vary={"therapists": []})
    CALLS.clear()
    with pytest.raises(DesignError, match="therapists must be a positive integer.*got 0"):
        am.power_curve(INDEP, f, test="alliance", vary={"therapists": [10, 0]}, seed=1,
                       method=counting_ols, n_jobs=1)
    assert CALLS == []  # checked before simulating the first value
    with pytest.raises(DesignError, match=r"target power must be in \(0, 1\), got 1.2"):
        am.sample_size(INDEP, f, test="alliance", target=1.2, vary="therapists")
    with pytest.raises(DesignError, match="cannot vary 'clinics': not a Design field"):
        am.sample_size(INDEP, f, test="alliance", vary="clinics")
    with pytest.raises(DesignError, match=r"icc_therapist must be in \[0, 1\), got 1"):
        am.sample_size(INDEP, f, test="alliance", vary="icc_therapist", lo=1, hi=2)


# --- the fast path's bookkeeping (vectorised Wald tests, batches) --------------------

def test_wald_columns_equal_scipy_distributions_replicate_by_replicate():
    # the vectorised p-values and intervals use the special functions behind
    # scipy.stats.t / norm; compared with the frozen distributions at 1e-12 (they agree
    # to the last bit in practice), including z tests (df missing, infinite or <= 0) and
    # failed records (non-finite estimate, SE zero, negative or non-finite)
    from scipy import stats

    from alliance_models.planning.results import REPLICATE_COLUMNS
    from alliance_models.planning.run import _wald_columns, _wald_record

    rng = np.random.default_rng(4)
    n = 400
    est = rng.normal(0, 2, n)
    se = rng.uniform(0.05, 3, n)
    df = rng.choice([0.7, 1.0, 2.5, 8.0, 57.3, 1e6], n) * rng.uniform(0.9, 1.1, n)
    df[::17] = np.inf
    df[1::23] = np.nan
    df[2::29] = -3.0
    df[3::31] = 0.0
    est[5::37] = np.nan
    est[6::41] = np.inf
    se[7::43] = 0.0
    se[8::47] = -1.0
    se[9::53] = np.nan
    conv = rng.random(n) < 0.9
    sing = rng.random(n) < 0.2
    alpha = 0.05
    cols = _wald_columns(np.arange(n), est, se, df, alpha, conv, sing)
    assert set(cols) == set(REPLICATE_COLUMNS) and all(len(v) == n for v in cols.values())
    n_failed = 0
    for i in range(n):
        ok = np.isfinite(est[i]) and np.isfinite(se[i]) and se[i] > 0
        assert bool(cols["converged"][i]) == conv[i] and bool(cols["singular"][i]) == sing[i]
        if not ok:
            n_failed += 1
            assert cols["failed"][i] and not cols["reject"][i]
            assert cols["error"][i] == "non-finite estimate or standard error"
            assert all(np.isnan(cols[c][i]) for c in
                       ("estimate", "se", "df", "p_value", "ci_low", "ci_high"))
            continue
        d = df[i] if np.isfinite(df[i]) and df[i] > 0 else np.inf
        dist = stats.norm if np.isinf(d) else stats.t(d)
        p = 2 * dist.sf(abs(est[i] / se[i]))
        q = dist.ppf(1 - alpha / 2)
        assert cols["df"][i] == d and not cols["failed"][i] and cols["error"][i] == ""
        assert cols["p_value"][i] == pytest.approx(p, rel=1e-12, abs=1e-300)
        assert cols["ci_low"][i] == pytest.approx(est[i] - q * se[i], rel=1e-12, abs=1e-12)
        assert cols["ci_high"][i] == pytest.approx(est[i] + q * se[i], rel=1e-12, abs=1e-12)
        assert bool(cols["reject"][i]) == (p < alpha)
    assert 20 < n_failed < 60 and 0 < cols["reject"].sum() < n - n_failed
    # one replicate as a record: plain Python scalars, the same numbers
    rec = _wald_record(3, 1.2, 0.5, None, 0.1, True, False)
    assert rec["df"] == math.inf and isinstance(rec["reject"], bool)
    assert rec["p_value"] == pytest.approx(2 * stats.norm.sf(2.4), rel=1e-12)
    assert rec["ci_high"] == pytest.approx(1.2 + stats.norm.ppf(0.95) * 0.5, rel=1e-12)


R1_DESIGN = am.Design(therapists=30, patients_per_therapist=8, sessions=6,
                      moderators={"age": "patient", "autonomy": "patient"},
                      effects={"alliance": 0.25, "autonomy": 0.1, "alliance:autonomy": 0.1})
R1_FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_fast_batches_are_memory_chunks_and_do_not_change_results(monkeypatch):
    from alliance_models.formula import parse_formula
    from alliance_models.models.lmm import batch_fit as fast
    from alliance_models.planning import run as engine

    spec = parse_formula(R1_FORMULA)
    seeds = np.random.SeedSequence(1).spawn(1)
    *_, x_names, first = engine._truth(R1_DESIGN, spec, "fast", {}, seeds[0],
                                       "alliance:autonomy")
    cap = engine._stacked_cap(R1_DESIGN, spec, x_names, first)
    # design R1: 1,440 rows, 6 coefficients, 240 patients in 30 therapists, 6 sessions;
    # random intercepts are fitted from sums (no rows in the working set)
    # a batch from sums holds up to _SUMS_BATCH_MEMORY (128 MB) of working set
    assert cap == fast.chunk_size(1440, 6, 240, 30, 6, sums=True,
                                  memory=engine._SUMS_BATCH_MEMORY) == 1538
    assert fast.chunk_size(1440, 6, 240, 30, 6, sums=True) == 769  # 64 MB
    assert fast.chunk_size(1440, 6, 240, 30, 6) == 457  # with the rows (fit_batch)
    # at most one chunk per batch; with several workers a multiple of them (each batch
    # still holding _MIN_STACKED replicates), sizes as equal as possible
    size = engine._default_batch_size
    assert size("fast", 20000, cap) == 1429  # 14 batches
    assert size("fast", 20000, cap, workers=2) == 1429  # 14, even already
    assert size("fast", 20000, cap, workers=4) == 1250  # 16
    assert size("fast", 2000, cap) == 1000  # 2 batches
    assert size("fast", 2000, cap, workers=2) == 1000
    assert size("fast", 2000, cap, workers=4) == 500  # one batch per worker
    assert size("fast", 1000, cap, workers=2) == 500
    assert size("fast", 1000, cap, workers=8) == 1000  # 8 x 125 too small: one batch
    assert size("fast", 399, cap, workers=2) == 399  # under 2 x 200: one batch
    assert size("fast", 400, cap, workers=2) == 200
    # random caseloads (one layout per replicate) and data-frame formulas keep the
    # small batches of the replicate-by-replicate route
    varying = R1_DESIGN.replace(patients_per_therapist=("poisson", 8))
    assert engine._stacked_cap(varying, spec, x_names, first) is None
    arm_spec = parse_formula("adherence ~ C(arm) + alliance + (1 | therapist)")
    assert engine._stacked_cap(R1_DESIGN, arm_spec, ("Intercept", "C(arm)[T.1]", "alliance"),
                               first) is None
    assert engine._default_batch_size("fast", 2000, None) == 50

    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.2})
    f = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
    kw = {"test": "alliance:autonomy", "n_sims": 60, "seed": 12, "progress": False}
    sizes: list[int] = []
    real = engine.run_batch

    def spy(job, reps, seeds):
        sizes.append(len(reps))
        return real(job, reps, seeds)

    monkeypatch.setattr(engine, "run_batch", spy)
    one = am.power(d, f, n_jobs=1, **kw)
    assert one.method == "fast" and sizes == [60]  # one batch: the chunk holds all 60
    sizes.clear()
    small = am.power(d, f, n_jobs=1, batch_size=13, **kw)
    assert sizes == [13, 13, 13, 13, 8]
    pd.testing.assert_frame_equal(one.replicates, small.replicates)
    monkeypatch.setattr(engine, "run_batch", real)
    # in loky worker processes (started for the run if none is running): the same
    # replicates
    from alliance_models.planning import executors

    monkeypatch.setattr(executors, "WORKER_START_SECONDS", 0.0)
    pooled = am.power(d, f, n_jobs=2, batch_size=13, **kw)
    pd.testing.assert_frame_equal(one.replicates, pooled.replicates)
    assert one.replicates["df"].between(1, 200).all() and not one.replicates["failed"].any()


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_fast_replicate_by_replicate_route_keeps_order_and_records_failures(monkeypatch):
    # when the stacked call is not possible, replicates are fitted one at a time; a
    # replicate whose fit fails is recorded as failed in its place, the others equal the
    # stacked fits
    from alliance_models.errors import ModelSpecError as MSE
    from alliance_models.models.lmm import batch_fit as fast
    from alliance_models.planning import run as engine

    d = am.Design(therapists=8, patients_per_therapist=4, sessions=3,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.2})
    f = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
    kw = {"test": "alliance:autonomy", "n_sims": 9, "seed": 13, "n_jobs": 1,
          "progress": False}
    stacked = am.power(d, f, **kw).replicates

    def no_stack(*args, **kwargs):
        raise MSE("no stacking in this test")

    real_fit = fast.fit_batch
    calls: list[int] = []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) in (2, 6):
            raise np.linalg.LinAlgError("singular matrix in this test")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(engine, "batch_sums", no_stack)
    monkeypatch.setattr(engine, "batch_arrays", no_stack)
    monkeypatch.setattr(fast, "fit_batch", flaky_fit)
    res = am.power(d, f, **kw)
    one = res.replicates
    assert len(calls) == 9 and one["rep"].tolist() == list(range(9))
    bad = one["failed"].to_numpy()
    assert bad.tolist() == [i in (1, 5) for i in range(9)]
    assert (one.loc[bad, "error"] == "LinAlgError: singular matrix in this test").all()
    assert one.loc[bad, ["estimate", "se", "p_value"]].isna().all().all()
    assert not one.loc[bad, "reject"].any() and not one.loc[bad, "converged"].any()
    assert (one.loc[~bad, "error"] == "").all()
    pd.testing.assert_frame_equal(one.loc[~bad], stacked.loc[~bad], rtol=1e-8)
    assert res.failure_rate == pytest.approx(2 / 9)
    assert list(one.dtypes) == list(stacked.dtypes)


def test_blas_limit_is_undone_after_each_batch():
    from threadpoolctl import threadpool_info

    from alliance_models.planning.executors import limit_blas as _limit_blas

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    for _ in range(2):  # the second use reuses the cached controller
        with _limit_blas():
            assert blas_threads() == {1}
        assert blas_threads() == before


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
def test_parallel_config_threads_keep_blas_pinned_and_restore_it(monkeypatch):
    # the user's joblib.parallel_config chooses the backend: threads of this process
    # here, every batch with BLAS pinned to one thread, the limit undone afterwards
    import threading

    from joblib import parallel_config
    from threadpoolctl import threadpool_info

    from alliance_models.planning import run

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen: list[tuple[set[int], str]] = []
    real = run.run_batch

    def spy(job, reps, seeds):
        seen.append((blas_threads(), threading.current_thread().name))
        return real(job, reps, seeds)

    monkeypatch.setattr(run, "run_batch", spy)
    before = blas_threads()
    d = am.Design(therapists=6, patients_per_therapist=3, sessions=3,
                  effects={"alliance": 0.3})
    kw = {"test": "alliance", "n_sims": 12, "batch_size": 2, "seed": 3, "progress": False}
    f = "adherence ~ alliance + (1 | therapist/patient)"
    with parallel_config(backend="threading"):
        threaded = am.power(d, f, n_jobs=2, **kw)
    assert len(seen) == 6 and all(s == {1} for s, _ in seen)
    assert threading.current_thread().name not in {name for _, name in seen}
    assert blas_threads() == before
    monkeypatch.setattr(run, "run_batch", real)
    pd.testing.assert_frame_equal(threaded.replicates, am.power(d, f, n_jobs=1, **kw).replicates)


@pytest.mark.skipif(not HAS_FAST, reason=NO_FAST)
@pytest.mark.parametrize("random, groups", [
    ("(1 | therapist/patient)", ("therapist", "patient")),
    ("(1 | therapist)", ("therapist", None)),
    ("(1 | patient)", ("patient", None)),
])
def test_stacked_fast_route_fits_the_simulator_sums_as_fit_batch_fits_x_and_y(random, groups):
    # the stacked route fits the simulator's sums (fit_sums, no X); the same replicates
    # as X, Y through fit_batch give the same tests to rounding
    from alliance_models._random import SeedBlock
    from alliance_models.models.lmm.batch_fit import fit_batch
    from alliance_models.planning.simulate import batch_arrays

    d = am.Design(therapists=8, patients_per_therapist=4, sessions=4, dropout=0.3,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.2})
    res = am.power(d, f"adherence ~ alliance * autonomy + {random}", test="alliance:autonomy",
                   n_sims=12, seed=4, n_jobs=1, progress=False)
    assert res.method == "fast"
    names = ("Intercept", "alliance", "autonomy", "alliance:autonomy")
    X, Y, ther, pat, mask, _ = batch_arrays(
        d, "adherence", names, SeedBlock(np.random.SeedSequence(4), range(12)), sims=False)
    codes = {"therapist": ther, "patient": pat, None: None}
    ref = fit_batch(X, Y, codes[groups[0]], codes[groups[1]], mask=mask, contrast=3)
    reps = res.replicates
    np.testing.assert_allclose(reps["estimate"], ref.estimate, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reps["se"], ref.estimate_se, rtol=1e-9)
    np.testing.assert_allclose(reps["df"], ref.df, rtol=1e-7)


def test_logistic_crossing_of_separated_powers_is_open_ended():
    # powers that jump from ~0 to 1 between two sizes (few replicates) make the slope
    # of the logistic fit huge; its interval runs off the scale and must come back as an
    # open interval (it raised OverflowError in math.exp before)
    from alliance_models.planning.search import _logistic_crossing

    x, n = np.array([4.0, 8.0, 12.0]), np.full(3, 8.0)
    mid, (lo, hi) = _logistic_crossing(x, np.array([0.0, 1.0, 8.0]), n, 0.8)
    assert 8 < mid < 12 and lo == 0.0 and hi == math.inf
    mid, (lo, hi) = _logistic_crossing(x, np.array([1.0, 7.0, 8.0]), n, 0.8)
    assert 4 < lo < mid < hi < 12  # an ordinary crossing keeps a finite interval
