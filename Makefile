# Two commands do everything: `make demo` and `make test`.
# Both create .venv (with Python >= 3.12, found via pyenv or PATH) and install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPS := pyproject.toml constraints.txt

.PHONY: demo test test-slow test-portable lint lock venv clean bench docs docs-check

$(STAMP): $(DEPS)
	@bash scripts/make_venv.sh $(VENV)
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alliance-models demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The mixed-model tests and the Bayesian fits again under numerically different set-ups:
# OpenBLAS's generic SSE kernel (Prescott; runs on any x86-64 CPU, rounds differently from
# the Haswell/SkylakeX kernels chosen by default), one BLAS thread, and another hash seed.
# (The rest of tests/models/bayes, model building and calibration, took 95 s more on a slow
# 2-core machine, where the whole CI run came within 4 minutes of its 20-minute budget.)
PORTABLE_TESTS := tests/test_mixed.py tests/models/lmm tests/models/bayes/test_bayes_fit.py
test-portable: $(STAMP)
	OPENBLAS_CORETYPE=Prescott OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=20261203 $(PY) -m pytest -q $(PORTABLE_TESTS)

# Refresh constraints.txt from the newest versions pyproject.toml allows (after the tests pass).
lock:
	bash scripts/lock.sh

# The documentation site (mkdocs.yml): executes the tutorials, fails on any warning or broken link.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 MPLBACKEND=Agg $(VENV)/bin/mkdocs build --strict

# Build the site, then open every page in headless Chromium (tests/docs/test_docs_site.py).
docs-check: docs
	ALLIANCE_DOCS_SITE=site $(PY) -m pytest -q -m slow tests/docs/test_docs_site.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/power_speed.py
	$(PY) benchmarks/bayes_speed.py

clean:
	rm -rf $(VENV) .venv-lock alliance_report .pytest_cache site
