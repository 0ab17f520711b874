"""Records on ``readings.{kind}`` holding several readings: JSON Lines, cut to a size,
gathered by ingest per partition, and read back without a second validation when trusted
(ingest's mark: civic_iot.contracts.provenance)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.partitioner import DefaultPartitioner

from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
    WaterPayload,
    chunked,
    decode_record,
    record_lines,
    record_value,
)
from ingest.service import readings_records

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _reading(device: str, i: int, kind: str = "air") -> Reading:
    t = T0 + timedelta(seconds=60 * i)
    data: AirPayload | WaterPayload | SeismicPayload
    if kind == "air":
        data = AirPayload(ts=t, pm2_5_ugm3=12.5 + i, o3_ppb=30.0)
    elif kind == "water":
        data = WaterPayload(ts=t, rainfall_mm=1.0 + i)
    else:
        data = SeismicPayload(
            ts=t, sample_rate_hz=100.0, x_gal=[0.1] * 100, y_gal=[-0.2] * 100, z_gal=[i] * 100
        )
    return Reading(
        reading_id=f"{device}:{i}",
        device_id=device,
        kind=kind,  # type: ignore[arg-type]
        event_time=t,
        received_at=t + timedelta(seconds=1),
        late=i % 2 == 1,
        location=Location(lat=25.0, lon=121.5, township="6300100"),
        data=data,
    )


def test_lines_round_trip_and_chunks_keep_order_within_the_size() -> None:
    lines = [bytes([65 + i % 26]) * (10 + i) for i in range(40)]
    groups = chunked(lines, max_bytes=100)
    assert [line for g in groups for line in g] == lines
    for g in groups:
        assert len(record_value(g)) <= 100 or len(g) == 1
        assert record_lines(record_value(g)) == g
    assert chunked([b"x" * 300, b"y"], max_bytes=100) == [[b"x" * 300], [b"y"]]


@pytest.mark.parametrize("kind", ["air", "water", "seismic"])
def test_a_trusted_record_reads_as_the_validated_readings(kind: str) -> None:
    readings = [_reading(f"dev-{i % 3}", i, kind) for i in range(7)]
    value = record_value([r.to_record() for r in readings])
    trusted = decode_record(value, trusted=True)
    checked = decode_record(value, trusted=False)
    assert checked.refused == []
    assert trusted.readings == checked.readings == readings
    assert (trusted.trusted, checked.trusted) == (True, False)


def test_an_untrusted_record_refuses_a_bad_line_alone() -> None:
    good = [_reading("dev-1", i).to_record() for i in range(3)]
    value = record_value([good[0], b'{"reading_id": "nope"}', good[1], b"not json", good[2]])
    out = decode_record(value, trusted=False)
    assert [r.reading_id for r in out.readings] == ["dev-1:0", "dev-1:1", "dev-1:2"]
    assert [e.split(":")[0] for e in out.refused] == ["line 1", "line 3"]


class _Parts:
    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


def test_ingest_gathers_a_partitions_readings_in_one_record() -> None:
    readings = [_reading(f"dev-{i % 9}", i) for i in range(60)]
    batch = [("p.readings.air", r.device_id.encode(), r.to_record()) for r in readings]
    batch.insert(5, ("p.readings.deadletter", b"dev-x", b"{}"))
    out = asyncio.run(
        readings_records(_Parts(), batch, readings={"p.readings.air"})  # type: ignore[arg-type]
    )
    dead = [r for r in out if r[0] == "p.readings.deadletter"]
    assert dead == [("p.readings.deadletter", b"dev-x", b"{}")]
    part = DefaultPartitioner()
    ids = (0, 1, 2, 3)
    seen: list[str] = []
    for record in out:
        if record[0] != "p.readings.air":
            continue
        _topic, key, value = record
        lines = decode_record(value, trusted=True).readings
        # The record lands where each of its readings would alone.
        assert {part(r.device_id.encode(), ids, ids) for r in lines} == {part(key, ids, ids)}
        seen += [r.reading_id for r in lines]
    # Every reading once; within a device (one partition), in arrival order.
    assert sorted(seen) == sorted(r.reading_id for r in readings)
    for dev in {r.device_id for r in readings}:
        mine = [s for s in seen if s.startswith(f"{dev}:")]
        assert mine == [r.reading_id for r in readings if r.device_id == dev]
