"""Linear mixed models with lme4-style formulas and Satterthwaite df (lmerTest-like).

:func:`fit_mixed` parses the formula once (:func:`alliance_models.formula.parse_formula`),
encodes the data (:meth:`ModelSpec.build`) and fits by REML (or ML):

1. The **numpy core** (:mod:`alliance_models.models.lmm.dense`, lme4's parameterisation)
   minimises the exact profiled REML/ML criterion from lme4's start with the analytic
   gradient: the optimiser (bounded L-BFGS-B by default), then Newton steps until
   ``max |gradient| < 1e-8``. A fit counts as converged when the projected gradient is
   below ``1e-6``. The core works block by block (one block of random effects per
   therapist for nested factors); crossed factors form one dense block.
2. Optimisers are tried in turn (``lbfgs -> bfgs -> powell -> nm``) until one converges;
   :attr:`MixedFit.optimizer` records which.
3. The **boundary/optimum search** shared with the batched power engine
   (:mod:`alliance_models.models.lmm.search`) moves the solution to a better optimum on
   a face (a variance at zero) or inside when there is one.

Inference: ``vcov(beta) = sigma^2 (X' W^{-1} X)^{-1}``; denominator df by Satterthwaite's
method in lmerTest's parameterisation ``(theta, sigma)`` with an analytic Jacobian of
``vcov(beta)`` and the Hessian of the deviance computed once, so
:meth:`MixedFit.contrast_df` is cheap for any contrast.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._format import fmt_num, table_text
from .._validate import one_of, probability
from ..errors import ConvergenceWarning, ModelSpecError, SingularFitWarning
from ..formula import parse_formula
from ..spec import ModelFrame, ModelSpec, RandomTerm
from .glmm import GLMMFit, fit_glmm
from .lmm import dense, kenward_roger, satterthwaite, search

__all__ = ["MixedFit", "fit_mixed"]

OPTIMIZERS = ("lbfgs", "bfgs", "powell", "nm")
DDF_METHODS = ("satterthwaite", "kenward-roger", "residual", "none")
#: A fit is accepted when max |projected gradient of the profiled deviance| is below this.
CONVERGED_GRAD = 1e-6


@dataclass(frozen=True, eq=False)
class MixedFit:
    """A fitted linear mixed model.

    Attributes
    ----------
    spec : ModelSpec
        The parsed formula.
    frame : ModelFrame
        The encoded data (complete cases).
    reml : bool
        REML (``True``) or ML fit.
    ddf : str
        ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"`` (``n - p``) or
        ``"none"`` (z tests).
    fixed : DataFrame
        One row per fixed effect: ``estimate, se, df, t, p, ci_lower, ci_upper`` (95%).
        With ``ddf="kenward-roger"`` the SEs come from the adjusted covariance.
    vcov : DataFrame
        Covariance of the fixed effects: ``sigma^2 (X' W^{-1} X)^{-1}``, or Kenward and
        Roger's adjusted covariance ``Phi_A`` (pbkrtest's ``vcovAdj``) with
        ``ddf="kenward-roger"``.
    varcomp : DataFrame
        Variance components like lme4's ``as.data.frame(VarCorr(fit))``: columns
        ``group, var1, var2, vcov, sdcor`` (variances with SDs; covariances with
        correlations; ``Residual`` last).
    icc : DataFrame
        For intercept-only random parts: per grouping expression its variance, its share
        of the total variance and the ICC (correlation of two observations sharing that
        level: the sum of the variances of the grouping expressions it is nested in,
        itself included, over the total). Empty when there are random slopes.
    r2_marginal, r2_conditional : float
        Nakagawa & Schielzeth (2013) R2, with Johnson's (2014) random-slope extension.
    loglik : float
        Log-likelihood (REML criterion times -1/2 for REML fits).
    aic, bic : float
        From ``loglik`` with ``p + n_theta + 1`` parameters. Under REML they cannot
        compare models with different fixed effects: refit with ``reml=False``.
    n_obs : int
        Rows used.
    n_groups : dict of str to int
        Levels per grouping expression.
    n_dropped : int
        Rows excluded listwise for missing values.
    optimizer : str
        The optimiser that converged (or the last one tried).
    converged : bool
        Whether the projected gradient fell below ``1e-6``.
    grad_max : float
        ``max |projected gradient|`` of the profiled deviance at the estimate.
    singular : bool
        lme4's ``isSingular`` verdict (a relative SD ``theta`` below ``1e-4``).
    theta : ndarray
        Relative covariance parameters (lme4's ``getME(fit, "theta")``).
    sigma : float
        Residual SD.
    random_effects : dict of str to DataFrame
        Conditional modes (BLUPs) per random term, one row per level.
    sm_result : None
        Always ``None``: fits no longer start from a statsmodels MixedLM (the numpy core
        reaches lme4's optimum from lme4's start); kept so existing code still runs.
    messages : tuple of str
        The diagnostics warned about during the fit.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 8)
    >>> df = pd.DataFrame({"therapist": g, "alliance": rng.normal(size=80)})
    >>> df["adherence"] = 0.3 * df.alliance + rng.normal(size=10)[g] + rng.normal(size=80)
    >>> fit = am.fit_mixed("adherence ~ alliance + (1 | therapist)", df)
    >>> fit.to_frame().columns.tolist()
    ['estimate', 'se', 'df', 't', 'p', 'ci_lower', 'ci_upper']
    >>> fit.varcomp.group.tolist()
    ['therapist', 'Residual']
    >>> bool(fit.converged), fit.singular
    (True, False)
    """

    spec: ModelSpec
    frame: ModelFrame
    reml: bool
    ddf: str
    fixed: pd.DataFrame
    vcov: pd.DataFrame
    varcomp: pd.DataFrame
    icc: pd.DataFrame
    r2_marginal: float
    r2_conditional: float
    loglik: float
    aic: float
    bic: float
    n_obs: int
    n_groups: dict[str, int]
    n_dropped: int
    optimizer: str
    converged: bool
    grad_max: float
    singular: bool
    theta: np.ndarray
    sigma: float
    random_effects: dict[str, pd.DataFrame]
    sm_result: Any = None
    messages: tuple[str, ...] = ()
    _satt: satterthwaite.SatterthwaiteSetup | None = field(default=None, repr=False)
    _kr: kenward_roger.KenwardRogerSetup | None = field(default=None, repr=False)
    _problem: dense.LMMProblem | None = field(default=None, repr=False)

    # -- FixedEffectsFit protocol ----------------------------------------------------
    @property
    def params(self) -> pd.Series:
        """Fixed-effect estimates indexed by term name."""
        return self.fixed["estimate"].copy()

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the fixed effects."""
        return self.vcov.copy()

    @property
    def fixed_draws(self) -> pd.DataFrame | None:
        """``None``: a frequentist fit has no posterior draws."""
        return None

    def contrast_df(self, L: np.ndarray) -> float:
        """Denominator df for the contrast ``L @ params``.

        Parameters
        ----------
        L : array_like, shape (p,)
            Contrast weights in the order of :attr:`params`.

        Returns
        -------
        float
            Satterthwaite df (``ddf="satterthwaite"``), Kenward-Roger df
            (``"kenward-roger"``, pbkrtest's ``Lb_ddf``), ``n - p`` (``"residual"``) or
            ``inf`` (``"none"``).

        Examples
        --------
        >>> fit.contrast_df([0, 1, 0, 2])  # doctest: +SKIP
        310.87
        """
        L = self._check_L(L)
        if self.ddf == "none":
            return float("inf")
        if self.ddf == "residual":
            return float(self.n_obs - len(self.fixed))
        if self.ddf == "kenward-roger":
            assert self._kr is not None
            return kenward_roger.contrast_df(self._kr, L)
        assert self._satt is not None
        return satterthwaite.contrast_df(self._satt, L)

    def _check_L(self, L: np.ndarray) -> np.ndarray:
        arr = np.asarray(L, dtype=float).ravel()
        p = len(self.fixed)
        if arr.shape != (p,) or not np.all(np.isfinite(arr)):
            raise ModelSpecError(
                f"contrast L must hold {p} finite weights (one per fixed effect: "
                f"{', '.join(self.fixed.index)}), got {np.asarray(L).tolist()!r}"
            )
        return arr

    def test_contrast(self, L: np.ndarray, *, alpha: float = 0.05) -> pd.Series:
        """Estimate, SE, df, t, p and CI of the contrast ``L @ params``.

        Examples
        --------
        >>> fit.test_contrast([0, 1, 0, 2])  # doctest: +SKIP
        """
        L = self._check_L(L)
        est = float(L @ self.fixed["estimate"].to_numpy())
        se = float(np.sqrt(L @ self.vcov.to_numpy() @ L))
        df = self.contrast_df(L)
        t = est / se
        dist = stats.norm if not np.isfinite(df) else stats.t(df)
        q = float(dist.ppf(1 - alpha / 2))
        return pd.Series(
            {
                "estimate": est,
                "se": se,
                "df": df,
                "t": t,
                "p": float(2 * dist.sf(abs(t))),
                "ci_lower": est - q * se,
                "ci_upper": est + q * se,
            }
        )

    # -- multi-df inference (models/anova.py, models/lmm/profile.py) ---------------------
    def kenward_roger(self) -> kenward_roger.KenwardRogerSetup:
        """Kenward-Roger quantities of this REML fit (computed on demand if ``ddf`` differs)."""
        if self._kr is not None:
            return self._kr
        if not self.reml:
            raise ModelSpecError(
                "Kenward-Roger tests are defined for REML fits only; refit with reml=True"
            )
        assert self._problem is not None
        return kenward_roger.kenward_roger_setup(self._problem, self.theta, self.sigma**2)

    def contrast(
        self, L: Any, *, rhs: Any = 0.0, ddf: str | None = None
    ) -> pd.DataFrame:
        """Joint F test of ``L @ params = rhs`` (lmerTest's ``contest(fit, L, joint = TRUE)``).

        Parameters
        ----------
        L : array_like, shape (q, p), or DataFrame with the fixed effects as columns
            One hypothesis row per contrast.
        rhs : float or array_like, default 0
        ddf : {"satterthwaite", "kenward-roger"}, optional
            Defaults to the fit's method (Satterthwaite for ``"residual"``/``"none"``).

        Returns
        -------
        DataFrame
            One row: ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``.

        Examples
        --------
        >>> fit.contrast([[0, 1, 0, 0], [0, 0, 0, 1]])  # doctest: +SKIP
        """
        from .anova import contrast_table

        return contrast_table(self, L, rhs, ddf)

    def anova(self, *, ddf: str | None = None) -> pd.DataFrame:
        """Type III F tests of every fixed-effect term (lmerTest's ``anova(fit, type = 3)``).

        Each term's coefficients are tested jointly (see :mod:`alliance_models.models.anova`
        for the hypotheses and the df methods).

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger"}, optional
            Defaults to the fit's method (Satterthwaite for ``"residual"``/``"none"``).

        Returns
        -------
        DataFrame
            One row per term: ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``.

        Examples
        --------
        >>> fit.anova(ddf="kenward-roger")  # doctest: +SKIP
        """
        from .anova import anova_table

        return anova_table(self, ddf)

    def varcomp_ci(self, level: float = 0.95) -> pd.DataFrame:
        """Profile-likelihood confidence intervals of the SDs, correlations and sigma.

        As lme4's ``confint(fit, parm = "theta_", method = "profile")``: the **ML**
        deviance is profiled (a REML fit is refitted by ML first), so ``estimate`` is
        the ML estimate. An end the profile does not reach before a bound is the bound
        (0 for an SD, -1 or 1 for a correlation).

        Parameters
        ----------
        level : float, default 0.95

        Returns
        -------
        DataFrame
            Indexed like lme4 (``sd_(Intercept)|therapist``, ``cor_x.(Intercept)|g``,
            ``sigma``): ``estimate, lower, upper``.

        Examples
        --------
        >>> fit.varcomp_ci()  # doctest: +SKIP
        """
        from .lmm.profile import profile_intervals

        if not 0 < level < 1:
            raise ModelSpecError(f"level must be between 0 and 1, got {level!r}")
        assert self._problem is not None
        theta = self.theta
        if self.reml:
            with _blas_threads(self._problem.q):
                theta, *_ = _run(self._problem, self.frame, False, OPTIMIZERS, 1000)
        ev = self._problem.evaluate(theta)
        sigma = float(np.sqrt(self._problem.sigma2(ev, reml=False)))
        est, lo, hi = profile_intervals(self._problem, theta, sigma, level=level)
        names = []
        for t, blk in zip(self.spec.random, self._problem.blocks, strict=True):
            cn = t.coef_names
            for r, c in blk.theta_index:
                names.append(f"sd_{cn[r]}|{t.group}" if r == c
                             else f"cor_{cn[r]}.{cn[c]}|{t.group}")
        names.append("sigma")
        return pd.DataFrame({"estimate": est, "lower": lo, "upper": hi},
                            index=pd.Index(names, name="parameter"))

    # -- results ---------------------------------------------------------------------
    @property
    def group_sizes(self) -> dict[str, pd.Series]:
        """Observations per level of each grouping expression (``n`` per group)."""
        return {
            g: pd.Series(
                np.bincount(codes, minlength=len(self.frame.group_labels[g])),
                index=self.frame.group_labels[g],
                name="n_obs",
            )
            for g, codes in self.frame.groups.items()
        }

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Confidence intervals ``estimate +/- t_{df, 1-alpha/2} * se`` per fixed effect.

        Examples
        --------
        >>> fit.conf_int(0.1)  # doctest: +SKIP
        """
        probability("alpha", alpha, ModelSpecError)
        df = self.fixed["df"].to_numpy()
        q = np.where(
            np.isfinite(df),
            stats.t.ppf(1 - alpha / 2, np.where(np.isfinite(df), df, 1.0)),
            stats.norm.ppf(1 - alpha / 2),
        )
        est, se = self.fixed["estimate"], self.fixed["se"]
        return pd.DataFrame({"lower": est - q * se, "upper": est + q * se})

    def to_frame(self) -> pd.DataFrame:
        """Return the fixed-effects table (``estimate, se, df, t, p, ci_lower, ci_upper``)."""
        return self.fixed.copy()

    def predict(
        self, newdata: pd.DataFrame | None = None, *, include_random: bool = False
    ) -> pd.Series:
        """Predictions ``X beta`` (plus ``Z b`` with ``include_random=True``).

        Levels not seen in the fit get random effects of zero.

        Parameters
        ----------
        newdata : DataFrame, optional
            Defaults to the data used in the fit.
        include_random : bool
            Add the conditional modes of the random effects.

        Returns
        -------
        Series
            Indexed like ``newdata``.

        Examples
        --------
        >>> new = pd.DataFrame({"alliance": [4.0, 6.0], "therapist": ["T01", "T99"]})
        >>> fit.predict(new, include_random=True)  # doctest: +SKIP
        """
        data = self.frame.data if newdata is None else newdata
        X = self.frame.fixed_design(data)
        pred = X @ self.fixed["estimate"].to_numpy()
        if include_random:
            for t in self.spec.random:
                missing = [f for f in t.factors if f not in data.columns]
                if missing:
                    raise ModelSpecError(
                        f"predict(include_random=True) needs grouping column(s) "
                        f"{', '.join(map(repr, missing))} for {t}"
                    )
                Z = _term_design(t, data)
                keys = pd.Index(t.group_keys(data))
                re = self.random_effects[str(t)]
                pos = re.index.get_indexer(keys)
                coef = re.to_numpy()
                b = np.where((pos >= 0)[:, None], coef[np.maximum(pos, 0)], 0.0)
                pred = pred + np.einsum("ij,ij->i", Z, b)
        return pd.Series(pred, index=data.index, name="predicted")

    def summary(self) -> str:
        """Return a readable lmerTest-like summary."""
        crit = "REML" if self.reml else "maximum likelihood"
        ddf_txt = {
            "satterthwaite": "t-tests use Satterthwaite's method",
            "kenward-roger": "t-tests use Kenward-Roger's method",
            "residual": "t-tests use residual df (n - p)",
            "none": "z-tests (no small-sample df)",
        }[self.ddf]
        groups = ", ".join(f"{k} {v}" for k, v in self.n_groups.items())
        lines = [
            f"Linear mixed model fit by {crit} ({ddf_txt})",
            f"Formula: {self.spec.formula}",
            f"Observations: {self.n_obs} ({self.n_dropped} dropped for missing values); "
            f"groups: {groups}",
            "Observations per group: "
            + "; ".join(
                f"{g} {int(v.min())}-{int(v.max())} (median {v.median():g})"
                for g, v in self.group_sizes.items()
            ),
            f"Optimizer: {self.optimizer} ({'converged' if self.converged else 'NOT converged'}"
            f", max |gradient| {self.grad_max:.1e}){'; singular fit' if self.singular else ''}",
            "",
            "Random effects:",
        ]
        vc = self.varcomp
        rows = [("Group", "Name", "Variance", "Std.Dev.", "Corr")]
        for r in vc.itertuples(index=False):
            if r.var2:
                rows.append((r.group, f"{r.var1} ~ {r.var2}", "", "", fmt_num(r.sdcor)))
            else:
                rows.append((r.group, r.var1, fmt_num(r.vcov), fmt_num(r.sdcor), ""))
        widths = [max(len(x[i]) for x in rows) for i in range(5)]
        for r in rows:
            lines.append(" " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        lines += ["", "Fixed effects:"]
        tab = self.fixed.copy()
        tab.columns = ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)", "2.5 %", "97.5 %"]
        lines.append(table_text(tab))
        if len(self.icc):
            lines += ["", "Intraclass correlations:"]
            lines.append(table_text(self.icc))
        lines += [
            "",
            f"R2 (Nakagawa): marginal {fmt_num(self.r2_marginal)}, conditional "
            f"{fmt_num(self.r2_conditional)}",
            f"logLik {fmt_num(self.loglik)}, AIC {fmt_num(self.aic)}, BIC {fmt_num(self.bic)}"
            + (" (REML: compare fixed effects only with reml=False)" if self.reml else ""),
        ]
        if self.messages:
            lines += ["", "Warnings:"] + [f" - {m}" for m in self.messages]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------
def _term_design(t: RandomTerm, data: pd.DataFrame) -> np.ndarray:
    """Random-effect columns of term ``t`` for ``data`` (intercept, then slopes)."""
    from formulaic import Formula

    cols = []
    if t.intercept:
        cols.append(np.ones(len(data)))
    for s in t.slopes:
        cols.append(np.asarray(Formula(f"0 + {s}").get_model_matrix(data), dtype=float).ravel())
    return np.column_stack(cols)


def _check_rank(frame: ModelFrame) -> None:
    X = frame.X
    rank = np.linalg.matrix_rank(X)
    if rank == X.shape[1]:
        return
    bad = []
    for j in range(X.shape[1]):
        others = np.delete(X, j, axis=1)
        if np.linalg.matrix_rank(others) == rank:
            bad.append(frame.x_names[j])
    raise ModelSpecError(
        f"the fixed-effects design is rank deficient (rank {rank} < {X.shape[1]} columns); "
        f"these terms are linear combinations of others: {', '.join(bad)}. Drop or recode one"
    )


def _check_finite(frame: ModelFrame) -> None:
    """Infinite values and a constant response cannot be fitted; say where they are."""
    frame.check_finite()
    if np.ptp(frame.y) == 0:
        raise ModelSpecError(
            f"response {frame.spec.response!r} is constant ({frame.y[0]:g} in all "
            f"{frame.n_obs} rows); there is nothing to model"
        )


def _check_binomial(spec: ModelSpec, family: str) -> None:
    hint = (
        "for a binomial outcome give the successes as the response and the trials column: "
        "fit_mixed('attended ~ alliance + (1 | therapist)', data, family='binomial', "
        "trials='scheduled') (population-averaged: am.fit_gee(..., trials=...); Bayesian: "
        "am.fit_bayes(..., family='binomial'))"
    )
    if family != "gaussian":
        raise ModelSpecError(f"family={family!r} is not supported by fit_mixed; {hint}")
    if spec.response.replace(" ", "").startswith("cbind("):
        raise ModelSpecError(f"response {spec.response!r} looks binomial; {hint}")


def _run(
    problem: dense.LMMProblem,
    frame: ModelFrame,
    reml: bool,
    chain: tuple[str, ...],
    maxiter: int,
) -> tuple[np.ndarray, str, bool, float]:
    """Local optimum (:func:`_run_chain`), then the boundary/optimum search.

    A converged solution can be a local optimum with a better one on a face (a variance
    at zero) or inside; lme4 would stop at the first, the REML estimate is the better
    one. :func:`alliance_models.models.lmm.search.search` looks for it (the same search
    as the batched engine's).
    """
    theta, method, converged, gmax = _run_chain(problem, frame, reml, chain, maxiter)
    crit = dense.DenseCriterion(problem, reml=reml, maxiter=maxiter)
    found = search.search(crit, theta[None, :], np.array([converged]))[0][0]
    if not np.array_equal(found, theta):
        theta = found
        gmax = float(np.abs(dense.projected_gradient(problem, theta, reml=reml)).max())
        converged = gmax < CONVERGED_GRAD
    return theta, method, converged, gmax


def _run_chain(
    problem: dense.LMMProblem,
    frame: ModelFrame,
    reml: bool,
    chain: tuple[str, ...],
    maxiter: int,
) -> tuple[np.ndarray, str, bool, float]:
    """Try the optimisers in turn from lme4's start; return theta, name, converged, grad."""
    best: tuple[float, np.ndarray, str, float] | None = None
    attempts: list[tuple[str, str]] = []
    for method in chain:
        try:
            theta, _ = dense.optimize_theta(
                problem, problem.default_theta(), reml=reml, method=method, maxiter=maxiter
            )
            theta, gmax = dense.newton_polish(problem, theta, reml=reml, maxiter=min(50, maxiter))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:
            attempts.append((method, str(err)))
            continue
        dev = problem.deviance(theta, reml=reml)
        if best is None or dev < best[0]:
            best = (dev, theta, method, gmax)
        if gmax < CONVERGED_GRAD:
            return theta, method, True, gmax
    if best is None:
        detail = "; ".join(f"{m}: {e}" for m, e in attempts)
        raise ModelSpecError(
            f"every optimizer failed for {frame.spec.formula!r} ({detail}); check the "
            "fixed-effects design for collinearity and simplify the random part"
        )
    return best[1], best[2], False, best[3]


def fit_mixed(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    reml: bool = True,
    optimizer: str | tuple[str, ...] | list[str] | None = None,
    maxiter: int = 1000,
    ddf: str = "satterthwaite",
    family: str = "gaussian",
    trials: str | None = None,
    nAGQ: int = 1,  # noqa: N803 - lme4's name
) -> MixedFit | GLMMFit:
    """Fit a linear (or binomial / Poisson) mixed model from an lme4-style formula.

    Parameters
    ----------
    formula : str or ModelSpec
        E.g. ``"adherence ~ alliance * age + (1 | therapist/patient)"``; random terms
        ``(1 | g)``, ``(1 + x | g)``, ``(x || g)``, ``(1 | g1/g2)``, ``(1 | g1:g2)``,
        crossed factors.
    data : DataFrame
        Rows with missing values in model columns are dropped (counted, with a
        :class:`~alliance_models.MissingDataWarning`).
    reml : bool, default True
        REML; use ``False`` (ML) to compare models with different fixed effects.
    optimizer : str or sequence of str, optional
        Any of ``"lbfgs", "bfgs", "powell", "nm"``, tried in the order given until one
        converges (default: all four), each from lme4's start; the estimate is then
        polished on the exact criterion (Newton steps) and :attr:`MixedFit.optimizer`
        names the one that led to convergence.
    maxiter : int, default 1000
        Iterations per optimiser.
    ddf : {"satterthwaite", "kenward-roger", "residual", "none"}
        Denominator df of t tests. ``"kenward-roger"`` (REML fits only) also replaces
        the covariance of the fixed effects by Kenward and Roger's adjusted one, as
        lmerTest's ``summary(fit, ddf = "Kenward-Roger")`` and emmeans'
        ``lmer.df = "kenward-roger"`` do; every probe of the fit then uses both.
    family : {"gaussian", "binomial", "poisson"}, default "gaussian"
        ``"binomial"`` (logit link) and ``"poisson"`` (log link) fit a generalised linear
        mixed model by maximum likelihood as lme4's ``glmer``
        (:mod:`alliance_models.models.glmm`); ``reml``, ``optimizer`` and ``ddf`` are
        then not used (Wald z tests). The canonical binomial call gives the successes
        as the response and the trials column: ``fit_mixed("attended ~ alliance +
        (1 | therapist)", data, family="binomial", trials="scheduled")``.
    trials : str, optional
        Binomial trials (denominators) column; omit for a 0/1 outcome. Rows with zero
        trials are excluded (counted in ``n_zero_trials``, with a warning).
    nAGQ : int, default 1
        GLMMs only: 1 for the Laplace approximation, more for adaptive Gauss-Hermite
        quadrature with that many nodes (a single scalar random-effects term).

    Returns
    -------
    MixedFit or GLMMFit
        :class:`~alliance_models.models.glmm.GLMMFit` for binomial and Poisson families.

    Raises
    ------
    ModelSpecError
        Missing columns (close matches listed), a grouping factor with one level or with
        a level per row, a constant or collinear predictor, a binomial-looking request.

    Warns
    -----
    SingularFitWarning
        A random-effect SD is (nearly) zero relative to the residual SD.
    ConvergenceWarning
        No optimiser converged, or the Hessian is not positive definite.
    FewClustersWarning, MissingDataWarning
        From :meth:`ModelSpec.build`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(3)
    >>> g = np.repeat(np.arange(12), 6)
    >>> df = pd.DataFrame({"g": g, "x": rng.normal(size=72)})
    >>> df["y"] = 1 + 0.5 * df.x + rng.normal(size=12)[g] + rng.normal(size=72)
    >>> fit = fit_mixed("y ~ x + (1 | g)", df)
    >>> fit.params.round(2).tolist()
    [1.32, 0.56]
    >>> round(float(fit.fixed.loc["x", "df"]), 1)
    61.0
    """
    spec = parse_formula(formula) if isinstance(formula, str) else formula
    if not isinstance(spec, ModelSpec):
        raise ModelSpecError(f"formula must be a string or ModelSpec, got {type(formula)!r}")
    one_of("ddf", ddf, DDF_METHODS, ModelSpecError, quote=True)
    if ddf == "kenward-roger" and not reml:
        raise ModelSpecError(
            "ddf='kenward-roger' is defined for REML fits only (as in pbkrtest and "
            "lmerTest); fit with reml=True, or use ddf='satterthwaite' with reml=False"
        )
    chain: tuple[str, ...]
    if optimizer is None:
        chain = OPTIMIZERS
    else:
        chain = (optimizer,) if isinstance(optimizer, str) else tuple(optimizer)
        bad = [m for m in chain if m not in OPTIMIZERS]
        if bad or not chain:
            raise ModelSpecError(
                f"optimizer {bad or optimizer!r} is not known; choose from {OPTIMIZERS}"
            )
    if not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise ModelSpecError(f"maxiter must be a positive integer, got {maxiter!r}")
    if family in ("binomial", "poisson"):
        return fit_glmm(spec, data, family=family, trials=trials, n_agq=nAGQ, maxiter=maxiter)
    if trials is not None:
        raise ModelSpecError("trials= is used with family='binomial' only")
    _check_binomial(spec, family)
    if not spec.has_random:
        raise ModelSpecError(
            f"formula {spec.formula!r} has no random-effects term such as (1 | therapist); "
            "add one, or use am.fit_ols for a single-level model"
        )
    frame = spec.build(data)
    _check_finite(frame)
    yvals = np.unique(frame.y)
    if yvals.size <= 2 and set(yvals.tolist()) <= {0.0, 1.0}:
        _check_binomial(spec, "binomial (0/1 response)")
    _check_rank(frame)
    blocks = []
    for t in spec.random:
        codes = frame.groups[t.group]
        n_lev = int(frame.group_labels[t.group].size)
        if n_lev * t.n_coef >= frame.n_obs:
            raise ModelSpecError(
                f"grouping factor {t.group!r} has {n_lev} levels for {frame.n_obs} rows, so "
                f"the random effects in {t} cannot be told apart from the residual; "
                "drop the term or check the grouping column"
            )
        blocks.append(dense.RandomBlock(frame.Z[str(t)], codes, n_lev, t.correlated))
    problem = dense.LMMProblem(frame.y, frame.X, blocks)

    with _blas_threads(problem.q):
        theta, opt_name, converged, gmax = _run(problem, frame, reml, chain, maxiter)
        return _assemble(spec, frame, problem, theta, reml, ddf, opt_name, converged, gmax, chain)


def _blas_threads(q: int) -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for small random-effect dimensions (``q < 3000``).

    The dense algebra works on ``q x q`` matrices; for a few hundred random effects a
    threaded BLAS spends more time synchronising than computing (measured: a 270 x 270
    Cholesky took 0.18 s with OpenBLAS threads on a busy 2-core machine, about 1 ms with
    one thread).
    """
    if q >= 3000:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with pymc's stack
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _assemble(
    spec: ModelSpec,
    frame: ModelFrame,
    problem: dense.LMMProblem,
    theta: np.ndarray,
    reml: bool,
    ddf: str,
    opt_name: str,
    converged: bool,
    gmax: float,
    chain: tuple[str, ...] = (),
) -> MixedFit:
    messages: list[tuple[str, type[Warning]]] = []
    ev = problem.evaluate(theta)
    sigma2 = problem.sigma2(ev, reml=reml)
    sigma = float(np.sqrt(sigma2))
    names = list(frame.x_names)
    satt = dense.satterthwaite_setup(problem, theta, reml=reml)
    V = satt.vcov
    p = len(names)
    kr = None
    if ddf == "kenward-roger":
        kr = kenward_roger.kenward_roger_setup(problem, theta, sigma2)
        V = kr.vcov_adj
        dfs = np.array([kenward_roger.contrast_df(kr, row) for row in np.eye(p)])
    elif ddf == "satterthwaite":
        dfs = np.array([satterthwaite.contrast_df(satt, row) for row in np.eye(p)])
    elif ddf == "residual":
        dfs = np.full(p, float(frame.n_obs - p))
    else:
        dfs = np.full(p, np.inf)
    se = np.sqrt(np.diag(V))
    tval = ev.beta / se
    finite = np.isfinite(dfs)
    safe_df = np.where(finite, dfs, 1.0)
    pval = np.where(finite, 2 * stats.t.sf(np.abs(tval), safe_df), 2 * stats.norm.sf(np.abs(tval)))
    q = np.where(finite, stats.t.ppf(0.975, safe_df), stats.norm.ppf(0.975))
    fixed = pd.DataFrame(
        {
            "estimate": ev.beta,
            "se": se,
            "df": dfs,
            "t": tval,
            "p": pval,
            "ci_lower": ev.beta - q * se,
            "ci_upper": ev.beta + q * se,
        },
        index=pd.Index(names, name="term"),
    )
    vcov = pd.DataFrame(V, index=names, columns=names)

    # variance components, BLUPs
    lams = problem.lambdas(theta)
    covs = [sigma2 * lam @ lam.T for lam in lams]
    random_effects: dict[str, pd.DataFrame] = {}
    for k, (t, lam) in enumerate(zip(spec.random, lams, strict=True)):
        bk = problem.term_values(ev.u, k) @ lam.T
        random_effects[str(t)] = pd.DataFrame(
            bk, index=frame.group_labels[t.group], columns=list(t.coef_names)
        )
    vc_rows = dense.varcomp_rows(spec.random, problem.blocks, covs)
    vc_rows.append(("Residual", "", "", sigma2, sigma))
    varcomp = pd.DataFrame(vc_rows, columns=["group", "var1", "var2", "vcov", "sdcor"])

    # ICC for intercept-only random parts
    if all(t.intercept and not t.slopes for t in spec.random):
        var_by = {t.group: float(c[0, 0]) for t, c in zip(spec.random, covs, strict=True)}
        total = sum(var_by.values()) + sigma2
        fac = {t.group: set(t.factors) for t in spec.random}
        icc = pd.DataFrame(
            {
                "variance": var_by,
                "share": {g: v / total for g, v in var_by.items()},
                "icc": {
                    g: sum(var_by[h] for h in var_by if fac[h] <= fac[g]) / total for g in var_by
                },
            }
        )
        icc.index.name = "group"
    else:
        icc = pd.DataFrame(columns=["variance", "share", "icc"], dtype=float)

    r2m, r2c = dense.nakagawa_r2(
        frame.X, ev.beta, [frame.Z[str(t)] for t in spec.random], covs, sigma2
    )
    loglik = -0.5 * problem.deviance_from(ev, reml=reml)
    k = p + problem.n_theta + 1
    aic = -2 * loglik + 2 * k
    bic = -2 * loglik + np.log(frame.n_obs) * k

    # diagnostics
    singular = dense.is_singular(problem, theta)
    if not converged:
        messages.append(
            (
                f"the fit did not converge (max |gradient| {gmax:.2g} after trying "
                f"{', '.join(chain or (opt_name,))}; best: {opt_name}); simplify the random "
                "part (drop random slopes or correlations), rescale predictors to similar "
                "ranges (e.g. centre and divide by the SD), or try another optimizer=",
                ConvergenceWarning,
            )
        )
    if singular:
        low = []
        for t, blk, s in zip(spec.random, problem.blocks, problem.theta_slices, strict=True):
            vals = theta[s]
            for v, (r, c) in zip(vals, blk.theta_index, strict=True):
                if r == c and v < search.SINGULAR_TOL:
                    low.append(f"{t.coef_names[r]} in {t}")
        messages.append(
            (
                f"singular fit: the random-effect SD of {', '.join(low)} is estimated at "
                "(or next to) zero relative to the residual SD (lme4's isSingular, "
                f"theta < {search.SINGULAR_TOL:g}). The data do not support that term: "
                "simplify the random part (drop the term, its slope or correlation) or, "
                "with few clusters, use a Bayesian fit with a weakly informative prior",
                SingularFitWarning,
            )
        )
    eig_tol = 1e-8
    if satt.hessian_eigmin <= eig_tol and converged:
        messages.append(
            (
                "the Hessian of the deviance in the variance parameters is not positive "
                f"definite (smallest eigenvalue {satt.hessian_eigmin:.2g}): the model is "
                "nearly unidentifiable and SEs/df are unreliable; simplify the random "
                "part or rescale predictors",
                ConvergenceWarning,
            )
        )
    for msg, cat in messages:
        warnings.warn(msg, cat, stacklevel=3)

    return MixedFit(
        spec=spec,
        frame=frame,
        reml=reml,
        ddf=ddf,
        fixed=fixed,
        vcov=vcov,
        varcomp=varcomp,
        icc=icc,
        r2_marginal=float(r2m),
        r2_conditional=float(r2c),
        loglik=float(loglik),
        aic=float(aic),
        bic=float(bic),
        n_obs=frame.n_obs,
        n_groups=frame.n_groups,
        n_dropped=frame.n_dropped,
        optimizer=opt_name,
        converged=converged,
        grad_max=float(gmax),
        singular=singular,
        theta=np.asarray(theta, dtype=float),
        sigma=sigma,
        random_effects=random_effects,
        sm_result=None,
        messages=tuple(m for m, _ in messages),
        _satt=satt,
        _kr=kr,
        _problem=problem,
    )
