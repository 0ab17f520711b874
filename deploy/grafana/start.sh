#!/bin/sh
# Grafana under docker-compose: its admin password and its read-only InfluxDB token come
# from the files the setup service generated into Grafana's own volume (/run/civic), never
# from a default. Without them, or with a default password, Grafana does not start.
set -eu
dir=${CIVIC_GRAFANA_SECRETS:-/run/civic}  # Grafana's own volume
for f in admin-password influx-token; do
  if [ ! -s "$dir/$f" ]; then
    echo "grafana: $dir/$f is missing or empty: run the setup service (docker compose up setup)" >&2
    exit 1
  fi
done
GF_SECURITY_ADMIN_PASSWORD=$(cat "$dir/admin-password")
CIVIC_INFLUX__TOKEN=$(cat "$dir/influx-token")
case $GF_SECURITY_ADMIN_PASSWORD in
  admin | password | changeme | change-me | change-me-please | grafana)
    echo "grafana: refusing a default admin password in $dir/admin-password" >&2
    exit 1 ;;
esac
if [ ${#GF_SECURITY_ADMIN_PASSWORD} -lt 16 ]; then
  echo "grafana: the admin password in $dir/admin-password is shorter than 16 characters" >&2
  exit 1
fi
# The datasource file expands ${CIVIC_INFLUX__TOKEN} from this environment.
export GF_SECURITY_ADMIN_PASSWORD CIVIC_INFLUX__TOKEN
exec /run.sh "$@"
