#!/usr/bin/env bash
# Runs the test suite: lint, then pytest against SQLite and a throw-away PostgreSQL on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
pg_url=$(bash scripts/start_postgres.sh | tail -n 1)
trap 'bash scripts/stop_postgres.sh >/dev/null 2>&1 || true' EXIT
export NAS_TEST_POSTGRES_URL="$pg_url"
python3 -m pytest tests "$@"
