"""Probing a BayesFit (the FixedEffectsFit interface on posterior draws): simple slopes,
Johnson-Neyman regions and conditional effects against the draws, HDIs by definition.
"""

from __future__ import annotations

import numpy as np
import pytest

import alliance_models as am


def test_probing_end_to_end(gfit):
    draws = gfit.fixed_draws
    ss = am.simple_slopes(gfit, focal="alliance", moderator="autonomy", at=[-1.0, 0.0, 1.0])
    tab = ss.to_frame()
    # independent: the conditional slope draws are b_alliance + m * b_alliance:autonomy
    # (age held at its mean, through alliance:age)
    age_mean = gfit.frame.data["age"].mean()
    for m, row in zip([-1.0, 0.0, 1.0], tab.itertuples(), strict=True):
        eff = (draws["alliance"] + m * draws["alliance:autonomy"]
               + age_mean * draws["alliance:age"])
        np.testing.assert_allclose(row.estimate, np.median(eff), rtol=1e-8)
        np.testing.assert_allclose(row.pd, max((eff > 0).mean(), (eff < 0).mean()),
                                   atol=1e-12)
    jn = am.johnson_neyman(gfit, focal="alliance", moderator="autonomy")
    assert jn.method == "bayes" and "autonomy" in jn.summary()
    # independent check on a grid: significant where the 95% HDI (shortest interval of
    # the draws, computed here) excludes zero, i.e. inside jn.intervals_in_range; grid
    # points within 0.05 of a bound are skipped (the bound is found to grid precision)
    lo_m, hi_m = gfit.frame.data["autonomy"].min(), gfit.frame.data["autonomy"].max()

    checked = 0
    for m in np.linspace(lo_m, hi_m, 41):
        if any(abs(m - b) < 0.05 for b in jn.bounds):
            continue
        eff = (draws["alliance"] + m * draws["alliance:autonomy"]
               + age_mean * draws["alliance:age"]).to_numpy()
        lo, hi = _hdi95(eff)
        sig = lo > 0 or hi < 0
        inside = any(a <= m <= b for a, b in jn.intervals_in_range)
        assert sig == inside, (m, lo, hi, jn.intervals_in_range)
        checked += 1
    assert checked > 30


def _hdi95(x: np.ndarray) -> tuple[float, float]:
    """Shortest interval spanning floor(0.95 n) + 1 sorted draws (the HDI, by definition)."""
    s = np.sort(np.asarray(x, float))
    k = int(np.floor(0.95 * s.size))
    i = int(np.argmin(s[k:] - s[: s.size - k]))
    return float(s[i]), float(s[i + k])


def test_summary_hdi_and_simple_slope_hdi_from_draws(gfit):
    """The summary's 95% HDI (ArviZ) and simple_slopes' HDI equal the HDI of the draws."""
    tab = gfit.to_frame()
    for name in gfit.frame.x_names:
        np.testing.assert_allclose(tab.loc[name, ["hdi95_lb", "hdi95_ub"]].to_numpy(float),
                                   _hdi95(gfit.fixed_draws[name]), rtol=1e-10)
    sig = gfit.idata.posterior["sigma"].values.ravel()
    np.testing.assert_allclose(tab.loc["sigma", ["hdi95_lb", "hdi95_ub"]].to_numpy(float),
                               _hdi95(sig), rtol=1e-10)
    d = gfit.fixed_draws
    age_mean = gfit.frame.data["age"].mean()
    ss = am.simple_slopes(gfit, focal="alliance", moderator="autonomy", at=[-1.5, 0.5])
    for m, row in zip([-1.5, 0.5], ss.to_frame().itertuples(), strict=True):
        eff = d["alliance"] + m * d["alliance:autonomy"] + age_mean * d["alliance:age"]
        np.testing.assert_allclose([row.hdi_lower, row.hdi_upper], _hdi95(eff), rtol=1e-10)


def test_conditional_effects_credible_bands(gfit):
    """Predictions x0' b over the posterior: median and 95% HDI at each grid point, with
    x0 written out by hand (age held at its mean, autonomy at the requested values)."""
    d = gfit.fixed_draws
    age = gfit.frame.data["age"].mean()
    ce = am.conditional_effects(gfit, focal="alliance", moderator="autonomy",
                                at=[-1.0, 1.0], n_points=7)
    tab = ce.to_frame()
    assert len(tab) == 14 and ce.held == {"age": pytest.approx(age)}
    for row in tab.itertuples():
        a, m = row.alliance, row.autonomy_value
        pred = (d["Intercept"] + a * d["alliance"] + age * d["age"] + m * d["autonomy"]
                + a * age * d["alliance:age"] + a * m * d["alliance:autonomy"]).to_numpy()
        np.testing.assert_allclose(row.estimate, np.median(pred), rtol=1e-9)
        np.testing.assert_allclose([row.lower, row.upper], _hdi95(pred), rtol=1e-9)
    # the band is narrowest near the data's centre and widens towards the ends
    width = (tab["upper"] - tab["lower"]).to_numpy().reshape(2, 7)
    assert (width[:, [0, -1]].min(axis=1) > width[:, 3]).all()
    # the observed outcome is overlaid (identity link)
    np.testing.assert_array_equal(ce.observed["y"], gfit.frame.y)


def test_conditional_effects_binomial_response_scale(bfit_binom, bdata):
    """scale='response' gives probabilities (inverse logit of the link-scale summaries:
    the median and the HDI ends map through the monotone link); observed proportions."""
    kw = {"focal": "alliance", "moderator": "autonomy", "at": [0.0], "n_points": 5}
    link = am.conditional_effects(bfit_binom, **kw).to_frame()
    resp_ce = am.conditional_effects(bfit_binom, scale="response", **kw)
    resp = resp_ce.to_frame()
    for col in ("estimate", "lower", "upper"):
        np.testing.assert_allclose(resp[col], 1 / (1 + np.exp(-link[col])), rtol=1e-12)
    assert ((resp["lower"] > 0) & (resp["upper"] < 1)).all()
    np.testing.assert_allclose(resp_ce.observed["y"],
                               bdata["attended"] / bdata["scheduled"], rtol=1e-12)
    # on the link scale the counts are not overlaid on log-odds
    assert len(am.conditional_effects(bfit_binom, **kw).observed) == 0


def test_probing_binomial_link_scale(bfit_binom):
    draws = bfit_binom.fixed_draws
    ss = am.simple_slopes(bfit_binom, focal="alliance", moderator="autonomy", at=[1.0])
    eff = draws["alliance"] + draws["alliance:autonomy"]
    np.testing.assert_allclose(ss.to_frame()["estimate"].iloc[0], np.median(eff), rtol=1e-8)
    # the true log-odds slope at autonomy = 1 is 0.5 + 0.35: within 3 posterior SD
    # (about 1.1 SD for these data), plus the Monte Carlo error of both coefficients
    mcse = bfit_binom.to_frame().loc[["alliance", "alliance:autonomy"], "mcse_mean"].sum()
    assert abs(np.median(eff) - 0.85) < 3 * eff.std() + 4 * mcse
