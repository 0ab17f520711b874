"""Bytes from a device topic -> a :class:`~civic_iot.contracts.readings.Reading`, or a
refusal. No I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Payload,
    Reading,
    SeismicPayload,
    WaterPayload,
)
from civic_iot.registry import Device, Registry
from civic_iot.times import to_ns
from ingest.refusals import Limits, ReadingRefusedError, describe, parse_topic

_PAYLOAD = TypeAdapter[Payload](Payload)
#: The topic's kind -> its model's JSON validator (bytes in, frozen payload out).
_FAST: dict[str, Callable[[bytes], AirPayload | WaterPayload | SeismicPayload]] = {
    "air": AirPayload.model_validate_json,
    "water": WaterPayload.model_validate_json,
    "seismic": SeismicPayload.model_validate_json,
}


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
        # The common case in one pass over the bytes: pydantic's JSON parser straight into
        # the topic's model (the payload's ``kind`` defaults to the topic's). Anything it
        # refuses goes the careful way below, which names the reason exactly as always.
        data: AirPayload | WaterPayload | SeismicPayload = _FAST[kind](raw)
    except ValidationError:
        data = _refuse_or_validate(device_id, kind, topic, raw)
    if data.ts > now + limits.max_future_skew:
        raise ReadingRefusedError(
            "future_timestamp",
            f"device {device_id!r} topic {topic!r}: ts {data.ts.isoformat()} is more than "
            f"{limits.max_future_skew.total_seconds():.0f} s ahead of the server clock",
        )
    # Every input is validated already (the payload above, the device by the registry,
    # ``now`` by the caller), so the reading is assembled without validating it again.
    return Reading.model_construct(
        reading_id=f"{device_id}:{to_ns(data.ts)}",
        device_id=device_id,
        kind=kind,  # parse_topic checked it
        event_time=data.ts,
        received_at=now,
        late=data.ts < now - limits.lateness,
        location=_location(device),
        data=data,
    )


#: device id -> (the registry entry it was made from, its Location); a reloaded registry
#: brings new entries, which replace the old ones here.
_LOCATIONS: dict[str, tuple[Device, Location]] = {}


def _location(device: Device) -> Location:
    """The device's location, made once per registry entry (frozen, so shared freely)."""
    cached = _LOCATIONS.get(device.id)
    if cached is not None and cached[0] is device:
        return cached[1]
    location = Location(lat=device.lat, lon=device.lon, township=device.township)
    _LOCATIONS[device.id] = (device, location)
    return location


def _refuse_or_validate(
    device_id: str, kind: str, topic: str, raw: bytes
) -> AirPayload | WaterPayload | SeismicPayload:
    """The payload the slow way, for whatever the JSON fast path refused.

    It decides the reason (``not_json``, ``schema``, ``wrong_kind``, ...) and its message
    step by step; and it still accepts what only Python's ``json`` reads (UTF-16 or UTF-32
    text, a byte-order mark), so the fast path changes no outcome.
    """
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
        return _PAYLOAD.validate_python(doc)
    except ValidationError as exc:
        reason, message = describe(exc, device_id, topic)
        raise ReadingRefusedError(reason, message) from None
