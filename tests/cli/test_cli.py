"""The ``alliance-models`` command: help, one-line errors, --debug, and each subcommand."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliance_models.cli import main

ENTRY = Path(sys.executable).with_name("alliance-models")


def run(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, match: str) -> None:
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("alliance-models: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("demo", "alliance-models demo --out alliance_report"),
        ("fit", "alliance-models fit sessions.csv"),
        ("score", "alliance-models score export.csv --instrument wai-sr --items 'wai_{i}'"),
        ("power", "alliance-models power design.toml --plot power.png"),
    ],
)
def test_each_help_shows_a_worked_example(command, example):
    code, out, _ = run(command, "--help")
    assert code == 0
    assert "worked example:" in out
    assert example in out


def test_top_level_help_lists_commands():
    code, out, _ = run("--help")
    assert code == 0
    for cmd in ("demo", "fit", "score", "power"):
        assert f"alliance-models {cmd}" in out


def test_installed_entry_point_runs():
    exe = ENTRY if ENTRY.exists() else shutil.which("alliance-models")
    assert exe, "the alliance-models entry point is not installed"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("alliance-models ")


# --------------------------------------------------------------------------- errors


def test_usage_error_exits_2():
    code, _, err = run("fit", "data.csv")
    assert code == 2
    assert "the following arguments are required: --formula" in err


def test_no_command_is_a_usage_error():
    code, _, err = run()
    assert code == 2
    assert "required: COMMAND" in err


def test_missing_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.csv"
    code, _, err = run("fit", str(missing), "--formula", "adherence ~ alliance")
    assert_one_line_error(code, err, f"file not found: {missing}")


def test_missing_power_file_is_one_line(tmp_path):
    code, _, err = run("power", str(tmp_path / "design.toml"))
    assert_one_line_error(code, err, "file not found: .*design.toml")


def test_focal_without_moderator_is_a_usage_error(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("adherence,alliance\n0.5,3\n")
    code, _, err = run("fit", str(f), "--formula", "adherence ~ alliance", "--focal", "alliance")
    assert code == 2
    assert "--focal and --moderator go together" in err


def test_debug_shows_the_traceback_in_a_subprocess(tmp_path):
    missing = str(tmp_path / "nope.csv")
    base = [sys.executable, "-m", "alliance_models.cli"]
    plain = subprocess.run(
        [*base, "fit", missing, "--formula", "y ~ x"], capture_output=True, text=True,
        check=False,
    )
    assert plain.returncode == 1
    expected = f"alliance-models: error: file not found: {missing}"
    assert plain.stderr.strip().splitlines() == [expected]
    debug = subprocess.run(
        [*base, "--debug", "fit", missing, "--formula", "y ~ x"], capture_output=True,
        text=True, check=False,
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "FileNotFoundError" in debug.stderr


def test_debug_flag_accepted_after_the_command(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["fit", str(tmp_path / "x.csv"), "--formula", "y ~ x", "--debug"],
             stdout=io.StringIO(), stderr=io.StringIO())


# --------------------------------------------------------------------------- score


def wai_csv(tmp_path: Path, bad: tuple[int, str, object] | None = None) -> Path:
    rng = np.random.default_rng(4)
    df = pd.DataFrame(rng.integers(1, 6, size=(6, 12)), columns=[f"wai_{i}" for i in range(1, 13)])
    df.insert(0, "record_id", [f"p{i}" for i in range(6)])
    if bad is not None:
        row, col, value = bad
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
    path = tmp_path / "wai.csv"
    df.to_csv(path, index=False)
    return path


def test_score_writes_the_scored_file(tmp_path):
    src = wai_csv(tmp_path)
    out = tmp_path / "scored.csv"
    code, stdout, err = run("score", str(src), "--instrument", "wai-sr", "--items", "wai_{i}",
                            "--out", str(out))
    assert code == 0, err
    assert "WAI-SR" in stdout or "wai-sr" in stdout
    scored = pd.read_csv(out)
    items = pd.read_csv(src)[[f"wai_{i}" for i in range(1, 13)]]
    # independent computation: WAI-SR total = sum of 12 items, bond = items 3, 5, 7, 9
    np.testing.assert_allclose(scored["wai_sr_total"], items.sum(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        scored["wai_sr_bond"], items[["wai_3", "wai_5", "wai_7", "wai_9"]].sum(axis=1), atol=1e-12
    )


def test_score_out_of_range_item_is_one_line(tmp_path):
    src = wai_csv(tmp_path, bad=(2, "wai_3", 9))
    code, _, err = run("score", str(src), "--instrument", "wai-sr", "--items", "wai_{i}")
    assert_one_line_error(code, err, r"DataValidationError: .*wai_3.*9")


def test_score_unknown_instrument_is_one_line(tmp_path):
    src = wai_csv(tmp_path)
    code, _, err = run("score", str(src), "--instrument", "wai-xx", "--items", "wai_{i}")
    assert_one_line_error(code, err, "wai-xx")


def test_score_rejects_unknown_output_type(tmp_path):
    src = wai_csv(tmp_path)
    code, _, err = run("score", str(src), "--instrument", "wai-sr", "--items", "wai_{i}",
                       "--out", str(tmp_path / "x.json"))
    assert code == 2
    assert "use a .csv, .xlsx or .parquet file" in err


# --------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def single_level_csv(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    import alliance_models as am

    design = am.Design(therapists=12, patients_per_therapist=10, sessions=1,
                       effects={"alliance": 0.3, "alliance:age": 0.2})
    data = am.simulate(design, seed=8)
    path = tmp_path_factory.mktemp("fit") / "patients.csv"
    data.to_csv(path, index=False)
    return path, pd.read_csv(path)


def test_fit_ols_prints_the_fit_and_probes(tmp_path, single_level_csv):
    import alliance_models as am

    path, data = single_level_csv
    code, out, err = run("fit", str(path), "--method", "ols", "--formula",
                         "adherence ~ alliance * age", "--focal", "alliance",
                         "--moderator", "age", "--report", str(tmp_path / "rep"))
    assert code == 0, err
    fit = am.fit_ols("adherence ~ alliance * age", data)
    assert fit.summary() in out
    ss = am.simple_slopes(fit, focal="alliance", moderator="age", at="meansd")
    assert ss.summary() in out
    jn = am.johnson_neyman(fit, focal="alliance", moderator="age")
    assert jn.summary() in out
    page = (tmp_path / "rep" / "index.html").read_text()
    for section in ("data", "model", "simple-slopes", "johnson-neyman"):
        assert f'<section id="{section}">' in page
    assert "fitting the ols model" in err  # progress on stderr


def test_fit_unknown_column_is_one_line(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--method", "ols", "--formula",
                       "adherence ~ alliance * agee")
    assert_one_line_error(code, err, "ModelSpecError: .*agee")


def test_fit_trials_needs_gee(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--formula", "adherence ~ alliance",
                       "--trials", "scheduled")
    assert code == 2
    assert "--trials is used with --family binomial (mixed), --method gee or --bayes" in err


# --------------------------------------------------------------------------- demo and power


def run_entry(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed entry point in a subprocess (warnings shown, not raised)."""
    exe = ENTRY if ENTRY.exists() else Path(shutil.which("alliance-models") or "")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=900, check=False)


def check_demo_output(proc: subprocess.CompletedProcess, out: Path, bayes: bool,
                      cwd: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    # the DataReport summary, the moderation table and the probing tables go to stdout
    assert "Data preparation report" in stdout and "rows in " in stdout
    assert "Moderation model (REML, Satterthwaite df)" in stdout
    assert "alliance:autonomy_c" in stdout and "alliance:age_c" in stdout
    for mod in ("age_c", "autonomy_c"):
        assert f"Simple slopes of alliance at {mod}" in stdout
        assert f"Johnson-Neyman: alliance by {mod}" in stdout
    assert "Power to detect alliance:autonomy" in stdout
    # the binomial attendance model (sessions attended of scheduled) with odds ratios
    assert "Attendance model (binomial GLMM): sessions attended of scheduled" in stdout
    assert "Odds ratios (exp of the estimates and Wald limits)" in stdout
    assert "Attendance: slope of alliance on the probability scale at autonomy_c" in stdout
    assert ("Bayesian moderation model" in stdout) is bayes
    assert ("Posterior simple slopes of alliance at autonomy_c" in stdout) is bayes
    # progress goes to stderr, with elapsed times
    assert re.search(r"\[\s*\d+\.\ds\] fitting the three-level mixed model", proc.stderr)
    page = (out / "index.html").read_text()
    sections = ["data", "data-report", "model", "simple-slopes", "johnson-neyman", "glmm",
                "power"]
    for sid in sections + (["bayes"] if bayes else []):
        assert f'<section id="{sid}">' in page
    assert ('<section id="bayes">' in page) is bayes
    # the path printed is the report's (relative to the working directory when given so)
    written = re.search(r"^Report written to (.+)$", stdout, re.MULTILINE)
    assert written
    assert (cwd / written.group(1)).resolve() == (out / "index.html").resolve()


def test_demo_quick_without_bayes(tmp_path):
    out = tmp_path / "rep"
    proc = run_entry("demo", "--quick", "--no-bayes", "--out", str(out), cwd=tmp_path)
    check_demo_output(proc, out, bayes=False, cwd=tmp_path)
    assert "quick run: models use the first 12 therapists" in proc.stdout
    # package warnings are shown as single lines, without the source line under them
    warn = [ln for ln in proc.stderr.splitlines() if "MissingDataWarning" in ln]
    assert warn and all(ln.startswith("alliance-models: warning: MissingDataWarning: WAI-SR")
                        for ln in warn)
    assert "warnings.warn" not in proc.stderr and "am.score(" not in proc.stderr


def test_quiet_suppresses_progress(single_level_csv):
    path, _ = single_level_csv
    code, out, err = run("fit", str(path), "--method", "ols", "--formula",
                         "adherence ~ alliance * age", "--quiet")
    assert code == 0
    assert err == ""
    assert "Estimate" in out or "estimate" in out


def test_fit_bayes_in_a_subprocess(tmp_path, single_level_csv):
    path, data = single_level_csv
    proc = run_entry("fit", str(path), "--formula", "adherence ~ alliance * age + (1 | therapist)",
                     "--bayes", "--draws", "150", "--tune", "150", "--chains", "2",
                     "--focal", "alliance", "--moderator", "age",
                     "--report", str(tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Bayesian model" in proc.stdout
    assert "posterior simple slopes of alliance at age" in proc.stdout
    # short chains: any diagnostics warning is one line on stderr, not a traceback
    assert "Traceback" not in proc.stderr
    for line in proc.stderr.splitlines():
        if "DiagnosticsWarning" in line:
            assert line.startswith("alliance-models: warning: DiagnosticsWarning: ")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert '<section id="bayes">' in page and '<section id="model">' in page
    assert page.count("<h3>Simple slopes: effect of alliance by age</h3>") == 1
    assert page.count("<h3>Simple slopes: effect of alliance by age (posterior)</h3>") == 1


@pytest.mark.slow
def test_demo_quick_with_bayes(tmp_path):
    out = tmp_path / "rep"
    proc = run_entry("demo", "--quick", "--out", str(out), cwd=tmp_path)
    check_demo_output(proc, out, bayes=True, cwd=tmp_path)


@pytest.mark.slow
def test_demo_default_settings(tmp_path):
    """What `make demo` runs: the whole example, 4 x 1000 draws, 4 x 200 power replicates."""
    proc = run_entry("demo", cwd=tmp_path)
    check_demo_output(proc, tmp_path / "alliance_report", bayes=True, cwd=tmp_path)
    assert "DiagnosticsWarning" not in proc.stderr


POWER_TOML = """
[design]
therapists = 12
patients_per_therapist = 5
sessions = 3
[design.effects]
alliance = 0.3
"alliance:autonomy" = 0.2

[analysis]
formula = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
test = "alliance:autonomy"
n_sims = 12
seed = 4
n_jobs = 1
"""


def test_power_single_point_matches_the_api(tmp_path):
    import alliance_models as am

    toml = tmp_path / "design.toml"
    toml.write_text(POWER_TOML)
    code, out, err = run("power", str(toml))
    assert code == 0, err
    design = am.Design(therapists=12, patients_per_therapist=5, sessions=3,
                       effects={"alliance": 0.3, "alliance:autonomy": 0.2})
    res = am.power(design, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
                   test="alliance:autonomy", n_sims=12, seed=4, n_jobs=1, progress=False)
    # same seed, same replicates: the printed summary is the API call's (bar the run time)
    expected = [ln for ln in res.summary().splitlines() if "elapsed" not in ln]
    printed = [ln for ln in out.splitlines() if "elapsed" not in ln]
    assert printed[3:] == expected
    assert f"power: {res.power:.3f}" in out
    assert not (tmp_path / "design.png").exists()  # no [curve], no plot


def test_power_curve_writes_the_plot(tmp_path):
    toml = tmp_path / "design.toml"
    toml.write_text(POWER_TOML + '\n[curve]\nvary = { therapists = [8, 16] }\n')
    plot = tmp_path / "plots" / "curve.png"
    code, out, err = run("power", str(toml), "--plot", str(plot))
    assert code == 0, err
    assert f"Power curve written to {plot}" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_power_bad_design_is_one_line(tmp_path):
    toml = tmp_path / "design.toml"
    toml.write_text(POWER_TOML.replace("sessions = 3", "sessions = -2"))
    code, _, err = run("power", str(toml))
    assert_one_line_error(code, err, r"DesignError: sessions must be a positive integer")


def test_power_invalid_toml_is_one_line(tmp_path):
    toml = tmp_path / "design.toml"
    toml.write_text("[design\ntherapists = 3")
    code, _, err = run("power", str(toml))
    assert_one_line_error(code, err, r"DesignError: .*not valid TOML")


def test_fit_gee_binomial_attendance(tmp_path):
    import alliance_models as am

    design = am.Design(therapists=10, patients_per_therapist=6, sessions=4, family="binomial",
                       counts="attendance", trials=3,
                       effects={"alliance": 0.4, "alliance:age": 0.2})
    data = am.simulate(design, seed=5)
    path = tmp_path / "attendance.csv"
    data.to_csv(path, index=False)
    formula = "attended ~ alliance * age + (1 | patient)"
    code, out, err = run("fit", str(path), "--method", "gee", "--trials", "scheduled",
                         "--formula", formula)
    assert code == 0, err
    fit = am.fit_gee(formula, pd.read_csv(path), trials="scheduled")
    assert fit.summary() in out


def test_score_two_instruments_in_one_call(tmp_path):
    src = wai_csv(tmp_path)
    df = pd.read_csv(src)
    for i in (1, 2, 4, 7, 10, 14):
        df[f"hccq_{i}"] = (np.arange(len(df)) % 7) + 1
    df.to_csv(src, index=False)
    out = tmp_path / "scored.csv"
    code, stdout, err = run("score", str(src), "--instrument", "wai-sr", "--items", "wai_{i}",
                            "--instrument", "hccq-short", "--items", "hccq_{i}",
                            "--out", str(out))
    assert code == 0, err
    scored = pd.read_csv(out)
    np.testing.assert_allclose(scored["hccq_short_mean"], (np.arange(len(df)) % 7) + 1)
    assert "wai_sr_total" in scored.columns


def test_score_needs_one_items_per_instrument(tmp_path):
    code, _, err = run("score", str(wai_csv(tmp_path)), "--instrument", "wai-sr",
                       "--instrument", "hccq-short", "--items", "wai_{i}")
    assert code == 2
    assert "give one --items per --instrument (got 2 instrument(s) and 1 --items)" in err


def test_fit_score_needs_prepare(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--formula", "adherence ~ alliance",
                       "--score", "wai-sr=wai_{i}")
    assert code == 2
    assert "--score needs --prepare" in err


def test_fit_score_pair_syntax(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--formula", "adherence ~ alliance", "--prepare",
                       "--score", "wai-sr")
    assert code == 2
    assert "write INSTRUMENT=PATTERN" in err


def test_fit_raw_export_in_one_command(tmp_path):
    """Raw REDCap export -> score -> prepare -> mixed fit, as the --help walk-through says."""
    import alliance_models as am

    formula = "adherence ~ alliance * age_c + (1 | therapist/patient)"
    proc = run_entry("fit", str(am.datasets.example_path()), "--score", "wai-sr=wai_{i}",
                     "--score", "hccq-short=hccq_{i}", "--prorate", "--prepare",
                     "--formula", formula, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same steps through the API give the same model table
    raw = am.read_data(am.datasets.example_path())
    with pytest.warns(am.MissingDataWarning):
        s1, r1 = am.score(raw, "wai-sr", items="wai_{i}", prorate=True, return_report=True)
    s2, r2 = am.score(s1, "hccq-short", items="hccq_{i}", prorate=True, return_report=True)
    data, rep = am.prepare(s2, scoring=[r1, r2])
    assert rep.summary() in proc.stdout
    fit = am.fit_mixed(formula, data)
    fixed = fit.summary().split("Fixed effects:")[1].split("\n\n")[0]
    assert fixed in proc.stdout


def test_fit_probes_at_given_values(single_level_csv):
    import alliance_models as am

    path, data = single_level_csv
    code, out, err = run("fit", str(path), "--method", "ols", "--formula",
                         "adherence ~ alliance * age", "--focal", "alliance",
                         "--moderator", "age", "--at", "30,50,70", "-q")
    assert code == 0, err
    assert "simple slopes of alliance at age (30, 50, 70)" in out
    fit = am.fit_ols("adherence ~ alliance * age", data)
    assert am.simple_slopes(fit, focal="alliance", moderator="age",
                            at=[30.0, 50.0, 70.0]).summary() in out


def test_fit_probes_over_patients(single_level_csv):
    import alliance_models as am

    path, data = single_level_csv
    code, out, err = run("fit", str(path), "--method", "ols", "--formula",
                         "adherence ~ alliance * age", "--focal", "alliance",
                         "--moderator", "age", "--over", "patient", "-q")
    assert code == 0, err
    assert "simple slopes of alliance at age (mean +/- 1 SD over patient)" in out
    fit = am.fit_ols("adherence ~ alliance * age", data)
    assert am.simple_slopes(fit, focal="alliance", moderator="age",
                            over="patient").summary() in out


def test_fit_kenward_roger_df(single_level_csv):
    import alliance_models as am

    path, data = single_level_csv
    formula = "adherence ~ alliance * age + (1 | therapist)"
    code, out, err = run("fit", str(path), "--formula", formula, "--focal", "alliance",
                         "--moderator", "age", "--ddf", "kenward-roger", "-q")
    assert code == 0, err
    fit = am.fit_mixed(formula, data, ddf="kenward-roger")
    assert fit.summary() in out
    assert am.simple_slopes(fit, focal="alliance", moderator="age").summary() in out
    # the Satterthwaite table differs (KR adjusts the SEs), so the option reached the fit
    assert am.fit_mixed(formula, data).summary() not in out


def test_fit_kenward_roger_needs_a_gaussian_mixed_model(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--method", "ols", "--formula",
                       "adherence ~ alliance * age", "--ddf", "kenward-roger")
    assert code == 2
    assert "--ddf kenward-roger applies to gaussian mixed models" in err


def test_fit_bad_at_is_a_usage_error(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--formula", "adherence ~ alliance * age",
                       "--focal", "alliance", "--moderator", "age", "--at", "low,high")
    assert code == 2
    assert "--at 'low,high': use meansd, percentiles or numbers" in err


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "export.csv"
    bad.write_text("")
    code, _, err = run("score", str(bad), "--instrument", "wai-sr", "--items", "wai_{i}")
    assert_one_line_error(code, err, r"DataValidationError: .*export.csv")


def test_directory_instead_of_file_is_one_line(tmp_path):
    code, _, err = run("fit", str(tmp_path), "--formula", "adherence ~ alliance")
    assert code == 1
    assert len(err.strip().splitlines()[-1:]) == 1 and "Traceback" not in err
    assert str(tmp_path) in err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- audit (issue 7)


def test_power_help_example_runs_as_printed(tmp_path, monkeypatch):
    """The design.toml printed in `power --help` is valid and runs unchanged."""
    import textwrap

    _, helptext, _ = run("power", "--help")
    block = helptext.split("with design.toml such as\n")[1].split("\n  prints power")[0]
    toml = tmp_path / "design.toml"
    toml.write_text(textwrap.dedent(block))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("power", "design.toml")
    assert code == 0, err
    # the [curve] table of the help text: 4 designs of 500 replicates, plot next to the TOML
    assert "Power curve for 'alliance:autonomy' over therapists" in out
    assert "500 replicates per point" in out
    rows = re.findall(r"^\s+(\d+)\s+(0\.\d{3}|1\.000)\s+\[", out, re.MULTILINE)
    assert [int(t) for t, _ in rows] == [20, 30, 40, 60]
    powers = [float(p) for _, p in rows]
    assert powers == sorted(powers)  # more therapists, more power (same seed per point)
    assert (tmp_path / "design.png").read_bytes().startswith(b"\x89PNG")
    # long work shows progress on stderr
    assert re.search(r"\[\s*\d+\.\ds\] running the power analysis in design.toml \.\.\.", err)
    assert re.search(r"running the power analysis in design.toml: done in \d+\.\ds", err)


def test_demo_out_that_is_a_file_stops_before_any_work(tmp_path):
    existing = tmp_path / "alliance_report"
    existing.write_text("not a directory")
    code, out, err = run("demo", "--quick", "--no-bayes", "--no-power", "--out", str(existing))
    assert code == 2
    assert err.strip().splitlines() == [
        f"alliance-models demo: error: --out {existing}: exists and is not a directory "
        "(give a directory for index.html, or a path ending in .html)"
    ]
    assert out == ""  # nothing was read or fitted
    assert existing.read_text() == "not a directory"


def test_fit_report_that_is_a_file_stops_before_reading(tmp_path, single_level_csv):
    path, _ = single_level_csv
    existing = tmp_path / "rep"
    existing.write_text("x")
    code, out, err = run("fit", str(path), "--formula", "adherence ~ alliance",
                         "--report", str(existing))
    assert code == 2
    assert f"--report {existing}: exists and is not a directory" in err
    assert "reading" not in err and out == ""
    html_dir = tmp_path / "page.html"
    html_dir.mkdir()
    code, _, err = run("fit", str(path), "--formula", "adherence ~ alliance",
                       "--report", str(html_dir))
    assert code == 2
    assert f"--report {html_dir}: is a directory, not an HTML file" in err


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class _StopSampling(Exception):
    pass


@pytest.fixture
def fake_fit_bayes(monkeypatch):
    """Replace am.fit_bayes by a stub that records its keyword arguments and stops."""
    import alliance_models as am

    calls: list[dict] = []

    def fake(formula, data, **kwargs):
        calls.append(kwargs)
        raise _StopSampling

    monkeypatch.setattr(am, "fit_bayes", fake)
    return calls


@pytest.mark.parametrize(
    ("out_tty", "err_tty", "quiet", "bar"),
    [(True, True, False, True), (False, True, False, False), (True, False, False, False),
     (True, True, True, False)],
)
def test_fit_bayes_progress_bar_only_on_a_terminal(single_level_csv, fake_fit_bayes,
                                                   out_tty, err_tty, quiet, bar):
    """MCMC (the long step) shows the sampler's bar on a terminal; redirected results stay clean.

    PyMC draws its bar on stdout, so it is on only when stdout and stderr are terminals
    and --quiet is not given.
    """
    path, _ = single_level_csv
    out = _Terminal() if out_tty else io.StringIO()
    err = _Terminal() if err_tty else io.StringIO()
    argv = ["--debug", "fit", str(path), "--method", "ols", "--formula",
            "adherence ~ alliance * age", "--bayes"] + (["-q"] if quiet else [])
    with pytest.raises(_StopSampling):
        main(argv, stdout=out, stderr=err)
    assert len(fake_fit_bayes) == 1
    assert fake_fit_bayes[0]["progressbar"] is bar


def test_demo_bayes_progress_bar_on_a_terminal(tmp_path, fake_fit_bayes):
    import alliance_models as am
    from alliance_models.cli.console import Console
    from alliance_models.cli.demo import run_demo

    for out, bar in ((_Terminal(), True), (io.StringIO(), False)):
        with pytest.raises(_StopSampling), pytest.warns(am.MissingDataWarning, match="WAI-SR"):
            run_demo(tmp_path, quick=True, power=False, console=Console(out, _Terminal()))
        assert fake_fit_bayes[-1]["progressbar"] is bar
    assert len(fake_fit_bayes) == 2


@pytest.mark.parametrize("command", ["demo", "fit"])
@pytest.mark.parametrize("seed", ["-1", "1.5", "abc"])
def test_bad_seed_is_a_usage_error_naming_the_option(command, seed):
    argv = [command, "--seed", seed] + (["d.csv", "--formula", "y ~ x"] if command == "fit"
                                         else [])
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert f"argument --seed: {seed!r} is not a non-negative integer" in err


def test_text_typo_in_a_numeric_column_names_rows_and_values(tmp_path, single_level_csv):
    """One stray text cell must not turn alliance into a 100-level factor ("rank deficient")."""
    _, data = single_level_csv
    bad = data.copy()
    bad["alliance"] = bad["alliance"].astype(object)
    for row, value in ((3, "high"), (10, "4,5"), (11, "high")):
        bad.loc[row, "alliance"] = value
    bad.loc[5, "alliance"] = np.nan  # an empty cell is a missing value, not a typo
    path = tmp_path / "typo.csv"
    bad.to_csv(path, index=False)
    code, _, err = run("fit", str(path), "--method", "ols", "--formula",
                       "adherence ~ alliance * age")
    assert_one_line_error(
        code, err,
        r"DataValidationError: column 'alliance' holds numbers but has 3 non-numeric "
        r"value\(s\) in rows 3, 10, 11: 'high', '4,5'; allowed: numbers or an empty cell "
        r"\(missing\); wrap the term in C\(alliance\)")


def test_text_grouping_and_categorical_columns_are_left_alone(tmp_path):
    """Therapist codes and a real text factor are not mistaken for numeric typos."""
    rng = np.random.default_rng(11)
    n = 60
    d = pd.DataFrame({"therapist": [f"T{i % 6}" for i in range(n)],
                      "site": rng.choice(["north", "south", "3"], n),
                      "alliance": rng.normal(50, 8, n)})
    shift = dict(zip([f"T{i}" for i in range(6)], rng.normal(0, 0.3, 6), strict=True))
    d["adherence"] = 0.01 * d["alliance"] + d["therapist"].map(shift) + rng.normal(0, 0.1, n)
    path = tmp_path / "ok.csv"
    d.to_csv(path, index=False)
    code, out, err = run("fit", str(path), "--formula",
                         "adherence ~ alliance + site + (1 | therapist)", "-q")
    assert code == 0, err
    assert "site[T.south]" in out


def test_fit_binomial_mixed_attendance(tmp_path):
    import alliance_models as am

    tests = next(p for p in Path(__file__).resolve().parents if p.name == "tests")
    src = tests / "r" / "glmer_attendance.csv"
    formula = "attended ~ alliance * autonomy_c + (1 | therapist)"
    out_dir = tmp_path / "report"
    code, out, err = run("fit", str(src), "--family", "binomial", "--trials", "scheduled",
                         "--formula", formula, "--focal", "alliance", "--moderator",
                         "autonomy_c", "--report", str(out_dir))
    assert code == 0, err
    fit = am.fit_mixed(formula, pd.read_csv(src), family="binomial", trials="scheduled")
    assert fit.summary(exp=True) in out
    assert "simple slopes of alliance at autonomy_c (mean +/- 1 SD) (probability scale)" in out
    page = (out_dir / "index.html").read_text()
    assert "Odds ratios" in page and "(response scale)" in page


def test_fit_poisson_needs_mixed(single_level_csv):
    path, _ = single_level_csv
    code, _, err = run("fit", str(path), "--method", "gee", "--family", "poisson",
                       "--formula", "adherence ~ alliance")
    assert code == 2 and "--family poisson is fitted by --method mixed only" in err
