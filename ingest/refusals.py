"""Why ingest refuses a message: the refusal, the topic rule and the limits. No I/O.

The reason codes themselves are part of the dead-letter contract
(:data:`civic_iot.contracts.deadletter.ReasonCode`); ``ingest/README.md`` documents each.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from civic_iot.contracts.deadletter import ReasonCode
from civic_iot.contracts.readings import MAX_PAYLOAD_BYTES, PAYLOAD_MODELS
from civic_iot.settings import Settings
from civic_iot.timebounds import TimeBounds


class ReadingRefusedError(Exception):
    """A message that will not be accepted, with a reason code for the dead-letter topic."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason: ReasonCode = reason
        self.message = message


class Limits(BaseModel):
    """What ingest tolerates in time and size.

    Every sample of a reading must lie in ``[now - max_age, now + max_future_skew]``
    (``too_old`` / ``future_timestamp`` otherwise); one older than ``lateness`` is kept and
    flagged ``late``. ``max_age`` is per reading kind, so that no reading is older than
    its InfluxDB bucket keeps data (InfluxDB would refuse it).
    """

    model_config = ConfigDict(frozen=True)

    max_future_skew: timedelta = timedelta(seconds=60)
    lateness: timedelta = timedelta(hours=1)
    max_age: Mapping[str, timedelta] = Field(
        default_factory=lambda: dict.fromkeys(("air", "water", "seismic"), timedelta(days=6))
    )
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits of a deployment (:meth:`civic_iot.timebounds.TimeBounds.of`, the
        bounds the processors hold too)."""
        b = TimeBounds.of(settings)
        return cls(
            max_future_skew=timedelta(seconds=b.max_future_skew_s),
            lateness=timedelta(seconds=b.lateness_s),
            max_age={kind: timedelta(seconds=s) for kind, s in b.max_age_s.items()},
            max_payload_bytes=settings.ingest.max_payload_bytes,
        )


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


_RANGE_TYPES = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "out_of_range"}
)


def describe(err: ValidationError, device_id: str, topic: str) -> tuple[ReasonCode, str]:
    """A readable reason from pydantic's errors: the device, the topic, each field.

    The reason is ``unsupported_version`` if the version is wrong, else ``out_of_range``
    if a value is outside its physical range, else ``schema``."""
    parts = []
    types = set()
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"][1:]) or "payload"
        types.add(e["type"])
        parts.append(f"{loc}: {e['msg']}")
    reason: ReasonCode = "schema"
    if "unsupported_version" in types:
        reason = "unsupported_version"
    elif types & _RANGE_TYPES:
        reason = "out_of_range"
    return reason, f"device {device_id!r} topic {topic!r}: " + "; ".join(parts)
