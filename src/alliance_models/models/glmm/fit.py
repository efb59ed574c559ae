"""``fit_mixed(..., family="binomial" | "poisson")``: check the data, fit, assemble.

:func:`fit_glmm` is what :func:`alliance_models.fit_mixed` calls for a non-Gaussian
family. The canonical binomial call names the successes as the response and the trials
column separately::

    fit_mixed("attended ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)",
              data, family="binomial", trials="scheduled")

(lme4: ``glmer(cbind(attended, scheduled - attended) ~ ..., family = binomial)``); a 0/1
outcome needs no ``trials``. The fit is lme4's (:mod:`.laplace`): Laplace approximation
by PIRLS or, for one scalar random-effects term, adaptive Gauss-Hermite quadrature;
standard errors from the finite-difference Hessian of the deviance in
``(theta, beta)`` as lme4's default; Wald z tests and intervals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ...errors import (
    ConvergenceWarning,
    MissingDataWarning,
    ModelSpecError,
    SingularFitWarning,
    format_rows,
)
from ...spec import ModelSpec
from ..lmm.dense import RandomBlock, varcomp_rows
from .counts import binomial_counts, poisson_counts, zero_trial_rows
from .family import FAMILIES, get_family
from .laplace import CONV_TOL, SINGULAR_TOL, optimize
from .pirls import GLMMProblem, PIRLSError
from .result import GLMMFit
from .separation import separating_direction

__all__ = ["fit_glmm"]

#: Largest number of quadrature nodes (lme4 allows up to 25 in glmer).
MAX_AGQ = 25


def _check_options(spec: ModelSpec, family: str, trials: str | None, n_agq: int) -> None:
    if family not in FAMILIES:
        raise ModelSpecError(
            f"family={family!r} is not available; choose 'gaussian', 'binomial' or 'poisson'"
        )
    if spec.response.replace(" ", "").startswith("cbind("):
        raise ModelSpecError(
            f"response {spec.response!r}: write the successes as the response and name the "
            "trials column, e.g. fit_mixed('attended ~ alliance + (1 | therapist)', data, "
            "family='binomial', trials='scheduled')"
        )
    if family == "poisson" and trials is not None:
        raise ModelSpecError("trials= is only used with family='binomial'; drop it for counts")
    if not isinstance(n_agq, int | np.integer) or not 1 <= n_agq <= MAX_AGQ:
        raise ModelSpecError(f"nAGQ must be an integer from 1 to {MAX_AGQ}, got {n_agq!r}")
    if n_agq > 1 and (len(spec.random) != 1 or spec.random[0].n_coef != 1):
        raise ModelSpecError(
            f"nAGQ = {n_agq} (adaptive Gauss-Hermite quadrature) needs a single random-effects "
            f"term with one coefficient, such as (1 | therapist); {spec.formula!r} has "
            f"{', '.join(map(str, spec.random))}: use nAGQ=1 (Laplace)"
        )
    if not spec.has_random:
        raise ModelSpecError(
            f"formula {spec.formula!r} has no random-effects term such as (1 | therapist); "
            "add one, or use am.fit_gee for a population-averaged model"
        )


def _drop_zero_trials(data: pd.DataFrame, trials: str | None) -> tuple[pd.DataFrame, int]:
    if trials is None or trials not in data.columns:
        return data, 0
    zero = zero_trial_rows(data, trials)
    if len(zero):
        warnings.warn(
            f"{len(zero)} of {len(data)} rows have zero trials in {trials!r} "
            f"({format_rows(list(zero))}); they carry no information and were excluded "
            "(the count is in the result's n_zero_trials)",
            MissingDataWarning,
            stacklevel=4,
        )
        data = data.drop(index=zero)
    return data, len(zero)


def fit_glmm(
    spec: ModelSpec,
    data: pd.DataFrame,
    *,
    family: str,
    trials: str | None = None,
    n_agq: int = 1,
    maxiter: int = 1000,
) -> GLMMFit:
    """Fit a binomial or Poisson GLMM (called by :func:`alliance_models.fit_mixed`).

    Parameters
    ----------
    spec : ModelSpec
        Parsed formula; the response holds successes (binomial) or counts (Poisson).
    data : DataFrame
    family : {"binomial", "poisson"}
    trials : str, optional
        Column of binomial trials (denominators); omit for a 0/1 outcome.
    n_agq : int, default 1
        1: Laplace approximation; more: adaptive Gauss-Hermite quadrature with that many
        nodes (one scalar random-effects term only, as lme4).
    maxiter : int
        Iterations of each optimiser.

    Returns
    -------
    GLMMFit

    Examples
    --------
    >>> import alliance_models as am, pandas as pd
    >>> from alliance_models.formula import parse_formula
    >>> d = pd.read_csv("tests/r/cbpp_data.csv")  # doctest: +SKIP
    >>> fit_glmm(parse_formula("incidence ~ C(period) + (1 | herd)"), d,
    ...          family="binomial", trials="size").loglik  # doctest: +SKIP
    -92.0263
    """
    _check_options(spec, family, trials, n_agq)
    if isinstance(data, pd.DataFrame):
        data, n_zero = _drop_zero_trials(data, trials)
    else:
        n_zero = 0
    frame = spec.build(data, extra=(trials,) if trials else ())
    extra = None
    if trials is not None and pd.api.types.is_numeric_dtype(frame.data[trials]):
        extra = {trials: frame.data[trials].to_numpy(dtype=float)}
    frame.check_finite(extra)
    fam = get_family(family)
    if family == "binomial":
        y, n = binomial_counts(frame.y, frame.data, spec.response, trials)
    else:
        y, n = poisson_counts(frame.y, frame.data, spec.response), np.ones(frame.n_obs)
    _check_rank(frame.X, frame.x_names)

    messages: list[tuple[str, type[Warning]]] = []
    direction = separating_direction(frame.X, y, n, family)
    if direction is not None:
        terms = [nm for nm, v in zip(frame.x_names, direction, strict=True) if abs(v) > 1e-6]
        msg = (
            f"complete separation: a combination of {', '.join(terms)} predicts "
            + ("all-or-none successes" if family == "binomial" else "the zero counts")
            + " perfectly, so the maximum-likelihood estimates of these terms are infinite "
            "(a fit that returns reports arbitrary estimates and SEs); drop or merge the "
            "predictor (or categories) that separates the data, or use a fit that "
            "regularises the estimates (am.fit_bayes with weakly informative priors)"
        )
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
        messages.append((msg, ConvergenceWarning))

    blocks = [
        RandomBlock(frame.Z[str(t)], frame.groups[t.group],
                    int(frame.group_labels[t.group].size), t.correlated)
        for t in spec.random
    ]
    problem = GLMMProblem(y, n, frame.X, blocks, fam)
    try:
        opt = optimize(problem, n_agq=n_agq, maxiter=maxiter)
    except PIRLSError as err:
        why = ("the data are completely separated (see the warning)" if direction is not None
               else "check for separation (a predictor that predicts the outcome "
               "perfectly), rescale predictors, or simplify the random part")
        raise ModelSpecError(
            f"the {family} mixed model could not be fitted ({err}); {why}"
        ) from None
    return _assemble(spec, frame, problem, opt, family, trials, n_agq, n_zero, messages)


def _check_rank(X: np.ndarray, names: tuple[str, ...]) -> None:
    if np.linalg.matrix_rank(X) == X.shape[1]:
        return
    bad = [names[j] for j in range(X.shape[1])
           if np.linalg.matrix_rank(np.delete(X, j, axis=1)) == np.linalg.matrix_rank(X)]
    raise ModelSpecError(
        f"the fixed-effects design is rank deficient (collinear columns among "
        f"{', '.join(bad)}); drop one of them"
    )


def _assemble(spec, frame, problem, opt, family, trials, n_agq, n_zero,  # noqa: ANN001, PLR0913
              messages) -> GLMMFit:  # noqa: ANN001
    k, p = problem.n_theta, problem.p
    theta, beta = opt.x[:k], opt.x[k:]
    names = list(frame.x_names)
    # lme4: vcov = beta block of 2 H^{-1} over (theta, beta); held thetas (at zero) are
    # left out (their cross-derivatives vanish there: the deviance is even in theta)
    free = opt.free
    Hf = opt.hessian[np.ix_(free, free)]
    bad_hessian = False
    try:
        Vf = 2.0 * np.linalg.inv(Hf)
        Vf = (Vf + Vf.T) / 2
        V = Vf[-p:, -p:]
        if not np.all(np.isfinite(V)) or np.linalg.eigvalsh(V).min() <= 0:
            bad_hessian = True
    except np.linalg.LinAlgError:
        bad_hessian = True
    if bad_hessian:
        H_beta = opt.hessian[k:, k:]
        V = 2.0 * np.linalg.pinv((H_beta + H_beta.T) / 2)
        messages.append((
            "the Hessian of the deviance in (theta, beta) is not positive definite: the "
            "model is nearly unidentifiable and SEs come from the fixed-effects block "
            "alone; simplify the random part or rescale predictors",
            ConvergenceWarning,
        ))
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    z = beta / se
    q = stats.norm.ppf(0.975)
    fixed = pd.DataFrame(
        {"estimate": beta, "se": se, "z": z, "p": 2 * stats.norm.sf(np.abs(z)),
         "ci_lower": beta - q * se, "ci_upper": beta + q * se},
        index=pd.Index(names, name="term"),
    )
    vcov = pd.DataFrame(V, index=names, columns=names)

    lams = problem.lambdas(theta)
    covs = [lam @ lam.T for lam in lams]
    random_effects: dict[str, pd.DataFrame] = {}
    b = problem.b_of_u(theta, opt.mode.u)
    for j, t in enumerate(spec.random):
        random_effects[str(t)] = pd.DataFrame(
            problem.term_values(b, j), index=frame.group_labels[t.group],
            columns=list(t.coef_names),
        )
    vc_rows = varcomp_rows(spec.random, problem.blocks, covs)
    varcomp = pd.DataFrame(vc_rows, columns=["group", "var1", "var2", "vcov", "sdcor"])

    loglik = -0.5 * opt.deviance
    npar = p + k
    sat = problem.family.saturated_loglik(problem.y, problem.n_trials)
    bounded = np.isfinite(problem.lower)
    singular = bool(np.any(theta[bounded] < SINGULAR_TOL))
    converged = opt.rel_grad < CONV_TOL
    if not converged:
        messages.append((
            f"the fit did not converge (relative gradient {opt.rel_grad:.2g}, lme4's limit "
            f"{CONV_TOL:g}); rescale predictors (centre and divide by the SD), simplify "
            "the random part, or check for separation",
            ConvergenceWarning,
        ))
    if singular:
        low = []
        for t, blk, s in zip(spec.random, problem.blocks, problem.layout.theta_slices,
                             strict=True):
            for v, (r, c) in zip(theta[s], blk.theta_index, strict=True):
                if r == c and v < SINGULAR_TOL:
                    low.append(f"{t.coef_names[r]} in {t}")
        messages.append((
            f"singular fit: the random-effect SD of {', '.join(low)} is estimated at (or "
            f"next to) zero (lme4's isSingular, theta < {SINGULAR_TOL:g}). The data do not "
            "support that term: simplify the random part (drop the term, its slope or "
            "correlation) or, with few clusters, use a Bayesian fit with a weakly "
            "informative prior",
            SingularFitWarning,
        ))
    for msg, cat in messages:
        if not msg.startswith("complete separation"):  # warned before the fit
            warnings.warn(msg, cat, stacklevel=4)
    return GLMMFit(
        spec=spec, frame=frame, family=family, trials=trials, n_agq=n_agq, fixed=fixed,
        vcov=vcov, varcomp=varcomp, loglik=float(loglik), saturated_loglik=sat,
        aic=float(-2 * loglik + 2 * npar),
        bic=float(-2 * loglik + np.log(frame.n_obs) * npar),
        n_obs=frame.n_obs, n_groups=frame.n_groups, n_dropped=frame.n_dropped,
        n_zero_trials=n_zero, optimizer=opt.stage, converged=bool(converged),
        grad_max=float(opt.rel_grad), singular=singular, theta=np.asarray(theta, float),
        random_effects=random_effects, messages=tuple(m for m, _ in messages),
        _family=problem.family,
    )
