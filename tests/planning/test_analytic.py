import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestIndPower

import alliance_models as am
from alliance_models.errors import DesignError
from alliance_models.planning import analytic


def test_design_effect_closed_form():
    assert analytic.design_effect(0.05, 10) == pytest.approx(1.45)
    assert analytic.design_effect(0.0, 30) == 1.0
    with pytest.raises(DesignError, match="icc must be in"):
        analytic.design_effect(1.0, 5)


@pytest.mark.parametrize(("d", "j"), [(0.5, 40), (0.8, 20), (0.3, 100)])
def test_no_clustering_reduces_to_two_sample_t_test(d, j):
    # independent implementation: statsmodels' two-sample t-test power
    ours = analytic.cluster_randomised_power(d, therapists=j, patients_per_therapist=1,
                                             icc_therapist=0.0)
    ref = TTestIndPower().power(effect_size=d, nobs1=j // 2, alpha=0.05, ratio=1.0)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_two_level_equals_t_test_on_cluster_means():
    # analysing J cluster means: effect in units of the SD of a cluster mean
    d, j, n, icc = 0.4, 24, 8, 0.1
    ours = analytic.cluster_randomised_power(d, therapists=j, patients_per_therapist=n,
                                             icc_therapist=icc)
    sd_mean = math.sqrt(icc + (1 - icc) / n)
    ref = TTestIndPower().power(effect_size=d / sd_mean, nobs1=j // 2, alpha=0.05)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert analytic.cluster_randomised_se(
        therapists=j, patients_per_therapist=n, icc_therapist=icc
    ) == pytest.approx(math.sqrt(analytic.design_effect(icc, n) / n * 4 / j))


def test_three_level_variance_from_explicit_covariance_matrix():
    # Var of one therapist's mean computed from the full covariance of its n*m rows
    n, m, it, ip = 4, 3, 0.1, 0.3
    pat = np.repeat(np.arange(n), m)
    V = it + ip * (pat[:, None] == pat[None, :]) + (1 - it - ip) * np.eye(n * m)
    var_mean = V.sum() / (n * m) ** 2
    se = analytic.cluster_randomised_se(therapists=(5, 7), patients_per_therapist=n,
                                        icc_therapist=it, sessions=m, icc_patient=ip)
    assert se == pytest.approx(math.sqrt(var_mean * (1 / 5 + 1 / 7)), rel=1e-12)


def test_noncentral_t_power_against_direct_simulation():
    # simulate therapist means and run scipy's t test; 20000 replicates, vectorised
    d, j, n, icc = 0.6, 16, 6, 0.15
    ours = analytic.cluster_randomised_power(d, therapists=j, patients_per_therapist=n,
                                             icc_therapist=icc)
    rng = np.random.default_rng(2024)
    R = 20_000
    sd_mean = math.sqrt(icc + (1 - icc) / n)
    a = rng.normal(0.0, sd_mean, size=(R, j // 2))
    b = rng.normal(d, sd_mean, size=(R, j // 2))
    p = stats.ttest_ind(a, b, axis=1).pvalue
    rate = float(np.mean(p < 0.05))
    mcse = math.sqrt(ours * (1 - ours) / R)
    assert abs(rate - ours) < 4 * mcse


def test_alpha_at_zero_effect_and_monotone_in_therapists():
    assert analytic.noncentral_t_power(0.0, 12, 0.05) == pytest.approx(0.05, abs=1e-12)
    pw = [analytic.cluster_randomised_power(0.4, therapists=j, patients_per_therapist=10,
                                            icc_therapist=0.05) for j in (10, 20, 40, 80)]
    assert pw == sorted(pw)


def test_required_therapists_is_the_smallest_even_count():
    j = analytic.cluster_randomised_therapists(0.4, patients_per_therapist=10,
                                               icc_therapist=0.05, target=0.8)
    kw = {"patients_per_therapist": 10, "icc_therapist": 0.05}
    assert j % 2 == 0
    assert analytic.cluster_randomised_power(0.4, therapists=j, **kw) >= 0.8
    assert analytic.cluster_randomised_power(0.4, therapists=j - 2, **kw) < 0.8


def test_design_power_from_a_design():
    d = am.Design(therapists=(10, 14), patients_per_therapist=6, sessions=3,
                  randomisation="therapist", icc_therapist=0.1, icc_patient=0.2,
                  effects={"arm": 0.5})
    want = analytic.cluster_randomised_power(0.5, therapists=(10, 14), patients_per_therapist=6,
                                             icc_therapist=0.1, sessions=3, icc_patient=0.2)
    assert analytic.design_power(d) == want


def test_design_power_refuses_designs_without_a_closed_form():
    d = am.Design(therapists=20, randomisation="patient", effects={"arm": 0.3, "alliance": 0.2},
                  dropout=0.1)
    with pytest.raises(DesignError, match="randomisation is not 'therapist'.*no dropout"
                                          ".*non-zero effects other than arm"):
        analytic.design_power(d)


def test_bad_inputs():
    with pytest.raises(DesignError, match="at least one therapist per arm"):
        analytic.cluster_randomised_power(0.3, therapists=(0, 5), patients_per_therapist=3,
                                          icc_therapist=0.1)
    with pytest.raises(DesignError, match="sum below 1"):
        analytic.cluster_randomised_se(therapists=10, patients_per_therapist=3,
                                       icc_therapist=0.6, icc_patient=0.5)
    with pytest.raises(DesignError, match=r"alpha must lie in \(0, 1\)"):
        analytic.noncentral_t_power(1.0, 10, alpha=1.5)


# R 4.2.2, stats::power.t.test on therapist means (strict = TRUE: both tails):
#   sd <- sqrt(it + ip / n + (1 - it - ip) / (n * m))
#   power.t.test(n = J / 2, delta = d, sd = sd, sig.level = 0.05, type = "two.sample",
#                alternative = "two.sided", strict = TRUE)$power
R_POWER_T_TEST = [
    # d, J, n, m, icc_therapist, icc_patient, R power
    (0.5, 20, 10, 1, 0.05, 0.0, 0.792911758611374),
    (0.4, 24, 8, 1, 0.10, 0.0, 0.528858124030337),
    (0.6, 16, 6, 3, 0.15, 0.2, 0.664014909636282),
    (0.3, 60, 12, 2, 0.08, 0.3, 0.884668034675549),
]


@pytest.mark.parametrize(("d", "j", "n", "m", "it", "ip", "want"), R_POWER_T_TEST)
def test_cluster_randomised_power_matches_r_power_t_test(d, j, n, m, it, ip, want):
    got = analytic.cluster_randomised_power(d, therapists=j, patients_per_therapist=n,
                                            sessions=m, icc_therapist=it, icc_patient=ip)
    assert got == pytest.approx(want, rel=1e-7)


def test_design_power_refuses_random_alliance_slopes():
    d = am.Design(therapists=20, randomisation="therapist", effects={"arm": 0.3},
                  alliance_slope_sd=0.1)
    with pytest.raises(DesignError, match=r"random alliance slopes \(alliance_slope_sd > 0\)"):
        analytic.design_power(d)


def test_optimal_caseload_is_the_classic_square_root_rule():
    # m = 1, no patient share: n* = sqrt((c_t / c_p) (1 - icc) / icc) (Raudenbush 1997)
    for ratio, icc in [(10.0, 0.05), (2.5, 0.2), (100.0, 0.01)]:
        want = math.sqrt(ratio * (1 - icc) / icc)
        assert analytic.optimal_caseload(ratio, icc_therapist=icc) == pytest.approx(want)
    # it minimises (a + b / n) (c_t + c_p n) on a fine grid of the continuous caseload
    a, ip, m, ratio = 0.08, 0.25, 4, 7.0
    b = ip + (1 - a - ip) / m
    n = np.linspace(0.5, 60, 200_001)
    grid_min = n[np.argmin((a + b / n) * (ratio + n))]
    got = analytic.optimal_caseload(ratio, icc_therapist=a, sessions=m, icc_patient=ip)
    assert got == pytest.approx(grid_min, abs=1e-3)
    assert analytic.optimal_caseload(3.0, icc_therapist=0.0) == math.inf
    with pytest.raises(DesignError, match="cost_ratio .* must be a positive finite number"):
        analytic.optimal_caseload(0.0, icc_therapist=0.05)


@pytest.mark.parametrize(("effect", "cost", "it", "m", "ip"), [
    (0.5, (2000.0, 300.0), 0.05, 1, 0.0),
    (0.4, (500.0, 500.0), 0.1, 4, 0.3),
    (0.6, (8000.0, 100.0), 0.02, 2, 0.1),
])
def test_cluster_randomised_optimum_equals_a_full_grid(effect, cost, it, m, ip):
    kw = {"icc_therapist": it, "sessions": m, "icc_patient": ip}
    got = analytic.cluster_randomised_optimum(effect, cost=cost, target=0.8, **kw)
    best = None
    for n in range(1, 81):
        for j in range(4, 401, 2):
            if analytic.cluster_randomised_power(effect, therapists=j,
                                                 patients_per_therapist=n, **kw) >= 0.8:
                key = (j * (cost[0] + cost[1] * n), j, n)
                best = key if best is None or key < best else best
                break  # the smallest j at this n is the cheapest
    assert got == (best[1], best[2], best[0])
    # the integer optimum's caseload lies near the continuous one
    n_star = analytic.optimal_caseload(cost[0] / cost[1], **kw)
    assert abs(got[1] - n_star) <= 0.5 * n_star + 1


def test_cluster_randomised_optimum_input_errors():
    with pytest.raises(DesignError, match=r"cost = \(per therapist, per patient\)"):
        analytic.cluster_randomised_optimum(0.5, cost=(-1.0, 1.0), icc_therapist=0.05)
    with pytest.raises(DesignError, match="not reached with 20 therapists"):
        analytic.cluster_randomised_optimum(0.1, cost=(1.0, 1.0), icc_therapist=0.2,
                                            max_therapists=20, max_patients=10)
