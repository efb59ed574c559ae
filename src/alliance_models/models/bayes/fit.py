"""Fitting :func:`fit_bayes` and its result :class:`BayesFit`, with the sampling checks.

:func:`fit_bayes` parses the formula with :func:`~alliance_models.parse_formula`, builds
the design with :meth:`ModelSpec.build`, checks the data, builds the PyMC model
(:mod:`.build`) on the standardised scale (:mod:`.scaling`) with the priors of
:mod:`.priors`, samples it, and checks its own sampling (r_hat, bulk ESS, divergences:
:func:`_diagnose`). :class:`BayesFit` satisfies the package's
:class:`~alliance_models.models.interface.FixedEffectsFit` interface, so
``am.simple_slopes(bfit, ...)`` works on the posterior draws; its plots are drawn by
:mod:`.plots`.
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

from ..._random import RNGLike, spawn
from ..._validate import integer, interval, one_of
from ...errors import DataValidationError, DiagnosticsWarning, ModelSpecError, format_rows
from ...formula import parse_formula
from ...spec import ModelFrame, ModelSpec
from . import plots
from .build import (
    RETerm,
    build_collapsed_model,
    build_model,
    model_params,
    prior_table,
    re_terms,
    sd_key,
)
from .collapsed import Nesting, complete_draws, nesting
from .scaling import Scaling, make_scaling

__all__ = ["BayesFit", "fit_bayes"]

Family = Literal["gaussian", "binomial", "beta_binomial"]
_FAMILIES = ("gaussian", "binomial", "beta_binomial")
_SAMPLERS = ("auto", "pymc", "nutpie")
#: Probability of the HDIs in summaries and plots.
CI_PROB = 0.95


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
        The PyMC model (for further sampling), with every random effect in it.
    collapsed : bool
        Whether the random intercepts were integrated out for sampling and drawn from
        their exact conditional posterior afterwards (``fit_bayes(collapse=...)``).
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
    _terms: tuple[RETerm, ...] = field(repr=False, default=())
    collapsed: bool = False

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
            f"sampler: {self.sampler}"
            + (" (random intercepts integrated out, then drawn)" if self.collapsed else "")
            + f"; chains: {post.sizes['chain']}; draws per chain: "
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
        pc = plots.draw(kind, self.idata, family=self.family, x_names=self.frame.x_names,
                        var_names=self._reported_vars(), ci_prob=CI_PROB)
        if path is not None:
            pc.savefig(str(path))
        return pc


# ----------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------


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
    collapse: bool = True,
) -> BayesFit:
    """Fit an lme4-style (generalised) linear mixed model with PyMC.

    The fixed design (every non-intercept column centred and scaled) and, for the
    gaussian family, the outcome are standardised before sampling; random effects are
    non-centred (``u = sd * L z`` with an LKJ prior on the correlation Cholesky factor
    ``L`` for correlated slopes). Nested random intercepts of a gaussian model are
    integrated out for sampling and drawn afterwards (``collapse``). Draws are mapped back
    exactly, so ``bfit.params`` are on the same scale as ``fit_mixed``'s estimates.

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
        :func:`alliance_models.models.bayes.priors.default_prior`.
    draws, tune, chains : int
        Posterior draws and tuning steps per chain, and the number of chains.
    seed : int, Generator or SeedSequence, optional
        Seeds sampling, posterior and prior predictive draws.
    sampler : {"auto", "pymc", "nutpie"}
        NUTS implementation. ``"auto"`` chooses by measurement
        (``benchmarks/bayes_speed.py``; ``benchmarks/results/bayes_speed.txt``: a 2-core
        machine shared with other jobs, each fit in a fresh process so compilation
        counts, 4 chains x 1000 draws after 1000 tuning steps): nutpie for a collapsed
        model (see ``collapse``) when nutpie is installed, PyMC's NUTS otherwise. On the
        three-level moderation model of the example data (2,423 rows, 40 therapists, 397
        patients), collapsed, side by side over 3 rounds (load 3.6-6.3): nutpie 25 s
        wall (16 s CPU), smallest bulk ESS of the fixed effects 7,906; PyMC 37 s (21 s
        CPU), 7,048. Not collapsed (``collapse=False``), PyMC's NUTS gives more effective
        draws per second than nutpie (ESS 1,142 vs 272 in 85-250 s vs 28-140 s; nutpie's
        fails ``ess_min=400``), so ``"auto"`` is PyMC's there. PyMC's chains run one
        after the other (``cores=1``: no fork ``DeprecationWarning`` on Python 3.12 and
        no oversubscription of small machines); nutpie's run in threads.
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
    collapse : bool
        For the gaussian family with random intercepts on nested grouping factors only
        (``(1 | therapist)``, ``(1 | therapist/patient)``), integrate the intercepts out
        of the likelihood in closed form, sample the fixed effects and the variance
        parameters, then draw the intercepts (``z_<group>``) once per posterior draw from
        their exact conditional posterior (:mod:`alliance_models.models.bayes.collapsed`).
        The draws follow the same posterior as the uncollapsed model (``bfit.model``),
        with far fewer gradient evaluations; log-likelihood and posterior predictive are
        then computed in numpy. ``False`` samples every intercept with NUTS. Other models
        are never collapsed.

    Returns
    -------
    BayesFit

    Raises
    ------
    ModelSpecError
        Unknown family or sampler, binomial family without ``trials``, unknown prior
        terms, bad prior specifications, bad sampler settings; non-finite values in the
        model's columns or ``trials`` (column, rows and value named, as by ``fit_mixed``
        and ``fit_gee``); a constant gaussian outcome.
    DataValidationError
        Non-integer, non-numeric or negative counts, successes above trials.

    Examples
    --------
    >>> import alliance_models as am
    >>> data = am.simulate(am.Design(therapists=20), seed=1)  # doctest: +SKIP
    >>> bfit = am.fit_bayes("adherence ~ alliance * autonomy + (1 | therapist)",
    ...                     data, seed=1)  # doctest: +SKIP
    >>> bfit.summary()  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    _check_options(family=family, trials=trials, draws=draws, tune=tune, chains=chains,
                   rhat_max=rhat_max, ess_min=ess_min, target_accept=target_accept)
    spec = formula if isinstance(formula, ModelSpec) else parse_formula(formula)
    frame = spec.build(data, extra=(trials,) if trials else ())
    used = resolve_sampler(sampler)  # checked before the data; "auto" settled below
    n_trials = _check_data(frame, family, trials)
    scaling = make_scaling(frame.X, frame.y, frame.x_names, family == "gaussian")
    terms = re_terms(frame)
    params = model_params(frame.x_names, scaling, terms, family, priors)
    obs_name = spec.response if re.fullmatch(r"[A-Za-z_]\w*", spec.response) else "y"
    model = build_model(frame, family, n_trials, scaling, terms, params, obs_name)
    nest = nesting(terms, family) if collapse else None
    sampled = model if nest is None else build_collapsed_model(frame, scaling, nest, params)
    if sampler == "auto":
        used = resolve_sampler(sampler, collapsed=nest is not None)
    # one spawn (a Generator seed is drawn from once): sampling, posterior predictive,
    # prior predictive, intercepts of the collapsed model
    s_sample, s_ppc, s_prior, s_re = spawn(seed, 4)
    idata = _sample(sampled, used, draws=int(draws), tune=int(tune), chains=int(chains),
                    seed=s_sample, progressbar=progressbar,
                    target_accept=float(target_accept), dense_mass=nest is not None)
    if nest is None:
        _predictive(idata, model, s_ppc, progressbar)
    else:
        _complete_collapsed(idata, frame, scaling, nest, obs_name, s_ppc, s_re)
    if prior_predictive:
        _prior_predictive(idata, model, s_prior, int(draws), progressbar)
    wall = time.perf_counter() - t0

    n_div = int(idata.sample_stats["diverging"].sum()) if "diverging" in (
        idata.sample_stats) else 0
    table = summary_table(reported_draws(idata, frame.x_names, terms, family))
    msg = _diagnose(table, n_div, int(draws) * int(chains), rhat_max, ess_min)
    if msg:
        warnings.warn(msg, DiagnosticsWarning, stacklevel=2)
    return BayesFit(
        spec=spec,
        frame=frame,
        idata=idata,
        family=family,
        trials=trials,
        priors=prior_table(params),
        scaling=scaling,
        sampler=used,
        n_divergent=n_div,
        wall_time=wall,
        model=model,
        _table=table,
        _terms=tuple(terms),
        collapsed=nest is not None,
    )


def _check_options(*, family: str, trials: str | None, draws: Any, tune: Any, chains: Any,
                   rhat_max: float, ess_min: float, target_accept: float) -> None:
    """Check the family, sampler settings and diagnostic thresholds (before the data)."""
    one_of("family", family, _FAMILIES, ModelSpecError)
    for name, v, lo in (("draws", draws, 1), ("tune", tune, 0), ("chains", chains, 1)):
        integer(name, v, ModelSpecError, minimum=lo)
    if not float(rhat_max) >= 1.0:
        raise ModelSpecError(f"rhat_max must be >= 1 (r_hat is 1 at convergence), got "
                             f"{rhat_max!r}")
    if not float(ess_min) >= 0.0:
        raise ModelSpecError(f"ess_min must be >= 0, got {ess_min!r}")
    interval("target_accept", target_accept, 0.5, 1.0, ModelSpecError, closed="left")
    if family != "gaussian" and trials is None:
        raise ModelSpecError(
            f"family={family!r} needs trials= naming the column of denominators (e.g. "
            "'scheduled' or 'prescribed'); the response is the count of successes"
        )
    if family == "gaussian" and trials is not None:
        raise ModelSpecError("trials= is only used by the binomial families; drop it or set "
                             "family='binomial'")


def resolve_sampler(sampler: str, collapsed: bool = False) -> str:
    """Map ``sampler`` to the NUTS implementation used.

    ``"auto"`` is nutpie for a collapsed model (``collapsed=True``) when nutpie is
    installed, PyMC's NUTS otherwise: the faster route on each, as measured (see
    :func:`fit_bayes`).

    Examples
    --------
    >>> resolve_sampler("pymc")
    'pymc'
    >>> resolve_sampler("auto")  # a model that samples every random effect
    'pymc'
    """
    one_of("sampler", sampler, _SAMPLERS, ModelSpecError)
    if sampler == "auto":
        return "nutpie" if collapsed and _has_nutpie() else "pymc"
    if sampler == "nutpie":
        if not _has_nutpie():  # pragma: no cover - optional dependency
            raise ModelSpecError("sampler='nutpie' needs the nutpie package: pip install "
                                 "'alliance_models[fast]'")
        return "nutpie"
    return "pymc"


def _has_nutpie() -> bool:
    from importlib.util import find_spec

    return find_spec("nutpie") is not None


# ----------------------------------------------------------------------------------------
# data checks
# ----------------------------------------------------------------------------------------


def _check_data(frame: ModelFrame, family: str, trials: str | None) -> np.ndarray | None:
    """Check the model values; return the trials as integers (``None`` for gaussian).

    Non-finite values go through :meth:`ModelFrame.check_finite`, the check every
    fitting function shares (one error class, ``ModelSpecError``, for the same input);
    counts and a constant gaussian outcome are checked after it.
    """
    extra = None
    if trials is not None and pd.api.types.is_numeric_dtype(frame.data[trials]):
        extra = {trials: frame.data[trials].to_numpy(dtype=float)}
    frame.check_finite(extra)
    n_trials = None if trials is None else _trial_counts(frame, trials)
    if family == "gaussian" and np.ptp(frame.y) == 0:
        raise ModelSpecError(
            f"response {frame.spec.response!r} is constant ({frame.y[0]:g} in all "
            f"{frame.n_obs} rows); a gaussian model cannot be fitted"
        )
    return n_trials


def _trial_counts(frame: ModelFrame, trials: str) -> np.ndarray:
    """Whole, non-negative trials and successes, successes at most the trials."""
    idx = frame.data.index
    response = frame.spec.response
    n_trials = _check_counts(
        pd.to_numeric(frame.data[trials], errors="coerce").to_numpy(dtype=float), idx,
        trials, "trials", raw=frame.data[trials].to_numpy())
    y = _check_counts(frame.y, idx, response, "successes")
    over = y > n_trials
    if over.any():
        rows = list(idx[over])
        k = int(np.flatnonzero(over)[0])
        raise DataValidationError(
            f"response {response!r} exceeds trials column {trials!r} in "
            f"{format_rows(rows)} (first: {y[k]} successes of {n_trials[k]}); "
            "successes must be between 0 and the number of trials"
        )
    return n_trials


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
# sampling
# ----------------------------------------------------------------------------------------


def _seed_int(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _sample(model: Any, sampler: str, *, draws: int, tune: int, chains: int,
            seed: np.random.SeedSequence, progressbar: bool, target_accept: float,
            dense_mass: bool = False) -> Any:
    """NUTS draws of ``model`` (posterior, sample_stats and observed data): one DataTree.

    With ``dense_mass`` (the collapsed model: a dozen parameters, correlated fixed effects
    when predictors and their products are not centred) the mass matrix adapts to the
    posterior covariance: PyMC's full adaptation, nutpie's low-rank-modified one; the
    diagonal adaptation needs about four times as many gradient evaluations per draw there
    (tree depth 4 instead of 3) and gave a tenth of the effective draws.
    """
    import pymc as pm

    s_sample = _seed_int(seed)
    # PyMC's NUTS runs its chains one after the other (cores=1: no fork warning on 3.12,
    # and no oversubscription of small machines); nutpie runs chains in threads.
    kwargs: dict[str, Any] = {"cores": 1} if sampler == "pymc" else {}
    if dense_mass and sampler == "pymc":
        kwargs["init"] = "jitter+adapt_full"
    elif dense_mass and sampler == "nutpie":
        kwargs["nuts"] = {"adaptation": "low_rank"}
    with model, _sampling_context():
        return pm.sample(
            draws, tune=tune, chains=chains, random_seed=s_sample, nuts_sampler=sampler,
            progressbar=progressbar, quiet=not progressbar, target_accept=target_accept,
            compute_convergence_checks=False, **kwargs,
        )


@contextlib.contextmanager
def _sampling_context() -> Iterator[None]:
    """Numpy overflow notices and two PyTensor notices kept out of the user's way."""
    # a diverging trajectory can overflow inside NUTS; PyMC counts it as a divergence,
    # which the diagnostics report, so numpy's own overflow warnings add nothing
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
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
        # PyMC calls its full mass-matrix adaptation (used for the collapsed model's
        # dozen parameters) experimental; the sampling diagnostics are checked after it.
        warnings.filterwarnings("ignore", message="QuadPotentialFullAdapt is an experimental",
                                category=UserWarning)
        yield


def _predictive(idata: Any, model: Any, seed: np.random.SeedSequence,
                progressbar: bool) -> None:
    """Add the log-likelihood and posterior predictive draws of ``model`` to ``idata``."""
    import pymc as pm

    s_ppc = _seed_int(seed)
    with model, _sampling_context():
        pm.compute_log_likelihood(idata, extend_inferencedata=True, progressbar=False)
        # PyMC logs "Sampling: [adherence]" for predictive draws; quiet when sampling is
        with _quiet_log("pymc.sampling.forward", not progressbar):
            pm.sample_posterior_predictive(idata, extend_inferencedata=True,
                                           random_seed=s_ppc, progressbar=False)


def _prior_predictive(idata: Any, model: Any, seed: np.random.SeedSequence, draws: int,
                      progressbar: bool) -> None:
    """Add the prior and prior predictive draws of ``model`` to ``idata``."""
    import pymc as pm

    s_prior = _seed_int(seed)
    with model, _sampling_context(), _quiet_log("pymc.sampling.forward", not progressbar):
        prior = pm.sample_prior_predictive(draws=draws, random_seed=s_prior)
    idata["prior"] = prior["prior"]
    idata["prior_predictive"] = prior["prior_predictive"]


def _complete_collapsed(idata: Any, frame: ModelFrame, scaling: Scaling, nest: Nesting,
                        obs_name: str, s_ppc: np.random.SeedSequence,
                        s_re: np.random.SeedSequence) -> None:
    """Add the intercepts, log-likelihood, posterior predictive and observed data.

    The intercepts of every posterior draw come from their exact conditional posterior
    (:func:`.collapsed.complete_draws`), stored as ``z_<group>`` (``u = sd * z``) like the
    uncollapsed model's; log-likelihood and predictive draws are gaussian given them.
    """
    import xarray as xr
    from scipy import stats

    rng_re, rng_ppc = np.random.default_rng(s_re), np.random.default_rng(s_ppc)
    post = idata["posterior"].to_dataset()
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    X_std = scaling.standardise_X(frame.X)
    y = np.asarray(frame.y, dtype=float)
    y_std = (y - scaling.y_mean) / scaling.y_sd
    if "beta_std" in post:
        b_std = post["beta_std"].transpose("chain", "draw", "term").values
    else:  # priors of different families: one scalar per term (build._stacked)
        b_std = np.stack([post[f"beta_std_{j}"].transpose("chain", "draw").values
                          for j in range(len(frame.x_names))], axis=-1)
    sigma = post["sigma_std"].transpose("chain", "draw").values
    taus = [post[f"sd_std_{t.name}"].transpose("chain", "draw", ...).values[..., 0]
            for t in nest.terms]
    z = [np.empty((n_chain, n_draw, t.n_groups)) for t in nest.terms]
    loglik = np.empty((n_chain, n_draw, frame.n_obs))
    ppc = np.empty_like(loglik)
    for c in range(n_chain):  # one chain at a time: (draws, n) arrays, not (chains*draws, n)
        a, eta = complete_draws(nest, X_std, y_std, b_std[c], sigma[c],
                                [tau[c] for tau in taus], rng_re)
        for k in range(nest.n_levels):
            z[k][c] = a[k] / taus[k][c][:, None]
        mu = scaling.y_mean + scaling.y_sd * eta
        sd = (scaling.y_sd * sigma[c])[:, None]
        loglik[c] = stats.norm.logpdf(y, mu, sd)
        ppc[c] = mu + sd * rng_ppc.standard_normal(mu.shape)
    for t, zk in zip(nest.terms, z, strict=True):
        post[f"z_{t.name}"] = xr.DataArray(
            zk[..., None], dims=("chain", "draw", t.name, f"{t.name}_coef"),
            coords={t.name: [str(v) for v in frame.group_labels[t.group]],
                    f"{t.name}_coef": list(t.coef_names)})
    idata["posterior"] = post
    obs = {"obs": np.arange(frame.n_obs)}
    idata["log_likelihood"] = xr.Dataset(
        {obs_name: (("chain", "draw", "obs"), loglik)}, coords=obs)
    idata["posterior_predictive"] = xr.Dataset(
        {obs_name: (("chain", "draw", "obs"), ppc)}, coords=obs)
    # the collapsed model observes y through a Potential: PyMC's observed_data is empty
    idata["observed_data"] = xr.Dataset({obs_name: (("obs",), y)}, coords=obs)


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
# summaries and diagnostics
# ----------------------------------------------------------------------------------------


def reported_draws(idata: Any, x_names: tuple[str, ...], terms: list[RETerm],
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
            out[sd_key(t, c)] = sd[:, :, i]
        if t.correlated:
            corr = post[f"corr_{t.name}"].transpose("chain", "draw", ...).values
            q = len(t.coef_names)
            for i in range(q):
                for k in range(i):
                    out[f"corr_{t.name}[{t.coef_names[i]}, {t.coef_names[k]}]"] = corr[:, :, i, k]
    return out


def summary_table(draws: dict[str, np.ndarray], ci_prob: float = CI_PROB) -> pd.DataFrame:
    """``arviz.summary`` of the reported draws: mean, SD, HDI, ESS, r_hat and MCSE."""
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
