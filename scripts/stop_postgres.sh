#!/usr/bin/env bash
# Stop the throw-away PostgreSQL cluster that scripts/start_postgres.sh started (pg_ctl stop -D on its data
# dir, nothing else). With --purge, also delete ${TMPDIR:-/tmp}/nas-pg afterwards.
set -euo pipefail

BASE="${TMPDIR:-/tmp}/nas-pg"
PGDATA="$BASE/data"
PURGE=0
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -n "$BIN" && -x "$BIN/pg_ctl" ]] || { echo "stop_postgres: no pg_ctl under /usr/lib/postgresql/*/bin" >&2; exit 1; }

if [[ $EUID -eq 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if [[ -f "$PGDATA/PG_VERSION" ]] && as_pg "$BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
    as_pg "$BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >&2
    echo "stop_postgres: stopped the cluster in $PGDATA" >&2
else
    echo "stop_postgres: no cluster running in $PGDATA" >&2
fi

if [[ $PURGE -eq 1 && -d "$BASE" ]]; then
    rm -rf "$BASE"
    echo "stop_postgres: removed $BASE" >&2
fi
