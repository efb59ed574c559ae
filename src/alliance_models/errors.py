"""The package's exception and warning tree.

Every error the package raises on purpose derives from :class:`AllianceModelsError`;
every warning from :class:`AllianceModelsWarning`. Messages name the column, the
row(s) and the offending value, and say what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AllianceModelsError",
    "AllianceModelsWarning",
    "ConvergenceWarning",
    "DataValidationError",
    "DesignError",
    "DiagnosticsWarning",
    "FewClustersWarning",
    "MissingDataWarning",
    "ModelSpecError",
    "SingularFitWarning",
    "format_rows",
]


class AllianceModelsError(Exception):
    """Base class of every error raised on purpose by alliance_models."""


class DataValidationError(AllianceModelsError, ValueError):
    """Input data break a rule: wrong type, out of range, duplicated, missing column."""


class ModelSpecError(AllianceModelsError, ValueError):
    """A formula, term name or model option cannot be used with the data given."""


class DesignError(AllianceModelsError, ValueError):
    """A planned-trial :class:`~alliance_models.Design` is inconsistent."""


class AllianceModelsWarning(UserWarning):
    """Base class of every warning issued by alliance_models."""


class ConvergenceWarning(AllianceModelsWarning):
    """An optimiser or sampler did not converge; the message says what to try."""


class SingularFitWarning(AllianceModelsWarning):
    """A variance component is estimated at (or next to) its boundary of zero."""


class FewClustersWarning(AllianceModelsWarning):
    """Too few clusters for stable variance-component estimates."""


class MissingDataWarning(AllianceModelsWarning):
    """Rows with missing values were excluded (listwise); the count is in the result."""


class DiagnosticsWarning(AllianceModelsWarning):
    """MCMC diagnostics (r_hat, ESS, divergences, Pareto k) failed their thresholds."""


def format_rows(rows: Sequence[object], limit: int = 5) -> str:
    """Format row labels for an error message, showing at most ``limit`` of them.

    Parameters
    ----------
    rows : sequence
        Row labels (index values) to report.
    limit : int, default 5
        How many to show before summarising the rest.

    Returns
    -------
    str
        E.g. ``"rows 3, 7, 9"`` or ``"rows 1, 2, 3, 4, 5 (and 12 more)"``.

    Examples
    --------
    >>> format_rows([3, 7])
    'rows 3, 7'
    >>> format_rows(list(range(8)))
    'rows 0, 1, 2, 3, 4 (and 3 more)'
    """
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    word = "row" if len(rows) == 1 else "rows"
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{word} {shown}{more}"
