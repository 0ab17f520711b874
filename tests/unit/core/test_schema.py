"""The storage schema: docs/storage.md is generated from it, points are built through it,
and what the alert service writes today is in it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.delivery import DeliveryResult, MessageRef, ack_point, alert_point, delivery_point
from alerts.lifecycle import AckRecord
from civic_iot.contracts.readings import Location, Reading, SeismicPayload
from civic_iot.settings import InfluxSettings
from civic_iot.storage import schema
from civic_iot.storage.points import Point
from civic_iot.storage.schema import MEASUREMENTS, measurement, windowed, with_tables
from processors.points import reading_points
from tests.unit.alerts.factories import lifecycle_messages

BUCKETS = InfluxSettings(bucket_derived="t-derived", bucket_readings="t-readings")


def test_docs_storage_md_is_generated_from_the_schema() -> None:
    text = schema.DOC.read_text(encoding="utf-8")
    assert with_tables(text) == text, "docs/storage.md is stale: python -m civic_iot.storage.schema"


def test_the_check_command_fails_on_a_stale_doc(tmp_path: Path) -> None:
    doc = tmp_path / "storage.md"
    doc.write_text(f"# x\n\n{schema.BEGIN}\nold\n{schema.END}\n", encoding="utf-8")
    assert schema.main(["--check", "--doc", str(doc)]) == 1
    assert schema.main(["--doc", str(doc)]) == 0
    assert schema.main(["--check", "--doc", str(doc)]) == 0
    assert "| `air_quality` |" in doc.read_text(encoding="utf-8")


def test_names_are_unique_and_buckets_are_roles() -> None:
    names = [m.name for m in MEASUREMENTS]
    assert len(set(names)) == len(names)
    for m in MEASUREMENTS:
        assert m.bucket in schema.BUCKET_ROLES
        assert len(set(m.tag_names)) == len(m.tag_names)
        assert not set(m.tag_names) & set(m.field_names), m.name
    with pytest.raises(KeyError, match="no measurement 'nope'"):
        measurement("nope")


def test_the_naming_rule() -> None:
    assert windowed("pm2_5_ugm3", "1h") == "pm2_5_ugm3_1h"
    assert windowed("rainfall_mm", "event") == "rainfall_mm_event"
    rain = schema.RAIN.field_names
    assert {"rainfall_mm_1h", "rainfall_mm_3h", "rainfall_mm_24h", "rainfall_mm_event"} <= set(rain)


def test_a_point_gets_the_schema_types_and_bucket() -> None:
    p = schema.AIR_QUALITY.point(
        BUCKETS,
        {"device": "d", "township": ""},
        {"aqi": 57.0, "level": True, "pm2_5_ugm3_1h": 12, "category": "Moderate", "lat": None},
        123,
    )
    assert p is not None
    assert p.bucket == "t-derived"
    assert p.tags == (("device", "d"),)  # empty tags are left out
    fields = dict(p.fields)
    assert fields == {"aqi": 57, "level": 1, "pm2_5_ugm3_1h": 12.0, "category": "Moderate"}
    assert type(fields["aqi"]) is int
    assert type(fields["pm2_5_ugm3_1h"]) is float
    assert p.line().startswith("air_quality,device=d aqi=57i,level=1i,pm2_5_ugm3_1h=12.0,")


def test_the_line_made_with_the_point_is_the_encoders_line() -> None:
    # The schema encodes a point's line as it builds it; the sink writes that line, so it
    # must be byte for byte what Point.line() makes of the same values.
    cases = [
        (schema.AIR, {"device": "a b,c=d", "township": "6300", "kind": "air"}),
        (schema.AIR, {"kind": "air", "township": None, "device": "x"}),
        (schema.DEADLETTER, {"reason": "bad json", "kind": "unknown"}),
    ]
    fields: list[dict[str, object]] = [
        {"pm2_5_ugm3": 12, "pm10_ugm3": 0.1, "o3_ppb": 1e-7, "lat": 25.0, "late": True},
        {"pm2_5_ugm3": float("nan"), "co_ppm": 3, "late": False, "lon": 121.123456789},
        {"count": True, "device": 'say "hi" \\ there\nnow', "error": ""},
    ]
    for (m, tags), values in zip(cases, fields, strict=True):
        for _ in range(2):  # the series made, then the series kept
            p = m.point(BUCKETS, tags, values, 1_764_000_000_123_456_789)  # type: ignore[arg-type]
            assert p is not None
            plain = Point(p.bucket, p.measurement, p.tags, p.fields, p.time_ns)
            assert plain == p
            assert p.line() == plain.line()
    p = schema.AIR.point(BUCKETS, {"device": "d"}, {"pm2_5_ugm3": 1}, 5)
    assert p is not None
    assert p.line() == "air,device=d pm2_5_ugm3=1.0 5"
    with pytest.raises(AttributeError, match="immutable"):
        p.time_ns = 6  # type: ignore[misc]


def test_non_finite_and_none_fields_are_left_out_and_no_field_is_no_point() -> None:
    p = schema.AIR_QUALITY.point(BUCKETS, {}, {"aqi": 50, "lat": float("nan")}, 7)
    assert p is not None
    assert dict(p.fields) == {"aqi": 50}
    assert schema.AIR_QUALITY.point(BUCKETS, {}, {"lat": float("inf"), "lon": None}, 7) is None


def test_a_name_the_schema_lacks_is_refused() -> None:
    with pytest.raises(KeyError, match="measurement air_quality has no field 'pm2_5_1h'"):
        schema.AIR_QUALITY.point(BUCKETS, {"device": "d"}, {"pm2_5_1h": 1.0}, 0)
    with pytest.raises(KeyError, match="no tag"):
        schema.AIR_QUALITY.point(BUCKETS, {"sensor": "x"}, {"aqi": 1}, 0)


def test_nothing_left_is_no_point() -> None:
    nan = float("nan")
    assert schema.RAIN.point(BUCKETS, {"device": "d"}, {"rti": nan, "rain_class": None}, 0) is None


def test_seismic_packets_are_built_with_the_schema_names() -> None:
    t = datetime(2025, 7, 1, tzinfo=UTC)
    data = SeismicPayload(ts=t, sample_rate_hz=100, x_gal=[1.0], y_gal=[2.0], z_gal=[3.0])
    r = Reading(
        reading_id="s:1", device_id="s", kind="seismic", event_time=t, received_at=t,
        location=Location(lat=25.0, lon=121.5, township="63000010"), data=data,
    )  # fmt: skip
    (p,) = reading_points(r, InfluxSettings(bucket_seismic="t-seismic"))
    m = schema.SEISMIC_PACKET
    assert (p.bucket, p.measurement) == ("t-seismic", m.name)
    assert {k for k, _ in p.tags} == set(m.tag_names)
    assert [k for k, _ in p.fields] == list(m.field_names)


# --- what the alert service writes ------------------------------------------------------------


def _line_names(line: str) -> tuple[str, set[str], set[str]]:
    """Measurement, tag keys and field keys of one line-protocol line."""
    # Split the series key from the fields at the first space outside an escape.
    head, rest = re.split(r"(?<!\\) ", line, maxsplit=1)
    name, *tags = re.split(r"(?<!\\),", head)
    fields: set[str] = set()
    i = 0
    while i < len(rest) and rest[i] != " ":
        key_end = rest.index("=", i)
        fields.add(rest[i:key_end])
        j = key_end + 1
        if rest[j] == '"':  # a string: up to the closing unescaped quote
            j += 1
            while rest[j] != '"':
                j += 2 if rest[j] == "\\" else 1
            j += 1
        else:
            while j < len(rest) and rest[j] not in ", ":
                j += 1
        i = j + 1 if j < len(rest) and rest[j] == "," else len(rest)
    return name, {t.split("=", 1)[0] for t in tags}, fields


def _line(point: Point) -> str:
    return point.line()


def test_the_alert_services_points_are_in_the_schema() -> None:
    msg = lifecycle_messages("flood")[0]
    result = DeliveryResult(
        channel="webhook", subscriber="agency", message=MessageRef.of(msg), outcome="delivered",
        attempt=1,
        status_code=200, at_ns=int(msg.sent.timestamp() * 1e9) + 5_000_000,
    )  # fmt: skip
    ack = AckRecord(alert_id=msg.alert_id, key=msg.key, by="eoc", at=msg.sent, note="ok, go")
    b = InfluxSettings()
    for point in (alert_point(msg, "Exercise", b), delivery_point(result, b), ack_point(ack, b)):
        name, tags, fields = _line_names(_line(point))
        m = measurement(name)
        assert m.bucket == "alerts"
        assert tags == set(m.tag_names), name
        assert fields == set(m.field_names), name
