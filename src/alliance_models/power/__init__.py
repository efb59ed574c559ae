"""Power analysis for planned trials: design, simulator, Monte Carlo engine.

``alliance_models.power`` is both this subpackage (``am.power.analytic``,
``am.power.design`` ...) and, when called, :func:`alliance_models.power.engine.power`:
``am.power(design, formula, test=...)`` works whichever of the two a user touched first.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_SUBMODULES = ("analytic", "design", "engine", "simulate")


class _CallablePackage(types.ModuleType):
    """The package module, callable as :func:`alliance_models.power.engine.power`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .engine import power

        return power(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
