"""The SensorThings graph built from a registry, and $filter/$orderby over it in Python."""

from __future__ import annotations

import pytest

from api.sensorthings.evaluate import Evaluator, compare
from api.sensorthings.filter import FilterError, Instant, parse_filter
from api.sensorthings.model import (
    SETS,
    build_graph,
    observation_id,
    split_observation_id,
)
from civic_iot.registry import Registry

REGISTRY = Registry.model_validate(
    {
        "townships": [
            {"code": "T1", "name": "Alpha", "county": "North City", "lat": 25.0, "lon": 121.5},
            {"code": "T2", "name": "Beta", "county": "South City", "lat": 24.0, "lon": 121.0},
        ],
        "devices": [
            {"id": "air-1", "kind": "air", "lat": 25.0, "lon": 121.5, "township": "T1",
             "sensor": "air"},
            {"id": "rain-1", "kind": "water", "lat": 24.0, "lon": 121.0, "township": "T2",
             "sensor": "rain"},
            {"id": "seis-1", "kind": "seismic", "lat": 25.01, "lon": 121.51, "township": "T1",
             "sensor": "accelerometer"},
        ],
    }
)  # fmt: skip
GRAPH = build_graph(REGISTRY, authority="Test Agency", geo_encoding="application/geo+json")


def test_one_thing_location_and_feature_per_device() -> None:
    for set_name in ("Things", "Locations", "FeaturesOfInterest"):
        assert [e.id for e in GRAPH.all(set_name)] == ["air-1", "rain-1", "seis-1"]
    thing = GRAPH.get("Things", "rain-1")
    assert thing is not None
    assert thing.props["properties"] == {
        "stationID": "rain-1",
        "city": "South City",
        "township": "Beta",
        "townCode": "T2",
        "authority": "Test Agency",
        "kind": "water",
        "sensor": "rain",
    }
    loc = GRAPH.get("Locations", "seis-1")
    assert loc is not None
    assert loc.props["location"] == {"type": "Point", "coordinates": [121.51, 25.01]}


def test_datastreams_follow_what_each_device_measures() -> None:
    ids = sorted(GRAPH.datastreams)
    assert "rain-1:rainfall_mm" in ids
    assert not [i for i in ids if i.startswith("rain-1:") and i != "rain-1:rainfall_mm"]
    assert {i for i in ids if i.startswith("seis-1:")} == {"seis-1:pga_gal", "seis-1:pgv_cms"}
    assert "air-1:pm2_5_ugm3" in ids
    pm = GRAPH.get("Datastreams", "air-1:pm2_5_ugm3")
    assert pm is not None
    assert pm.props["unitOfMeasurement"]["symbol"] == "ug/m3"
    thing = GRAPH.get("Things", "air-1")
    assert thing is not None
    linked = [e.id for e in GRAPH.linked(thing, "Datastreams")]
    assert linked == sorted(linked) or len(linked) == len(set(linked))
    assert GRAPH.linked(pm, "Thing")[0].id == "air-1"
    assert GRAPH.linked(pm, "ObservedProperty")[0].props["name"] == "PM2.5"
    sensor = GRAPH.linked(pm, "Sensor")[0]
    assert sensor.id == "air.air"
    assert {e.id for e in GRAPH.linked(sensor, "Datastreams")} == {
        i for i in ids if i.startswith("air-1:")
    }


def test_every_entity_has_its_set_properties() -> None:
    for set_name, spec in SETS.items():
        if set_name == "Observations":
            continue
        for e in GRAPH.all(set_name):
            assert set(e.props) <= set(spec.properties), (set_name, e.id)
            assert "name" in e.props


def test_observation_ids_split_back() -> None:
    oid = observation_id("air-1", "pm2_5_ugm3", 1_700_000_000_123_456_789)
    assert split_observation_id(oid) == ("air-1", "pm2_5_ugm3", 1_700_000_000_123_456_789)
    assert split_observation_id("air-1:pm2_5_ugm3") is None
    assert split_observation_id("a:b:c") is None


def _ids(set_name: str, text: str) -> list[str]:
    ev = Evaluator(GRAPH, now_ns=0)
    tree = parse_filter(text)
    return [e.id for e in GRAPH.all(set_name) if ev.truth(tree, e)]


@pytest.mark.parametrize(
    ("set_name", "text", "ids"),
    [
        ("Things", "properties/city eq 'North City'", ["air-1", "seis-1"]),
        ("Things", "properties/city ne 'North City'", ["rain-1"]),
        ("Things", "properties/missing eq null", ["air-1", "rain-1", "seis-1"]),
        ("Things", "properties/missing gt 1", []),
        ("Things", "Datastreams/ObservedProperty/@iot.id eq 'rainfall_mm'", ["rain-1"]),
        ("Things", "substringof('PM2', Datastreams/name)", ["air-1"]),
        ("Things", "not substringof('PM2', Datastreams/name)", ["rain-1", "seis-1"]),
        ("Things", "startswith(@iot.id, 'seis') or endswith(name, 'n-1')", ["rain-1", "seis-1"]),
        ("Things", "length(name) add 1 eq 6", ["air-1"]),
        ("Things", "toupper(substring(name, 0, 3)) eq 'AIR'", ["air-1"]),
        ("Things", "indexof(name, '-') eq 4", ["rain-1", "seis-1"]),
        ("Things", "concat(properties/kind, '!') eq 'air!'", ["air-1"]),
        (
            "Locations",
            "geo.distance(location, geography'POINT(121.5 25.0)') lt 0.02",
            ["air-1", "seis-1"],
        ),
        (
            "Things",
            "geo.distance(Locations/location, geography'POINT(121 24)') lt 0.001",
            ["rain-1"],
        ),
        ("Datastreams", "Thing/properties/townCode eq 'T2'", ["rain-1:rainfall_mm"]),
        ("Datastreams", "round(1.6) eq 2 and Thing/@iot.id eq 'rain-1'", ["rain-1:rainfall_mm"]),
        ("Datastreams", "floor(1.6) eq 2 and Thing/@iot.id eq 'rain-1'", []),
        ("Things", "name eq 5", []),  # different kinds never match
        ("Things", "now() gt 1970-01-01T00:00:00Z", []),  # now is the epoch here
        ("Things", "year(2026-03-04T05:06:07Z) eq 2026 and @iot.id eq 'air-1'", ["air-1"]),
    ],
)
def test_filters(set_name: str, text: str, ids: list[str]) -> None:
    assert _ids(set_name, text) == ids


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("color eq 'red'", "Things have no property or navigation 'color'"),
        ("Datastreams/Observations/result gt 1", "by their Observations is not supported"),
    ],
)
def test_filters_refused(text: str, says: str) -> None:
    with pytest.raises(FilterError) as exc:
        _ids("Things", text)
    assert says in str(exc.value)


def test_comparisons_follow_odata_null_rules() -> None:
    assert compare("eq", None, None)
    assert not compare("ne", None, None)
    assert compare("ne", None, 1)
    assert not compare("lt", None, 1)
    assert compare("lt", Instant(1), Instant(2))
    assert not compare("gt", True, False)
    assert not compare("eq", 1, "1")


def test_order_keys_put_null_first() -> None:
    ev = Evaluator(GRAPH, 0)
    things = GRAPH.all("Things")
    key = parse_filter("properties/kind")
    assert [t.id for t in sorted(things, key=lambda t: ev.sort_key(key, t))] == [
        "air-1",  # air
        "seis-1",  # seismic
        "rain-1",  # water
    ]
    assert ev.sort_key(parse_filter("properties/none"), things[0]) == (0, 0)
