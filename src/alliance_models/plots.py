"""Static matplotlib plots of results: interactions, Johnson-Neyman, power, cost frontiers.

Every function draws a result it is given (nothing is computed here: the probing and
power results carry their tables) on a given ``ax`` (or a new figure) and returns the
Axes, whose ``.figure`` is the Figure; nothing is shown, so the functions work headless
(``MPLBACKEND=Agg``). ``plot_interaction``, which first computes the conditional
effects, lives with them in :mod:`alliance_models.probing.conditional`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataValidationError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.axes import Axes

    from .probing import ConditionalEffects, JohnsonNeyman, SimpleSlopes

__all__ = [
    "plot_conditional_effects",
    "plot_cost_frontier",
    "plot_johnson_neyman",
    "plot_power_curve",
    "plot_scenario_power",
    "plot_simple_slopes",
]


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    return new


def plot_conditional_effects(
    ce: ConditionalEffects, *, ax: Axes | None = None, data: bool = True
) -> Axes:
    """Lines of predictions with their bands, one per moderator value.

    Parameters
    ----------
    ce : ConditionalEffects
        From :func:`alliance_models.conditional_effects`.
    ax : Axes, optional
        Where to draw.
    data : bool, default True
        Overlay the observed points (on the response scale only).

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(5)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=60), "age": rng.normal(size=60)})
    >>> d["adherence"] = d.alliance * d.age + rng.normal(size=60)
    >>> ce = am.conditional_effects(am.fit_ols("adherence ~ alliance * age", d),
    ...                             focal="alliance", moderator="age")
    >>> len(plot_conditional_effects(ce).lines)
    3
    """
    ax = _axes(ax)
    t = ce.table
    import matplotlib as mpl

    colors = mpl.colormaps["viridis"](np.linspace(0.0, 0.85, t[ce.moderator].nunique()))
    if data and len(ce.observed):
        ax.scatter(ce.observed[ce.focal], ce.observed["y"], s=8, color="0.6", alpha=0.4,
                   linewidths=0, label="data", zorder=1)
    for color, (label, g) in zip(colors, t.groupby(ce.moderator, sort=False), strict=True):
        value = g[f"{ce.moderator}_value"].iloc[0]
        name = f"{ce.moderator} = {label}" if label == f"{value:g}" else (
            f"{ce.moderator} = {value:.3g} ({label})")
        ax.plot(g[ce.focal], g["estimate"], color=color, lw=2, label=name, zorder=3)
        ax.fill_between(g[ce.focal], g["lower"], g["upper"], color=color, alpha=0.2,
                        linewidth=0, zorder=2)
    ax.set_xlabel(ce.focal)
    ax.set_ylabel(ce.response if ce.scale == "link" else f"{ce.response} (response scale)")
    ax.set_title(f"Effect of {ce.focal} by {ce.moderator} "
                 f"({100 * (1 - ce.alpha):g}% bands)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_johnson_neyman(jn: JohnsonNeyman, *, ax: Axes | None = None) -> Axes:
    """Plot a Johnson-Neyman result: effect, band, bounds, significant region, data range.

    Parameters
    ----------
    jn : JohnsonNeyman
        From :func:`alliance_models.johnson_neyman`.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(6)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=80), "age": rng.normal(size=80)})
    >>> d["adherence"] = d.alliance * (0.3 + d.age) + rng.normal(size=80)
    >>> jn = am.johnson_neyman(am.fit_ols("adherence ~ alliance * age", d),
    ...                        focal="alliance", moderator="age")
    >>> ax = am.plot_johnson_neyman(jn)
    >>> ax.get_xlabel()
    'age'
    """
    ax = _axes(ax)
    c = jn.curve
    m = c[jn.moderator].to_numpy()
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.fill_between(m, c["lower"], c["upper"], color="C0", alpha=0.2, linewidth=0,
                    label=f"{100 * (1 - jn.alpha):g}% {'HDI' if jn.method == 'bayes' else 'CI'}")
    ax.plot(m, c["estimate"], color="C0", lw=2, label=f"effect of {jn.focal}")
    ylo, yhi = float(np.min(c["lower"])), float(np.max(c["upper"]))
    span = yhi - ylo if yhi > ylo else 1.0
    first = True
    for s, e in jn.intervals:
        s2, e2 = max(s, float(m.min())), min(e, float(m.max()))
        if s2 < e2:
            ax.axvspan(s2, e2, color="C2", alpha=0.12, linewidth=0,
                       label="significant" if first else None)
            first = False
    for x in jn.bounds:
        if m.min() <= x <= m.max():
            ax.axvline(x, color="C3", ls="--", lw=1)
            ax.annotate(f"{x:.3g}", (x, yhi), xytext=(3, -12), textcoords="offset points",
                        color="C3", fontsize=8)
    lo, hi = jn.observed_range
    ax.plot([lo, hi], [ylo - 0.05 * span] * 2, color="0.2", lw=4, solid_capstyle="butt",
            label="observed range")
    ax.set_xlabel(jn.moderator)
    ax.set_ylabel(f"conditional effect of {jn.focal}"
                  + (" (response scale)" if getattr(jn, "scale", "link") == "response" else ""))
    ax.set_title(f"Johnson-Neyman: region {jn.region}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_simple_slopes(ss: SimpleSlopes, *, ax: Axes | None = None) -> Axes:
    """Point estimates with interval bars at each moderator value.

    Parameters
    ----------
    ss : SimpleSlopes
        From :func:`alliance_models.simple_slopes`.
    ax : Axes, optional
        Where to draw.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(5)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=60), "age": rng.normal(size=60)})
    >>> d["adherence"] = d.alliance * d.age + rng.normal(size=60)
    >>> ss = am.simple_slopes(am.fit_ols("adherence ~ alliance * age", d),
    ...                       focal="alliance", moderator="age")
    >>> plot_simple_slopes(ss).get_ylabel()
    'age'
    """
    ax = _axes(ax)
    t = ss.table
    lo, hi = ("hdi_lower", "hdi_upper") if ss.method == "bayes" else ("ci_lower", "ci_upper")
    labels = [str(v) for v in t[ss.moderator]]
    if ss.moderator2:
        labels = [f"{a} | {ss.moderator2} {b}" for a, b in zip(t[ss.moderator],
                                                               t[ss.moderator2], strict=True)]
    y = np.arange(len(t))
    est = t["estimate"].to_numpy()
    ax.errorbar(est, y, xerr=[est - t[lo].to_numpy(), t[hi].to_numpy() - est], fmt="o",
                color="C0", capsize=3)
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_ylabel(ss.moderator)
    ax.set_xlabel(f"conditional effect of {ss.focal}"
                  + (" (response scale)" if getattr(ss, "scale", "link") == "response" else ""))
    return ax


def plot_power_curve(
    x: Sequence[float] | np.ndarray,
    power: Sequence[float] | np.ndarray,
    lo: Sequence[float] | np.ndarray | None = None,
    hi: Sequence[float] | np.ndarray | None = None,
    *,
    ax: Axes | None = None,
    target: float | None = 0.8,
    xlabel: str = "sample size",
    label: str | None = None,
    title: str | None = None,
) -> Axes:
    """Plot estimated power against a design quantity, with its Monte Carlo interval.

    Parameters
    ----------
    x : array-like
        Design values (e.g. number of therapists).
    power : array-like
        Estimated power at each ``x`` (0-1).
    lo, hi : array-like, optional
        Lower and upper ends of the power interval (drawn as a band).
    ax : Axes, optional
        Where to draw (several curves can share one Axes).
    target : float or None, default 0.8
        Horizontal reference line; ``None`` for none.
    xlabel, label, title : str, optional
        Axis label, legend label of this curve, title.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_power_curve([10, 20, 30], [0.3, 0.6, 0.85], [0.25, 0.55, 0.8],
    ...                       [0.35, 0.65, 0.9])
    >>> tuple(float(v) for v in ax.get_ylim())
    (0.0, 1.0)
    """
    xs = np.asarray(x, float)
    pw = np.asarray(power, float)
    if xs.shape != pw.shape or xs.ndim != 1:
        raise DataValidationError(
            f"x and power must be 1-d of equal length, got shapes {xs.shape} and {pw.shape}"
        )
    if (lo is None) != (hi is None):
        raise DataValidationError("give both lo and hi, or neither")
    ax = _axes(ax)
    order = np.argsort(xs)
    (line,) = ax.plot(xs[order], pw[order], marker="o", lw=2, label=label)
    if lo is not None and hi is not None:
        lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
        if lo_a.shape != xs.shape or hi_a.shape != xs.shape:
            raise DataValidationError("lo and hi must have the same length as x")
        ax.fill_between(xs[order], lo_a[order], hi_a[order], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    if target is not None:
        ax.axhline(target, color="0.4", ls="--", lw=1)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("power")
    if title:
        ax.set_title(title, fontsize=10)
    if label:
        ax.legend(fontsize=8, frameon=False)
    return ax


def plot_cost_frontier(
    evaluations: pd.DataFrame,
    frontier: pd.DataFrame,
    *,
    optimum: tuple[int, int] | None = None,
    cost_rates: Mapping[str, float] | None = None,
    target: float = 0.8,
    ax: Axes | None = None,
) -> Axes:
    """Plot a joint sample-size search: pairs tried, the frontier, the cheapest pair.

    Patients per therapist on the x axis, therapists on the y axis. Every evaluated pair
    is a dot (filled where its power reached ``target``, open where not), the frontier
    (fewest therapists reaching the target at each caseload) a line, the optimum a star
    with the iso-cost curve through it (pairs of the same cost), when ``cost_rates``
    are given.

    Parameters
    ----------
    evaluations : DataFrame
        Columns ``therapists``, ``patients_per_therapist``, ``reached``.
    frontier : DataFrame
        Columns ``patients_per_therapist`` and ``therapists`` (missing where not reached).
    optimum : (therapists, patients_per_therapist), optional
    cost_rates : mapping, optional
        ``{"therapist": c_t, "patient": c_p}`` for the iso-cost curve.
    target : float, default 0.8
        For the legend.
    ax : Axes, optional

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import pandas as pd
    >>> ev = pd.DataFrame({"therapists": [20, 30, 12], "patients_per_therapist": [2, 2, 6],
    ...                    "reached": [False, True, True]})
    >>> fr = pd.DataFrame({"patients_per_therapist": [2, 6], "therapists": [30, 12]})
    >>> ax = plot_cost_frontier(ev, fr, optimum=(12, 6),
    ...                         cost_rates={"therapist": 2000, "patient": 300})
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('patients per therapist', 'therapists')
    """
    need = {"therapists", "patients_per_therapist", "reached"}
    if not need <= set(evaluations.columns):
        raise DataValidationError(
            f"evaluations need the columns {sorted(need)}; got {list(evaluations.columns)}")
    ax = _axes(ax)
    x = evaluations["patients_per_therapist"].to_numpy(float)
    y = evaluations["therapists"].to_numpy(float)
    hit = evaluations["reached"].to_numpy(bool)
    ax.scatter(x[hit], y[hit], color="C0", s=25, zorder=3,
               label=f"power >= {target:g}")
    ax.scatter(x[~hit], y[~hit], facecolors="none", edgecolors="C0", s=25, zorder=3,
               label=f"power < {target:g}")
    fr = frontier.dropna(subset=["therapists"])
    if len(fr):
        ax.plot(fr["patients_per_therapist"].to_numpy(float),
                fr["therapists"].to_numpy(float), color="C0", lw=1.5, label="frontier")
    if optimum is not None:
        t, n = optimum
        if cost_rates is not None:
            c_t, c_p = float(cost_rates["therapist"]), float(cost_rates["patient"])
            total = c_t * t + c_p * t * n
            grid = np.linspace(max(0.5, float(np.min(x)) - 0.5), float(np.max(x)) + 0.5, 200)
            ax.plot(grid, total / (c_t + c_p * grid), color="0.4", ls="--", lw=1,
                    label=f"cost {total:g}")
        ax.scatter([n], [t], marker="*", s=220, color="C3", zorder=4,
                   label=f"cheapest: {t} x {n}")
        ax.set_ylim(0, max(float(np.max(y)), float(t)) * 1.1)
    ax.set_xlabel("patients per therapist")
    ax.set_ylabel("therapists")
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_scenario_power(
    names: Sequence[str],
    power: Sequence[float] | np.ndarray,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    *,
    ax: Axes | None = None,
    target: float | None = 0.8,
    xlabel: str = "power",
    title: str | None = None,
) -> Axes:
    """Plot power under several scenarios (one row each) with their intervals.

    Parameters
    ----------
    names : sequence of str
        Scenario names, drawn top to bottom in the order given.
    power, lo, hi : array-like
        Estimated power per scenario and the ends of its interval (0-1).
    ax : Axes, optional
        Where to draw.
    target : float or None, default 0.8
        Vertical reference line; ``None`` for none.
    xlabel, title : str, optional
        Axis label and title.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = plot_scenario_power(["baseline", "pessimistic"], [0.82, 0.61],
    ...                          [0.79, 0.58], [0.85, 0.64])
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['baseline', 'pessimistic']
    """
    pw, lo_a, hi_a = (np.asarray(v, float) for v in (power, lo, hi))
    if not (len(names) == pw.size == lo_a.size == hi_a.size) or pw.ndim != 1:
        raise DataValidationError(
            f"names, power, lo and hi must have one entry per scenario; got lengths "
            f"{len(names)}, {pw.size}, {lo_a.size}, {hi_a.size}"
        )
    ax = _axes(ax)
    y = np.arange(len(names))
    ax.errorbar(pw, y, xerr=[pw - lo_a, hi_a - pw], fmt="o", capsize=4, lw=1.5)
    for yi, p in zip(y, pw, strict=True):
        ax.annotate(f"{p:.2f}", (p, yi), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    if target is not None:
        ax.axvline(target, color="0.4", ls="--", lw=1)
    ax.set_yticks(y, labels=list(names))
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
