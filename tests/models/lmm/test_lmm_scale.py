"""Satterthwaite df must not depend on the outcome's units.

Scaling y by c scales sigma by c; theta (relative SDs) and the df are unchanged. A
finite-difference step for sigma that ignores its scale broke this at y * 1e-3
(df off by 4e-4 relative) before the step was made relative to sigma.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alliance_models as am

R_DIR = Path(__file__).parents[2] / "r"
FORMULA = "y ~ x * m + (1 | therapist/patient)"


@pytest.fixture(scope="module")
def nested():
    return pd.read_csv(R_DIR / "nested_data.csv")


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_satterthwaite_df_invariant_to_outcome_units(nested, scale):
    ref = pd.read_csv(R_DIR / "nested_fixef.csv").set_index("term")
    base = am.fit_mixed(FORMULA, nested)
    scaled = am.fit_mixed(FORMULA, nested.assign(y=nested["y"] * scale))
    # df: unit-free, so equal to the unscaled fit (1e-6) and to lmerTest (1e-2, as elsewhere)
    np.testing.assert_allclose(scaled.fixed["df"], base.fixed["df"], rtol=1e-6)
    np.testing.assert_allclose(scaled.fixed["df"].to_numpy(), ref["df"].to_numpy(), rtol=1e-2)
    # estimates and SEs scale with y
    np.testing.assert_allclose(scaled.fixed["estimate"], base.fixed["estimate"] * scale, rtol=1e-6)
    np.testing.assert_allclose(scaled.fixed["se"], base.fixed["se"] * scale, rtol=1e-6)
    L = np.array([0.0, 1.0, 0.0, 2.0])
    assert scaled.contrast_df(L) == pytest.approx(base.contrast_df(L), rel=1e-6)
