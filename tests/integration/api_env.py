"""The API process against the real InfluxDB, with data the tests wrote: shared by the
``test_api_*.py`` modules.

Each module gets its own buckets (``t<unique>-readings`` ...), writes a small, known
history into them through the project's sink (:class:`civic_iot.storage.sink.InfluxSink`,
points built by the storage schema), starts ``civic-iot api run`` on a free port with
those buckets and a data dir of its own (its token file), and deletes the buckets after.
The device registry and thresholds are the repository's (the data uses a few of its
devices), so what the API says about a device can be checked against what was written.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from influxdb_client.client.influxdb_client import InfluxDBClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from civic_iot.auth import TokenStore
from civic_iot.contracts.alerts import INTENSITY_LEVELS
from civic_iot.kafka_admin import ensure_topics
from civic_iot.settings import InfluxSettings, Settings, influx_token
from civic_iot.storage import schema
from civic_iot.storage.points import Point
from civic_iot.storage.sink import InfluxSink, StorageMetrics
from civic_iot.topology import Topology
from ops.pipeline import free_port
from tests.integration.helpers import start_process
from tests.run_ids import new_id

S = 1_000_000_000
MIN = 60 * S

#: Alert ids of the fixture (uuid-shaped, as the alert service makes them).
ALERT_OPEN = "11111111-1111-5111-8111-111111111111"
ALERT_CANCELLED = "22222222-2222-5222-8222-222222222222"
ALERT_QUAKE = "33333333-3333-5333-8333-333333333333"
QUAKE = "20260101T0000001"


class _RefuseNothing:
    """The sink's dead-letter publisher: a test point InfluxDB refuses is a broken
    fixture, so it fails loudly instead of going to a topic."""

    async def add(self, topic: str, key: str, value: bytes) -> None:
        msg = f"InfluxDB refused a fixture point ({key}): {value[:300]!r}"
        raise AssertionError(msg)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class ApiEnv:
    """One running API process over one set of buckets."""

    settings: Settings  # with the test buckets
    base: str
    buckets: dict[str, str]
    tokens: dict[str, str]
    t0_ns: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, *, token: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.base}{path}", params=params, headers=headers, timeout=30)


def _points(influx: InfluxSettings, t0: int) -> tuple[list[Point], dict[str, Any]]:
    """A small history: readings, levels, health, alerts, a quake, worker statistics."""
    pts: list[Point | None] = []
    facts: dict[str, Any] = {}
    air1, air2 = "air-0001", "air-0002"
    town = "63000010"
    # air-0001: a reading every 10 s for 20 min; PM2.5 rises by 0.1 per reading.
    pm = []
    for i in range(120):
        t = t0 + i * 10 * S
        v = round(10 + i * 0.1, 3)
        pm.append((t, v))
        pts.append(
            schema.AIR.point(
                influx,
                {"device": air1, "township": town, "kind": "air"},
                {
                    "pm2_5_ugm3": v,
                    "pm10_ugm3": 2 * v,
                    "temperature_c": 25.0,
                    "lat": 25.04,
                    "lon": 121.54,
                    "late": False,
                },
                t,
            )
        )
    facts["air1_pm"] = pm
    facts["air1_last_ns"] = pm[-1][0]
    # air-0002: three readings, then stuck (an open health issue); a silence that cleared.
    for i in range(3):
        pts.append(
            schema.AIR.point(
                influx,
                {"device": air2, "township": town, "kind": "air"},
                {"pm2_5_ugm3": 20.0, "late": False},
                t0 + i * MIN,
            )
        )
    facts["air2_last_ns"] = t0 + 2 * MIN
    # air-0003: PM2.5 every minute of the last quarter hour, CO once, long before.
    for i in range(18, 29):
        pts.append(
            schema.AIR.point(
                influx,
                {"device": "air-0003", "township": town, "kind": "air"},
                {"pm2_5_ugm3": float(i), "late": False},
                t0 + i * MIN,
            )
        )
    pts.append(
        schema.AIR.point(
            influx,
            {"device": "air-0003", "township": town, "kind": "air"},
            {"co_ppm": 0.4, "late": False},
            t0 + 5 * MIN,
        )
    )
    health = schema.SENSOR_HEALTH
    pts.append(
        health.point(
            influx,
            {"device": air2, "township": town, "issue": "stuck"},
            {"active": True, "detail": "20.0 for 30 min"},
            t0 + 3 * MIN,
        )
    )
    pts.append(
        health.point(
            influx,
            {"device": air2, "township": town, "issue": "silent"},
            {"active": True, "detail": "no reading"},
            t0 + 1 * MIN,
        )
    )
    pts.append(
        health.point(
            influx,
            {"device": air2, "township": town, "issue": "silent"},
            {"active": False, "detail": "back"},
            t0 + 2 * MIN,
        )
    )
    # Levels: air_quality of air-0001 (newest level 2), township air level.
    for i, lv in enumerate((0, 1, 2)):
        pts.append(
            schema.AIR_QUALITY.point(
                influx,
                {"device": air1, "township": town},
                {"aqi": 50 + 60 * i, "level": lv, "category": "Good", "pm2_5_ugm3_1h": 12.0},
                t0 + (i + 1) * 5 * MIN,
            )
        )
    pts.append(
        schema.TOWNSHIP_AIR.point(
            influx,
            {"township": town},
            {"level": 1, "sensors_agreeing": 2, "max_aqi": 170},
            t0 + 15 * MIN,
        )
    )
    # A river gauge and a rain gauge, with their levels; a seismic station's packets.
    pts.append(
        schema.WATER.point(
            influx,
            {"device": "river-0001", "township": "63000040", "kind": "water", "sensor": "river"},
            {"water_level_m": 5.5, "late": False},
            t0 + 4 * MIN,
        )
    )
    pts.append(
        schema.WATER_LEVEL.point(
            influx,
            {"device": "river-0001", "township": "63000040", "sensor": "river"},
            {"water_level_m": 5.5, "level": 1, "rise_level": 0},
            t0 + 4 * MIN,
        )
    )
    pts.append(
        schema.WATER.point(
            influx,
            {"device": "rain-0001", "township": "63000080", "kind": "water", "sensor": "rain"},
            {"rainfall_mm": 3.5, "late": False},
            t0 + 4 * MIN,
        )
    )
    pts.append(
        schema.RAIN.point(
            influx,
            {"device": "rain-0001", "township": "63000080"},
            {"rainfall_mm_1h": 20.0, "rain_class": 2},
            t0 + 4 * MIN,
        )
    )
    for i in range(3):
        pts.append(
            schema.SEISMIC_STATION.point(
                influx,
                {"device": "seis-0001", "township": town},
                {
                    "pga_gal": 1.5 + i,
                    "pgv_cms": 0.1,
                    "intensity": "1",
                    "intensity_rank": 1,
                    "triggered": False,
                },
                t0 + i * S,
            )
        )
    # Alerts: one open (Alert, then Update, acknowledged), one cancelled, one quake alert.
    alert = schema.ALERT

    def msg(
        key: tuple[str, str], mt: str, sev: str, seq: int, lv: int, at: int, aid: str, reason: str
    ) -> Point | None:
        return alert.point(
            influx,
            {
                "hazard": key[0],
                "area": key[1],
                "msg_type": mt,
                "severity": sev,
                "status": "Exercise",
            },
            {
                "identifier": f"{aid[:8]}-{seq}",
                "alert_id": aid,
                "sequence": seq,
                "level": lv,
                "headline": f"{key[0]} {mt} {seq}",
                "reason": reason,
                "latency_ms": 5.0,
            },
            at,
        )

    pts += [
        msg(("air_quality", town), "Alert", "Moderate", 1, 1, t0 + 1 * MIN, ALERT_OPEN, "new"),
        msg(("air_quality", town), "Update", "Severe", 2, 2, t0 + 5 * MIN, ALERT_OPEN, "escalated"),
        msg(("flood", "65000010"), "Alert", "Moderate", 1, 1, t0 + 2 * MIN, ALERT_CANCELLED, "new"),
        msg(
            ("flood", "65000010"),
            "Cancel",
            "Moderate",
            2,
            0,
            t0 + 10 * MIN,
            ALERT_CANCELLED,
            "cleared",
        ),
        msg(
            ("earthquake", f"quake-{QUAKE}"),
            "Alert",
            "Extreme",
            1,
            6,
            t0 + 15 * MIN,
            ALERT_QUAKE,
            "new",
        ),
    ]
    pts.append(
        schema.ACK.point(
            influx,
            {"hazard": "air_quality", "area": town},
            {"alert_id": ALERT_OPEN, "by": "op-1", "note": "seen"},
            t0 + 6 * MIN,
        )
    )
    # A quake: two estimates, each with its grid (the newer one stronger).
    est1, est2 = t0 + 15 * MIN, t0 + 15 * MIN + 5 * S
    facts["quake_estimates"] = (est1, est2)
    for t, mag, ranks in ((est1, 5.8, (4, 3, 2)), (est2, 6.1, (5, 4, 3))):
        pts.append(
            schema.QUAKE_EVENT.point(
                influx,
                {"event_id": QUAKE},
                {
                    "lat": 24.8,
                    "lon": 121.7,
                    "depth_km": 10.0,
                    "magnitude": mag,
                    "n_stations": 8,
                    "max_intensity_rank": ranks[0],
                    "origin_time": "2026-01-01T00:00:00.000+00:00",
                },
                t,
            )
        )
        for i, (rank, town_code) in enumerate(
            zip(ranks, ("63000010", "63000040", "65000010"), strict=True)
        ):
            pts.append(
                schema.QUAKE_CELL.point(
                    influx,
                    {"event_id": QUAKE, "township": town_code},
                    {
                        "lat": 24.8 + i / 10,
                        "lon": 121.7,
                        "intensity_rank": rank,
                        "intensity": INTENSITY_LEVELS[rank],
                        "s_wave_s": 4.0 + i,
                    },
                    t + i,
                )
            )
    # Worker statistics (10 s apart: 500 readings in, 50 a second) and dead letters.
    for i, n in enumerate((1000, 1500)):
        pts.append(
            schema.PIPELINE.point(
                influx,
                {"process": "worker", "instance": "0"},
                {"readings_in": n, "readings_out": n, "lag": 7 - i},
                t0 + 20 * MIN + i * 10 * S,
            )
        )
    for i in range(3):
        pts.append(
            schema.DEADLETTER.point(
                influx,
                {"reason": "schema", "kind": "air"},
                {"count": 1, "device": air1, "error": "bad"},
                t0 + 20 * MIN + i,
            )
        )
    return [p for p in pts if p is not None], facts


async def write_points(settings: Settings, points: Iterable[Point]) -> None:
    """Points written through the project's sink (as the processors write them), with
    the admin token: the test's buckets are in no service's token."""
    admin = SecretStr(influx_token(settings))
    sink = InfluxSink.from_settings(
        settings.model_copy(update={"influx": settings.influx.model_copy(update={"token": admin})}),
        "api-tests",
        service="processors",
        deadletters=_RefuseNothing(),
        metrics=StorageMetrics.of(CollectorRegistry()),
    )
    try:
        sink.add(points)
        await sink.flush()
    finally:
        await sink.close()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, health: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the API process exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            raise AssertionError(msg)
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == health:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    msg = f"the API did not answer /health in 60 s:\n{log.read_text()[-3000:]}"
    raise AssertionError(msg)


#: The Kafka topics the API processes of these tests read (their live hub): created
#: once, never written, so they stay empty and every run may share them.
TOPIC_PREFIX = "apitests."


def start_api(
    settings: Settings, tmp: Path, env: Mapping[str, str], *, health: int = 200
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """``civic-iot api run`` on a free port with ``env``; waits until ``/health`` answers
    ``health``."""
    topology = Topology(prefix=TOPIC_PREFIX, partitions=settings.kafka.partitions)
    asyncio.run(ensure_topics(settings.kafka.bootstrap, topology))
    port = free_port()
    log = tmp / f"api-{port}.log"
    proc = start_process(
        ["api", "run", "--port", str(port)],
        {
            "CIVIC_DATA_DIR": str(tmp),
            "CIVIC_KAFKA__TOPIC_PREFIX": TOPIC_PREFIX,
            # Test buckets are not in the API's own read-only token: the admin token.
            "CIVIC_INFLUX__TOKEN": influx_token(settings),
            **env,
        },
        log,
    )
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base, proc, log, health)
    return base, proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def api_env(stack: Settings, tmp: Path, **extra_env: str) -> Iterator[ApiEnv]:
    """Buckets with the fixture's history, and the API process over them."""
    unique = new_id()
    roles = ("readings", "seismic", "derived", "alerts")
    buckets = {r: f"t{unique}-{r}" for r in roles}
    s = stack
    with InfluxDBClient(url=s.influx.url, token=influx_token(s), org=s.influx.org) as c:
        for b in buckets.values():
            c.buckets_api().create_bucket(bucket_name=b, org=s.influx.org)
    proc = None
    try:
        influx = s.influx.model_copy(update={f"bucket_{r}": b for r, b in buckets.items()})
        settings = s.model_copy(update={"influx": influx})
        t0 = (time.time_ns() // MIN) * MIN - 30 * MIN
        points, facts = _points(influx, t0)
        asyncio.run(write_points(settings, points))
        store = TokenStore.of(tmp)
        tokens = {role: store.issue(f"test-{role}", role)[1] for role in ("agency", "operator")}
        env = {f"CIVIC_INFLUX__BUCKET_{r.upper()}": b for r, b in buckets.items()}
        env |= {"CIVIC_API__PUBLIC_RATE_PER_S": "10000", "CIVIC_API__PUBLIC_BURST": "10000"}
        env |= extra_env
        base, proc, log = start_api(s, tmp, env)
        yield ApiEnv(settings, base, buckets, tokens, t0, proc, log, facts)
    finally:
        if proc is not None:
            stop(proc)
        with InfluxDBClient(url=s.influx.url, token=influx_token(s), org=s.influx.org) as c:
            api = c.buckets_api()
            for b in buckets.values():
                found = api.find_bucket_by_name(b)
                if found is not None:
                    api.delete_bucket(found)
