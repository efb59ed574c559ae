"""The small fit interface that probing, plots and power runs talk to.

Every backend's result (``MixedFit``, ``OLSFit``, ``GEEFit``, ``BayesFit``) satisfies
:class:`FixedEffectsFit`, so :mod:`alliance_models.probing` is written once.
It is the type probing is written against; nothing here imports probing.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..spec import ModelFrame, ModelSpec

__all__ = ["FixedEffectsFit", "StatsmodelsFitMixin"]


@runtime_checkable
class FixedEffectsFit(Protocol):
    """What probing needs from a fitted model.

    Attributes
    ----------
    spec : ModelSpec
        The parsed formula.
    frame : ModelFrame
        The encoded data the model was fitted to (``frame.fixed_design(newdata)``
        encodes new data the same way).
    params : Series
        Fixed-effect estimates indexed by formulaic column names
        (``"Intercept"``, ``"alliance"``, ``"alliance:autonomy"``, ...). For Bayesian
        fits, posterior means.
    """

    spec: ModelSpec
    frame: ModelFrame

    @property
    def params(self) -> pd.Series:
        """Fixed-effect estimates by term name."""
        ...

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the fixed effects (labelled like ``params``)."""
        ...

    def contrast_df(self, L: np.ndarray) -> float:
        """Denominator degrees of freedom for the contrast ``L @ params``.

        Satterthwaite or Kenward-Roger for mixed models, ``n - p`` for OLS, ``numpy.inf`` for
        z-based fits (GEE).
        """
        ...

    @property
    def fixed_draws(self) -> pd.DataFrame | None:
        """Posterior draws of the fixed effects, shape (n_draws, p); ``None`` if frequentist."""
        ...


class StatsmodelsFitMixin:
    """Shared read-only accessors of frequentist fits backed by a statsmodels result.

    The dataclass using it must have ``frame`` (:class:`ModelFrame`) and ``result`` (a
    statsmodels results object whose ``params`` follow ``frame.x_names``).
    """

    frame: ModelFrame
    result: Any
    vcov: pd.DataFrame

    def contrast_df(self, L: np.ndarray) -> float:  # pragma: no cover - defined by the fits
        """Denominator df, the same for every contrast in these fits."""
        raise NotImplementedError

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald intervals ``b +/- q se`` with columns ``lower``, ``upper``.

        ``q`` is the t quantile on the fit's df: ``n - p`` for OLS, infinite (z) for GEE.
        """
        from scipy import stats

        b = self.params
        se = np.sqrt(np.diag(self.vcov.to_numpy()))
        q = stats.t.ppf(1 - alpha / 2, self.contrast_df(np.ones(len(b))))
        return pd.DataFrame({"lower": b - q * se, "upper": b + q * se}, index=b.index)

    @property
    def params(self) -> pd.Series:
        """Coefficients by term name (log-odds scale for binomial GEE)."""
        values = np.asarray(self.result.params, dtype=np.float64)
        return pd.Series(values, index=list(self.frame.x_names))

    @property
    def fixed_draws(self) -> pd.DataFrame | None:
        """Always ``None`` (frequentist fit)."""
        return None

    @property
    def n_obs(self) -> int:
        """Rows used."""
        return self.frame.n_obs

    @property
    def n_dropped(self) -> int:
        """Rows excluded listwise for missing values in the model's columns."""
        return self.frame.n_dropped
