"""fit_mixed(family="binomial" | "poisson") against lme4::glmer.

Reference CSVs come from tests/r/glmer_reference.R (R 4.2.2, lme4 1.1-31; glmer with
tolPwrss = 1e-14 and nloptwrap at tight tolerances, see the script for why the default
control is not tight enough for these tolerances). Tolerances (issue 13): fixed effects
rtol 1e-4, SEs rtol 1e-3 (lme4's default SEs: the finite-difference Hessian of the
deviance in (theta, beta)), variance components rtol 1e-3, log-likelihood 1e-6 absolute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am

R_DIR = Path(__file__).resolve().parents[2] / "r"

CBPP = "incidence ~ C(period) + (1 | herd)"
MODELS = {
    "cbpp_laplace": (CBPP, "cbpp", "binomial", "size", 1),
    "cbpp_agq9": (CBPP, "cbpp", "binomial", "size", 9),
    "att_nested": ("attended ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)",
                   "att", "binomial", "scheduled", 1),
    "att_slope": ("attended ~ alliance_c + age_c + (1 + alliance_c | therapist)",
                  "att", "binomial", "scheduled", 1),
    "att_crossed": ("attended ~ alliance + autonomy_c + (1 | therapist) + (1 | site)",
                    "att", "binomial", "scheduled", 1),
    "att_agq9": ("attended ~ alliance * autonomy_c + (1 | therapist)",
                 "att", "binomial", "scheduled", 9),
    "pois_laplace": ("completed ~ alliance + age_c + (1 | therapist)", "att", "poisson", None, 1),
    "pois_agq9": ("completed ~ alliance + age_c + (1 | therapist)", "att", "poisson", None, 9),
    "pois_interaction": ("completed ~ alliance * age_c + (1 | therapist)", "att", "poisson",
                         None, 1),
}


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return {"cbpp": pd.read_csv(R_DIR / "cbpp_data.csv"),
            "att": pd.read_csv(R_DIR / "glmer_attendance.csv")}


@pytest.fixture(scope="module")
def fits(data):
    return {name: am.fit_mixed(f, data[d], family=fam, trials=tr, nAGQ=k)
            for name, (f, d, fam, tr, k) in MODELS.items()}


@pytest.fixture(scope="module")
def ref():
    return (pd.read_csv(R_DIR / "glmer_fixef.csv"),
            pd.read_csv(R_DIR / "glmer_varcomp.csv", keep_default_na=False),
            pd.read_csv(R_DIR / "glmer_info.csv"))


def _group(g: str) -> str:
    """lme4 writes therapist/patient as 'patient:therapist', we as 'therapist:patient'."""
    return ":".join(sorted(g.split(":")))


@pytest.mark.parametrize("name", list(MODELS))
def test_fixed_effects_and_se(fits, ref, name):
    fit, fx = fits[name], ref[0][ref[0].model == name]
    assert len(fit.fixed) == len(fx)
    np.testing.assert_allclose(fit.fixed["estimate"], fx["estimate"], rtol=1e-4, atol=0)
    np.testing.assert_allclose(fit.fixed["se"], fx["se"], rtol=1e-3, atol=0)
    np.testing.assert_allclose(fit.fixed["z"], fx["z"], rtol=2e-3, atol=0)
    np.testing.assert_allclose(fit.fixed["p"], fx["p"], rtol=5e-3, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_variance_components(fits, ref, name):
    fit, vc = fits[name], ref[1][ref[1].model == name]
    ours = fit.varcomp.assign(key=lambda t: [f"{_group(g)}|{a}|{b}" for g, a, b in
                                             zip(t.group, t.var1, t.var2, strict=True)])
    theirs = vc.assign(key=lambda t: [f"{_group(g)}|{a}|{b}" for g, a, b in
                                      zip(t.group, t.var1, t.var2, strict=True)])
    merged = ours.merge(theirs, on="key", suffixes=("", "_r"), validate="one_to_one")
    assert len(merged) == len(vc) == len(fit.varcomp)
    np.testing.assert_allclose(merged["vcov"], merged["vcov_r"], rtol=1e-3, atol=0)
    np.testing.assert_allclose(merged["sdcor"], merged["sdcor_r"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_loglik_theta_and_diagnostics(fits, ref, name):
    fit, info = fits[name], ref[2][ref[2].model == name].iloc[0]
    # lme4 leaves the saturated log-likelihood out of logLik for nAGQ > 1
    r_loglik = info["loglik"] + (info["sat_loglik"] if info["nAGQ"] > 1 else 0.0)
    assert abs(fit.loglik - r_loglik) < 1e-6
    assert fit.saturated_loglik == pytest.approx(info["sat_loglik"], abs=1e-8)
    theta = np.array([float(v) for v in str(info["theta"]).split(";")])
    np.testing.assert_allclose(np.sort(fit.theta), np.sort(theta), rtol=1e-3)
    assert fit.n_obs == info["n"] and fit.singular == bool(info["singular"])
    assert fit.converged and fit.grad_max < 1e-5 and not fit.messages
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * (len(fit.fixed) + fit.theta.size))


def test_agq_improves_on_laplace_only_slightly_for_large_clusters(fits):
    # the same model: AGQ and Laplace log-likelihoods are on one scale (ours), close
    # when clusters are large (cbpp: 3-4 periods of ~15 animals per herd)
    lap, agq = fits["cbpp_laplace"], fits["cbpp_agq9"]
    assert abs(lap.loglik - agq.loglik) < 0.1
    np.testing.assert_allclose(lap.params, agq.params, atol=2e-3)
