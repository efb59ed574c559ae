"""Turn a scored data frame into the canonical analysis frame, with a DataReport.

:func:`prepare` validates identifiers, types and ranges (raising
:class:`~alliance_models.errors.DataValidationError` with the column, rows, value and what
is allowed), computes adherence, excludes rows that cannot be analysed (each listed in the
:class:`~alliance_models.DataReport` with its reason), and adds the within/between
decomposition of alliance, centred and standardised columns. The output columns follow
``docs/CONTRACTS.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._format import fmt_value
from ..errors import DataValidationError, format_rows
from .data_report import EXCLUDED_COLUMNS, DataReport
from .reshape import grand_mean_center, group_mean_center, within_between
from .reshape import standardize as standardize_values

__all__ = ["prepare"]

# adherence source -> (numerator name, denominator name, default input columns tried in order)
_SOURCES: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "diary": (
        "completed",
        "prescribed",
        ("ex_completed", "completed"),
        ("ex_prescribed", "prescribed"),
    ),
    "attendance": ("attended", "scheduled", ("attended",), ("scheduled",)),
}
# documented default input name -> canonical name tried when the default is absent
_DEFAULTS = {
    "therapist_id": "therapist",
    "record_id": "patient",
    "wai_sr_total": "alliance",
    "hccq_short_mean": "autonomy",
}


def _where(df: pd.DataFrame, mask: np.ndarray | pd.Series) -> list[object]:
    return df.index[np.asarray(mask, dtype=bool)].tolist()


def _has(series: pd.Series, mask: np.ndarray | pd.Series) -> str:
    """``"has <value>"`` for one flagged row, ``"have <v1>, <v2>, ..."`` (first five) else."""
    pos = np.flatnonzero(np.asarray(mask, dtype=bool))
    shown = ", ".join(fmt_value(v) for v in series.iloc[pos[:5]])
    return f"{'has' if len(pos) == 1 else 'have'} {shown}"


def _is_blank(mask: np.ndarray) -> str:
    return "is blank" if int(np.asarray(mask, dtype=bool).sum()) == 1 else "are blank"


def _resolve(df: pd.DataFrame, name: str | None) -> str | None:
    if name is None:
        return None
    if name not in df.columns and name in _DEFAULTS and _DEFAULTS[name] in df.columns:
        return _DEFAULTS[name]
    return name


def _check_columns(df: pd.DataFrame, wanted: dict[str, str]) -> None:
    missing = {role: col for role, col in wanted.items() if col not in df.columns}
    if missing:
        need = ", ".join(f"{col!r} ({role})" for role, col in missing.items())
        raise DataValidationError(
            f"required column(s) {need} not found; available columns: {list(df.columns)}. "
            "Pass the column names, e.g. prepare(df, patient='id', alliance='wai_total')"
        )


def _blank(series: pd.Series) -> np.ndarray:
    s = series.astype(object)
    return (s.isna() | s.map(lambda v: isinstance(v, str) and v.strip() == "")).to_numpy(bool)


def _ids(series: pd.Series, col: str, role: str) -> pd.Series:
    blank = _blank(series)
    if blank.any():
        rows = _where(series.to_frame(), blank)
        raise DataValidationError(
            f"column {col!r} ({role} id) {format_rows(rows)} {_is_blank(blank)}; every row needs a "
            f"{role} id (text or number)"
        )
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        vals = series.to_numpy(dtype=float)
        if np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
            return pd.Series(vals.astype("int64").astype(str), index=series.index, dtype=object)
    return series.astype(object).map(lambda v: str(v).strip()).astype(object)


def _numeric(series: pd.Series, col: str, what: str) -> pd.Series:
    """Coerce to float; text that is not a number (and not blank) or infinity raises."""
    src = series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series
    if pd.api.types.is_bool_dtype(src):
        src = src.astype(float)
    if pd.api.types.is_numeric_dtype(src):
        num = src.astype(float)
    else:
        blank = _blank(src)
        num = pd.to_numeric(src.where(~blank, np.nan), errors="coerce")
        bad = num.isna().to_numpy() & ~blank
        if bad.any():
            rows = _where(src.to_frame(), bad)
            raise DataValidationError(
                f"column {col!r} ({what}) {format_rows(rows)} {_has(src, bad)}; "
                "allowed: numbers (leave blank for missing)"
            )
        num = num.astype(float)
    inf = np.isinf(num.to_numpy(dtype=float))
    if inf.any():
        rows = _where(src.to_frame(), inf)
        raise DataValidationError(
            f"column {col!r} ({what}) {format_rows(rows)} {_has(num, inf)}; "
            "allowed: finite numbers (leave blank for missing)"
        )
    return num


def _session_numbers(series: pd.Series, col: str) -> pd.Series:
    blank = _blank(series)
    if blank.any():
        rows = _where(series.to_frame(), blank)
        raise DataValidationError(
            f"column {col!r} (session) {format_rows(rows)} {_is_blank(blank)}; every row needs a "
            "session number (a whole number >= 1)"
        )
    src = series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series
    num = pd.to_numeric(src, errors="coerce").astype(float)
    bad = (
        ~np.isfinite(num.to_numpy(dtype=float))
        | (num != np.round(num)).to_numpy()
        | (num < 1).to_numpy()
    )
    if bad.any():
        rows = _where(series.to_frame(), bad)
        raise DataValidationError(
            f"column {col!r} (session) {format_rows(rows)} {_has(series, bad)}; "
            "session numbers must be whole numbers >= 1"
        )
    return num.astype("int64")


def _counts(num: pd.Series, den: pd.Series, ncol: str, dcol: str) -> None:
    for s, col in ((num, ncol), (den, dcol)):
        neg = (s < 0).to_numpy()
        if neg.any():
            rows = _where(s.to_frame(), neg)
            raise DataValidationError(
                f"column {col!r} {format_rows(rows)} {_has(s, neg)}; "
                "counts must be whole numbers >= 0"
            )
        frac = (s.notna() & (s != np.round(s))).to_numpy()
        if frac.any():
            rows = _where(s.to_frame(), frac)
            raise DataValidationError(
                f"column {col!r} {format_rows(rows)} {_has(s, frac)}; "
                "counts must be whole numbers >= 0"
            )
    over = (num > den).to_numpy()
    if over.any():
        rows = _where(num.to_frame(), over)
        pos = np.flatnonzero(over)[:5]
        pairs = ", ".join(
            f"{fmt_value(a)} > {fmt_value(b)}"
            for a, b in zip(num.iloc[pos], den.iloc[pos], strict=True)
        )
        raise DataValidationError(
            f"column {ncol!r} exceeds {dcol!r} in {format_rows(rows)} ({pairs}); "
            f"{ncol} must not exceed {dcol}"
        )


def _scoring_reasons(scoring: Any, column: str) -> dict[object, str]:
    """Row label -> reason for NaN scores in ``column`` from ScoringReport objects."""
    if scoring is None:
        return {}
    reports = scoring if isinstance(scoring, list | tuple) else [scoring]
    out: dict[object, str] = {}
    for rep in reports:
        tab = getattr(rep, "table", None)
        if tab is None or not {"row", "score", "status", "reason"} <= set(tab.columns):
            raise DataValidationError(
                "scoring must be the ScoringReport(s) returned by score(..., "
                f"return_report=True); got {type(rep).__name__}"
            )
        sel = tab[(tab["score"] == column) & ~tab["status"].isin(["complete", "prorated"])]
        name = getattr(rep, "name", "")
        for row, reason in zip(sel["row"], sel["reason"], strict=True):
            out[row] = f"{name} {column}: {reason}".strip()
    return out


def _constant_within(x: np.ndarray, groups: np.ndarray) -> bool:
    frame = pd.DataFrame({"g": groups, "x": x})
    return bool((frame.groupby("g")["x"].nunique(dropna=False) <= 1).all())


def prepare(
    df: pd.DataFrame,
    *,
    therapist: str = "therapist_id",
    patient: str = "record_id",
    session: str = "session",
    alliance: str = "wai_sr_total",
    age: str | None = "age",
    autonomy: str | None = "hccq_short_mean",
    adherence: str = "diary",
    numerator: str | None = None,
    denominator: str | None = None,
    arm: str | None = None,
    keep: Sequence[str] = (),
    nested: bool = True,
    level: Literal["session", "patient"] = "session",
    center: Iterable[str] = ("age", "autonomy"),
    center_within: Iterable[str] = ("alliance",),
    standardize: Iterable[str] = (),
    drop_incomplete: bool = True,
    age_range: tuple[float, float] = (0.0, 120.0),
    scoring: Any = None,
) -> tuple[pd.DataFrame, DataReport]:
    """Validate a scored data frame and return the canonical analysis frame and a DataReport.

    The defaults fit the shipped example after reading and scoring::

        raw = am.read_data(am.datasets.example_path())
        scored = am.score(am.score(raw, "wai-sr", items="wai_{i}"), "hccq-short",
                          items="hccq_{i}")
        data, report = am.prepare(scored)

    Parameters
    ----------
    df : pandas.DataFrame
        One row per session (long format), e.g. from ``read_data`` and ``score``.
    therapist, patient, session : str
        Identifier columns. Therapist and patient ids may be text or numbers (output as
        text); sessions must be whole numbers >= 1. When the default name
        (``therapist_id``, ``record_id``) is absent but the canonical name (``therapist``,
        ``patient``) is present, the canonical column is used; the same holds for
        ``wai_sr_total`` -> ``alliance`` and ``hccq_short_mean`` -> ``autonomy``.
    alliance : str, default "wai_sr_total"
        Session-level alliance score.
    age, autonomy : str or None
        Patient moderators (years; autonomy support, e.g. HCCQ mean 1-7). ``None`` leaves
        the moderator out.
    adherence : {"diary", "attendance"} or str, default "diary"
        ``"diary"``: ``completed / prescribed`` from ``numerator`` (default
        ``ex_completed``) and ``denominator`` (default ``ex_prescribed``);
        ``"attendance"``: ``attended / scheduled``. Both keep the counts as
        ``completed, prescribed`` or ``attended, scheduled`` for binomial models. Any other
        string names a column holding a continuous adherence score.
    numerator, denominator : str, optional
        Input columns of the counts (override the defaults above).
    arm : str, optional
        Randomised arm column (values 0/1), output as ``arm``.
    keep : sequence of str, default ()
        Further input columns carried to the output unchanged.
    nested : bool, default True
        Each patient is seen by one therapist; a patient with two therapists raises.
    level : {"session", "patient"}, default "session"
        ``"session"``: one row per session. ``"patient"``: one row per patient, counts
        summed over all usable session rows (also those without an alliance rating, e.g.
        sessions not attended), alliance averaged over the rated sessions (``n_rated``),
        moderators averaged; ``_cwc`` columns are then centred within therapist and
        ``alliance_pm``/``alliance_pmc`` are not produced.
    center : iterable of str, default ("age", "autonomy")
        Output variables to centre at the grand mean (``<var>_c``). A variable constant
        within patient is centred at the mean over patients (each patient counted once),
        otherwise at the mean over rows.
    center_within : iterable of str, default ("alliance",)
        Variables to centre within patient (``<var>_cwc``; within therapist at patient
        level).
    standardize : iterable of str, default ()
        Variables to standardise (``<var>_z``; mean and SD over patients for variables
        constant within patient, over rows otherwise; SD with ddof 1).
    drop_incomplete : bool, default True
        Exclude rows missing a value the analysis needs (alliance, moderators, adherence),
        listing each in ``report.excluded``. If False they are kept (with NaN) and counted
        in ``report.n_incomplete_kept``.
    age_range : (float, float), default (0, 120)
        Allowed ages in years; anything outside raises.
    scoring : ScoringReport or list of them, optional
        Reports from ``score(..., return_report=True)``; their per-row reasons explain
        missing alliance and autonomy scores in the DataReport.

    Returns
    -------
    data : pandas.DataFrame
        Columns ``therapist, patient, session, [arm], alliance, alliance_pm,
        alliance_pmc, [age], [autonomy], adherence``, the counts, ``keep`` columns, then
        ``<var>_c``, ``<var>_cwc``, ``<var>_z``. Index: the input's row labels (session
        level) or a fresh range (patient level). Rows in input order.
    report : DataReport
        Counts, and every excluded row with its reason.

    Raises
    ------
    DataValidationError
        A required column is missing (the available ones are listed); a blank therapist,
        patient or session id, or a session that is not a whole number >= 1; text in a
        numeric column or an infinite value; an age outside ``age_range``; negative or
        fractional counts;
        numerator > denominator; a duplicated (patient, session); a patient seen by two
        therapists when ``nested``; an arm other than 0/1; an unknown variable in
        ``center``, ``center_within`` or ``standardize``; an index with repeated labels
        (the report names rows by label).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "therapist_id": ["T1"] * 4, "record_id": [1, 1, 2, 2], "session": [1, 2, 1, 2],
    ...     "wai_sr_total": [50.0, 54.0, 40.0, None], "age": [30, 30, 70, 70],
    ...     "hccq_short_mean": [6.0, 6.0, 4.0, 4.0], "attended": [1, 1, 1, 0],
    ...     "scheduled": [1, 1, 1, 1], "ex_completed": [5, 7, 3, None],
    ...     "ex_prescribed": [7, 7, 7, None]})
    >>> data, report = prepare(df)
    >>> data[["patient", "session", "alliance_pmc", "age_c", "adherence"]].round(3)
      patient  session  alliance_pmc  age_c  adherence
    0       1        1          -2.0  -20.0      0.714
    1       1        2           2.0  -20.0      1.000
    2       2        1           0.0   20.0      0.429
    >>> report.to_frame()[["row", "reason"]].to_dict("records")
    [{'row': 3, 'reason': 'session not attended'}]
    """
    _check_call(df, level, age_range)
    roles = _select(df, therapist=therapist, patient=patient, session=session,
                    alliance=alliance, age=age, autonomy=autonomy, adherence=adherence,
                    numerator=numerator, denominator=denominator, arm=arm, keep=keep)
    values = _validate(df, roles, age_range=age_range, nested=nested)
    exclusions = _exclude(df, roles, values, level=level, drop_incomplete=drop_incomplete,
                          scoring=scoring)
    out = _assemble(df, roles, values, exclusions.keep_rows)
    sessions_per_patient = out.groupby("patient", sort=False).size()
    out, cluster = _reshape(out, roles, level)
    _derived(out, center, center_within, standardize, cluster, level)
    return out, _report(df, out, roles, exclusions, sessions_per_patient, level=level,
                        scoring=scoring)


# --------------------------------------------------------------------------- phases
@dataclass(frozen=True)
class _Roles:
    """Which input column plays which role (the outcome of :func:`_select`)."""

    therapist: str
    patient: str
    session: str
    alliance: str
    age: str | None
    autonomy: str | None
    adherence: str
    num_name: str  # canonical count names ("completed"/"prescribed"...), "" for a score
    den_name: str
    arm: str | None
    keep: tuple[str, ...]
    wanted: dict[str, str]  # canonical role -> input column (also "keep <c>" entries)
    adherence_text: str


@dataclass(frozen=True)
class _Values:
    """Validated identifiers and numeric values, one entry per input row."""

    therapist: pd.Series
    patient: pd.Series
    session: pd.Series  # Int64; <NA> on REDCap records without session rows
    lonely: np.ndarray  # such records
    values: dict[str, pd.Series]  # canonical name -> float values


@dataclass(frozen=True)
class _Exclusions:
    """Rows that cannot be analysed, each with its column(s) and reason(s)."""

    excluded: pd.DataFrame  # one row per dropped input row (DataReport.excluded)
    keep_rows: np.ndarray
    n_incomplete_kept: int


def _check_call(df: pd.DataFrame, level: str, age_range: tuple[float, float]) -> None:
    """Raise unless ``df`` is a usable data frame and the options are valid."""
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(
            f"prepare needs a pandas DataFrame, got {type(df).__name__} (see read_data)"
        )
    if len(df) == 0:
        raise DataValidationError("prepare got a data frame with no rows; nothing to analyse")
    if df.columns.duplicated().any():
        dup = df.columns[df.columns.duplicated()].tolist()
        raise DataValidationError(f"column(s) {dup} appear more than once; names must be unique")
    if not df.index.is_unique:
        dup_rows = df.index[df.index.duplicated(keep=False)].unique().tolist()
        raise DataValidationError(
            f"the data frame's index repeats the label(s) "
            f"{', '.join(fmt_value(r) for r in dup_rows[:5])}; the "
            "DataReport names excluded rows by index label, so labels must be unique "
            "(call df.reset_index(drop=True) first)"
        )
    if level not in ("session", "patient"):
        raise DataValidationError(f"level must be 'session' or 'patient'; got {level!r}")
    lo_age, hi_age = age_range
    if not lo_age < hi_age:
        raise DataValidationError(f"age_range must be (low, high) with low < high; got {age_range}")


def _select(
    df: pd.DataFrame,
    *,
    therapist: str,
    patient: str,
    session: str,
    alliance: str,
    age: str | None,
    autonomy: str | None,
    adherence: str,
    numerator: str | None,
    denominator: str | None,
    arm: str | None,
    keep: Sequence[str],
) -> _Roles:
    """Resolve the input column of every role; raise naming any that is missing."""
    therapist_col = _resolve(df, therapist)
    patient_col = _resolve(df, patient)
    alliance_col = _resolve(df, alliance)
    autonomy_col = _resolve(df, autonomy)
    assert therapist_col is not None and patient_col is not None and alliance_col is not None
    wanted: dict[str, str] = {
        "therapist": therapist_col,
        "patient": patient_col,
        "session": session,
        "alliance": alliance_col,
    }
    if age is not None:
        wanted["age"] = age
    if autonomy_col is not None:
        wanted["autonomy"] = autonomy_col
    if adherence in _SOURCES:
        num_name, den_name, num_try, den_try = _SOURCES[adherence]
        num_col = numerator or next((c for c in num_try if c in df.columns), num_try[0])
        den_col = denominator or next((c for c in den_try if c in df.columns), den_try[0])
        wanted[num_name] = num_col
        wanted[den_name] = den_col
        adherence_text = f"{adherence}: {num_col} / {den_col}"
    else:
        if numerator is not None or denominator is not None:
            raise DataValidationError(
                "numerator/denominator apply to adherence='diary' or 'attendance'; "
                f"adherence={adherence!r} names a continuous score column"
            )
        num_name = den_name = ""
        wanted["adherence"] = adherence
        adherence_text = f"score: {adherence}"
    if arm is not None:
        wanted["arm"] = arm
    for c in keep:
        wanted[f"keep {c}"] = c
    _check_columns(df, wanted)
    return _Roles(
        therapist=therapist_col, patient=patient_col, session=session,
        alliance=alliance_col, age=age, autonomy=autonomy_col, adherence=adherence,
        num_name=num_name, den_name=den_name, arm=arm, keep=tuple(keep), wanted=wanted,
        adherence_text=adherence_text,
    )


def _validate(
    df: pd.DataFrame, roles: _Roles, *, age_range: tuple[float, float], nested: bool
) -> _Values:
    """Check identifiers, types, ranges and the design; raise naming column, rows, value."""
    t_id = _ids(df[roles.therapist], roles.therapist, "therapist")
    p_id = _ids(df[roles.patient], roles.patient, "patient")
    session = roles.session
    # read_redcap keeps a record without any session row as one row with a blank session;
    # such rows cannot be analysed and are excluded (whatever drop_incomplete says)
    lonely_ids = (df.attrs.get("redcap") or {}).get("records_without_repeats") or []
    lonely = (df[session].isna() & df[roles.patient].isin(list(lonely_ids))).to_numpy(bool)
    s_no = pd.Series(pd.array([pd.NA] * len(df), dtype="Int64"), index=df.index)
    s_no[~lonely] = _session_numbers(df.loc[~lonely, session], session).to_numpy()
    val = _numeric_values(df, roles, age_range)
    _check_design(df, roles, t_id, p_id, s_no, lonely, val, nested=nested)
    return _Values(therapist=t_id, patient=p_id, session=s_no, lonely=lonely, values=val)


def _numeric_values(
    df: pd.DataFrame, roles: _Roles, age_range: tuple[float, float]
) -> dict[str, pd.Series]:
    """Alliance, moderators, adherence counts or score and arm as validated floats."""
    lo_age, hi_age = age_range
    alliance_col, age_col, arm = roles.alliance, roles.age, roles.arm
    val: dict[str, pd.Series] = {"alliance": _numeric(df[alliance_col], alliance_col, "alliance")}
    if age_col is not None:
        val["age"] = _numeric(df[age_col], age_col, "age in years")
        a = val["age"]
        bad = (a.notna() & ((a < lo_age) | (a > hi_age))).to_numpy()
        if bad.any():
            rows = _where(df, bad)
            raise DataValidationError(
                f"column {age_col!r} (age) {format_rows(rows)} {_has(a, bad)}; "
                f"allowed ages are {lo_age:g}-{hi_age:g} years (age_range)"
            )
    if roles.autonomy is not None:
        val["autonomy"] = _numeric(df[roles.autonomy], roles.autonomy, "autonomy support")
    num_name, den_name, wanted = roles.num_name, roles.den_name, roles.wanted
    if num_name:
        val[num_name] = _numeric(df[wanted[num_name]], wanted[num_name], f"{num_name} count")
        val[den_name] = _numeric(df[wanted[den_name]], wanted[den_name], f"{den_name} count")
        _counts(val[num_name], val[den_name], wanted[num_name], wanted[den_name])
    else:
        val["adherence"] = _numeric(df[roles.adherence], roles.adherence, "adherence score")
    if arm is not None:
        arm_v = _numeric(df[arm], arm, "arm")
        bad = ~(arm_v.isin([0.0, 1.0]) | arm_v.isna()).to_numpy()
        if bad.any():
            rows = _where(df, bad)
            raise DataValidationError(
                f"column {arm!r} (arm) {format_rows(rows)} {_has(arm_v, bad)}; "
                "allowed arms are 0 and 1"
            )
        val["arm"] = arm_v
    return val


def _check_design(
    df: pd.DataFrame,
    roles: _Roles,
    t_id: pd.Series,
    p_id: pd.Series,
    s_no: pd.Series,
    lonely: np.ndarray,
    val: dict[str, pd.Series],
    *,
    nested: bool,
) -> None:
    """One row per (patient, session); one therapist (if nested) and one arm per patient."""
    key = pd.DataFrame({"p": p_id, "s": s_no}, index=df.index)
    dup = key.duplicated(keep=False).to_numpy() & ~lonely
    if dup.any():
        rows = _where(df, dup)
        i0 = int(np.flatnonzero(dup)[0])
        raise DataValidationError(
            f"duplicated ({roles.patient}, {roles.session}) at {format_rows(rows)}: patient "
            f"{p_id.iloc[i0]!r} session {int(s_no.iloc[i0])} appears more than once; each "
            "patient may have one row per session"
        )
    if nested:
        n_ther = t_id.groupby(p_id.to_numpy()).nunique()
        multi = n_ther.index[n_ther > 1].tolist()
        if multi:
            p0 = multi[0]
            rows = _where(df, p_id.isin(multi).to_numpy())
            seen = sorted(t_id[p_id == p0].unique().tolist())
            raise DataValidationError(
                f"column {roles.therapist!r}: patient {p0!r} is seen by therapists "
                f"{', '.join(repr(t) for t in seen)} ({format_rows(rows)}); with nested=True "
                "each patient must have one therapist (pass nested=False for crossed designs, "
                "or give patients of different therapists different ids)"
            )
    if roles.arm is not None:
        n_arm = val["arm"].groupby(p_id.to_numpy()).nunique()
        multi = n_arm.index[n_arm > 1].tolist()
        if multi:
            rows = _where(df, p_id.isin(multi).to_numpy())
            raise DataValidationError(
                f"column {roles.arm!r} (arm) changes within patient {multi[0]!r} "
                f"({format_rows(rows)}); a patient belongs to one arm"
            )


class _Reasons:
    """Per input row: why it cannot be analysed, and the input column(s) at fault."""

    def __init__(self, n: int) -> None:
        self.why: list[list[str]] = [[] for _ in range(n)]
        self.columns: list[list[str]] = [[] for _ in range(n)]

    def flag(self, mask: np.ndarray, column: Any, why: Any) -> None:
        """Add a reason (text, or ``i -> text``) and its column to the rows in ``mask``."""
        for i in np.flatnonzero(mask):
            self.why[i].append(why(i) if callable(why) else why)
            self.columns[i].append(column(i) if callable(column) else column)

    def any(self) -> np.ndarray:
        """Rows with at least one reason."""
        return np.array([bool(r) for r in self.why])


def _exclude(
    df: pd.DataFrame,
    roles: _Roles,
    values: _Values,
    *,
    level: str,
    drop_incomplete: bool,
    scoring: Any,
) -> _Exclusions:
    """Flag every row that cannot be analysed with its column(s) and reason(s)."""
    n = len(df)
    # which column says whether the session took place (for the "not attended" reason)
    att_col = roles.wanted["attended"] if roles.adherence == "attendance" else "attended"
    not_attended = np.zeros(n, dtype=bool)
    if att_col in df.columns:
        att = pd.to_numeric(df[att_col].astype(object), errors="coerce").to_numpy(float)
        not_attended = att == 0
    reasons = _Reasons(n)
    _flag_missing(reasons, df, roles, values, level=level, scoring=scoring,
                  att_col=att_col, not_attended=not_attended)
    if level == "patient":
        _flag_unusable_patients(reasons, roles, values)
    row_bad = reasons.any()
    lonely = values.lonely
    for i in np.flatnonzero(lonely):
        reasons.why[i] = ["record has no session rows (REDCap export)"]
        reasons.columns[i] = [roles.session]
    row_bad = row_bad & ~lonely
    drop = (row_bad if drop_incomplete else np.zeros(n, dtype=bool)) | lonely
    rows = np.flatnonzero(drop)
    labels = df.index.tolist()
    excluded = pd.DataFrame(
        {
            "row": pd.Series([labels[i] for i in rows], dtype=object),
            "patient": values.patient.to_numpy()[drop],
            "session": values.session[drop].reset_index(drop=True),
            "column": [", ".join(dict.fromkeys(reasons.columns[i])) for i in rows],
            "reason": ["; ".join(dict.fromkeys(reasons.why[i])) for i in rows],
        },
        columns=list(EXCLUDED_COLUMNS),
    )
    return _Exclusions(
        excluded=excluded,
        keep_rows=~drop,
        n_incomplete_kept=int(row_bad.sum()) if not drop_incomplete else 0,
    )


def _flag_missing(
    reasons: _Reasons,
    df: pd.DataFrame,
    roles: _Roles,
    values: _Values,
    *,
    level: str,
    scoring: Any,
    att_col: str,
    not_attended: np.ndarray,
) -> None:
    """Rows missing a value the analysis needs (alliance, moderators, adherence, arm)."""
    val, wanted, alliance_col = values.values, roles.wanted, roles.alliance
    num_name, den_name = roles.num_name, roles.den_name
    labels = df.index.tolist()
    alliance_why = _scoring_reasons(scoring, alliance_col)
    autonomy_why = _scoring_reasons(scoring, roles.autonomy) if roles.autonomy else {}
    if level == "session":
        reasons.flag(
            val["alliance"].isna().to_numpy(),
            lambda i: att_col if not_attended[i] else alliance_col,
            lambda i: (
                "session not attended"
                if not_attended[i]
                else alliance_why.get(labels[i], f"{alliance_col} missing")
            ),
        )
    for role, col in (("age", roles.age), ("autonomy", roles.autonomy)):
        if col is None:
            continue
        why_map = autonomy_why if role == "autonomy" else {}
        reasons.flag(
            val[role].isna().to_numpy(),
            col,
            lambda i, c=col, m=why_map: m.get(labels[i], f"{c} missing"),
        )
    if num_name:
        ncol, dcol = wanted[num_name], wanted[den_name]
        nmiss = val[num_name].isna().to_numpy()
        dmiss = val[den_name].isna().to_numpy()
        both = nmiss & dmiss
        # a session not attended has a blank diary too: say so rather than "missing"
        reasons.flag(both & not_attended, att_col, "session not attended")
        reasons.flag(both & ~not_attended, f"{ncol}, {dcol}", f"{ncol} and {dcol} missing")
        reasons.flag(nmiss & ~dmiss, ncol, f"{ncol} missing")
        reasons.flag(dmiss & ~nmiss, dcol, f"{dcol} missing")
        if level == "session":
            zero = (val[den_name] == 0).to_numpy()
            reasons.flag(zero, dcol, f"{dcol} is 0: adherence undefined")
    else:
        reasons.flag(val["adherence"].isna().to_numpy(), roles.adherence,
                     f"{roles.adherence} missing")
    if roles.arm is not None:
        reasons.flag(val["arm"].isna().to_numpy(), roles.arm, f"{roles.arm} missing")


def _flag_unusable_patients(reasons: _Reasons, roles: _Roles, values: _Values) -> None:
    """Patient level: a patient without any rated session, or whose counts sum to 0."""
    val, p_id = values.values, values.patient.to_numpy()
    usable = ~reasons.any()
    rated = pd.DataFrame({"p": p_id, "rated": usable & ~val["alliance"].isna().to_numpy()})
    n_rated = rated.groupby("p", sort=False)["rated"].transform("sum").to_numpy()
    reasons.flag(
        usable & (n_rated == 0),
        roles.alliance,
        "patient has no session with an alliance score",
    )
    if roles.num_name:
        dcol = roles.wanted[roles.den_name]
        den_ok = np.where(usable, val[roles.den_name].fillna(0).to_numpy(), 0.0)
        den_sum = pd.Series(den_ok).groupby(p_id).transform("sum").to_numpy()
        reasons.flag(
            usable & (n_rated > 0) & (den_sum == 0),
            dcol,
            f"patient's {dcol} sums to 0: adherence undefined",
        )


def _assemble(
    df: pd.DataFrame, roles: _Roles, values: _Values, keep_rows: np.ndarray
) -> pd.DataFrame:
    """Put the kept rows in canonical columns, with adherence computed from the counts."""
    val, num_name, den_name = values.values, roles.num_name, roles.den_name
    out = pd.DataFrame(index=df.index[keep_rows])
    out["therapist"] = values.therapist.to_numpy()[keep_rows]
    out["patient"] = values.patient.to_numpy()[keep_rows]
    out["session"] = values.session[keep_rows].to_numpy(dtype="int64")
    if roles.arm is not None:
        out["arm"] = val["arm"].to_numpy()[keep_rows]
    out["alliance"] = val["alliance"].to_numpy()[keep_rows]
    for role in ("age", "autonomy"):
        if role in val:
            out[role] = val[role].to_numpy()[keep_rows]
    if num_name:
        nv = val[num_name].to_numpy()[keep_rows]
        dv = val[den_name].to_numpy()[keep_rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["adherence"] = np.where(dv > 0, nv / np.where(dv > 0, dv, 1.0), np.nan)
        out[num_name] = nv
        out[den_name] = dv
    else:
        out["adherence"] = val["adherence"].to_numpy()[keep_rows]
    for c in roles.keep:
        out[c] = df[c].to_numpy()[keep_rows]
    return out


def _reshape(out: pd.DataFrame, roles: _Roles, level: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Session level: add the within/between split of alliance; patient level: aggregate.

    Returns the frame and the clusters within which ``_cwc`` columns are centred.
    """
    num_name, den_name = roles.num_name, roles.den_name
    if level == "patient":
        out = _aggregate(out, num_name, den_name, list(roles.keep))
        cluster = out["therapist"].to_numpy()
    else:
        if roles.arm is not None:
            out["arm"] = (
                out["arm"].astype("Int64")
                if out["arm"].isna().any()
                else out["arm"].astype("int64")
            )
        pm, pmc = within_between(out["alliance"].to_numpy(), out["patient"].to_numpy())
        pos = out.columns.get_loc("alliance") + 1
        out.insert(pos, "alliance_pm", pm)
        out.insert(pos + 1, "alliance_pmc", pmc)
        cluster = out["patient"].to_numpy()
    if num_name:
        for c in (num_name, den_name):
            out[c] = out[c].astype("Int64") if out[c].isna().any() else out[c].astype("int64")
    return out, cluster


def _report(
    df: pd.DataFrame,
    out: pd.DataFrame,
    roles: _Roles,
    exclusions: _Exclusions,
    sessions_per_patient: pd.Series,
    *,
    level: str,
    scoring: Any,
) -> DataReport:
    """Build the DataReport: counts, and every excluded input row with its reason."""
    notes = []
    for rep in scoring if isinstance(scoring, list | tuple) else [scoring] if scoring else []:
        notes.append(
            f"{getattr(rep, 'name', 'scoring')}: {rep.n_nan} NaN score(s), "
            f"{rep.n_prorated} pro-rated"
        )
    return DataReport(
        rows_in=len(df),
        rows_used=int(exclusions.keep_rows.sum()),
        rows_out=len(out),
        n_patients=int(out["patient"].nunique()),
        n_therapists=int(out["therapist"].nunique()),
        sessions_per_patient=sessions_per_patient,
        excluded=exclusions.excluded,
        level=level,
        adherence=roles.adherence_text,
        columns={k: v for k, v in roles.wanted.items() if not k.startswith("keep ")},
        notes=tuple(notes),
        n_incomplete_kept=exclusions.n_incomplete_kept,
    )


def _aggregate(out: pd.DataFrame, num_name: str, den_name: str, keep: list[str]) -> pd.DataFrame:
    """Collapse session rows to one row per patient."""
    g = out.groupby("patient", sort=False)
    agg: dict[str, pd.Series] = {"therapist": g["therapist"].first()}
    if "arm" in out.columns:
        agg["arm"] = g["arm"].first()
    agg["alliance"] = g["alliance"].mean()
    agg["n_sessions"] = g.size()
    agg["n_rated"] = g["alliance"].count()
    for role in ("age", "autonomy"):
        if role in out.columns:
            agg[role] = g[role].mean()
    if num_name:
        nsum = g[num_name].sum(min_count=1)
        dsum = g[den_name].sum(min_count=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            agg["adherence"] = nsum / dsum.where(dsum > 0)
        agg[num_name] = nsum
        agg[den_name] = dsum
    else:
        agg["adherence"] = g["adherence"].mean()
    for c in keep:
        agg[c] = g[c].first()
    res = pd.DataFrame(agg).reset_index()
    res = res[
        ["therapist", "patient", *[c for c in res.columns if c not in ("therapist", "patient")]]
    ]
    if "arm" in res.columns:
        res["arm"] = (
            res["arm"].astype("Int64") if res["arm"].isna().any() else res["arm"].astype("int64")
        )
    return res


def _derived(
    out: pd.DataFrame,
    center: Iterable[str],
    center_within: Iterable[str],
    standardize_vars: Iterable[str],
    cluster: np.ndarray,
    level: str,
) -> None:
    center, center_within, standardize_vars = (
        (v,) if isinstance(v, str) else tuple(v) for v in (center, center_within, standardize_vars)
    )
    numeric = [
        c
        for c in out.columns
        if c not in ("therapist", "patient", "session")
        and pd.api.types.is_numeric_dtype(out[c])
        and not pd.api.types.is_bool_dtype(out[c])
    ]
    units = out["patient"].to_numpy()
    optional = {"age", "autonomy"}

    def usable(names: Iterable[str], what: str) -> list[str]:
        chosen = []
        for v in names:
            if v in numeric:
                chosen.append(v)
            elif v in optional and v not in out.columns:
                continue  # moderator switched off (age=None / autonomy=None)
            else:
                raise DataValidationError(
                    f"{what} names {v!r}, which is not a numeric output column; allowed: {numeric}"
                )
        return chosen

    for v in usable(center, "center"):
        x = out[v].to_numpy(dtype=float)
        by_unit = level == "session" and _constant_within(x, units)
        out[f"{v}_c"] = grand_mean_center(x, units=units if by_unit else None)
    for v in usable(center_within, "center_within"):
        out[f"{v}_cwc"] = group_mean_center(out[v].to_numpy(dtype=float), cluster)
    for v in usable(standardize_vars, "standardize"):
        x = out[v].to_numpy(dtype=float)
        by_unit = level == "session" and _constant_within(x, units)
        try:
            out[f"{v}_z"] = standardize_values(x, units=units if by_unit else None)
        except DataValidationError as err:
            raise DataValidationError(f"standardize {v!r}: {err}") from None
