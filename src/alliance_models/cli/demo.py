"""The demo pipeline behind ``alliance-models demo`` and ``make demo``.

It runs the analyst's whole job on the shipped example export (about 40 therapists and
400 patients, REDCap style): read -> score WAI-SR and HCCQ-6 -> validate, reshape and
centre (DataReport) -> three-level mixed moderation model -> simple slopes and
Johnson-Neyman for age and autonomy support -> the binomial attendance model (sessions
attended of scheduled, lme4's glmer) with slopes on the probability scale -> the same
model in PyMC -> a short power curve for a planned trial -> one self-contained HTML
report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import Console

__all__ = ["ATTENDANCE_FORMULA", "DEMO_FORMULA", "DemoSettings", "run_demo"]

#: The moderation model of the demo: does the alliance effect on adherence depend on
#: (grand-mean centred) age and autonomy support? Sessions in patients in therapists.
DEMO_FORMULA = "adherence ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)"

#: The attendance model: sessions attended out of scheduled per patient (binomial, logit
#: link; ``am.prepare(..., adherence="attendance", level="patient")`` sums the counts),
#: with the patient random intercept taking up overdispersion between patients.
ATTENDANCE_FORMULA = "attended ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)"

#: Moderators probed (centred columns added by ``am.prepare``).
DEMO_MODERATORS = ("age_c", "autonomy_c")

#: The power curve fits the very same formula to every simulated trial (``am.simulate``
#: returns the columns ``am.prepare`` gives, centred moderators included) and tests the
#: alliance x autonomy-support interaction.
POWER_FORMULA = DEMO_FORMULA
POWER_TEST = "alliance:autonomy_c"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo's slow parts.

    Attributes
    ----------
    draws, tune, chains : int
        MCMC settings of the Bayesian fit.
    n_sims : int
        Replicates per point of the power curve.
    therapists : tuple of int
        Numbers of therapists on the power curve.
    max_therapists : int or None
        Analyse only the first this many therapists of the example (quick runs).
    """

    # 4 chains x 1000 draws is what the package's own diagnostics need on the example
    # (bulk ESS >= 400 for every reported parameter; 2 x 400 gave ESS ~100 and a
    # DiagnosticsWarning before the random intercepts were integrated out; now the
    # smallest is ~7,000). Measured 19-43 s end to end on 2 busy cores (sampler "auto",
    # nutpie; benchmarks/results/bayes_speed.txt).
    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    # the batched REML engine runs 4 x 200 replicates in about 4-15 s
    n_sims: int = 200
    therapists: tuple[int, ...] = (20, 40, 60, 80)
    max_therapists: int | None = None

    @classmethod
    def quick(cls) -> DemoSettings:
        """Small settings for smoke tests and CI (seconds rather than minutes).

        Examples
        --------
        >>> DemoSettings.quick().n_sims < DemoSettings().n_sims
        True
        """
        return cls(draws=150, tune=150, chains=2, n_sims=20, therapists=(20, 60),
                   max_therapists=12)


def run_demo(
    out: str | os.PathLike[str] = "alliance_report",
    *,
    quick: bool = False,
    bayes: bool = True,
    power: bool = True,
    seed: int = 1,
    settings: DemoSettings | None = None,
    console: Console | None = None,
) -> Path:
    """Run the whole analysis on the shipped example data and write the HTML report.

    Parameters
    ----------
    out : str or path-like
        Directory for ``index.html``.
    quick : bool
        Use :meth:`DemoSettings.quick` (ignored when ``settings`` is given).
    bayes : bool
        Fit the Bayesian model.
    power : bool
        Run the power curve.
    seed : int
        Seed for the MCMC and the power replicates.
    settings : DemoSettings, optional
        Explicit sizes of the slow parts.
    console : Console, optional
        Where results (stdout) and progress (stderr) go.

    Returns
    -------
    pathlib.Path
        The report file.

    Examples
    --------
    >>> from alliance_models.cli.demo import run_demo
    >>> path = run_demo("alliance_report", quick=True, bayes=False)  # doctest: +SKIP
    """
    import pandas as pd

    import alliance_models as am

    from ..reporting.html import report

    con = console if console is not None else Console()
    cfg = settings if settings is not None else (DemoSettings.quick() if quick else DemoSettings())

    # 1. data: read the REDCap-style export, score the questionnaires, prepare
    with con.timed("reading the example export"):
        raw = am.read_data(am.datasets.example_path())
    # Pro-rate a score with at most one missing item per subscale (person-mean
    # imputation, standard for these questionnaires); the scoring reports give the
    # DataReport the reason for every score that stayed missing.
    with con.timed("scoring WAI-SR (alliance) and HCCQ-6 (autonomy support)"):
        scored, wai = am.score(raw, "wai-sr", items="wai_{i}", prorate=True,
                               return_report=True)
        scored, hccq = am.score(scored, "hccq-short", items="hccq_{i}", prorate=True,
                                return_report=True)
    with con.timed("validating, reshaping and centring"):
        data, data_report = am.prepare(scored, scoring=[wai, hccq])
    con.heading("Data preparation report")
    con.print(data_report.summary())
    if cfg.max_therapists is not None:
        keep = pd.unique(data["therapist"])[: cfg.max_therapists]
        data = data[data["therapist"].isin(keep)].reset_index(drop=True)
        con.print(f"(quick run: models use the first {len(keep)} therapists, {len(data)} sessions)")

    # 2. the mixed moderation model
    with con.timed("fitting the three-level mixed model (REML)"):
        fit = am.fit_mixed(DEMO_FORMULA, data)
    con.heading("Moderation model (REML, Satterthwaite df)")
    con.print(fit.summary())

    # 3. probing
    slopes: dict[str, Any] = {}
    jns: dict[str, Any] = {}
    with con.timed("probing the interactions"):
        for mod in DEMO_MODERATORS:
            slopes[mod] = am.simple_slopes(fit, focal="alliance", moderator=mod, at="meansd")
            jns[mod] = am.johnson_neyman(fit, focal="alliance", moderator=mod)
    for mod in DEMO_MODERATORS:
        con.heading(f"Simple slopes of alliance at {mod} (mean and +/- 1 SD)")
        con.print(slopes[mod].summary())
        con.heading(f"Johnson-Neyman: alliance by {mod}")
        con.print(jns[mod].summary())

    # 3b. attendance: a binomial mixed model of sessions attended out of scheduled
    with con.timed("fitting the binomial attendance model (Laplace, as lme4's glmer)"):
        attendance, _ = am.prepare(scored, scoring=[wai, hccq], adherence="attendance",
                                   level="patient")
        if cfg.max_therapists is not None:
            attendance = attendance[attendance["therapist"].isin(keep)].reset_index(drop=True)
        gfit = am.fit_mixed(ATTENDANCE_FORMULA, attendance, family="binomial",
                            trials="scheduled")
    con.heading("Attendance model (binomial GLMM): sessions attended of scheduled")
    con.print(gfit.summary(exp=True))
    gslopes = {}
    for mod in DEMO_MODERATORS:
        gslopes[mod] = am.simple_slopes(gfit, focal="alliance", moderator=mod, at="meansd",
                                        scale="response")
        con.heading(f"Attendance: slope of alliance on the probability scale at {mod}")
        con.print(gslopes[mod].summary())

    # 4. the same model in PyMC
    bfit = None
    if bayes:
        with con.timed(
            f"sampling the Bayesian model ({cfg.chains} chains x {cfg.draws} draws, "
            f"{cfg.tune} tuning)"
        ):
            bfit = am.fit_bayes(
                DEMO_FORMULA, data, draws=cfg.draws, tune=cfg.tune, chains=cfg.chains, seed=seed,
                progressbar=con.live,  # the sampler's bar on a terminal
            )
        con.heading("Bayesian moderation model")
        con.print(bfit.summary())
        for mod in DEMO_MODERATORS:
            post = am.simple_slopes(bfit, focal="alliance", moderator=mod, at="meansd")
            slopes[f"{mod} (posterior)"] = post
            con.heading(f"Posterior simple slopes of alliance at {mod}")
            con.print(post.summary())

    # 5. a short power curve for a planned trial
    curve = None
    if power:
        design = am.Design(
            therapists=cfg.therapists[0],
            patients_per_therapist=10,
            sessions=8,
            effects={"alliance": 0.25, "autonomy": 0.1, "alliance:autonomy": 0.05},
        )
        with con.timed(
            f"power curve: {len(cfg.therapists)} designs x {cfg.n_sims} simulated trials"
        ):
            curve = am.power_curve(
                design,
                POWER_FORMULA,
                test=POWER_TEST,
                vary={"therapists": list(cfg.therapists)},
                n_sims=cfg.n_sims,
                seed=seed,
            )
        con.heading(f"Power to detect {POWER_TEST} (standardised effect 0.05) in a planned "
                    "trial with 10 patients per therapist and 8 sessions each")
        con.print(curve.summary())

    # 6. the report
    with con.timed("writing the HTML report"):
        path = report(
            out,
            data=data,
            data_report=data_report,
            fit=fit,
            slopes=slopes,
            jn=jns,
            bayes=bfit,
            power=curve,
            glmm=gfit,
            glmm_slopes=gslopes,
            title="alliance_models demo: alliance, age, autonomy support and adherence",
            notes=(
                "Shipped example data (simulated, REDCap-style export). Model: "
                f"{DEMO_FORMULA}; attendance model (one row per patient, binomial): "
                f"{ATTENDANCE_FORMULA}. Moderators are grand-mean centred."
                + (
                    f" Quick run: the models use the first {cfg.max_therapists} therapists "
                    f"only, MCMC {cfg.chains} x {cfg.draws} draws, {cfg.n_sims} power "
                    "replicates per design (too few for conclusions)."
                    if quick and settings is None
                    else ""
                )
            ),
        )
    return path
