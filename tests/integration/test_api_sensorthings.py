"""SensorThings through real clients against the API process over the real InfluxDB:
frost-sta-client (Fraunhofer's) on v1.1 and pyCIOT (Civil IoT Taiwan's own package) on
v1.0, plus the query options and the refusals over plain HTTP.

pyCIOT has no option for its service roots: each data class reads them from its packaged
``data_source.json`` into ``self._sources`` when built. The adapter below replaces that
attribute of an instance (a private name), so it is pinned to the version it was written
against and fails loudly on another.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import frost_sta_client as fsc
import pytest
import requests

from api.influx import format_ns
from civic_iot.registry import Registry
from civic_iot.settings import Settings
from tests.integration.api_env import MIN, ApiEnv, S, api_env

pytestmark = pytest.mark.integration

PYCIOT_VERSION = "1.1.0"


@pytest.fixture(scope="module")
def api(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiEnv]:
    yield from api_env(stack, tmp_path_factory.mktemp("api-sta"))


def _sta(api: ApiEnv, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{api.base}/sta/v1.1/{path}", params=params, timeout=30)


# --------------------------------------------------------------------------- frost


def test_frost_client_reads_things_datastreams_and_observations(
    api: ApiEnv, registry: Registry
) -> None:
    svc = fsc.SensorThingsService(f"{api.base}/sta/v1.1")
    town = [d.id for d in sorted(registry, key=lambda d: d.id) if d.township == "63000010"]
    things = svc.things().query().filter("properties/townCode eq '63000010'").top(4).list()
    # Iterating follows @iot.nextLink page by page.
    assert [t.id for t in things] == town
    thing = svc.things().find("air-0001")
    assert thing.properties["stationID"] == "air-0001"
    assert thing.properties["city"] == "Taipei City"
    assert thing.properties["authority"] == "civic-iot"
    streams = {d.id: d for d in thing.get_datastreams().query().list()}
    assert "air-0001:pm2_5_ugm3" in streams
    pm = streams["air-0001:pm2_5_ugm3"]
    assert pm.unit_of_measurement.symbol == "ug/m3"
    newest = (
        svc.datastreams()
        .find("air-0001:pm2_5_ugm3")
        .get_observations()
        .query()
        .orderby("phenomenonTime", "DESC")
        .top(3)
        .list()
    )
    want = api.facts["air1_pm"][::-1][:3]
    assert [(o.phenomenon_time, o.result) for o in newest.entities] == [
        (format_ns(t), v) for t, v in want
    ]
    (loc,) = thing.get_locations().query().list().entities
    assert loc.location["coordinates"] == [121.54871, 25.04386]
    sensors = svc.sensors().query().count().list()
    assert sensors.count == len({(d.kind, d.sensor) for d in registry})
    found = svc.observations().find(f"air-0001:pm2_5_ugm3:{api.t0_ns}")
    assert found.result == api.facts["air1_pm"][0][1]


def test_frost_filters_observations_in_flux(api: ApiEnv) -> None:
    """result and time conditions are answered by InfluxDB; the Datastream condition
    chooses the series."""
    svc = fsc.SensorThingsService(f"{api.base}/sta/v1.1")
    t0 = api.t0_ns
    start, stop = format_ns(t0 + 2 * MIN), format_ns(t0 + 3 * MIN)
    query = (
        f"Datastream/@iot.id eq 'air-0001:pm2_5_ugm3' and phenomenonTime ge {start} "
        f"and phenomenonTime lt {stop} and result gt 11.3"
    )
    got = svc.observations().query().filter(query).orderby("result", "DESC").count().list()
    want = sorted(
        (v for t, v in api.facts["air1_pm"] if t0 + 2 * MIN <= t < t0 + 3 * MIN and v > 11.3),
        reverse=True,
    )
    assert [o.result for o in got] == want
    assert got.count == len(want)


# --------------------------------------------------------------------------- pyCIOT


def _pyciot_air(api: ApiEnv) -> Any:
    from pyCIOT.data import Air  # noqa: PLC0415 - only this test needs it

    assert version("pyCIOT") == PYCIOT_VERSION, "the _sources adapter is pinned to pyCIOT 1.1.0"
    air = Air()
    assert set(air._sources) >= {"OBS"}, "pyCIOT no longer keeps its roots in _sources"
    air._sources = {
        "OBS": {
            "CIVIC": {
                "base_url": f"{api.base}/sta/v1.0/",
                "description": "civic-iot",
                "filters": {"eq": {"properties/authority": "civic-iot"}},
            }
        }
    }
    return air


def test_pyciot_reads_stations_and_data_on_v1_0(api: ApiEnv, registry: Registry) -> None:
    air = _pyciot_air(api)
    (station,) = air.get_station("OBS:CIVIC", stationID="air-0002")
    assert station["properties"]["township"].startswith("Songshan")
    assert station["location"] == {"latitude": 25.04607, "longitude": 121.55612, "address": None}
    (data,) = air.get_data("OBS:CIVIC", stationID="air-0001")
    latest = {d["name"]: d["values"] for d in data["data"]}
    last_t, last_v = api.facts["air1_pm"][-1]
    assert latest["air-0001 PM2.5"] == [{"timestamp": format_ns(last_t), "value": last_v}]
    # Datastreams without observations are left out by pyCIOT itself.
    assert set(latest) == {"air-0001 PM2.5", "air-0001 PM10", "air-0001 air temperature"}
    # pyCIOT's distance is in km, sent as degrees (km / 100); air-0002 is 0.8 km away.
    near = air.get_data(
        "OBS:CIVIC", location={"latitude": 25.0439, "longitude": 121.5487, "distance": 0.5}
    )
    want = sorted(d.id for d in registry if math.hypot(d.lon - 121.5487, d.lat - 25.0439) <= 0.005)
    assert sorted(d["name"] for d in near) == want
    assert "air-0001" in want
    assert "air-0002" not in want
    start = format_ns(api.t0_ns + 5 * MIN)
    end = format_ns(api.t0_ns + 6 * MIN)
    (window,) = air.get_data(
        "OBS:CIVIC",
        stationID="air-0001",
        time_range={"start": start, "end": end, "num_of_data": 4},
    )
    values = {d["name"]: d["values"] for d in window["data"]}["air-0001 PM2.5"]
    in_window = [(t, v) for t, v in api.facts["air1_pm"] if start <= format_ns(t) <= end]
    assert [(x["timestamp"], x["value"]) for x in values] == [
        (format_ns(t), v) for t, v in in_window[::-1][:4]
    ]


# --------------------------------------------------------------------------- options over HTTP


@pytest.mark.parametrize(
    ("path", "params", "ids"),
    [
        ("Things", {"$filter": "properties/stationID eq 'air-0002'"}, ["air-0002"]),
        (
            "Things",
            {"$filter": "properties/townCode eq '63000010' and properties/kind eq 'seismic'"},
            ["seis-0001"],
        ),
        (
            "Things",
            {"$filter": "startswith(name, 'rain-000') and endswith(name, '2')", "$top": 1},
            ["rain-0002"],
        ),
        (
            "Datastreams",
            {
                "$filter": "Thing/@iot.id eq 'seis-0001'",
                "$orderby": "name desc",
                "$select": "id,name",
            },
            ["seis-0001:pgv_cms", "seis-0001:pga_gal"],
        ),
        (
            "Things",
            {
                "$filter": "Datastreams/ObservedProperty/@iot.id eq 'water_level_m' and "
                "geo.distance(Locations/location, geography'POINT(121.533 25.081)') lt 0.001"
            },
            ["river-0001"],
        ),
        ("ObservedProperties", {"$filter": "tolower(name) eq 'pm2.5'"}, ["pm2_5_ugm3"]),
        (
            "Observations",
            {
                "$filter": "Datastream/@iot.id eq 'seis-0001:pga_gal' and result ge 2.5",
                "$orderby": "phenomenonTime asc",
            },
            None,  # checked below: two points
        ),
    ],
)
def test_filters_select_what_they_say(
    api: ApiEnv, path: str, params: dict[str, Any], ids: list[str] | None
) -> None:
    body = _sta(api, path, **params).json()
    got = [e["@iot.id"] for e in body["value"]]
    if ids is None:
        t0 = api.t0_ns
        assert got == [f"seis-0001:pga_gal:{t0 + S}", f"seis-0001:pga_gal:{t0 + 2 * S}"]
        assert [e["result"] for e in body["value"]] == [2.5, 3.5]
    else:
        assert got == ids


def test_time_functions_and_expansions(api: ApiEnv) -> None:
    t0 = api.t0_ns
    minute = int(format_ns(t0 + 7 * MIN)[14:16])
    body = _sta(
        api,
        "Datastreams('air-0001:pm2_5_ugm3')/Observations",
        **{
            "$filter": f"minute(phenomenonTime) eq {minute} and second(phenomenonTime) lt 30",
            "$count": "true",
            "$top": 2,
        },
    ).json()
    assert body["@iot.count"] == 3
    assert [e["phenomenonTime"] for e in body["value"]] == [
        format_ns(t0 + 7 * MIN),
        format_ns(t0 + 7 * MIN + 10 * S),
    ]
    assert "$skip=2" in body["@iot.nextLink"]
    page2 = requests.get(body["@iot.nextLink"], timeout=30).json()
    assert [e["phenomenonTime"] for e in page2["value"]] == [format_ns(t0 + 7 * MIN + 20 * S)]
    assert "@iot.nextLink" not in page2
    things = _sta(
        api,
        "Things",
        **{
            "$filter": "@iot.id eq 'air-0001' or @iot.id eq 'air-0002'",
            "$expand": "Locations($select=location),Datastreams($filter=ObservedProperty/"
            "@iot.id eq 'pm2_5_ugm3';$expand=Observations($orderby=phenomenonTime desc;"
            "$top=1;$select=result),ObservedProperty($select=name))",
            "$select": "id",
        },
    ).json()["value"]
    assert [t["@iot.id"] for t in things] == ["air-0001", "air-0002"]
    (ds,) = things[0]["Datastreams"]
    assert ds["ObservedProperty"] == {"name": "PM2.5"}
    assert ds["Observations"] == [{"result": api.facts["air1_pm"][-1][1]}]
    assert things[1]["Datastreams"][0]["Observations"] == [{"result": 20.0}]
    assert things[0]["Locations"] == [
        {"location": {"type": "Point", "coordinates": [121.54871, 25.04386]}}
    ]


def test_versions_differ_only_in_the_geo_encoding(api: ApiEnv) -> None:
    v10 = requests.get(f"{api.base}/sta/v1.0/Locations('air-0001')", timeout=30).json()
    v11 = _sta(api, "Locations('air-0001')").json()
    assert v10["encodingType"] == "application/vnd.geo+json"
    assert v11["encodingType"] == "application/geo+json"
    assert v10["@iot.selfLink"].endswith("/sta/v1.0/Locations('air-0001')")
    assert _sta(api, "Things('air-0001')/name").json() == {"name": "air-0001"}
    assert _sta(api, "Things('air-0001')/name/$value").text == "air-0001"


@pytest.mark.parametrize(
    ("path", "params", "says"),
    [
        (
            "Things",
            {"$filter": "st_within(Locations/location, geography'POINT(1 2)')"},
            "st_within",
        ),
        ("Things", {"$filter": "name eq"}, "end of the expression"),
        ("Things", {"$filter": "nope eq 1"}, "'nope'"),
        ("Things", {"$resultFormat": "dataArray"}, "$resultFormat"),
        ("Things", {"$top": "-1"}, "$top"),
        ("Things", {"$expand": "Sensors"}, "Sensors"),
        ("Things", {"$select": "color"}, "color"),
        ("Observations", {"$filter": "result eq 'high'"}, "string"),
        ("Observations", {"$filter": "result gt 1 or Datastream/name eq 'x'"}, "mixes"),
        ("Observations", {"$orderby": "Datastream/name"}, "sort by"),
        ("Things", {"$filter": "Datastreams/Observations/result gt 1"}, "Observations"),
        ("Things('air-0001')/Nope", {}, "Nope"),
        ("Things('air-0001')/Datastreams('x')", {}, "no Datastream 'x'"),
    ],
)
def test_unsupported_is_a_400_naming_it(
    api: ApiEnv, path: str, params: dict[str, Any], says: str
) -> None:
    resp = _sta(api, path, **params)
    assert resp.status_code in (400, 404), resp.text
    assert says in resp.json()["message"]
