"""A whole pipeline on the real local stack, run and checked: the harness of the demo
(:mod:`ops.demo`), the end-to-end tests and the benchmarks.

:class:`Pipeline` starts ingest, the Faust worker(s) and the alert service as separate
processes on a fresh deployment prefix (its own Kafka topics, consumer groups, MQTT share
group and alert topics, :mod:`civic_iot.topology`) and waits until each one's ``/health``
says it is ready; :func:`execute` publishes a scenario as the registered devices would,
waits for the pipeline to drain and checks what came out against the scenario's
expectations (:func:`check_expectations`, :func:`count_stored`, :func:`read_alerts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from influxdb_client.client.influxdb_client import InfluxDBClient

from alerts.lifecycle import Reason
from civic_iot.auth import TokenStore
from civic_iot.kafka_admin import ensure_topics
from civic_iot.settings import REPO_ROOT, Settings, influx_token
from civic_iot.topology import READING_KINDS, Topology
from ops.probe import http_json, read_health
from simulator.publisher import Progress, PublishReport, publish_all
from simulator.scenario import Expectations, Scenario, SimMessage

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pipeline:
    """ingest + worker(s) + alerts (+ the HTTP API with ``api=True``) as child processes
    sharing one topic prefix."""

    settings: Settings
    prefix: str
    log_dir: Path
    #: Workers of the bulk readings (air, water, townships): role ``bulk``, or ``all``
    #: without a seismic worker.
    workers: int = 1
    #: One worker of role ``seismic`` beside them (the recommended deployment: an air or
    #: water backlog never delays an earthquake warning).
    seismic_worker: bool = True
    api: bool = False
    #: HTTP ports of the children; free ones are picked so a demo never collides with
    #: processes already running on the usual ports.
    ingest_port: int = field(default_factory=free_port)
    alerts_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    worker_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: An agency token of this run, to read the open alerts (the alert service's API
    #: needs one); revoked at stop.
    _token: tuple[str, str] | None = None

    @property
    def topology(self) -> Topology:
        """The run's topics, groups and MQTT names (all under its prefix)."""
        return Topology.of(self.settings).with_prefix(self.prefix)

    def env(self) -> dict[str, str]:
        run = self.prefix.rstrip(".")
        return {
            "CIVIC_KAFKA__TOPIC_PREFIX": self.prefix,
            "CIVIC_INGEST__INSTANCE": run,
            "CIVIC_INGEST__HTTP_PORT": str(self.ingest_port),
            "CIVIC_ALERTS__HTTP_PORT": str(self.alerts_port),
            "CIVIC_API__PORT": str(self.api_port),
            # The run's ingest session is not resumed by a later run: let the broker drop
            # it (and its queue) soon after the run ends.
            "CIVIC_MQTT__SESSION_EXPIRY_S": "300",
            # Scenarios compress hours into seconds: production's check of silent devices
            # every 60 s would see a device's hours of silence once, or not at all.
            "CIVIC_PROCESSORS__SILENCE_CHECK_INTERVAL_S": "10",
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def console_url(self) -> str:
        """The operations console of the run (with ``api=True``)."""
        return f"http://127.0.0.1:{self.api_port}/console/"

    def _spawn(self, name: str, args: list[str], extra: Mapping[str, str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "ops.cli", *args],
            env={**os.environ, **self.env(), **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )

    def start(self, timeout_s: float = 90) -> None:
        """Start every process and wait until each is ready; if one exits or is not ready
        in ``timeout_s``, stop those already started (none is left running) and raise."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        asyncio.run(ensure_topics(self.settings.kafka.bootstrap, self.topology))
        record, token = TokenStore.at(self.settings.tokens_file).issue(
            "civic-pipeline", "agency", f"run {self.prefix} (revoked when it stops)"
        )
        self._token = (record.id, token)
        self._spawn("alerts", ["alerts", "run"])
        roles = ["bulk" if self.seismic_worker else "all"] * self.workers
        roles += ["seismic"] if self.seismic_worker else []
        self.worker_ports = [free_port() for _ in roles]
        for i, (role, port) in enumerate(zip(roles, self.worker_ports, strict=True)):
            self._spawn(
                f"worker{i}",
                ["worker"],
                {
                    "CIVIC_PROCESSORS__ROLE": role,
                    "CIVIC_PROCESSORS__INSTANCE": f"{self.prefix}{i}",
                    "CIVIC_PROCESSORS__WEB_PORT": str(port),
                },
            )
        self._spawn("ingest", ["ingest"])
        if self.api:
            self._spawn("api", ["api", "run"])
        deadline = time.monotonic() + timeout_s
        checks = {
            "ingest": f"http://127.0.0.1:{self.ingest_port}/health",
            "alerts": f"http://127.0.0.1:{self.alerts_port}/health",
        }
        if self.api:
            checks["api"] = f"http://127.0.0.1:{self.api_port}/health"
        checks |= {
            f"worker{i}": f"http://127.0.0.1:{p}/health" for i, p in enumerate(self.worker_ports)
        }
        for name, url in checks.items():
            # Ready: /health answers 200 (the worker once its first rebalance and table
            # recovery are done, the alert service once it is the active instance).
            while read_health(url)[0] != 200:
                self._check_alive()
                if time.monotonic() > deadline:
                    msg = f"{name} not ready after {timeout_s:.0f}s; log: {self.log_dir / name}.log"
                    raise RuntimeError(msg)
                time.sleep(0.3)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                msg = f"{name} exited with {proc.returncode}; log: {self.log_dir / name}.log"
                raise RuntimeError(msg)

    def stop(self) -> None:
        if self._token is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                TokenStore.at(self.settings.tokens_file).revoke([self._token[0]])
            self._token = None
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                logger.warning("process did not stop name=%s; killing", name)
                proc.kill()

    def ingest_counts(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.ingest_port}/health") or {}

    def open_alerts(self) -> list[dict[str, Any]]:
        headers = {} if self._token is None else {"Authorization": f"Bearer {self._token[1]}"}
        data = http_json(f"http://127.0.0.1:{self.alerts_port}/alerts", headers=headers)
        if isinstance(data, dict):
            return list(data.get("alerts", []))
        return list(data or [])


_STORED_QUERIES = {
    # Air and water readings are one point each (every one has a ``lat`` field); a seismic
    # packet is one ``seismic_station`` figure at its first sample's time.
    "air": ("bucket_readings", "air", "lat"),
    "water": ("bucket_readings", "water", "lat"),
    "seismic": ("bucket_derived", "seismic_station", "pga_gal"),
}


def _stored_flux(settings: Settings, kind: str, start: datetime, stop: datetime) -> str:
    bucket_attr, measurement, fld = _STORED_QUERIES[kind]
    bucket = getattr(settings.influx, bucket_attr)
    return (
        f'from(bucket: "{bucket}") |> range(start: {start.isoformat()}, stop: {stop.isoformat()}) '
        f'|> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{fld}")'
    )


def count_stored(settings: Settings, start: datetime, stop: datetime) -> dict[str, int]:
    """Points per kind with event times in [start, stop) (any run's): a progress figure."""
    i = settings.influx
    out: dict[str, int] = {}
    with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org, timeout=60_000) as c:
        api = c.query_api()
        for kind in _STORED_QUERIES:
            q = _stored_flux(settings, kind, start, stop) + " |> group() |> count()"
            out[kind] = sum(int(r.get_value()) for t in api.query(q) for r in t.records)
    return out


def stored_readings(settings: Settings, start: datetime, stop: datetime) -> set[tuple[str, str]]:
    """(device, event time in µs ISO) of every stored reading in [start, stop)."""
    i = settings.influx
    found: set[tuple[str, str]] = set()
    with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org, timeout=120_000) as c:
        api = c.query_api()
        for kind in _STORED_QUERIES:
            q = _stored_flux(settings, kind, start, stop) + ' |> keep(columns: ["_time", "device"])'
            for rec in api.query_stream(q):
                found.add((str(rec.values["device"]), rec.get_time().isoformat()))
    return found


def reading_key(device_id: str, event_time: datetime) -> tuple[str, str]:
    """The key :func:`stored_readings` uses (InfluxDB times come back in µs, UTC)."""
    return device_id, event_time.astimezone(UTC).replace(
        microsecond=event_time.microsecond
    ).isoformat()


async def _read_all(settings: Settings, topic: str, timeout_s: float = 90) -> list[bytes]:
    """Every record of ``topic`` up to its current end offsets. ``TimeoutError`` when the
    topic or its end cannot be reached in ``timeout_s``: a partial read would pass for
    "nothing was issued"."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not (parts := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not found within {timeout_s} s")
            await consumer._client.force_metadata_update()  # no public call for this
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[bytes] = []
        while behind := [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {len(behind)} partition(s) not read to the end")
            batch = await consumer.getmany(timeout_ms=1000)
            out += [r.value for recs in batch.values() for r in recs if r.value is not None]
        return out
    finally:
        await consumer.stop()


def stages(topology: Topology, *, seismic_worker: bool) -> list[tuple[str, list[str]]]:
    """The hops of a run, in order: a consumer group and the topics it reads. Each hop's
    input is complete once the hop before it has consumed all of its own. With a seismic
    worker, its group reads the stations and the triggers, and its strong-shaking marks
    go to the bulk group."""
    if not seismic_worker:
        return [
            (topology.processors_app, [topology.readings(k) for k in READING_KINDS]),
            (topology.processors_app, [topology.township, topology.shaking, topology.triggers]),
            (topology.alerts_group, [topology.candidates]),
        ]
    bulk = [topology.readings(k) for k in READING_KINDS if k != "seismic"]
    return [
        (topology.processors_seismic, [topology.readings("seismic")]),
        (topology.processors_seismic, [topology.triggers]),
        (topology.processors_app, [*bulk, topology.deadletter]),
        (topology.processors_app, [topology.township, topology.shaking]),
        (topology.alerts_group, [topology.candidates]),
    ]


async def group_lag(
    settings: Settings, group: str, topics: list[str], timeout_s: float, poll_s: float = 0.5
) -> list[str]:
    """Wait until ``group`` has committed every partition of ``topics`` up to the end offset
    it has now (asked every ``poll_s``); returns ``topic[partition] committed/end`` of those
    still behind then."""
    bootstrap = settings.kafka.bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        # They exist (no auto-creation); a topic the broker cannot describe yet (an error
        # code, say no leader) is asked again, never left out: it would pass as consumed.
        while True:
            described = await admin.describe_topics(topics)
            failing = [
                f"{t['topic']} (describe error {t['error_code']})"
                for t in described
                if t["error_code"] != 0
            ]
            if not failing:
                break
            if time.monotonic() > deadline:
                return failing
            await asyncio.sleep(0.5)
        tps = [
            TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
        ]
        end = {tp: n for tp, n in (await consumer.end_offsets(tps)).items() if n > 0}
        while True:
            found = await admin.list_consumer_group_offsets(group, partitions=list(end))
            # -1: nothing committed on that partition yet.
            committed = {tp: o.offset for tp, o in found.items() if o.offset >= 0}
            behind = [
                f"{tp.topic}[{tp.partition}] {committed.get(tp, '-')}/{n}"
                for tp, n in end.items()
                if committed.get(tp, -1) < n
            ]
            if not behind or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()
        await admin.close()


def wait_consumed(
    settings: Settings, topology: Topology, *, seismic_worker: bool, timeout_s: float = 90
) -> list[str]:
    """Wait until each stage of a run has consumed (committed) everything produced before
    it, hop after hop (:func:`stages`): then every candidate that the run's readings give
    is on the alerts topic as the messages it made (the alert service commits a candidate
    after its messages). A check that nothing else was issued can read the alerts then.
    Returns what still lags after ``timeout_s`` per stage (empty: all consumed)."""
    deadline = time.monotonic() + timeout_s
    for group, topics in stages(topology, seismic_worker=seismic_worker):
        left = max(1.0, deadline - time.monotonic())
        behind = asyncio.run(group_lag(settings, group, topics, left))
        if behind:
            return [f"{group}: {', '.join(behind[:8])}"]
    return []


def read_alerts(settings: Settings, prefix: str) -> list[dict[str, Any]]:
    """Every message issued on ``{prefix}alerts`` (JSON form), oldest first."""
    topic = Topology(prefix=prefix).alerts
    values = asyncio.run(_read_all(settings, topic))
    msgs = [json.loads(v)["json"] for v in values]
    return sorted(msgs, key=lambda m: (m["sent"], m["sequence"]))


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    text: str


def health_found(settings: Settings, since: datetime) -> set[tuple[str, str]]:
    """(device, issue) of every ``sensor_health`` finding opened since ``since``."""
    i = settings.influx
    q = (
        f'from(bucket: "{i.bucket_derived}") |> range(start: {since.isoformat()}) '
        '|> filter(fn: (r) => r._measurement == "sensor_health" and r._field == "active" '
        "and r._value == true)"
    )
    with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org, timeout=60_000) as c:
        return {
            (str(r.values["device"]), str(r.values["issue"])) for r in c.query_api().query_stream(q)
        }


def check_health(
    expect: Expectations, found: set[tuple[str, str]], found_live: set[tuple[str, str]]
) -> list[Check]:
    """Expected sensor faults were found (``found``: since the scenario's first event time),
    and no other device was called silent during the run (``found_live``: silence is
    stamped on the processing clock, so only findings since the run started count)."""
    checks = [
        Check((h.device, h.issue) in found, f"sensor health: {h.device} {h.issue}")
        for h in expect.health
    ]
    expected_silent = {h.device for h in expect.health if h.issue == "silent"}
    false_silent = sorted(
        d for d, issue in found_live if issue == "silent" and d not in expected_silent
    )
    checks.append(
        Check(
            not false_silent,
            "no device wrongly reported silent"
            + (f": {', '.join(false_silent[:10])}" if false_silent else ""),
        )
    )
    return checks


def check_expectations(
    expect: Expectations, alerts: list[dict[str, Any]], refused: Mapping[str, int]
) -> list[Check]:
    """The scenario's expectations against what came out (alert messages, refusals)."""
    checks: list[Check] = []
    new = [a for a in alerts if a["msg_type"] == "Alert"]
    covered: dict[str, set[str]] = {}
    for a in alerts:
        covered.setdefault(a["hazard"], set()).update(a["area"]["geocodes"])
        if a["hazard"] != "earthquake":
            covered[a["hazard"]].add(a["area"]["code"])
    for e in expect.alerts:
        got = covered.get(e.hazard, set())
        missing = sorted(set(e.townships) - got)
        n = sum(1 for a in new if a["hazard"] == e.hazard)
        ok = n > 0 and not missing and (e.count is None or n == e.count)
        what = f"{e.hazard}: {n} alert(s)" + (f" (expected {e.count})" if e.count else "")
        if e.townships:
            what += f", townships {', '.join(e.townships)}" + (
                f" missing {', '.join(missing)}" if missing else ""
            )
        checks.append(Check(ok, what))
    for e in expect.no_alerts:
        got = covered.get(e.hazard, set())
        wrong = sorted(set(e.townships) & got)
        if e.devices:
            wrong += [
                d
                for a in new
                if a["hazard"] == e.hazard
                for d in e.devices
                if a.get("devices") == [d]
            ]
        checks.append(
            Check(
                not wrong,
                f"no {e.hazard} alert from {', '.join(e.townships or e.devices)}"
                + (f": got {wrong}" if wrong else ""),
            )
        )
    for reason, n in expect.refused.items():
        got_n = int(refused.get(reason, 0))
        checks.append(Check(got_n >= n, f"dead letters '{reason}': {got_n} (expected {n})"))
    return checks


def refused_counts(ingest_counts: Mapping[str, Any]) -> Counter[str]:
    return Counter(
        {
            k.removeprefix("deadletter:"): int(v)
            for k, v in ingest_counts.items()
            if k.startswith("deadletter:")
        }
    )


#: Who issued an alert message, by its reason (:data:`alerts.lifecycle.Reason`): on a
#: detector's candidate, at once (``sent - detected_at`` is the pipeline's latency), or on
#: the service's timer after a hold or a silence (``sent - detected_at`` is then mostly
#: the hold, e.g. a Cancel 60 s after the value cleared: not a latency).
ISSUED_BY: dict[Reason, Literal["detector", "timer"]] = {
    "new": "detector",
    "escalated": "detector",
    "area_changed": "detector",
    "de-escalated": "timer",
    "cleared": "timer",
    "expired": "timer",
}


def decided_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alert messages (JSON form) a detector decided: those whose latency counts."""
    return [a for a in alerts if ISSUED_BY.get(a["reason"]) == "detector"]


def alert_latencies(settings: Settings, alerts: list[dict[str, Any]]) -> dict[str, float]:
    """Detector decision -> alert issued, ms, per message identifier (``alert`` points), of
    the messages a detector decided (:func:`decided_alerts`); timer-issued ones are left out.

    The JSON and CAP forms carry times in whole seconds (CAP's format), too coarse here.
    """
    ids = {a["identifier"] for a in decided_alerts(alerts)}
    if not ids:
        return {}
    i = settings.influx
    q = (
        f'from(bucket: "{i.bucket_alerts}") |> range(start: -1d) '
        '|> filter(fn: (r) => r._measurement == "alert" and '
        '(r._field == "latency_ms" or r._field == "identifier")) '
        '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )
    out: dict[str, float] = {}
    with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org, timeout=60_000) as c:
        for rec in c.query_api().query_stream(q):
            ident = rec.values.get("identifier")
            if ident in ids and rec.values.get("latency_ms") is not None:
                out[str(ident)] = float(rec.values["latency_ms"])
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {}
    return {"p50": v[len(v) // 2], "p99": v[min(len(v) - 1, int(len(v) * 0.99))], "max": v[-1]}


@dataclass
class RunResult:
    """What one scenario run through the pipeline produced."""

    run: str
    scenario: Scenario
    report: PublishReport
    accepted: int
    refused: Counter[str]
    expected_ids: set[tuple[str, str]]
    stored_ids: set[tuple[str, str]]
    alerts: list[dict[str, Any]]
    checks: list[Check]
    scenario_s: float = 0.0
    """The scenario's length in wall seconds at the run's speed."""
    publish_s: float = 0.0
    """Wall time from the first message sent to the last acknowledged, s."""
    stored_after_s: float = 0.0
    """From the last message acknowledged to the stored count's last change (polled every
    2 s, so up to 2 s late), s: how far the pipeline finished behind the publishers."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def execute(
    settings: Settings,
    pipeline: Pipeline,
    scenario: Scenario,
    start: datetime,
    messages: list[SimMessage],
    *,
    speed: float = 1.0,
    drain_timeout_s: float = 180,
    on_progress: Callable[[Progress | None], None] | None = None,
) -> RunResult:
    """Publish ``messages`` through a started pipeline, wait for it to drain, check it.

    Drained: every reading ingest should accept is counted and stored, then each stage has
    consumed what the one before it produced (:func:`wait_consumed`), so the alerts read
    are all the readings gave: what must not be there is judged on them, not after a sleep.
    """
    progress: dict[str, Progress] = {}
    result: dict[str, PublishReport] = {}

    def publish() -> None:
        result["report"] = publish_all(
            messages, settings, speed=speed, progress_cb=lambda p: progress.__setitem__("p", p)
        )

    tick = on_progress or (lambda _p: None)
    wall_start = datetime.now(UTC)
    sent_from = time.monotonic()
    sender = threading.Thread(target=publish, name="publisher", daemon=True)
    sender.start()
    while sender.is_alive():
        sender.join(1.0)
        tick(progress.get("p"))
    sent_until = time.monotonic()
    report = result["report"]
    want = {
        reading_key(m.device_id, m.event_time)
        for m in messages
        if m.expected_reason is None and not m.broker_denied
    }
    window_end = datetime.now(UTC) + timedelta(seconds=1)
    deadline = time.monotonic() + drain_timeout_s
    last, steady, changed_at = -1, 0, sent_until
    while time.monotonic() < deadline:
        accepted = int(pipeline.ingest_counts().get("accepted", 0))
        total = sum(count_stored(settings, start, window_end).values())
        tick(progress.get("p"))
        steady = steady + 1 if total == last else 0
        if total != last:
            changed_at = time.monotonic()
        last = total
        if accepted >= len(want) and steady >= 3:
            break
        time.sleep(2)
    found = stored_readings(settings, start, window_end) & want
    lagging = wait_consumed(
        settings,
        pipeline.topology,
        seismic_worker=pipeline.seismic_worker,
        timeout_s=drain_timeout_s,
    )
    tick(progress.get("p"))
    counts = pipeline.ingest_counts()
    alerts = read_alerts(settings, pipeline.prefix)
    refused = refused_counts(counts)
    accepted = int(counts.get("accepted", 0))
    checks = [
        Check(
            not lagging,
            "every stage consumed what the one before it produced"
            + (f": still behind {'; '.join(lagging)}" if lagging else ""),
        )
    ]
    checks += check_expectations(scenario.expect, alerts, refused)
    checks += check_health(
        scenario.expect,
        health_found(settings, min(start, wall_start)),
        health_found(settings, wall_start),
    )
    # Ingest's own count may include other publishers on a shared broker; what must hold
    # is that every reading of this run that ingest should accept is stored.
    checks.append(
        Check(
            found == want and accepted >= len(want),
            f"every accepted reading stored: {len(found):,} of {len(want):,} "
            f"(ingest accepted {accepted:,})",
        )
    )
    return RunResult(
        pipeline.prefix.rstrip("."),
        scenario,
        report,
        accepted,
        refused,
        want,
        found,
        alerts,
        checks,
        scenario_s=scenario.wall_duration_s(speed),
        publish_s=sent_until - sent_from,
        stored_after_s=max(0.0, changed_at - sent_until),
    )
