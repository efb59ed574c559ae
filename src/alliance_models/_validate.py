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

__all__ = ["mapping", "number", "one_of", "positive_int"]


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


def positive_int(name: str, value: Any, error: type[AllianceModelsError]) -> int:
    """Return ``value`` as an int >= 1 (bools refused), or raise ``error`` naming ``name``.

    Examples
    --------
    >>> from alliance_models.errors import ModelSpecError
    >>> positive_int("n_sims", 20, ModelSpecError)
    20
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
