"""InfluxDB rows -> the read API's answers, without I/O.

Rows are what :func:`api.influx.parse_csv` yields: one per point and field (``_time`` in
ns, ``_field``, ``_value`` and the tags), or one per point with every field a column
after a ``pivot``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from api.catalogue import quantities_of
from api.influx import Row, format_ns
from api.models import (
    Acknowledgement,
    AlertMessage,
    AlertRef,
    DeviceStatus,
    HealthIssue,
    Level,
    OpenAlert,
    QuakeCell,
    QuakeEvent,
    Reading,
)
from civic_iot.contracts.alerts import INTENSITY_LEVELS
from civic_iot.registry import Device, Registry
from civic_iot.storage import schema
from civic_iot.storage.schema import Measurement

__all__ = [
    "StoredPoint",
    "acknowledgements",
    "alert_message",
    "device_status",
    "health_issues",
    "last_seen",
    "newest_points",
    "open_alerts",
    "pivoted_point",
    "quake_cell",
    "quake_event",
    "readings",
]

#: A whole point: its tags, time (ns) and fields.
StoredPoint = dict[str, Any]

_META = {"_start", "_stop", "_measurement", "_time", "_field", "_value"}


def newest_points(rows: Iterable[Row], m: Measurement) -> list[StoredPoint]:
    """The newest point of each series of ``m`` from the rows of a per-field ``last()``:
    the fields of the series' newest time (a field absent from that point, whose last row
    is older, is not taken from an older point)."""
    by_series: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for r in rows:
        by_series[tuple(str(r.get(t) or "") for t in m.tag_names)].append(r)
    out: list[StoredPoint] = []
    for series_rows in by_series.values():
        t = max(r["_time"] for r in series_rows)
        p: StoredPoint = {k: v for k, v in series_rows[0].items() if k not in _META}
        p["_time"] = t
        for r in series_rows:
            if r["_time"] == t:
                p[r["_field"]] = r["_value"]
        out.append(p)
    return out


def pivoted_point(row: Row) -> StoredPoint:
    """A pivoted row as a point (InfluxDB's bookkeeping columns dropped)."""
    return {k: v for k, v in row.items() if k not in _META or k == "_time"}


def last_seen(rows: Iterable[Row]) -> dict[str, int]:
    """Each device's newest time among rows of its quantities: a reading carries at
    least one quantity, so this is its newest reading's time."""
    seen: dict[str, int] = {}
    for r in rows:
        dev = r.get("device")
        if dev is not None and r["_time"] > seen.get(dev, -1):
            seen[dev] = r["_time"]
    return seen


def readings(rows: Iterable[Row], device: Device) -> list[Reading]:
    """A device's newest value of each quantity it reports, in the catalogue's order."""
    newest: dict[str, Row] = {}
    for r in rows:
        if r.get("device") != device.id:
            continue
        f = r["_field"]
        if f not in newest or r["_time"] > newest[f]["_time"]:
            newest[f] = r
    return [
        Reading(
            quantity=q.field,
            name=q.name,
            unit=q.unit,
            value=newest[q.field]["_value"],
            at=format_ns(newest[q.field]["_time"]),
        )
        for q in quantities_of(device)
        if q.field in newest and newest[q.field]["_value"] is not None
    ]


def health_issues(rows: Iterable[Row]) -> dict[str, list[HealthIssue]]:
    """Open sensor-health issues by device, from ``last()`` rows of ``sensor_health``."""
    out: dict[str, list[HealthIssue]] = defaultdict(list)
    for p in newest_points(rows, schema.SENSOR_HEALTH):
        if p.get("active") is True:
            out[p["device"]].append(
                HealthIssue(
                    issue=p["issue"], since=format_ns(p["_time"]), detail=p.get("detail") or ""
                )
            )
    return out


def level(point: StoredPoint | None, m: Measurement, field: str) -> Level | None:
    if point is None:
        return None
    figures = {k: v for k, v in point.items() if k in m.field_names and v is not None}
    value = point.get(field)
    return Level(
        measurement=m.name,
        field=field,
        value=int(value) if isinstance(value, int | float) else None,
        at=format_ns(point["_time"]),
        figures=figures,
    )


def device_status(
    device: Device,
    registry: Registry,
    *,
    last_seen_ns: int | None,
    issues: Sequence[HealthIssue],
    level_point: StoredPoint | None,
    level_at: tuple[Measurement, str],
    alerts: Sequence[AlertRef],
) -> dict[str, Any]:
    """The fields of :class:`DeviceStatus` (a dict, so that a detail can add to it)."""
    town = registry.township(device.township)
    if issues:
        health = "degraded"
    elif last_seen_ns is None:
        health = "unknown"
    else:
        health = "ok"
    return {
        "id": device.id,
        "kind": device.kind,
        "sensor": device.sensor,
        "township": device.township,
        "township_name": town.name if town else "",
        "county": town.county if town else "",
        "lat": device.lat,
        "lon": device.lon,
        "elevation_m": device.elevation_m,
        "last_seen": None if last_seen_ns is None else format_ns(last_seen_ns),
        "health": health,
        "issues": list(issues),
        "level": level(level_point, *level_at),
        "open_alerts": [a for a in alerts if a.area == device.township],
    }


def status_model(fields: Mapping[str, Any]) -> DeviceStatus:
    return DeviceStatus(**fields)


# --------------------------------------------------------------------------- alerts


def alert_message(p: StoredPoint) -> AlertMessage:
    """An ``alert`` point as a message."""
    return AlertMessage(
        sent=format_ns(p["_time"]),
        identifier=p.get("identifier") or "",
        alert_id=p.get("alert_id") or "",
        hazard=p.get("hazard") or "",
        area=p.get("area") or "",
        msg_type=p.get("msg_type") or "",
        severity=p.get("severity") or "",
        status=p.get("status") or "",
        sequence=p.get("sequence"),
        level=p.get("level"),
        headline=p.get("headline") or "",
        reason=p.get("reason") or "",
        latency_ms=p.get("latency_ms"),
    )


def acknowledgements(points: Iterable[StoredPoint]) -> dict[str, list[Acknowledgement]]:
    """``ack`` points by alert id, oldest first."""
    out: dict[str, list[Acknowledgement]] = defaultdict(list)
    for p in sorted(points, key=lambda p: p["_time"]):
        out[p.get("alert_id", "")].append(
            Acknowledgement(
                by=p.get("by") or "", note=p.get("note") or "", at=format_ns(p["_time"])
            )
        )
    return out


def open_alerts(
    last_points: Iterable[StoredPoint],
    registry: Registry,
    acks: Mapping[str, list[Acknowledgement]] | None = None,
) -> list[OpenAlert]:
    """The open alerts, from the newest point of every ``alert`` series.

    One alert is open per hazard and area at most (the alert service's lifecycle key),
    so the newest message of each key says whether one is open: anything but a
    ``Cancel``. Its opening is the newest ``Alert`` message of the key with the same alert
    id (each series keeps its own newest point, so the Alert's series still has it).
    Newest first.
    """
    by_key: dict[tuple[str, str], list[StoredPoint]] = defaultdict(list)
    for p in last_points:
        by_key[(p.get("hazard", ""), p.get("area", ""))].append(p)
    out: list[OpenAlert] = []
    for (hazard, area), points in by_key.items():
        newest = max(points, key=lambda p: p["_time"])
        last = alert_message(newest)
        if last.msg_type == "Cancel":
            continue
        opening = [
            p for p in points if p.get("msg_type") == "Alert" and p.get("alert_id") == last.alert_id
        ]
        town = registry.township(area)
        out.append(
            OpenAlert(
                alert_id=last.alert_id,
                key=f"{hazard}:{area}",
                hazard=hazard,
                area=area,
                area_name=town.name if town else "",
                opened=format_ns(min(p["_time"] for p in opening)) if opening else None,
                last=last,
                acknowledgements=(acks or {}).get(last.alert_id, []),
            )
        )
    out.sort(key=lambda a: a.last.sent, reverse=True)
    return out


def alert_ref(a: OpenAlert) -> AlertRef:
    return AlertRef(
        alert_id=a.alert_id,
        hazard=a.hazard,
        area=a.area,
        level=a.last.level or 0,
        severity=a.last.severity,
    )


# --------------------------------------------------------------------------- quakes


def _level_text(rank: object) -> str | None:
    if isinstance(rank, int) and 0 <= rank < len(INTENSITY_LEVELS):
        return INTENSITY_LEVELS[rank]
    return None


def _intensity(text: object, rank: object) -> str | None:
    """A stored CWA level, or the level of its rank when the text is not one."""
    return text if isinstance(text, str) and text in INTENSITY_LEVELS else _level_text(rank)


def quake_event(p: StoredPoint) -> QuakeEvent:
    return QuakeEvent(
        event_id=p.get("event_id") or "",
        origin_time=p.get("origin_time"),
        lat=p.get("lat"),
        lon=p.get("lon"),
        depth_km=p.get("depth_km"),
        magnitude=p.get("magnitude"),
        n_stations=p.get("n_stations"),
        max_intensity=_level_text(p.get("max_intensity_rank")),
        estimated_at=format_ns(p["_time"]),
    )


def quake_cell(p: StoredPoint, estimate_ns: int) -> QuakeCell:
    """A cell; ``s_wave_at`` is the estimate's time plus the cell's ``s_wave_s``."""
    s = p.get("s_wave_s")
    return QuakeCell(
        lat=p.get("lat") or 0.0,
        lon=p.get("lon") or 0.0,
        township=p.get("township"),
        intensity=_intensity(p.get("intensity"), p.get("intensity_rank")),
        intensity_rank=p.get("intensity_rank"),
        s_wave_s=s,
        s_wave_at=None if s is None else format_ns(estimate_ns + round(s * 1e9)),
    )
