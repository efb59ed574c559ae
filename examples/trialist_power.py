"""Planning a trial: how many therapists do we need to detect a moderation effect?

For a trialist planning a study of the therapeutic alliance in physiotherapy. We ask:
with patients nested in therapists and about 8 sessions each, how many therapists (of
10 patients each) are needed for 80% power to detect that autonomy support moderates
the alliance -> adherence link (the ``alliance:autonomy`` interaction)?

Effects are standardised (residual-SD units, see ``help(am.Design)``):
    alliance            0.25  (alliance-outcome r of about .25, Flueckiger et al. 2018)
    alliance:autonomy   0.05  (no published value; 0.05-0.10 is a plausible range, and
                               a trial should be powered for the small end)

Run it:
    python examples/trialist_power.py            # about a minute on 2 cores
    python examples/trialist_power.py --quick    # small settings (CI), a few seconds
    ALLIANCE_EXAMPLES_QUICK=1 python examples/trialist_power.py
It writes power_curve.png (and, unless --quick, searches for the sample size).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import alliance_models as am

FORMULA = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
TEST = "alliance:autonomy"


def main(quick: bool = False, outdir: Path = Path(".")) -> None:
    # --- 1. Describe the planned trial ------------------------------------------------
    # 40 therapists, 10 patients each, sessions per patient vary (negative binomial,
    # mean 8), 15% of patients drop out. Therapists explain 5% of adherence variance,
    # patients (within therapist) 30%.
    design = am.Design(
        therapists=40,
        patients_per_therapist=10,
        sessions=("negbin", 8, 4),
        icc_therapist=0.05,
        icc_patient=0.30,
        dropout=0.15,
        effects={"alliance": 0.25, "autonomy": 0.10, TEST: 0.05},
    )
    print("Planned trial:", design.describe())

    # --- 2. Look at one simulated trial -----------------------------------------------
    # The simulator returns the same columns as am.prepare() gives for real data, so
    # the analysis model is exactly the one you will run on the trial's data.
    one = am.simulate(design, seed=2024)
    print(f"\nOne simulated trial: {len(one)} sessions from "
          f"{one['patient'].nunique()} patients of {one['therapist'].nunique()} therapists")
    fit = am.fit_mixed(FORMULA, one)
    print(fit.summary())

    # --- 3. Power at the planned size -------------------------------------------------
    # Each replicate simulates a trial, fits the model and tests the interaction.
    # Seeds are spawned from `seed`, so the result is reproducible with any n_jobs.
    n_sims = 40 if quick else 300
    t0 = time.perf_counter()
    res = am.power(design, FORMULA, test=TEST, n_sims=n_sims, seed=1, n_jobs=1)
    print(f"\nPower at 40 therapists ({n_sims} simulated trials, "
          f"{time.perf_counter() - t0:.1f}s):")
    print(res.summary())

    # --- 4. A power curve over the number of therapists -------------------------------
    therapists = [20, 80] if quick else [20, 40, 60, 80, 100, 120]
    curve = am.power_curve(
        design, FORMULA, test=TEST, vary={"therapists": therapists},
        n_sims=20 if quick else 200, seed=1,
    )
    print("\nPower curve:")
    print(curve.summary())
    fig = curve.plot()
    path = outdir / "power_curve.png"
    (fig.figure if hasattr(fig, "figure") else fig).savefig(path, dpi=120)
    print(f"power curve written to {path}")

    # --- 5. The smallest number of therapists for 80% power ---------------------------
    # A bisection over 10, 15, ..., 200 therapists (a handful of power runs, not a grid).
    if not quick:
        need = am.sample_size(
            design, FORMULA, test=TEST, target=0.8, vary="therapists", lo=10, hi=200,
            step=5, n_sims=200, seed=1
        )
        print("\nSample size:")
        print(need.summary())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings for CI")
    parser.add_argument("--outdir", type=Path, default=Path("."), help="where to write plots")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("ALLIANCE_EXAMPLES_QUICK") == "1"
    args.outdir.mkdir(parents=True, exist_ok=True)
    main(quick=quick, outdir=args.outdir)
