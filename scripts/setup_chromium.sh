#!/usr/bin/env bash
# Makes sure a headless Chromium is installed for the dashboard's browser test (idempotent)
# and prints its path as the last line:
#
#   eval "$(bash scripts/setup_chromium.sh | grep -E '^CHROMIUM=')"
#   export ROLEGATE_CHROMIUM="$CHROMIUM"
#
# Installs Debian's `chromium` package (and a font, so that text renders) when no Chromium
# is found; $ROLEGATE_CHROMIUM, when set to an executable, is used as it is. Everything but
# the CHROMIUM= line goes to stderr.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup_chromium: $*" >&2; }

found() {
  if [ -n "${ROLEGATE_CHROMIUM:-}" ] && [ -x "$ROLEGATE_CHROMIUM" ]; then
    echo "$ROLEGATE_CHROMIUM"
    return
  fi
  for candidate in /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
}

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
else
  SUDO=(sudo -n)
fi

CHROMIUM="$(found)"
if [ -z "$CHROMIUM" ]; then
  log "installing chromium from the Debian archive"
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
  CHROMIUM="$(found)"
fi
[ -n "$CHROMIUM" ] || { log "no chromium found after installing it"; exit 1; }

log "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
echo "CHROMIUM=$CHROMIUM"
