#!/usr/bin/env bash
# A local PostgreSQL for the store tests, on Debian, run as root (no systemd needed).
#
#   eval "$(.ci/postgres.sh)"    # sets TUNELOOP_TEST_POSTGRES_URL
#
# Idempotent: installs the server only if missing, starts the cluster only if it is down, creates
# the role (CREATEDB, so each test can make its own database) and the database only once.
# Progress goes to stderr; stdout is only the export line.
set -euo pipefail

PG_USER=tuneloop
PG_PASSWORD=tuneloop
PG_DATABASE=tuneloop_test

log() { echo "[postgres.sh] $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "run as root: it installs packages and starts the cluster"
  exit 1
fi

server_installed() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }

if ! server_installed; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

# The first cluster (Debian creates "<version> main" on install); make one if there is none.
read -r PG_VERSION PG_CLUSTER PG_PORT < <(pg_lsclusters --no-header | awk 'NR==1 {print $1, $2, $3}') || true
if [[ -z "${PG_VERSION:-}" ]]; then
  PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  PG_CLUSTER=main
  PG_PORT=5432
  log "creating cluster $PG_VERSION/$PG_CLUSTER"
  pg_createcluster --port "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >&2
fi

cluster_status() { pg_lsclusters --no-header | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}'; }
if [[ $(cluster_status) != online* ]]; then
  log "starting cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2 || service postgresql start >&2
fi

# Startup can take a while on a busy machine.
for _ in $(seq 1 120); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
  log "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT; see /var/log/postgresql/"
  exit 1
fi

# As the postgres superuser, from / (it may not be allowed to read the current directory).
psql_admin() { (cd / && su postgres -c "psql -v ON_ERROR_STOP=1 -qtA -p $PG_PORT -c \"$1\""); }

if [[ -z $(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'") ]]; then
  log "creating role $PG_USER"
  psql_admin "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
else
  # Also repairs a role made earlier by hand without a password or CREATEDB.
  psql_admin "ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
fi

if [[ -z $(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'") ]]; then
  log "creating database $PG_DATABASE"
  psql_admin "CREATE DATABASE $PG_DATABASE OWNER $PG_USER"
fi

# The tests log in with a password over TCP; Debian's default pg_hba.conf allows that on 127.0.0.1.
if ! PGPASSWORD=$PG_PASSWORD psql -qtA -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" \
    -c "SELECT 1" >/dev/null; then
  log "cannot log in as $PG_USER on 127.0.0.1:$PG_PORT; check pg_hba.conf"
  exit 1
fi

echo "export TUNELOOP_TEST_POSTGRES_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE"
