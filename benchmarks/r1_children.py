"""Timed runs on design R1 in a fresh process, for power_speed.py and redesign_speed.py.

Run as ``python r1_children.py KIND N_SIMS REPEATS`` with ``PYTHONPATH`` pointing at the
``src`` folder of the tree to measure; prints one JSON line ``{"cpu": [...], "wall":
[...], "power": ..., "load": ...}`` (seconds per timed run). Kinds:

* ``am1``: ``am.power(n_jobs=1)`` after a 200-replicate warm-up run (CPU and wall);
* ``amfirst``: the first ``am.power(n_jobs=-1)`` run of the session (one timed run; the
  process has imported the package and run a 50-replicate ``n_jobs=1`` warm-up, so the
  time is the run's, not the imports');
* ``amwarm``: ``am.power(n_jobs=-1)`` once loky's workers are running (a long warm-up
  run with ``n_jobs=-1`` first);
* ``amslope`` / ``amslopefirst``: ``am1`` / ``amfirst`` with the random-slope formula;
* ``mc2`` / ``mc1``: MCPower ``find_power`` (``family="lme"``, nested groupings, so
  Satterthwaite df) on 2 threads / 1 thread after a warm-up call; ``mcfirst``: its first
  2-thread call after a 50-simulation warm-up; ``mcslope`` / ``mcslope1`` /
  ``mcslopefirst``: ``mc2`` / ``mc1`` / ``mcfirst`` with a random alliance slope by
  therapist;
* ``capacity``: how much of a second core this process gets now: ``np.sort`` of a large
  array (the GIL released) in 2 threads against one after the other, BLAS on one
  thread (``{"speedup": ...}``; about 2 on an idle 2-core machine, about 1 when the
  other helpers' jobs keep the second core busy).

R1: 30 therapists x 8 patients x 6 sessions, ``adherence ~ alliance * (age + autonomy) +
(1 | therapist/patient)``, test ``alliance:autonomy``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

T, P, S = 30, 8, 6
R1_FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"
SLOPE_FORMULA = ("adherence ~ alliance * (age + autonomy) + (1 + alliance | therapist) "
                 "+ (1 | therapist:patient)")
TEST = "alliance:autonomy"


def _design():  # noqa: ANN202 - the package's Design
    import alliance_models as am

    return am.Design(therapists=T, patients_per_therapist=P, sessions=S,
                     moderators={"age": "patient", "autonomy": "patient"},
                     effects={"alliance": 0.25, "autonomy": 0.1, "alliance:autonomy": 0.1})


def _am_run(n: int, n_jobs: int, seed: int, formula: str = R1_FORMULA) -> float:
    import alliance_models as am

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = am.power(_design(), formula, test=TEST, n_sims=n, method="auto",
                       n_jobs=n_jobs, seed=seed, progress=False)
    return float(res.power)


def _mc_model(threads: int, slope: bool = False):  # noqa: ANN202 - an MCPower model
    import mcpower
    from mcpower import _engine

    _engine.set_n_threads(threads)
    # MCPower 1.4.1 parses no slope inside a nested term ((1 + x|a/b)) nor an a:b
    # grouping: the slope design is (1 + alliance|therapist) + (1|patient), patients
    # set with n_per_parent as in the nested design
    rand = "(1 + alliance|therapist) + (1|patient)" if slope else "(1|therapist/patient)"
    m = mcpower.MCPower("adherence ~ alliance + age + autonomy + alliance:age + "
                        f"alliance:autonomy + {rand}", family="lme")
    if slope:
        m.set_cluster("therapist", ICC=0.05, n_clusters=T, random_slopes=["alliance"],
                      slope_variance=0.02, slope_intercept_corr=0.0)
    else:
        m.set_cluster("therapist", ICC=0.05, n_clusters=T)
    m.set_cluster("patient" if slope else "therapist:patient", ICC=0.30, n_per_parent=P)
    m.set_effects("alliance=0.25, age=0.0, autonomy=0.1, alliance:age=0.05, "
                  "alliance:autonomy=0.1")
    return m


def _mc_run(m, n: int, seed: int) -> float:  # noqa: ANN001
    m.set_simulations(n)
    m.set_seed(seed)
    r = m.find_power(T * P * S, target_test=TEST, verbose=False, progress_callback=False)
    return float(r["power_uncorrected"][0][0])


def _timed(fn) -> tuple[float, float, float]:  # noqa: ANN001
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def _capacity() -> float:
    """Speed-up of a GIL-free numpy job in 2 threads over one after the other (median)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.random.default_rng(0).normal(size=1_000_000)

    def job(_: object = None) -> None:
        for _ in range(4):
            np.sort(a)

    ratios = []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            job()
            job()
            t1 = time.perf_counter()
            list(pool.map(job, range(2)))
            ratios.append((t1 - t0) / (time.perf_counter() - t1))
    return sorted(ratios)[1]


def main() -> None:
    kind, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if kind == "capacity":
        print(json.dumps({"speedup": _capacity(), "load": os.getloadavg()[0]}))
        return
    cpu: list[float] = []
    wall: list[float] = []
    power = float("nan")
    seeds = iter(range(1, 10**6))
    slope = "slope" in kind
    formula = SLOPE_FORMULA if slope else R1_FORMULA
    if kind in ("am1", "amslope"):
        _am_run(min(n, 200), 1, 0, formula)
        runs = [lambda: _am_run(n, 1, next(seeds), formula) for _ in range(repeats)]
    elif kind in ("amfirst", "amslopefirst"):
        _am_run(50, 1, 0, formula)
        runs = [lambda: _am_run(n, -1, next(seeds), formula)]
    elif kind == "amwarm":
        _am_run(max(n, 20000), -1, 0)  # long enough to start the workers in any version
        runs = [lambda: _am_run(n, -1, next(seeds)) for _ in range(repeats)]
    elif kind in ("mc1", "mc2", "mcfirst", "mcslope", "mcslope1", "mcslopefirst"):
        first = kind.endswith("first")
        m = _mc_model(1 if kind.endswith("1") else 2, slope=slope)
        _mc_run(m, 50 if first else n, 0)
        runs = [lambda: _mc_run(m, n, next(seeds)) for _ in range(1 if first else repeats)]
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    for fn in runs:
        c, w, power = _timed(fn)
        cpu.append(c)
        wall.append(w)
    print(json.dumps({"cpu": cpu, "wall": wall, "power": power,
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
