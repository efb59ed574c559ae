"""Replicates per second of am.power on design R1, side by side with MCPower find_power.

Design R1 (issue 6): 30 therapists x 8 patients x 6 sessions (1,440 rows), random
intercepts for therapist and patient, ``adherence ~ alliance * (age + autonomy) +
(1 | therapist/patient)``, testing ``alliance:autonomy`` with Satterthwaite df. MCPower
(``pip install mcpower==1.4.1``) runs ``find_power`` with ``family="lme"`` on the same
layout and effects (its own simulator; Satterthwaite df for nested groupings per its
documentation), the same number of simulations. Routes (issue 14, item 5):

* ``n_jobs=1``: ``am.power(n_jobs=1)`` (one process, one thread) against MCPower on 2
  threads (and on 1 thread, CPU time, for the like-for-like single-core comparison);
* first run on all cores: the first ``am.power(n_jobs=-1)`` of a session (no worker
  processes yet) against MCPower's first ``find_power`` of a session, both after a small
  warm-up so that imports are not timed, wall time;
* warm workers: ``am.power(n_jobs=-1)`` while loky's workers are running against MCPower
  on 2 threads, wall time;
* random slope: ``am.power(n_jobs=1)`` with ``(1 + alliance | therapist) +
  (1 | therapist:patient)`` against MCPower's ``(1 + alliance|therapist) + (1|patient)``
  (it parses no slope inside a nested term) on 2 threads.

Binomial line (issue 13, one process, skipped with ``--no-binomial``): R1 with attendance
as the outcome (8 scheduled sessions per session row, attended ~ Binomial), ``attended ~
alliance * (age + autonomy) + (1 | therapist/patient)``: ``am.power`` fitting the binomial
GLMM to every replicate, side by side with MCPower's GLMM (``family="logit"``: one
Bernoulli outcome per row on the same 1,440-row nested design; its own simulator).

Every measurement is a fresh process (``r1_children.py``); ours and MCPower's alternate
round by round and the medians are compared. The machine is shared: the load average is
printed with each line. Run: ``.venv/bin/python benchmarks/power_speed.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "r1_children.py"
T, P, S = 30, 8, 6
N = T * P * S


def child(kind: str, n: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    out = subprocess.run([sys.executable, str(CHILD), kind, str(n), str(repeats)], env=env,
                         capture_output=True, text=True, check=False, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_am_power_binomial(B: int) -> tuple[float, float] | None:
    """``am.power`` with the per-replicate binomial GLMM on R1 (one process)."""
    try:
        import alliance_models as am
    except ImportError:
        return None
    design = am.Design(therapists=T, patients_per_therapist=P, sessions=S, family="binomial",
                       counts="attendance", trials=8,
                       effects={"alliance": 0.25, "autonomy": 0.1, "alliance:age": 0.05,
                                "alliance:autonomy": 0.1})
    t0 = time.perf_counter()
    res = am.power(design, "attended ~ alliance * (age + autonomy) + (1 | therapist/patient)",
                   test="alliance:autonomy", n_sims=B, seed=1, n_jobs=1, progress=False)
    return res.n_completed / (time.perf_counter() - t0), res.power


def bench_mcpower_glmm(B: int) -> tuple[float, float] | None:
    """MCPower's GLMM (logit) on the R1 layout, 2 threads."""
    try:
        import mcpower
        from mcpower import _engine
    except ImportError:
        print("  MCPower: not installed (pip install mcpower)")
        return None
    try:
        _engine.set_n_threads(2)
        m = mcpower.MCPower(
            "attended ~ alliance + age + autonomy + alliance:age + alliance:autonomy"
            " + (1|therapist/patient)", family="logit")
        m.set_cluster("therapist", ICC=0.05, n_clusters=T)
        m.set_cluster("therapist:patient", ICC=0.30, n_per_parent=P)
        m.set_effects("alliance=0.25, age=0.0, autonomy=0.1, alliance:age=0.05, "
                      "alliance:autonomy=0.1")
        m.set_baseline_probability(0.75)
        m.set_simulations(B)
        m.set_seed(1)
        t0 = time.perf_counter()
        power = _mc_power(m, N)
        return B / (time.perf_counter() - t0), power
    except Exception as err:  # noqa: BLE001 - report the API failure, do not crash
        print(f"  MCPower GLMM: failed ({type(err).__name__}: {err})")
        return None


def _mc_power(m, n: int) -> float:  # noqa: ANN001
    r = m.find_power(n, target_test="alliance:autonomy", verbose=False, progress_callback=False)
    return float(r["power_uncorrected"][0][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-binomial", action="store_true", help="skip the GLMM line")
    args = ap.parse_args()
    import numpy as np

    try:
        import mcpower

        mc_version = mcpower.__version__
    except ImportError:
        raise SystemExit("MCPower is not installed: pip install mcpower==1.4.1") from None
    print("R1: 30 therapists x 8 patients x 6 sessions = 1440 rows; adherence ~ alliance * "
          "(age + autonomy) + (1 | therapist/patient); test alliance:autonomy")
    print(f"python {platform.python_version()}, numpy {np.__version__}, MCPower "
          f"{mc_version}, cores {os.cpu_count()}; {args.rounds} rounds, fresh process each, "
          "ours and MCPower interleaved; medians")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # (label, ours, theirs, n_sims, timed runs per process, measure ours/theirs)
    pairs = [
        ("n_jobs=1 vs MCPower 2 threads (wall)", ("am1", "mc2"), 2000, 2, ("wall", "wall")),
        ("n_jobs=1 vs MCPower 1 thread (CPU)", ("am1", "mc1"), 2000, 2, ("cpu", "cpu")),
        ("first run on all cores (wall)", ("amfirst", "mcfirst"), 2000, 1, ("wall", "wall")),
        ("warm workers vs MCPower 2 threads (wall)", ("amwarm", "mc2"), 2000, 3,
         ("wall", "wall")),
        ("random slope, n_jobs=1 vs MCPower 2 threads (wall)", ("amslope", "mcslope"), 500,
         2, ("wall", "wall")),
    ]
    cache: dict[tuple[str, int], list[dict]] = {}
    for _, kinds, n, reps, _ in pairs:
        todo = [k for k in kinds if (k, n) not in cache]
        for k in todo:
            cache[(k, n)] = []
        for r in range(args.rounds):
            for k in (todo if r % 2 == 0 else todo[::-1]):
                cache[(k, n)].append(child(k, n, reps))
    print(f"{'route':52s} {'am.power':>14s} {'MCPower':>14s} {'ratio':>7s}")
    for label, (ours, theirs), n, _, (m1, m2) in pairs:
        a, b = cache[(ours, n)], cache[(theirs, n)]
        ta = statistics.median(t for d in a for t in d[m1])
        tb = statistics.median(t for d in b for t in d[m2])
        loads = [d["load"] for d in a + b]
        print(f"{label:52s} {n / ta:9.0f} rep/s {n / tb:9.0f} rep/s {tb / ta:6.2f}x   "
              f"(power {a[-1]['power']:.3f} / {b[-1]['power']:.3f}; {n} sims; load "
              f"{min(loads):.1f}-{max(loads):.1f})")
    print("ratio = am.power speed / MCPower speed (goal >= 1.5x in each route); the powers "
          "differ because the two simulators' predictors differ (ours: skewed alliance with "
          "therapist/patient/session parts, age in years; MCPower: its own)")
    if not args.no_binomial:
        binomial()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def binomial() -> None:
    """The binomial line (issue 13): the GLMM per replicate against MCPower's GLMM."""
    sys.path.insert(0, str(HERE.parent / "src"))
    B_glmm, B_mc_glmm = 20, 200
    print("binomial (attendance, 8 scheduled sessions per row)")
    ours = bench_am_power_binomial(B_glmm)
    if ours is not None:
        print(f"  am.power binomial GLMM per replicate ({B_glmm} replicates, 1 process): "
              f"{ours[0]:8.2f} rep/s   (power {ours[1]:.3f})")
    theirs = bench_mcpower_glmm(B_mc_glmm)
    if theirs is not None:
        print(f"  MCPower GLMM logit ({B_mc_glmm} replicates, 2 threads, Bernoulli rows): "
              f"{theirs[0]:8.2f} rep/s   (power {theirs[1]:.3f})")
    if ours is not None and theirs is not None:
        print(f"  am.power binomial GLMM / MCPower GLMM: {ours[0] / theirs[0]:8.3f}x")


if __name__ == "__main__":
    main()
