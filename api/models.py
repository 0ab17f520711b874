"""The read API's answers as pydantic models: the OpenAPI document is generated from
these, with units in the descriptions. Times are RFC 3339 text in UTC with up to nine
fraction digits (InfluxDB keeps nanoseconds; a ``datetime`` would round them)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from civic_iot.contracts.alerts import Hazard, IntensityLevel
from civic_iot.registry import DeviceKind

__all__ = [
    "AlertMessage",
    "AlertRef",
    "DeadLetterCount",
    "DeadLetters",
    "DeviceDetail",
    "DeviceStatus",
    "DeviceThresholds",
    "HealthIssue",
    "Level",
    "OpenAlert",
    "Page",
    "PipelineInstance",
    "Point",
    "QuakeCell",
    "QuakeDetail",
    "QuakeEvent",
    "Reading",
    "Series",
    "Time",
    "TownshipInfo",
    "TownshipLatest",
]

Time = Annotated[
    str,
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-25T08:00:00Z"]}),
]
Value = float | int | bool | str

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(_Out, Generic[T]):
    """One page of a list; ``next`` is the URL of the following page (absent at the end)."""

    items: list[T]
    limit: int = Field(description="items per page asked for")
    offset: int = Field(description="items skipped before this page")
    total: int | None = Field(None, description="items in the whole list, when cheap to know")
    next: str | None = Field(None, description="URL of the next page; null on the last")


class AlertRef(_Out):
    """An open alert, in short."""

    alert_id: str
    hazard: Hazard
    area: str
    level: int
    severity: str


class HealthIssue(_Out):
    """An open sensor-health finding (``sensor_health``, set by the processors)."""

    issue: Literal["stuck", "out_of_range", "silent"] | str
    since: Time
    detail: str = ""


class Level(_Out):
    """The detectors' latest verdict on a device: ``field`` of ``measurement`` (air:
    ``air_quality.level`` 0-3; river and flood gauges: ``water_level.level`` 0-3; rain
    gauges: ``rain.rain_class`` 0-4; seismic stations: ``seismic_station.intensity_rank``
    0-9), with every field of that point."""

    measurement: str
    field: str
    value: int | None
    at: Time
    figures: dict[str, Value] = Field(description="every field of the latest point")


class DeviceStatus(_Out):
    """A device, where it is, and how it is doing."""

    id: str
    kind: DeviceKind
    sensor: str
    township: str = Field(description="township code")
    township_name: str = ""
    county: str = ""
    lat: float = Field(description="degrees")
    lon: float = Field(description="degrees")
    elevation_m: float | None = None
    last_seen: Time | None = Field(None, description="event time of its newest stored reading")
    health: Literal["ok", "degraded", "unknown"] = Field(
        description="degraded: an open health issue; unknown: nothing stored yet"
    )
    issues: list[HealthIssue] = []
    level: Level | None = None
    open_alerts: list[AlertRef] = Field(
        [], description="open alerts of the device's township (hazard and area)"
    )


class Reading(_Out):
    """The newest stored value of one quantity."""

    quantity: str = Field(description="the field name, unit included: pm2_5_ugm3 ...")
    name: str
    unit: str
    value: Value
    at: Time


class DeviceDetail(DeviceStatus):
    """A device's status with its newest readings."""

    readings: list[Reading] = []


class Point(_Out):
    time: Time = Field(description="the point's time, or its window's start")
    value: Value | None


class Series(_Out):
    """One quantity of one device over time."""

    device: str
    quantity: str
    unit: str
    start: Time
    stop: Time
    every: str | None = Field(None, description="window length, e.g. 1m; null: raw points")
    aggregate: str | None = None
    points: list[Point]
    limit: int
    offset: int
    next: str | None = None


class TownshipInfo(_Out):
    code: str
    name: str
    county: str
    lat: float
    lon: float
    devices: int = Field(description="registered devices in the township")


class TownshipDevice(_Out):
    id: str
    kind: DeviceKind
    sensor: str
    last_seen: Time | None
    readings: list[Reading]


class TownshipAir(_Out):
    """The township's air level, decided when enough sensors agree (``township_air``)."""

    level: int
    sensors_agreeing: int | None = None
    max_aqi: int | None = None
    at: Time


class TownshipLatest(_Out):
    township: TownshipInfo
    air: TownshipAir | None
    devices: list[TownshipDevice]
    open_alerts: list[AlertRef]


class Acknowledgement(_Out):
    by: str
    note: str = ""
    at: Time


class AlertMessage(_Out):
    """One issued alert message (``alert`` measurement): Alert, Update or Cancel."""

    sent: Time
    identifier: str = Field(description="the CAP message identifier")
    alert_id: str
    hazard: str
    area: str = Field(description="township code, or quake-<event id>")
    msg_type: Literal["Alert", "Update", "Cancel"] | str
    severity: str
    status: str = Field(description="CAP status: Actual, Exercise, System, Test, Draft")
    sequence: int | None = None
    level: int | None = None
    headline: str = ""
    reason: str = Field("", description="new, escalated, de-escalated, area_changed, cleared ...")
    latency_ms: float | None = Field(None, description="detector decision -> issued, ms")


class OpenAlert(_Out):
    """An alert not cancelled: its newest message and when it opened."""

    alert_id: str
    key: str = Field(description="hazard:area, one open alert per key")
    hazard: str
    area: str
    area_name: str = ""
    opened: Time | None
    last: AlertMessage
    acknowledgements: list[Acknowledgement] = []


class AlertHistory(_Out):
    alert_id: str
    open: bool
    messages: list[AlertMessage] = Field(description="oldest first")
    acknowledgements: list[Acknowledgement] = []


class QuakeEvent(_Out):
    """An earthquake as the associator last estimated it."""

    event_id: str
    origin_time: Time | None
    lat: float | None = Field(None, description="epicentre, degrees")
    lon: float | None = Field(None, description="epicentre, degrees")
    depth_km: float | None = None
    magnitude: float | None = None
    n_stations: int | None = None
    max_intensity: IntensityLevel | None = None
    estimated_at: Time = Field(description="stream time of the latest estimate")


class QuakeCell(_Out):
    """A 0.1 x 0.1 degree cell's expected shaking."""

    lat: float = Field(description="cell centre, degrees")
    lon: float = Field(description="cell centre, degrees")
    township: str | None = None
    intensity: IntensityLevel | None
    intensity_rank: int | None = Field(None, description="0-9")
    s_wave_s: float | None = Field(None, description="seconds from the estimate to the S wave")
    s_wave_at: Time | None = Field(None, description="when the S wave reaches the cell centre")


class QuakeDetail(QuakeEvent):
    cells: list[QuakeCell]


class DeviceThresholds(_Out):
    device: str
    township: str
    thresholds: dict[str, Any] = Field(
        description="every section in force for the device (deploy/thresholds.yaml)"
    )


class PipelineInstance(_Out):
    """A worker's latest statistics (``pipeline`` measurement)."""

    process: str
    instance: str
    at: Time
    figures: dict[str, Value] = Field(description="counters since start, lag, latency ms")
    readings_in_per_s: float | None = Field(None, description="over the last minutes")


class DeadLetterCount(_Out):
    reason: str
    kind: str
    count: int


class DeadLetters(_Out):
    since: Time
    counts: list[DeadLetterCount]
