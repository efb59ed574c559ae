"""Priors (models/bayes/priors.py) and their assignment to the model's parameters
(models/bayes/build.py): defaults, data-scale overrides, conversions, errors.

Prior draws are checked against the stated moments within 4 Monte Carlo SE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bayes_fixtures import FORMULA, fit_recorded
from scipy import stats

import alliance_models as am
from alliance_models.errors import ModelSpecError
from alliance_models.models.bayes.build import model_params, prior_table, re_terms
from alliance_models.models.bayes.priors import Prior, default_prior, parse_prior
from alliance_models.models.bayes.scaling import make_scaling


def test_default_priors_table(gfit):
    pri = gfit.priors
    assert list(pri.index) == ["Intercept", "alliance", "age", "autonomy", "alliance:age",
                               "alliance:autonomy", "sigma", "sd_therapist",
                               "sd_therapist:patient"]
    assert (pri["source"] == "default").all()
    assert pri.loc["alliance", "prior_standardised"] == "Normal(mu=0, sigma=1)"
    sy = gfit.frame.y.std()
    sx = gfit.frame.X[:, 1].std()
    assert pri.loc["alliance", "prior_data_scale"] == f"Normal(mu=0, sigma={sy / sx:.4g})"
    assert pri.loc["Intercept", "prior_data_scale"] == (
        f"Normal(mu={gfit.frame.y.mean():.4g}, sigma={sy:.4g})")
    assert pri.loc["sd_therapist", "prior_data_scale"] == f"HalfNormal(sigma={sy:.4g})"


def test_prior_override_reaches_model_and_table(gdata):
    priors = {"alliance:autonomy": ("Normal", {"mu": 0.5, "sigma": 0.02}),
              "sd_therapist": ("HalfNormal", {"sigma": 0.2}),
              "Intercept": ("Normal", {"mu": 1.0, "sigma": 0.1}),
              "autonomy": ("StudentT", {"nu": 3, "mu": 0, "sigma": 0.5})}
    fit = fit_recorded("adherence ~ alliance * autonomy + (1 | therapist)", gdata,
                       priors=priors, seed=3, draws=500, tune=300, prior_predictive=True).fit
    pri = fit.priors
    assert pri.loc["alliance:autonomy", "source"] == "user"
    assert pri.loc["alliance:autonomy", "prior_data_scale"] == "Normal(mu=0.5, sigma=0.02)"
    sx = fit.frame.X[:, 3].std()
    sy = fit.frame.y.std()
    assert pri.loc["alliance:autonomy", "prior_standardised"] == str(
        Prior("Normal", {"mu": 0.5 * sx / sy, "sigma": 0.02 * sx / sy}))
    assert pri.loc["alliance", "source"] == "default"
    # prior draws (500 of them) have the stated data-scale moments (within 4 SE)
    prior = fit.idata.prior.to_dataset().stack(s=("chain", "draw"))
    ax = prior["beta"].sel(term="alliance:autonomy").values
    n = ax.size
    assert abs(ax.mean() - 0.5) < 4 * 0.02 / math.sqrt(n)
    assert abs(ax.std() / 0.02 - 1) < 4 / math.sqrt(2 * n)
    sdt = prior["sd_therapist"].values.ravel()
    hn_mean = 0.2 * math.sqrt(2 / math.pi)
    assert abs(sdt.mean() - hn_mean) < 4 * 0.2 * math.sqrt(1 - 2 / math.pi) / math.sqrt(n)
    # a second family among the fixed effects (separate random variables): P(|t_3| < 1)
    au = prior["beta"].sel(term="autonomy").values
    p_in = stats.t.cdf(1, 3) - stats.t.cdf(-1, 3)
    assert abs(np.mean(np.abs(au) < 0.5) - p_in) < 4 * math.sqrt(p_in * (1 - p_in) / n)
    assert pri.loc["autonomy", "prior_data_scale"] == "StudentT(nu=3, mu=0, sigma=0.5)"
    # the Intercept prior is for the outcome at the predictor means
    b = prior["beta"].transpose("s", "term").values
    at_means = b @ fit.frame.X.mean(axis=0)
    assert abs(at_means.mean() - 1.0) < 4 * 0.1 / math.sqrt(n)
    # the posterior combines the tight prior with the likelihood: normal approximation
    # (precision-weighted mean of the prior and the REML estimate, precision the sum of
    # both) within 3 posterior SD for the mean; the SD within 4 of its Monte Carlo SEs
    # plus 5% for the approximation (REML's SE for the likelihood's curvature). With
    # the SE seen here (about 0.045) the posterior SD is about 0.018, 9% below the prior
    # SD 0.02: a bare "post_sd < 0.02" would be about 2 Monte Carlo SEs from failing.
    mfit = am.fit_mixed("adherence ~ alliance * autonomy + (1 | therapist)", gdata)
    est = mfit.params["alliance:autonomy"]
    se = math.sqrt(mfit.cov_params().loc["alliance:autonomy", "alliance:autonomy"])
    w_prior, w_lik = 1 / 0.02**2, 1 / se**2
    expected = (w_prior * 0.5 + w_lik * est) / (w_prior + w_lik)
    expected_sd = 1 / math.sqrt(w_prior + w_lik)
    post_sd = fit.fixed_draws["alliance:autonomy"].std()
    mcse_sd = fit.to_frame().loc["alliance:autonomy", "mcse_sd"]
    assert abs(fit.params["alliance:autonomy"] - expected) < 3 * post_sd
    assert abs(post_sd - expected_sd) < 4 * mcse_sd + 0.05 * expected_sd, (
        post_sd, expected_sd, mcse_sd)
    assert abs(expected - 0.5) < abs(est - 0.5)


def test_prior_module_conversions():
    p = Prior("Exponential", {"lam": 2.0})
    assert p.to_standardised(4.0).params == {"lam": 8.0}
    assert p.to_standardised(4.0).to_data(4.0) == p
    q = Prior("StudentT", {"nu": 3.0, "mu": 1.0, "sigma": 2.0})
    assert q.to_standardised(2.0, 1.0).params == {"nu": 3.0, "mu": 0.0, "sigma": 1.0}
    assert str(default_prior("Intercept", "binomial")) == "Normal(mu=0, sigma=2.5)"
    with pytest.raises(ModelSpecError, match="'sigma' is positive.*got Normal"):
        parse_prior("sigma", ("Normal", {"mu": 0, "sigma": 1}), kind="sigma", shifted=False)
    with pytest.raises(ModelSpecError, match="Intercept prior must be a location family"):
        parse_prior("Intercept", ("HalfNormal", {"sigma": 1}), kind="Intercept", shifted=True)
    with pytest.raises(ModelSpecError, match="takes parameters mu, sigma; missing sigma"):
        parse_prior("age", ("Normal", {"mu": 0}), kind="slope", shifted=False)
    with pytest.raises(ModelSpecError, match="parameter sigma must be > 0, got -1"):
        parse_prior("age", ("Normal", {"mu": 0, "sigma": -1}), kind="slope", shifted=False)
    with pytest.raises(ModelSpecError, match="must be a pair"):
        parse_prior("age", "Normal(0, 1)", kind="slope", shifted=False)


def test_unknown_prior_term_lists_terms(gdata):
    with pytest.raises(ModelSpecError, match=r"'alliance:autonomie'.*terms that take a prior: "
                       r"Intercept, alliance, .*alliance:autonomy, sigma, sd_therapist"):
        am.fit_bayes(FORMULA, gdata, priors={"alliance:autonomie": ("Normal", {"mu": 0,
                                                                             "sigma": 1})})


def test_correlated_sd_priors_must_share_family(gdata):
    with pytest.raises(ModelSpecError, match="must share one family.*HalfNormal, Exponential"
                       "|must share one family.*Gamma, HalfNormal"):
        am.fit_bayes("adherence ~ alliance + (1 + alliance | therapist)", gdata,
                     priors={"sd_therapist[alliance]": ("Gamma", {"alpha": 2, "beta": 1})})


def test_group_sd_key_sets_every_coefficient(gdata):
    """'sd_therapist' on a random-slope term sets the prior of both SDs, each converted to
    the standardised scale with its own factor s_y / s_z (no sampling needed)."""
    frame = am.parse_formula("adherence ~ alliance + (1 + alliance | therapist)").build(gdata)
    scaling = make_scaling(frame.X, frame.y, frame.x_names, gaussian=True)
    terms = re_terms(frame)
    pri = prior_table(model_params(frame.x_names, scaling, terms, "gaussian",
                                  {"sd_therapist": ("Exponential", {"lam": 4.0})}))
    sy = frame.y.std()
    sz = frame.Z["(1 + alliance | therapist)"][:, 1].std()
    for key, c in (("sd_therapist[(Intercept)]", sy), ("sd_therapist[alliance]", sy / sz)):
        assert pri.loc[key, "source"] == "user"
        assert pri.loc[key, "prior_data_scale"] == "Exponential(lam=4)"
        assert pri.loc[key, "prior_standardised"] == f"Exponential(lam={4.0 * c:.4g})"
    assert pri.loc["lkj_therapist", "prior_standardised"] == "LKJ(eta=2)"
    assert pri.loc["sigma", "source"] == "default"
