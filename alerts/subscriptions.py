"""Webhook subscriptions: what an agency wants to hear about, and its signing secrets (pure).

An agency subscribes to hazards (none named = all), a minimum severity, and an area given
as township codes or a polygon (neither = everywhere), in CAP or JSON. :func:`matches`
decides per message, on the message itself or on its JSON form (:class:`Routing`: the
webhook consumer reads messages back from the ``alerts`` topic).

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

Secrets. A subscription's record (:class:`Subscription`, kept in the compacted Kafka topic
``alerts.subscriptions``) holds no secret, only a random nonce; the secret is
``whsec_`` + base64url(HMAC-SHA256(installation key, id and nonce)) (:func:`derive_secret`),
derived again whenever a webhook is signed. The installation key is
``CIVIC_ALERTS__WEBHOOK_SECRET_KEY`` or a file created once in the data dir's
``secrets/`` (0600). So reading the topic gives no secret; the API shows a secret once,
when it is created or rotated. A rotation keeps the previous nonce for
``AlertSettings.webhook_secret_grace_s``, and webhooks carry a signature under each of the
two secrets meanwhile, so a receiver can switch without losing a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)

from alerts.lifecycle import SEVERITY_RANK, AlertMessage
from civic_iot.auth import PRINCIPAL_PATTERN
from civic_iot.contracts.alerts import Hazard, Severity

__all__ = [
    "MAX_POLYGON_POINTS",
    "MAX_TOWNSHIPS",
    "Routing",
    "Subscription",
    "SubscriptionFilter",
    "derive_secret",
    "matches",
    "point_in_polygon",
    "signing_secrets",
]

#: Taiwan has 368 townships; a subscription names at most this many.
MAX_TOWNSHIPS = 400
MAX_POLYGON_POINTS = 500
SECRET_PREFIX = "whsec_"  # noqa: S105 - marks our secrets, not one

Township = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}$")]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Format = Literal["cap", "json"]


class SubscriptionFilter(BaseModel):
    """What an agency wants to hear about, and in which form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Hazards wanted; empty means every hazard.
    hazards: frozenset[Hazard] = frozenset()
    min_severity: Severity = "Minor"
    #: Township codes (Taiwan_Geocode_103); empty, with no polygon, means everywhere.
    townships: frozenset[Township] = Field(default=frozenset(), max_length=MAX_TOWNSHIPS)
    #: Area of interest as (lat, lon) corners, WGS 84 degrees; closing it is optional.
    polygon: tuple[tuple[Latitude, Longitude], ...] | None = Field(
        default=None, max_length=MAX_POLYGON_POINTS
    )
    format: Format = "cap"

    @model_validator(mode="after")
    def _check_polygon(self) -> Self:
        if self.polygon is not None and len(set(self.polygon)) < 3:
            msg = "polygon needs at least 3 distinct (lat, lon) corners"
            raise ValueError(msg)
        return self


class Subscription(SubscriptionFilter):
    """One agency endpoint as stored (a record of ``alerts.subscriptions``, key ``id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    #: Chosen by the service (a random UUID), never by the client.
    id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    #: The principal (token owner) it belongs to: an agency manages only its own.
    owner: str = Field(pattern=PRINCIPAL_PATTERN)
    url: str = Field(min_length=1, max_length=2048)
    created_at: AwareDatetime
    updated_at: AwareDatetime
    #: The current secret's nonce (hex), and the previous one while its grace period runs.
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    previous_nonce: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    previous_until: AwareDatetime | None = None


def derive_secret(key: bytes, sub_id: str, nonce: str) -> SecretStr:
    """The signing secret of subscription ``sub_id`` with ``nonce`` (module doc)."""
    if not key:
        msg = "webhook secret key is empty"
        raise ValueError(msg)
    mac = hmac.new(key, f"civic-iot webhook secret\0{sub_id}\0{nonce}".encode(), hashlib.sha256)
    token = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    return SecretStr(SECRET_PREFIX + token)


def signing_secrets(sub: Subscription, key: bytes, now: datetime) -> list[SecretStr]:
    """The secrets a webhook of ``sub`` is signed with at ``now``: the current one, and the
    previous one while its grace period runs."""
    out = [derive_secret(key, sub.id, sub.nonce)]
    if sub.previous_nonce and sub.previous_until is not None and now < sub.previous_until:
        out.append(derive_secret(key, sub.id, sub.previous_nonce))
    return out


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class Routing:
    """What matching looks at in a message, from the message or from its JSON form."""

    hazard: str
    msg_type: str
    severity: Severity
    peak_severity: Severity
    area_code: str
    geocodes: tuple[str, ...]
    #: Grid cells as (lat, lon, township or None).
    cells: tuple[tuple[float, float, str | None], ...]
    circle: tuple[float, float] | None
    polygon: tuple[tuple[float, float], ...] | None

    @classmethod
    def of_message(cls, msg: AlertMessage) -> Routing:
        return cls(
            hazard=msg.hazard,
            msg_type=msg.msg_type,
            severity=msg.severity,
            peak_severity=msg.peak_severity,
            area_code=msg.area_code,
            geocodes=tuple(msg.geocodes),
            cells=tuple((c.lat, c.lon, c.township) for c in msg.cells),
            circle=None if msg.circle is None else (msg.circle.lat, msg.circle.lon),
            polygon=msg.polygon,
        )

    @classmethod
    def of_json(cls, body: Mapping[str, Any]) -> Routing:
        """From :func:`alerts.messages.to_json_dict`'s form (KeyError/TypeError if not)."""
        area = body["area"]
        circle = area.get("circle")
        polygon = area.get("polygon")
        return cls(
            hazard=str(body["hazard"]),
            msg_type=str(body["msg_type"]),
            severity=body["severity"],
            peak_severity=body["peak_severity"],
            area_code=str(area["code"]),
            geocodes=tuple(str(g) for g in area.get("geocodes") or ()),
            cells=tuple(
                (float(c["lat"]), float(c["lon"]), c.get("township"))
                for c in area.get("cells") or ()
            ),
            circle=None if circle is None else (float(circle["lat"]), float(circle["lon"])),
            polygon=None if polygon is None else tuple((float(p[0]), float(p[1])) for p in polygon),
        )


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


def _message_points(r: Routing) -> Iterable[tuple[float, float]]:
    for lat, lon, _ in r.cells:
        yield lat, lon
    if r.circle is not None:
        yield r.circle
    if r.polygon is not None:
        yield from r.polygon


def _area_matches(sub: SubscriptionFilter, r: Routing) -> bool:
    if not sub.townships and sub.polygon is None:
        return True
    if sub.townships:
        codes = {r.area_code, *r.geocodes, *(t for _, _, t in r.cells if t)}
        if codes & sub.townships:
            return True
    if sub.polygon is not None:
        poly = sub.polygon
        if any(point_in_polygon(lat, lon, poly) for lat, lon in _message_points(r)):
            return True
        if r.polygon is not None and len(r.polygon) >= 3:
            return point_in_polygon(*poly[0], r.polygon)
    return False


def matches(sub: SubscriptionFilter, msg: AlertMessage | Routing) -> bool:
    """Whether ``msg`` goes to ``sub`` (hazard, severity and area; see the module doc)."""
    r = msg if isinstance(msg, Routing) else Routing.of_message(msg)
    if sub.hazards and r.hazard not in sub.hazards:
        return False
    if r.msg_type != "Cancel":
        severity = r.severity if r.msg_type == "Alert" else r.peak_severity
        if SEVERITY_RANK[severity] < SEVERITY_RANK[sub.min_severity]:
            return False
    return _area_matches(sub, r)
