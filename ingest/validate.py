"""Bytes from a device topic -> a :class:`~civic_iot.contracts.readings.Reading`, or a
refusal. No I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Payload,
    Reading,
    SeismicPayload,
    WaterPayload,
    assemble,
)
from civic_iot.registry import Device, Registry
from civic_iot.times import to_ns
from ingest.refusals import Limits, ReadingRefusedError, describe, parse_topic

_PAYLOAD = TypeAdapter[Payload](Payload)


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that names each key once (``json``'s default keeps the last)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKeyError(k)
            seen.add(k)
    return out


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

    ``now`` is the receive time (aware). Every sample must lie within
    ``[now - limits.max_age[kind], now + limits.max_future_skew]`` (``too_old`` and
    ``future_timestamp`` otherwise); readings older than ``limits.lateness`` are accepted
    and flagged ``late``.
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
    else:
        # jiter keeps the last of duplicate keys and reads null as "absent"; the contract
        # refuses both. An accepted payload's strings (ts, kind) hold no quote, backslash
        # or "null", so without those every '"name":' in the bytes is a key; with one of
        # them, json's parser and the careful path decide.
        if b"\\" in raw or b"null" in raw:
            data = _refuse_or_validate(device_id, kind, topic, raw)
        else:
            keys = _KEY.findall(raw)
            if len(keys) != len(set(keys)):
                _refuse_duplicates(device_id, topic, [k.decode() for k in keys])
    _check_time(data, device_id, topic, kind, limits, now)
    # Every input is validated already (the payload above, the device by the registry,
    # ``now`` by the caller), so the reading is assembled without validating it again
    # (``assemble``: model_construct's defaults handling cost a fifth of ingest's work).
    return assemble(
        Reading,
        {
            "reading_id": f"{device_id}:{to_ns(data.ts)}",
            "device_id": device_id,
            "kind": kind,  # parse_topic checked it
            "event_time": data.ts,
            "received_at": now,
            "late": data.ts < now - limits.lateness,
            "location": _location(device),
            "data": data,
        },
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


#: The last second datetime can show (year 9999).
_MAX_EPOCH_S = 253_402_300_799.0
#: A JSON object key followed by its colon (only used on bytes without a backslash).
_KEY = re.compile(rb'"([^"]*)"\s*:')


def _refuse_duplicates(device_id: str, topic: str, keys: list[str]) -> None:
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ReadingRefusedError(
            "schema",
            f"device {device_id!r} topic {topic!r}: duplicate key(s) {', '.join(dupes)}; "
            "each field once",
        )


def _check_time(
    data: AirPayload | WaterPayload | SeismicPayload,
    device_id: str,
    topic: str,
    kind: str,
    limits: Limits,
    now: datetime,
) -> None:
    """Every sample's time (a seismic packet's first and last) against the limits, in
    epoch seconds (a date near year 9999 plus a packet's length must not overflow)."""
    first = data.ts
    last_s = first.timestamp()
    if isinstance(data, SeismicPayload):
        last_s += data.duration_s - 1 / data.sample_rate_hz
    if last_s > (now + limits.max_future_skew).timestamp():
        last = datetime.fromtimestamp(min(last_s, _MAX_EPOCH_S), UTC)
        raise ReadingRefusedError(
            "future_timestamp",
            f"device {device_id!r} topic {topic!r}: ts {last.isoformat()} is more than "
            f"{limits.max_future_skew.total_seconds():.0f} s ahead of the server clock",
        )
    max_age = limits.max_age[kind]
    if first < now - max_age:
        raise ReadingRefusedError(
            "too_old",
            f"device {device_id!r} topic {topic!r}: ts {first.isoformat()} is more than "
            f"{max_age.total_seconds() / 3600:g} h old; older readings are taken only in "
            "backfill mode (CIVIC_INGEST__BACKFILL)",
        )


def _refuse_or_validate(
    device_id: str, kind: str, topic: str, raw: bytes
) -> AirPayload | WaterPayload | SeismicPayload:
    """The payload the slow way, for whatever the JSON fast path refused.

    It decides the reason (``not_json``, ``schema``, ``wrong_kind``, ...) and its message
    step by step; and it still accepts what only Python's ``json`` reads (UTF-16 or UTF-32
    text, a byte-order mark), so the fast path changes no outcome.
    """
    try:
        doc = json.loads(raw, object_pairs_hook=_object)
    except _DuplicateKeyError as exc:
        raise ReadingRefusedError(
            "schema",
            f"device {device_id!r} topic {topic!r}: duplicate key {exc.key!r}; each field once",
        ) from None
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
    nulls = sorted(k for k, v in doc.items() if v is None)
    if nulls:
        raise ReadingRefusedError(
            "schema",
            f"device {device_id!r} topic {topic!r}: {', '.join(nulls)}: null is not a value; "
            "leave a field without a value out",
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
