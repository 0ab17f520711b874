"""The phone warning of Taiwan's plans, per place: expected shaking and seconds to the S wave.

Pure: no I/O, no clock of its own (``now`` is passed in, epoch seconds). The input is an
earthquake alert message in its JSON form (``civic-iot.alert/1``, what the alert service
puts on the ``alerts`` topic and MQTT): its ``evidence`` carries the epicentre, depth,
origin time (ms) and magnitude, its ``area.cells`` the 0.1 degree cells at or above the
reported CWA level, each with its township, its ``area.geocodes`` the townships warned.
The API's live feed and the alert service's per-township MQTT topics
(``alerts/earthquake/{township}``) both compute their countdowns here.

For a place (a point, or a township):

- **expected intensity**: the level of the 0.1 degree cell the point lies in (for a
  township, the highest level among its cells, as the processors count it); a place
  outside every reported cell expects less than the reported minimum (the message's
  ``threshold``, an intensity rank), said as ``below``;
- **S-wave arrival**: ``origin + hypocentral distance / Vs`` (docs/domain.md: warning
  time = hypocentral distance / Vs minus the time since origin), for a township the
  earliest over its centroid and its cells' centres; seconds left = arrival - now,
  floored at 0 (arrived, or the blind zone near the epicentre).

The grid and Vs are the earthquake detector's (``processors.detectors.quake.QuakeConfig``
``cell_deg`` and ``vs_kms``): the message does not carry them, so they are repeated here
and a unit test pins them to the detector's values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from civic_iot.contracts.alerts import INTENSITY_LEVELS

__all__ = [
    "CELL_DEG",
    "VS_KMS",
    "Cell",
    "PlaceWarning",
    "Quake",
    "affected_townships",
    "hypocentral_km",
    "intensity_rank",
    "warn_point",
    "warn_township",
    "warn_townships",
]

#: The detector's shaking grid, degrees (the Civil IoT micro-zoning grid).
CELL_DEG = 0.1
#: The detector's S-wave speed, km/s (a constant first model, *unconfirmed* for Taiwan).
VS_KMS = 3.5
EARTH_RADIUS_KM = 6371.0


def intensity_rank(level: str) -> int:
    """The CWA level's rank: 0-4 for levels 0-4, then 5- = 5 ... 7 = 9."""
    return INTENSITY_LEVELS.index(level)


def _epicentral_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, km (haversine on a sphere)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def hypocentral_km(quake: Quake, lat: float, lon: float) -> float:
    """Distance from the hypocentre to a point at the surface, km."""
    return math.hypot(_epicentral_km(quake.lat, quake.lon, lat, lon), quake.depth_km)


@dataclass(frozen=True, slots=True)
class Cell:
    """One reported 0.1 degree cell: centre (degrees), CWA level, township code."""

    lat: float
    lon: float
    intensity: str
    township: str | None


@dataclass(frozen=True, slots=True)
class Quake:
    """What the warning needs from one earthquake alert message."""

    alert_id: str
    #: ``quake-<event id>``: the alert's area code.
    area_code: str
    msg_type: str
    #: CAP status (``Actual``, ``Exercise`` ...): a client must not show a test as real.
    status: str
    magnitude: float
    lat: float
    lon: float
    depth_km: float
    #: Origin time, epoch seconds.
    origin_s: float
    max_intensity: str
    #: Cells at or above this level are reported; elsewhere the intensity is below it.
    report_min: str
    cells: tuple[Cell, ...]
    headline: str
    #: The stations that recorded it.
    stations: tuple[str, ...] = ()
    #: The townships the detector warned (the message's ``area.geocodes``).
    geocodes: tuple[str, ...] = ()

    @property
    def ended(self) -> bool:
        """The alert service cancelled the alert: the earthquake is over."""
        return self.msg_type == "Cancel"

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Quake | None:
        """The quake of an earthquake alert message (JSON form), or None for another
        hazard or a message without the evidence a warning needs."""
        if msg.get("hazard") != "earthquake":
            return None
        ev = msg.get("evidence") or {}
        try:
            origin = datetime.fromisoformat(str(ev["origin_time"])).timestamp()
            rank = int(float(msg.get("threshold") or 0))
            cells = tuple(
                Cell(
                    lat=float(c["lat"]),
                    lon=float(c["lon"]),
                    intensity=str(c["intensity"]),
                    township=c.get("township"),
                )
                for c in msg.get("area", {}).get("cells", [])
            )
            return cls(
                alert_id=str(msg["alert_id"]),
                area_code=str(msg.get("area", {}).get("code", "")),
                msg_type=str(msg["msg_type"]),
                status=str(msg.get("status", "")),
                magnitude=float(ev["magnitude"]),
                lat=float(ev["epicentre_lat"]),
                lon=float(ev["epicentre_lon"]),
                depth_km=float(ev.get("depth_km", 10.0)),
                origin_s=origin,
                max_intensity=str(ev.get("max_intensity", "0")),
                report_min=INTENSITY_LEVELS[max(0, min(rank, len(INTENSITY_LEVELS) - 1))],
                cells=cells,
                headline=str(msg.get("headline", "")),
                stations=tuple(str(d) for d in msg.get("devices") or ()),
                geocodes=tuple(str(g) for g in msg.get("area", {}).get("geocodes") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def arrival_s(self, lat: float, lon: float) -> float:
        """When the S wave reaches the point, epoch seconds."""
        return self.origin_s + hypocentral_km(self, lat, lon) / VS_KMS

    def cell_at(self, lat: float, lon: float) -> Cell | None:
        """The reported cell the point lies in, if any."""
        half = CELL_DEG / 2 + 1e-9
        for c in self.cells:
            if abs(c.lat - lat) <= half and abs(c.lon - lon) <= half:
                return c
        return None

    def summary(self) -> dict[str, Any]:
        """The event's facts for a client (times epoch seconds)."""
        return {
            "alert_id": self.alert_id,
            "event": self.area_code,
            "msg_type": self.msg_type,
            "status": self.status,
            "actual": self.status == "Actual",
            "ended": self.ended,
            "magnitude": self.magnitude,
            "epicentre": {"lat": self.lat, "lon": self.lon},
            "depth_km": self.depth_km,
            "origin_s": self.origin_s,
            "max_intensity": self.max_intensity,
            "headline": self.headline,
            "stations": list(self.stations),
        }


@dataclass(frozen=True, slots=True)
class PlaceWarning:
    """One earthquake as one place will feel it."""

    quake: Quake
    #: Expected CWA level, or None: below :attr:`Quake.report_min`.
    intensity: str | None
    #: When the S wave arrives there, epoch seconds.
    arrival_s: float
    #: Hypocentral distance, km.
    distance_km: float

    def seconds_left(self, now_s: float) -> float:
        """Seconds until the S wave, at ``now_s`` (epoch seconds); 0 once it has arrived."""
        return max(0.0, self.arrival_s - now_s)

    def to_json(self, now_s: float) -> dict[str, Any]:
        left = self.seconds_left(now_s)
        return {
            **self.quake.summary(),
            "intensity": self.intensity,
            "below": None if self.intensity is not None else self.quake.report_min,
            "s_arrival_s": round(self.arrival_s, 3),
            "seconds_left": round(left, 1),
            "arrived": left <= 0,
            "distance_km": round(self.distance_km, 1),
        }


def warn_point(quake: Quake, lat: float, lon: float) -> PlaceWarning:
    """The warning for a point (degrees)."""
    cell = quake.cell_at(lat, lon)
    return PlaceWarning(
        quake=quake,
        intensity=None if cell is None else cell.intensity,
        arrival_s=quake.arrival_s(lat, lon),
        distance_km=hypocentral_km(quake, lat, lon),
    )


def warn_township(
    quake: Quake, code: str, lat: float | None = None, lon: float | None = None
) -> PlaceWarning:
    """The warning for a township: its highest cell level, and the earliest S arrival
    over its centroid (``lat``, ``lon``, degrees; None: unknown) and its cells' centres.

    Raises:
        ValueError: neither a centroid nor a cell of the township: nowhere to place it.
    """
    centroid = None if lat is None or lon is None else (lat, lon)
    return _warn_cells(quake, code, centroid, [c for c in quake.cells if c.township == code])


def _warn_cells(
    quake: Quake, code: str, centroid: tuple[float, float] | None, cells: list[Cell]
) -> PlaceWarning:
    points: list[tuple[float, float]] = [(c.lat, c.lon) for c in cells]
    if centroid is not None:
        points.insert(0, centroid)
    if not points:
        msg = f"township {code!r}: no centroid and no reported cell"
        raise ValueError(msg)
    first = min(points, key=lambda p: quake.arrival_s(*p))
    best = max(cells, key=lambda c: intensity_rank(c.intensity), default=None)
    return PlaceWarning(
        quake=quake,
        intensity=None if best is None else best.intensity,
        arrival_s=quake.arrival_s(*first),
        distance_km=hypocentral_km(quake, *first),
    )


def affected_townships(quake: Quake) -> tuple[str, ...]:
    """The townships an earthquake alert concerns, sorted: those the detector warned
    (geocodes) and those a reported cell belongs to."""
    named = {c.township for c in quake.cells if c.township}
    return tuple(sorted({*quake.geocodes, *named}))


def warn_townships(
    quake: Quake, centroids: Mapping[str, tuple[float, float]]
) -> tuple[tuple[str, PlaceWarning], ...]:
    """The warning of each affected township (:func:`affected_townships`), in that order,
    as (code, warning) pairs, as :func:`warn_township` gives it with the centroid when
    known (``centroids``: code -> lat, lon degrees); a township with neither a centroid
    nor a cell cannot be placed and is left out."""
    by_town: dict[str, list[Cell]] = {}
    for c in quake.cells:
        if c.township:
            by_town.setdefault(c.township, []).append(c)
    out: list[tuple[str, PlaceWarning]] = []
    for code in affected_townships(quake):
        centroid, cells = centroids.get(code), by_town.get(code, [])
        if centroid is not None or cells:
            out.append((code, _warn_cells(quake, code, centroid, cells)))
    return tuple(out)
