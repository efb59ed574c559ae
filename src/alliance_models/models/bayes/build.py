"""The sampled model: its random-effects terms, its parameters with priors, the PyMC graph.

:func:`re_terms` and :func:`model_params` are plain numpy/Python: the random-effects
terms as sampled (scaled ``Z`` columns) and every prior-bearing parameter with its affine
map to the data scale, defaults first and the user's ``priors=`` applied on top.
:func:`build_model` turns them into a PyMC model with non-centred random effects;
:func:`build_collapsed_model` into the same model with nested random intercepts integrated
out (:mod:`.collapsed`), the model sampled when it applies. They are the only functions
here that import PyMC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...errors import ModelSpecError
from ...spec import ModelFrame
from .priors import Prior, default_prior, parse_prior
from .scaling import Scaling

__all__ = ["Parameter", "RETerm", "build_collapsed_model", "build_model", "model_params",
           "prior_table", "re_terms", "sd_key"]


# ----------------------------------------------------------------------------------------
# random-effects terms
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RETerm:
    """A random-effects term as sampled: names, groups, scaled Z columns."""

    name: str  # unique group label used in parameter names
    group: str
    coef_names: tuple[str, ...]
    codes: np.ndarray
    n_groups: int
    Z: np.ndarray  # scaled (n, q)
    z_sd: np.ndarray  # (q,)
    correlated: bool


def re_terms(frame: ModelFrame) -> list[RETerm]:
    """Return the random-effects terms of ``frame``, non-intercept Z columns at SD 1.

    A grouping factor named by several terms gets the labels ``g``, ``g_2``, ...
    """
    terms: list[RETerm] = []
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
            RETerm(
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


def sd_key(term: RETerm, coef: str) -> str:
    """Return the name of one random-effect SD: ``sd_<group>`` or ``sd_<group>[coef]``."""
    if len(term.coef_names) == 1 and coef == "(Intercept)":
        return f"sd_{term.name}"
    return f"sd_{term.name}[{coef}]"


# ----------------------------------------------------------------------------------------
# parameters and their priors
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One prior-bearing parameter: its key, kind, affine data-scale map and prior.

    The data-scale parameter is ``c * theta_std + d``; ``prior_std`` is the prior of the
    sampled ``theta_std``.
    """

    key: str
    kind: str
    c: float
    d: float
    prior_std: Prior
    source: str
    meaning: str

    @property
    def prior_data(self) -> Prior:
        """The prior on the data scale."""
        return self.prior_std.to_data(self.c, self.d)


def model_params(
    x_names: tuple[str, ...],
    scaling: Scaling,
    terms: list[RETerm],
    family: str,
    priors: dict[str, Any] | None,
) -> list[Parameter]:
    """All parameters with default priors, then user overrides (data scale) applied.

    Raises
    ------
    ModelSpecError
        ``priors`` is not a dict, names an unknown term, holds a bad prior, or gives the
        SDs of one correlated term different families.
    """
    params = _default_params(x_names, scaling, terms, family)
    if not priors:
        return params
    if not isinstance(priors, dict):
        raise ModelSpecError(f"priors must be a dict term -> (distribution, params), got "
                             f"{type(priors).__name__}")
    params = _with_overrides(params, terms, priors)
    _check_lkj_families(params, terms)
    return params


def _default_params(x_names: tuple[str, ...], scaling: Scaling, terms: list[RETerm],
                    family: str) -> list[Parameter]:
    """Every parameter of the model in sampling order, with its default prior."""
    sy, my = scaling.y_sd, scaling.y_mean
    params: list[Parameter] = []
    for j, name in enumerate(x_names):
        if j == scaling.intercept:
            params.append(Parameter(name, "Intercept", sy, my,
                                    default_prior("Intercept", family), "default",
                                    "intercept at the predictor means"))
        else:
            params.append(Parameter(name, "slope", sy / float(scaling.x_sd[j]), 0.0,
                                    default_prior("slope", family), "default",
                                    "fixed effect"))
    if family == "gaussian":
        params.append(Parameter("sigma", "sigma", sy, 0.0, default_prior("sigma", family),
                                "default", "residual SD"))
    if family == "beta_binomial":
        params.append(Parameter("kappa", "kappa", 1.0, 0.0, default_prior("kappa", family),
                                "default", "beta-binomial concentration (larger = less "
                                "overdispersion)"))
    for t in terms:
        for coef, zs in zip(t.coef_names, t.z_sd, strict=True):
            params.append(Parameter(sd_key(t, coef), "sd", sy / float(zs), 0.0,
                                    default_prior("sd", family), "default",
                                    f"SD of {coef} across {t.group}"))
        if t.correlated:
            params.append(Parameter(f"lkj_{t.name}", "lkj", 1.0, 0.0,
                                    default_prior("lkj", family), "default",
                                    f"correlations of the random coefficients of {t.group}"))
    return params


def _with_overrides(params: list[Parameter], terms: list[RETerm],
                    priors: dict[str, Any]) -> list[Parameter]:
    """Apply the user's data-scale priors, converted to the standardised scale."""
    params = list(params)
    by_key = {p.key: i for i, p in enumerate(params)}
    # "sd_<group>" also addresses every coefficient of a multi-coefficient term
    groups_multi = {f"sd_{t.name}": [sd_key(t, c) for c in t.coef_names]
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
            params[i] = Parameter(old.key, old.kind, old.c, old.d,
                                  pr.to_standardised(old.c, old.d), "user", old.meaning)
    return params


def _check_lkj_families(params: list[Parameter], terms: list[RETerm]) -> None:
    """Check that the SDs of each correlated term (one LKJ covariance) share a family."""
    param_of = {p.key: p for p in params}
    for t in terms:
        if not t.correlated:
            continue
        fams = {param_of[sd_key(t, c)].prior_std.dist for c in t.coef_names}
        if len(fams) > 1:
            raise ModelSpecError(
                f"the SD priors of the correlated term for {t.group!r} must share one "
                f"family (they feed one LKJ covariance); got {', '.join(sorted(fams))}. "
                f"Set them together with the key 'sd_{t.name}'"
            )


def prior_table(params: list[Parameter]) -> pd.DataFrame:
    """One row per parameter: its prior on both scales, the scale factor and the source."""
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
# the PyMC model
# ----------------------------------------------------------------------------------------


def build_model(
    frame: ModelFrame,
    family: str,
    n_trials: np.ndarray | None,
    scaling: Scaling,
    terms: list[RETerm],
    params: list[Parameter],
    obs_name: str,
) -> Any:
    """Build the PyMC model: standardised fixed effects, non-centred random effects.

    Data-scale fixed effects are the deterministic ``beta`` (dim ``term``), random-effect
    SDs ``sd_<group>``, correlations ``corr_<group>``; the observed variable is
    ``obs_name``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    prior = {p.key: p.prior_std for p in params}
    T, shift = scaling.back_matrix()
    with pm.Model(coords=_coords(frame, terms)) as model:
        b_std = _stacked(pm, pt, "beta_std", [prior[n] for n in frame.x_names], "term")
        pm.Deterministic("beta", pt.as_tensor(shift) + pt.dot(pt.as_tensor(T), b_std),
                         dims="term")
        eta = pt.dot(pt.as_tensor(scaling.standardise_X(frame.X)), b_std)
        for t in terms:
            eta = eta + _random_effects(pm, pt, t, prior, scaling.y_sd)
        _likelihood(pm, family, eta, prior, scaling, frame.y, n_trials, obs_name)
    return model


def build_collapsed_model(
    frame: ModelFrame,
    scaling: Scaling,
    nest: Any,
    params: list[Parameter],
) -> Any:
    """Build the gaussian model with the nested random intercepts of ``nest`` integrated out.

    Same priors, names and deterministics as :func:`build_model` (``beta``, ``sigma``,
    ``sd_<group>``) but no ``z_<group>``: the likelihood is the marginal density of
    :func:`.collapsed.marginal_loglik` (a ``Potential``, on the data scale of ``y``), so
    the model's posterior is the full model's with the intercepts integrated out.
    """
    import pymc as pm
    import pytensor.tensor as pt

    from .collapsed import marginal_loglik

    prior = {p.key: p.prior_std for p in params}
    T, shift = scaling.back_matrix()
    terms = list(nest.terms)
    with pm.Model(coords=_coords(frame, terms)) as model:
        b_std = _stacked(pm, pt, "beta_std", [prior[n] for n in frame.x_names], "term")
        pm.Deterministic("beta", pt.as_tensor(shift) + pt.dot(pt.as_tensor(T), b_std),
                         dims="term")
        taus = []
        for t in terms:
            sd_std = _stacked(pm, pt, f"sd_std_{t.name}", [prior[sd_key(t, c)] for c in
                                                           t.coef_names], f"{t.name}_coef")
            pm.Deterministic(f"sd_{t.name}", sd_std * pt.as_tensor(scaling.y_sd / t.z_sd),
                             dims=f"{t.name}_coef")
            taus.append(sd_std[0])
        sigma_std = _rv(pm, "sigma_std", prior["sigma"])
        pm.Deterministic("sigma", sigma_std * scaling.y_sd)
        y_std = (np.asarray(frame.y, dtype=float) - scaling.y_mean) / scaling.y_sd
        r = pt.as_tensor(y_std) - pt.dot(pt.as_tensor(scaling.standardise_X(frame.X)), b_std)
        # the density of y is that of y_std over y_sd per observation
        pm.Potential("marginal_loglik", marginal_loglik(pt, nest, r, sigma_std, taus)
                     - frame.n_obs * np.log(scaling.y_sd))
    return model


def _coords(frame: ModelFrame, terms: list[RETerm]) -> dict[str, Any]:
    coords: dict[str, Any] = {"term": list(frame.x_names), "obs": np.arange(frame.n_obs)}
    for t in terms:
        coords[f"{t.name}_coef"] = list(t.coef_names)
        coords[f"{t.name}_coef_bis"] = list(t.coef_names)
        coords[t.name] = [str(v) for v in frame.group_labels[t.group]]
    return coords


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


def _random_effects(pm: Any, pt: Any, t: RETerm, prior: dict[str, Prior], y_sd: float) -> Any:
    """Add one term's ``z``, SDs (and LKJ factor); return its share of the predictor."""
    sd_priors = [prior[sd_key(t, c)] for c in t.coef_names]
    z = pm.Normal(f"z_{t.name}", 0.0, 1.0, dims=(t.name, f"{t.name}_coef"))
    if t.correlated:
        u, sd_std = _lkj_effects(pm, pt, t, z, sd_priors, prior[f"lkj_{t.name}"])
    else:
        sd_std = _stacked(pm, pt, f"sd_std_{t.name}", sd_priors, f"{t.name}_coef")
        u = z * sd_std
    pm.Deterministic(f"sd_{t.name}", sd_std * pt.as_tensor(y_sd / t.z_sd),
                     dims=f"{t.name}_coef")
    return (u[t.codes] * pt.as_tensor(t.Z)).sum(axis=1)


def _lkj_effects(pm: Any, pt: Any, t: RETerm, z: Any, sd_priors: list[Prior],
                 lkj: Prior) -> tuple[Any, Any]:
    """Correlated effects ``u = z L'`` with ``L`` the LKJCholeskyCov factor; ``(u, sds)``."""
    # LKJCholeskyCov: sd_dist is one vector distribution (same family per term)
    arrays = {k: np.array([p.params[k] for p in sd_priors]) for k in sd_priors[0].params}
    sd_dist = getattr(pm, sd_priors[0].dist).dist(**arrays, shape=len(sd_priors))
    chol, corr, sd_std = pm.LKJCholeskyCov(
        f"chol_cov_{t.name}", n=len(t.coef_names), eta=lkj.params["eta"], sd_dist=sd_dist,
        compute_corr=True, store_in_trace=False)
    pm.Deterministic(f"corr_{t.name}", corr, dims=(f"{t.name}_coef", f"{t.name}_coef_bis"))
    return pt.dot(z, chol.T), sd_std


def _likelihood(pm: Any, family: str, eta: Any, prior: dict[str, Prior], scaling: Scaling,
                y: np.ndarray, n_trials: np.ndarray | None, obs_name: str) -> None:
    """Add the observed variable: normal (identity), binomial or beta-binomial (logit)."""
    if family == "gaussian":
        sigma_std = _rv(pm, "sigma_std", prior["sigma"])
        pm.Deterministic("sigma", sigma_std * scaling.y_sd)
        pm.Normal(obs_name, mu=scaling.y_mean + scaling.y_sd * eta,
                  sigma=scaling.y_sd * sigma_std, observed=y, dims="obs")
    elif family == "binomial":
        pm.Binomial(obs_name, n=n_trials, logit_p=eta, observed=y.astype(np.int64),
                    dims="obs")
    else:
        kappa = _rv(pm, "kappa", prior["kappa"])
        p = pm.math.invlogit(eta)
        pm.BetaBinomial(obs_name, alpha=p * kappa, beta=(1.0 - p) * kappa, n=n_trials,
                        observed=y.astype(np.int64), dims="obs")
