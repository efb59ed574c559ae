"""The nested random intercepts integrated out (models/bayes/collapsed.py).

References: the dense multivariate normal density of scipy (covariance
``sigma^2 I + sum_k tau_k^2 Z_k Z_k'``), the dense gaussian conditional of the intercepts
in closed form, and the full (non-collapsed) PyMC model sampled by ``fit_bayes``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from alliance_models.models.bayes.build import RETerm
from alliance_models.models.bayes.collapsed import (
    draw_intercepts,
    marginal_loglik,
    marginal_loglik_np,
    nesting,
)


def _term(name: str, codes: np.ndarray) -> RETerm:
    codes = np.asarray(codes)
    return RETerm(name, name, ("(Intercept)",), codes, int(codes.max()) + 1,
                  np.ones((codes.size, 1)), np.ones(1), False)


def _three_levels(seed: int = 0):
    """Unbalanced sites > therapists > patients > observations."""
    rng = np.random.default_rng(seed)
    pat = np.repeat(np.arange(9), rng.integers(1, 5, 9))  # 1-4 sessions per patient
    ther_of_pat = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4])
    site_of_ther = np.array([0, 0, 1, 1, 1])
    ther = ther_of_pat[pat]
    site = site_of_ther[ther]
    # formula order is not the nesting order: nesting() sorts by the number of groups
    terms = [_term("patient", pat), _term("site", site), _term("therapist", ther)]
    return terms, rng


def _dense_cov(nest, sigma, taus):
    n = nest.obs_codes.size
    V = sigma**2 * np.eye(n)
    for t, tau in zip(nest.terms, taus, strict=True):
        Z = np.eye(t.n_groups)[t.codes]
        V += tau**2 * Z @ Z.T
    return V


def test_nesting_orders_levels_and_rejects_what_it_cannot_integrate():
    terms, _ = _three_levels()
    nest = nesting(terms, "gaussian")
    assert [t.name for t in nest.terms] == ["site", "therapist", "patient"]
    assert nest.parents[1].tolist() == [0, 0, 1, 1, 1]
    assert nest.parents[2].tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 4]
    assert nest.counts.sum() == terms[0].codes.size
    assert nesting(terms, "binomial") is None
    # crossed factors: a second grouping that is not nested in the first
    crossed = _term("rater", np.arange(terms[0].codes.size) % 2)
    assert nesting([terms[2], crossed], "gaussian") is None
    # a random slope
    slope = RETerm("therapist", "therapist", ("(Intercept)", "x"), terms[2].codes, 5,
                   np.ones((terms[0].codes.size, 2)), np.ones(2), True)
    assert nesting([slope], "gaussian") is None


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_marginal_loglik_matches_dense_normal(levels):
    terms, rng = _three_levels(1)
    keep = {1: ["therapist"], 2: ["therapist", "patient"], 3: ["site", "therapist",
                                                               "patient"]}[levels]
    nest = nesting([t for t in terms if t.name in keep], "gaussian")
    r = rng.normal(size=nest.obs_codes.size)
    for sigma, taus in ((0.7, [0.3, 1.2, 0.05][:levels]), (1.5, [2.0, 0.1, 0.6][:levels])):
        ref = stats.multivariate_normal(np.zeros(r.size), _dense_cov(nest, sigma, taus)).logpdf(r)
        np.testing.assert_allclose(marginal_loglik_np(nest, r, sigma, taus), ref, rtol=1e-10)


def test_pytensor_graph_matches_numpy_with_gradient():
    import pytensor
    import pytensor.tensor as pt

    terms, rng = _three_levels(2)
    nest = nesting(terms, "gaussian")
    r = pt.vector("r")
    sigma = pt.scalar("sigma")
    taus = [pt.scalar(f"tau{k}") for k in range(3)]
    lp = marginal_loglik(pt, nest, r, sigma, taus)
    f = pytensor.function([r, sigma, *taus], [lp, *pt.grad(lp, [sigma, *taus])])
    rv = rng.normal(size=nest.obs_codes.size)
    x = np.array([0.8, 0.4, 0.9, 0.3])
    out = f(rv, *x)
    np.testing.assert_allclose(out[0], marginal_loglik_np(nest, rv, x[0], list(x[1:])),
                               rtol=1e-10)
    # gradient against central differences of the numpy density
    h = 1e-6
    for j in range(4):
        e = np.zeros(4)
        e[j] = h
        up = marginal_loglik_np(nest, rv, (x + e)[0], list((x + e)[1:]))
        dn = marginal_loglik_np(nest, rv, (x - e)[0], list((x - e)[1:]))
        np.testing.assert_allclose(out[1 + j], (up - dn) / (2 * h), rtol=1e-5)


def test_intercept_draws_follow_the_dense_conditional():
    """Mean and covariance of 200,000 draws for one parameter value against the closed
    form ``a | r ~ N(Lambda Z' V^-1 r, Lambda - Lambda Z' V^-1 Z Lambda)``; tolerances are
    5 Monte Carlo SEs of a mean (sd / sqrt(m)) and of a covariance (about sd^2 sqrt(2/m))."""
    terms, rng = _three_levels(3)
    nest = nesting(terms, "gaussian")
    sigma, taus = 0.6, [0.5, 0.8, 0.4]
    r = rng.normal(size=nest.obs_codes.size)
    Z = np.hstack([np.eye(t.n_groups)[t.codes] for t in nest.terms])
    Lam = np.diag(np.concatenate([np.full(t.n_groups, tau**2)
                                  for t, tau in zip(nest.terms, taus, strict=True)]))
    Vi = np.linalg.inv(_dense_cov(nest, sigma, taus))
    mean = Lam @ Z.T @ Vi @ r
    cov = Lam - Lam @ Z.T @ Vi @ Z @ Lam
    m = 200_000
    draws = draw_intercepts(nest, np.broadcast_to(r, (m, r.size)), np.full(m, sigma),
                            [np.full(m, tau) for tau in taus], np.random.default_rng(4))
    a = np.hstack(draws)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(a.mean(axis=0) - mean), 5 * sd / np.sqrt(m))
    emp = np.cov(a, rowvar=False)
    tol = 5 * np.sqrt(2.0 / m) * np.outer(sd, sd)
    np.testing.assert_array_less(np.abs(emp - cov), tol)


# ------------------------------------------------------------------ fit_bayes uses it
def test_collapsed_fit_matches_the_full_model(gfit, gdata):
    """fit_bayes integrates the nested intercepts out (gfit) and agrees with sampling
    every intercept by NUTS (collapse=False) on the same data: posterior means of the
    fixed effects, the SDs and the patient intercepts within 5 combined Monte Carlo SEs
    (MCSE from ArviZ; for the 120 intercepts, from their bulk ESS), posterior SDs of the
    fixed effects within 25% (600 draws each)."""
    import arviz as az
    from bayes_fixtures import FORMULA, fit_recorded

    full = fit_recorded(FORMULA, gdata, seed=5, collapse=False).fit
    assert gfit.collapsed and not full.collapsed
    assert "integrated out" in gfit.summary() and "integrated out" not in full.summary()
    a, b = gfit.to_frame(), full.to_frame()
    se = np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    assert ((a["mean"] - b["mean"]).abs() < 5 * se).all(), pd_table(a, b, se)
    fixed = list(gfit.frame.x_names)
    np.testing.assert_allclose(a.loc[fixed, "sd"], b.loc[fixed, "sd"], rtol=0.25)

    def patient_intercepts(fit):
        post = fit.idata.posterior
        u = post["z_therapist:patient"].isel({"therapist:patient_coef": 0}) * post[
            "sd_therapist:patient"].isel({"therapist:patient_coef": 0})
        return u, az.ess(u.to_dataset(name="u"))["u"].values

    ua, ess_a = patient_intercepts(gfit)
    ub, ess_b = patient_intercepts(full)
    sd = ua.std(("chain", "draw")).values
    se_u = np.sqrt(sd**2 / ess_a + ub.std(("chain", "draw")).values ** 2 / ess_b)
    diff = np.abs(ua.mean(("chain", "draw")).values - ub.mean(("chain", "draw")).values)
    assert (diff < 5 * se_u).all(), float((diff / se_u).max())


def pd_table(a, b, se):
    return a[["mean"]].assign(full=b["mean"], se=se)


def test_collapse_false_and_ineligible_models_sample_every_intercept(bfit_binom, slope_fit):
    assert not bfit_binom.collapsed and not slope_fit.collapsed
