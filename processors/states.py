"""The values of the processors' tables: one frozen pydantic model per table.

==================  ======================  ===========================================
table (key)         value                   holds
==================  ======================  ===========================================
``air-state``       :class:`AirDevice`      last reading time, health runs, AQI windows
(device)
``water-state``     :class:`WaterDevice`    last reading time, health runs, flood and
(device)                                    river gauges, rain windows, debris flow
``seismic-state``   :class:`SeismicDevice`  last reading time, the station's filters
(device)
``shaking-state``   :class:`ShakingMark`    the strong shaking whose R50 period ends
(water device)                              last (:func:`~processors.handlers.handle_water`
                                            judges the device's rain with it)
``township-state``  :class:`TownshipState`  sensors agreeing on air quality, each water
(township)                                  device's last level per hazard, the open
                                            candidates
``quake-state``     :class:`QuakeState`     the associator, its stream clock per source
(``network``)                               partition, townships notified of shaking,
                                            the open candidates
==================  ======================  ===========================================

Each value records the ``offset`` of the last input message applied to its key, and
for a device the ``index`` of the reading within that record (a readings record holds
several), so a reading read again after a restart is recognised
(:mod:`processors.agents.loop`).
Values are written to and read from the changelog by one codec
(:func:`encode_value`/:func:`decode_value`), never by hand.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import fields
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import to_json

from civic_iot.contracts.alerts import AlertCandidate
from processors.candidates import DeviceLevel
from processors.detectors.air import AirState, TownshipAirState
from processors.detectors.health import HealthState
from processors.detectors.quake import Associator
from processors.detectors.seismic import StationState
from processors.detectors.water import DebrisFlowState, GaugeState, RainState, StrongShaking

logger = logging.getLogger(__name__)

#: The layout of every stored value. Bump it when a state's fields change meaning or
#: layout: a value written under a version not in :data:`READABLE_VERSIONS` is not read,
#: and its key starts afresh (logged, :func:`decode_value`).
STATE_VERSION = 3
#: The versions a worker reads. 3 writes the records of
#: :mod:`processors.detectors.state` (a township's sensor reports) as JSON arrays where 2
#: wrote objects; the same fields, which read from either form, so a value of 2 is read
#: (and written again as 3): an upgrade keeps every device's windows.
READABLE_VERSIONS = frozenset({2, STATE_VERSION})


class TableValue(BaseModel):
    """What every table value has: its layout version and the position of the last input
    applied to its key: the record's ``offset`` (None: not yet stored) and the reading's
    ``index`` within it (0 for a message of one input; a value stored before records held
    several has 0 too, which is what it meant)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    v: int = STATE_VERSION
    offset: int | None = None
    index: int = 0


class DeviceState(TableValue):
    """A device's state; ``last_seen`` is the newest event time of its readings, epoch s."""

    last_seen: float | None = None


class AirDevice(DeviceState):
    health: HealthState = Field(default_factory=HealthState)
    air: AirState = Field(default_factory=AirState)


class WaterDevice(DeviceState):
    """A water device's gauges: each is absent until a reading carries its quantity."""

    health: HealthState = Field(default_factory=HealthState)
    flood: GaugeState | None = None
    river: GaugeState | None = None
    rain: RainState | None = None
    debris: DebrisFlowState | None = None


class SeismicDevice(DeviceState):
    station: StationState = Field(default_factory=StationState)


class ShakingMark(TableValue):
    shaking: StrongShaking | None = None


class TownshipState(TableValue):
    air: TownshipAirState = Field(default_factory=TownshipAirState)
    #: Water hazard -> device id -> that device's last report.
    water: dict[str, dict[str, DeviceLevel]] = Field(default_factory=dict)
    #: Water hazard -> the township's level.
    levels: dict[str, int] = Field(default_factory=dict)
    #: The last candidate of each (hazard, area) at level >= 1, by candidate key: the
    #: worker re-sends them so the alert service does not expire an alert that holds.
    open: dict[str, AlertCandidate] = Field(default_factory=dict)


class QuakeState(TableValue):
    assoc: Associator = Field(default_factory=Associator)
    #: The associator's stream clock (epoch s): never goes backwards.
    clock: float = 0.0
    #: Source partition -> (stream time of its newest packet, processing time of its
    #: last tick), epoch s.
    clocks: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: Earthquake id -> township code -> intensity ordinal already notified, oldest
    #: earthquake first.
    shaken: dict[str, dict[str, int]] = Field(default_factory=dict)
    open: dict[str, AlertCandidate] = Field(default_factory=dict)


V = TypeVar("V", bound=TableValue)


def encode_value(value: TableValue) -> bytes:
    """A table value as the changelog stores it (JSON): ``model_dump_json``'s bytes."""
    if type(value) is AirDevice:
        return _encode_air_device(value)
    # The serializer's bytes: model_dump_json's, without decoding them to text and
    # encoding them again (a device's state is a few KB, written once a batch).
    return value.__pydantic_serializer__.to_json(value)


def _encode_air_device(value: AirDevice) -> bytes:
    """:func:`encode_value` of an air sensor, its hourly series written by
    :meth:`~processors.detectors.windows.BucketSeries.json`: of the 24 hours of each
    pollutant, those before the current one are written once an hour, not at every
    reading (24-hour series: 30 -> 11 us a reading, bench/handlers.py ``--changelog``
    after a day). The same bytes: the device's other fields and the air state's are
    the serializer's, spliced around the series (``air`` is the device's last field,
    ``series`` the air state's first)."""
    air = value.air
    if sum([len(s.buckets) for s in air.series.values()]) < _SPLICE_FROM:
        return value.__pydantic_serializer__.to_json(value)
    head = _DEVICE_WITHOUT_AIR(value, exclude=_AIR)
    rest = _AIR_WITHOUT_SERIES(air, exclude=_SERIES)
    series = b",".join([b"%b:%b" % (_key(name), s.json()) for name, s in air.series.items()])
    return b'%b,"air":{"series":{%b},%b}' % (head[:-1], series, rest[1:])


#: Fewer buckets than this in all (a sensor heard for less than about four hours) and the
#: state is written whole: the splice costs about as much as the serializer would spend
#: on them (1.5 us).
_SPLICE_FROM = 12
_DEVICE_WITHOUT_AIR = AirDevice.__pydantic_serializer__.to_json
_AIR = {"air"}
_AIR_WITHOUT_SERIES = TypeAdapter(AirState).serializer.to_json
_SERIES = {"series"}
if list(AirDevice.model_fields)[-1] != "air" or next(iter(fields(AirState))).name != "series":
    raise RuntimeError(  # pragma: no cover - a guard for the splice
        "AirDevice.air must stay its last field and AirState.series the first of the air "
        "state's: _encode_air_device splices them"
    )


def _key(name: str) -> bytes:
    """A series' name as a JSON object key (kept: a handful of pollutant names)."""
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = to_json(name)
    return key


_KEYS: dict[str, bytes] = {}


def decode_value(kind: type[V], data: bytes) -> V | None:
    """A table value from the changelog, or None (its key starts afresh) when it was
    written under a version not in :data:`READABLE_VERSIONS` or is not a ``kind`` at
    all: a worker must come up whatever an older one left behind. A value of an older
    readable version comes back as :data:`STATE_VERSION` (it is written so next)."""
    try:
        value = kind.model_validate_json(data)
    except ValidationError as exc:
        _unreadable(kind, f"invalid: {exc.errors(include_url=False)[:3]}")
        return None
    if "v" not in value.model_fields_set or value.v not in READABLE_VERSIONS:
        _unreadable(kind, f"version {value.v if 'v' in value.model_fields_set else None}")
        return None
    if value.v != STATE_VERSION:
        return value.model_copy(update={"v": STATE_VERSION})
    return value


#: Keys started afresh, per table value type, since the worker started.
_afresh: Counter[str] = Counter()


def _unreadable(kind: type[TableValue], why: str) -> None:
    # A warning at the 1st, 10th, 100th ... key of a table value type (after a version
    # change every key of a table starts afresh: their count is what the log must say),
    # the others at debug.
    _afresh[kind.__name__] += 1
    n = _afresh[kind.__name__]
    level = logging.WARNING if 10 ** (len(str(n)) - 1) == n else logging.DEBUG
    logger.log(
        level,
        "stored state not read, key starts afresh kind=%s count=%d why=%s",
        kind.__name__,
        n,
        why,
    )


__all__ = [
    "READABLE_VERSIONS",
    "STATE_VERSION",
    "AirDevice",
    "DeviceState",
    "QuakeState",
    "SeismicDevice",
    "ShakingMark",
    "TableValue",
    "TownshipState",
    "WaterDevice",
    "decode_value",
    "encode_value",
]
