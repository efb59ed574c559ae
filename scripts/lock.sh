#!/usr/bin/env bash
# Refresh constraints.txt: resolve the newest versions pyproject.toml allows in a fresh venv,
# run the default test suite against them, and only then write the versions to constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=.venv-lock
rm -rf "$TMP"
LOCK=0 bash scripts/make_venv.sh "$TMP"
"$TMP/bin/python" -m pytest -q
{
  echo "# Versions the test suite passed with ($("$TMP/bin/python" --version), $(date -u +%F))."
  echo "# make test / make demo install from this file; refresh with 'make lock'."
  "$TMP/bin/python" -m pip freeze --exclude-editable | grep -v '^-e ' | LC_ALL=C sort -f
} > constraints.txt
rm -rf "$TMP"
echo "constraints.txt refreshed; commit it"
