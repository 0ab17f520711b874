"""The device contract per kind: tables of good and bad payloads, every range edge.

Each case goes through :func:`ingest.validate.validate` (the only way a payload is judged)
and a refusal must carry the expected reason code and a message naming the device, the
topic and the field that was wrong.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from civic_iot.contracts.readings import AirPayload, Reading, SeismicPayload, WaterPayload
from civic_iot.times import to_ns
from ingest.refusals import Limits, ReadingRefusedError, parse_topic
from ingest.validate import validate
from tests.contract_oracle import RANGES
from tests.contract_world import DEVICE_FOR, REGISTRY

NOW = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
#: Half an hour before NOW: inside the lateness window, so not late.
TS = "2026-11-24T23:30:00Z"

DEVICE_OF = DEVICE_FOR


def judge(kind: str, doc: dict[str, Any]) -> Reading:
    device = DEVICE_OF[kind]
    raw = json.dumps(doc).encode()
    return validate(f"devices/{device}/{kind}", raw, registry=REGISTRY, limits=Limits(), now=NOW)


def refused(kind: str, doc: dict[str, Any]) -> ReadingRefusedError:
    with pytest.raises(ReadingRefusedError) as info:
        judge(kind, doc)
    return info.value


def assert_names(err: ReadingRefusedError, kind: str, field: str) -> None:
    device = DEVICE_OF[kind]
    assert repr(device) in err.message, err.message
    assert repr(f"devices/{device}/{kind}") in err.message, err.message
    assert field in err.message, err.message


# ---------------------------------------------------------------- air

#: The contract's ranges as the independent reading of ingest/README.md has them (not
#: from the model: a change to the model is a visible decision).
AIR_RANGES = RANGES["air"]
POLLUTANTS = ("pm2_5_ugm3", "pm10_ugm3", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb")


def _air(field: str, value: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "ts": TS, field: value}
    if field not in POLLUTANTS:
        doc["pm2_5_ugm3"] = 12.0  # a pollutant is required; the field under test is weather
    return doc


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, lo) for f, (lo, _) in AIR_RANGES.items()] + [(f, hi) for f, (_, hi) in AIR_RANGES.items()],
)
def test_air_range_edges_are_accepted(field: str, value: float) -> None:
    reading = judge("air", _air(field, value))
    assert getattr(reading.data, field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, lo - 0.1) for f, (lo, _) in AIR_RANGES.items()]
    + [(f, hi + 0.1) for f, (_, hi) in AIR_RANGES.items()],
)
def test_air_just_outside_a_range_is_out_of_range(field: str, value: float) -> None:
    err = refused("air", _air(field, value))
    assert err.reason == "out_of_range"
    assert_names(err, "air", field)


@pytest.mark.parametrize(
    "values",
    [
        {"pm2_5_ugm3": 41.5},
        {"co_ppm": 0.4},
        {"so2_ppb": 3},  # an integer is a number
        {"pm2_5_ugm3": 41.5, "pm10_ugm3": 60.0, "temperature_c": 24.5, "humidity_pct": 78.0},
        {
            "pm2_5_ugm3": 41.5,
            "pm10_ugm3": 60.0,
            "o3_ppb": 31.0,
            "co_ppm": 0.4,
            "no2_ppb": 18.0,
            "so2_ppb": 2.0,
            "temperature_c": -3.5,
            "humidity_pct": 0.0,
        },
    ],
)
def test_air_any_subset_with_a_pollutant(values: dict[str, float]) -> None:
    reading = judge("air", {"v": 1, "ts": TS, **values})
    assert isinstance(reading.data, AirPayload)
    assert {k: getattr(reading.data, k) for k in values} == values
    assert all(getattr(reading.data, k) is None for k in AIR_RANGES.keys() - values.keys())


@pytest.mark.parametrize(
    "values", [{}, {"temperature_c": 24.5}, {"humidity_pct": 80}, {"pm2_5_ugm3": None}]
)
def test_air_without_a_pollutant_is_refused(values: dict[str, Any]) -> None:
    err = refused("air", {"v": 1, "ts": TS, **values})
    assert err.reason == "schema"
    assert_names(err, "air", "pm2_5_ugm3")  # the message lists what would do


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("high", "schema"),
        ([1.0], "schema"),
        ({"value": 1.0}, "schema"),
        (float("nan"), "schema"),
        (float("inf"), "schema"),
        # JSON numbers only: no numeric strings, booleans or null in their place.
        ("12.5", "schema"),
        ("1_000", "schema"),
        ("1e2", "schema"),
        (True, "schema"),
        (False, "schema"),
        (None, "schema"),
    ],
)
def test_air_value_not_a_finite_number(value: object, reason: str) -> None:
    err = refused("air", {"v": 1, "ts": TS, "pm2_5_ugm3": value})
    assert err.reason == reason
    assert_names(err, "air", "pm2_5_ugm3")


# ---------------------------------------------------------------- water

WATER_RANGES = {
    "water_level_m": (-100, 5000),
    "flood_depth_cm": (0, 1000),
    "rainfall_mm": (0, 500),
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, lo) for f, (lo, _) in WATER_RANGES.items()]
    + [(f, hi) for f, (_, hi) in WATER_RANGES.items()],
)
def test_water_range_edges_are_accepted(field: str, value: float) -> None:
    reading = judge("water", {"v": 1, "ts": TS, field: value})
    assert getattr(reading.data, field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, lo - 0.1) for f, (lo, _) in WATER_RANGES.items()]
    + [(f, hi + 0.1) for f, (_, hi) in WATER_RANGES.items()],
)
def test_water_just_outside_a_range_is_out_of_range(field: str, value: float) -> None:
    err = refused("water", {"v": 1, "ts": TS, field: value})
    assert err.reason == "out_of_range"
    assert_names(err, "water", field)


@pytest.mark.parametrize(
    "values",
    [
        {"water_level_m": 7.25},
        {"flood_depth_cm": 12.0},
        {"rainfall_mm": 0.5},
        {"water_level_m": 7.25, "rainfall_mm": 0.0},
        {"flood_depth_cm": 0.0, "rainfall_mm": 12.5},
        {"water_level_m": 7.25, "flood_depth_cm": 12.0, "rainfall_mm": 3.0},
    ],
)
def test_water_any_subset(values: dict[str, float]) -> None:
    reading = judge("water", {"v": 1, "ts": TS, **values})
    assert isinstance(reading.data, WaterPayload)
    assert {k: getattr(reading.data, k) for k in values} == values


def test_water_needs_at_least_one_value() -> None:
    err = refused("water", {"v": 1, "ts": TS})
    assert err.reason == "schema"
    assert_names(err, "water", "rainfall_mm")


# ---------------------------------------------------------------- seismic


def _packet(n: int = 3, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "ts": "2026-11-24T23:59:58.250Z",
        "sample_rate_hz": 50,
        "x_gal": [0.1] * n,
        "y_gal": [-0.2] * n,
        "z_gal": [0.3] * n,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    "doc",
    [
        _packet(),
        _packet(1),
        _packet(1000, sample_rate_hz=100),  # 10 s at 100 Hz, the most a packet holds
        _packet(500),  # 10 s at 50 Hz
        _packet(sample_rate_hz=100),
        _packet(sample_rate_hz=31.25),  # OpenEEW
        _packet(sample_rate_hz=20),
        _packet(x_gal=[-4000.0, 4000.0, 0.0]),
        _packet(pga_gal=0, pgv_cms=0),
        _packet(pga_gal=4000, pgv_cms=1000),
        _packet(pga_gal=12.5),
    ],
)
def test_seismic_packets_accepted(doc: dict[str, Any]) -> None:
    reading = judge("seismic", doc)
    assert isinstance(reading.data, SeismicPayload)
    assert reading.data.x_gal == doc["x_gal"]
    assert reading.data.sample_rate_hz == doc["sample_rate_hz"]


@pytest.mark.parametrize(
    ("doc", "reason", "field"),
    [
        (_packet(sample_rate_hz=0), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=-50), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=100.1), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=0.5), "out_of_range", "sample_rate_hz"),
        # The sample period sent as the rate: 20 samples would "end" 2000 s ahead.
        (_packet(sample_rate_hz=0.01), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=1e-6), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=1e-300), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz=49.999), "out_of_range", "sample_rate_hz"),
        (_packet(sample_rate_hz="50"), "schema", "sample_rate_hz"),
        (_packet(sample_rate_hz=True), "schema", "sample_rate_hz"),
        (_packet(sample_rate_hz=None), "schema", "sample_rate_hz"),  # required
        (_packet(501), "out_of_range", "10 s"),  # 10.02 s at 50 Hz
        (_packet(201, sample_rate_hz=20), "out_of_range", "10 s"),
        (_packet(x_gal=[4000.1, 0.0, 0.0]), "out_of_range", "x_gal.0"),
        (_packet(y_gal=[0.0, -4000.1, 0.0]), "out_of_range", "y_gal.1"),
        (_packet(z_gal=[0.0, 0.0, 1e9]), "out_of_range", "z_gal.2"),
        (_packet(z_gal=[0.1, 0.2]), "schema", "same number of samples"),
        (_packet(x_gal=[0.1] * 4), "schema", "same number of samples"),
        (_packet(1001), "schema", "x_gal"),
        (_packet(0), "schema", "x_gal"),
        (_packet(x_gal=None), "schema", "x_gal"),
        (_packet(x_gal=0.1), "schema", "x_gal"),
        (_packet(x_gal=[0.1, "a", 0.3]), "schema", "x_gal.1"),
        (_packet(x_gal=[0.1, "0.2", 0.3]), "schema", "x_gal.1"),
        (_packet(x_gal=[0.1, True, 0.3]), "schema", "x_gal.1"),
        (_packet(x_gal=[0.1, None, 0.3]), "schema", "x_gal.1"),
        (_packet(y_gal=[0.1, float("nan"), 0.3]), "schema", "y_gal.1"),
        (_packet(z_gal=[float("inf"), 0.2, 0.3]), "schema", "z_gal.0"),
        (_packet(x_gal=[0.1, 0.2, float("-inf")]), "schema", "x_gal.2"),
        (_packet(y_gal=[0.1, 1e308, 0.3]), "out_of_range", "y_gal.1"),
        (_packet(x_gal=[0.1, [0.2], 0.3]), "schema", "x_gal.1"),
        (_packet(pga_gal=-0.1), "out_of_range", "pga_gal"),
        (_packet(pga_gal=4000.1), "out_of_range", "pga_gal"),
        (_packet(pgv_cms=1000.1), "out_of_range", "pgv_cms"),
    ],
)
def test_seismic_packets_refused(doc: dict[str, Any], reason: str, field: str) -> None:
    err = refused("seismic", doc)
    assert err.reason == reason
    assert_names(err, "seismic", field)


def test_seismic_ts_is_the_first_sample() -> None:
    reading = judge("seismic", _packet())
    assert reading.event_time == datetime(2026, 11, 24, 23, 59, 58, 250_000, tzinfo=UTC)


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-25T07:30:00+08:00", datetime(2026, 11, 24, 23, 30, tzinfo=UTC)),
        ("2026-11-24T23:30:00Z", datetime(2026, 11, 24, 23, 30, tzinfo=UTC)),
        ("2026-11-24T23:30:00.123456Z", datetime(2026, 11, 24, 23, 30, 0, 123456, tzinfo=UTC)),
        ("2026-11-24T18:30:00-05:00", datetime(2026, 11, 24, 23, 30, tzinfo=UTC)),
        (1795563000000, datetime(2026, 11, 24, 23, 30, tzinfo=UTC)),
        (1795563000123, datetime(2026, 11, 24, 23, 30, 0, 123000, tzinfo=UTC)),
        (1795563000000.5, datetime(2026, 11, 24, 23, 30, 0, 500, tzinfo=UTC)),
    ],
)
def test_timestamps_rfc3339_with_offset_or_epoch_ms(ts: object, expected: datetime) -> None:
    reading = judge("air", {"v": 1, "ts": ts, "pm2_5_ugm3": 1})
    assert reading.event_time == expected
    assert not reading.late


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-24T23:30:00",  # naive: which clock?
        "2026-11-24",
        "yesterday",
        "",
        True,  # a bool is not epoch ms
        False,
        -1,  # before the epoch as a number
        10**14,  # beyond year 5138: a microsecond or nanosecond count, not milliseconds
        None,
        [1795563000000],
        "1795563000000",  # a numeric string: seconds or milliseconds?
        "1795563000",
        "1e12",
        "2026-11-24T23:30:00+0800",  # ISO 8601 basic offset, not RFC 3339
        "2026-11-24T25:30:00Z",
        "2026-11-24T23:30Z",
    ],
)
def test_timestamps_refused(ts: object) -> None:
    err = refused("air", {"v": 1, "ts": ts, "pm2_5_ugm3": 1})
    assert err.reason == "schema"
    assert_names(err, "air", "ts")


def test_timestamp_is_required() -> None:
    err = refused("air", {"v": 1, "pm2_5_ugm3": 1})
    assert err.reason == "schema"
    assert_names(err, "air", "ts")


# ---------------------------------------------------------------- version, unknown fields


def test_version_defaults_to_1() -> None:
    assert judge("air", {"ts": TS, "pm2_5_ugm3": 1}).data.v == 1


@pytest.mark.parametrize("version", [2, 0, "2", "1", True, 1.0])
def test_unknown_schema_version(version: object) -> None:
    err = refused("air", {"v": version, "ts": TS, "pm2_5_ugm3": 1})
    assert err.reason == "unsupported_version"
    assert_names(err, "air", "v")


@pytest.mark.parametrize(
    ("kind", "doc", "field"),
    [
        ("air", {"ts": TS, "pm2_5_ugm3": 1, "pm25": 1}, "pm25"),
        ("air", {"ts": TS, "pm2_5_ugm3": 1, "send_time": 1}, "send_time"),
        ("air", {"ts": TS, "pm2_5_ugm3": 1, "water_level_m": 1}, "water_level_m"),
        ("water", {"ts": TS, "rainfall_mm": 1, "battery_v": 3.7}, "battery_v"),
        ("seismic", {**_packet(), "t_gal": [0.0] * 3}, "t_gal"),
        ("air", {"ts": TS, "pm2_5_ugm3": 1, "device_id": "air-2"}, "device_id"),
    ],
)
def test_unknown_fields_are_refused(kind: str, doc: dict[str, Any], field: str) -> None:
    err = refused(kind, doc)
    assert err.reason == "schema"
    assert_names(err, kind, field)


# ---------------------------------------------------------------- topics and ids


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("devices/air-0001/air", ("air-0001", "air")),
        ("devices/w.1_a/water", ("w.1_a", "water")),
        ("devices/q/seismic", ("q", "seismic")),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str]) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "devices",
        "devices/air-1",
        "devices//air",
        "devices/air-1/air/extra",
        "devices/air-1/AIR",
        "devices/air-1/noise",
        "device/air-1/air",
        "/devices/air-1/air",
        "alerts/air-1/air",
    ],
)
def test_parse_topic_refuses(topic: str) -> None:
    with pytest.raises(ReadingRefusedError) as info:
        parse_topic(topic)
    assert info.value.reason == "bad_topic"
    assert repr(topic) in info.value.message


@pytest.mark.parametrize(
    ("dt", "ns"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(2026, 11, 25, tzinfo=UTC), 1_795_564_800_000_000_000),
        (datetime(2026, 11, 25, 0, 0, 0, 1, tzinfo=UTC), 1_795_564_800_000_001_000),
        (datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), -1000),
    ],
)
def test_to_ns_is_exact(dt: datetime, ns: int) -> None:
    assert to_ns(dt) == ns


def test_reading_round_trips_through_json() -> None:
    for kind, doc in [
        ("air", {"ts": TS, "pm2_5_ugm3": 41.5, "humidity_pct": 80}),
        ("water", {"ts": TS, "flood_depth_cm": 12.0}),
        ("seismic", _packet(pga_gal=1.5)),
    ]:
        reading = judge(kind, doc)
        record = reading.to_record()
        assert Reading.from_record(record) == reading
        assert json.loads(record)["data"]["kind"] == kind
        # The payload inside is the device contract again: no null for a missing field.
        assert None not in json.loads(record)["data"].values()


def test_limits_default() -> None:
    limits = Limits()
    assert limits.max_future_skew == timedelta(seconds=60)
    assert limits.lateness == timedelta(hours=1)
    assert limits.max_payload_bytes == 64 * 1024
