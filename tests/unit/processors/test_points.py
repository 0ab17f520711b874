"""Point builders: exact measurement, tags, fields and timestamps per docs/storage.md."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from influxdb_client.client.write.point import Point as InfluxPoint

from civic_iot.contracts.readings import AirPayload, Location, Reading, SeismicPayload, WaterPayload
from civic_iot.settings import InfluxSettings
from civic_iot.storage.waveform import unpack
from civic_iot.times import to_ns
from processors.detectors.air import AirState, update_air
from processors.detectors.quake import CellShaking, QuakeEvent
from processors.points import (
    Point,
    Where,
    air_quality_point,
    deadletter_point,
    quake_points,
    reading_points,
    sensor_health_point,
)

B = InfluxSettings()
T = datetime(2026, 11, 25, 0, 0, 0, 123456, tzinfo=UTC)
LOC = Location(lat=25.04, lon=121.55, township="63000010")


def _reading(data: AirPayload | WaterPayload | SeismicPayload, late: bool = False) -> Reading:
    return Reading(
        reading_id=f"dev-1:{to_ns(T)}", device_id="dev-1", kind=data.kind, event_time=T,
        received_at=T, late=late, location=LOC, data=data,
    )  # fmt: skip


def test_air_reading_point() -> None:
    [p] = reading_points(_reading(AirPayload(ts=T, pm2_5_ugm3=12, humidity_pct=80)), B)
    assert p.bucket == "readings"
    assert p.measurement == "air"
    assert dict(p.tags) == {"device": "dev-1", "township": "63000010", "kind": "air"}
    assert dict(p.fields) == {
        "pm2_5_ugm3": 12.0, "humidity_pct": 80.0, "lat": 25.04, "lon": 121.55, "late": False,
    }  # fmt: skip
    assert p.time_ns == 1795564800123456000
    assert p.line() == (
        "air,device=dev-1,kind=air,township=63000010 pm2_5_ugm3=12.0,humidity_pct=80.0,"
        "lat=25.04,lon=121.55,late=false 1795564800123456000"
    )


@pytest.mark.parametrize(
    ("data", "registered", "sensor"),
    [
        (WaterPayload(ts=T, flood_depth_cm=3), None, "flood"),
        (WaterPayload(ts=T, water_level_m=4.2), None, "river"),
        (WaterPayload(ts=T, rainfall_mm=0.5), None, "rain"),
        (WaterPayload(ts=T, rainfall_mm=0.5), "river", "river"),
    ],
)
def test_water_reading_sensor_tag(data: WaterPayload, registered: str | None, sensor: str) -> None:
    [p] = reading_points(_reading(data, late=True), B, sensor=registered)
    assert (p.bucket, p.measurement) == ("readings", "water")
    assert dict(p.tags) == {
        "device": "dev-1", "township": "63000010", "kind": "water", "sensor": sensor,
    }  # fmt: skip
    assert dict(p.fields)["late"] is True


def test_a_seismic_packet_is_one_point_at_t0_with_its_samples_packed() -> None:
    data = SeismicPayload(
        ts=T, sample_rate_hz=40, x_gal=[1, -2.5, 3], y_gal=[4, 5, -6], z_gal=[980.25, 8, 9]
    )
    [p] = reading_points(_reading(data), B)
    assert (p.bucket, p.measurement, p.time_ns) == ("seismic", "seismic_packet", to_ns(T))
    assert dict(p.tags) == {"device": "dev-1", "township": "63000010"}
    fields = dict(p.fields)
    assert [unpack(str(fields[c])) for c in ("x_gal", "y_gal", "z_gal")] == [
        [1.0, -2.5, 3.0], [4.0, 5.0, -6.0], [980.25, 8.0, 9.0],
    ]  # fmt: skip
    assert (fields["sample_rate_hz"], fields["samples"]) == (40.0, 3)
    assert (fields["x_peak_gal"], fields["y_peak_gal"], fields["z_peak_gal"]) == (3.0, 6.0, 980.25)
    # Numbers as numbers (Flux aggregates them), the samples as strings.
    assert p.line().count('"') == 6
    assert ",samples=3i," in p.line()


def test_a_seismic_packet_point_from_its_components_array_is_the_same() -> None:
    """The worker hands the raw point the (3, n) array it made for the detector: the
    same point as from the payload's lists."""
    data = SeismicPayload(
        ts=T, sample_rate_hz=100, x_gal=[0.01, -0.0, 3999.99], y_gal=[-4000, 5.5, -6.25],
        z_gal=[980.25, 0.1, -0.07],
    )  # fmt: skip
    r = _reading(data)
    comps = np.array((data.x_gal, data.y_gal, data.z_gal))
    assert reading_points(r, B, components=comps) == reading_points(r, B)
    assert reading_points(r, B)[0].line() == reading_points(r, B, components=comps)[0].line()


def test_same_reading_same_points() -> None:
    r = _reading(AirPayload(ts=T, pm2_5_ugm3=12))
    assert reading_points(r, B) == reading_points(Reading.from_record(r.to_record()), B)


def test_air_quality_point_fields_and_types() -> None:
    state = AirState()
    for i in range(78):
        upd = update_air(state, T + timedelta(minutes=10 * i), {"pm2_5_ugm3": 90.0})
        state = upd.state
    p = air_quality_point(Where("dev-1", "63000010", 25.04, 121.55), upd.figures, B)
    assert p is not None
    assert (p.bucket, p.measurement) == ("derived", "air_quality")
    f = dict(p.fields)
    assert set(f) == {
        "aqi", "category", "leading", "level", "pm2_5_ugm3_1h", "pm2_5_ugm3_rt", "lat", "lon"
    }  # fmt: skip
    assert isinstance(f["aqi"], int)
    assert isinstance(f["level"], int)
    assert f["leading"] == "pm2_5"
    assert f["category"] == "Unhealthy"
    assert f["level"] == 2
    assert p.time_ns == to_ns(T + timedelta(minutes=770))


def test_quake_cells_get_distinct_times_and_event_fields() -> None:
    cells = tuple(
        CellShaking(lat=24.85 + i / 10, lon=121.55, pga_gal=50, pgv_cms=3, intensity="4",
                    s_wave_s=3.0, township="63000010")
        for i in range(3)
    )  # fmt: skip
    ev = QuakeEvent(
        event_id="e1", origin_s=1_700_000_040.0, lat=24.8, lon=121.6, depth_km=10, rms_s=0.1,
        magnitude=6.0, magnitude_method="pd", station_ids=("a", "b", "c"), max_intensity="5-",
        cells=cells, townships=("63000010",), first_trigger_s=1_700_000_042.0,
        computed_at_s=1_700_000_045.0,
    )  # fmt: skip
    event, *cell_points = quake_points(ev, B)
    assert event.measurement == "quake_event"
    assert dict(event.tags) == {"event_id": "e1"}
    f = dict(event.fields)
    assert f["n_stations"] == 3
    assert f["max_intensity_rank"] == 5
    assert f["origin_time"] == "2023-11-14T22:14:00.000+00:00"
    assert [p.time_ns - event.time_ns for p in cell_points] == [0, 1, 2]
    assert dict(cell_points[0].fields)["intensity_rank"] == 4


def test_line_protocol_escaping_matches_influxdb_client() -> None:
    p = Point("derived", "sensor_health", (("device", "a b,c=d"), ("issue", "silent")),
              (("active", True), ("detail", 'say "hi"\\n'), ("n", 3), ("x", 1.5)), 42)  # fmt: skip
    ref = (
        InfluxPoint("sensor_health").tag("device", "a b,c=d").tag("issue", "silent")
        .field("active", True).field("detail", 'say "hi"\\n').field("n", 3).field("x", 1.5)
        .time(42)
    )  # fmt: skip
    assert p.line() == ref.to_line_protocol()


def test_health_point() -> None:
    p = sensor_health_point("d", "t", "stuck", active=True, detail="pm2_5_ugm3", at=T, buckets=B)
    assert p is not None
    assert dict(p.tags) == {"device": "d", "township": "t", "issue": "stuck"}
    assert dict(p.fields) == {"active": True, "detail": "pm2_5_ugm3"}


def test_deadletter_point_counts_by_reason_and_kind() -> None:
    rec = {
        "topic": "devices/air-0001/air",
        "device_id": "air-0001",
        "reason": "not_json",
        "error": "device 'air-0001' topic 'devices/air-0001/air': not JSON",
        "received_at": "2026-11-25T08:00:00.250000+00:00",
        "payload_b64": "eno=",
    }
    pt = deadletter_point(rec, InfluxSettings())
    assert pt is not None
    assert pt.bucket == "readings"
    assert pt.measurement == "deadletter"
    assert dict(pt.tags) == {"reason": "not_json", "kind": "air"}
    assert dict(pt.fields)["count"] == 1
    assert dict(pt.fields)["device"] == "air-0001"
    assert pt.time_ns == 1795593600250000000
    odd = deadletter_point(
        {**rec, "topic": "devices/x/raw/extra", "device_id": None}, InfluxSettings()
    )
    assert odd is not None
    assert dict(odd.tags)["kind"] == "unknown"
    assert "device" not in dict(odd.fields)
