#!/usr/bin/env bash
# A local PostgreSQL server for tests/distributed/test_shared_study.py (a shared Optuna study).
# Debian's packages; the server listens on 127.0.0.1:5432 with role/password docclassify and
# database optuna, i.e. the test's default URL
#   postgresql://docclassify:docclassify@127.0.0.1:5432/optuna
# (override the test's URL with DOCCLASSIFY_TEST_PG_URL). Idempotent: safe to run again.
# Needs root (or sudo) for apt-get and for acting as the postgres system user.
set -euo pipefail

PG_USER=docclassify
PG_PASSWORD=docclassify
PG_DB=optuna
PG_PORT=5432

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# The server packages (postgresql-common brings pg_lsclusters/pg_ctlcluster).
if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends postgresql postgresql-client
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -1)
# A cluster on PG_PORT (Debian's package creates "main"; a container image may not have).
if ! pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p {found=1} END {exit !found}'; then
  as_root pg_createcluster --port "$PG_PORT" "$version" main
fi
read -r cl_version cl_name cl_status < <(pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p {print $1, $2, $4; exit}')
if [ "$cl_status" != "online" ]; then
  as_root pg_ctlcluster "$cl_version" "$cl_name" start
fi
for _ in $(seq 1 30); do
  if pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then break; fi
  sleep 1
done
pg_isready -h 127.0.0.1 -p "$PG_PORT"

# Role and database (password login over TCP on localhost: Debian's pg_hba.conf allows it).
psql_pg() { as_postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -tAc "$1"; }
if [ "$(psql_pg "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
  psql_pg "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'"
fi
if [ "$(psql_pg "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
  psql_pg "CREATE DATABASE $PG_DB OWNER $PG_USER"
fi
echo "PostgreSQL ready: postgresql://$PG_USER:***@127.0.0.1:$PG_PORT/$PG_DB"
