"""Why ingest refuses a message: the refusal, the topic rule and the limits. No I/O.

The reason codes themselves are part of the dead-letter contract
(:data:`civic_iot.contracts.deadletter.ReasonCode`); ``ingest/README.md`` documents each.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, ValidationError

from civic_iot.contracts.deadletter import ReasonCode
from civic_iot.contracts.readings import MAX_PAYLOAD_BYTES, PAYLOAD_MODELS


class ReadingRefusedError(Exception):
    """A message that will not be accepted, with a reason code for the dead-letter topic."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason: ReasonCode = reason
        self.message = message


class Limits(BaseModel):
    """What ingest tolerates in time and size."""

    model_config = ConfigDict(frozen=True)

    max_future_skew: timedelta = timedelta(seconds=60)
    lateness: timedelta = timedelta(hours=1)
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


def parse_topic(topic: str) -> tuple[str, str]:
    """``devices/{device_id}/{kind}`` -> (device_id, kind), or :class:`ReadingRefusedError`."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or not parts[1]:
        raise ReadingRefusedError(
            "bad_topic", f"topic {topic!r}: expected devices/{{device_id}}/{{kind}}"
        )
    if parts[2] not in PAYLOAD_MODELS:
        raise ReadingRefusedError(
            "bad_topic", f"topic {topic!r}: kind {parts[2]!r} is not one of air, water, seismic"
        )
    return parts[1], parts[2]


def describe(err: ValidationError, device_id: str, topic: str) -> tuple[ReasonCode, str]:
    """A readable reason from pydantic's errors: the device, the topic, each field."""
    range_types = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
    parts = []
    reason: ReasonCode = "schema"
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"][1:]) or "payload"
        if e["type"] in range_types:
            reason = "out_of_range"
        if e["type"] == "literal_error" and e["loc"][1:2] == ("v",):
            reason = "unsupported_version"
        parts.append(f"{loc}: {e['msg']}")
    return reason, f"device {device_id!r} topic {topic!r}: " + "; ".join(parts)
