# Two commands do everything: `make demo` and `make test`.
# Both create .venv (with Python >= 3.12, found via pyenv or PATH) and install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEPS := pyproject.toml

.PHONY: demo test test-slow lint venv clean bench

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

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/power_speed.py
	$(PY) benchmarks/bayes_speed.py

clean:
	rm -rf $(VENV) alliance_report .pytest_cache
