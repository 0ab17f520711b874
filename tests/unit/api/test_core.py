"""Pure pieces of the API: rate limiter, Flux literals and CSV, catalogue, queries, views."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.cache import Recent
from api.catalogue import QUANTITIES, level_of, presence_field, quantities_of, raw_measurement
from api.influx import QueryFailed, flux_string, format_ns, parse_csv, parse_time_ns
from api.queries import Window, in_pred, latest, series
from api.ratelimit import RateLimiter, retry_after
from api.views import newest_points, open_alerts
from civic_iot.registry import Device
from civic_iot.settings import InfluxSettings
from civic_iot.storage import schema
from tests.unit.api.test_sensorthings_model import REGISTRY

# --------------------------------------------------------------------------- rate limit


def test_bucket_allows_a_burst_then_the_rate() -> None:
    rl = RateLimiter(rate_per_s=2.0, burst=3, max_clients=10)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", 0.0) == pytest.approx(0.5)
    assert rl.take("b", 0.0) == 0.0  # another client has its own bucket
    assert rl.take("a", 0.5) == 0.0  # one refilled after 1 / rate
    assert rl.take("a", 0.5) > 0
    assert rl.take("a", 100.0) == 0.0  # refills up to the burst, not beyond
    assert [rl.take("a", 100.0) for _ in range(3)][-1] > 0


def test_refused_requests_do_not_extend_the_wait() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_clients=10)
    rl.take("a", 0.0)
    waits = [rl.take("a", 0.1) for _ in range(5)]
    assert all(w == pytest.approx(0.9) for w in waits)


def test_clients_tracked_are_bounded() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_clients=3)
    for i in range(10):
        rl.take(f"c{i}", 0.0)
    assert len(rl) == 3


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.2) == "2"
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(0, 1, 1)


# --------------------------------------------------------------------------- Flux values


@given(st.text(max_size=50))
def test_flux_strings_escape_everything_that_ends_or_interpolates(value: str) -> None:
    lit = flux_string(value)
    body = lit[1:-1]
    i = 0
    while i < len(body):  # every quote and "${" is escaped
        if body[i] == "\\":
            i += 2
            continue
        assert body[i] != '"'
        assert not body.startswith("${", i)
        i += 1


@given(st.integers(min_value=0, max_value=7_000_000_000 * 10**9))
def test_times_round_trip_to_the_nanosecond(ns: int) -> None:
    assert parse_time_ns(format_ns(ns)) == ns


def test_time_offsets() -> None:
    assert parse_time_ns("1970-01-01T08:00:00+08:00") == 0
    assert parse_time_ns("1970-01-01T00:00:00.5-01:00") == 3600 * 10**9 + 5 * 10**8
    assert format_ns(1_500_000_000) == "1970-01-01T00:00:01.5Z"
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time_ns("1970-01-01 00:00:00")


def test_annotated_csv_tables() -> None:
    text = (
        "#datatype,string,long,dateTime:RFC3339,double,string,boolean,long\r\n"
        ",result,table,_time,_value,device,ok,n\r\n"
        ",_result,0,1970-01-01T00:00:01Z,1.5,a,true,3\r\n"
        "\r\n"
        "#datatype,string,long,dateTime:RFC3339Nano,string\r\n"
        ",result,table,_time,note\r\n"
        ',_result,1,1970-01-01T00:00:00.000000002Z,"x, ""y"""\r\n'
        ",_result,1,1970-01-01T00:00:00.000000003Z,\r\n"
    )
    assert list(parse_csv(text)) == [
        {"_time": 10**9, "_value": 1.5, "device": "a", "ok": True, "n": 3},
        {"_time": 2, "note": 'x, "y"'},
        {"_time": 3, "note": None},
    ]
    named = list(parse_csv(text, keep_result=True))
    assert [r["result"] for r in named] == ["_result"] * 3
    error = "#datatype,string,string\r\n,error,reference\r\n,division by zero,\r\n"
    with pytest.raises(QueryFailed, match="division by zero"):
        list(parse_csv(error))


# --------------------------------------------------------------------------- catalogue


def test_quantities_come_from_the_contract_and_schema() -> None:
    for q in QUANTITIES.values():
        assert q.measurement.field(q.field).unit == q.unit
    air, rain, seis = (REGISTRY.get(i) for i in ("air-1", "rain-1", "seis-1"))
    assert air is not None
    assert rain is not None
    assert seis is not None
    assert "pm2_5_ugm3" in [q.field for q in quantities_of(air)]
    assert [q.field for q in quantities_of(rain)] == ["rainfall_mm"]
    assert [q.field for q in quantities_of(seis)] == ["pga_gal", "pgv_cms"]
    assert raw_measurement("seismic") is schema.SEISMIC_STATION
    assert level_of(rain) == (schema.RAIN, "rain_class")
    assert level_of(air) == (schema.AIR_QUALITY, "level")
    assert presence_field(schema.AIR) in schema.AIR.field_names
    gauge = Device(id="g", kind="water", lat=0, lon=0, township="T1", sensor="")
    assert {q.field for q in quantities_of(gauge)} == {
        "water_level_m",
        "flood_depth_cm",
        "rainfall_mm",
    }


# --------------------------------------------------------------------------- queries


def test_queries_name_only_schema_things() -> None:
    influx = InfluxSettings(bucket_derived="d", bucket_readings="r")
    q = latest(schema.AIR_QUALITY, influx, {"device": ["a-1", "b.2"]}, fields=["level"])
    assert q == (
        'from(bucket: "d")\n  |> range(start: 0, stop: time(v: "2200-01-01T00:00:00Z"))\n'
        '  |> filter(fn: (r) => r._measurement == "air_quality" and '
        'r.device =~ /^(?:a\\-1|b\\.2)$/ and r._field == "level")\n  |> last()'
    )
    with pytest.raises(KeyError, match="no tag 'kind'"):
        latest(schema.AIR_QUALITY, influx, {"kind": "air"})
    with pytest.raises(KeyError, match="no field"):
        latest(schema.AIR_QUALITY, influx, {}, fields=["colour"])
    s = series(schema.AIR, influx, {"device": "a"}, "pm2_5_ugm3", start_ns=0, stop_ns=60 * 10**9,
               window=Window(60, "max"), limit=11, offset=0)  # fmt: skip
    assert "aggregateWindow(every: 60s, fn: max, createEmpty: false" in s
    assert in_pred("device", ['a"b', "c"]) == '(r.device == "a\\"b" or r.device == "c")'
    assert in_pred("device", []) == "false"


# --------------------------------------------------------------------------- views


def _alert(t: int, hazard: str, area: str, mt: str, aid: str, seq: int) -> list[dict[str, object]]:
    tags = {"hazard": hazard, "area": area, "msg_type": mt, "severity": "Minor", "status": "Test"}
    return [
        {**tags, "_time": t, "_field": "alert_id", "_value": aid},
        {**tags, "_time": t, "_field": "sequence", "_value": seq},
        {**tags, "_time": t, "_field": "level", "_value": 1},
    ]


def test_open_alerts_from_the_newest_message_per_key() -> None:
    rows = [
        *_alert(1, "flood", "T1", "Alert", "A", 1),
        *_alert(2, "flood", "T1", "Update", "A", 2),  # open, opened at 1
        *_alert(3, "rain", "T2", "Alert", "B", 1),
        *_alert(4, "rain", "T2", "Cancel", "B", 2),  # closed
        *_alert(5, "rain", "T2", "Alert", "C", 1),  # ...and a new one on the same key: open
    ]
    # A later Alert on the key whose Cancel is newer: closed.
    rows += [
        *_alert(6, "air_quality", "T1", "Alert", "D", 1),
        *_alert(7, "air_quality", "T1", "Cancel", "D", 2),
    ]
    points = newest_points(rows, schema.ALERT)
    got = open_alerts(points, REGISTRY)
    assert [(a.alert_id, a.last.sequence, a.opened, a.area_name) for a in got] == [
        ("C", 1, format_ns(5), "Beta"),
        ("A", 2, format_ns(1), "Alpha"),
    ]


def test_newest_point_does_not_mix_fields_of_older_points() -> None:
    tags = {"device": "a", "township": "T1", "issue": "stuck"}
    rows = [
        {**tags, "_time": 5, "_field": "active", "_value": False},
        {**tags, "_time": 3, "_field": "detail", "_value": "old detail"},
    ]
    (p,) = newest_points(rows, schema.SENSOR_HEALTH)
    assert p["active"] is False
    assert "detail" not in p


# --------------------------------------------------------------------------- cache


def test_recent_answers_are_shared_and_expire() -> None:
    now = [0.0]
    calls: list[str] = []
    recent: Recent[str] = Recent(1.0, lambda: now[0])

    async def make(tag: str) -> str:
        calls.append(tag)
        await asyncio.sleep(0)
        return tag

    async def scenario() -> list[str]:
        together = await asyncio.gather(*(recent.get("k", lambda: make("a")) for _ in range(5)))
        now[0] = 0.5
        kept = await recent.get("k", lambda: make("b"))
        now[0] = 1.5
        fresh = await recent.get("k", lambda: make("c"))
        return [*together, kept, fresh]

    assert asyncio.run(scenario()) == ["a"] * 6 + ["c"]
    assert calls == ["a", "c"]  # five concurrent callers, one computation


def test_recent_keeps_no_failure() -> None:
    recent: Recent[int] = Recent(10.0, lambda: 0.0)
    attempts = [0]

    async def flaky() -> int:
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("down")
        return 7

    async def scenario() -> int:
        with pytest.raises(RuntimeError):
            await recent.get("k", flaky)
        return await recent.get("k", flaky)

    assert asyncio.run(scenario()) == 7
    assert Recent(0.0, lambda: 0.0).ttl_s == 0
