"""Probing interactions on any fit: simple slopes, Johnson-Neyman, conditional effects.

Every function works from the small fit interface of
:class:`alliance_models.models.results.FixedEffectsFit` only (``params``,
``cov_params()``, ``contrast_df(L)``, ``fixed_draws``, ``frame``), so mixed, OLS, GEE
and Bayesian fits are probed by the same code. A conditional effect of a focal variable
is the linear contrast ``w' b`` whose weights are the derivative of the linear predictor
with respect to the focal variable (:mod:`alliance_models._probing_core`). Frequentist
fits give estimate, SE, df (Satterthwaite, ``n - p`` or infinite), t or z, p and CI;
Bayesian fits give the posterior median, the HDI and the probability of direction of the
conditional effect computed draw by draw.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from . import _probing_core as core
from ._utils import RNGLike
from .errors import ModelSpecError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "ConditionalEffects",
    "JohnsonNeyman",
    "SimpleSlopes",
    "conditional_effects",
    "johnson_neyman",
    "simple_slopes",
]

AtSpec = Literal["meansd", "percentiles"] | Sequence[float] | float | np.ndarray



# ----------------------------------------------------------------------------- helpers
def _check_fit(fit: Any) -> None:
    for attr in ("params", "cov_params", "contrast_df", "frame"):
        if not hasattr(fit, attr):
            raise ModelSpecError(
                f"probing needs a fitted model (fit_mixed, fit_ols, fit_gee, fit_bayes); "
                f"the object of type {type(fit).__name__} has no {attr!r}"
            )


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ModelSpecError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _draws(fit: Any) -> np.ndarray | None:
    d = getattr(fit, "fixed_draws", None)
    if d is None:
        return None
    names = list(fit.frame.x_names)
    missing = [n for n in names if n not in d.columns]
    if missing:
        raise ModelSpecError(f"fixed_draws lacks columns {missing}; expected {names}")
    return np.asarray(d[names], dtype=float)


def _factors(x_names: Sequence[str]) -> list[tuple[str, ...]]:
    return [core.split_term(n) for n in x_names]


def _check_terms(x_names: Sequence[str], focal: str, moderators: Sequence[str]) -> None:
    facs = _factors(x_names)
    allf = {f for fs in facs for f in fs}
    listed = ", ".join(x for x in x_names)
    for role, name in [("focal", focal)] + [("moderator", m) for m in moderators]:
        if not isinstance(name, str) or name not in allf:
            raise ModelSpecError(
                f"{role} {name!r} is not a variable of the model; the model terms are: {listed}"
            )
    for m in moderators:
        if m == focal:
            raise ModelSpecError(f"moderator {m!r} is the focal variable; choose another")
        if not any(focal in fs and m in fs for fs in facs):
            raise ModelSpecError(
                f"focal {focal!r} and moderator {m!r} do not interact in the model (no term "
                f"'{focal}:{m}'), so the effect of {focal!r} does not depend on {m!r}; "
                f"the model terms are: {listed}"
            )


def _factor_column(frame: Any, name: str) -> np.ndarray:
    """Observed values of a factor: a numeric data column or a design column."""
    data = frame.data
    if name in data.columns and pd.api.types.is_numeric_dtype(data[name]):
        return np.asarray(data[name], dtype=float)
    if name in frame.x_names:
        return np.asarray(frame.X[:, list(frame.x_names).index(name)], dtype=float)
    raise ModelSpecError(
        f"{name!r} is neither a numeric data column nor a design column; "
        f"design columns: {', '.join(frame.x_names)}"
    )


def _at_values(frame: Any, name: str, at: Any, argname: str = "at") -> tuple[np.ndarray, list]:
    """Moderator values to probe at and their labels."""
    obs = _factor_column(frame, name)
    if np.ptp(obs) == 0:
        raise ModelSpecError(
            f"moderator {name!r} is constant ({obs[0]:g} in all {obs.size} rows); "
            "there is nothing to probe"
        )
    uniq = np.unique(obs)
    if isinstance(at, str):
        if at == "meansd":
            if uniq.size == 2:
                return uniq.astype(float), [f"{v:g}" for v in uniq]
            m, s = float(obs.mean()), float(obs.std(ddof=1))
            return np.array([m - s, m, m + s]), ["-1 SD", "mean", "+1 SD"]
        if at == "percentiles":
            if uniq.size == 2:
                return uniq.astype(float), [f"{v:g}" for v in uniq]
            return np.percentile(obs, [16, 50, 84]), ["p16", "p50", "p84"]
        raise ModelSpecError(
            f"{argname}={at!r} is not allowed; use 'meansd', 'percentiles' or a list of "
            f"numbers (values of {name!r})"
        )
    vals = np.atleast_1d(np.asarray(at, dtype=object))
    if vals.size == 0:
        raise ModelSpecError(f"{argname}= is empty; give at least one value of {name!r}")
    try:
        out = vals.astype(float)
    except (TypeError, ValueError):
        bad = [v for v in vals if not isinstance(v, int | float | np.number)]
        raise ModelSpecError(
            f"{argname}= values for {name!r} must be numbers; got {bad[:5]!r}"
        ) from None
    bad_idx = np.flatnonzero(~np.isfinite(out))
    if bad_idx.size:
        raise ModelSpecError(
            f"{argname}= values for {name!r} must be finite numbers; got {out[bad_idx][:5]!r}"
        )
    return out, [f"{v:g}" for v in out]


def _held(
    fit: Any,
    focal: str,
    probed: Sequence[str],
    at_values_other: Mapping[str, float] | None,
) -> dict[str, float]:
    """Values of every other factor that multiplies the focal variable."""
    x_names = fit.frame.x_names
    others: list[str] = []
    for fs in _factors(x_names):
        if focal in fs:
            for f in fs:
                if f != focal and f not in probed and f not in others:
                    others.append(f)
    given = dict(at_values_other or {})
    for k, v in given.items():
        if k not in others:
            raise ModelSpecError(
                f"at_values_other: {k!r} does not interact with {focal!r} (or is probed); "
                f"variables held fixed here: {', '.join(others) or 'none'}"
            )
        if not np.isfinite(float(v)):
            raise ModelSpecError(f"at_values_other[{k!r}] must be a finite number, got {v!r}")
    return {f: float(given[f]) if f in given else float(_factor_column(fit.frame, f).mean())
            for f in others}


def _stat_label(dfs: np.ndarray) -> str:
    return "z" if np.all(np.isinf(dfs)) else "t"


def _freq_rows(fit: Any, W: np.ndarray, alpha: float) -> pd.DataFrame:
    """Estimate, SE, df, t/z, p and CI for each weight row of ``W``."""
    b = np.asarray(fit.params[list(fit.frame.x_names)], float)
    V = np.asarray(fit.cov_params().loc[list(fit.frame.x_names), list(fit.frame.x_names)], float)
    est = W @ b
    se = np.sqrt(np.einsum("ij,jk,ik->i", W, V, W))
    dfs = np.array([float(fit.contrast_df(w)) for w in W])
    stat = est / se
    p = np.where(np.isinf(dfs), 2 * stats.norm.sf(np.abs(stat)),
                 2 * stats.t.sf(np.abs(stat), np.where(np.isinf(dfs), 1.0, dfs)))
    q = np.array([core.t_critical(d, alpha) for d in dfs])
    return pd.DataFrame(
        {
            "estimate": est,
            "se": se,
            "df": dfs,
            _stat_label(dfs): stat,
            "p": p,
            "ci_lower": est - q * se,
            "ci_upper": est + q * se,
        }
    )


def _bayes_rows(draws: np.ndarray, W: np.ndarray, alpha: float) -> pd.DataFrame:
    eff = draws @ W.T  # (S, k)
    h = [core.hdi(eff[:, k], 1 - alpha) for k in range(W.shape[0])]
    return pd.DataFrame(
        {
            "estimate": np.median(eff, axis=0),
            "mean": eff.mean(axis=0),
            "sd": eff.std(axis=0, ddof=1),
            "hdi_lower": [x[0] for x in h],
            "hdi_upper": [x[1] for x in h],
            "pd": [core.prob_direction(eff[:, k]) for k in range(W.shape[0])],
        }
    )


def _held_note(held: Mapping[str, float], given: Mapping[str, float] | None) -> str:
    if not held:
        return ""
    given = given or {}
    parts = [
        f"{k} = {v:.4g} ({'as given' if k in given else 'its mean'})" for k, v in held.items()
    ]
    return "Other variables that interact with the focal variable are held at: " + ", ".join(
        parts
    )


# ----------------------------------------------------------------------------- simple slopes
@dataclass(frozen=True)
class SimpleSlopes:
    """Conditional effects of ``focal`` at chosen moderator values.

    Attributes
    ----------
    focal, moderator : str
        The focal variable and the (first) moderator.
    moderator2 : str or None
        The second moderator (grid of both, e.g. for moderated moderation).
    table : DataFrame
        One row per moderator value (or pair): ``estimate, se, df, t`` (``z`` when df is
        infinite)``, p, ci_lower, ci_upper`` for frequentist fits, plus ``boot_lower``,
        ``boot_upper`` with a bootstrap; ``estimate`` (posterior median)``, mean, sd,
        hdi_lower, hdi_upper, pd`` for Bayesian fits.
    interaction : DataFrame or None
        With a three-way term: the conditional ``focal x moderator`` interaction at
        each value of ``moderator2`` (PROCESS model 3).
    held : dict of str to float
        Values at which other variables that interact with ``focal`` were held.
    alpha : float
        1 - confidence (or HDI) level.
    method : str
        ``"t"``, ``"z"`` or ``"bayes"``.
    n_boot : int
        Bootstrap resamples behind ``boot_lower``/``boot_upper`` (0 if none).
    note : str
        Text describing held values.
    """

    focal: str
    moderator: str
    moderator2: str | None
    table: pd.DataFrame
    interaction: pd.DataFrame | None
    held: dict[str, float]
    alpha: float
    method: str
    n_boot: int = 0
    note: str = ""

    def to_frame(self) -> pd.DataFrame:
        """Return the table of conditional effects (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Text table of conditional effects with the notes on held values."""
        level = f"{100 * (1 - self.alpha):g}%"
        head = f"Conditional effect of {self.focal!r} at values of {self.moderator!r}"
        if self.moderator2:
            head += f" and {self.moderator2!r}"
        kind = {
            "bayes": f"posterior median, {level} HDI and probability of direction",
            "z": f"Wald z tests, {level} CI",
            "t": f"t tests, {level} CI",
        }[self.method]
        lines = [head, f"({kind})", core.table_text(self.table, index=False)]
        if self.n_boot:
            lines.append(f"boot_lower/boot_upper: {level} percentile bootstrap CI, "
                         f"{self.n_boot} resamples")
        if self.interaction is not None:
            lines += [
                "",
                f"Conditional {self.focal}:{self.moderator} interaction at values of "
                f"{self.moderator2!r}:",
                core.table_text(self.interaction, index=False),
            ]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None) -> Axes:
        """Point estimates with interval bars at each moderator value."""
        from .plots import _plot_simple_slopes

        return _plot_simple_slopes(self, ax=ax)


def simple_slopes(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    at: AtSpec = "meansd",
    moderator2: str | None = None,
    at2: AtSpec = "meansd",
    alpha: float = 0.05,
    at_values_other: Mapping[str, float] | None = None,
    bootstrap: int = 0,
    seed: RNGLike = None,
) -> SimpleSlopes:
    """Conditional effect of ``focal`` at values of one or two moderators.

    Parameters
    ----------
    fit : fitted model
        Any of ``fit_mixed``, ``fit_ols``, ``fit_gee``, ``fit_bayes``.
    focal : str
        The focal predictor (a variable or design column name, e.g. ``"alliance"``).
    moderator : str
        A variable that interacts with ``focal`` in the model.
    at : "meansd", "percentiles", number or list of numbers, default "meansd"
        Moderator values: mean and ±1 SD, the 16th/50th/84th percentiles, or given
        values. A two-valued moderator is probed at its two values.
    moderator2, at2 : str and as ``at``, optional
        A second moderator; the result is the grid of both. With a three-way term
        ``focal:moderator:moderator2`` the conditional two-way interaction is also
        reported (PROCESS model 3).
    alpha : float, default 0.05
        1 - level of the CIs (HDIs for Bayesian fits).
    at_values_other : dict, optional
        Values of other variables that interact with ``focal`` (default: their means).
    bootstrap : int, default 0
        If positive, draw this many bootstrap refits (OLS fits only) for percentile CIs;
        an OLS fit made with ``bootstrap=`` uses its stored resamples automatically.
    seed : int, Generator or SeedSequence, optional
        Seed of that bootstrap.

    Returns
    -------
    SimpleSlopes

    Raises
    ------
    ModelSpecError
        ``focal``/``moderator`` not in the model or not interacting, constant moderator,
        invalid ``at`` values.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(2)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=100), "age": rng.normal(size=100)})
    >>> d["adherence"] = d.alliance * (1 + 0.5 * d.age) + rng.normal(size=100)
    >>> ss = am.simple_slopes(am.fit_ols("adherence ~ alliance * age", d),
    ...                       focal="alliance", moderator="age")
    >>> ss.table["age"].tolist() == ["-1 SD", "mean", "+1 SD"]
    True
    """
    _check_fit(fit)
    _check_alpha(alpha)
    x_names = list(fit.frame.x_names)
    mods = [moderator] + ([moderator2] if moderator2 is not None else [])
    _check_terms(x_names, focal, mods)
    if moderator2 is not None and moderator2 == moderator:
        raise ModelSpecError("moderator2 must differ from moderator")
    held = _held(fit, focal, mods, at_values_other)
    v1, l1 = _at_values(fit.frame, moderator, at, "at")
    if moderator2 is not None:
        v2, l2 = _at_values(fit.frame, moderator2, at2, "at2")
        grid = [(a, la, c, lc) for c, lc in zip(v2, l2, strict=True)
                for a, la in zip(v1, l1, strict=True)]
    else:
        grid = [(a, la, None, None) for a, la in zip(v1, l1, strict=True)]

    W = np.array(
        [
            core.effect_weights(
                x_names,
                [focal],
                {**held, moderator: a, **({moderator2: c} if moderator2 else {})},
            )
            for a, _, c, _ in grid
        ]
    )
    labels = pd.DataFrame(
        {moderator: [g[1] for g in grid], f"{moderator}_value": [g[0] for g in grid]}
    )
    if moderator2 is not None:
        labels[moderator2] = [g[3] for g in grid]
        labels[f"{moderator2}_value"] = [g[2] for g in grid]
    centering = getattr(fit, "centering", None) or {}
    for mname in mods:
        if mname in centering:  # fit_ols(center=...): also show the raw-scale value
            labels[f"{mname}_uncentred"] = labels[f"{mname}_value"] + centering[mname]
    draws = _draws(fit)
    n_boot = 0
    if draws is not None:
        if bootstrap:
            raise ModelSpecError("bootstrap= is for frequentist fits; a Bayesian fit has draws")
        body = _bayes_rows(draws, W, alpha)
        method = "bayes"
    else:
        body = _freq_rows(fit, W, alpha)
        method = "z" if "z" in body.columns else "t"
        boot = _boot_params(fit, bootstrap, seed)
        if boot is not None:
            eff = np.asarray(boot[x_names], float) @ W.T
            body["boot_lower"] = np.quantile(eff, alpha / 2, axis=0)
            body["boot_upper"] = np.quantile(eff, 1 - alpha / 2, axis=0)
            n_boot = len(boot)
    table = pd.concat([labels, body], axis=1)

    interaction = None
    if moderator2 is not None and any(
        {focal, moderator, moderator2} <= set(fs) for fs in _factors(x_names)
    ):
        W2 = np.array(
            [core.effect_weights(x_names, [focal, moderator], {**held, moderator2: c})
             for c in v2]
        )
        lab2 = pd.DataFrame({moderator2: l2, f"{moderator2}_value": v2})
        body2 = _bayes_rows(draws, W2, alpha) if draws is not None else _freq_rows(fit, W2, alpha)
        interaction = pd.concat([lab2, body2], axis=1)
    return SimpleSlopes(
        focal=focal,
        moderator=moderator,
        moderator2=moderator2,
        table=table,
        interaction=interaction,
        held=held,
        alpha=float(alpha),
        method=method,
        n_boot=n_boot,
        note=_held_note(held, at_values_other),
    )


def _boot_params(fit: Any, bootstrap: int, seed: RNGLike) -> pd.DataFrame | None:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise ModelSpecError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    if bootstrap > 0:
        if not hasattr(fit, "bootstrap_params"):
            raise ModelSpecError(
                f"bootstrap CIs are available for fit_ols fits; {type(fit).__name__} has no "
                "bootstrap (use its model-based CIs)"
            )
        return fit.bootstrap_params(bootstrap, seed=seed)
    return getattr(fit, "boot_params", None)


# ----------------------------------------------------------------------------- Johnson-Neyman
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
        b = [f"{x:.4f}" for x in self.bounds]
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
        pieces = ", ".join(f"[{s:.4f}, {e:.4f}]" for s, e in self.intervals)
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
            f"Observed range of {self.moderator}: [{lo:.4f}, {hi:.4f}]",
        ]
        for x, inr, d in zip(self.bounds, self.bounds_in_range,
                             self.df or (np.nan,) * len(self.bounds), strict=True):
            where = "inside" if inr else "outside"
            lines.append(f"  bound {x:.4f} (df {d:.4g}) lies {where} the observed range")
        if self.intervals_in_range:
            pieces = ", ".join(f"[{s:.4f}, {e:.4f}]" for s, e in self.intervals_in_range)
            lines.append(f"Within the observed range the effect is significant on {pieces}")
        else:
            lines.append("Within the observed range the effect is significant nowhere")
        if self.centred_mean is not None:
            lines.append(
                f"{self.moderator} was mean-centred before fitting: add "
                f"{self.centred_mean:.4g} to the values above for the raw scale"
            )
        if not self.converged:
            lines.append("WARNING: the df fixed-point iteration did not converge")
        note = _held_note(self.held, None)
        if note:
            lines.append(note)
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None) -> Axes:
        """Conditional effect with its band, the bounds and the significant region."""
        from .plots import plot_johnson_neyman

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
    _check_fit(fit)
    _check_alpha(alpha)
    x_names = list(fit.frame.x_names)
    _check_terms(x_names, focal, [moderator])
    if not isinstance(n_grid, int | np.integer) or n_grid < 10:
        raise ModelSpecError(f"n_grid must be an integer >= 10, got {n_grid!r}")
    held = _held(fit, focal, [moderator], at_values_other)
    obs = _factor_column(fit.frame, moderator)
    if np.ptp(obs) == 0:
        raise ModelSpecError(
            f"moderator {moderator!r} is constant ({obs[0]:g} in all {obs.size} rows); "
            "there is nothing to probe"
        )
    lo, hi = float(obs.min()), float(obs.max())
    cm = (getattr(fit, "centering", None) or {}).get(moderator)
    cmean = float(cm) if cm is not None else None
    a, c = core.affine_weights(x_names, [focal], moderator, held)
    pad = 0.1 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, int(n_grid))
    W = a[None, :] + grid[:, None] * c[None, :]
    draws = _draws(fit)
    if draws is not None:
        bounds, ints = core.bayes_jn(draws, a, c, lo, hi, prob=1 - alpha, n_grid=int(n_grid))
        rows = _bayes_rows(draws, W, alpha)
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
    rows = _freq_rows(fit, W, alpha)
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


# ----------------------------------------------------------------------------- predictions
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
            lines.append(f"  {self.moderator} = {k}: from {s.iloc[0]:.4f} to {s.iloc[-1]:.4f}")
        if self.held:
            lines.append("Held at: " + ", ".join(
                f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                for k, v in self.held.items()))
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None, *, data: bool = True) -> Axes:
        """Lines with bands (see :func:`alliance_models.plot_interaction`)."""
        from .plots import _plot_conditional_effects

        return _plot_conditional_effects(self, ax=ax, data=data)


def conditional_effects(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    at: AtSpec = "meansd",
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
    n_points : int, default 50
        Points across the observed range of ``focal``.
    alpha : float, default 0.05
        1 - band level.
    scale : {"link", "response"}
        ``"response"`` applies the fit's inverse link (e.g. probabilities for a
        binomial GEE); identical for identity links.
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
    _check_fit(fit)
    _check_alpha(alpha)
    if scale not in ("link", "response"):
        raise ModelSpecError(f"scale={scale!r}; use 'link' or 'response'")
    if not isinstance(n_points, int | np.integer) or n_points < 2:
        raise ModelSpecError(f"n_points must be an integer >= 2, got {n_points!r}")
    frame = fit.frame
    x_names = list(frame.x_names)
    _check_terms(x_names, focal, [moderator])
    data = frame.data
    for role, name in (("focal", focal), ("moderator", moderator)):
        if name not in data.columns or not pd.api.types.is_numeric_dtype(data[name]):
            raise ModelSpecError(
                f"conditional_effects needs {role} {name!r} as a numeric data column; "
                f"numeric columns: {', '.join(c for c in data.columns if pd.api.types.is_numeric_dtype(data[c]))}"  # noqa: E501
            )
    mvals, mlabels = _at_values(frame, moderator, at, "at")
    fvals = np.linspace(float(data[focal].min()), float(data[focal].max()), int(n_points))
    spec = fit.spec
    required = getattr(frame.fixed_model_spec, "required_variables", None)
    if required is None:  # pragma: no cover - formulaic always provides it
        required = [v for v in spec.variables if v != spec.response]
    needed = [v for v in data.columns if v in set(required)]
    given = dict(at_values_other or {})
    held: dict[str, Any] = {}
    categorical: set[str] = set()
    for v in needed:
        encoded = any(
            re.search(rf"C\(\s*{re.escape(v)}\s*[,)]", f) for f in x_names
        )
        if (encoded or not pd.api.types.is_numeric_dtype(data[v])
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
    draws = _draws(fit)
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
        body = _freq_rows(fit, X0, alpha)
        est, lower, upper = (body["estimate"].to_numpy(), body["ci_lower"].to_numpy(),
                             body["ci_upper"].to_numpy())
        se = body["se"].to_numpy()
    if scale == "response":
        inv = getattr(fit, "inverse_link", None)
        if inv is not None:
            est, lower, upper = inv(est), inv(lower), inv(upper)
            se = None
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
