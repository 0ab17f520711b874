"""The JSON form of an alert message, for MQTT and webhooks.

It carries the same facts as the CAP document (:mod:`alerts.cap`), with the same times
(configured time zone, an offset, never ``Z``) and the same CAP codes, so a consumer can
switch between the two forms without surprises. ``sent`` and ``detected_at`` carry
milliseconds (an earthquake warning is measured in seconds); CAP's format keeps whole
seconds, and so do ``references`` (they quote the CAP messages' identities).
``status`` is in every message: consumers must honour ``Test`` and ``Exercise`` and never
show them as real.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus, cap_time, info_codes
from alerts.lifecycle import AlertMessage

__all__ = ["JSON_SCHEMA_ID", "to_json_bytes", "to_json_dict"]

#: Names this JSON layout; bump the number on an incompatible change.
JSON_SCHEMA_ID = "civic-iot.alert/1"


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
