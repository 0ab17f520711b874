"""The validator as a whole: topic, size, registry, JSON, time, ids; and that nothing a
device sends can make it raise anything but a refusal (hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from civic_iot.contracts.deadletter import ReasonCode
from civic_iot.contracts.readings import (
    MAX_PACKET_S,
    SEISMIC_RATES_HZ,
    AirPayload,
    Location,
    Payload,
    Reading,
    SeismicPayload,
)
from civic_iot.registry import Device, Registry, Township
from civic_iot.times import to_ns
from ingest.refusals import Limits, ReadingRefusedError
from ingest.validate import validate

NOW = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
NOW_MS = 1_795_564_800_000
LIMITS = Limits()

REGISTRY = Registry(
    townships=(
        Township(code="63000030", name="Da'an", lat=25.026, lon=121.543),
        Township(code="65000010", name="Banqiao", lat=25.011, lon=121.462),
    ),
    devices=(
        Device(id="air-1", kind="air", lat=25.02, lon=121.54, township="63000030"),
        Device(id="air-2", kind="air", lat=25.01, lon=121.46, township="65000010"),
        Device(id="water-1", kind="water", lat=25.03, lon=121.55, township="63000030"),
        Device(id="quake-1", kind="seismic", lat=25.04, lon=121.56, township="65000010"),
    ),
)


def check(topic: str, raw: bytes, limits: Limits = LIMITS, now: datetime = NOW) -> Reading:
    return validate(topic, raw, registry=REGISTRY, limits=limits, now=now)


def refusal(topic: str, raw: bytes, limits: Limits = LIMITS, now: datetime = NOW) -> Any:
    with pytest.raises(ReadingRefusedError) as info:
        check(topic, raw, limits, now)
    return info.value


def air(**doc: Any) -> bytes:
    return json.dumps({"v": 1, "ts": NOW_MS - 1000, "pm2_5_ugm3": 12.0, **doc}).encode()


def seismic(ts: object, n: int = 50, rate: float = 50) -> bytes:
    axis = [0.1] * n
    doc = {"ts": ts, "sample_rate_hz": rate, "x_gal": axis, "y_gal": axis, "z_gal": axis}
    return json.dumps(doc).encode()


# ---------------------------------------------------------------- refusals in order


@pytest.mark.parametrize(
    "topic",
    ["devices/air-1", "devices/air-1/air/x", "devices//air", "devices/air-1/noise", "x/air-1/air"],
)
def test_bad_topic(topic: str) -> None:
    err = refusal(topic, air())
    assert err.reason == "bad_topic"
    assert repr(topic) in err.message


def test_oversize_is_checked_before_anything_is_parsed() -> None:
    limits = Limits(max_payload_bytes=100)
    ok = air(pm10_ugm3=1.25).ljust(100)  # JSON tolerates trailing whitespace
    assert len(ok) == 100
    assert check("devices/air-1/air", ok, limits).data.pm10_ugm3 == 1.25
    err = refusal("devices/air-1/air", ok + b" ", limits)
    assert err.reason == "oversize"
    assert "'air-1'" in err.message
    assert "101 bytes" in err.message
    assert "limit 100" in err.message


def test_default_size_limit_is_64_kib() -> None:
    assert refusal("devices/air-1/air", b" " * (64 * 1024 + 1)).reason == "oversize"
    assert refusal("devices/air-1/air", b" " * (64 * 1024)).reason == "not_json"


def test_unknown_device() -> None:
    err = refusal("devices/air-9/air", air())
    assert err.reason == "unknown_device"
    assert "'air-9'" in err.message
    assert "'devices/air-9/air'" in err.message
    assert "registry" in err.message


def test_unknown_device_is_refused_even_with_garbage() -> None:
    assert refusal("devices/air-9/air", b"\xff").reason == "unknown_device"


@pytest.mark.parametrize(
    ("topic", "raw", "words"),
    [
        # the topic's kind is not the one the device is registered for
        ("devices/air-1/water", b'{"ts":1795564799000,"rainfall_mm":1}', ["'air'", "'water'"]),
        ("devices/water-1/seismic", b"{}", ["'water'", "'seismic'"]),
        # the payload says another kind than its topic
        ("devices/air-1/air", air(kind="water"), ["'water'", "air topic"]),
        ("devices/air-1/air", air(kind=["air"]), ["['air']"]),
    ],
)
def test_wrong_kind(topic: str, raw: bytes, words: list[str]) -> None:
    err = refusal(topic, raw)
    assert err.reason == "wrong_kind"
    device = topic.split("/")[1]
    assert repr(device) in err.message
    assert repr(topic) in err.message
    for word in words:
        assert word in err.message


def test_payload_may_repeat_its_kind() -> None:
    assert check("devices/air-1/air", air(kind="air")).kind == "air"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfenot json",
        b"pm2_5=12",
        b'{"ts": 1795564799000, "pm2_5_ugm3": 12',
        b"{'ts': 1}",
        b"[" * 50_000,  # deeper than the parser's recursion limit
        b'{"ts":1795564799000,"pm2_5_ugm3":' + b"1" * 4301 + b"}",  # int-digit limit
        '{"ts":1,"pm2_5_ugm3":1,"n":"caf\xe9"}'.encode("latin-1"),
    ],
)
def test_not_json(raw: bytes) -> None:
    err = refusal("devices/air-1/air", raw)
    assert err.reason == "not_json"
    assert "'air-1'" in err.message
    assert "'devices/air-1/air'" in err.message


@pytest.mark.parametrize("raw", [b"[]", b"[1,2]", b"12", b'"air"', b"null", b"true"])
def test_json_that_is_not_an_object(raw: bytes) -> None:
    err = refusal("devices/air-1/air", raw)
    assert err.reason == "schema"
    assert "JSON object" in err.message
    assert "'devices/air-1/air'" in err.message


def test_several_problems_are_all_named() -> None:
    err = refusal("devices/air-1/air", air(pm2_5_ugm3=-1, humidity_pct=101, colour="red"))
    assert err.reason == "out_of_range"
    for field in ("pm2_5_ugm3", "humidity_pct", "colour"):
        assert field in err.message


# ---------------------------------------------------------------- time


def test_future_within_the_skew_is_accepted() -> None:
    raw = air(ts=NOW_MS + 60_000)
    assert check("devices/air-1/air", raw).event_time == NOW + timedelta(seconds=60)


def test_future_beyond_the_skew_is_refused() -> None:
    err = refusal("devices/air-1/air", air(ts=NOW_MS + 60_001))
    assert err.reason == "future_timestamp"
    assert "'air-1'" in err.message
    assert "'devices/air-1/air'" in err.message
    assert "ts 2026-11-25T00:01:00.001000+00:00" in err.message


def test_future_skew_is_configurable() -> None:
    limits = Limits(max_future_skew=timedelta(seconds=5))
    assert refusal("devices/air-1/air", air(ts=NOW_MS + 5_001), limits).reason == (
        "future_timestamp"
    )
    assert check("devices/air-1/air", air(ts=NOW_MS + 5_000), limits)


@pytest.mark.parametrize(
    ("ts", "late"),
    [
        (NOW_MS, False),
        (NOW_MS - 3_600_000, False),  # exactly the lateness: still on time
        (NOW_MS - 3_600_001, True),
        ("2026-11-24T08:00:00+08:00", True),  # a day old
        (NOW_MS - 6 * 86_400_000, True),  # exactly the default max age: still taken
    ],
)
def test_late_readings_are_accepted_and_flagged(ts: object, *, late: bool) -> None:
    reading = check("devices/air-1/air", air(ts=ts))
    assert reading.late is late
    assert reading.received_at == NOW


@pytest.mark.parametrize(
    "ts",
    [
        NOW_MS - 6 * 86_400_000 - 1,
        0,  # the epoch
        "0001-01-01T00:00:00Z",  # year 1: InfluxDB would refuse it
        "1970-01-01T00:00:00+08:00",
    ],
)
def test_older_than_the_max_age_is_too_old(ts: object) -> None:
    with pytest.raises(ReadingRefusedError) as info:
        check("devices/air-1/air", air(ts=ts))
    assert info.value.reason == "too_old"
    assert "'air-1'" in info.value.message
    assert "backfill" in info.value.message


def test_max_age_is_per_kind() -> None:
    """Backfill mode widens the bound (up to what the kind's bucket keeps)."""
    limits = Limits(
        max_age={
            "air": timedelta(days=29),
            "water": timedelta(days=29),
            "seismic": timedelta(days=6),
        }
    )
    ten_days = NOW_MS - 10 * 86_400_000
    assert check("devices/air-1/air", air(ts=ten_days), limits).late
    with pytest.raises(ReadingRefusedError) as info:
        check("devices/quake-1/seismic", seismic(ts=ten_days), limits)
    assert info.value.reason == "too_old"


def test_every_sample_of_a_packet_is_judged() -> None:
    """A packet starting inside the skew whose last sample lies beyond it is refused."""
    skew_ms = 60_000
    ok = seismic(ts=NOW_MS + skew_ms - 990, n=100, rate=100)  # last sample at +59.999 s
    assert check("devices/quake-1/seismic", ok).data.kind == "seismic"
    late_end = seismic(ts=NOW_MS + skew_ms - 980, n=100, rate=100)  # last at +60.01 s
    with pytest.raises(ReadingRefusedError) as info:
        check("devices/quake-1/seismic", late_end)
    assert info.value.reason == "future_timestamp"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"pm2_5_ugm3":2}',
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"kind":"air","kind":"air"}',
        b'{"ts":1795564799000,"ts":1795564799001,"pm2_5_ugm3":1}',
        b'{"ts":1795564799000, "pm2_5_ugm3" :1,"pm2_5_ugm3"  :  2}',
        # The same key spelled with an escape: json decodes it, so it is caught too.
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"pm2_5_\\u0075gm3":2}',
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"\\u0074s":1795564799001}',
    ],
)
def test_duplicate_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(ReadingRefusedError) as info:
        check("devices/air-1/air", raw)
    assert info.value.reason == "schema"
    assert "duplicate key" in info.value.message


# ---------------------------------------------------------------- the reading


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (1_795_564_799_000, 1_795_564_799_000_000_000),
        (1_795_564_799_999, 1_795_564_799_999_000_000),
        ("2026-11-25T07:59:59.123456+08:00", 1_795_564_799_123_456_000),
        ("2026-11-24T23:59:59Z", 1_795_564_799_000_000_000),
    ],
)
def test_reading_id_is_device_and_event_time_ns(ts: object, ns: int) -> None:
    reading = check("devices/air-2/air", air(ts=ts))
    assert reading.reading_id == f"air-2:{ns}"
    assert reading.event_time_ns == ns


def test_same_time_in_two_notations_gives_one_reading_id() -> None:
    a = check("devices/air-1/air", air(ts="2026-11-25T07:59:59+08:00"))
    b = check("devices/air-1/air", air(ts=1_795_564_799_000))
    assert a.reading_id == b.reading_id


def test_reading_carries_device_location_and_data() -> None:
    reading = check("devices/air-2/air", air(ts="2026-11-25T07:59:59+08:00", humidity_pct=80))
    assert reading.device_id == "air-2"
    assert reading.kind == "air"
    assert reading.location.model_dump() == {"lat": 25.01, "lon": 121.46, "township": "65000010"}
    assert isinstance(reading.data, AirPayload)
    assert reading.data.humidity_pct == 80
    assert reading.event_time == datetime(2026, 11, 24, 23, 59, 59, tzinfo=UTC)


# ---------------------------------------------------------------- never raises

KINDS = ("air", "water", "seismic")
DEVICE_FOR = {"air": "air-1", "water": "water-1", "seismic": "quake-1"}
CONTRACT_KEYS = (
    "v",
    "ts",
    "kind",
    "pm2_5_ugm3",
    "pm10_ugm3",
    "humidity_pct",
    "water_level_m",
    "rainfall_mm",
    "sample_rate_hz",
    "x_gal",
    "y_gal",
    "z_gal",
    "pga_gal",
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()  # NaN and infinities included: json.dumps writes them, json.loads reads them
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
#: Objects using the contract's own keys reach deeper into the models than random keys.
contract_like = st.dictionaries(st.sampled_from(CONTRACT_KEYS), json_values, max_size=8)
plausible_ts = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
topics = st.one_of(
    st.sampled_from(KINDS).map(lambda k: f"devices/{DEVICE_FOR[k]}/{k}"),
    st.sampled_from(["devices/air-1/water", "devices/nobody/air", "devices/air-1"]),
    st.text(max_size=40),
)


def never_raises_but_refusal(topic: str, raw: bytes) -> None:
    outcome: Reading | ReadingRefusedError
    try:
        outcome = check(topic, raw)
    except ReadingRefusedError as exc:
        outcome = exc
    if isinstance(outcome, ReadingRefusedError):
        assert outcome.reason in get_args(ReasonCode)
        assert outcome.message
    else:
        assert isinstance(outcome, Reading)


@given(topic=topics, raw=st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_a_refusal(topic: str, raw: bytes) -> None:
    never_raises_but_refusal(topic, raw)


@given(topic=topics, doc=json_values)
def test_random_json_never_raises_anything_but_a_refusal(topic: str, doc: object) -> None:
    never_raises_but_refusal(topic, json.dumps(doc).encode())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), doc=contract_like, ts=plausible_ts)
def test_random_contract_like_objects_never_raise(kind: str, doc: dict[str, Any], ts: Any) -> None:
    topic = f"devices/{DEVICE_FOR[kind]}/{kind}"
    never_raises_but_refusal(topic, json.dumps(doc).encode())
    never_raises_but_refusal(topic, json.dumps({**doc, "ts": ts}).encode())


# ---------------------------------------------------------------- valid always pass


def num(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False) | st.integers(lo, hi)


valid_ts = st.one_of(
    # epoch ms, from the max age ago up to the allowed skew ahead (less a 10 s packet)
    st.integers(NOW_MS - 6 * 86_400_000, NOW_MS + 50_000),
    st.datetimes(
        min_value=datetime(2026, 11, 19, 0, 0, 1),  # hypothesis wants naive bounds
        max_value=datetime(2026, 11, 25),
        timezones=st.just(UTC),
    ).map(lambda d: d.isoformat()),
)
valid_air = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "ts": valid_ts,
        "pm2_5_ugm3": num(0, 1000),  # the one pollutant every generated reading has
    },
    optional={
        "kind": st.just("air"),
        "pm10_ugm3": (num(0, 2000)),
        "o3_ppb": (num(0, 1000)),
        "co_ppm": (num(0, 100)),
        "no2_ppb": (num(0, 5000)),
        "so2_ppb": (num(0, 5000)),
        "temperature_c": (num(-50, 70)),
        "humidity_pct": (num(0, 100)),
    },
)
valid_water = st.fixed_dictionaries(
    {"ts": valid_ts, "rainfall_mm": num(0, 500)},
    optional={
        "v": st.just(1),
        "water_level_m": (num(-100, 5000)),
        "flood_depth_cm": (num(0, 1000)),
    },
)


@st.composite
def valid_seismic(draw: st.DrawFn) -> dict[str, Any]:
    rate = draw(st.sampled_from(SEISMIC_RATES_HZ))
    n = draw(st.integers(1, round(rate * MAX_PACKET_S)))
    sample = st.floats(-4000, 4000, allow_nan=False)
    component = st.lists(sample, min_size=n, max_size=n)
    doc = {
        "v": 1,
        "ts": draw(valid_ts),
        "sample_rate_hz": int(rate) if rate.is_integer() and draw(st.booleans()) else rate,
        "x_gal": draw(component),
        "y_gal": draw(component),
        "z_gal": draw(component),
    }
    if draw(st.booleans()):
        doc["pga_gal"] = draw(num(0, 4000))
    if draw(st.booleans()):
        doc["pgv_cms"] = draw(num(0, 1000))
    return doc


valid_docs = st.one_of(
    st.tuples(st.just("air"), valid_air),
    st.tuples(st.just("water"), valid_water),
    st.tuples(st.just("seismic"), valid_seismic()),
)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=valid_docs)
def test_valid_readings_always_pass_and_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    kind, doc = case
    device = DEVICE_FOR[kind]
    reading = check(f"devices/{device}/{kind}", json.dumps(doc).encode())
    assert reading.kind == reading.data.kind == kind
    assert reading.reading_id == f"{device}:{to_ns(reading.event_time)}"
    if isinstance(doc["ts"], int):
        assert reading.reading_id == f"{device}:{doc['ts'] * 1_000_000}"
    again = Reading.from_record(reading.to_record())
    assert again == reading
    assert again.reading_id == reading.reading_id
    assert again.event_time_ns == reading.event_time_ns


# ---------------------------------------------------------------- the JSON fast path


def slow_reading(topic: str, raw: bytes, now: datetime = NOW) -> Reading | None:
    """The validator as it was before the JSON fast path: json.loads, then the union,
    then a fully validated Reading. None where it refuses."""
    device_id, kind = topic.split("/")[1:]
    device = REGISTRY.get(device_id)
    assert device is not None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        doc = json.loads(raw, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.setdefault("kind", kind) != kind:
        return None
    try:
        data = TypeAdapter[Payload](Payload).validate_python(doc)
    except ValidationError:
        return None
    last = data.ts
    if isinstance(data, SeismicPayload):
        last += timedelta(seconds=(len(data.x_gal) - 1) / data.sample_rate_hz)
    if last > now + LIMITS.max_future_skew or data.ts < now - LIMITS.max_age[kind]:
        return None
    return Reading(
        reading_id=f"{device_id}:{to_ns(data.ts)}",
        device_id=device_id,
        kind=data.kind,
        event_time=data.ts,
        received_at=now,
        late=data.ts < now - LIMITS.lateness,
        location=Location(lat=device.lat, lon=device.lon, township=device.township),
        data=data,
    )


def same_outcome_as_before(topic: str, raw: bytes) -> None:
    expected = slow_reading(topic, raw)
    try:
        got = check(topic, raw)
    except ReadingRefusedError:
        assert expected is None
        return
    assert expected is not None
    assert got == expected
    # byte for byte what Kafka gets, although the fast path skips revalidation
    assert got.model_dump_json() == expected.model_dump_json()
    # and the record, although it is made in two pieces (Reading.to_record)
    assert got.to_record() == expected.model_dump_json(exclude_none=True).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":1.0,"ts":1795564799000,"pm2_5_ugm3":1}',
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"pm2_5_ugm3":2}',  # a duplicate key
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"kind":"water","kind":"air"}',
        b'{"ts":1795564799000,"pm2_5_ugm3":1,"kind":"air","kind":"water"}',
        b'{"ts":1795564799000,"pm2_5_ugm3":0.1000000000000000055511151231257827}',
        b'{"ts":1795564799000,"pm2_5_ugm3":1e-400}',
        b'{"ts":1795564799000.5,"pm2_5_ugm3":-0.0}',
        b'{"ts":"2026-11-25 07:59:59+08:00","pm2_5_ugm3":1}',
        b'{"ts":1795564799000,"pm2_5_ugm3":NaN}',
        b'\xef\xbb\xbf{"ts":1795564799000,"pm2_5_ugm3":1}',  # a byte-order mark
        '{"ts":1795564799000,"pm2_5_ugm3":1}'.encode("utf-16"),  # only json.loads reads it
        '{"ts":1795564799000,"pm2_5_ugm3":1}'.encode("utf-32-le"),
    ],
)
def test_fast_path_decides_as_before(raw: bytes) -> None:
    same_outcome_as_before("devices/air-1/air", raw)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=valid_docs)
def test_fast_path_builds_the_same_reading_as_before(case: tuple[str, dict[str, Any]]) -> None:
    kind, doc = case
    same_outcome_as_before(f"devices/{DEVICE_FOR[kind]}/{kind}", json.dumps(doc).encode())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), doc=contract_like, ts=plausible_ts)
def test_fast_path_accepts_and_refuses_as_before(kind: str, doc: dict[str, Any], ts: Any) -> None:
    topic = f"devices/{DEVICE_FOR[kind]}/{kind}"
    same_outcome_as_before(topic, json.dumps(doc).encode())
    same_outcome_as_before(topic, json.dumps({**doc, "ts": ts}).encode())
