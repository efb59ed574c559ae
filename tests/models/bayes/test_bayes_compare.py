"""PSIS-LOO model comparison (models/bayes/compare.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import alliance_models as am
from alliance_models.errors import DiagnosticsWarning, ModelSpecError


def test_compare_loo(gfit, gfit_additive, tmp_path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DiagnosticsWarning)
        res = am.compare({"moderated": gfit, "additive": gfit_additive}, pareto_k_max=0.7)
    # a warning exactly when some observation has Pareto k > 0.7, naming how many
    n_high = {k: int((np.asarray(v.pareto_k) > 0.7).sum()) for k, v in res.loo.items()}
    assert res.n_high_k == n_high
    assert len(rec) == int(any(n_high.values()))
    for name, n in n_high.items():
        if n:
            assert f"{name}: {n} of 600 observations" in str(rec[0].message)
    tab = res.to_frame()
    assert set(tab.index) == {"moderated", "additive"}
    for col in ("elpd", "p", "elpd_diff", "weight", "se", "dse"):
        assert col in tab.columns
    assert tab["elpd"].iloc[0] >= tab["elpd"].iloc[1] and res.best == tab.index[0]
    # elpd_loo + p_loo equals the log pointwise predictive density, computed here
    for name, fit in (("moderated", gfit), ("additive", gfit_additive)):
        ll = fit.idata.log_likelihood["adherence"].stack(s=("chain", "draw")).values
        lppd = float(np.sum(np.log(np.mean(np.exp(ll), axis=1))))
        np.testing.assert_allclose(tab.loc[name, "elpd"] + tab.loc[name, "p"], lppd,
                                   rtol=1e-8)
        # p_loo is of the order of the number of parameters (6 or 4 + 141 random effects,
        # shrunk): positive and well below the number of observations
        assert 0 < tab.loc[name, "p"] < 200
    assert "best: " in res.summary()
    res.plot(tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 3000


def test_compare_pareto_k_warning(gfit, gfit_additive):
    with pytest.warns(DiagnosticsWarning, match=r"Pareto k > 0 .*moderated: \d+ of 600 obs"):
        res = am.compare({"moderated": gfit, "additive": gfit_additive}, pareto_k_max=0.0)
    k = np.asarray(res.loo["moderated"].pareto_k)
    assert res.n_high_k["moderated"] == int((k > 0).sum()) > 0


def test_compare_bad_input(gfit, bfit_binom):
    with pytest.raises(ModelSpecError, match="at least two"):
        am.compare({"one": gfit})
    with pytest.raises(ModelSpecError, match="'b' is a str, not a BayesFit"):
        am.compare({"a": gfit, "b": "x"})
    with pytest.raises(ModelSpecError, match="different rows or outcomes"):
        am.compare({"a": gfit, "b": bfit_binom})
