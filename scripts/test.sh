#!/usr/bin/env bash
# Sets up everything the test suite needs (idempotent) and runs lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ROLEGATE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]" \
  -e examples/plugins/rolegate-echo
echo "== ruff"; "$VENV/bin/ruff" check src tests benchmarks
echo "== mypy --strict src"; "$VENV/bin/mypy" src
echo "== pytest"; "$VENV/bin/pytest" "$@"
