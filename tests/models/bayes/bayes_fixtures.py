"""Helpers of the Bayesian tests: a simulator with known effects and recorded short fits.

The simulator of three-level moderation data is independent of ``am.simulate`` on
purpose: the Bayesian tests need the exact generating values, and they should not break
when the power engineer changes the design defaults.

:func:`fit_recorded` fits with few draws and keeps the ``DiagnosticsWarning`` it raises
instead of failing: how many divergences one seed gives depends on the CPU and the BLAS
kernel, so tests that need a well-sampled fit assert what is robust
(:func:`sampling_problems`), and the diagnostics tests check that the warning fires.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

import alliance_models as am
from alliance_models.errors import DiagnosticsWarning

FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"
ADDITIVE = "adherence ~ alliance + age + autonomy + (1 | therapist/patient)"
#: The additive model parsed once: fitted from a ModelSpec (the object fit_mixed takes
#: too).
ADDITIVE_SPEC = am.parse_formula(ADDITIVE)
#: Short runs for the fixtures, with thresholds such runs can meet (the diagnostics tests
#: use the defaults).
FAST = {"draws": 300, "tune": 300, "chains": 2, "sampler": "pymc", "rhat_max": 1.05,
        "ess_min": 50}
#: What "sampled well enough for the tests" means, robust to the CPU and BLAS kernel:
#: divergences in at most 1% of the draws (2 of 600 were seen on one machine, none on
#: another), every r_hat below 1.1, every bulk ESS above 30 (the binomial fixture's
#: smallest is about 51: too close to FAST's 50 to hold on every machine).
MAX_DIVERGENT_SHARE = 0.01
RHAT_LOOSE = 1.1
ESS_LOOSE = 30.0


@dataclass(frozen=True)
class Recorded:
    """A fit with every warning raised while it was fitted (``"Category: message"``)."""

    fit: am.BayesFit
    warnings: tuple[str, ...] = ()

    def other_warnings(self) -> list[str]:
        """The recorded warnings other than the sampler diagnostics."""
        return [w for w in self.warnings if not w.startswith("DiagnosticsWarning:")]


def fit_recorded(*args, record_all: bool = False, **kwargs) -> Recorded:
    """``am.fit_bayes`` with :data:`FAST` settings, its DiagnosticsWarning recorded.

    With ``record_all`` every other warning is recorded too; otherwise they stay
    errors (pytest's ``filterwarnings = error``).
    """
    opts = {**FAST, **kwargs}
    with warnings.catch_warnings(record=True) as rec:
        if record_all:
            warnings.simplefilter("always")
        warnings.simplefilter("always", DiagnosticsWarning)
        fit = am.fit_bayes(*args, **opts)
    return Recorded(fit, tuple(f"{w.category.__name__}: {w.message}" for w in rec))


def sampling_problems(fit: am.BayesFit) -> list[str]:
    """What makes ``fit`` unfit for the tests (empty when it sampled well enough).

    The bounds (:data:`MAX_DIVERGENT_SHARE`, :data:`RHAT_LOOSE`, :data:`ESS_LOOSE`) are
    loose on purpose: the exact count of divergences and the exact r_hat of one seed
    change with the CPU and BLAS kernel; a badly specified or broken sampler fails them.
    """
    tab = fit.to_frame()
    problems = []
    if fit.n_divergent > MAX_DIVERGENT_SHARE * fit.n_draws:
        problems.append(f"{fit.n_divergent} divergences in {fit.n_draws} draws")
    bad = tab.index[~(tab["r_hat"] < RHAT_LOOSE)]
    if len(bad):
        problems.append(f"r_hat >= {RHAT_LOOSE}: {dict(tab.loc[bad, 'r_hat'])}")
    bad = tab.index[~(tab["ess_bulk"] > ESS_LOOSE)]
    if len(bad):
        problems.append(f"ess_bulk <= {ESS_LOOSE}: {dict(tab.loc[bad, 'ess_bulk'])}")
    return problems

#: True fixed effects on the data scale (gaussian outcome), predictors roughly centred.
TRUE_GAUSSIAN = {
    "Intercept": 0.5,
    "alliance": 0.30,
    "age": -0.010,
    "autonomy": 0.20,
    "alliance:age": 0.0,
    "alliance:autonomy": 0.15,
}

#: True fixed effects on the logit scale (binomial families).
TRUE_LOGIT = {"Intercept": 0.4, "alliance": 0.5, "autonomy": -0.4, "alliance:autonomy": 0.35}


def simulate_moderation(
    *,
    therapists: int = 20,
    patients: int = 6,
    sessions: int = 5,
    family: str = "gaussian",
    sd_therapist: float = 0.3,
    sd_patient: float = 0.5,
    sigma: float = 1.0,
    trials: int = 10,
    kappa: float = 8.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate canonical long data with ``alliance``, ``age``, ``autonomy`` moderation.

    Gaussian: ``adherence`` follows :data:`TRUE_GAUSSIAN` plus therapist and patient
    intercepts and N(0, sigma) noise. Binomial families: ``attended`` of ``scheduled``
    follows :data:`TRUE_LOGIT` (beta-binomial with concentration ``kappa``).
    ``df.attrs["u_therapist"]`` and ``df.attrs["u_patient"]`` hold the simulated random
    intercepts (dicts label -> value).
    """
    rng = np.random.default_rng(seed)
    n_p = therapists * patients
    th = np.repeat(np.arange(therapists), patients)
    u_t = rng.normal(0, sd_therapist, therapists)[th]
    u_p = rng.normal(0, sd_patient, n_p)
    age = rng.normal(0, 1, n_p) * 14 / 14  # standardised-ish age in SD units
    autonomy = rng.normal(0, 1, n_p)
    rows = np.repeat(np.arange(n_p), sessions)
    alliance = rng.normal(0, 1, n_p)[rows] * 0.8 + rng.normal(0, 0.6, n_p * sessions)
    df = pd.DataFrame({
        "therapist": [f"T{t:02d}" for t in th[rows]],
        "patient": [f"P{p:03d}" for p in rows],
        "session": np.tile(np.arange(1, sessions + 1), n_p),
        "alliance": alliance,
        "age": age[rows],
        "autonomy": autonomy[rows],
    })
    # the simulated random intercepts, for calibration checks (labels as above)
    # (plain dicts: pandas compares attrs when frames are combined)
    df.attrs["u_therapist"] = {f"T{t:02d}": float(u_t[t * patients]) for t in range(therapists)}
    df.attrs["u_patient"] = {f"P{p:03d}": float(u_p[p]) for p in range(n_p)}
    re = u_t[rows] + u_p[rows]
    if family == "gaussian":
        b = TRUE_GAUSSIAN
        mu = (b["Intercept"] + b["alliance"] * df.alliance + b["age"] * df.age
              + b["autonomy"] * df.autonomy + b["alliance:age"] * df.alliance * df.age
              + b["alliance:autonomy"] * df.alliance * df.autonomy)
        df["adherence"] = mu + re + rng.normal(0, sigma, len(df))
        return df
    b = TRUE_LOGIT
    eta = (b["Intercept"] + b["alliance"] * df.alliance + b["autonomy"] * df.autonomy
           + b["alliance:autonomy"] * df.alliance * df.autonomy + re)
    p = 1 / (1 + np.exp(-eta.to_numpy()))
    if family == "beta_binomial":
        p = rng.beta(p * kappa, (1 - p) * kappa)
    df["scheduled"] = trials
    df["attended"] = rng.binomial(trials, p)
    return df
