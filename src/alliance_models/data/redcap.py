"""Flatten REDCap exports: one row per instance of a repeating instrument.

A REDCap "flat" export (CSV, records in rows) mixes row types: for each record, one row
per event holding that event's non-repeating forms, and one row per instance of each
repeating instrument (``redcap_repeat_instrument``, ``redcap_repeat_instance``); every
other column of a row is blank. :func:`flatten_redcap` turns such a data frame into an
analysable table: one row per (record, repeat instance) with the record's non-repeating
fields (baseline, discharge, ...) carried onto every one of its rows.

Nothing is hard-coded to a particular project: which fields belong to which row type is
discovered from the rows that hold values. Nothing here reads a file:
:func:`alliance_models.read_redcap` (in :mod:`alliance_models.data.readers`) reads the
export and calls :func:`flatten_redcap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._format import fmt_value
from ..errors import DataValidationError, format_rows

__all__ = ["flatten_redcap", "is_redcap_export"]

EVENT = "redcap_event_name"
INSTRUMENT = "redcap_repeat_instrument"
INSTANCE = "redcap_repeat_instance"
_STRUCTURE = (EVENT, INSTRUMENT, INSTANCE)


def is_redcap_export(columns: Sequence[object], record_id: str = "record_id") -> bool:
    """Return True if the columns look like a REDCap flat export.

    That is: a record-id column plus ``redcap_event_name`` or
    ``redcap_repeat_instrument``.

    Examples
    --------
    >>> is_redcap_export(["record_id", "redcap_event_name", "age"])
    True
    >>> is_redcap_export(["patient", "age"])
    False
    """
    cols = {str(c) for c in columns}
    return record_id in cols and (EVENT in cols or INSTRUMENT in cols)


def _blank_to_nan(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s.dtype) or isinstance(s.dtype, pd.CategoricalDtype):
        return s
    obj = s.astype(object)
    blank = obj.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    if blank.any():
        return s.where(~blank.to_numpy())
    return s


def _instances(raw: pd.DataFrame) -> pd.Series:
    """Return the repeat instance as float (NaN on non-repeating rows), validated."""
    if INSTANCE not in raw.columns:
        return pd.Series(np.nan, index=raw.index, dtype=float)
    s = raw[INSTANCE]
    num = pd.to_numeric(s, errors="coerce").astype(float)
    given = s.notna().to_numpy()
    x = num.to_numpy()
    bad = np.flatnonzero(given & (np.isnan(x) | (x < 1) | (x != np.round(np.nan_to_num(x)))))
    if bad.size:
        vals = ", ".join(fmt_value(v) for v in s.iloc[bad[:5]])
        raise DataValidationError(
            f"column {INSTANCE!r} {format_rows(list(raw.index[bad]))} "
            f"{'has' if bad.size == 1 else 'have'} {vals}; repeat instances are whole "
            "numbers >= 1 (blank on non-repeating rows)"
        )
    return num


def flatten_redcap(
    raw: pd.DataFrame,
    *,
    record_id: str | None = None,
    merge_repeats: bool = False,
    session: str = "session",
    source: str = "the data",
) -> pd.DataFrame:
    """Flatten a REDCap flat export (a data frame) to one row per repeat instance (session).

    Parameters
    ----------
    raw : pandas.DataFrame
        A REDCap "records in rows" export as read (not changed).
    record_id : str, optional
        The record-identifier column; default ``"record_id"`` if present, otherwise the
        first column (REDCap always exports the record id first).
    merge_repeats : bool, default False
        With several repeating instruments: False gives one row per instance of each
        instrument (``redcap_repeat_instrument`` says which); True merges the
        instruments by (record, event, instance) into one row per instance.
    session : str, default "session"
        Name of the output column that holds the repeat instance; it must not be the
        name of a field in the export.
    source : str, default "the data"
        How error messages name the export (e.g. the quoted path it was read from).

    Returns
    -------
    pandas.DataFrame
        Columns: the record id, ``redcap_event_name`` (event of the repeat rows, if
        the project is longitudinal), ``redcap_repeat_instrument`` (unless
        ``merge_repeats``), ``session`` (= ``redcap_repeat_instance``), then the fields
        in export order. Non-repeating fields (from any event) are carried onto every
        row of their record. A record without any repeat row is kept as one row with
        ``session`` NaN. Float columns that hold only whole numbers and no missing
        value are returned as integers. ``df.attrs["redcap"]`` records what was done:
        ``record_id``, ``n_records``, ``n_rows``, ``repeating_instruments``,
        ``record_fields``, ``repeat_fields``, ``records_without_repeats``.

    Raises
    ------
    DataValidationError
        No record-id column; no REDCap structure columns; a missing record id; a bad
        repeat instance; the same (record, event, instrument, instance) twice; a
        non-repeating field with different values in two events of one record (the
        message names the record, the field, the values and events); a field that
        holds values both on repeating and non-repeating rows.

    Notes
    -----
    Field membership is discovered from the data: a field belongs to a repeating
    instrument if it holds a value on one of its rows, and is a record-level field if
    it holds values on non-repeating rows. Columns named ``redcap_*`` other than the
    event/instrument/instance columns (data access group, survey identifier) are
    record-level. Fields that are blank everywhere are kept (all NaN). Projects that
    model visits as separate *events* (no repeating instruments) cannot be flattened
    this way; read them with ``read_data(path, redcap=False)`` and reshape by
    ``redcap_event_name``.

    Examples
    --------
    >>> raw = pd.DataFrame({
    ...     "record_id": ["p1", "p1", "p1"],
    ...     "redcap_event_name": ["baseline_arm_1", "treatment_arm_1", "treatment_arm_1"],
    ...     "redcap_repeat_instrument": [None, "session", "session"],
    ...     "redcap_repeat_instance": [None, 1, 2],
    ...     "age": [61, None, None],
    ...     "wai_1": [None, 4, 5],
    ... })
    >>> flatten_redcap(raw)[["record_id", "session", "age", "wai_1"]].to_numpy().tolist()
    [['p1', 1, 61, 4], ['p1', 2, 61, 5]]
    """
    raw = raw.copy()
    where = source
    raw.columns = [str(c) for c in raw.columns]
    if not raw.columns.is_unique:
        dup = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
        raise DataValidationError(f"columns {dup} appear more than once in {where}")
    id_col = record_id or ("record_id" if "record_id" in raw.columns else str(raw.columns[0]))
    if id_col not in raw.columns:
        raise DataValidationError(
            f"record-id column {id_col!r} is not in {where}; available columns: "
            f"{', '.join(map(repr, raw.columns[:30]))}"
        )
    if not any(c in raw.columns for c in _STRUCTURE):
        raise DataValidationError(
            f"{where} is not a REDCap export: it has none of the columns "
            f"{', '.join(map(repr, _STRUCTURE))}"
        )
    for col in raw.columns:
        raw[col] = _blank_to_nan(raw[col])
    missing_id = np.flatnonzero(raw[id_col].isna().to_numpy())
    if missing_id.size:
        raise DataValidationError(
            f"column {id_col!r} {format_rows(list(raw.index[missing_id]))} "
            f"{'has' if missing_id.size == 1 else 'have'} no record id; every REDCap row "
            "needs one"
        )
    instance = _instances(raw)
    is_rep = instance.notna().to_numpy()
    instr = raw[INSTRUMENT] if INSTRUMENT in raw.columns else pd.Series(np.nan, index=raw.index)
    orphan = np.flatnonzero(instr.notna().to_numpy() & ~is_rep)
    if orphan.size:
        raise DataValidationError(
            f"column {INSTANCE!r} is blank in {format_rows(list(raw.index[orphan]))}, "
            f"where {INSTRUMENT!r} names a repeating instrument; instances must be >= 1"
        )
    has_event = EVENT in raw.columns
    if session in raw.columns:
        raise DataValidationError(
            f"the export already has a column {session!r}; the repeat instance would "
            "overwrite it - pass session='<another name>' (e.g. 'session_no')"
        )
    record_level_meta = [c for c in raw.columns if c.startswith("redcap_") and c not in _STRUCTURE]
    fields = [c for c in raw.columns if c != id_col and c not in _STRUCTURE]

    nonrep = raw.loc[~is_rep]
    rep = raw.loc[is_rep]
    # a repeating "form" is the instrument, or the event for repeating events
    instr_rep = instr[is_rep].astype(object)
    fallback = "event " + rep[EVENT].astype(object).astype(str) if has_event else "(repeating rows)"
    rep_form = instr_rep.where(instr_rep.notna(), fallback)
    forms = list(dict.fromkeys(rep_form.tolist()))

    nonrep_fields = [
        c for c in fields if c not in record_level_meta and nonrep[c].notna().to_numpy().any()
    ]
    record_fields = [c for c in fields if c in nonrep_fields or c in record_level_meta]
    repeat_fields: dict[str, list[str]] = {}
    for form in forms:
        rows = rep.loc[(rep_form == form).to_numpy()]
        repeat_fields[form] = [
            c for c in fields if c not in record_level_meta and rows[c].notna().to_numpy().any()
        ]
    for form, fcols in repeat_fields.items():
        both = [c for c in fcols if c in nonrep_fields]
        if both:
            c = both[0]
            events = (
                ", ".join(map(str, dict.fromkeys(nonrep.loc[nonrep[c].notna(), EVENT])))
                if has_event
                else "non-repeating rows"
            )
            raise DataValidationError(
                f"field {c!r} holds values both on rows of repeating instrument {form!r} "
                f"and on non-repeating rows ({events}), so it is neither per session nor "
                "per record; rename one of them or read the export with redcap=False"
            )

    # ---- record-level part: one row per record, conflicts are errors --------------
    ids_in_order = list(dict.fromkeys(raw[id_col].tolist()))
    order = {rid: k for k, rid in enumerate(ids_in_order)}
    record_level = pd.DataFrame(index=pd.Index(ids_in_order, name=id_col))
    for c in record_fields:
        src = raw if c in record_level_meta else nonrep
        grouped = src.groupby(id_col, sort=False)[c]
        n_distinct = grouped.nunique(dropna=True)
        bad = n_distinct.index[(n_distinct > 1).to_numpy()]
        if len(bad):
            _raise_conflict(src, id_col, c, list(bad), has_event)
        record_level[c] = grouped.first().reindex(record_level.index)

    # ---- repeat part ------------------------------------------------------------
    key = [id_col] + ([EVENT] if has_event else [])
    rep = rep.assign(**{session: instance[is_rep].to_numpy()}, _form=rep_form.to_numpy())
    dup = rep.duplicated(subset=[*key, "_form", session], keep=False).to_numpy()
    if dup.any():
        first = rep.loc[dup].iloc[0]
        raise DataValidationError(
            f"record {fmt_value(first[id_col])} has instance {fmt_value(first[session])} of "
            f"{first['_form']!r} more than once ({format_rows(list(rep.index[dup]))}); "
            "each (record, event, instrument, instance) must be unique"
        )
    all_rep_fields = [c for c in fields if any(c in v for v in repeat_fields.values())]
    if merge_repeats and len(forms) > 1:
        parts = []
        for form in forms:
            rows = rep.loc[(rep["_form"] == form).to_numpy(), [*key, session]]
            parts.append(rows.join(rep[repeat_fields[form]]))
        seen: dict[str, str] = {}
        for form in forms:
            for c in repeat_fields[form]:
                if c in seen:
                    raise DataValidationError(
                        f"field {c!r} is in repeating instruments {seen[c]!r} and {form!r}; "
                        "they cannot be merged by instance (use merge_repeats=False)"
                    )
                seen[c] = form
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p, on=[*key, session], how="outer", sort=False)
        rep_part = merged
    else:
        cols = [*key] + ([INSTRUMENT] if INSTRUMENT in raw.columns else []) + [session]
        rep_part = rep[cols + all_rep_fields]

    # ---- join record-level fields onto each repeat row ----------------------------
    rec_cols = [c for c in record_level.columns if c not in rep_part.columns]
    out = rep_part.merge(
        record_level[rec_cols], left_on=id_col, right_index=True, how="left", sort=False
    )
    have_rep = set(rep[id_col].tolist())
    without = [rid for rid in ids_in_order if rid not in have_rep]
    if without:
        lonely = record_level.loc[without, rec_cols].reset_index()
        lonely[session] = np.nan
        out = pd.concat([out, lonely], ignore_index=True, sort=False)
    # stable order: records as first seen, then event as first seen, form, instance
    sort_cols = ["_rec"]
    out = out.assign(_rec=out[id_col].map(order))
    if has_event:
        ev_order = {e: k for k, e in enumerate(dict.fromkeys(raw[EVENT].dropna()))}
        out = out.assign(_ev=out[EVENT].map(ev_order))
        sort_cols.append("_ev")
    if INSTRUMENT in out.columns:
        form_order = {f: k for k, f in enumerate(dict.fromkeys(instr.dropna()))}
        out = out.assign(_fo=out[INSTRUMENT].map(form_order))
        sort_cols.append("_fo")
    out = out.sort_values([*sort_cols, session], kind="stable", na_position="first")
    out = out.drop(columns=[c for c in ("_rec", "_ev", "_fo") if c in out.columns])
    out = out.reset_index(drop=True)

    lead = [id_col] + [c for c in (EVENT, INSTRUMENT) if c in out.columns] + [session]
    tail = [c for c in fields if c in out.columns and c not in lead]
    never = [c for c in fields if c not in out.columns]  # blank everywhere: keep as NaN
    for c in never:
        out[c] = np.nan
    out = out[lead + [c for c in fields if c in tail or c in never]]
    out = _tidy_dtypes(out)
    out.attrs = {
        **{k: v for k, v in raw.attrs.items() if k != "redcap"},
        "redcap": {
            "record_id": id_col,
            "n_records": len(ids_in_order),
            "n_rows": len(out),
            "repeating_instruments": forms,
            "record_fields": list(record_fields),
            "repeat_fields": {k: list(v) for k, v in repeat_fields.items()},
            "records_without_repeats": without,
        },
    }
    return out


def _raise_conflict(
    src: pd.DataFrame, id_col: str, field: str, bad: list[object], has_event: bool
) -> None:
    rid = bad[0]
    sub = src.loc[(src[id_col] == rid) & src[field].notna()]
    events = sub[EVENT].tolist() if has_event else [None] * len(sub)
    pairs = ", ".join(
        f"{fmt_value(v)} ({ev})" if ev is not None else fmt_value(v)
        for v, ev in zip(sub[field], events, strict=True)
    )
    more = ""
    if len(bad) > 1:
        others = bad[1:]
        word = "records" if len(others) > 1 else "record"
        extra = f" (and {len(others) - 5} more)" if len(others) > 5 else ""
        more = f"; also {word} {', '.join(fmt_value(r) for r in others[:5])}{extra}"
    raise DataValidationError(
        f"record {fmt_value(rid)} has conflicting values for field {field!r} across events: "
        f"{pairs}{more}. A non-repeating field must have one value per record (if each "
        "event is a visit, read with redcap=False and reshape by redcap_event_name)"
    )


def _tidy_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Return whole-number float columns without missing values as int64."""
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_float_dtype(s.dtype) and len(s) and s.notna().all():
            x = s.to_numpy()
            if np.all(np.isfinite(x)) and np.all(x == np.round(x)) and np.abs(x).max() < 2**53:
                df[c] = x.astype(np.int64)
    return df
