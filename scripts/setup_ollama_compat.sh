#!/usr/bin/env bash
# Idempotent install of a third-party Ollama-protocol server that fronts an OpenAI-compatible
# upstream (llama-server): PyPI `ollama-proxy-plus` 0.1.0 (github.com/skamalj/ollama-proxy, MIT).
#
#   usage: setup_ollama_compat.sh CACHE_DIR        e.g. ~/.cache/rolegate-ci/ollama-compat
#
# Env overrides:
#   PYTHON=python3                    interpreter (>= 3.10) used to create the venv
#   OLLAMA_PROXY_PLUS_VERSION=0.1.0   PyPI version
#   OLLAMA_COMPAT_PIN=1               1 = pin the dependency versions verified on 2026-11-23 (see below);
#                                     0 = let pip resolve freely
#
# Layout (CACHE_DIR):
#   venv-<version>/                   venv with ollama-proxy-plus (console script bin/ollama-proxy)
#   venv-<version>/.rolegate-ok       marker written only after a successful install + import check
#   run/                              empty working dir (the proxy reads ./ollama-proxy.yaml from CWD)
#   start-ollama-compat.sh            wrapper: start-ollama-compat.sh UPSTREAM_V1_URL PORT MODEL[,MODEL...] [HOST]
#
# stdout (machine-readable, nothing else is printed there):
#   OLLAMA_COMPAT_START=/abs/CACHE_DIR/start-ollama-compat.sh
#   OLLAMA_COMPAT_BIN=/abs/CACHE_DIR/venv-<version>/bin/ollama-proxy
#
# Start example (llama-server on 18080 started with `-a gemma3-270m`; the proxy listens on 18434):
#   "$OLLAMA_COMPAT_START" http://127.0.0.1:18080/v1 18434 gemma3-270m &
#   -> ollama clients must use the model name "llama/gemma3-270m" (prefix "llama/" = the provider
#      registered by the wrapper; the part after the prefix is sent upstream as `model`).
#   Ready when `GET http://127.0.0.1:18434/` returns 200 "Ollama is running" (~1-2 s).
set -euo pipefail

CACHE=${1:?usage: setup_ollama_compat.sh CACHE_DIR}
PYTHON=${PYTHON:-python3}
VERSION=${OLLAMA_PROXY_PLUS_VERSION:-0.1.0}
PIN=${OLLAMA_COMPAT_PIN:-1}

log() { echo "[setup_ollama_compat] $*" >&2; }

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
VENV="$CACHE/venv-$VERSION"
MARK="$VENV/.rolegate-ok"
mkdir -p "$CACHE/run"

if [ -f "$MARK" ] && [ -x "$VENV/bin/ollama-proxy" ] \
   && PYTHON_DOTENV_DISABLED=1 "$VENV/bin/python" -c 'import ollama_proxy.server' >/dev/null 2>&1; then
  log "already installed: $VENV"
else
  "$PYTHON" - <<'EOF' || { log "need Python >= 3.10 (set PYTHON=...)"; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF
  T0=$(date +%s)
  CONSTRAINTS=()
  if [ "$PIN" = "1" ]; then
    # Versions verified together on 2026-11-23 (Python 3.11.7).
    cat >"$CACHE/constraints.txt" <<'EOF'
fastapi==0.165.0
starlette==1.10.0
uvicorn==0.54.0
openai==3.54.0
httpx==0.28.1
pydantic==2.14.3
python-dotenv==1.2.4
PyYAML==6.0.3
EOF
    CONSTRAINTS=(-c "$CACHE/constraints.txt")
  fi
  log "installing ollama-proxy-plus==$VERSION into $VENV"
  # venvs are not relocatable (absolute shebangs): build in place; the marker is written last,
  # so an interrupted install is wiped and redone on the next run.
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check -q "${CONSTRAINTS[@]}" \
      "ollama-proxy-plus==$VERSION" >&2
  PYTHON_DOTENV_DISABLED=1 "$VENV/bin/python" -c 'import ollama_proxy.server' >&2
  "$VENV/bin/pip" freeze --disable-pip-version-check >"$VENV/freeze.txt" 2>/dev/null || true
  touch "$MARK"
  log "installed in $(( $(date +%s) - T0 )) s"
fi

START="$CACHE/start-ollama-compat.sh"
cat >"$START.tmp" <<EOF
#!/usr/bin/env bash
# usage: start-ollama-compat.sh UPSTREAM_V1_URL PORT MODEL[,MODEL...] [HOST]
# Runs ollama-proxy-plus $VERSION in the foreground (exec) with a scrubbed environment:
#  - provider "llama" -> UPSTREAM_V1_URL (OpenAI-compatible, e.g. http://127.0.0.1:18080/v1)
#  - /api/tags lists llama/<MODEL> for each MODEL (plus ~38 hard-coded cloud model names)
#  - no inherited OPENAI_API_KEY/PROVIDERS_*/.env/ollama-proxy.yaml can leak in
# Upstream API key: \$OLLAMA_COMPAT_UPSTREAM_KEY (default "EMPTY").
set -euo pipefail
UPSTREAM=\${1:?usage: start-ollama-compat.sh UPSTREAM_V1_URL PORT MODEL[,MODEL...] [HOST]}
PORT=\${2:?port}
MODELS=\${3:?model name(s) as served upstream, comma separated}
HOST=\${4:-127.0.0.1}
EXTRA=\$(printf '%s' "\$MODELS" | tr ',' '\n' | sed '/^\$/d; s#^#llama/#' | paste -sd, -)
cd "$CACHE/run"
exec env -i PATH=/usr/bin:/bin HOME="$CACHE/run" LANG=C.UTF-8 \\
  PYTHON_DOTENV_DISABLED=1 \\
  PROVIDERS_LLAMA_BASE_URL="\$UPSTREAM" \\
  PROVIDERS_LLAMA_API_KEY="\${OLLAMA_COMPAT_UPSTREAM_KEY:-EMPTY}" \\
  EXTRA_MODELS="\$EXTRA" \\
  "$VENV/bin/ollama-proxy" --host "\$HOST" --port "\$PORT"
EOF
chmod +x "$START.tmp"
mv -f "$START.tmp" "$START"

echo "OLLAMA_COMPAT_START=$START"
echo "OLLAMA_COMPAT_BIN=$VENV/bin/ollama-proxy"
