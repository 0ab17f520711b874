"""InfluxDB points, built without I/O, through the storage schema.

Every builder is a pure function of a reading or a detector's figures. The timestamp is
always an event time (the reading's, or the detector's stream clock), never the wall
clock, so processing the same reading twice writes the same point (same series, same
time) and InfluxDB keeps one. The point type and its encoder are the core's
(:mod:`civic_iot.storage.points`); measurements, buckets, tag and field names and field
types are the schema's (:mod:`civic_iot.storage.schema`, which ``docs/storage.md`` is
generated from): :meth:`~civic_iot.storage.schema.Measurement.point` refuses a name the
schema lacks and casts each field to its one type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.readings import (
    POLLUTANT_FIELDS,
    AirPayload,
    Reading,
    SeismicPayload,
    WaterPayload,
)
from civic_iot.settings import InfluxSettings
from civic_iot.storage import schema, waveform
from civic_iot.storage.points import FieldValue, Point
from civic_iot.storage.schema import windowed
from civic_iot.times import to_ns
from processors.detectors.air import AirFigures, TownshipLevel
from processors.detectors.health import Issue
from processors.detectors.intensity import cwa_intensity, intensity_ordinal
from processors.detectors.quake import QuakeEvent
from processors.detectors.seismic import PacketResult
from processors.detectors.state import frozen
from processors.detectors.water import (
    DebrisFlowFigures,
    GaugeFigures,
    RainFigures,
    StrongShaking,
)

#: Weather fields an air sensor may send besides its pollutants (stored raw as sent).
AIR_READING_FIELDS = (*POLLUTANT_FIELDS, "temperature_c", "humidity_pct")
WATER_READING_FIELDS = ("water_level_m", "flood_depth_cm", "rainfall_mm")


def _kept(points: Iterable[Point | None]) -> list[Point]:
    return [p for p in points if p is not None]


# --- raw readings -----------------------------------------------------------------------


def water_sensor(data: WaterPayload, registered: str | None = None) -> str:
    """The ``sensor`` tag of a water reading: the registry's, else what it carries."""
    if registered in ("river", "flood", "rain"):
        return registered
    if data.flood_depth_cm is not None:
        return "flood"
    if data.water_level_m is not None:
        return "river"
    return "rain"


def reading_points(
    reading: Reading,
    buckets: InfluxSettings,
    *,
    sensor: str | None = None,
    components: NDArray[np.float64] | None = None,
) -> list[Point]:
    """The raw points of one reading: ``air`` or ``water`` in ``bucket_readings``, or one
    ``seismic_packet`` per packet in ``bucket_seismic``. ``sensor``: the registry's;
    ``components``: a seismic packet's samples as a (3, n) array, if already made."""
    loc = reading.location
    data = reading.data
    t = reading.event_time_ns
    if isinstance(data, AirPayload):
        # Only the values sent (most sensors send a few of these): Measurement.point
        # leaves None out anyway.
        fields: dict[str, FieldValue | None] = {
            f: v for f in AIR_READING_FIELDS if (v := getattr(data, f)) is not None
        }
        fields["lat"], fields["lon"], fields["late"] = loc.lat, loc.lon, reading.late
        tags = {"device": reading.device_id, "township": loc.township, "kind": "air"}
        p = schema.AIR.point(buckets, tags, fields, t)
        return [p] if p is not None else []
    if isinstance(data, WaterPayload):
        fields = {f: v for f in WATER_READING_FIELDS if (v := getattr(data, f)) is not None}
        fields |= {"lat": loc.lat, "lon": loc.lon, "late": reading.late}
        tags = {
            "device": reading.device_id,
            "township": loc.township,
            "kind": "water",
            "sensor": water_sensor(data, sensor),
        }
        return _kept([schema.WATER.point(buckets, tags, fields, t)])
    return _kept(
        [seismic_packet_point(reading.device_id, loc.township, data, t, buckets, components)]
    )


def seismic_packet_point(
    device: str,
    township: str,
    data: SeismicPayload,
    t0_ns: int,
    buckets: InfluxSettings,
    components: NDArray[np.float64] | None = None,
) -> Point | None:
    """One ``seismic_packet`` point per packet at its first sample (``t0_ns``): each
    component's samples packed (:func:`civic_iot.storage.waveform.pack_rows`), the rate,
    the number of samples and each component's largest absolute sample (gal).
    ``components``: the packet's samples as a (3, n) array (x, y, z rows, gal) when the
    caller has made it already."""
    if components is None:
        components = np.array((data.x_gal, data.y_gal, data.z_gal), dtype=np.float64)
    x, y, z = waveform.pack_rows(components)
    px, py, pz = waveform.peaks(components)
    fields: dict[str, FieldValue | None] = {
        "x_gal": x,
        "y_gal": y,
        "z_gal": z,
        "sample_rate_hz": data.sample_rate_hz,
        "samples": len(data.x_gal),
        "x_peak_gal": px,
        "y_peak_gal": py,
        "z_peak_gal": pz,
    }
    return schema.SEISMIC_PACKET.point(
        buckets, {"device": device, "township": township}, fields, t0_ns
    )


# --- derived figures --------------------------------------------------------------------


@frozen
class Where:
    """Device identity as the derived points tag and locate it."""

    device: str
    township: str
    lat: float
    lon: float

    @classmethod
    def of(cls, reading: Reading) -> Where:
        loc = reading.location
        return cls(reading.device_id, loc.township, float(loc.lat), float(loc.lon))

    def tags(self, **extra: str) -> dict[str, str | None]:
        return {"device": self.device, "township": self.township, **extra}


#: The averaged concentrations ``air_quality`` stores (names of the storage rule).
_AIR_QUALITY_FIGURES = (
    windowed("pm2_5_ugm3", "1h"),
    windowed("pm2_5_ugm3", "rt"),
    windowed("pm10_ugm3", "rt"),
    windowed("o3_ppb", "8h"),
    windowed("co_ppm", "8h"),
)


def air_quality_point(where: Where, figures: AirFigures, buckets: InfluxSettings) -> Point | None:
    """``air_quality``: AQI, category, leading pollutant, level and the AQI inputs, named
    and measured as the readings are (``pm2_5_ugm3_rt``, ``o3_ppb_8h`` ...)."""
    aqi = figures.aqi
    conc = figures.concentrations
    fields: dict[str, FieldValue | None] = (
        {"aqi": aqi.aqi, "category": aqi.category.name_en, "leading": aqi.leading_pollutant}
        if aqi
        else {"aqi": None, "category": None, "leading": None}
    )
    fields["level"] = figures.level
    for name in _AIR_QUALITY_FIGURES:
        fields[name] = conc.get(name)
    fields["lat"], fields["lon"] = where.lat, where.lon
    return schema.AIR_QUALITY.point(buckets, where.tags(), fields, to_ns(figures.as_of))


def township_air_point(
    township: str, update: TownshipLevel, at: datetime, buckets: InfluxSettings
) -> Point | None:
    """``township_air``: the township's level, agreeing sensors and their highest AQI."""
    fields: dict[str, FieldValue | None] = {
        "level": update.level,
        "sensors_agreeing": len(update.devices),
        "max_aqi": update.aqi,
    }
    return schema.TOWNSHIP_AIR.point(buckets, {"township": township}, fields, to_ns(at))


def water_level_point(
    where: Where, sensor: str, figures: GaugeFigures, buckets: InfluxSettings
) -> Point | None:
    """``water_level``: depth (flood, cm) or stage (river, m), rate of rise (cm per 10
    min), level and rise level."""
    value_name = "flood_depth_cm" if sensor == "flood" else "water_level_m"
    fields: dict[str, FieldValue | None] = {
        value_name: figures.value,
        "rise_cm_per_10min": figures.rise_cm_per_10min,
        "level": figures.level,
        "rise_level": figures.rise_level,
        "lat": where.lat,
        "lon": where.lon,
    }
    return schema.WATER_LEVEL.point(
        buckets, where.tags(sensor=sensor), fields, to_ns(figures.as_of)
    )


def rain_point(
    where: Where, rain: RainFigures, debris: DebrisFlowFigures | None, buckets: InfluxSettings
) -> Point | None:
    """``rain``: accumulations of ``rainfall_mm`` (mm), CWA rain class, and the
    debris-flow figures: RTI (mm^2/h), the event's rain (mm), level, and the threshold in
    use (mm) with which one it is (``r70``, or ``r50`` after strong shaking)."""
    fields: dict[str, FieldValue | None] = {
        windowed("rainfall_mm", "1h"): rain.rainfall_mm_1h,
        windowed("rainfall_mm", "3h"): rain.rainfall_mm_3h,
        windowed("rainfall_mm", "24h"): rain.rainfall_mm_24h,
        "rain_class": rain.level,
        "lat": where.lat,
        "lon": where.lon,
    }
    if debris is not None:
        fields |= {
            "rti": debris.rti,
            windowed("rainfall_mm", "event"): debris.rainfall_mm_event,
            "debris_flow_level": debris.level,
            "debris_flow_threshold_mm": debris.threshold_mm,
            "debris_flow_threshold_kind": debris.threshold_kind,
        }
    return schema.RAIN.point(buckets, where.tags(), fields, to_ns(rain.as_of))


def strong_shaking_point(
    device: str, township: str, shaking: StrongShaking, buckets: InfluxSettings
) -> Point | None:
    """``strong_shaking`` at the earthquake's origin time (as located when notified): a
    water device whose rain is judged against R50 until ``r50_until``, the earthquake and
    the township's estimated intensity. One point per notice: a higher estimate of the
    same earthquake adds one (the origin may have moved a little in between)."""
    return schema.STRONG_SHAKING.point(
        buckets,
        {"device": device, "township": township, "event_id": shaking.event_id},
        {
            "intensity": shaking.intensity,
            "intensity_rank": intensity_ordinal(shaking.intensity),
            "r50_until": datetime.fromtimestamp(shaking.until_s, UTC).isoformat(timespec="seconds"),
        },
        round(shaking.since_s * 1e9),
    )


def seismic_station_point(
    where: Where, result: PacketResult, t0_ns: int, buckets: InfluxSettings
) -> Point | None:
    """``seismic_station`` at the packet's first sample: the packet's PGA (gal) and PGV
    (cm/s), the CWA intensity they make, and whether the station is triggered (a trigger
    in this packet or its event window open)."""
    pga, pgv = result.packet_pga_gal, result.packet_pgv_cms
    level = cwa_intensity(pga, pgv)
    fields: dict[str, FieldValue | None] = {
        "pga_gal": pga,
        "pgv_cms": pgv,
        "intensity": level,
        "intensity_rank": intensity_ordinal(level),
        "triggered": result.triggered or result.in_event,
        "lat": where.lat,
        "lon": where.lon,
    }
    return schema.SEISMIC_STATION.point(buckets, where.tags(), fields, t0_ns)


def quake_points(event: QuakeEvent, buckets: InfluxSettings) -> list[Point]:
    """``quake_event`` and its ``quake_cell`` points at the event's stream time.

    Cells share the series of their event and township, so each gets its own timestamp:
    ``computed_at + i`` ns, ``i`` the cell's index (cells come in a fixed grid order).
    """
    t = round(event.computed_at_s * 1e9)
    origin = datetime.fromtimestamp(event.origin_s, UTC).isoformat(timespec="milliseconds")
    out = [
        schema.QUAKE_EVENT.point(
            buckets,
            {"event_id": event.event_id},
            {
                "lat": event.lat,
                "lon": event.lon,
                "depth_km": event.depth_km,
                "magnitude": event.magnitude,
                "n_stations": event.n_stations,
                "max_intensity_rank": intensity_ordinal(event.max_intensity),
                "origin_time": origin,
            },
            t,
        )
    ]
    out += [
        schema.QUAKE_CELL.point(
            buckets,
            {"event_id": event.event_id, "township": cell.township},
            {
                "lat": cell.lat,
                "lon": cell.lon,
                "intensity_rank": intensity_ordinal(cell.intensity),
                "intensity": cell.intensity,
                "s_wave_s": cell.s_wave_s,
            },
            t + i,
        )
        for i, cell in enumerate(event.cells)
    ]
    return _kept(out)


def sensor_health_point(
    device: str,
    township: str,
    issue: Issue,
    *,
    active: bool,
    detail: str,
    at: datetime,
    buckets: InfluxSettings,
) -> Point | None:
    """``sensor_health``: an issue opened (``active``) or cleared at event time ``at``."""
    return schema.SENSOR_HEALTH.point(
        buckets,
        {"device": device, "township": township, "issue": issue},
        {"active": active, "detail": detail},
        to_ns(at),
    )


def pipeline_point(
    instance: str, counters: Mapping[str, int | float], at_ns: int, buckets: InfluxSettings
) -> Point | None:
    """``pipeline`` statistics of this worker (``process=worker``); counters the schema
    does not list are left out (the schema is what dashboards may rely on)."""
    m = schema.PIPELINE
    fields: dict[str, FieldValue | None] = {k: v for k, v in counters.items() if k in m.field_names}
    return m.point(buckets, {"process": "worker", "instance": instance}, fields, at_ns)


def deadletter_point(record: Mapping[str, object], buckets: InfluxSettings) -> Point | None:
    """``deadletter`` from ingest's dead-letter record (``ingest.deadletter``), at its
    receive time. The raw bytes stay on the Kafka topic; the point is for counting."""
    topic = str(record.get("topic") or "")
    parts = topic.split("/")
    kind = parts[2] if len(parts) >= 3 and parts[2] in ("air", "water", "seismic") else "unknown"
    received = datetime.fromisoformat(str(record["received_at"]))
    device = record.get("device_id")
    return schema.DEADLETTER.point(
        buckets,
        {"reason": str(record.get("reason") or "unknown"), "kind": kind},
        {
            "count": 1,
            "device": None if device is None else str(device),
            "error": str(record.get("error") or "")[:500],
        },
        to_ns(received),
    )
