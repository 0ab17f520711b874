"""The device contract: what a field device may publish, as frozen pydantic models.

A device publishes JSON to ``devices/{device_id}/{kind}`` (kind ``air``, ``water`` or
``seismic``). Ingest (:func:`ingest.validate.validate`) turns those bytes into a
:class:`Reading`, or refuses them with a reason code (:mod:`civic_iot.contracts.deadletter`),
and writes the reading to ``readings.{kind}``, where the processors read it.
See ``ingest/README.md`` for the contract as device makers read it.

A record on ``readings.{kind}`` holds one reading or several, one JSON object a line
(JSON Lines, :func:`record_value`): each line is exactly a one-reading record
(:meth:`Reading.to_record`), so a consumer that wants one reading at a time splits the
value on newlines (:func:`record_lines`), and a one-line record is the one-reading
record. Ingest writes one record per Kafka partition and batch of device messages (at
most :data:`MAX_RECORD_BYTES`), every reading in it keyed to that partition, and marks
it (:mod:`civic_iot.contracts.provenance`). The processors take a marked record's
readings as ingest wrote them (:func:`decode_record` ``trusted``, no second validation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from civic_iot.times import to_ns

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
#: The sample rates a seismic packet may declare, Hz: those of the MEMS accelerometers in
#: use (OpenEEW 31.25 Hz, P-Alert and the CWA's low-cost stations 100 Hz, and the usual
#: decimations). Anything else is a firmware fault (a period sent as a rate, a typo).
SEISMIC_RATES_HZ: tuple[float, ...] = (20.0, 25.0, 31.25, 40.0, 50.0, 100.0)
#: A seismic packet covers at most this many seconds.
MAX_PACKET_S = 10.0
#: Samples per axis at most: 10 s at the highest rate.
MAX_SAMPLES = round(MAX_PACKET_S * max(SEISMIC_RATES_HZ))

#: RFC 3339 date-time with a UTC offset (``T``, ``t`` or a space between date and time,
#: any number of fraction digits; ``Z`` or ``+hh:mm``).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
#: Epoch milliseconds at most this (year 5138): larger is a micro- or nanosecond count.
_MAX_EPOCH_MS = 10**14


def _event_time(v: object) -> datetime:
    """``ts`` as JSON gives it: RFC 3339 text with an offset, or epoch milliseconds as a
    JSON number. Nothing else: a numeric string (seconds or milliseconds?), a bool, text
    without an offset (which clock?). Python code may pass an aware ``datetime``."""
    if isinstance(v, datetime):
        return v  # strict AwareDatetime refuses a naive one
    if isinstance(v, str):
        if not _RFC3339.fullmatch(v):
            raise PydanticCustomError(
                "ts_format",
                "ts must be RFC 3339 text with an offset (2026-11-25T08:00:00+08:00) or "
                "epoch milliseconds as a JSON number",
            )
        try:
            return datetime.fromisoformat(v)
        except ValueError as exc:
            raise PydanticCustomError(
                "ts_format", "ts is not a valid date-time: {e}", {"e": str(exc)}
            ) from None
    if isinstance(v, int | float) and not isinstance(v, bool):
        if not 0 <= v < _MAX_EPOCH_MS:
            raise PydanticCustomError("ts_format", "ts in epoch milliseconds must be in [0, 1e14)")
        return datetime.fromtimestamp(v / 1000, tz=UTC)
    raise PydanticCustomError(
        "ts_format", "ts must be RFC 3339 text with an offset or epoch milliseconds"
    )


class _Payload(BaseModel):
    # strict: JSON numbers only where numbers are meant (no "12.5", no true, no null).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    #: Contract version; only 1 exists (a JSON integer).
    v: int = SCHEMA_VERSION
    #: Event time: RFC 3339 with an offset, or epoch milliseconds.
    ts: AwareDatetime

    @field_validator("v", mode="before")
    @classmethod
    def _version(cls, v: object) -> object:
        if type(v) is not int or v != SCHEMA_VERSION:
            raise PydanticCustomError(
                "unsupported_version",
                "contract version {v} is not supported; only the integer 1 exists",
                {"v": repr(v)},
            )
        return v

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, v: object) -> datetime:
        return _event_time(v)


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
        if _pollutants(self).count(None) == len(POLLUTANT_FIELDS):
            msg = f"an air reading needs at least one of {', '.join(POLLUTANT_FIELDS)}"
            raise ValueError(msg)
        return self


POLLUTANT_FIELDS = ("pm2_5_ugm3", "pm10_ugm3", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb")
#: An air payload's pollutant values, in that order (every reading is checked: in C).
_pollutants = attrgetter(*POLLUTANT_FIELDS)


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
    sample_rate_hz: float = Field(description="samples per second, one of SEISMIC_RATES_HZ")
    x_gal: Component
    y_gal: Component
    z_gal: Component
    #: Optional station summary over the packet.
    pga_gal: float | None = Field(None, ge=0, le=4000, description="peak ground acceleration")
    pgv_cms: float | None = Field(None, ge=0, le=1000, description="peak ground velocity, cm/s")

    @field_validator("sample_rate_hz")
    @classmethod
    def _known_rate(cls, v: float) -> float:
        if v not in SEISMIC_RATES_HZ:
            raise PydanticCustomError(
                "out_of_range",
                "sample_rate_hz {v} is not one of {rates} Hz",
                {"v": v, "rates": ", ".join(f"{r:g}" for r in SEISMIC_RATES_HZ)},
            )
        return v

    @model_validator(mode="after")
    def _same_length(self) -> SeismicPayload:
        n = {len(self.x_gal), len(self.y_gal), len(self.z_gal)}
        if len(n) != 1:
            msg = "x_gal, y_gal and z_gal must hold the same number of samples"
            raise ValueError(msg)
        if self.duration_s > MAX_PACKET_S:
            raise PydanticCustomError(
                "out_of_range",
                "a packet of {n} samples at {rate} Hz covers {s} s; at most {max} s",
                {
                    "n": len(self.x_gal),
                    "rate": f"{self.sample_rate_hz:g}",
                    "s": f"{self.duration_s:g}",
                    "max": f"{MAX_PACKET_S:g}",
                },
            )
        return self

    @property
    def duration_s(self) -> float:
        """Seconds the packet covers: its last sample was taken at ``ts + duration_s``
        minus one sample period."""
        return len(self.x_gal) / self.sample_rate_hz


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

    def to_record(self) -> bytes:
        """The value of this reading's Kafka record on ``readings.{kind}``: JSON, and the
        payload as the device contract has it (a field without a value left out).

        The bytes of ``model_dump_json(exclude_none=True)``, made as the reading's other
        fields and then its payload through the payload's own model: ``data`` is the last
        field, and serialising it through the union costs ingest a third of the record
        (a seismic packet: ~30 -> ~20 us)."""
        head = _SERIALIZE(self, exclude_none=True, exclude=_DATA_FIELD)
        data = self.data
        return b'%b,"data":%b}' % (
            head[:-1],
            data.__pydantic_serializer__.to_json(data, exclude_none=True),
        )

    @classmethod
    def from_record(cls, value: bytes) -> Reading:
        """A reading from its Kafka record (:meth:`to_record`), validated again: anyone
        who may produce to the topic could have written it."""
        return cls.model_validate_json(value)


#: :meth:`Reading.to_record`'s pieces: the reading without its payload (the last field).
_SERIALIZE = Reading.__pydantic_serializer__.to_json
_DATA_FIELD = {"data"}
if list(Reading.model_fields)[-1] != "data":  # pragma: no cover - a guard for the splice
    raise RuntimeError("Reading.data must stay the last field: to_record splices it last")

#: The payload model of each reading kind (the last segment of a device topic).
PAYLOAD_MODELS: dict[str, type[AirPayload | WaterPayload | SeismicPayload]] = {
    "air": AirPayload,
    "water": WaterPayload,
    "seismic": SeismicPayload,
}


# --- records on readings.{kind} -----------------------------------------------------------

#: A readings record holds at most this many bytes of readings (Kafka refuses records
#: over 1 MB by default; a seismic packet is a few KB).
MAX_RECORD_BYTES = 256 * 1024
_LINE = b"\n"


def record_value(lines: Sequence[bytes]) -> bytes:
    """One record's value from one-reading records (:meth:`Reading.to_record`, which
    never hold a newline: JSON escapes it inside strings)."""
    return _LINE.join(lines)


def record_lines(value: bytes) -> list[bytes]:
    """The one-reading records a record holds, in order."""
    return value.split(_LINE)


def chunked(lines: Iterable[bytes], max_bytes: int = MAX_RECORD_BYTES) -> list[list[bytes]]:
    """``lines`` in order, cut into groups of at most ``max_bytes`` (newlines counted);
    a line longer than that alone."""
    out: list[list[bytes]] = []
    size = max_bytes + 1
    for line in lines:
        if size + 1 + len(line) > max_bytes:
            out.append([])
            size = -1
        out[-1].append(line)
        size += 1 + len(line)
    return out


class RecordReadings(NamedTuple):
    """What one record held: its readings in order, and why each line that is no
    reading was refused (``line index: error``). ``trusted``: read as ingest wrote it."""

    readings: list[Reading]
    refused: list[str]
    trusted: bool


def decode_record(value: bytes, *, trusted: bool) -> RecordReadings:
    """The readings of a record on ``readings.{kind}``.

    A ``trusted`` record (it carries ingest's mark) is read as ingest wrote it: every
    line a reading that ingest validated, so the models are assembled without validating
    them again (about half the CPU). Otherwise each line is validated as
    :meth:`Reading.from_record` does, and a line that is no reading is refused alone."""
    if trusted:
        docs = json.loads(b"[" + value.replace(_LINE, b",") + b"]")
        return RecordReadings([_trusted(d) for d in docs], [], True)
    readings: list[Reading] = []
    refused: list[str] = []
    for i, line in enumerate(record_lines(value)):
        try:
            readings.append(Reading.from_record(line))
        except ValidationError as exc:
            refused.append(f"line {i}: {exc.errors(include_url=False)[:3]}")
    return RecordReadings(readings, refused, False)


M = TypeVar("M", bound=BaseModel)


def assemble(model: type[M], values: dict[str, Any]) -> M:
    """A model from values already valid and complete (every field present, in the
    model's field order), without validation: what ``model_construct`` does, minus its
    per-field default handling (a third of its cost). For values the caller has just
    validated or made itself (ingest's reading of a payload it validated, a trusted
    record's lines); ``values`` becomes the model's ``__dict__``."""
    m = model.__new__(model)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


#: Every payload field and its default, per kind: a record's line leaves None fields out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    kind: {name: f.default for name, f in model.model_fields.items()}
    for kind, model in (("air", AirPayload), ("water", WaterPayload), ("seismic", SeismicPayload))
}
_PAYLOADS: dict[str, type[BaseModel]] = {
    "air": AirPayload,
    "water": WaterPayload,
    "seismic": SeismicPayload,
}
#: Device id -> (the record's location values, the Location made of them).
_LOCATIONS: dict[str, tuple[dict[str, Any], Location]] = {}
#: Times already read: a reading's event time is its payload's ``ts``, and one ingest
#: batch shares a receive time. Emptied when it holds :data:`_TIMES_KEPT`.
_TIMES: dict[str, datetime] = {}
_TIMES_KEPT = 4096


def _time(text: str) -> datetime:
    dt = _TIMES.get(text)
    if dt is None:
        if len(_TIMES) >= _TIMES_KEPT:
            _TIMES.clear()
        dt = _TIMES[text] = datetime.fromisoformat(text)
    return dt


def _trusted(doc: dict[str, Any]) -> Reading:
    """A reading from one line of a trusted record (ingest's :meth:`Reading.to_record`)."""
    data = doc["data"]
    kind = data["kind"]
    data["ts"] = _time(data["ts"])
    payload = assemble(_PAYLOADS[kind], {**_DEFAULTS[kind], **data})
    device = doc["device_id"]
    loc = doc["location"]
    cached = _LOCATIONS.get(device)
    if cached is None or cached[0] != loc:
        cached = _LOCATIONS[device] = (loc, assemble(Location, loc))
    return assemble(
        Reading,
        {
            "reading_id": doc["reading_id"],
            "device_id": device,
            "kind": doc["kind"],
            "event_time": _time(doc["event_time"]),
            "received_at": _time(doc["received_at"]),
            "late": doc.get("late", False),
            "location": cached[1],
            "data": payload,
        },
    )
