"""Single-level moderation by OLS, as in Hayes' PROCESS models 1, 2 and 3.

``fit_ols("adherence ~ alliance * age", data, hc="HC3")`` gives coefficients with
heteroscedasticity-consistent standard errors (HC0-HC4), t tests on ``n - p`` df, R²,
the R² change of the highest-order interaction(s) with its F test (PROCESS's
"R2-chng" lines), optional mean-centring and seeded percentile-bootstrap draws of the
coefficients for bootstrap CIs of conditional effects (see
:func:`alliance_models.simple_slopes`).

PROCESS model 1 is ``y ~ x * w``, model 2 ``y ~ x * w + x * z`` and model 3
``y ~ x * w * z`` (moderated moderation); any other fixed-effects formula works too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from .._format import fmt_num, fmt_p, table_text
from .._random import RNGLike, as_generator
from .._terms import design_columns
from .._validate import integer, one_of, probability
from ..errors import ModelSpecError
from ..formula import parse_formula
from ..spec import ModelFrame, ModelSpec
from .interface import StatsmodelsFitMixin
from .mixed import _check_finite

__all__ = ["OLSFit", "fit_ols", "hc_covariance"]

HCType = Literal["HC0", "HC1", "HC2", "HC3", "HC4"]
_HC = ("HC0", "HC1", "HC2", "HC3", "HC4")


def hc_covariance(X: np.ndarray, resid: np.ndarray, kind: str | None) -> np.ndarray:
    """Covariance of OLS coefficients: classical (``None``) or HC0-HC4 sandwich.

    ``(X'X)^-1 X' diag(omega) X (X'X)^-1`` with ``omega_i = e_i^2`` (HC0), times
    ``n / (n - p)`` (HC1), ``e_i^2 / (1 - h_i)`` (HC2), ``e_i^2 / (1 - h_i)^2`` (HC3),
    ``e_i^2 / (1 - h_i)^delta_i`` with ``delta_i = min(4, n h_i / p)`` (HC4).

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Design matrix.
    resid : ndarray, shape (n,)
        OLS residuals.
    kind : {"HC0", "HC1", "HC2", "HC3", "HC4"} or None
        ``None`` gives ``s^2 (X'X)^-1``.

    Returns
    -------
    ndarray, shape (p, p)

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> e = np.array([0.1, -0.2, 0.2, -0.1])
    >>> np.round(hc_covariance(X, e, "HC0"), 4).tolist()
    [[0.0121, -0.0039], [-0.0039, 0.0026]]
    """
    X = np.asarray(X, float)
    e = np.asarray(resid, float)
    n, p = X.shape
    xtx_inv = np.linalg.inv(X.T @ X)
    if kind is None:
        return xtx_inv * (e @ e) / (n - p)
    h = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    e2 = e**2
    if kind == "HC0":
        omega = e2
    elif kind == "HC1":
        omega = e2 * n / (n - p)
    elif kind == "HC2":
        omega = e2 / (1.0 - h)
    elif kind == "HC3":
        omega = e2 / (1.0 - h) ** 2
    elif kind == "HC4":
        delta = np.minimum(4.0, n * h / p)
        omega = e2 / (1.0 - h) ** delta
    else:
        raise ModelSpecError(f"hc={kind!r} is not supported; use one of {_HC} or None")
    meat = (X * omega[:, None]).T @ X
    return xtx_inv @ meat @ xtx_inv


def _r2(y: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    """R² of an OLS fit (centred total SS when there is an intercept) and its RSS."""
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    rss = float(np.sum((y - X @ beta) ** 2))
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - rss / tss, rss


def _interaction_factors(fixed_formula: str) -> list[str]:
    """Factors (as written) of the fixed-part terms that are products (order >= 2)."""
    from formulaic import Formula

    out: list[str] = []
    for term in Formula(fixed_formula).rhs:
        facs = [str(f) for f in term.factors]
        if len(facs) >= 2:
            for f in facs:
                if f not in out:
                    out.append(f)
    return out


@dataclass(frozen=True, eq=False)
class OLSFit(StatsmodelsFitMixin):
    """Result of :func:`fit_ols` (satisfies ``FixedEffectsFit``).

    Attributes
    ----------
    spec, frame : ModelSpec, ModelFrame
        The formula and the encoded (possibly centred) data.
    result : statsmodels RegressionResults
        The underlying statsmodels OLS fit (classical covariance).
    hc : str or None
        Covariance type used for every test (``"HC3"`` by default).
    vcov : DataFrame
        Coefficient covariance (HC or classical); see :meth:`cov_params`.
    centering : dict of str to float
        Columns mean-centred before fitting and the means removed.
    r2, r2_adj : float
        R² and adjusted R².
    model_test : dict
        Test of the whole model: ``F``, ``df1``, ``df2``, ``p`` (robust Wald F when
        ``hc`` is set, as PROCESS does).
    r2_change : DataFrame or None
        One row per highest-order interaction term (and a joint row when there are
        several): ``R2_change``, nested-model ``F``, ``df1``, ``df2``, ``p`` and, with
        ``hc``, the robust Wald ``F_hc``, ``p_hc``. ``None`` without interactions.
    boot_params : DataFrame or None
        Coefficients refitted on ``n_boot`` row-resampled data sets (seeded), used for
        percentile-bootstrap CIs of conditional effects.
    seed : object
        The seed given for the bootstrap.
    """

    spec: ModelSpec
    frame: ModelFrame
    result: Any
    hc: str | None
    vcov: pd.DataFrame
    centering: dict[str, float]
    r2: float
    r2_adj: float
    model_test: dict[str, float]
    r2_change: pd.DataFrame | None
    boot_params: pd.DataFrame | None = None
    seed: Any = None
    alpha: float = 0.05

    @property
    def df_resid(self) -> float:
        """Residual degrees of freedom ``n - p``."""
        return float(self.frame.n_obs - self.frame.X.shape[1])

    @property
    def process_model(self) -> int | None:
        """Hayes' PROCESS model number the fixed part matches (1, 2 or 3), else ``None``.

        Model 1: one two-way product ``x:w``; model 2: two products sharing one variable
        (``x:w + x:z``); model 3: ``x:w:z`` with all its two-way products. Other main
        effects (covariates) are allowed.
        """
        columns = design_columns(self.frame.fixed_model_spec)
        terms = [frozenset(c.factors) for c in columns if c.factors]
        mains = {next(iter(t)) for t in terms if len(t) == 1}
        two = [t for t in terms if len(t) == 2]
        three = [t for t in terms if len(t) == 3]
        if any(len(t) > 3 for t in terms) or any(not t <= mains for t in two + three):
            return None
        if not three:
            if len(two) == 1:
                return 1
            if len(two) == 2 and len(two[0] & two[1]) == 1:
                return 2
            return None
        if len(three) == 1 and len(two) == 3:
            t3 = three[0]
            if all(t <= t3 for t in two):
                return 3
        return None

    def cov_params(self) -> pd.DataFrame:
        """Coefficient covariance (HC type ``hc``, or classical when ``hc`` is None)."""
        return self.vcov.copy()

    def contrast_df(self, L: np.ndarray) -> float:
        """Residual df ``n - p`` (the same for every contrast)."""
        return self.df_resid

    def to_frame(self) -> pd.DataFrame:
        """Coefficient table: estimate, se, t, df, p, ci_lower, ci_upper."""
        b = self.params
        se = pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=b.index)
        t = b / se
        df = self.df_resid
        ci = self.conf_int(self.alpha)
        return pd.DataFrame(
            {
                "estimate": b,
                "se": se,
                "t": t,
                "df": df,
                "p": 2 * stats.t.sf(np.abs(t), df),
                "ci_lower": ci["lower"],
                "ci_upper": ci["upper"],
            }
        )

    def bootstrap_params(self, n_boot: int, seed: RNGLike = None) -> pd.DataFrame:
        """Refit on ``n_boot`` data sets of rows resampled with replacement.

        Resamples whose design is rank deficient are redrawn (as PROCESS does).

        Examples
        --------
        >>> import alliance_models as am
        >>> rng = np.random.default_rng(0)
        >>> d = pd.DataFrame({"x": rng.normal(size=50), "w": rng.normal(size=50)})
        >>> d["y"] = d.x * d.w + rng.normal(size=50)
        >>> am.fit_ols("y ~ x * w", d).bootstrap_params(20, seed=1).shape
        (20, 4)
        """
        return pd.DataFrame(
            _bootstrap(self.frame.X, self.frame.y, int(n_boot), seed),
            columns=list(self.frame.x_names),
        )

    def summary(self) -> str:
        """PROCESS-style text: model fit, coefficient table, R² change of interactions."""
        pm = self.process_model
        lines = [
            f"OLS moderation model: {self.spec.formula}"
            + (f" (PROCESS model {pm})" if pm else ""),
            f"n = {self.n_obs} (excluded for missing values: {self.frame.n_dropped})",
            f"Standard errors: {self.hc or 'classical (homoscedastic)'}; "
            f"t tests on df = {self.df_resid:g}",
        ]
        if self.centering:
            cent = ", ".join(f"{k} (mean {fmt_num(v)})" for k, v in self.centering.items())
            lines.append(f"Mean-centred before fitting: {cent}")
        mt = self.model_test
        lines.append(
            f"R2 = {fmt_num(self.r2)}, adj. R2 = {fmt_num(self.r2_adj)}, "
            f"F({fmt_num(mt['df1'])}, {fmt_num(mt['df2'])}) = {fmt_num(mt['F'])}, "
            f"p = {fmt_p(mt['p'])}"
        )
        lines += ["", table_text(self.to_frame())]
        if self.r2_change is not None:
            lines += [
                "",
                "Test(s) of highest-order unconditional interaction(s):",
                table_text(self.r2_change),
            ]
        if self.boot_params is not None:
            lines.append(
                f"\nPercentile bootstrap: {len(self.boot_params)} resamples (seed {self.seed!r});"
                " simple_slopes() reports bootstrap CIs"
            )
        return "\n".join(lines)


def _bootstrap(X: np.ndarray, y: np.ndarray, n_boot: int, seed: RNGLike) -> np.ndarray:
    if n_boot < 1:
        raise ModelSpecError(f"bootstrap must be a positive number of resamples, got {n_boot}")
    rng = as_generator(seed)
    n, p = X.shape
    out = np.empty((n_boot, p))
    k = 0
    redraws = 0
    while k < n_boot:
        idx = rng.integers(0, n, size=n)
        beta, _, rank, _ = np.linalg.lstsq(X[idx], y[idx], rcond=None)
        if rank < p:
            redraws += 1
            if redraws > 10 * n_boot:
                raise ModelSpecError(
                    "bootstrap resamples are almost always rank deficient; the design has "
                    "too few distinct rows for a bootstrap"
                )
            continue
        out[k] = beta
        k += 1
    return out


def _wald_f(b: np.ndarray, V: np.ndarray, idx: list[int]) -> float:
    bb = b[idx]
    VV = V[np.ix_(idx, idx)]
    return float(bb @ np.linalg.solve(VV, bb) / len(idx))


def fit_ols(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    hc: HCType | None = "HC3",
    center: bool | list[str] | None = None,
    bootstrap: int = 0,
    seed: RNGLike = None,
    alpha: float = 0.05,
) -> OLSFit:
    """Fit a single-level (PROCESS-style) moderation model by ordinary least squares.

    Parameters
    ----------
    formula : str or ModelSpec
        Fixed-effects formula, e.g. ``"adherence ~ alliance * age"`` (PROCESS model 1),
        ``"adherence ~ alliance * age + alliance * autonomy"`` (model 2) or
        ``"adherence ~ alliance * age * autonomy"`` (model 3). Random terms are not
        allowed (use :func:`alliance_models.fit_mixed`). A ``ModelSpec`` from
        :func:`alliance_models.parse_formula` is used as parsed.
    data : DataFrame
        Analysis data; rows with missing model values are excluded (counted).
    hc : {"HC0", "HC1", "HC2", "HC3", "HC4"} or None, default "HC3"
        Heteroscedasticity-consistent covariance for all tests; ``None`` is classical.
    center : bool or list of str, optional
        Columns to mean-centre (over the rows used) before fitting; ``True`` centres
        every numeric variable that takes part in a product term.
    bootstrap : int, default 0
        Number of row-resampled refits kept for percentile-bootstrap CIs.
    seed : int, Generator or SeedSequence, optional
        Seed of the bootstrap.
    alpha : float, default 0.05
        Level of the reported confidence intervals.

    Returns
    -------
    OLSFit

    Raises
    ------
    ModelSpecError
        Random terms in the formula, an unknown ``hc``, a ``center`` column that is not
        a numeric model variable, a rank-deficient design.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=80), "age": rng.normal(50, 10, 80)})
    >>> d["adherence"] = 0.3 * d.alliance + 0.02 * d.alliance * (d.age - 50) + rng.normal(size=80)
    >>> fit = am.fit_ols("adherence ~ alliance * age", d, center=["age"])
    >>> list(fit.params.index)
    ['Intercept', 'alliance', 'age', 'alliance:age']
    >>> fit.r2_change.index.tolist()
    ['alliance:age']
    """
    import statsmodels.api as sm

    spec = formula if isinstance(formula, ModelSpec) else parse_formula(formula)
    formula = spec.formula
    if spec.has_random:
        raise ModelSpecError(
            f"formula {formula!r} has random-effects terms "
            f"({', '.join(str(t) for t in spec.random)}); fit_ols fits single-level models "
            "only: use fit_mixed for random effects (or fit_gee for clustered binomial data)"
        )
    if hc is not None:
        one_of("hc", hc, _HC, ModelSpecError, quote=True)
    probability("alpha", alpha, ModelSpecError)
    integer("bootstrap", bootstrap, ModelSpecError)
    if not isinstance(data, pd.DataFrame):
        raise ModelSpecError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    spec.check_columns(data)

    centering: dict[str, float] = {}
    if center is not None and center is not False:
        if center is True:
            cols = [
                f
                for f in _interaction_factors(spec.expanded_formula)
                if f in data.columns and pd.api.types.is_numeric_dtype(data[f])
            ]
        else:
            if isinstance(center, str):
                center = [center]
            cols = list(center)
            for c in cols:
                if c not in spec.variables or c == spec.response:
                    raise ModelSpecError(
                        f"center: column {c!r} is not a predictor in {formula!r}; "
                        f"predictors: {', '.join(v for v in spec.variables if v != spec.response)}"
                    )
                if not pd.api.types.is_numeric_dtype(data[c]):
                    raise ModelSpecError(
                        f"center: column {c!r} has dtype {data[c].dtype}; only numeric "
                        "columns can be mean-centred"
                    )
        complete = data[list(spec.variables)].notna().all(axis=1)
        data = data.copy()
        for c in cols:
            m = float(data.loc[complete, c].mean())
            data[c] = data[c] - m
            centering[c] = m

    frame = spec.build(data)
    _check_finite(frame)  # infinite values (column, rows) and a constant response
    X, y = frame.X, frame.y
    n, p = X.shape
    if np.linalg.matrix_rank(X) < p:
        raise ModelSpecError(
            f"the design of {formula!r} is rank deficient ({p} columns, rank "
            f"{np.linalg.matrix_rank(X)}): some terms are linear combinations of others"
        )
    if n <= p:
        raise ModelSpecError(f"{n} rows are too few for {p} coefficients")
    res = sm.OLS(y, X).fit()
    names = list(frame.x_names)
    e = y - X @ res.params
    V = hc_covariance(X, e, hc)
    vcov = pd.DataFrame(V, index=names, columns=names)
    df2 = float(n - p)
    has_int = "Intercept" in names
    tss = float(np.sum((y - y.mean()) ** 2)) if has_int else float(y @ y)
    rss = float(e @ e)
    r2 = 1.0 - rss / tss
    r2_adj = 1.0 - (1.0 - r2) * (n - int(has_int)) / df2
    slopes = [j for j, nm in enumerate(names) if nm != "Intercept"]
    if slopes:
        if hc is None:
            F = (r2 / len(slopes)) / ((1 - r2) / df2)
        else:
            F = _wald_f(np.asarray(res.params), V, slopes)
        model_test = {
            "F": float(F),
            "df1": float(len(slopes)),
            "df2": df2,
            "p": float(stats.f.sf(F, len(slopes), df2)),
        }
    else:
        model_test = {"F": math.nan, "df1": 0.0, "df2": df2, "p": math.nan}

    orders = [len(c.factors) for c in design_columns(frame.fixed_model_spec)]
    top = max(orders) if orders else 0
    r2_change = None
    if top >= 2:
        sets = {names[j]: [j] for j in range(p) if orders[j] == top}
        if len(sets) > 1:
            sets["all (joint)"] = [j for j in range(p) if orders[j] == top]
        rows = []
        for label, idx in sets.items():
            keep = [j for j in range(p) if j not in idx]
            r2_red, _ = _r2(y, X[:, keep])
            q = len(idx)
            dr2 = r2 - r2_red
            Fn = (dr2 / q) / ((1 - r2) / df2)
            row = {
                "R2_change": dr2,
                "F": Fn,
                "df1": float(q),
                "df2": df2,
                "p": float(stats.f.sf(Fn, q, df2)),
            }
            if hc is not None:
                Fh = _wald_f(np.asarray(res.params), V, idx)
                row["F_hc"] = Fh
                row["p_hc"] = float(stats.f.sf(Fh, q, df2))
            rows.append(pd.Series(row, name=label))
        r2_change = pd.DataFrame(rows)

    boot = None
    if bootstrap:
        boot = pd.DataFrame(_bootstrap(X, y, int(bootstrap), seed), columns=names)
    return OLSFit(
        spec=spec,
        frame=frame,
        result=res,
        hc=hc,
        vcov=vcov,
        centering=centering,
        r2=float(r2),
        r2_adj=float(r2_adj),
        model_test=model_test,
        r2_change=r2_change,
        boot_params=boot,
        seed=seed,
        alpha=alpha,
    )
