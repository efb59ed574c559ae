"""Monte Carlo power for planned trials: replicates, diagnosands, curves, sample size.

:func:`power` simulates ``n_sims`` data sets from a :class:`Design`, fits the analysis
formula to each, and tests one coefficient. Replicate ``i`` always uses the i-th child
of ``SeedSequence(seed).spawn`` and replicates run in fixed batches, so the result does
not depend on ``n_jobs`` or on the backend (joblib/loky locally, Dask on a cluster).

What the truth is
-----------------
Bias, RMSE, coverage and the type-S rate need the true value of the tested coefficient
*on the analysis formula's scale*. The simulator keeps the noise-free fixed part of the
linear predictor (``eta``: standardised effects times standardised predictors, see
:mod:`alliance_models.power.design`). The truth is the least-squares projection of
``eta`` onto the analysis design matrix of the first replicate. When the formula contains
every simulated term (in any parametrisation: raw age, centred age, alliance split into
``alliance_pm`` and ``alliance_pmc`` ...), the projection is exact (``truth_exact``) and
maps the standardised effect to the coefficient, e.g. ``beta_age / sd(age)`` per year
of age. Columns centred at the sample mean (``age_c``, ``autonomy_c``) move a little
between replicates, and with them the true lower-order coefficients (``alliance`` in
``alliance * age_c``); the first replicate's value is reported, so bias and coverage of
such coefficients carry that small sampling shift (interactions are not affected). For
binomial designs analysed with a linear model (mixed/ols/gee on the
proportion) or with GEE (a population-averaged target), there is no such truth:
bias, RMSE, coverage and the type-S rate are reported as NaN.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from .._progress import progress as _progress
from .._random import RNGLike, SeedBlock, child, seed_sequence
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
from .design import Design
from .simulate import SimArrays, batch_arrays, design_matrix, simulate_arrays, to_frame

__all__ = [
    "PowerCurve",
    "PowerResult",
    "SampleSizeResult",
    "power",
    "power_curve",
    "run_power_file",
    "sample_size",
    "wilson_interval",
]

METHODS = ("auto", "fast", "mixed", "gee", "ols", "bayes")
REPLICATE_COLUMNS = (
    "rep", "estimate", "se", "df", "p_value", "ci_low", "ci_high", "reject",
    "converged", "singular", "failed", "error",
)
_BOOL_COLUMNS = frozenset({"reject", "converged", "singular", "failed"})
_FAIL_EXC = (np.linalg.LinAlgError, ArithmeticError, AllianceModelsError, ValueError)
#: a local run starts worker processes only when the work left after the first batch
#: looks longer than this (seconds); loky start-up costs a few seconds
_POOL_MIN_SECONDS = 4.0
#: joblib keeps loky's worker processes alive this long (seconds) after their last task
#: (its ``idle_worker_timeout``); a run within this window of the last pooled run, with
#: the same number of workers, finds them started and uses them for every batch
_POOL_IDLE_TIMEOUT = 300.0
#: workers -> time.monotonic() of the end of the last run that used the loky pool
_pool_last_used: dict[int, float] = {}
#: smallest stacked fast batch worth splitting a run for (per-batch costs of the
#: batched fit are spread over this many replicates)
_MIN_STACKED = 200
#: warnings point at the caller's line, outside alliance_models.power
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# --- small numeric helpers -----------------------------------------------------------

def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Examples
    --------
    >>> tuple(round(x, 4) for x in wilson_interval(8, 10))
    (0.4902, 0.9433)
    """
    if n <= 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


#: this process's threadpoolctl controller and the number of imported modules when it
#: was made (scanning the loaded libraries takes milliseconds; a new import may load a
#: new BLAS/OpenMP library, so the scan is repeated when more modules are imported)
_BLAS_CONTROLLER: list[Any] = []


def _limit_blas() -> contextlib.AbstractContextManager[Any]:
    """Pin BLAS/OpenMP to one thread (threadpoolctl when available)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack
        return contextlib.nullcontext()
    import sys

    n_modules = len(sys.modules)
    if not _BLAS_CONTROLLER or _BLAS_CONTROLLER[0] != n_modules:
        _BLAS_CONTROLLER[:] = [n_modules, ThreadpoolController()]
    return _BLAS_CONTROLLER[1].limit(limits=1)


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
    #: batches may run in threads of this process (the stacked fast path: vectorised
    #: numpy that releases the GIL, no ``warnings.catch_warnings``)
    threads_ok: bool = False


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


def _columns_of_records(recs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Replicate records (dicts) as replicate columns."""
    cols: dict[str, np.ndarray] = {}
    for c in REPLICATE_COLUMNS:
        values = [r[c] for r in recs]
        cols[c] = (np.array(values, dtype=object) if c == "error" else
                   np.array(values, dtype=np.int64 if c == "rep" else
                            bool if c in _BOOL_COLUMNS else float))
    return cols


def _replicate_frame(pieces: Sequence[Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Concatenate replicate columns into the replicate data frame (in the given order)."""
    if not pieces:
        return pd.DataFrame(columns=list(REPLICATE_COLUMNS))
    if len(pieces) == 1:
        cols = dict(pieces[0])
    else:
        cols = {c: np.concatenate([pc[c] for pc in pieces]) for c in REPLICATE_COLUMNS}
    return pd.DataFrame(cols, columns=list(REPLICATE_COLUMNS))


def _wald_record(rep: int, est: float, se: float, df: float | None, alpha: float,
                 converged: bool, singular: bool) -> dict[str, Any]:
    """One replicate's Wald/t test as a record (see :func:`_wald_columns`)."""
    cols = _wald_columns(rep, est, se, math.nan if df is None else df, alpha, converged,
                         singular)
    rec: dict[str, Any] = {}
    for c in REPLICATE_COLUMNS:
        v = cols[c][0]
        rec[c] = (int(v) if c == "rep" else bool(v) if c in _BOOL_COLUMNS else
                  str(v) if c == "error" else float(v))
    return rec


def _fit_frame_replicate(job: _Job, rep: int, ss: np.random.SeedSequence) -> dict[str, Any]:
    """Simulate one data frame and fit it with a data-frame backend."""
    data = to_frame(simulate_arrays(job.design, ss), job.design)
    fitter = job.fitter or _resolve_fitter(job.method)
    kwargs = dict(job.fit_kwargs)
    if job.method == "bayes":
        kwargs.setdefault("seed", _fit_seed(ss))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = fitter(job.formula, data, **kwargs)
        except _FAIL_EXC as err:
            return _empty_record(rep, f"{type(err).__name__}: {err}")
    cats = {w.category for w in caught}
    conv = getattr(fit, "converged", None)
    converged = (ConvergenceWarning not in cats) if conv is None else bool(conv)
    sing = getattr(fit, "singular", None)
    singular = (SingularFitWarning in cats) if sing is None else bool(sing)
    if job.method == "bayes":
        return _bayes_record(job, rep, fit, converged)
    try:
        params = fit.params
        est = float(params[job.test])
        cov = fit.cov_params()
        se = math.sqrt(float(cov.loc[job.test, job.test]))
        L = np.zeros(len(params))
        L[list(params.index).index(job.test)] = 1.0
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
    plain products of simulated columns, the whole batch is stacked by
    :func:`~alliance_models.power.simulate.batch_arrays` (dropout as a mask) and fitted in
    one call. Otherwise, or if that call fails, replicates are fitted one by one, from
    arrays when possible and from a data frame (formulaic terms such as ``C(arm)``)
    otherwise; a replicate that cannot be fitted is recorded as failed.
    """
    from ..models.lmm import batch_fit as fast

    spec = parse_formula(job.formula)
    groups = _groups_for(spec)
    k = job.test_index

    def columns(bf: Any, idx: Sequence[int]) -> dict[str, np.ndarray]:
        return _wald_columns(idx, bf.beta[:, k], bf.se[:, k], bf.df, job.alpha,
                             bf.converged, bf.singular)

    codes: dict[str, np.ndarray]
    if groups is not None and job.design.has_fixed_structure:
        try:
            X, Y, ther, pat, mask, _ = batch_arrays(job.design, spec.response,
                                                    job.x_names, list(seeds), sims=False)
            codes = {"therapist": ther, "patient": pat}
            bf = fast.fit_batch(X, Y, codes[groups[0]],
                                codes[groups[1]] if groups[1] else None,
                                mask=None if mask.all() else mask,
                                contrast=job.test_index, reml=True)
        except _FAIL_EXC:
            pass  # fit replicate by replicate below, recording failures one at a time
        else:
            return [columns(bf, reps)]
    out: list[dict[str, np.ndarray]] = []
    failed: list[dict[str, Any]] = []
    for rep, ss in zip(reps, seeds, strict=True):
        try:
            sa = simulate_arrays(job.design, ss)
            keep = sa.observed
            Xr = design_matrix(sa.columns, job.x_names, rows=keep)
            if groups is not None and Xr is not None and spec.response in sa.columns:
                y = sa.columns[spec.response][keep]
                codes = {"therapist": sa.therapist[keep], "patient": sa.patient[keep]}
                outer = codes[groups[0]]
                inner = codes[groups[1]] if groups[1] else None
            else:
                with warnings.catch_warnings():
                    # few-cluster notes would repeat once per replicate; the main process
                    # has already shown them for the first replicate
                    warnings.simplefilter("ignore")
                    frame = spec.build(to_frame(sa, job.design))
                Xr, y = frame.X, frame.y
                outer, inner = fast.frame_codes(frame)
            bf = fast.fit_batch(Xr, y[None, :], outer, inner, mask=None,
                                contrast=job.test_index, reml=True)
        except _FAIL_EXC as err:
            failed.append(_empty_record(rep, f"{type(err).__name__}: {err}"))
            out.append({})  # placeholder, filled below in rep order
            continue
        out.append(columns(bf, [rep]))
    if failed:
        it = iter(failed)
        out = [pc if pc else _columns_of_records([next(it)]) for pc in out]
    return out


def _run_batch(job: _Job, reps: Sequence[int],
               seeds: Sequence[np.random.SeedSequence], *, pin: bool = True) -> pd.DataFrame:
    """Run one batch of replicates (in a worker or in-process) with BLAS pinned.

    ``pin=False`` when the caller already holds the limit (threads of one process).
    """
    with _limit_blas() if pin else contextlib.nullcontext():
        if job.method == "fast":
            pieces = _run_fast_batch(job, reps, seeds)
        else:
            recs = [_fit_frame_replicate(job, r, s) for r, s in zip(reps, seeds, strict=True)]
            pieces = [_columns_of_records(recs)] if recs else []
    return _replicate_frame(pieces)


# --- results -------------------------------------------------------------------------

def _fmt(x: float, nd: int = 3) -> str:
    return "NA" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


@dataclass(frozen=True, eq=False)
class PowerResult:
    """The outcome of a Monte Carlo power run.

    Attributes
    ----------
    design : Design
    formula, test : str
        Analysis formula and the coefficient tested (formulaic name).
    method : str
        The engine that ran (``"fast"``, ``"mixed"``, ``"gee"``, ``"ols"``, ``"bayes"``
        or ``"custom"``).
    alpha : float
        Two-sided level (for ``"bayes"``: 1 - credible-interval probability).
    n_sims, n_completed : int
        Replicates requested and completed (fewer after an interruption).
    power : float
        Share of completed replicates that reject (Bayes: assurance). Failed fits
        count as non-rejections.
    ci : (float, float)
        95% Wilson interval for ``power``; ``mcse`` its Monte Carlo standard error.
    truth : float
        True value of the tested coefficient on the analysis scale (NaN when not
        defined; see the module docstring); ``truth_exact`` whether it is exact.
    bias, rmse, coverage, mean_se, empirical_sd : float
        Over replicates that produced an estimate; ``coverage`` of the ``1 - alpha``
        interval.
    type_s_rate : float
        Among rejecting replicates, the share whose estimate has the wrong sign.
    nonconvergence_rate, singular_rate, failure_rate : float
        Shares of completed replicates (a failed fit also counts as not converged).
    elapsed : float
        Seconds of wall time.
    interrupted : bool
        True when the run stopped early (Ctrl-C); the CI covers completed replicates.
    seed : int or None
        Root seed entropy (to reproduce a run started with ``seed=None``).
    replicates : DataFrame
        One row per replicate (estimate, se, df, p_value, CI, reject, flags).
    assurance_rule : str or None
        For ``method="bayes"``: the rule that counted a replicate as a success.
    """

    design: Design
    formula: str
    test: str
    method: str
    alpha: float
    n_sims: int
    n_completed: int
    power: float
    ci: tuple[float, float]
    mcse: float
    truth: float
    truth_exact: bool
    bias: float
    rmse: float
    coverage: float
    mean_se: float
    empirical_sd: float
    type_s_rate: float
    nonconvergence_rate: float
    singular_rate: float
    failure_rate: float
    elapsed: float
    interrupted: bool
    seed: int | None
    replicates: pd.DataFrame
    assurance_rule: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """One-row data frame of the headline numbers and diagnosands."""
        row = {
            "test": self.test, "method": self.method, "n_sims": self.n_sims,
            "n_completed": self.n_completed, "power": self.power, "ci_low": self.ci[0],
            "ci_high": self.ci[1], "mcse": self.mcse, "truth": self.truth, "bias": self.bias,
            "rmse": self.rmse, "coverage": self.coverage, "mean_se": self.mean_se,
            "empirical_sd": self.empirical_sd, "type_s_rate": self.type_s_rate,
            "nonconvergence_rate": self.nonconvergence_rate,
            "singular_rate": self.singular_rate, "failure_rate": self.failure_rate,
            "elapsed": self.elapsed, "interrupted": self.interrupted,
        }
        return pd.DataFrame([row])

    def summary(self) -> str:
        """Return a printable report of the run."""
        what = "assurance" if self.method == "bayes" else "power"
        lines = [
            f"Monte Carlo {what} for {self.test!r} (alpha = {self.alpha:g}, engine: "
            f"{self.method})",
            f"  formula: {self.formula}",
            f"  design:  {self.design.describe()}",
            f"  {what}: {self.power:.3f}  95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}]  "
            f"(MC SE {self.mcse:.3f}; {self.n_completed} of {self.n_sims} replicates)",
        ]
        if self.assurance_rule:
            lines.append(f"  rule: {self.assurance_rule}")
        lines += [
            f"  truth {_fmt(self.truth, 4)}"
            f"{'' if self.truth_exact or math.isnan(self.truth) else ' (projection)'}"
            f"{' (not defined for this family and method)' if math.isnan(self.truth) else ''}; "
            f"bias {_fmt(self.bias, 4)}; RMSE {_fmt(self.rmse, 4)}; "
            f"coverage {_fmt(self.coverage)}; type-S {_fmt(self.type_s_rate)}",
            f"  mean SE {_fmt(self.mean_se, 4)} vs empirical SD {_fmt(self.empirical_sd, 4)}",
            f"  non-convergence {self.nonconvergence_rate:.3f}; singular fits "
            f"{self.singular_rate:.3f}; failed fits {self.failure_rate:.3f}",
            f"  elapsed {self.elapsed:.1f} s",
        ]
        if self.interrupted:
            lines.append("  INTERRUPTED: the estimate covers completed replicates only")
        return "\n".join(lines)


def _summarise(reps: pd.DataFrame, *, truth: float, alpha: float) -> dict[str, Any]:
    """Compute the diagnosands of a set of replicate records (numpy arithmetic only)."""
    n = len(reps)
    k = int(reps["reject"].sum())
    p = k / n if n else math.nan
    ok = ~reps["failed"].to_numpy(bool)
    est = reps["estimate"].to_numpy(float)[ok]
    lo, hi = reps["ci_low"].to_numpy(float)[ok], reps["ci_high"].to_numpy(float)[ok]
    rej = reps["reject"].to_numpy(bool)[ok]
    has_truth = math.isfinite(truth)
    out = {
        "n_completed": n,
        "power": p,
        "ci": wilson_interval(k, n),
        "mcse": math.sqrt(p * (1 - p) / n) if n else math.nan,
        "bias": float(np.mean(est - truth)) if has_truth and est.size else math.nan,
        "rmse": float(np.sqrt(np.mean((est - truth) ** 2))) if has_truth and est.size
        else math.nan,
        "coverage": float(np.mean((lo <= truth) & (truth <= hi))) if has_truth and est.size
        else math.nan,
        "mean_se": float(np.mean(reps["se"].to_numpy(float)[ok])) if est.size else math.nan,
        "empirical_sd": float(np.std(est, ddof=1)) if est.size > 1 else math.nan,
        "type_s_rate": float(np.mean(np.sign(est[rej]) != np.sign(truth)))
        if has_truth and truth != 0 and rej.any() else math.nan,
        "nonconvergence_rate": float(1 - reps["converged"].mean()) if n else math.nan,
        "singular_rate": float(reps["singular"].mean()) if n else math.nan,
        "failure_rate": float(reps["failed"].mean()) if n else math.nan,
    }
    return out


# --- checkpoints ---------------------------------------------------------------------

def _fingerprint(job: _Job, root: np.random.SeedSequence) -> str:
    payload = {
        "design": job.design.to_dict(), "formula": job.formula, "test": job.test,
        "method": job.method, "alpha": job.alpha,
        # the whole root seed: entropy (an int or a sequence of ints) and spawn key
        "seed": [repr(root.entropy), list(root.spawn_key)],
        "fitter": None if job.fitter is None else
        f"{getattr(job.fitter, '__module__', '')}.{getattr(job.fitter, '__qualname__', '')}",
        "fit_kwargs": {k: repr(v) for k, v in sorted(job.fit_kwargs.items())},
        "bayes": [job.bayes_rule, job.threshold, job.rope],
    }
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_checkpoint(path: Path, fp: str) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=[*REPLICATE_COLUMNS, "fingerprint"])
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
        path, dtype={"error": str, "fingerprint": str}, keep_default_na=False,
        na_values={c: [""] for c in REPLICATE_COLUMNS if c not in ("error", "rep")})
    if len(df) and set(df["fingerprint"].astype(str)) != {fp}:
        raise DesignError(
            f"checkpoint {str(path)!r} belongs to a different run (design, formula, test, "
            "method, alpha or seed differ); use another checkpoint path or delete the file "
            "to start afresh"
        )
    df["error"] = df["error"].fillna("").astype(str)
    for c in ("reject", "converged", "singular", "failed"):
        df[c] = df[c].astype(bool)
    return df


def _write_checkpoint(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, path)


# --- execution backends --------------------------------------------------------------

def _dask_client(backend: Any) -> tuple[Any, Callable[[], None]]:
    """Return (client, close) for ``backend="dask"`` or an existing Client."""
    from distributed import Client, get_client

    if isinstance(backend, Client):
        return backend, lambda: None
    try:
        return get_client(), lambda: None
    except ValueError:
        from distributed import LocalCluster

        cluster = LocalCluster(threads_per_worker=1, processes=True)
        client = Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        return client, close


def _execute(job: _Job, batches: list[tuple[list[int], Sequence[np.random.SeedSequence]]],
             n_jobs: int, backend: Any) -> Iterator[pd.DataFrame]:
    """Yield finished batches (in completion order) from the chosen backend."""
    is_dask = backend == "dask" if isinstance(backend, str) else backend is not None
    if is_dask:
        from distributed import as_completed

        client, close = _dask_client(backend)
        futures = [client.submit(_run_batch, job, reps, seeds, pure=False)
                   for reps, seeds in batches]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()
            close()
        return
    if backend not in ("loky", None):
        raise ModelSpecError(
            f"backend {backend!r} is unknown; allowed: 'loky', 'dask' or a distributed.Client"
        )
    # joblib's convention: -1 every core, -2 all but one, ...
    n_workers = max(1, (os.cpu_count() or 1) + 1 + n_jobs) if n_jobs < 0 else n_jobs
    if n_workers == 1 or len(batches) <= 1:
        for reps, seeds in batches:
            yield _run_batch(job, reps, seeds)
        return
    if _pool_is_warm(n_workers):
        # the workers of an earlier run are still alive: no start-up to repay
        yield from _pool_batches(job, batches, n_workers)
        return
    # run a first round here (one batch; one per worker, in threads, on the stacked fast
    # path) and start worker processes only when the rest of the run is long enough to
    # repay their start-up; results are the same either way
    n_head = n_workers if job.threads_ok else 1
    head, rest = batches[:n_head], batches[n_head:]
    t0 = time.perf_counter()
    if job.threads_ok:
        yield from _thread_batches(job, head, n_workers)
    else:
        yield _run_batch(job, *head[0])
    if not rest:
        return
    if (time.perf_counter() - t0) * len(rest) < _POOL_MIN_SECONDS:
        if job.threads_ok:
            yield from _thread_batches(job, rest, n_workers)
        else:
            for reps, seeds in rest:
                yield _run_batch(job, reps, seeds)
        return
    yield from _pool_batches(job, rest, n_workers)


def _pool_is_warm(n_workers: int) -> bool:
    """Whether loky's workers of an earlier run (same worker count) should still be alive.

    Kept well inside joblib's idle timeout; if they have gone anyway, joblib starts new
    ones (slower, same results).
    """
    last = _pool_last_used.get(n_workers)
    return last is not None and time.monotonic() - last < 0.8 * _POOL_IDLE_TIMEOUT


def _pool_batches(job: _Job, batches: list[tuple[list[int], Sequence[np.random.SeedSequence]]],
                  n_workers: int) -> Iterator[pd.DataFrame]:
    """Run batches in loky worker processes (joblib's reusable pool), as they finish."""
    from joblib import Parallel, delayed, parallel_config

    _pool_last_used.pop(n_workers, None)  # warm again only once this run has used it
    with parallel_config(backend="loky", inner_max_num_threads=1,
                         idle_worker_timeout=_POOL_IDLE_TIMEOUT):
        gen = Parallel(n_jobs=n_workers, return_as="generator_unordered")(
            delayed(_run_batch)(job, reps, seeds) for reps, seeds in batches
        )
        try:
            yield from gen
            _pool_last_used[n_workers] = time.monotonic()
        finally:
            stop = getattr(gen, "close", None)
            if stop is not None:
                with warnings.catch_warnings():
                    # after Ctrl-C joblib notes that it cancelled the queued batches;
                    # the interruption warning of power() already says so
                    warnings.filterwarnings("ignore", message=r".*tasks which were still "
                                            r"being processed", category=UserWarning)
                    stop()


def _thread_batches(job: _Job, batches: list[tuple[list[int], Sequence[np.random.SeedSequence]]],
                    n_workers: int) -> Iterator[pd.DataFrame]:
    """Run batches in ``n_workers`` threads of this process (short stacked fast runs).

    Worker processes cost seconds to start; the stacked fast path spends its time in
    numpy calls that release the GIL, so threads use the cores at once. BLAS stays
    pinned to one thread for the whole section (the limit is process-wide). Every
    batch is computed exactly as in a worker process, so results are the same.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with _limit_blas(), ThreadPoolExecutor(max_workers=n_workers) as pool:
        todo = {pool.submit(_run_batch, job, reps, seeds, pin=False)
                for reps, seeds in batches}
        try:
            while todo:
                done, todo = wait(todo, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in todo:
                fut.cancel()  # queued batches; running ones finish (a fraction of a second)


# --- the public engine ---------------------------------------------------------------

def _resolve_method(method: str | Callable[..., Any], spec: ModelSpec,
                    design: Design) -> str:
    if callable(method):
        return "custom"
    if method not in METHODS:
        raise ModelSpecError(f"method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method in ("auto", "fast"):
        ok = False
        if design.family == "gaussian" and spec.has_random:
            try:
                from ..models.lmm import batch_fit as fast

                ok = bool(fast.qualifies(spec))
            except ImportError:
                ok = False
        if method == "fast" and not ok:
            raise ModelSpecError(
                "method='fast' needs a gaussian design and a random-intercepts-only formula "
                "with one grouping factor or two nested ones, e.g. '(1 | therapist/patient)'"
            )
        if ok:
            return "fast"
        return "mixed" if spec.has_random else "ols"
    return method


def _truth(design: Design, spec: ModelSpec, method: str, fit_kwargs: Mapping[str, Any],
           ss: np.random.SeedSequence, test: str
           ) -> tuple[float, bool, tuple[str, ...], SimArrays]:
    """Validate the formula on one replicate; return (truth, exact, x_names, replicate)."""
    sa = simulate_arrays(design, ss)
    frame = spec.build(to_frame(sa, design))
    x_names = frame.x_names
    if test not in x_names:
        raise ModelSpecError(
            f"test {test!r} is not a coefficient of {spec.formula!r}; coefficients: "
            f"{', '.join(x_names)}"
        )
    logit_fit = (method in ("bayes", "mixed")
                 and str(fit_kwargs.get("family", "")) == "binomial")
    if design.family == "binomial" and not logit_fit:
        return math.nan, False, x_names, sa
    eta = sa.eta[sa.observed]
    coef, *_ = np.linalg.lstsq(frame.X, eta, rcond=None)
    resid = eta - frame.X @ coef
    exact = bool(np.sqrt(np.mean(resid**2)) < 1e-8 * max(1.0, float(np.std(eta))))
    value = float(coef[x_names.index(test)])
    return (0.0 if abs(value) < 1e-12 else value), exact, x_names, sa


def _stacked_cap(design: Design, spec: ModelSpec, x_names: tuple[str, ...],
                 sa: SimArrays) -> int | None:
    """Replicates per batch for the stacked fast path, or None when it does not apply.

    The stacked path (one :func:`batch_arrays` call and one batched fit per batch) needs
    a fixed layout and a formula of plain products of simulated columns. Its batches
    hold at most one working-memory chunk of :func:`fast.chunk_size` for the layout of
    the first replicate (457 replicates on design R1), so each batch is one vectorised
    fit, per-batch costs are spread over many replicates and memory stays bounded.
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
    return fast.chunk_size(int(sa.therapist.size), len(x_names), int(sizes.size), n_outer,
                           int(sizes.max()))


def _default_batch_size(method: str, n_sims: int, stacked_cap: int | None = None) -> int:
    """Replicates per batch: from the method, ``n_sims`` and the layout, never ``n_jobs``.

    Replicate ``i`` always uses seed ``i`` and its fit does not depend on the other
    replicates of its batch, so batch boundaries affect speed, progress and checkpoint
    granularity only, not results.
    """
    if method == "fast" and stacked_cap is not None:
        # as few batches as memory allows, but a multiple of 4 of them (at least 4 when
        # each still holds _MIN_STACKED replicates) so that 2 or 4 workers share the
        # batches evenly; sizes as equal as possible
        n_batches = math.ceil(n_sims / max(1, stacked_cap))
        if n_sims >= 4 * _MIN_STACKED:
            n_batches = 4 * math.ceil(n_batches / 4)
        return max(1, math.ceil(n_sims / n_batches))
    cap = 50 if method == "fast" else 10
    return max(1, min(cap, math.ceil(n_sims / 20)))


def power(
    design: Design,
    formula: str,
    *,
    test: str,
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
    _max_batches: int | None = None,
) -> PowerResult:
    """Estimate the power to detect one coefficient by simulating the planned trial.

    Parameters
    ----------
    design : Design
        The planned trial.
    formula : str
        The analysis formula, fitted to every simulated data set.
    test : str
        The coefficient to test, by its formulaic name (``"alliance:autonomy"``,
        ``"arm"``, ``"C(arm)[T.1]"``).
    n_sims : int, default 1000
        Replicates.
    alpha : float, default 0.05
        Two-sided level of the Wald/t test (Satterthwaite df for mixed models).
    method : {"auto", "fast", "mixed", "gee", "ols", "bayes"} or callable
        ``"auto"`` uses the batched REML engine when the formula qualifies (gaussian,
        random intercepts, one or two nested factors), else ``fit_mixed`` (random
        terms) or ``fit_ols``. For a binomial design whose formula models the counts
        (``"attended ~ ..."`` or ``"completed ~ ..."``), ``"auto"`` and ``"mixed"`` fit
        the binomial GLMM (``fit_mixed(family="binomial", trials=<denominator>)``,
        Laplace, Wald z) to every replicate; bias, RMSE and coverage then refer to the
        true conditional (subject-specific) coefficient. A callable
        ``f(formula, data, **fit_kwargs)`` returning a fit with ``params``,
        ``cov_params()`` and ``contrast_df(L)`` is used as is.
    n_jobs : int, default -1
        Local workers; -1 uses every core, -2 all but one (joblib's convention). The
        first batch (one per worker on the stacked fast path) runs in this process; the
        rest runs in loky worker processes when it looks longer than a few seconds,
        otherwise here (in ``n_jobs`` threads on the stacked fast path, whose numpy
        calls release the GIL). Worker processes, once started, stay alive for a few
        idle minutes (joblib's reusable pool): a run with the same ``n_jobs`` in that
        window sends every batch to them at once, however short it is (interactive
        design iteration after a first long run).
    backend : "loky", "dask" or distributed.Client
        ``"dask"`` uses the current Dask client, or starts a process-based
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
        Replicates per task (default from ``method`` and ``n_sims`` only, so results do
        not depend on ``n_jobs``).
    fit_kwargs : mapping, optional
        Extra keyword arguments of the fitting function.
    bayes_kwargs : mapping, optional
        Keyword arguments of ``fit_bayes`` for ``method="bayes"`` (draws, chains, ...).
    rule : {"interval", "pd"}, default "interval"
        Bayesian assurance: the ``1 - alpha`` interval excludes ``[-rope, rope]``, or
        the probability of direction reaches ``threshold``.
    threshold, rope : float
        See ``rule``.

    Returns
    -------
    PowerResult

    Raises
    ------
    ModelSpecError
        Unknown method or backend, or ``test`` is not a coefficient of the formula.
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
    """
    t0 = time.perf_counter()
    if not isinstance(design, Design):
        raise DesignError(f"design must be an alliance_models.Design, got {type(design).__name__}")
    if isinstance(n_sims, bool) or not isinstance(n_sims, int) or n_sims < 1:
        raise ModelSpecError(f"n_sims must be a positive integer, got {n_sims!r}")
    if not 0 < alpha < 1:
        raise ModelSpecError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        raise ModelSpecError(
            f"n_jobs must be a positive number of worker processes, or -1 for every core "
            f"(-2 all but one, ...); got {n_jobs!r}"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int | np.integer) or batch_size < 1):
        raise ModelSpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_jobs = int(n_jobs)
    if rule not in ("interval", "pd"):
        raise ModelSpecError(f"rule {rule!r} is unknown; allowed: 'interval', 'pd'")
    spec = parse_formula(formula)
    resolved = _resolve_method(method, spec, design)
    kwargs = dict(fit_kwargs or {})
    if resolved == "bayes":
        kwargs.update(bayes_kwargs or {})
    if resolved in ("bayes", "gee") or (
            resolved == "mixed" and design.family == "binomial"
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
    truth, exact, x_names, first = _truth(design, spec, resolved, kwargs, child(root, 0),
                                          test)
    stacked = _stacked_cap(design, spec, x_names, first) if resolved == "fast" else None
    job = _Job(
        design=design, formula=formula, test=test, test_index=x_names.index(test),
        x_names=x_names, method=resolved, alpha=float(alpha), fit_kwargs=kwargs,
        bayes_rule=rule, threshold=float(threshold), rope=float(rope),
        fitter=method if callable(method) else None, threads_ok=stacked is not None,
    )
    bs = batch_size or _default_batch_size(resolved, n_sims, stacked)
    fp = _fingerprint(job, root)
    ck_path = Path(checkpoint) if checkpoint is not None else None
    if ck_path is not None and ck_path.suffix not in (".parquet", ".csv"):
        raise DesignError(f"checkpoint {str(ck_path)!r} must end in .parquet or .csv")
    done = _read_checkpoint(ck_path, fp) if ck_path is not None else pd.DataFrame()
    done = done[done["rep"] < n_sims] if len(done) else done
    have = set(done["rep"].astype(int)) if len(done) else set()
    batches: list[tuple[list[int], Sequence[np.random.SeedSequence]]] = []
    for start in range(0, n_sims, bs):
        reps = [r for r in range(start, min(start + bs, n_sims)) if r not in have]
        if reps:
            batches.append((reps, SeedBlock(root, reps)))

    parts: list[pd.DataFrame] = [done.drop(columns="fingerprint")] if len(done) else []
    interrupted = False
    n_done_batches = 0
    stream = _execute(job, batches, n_jobs, backend)
    try:
        for part in _with_progress(stream, len(batches), progress, desc=f"power {test}"):
            parts.append(part)
            n_done_batches += 1
            if ck_path is not None:
                all_rows = pd.concat(parts, ignore_index=True).assign(fingerprint=fp)
                _write_checkpoint(ck_path, all_rows)
            if _max_batches is not None and n_done_batches >= _max_batches:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = len(parts) == 0 or n_done_batches < len(batches)
        if ck_path is not None and n_done_batches:
            # Ctrl-C may have cut the last checkpoint write short: save what the partial
            # result holds, so that file and result agree
            _write_checkpoint(ck_path, pd.concat(parts, ignore_index=True).assign(
                fingerprint=fp))
    finally:
        with contextlib.suppress(Exception):
            stream.close()  # type: ignore[attr-defined]
    reps_df = (pd.concat(parts, ignore_index=True) if parts else
               pd.DataFrame(columns=list(REPLICATE_COLUMNS)))
    reps_df = reps_df.sort_values("rep", kind="stable").reset_index(drop=True)
    for c in ("reject", "converged", "singular", "failed"):
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
    summ = _summarise(reps_df, truth=truth, alpha=alpha)
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
        **summ,
    )


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


# --- curves and sample size ----------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PowerCurve:
    """Power over a range of one design quantity.

    Attributes
    ----------
    vary : str
        The :class:`Design` field varied.
    values : tuple
        Its values, in the order run.
    results : tuple of PowerResult
        One result per value (same seed: common random numbers).
    elapsed : float
        Seconds of wall time.
    """

    vary: str
    values: tuple[Any, ...]
    results: tuple[PowerResult, ...]
    elapsed: float

    def to_frame(self) -> pd.DataFrame:
        """One row per value: power, its CI and the diagnosands."""
        rows = [r.to_frame().assign(**{self.vary: [v]}) for v, r in
                zip(self.values, self.results, strict=True)]
        df = pd.concat(rows, ignore_index=True)
        return df[[self.vary, *[c for c in df.columns if c != self.vary]]]

    def summary(self) -> str:
        """Printable table of the curve."""
        r0 = self.results[0]
        head = (f"Power curve for {r0.test!r} over {self.vary} (engine {r0.method}, "
                f"{r0.n_sims} replicates per point, alpha {r0.alpha:g})\n"
                f"  formula: {r0.formula}\n")
        lines = [f"  {self.vary:>24}  power   95% CI            bias     coverage  "
                 "non-conv  singular"]
        for v, r in zip(self.values, self.results, strict=True):
            lines.append(
                f"  {v!s:>24}  {r.power:.3f}  [{r.ci[0]:.3f}, {r.ci[1]:.3f}]  "
                f"{_fmt(r.bias, 4):>7}  {_fmt(r.coverage):>8}  {r.nonconvergence_rate:8.3f}"
                f"  {r.singular_rate:8.3f}")
        return head + "\n".join(lines) + f"\n  elapsed {self.elapsed:.1f} s"

    def plot(self, ax: Any = None, *, target: float | None = 0.8) -> Any:
        """Draw power against the varied quantity with its 95% Wilson band.

        Uses :func:`alliance_models.plots.plot_power_curve`.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw.
        target : float or None, default 0.8
            Reference line.

        Returns
        -------
        matplotlib Axes
        """
        from ..plots import plot_power_curve

        r0 = self.results[0]
        ax = plot_power_curve(
            np.asarray(self.values, dtype=float),
            [r.power for r in self.results],
            [r.ci[0] for r in self.results],
            [r.ci[1] for r in self.results],
            ax=ax,
            target=target,
            xlabel=self.vary.replace("_", " "),
            title=f"{r0.test}: {r0.n_sims} simulated trials per point ({r0.method} engine)",
        )
        if r0.method == "bayes":
            ax.set_ylabel("assurance")
        return ax


def _check_vary_name(design: Design, name: str) -> None:
    from dataclasses import fields as dc_fields

    names = [f.name for f in dc_fields(design)]
    if name not in names:
        raise DesignError(f"cannot vary {name!r}: not a Design field; fields: {', '.join(names)}")


def power_curve(
    design: Design,
    formula: str,
    *,
    test: str,
    vary: Mapping[str, Sequence[Any]],
    seed: RNGLike = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> PowerCurve:
    """Power over a range of one design quantity (e.g. the number of therapists).

    Parameters
    ----------
    design : Design
        The base design.
    formula, test : str
        As in :func:`power`.
    vary : mapping with one key
        ``{"therapists": [20, 30, 40]}``: a :class:`Design` field and its values.
    seed : int or None
        The same root seed is used at every value (common random numbers), which makes
        the curve smoother than independent runs.
    checkpoint : path, optional
        One checkpoint per value, named ``<stem>-<field>=<value><suffix>``.
    **kwargs
        Passed to :func:`power` (``n_sims``, ``method``, ``n_jobs``, ``backend`` ...).

    Returns
    -------
    PowerCurve

    Examples
    --------
    >>> import alliance_models as am
    >>> d = am.Design(therapists=10, patients_per_therapist=3, sessions=2,
    ...               moderators={}, effects={"alliance": 0.3})
    >>> pc = am.power_curve(d, "adherence ~ alliance", test="alliance",
    ...                     vary={"therapists": [6, 12]}, n_sims=10, method="ols",
    ...                     n_jobs=1, seed=2)
    >>> pc.to_frame()["therapists"].tolist()
    [6, 12]
    """
    t0 = time.perf_counter()
    if not isinstance(vary, Mapping) or len(vary) != 1:
        raise DesignError(
            f"vary must be a mapping with one design field, e.g. {{'therapists': [20, 30]}}; "
            f"got {vary!r}"
        )
    (name, values), = vary.items()
    _check_vary_name(design, name)
    values = tuple(values)
    if not values:
        raise DesignError(f"vary[{name!r}] holds no values")
    seed = seed_sequence(seed)  # one root for every evaluation (common random numbers)
    # every value must give a valid design before any simulation runs
    designs = [design.replace(**{name: v}) for v in values]
    results = []
    for v, d in zip(values, designs, strict=True):
        ck = None
        if checkpoint is not None:
            p = Path(checkpoint)
            ck = p.with_name(f"{p.stem}-{name}={v}{p.suffix}")
        results.append(power(d, formula, test=test, seed=seed, checkpoint=ck, **kwargs))
    return PowerCurve(vary=name, values=values, results=tuple(results),
                      elapsed=time.perf_counter() - t0)


@dataclass(frozen=True, eq=False)
class SampleSizeResult:
    """The smallest design size that reaches a target power.

    Attributes
    ----------
    vary : str
        The field searched (``"therapists"``, ``"patients_per_therapist"``, ...).
    target : float
        Target power.
    value : int or None
        Smallest evaluated value whose Monte Carlo power reached the target (None when
        even ``hi`` fell short).
    power, ci : float, (float, float)
        Power at ``value`` with its 95% Wilson CI.
    smooth_value, smooth_ci : float, (float, float)
        The value where a logistic fit of power on log(size), over the evaluations
        within a factor of 2 of ``value``, crosses the target, with a 95% delta-method
        interval (its variance multiplied by the number of evaluations used, a
        conservative allowance for the correlation that common random numbers induce;
        lack of fit is ignored). NaN when the fit is not possible.
    evaluations : DataFrame
        Every evaluation in order: value, power, CI, replicates.
    results : tuple of PowerResult
        The underlying runs.
    elapsed : float
    """

    vary: str
    target: float
    value: int | None
    power: float
    ci: tuple[float, float]
    smooth_value: float
    smooth_ci: tuple[float, float]
    evaluations: pd.DataFrame
    results: tuple[PowerResult, ...]
    elapsed: float

    def to_frame(self) -> pd.DataFrame:
        """Return the evaluations made (one row per value tried)."""
        return self.evaluations.copy()

    def summary(self) -> str:
        """Printable report of the search."""
        if self.value is None:
            head = (f"target power {self.target:g} not reached for {self.vary} up to "
                    f"{int(self.evaluations[self.vary].max())}")
        else:
            head = (f"smallest {self.vary} reaching power {self.target:g}: {self.value} "
                    f"(power {self.power:.3f}, 95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}])")
        smooth = (f"logistic fit over the evaluations: {self.vary} = {_fmt(self.smooth_value, 1)}"
                  f" (95% CI {_fmt(self.smooth_ci[0], 1)} to {_fmt(self.smooth_ci[1], 1)})")
        ev = "\n".join(f"  {int(r[self.vary]):>6}  power {r['power']:.3f}  "
                       f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                       for _, r in self.evaluations.iterrows())
        return f"{head}\n{smooth}\nevaluations ({len(self.evaluations)}):\n{ev}\n" \
               f"elapsed {self.elapsed:.1f} s"


def _logistic_crossing(x: np.ndarray, k: np.ndarray, n: np.ndarray,
                       target: float) -> tuple[float, tuple[float, float]]:
    """Fit logit(power) = a + b log(x) by IRLS and invert at ``target`` (delta-method CI)."""
    nan2 = (math.nan, math.nan)
    if len(np.unique(x)) < 2:
        return math.nan, nan2
    Xd = np.column_stack([np.ones(len(x)), np.log(x)])
    beta = np.zeros(2)
    for _ in range(50):
        p = special.expit(Xd @ beta)
        w = n * p * (1 - p) + 1e-12
        z = Xd @ beta + (k - n * p) / w
        new = np.linalg.solve(Xd.T @ (w[:, None] * Xd), Xd.T @ (w * z))
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
    p = special.expit(Xd @ beta)
    info = Xd.T @ ((n * p * (1 - p))[:, None] * Xd)
    a, b = beta
    if not np.all(np.isfinite(beta)) or b <= 0:
        return math.nan, nan2
    try:
        # evaluations share their random numbers, so they are positively correlated;
        # scaling the independent-binomial covariance by the number of evaluations is
        # the conservative bound (as if all of them carried one evaluation's information)
        cov = np.linalg.inv(info) * len(x)
    except np.linalg.LinAlgError:
        return math.nan, nan2
    lt = float(special.logit(target))
    logx = (lt - a) / b
    grad = np.array([-1 / b, -(lt - a) / b**2])
    se = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    return math.exp(logx), (math.exp(logx - 1.96 * se), math.exp(logx + 1.96 * se))


def sample_size(
    design: Design,
    formula: str,
    *,
    test: str,
    target: float = 0.8,
    vary: str = "patients_per_therapist",
    lo: int = 2,
    hi: int = 50,
    step: int = 1,
    seed: RNGLike = None,
    **kwargs: Any,
) -> SampleSizeResult:
    """Search for the smallest design size that reaches ``target`` power.

    Bisection on the integer grid ``lo, lo + step, ..., hi`` with common random numbers
    (the same seed at every evaluation, which keeps the Monte Carlo power estimate
    nearly monotone in the size), so about ``log2((hi - lo) / step) + 2`` power runs
    are made instead of a full grid. A logistic fit of power on log(size) over all
    evaluations gives a smoothed crossing point with a confidence interval.

    Parameters
    ----------
    design : Design
        Base design.
    formula, test : str
        As in :func:`power`.
    target : float, default 0.8
        Target power.
    vary : str, default "patients_per_therapist"
        An integer :class:`Design` field (``"therapists"``, ``"sessions"`` ...).
    lo, hi, step : int
        Search range and grid step (use ``step=2`` for even therapist totals).
    seed : int or None
        Root seed shared by all evaluations.
    **kwargs
        Passed to :func:`power` (``n_sims``, ``method``, ``n_jobs`` ...).

    Returns
    -------
    SampleSizeResult

    Examples
    --------
    >>> import alliance_models as am
    >>> d = am.Design(therapists=10, patients_per_therapist=3, sessions=2,
    ...               moderators={}, effects={"alliance": 0.4})
    >>> ss = am.sample_size(d, "adherence ~ alliance", test="alliance", target=0.8,
    ...                     vary="therapists", lo=4, hi=40, n_sims=30, method="ols",
    ...                     n_jobs=1, seed=3)
    >>> len(ss.evaluations) <= 8
    True
    """
    t0 = time.perf_counter()
    _check_vary_name(design, vary)
    if not 0 < target < 1:
        raise DesignError(f"target power must be in (0, 1), got {target!r}")
    if not (isinstance(lo, int) and isinstance(hi, int) and isinstance(step, int)) or (
            step < 1 or lo < 1 or hi < lo):
        raise DesignError(f"need integers 1 <= lo <= hi and step >= 1; got lo={lo!r}, "
                          f"hi={hi!r}, step={step!r}")
    if (hi - lo) % step:
        hi = lo + ((hi - lo) // step + 1) * step
    for v in (lo, hi):  # both ends must be valid designs before any simulation runs
        design.replace(**{vary: v})
    seed = seed_sequence(seed)  # one root for every evaluation (common random numbers)
    cache: dict[int, PowerResult] = {}
    order: list[int] = []

    def run(v: int) -> PowerResult:
        if v not in cache:
            cache[v] = power(design.replace(**{vary: v}), formula, test=test, seed=seed,
                             **kwargs)
            order.append(v)
        return cache[v]

    found: int | None
    if run(hi).power < target:
        found = None
        warnings.warn(
            f"target power {target:g} not reached at {vary}={hi} (power "
            f"{cache[hi].power:.3f}); raise hi",
            AllianceModelsWarning,
            skip_file_prefixes=(_PACKAGE_DIR,),
        )
    elif run(lo).power >= target:
        found = lo
    else:
        a, b = lo, hi  # power(a) < target <= power(b)
        while b - a > step:
            mid = a + ((b - a) // step // 2) * step
            if run(mid).power >= target:
                b = mid
            else:
                a = mid
        found = b
    ev = pd.DataFrame({
        vary: order,
        "power": [cache[v].power for v in order],
        "ci_low": [cache[v].ci[0] for v in order],
        "ci_high": [cache[v].ci[1] for v in order],
        "n_completed": [cache[v].n_completed for v in order],
    })
    k = np.array([int(cache[v].replicates["reject"].sum()) for v in order], float)
    nn = ev["n_completed"].to_numpy(float)
    xs = ev[vary].to_numpy(float)
    # a two-parameter curve fits only locally: use evaluations within a factor of 2 of
    # the bisection answer (all of them when the target was not reached)
    near = (xs >= found / 2) & (xs <= found * 2) if found is not None else np.ones(len(xs),
                                                                                  bool)
    sv, sci = _logistic_crossing(xs[near], k[near], nn[near], target)
    res_found = cache[found] if found is not None else None
    return SampleSizeResult(
        vary=vary, target=target, value=found,
        power=res_found.power if res_found else math.nan,
        ci=res_found.ci if res_found else (math.nan, math.nan),
        smooth_value=sv, smooth_ci=sci, evaluations=ev,
        results=tuple(cache[v] for v in order), elapsed=time.perf_counter() - t0,
    )


# --- design files --------------------------------------------------------------------

def _design_from_toml(table: Mapping[str, Any]) -> Design:
    kw: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, list) and k in ("therapists", "alliance_components", "dropout",
                                          "age_distribution", "sessions",
                                          "patients_per_therapist"):
            v = tuple(v)
        kw[k] = v
    try:
        return Design(**kw)
    except TypeError as err:
        from dataclasses import fields as dc_fields

        names = ", ".join(f.name for f in dc_fields(Design))
        raise DesignError(f"[design] has an unknown key ({err}); allowed keys: {names}") from None


def run_power_file(path: str | os.PathLike[str], *,
                   out: str | os.PathLike[str] | None = None) -> PowerResult | PowerCurve:
    """Run the power analysis described in a TOML design file.

    The file has a ``[design]`` table (the :class:`Design` fields; ``effects`` and
    ``moderators`` as sub-tables, tuples as arrays), an ``[analysis]`` table (``formula``,
    ``test``, and optionally ``n_sims``, ``method``, ``seed``, ``alpha``, ``n_jobs``,
    ``backend``, ``batch_size``, ``checkpoint``) and an optional ``[curve]`` table with
    ``vary = { therapists = [20, 30, 40] }``.

    Parameters
    ----------
    path : path
        The TOML file.
    out : path, optional
        Where to save the curve plot (PNG/PDF/SVG) when the file has a ``[curve]``.

    Returns
    -------
    PowerResult or PowerCurve

    Raises
    ------
    DesignError
        Missing tables or keys, unknown keys, an invalid design.

    Examples
    --------
    >>> from alliance_models.power.engine import run_power_file
    >>> res = run_power_file("examples/design.toml")  # doctest: +SKIP
    >>> print(res.summary())  # doctest: +SKIP
    """
    import tomllib

    p = Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise DesignError(f"design file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise DesignError(f"design file {str(p)!r} is not valid TOML: {err}") from None
    for section in ("design", "analysis"):
        if section not in doc:
            raise DesignError(f"design file {str(p)!r} has no [{section}] table")
    design = _design_from_toml(doc["design"])
    ana = dict(doc["analysis"])
    missing = [k for k in ("formula", "test") if k not in ana]
    if missing:
        raise DesignError(f"[analysis] in {str(p)!r} needs {', '.join(missing)}")
    allowed = {"formula", "test", "n_sims", "method", "seed", "alpha", "n_jobs", "backend",
               "batch_size", "checkpoint", "progress", "fit_kwargs", "rule", "threshold",
               "rope", "bayes_kwargs"}
    unknown = sorted(set(ana) - allowed)
    if unknown:
        raise DesignError(f"[analysis] has unknown keys {unknown}; allowed: {sorted(allowed)}")
    formula, test = ana.pop("formula"), ana.pop("test")
    if "checkpoint" in ana and not Path(ana["checkpoint"]).is_absolute():
        ana["checkpoint"] = str(p.parent / ana["checkpoint"])
    if "curve" in doc:
        vary = doc["curve"].get("vary")
        if not isinstance(vary, Mapping):
            raise DesignError(
                "[curve] needs vary = { therapists = [20, 30, 40] } (one design field)")
        curve = power_curve(design, formula, test=test, vary=vary, **ana)
        if out is not None:
            import matplotlib.pyplot as plt

            ax = curve.plot()
            ax.figure.savefig(out, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
        return curve
    return power(design, formula, test=test, **ana)

