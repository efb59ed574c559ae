"""Johnson-Neyman: the moderator values where the effect of a focal variable turns significant.

For frequentist fits the bounds are the exact roots of a quadratic in the moderator
(:func:`._core.jn_solve` on ``(b, V, df)``), iterated to a fixed point when the df depend
on the contrast; for Bayesian fits they are where the HDI of the conditional effect
starts or stops excluding zero (:func:`._core.bayes_jn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._format import fmt_num
from ..errors import ModelSpecError
from . import _core as core
from ._fit import (
    Terms,
    bayes_rows,
    check_alpha,
    check_fit,
    check_terms,
    factor_values,
    freq_rows,
    held_note,
    held_values,
    posterior_draws,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["JohnsonNeyman", "johnson_neyman"]


@dataclass(frozen=True)
class JohnsonNeyman:
    """Johnson-Neyman region of significance of the effect of ``focal``.

    Attributes
    ----------
    focal, moderator : str
        Names.
    alpha : float
        Significance level (Bayesian: the HDI has level ``1 - alpha``).
    bounds : tuple of float
        Moderator values where p equals ``alpha`` (Bayesian: where an HDI end crosses 0).
    region : str
        ``"inside"`` (significant between the bounds), ``"outside"`` (below the lower and
        above the upper bound), ``"above"``/``"below"`` (one bound, unbounded on one
        side), ``"all"`` or ``"none"``. For Bayesian fits judged within the observed range.
    intervals : tuple of (float, float)
        Moderator intervals where the effect is significant (``inf`` ends allowed).
    observed_range : (float, float)
        Minimum and maximum of the moderator in the data.
    bounds_in_range : tuple of bool
        Whether each bound lies inside the observed range.
    intervals_in_range : tuple of (float, float)
        ``intervals`` clipped to the observed range.
    df : tuple of float
        Degrees of freedom at each bound (``inf`` for z tests).
    converged : bool
        Whether the df fixed-point iteration converged (always True for constant df).
    method : str
        ``"t"``, ``"z"``, ``"satterthwaite"`` (df varying with the contrast) or ``"bayes"``.
    curve : DataFrame
        Conditional effect over a grid of the moderator: ``moderator, estimate, lower,
        upper, significant`` (for plotting).
    held : dict
        Values at which other interacting variables were held.
    centred_mean : float or None
        The mean removed from the moderator by ``fit_ols(center=...)`` (bounds and
        ranges are on the centred scale), else ``None``.
    """

    focal: str
    moderator: str
    alpha: float
    bounds: tuple[float, ...]
    region: str
    intervals: tuple[tuple[float, float], ...]
    observed_range: tuple[float, float]
    bounds_in_range: tuple[bool, ...]
    intervals_in_range: tuple[tuple[float, float], ...]
    df: tuple[float, ...]
    converged: bool
    method: str
    curve: pd.DataFrame = field(repr=False)
    held: dict[str, float] = field(default_factory=dict)
    centred_mean: float | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per bound: value, df, whether it lies in the observed range."""
        return pd.DataFrame(
            {
                "bound": list(self.bounds),
                "df": list(self.df) if self.df else [np.nan] * len(self.bounds),
                "in_observed_range": list(self.bounds_in_range),
            }
        )

    def _describe(self) -> str:
        b = [fmt_num(x) for x in self.bounds]
        mod = self.moderator
        if self.region == "inside" and len(b) == 2:
            return f"significant for {mod} between {b[0]} and {b[1]}"
        if self.region == "outside" and len(b) == 2:
            return f"significant for {mod} below {b[0]} and above {b[1]}"
        if self.region == "above" and b:
            return f"significant for {mod} above {b[-1]}"
        if self.region == "below" and b:
            return f"significant for {mod} below {b[0]}"
        if self.region == "all":
            return f"significant at every value of {mod}"
        if self.region == "none":
            return f"not significant at any value of {mod}"
        pieces = ", ".join(f"[{fmt_num(s)}, {fmt_num(e)}]" for s, e in self.intervals)
        return f"significant on {pieces}"

    def summary(self) -> str:
        """Text: bounds, region type, observed range and what lies within it."""
        lo, hi = self.observed_range
        crit = (f"{100 * (1 - self.alpha):g}% HDI excludes 0" if self.method == "bayes"
                else f"p < {self.alpha:g}")
        lines = [
            f"Johnson-Neyman interval for the effect of {self.focal!r} across "
            f"{self.moderator!r} ({crit}; method: {self.method})",
            f"Region: {self.region} - the effect is {self._describe()}",
            f"Observed range of {self.moderator}: [{fmt_num(lo)}, {fmt_num(hi)}]",
        ]
        for x, inr, d in zip(self.bounds, self.bounds_in_range,
                             self.df or (np.nan,) * len(self.bounds), strict=True):
            where = "inside" if inr else "outside"
            lines.append(
                f"  bound {fmt_num(x)} (df {fmt_num(d)}) lies {where} the observed range"
            )
        if self.intervals_in_range:
            pieces = ", ".join(
                f"[{fmt_num(s)}, {fmt_num(e)}]" for s, e in self.intervals_in_range
            )
            lines.append(f"Within the observed range the effect is significant on {pieces}")
        else:
            lines.append("Within the observed range the effect is significant nowhere")
        if self.centred_mean is not None:
            lines.append(
                f"{self.moderator} was mean-centred before fitting: add "
                f"{fmt_num(self.centred_mean)} to the values above for the raw scale"
            )
        if not self.converged:
            lines.append("WARNING: the df fixed-point iteration did not converge")
        note = held_note(self.held, None)
        if note:
            lines.append(note)
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None) -> Axes:
        """Conditional effect with its band, the bounds and the significant region."""
        from ..plots import plot_johnson_neyman

        return plot_johnson_neyman(self, ax=ax)


def _region_from_intervals(
    intervals: Sequence[tuple[float, float]], lo: float, hi: float
) -> str:
    if not intervals:
        return "none"
    if len(intervals) == 1:
        s, e = intervals[0]
        if s <= lo and e >= hi:
            return "all"
        if s <= lo:
            return "below"
        if e >= hi:
            return "above"
        return "inside"
    return "outside"


def johnson_neyman(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    alpha: float = 0.05,
    at_values_other: Mapping[str, float] | None = None,
    n_grid: int = 200,
) -> JohnsonNeyman:
    """Johnson-Neyman bounds: moderator values where the effect of ``focal`` turns significant.

    For frequentist fits the bounds solve ``(b1 + b3 m)^2 = t^2 (v11 + 2 m v13 +
    m^2 v33)`` exactly, with ``t`` the critical value on the fit's df; when the df depend
    on the contrast (Satterthwaite in mixed models) each bound is iterated to a fixed
    point. For Bayesian fits the bounds are where the ``1 - alpha`` HDI of the
    conditional effect starts or stops excluding zero within the observed range (grid
    plus bisection).

    Parameters
    ----------
    fit : fitted model
        Any backend.
    focal, moderator : str
        Focal variable and a moderator that interacts with it.
    alpha : float, default 0.05
        Significance level.
    at_values_other : dict, optional
        Values of other variables that interact with ``focal`` (default: their means).
    n_grid : int, default 200
        Points of the moderator grid in ``curve`` (and of the Bayesian search).

    Returns
    -------
    JohnsonNeyman

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(3)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=200), "age": rng.normal(size=200)})
    >>> d["adherence"] = d.alliance * (0.2 + 0.5 * d.age) + rng.normal(size=200)
    >>> jn = am.johnson_neyman(am.fit_ols("adherence ~ alliance * age", d),
    ...                        focal="alliance", moderator="age")
    >>> jn.region
    'outside'
    """
    check_fit(fit)
    check_alpha(alpha)
    terms = Terms.of(fit.frame)
    x_names = list(terms.names)
    check_terms(terms, focal, [moderator])
    if not isinstance(n_grid, int | np.integer) or n_grid < 10:
        raise ModelSpecError(f"n_grid must be an integer >= 10, got {n_grid!r}")
    held = held_values(fit, terms, focal, [moderator], at_values_other)
    obs = factor_values(fit.frame, moderator)
    if np.ptp(obs) == 0:
        raise ModelSpecError(
            f"moderator {moderator!r} is constant ({obs[0]:g} in all {obs.size} rows); "
            "there is nothing to probe"
        )
    lo, hi = float(obs.min()), float(obs.max())
    cm = (getattr(fit, "centering", None) or {}).get(moderator)
    cmean = float(cm) if cm is not None else None
    a, c = terms.affine([focal], moderator, held)
    pad = 0.1 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, int(n_grid))
    W = a[None, :] + grid[:, None] * c[None, :]
    draws = posterior_draws(fit)
    if draws is not None:
        bounds, ints = core.bayes_jn(draws, a, c, lo, hi, prob=1 - alpha, n_grid=int(n_grid))
        rows = bayes_rows(draws, W, alpha)
        curve = pd.DataFrame(
            {
                moderator: grid,
                "estimate": rows["estimate"],
                "lower": rows["hdi_lower"],
                "upper": rows["hdi_upper"],
                "significant": (rows["hdi_lower"] > 0) | (rows["hdi_upper"] < 0),
            }
        )
        return JohnsonNeyman(
            focal=focal,
            moderator=moderator,
            alpha=float(alpha),
            bounds=bounds,
            region=_region_from_intervals(ints, lo, hi),
            intervals=ints,
            observed_range=(lo, hi),
            bounds_in_range=tuple(True for _ in bounds),
            intervals_in_range=ints,
            df=(),
            converged=True,
            method="bayes",
            curve=curve,
            held=held,
            centred_mean=cmean,
        )

    b = np.asarray(fit.params[x_names], float)
    V = np.asarray(fit.cov_params().loc[x_names, x_names], float)
    m_ref = float(obs.mean())
    probe = [lo, m_ref, hi]
    dfs_probe = [float(fit.contrast_df(a + m * c)) for m in probe]
    if np.allclose(dfs_probe, dfs_probe[0], rtol=1e-12, atol=0) or all(
        np.isinf(dfs_probe)
    ):
        df_arg: Any = dfs_probe[0]
        method = "z" if np.isinf(dfs_probe[0]) else "t"
    else:
        def df_arg(m: float) -> float:
            return float(fit.contrast_df(a + m * c))

        method = "satterthwaite"
    sol = core.jn_solve(b, V, a, c, df_arg, alpha, m_ref=m_ref, search=(lo, hi))
    intervals = core.significant_intervals(sol.region, sol.bounds)
    rows = freq_rows(fit, W, alpha)
    curve = pd.DataFrame(
        {
            moderator: grid,
            "estimate": rows["estimate"],
            "lower": rows["ci_lower"],
            "upper": rows["ci_upper"],
            "significant": rows["p"] < alpha,
        }
    )
    return JohnsonNeyman(
        focal=focal,
        moderator=moderator,
        alpha=float(alpha),
        bounds=sol.bounds,
        region=sol.region,
        intervals=intervals,
        observed_range=(lo, hi),
        bounds_in_range=tuple(lo <= x <= hi for x in sol.bounds),
        intervals_in_range=core.clip_intervals(intervals, lo, hi),
        df=sol.df,
        converged=sol.converged,
        method=method,
        curve=curve,
        held=held,
        centred_mean=cmean,
    )


