"""Single-core speed of the random-intercept route on R1, side by side with another tree.

Measures ``am.power(design, R1_FORMULA, test="alliance:autonomy", n_sims=N, n_jobs=1,
method="auto")`` on design R1 (30 therapists x 8 patients x 6 sessions; see
``r1_children.py``) for two source trees in the same run: each round starts one fresh
process per tree (in alternating order), which imports the package, runs a 200-replicate
warm-up and then times ``REPEATS`` runs; CPU time (``time.process_time``, what matters on
a shared machine) and wall time are both recorded. With ``--threads`` each process also
times the run with ``n_jobs=2`` under joblib's threading backend (wall time; the ratio
to the ``n_jobs=1`` wall time of the same process is the gain from threads). Reported:
medians over every timed run, replicates per second, and the after/before ratios.

Usage::

    python benchmarks/simspeed.py --before /work/wt/_speed0 [--after .] [--rounds 5]
        [--repeats 3] [--n-sims 2000] [--threads] [--out benchmarks/results/simspeed.txt]

``--before``/``--after`` are repository roots (their ``src`` is put first on the path);
the benchmark definitions (design, formula) are this folder's ``r1_children.py`` for
both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(n: int, repeats: int, threads: bool) -> None:
    sys.path.insert(0, str(HERE))
    import r1_children as r

    r._am_run(200, 1, 0)  # imports, caches, first-call costs
    cpu, wall, thr_wall, thr_cpu = [], [], [], []
    for i in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        power = r._am_run(n, 1, 100 + i)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        if threads:
            import joblib

            with joblib.parallel_config(backend="threading"):
                c0, w0 = time.process_time(), time.perf_counter()
                p2 = r._am_run(n, 2, 100 + i)
                thr_cpu.append(time.process_time() - c0)
                thr_wall.append(time.perf_counter() - w0)
            assert p2 == power, (p2, power)  # same replicates whatever the workers
    print(json.dumps({"cpu": cpu, "wall": wall, "thr_wall": thr_wall, "thr_cpu": thr_cpu,
                      "power": power, "load": os.getloadavg()[0]}))


def _run(tree: Path, n: int, repeats: int, threads: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", str(n), str(repeats)]
    if threads:
        cmd.append("--threads")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=2, type=int, metavar=("N", "REPEATS"))
    ap.add_argument("--before", type=Path)
    ap.add_argument("--after", type=Path, default=HERE.parent)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-sims", type=int, default=2000)
    ap.add_argument("--threads", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], a.child[1], a.threads)
        return
    if a.before is None:
        ap.error("--before is required")
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    res: dict[str, dict[str, list[float]]] = {
        k: {"cpu": [], "wall": [], "thr_wall": [], "ratio": []} for k in trees}
    loads, powers = [], {}
    for rnd in range(a.rounds):
        order = list(trees) if rnd % 2 == 0 else list(trees)[::-1]
        for name in order:
            r = _run(trees[name], a.n_sims, a.repeats, a.threads)
            res[name]["cpu"] += r["cpu"]
            res[name]["wall"] += r["wall"]
            res[name]["thr_wall"] += r["thr_wall"]
            if a.threads:
                res[name]["ratio"] += [w / t for w, t in zip(r["wall"], r["thr_wall"],
                                                             strict=True)]
            powers[name] = r["power"]
            loads.append(r["load"])
            print(f"round {rnd} {name}: cpu {statistics.median(r['cpu']):.3f} s, wall "
                  f"{statistics.median(r['wall']):.3f} s, load {r['load']:.1f}", flush=True)
    med = {k: {m: statistics.median(v) if v else float("nan") for m, v in d.items()}
           for k, d in res.items()}
    n = a.n_sims
    lines = [
        f"simspeed: am.power on R1, n_sims={n}, n_jobs=1 (random intercepts, fit from sums)",
        f"rounds {a.rounds} x repeats {a.repeats} per tree, fresh processes, interleaved; "
        f"load average during the run: median {statistics.median(loads):.1f} "
        f"(min {min(loads):.1f}, max {max(loads):.1f}) on {os.cpu_count()} cores",
        f"before: {trees['before']}",
        f"after:  {trees['after']}",
        "",
        f"{'':8}{'CPU s':>9}{'rep/s CPU':>11}{'wall s':>9}{'rep/s wall':>12}"
        + (f"{'n_jobs=2 thr wall':>19}{'thr ratio':>11}" if a.threads else ""),
    ]
    for k in trees:
        m = med[k]
        lines.append(f"{k:8}{m['cpu']:9.3f}{n / m['cpu']:11.0f}{m['wall']:9.3f}"
                     f"{n / m['wall']:12.0f}"
                     + (f"{m['thr_wall']:19.3f}{m['ratio']:11.2f}" if a.threads else ""))
    lines.append(f"after/before speed: CPU {med['before']['cpu'] / med['after']['cpu']:.2f}x, "
                 f"wall {med['before']['wall'] / med['after']['wall']:.2f}x")
    lines.append(f"power (last run): before {powers['before']}, after {powers['after']}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
