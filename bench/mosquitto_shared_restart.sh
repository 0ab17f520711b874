#!/usr/bin/env bash
# Minimal reproduction: Mosquitto 2.0 does not keep a SHARED subscription of a persistent
# session across its own restart; it keeps a plain one. Run by hand (needs only the
# mosquitto and mosquitto-clients packages; uses its own broker on a free port):
#
#   bash bench/mosquitto_shared_restart.sh [port]
#
# Two persistent sessions (MQTT 5, session expiry 1 h, QoS 1) subscribe, one to
# `$share/g/t/#`, one to `t/#`, and leave. One message is published (both sessions
# queue it), the broker is restarted (SIGTERM: it saves its database), five more are
# published, then each session comes back WITHOUT subscribing again and counts what the
# broker kept for it. Seen with 2.0.11 (Debian 12):
#
#   shared-sub: received 1 of 6 (1 queued before the restart, 0 of 5 published after it)
#   plain-sub:  received 6 of 6 (1 queued before the restart, 5 of 5 published after it)
#
# Why: the broker writes a session's subscriptions to its database from the subscription
# tree's plain leaves only (persist__subs_save in src/persist_write.c walks node->subs,
# never node->shared), in every 2.0.x release up to 2.0.22 and on the develop branch; the
# queued messages themselves are kept. So a shared subscriber gets nothing published
# between the broker's restart and its own SUBSCRIBE, and the broker has acknowledged
# those messages to their publishers (PUBACK reason 0x10, no matching subscribers, is a
# success). Hence ingest's default `CIVIC_INGEST__SUBSCRIPTION=exclusive`.
set -euo pipefail
port=${1:-21999}
dir=$(mktemp -d)
trap 'kill "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
user $(id -un)
CONF
start() {
  mosquitto -c "$dir/mosquitto.conf" >>"$dir/mosquitto.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 50); do mosquitto_pub -p "$port" -t ping -n 2>/dev/null && return; sleep 0.1; done
  echo "mosquitto did not start: $(cat "$dir/mosquitto.log")" >&2; exit 1
}
session() { mosquitto_sub -p "$port" -V mqttv5 -q 1 -c -i "$1" -x 3600 "${@:2}"; }
pub() { mosquitto_pub -p "$port" -V mqttv5 -q 1 -t t/x -m "$1"; }

start
{ mosquitto -h || true; } | head -1
session shared-sub -t '$share/g/t/#' -E
session plain-sub -t 't/#' -E
pub before-restart
kill -TERM "$(cat "$dir/pid")"
while kill -0 "$(cat "$dir/pid")" 2>/dev/null; do sleep 0.1; done
start
for i in 1 2 3 4 5; do pub "after-restart-$i"; done
for id in shared-sub plain-sub; do
  got=$(session "$id" -t nothing/here -W 2 2>/dev/null || true)
  before=$(grep -c before-restart <<<"$got" || true)
  after=$(grep -c after-restart <<<"$got" || true)
  printf '%-11s received %d of 6 (%d queued before the restart, %d of 5 published after it)\n' \
    "$id:" $((before + after)) "$before" "$after"
done
