"""The small fit interface that probing, plots and power runs talk to.

Every backend's result (``MixedFit``, ``OLSFit``, ``GEEFit``, ``BayesFit``) satisfies
:class:`FixedEffectsFit`, so :mod:`alliance_models.probing` is written once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..spec import ModelFrame, ModelSpec

__all__ = ["FixedEffectsFit"]


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

        Satterthwaite for mixed models, ``n - p`` for OLS, ``numpy.inf`` for
        z-based fits (GEE).
        """
        ...

    @property
    def fixed_draws(self) -> pd.DataFrame | None:
        """Posterior draws of the fixed effects, shape (n_draws, p); ``None`` if frequentist."""
        ...
