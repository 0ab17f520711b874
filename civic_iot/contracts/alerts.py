"""What travels between the processors and the alert service.

An :class:`AlertCandidate` is a detector's finding for one hazard and one area, with
its evidence. The processors publish one whenever a detector's level for that
(hazard, area) changes, including back to level 0 (below the clear threshold); the
alert service owns the lifecycle (new, update, cancel, hold times, acknowledgement).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

#: ``water_rise``: a flood or river gauge rising fast (its rate of rise, cm per 10 min),
#: an early signal of its own, before the depth or stage ladders are reached.
Hazard = Literal["air_quality", "flood", "river", "water_rise", "rain", "debris_flow", "earthquake"]
Severity = Literal["Minor", "Moderate", "Severe", "Extreme"]
#: The CWA seismic intensity scale's levels, lowest first (domain.md).
IntensityLevel = Literal["0", "1", "2", "3", "4", "5-", "5+", "6-", "6+", "7"]
INTENSITY_LEVELS: tuple[str, ...] = get_args(IntensityLevel)


class GridCell(BaseModel):
    """One 0.1 deg x 0.1 deg cell of an earthquake's expected shaking (the Civil IoT
    micro-zoning grid). The S wave reaches the cell ``s_wave_s`` after the finding's
    ``detected_at`` (0: it has arrived)."""

    model_config = ConfigDict(frozen=True)

    lat: float = Field(ge=-90, le=90, description="cell centre latitude, degrees")
    lon: float = Field(ge=-180, le=180, description="cell centre longitude, degrees")
    intensity: IntensityLevel = Field(description="expected CWA intensity level, e.g. '4'")
    s_wave_s: float = Field(description="seconds from detected_at until the S wave arrives")
    township: str | None = None


class PlaceShaking(BaseModel):
    """The public warning for one place: a township's expected CWA intensity and the
    seconds from the finding's ``detected_at`` until the S wave reaches it (0: arrived),
    what a phone shows. A township once warned of an earthquake stays listed, with its
    newest estimate, until the earthquake's alert ends."""

    model_config = ConfigDict(frozen=True)

    township: str = Field(min_length=1, description="township code")
    intensity: IntensityLevel = Field(description="expected CWA intensity level")
    s_wave_s: float = Field(description="seconds from detected_at until the S wave arrives")


class Circle(BaseModel):
    """A CAP circle: centre and radius in kilometres."""

    model_config = ConfigDict(frozen=True)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(ge=0)


class Finding(BaseModel):
    """What was found for one hazard in one area: the fields an alert candidate and each
    alert message made from it (:class:`alerts.lifecycle.AlertMessage`) share."""

    model_config = ConfigDict(frozen=True)

    hazard: Hazard
    #: Township code for most hazards; ``quake-<event id>`` for an earthquake.
    area_code: str = Field(min_length=1)
    area_desc: str = Field(min_length=1)
    #: 0 means the value is back below the clear threshold; higher is worse.
    level: int = Field(ge=0)
    severity: Severity
    headline: str
    description: str = ""
    metric: str = Field(description="what was measured, with unit: 'aqi', 'rainfall_mm_24h' ...")
    value: float
    threshold: float | None = None
    #: Event time of the newest evidence (device clock).
    event_time: AwareDatetime
    #: When the detector decided (processing clock), for latency figures.
    detected_at: AwareDatetime
    devices: tuple[str, ...] = ()
    geocodes: tuple[str, ...] = ()
    polygon: tuple[tuple[float, float], ...] | None = None
    circle: Circle | None = None
    cells: tuple[GridCell, ...] = ()
    #: Earthquakes: the warning per township (every code here is also in ``geocodes``).
    places: tuple[PlaceShaking, ...] = ()
    evidence: dict[str, float | str] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """The lifecycle key: one alert per hazard and area."""
        return f"{self.hazard}:{self.area_code}"


class AlertCandidate(Finding):
    """A detector's finding for one hazard in one area."""
