"""Checks of GLMM count data: whole, non-negative counts, successes within trials.

Errors name the column, the rows and the first offending value and say what is allowed;
rows with zero trials carry no information and are excluded (counted and reported by
:func:`zero_trial_rows`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...errors import DataValidationError, format_rows

__all__ = ["binomial_counts", "poisson_counts", "zero_trial_rows"]


def _whole_nonnegative(values: np.ndarray, index: pd.Index, column: str, what: str,
                       raw: np.ndarray | None = None) -> np.ndarray:
    shown = np.asarray(values if raw is None else raw, dtype=object)
    finite = np.isfinite(values)
    bad = ~finite
    bad[finite] = ~np.isclose(values[finite], np.round(values[finite]), rtol=0, atol=1e-8)
    if bad.any():
        first = shown[bad][0]
        first_s = f"{first:g}" if isinstance(first, float | np.floating | int) else repr(first)
        raise DataValidationError(
            f"column {column!r} ({what}) must hold whole-number counts; "
            f"{format_rows(list(index[bad]))}: {first_s}"
            + (" (the first)" if bad.sum() > 1 else "")
            + ("; the response holds successes, not proportions: multiply a proportion "
               "by its trials" if what == "successes" and np.all(values[finite] <= 1) else "")
        )
    neg = values < 0
    if neg.any():
        raise DataValidationError(
            f"column {column!r} ({what}) must be >= 0; {format_rows(list(index[neg]))}: "
            f"{float(values[neg][0]):g}" + (" (the first)" if neg.sum() > 1 else "")
        )
    return np.round(values)


def zero_trial_rows(data: pd.DataFrame, trials: str) -> pd.Index:
    """Rows of ``data`` whose ``trials`` value is zero (excluded from the fit).

    Examples
    --------
    >>> zero_trial_rows(pd.DataFrame({"n": [3, 0, 2, 0]}), "n").tolist()
    [1, 3]
    """
    n = pd.to_numeric(data[trials], errors="coerce")
    return data.index[(n == 0).to_numpy()]


def binomial_counts(
    y: np.ndarray, data: pd.DataFrame, response: str, trials: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trials as floats; 0/1 outcomes when ``trials`` is ``None``.

    Raises
    ------
    DataValidationError
        Non-numeric, non-integer or negative counts, zero trials left in, successes
        above trials, or (without ``trials``) an outcome other than 0/1.

    Examples
    --------
    >>> d = pd.DataFrame({"att": [2, 5], "sch": [4, 4]})
    >>> binomial_counts(np.array([2.0, 5.0]), d, "att", "sch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    alliance_models.errors.DataValidationError: response 'att' exceeds trials column ...
    """
    idx = data.index
    if trials is None:
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise DataValidationError(
                f"response {response!r} must be 0/1 without trials=; "
                f"{format_rows(list(idx[bad]))}: {y[bad][0]:g}" +
                (" (the first)" if bad.sum() > 1 else "") +
                "; for counts out of a denominator give trials='<column>' "
                "(e.g. attended out of trials='scheduled')"
            )
        return y.astype(float), np.ones_like(y, dtype=float)
    raw = data[trials].to_numpy()
    n = pd.to_numeric(data[trials], errors="coerce").to_numpy(dtype=float)
    n = _whole_nonnegative(n, idx, trials, "trials", raw=raw)
    y = _whole_nonnegative(np.asarray(y, dtype=float), idx, response, "successes")
    zero = n == 0
    if zero.any():  # pragma: no cover - fit_glmm removes them before building the frame
        raise DataValidationError(f"column {trials!r} has zero trials in "
                                  f"{format_rows(list(idx[zero]))}")
    over = y > n
    if over.any():
        k = int(np.flatnonzero(over)[0])
        raise DataValidationError(
            f"response {response!r} exceeds trials column {trials!r} in "
            f"{format_rows(list(idx[over]))} (first: {y[k]:g} successes of {n[k]:g}); "
            "successes must be between 0 and the number of trials"
        )
    return y, n


def poisson_counts(y: np.ndarray, data: pd.DataFrame, response: str) -> np.ndarray:
    """Whole, non-negative counts as floats.

    Examples
    --------
    >>> poisson_counts(np.array([0.0, 3.0]), pd.DataFrame({"k": [0, 3]}), "k").tolist()
    [0.0, 3.0]
    """
    return _whole_nonnegative(np.asarray(y, dtype=float), data.index, response, "counts")
