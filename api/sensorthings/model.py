"""The SensorThings entity sets and the static part of the graph, from the registry.

=================== ============================================= ==========================
entity set          one per                                       ``@iot.id``
=================== ============================================= ==========================
Things              device                                        ``air-0001``
Locations           device (its point)                            ``air-0001``
FeaturesOfInterest  device (what its observations are about)      ``air-0001``
Sensors             kind and sensor type of the registry          ``air.air``, ``water.rain``
ObservedProperties  quantity of the catalogue                     ``pm2_5_ugm3``
Datastreams         device and quantity                           ``air-0001:pm2_5_ugm3``
Observations        stored point (InfluxDB)                       ``air-0001:pm2_5_ugm3:<ns>``
=================== ============================================= ==========================

Ids are strings (``Things('air-0001')``): a device id has no ``:`` (it is a line of the
broker's password file), so the parts of a Datastream or Observation id split back
unambiguously. Things carry the properties Civil IoT Taiwan's clients read:
``stationID`` (the device id), ``city`` (the county), ``township`` (its name),
``authority`` (``CIVIC_API__AUTHORITY``), plus ``townCode``, ``kind`` and ``sensor``.
HistoricalLocations, MultiDatastreams and the tasking part are not served (devices do not
move here; nothing is actuated).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api.catalogue import Quantity, quantities_of, quantity
from civic_iot.registry import Device, Registry

__all__ = [
    "OBSERVATION_TYPE",
    "SETS",
    "DatastreamRef",
    "Entity",
    "Graph",
    "Nav",
    "SetSpec",
    "build_graph",
    "observation_id",
    "split_observation_id",
]

OBSERVATION_TYPE = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"


@dataclass(frozen=True, slots=True)
class Nav:
    """A navigation property: the set it leads to, and whether it leads to many."""

    target: str
    many: bool


@dataclass(frozen=True, slots=True)
class SetSpec:
    name: str
    singular: str
    properties: tuple[str, ...]
    navs: Mapping[str, Nav]


SETS: dict[str, SetSpec] = {
    s.name: s
    for s in (
        SetSpec(
            "Things",
            "Thing",
            ("name", "description", "properties"),
            {"Locations": Nav("Locations", True), "Datastreams": Nav("Datastreams", True)},
        ),
        SetSpec(
            "Locations",
            "Location",
            ("name", "description", "encodingType", "location", "properties"),
            {"Things": Nav("Things", True)},
        ),
        SetSpec(
            "Sensors",
            "Sensor",
            ("name", "description", "encodingType", "metadata", "properties"),
            {"Datastreams": Nav("Datastreams", True)},
        ),
        SetSpec(
            "ObservedProperties",
            "ObservedProperty",
            ("name", "definition", "description", "properties"),
            {"Datastreams": Nav("Datastreams", True)},
        ),
        SetSpec(
            "Datastreams",
            "Datastream",
            (
                "name",
                "description",
                "unitOfMeasurement",
                "observationType",
                "observedArea",
                "properties",
            ),
            {
                "Thing": Nav("Things", False),
                "Sensor": Nav("Sensors", False),
                "ObservedProperty": Nav("ObservedProperties", False),
                "Observations": Nav("Observations", True),
            },
        ),
        SetSpec(
            "Observations",
            "Observation",
            ("phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters"),
            {
                "Datastream": Nav("Datastreams", False),
                "FeatureOfInterest": Nav("FeaturesOfInterest", False),
            },
        ),
        SetSpec(
            "FeaturesOfInterest",
            "FeatureOfInterest",
            ("name", "description", "encodingType", "feature", "properties"),
            {"Observations": Nav("Observations", True)},
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity: its set, id and properties (JSON-ready, in the set's order)."""

    set: str
    id: str
    props: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DatastreamRef:
    """Where a Datastream's observations are stored."""

    id: str
    device: Device
    quantity: Quantity


@dataclass
class Graph:
    """The static entities and their links, rebuilt when the registry changes."""

    entities: dict[str, dict[str, Entity]] = field(default_factory=lambda: defaultdict(dict))
    #: (set, id, navigation) -> ids in the target set, in order
    links: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    datastreams: dict[str, DatastreamRef] = field(default_factory=dict)

    def get(self, set_name: str, entity_id: str) -> Entity | None:
        return self.entities[set_name].get(entity_id)

    def all(self, set_name: str) -> list[Entity]:
        return list(self.entities[set_name].values())

    def linked(self, entity: Entity, nav: str) -> list[Entity]:
        spec = SETS[entity.set].navs[nav]
        ids = self.links.get((entity.set, entity.id, nav), [])
        return [e for i in ids if (e := self.get(spec.target, i)) is not None]

    def datastreams_of(self, entity: Entity) -> list[DatastreamRef]:
        """The Datastreams whose observations a Datastream or FeatureOfInterest (its
        device) has."""
        if entity.set == "Datastreams":
            return [self.datastreams[entity.id]]
        ids = self.links.get(("Things", entity.id, "Datastreams"), [])
        return [self.datastreams[i] for i in ids]


def sensor_id(device: Device) -> str:
    return f"{device.kind}.{device.sensor or device.kind}"


def datastream_id(device_id: str, field_name: str) -> str:
    return f"{device_id}:{field_name}"


def observation_id(device_id: str, field_name: str, time_ns: int) -> str:
    return f"{device_id}:{field_name}:{time_ns}"


def split_observation_id(text: str) -> tuple[str, str, int] | None:
    """(device, field, ns) of an Observation id, or ``None``."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def _point(device: Device) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [device.lon, device.lat]}


def build_graph(registry: Registry, *, authority: str, geo_encoding: str) -> Graph:
    """Every static entity of the registry (``geo_encoding``: the Location and Feature
    encoding type of the protocol version)."""
    g = Graph()
    ents = g.entities

    def add(set_name: str, entity_id: str, props: dict[str, Any]) -> None:
        ents[set_name][entity_id] = Entity(set_name, entity_id, props)

    def link(a: tuple[str, str], nav: str, b: str) -> None:
        g.links.setdefault((a[0], a[1], nav), []).append(b)

    for device in sorted(registry, key=lambda d: d.id):
        town = registry.township(device.township)
        sensor = sensor_id(device)
        kind_text = (
            device.kind if device.sensor in ("", device.kind) else f"{device.kind} {device.sensor}"
        )
        add(
            "Things",
            device.id,
            {
                "name": device.id,
                "description": f"civic-iot {kind_text} device in "
                f"{town.name if town else device.township}",
                "properties": {
                    "stationID": device.id,
                    "city": town.county if town else "",
                    "township": town.name if town else "",
                    "townCode": device.township,
                    "authority": authority,
                    "kind": device.kind,
                    "sensor": device.sensor,
                },
            },
        )
        place = {
            "name": f"{device.id} location",
            "description": f"where {device.id} is installed",
            "encodingType": geo_encoding,
        }
        add("Locations", device.id, {**place, "location": _point(device), "properties": {}})
        add(
            "FeaturesOfInterest",
            device.id,
            {
                "name": f"{device.id} surroundings",
                "description": f"what {device.id} observes: its place",
                "encodingType": geo_encoding,
                "feature": _point(device),
                "properties": {"townCode": device.township},
            },
        )
        link(("Things", device.id), "Locations", device.id)
        link(("Locations", device.id), "Things", device.id)
        if sensor not in ents["Sensors"]:
            add(
                "Sensors",
                sensor,
                {
                    "name": f"{kind_text} sensor",
                    "description": f"the registry's {kind_text} devices",
                    "encodingType": "text/plain",
                    "metadata": f"civic-iot device contract, kind {device.kind}",
                    "properties": {"kind": device.kind, "sensor": device.sensor},
                },
            )
        for q in quantities_of(device):
            ds = datastream_id(device.id, q.field)
            if q.field not in ents["ObservedProperties"]:
                add(
                    "ObservedProperties",
                    q.field,
                    {
                        "name": q.name,
                        "definition": f"urn:civic-iot:quantity:{q.field}",
                        "description": q.description,
                        "properties": {"field": q.field, "unit": q.unit},
                    },
                )
            add(
                "Datastreams",
                ds,
                {
                    "name": f"{device.id} {q.name}",
                    "description": f"{q.description} at {device.id}",
                    "unitOfMeasurement": {
                        "name": q.unit,
                        "symbol": q.unit,
                        "definition": f"urn:civic-iot:unit:{q.unit}",
                    },
                    "observationType": OBSERVATION_TYPE,
                    "observedArea": _point(device),
                    "properties": {"field": q.field, "measurement": q.measurement.name},
                },
            )
            g.datastreams[ds] = DatastreamRef(ds, device, quantity(q.field))
            link(("Things", device.id), "Datastreams", ds)
            link(("Datastreams", ds), "Thing", device.id)
            link(("Datastreams", ds), "Sensor", sensor)
            link(("Datastreams", ds), "ObservedProperty", q.field)
            link(("Sensors", sensor), "Datastreams", ds)
            link(("ObservedProperties", q.field), "Datastreams", ds)
    return g
