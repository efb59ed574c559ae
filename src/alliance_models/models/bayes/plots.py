"""The diagnostic plots behind :meth:`BayesFit.plot <alliance_models.BayesFit.plot>`.

One function per kind of plot, each an ArviZ 1.x call on the fit's ``DataTree``; they
take the pieces of a fit they need (the data tree, family, fixed-effect names), not the
fit itself, so this module depends on ArviZ only and :class:`~alliance_models.BayesFit`
keeps the public method.
"""

from __future__ import annotations

from typing import Any

from ...errors import ModelSpecError

__all__ = ["PLOT_KINDS", "draw", "forest", "posterior", "predictive", "rank", "trace"]

#: The kinds accepted by ``BayesFit.plot``.
PLOT_KINDS = ("trace", "rank", "forest", "ppc", "prior_ppc", "posterior")


def draw(kind: str, dt: Any, *, family: str, x_names: tuple[str, ...],
         var_names: list[str], ci_prob: float) -> Any:
    """Draw plot ``kind`` of a fit's data tree ``dt`` (see ``BayesFit.plot``).

    Parameters
    ----------
    kind : str
        One of :data:`PLOT_KINDS`.
    dt : xarray.DataTree
        The fit's ArviZ data.
    family : str
        The model family (chooses the predictive check).
    x_names : tuple of str
        Fixed-effect names (chooses the forest plot's terms).
    var_names : list of str
        The reported parameters (trace and rank plots).
    ci_prob : float
        Probability of the HDIs drawn.

    Returns
    -------
    arviz.PlotCollection

    Raises
    ------
    ModelSpecError
        An unknown kind, or ``"prior_ppc"`` for a fit without prior predictive draws.
    """
    if kind not in PLOT_KINDS:
        raise ModelSpecError(f"plot kind {kind!r} is not known; use one of "
                             f"{', '.join(PLOT_KINDS)}")
    if kind == "trace":
        return trace(dt, var_names)
    if kind == "rank":
        return rank(dt, var_names)
    if kind == "forest":
        return forest(dt, x_names, ci_prob)
    if kind == "posterior":
        return posterior(dt, ci_prob)
    return predictive(dt, family, prior=kind == "prior_ppc")


def trace(dt: Any, var_names: list[str]) -> Any:
    """Traces and marginal densities, one row per coefficient."""
    import arviz as az

    # one row per coefficient: on a shared axis the intercept squashes the slopes
    return az.plot_trace_dist(dt, var_names=var_names, compact=False, backend="matplotlib")


def rank(dt: Any, var_names: list[str]) -> Any:
    """Rank plots of the chains (mixing)."""
    import arviz as az

    return az.plot_rank(dt, var_names=var_names, backend="matplotlib")


def forest_terms(x_names: tuple[str, ...]) -> list[str]:
    """Return the interaction terms, else the slopes, else every term (forest plot)."""
    inter = [n for n in x_names if ":" in n]
    return inter or [n for n in x_names if n != "Intercept"] or list(x_names)


def forest(dt: Any, x_names: tuple[str, ...], ci_prob: float) -> Any:
    """50% and ``ci_prob`` HDIs of the fixed effects chosen by :func:`forest_terms`."""
    import arviz as az

    return az.plot_forest(dt, var_names=["beta"], coords={"term": forest_terms(x_names)},
                          combined=True, ci_kind="hdi", ci_probs=[0.5, ci_prob],
                          backend="matplotlib")


def predictive(dt: Any, family: str, *, prior: bool) -> Any:
    """Posterior (or prior) predictive check: densities, or a rootogram for counts."""
    import arviz as az

    group = "prior_predictive" if prior else "posterior_predictive"
    if group not in dt.children:
        raise ModelSpecError("kind='prior_ppc' needs a fit made with prior_predictive=True")
    ppc = az.plot_ppc_dist if family == "gaussian" else az.plot_ppc_rootogram
    return ppc(dt, group=group, backend="matplotlib")


def posterior(dt: Any, ci_prob: float) -> Any:
    """Posterior densities of the fixed effects with ``ci_prob`` HDIs."""
    import arviz as az

    return az.plot_dist(dt, var_names=["beta"], ci_kind="hdi", ci_prob=ci_prob,
                        backend="matplotlib")
