#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for the ledger tests and prints its URL (idempotent).
#
#   export ROLEGATE_TEST_PG_URL="$(scripts/setup_postgres.sh)"
#
# Installs Debian's `postgresql` package when no server binaries are found, then runs a
# cluster of its own (not the distribution's `main` one) as the `postgres` OS user in
# $ROLEGATE_PG_DIR (default /tmp/rolegate-pg), listening on 127.0.0.1:$ROLEGATE_PG_PORT
# (default 55432) with trust auth: for tests on one machine only, never for real data.
# Everything but the URL goes to stderr so that the command substitution above works.
set -euo pipefail

PORT="${ROLEGATE_PG_PORT:-55432}"
BASE="${ROLEGATE_PG_DIR:-/tmp/rolegate-pg}"
DATA="$BASE/data"
DB=rolegate_test
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup_postgres: $*" >&2; }

bindir() {
  # A cluster must run with the major version that created it; otherwise take the newest.
  if [ -f "$DATA/PG_VERSION" ] && [ -x "/usr/lib/postgresql/$(cat "$DATA/PG_VERSION")/bin/initdb" ]; then
    echo "/usr/lib/postgresql/$(cat "$DATA/PG_VERSION")/bin"
    return
  fi
  find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1
}

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
  AS_PG=(runuser -u postgres --)
else
  # Not root: install through sudo if needed, run the cluster as ourselves (initdb refuses root).
  SUDO=(sudo -n)
  AS_PG=()
fi

BIN="$(bindir)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  log "installing postgresql from the Debian archive"
  "${SUDO[@]}" apt-get update -qq >&2
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN="$(bindir)"
fi
[ -n "$BIN" ] && [ -x "$BIN/initdb" ] || { log "no initdb found under /usr/lib/postgresql"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { log "the postgres OS user is missing"; exit 1; }
  mkdir -p "$BASE"
  chown postgres: "$BASE"
else
  mkdir -p "$BASE"
fi
chmod 700 "$BASE"

if [ ! -f "$DATA/PG_VERSION" ]; then
  log "initdb in $DATA"
  "${AS_PG[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
    --no-instructions >&2
  # Our own socket directory: /var/run/postgresql may not exist outside a packaged cluster.
  cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BASE'
max_connections = 200
EOF
fi

if "${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "already running on port $PORT"
else
  log "starting on 127.0.0.1:$PORT (log: $BASE/server.log)"
  "${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$BASE/server.log" -w -t 60 start >&2
fi

PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1)
if [ "$("${PSQL[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  log "creating database $DB"
  "${PSQL[@]}" -c "CREATE DATABASE $DB" >&2
fi

echo "postgresql://postgres@127.0.0.1:$PORT/$DB"
