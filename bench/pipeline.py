"""The whole pipeline, MQTT -> InfluxDB: the QoS 1 ceiling, Telegraf and civic-iot in one
run (run by hand, on a PRIVATE stack).

    . .civic-private/env          # CIVIC_DATA_DIR, CIVIC_MQTT__PORT, CIVIC_MQTT__TLS_PORT,
                                  # CIVIC_KAFKA__BOOTSTRAP, CIVIC_KAFKA_CONTROLLER_PORT,
                                  # CIVIC_INFLUX__URL of your own (see bench/chaos.py)
    deploy/stack.sh up
    .venv/bin/python bench/pipeline.py --readings 50000              # flat out
    .venv/bin/python bench/pipeline.py --readings 20000 --rate 400   # a steady load

It refuses the shared stack's ports: it loads both cores flat out for minutes, and every
ingest on a shared broker would receive its readings. Telegraf is built once and cached
beside influxd (``bench/telegraf.sh``, about a minute).

The same lean publishers as ``bench/ingest.py`` (paho, one process per ``--publishers``,
each device with its own credentials, QoS 1, batches of ``--window`` messages written at
once and acknowledged before the next: a bounded in-flight window) publish ``--readings``
clean air readings through each path in turn, after a warm-up window per publisher that is
not counted:

1. **ceiling**: Mosquitto -> ``mosquitto_sub`` (C, QoS 1): what the broker delivers with
   no work per message;
2. **telegraf**: Mosquitto -> Telegraf (``inputs.mqtt_consumer`` at QoS 1,
   ``max_undelivered_messages`` 10,000; the JSON parser with the reading's ``ts`` as its
   time; ``outputs.influxdb_v2`` to a bucket of its own; ``metric_batch_size``
   ``--telegraf-batch``, 1,000 as Telegraf's default, ``flush_interval`` 1 s). Its default
   clean session acknowledges each message on receipt: a crash loses what is not yet
   written;
   **telegraf-durable**: the same with a persistent session, so each message is
   acknowledged only once its metric is written (civic-iot's guarantee: ingest
   acknowledges once Kafka has the reading). Mosquitto then has at most
   ``max_inflight_messages`` (1,000, deploy/mosquitto) unacknowledged messages out to
   Telegraf, an MQTT 3.1.1 client: with batches of 1,000, it waits for each write;
3. **civic-iot**: Mosquitto -> ingest -> Kafka -> a ``bulk`` processors worker -> InfluxDB
   (raw and derived points), with the seismic worker and the alert service beside them as
   deployed (:class:`ops.pipeline.Pipeline`), on a fresh topic prefix and buckets.

Per path: readings stored per second (publishing started -> the last reading stored), the
ratio to the ceiling's, CPU per stored reading (user + sys from ``/proc`` of the path's
processes: brokers included, publishers apart), peak RSS of the path's own processes
(VmHWM), latency publish -> stored p50 / p99, and loss (acknowledged by the broker vs
stored, each reading counted once). CPU is counted from publishing started until the last
reading is received or written (ceiling, Telegraf) or, for civic-iot, until the worker has
committed the offsets of every reading (after its points are stored; Faust commits every
2.8 s). Paced (``--rate``), each process's idle work over the longer run counts per
reading too, and ingest's batches are small (the publishers send 10 ms worth at a time).

When a reading is stored: the ceiling's subscriber prints each message's arrival time
(exact); Telegraf's debug log says ``Wrote batch of N metrics`` after each write, read
here as it comes (exact to the batch); civic-iot's raw readings are counted in InfluxDB
every ``--poll`` s (the answer's arrival time: late by up to the interval). Each count
costs InfluxDB CPU (about 11 ms at 50,000 points, in its cache), charged to the path: the
default, once a second, keeps that under ~10 us per reading on a run of a minute (at 0.1 s
it would be a third of InfluxDB's figure); the same query runs through Telegraf's runs,
which are shorter, and the result gives the number of counts. A reading's
``ts`` is its send time; latency maps the k-th reading sent to the k-th stored (first in,
first out: Telegraf writes in arrival order, the worker nearly), so it is an estimate for
the two stored paths. Flat out, latency is mostly backlog: ``--rate`` offers a steady load.

CPU per reading is the figure to compare on a shared machine: readings/s and the ratios
swing with other processes' load (flat out, the ceiling's run lasts a few seconds), and the
load average is printed with every path. The result goes to
``bench/results/pipeline-<time>.json``; the table and the README's row are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Buckets, load, refuse_shared_stack, wait_committed  # noqa: E402
from bench.ingest import (  # noqa: E402
    MARK,
    CeilingSubscriber,
    CpuWatch,
    Publishers,
    forget_session,
    pid_file,
    proc_status_kb,
)
from civic_iot.accounts import INGEST_USER  # noqa: E402
from civic_iot.kafka_admin import delete_topics  # noqa: E402
from civic_iot.registry import device_password, device_secret, load_registry  # noqa: E402
from civic_iot.settings import Settings, get_settings, influx_token, mqtt_password  # noqa: E402
from ops.pipeline import Pipeline  # noqa: E402

#: Telegraf acknowledges a message on receipt by default (a clean session); with a
#: persistent session, once its metric is written: "telegraf-durable", the guarantee
#: civic-iot gives (ingest acknowledges once Kafka has the reading).
PATHS = ("ceiling", "telegraf", "telegraf-durable", "civic")
#: The field every stored air reading has, in both stored paths' ``air`` measurement.
COUNTED_FIELD = "pm2_5_ugm3"
_WROTE = re.compile(r"\bWrote batch of (\d+) metrics\b")


# ---------------------------------------------------------------- pure helpers


def wrote_batch(line: str) -> int:
    """Metrics that a line of Telegraf's debug log says were written (0: another line)."""
    m = _WROTE.search(line)
    return int(m.group(1)) if m else 0


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these)."""
    return json.dumps(value)


@dataclass(frozen=True)
class TelegrafPlan:
    """What Telegraf's configuration says (:func:`telegraf_config`)."""

    mqtt_url: str
    username: str
    password: str
    topics: tuple[str, ...]
    client_id: str
    influx_url: str
    token: str
    org: str
    bucket: str
    #: A persistent session: each message acknowledged once its metric is written (else
    #: on receipt, Telegraf's default).
    persistent: bool = False
    batch: int = 1000
    flush_s: float = 1.0
    undelivered: int = 10_000
    #: Telegraf's buffer holds at least what the consumer may have undelivered.
    buffer: int = 20_000


def telegraf_config(p: TelegrafPlan) -> str:
    """Telegraf's TOML: the MQTT consumer at QoS 1 (with ``persistent``, a persistent
    session: messages are acknowledged once written, not on receipt), the JSON parser with
    ``ts`` (epoch ms) as the metric's time and ``air`` as its name, the InfluxDB v2 output;
    debug logging on stderr, which is how the bench sees each write."""
    topics = ", ".join(_toml(t) for t in p.topics)
    return f"""\
[agent]
  metric_batch_size = {p.batch}
  metric_buffer_limit = {p.buffer}
  flush_interval = "{p.flush_s:g}s"
  flush_jitter = "0s"
  omit_hostname = true
  debug = true
  quiet = false

[[inputs.mqtt_consumer]]
  servers = [{_toml(p.mqtt_url)}]
  topics = [{topics}]
  qos = 1
  persistent_session = {str(p.persistent).lower()}
  client_id = {_toml(p.client_id)}
  max_undelivered_messages = {p.undelivered}
  username = {_toml(p.username)}
  password = {_toml(p.password)}
  topic_tag = "topic"
  name_override = "air"
  data_format = "json"
  json_time_key = "ts"
  json_time_format = "unix_ms"

[[outputs.influxdb_v2]]
  urls = [{_toml(p.influx_url)}]
  token = {_toml(p.token)}
  organization = {_toml(p.org)}
  bucket = {_toml(p.bucket)}
"""


def count_flux(bucket: str, since_ns: int) -> str:
    """Air readings (one point each) stored in ``bucket`` with times from ``since_ns``."""
    return f"{_air_flux(bucket, since_ns)} |> group() |> count()"


def times_flux(bucket: str, since_ns: int) -> str:
    """The time of every air reading stored in ``bucket`` from ``since_ns``."""
    return f'{_air_flux(bucket, since_ns)} |> keep(columns: ["_time"])'


def _air_flux(bucket: str, since_ns: int) -> str:
    return (
        f'from(bucket: "{bucket}") |> range(start: time(v: {since_ns})) '
        f'|> filter(fn: (r) => r._measurement == "air" and r._field == "{COUNTED_FIELD}")'
    )


def reached(steps: Sequence[tuple[float, int]], n: int) -> float | None:
    """The first time (s) at which the count in ``steps`` ((time, count) in time order)
    is at least ``n``; None if it never is."""
    return next((t for t, c in steps if c >= n), None)


def fifo_latencies_ms(sent_ms: Iterable[float], steps: Sequence[tuple[float, int]]) -> list[float]:
    """Latency, ms, of each reading sent at ``sent_ms`` (epoch ms) when the k-th sent is
    the k-th stored: it was stored at the first step (epoch s, readings stored so far)
    whose count exceeds k. Readings no step reaches are left out."""
    out: list[float] = []
    i = 0
    for k, sent in enumerate(sorted(sent_ms)):
        while i < len(steps) and steps[i][1] <= k:
            i += 1
        if i == len(steps):
            break
        out.append(steps[i][0] * 1000 - sent)
    return out


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of ``values``, nearest rank; None for none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


@dataclass
class PathResult:
    """One path's run: what was acknowledged and stored, when, and at what cost."""

    name: str
    acknowledged: int
    stored: int
    #: Epoch s: publishing started; the last reading stored (None: never all of them).
    t0: float
    t_done: float | None
    #: CPU seconds of each process over the run (publishers apart).
    cpu_s: dict[str, float]
    #: The path's own processes (what it adds to the broker): their CPU and memory.
    own: tuple[str, ...]
    rss_mib: dict[str, float] = field(default_factory=dict)
    lat_ms: list[float] = field(default_factory=list)
    #: How latency was measured: "exact" or how it was estimated.
    lat_how: str = "exact"
    publish_s: float = 0.0
    publishers_cpu_s: float = 0.0
    load_start: str = ""
    load_end: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float | None:
        return None if self.t_done is None else self.t_done - self.t0

    @property
    def rate(self) -> float:
        """Readings stored per second, publishing started -> the last one stored."""
        wall = self.wall_s
        return self.stored / wall if wall else 0.0

    @property
    def lost(self) -> int:
        return self.acknowledged - self.stored

    def cpu_us(self, names: Iterable[str] | None = None) -> float | None:
        """CPU per stored reading, us, of ``names`` (default: every process of the path)."""
        if not self.stored:
            return None
        chosen = self.cpu_s if names is None else {n: self.cpu_s.get(n, 0.0) for n in names}
        return sum(chosen.values()) / self.stored * 1e6


def summary(results: Sequence[PathResult]) -> dict[str, Any]:
    """Every path's figures, with its ratio to the ceiling's rate and its CPU per reading
    against Telegraf's (when those paths ran): the JSON of a run."""
    by = {r.name: r for r in results}
    ceiling = by.get("ceiling")
    telegraf = by.get("telegraf")
    paths: dict[str, Any] = {}
    for r in results:
        d = {k: v for k, v in asdict(r).items() if k != "lat_ms"}
        d |= {
            "wall_s": r.wall_s,
            "rate": r.rate,
            "lost": r.lost,
            "cpu_us_path": r.cpu_us(),
            "cpu_us_own": r.cpu_us(r.own),
            "lat_p50_ms": pct(r.lat_ms, 0.5),
            "lat_p99_ms": pct(r.lat_ms, 0.99),
            "ratio_to_ceiling": r.rate / ceiling.rate if ceiling and ceiling.rate else None,
        }
        if telegraf is not None and r.name in ("civic", "telegraf-durable"):
            tp, to = telegraf.cpu_us(), telegraf.cpu_us(telegraf.own)
            mp, mo = r.cpu_us(), r.cpu_us(r.own)
            d["cpu_x_telegraf_path"] = mp / tp if mp and tp else None
            d["cpu_x_telegraf_own"] = mo / to if mo and to else None
        paths[r.name] = d
    return {"paths": paths}


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def table_rows(s: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The report's rows: a label and one cell per path, in the order they ran."""
    paths = list(s["paths"].values())

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> tuple[str, list[str]]:
        return label, [cell(p) for p in paths]

    def lat(p: dict[str, Any]) -> str:
        if p["lat_p50_ms"] is None:
            return "-"
        return f"{p['lat_p50_ms']:,.0f} / {p['lat_p99_ms']:,.0f}" + (
            "" if p["lat_how"] == "exact" else " (est.)"
        )

    procs = sorted({n for p in paths for n in p["cpu_s"]}, key=_process_order)
    return [
        row("stored / acknowledged", lambda p: f"{p['stored']:,} / {p['acknowledged']:,}"),
        row("lost", lambda p: f"{p['lost']:,}"),
        row("stored readings/s", lambda p: _num(p["rate"])),
        row("ratio to the ceiling", lambda p: _num(p["ratio_to_ceiling"], ".2f")),
        row("publish -> stored p50 / p99, ms", lat),
        row("CPU us/reading, path (brokers too)", lambda p: _num(p["cpu_us_path"], ",.1f")),
        row("CPU us/reading, own processes", lambda p: _num(p["cpu_us_own"], ",.1f")),
        row("  x Telegraf's, path / own", _x_telegraf),
        *[
            row(f"  CPU us/reading: {n}", lambda p, n=n: _num(_us(p, n), ",.1f"))  # type: ignore[misc]
            for n in procs
        ],
        row(
            "peak RSS, MiB (own processes)",
            lambda p: " + ".join(f"{v:.0f}" for v in p["rss_mib"].values()) or "-",
        ),
        row("publishers' CPU us/reading", lambda p: _num(_us_pub(p), ",.1f")),
        row("load average at start", lambda p: p["load_start"].split(" on ")[0]),
        row("load average at end", lambda p: p["load_end"].split(" on ")[0]),
    ]


def _process_order(name: str) -> tuple[int, str]:
    brokers = ("mosquitto", "kafka", "influxdb")
    return (1 if name in brokers else 0, name)


def _us(p: dict[str, Any], name: str) -> float | None:
    if name not in p["cpu_s"] or not p["stored"]:
        return None
    return float(p["cpu_s"][name]) / int(p["stored"]) * 1e6


def _us_pub(p: dict[str, Any]) -> float | None:
    return float(p["publishers_cpu_s"]) / int(p["stored"]) * 1e6 if p["stored"] else None


def _x_telegraf(p: dict[str, Any]) -> str:
    if "cpu_x_telegraf_path" not in p:
        return "-"
    return f"{_num(p['cpu_x_telegraf_path'], '.1f')} / {_num(p['cpu_x_telegraf_own'], '.1f')}"


def render(rows: Sequence[tuple[str, list[str]]], headers: Sequence[str]) -> str:
    """A plain text table: labels left, cells right-aligned."""
    w0 = max(len(label) for label, _ in rows)
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    lines = [" " * w0 + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths, strict=True))]
    for label, cells in rows:
        lines.append(
            f"{label:<{w0}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def readme_row(s: dict[str, Any], readings: int, rate: float = 0.0) -> str:
    """The README's "Measured performance" row for this run (path | latest figures | run
    | benchmark: the ceiling, Telegraf and civic-iot; Telegraf with a persistent session
    too when it ran); ``rate``: the offered readings/s (0: flat out)."""
    paths = s["paths"]
    c, t, o = paths["ceiling"], paths["telegraf"], paths["civic"]

    def lat(p: dict[str, Any]) -> str:
        return f"p50 {_num(p['lat_p50_ms'])} / p99 {_num(p['lat_p99_ms'])} ms"

    def peer(p: dict[str, Any]) -> str:
        return (
            f"{_num(p['rate'])}/s, {_num(p['ratio_to_ceiling'], '.2f')} of the ceiling, "
            f"{_num(p['cpu_us_path'])} us ({_num(p['cpu_us_own'])} us its own), "
            f"lost {p['lost']:,}, {lat(p)}"
        )

    offered = f"offered at {rate:,.0f}/s" if rate else "publishers flat out"
    durable = paths.get("telegraf-durable")
    also = (
        ""
        if durable is None
        else f"; Telegraf acknowledging once written (persistent session) {peer(durable)}"
    )
    return (
        f"| devices -> Mosquitto -> InfluxDB, whole pipeline, {readings:,} clean air readings "
        f"at QoS 1, {offered}, against Telegraf in the same run | civic-iot (ingest "
        f"-> Kafka -> bulk worker, raw + derived; seismic worker and alert service beside) "
        f"{_num(o['rate'])} readings/s stored, "
        f"{_num(o['ratio_to_ceiling'], '.2f')} of the QoS 1 ceiling ({_num(c['rate'])}/s), "
        f"{_num(o['cpu_us_path'])} us CPU per reading with the brokers "
        f"({_num(o['cpu_us_own'])} us its own processes), lost {o['lost']:,}, {lat(o)}; "
        f"Telegraf 1.37 (mqtt_consumer -> influxdb_v2, its defaults: acknowledged on "
        f"receipt) {peer(t)}{also}; ours {_num(o.get('cpu_x_telegraf_path'), '.1f')}x "
        f"Telegraf's CPU per reading ({_num(o.get('cpu_x_telegraf_own'), '.1f')}x own "
        f"processes) | {time.strftime('%Y-%m-%d')}, {readings:,} readings, load "
        f"{c['load_start'].split(' on ')[0]} to {o['load_end'].split(' on ')[0]} on 2 cores "
        f"| `bench/pipeline.py` |"
    )


# ---------------------------------------------------------------- InfluxDB reads


class Store:
    """Reads of the run's buckets: counts while it runs, every reading's time after."""

    def __init__(self, buckets: Buckets) -> None:
        self.api = buckets.client.query_api()

    def count(self, bucket: str, since_ns: int) -> int:
        tables = self.api.query(count_flux(bucket, since_ns))
        return sum(int(r.get_value()) for t in tables for r in t.records)

    def times_ms(self, bucket: str, since_ns: int) -> list[float]:
        return [
            r.get_time().timestamp() * 1000
            for r in self.api.query_stream(times_flux(bucket, since_ns))
        ]

    def points(self, bucket: str) -> int:
        """Every point of ``bucket`` (all measurements and fields)."""
        tables = self.api.query(
            f'from(bucket: "{bucket}") |> range(start: 0) |> group() |> count()'
        )
        return sum(int(r.get_value()) for t in tables for r in t.records)


def poll(
    count: Callable[[], int],
    n: int,
    *,
    interval_s: float,
    stall_s: float,
    timeout_s: float,
    done: Callable[[], bool] = lambda: False,
) -> tuple[list[tuple[float, int]], str | None]:
    """Call ``count`` every ``interval_s`` until it reaches ``n`` (or ``done()``); returns
    the (answer's arrival, count) steps and why it gave up (None: it did not)."""
    steps: list[tuple[float, int]] = []
    start = last_change = time.monotonic()
    last = -1
    while True:
        c = count()
        steps.append((time.time(), c))
        now = time.monotonic()
        if c != last:
            last, last_change = c, now
        if c >= n or done():
            return steps, None
        if now - last_change > stall_s:
            return steps, f"stalled at {c:,} of {n:,} for {stall_s:g} s"
        if now - start > timeout_s:
            return steps, f"not done within {timeout_s:g} s ({c:,} of {n:,})"
        while time.monotonic() < now + interval_s:  # done() is cheap: see it at once
            if done():
                return steps, None
            time.sleep(0.01)


# ---------------------------------------------------------------- the paths


@dataclass
class Run:
    """What every path shares."""

    args: argparse.Namespace
    settings: Settings
    pubs: Publishers
    ids: list[str]
    uid: str
    buckets: Buckets
    store: Store

    @property
    def warm(self) -> int:
        return self.pubs.window * len(self.pubs.conns)

    def publish(self) -> float:
        """Start the measured readings; returns when (epoch s)."""
        t0 = time.time()
        self.pubs.start(self.args.readings, self.args.rate)
        return t0

    def result(self, name: str, t0: float, watch: CpuWatch, own: tuple[str, ...]) -> PathResult:
        publish_s, pub_cpu = self.pubs.results()
        return PathResult(
            name=name,
            acknowledged=self.args.readings,  # every publisher's batch waits for its PUBACKs
            stored=0,
            t0=t0,
            t_done=None,
            cpu_s=dict(watch.spent),
            own=own,
            publish_s=publish_s,
            publishers_cpu_s=pub_cpu,
        )


def run_ceiling(run: Run) -> PathResult:
    s = run.settings
    sub = CeilingSubscriber(
        s,
        mqtt_password(s, INGEST_USER),
        f"bench-pipeline-{run.uid}",
        [f"$share/bench{run.uid}/devices/{d}/air" for d in run.ids],
        # It never stops by itself: its CPU is read while it runs, then it is ended.
        2**31 - 1,
    )
    if not sub.ready.wait(20):
        sys.exit("ceiling: mosquitto_sub got no SUBACK")
    run.pubs.start(run.warm)
    run.pubs.results()
    deadline = time.monotonic() + 120
    while sub.received() < run.warm and time.monotonic() < deadline:
        time.sleep(0.05)
    watch = CpuWatch({"mosquitto": pid_file(s, "mosquitto"), "subscriber": sub.proc.pid})
    start_load = load()
    watch.start()
    t0 = run.publish()
    total = run.warm + run.args.readings
    start = last_change = time.monotonic()
    last = sub.received()
    why = None
    while sub.received() < total:
        now = time.monotonic()
        if sub.received() != last:
            last, last_change = sub.received(), now
        if now - last_change > run.args.stall or now - start > run.args.timeout:
            why = f"received {sub.received() - run.warm:,} of {run.args.readings:,}"
            break
        time.sleep(0.01)
    watch.stop()
    sub.proc.terminate()
    sub.wait(30)
    r = run.result("ceiling", t0, watch, ("subscriber",))
    if why:
        r.notes.append(why)
    measured = [(t, p) for t, p in sub.lines[run.warm :] if MARK in p]
    r.stored = len(measured)
    r.t_done = measured[-1][0] / 1000 if measured else None
    r.lat_ms = [t - json.loads(p)["ts"] for t, p in measured]
    r.load_start, r.load_end = start_load, load()
    return r


class TelegrafProcess:
    """Telegraf with the run's configuration; a thread reads its log as it comes and keeps
    (arrival, metrics written so far) after every write."""

    def __init__(self, binary: str, plan: TelegrafPlan, workdir: Path) -> None:
        conf = workdir / "telegraf.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # MQTT password, token
        with os.fdopen(fd, "w") as f:
            f.write(telegraf_config(plan))
        self.log = workdir / "telegraf.log"
        self.proc = subprocess.Popen(
            [binary, "--config", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.written = 0
        self.steps: list[tuple[float, int]] = []
        self.connected = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("w") as out:
            for line in self.proc.stderr:
                now = time.time()
                out.write(line)
                if n := wrote_batch(line):
                    self.written += n
                    self.steps.append((now, self.written))
                elif "[inputs.mqtt_consumer] Connected" in line:
                    self.connected.set()
        self.connected.set()  # exited: whoever waits sees it by poll()

    def wait_written(self, n: int, timeout_s: float, stall_s: float) -> str | None:
        """Wait until ``n`` metrics are written; why not (None: they are)."""
        start = last_change = time.monotonic()
        last = self.written
        while self.written < n:
            if self.proc.poll() is not None:
                return f"telegraf exited {self.proc.returncode}; log {self.log}"
            now = time.monotonic()
            if self.written != last:
                last, last_change = self.written, now
            if now - last_change > stall_s:
                return f"stalled at {self.written:,} of {n:,} written for {stall_s:g} s"
            if now - start > timeout_s:
                return f"{self.written:,} of {n:,} written within {timeout_s:g} s"
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


def telegraf_binary() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "bench" / "telegraf.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def run_telegraf(run: Run, binary: str, name: str) -> PathResult:
    s, args = run.settings, run.args
    client_id = f"bench-{name}-{run.uid}"
    plan = TelegrafPlan(
        mqtt_url=f"tcp://{s.mqtt.host}:{s.mqtt.port}",
        username=INGEST_USER,
        password=mqtt_password(s, INGEST_USER),
        topics=tuple(f"devices/{d}/air" for d in run.ids),
        client_id=client_id,
        influx_url=s.influx.url,
        token=influx_token(s),
        org=s.influx.org,
        bucket=run.buckets.names[name.replace("-", "_")],
        persistent=name == "telegraf-durable",
        batch=args.telegraf_batch,
        flush_s=args.telegraf_flush,
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    tg = TelegrafProcess(binary, plan, workdir)
    bucket = plan.bucket
    try:
        if not tg.connected.wait(60) or tg.proc.poll() is not None:
            sys.exit(f"telegraf did not connect; log {tg.log}")
        # "Connected" comes before its SUBSCRIBE is acknowledged: give that a moment, and
        # count the warm-up as written once it stops growing (what it missed is no loss).
        time.sleep(1)
        run.pubs.start(run.warm)
        run.pubs.results()
        if (why := tg.wait_written(run.warm, 60, 3)) and tg.written == 0:
            sys.exit(f"telegraf warm-up: {why}")
        base = tg.written
        watch = CpuWatch(
            {
                "mosquitto": pid_file(s, "mosquitto"),
                "telegraf": tg.proc.pid,
                "influxdb": pid_file(s, "influxdb"),
            }
        )
        start_load = load()
        watch.start()
        t0 = run.publish()
        since = int(t0 * 1e9)
        n = args.readings
        # The same InfluxDB count, at the same interval, as civic-iot's run (the same extra
        # work in InfluxDB); the time of each write comes from Telegraf's log.
        polled, why = poll(
            lambda: run.store.count(bucket, since),
            n,
            interval_s=args.poll,
            stall_s=args.stall,
            timeout_s=args.timeout,
            done=lambda: tg.written >= base + n,
        )
        why = tg.wait_written(base + n, args.timeout, args.stall) if why is None else why
        watch.stop()
        r = run.result(name, t0, watch, ("telegraf",))
        r.rss_mib = {"telegraf": proc_status_kb(tg.proc.pid, "VmHWM") / 1024}
        r.load_start, r.load_end = start_load, load()
        steps = [(t, c - base) for t, c in tg.steps if c > base]
        r.t_done = reached(steps, n)
        if why:
            r.notes.append(why)
    finally:
        tg.stop()
        forget_session(s, client_id)
    sent = run.store.times_ms(bucket, since)
    r.stored = len(sent)
    r.lat_ms = fifo_latencies_ms(sent, steps)
    r.lat_how = "first in, first out, from Telegraf's log of writes"
    config = {k: v for k, v in asdict(plan).items() if k not in ("password", "token", "topics")}
    r.extra = {
        "config": config | {"topics": len(plan.topics)},
        "log": str(tg.log),
        "influx_counts": len(polled),
    }
    return r


def run_civic(run: Run) -> PathResult:
    s, args = run.settings, run.args
    prefix = f"bench{run.uid}."
    pipeline = Pipeline(s, prefix, Path(tempfile.mkdtemp(prefix="bench-pipeline-")))
    saved = dict(os.environ)
    # Pipeline's children take the run's buckets (and the admin token, for buckets made
    # now) from the environment.
    os.environ |= run.buckets.env() | {"CIVIC_INFLUX__TOKEN": influx_token(s)}
    readings = run.buckets.names["readings"]
    try:
        pipeline.start()
        procs = pipeline.procs
        t_warm = time.time()
        run.pubs.start(run.warm)
        run.pubs.results()
        since_warm = int(t_warm * 1e9)
        _, why = poll(
            lambda: run.store.count(readings, since_warm),
            run.warm,
            interval_s=args.poll,
            stall_s=5,
            timeout_s=120,
        )
        if why and run.store.count(readings, since_warm) == 0:
            sys.exit(f"civic-iot warm-up: {why}; logs {pipeline.log_dir}")
        own = ("ingest", "worker (bulk)", "worker (seismic)", "alerts")
        pids = {
            "ingest": procs["ingest"].pid,
            "worker (bulk)": procs["worker0"].pid,
            "worker (seismic)": procs["worker1"].pid,
            "alerts": procs["alerts"].pid,
        }
        watch = CpuWatch(
            {
                "mosquitto": pid_file(s, "mosquitto"),
                **pids,
                "kafka": pid_file(s, "kafka"),
                "influxdb": pid_file(s, "influxdb"),
            }
        )
        start_load = load()
        watch.start()
        t0 = run.publish()
        since = int(t0 * 1e9)
        n = args.readings
        steps, why = poll(
            lambda: run.store.count(readings, since),
            n,
            interval_s=args.poll,
            stall_s=args.stall,
            timeout_s=args.timeout,
        )
        # Stored is not done: the worker commits its offsets after its points are stored
        # (every 2.8 s, Faust's default); its CPU counts until then.
        topology = pipeline.topology
        t_committed: float | None = None
        with contextlib.suppress(TimeoutError):
            t_committed = asyncio.run(
                wait_committed(s, topology.processors_app, [topology.readings("air")], 120)
            )
        watch.stop()
        r = run.result("civic", t0, watch, own)
        r.rss_mib = {
            "ingest": proc_status_kb(pids["ingest"], "VmHWM") / 1024,
            "worker (bulk)": proc_status_kb(pids["worker (bulk)"], "VmHWM") / 1024,
        }
        r.load_start, r.load_end = start_load, load()
        r.t_done = reached(steps, n)
        if why:
            r.notes.append(why)
        r.extra = {
            "committed_s": None if t_committed is None else t_committed - t0,
            "influx_counts": len(steps),
            "derived_points": run.store.points(run.buckets.names["derived"]),
            "logs": str(pipeline.log_dir),
        }
        sent = run.store.times_ms(readings, since)
    finally:
        pipeline.stop()
        os.environ.clear()
        os.environ.update(saved)
        asyncio.run(delete_topics(s.kafka.bootstrap, pipeline.topology))
    r.stored = len(sent)
    r.lat_ms = fifo_latencies_ms(sent, steps)
    r.lat_how = f"first in, first out, from InfluxDB counted every {args.poll:g} s"
    return r


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--readings", type=int, default=30_000)
    ap.add_argument("--devices", type=int, default=50, help="air devices from the registry")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--window", type=int, default=1000, help="messages in flight per batch")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="offered readings/s (default: flat out)"
    )
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--telegraf-batch", type=int, default=1000, help="metric_batch_size")
    ap.add_argument("--telegraf-flush", type=float, default=1.0, help="flush_interval, s")
    ap.add_argument("--poll", type=float, default=1.0, help="InfluxDB count interval, s")
    ap.add_argument("--stall", type=float, default=60, help="give up after no progress, s")
    ap.add_argument("--timeout", type=float, default=1800, help="longest path run, s")
    ap.add_argument("--keep", action="store_true", help="keep the buckets")
    args = ap.parse_args()

    settings = get_settings()
    refuse_shared_stack(settings, "the pipeline benchmark loads both cores flat out")
    binary = telegraf_binary() if any(p.startswith("telegraf") for p in args.paths) else ""
    registry = load_registry(settings.registry)
    devices = registry.of_kind("air")[: args.devices]
    if len(devices) < args.devices:
        sys.exit(f"the registry has only {len(devices)} air devices")
    secret = device_secret(settings.data_dir)
    creds = [(d.id, device_password(secret, d.id)) for d in devices]
    uid = uuid.uuid4().hex[:8]
    roles = ("readings", "seismic", "derived", "alerts", "telegraf", "telegraf_durable")
    buckets = Buckets(settings, uid, roles)
    pubs = Publishers(creds, args.publishers, settings, args.window)
    run = Run(args, settings, pubs, [d.id for d in devices], uid, buckets, Store(buckets))
    results: list[PathResult] = []
    try:
        for name in args.paths:
            print(f"{name}: running; load {load()}", flush=True)
            if name == "ceiling":
                results.append(run_ceiling(run))
            elif name.startswith("telegraf"):
                results.append(run_telegraf(run, binary, name))
            else:
                results.append(run_civic(run))
            print(f"{name}: {results[-1].stored:,} stored at {results[-1].rate:,.0f}/s", flush=True)
    finally:
        pubs.close()
        if not args.keep:
            buckets.drop()
    s = summary(results)
    s |= {
        "readings": args.readings,
        "devices": args.devices,
        "publishers": args.publishers,
        "window": args.window,
        "rate": args.rate,
        "cpus": os.cpu_count(),
        "lat_how": {r.name: r.lat_how for r in results},
        "lat_ms_quantiles": {
            r.name: {str(q): pct(r.lat_ms, q) for q in (0.5, 0.9, 0.99, 1.0)} for r in results
        },
    }
    print()
    print(
        f"pipeline bench: {args.readings:,} clean air readings at QoS 1, {args.devices} devices, "
        f"{args.publishers} publisher process(es), window {args.window}, "
        + (f"offered {args.rate:,.0f}/s" if args.rate else "publishers flat out")
    )
    print(render(table_rows(s), [r.name for r in results]))
    for r in results:
        for note in r.notes:
            print(f"note ({r.name}): {note}")
        if r.lat_how != "exact":
            print(f"latency ({r.name}): {r.lat_how}")
    civic = next((r for r in results if r.name == "civic"), None)
    if civic is not None and civic.extra.get("committed_s") is not None:
        print(
            f"civic-iot: committed {civic.extra['committed_s']:.1f} s after publishing began; "
            f"derived points {civic.extra['derived_points']:,}"
        )
    if all(n in s["paths"] for n in ("ceiling", "telegraf", "civic")):
        print("\nREADME row:\n" + readme_row(s, args.readings, args.rate))
    out = REPO / "bench" / "results" / f"pipeline-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(s, indent=2) + "\n")
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
