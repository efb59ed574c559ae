"""Recovery of known effects and calibration of the posterior (models/bayes/).

The default run checks the fixtures against the truth and REML, and a 4-replicate
calibration; ``@pytest.mark.slow`` runs calibration over 40 replicates and agreement with
REML on 3,200 rows at the default 4 chains x 1000 draws.

The fixtures' data are simulated with fixed seeds (the same on every machine), so their
exact posteriors are fixed; what changes with the CPU and BLAS kernel is the Monte Carlo
estimate of them. Checks on one fit therefore compare the posterior mean with the truth
(or REML) in posterior SDs, plus 4 Monte Carlo SEs of the mean (``mcse_mean``), never an
estimated interval end, whose Monte Carlo error is larger and not bounded here. The
statements about coverage are made over several replicates (``_check_calibration``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from bayes_fixtures import (
    FORMULA,
    TRUE_GAUSSIAN,
    TRUE_LOGIT,
    fit_recorded,
    simulate_moderation,
)
from scipy import stats

import alliance_models as am
from alliance_models.errors import DiagnosticsWarning


def _mc(tab: pd.DataFrame, name: str) -> float:
    """Allowance for the Monte Carlo error of a posterior mean: 4 of its SEs."""
    return 4 * float(tab.loc[name, "mcse_mean"])


def test_gaussian_recovers_truth(gfit):
    """Every fixed effect within 3 posterior SD of the truth (the data of this seed are
    at most 2.1 SD away; a bias of a few SD would fail), up to Monte Carlo error."""
    tab = gfit.to_frame()
    for name, true in TRUE_GAUSSIAN.items():
        mean, sd = tab.loc[name, "mean"], tab.loc[name, "sd"]
        assert abs(mean - true) < 3 * sd + _mc(tab, name), (name, mean, sd, true)


@pytest.mark.parametrize("which", ["bfit_binom", "bfit_bb"])
def test_binomial_families_recover_signs(which, request):
    fit = request.getfixturevalue(which)
    tab = fit.to_frame()
    for name, true in TRUE_LOGIT.items():
        mean, sd = tab.loc[name, "mean"], tab.loc[name, "sd"]
        # the right sign, clearly away from 0 (at least 4 posterior SD for these data),
        # and within 3 posterior SD of the truth
        assert np.sign(mean) == np.sign(true), name
        assert abs(mean) > 2 * sd + _mc(tab, name), (name, mean, sd)
        assert abs(mean - true) < 3 * sd + _mc(tab, name), (name, mean, sd, true)
    if which == "bfit_bb":  # the simulated concentration 6
        mean, sd = tab.loc["kappa", "mean"], tab.loc["kappa", "sd"]
        assert abs(mean - 6.0) < 3 * sd + _mc(tab, "kappa"), (mean, sd)


def test_correlated_slopes_recover_sd(slope_fit):
    """The simulated therapist slope SD 0.25 within 4 posterior SD of the posterior mean
    (about 2.2 SD away for these data), up to Monte Carlo error. Not one fit's 95% HDI:
    that misses the truth for about 5% of data sets, and for these data its upper end
    (0.217 on one machine, 0.229 on another) is a matter of the machine."""
    tab = slope_fit.to_frame()
    mean, sd = tab.loc["sd_therapist[alliance]", ["mean", "sd"]]
    assert abs(mean - 0.25) < 4 * sd + _mc(tab, "sd_therapist[alliance]"), (mean, sd)


def test_agrees_with_reml(gfit, gdata):
    """Posterior means within 2 posterior SD of fit_mixed's REML estimates (600 rows),
    up to Monte Carlo error."""
    mfit = am.fit_mixed(FORMULA, gdata)
    diff = (gfit.params - mfit.params[gfit.params.index]).abs()
    sd = gfit.fixed_draws.std()
    mc = 4 * gfit.to_frame().loc[sd.index, "mcse_mean"]
    assert (diff < 2 * sd + mc).all(), pd.DataFrame({"diff": diff, "2sd": 2 * sd, "mc": mc})
    # and the posterior SDs are close to the REML standard errors (within 35%)
    se = np.sqrt(np.diag(mfit.cov_params().loc[sd.index, sd.index]))
    np.testing.assert_allclose(sd.to_numpy(), se, rtol=0.35)


def _coverage(n_rep: int, seed: int, **sim) -> dict[str, np.ndarray]:
    """Seeded replicates: what the central 90% intervals and the posterior z-scores show.

    Returns, per replicate, the fixed-effect hits (6 effects), the standardised errors
    ``z = (posterior mean - truth) / posterior SD`` of the fixed effects and the share of
    simulated patient intercepts inside their central 90% interval.
    """
    hits, zs, re_cov = [], [], []
    for i, ss in enumerate(np.random.SeedSequence(seed).spawn(n_rep)):
        df = simulate_moderation(seed=int(ss.generate_state(1)[0]), **sim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiagnosticsWarning)
            fit = am.fit_bayes(FORMULA, df, draws=300, tune=300, chains=2, sampler="pymc",
                               seed=i)
        d = fit.fixed_draws
        q = d.quantile([0.05, 0.95])
        hits.append([q.loc[0.05, n] < t < q.loc[0.95, n] for n, t in TRUE_GAUSSIAN.items()])
        zs.append([(d[n].mean() - t) / d[n].std() for n, t in TRUE_GAUSSIAN.items()])
        # patient intercepts on the data scale: u = z * sd (non-centred), per draw
        post = fit.idata.posterior.to_dataset().stack(s=("chain", "draw"))
        u = (post["z_therapist:patient"].values[:, 0, :]
             * post["sd_therapist:patient"].values[0, :])
        labels = [lab.split(":")[1] for lab in fit.frame.group_labels["therapist:patient"]]
        truth = np.array([df.attrs["u_patient"][lab] for lab in labels])
        lo, hi = np.quantile(u, [0.05, 0.95], axis=1)
        re_cov.append(np.mean((lo < truth) & (truth < hi)))
    return {"hits": np.array(hits), "z": np.array(zs), "re_cov": np.array(re_cov)}


def _check_calibration(res: dict[str, np.ndarray]) -> None:
    """Assert nominal calibration within the Monte Carlo error (3 SE, stated per check)."""
    hits, z, re_cov = res["hits"], res["z"], res["re_cov"]
    n = hits.size
    # 1. fixed effects: coverage of the central 90% intervals, binomial SE
    se = math.sqrt(0.9 * 0.1 / n)
    cover = hits.mean()
    assert cover > 0.9 - 3 * se, (cover, n)
    if 0.9 + 3 * se < 1:  # two-sided once there are enough intervals (n > 81)
        assert cover < 0.9 + 3 * se, (cover, n)
    # 2. posterior z-scores of the fixed effects: mean 0 (no bias) and sum of squares
    #    chi-square(n) (posterior SD neither too small nor too large); 0.1% tails. With
    #    n = 24 this fails when the posterior SDs are off by a factor of about 1.5.
    assert abs(z.mean()) < 3 / math.sqrt(n), z.mean()
    ss = float((z**2).sum())
    assert stats.chi2.ppf(0.001, n) < ss < stats.chi2.ppf(0.999, n), (ss, n)
    # 3. patient intercepts (40+ per replicate, drawn from the model's own distribution):
    #    mean coverage of their 90% intervals within 3 SE of 0.9; the SE allows a design
    #    effect of 1.5 for the correlation within a replicate (shared sd_patient draws;
    #    measured over 10 replicates of the small design: SD of a replicate's coverage
    #    0.052 against the binomial 0.047, i.e. 1.2). With 4 replicates the band is
    #    0.813-0.987: intervals that cover (almost) every patient fail it too.
    n_pat = 4 * 10  # patients per replicate in the smallest design used here
    se_re = math.sqrt(1.5 * 0.9 * 0.1 / (n_pat * re_cov.size))
    assert abs(re_cov.mean() - 0.9) < 3 * se_re, (re_cov, se_re)


def test_calibration_small():
    """4 seeded replicates (160 rows each): fixed-effect 90% coverage (24 intervals),
    posterior z-scores (bias and width, two-sided) and patient-intercept coverage
    (160 intervals, two-sided): a cheap but real calibration check."""
    _check_calibration(_coverage(4, 2024, therapists=10, patients=4, sessions=4))


@pytest.mark.slow
def test_calibration_full():
    """40 replicates (300 rows each): fixed-effect coverage within 3 binomial SE (0.058)
    of 0.90 on both sides, and the z-score and patient-intercept checks."""
    _check_calibration(_coverage(40, 7, therapists=15, patients=5, sessions=4))


@pytest.mark.slow
def test_agrees_with_reml_large():
    """3,200 rows (40 x 10 x 8), default 4 chains x 1000 draws: fixed effects and the
    three SDs within 2 posterior SD of REML (up to Monte Carlo error).

    The default thresholds (r_hat 1.01, ESS 400, no divergence) are recorded, not raised
    (one divergence in 4,000 draws is a matter of the machine); the run must show at
    most 0.5% divergent draws, every r_hat below 1.02 and every bulk ESS above 200.
    """
    df = simulate_moderation(therapists=40, patients=10, sessions=8, seed=99)
    fit = fit_recorded(FORMULA, df, seed=5, draws=1000, tune=1000, chains=4,
                       rhat_max=1.01, ess_min=400).fit
    tab = fit.to_frame()
    assert fit.n_divergent <= 0.005 * fit.n_draws, fit.n_divergent
    assert (tab["r_hat"] < 1.02).all(), tab["r_hat"]
    assert (tab["ess_bulk"] > 200).all(), tab["ess_bulk"]
    mfit = am.fit_mixed(FORMULA, df)
    diff = (fit.params - mfit.params[fit.params.index]).abs()
    mc = 4 * tab.loc[diff.index, "mcse_mean"]
    assert (diff < 2 * fit.fixed_draws.std() + mc).all()
    # the variance components too: posterior mean SDs within 2 posterior SD of REML
    reml_sd = dict(zip(mfit.varcomp["group"], mfit.varcomp["sdcor"], strict=True))
    for name, ref in (("sd_therapist", reml_sd["therapist"]),
                      ("sd_therapist:patient", reml_sd["therapist:patient"]),
                      ("sigma", mfit.sigma)):
        assert abs(tab.loc[name, "mean"] - ref) < 2 * tab.loc[name, "sd"] + _mc(tab, name), (
            name, ref)
