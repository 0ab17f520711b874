"""The processors worker against the real Kafka and InfluxDB: readings in, points and
alert candidates out, state surviving a SIGKILL, nothing committed past an outage."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from civic_iot.contracts.deadletter import DeadLetter
from civic_iot.contracts.provenance import HEADER, Marker
from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
    WaterPayload,
)
from civic_iot.contracts.storage import StorageDeadLetter
from civic_iot.kafka_admin import ensure_topics, partition_counts
from civic_iot.registry import Device, Registry
from civic_iot.settings import Settings, influx_token, mark_key
from civic_iot.storage.waveform import stored, unpack
from civic_iot.thresholds import load_thresholds
from civic_iot.times import to_ns
from civic_iot.topology import Topology
from ops.pipeline import free_port
from processors.detectors.quake import distance_km
from simulator.waveforms import SimQuake, SimStation, Spike, synthesize_packets
from tests.integration.helpers import REPO, read_topic
from tests.stations import NOISY, STATIONS

#: The seismic replays start twelve hours ago: readings as ingest takes them (the worker
#: holds ingest's time bounds: nothing older than days, nothing ahead of the clock), with
#: room for the hours of rain that follow the quake.
T0 = float(int(time.time()) - 12 * 3600)

pytestmark = pytest.mark.integration


@dataclass
class Env:
    settings: Settings
    env: dict[str, str]
    prefix: str
    buckets: dict[str, str]
    tmp: Path

    def flux(self, query: str) -> list[dict[str, Any]]:
        s = self.settings
        with InfluxDBClient(url=s.influx.url, token=influx_token(s), org=s.influx.org) as c:
            return [r.values for t in c.query_api().query(query) for r in t.records]

    def count(self, bucket: str, measurement: str, field: str, extra: str = "") -> int:
        rows = self.flux(
            f'from(bucket: "{self.buckets[bucket]}") |> range(start: 0)'
            f' |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{field}")'
            f"{extra} |> group() |> count()"
        )
        return int(rows[0]["_value"]) if rows else 0

    def packets(self) -> dict[tuple[str, datetime], dict[str, list[float]]]:
        """Every stored ``seismic_packet``, by device and first sample: each component's
        samples unpacked (civic_iot.storage.waveform)."""
        rows = self.flux(
            f'from(bucket: "{self.buckets["seismic"]}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._measurement == "seismic_packet")'
            ' |> filter(fn: (r) => r._field == "x_gal" or r._field == "y_gal"'
            ' or r._field == "z_gal")'
        )
        out: dict[tuple[str, datetime], dict[str, list[float]]] = {}
        for r in rows:
            out.setdefault((r["device"], r["_time"]), {})[r["_field"]] = unpack(r["_value"])
        return out

    def wait_count(
        self, want: int, bucket: str, measurement: str, field: str, timeout: float = 90
    ) -> int:
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = self.count(bucket, measurement, field)
            if n >= want:
                return n
            time.sleep(0.5)
        return n


@pytest.fixture
def penv(stack: Settings, unique: str, tmp_path: Path) -> Iterator[Env]:
    """Per-test topics and temporary buckets (deleted afterwards)."""
    prefix = f"t{unique}."
    kafka = stack.kafka.model_copy(update={"topic_prefix": prefix})
    asyncio.run(
        ensure_topics(kafka.bootstrap, Topology(prefix=prefix, partitions=kafka.partitions))
    )
    buckets = {b: f"t{unique}-{b}" for b in ("readings", "seismic", "derived")}
    influx = stack.influx
    with InfluxDBClient(url=influx.url, token=influx_token(stack), org=influx.org) as c:
        org = c.organizations_api().find_organizations(org=influx.org)[0]
        for name in buckets.values():
            c.buckets_api().create_bucket(bucket_name=name, org_id=org.id)
    # The test's own buckets: the processors' token writes only the production ones, so
    # this run writes with the admin token.
    token = influx_token(stack)
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "influx": influx.model_copy(
                update={
                    "token": SecretStr(token),
                    "bucket_readings": buckets["readings"],
                    "bucket_seismic": buckets["seismic"],
                    "bucket_derived": buckets["derived"],
                }
            ),
        }
    )
    env = {
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_INFLUX__BUCKET_READINGS": buckets["readings"],
        "CIVIC_INFLUX__BUCKET_SEISMIC": buckets["seismic"],
        "CIVIC_INFLUX__BUCKET_DERIVED": buckets["derived"],
        "CIVIC_INFLUX__TOKEN": token,
        "CIVIC_PROCESSORS__WEB_PORT": "0",
        "CIVIC_PROCESSORS__STATS_INTERVAL_S": "0",
        "CIVIC_INFLUX__WRITE_BACKOFF_CAP_S": "1",
    }
    yield Env(settings, env, prefix, buckets, tmp_path)
    with InfluxDBClient(url=influx.url, token=influx_token(stack), org=influx.org) as c:
        api = c.buckets_api()
        for name in buckets.values():
            b = api.find_bucket_by_name(name)
            if b is not None:
                api.delete_bucket(b)


def start_worker(e: Env, name: str = "worker", **extra: str) -> subprocess.Popen[bytes]:
    log = e.tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "processors.cli"],
        env={**os.environ, **e.env, **extra},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while "Ready" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(60)


def _reading(device: Device | SimStation, t: datetime, data: Any, township: str) -> bytes:
    dev_id = device.id if isinstance(device, Device) else device.station_id
    r = Reading(
        reading_id=f"{dev_id}:{to_ns(t)}",
        device_id=dev_id,
        kind=data.kind,
        event_time=t,
        received_at=t,
        location=Location(lat=device.lat, lon=device.lon, township=township),
        data=data,
    )
    return r.to_record()


async def _produce(settings: Settings, records: Sequence[tuple[str, str, bytes]]) -> None:
    """Produce as ingest does: each record with its mark."""
    mark = Marker(mark_key(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
    await producer.start()
    try:
        futs = [
            await producer.send(
                topic, value, key=key.encode(), headers=mark.headers(topic, key.encode(), value)
            )
            for topic, key, value in records
        ]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def produce(e: Env, records: Sequence[tuple[str, str, bytes]]) -> None:
    asyncio.run(_produce(e.settings, records))


def assert_every_sample_stored(e: Env, records: Sequence[tuple[str, str, bytes]]) -> None:
    """One ``seismic_packet`` per seismic reading of ``records``, holding every sample
    (each the float32 nearest to what was sent), and nothing else."""
    sent = [Reading.from_record(value) for _, _, value in records]
    n = e.wait_count(len(sent), "seismic", "seismic_packet", "samples", 120)
    assert n == len(sent)
    want = {
        (r.device_id, r.event_time): {
            c: stored(getattr(r.data, c)) for c in ("x_gal", "y_gal", "z_gal")
        }
        for r in sent
    }
    got = e.packets()
    assert got.keys() == want.keys()
    assert got == want


def candidates(e: Env, want: int, timeout: float = 60) -> list[dict[str, Any]]:
    recs = asyncio.run(
        read_topic(e.settings, f"{e.prefix}alerts.candidates", want=want, timeout_s=timeout)
    )
    return [json.loads(v) for _, v in recs]


def _candidates_until(e: Env, done: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """Every candidate so far, read again until ``done(candidates)`` holds."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = candidates(e, want=1_000_000, timeout=2)
        if done(got):
            return got
    return got


def test_air_and_flood_readings_give_figures_and_candidates(penv: Env, registry: Registry) -> None:
    town = "63000010"
    air = [d for d in registry.of_kind("air") if d.township == town]
    assert len(air) >= 2
    flood = next(d for d in registry.of_kind("water") if d.sensor == "flood")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=13)
    records = []
    for i in range(78):  # 13 h of 10-minute readings: enough valid hours for the PM AQI
        t = start + timedelta(minutes=10 * i)
        for d in air:
            data = AirPayload(ts=t, pm2_5_ugm3=90.0, pm10_ugm3=60.0)
            records.append((f"{penv.prefix}readings.air", d.id, _reading(d, t, data, town)))
    for i, depth in enumerate((5.0, 12.0, 35.0)):
        t = start + timedelta(minutes=5 * i)
        data_w = WaterPayload(ts=t, flood_depth_cm=depth)
        records.append(
            (f"{penv.prefix}readings.water", flood.id, _reading(flood, t, data_w, flood.township))
        )
    produce(penv, records)
    worker = start_worker(penv)
    try:
        # Faust's files are under the data dir, none in the working directory.
        app_id = Topology.of(penv.settings).processors_app
        assert (penv.settings.data_dir / "processors" / app_id).is_dir()
        assert not (REPO / f"{app_id}-data").exists()
        n_air = 78 * len(air)
        assert penv.wait_count(n_air, "readings", "air", "pm2_5_ugm3") == n_air
        assert penv.wait_count(3, "readings", "water", "flood_depth_cm") == 3
        flood_key, rise_key = f"flood:{flood.township}", f"water_rise:{flood.township}"

        def done(got: list[dict[str, Any]]) -> bool:
            keys = [f"{c['hazard']}:{c['area_code']}" for c in got]
            return (
                keys.count(flood_key) == 2
                and rise_key in keys
                and any(c["hazard"] == "air_quality" and c["level"] >= 2 for c in got)
            )

        got = _candidates_until(penv, done)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for c in got:
            by_key.setdefault(f"{c['hazard']}:{c['area_code']}", []).append(c)
        air_c = by_key[f"air_quality:{town}"]
        assert air_c[-1]["level"] >= 2
        assert air_c[-1]["value"] > 150
        assert len(air_c[-1]["devices"]) >= 2
        flood_c = by_key[f"flood:{flood.township}"]
        assert [c["level"] for c in flood_c] == [1, 2]
        assert flood_c[-1]["value"] == 35.0
        # 5, 12, 35 cm in 10 minutes: rising 30 cm per 10 min, a candidate of its own.
        rise_c = by_key[rise_key]
        assert [c["level"] for c in rise_c] == [1]
        assert rise_c[0]["value"] == pytest.approx(30.0)
        # Derived figures as docs/storage.md lays them out.
        assert penv.wait_count(n_air, "derived", "air_quality", "level") == n_air
        rows = penv.flux(
            f'from(bucket: "{penv.buckets["derived"]}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._measurement == "air_quality" and r._field == "aqi")'
            " |> group() |> max()"
        )
        assert rows[0]["_value"] > 150
        assert penv.count("derived", "township_air", "level") > 0
        assert penv.wait_count(3, "derived", "water_level", "flood_depth_cm") == 3
    finally:
        stop(worker)


# A synthetic M6 across northern Taiwan (as tests/unit/detectors/test_quake_replay.py).
SPIKES = [Spike(NOISY, T0 + t, a) for t, a in ((15.0, 200.0), (47.3, 300.0), (80.0, 250.0))]


def _seismic_records(
    e: Env, quake: SimQuake | None, duration_s: float, start_s: float = T0
) -> list[Any]:
    packets = synthesize_packets(
        STATIONS,
        start_s=start_s,
        duration_s=duration_s,
        quake=quake,
        spikes=SPIKES,
        noisy={NOISY: 1.5},
        offset_gal=(0.0, 0.0, 980.0),
        seed=7,
    )
    where = {s.station_id: s for s in STATIONS}
    out = []
    for p in packets:
        data = p.payload(decimals=4)
        t = data.ts
        st = where[p.station_id]
        out.append((f"{e.prefix}readings.seismic", st.station_id, _reading(st, t, data, "")))
    return out


def _quake_closed(got: list[dict[str, Any]]) -> bool:
    quakes = [c for c in got if c["hazard"] == "earthquake"]
    return any(c["level"] >= 1 for c in quakes) and quakes[-1]["level"] == 0


def _one_closed_event(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earthquake candidates of ``got``, checked to be one event, declared and closed."""
    quakes = [c for c in got if c["hazard"] == "earthquake"]
    assert quakes
    assert len({c["area_code"] for c in quakes}) == 1, [c["area_code"] for c in quakes]
    assert quakes[0]["level"] >= 1
    assert quakes[-1]["level"] == 0  # the event closed
    assert len(quakes[-1]["devices"]) >= 20
    return quakes


def test_quake_replay_gives_one_event_and_noise_none(penv: Env) -> None:
    quake = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
    records = _seismic_records(penv, quake, 100.0)
    produce(penv, records)
    worker = start_worker(penv)
    try:
        # Until the event has been declared and closed (its last candidate is level 0).
        quakes = _one_closed_event(_candidates_until(penv, _quake_closed))
        assert_every_sample_stored(penv, records)
        # Updates in the same stream second share a point (same series and time).
        assert 1 <= penv.count("derived", "quake_event", "magnitude") <= len(quakes)
        assert penv.count("derived", "seismic_station", "pga_gal") == len(records)
    finally:
        stop(worker)


def test_the_seismic_path_split_in_a_stations_and_a_quake_worker_gives_the_event(
    penv: Env,
) -> None:
    # Roles ``stations`` and ``quake``: the associator in a process (and consumer group)
    # of its own, fed only through seismic.triggers, so that its steps never hold the
    # stations' packets back; the same replay as one worker gives the same one event.
    quake = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
    records = _seismic_records(penv, quake, 100.0)
    produce(penv, records)
    assoc = start_worker(penv, "quake", CIVIC_PROCESSORS__ROLE="quake")
    stations = start_worker(penv, "stations", CIVIC_PROCESSORS__ROLE="stations")
    try:
        _one_closed_event(_candidates_until(penv, _quake_closed))
        assert_every_sample_stored(penv, records)
        assert penv.count("derived", "seismic_station", "pga_gal") == len(records)
        # Each did only its own part: the stations worker logged no candidate.
        assert "alert candidate" not in (penv.tmp / "stations.log").read_text(errors="replace")
        assert "alert candidate" in (penv.tmp / "quake.log").read_text(errors="replace")
    finally:
        stop(stations)
        stop(assoc)


def test_a_lone_noisy_station_raises_no_quake(penv: Env) -> None:
    records = [r for r in _seismic_records(penv, None, 90.0) if r[1] == NOISY]
    records += [r for r in _seismic_records(penv, None, 90.0) if r[1] in ("TPE", "KEL")]
    produce(penv, records)
    worker = start_worker(penv)
    try:
        assert_every_sample_stored(penv, records)
        # Marker: a real quake right after the noise. Its triggers follow the noise's on
        # the one seismic.triggers partition, so the associator judges the noise first:
        # once the quake's candidate is out, one from the noise would be too.
        start = T0 + 90.0
        quake = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=start + 40)
        produce(penv, _seismic_records(penv, quake, 100.0, start_s=start))
        got = _candidates_until(
            penv, lambda got: any(c["hazard"] == "earthquake" and c["level"] >= 1 for c in got)
        )
        assert got, "the marker quake gave no candidate"
        # Every candidate is the marker's: none from the noise, nor dated in its window.
        assert {c["hazard"] for c in got} == {"earthquake"}
        assert len({c["area_code"] for c in got}) == 1, got
        assert all(datetime.fromisoformat(c["event_time"]).timestamp() >= start for c in got)
    finally:
        stop(worker)


def _rain_records(e: Env, gauge: Device, start: datetime, idx: range) -> list[Any]:
    out = []
    for i in idx:
        t = start + timedelta(minutes=5 * i)
        data = WaterPayload(ts=t, rainfall_mm=2.0)
        out.append(
            (f"{e.prefix}readings.water", gauge.id, _reading(gauge, t, data, gauge.township))
        )
    return out


def _last_rain_24h(e: Env) -> float:
    rows = e.flux(
        f'from(bucket: "{e.buckets["derived"]}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "rain" and r._field == "rainfall_mm_24h")'
        ' |> group() |> sort(columns: ["_time"]) |> last()'
    )
    # The derived point may trail the raw ones by a flush: none yet reads as 0.
    return float(rows[0]["_value"]) if rows else 0.0


def test_state_survives_sigkill_and_every_reading_is_stored_once(
    penv: Env, registry: Registry
) -> None:
    gauge = next(d for d in registry.of_kind("water") if d.sensor == "rain")
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=10)
    worker = start_worker(penv, "first")
    produce(penv, _rain_records(penv, gauge, start, range(60)))
    assert penv.wait_count(60, "readings", "water", "rainfall_mm") == 60
    produce(penv, _rain_records(penv, gauge, start, range(60, 120)))
    time.sleep(0.3)  # mid-stream
    stop(worker, signal.SIGKILL)
    worker = start_worker(penv, "second")
    try:
        assert penv.wait_count(120, "readings", "water", "rainfall_mm") == 120
        assert penv.wait_count(120, "derived", "rain", "rainfall_mm_24h") == 120
        # 120 reports of 2 mm every 5 minutes over 10 h: the 24 h sum continues from the
        # state before the kill (a restart from zero would end far lower).
        deadline = time.monotonic() + 30
        while _last_rain_24h(penv) < 240.0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _last_rain_24h(penv) == pytest.approx(240.0)
        assert penv.count("readings", "water", "rainfall_mm") == 120
    finally:
        stop(worker)


def test_worker_without_influxdb_commits_nothing(penv: Env, registry: Registry) -> None:
    """InfluxDB unreachable: the worker says so on /health and commits nothing, also
    when a second worker joins the group and the first leaves it (partitions move with
    records fetched and not stored); a worker started with InfluxDB back stores all."""
    gauge = next(d for d in registry.of_kind("water") if d.sensor == "rain")
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=5)
    produce(penv, _rain_records(penv, gauge, start, range(40)))
    topic = f"{penv.prefix}readings.water"
    assert asyncio.run(_uncommitted(penv, topic)) == 40  # all on Kafka, none committed
    # A closed port: every write fails, the worker backs off and holds its offsets.
    port = free_port()
    web = {"CIVIC_PROCESSORS__WEB_PORT": str(port), "CIVIC_PROCESSORS__HEALTH_STORAGE_GRACE_S": "1"}
    down = {"CIVIC_INFLUX__URL": "http://127.0.0.1:9"}
    worker = start_worker(penv, "down", **down, **web)
    log = penv.tmp / "down.log"
    deadline = time.monotonic() + 30
    while "storage unavailable" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    time.sleep(4)  # several commit intervals pass
    status, body = _health(port)
    assert status == 503, body
    assert body["storage"] == "unavailable"
    assert "water" in body["storage_failing_s"]
    # The lag counts from the consumer's committed offsets (processors.faust_adapter):
    # nothing is committed, so every reading read so far is lag.
    assert body["lag"] >= 40, body
    # A second worker joins, then the first leaves: two rebalances mid-outage.
    other = start_worker(penv, "down2", **down)
    try:
        time.sleep(3)
    finally:
        stop(worker)
    time.sleep(3)
    stop(other)
    assert asyncio.run(_uncommitted(penv, topic)) == 40
    assert penv.count("readings", "water", "rainfall_mm") == 0
    worker = start_worker(penv, "up", **web)
    try:
        stored = penv.wait_count(40, "readings", "water", "rainfall_mm")
        assert stored == 40, _diagnosis(penv, topic, ("down", "down2", "up"))
        deadline = time.monotonic() + 90
        while _last_rain_24h(penv) < 80.0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _last_rain_24h(penv) == pytest.approx(80.0)
        status, body = _health(port)
        assert status == 200, body
        assert body["healthy"] is True
        assert body["partitions"] > 0
        deadline = time.monotonic() + 90
        while body["lag"] > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            body = _health(port)[1]
        assert body["lag"] == 0, body  # all stored, all committed
    finally:
        stop(worker)


def _diagnosis(e: Env, topic: str, logs: Sequence[str]) -> str:
    """What a failed wait needs explained: the uncommitted records and the workers' logs
    (their lines about partitions, commits, storage and errors)."""
    words = ("assign", "revok", "commit", "storage", "error", "Error", "warn", "seek", "Seek")
    out = [f"uncommitted on {topic}: {asyncio.run(_uncommitted(e, topic))}"]
    for name in logs:
        path = e.tmp / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        out.append(f"--- {name}.log ({len(lines)} lines)")
        out.extend([line[:300] for line in lines if any(w in line for w in words)][-60:])
    return "\n".join(out)


def _health(port: int) -> tuple[int, dict[str, Any]]:
    """The worker's /health: status code and JSON body (503 carries a body too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _shaken_water_devices(
    e: Env, enough: Callable[[dict[str, str]], bool], timeout: float = 120
) -> dict[str, str]:
    """device -> intensity of the ``strong_shaking`` points, once ``enough`` of them are
    stored (the shaking agent stores its notices batch by batch)."""
    deadline = time.monotonic() + timeout
    shaken: dict[str, str] = {}
    while time.monotonic() < deadline:
        rows = e.flux(
            f'from(bucket: "{e.buckets["derived"]}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._measurement == "strong_shaking" and r._field == "intensity")'
            " |> group()"
        )
        shaken = {str(r["device"]): str(r["_value"]) for r in rows}
        if enough(shaken):
            break
        time.sleep(1)
    return shaken


def test_strong_shaking_lowers_the_debris_flow_threshold_and_a_fast_rise_alerts(
    penv: Env, registry: Registry
) -> None:
    quake = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
    produce(penv, _seismic_records(penv, quake, 100.0))
    worker = start_worker(penv)
    try:
        # (1) The quake's townships at intensity >= 5- mark their water devices (via Kafka).
        # The worker judges against the thresholds file it was started with (the default).
        lines = load_thresholds(penv.settings.thresholds, registry)

        def r70_of(d: Device) -> float | None:
            return lines.for_device(d.id, d.township).debris_flow.r70_mm

        def rain_gauges(shaken: dict[str, str]) -> list[Device]:
            return [
                d
                for d in registry.of_kind("water")
                if d.sensor == "rain" and d.id in shaken and r70_of(d)
            ]

        shaken = _shaken_water_devices(penv, lambda found: bool(rain_gauges(found)))
        gauges = rain_gauges(shaken)
        assert gauges, f"no rain gauge with R70 among the shaken devices {sorted(shaken)}"
        gauge = gauges[0]
        r70 = r70_of(gauge)
        assert r70 is not None
        debris = lines.for_device(gauge.id, gauge.township).debris_flow
        assert debris.r50_mm is None  # so R50 is derived: one step below R70
        r50 = r70 - debris.r50_below_r70_mm
        # Rain after the earthquake, 10 mm every 10 min up to R50 + 20 mm: red under R50;
        # under R70 it would be yellow at most (R70 is 50 mm higher).
        rain_start = datetime.fromtimestamp(quake.origin_s, UTC) + timedelta(hours=1)
        n_rain = int((r50 + 20.0) // 10)
        records = [
            (
                f"{penv.prefix}readings.water",
                gauge.id,
                _reading(
                    gauge,
                    rain_start + timedelta(minutes=10 * i),
                    WaterPayload(ts=rain_start + timedelta(minutes=10 * i), rainfall_mm=10.0),
                    gauge.township,
                ),
            )
            for i in range(n_rain)
        ]
        # (2) A flood gauge rising 19 cm per 10 minutes, still under its 10 cm line.
        flood = next(d for d in registry.of_kind("water") if d.sensor == "flood")
        for minutes, depth in ((0.0, 0.0), (2.5, 4.5), (5.0, 9.5)):
            t = rain_start + timedelta(minutes=minutes)
            data = WaterPayload(ts=t, flood_depth_cm=depth)
            records.append(
                (f"{penv.prefix}readings.water", flood.id, _reading(flood, t, data, flood.township))
            )
        produce(penv, records)

        debris_key = f"debris_flow:{gauge.township}"
        rise_key = f"water_rise:{flood.township}"

        def done(got: list[dict[str, Any]]) -> bool:
            keys = {f"{c['hazard']}:{c['area_code']}": c["level"] for c in got}
            return keys.get(debris_key) == 2 and keys.get(rise_key) == 1

        got = _candidates_until(penv, done)
        debris = [c for c in got if f"{c['hazard']}:{c['area_code']}" == debris_key]
        assert [c["level"] for c in debris] == [1, 2], debris
        red = debris[-1]
        assert red["threshold"] == r50  # not R70
        assert r50 <= red["value"] < r70  # the event rain when red was raised
        assert red["evidence"]["debris_flow_threshold_kind"] == "r50"
        assert red["evidence"]["r70_mm"] == r70
        assert red["evidence"]["r50_shaking_intensity"] == shaken[gauge.id]
        quake_ids = {
            c["area_code"].removeprefix("quake-") for c in got if c["hazard"] == "earthquake"
        }
        assert red["evidence"]["r50_after_earthquake"] in quake_ids
        # The stored figures say which threshold was used.
        assert penv.wait_count(n_rain, "derived", "rain", "debris_flow_threshold_kind") == n_rain
        rows = penv.flux(
            f'from(bucket: "{penv.buckets["derived"]}") |> range(start: 0)'
            ' |> filter(fn: (r) => r._measurement == "rain")'
            ' |> filter(fn: (r) => r._field == "debris_flow_threshold_kind"'
            ' or r._field == "debris_flow_threshold_mm")'
            ' |> group(columns: ["_field"]) |> distinct()'
        )
        assert {(r["_field"], r["_value"]) for r in rows} == {
            ("debris_flow_threshold_kind", "r50"),
            ("debris_flow_threshold_mm", r50),
        }
        rise = [c for c in got if f"{c['hazard']}:{c['area_code']}" == rise_key]
        assert [c["level"] for c in rise] == [1]
        assert rise[0]["value"] == pytest.approx(19.0, abs=0.5)
        assert rise[0]["threshold"] == 10.0
        assert rise[0]["devices"] == [flood.id]
        # No flood candidate: the depth never reached its first line.
        assert not [c for c in got if c["hazard"] == "flood"]
    finally:
        stop(worker)


def test_worker_refuses_topics_that_are_not_copartitioned(stack: Settings, unique: str) -> None:
    """readings.water with other partitions than processors.shaking would lose R50 marks."""
    prefix = f"t{unique}."
    asyncio.run(ensure_topics(stack.kafka.bootstrap, Topology(prefix=prefix, partitions=2)))
    proc = subprocess.run(
        [sys.executable, "-m", "processors.cli"],
        env={**os.environ, "CIVIC_KAFKA__TOPIC_PREFIX": prefix, "CIVIC_PROCESSORS__WEB_PORT": "0"},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert f"{prefix}readings.water has 2 partitions, CIVIC_KAFKA__PARTITIONS is 4" in proc.stderr


def _metric(port: int, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the worker's /metrics (Prometheus text), if present."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def _uncommitted(e: Env, topic: str) -> int:
    """Records of ``topic`` the processors' consumer group has not committed, from Kafka."""
    group = Topology(prefix=e.prefix).processors_app
    admin = AIOKafkaAdminClient(bootstrap_servers=e.settings.kafka.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=e.settings.kafka.bootstrap)
    await consumer.start()
    try:
        parts = await partition_counts(e.settings.kafka.bootstrap, [topic])
        tps = [TopicPartition(topic, p) for p in range(parts[topic])]
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(end[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)


def test_a_point_influxdb_refuses_mid_stream_is_dead_lettered_and_the_stream_moves_on(
    penv: Env, registry: Registry
) -> None:
    """A field type conflict mid-stream, as the real world makes one: a backfill tool
    stored ``o3_ppb`` as integers in this shard, then a sensor starts sending ozone. Its
    ``air`` point is refused (HTTP 422, partial write); every other point of its batch is
    stored, the refused line is on ``storage.deadletter`` with InfluxDB's reason, counted,
    reported on /health (still 200), and the agent goes on committing and storing."""
    town = "63000010"
    a, b = [d for d in registry.of_kind("air") if d.township == town][:2]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=7)  # 40 readings: past
    odd_t = start + timedelta(minutes=10 * 15)
    s = penv.settings
    with InfluxDBClient(url=s.influx.url, token=influx_token(s), org=s.influx.org) as c:
        c.write_api(write_options=SYNCHRONOUS).write(
            bucket=penv.buckets["readings"],
            record=f"air,device=backfill,kind=air,township={town} o3_ppb=41i {to_ns(odd_t)}",
        )

    def air(device: Device, i: int) -> tuple[str, str, bytes]:
        t = start + timedelta(minutes=10 * i)
        ozone = 35.0 if (device is a and i == 15) else None
        data = AirPayload(ts=t, pm2_5_ugm3=20.0 + i, o3_ppb=ozone)
        return (f"{penv.prefix}readings.air", device.id, _reading(device, t, data, town))

    produce(penv, [air(d, i) for i in range(30) for d in (a, b)])
    port = free_port()
    worker = start_worker(penv, "conflict", CIVIC_PROCESSORS__WEB_PORT=str(port))
    try:
        [(key, value)] = asyncio.run(
            read_topic(s, f"{penv.prefix}storage.deadletter", want=1, timeout_s=90)
        )
        dead = StorageDeadLetter.model_validate_json(value)
        assert key == b"air"
        assert dead.line.startswith(f"air,device={a.id},kind=air,township={town} ")
        assert "o3_ppb=35.0" in dead.line
        assert dead.line.endswith(f" {to_ns(odd_t)}")
        assert (dead.bucket, dead.service, dead.sink) == (
            penv.buckets["readings"],
            "processors",
            "air",
        )
        assert (dead.reason_class, dead.status) == ("type_conflict", 422)
        assert 'input field "o3_ppb" on measurement "air" is type float' in dead.reason

        # Nothing else is lost: every other reading of the batch, and the refused
        # reading's derived figures (their own lines), are stored.
        assert penv.wait_count(59, "readings", "air", "pm2_5_ugm3") == 59
        assert penv.wait_count(60, "derived", "air_quality", "level") == 60
        assert (
            _metric(
                port, "civic_storage_deadletters_total", {"sink": "air", "reason": "type_conflict"}
            )
            == 1.0
        )
        status, body = _health(port)
        assert status == 200, body
        assert body["healthy"] is True
        assert body["storage"] == "ok"
        report = body["storage_deadletters"]["air"]
        assert (report["count"], report["last_reason_class"]) == (1, "type_conflict")
        assert "field type conflict" in report["last_reason"]

        # The agent keeps moving: later readings are stored and offsets committed.
        produce(penv, [air(d, i) for i in range(30, 40) for d in (a, b)])
        assert penv.wait_count(79, "readings", "air", "pm2_5_ugm3") == 79
        topic = f"{penv.prefix}readings.air"
        deadline = time.monotonic() + 60
        while (behind := asyncio.run(_uncommitted(penv, topic))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert behind == 0
        assert penv.count("readings", "air", "o3_ppb") == 1  # the backfill's, nothing else
    finally:
        stop(worker)


# --- defence in depth: records ingest did not write, and readings outside the bounds -------


def _raw(topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Any:
    return (topic, key, value, headers or [])


async def _produce_raw(settings: Settings, records: Sequence[Any]) -> None:
    """Produce as anyone with access to Kafka could: headers as given, or none."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for topic, key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)
    finally:
        await producer.stop()


def _packet(station: SimStation, t: datetime, rate: float, n: int) -> bytes:
    """A seismic reading as the worker reads it, built without validation (the issue's
    1e-6 Hz packet is no reading at all)."""
    data = SeismicPayload.model_construct(
        v=1,
        kind="seismic",
        ts=t,
        sample_rate_hz=rate,
        x_gal=[0.0] * n,
        y_gal=[0.0] * n,
        z_gal=[980.0] * n,
        pga_gal=None,
        pgv_cms=None,
    )
    return Reading.model_construct(
        reading_id=f"{station.station_id}:{to_ns(t)}", device_id=station.station_id,
        kind="seismic", event_time=t, received_at=t, late=False,
        location=Location(lat=station.lat, lon=station.lon, township=""), data=data,
    ).model_dump_json(exclude_none=True).encode()  # fmt: skip


def test_foreign_and_hostile_records_are_refused_and_a_quake_still_alerts(
    penv: Env, registry: Registry
) -> None:
    """Straight to the readings topics: a reading without ingest's mark, one with a forged
    mark, and, marked, the issue's 1e-6 Hz packet, a packet 231 days ahead and one from
    year 1. Each is dead-lettered with its reason and bytes (year 1's raw point is stored,
    so InfluxDB refuses it and the sink dead-letters it), and an earthquake replayed right
    after them still gives its candidate."""
    s = penv.settings
    mark = Marker(mark_key(s))
    air = registry.of_kind("air")[0]
    now = datetime.now(UTC).replace(microsecond=0)
    good = _reading(air, now, AirPayload(ts=now, pm2_5_ugm3=12.0), air.township)
    air_topic, seis_topic = f"{penv.prefix}readings.air", f"{penv.prefix}readings.seismic"
    tpe = STATIONS[0]

    def marked(topic: str, key: str, value: bytes) -> Any:
        return _raw(topic, key, value, mark.headers(topic, key.encode(), value))

    slow = _packet(tpe, now, 1e-6, 20)
    ahead = _packet(tpe, now + timedelta(days=231), 100.0, 100)
    year_1 = _packet(tpe, datetime(1, 1, 1, tzinfo=UTC), 100.0, 1)
    asyncio.run(
        _produce_raw(
            s,
            [
                _raw(air_topic, air.id, good),
                _raw(air_topic, air.id, good, [(HEADER, b"v1=" + b"0" * 64)]),
                marked(seis_topic, tpe.station_id, slow),
                marked(seis_topic, tpe.station_id, ahead),
                marked(seis_topic, tpe.station_id, year_1),
            ],
        )
    )
    # The quake: the stations within 60 km of it, enough for the associator.
    quake = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
    near = {
        st.station_id
        for st in STATIONS
        if float(distance_km(quake.lat, quake.lon, st.lat, st.lon)) < 60.0
    }
    produce(penv, [r for r in _seismic_records(penv, quake, 50.0) if r[1] in near])
    worker = start_worker(penv)
    try:
        got = _candidates_until(
            penv, lambda got: any(c["hazard"] == "earthquake" and c["level"] >= 1 for c in got)
        )
        assert any(c["hazard"] == "earthquake" and c["level"] >= 1 for c in got)
        dead = [
            DeadLetter.model_validate_json(v)
            for _, v in asyncio.run(read_topic(s, f"{penv.prefix}readings.deadletter", want=4))
        ]
        by_reason = {d.reason: d for d in dead}
        assert sorted(d.reason for d in dead) == [
            "bad_mark", "future_timestamp", "schema", "unmarked",
        ]  # fmt: skip
        assert base64.b64decode(by_reason["unmarked"].payload_b64) == good
        assert by_reason["unmarked"].topic == air_topic
        assert base64.b64decode(by_reason["schema"].payload_b64) == slow
        assert base64.b64decode(by_reason["future_timestamp"].payload_b64) == ahead
        [(_, value)] = asyncio.run(read_topic(s, f"{penv.prefix}storage.deadletter", want=1))
        refused = StorageDeadLetter.model_validate_json(value)
        assert refused.line.startswith("seismic_packet,device=TPE")
        assert refused.line.endswith(f" {to_ns(datetime(1, 1, 1, tzinfo=UTC))}")
        # Nothing foreign was stored.
        assert penv.count("readings", "air", "pm2_5_ugm3") == 0
    finally:
        stop(worker)
