"""Does the alliance -> adherence link depend on age and autonomy support?

For a clinical researcher with a questionnaire export. The shipped example stands in for
your own REDCap / SPSS / Excel file: one baseline form per patient (age, HCCQ autonomy
support items) and one form per session (WAI-SR alliance items, attended / scheduled).

Steps: read -> score the questionnaires -> validate and centre (with a report of every
excluded row) -> three-level mixed model (sessions in patients in therapists) ->
probe the interactions (simple slopes, Johnson-Neyman) -> plots -> the same model in a
Bayesian fit -> one HTML report to share.

Run it:
    python examples/analyst_moderation.py           # a minute or two on 2 cores
    python examples/analyst_moderation.py --quick   # small MCMC (CI), well under a minute
    ALLIANCE_EXAMPLES_QUICK=1 python examples/analyst_moderation.py
Outputs go to ./analyst_output/ (change with --outdir).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import alliance_models as am

# Age and autonomy support are grand-mean centred (age_c, autonomy_c, added by
# am.prepare), so the alliance coefficient is the alliance effect for a patient of
# average age and average autonomy support.
FORMULA = "adherence ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)"


def main(quick: bool = False, outdir: Path = Path("analyst_output")) -> None:
    outdir.mkdir(parents=True, exist_ok=True)

    # --- 1. Read the export ------------------------------------------------------------
    # Replace with your file: am.read_data("my_export.csv") (or .xlsx, .sav, .dta).
    # REDCap repeating session forms become one row per session; baseline fields
    # (age, HCCQ) are carried onto each session row.
    raw = am.read_data(am.datasets.example_path())
    print(f"read {len(raw)} rows, columns: {', '.join(map(str, raw.columns[:12]))}, ...")

    # --- 2. Score the questionnaires ---------------------------------------------------
    # WAI-SR (12 items, 1-5): total and goal / task / bond subscales.
    # HCCQ short form (6 items, 1-7): mean score = perceived autonomy support.
    # A value outside an item's range stops here with the column, rows and value.
    # prorate=True: a score with at most one missing item per subscale is the mean of
    # the answered items (scaled up); with more missing it stays missing, and a warning
    # says how many. The scoring reports carry the reason for each missing score.
    scored, wai_report = am.score(raw, "wai-sr", items="wai_{i}", prorate=True,
                                  return_report=True)
    scored, hccq_report = am.score(scored, "hccq-short", items="hccq_{i}", prorate=True,
                                   return_report=True)

    # --- 3. Validate, compute adherence, centre ----------------------------------------
    # Adherence = completed / prescribed home-exercise sessions (diary); the counts are
    # kept for binomial models. The DataReport lists every excluded row and why.
    data, report = am.prepare(scored, scoring=[wai_report, hccq_report])
    print(report.summary())
    if quick:  # CI only: analyse the first 12 therapists to keep the run short
        data = data[data["therapist"].isin(data["therapist"].unique()[:12])]

    # --- 4. The moderation model -------------------------------------------------------
    # REML fit with Satterthwaite degrees of freedom (as lmerTest in R).
    fit = am.fit_mixed(FORMULA, data)
    print(fit.summary())
    fit.to_frame().to_csv(outdir / "mixed_model.csv")

    # --- 5. Probe the interactions -----------------------------------------------------
    # Simple slopes: the alliance effect at the mean of each moderator and +/- 1 SD.
    # Johnson-Neyman: the moderator values at which the alliance effect is significant.
    slopes, regions = {}, {}
    for moderator in ("age_c", "autonomy_c"):
        slopes[moderator] = am.simple_slopes(fit, focal="alliance", moderator=moderator,
                                             at="meansd")
        regions[moderator] = am.johnson_neyman(fit, focal="alliance", moderator=moderator)
        print(slopes[moderator].summary())
        print(regions[moderator].summary())

    # --- 6. Plots for the paper ----------------------------------------------------------
    ax = am.plot_interaction(fit, focal="alliance", moderator="autonomy_c")
    (ax.figure if hasattr(ax, "figure") else ax).savefig(outdir / "interaction_autonomy.png",
                                                         dpi=150)
    ax = am.plot_johnson_neyman(regions["autonomy_c"])
    (ax.figure if hasattr(ax, "figure") else ax).savefig(outdir / "jn_autonomy.png", dpi=150)

    # --- 7. The same model, Bayesian ---------------------------------------------------
    # Weakly informative priors; sampling diagnostics (r_hat, ESS, divergences) are
    # checked and a warning says what to do if they fail. Use more draws for a paper.
    draws = 150 if quick else 1000
    bfit = am.fit_bayes(FORMULA, data, draws=draws, tune=draws, chains=2 if quick else 4,
                        seed=1)
    print(bfit.summary())
    bslopes = am.simple_slopes(bfit, focal="alliance", moderator="autonomy_c", at="meansd")
    print(bslopes.summary())  # posterior medians, HDIs, probability of direction

    # --- 8. One HTML report with everything --------------------------------------------
    path = am.report(outdir / "report", data=data, data_report=report, fit=fit,
                     slopes=slopes, jn=regions, bayes=bfit,
                     title="Alliance and adherence: moderation by age and autonomy support")
    print(f"report written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings for CI")
    parser.add_argument("--outdir", type=Path, default=Path("analyst_output"))
    args = parser.parse_args()
    main(quick=args.quick or os.environ.get("ALLIANCE_EXAMPLES_QUICK") == "1",
         outdir=args.outdir)
