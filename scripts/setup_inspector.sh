#!/usr/bin/env bash
# Installs the MCP Inspector CLI into a project-local cache (idempotent) and prints the
# path of its binary on stdout; everything else goes to stderr.
#
#   INSPECTOR="$(scripts/setup_inspector.sh)"
#   "$INSPECTOR" --cli "$(command -v python)" -m rolegate serve --method tools/list
#
# The version is pinned: @modelcontextprotocol/inspector 0.15.0 is the newest release that
# runs on node 20 (later 2.x releases need node >= 22.19). Override with
# ROLEGATE_INSPECTOR_VERSION and the location with ROLEGATE_INSPECTOR_DIR
# (default .ci-cache/inspector, which is gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${ROLEGATE_INSPECTOR_VERSION:-0.15.0}"
DIR="${ROLEGATE_INSPECTOR_DIR:-$PWD/.ci-cache/inspector}"
PKG="@modelcontextprotocol/inspector"
BIN="$DIR/node_modules/.bin/mcp-inspector"

log() { echo "setup_inspector: $*" >&2; }

command -v node >/dev/null 2>&1 || { log "node is not installed (need node >= 20)"; exit 1; }
command -v npm >/dev/null 2>&1 || { log "npm is not installed"; exit 1; }
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  log "node $(node --version) is too old; the inspector needs node >= 20"
  exit 1
fi

installed_version() {
  local manifest="$DIR/node_modules/$PKG/package.json"
  [ -f "$manifest" ] && node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null || true
}

if [ -x "$BIN" ] && [ "$(installed_version)" = "$VERSION" ]; then
  log "$PKG@$VERSION already installed in $DIR"
else
  log "installing $PKG@$VERSION into $DIR (node $(node --version))"
  mkdir -p "$DIR"
  if [ ! -f "$DIR/package.json" ]; then
    printf '{\n  "name": "rolegate-inspector-cache",\n  "private": true\n}\n' >"$DIR/package.json"
  fi
  npm install --prefix "$DIR" --save-exact --no-audit --no-fund --loglevel=error \
    "$PKG@$VERSION" >&2
  [ -x "$BIN" ] || { log "install finished but $BIN is missing"; exit 1; }
  got="$(installed_version)"
  [ "$got" = "$VERSION" ] || { log "expected $PKG@$VERSION, got ${got:-nothing}"; exit 1; }
fi

echo "$BIN"
