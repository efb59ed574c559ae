"""Generalised estimating equations for clustered adherence (attended / scheduled).

``fit_gee("attended ~ alliance * age", data, trials="scheduled")`` fits a binomial GEE
with a logit link, an exchangeable working correlation within patient (or therapist)
and robust (sandwich) standard errors, via statsmodels ``GEE``. Tests are Wald z tests,
so :meth:`GEEFit.contrast_df` is infinite; estimates are log-odds, with odds ratios in
:meth:`GEEFit.summary` and :meth:`GEEFit.to_frame`.

Binomial data with ``trials``: the response is the number of successes (``attended``) or
a proportion; each row enters as the proportion ``y = successes / trials`` with variance
``phi * mu (1 - mu) / trials``, i.e. the working covariance of a cluster is
``phi A^1/2 R(rho) A^1/2`` with ``A = diag(mu (1 - mu) / trials)``, as in R geepack's
``geeglm(cbind(s, n - s) ~ ...)``. statsmodels' own ``weights=`` route is not used: it
weights one side of the estimating equation only, and its exchangeable moment estimator
indexes the weights by cluster number (wrong when trials vary). The exchangeable ``rho``
is the moment estimator ``sum_i sum_{j<k} r_ij r_ik / (phi * n_pairs)`` with Pearson
residuals ``r`` and ``phi = sum r^2 / N`` (no degrees-of-freedom corrections, like
geepack). With equal trials within clusters this reproduces geepack to about 1e-7;
with trials that vary within clusters the estimating equations are geepack's but its
estimate of ``rho`` differs (its estimator for that case is not documented), so results
differ in the third digit.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from .._format import fmt_num, table_text
from ..errors import (
    ConvergenceWarning,
    DataValidationError,
    FewClustersWarning,
    ModelSpecError,
    format_rows,
)
from ..formula import parse_formula
from ..spec import MIN_CLUSTERS, ModelFrame, ModelSpec
from .interface import StatsmodelsFitMixin


def _working_structure(kind: str, trials: np.ndarray) -> Any:
    """Exchangeable or independence working correlation with per-row binomial trials.

    The variance of row ``j`` is ``v(mu_j) / n_j`` (``n_j = 1`` without trials), so the
    working covariance is ``A^1/2 R A^1/2`` with ``A = diag(v(mu) / n)``; ``rho`` is the
    unweighted-by-df moment estimator on Pearson residuals (as R geepack).
    """
    from statsmodels.genmod.cov_struct import Exchangeable, Independence

    base = Exchangeable if kind == "exchangeable" else Independence

    class _Trials(base):  # type: ignore[valid-type, misc]
        def __init__(self, n: np.ndarray) -> None:
            super().__init__()
            self._trials = np.asarray(n, float)

        def initialize(self, model: Any) -> None:
            super().initialize(model)
            self._n_li = model.cluster_list(self._trials)

        def update(self, params: np.ndarray) -> None:
            if base is Independence:
                return
            m = self.model
            ssr = pairs = nobs = npairs = 0.0
            for i in range(m.num_group):
                mu, _ = m.cached_means[i]
                r = (m.endog_li[i] - mu) / np.sqrt(m.family.variance(mu) / self._n_li[i])
                ssr += float(r @ r)
                nobs += r.size
                pairs += 0.5 * (float(r.sum()) ** 2 - float(r @ r))
                npairs += 0.5 * r.size * (r.size - 1)
            if npairs == 0 or ssr == 0:
                self.dep_params = 0.0
                return
            phi = ssr / nobs
            # keep the working correlation positive definite for the largest cluster
            kmax = max(len(e) for e in m.endog_li)
            rho = pairs / (phi * npairs)
            self.dep_params = float(np.clip(rho, -1.0 / max(kmax - 1, 1) + 1e-6, 1 - 1e-6))

        def covariance_matrix_solve(
            self, expval: np.ndarray, index: int, stdev: np.ndarray, rhs: Any
        ) -> Any:
            return super().covariance_matrix_solve(
                expval, index, stdev / np.sqrt(self._n_li[index]), rhs
            )

    return _Trials(trials)

__all__ = ["GEEFit", "fit_gee"]


@dataclass(frozen=True, eq=False)
class GEEFit(StatsmodelsFitMixin):
    """Result of :func:`fit_gee` (satisfies ``FixedEffectsFit``).

    Attributes
    ----------
    spec : ModelSpec
        The formula as given (a ``(1 | g)`` term only names the clusters).
    frame : ModelFrame
        Encoded data (fixed part); ``frame.y`` is the proportion for binomial data.
    result : statsmodels GEEResults
        The underlying fit.
    family : str
        ``"binomial"`` (logit link) or ``"gaussian"`` (identity link).
    groups : str
        Column defining the clusters.
    trials : str or None
        Column of binomial denominators.
    cov_struct : str
        Working correlation: ``"exchangeable"`` or ``"independence"``.
    robust : bool
        Whether ``cov_params`` is the robust (sandwich) covariance.
    vcov : DataFrame
        The covariance used for inference.
    n_clusters : int
        Number of clusters.
    working_correlation : float
        Estimated exchangeable correlation (0 for independence).
    scale : float
        Estimated dispersion (statsmodels' ``scale``).
    alpha : float
        Level of reported CIs.
    """

    spec: ModelSpec
    frame: ModelFrame
    result: Any
    family: str
    groups: str
    trials: str | None
    cov_struct: str
    robust: bool
    vcov: pd.DataFrame
    n_clusters: int
    working_correlation: float
    scale: float
    alpha: float = 0.05

    @property
    def observed_response(self) -> np.ndarray:
        """Observed response on the response scale (proportions for binomial data)."""
        return np.asarray(self.frame.y, float)

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Map the linear predictor to the mean (logistic for binomial)."""
        eta = np.asarray(eta, float)
        return special.expit(eta) if self.family == "binomial" else eta

    def cov_params(self) -> pd.DataFrame:
        """Robust (sandwich) covariance, or the model-based one when ``robust=False``."""
        return self.vcov.copy()

    def contrast_df(self, L: np.ndarray) -> float:
        """Return ``numpy.inf``: GEE inference uses Wald z tests."""
        return float(np.inf)

    def to_frame(self) -> pd.DataFrame:
        """Coefficient table: estimate, se, z, p, CI (and odds ratios for binomial)."""
        b = self.params
        se = pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=b.index)
        z = b / se
        ci = self.conf_int(self.alpha)
        out = pd.DataFrame(
            {
                "estimate": b,
                "se": se,
                "z": z,
                "p": 2 * stats.norm.sf(np.abs(z)),
                "ci_lower": ci["lower"],
                "ci_upper": ci["upper"],
            }
        )
        if self.family == "binomial":
            out["odds_ratio"] = np.exp(b)
            out["or_lower"] = np.exp(ci["lower"])
            out["or_upper"] = np.exp(ci["upper"])
        return out

    def summary(self) -> str:
        """Text: model, clusters, working correlation, coefficient table with odds ratios."""
        link = "logit link, estimates in log-odds" if self.family == "binomial" else "identity"
        resp = (f"{self.spec.response} out of {self.trials}" if self.trials
                else self.spec.response)
        lines = [
            f"GEE ({self.family}, {link}): {self.spec.fixed_formula}",
            f"response: {resp}; n = {self.frame.n_obs} rows in {self.n_clusters} clusters "
            f"of {self.groups!r} (excluded for missing values: {self.frame.n_dropped})",
            f"working correlation: {self.cov_struct}"
            + (f" (rho = {fmt_num(self.working_correlation)})"
               if self.cov_struct == "exchangeable" else "")
            + f"; scale = {fmt_num(self.scale)}",
            f"standard errors: {'robust (sandwich)' if self.robust else 'model-based'}; "
            f"Wald z tests, {100 * (1 - self.alpha):g}% CI",
            "",
            table_text(self.to_frame()),
        ]
        return "\n".join(lines)


def _check_finite_gee(frame: ModelFrame, trials: str | None) -> None:
    """Infinite values cannot be fitted: name the column, rows and value."""
    extra = None
    if trials is not None and pd.api.types.is_numeric_dtype(frame.data[trials]):
        extra = {trials: np.asarray(frame.data[trials], float)}
    frame.check_finite(extra)


def _integer_valued(x: np.ndarray) -> np.ndarray:
    return np.isclose(x, np.round(x), rtol=0, atol=1e-8)


def _check_binomial(
    y: np.ndarray, n: np.ndarray | None, index: pd.Index, resp: str, trials: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate binomial data and return (proportion, weights)."""
    if n is None:
        bad = np.flatnonzero((y < 0) | (y > 1))
        if bad.size:
            raise DataValidationError(
                f"column {resp!r} has values outside [0, 1] in "
                f"{format_rows(list(index[bad]))} (e.g. {y[bad[0]]:g}); a binomial GEE "
                "without trials= needs 0/1 outcomes or proportions; give trials='<column>' "
                "for counts of successes"
            )
        return y, None
    bad = np.flatnonzero(~_integer_valued(n) | (n <= 0))
    if bad.size:
        raise DataValidationError(
            f"column {trials!r} must hold positive whole numbers of trials; "
            f"{format_rows(list(index[bad]))} have {n[bad[0]]:g}"
        )
    proportions = bool(np.all((y >= 0) & (y <= 1)) and not np.all(_integer_valued(y)))
    if proportions:
        return y, n
    bad = np.flatnonzero(y < 0)
    if bad.size:
        raise DataValidationError(
            f"column {resp!r} has negative counts in {format_rows(list(index[bad]))} "
            f"(e.g. {y[bad[0]]:g}); successes must lie in 0..{trials}"
        )
    bad = np.flatnonzero(~_integer_valued(y))
    if bad.size:
        raise DataValidationError(
            f"column {resp!r} mixes counts and fractions: {format_rows(list(index[bad]))} "
            f"have {y[bad[0]]:g}; give whole-number successes out of {trials!r}, or "
            "proportions in [0, 1]"
        )
    bad = np.flatnonzero(y > n)
    if bad.size:
        raise DataValidationError(
            f"column {resp!r} exceeds {trials!r} in {format_rows(list(index[bad]))} "
            f"(e.g. {y[bad[0]]:g} > {n[bad[0]]:g}); successes must lie in 0..{trials}"
        )
    return y / n, n


def fit_gee(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    trials: str | None = None,
    family: Literal["binomial", "gaussian"] = "binomial",
    groups: str | None = None,
    cov_struct: Literal["exchangeable", "independence"] = "exchangeable",
    robust: bool = True,
    alpha: float = 0.05,
    maxiter: int = 100,
) -> GEEFit:
    """Fit a GEE (binomial-logit or gaussian) with robust SEs to clustered data.

    Parameters
    ----------
    formula : str or ModelSpec
        Fixed-effects formula, e.g. ``"attended ~ alliance * age"``. A single
        ``(1 | g)`` term may name the clusters instead of ``groups=``. A ``ModelSpec``
        from :func:`alliance_models.parse_formula` is used as parsed.
    data : DataFrame
        Analysis data (one row per session).
    trials : str, optional
        Column of binomial denominators (``"scheduled"``). The response is then the
        number of successes (whole numbers in ``0..trials``) or a proportion (values in
        [0, 1] that are not all whole numbers). Without it a binomial response must be
        0/1 or a proportion.
    family : {"binomial", "gaussian"}, default "binomial"
        Binomial uses the logit link, gaussian the identity link.
    groups : str, optional
        Cluster column; default the ``(1 | g)`` term of the formula, else ``"patient"``.
    cov_struct : {"exchangeable", "independence"}, default "exchangeable"
        Working correlation within clusters.
    robust : bool, default True
        Robust (sandwich) covariance; ``False`` gives the model-based one (binomial:
        dispersion fixed at 1).
    alpha : float, default 0.05
        Level of reported CIs.
    maxiter : int, default 100
        Iteration cap of the GEE solver (at least 2: statsmodels does not flag a
        one-iteration fit whose working correlation was never used as unconverged).

    Returns
    -------
    GEEFit

    Raises
    ------
    DataValidationError
        Successes above trials, negative or fractional counts, non-positive trials,
        binomial outcomes outside [0, 1].
    ModelSpecError
        Unknown family or structure, random slopes or several random terms, a missing
        cluster column.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(0)
    >>> d = pd.DataFrame({"patient": np.repeat(np.arange(30), 4),
    ...                   "alliance": rng.normal(size=120), "scheduled": 4})
    >>> d["attended"] = rng.binomial(4, 1 / (1 + np.exp(-0.5 * d.alliance)))
    >>> fit = am.fit_gee("attended ~ alliance", d, trials="scheduled")
    >>> fit.n_clusters, fit.contrast_df(np.ones(2))
    (30, inf)
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning as SMConvergenceWarning

    if family not in ("binomial", "gaussian"):
        raise ModelSpecError(f"family={family!r} is not supported; use 'binomial' or 'gaussian'")
    if cov_struct not in ("exchangeable", "independence"):
        raise ModelSpecError(
            f"cov_struct={cov_struct!r} is not supported; use 'exchangeable' or 'independence'"
        )
    if not 0 < alpha < 1:
        raise ModelSpecError(f"alpha must lie in (0, 1), got {alpha!r}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 2:
        raise ModelSpecError(f"maxiter must be an integer >= 2, got {maxiter!r}")
    if not isinstance(data, pd.DataFrame):
        raise ModelSpecError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    spec = formula if isinstance(formula, ModelSpec) else parse_formula(formula)
    formula = spec.formula
    if spec.random:
        if len(spec.random) > 1 or spec.random[0].slopes or len(spec.random[0].factors) > 1:
            raise ModelSpecError(
                f"fit_gee takes at most one random-intercept term (1 | g) naming the clusters; "
                f"{formula!r} has {', '.join(str(t) for t in spec.random)}. GEE has one level "
                "of clustering: choose patient or therapist (or use fit_mixed / fit_bayes)"
            )
        g_formula = spec.random[0].group
        if groups is not None and groups != g_formula:
            raise ModelSpecError(
                f"groups={groups!r} contradicts the formula's cluster term "
                f"{spec.random[0]}; give one of them"
            )
        groups = g_formula
    if groups is None:
        if "patient" not in data.columns:
            raise ModelSpecError(
                "fit_gee needs a cluster column: give groups='<column>' or a (1 | g) term "
                "(the default 'patient' is not in the data)"
            )
        groups = "patient"
    if family == "gaussian" and trials is not None:
        raise ModelSpecError("trials= is for family='binomial'; a gaussian GEE has no trials")
    fixed_spec = parse_formula(spec.fixed_formula)
    extra = tuple(c for c in (groups, trials) if c is not None)
    spec.check_columns(data)
    for arg, col in (("groups", groups), ("trials", trials)):
        if col is not None and col not in data.columns:
            cols = [str(c) for c in data.columns]
            close = difflib.get_close_matches(str(col), cols, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise ModelSpecError(
                f"{arg}={col!r} is not a column of the data; {hint}"
                f"Available columns: {', '.join(cols)}"
            )
    frame = fixed_spec.build(data, extra=extra)
    _check_finite_gee(frame, trials)
    y = frame.y
    index = frame.data.index
    weights = None
    if family == "binomial":
        n = None
        if trials is not None:
            if not pd.api.types.is_numeric_dtype(frame.data[trials]):
                raise DataValidationError(
                    f"column {trials!r} (trials) must be numeric, got {frame.data[trials].dtype}"
                )
            n = np.asarray(frame.data[trials], float)
        y, weights = _check_binomial(y, n, index, spec.response, trials)
        if np.all(y == y[0]):
            raise DataValidationError(
                f"column {spec.response!r} has the same proportion ({y[0]:g}) in every row; "
                "a binomial model needs some variation in the outcome"
            )
        fam = sm.families.Binomial()
    else:
        fam = sm.families.Gaussian()
    frame = ModelFrame(
        spec=frame.spec,
        data=frame.data,
        y=np.asarray(y, float),
        X=frame.X,
        x_names=frame.x_names,
        n_dropped=frame.n_dropped,
        dropped_index=frame.dropped_index,
        fixed_model_spec=frame.fixed_model_spec,
    )
    codes, uniques = pd.factorize(frame.data[groups].astype(str), sort=True)
    n_clusters = len(uniques)
    if n_clusters < 2:
        raise ModelSpecError(
            f"cluster column {groups!r} has one level ({uniques[0]!r}); GEE needs many clusters"
        )
    if n_clusters < MIN_CLUSTERS:
        warnings.warn(
            f"only {n_clusters} clusters of {groups!r}: robust (sandwich) standard errors "
            f"are unreliable with fewer than {MIN_CLUSTERS} clusters (and biased downwards "
            "with fewer than about 40); consider fit_mixed or fit_bayes",
            FewClustersWarning,
            stacklevel=2,
        )
    n_trials = weights if weights is not None else np.ones(frame.n_obs)
    cs = _working_structure(cov_struct, n_trials)
    model = sm.GEE(frame.y, frame.X, groups=codes, family=fam, cov_struct=cs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(maxiter=maxiter, cov_type="robust" if robust else "naive")
    for w in caught:
        if issubclass(w.category, SMConvergenceWarning) or "converge" in str(w.message).lower():
            warnings.warn(
                f"GEE did not converge in {maxiter} iterations ({w.message}); try "
                "cov_struct='independence', rescale predictors, or raise maxiter",
                ConvergenceWarning,
                stacklevel=2,
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    names = list(frame.x_names)
    V = np.asarray(res.cov_params(), float)
    if not np.all(np.isfinite(V)) or not np.all(np.isfinite(res.params)):
        raise ModelSpecError(
            "GEE estimates are not finite (perfect separation or a degenerate design?); "
            "check the outcome against the predictors"
        )
    rho = float(np.atleast_1d(res.model.cov_struct.dep_params)[0]) if (
        cov_struct == "exchangeable") else 0.0
    return GEEFit(
        spec=spec,
        frame=frame,
        result=res,
        family=family,
        groups=groups,
        trials=trials,
        cov_struct=cov_struct,
        robust=robust,
        vcov=pd.DataFrame(V, index=names, columns=names),
        n_clusters=int(n_clusters),
        working_correlation=rho,
        scale=float(res.scale),
        alpha=alpha,
    )
