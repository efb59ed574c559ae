"""Random-slope route of am.power: two source trees side by side, and MCPower.

Design R1 with a correlated random alliance slope by therapist (``r1_children.py``:
30 therapists x 8 patients x 6 sessions, ``adherence ~ alliance * (age + autonomy) +
(1 + alliance | therapist) + (1 | therapist:patient)``, test ``alliance:autonomy``,
Satterthwaite df), ``am.power(n_jobs=1)`` after a 200-replicate warm-up, for each of the
source trees given (``--trees``, default: this one), and MCPower 1.4.1's ``find_power``
on its slope design (``(1 + alliance|therapist) + (1|patient)``) on 1 thread and on 2
threads, the same number of simulations. Every measurement is a fresh process
(``r1_children.py``); the kinds alternate round by round and the medians of the timed
runs are compared (CPU time: the machine is shared, so wall time is printed too, with
the load average).

Run: ``.venv/bin/python benchmarks/slope_speed.py [--trees A B] [--rounds N]``.
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
MC_CHILD = """
import json, os, sys, time
sys.path.insert(0, {here!r})
import r1_children as r
m = r._mc_model({threads}, slope=True)
r._mc_run(m, {n}, 0)
cpu, wall = [], []
for seed in range(1, {repeats} + 1):
    c, w, power = r._timed(lambda: r._mc_run(m, {n}, seed))
    cpu.append(c)
    wall.append(w)
print(json.dumps({{"cpu": cpu, "wall": wall, "power": power, "load": os.getloadavg()[0]}}))
"""


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                         timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def am_child(tree: Path, n: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return _run([sys.executable, str(CHILD), "amslope", str(n), str(repeats)], env)


def mc_child(threads: int, n: int, repeats: int) -> dict:
    code = MC_CHILD.format(here=str(HERE), threads=threads, n=n, repeats=repeats)
    return _run([sys.executable, "-c", code], dict(os.environ))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs="+", type=Path, default=[HERE.parent])
    ap.add_argument("--n", type=int, default=1000, help="replicates per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-mcpower", action="store_true")
    args = ap.parse_args()
    kinds = [(f"am {t}", lambda t=t: am_child(t, args.n, args.repeats)) for t in args.trees]
    if not args.no_mcpower:
        kinds += [(f"MCPower {k} thread{'s' * (k > 1)}",
                   lambda k=k: mc_child(k, args.n, args.repeats)) for k in (1, 2)]
    res: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": [], "load": []}
                                              for k, _ in kinds}
    for rnd in range(args.rounds):
        for name, fn in kinds:
            out = fn()
            for key in ("cpu", "wall"):
                res[name][key] += out[key]
            res[name]["load"].append(out["load"])
            print(f"round {rnd + 1} {name}: cpu {[round(c, 3) for c in out['cpu']]} wall "
                  f"{[round(w, 3) for w in out['wall']]} power {out['power']:.4f} load "
                  f"{out['load']:.2f}", flush=True)
    print(f"\n{args.n} replicates per timed run; medians over {args.rounds} rounds x "
          f"{args.repeats} runs")
    rate = {}
    for name, _ in kinds:
        c, w = statistics.median(res[name]["cpu"]), statistics.median(res[name]["wall"])
        rate[name] = (args.n / c, args.n / w)
        print(f"{name:40s} cpu {args.n / c:8.1f} rep/s  wall {args.n / w:8.1f} rep/s  "
              f"load {statistics.median(res[name]['load']):.2f}")
    trees = [k for k, _ in kinds][:len(args.trees)]
    pairs = [(trees[-1], trees[0])] if len(trees) > 1 else []
    pairs += [(t, o) for t in trees for o in [k for k, _ in kinds][len(trees):]]
    for this, that in pairs:
        print(f"{this} / {that}: cpu {rate[this][0] / rate[that][0]:.2f}x  "
              f"wall {rate[this][1] / rate[that][1]:.2f}x")


if __name__ == "__main__":
    main()
