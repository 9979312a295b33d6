#!/bin/sh
# Runs once, when the stand-in operator database is first initialised (docker-entrypoint-initdb.d).
# Creates the connector's login role with the password Kafka Connect will read from the same
# secret; `feedstore source check --apply` (the source-setup service) grants it the rest.
set -eu
password=$(sed -n 's/^password=//p' /run/secrets/source-db.properties)
if [ -z "$password" ]; then
    echo "deploy/secrets/source-db.properties must contain a line password=..." >&2
    exit 1
fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$password" <<'SQL'
CREATE ROLE debezium WITH LOGIN PASSWORD :'pw';
SQL
