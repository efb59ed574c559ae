"""Shared fixtures: headless matplotlib and a small prepared copy of the example data.

Fixtures are session-scoped so that reading, scoring and preparing the shipped export
happens once per test run.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

#: Therapists kept in the small example subset (fast fits in default tests).
SMALL_THERAPISTS = 12


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test leaves open."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def example_raw() -> pd.DataFrame:
    """The shipped REDCap-style example export, read and flattened by ``am.read_data``."""
    import alliance_models as am

    return am.read_data(am.datasets.example_path())


@pytest.fixture(scope="session")
def example_prepared(example_raw):
    """``(data, DataReport)`` of the example export, scored and prepared as in the demo."""
    import alliance_models as am

    # The shipped export has some forms with missing items, as real exports do: scoring
    # pro-rates up to one missing item per subscale and warns about the rest.
    with pytest.warns(am.MissingDataWarning, match="WAI-SR"):
        scored, wai = am.score(example_raw, "wai-sr", items="wai_{i}", prorate=True,
                               return_report=True)
    scored, hccq = am.score(scored, "hccq-short", items="hccq_{i}", prorate=True,
                            return_report=True)
    return am.prepare(scored, scoring=[wai, hccq])


@pytest.fixture(scope="session")
def example_data(example_prepared) -> pd.DataFrame:
    """Prepared example data (canonical long format, one row per session)."""
    return example_prepared[0]


@pytest.fixture(scope="session")
def small_example(example_data) -> pd.DataFrame:
    """The prepared example restricted to its first ``SMALL_THERAPISTS`` therapists."""
    keep = pd.unique(example_data["therapist"])[:SMALL_THERAPISTS]
    return example_data[example_data["therapist"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="session")
def small_design_data() -> pd.DataFrame:
    """A small simulated three-level data set (8 therapists x 4 patients x 3 sessions)."""
    import alliance_models as am

    design = am.Design(therapists=8, patients_per_therapist=4, sessions=3,
                       effects={"alliance": 0.4, "autonomy": 0.1, "alliance:autonomy": 0.2})
    return am.simulate(design, seed=21)


@pytest.fixture(scope="session")
def small_bayes_fit(small_design_data):
    """A deliberately short PyMC fit (2 chains x 150 draws) for report and plot tests.

    Diagnostic thresholds are relaxed to what such a short run can meet, and a
    DiagnosticsWarning is not raised (how many divergences one seed gives depends on the
    CPU and BLAS kernel); tests of the sampler's quality live with the Bayesian backend
    (tests/models/bayes/), not here.
    """
    import alliance_models as am

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", am.DiagnosticsWarning)
        return am.fit_bayes("adherence ~ alliance * autonomy + (1 | therapist)",
                            small_design_data, draws=150, tune=150, chains=2, seed=3,
                            sampler="pymc", ess_min=20, rhat_max=1.2)


@pytest.fixture(scope="session")
def small_power_curve():
    """A two-point power curve with a few replicates (engine chosen by ``method="auto"``)."""
    import alliance_models as am

    design = am.Design(therapists=10, patients_per_therapist=4, sessions=3,
                       effects={"alliance": 0.3, "alliance:autonomy": 0.3})
    return am.power_curve(design, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
                          test="alliance:autonomy", vary={"therapists": [10, 20]}, n_sims=10,
                          seed=2, n_jobs=1, progress=False)


@pytest.fixture(scope="session")
def full_report(tmp_path_factory, example_prepared, small_example, small_bayes_fit,
                small_power_curve):
    """An HTML report with every section: data, DataReport, mixed fit, probing, Bayes, power.

    The mixed model is fitted to the small example subset; returns ``(path, parts)``.
    """
    import alliance_models as am

    _, data_report = example_prepared
    fit = am.fit_mixed("adherence ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)",
                       small_example)
    slopes = {m: am.simple_slopes(fit, focal="alliance", moderator=m, at="meansd")
              for m in ("age_c", "autonomy_c")}
    jns = {m: am.johnson_neyman(fit, focal="alliance", moderator=m)
           for m in ("age_c", "autonomy_c")}
    out = tmp_path_factory.mktemp("full_report")
    path = am.report(out, data=small_example, data_report=data_report, fit=fit, slopes=slopes,
                     jn=jns, bayes=small_bayes_fit, power=small_power_curve,
                     title="Full report <test>", notes="Notes & caveats")
    parts = {"fit": fit, "slopes": slopes, "jn": jns, "bayes": small_bayes_fit,
             "power": small_power_curve, "data_report": data_report}
    return path, parts
