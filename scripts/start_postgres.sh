#!/usr/bin/env bash
# Start a throw-away PostgreSQL cluster for the store tests and print its URL on the last line.
#
#   NAS_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh | tail -1) python -m pytest tests/test_store.py
#   bash scripts/stop_postgres.sh            # stops exactly this cluster (--purge also deletes it)
#
# The cluster lives in ${TMPDIR:-/tmp}/nas-pg (data in ./data, log in ./postgres.log), listens on 127.0.0.1
# only (first free port from ${NAS_PG_PORT:-55432}), trusts every local connection (no password: never use it
# for anything but tests) and holds a database nas_test. It is run with initdb/pg_ctl from
# /usr/lib/postgresql/*/bin directly, not through the Debian cluster system. As root it runs as the
# `postgres` user; as any other user, as that user. PostgreSQL is installed with apt-get only if missing.
# Running it again while the cluster is up just prints the URL. Progress goes to stderr, the URL to stdout.
set -euo pipefail

BASE="${TMPDIR:-/tmp}/nas-pg"
PGDATA="$BASE/data"
LOG="$BASE/postgres.log"
DB=nas_test
DBUSER=postgres

say() { echo "start_postgres: $*" >&2; }
die() { echo "start_postgres: error: $*" >&2; exit 1; }

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

BIN="$(find_bin)"
if [[ -z "$BIN" || ! -x "$BIN/initdb" || ! -x "$BIN/pg_ctl" ]]; then
    say "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin; installing with apt-get"
    SUDO=""
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to apt-get install postgresql"
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends postgresql >&2 \
        || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends postgresql >&2; } \
        || die "apt-get install postgresql failed"
    BIN="$(find_bin)"
    [[ -n "$BIN" && -x "$BIN/initdb" ]] || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
fi

# Who runs the server: postgres refuses to run as root.
if [[ $EUID -eq 0 ]]; then
    id -u postgres >/dev/null 2>&1 || die "we are root but there is no 'postgres' user to run the server as"
    as_pg() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_pg() { "$@"; }
    OWNER="$(id -un)"
fi

mkdir -p "$BASE"
chown "$OWNER" "$BASE"
chmod 700 "$BASE"
as_pg test -w "$BASE" || die "$OWNER cannot write $BASE (set TMPDIR to a directory $OWNER can reach)"

# One start at a time (two test runs starting together must not both run initdb).
exec 9>"$BASE/.lock"
flock 9

running() { as_pg "$BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! running; then
    if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
        rm -rf "$PGDATA"  # a half-made data dir from an interrupted initdb; it is ours, under $BASE
        say "initdb $PGDATA"
        as_pg "$BIN/initdb" -D "$PGDATA" -U "$DBUSER" --auth=trust -E UTF8 --no-locale >"$BASE/initdb.log" 2>&1 \
            || die "initdb failed; see $BASE/initdb.log"
    fi
    PORT="${NAS_PG_PORT:-55432}"
    for _ in $(seq 1 100); do
        port_in_use "$PORT" || break
        PORT=$((PORT + 1))
    done
    port_in_use "$PORT" && die "no free port in ${NAS_PG_PORT:-55432}..$PORT"
    say "starting PostgreSQL ($BIN) on 127.0.0.1:$PORT, data $PGDATA, log $LOG"
    # 9>&-: the server must not inherit (and so hold forever) the lock of this script.
    as_pg "$BIN/pg_ctl" start -D "$PGDATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$PGDATA" >&2 9>&- \
        || die "pg_ctl start failed; see $LOG"
fi

# The port of the running server, from its pid file (line 4), so a second run reports the same URL.
PORT="$(sed -n 4p "$PGDATA/postmaster.pid")"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "cannot read the port from $PGDATA/postmaster.pid"

psql_() { as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$DBUSER" -d postgres -v ON_ERROR_STOP=1 -qtAX "$@"; }
if [[ "$(psql_ -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]]; then
    say "creating database $DB"
    psql_ -c "CREATE DATABASE $DB" >&2 || die "CREATE DATABASE $DB failed"
fi

echo "postgresql+psycopg://$DBUSER@127.0.0.1:$PORT/$DB"
