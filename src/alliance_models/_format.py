"""How numbers and values are written as text: one rule for every table and message.

Model summaries, probing tables, the HTML report and error messages all format through
these functions, so a number reads the same wherever it is shown: four decimals (four
significant digits for values below 0.1, so that a small coefficient keeps its
precision), scientific notation below ``1e-3``, whole numbers (such as degrees of
freedom) without decimals, and a p-value below ``1e-12`` as ``<1e-12`` rather than a
misleading zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["P_COLUMNS", "fmt_cell", "fmt_num", "fmt_p", "fmt_value", "table_text"]

#: Column names whose values are p-values (formatted with :func:`fmt_p`).
P_COLUMNS = ("p", "p_hc", "Pr(>|t|)")


def fmt_num(v: float) -> str:
    """Format a number: 4 decimals (4 significant digits below 0.1), scientific below 1e-3.

    Whole numbers (counts, degrees of freedom) print without decimals and values below
    ``1e-12`` in magnitude as ``0``.

    Examples
    --------
    >>> [fmt_num(x) for x in (12.34567, 0.12345, 0.0067997, 0.0000123, 92.0, 1e-17)]
    ['12.3457', '0.1235', '0.006800', '1.230e-05', '92', '0']
    """
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a < 1e-12:
        return "0"
    if v.is_integer() and a < 1e9:
        return f"{v:.0f}"
    if a >= 1e-3:
        decimals = 4 if a >= 0.1 else 3 - math.floor(math.log10(a))
        return f"{v:.{decimals}f}"
    return f"{v:.3e}"


def fmt_p(v: float) -> str:
    """Format a p-value: like :func:`fmt_num`, but a p below ``1e-12`` reads ``<1e-12``.

    Examples
    --------
    >>> [fmt_p(x) for x in (0.0312, 2.6e-17, 0.0, 1.0)]
    ['0.03120', '<1e-12', '<1e-12', '1']
    """
    v = float(v)
    if math.isfinite(v) and 0.0 <= v < 1e-12:
        return "<1e-12"
    return fmt_num(v)


def table_text(frame: Any, *, index: bool = True) -> str:
    """Render a result table with :func:`fmt_num`, p-value columns with :func:`fmt_p`.

    Examples
    --------
    >>> import pandas as pd
    >>> print(table_text(pd.DataFrame({"t": [9.1], "p": [3e-18]}), index=False))
         t      p
    9.1000 <1e-12
    """
    p_cols = {c: fmt_p for c in frame.columns if c in P_COLUMNS}
    return str(frame.to_string(index=index, float_format=fmt_num, formatters=p_cols))


def fmt_cell(x: object, *, p_value: bool = False) -> str:
    """Format one table cell: missing as empty, numbers with :func:`fmt_num`, text as is.

    With ``p_value=True`` numbers are written with :func:`fmt_p`.

    Examples
    --------
    >>> [fmt_cell(x) for x in (None, float("nan"), True, 3, 0.5, "a")]
    ['', '', 'True', '3', '0.5000', 'a']
    >>> fmt_cell(3e-20, p_value=True)
    '<1e-12'
    """
    if x is None or (isinstance(x, float | np.floating) and np.isnan(x)):
        return ""
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return fmt_p(float(x)) if p_value else fmt_num(float(x))
    return str(x)


def fmt_value(v: object) -> str:
    """Write a data value as an error message quotes it: text quoted, whole floats as integers.

    Examples
    --------
    >>> [fmt_value(x) for x in (3.0, np.float64(2.5), np.int64(7), "p1", None)]
    ['3', '2.5', '7', "'p1'", 'None']
    """
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)
