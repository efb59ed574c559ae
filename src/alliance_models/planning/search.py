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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import special

from .._random import RNGLike, seed_sequence
from ..errors import AllianceModelsWarning, DesignError, ModelSpecError
from .design import Design
from .multitest import MultiPowerResult, check_tests
from .results import (
    JointSampleSizeResult,
    PowerCurve,
    PowerResult,
    SampleSizeResult,
    ScenarioCurve,
)
from .run import power
from .scenarios import resolve_scenarios

__all__ = ["power_curve", "sample_size"]

#: warnings point at the caller's line, outside alliance_models.planning
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _point_checkpoint(checkpoint: str | os.PathLike[str] | None, **point: Any) -> Path | None:
    """Return the checkpoint file of one point of a search, ``<stem>-<k>=<v>...<suffix>``.

    Every power run of a curve or a sample-size search gets a file of its own next to
    ``checkpoint``, so a rerun of the same search resumes each run from its own file.

    Examples
    --------
    >>> _point_checkpoint("run.parquet", therapists=20, patients_per_therapist=8).name
    'run-therapists=20-patients_per_therapist=8.parquet'
    >>> _point_checkpoint(None, therapists=20) is None
    True
    """
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    tag = "-".join(f"{k}={v}" for k, v in point.items())
    return p.with_name(f"{p.stem}-{tag}{p.suffix}")


def _check_vary_name(design: Design, name: str) -> None:
    from dataclasses import fields as dc_fields

    names = [f.name for f in dc_fields(design)]
    if name not in names:
        raise DesignError(f"cannot vary {name!r}: not a Design field; fields: {', '.join(names)}")

def power_curve(
    design: Design,
    formula: str,
    *,
    test: str | Sequence[str],
    vary: Mapping[str, Sequence[Any]],
    seed: RNGLike = None,
    checkpoint: str | os.PathLike[str] | None = None,
    scenarios: Any = None,
    **kwargs: Any,
) -> PowerCurve | ScenarioCurve:
    """Power over a range of one design quantity (e.g. the number of therapists).

    Parameters
    ----------
    design : Design
        The base design.
    formula : str
        As in :func:`power`.
    test : str or list of str
        As in :func:`power`; with a list (and ``correction=...``) every point is a
        ``MultiPowerResult`` and the curve shows each test and the all / any power.
    vary : mapping with one key
        ``{"therapists": [20, 30, 40]}``: a :class:`Design` field and its values.
    seed : int or None
        The same root seed is used at every value (common random numbers), which makes
        the curve smoother than independent runs.
    checkpoint : path, optional
        One checkpoint per value, named ``<stem>-<field>=<value><suffix>`` (with
        ``scenarios``: ``<stem>-scenario=<name>-<field>=<value><suffix>``).
    scenarios : True, preset name, Scenario, sequence or mapping, optional
        One curve per robustness scenario, as ``scenarios`` of :func:`power` (the
        unperturbed design first, as ``"baseline"``); returns a
        :class:`~alliance_models.ScenarioCurve` whose plot draws a line per scenario.
        Every point of every curve uses the same seed.
    **kwargs
        Passed to :func:`power` (``n_sims``, ``method``, ``n_jobs``, ``backend``,
        ``scenario`` ...).

    Returns
    -------
    PowerCurve, or ScenarioCurve with ``scenarios``

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
    if scenarios is not None and scenarios is not False:
        if kwargs.get("scenario") is not None:
            raise DesignError("give scenario (one) or scenarios (side by side), not both")
        if not isinstance(test, str):
            raise ModelSpecError(
                f"scenario curves side by side compare one test (a string), got "
                f"test={test!r}; for several tests run power_curve(..., scenario=...) "
                "once per scenario")
        resolved = resolve_scenarios(scenarios)
        for sc in resolved.values():  # every scenario must fit every design first
            for d in designs:
                sc.check(d)
        curves: dict[str, PowerCurve] = {}
        for sname, sc in resolved.items():
            ck = _point_checkpoint(checkpoint, scenario=sname)
            curves[sname] = cast(PowerCurve, power_curve(
                design, formula, test=test, vary=vary, seed=seed, checkpoint=ck,
                scenario=None if sc.is_null else sc,
                **{k: v for k, v in kwargs.items() if k != "scenario"}))
        return ScenarioCurve(scenarios=resolved, curves=curves,
                             elapsed=time.perf_counter() - t0)
    results = []
    for v, d in zip(values, designs, strict=True):
        ck = _point_checkpoint(checkpoint, **{name: v})
        # without scenarios= (not a keyword here), power() returns a PowerResult
        results.append(cast(PowerResult, power(d, formula, test=test, seed=seed,
                                               checkpoint=ck, **kwargs)))
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

    def exp(v: float) -> float:  # an interval that runs off the scale is open-ended
        return math.exp(v) if v < 700.0 else math.inf

    if not (math.isfinite(logx) and math.isfinite(se)):
        return math.nan, nan2
    return exp(logx), (exp(logx - 1.96 * se), exp(logx + 1.96 * se))

def sample_size(
    design: Design,
    formula: str,
    *,
    test: str | Sequence[str],
    target: float = 0.8,
    target_of: str = "all",
    vary: str | Sequence[str] = "patients_per_therapist",
    lo: int | Mapping[str, int] | None = None,
    hi: int | Mapping[str, int] | None = None,
    step: int | Mapping[str, int] | None = None,
    seed: RNGLike = None,
    cost: Mapping[str, float] | None = None,
    budget: float | None = None,
    **kwargs: Any,
) -> SampleSizeResult | JointSampleSizeResult:
    """Search for the smallest design size, or the cheapest design, that reaches ``target``.

    With one field (``vary="therapists"``): bisection on the integer grid
    ``lo, lo + step, ..., hi`` with common random numbers (the same seed at every
    evaluation, which keeps the Monte Carlo power estimate nearly monotone in the
    size), so about ``log2((hi - lo) / step) + 2`` power runs are made instead of a full
    grid. A logistic fit of power on log(size) over all evaluations gives a smoothed
    crossing point with a confidence interval.

    With both ``vary=("therapists", "patients_per_therapist")`` and a ``cost`` per
    therapist and per patient: the pair of minimal total cost
    ``cost["therapist"] * therapists + cost["patient"] * therapists * patients_per_therapist``
    whose power reaches ``target`` (see Notes).

    Parameters
    ----------
    design : Design
        Base design.
    formula : str
        As in :func:`power`.
    test : str or list of str
        As in :func:`power` (a list is tested together, with ``correction=...``).
    target : float, default 0.8
        Target power.
    target_of : str, default "all"
        With a list of tests, which power must reach ``target``: ``"all"`` (every test
        rejects in the same trial, after the correction), ``"any"`` (at least one does)
        or the name of one of the tests (its power after the correction); in the one-field
        and the joint search. Ignored for a single test (any of the three names it).
    vary : str or (str, str), default "patients_per_therapist"
        An integer :class:`Design` field (``"therapists"``, ``"sessions"`` ...), or the
        pair ``("therapists", "patients_per_therapist")`` (either order) for the joint
        search.
    lo, hi, step : int, or mappings of field to int for the joint search
        Search range and grid step; one field: defaults 2, 50 and 1 (use ``step=2`` for
        even therapist totals). Joint search: ``lo`` and ``hi`` are required, e.g.
        ``lo={"therapists": 10, "patients_per_therapist": 2}``; ``step`` defaults to 2
        therapists under therapist randomisation (equal arms; ``lo`` and ``step`` of
        therapists must then be even) and 1 otherwise.
    seed : int or None
        Root seed shared by all evaluations.
    cost : mapping, joint search only
        ``{"therapist": c_t, "patient": c_p}``: non-negative costs per therapist and per
        patient (at least one positive).
    budget : float, optional, joint search only
        The most a design may cost; dearer pairs are not evaluated.
    **kwargs
        Passed to :func:`power` (``n_sims``, ``method``, ``n_jobs`` ...). A
        ``checkpoint`` path gives every evaluated size a file of its own,
        ``<stem>-<field>=<value><suffix>`` (joint search:
        ``<stem>-therapists=<t>-patients_per_therapist=<n><suffix>``), so a rerun of the
        same search resumes each power run.

    Returns
    -------
    SampleSizeResult or JointSampleSizeResult
        The latter for the joint search.

    Notes
    -----
    The joint search runs, for each caseload on its grid, the one-field bisection over
    therapists (common random numbers: every evaluation uses the same root seed, so
    every pair's power comes from the same replicates' seeds), and keeps the cheapest
    pair that reaches the target. Two things save power runs without changing the
    answer: a caseload's bisection only looks at therapist counts whose pair costs no
    more than the cheapest pair found so far (or ``budget``), and it is skipped when
    none is left; and when :func:`~alliance_models.planning.analytic.design_power` has
    a closed form for the design and test (a balanced therapist-randomised trial
    testing ``arm``), it orders the caseloads by their closed-form cost and gives each
    bisection its first guess. Every reported power is a Monte Carlo estimate; the
    closed form only decides where to look. The search assumes that power rises with
    the number of therapists at a fixed caseload (as the one-field bisection does).
    Among pairs of equal cost the one with the higher power wins, then fewer
    therapists.

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

    The cheapest therapist-randomised trial for a standardised arm effect of 0.5:

    >>> d = am.Design(therapists=20, patients_per_therapist=5, sessions=1,
    ...               randomisation="therapist", icc_therapist=0.05, icc_patient=0.0,
    ...               moderators={}, effects={"arm": 0.5})
    >>> best = am.sample_size(d, "adherence ~ arm", test="arm",
    ...                       vary=("therapists", "patients_per_therapist"),
    ...                       cost={"therapist": 2000.0, "patient": 300.0},
    ...                       lo={"therapists": 4, "patients_per_therapist": 2},
    ...                       hi={"therapists": 60, "patients_per_therapist": 8},
    ...                       n_sims=40, method="ols", fit_kwargs={"hc": None},
    ...                       n_jobs=1, seed=3)
    >>> best.cost == 2000.0 * best.therapists + 300.0 * best.therapists * (
    ...     best.patients_per_therapist)
    True
    """
    t0 = time.perf_counter()
    if kwargs.get("scenarios") not in (None, False):
        raise DesignError("sample_size searches under one scenario at a time: give "
                          "scenario=am.Scenario.preset('pessimistic'), not scenarios=...")
    tests = (test,) if isinstance(test, str) else check_tests(test)
    if target_of not in ("all", "any", *tests):
        raise ModelSpecError(
            f"target_of {target_of!r} is unknown; allowed: 'all', 'any', "
            + ", ".join(repr(t) for t in tests))
    if not isinstance(vary, str):
        return _joint_sample_size(design, formula, test=test, target=target,
                                  target_of=target_of, vary=vary,
                                  lo=lo, hi=hi, step=step, seed=seed, cost=cost,
                                  budget=budget, t0=t0, **kwargs)
    if cost is not None or budget is not None:
        raise DesignError(
            "cost and budget apply to the joint search, vary=('therapists', "
            f"'patients_per_therapist'); got vary={vary!r}")
    lo = 2 if lo is None else lo
    hi = 50 if hi is None else hi
    step = 1 if step is None else step
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
    cache: dict[int, PowerResult | MultiPowerResult] = {}
    order: list[int] = []

    checkpoint = kwargs.pop("checkpoint", None)

    def run(v: int) -> PowerResult | MultiPowerResult:
        if v not in cache:
            cache[v] = cast(PowerResult, power(design.replace(**{vary: v}), formula,
                                               test=test, seed=seed,
                                               checkpoint=_point_checkpoint(checkpoint,
                                                                           **{vary: v}),
                                               **kwargs))
            order.append(v)
        return cache[v]

    def pw(v: int) -> float:
        return _target_power(run(v), target_of)[0]

    found = _smallest_reaching(lambda v: pw(v) >= target, lo, hi, step)
    if found is None:
        warnings.warn(
            f"target power {target:g} not reached at {vary}={hi} (power "
            f"{pw(hi):.3f}); raise hi",
            AllianceModelsWarning,
            skip_file_prefixes=(_PACKAGE_DIR,),
        )
    targets = [_target_power(cache[v], target_of) for v in order]
    ev = pd.DataFrame({
        vary: order,
        "power": [t[0] for t in targets],
        "ci_low": [t[1][0] for t in targets],
        "ci_high": [t[1][1] for t in targets],
        "n_completed": [cache[v].n_completed for v in order],
    })
    if not isinstance(test, str):  # every power of the family, beside the target's
        for of in (*tests, "all", "any"):
            ev[f"power[{of}]"] = [_target_power(cache[v], of)[0] for v in order]
    k = np.array([t[2] for t in targets], float)
    nn = ev["n_completed"].to_numpy(float)
    xs = ev[vary].to_numpy(float)
    # a two-parameter curve fits only locally: use evaluations within a factor of 2 of
    # the bisection answer (all of them when the target was not reached)
    near = (xs >= found / 2) & (xs <= found * 2) if found is not None else np.ones(len(xs),
                                                                                  bool)
    sv, sci = _logistic_crossing(xs[near], k[near], nn[near], target)
    res_found = _target_power(cache[found], target_of) if found is not None else None
    return SampleSizeResult(
        vary=vary, target=target, value=found,
        power=res_found[0] if res_found else math.nan,
        ci=res_found[1] if res_found else (math.nan, math.nan),
        smooth_value=sv, smooth_ci=sci, evaluations=ev,
        results=tuple(cache[v] for v in order),  # type: ignore[arg-type]
        elapsed=time.perf_counter() - t0,
        target_of=None if isinstance(test, str) else target_of,
    )


def _target_power(res: PowerResult | MultiPowerResult, of: str
                  ) -> tuple[float, tuple[float, float], int]:
    """Power, its Wilson CI and the rejecting replicates of what ``sample_size`` targets."""
    if isinstance(res, MultiPowerResult):
        k, _ = res.successes(of)
        p, ci = res.power_of(of)
        return p, ci, k
    return res.power, res.ci, int(res.replicates["reject"].sum())


def _smallest_reaching(reaches: Callable[[int], bool], lo: int, hi: int, step: int,
                       guess: int | None = None) -> int | None:
    """Smallest grid value ``lo + i * step <= hi`` for which ``reaches`` holds, or None.

    Assumes ``reaches`` is monotone (False below some value, True from there on).
    Without ``guess`` it asks ``hi``, then ``lo``, then bisects. With a ``guess``
    (snapped onto the grid) it asks there first, then gallops away from it (1, 2, 4 ...
    steps, down if the guess reaches, up if not) until the answer is bracketed, and
    bisects the bracket, so a good guess settles the search in a few evaluations.
    """
    below: int | None = None  # largest value known to fall short
    above: int | None = None  # smallest value known to reach
    if guess is not None:
        g = min(hi, max(lo, lo + round((guess - lo) / step) * step))
        jump = step
        if reaches(g):
            above = g
            while below is None and above > lo:
                probe = max(lo, above - jump)
                if reaches(probe):
                    above = probe
                else:
                    below = probe
                jump *= 2
            if below is None:
                return above  # lo reaches
        else:
            below = g
            while above is None and below < hi:
                probe = min(hi, below + jump)
                if reaches(probe):
                    above = probe
                else:
                    below = probe
                jump *= 2
            if above is None:
                return None  # hi falls short
    if above is None:
        if not reaches(hi):
            return None
        above = hi
    if below is None:
        if reaches(lo):
            return lo
        below = lo
    while above - below > step:  # reaches(below) is False, reaches(above) is True
        mid = below + ((above - below) // step // 2) * step
        if reaches(mid):
            above = mid
        else:
            below = mid
    return above


#: the fields a joint search varies, in the order results report them
_JOINT = ("therapists", "patients_per_therapist")
_COSTS = ("therapist", "patient")


def _joint_ranges(design: Design, vary: Sequence[str], lo: Any, hi: Any, step: Any
                  ) -> dict[str, tuple[int, int, int]]:
    """Check the joint search's fields and ranges; return field -> (lo, hi, step)."""
    names = tuple(vary) if isinstance(vary, Sequence) else ()
    if sorted(names) != sorted(_JOINT):
        raise DesignError(
            f"a joint search varies exactly the fields {_JOINT!r} (in either order), or "
            f"give one field as a string; got vary={vary!r}")
    default_step = {"therapists": 2 if design.randomisation == "therapist" else 1,
                    "patients_per_therapist": 1}
    out: dict[str, tuple[int, int, int]] = {}
    for arg, given in (("lo", lo), ("hi", hi), ("step", step)):
        if given is None and arg == "step":
            continue
        if not isinstance(given, Mapping):
            raise DesignError(
                f"{arg} must be a mapping of field to integer for a joint search, e.g. "
                f"{arg}={{'therapists': 10, 'patients_per_therapist': 4}}; got {given!r}")
        extra = sorted(set(given) - set(_JOINT))
        if extra:
            raise DesignError(f"{arg} names {extra[0]!r}, which the search does not vary; "
                              f"allowed: {', '.join(_JOINT)}")
        if arg != "step" and set(given) != set(_JOINT):
            missing = [f for f in _JOINT if f not in given]
            raise DesignError(f"{arg} must give both fields; missing {missing[0]!r}")
    for f in _JOINT:
        a, b = lo[f], hi[f]
        c = (step or {}).get(f, default_step[f])
        for arg, v in (("lo", a), ("hi", b), ("step", c)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise DesignError(f"{arg}[{f!r}] must be a positive integer, got {v!r}")
        if b < a:
            raise DesignError(f"hi[{f!r}] = {b} is below lo[{f!r}] = {a}")
        if (b - a) % c:
            b = a + ((b - a) // c + 1) * c
        out[f] = (int(a), int(b), int(c))
    if design.randomisation == "therapist":
        a, _, c = out["therapists"]
        if a % 2 or c % 2:
            raise DesignError(
                "therapist randomisation splits the therapists equally between the arms: "
                f"lo['therapists'] and step['therapists'] must be even, got lo={a}, step={c}")
    ppt = design.patients_per_therapist
    if isinstance(ppt, tuple) and not isinstance(ppt[0], str):
        raise DesignError(
            "patients_per_therapist is a per-therapist list; a joint search sets one "
            "caseload for every therapist (give an integer caseload)")
    return out


def _check_costs(cost: Any, budget: Any) -> tuple[dict[str, float], float | None]:
    if not isinstance(cost, Mapping):
        raise DesignError(
            "a joint search needs cost={'therapist': ..., 'patient': ...} (cost per "
            f"therapist and per patient); got cost={cost!r}")
    unknown = sorted(set(cost) - set(_COSTS))
    if unknown:
        raise DesignError(f"cost names {unknown[0]!r}; allowed: {', '.join(_COSTS)}")
    out = {}
    for key in _COSTS:
        if key not in cost:
            raise DesignError(f"cost must give {key!r} (cost per {key}; 0 if free)")
        v = cost[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(
                v) or v < 0:
            raise DesignError(f"cost[{key!r}] must be a finite number >= 0, got {v!r}")
        out[key] = float(v)
    if not any(out.values()):
        raise DesignError("cost per therapist and per patient are both 0: every design "
                          "would cost nothing; give at least one positive cost")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not (
                math.isfinite(budget)) or budget <= 0:
            raise DesignError(f"budget must be a positive finite number, got {budget!r}")
        budget = float(budget)
    return out, budget


def _closed_form(design: Design, test: str, alpha: float) -> Callable[[Design], float] | None:
    """Closed-form power of the designs of a search, when ``design_power`` has one."""
    from . import analytic

    try:
        analytic.design_power(design, test=test, alpha=alpha)
    except (DesignError, ValueError):
        return None
    return lambda d: analytic.design_power(d, test=test, alpha=alpha)


def _closed_form_reaches(exact: Callable[[Design], float], design: Design,
                         target: float) -> bool:
    try:
        return exact(design) >= target
    except DesignError:  # too few therapists for the closed form
        return False


def _joint_sample_size(design: Design, formula: str, *, test: str | Sequence[str],
                       target: float, target_of: str,
                       vary: Sequence[str], lo: Any, hi: Any, step: Any, seed: RNGLike,
                       cost: Any, budget: Any, t0: float,
                       **kwargs: Any) -> JointSampleSizeResult:
    """Run the joint search of :func:`sample_size` over therapists and caseloads."""
    if not 0 < target < 1:
        raise DesignError(f"target power must be in (0, 1), got {target!r}")
    ranges = _joint_ranges(design, vary, lo, hi, step)
    rates, budget = _check_costs(cost, budget)
    checkpoint = kwargs.pop("checkpoint", None)
    (t_lo, t_hi, t_step), (n_lo, n_hi, n_step) = ranges["therapists"], ranges[
        "patients_per_therapist"]
    t_grid = list(range(t_lo, t_hi + 1, t_step))
    n_grid = list(range(n_lo, n_hi + 1, n_step))
    for t in (t_lo, t_hi):  # every corner must be a valid design before any simulation
        for n in (n_lo, n_hi):
            design.replace(therapists=t, patients_per_therapist=n)

    def price(t: int, n: int) -> float:
        return rates["therapist"] * t + rates["patient"] * t * n

    seed = seed_sequence(seed)  # one root for every evaluation (common random numbers)
    cache: dict[tuple[int, int], PowerResult | MultiPowerResult] = {}
    order: list[tuple[int, int]] = []

    def pw(pair: tuple[int, int]) -> tuple[float, tuple[float, float], int]:
        return _target_power(cache[pair], target_of)

    def reaches(t: int, n: int) -> bool:
        if (t, n) not in cache:
            d = design.replace(therapists=t, patients_per_therapist=n)
            ck = _point_checkpoint(checkpoint, therapists=t, patients_per_therapist=n)
            cache[(t, n)] = cast(PowerResult, power(d, formula, test=test, seed=seed,
                                                    checkpoint=ck, **kwargs))
            order.append((t, n))
        return pw((t, n))[0] >= target

    # the closed form (where there is one: a single test) orders the caseloads and
    # guesses each answer
    exact = None if not isinstance(test, str) else _closed_form(
        design.replace(therapists=t_hi, patients_per_therapist=n_lo), test,
        float(kwargs.get("alpha", 0.05)))
    guess: dict[int, int | None] = {}
    visit = list(n_grid)
    if exact is not None:
        for n in n_grid:
            guess[n] = next((t for t in t_grid if _closed_form_reaches(
                exact, design.replace(therapists=t, patients_per_therapist=n), target)),
                None)

        def guessed_cost(n: int) -> tuple[bool, float, int]:
            g = guess[n]
            return (g is None, 0.0 if g is None else price(g, n), n)

        visit.sort(key=guessed_cost)
    best: tuple[float, float, int, int] | None = None  # (cost, -power, t, n)
    found: dict[int, int | None] = {}
    status: dict[int, str] = {}
    previous: int | None = None
    for n in visit:
        caps = [c for c in (budget, None if best is None else best[0]) if c is not None]
        cap = min(caps) if caps else None
        allowed = [t for t in t_grid if cap is None or price(t, n) <= cap]
        if not allowed:
            found[n] = None
            status[n] = ("over budget" if best is None else
                         f"cannot beat cost {best[0]:g}")
            continue
        top = allowed[-1]
        g = guess.get(n) if exact is not None else previous
        def reaches_at(t: int, n: int = n) -> bool:
            return reaches(t, n)

        t_min = _smallest_reaching(reaches_at, t_lo, top, t_step,
                                   guess=None if g is None else min(g, top))
        found[n] = t_min
        if t_min is None:
            status[n] = (f"not reached up to {top} therapists" + (
                "" if top == t_hi else " (dearer pairs cannot beat the best)"))
            continue
        status[n] = "reached"
        previous = t_min
        key = (price(t_min, n), -pw((t_min, n))[0], t_min, n)
        if best is None or key < best:
            best = key
    ev = pd.DataFrame({
        "therapists": [t for t, _ in order],
        "patients_per_therapist": [n for _, n in order],
        "power": [pw(p)[0] for p in order],
        "ci_low": [pw(p)[1][0] for p in order],
        "ci_high": [pw(p)[1][1] for p in order],
        "n_completed": [cache[p].n_completed for p in order],
        "cost": [price(*p) for p in order],
        "reached": [pw(p)[0] >= target for p in order],
    })
    fr = []
    for n in n_grid:
        t_n = found[n]
        row: dict[str, Any] = {"patients_per_therapist": n, "therapists": pd.NA,
                               "power": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                               "cost": math.nan, "status": status[n]}
        if t_n is not None:
            p_n, ci_n, _ = pw((t_n, n))
            row.update(therapists=t_n, power=p_n, ci_low=ci_n[0], ci_high=ci_n[1],
                       cost=price(t_n, n))
        fr.append(row)
    frontier = pd.DataFrame(fr)
    frontier["therapists"] = frontier["therapists"].astype("Int64")
    opt: tuple[float, tuple[float, float], int] | None
    if best is None:
        warnings.warn(
            f"target power {target:g} not reached by any pair on the grid"
            + (f" within budget {budget:g}" if budget is not None else "")
            + f" (therapists {t_lo}-{t_hi}, patients_per_therapist {n_lo}-{n_hi}); raise hi"
            + (" or the budget" if budget is not None else ""),
            AllianceModelsWarning,
            skip_file_prefixes=(_PACKAGE_DIR,),
        )
        opt = None
    else:
        opt = pw((best[2], best[3]))
    return JointSampleSizeResult(
        vary=_JOINT, target=target, cost_rates=rates, budget=budget,
        therapists=None if best is None else best[2],
        patients_per_therapist=None if best is None else best[3],
        cost=math.nan if best is None else best[0],
        power=opt[0] if opt else math.nan,
        ci=opt[1] if opt else (math.nan, math.nan),
        evaluations=ev, frontier=frontier,
        results=tuple(cache[p] for p in order),  # type: ignore[arg-type]
        closed_form=exact is not None, elapsed=time.perf_counter() - t0,
        target_of=None if isinstance(test, str) else target_of,
    )
