"""Reshaping and centring helpers: long <-> wide, grand/group-mean centring, standardising.

The centring functions are plain numpy (array in, array out, NaN-aware); ``to_wide`` and
``to_long`` are the pandas layer for session-level variables stored as ``var_1..var_k``.

Notation: ``x`` is a session-level variable, ``groups`` the cluster label of each row
(patient, or therapist). For a variable that is constant within a unit (e.g. age on the
session rows of a patient) pass ``units`` to the grand-mean functions so that each unit
counts once, as recommended for level-2 predictors (Enders & Tofighi 2007).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import DataValidationError, format_rows

__all__ = [
    "grand_mean_center",
    "group_mean",
    "group_mean_center",
    "standardize",
    "to_long",
    "to_wide",
    "within_between",
]


def _show(value: object) -> str:
    """Repr of a value for messages, without numpy's ``np.float64(...)`` wrapper."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return repr(int(value)) if abs(value) < 1e15 else repr(value)
    return repr(value)


def _codes(groups: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(np.asarray(groups, dtype=object) if n else np.array([]))
    if len(codes) != n:
        raise DataValidationError(f"groups has {len(codes)} labels for {n} values; need one each")
    if np.any(codes < 0):
        bad: list[object] = list(np.flatnonzero(codes < 0).tolist())
        raise DataValidationError(
            f"groups are missing at {format_rows(bad)} (positions); every value needs a group"
        )
    return codes, len(uniques)


def group_mean(x: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Mean of ``x`` within each group, broadcast back to the rows (NaNs ignored).

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Values; NaN entries do not count towards their group's mean.
    groups : array_like, shape (n,)
        Group label of each value.

    Returns
    -------
    ndarray of float, shape (n,)
        The group mean on every row; NaN for a group with no observed value.

    Examples
    --------
    >>> group_mean([1.0, 3.0, 10.0, float("nan")], ["a", "a", "b", "b"])
    array([ 2.,  2., 10., 10.])
    """
    xv = np.asarray(x, dtype=float)
    codes, k = _codes(groups, len(xv))
    ok = ~np.isnan(xv)
    sums = np.bincount(codes, weights=np.where(ok, xv, 0.0), minlength=k)
    counts = np.bincount(codes, weights=ok.astype(float), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)
    return means[codes]


def _unit_values(x: np.ndarray, units: ArrayLike | None) -> np.ndarray:
    """Values entering a grand statistic: the rows, or one mean per unit."""
    if units is None:
        return x[~np.isnan(x)]
    codes, k = _codes(units, len(x))
    ok = ~np.isnan(x)
    sums = np.bincount(codes, weights=np.where(ok, x, 0.0), minlength=k)
    counts = np.bincount(codes, weights=ok.astype(float), minlength=k)
    return sums[counts > 0] / counts[counts > 0]


def grand_mean_center(x: ArrayLike, *, units: ArrayLike | None = None) -> np.ndarray:
    """Subtract the grand mean: ``x - mean(x)`` (NaNs ignored and kept).

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Values.
    units : array_like, optional
        Unit label per row. When given, the grand mean is the mean of the unit means, so a
        patient-level variable repeated on each session row counts once per patient.

    Returns
    -------
    ndarray of float, shape (n,)

    Examples
    --------
    >>> grand_mean_center([1.0, 2.0, 6.0])
    array([-2., -1.,  3.])
    >>> grand_mean_center([40.0, 40.0, 40.0, 60.0], units=["a", "a", "a", "b"])
    array([-10., -10., -10.,  10.])
    """
    xv = np.asarray(x, dtype=float)
    vals = _unit_values(xv, units)
    if len(vals) == 0:
        return np.full_like(xv, np.nan)
    return xv - vals.mean()


def group_mean_center(x: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Centre within groups (CWC): ``x - group_mean(x, groups)``.

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Values.
    groups : array_like, shape (n,)
        Group label of each value.

    Returns
    -------
    ndarray of float, shape (n,)

    Examples
    --------
    >>> group_mean_center([1.0, 3.0, 10.0], ["a", "a", "b"])
    array([-1.,  1.,  0.])
    """
    xv = np.asarray(x, dtype=float)
    return xv - group_mean(xv, groups)


def within_between(x: ArrayLike, groups: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x`` into its between part (group mean) and within part (deviation).

    ``between + within == x`` wherever ``x`` is observed.

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Session-level values (e.g. alliance).
    groups : array_like, shape (n,)
        Cluster of each row (e.g. patient).

    Returns
    -------
    between, within : ndarray of float, shape (n,)

    Examples
    --------
    >>> b, w = within_between([4.0, 5.0, 3.0], ["p1", "p1", "p2"])
    >>> b, w
    (array([4.5, 4.5, 3. ]), array([-0.5,  0.5,  0. ]))
    """
    xv = np.asarray(x, dtype=float)
    between = group_mean(xv, groups)
    return between, xv - between


def standardize(x: ArrayLike, *, units: ArrayLike | None = None, ddof: int = 1) -> np.ndarray:
    """Standardise: ``(x - mean) / sd`` (NaNs ignored and kept).

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Values.
    units : array_like, optional
        Unit label per row; mean and SD are then taken over unit means (each unit once).
    ddof : int, default 1
        Delta degrees of freedom of the SD.

    Returns
    -------
    ndarray of float, shape (n,)

    Raises
    ------
    DataValidationError
        If the values (or unit means) do not vary.

    Examples
    --------
    >>> standardize([1.0, 2.0, 3.0])
    array([-1.,  0.,  1.])
    """
    xv = np.asarray(x, dtype=float)
    vals = _unit_values(xv, units)
    if len(vals) <= ddof:
        raise DataValidationError(
            f"cannot standardise {len(vals)} observed value(s); need more than {ddof}"
        )
    sd = vals.std(ddof=ddof)
    if not sd > 0:
        raise DataValidationError(
            f"cannot standardise a constant variable (every value is {_show(vals[0])}); "
            "a standard deviation > 0 is needed"
        )
    return (xv - vals.mean()) / sd


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{what}: column(s) {missing} not found; available columns: {list(df.columns)}"
        )


def to_wide(
    long: pd.DataFrame,
    *,
    id: str = "patient",
    session: str = "session",
    values: Sequence[str] | None = None,
    keep: Sequence[str] | None = None,
    sep: str = "_",
) -> pd.DataFrame:
    """Reshape one-row-per-session data to one row per ``id`` with ``var_1..var_k`` columns.

    Parameters
    ----------
    long : DataFrame
        Long data, unique in (``id``, ``session``).
    id : str, default "patient"
        Identifier column of the wide rows.
    session : str, default "session"
        Integer session number; it becomes the column suffix (``alliance_3`` is session 3).
    values : sequence of str, optional
        Session-level columns to spread. Default: every column not in ``id``, ``session``
        or ``keep``.
    keep : sequence of str, optional
        Columns constant within ``id`` (e.g. ``therapist``, ``age``), kept once per row.
        Default: the columns other than ``values`` that are constant within every ``id``
        (with ``values`` also defaulted, these are taken out of ``values``). Columns in
        neither list are left out.
    sep : str, default "_"
        Separator between variable name and session number.

    Returns
    -------
    DataFrame
        One row per ``id`` in order of first appearance; columns ``id``, ``keep``, then
        ``var{sep}{session}`` by variable and increasing session. Missing sessions are NaN.

    Raises
    ------
    DataValidationError
        Missing columns, a non-integer session, a duplicated (``id``, ``session``), or a
        ``keep`` column that varies within an ``id``.

    Examples
    --------
    >>> import pandas as pd
    >>> long = pd.DataFrame({"patient": ["a", "a", "b"], "session": [1, 2, 1],
    ...                      "age": [40, 40, 60], "alliance": [50.0, 52.0, 45.0]})
    >>> to_wide(long)
      patient  age  alliance_1  alliance_2
    0       a   40        50.0        52.0
    1       b   60        45.0         NaN
    """
    _require(long, [id, session], "to_wide")
    sess = pd.to_numeric(long[session], errors="coerce")
    bad = long.index[sess.isna() | (sess != np.round(sess))].tolist()
    if bad:
        raise DataValidationError(
            f"column {session!r} {format_rows(bad)} has {_show(long.loc[bad[0], session])}; "
            "session numbers must be whole numbers"
        )
    dup = long.duplicated([id, session], keep=False)
    if dup.any():
        rows = long.index[dup].tolist()
        first = long.loc[rows[0]]
        raise DataValidationError(
            f"duplicated ({id}, {session}) at {format_rows(rows)}: {_show(first[id])} session "
            f"{_show(first[session])} appears more than once; each pair must be unique"
        )
    others = [c for c in long.columns if c not in (id, session)]
    grouped = long.groupby(id, sort=False, dropna=False)
    if keep is None:
        candidates = [c for c in others if values is None or c not in values]
        nun = grouped[candidates].nunique(dropna=False) if candidates else pd.DataFrame()
        keep = [c for c in candidates if bool((nun[c] <= 1).all())]
    else:
        keep = list(keep)
        _require(long, keep, "to_wide keep")
        nun = grouped[keep].nunique(dropna=False) if keep else pd.DataFrame()
        for c in keep:
            varying = nun.index[nun[c] > 1].tolist()
            if varying:
                rows = long.index[long[id].isin(varying)].tolist()
                raise DataValidationError(
                    f"column {c!r} varies within {id} {_show(varying[0])} ({format_rows(rows)}); "
                    f"keep columns must be constant within each {id}"
                )
    if values is None:
        values = [c for c in others if c not in keep]
    else:
        values = list(values)
        _require(long, values, "to_wide values")
    frame = long.assign(**{session: sess.astype("int64")})
    ids = pd.unique(frame[id])
    out = frame.groupby(id, sort=False, dropna=False)[keep].first().reindex(ids)
    if values:
        spread = frame.pivot(index=id, columns=session, values=values).reindex(ids)
        spread = spread.sort_index(axis=1, level=1, sort_remaining=False)
        order = sorted(range(spread.shape[1]), key=lambda j: values.index(spread.columns[j][0]))
        spread = spread.iloc[:, order]
        spread.columns = [f"{v}{sep}{s}" for v, s in spread.columns]
        out = pd.concat([out, spread], axis=1)
    out.index.name = id
    return out.reset_index()


def to_long(
    wide: pd.DataFrame,
    *,
    id: str = "patient",
    stubs: Sequence[str] | None = None,
    session: str = "session",
    keep: Sequence[str] | None = None,
    sep: str = "_",
    dropna: bool = True,
) -> pd.DataFrame:
    """Reshape ``var_1..var_k`` columns to one row per (``id``, session).

    The inverse of :func:`to_wide`: ``to_long(to_wide(long))`` gives back ``long`` (rows
    sorted by id and session; spread integer columns come back as float when sessions are
    missing) as long as no row of ``long`` is missing every spread variable.

    Parameters
    ----------
    wide : DataFrame
        One row per ``id``.
    id : str, default "patient"
        Identifier column.
    stubs : sequence of str, optional
        Variable names to gather (columns ``stub{sep}<integer>``). Default: every column
        name ending in ``{sep}<integer>``.
    session : str, default "session"
        Name of the session column to create.
    keep : sequence of str, optional
        Columns repeated onto every session row. Default: every other column.
    sep : str, default "_"
        Separator between stub and session number.
    dropna : bool, default True
        Drop (id, session) rows where every stub is missing (sessions absent in the
        wide data).

    Returns
    -------
    DataFrame
        Columns ``id``, ``session``, ``keep``, ``stubs``; rows by id (wide order) and
        increasing session.

    Examples
    --------
    >>> import pandas as pd
    >>> wide = pd.DataFrame({"patient": ["a", "b"], "age": [40, 60],
    ...                      "alliance_1": [50.0, 45.0], "alliance_2": [52.0, None]})
    >>> to_long(wide)
      patient  session  age  alliance
    0       a        1   40      50.0
    1       a        2   40      52.0
    2       b        1   60      45.0
    """
    _require(wide, [id], "to_long")
    if wide[id].duplicated().any():
        rows = wide.index[wide[id].duplicated(keep=False)].tolist()
        raise DataValidationError(
            f"column {id!r} {format_rows(rows)} repeats {_show(wide.loc[rows[0], id])}; "
            "wide data need one row per id"
        )
    pattern = re.compile(rf"^(?P<stub>.+){re.escape(sep)}(?P<num>\d+)$")
    found: dict[str, dict[int, str]] = {}
    for col in wide.columns:
        if col == id or (keep is not None and col in keep):
            continue
        m = pattern.match(str(col))
        if m and (stubs is None or m["stub"] in stubs):
            found.setdefault(m["stub"], {})[int(m["num"])] = col
    if stubs is None:
        stubs = list(found)
    else:
        stubs = list(stubs)
        absent = [s for s in stubs if s not in found]
        if absent:
            raise DataValidationError(
                f"to_long: no columns named like '<stub>{sep}<number>' for stub(s) {absent}; "
                f"available columns: {list(wide.columns)}"
            )
    gathered = {c for cols in found.values() for c in cols.values()}
    if keep is None:
        keep = [c for c in wide.columns if c != id and c not in gathered]
    else:
        keep = list(keep)
        _require(wide, keep, "to_long keep")
    sessions = sorted({s for st in stubs for s in found[st]})
    n, k = len(wide), len(sessions)
    data: dict[str, object] = {
        id: np.repeat(wide[id].to_numpy(), k),
        session: np.tile(np.asarray(sessions, dtype="int64"), n),
    }
    for c in keep:
        data[c] = np.repeat(wide[c].to_numpy(), k)
    for st in stubs:
        cols = [found[st].get(s) for s in sessions]
        block = pd.DataFrame({j: wide[c] if c is not None else np.nan for j, c in enumerate(cols)})
        data[st] = block.to_numpy().ravel() if n else np.array([], dtype=float)
    out = pd.DataFrame(data)
    for c in keep:
        out[c] = out[c].astype(wide[c].dtype)
    if dropna and stubs:
        out = out[out[list(stubs)].notna().any(axis=1)]
    return out.reset_index(drop=True)
