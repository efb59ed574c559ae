"""The TOML front end of ``alliance-models power``: a design file becomes a power run.

The file has a ``[design]`` table (the :class:`~alliance_models.Design` fields;
``effects`` and ``moderators`` as sub-tables, tuples as arrays), an ``[analysis]`` table
(``formula``, ``test`` and the other arguments of :func:`alliance_models.power`) and an
optional ``[curve]`` table for :func:`alliance_models.power_curve`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..errors import DesignError
from ..planning.design import Design
from ..planning.multitest import MultiPowerResult
from ..planning.results import PowerCurve, PowerResult
from ..planning.run import power
from ..planning.search import power_curve

__all__ = ["design_from_toml", "run_power_file"]


def design_from_toml(table: Mapping[str, Any]) -> Design:
    """Return the :class:`Design` of a ``[design]`` table (TOML arrays become tuples)."""
    kw: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, list) and k in ("therapists", "alliance_components", "dropout",
                                          "age_distribution", "sessions",
                                          "patients_per_therapist"):
            v = tuple(v)
        kw[k] = v
    try:
        return Design(**kw)
    except TypeError as err:
        from dataclasses import fields as dc_fields

        names = ", ".join(f.name for f in dc_fields(Design))
        raise DesignError(f"[design] has an unknown key ({err}); allowed keys: {names}") from None


def run_power_file(path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
                   ) -> PowerResult | MultiPowerResult | PowerCurve:
    """Run the power analysis described in a TOML design file.

    The file has a ``[design]`` table (the :class:`Design` fields; ``effects`` and
    ``moderators`` as sub-tables, tuples as arrays), an ``[analysis]`` table (``formula``,
    ``test``, and optionally ``n_sims``, ``method``, ``seed``, ``alpha``, ``n_jobs``,
    ``backend``, ``batch_size``, ``checkpoint``) and an optional ``[curve]`` table with
    ``vary = { therapists = [20, 30, 40] }``. ``test`` may be an array of coefficients
    tested together, with ``correction = "holm"`` (``"bonferroni"``, ``"bh"``; none
    when absent).

    Parameters
    ----------
    path : path
        The TOML file.
    out : path, optional
        Where to save the curve plot (PNG/PDF/SVG) when the file has a ``[curve]``.

    Returns
    -------
    PowerResult, MultiPowerResult or PowerCurve
        ``MultiPowerResult`` (or a curve of them) when ``test`` is an array.

    Raises
    ------
    DesignError
        Missing tables or keys, unknown keys, an invalid design.

    Examples
    --------
    >>> from alliance_models.cli.power_file import run_power_file
    >>> res = run_power_file("examples/design.toml")  # doctest: +SKIP
    >>> print(res.summary())  # doctest: +SKIP
    """
    import tomllib

    p = Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise DesignError(f"design file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise DesignError(f"design file {str(p)!r} is not valid TOML: {err}") from None
    for section in ("design", "analysis"):
        if section not in doc:
            raise DesignError(f"design file {str(p)!r} has no [{section}] table")
    design = design_from_toml(doc["design"])
    ana = dict(doc["analysis"])
    missing = [k for k in ("formula", "test") if k not in ana]
    if missing:
        raise DesignError(f"[analysis] in {str(p)!r} needs {', '.join(missing)}")
    allowed = {"formula", "test", "n_sims", "method", "seed", "alpha", "n_jobs", "backend",
               "batch_size", "checkpoint", "progress", "fit_kwargs", "rule", "threshold",
               "rope", "bayes_kwargs", "correction"}
    unknown = sorted(set(ana) - allowed)
    if unknown:
        raise DesignError(f"[analysis] has unknown keys {unknown}; allowed: {sorted(allowed)}")
    formula, test = ana.pop("formula"), ana.pop("test")
    if not isinstance(test, str | list):
        raise DesignError(
            f"[analysis] test must be a coefficient name or an array of them, got {test!r}")
    if "correction" in ana and ana["correction"] == "none":
        ana["correction"] = None  # TOML has no null
    if "checkpoint" in ana and not Path(ana["checkpoint"]).is_absolute():
        ana["checkpoint"] = str(p.parent / ana["checkpoint"])
    if "curve" in doc:
        vary = doc["curve"].get("vary")
        if not isinstance(vary, Mapping):
            raise DesignError(
                "[curve] needs vary = { therapists = [20, 30, 40] } (one design field)")
        curve = cast(PowerCurve, power_curve(design, formula, test=test, vary=vary, **ana))
        if out is not None:
            import matplotlib.pyplot as plt

            ax = curve.plot()
            ax.figure.savefig(out, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
        return curve
    return cast(PowerResult, power(design, formula, test=test, **ana))
