"""What probing reads from a fit: checks, term structure, probe values, result rows.

Shared by :mod:`.slopes`, :mod:`.johnson_neyman` and :mod:`.conditional`. A fit is used
only through the small interface of
:class:`alliance_models.models.interface.FixedEffectsFit`; the term structure (which
factors multiply which) comes from the formulaic encoding the fit kept
(``frame.fixed_model_spec``), never from the look of a column name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._format import fmt_num
from .._terms import DesignColumn, design_columns
from .._validate import probability
from ..errors import ModelSpecError, format_rows
from . import _core as core
from .delta import LINKS

__all__ = [
    "SCALES",
    "Terms",
    "bayes_effect_rows",
    "bayes_rows",
    "check_alpha",
    "check_fit",
    "check_terms",
    "factor_values",
    "freq_rows",
    "held_note",
    "check_scale",
    "held_values",
    "link_of",
    "posterior_draws",
    "probe_values",
    "reference_design",
    "wald_rows",
]

#: The scales probing reports on: the linear predictor or the mean (inverse link).
SCALES = ("link", "response")


@dataclass(frozen=True)
class Terms:
    """The fixed-effects design of a fit, column by column.

    Attributes
    ----------
    names : tuple of str
        Column names, in design order.
    factors : tuple of tuple of str
        The factors each column is the product of (``()`` for the intercept).
    reads : dict of str to tuple of str
        The data variables each factor reads.
    columns : tuple of DesignColumn
        The full description.
    """

    names: tuple[str, ...]
    factors: tuple[tuple[str, ...], ...]
    reads: dict[str, tuple[str, ...]]
    columns: tuple[DesignColumn, ...]

    @classmethod
    def of(cls, frame: Any) -> Terms:
        """Read the term structure from ``frame.fixed_model_spec``."""
        columns = design_columns(frame.fixed_model_spec)
        names = tuple(c.name for c in columns)
        if names != tuple(frame.x_names):
            raise ModelSpecError(
                f"the fit's design columns {list(frame.x_names)} do not match its encoding "
                f"{list(names)}"
            )
        reads = {f: r for c in columns for f, r in zip(c.factors, c.reads, strict=True)}
        return cls(names, tuple(c.factors for c in columns), reads, columns)

    def weights(self, wrt: Sequence[str], values: Mapping[str, float]) -> np.ndarray:
        """Effect weights (:func:`._core.effect_weights`) on this design."""
        return core.effect_weights(self.factors, wrt, values, self.reads)

    def affine(
        self, wrt: Sequence[str], moderator: str, values: Mapping[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Affine effect weights (:func:`._core.affine_weights`) on this design."""
        return core.affine_weights(self.factors, wrt, moderator, values, self.reads)


def check_fit(fit: Any) -> None:
    """Raise unless ``fit`` has the attributes probing uses."""
    for attr in ("params", "cov_params", "contrast_df", "frame"):
        if not hasattr(fit, attr):
            raise ModelSpecError(
                f"probing needs a fitted model (fit_mixed, fit_ols, fit_gee, fit_bayes); "
                f"the object of type {type(fit).__name__} has no {attr!r}"
            )


def check_alpha(alpha: float) -> None:
    """Raise unless ``0 < alpha < 1``."""
    probability("alpha", alpha, ModelSpecError)


def posterior_draws(fit: Any) -> np.ndarray | None:
    """Draws of the fixed effects in design order, or ``None`` for a frequentist fit."""
    d = getattr(fit, "fixed_draws", None)
    if d is None:
        return None
    names = list(fit.frame.x_names)
    missing = [n for n in names if n not in d.columns]
    if missing:
        raise ModelSpecError(f"fixed_draws lacks columns {missing}; expected {names}")
    return np.asarray(d[names], dtype=float)


def check_terms(terms: Terms, focal: str, moderators: Sequence[str]) -> None:
    """Raise unless ``focal`` and each moderator are factors that interact in the model."""
    allf = {f for fs in terms.factors for f in fs}
    listed = ", ".join(terms.names)
    for role, name in [("focal", focal)] + [("moderator", m) for m in moderators]:
        if not isinstance(name, str) or name not in allf:
            raise ModelSpecError(
                f"{role} {name!r} is not a variable of the model; the model terms are: {listed}"
            )
    for m in moderators:
        if m == focal:
            raise ModelSpecError(f"moderator {m!r} is the focal variable; choose another")
        if not any(focal in fs and m in fs for fs in terms.factors):
            raise ModelSpecError(
                f"focal {focal!r} and moderator {m!r} do not interact in the model (no term "
                f"'{focal}:{m}'), so the effect of {focal!r} does not depend on {m!r}; "
                f"the model terms are: {listed}"
            )


def factor_values(frame: Any, name: str) -> np.ndarray:
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


def _label(v: float) -> str:
    return f"{v:g}"


def over_columns(frame: Any, over: Any, argname: str = "over") -> tuple[str, ...] | None:
    """Columns whose levels are the units of ``over=`` (``None`` for ``"rows"``)."""
    if isinstance(over, str) and over == "rows":
        return None
    if isinstance(over, str):
        cols = tuple(c.strip() for c in over.split(":"))
    elif isinstance(over, tuple | list) and over and all(isinstance(c, str) for c in over):
        cols = tuple(over)
    else:
        raise ModelSpecError(
            f"{argname}={over!r} is not allowed; use 'rows' or the column(s) whose levels "
            "are the units, e.g. 'patient' or 'therapist:patient'"
        )
    data = frame.data
    for c in cols:
        if c not in data.columns:
            raise ModelSpecError(
                f"{argname}={over!r}: {c!r} is not a column of the fitted rows; "
                f"use 'rows' or one of: {', '.join(map(str, data.columns))}"
            )
        missing = data[c].isna().to_numpy()
        if missing.any():
            raise ModelSpecError(
                f"{argname}={over!r}: column {c!r} is missing in "
                f"{format_rows(list(data.index[missing]))}; every row needs its unit"
            )
    return cols


def unit_values(frame: Any, name: str, obs: np.ndarray, cols: tuple[str, ...]) -> np.ndarray:
    """One value of ``name`` per unit (level of ``cols``); it must be constant within units."""
    data = frame.data
    keys = data[cols[0]].astype(str)
    for c in cols[1:]:
        keys = keys + ":" + data[c].astype(str)
    codes, labels = pd.factorize(keys.to_numpy(), sort=True)
    lo = np.full(len(labels), np.inf)
    hi = np.full(len(labels), -np.inf)
    np.minimum.at(lo, codes, obs)
    np.maximum.at(hi, codes, obs)
    varies = np.flatnonzero(~np.isclose(lo, hi, rtol=1e-12, atol=1e-12))
    if varies.size:
        u = varies[0]
        rows = data.index[codes == u]
        raise ModelSpecError(
            f"moderator {name!r} varies within {':'.join(cols)} {labels[u]!r} "
            f"({lo[u]:g} to {hi[u]:g} in {format_rows(list(rows))}), so it has no one value "
            f"per {':'.join(cols)}; use over='rows' (every session counts) for a moderator "
            "measured per session"
        )
    return lo


def probe_values(
    frame: Any, name: str, at: Any, argname: str = "at", over: Any = "rows"
) -> tuple[np.ndarray, list]:
    """Moderator values to probe at and their labels.

    ``at="meansd"`` and ``at="percentiles"`` summarise the moderator's distribution over
    the fitted rows (``over="rows"``: each session counts once) or over units
    (``over="patient"``: each patient counts once, with the moderator constant within
    patient), the convention :func:`alliance_models.prepare` centres patient-level
    moderators by.

    Examples
    --------
    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> d = pd.DataFrame({"patient": list("aaabc"), "age": [40.0, 40, 40, 50, 60]})
    >>> fr = SimpleNamespace(data=d, x_names=())
    >>> probe_values(fr, "age", "meansd")[0].round(3).tolist()  # sessions: 46 +/- 8.944
    [37.056, 46.0, 54.944]
    >>> probe_values(fr, "age", "meansd", over="patient")[0].tolist()  # patients: 50 +/- 10
    [40.0, 50.0, 60.0]
    """
    obs = factor_values(frame, name)
    if np.ptp(obs) == 0:
        raise ModelSpecError(
            f"moderator {name!r} is constant ({obs[0]:g} in all {obs.size} rows); "
            "there is nothing to probe"
        )
    cols = over_columns(frame, over, "over" if argname == "at" else "over2")
    if cols is not None and isinstance(at, str):
        obs = unit_values(frame, name, obs, cols)
    uniq = np.unique(obs)
    if isinstance(at, str):
        if at == "meansd":
            if uniq.size == 2:
                return uniq.astype(float), [_label(v) for v in uniq]
            m, s = float(obs.mean()), float(obs.std(ddof=1))
            return np.array([m - s, m, m + s]), ["-1 SD", "mean", "+1 SD"]
        if at == "percentiles":
            if uniq.size == 2:
                return uniq.astype(float), [_label(v) for v in uniq]
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
    return out, [_label(v) for v in out]


def held_values(
    fit: Any,
    terms: Terms,
    focal: str,
    probed: Sequence[str],
    at_values_other: Mapping[str, float] | None,
) -> dict[str, float]:
    """Values of every other factor that multiplies the focal variable."""
    others: list[str] = []
    for fs in terms.factors:
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
    return {f: float(given[f]) if f in given else float(factor_values(fit.frame, f).mean())
            for f in others}


def freq_rows(fit: Any, W: np.ndarray, alpha: float) -> pd.DataFrame:
    """Estimate, SE, df, t/z, p and CI for each weight row of ``W``."""
    names = list(fit.frame.x_names)
    b = np.asarray(fit.params[names], float)
    V = np.asarray(fit.cov_params().loc[names, names], float)
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
            "z" if np.all(np.isinf(dfs)) else "t": stat,
            "p": p,
            "ci_lower": est - q * se,
            "ci_upper": est + q * se,
        }
    )


def bayes_rows(draws: np.ndarray, W: np.ndarray, alpha: float) -> pd.DataFrame:
    """Posterior median, mean, SD, HDI and probability of direction of ``W b``."""
    return bayes_effect_rows(draws @ W.T, alpha)


def held_note(held: Mapping[str, float], given: Mapping[str, float] | None) -> str:
    """Return the sentence naming the values other interacting variables were held at."""
    if not held:
        return ""
    given = given or {}
    parts = [
        f"{k} = {fmt_num(v)} ({'as given' if k in given else 'its mean'})"
        for k, v in held.items()
    ]
    return "Other variables that interact with the focal variable are held at: " + ", ".join(
        parts
    )


def check_scale(scale: str) -> None:
    """Raise unless ``scale`` is ``"link"`` or ``"response"``."""
    if scale not in SCALES:
        raise ModelSpecError(f"scale={scale!r}; use 'link' or 'response'")


def link_of(fit: Any) -> str:
    """Return the fit's link: ``"logit"``, ``"log"`` or ``"identity"``."""
    link = getattr(fit, "link", None)
    if isinstance(link, str) and link in LINKS:
        return link
    family = getattr(fit, "family", None)
    if family in ("binomial", "beta_binomial"):
        return "logit"
    if family == "poisson":
        return "log"
    return "identity"


def reference_design(
    fit: Any,
    terms: Terms,
    rows: Sequence[Mapping[str, float]],
    given: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Design rows at given variable values, every other fixed-part variable held.

    Variables not in a row take ``given`` values, else their mean (the most frequent
    level for non-numeric columns and columns encoded with ``C()``), as emmeans'
    reference grid with ``cov.reduce = mean``.

    Returns
    -------
    X0 : ndarray, shape (len(rows), p)
    held : dict
        The values used for the variables not given in the rows.
    """
    data = fit.frame.data
    reads = {v for c in terms.columns for r in c.reads for v in r}
    encoded = {v for c in terms.columns
               for r, cat in zip(c.reads, c.categorical, strict=True) if cat for v in r}
    given = dict(given or {})
    set_in_rows = set().union(*(set(r) for r in rows)) if rows else set()
    for v in set_in_rows:
        if v not in data.columns or not pd.api.types.is_numeric_dtype(data[v]):
            raise ModelSpecError(
                f"scale='response' needs {v!r} as a numeric data column of the fit"
            )
    held: dict[str, Any] = {}
    categorical: set[str] = set()
    for v in (c for c in data.columns if c in reads and c not in set_in_rows):
        if v in given:
            held[v] = given[v]
        elif (v in encoded or not pd.api.types.is_numeric_dtype(data[v])
              or pd.api.types.is_bool_dtype(data[v])):
            held[v] = data[v].mode(dropna=True).iloc[0]
            categorical.add(v)
        else:
            held[v] = float(data[v].mean())
    newdata = pd.DataFrame([dict(r) for r in rows], dtype=float)
    for k, v in held.items():
        dtype = data[k].dtype if k in categorical else float
        newdata[k] = pd.Series([v] * len(newdata), dtype=dtype, index=newdata.index)
    return fit.frame.fixed_design(newdata), held


def wald_rows(est: np.ndarray, se: np.ndarray, alpha: float) -> pd.DataFrame:
    """Estimate, SE, df (inf), z, p and Wald CI of effects with known SEs."""
    z = est / se
    q = core.t_critical(float("inf"), alpha)
    return pd.DataFrame(
        {"estimate": est, "se": se, "df": np.full(len(est), np.inf), "z": z,
         "p": 2 * stats.norm.sf(np.abs(z)), "ci_lower": est - q * se, "ci_upper": est + q * se}
    )


def bayes_effect_rows(eff: np.ndarray, alpha: float) -> pd.DataFrame:
    """Posterior median, mean, SD, HDI and probability of direction of draws ``eff``."""
    h = [core.hdi(eff[:, k], 1 - alpha) for k in range(eff.shape[1])]
    return pd.DataFrame(
        {
            "estimate": np.median(eff, axis=0),
            "mean": eff.mean(axis=0),
            "sd": eff.std(axis=0, ddof=1),
            "hdi_lower": [x[0] for x in h],
            "hdi_upper": [x[1] for x in h],
            "pd": [core.prob_direction(eff[:, k]) for k in range(eff.shape[1])],
        }
    )
