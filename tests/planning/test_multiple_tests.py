"""Several tests in one power run: ``am.power(test=[...], correction=...)``.

References: ``statsmodels.stats.multitest.multipletests`` for the corrections; the
single-test run of each term (same seed) for the records of a list; Monte Carlo error
bounds (binomial SE of the replicate count) for the family-wise type-I error.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

import alliance_models as am
from alliance_models.cli.power_file import run_power_file
from alliance_models.errors import DesignError, ModelSpecError
from alliance_models.planning.multitest import (
    MULTI_REPLICATE_COLUMNS,
    adjust_frame,
    adjust_pvalues,
)
from alliance_models.planning.results import REPLICATE_COLUMNS

SM = {"bonferroni": "bonferroni", "holm": "holm", "bh": "fdr_bh"}
OLS = {"method": "ols", "fit_kwargs": {"hc": None}, "n_jobs": 1, "progress": False}
SMALL = am.Design(therapists=12, patients_per_therapist=4, sessions=3,
                  effects={"alliance": 0.3, "autonomy": 0.15, "alliance:autonomy": 0.0})
CLUSTERED = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
TERMS = ["alliance", "autonomy", "alliance:autonomy"]


# --- the corrections against statsmodels --------------------------------------------

def _p_sets(rng: np.random.Generator) -> list[np.ndarray]:
    """Random families of p-values, with ties, p = 1, p = 0 and tiny p-values."""
    sets = []
    for m in (1, 2, 3, 5, 10, 25):
        sets.append(rng.uniform(size=(40, m)))  # continuous, no ties
        sets.append(np.round(rng.uniform(size=(40, m)), 2))  # many ties
        tie = rng.uniform(size=(40, m))
        tie[:, : max(1, m // 2)] = tie[:, :1]  # a block of equal p-values per row
        sets.append(tie)
        edge = rng.uniform(size=(40, m)) ** 4  # small p-values
        edge[rng.uniform(size=(40, m)) < 0.3] = 1.0
        edge[rng.uniform(size=(40, m)) < 0.05] = 0.0
        sets.append(edge)
    sets.append(np.ones((3, 4)))  # every p = 1
    sets.append(np.full((3, 4), 0.01))  # all tied
    return sets


@pytest.fixture
def quick_holm(monkeypatch):
    """statsmodels' Holm branch calls gc.collect() on every call (tens of ms in a large
    test process); skipping the collection does not change its results."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


@pytest.mark.parametrize("correction", ["bonferroni", "holm", "bh"])
def test_adjusted_p_values_equal_multipletests(correction, quick_holm):
    rng = np.random.default_rng(14)
    alpha = 0.05
    for P in _p_sets(rng):
        ours = adjust_pvalues(P, correction)
        assert ours.shape == P.shape
        for row, adj in zip(P, ours, strict=True):
            reject, sm_adj, *_ = multipletests(row, alpha=alpha, method=SM[correction])
            # same arithmetic as statsmodels: equal up to the last bits
            np.testing.assert_allclose(adj, sm_adj, rtol=1e-13, atol=0)
            # decisions: ours reject at adjusted p < alpha, statsmodels at <= alpha;
            # they agree wherever an adjusted p-value is not alpha itself
            away = sm_adj != alpha
            np.testing.assert_array_equal((adj < alpha)[away], reject[away])
        # a 1-d family is one row
        np.testing.assert_array_equal(adjust_pvalues(P[0], correction), ours[0])


def test_no_correction_and_bad_p_values():
    p = np.array([[0.2, 0.01, 1.0]])
    np.testing.assert_array_equal(adjust_pvalues(p, None), p)
    with pytest.raises(ModelSpecError, match=r"lie in \[0, 1\]"):
        adjust_pvalues(np.array([0.1, np.nan]), "holm")
    with pytest.raises(ModelSpecError, match="correction 'sidak' is unknown; allowed: None, "
                                             "'bonferroni', 'holm', 'bh'"):
        adjust_pvalues(p, "sidak")


def test_adjust_frame_counts_a_failed_test_as_p_one():
    reps = pd.DataFrame({
        "rep": [0, 0, 0, 1, 1, 1], "test": ["a", "b", "c"] * 2,
        "p_value": [0.01, np.nan, 0.02, 0.001, 0.3, 0.04],
    })
    for c in REPLICATE_COLUMNS:
        if c not in reps:
            reps[c] = False if c in ("reject", "converged", "singular", "failed") else (
                "" if c == "error" else 0.0)
    out = adjust_frame(reps, ["a", "b", "c"], "holm", 0.05)
    assert list(out.columns) == list(MULTI_REPLICATE_COLUMNS)
    _, sm0, *_ = multipletests([0.01, 1.0, 0.02], method="holm")
    _, sm1, *_ = multipletests([0.001, 0.3, 0.04], method="holm")
    adj = out["p_adjusted"].to_numpy()
    np.testing.assert_allclose(adj[[0, 2]], sm0[[0, 2]], rtol=1e-13)
    assert math.isnan(adj[1]) and not out["reject"].iloc[1]
    np.testing.assert_allclose(adj[3:], sm1, rtol=1e-13)
    assert out["reject"].tolist() == [True, False, True, True, False, False]
    with pytest.raises(ValueError, match="ordered by replicate"):
        adjust_frame(reps.iloc[::-1], ["a", "b", "c"], "holm", 0.05)


# --- a list of tests equals the single-test runs --------------------------------------

def _same_records(multi: am.MultiPowerResult, single: am.PowerResult) -> None:
    term = single.test
    sub = multi.per_test[term].replicates
    pd.testing.assert_frame_equal(sub, single.replicates, check_exact=True)
    assert multi.per_test[term].power == single.power
    assert multi.per_test[term].truth == single.truth
    assert multi.per_test[term].bias == single.bias or (
        math.isnan(single.bias) and math.isnan(multi.per_test[term].bias))
    long = multi.replicates[multi.replicates["test"] == term].reset_index(drop=True)
    np.testing.assert_array_equal(long["p_adjusted"], long["p_value"])  # correction=None


def _custom_ols(formula, data, **kwargs):
    return am.fit_ols(formula, data, hc=None)


ROUTES = [
    # batched engine, stacked (fixed layout, dropout as a mask)
    pytest.param(SMALL.replace(dropout=0.2), CLUSTERED, {"n_jobs": 1}, 30, id="fast-stacked"),
    # batched engine replicate by replicate (ragged sessions)
    pytest.param(SMALL.replace(sessions=("negbin", 3, 4)), CLUSTERED, {"n_jobs": 1}, 8,
                 id="fast-per-replicate"),
    # batched engine with a random slope
    pytest.param(SMALL, "adherence ~ alliance * autonomy + (1 + alliance | therapist) + "
                 "(1 | therapist:patient)", {"n_jobs": 1}, 12, id="fast-slope"),
    pytest.param(SMALL, "adherence ~ alliance * autonomy", OLS, 12, id="ols"),
    pytest.param(SMALL, "adherence ~ alliance * autonomy", {**OLS, "method": _custom_ols}, 6,
                 id="custom"),
    pytest.param(SMALL, CLUSTERED.replace("therapist/patient", "therapist"),
                 {"method": "mixed", "n_jobs": 1}, 4, id="mixed"),
    pytest.param(SMALL, "adherence ~ alliance * autonomy",
                 {"method": "gee", "n_jobs": 1, "fit_kwargs": {"groups": "therapist"}}, 4,
                 id="gee"),
    pytest.param(am.Design(therapists=10, patients_per_therapist=4, sessions=4,
                           family="binomial", counts="attendance", trials=4,
                           effects={"alliance": 0.4}),
                 "attended ~ alliance * autonomy + (1 | therapist/patient)", {"n_jobs": 1}, 12,
                 id="glmm-batched"),
    pytest.param(am.Design(therapists=10, patients_per_therapist=4, sessions=4,
                           family="binomial", counts="attendance", trials=4,
                           effects={"alliance": 0.4}),
                 "attended ~ alliance * autonomy + (1 | therapist/patient)",
                 {"n_jobs": 1, "method": "mixed"}, 3, id="glmm-per-replicate"),
]


@pytest.mark.parametrize(("design", "formula", "kw", "n"), ROUTES)
def test_each_test_of_a_list_equals_its_single_run(design, formula, kw, n):
    kw = {"progress": False, **kw}
    multi = am.power(design, formula, test=TERMS, correction=None, n_sims=n, seed=7, **kw)
    assert isinstance(multi, am.MultiPowerResult) and multi.tests == tuple(TERMS)
    assert list(multi.replicates.columns) == list(MULTI_REPLICATE_COLUMNS)
    assert len(multi.replicates) == n * len(TERMS)
    for term in TERMS:
        single = am.power(design, formula, test=term, n_sims=n, seed=7, **kw)
        assert isinstance(single, am.PowerResult)
        assert list(single.replicates.columns) == list(REPLICATE_COLUMNS)
        assert single.method == multi.method
        _same_records(multi, single)


def test_glmm_refits_keep_each_test_equal_to_its_single_run(monkeypatch):
    # replicates the batched Laplace engine marks are refitted by fit_mixed, one record
    # per test in the right rows
    import dataclasses

    from alliance_models.models.glmm import batched as glmm

    real = glmm.fit_glmm_batch

    def marking(*args, **kwargs):
        bf = real(*args, **kwargs)
        status = bf.status.copy()
        status[1::3] = "marked by the test"
        return dataclasses.replace(bf, status=status)

    monkeypatch.setattr(glmm, "fit_glmm_batch", marking)
    design = am.Design(therapists=10, patients_per_therapist=4, sessions=4,
                       family="binomial", counts="attendance", trials=4,
                       effects={"alliance": 0.4})
    formula = "attended ~ alliance * autonomy + (1 | therapist/patient)"
    kw = {"n_sims": 6, "seed": 9, "n_jobs": 1, "progress": False}
    multi = am.power(design, formula, test=TERMS, **kw)
    assert multi.method == "fast"
    for term in TERMS:
        _same_records(multi, am.power(design, formula, test=term, **kw))
    # the refitted replicates are fit_mixed's (replicate 1 of the batch)
    mixed = am.power(design, formula, test=TERMS, method="mixed", **kw)
    a = multi.replicates[multi.replicates["rep"] == 1].reset_index(drop=True)
    b = mixed.replicates[mixed.replicates["rep"] == 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_list_under_a_robustness_scenario():
    sc = am.Scenario.preset("pessimistic")
    kw = {"n_sims": 10, "seed": 6, "n_jobs": 1, "progress": False, "scenario": sc}
    multi = am.power(SMALL, CLUSTERED, test=TERMS, **kw)
    assert multi.scenario is sc and "scenario pessimistic" in multi.summary()
    for term in TERMS:
        single = am.power(SMALL, CLUSTERED, test=term, **kw)
        _same_records(multi, single)
        assert multi.per_test[term].scenario is sc
    with pytest.raises(ModelSpecError, match="scenarios side by side compare one test"):
        am.power(SMALL, CLUSTERED, test=TERMS, scenarios=True, n_sims=4, n_jobs=1)


def test_single_string_test_is_unchanged_by_correction():
    a = am.power(SMALL, CLUSTERED, test="alliance", n_sims=10, seed=3, n_jobs=1,
                 progress=False)
    b = am.power(SMALL, CLUSTERED, test="alliance", correction="holm", n_sims=10, seed=3,
                 n_jobs=1, progress=False)
    assert type(a) is type(b) is am.PowerResult
    pd.testing.assert_frame_equal(a.replicates, b.replicates, check_exact=True)


# --- family-wise power and its order --------------------------------------------------

@pytest.mark.parametrize("correction", [None, "bonferroni", "holm", "bh"])
def test_all_le_each_le_any_and_corrections_are_nested(correction, quick_holm):
    res = am.power(SMALL, CLUSTERED, test=TERMS, correction=correction, n_sims=60, seed=2,
                   n_jobs=1, progress=False)
    per = [res.per_test[t].power for t in TERMS]
    assert res.power_all <= min(per) <= max(per) <= res.power_any
    rej = res.replicates["reject"].to_numpy(bool).reshape(-1, len(TERMS))
    assert res.power_all == rej.all(axis=1).mean() and res.power_any == rej.any(axis=1).mean()
    assert res.ci_all == am.planning.results.wilson_interval(int(rej.all(axis=1).sum()), 60)
    # decisions are those of multipletests on each replicate's p-values
    P = res.replicates["p_value"].to_numpy(float).reshape(-1, len(TERMS))
    for p_row, r_row in zip(P, rej, strict=True):
        expect = (p_row < 0.05 if correction is None else
                  multipletests(p_row, alpha=0.05, method=SM[correction])[0])
        np.testing.assert_array_equal(r_row, expect)
    assert res.null_tests == ("alliance:autonomy",)
    null_col = rej[:, TERMS.index("alliance:autonomy")]
    assert res.familywise_error == null_col.mean()
    frame = res.to_frame()
    assert frame["test"].tolist() == [*TERMS, "all", "any", "familywise_error"]
    assert frame["kind"].tolist() == ["test"] * 3 + ["family"] * 3
    assert frame.loc[frame["test"] == "all", "power"].item() == res.power_all
    text = res.summary()
    for t in TERMS:
        assert t in text
    assert "all tests reject" in text and "at least one rejects" in text
    assert "family-wise type-I error over the null terms (alliance:autonomy)" in text


def test_corrections_order_per_test_power():
    kw = {"n_sims": 60, "seed": 4, "n_jobs": 1, "progress": False, "test": TERMS}
    runs = {c: am.power(SMALL, CLUSTERED, correction=c, **kw) for c in
            (None, "bh", "holm", "bonferroni")}
    for t in TERMS:
        p = {c: r.per_test[t].power for c, r in runs.items()}
        # Bonferroni <= Holm <= BH <= none, replicate by replicate
        assert p["bonferroni"] <= p["holm"] <= p["bh"] <= p[None]


# --- family-wise type-I error under the global null -----------------------------------

NULL = am.Design(therapists=60, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                 icc_patient=0.0, effects={})


@pytest.mark.slow
def test_familywise_type_one_error_is_at_most_alpha(tmp_path):
    # three exact OLS t tests under the global null; one set of records (checkpointed
    # before the correction) serves every correction
    n = 4000
    kw = {"test": ["alliance", "autonomy", "age"], "n_sims": n, "seed": 31,
          "batch_size": 100, "checkpoint": tmp_path / "null.parquet", **OLS}
    se = math.sqrt(0.05 * 0.95 / n)
    for c in ("bonferroni", "holm"):
        res = am.power(NULL, "adherence ~ alliance + autonomy + age", correction=c, **kw)
        assert res.null_tests == ("alliance", "autonomy", "age")
        fw = res.familywise_error
        # FWER <= alpha, and near it for weakly dependent tests (1 - (1 - alpha/3)^3 =
        # 0.0492 under independence); 3.3 SE is a 0.1% miss rate
        assert fw <= 0.05 + 3.3 * se, c
        assert abs(fw - 0.05) <= 3.3 * se, c
    # the uncorrected family exceeds alpha by far (about 1 - 0.95^3 = 0.143)
    raw = am.power(NULL, "adherence ~ alliance + autonomy + age", correction=None, **kw)
    assert raw.familywise_error > 0.05 + 10 * se


def test_familywise_type_one_error_near_alpha_fast_engine(tmp_path):
    # global null in a clustered design, batched engine (Satterthwaite df); the records
    # are checkpointed before the correction, so the other corrections reuse them
    d = am.Design(therapists=20, patients_per_therapist=4, sessions=3, effects={})
    n = 1000
    kw = {"test": TERMS, "n_sims": n, "seed": 33, "n_jobs": 1, "progress": False,
          "checkpoint": tmp_path / "null.parquet"}
    runs = {c: am.power(d, CLUSTERED, correction=c, **kw) for c in ("holm", "bonferroni",
                                                                     None)}
    se = math.sqrt(0.05 * 0.95 / n)
    for c in ("holm", "bonferroni"):
        assert runs[c].null_tests == tuple(TERMS)
        assert abs(runs[c].familywise_error - 0.05) <= 3.3 * se, c
        assert runs[c].power_any == runs[c].familywise_error  # every test is null
    # under the global null Holm rejects some test exactly when Bonferroni does
    np.testing.assert_array_equal(
        runs["holm"].replicates["reject"].to_numpy(bool).reshape(n, -1).any(axis=1),
        runs["bonferroni"].replicates["reject"].to_numpy(bool).reshape(n, -1).any(axis=1))
    assert runs[None].familywise_error > 0.05 + 5 * se  # about 1 - 0.95^3 = 0.14


# --- checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_checkpoint_round_trips_multi_test_records(tmp_path, suffix):
    ck = tmp_path / f"multi{suffix}"
    kw = {"seed": 5, "n_jobs": 1, "progress": False, "batch_size": 10, "test": TERMS}
    full = am.power(SMALL, CLUSTERED, correction="holm", n_sims=30, **kw)
    part = am.power(SMALL, CLUSTERED, correction="holm", n_sims=20, checkpoint=ck, **kw)
    assert part.n_completed == 20
    saved = pd.read_parquet(ck) if suffix == ".parquet" else pd.read_csv(ck)
    assert len(saved) == 20 * len(TERMS) and set(saved["test"]) == set(TERMS)
    # resumed: the 20 saved replicates are read back, 10 more are run
    resumed = am.power(SMALL, CLUSTERED, correction="holm", n_sims=30, checkpoint=ck, **kw)
    pd.testing.assert_frame_equal(resumed.replicates, full.replicates, check_exact=False,
                                  rtol=1e-12, atol=0)
    assert resumed.power_all == full.power_all and resumed.power_any == full.power_any
    # the records are saved before the correction, so another correction resumes too
    bh = am.power(SMALL, CLUSTERED, correction="bh", n_sims=30, checkpoint=ck, **kw)
    fresh = am.power(SMALL, CLUSTERED, correction="bh", n_sims=30, **kw)
    assert bh.power_all == fresh.power_all
    # a single-test run (or other tests) refuses the file
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power(SMALL, CLUSTERED, test="alliance", n_sims=30, checkpoint=ck, seed=5,
                 n_jobs=1, progress=False)
    with pytest.raises(DesignError, match="belongs to a different run"):
        am.power(SMALL, CLUSTERED, **{**kw, "test": TERMS[:2]}, n_sims=30, checkpoint=ck)


# --- bad input ------------------------------------------------------------------------

def test_bad_input_names_the_value_and_what_is_allowed():
    kw = {"n_sims": 2, "seed": 1, **OLS}
    f = "adherence ~ alliance * autonomy"
    with pytest.raises(ModelSpecError, match=r"test 'alliance:age' is not a coefficient of "
                                             r".*coefficients: Intercept, alliance, autonomy"):
        am.power(SMALL, f, test=["alliance", "alliance:age"], **kw)
    with pytest.raises(ModelSpecError, match="test lists 'alliance' more than once"):
        am.power(SMALL, f, test=["alliance", "autonomy", "alliance"], **kw)
    with pytest.raises(ModelSpecError, match="correction 'fdr' is unknown; allowed: None, "
                                             "'bonferroni', 'holm', 'bh'"):
        am.power(SMALL, f, test=["alliance", "autonomy"], correction="fdr", **kw)
    with pytest.raises(ModelSpecError, match="test is an empty list"):
        am.power(SMALL, f, test=[], **kw)
    with pytest.raises(ModelSpecError, match="must be coefficient names"):
        am.power(SMALL, f, test=["alliance", 3], **kw)
    with pytest.raises(ModelSpecError, match="method='bayes' tests one coefficient per run"):
        am.power(SMALL, f, test=["alliance", "autonomy"], method="bayes", n_sims=2)
    res = am.power(SMALL, f, test=["alliance", "autonomy"], **kw)
    with pytest.raises(ModelSpecError, match="power of 'age' is unknown; allowed: 'all', "
                                             "'any', 'alliance', 'autonomy'"):
        res.power_of("age")


# --- curves, sample size, report, CLI -------------------------------------------------

def test_power_curve_of_several_tests():
    pc = am.power_curve(SMALL, CLUSTERED, test=TERMS[:2], correction="bonferroni",
                        vary={"therapists": [8, 16]}, n_sims=20, seed=1, n_jobs=1,
                        progress=False)
    assert all(isinstance(r, am.MultiPowerResult) for r in pc.results)
    frame = pc.to_frame()
    assert frame["therapists"].tolist() == [8] * 4 + [16] * 4
    assert frame["test"].tolist() == [*TERMS[:2], "all", "any"] * 2
    text = pc.summary()
    assert "2 tests" in text and "bonferroni" in text
    import matplotlib

    matplotlib.use("Agg")
    ax = pc.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [*TERMS[:2], "all (all tests reject)", "any (at least one rejects)"]


def test_sample_size_targets_all_any_or_one_test():
    kw = {"test": TERMS[:2], "correction": "holm", "vary": "therapists", "lo": 4, "hi": 40,
          "n_sims": 30, "seed": 2, "n_jobs": 1, "progress": False}
    d = SMALL.replace(effects={"alliance": 0.4, "autonomy": 0.25})
    with pytest.warns(am.FewClustersWarning):
        res = {of: am.sample_size(d, CLUSTERED, target_of=of, **kw)
               for of in ("all", "any", "autonomy")}
    for of, r in res.items():
        assert r.target_of == of
        found = r.results[list(r.evaluations["therapists"]).index(r.value)]
        assert r.power == found.power_of(of)[0] >= 0.8
        assert (r.evaluations["power"] == r.evaluations[f"power[{of}]"]).all()
    # 'all' needs at least as many therapists as any single test, 'any' at most
    assert res["any"].value <= res["autonomy"].value <= res["all"].value
    assert "all tests rejecting" in res["all"].summary()
    with pytest.raises(ModelSpecError, match="target_of 'both' is unknown; allowed: 'all', "
                                             "'any', 'alliance', 'autonomy'"):
        am.sample_size(d, CLUSTERED, target_of="both", **kw)


def test_joint_sample_size_records_and_names_its_target():
    kw = {"test": TERMS[:2], "correction": "holm",
          "vary": ("therapists", "patients_per_therapist"),
          "cost": {"therapist": 4.0, "patient": 1.0},
          "lo": {"therapists": 4, "patients_per_therapist": 2},
          "hi": {"therapists": 24, "patients_per_therapist": 3}, "step": {"therapists": 4},
          "n_sims": 20, "seed": 2, "n_jobs": 1, "progress": False}
    d = SMALL.replace(effects={"alliance": 0.4, "autonomy": 0.25})
    with pytest.warns(am.FewClustersWarning):
        res = am.sample_size(d, CLUSTERED, target_of="any", **kw)
    assert res.target_of == "any"
    assert "(at least one test rejecting)" in res.summary()


def test_report_shows_the_per_test_and_family_rows(tmp_path):
    res = am.power(SMALL, CLUSTERED, test=TERMS, correction="holm", n_sims=10, seed=1,
                   n_jobs=1, progress=False)
    page = am.report(tmp_path, power=res).read_text(encoding="utf-8")
    section = page.split('<section id="power">')[1].split("</section>")[0]
    assert "all tests reject" in section
    for name in (*TERMS, "familywise_error", "holm"):
        assert name in section


def test_power_file_accepts_a_list_of_tests_and_a_correction(tmp_path):
    f = tmp_path / "design.toml"
    f.write_text(textwrap.dedent("""
        [design]
        therapists = 30
        patients_per_therapist = 1
        sessions = 1
        icc_therapist = 0.0
        icc_patient = 0.0
        effects = { alliance = 0.3 }

        [analysis]
        formula = "adherence ~ alliance + autonomy"
        test = ["alliance", "autonomy"]
        correction = "bonferroni"
        n_sims = 8
        method = "ols"
        seed = 3
        n_jobs = 1
        progress = false
    """))
    res = run_power_file(f)
    assert isinstance(res, am.MultiPowerResult)
    assert res.tests == ("alliance", "autonomy") and res.correction == "bonferroni"
    f.write_text(f.read_text().replace('"bonferroni"', '"sidak"'))
    with pytest.raises(ModelSpecError, match="correction 'sidak' is unknown"):
        run_power_file(f)
