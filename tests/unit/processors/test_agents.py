"""The agents through Faust's ``test_context()``: no Kafka, no InfluxDB; the sink and the
publisher are in-memory recorders of their Protocols."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from civic_iot.contracts.processing import (
    Observation,
    SeismicTick,
    StrongShakingNotice,
    TownshipReport,
    TownshipReports,
    Trigger,
)
from civic_iot.contracts.provenance import Marker
from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
    WaterPayload,
    record_value,
)
from civic_iot.registry import Device, Registry, Township
from civic_iot.settings import Settings
from civic_iot.storage.sink import SinkClosed
from civic_iot.thresholds import thresholds_from
from civic_iot.times import to_ns
from civic_iot.topology import Topology
from processors.agents.device import seismic_ticks
from processors.agents.quake import QuakeAgent
from processors.agents.township import encode_reports
from processors.app import create_app
from processors.detectors.quake import distance_km
from processors.handlers import Context, SeismicOutcome, handle_seismic
from processors.states import SeismicDevice
from simulator.waveforms import SimQuake, SimStation, synthesize_traces
from tests.unit.processors.recorders import RecordingPublisher, RecordingSink

TOWN = "63000010"
REGISTRY = Registry(
    townships=(Township(code=TOWN, name="Songshan", lat=25.05, lon=121.558),),
    devices=(
        Device(id="air-1", kind="air", lat=25.04, lon=121.55, township=TOWN),
        Device(id="air-2", kind="air", lat=25.05, lon=121.56, township=TOWN),
        Device(id="flood-1", kind="water", lat=25.05, lon=121.56, township=TOWN, sensor="flood"),
    ),
)


#: The record mark key of these tests' worker, and the worker's wall clock (epoch s): the
#: readings below are dated the day before.
MARK_KEY = "unit-test-mark-key-0123456789abcdef"
NOW = datetime(2026, 11, 26, tzinfo=UTC).timestamp()


def _settings() -> Settings:
    return Settings(
        kafka={"mark_key": MARK_KEY},  # type: ignore[arg-type]
        processors={"web_port": 0, "batch_within_s": 0.01, "stats_interval_s": 0},  # type: ignore[arg-type]
    )


def _marked(kind: str, key: bytes, value: bytes) -> dict[str, Any]:
    """``ctx.put``'s arguments for a record on ``readings.{kind}`` that ingest wrote."""
    headers = Marker(MARK_KEY.encode()).headers(f"readings.{kind}", key, value)
    return {"key": key, "value": value, "headers": headers}


def _air(device: Device, t: datetime, pm25: float) -> bytes:
    return Reading(
        reading_id=f"{device.id}:{to_ns(t)}",
        device_id=device.id,
        kind="air",
        event_time=t,
        received_at=t,
        location=Location(lat=device.lat, lon=device.lon, township=device.township),
        data=AirPayload(ts=t, pm2_5_ugm3=pm25),
    ).to_record()


@pytest.fixture
def harness() -> tuple[Any, dict[str, RecordingSink], RecordingPublisher, Settings]:
    settings = _settings()
    sinks: dict[str, RecordingSink] = {}

    def factory(name: str) -> RecordingSink:
        return sinks.setdefault(name, RecordingSink())

    pub = RecordingPublisher()
    app = create_app(
        settings,
        registry=REGISTRY,
        thresholds=thresholds_from({}, REGISTRY),
        sink_factory=factory,
        publisher=pub,
        clock=lambda: NOW,
    )
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    return app, sinks, pub, settings


async def _until(cond: Any, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_air_readings_give_figures_and_township_reports(harness: Any) -> None:
    app, sinks, pub, settings = harness
    agent = app.agents["air"]
    start = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)

    async def run() -> None:
        async with agent.test_context() as ctx:
            for i in range(78):
                t = start + timedelta(minutes=10 * i)
                for d in REGISTRY.of_kind("air"):
                    await ctx.put(**_marked("air", d.id.encode(), _air(d, t, 90.0)))
            await _until(lambda: len(sinks["air"].stored) >= 2 * 78 * 2)

    asyncio.run(run())
    stored = sinks["air"].stored
    raw = [p for p in stored if p.measurement == "air"]
    assert len(raw) == 156
    aq = [p for p in stored if p.measurement == "air_quality"]
    last = dict(aq[-1].fields)
    assert last["aqi"] > 150
    assert last["level"] == 2
    assert aq[-1].time_ns == to_ns(start + timedelta(minutes=770))
    # One message per township and batch, its reports in reading order.
    messages = [
        json.loads(v) for topic, _, v in pub.sent if topic == Topology.of(settings).township
    ]
    assert all(m["township"] == TOWN for m in messages)
    reports = [r for m in messages for r in m["reports"]]
    assert len(reports) == 156
    assert reports[-1]["level"] == 2
    assert reports[-1]["township"] == TOWN


def test_township_agent_needs_two_sensors_and_sends_one_candidate_per_change(
    harness: Any,
) -> None:
    app, sinks, pub, _settings = harness
    agent = app.agents["township"]
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

    def report(device: str, level: int, aqi: float, minutes: int) -> bytes:
        return json.dumps({
            "township": TOWN, "hazard": "air_quality", "device": device, "level": level,
            "value": aqi, "metric": "aqi",
            "event_time": (t + timedelta(minutes=minutes)).isoformat(),
        }).encode()  # fmt: skip

    async def run() -> None:
        async with agent.test_context() as ctx:
            await ctx.put(key=TOWN.encode(), value=report("air-1", 2, 170, 0))
            await ctx.put(key=TOWN.encode(), value=report("air-1", 2, 172, 10))
            await ctx.put(key=TOWN.encode(), value=report("air-2", 2, 165, 11))
            await ctx.put(key=TOWN.encode(), value=report("air-2", 2, 166, 20))
            await _until(lambda: len(sinks["township"].stored) >= 4)

    asyncio.run(run())
    cands = [json.loads(v) for topic, _, v in pub.sent if topic.endswith("alerts.candidates")]
    # One sensor alone never decides; the second agreeing one does, once.
    assert [(c["hazard"], c["area_code"], c["level"]) for c in cands] == [("air_quality", TOWN, 2)]
    assert cands[0]["devices"] == ["air-1", "air-2"]
    levels = [dict(p.fields)["level"] for p in sinks["township"].stored]
    assert levels == [0, 0, 2, 2]


def test_flood_reading_reports_its_level_to_the_township(harness: Any) -> None:
    app, sinks, pub, _settings = harness
    agent = app.agents["water"]
    dev = REGISTRY.get("flood-1")
    assert dev is not None
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    value = Reading(
        reading_id=f"flood-1:{to_ns(t)}", device_id="flood-1", kind="water", event_time=t,
        received_at=t, location=Location(lat=dev.lat, lon=dev.lon, township=TOWN),
        data=WaterPayload(ts=t, flood_depth_cm=35.0),
    ).to_record()  # fmt: skip

    async def run() -> None:
        async with agent.test_context() as ctx:
            await ctx.put(**_marked("water", b"flood-1", value))
            await _until(lambda: len(sinks["water"].stored) >= 2)

    asyncio.run(run())
    by_m = {p.measurement: p for p in sinks["water"].stored}
    assert dict(by_m["water"].tags)["sensor"] == "flood"
    assert dict(by_m["water_level"].fields)["level"] == 2
    [(_topic, key, v)] = pub.sent
    assert key == TOWN
    [report] = json.loads(v)["reports"]
    assert report["hazard"] == "flood"
    assert report["level"] == 2


# --- strong shaking: quake agent -> processors.shaking -> shaking agent -> water agent -----

YILAN = "10002010"
SHAKEN_REGISTRY = Registry(
    townships=(Township(code=YILAN, name="Yilan", lat=24.76, lon=121.75),),
    devices=(
        Device(id="rain-1", kind="water", lat=24.75, lon=121.74, township=YILAN, sensor="rain"),
        Device(id="air-9", kind="air", lat=24.75, lon=121.74, township=YILAN),
    ),
)
QUAKE_T0 = 1_700_000_000.0
QUAKE_STATIONS = [("WLI", 24.87, 121.55), ("DTG", 24.68, 121.60), ("ILA", 24.76, 121.75)]


@pytest.fixture
def shaken() -> tuple[Any, dict[str, RecordingSink], RecordingPublisher, Settings]:
    settings = _settings()
    sinks: dict[str, RecordingSink] = {}

    def factory(name: str) -> RecordingSink:
        return sinks.setdefault(name, RecordingSink())

    pub = RecordingPublisher()
    thresholds = thresholds_from(
        {
            "defaults": {"debris_flow": {"r50_days": 10}},
            "regions": {YILAN: {"debris_flow": {"r70_mm": 250.0}}},
        },
        SHAKEN_REGISTRY,
    )
    app = create_app(
        settings,
        registry=SHAKEN_REGISTRY,
        thresholds=thresholds,
        sink_factory=factory,
        publisher=pub,
        clock=lambda: QUAKE_T0 + 86_400,  # the rain falls in the hours after the quake
    )
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    return app, sinks, pub, settings


def _p_time(lat: float, lon: float) -> float:
    r = math.hypot(float(distance_km(24.80, 121.60, lat, lon)), 10.0)
    return QUAKE_T0 + r / 6.0


def test_quake_agent_sends_strong_shaking_to_the_township_rain_gauges(shaken: Any) -> None:
    app, _sinks, pub, settings = shaken
    agent = app.agents["quake"]
    declare = SeismicTick(
        now_s=QUAKE_T0 + 6,
        triggers=tuple(
            Trigger(station_id=s, lat=la, lon=lo, p_time_s=_p_time(la, lo))
            for s, la, lo in QUAKE_STATIONS
        ),
        partition=0,
    )
    shaking = SeismicTick(
        now_s=QUAKE_T0 + 7,
        observations=tuple(
            Observation(station_id=s, pga_gal=160.0, pgv_cms=16.0) for s, _, _ in QUAKE_STATIONS
        ),
        partition=0,
    )

    async def run() -> None:
        async with agent.test_context() as ctx:
            await ctx.put(key=b"network", value=declare.model_dump_json().encode())
            await ctx.put(key=b"network", value=shaking.model_dump_json().encode())
            await _until(lambda: any(t == Topology.of(settings).shaking for t, _, _ in pub.sent))

    asyncio.run(run())
    sent = [(k, json.loads(v)) for t, k, v in pub.sent if t == Topology.of(settings).shaking]
    assert [k for k, _ in sent] == ["rain-1"]  # keyed by device: the water device only
    notice = sent[0][1]
    assert (notice["township"], notice["intensity"]) == (YILAN, "5-")
    cands = [json.loads(v) for t, _, v in pub.sent if t.endswith("alerts.candidates")]
    assert notice["event_id"] == cands[-1]["area_code"].removeprefix("quake-")


def test_the_candidate_latency_is_taken_as_the_candidate_leaves_not_after_the_notices(
    shaken: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The latency line is the bench's candidate time: taken after the batch's notices to
    # the rain gauges (and a strong quake shakes many), it ran late by the notices, and
    # the bench matched a candidate with nothing new to say to the next one's alert.
    app, _sinks, pub, settings = shaken
    topics = Topology.of(settings)
    sent_when_logged: list[list[str]] = []
    log_latency = QuakeAgent._log_latency

    def spy(self: QuakeAgent, *args: Any) -> None:
        sent_when_logged.append([t for t, _, _ in pub.sent])
        log_latency(self, *args)

    monkeypatch.setattr(QuakeAgent, "_log_latency", spy)
    record_ms = int(QUAKE_T0 * 1000) + 7_000
    tick = SeismicTick(
        now_s=QUAKE_T0 + 7,
        triggers=tuple(
            Trigger(station_id=s, lat=la, lon=lo, p_time_s=_p_time(la, lo))
            for s, la, lo in QUAKE_STATIONS
        ),
        observations=tuple(
            Observation(station_id=s, pga_gal=160.0, pgv_cms=16.0) for s, _, _ in QUAKE_STATIONS
        ),
        trigger_record_ms=record_ms,
        record_ms=record_ms,
        partition=0,
    )

    async def run() -> None:
        async with app.agents["quake"].test_context() as ctx:
            await ctx.put(key=b"network", value=tick.model_dump_json().encode())
            await _until(lambda: any(t == topics.shaking for t, _, _ in pub.sent))

    asyncio.run(run())
    [when] = sent_when_logged
    assert when
    assert when[-1] == topics.candidates
    assert topics.shaking not in when
    assert [t for t, _, _ in pub.sent][len(when) :] == [topics.shaking]


def _rain(t: datetime, mm: float) -> bytes:
    dev = SHAKEN_REGISTRY.get("rain-1")
    assert dev is not None
    return Reading(
        reading_id=f"rain-1:{to_ns(t)}", device_id="rain-1", kind="water", event_time=t,
        received_at=t, location=Location(lat=dev.lat, lon=dev.lon, township=YILAN),
        data=WaterPayload(ts=t, rainfall_mm=mm),
    ).to_record()  # fmt: skip


def test_shaking_agent_marks_the_gauge_and_the_water_agent_uses_r50(shaken: Any) -> None:
    app, sinks, pub, settings = shaken
    origin = datetime.fromtimestamp(QUAKE_T0, UTC)
    notice = StrongShakingNotice(
        device="rain-1", township=YILAN, event_id="q1", intensity="5+", origin_time=origin
    )
    rain_start = origin + timedelta(hours=1)

    async def run() -> None:
        async with app.agents["shaking"].test_context() as ctx:
            await ctx.put(key=b"rain-1", value=notice.model_dump_json().encode())
            await _until(lambda: len(sinks["shaking"].stored) >= 1)
        async with app.agents["water"].test_context() as ctx:
            for i in range(23):  # 230 mm: under R70 (250) but over R50 (200)
                t = rain_start + timedelta(minutes=10 * i)
                await ctx.put(**_marked("water", b"rain-1", _rain(t, 10.0)))
            await _until(lambda: len(sinks["water"].stored) >= 2 * 23)

    asyncio.run(run())
    [mark] = sinks["shaking"].stored
    assert mark.measurement == "strong_shaking"
    assert dict(mark.tags) == {"device": "rain-1", "township": YILAN, "event_id": "q1"}
    assert dict(mark.fields)["r50_until"] == (origin + timedelta(days=10)).isoformat()
    rain = [dict(p.fields) for p in sinks["water"].stored if p.measurement == "rain"]
    assert rain[-1]["debris_flow_threshold_kind"] == "r50"
    assert rain[-1]["debris_flow_threshold_mm"] == 200.0
    assert rain[-1]["debris_flow_level"] == 2
    reports = [
        r
        for t, _, v in pub.sent
        if t == Topology.of(settings).township
        for r in json.loads(v)["reports"]
    ]
    debris = [r for r in reports if r["hazard"] == "debris_flow"]
    assert [r["level"] for r in debris][-1] == 2
    assert debris[-1]["evidence"]["debris_flow_threshold_kind"] == "r50"
    assert debris[-1]["evidence"]["r50_after_earthquake"] == "q1"


# --- the commit-after-sink loop ------------------------------------------------------------


def _app_with_air_sink(air: RecordingSink, sinks: dict[str, RecordingSink]) -> Any:
    """A finalized app whose air agent stores into ``air``; every sink lands in ``sinks``."""

    def factory(name: str) -> RecordingSink:
        return sinks.setdefault(name, air if name == "air" else RecordingSink())

    app = create_app(
        _settings(),
        registry=REGISTRY,
        thresholds=thresholds_from({}, REGISTRY),
        sink_factory=factory,
        publisher=RecordingPublisher(),
        clock=lambda: NOW,
    )
    app.finalize()
    app.flow_control.resume()
    return app


class GatedSink(RecordingSink):
    """A sink whose flush waits until the test opens the gate (InfluxDB slow or down)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.flushing = asyncio.Event()

    async def flush(self) -> None:
        if self.pending:
            self.flushing.set()
            await self.gate.wait()
        await super().flush()


def test_state_and_acks_wait_until_the_points_are_stored() -> None:
    sinks: dict[str, RecordingSink] = {}
    app = _app_with_air_sink(GatedSink(), sinks)
    table = app.tables["air-state"]
    device = REGISTRY.devices[0]
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    before: dict[str, Any] = {}

    async def run() -> None:
        sink = sinks["air"]
        assert isinstance(sink, GatedSink)
        async with app.agents["air"].test_context() as ctx:
            record = _marked("air", device.id.encode(), _air(device, t, 40.0))
            event = await ctx.put(**record, wait=False)
            await asyncio.wait_for(sink.flushing.wait(), 5)
            before.update(state=table.get(device.id), acked=event.message.acked)
            sink.gate.set()
            await _until(lambda: event.message.acked)
            # Read again (a restart before the commit): the state holds it already.
            ctx.sent_offset = event.message.offset
            await ctx.put(**record)
            await _until(lambda: len(sink.stored) >= 3)

    asyncio.run(run())
    assert before == {"state": None, "acked": False}  # nothing before the points are stored
    state = table.get(device.id)
    assert state is not None
    assert state.offset == 0
    assert state.last_seen == t.timestamp()
    # The replay rewrote the raw point only: the detectors saw the reading once.
    assert [p.measurement for p in sinks["air"].stored] == ["air", "air_quality", "air"]


def test_the_stations_ticks_leave_before_their_packets_are_stored_and_acks_wait() -> None:
    # Storage is not on the warning path: the associator's tick of a batch is sent as
    # soon as its packets are decided, before their points are built and while they are stored;
    # the state and the acks (so the commit) still wait for the points.
    station = Device(id="seis-1", kind="seismic", lat=25.05, lon=121.56, township=TOWN)
    registry = Registry(townships=REGISTRY.townships, devices=(*REGISTRY.devices, station))
    sink, pub = GatedSink(), RecordingPublisher()
    app = create_app(
        _settings(),
        registry=registry,
        thresholds=thresholds_from({}, registry),
        sink_factory=lambda name: sink if name == "seismic" else RecordingSink(),
        publisher=pub,
        clock=lambda: NOW,
    )
    app.finalize()
    app.flow_control.resume()
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    packet = SeismicPayload(
        ts=t, sample_rate_hz=100.0, x_gal=[0.1] * 100, y_gal=[0.2] * 100, z_gal=[980.0] * 100
    )
    value = Reading(
        reading_id=f"seis-1:{to_ns(t)}", device_id="seis-1", kind="seismic", event_time=t,
        received_at=t, location=Location(lat=station.lat, lon=station.lon, township=TOWN),
        data=packet,
    ).to_record()  # fmt: skip
    triggers = Topology.of(_settings()).triggers
    while_storing: dict[str, Any] = {}
    # How many ticks had gone when each packet's points reached the sink: the points
    # are built after the ticks leave (building them is not on the warning path).
    ticks_at_add: list[int] = []
    add = sink.add

    def watched_add(points: Any) -> None:
        ticks_at_add.append(sum(topic == triggers for topic, _, _ in pub.sent))
        add(points)

    sink.add = watched_add  # type: ignore[method-assign]

    async def run() -> None:
        async with app.agents["seismic"].test_context() as ctx:
            event = await ctx.put(**_marked("seismic", b"seis-1", value), wait=False)
            await asyncio.wait_for(sink.flushing.wait(), 5)
            while_storing.update(
                ticks=[json.loads(v) for topic, _, v in pub.sent if topic == triggers],
                state=app.tables["seismic-state"].get("seis-1"),
                acked=event.message.acked,
            )
            sink.gate.set()
            await _until(lambda: event.message.acked)

    asyncio.run(run())
    [tick] = while_storing["ticks"]
    assert tick["now_s"] == t.timestamp() + 1.0
    assert [s["station_id"] for s in tick["stations"]] == ["seis-1"]
    assert while_storing["state"] is None
    assert while_storing["acked"] is False
    assert [p.measurement for p in sink.stored] == ["seismic_packet", "seismic_station"]
    assert ticks_at_add == [1]
    assert app.tables["seismic-state"].get("seis-1") is not None


class ClosedSink(RecordingSink):
    """The sink of a worker that is stopping: closed before the batch was stored."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = asyncio.Event()

    async def flush(self) -> None:
        if self.pending:
            self.refused.set()
            raise SinkClosed("air")
        await super().flush()


def test_a_batch_the_closed_sink_refuses_ends_the_agent_unacked_without_a_crash() -> None:
    # A crashed agent is restarted by faust's supervisor, and one restarted while the
    # worker stops hangs it (seen: a worker SIGTERMed mid-batch never exited). The agent
    # ends instead, nothing acked, so the batch is read again after the restart.
    sinks: dict[str, RecordingSink] = {}
    app = _app_with_air_sink(ClosedSink(), sinks)
    agent = app.agents["air"]
    device = REGISTRY.devices[0]
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    seen: dict[str, Any] = {}

    async def run() -> None:
        sink = sinks["air"]
        assert isinstance(sink, ClosedSink)
        async with agent.test_context() as ctx:
            record = _marked("air", device.id.encode(), _air(device, t, 40.0))
            event = await ctx.put(**record, wait=False)
            await asyncio.wait_for(sink.refused.wait(), 5)
            actors = list(ctx._actors)
            await _until(
                lambda: all(a.actor_task is not None and a.actor_task.done() for a in actors)
            )
            seen.update(
                acked=event.message.acked,
                crashed=[a.crash_reason for a in actors if a.crash_reason is not None],
                state=app.tables["air-state"].get(device.id),
            )

    asyncio.run(run())
    assert seen == {"acked": False, "crashed": [], "state": None}


def test_seismic_ticks_replay_a_batch_per_second_and_partition() -> None:
    def out(end_s: float, station: str, *, trig: bool = False, pga: float = 0.0) -> Any:
        return SeismicOutcome(
            state=SeismicDevice(),
            trigger=Trigger(station_id=station, lat=24.0, lon=121.0, p_time_s=end_s - 0.5)
            if trig
            else None,
            observation=Observation(station_id=station, pga_gal=pga, pgv_cms=0.1) if pga else None,
            end_s=end_s,
        )

    batch = [
        (out(100.2, "A", trig=True), 5_000, 1),
        (out(100.9, "A", pga=3.0), 5_100, 1),
        (out(100.9, "A", pga=7.0), 5_200, 1),  # the newest observation per station wins
        (out(100.5, "B", trig=True), None, 0),  # no record time: no latency from it
        (out(101.4, "A"), 5_300, 1),
    ]
    ticks = seismic_ticks(batch)
    assert [(t.partition, t.now_s) for t in ticks] == [(0, 100.5), (1, 100.9), (1, 101.4)]
    p0, p1, later = ticks
    assert [tr.station_id for tr in p0.triggers] == ["B"]
    assert p0.trigger_record_ms is None
    assert p1.trigger_record_ms == 5_000
    assert [(o.station_id, o.pga_gal) for o in p1.observations] == [("A", 7.0)]
    assert later.triggers == ()
    assert later.observations == ()
    assert later.trigger_record_ms is None


def test_a_batch_of_packets_decided_together_is_decided_as_one_after_another() -> None:
    # The seismic agent decides a batch's packets in waves of distinct stations, each
    # wave's filters together: a station twice in one record and in two records, a packet
    # with nothing new, must give the states and points of one packet after the other.
    stations = [
        Device(id=f"seis-{i}", kind="seismic", lat=24.9 + 0.1 * i, lon=121.5, township=TOWN)
        for i in range(3)
    ]
    registry = Registry(townships=REGISTRY.townships, devices=(*REGISTRY.devices, *stations))
    thresholds = thresholds_from({}, registry)
    t0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    quake = SimQuake(lat=25.0, lon=121.6, depth_km=10, magnitude=5.5, origin_s=t0.timestamp() + 12)
    traces = synthesize_traces(
        [SimStation(d.id, d.lat, d.lon) for d in stations],
        start_s=t0.timestamp(),
        duration_s=18,
        quake=quake,
        seed=2,
    )

    def packet(d: Device, second: int) -> Reading:
        t = t0 + timedelta(seconds=second)
        x = np.round(traces[d.id][second * 100 : second * 100 + 100], 3)
        data = SeismicPayload(
            ts=t, sample_rate_hz=100.0, x_gal=x[:, 0].tolist(), y_gal=x[:, 1].tolist(),
            z_gal=x[:, 2].tolist(),
        )  # fmt: skip
        return Reading(
            reading_id=f"{d.id}:{to_ns(t)}", device_id=d.id, kind="seismic", event_time=t,
            received_at=t, location=Location(lat=d.lat, lon=d.lon, township=TOWN), data=data,
        )  # fmt: skip

    s0, s1, s2 = stations
    records = [
        [packet(s0, 0), packet(s1, 0), packet(s0, 1), packet(s0, 2)],
        [packet(s2, 0), packet(s1, 1), packet(s0, 2), packet(s1, 2), packet(s2, 1)],
        [packet(d, k) for k in range(3, 18) for d in stations],
    ]
    sink = RecordingSink()
    app = create_app(
        _settings(),
        registry=registry,
        thresholds=thresholds,
        sink_factory=lambda name: sink if name == "seismic" else RecordingSink(),
        publisher=RecordingPublisher(),
        clock=lambda: NOW,
    )
    app.finalize()
    app.flow_control.resume()

    async def run() -> None:
        async with app.agents["seismic"].test_context() as ctx:
            events = [
                await ctx.put(
                    **_marked("seismic", b"p0", record_value([r.to_record() for r in rs])),
                    wait=False,
                )
                for rs in records
            ]
            await _until(lambda: all(e.message.acked for e in events))

    asyncio.run(run())
    ctx = Context.build(_settings().influx, registry, thresholds)
    states: dict[str, SeismicDevice] = {}
    lines = []
    for rs in records:
        for r in rs:
            out = handle_seismic(states.get(r.device_id, SeismicDevice()), r, ctx)
            states[r.device_id] = out.state
            lines += [p.line() for p in out.points]
    assert sorted(p.line() for p in sink.stored) == sorted(lines)
    assert any(s.station.last_trigger_s for s in states.values())  # an event, not only noise
    for d in stations:
        assert app.tables["seismic-state"].get(d.id).station == states[d.id].station


def test_township_agent_takes_every_township_of_a_message(harness: Any) -> None:
    # The device agents send one message per partition of processors.township, a line
    # per township (processors.agents.township.encode_reports).
    app, sinks, pub, _settings = harness
    agent = app.agents["township"]
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    other = "63000020"

    def report(town: str, device: str, level: int, aqi: float) -> TownshipReport:
        return TownshipReport(
            township=town, hazard="air_quality", device=device, level=level, value=aqi,
            metric="aqi", event_time=t,
        )  # fmt: skip

    value = encode_reports([
        TownshipReports(
            township=TOWN, reports=(report(TOWN, "air-1", 2, 170), report(TOWN, "air-2", 2, 165))
        ),
        TownshipReports(township=other, reports=(report(other, "air-9", 0, 40),)),
    ])  # fmt: skip

    async def run() -> None:
        async with agent.test_context() as ctx:
            await ctx.put(key=TOWN.encode(), value=value)
            await _until(lambda: len(sinks["township"].stored) >= 2)

    asyncio.run(run())
    cands = [json.loads(v) for topic, _, v in pub.sent if topic.endswith("alerts.candidates")]
    assert [(c["area_code"], c["level"]) for c in cands] == [(TOWN, 2)]
    stored = {dict(p.tags)["township"]: dict(p.fields)["level"] for p in sinks["township"].stored}
    assert stored == {TOWN: 2, other: 0}
    # Each township's state holds its own place in the message, for the replay check.
    table = app.tables["township-state"]
    assert (table[TOWN].index, table[other].index) == (0, 1)


def test_the_next_batch_is_decided_through_the_one_being_stored_and_acks_keep_order() -> None:
    # InfluxDB slow: the agent does not wait for it between batches. The next batch reads
    # the state through the batch being stored, while neither reaches the table nor is
    # acked until the points of the first are stored; then both, in order.
    sinks: dict[str, RecordingSink] = {}
    app = _app_with_air_sink(GatedSink(), sinks)
    table = app.tables["air-state"]
    device = REGISTRY.devices[0]
    t = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    while_storing: dict[str, Any] = {}

    async def run() -> None:
        sink = sinks["air"]
        assert isinstance(sink, GatedSink)
        async with app.agents["air"].test_context() as ctx:
            first = await ctx.put(**_marked("air", device.id.encode(), _air(device, t, 40.0)))
            await asyncio.wait_for(sink.flushing.wait(), 5)
            later = t + timedelta(minutes=10)
            second = await ctx.put(
                **_marked("air", device.id.encode(), _air(device, later, 100.0)), wait=False
            )
            await _until(lambda: len(sink.pending) >= 4)  # decided while the first is held
            while_storing.update(
                state=table.get(device.id),
                acked=(first.message.acked, second.message.acked),
                stored=len(sink.stored),
            )
            sink.gate.set()
            await _until(lambda: second.message.acked)
            while_storing["first_acked_after"] = first.message.acked

    asyncio.run(run())
    assert while_storing == {
        "state": None,
        "acked": (False, False),
        "stored": 0,
        "first_acked_after": True,
    }
    aq = [dict(p.fields) for p in sinks["air"].stored if p.measurement == "air_quality"]
    assert [f["pm2_5_ugm3_1h"] for f in aq] == [40.0, 70.0]  # the second saw the first
    state = table.get(device.id)
    assert state is not None
    assert state.offset == 1
    assert state.last_seen == (t + timedelta(minutes=10)).timestamp()
