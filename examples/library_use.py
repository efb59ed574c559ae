"""Using alliance_models as a library: the building blocks, one at a time.

For a statistician or methods-minded researcher who wants to plug the pieces into their
own pipeline rather than run the whole analysis: register your own questionnaire,
parse a formula once and reuse it, fit the same model with several backends, probe
any of them with the same calls, work with the small fit interface directly, and check
a simulated power against the analytic formula.

Run it:
    python examples/library_use.py            # under a minute on 2 cores
    python examples/library_use.py --quick    # small settings (CI)
    ALLIANCE_EXAMPLES_QUICK=1 python examples/library_use.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

import alliance_models as am
from alliance_models.models.interface import FixedEffectsFit


def main(quick: bool = False, outdir: Path = Path(".")) -> None:
    # --- 1. Your own questionnaire -------------------------------------------------------
    # Register a scoring key once (items, response range, reversed items, subscales);
    # score() then validates and scores it like the built-in WAI / HCCQ / EARS keys.
    # (A made-up 4-item "clinic climate" scale, 1-5, item 3 negatively worded.)
    am.register_instrument(
        "clinic-climate", items=[1, 2, 3, 4], min=1, max=5, reversed=[3],
        subscales={"staff": [1, 2], "space": [3, 4]}, method="mean",
        name="Clinic climate (example)", replace=True,
    )
    forms = pd.DataFrame({"cc_1": [5, 4, 2], "cc_2": [4, 4, 1], "cc_3": [1, 2, 5],
                          "cc_4": [5, 3, 2]})
    print(am.score(forms, "clinic-climate", items="cc_{i}").to_string())

    # --- 2. A formula is parsed once into a ModelSpec ------------------------------------
    # Every backend, probe and power run works from this one specification.
    spec = am.parse_formula("adherence ~ alliance * autonomy + (1 | therapist/patient)")
    print(f"\nModelSpec: response={spec.response!r}, fixed={spec.fixed!r}, "
          f"random={[str(t) for t in spec.random]}")

    # --- 3. Data with known effects ------------------------------------------------------
    # am.simulate gives the canonical columns (therapist, patient, session, alliance,
    # age, autonomy, adherence, ...) that am.prepare gives for real data.
    design = am.Design(therapists=20 if quick else 40, patients_per_therapist=8,
                       sessions=4 if quick else 8,
                       effects={"alliance": 0.3, "autonomy": 0.1, "alliance:autonomy": 0.15})
    data = am.simulate(design, seed=11)
    frame = spec.build(data)
    print(f"design matrix: {frame.X.shape[0]} rows x {len(frame.x_names)} columns "
          f"{list(frame.x_names)}")

    # --- 4. The same model, three ways ---------------------------------------------------
    # Mixed model (REML, Satterthwaite df), and for comparison a single-level OLS on
    # patient means (PROCESS model 1 with HC3 SEs) that ignores the session level.
    mixed = am.fit_mixed(spec.formula, data)
    patients = data.groupby(["therapist", "patient"], observed=True, as_index=False)[
        ["adherence", "alliance", "autonomy"]].mean()
    ols = am.fit_ols("adherence ~ alliance * autonomy", patients, hc="HC3")
    both = pd.DataFrame({"mixed": mixed.params, "ols (patient means)": ols.params})
    print("\nFixed effects from two backends:")
    print(both.round(4))

    # --- 5. One set of probing calls for every fit ---------------------------------------
    for name, fit in (("mixed", mixed), ("ols", ols)):
        ss = am.simple_slopes(fit, focal="alliance", moderator="autonomy", at=[-1.0, 0.0, 1.0])
        print(f"\n[{name}] " + ss.summary())
    ce = am.conditional_effects(mixed, focal="alliance", moderator="autonomy", n_points=5)
    print("\nPredicted adherence (fixed part) with 95% bands:")
    print(ce.to_frame().head(10).round(3).to_string(index=False))

    # --- 6. The fit interface: write your own contrast -----------------------------------
    # Every fit satisfies FixedEffectsFit: params, cov_params(), contrast_df(L).
    # Here: the alliance slope at autonomy = +1 SD minus the slope at -1 SD, by hand.
    assert isinstance(mixed, FixedEffectsFit)
    names = list(mixed.params.index)
    L = np.zeros(len(names))
    L[names.index("alliance:autonomy")] = 2.0
    est = float(L @ mixed.params.to_numpy())
    se = float(np.sqrt(L @ mixed.cov_params().to_numpy() @ L))
    df = mixed.contrast_df(L)
    print(f"\nslope(+1 SD) - slope(-1 SD) = {est:.3f} (SE {se:.3f}, Satterthwaite df {df:.1f})")

    # --- 7. Simulated power agrees with the analytic formula ------------------------------
    # A balanced cluster-randomised trial (therapists randomised, arm effect d = 0.5):
    # the noncentral-t power is exact there, so simulation should agree within its
    # Monte Carlo error.
    crt = am.Design(therapists=20, patients_per_therapist=10, sessions=1,
                    randomisation="therapist", icc_therapist=0.05, icc_patient=0.0,
                    effects={"arm": 0.5})
    exact = am.design_power(crt, test="arm")
    n_sims = 40 if quick else 300
    sim = am.power(crt, "adherence ~ arm + (1 | therapist)", test="arm", n_sims=n_sims,
                   seed=5, n_jobs=1)
    print(f"\nanalytic power {exact:.3f}; simulated ({n_sims} trials):")
    print(sim.summary())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings for CI")
    parser.add_argument("--outdir", type=Path, default=Path("."), help="(unused; for symmetry)")
    args = parser.parse_args()
    main(quick=args.quick or os.environ.get("ALLIANCE_EXAMPLES_QUICK") == "1",
         outdir=args.outdir)
