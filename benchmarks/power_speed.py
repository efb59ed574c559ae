"""Replicates per second on design R1: batched REML vs a statsmodels loop vs MCPower.

Design R1 (issue 6): 30 therapists x 8 patients x 6 sessions (1,440 rows), random
intercepts for therapist and patient, ``adherence ~ alliance * (age + autonomy)``,
testing ``alliance:autonomy``. Everything is measured in this one run on this machine:

* fast engine: simulate B replicates (vectorised numpy simulator below, seeded) and fit
  them with :func:`alliance_models.models.lmm.batch_fit.fit_batch` (REML, Satterthwaite df
  for the tested term), end to end; also the fit alone, and with the package's own simulator
  (``batch_arrays``) when it is importable;
* statsmodels MixedLM: a loop over replicates (data frame + ``MixedLM`` with a patient
  variance component, REML; Wald z only, it has no small-sample df);
* MCPower (``pip install mcpower``), if importable: ``find_power`` on the same design
  (its own simulator; Satterthwaite df for nested groupings per its documentation).
* ``am.power(design, formula, test="alliance:autonomy", method="auto", n_jobs=1)``: the
  package's public entry point end to end (validation, seeding, the vectorised
  ``batch_arrays`` simulator, batched REML, records and summary) in one thread; then
  with ``n_jobs=-1`` (every core) in the order a session meets them: the first run of the
  session (its wall time includes starting loky worker processes if the package starts
  them), short runs after it (what the package does when workers may not exist yet:
  threads of this process before the redesign of issue 12, loky workers after), one
  long run (it may start loky worker processes; start-up included in its rate), and
  short runs while those
  workers are alive (joblib keeps them for 5 idle minutes), which is the like-for-like
  comparison with MCPower's warm engine on 2 threads.
* the random-slope design: R1 analysed with
  ``(1 + alliance | therapist) + (1 | therapist:patient)`` by ``am.power(n_jobs=1)``,
  the batched engine (``method="auto"``) side by side with the previous route, one
  ``fit_mixed`` per replicate (``method="mixed"``), same seeds.

Binomial line (issue 13): R1 with attendance as the outcome (8 scheduled sessions per
session row, attended ~ Binomial), ``attended ~ alliance * (age + autonomy) +
(1 | therapist/patient)``: ``am.power`` fitting the binomial GLMM (Laplace, lme4's
glmer) to every replicate, one process, side by side with MCPower's GLMM
(``family="logit"``: one Bernoulli outcome per row on the same 1,440-row nested design;
its own simulator).

Timings are repeated and the median is printed; the ratios use the medians.
Run: ``.venv/bin/python benchmarks/power_speed.py [--quick]``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

T, P, S = 30, 8, 6
N = T * P * S
THER = np.repeat(np.arange(T), P * S)
PAT = np.repeat(np.arange(T * P), S)
NAMES = ("Intercept", "alliance", "age", "autonomy", "alliance:age", "alliance:autonomy")
TEST = 5
# standardised alliance/autonomy, age in years (centred at 50 for the simulator only)
BETA = np.array([0.0, 0.25, 0.0, 0.10, 0.05 / 14, 0.10])
SD_THER, SD_PAT = np.sqrt(0.05), np.sqrt(0.30)  # ICCs 0.05 / 0.30 with residual SD ~ 0.8


def simulate_r1(rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    """B replicates of R1 as arrays: X (B, N, 6) and Y (B, N)."""
    al = (0.45 * rng.standard_normal((B, T))[:, THER]
          + 0.7 * rng.standard_normal((B, T * P))[:, PAT]
          + 0.55 * rng.standard_normal((B, N)))
    age = np.clip(rng.normal(50.0, 14.0, (B, T * P)), 18, 85)[:, PAT]
    au = rng.standard_normal((B, T * P))[:, PAT]
    X = np.empty((B, N, 6))
    X[..., 0] = 1.0
    X[..., 1] = al
    X[..., 2] = age
    X[..., 3] = au
    X[..., 4] = al * (age - 50.0)
    X[..., 5] = al * au
    Y = X @ BETA
    Y += SD_THER * rng.standard_normal((B, T))[:, THER]
    Y += SD_PAT * rng.standard_normal((B, T * P))[:, PAT]
    Y += np.sqrt(0.65) * rng.standard_normal((B, N))
    X[..., 4] = al * age  # the analysis uses raw age, as the formula does
    return X, Y


def timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_fast(B: int, repeats: int) -> tuple[float, float]:
    from alliance_models.models.lmm.batch_fit import fit_batch

    rng = np.random.default_rng(1)

    def run() -> None:
        X, Y = simulate_r1(rng, B)
        fit = fit_batch(X, Y, THER, PAT, contrast=TEST)
        assert fit.converged.mean() > 0.99

    X, Y = simulate_r1(np.random.default_rng(2), B)

    def fit_only() -> None:
        fit_batch(X, Y, THER, PAT, contrast=TEST)

    run()  # warm-up
    return B / statistics.median(timed(run, repeats)), B / statistics.median(
        timed(fit_only, repeats))


def bench_package_simulator(B: int, repeats: int) -> float | None:
    try:
        from alliance_models.models.lmm.batch_fit import fit_batch

        try:  # the package's layout, before or after the redesign (issue 12)
            from alliance_models._random import spawn as spawn_seeds
        except ImportError:
            from alliance_models._utils import spawn_seeds
        try:
            from alliance_models.planning.simulate import batch_arrays
        except ImportError:
            from alliance_models.power.simulate import batch_arrays
    except ImportError as err:
        print(f"  package simulator: not importable ({err})")
        return None
    counter = iter(range(10**6))
    try:
        design = _r1_design()
    except Exception as err:  # noqa: BLE001 - report any failure of the other module
        print(f"  package simulator: Design failed ({type(err).__name__}: {err})")
        return None

    def run() -> None:
        seeds = spawn_seeds(next(counter), B)
        X, Y, outer, inner, mask, _ = batch_arrays(design, "adherence", NAMES, seeds,
                                                   sims=False)
        fit_batch(X, Y, outer, inner, mask=None if mask.all() else mask, contrast=TEST)

    try:
        run()
    except Exception as err:  # noqa: BLE001 - report any failure of the other module
        print(f"  package simulator: failed ({type(err).__name__}: {err})")
        return None
    return B / statistics.median(timed(run, repeats))


R1_FORMULA = "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient)"


def _r1_design():  # noqa: ANN202 - the package's Design
    from alliance_models import Design

    return Design(therapists=T, patients_per_therapist=P, sessions=S,
                  moderators={"age": "patient", "autonomy": "patient"},
                  effects={"alliance": 0.25, "autonomy": 0.1, "alliance:autonomy": 0.1})


def bench_am_power(B: int, repeats: int,
                   n_jobs: int = 1) -> tuple[float, float, str, float] | None:
    """Replicates/s of ``am.power(..., method="auto", n_jobs=n_jobs)``, power, engine.

    The last entry is the replicates/s of the untimed warm-up run (the first call).
    """
    try:
        import alliance_models as am

        design = _r1_design()
    except Exception as err:  # noqa: BLE001 - report any failure of the package
        print(f"  am.power: not available ({type(err).__name__}: {err})")
        return None
    seeds = iter(range(10**6))
    last: list = []

    def run() -> None:
        res = am.power(design, R1_FORMULA, test="alliance:autonomy", n_sims=B,
                       method="auto", n_jobs=n_jobs, seed=next(seeds), progress=False)
        last[:] = [res]

    try:
        first = timed(run, 1)[0]  # warm-up (imports, first compilation of code paths)
    except Exception as err:  # noqa: BLE001 - report the failure, do not crash
        print(f"  am.power: failed ({type(err).__name__}: {err})")
        return None
    rate = B / statistics.median(timed(run, repeats))
    res = last[0]
    return rate, float(res.power), str(res.method), B / first


SLOPE_FORMULA = ("adherence ~ alliance * (age + autonomy) + (1 + alliance | therapist) "
                 "+ (1 | therapist:patient)")


def bench_am_power_slope(B: int, repeats: int, method: str) -> tuple[float, str] | None:
    """Replicates/s of ``am.power`` on R1 with the random-slope formula, ``n_jobs=1``."""
    try:
        import alliance_models as am

        design = _r1_design()
    except Exception as err:  # noqa: BLE001 - report any failure of the package
        print(f"  am.power (random slope): not available ({type(err).__name__}: {err})")
        return None
    last: list = []

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singular-fit notes, one per replicate
            res = am.power(design, SLOPE_FORMULA, test="alliance:autonomy", n_sims=B,
                           method=method, n_jobs=1, seed=11, progress=False)
        last[:] = [res]

    try:
        times = timed(run, repeats)
    except Exception as err:  # noqa: BLE001 - report the failure, do not crash
        print(f"  am.power (random slope, {method}): failed ({type(err).__name__}: {err})")
        return None
    return B / statistics.median(times), str(last[0].method)


def bench_am_power_long(B: int) -> float | None:
    """Replicates/s of one long ``am.power(..., n_jobs=-1)`` run, worker start-up included.

    A run this long uses loky worker processes; they stay alive for a few minutes, so
    the runs that follow in this session use them from their first batch.
    """
    try:
        import alliance_models as am
    except ImportError as err:
        print(f"  am.power: not available ({err})")
        return None
    t0 = time.perf_counter()
    am.power(_r1_design(), R1_FORMULA, test="alliance:autonomy", n_sims=B, method="auto",
             n_jobs=-1, seed=99, progress=False)
    wall = time.perf_counter() - t0
    return B / wall


def bench_statsmodels(B: int, repeats: int) -> float:
    import pandas as pd
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    X, Y = simulate_r1(rng, B)
    frames = [
        pd.DataFrame({"adherence": Y[b], "alliance": X[b, :, 1], "age": X[b, :, 2],
                      "autonomy": X[b, :, 3], "therapist": THER, "patient": PAT})
        for b in range(B)
    ]

    def run() -> None:
        for d in frames:
            md = smf.mixedlm("adherence ~ alliance * (age + autonomy)", d, groups="therapist",
                             re_formula="1", vc_formula={"patient": "0 + C(patient)"})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                md.fit(reml=True, method="lbfgs")

    return B / statistics.median(timed(run, repeats))


def bench_mcpower(B: int, repeats: int) -> float | None:
    try:
        import mcpower
    except ImportError:
        print("  MCPower: not installed (pip install mcpower)")
        return None
    try:
        from mcpower import _engine

        _engine.set_n_threads(2)
    except Exception as err:  # noqa: BLE001
        print(f"  MCPower: could not pin threads ({err}); using its default")
    try:
        m = mcpower.MCPower(
            "adherence ~ alliance + age + autonomy + alliance:age + alliance:autonomy"
            " + (1|therapist/patient)", family="lme")
        m.set_cluster("therapist", ICC=0.05, n_clusters=T)
        m.set_cluster("therapist:patient", ICC=0.30, n_per_parent=P)
        m.set_effects("alliance=0.25, age=0.0, autonomy=0.1, alliance:age=0.05, "
                      "alliance:autonomy=0.1")
        m.set_simulations(B)
        seeds = iter(range(1, 10**6))

        def run() -> None:
            m.set_seed(next(seeds))
            m.find_power(N, target_test="alliance:autonomy", verbose=False,
                         progress_callback=False)

        run()
        print(f"  MCPower {mcpower.__version__}: power at R1 = "
              f"{_mc_power(m, N):.3f} (its own simulator)")
        return B / statistics.median(timed(run, repeats))
    except Exception as err:  # noqa: BLE001 - report the API failure, do not crash
        print(f"  MCPower: failed ({type(err).__name__}: {err})")
        return None


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
    quick = "--quick" in sys.argv
    reps = 3 if quick else 5
    B_fast = 500 if quick else 2000
    B_sm = 5 if quick else 20
    B_mc = 500 if quick else 2000
    import alliance_models

    print(f"R1: {T} therapists x {P} patients x {S} sessions = {N} rows; "
          "adherence ~ alliance * (age + autonomy) + (1 | therapist/patient); "
          "test alliance:autonomy")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"alliance_models {alliance_models.__version__}, cores {os.cpu_count()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"medians of {reps} timings")

    fast_e2e, fast_fit = bench_fast(B_fast, reps)
    print(f"  fast engine, simulate + fit + df ({B_fast} replicates): {fast_e2e:9.1f} rep/s")
    print(f"  fast engine, fit + df only        ({B_fast} replicates): {fast_fit:9.1f} rep/s")
    pkg = bench_package_simulator(500 if quick else 1000, reps)
    if pkg is not None:
        print(f"  fast engine with am's batch_arrays simulator:        {pkg:9.1f} rep/s")
    B_am = 500 if quick else 2000
    amp = bench_am_power(B_am, reps)
    if amp is not None:
        print(f"  am.power(method='auto', n_jobs=1) ({B_am} replicates):  "
              f"{amp[0]:9.1f} rep/s   (engine {amp[2]!r}, power {amp[1]:.3f})")
    amp2 = bench_am_power(B_am, reps, n_jobs=-1)
    if amp2 is not None:
        print(f"  am.power(n_jobs=-1), the first run of the session ({B_am} replicates): "
              f"{amp2[3]:9.1f} rep/s")
        print(f"  am.power(n_jobs=-1), no worker processes yet: threads ({B_am} replicates): "
              f"{amp2[0]:9.1f} rep/s")
    B_long = 5000 if quick else 20000
    long_rate = bench_am_power_long(B_long)
    if long_rate is not None:
        print(f"  am.power(n_jobs=-1), one long run ({B_long} replicates, starts workers): "
              f"{long_rate:9.1f} rep/s")
    amp3 = bench_am_power(B_am, reps, n_jobs=-1)
    if amp3 is not None:
        print(f"  am.power(n_jobs=-1), workers started ({B_am} replicates):  "
              f"{amp3[0]:9.1f} rep/s   (power {amp3[1]:.3f})")
    B_sl, B_slm = (100, 4) if quick else (500, 10)
    sl_fast = bench_am_power_slope(B_sl, reps, "auto")
    sl_mixed = bench_am_power_slope(B_slm, 1 if quick else 3, "mixed")
    if sl_fast is not None:
        print(f"  am.power, random slope, batched (engine {sl_fast[1]!r}, {B_sl} replicates): "
              f"{sl_fast[0]:9.1f} rep/s")
    if sl_mixed is not None:
        print(f"  am.power, random slope, fit_mixed per replicate ({B_slm} replicates): "
              f"{sl_mixed[0]:9.2f} rep/s")
    sm = bench_statsmodels(B_sm, max(1, reps // 2) if not quick else 1)
    print(f"  statsmodels MixedLM loop ({B_sm} replicates, no df):      {sm:9.2f} rep/s")
    mc = bench_mcpower(B_mc, reps)
    if mc is not None:
        print(f"  MCPower find_power ({B_mc} replicates):               {mc:9.1f} rep/s")
    print("ratios")
    print(f"  fast (end to end) / statsmodels loop: {fast_e2e / sm:8.1f}x   (goal >= 100x)")
    if mc is not None:
        print(f"  fast (end to end, 1 thread) / MCPower (2 threads): {fast_e2e / mc:5.2f}x")
    else:
        print("  fast / MCPower: MCPower unavailable")
    if amp is not None and mc is not None:
        print(f"  am.power n_jobs=1 / MCPower:                   {amp[0] / mc:8.2f}x")
    if amp2 is not None and mc is not None:
        print(f"  am.power n_jobs=-1, threads / MCPower:         {amp2[0] / mc:8.2f}x")
    if long_rate is not None and mc is not None:
        print(f"  am.power n_jobs=-1, long run / MCPower:        {long_rate / mc:8.2f}x")
    if amp3 is not None and mc is not None:
        print(f"  am.power n_jobs=-1, workers started / MCPower: {amp3[0] / mc:8.2f}x"
              "   (goal >= 1x: both on 2 cores, engines warm)")
    if sl_fast is not None and sl_mixed is not None:
        ratio = sl_fast[0] / sl_mixed[0]
        print(f"  random slope: batched / fit_mixed per replicate:  {ratio:8.1f}x")
    B_glmm, B_mc_glmm = (5, 50) if quick else (20, 200)
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
    if amp is not None:
        print(f"  am.power n_jobs=1 / fast engine with the benchmark's simulator: "
              f"{amp[0] / fast_e2e:5.2f}x")
        if pkg is not None:
            print(f"  am.power n_jobs=1 / fast engine with am's batch_arrays simulator: "
                  f"{amp[0] / pkg:5.2f}x")

if __name__ == "__main__":
    main()
