"""am.compare on binomial and Poisson mixed fits: likelihood-ratio tests vs lme4's anova.

Reference: tests/r/glmer_lrt_reference.R (lme4 1.1-31 ``anova`` of glmer fits at the tight
control of glmer_reference.R). Tolerances: logLik, AIC, BIC, deviance and Chisq 1e-6
absolute (issue 13's logLik tolerance; seen here: at most 6.1e-8, the agreement of the
fits themselves);
npar and Df exact; p-values 1e-5 relative (seen: 3.1e-8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.errors import ModelSpecError

R_DIR = Path(__file__).resolve().parents[2] / "r"

COMPARISONS = {
    "cbpp": ("cbpp", "size", "binomial", {
        "m0": "incidence ~ 1 + (1 | herd)",
        "m1": "incidence ~ C(period) + (1 | herd)"}),
    "attendance": ("att", "scheduled", "binomial", {
        "additive": "attended ~ alliance + age_c + autonomy_c + (1 | therapist)",
        "moderation": "attended ~ alliance * (age_c + autonomy_c) + (1 | therapist)",
        "nested": "attended ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)"}),
    "poisson": ("att", None, "poisson", {
        "m0": "completed ~ alliance + age_c + (1 | therapist)",
        "m1": "completed ~ alliance * age_c + (1 | therapist)"}),
}


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return {"cbpp": pd.read_csv(R_DIR / "cbpp_data.csv"),
            "att": pd.read_csv(R_DIR / "glmer_attendance.csv")}


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "glmer_lrt.csv")


@pytest.mark.parametrize("name", list(COMPARISONS))
def test_lrt_matches_lme4_anova(data, ref, name):
    d, trials, family, formulas = COMPARISONS[name]
    fits = {k: am.fit_mixed(f, data[d], family=family, trials=trials)
            for k, f in formulas.items()}
    # given in reverse order: compare orders by npar as anova does
    lrt = am.compare(dict(reversed(list(fits.items()))))
    got = lrt.table
    want = ref[ref.comparison == name].set_index("model")
    assert list(got.index) == list(want.index)
    np.testing.assert_array_equal(got["npar"], want["npar"])
    for col in ("logLik", "AIC", "BIC", "deviance"):
        np.testing.assert_allclose(got[col], want[col], rtol=0, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(got["Chisq"].iloc[1:], want["Chisq"].iloc[1:], rtol=0,
                               atol=1e-6)
    np.testing.assert_array_equal(got["Df"].iloc[1:], want["Df"].iloc[1:])
    np.testing.assert_allclose(got["p"].iloc[1:], want["p"].iloc[1:], rtol=1e-5)
    assert np.isnan(got["Chisq"].iloc[0]) and lrt.criterion == "ML (Laplace)"
    assert lrt.refitted == ()
    assert "Likelihood-ratio tests" in lrt.summary()


def test_refuses_mixing_kinds_families_and_nagq(data):
    att = data["att"]
    b0 = am.fit_mixed("attended ~ alliance + (1 | therapist)", att, family="binomial",
                      trials="scheduled")
    b9 = am.fit_mixed("attended ~ alliance + (1 | therapist)", att, family="binomial",
                      trials="scheduled", nAGQ=9)
    p0 = am.fit_mixed("completed ~ alliance + (1 | therapist)", att, family="poisson")
    g0 = am.fit_mixed("completed ~ alliance + (1 | therapist)", att)
    with pytest.raises(ModelSpecError, match="'model2' is a MixedFit, not a GLMMFit"):
        am.compare(b0, g0)
    with pytest.raises(ModelSpecError, match="n_agq=9 but 'model1' has 1.*same nAGQ"):
        am.compare(b0, b9)
    with pytest.raises(ModelSpecError, match="has family='poisson' but 'model1' has 'binomial'"):
        am.compare(b0, p0)
    other = att.assign(scheduled=att.scheduled + 1)
    b_other = am.fit_mixed("attended ~ 1 + (1 | therapist)", other, family="binomial",
                           trials="scheduled")
    with pytest.raises(ModelSpecError, match="other trials"):
        am.compare(b0, b_other)
