"""am.power on design R1 before the redesign (commit 467b1f4) and after, side by side.

Each measurement is a fresh Python process (``r1_children.py``) with ``PYTHONPATH`` at
one tree's ``src``; the two trees alternate round by round (interleaved), and the
medians over rounds are compared (ratio after / before: above 1 is faster). Lines:

* ``n_jobs=1``: CPU and wall time of a 2,000-replicate run (after a warm-up run);
* the first ``n_jobs=-1`` run of a session (2,000 replicates, wall time, no workers yet);
* the first ``n_jobs=-1`` run of a session with 20,000 replicates (wall);
* ``n_jobs=-1`` with loky's workers running (2,000 replicates, wall);
* the first ``n_jobs=-1`` run of a session with the random-slope formula (500
  replicates, wall).

``--before`` may name any other tree's ``src`` (such as ``/work/wt/_speed0/src``, main
before a round of speed work); its commit is printed.

Make the "before" tree with
``git worktree add --detach /work/wt/_before 467b1f4`` and run
``.venv/bin/python benchmarks/redesign_speed.py [--before PATH] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "r1_children.py"


def child(src: Path, kind: str, n: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(CHILD), kind, str(n), str(repeats)], env=env,
                         capture_output=True, text=True, check=False, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{kind} in {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def capacity(src: Path) -> str:
    """How much of a second core a process gets now (see r1_children.py ``capacity``)."""
    return (f"2-thread capacity {child(src, 'capacity', 0, 1)['speedup']:.2f}x (np.sort in "
            "2 threads vs 1; 2 = both cores free)")


def _commit(src: Path) -> str:
    """The tree's commit (and '+changes' when its work tree differs), or '?'."""
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="/work/wt/_before/src")
    ap.add_argument("--after", default=str(HERE.parent / "src"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    trees = {"before": Path(args.before), "after": Path(args.after)}
    lines = [  # (label, kind, n_sims, timed runs per process, rounds factor, measure)
        ("n_jobs=1, 2,000 replicates, CPU", "am1", 2000, 2, 1, "cpu"),
        ("n_jobs=1, 2,000 replicates, wall", "am1", 2000, 2, 1, "wall"),
        ("first n_jobs=-1 run, 2,000 replicates, wall", "amfirst", 2000, 1, 1, "wall"),
        ("first n_jobs=-1 run, 20,000 replicates, wall", "amfirst", 20000, 1, 0.6, "wall"),
        ("n_jobs=-1, workers running, 2,000 replicates, wall", "amwarm", 2000, 3, 0.6, "wall"),
        ("first n_jobs=-1 run, random slope, 500 replicates, wall", "amslopefirst", 500, 1,
         1, "wall"),
    ]
    print(f"R1 (30 therapists x 8 patients x 6 sessions), {args.rounds} rounds, trees "
          f"interleaved; before = {trees['before']} ({_commit(trees['before'])}), after = "
          f"{trees['after']} ({_commit(trees['after'])})")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{capacity(trees['after'])}")
    done: dict[str, dict[str, list[dict]]] = {}
    for _label, kind, n, reps, factor, _ in lines:
        key = f"{kind}:{n}"
        if key in done:
            continue
        rounds = max(3, round(args.rounds * factor))
        done[key] = {"before": [], "after": []}
        for r in range(rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                done[key][name].append(child(trees[name], kind, n, reps))
    print(f"{'line':52s} {'before':>14s} {'after':>14s} {'after/before speed':>19s}")
    for label, kind, n, _, _, measure in lines:
        res = done[f"{kind}:{n}"]
        med = {name: statistics.median(t for d in res[name] for t in d[measure])
               for name in res}
        rate = {name: n / med[name] for name in med}
        loads = [d["load"] for name in res for d in res[name]]
        print(f"{label:52s} {rate['before']:9.0f} rep/s {rate['after']:9.0f} rep/s "
              f"{med['before'] / med['after']:12.2f}x   (median {measure} "
              f"{med['before'] * 1e3:.0f} / {med['after'] * 1e3:.0f} ms; load "
              f"{min(loads):.1f}-{max(loads):.1f})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{capacity(trees['after'])}")


if __name__ == "__main__":
    main()
