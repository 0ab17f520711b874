"""The InfluxDB layout, written once: every measurement, its bucket, tags and fields.

Per measurement: the bucket it lives in (a role: ``readings``, ``seismic``, ``derived``,
``alerts``; the bucket's name is the ``CIVIC_INFLUX__BUCKET_<ROLE>`` setting), its tags,
its fields with type and unit, what its timestamp is and what writes it. The point
builders (:mod:`processors.points`, the alert service's) build points through
:meth:`Measurement.point`, which refuses a name this module does not list and gives every
field its one type (InfluxDB refuses a point whose field changes type within a shard);
``deploy/grafana/build.py`` names measurements and fields through it; the tables of
``docs/storage.md`` are generated from it (``python -m civic_iot.storage.schema``, and a
unit test fails when they differ).

One name per quantity, from payload to alert: a measured quantity keeps the name the
device contract gives it, with its unit (``pm2_5_ugm3``, ``flood_depth_cm``,
``water_level_m``, ``rainfall_mm``); a figure derived from it over a window is that name
plus the window (:func:`windowed`): ``pm2_5_ugm3_1h`` is the 1-hour mean of PM2.5,
``rainfall_mm_24h`` the 24-hour accumulation of the rain reports. Detectors, stored
fields, township reports, alert candidates (``metric``, ``evidence``) and the thresholds
file all use these names.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from civic_iot.settings import REPO_ROOT, InfluxSettings
from civic_iot.storage.points import ENCODERS, FieldValue, Point, field_name, series_head

__all__ = [
    "MEASUREMENTS",
    "BucketRole",
    "FieldSpec",
    "Measurement",
    "TagSpec",
    "Window",
    "measurement",
    "render_markdown",
    "windowed",
]

BucketRole = Literal["readings", "seismic", "derived", "alerts"]
BUCKET_ROLES: tuple[BucketRole, ...] = ("readings", "seismic", "derived", "alerts")
FieldType = Literal["float", "int", "bool", "string"]

#: Windows a derived quantity is named by: hours; ``rt`` the MOENV real-time average
#: (0.5 x 12-hour mean + 0.5 x 4-hour mean); ``today`` the local day so far; ``event`` a
#: rain event (debris flow).
Window = Literal["1h", "3h", "4h", "8h", "12h", "24h", "rt", "today", "event"]


def windowed(quantity: str, window: Window) -> str:
    """The name of a quantity over a window: ``windowed("pm2_5_ugm3", "1h")`` is
    ``pm2_5_ugm3_1h`` (unit unchanged: the mean or sum of that quantity)."""
    return f"{quantity}_{window}"


_CAST: Mapping[FieldType, Callable[[FieldValue], FieldValue]] = {
    "float": float,
    "int": int,
    "bool": bool,
    "string": str,
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field: name, type and unit (empty for none), and a note for the docs."""

    name: str
    type: FieldType = "float"
    unit: str = ""
    doc: str = ""


@dataclass(frozen=True, slots=True)
class TagSpec:
    """A tag and, when it takes a few known values, those values."""

    name: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement: where it lives, its series key and fields, what writes it."""

    name: str
    bucket: BucketRole
    tags: tuple[TagSpec, ...]
    fields: tuple[FieldSpec, ...]
    #: What the timestamp is.
    time: str
    #: Which process (and function) writes it.
    written_by: str
    doc: str = ""
    _tags: frozenset[str] = field(init=False, repr=False, compare=False)
    #: The InfluxSettings attribute naming the bucket (``bucket_<role>``).
    _bucket_setting: str = field(init=False, repr=False, compare=False)
    #: Field name -> (its cast, ``name=`` escaped, the encoder of its type).
    _encode: dict[str, tuple[Callable[[FieldValue], FieldValue], str, Callable[[Any], str]]] = (
        field(init=False, repr=False, compare=False)
    )
    #: The tags as a builder passed them (items, in its order) -> the point's tags
    #: (sorted, empty ones left out) and its series, escaped: a few thousand devices
    #: write the same series again and again. Emptied when it holds ``_KEPT`` series.
    _series: dict[tuple[tuple[str, str | None], ...], tuple[tuple[tuple[str, str], ...], str]] = (
        field(init=False, repr=False, compare=False)
    )

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            msg = f"measurement {self.name}: a field is listed twice in {names}"
            raise ValueError(msg)
        object.__setattr__(self, "_tags", frozenset(t.name for t in self.tags))
        encode = {
            f.name: (_CAST[f.type], f"{field_name(f.name)}=", ENCODERS[_CAST[f.type]])  # type: ignore[index]
            for f in self.fields
        }
        object.__setattr__(self, "_encode", encode)
        object.__setattr__(self, "_series", {})
        object.__setattr__(self, "_bucket_setting", f"bucket_{self.bucket}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tags)

    def field(self, name: str) -> FieldSpec:
        """The spec of a field; a name the schema lacks raises ``KeyError``."""
        for f in self.fields:
            if f.name == name:
                return f
        msg = f"measurement {self.name} has no field {name!r} (civic_iot/storage/schema.py)"
        raise KeyError(msg)

    def bucket_name(self, buckets: InfluxSettings) -> str:
        """The configured name of this measurement's bucket."""
        name: str = getattr(buckets, self._bucket_setting)
        return name

    def point(
        self,
        buckets: InfluxSettings,
        tags: Mapping[str, str | None],
        fields: Mapping[str, FieldValue | None],
        time_ns: int,
    ) -> Point | None:
        """A point of this measurement, every field cast to its schema type, and its
        line protocol (:meth:`Point.line`) made at once.

        Empty tags, ``None`` fields and non-finite floats are left out (InfluxDB accepts
        none of them); ``None`` when no field is left. A tag or field name the schema
        does not list raises ``KeyError``: a builder and the schema disagree.
        """
        encode = self._encode
        kept: list[tuple[str, FieldValue]] = []
        body: list[str] = []
        isfinite = math.isfinite
        for k, v in fields.items():
            spec = encode.get(k)
            if spec is None:
                self.field(k)  # raises, naming the measurement
                continue  # pragma: no cover
            if v is None:
                continue
            cast, prefix, enc = spec
            # Most values already have their type: skip the cast then (bool is an int).
            value = v if type(v) is cast else cast(v)
            if cast is float and not isfinite(value):  # type: ignore[arg-type]
                continue
            kept.append((k, value))
            body.append(prefix + enc(value))
        if not kept:
            return None
        key = tuple(tags.items())
        series = self._series.get(key)
        if series is None:
            series = self._series_of(tags)
            if len(self._series) >= _KEPT:
                self._series.clear()
            self._series[key] = series
        point_tags, head = series
        return Point(
            getattr(buckets, self._bucket_setting),
            self.name,
            point_tags,
            tuple(kept),
            time_ns,
            f"{head} {','.join(body)} {time_ns}",
        )

    def _series_of(self, tags: Mapping[str, str | None]) -> tuple[tuple[tuple[str, str], ...], str]:
        known = self._tags
        for k in tags:
            if k not in known:
                unknown = sorted(set(tags) - known)
                msg = f"measurement {self.name} has no tag(s) {unknown} (schema.py)"
                raise KeyError(msg)
        point_tags = tuple(sorted((k, v) for k, v in tags.items() if v))
        return point_tags, series_head(self.name, point_tags)


#: Series a measurement keeps escaped (:attr:`Measurement._series`).
_KEPT = 100_000


def _f(name: str, unit: str = "", doc: str = "") -> FieldSpec:
    return FieldSpec(name, "float", unit, doc)


def _i(name: str, doc: str = "") -> FieldSpec:
    return FieldSpec(name, "int", "", doc)


def _s(name: str, doc: str = "") -> FieldSpec:
    return FieldSpec(name, "string", "", doc)


def _b(name: str, doc: str = "") -> FieldSpec:
    return FieldSpec(name, "bool", "", doc)


_DEVICE = (TagSpec("device"), TagSpec("township"))
_LATLON = (_f("lat", "deg"), _f("lon", "deg"))
_INTENSITY_RANK = "0-9, the CWA level's rank"
_EVENT_TIME = "event time"

AIR = Measurement(
    "air",
    "readings",
    (*_DEVICE, TagSpec("kind", ("air",))),
    (
        _f("pm2_5_ugm3", "ug/m3"),
        _f("pm10_ugm3", "ug/m3"),
        _f("o3_ppb", "ppb"),
        _f("co_ppm", "ppm"),
        _f("no2_ppb", "ppb"),
        _f("so2_ppb", "ppb"),
        _f("temperature_c", "C"),
        _f("humidity_pct", "%"),
        *_LATLON,
        _b("late", "older than the lateness when it arrived"),
    ),
    _EVENT_TIME,
    "processors, air agent (processors.points.reading_points)",
    "Raw air readings as sent (the fields the reading carries).",
)
WATER = Measurement(
    "water",
    "readings",
    (*_DEVICE, TagSpec("kind", ("water",)), TagSpec("sensor", ("river", "flood", "rain"))),
    (
        _f("water_level_m", "m", "river stage as an elevation"),
        _f("flood_depth_cm", "cm"),
        _f("rainfall_mm", "mm", "rain since the previous report"),
        *_LATLON,
        _b("late"),
    ),
    _EVENT_TIME,
    "processors, water agent (processors.points.reading_points)",
    "Raw water readings as sent (the fields the reading carries).",
)
DEADLETTER = Measurement(
    "deadletter",
    "readings",
    (TagSpec("reason"), TagSpec("kind", ("air", "water", "seismic", "unknown"))),
    (_i("count", "1"), _s("device"), _s("error", "first 500 characters")),
    "receive time",
    "processors, dead-letter agent (processors.points.deadletter_point)",
    "One per reading ingest refused; the raw bytes stay on the Kafka dead-letter topic.",
)
SEISMIC_PACKET = Measurement(
    "seismic_packet",
    "seismic",
    _DEVICE,
    (
        _s("x_gal", "east, gal: the packet's samples packed (civic_iot.storage.waveform)"),
        _s("y_gal", "north, gal: packed"),
        _s("z_gal", "vertical, gal: packed"),
        _f("sample_rate_hz", "Hz"),
        _i("samples", "samples per component"),
        _f("x_peak_gal", "gal", "largest absolute sample of the packet"),
        _f("y_peak_gal", "gal"),
        _f("z_peak_gal", "gal"),
    ),
    "the packet's first sample (sample i at t0 + i / sample_rate_hz)",
    "processors, seismic agent (processors.points.seismic_packet_point)",
    "Raw acceleration, one point per packet: each component's samples as float32, "
    "little-endian, base64 (civic_iot.storage.waveform.unpack reads them back); the peaks "
    "are numeric so Flux aggregates without unpacking.",
)
AIR_QUALITY = Measurement(
    "air_quality",
    "derived",
    _DEVICE,
    (
        _i("aqi"),
        _s("category", "MOENV category, English"),
        _s("leading", "leading pollutant: pm2_5, pm10, o3_8h, o3_1h, co_8h, so2_1h ..."),
        _i("level", "alert level 0-3"),
        _f("pm2_5_ugm3_1h", "ug/m3", "mean of the current hour"),
        _f("pm2_5_ugm3_rt", "ug/m3", "MOENV real-time: 0.5 x 12 h mean + 0.5 x 4 h mean"),
        _f("pm10_ugm3_rt", "ug/m3"),
        _f("o3_ppb_8h", "ppb", "8-hour moving average"),
        _f("co_ppm_8h", "ppm", "8-hour moving average"),
        *_LATLON,
    ),
    "the sensor's newest event time",
    "processors, air agent (processors.points.air_quality_point)",
    "The AQI inputs and the AQI of one sensor (MOENV 2025 breakpoints by default).",
)
TOWNSHIP_AIR = Measurement(
    "township_air",
    "derived",
    (TagSpec("township"),),
    (_i("level", "0-3"), _i("sensors_agreeing"), _i("max_aqi")),
    "the report's event time",
    "processors, township agent (processors.points.township_air_point)",
    "A township's air level, decided when enough sensors agree.",
)
WATER_LEVEL = Measurement(
    "water_level",
    "derived",
    (*_DEVICE, TagSpec("sensor", ("river", "flood"))),
    (
        _f("flood_depth_cm", "cm", "flood gauges"),
        _f("water_level_m", "m", "river gauges"),
        _f("rise_cm_per_10min", "cm/10min", "least-squares rate of rise"),
        _i("level", "0-3"),
        _i("rise_level", "0-1: rising at least the gauge's rise line"),
        *_LATLON,
    ),
    "the gauge's newest event time",
    "processors, water agent (processors.points.water_level_point)",
)
RAIN = Measurement(
    "rain",
    "derived",
    _DEVICE,
    (
        _f("rainfall_mm_1h", "mm"),
        _f("rainfall_mm_3h", "mm"),
        _f("rainfall_mm_24h", "mm"),
        _i("rain_class", "CWA class 0-4"),
        _f("rti", "mm2/h", "rainfall triggering index"),
        _f("rainfall_mm_event", "mm", "rain of the current rain event"),
        _i("debris_flow_level", "0-2"),
        _f("debris_flow_threshold_mm", "mm", "the threshold in use, when there is one"),
        _s("debris_flow_threshold_kind", "r70, or r50 after strong shaking"),
        *_LATLON,
    ),
    "the gauge's newest event time",
    "processors, water agent (processors.points.rain_point)",
    "Accumulations, CWA rain class and the debris-flow figures of a rain gauge.",
)
STRONG_SHAKING = Measurement(
    "strong_shaking",
    "derived",
    (*_DEVICE, TagSpec("event_id")),
    (_s("intensity"), _i("intensity_rank", _INTENSITY_RANK), _s("r50_until", "ISO 8601")),
    "the earthquake's origin time",
    "processors, shaking agent (processors.points.strong_shaking_point)",
    "A water device whose rain is judged against R50 after an earthquake.",
)
SEISMIC_STATION = Measurement(
    "seismic_station",
    "derived",
    _DEVICE,
    (
        _f("pga_gal", "gal"),
        _f("pgv_cms", "cm/s"),
        _s("intensity", "CWA level"),
        _i("intensity_rank", _INTENSITY_RANK),
        _b("triggered"),
        *_LATLON,
    ),
    "the packet's first sample",
    "processors, seismic agent (processors.points.seismic_station_point)",
)
SEISMIC_PEAK_1M = Measurement(
    "seismic_peak_1m",
    "derived",
    _DEVICE,
    (_f("x_gal", "gal"), _f("y_gal", "gal"), _f("z_gal", "gal")),
    "the end of each minute",
    "InfluxDB task civic-seismic-downsample-1m (ops.influx_setup)",
    "1-minute peak of the absolute raw samples (the largest packet peak of the minute).",
)
QUAKE_EVENT = Measurement(
    "quake_event",
    "derived",
    (TagSpec("event_id"),),
    (
        *_LATLON,
        _f("depth_km", "km"),
        _f("magnitude"),
        _i("n_stations"),
        _i("max_intensity_rank", _INTENSITY_RANK),
        _s("origin_time", "ISO 8601"),
    ),
    "the associator's stream time of the estimate",
    "processors, quake agent (processors.points.quake_points)",
)
QUAKE_CELL = Measurement(
    "quake_cell",
    "derived",
    (TagSpec("event_id"), TagSpec("township")),
    (
        *_LATLON,
        _i("intensity_rank", _INTENSITY_RANK),
        _s("intensity"),
        _f("s_wave_s", "s", "seconds from the estimate to the S wave at the cell centre"),
    ),
    "the estimate's stream time + i ns (i: the cell's index in the grid)",
    "processors, quake agent (processors.points.quake_points)",
    "Expected shaking of each 0.1 degree cell.",
)
SENSOR_HEALTH = Measurement(
    "sensor_health",
    "derived",
    (*_DEVICE, TagSpec("issue", ("stuck", "out_of_range", "silent"))),
    (_b("active", "opened (true) or cleared (false)"), _s("detail")),
    _EVENT_TIME,
    "processors, readings agents and the silence watch (processors.points.sensor_health_point)",
)
PIPELINE = Measurement(
    "pipeline",
    "derived",
    (TagSpec("process", ("ingest", "worker", "alerts")), TagSpec("instance")),
    (
        _i("readings_in", "total since start"),
        _i("readings_out", "total since start"),
        _i("deadletters", "total since start"),
        _i("write_errors", "total since start"),
        _i("replayed", "total since start"),
        _i("detector_errors", "total since start"),
        _i("foreign_records", "readings records not written by ingest, total since start"),
        _i("future_records", "readings ahead of the clock, refused, total since start"),
        _i("stale_records", "readings older than the max age, stored only, total since start"),
        _i("bad_records", "readings without finite sample times, total since start"),
        _i("lag", "Kafka consumer lag, messages"),
        _f("latency_p50_ms", "ms"),
        _f("latency_p99_ms", "ms"),
    ),
    "wall clock",
    "processors worker statistics timer (processors.points.pipeline_point)",
)
ALERT = Measurement(
    "alert",
    "alerts",
    (
        TagSpec("hazard"),
        TagSpec("area"),
        TagSpec("msg_type", ("Alert", "Update", "Cancel")),
        TagSpec("severity"),
        TagSpec("status"),
    ),
    (
        _s("identifier"),
        _s("alert_id"),
        _i("sequence"),
        _i("level"),
        _s("headline"),
        _s("reason"),
        _f("latency_ms", "ms", "candidate detected -> issued"),
    ),
    "the message's sent time",
    "alert service (alerts.delivery.alert_point)",
    "Every issued alert message.",
)
DELIVERY = Measurement(
    "delivery",
    "alerts",
    (
        TagSpec("channel", ("mqtt", "webhook")),
        TagSpec("subscriber"),
        TagSpec("outcome", ("delivered", "retry", "failed")),
    ),
    (
        _s("identifier"),
        _i("attempt"),
        _i("status_code"),
        _f("latency_ms", "ms", "issued -> delivered"),
    ),
    "the attempt's end",
    "alert service (alerts.delivery.delivery_point)",
    "Every delivery attempt.",
)
ACK = Measurement(
    "ack",
    "alerts",
    (TagSpec("hazard"), TagSpec("area")),
    (_s("alert_id"), _s("by"), _s("note")),
    "when the acknowledgement was made",
    "alert service (alerts.delivery.ack_point)",
    "An operator's acknowledgement.",
)

MEASUREMENTS: tuple[Measurement, ...] = (
    AIR,
    WATER,
    DEADLETTER,
    SEISMIC_PACKET,
    AIR_QUALITY,
    TOWNSHIP_AIR,
    WATER_LEVEL,
    RAIN,
    STRONG_SHAKING,
    SEISMIC_STATION,
    SEISMIC_PEAK_1M,
    QUAKE_EVENT,
    QUAKE_CELL,
    SENSOR_HEALTH,
    PIPELINE,
    ALERT,
    DELIVERY,
    ACK,
)
_BY_NAME = {m.name: m for m in MEASUREMENTS}


def measurement(name: str) -> Measurement:
    """A measurement by name; an unknown name raises ``KeyError`` naming the known ones."""
    found = _BY_NAME.get(name)
    if found is None:
        msg = f"no measurement {name!r} in the storage schema; known: {sorted(_BY_NAME)}"
        raise KeyError(msg)
    return found


# --- docs/storage.md ----------------------------------------------------------------------

DOC = REPO_ROOT / "docs" / "storage.md"
BEGIN = "<!-- generated by python -m civic_iot.storage.schema: begin -->"
END = "<!-- generated by python -m civic_iot.storage.schema: end -->"


def _field_md(f: FieldSpec) -> str:
    notes = [t for t in (f.type if f.type != "float" else "", f.unit, f.doc) if t]
    return f"`{f.name}`" + (f" ({', '.join(notes)})" if notes else "")


def _tag_md(t: TagSpec) -> str:
    return f"`{t.name}`" + (f" ({'/'.join(t.values)})" if t.values else "")


def render_markdown(measurements: Sequence[Measurement] = MEASUREMENTS) -> str:
    """The per-bucket tables of ``docs/storage.md``."""
    out: list[str] = []
    for role in BUCKET_ROLES:
        ms = [m for m in measurements if m.bucket == role]
        out += [
            f"## `{role}`",
            "",
            f"Bucket setting `CIVIC_INFLUX__BUCKET_{role.upper()}`.",
            "",
            "| measurement | tags | fields | time | written by |",
            "|---|---|---|---|---|",
        ]
        for m in ms:
            fields = ", ".join(_field_md(f) for f in m.fields)
            tags = ", ".join(_tag_md(t) for t in m.tags)
            out.append(f"| `{m.name}` | {tags} | {fields} | {m.time} | {m.written_by} |")
        notes = [f"- `{m.name}`: {m.doc}" for m in ms if m.doc]
        out += ["", *notes, ""] if notes else [""]
    return "\n".join(out).rstrip("\n") + "\n"


def with_tables(doc: str) -> str:
    """``doc`` with the text between the generated-block markers replaced."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        msg = f"docs/storage.md: the markers {BEGIN!r} and {END!r} are missing"
        raise ValueError(msg)
    return f"{head}{BEGIN}\n{render_markdown()}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the tables of docs/storage.md, or with ``--check`` say whether they are stale."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/storage.md is stale")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    new = with_tables(text)
    if args.check:
        if new != text:
            print(f"{args.doc} is stale: run python -m civic_iot.storage.schema", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
