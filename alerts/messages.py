"""The JSON form of an alert message, for MQTT and webhooks.

It carries the same facts as the CAP document (:mod:`alerts.cap`), with the same times
(configured time zone, an offset, never ``Z``) and the same CAP codes, so a consumer can
switch between the two forms without surprises. ``sent`` and ``detected_at`` carry
milliseconds (an earthquake warning is measured in seconds); CAP's format keeps whole
seconds, and so do ``references`` (they quote the CAP messages' identities).
``status`` is in every message: consumers must honour ``Test`` and ``Exercise`` and never
show them as real.

An earthquake message is also told per township (:func:`township_warnings`,
:func:`township_json_bytes`, schema ``civic-iot.place-warning/1``): what a phone in that
township shows, its expected CWA intensity and the S wave's arrival with the seconds left
when published. The figures come from :mod:`civic_iot.warning`, the computation the API's
live feed uses, so both say the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus, cap_time, info_codes
from alerts.lifecycle import AlertMessage
from civic_iot.warning import PlaceWarning, Quake, intensity_rank, warn_townships

__all__ = [
    "JSON_SCHEMA_ID",
    "MAX_PLACE_TOPICS",
    "PLACE_SCHEMA_ID",
    "to_json_bytes",
    "to_json_dict",
    "township_json_bytes",
    "township_json_dict",
    "township_warnings",
]

#: Names this JSON layout; bump the number on an incompatible change.
JSON_SCHEMA_ID = "civic-iot.alert/1"
#: Names the per-township layout of an earthquake message.
PLACE_SCHEMA_ID = "civic-iot.place-warning/1"
#: Townships told per earthquake message at most (Taiwan has 368): the strongest first.
MAX_PLACE_TOPICS = 400


def to_json_dict(
    msg: AlertMessage, status: CapStatus, *, config: CapConfig = DEFAULT_CAP_CONFIG
) -> dict[str, Any]:
    """``msg`` as plain JSON types, with ``status`` (Actual/Exercise/System/Test/Draft)."""
    tz = config.timezone
    codes = info_codes(msg, config)
    return {
        "schema": JSON_SCHEMA_ID,
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "sequence": msg.sequence,
        "sender": msg.sender,
        "sent": _ms_time(msg.sent, tz),
        "status": status,
        "actual": status == "Actual",
        "msg_type": msg.msg_type,
        "reason": msg.reason,
        "references": [
            {"sender": r.sender, "identifier": r.identifier, "sent": cap_time(r.sent, tz)}
            for r in msg.references
        ],
        "hazard": msg.hazard,
        "key": msg.key,
        "event": codes.event,
        "category": list(codes.categories),
        "response_type": list(codes.response),
        "urgency": codes.urgency,
        "severity": msg.severity,
        "peak_severity": msg.peak_severity,
        "certainty": codes.certainty,
        "level": msg.level,
        "headline": msg.headline,
        "description": msg.description,
        "metric": msg.metric,
        "value": msg.value,
        "threshold": msg.threshold,
        "event_time": cap_time(msg.event_time, tz),
        "detected_at": _ms_time(msg.detected_at, tz),
        "expires": None if msg.expires is None else cap_time(msg.expires, tz),
        "area": {
            "code": msg.area_code,
            "desc": msg.area_desc,
            "geocodes": list(msg.geocodes),
            "polygon": None if msg.polygon is None else [list(p) for p in msg.polygon],
            "circle": None if msg.circle is None else msg.circle.model_dump(mode="json"),
            "cells": [c.model_dump(mode="json") for c in msg.cells],
        },
        "devices": list(msg.devices),
        "evidence": dict(msg.evidence),
        "acknowledgements": [
            {"by": a.by, "at": cap_time(a.at, tz), "note": a.note} for a in msg.acknowledgements
        ],
    }


def _ms_time(dt: datetime, timezone: str) -> str:
    """``dt`` as :func:`alerts.cap.cap_time` with milliseconds: ``...T12:00:00.250+08:00``."""
    whole = cap_time(dt, timezone)  # validates awareness, converts the zone
    return f"{whole[:19]}.{dt.microsecond // 1000:03d}{whole[19:]}"


def to_json_bytes(
    msg: AlertMessage, status: CapStatus, *, config: CapConfig = DEFAULT_CAP_CONFIG
) -> bytes:
    """:func:`to_json_dict` as compact UTF-8 JSON with sorted keys (stable bytes to sign)."""
    body = to_json_dict(msg, status, config=config)
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def township_warnings(
    msg: AlertMessage,
    status: CapStatus,
    centroids: Mapping[str, tuple[float, float]],
    *,
    config: CapConfig = DEFAULT_CAP_CONFIG,
) -> list[tuple[str, PlaceWarning]]:
    """The warning of each township an earthquake message concerns, sorted by code; empty
    for another hazard or a message without the evidence (origin, epicentre, depth).
    ``centroids``: township code -> (lat, lon) degrees. At most :data:`MAX_PLACE_TOPICS`,
    the strongest and nearest kept."""
    quake = Quake.from_message(to_json_dict(msg, status, config=config))
    if quake is None:
        return []
    places = list(warn_townships(quake, centroids))
    if len(places) > MAX_PLACE_TOPICS:
        places.sort(
            key=lambda p: (
                -(intensity_rank(p[1].intensity) if p[1].intensity is not None else -1),
                p[1].arrival_s,
            )
        )
        places = sorted(places[:MAX_PLACE_TOPICS])
    return places


def township_json_dict(
    msg: AlertMessage,
    township: str,
    warning: PlaceWarning,
    now_s: float,
    *,
    config: CapConfig = DEFAULT_CAP_CONFIG,
) -> dict[str, Any]:
    """One township's warning as plain JSON types: the message's identity, the quake's
    facts, the expected intensity (``None`` and ``below``: under the reported minimum),
    the S wave's arrival (``s_arrival_s``, epoch seconds, and ``s_arrival``, the
    configured zone with ms) and ``seconds_left`` at ``now_s`` (epoch seconds; a client
    counts down from ``s_arrival_s`` on its own clock)."""
    arrival = datetime.fromtimestamp(warning.arrival_s, UTC)
    return {
        "schema": PLACE_SCHEMA_ID,
        "identifier": msg.identifier,
        "sequence": msg.sequence,
        "sender": msg.sender,
        "sent": _ms_time(msg.sent, config.timezone),
        "township": township,
        **warning.to_json(now_s),
        "s_arrival": _ms_time(arrival, config.timezone),
    }


def township_json_bytes(
    msg: AlertMessage,
    township: str,
    warning: PlaceWarning,
    now_s: float,
    *,
    config: CapConfig = DEFAULT_CAP_CONFIG,
) -> bytes:
    """:func:`township_json_dict` as compact UTF-8 JSON with sorted keys."""
    body = township_json_dict(msg, township, warning, now_s, config=config)
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
