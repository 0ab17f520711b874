"""The demo and the end-to-end harness: the whole flow on the real local stack.

:func:`run_demo` starts ingest, the Faust worker(s) and the alert service as separate
processes on a fresh set of Kafka topics (a per-run prefix, so each run's figures are its
own), publishes a scenario as the registered devices would, shows a live table, waits for
the pipeline to drain and prints a summary checked against the scenario's expectations.
The pieces (:class:`Pipeline`, :func:`count_stored`, :func:`read_alerts`,
:func:`check_expectations`) are what the e2e test uses too.
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
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.kafka_setup import ensure_topics
from civic_iot.registry import load_registry
from civic_iot.settings import REPO_ROOT, Settings, influx_token
from civic_iot.topics import Topics
from simulator.scenario import Expectations

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pipeline:
    """ingest + worker(s) + alerts as child processes sharing one topic prefix."""

    settings: Settings
    prefix: str
    log_dir: Path
    workers: int = 1
    #: HTTP ports of the children; free ones are picked so a demo never collides with
    #: processes already running on the usual ports.
    ingest_port: int = field(default_factory=free_port)
    alerts_port: int = field(default_factory=free_port)
    worker_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        run = self.prefix.rstrip(".")
        return {
            "CIVIC_KAFKA__TOPIC_PREFIX": self.prefix,
            "CIVIC_MQTT__SHARE_GROUP": f"ingest-{run}",
            "CIVIC_INGEST__INSTANCE": run,
            "CIVIC_INGEST__HTTP_PORT": str(self.ingest_port),
            "CIVIC_ALERTS__HTTP_PORT": str(self.alerts_port),
            # The run's ingest session is not resumed by a later run: let the broker drop
            # it (and its queue) soon after the run ends.
            "CIVIC_MQTT__SESSION_EXPIRY_S": "300",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, args: list[str], extra: Mapping[str, str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "civic_iot.cli", *args],
            env={**os.environ, **self.env(), **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )

    def start(self, timeout_s: float = 90) -> None:
        asyncio.run(
            ensure_topics(self.settings.kafka.model_copy(update={"topic_prefix": self.prefix}))
        )
        self._spawn("alerts", ["alerts", "run"])
        self.worker_ports = [free_port() for _ in range(self.workers)]
        for i, port in enumerate(self.worker_ports):
            self._spawn(
                f"worker{i}",
                ["worker"],
                {
                    "CIVIC_PROCESSORS__INSTANCE": f"{self.prefix}{i}",
                    "CIVIC_PROCESSORS__WEB_PORT": str(port),
                },
            )
        self._spawn("ingest", ["ingest"])
        deadline = time.monotonic() + timeout_s
        checks = {
            "ingest": f"http://127.0.0.1:{self.ingest_port}/health",
            "alerts": f"http://127.0.0.1:{self.alerts_port}/health",
        }
        for name, url in checks.items():
            while http_json(url) is None:
                self._check_alive()
                if time.monotonic() > deadline:
                    msg = (
                        f"{name} not healthy after {timeout_s:.0f}s; log: {self.log_dir / name}.log"
                    )
                    raise RuntimeError(msg)
                time.sleep(0.3)
        for i in range(self.workers):
            log = self.log_dir / f"worker{i}.log"
            while "Ready" not in log.read_text(errors="replace"):
                self._check_alive()
                if time.monotonic() > deadline:
                    msg = f"worker{i} not ready after {timeout_s:.0f}s; log: {log}"
                    raise RuntimeError(msg)
                time.sleep(0.3)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                msg = f"{name} exited with {proc.returncode}; log: {self.log_dir / name}.log"
                raise RuntimeError(msg)

    def stop(self) -> None:
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
        data = http_json(f"http://127.0.0.1:{self.alerts_port}/alerts")
        if isinstance(data, dict):
            return list(data.get("alerts", []))
        return list(data or [])


def http_json(url: str, timeout: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return json.load(resp)
    except (OSError, ValueError):
        return None


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


async def _read_all(settings: Settings, topic: str, timeout_s: float = 30) -> list[bytes]:
    """Every record of ``topic`` up to its current end offsets."""
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
                return []
            await consumer._client.force_metadata_update()  # no public call for this
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[bytes] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                break
            batch = await consumer.getmany(timeout_ms=1000)
            out += [r.value for recs in batch.values() for r in recs if r.value is not None]
        return out
    finally:
        await consumer.stop()


def read_alerts(settings: Settings, prefix: str) -> list[dict[str, Any]]:
    """Every message issued on ``{prefix}alerts`` (JSON form), oldest first."""
    topic = Topics(prefix=prefix).alerts
    values = asyncio.run(_read_all(settings, topic))
    msgs = [json.loads(v)["json"] for v in values]
    return sorted(msgs, key=lambda m: (m["sent"], m["sequence"]))


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    text: str


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


def _latencies(alerts: list[dict[str, Any]]) -> dict[str, float]:
    lat = sorted(
        (
            datetime.fromisoformat(a["sent"]) - datetime.fromisoformat(a["detected_at"])
        ).total_seconds()
        * 1000
        for a in alerts
    )
    if not lat:
        return {}
    return {
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": lat[-1],
    }


def run_demo(
    settings: Settings,
    *,
    scenario: str = "demo",
    speed: float = 1.0,
    workers: int = 1,
    drain_timeout_s: float = 180,
) -> int:
    """The README's first command. Returns 0 when every expectation held."""
    from rich.console import Console  # noqa: PLC0415 - only the demo draws
    from rich.live import Live  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from simulator.cli import plan_simulation  # noqa: PLC0415
    from simulator.publisher import Progress, publish_all  # noqa: PLC0415

    console = Console()
    run = datetime.now(UTC).strftime("demo%Y%m%d%H%M%S")
    pipeline = Pipeline(settings, f"{run}.", settings.data_dir / "logs" / run, workers=workers)
    sc, start, messages = plan_simulation(
        scenario, registry=load_registry(settings.registry), speed=speed
    )
    console.rule(
        f"civic-iot demo: scenario [bold]{sc.name}[/bold] ({len(messages):,} messages, "
        f"~{sc.wall_duration_s(speed):.0f} s), run {run}"
    )
    console.print(
        f"starting ingest, {workers} Faust worker(s) and the alert service "
        f"(logs in {pipeline.log_dir})"
    )
    pipeline.start()
    progress: dict[str, Progress] = {}
    result: dict[str, Any] = {}

    def publish() -> None:
        result["report"] = publish_all(
            messages, settings, speed=speed, progress_cb=lambda p: progress.__setitem__("p", p)
        )

    def table() -> Table:
        t = Table(title="live", expand=False)
        for col in (
            "published",
            "acked",
            "ingest accepted",
            "dead letters",
            "open alerts",
            "pub/s",
            "lag s",
        ):
            t.add_column(col, justify="right")
        p = progress.get("p")
        counts = pipeline.ingest_counts()
        opened = pipeline.open_alerts()
        t.add_row(
            f"{p.published:,}" if p else "0",
            f"{p.acknowledged:,}" if p else "0",
            f"{int(counts.get('accepted', 0)):,}",
            f"{sum(refused_counts(counts).values()):,}",
            str(len(opened)),
            f"{p.published / p.elapsed_s:,.0f}" if p and p.elapsed_s else "-",
            f"{p.lag_s:.1f}" if p else "-",
        )
        for a in opened[:8]:
            t.add_row(
                "",
                "",
                "",
                "",
                f"{a.get('hazard')} {a.get('area_desc', a.get('area_code', ''))}"[:40],
                f"L{a.get('level')}",
                a.get("severity", ""),
            )
        return t

    try:
        sender = threading.Thread(target=publish, name="publisher", daemon=True)
        sender.start()
        with Live(table(), console=console, refresh_per_second=2) as live:
            while sender.is_alive():
                sender.join(1.0)
                live.update(table())
            report = result["report"]
            expected = sum(1 for m in messages if m.expected_reason is None and not m.broker_denied)
            stop = datetime.now(UTC)
            deadline = time.monotonic() + drain_timeout_s
            want = {
                reading_key(m.device_id, m.event_time)
                for m in messages
                if m.expected_reason is None and not m.broker_denied
            }
            window_end = stop + timedelta(seconds=1)
            last, steady = -1, 0
            while time.monotonic() < deadline:
                accepted = int(pipeline.ingest_counts().get("accepted", 0))
                total = sum(count_stored(settings, start, window_end).values())
                live.update(table())
                steady = steady + 1 if total == last else 0
                last = total
                if accepted >= expected and steady >= 3:
                    break
                time.sleep(2)
            found = stored_readings(settings, start, window_end) & want
            time.sleep(3)  # let the last candidates become alert messages
        counts = pipeline.ingest_counts()
        alerts = read_alerts(settings, pipeline.prefix)
    finally:
        pipeline.stop()
    refused = refused_counts(counts)
    accepted = int(counts.get("accepted", 0))
    summary = Table(title=f"summary of {run}")
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("readings published (broker-acknowledged)", f"{report.acknowledged:,}")
    summary.add_row("refused by the broker (ACL/credentials)", f"{report.denied:,}")
    summary.add_row("accepted by ingest", f"{accepted:,}")
    summary.add_row(
        "dead-lettered", ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "0"
    )
    summary.add_row("stored in InfluxDB (this run's readings found)", f"{len(found):,}")
    by_type = Counter(f"{a['msg_type']}" for a in alerts)
    summary.add_row(
        "alert messages", ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "0"
    )
    lat = _latencies(alerts)
    if lat:
        summary.add_row(
            "detected -> issued latency", f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
        )
    console.print(summary)
    issued = Table(title="alerts issued (new)")
    for col in ("hazard", "area", "severity", "level", "headline", "latency ms"):
        issued.add_column(col)
    for a in alerts:
        if a["msg_type"] == "Alert":
            ms = (
                datetime.fromisoformat(a["sent"]) - datetime.fromisoformat(a["detected_at"])
            ).total_seconds() * 1000
            issued.add_row(
                a["hazard"],
                a["area"]["desc"][:40],
                a["severity"],
                str(a["level"]),
                a["headline"][:60],
                f"{ms:.0f}",
            )
    console.print(issued)
    checks = check_expectations(sc.expect, alerts, refused)
    checks.append(
        Check(
            len(found) == accepted == len(want),
            f"readings accepted ({accepted:,}) == stored ({len(found):,}) "
            f"== expected ({len(want):,})",
        )
    )
    for c in checks:
        console.print(("[green]ok  [/green]" if c.ok else "[red]FAIL[/red]") + f" {c.text}")
    i = settings.influx
    console.print(
        "\nSee the data: Flux, e.g. "
        f'[cyan]from(bucket: "{i.bucket_derived}") |> range(start: -2d) |> filter(fn: (r) => '
        'r._measurement == "air_quality" and r._field == "aqi")[/cyan]\n'
        f"  at {i.url} (token in {settings.data_dir / 'secrets' / 'influx-token'}); "
        "Grafana dashboards: `docker compose up -d grafana` on a host with Docker, "
        "or `civic-iot grafana provision --url ...` for an existing Grafana."
    )
    return 0 if all(c.ok for c in checks) else 1
