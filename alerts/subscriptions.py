"""Webhook subscriptions and which alert messages they receive.

An agency subscribes to hazards (none named = all), a minimum severity, and an area given
as township codes or a polygon (neither = everywhere). :func:`matches` decides per message;
it is pure, so delivery code and tests share it.

Rules:

- an ``Alert`` must reach ``min_severity``;
- an ``Update`` is judged by the alert's peak severity, so an agency that was told about a
  severe alert also hears that it de-escalated;
- a ``Cancel`` skips the severity test: whoever might have received the alert hears that it
  is over (the area and hazard tests still apply);
- area: a township code in the subscription equal to the message's area code, one of its
  geocodes, or a grid cell's township; or, for a polygon subscription, a grid cell centre,
  the circle centre or a corner of the message polygon inside the subscription polygon, or
  the subscription polygon's first corner inside the message polygon. That last pair is an
  overlap test that can miss two polygons that only cross at their edges; good enough for
  township-sized areas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, model_validator

from alerts.lifecycle import SEVERITY_RANK, AlertMessage
from civic_iot.contracts.alerts import Hazard, Severity

__all__ = ["Subscription", "matches", "point_in_polygon"]


class Subscription(BaseModel):
    """One agency endpoint and what it wants to hear about."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    url: AnyHttpUrl
    #: Hazards wanted; empty means every hazard.
    hazards: frozenset[Hazard] = frozenset()
    min_severity: Severity = "Minor"
    #: Township codes (Taiwan_Geocode_103); empty, with no polygon, means everywhere.
    townships: frozenset[str] = frozenset()
    #: Area of interest as (lat, lon) corners, WGS 84 degrees; closing it is optional.
    polygon: tuple[tuple[float, float], ...] | None = None
    format: Literal["cap", "json"] = "cap"
    #: The HMAC key itself, or the name under which the service finds it (never both).
    secret: SecretStr | None = None
    secret_ref: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.secret is None) == (self.secret_ref is None):
            msg = f"subscription {self.id!r}: give exactly one of secret and secret_ref"
            raise ValueError(msg)
        if self.polygon is not None and len(set(self.polygon)) < 3:
            msg = f"subscription {self.id!r}: polygon needs at least 3 distinct (lat, lon) corners"
            raise ValueError(msg)
        return self


def point_in_polygon(lat: float, lon: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Whether (lat, lon) lies inside ``polygon`` (even-odd ray casting on lat/lon).

    Plane geometry on degrees: fine for areas the size of a county, wrong across the
    antimeridian (not a concern in Taiwan).
    """
    inside = False
    n = len(polygon)
    for i in range(n):
        lat_i, lon_i = polygon[i]
        lat_j, lon_j = polygon[i - 1]
        if (lat_i > lat) != (lat_j > lat):
            cross_lon = lon_i + (lat - lat_i) * (lon_j - lon_i) / (lat_j - lat_i)
            if lon < cross_lon:
                inside = not inside
    return inside


def _message_points(msg: AlertMessage) -> Iterable[tuple[float, float]]:
    for cell in msg.cells:
        yield cell.lat, cell.lon
    if msg.circle is not None:
        yield msg.circle.lat, msg.circle.lon
    if msg.polygon is not None:
        yield from msg.polygon


def _area_matches(sub: Subscription, msg: AlertMessage) -> bool:
    if not sub.townships and sub.polygon is None:
        return True
    if sub.townships:
        codes = {msg.area_code, *msg.geocodes, *(c.township for c in msg.cells if c.township)}
        if codes & sub.townships:
            return True
    if sub.polygon is not None:
        poly = sub.polygon
        if any(point_in_polygon(lat, lon, poly) for lat, lon in _message_points(msg)):
            return True
        if msg.polygon is not None and len(msg.polygon) >= 3:
            return point_in_polygon(*poly[0], msg.polygon)
    return False


def matches(sub: Subscription, msg: AlertMessage) -> bool:
    """Whether ``msg`` goes to ``sub`` (hazard, severity and area; see the module doc)."""
    if sub.hazards and msg.hazard not in sub.hazards:
        return False
    if msg.msg_type != "Cancel":
        severity = msg.severity if msg.msg_type == "Alert" else msg.peak_severity
        if SEVERITY_RANK[severity] < SEVERITY_RANK[sub.min_severity]:
            return False
    return _area_matches(sub, msg)
