"""Default priors of :func:`~alliance_models.fit_bayes` and per-term overrides.

Every prior lives on the *standardised* scale of the sampled model (outcome standardised
for the gaussian family, every non-intercept column of the fixed design centred and
scaled). Each reported parameter ``theta`` is an affine map of its standardised
counterpart, ``theta = c * theta_std + d`` with ``c > 0``:

========================  ===================  =========
parameter                 c                    d
========================  ===================  =========
slope of column ``j``     ``s_y / s_j``        0
``Intercept`` (centred)   ``s_y``              ``m_y``
``sigma``                 ``s_y``              0
``sd_<group>[coef]``      ``s_y / s_coef``     0
``lkj_<group>``, kappa    1                    0
========================  ===================  =========

so a prior given on the data scale by the user converts exactly to the standardised
scale for location-scale and scale families (``Normal(mu, sigma)`` becomes
``Normal((mu - d) / c, sigma / c)``; ``Exponential(lam)`` becomes ``Exponential(lam * c)``).
This module is plain Python: it knows the distributions by name and never imports PyMC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import ModelSpecError

__all__ = ["DISTRIBUTIONS", "Prior", "default_prior", "parse_prior"]


@dataclass(frozen=True)
class _DistInfo:
    """How a distribution's parameters move under ``theta -> c * theta + d``."""

    params: tuple[str, ...]  # required parameter names
    loc: str | None = None  # shifted by d, divided by c
    scales: tuple[str, ...] = ()  # divided by c
    rates: tuple[str, ...] = ()  # multiplied by c
    positive: bool = False  # support is (0, inf): only valid when d == 0


#: The prior families that can be named in ``priors=`` (PyMC class names).
DISTRIBUTIONS: dict[str, _DistInfo] = {
    "Normal": _DistInfo(("mu", "sigma"), loc="mu", scales=("sigma",)),
    "StudentT": _DistInfo(("nu", "mu", "sigma"), loc="mu", scales=("sigma",)),
    "Cauchy": _DistInfo(("alpha", "beta"), loc="alpha", scales=("beta",)),
    "Laplace": _DistInfo(("mu", "b"), loc="mu", scales=("b",)),
    "HalfNormal": _DistInfo(("sigma",), scales=("sigma",), positive=True),
    "HalfCauchy": _DistInfo(("beta",), scales=("beta",), positive=True),
    "HalfStudentT": _DistInfo(("nu", "sigma"), scales=("sigma",), positive=True),
    "Exponential": _DistInfo(("lam",), rates=("lam",), positive=True),
    "Gamma": _DistInfo(("alpha", "beta"), rates=("beta",), positive=True),
    "InverseGamma": _DistInfo(("alpha", "beta"), scales=("beta",), positive=True),
    "LKJ": _DistInfo(("eta",)),
}


@dataclass(frozen=True)
class Prior:
    """A named distribution with its parameters, e.g. ``Normal(mu=0, sigma=1)``.

    Examples
    --------
    >>> p = Prior("Normal", {"mu": 0.0, "sigma": 2.0})
    >>> str(p)
    'Normal(mu=0, sigma=2)'
    >>> str(p.to_standardised(c=4.0, d=1.0))
    'Normal(mu=-0.25, sigma=0.5)'
    """

    dist: str
    params: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{self.dist}({inner})"

    def _moved(self, c: float, d: float, inverse: bool) -> Prior:
        info = DISTRIBUTIONS[self.dist]
        out = dict(self.params)
        for k in info.scales:
            out[k] = out[k] * c if inverse else out[k] / c
        for k in info.rates:
            out[k] = out[k] / c if inverse else out[k] * c
        if info.loc is not None:
            loc = out[info.loc]
            out[info.loc] = loc * c + d if inverse else (loc - d) / c
        return Prior(self.dist, out)

    def to_standardised(self, c: float, d: float = 0.0) -> Prior:
        """Return the prior of ``theta_std`` given this prior of ``theta = c*theta_std + d``."""
        return self._moved(c, d, inverse=False)

    def to_data(self, c: float, d: float = 0.0) -> Prior:
        """Return the prior of ``theta = c*theta_std + d`` given this prior of ``theta_std``."""
        return self._moved(c, d, inverse=True)


def default_prior(kind: str, family: str) -> Prior:
    """Return the default prior (standardised scale) of one kind of parameter.

    Parameters
    ----------
    kind : {"Intercept", "slope", "sigma", "sd", "lkj", "kappa"}
        Which parameter.
    family : {"gaussian", "binomial", "beta_binomial"}
        The model family (the linear predictor is a standardised mean for the gaussian
        family and a log-odds for the binomial families).

    Returns
    -------
    Prior

    Notes
    -----
    Gaussian (outcome in SD units, predictors in SD units): Intercept ``Normal(0, 1)``,
    slopes ``Normal(0, 1)`` (a one-SD change of a predictor moves the outcome by less
    than about two SD), residual and random-effect SDs ``HalfNormal(1)``.
    Binomial families (log-odds per SD of a predictor): Intercept ``Normal(0, 2.5)``,
    slopes ``Normal(0, 1)`` (odds ratios per SD mostly within 1/7 to 7), random-effect
    SDs ``HalfNormal(1)``, beta-binomial concentration ``Gamma(2, 0.1)`` (mean 20).
    Correlations of random coefficients: ``LKJ(eta=2)``.

    Examples
    --------
    >>> str(default_prior("slope", "gaussian"))
    'Normal(mu=0, sigma=1)'
    """
    binom = family != "gaussian"
    if kind == "Intercept":
        return Prior("Normal", {"mu": 0.0, "sigma": 2.5 if binom else 1.0})
    if kind == "slope":
        return Prior("Normal", {"mu": 0.0, "sigma": 1.0})
    if kind in ("sigma", "sd"):
        return Prior("HalfNormal", {"sigma": 1.0})
    if kind == "lkj":
        return Prior("LKJ", {"eta": 2.0})
    if kind == "kappa":
        return Prior("Gamma", {"alpha": 2.0, "beta": 0.1})
    raise ValueError(f"unknown parameter kind {kind!r}")  # pragma: no cover - internal


def parse_prior(term: str, spec: Any, *, kind: str, shifted: bool) -> Prior:
    """Validate one user prior ``(name, {param: value})`` for ``term``.

    Parameters
    ----------
    term : str
        The term the prior is for (used in error messages).
    spec : tuple or Prior
        ``("Normal", {"mu": 0, "sigma": 0.5})`` or a :class:`Prior`.
    kind : str
        ``"Intercept"``, ``"slope"``, ``"sigma"``, ``"sd"``, ``"lkj"`` or ``"kappa"``.
    shifted : bool
        Whether the data-scale map has a shift ``d != 0`` (only location families fit).

    Returns
    -------
    Prior

    Raises
    ------
    ModelSpecError
        Unknown distribution, missing or unknown parameters, non-positive scales, or a
        family that does not suit the parameter (e.g. ``Normal`` for an SD).

    Examples
    --------
    >>> str(parse_prior("age", ("Normal", {"mu": 0, "sigma": 0.5}), kind="slope", shifted=False))
    'Normal(mu=0, sigma=0.5)'
    """
    if isinstance(spec, Prior):
        name, params = spec.dist, dict(spec.params)
    else:
        if not (isinstance(spec, tuple | list) and len(spec) == 2 and isinstance(spec[1], dict)):
            raise ModelSpecError(
                f"prior for {term!r} must be a pair (distribution name, dict of parameters), "
                f"e.g. ('Normal', {{'mu': 0, 'sigma': 1}}); got {spec!r}"
            )
        name, params = spec[0], dict(spec[1])
    if name not in DISTRIBUTIONS:
        raise ModelSpecError(
            f"prior for {term!r} names distribution {name!r}; supported: "
            f"{', '.join(sorted(DISTRIBUTIONS))}"
        )
    info = DISTRIBUTIONS[name]
    missing = [p for p in info.params if p not in params]
    unknown = [p for p in params if p not in info.params]
    if missing or unknown:
        raise ModelSpecError(
            f"prior {name} for {term!r} takes parameters {', '.join(info.params)}; "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {', '.join(unknown)}" if unknown else "")
        )
    clean: dict[str, float] = {}
    for k in info.params:
        v = params[k]
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise ModelSpecError(
                f"prior {name} for {term!r}: parameter {k} must be a number, got {v!r}"
            ) from None
        if k != info.loc and not fv > 0:
            raise ModelSpecError(
                f"prior {name} for {term!r}: parameter {k} must be > 0, got {v!r}"
            )
        clean[k] = fv
    if kind == "lkj" and name != "LKJ":
        raise ModelSpecError(f"prior for {term!r} must be ('LKJ', {{'eta': ...}}), got {name}")
    if kind != "lkj" and name == "LKJ":
        raise ModelSpecError(f"LKJ is a prior for correlations (lkj_<group>), not for {term!r}")
    if kind in ("sigma", "sd", "kappa") and not info.positive:
        positive = sorted(n for n, i in DISTRIBUTIONS.items() if i.positive)
        raise ModelSpecError(
            f"{term!r} is positive, so its prior must be one of {', '.join(positive)}; "
            f"got {name}"
        )
    if shifted and info.positive:
        raise ModelSpecError(
            f"the Intercept prior must be a location family (Normal, StudentT, Cauchy, "
            f"Laplace), got {name}"
        )
    return Prior(name, clean)
