"""Bayesian fit of the three-level moderation model: every NUTS route, side by side.

Model: ``adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)`` on the
shipped example data (read, scored with WAI-SR and HCCQ-6, prepared; 2,423 rows, 40
therapists, 397 patients), fitted by ``am.fit_bayes`` with 4 chains x 1000 draws after
1000 tuning steps.

Routes (each fit in a fresh Python process, so compilation counts every time):

* ``pymc`` / ``nutpie``: ``fit_bayes(sampler=...)`` as shipped (``"auto"`` is nutpie
  here): the random intercepts are integrated out (``collapse=True``, nine sampled
  parameters, dense mass matrix), then drawn from their exact conditional posterior;
* ``pymc-full`` / ``nutpie-full``: ``collapse=False``: all 446 parameters sampled by NUTS
  (the route before the collapsed model; diagonal mass matrix);
* ``numpyro`` / ``blackjax``: the collapsed model with PyMC's JAX samplers (dense mass
  matrix, vectorised chains). They are not options of ``fit_bayes``; the child swaps the
  NUTS implementation inside ``fit_bayes``'s one ``pm.sample`` call, so the rest of the
  pipeline is the same. Needs ``pip install jax jaxlib numpyro blackjax`` (blackjax 1.7.1
  with PyMC 6.4.0 fails inside PyMC: its kernel gets an unknown ``progress_bar``).

Measured results, with the machine's load: ``benchmarks/results/bayes_speed.txt``.

Reported per route, medians over ``--repeat`` rounds (the rounds interleave the routes,
so a busy machine slows them alike):

* ``wall_s``: seconds of ``fit_bayes`` (build, compile, sample, intercept draws,
  log-likelihood, posterior predictive, summary); ``process_s`` adds imports and data;
* ``cpu_s``: CPU seconds of ``fit_bayes`` over all its threads (less sensitive than the
  wall time to other work on the machine; nutpie runs chains in threads, so its CPU
  time can exceed its wall time);
* ``sample_s``: the sampler's own sampling time (from the DataTree attributes);
* ``min_ess``: smallest bulk ESS over the fixed effects; ``ess_per_s = min_ess / wall_s``;
* ``max_rhat`` over every reported parameter, divergences.

Caches: PyTensor keeps compiled numba and C code in ``~/.pytensor`` between processes, so
after the first fit of a model later processes are *warm*; nutpie's own entry point is
compiled again in every process (numba cannot cache it). ``--cold`` points every child at
a fresh, empty ``base_compiledir`` (what a first fit after installation pays).

Usage::

    .venv/bin/python benchmarks/bayes_speed.py [--repeat 3] [--routes pymc,nutpie] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"
ROUTES = ("pymc", "nutpie", "pymc-full", "nutpie-full", "numpyro", "blackjax")
JAX_KWARGS = {"numpyro": {"dense_mass": True, "chain_method": "vectorized"},
              "blackjax": {"is_mass_matrix_diagonal": False, "chain_method": "vectorized"}}


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


def _swap_to_jax(name: str) -> None:
    """Route fit_bayes's pm.sample call to PyMC's numpyro/blackjax NUTS."""
    import pymc as pm

    orig = pm.sample  # fit_bayes looks pm.sample up when it calls it

    def sample(*args, **kwargs):
        kwargs.pop("cores", None)
        kwargs.pop("init", None)
        kwargs["nuts_sampler"] = name
        kwargs["nuts"] = dict(JAX_KWARGS[name])
        return orig(*args, **kwargs)

    pm.sample = sample


def one(route: str, draws: int, tune: int, chains: int, seed: int, subset: int | None) -> dict:
    """Fit once by ``route`` in this process and return the measurements."""
    t_proc = time.perf_counter()
    import warnings

    import alliance_models as am
    from alliance_models.errors import DiagnosticsWarning

    data = _load(subset)
    sampler = route.removesuffix("-full")
    if route in JAX_KWARGS:
        _swap_to_jax(route)
        sampler = "pymc"
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", DiagnosticsWarning)
        fit = am.fit_bayes(FORMULA, data, draws=draws, tune=tune, chains=chains, seed=seed,
                           sampler=sampler, collapse=not route.endswith("-full"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tab = fit.to_frame()
    fixed = tab.loc[list(fit.frame.x_names)]
    min_ess = float(fixed["ess_bulk"].min())
    post, stats = fit.idata.posterior, fit.idata.sample_stats
    sample_s = post.attrs.get("sampling_time", stats.attrs.get("sampling_time"))
    return {
        "route": route,
        "rows": fit.frame.n_obs,
        "wall_s": wall,
        "cpu_s": cpu,
        "process_s": time.perf_counter() - t_proc,
        "sample_s": float("nan") if sample_s is None else float(sample_s),
        "min_ess": min_ess,
        "ess_per_s": min_ess / wall,
        "max_rhat": float(tab["r_hat"].max()),
        "divergences": fit.n_divergent,
        "diag_warnings": len([w for w in rec if issubclass(w.category, DiagnosticsWarning)]),
        "alliance:autonomy": float(fit.params["alliance:autonomy"]),
    }


def _run_child(route: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", route, "--draws", str(args.draws), "--tune",
           str(args.tune), "--chains", str(args.chains), "--seed", str(args.seed)]
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bayes_speed_cold_") as cold:
        if args.cold:
            env["PYTENSOR_FLAGS"] = f"base_compiledir={cold}"
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per route (medians)")
    ap.add_argument("--routes", default=",".join(ROUTES),
                    help=f"comma-separated, of {', '.join(ROUTES)}")
    ap.add_argument("--once", default="",
                    help="routes run in the first round only (slow ones), comma-separated")
    ap.add_argument("--cold", action="store_true", help="empty PyTensor cache per child")
    ap.add_argument("--subset", type=int, default=None, help="first N therapists only")
    ap.add_argument("--one", choices=ROUTES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.draws, args.tune, args.chains, args.seed,
                             args.subset)))
        return

    routes = [r for r in args.routes.split(",") if r]
    once = {r for r in args.once.split(",") if r}
    print(f"model: {FORMULA}" + (f" (first {args.subset} therapists)" if args.subset else ""))
    print(f"{args.chains} chains x {args.draws} draws (tune {args.tune}); each fit in a fresh "
          f"process (compile included); PyTensor cache {'cold' if args.cold else 'warm'}; "
          f"{os.cpu_count()} CPUs")
    runs: dict[str, list[dict]] = {r: [] for r in routes}
    for k in range(args.repeat):
        print(f"round {k + 1}: load average {_load_average()}", flush=True)
        for r in routes:
            if r in once and k > 0:
                continue
            res = _run_child(r, args)
            runs[r].append(res)
            print(f"  {r:<12}wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s  "
                  f"min ESS {res['min_ess']:6.0f}  r_hat {res['max_rhat']:.3f}  "
                  f"div {res['divergences']}", flush=True)
    print(f"load average at the end: {_load_average()}\n")
    header = (f"{'route':<12}{'runs':>5}{'wall_s':>8}{'cpu_s':>7}{'sample_s':>10}"
              f"{'process_s':>11}"
              f"{'min_ess':>9}{'ess/s':>8}{'max_rhat':>10}{'div':>5}{'warn':>6}")
    print("medians over the runs (max_rhat, div, warn: worst run)")
    print(header)
    print("-" * len(header))
    med: dict[str, dict[str, float]] = {}
    for r, rs in runs.items():
        m = {key: statistics.median(x[key] for x in rs)
             for key in ("wall_s", "cpu_s", "sample_s", "process_s", "min_ess", "ess_per_s")}
        med[r] = m
        print(f"{r:<12}{len(rs):>5}{m['wall_s']:>8.1f}{m['cpu_s']:>7.1f}"
              f"{m['sample_s']:>10.1f}"
              f"{m['process_s']:>11.1f}{m['min_ess']:>9.0f}{m['ess_per_s']:>8.1f}"
              f"{max(x['max_rhat'] for x in rs):>10.3f}{max(x['divergences'] for x in rs):>5d}"
              f"{max(x['diag_warnings'] for x in rs):>6d}")
    if len(med) > 1:
        best = max(med, key=lambda r: med[r]["ess_per_s"])
        print(f"\nhighest ESS/s: {best}; ratios (median wall of the route / {best}):")
        print("  " + ", ".join(f"{r} {med[r]['wall_s'] / med[best]['wall_s']:.2f}x"
                               for r in med))
        print("  alliance:autonomy posterior mean: " + ", ".join(
            f"{r} {statistics.median(x['alliance:autonomy'] for x in rs):.5f}"
            for r, rs in runs.items()))


if __name__ == "__main__":
    main()
