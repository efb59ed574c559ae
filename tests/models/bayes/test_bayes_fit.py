"""Tests of fit_bayes and BayesFit (models/bayes/fit.py): the interface, summaries and
their diagnostics, data and argument checks, samplers and seeds.

Fits are session-scoped fixtures with few draws (tests/models/bayes/conftest.py).
Independent references used across tests/models/bayes/: scipy.stats log densities
recomputed from the posterior draws (the model is the one documented), REML estimates
from ``fit_mixed`` (itself checked against lme4/lmerTest in test_mixed.py), numpy closed
forms for the standardisation, the HDI and the rank-normalised split R-hat, prior
moments in closed form.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytensor
import pytest
from bayes_fixtures import (
    ADDITIVE_SPEC,
    FORMULA,
    fit_recorded,
    sampling_problems,
    simulate_moderation,
)
from scipy import stats

import alliance_models as am
from alliance_models.errors import DataValidationError, DiagnosticsWarning, ModelSpecError
from alliance_models.models.bayes.fit import _diagnose, resolve_sampler
from alliance_models.models.interface import FixedEffectsFit


@pytest.mark.parametrize("name", ["gfit_logged", "gfit_additive_rec", "bfit_binom_rec",
                                  "bfit_bb_rec", "slope_fit_rec"])
def test_fixtures_sample_well(name, request):
    """The short fixture fits sampled well enough for the tests built on them.

    The bounds (bayes_fixtures.sampling_problems) hold across CPUs and BLAS kernels; a
    DiagnosticsWarning at the fixtures' own thresholds is recorded, not raised, as one
    seed's exact divergence count depends on the machine (2 of 600 draws for the additive
    model on one of them).
    """
    rec = request.getfixturevalue(name)
    rec = rec[0] if isinstance(rec, tuple) else rec
    assert sampling_problems(rec.fit) == [], rec.warnings
    # whatever was recorded is the sampler's diagnostics, with its advice
    assert all(w.startswith("DiagnosticsWarning: MCMC diagnostics failed")
               for w in rec.warnings if "Diagnostics" in w)


def test_quiet_fit_logs_no_predictive_sampling_line(gfit_logged):
    # progressbar=False (the default): PyMC's "Sampling: [adherence]" lines of the
    # posterior and prior predictive draws are not shown
    _, log = gfit_logged
    assert not [m for m in log if m.startswith("Sampling:")], log


def test_pytensor_blas_notice_is_not_passed_on(slope_fit_rec):
    """fit_bayes keeps PyTensor's 'could not link to a BLAS' notice to itself (it concerns
    only PyMC's C-compiled start-value function; sampling runs on numba): the correlated
    slopes fit, with the BLAS lookup forced to happen inside it, passes on no warning
    but (on some machines) its own DiagnosticsWarning about the sampling."""
    assert slope_fit_rec.other_warnings() == []
    assert not [w for w in slope_fit_rec.warnings if "BLAS" in w]
    # control: the same lookup outside fit_bayes does warn on this installation
    cfg = pytensor.config._config_var_dict["blas__ldflags"]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mp.delattr(cfg, "val", raising=False)
        ldflags = pytensor.config.blas__ldflags
    if ldflags:
        pytest.skip(f"this PyTensor links to a BLAS ({ldflags}): no notice to keep out")
    assert any("could not link to a BLAS" in str(w.message) for w in rec)


# ------------------------------------------------------------------ the fit interface
def test_interface_shapes_and_names(gfit, gdata):
    assert isinstance(gfit, FixedEffectsFit)
    names = list(gfit.frame.x_names)
    assert names == ["Intercept", "alliance", "age", "autonomy", "alliance:age",
                     "alliance:autonomy"]
    draws = gfit.fixed_draws
    assert draws.shape == (2 * 300, 6) and list(draws.columns) == names
    assert list(gfit.params.index) == names
    np.testing.assert_allclose(gfit.params.to_numpy(), draws.to_numpy().mean(axis=0))
    cov = gfit.cov_params()
    np.testing.assert_allclose(cov.to_numpy(), np.cov(draws.to_numpy(), rowvar=False),
                               rtol=1e-12)
    assert gfit.contrast_df(np.eye(6)[:1]) == math.inf
    groups = set(gfit.idata.children)
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
            "sample_stats", "prior", "prior_predictive"} <= groups
    np.testing.assert_array_equal(gfit.idata.observed_data["adherence"].values,
                                  gdata["adherence"].to_numpy())


def test_same_model_spec_as_fit_mixed(gfit_additive, gdata):
    """One parsed ModelSpec drives both backends: same rows, design, groups and names."""
    mfit = am.fit_mixed(ADDITIVE_SPEC, gdata)
    assert gfit_additive.spec is ADDITIVE_SPEC and mfit.spec is ADDITIVE_SPEC
    bf, mf = gfit_additive.frame, mfit.frame
    assert bf.x_names == mf.x_names
    np.testing.assert_array_equal(bf.X, mf.X)
    np.testing.assert_array_equal(bf.y, mf.y)
    for g in ("therapist", "therapist:patient"):
        np.testing.assert_array_equal(bf.groups[g], mf.groups[g])
    assert list(gfit_additive.params.index) == list(mfit.params.index)


def test_summary_columns_and_text(gfit):
    tab = gfit.to_frame()
    for col in ("mean", "sd", "hdi95_lb", "hdi95_ub", "r_hat", "ess_bulk", "ess_tail",
                "mcse_mean"):
        assert col in tab.columns
    assert list(tab.index[:6]) == list(gfit.frame.x_names)
    assert {"sigma", "sd_therapist", "sd_therapist:patient"} <= set(tab.index)
    np.testing.assert_allclose(tab.loc[list(gfit.frame.x_names), "mean"],
                               gfit.params.to_numpy(), rtol=1e-10)
    # HDI contains the mean; SD matches the draws (ddof 0 or 1 within 1e-2 relative)
    assert (tab["hdi95_lb"] < tab["mean"]).all() and (tab["mean"] < tab["hdi95_ub"]).all()
    np.testing.assert_allclose(tab.loc["alliance", "sd"], gfit.fixed_draws["alliance"].std(),
                               rtol=1e-2)
    text = gfit.summary()
    assert "alliance:autonomy" in text and "r_hat" in text and "sampler: pymc" in text
    assert "Priors" in text


def _rank_rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat (Vehtari et al. 2021, eqs. 3-4 and the folded variant),
    written out in numpy; ``x`` has shape (chains, draws)."""
    half = x.shape[1] // 2
    split = np.concatenate([x[:, :half], x[:, x.shape[1] - half:]])

    def rhat(s: np.ndarray) -> float:
        n = s.shape[1]
        b = n * s.mean(axis=1).var(ddof=1)
        w = s.var(axis=1, ddof=1).mean()
        return math.sqrt(((n - 1) / n * w + b / n) / w)

    def z(s: np.ndarray) -> np.ndarray:
        r = stats.rankdata(s, method="average").reshape(s.shape)
        return stats.norm.ppf((r - 0.375) / (s.size + 0.25))

    folded = np.abs(split - np.median(split))
    return max(rhat(z(split)), rhat(z(folded)))


def test_summary_diagnostics_from_the_chains(gfit):
    """r_hat (independent numpy rank-normalised split R-hat) and ESS/MCSE (ArviZ on the
    sampled DataTree) belong to the labelled parameter, with the chains kept apart."""
    import arviz as az

    tab = gfit.to_frame()
    post = gfit.idata.posterior
    dt = gfit.idata
    ess_b = az.ess(dt, var_names=["beta"])["beta"]
    ess_t = az.ess(dt, var_names=["beta"], method="tail")["beta"]
    mcse = az.mcse(dt, var_names=["beta"])["beta"]
    for name in ("alliance", "alliance:autonomy"):
        x = post["beta"].sel(term=name).transpose("chain", "draw").values
        np.testing.assert_allclose(tab.loc[name, "r_hat"], _rank_rhat(x), rtol=1e-8)
        np.testing.assert_allclose(tab.loc[name, "ess_bulk"], float(ess_b.sel(term=name)),
                                   rtol=1e-8)
        np.testing.assert_allclose(tab.loc[name, "ess_tail"], float(ess_t.sel(term=name)),
                                   rtol=1e-8)
        np.testing.assert_allclose(tab.loc[name, "mcse_mean"], float(mcse.sel(term=name)),
                                   rtol=1e-8)
    x = post["sd_therapist"].transpose("chain", "draw", ...).values[..., 0]
    np.testing.assert_allclose(tab.loc["sd_therapist", "r_hat"], _rank_rhat(x), rtol=1e-8)
    # mixing the chains' order would change r_hat: the check can tell chains apart
    assert abs(_rank_rhat(np.sort(x, axis=None).reshape(x.shape)) - _rank_rhat(x)) > 0.1


# ------------------------------------------------------------------ diagnostics
def test_diagnostics_warning_with_bad_settings():
    df = simulate_moderation(therapists=12, patients=3, sessions=3, seed=4)
    with pytest.warns(DiagnosticsWarning) as rec:
        fit = am.fit_bayes("adherence ~ alliance + (1 | therapist)", df, draws=30, tune=10,
                           chains=2, sampler="pymc", seed=1, target_accept=0.5)
    # one DiagnosticsWarning gathers every failed check (other warnings, if any, are
    # passed on by pytest.warns and fail the test through filterwarnings = error)
    diag = [w for w in rec if issubclass(w.category, DiagnosticsWarning)]
    assert len(diag) == 1
    msg = str(diag[0].message)
    assert "ess_bulk < 400" in msg and "Try:" in msg and "more draws" in msg
    # 60 draws cannot give 400 effective draws: every reported parameter is named,
    # with its ESS; and each one above the r_hat threshold is named with its r_hat
    tab = fit.to_frame()
    for name, row in tab.iterrows():
        assert f"{name} ({row['ess_bulk']:.0f})" in msg
        if row["r_hat"] > 1.01:
            assert f"{name} ({row['r_hat']:.3f})" in msg
    if fit.n_divergent:
        assert f"{fit.n_divergent} divergent transition(s)" in msg


def test_diagnose_text_unit():
    tab = pd.DataFrame({"r_hat": [1.0, 1.2], "ess_bulk": [900.0, 50.0]},
                       index=["alliance", "sd_therapist"])
    msg = _diagnose(tab, n_div=3, n_draws=400, rhat_max=1.01, ess_min=400)
    assert "r_hat > 1.01 for 1 parameter(s): sd_therapist (1.200)" in msg
    assert "ess_bulk < 400 for 1 parameter(s): sd_therapist (50)" in msg
    assert "3 divergent transition(s)" in msg and "target_accept" in msg
    assert "reparametrise" in msg and "tune=2000" in msg
    assert _diagnose(tab.iloc[:1], 0, 400, 1.01, 400) is None


# ------------------------------------------------------------------ bad input
def test_binomial_without_trials(bdata):
    with pytest.raises(ModelSpecError, match="family='binomial' needs trials="):
        am.fit_bayes("attended ~ alliance + (1 | therapist)", bdata, family="binomial")


def test_successes_above_trials_names_rows(bdata):
    bad = bdata.copy()
    bad.loc[[4, 9], "attended"] = 11  # scheduled is 10
    with pytest.raises(DataValidationError,
                       match=r"'attended' exceeds trials column 'scheduled' in rows 4, 9 "
                             r"\(first: 11 successes of 10\)"):
        am.fit_bayes("attended ~ alliance + (1 | therapist)", bad, family="binomial",
                     trials="scheduled")


def test_non_integer_counts(bdata):
    bad = bdata.copy()
    bad["attended"] = bad["attended"].astype(float)
    bad.loc[7, "attended"] = 2.5
    with pytest.raises(DataValidationError, match=r"'attended' \(successes\) must hold "
                       r"whole-number counts; row 7: 2.5"):
        am.fit_bayes("attended ~ alliance + (1 | therapist)", bad, family="binomial",
                     trials="scheduled")
    bad = bdata.copy()
    bad["scheduled"] = bad["scheduled"].astype(float)
    bad.loc[[1, 2, 3, 5, 8, 13], "scheduled"] = -1.0
    with pytest.raises(DataValidationError, match=r"'scheduled' \(trials\) must be >= 0; "
                       r"rows 1, 2, 3, 5, 8 \(and 1 more\): -1 \(the first\)"):
        am.fit_bayes("attended ~ alliance + (1 | therapist)", bad, family="beta_binomial",
                     trials="scheduled")


def test_bad_data_values_are_named(gdata, bdata):
    """Non-finite values name the column, rows and value; a constant gaussian outcome and
    non-numeric trials are named with the value as given (checked before any sampling)."""
    bad = gdata.copy()
    bad.loc[[3, 8], "autonomy"] = np.inf
    with pytest.raises(ModelSpecError, match=r"'autonomy' has non-finite values "
                       r"\(rows 3, 8: inf\); only finite numbers"):
        am.fit_bayes(FORMULA, bad)
    bad = gdata.copy()
    bad.loc[5, "adherence"] = -np.inf
    with pytest.raises(ModelSpecError, match=r"'adherence' has non-finite values "
                       r"\(row 5: -inf\)"):
        am.fit_bayes(FORMULA, bad)
    with pytest.raises(ModelSpecError, match=r"response 'adherence' is constant \(2 in all "
                       r"600 rows\); a gaussian model cannot be fitted"):
        am.fit_bayes(FORMULA, gdata.assign(adherence=2.0))
    bad = bdata.copy()
    bad["scheduled"] = bad["scheduled"].astype(object)
    bad.loc[6, "scheduled"] = "ten"
    with pytest.raises(DataValidationError, match=r"'scheduled' \(trials\) must hold "
                       r"whole-number counts; row 6: 'ten'"):
        am.fit_bayes("attended ~ alliance + (1 | therapist)", bad, family="binomial",
                     trials="scheduled")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "poisson"}, "family 'poisson' is unknown; allowed: gaussian, binomial"),
        ({"sampler": "stan"}, "sampler 'stan' is unknown; allowed: auto, pymc, nutpie"),
        ({"draws": 0}, "draws must be a positive integer, got 0"),
        ({"chains": 1.5}, "chains must be a positive integer"),
        ({"target_accept": 1.0}, r"target_accept must lie in \[0.5, 1\)"),
        ({"rhat_max": 0.99}, r"rhat_max must be >= 1 \(r_hat is 1 at convergence\), got 0.99"),
        ({"ess_min": -5}, "ess_min must be >= 0, got -5"),
        ({"trials": "scheduled"}, "trials= is only used by the binomial families"),
        ({"priors": {"sigma": ("Normal", {"mu": 0, "sigma": 1})}}, "'sigma' is positive"),
        ({"priors": {"age": ("Gumbel", {"mu": 0, "beta": 1})}},
         "names distribution 'Gumbel'; supported: Cauchy, Exponential"),
    ],
)
def test_bad_arguments(gdata, kwargs, match):
    data = gdata.assign(scheduled=10)
    with pytest.raises(ModelSpecError, match=match):
        am.fit_bayes(FORMULA, data, **kwargs)


def test_non_finite_values_raise_as_in_fit_mixed_and_fit_gee(gdata, bdata):
    """One check (ModelFrame.check_finite) for every fitting function: the same input
    raises the same error class with the same message."""
    bad = gdata.copy()
    bad.loc[[3, 8], "autonomy"] = np.inf
    f = "adherence ~ alliance + autonomy + (1 | therapist)"
    msgs = []
    for fit in (am.fit_bayes, am.fit_mixed):
        with pytest.raises(ModelSpecError, match="'autonomy' has non-finite") as exc:
            fit(f, bad)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
    # a binomial count model: an infinite trials value, as fit_gee reports it
    bad = bdata.copy()
    bad["scheduled"] = bad["scheduled"].astype(float)
    bad.loc[6, "scheduled"] = np.inf
    msgs = []
    for fit in (am.fit_bayes, am.fit_gee):
        with pytest.raises(ModelSpecError, match=r"'scheduled' has non-finite values "
                           r"\(row 6: inf\)") as exc:
            fit("attended ~ alliance + (1 | therapist)", bad, family="binomial",
                trials="scheduled")
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]


# ------------------------------------------------------------------ samplers
def test_seed_reproducibility():
    """The same seed gives the same draws in one process (exact: same machine and
    BLAS); a different seed gives different draws."""
    df = simulate_moderation(therapists=8, patients=3, sessions=3, seed=8)
    kw = {"draws": 100, "tune": 100, "rhat_max": 1.5, "ess_min": 10}
    f = "adherence ~ alliance + (1 | therapist)"
    a = fit_recorded(f, df, seed=3, **kw).fit
    b = fit_recorded(f, df, seed=np.random.SeedSequence(3), **kw).fit
    np.testing.assert_array_equal(a.fixed_draws.to_numpy(), b.fixed_draws.to_numpy())
    np.testing.assert_array_equal(a.idata.posterior_predictive["adherence"].values,
                                  b.idata.posterior_predictive["adherence"].values)
    c = fit_recorded(f, df, seed=4, **kw).fit
    assert not np.array_equal(a.fixed_draws.to_numpy(), c.fixed_draws.to_numpy())


def test_nutpie_sampler(gdata):
    fit = fit_recorded("adherence ~ alliance * autonomy + (1 | therapist)", gdata,
                       sampler="nutpie", seed=3).fit
    assert fit.sampler == "nutpie" and "sampler: nutpie" in fit.summary()
    assert fit.idata.posterior.sizes["chain"] == 2
    # the same model as with PyMC NUTS: fixed effects agree with REML within
    # 3 posterior SD (few draws)
    mfit = am.fit_mixed("adherence ~ alliance * autonomy + (1 | therapist)", gdata)
    diff = (fit.params - mfit.params[fit.params.index]).abs()
    mc = 4 * fit.to_frame().loc[diff.index, "mcse_mean"]
    assert (diff < 3 * fit.fixed_draws.std() + mc).all()


def test_auto_sampler_is_pymc(gfit):
    assert resolve_sampler("auto") == "pymc" and gfit.sampler == "pymc"
    assert resolve_sampler("nutpie") == "nutpie"


def test_auto_sampler_is_nutpie_for_collapsed_models():
    """sampler="auto" takes the measured faster route (benchmarks/bayes_speed.py): nutpie
    for a collapsed model when nutpie is installed, PyMC's NUTS otherwise."""
    pytest.importorskip("nutpie")
    assert resolve_sampler("auto", collapsed=True) == "nutpie"
    assert resolve_sampler("auto", collapsed=False) == "pymc"
    assert resolve_sampler("pymc", collapsed=True) == "pymc"
