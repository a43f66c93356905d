#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the store's tests (slipway-db) and prints its
# URL on stdout. Installs Debian's postgresql if needed, creates the cluster under
# $SLIPWAY_PG_DIR (default /tmp/slipway-pg) owned by the `postgres` user, trusts local
# connections, and listens on 127.0.0.1:$SLIPWAY_PG_PORT (default 25432: below the
# ephemeral range, so no outgoing connection can hold it) only.
#
# Idempotent; run as root:   url=$(bash scripts/setup-postgres.sh)
# Then:                      SLIPWAY_TEST_POSTGRES_URL=$url cargo test -p slipway-db
# Stop it:                   bash scripts/setup-postgres.sh --stop
set -euo pipefail

DIR=${SLIPWAY_PG_DIR:-/tmp/slipway-pg}
PORT=${SLIPWAY_PG_PORT:-25432}
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

log() { echo "setup-postgres: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run as root (installs packages, runs the server as the postgres user)"
    exit 1
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
# The newest installed major version.
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
as_pg() { su postgres -s /bin/sh -c "$1"; }

if [ "${1:-}" = "--stop" ]; then
    if [ -f "$DIR/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl -D '$DIR/data' -m fast -w stop" >&2
    fi
    exit 0
fi

mkdir -p "$DIR"
chown postgres "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
    log "initdb in $DIR/data"
    as_pg "$BIN/initdb -D '$DIR/data' -A trust -U postgres --no-instructions" >&2
fi

if as_pg "$BIN/pg_ctl -D '$DIR/data' status" >/dev/null 2>&1; then
    log "already running on 127.0.0.1:$PORT"
else
    log "starting on 127.0.0.1:$PORT"
    # fsync stays on: the crash-safety tests rely on committed data surviving.
    as_pg "$BIN/pg_ctl -D '$DIR/data' -l '$DIR/log' -w -t 60 \
        -o \"-p $PORT -k '$DIR' -c listen_addresses=127.0.0.1 -c max_connections=300\" start" >&2
fi

for _ in $(seq 1 50); do
    if "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q; then
        echo "$URL"
        exit 0
    fi
    sleep 0.2
done
log "PostgreSQL did not become ready; its log:"
tail -n 50 "$DIR/log" >&2 || true
exit 1
