"""What the benchmarks share: process CPU and memory from /proc, the machine's load,
percentiles, a consumer group's progress, temporary buckets, ingest's records, the report
table. Linux only; no project logic lives here."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.contracts.provenance import Marker
from civic_iot.kafka_admin import delete_topics
from civic_iot.settings import Settings, influx_token, mark_key
from civic_iot.topology import READING_KINDS, Topology
from ingest.service import _send_grouped, readings_records
from ops.pipeline import group_lag

#: A record for Kafka: topic, key, value.
Record = tuple[str, bytes, bytes]

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK


def proc_hwm_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, MiB."""
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and its CPU count, for every report."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def refuse_shared_stack(settings: Settings, why: str) -> None:
    """Exit unless the settings name a private stack (bench/chaos.py's docstring: its own
    data dir and ports): the default ports and data dir are everybody's."""
    ports = {
        "CIVIC_MQTT__PORT": settings.mqtt.port == 1883,
        "CIVIC_KAFKA__BOOTSTRAP": settings.kafka.bootstrap.endswith(":9092"),
        "CIVIC_INFLUX__URL": settings.influx.url.rstrip("/").endswith(":8086"),
    }
    shared = [name for name, default in ports.items() if default]
    repo = Path(__file__).resolve().parents[1]
    if shared or settings.data_dir.resolve() == (repo / ".civic").resolve():
        raise SystemExit(
            f"{why}: run it on a private stack of your own (default ports or data dir in "
            f"use: {', '.join(shared) or 'CIVIC_DATA_DIR'}); see bench/chaos.py's docstring"
        )


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] if s else float("nan")


def table(rows: Iterable[tuple[str, str]]) -> str:
    rows = list(rows)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class _Partitions:
    """The one producer call :func:`ingest.service.readings_records` makes."""

    def __init__(self, partitions: int) -> None:
        self.parts = set(range(partitions))

    async def partitions_for(self, _topic: str) -> set[int]:
        return self.parts


def ingest_records(
    settings: Settings, messages: Sequence[tuple[str, str, bytes]], batch: int = 1000
) -> list[Record]:
    """``(topic, key, one-reading record)`` in arrival order as ingest writes them: per
    batch of ``batch`` messages, each topic's readings of one partition in one record
    (:func:`ingest.service.readings_records`); :func:`produce` marks them as ingest does."""
    topics = Topology.of(settings)
    readings = frozenset(topics.readings(k) for k in READING_KINDS)
    parts = _Partitions(settings.kafka.partitions)
    out: list[Record] = []

    async def run() -> None:
        for i in range(0, len(messages), batch):
            chunk = [(t, k.encode(), v) for t, k, v in messages[i : i + batch]]
            out.extend(
                await readings_records(parts, chunk, readings=readings)  # type: ignore[arg-type]
            )

    asyncio.run(run())
    return out


async def produce(settings: Settings, records: Sequence[Record], rate: float = 0.0) -> float:
    """Send ``records`` as ingest does (a Kafka batch per partition), at ``rate``
    records/s (0: flat out); returns the time of the first send."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    mark = Marker(mark_key(settings))  # as ingest marks its records: the worker checks
    await producer.start()
    first = time.time()
    try:
        step = 200
        futures = []
        for i in range(0, len(records), step):
            if rate > 0:
                ahead = first + i / rate - time.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            futures += await _send_grouped(producer, list(records[i : i + step]), mark)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return first


async def wait_committed(
    settings: Settings, group: str, topics: Sequence[str], timeout_s: float
) -> float:
    """Wait until ``group`` has committed every partition of ``topics`` to its end;
    returns the time it was seen done (polled every 0.2 s)."""
    behind = await group_lag(settings, group, list(topics), timeout_s, poll_s=0.2)
    if behind:
        msg = f"group {group} not done within {timeout_s:g} s: {', '.join(behind)}"
        raise TimeoutError(msg)
    return time.time()


def drop_topics(settings: Settings, prefix: str) -> None:
    """Delete a run's topics (every one named with ``prefix``, Faust's too): a benchmark's
    thousands of partitions would otherwise stay on the broker for good."""
    asyncio.run(delete_topics(settings.kafka.bootstrap, Topology(prefix=prefix)))


@dataclass
class Buckets:
    """Temporary InfluxDB buckets, ``bench<uid>-<role>``, deleted by :meth:`drop`."""

    settings: Settings
    uid: str
    roles: tuple[str, ...] = ("readings", "seismic", "derived")

    def __post_init__(self) -> None:
        i = self.settings.influx
        self.client = InfluxDBClient(
            url=i.url, token=influx_token(self.settings), org=i.org, timeout=120_000
        )
        org = self.client.organizations_api().find_organizations(org=i.org)[0]
        self.names = {r: f"bench{self.uid}-{r}" for r in self.roles}
        for name in self.names.values():
            self.client.buckets_api().create_bucket(bucket_name=name, org_id=org.id)

    def env(self) -> dict[str, str]:
        """The workers' bucket settings (roles of the schema only)."""
        return {
            f"CIVIC_INFLUX__BUCKET_{r.upper()}": n
            for r, n in self.names.items()
            if r in ("readings", "seismic", "derived", "alerts")
        }

    def count(self, role: str, measurement: str, field: str, start: str = "0") -> int:
        """Points of ``measurement`` with ``field`` in the role's bucket, from ``start``
        (a Flux time: ``0``, or RFC 3339)."""
        rows = self.client.query_api().query(
            f'from(bucket: "{self.names[role]}") |> range(start: {start}) |> filter(fn: (r) => '
            f'r._measurement == "{measurement}" and r._field == "{field}") |> group() |> count()'
        )
        return int(rows[0].records[0].get_value()) if rows and rows[0].records else 0

    def drop(self) -> None:
        api = self.client.buckets_api()
        for name in self.names.values():
            b = api.find_bucket_by_name(name)
            if b is not None:
                api.delete_bucket(b)
        self.client.close()
