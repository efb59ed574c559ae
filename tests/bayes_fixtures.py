"""A small simulator of three-level moderation data with known effects (for test_bayes).

Independent of ``am.simulate`` on purpose: the Bayesian tests need the exact generating
values, and they should not break when the power engineer changes the design defaults.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
