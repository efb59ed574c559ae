"""Bayesian moderation models with PyMC: the same lme4-style formula as ``fit_mixed``.

:func:`fit_bayes` parses the formula with :func:`~alliance_models.parse_formula`, builds
the design with :meth:`ModelSpec.build` and fits a (generalised) linear mixed model in
PyMC with non-centred random effects. It checks its own sampling (r_hat, bulk ESS,
divergences) and returns a :class:`BayesFit` that satisfies the package's
:class:`~alliance_models.models.results.FixedEffectsFit` interface, so
``am.simple_slopes(bfit, ...)`` works on the posterior draws. :func:`compare` ranks fits by
PSIS-LOO.

The numeric pieces (standardisation and its inverse, the design scaling) are plain numpy
functions; the PyMC model is built inside :func:`fit_bayes` only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._utils import RNGLike, spawn_seeds
from ..errors import DataValidationError, DiagnosticsWarning, ModelSpecError, format_rows
from ..formula import parse_formula
from ..spec import ModelFrame, ModelSpec
from ._priors import Prior, default_prior, parse_prior

__all__ = ["BayesFit", "ComparisonResult", "compare", "fit_bayes"]

Family = Literal["gaussian", "binomial", "beta_binomial"]
_FAMILIES = ("gaussian", "binomial", "beta_binomial")
_SAMPLERS = ("auto", "pymc", "nutpie")
_PLOT_KINDS = ("trace", "rank", "forest", "ppc", "prior_ppc", "posterior")
_CI_PROB = 0.95


# ----------------------------------------------------------------------------------------
# numpy core: standardisation of the design and the map back to the data scale
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """Centring and scaling of the design used for sampling, and its inverse.

    Attributes
    ----------
    x_mean, x_sd : ndarray, shape (p,)
        Column means (0 for the intercept, and for every column when the model has no
        intercept) and SDs (1 for the intercept).
    y_mean, y_sd : float
        Outcome mean and SD for the gaussian family; 0 and 1 otherwise.
    intercept : int or None
        Position of the ``Intercept`` column.
    """

    x_mean: np.ndarray
    x_sd: np.ndarray
    y_mean: float
    y_sd: float
    intercept: int | None

    def standardise_X(self, X: np.ndarray) -> np.ndarray:
        """Return ``(X - x_mean) / x_sd`` (the intercept column stays at 1)."""
        return (np.asarray(X, dtype=float) - self.x_mean) / self.x_sd

    def back_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``(T, shift)`` with ``beta = shift + T @ b_std`` (data-scale fixed effects).

        Slopes: ``beta_j = s_y b_j / s_j``. Intercept (when present):
        ``m_y + s_y (a - sum_j b_j m_j / s_j)``.
        """
        p = self.x_mean.shape[0]
        T = np.diag(self.y_sd / self.x_sd)
        shift = np.zeros(p)
        if self.intercept is not None:
            k = self.intercept
            T[k, :] = -self.y_sd * self.x_mean / self.x_sd
            T[k, k] = self.y_sd
            shift[k] = self.y_mean
        return T, shift

    def to_data(self, b_std: np.ndarray) -> np.ndarray:
        """Map standardised coefficients (..., p) to the data scale."""
        T, shift = self.back_matrix()
        return shift + np.asarray(b_std) @ T.T


def make_scaling(X: np.ndarray, y: np.ndarray, x_names: tuple[str, ...], gaussian: bool) -> Scaling:
    """Compute the :class:`Scaling` of a design (plain numpy).

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Fixed-effects design.
    y : ndarray, shape (n,)
        Outcome.
    x_names : tuple of str
        Column names (``"Intercept"`` marks the intercept).
    gaussian : bool
        Standardise the outcome too.

    Returns
    -------
    Scaling

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [1.0, 2.0, 3.0, 4.0]])
    >>> s = make_scaling(X, np.array([2.0, 4.0, 6.0, 8.0]), ("Intercept", "x"), True)
    >>> np.allclose(s.to_data(s.standardise_X(X)[:1] * 0 + [0.0, 1.0]), [0.0, 2.0])
    True
    """
    X = np.asarray(X, dtype=float)
    p = X.shape[1]
    intercept = x_names.index("Intercept") if "Intercept" in x_names else None
    mean = X.mean(axis=0) if intercept is not None else np.zeros(p)
    sd = X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    if intercept is not None:
        mean[intercept] = 0.0
        sd[intercept] = 1.0
    if gaussian:
        y_mean, y_sd = float(np.mean(y)), float(np.std(y))
        if not y_sd > 0:
            raise ModelSpecError("the outcome is constant; a gaussian model cannot be fitted")
    else:
        y_mean, y_sd = 0.0, 1.0
    return Scaling(mean, sd, y_mean, y_sd, intercept)


# ----------------------------------------------------------------------------------------
# parameters and their priors
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    """One prior-bearing parameter: its key, kind, affine data-scale map and prior."""

    key: str
    kind: str
    c: float
    d: float
    prior_std: Prior
    source: str
    meaning: str

    @property
    def prior_data(self) -> Prior:
        return self.prior_std.to_data(self.c, self.d)


@dataclass(frozen=True)
class _RETerm:
    """A random-effects term as sampled: names, groups, scaled Z columns."""

    name: str  # unique group label used in parameter names
    group: str
    coef_names: tuple[str, ...]
    codes: np.ndarray
    n_groups: int
    Z: np.ndarray  # scaled (n, q)
    z_sd: np.ndarray  # (q,)
    correlated: bool


def _re_terms(frame: ModelFrame) -> list[_RETerm]:
    terms: list[_RETerm] = []
    used: dict[str, int] = {}
    for t in frame.spec.random:
        name = t.group
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 1
        Z = frame.Z[str(t)]
        sd = Z.std(axis=0)
        zsd = np.array([1.0 if c == "(Intercept)" else (s if s > 0 else 1.0)
                        for c, s in zip(t.coef_names, sd, strict=True)])
        terms.append(
            _RETerm(
                name=name,
                group=t.group,
                coef_names=t.coef_names,
                codes=frame.groups[t.group],
                n_groups=int(frame.n_groups[t.group]),
                Z=Z / zsd,
                z_sd=zsd,
                correlated=t.correlated and t.n_coef > 1,
            )
        )
    return terms


def _sd_key(term: _RETerm, coef: str) -> str:
    if len(term.coef_names) == 1 and coef == "(Intercept)":
        return f"sd_{term.name}"
    return f"sd_{term.name}[{coef}]"


def _build_params(
    x_names: tuple[str, ...],
    scaling: Scaling,
    terms: list[_RETerm],
    family: str,
    priors: dict[str, Any] | None,
) -> list[_Param]:
    """All parameters with default priors, then user overrides (data scale) applied."""
    sy, my = scaling.y_sd, scaling.y_mean
    params: list[_Param] = []
    for j, name in enumerate(x_names):
        if j == scaling.intercept:
            params.append(_Param(name, "Intercept", sy, my, default_prior("Intercept", family),
                                 "default", "intercept at the predictor means"))
        else:
            params.append(_Param(name, "slope", sy / float(scaling.x_sd[j]), 0.0,
                                 default_prior("slope", family), "default",
                                 "fixed effect"))
    if family == "gaussian":
        params.append(_Param("sigma", "sigma", sy, 0.0, default_prior("sigma", family),
                             "default", "residual SD"))
    if family == "beta_binomial":
        params.append(_Param("kappa", "kappa", 1.0, 0.0, default_prior("kappa", family),
                             "default", "beta-binomial concentration (larger = less "
                             "overdispersion)"))
    for t in terms:
        for coef, zs in zip(t.coef_names, t.z_sd, strict=True):
            params.append(_Param(_sd_key(t, coef), "sd", sy / float(zs), 0.0,
                                 default_prior("sd", family), "default",
                                 f"SD of {coef} across {t.group}"))
        if t.correlated:
            params.append(_Param(f"lkj_{t.name}", "lkj", 1.0, 0.0,
                                 default_prior("lkj", family), "default",
                                 f"correlations of the random coefficients of {t.group}"))
    if not priors:
        return params
    if not isinstance(priors, dict):
        raise ModelSpecError(f"priors must be a dict term -> (distribution, params), got "
                             f"{type(priors).__name__}")
    by_key = {p.key: i for i, p in enumerate(params)}
    # "sd_<group>" also addresses every coefficient of a multi-coefficient term
    groups_multi = {f"sd_{t.name}": [_sd_key(t, c) for c in t.coef_names]
                    for t in terms if len(t.coef_names) > 1}
    for key, spec in priors.items():
        targets = [key] if key in by_key else groups_multi.get(key, [])
        if not targets:
            valid = [p.key for p in params] + list(groups_multi)
            raise ModelSpecError(
                f"priors names term {key!r}, which is not a parameter of this model; "
                f"terms that take a prior: {', '.join(valid)}"
            )
        for tk in targets:
            i = by_key[tk]
            old = params[i]
            pr = parse_prior(tk, spec, kind=old.kind, shifted=old.d != 0.0)
            params[i] = _Param(old.key, old.kind, old.c, old.d, pr.to_standardised(old.c, old.d),
                               "user", old.meaning)
    param_of = {p.key: p for p in params}
    for t in terms:
        if t.correlated:
            fams = {param_of[_sd_key(t, c)].prior_std.dist for c in t.coef_names}
            if len(fams) > 1:
                raise ModelSpecError(
                    f"the SD priors of the correlated term for {t.group!r} must share one "
                    f"family (they feed one LKJ covariance); got {', '.join(sorted(fams))}. "
                    f"Set them together with the key 'sd_{t.name}'"
                )
    return params


def _prior_table(params: list[_Param]) -> pd.DataFrame:
    rows = []
    for p in params:
        rows.append({
            "term": p.key,
            "meaning": p.meaning,
            "prior_standardised": str(p.prior_std),
            "prior_data_scale": str(p.prior_data),
            "scale_factor": p.c,
            "source": p.source,
        })
    return pd.DataFrame(rows).set_index("term")


# ----------------------------------------------------------------------------------------
# data checks
# ----------------------------------------------------------------------------------------


def _check_finite(frame: ModelFrame, family: str) -> None:
    """Non-finite model values (column, rows, value) and a constant gaussian outcome."""
    frame.check_finite(error=DataValidationError)
    if family == "gaussian" and np.ptp(frame.y) == 0:
        raise ModelSpecError(
            f"response {frame.spec.response!r} is constant ({frame.y[0]:g} in all "
            f"{frame.n_obs} rows); a gaussian model cannot be fitted"
        )


def _check_counts(values: np.ndarray, index: pd.Index, column: str, what: str,
                  raw: np.ndarray | None = None) -> np.ndarray:
    """Whole, non-negative counts; ``raw`` (the column as given) is shown in messages."""
    shown = np.asarray(values if raw is None else raw, dtype=object)
    bad_int = ~np.isfinite(values)
    bad_int[~bad_int] = ~np.isclose(values[~bad_int], np.round(values[~bad_int]))
    if bad_int.any():
        rows = list(index[bad_int])
        first = shown[bad_int][0]
        first_s = f"{first:g}" if isinstance(first, float | np.floating) else repr(first)
        raise DataValidationError(
            f"column {column!r} ({what}) must hold whole-number counts; "
            f"{format_rows(rows)}: {first_s}" + (" (the first)" if len(rows) > 1 else "")
        )
    neg = values < 0
    if neg.any():
        rows = list(index[neg])
        raise DataValidationError(
            f"column {column!r} ({what}) must be >= 0; {format_rows(rows)}: "
            f"{float(values[neg][0]):g}" + (" (the first)" if len(rows) > 1 else "")
        )
    return np.round(values).astype(np.int64)


# ----------------------------------------------------------------------------------------
# the PyMC model
# ----------------------------------------------------------------------------------------


def _rv(pm: Any, name: str, prior: Prior, **kw: Any) -> Any:
    cls = getattr(pm, prior.dist)
    return cls(name, **prior.params, **kw)


def _stacked(pm: Any, pt: Any, name: str, priors: list[Prior], dims: str | None) -> Any:
    """One vector RV when every element has the same family, else stacked scalars."""
    if len({p.dist for p in priors}) == 1:
        keys = priors[0].params.keys()
        arrays = {k: np.array([p.params[k] for p in priors]) for k in keys}
        cls = getattr(pm, priors[0].dist)
        if dims is not None:
            return cls(name, **arrays, dims=dims)
        return cls(name, **arrays, shape=len(priors))
    return pt.stack([_rv(pm, f"{name}_{i}", p) for i, p in enumerate(priors)])


def _build_model(
    frame: ModelFrame,
    family: str,
    n_trials: np.ndarray | None,
    scaling: Scaling,
    terms: list[_RETerm],
    params: list[_Param],
    obs_name: str,
) -> Any:
    import pymc as pm
    import pytensor.tensor as pt

    by_key = {p.key: p for p in params}
    x_names = frame.x_names
    Xs = scaling.standardise_X(frame.X)
    coords: dict[str, Any] = {"term": list(x_names), "obs": np.arange(frame.n_obs)}
    for t in terms:
        coords[f"{t.name}_coef"] = list(t.coef_names)
        coords[f"{t.name}_coef_bis"] = list(t.coef_names)
        coords[t.name] = [str(v) for v in frame.group_labels[t.group]]
    T, shift = scaling.back_matrix()
    with pm.Model(coords=coords) as model:
        b_std = _stacked(pm, pt, "beta_std", [by_key[n].prior_std for n in x_names], "term")
        pm.Deterministic("beta", pt.as_tensor(shift) + pt.dot(pt.as_tensor(T), b_std),
                         dims="term")
        eta = pt.dot(pt.as_tensor(Xs), b_std)
        for t in terms:
            sd_priors = [by_key[_sd_key(t, c)].prior_std for c in t.coef_names]
            z = pm.Normal(f"z_{t.name}", 0.0, 1.0, dims=(t.name, f"{t.name}_coef"))
            if t.correlated:
                # LKJCholeskyCov: sd_dist is one vector distribution (same family per term)
                eta_lkj = by_key[f"lkj_{t.name}"].prior_std.params["eta"]
                arrays = {k: np.array([p.params[k] for p in sd_priors])
                          for k in sd_priors[0].params}
                sd_dist = getattr(pm, sd_priors[0].dist).dist(**arrays, shape=len(sd_priors))
                chol, corr, sd_std = pm.LKJCholeskyCov(
                    f"chol_cov_{t.name}", n=len(t.coef_names), eta=eta_lkj, sd_dist=sd_dist,
                    compute_corr=True, store_in_trace=False)
                pm.Deterministic(f"corr_{t.name}", corr,
                                 dims=(f"{t.name}_coef", f"{t.name}_coef_bis"))
                u = pt.dot(z, chol.T)
            else:
                sd_std = _stacked(pm, pt, f"sd_std_{t.name}", sd_priors, f"{t.name}_coef")
                u = z * sd_std
            pm.Deterministic(f"sd_{t.name}", sd_std * pt.as_tensor(scaling.y_sd / t.z_sd),
                             dims=f"{t.name}_coef")
            eta = eta + (u[t.codes] * pt.as_tensor(t.Z)).sum(axis=1)
        if family == "gaussian":
            sigma_std = _rv(pm, "sigma_std", by_key["sigma"].prior_std)
            pm.Deterministic("sigma", sigma_std * scaling.y_sd)
            pm.Normal(obs_name, mu=scaling.y_mean + scaling.y_sd * eta,
                      sigma=scaling.y_sd * sigma_std, observed=frame.y, dims="obs")
        elif family == "binomial":
            pm.Binomial(obs_name, n=n_trials, logit_p=eta,
                        observed=frame.y.astype(np.int64), dims="obs")
        else:
            kappa = _rv(pm, "kappa", by_key["kappa"].prior_std)
            p = pm.math.invlogit(eta)
            pm.BetaBinomial(obs_name, alpha=p * kappa, beta=(1.0 - p) * kappa, n=n_trials,
                            observed=frame.y.astype(np.int64), dims="obs")
    return model


# ----------------------------------------------------------------------------------------
# summaries and diagnostics
# ----------------------------------------------------------------------------------------


def _reported_draws(idata: Any, x_names: tuple[str, ...], terms: list[_RETerm],
                    family: str) -> dict[str, np.ndarray]:
    """Collect the reported parameters as ``{label: (chain, draw) array}`` on the data scale."""
    post = idata.posterior
    out: dict[str, np.ndarray] = {}
    beta = post["beta"].transpose("chain", "draw", "term").values
    for j, n in enumerate(x_names):
        out[n] = beta[:, :, j]
    if family == "gaussian":
        out["sigma"] = post["sigma"].transpose("chain", "draw").values
    if family == "beta_binomial":
        out["kappa"] = post["kappa"].transpose("chain", "draw").values
    for t in terms:
        sd = post[f"sd_{t.name}"].transpose("chain", "draw", ...).values
        for i, c in enumerate(t.coef_names):
            out[_sd_key(t, c)] = sd[:, :, i]
        if t.correlated:
            corr = post[f"corr_{t.name}"].transpose("chain", "draw", ...).values
            q = len(t.coef_names)
            for i in range(q):
                for k in range(i):
                    out[f"corr_{t.name}[{t.coef_names[i]}, {t.coef_names[k]}]"] = corr[:, :, i, k]
    return out


def _summary_table(draws: dict[str, np.ndarray], ci_prob: float = _CI_PROB) -> pd.DataFrame:
    import arviz as az

    dt = az.from_dict({"posterior": {k: np.asarray(v) for k, v in draws.items()}})
    with warnings.catch_warnings():
        # arviz warns about too few draws for ESS/r_hat; our own check reports those
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        tab = az.summary(dt, ci_kind="hdi", ci_prob=ci_prob, round_to="none")
    tab = pd.DataFrame(tab).astype(float)
    tab.index = pd.Index([str(i) for i in tab.index], name="parameter")
    return tab


def _diagnose(table: pd.DataFrame, n_div: int, n_draws: int, rhat_max: float,
              ess_min: float) -> str | None:
    """Return the warning text when a diagnostic fails, else ``None``."""
    parts: list[str] = []
    rh = table["r_hat"]
    bad_rhat = rh[rh > rhat_max]
    if len(bad_rhat):
        parts.append(
            f"r_hat > {rhat_max:g} for {len(bad_rhat)} parameter(s): "
            + ", ".join(f"{k} ({v:.3f})" for k, v in bad_rhat.items())
        )
    ess = table["ess_bulk"]
    bad_ess = ess[ess < ess_min]
    if len(bad_ess):
        parts.append(
            f"ess_bulk < {ess_min:g} for {len(bad_ess)} parameter(s): "
            + ", ".join(f"{k} ({v:.0f})" for k, v in bad_ess.items())
        )
    if n_div:
        parts.append(f"{n_div} divergent transition(s) after tuning (of {n_draws} draws)")
    if not parts:
        return None
    advice = []
    if n_div:
        advice.append("raise target_accept (e.g. 0.95 or 0.99)")
        advice.append("reparametrise: tighter priors on the sd_* terms or fewer random slopes")
    if len(bad_rhat) or n_div:
        advice.append("more tuning (e.g. tune=2000)")
    if len(bad_ess) or len(bad_rhat):
        advice.append("more draws (e.g. draws=2000) and 4 chains")
    return "MCMC diagnostics failed: " + "; ".join(parts) + ". Try: " + "; ".join(advice) + "."


# ----------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BayesFit:
    """A Bayesian (generalised) linear mixed model fitted by :func:`fit_bayes`.

    Attributes
    ----------
    spec : ModelSpec
        The parsed formula.
    frame : ModelFrame
        The encoded data.
    idata : xarray.DataTree
        ArviZ data: ``posterior``, ``posterior_predictive``, ``log_likelihood``,
        ``observed_data``, ``sample_stats`` (and ``prior``/``prior_predictive`` when
        requested). Data-scale fixed effects are ``beta`` (dim ``term``); residual SD
        ``sigma``; random-effect SDs ``sd_<group>``; correlations ``corr_<group>``.
        Variables ending in ``_std`` are the sampled standardised parameters.
    family : str
        ``"gaussian"``, ``"binomial"`` or ``"beta_binomial"``.
    trials : str or None
        Column of binomial denominators.
    priors : DataFrame
        Every prior on the standardised scale and on the data scale, with its source
        (``"default"`` or ``"user"``).
    scaling : Scaling
        The design standardisation (and its inverse).
    sampler : str
        ``"pymc"`` or ``"nutpie"``, as used.
    n_divergent : int
        Divergent transitions after tuning.
    wall_time : float
        Seconds for building, compiling and sampling (posterior predictive and
        log-likelihood included).
    model : pymc.Model
        The PyMC model (for further sampling).
    """

    spec: ModelSpec
    frame: ModelFrame
    idata: Any
    family: str
    trials: str | None
    priors: pd.DataFrame
    scaling: Scaling
    sampler: str
    n_divergent: int
    wall_time: float
    model: Any = field(repr=False)
    _table: pd.DataFrame = field(repr=False)
    _terms: tuple[_RETerm, ...] = field(repr=False, default=())

    # -- FixedEffectsFit -----------------------------------------------------------------
    @property
    def fixed_draws(self) -> pd.DataFrame:
        """Posterior draws of the fixed effects (data scale), shape (chains*draws, p)."""
        beta = self.idata.posterior["beta"].transpose("chain", "draw", "term").values
        return pd.DataFrame(beta.reshape(-1, beta.shape[-1]), columns=list(self.frame.x_names))

    @property
    def params(self) -> pd.Series:
        """Posterior means of the fixed effects, named like ``frame.x_names``."""
        return self.fixed_draws.mean(axis=0).rename("posterior_mean")

    def cov_params(self) -> pd.DataFrame:
        """Posterior covariance of the fixed effects."""
        return self.fixed_draws.cov()

    def contrast_df(self, L: np.ndarray) -> float:
        """Degrees of freedom for a contrast: ``inf`` (posterior summaries use draws)."""
        return float(np.inf)

    @property
    def inverse_link(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Inverse link: logistic (binomial families) or ``None`` (identity, gaussian).

        ``am.conditional_effects(bfit, ..., scale="response")`` uses it to report
        probabilities for the binomial families.
        """
        if self.family == "gaussian":
            return None
        from scipy.special import expit

        return expit

    @property
    def observed_response(self) -> np.ndarray:
        """Observed outcome on the response scale (successes / trials for binomial data)."""
        y = np.asarray(self.frame.y, dtype=float)
        if self.trials is None:
            return y
        return y / pd.to_numeric(self.frame.data[self.trials]).to_numpy(dtype=float)

    # -- summaries -----------------------------------------------------------------------
    @property
    def n_draws(self) -> int:
        """Total posterior draws (chains times draws per chain)."""
        post = self.idata.posterior
        return int(post.sizes["chain"] * post.sizes["draw"])

    def to_frame(self) -> pd.DataFrame:
        """Posterior summary of the reported parameters (data scale).

        Columns: ``mean``, ``sd``, ``hdi95_lb``, ``hdi95_ub``, ``ess_bulk``, ``ess_tail``,
        ``r_hat``, ``mcse_mean``, ``mcse_sd`` (``arviz.summary`` with ``ci_kind="hdi"``).
        """
        return self._table.copy()

    def summary(self) -> str:
        """Return a printable summary: model, sampling, posterior table and priors."""
        post = self.idata.posterior
        ng = ", ".join(f"{k}: {v}" for k, v in self.frame.n_groups.items())
        head = [
            f"Bayesian {self.family} mixed model: {self.spec.formula}",
            f"observations: {self.frame.n_obs}" + (f"; groups: {ng}" if ng else ""),
            f"sampler: {self.sampler}; chains: {post.sizes['chain']}; draws per chain: "
            f"{post.sizes['draw']}; divergences: {self.n_divergent}; "
            f"wall time: {self.wall_time:.1f} s",
            "",
        ]
        tab = self._table.to_string(float_format=lambda v: f"{v:.4g}")
        pri = self.priors[["prior_standardised", "prior_data_scale", "source"]].to_string()
        return "\n".join([*head, tab, "", "Priors (standardised scale -> data scale):", pri])

    def __str__(self) -> str:
        return self.summary()

    # -- plots ---------------------------------------------------------------------------
    def _reported_vars(self) -> list[str]:
        names = ["beta"]
        if "sigma" in self.idata.posterior:
            names.append("sigma")
        if "kappa" in self.idata.posterior:
            names.append("kappa")
        names += [f"sd_{t.name}" for t in self._terms]
        return names

    def plot(self, kind: str = "trace", path: str | Path | None = None) -> Any:
        """Draw an ArviZ diagnostic plot and optionally save it (PNG, headless).

        Parameters
        ----------
        kind : {"trace", "rank", "forest", "ppc", "prior_ppc", "posterior"}
            ``trace``: traces and marginal densities of the reported parameters;
            ``rank``: rank plots (chain mixing); ``forest``: 95% HDIs of the interaction
            terms (all slopes when there is no interaction); ``ppc``: posterior predictive
            check (densities for the gaussian family, a rootogram of the counts for the
            binomial families); ``prior_ppc``: the same for the prior predictive (fit with
            ``prior_predictive=True``); ``posterior``: posterior densities of the fixed
            effects with 95% HDIs.
        path : str or Path, optional
            Where to save the figure (format from the suffix, e.g. ``.png``).

        Returns
        -------
        arviz.PlotCollection

        Examples
        --------
        >>> pc = bfit.plot("forest", "forest.png")  # doctest: +SKIP
        """
        import arviz as az

        if kind not in _PLOT_KINDS:
            raise ModelSpecError(f"plot kind {kind!r} is not known; use one of "
                                 f"{', '.join(_PLOT_KINDS)}")
        dt = self.idata
        if kind == "trace":
            # one row per coefficient: on a shared axis the intercept squashes the slopes
            pc = az.plot_trace_dist(dt, var_names=self._reported_vars(), compact=False,
                                    backend="matplotlib")
        elif kind == "rank":
            pc = az.plot_rank(dt, var_names=self._reported_vars(), backend="matplotlib")
        elif kind == "forest":
            inter = [n for n in self.frame.x_names if ":" in n]
            if not inter:
                inter = [n for n in self.frame.x_names if n != "Intercept"] or list(
                    self.frame.x_names)
            pc = az.plot_forest(dt, var_names=["beta"], coords={"term": inter},
                                combined=True, ci_kind="hdi", ci_probs=[0.5, _CI_PROB],
                                backend="matplotlib")
        elif kind in ("ppc", "prior_ppc"):
            group = "posterior_predictive" if kind == "ppc" else "prior_predictive"
            if group not in dt.children:
                raise ModelSpecError("kind='prior_ppc' needs a fit made with "
                                     "prior_predictive=True")
            # counts (binomial families) get a rootogram, continuous outcomes densities
            ppc = az.plot_ppc_dist if self.family == "gaussian" else az.plot_ppc_rootogram
            pc = ppc(dt, group=group, backend="matplotlib")
        else:
            pc = az.plot_dist(dt, var_names=["beta"], ci_kind="hdi", ci_prob=_CI_PROB,
                              backend="matplotlib")
        if path is not None:
            pc.savefig(str(path))
        return pc


# ----------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------


def _seed_int(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _resolve_sampler(sampler: str) -> str:
    """Map ``sampler`` to the NUTS implementation used (``"auto"`` is PyMC's; see fit_bayes)."""
    if sampler not in _SAMPLERS:
        raise ModelSpecError(f"sampler must be one of {', '.join(_SAMPLERS)}, got {sampler!r}")
    if sampler == "nutpie":
        try:
            import nutpie  # noqa: F401
        except ImportError:  # pragma: no cover - optional dependency
            raise ModelSpecError("sampler='nutpie' needs the nutpie package: pip install "
                                 "'alliance_models[fast]'") from None
        return "nutpie"
    return "pymc"


def fit_bayes(
    formula: str | ModelSpec,
    data: pd.DataFrame,
    *,
    family: Family = "gaussian",
    trials: str | None = None,
    priors: dict[str, Any] | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: RNGLike = None,
    sampler: Literal["auto", "pymc", "nutpie"] = "auto",
    prior_predictive: bool = False,
    progressbar: bool = False,
    target_accept: float = 0.9,
    rhat_max: float = 1.01,
    ess_min: float = 400.0,
) -> BayesFit:
    """Fit an lme4-style (generalised) linear mixed model with PyMC.

    The fixed design (every non-intercept column centred and scaled) and, for the
    gaussian family, the outcome are standardised before sampling; random effects are
    non-centred (``u = sd * L z`` with an LKJ prior on the correlation Cholesky factor
    ``L`` for correlated slopes). Draws are mapped back exactly, so ``bfit.params`` are on
    the same scale as ``fit_mixed``'s estimates.

    Parameters
    ----------
    formula : str or ModelSpec
        E.g. ``"adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"``.
        For the binomial families the response is the count of successes.
    data : DataFrame
        Analysis data (rows with missing model values are dropped with a
        ``MissingDataWarning``).
    family : {"gaussian", "binomial", "beta_binomial"}
        Likelihood; the binomial families use a logit link.
    trials : str, optional
        Column of denominators (required for the binomial families).
    priors : dict, optional
        Per-term overrides on the *data scale*, e.g.
        ``{"alliance:autonomy": ("Normal", {"mu": 0, "sigma": 0.5}),
        "sd_therapist": ("HalfNormal", {"sigma": 1})}``. Keys: fixed-effect names (the
        ``Intercept`` prior is for the outcome at the predictor means), ``sigma``,
        ``sd_<group>`` (or ``sd_<group>[coef]`` for one coefficient of a random-slope
        term), ``lkj_<group>``, ``kappa``. ``bfit.priors`` lists every key with its prior on
        both scales. Defaults (standardised scale) are in
        :func:`alliance_models.models._priors.default_prior`.
    draws, tune, chains : int
        Posterior draws and tuning steps per chain, and the number of chains.
    seed : int, Generator or SeedSequence, optional
        Seeds sampling, posterior and prior predictive draws.
    sampler : {"auto", "pymc", "nutpie"}
        NUTS implementation; ``"auto"`` is PyMC's NUTS, chosen by measurement
        (``benchmarks/bayes_speed.py``, 2-core machine, each fit in a fresh process so
        compilation counts, 4 chains x 1000 draws after 1000 tuning steps). On the
        three-level moderation model of the example data (2,423 rows, 40 therapists,
        397 patients) nutpie finished 2.8x sooner (26 s vs 74 s) but its smallest bulk
        ESS over the fixed effects was 369 against PyMC's 1,293, so PyMC gave more
        effective draws per second (17.5 vs 14.1) and passed the ``ess_min=400`` check
        at the default draws, where nutpie did not; on a 481-row subset: 39 s vs 22 s,
        ESS/s 46 vs 25 (a rerun on a less loaded machine: 40 s vs 15 s and ESS/s 32 vs
        24 on the full data, 23 s vs 16 s and 78 vs 34 on the subset; the same ESS, as
        the runs are seeded). PyMC's chains run one after the other (``cores=1``: no fork
        ``DeprecationWarning`` on Python 3.12 and no oversubscription of small
        machines). Take ``"nutpie"`` for quick looks at large models.
    prior_predictive : bool
        Also draw from the prior predictive (for ``plot("prior_ppc")``).
    progressbar : bool
        Show the sampler's progress bar.
    target_accept : float
        NUTS target acceptance rate (raise it when there are divergences).
    rhat_max, ess_min : float
        Thresholds of the :class:`~alliance_models.DiagnosticsWarning` issued after
        sampling for each reported parameter with ``r_hat > rhat_max`` or
        ``ess_bulk < ess_min`` (and for any divergence).

    Returns
    -------
    BayesFit

    Raises
    ------
    ModelSpecError
        Unknown family or sampler, binomial family without ``trials``, unknown prior
        terms, bad prior specifications, bad sampler settings.
    DataValidationError
        Non-integer or negative counts, successes above trials.

    Examples
    --------
    >>> import alliance_models as am
    >>> data = am.simulate(am.Design(therapists=20), seed=1)  # doctest: +SKIP
    >>> bfit = am.fit_bayes("adherence ~ alliance * autonomy + (1 | therapist)",
    ...                     data, seed=1)  # doctest: +SKIP
    >>> bfit.summary()  # doctest: +SKIP
    """
    import pymc as pm

    t0 = time.perf_counter()
    if family not in _FAMILIES:
        raise ModelSpecError(f"family must be one of {', '.join(_FAMILIES)}, got {family!r}")
    for name, v, lo in (("draws", draws, 1), ("tune", tune, 0), ("chains", chains, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ModelSpecError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not float(rhat_max) >= 1.0:
        raise ModelSpecError(f"rhat_max must be >= 1 (r_hat is 1 at convergence), got "
                             f"{rhat_max!r}")
    if not float(ess_min) >= 0.0:
        raise ModelSpecError(f"ess_min must be >= 0, got {ess_min!r}")
    if not 0.5 <= float(target_accept) < 1.0:
        raise ModelSpecError(f"target_accept must be in [0.5, 1), got {target_accept!r}")
    if family != "gaussian" and trials is None:
        raise ModelSpecError(
            f"family={family!r} needs trials= naming the column of denominators (e.g. "
            "'scheduled' or 'prescribed'); the response is the count of successes"
        )
    if family == "gaussian" and trials is not None:
        raise ModelSpecError("trials= is only used by the binomial families; drop it or set "
                             "family='binomial'")
    spec = formula if isinstance(formula, ModelSpec) else parse_formula(formula)
    frame = spec.build(data, extra=(trials,) if trials else ())
    used = _resolve_sampler(sampler)

    n_trials = None
    if trials is not None:
        idx = frame.data.index
        n_trials = _check_counts(
            pd.to_numeric(frame.data[trials], errors="coerce").to_numpy(dtype=float), idx,
            trials, "trials", raw=frame.data[trials].to_numpy())
        y = _check_counts(frame.y, idx, spec.response, "successes")
        over = y > n_trials
        if over.any():
            rows = list(idx[over])
            k = int(np.flatnonzero(over)[0])
            raise DataValidationError(
                f"response {spec.response!r} exceeds trials column {trials!r} in "
                f"{format_rows(rows)} (first: {y[k]} successes of {n_trials[k]}); "
                "successes must be between 0 and the number of trials"
            )

    _check_finite(frame, family)
    scaling = make_scaling(frame.X, frame.y, frame.x_names, family == "gaussian")
    terms = _re_terms(frame)
    params = _build_params(frame.x_names, scaling, terms, family, priors)
    obs_name = spec.response if re.fullmatch(r"[A-Za-z_]\w*", spec.response) else "y"
    model = _build_model(frame, family, n_trials, scaling, terms, params, obs_name)

    s_sample, s_ppc, s_prior = (_seed_int(s) for s in spawn_seeds(seed, 3))
    # PyMC's NUTS runs its chains one after the other (cores=1: no fork warning on 3.12,
    # and no oversubscription of small machines); nutpie runs chains in threads.
    kwargs: dict[str, Any] = {"cores": 1} if used == "pymc" else {}
    # a diverging trajectory can overflow inside NUTS; PyMC counts it as a divergence,
    # which the diagnostics below report, so numpy's own overflow warnings add nothing
    with model, np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        # PyTensor's numba backend has no compiled beta-binomial RNG and says it falls
        # back to object mode (slower, same draws); nothing for the user to act on.
        warnings.filterwarnings("ignore", message=".*Numba will use object mode",
                                category=UserWarning)
        # PyMC compiles its initial-point function in FAST_COMPILE mode; for
        # LKJCholeskyCov (a scan) that uses PyTensor's C backend, which looks for a BLAS
        # to link to once per process and, with pip's numpy, warns that it found none.
        # Only that tiny start-value graph is affected (logp, gradients and predictive
        # draws run on the default numba backend, which does its own BLAS calls), so
        # the notice says nothing about this fit.
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS",
                                category=UserWarning)
        idata = pm.sample(
            int(draws), tune=int(tune), chains=int(chains), random_seed=s_sample,
            nuts_sampler=used, progressbar=progressbar, quiet=not progressbar,
            target_accept=float(target_accept), compute_convergence_checks=False, **kwargs,
        )
        pm.compute_log_likelihood(idata, extend_inferencedata=True, progressbar=False)
        # PyMC logs "Sampling: [adherence]" for predictive draws; quiet when sampling is
        with _quiet_log("pymc.sampling.forward", not progressbar):
            pm.sample_posterior_predictive(idata, extend_inferencedata=True,
                                           random_seed=s_ppc, progressbar=False)
            if prior_predictive:
                prior = pm.sample_prior_predictive(draws=int(draws), random_seed=s_prior)
                idata["prior"] = prior["prior"]
                idata["prior_predictive"] = prior["prior_predictive"]
    wall = time.perf_counter() - t0

    n_div = int(idata.sample_stats["diverging"].sum()) if "diverging" in (
        idata.sample_stats) else 0
    table = _summary_table(_reported_draws(idata, frame.x_names, terms, family))
    msg = _diagnose(table, n_div, int(draws) * int(chains), rhat_max, ess_min)
    if msg:
        warnings.warn(msg, DiagnosticsWarning, stacklevel=2)
    return BayesFit(
        spec=spec,
        frame=frame,
        idata=idata,
        family=family,
        trials=trials,
        priors=_prior_table(params),
        scaling=scaling,
        sampler=used,
        n_divergent=n_div,
        wall_time=wall,
        model=model,
        _table=table,
        _terms=tuple(terms),
    )


@contextlib.contextmanager
def _quiet_log(name: str, quiet: bool) -> Iterator[None]:
    """Hold the logger ``name`` at WARNING inside the block when ``quiet``."""
    if not quiet:
        yield
        return
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------------------
# model comparison
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ComparisonResult:
    """PSIS-LOO comparison of Bayesian fits made by :func:`compare`.

    Attributes
    ----------
    table : DataFrame
        ``arviz.compare`` output, best model first: ``rank``, ``elpd``, ``p``,
        ``elpd_diff``, ``weight``, ``se``, ``dse``, ``warning`` and further columns.
    loo : dict
        The ``arviz.loo`` result (pointwise, with Pareto k) of each model.
    n_high_k : dict of str to int
        Observations with Pareto k above ``pareto_k_max`` per model.
    pareto_k_max : float
        The threshold used.
    """

    table: pd.DataFrame
    loo: dict[str, Any]
    n_high_k: dict[str, int]
    pareto_k_max: float

    @property
    def best(self) -> str:
        """Name of the model with the highest expected log predictive density."""
        return str(self.table.index[0])

    def to_frame(self) -> pd.DataFrame:
        """Return the comparison table (a copy)."""
        return self.table.copy()

    def plot(self, path: str | Path | None = None) -> Any:
        """Plot the ELPD of each model with its SE (``arviz.plot_compare``), saved if asked.

        Returns
        -------
        The ArviZ plot object (a ``PlotCollection``).
        """
        import arviz as az

        pc = az.plot_compare(self.table, backend="matplotlib")
        if path is not None:
            pc.savefig(str(path))
        return pc

    def summary(self) -> str:
        """Return the comparison table with a one-line reading of it."""
        cols = [c for c in ("rank", "elpd", "p", "elpd_diff", "dse", "weight", "se")
                if c in self.table.columns]
        tab = self.table[cols].to_string(float_format=lambda v: f"{v:.3g}")
        lines = [f"PSIS-LOO comparison ({len(self.table)} models); best: {self.best}", tab]
        bad = {k: v for k, v in self.n_high_k.items() if v}
        if bad:
            lines.append(f"Pareto k > {self.pareto_k_max:g}: "
                         + ", ".join(f"{k}: {v} obs" for k, v in bad.items()))
        return "\n".join(lines)


def compare(models: dict[str, BayesFit], *, pareto_k_max: float = 0.7) -> ComparisonResult:
    """Compare Bayesian fits of the same outcome by PSIS-LOO (``arviz.compare``).

    Parameters
    ----------
    models : dict of str to BayesFit
        At least two fits to the same rows and outcome, e.g.
        ``{"moderated": b1, "additive": b0}``.
    pareto_k_max : float, default 0.7
        A :class:`~alliance_models.DiagnosticsWarning` names each model with observations
        whose Pareto k exceeds this (its LOO estimate is then unreliable).

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ModelSpecError
        Fewer than two models, something other than a BayesFit, or fits to different
        data.

    Examples
    --------
    >>> res = am.compare({"moderated": b1, "additive": b0})  # doctest: +SKIP
    >>> res.table[["elpd", "p", "elpd_diff", "dse"]]  # doctest: +SKIP
    """
    import arviz as az

    if not isinstance(models, dict) or len(models) < 2:
        raise ModelSpecError("compare needs a dict of at least two named BayesFit results")
    for k, m in models.items():
        if not isinstance(m, BayesFit):
            raise ModelSpecError(f"model {k!r} is a {type(m).__name__}, not a BayesFit; "
                                 "LOO comparison needs Bayesian fits")
    names = list(models)
    ref = models[names[0]]
    for k in names[1:]:
        m = models[k]
        same = (m.frame.n_obs == ref.frame.n_obs and m.frame.data.index.equals(
            ref.frame.data.index) and np.array_equal(m.frame.y, ref.frame.y))
        if not same:
            raise ModelSpecError(
                f"models {names[0]!r} and {k!r} were fitted to different rows or outcomes "
                f"({ref.frame.n_obs} vs {m.frame.n_obs} observations); LOO comparison needs "
                "the same data"
            )
    loos: dict[str, Any] = {}
    n_high: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in names:
            loos[k] = az.loo(models[k].idata, pointwise=True)
            n_high[k] = int((np.asarray(loos[k].pareto_k) > pareto_k_max).sum())
        table = pd.DataFrame(az.compare({k: models[k].idata for k in names},
                                        round_to="none"))
    bad = {k: v for k, v in n_high.items() if v}
    if bad:
        warnings.warn(
            f"Pareto k > {pareto_k_max:g} (PSIS-LOO unreliable) for "
            + ", ".join(f"{k}: {v} of {models[k].frame.n_obs} observations"
                        for k, v in bad.items())
            + "; try moment matching or K-fold cross-validation, or check those "
            "observations for outliers",
            DiagnosticsWarning,
            stacklevel=2,
        )
    return ComparisonResult(table=table, loo=loos, n_high_k=n_high, pareto_k_max=pareto_k_max)
