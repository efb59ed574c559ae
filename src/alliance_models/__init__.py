"""alliance_models: therapeutic alliance, adherence and their moderators.

The public API is re-exported here and loaded lazily, so ``import alliance_models``
stays fast even though the Bayesian backend imports PyMC.

Examples
--------
>>> import alliance_models as am
>>> spec = am.parse_formula("adherence ~ alliance * age + (1 | therapist/patient)")
>>> [str(t) for t in spec.random]
['(1 | therapist)', '(1 | therapist:patient)']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AllianceModelsError,
    AllianceModelsWarning,
    ConvergenceWarning,
    DataValidationError,
    DesignError,
    DiagnosticsWarning,
    FewClustersWarning,
    MissingDataWarning,
    ModelSpecError,
    SingularFitWarning,
)
from .formula import parse_formula
from .spec import ModelFrame, ModelSpec, RandomTerm

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    # data adapters and instruments
    "read_data": "alliance_models.data.readers",
    "read_redcap": "alliance_models.data.readers",
    "score": "alliance_models.instruments",
    "register_instrument": "alliance_models.instruments",
    "get_instrument": "alliance_models.instruments",
    "list_instruments": "alliance_models.instruments",
    "Instrument": "alliance_models.instruments",
    "prepare": "alliance_models.data.prepare",
    "DataReport": "alliance_models.data.data_report",
    "datasets": "alliance_models.datasets",
    # frequentist models
    "fit_mixed": "alliance_models.models.mixed",
    "MixedFit": "alliance_models.models.mixed",
    "GLMMFit": "alliance_models.models.glmm",
    "fit_ols": "alliance_models.models.ols",
    "OLSFit": "alliance_models.models.ols",
    "fit_gee": "alliance_models.models.gee",
    "GEEFit": "alliance_models.models.gee",
    # Bayesian
    "fit_bayes": "alliance_models.models.bayes",
    "BayesFit": "alliance_models.models.bayes",
    "compare": "alliance_models.models.compare",
    "LikelihoodRatioTest": "alliance_models.models.compare",
    "ComparisonResult": "alliance_models.models.bayes",
    # probing and plots
    "simple_slopes": "alliance_models.probing",
    "johnson_neyman": "alliance_models.probing",
    "conditional_effects": "alliance_models.probing",
    "SimpleSlopes": "alliance_models.probing",
    "JohnsonNeyman": "alliance_models.probing",
    "ConditionalEffects": "alliance_models.probing",
    "plot_interaction": "alliance_models.probing",
    "plot_johnson_neyman": "alliance_models.plots",
    "plot_power_curve": "alliance_models.plots",
    "plot_cost_frontier": "alliance_models.plots",
    "plot_scenario_power": "alliance_models.plots",
    # planning trials
    "Design": "alliance_models.planning.design",
    "simulate": "alliance_models.planning.simulate",
    "power": "alliance_models.planning.run",
    "power_curve": "alliance_models.planning.search",
    "sample_size": "alliance_models.planning.search",
    "PowerResult": "alliance_models.planning.results",
    "MultiPowerResult": "alliance_models.planning.multitest",
    "PowerCurve": "alliance_models.planning.results",
    "SampleSizeResult": "alliance_models.planning.results",
    "JointSampleSizeResult": "alliance_models.planning.results",
    "ScenarioResult": "alliance_models.planning.results",
    "ScenarioCurve": "alliance_models.planning.results",
    "Scenario": "alliance_models.planning.scenarios",
    # closed-form power (what ``alliance_models.power.analytic`` held)
    "design_power": "alliance_models.planning.analytic",
    "design_effect": "alliance_models.planning.analytic",
    "cluster_randomised_power": "alliance_models.planning.analytic",
    "cluster_randomised_se": "alliance_models.planning.analytic",
    "cluster_randomised_therapists": "alliance_models.planning.analytic",
    "noncentral_t_power": "alliance_models.planning.analytic",
    "cluster_randomised_optimum": "alliance_models.planning.analytic",
    "optimal_caseload": "alliance_models.planning.analytic",
    # report
    "report": "alliance_models.reporting.html",
}

__all__ = [
    "AllianceModelsError",
    "AllianceModelsWarning",
    "ConvergenceWarning",
    "DataValidationError",
    "DesignError",
    "DiagnosticsWarning",
    "FewClustersWarning",
    "MissingDataWarning",
    "ModelFrame",
    "ModelSpec",
    "ModelSpecError",
    "RandomTerm",
    "SingularFitWarning",
    "parse_formula",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name == "datasets" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alliance_models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    pass
