"""Conditional effects: model predictions across a focal variable at moderator values.

The predictions use the fixed part only, ``x0' b`` with the band ``t * sqrt(x0' V x0)``
(Bayesian fits: posterior median and HDI of ``x0' b``); ``x0`` encodes a grid of new data
with the fit's own encoding, every other predictor held at its mean or modal level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._format import fmt_num
from .._validate import integer, one_of
from ..errors import ModelSpecError
from . import _core as core
from ._fit import (
    Terms,
    check_alpha,
    check_fit,
    check_terms,
    freq_rows,
    link_of,
    posterior_draws,
    probe_values,
)
from .delta import mean_derivatives
from .slopes import AtSpec

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["ConditionalEffects", "conditional_effects", "plot_interaction"]


@dataclass(frozen=True)
class ConditionalEffects:
    """Model predictions over the focal variable at moderator values, with bands.

    Attributes
    ----------
    focal, moderator : str
        Names.
    table : DataFrame
        Columns ``<focal>``, ``<moderator>`` (label), ``<moderator>_value``, ``estimate``,
        ``se`` (frequentist), ``lower``, ``upper`` (CI or HDI), on ``scale``.
    held : dict
        Values of the other predictors (numeric at their means, others at their most
        frequent level).
    alpha : float
        1 - band level.
    scale : str
        ``"link"`` (linear predictor) or ``"response"`` (inverse link applied).
    response : str
        The response name, for axis labels.
    observed : DataFrame
        Observed focal values and response (for overlaying data in plots).
    """

    focal: str
    moderator: str
    table: pd.DataFrame
    held: dict[str, Any]
    alpha: float
    scale: str
    response: str
    observed: pd.DataFrame = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """Return the prediction table (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Short text: what was varied and held, and the prediction range per line."""
        g = self.table.groupby(self.moderator, sort=False)["estimate"]
        lines = [
            f"Predicted {self.response} ({self.scale} scale, fixed part only, "
            f"{100 * (1 - self.alpha):g}% bands) across {self.focal!r} at values of "
            f"{self.moderator!r}:",
        ]
        for k, s in g:
            lines.append(f"  {self.moderator} = {k}: from {fmt_num(s.iloc[0])} to "
                         f"{fmt_num(s.iloc[-1])}")
        if self.held:
            lines.append("Held at: " + ", ".join(
                f"{k} = {fmt_num(v)}" if isinstance(v, float) else f"{k} = {v}"
                for k, v in self.held.items()))
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None, *, data: bool = True) -> Axes:
        """Lines with bands (see :func:`alliance_models.plot_interaction`)."""
        from ..plots import plot_conditional_effects

        return plot_conditional_effects(self, ax=ax, data=data)


def conditional_effects(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    at: AtSpec = "meansd",
    over: str | Sequence[str] = "rows",
    n_points: int = 50,
    alpha: float = 0.05,
    scale: Literal["link", "response"] = "link",
    at_values_other: Mapping[str, Any] | None = None,
) -> ConditionalEffects:
    """Predictions across ``focal`` at moderator values, with confidence bands.

    Bands use the fixed part only: ``x0' b ± t * sqrt(x0' V x0)`` (Bayesian fits:
    posterior median and HDI of ``x0' b``).

    Parameters
    ----------
    fit : fitted model
        Any backend.
    focal, moderator : str
        Data columns: the x-axis variable and the variable defining the lines.
    at : as in :func:`simple_slopes`
        Moderator values.
    over : "rows" or column name(s), default "rows"
        Units over which ``at="meansd"``/``"percentiles"`` are taken (as in
        :func:`simple_slopes`).
    n_points : int, default 50
        Points across the observed range of ``focal``.
    alpha : float, default 0.05
        1 - band level.
    scale : {"link", "response"}
        ``"response"`` applies the fit's inverse link (e.g. probabilities for a
        binomial GLMM or GEE): the band is the back-transformed link-scale band (so it
        stays within 0-1) and ``se`` the delta-method SE of the mean; identical for
        identity links.
    at_values_other : dict, optional
        Values for other predictors (default: the mean; the most frequent level for
        non-numeric columns and columns encoded with ``C()``).

    Returns
    -------
    ConditionalEffects

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(4)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=60), "age": rng.normal(size=60)})
    >>> d["adherence"] = d.alliance * d.age + rng.normal(size=60)
    >>> ce = am.conditional_effects(am.fit_ols("adherence ~ alliance * age", d),
    ...                             focal="alliance", moderator="age", n_points=5)
    >>> ce.table.shape[0]
    15
    """
    check_fit(fit)
    check_alpha(alpha)
    one_of("scale", scale, ("link", "response"), ModelSpecError, quote=True)
    integer("n_points", n_points, ModelSpecError, minimum=2)
    frame = fit.frame
    terms = Terms.of(frame)
    check_terms(terms, focal, [moderator])
    data = frame.data
    for role, name in (("focal", focal), ("moderator", moderator)):
        if name not in data.columns or not pd.api.types.is_numeric_dtype(data[name]):
            raise ModelSpecError(
                f"conditional_effects needs {role} {name!r} as a numeric data column; "
                f"numeric columns: {', '.join(c for c in data.columns if pd.api.types.is_numeric_dtype(data[c]))}"  # noqa: E501
            )
    mvals, mlabels = probe_values(frame, moderator, at, "at", over)
    fvals = np.linspace(float(data[focal].min()), float(data[focal].max()), int(n_points))
    spec = fit.spec
    # the data variables of the fixed part, and those a categorical encoding reads
    reads = {v for c in terms.columns for r in c.reads for v in r}
    encoded = {v for c in terms.columns
               for r, cat in zip(c.reads, c.categorical, strict=True) if cat for v in r}
    needed = [v for v in data.columns if v in reads]
    given = dict(at_values_other or {})
    held: dict[str, Any] = {}
    categorical: set[str] = set()
    for v in needed:
        if (v in encoded or not pd.api.types.is_numeric_dtype(data[v])
                or pd.api.types.is_bool_dtype(data[v])):
            categorical.add(v)
    for v in needed:
        if v in (focal, moderator):
            continue
        if v in given:
            held[v] = given[v]
        elif v in categorical:
            held[v] = data[v].mode(dropna=True).iloc[0]
        else:
            held[v] = float(data[v].mean())
    unknown = set(given) - set(held)
    if unknown:
        raise ModelSpecError(
            f"at_values_other names {sorted(unknown)}, which are not other predictors; "
            f"predictors held fixed: {', '.join(held) or 'none'}"
        )
    rows = []
    for mv, ml in zip(mvals, mlabels, strict=True):
        for fv in fvals:
            rows.append({focal: fv, moderator: mv, "_label": ml})
    grid = pd.DataFrame(rows)
    newdata = grid[[focal, moderator]].copy()
    for k, v in held.items():
        dtype = data[k].dtype if k in categorical else float
        newdata[k] = pd.Series([v] * len(newdata), dtype=dtype, index=newdata.index)
    X0 = frame.fixed_design(newdata)
    draws = posterior_draws(fit)
    out = pd.DataFrame(
        {focal: grid[focal], moderator: grid["_label"], f"{moderator}_value": grid[moderator]}
    )
    if draws is not None:
        pred = draws @ X0.T
        h = [core.hdi(pred[:, k], 1 - alpha) for k in range(pred.shape[1])]
        est, lower, upper = np.median(pred, axis=0), np.array([x[0] for x in h]), np.array(
            [x[1] for x in h])
        se = None
    else:
        body = freq_rows(fit, X0, alpha)
        est, lower, upper = (body["estimate"].to_numpy(), body["ci_lower"].to_numpy(),
                             body["ci_upper"].to_numpy())
        se = body["se"].to_numpy()
    if scale == "response":
        inv = getattr(fit, "inverse_link", None)
        if inv is not None:
            link = link_of(fit)
            if se is not None and link != "identity":
                # delta-method SE of the mean; the band is the back-transformed link band
                # (it stays inside the range of the mean), as emmeans' type = "response"
                se = mean_derivatives(est, link)[1] * se
            elif link != "identity":
                se = None
            est, lower, upper = inv(est), inv(lower), inv(upper)
    out["estimate"] = est
    if se is not None:
        out["se"] = se
    out["lower"] = lower
    out["upper"] = upper
    obs_y = getattr(fit, "observed_response", None)
    y = np.asarray(obs_y if obs_y is not None else frame.y, float)
    observed = pd.DataFrame({focal: np.asarray(data[focal], float), "y": y,
                             moderator: np.asarray(data[moderator], float)})
    link_ok = scale == "response" or getattr(fit, "inverse_link", None) is None
    return ConditionalEffects(
        focal=focal,
        moderator=moderator,
        table=out,
        held=held,
        alpha=float(alpha),
        scale=scale,
        response=spec.response,
        observed=observed if link_ok else observed.iloc[0:0],
    )


def plot_interaction(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    at: Any = "meansd",
    ax: Axes | None = None,
    data: bool = True,
    n_points: int = 50,
    alpha: float = 0.05,
    scale: Literal["link", "response"] = "link",
) -> Axes:
    """Draw predicted lines across ``focal`` at moderator values, with confidence bands.

    The same as ``conditional_effects(fit, ...).plot(ax, data=data)``.

    Parameters
    ----------
    fit : fitted model
        Any backend.
    focal, moderator : str
        x-axis variable and the variable defining the lines.
    at : "meansd", "percentiles" or list of numbers
        Moderator values (see :func:`alliance_models.simple_slopes`).
    ax : Axes, optional
        Where to draw; a new figure if omitted.
    data : bool, default True
        Overlay the observed points (on the response scale only).
    n_points, alpha, scale
        Passed to :func:`alliance_models.conditional_effects`.

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
    >>> ax = am.plot_interaction(am.fit_ols("adherence ~ alliance * age", d),
    ...                          focal="alliance", moderator="age")
    >>> len(ax.lines)
    3
    """
    ce = conditional_effects(fit, focal=focal, moderator=moderator, at=at,
                             n_points=n_points, alpha=alpha, scale=scale)
    return ce.plot(ax, data=data)
