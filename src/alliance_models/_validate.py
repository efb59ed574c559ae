"""Parameter checks shared by the public functions: one rule each, one message each.

Each check returns the value in its canonical type or raises the caller's error class
(``DesignError``, ``ModelSpecError`` ...) with a message that names the parameter, shows
the value and says what is allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AllianceModelsError

__all__ = ["integer", "interval", "mapping", "number", "one_of", "positive_int", "probability"]


def number(name: str, value: Any, error: type[AllianceModelsError]) -> float:
    """Return ``value`` as a finite float, or raise ``error`` naming ``name``.

    Examples
    --------
    >>> from alliance_models.errors import DesignError
    >>> number("alpha", 1, DesignError)
    1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def integer(name: str, value: Any, error: type[AllianceModelsError], *,
            minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum`` (bools refused), or raise ``error``.

    The message names ``name``, shows the value and states the bound ("a positive
    integer" for ``minimum=1``, "a non-negative integer" for 0).

    Examples
    --------
    >>> from alliance_models.errors import ModelSpecError
    >>> integer("maxiter", 25, ModelSpecError, minimum=2)
    25
    >>> integer("bootstrap", -1, ModelSpecError)
    Traceback (most recent call last):
    ...
    alliance_models.errors.ModelSpecError: bootstrap must be a non-negative integer, got -1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise error(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any, error: type[AllianceModelsError]) -> int:
    """Return ``value`` as an int >= 1 (bools refused), or raise ``error`` naming ``name``.

    Examples
    --------
    >>> from alliance_models.errors import ModelSpecError
    >>> positive_int("n_sims", 20, ModelSpecError)
    20
    """
    return integer(name, value, error, minimum=1)


def interval(name: str, value: Any, lo: float, hi: float, error: type[AllianceModelsError],
             *, closed: str = "neither") -> float:
    """Return ``value`` as a float inside the interval ``lo``..``hi``, or raise ``error``.

    ``closed`` is ``"neither"`` (open interval), ``"left"``, ``"right"`` or ``"both"``;
    the message writes the interval in bracket notation, e.g. ``(0, 1)`` or ``[0.5, 1)``.

    Examples
    --------
    >>> from alliance_models.errors import ModelSpecError
    >>> interval("target_accept", 0.9, 0.5, 1.0, ModelSpecError, closed="left")
    0.9
    >>> interval("alpha", 1.5, 0, 1, ModelSpecError)
    Traceback (most recent call last):
    ...
    alliance_models.errors.ModelSpecError: alpha must lie in (0, 1), got 1.5
    """
    left = closed in ("left", "both")
    right = closed in ("right", "both")
    shown = f"{'[' if left else '('}{lo:g}, {hi:g}{']' if right else ')'}"
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (lo <= v if left else lo < v) and (v <= hi if right else v < hi)
    if not ok:
        raise error(f"{name} must lie in {shown}, got {value!r}")
    return float(value)


def probability(name: str, value: Any, error: type[AllianceModelsError]) -> float:
    """Return a level such as ``alpha`` as a float in the open interval (0, 1).

    Examples
    --------
    >>> from alliance_models.errors import ModelSpecError
    >>> probability("alpha", 0.05, ModelSpecError)
    0.05
    """
    return interval(name, value, 0.0, 1.0, error)


def one_of(name: str, value: Any, allowed: Iterable[str], error: type[AllianceModelsError],
           *, quote: bool = False) -> Any:
    """Return ``value`` if it is one of ``allowed``, or raise ``error`` listing them.

    Examples
    --------
    >>> from alliance_models.errors import DesignError
    >>> one_of("family", "gaussian", ("gaussian", "binomial"), DesignError)
    'gaussian'
    """
    choices = tuple(allowed)
    if value not in choices:
        shown = ", ".join(repr(c) if quote else str(c) for c in choices)
        raise error(f"{name} {value!r} is unknown; allowed: {shown}")
    return value


def mapping(name: str, value: Any, example: str,
            error: type[AllianceModelsError]) -> dict[str, Any]:
    """Return ``value`` as a dict (None as empty), or raise ``error`` naming ``name``.

    Examples
    --------
    >>> from alliance_models.errors import DesignError
    >>> mapping("effects", None, "{'alliance': 0.25}", DesignError)
    {}
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error(f"{name} must be a mapping such as {example}, got {value!r}")
    return dict(value)
