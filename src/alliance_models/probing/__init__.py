"""Probing interactions on any fit: simple slopes, Johnson-Neyman, conditional effects.

Every function works from the small fit interface of
:class:`alliance_models.models.interface.FixedEffectsFit` only (``params``,
``cov_params()``, ``contrast_df(L)``, ``fixed_draws``, ``frame``), so mixed, OLS, GEE
and Bayesian fits are probed by the same code. The mathematics is plain numpy in
:mod:`._core` (effect weights, exact Johnson-Neyman roots from ``(b, V, df)``, HDIs);
:mod:`.slopes`, :mod:`.johnson_neyman` and :mod:`.conditional` extract those inputs from
a fit and wrap the answers in result objects.
"""

from __future__ import annotations

from .conditional import ConditionalEffects, conditional_effects, plot_interaction
from .johnson_neyman import JohnsonNeyman, johnson_neyman
from .slopes import SimpleSlopes, simple_slopes

__all__ = [
    "ConditionalEffects",
    "JohnsonNeyman",
    "SimpleSlopes",
    "conditional_effects",
    "johnson_neyman",
    "plot_interaction",
    "simple_slopes",
]
