"""Model comparison of Bayesian fits by PSIS-LOO (``arviz.loo`` and ``arviz.compare``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...errors import DiagnosticsWarning, ModelSpecError
from .fit import BayesFit

__all__ = ["ComparisonResult", "compare"]


@dataclass(frozen=True, eq=False)
class ComparisonResult:
    """PSIS-LOO comparison of Bayesian fits made by :func:`compare`.

    Attributes
    ----------
    table : DataFrame
        ``arviz.compare`` output, best model first: ``rank``, ``elpd``, ``p``,
        ``elpd_diff``, ``weight``, ``se``, ``dse``, ``warning`` and further columns.
    loo : dict
        The ``arviz.loo`` result (pointwise, with Pareto k) of each model.
    n_high_k : dict of str to int
        Observations with Pareto k above ``pareto_k_max`` per model.
    pareto_k_max : float
        The threshold used.
    """

    table: pd.DataFrame
    loo: dict[str, Any]
    n_high_k: dict[str, int]
    pareto_k_max: float

    @property
    def best(self) -> str:
        """Name of the model with the highest expected log predictive density."""
        return str(self.table.index[0])

    def to_frame(self) -> pd.DataFrame:
        """Return the comparison table (a copy)."""
        return self.table.copy()

    def plot(self, path: str | Path | None = None) -> Any:
        """Plot the ELPD of each model with its SE (``arviz.plot_compare``), saved if asked.

        Returns
        -------
        The ArviZ plot object (a ``PlotCollection``).
        """
        import arviz as az

        pc = az.plot_compare(self.table, backend="matplotlib")
        if path is not None:
            pc.savefig(str(path))
        return pc

    def summary(self) -> str:
        """Return the comparison table with a one-line reading of it."""
        cols = [c for c in ("rank", "elpd", "p", "elpd_diff", "dse", "weight", "se")
                if c in self.table.columns]
        tab = self.table[cols].to_string(float_format=lambda v: f"{v:.3g}")
        lines = [f"PSIS-LOO comparison ({len(self.table)} models); best: {self.best}", tab]
        bad = {k: v for k, v in self.n_high_k.items() if v}
        if bad:
            lines.append(f"Pareto k > {self.pareto_k_max:g}: "
                         + ", ".join(f"{k}: {v} obs" for k, v in bad.items()))
        return "\n".join(lines)


def compare(models: dict[str, BayesFit], *, pareto_k_max: float = 0.7) -> ComparisonResult:
    """Compare Bayesian fits of the same outcome by PSIS-LOO (``arviz.compare``).

    Parameters
    ----------
    models : dict of str to BayesFit
        At least two fits to the same rows and outcome, e.g.
        ``{"moderated": b1, "additive": b0}``.
    pareto_k_max : float, default 0.7
        A :class:`~alliance_models.DiagnosticsWarning` names each model with observations
        whose Pareto k exceeds this (its LOO estimate is then unreliable).

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ModelSpecError
        Fewer than two models, something other than a BayesFit, or fits to different
        data.

    Examples
    --------
    >>> res = am.compare({"moderated": b1, "additive": b0})  # doctest: +SKIP
    >>> res.table[["elpd", "p", "elpd_diff", "dse"]]  # doctest: +SKIP
    """
    import arviz as az

    _check_comparable(models)
    names = list(models)
    loos: dict[str, Any] = {}
    n_high: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in names:
            loos[k] = az.loo(models[k].idata, pointwise=True)
            n_high[k] = int((np.asarray(loos[k].pareto_k) > pareto_k_max).sum())
        table = pd.DataFrame(az.compare({k: models[k].idata for k in names},
                                        round_to="none"))
    bad = {k: v for k, v in n_high.items() if v}
    if bad:
        warnings.warn(
            f"Pareto k > {pareto_k_max:g} (PSIS-LOO unreliable) for "
            + ", ".join(f"{k}: {v} of {models[k].frame.n_obs} observations"
                        for k, v in bad.items())
            + "; try moment matching or K-fold cross-validation, or check those "
            "observations for outliers",
            DiagnosticsWarning,
            stacklevel=2,
        )
    return ComparisonResult(table=table, loo=loos, n_high_k=n_high, pareto_k_max=pareto_k_max)


def _check_comparable(models: Any) -> None:
    """At least two BayesFit results, all fitted to the same rows and outcome."""
    if not isinstance(models, dict) or len(models) < 2:
        raise ModelSpecError("compare needs a dict of at least two named BayesFit results")
    for k, m in models.items():
        if not isinstance(m, BayesFit):
            raise ModelSpecError(f"model {k!r} is a {type(m).__name__}, not a BayesFit; "
                                 "LOO comparison needs Bayesian fits")
    names = list(models)
    ref = models[names[0]]
    for k in names[1:]:
        m = models[k]
        same = (m.frame.n_obs == ref.frame.n_obs and m.frame.data.index.equals(
            ref.frame.data.index) and np.array_equal(m.frame.y, ref.frame.y))
        if not same:
            raise ModelSpecError(
                f"models {names[0]!r} and {k!r} were fitted to different rows or outcomes "
                f"({ref.frame.n_obs} vs {m.frame.n_obs} observations); LOO comparison needs "
                "the same data"
            )
