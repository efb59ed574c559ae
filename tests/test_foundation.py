"""The foundation of issue 2: packaging metadata, the two-command Makefile, the venv script,
the CI entry point and the docstring examples of the data adapters.

The shell scripts are run with fake executables first on PATH (a Python that is too old, a
``make`` that fails), so the tests check their real exit codes and messages without
creating a virtual environment or running the suite recursively.
"""

import doctest
import importlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --------------------------------------------------------------------------- packaging


def test_python_version_and_requires_python():
    assert (ROOT / ".python-version").read_text().strip() == "3.12"
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.12"
    assert sys.version_info >= (3, 12)


def test_runtime_dependencies_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}

    runtime = names(meta["dependencies"])
    assert {"numpy", "pandas", "scipy", "statsmodels", "pymc", "arviz", "matplotlib"} <= runtime
    extras = meta["optional-dependencies"]
    assert {"pyreadstat", "openpyxl"} <= names(extras["io"])
    assert any(r.startswith("dask[distributed]") for r in extras["dask"])
    assert names(extras["fast"]) == {"nutpie"}
    assert {"pytest", "hypothesis", "ruff", "mypy"} <= names(extras["dev"])
    # the example export is package data, so load_example works from an installed wheel
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "datasets/*.csv" in data["package-data"]["alliance_models"]


def test_error_tree():
    from alliance_models import errors

    assert issubclass(errors.DataValidationError, errors.AllianceModelsError)
    assert issubclass(errors.DataValidationError, ValueError)
    assert issubclass(errors.MissingDataWarning, errors.AllianceModelsWarning)


# --------------------------------------------------------------------------- two commands


def test_readme_and_makefile_give_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    env = {**os.environ, "MAKEFLAGS": ""}
    test = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert test.returncode == 0, test.stderr
    # both targets first build the venv with the script, then run ruff and pytest / the demo
    assert "scripts/make_venv.sh .venv" in test.stdout
    assert ".venv/bin/python -m ruff check ." in test.stdout
    assert ".venv/bin/python -m pytest" in test.stdout
    demo = subprocess.run(
        ["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert demo.returncode == 0, demo.stderr
    assert "scripts/make_venv.sh .venv" in demo.stdout
    assert ".venv/bin/alliance-models demo" in demo.stdout


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_make_venv_fails_clearly_without_python_312(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # every python on PATH is 3.11: the version probe exits 1
    for name in ("python3", "python", "python3.12", "python3.13"):
        _fake(bin_dir, name, "exit 1")
    # pyenv knows only 3.11
    _fake(bin_dir, "pyenv", 'case "$1" in versions) echo 3.11.9;; root) echo /nonexistent;; esac')
    for tool in ("grep", "sort"):
        real = shutil.which(tool)
        assert real is not None
        (bin_dir / tool).symlink_to(real)
    res = subprocess.run(
        [BASH, str(ROOT / "scripts/make_venv.sh"), str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )
    assert res.returncode == 1
    assert "needs Python >= 3.12" in res.stderr and "pyenv install 3.12" in res.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("status", [0, 3])
def test_ci_run_calls_make_test_and_passes_its_exit_status_on(tmp_path, status):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "make.log"
    _fake(bin_dir, "make", f'echo "$PWD $* $MPLBACKEND" >> {log}\nexit {status}')
    _fake(bin_dir, "chromium", "exit 0")  # so .ci/run does not try to apt-get it
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(
        [BASH, str(ROOT / ".ci/run")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == status
    # make test runs first, in the repository, with a headless backend; a failure stops
    # the run there, a pass goes on to the second-BLAS-kernel run and the docs site check
    calls = [line.split() for line in log.read_text().splitlines()]
    assert calls[0] == [str(ROOT), "test", "Agg"]
    assert calls[1:] == ([[str(ROOT), "test-portable", "Agg"], [str(ROOT), "docs-check", "Agg"]]
                         if status == 0 else [])


# --------------------------------------------------------------------------- docstrings


@pytest.mark.parametrize(
    "module",
    [
        "alliance_models.errors",
        "alliance_models.data.readers",
        "alliance_models.data.redcap",
        "alliance_models.data.prepare",
        "alliance_models.data.data_report",
        "alliance_models.data.reshape",
        "alliance_models.datasets",
        "alliance_models.datasets._simulate_study",
        "alliance_models.instruments",
    ],
)
def test_docstring_examples_of_the_data_adapters_run(module):
    res = doctest.testmod(
        importlib.import_module(module),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert res.attempted > 0 and res.failed == 0


def test_every_public_name_resolves():
    import types

    import alliance_models as am

    for name in am.__all__:
        obj = getattr(am, name)
        if name in am._LAZY:
            if isinstance(obj, types.ModuleType):
                assert obj.__name__ == am._LAZY[name], name
            else:
                # defined (or re-exported) by the module that _LAZY names
                assert getattr(importlib.import_module(am._LAZY[name]), name) is obj, name
    assert set(am._LAZY) <= set(dir(am))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        am.nope  # noqa: B018
