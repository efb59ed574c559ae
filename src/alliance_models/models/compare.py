"""``am.compare``: one name for model comparison, dispatched on the kind of fit.

* Linear mixed fits (:class:`~alliance_models.MixedFit`, given as arguments or a dict):
  likelihood-ratio tests as lme4's ``anova(m0, m1)`` -- every REML fit is refitted by
  ML first (``refit=True``, lme4's default and the only valid choice when the fixed
  parts differ), the models are ordered by their number of parameters
  (``p + n_theta + 1``) and each is tested against the one before it with
  ``Chisq = 2 max(0, logLik_k - logLik_{k-1})`` on the difference in parameters.
  The chi-square reference is conservative when the smaller model puts a variance on
  its boundary (a test of a random term); the result says so.
* Binomial and Poisson mixed fits (:class:`~alliance_models.GLMMFit`): the same tests on
  their Laplace (or adaptive Gauss-Hermite) log-likelihoods, which are ML already
  (``npar = p + n_theta``, no residual variance), as lme4's ``anova`` of glmer fits.
  Every model must have the same family, trials and ``nAGQ``.
* Bayesian fits (a dict of :class:`~alliance_models.BayesFit`): PSIS-LOO, as before
  (:func:`alliance_models.models.bayes.compare.compare`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._format import table_text
from ..errors import ModelSpecError
from .glmm import GLMMFit
from .mixed import MixedFit, fit_mixed

__all__ = ["LikelihoodRatioTest", "compare"]


@dataclass(frozen=True, eq=False)
class LikelihoodRatioTest:
    """Likelihood-ratio tests of nested mixed models (lme4's ``anova(m0, m1)``).

    Attributes
    ----------
    table : DataFrame
        One row per model, fewest parameters first: ``npar, AIC, BIC, logLik, deviance,
        Chisq, Df, p`` (``Chisq``, ``Df`` and ``p`` test the model against the row
        above; NaN in the first row).
    formulas : dict of str to str
        The formula of each model.
    refitted : tuple of str
        The models that were refitted by ML.
    criterion : str
        ``"ML"`` or ``"REML"`` (only when ``refit=False`` and every fit is REML with
        the same fixed part).
    """

    table: pd.DataFrame
    formulas: dict[str, str]
    refitted: tuple[str, ...]
    criterion: str

    def to_frame(self) -> pd.DataFrame:
        """Return the comparison table (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Return the table with the formulas and the refit note."""
        lines = [f"Likelihood-ratio tests ({self.criterion} fits)"]
        lines += [f"  {k}: {v}" for k, v in self.formulas.items()]
        if self.refitted:
            lines.append(f"Refitted with ML (instead of REML): {', '.join(self.refitted)}")
        lines += ["", table_text(self.table)]
        lines.append(
            "Tests of a variance against zero are conservative on the chi-square "
            "reference (the null value lies on the boundary)."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def compare(*models: Any, refit: bool = True, pareto_k_max: float = 0.7) -> Any:
    """Compare fitted models: likelihood-ratio tests (mixed) or PSIS-LOO (Bayesian).

    Parameters
    ----------
    *models : MixedFit or GLMMFit, or one dict of name to MixedFit, GLMMFit or BayesFit
        Two or more linear mixed fits, or two or more binomial/Poisson mixed fits, of the
        same response and rows, or a dict of them; a dict of Bayesian fits is compared by
        PSIS-LOO.
    refit : bool, default True
        Refit REML fits by ML before comparing (as lme4). ``refit=False`` compares REML
        likelihoods, which is allowed only when every model has the same fixed part.
        Binomial and Poisson fits are ML fits; ``refit`` does not apply.
    pareto_k_max : float, default 0.7
        Bayesian fits only: the Pareto k threshold of the PSIS-LOO warnings.

    Returns
    -------
    LikelihoodRatioTest or ComparisonResult

    Raises
    ------
    ModelSpecError
        Fewer than two models, a mix of kinds, different responses or rows, or
        ``refit=False`` with REML fits whose fixed parts differ.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(2)
    >>> g = np.repeat(np.arange(15), 6)
    >>> d = pd.DataFrame({"g": g, "x": rng.normal(size=90)})
    >>> d["y"] = 0.5 * d.x + rng.normal(size=15)[g] + rng.normal(size=90)
    >>> m0 = am.fit_mixed("y ~ 1 + (1 | g)", d)
    >>> m1 = am.fit_mixed("y ~ x + (1 | g)", d)
    >>> lrt = am.compare(m0, m1)
    >>> lrt.table["Df"].tolist()[1], bool(lrt.table["p"].iloc[1] < 0.05)
    (1.0, True)
    """
    if len(models) == 1 and isinstance(models[0], dict):
        named = dict(models[0])
        if not any(isinstance(m, MixedFit | GLMMFit) for m in named.values()):
            from .bayes.compare import compare as bayes_compare

            return bayes_compare(named, pareto_k_max=pareto_k_max)
    else:
        named = {f"model{i + 1}": m for i, m in enumerate(models)}
    if len(named) < 2:
        raise ModelSpecError(f"compare needs at least two fitted models, got {len(named)}")
    kind = MixedFit if isinstance(next(iter(named.values())), MixedFit) else GLMMFit
    for name, m in named.items():
        if not isinstance(m, kind):
            raise ModelSpecError(
                f"model {name!r} is a {type(m).__name__}, not a {kind.__name__} like the "
                "first model; likelihood-ratio tests compare fit_mixed fits of one kind "
                "(linear, or binomial/Poisson), and Bayesian fits as a dict of BayesFit"
            )
    if kind is GLMMFit:
        _check_glmm_family(named)
    return _lrt(named, refit)


def _check_glmm_family(named: dict[str, Any]) -> None:
    """Every GLMM fit has the first one's family, trials and nAGQ (comparable logLik)."""
    first_name, first = next(iter(named.items()))
    for name, m in named.items():
        for what in ("family", "n_agq"):
            if getattr(m, what) != getattr(first, what):
                raise ModelSpecError(
                    f"model {name!r} has {what}={getattr(m, what)!r} but {first_name!r} has "
                    f"{getattr(first, what)!r}; their log-likelihoods are not comparable: "
                    f"fit every model with the same {'nAGQ' if what == 'n_agq' else what}"
                )
        n0 = first.frame.data[first.trials].to_numpy(float) if first.trials else None
        n1 = m.frame.data[m.trials].to_numpy(float) if m.trials else None
        same = n0 is None and n1 is None or (
            n0 is not None and n1 is not None and np.array_equal(n0, n1))
        if not same:
            raise ModelSpecError(
                f"model {name!r} was fitted with other trials than {first_name!r} "
                f"({m.trials!r} vs {first.trials!r}); compare fits of the same counts"
            )


def _lrt(named: dict[str, Any], refit: bool) -> LikelihoodRatioTest:
    first = next(iter(named.values()))
    for name, m in named.items():
        if m.spec.response != first.spec.response or m.n_obs != first.n_obs or not (
            np.array_equal(m.frame.y, first.frame.y)
        ):
            raise ModelSpecError(
                f"model {name!r} was not fitted to the same rows of the same response as "
                f"{next(iter(named))!r} ({m.spec.response!r}, {m.n_obs} rows vs "
                f"{first.spec.response!r}, {first.n_obs} rows); fit every model to the "
                "same data with the same missing-value exclusions"
            )
    refitted = []
    fits = {}
    glmm = isinstance(first, GLMMFit)
    reml = [bool(getattr(m, "reml", False)) for m in named.values()]
    if glmm:
        fits = dict(named)
        criterion = "ML (Laplace)" if first.n_agq == 1 else f"ML (nAGQ = {first.n_agq})"
    elif refit:
        for name, m in named.items():
            if m.reml:
                ddf = "satterthwaite" if m.ddf == "kenward-roger" else m.ddf
                fits[name] = fit_mixed(m.spec, m.frame.data, reml=False, ddf=ddf)
                refitted.append(name)
            else:
                fits[name] = m
        criterion = "ML"
    else:
        if any(reml) and not all(reml):
            raise ModelSpecError(
                "some models are REML fits and some ML fits; use refit=True or fit all "
                "with the same criterion"
            )
        fixed = {tuple(m.fixed.index) for m in named.values()}
        if all(reml) and len(fixed) > 1:
            raise ModelSpecError(
                "REML likelihoods of models with different fixed effects are not "
                "comparable; use refit=True (ML, as lme4) or fit with reml=False"
            )
        fits = dict(named)
        criterion = "REML" if all(reml) else "ML"
    rows = []
    for name, m in fits.items():
        npar = len(m.fixed) + m.theta.size + (0 if glmm else 1)
        rows.append((name, float(npar), m.aic, m.bic, m.loglik, -2.0 * m.loglik))
    tab = pd.DataFrame(rows, columns=["model", "npar", "AIC", "BIC", "logLik", "deviance"])
    tab = tab.sort_values("npar", kind="stable").set_index("model")
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(tab["logLik"].to_numpy()))]
    dfc = np.r_[np.nan, np.diff(tab["npar"].to_numpy())]
    with np.errstate(invalid="ignore"):
        p = np.where(dfc > 0, stats.chi2.sf(chisq, np.where(dfc > 0, dfc, 1.0)), np.nan)
    tab["Chisq"], tab["Df"], tab["p"] = chisq, dfc, p
    tab.index.name = None
    return LikelihoodRatioTest(
        table=tab,
        formulas={k: m.spec.formula for k, m in named.items()},
        refitted=tuple(refitted),
        criterion=criterion,
    )
