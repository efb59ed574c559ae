"""Searches over designs: power curves and the smallest sample size for a target power.

Every evaluation uses the same root seed (common random numbers), which makes a curve
smoother than independent runs and keeps the Monte Carlo power nearly monotone in the
size during a bisection.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from .._random import RNGLike, seed_sequence
from ..errors import AllianceModelsWarning, DesignError
from .design import Design
from .results import PowerCurve, PowerResult, SampleSizeResult
from .run import power

__all__ = ["power_curve", "sample_size"]

#: warnings point at the caller's line, outside alliance_models.planning
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


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
