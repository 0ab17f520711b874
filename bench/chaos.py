"""Chaos: a steady load, one fault, exact accounting (run by hand, on a PRIVATE stack).

    . .civic-private/env          # CIVIC_DATA_DIR, CIVIC_MQTT__PORT, CIVIC_KAFKA__BOOTSTRAP,
                                  # CIVIC_KAFKA_CONTROLLER_PORT, CIVIC_INFLUX__URL of your own
    deploy/stack.sh up
    .venv/bin/python bench/chaos.py --fault kafka            # or: none, ingest-kill,
        # worker-kill, alerts-kill, mosquitto, kafka, influxdb; --rate 400 --down 60

It refuses the default ports: it stops brokers, and the stack on the default ports is
everybody's. One run:

1. ingest, one processors worker and the alert service start as separate processes on a
   fresh topic prefix (like ``civic-iot demo``), the alert service with one webhook
   subscriber (made through its API): a receiver here that answers 503 to the first
   ``--webhook-failures`` attempts of every message, so retries are pending whenever an
   alert goes out;
2. a lean device fleet (``bench/loadgen.py``: one MQTT connection per device) publishes
   ``--rate`` air readings/s from ``--devices`` devices, and flood gauges raise a flood
   alert in a new township every ``--episode-every`` s (one before the fault, some during
   it, one after);
3. after ``--before`` s, the fault: SIGKILL of a process (restarted at once, as a
   supervisor would; the alert service once a webhook message waits for a retry), or
   SIGTERM of a broker that stays down ``--down`` s (counted from the
   SIGTERM) and comes back through ``deploy/stack.sh up <broker>``;
4. the load goes on ``--after`` s past the recovery, stops, and the pipeline drains;
5. accounting, per reading: acknowledged by the broker (PUBACK success, 0x10 "no matching
   subscribers" included) vs on Kafka (with duplicates) vs stored in InfluxDB; per alert
   key: the alerts that candidates asked for vs those issued (an ``Alert`` issued twice for
   one key is a failure; the same message written twice is a duplicate record); every
   message identifier delivered to the webhook (at least once); recovery: from the
   service's return until every ``/health`` answers 200 (never: stuck) and until the
   worker's lag is back below two seconds of load (or its level before the fault) while
   the load goes on; how long the backlog takes to drain once the load stops; what every
   ``/health`` answered during the fault; log lines.

The result goes to ``bench/results/chaos-<fault>-<time>.json`` and one table row
(the README's) is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # after REPO: bench/ingest.py must not shadow ingest/

from aiohttp import web  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from loadgen import LeanDevice, Tally  # noqa: E402

from bench.common import refuse_shared_stack  # noqa: E402
from civic_iot.auth import TokenStore  # noqa: E402
from civic_iot.contracts.readings import record_lines  # noqa: E402
from civic_iot.kafka_admin import ensure_topics, partition_counts  # noqa: E402
from civic_iot.registry import device_password, device_secret, load_registry  # noqa: E402
from civic_iot.settings import Settings, get_settings  # noqa: E402
from civic_iot.topology import Topology  # noqa: E402
from ops.pipeline import free_port, reading_key, stored_readings  # noqa: E402

FAULTS = ("none", "ingest-kill", "worker-kill", "alerts-kill", "mosquitto", "kafka", "influxdb")
PROCESS_FAULTS = {"ingest-kill": "ingest", "worker-kill": "worker", "alerts-kill": "alerts"}
BROKER_FAULTS = {"mosquitto", "kafka", "influxdb"}
#: Flood depth of an episode, cm: over the first line (10 cm), so a flood alert opens.
FLOOD_CM = 15.0


# ---------------------------------------------------------------- the device fleet


@dataclass(frozen=True)
class FleetPlan:
    host: str
    port: int
    #: (device id, password, kind)
    air: list[tuple[str, str]]
    #: (start offset s, device id, password): a flood gauge over its line from then on
    episodes: list[tuple[float, str, str]]
    rate: float
    #: The fleet stops after this long, or when told to (a "stop" on its pipe).
    seconds: float


def fleet_main(conn: Connection, plan: FleetPlan) -> None:
    """The fleet process: publish for ``plan.seconds``, then send back what was
    acknowledged: (device, ts ms) pairs and the tally."""
    acked: list[tuple[str, int]] = []
    tally = Tally()

    async def run() -> None:
        def dev(d: str, pw: str) -> LeanDevice:
            return LeanDevice(d, pw, plan.host, plan.port, on_ack=acked.append, tally=tally)

        air = [dev(d, pw) for d, pw in plan.air]
        floods = [(t, dev(d, pw)) for t, d, pw in plan.episodes]
        everyone = air + [d for _, d in floods]
        tasks = [asyncio.create_task(d.run()) for d in everyone]
        for d in everyone:
            await d.wait_connected(30)
        conn.send(("ready",))
        last_ts: dict[str, int] = {}

        def stamp(d: str) -> int:
            ts = max(int(time.time() * 1000), last_ts.get(d, 0) + 1)
            last_ts[d] = ts
            return ts

        t0 = time.monotonic()
        sent = 0
        next_flood = dict.fromkeys(range(len(floods)), 0.0)
        while (now := time.monotonic() - t0) < plan.seconds and not conn.poll():
            due = int(now * plan.rate)
            while sent < due:
                d = air[sent % len(air)]
                ts = stamp(d.id)
                payload = b'{"v":1,"ts":%d,"pm2_5_ugm3":8.0,"pm10_ugm3":15.0}' % ts
                d.publish(f"devices/{d.id}/air", payload, (d.id, ts))
                sent += 1
            for i, (start, d) in enumerate(floods):
                if now >= start and now >= next_flood[i]:
                    ts = stamp(d.id)
                    payload = b'{"v":1,"ts":%d,"flood_depth_cm":%.1f}' % (ts, FLOOD_CM)
                    d.publish(f"devices/{d.id}/water", payload, (d.id, ts))
                    next_flood[i] = now + 2.0
            await asyncio.sleep(0.01)
        # Whatever the broker still owes a PUBACK for gets a few seconds.
        deadline = time.monotonic() + 15
        while tally.sent > tally.acked + tally.refused + tally.unacknowledged:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for d in everyone:
            await d.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    conn.send(("done", acked, tally))


# ---------------------------------------------------------------- processes


@dataclass
class Procs:
    """ingest, worker and alerts as child processes of one run (like ops.pipeline)."""

    settings: Settings
    prefix: str
    log_dir: Path
    extra_env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    args: dict[str, list[str]] = field(
        default_factory=lambda: {
            "ingest": ["ingest"],
            "worker": ["worker"],
            "alerts": ["alerts", "run"],
        }
    )

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in self.args}
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        run = self.prefix.rstrip(".")
        return {
            **os.environ,
            "CIVIC_KAFKA__TOPIC_PREFIX": self.prefix,
            "CIVIC_INGEST__INSTANCE": run,
            "CIVIC_INGEST__HTTP_PORT": str(self.ports["ingest"]),
            "CIVIC_PROCESSORS__INSTANCE": f"{run}-0",
            "CIVIC_PROCESSORS__WEB_PORT": str(self.ports["worker"]),
            "CIVIC_ALERTS__HTTP_PORT": str(self.ports["alerts"]),
            "CIVIC_MQTT__SESSION_EXPIRY_S": "900",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *self.args[name]],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/health"

    def kill(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait(60)

    def stop_all(self) -> dict[str, float]:
        """SIGTERM every process; seconds each took to exit (killed after 30 s)."""
        took: dict[str, float] = {}
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, 30 - (time.monotonic() - t0)))
                took[name] = round(time.monotonic() - t0, 1)
            except subprocess.TimeoutExpired:
                proc.kill()
                took[name] = -1.0
        return took


def read_health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # loopback
            return int(resp.status), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read() or b"{}")
        except ValueError:
            return int(exc.code), {}
    except (OSError, ValueError):
        return 0, {}


class HealthLog(threading.Thread):
    """Every ``/health`` every half second: (monotonic s, name, status, body)."""

    def __init__(self, procs: Procs) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.rows: list[tuple[float, str, int, dict[str, Any]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            for name in self.procs.args:
                status, body = read_health(self.procs.url(name))
                self.rows.append((time.monotonic(), name, status, body))

    def latest(self) -> dict[str, tuple[int, dict[str, Any]]]:
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for _, name, status, body in self.rows[-3 * len(self.procs.args) :]:
            out[name] = (status, body)
        return out


# ---------------------------------------------------------------- webhook receiver


class Receiver(threading.Thread):
    """The webhook subscriber: 503 to the first ``failures`` attempts of each message."""

    def __init__(self, port: int, failures: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.failures = failures
        self.attempts: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()

        async def hook(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            ident = str(body.get("identifier"))
            self.attempts[ident] += 1
            if self.attempts[ident] <= self.failures:
                return web.Response(status=503, text="not yet")
            self.delivered[ident] += 1
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.ready.set()
        await self._stop_evt.wait()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop_evt is not None:
            self._loop.call_soon_threadsafe(self._stop_evt.set)


def subscribe(settings: Settings, procs: Procs, url: str) -> None:
    """The receiver as a webhook subscriber of every alert, through the alert service's
    API (subscriptions live on the run's compacted topic), with a token of this run."""
    store = TokenStore.at(settings.tokens_file)
    record, token = store.issue(f"chaos-{procs.prefix.rstrip('.')}", "admin", "bench/chaos.py")
    try:
        req = urllib.request.Request(
            procs.url("alerts").removesuffix("/health") + "/subscriptions",
            data=json.dumps({"url": url, "format": "json"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):  # a refusal raises HTTPError
            pass
    finally:
        store.revoke([record.id])


# ---------------------------------------------------------------- faults


def service_pid(settings: Settings, service: str) -> int | None:
    try:
        pid = int((settings.data_dir / service / f"{service}.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_service(settings: Settings, service: str) -> None:
    pid = service_pid(settings, service)
    if pid is None:
        sys.exit(f"{service} is not running in {settings.data_dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    sys.exit(f"{service} (pid {pid}) did not stop within 60 s")


def stack_up(log: Path, service: str) -> None:
    with log.open("ab") as out:
        subprocess.run(
            ["bash", str(REPO / "deploy" / "stack.sh"), "up", service],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ,
        )


# ---------------------------------------------------------------- accounting


def read_topic_values(settings: Settings, topic: str) -> list[bytes]:
    """Every record of a topic of the run, up to its end offsets (all of them: asserted)."""

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap,
            enable_auto_commit=False,
            # seek_to_beginning alone races with the reset of a fresh assignment, which
            # by default ("latest") can win: then nothing is read (seen, now and then).
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
        )
        await consumer.start()
        try:
            counts = await partition_counts(settings.kafka.bootstrap, [topic])
            tps = [TopicPartition(topic, p) for p in range(counts[topic])]
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[bytes] = []
            deadline = time.monotonic() + 300
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                if time.monotonic() > deadline:
                    sys.exit(f"could not read {topic} to its end within 300 s")
                batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
                out += [r.value for recs in batch.values() for r in recs if r.value is not None]
            print(f"read {topic}: {len(out)} records (end offsets {sum(end.values())})", flush=True)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def account_readings(
    settings: Settings,
    topics: Topology,
    acked: list[tuple[str, int]],
    window: tuple[datetime, datetime],
) -> dict[str, Any]:
    acked_ids = {f"{d}:{ts * 1_000_000}" for d, ts in acked}
    on_kafka: Counter[str] = Counter()
    for kind in ("air", "water"):
        for v in read_topic_values(settings, topics.readings(kind)):
            # A record holds one ingest batch's readings of a partition, a line each.
            for line in record_lines(v):
                on_kafka[json.loads(line)["reading_id"]] += 1
    stored = stored_readings(settings, *window)
    acked_keys = {reading_key(d, datetime.fromtimestamp(ts / 1000, UTC)) for d, ts in acked}
    return {
        "acked": len(acked_ids),
        "on_kafka": len(acked_ids & on_kafka.keys()),
        "kafka_duplicates": sum(n - 1 for i, n in on_kafka.items() if i in acked_ids and n > 1),
        "lost_before_kafka": len(acked_ids - on_kafka.keys()),
        "stored": len(acked_keys & stored),
        "lost": len(acked_keys - stored),
        "lost_examples": sorted(acked_keys - stored)[:5],
    }


def account_alerts(settings: Settings, topics: Topology, receiver: Receiver) -> dict[str, Any]:
    asked: set[str] = set()
    for v in read_topic_values(settings, topics.candidates):
        cand = json.loads(v)
        if int(cand.get("level", 0)) >= 1:
            asked.add(f"{cand['hazard']}:{cand['area_code']}")
    records = [json.loads(v)["json"] for v in read_topic_values(settings, topics.alerts)]
    alerts_by_key: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for m in records:
        seen[m["identifier"]] += 1
        if m["msg_type"] == "Alert":
            alerts_by_key[m["key"]].add(m["identifier"])
    identifiers = set(seen)
    return {
        "keys_asked": len(asked),
        "keys_alerted": len(asked & alerts_by_key.keys()),
        "lost": sorted(asked - alerts_by_key.keys()),
        "issued_twice": sorted(k for k, ids in alerts_by_key.items() if len(ids) > 1),
        "messages": len(identifiers),
        "duplicate_records": sum(n - 1 for n in seen.values()),
        "webhook_delivered": len(identifiers & receiver.delivered.keys()),
        "webhook_lost": sorted(identifiers - receiver.delivered.keys()),
        "webhook_duplicates": sum(n - 1 for n in receiver.delivered.values()),
    }


def health_summary(
    rows: list[tuple[float, str, int, dict[str, Any]]], start: float, end: float
) -> dict[str, str]:
    """Per process, what ``/health`` answered between ``start`` and ``end``."""
    out: dict[str, str] = {}
    for name in ("ingest", "worker", "alerts"):
        seen = [(s, b) for t, n, s, b in rows if n == name and start <= t <= end]
        codes = Counter(s for s, _ in seen)
        # The reasons' figures (seconds, counts) vary from answer to answer: N for each.
        reasons = Counter(
            re.sub(r"\d+", "N", str(b.get("reason") or b.get("storage") or b.get("role") or ""))[
                :70
            ]
            for s, b in seen
            if s == 503
        )
        text = " ".join(f"{c or 'none'}x{n}" for c, n in sorted(codes.items()))
        if reasons:
            text += " (" + "; ".join(r for r, _ in reasons.most_common(2)) + ")"
        out[name] = text
    return out


def recovered_at(
    rows: list[tuple[float, str, int, dict[str, Any]]], since: float, lag_ok: int
) -> tuple[float | None, float | None]:
    """(first time after ``since`` every /health answered 200 for 2 s, first time after
    that the worker's lag was under ``lag_ok`` and ingest's inbox empty)."""
    by_time: dict[float, dict[str, tuple[int, dict[str, Any]]]] = defaultdict(dict)
    for t, name, status, body in rows:
        if t >= since:
            by_time[round(t * 2) / 2][name] = (status, body)
    healthy_since: float | None = None
    healthy: float | None = None
    for t in sorted(by_time):
        snap = by_time[t]
        if len(snap) == 3 and all(s == 200 for s, _ in snap.values()):
            healthy_since = t if healthy_since is None else healthy_since
            if t - healthy_since >= 2:
                healthy = healthy_since
                break
        else:
            healthy_since = None
    if healthy is None:
        return None, None
    for t in sorted(by_time):
        if t < healthy:
            continue
        snap = by_time[t]
        worker, ingest = snap.get("worker"), snap.get("ingest")
        if (
            worker
            and ingest
            and int(worker[1].get("lag", 1 << 30)) <= lag_ok
            and int(ingest[1].get("inbox", 1)) == 0
        ):
            return healthy, t
    return healthy, None


def log_lines(log_dir: Path) -> dict[str, int]:
    return {
        p.stem: sum(1 for _ in p.open("rb")) for p in sorted(log_dir.glob("*.log")) if p.is_file()
    }


# ---------------------------------------------------------------- the run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fault", choices=FAULTS)
    ap.add_argument(
        "--table",
        nargs="+",
        metavar="RESULT",
        help="print the README rows of these results (bench/results/chaos-*.json), the "
        "/health summaries read again from their health.jsonl, and exit",
    )
    ap.add_argument("--rate", type=float, default=100.0, help="air readings/s")
    ap.add_argument("--devices", type=int, default=40, help="air devices publishing")
    ap.add_argument("--before", type=float, default=30.0, help="s of load before the fault")
    ap.add_argument("--down", type=float, default=60.0, help="s a broker stays down")
    ap.add_argument("--after", type=float, default=30.0, help="s of load after recovery")
    ap.add_argument("--episode-every", type=float, default=20.0, help="s between flood alerts")
    ap.add_argument("--webhook-failures", type=int, default=2)
    args = ap.parse_args()
    if args.table:
        for path in args.table:
            print(table_row(resummarised(Path(path))))
        return 0
    if args.fault is None:
        ap.error("--fault is required")

    settings = get_settings()
    refuse_shared_stack(settings, "chaos stops and restarts brokers")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"chaos{stamp}."
    topics = Topology.of(settings).with_prefix(prefix)
    out_dir = REPO / "bench" / "results"
    log_dir = out_dir / f"chaos-{args.fault}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings.kafka.bootstrap, topics))

    receiver = Receiver(free_port(), args.webhook_failures)
    receiver.start()
    receiver.ready.wait(10)
    procs = Procs(
        settings,
        prefix,
        log_dir,
        {
            "CIVIC_ALERTS__WEBHOOK_ALLOW_HTTP": "true",
            "CIVIC_ALERTS__WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            # Retries stay pending for seconds (503 first), yet never run out.
            "CIVIC_ALERTS__WEBHOOK_BACKOFF_BASE_S": "2",
            "CIVIC_ALERTS__WEBHOOK_MAX_ATTEMPTS": "12",
        },
    )
    for name in ("alerts", "worker", "ingest"):
        procs.start(name)
    health = HealthLog(procs)
    health.start()
    deadline = time.monotonic() + 180
    while not all(s == 200 for s, _ in health.latest().values()) or len(health.latest()) < 3:
        if time.monotonic() > deadline:
            sys.exit(f"not all healthy after 180 s: {health.latest()}; logs in {log_dir}")
        time.sleep(0.5)
    print(f"run {prefix} logs {log_dir}: all healthy", flush=True)
    subscribe(settings, procs, f"http://127.0.0.1:{receiver.port}/hook")

    reg = load_registry(settings.registry)
    secret = device_secret(settings.data_dir)
    air = [(d.id, device_password(secret, d.id)) for d in reg.of_kind("air")[: args.devices]]
    floods = [d for d in reg.of_kind("water") if d.sensor == "flood"]
    seen_towns: set[str] = set()
    gauges = []
    for d in floods:
        if d.township not in seen_towns:
            seen_towns.add(d.township)
            gauges.append(d)
    fault_span = args.down if args.fault in BROKER_FAULTS else 10.0
    seconds = args.before + fault_span + 60.0 + args.after
    episodes = []
    t = 10.0
    for d in gauges:
        if t > seconds - 20:
            break
        episodes.append((t, d.id, device_password(secret, d.id)))
        t += args.episode_every
    plan = FleetPlan(
        settings.mqtt.host, settings.mqtt.port, air, episodes, args.rate, seconds + 3600
    )
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    fleet = ctx.Process(target=fleet_main, args=(theirs, plan), daemon=True)
    fleet.start()
    if not mine.poll(120) or mine.recv()[0] != "ready":
        sys.exit("the device fleet did not connect")
    load_t0 = time.monotonic()
    wall_t0 = datetime.now(UTC)
    print(
        f"load {args.rate:g}/s from {len(air)} devices, {len(episodes)} flood episodes", flush=True
    )

    time.sleep(args.before)
    fault_at = time.monotonic()
    print(f"fault {args.fault} at +{fault_at - load_t0:.0f} s", flush=True)
    pending_at_kill: list[str] = []
    if args.fault in PROCESS_FAULTS:
        name = PROCESS_FAULTS[args.fault]
        if name == "alerts":
            # Killed while a webhook message waits for its retry (refused, not delivered).
            wait_until = time.monotonic() + 60
            while time.monotonic() < wait_until:
                pending_at_kill = sorted(set(receiver.attempts) - set(receiver.delivered))
                if pending_at_kill:
                    break
                time.sleep(0.05)
        procs.kill(name, signal.SIGKILL)
        procs.start(name)
        back_at = time.monotonic()
    elif args.fault in BROKER_FAULTS:
        stop_service(settings, args.fault)
        print(f"{args.fault} stopped after {time.monotonic() - fault_at:.1f} s", flush=True)
        time.sleep(max(0.0, args.down - (time.monotonic() - fault_at)))
        stack_up(log_dir / "stack.log", args.fault)
        back_at = time.monotonic()
        print(f"{args.fault} back (healthy) after {back_at - fault_at:.0f} s", flush=True)
    else:
        back_at = fault_at
    # Caught up: the worker's lag is back where it was before the fault (or under two
    # seconds of load), the broker's messages all taken by ingest.
    before_lags = [
        int(b.get("lag", 0))
        for t, n, st, b in list(health.rows)
        if n == "worker" and st == 200 and load_t0 + 10 <= t <= fault_at
    ]
    lag_ok = max([int(2 * args.rate), *before_lags])
    deadline = back_at + 300
    healthy = caught_up = None
    while time.monotonic() < deadline:
        healthy, caught_up = recovered_at(health.rows, back_at, lag_ok)
        if caught_up is not None:
            break
        time.sleep(1)
    # Stuck: some process never answered 200 again. A backlog the worker has not worked
    # off under the continuing load within 300 s is not that (see drained_s).
    stuck = healthy is None
    time.sleep(args.after)
    print("stopping the load", flush=True)
    mine.send(("stop",))
    if not mine.poll(120):
        sys.exit("the device fleet did not report")
    _, acked, tally = mine.recv()
    fleet.join(10)
    wall_end = datetime.now(UTC)
    # Drain: what was acknowledged reaches storage; webhook retries finish.
    drain_t0 = time.monotonic()
    drain_deadline = drain_t0 + 600  # a loaded machine drains slowly
    drained_s = None
    while time.monotonic() < drain_deadline:
        latest = health.latest()
        worker, ingest = latest.get("worker"), latest.get("ingest")
        if (
            worker
            and ingest
            and int(worker[1].get("lag", 1)) == 0
            and int(ingest[1].get("inbox", 1)) == 0
            and int(ingest[1].get("kafka_batches_in_flight", 1)) == 0
        ):
            drained_s = round(time.monotonic() - drain_t0, 1)
            break
        time.sleep(1)
    time.sleep(15)  # the last batches' points and the webhook retries in progress
    health.halt.set()
    with (log_dir / "health.jsonl").open("w") as f:
        for t, name, status, body in health.rows:
            f.write(json.dumps([round(t - load_t0, 1), name, status, body]) + "\n")
    stop_s = procs.stop_all()
    receiver.stop()
    window = (wall_t0 - timedelta(seconds=5), wall_end + timedelta(seconds=5))
    readings = account_readings(settings, topics, acked, window)
    alerts = account_alerts(settings, topics, receiver)
    # During the fault: from it until every /health answered 200 again (or 30 s on).
    during = health_summary(health.rows, fault_at, healthy if healthy is not None else back_at + 30)
    result = {
        "fault": args.fault,
        "prefix": prefix,
        "rate": args.rate,
        "devices": len(air),
        "fault_at_s": round(fault_at - load_t0, 1),
        "down_s": round(back_at - fault_at, 1),
        "readings": readings,
        "alerts": alerts,
        "fleet": {k: v for k, v in vars(tally).items() if k != "per_second"},
        "health_during_fault": during,
        "webhook_pending_at_kill": pending_at_kill,
        "lag_before_fault_max": lag_ok,
        "recovery_health_s": None if healthy is None else round(healthy - back_at, 1),
        "recovery_caught_up_s": None if caught_up is None else round(caught_up - back_at, 1),
        "stuck": stuck,
        "drained_after_load_s": drained_s,
        "stop_s": stop_s,
        "log_lines": log_lines(log_dir),
        "load": os.getloadavg(),
    }
    out = out_dir / f"chaos-{args.fault}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    print(table_row(result))
    return 0


def resummarised(path: Path) -> dict[str, Any]:
    """A result with its /health summary made again from the run's health.jsonl (times
    there count from the load's start)."""
    r: dict[str, Any] = json.loads(path.read_text())
    log = path.with_suffix("") / "health.jsonl"
    if log.exists():
        rows = [tuple(json.loads(line)) for line in log.open()]
        fault_at = float(r.get("fault_at_s", 30.0))
        healthy = r["recovery_health_s"]
        end = fault_at + r["down_s"] + (30.0 if healthy is None else healthy)
        r["health_during_fault"] = health_summary(rows, fault_at, end)  # type: ignore[arg-type]
    return r


def table_row(r: dict[str, Any]) -> str:
    """The README's row for one run."""
    rd, al, h = r["readings"], r["alerts"], r["health_during_fault"]
    rec = r["recovery_caught_up_s"]
    return (
        f"| {r['fault']} | {rd['acked']} | {rd['stored']} | **{rd['lost']}** | "
        f"{rd['kafka_duplicates']} | {al['keys_alerted']}/{al['keys_asked']}, "
        f"twice {len(al['issued_twice'])} | {al['webhook_delivered']}/{al['messages']} "
        f"(dup {al['webhook_duplicates']}) | {r['recovery_health_s']} / "
        f"{'> 300' if rec is None else rec} | ingest {h['ingest']}; worker {h['worker']}; "
        f"alerts {h['alerts']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
