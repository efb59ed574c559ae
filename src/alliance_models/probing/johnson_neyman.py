"""Johnson-Neyman: the moderator values where the effect of a focal variable turns significant.

For frequentist fits the bounds are the exact roots of a quadratic in the moderator
(:func:`._core.jn_solve` on ``(b, V, df)``), iterated to a fixed point when the df depend
on the contrast; for Bayesian fits they are where the HDI of the conditional effect
starts or stops excluding zero (:func:`._core.bayes_jn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from .._format import fmt_num
from .._validate import integer
from ..errors import ModelSpecError
from . import _core as core
from ._fit import (
    Terms,
    bayes_rows,
    check_alpha,
    check_fit,
    check_scale,
    check_terms,
    factor_values,
    freq_rows,
    held_note,
    held_values,
    link_of,
    posterior_draws,
    reference_design,
)
from .delta import response_slopes

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
        ``"t"``, ``"z"``, ``"satterthwaite"`` or ``"kenward-roger"`` (df varying with the
        contrast, named after the fit's ``ddf``) or ``"bayes"``.
    curve : DataFrame
        Conditional effect over a grid of the moderator: ``moderator, estimate, lower,
        upper, significant`` (for plotting).
    held : dict
        Values at which other interacting variables were held.
    centred_mean : float or None
        The mean removed from the moderator by ``fit_ols(center=...)`` (bounds and
        ranges are on the centred scale), else ``None``.
    scale : str
        ``"link"`` (exact bounds) or ``"response"`` (slope of the mean; bounds found
        numerically within the observed range padded by 10% on each side).
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
    scale: str = "link"

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
        where = ("; response scale: slope of the mean, searched within the observed range "
                 "+/- 10%" if self.scale == "response" else "")
        lines = [
            f"Johnson-Neyman interval for the effect of {self.focal!r} across "
            f"{self.moderator!r} ({crit}; method: {self.method}{where})",
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
    scale: Literal["link", "response"] = "link",
) -> JohnsonNeyman:
    """Johnson-Neyman bounds: moderator values where the effect of ``focal`` turns significant.

    For frequentist fits the bounds solve ``(b1 + b3 m)^2 = t^2 (v11 + 2 m v13 +
    m^2 v33)`` exactly, with ``t`` the critical value on the fit's df; when the df depend
    on the contrast (Satterthwaite or Kenward-Roger in mixed models) each bound is
    iterated to a fixed point; the variance is the fit's covariance (Kenward and Roger's
    adjusted one for ``ddf="kenward-roger"``). For Bayesian fits the bounds are where
    the ``1 - alpha`` HDI of the conditional effect starts or stops excluding zero within
    the observed range (grid plus bisection).

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
    scale : {"link", "response"}, default "link"
        ``"link"``: the effect on the linear predictor (log-odds for binomial fits), with
        exact bounds (z critical values when the df are infinite, as for GLMMs and GEE).
        ``"response"`` (frequentist fits): the slope of the mean (probability) at the
        focal variable's mean and the other predictors' means with delta-method SEs;
        the bounds are roots of ``|estimate| = z se`` found on the grid and refined by
        Brent's method, within the observed range padded by 10%.

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
    check_scale(scale)
    terms = Terms.of(fit.frame)
    x_names = list(terms.names)
    check_terms(terms, focal, [moderator])
    integer("n_grid", n_grid, ModelSpecError, minimum=10)
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
    link = link_of(fit)
    if scale == "response" and link != "identity":
        if draws is not None:
            raise ModelSpecError("johnson_neyman(scale='response') is for frequentist fits; "
                                 "use scale='link' (or simple_slopes) for a Bayesian fit")
        return _response_jn(fit, terms, focal, moderator, held, a, c, grid, alpha, link,
                            (lo, hi), cmean)
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

        method = "kenward-roger" if getattr(fit, "ddf", "") == "kenward-roger" else (
            "satterthwaite"
        )
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




def _response_jn(fit: Any, terms: Terms, focal: str, moderator: str, held: dict[str, float],
                 a: np.ndarray, c: np.ndarray, grid: np.ndarray, alpha: float, link: str,
                 observed: tuple[float, float], cmean: float | None) -> JohnsonNeyman:
    """Johnson-Neyman on the response scale: numerical roots of ``|slope| = z se``."""
    names = list(terms.names)
    b = np.asarray(fit.params[names], float)
    V = np.asarray(fit.cov_params().loc[names, names], float)
    fmean = float(factor_values(fit.frame, focal).mean())
    q = core.t_critical(float("inf"), alpha)

    def slopes(ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X0, _ = reference_design(fit, terms, [{focal: fmean, **held, moderator: float(m)}
                                              for m in ms])
        W = a[None, :] + np.asarray(ms)[:, None] * c[None, :]
        return response_slopes(b, V, X0, W, link)

    est, se = slopes(grid)
    gap = np.abs(est) - q * se
    sig = gap > 0
    bounds = []
    for i in np.flatnonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0):
        def f(m: float) -> float:
            e, s = slopes(np.array([m]))
            return float(abs(e[0]) - q * s[0])

        bounds.append(float(brentq(f, grid[i], grid[i + 1], xtol=1e-10, rtol=1e-12)))
    # significant intervals between the roots (grid ends where the search stops)
    edges = [float(grid[0]), *bounds, float(grid[-1])]
    intervals = []
    for s, e in zip(edges[:-1], edges[1:], strict=True):
        mid = (s + e) / 2
        m_est, m_se = slopes(np.array([mid]))
        if abs(m_est[0]) > q * m_se[0]:
            intervals.append((s, e))
    lo, hi = observed
    curve = pd.DataFrame({moderator: grid, "estimate": est, "lower": est - q * se,
                          "upper": est + q * se, "significant": sig})
    return JohnsonNeyman(
        focal=focal, moderator=moderator, alpha=float(alpha), bounds=tuple(bounds),
        region=_region_from_intervals(intervals, lo, hi), intervals=tuple(intervals),
        observed_range=observed, bounds_in_range=tuple(lo <= x <= hi for x in bounds),
        intervals_in_range=core.clip_intervals(tuple(intervals), lo, hi),
        df=tuple(np.inf for _ in bounds), converged=True, method="z", curve=curve,
        held=held, centred_mean=cmean, scale="response",
    )
