"""The dead-letter record on ``storage.deadletter``: a point that was not stored, and why.

The InfluxDB sink (:mod:`civic_iot.storage.sink`) writes one for every line InfluxDB
refused (a field type conflict, a timestamp out of range or outside the bucket's
retention, a malformed line) and for every point it had to set aside without an answer
(its buffer full, or the service stopping while InfluxDB was unavailable). The line
protocol is kept exactly as it was sent, so an operator can write it again once the cause
is fixed (README, "Storage failures"). Keyed by measurement. No I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

#: Why a point was set aside. The first five are InfluxDB's refusals (HTTP 4xx):
#:
#: - ``type_conflict``: a field already has another type in this shard (HTTP 422);
#: - ``retention``: the time is older than the bucket's retention (HTTP 422);
#: - ``timestamp``: the time is outside what InfluxDB can store, 1677-2262 (HTTP 400);
#: - ``malformed``: the line does not parse (HTTP 400);
#: - ``refused``: any other refusal of the line as it is (HTTP 4xx, e.g. 413 too large);
#:
#: and two for points InfluxDB never answered for (``status`` 0):
#:
#: - ``overflow``: the sink's buffer was full while InfluxDB was unavailable;
#: - ``unavailable``: the service stopped while InfluxDB was unavailable.
ReasonClass = Literal[
    "type_conflict",
    "retention",
    "timestamp",
    "malformed",
    "refused",
    "overflow",
    "unavailable",
]

REASON_CLASSES: tuple[ReasonClass, ...] = (
    "type_conflict",
    "retention",
    "timestamp",
    "malformed",
    "refused",
    "overflow",
    "unavailable",
)


class StorageDeadLetter(BaseModel):
    """One point that is not in InfluxDB, as the sink sets it aside."""

    model_config = ConfigDict(frozen=True)

    #: The point in InfluxDB line protocol (nanosecond precision), exactly as sent.
    line: str
    bucket: str
    measurement: str
    #: The process that tried to store it (``processors``, ``alerts``) and its sink
    #: (a processors agent such as ``air``, or ``alerts``).
    service: str
    sink: str
    reason_class: ReasonClass
    #: InfluxDB's answer to this line written alone (its ``message``), or why the point
    #: was never answered.
    reason: str
    #: HTTP status of that answer; 0 when InfluxDB never answered for the point.
    status: int
    #: When it was set aside.
    at: AwareDatetime

    def key(self) -> bytes:
        """The Kafka key: the measurement (``Topology.storage_deadletter``)."""
        return self.measurement.encode()

    def encode(self) -> bytes:
        """The Kafka value: this record as JSON."""
        return self.model_dump_json().encode()


__all__ = ["REASON_CLASSES", "ReasonClass", "StorageDeadLetter"]
