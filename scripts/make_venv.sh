#!/usr/bin/env bash
# Create the project venv with a Python >= 3.12 and install the package with all extras,
# at the versions in constraints.txt (the versions the test suite passed with).
# With LOCK=0 the constraints are not applied (used by `make lock` to resolve afresh).
set -euo pipefail
VENV="${1:-.venv}"
find_python() {
  local c
  for c in "${PYTHON:-}" python3.12 python3.13 python3 python; do
    [ -z "$c" ] && continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local v
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])' | sort -rV); do
      local p; p="$(pyenv root)/versions/$v/bin/python3"
      if [ -x "$p" ]; then echo "$p"; return 0; fi
    done
  fi
  return 1
}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)'; then
  :
else
  PYBIN="$(find_python)" || { echo "error: alliance_models needs Python >= 3.12 (PyMC 6 / ArviZ 1.x). Install it (e.g. 'pyenv install 3.12') and run make again." >&2; exit 1; }
  echo "creating $VENV with $PYBIN ($("$PYBIN" --version))"
  rm -rf "$VENV"
  "$PYBIN" -m venv "$VENV"
fi
CONSTRAINTS=()
if [ "${LOCK:-1}" != 0 ] && [ -f constraints.txt ]; then CONSTRAINTS=(-c constraints.txt); fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${CONSTRAINTS[@]}" -e ".[io,dask,fast,dev,docs]"
