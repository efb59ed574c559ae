"""am.power with a random slope: the batched engine replaces one fit_mixed per replicate.

``(1 + alliance | therapist) + (1 | therapist:patient)`` goes to the batched REML engine
(``method="auto"`` resolves to ``"fast"``); every replicate must agree with the
``fit_mixed`` route at the engine tolerances of ``tests/models/lmm`` (estimates
``1e-6`` relative to ``max(|estimate|, se)``, SEs ``1e-4``, Satterthwaite df and p-values
``1e-3``), on the stacked route (shared layout, dropout as a mask) and the per-replicate
route (random caseloads). Other slope formulas keep the ``fit_mixed`` fallback.
"""

import warnings

import numpy as np
import pytest

import alliance_models as am
from alliance_models.errors import ModelSpecError

SLOPE = "adherence ~ alliance * autonomy + (1 + alliance | therapist) + (1 | therapist:patient)"


def _design(**changes):
    return am.Design(therapists=10, patients_per_therapist=4, sessions=4, icc_therapist=0.1,
                     effects={"alliance": 0.3, "alliance:autonomy": 0.1}).replace(**changes)


def _run(design, formula, method, test="alliance:autonomy"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular fits and few-cluster notes per replicate
        return am.power(design, formula, test=test, n_sims=10, seed=7, n_jobs=1,
                        progress=False, method=method)


@pytest.mark.parametrize("changes", [
    {"dropout": 0.3},  # shared layout: stacked arrays with a mask
    {"patients_per_therapist": ("poisson", 4), "sessions": ("negbin", 4, 3)},  # per replicate
])
def test_slope_design_uses_the_batched_engine_and_agrees_with_fit_mixed(changes):
    d = _design(**changes)
    fast = _run(d, SLOPE, "auto")
    mixed = _run(d, SLOPE, "mixed")
    assert fast.method == "fast" and mixed.method == "mixed"
    a, b = fast.replicates, mixed.replicates
    assert not a["failed"].any() and a["converged"].all()
    tol = 1e-6 * np.maximum(np.abs(b["estimate"]), b["se"])
    assert (np.abs(a["estimate"] - b["estimate"]) <= tol).all()
    np.testing.assert_allclose(a["se"], b["se"], rtol=1e-4)
    np.testing.assert_allclose(a["df"], b["df"], rtol=1e-3)
    np.testing.assert_allclose(a["p_value"], b["p_value"], rtol=1e-3, atol=1e-12)
    assert (a["reject"] == b["reject"]).all() and (a["singular"] == b["singular"]).all()


def test_other_slope_formulas_keep_the_fit_mixed_route():
    d = _design(therapists=6, patients_per_therapist=3, sessions=3)
    for formula in [
        # no nested patient intercept
        "adherence ~ alliance + (1 + alliance | therapist)",
        # uncorrelated intercept and slope
        "adherence ~ alliance + (1 + alliance || therapist) + (1 | therapist:patient)",
    ]:
        res = _run(d, formula, "auto", test="alliance")
        assert res.method == "mixed", formula


def test_slope_variable_must_be_a_fixed_effect_for_the_batched_engine():
    d = _design(therapists=6, patients_per_therapist=3, sessions=3)
    formula = "adherence ~ autonomy + (1 + alliance | therapist) + (1 | therapist:patient)"
    assert _run(d, formula, "auto", test="autonomy").method == "mixed"
    with pytest.raises(ModelSpecError, match="random slope of 'alliance' only with"):
        _run(d, formula, "fast", test="autonomy")
