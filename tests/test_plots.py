"""Plots draw what the probing results hold, headless (Agg), and return the Axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

import alliance_models as am  # noqa: E402
from alliance_models.errors import DataValidationError  # noqa: E402
from alliance_models.plots import plot_power_curve  # noqa: E402

R_DIR = Path(__file__).parent / "r"


@pytest.fixture(scope="module")
def fit():
    return am.fit_ols("y ~ x * w", pd.read_csv(R_DIR / "ols_data.csv"))


def _scatters(ax):
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def test_plot_interaction_draws_one_line_per_moderator_value(fit, tmp_path):
    ax = am.plot_interaction(fit, focal="x", moderator="w", at=[2.0, 3.0, 4.0, 5.0],
                             n_points=7)
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 4
    ce = am.conditional_effects(fit, focal="x", moderator="w", at=[2.0, 3.0, 4.0, 5.0],
                                n_points=7)
    for line, (_, g) in zip(ax.lines, ce.table.groupby("w", sort=False), strict=True):
        np.testing.assert_allclose(line.get_xdata(), g["x"])
        np.testing.assert_allclose(line.get_ydata(), g["estimate"])
    assert len(_scatters(ax)) == 1  # the data points
    assert len(_scatters(ax)[0].get_offsets()) == fit.n_obs
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "w = 2" in labels and "data" in labels
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y"
    out = tmp_path / "interaction.png"
    ax.figure.savefig(out)
    assert out.stat().st_size > 1000


def test_plot_interaction_on_given_axes_without_data(fit):
    fig, axes = plt.subplots(1, 2)
    ax = am.plot_interaction(fit, focal="x", moderator="w", ax=axes[1], data=False)
    assert ax is axes[1]
    assert not _scatters(ax)
    assert len(ax.lines) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("(-1 SD)" in lab for lab in labels)


def test_gee_link_scale_hides_data_response_scale_shows_it():
    sim = pd.read_csv(R_DIR / "gee_sim_data.csv")
    g = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled")
    link = am.plot_interaction(g, focal="alliance", moderator="age")
    assert not _scatters(link)
    resp = am.plot_interaction(g, focal="alliance", moderator="age", scale="response")
    assert _scatters(resp)
    ys = np.concatenate([ln.get_ydata() for ln in resp.lines])
    assert ys.min() > 0 and ys.max() < 1


def test_plot_johnson_neyman(fit):
    jn = am.johnson_neyman(fit, focal="x", moderator="w")
    ax = jn.plot()
    assert isinstance(ax, Axes)
    # the effect line is the curve of the result
    effect = [ln for ln in ax.lines if ln.get_label() == "effect of x"][0]
    np.testing.assert_allclose(effect.get_ydata(), jn.curve["estimate"])
    # one dashed vertical line per bound inside the plotted grid
    grid = jn.curve["w"]
    inside = [b for b in jn.bounds if grid.min() <= b <= grid.max()]
    vlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(vlines) == len(inside)
    for ln, b in zip(vlines, inside, strict=True):
        assert ln.get_xdata()[0] == pytest.approx(b)
    assert jn.region in ax.get_title()
    assert ax.get_xlabel() == "w"
    # plot_johnson_neyman is the same function
    ax2 = am.plot_johnson_neyman(jn)
    assert len(ax2.lines) == len(ax.lines)


def test_simple_slopes_and_conditional_effects_plots(fit):
    ss = am.simple_slopes(fit, focal="x", moderator="w", at=[2.0, 3.0])
    ax = ss.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "3"]
    ce = am.conditional_effects(fit, focal="x", moderator="w", n_points=5)
    ax2 = ce.plot(data=False)
    assert len(ax2.lines) == 3 and not _scatters(ax2)


def test_plot_power_curve():
    ax = plot_power_curve([30, 10, 20], [0.85, 0.3, 0.6], [0.8, 0.25, 0.55], [0.9, 0.35, 0.65],
                          label="n per arm", xlabel="therapists")
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [10, 20, 30])  # sorted by x
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.6, 0.85])
    assert ax.lines[1].get_ydata()[0] == pytest.approx(0.8)  # target line
    assert len(ax.collections) == 1  # the interval band
    assert ax.get_xlabel() == "therapists" and ax.get_ylim() == (0.0, 1.0)
    # several curves share one Axes
    plot_power_curve([10, 20], [0.2, 0.4], ax=ax, target=None, label="other")
    assert len(ax.lines) == 3


def test_plot_power_curve_bad_input():
    with pytest.raises(DataValidationError, match="equal length"):
        plot_power_curve([1, 2, 3], [0.1, 0.2])
    with pytest.raises(DataValidationError, match="give both lo and hi"):
        plot_power_curve([1, 2], [0.1, 0.2], lo=[0.0, 0.1])
    with pytest.raises(DataValidationError, match="same length as x"):
        plot_power_curve([1, 2], [0.1, 0.2], lo=[0.0], hi=[0.2])
