"""Scoring item-level questionnaire data: validation, reverse keys, pro-rating.

Two layers: :func:`reverse_items` and :func:`score_matrix` are plain numpy (an
``(n_rows, n_items)`` float array with NaN for unanswered items); :func:`score` is the
pandas shell that finds the item columns, validates them and adds the score columns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from ..errors import DataValidationError, MissingDataWarning, format_rows
from .keys import Instrument, get_instrument

__all__ = [
    "STATUS_LABELS",
    "ScoringReport",
    "reverse_items",
    "score",
    "score_matrix",
]

# status codes of one score in one row
COMPLETE, PRORATED, EMPTY, TOO_MANY, NOT_PRORATED, SUBSCALE_MISSING = range(6)
#: Human-readable label of each status code used in :class:`ScoringReport`.
STATUS_LABELS: tuple[str, ...] = (
    "complete",
    "prorated",
    "no items answered",
    "too many items missing",
    "items missing, prorate=False",
    "subscale not scored",
)

MaxMissing = int | float | Mapping[str, int | float]


def reverse_items(values: Any, min: float, max: float) -> np.ndarray:
    """Reverse-key item responses on the scale ``[min, max]``: ``min + max - values``.

    NaN (unanswered) stays NaN. Reversing twice returns the original responses, and
    the scale is mapped onto itself (``min <-> max``).

    Parameters
    ----------
    values : array_like
        Responses (any shape).
    min, max : float
        Smallest and largest response of the scale.

    Returns
    -------
    numpy.ndarray
        Float array of the reversed responses, same shape as ``values``.

    Examples
    --------
    >>> reverse_items([1, 2, 7, np.nan], 1, 7).tolist()
    [7.0, 6.0, 1.0, nan]
    >>> reverse_items([0, 4], 0, 4).tolist()
    [4.0, 0.0]
    """
    lo, hi = float(min), float(max)
    if not lo < hi:
        raise DataValidationError(f"reverse_items: min ({min}) must be smaller than max ({max})")
    return (lo + hi) - np.asarray(values, dtype=float)


def _resolve_limits(instrument: Instrument, max_missing: MaxMissing) -> dict[str, int]:
    """Turn ``max_missing`` into an allowed count of missing items per scoring unit."""
    subs = instrument.subscales
    sizes = {name: len(its) for name, its in subs.items()}
    sizes["total"] = instrument.n_items

    def to_count(value: object, unit: str) -> int:
        n = sizes[unit]
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise DataValidationError(
                f"max_missing for {unit!r} must be a count (int >= 0) or a fraction "
                f"(float in [0, 1]), got {value!r}"
            )
        if isinstance(value, int | np.integer):
            if value < 0:
                raise DataValidationError(f"max_missing for {unit!r} must be >= 0, got {value!r}")
            return int(value)
        if not (0.0 <= float(value) <= 1.0) or math.isnan(float(value)):
            raise DataValidationError(
                f"max_missing for {unit!r} is a float, so it is read as a fraction of "
                f"the {n} items and must lie in [0, 1]; got {value!r} "
                "(pass an int for a count of items)"
            )
        return int(math.floor(float(value) * n + 1e-9))

    if isinstance(max_missing, Mapping):
        keys = {str(k).lower(): v for k, v in max_missing.items()}
        unknown = sorted(set(keys) - set(sizes))
        if unknown:
            raise DataValidationError(
                f"max_missing names {unknown}, which are not scores of {instrument.name}; "
                f"use {sorted(sizes)}"
            )
        absent = sorted(set(subs) - set(keys))
        if absent:
            raise DataValidationError(
                f"max_missing must give a limit for every subscale of {instrument.name}; "
                f"missing {absent}"
            )
        limits = {name: to_count(keys[name], name) for name in subs}
        if "total" in keys:
            limits["total"] = to_count(keys["total"], "total")
        elif subs:
            limits["total"] = sum(limits.values())
        else:
            raise DataValidationError(
                f"max_missing must give a 'total' limit: {instrument.name} has no subscales"
            )
        return limits
    limits = {name: to_count(max_missing, name) for name in subs}
    if isinstance(max_missing, int | np.integer) and not isinstance(max_missing, bool):
        limits["total"] = int(max_missing) * max(1, len(subs))
    else:
        limits["total"] = to_count(max_missing, "total")
    return limits


def _score_unit(
    x: np.ndarray, method: str, prorate: bool, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score one unit (a subscale or the whole scale); returns (value, status, n_missing)."""
    k = x.shape[1]
    miss = np.isnan(x)
    n_missing = miss.sum(axis=1)
    answered = k - n_missing
    total = np.where(miss, 0.0, x).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / answered
    if method == "sum":
        value = np.where(n_missing == 0, total, mean * k)
    else:
        value = mean
    status = np.select(
        [n_missing == 0, answered == 0, ~np.bool_(prorate), n_missing <= limit],
        [COMPLETE, EMPTY, NOT_PRORATED, PRORATED],
        default=TOO_MANY,
    )
    value = np.where((status == COMPLETE) | (status == PRORATED), value, np.nan)
    return value, status, n_missing


def score_matrix(
    x: Any,
    instrument: str | Instrument,
    *,
    prorate: bool = False,
    max_missing: MaxMissing = 1,
    reverse: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score an item matrix (numpy core of :func:`score`; no validation of values).

    Parameters
    ----------
    x : array_like, shape (n_rows, n_items)
        Responses in the instrument's item order; NaN marks an unanswered item.
    instrument : str or Instrument
        Registered key or an :class:`Instrument`.
    prorate, max_missing, reverse
        As in :func:`score`.

    Returns
    -------
    dict
        ``{"total": (value, status, n_missing), "<subscale>": (...), ...}`` where
        ``status`` holds codes indexing :data:`STATUS_LABELS`.

    Examples
    --------
    >>> x = np.array([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]], dtype=float)
    >>> out = score_matrix(x, "wai-sr")
    >>> float(out["total"][0][0]), float(out["bond"][0][0])
    (33.0, 14.0)
    """
    inst = get_instrument(instrument)
    x = np.array(x, dtype=float, copy=True)
    if x.ndim != 2 or x.shape[1] != inst.n_items:
        raise DataValidationError(
            f"score_matrix: {inst.name} needs an (n_rows, {inst.n_items}) array, "
            f"got shape {x.shape}"
        )
    position = {item: j for j, item in enumerate(inst.items)}
    if reverse and inst.reversed:
        cols = [position[i] for i in inst.reversed]
        x[:, cols] = reverse_items(x[:, cols], inst.min, inst.max)
    limits = _resolve_limits(inst, max_missing)
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    sub_ok = np.ones(x.shape[0], dtype=bool)
    for name, its in inst.subscales.items():
        res = _score_unit(x[:, [position[i] for i in its]], inst.method, prorate, limits[name])
        out[name] = res
        sub_ok &= (res[1] == COMPLETE) | (res[1] == PRORATED)
    value, status, n_missing = _score_unit(x, inst.method, prorate, limits["total"])
    # the total needs every subscale: a total that hides an unscorable subscale is not kept
    demote = ((status == COMPLETE) | (status == PRORATED)) & ~sub_ok
    status = np.where(demote, SUBSCALE_MISSING, status)
    value = np.where(demote, np.nan, value)
    return {"total": (value, status, n_missing), **out}


@dataclass(frozen=True)
class ScoringReport:
    """What :func:`score` did to every row: scored, pro-rated, or NaN and why.

    Attributes
    ----------
    instrument : str
        Instrument key.
    name : str
        Instrument display name.
    columns : tuple of str
        The score columns added (total or mean first, then subscales).
    prorate : bool
        Whether pro-rating was on.
    limits : mapping of str to int
        Allowed number of missing items per score (``"total"`` and each subscale).
    table : pandas.DataFrame
        One row per (data row, score column): ``row`` (index label of the data),
        ``score`` (column name), ``n_items``, ``n_missing``, ``status`` and ``reason``
        (empty when the score is complete).
    """

    instrument: str
    name: str
    columns: tuple[str, ...]
    prorate: bool
    limits: Mapping[str, int] = field(hash=False)
    table: pd.DataFrame = field(repr=False, hash=False)

    @property
    def n_rows(self) -> int:
        """Number of data rows scored."""
        return int(len(self.table) // max(1, len(self.columns)))

    @property
    def n_nan(self) -> int:
        """Number of (row, score) cells set to NaN, for any reason."""
        return int((~self.table["status"].isin(["complete", "prorated"])).sum())

    @property
    def n_prorated(self) -> int:
        """Number of (row, score) cells that were pro-rated."""
        return int((self.table["status"] == "prorated").sum())

    def counts(self) -> pd.DataFrame:
        """Return a score-column by status table of counts.

        Examples
        --------
        >>> df = pd.DataFrame({f"siras_{i}": [5, np.nan] for i in (1, 2, 3)})
        >>> _, rep = score(df, "siras", return_report=True)
        >>> rep.counts().loc["siras_total", "no items answered"]
        np.int64(1)
        """
        tab = pd.crosstab(
            pd.Categorical(self.table["score"], categories=list(self.columns)),
            pd.Categorical(self.table["status"], categories=list(STATUS_LABELS)),
            dropna=False,
        )
        tab.index.name = "score"
        tab.columns.name = "status"
        return tab

    def to_frame(self, *, only_nan: bool = False) -> pd.DataFrame:
        """Return the per-row table (a copy); ``only_nan=True`` keeps only NaN scores.

        Examples
        --------
        >>> df = pd.DataFrame({f"siras_{i}": [5, np.nan] for i in (1, 2, 3)})
        >>> _, rep = score(df, "siras", return_report=True)
        >>> rep.to_frame(only_nan=True)["reason"].tolist()
        ['no items answered']
        """
        tab = self.table
        if only_nan:
            tab = tab[~tab["status"].isin(["complete", "prorated"])]
        return tab.reset_index(drop=True).copy()

    def summary(self) -> str:
        """Return a short text summary: counts per score and status.

        Examples
        --------
        >>> df = pd.DataFrame({f"siras_{i}": [5, 4] for i in (1, 2, 3)})
        >>> print(score(df, "siras", return_report=True)[1].summary().splitlines()[0])
        SIRAS scoring: 2 rows, 1 score column, prorate=False
        """
        ncol = len(self.columns)
        lines = [
            f"{self.name} scoring: {self.n_rows} rows, {ncol} score column"
            f"{'s' if ncol != 1 else ''}, prorate={self.prorate}"
        ]
        if self.prorate:
            lims = ", ".join(f"{k} {v}" for k, v in self.limits.items())
            lines.append(f"  missing items allowed: {lims}")
        counts = self.counts()
        for col in self.columns:
            parts = [f"{status} {int(n)}" for status, n in counts.loc[col].items() if n > 0]
            lines.append(f"  {col}: {', '.join(parts) if parts else 'no rows'}")
        lines.append(f"  NaN scores: {self.n_nan}; pro-rated scores: {self.n_prorated}")
        return "\n".join(lines)


def _fmt_value(v: object) -> str:
    if isinstance(v, float | np.floating):
        if math.isfinite(float(v)) and float(v).is_integer():
            return str(int(v))
        return f"{float(v):g}"
    if isinstance(v, np.integer):
        return str(int(v))
    return repr(v)


def _value_error(col: str, labels: list[object], values: list[object], allowed: str) -> str:
    shown = ", ".join(_fmt_value(v) for v in values[:5])
    verb = "has" if len(labels) == 1 else "have"
    return f"column {col!r} {format_rows(labels)} {verb} {shown}; {allowed}"


def _item_values(df: pd.DataFrame, col: str, inst: Instrument) -> np.ndarray:
    """Return the validated float responses of one item column (NaN = unanswered)."""
    s = df[col]
    index = df.index
    allowed_int = f"{inst.name} items take whole numbers {inst.min}-{inst.max}"
    if isinstance(s.dtype, pd.CategoricalDtype):
        labels = (df.attrs.get("value_labels") or {}).get(col) or {}
        inverse = {str(lab): code for code, lab in labels.items()}
        s = s.astype(object).map(lambda v: inverse.get(str(v), v) if pd.notna(v) else v)
    if pd.api.types.is_bool_dtype(s.dtype):
        bad = np.flatnonzero(s.notna().to_numpy())
        raise DataValidationError(
            _value_error(
                col, list(index[bad]), list(s.iloc[bad]), allowed_int + " (got True/False)"
            )
        )
    if pd.api.types.is_numeric_dtype(s.dtype):
        x = s.to_numpy(dtype=float, na_value=np.nan)
    else:
        obj = s.astype(object)
        blank = obj.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
        missing = obj.isna().to_numpy() | blank.to_numpy()
        is_bool = obj.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
        stripped = obj.map(lambda v: v.strip() if isinstance(v, str) else v)
        num = pd.to_numeric(stripped.where(~(missing | is_bool)), errors="coerce")
        x = np.array(num.to_numpy(dtype=float, na_value=np.nan), copy=True)
        bad = np.flatnonzero(~missing & (np.isnan(x) | is_bool))
        if bad.size:
            raise DataValidationError(
                _value_error(
                    col,
                    list(index[bad]),
                    list(obj.iloc[bad]),
                    allowed_int + " (found a value that is not a number)",
                )
            )
        x[missing] = np.nan
    finite = np.isfinite(x)
    frac = finite & (x != np.round(np.where(finite, x, 0.0)))
    bad = np.flatnonzero(frac)
    if bad.size:
        raise DataValidationError(_value_error(col, list(index[bad]), list(x[bad]), allowed_int))
    out = ~np.isnan(x) & ((x < inst.min) | (x > inst.max) | ~finite)
    bad = np.flatnonzero(out)
    if bad.size:
        raise DataValidationError(
            _value_error(
                col,
                list(index[bad]),
                list(x[bad]),
                f"{inst.name} items take {inst.min}-{inst.max}",
            )
        )
    return x


def _item_columns(
    inst: Instrument, items: str | Mapping[int, str] | Sequence[str] | None
) -> list[str]:
    if items is None:
        items = f"{inst.stem}_{{i}}"
    if isinstance(items, str):
        if "{i}" not in items:
            raise DataValidationError(
                f"items={items!r} must be a format string containing '{{i}}' "
                "(the item number), e.g. 'wai_{i}', or a mapping item -> column"
            )
        try:
            return [items.format(i=i) for i in inst.items]
        except (KeyError, IndexError, ValueError) as exc:
            raise DataValidationError(
                f"items={items!r} is not a valid format string with only '{{i}}': {exc}"
            ) from None
    if isinstance(items, Mapping):
        keys = {int(k): str(v) for k, v in items.items()}
        absent = [i for i in inst.items if i not in keys]
        extra = sorted(set(keys) - set(inst.items))
        if absent or extra:
            raise DataValidationError(
                f"items mapping must give a column for each {inst.name} item "
                f"{list(inst.items)}; missing items {absent}, unknown items {extra}"
            )
        return [keys[i] for i in inst.items]
    cols = [str(c) for c in items]
    if len(cols) != inst.n_items:
        raise DataValidationError(
            f"items lists {len(cols)} columns but {inst.name} has {inst.n_items} items "
            f"({list(inst.items)})"
        )
    return cols


def _list_columns(columns: Sequence[object], limit: int = 30) -> str:
    cols = [repr(str(c)) for c in columns]
    more = f" (and {len(cols) - limit} more)" if len(cols) > limit else ""
    return ", ".join(cols[:limit]) + more if cols else "(none)"


@overload
def score(
    df: pd.DataFrame,
    instrument: str | Instrument,
    *,
    items: str | Mapping[int, str] | Sequence[str] | None = ...,
    prefix: str | None = ...,
    prorate: bool = ...,
    max_missing: MaxMissing = ...,
    reverse: bool = ...,
    return_report: Literal[False] = ...,
) -> pd.DataFrame: ...


@overload
def score(
    df: pd.DataFrame,
    instrument: str | Instrument,
    *,
    items: str | Mapping[int, str] | Sequence[str] | None = ...,
    prefix: str | None = ...,
    prorate: bool = ...,
    max_missing: MaxMissing = ...,
    reverse: bool = ...,
    return_report: Literal[True],
) -> tuple[pd.DataFrame, ScoringReport]: ...


def score(
    df: pd.DataFrame,
    instrument: str | Instrument,
    *,
    items: str | Mapping[int, str] | Sequence[str] | None = None,
    prefix: str | None = None,
    prorate: bool = False,
    max_missing: MaxMissing = 1,
    reverse: bool = True,
    return_report: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, ScoringReport]:
    """Score a questionnaire row by row and add the total and subscale columns.

    Parameters
    ----------
    df : pandas.DataFrame
        Item-level data, one row per completed form (e.g. per patient and session).
    instrument : str or Instrument
        Registered key (``"wai"``, ``"wai-s"``, ``"wai-sr"``, ``"hccq"``,
        ``"hccq-short"``, ``"ears"``, ``"siras"`` or your own) or an
        :class:`Instrument`.
    items : str, mapping or sequence, optional
        Where the items are: a format string with ``{i}`` = item number (default
        ``"<stem>_{i}"``, e.g. ``"wai_{i}"`` for all WAI forms, ``"hccq_{i}"`` for both
        HCCQ forms), a mapping item number -> column, or a list of columns in item order.
    prefix : str, optional
        Prefix of the new columns; default: the key with ``-`` -> ``_`` (``wai_sr``).
        Adds ``<prefix>_total`` (sum-scored) or ``<prefix>_mean`` (mean-scored) and
        ``<prefix>_<subscale>`` for each subscale.
    prorate : bool, default False
        If True, a score with some items missing, but no more than ``max_missing``, is
        pro-rated: the mean of the answered items (times the number of items for
        sum-scored instruments). If False, any missing item makes the score NaN.
    max_missing : int, float or mapping, default 1
        Missing items allowed per score when pro-rating: an int is a count per
        subscale (the total then allows that many per subscale, and needs every
        subscale scored); a float in [0, 1] is a fraction of the score's items
        (rounded down); a mapping gives a limit for every subscale and optionally
        ``"total"``.
    reverse : bool, default True
        Reverse-key the instrument's reversed items (set False if the data were
        reverse-scored already).
    return_report : bool, default False
        Also return a :class:`ScoringReport` with the status and reason per row.

    Returns
    -------
    pandas.DataFrame or (pandas.DataFrame, ScoringReport)
        A copy of ``df`` with the score columns added (float, NaN where unscorable).

    Raises
    ------
    DataValidationError
        An item column is absent (the message lists the available columns), holds text
        that is not a number, a non-whole number, or a value outside the instrument's
        range (the message names the column, the first five rows and the values), or a
        score column already exists.

    Warns
    -----
    MissingDataWarning
        When scores became NaN because some (not all) items were missing; rows with no
        item answered at all (e.g. a session not attended) are NaN without a warning,
        and are counted in the report.

    Notes
    -----
    Rows are labelled by the data frame's index in messages and in the report.
    Pro-rating: with ``m`` of ``k`` items missing the sum-scored value is
    ``k * mean(answered)``, i.e. the person-mean imputation that is standard for
    these questionnaires.

    Examples
    --------
    >>> df = pd.DataFrame({f"wai_{i}": [5, 4] for i in range(1, 13)})
    >>> df.loc[1, "wai_3"] = np.nan
    >>> out = score(df, "wai-sr", prorate=True)
    >>> out[["wai_sr_total", "wai_sr_bond"]].to_numpy().tolist()
    [[60.0, 20.0], [48.0, 16.0]]
    """
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(
            f"score needs a pandas DataFrame, got {type(df).__name__} (see read_data)"
        )
    inst = get_instrument(instrument)
    cols = _item_columns(inst, items)
    absent = [(c, i) for c, i in zip(cols, inst.items, strict=True) if c not in df.columns]
    if absent:
        need = ", ".join(f"{c!r} (item {i})" for c, i in absent[:10])
        more = f" (and {len(absent) - 10} more)" if len(absent) > 10 else ""
        raise DataValidationError(
            f"{inst.name} needs item column(s) {need}{more} that are not in the data; "
            f"available columns: {_list_columns(list(df.columns))}"
        )
    dup = [c for c in dict.fromkeys(cols) if int((df.columns == c).sum()) > 1]
    if dup:
        raise DataValidationError(f"item column(s) {dup} appear more than once in the data")
    if len(set(cols)) != len(cols):
        raise DataValidationError(f"items map two {inst.name} items to the same column: {cols}")
    prefix = inst.default_prefix if prefix is None else str(prefix)
    if not prefix:
        raise DataValidationError("prefix must be a non-empty string")
    names = {"total": f"{prefix}_{inst.score_suffix}"}
    names.update({sub: f"{prefix}_{sub}" for sub in inst.subscales})
    clash = [c for c in names.values() if c in df.columns]
    if clash:
        raise DataValidationError(
            f"score column(s) {clash} already exist in the data; drop them or pass another prefix"
        )

    x = (
        np.column_stack([_item_values(df, c, inst) for c in cols])
        if len(df)
        else np.empty((0, inst.n_items))
    )
    res = score_matrix(x, inst, prorate=prorate, max_missing=max_missing, reverse=reverse)
    limits = _resolve_limits(inst, max_missing)

    out = df.copy()
    pieces = []
    sizes = {sub: len(its) for sub, its in inst.subscales.items()}
    sizes["total"] = inst.n_items
    for unit, colname in names.items():
        value, status, n_missing = res[unit]
        out[colname] = value
        pieces.append(
            _report_piece(
                df.index, colname, unit, sizes[unit], status, n_missing, limits[unit], res, inst
            )
        )
    table = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    report = ScoringReport(
        instrument=inst.key,
        name=inst.name,
        columns=tuple(names.values()),
        prorate=bool(prorate),
        limits=dict(limits),
        table=table,
    )
    _warn_partial(report, inst)
    if return_report:
        return out, report
    return out


def _report_piece(
    index: pd.Index,
    colname: str,
    unit: str,
    n_items: int,
    status: np.ndarray,
    n_missing: np.ndarray,
    limit: int,
    res: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    inst: Instrument,
) -> pd.DataFrame:
    reason = np.full(status.shape, "", dtype=object)
    reason[status == EMPTY] = "no items answered"
    # the other reasons depend only on (status, number missing): format each pair once
    for code in (PRORATED, TOO_MANY, NOT_PRORATED):
        sel = status == code
        for m in np.unique(n_missing[sel]):
            text = {
                PRORATED: f"pro-rated: {m} of {n_items} items missing (limit {limit})",
                TOO_MANY: f"{m} of {n_items} items missing (limit {limit})",
                NOT_PRORATED: f"{m} of {n_items} items missing and prorate=False",
            }[code]
            reason[sel & (n_missing == m)] = text
    for j in np.flatnonzero(status == SUBSCALE_MISSING):  # names the failed subscales
        failed = [sub for sub in inst.subscales if res[sub][1][j] not in (COMPLETE, PRORATED)]
        reason[j] = (
            f"subscale {', '.join(failed)} not scored ({n_missing[j]} of {n_items} items missing)"
        )
    return pd.DataFrame(
        {
            "row": np.asarray(index, dtype=object),
            "score": colname,
            "n_items": n_items,
            "n_missing": n_missing.astype(int),
            "status": np.asarray(STATUS_LABELS, dtype=object)[status],
            "reason": reason,
        }
    )


def _warn_partial(report: ScoringReport, inst: Instrument) -> None:
    tab = report.table
    partial = tab["status"].isin(
        [STATUS_LABELS[c] for c in (TOO_MANY, NOT_PRORATED, SUBSCALE_MISSING)]
    )
    if not partial.any():
        return
    per_col = tab.loc[partial, "score"].value_counts(sort=False)
    detail = ", ".join(f"{c}: {int(n)}" for c, n in per_col.items())
    rows = list(dict.fromkeys(tab.loc[partial, "row"]))
    n_empty = int(
        ((tab["score"] == report.columns[0]) & (tab["status"] == STATUS_LABELS[EMPTY])).sum()
    )
    hint = (
        "Pass prorate=True (with max_missing) to pro-rate"
        if not report.prorate
        else "Raise max_missing to pro-rate more"
    )
    warnings.warn(
        f"{inst.name}: {int(partial.sum())} score(s) set to NaN because some items were "
        f"missing ({detail}) in {format_rows(rows)}; {n_empty} row(s) had no items answered. "
        f"{hint}, or use return_report=True for per-row reasons",
        MissingDataWarning,
        stacklevel=3,
    )
