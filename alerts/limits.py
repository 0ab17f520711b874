"""Size limits of every record the alert service writes, and the caps that keep to them (pure).

The service writes three kinds of records whose size depends on its input:

========================= ============================================ =================
record                    what bounds it                                limit
========================= ============================================ =================
``alerts`` (Kafka)        the JSON form and the CAP XML of one message  Kafka's
                                                                        ``max.message.bytes``,
                                                                        1 MiB by default
``alerts.state`` (Kafka)  one alert's record: two candidates, its       the same
                          references and acknowledgements
MQTT ``alerts/...``       the JSON form of one message                  Mosquitto's
                                                                        ``max_packet_size``,
                                                                        128 KiB here
========================= ============================================ =================

They are bounded by design, not by luck: every part of a message that grows with its
input has a cap (:class:`Caps`), enforced where the input enters.

- A candidate is clamped when the service takes it (:func:`clamp_candidate`): texts are
  cut (and made XML-safe), lists keep their first or most relevant entries (the strongest
  earthquake cells), coordinates are rounded to what CAP writes. A candidate whose
  identity does not fit (an area code longer than ``area_code`` characters) or whose
  numbers are not finite is refused (:class:`CandidateRefusedError`): it would make a wrong key
  or invalid JSON.
- The lifecycle keeps an alert's first reference and the newest ones (``references``),
  and at most ``acks`` acknowledgements, one per principal.
- Acknowledgements are refused at the API beyond ``ack_note`` characters.

:func:`worst_case_candidate` builds the largest candidate the caps allow, every text
filled with a given character; ``tests/unit/alerts/test_limits.py`` encodes the worst
message and state record for every character class and asserts that each record stays
within its limit with room to spare, and the service checks the same at start with its
own configuration (:func:`check_worst_case`, in :mod:`alerts.service`). A record that
would still exceed (a broker configured smaller than the defaults) is refused by the
writer, counted and logged: the service goes on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.text import xml_safe
from civic_iot.contracts.alerts import AlertCandidate, Circle, GridCell, Hazard

__all__ = [
    "DEFAULT_CAPS",
    "KAFKA_MAX_MESSAGE_BYTES",
    "KAFKA_RECORD_BUDGET",
    "MQTT_MAX_PACKET_BYTES",
    "MQTT_PAYLOAD_BUDGET",
    "CandidateRefusedError",
    "Caps",
    "cap_references",
    "clamp_candidate",
    "worst_case_candidate",
]

#: Kafka's default ``max.message.bytes`` of a topic (1 MiB + 12: a batch of one record).
KAFKA_MAX_MESSAGE_BYTES = 1_048_588
#: What one record's key, value and headers may take: the limit less a batch's overhead
#: (61 bytes of batch header, a record header, varints), rounded down generously.
KAFKA_RECORD_BUDGET = 1_000_000
#: Mosquitto's ``max_packet_size`` in ``deploy/mosquitto/mosquitto.conf``.
MQTT_MAX_PACKET_BYTES = 131_072
#: What one PUBLISH payload may take: the packet limit less the fixed header (5), the
#: topic (2 + at most ~300: the root, a hazard and a capped area code), the packet id and
#: the MQTT 5 properties (none set): 1 KiB is more than all of those together.
MQTT_PAYLOAD_BUDGET = MQTT_MAX_PACKET_BYTES - 1024

#: Device ids, geocodes, evidence names: what the registry and the geocode tables allow.
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_ELLIPSIS = "\u2026"


class CandidateRefusedError(ValueError):
    """A candidate the service cannot turn into a correct alert (see the module doc)."""


@dataclass(frozen=True, slots=True)
class Caps:
    """Largest sizes of the parts of an alert message; characters unless said otherwise."""

    headline: int = 200
    description: int = 1000
    area_desc: int = 200
    metric: int = 64
    #: An area code is part of the alert's key: longer ones are refused, not cut.
    area_code: int = 64
    devices: int = 100
    device_id: int = 64
    geocodes: int = 100
    #: Taiwan_Geocode_103 codes are 7 to 10 digits.
    geocode: int = 16
    #: Corners of an area polygon (more are thinned out evenly).
    polygon: int = 200
    #: Earthquake grid cells (the strongest are kept): the island of Taiwan and its
    #: coast are about 700 cells of 0.1 deg.
    cells: int = 700
    evidence: int = 16
    evidence_name: int = 32
    evidence_text: int = 100
    #: References an Update or Cancel carries: the Alert's and the newest ones.
    references: int = 20
    #: Acknowledgements per alert, one per principal.
    acks: int = 10
    ack_by: int = 64
    ack_note: int = 280


DEFAULT_CAPS = Caps()


def _cut(text: str, limit: int) -> str:
    text = xml_safe(text)
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _finite(name: str, value: float | None, key: str) -> None:
    if value is not None and not math.isfinite(value):
        msg = f"candidate {key}: {name} is {value}, expected a finite number"
        raise CandidateRefusedError(msg)


def _tokens(values: tuple[str, ...], limit: int, length: int) -> tuple[str, ...]:
    """Valid, distinct tokens in their order, at most ``limit``."""
    seen: dict[str, None] = {}
    for v in values:
        if len(v) <= length and _TOKEN.match(v):
            seen.setdefault(v, None)
    return tuple(seen)[:limit]


def _intensity_rank(intensity: str) -> float:
    base = float(intensity.rstrip("+-"))
    return base + (0.5 if intensity.endswith("+") else 0.0)


def _cells(cells: tuple[GridCell, ...], caps: Caps) -> tuple[GridCell, ...]:
    rounded = [
        GridCell(
            lat=round(c.lat, 4),
            lon=round(c.lon, 4),
            intensity=c.intensity,
            # Seconds to the S wave: a tenth is plenty; a day is beyond any warning.
            s_wave_s=round(min(max(c.s_wave_s, 0.0), 86_400.0), 1)
            if math.isfinite(c.s_wave_s)
            else 0.0,
            township=c.township
            if c.township and len(c.township) <= caps.geocode and _TOKEN.match(c.township)
            else None,
        )
        for c in cells
    ]
    if len(rounded) > caps.cells:
        strongest = sorted(rounded, key=lambda c: (-_intensity_rank(c.intensity), c.s_wave_s))
        rounded = strongest[: caps.cells]
    # Grid order (what the detector sends), so the same cells give the same bytes.
    return tuple(sorted(rounded, key=lambda c: (c.lat, c.lon)))


def _polygon(
    points: tuple[tuple[float, float], ...] | None, caps: Caps
) -> tuple[tuple[float, float], ...] | None:
    if points is None:
        return None
    pts = tuple((round(lat, 5), round(lon, 5)) for lat, lon in points)
    if not all(math.isfinite(v) for p in pts for v in p):
        return None
    if len(pts) > caps.polygon:
        step = math.ceil(len(pts) / caps.polygon)
        pts = pts[::step]
    return pts


def _evidence(evidence: dict[str, float | str], caps: Caps) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for name in sorted(evidence):
        if len(out) >= caps.evidence:
            break
        if len(name) > caps.evidence_name or not _TOKEN.match(name):
            continue
        value = evidence[name]
        if isinstance(value, str):
            out[name] = _cut(value, caps.evidence_text)
        elif math.isfinite(value):
            out[name] = value
    return out


def clamp_candidate(cand: AlertCandidate, caps: Caps = DEFAULT_CAPS) -> AlertCandidate:
    """``cand`` within ``caps`` (see the module doc); the same object when nothing changed.

    Raises:
        CandidateRefusedError: the area code is too long, or a number is not finite.
    """
    key = cand.key[: caps.area_code + 20]
    if len(cand.area_code) > caps.area_code:
        msg = (
            f"candidate {key!r}: area_code has {len(cand.area_code)} characters, "
            f"at most {caps.area_code} allowed"
        )
        raise CandidateRefusedError(msg)
    _finite("value", cand.value, key)
    _finite("threshold", cand.threshold, key)
    if cand.circle is not None:
        c = cand.circle
        for name, v in (
            ("circle.lat", c.lat),
            ("circle.lon", c.lon),
            ("circle.radius_km", c.radius_km),
        ):
            _finite(name, v, key)
    update: dict[str, Any] = {
        "area_desc": _cut(cand.area_desc, caps.area_desc) or _ELLIPSIS,
        "headline": _cut(cand.headline, caps.headline),
        "description": _cut(cand.description, caps.description),
        "metric": _cut(cand.metric, caps.metric),
        "devices": _tokens(tuple(sorted(cand.devices)), caps.devices, caps.device_id),
        "geocodes": _tokens(cand.geocodes, caps.geocodes, caps.geocode),
        "polygon": _polygon(cand.polygon, caps),
        "cells": _cells(cand.cells, caps),
        "evidence": _evidence(cand.evidence, caps),
    }
    if cand.circle is not None:
        update["circle"] = Circle(
            lat=round(cand.circle.lat, 5),
            lon=round(cand.circle.lon, 5),
            radius_km=round(cand.circle.radius_km, 3),
        )
    if cand.devices == tuple(sorted(cand.devices)) and all(
        getattr(cand, k) == v for k, v in update.items()
    ):
        return cand
    return cand.model_copy(update=update)


def cap_references(refs: tuple[Any, ...], caps: Caps = DEFAULT_CAPS) -> tuple[Any, ...]:
    """The first reference (the Alert) and the newest ones, at most ``caps.references``."""
    if len(refs) <= caps.references:
        return refs
    return (refs[0], *refs[len(refs) - (caps.references - 1) :])


# --------------------------------------------------------------------------- worst case


def worst_case_candidate(
    fill: str, at: datetime, caps: Caps = DEFAULT_CAPS, *, hazard: Hazard = "earthquake"
) -> AlertCandidate:
    """The largest candidate ``caps`` let through, every free text made of ``fill``.

    Tokens (device ids, geocodes, evidence names) are ASCII by rule and take their longest
    length; numbers take their longest printed form.
    """

    def text(n: int) -> str:
        return (fill * n)[:n]

    def token(i: int, n: int) -> str:
        head = f"{i:x}-"
        return head + "9" * (n - len(head))

    big = -1.2345678901234567e-300  # 24 characters as JSON, for unrounded numbers
    cells = tuple(
        GridCell(
            lat=-89.1234 + (i // 1000) * 0.0001,
            lon=-179.1234 + (i % 1000) * 0.0001,
            intensity="5-",
            s_wave_s=86_399.9,
            township=token(i, caps.geocode),
        )
        for i in range(caps.cells)
    )
    polygon = tuple((-89.12345 + i * 1e-5, -179.12345) for i in range(caps.polygon))
    return AlertCandidate(
        hazard=hazard,
        area_code=token(0, caps.area_code),
        area_desc=text(caps.area_desc),
        level=4,
        severity="Extreme",
        headline=text(caps.headline),
        description=text(caps.description),
        metric=text(caps.metric),
        value=big,
        threshold=big,
        event_time=at,
        detected_at=at,
        devices=tuple(token(i, caps.device_id) for i in range(caps.devices)),
        geocodes=tuple(token(i, caps.geocode) for i in range(caps.geocodes)),
        polygon=polygon,
        circle=Circle(lat=-89.12345, lon=-179.12345, radius_km=12345.678),
        cells=cells,
        evidence={
            token(i, caps.evidence_name): text(caps.evidence_text) if i % 2 else big
            for i in range(caps.evidence)
        },
    )
