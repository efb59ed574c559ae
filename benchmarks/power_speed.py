"""Replicates per second of am.power on design R1, side by side with MCPower find_power.

Design R1 (issue 6): 30 therapists x 8 patients x 6 sessions (1,440 rows), random
intercepts for therapist and patient, ``adherence ~ alliance * (age + autonomy) +
(1 | therapist/patient)``, testing ``alliance:autonomy`` with Satterthwaite df. MCPower
(``pip install mcpower==1.4.1``) runs ``find_power`` with ``family="lme"`` on the same
layout and effects (its own simulator; Satterthwaite df for nested groupings per its
documentation), the same number of simulations. Routes (issue 14, item 5), each against
MCPower in the same run:

* ``n_jobs=1``: ``am.power(n_jobs=1)`` (one process, one thread) against MCPower on 1
  thread, wall and CPU time (the one-thread comparison), and, for information, against
  MCPower on 2 threads (wall);
* first run on all cores: the first ``am.power(n_jobs=-1)`` of a session (no worker
  processes yet) against MCPower's first ``find_power`` of a session on 2 threads, both
  after a small warm-up so that imports are not timed, wall time;
* warm workers: ``am.power(n_jobs=-1)`` while loky's workers are running against MCPower
  on 2 threads, wall time;
* random slope: ``(1 + alliance | therapist) + (1 | therapist:patient)`` against
  MCPower's ``(1 + alliance|therapist) + (1|patient)`` (it parses no slope inside a
  nested term): ``n_jobs=1`` against MCPower on 1 thread, and the first run on all cores
  against MCPower's first run on 2 threads (wall).

Binomial lines (issue 13, in this process, skipped with ``--no-binomial``, alone with
``--binomial-only``; ``benchmarks/results/glmm_speed.txt``): R1 with attendance as the
outcome (8 scheduled sessions per session row, attended ~ Binomial), ``attended ~
alliance * (age + autonomy) + (1 | therapist/patient)``: ``am.power`` fitting the binomial
GLMM to every replicate with the batched Laplace engine (``method="auto"``,
``n_jobs=1`` and ``n_jobs=-1`` with loky's workers started) and with one ``fit_mixed`` per
replicate (``method="mixed"``), side by side with MCPower's GLMM (``family="logit"``: one
Bernoulli outcome per row on the same 1,440-row nested design; its own simulator; 2
threads); then 2,000 null replicates (every effect 0) with both: the rejection rate.

Every measurement is a fresh process (``r1_children.py``); each round runs every kind once,
in an order that rotates from round to round (ours and MCPower's interleaved), and the
medians over rounds are compared. The machine is shared: the load average is printed with
each line. Run: ``.venv/bin/python benchmarks/power_speed.py [--rounds N] [--no-binomial]``.
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


def capacity() -> str:
    """How much of a second core a process gets now (see r1_children.py ``capacity``)."""
    return (f"2-thread capacity {child('capacity', 0, 1)['speedup']:.2f}x (np.sort in 2 "
            "threads vs 1; 2 = both cores free)")


def _timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


BINOMIAL_EFFECTS = {"alliance": 0.25, "autonomy": 0.1, "alliance:age": 0.05,
                    "alliance:autonomy": 0.1}
BINOMIAL_FORMULA = "attended ~ alliance * (age + autonomy) + (1 | therapist/patient)"


def _binomial_design(effects: dict[str, float]):  # noqa: ANN202
    import alliance_models as am

    return am.Design(therapists=T, patients_per_therapist=P, sessions=S, family="binomial",
                     counts="attendance", trials=8, effects=effects)


def bench_am_power_binomial(B: int, repeats: int, method: str = "auto", n_jobs: int = 1,
                            effects: dict[str, float] | None = None
                            ) -> tuple[float, float, str, int] | None:
    """``am.power`` on binomial R1: median rep/s, power, engine, rejections (last run)."""
    try:
        import alliance_models as am
    except ImportError:
        return None
    design = _binomial_design(BINOMIAL_EFFECTS if effects is None else effects)
    seeds = iter(range(1, 10**6))
    out: dict[str, object] = {}

    def run() -> None:
        res = am.power(design, BINOMIAL_FORMULA, test="alliance:autonomy", n_sims=B,
                       seed=next(seeds), n_jobs=n_jobs, progress=False, method=method)
        out["res"] = res

    times = _timed(run, repeats)
    res = out["res"]
    rej = int(res.replicates["reject"].sum())
    return B / statistics.median(times), res.power, res.method, rej


def bench_mcpower_glmm(B: int, repeats: int = 1, effects: str | None = None
                       ) -> tuple[float, float] | None:
    """MCPower's GLMM (logit) on the R1 layout, 2 threads: median rep/s and power."""
    try:
        import mcpower
        from mcpower import _engine
    except ImportError:
        print("  MCPower: not installed (pip install mcpower)")
        return None
    try:
        try:
            _engine.set_n_threads(2)
        except ValueError:  # its pool was started (with 2 threads) by an earlier call
            pass
        m = mcpower.MCPower(
            "attended ~ alliance + age + autonomy + alliance:age + alliance:autonomy"
            " + (1|therapist/patient)", family="logit")
        m.set_cluster("therapist", ICC=0.05, n_clusters=T)
        m.set_cluster("therapist:patient", ICC=0.30, n_per_parent=P)
        m.set_effects(effects or "alliance=0.25, age=0.0, autonomy=0.1, alliance:age=0.05, "
                      "alliance:autonomy=0.1")
        m.set_baseline_probability(0.75)
        m.set_simulations(B)
        seeds = iter(range(1, 10**6))
        out: dict[str, float] = {}

        def run() -> None:
            m.set_seed(next(seeds))
            out["power"] = _mc_power(m, N)

        times = _timed(run, repeats)
        return B / statistics.median(times), out["power"]
    except Exception as err:  # noqa: BLE001 - report the API failure, do not crash
        print(f"  MCPower GLMM: failed ({type(err).__name__}: {err})")
        return None


def _mc_power(m, n: int) -> float:  # noqa: ANN001
    r = m.find_power(n, target_test="alliance:autonomy", verbose=False, progress_callback=False)
    return float(r["power_uncorrected"][0][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-binomial", action="store_true", help="skip the GLMM lines")
    ap.add_argument("--binomial-only", action="store_true", help="only the GLMM lines")
    ap.add_argument("--quick", action="store_true", help="GLMM lines: fewer replicates")
    args = ap.parse_args()
    if args.binomial_only:
        binomial(args.rounds, args.quick)
        return
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
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{capacity()}")
    for line in r1_lines(args.rounds):
        print(line)
    print(f"load average after the R1 lines: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {capacity()}")
    if not args.no_binomial:
        binomial(args.rounds)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


#: the R1 lines: (label, (ours, theirs), n_sims, timed runs per process, measure, goal)
#: (goal False: for information, no goal)
R1_LINES = [
    ("n_jobs=1 vs MCPower 1 thread (wall)", ("am1", "mc1"), 2000, 2, "wall", True),
    ("n_jobs=1 vs MCPower 1 thread (CPU)", ("am1", "mc1"), 2000, 2, "cpu", True),
    ("n_jobs=1 vs MCPower 2 threads (wall)", ("am1", "mc2"), 2000, 2, "wall", False),
    ("first run, all cores vs MCPower first, 2 threads", ("amfirst", "mcfirst"), 2000, 1,
     "wall", True),
    ("warm workers vs MCPower 2 threads (wall)", ("amwarm", "mc2"), 2000, 3, "wall", True),
    ("slope, n_jobs=1 vs MCPower 1 thread (wall)", ("amslope", "mcslope1"), 500, 2, "wall",
     True),
    ("slope, first run, all cores vs MCPower first, 2 thr.",
     ("amslopefirst", "mcslopefirst"), 500, 1, "wall", True),
]
GOAL = 1.5


def r1_lines(rounds: int) -> list[str]:
    """Run every R1 kind ``rounds`` times (rotating order) and format the lines."""
    kinds: dict[tuple[str, int], int] = {}  # (kind, n_sims) -> timed runs per process
    for _, pair, n, reps, _, _ in R1_LINES:
        for k in pair:
            kinds[(k, n)] = max(reps, kinds.get((k, n), 0))
    order = list(kinds)
    res: dict[tuple[str, int], list[dict]] = {k: [] for k in order}
    for r in range(rounds):
        shift = (r * 3) % len(order)
        for key in (order[shift:] + order[:shift])[:: -1 if r % 2 else 1]:
            res[key].append(child(key[0], key[1], kinds[key]))
    out = [f"{'route':52s} {'am.power':>14s} {'MCPower':>14s} {'ratio':>7s}"]
    for label, (ours, theirs), n, _, measure, goal in R1_LINES:
        a, b = res[(ours, n)], res[(theirs, n)]
        ta = statistics.median(t for d in a for t in d[measure])
        tb = statistics.median(t for d in b for t in d[measure])
        loads = [d["load"] for d in a + b]
        ratio = tb / ta
        verdict = (f"goal >= {GOAL}x {'met' if ratio >= GOAL else 'NOT met'}" if goal
                   else "for information")
        out.append(f"{label:52s} {n / ta:9.0f} rep/s {n / tb:9.0f} rep/s {ratio:6.2f}x   "
                   f"{verdict}   (power {a[-1]['power']:.3f} / {b[-1]['power']:.3f}; {n} "
                   f"sims; load {min(loads):.1f}-{max(loads):.1f})")
    out.append("ratio = am.power speed / MCPower speed (medians over rounds of fresh "
               "processes); the powers differ because the two simulators' predictors differ "
               "(ours: skewed alliance with therapist/patient/session parts, age in years; "
               "MCPower: its own)")
    return out


def binomial(rounds: int = 5, quick: bool = False) -> None:
    """The binomial lines (issue 13): batched Laplace, fit_mixed per replicate, MCPower."""
    sys.path.insert(0, str(HERE.parent / "src"))
    reps = 3 if quick else rounds
    B_fast, B_rep, B_mc = (200, 3, 100) if quick else (1000, 10, 400)
    print(f"binomial (attendance, 8 scheduled sessions per row): {BINOMIAL_FORMULA}, "
          f"test alliance:autonomy; medians of {reps} timings")
    ours = bench_am_power_binomial(B_fast, reps)
    if ours is not None:
        print(f"  am.power binomial GLMM, batched Laplace (engine {ours[2]!r}, {B_fast} "
              f"replicates, n_jobs=1): {ours[0]:8.2f} rep/s   (power {ours[1]:.3f})")
    ours2 = bench_am_power_binomial(B_fast, 1, n_jobs=-1)  # starts the loky workers
    ours2 = bench_am_power_binomial(B_fast, reps, n_jobs=-1)
    if ours2 is not None:
        print(f"  am.power binomial GLMM, batched Laplace ({B_fast} replicates, n_jobs=-1, "
              f"workers started): {ours2[0]:8.2f} rep/s   (power {ours2[1]:.3f})")
    per = bench_am_power_binomial(B_rep, 1 if quick else 3, method="mixed")
    if per is not None:
        print(f"  am.power binomial GLMM, fit_mixed per replicate (engine {per[2]!r}, "
              f"{B_rep} replicates, n_jobs=1): {per[0]:8.2f} rep/s")
    theirs = bench_mcpower_glmm(B_mc, reps)
    if theirs is not None:
        print(f"  MCPower GLMM logit ({B_mc} replicates, 2 threads, Bernoulli rows): "
              f"{theirs[0]:8.2f} rep/s   (power {theirs[1]:.3f})")
    if ours is not None and theirs is not None:
        print(f"  batched Laplace n_jobs=1 / MCPower GLMM (2 threads): "
              f"{ours[0] / theirs[0]:8.2f}x   (goal >= 1x)")
    if ours2 is not None and theirs is not None:
        print(f"  batched Laplace n_jobs=-1 / MCPower GLMM (2 threads): "
              f"{ours2[0] / theirs[0]:8.2f}x")
    if ours is not None and per is not None:
        print(f"  batched Laplace / fit_mixed per replicate (n_jobs=1): "
              f"{ours[0] / per[0]:8.1f}x")
    if quick:
        return
    B_null = 2000
    null = bench_am_power_binomial(B_null, 1, n_jobs=-1, effects={})
    mc_null = bench_mcpower_glmm(B_null, 1, effects="alliance=0.0, age=0.0, autonomy=0.0, "
                                 "alliance:age=0.0, alliance:autonomy=0.0")
    se = (0.05 * 0.95 / B_null) ** 0.5
    print(f"null (every effect 0), {B_null} replicates, rejection of alliance:autonomy at "
          f"0.05 (Monte Carlo SE {se:.4f}):")
    if null is not None:
        print(f"  am.power batched Laplace: {null[3]} / {B_null} = {null[1]:.4f}   "
              f"({null[0]:.1f} rep/s, n_jobs=-1)")
    if mc_null is not None:
        print(f"  MCPower GLMM logit:       {mc_null[1]:.4f}   ({mc_null[0]:.1f} rep/s)")


if __name__ == "__main__":
    main()
