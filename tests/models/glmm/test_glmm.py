"""The binomial / Poisson GLMM: data checks, diagnostics, result methods, numerics.

Agreement with lme4 is in test_glmer_reference.py; here: errors named by column, row and
value; zero trials excluded and counted; separation and singular fits warned about;
closed forms for the quadrature rule and the finite-difference derivatives; Laplace and
AGQ with one node are the same criterion; odds ratios are exp of the Wald limits.
"""

from __future__ import annotations

import doctest
import importlib
import warnings

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import (
    ConvergenceWarning,
    DataValidationError,
    MissingDataWarning,
    ModelSpecError,
    SingularFitWarning,
)
from alliance_models.models.glmm import GLMMFit
from alliance_models.models.glmm.agq import agq_deviance, gh_rule
from alliance_models.models.glmm.family import get_family
from alliance_models.models.glmm.laplace import Criterion, deriv12
from alliance_models.models.glmm.pirls import GLMMProblem
from alliance_models.models.lmm.dense import RandomBlock

F = "attended ~ alliance + (1 | therapist)"


def _sim(seed: int = 5, n_ther: int = 15, per: int = 6, sd: float = 0.7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_ther), per)
    d = pd.DataFrame({"therapist": [f"T{i:02d}" for i in g],
                      "alliance": rng.normal(size=g.size),
                      "scheduled": rng.integers(3, 9, size=g.size)})
    eta = 0.3 + 0.5 * d.alliance + rng.normal(0, sd, n_ther)[g]
    d["attended"] = rng.binomial(d.scheduled, 1 / (1 + np.exp(-eta)))
    return d


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return _sim()


@pytest.fixture(scope="module")
def fit(sim) -> GLMMFit:
    return am.fit_mixed(F, sim, family="binomial", trials="scheduled")


def test_fit_type_and_tables(fit):
    assert isinstance(fit, GLMMFit)
    assert fit.to_frame().columns.tolist() == ["estimate", "se", "z", "p", "ci_lower",
                                               "ci_upper"]
    assert fit.varcomp.group.tolist() == ["therapist"]
    assert fit.contrast_df(np.ones(2)) == np.inf
    text = fit.summary(exp=True)
    assert "Laplace approximation" in text and "Odds ratios" in text
    assert "attended out of scheduled" in text


def test_odds_ratios_are_exp_of_the_wald_limits(fit):
    orr = fit.odds_ratios(alpha=0.1)
    ci = fit.conf_int(alpha=0.1)
    np.testing.assert_allclose(orr["odds_ratio"], np.exp(fit.params), rtol=1e-14)
    np.testing.assert_allclose(orr["ci_lower"], np.exp(ci["lower"]), rtol=1e-14)
    z = 1.6448536269514722
    np.testing.assert_allclose(ci["upper"] - fit.params, z * fit.fixed["se"], rtol=1e-12)


def test_predict_scales(fit, sim):
    link = fit.predict(sim, include_random=True)
    prob = fit.predict(sim, include_random=True, scale="response")
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-link)), rtol=1e-12)
    new = pd.DataFrame({"alliance": [0.0], "therapist": ["T99"]})  # unseen: b = 0
    assert fit.predict(new, include_random=True).iloc[0] == pytest.approx(fit.params.iloc[0])


def test_bernoulli_rows_equal_the_aggregated_counts(sim):
    # one 0/1 row per scheduled session gives the same likelihood up to the binomial
    # coefficients, so the same estimates
    long = sim.loc[sim.index.repeat(sim.scheduled)].copy()
    long["k"] = long.groupby(level=0).cumcount()
    long["attended"] = (long.k < long.attended).astype(int)
    a = am.fit_mixed(F, sim, family="binomial", trials="scheduled")
    b = am.fit_mixed(F, long.reset_index(drop=True), family="binomial")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6)
    np.testing.assert_allclose(a.fixed["se"], b.fixed["se"], rtol=1e-4)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-5)


def test_zero_trials_are_excluded_and_counted(sim):
    d = sim.copy()
    d.loc[[3, 11], "scheduled"] = 0
    d.loc[[3, 11], "attended"] = 0
    with pytest.warns(MissingDataWarning, match=r"2 of 90 rows have zero trials.*rows 3, 11"):
        fit = am.fit_mixed(F, d, family="binomial", trials="scheduled")
    assert fit.n_zero_trials == 2 and fit.n_obs == 88
    ref = am.fit_mixed(F, d.drop(index=[3, 11]), family="binomial", trials="scheduled")
    np.testing.assert_allclose(fit.params, ref.params, rtol=1e-10)
    assert "2 with zero trials excluded" in fit.summary()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"attended": (7, 9), "scheduled": (7, 8)},
         r"'attended' exceeds trials column 'scheduled' in row 7 \(first: 9 successes of 8\)"),
        ({"attended": (4, -1)}, r"'attended' \(successes\) must be >= 0; row 4: -1"),
        ({"scheduled": (5, 6.5)},
         r"'scheduled' \(trials\) must hold whole-number counts; row 5: 6.5"),
        ({"attended": (2, 1.5)}, r"'attended' \(successes\) must hold whole-number counts; row 2"),
    ],
)
def test_count_errors_name_column_row_and_value(sim, change, match):
    d = sim.copy()
    d["attended"] = d["attended"].astype(float)
    d["scheduled"] = d["scheduled"].astype(float)
    for col, (row, val) in change.items():
        d.loc[row, col] = val
    with pytest.raises(DataValidationError, match=match):
        am.fit_mixed(F, d, family="binomial", trials="scheduled")


def test_proportions_as_response_get_a_hint(sim):
    d = sim.assign(rate=sim.attended / sim.scheduled)
    with pytest.raises(DataValidationError, match="not proportions"):
        am.fit_mixed("rate ~ alliance + (1 | therapist)", d, family="binomial",
                     trials="scheduled")


def test_poisson_counts_checked(sim):
    d = sim.assign(k=sim.attended.astype(float))
    d.loc[6, "k"] = -2.0
    with pytest.raises(DataValidationError, match=r"'k' \(counts\) must be >= 0; row 6: -2"):
        am.fit_mixed("k ~ alliance + (1 | therapist)", d, family="poisson")


@pytest.mark.parametrize(
    ("formula", "kwargs", "match"),
    [
        ("cbind(attended, missed) ~ alliance + (1 | therapist)",
         {"family": "binomial"}, r"trials='scheduled'"),
        (F, {"family": "binomial", "trials": "scheduled", "nAGQ": 5, },
         None),
        ("attended ~ alliance + (1 | therapist/patient)",
         {"family": "binomial", "trials": "scheduled", "nAGQ": 5}, r"single random-effects"),
        ("attended ~ alliance + (1 + alliance | therapist)",
         {"family": "binomial", "trials": "scheduled", "nAGQ": 3}, r"one coefficient"),
        (F, {"family": "binomial", "trials": "scheduled", "nAGQ": 0}, r"nAGQ must be"),
        (F, {"family": "poisson", "trials": "scheduled"}, r"only used with family='binomial'"),
        (F, {"family": "gamma"}, r"not supported"),
        (F, {"trials": "scheduled"}, r"family='binomial' only"),
        ("attended ~ alliance", {"family": "binomial", "trials": "scheduled"},
         r"no random-effects term"),
    ],
)
def test_option_errors(sim, formula, kwargs, match):
    d = sim.assign(missed=sim.scheduled - sim.attended, patient=np.arange(len(sim)) % 3)
    if match is None:  # nAGQ > 1 on one scalar term is allowed
        assert am.fit_mixed(formula, d, **kwargs).n_agq == 5
        return
    with pytest.raises(ModelSpecError, match=match):
        am.fit_mixed(formula, d, **kwargs)


def test_complete_separation_is_warned_with_what_to_do(sim):
    d = sim.copy()
    d["high"] = (d.alliance > 0).astype(float)
    d["attended"] = np.where(d.high == 1, d.scheduled, 0)
    # the estimates run off to infinity: PIRLS cannot converge, the fit stops with an
    # error that points back to the warning
    with pytest.warns(ConvergenceWarning, match=r"complete separation.*high.*fit_bayes"), \
            pytest.raises(ModelSpecError, match="completely separated"):
        am.fit_mixed("attended ~ high + (1 | therapist)", d, family="binomial",
                     trials="scheduled")
    # quasi-separation by a design that is not separated: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        am.fit_mixed(F, sim, family="binomial", trials="scheduled")


def test_singular_fit_is_warned():
    d = _sim(seed=12, sd=0.0, n_ther=10, per=4)  # lme4: theta 0, logLik -63.62826
    with pytest.warns(SingularFitWarning,
                      match=r"singular fit.*\(Intercept\) in \(1 \| therapist\)"):
        fit = am.fit_mixed(F, d, family="binomial", trials="scheduled")
    assert fit.singular and fit.theta[0] < 1e-4
    assert np.all(np.isfinite(fit.fixed["se"]))


def test_gh_rule_integrates_normal_moments_exactly():
    for k in (1, 2, 5, 9, 20):
        z, w = gh_rule(k)
        assert w.sum() == pytest.approx(1.0, abs=1e-14)
        # exact for polynomials of degree <= 2k - 1: E z^(2j) = (2j - 1)!!
        for j in range(k):
            moment = float(np.prod(np.arange(2 * j - 1, 0, -2, dtype=float)))
            assert w @ z ** (2 * j) == pytest.approx(moment, rel=1e-9)


def test_deriv12_on_a_quadratic_is_exact():
    A = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, -0.3], [0.5, -0.3, 1.5]])
    b = np.array([1.0, -2.0, 0.5])

    def f(x: np.ndarray) -> float:
        return float(0.5 * x @ A @ x + b @ x)

    x = np.array([0.3, -0.2, 1.1])
    g, H = deriv12(f, x, f(x))
    np.testing.assert_allclose(H, A, atol=1e-6)
    np.testing.assert_allclose(g, A @ x + b, atol=1e-8)


def test_one_node_quadrature_is_the_laplace_deviance(sim):
    g = pd.factorize(sim.therapist, sort=True)[0]
    X = np.column_stack([np.ones(len(sim)), sim.alliance])
    prob = GLMMProblem(sim.attended.to_numpy(float), sim.scheduled.to_numpy(float), X,
                       [RandomBlock(np.ones((len(sim), 1)), g, int(g.max()) + 1)],
                       get_family("binomial"))
    x = np.array([0.6, 0.2, 0.4])
    mode = Criterion(prob, 1).mode(x)
    assert agq_deviance(prob, x[:1], mode, 1) == pytest.approx(prob.laplace(mode), abs=1e-9)
    # more nodes converge: 15 and 25 nodes agree to 1e-8
    assert agq_deviance(prob, x[:1], mode, 15) == pytest.approx(
        agq_deviance(prob, x[:1], mode, 25), abs=1e-8)


def test_pirls_mode_is_a_stationary_point(sim):
    g = pd.factorize(sim.therapist, sort=True)[0]
    X = np.column_stack([np.ones(len(sim)), sim.alliance])
    y, n = sim.attended.to_numpy(float), sim.scheduled.to_numpy(float)
    prob = GLMMProblem(y, n, X, [RandomBlock(np.ones((len(sim), 1)), g, int(g.max()) + 1)],
                       get_family("binomial"))
    theta, beta = np.array([0.8]), np.array([0.1, 0.4])
    m = prob.pirls(theta, beta, u_only=True)
    # gradient of -loglik + |u|^2 / 2 in u: -theta Z'(y - n mu) + u = 0
    mu = 1 / (1 + np.exp(-m.eta))
    grad = -theta[0] * np.bincount(g, y - n * mu) + m.u
    np.testing.assert_allclose(grad, 0, atol=1e-9)


@pytest.mark.parametrize("module", ["family", "agq", "laplace", "counts", "separation",
                                    "pirls", "result", "batched"])
def test_docstring_examples_run(module):
    res = doctest.testmod(importlib.import_module(f"alliance_models.models.glmm.{module}"),
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
