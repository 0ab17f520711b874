"""Ingest throughput, ceiling and system in one run (run by hand; needs deploy/stack.sh up).

    .venv/bin/python bench/ingest.py --readings 100000 --devices 50
    .venv/bin/python bench/ingest.py --readings 100000 --devices 50 --rate 10000

The first runs the publishers flat out (the most each path takes: throughput; latency
is then mostly backlog); the second offers a steady load (latency at that load).

The same lean publishers (paho, one process per ``--publishers``, each device with its own
credentials from the registry, QoS 1, batches of ``--window`` messages written at once,
with ``wait_for_publish`` semantics on the last of each batch: a bounded in-flight window)
publish small air readings:

1. **ceiling**: straight through Mosquitto to ``mosquitto_sub`` (C, QoS 1) (the
   ``civic-ingest`` account, MQTT 5 shared subscription, QoS 1, auto-ack);
2. **system**: through a real ingest process (``python -m ops.cli ingest`` with its
   own topic prefix, share group and instance, like the integration tests) into Kafka,
   read back by a Kafka consumer here.

A reading's ``ts`` is its send time (epoch ms with microseconds: unknown fields are
refused, so the send time cannot travel in a field of its own), so latency is measured
from the moment the publisher handed the message to paho. Warm-up messages (one window
per publisher) go through first in each phase and are not counted.

CPU per reading comes from ``/proc/<pid>/stat`` (ingest, Mosquitto, Kafka) and
``os.times()`` (publishers, subscriber, this process's consumer); peak memory of ingest is
``VmHWM`` from ``/proc/<pid>/status``. Linux only. ``--profile out.prof`` runs ingest
under cProfile (its main thread: since ingest drives paho from its asyncio loop, that is
all of its work). ``--ingest-dir`` runs another checkout's ``ingest/`` for an A/B
comparison on the same machine, in the same hour. ``--reader paho`` runs ingest with paho's
public parser instead of its own reader (``CIVIC_INGEST__MQTT_READER``, see
``civic_iot/mqtt.py``); alternate ``--reader own`` and ``--reader paho`` runs for the A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar, Literal

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.accounts import INGEST_USER
from civic_iot.contracts.readings import record_lines
from civic_iot.kafka_admin import delete_topics, ensure_topics
from civic_iot.registry import device_password, device_secret, load_registry
from civic_iot.settings import Settings, get_settings, mqtt_password
from civic_iot.topology import Topology

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
#: Clean air (AQI "good"), so readings that reach another ingest (a demo's) raise no alert;
#: so2_ppb is the bench's mark, to tell its readings from other traffic of the same devices.
MARK = b'"so2_ppb":4.321'
PAYLOAD = (
    '{"v":1,"ts":%.3f,"pm2_5_ugm3":%.1f,"pm10_ugm3":%.1f,'
    '"temperature_c":%.1f,"humidity_pct":%.1f,' + MARK.decode() + "}"
)


# ---------------------------------------------------------------- /proc


def proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """user + system CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


def other_ingests() -> dict[int, str]:
    """Other ingest processes on this machine, by pid, with their Kafka topic prefix.

    Every ingest subscribes to ``devices/+/+``, so each gets a copy of the bench's readings.
    """
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ops.cli" in cmd and b"ingest" in cmd:
            prefix = next(
                (e.split(b"=", 1)[1] for e in env if e.startswith(b"CIVIC_KAFKA__TOPIC_PREFIX=")),
                b"",
            )
            found[int(d.name)] = prefix.decode()
    return found


def pid_file(settings: Settings, service: str) -> int | None:
    path = settings.data_dir / service / f"{service}.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@dataclass
class CpuWatch:
    """CPU seconds of named processes and the machine between start() and stop()."""

    pids: dict[str, int | None]
    threads: dict[str, tuple[int, int]] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    busy_cores: float = 0.0
    _t0: dict[str, float] = field(default_factory=dict)
    _m0: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self._t0 = {}
        for n, p in self.pids.items():
            if p:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    self._t0[n] = proc_cpu_s(p)
        self._t0 |= {n: proc_cpu_s(*pt) for n, pt in self.threads.items()}
        self._m0 = machine_ticks()

    def stop(self) -> None:
        self.spent = {}
        # Another engineer's ingest (a test's) may have exited meanwhile: leave it out.
        for n, p in self.pids.items():
            if p and n in self._t0:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    self.spent[n] = proc_cpu_s(p) - self._t0[n]
        for n, pt in self.threads.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                self.spent[n] = proc_cpu_s(*pt) - self._t0[n]
        busy, total = machine_ticks()
        frac = (busy - self._m0[0]) / max(1, total - self._m0[1])
        self.busy_cores = frac * (os.cpu_count() or 1)


# ---------------------------------------------------------------- publishers (processes)


class LeanClient(mqtt.Client):
    """paho's client with the bench's two economies (private paho 2.x methods, bench only).

    - Writes: publishes are queued, not sent one by one (an ``on_socket_register_write``
      callback is set, so paho leaves writing to us), and :meth:`_packet_write` sends the
      queued PUBLISHes as one buffer: a ``send`` per batch instead of per message.
    - Reads: one ``recv`` takes every PUBACK the kernel holds and paho's parser is served
      from that buffer, instead of three ``recv`` calls per PUBACK; a PUBACK that says
      success without properties completes its message without paho building a reason
      code and a properties object for it.
    - paho scans every outgoing message on each PUBACK for one queued beyond the in-flight
      window (quadratic in the window); nothing is ever queued here (a batch is at most the
      window and is acknowledged before the next), so the scan is skipped when none can be.
    """

    #: Success, and "no matching subscribers" (nobody listening yet: still delivered).
    _OK: ClassVar[dict[int, ReasonCode]] = {
        code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)
    }
    _NO_PROPERTIES = Properties(PacketTypes.PUBACK)

    _CHUNK = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self.on_socket_register_write = lambda *_: None
        self.on_socket_close = lambda *_: self._rbuf.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(self._CHUNK)
            if len(data) <= bufsize:
                return data
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        queue = self._out_packet
        if len(queue) > 1 and queue[0]["command"] & 0xF0 == mqtt.PUBLISH:
            parts = []
            while queue and queue[0]["command"] & 0xF0 == mqtt.PUBLISH and queue[0]["qos"]:
                packet = queue.popleft()
                parts.append(packet["packet"][packet["pos"] :])
            joined = b"".join(parts)
            # QoS 1 PUBLISHes need nothing when written (PUBACK completes them): one packet.
            queue.appendleft(
                {
                    "command": mqtt.PUBLISH,
                    "mid": 0,
                    "qos": 1,
                    "pos": 0,
                    "to_process": len(joined),
                    "packet": joined,
                    "info": None,
                }
            )
        return super()._packet_write()

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> mqtt.MQTTErrorCode:
        packet = self._in_packet["packet"]
        # [packet id:2] then, optionally, a success reason code and no properties
        n = len(packet)
        if (
            cmd == "PUBACK"
            and 2 <= n <= 4
            and (n == 2 or packet[2] in self._OK)
            and not any(packet[3:])
        ):
            mid = (packet[0] << 8) | packet[1]
            reason = self._OK[packet[2] if n > 2 else 0]
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, reason, self._NO_PROPERTIES)
            return mqtt.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _update_inflight(self) -> mqtt.MQTTErrorCode:
        if len(self._out_messages) <= self._inflight_messages:
            return mqtt.MQTT_ERR_SUCCESS  # every message is in flight: none is queued
        return super()._update_inflight()


def publisher(
    conn: Connection, devices: list[tuple[str, str]], host: str, port: int, window: int
) -> None:
    """One lean publisher process: a paho client per device, no network thread.

    Each batch goes out on the next device's client: ``window`` publishes, sent in one
    write, then the socket is served until the last is acknowledged (what
    ``wait_for_publish`` does, without a thread), which bounds what paho holds in flight.
    """
    codes: dict[str, Any] = {}
    clients: list[tuple[LeanClient, str]] = []
    for dev_id, password in devices:
        c = LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{dev_id}-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        c.username_pw_set(dev_id, password)
        c.max_inflight_messages_set(window)

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any, dev: str = dev_id) -> None:
            codes[dev] = rc

        c.on_connect = on_connect
        c.connect(host, port, keepalive=600)
        clients.append((c, f"devices/{dev_id}/air"))
    deadline = time.monotonic() + 20
    for c, _ in clients:
        while not c.is_connected() and time.monotonic() < deadline:
            serve(c, 0.05)
    refused = {d: str(rc) for d, rc in codes.items() if rc.is_failure}
    if refused or len(codes) < len(clients):
        conn.send(("error", f"connect failed: {refused or 'no CONNACK'}"))
        return
    conn.send(("ready",))
    batch = 0
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        n, pace = cmd[1], cmd[2]
        for c, _ in clients:  # keepalive for clients idle since the last run
            c.loop_misc()
            serve(c, 0)
        # Paced: batches of 10 ms worth of readings, each at its due time.
        size = min(window, max(1, int(pace / 100))) if pace else window
        cpu0, t0 = os.times(), time.perf_counter()
        sent = 0
        while sent < n:
            c, topic = clients[batch % len(clients)]
            batch += 1
            k = min(size, n - sent)
            if pace and (early := t0 + sent / pace - time.perf_counter()) > 0:
                time.sleep(early)
            for i in range(k):
                v = (sent + i) % 100
                payload = PAYLOAD % (time.time() * 1000, 2 + v / 10, 5 + v / 5, 20 + v % 10, 60)
                info = c.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                conn.send(("error", f"publish failed on {topic}: {info.rc}"))
                return
            while not info.is_published():
                rc = serve(c, 1.0)
                if rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
                    conn.send(("error", f"connection lost on {topic}: {rc}"))
                    return
            sent += k
        cpu1, t1 = os.times(), time.perf_counter()
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        conn.send(("done", n, t1 - t0, cpu))
    for c, _ in clients:
        c.disconnect()
        serve(c, 0.1)


def serve(c: LeanClient, timeout: float) -> mqtt.MQTTErrorCode:
    """Write what is queued, then read what came within ``timeout``: paho's loop, less a
    socket pair and a select per packet."""
    sock = c.socket()
    if sock is None:
        return mqtt.MQTT_ERR_NO_CONN
    if c.want_write():
        rc = c.loop_write()
        if rc != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:  # a DISCONNECT closes it
            return rc
    readable, _, _ = select.select([sock], [], [], timeout)
    if readable:
        return c.loop_read()
    return mqtt.MQTT_ERR_SUCCESS


class Publishers:
    """Several publisher processes, started once and used by both phases."""

    def __init__(
        self, creds: list[tuple[str, str]], processes: int, settings: Settings, window: int
    ) -> None:
        ctx = mp.get_context("spawn")
        self.window = window
        self.conns: list[Connection] = []
        self.procs = []
        for i in range(processes):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(
                target=publisher,
                args=(theirs, creds[i::processes], settings.mqtt.host, settings.mqtt.port, window),
                daemon=True,
            )
            p.start()
            self.conns.append(mine)
            self.procs.append(p)
        for c in self.conns:
            self._expect(c, "ready")

    @staticmethod
    def _expect(conn: Connection, what: str) -> tuple[Any, ...]:
        if not conn.poll(120):
            sys.exit(f"publisher: no {what!r} within 120 s")
        msg = conn.recv()
        if msg[0] != what:
            sys.exit(f"publisher: {msg}")
        return msg

    def start(self, n: int, rate: float = 0.0) -> None:
        """Tell every process to publish its share of n readings (returns at once), at its
        share of ``rate`` readings/s (0: as fast as it can)."""
        share = [n // len(self.conns)] * len(self.conns)
        share[0] += n - sum(share)
        for conn, k in zip(self.conns, share, strict=True):
            conn.send(("run", k, rate * k / n if rate else 0.0))

    def results(self) -> tuple[float, float]:
        """(longest publishing wall time, total CPU seconds) of the last run."""
        done = [self._expect(c, "done") for c in self.conns]
        return max(d[2] for d in done), sum(d[3] for d in done)

    def close(self) -> None:
        for c in self.conns:
            c.send(("stop",))
        for p in self.procs:
            p.join(10)


# ---------------------------------------------------------------- ceiling subscriber


class CeilingSubscriber:
    """``mosquitto_sub`` (C) as the ceiling's sink: what Mosquitto delivers at QoS 1 with
    no work per message in the measured process. Lines are parsed by a thread of the
    bench, whose CPU is not counted as the sink's."""

    def __init__(
        self, settings: Settings, password: str, client_id: str, topics: list[str], total: int
    ) -> None:
        # stdbuf: line-buffered output, or the SUBACK line waits in a pipe buffer.
        args = [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-h",
            settings.mqtt.host,
            "-p",
            str(settings.mqtt.port),
            "-u",
            INGEST_USER,
            "-P",
            password,
            "-i",
            client_id,
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-D",
            "connect",
            "receive-maximum",
            str(settings.ingest.receive_maximum),
            "-C",
            str(total),
            "-F",
            "%U %p",
            "-d",
        ]
        for t in topics:
            args += ["-t", t]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        self.ready = threading.Event()
        self.lines: list[tuple[float, bytes]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"Client "):  # -d debug lines
                if b"SUBACK" in line:
                    self.ready.set()
                continue
            ts, _, payload = line.rstrip(b"\n").partition(b" ")
            try:
                self.lines.append((float(ts) * 1000, payload))
            except ValueError:  # other -d lines ("Subscribed (mid: 1): 1")
                continue

    def received(self) -> int:
        return len(self.lines)

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout)
        self._reader.join(10)


# ---------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    readings: int = 0
    publish_s: float = 0.0
    sink_s: float = 0.0  # first to last record at the sink
    lat_ms: list[float] = field(default_factory=list)
    lat_create_ms: list[float] = field(default_factory=list)  # to Kafka CreateTime
    sent_ms: list[float] = field(default_factory=list)  # each reading's send time
    cpu_s: dict[str, float] = field(default_factory=dict)
    busy_cores: float = 0.0
    peak_rss_kb: int = 0
    start_rss_kb: int = 0
    deadletters: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.readings - 1) / self.sink_s if self.sink_s > 0 else 0.0


def run_ceiling(
    args: argparse.Namespace, settings: Settings, pubs: Publishers, ids: list[str], u: str
) -> Phase:
    warm = pubs.window * len(pubs.conns)
    sub = CeilingSubscriber(
        settings,
        mqtt_password(settings, INGEST_USER),
        f"bench-ceiling-{u}",
        [f"$share/bench{u}/devices/{d}/air" for d in ids],
        warm + args.readings,
    )
    if not sub.ready.wait(20):
        sys.exit("ceiling: mosquitto_sub got no SUBACK")
    pubs.start(warm)
    pubs.results()
    deadline = time.monotonic() + 120
    while sub.received() < warm and time.monotonic() < deadline:
        time.sleep(0.05)
    watch = CpuWatch({"mosquitto": pid_file(settings, "mosquitto"), "sink": sub.proc.pid})
    watch.start()
    pubs.start(args.readings, args.rate)
    publish_s, pub_cpu = pubs.results()
    sub.wait(600)
    watch.stop()
    measured = [(t, p) for t, p in sub.lines[warm:] if MARK in p]
    times = [t for t, _ in measured]
    lat = [t - json.loads(p)["ts"] for t, p in measured]
    phase = Phase("ceiling", readings=len(times), publish_s=publish_s, lat_ms=lat)
    phase.sink_s = (times[-1] - times[0]) / 1000 if len(times) > 1 else 0.0
    phase.cpu_s = {"publishers": pub_cpu, **watch.spent}
    phase.busy_cores = watch.busy_cores
    return phase


async def run_system(
    args: argparse.Namespace, settings: Settings, pubs: Publishers, ids: list[str], u: str
) -> Phase:
    prefix = f"bench{u}."
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    topics = Topology(prefix=prefix, partitions=kafka.partitions)
    await ensure_topics(kafka.bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    parts = [
        TopicPartition(t, p)
        for t in (topics.readings("air"), topics.deadletter)
        for p in range(kafka.partitions)
    ]
    consumer.assign(parts)
    await consumer.seek_to_beginning()

    log = Path(tempfile.mkdtemp(prefix="bench-ingest-")) / "ingest.log"
    env = {
        **os.environ,
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_MQTT__SHARE_GROUP": f"bench{u}",
        "CIVIC_INGEST__INSTANCE": f"bench{u}",
        "CIVIC_INGEST__HTTP_PORT": "0",
        "CIVIC_INGEST__MQTT_READER": args.reader,
    }
    cmd = [sys.executable, "-m", "ops.cli", "ingest"]
    if args.profile:
        cmd = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(args.profile),
            "-m",
            "ops.cli",
            "ingest",
        ]
    proc = subprocess.Popen(  # noqa: ASYNC220 - once, before anything is measured
        cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=args.ingest_dir
    )
    phase = Phase("system")
    try:
        deadline = time.monotonic() + 60
        while "mqtt connected" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ingest did not start; log {log}:\n{log.read_text()}")
            await asyncio.sleep(0.1)

        records: list[tuple[bytes, int, float]] = []  # value, CreateTime ms, consumed ms

        async def consume(until: int) -> None:
            last_new = time.monotonic()
            while len(records) < until:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                now = time.time() * 1000
                for tp, recs in batch.items():
                    if tp.topic == topics.deadletter:
                        phase.deadletters += len(recs)
                        continue
                    # A record holds a partition's readings of one ingest batch, one a line.
                    records.extend(
                        (line, r.timestamp, now)
                        for r in recs
                        if r.value and MARK in r.value
                        for line in record_lines(r.value)
                        if MARK in line
                    )
                    last_new = time.monotonic()
                if time.monotonic() - last_new > 30:
                    phase.notes.append(f"stalled at {len(records)} of {until} records")
                    return

        # Warm-up: the subscription is in place and the producer knows the topic.
        warm = pubs.window * len(pubs.conns)
        pubs.start(warm)
        await consume(warm)
        pubs.results()
        n_warm = len(records)
        phase.start_rss_kb = proc_status_kb(proc.pid, "VmRSS")
        watch = CpuWatch(
            {
                "mosquitto": pid_file(settings, "mosquitto"),
                "ingest": proc.pid,
                "kafka": pid_file(settings, "kafka"),
                **{f"other ingest {pid}": pid for pid in other_ingests() if pid != proc.pid},
            },
            # The main thread (tid == pid) runs the asyncio loop: MQTT, validation, Kafka,
            # acks. Other threads: aiokafka's resolver, and paho's network thread in an
            # ingest older than the loop-driven one.
            threads={"ingest main thread": (proc.pid, proc.pid)},
        )
        watch.start()
        consumer_cpu0 = time.process_time()
        pubs.start(args.readings, args.rate)
        await consume(n_warm + args.readings)
        consumer_cpu = time.process_time() - consumer_cpu0
        watch.stop()
        phase.peak_rss_kb = proc_status_kb(proc.pid, "VmHWM")
        phase.publish_s, pub_cpu = pubs.results()
        phase.cpu_s = {"publishers": pub_cpu, **watch.spent, "bench consumer": consumer_cpu}
        phase.busy_cores = watch.busy_cores
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await consumer.stop()
        forget_session(settings, f"civic-ingest-bench{u}")
        await delete_topics(kafka.bootstrap, topics)
    measured = records[n_warm:]
    phase.readings = len(measured)
    if len(measured) > 1:
        creates = [r[1] for r in measured]
        phase.sink_s = (max(creates) - min(creates)) / 1000
        for value, create_ms, consumed_ms in measured:
            sent_ms = datetime.fromisoformat(json.loads(value)["event_time"]).timestamp() * 1000
            phase.lat_create_ms.append(create_ms - sent_ms)
            phase.lat_ms.append(consumed_ms - sent_ms)
            phase.sent_ms.append(sent_ms)
    if proc.returncode not in (0, -signal.SIGTERM):
        phase.notes.append(f"ingest exited {proc.returncode}; log {log}")
    return phase


def forget_session(settings: Settings, client_id: str) -> None:
    """Drop the bench ingest's persistent session, so the broker queues nothing for it."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(INGEST_USER, mqtt_password(settings, INGEST_USER))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(settings.mqtt.host, settings.mqtt.port, clean_start=True, properties=props)
    c.loop(2.0)
    c.disconnect()


# ---------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(args: argparse.Namespace, ceiling: Phase, system: Phase) -> None:
    def us(phase: Phase, name: str) -> str:
        if name not in phase.cpu_s or not phase.readings:
            return "-"
        return f"{phase.cpu_s[name] / phase.readings * 1e6:.1f}"

    rows = [
        ("readings measured", f"{ceiling.readings}", f"{system.readings}"),
        (
            "publishers' rate, readings/s",
            f"{ceiling.readings / ceiling.publish_s:,.0f}" if ceiling.publish_s else "-",
            f"{system.readings / system.publish_s:,.0f}" if system.publish_s else "-",
        ),
        ("sustained at the sink, readings/s", f"{ceiling.rate:,.0f}", f"{system.rate:,.0f}"),
        (
            "latency p50 / p99, ms (to consumer)",
            f"{pct(ceiling.lat_ms, 50):.0f} / {pct(ceiling.lat_ms, 99):.0f}",
            f"{pct(system.lat_ms, 50):.0f} / {pct(system.lat_ms, 99):.0f}",
        ),
        (
            "latency p50 / p99, ms (to Kafka CreateTime)",
            "-",
            f"{pct(system.lat_create_ms, 50):.0f} / {pct(system.lat_create_ms, 99):.0f}",
        ),
        ("CPU us/reading: publishers", us(ceiling, "publishers"), us(system, "publishers")),
        ("CPU us/reading: mosquitto", us(ceiling, "mosquitto"), us(system, "mosquitto")),
        ("CPU us/reading: subscriber | ingest", us(ceiling, "sink"), us(system, "ingest")),
        ("  of which ingest's main thread", "-", us(system, "ingest main thread")),
        ("CPU us/reading: kafka broker", "-", us(system, "kafka")),
        ("CPU us/reading: bench consumer", "-", us(system, "bench consumer")),
        *[
            (f"CPU us/reading: {name}", "-", us(system, name))
            for name in system.cpu_s
            if name.startswith("other ingest")
        ],
        (
            f"machine CPU busy, cores (of {os.cpu_count() or 1})",
            f"{ceiling.busy_cores:.2f}",
            f"{system.busy_cores:.2f}",
        ),
        (
            "ingest RSS after warm-up / peak (VmHWM), MiB",
            "-",
            f"{system.start_rss_kb / 1024:.0f} / {system.peak_rss_kb / 1024:.0f}",
        ),
        ("dead letters", "-", f"{system.deadletters}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    print()
    print(
        f"ingest bench: {args.readings} air readings, {args.devices} devices, "
        f"{args.publishers} publisher process(es), window {args.window}, "
        f"ingest reader {args.reader}, "
        + (f"paced at {args.rate:,.0f} readings/s" if args.rate else "publishers flat out")
    )
    print(f"{'':<{w0}}  {'ceiling (MQTT only)':>22}  {'system (MQTT->ingest->Kafka)':>29}")
    for name, a, b in rows:
        print(f"{name:<{w0}}  {a:>22}  {b:>29}")
    ratio = system.rate / ceiling.rate if ceiling.rate else float("nan")
    verdict = "meets" if system.rate >= args.target else "BELOW"
    paced = " (paced: both carry the offered load; run flat out for the ratio)" if args.rate else ""
    print(f"\nratio system / ceiling: {ratio:.2f}{paced}")
    print(f"target {args.target:,.0f} readings/s through one ingest: {verdict}")
    for note in ceiling.notes + system.notes:
        print(f"note: {note}")
    if args.timeline and system.sent_ms:
        print("\nsystem latency to Kafka CreateTime by second sent: n, p50 / p99 / max ms")
        by_s: dict[int, list[float]] = {}
        t0 = min(system.sent_ms)
        for sent, lat in zip(system.sent_ms, system.lat_create_ms, strict=True):
            by_s.setdefault(int((sent - t0) / 1000), []).append(lat)
        for sec, lats in sorted(by_s.items()):
            print(
                f"  {sec:4d} s  {len(lats):6d}  {pct(lats, 50):6.0f} / {pct(lats, 99):6.0f}"
                f" / {max(lats):6.0f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=50, help="air devices from the registry")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--window", type=int, default=1000, help="messages in flight per batch")
    parser.add_argument("--target", type=float, default=10_000, help="readings/s")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered load, readings/s over all publishers (default: flat out); paced runs "
        "measure latency at that load rather than the most the system takes",
    )
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--timeline", action="store_true", help="also print the system's latency per second"
    )
    parser.add_argument("--profile", type=Path, help="run ingest under cProfile, write here")
    parser.add_argument(
        "--reader",
        choices=["own", "paho"],
        default="own",
        help="how ingest reads device messages (CIVIC_INGEST__MQTT_READER): its own slicing "
        "reader, or paho's public parser; run both alternately for an A/B",
    )
    parser.add_argument(
        "--ingest-dir",
        type=Path,
        default=REPO,
        help="run ingest with this working directory, so its ingest/ package is the one "
        "imported: an A/B comparison against another checkout (e.g. from git archive)",
    )
    parser.add_argument(
        "--force", action="store_true", help="run although an ingest without a prefix is up"
    )
    args = parser.parse_args()

    others = other_ingests()
    # Integration tests' ingests write to throwaway topics; anything else (a deployment, a
    # demo) has processors behind it that would see the bench's readings as real ones.
    live = [p for p, prefix in others.items() if not re.fullmatch(r"t[0-9a-f]{10}\.", prefix)]
    if live and not args.force:
        sys.exit(
            f"ingest process(es) {live} feed processors: every bench reading would reach "
            "them too. Wait until they stop, or pass --force."
        )
    for pid, prefix in others.items():
        print(f"warning: ingest pid {pid} (prefix {prefix!r}) also receives every reading")

    settings = get_settings()
    registry = load_registry(settings.registry)
    devices = registry.of_kind("air")[: args.devices]
    if len(devices) < args.devices:
        sys.exit(f"the registry has only {len(devices)} air devices")
    secret = device_secret(settings.data_dir)
    creds = [(d.id, device_password(secret, d.id)) for d in devices]
    ids = [d.id for d in devices]
    u = uuid.uuid4().hex[:8]
    pubs = Publishers(creds, args.publishers, settings, args.window)
    try:
        if args.skip_ceiling:
            ceiling = Phase("ceiling")
        else:
            print("ceiling: publishers -> mosquitto -> subscriber ...", flush=True)
            ceiling = run_ceiling(args, settings, pubs, ids, u)
        print("system: publishers -> mosquitto -> ingest -> kafka -> consumer ...", flush=True)
        system = asyncio.run(run_system(args, settings, pubs, ids, u))
    finally:
        pubs.close()
    report(args, ceiling, system)
    return 0


if __name__ == "__main__":
    sys.exit(main())
