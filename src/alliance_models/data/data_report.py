"""DataReport: what :func:`alliance_models.prepare` kept, excluded, and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pandas as pd

__all__ = ["EXCLUDED_COLUMNS", "DataReport"]

EXCLUDED_COLUMNS: tuple[str, ...] = ("row", "patient", "session", "column", "reason")
"""Columns of :attr:`DataReport.excluded`."""


@dataclass(frozen=True, eq=False)
class DataReport:
    """Account of a :func:`~alliance_models.prepare` run: which rows were used, and why not.

    Every input row is either used or listed in :attr:`excluded` with its reason.

    Attributes
    ----------
    rows_in : int
        Rows of the input data frame.
    rows_used : int
        Input rows that entered the output (``rows_in == rows_used + len(excluded)``).
    rows_out : int
        Rows of the output: ``rows_used`` at ``level="session"``, the number of patients
        at ``level="patient"``.
    n_patients, n_therapists : int
        Patients and therapists in the output.
    sessions_per_patient : pandas.Series
        Input rows used per patient (index: patient id).
    excluded : pandas.DataFrame
        One row per excluded input row: ``row`` (the input's index label), ``patient``,
        ``session``, ``column`` (the input column(s) at fault, comma-separated) and
        ``reason`` (semicolon-separated when several apply).
    level : str
        ``"session"`` or ``"patient"``.
    adherence : str
        How adherence was computed, e.g. ``"diary: ex_completed / ex_prescribed"``.
    columns : mapping of str to str
        Canonical output column -> input column it came from.
    notes : tuple of str
        Further remarks (scoring summaries, incomplete rows kept, ...).
    n_incomplete_kept : int
        Rows with a missing analysis value kept because ``drop_incomplete=False``.

    Raises
    ------
    ValueError
        If the counts do not add up (``rows_in != rows_used + len(excluded)``).

    Examples
    --------
    >>> import pandas as pd
    >>> rep = DataReport(rows_in=3, rows_used=2, rows_out=2, n_patients=1, n_therapists=1,
    ...                  sessions_per_patient=pd.Series({"p1": 2}),
    ...                  excluded=pd.DataFrame({"row": [2], "patient": ["p1"],
    ...                                         "session": [3], "column": ["wai_sr_total"],
    ...                                         "reason": ["session not attended"]}))
    >>> rep.n_excluded
    1
    >>> print(rep.summary().splitlines()[1])
      rows in 3 = used 2 + excluded 1; rows out 2
    """

    rows_in: int
    rows_used: int
    rows_out: int
    n_patients: int
    n_therapists: int
    sessions_per_patient: pd.Series = field(repr=False)
    excluded: pd.DataFrame = field(repr=False)
    level: str = "session"
    adherence: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    n_incomplete_kept: int = 0

    def __post_init__(self) -> None:
        missing = [c for c in EXCLUDED_COLUMNS if c not in self.excluded.columns]
        if missing:
            raise ValueError(f"DataReport.excluded lacks column(s) {missing}")
        if self.rows_in != self.rows_used + len(self.excluded):
            raise ValueError(
                f"DataReport counts do not add up: rows_in {self.rows_in} != rows_used "
                f"{self.rows_used} + excluded {len(self.excluded)}"
            )
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @property
    def n_excluded(self) -> int:
        """Number of excluded input rows."""
        return len(self.excluded)

    def reasons(self) -> pd.Series:
        """Count excluded rows by reason (most frequent first).

        Returns
        -------
        pandas.Series
            Index: reason; values: number of rows.

        Examples
        --------
        >>> import pandas as pd
        >>> ex = pd.DataFrame({"row": [0, 1], "patient": ["a", "a"], "session": [1, 2],
        ...                    "column": ["age", "age"], "reason": ["age missing"] * 2})
        >>> rep = DataReport(rows_in=2, rows_used=0, rows_out=0, n_patients=0,
        ...                  n_therapists=0, sessions_per_patient=pd.Series(dtype=int),
        ...                  excluded=ex)
        >>> rep.reasons().to_dict()
        {'age missing': 2}
        """
        counts = self.excluded["reason"].value_counts(sort=True)
        counts.name = "rows"
        return counts

    def to_frame(self) -> pd.DataFrame:
        """Return the excluded rows (a copy): one row per excluded input row with its reason.

        Examples
        --------
        >>> import pandas as pd
        >>> rep = DataReport(rows_in=1, rows_used=1, rows_out=1, n_patients=1,
        ...                  n_therapists=1, sessions_per_patient=pd.Series({"a": 1}),
        ...                  excluded=pd.DataFrame(columns=list(EXCLUDED_COLUMNS)))
        >>> list(rep.to_frame().columns)
        ['row', 'patient', 'session', 'column', 'reason']
        """
        return self.excluded.reset_index(drop=True).copy()

    def summary(self) -> str:
        """Return a plain-text account of rows in, used, excluded (by reason) and out.

        Examples
        --------
        >>> import pandas as pd
        >>> rep = DataReport(rows_in=1, rows_used=1, rows_out=1, n_patients=1,
        ...                  n_therapists=1, sessions_per_patient=pd.Series({"a": 1}),
        ...                  excluded=pd.DataFrame(columns=list(EXCLUDED_COLUMNS)))
        >>> print(rep.summary().splitlines()[0])
        DataReport (level: session)
        """
        spp = self.sessions_per_patient
        lines = [
            f"DataReport (level: {self.level})",
            f"  rows in {self.rows_in} = used {self.rows_used} + excluded {self.n_excluded}; "
            f"rows out {self.rows_out}",
            f"  therapists {self.n_therapists}, patients {self.n_patients}",
        ]
        if len(spp):
            lines.append(
                f"  sessions per patient: min {int(spp.min())}, median {float(spp.median()):g}, "
                f"mean {float(spp.mean()):.2f}, max {int(spp.max())}"
            )
        if self.adherence:
            lines.append(f"  adherence: {self.adherence}")
        if self.columns:
            lines.append("  columns: " + ", ".join(f"{k} <- {v}" for k, v in self.columns.items()))
        if self.n_excluded:
            lines.append("  excluded rows by reason:")
            for reason, n in self.reasons().items():
                lines.append(f"    {int(n):>6}  {reason}")
        else:
            lines.append("  excluded rows: none")
        if self.n_incomplete_kept:
            lines.append(
                f"  {self.n_incomplete_kept} incomplete row(s) kept (drop_incomplete=False)"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
