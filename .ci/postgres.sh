#!/usr/bin/env bash
# Start a private PostgreSQL cluster on 127.0.0.1:55432 for the tests (password auth, so a
# wrong password is a real failure) and print the URL the tests read from
# $CLOTHOPT_TEST_POSTGRES. Idempotent: a running cluster is reused.
set -euo pipefail
PORT=${CLOTHOPT_PG_PORT:-55432}
PGDATA=${CLOTHOPT_PGDATA:-/tmp/clothopt-pg}
PASSWORD=${CLOTHOPT_PG_PASSWORD:-pg-Test-7f3e1c}  # distinctive: the password-leak test greps for it
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
run_as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  rm -rf "$PGDATA"
  mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
  pwfile=$(mktemp)
  echo "$PASSWORD" > "$pwfile"
  chmod 644 "$pwfile"
  run_as_pg "$PGBIN/initdb -D $PGDATA -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile=$pwfile" >/dev/null
  rm -f "$pwfile"
  run_as_pg "$PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -o '-h 127.0.0.1 -p $PORT -k /tmp -c max_connections=200' start" >/dev/null
fi
echo "postgresql+psycopg://postgres:${PASSWORD}@127.0.0.1:${PORT}/postgres"
