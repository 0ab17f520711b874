#!/usr/bin/env bash
# Build Telegraf (the peer of bench/pipeline.py) from the Go module proxy, once per version.
#
# Prints the path of the binary, cached outside the repo beside influxd, under
# $(civic_cache_dir)/telegraf-<version>/ (deploy/cache.sh). Only the plugins the benchmark
# uses are compiled in (Telegraf's `custom` build tag): the MQTT consumer, the InfluxDB v2
# output and the JSON parser. A cold build takes about a minute on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../deploy/cache.sh
. "$here/../deploy/cache.sh"
version=${CIVIC_TELEGRAF_VERSION:-v1.37.2}
tags=custom,inputs.mqtt_consumer,outputs.influxdb_v2,parsers.json
out="$(civic_cache_dir)/telegraf-$version"
if [[ -x "$out/telegraf" ]]; then
  echo "$out/telegraf"
  exit 0
fi
command -v go >/dev/null || { echo "telegraf build: 'go' not found on PATH" >&2; exit 1; }
mkdir -p "$out"
log="$out/build.log"
echo "telegraf build: building telegraf $version (log: $log)" >&2
(
  # go install puts the binary in GOBIN; a temporary one, so a failed build leaves none.
  GOBIN="$out/bin.tmp" go install -trimpath -ldflags "-s -w" -tags "$tags" \
    "github.com/influxdata/telegraf/cmd/telegraf@$version"
  mv "$out/bin.tmp/telegraf" "$out/telegraf"
  rmdir "$out/bin.tmp"
) >"$log" 2>&1 || { echo "telegraf build: failed, see $log" >&2; tail -20 "$log" >&2; exit 1; }
echo "$out/telegraf"
