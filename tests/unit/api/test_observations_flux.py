"""Observation filters translated to Flux, and the queries built around them."""

from __future__ import annotations

import pytest

from api.sensorthings.filter import FilterError, conjuncts, parse_filter
from api.sensorthings.model import build_graph
from api.sensorthings.observations import ObsQuery, build, sort_spec, time_bounds, translate
from api.sensorthings.options import parse_options
from civic_iot.settings import InfluxSettings
from tests.unit.api.test_sensorthings_model import REGISTRY


def flux(text: str) -> tuple[str, str, set[str]]:
    imports: set[str] = set()
    t = translate(parse_filter(text), imports)
    return t.code, t.type, imports


@pytest.mark.parametrize(
    ("text", "code", "imports"),
    [
        ("result gt 5", "(r._value > 5.0)", set()),
        ("result le -0.25", "(r._value <= -0.25)", set()),
        ("5 lt result", "(5.0 < r._value)", set()),
        (
            "phenomenonTime ge 2026-01-01T00:00:00Z",
            '(r._time >= time(v: "2026-01-01T00:00:00Z"))',
            set(),
        ),
        ("resultTime lt now()", "(r._time < now())", set()),
        (
            "result gt 1 and not (result eq 3 or result ne 4)",
            "((r._value > 1.0) and not (((r._value == 3.0) or (r._value != 4.0))))",
            set(),
        ),
        ("result add 2 mul 3 gt 10", "((r._value + (2.0 * 3.0)) > 10.0)", set()),
        ("result div 2 gt 1", "((r._value / 2.0) > 1.0)", set()),
        ("result mod 2 eq 1", "(math.mod(x: r._value, y: 2.0) == 1.0)", {"math"}),
        ("year(phenomenonTime) eq 2026", "(date.year(t: r._time) == 2026)", {"date"}),
        ("day(phenomenonTime) ge 2.5", "(float(v: date.monthDay(t: r._time)) >= 2.5)", {"date"}),
        ("hour(resultTime) lt result", "(float(v: date.hour(t: r._time)) < r._value)", {"date"}),
        (
            "fractionalseconds(phenomenonTime) lt 0.5",
            "((float(v: date.nanosecond(t: r._time)) / 1000000000.0) < 0.5)",
            {"date"},
        ),
        ("round(result) eq 3", "(math.round(x: r._value) == 3.0)", {"math"}),
        ("ceiling(result) gt 2", "(math.ceil(x: r._value) > 2.0)", {"math"}),
        ("totaloffsetminutes(phenomenonTime) eq 0", "(0 == 0)", set()),
    ],
)
def test_translations(text: str, code: str, imports: set[str]) -> None:
    got_code, got_type, got_imports = flux(text)
    assert (got_code, got_type, got_imports) == (code, "bool", imports)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("result eq 'high'", "string values"),
        ("result eq null", "null values"),
        ("phenomenonTime gt 5", "cannot compare a time with a number"),
        ("@iot.id eq 'x'", "@iot.id"),
        ("parameters/x eq 1", "'parameters/x' cannot be filtered"),
        ("substringof('a', result)", "string values"),
        ("length(result) eq 1", "length() does not apply"),
        ("year(result) eq 1", "needs a time"),
        ("result add phenomenonTime gt 1", "needs numbers"),
        ("not result", "needs a condition"),
    ],
)
def test_refusals(text: str, says: str) -> None:
    with pytest.raises(FilterError) as exc:
        flux(text)
    assert says in str(exc.value)


def test_time_bounds_narrow_the_range() -> None:
    parts = conjuncts(
        parse_filter(
            "phenomenonTime ge 1970-01-01T00:00:01Z and 1970-01-01T00:00:09Z gt resultTime "
            "and phenomenonTime gt 1970-01-01T00:00:02Z and result gt 1"
        )
    )
    assert time_bounds(parts) == (2 * 10**9 + 1, 9 * 10**9)
    assert time_bounds(conjuncts(parse_filter("phenomenonTime eq 1970-01-01T00:00:03Z"))) == (
        3 * 10**9,
        3 * 10**9 + 1,
    )
    assert time_bounds(conjuncts(parse_filter("result gt 1"))) == (None, None)


def test_sort_spec() -> None:
    def keys(text: str) -> tuple[list[str], bool]:
        return sort_spec(parse_options([("$orderby", text)]).orderby)

    assert keys("phenomenonTime desc") == (["_time"], True)
    assert keys("result") == (["_value", "_time"], False)
    assert sort_spec(()) == (["_time"], False)
    with pytest.raises(FilterError, match="one direction"):
        keys("result desc, phenomenonTime asc")
    with pytest.raises(FilterError, match="sort by"):
        keys("Datastream/name")


def test_query_cuts_each_series_before_the_merge() -> None:
    graph = build_graph(REGISTRY, authority="x", geo_encoding="application/geo+json")
    ds = [graph.datastreams["air-1:pm2_5_ugm3"], graph.datastreams["rain-1:rainfall_mm"]]
    influx = InfluxSettings(bucket_readings="rb")
    newest_first = parse_options([("$orderby", "phenomenonTime desc")]).orderby
    q = ObsQuery(
        datastreams=ds,
        predicate="(r._value > 1.0)",
        imports=frozenset({"math"}),
        start_ns=None,
        stop_ns=None,
        orderby=newest_first,
        top=10,
        skip=5,
    )
    text = build(q, influx, 0, 10**9, count=False)
    assert text.startswith('import "math"\nunion(tables: [')
    assert (
        'r._measurement == "air" and ((r._field == "pm2_5_ugm3" and r.device == "air-1"))' in text
    )
    assert (
        'r._measurement == "water" and ((r._field == "rainfall_mm" and r.device == "rain-1"))'
        in text
    )
    assert text.count("|> tail(n: 16)") == 2  # skip + top + 1, in each stream
    assert text.endswith("|> limit(n: 11, offset: 5)")
    counted = build(q, influx, None, None, count=True)
    assert counted.count("|> count()") == 2
    assert "sort(" not in counted
