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


class ReadingRefusedError(Exception):
    """A message that will not be accepted, with a reason code for the dead-letter topic."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason: ReasonCode = reason
        self.message = message


#: How much younger than its bucket's retention a reading must be, so that it is still in
#: the bucket's window when the processors write it (a backlog may delay that by minutes).
RETENTION_MARGIN = timedelta(hours=1)


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
        """The limits of a deployment: a reading may be as old as ``max_age_s`` (in
        backfill mode, as old as its bucket keeps data), never older than its bucket
        keeps it less an hour (InfluxDB refuses points beyond a bucket's retention)."""
        i = settings.ingest
        keep = {
            "air": settings.influx.readings_retention_days,
            "water": settings.influx.readings_retention_days,
            "seismic": settings.influx.seismic_retention_days,
        }
        max_age = {}
        for kind, days in keep.items():
            bound = timedelta(days=days) - RETENTION_MARGIN
            max_age[kind] = bound if i.backfill else min(timedelta(seconds=i.max_age_s), bound)
        return cls(
            max_future_skew=timedelta(seconds=i.max_future_skew_s),
            lateness=timedelta(seconds=i.lateness_s),
            max_age=max_age,
            max_payload_bytes=i.max_payload_bytes,
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
