#!/usr/bin/env bash
# LiteLLM in its own virtual environment, for benchmarks/bench_run_role.py's comparison only:
# LiteLLM is never a dependency of rolegate and never enters .venv.
#
#   bash benchmarks/setup_litellm.sh [VENV_DIR]
#
# VENV_DIR defaults to $ROLEGATE_LITELLM_VENV, else $HOME/.cache/rolegate-bench/litellm-venv.
# Idempotent: a venv that already holds the pinned version is left alone (a marker file records
# what was installed). The last line printed is the venv's python, for scripts to pick up.
#
# The pin: a fixed, known release. Do not float it (LiteLLM's PyPI releases 1.82.7, 1.82.8 and
# 1.107.0 were compromised and pulled; a pinned, reviewed version is the point), and bump it
# deliberately. Override for an experiment with ROLEGATE_LITELLM_VERSION=X.Y.Z.
set -euo pipefail
VERSION="${ROLEGATE_LITELLM_VERSION:-1.106.0}"
VENV="${1:-${ROLEGATE_LITELLM_VENV:-$HOME/.cache/rolegate-bench/litellm-venv}}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.rolegate-litellm"

if [ -x "$VENV/bin/python" ] && [ "$(cat "$MARKER" 2>/dev/null)" = "litellm==$VERSION" ]; then
  echo "[setup_litellm] litellm $VERSION already in $VENV — skipping" >&2
  echo "$VENV/bin/python"
  exit 0
fi

echo "[setup_litellm] installing litellm $VERSION into $VENV" >&2
mkdir -p "$(dirname "$VENV")"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$MARKER"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
  "litellm==$VERSION" >&2
# The worker imports litellm with these set; check the import works offline before marking.
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False \
  "$VENV/bin/python" -c "import litellm; litellm.Router" >&2
echo "litellm==$VERSION" >"$MARKER"
echo "[setup_litellm] done" >&2
echo "$VENV/bin/python"
