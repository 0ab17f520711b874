#!/usr/bin/env bash
# The native civic-iot stack: Mosquitto, Apache Kafka (KRaft) and InfluxDB 2.7 on loopback.
#
#   deploy/stack.sh up       install what is missing, start, health-check (idempotent)
#   deploy/stack.sh down     stop every service (data is kept)
#   (up and down take service names too: `stack.sh up mosquitto kafka`)
#   deploy/stack.sh status   one line per service
#   deploy/stack.sh reset    down, then delete the data folder
#
# Data, logs and generated credentials live under $CIVIC_DATA_DIR (default <repo>/.civic);
# built binaries and jars under $CIVIC_CACHE_DIR (default ~/.cache/civic-iot).
#
# Ports follow the settings the processes read: CIVIC_MQTT__PORT (1883), the port of
# CIVIC_KAFKA__BOOTSTRAP (9092; its controller listens on CIVIC_KAFKA_CONTROLLER_PORT,
# default the Kafka port + 1) and CIVIC_INFLUX__URL (8086). With another data dir and other
# ports a second, private stack runs beside the first (the chaos benchmark and the fault
# tests do), and every command here acts on that stack only.
# Mosquitto listens on 127.0.0.1:$CIVIC_MQTT__PORT (1883, plain MQTT, this host only) and on
# $CIVIC_MQTT_TLS_BIND:$CIVIC_MQTT__TLS_PORT (127.0.0.1:8883, TLS with a local CA made on the
# first `up` under $CIVIC_DATA_DIR/tls; extra names for its certificate, comma-separated, in
# $CIVIC_MQTT_TLS_HOSTS). Started as root, it runs as $CIVIC_BROKER_USER (default mosquitto).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${CIVIC_DATA_DIR:-$repo/.civic}
. "$repo/deploy/cache.sh"
cache=$(civic_cache_dir)
py="$repo/.venv/bin/python"
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/deploy/kafka/pom.xml")
mqtt_port=${CIVIC_MQTT__PORT:-1883}
kafka_bootstrap=${CIVIC_KAFKA__BOOTSTRAP:-127.0.0.1:9092}
kafka_bootstrap=${kafka_bootstrap%%,*}  # a single node: the first server is ours
kafka_port=${kafka_bootstrap##*:}
kafka_controller_port=${CIVIC_KAFKA_CONTROLLER_PORT:-$((kafka_port + 1))}
mqtt_tls_port=${CIVIC_MQTT__TLS_PORT:-8883}
mqtt_tls_bind=${CIVIC_MQTT_TLS_BIND:-127.0.0.1}
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
  if [[ ! -x "$py" ]] || ! "$py" -c 'import civic_iot, ops.cli, faust, paho, pytest, fastapi, pyCIOT, playwright' 2>/dev/null; then
    say "creating the Python environment in .venv"
    command -v python3 >/dev/null || apt_install python3 python3-venv
    python3 -m venv "$repo/.venv" || { apt_install python3-venv; python3 -m venv "$repo/.venv"; }
    "$repo/.venv/bin/pip" install -q --upgrade pip
    "$repo/.venv/bin/pip" install -q -c "$repo/constraints.txt" -e "$repo[dev]"
    # pyCIOT (a SensorThings client the API's tests use) pins requests==2.28.0 and so
    # urllib3<1.27; without its pins it runs on the project's (pyproject.toml, dev).
    "$repo/.venv/bin/pip" install -q --no-deps -c "$repo/constraints.txt" pyCIOT
  fi
}

ensure_packages() {
  local missing=()
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
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

# The address the TLS health check connects to (a name the certificate carries).
mqtt_tls_check_host() {
  case $mqtt_tls_bind in 127.0.0.1 | 0.0.0.0 | ::) echo 127.0.0.1 ;; *) echo "$mqtt_tls_bind" ;; esac
}

mqtt_healthy() {
  local pw; pw=$(cat "$data/secrets/mqtt-civic-ingest")
  mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u civic-ingest -P "$pw" \
    -t '$SYS/broker/version' -C 1 -W 3 -V mqttv5 || return 1
  # The TLS listener, once the configuration has one (a data dir from before has not).
  grep -q '^certfile' "$data/mosquitto/mosquitto.conf" 2>/dev/null || return 0
  mosquitto_sub -h "$(mqtt_tls_check_host)" -p "$mqtt_tls_port" --cafile "$data/tls/ca.crt" \
    -u civic-ingest -P "$pw" -t '$SYS/broker/version' -C 1 -W 3 -V mqttv5
}

# The account Mosquitto runs as: the invoking user, or, started as root, $CIVIC_BROKER_USER
# (default mosquitto, which the Debian package creates). Never root: it drops root after
# opening its listeners, and its files in .civic/mosquitto are given to that account.
broker_user() {
  if [[ $(id -u) -ne 0 ]]; then id -un; return; fi
  local user=${CIVIC_BROKER_USER:-mosquitto}
  [[ $user == root ]] && die "mosquitto: will not run the broker as root (CIVIC_BROKER_USER=root)"
  id "$user" >/dev/null 2>&1 ||
    die "mosquitto: account '$user' does not exist (apt-get install mosquitto creates it; or set CIVIC_BROKER_USER)"
  echo "$user"
}

up_mosquitto() {
  local dir="$data/mosquitto" user state running extra=()
  user=$(broker_user)
  mkdir -p "$dir/data"
  # mosquitto.conf and the TLS files: the local CA on the first up, a server certificate
  # for 127.0.0.1, localhost and $CIVIC_MQTT_TLS_HOSTS (python -m ops.broker prepare).
  local hosts=(--host localhost --host 127.0.0.1) h
  case $mqtt_tls_bind in 127.0.0.1 | 0.0.0.0 | ::) ;; *) hosts+=(--host "$mqtt_tls_bind") ;; esac
  IFS=, read -r -a extra <<<"${CIVIC_MQTT_TLS_HOSTS:-}"
  for h in "${extra[@]}"; do [[ -n $h ]] && hosts+=(--host "$h"); done
  state=$("$py" -m ops.broker prepare --bind 127.0.0.1 --tls-bind "$mqtt_tls_bind" \
    --user "$user" "${hosts[@]}") || die "mosquitto: could not write its configuration or TLS files"
  # Password and ACL files come from the device registry (the one source of credentials).
  "$py" -m ops.cli devices sync --quiet
  if running=$(pid_of mosquitto); then
    if [[ $state == unchanged && $(ps -o uid= -p "$running" | tr -d ' ') == "$(id -u "$user")" ]]; then
      kill -HUP "$running"  # reload passwd/acl
      say "mosquitto: running (pid $running), credentials reloaded"
      return
    fi
    # A new listener, certificate or account takes a restart; persistent sessions and
    # their queued messages are saved on the way down and read back.
    say "mosquitto: configuration, TLS files or account changed: restarting"
    stop mosquitto
  fi
  port_busy "$mqtt_port" && die "mosquitto: port $mqtt_port is taken by another process"
  port_busy "$mqtt_tls_port" && die "mosquitto: port $mqtt_tls_port is taken by another process"
  # Its folder (credentials, TLS copy, persistence) belongs to the account it runs as.
  [[ $(id -u) -eq 0 ]] && chown -R "$user:" "$dir"
  : >"$dir/mosquitto.log"
  start_bg mosquitto "$dir" "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$dir/mosquitto.conf"
  wait_for mosquitto "$dir/mosquitto.log" 20 mqtt_healthy
  say "mosquitto: up on 127.0.0.1:$mqtt_port and $mqtt_tls_bind:$mqtt_tls_port (TLS, CA $data/tls/ca.crt) as user $user (log $dir/mosquitto.log)"
}

kafka_healthy() { grep -q "Kafka Server started" "$data/kafka/kafka.log" && port_busy "$kafka_port"; }

up_kafka() {
  local dir="$data/kafka" libs; libs=$(kafka_libs)
  mkdir -p "$dir"
  if pid_of kafka >/dev/null; then say "kafka: running (pid $(pid_of kafka))"; return; fi
  port_busy "$kafka_port" && die "kafka: port $kafka_port is taken by another process"
  port_busy "$kafka_controller_port" && die "kafka: controller port $kafka_controller_port is taken by another process"
  # The ports of this stack replace those written in the file (9092, controller 9093).
  sed -e "s/:9092\b/:$kafka_port/g" -e "s/:9093\b/:$kafka_controller_port/g" \
    "$repo/deploy/kafka/server.properties" >"$dir/server.properties"
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
  say "kafka: up on 127.0.0.1:$kafka_port (controller $kafka_controller_port, KRaft, $kafka_version; log $dir/kafka.log)"
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

choose() {  # chosen=(the services named after the command; default: all)
  local s
  (($#)) || set -- mosquitto kafka influxdb
  for s in "$@"; do
    case $s in mosquitto | kafka | influxdb) ;; *) die "unknown service: $s (mosquitto, kafka, influxdb)" ;; esac
  done
  chosen=("$@")
}

cmd=${1:-status}
shift || true
case $cmd in
  up)
    choose "$@"
    mkdir -p "$data"
    ensure_packages
    ensure_python
    if [[ " ${chosen[*]} " == *" kafka "* ]]; then ensure_kafka; fi
    if [[ " ${chosen[*]} " == *" influxdb "* ]]; then ensure_influxd; fi
    for s in mosquitto kafka influxdb; do
      if [[ " ${chosen[*]} " == *" $s "* ]]; then "up_$s"; fi
    done
    if [[ " ${chosen[*]} " == *" kafka "* ]]; then
      "$py" -m civic_iot.kafka_admin || die "kafka: topic setup failed; log: $data/kafka/kafka.log"
    fi
    # The key of the mark ingest puts on its records (kept when it exists).
    "$py" -m ops.mark_key >/dev/null || die "could not create the Kafka record mark key"
    ;;
  down)
    choose "$@"
    for s in influxdb kafka mosquitto; do
      if [[ " ${chosen[*]} " == *" $s "* ]]; then stop "$s"; fi
    done
    ;;
  status) status ;;
  reset) stop influxdb; stop kafka; stop mosquitto; rm -rf "$data"; say "data removed: $data" ;;
  install) mkdir -p "$data"; ensure_packages; ensure_python; ensure_kafka; ensure_influxd ;;
  install-python) mkdir -p "$data"; ensure_python ;;
  *) die "usage: stack.sh up|down [mosquitto kafka influxdb]|status|reset|install|install-python" ;;
esac
