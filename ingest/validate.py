"""Bytes from a device topic -> a :class:`~ingest.models.Reading`, or a refusal. No I/O."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from civic_iot.registry import Registry
from ingest.models import (
    Limits,
    Location,
    Payload,
    Reading,
    ReadingRefusedError,
    describe,
    parse_topic,
    to_ns,
)

_PAYLOAD = TypeAdapter[Payload](Payload)


def validate(
    topic: str, raw: bytes, *, registry: Registry, limits: Limits, now: datetime
) -> Reading:
    """Validate one MQTT message from a device; never raises anything but a refusal.

    ``now`` is the receive time (aware). Readings older than ``limits.lateness`` are
    accepted and flagged ``late``; newer than ``now + max_future_skew`` are refused.
    """
    device_id, kind = parse_topic(topic)
    if len(raw) > limits.max_payload_bytes:
        raise ReadingRefusedError(
            "oversize",
            f"device {device_id!r} topic {topic!r}: payload of {len(raw)} bytes, "
            f"limit {limits.max_payload_bytes}",
        )
    device = registry.get(device_id)
    if device is None:
        raise ReadingRefusedError(
            "unknown_device", f"device {device_id!r} topic {topic!r}: not in the device registry"
        )
    if device.kind != kind:
        raise ReadingRefusedError(
            "wrong_kind",
            f"device {device_id!r} topic {topic!r}: registered as {device.kind!r}, not {kind!r}",
        )
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError and also the int-digit
        # limit (a number of more than 4300 digits), which would otherwise escape, crash
        # ingest and, never acknowledged, be redelivered to crash it again.
        raise ReadingRefusedError(
            "not_json", f"device {device_id!r} topic {topic!r}: not JSON ({exc})"
        ) from None
    if not isinstance(doc, dict):
        raise ReadingRefusedError(
            "schema", f"device {device_id!r} topic {topic!r}: payload must be a JSON object"
        )
    declared = doc.setdefault("kind", kind)
    if declared != kind:
        raise ReadingRefusedError(
            "wrong_kind",
            f"device {device_id!r} topic {topic!r}: payload kind {declared!r} on a {kind} topic",
        )
    try:
        data = _PAYLOAD.validate_python(doc)
    except ValidationError as exc:
        reason, message = describe(exc, device_id, topic)
        raise ReadingRefusedError(reason, message) from None
    if data.ts > now + limits.max_future_skew:
        raise ReadingRefusedError(
            "future_timestamp",
            f"device {device_id!r} topic {topic!r}: ts {data.ts.isoformat()} is more than "
            f"{limits.max_future_skew.total_seconds():.0f} s ahead of the server clock",
        )
    return Reading(
        reading_id=f"{device_id}:{to_ns(data.ts)}",
        device_id=device_id,
        kind=kind,  # parse_topic checked it
        event_time=data.ts,
        received_at=now,
        late=data.ts < now - limits.lateness,
        location=Location(lat=device.lat, lon=device.lon, township=device.township),
        data=data,
    )
