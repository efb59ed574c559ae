"""The diagnostic plots of BayesFit (models/bayes/plots.py): PNGs with the expected texts."""

from __future__ import annotations

import numpy as np
import pytest

from alliance_models.errors import ModelSpecError
from alliance_models.models.bayes.plots import forest_terms

FIXED = ["Intercept", "alliance", "age", "autonomy", "alliance:age", "alliance:autonomy"]
#: what each plot must show (texts on the figure) and must not show
PLOT_TEXTS = {
    # one row (density and trace) per coefficient, not all slopes on one shared axis
    "trace": ({f"beta\n{n}" for n in FIXED} | {"sigma"}, set()),
    "rank": ({f"beta\n{n}" for n in FIXED} | {"sigma"}, set()),
    "forest": ({"alliance:age", "alliance:autonomy"}, {"Intercept", "alliance", "age"}),
    "ppc": ({"adherence"}, set()),
    "prior_ppc": ({"adherence"}, set()),
    "posterior": ({f"beta\n{n}" for n in FIXED}, {"sigma"}),
}


@pytest.mark.parametrize("kind", list(PLOT_TEXTS))
def test_plots_write_png(gfit, kind, tmp_path):
    import matplotlib.text

    path = tmp_path / f"{kind}.png"
    pc = gfit.plot(kind, path)
    assert path.stat().st_size > 5000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = pc.viz["figure"].item()
    texts = {t.get_text() for t in fig.findobj(matplotlib.text.Text)}
    must, must_not = PLOT_TEXTS[kind]
    assert must <= texts, must - texts
    if kind == "trace":  # 6 coefficients, sigma and 2 SDs: a density and a trace each
        assert len(fig.axes) == 2 * (len(FIXED) + 3)
    assert not must_not & texts, must_not & texts
    if kind in ("ppc", "prior_ppc"):
        # the predictive draws come from the requested group: the prior predictive
        # spreads far wider than the posterior predictive
        group = "posterior_predictive" if kind == "ppc" else "prior_predictive"
        assert group in gfit.idata.children
        xs = np.concatenate([ln.get_xdata() for ln in fig.axes[0].get_lines()])
        wide = bool(np.ptp(xs) > 3 * np.ptp(gfit.frame.y))
        assert wide == (kind == "prior_ppc"), (kind, np.ptp(xs), np.ptp(gfit.frame.y))


def test_forest_terms():
    """The forest plot shows the interactions, else the slopes, else every term."""
    assert forest_terms(("Intercept", "a", "b", "a:b")) == ["a:b"]
    assert forest_terms(("Intercept", "a", "b")) == ["a", "b"]
    assert forest_terms(("Intercept",)) == ["Intercept"]


def test_plot_errors(gfit_additive):
    with pytest.raises(ModelSpecError, match="prior_predictive=True"):
        gfit_additive.plot("prior_ppc")
    with pytest.raises(ModelSpecError, match="plot kind 'pairs' is not known"):
        gfit_additive.plot("pairs")


def test_binomial_ppc_plot(bfit_binom, tmp_path):
    bfit_binom.plot("ppc", tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 5000
