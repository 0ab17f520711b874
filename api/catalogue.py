"""What each device measures and where it is stored: the quantities of the read API and
the Datastreams of SensorThings, from the device contract and the storage schema.

A device of kind ``air`` measures the quantities of the air payload
(:class:`~civic_iot.contracts.readings.AirPayload`) that the ``air`` measurement stores;
``water`` those of the water payload, one per gauge type (a river gauge its stage, a
flood gauge its depth, a rain gauge its rainfall); ``seismic`` the station figures of a
packet (PGA, PGV) that ``seismic_station`` stores (the raw 100 Hz samples are not served).
Names and units come from the schema, display names from the contract's descriptions:
nothing here names a field a second time, except the gauge type -> quantity table, which
is checked against the schema when this module is imported.

Each kind also has a *level* measurement (the detector's verdict, in ``derived``) and the
field of it that says how bad things are (the map colours by it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from civic_iot.contracts.readings import AirPayload, SeismicPayload, WaterPayload
from civic_iot.registry import Device, DeviceKind
from civic_iot.storage import schema
from civic_iot.storage.schema import Measurement

__all__ = [
    "QUANTITIES",
    "Quantity",
    "level_of",
    "presence_field",
    "quantities_of",
    "quantity",
    "raw_measurement",
]


@dataclass(frozen=True, slots=True)
class Quantity:
    """One measured quantity: its stored field, measurement, unit and display name."""

    field: str
    measurement: Measurement
    unit: str
    #: Short display name ("PM2.5", "water depth"): the contract's description.
    name: str
    description: str


def _quantities(payload: type[BaseModel], m: Measurement) -> tuple[Quantity, ...]:
    out = []
    for name, info in payload.model_fields.items():
        if name not in m.field_names:
            continue
        spec = m.field(name)
        text = info.description or name
        out.append(Quantity(name, m, spec.unit, text.split(",")[0].strip(), text))
    return tuple(out)


#: By device kind, every quantity it may report.
_BY_KIND: Mapping[DeviceKind, tuple[Quantity, ...]] = {
    "air": _quantities(AirPayload, schema.AIR),
    "water": _quantities(WaterPayload, schema.WATER),
    "seismic": _quantities(SeismicPayload, schema.SEISMIC_STATION),
}
#: Every quantity, by field name.
QUANTITIES: Mapping[str, Quantity] = {q.field: q for qs in _BY_KIND.values() for q in qs}

#: A water gauge's registry ``sensor`` (the ``sensor`` tag of ``water``) -> what it measures.
_WATER_GAUGE: Mapping[str, str] = {
    "river": "water_level_m",
    "flood": "flood_depth_cm",
    "rain": "rainfall_mm",
}
#: A field every point of a raw measurement carries, so that its newest point is the
#: device's last reading: ``late`` (written true or false with every air and water
#: reading), ``pga_gal`` (computed for every seismic packet).
_PRESENCE: Mapping[str, str] = {
    schema.AIR.name: "late",
    schema.WATER.name: "late",
    schema.SEISMIC_STATION.name: "pga_gal",
}
#: The level measurement of each kind (and water gauge) and its field that ranks it.
_LEVEL: Mapping[str, tuple[Measurement, str]] = {
    "air": (schema.AIR_QUALITY, "level"),
    "river": (schema.WATER_LEVEL, "level"),
    "flood": (schema.WATER_LEVEL, "level"),
    "rain": (schema.RAIN, "rain_class"),
    "seismic": (schema.SEISMIC_STATION, "intensity_rank"),
}


def _check() -> None:
    sensors = {t.name: t.values for t in schema.WATER.tags}["sensor"]
    for gauge, field in _WATER_GAUGE.items():
        if gauge not in sensors or field not in QUANTITIES:
            msg = f"api.catalogue: water gauge {gauge!r} -> {field!r} disagrees with the schema"
            raise RuntimeError(msg)
    for m, field in _LEVEL.values():
        m.field(field)  # raises KeyError naming the measurement
    for name, field in _PRESENCE.items():
        schema.measurement(name).field(field)


_check()


def raw_measurement(kind: DeviceKind) -> Measurement:
    """Where a device kind's quantities are stored."""
    return _BY_KIND[kind][0].measurement


def presence_field(m: Measurement) -> str:
    """The field whose newest point is a raw measurement's newest point."""
    return _PRESENCE[m.name]


def quantities_of(device: Device) -> tuple[Quantity, ...]:
    """What a device reports: a water gauge its one quantity, others their kind's."""
    if device.kind == "water" and device.sensor in _WATER_GAUGE:
        return (QUANTITIES[_WATER_GAUGE[device.sensor]],)
    return _BY_KIND[device.kind]


def quantity(field: str) -> Quantity:
    """A quantity by field name; ``KeyError`` naming the known ones."""
    found = QUANTITIES.get(field)
    if found is None:
        msg = f"no quantity {field!r}; known: {sorted(QUANTITIES)}"
        raise KeyError(msg)
    return found


def level_of(device: Device) -> tuple[Measurement, str]:
    """The measurement holding a device's level and the field ranking it."""
    key = device.sensor if device.kind == "water" and device.sensor in _LEVEL else device.kind
    return _LEVEL.get(key, _LEVEL["flood"] if device.kind == "water" else _LEVEL[device.kind])
