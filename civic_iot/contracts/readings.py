"""The device contract: what a field device may publish, as frozen pydantic models.

A device publishes JSON to ``devices/{device_id}/{kind}`` (kind ``air``, ``water`` or
``seismic``). Ingest (:func:`ingest.validate.validate`) turns those bytes into a
:class:`Reading`, or refuses them with a reason code (:mod:`civic_iot.contracts.deadletter`),
and writes the reading to ``readings.{kind}``, where the processors read it.
See ``ingest/README.md`` for the contract as device makers read it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from civic_iot.times import to_ns

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
#: Seismic packets hold at most 10 s of samples at the highest rate.
MAX_SAMPLES = 1000


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: Contract version; only 1 exists.
    v: Literal[1] = 1
    #: Event time: RFC 3339 with an offset, or epoch milliseconds.
    ts: AwareDatetime

    @field_validator("ts", mode="before")
    @classmethod
    def _epoch_ms(cls, v: object) -> object:
        if isinstance(v, bool):
            msg = "ts must be RFC 3339 text or epoch milliseconds"
            raise ValueError(msg)
        if isinstance(v, int | float):
            if not 0 <= v < 10**14:
                msg = "ts in epoch milliseconds out of range"
                raise ValueError(msg)
            return datetime.fromtimestamp(v / 1000, tz=UTC)
        return v


class AirPayload(_Payload):
    """Air-quality micro-sensor: any subset of pollutants (at least one) and weather."""

    kind: Literal["air"] = "air"
    pm2_5_ugm3: float | None = Field(None, ge=0, le=1000, description="PM2.5, ug/m3")
    pm10_ugm3: float | None = Field(None, ge=0, le=2000, description="PM10, ug/m3")
    o3_ppb: float | None = Field(None, ge=0, le=1000, description="ozone, ppb")
    co_ppm: float | None = Field(None, ge=0, le=100, description="carbon monoxide, ppm")
    no2_ppb: float | None = Field(None, ge=0, le=5000, description="nitrogen dioxide, ppb")
    so2_ppb: float | None = Field(None, ge=0, le=5000, description="sulphur dioxide, ppb")
    temperature_c: float | None = Field(None, ge=-50, le=70, description="air temperature, C")
    humidity_pct: float | None = Field(None, ge=0, le=100, description="relative humidity, %")

    @model_validator(mode="after")
    def _one_pollutant(self) -> AirPayload:
        if all(getattr(self, f) is None for f in POLLUTANT_FIELDS):
            msg = f"an air reading needs at least one of {', '.join(POLLUTANT_FIELDS)}"
            raise ValueError(msg)
        return self


POLLUTANT_FIELDS = ("pm2_5_ugm3", "pm10_ugm3", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb")


class WaterPayload(_Payload):
    """River stage, street flood depth and rain gauge: any subset, at least one."""

    kind: Literal["water"] = "water"
    water_level_m: float | None = Field(
        None, ge=-100, le=5000, description="river stage as an elevation, m"
    )
    flood_depth_cm: float | None = Field(None, ge=0, le=1000, description="water depth, cm")
    rainfall_mm: float | None = Field(
        None, ge=0, le=500, description="rain since the previous report, mm"
    )

    @model_validator(mode="after")
    def _one_value(self) -> WaterPayload:
        if self.water_level_m is None and self.flood_depth_cm is None and self.rainfall_mm is None:
            msg = "a water reading needs water_level_m, flood_depth_cm or rainfall_mm"
            raise ValueError(msg)
        return self


#: One acceleration component, gal (cm/s^2); +-4000 gal is about 4 g, beyond MEMS range.
Component = Annotated[
    list[Annotated[float, Field(ge=-4000, le=4000)]],
    Field(min_length=1, max_length=MAX_SAMPLES),
]


class SeismicPayload(_Payload):
    """A packet of three-component acceleration samples; ``ts`` is the first sample's time."""

    kind: Literal["seismic"] = "seismic"
    sample_rate_hz: float = Field(gt=0, le=100, description="samples per second, (0, 100]")
    x_gal: Component
    y_gal: Component
    z_gal: Component
    #: Optional station summary over the packet.
    pga_gal: float | None = Field(None, ge=0, le=4000, description="peak ground acceleration")
    pgv_cms: float | None = Field(None, ge=0, le=1000, description="peak ground velocity, cm/s")

    @model_validator(mode="after")
    def _same_length(self) -> SeismicPayload:
        n = {len(self.x_gal), len(self.y_gal), len(self.z_gal)}
        if len(n) != 1:
            msg = "x_gal, y_gal and z_gal must hold the same number of samples"
            raise ValueError(msg)
        return self


Payload = Annotated[AirPayload | WaterPayload | SeismicPayload, Field(discriminator="kind")]


class Location(BaseModel):
    """Where the device stands (from the registry), OGC SensorThings *Location*."""

    model_config = ConfigDict(frozen=True)

    lat: float
    lon: float
    township: str


class Reading(BaseModel):
    """A validated reading, as ingest writes it to ``readings.{kind}`` (keyed by device)."""

    model_config = ConfigDict(frozen=True)

    #: ``{device_id}:{event_time_ns}``: duplicate deliveries collapse to one.
    reading_id: str
    device_id: str
    kind: Literal["air", "water", "seismic"]
    event_time: AwareDatetime
    received_at: AwareDatetime
    #: Older than the configured lateness when it arrived; kept and flagged.
    late: bool = False
    location: Location
    data: Payload

    @property
    def event_time_ns(self) -> int:
        return to_ns(self.event_time)


#: The payload model of each reading kind (the last segment of a device topic).
PAYLOAD_MODELS: dict[str, type[AirPayload | WaterPayload | SeismicPayload]] = {
    "air": AirPayload,
    "water": WaterPayload,
    "seismic": SeismicPayload,
}
