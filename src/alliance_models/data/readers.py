"""Read study data from files or data frames into pandas, with errors that name the file.

Supported: CSV/TSV, Excel (.xlsx/.xlsm via openpyxl; legacy .xls needs xlrd), SPSS
(.sav/.zsav) and Stata (.dta) via pyreadstat, pandas and polars data frames. REDCap flat
exports are recognised and flattened (see :mod:`alliance_models.data.redcap`, which
reshapes data frames and reads nothing). This is the package's only file reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from ..errors import DataValidationError
from .redcap import flatten_redcap, is_redcap_export

__all__ = ["SUPPORTED_EXTENSIONS", "read_data", "read_redcap"]

#: File extensions read_data understands, with the kind of file.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".csv": "CSV",
    ".tsv": "tab-separated text",
    ".xlsx": "Excel",
    ".xlsm": "Excel",
    ".xls": "Excel 97-2003",
    ".sav": "SPSS",
    ".zsav": "SPSS",
    ".dta": "Stata",
}


def _supported() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def _from_polars(obj: Any) -> pd.DataFrame:
    if hasattr(obj, "collect") and not hasattr(obj, "to_pandas"):  # LazyFrame
        obj = obj.collect()
    try:
        return obj.to_pandas()
    except ImportError:  # pyarrow missing: go through plain Python lists
        return pd.DataFrame(obj.to_dict(as_series=False))


def _read_stat(path: Path, kind: str, kwargs: dict[str, Any]) -> pd.DataFrame:
    try:
        import pyreadstat
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataValidationError(
            f"reading {kind} file '{path}' needs pyreadstat: pip install 'alliance_models[io]'"
        ) from exc
    opts = {"apply_value_formats": True, "formats_as_category": True, **kwargs}
    reader = pyreadstat.read_dta if kind == "Stata" else pyreadstat.read_sav
    df, meta = reader(str(path), **opts)
    labels = {c: lab for c, lab in (meta.column_names_to_labels or {}).items() if lab}
    df.attrs["column_labels"] = labels
    df.attrs["value_labels"] = {
        c: dict(v) for c, v in (meta.variable_value_labels or {}).items() if c in df.columns
    }
    return df


def _read_excel(path: Path, sheet: str | int | None, kwargs: dict[str, Any]) -> pd.DataFrame:
    engine = None if path.suffix.lower() == ".xls" else "openpyxl"
    try:
        book = pd.ExcelFile(path, engine=engine)
    except ImportError as exc:
        pkg = "xlrd" if engine is None else "openpyxl"
        raise DataValidationError(
            f"reading '{path}' needs {pkg} (pip install {pkg}); or save the sheet as .xlsx"
        ) from exc
    with book:
        names = list(book.sheet_names)
        target: str | int = 0 if sheet is None else sheet
        if isinstance(target, str) and target not in names:
            raise DataValidationError(
                f"sheet {target!r} is not in '{path}'; its sheets are {', '.join(map(repr, names))}"
            )
        if isinstance(target, int) and not -len(names) <= target < len(names):
            raise DataValidationError(
                f"sheet {target} is out of range for '{path}', which has {len(names)} "
                f"sheet(s): {', '.join(map(repr, names))}"
            )
        return pd.read_excel(book, sheet_name=target, **kwargs)


def read_data(
    source: str | os.PathLike[str] | pd.DataFrame | Any,
    *,
    sheet: str | int | None = None,
    redcap: bool | Literal["auto"] = "auto",
    **kwargs: Any,
) -> pd.DataFrame:
    """Read study data from a file or a data frame.

    Parameters
    ----------
    source : path, pandas.DataFrame or polars.DataFrame
        A ``.csv``/``.tsv``, ``.xlsx``/``.xlsm``/``.xls``, SPSS ``.sav``/``.zsav`` or
        Stata ``.dta`` file; a pandas DataFrame (copied) or a polars DataFrame or
        LazyFrame (converted).
    sheet : str or int, optional
        Excel sheet name or position (default: the first sheet).
    redcap : bool or "auto", default "auto"
        Flatten a REDCap flat export with :func:`~alliance_models.read_redcap`:
        ``"auto"`` does so when the columns hold ``record_id`` plus
        ``redcap_event_name`` or ``redcap_repeat_instrument``; True always; False never.
    **kwargs
        Passed to the underlying reader (``pandas.read_csv``, ``pandas.read_excel``,
        ``pyreadstat.read_sav``/``read_dta``).

    Returns
    -------
    pandas.DataFrame
        SPSS/Stata value labels become pandas categoricals; the variable labels are in
        ``df.attrs["column_labels"]`` and the value labels (code -> label) in
        ``df.attrs["value_labels"]`` (so :func:`~alliance_models.score` can map labelled
        items back to their codes). ``df.attrs["source"]`` holds the path.

    Raises
    ------
    DataValidationError
        File not found; unsupported extension (the message lists the supported ones);
        unreadable or corrupt file; a file with no data rows; unknown sheet. Every
        message names the path.

    Examples
    --------
    >>> import pandas as pd
    >>> df = read_data(pd.DataFrame({"patient": ["a", "b"], "age": [40, 51]}))
    >>> df.shape
    (2, 2)
    """
    if redcap not in (True, False, "auto"):
        raise DataValidationError(f"redcap must be True, False or 'auto', got {redcap!r}")
    where = "the data frame"
    if isinstance(source, pd.DataFrame):
        df = source.copy(deep=True)
    elif type(source).__module__.split(".")[0] == "polars":
        df = _from_polars(source)
        where = "the polars data frame"
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        where = f"'{path}'"
        df = _read_file(path, sheet, kwargs)
        df.attrs["source"] = str(path)
    else:
        raise DataValidationError(
            f"read_data reads a file path, a pandas or a polars DataFrame; got "
            f"{type(source).__name__}"
        )
    if df.shape[0] == 0:
        cols = ", ".join(map(repr, list(df.columns)[:20])) or "none"
        raise DataValidationError(f"{where} has no data rows (columns: {cols})")
    if redcap is True or (redcap == "auto" and _needs_flattening(df)):
        df = flatten_redcap(df)
    return df


def read_redcap(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    record_id: str | None = None,
    merge_repeats: bool = False,
    session: str = "session",
) -> pd.DataFrame:
    """Read a REDCap flat export as one row per repeat instance (session).

    Parameters
    ----------
    source : path or pandas.DataFrame
        A REDCap "records in rows" export (CSV or any format :func:`read_data` reads)
        or the raw export already in a data frame.
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

    Returns
    -------
    pandas.DataFrame
        As :func:`alliance_models.data.redcap.flatten_redcap` describes: one row per
        (record, repeat instance) with the record-level fields carried onto each, and
        ``df.attrs["redcap"]`` recording what was done.

    Raises
    ------
    DataValidationError
        Any error of :func:`read_data` for a path; any error of
        :func:`~alliance_models.data.redcap.flatten_redcap` (which names the file).

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
    >>> read_redcap(raw)[["record_id", "session", "age", "wai_1"]].to_numpy().tolist()
    [['p1', 1, 61, 4], ['p1', 2, 61, 5]]
    """
    if isinstance(source, pd.DataFrame):
        raw, where = source, "the data"
    else:
        raw, where = read_data(source, redcap=False), f"'{Path(source)}'"
    return flatten_redcap(raw, record_id=record_id, merge_repeats=merge_repeats,
                          session=session, source=where)


def _needs_flattening(df: pd.DataFrame) -> bool:
    """Tell whether df is a REDCap export that has not been flattened yet.

    :func:`read_redcap` output keeps ``record_id`` and ``redcap_event_name`` but replaces
    ``redcap_repeat_instance`` by ``session``; reading such a file back (e.g. after
    ``alliance-models score --out``) must not flatten it a second time.
    """
    cols = {str(c) for c in df.columns}
    already_flat = "session" in cols and "redcap_repeat_instance" not in cols
    return is_redcap_export(list(cols)) and not already_flat


def _read_file(path: Path, sheet: str | int | None, kwargs: dict[str, Any]) -> pd.DataFrame:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataValidationError(
            f"cannot read '{path}': extension {ext or '(none)'!r} is not supported; "
            f"read_data supports {_supported()}"
        )
    if not path.exists():
        raise DataValidationError(f"file not found: '{path}'")
    if path.is_dir():
        raise DataValidationError(f"'{path}' is a directory, not a data file")
    kind = SUPPORTED_EXTENSIONS[ext]
    if path.stat().st_size == 0:
        raise DataValidationError(f"file '{path}' is empty (0 bytes): no data rows")
    try:
        if ext in (".csv", ".tsv"):
            opts = {"sep": "\t"} if ext == ".tsv" else {}
            return pd.read_csv(path, **{**opts, **kwargs})
        if kind.startswith("Excel"):
            return _read_excel(path, sheet, kwargs)
        return _read_stat(path, kind, kwargs)
    except DataValidationError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"file '{path}' is empty: no columns and no rows") from exc
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"could not read '{path}' as {kind}: it is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); pass encoding=... (e.g. encoding='latin-1')"
        ) from exc
    except Exception as exc:  # any parser failure means an unreadable or corrupt file
        raise DataValidationError(
            f"could not read '{path}': not a readable {kind} file (corrupt or another "
            "format): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
