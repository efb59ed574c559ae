"""PyMC NUTS vs nutpie for the three-level moderation model, side by side in one run.

Model: ``adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)`` on the
shipped example data (read, scored with WAI-SR and HCCQ-6, prepared), fitted by
``am.fit_bayes`` with 4 chains x 1000 draws after 1000 tuning steps.

Each sampler runs in a fresh Python process, so numba compilation is counted every time
(as a user's first fit in a session would pay it). Reported per sampler:

* ``wall_s``: seconds of ``fit_bayes`` (build, compile, sample, log-likelihood, posterior
  predictive, summary); ``process_s`` adds the imports and data preparation;
* ``sample_s``: the sampler's own sampling time (from ``sample_stats``);
* ``min_ess``: smallest bulk ESS over the fixed effects; ``ess_per_s = min_ess / wall_s``;
* ``max_rhat`` and divergences.

A second, small model (the first 12 therapists) shows where compile time dominates.

Usage::

    .venv/bin/python benchmarks/bayes_speed.py [--draws 1000] [--tune 1000] [--no-small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"


def _load(subset: int | None):
    import warnings

    import pandas as pd

    import alliance_models as am

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scoring reports missing items; not the point here
        raw = am.read_data(am.datasets.example_path())
        scored = am.score(raw, "wai-sr", items="wai_{i}")
        scored = am.score(scored, "hccq-short", items="hccq_{i}")
        data, _ = am.prepare(scored)
    if subset:
        keep = pd.unique(data["therapist"])[:subset]
        data = data[data["therapist"].isin(keep)].reset_index(drop=True)
    return data


def one(sampler: str, draws: int, tune: int, chains: int, seed: int, subset: int | None) -> dict:
    """Fit once with ``sampler`` in this process and return the measurements."""
    t_proc = time.perf_counter()
    import warnings

    import alliance_models as am
    from alliance_models.errors import DiagnosticsWarning

    data = _load(subset)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DiagnosticsWarning)
        fit = am.fit_bayes(FORMULA, data, draws=draws, tune=tune, chains=chains, seed=seed,
                           sampler=sampler)
    wall = time.perf_counter() - t0
    tab = fit.to_frame().loc[list(fit.frame.x_names)]
    min_ess = float(tab["ess_bulk"].min())
    return {
        "sampler": fit.sampler,
        "rows": fit.frame.n_obs,
        "wall_s": wall,
        "process_s": time.perf_counter() - t_proc,
        "sample_s": float(fit.idata.posterior.attrs.get(
            "sampling_time", fit.idata.sample_stats.attrs.get("sampling_time", float("nan")))),
        "min_ess": min_ess,
        "ess_per_s": min_ess / wall,
        "max_rhat": float(tab["r_hat"].max()),
        "divergences": fit.n_divergent,
        "diag_warnings": len(rec),
        "alliance:autonomy": float(fit.params["alliance:autonomy"]),
    }


def _run_child(sampler: str, args: argparse.Namespace, subset: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", sampler, "--draws", str(args.draws), "--tune",
           str(args.tune), "--chains", str(args.chains), "--seed", str(args.seed)]
    if subset:
        cmd += ["--subset", str(subset)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--subset", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", choices=["pymc", "nutpie"], help=argparse.SUPPRESS)
    ap.add_argument("--no-small", action="store_true", help="skip the 12-therapist model")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.draws, args.tune, args.chains, args.seed,
                             args.subset)))
        return

    cases = [("full example", None)] + ([] if args.no_small else [("12 therapists", 12)])
    print(f"model: {FORMULA}")
    print(f"{args.chains} chains x {args.draws} draws (tune {args.tune}); each fit in a fresh "
          "process (compile included)\n")
    header = (f"{'data':<14}{'sampler':<8}{'rows':>6}{'wall_s':>9}{'sample_s':>10}"
              f"{'process_s':>11}{'min_ess':>9}{'ess/s':>8}{'max_rhat':>10}{'div':>5}")
    print(header)
    print("-" * len(header))
    for label, subset in cases:
        res = {s: _run_child(s, args, subset) for s in ("pymc", "nutpie")}
        for s, r in res.items():
            print(f"{label:<14}{s:<8}{r['rows']:>6}{r['wall_s']:>9.1f}{r['sample_s']:>10.1f}"
                  f"{r['process_s']:>11.1f}{r['min_ess']:>9.0f}{r['ess_per_s']:>8.1f}"
                  f"{r['max_rhat']:>10.3f}{r['divergences']:>5d}")
        p, n = res["pymc"], res["nutpie"]
        print(f"{'':<14}ratios pymc/nutpie: wall {p['wall_s'] / n['wall_s']:.2f}x, "
              f"ESS/s nutpie/pymc {n['ess_per_s'] / p['ess_per_s']:.2f}x; "
              f"alliance:autonomy {p['alliance:autonomy']:.4f} vs "
              f"{n['alliance:autonomy']:.4f}\n")


if __name__ == "__main__":
    main()
