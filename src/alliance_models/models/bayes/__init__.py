"""Bayesian moderation models with PyMC: the same lme4-style formula as ``fit_mixed``.

:func:`fit_bayes` fits a (generalised) linear mixed model with non-centred random
effects and returns a :class:`BayesFit`; :func:`compare` ranks fits by PSIS-LOO.

Modules, in the order a fit uses them:

- :mod:`.scaling`: standardisation of the design and outcome, and its exact inverse;
- :mod:`.priors`: the prior families, the defaults and the checks of user priors;
- :mod:`.build`: random-effects terms, the parameters with their priors, the PyMC model;
- :mod:`.fit`: :func:`fit_bayes`, :class:`BayesFit`, the data and sampling checks;
- :mod:`.plots`: the diagnostic plots behind :meth:`BayesFit.plot`;
- :mod:`.compare`: :func:`compare` and :class:`ComparisonResult`.
"""

from __future__ import annotations

from .compare import ComparisonResult, compare
from .fit import BayesFit, fit_bayes

__all__ = ["BayesFit", "ComparisonResult", "compare", "fit_bayes"]
