"""The therapist-level random slope of alliance in Design and the simulator.

``Design(alliance_slope_sd=s, alliance_slope_correlation=rho)`` gives therapist ``t`` the
alliance slope ``beta_alliance + w_t``, ``w_t ~ N(0, s^2)`` correlated ``rho`` with the
therapist intercept. Monte Carlo checks, each with its bound stated where it is made:
the batched slope engine recovers the variance components on average; power for the
fixed alliance slope falls as the slope variance rises (random-slope analysis); under
the null the random-intercept-only analysis rejects too often while the random-slope
analysis holds alpha.
"""

import math
import warnings

import numpy as np
import pytest

import alliance_models as am
from alliance_models.errors import DesignError
from alliance_models.models.lmm import batch_fit as fast
from alliance_models.planning.simulate import batch_arrays, simulate_arrays

SLOPE = "adherence ~ alliance + (1 + alliance | therapist) + (1 | therapist:patient)"
INTERCEPTS = "adherence ~ alliance + (1 | therapist/patient)"
BASE = am.Design(therapists=20, patients_per_therapist=6, sessions=6, moderators={},
                 icc_therapist=0.1, effects={"alliance": 0.15})


def _power(design, formula, n_sims, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular fits (slope variance 0) per replicate
        return am.power(design, formula, test="alliance", n_sims=n_sims, seed=seed,
                        n_jobs=1, progress=False)


def test_no_slope_is_the_default_and_a_slope_changes_only_the_outcome():
    d = am.Design(therapists=5, patients_per_therapist=3, sessions=4, randomisation="patient",
                  effects={"alliance": 0.2, "arm": 0.3})
    assert d.alliance_slope_sd == 0.0 and d.alliance_slope_correlation == 0.0
    a = simulate_arrays(d, 11)
    b = simulate_arrays(d.replace(alliance_slope_sd=0.3, alliance_slope_correlation=-0.4), 11)
    for c in a.columns:
        if c == "adherence":
            assert not np.allclose(a.columns[c], b.columns[c])
        else:
            np.testing.assert_array_equal(a.columns[c], b.columns[c])
    np.testing.assert_array_equal(a.eta, b.eta)  # the fixed part (and so the truth)
    # the difference is w_t * alliance with one w_t per therapist
    diff = b.columns["adherence"] - a.columns["adherence"]
    w = diff / a.columns["alliance"]
    for t in range(5):
        np.testing.assert_allclose(w[a.therapist == t], w[a.therapist == t][0], rtol=1e-9)


def test_slope_in_binomial_designs_and_on_ragged_grids():
    d = am.Design(therapists=6, patients_per_therapist=("poisson", 4), sessions=("negbin", 5, 3),
                  family="binomial", effects={"alliance": 0.2})
    a = simulate_arrays(d, 3)
    b = simulate_arrays(d.replace(alliance_slope_sd=0.5), 3)
    np.testing.assert_array_equal(a.columns["alliance"], b.columns["alliance"])
    assert not np.array_equal(a.columns["completed"], b.columns["completed"])
    # a patient-level-only fixed part (no alliance effect) still gets the slope
    c = simulate_arrays(d.replace(effects={}, alliance_slope_sd=0.5), 3)
    assert not np.array_equal(c.columns["completed"],
                              simulate_arrays(d.replace(effects={}), 3).columns["completed"])


def test_describe_names_the_slope():
    assert "alliance slope SD=0.2 (correlation 0.5)" in BASE.replace(
        alliance_slope_sd=0.2, alliance_slope_correlation=0.5).describe()
    assert "slope" not in BASE.describe()


@pytest.mark.parametrize("changes, match", [
    ({"alliance_slope_sd": -0.1}, "alliance_slope_sd must be >= 0"),
    ({"alliance_slope_sd": float("nan")}, "alliance_slope_sd must be a finite number"),
    ({"alliance_slope_sd": 0.1, "alliance_slope_correlation": 1.5},
     r"alliance_slope_correlation must be in \[-1, 1\]"),
    ({"alliance_slope_correlation": 0.3}, "needs a random slope"),
    ({"alliance_slope_sd": 0.1, "alliance_slope_correlation": 0.3, "icc_therapist": 0.0},
     "icc_therapist > 0"),
])
def test_slope_fields_are_validated(changes, match):
    with pytest.raises(DesignError, match=match):
        BASE.replace(**changes)


def test_batched_slope_engine_recovers_the_variance_components_on_average():
    # 200 replicates; each mean REML estimate within 4 Monte Carlo SEs of the truth
    # (REML's small-sample bias at these sizes is well below that: with this seed the
    # means lie within 1.4 MC SEs)
    sd, rho = 0.3, 0.5
    d = BASE.replace(therapists=30, alliance_slope_sd=sd, alliance_slope_correlation=rho,
                     effects={"alliance": 0.3})
    seeds = np.random.SeedSequence(5).spawn(200)
    X, Y, ther, pat, _, _ = batch_arrays(d, "adherence", ("Intercept", "alliance"), seeds,
                                         sims=False)
    bf = fast.fit_batch(X, Y, ther, pat, contrast=1, slope=1)
    assert bf.converged.all()
    truth = {"intercept": d.icc_therapist, "cov": rho * sd * math.sqrt(d.icc_therapist),
             "slope": sd**2, "patient": d.icc_patient}
    for j, (name, value) in enumerate(truth.items()):
        est = bf.tau2[:, j]
        mcse = est.std(ddof=1) / math.sqrt(est.size)
        assert abs(est.mean() - value) <= 4 * mcse, (name, est.mean(), value, mcse)
    s2 = bf.sigma2
    assert abs(s2.mean() - (1 - d.icc_therapist - d.icc_patient)) <= 4 * s2.std() / math.sqrt(
        s2.size)


def test_power_for_alliance_falls_as_the_slope_variance_rises():
    # common random numbers: the same replicates' other draws; the drop must exceed 3 SEs
    # of the paired difference of rejection rates
    n = 300
    r0 = _power(BASE, SLOPE, n, 1)
    r1 = _power(BASE.replace(alliance_slope_sd=0.2), SLOPE, n, 1)
    assert r0.method == r1.method == "fast"
    a, b = r0.replicates["reject"].to_numpy(), r1.replicates["reject"].to_numpy()
    diff = a.mean() - b.mean()
    se = math.sqrt(max(np.mean((a.astype(float) - b) ** 2) - diff**2, 1e-12) / n)
    assert diff > 3 * se, (r0.power, r1.power, se)
    # the fixed slope is still estimated without bias (4 MC SEs of the mean estimate)
    est = r1.replicates["estimate"]
    assert abs(est.mean() - 0.15) <= 4 * est.std() / math.sqrt(n)


def test_type_one_error_of_the_alliance_slope_needs_the_random_slope():
    # no fixed alliance effect, therapists' slopes SD 0.25: a random-intercept analysis
    # treats the therapists' slopes as independent information and rejects too often
    # (its 95% Wilson interval lies above alpha); the random-slope analysis (Satterthwaite
    # df) stays within 3 MC SEs of alpha = 0.05
    n = 1000
    null = BASE.replace(effects={"alliance": 0.0}, alliance_slope_sd=0.25)
    ri = _power(null, INTERCEPTS, n, 2)
    rs = _power(null, SLOPE, n, 2)
    assert ri.method == rs.method == "fast"
    assert ri.ci[0] > 0.05, ri.power
    assert abs(rs.power - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / n), rs.power
