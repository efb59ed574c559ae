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
indexes the weights by cluster number (wrong when trials vary).

Working correlation (exchangeable or AR-1), ``cor_estimator=``:

- ``"geepack"`` (default): geepack 1.3.9's estimating equations (``src/gee2.cc``). With
  residuals ``r = (y - mu) / sqrt(v(mu))`` and trials ``n``, the dispersion is
  ``phi = sum n r^2 / sum n`` and every pair of rows of a cluster enters with weight
  ``n_j n_k``: exchangeable ``rho = sum n_j n_k r_j r_k / (phi sum n_j n_k)``; AR-1
  ``rho`` solves ``sum n_j n_k d rho^(d-1) (r_j r_k / phi - rho^d) = 0`` over all pairs,
  ``d`` = distance in waves. Estimates and SEs agree with ``geeglm`` to about 1e-8 and
  ``rho`` to 1e-7 at a tight geepack tolerance (``tests/test_gee_geepack.py``; at
  geepack's default tolerance, 1e-4, to its convergence, a few 1e-5).
- ``"moment"``: the Liang–Zeger moment estimator on Pearson residuals ``sqrt(n) r``,
  each row and each pair counted once: ``phi = sum n r^2 / N``, exchangeable ``rho`` the
  mean over pairs, AR-1 ``rho`` the mean over pairs one wave apart (``fit_gee``'s only
  estimator before the geepack one was added). For the exchangeable structure both
  coincide when every row has the same number of trials (binary and gaussian data
  included).

No degrees-of-freedom corrections in either (as geepack).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from .._format import fmt_num, table_text
from .._validate import integer, one_of, probability
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

CorEstimator = Literal["geepack", "moment"]
_STRUCTURES = ("exchangeable", "ar1", "independence")
_ESTIMATORS = ("geepack", "moment")


def working_dispersion(
    resid: Sequence[np.ndarray], trials: Sequence[np.ndarray], estimator: str = "geepack"
) -> float:
    """Dispersion ``phi`` that scales the residual products of the correlation estimator.

    ``resid`` are the residuals ``(y - mu) / sqrt(v(mu))`` of each cluster on the scale of
    one trial and ``trials`` the numbers of trials ``n`` (ones without trials). geepack
    (``src/gee2.cc``, ``update_gamma``) weights each row by ``n``:
    ``phi = sum n r^2 / sum n``; ``"moment"`` counts each row once:
    ``phi = sum n r^2 / N`` (the Pearson statistic over the number of rows). With one
    trial per row (or none) both are ``sum r^2 / N``; no degrees-of-freedom correction.

    Examples
    --------
    >>> r, n = [np.array([1.0, -1.0]), np.array([2.0])], [np.array([1.0, 3.0]), np.array([4.0])]
    >>> working_dispersion(r, n), working_dispersion(r, n, "moment")
    (2.5, 6.666666666666667)
    """
    num = sum(float(n @ (r * r)) for r, n in zip(resid, trials, strict=True))
    if estimator == "geepack":
        den = sum(float(n.sum()) for n in trials)
    else:
        den = sum(r.size for r in resid)
    return num / den if den > 0 else 0.0


def exchangeable_correlation(
    resid: Sequence[np.ndarray],
    trials: Sequence[np.ndarray],
    phi: float,
    estimator: str = "geepack",
) -> float:
    """Moment estimate of the exchangeable working correlation.

    geepack (``update_alpha`` with an identity correlation link): the products
    ``z_jk = r_j r_k / phi`` of every pair of rows of a cluster, weighted by
    ``n_j n_k``: ``rho = sum n_j n_k z_jk / sum n_j n_k``. ``"moment"`` (Liang and
    Zeger's estimator on Pearson residuals ``sqrt(n) r``, each pair counted once):
    ``rho = sum sqrt(n_j n_k) z_jk / n_pairs``. Clusters of one row add nothing.

    Examples
    --------
    >>> r, n = [np.array([1.0, 2.0, -1.0])], [np.array([1.0, 2.0, 1.0])]
    >>> exchangeable_correlation(r, n, 1.0), exchangeable_correlation(r, n, 1.0, "moment")
    (-0.2, -0.3333333333333333)
    """
    num = den = 0.0
    for r, n in zip(resid, trials, strict=True):
        if r.size < 2:
            continue
        a = n * r if estimator == "geepack" else np.sqrt(n) * r
        w = n if estimator == "geepack" else np.ones_like(n)
        num += 0.5 * (float(a.sum()) ** 2 - float(a @ a))
        den += 0.5 * (float(w.sum()) ** 2 - float(w @ w))
    if den == 0 or phi <= 0:
        return 0.0
    return num / (phi * den)


def ar1_correlation(
    resid: Sequence[np.ndarray],
    trials: Sequence[np.ndarray],
    waves: Sequence[np.ndarray],
    phi: float,
    estimator: str = "geepack",
    start: float = 0.0,
) -> float:
    """Estimate of the AR-1 working correlation ``corr(y_j, y_k) = rho^|t_j - t_k|``.

    geepack (``update_alpha`` with ``cor_rho_ar1``): ``rho`` solves
    ``sum n_j n_k d rho^(d - 1) (z_jk - rho^d) = 0`` over every pair of rows of a
    cluster, ``d = |t_j - t_k|`` and ``z_jk = r_j r_k / phi``, found by geepack's own
    Fisher-scoring step repeated from ``start`` to convergence. ``"moment"``: the mean
    of ``sqrt(n_j n_k) z_jk`` over pairs one wave apart (``d = 1``).

    Examples
    --------
    >>> r, n, t = [np.array([1.0, 1.0, 1.0])], [np.ones(3)], [np.array([1.0, 2.0, 3.0])]
    >>> round(ar1_correlation(r, n, t, 2.0), 9), ar1_correlation(r, n, t, 2.0, "moment")
    (0.589754512, 0.5)

    All three products are 0.5: the lag-1 mean is 0.5, while geepack's equation also
    fits ``rho^2`` to the lag-2 product (``1 - rho - 2 rho^3 = 0``).
    """
    if phi <= 0:
        return 0.0
    zs: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    ds: list[np.ndarray] = []
    for r, n, t in zip(resid, trials, waves, strict=True):
        if r.size < 2:
            continue
        j, k = np.triu_indices(r.size, 1)
        a = r if estimator == "geepack" else np.sqrt(n) * r
        zs.append(a[j] * a[k] / phi)
        ws.append(n[j] * n[k] if estimator == "geepack" else np.ones(j.size))
        ds.append(np.abs(t[k] - t[j]))
    if not zs:
        return 0.0
    z, w, d = np.concatenate(zs), np.concatenate(ws), np.concatenate(ds)
    if estimator != "geepack":
        one = d == 1
        return float(z[one].mean()) if one.any() else 0.0
    def equation(a: float) -> tuple[float, float]:
        # derivative of a^d; geepack sets it to 1 at d = 1 (also when a = 0)
        e = np.where(d == 1, 1.0, d * np.power(a, np.maximum(d - 1, 0)) * (d > 0))
        return float(w @ (e * (z - np.power(a, d)))), float(w @ (e * e))

    # geepack's Fisher-scoring step, halved when it does not shrink the estimating
    # equation (the plain step can jump between two values when rho is near 0)
    rho = float(np.clip(start, -1 + 1e-6, 1 - 1e-6))
    u, h = equation(rho)
    for _ in range(200):
        if h == 0:
            return 0.0
        step = u / h
        while True:
            new = float(np.clip(rho + step, -1 + 1e-6, 1 - 1e-6))
            u_new, h_new = equation(new)
            if abs(u_new) < abs(u) or abs(step) < 1e-14:
                break
            step /= 2
        converged = abs(new - rho) <= 1e-13
        rho, u, h = new, u_new, h_new
        if converged:
            break
    return rho


def _working_structure(
    kind: str,
    trials: np.ndarray,
    *,
    estimator: str = "geepack",
    waves: np.ndarray | None = None,
) -> Any:
    """Working correlation (independence, exchangeable, AR-1) with per-row binomial trials.

    The variance of row ``j`` is ``phi v(mu_j) / n_j`` (``n_j = 1`` without trials), so the
    working covariance of a cluster is ``phi A^1/2 R(rho) A^1/2`` with
    ``A = diag(v(mu) / n)``, as geepack's ``geeglm(cbind(s, n - s) ~ ...)`` (prior weights
    ``n``). ``rho`` is updated after every step of the mean parameters by
    :func:`exchangeable_correlation` or :func:`ar1_correlation`.
    """
    from statsmodels.genmod.cov_struct import CovStruct

    class _Working(CovStruct):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dep_params = 0.0
            self.dispersion = float("nan")
            self._trials = np.asarray(trials, float)
            self._waves = None if waves is None else np.asarray(waves, float)

        def initialize(self, model: Any) -> None:
            super().initialize(model)
            self._n_li = model.cluster_list(self._trials)
            if self._waves is None:
                self._t_li = [np.arange(1.0, len(e) + 1) for e in model.endog_li]
            else:
                self._t_li = model.cluster_list(self._waves)

        def update(self, params: np.ndarray) -> None:
            m = self.model
            resid = []
            for i in range(m.num_group):
                mu, _ = m.cached_means[i]
                resid.append((m.endog_li[i] - mu) / np.sqrt(m.family.variance(mu)))
            phi = working_dispersion(resid, self._n_li, estimator)
            self.dispersion = phi
            if kind == "exchangeable":
                rho = exchangeable_correlation(resid, self._n_li, phi, estimator)
                # keep the working correlation positive definite for the largest cluster
                kmax = max(len(e) for e in m.endog_li)
                rho = float(np.clip(rho, -1.0 / max(kmax - 1, 1) + 1e-6, 1 - 1e-6))
            elif kind == "ar1":
                rho = ar1_correlation(resid, self._n_li, self._t_li, phi, estimator,
                                      start=float(self.dep_params))
            else:
                rho = 0.0
            self.dep_params = rho

        def correlation(self, index: int) -> np.ndarray:
            t = self._t_li[index]
            rho = float(self.dep_params)
            if kind == "exchangeable":
                R = np.full((t.size, t.size), rho)
                np.fill_diagonal(R, 1.0)
                return R
            if kind == "ar1":
                return np.power(rho, np.abs(t[:, None] - t[None, :]))
            return np.eye(t.size)

        def covariance_matrix(self, expval: np.ndarray, index: int) -> tuple[np.ndarray, bool]:
            return self.correlation(index), True

        def covariance_matrix_solve(
            self, expval: np.ndarray, index: int, stdev: np.ndarray, rhs: Any
        ) -> Any:
            sd = stdev / np.sqrt(self._n_li[index])
            if kind == "independence":
                return [x / (sd**2 if x.ndim == 1 else (sd**2)[:, None]) for x in rhs]
            return super().covariance_matrix_solve(expval, index, sd, rhs)

        def summary(self) -> str:
            return f"{kind} working correlation, rho = {float(self.dep_params):.6g}"

    return _Working()


__all__ = [
    "GEEFit",
    "ar1_correlation",
    "exchangeable_correlation",
    "fit_gee",
    "working_dispersion",
]


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
        Working correlation: ``"exchangeable"``, ``"ar1"`` or ``"independence"``.
    robust : bool
        Whether ``cov_params`` is the robust (sandwich) covariance.
    vcov : DataFrame
        The covariance used for inference.
    n_clusters : int
        Number of clusters.
    working_correlation : float
        Estimated exchangeable correlation, or the lag-1 correlation of AR-1 (0 for
        independence).
    scale : float
        Estimated dispersion (statsmodels' ``scale``).
    alpha : float
        Level of reported CIs.
    cor_estimator : str
        Estimator of the working correlation: ``"geepack"`` or ``"moment"``.
    dispersion : float
        The dispersion ``phi`` that estimator used (geepack's ``gamma``, its "Estimated
        Scale Parameters").
    waves : str or None
        Column giving the position of rows within clusters (AR-1); ``None``: row order.
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
    cor_estimator: str = "geepack"
    dispersion: float = float("nan")
    waves: str | None = None

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
            + (f" (rho = {fmt_num(self.working_correlation)}, {self.cor_estimator} "
               f"estimator, dispersion {fmt_num(self.dispersion)})"
               if self.cov_struct != "independence" else "")
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


def _check_waves(
    frame: ModelFrame, waves: str, codes: np.ndarray, uniques: pd.Index, groups: str
) -> np.ndarray:
    """Numeric wave of every row, distinct within each cluster (else the error names it)."""
    col = frame.data[waves]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataValidationError(
            f"column {waves!r} (waves) must hold numbers (session numbers, times), "
            f"got dtype {col.dtype}"
        )
    t = np.asarray(col, float)
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise DataValidationError(
            f"column {waves!r} (waves) has non-finite values in "
            f"{format_rows(list(frame.data.index[bad]))}; allowed: finite numbers"
        )
    dup = pd.DataFrame({"g": codes, "t": t}).duplicated(keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)[:2]
        rows = format_rows(list(frame.data.index[first]))
        raise DataValidationError(
            f"column {waves!r} (waves) repeats the value {t[first[0]]:g} within cluster "
            f"{uniques[codes[first[0]]]!r} of {groups!r} ({rows}); "
            "each row of a cluster needs its own wave"
        )
    return t


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
    cov_struct: Literal["exchangeable", "ar1", "independence"] = "exchangeable",
    cor_estimator: CorEstimator = "geepack",
    waves: str | None = None,
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
    cov_struct : {"exchangeable", "ar1", "independence"}, default "exchangeable"
        Working correlation within clusters; ``"ar1"``: ``rho^|t_j - t_k|`` for rows at
        waves ``t_j``, ``t_k``.
    cor_estimator : {"geepack", "moment"}, default "geepack"
        Estimator of the working correlation: R geepack's (pairs of rows weighted by
        ``n_j n_k``, dispersion over the total number of trials; matches
        ``geepack::geeglm``) or the unweighted moment estimator (each row and pair
        counted once; AR-1 from pairs one wave apart). They differ only when the number
        of trials varies between rows (and for AR-1). See the module notes.
    waves : str, optional
        Column of the rows' positions within clusters (e.g. ``"session"``) for AR-1:
        distances are differences of its values, which must be distinct within a
        cluster. Default: the order of the rows within each cluster, 1, 2, ... (as
        geepack without ``waves``). geepack turns ``waves`` into factor codes, so a
        wave missing from every cluster is skipped there and counted here.
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

    one_of("family", family, ("binomial", "gaussian"), ModelSpecError, quote=True)
    one_of("cov_struct", cov_struct, _STRUCTURES, ModelSpecError, quote=True)
    one_of("cor_estimator", cor_estimator, _ESTIMATORS, ModelSpecError, quote=True)
    probability("alpha", alpha, ModelSpecError)
    integer("maxiter", maxiter, ModelSpecError, minimum=2)
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
    extra = tuple(c for c in (groups, trials, waves) if c is not None)
    spec.check_columns(data)
    for arg, col in (("groups", groups), ("trials", trials), ("waves", waves)):
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
    t = _check_waves(frame, waves, codes, uniques, groups) if waves is not None else None
    cs = _working_structure(cov_struct, n_trials, estimator=cor_estimator, waves=t)
    model = sm.GEE(frame.y, frame.X, groups=codes, family=fam, cov_struct=cs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a tight tolerance on the score: rho and the sandwich follow the converged means
        res = model.fit(maxiter=maxiter, ctol=1e-10,
                        cov_type="robust" if robust else "naive")
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
    rho = float(res.model.cov_struct.dep_params) if cov_struct != "independence" else 0.0
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
        cor_estimator=cor_estimator,
        dispersion=float(res.model.cov_struct.dispersion),
        waves=waves,
    )
