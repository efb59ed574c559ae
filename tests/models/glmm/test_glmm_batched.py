"""The batched Laplace engine (models/glmm/batched.py) against the per-replicate fit.

fit_glmm_batch minimises the same Laplace deviance as fit_mixed(family=...) (lme4's
glmer, nAGQ = 1), whose agreement with lme4 is in test_glmer_reference.py. Here, on
simulated replicates (nested and single random intercepts, dropout, singular fits,
Poisson): fixed effects and SEs, random-intercept SDs and log-likelihoods agree
replicate by replicate; the exact gradient equals central differences of the deviance;
separation is marked, never returned.

Tolerances: both fits stop at lme4's relative gradient 1e-8 (whitened units), so the
estimates differ by far less than 1e-5 SE; the SEs come from two different finite-
difference Hessians (of the deviance, whitened steps 1e-3, in fit_mixed; of the exact
gradient here), each with a relative error of about 1e-6, hence 2e-5. The SDs are
compared at 1e-4 relative (absolute 1e-5 near zero): fit_mixed's Newton iterations
may stop at a relative gradient of a few 1e-6 (its reported grad_max), which moves a
small SD by up to a few 1e-6.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import ModelSpecError
from alliance_models.models.glmm import batched as gb
from alliance_models.planning.simulate import batch_arrays


def _per_replicate(formula: str, data: pd.DataFrame, **kw) -> am.models.glmm.GLMMFit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular-fit and few-cluster notes
        return am.fit_mixed(formula, data, **kw)


def _check(bf: gb.GLMMBatchFit, b: int, fit, outer: str | None, inner: str) -> None:
    est, se = fit.fixed["estimate"].to_numpy(), fit.fixed["se"].to_numpy()
    assert bf.status[b] == ""
    np.testing.assert_array_less(np.abs(bf.beta[b] - est), 1e-5 * np.maximum(np.abs(est), se))
    np.testing.assert_allclose(bf.se[b], se, rtol=2e-5)
    vc = fit.varcomp.set_index("group")["sdcor"]
    sds = ([vc[outer]] if outer else []) + [vc[inner]]
    np.testing.assert_allclose(bf.theta[b], sds, rtol=1e-4, atol=1e-5)
    # the same criterion: log-likelihoods equal up to the optimisers' last steps
    assert bf.loglik[b] == pytest.approx(fit.loglik, abs=1e-6)
    assert bool(bf.singular[b]) == bool(fit.singular)
    assert bool(bf.converged[b]) == bool(fit.converged)


def _design(**kw) -> am.Design:
    base = dict(therapists=10, patients_per_therapist=4, sessions=4, family="binomial",
                counts="attendance", trials=5, effects={"alliance": 0.4, "autonomy": 0.2})
    base.update(kw)
    return am.Design(**base)


NAMES = ("Intercept", "alliance", "autonomy", "alliance:autonomy")


@pytest.mark.parametrize(("kw", "formula", "outer", "inner"), [
    ({}, "attended ~ alliance * autonomy + (1 | therapist/patient)",
     "therapist", "therapist:patient"),
    # no therapist variance: most fits are singular (outer SD at zero)
    ({"icc_therapist": 0.0, "dropout": 0.3}, "attended ~ alliance * autonomy + "
     "(1 | therapist) + (1 | therapist:patient)", "therapist", "therapist:patient"),
    ({"icc_patient": 0.0}, "attended ~ alliance * autonomy + (1 | therapist)", None,
     "therapist"),
])
def test_batched_fits_equal_the_per_replicate_fits(kw, formula, outer, inner):
    design = _design(**kw)
    seeds = np.random.SeedSequence(11).spawn(8)
    X, Y, ther, pat, mask, sims = batch_arrays(design, "attended", NAMES, seeds)
    bf = gb.fit_glmm_batch(X, Y, pat if outer else ther, ther if outer else None,
                           trials=5.0, mask=mask)
    n_singular = 0
    for b, sa in enumerate(sims):
        data = am.simulate(design, seed=seeds[b])
        assert len(data) == int(sa.observed.sum())
        fit = _per_replicate(formula, data, family="binomial", trials="scheduled")
        _check(bf, b, fit, outer, inner)
        n_singular += bool(fit.singular)
    if kw.get("icc_therapist") == 0.0:
        assert n_singular >= 3  # the singular branch is exercised


def test_poisson_batched_fits_equal_the_per_replicate_fits():
    rng = np.random.default_rng(4)
    T, P, S, B = 8, 5, 3, 5
    ther = np.repeat(np.arange(T), P * S)
    pat = np.repeat(np.arange(T * P), S)
    x = rng.normal(size=(B, ther.size))
    eta = (0.5 + 0.3 * x + rng.normal(0, 0.3, (B, T))[:, ther]
           + rng.normal(0, 0.4, (B, T * P))[:, pat])
    Y = rng.poisson(np.exp(eta)).astype(float)
    X = np.stack([np.ones_like(x), x], axis=2)
    bf = gb.fit_glmm_batch(X, Y, pat, ther, family="poisson")
    for b in range(B):
        d = pd.DataFrame({"y": Y[b], "x": x[b], "therapist": ther, "patient": pat})
        fit = _per_replicate("y ~ x + (1 | therapist/patient)", d, family="poisson")
        _check(bf, b, fit, "therapist", "therapist:patient")


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_exact_gradient_equals_differences_of_the_deviance(nested, family):
    rng = np.random.default_rng(7)
    T, P, S, B = 6, 4, 3, 3
    ther = np.repeat(np.arange(T), P * S)
    pat = np.repeat(np.arange(T * P), S)
    X = np.stack([np.ones((B, ther.size)), rng.normal(size=(B, ther.size))], axis=2)
    eta = 0.2 + 0.5 * X[:, :, 1] + rng.normal(0, 0.7, (B, T * P))[:, pat]
    if family == "binomial":
        nt = np.full((B, ther.size), 4.0)
        Y = rng.binomial(4, 1 / (1 + np.exp(-eta))).astype(float)
    else:
        nt = np.ones((B, ther.size))
        Y = rng.poisson(np.exp(eta)).astype(float)
    cl = gb._Clusters(pat, ther if nested else None)
    prob = gb._Problem(X[:, cl.order], Y[:, cl.order], nt[:, cl.order], family, cl)
    k = prob.k
    x = np.column_stack([rng.uniform(0.3, 1.2, (B, k)), rng.normal(0, 0.3, (B, 2))])
    v0 = np.zeros((B, cl.n_inner))
    u0 = np.zeros((B, cl.n_outer)) if nested else None
    pt = gb._Point.at(prob, x, v0, u0)
    h = 1e-5
    for j in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, j] = h
        up = gb._Point.at(prob, x + e, v0, u0).m.dev
        down = gb._Point.at(prob, x - e, v0, u0).m.dev
        np.testing.assert_allclose(pt.grad[:, j], (up - down) / (2 * h), rtol=1e-6, atol=1e-6)


def test_separation_is_marked_not_returned():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 4)
    x = rng.normal(size=40)
    X = np.column_stack([np.ones(40), x])
    Y = np.stack([rng.binomial(3, 0.5, 40), np.where(x > 0, 3, 0)]).astype(float)
    bf = gb.fit_glmm_batch(X, Y, g, trials=3.0)
    assert bf.status.tolist() == ["", "separation"]
    assert np.isnan(bf.beta[1]).all() and np.isnan(bf.se[1]).all()
    assert bf.ok.tolist() == [True, False] and not bf.converged[1]


def test_bad_input_is_refused():
    g = np.repeat(np.arange(4), 3)
    X = np.ones((1, 12, 1))
    with pytest.raises(ModelSpecError, match="family"):
        gb.fit_glmm_batch(X, np.ones((1, 12)), g, family="gamma")
    with pytest.raises(ModelSpecError, match="not nested"):
        gb.fit_glmm_batch(X, np.ones((1, 12)), np.tile(np.arange(3), 4), g, trials=2.0)
    with pytest.raises(ModelSpecError, match="shape"):
        gb.fit_glmm_batch(np.ones((2, 12, 1)), np.ones((1, 12)), g)


@pytest.mark.slow
def test_batched_fits_equal_the_per_replicate_fits_over_many_replicates():
    """120 replicates of a small R1-like design (age in years, a weak therapist variance,
    dropout): every replicate within the stated tolerances, singular fits included."""
    design = am.Design(therapists=12, patients_per_therapist=5, sessions=4, family="binomial",
                       counts="attendance", trials=6, icc_therapist=0.02, dropout=0.2,
                       effects={"alliance": 0.3, "autonomy": 0.1, "alliance:autonomy": 0.1})
    names = ("Intercept", "alliance", "age", "autonomy", "alliance:age", "alliance:autonomy")
    formula = "attended ~ alliance * (age + autonomy) + (1 | therapist/patient)"
    seeds = np.random.SeedSequence(2026).spawn(120)
    X, Y, ther, pat, mask, _ = batch_arrays(design, "attended", names, seeds)
    bf = gb.fit_glmm_batch(X, Y, pat, ther, trials=6.0, mask=mask)
    n_singular = 0
    for b, ss in enumerate(seeds):
        fit = _per_replicate(formula, am.simulate(design, seed=ss), family="binomial",
                             trials="scheduled")
        _check(bf, b, fit, "therapist", "therapist:patient")
        n_singular += bool(fit.singular)
    assert n_singular >= 10
