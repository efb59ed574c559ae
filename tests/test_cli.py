"""The ``alliance-models`` command: help, one-line errors, --debug, and each subcommand."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
