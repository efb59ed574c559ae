"""The result of a binomial or Poisson mixed model: :class:`GLMMFit`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..._format import fmt_num, table_text
from ..._validate import one_of, probability
from ...errors import ModelSpecError
from ...spec import ModelFrame, ModelSpec
from .family import Family

__all__ = ["GLMMFit"]


@dataclass(frozen=True, eq=False)
class GLMMFit:
    """A generalised linear mixed model fitted by maximum likelihood (lme4's ``glmer``).

    Attributes
    ----------
    spec : ModelSpec
        The parsed formula.
    frame : ModelFrame
        The encoded data (complete cases, zero-trial rows removed).
    family : str
        ``"binomial"`` (logit link) or ``"poisson"`` (log link).
    trials : str or None
        Column of binomial trials (``None``: a 0/1 outcome, or Poisson).
    n_agq : int
        1 for the Laplace approximation, more for adaptive Gauss-Hermite quadrature.
    fixed : DataFrame
        One row per fixed effect: ``estimate, se, z, p, ci_lower, ci_upper`` (Wald, 95%),
        on the link scale (log-odds for binomial, log-rate for Poisson).
    vcov : DataFrame
        Covariance of the fixed effects: the ``beta`` block of ``2 H^{-1}`` with ``H`` the
        finite-difference Hessian of the deviance in ``(theta, beta)`` (lme4's default,
        ``use.hessian = TRUE``).
    varcomp : DataFrame
        ``group, var1, var2, vcov, sdcor`` like lme4's ``as.data.frame(VarCorr(fit))`` (no
        residual row: the family fixes the residual variance).
    loglik : float
        Log-likelihood (Laplace or AGQ), with the binomial coefficients / ``log y!``, so
        fits with different ``n_agq`` are comparable. (lme4 reports the same value for
        ``nAGQ = 1``; for ``nAGQ > 1`` its ``logLik`` leaves out the saturated
        log-likelihood, :attr:`saturated_loglik`.)
    saturated_loglik : float
        Log-likelihood of the saturated model (each mean at its observation).
    aic, bic : float
        From ``loglik`` with ``p + n_theta`` parameters.
    n_obs, n_dropped, n_zero_trials : int
        Rows used, rows dropped for missing values, rows excluded for zero trials.
    n_groups : dict of str to int
        Levels per grouping expression.
    optimizer : str
        How stage 2 reached the estimate: ``"newton"`` (Newton steps from stage 1) or
        ``"lbfgs"`` (bounded L-BFGS-B first, then Newton steps).
    converged : bool
        lme4's check: relative gradient ``max |L^{-1} g|`` below ``2e-3``.
    grad_max : float
        That relative gradient at the estimate.
    singular : bool
        A bounded ``theta`` entry below ``1e-4`` (lme4's ``isSingular``).
    theta : ndarray
        lme4's ``getME(fit, "theta")``.
    random_effects : dict of str to DataFrame
        Conditional modes per random term (link scale), one row per level.
    messages : tuple of str
        The diagnostics warned about during the fit.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(2)
    >>> g = np.repeat(np.arange(12), 6)
    >>> d = pd.DataFrame({"therapist": g, "alliance": rng.normal(size=72), "scheduled": 8})
    >>> eta = 0.5 + 0.4 * d.alliance + rng.normal(0, 0.6, 12)[g]
    >>> d["attended"] = rng.binomial(8, 1 / (1 + np.exp(-eta)))
    >>> fit = am.fit_mixed("attended ~ alliance + (1 | therapist)", d,
    ...                    family="binomial", trials="scheduled")
    >>> fit.to_frame().columns.tolist()
    ['estimate', 'se', 'z', 'p', 'ci_lower', 'ci_upper']
    >>> fit.odds_ratios().columns.tolist()
    ['odds_ratio', 'ci_lower', 'ci_upper']
    """

    spec: ModelSpec
    frame: ModelFrame
    family: str
    trials: str | None
    n_agq: int
    fixed: pd.DataFrame
    vcov: pd.DataFrame
    varcomp: pd.DataFrame
    loglik: float
    saturated_loglik: float
    aic: float
    bic: float
    n_obs: int
    n_groups: dict[str, int]
    n_dropped: int
    n_zero_trials: int
    optimizer: str
    converged: bool
    grad_max: float
    singular: bool
    theta: np.ndarray
    random_effects: dict[str, pd.DataFrame]
    messages: tuple[str, ...] = ()
    _family: Family | None = None

    # -- FixedEffectsFit protocol ----------------------------------------------------
    @property
    def params(self) -> pd.Series:
        """Fixed-effect estimates (link scale) indexed by term name."""
        return self.fixed["estimate"].copy()

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the fixed effects."""
        return self.vcov.copy()

    @property
    def fixed_draws(self) -> pd.DataFrame | None:
        """``None``: a frequentist fit has no posterior draws."""
        return None

    def contrast_df(self, L: np.ndarray) -> float:
        """``inf``: GLMM inference uses Wald z statistics (as lme4's ``summary``)."""
        return float("inf")

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Probabilities (binomial) or rates (Poisson) from the linear predictor."""
        assert self._family is not None
        return self._family.mean(np.asarray(eta, dtype=float))

    @property
    def link(self) -> str:
        """``"logit"`` or ``"log"``."""
        return "logit" if self.family == "binomial" else "log"

    @property
    def observed_response(self) -> np.ndarray:
        """The observed outcome on the response scale (proportions for binomial data)."""
        y = self.frame.y
        if self.family == "binomial" and self.trials is not None:
            return y / self.frame.data[self.trials].to_numpy(dtype=float)
        return y

    # -- results ---------------------------------------------------------------------
    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald intervals ``estimate +/- z_{1-alpha/2} se`` (link scale).

        Examples
        --------
        >>> fit.conf_int(0.1)  # doctest: +SKIP
        """
        probability("alpha", alpha, ModelSpecError)
        q = stats.norm.ppf(1 - alpha / 2)
        est, se = self.fixed["estimate"], self.fixed["se"]
        return pd.DataFrame({"lower": est - q * se, "upper": est + q * se})

    def odds_ratios(self, alpha: float = 0.05) -> pd.DataFrame:
        """Exponentiated fixed effects with Wald intervals.

        Odds ratios for binomial fits (rate ratios for Poisson fits): ``exp(estimate)``
        and ``exp`` of the interval ends, so the intervals are not symmetric.

        Returns
        -------
        DataFrame
            Columns ``odds_ratio, ci_lower, ci_upper`` (``rate_ratio, ...`` for Poisson).

        Examples
        --------
        >>> fit.odds_ratios().loc["alliance"]  # doctest: +SKIP
        """
        ci = self.conf_int(alpha)
        name = "odds_ratio" if self.family == "binomial" else "rate_ratio"
        return pd.DataFrame(
            {
                name: np.exp(self.fixed["estimate"]),
                "ci_lower": np.exp(ci["lower"]),
                "ci_upper": np.exp(ci["upper"]),
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """Return the fixed-effects table (``estimate, se, z, p, ci_lower, ci_upper``)."""
        return self.fixed.copy()

    @property
    def group_sizes(self) -> dict[str, pd.Series]:
        """Observations per level of each grouping expression."""
        return {
            g: pd.Series(
                np.bincount(codes, minlength=len(self.frame.group_labels[g])),
                index=self.frame.group_labels[g],
                name="n_obs",
            )
            for g, codes in self.frame.groups.items()
        }

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        *,
        include_random: bool = False,
        scale: str = "link",
    ) -> pd.Series:
        """Predictions on the link scale (``scale="response"``: probabilities or rates).

        Levels not seen in the fit get random effects of zero.

        Examples
        --------
        >>> fit.predict(scale="response").between(0, 1).all()  # doctest: +SKIP
        True
        """
        one_of("scale", scale, ("link", "response"), ModelSpecError, quote=True)
        data = self.frame.data if newdata is None else newdata
        eta = self.frame.fixed_design(data) @ self.fixed["estimate"].to_numpy()
        if include_random:
            from formulaic import Formula

            for t in self.spec.random:
                missing = [f for f in t.factors if f not in data.columns]
                if missing:
                    raise ModelSpecError(
                        f"predict(include_random=True) needs grouping column(s) "
                        f"{', '.join(map(repr, missing))} for {t}"
                    )
                cols = [np.ones(len(data))] if t.intercept else []
                cols += [np.asarray(Formula(f"0 + {s}").get_model_matrix(data),
                                    dtype=float).ravel() for s in t.slopes]
                Z = np.column_stack(cols)
                re = self.random_effects[str(t)]
                pos = re.index.get_indexer(pd.Index(t.group_keys(data)))
                coef = re.to_numpy()
                b = np.where((pos >= 0)[:, None], coef[np.maximum(pos, 0)], 0.0)
                eta = eta + np.einsum("ij,ij->i", Z, b)
        out = eta if scale == "link" else self.inverse_link(eta)
        return pd.Series(out, index=data.index, name="predicted")

    def summary(self, *, exp: bool = False) -> str:
        """Return a readable glmer-like summary (``exp=True`` adds odds/rate ratios)."""
        method = ("Laplace approximation" if self.n_agq == 1
                  else f"adaptive Gauss-Hermite quadrature, nAGQ = {self.n_agq}")
        resp = (f"{self.spec.response} out of {self.trials}" if self.trials
                else self.spec.response)
        groups = ", ".join(f"{k} {v}" for k, v in self.n_groups.items())
        lines = [
            f"Generalized linear mixed model fit by maximum likelihood ({method})",
            f"Family: {self.family} ({self.link} link); response: {resp}",
            f"Formula: {self.spec.formula}",
            f"Observations: {self.n_obs} ({self.n_dropped} dropped for missing values"
            + (f", {self.n_zero_trials} with zero trials excluded" if self.n_zero_trials
               else "") + f"); groups: {groups}",
            "Optimizer: Nelder-Mead (stage 1), "
            f"{'Newton' if self.optimizer == 'newton' else 'L-BFGS-B and Newton'} (stage 2; "
            f"{'converged' if self.converged else 'NOT converged'}, relative gradient "
            f"{self.grad_max:.1e}){'; singular fit' if self.singular else ''}",
            "",
            "Random effects (link scale):",
        ]
        rows = [("Group", "Name", "Variance", "Std.Dev.", "Corr")]
        for r in self.varcomp.itertuples(index=False):
            if r.var2:
                rows.append((r.group, f"{r.var1} ~ {r.var2}", "", "", fmt_num(r.sdcor)))
            else:
                rows.append((r.group, r.var1, fmt_num(r.vcov), fmt_num(r.sdcor), ""))
        widths = [max(len(x[i]) for x in rows) for i in range(5)]
        for r in rows:
            lines.append(" " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        lines += ["", "Fixed effects (Wald z tests, link scale):"]
        tab = self.fixed.copy()
        tab.columns = ["Estimate", "Std. Error", "z value", "Pr(>|z|)", "2.5 %", "97.5 %"]
        lines.append(table_text(tab))
        if exp:
            ratio = "Odds ratios" if self.family == "binomial" else "Rate ratios"
            lines += ["", f"{ratio} (exp of the estimates and Wald limits):"]
            lines.append(table_text(self.odds_ratios()))
        lines += [
            "",
            f"logLik {fmt_num(self.loglik)}, AIC {fmt_num(self.aic)}, BIC {fmt_num(self.bic)}",
        ]
        if self.messages:
            lines += ["", "Warnings:"] + [f" - {m}" for m in self.messages]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
