#!/usr/bin/env bash
# The native civic-iot stack: Mosquitto, Apache Kafka (KRaft) and InfluxDB 2.7 on loopback.
#
#   deploy/stack.sh up       install what is missing, start, health-check (idempotent)
#   deploy/stack.sh down     stop every service (data is kept)
#   deploy/stack.sh status   one line per service
#   deploy/stack.sh reset    down, then delete the data folder
#
# Data, logs and generated credentials live under $CIVIC_DATA_DIR (default <repo>/.civic);
# built binaries and jars under $CIVIC_CACHE_DIR (default ~/.cache/civic-iot).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${CIVIC_DATA_DIR:-$repo/.civic}
cache=${CIVIC_CACHE_DIR:-$HOME/.cache/civic-iot}
py="$repo/.venv/bin/python"
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/deploy/kafka/pom.xml")
mqtt_port=${CIVIC_MQTT__PORT:-1883}
influx_url=${CIVIC_INFLUX__URL:-http://127.0.0.1:8086}
influx_bind=${influx_url#http://}

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  say "installing Debian packages: $*"
  if [[ ! -f "$data/.apt-updated" ]]; then
    as_root apt-get update -q >/dev/null
    mkdir -p "$data" && touch "$data/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@" >/dev/null
}

# ---------------------------------------------------------------- installs
ensure_python() {
  if [[ ! -x "$py" ]] || ! "$py" -c 'import civic_iot, ops.cli, faust, paho, pytest, fastapi, playwright' 2>/dev/null; then
    say "creating the Python environment in .venv"
    command -v python3 >/dev/null || apt_install python3 python3-venv
    python3 -m venv "$repo/.venv" || { apt_install python3-venv; python3 -m venv "$repo/.venv"; }
    "$repo/.venv/bin/pip" install -q --upgrade pip
    "$repo/.venv/bin/pip" install -q -c "$repo/constraints.txt" -e "$repo[dev]"
  fi
}

ensure_packages() {
  local missing=()
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v curl >/dev/null || missing+=(curl)
  # The console's browser test drives Debian's Chromium (never a downloaded browser).
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

kafka_libs() { echo "$cache/kafka-$kafka_version/libs"; }

ensure_kafka() {
  local libs; libs=$(kafka_libs)
  if [[ ! -f "$libs/kafka_2.13-$kafka_version.jar" ]]; then
    say "fetching Apache Kafka $kafka_version jars from Maven Central"
    mvn -q -B -f "$repo/deploy/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs.tmp" >/dev/null || die "kafka: mvn could not fetch the jars"
    rm -rf "$libs" && mv "$libs.tmp" "$libs"
  fi
}

ensure_influxd() {
  INFLUXD=$(bash "$repo/deploy/influxdb/build.sh") || die "influxdb: build failed"
}

# ---------------------------------------------------------------- processes
pid_of() { local f="$data/$1/$1.pid"; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name log timeout_s command...
  local name=$1 log=$2 timeout=$3; shift 3
  local t=0
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$name" >/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$name exited while starting; log: $log"
    fi
    ((t++ >= timeout * 2)) && { tail -n 20 "$log" >&2; die "$name not healthy after ${timeout}s; log: $log"; }
    sleep 0.5
  done
}

start_bg() {  # name workdir command...
  local name=$1 dir=$2; shift 2
  ( cd "$dir" && exec setsid "$@" >>"$data/$name/$name.log" 2>&1 ) &
  echo $! >"$data/$name/$name.pid"
}

mqtt_healthy() {
  mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u civic-ingest -P "$(cat "$data/secrets/mqtt-civic-ingest")" \
    -t '$SYS/broker/version' -C 1 -W 3 -V mqttv5
}

up_mosquitto() {
  local dir="$data/mosquitto"
  mkdir -p "$dir/data"
  # Password and ACL files come from the device registry (the one source of credentials).
  "$py" -m ops.cli devices sync --quiet
  if pid_of mosquitto >/dev/null; then
    kill -HUP "$(pid_of mosquitto)"  # reload passwd/acl
    say "mosquitto: running (pid $(pid_of mosquitto)), credentials reloaded"
    return
  fi
  port_busy "$mqtt_port" && die "mosquitto: port $mqtt_port is taken by another process"
  # Run as the owner of the data folder (as root, Mosquitto would switch to user
  # "mosquitto", which cannot read the 0600 credential files).
  { echo "listener $mqtt_port 127.0.0.1"; echo "user $(id -un)"; cat "$repo/deploy/mosquitto/mosquitto.conf"; } >"$dir/mosquitto.conf"
  : >"$dir/mosquitto.log"
  start_bg mosquitto "$dir" "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$dir/mosquitto.conf"
  wait_for mosquitto "$dir/mosquitto.log" 20 mqtt_healthy
  say "mosquitto: up on 127.0.0.1:$mqtt_port (log $dir/mosquitto.log)"
}

kafka_healthy() { grep -q "Kafka Server started" "$data/kafka/kafka.log" && port_busy 9092; }

up_kafka() {
  local dir="$data/kafka" libs; libs=$(kafka_libs)
  mkdir -p "$dir"
  if pid_of kafka >/dev/null; then say "kafka: running (pid $(pid_of kafka))"; return; fi
  port_busy 9092 && die "kafka: port 9092 is taken by another process"
  cp "$repo/deploy/kafka/server.properties" "$dir/server.properties"
  cat >"$dir/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.state.change.logger=WARN
L4J
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true -Dlog4j.configuration="file:$dir/log4j.properties")
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    say "kafka: formatting KRaft storage"
    local id; id=$(cd "$dir" && java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool random-uuid)
    (cd "$dir" && java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
      -t "$id" -c server.properties) >>"$dir/kafka.log" 2>&1 || die "kafka: storage format failed; log: $dir/kafka.log"
  fi
  : >"$dir/kafka.log"
  start_bg kafka "$dir" java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka server.properties
  wait_for kafka "$dir/kafka.log" 90 kafka_healthy
  say "kafka: up on 127.0.0.1:9092 (KRaft, $kafka_version; log $dir/kafka.log)"
}

influx_healthy() { curl -fsS "$influx_url/health"; }

up_influxdb() {
  local dir="$data/influxdb"
  mkdir -p "$dir"
  if ! pid_of influxdb >/dev/null; then
    port_busy "${influx_bind##*:}" && die "influxdb: port ${influx_bind##*:} is taken by another process"
    : >"$dir/influxdb.log"
    start_bg influxdb "$dir" "$INFLUXD" --bolt-path "$dir/data/influxd.bolt" \
      --engine-path "$dir/data/engine" --sqlite-path "$dir/data/influxd.sqlite" \
      --http-bind-address "$influx_bind" --reporting-disabled --log-level warn
    wait_for influxdb "$dir/influxdb.log" 60 influx_healthy
  fi
  # Organisation, token, buckets, retention and the seismic downsampling task (idempotent).
  "$py" -m ops.influx_setup || die "influxdb: setup failed; log: $dir/influxdb.log"
  say "influxdb: up on $influx_url ($("$INFLUXD" version 2>/dev/null | head -1); log $dir/influxdb.log)"
}

stop() {
  local name=$1 pid
  pid=$(pid_of "$name") || { say "$name: not running"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { say "$name: did not stop in 30 s, killing"; kill -KILL "$pid"; }
  rm -f "$data/$name/$name.pid"
  say "$name: stopped"
}

status() {
  local rc=0
  for s in mosquitto kafka influxdb; do
    local health=down
    if pid_of "$s" >/dev/null; then
      case $s in
        mosquitto) mqtt_healthy >/dev/null 2>&1 && health=healthy || health=unhealthy ;;
        kafka) kafka_healthy >/dev/null 2>&1 && health=healthy || health=unhealthy ;;
        influxdb) influx_healthy >/dev/null 2>&1 && health=healthy || health=unhealthy ;;
      esac
    fi
    [[ $health == healthy ]] || rc=1
    printf '%-10s %-9s pid=%-8s log=%s\n' "$s" "$health" "$(pid_of "$s" || echo -)" "$data/$s/$s.log"
  done
  return $rc
}

cmd=${1:-status}
case $cmd in
  up)
    mkdir -p "$data"
    ensure_packages
    ensure_python
    ensure_kafka
    ensure_influxd
    up_mosquitto
    up_kafka
    up_influxdb
    "$py" -m civic_iot.kafka_admin || die "kafka: topic setup failed; log: $data/kafka/kafka.log"
    ;;
  down) stop influxdb; stop kafka; stop mosquitto ;;
  status) status ;;
  reset) stop influxdb; stop kafka; stop mosquitto; rm -rf "$data"; say "data removed: $data" ;;
  install) mkdir -p "$data"; ensure_packages; ensure_python; ensure_kafka; ensure_influxd ;;
  install-python) mkdir -p "$data"; ensure_python ;;
  *) die "usage: stack.sh up|down|status|reset|install|install-python" ;;
esac
