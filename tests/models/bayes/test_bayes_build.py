"""The PyMC model (models/bayes/build.py) is the one documented: non-centred random
effects, and log-likelihoods recomputed from the posterior draws with scipy/numpy.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from scipy import stats

from alliance_models.models.bayes import BayesFit


def test_random_effects_are_non_centred(gfit):
    """The sampled random-effect variables are standard normal z (u = sd * z is derived);
    test_gaussian_loglik_matches_scipy rebuilds the likelihood from exactly that map."""
    model = gfit.model
    free = {rv.name for rv in model.free_RVs}
    assert {"z_therapist", "z_therapist:patient"} <= free
    assert not free & {"therapist", "u_therapist", "sd_therapist"}  # sd is derived too
    for name in ("z_therapist", "z_therapist:patient"):
        rv = model[name]
        assert rv.owner.op.name == "normal"
        mu, sigma = (float(pt.get_underlying_scalar_constant_value(v))
                     for v in rv.owner.inputs[-2:])
        assert (mu, sigma) == (0.0, 1.0)
        assert model.rvs_to_transforms[rv] is None
    g = gfit.frame.n_groups
    post = gfit.idata.posterior
    assert post["z_therapist"].shape[2:] == (g["therapist"], 1)
    assert post["z_therapist:patient"].shape[2:] == (g["therapist:patient"], 1)


# ------------------------------------------------------------------ the likelihood is as documented
def _re_data_scale(fit: BayesFit, name: str, k: int) -> np.ndarray:
    """Random intercepts on the data scale for flat draw ``k`` (intercept-only terms)."""
    post = fit.idata.posterior
    z = post[f"z_{name}"].stack(s=("chain", "draw")).values[:, 0, k]
    sd = post[f"sd_{name}"].stack(s=("chain", "draw")).values[0, k]
    return z * sd


def test_gaussian_loglik_matches_scipy(gfit):
    fr, post = gfit.frame, gfit.idata.posterior
    ll = gfit.idata.log_likelihood["adherence"].stack(s=("chain", "draw")).values
    beta = gfit.fixed_draws.to_numpy()
    sigma = post["sigma"].stack(s=("chain", "draw")).values
    for k in (0, 137, 599):
        mu = fr.X @ beta[k]
        for g in ("therapist", "therapist:patient"):
            mu = mu + _re_data_scale(gfit, g, k)[fr.groups[g]]
        np.testing.assert_allclose(ll[:, k], stats.norm.logpdf(fr.y, mu, sigma[k]),
                                   rtol=1e-8, atol=1e-10)


def test_binomial_loglik_matches_scipy(bfit_binom, bdata):
    fr = bfit_binom.frame
    ll = bfit_binom.idata.log_likelihood["attended"].stack(s=("chain", "draw")).values
    beta = bfit_binom.fixed_draws.to_numpy()
    n = bdata["scheduled"].to_numpy()
    for k in (3, 400):
        eta = fr.X @ beta[k]
        for g in ("therapist", "therapist:patient"):
            eta = eta + _re_data_scale(bfit_binom, g, k)[fr.groups[g]]
        np.testing.assert_allclose(ll[:, k], stats.binom.logpmf(fr.y, n, 1 / (1 + np.exp(-eta))),
                                   rtol=1e-8, atol=1e-10)


def test_beta_binomial_loglik_matches_scipy(bfit_bb):
    fr = bfit_bb.frame
    ll = bfit_bb.idata.log_likelihood["attended"].stack(s=("chain", "draw")).values
    kappa = bfit_bb.idata.posterior["kappa"].stack(s=("chain", "draw")).values
    beta = bfit_bb.fixed_draws.to_numpy()
    n = fr.data["scheduled"].to_numpy()
    for k in (0, 250):
        eta = fr.X @ beta[k] + _re_data_scale(bfit_bb, "therapist", k)[fr.groups["therapist"]]
        p = 1 / (1 + np.exp(-eta))
        np.testing.assert_allclose(
            ll[:, k], stats.betabinom.logpmf(fr.y, n, p * kappa[k], (1 - p) * kappa[k]),
            rtol=1e-7, atol=1e-9)


def test_correlated_slopes_loglik_matches_numpy(slope_fit):
    """u_g = chol(D R D) z_g with D the SDs (standardised units), R the LKJ correlation."""
    fit, fr = slope_fit, slope_fit.frame
    post = fit.idata.posterior.to_dataset().stack(s=("chain", "draw"))
    ll = fit.idata.log_likelihood["adherence"].stack(s=("chain", "draw")).values
    sy = fit.scaling.y_sd
    zcol = fr.Z["(1 + alliance | therapist)"]
    z_sd = np.array([1.0, zcol[:, 1].std()])
    for k in (5, 420):
        sd_std = post["sd_therapist"].values[:, k] * z_sd / sy
        R = post["corr_therapist"].values[:, :, k]
        L = np.linalg.cholesky(np.outer(sd_std, sd_std) * R)
        z = post["z_therapist"].values[:, :, k]  # (G, 2)
        u_std = z @ L.T  # per group, standardised outcome units per scaled Z column
        u = sy * u_std / z_sd  # data scale per unscaled Z column
        mu = fr.X @ fit.fixed_draws.to_numpy()[k] + (u[fr.groups["therapist"]] * zcol).sum(1)
        sigma = post["sigma"].values[k]
        np.testing.assert_allclose(ll[:, k], stats.norm.logpdf(fr.y, mu, sigma), rtol=1e-8)
    tab = fit.to_frame()
    assert {"sd_therapist[(Intercept)]", "sd_therapist[alliance]",
            "corr_therapist[alliance, (Intercept)]"} <= set(tab.index)
    # the recovery of the simulated slope SD is a stated bound in test_bayes_calibration
    # (test_correlated_slopes_recover_sd); this test is about the likelihood
