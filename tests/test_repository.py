"""The repository stands on its own: docs name no outside path, installs are reproducible."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_readme_and_docs_name_no_path_outside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"\.\./|shared/", text), f"{path.name} points outside the repository"
        for ref in re.findall(r"`((?:docs|tests|examples|benchmarks|scripts)/[\w./-]*)`", text):
            assert (ROOT / ref.rstrip("/")).exists(), f"{path.name} names missing {ref}"


def test_every_dependency_has_a_major_version_bound():
    for req in _requirements():
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), (
            f"{req} has no upper bound in pyproject.toml"
        )


def test_constraints_pin_every_dependency_within_its_bounds():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {req}"


def test_make_installs_from_the_constraints_file():
    script = (ROOT / "scripts" / "make_venv.sh").read_text()
    assert "-c constraints.txt" in script
    deps = re.search(r"^DEPS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert deps and "constraints.txt" in deps.group(1).split()  # a new lock reinstalls


def test_portable_target_names_existing_test_paths():
    # make test-portable (run by CI) must not point at test files that have moved
    line = re.search(r"^PORTABLE_TESTS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert line
    for path in line.group(1).split():
        assert (ROOT / path).exists(), f"Makefile PORTABLE_TESTS names missing {path}"
