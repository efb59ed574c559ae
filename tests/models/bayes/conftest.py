"""Fitted fixtures shared by the Bayesian tests (tests/models/bayes/).

Session-scoped short fits (PyMC NUTS, 2 chains x 300 draws), each sampled once per run
and only when a test asks for it. Every fixture keeps the ``DiagnosticsWarning`` of its
fit (see ``bayes_fixtures.fit_recorded``) instead of failing the whole directory when one
seed gives a divergence on some CPU; ``test_bayes_fit.py::test_fixtures_sample_well``
checks their sampling with bounds that hold across machines.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytensor
import pytest
from bayes_fixtures import ADDITIVE_SPEC, FORMULA, Recorded, fit_recorded, simulate_moderation

import alliance_models as am


@pytest.fixture(scope="session")
def gdata() -> pd.DataFrame:
    return simulate_moderation(therapists=20, patients=6, sessions=5, seed=11)


@pytest.fixture(scope="session")
def gfit_logged(gdata) -> tuple[Recorded, list[str]]:
    """The gaussian moderation fit and the INFO-and-above records of PyMC's loggers."""
    log: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.append(record.getMessage())

    logger, handler = logging.getLogger("pymc"), Keep(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        rec = fit_recorded(FORMULA, gdata, seed=1, prior_predictive=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return rec, log


@pytest.fixture(scope="session")
def gfit(gfit_logged) -> am.BayesFit:
    return gfit_logged[0].fit


@pytest.fixture(scope="session")
def gfit_additive_rec(gdata) -> Recorded:
    return fit_recorded(ADDITIVE_SPEC, gdata, seed=2)


@pytest.fixture(scope="session")
def gfit_additive(gfit_additive_rec) -> am.BayesFit:
    return gfit_additive_rec.fit


@pytest.fixture(scope="session")
def bdata() -> pd.DataFrame:
    return simulate_moderation(therapists=20, patients=6, sessions=4, family="binomial",
                               seed=5)


@pytest.fixture(scope="session")
def bfit_binom_rec(bdata) -> Recorded:
    return fit_recorded("attended ~ alliance * autonomy + (1 | therapist/patient)", bdata,
                        family="binomial", trials="scheduled", seed=3)


@pytest.fixture(scope="session")
def bfit_binom(bfit_binom_rec) -> am.BayesFit:
    return bfit_binom_rec.fit


@pytest.fixture(scope="session")
def bfit_bb_rec() -> Recorded:
    # no patient effects: the model has therapist intercepts only, so patient variation
    # would otherwise be absorbed as extra overdispersion (lower kappa)
    df = simulate_moderation(therapists=20, patients=6, sessions=4, family="beta_binomial",
                             kappa=6.0, sd_patient=0.0, seed=6)
    return fit_recorded("attended ~ alliance * autonomy + (1 | therapist)", df,
                        family="beta_binomial", trials="scheduled", seed=4)


@pytest.fixture(scope="session")
def bfit_bb(bfit_bb_rec) -> am.BayesFit:
    return bfit_bb_rec.fit


@pytest.fixture(scope="session")
def slope_fit_rec() -> Recorded:
    """Correlated therapist slopes (simulated slope SD 0.25), every warning recorded.

    PyTensor looks for a BLAS once per process, when PyMC compiles the LKJ start values
    with its C backend; the lookup is made to happen again inside this fit.
    """
    df = simulate_moderation(therapists=25, patients=4, sessions=5, seed=21)
    th = pd.factorize(df["therapist"], sort=True)[0]
    df["adherence"] += np.random.default_rng(0).normal(0, 0.25, th.max() + 1)[th] * df[
        "alliance"]
    cfg = pytensor.config._config_var_dict["blas__ldflags"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delattr(cfg, "val", raising=False)
        return fit_recorded("adherence ~ alliance * autonomy + (1 + alliance | therapist)",
                            df, seed=8, record_all=True)


@pytest.fixture(scope="session")
def slope_fit(slope_fit_rec) -> am.BayesFit:
    return slope_fit_rec.fit
