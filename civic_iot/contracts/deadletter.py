"""The dead-letter record on ``readings.deadletter``: what was refused, why, the exact bytes.

Ingest writes one for every message it refuses (:func:`deadletter_record`); the
processors count them per reason for the pipeline dashboard (:class:`DeadLetter`). No I/O.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

#: Why a device message was refused; each is documented in ``ingest/README.md``. The
#: processors refuse a record on a readings topic that ingest did not write (``unmarked``,
#: ``bad_mark``: :mod:`processors.agents.guard`), with ``topic`` naming the Kafka topic.
ReasonCode = Literal[
    "bad_topic",
    "oversize",
    "not_json",
    "schema",
    "out_of_range",
    "unknown_device",
    "wrong_kind",
    "future_timestamp",
    "too_old",
    "unsupported_version",
    "unmarked",
    "bad_mark",
]


class DeadLetter(BaseModel):
    """A refused device message, as :func:`deadletter_record` encodes it."""

    model_config = ConfigDict(frozen=True)

    topic: str
    device_id: str | None
    reason: str
    error: str
    received_at: AwareDatetime
    #: The exact bytes received, base64.
    payload_b64: str
    payload_bytes: int


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
