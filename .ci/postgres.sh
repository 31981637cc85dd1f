#!/usr/bin/env bash
# Start a PostgreSQL server on loopback for the cross-machine search test and print the URL to use.
#   export HARNESS_TEST_POSTGRES_URL=$(bash .ci/postgres.sh)
# Installs Debian's postgresql when missing (needs root, as on CI); idempotent.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
bin=/usr/lib/postgresql/$ver/bin
data=/var/tmp/harness-pg
port=${HARNESS_PG_PORT:-55432}
if [ ! -s "$data/PG_VERSION" ]; then
  mkdir -p "$data" && chown postgres:postgres "$data"
  su postgres -c "$bin/initdb -D $data -A trust -U postgres" >/dev/null
fi
if ! su postgres -c "$bin/pg_ctl -D $data status" >/dev/null 2>&1; then
  su postgres -c "$bin/pg_ctl -D $data -l $data/server.log -w -o '-c listen_addresses=127.0.0.1 -p $port -k /tmp' start" >&2
fi
psql() { su postgres -c "$bin/psql -h 127.0.0.1 -p $port -U postgres -qtAc \"$1\""; }
[ "$(psql "SELECT 1 FROM pg_database WHERE datname='harness_test'")" = 1 ] || psql "CREATE DATABASE harness_test" >&2
echo "postgresql+psycopg2://postgres@127.0.0.1:$port/harness_test"
