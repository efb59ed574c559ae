"""Monte Carlo power for planned trials: replicates, diagnosands, curves, sample size.

:func:`power` simulates ``n_sims`` data sets from a :class:`Design`, fits the analysis
formula to each, and tests one coefficient. Replicate ``i`` always uses the i-th child
of ``SeedSequence(seed).spawn`` and its fit does not depend on the other replicates of
its batch, so the result does not depend on ``n_jobs``, on the batches or on the
backend (:mod:`~alliance_models.planning.executors`).
A batch is fitted by its method's route (:data:`BATCH_ROUTES`: for ``"fast"`` the batched
REML engine, or the batched Laplace engine of binomial designs; one data-frame fit per
replicate otherwise).

What the truth is
-----------------
Bias, RMSE, coverage and the type-S rate need the true value of the tested coefficient
*on the analysis formula's scale*. The simulator keeps the noise-free fixed part of the
linear predictor (``eta``: standardised effects times standardised predictors, see
:mod:`alliance_models.planning.design`). The truth is the least-squares projection of
``eta`` onto the analysis design matrix of the first replicate. When the formula contains
every simulated term (in any parametrisation: raw age, centred age, alliance split into
``alliance_pm`` and ``alliance_pmc`` ...), the projection is exact (``truth_exact``) and
maps the standardised effect to the coefficient, e.g. ``beta_age / sd(age)`` per year
of age. Columns centred at the sample mean (``age_c``, ``autonomy_c``) move a little
between replicates, and with them the true lower-order coefficients (``alliance`` in
``alliance * age_c``); the first replicate's value is reported, so bias and coverage of
such coefficients carry that small sampling shift (interactions are not affected). The
therapists' random alliance slopes (``Design.alliance_slope_sd``) have mean 0 and are not
part of ``eta``: the fixed alliance coefficient's truth is the mean slope. For
binomial designs analysed with a linear model (mixed/ols/gee on the
proportion) or with GEE (a population-averaged target), there is no such truth:
bias, RMSE, coverage and the type-S rate are reported as NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from .._progress import progress as _progress
from .._random import RNGLike, SeedBlock, child, seed_sequence
from .._validate import one_of, positive_int, probability
from ..errors import (
    AllianceModelsError,
    AllianceModelsWarning,
    ConvergenceWarning,
    DesignError,
    ModelSpecError,
    SingularFitWarning,
)
from ..formula import parse_formula
from ..spec import ModelSpec
from . import checkpoint as _checkpoint
from .design import Design
from .executors import Batch, execute, limit_blas, n_workers
from .multitest import (
    MULTI_REPLICATE_COLUMNS,
    MultiPowerResult,
    adjust_frame,
    check_correction,
    check_tests,
    summarise_family,
)
from .results import BOOL_COLUMNS, REPLICATE_COLUMNS, PowerResult, ScenarioResult, summarise
from .scenarios import Scenario, resolve_scenarios
from .simulate import (
    SimArrays,
    batch_arrays,
    batch_sums,
    design_matrix,
    simulate_arrays,
    to_frame,
)

__all__ = ["METHODS", "power", "run_batch"]

METHODS = ("auto", "fast", "mixed", "gee", "ols", "bayes")
_FAIL_EXC = (np.linalg.LinAlgError, ArithmeticError, AllianceModelsError, ValueError)
#: smallest stacked fast batch worth splitting a run for (per-batch costs of the
#: batched fit are spread over this many replicates)
_MIN_STACKED = 200
#: working-memory budget of one batch of the random-intercept engine fitted from sums
#: (bytes; a thread or worker holds one batch at a time): twice fit_batch's default
#: chunk, since fewer, larger batches spread the fixed costs of a batched fit (about
#: 10-20 ms each) over more replicates
_SUMS_BATCH_MEMORY = 128 * 2**20
#: warnings point at the caller's line, outside alliance_models.planning
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: held while a batch changes the process's warning filters (``catch_warnings`` is not
#: thread-safe: two threads inside it at once can leave a filter behind); the batched
#: engines run in threads (executors) and change no filters, their per-replicate
#: fallbacks take this lock
_WARNINGS_LOCK = threading.RLock()


# --- the job a worker runs -----------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to run a batch of replicates (picklable)."""

    design: Design
    formula: str
    test: str
    test_index: int
    x_names: tuple[str, ...]
    method: str
    alpha: float
    fit_kwargs: Mapping[str, Any] = field(default_factory=dict)
    bayes_rule: str = "interval"
    threshold: float = 0.975
    rope: float = 0.0
    fitter: Callable[..., Any] | None = None
    #: the fast path's random-slope column (``(1 + x | therapist) + (1 | therapist:patient)``)
    slope_index: int | None = None
    #: the robustness scenario the design is simulated under (planning.scenarios)
    scenario: Scenario | None = None
    #: a run of several tests (``test=[...]``): the tests and their columns; empty for
    #: one test (``test``/``test_index``)
    tests: tuple[str, ...] = ()
    test_indices: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Return what identifies the run (its checkpoint fingerprint adds the seed)."""
        out = {
            "design": self.design.to_dict(), "formula": self.formula,
            "test": list(self.tests) if self.tests else self.test,
            "method": self.method, "alpha": self.alpha,
            "fitter": None if self.fitter is None else
            f"{getattr(self.fitter, '__module__', '')}."
            f"{getattr(self.fitter, '__qualname__', '')}",
            "fit_kwargs": {k: repr(v) for k, v in sorted(self.fit_kwargs.items())},
            "bayes": [self.bayes_rule, self.threshold, self.rope],
        }
        if self.scenario is not None:
            out["scenario"] = self.scenario.to_dict()
        return out


def _fit_seed(ss: np.random.SeedSequence) -> int:
    """Return a seed for the fit itself (MCMC), independent of the data streams."""
    return int(child(ss, 2**31 - 1).generate_state(1, dtype=np.uint32)[0])


def _resolve_fitter(method: str) -> Callable[..., Any]:
    if method == "mixed":
        from ..models.mixed import fit_mixed

        return fit_mixed
    if method == "ols":
        from ..models.ols import fit_ols

        return fit_ols
    if method == "gee":
        from ..models.gee import fit_gee

        return fit_gee
    if method == "bayes":
        from ..models.bayes import fit_bayes

        return fit_bayes
    raise ModelSpecError(f"method {method!r} is unknown; allowed: {', '.join(METHODS)}")


def _empty_record(rep: int, error: str = "") -> dict[str, Any]:
    return {
        "rep": rep, "estimate": math.nan, "se": math.nan, "df": math.nan,
        "p_value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "reject": False,
        "converged": False, "singular": False, "failed": True, "error": error[:200],
    }


def _wald_columns(rep: Any, est: Any, se: Any, df: Any, alpha: float, converged: Any,
                  singular: Any) -> dict[str, np.ndarray]:
    """Wald/t tests of a batch of estimates, as replicate columns (one entry per rep).

    ``df`` that is missing, non-finite or not positive means a z test. The p-value is
    ``2 * sf(|est / se|)`` and the interval ``est -/+ q se`` with ``q = ppf(1 - alpha / 2)``,
    computed with the same special functions as ``scipy.stats.t`` / ``norm`` (``stdtr``,
    ``stdtrit``, ``ndtr``, ``ndtri``), so the numbers equal the frozen distributions'.
    A non-finite estimate or SE, or an SE that is not positive, gives a failed record.
    """
    rep = np.asarray(rep, dtype=np.int64).reshape(-1)
    n = rep.shape[0]
    est = np.asarray(est, dtype=float).reshape(-1)
    se = np.asarray(se, dtype=float).reshape(-1)
    df = np.asarray(df, dtype=float).reshape(-1)
    converged = np.asarray(converged, dtype=bool).reshape(-1)
    singular = np.asarray(singular, dtype=bool).reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ok = np.isfinite(est) & np.isfinite(se) & (se > 0)
        df = np.where(np.isfinite(df) & (df > 0), df, np.inf)
        t = np.abs(est / np.where(ok, se, 1.0))
    fin = ok & np.isfinite(df)
    z = ok & ~fin
    p = np.full(n, math.nan)
    q = np.full(n, math.nan)
    level = 1 - alpha / 2
    if fin.any():
        p[fin] = 2 * special.stdtr(df[fin], -t[fin])
        q[fin] = special.stdtrit(df[fin], level)
    if z.any():
        p[z] = 2 * special.ndtr(-t[z])
        q[z] = special.ndtri(level)
    est_ok = np.where(ok, est, math.nan)
    se_ok = np.where(ok, se, math.nan)
    return {
        "rep": rep, "estimate": est_ok, "se": se_ok, "df": np.where(ok, df, math.nan),
        "p_value": p, "ci_low": est_ok - q * se_ok, "ci_high": est_ok + q * se_ok,
        "reject": ok & (p < alpha), "converged": converged, "singular": singular,
        "failed": ~ok,
        "error": np.where(ok, "", "non-finite estimate or standard error").astype(object),
    }


def _columns_of_records(recs: Sequence[Mapping[str, Any]],
                        columns: Sequence[str] = REPLICATE_COLUMNS) -> dict[str, np.ndarray]:
    """Replicate records (dicts) as replicate columns."""
    cols: dict[str, np.ndarray] = {}
    for c in columns:
        values = [r[c] for r in recs]
        cols[c] = (np.array(values, dtype=object) if c in ("error", "test") else
                   np.array(values, dtype=np.int64 if c == "rep" else
                            bool if c in BOOL_COLUMNS else float))
    return cols


def _replicate_frame(pieces: Sequence[Mapping[str, np.ndarray]],
                     columns: Sequence[str] = REPLICATE_COLUMNS) -> pd.DataFrame:
    """Concatenate replicate columns into the replicate data frame (in the given order)."""
    if not pieces:
        return pd.DataFrame(columns=list(columns))
    if len(pieces) == 1:
        cols = dict(pieces[0])
    else:
        cols = {c: np.concatenate([pc[c] for pc in pieces]) for c in columns}
    return pd.DataFrame(cols, columns=list(columns))


#: the records of a run of several tests before the correction (no ``p_adjusted``)
_TESTS_COLUMNS = tuple(c for c in MULTI_REPLICATE_COLUMNS if c != "p_adjusted")


def _interleave(per_test: Sequence[Mapping[str, np.ndarray]],
                tests: Sequence[str]) -> dict[str, np.ndarray]:
    """Replicate columns of each test (same replicates) as rows by replicate, then test."""
    m = len(tests)
    n = len(per_test[0]["rep"])
    out: dict[str, np.ndarray] = {}
    for c in REPLICATE_COLUMNS:
        out[c] = np.stack([pc[c] for pc in per_test], axis=1).reshape(n * m)
    out["test"] = np.tile(np.asarray(tests, dtype=object), n)
    return out


def _tests_records(rec: Mapping[str, Any], tests: Sequence[str]) -> list[dict[str, Any]]:
    """One record per test from one replicate record (a fit that failed for all)."""
    return [{**rec, "test": t} for t in tests]


def _wald_record(rep: int, est: float, se: float, df: float | None, alpha: float,
                 converged: bool, singular: bool) -> dict[str, Any]:
    """One replicate's Wald/t test as a record (see :func:`_wald_columns`)."""
    cols = _wald_columns(rep, est, se, math.nan if df is None else df, alpha, converged,
                         singular)
    rec: dict[str, Any] = {}
    for c in REPLICATE_COLUMNS:
        v = cols[c][0]
        rec[c] = (int(v) if c == "rep" else bool(v) if c in BOOL_COLUMNS else
                  str(v) if c == "error" else float(v))
    return rec


def _fit_frame_replicate(job: _Job, rep: int, ss: np.random.SeedSequence
                         ) -> dict[str, Any] | list[dict[str, Any]]:
    """Simulate one data frame and fit it with a data-frame backend.

    Returns the replicate's record, or with several tests (``job.tests``) one record
    per test.
    """
    data = to_frame(simulate_arrays(job.design, ss, scenario=job.scenario), job.design)
    fitter = job.fitter or _resolve_fitter(job.method)
    kwargs = dict(job.fit_kwargs)
    if job.method == "bayes":
        kwargs.setdefault("seed", _fit_seed(ss))
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = fitter(job.formula, data, **kwargs)
        except _FAIL_EXC as err:
            rec = _empty_record(rep, f"{type(err).__name__}: {err}")
            return _tests_records(rec, job.tests) if job.tests else rec
    cats = {w.category for w in caught}
    conv = getattr(fit, "converged", None)
    converged = (ConvergenceWarning not in cats) if conv is None else bool(conv)
    sing = getattr(fit, "singular", None)
    singular = (SingularFitWarning in cats) if sing is None else bool(sing)
    if job.method == "bayes":
        return _bayes_record(job, rep, fit, converged)
    if job.tests:
        return [{**_coef_record(job, rep, fit, t, converged, singular), "test": t}
                for t in job.tests]
    return _coef_record(job, rep, fit, job.test, converged, singular)


def _coef_record(job: _Job, rep: int, fit: Any, test: str, converged: bool,
                 singular: bool) -> dict[str, Any]:
    """Return the Wald/t test of one coefficient of a fit as a replicate record."""
    try:
        params = fit.params
        est = float(params[test])
        cov = fit.cov_params()
        se = math.sqrt(float(cov.loc[test, test]))
        L = np.zeros(len(params))
        L[list(params.index).index(test)] = 1.0
        df = float(fit.contrast_df(L))
    except _FAIL_EXC as err:
        rec = _empty_record(rep, f"{type(err).__name__}: {err}")
        rec.update(converged=converged, singular=singular)
        return rec
    return _wald_record(rep, est, se, df, job.alpha, converged, singular)


def _bayes_record(job: _Job, rep: int, fit: Any, converged: bool) -> dict[str, Any]:
    draws = fit.fixed_draws
    if draws is None or job.test not in draws.columns:
        return _empty_record(rep, f"fit has no posterior draws for {job.test!r}")
    d = np.asarray(draws[job.test], dtype=float)
    lo, hi = np.quantile(d, [job.alpha / 2, 1 - job.alpha / 2])
    p_dir = float(max(np.mean(d > 0), np.mean(d < 0)))
    if job.bayes_rule == "pd":
        reject = p_dir >= job.threshold
    else:
        reject = bool(lo > job.rope or hi < -job.rope)
    return {
        "rep": rep, "estimate": float(d.mean()), "se": float(d.std(ddof=1)), "df": math.inf,
        "p_value": 2 * (1 - p_dir), "ci_low": float(lo), "ci_high": float(hi),
        "reject": bool(reject), "converged": converged, "singular": False, "failed": False,
        "error": "",
    }


def _groups_for(spec: ModelSpec) -> tuple[str, str | None] | None:
    """Map the formula's random part to (outer, inner) simulated factors, if possible."""
    names = [t.group for t in spec.random]
    if names == ["therapist", "therapist:patient"]:
        return ("therapist", "patient")
    if len(names) == 1 and names[0] in ("therapist", "patient", "therapist:patient"):
        return ("patient" if names[0] != "therapist" else "therapist", None)
    return None


def _run_fast_batch(job: _Job, reps: Sequence[int],
                    seeds: Sequence[np.random.SeedSequence]) -> list[dict[str, np.ndarray]]:
    """Fit a batch with the batched REML engine; return replicate columns in rep order.

    With a shared layout (fixed caseloads and sessions) and a formula whose columns are
    plain products of simulated columns, the whole batch is fitted in one call: random
    intercepts from the simulator's sums
    (:func:`~alliance_models.planning.simulate.batch_sums`, observed rows only; no
    ``(B, n, p)`` design is formed) by ``fit_sums``, a random slope from the stacked
    arrays of :func:`~alliance_models.planning.simulate.batch_arrays` (dropout as a mask)
    by ``fit_batch``. Otherwise, or if that call fails, replicates are fitted one by one, from
    arrays when possible and from a data frame (formulaic terms such as ``C(arm)``)
    otherwise; a replicate that cannot be fitted is recorded as failed.
    """
    if job.design.family != "gaussian":
        return _run_glmm_batch(job, reps, seeds)
    from ..models.lmm import batch_fit as fast

    spec = parse_formula(job.formula)
    groups = _groups_for(spec)
    k = job.test_index
    # several tests: df for each listed coefficient (each as in its own run)
    contrast: int | list[int] = list(job.test_indices) if job.tests else k

    def columns(bf: Any, idx: Sequence[int]) -> dict[str, np.ndarray]:
        if job.tests:
            return _interleave([
                _wald_columns(idx, bf.beta[:, kj], bf.se[:, kj], bf.df[:, j], job.alpha,
                              bf.converged, bf.singular)
                for j, kj in enumerate(job.test_indices)], job.tests)
        return _wald_columns(idx, bf.beta[:, k], bf.se[:, k], bf.df, job.alpha,
                             bf.converged, bf.singular)

    codes: dict[str, np.ndarray]
    if groups is not None and job.design.has_fixed_structure and job.slope_index is None:
        # random intercepts: the simulator's sums, without the (B, n, p) design
        try:
            sm = batch_sums(job.design, spec.response, job.x_names, seeds,
                            scenario=job.scenario)
            ther = sm["pat_ther"]
            sums = [sm[c] for c in ("G", "xty", "yty", "sx", "sy", "nk")]
            if groups == ("therapist", None):  # the therapists are the level-1 clusters
                first = np.flatnonzero(np.r_[True, ther[1:] != ther[:-1]])
                sums[3:] = [np.add.reduceat(a, first, axis=1) for a in sums[3:]]
                outer, inner = ther[first], None
            else:
                outer = ther if groups[1] else np.arange(ther.size)
                inner = np.arange(ther.size) if groups[1] else None
            bf = fast.fit_sums(*sums, outer, inner, contrast=contrast, reml=True)
        except _FAIL_EXC:
            pass  # fit replicate by replicate below, recording failures one at a time
        else:
            return [columns(bf, reps)]
    elif groups is not None and job.design.has_fixed_structure:
        try:
            X, Y, ther, pat, mask, _ = batch_arrays(job.design, spec.response,
                                                    job.x_names, seeds, sims=False,
                                                    scenario=job.scenario)
            codes = {"therapist": ther, "patient": pat}
            bf = fast.fit_batch(X, Y, codes[groups[0]],
                                codes[groups[1]] if groups[1] else None,
                                mask=None if mask.all() else mask,
                                contrast=contrast, reml=True, slope=job.slope_index)
        except _FAIL_EXC:
            pass  # fit replicate by replicate below, recording failures one at a time
        else:
            return [columns(bf, reps)]
    out: list[dict[str, np.ndarray]] = []
    failed: list[dict[str, Any]] = []
    for rep, ss in zip(reps, seeds, strict=True):
        try:
            sa = simulate_arrays(job.design, ss, scenario=job.scenario)
            keep = sa.observed
            Xr = design_matrix(sa.columns, job.x_names, rows=keep)
            if groups is not None and Xr is not None and spec.response in sa.columns:
                y = sa.columns[spec.response][keep]
                codes = {"therapist": sa.therapist[keep], "patient": sa.patient[keep]}
                outer = codes[groups[0]]
                inner = codes[groups[1]] if groups[1] else None
            else:
                with _WARNINGS_LOCK, warnings.catch_warnings():
                    # few-cluster notes would repeat once per replicate; the main process
                    # has already shown them for the first replicate
                    warnings.simplefilter("ignore")
                    frame = spec.build(to_frame(sa, job.design))
                Xr, y = frame.X, frame.y
                outer, inner = fast.frame_codes(frame)
            bf = fast.fit_batch(Xr, y[None, :], outer, inner, mask=None,
                                contrast=contrast, reml=True, slope=job.slope_index)
        except _FAIL_EXC as err:
            failed.append(_empty_record(rep, f"{type(err).__name__}: {err}"))
            out.append({})  # placeholder, filled below in rep order
            continue
        out.append(columns(bf, [rep]))
    if failed:
        it = iter(failed)
        out = [pc if pc else (
            _columns_of_records(_tests_records(next(it), job.tests), _TESTS_COLUMNS)
            if job.tests else _columns_of_records([next(it)])) for pc in out]
    return out


def _run_glmm_batch(job: _Job, reps: Sequence[int],
                    seeds: Sequence[np.random.SeedSequence]) -> list[dict[str, np.ndarray]]:
    """Fit a binomial batch with the batched Laplace engine; return replicate columns.

    The replicates are stacked by :func:`~alliance_models.planning.simulate.batch_arrays`
    (on a padded grid when caseloads or session counts vary; dropout and padding as a
    mask) and fitted in one call of
    :func:`~alliance_models.models.glmm.batched.fit_glmm_batch`. Replicates it does not
    fit to its tolerance (possible separation, no conditional mode, Newton iteration not
    converged), or every replicate when the formula's columns cannot be stacked, are
    refitted one by one with ``fit_mixed(family="binomial")``, as ``method="mixed"``.
    """
    from ..models.glmm.batched import fit_glmm_batch

    spec = parse_formula(job.formula)
    groups = _groups_for(spec)
    k = job.test_index
    design = job.design
    cols: dict[str, np.ndarray] | None = None
    redo = np.ones(len(reps), dtype=bool)
    if groups is not None:
        try:
            X, Y, ther, pat, mask, _ = batch_arrays(
                design, spec.response, job.x_names, seeds,
                padded=not design.has_fixed_structure, sims=False, scenario=job.scenario)
        except _FAIL_EXC:
            pass  # formulaic columns: fit replicate by replicate below
        else:
            codes = {"therapist": ther, "patient": pat}
            inner = codes[groups[1] or groups[0]]
            outer = codes[groups[0]] if groups[1] else None
            bf = fit_glmm_batch(X, Y, inner, outer, trials=float(design.n_trials),
                                mask=None if mask.all() else mask, family=design.family)
            if job.tests:  # several tests: one Wald z test per listed coefficient
                cols = _interleave([
                    _wald_columns(reps, bf.beta[:, kj], bf.se[:, kj], math.nan, job.alpha,
                                  bf.converged, bf.singular) for kj in job.test_indices],
                    job.tests)
            else:
                cols = _wald_columns(reps, bf.beta[:, k], bf.se[:, k], math.nan, job.alpha,
                                     bf.converged, bf.singular)
            redo = ~bf.ok
    if not redo.any():
        assert cols is not None
        return [cols]
    one = dataclasses.replace(job, method="mixed")
    recs: list[Any] = [_fit_frame_replicate(one, reps[i], seeds[i])
                       for i in np.flatnonzero(redo)]
    columns = REPLICATE_COLUMNS
    m = 1
    if job.tests:  # one record per replicate and test
        recs = [r for group in recs for r in group]
        columns, m = _TESTS_COLUMNS, len(job.tests)
    if cols is None:
        return [_columns_of_records(recs, columns)]
    refit = _columns_of_records(recs, columns)
    where = np.flatnonzero(redo)
    rows = (where[:, None] * m + np.arange(m)).reshape(-1)
    for c in columns:
        cols[c] = cols[c].copy()
        cols[c][rows] = refit[c]
    return [cols]


def _run_frame_batch(job: _Job, reps: Sequence[int],
                     seeds: Sequence[np.random.SeedSequence]) -> list[dict[str, np.ndarray]]:
    """Fit a batch one data frame per replicate (any fitting function)."""
    recs = [_fit_frame_replicate(job, r, s) for r, s in zip(reps, seeds, strict=True)]
    if job.tests:
        flat = [rec for group in recs for rec in group]  # type: ignore[union-attr]
        return [_columns_of_records(flat, _TESTS_COLUMNS)] if flat else []
    return [_columns_of_records(recs)] if recs else []  # type: ignore[arg-type]


#: method -> how a batch of its replicates is fitted (replicate columns in rep order);
#: methods not listed fit one data frame per replicate
BATCH_ROUTES: dict[str, Callable[[_Job, Sequence[int], Sequence[np.random.SeedSequence]],
                                 list[dict[str, np.ndarray]]]] = {"fast": _run_fast_batch}


def run_batch(job: _Job, reps: Sequence[int],
              seeds: Sequence[np.random.SeedSequence]) -> pd.DataFrame:
    """Run one batch of replicates (in a worker or in this process) with BLAS pinned.

    Returns the batch's replicate frame (``REPLICATE_COLUMNS``, in ``reps`` order; with
    several tests, a ``test`` column and one row per replicate and test, before the
    multiple-testing correction).
    """
    route = BATCH_ROUTES.get(job.method, _run_frame_batch)
    with limit_blas():
        return _replicate_frame(route(job, reps, seeds),
                                _TESTS_COLUMNS if job.tests else REPLICATE_COLUMNS)


# --- the public engine ---------------------------------------------------------------

def _resolve_method(method: str | Callable[..., Any], spec: ModelSpec,
                    design: Design) -> str:
    if callable(method):
        return "custom"
    one_of("method", method, METHODS, ModelSpecError)
    if method in ("auto", "fast"):
        ok = False
        if (design.family == "binomial" and spec.has_random
                and spec.response == design.count_columns[0]):
            # the binomial GLMM of the counts: batched Laplace for random intercepts
            from ..models.lmm import batch_fit as fast

            ok = bool(fast.qualifies(spec)) and fast.random_slope(spec) is None
            if method == "fast" and not ok:
                raise ModelSpecError(
                    "method='fast' fits a binomial design's counts with random intercepts "
                    "only, one grouping factor or two nested ones, e.g. "
                    "'(1 | therapist/patient)'; use method='mixed' for other random parts")
            return "fast" if ok else "mixed"
        if design.family == "gaussian" and spec.has_random:
            try:
                from ..models.lmm import batch_fit as fast

                ok = bool(fast.qualifies(spec))
            except ImportError:
                ok = False
        if method == "fast" and not ok:
            raise ModelSpecError(
                "method='fast' needs a gaussian design and a random-intercepts-only formula "
                "with one grouping factor or two nested ones, e.g. '(1 | therapist/patient)', "
                "or '(1 + alliance | therapist) + (1 | therapist:patient)'"
            )
        if ok:
            return "fast"
        return "mixed" if spec.has_random else "ols"
    return method


def _truth(design: Design, spec: ModelSpec, method: str, fit_kwargs: Mapping[str, Any],
           ss: np.random.SeedSequence, test: str | Sequence[str]
           ) -> tuple[Any, bool, tuple[str, ...], SimArrays]:
    """Validate the formula on one replicate; return (truth, exact, x_names, replicate).

    ``truth`` is the true value of ``test``, or a tuple of the true values of a list.
    """
    tests = (test,) if isinstance(test, str) else tuple(test)
    sa = simulate_arrays(design, ss)
    frame = spec.build(to_frame(sa, design))
    x_names = frame.x_names
    for t in tests:
        if t not in x_names:
            raise ModelSpecError(
                f"test {t!r} is not a coefficient of {spec.formula!r}; coefficients: "
                f"{', '.join(x_names)}"
            )
    logit_fit = (method in ("bayes", "mixed", "fast")
                 and str(fit_kwargs.get("family", "")) == "binomial")
    if design.family == "binomial" and not logit_fit:
        nan = tuple(math.nan for _ in tests)
        return (nan[0] if isinstance(test, str) else nan), False, x_names, sa
    eta = sa.eta[sa.observed]
    coef, *_ = np.linalg.lstsq(frame.X, eta, rcond=None)
    resid = eta - frame.X @ coef
    exact = bool(np.sqrt(np.mean(resid**2)) < 1e-8 * max(1.0, float(np.std(eta))))
    values = tuple(0.0 if abs(v) < 1e-12 else v
                   for v in (float(coef[x_names.index(t)]) for t in tests))
    return (values[0] if isinstance(test, str) else values), exact, x_names, sa


def _stacked_cap(design: Design, spec: ModelSpec, x_names: tuple[str, ...],
                 sa: SimArrays) -> int | None:
    """Replicates per batch for the stacked fast path, or None when it does not apply.

    The stacked path (one :func:`batch_sums` or :func:`batch_arrays` call and one
    batched fit per batch) needs a fixed layout and a formula of plain products of
    simulated columns. Its batches hold at most one working-memory chunk of
    :func:`fast.chunk_size` for the layout of the first replicate (for 30 therapists x
    8 patients x 6 sessions and six coefficients: 1,538 replicates from sums, with a
    budget of ``_SUMS_BATCH_MEMORY``; 457 with a random slope, whose fit takes the
    rows), so each batch is one vectorised fit, per-batch costs are spread over many
    replicates and memory stays bounded. Binomial designs use the batched Laplace
    engine's
    :func:`~alliance_models.models.glmm.batched.chunk_size`.
    """
    from ..models.lmm import batch_fit as fast

    groups = _groups_for(spec)
    if (groups is None or not design.has_fixed_structure or spec.response not in sa.columns
            or design_matrix(sa.columns, x_names) is None):
        return None
    codes = {"therapist": sa.therapist, "patient": sa.patient}
    level1 = codes[groups[1] or groups[0]]
    sizes = np.unique(level1, return_counts=True)[1]
    n_outer = int(np.unique(codes[groups[0]]).size) if groups[1] else 0
    if design.family != "gaussian":  # the batched Laplace engine
        from ..models.glmm.batched import chunk_size

        return chunk_size(int(sa.therapist.size), len(x_names), int(sizes.size))
    slope = fast.random_slope(spec) is not None
    if slope:
        return fast.chunk_size(int(sa.therapist.size), len(x_names), int(sizes.size),
                               n_outer, int(sizes.max()), slope=True)
    return fast.chunk_size(int(sa.therapist.size), len(x_names), int(sizes.size), n_outer,
                           int(sizes.max()), sums=True, memory=_SUMS_BATCH_MEMORY)


def _default_batch_size(method: str, n_sims: int, stacked_cap: int | None = None,
                        workers: int = 1) -> int:
    """Replicates per batch: from the method, ``n_sims``, the layout and the workers.

    Replicate ``i`` always uses seed ``i`` and its fit does not depend on the other
    replicates of its batch, so batch boundaries affect speed, progress and checkpoint
    granularity only, not results (whatever ``n_jobs``).
    """
    if method == "fast" and stacked_cap is not None:
        # as few batches as memory allows, but a multiple of the workers (threads or
        # processes; at least one batch each while each batch still holds _MIN_STACKED
        # replicates) so that they share the batches evenly; sizes as equal as possible
        n_batches = math.ceil(n_sims / max(1, stacked_cap))
        if workers > 1 and n_sims >= workers * _MIN_STACKED:
            n_batches = workers * math.ceil(n_batches / workers)
        return max(1, math.ceil(n_sims / n_batches))
    cap = 50 if method == "fast" else 10
    return max(1, min(cap, math.ceil(n_sims / 20)))


def power(
    design: Design,
    formula: str,
    *,
    test: str | Sequence[str],
    correction: str | None = None,
    n_sims: int = 1000,
    alpha: float = 0.05,
    method: str | Callable[..., Any] = "auto",
    n_jobs: int = -1,
    backend: Any = "loky",
    seed: RNGLike = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    batch_size: int | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    bayes_kwargs: Mapping[str, Any] | None = None,
    rule: str = "interval",
    threshold: float = 0.975,
    rope: float = 0.0,
    scenario: Scenario | None = None,
    scenarios: Any = None,
) -> PowerResult | MultiPowerResult | ScenarioResult:
    """Estimate the power to detect one coefficient by simulating the planned trial.

    With a list of coefficients (``test=[...]``), every replicate is fitted once and
    each coefficient tested, after a multiple-testing correction within the replicate
    (see :mod:`alliance_models.planning.multitest`).

    Parameters
    ----------
    design : Design
        The planned trial.
    formula : str
        The analysis formula, fitted to every simulated data set.
    test : str or list of str
        The coefficient to test, by its formulaic name (``"alliance:autonomy"``,
        ``"arm"``, ``"C(arm)[T.1]"``), or a list of coefficients tested together (each
        once; not with ``method="bayes"``): the result is then a
        :class:`~alliance_models.planning.multitest.MultiPowerResult` with each test's
        power after the correction, the power that all / any of them reject, and the
        family-wise type-I error over the tests whose true value is zero.
    correction : {None, "bonferroni", "holm", "bh"}, default None
        Multiple-testing correction of a list of tests within each replicate
        (Benjamini-Hochberg for ``"bh"``; as statsmodels' ``multipletests``). A single
        test is not affected.
    n_sims : int, default 1000
        Replicates.
    alpha : float, default 0.05
        Two-sided level of the Wald/t test (Satterthwaite df for mixed models).
    method : {"auto", "fast", "mixed", "gee", "ols", "bayes"} or callable
        ``"auto"`` uses the batched REML engine when the formula qualifies (gaussian;
        random intercepts, one or two nested factors; or a correlated random slope with
        the nested intercept, ``(1 + alliance | therapist) + (1 | therapist:patient)``,
        whose slope variable is also a fixed effect), else ``fit_mixed`` (random
        terms) or ``fit_ols``. For a binomial design whose formula models the counts
        (``"attended ~ ..."`` or ``"completed ~ ..."``), every replicate is fitted by
        the binomial GLMM (Laplace, Wald z) and bias, RMSE and coverage refer to the true
        conditional (subject-specific) coefficient: ``"auto"`` (and ``"fast"``) use the
        batched Laplace engine for random intercepts (one factor or two nested ones;
        replicates it marks as not fitted to its tolerance are refitted one by one),
        ``"mixed"`` (and ``"auto"`` for other random parts) one
        ``fit_mixed(family="binomial", trials=<denominator>)`` per replicate. A callable
        ``f(formula, data, **fit_kwargs)`` returning a fit with ``params``,
        ``cov_params()`` and ``contrast_df(L)`` is used as is.
    n_jobs : int, default -1
        Local workers; -1 uses every core, -2 all but one (joblib's convention). With
        more than one worker and more than one batch, batches run in joblib's loky
        worker processes; once started, they stay alive for a few idle minutes, so the
        runs that follow use them at once. A run that finds no running workers computes
        its first batches in this process and starts them only if the rest would take
        more than a couple of seconds here, computing batches itself while they start
        (see :mod:`~alliance_models.planning.executors`): a short run never waits for
        worker start-up. In this process the batched random-intercept engines (``"fast"``
        with a fixed layout and plain-product columns) run in ``n_jobs`` threads (at
        most one per core), so a short first run uses every core; other fits (the
        random-slope engine included) run one batch at a time.
    backend : "loky", "dask" or distributed.Client
        ``"loky"`` runs batches in loky's reusable processes (joblib's), or with
        :class:`joblib.Parallel` on the joblib backend a surrounding
        ``joblib.parallel_config(...)`` chooses (such as
        ``"threading"``). ``"dask"`` uses the current Dask client, or starts a process-based
        ``LocalCluster`` for this run (in a script, do that under
        ``if __name__ == "__main__":``, or the Nanny fails to start). Batches are
        submitted as tasks and gathered as they finish.
    seed : int, SeedSequence or None
        Root seed; replicate i uses the i-th ``SeedSequence.spawn`` child.
    checkpoint : path, optional
        ``.parquet`` or ``.csv`` file that receives finished replicates batch by batch;
        a rerun of the same run resumes from it.
    progress : bool or None
        Progress bar; ``None`` shows it when the run looks longer than a few seconds.
    batch_size : int, optional
        Replicates per task (default from ``method``, ``n_sims``, the layout and, for
        the batched engines, a multiple of the workers as batch count; results do not
        depend on it).
    fit_kwargs : mapping, optional
        Extra keyword arguments of the fitting function.
    bayes_kwargs : mapping, optional
        Keyword arguments of ``fit_bayes`` for ``method="bayes"`` (draws, chains, ...).
    rule : {"interval", "pd"}, default "interval"
        Bayesian assurance: the ``1 - alpha`` interval excludes ``[-rope, rope]``, or
        the probability of direction reaches ``threshold``.
    threshold, rope : float
        See ``rule``.
    scenario : Scenario, optional
        Simulate the design under one robustness scenario
        (:class:`~alliance_models.Scenario`: non-normal residuals or random effects,
        heteroskedasticity by therapist, dropout linked to alliance, alliance measured
        with error). The truth stays the unperturbed coefficient, so bias shows what the
        perturbation does to the estimate.
    scenarios : True, preset name, Scenario, sequence or mapping, optional
        Run the design under several scenarios side by side and return a
        :class:`~alliance_models.ScenarioResult`: ``True`` for the presets
        ``"optimistic"``, ``"realistic"`` and ``"pessimistic"``, or your own (a mapping
        names them). The unperturbed design runs first as ``"baseline"``. Every
        scenario uses the same seed (common random numbers), so differences reflect
        the perturbations; a checkpoint is kept per scenario
        (``<stem>-scenario=<name><suffix>``).

    Returns
    -------
    PowerResult, MultiPowerResult, or ScenarioResult with ``scenarios``
        A :class:`PowerResult` for one test (a string), a ``MultiPowerResult`` for a list.

    Raises
    ------
    ModelSpecError
        Unknown method, backend or correction; a ``test`` that is not a coefficient of
        the formula, or a list that repeats one; a list with ``method="bayes"``.
    DesignError
        A checkpoint from a different run, or a checkpoint without a seed.

    Examples
    --------
    >>> import alliance_models as am
    >>> d = am.Design(therapists=10, patients_per_therapist=4, sessions=2,
    ...               moderators={}, effects={"alliance": 0.3})
    >>> res = am.power(d, "adherence ~ alliance", test="alliance", n_sims=20,
    ...                method="ols", n_jobs=1, seed=1, fit_kwargs={"hc": None})
    >>> res.n_completed, 0 <= res.power <= 1
    (20, True)
    >>> both = am.power(d, "adherence ~ alliance", test=["Intercept", "alliance"],
    ...                 correction="holm", n_sims=20, method="ols", n_jobs=1, seed=1,
    ...                 fit_kwargs={"hc": None})
    >>> both.power_all <= both.per_test["alliance"].power <= both.power_any
    True
    """
    t0 = time.perf_counter()
    if scenarios is not None and scenarios is not False:
        if scenario is not None:
            raise ModelSpecError("give scenario (one) or scenarios (side by side), not both")
        if not isinstance(test, str):
            raise ModelSpecError(
                f"scenarios side by side compare one test (a string), got test={test!r}; "
                "for several tests run power(..., scenario=...) once per scenario")
        return _power_scenarios(
            design, formula, scenarios, seed=seed, checkpoint=checkpoint, test=test,
            n_sims=n_sims, alpha=alpha, method=method, n_jobs=n_jobs, backend=backend,
            progress=progress, batch_size=batch_size, fit_kwargs=fit_kwargs,
            bayes_kwargs=bayes_kwargs, rule=rule, threshold=threshold, rope=rope)
    if not isinstance(design, Design):
        raise DesignError(f"design must be an alliance_models.Design, got {type(design).__name__}")
    if scenario is not None:
        if not isinstance(scenario, Scenario):
            raise ModelSpecError(
                f"scenario must be an alliance_models.Scenario, got {scenario!r}; use "
                "am.Scenario.preset('realistic') for a preset")
        scenario.check(design)
    positive_int("n_sims", n_sims, ModelSpecError)
    probability("alpha", alpha, ModelSpecError)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        raise ModelSpecError(
            f"n_jobs must be a positive number of worker processes, or -1 for every core "
            f"(-2 all but one, ...); got {n_jobs!r}"
        )
    if batch_size is not None:
        positive_int("batch_size", batch_size, ModelSpecError)
    n_jobs = int(n_jobs)
    one_of("rule", rule, ("interval", "pd"), ModelSpecError, quote=True)
    correction = check_correction(correction)
    tests = None if isinstance(test, str) else check_tests(test)
    spec = parse_formula(formula)
    resolved = _resolve_method(method, spec, design)
    if tests is not None and resolved == "bayes":
        raise ModelSpecError(
            f"method='bayes' tests one coefficient per run (test={list(tests)!r} is a list): "
            "its assurance has no p-values to correct; run power() once per coefficient")
    kwargs = dict(fit_kwargs or {})
    if resolved == "bayes":
        kwargs.update(bayes_kwargs or {})
    if resolved in ("bayes", "gee") or (
            resolved in ("mixed", "fast") and design.family == "binomial"
            and spec.response == design.count_columns[0]):
        # the design's family, unless the caller chose otherwise (fit_gee defaults to
        # binomial); a binomial design whose formula models the counts (e.g. attended)
        # gets the binomial GLMM from fit_mixed, whose truth is the conditional
        # (subject-specific) coefficient of the simulated linear predictor
        kwargs.setdefault("family", design.family)
        if kwargs["family"] == "binomial":
            kwargs.setdefault("trials", design.count_columns[1])
    if seed is None and checkpoint is not None:
        raise DesignError("a checkpoint needs a fixed seed (seed=...) to resume the same run")
    # replicate i's seed is root.spawn(n_sims)[i]; batches carry their seeds as
    # SeedBlocks, which pickle as a few numbers
    root = seed_sequence(seed)
    entropy = root.entropy
    truths, exact, x_names, first = _truth(design, spec, resolved, kwargs, child(root, 0),
                                           tests or (test,))
    truth = truths[0]  # a single test: its truth
    slope_index = None
    if resolved == "fast" and design.family == "gaussian":
        from ..models.lmm import batch_fit as fast

        var = fast.random_slope(spec)
        if var is not None and var not in x_names:  # the batched model needs x in X
            if method == "fast":
                raise ModelSpecError(
                    f"method='fast' fits a random slope of {var!r} only with {var!r} among "
                    f"the fixed effects; coefficients: {', '.join(x_names)}")
            resolved = "mixed"
        elif var is not None:
            slope_index = x_names.index(var)
    if scenario is not None and BATCH_ROUTES.get(resolved, _run_frame_batch) not in (
            _run_fast_batch, _run_frame_batch):
        raise ModelSpecError(
            f"method {resolved!r} fits its replicates by a batch route that does not "
            "simulate robustness scenarios; scenarios run with the batched REML engine "
            "('fast', or 'auto' for gaussian designs) and with one data-frame fit per "
            "replicate")
    stacked = _stacked_cap(design, spec, x_names, first) if resolved == "fast" else None
    first_test = tests[0] if tests else test
    job = _Job(
        design=design, formula=formula, test=first_test,
        test_index=x_names.index(first_test),
        x_names=x_names, method=resolved, alpha=float(alpha), fit_kwargs=kwargs,
        bayes_rule=rule, threshold=float(threshold), rope=float(rope),
        fitter=method if callable(method) else None, slope_index=slope_index,
        scenario=scenario,
        tests=tests or (), test_indices=tuple(x_names.index(t) for t in tests or ()),
    )
    columns = _TESTS_COLUMNS if tests else REPLICATE_COLUMNS
    bs = batch_size or _default_batch_size(resolved, n_sims, stacked, n_workers(n_jobs))
    fp = _checkpoint.fingerprint(job.describe(), root)
    ck_path = Path(checkpoint) if checkpoint is not None else None
    if ck_path is not None and ck_path.suffix not in (".parquet", ".csv"):
        raise DesignError(f"checkpoint {str(ck_path)!r} must end in .parquet or .csv")
    done = (_checkpoint.read(ck_path, fp, columns) if ck_path is not None
            else pd.DataFrame())
    done = done[done["rep"] < n_sims] if len(done) else done
    have = set(done["rep"].astype(int)) if len(done) else set()
    batches: list[Batch] = []
    for start in range(0, n_sims, bs):
        reps = [r for r in range(start, min(start + bs, n_sims)) if r not in have]
        if reps:
            batches.append((reps, SeedBlock(root, reps)))

    parts: list[pd.DataFrame] = [done.drop(columns="fingerprint")] if len(done) else []
    interrupted = False
    n_done_batches = 0
    # the package's own stacked engines are pure numpy and safe in threads (a cold
    # run computes them in a thread pool); other fits stay on one thread of this process,
    # and so does the random-slope engine, which gained nothing in 2 threads (0.95-0.98x
    # of one thread, 500 replicates, both cores free)
    stream = execute(functools.partial(run_batch, job), batches, n_jobs, backend,
                     threads=job.fitter is None and resolved == "fast" and stacked is not None
                     and slope_index is None)
    try:
        for part in _with_progress(stream, len(batches), progress,
                                   desc=f"power {', '.join(tests or (test,))}"):
            parts.append(part)
            n_done_batches += 1
            if ck_path is not None:
                all_rows = pd.concat(parts, ignore_index=True).assign(fingerprint=fp)
                _checkpoint.write(ck_path, all_rows)
    except KeyboardInterrupt:
        interrupted = len(parts) == 0 or n_done_batches < len(batches)
        if ck_path is not None and n_done_batches:
            # Ctrl-C may have cut the last checkpoint write short: save what the partial
            # result holds, so that file and result agree
            _checkpoint.write(ck_path, pd.concat(parts, ignore_index=True).assign(
                fingerprint=fp))
    finally:
        with contextlib.suppress(Exception):
            stream.close()  # type: ignore[attr-defined]
    reps_df = (pd.concat(parts, ignore_index=True) if parts else
               pd.DataFrame(columns=list(columns)))
    # batches hold each replicate's tests in the order given
    reps_df = reps_df.sort_values("rep", kind="stable").reset_index(drop=True)
    for c in BOOL_COLUMNS:
        reps_df[c] = reps_df[c].astype(bool)
    reps_df["rep"] = reps_df["rep"].astype(np.int64)
    if interrupted:
        warnings.warn(
            f"power run interrupted after {len(reps_df)} of {n_sims} replicates; the result "
            "and its confidence interval cover the completed replicates only"
            + (f" (finished replicates are saved in {str(ck_path)!r}; rerun to resume)"
               if ck_path is not None else ""),
            AllianceModelsWarning,
            skip_file_prefixes=(_PACKAGE_DIR,),
        )
    if len(reps_df) == 0:
        raise KeyboardInterrupt("power run interrupted before any replicate finished")
    if tests:
        reps_df = adjust_frame(reps_df, tests, correction, alpha)
        return summarise_family(
            reps_df, tests=tests, truths=truths, truth_exact=exact, correction=correction,
            alpha=float(alpha), common={
                "design": design, "formula": formula, "method": resolved,
                "alpha": float(alpha), "n_sims": n_sims,
                "elapsed": time.perf_counter() - t0, "interrupted": interrupted,
                "seed": entropy if isinstance(entropy, int) else None,
                "scenario": scenario})
    summ = summarise(reps_df, truth=truth, alpha=alpha)
    return PowerResult(
        design=design, formula=formula, test=test, method=resolved, alpha=float(alpha),
        n_sims=n_sims, truth=truth, truth_exact=exact, elapsed=time.perf_counter() - t0,
        interrupted=interrupted, seed=entropy if isinstance(entropy, int) else None,
        replicates=reps_df,
        assurance_rule=(
            (f"{1 - alpha:.0%} interval excludes "
             + (f"[-{rope:g}, {rope:g}]" if rope else "0") if rule == "interval"
             else f"probability of direction >= {threshold:g}") if resolved == "bayes"
            else None),
        scenario=scenario,
        **summ,
    )


def _power_scenarios(design: Design, formula: str, scenarios: Any, *, seed: RNGLike,
                     checkpoint: str | os.PathLike[str] | None,
                     **kwargs: Any) -> ScenarioResult:
    """Run :func:`power` once per scenario with one root seed (common random numbers)."""
    t0 = time.perf_counter()
    if seed is None and checkpoint is not None:
        raise DesignError("a checkpoint needs a fixed seed (seed=...) to resume the same run")
    resolved = resolve_scenarios(scenarios)
    for sc in resolved.values():  # every scenario must fit the design before any run
        sc.check(design)
    root = seed_sequence(seed)
    results: dict[str, Any] = {}
    for name, sc in resolved.items():
        ck = None
        if checkpoint is not None:
            p = Path(checkpoint)
            ck = p.with_name(f"{p.stem}-scenario={name}{p.suffix}")
        results[name] = power(design, formula, seed=root, checkpoint=ck,
                              scenario=None if sc.is_null else sc, **kwargs)
    return ScenarioResult(scenarios=resolved, results=results,
                          elapsed=time.perf_counter() - t0)


def _with_progress(stream: Iterator[pd.DataFrame], total: int, enabled: bool | None,
                   *, desc: str) -> Iterator[pd.DataFrame]:
    """Show a progress bar when asked, or (``None``) when the run looks long."""
    if enabled is False or total == 0:
        yield from stream
        return
    if enabled is True:
        yield from _progress(stream, total=total, desc=desc)
        return
    start = time.perf_counter()
    first = next(stream, None)
    if first is None:
        return
    yield first
    # time of the first finished batch (worker start-up included) times the batches left
    per_batch = time.perf_counter() - start
    show = per_batch * (total - 1) > 5.0
    yield from _progress(stream, total=total - 1, desc=desc, enabled=show)
