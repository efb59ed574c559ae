"""fit_gee's working-correlation estimators against geepack 1.3.9 and closed forms.

References: tests/r/gee_geepack_reference.R (R 4.2.2, geepack 1.3.9) on
tests/r/gee_geepack_data.csv (60 patients with 2-8 sessions, 1-6 scheduled sessions per
row, so trials vary within and between clusters) and lme4's cbpp (herds of 1-4 periods,
herd sizes varying). "tight": geese.control(epsilon = 1e-12), geepack's converged
solution; "default": geepack's own tolerance (1e-4 on the parameter steps).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import DataValidationError
from alliance_models.models.gee import (
    ar1_correlation,
    exchangeable_correlation,
    working_dispersion,
)

R_DIR = Path(__file__).parent / "r"
CASES = ["binomial_independence", "binomial_exchangeable", "binomial_ar1",
         "gaussian_independence", "gaussian_exchangeable", "gaussian_ar1",
         "cbpp_exchangeable", "cbpp_ar1"]


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "gee_geepack_reference.csv")


@pytest.fixture(scope="module")
def att() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "gee_geepack_data.csv")


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "cbpp_data.csv")


def _fit(case: str, att: pd.DataFrame, cbpp: pd.DataFrame, **kw) -> am.GEEFit:
    data, cs = case.split("_")
    if data == "cbpp":
        return am.fit_gee("incidence ~ C(period)", cbpp, trials="size", groups="herd",
                          cov_struct=cs, waves="period", **kw)
    if data == "binomial":
        return am.fit_gee("attended ~ alliance * age_c + (1 | patient)", att,
                          trials="scheduled", cov_struct=cs, waves="session", **kw)
    return am.fit_gee("score ~ alliance * age_c + (1 | patient)", att, family="gaussian",
                      cov_struct=cs, waves="session", **kw)


@pytest.mark.parametrize("case", CASES)
def test_geepack_estimator_matches_geeglm(ref, att, cbpp, case):
    # the same estimating equations solved to convergence on both sides: measured
    # agreement ~1e-12; the tolerances leave room for other BLAS kernels
    r = ref[(ref.case == case) & (ref.control == "tight")]
    fit = _fit(case, att, cbpp)
    assert fit.cor_estimator == "geepack"
    np.testing.assert_allclose(fit.params.to_numpy(), r["estimate"], rtol=1e-8)
    np.testing.assert_allclose(fit.to_frame()["se"].to_numpy(), r["se"], rtol=1e-8)
    assert fit.working_correlation == pytest.approx(float(r["alpha"].iloc[0]),
                                                    rel=1e-7, abs=1e-12)
    assert fit.dispersion == pytest.approx(float(r["gamma"].iloc[0]), rel=1e-8)


@pytest.mark.parametrize("case", CASES)
def test_geepack_at_its_default_tolerance(ref, att, cbpp, case):
    # what a user of geeglm's defaults sees: geepack stops when its steps fall below
    # 1e-4, so its estimates sit up to ~1.2e-4 (relative) from the converged solution
    r = ref[(ref.case == case) & (ref.control == "default")]
    fit = _fit(case, att, cbpp)
    np.testing.assert_allclose(fit.params.to_numpy(), r["estimate"], rtol=5e-4, atol=1e-6)
    np.testing.assert_allclose(fit.to_frame()["se"].to_numpy(), r["se"], rtol=1e-4)
    assert fit.working_correlation == pytest.approx(float(r["alpha"].iloc[0]), rel=1e-3,
                                                    abs=1e-12)


def test_moment_estimator_differs_only_through_the_trials(att):
    # gaussian (one "trial" per row): the two exchangeable estimators are the same
    # equations; binomial with varying trials: they differ
    f = "score ~ alliance * age_c + (1 | patient)"
    a = am.fit_gee(f, att, family="gaussian")
    b = am.fit_gee(f, att, family="gaussian", cor_estimator="moment")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10)
    assert a.working_correlation == pytest.approx(b.working_correlation, rel=1e-10)
    f = "attended ~ alliance * age_c + (1 | patient)"
    a = am.fit_gee(f, att, trials="scheduled")
    b = am.fit_gee(f, att, trials="scheduled", cor_estimator="moment")
    assert abs(a.working_correlation - b.working_correlation) > 0.01
    # equal trials everywhere: the same again
    eq = att.assign(scheduled=6)
    a = am.fit_gee(f, eq, trials="scheduled")
    b = am.fit_gee(f, eq, trials="scheduled", cor_estimator="moment")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10)
    assert "geepack estimator" in a.summary() and "moment estimator" in b.summary()


def test_ar1_waves_default_to_row_order(att):
    # the data are sorted by session within patient, so row order = session number
    f = "score ~ alliance + (1 | patient)"
    a = am.fit_gee(f, att, family="gaussian", cov_struct="ar1", waves="session")
    b = am.fit_gee(f, att, family="gaussian", cov_struct="ar1")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12)
    # shuffled rows with waves= give the same fit; without waves= they would not
    shuffled = att.sample(frac=1.0, random_state=3)
    c = am.fit_gee(f, shuffled, family="gaussian", cov_struct="ar1", waves="session")
    np.testing.assert_allclose(a.params, c.params, rtol=1e-9)
    assert c.working_correlation == pytest.approx(a.working_correlation, rel=1e-9)


def test_ar1_gap_in_waves_counts_as_distance(att):
    # a session that is not observed for a patient: the distance is the difference
    # of session numbers, so dropping a middle session keeps the other distances
    d = att[~((att.patient == 1) & (att.session == 2))]
    t = d.loc[d.patient == 1, "session"].to_numpy()
    assert 2 not in t and 3 in t
    fit = am.fit_gee("score ~ alliance + (1 | patient)", d, family="gaussian",
                     cov_struct="ar1", waves="session")
    cs = fit.result.model.cov_struct
    R = cs.correlation(0)
    rho = fit.working_correlation
    assert R[0, 1] == pytest.approx(rho ** (t[1] - t[0]), rel=1e-12)


def test_waves_errors(att):
    d = att.copy()
    d.loc[d.index[1], "session"] = 1  # patient 1 has session 1 twice
    with pytest.raises(DataValidationError,
                       match=r"'session' \(waves\) repeats the value 1 within cluster '1'"):
        am.fit_gee("score ~ alliance + (1 | patient)", d, family="gaussian",
                   cov_struct="ar1", waves="session")
    with pytest.raises(DataValidationError, match=r"'when' \(waves\) must hold numbers"):
        am.fit_gee("score ~ alliance + (1 | patient)", att.assign(when="x"),
                   family="gaussian", cov_struct="ar1", waves="when")
    with pytest.raises(am.ModelSpecError, match=r"waves='sesion' is not a column.*'session'"):
        am.fit_gee("score ~ alliance + (1 | patient)", att, family="gaussian",
                   cov_struct="ar1", waves="sesion")


# -- the numpy estimators against brute-force loops ---------------------------------------
def _clusters(seed: int):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=7)
    r = [rng.normal(size=k) for k in sizes]
    n = [rng.integers(1, 7, size=k).astype(float) for k in sizes]
    t = [np.sort(rng.choice(np.arange(1.0, 10.0), size=k, replace=False)) for k in sizes]
    return r, n, t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimators_by_hand(seed):
    r, n, t = _clusters(seed)
    num_g = sum(float(ni @ ri**2) for ri, ni in zip(r, n, strict=True))
    phi_g = num_g / sum(ni.sum() for ni in n)
    phi_m = num_g / sum(ri.size for ri in r)
    assert working_dispersion(r, n) == pytest.approx(phi_g, rel=1e-12)
    assert working_dispersion(r, n, "moment") == pytest.approx(phi_m, rel=1e-12)
    pairs = [(ri[j], ri[k], ni[j], ni[k], abs(ti[k] - ti[j]))
             for ri, ni, ti in zip(r, n, t, strict=True)
             for j, k in combinations(range(ri.size), 2)]
    ex_g = (sum(nj * nk * rj * rk for rj, rk, nj, nk, _ in pairs)
            / (phi_g * sum(nj * nk for _, _, nj, nk, _ in pairs)))
    ex_m = sum(np.sqrt(nj * nk) * rj * rk for rj, rk, nj, nk, _ in pairs) / (phi_m * len(pairs))
    assert exchangeable_correlation(r, n, phi_g) == pytest.approx(ex_g, rel=1e-12)
    assert exchangeable_correlation(r, n, phi_m, "moment") == pytest.approx(ex_m, rel=1e-12)
    lag1 = [np.sqrt(nj * nk) * rj * rk / phi_m for rj, rk, nj, nk, d in pairs if d == 1]
    assert ar1_correlation(r, n, t, phi_m, "moment") == pytest.approx(np.mean(lag1), rel=1e-12)
    # geepack's AR-1: the root of its estimating equation
    rho = ar1_correlation(r, n, t, phi_g)

    def eq(a):
        return sum(nj * nk * d * a ** (d - 1) * (rj * rk / phi_g - a**d)
                   for rj, rk, nj, nk, d in pairs)

    scale = sum(nj * nk * d * d for _, _, nj, nk, d in pairs)
    assert abs(eq(rho)) <= 1e-10 * scale
    assert -1 < rho < 1


def test_single_row_clusters_add_nothing():
    r = [np.array([2.0]), np.array([1.0, 1.0])]
    n = [np.array([5.0]), np.ones(2)]
    phi = working_dispersion(r, n)
    assert phi == pytest.approx((5 * 4 + 2) / 7)
    assert exchangeable_correlation(r, n, phi) == pytest.approx(1 / phi)
    assert exchangeable_correlation([np.array([1.0])], [np.ones(1)], 1.0) == 0.0
