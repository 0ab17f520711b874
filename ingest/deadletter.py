"""The dead-letter record: what was refused, why, and the exact bytes. No I/O."""

from __future__ import annotations

import base64
import json
from datetime import datetime


def deadletter_record(
    *, topic: str, raw: bytes, reason: str, error: str, device_id: str | None, received_at: datetime
) -> bytes:
    """JSON for ``readings.deadletter``: raw bytes as base64, so nothing is lost or mangled."""
    return json.dumps(
        {
            "topic": topic,
            "device_id": device_id,
            "reason": reason,
            "error": error,
            "received_at": received_at.isoformat(),
            "payload_b64": base64.b64encode(raw).decode("ascii"),
            "payload_bytes": len(raw),
        },
        ensure_ascii=False,
    ).encode()


def device_of(topic: str) -> str | None:
    """The device id a topic names, if it has the ``devices/{id}/...`` shape."""
    parts = topic.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "devices" and parts[1] else None
