"""Township aggregation of device levels and the alert candidates it decides. Pure.

One alert per hazard and township: several devices of one township must not each send
their own level under the same key (the alert would flap between them). Air quality
uses :func:`processors.detectors.air.update_township` (sensors must agree); the water
hazards take the highest level any device of the township reports (one flooded
underpass is a flood), see :func:`update_hazard`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from civic_iot.contracts.alerts import AlertCandidate, Hazard, Severity
from civic_iot.contracts.processing import TownshipReport
from civic_iot.registry import Township
from processors.detectors.state import stored

# Severity by level and hazard; local choices in the CAP sense (Minor: little threat,
# Moderate: possible, Severe: significant, Extreme: extraordinary threat to life).
# Air: levels 1/2/3 are the orange, red and purple AQI categories. Flood: 10/30/50 cm.
# River: WRA yellow/orange/red. Water rise: one level, a rate of rise at or above the
# gauge's rise line (a possible threat, not yet a depth or stage reached: Moderate).
# Rain: the four CWA classes. Debris flow: yellow, red.
_SEVERITY: Mapping[Hazard, tuple[Severity, ...]] = {
    "air_quality": ("Minor", "Moderate", "Severe", "Extreme"),
    "flood": ("Minor", "Moderate", "Severe", "Extreme"),
    "river": ("Minor", "Moderate", "Severe", "Extreme"),
    "water_rise": ("Minor", "Moderate"),
    "rain": ("Minor", "Moderate", "Severe", "Extreme", "Extreme"),
    "debris_flow": ("Minor", "Severe", "Extreme"),
}

_WHAT: Mapping[Hazard, tuple[str, ...]] = {
    "air_quality": ("Air quality back to normal", "Air quality unhealthy for sensitive groups",
                    "Air quality unhealthy", "Air quality very unhealthy"),
    "flood": ("Flooding receded", "Street flooding", "Street flooding over 30 cm",
              "Severe street flooding over 50 cm"),
    "river": ("River level back below warning", "River level yellow warning",
              "River level orange warning", "River level red warning"),
    "water_rise": ("Water no longer rising fast", "Water rising fast"),
    "rain": ("Heavy rain over", "Heavy rain", "Extremely heavy rain", "Torrential rain",
             "Extremely torrential rain"),
    "debris_flow": ("Debris-flow warning lifted", "Debris-flow yellow warning",
                    "Debris-flow red warning"),
}  # fmt: skip


def severity(hazard: Hazard, level: int) -> Severity:
    table = _SEVERITY[hazard]
    return table[min(level, len(table) - 1)]


def township_candidate(
    *,
    hazard: Hazard,
    code: str,
    township: Township | None,
    level: int,
    value: float,
    metric: str,
    threshold: float | None,
    devices: tuple[str, ...],
    event_time: datetime,
    detected_at: datetime,
    evidence: Mapping[str, float | str] | None = None,
) -> AlertCandidate:
    """The candidate of one hazard in one township (``level`` 0 means cleared)."""
    name = township.name if township else code
    what = _WHAT[hazard][min(level, len(_WHAT[hazard]) - 1)]
    return AlertCandidate(
        hazard=hazard,
        area_code=code,
        area_desc=f"{name}, {township.county}" if township and township.county else name,
        level=level,
        severity=severity(hazard, level),
        headline=f"{what} in {name} ({metric} {value:g})",
        description=f"{len(devices)} device(s) at level {level}: {', '.join(devices)}"
        if devices
        else "",
        metric=metric,
        value=value,
        threshold=threshold,
        event_time=event_time,
        detected_at=detected_at,
        devices=devices,
        geocodes=(code,),
        evidence=dict(evidence or {}),
    )


@stored
class DeviceLevel:
    """A device's last report of one water hazard, as its township keeps it: level,
    value and threshold in ``metric``'s unit, event time epoch s."""

    level: int
    value: float | None
    threshold: float | None
    metric: str
    t: float


@dataclass(frozen=True, slots=True)
class HazardUpdate:
    """A water hazard's township level after one report; ``changed`` -> a candidate."""

    devices: dict[str, DeviceLevel]
    level: int
    previous: int
    at_level: tuple[str, ...]
    value: float
    threshold: float | None
    metric: str

    @property
    def changed(self) -> bool:
        return self.level != self.previous


def update_hazard(
    devices: Mapping[str, DeviceLevel], previous: int, report: TownshipReport
) -> HazardUpdate:
    """Record one device's level and take the township's: the highest device level.

    ``devices`` maps device id to its last report; a report older than the device's
    last one is ignored. ``value`` is the highest value among the devices at the
    township level (0 when none is).
    """
    t = report.event_time.timestamp()
    out = dict(devices)
    known = out.get(report.device)
    if known is None or t >= known.t:
        out[report.device] = DeviceLevel(
            report.level, report.value, report.threshold, report.metric, t
        )
    level = max((d.level for d in out.values()), default=0)
    at = sorted(k for k, d in out.items() if d.level == level and level > 0)
    top = max(
        (out[k] for k in at if out[k].value is not None),
        key=lambda d: d.value if d.value is not None else -math.inf,
        default=None,
    )
    return HazardUpdate(
        devices=out,
        level=level,
        previous=previous,
        at_level=tuple(at),
        value=top.value if top and top.value is not None else float(report.value or 0.0),
        threshold=None if top is None else top.threshold,
        metric=top.metric if top else report.metric,
    )
