"""The agents' door and their resilience, through Faust's ``test_context()``: records on a
readings topic that ingest did not write, or that would move state outside the time
bounds, are dead-lettered (or only stored) and counted; a record that makes a handler
raise is counted and the agent goes on."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY as METRICS

from civic_iot.contracts.deadletter import DeadLetter
from civic_iot.contracts.provenance import HEADER
from civic_iot.contracts.readings import Location, Reading, SeismicPayload
from civic_iot.settings import Settings
from civic_iot.thresholds import thresholds_from
from civic_iot.times import to_ns
from civic_iot.topology import Topology
from processors.app import create_app
from tests.unit.processors.recorders import RecordingPublisher, RecordingSink
from tests.unit.processors.test_agents import NOW, REGISTRY, TOWN, _air, _marked, _settings, _until

Harness = tuple[Any, dict[str, RecordingSink], RecordingPublisher, Settings]


@pytest.fixture
def worker() -> Harness:
    """The app with in-memory sinks and publisher, its wall clock at ``NOW``."""
    settings = _settings()
    sinks: dict[str, RecordingSink] = {}
    pub = RecordingPublisher()
    app = create_app(
        settings,
        registry=REGISTRY,
        thresholds=thresholds_from({}, REGISTRY),
        sink_factory=lambda name: sinks.setdefault(name, RecordingSink()),
        publisher=pub,
        clock=lambda: NOW,
    )
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    return app, sinks, pub, settings


def _refused(reason: str) -> float:
    return (
        METRICS.get_sample_value("civic_processors_refused_records_total", {"reason": reason})
        or 0.0
    )


def _seismic_1e6_hz(t: datetime) -> bytes:
    """The issue's packet: 20 samples at 1e-6 Hz, "ending" 231 days ahead (no validation
    here: the worker's decoding refuses the rate)."""
    data = SeismicPayload.model_construct(
        v=1,
        kind="seismic",
        ts=t,
        sample_rate_hz=1e-6,
        x_gal=[0.0] * 20,
        y_gal=[0.0] * 20,
        z_gal=[980.0] * 20,
        pga_gal=None,
        pgv_cms=None,
    )
    return Reading.model_construct(
        reading_id=f"seis-1:{to_ns(t)}", device_id="seis-1", kind="seismic", event_time=t,
        received_at=t, late=False, location=Location(lat=25.0, lon=121.5, township=TOWN),
        data=data,
    ).model_dump_json(exclude_none=True).encode()  # fmt: skip


def test_foreign_and_hostile_records_are_refused_and_the_agent_goes_on(worker: Harness) -> None:
    app, sinks, pub, settings = worker
    topics = Topology.of(settings)
    dev = REGISTRY.devices[0]
    key = dev.id.encode()
    t = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=5)
    good = _air(dev, t, 12.0)
    before = {r: _refused(r) for r in ("unmarked", "bad_mark", "future_timestamp", "too_old")}

    async def run() -> None:
        async with app.agents["air"].test_context() as ctx:
            await ctx.put(key=key, value=good)  # no mark
            await ctx.put(key=key, value=good, headers=[(HEADER, b"v1=" + b"0" * 64)])
            # Marked for another key, or another topic: a copy is not ingest's record.
            await ctx.put(key=b"air-2", value=good, headers=_marked("air", key, good)["headers"])
            await ctx.put(key=key, value=good, headers=_marked("water", key, good)["headers"])
            ahead = _air(dev, t + timedelta(days=1), 12.0)
            await ctx.put(**_marked("air", key, ahead))
            year_1 = _air(dev, datetime(1, 1, 1, tzinfo=UTC), 12.0)
            await ctx.put(**_marked("air", key, year_1))
            await ctx.put(**_marked("air", key, good))  # and the stream goes on
            await _until(lambda: any(p.measurement == "air_quality" for p in sinks["air"].stored))
        async with app.agents["seismic"].test_context() as ctx:
            packet = _seismic_1e6_hz(t)
            await ctx.put(**_marked("seismic", b"seis-1", packet))

    asyncio.run(run())
    dead = [DeadLetter.model_validate_json(v) for tp, _, v in pub.sent if tp == topics.deadletter]
    assert [d.reason for d in dead] == [
        "unmarked", "bad_mark", "bad_mark", "bad_mark", "future_timestamp", "schema",
    ]  # fmt: skip
    assert base64.b64decode(dead[0].payload_b64) == good  # the exact bytes
    assert dead[0].topic == "readings.air"
    assert dead[0].device_id == dev.id
    assert "not written by ingest" in dead[0].error
    assert "ahead of the processors' clock" in dead[4].error
    assert dead[5].topic == "readings.seismic"
    assert {r: _refused(r) - before[r] for r in before} == {
        "unmarked": 1, "bad_mark": 3, "future_timestamp": 1, "too_old": 1,
    }  # fmt: skip
    # Year 1: stored as it came (InfluxDB will refuse it: the sink dead-letters it), and
    # kept from the detectors: one air_quality figure, the good reading's.
    raw = [p for p in sinks["air"].stored if p.measurement == "air"]
    assert [p.time_ns for p in raw] == [to_ns(datetime(1, 1, 1, tzinfo=UTC)), to_ns(t)]
    aq = [p for p in sinks["air"].stored if p.measurement == "air_quality"]
    assert [p.time_ns for p in aq] == [to_ns(t)]
    # The device's state never saw the future nor year 1.
    state = app.tables["air-state"].get(dev.id)
    assert state is not None
    assert state.last_seen == t.timestamp()
    reports = [json.loads(v) for tp, _, v in pub.sent if tp == topics.township]
    assert len(reports) == 1


def test_a_record_that_makes_a_handler_raise_is_counted_and_the_agent_goes_on(
    worker: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    app, _sinks, pub, settings = worker
    topics = Topology.of(settings)
    when = datetime.fromtimestamp(NOW, UTC).isoformat()

    def report(level: int, aqi: float) -> bytes:
        return json.dumps({
            "township": TOWN, "hazard": "air_quality", "device": "air-1", "level": level,
            "value": aqi, "metric": "aqi", "event_time": when,
        }).encode()  # fmt: skip

    async def run() -> None:
        async with app.agents["township"].test_context() as ctx:
            await ctx.put(key=TOWN.encode(), value=b"not json")
            await ctx.put(key=TOWN.encode(), value=b'{"township": "unknown"}')
            await ctx.put(key=TOWN.encode(), value=report(1, 120.0))
            await _until(lambda: bool(app.tables["township-state"].get(TOWN)))
        async with app.agents["quake"].test_context() as ctx:
            await ctx.put(key=b"network", value=b"[1, 2]")
            await ctx.put(key=b"network", value=b'{"now_s": 1e400, "partition": 0}')
            await ctx.put(key=b"network", value=json.dumps({"now_s": NOW}).encode())
            await _until(lambda: bool(app.tables["quake-state"].get("network")))
        async with app.agents["deadletter"].test_context() as ctx:
            await ctx.put(key=b"x", value=b"[]")

    with caplog.at_level(logging.ERROR, logger="processors.agents.faults"):
        asyncio.run(run())  # none of them crashed its agent (a test agent re-raises)
    failed = [r.getMessage().split(" topic=")[0] for r in caplog.records]
    assert failed == ["record failed agent=township"] * 2 + [
        "record failed agent=quake",
        "record failed agent=deadletter",
    ]
    # The tick "at" 1e400 s (read as infinity) moved the associator's clock no further
    # than the wall clock + skew.
    assert NOW <= app.tables["quake-state"].get("network").clock <= time.time() + 60
    assert [tp for tp, _, _ in pub.sent].count(topics.candidates) == 0
