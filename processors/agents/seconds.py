"""When the stations' batch may close before its wait: once the stream second is in.

The stations send a packet a second, at the top of the second; a batch that waits its
whole ``CIVIC_PROCESSORS__SEISMIC_WITHIN_S`` holds a packet that long for nothing once
every station has sent it. :class:`StreamSeconds` follows, per source partition, which
stations sent which packet second (a packet's second: its first sample's epoch second),
and says when the newest second is *complete*: in every active partition, every station
that sent the previous second has sent this one. The batch then closes at once
(:func:`processors.faust_adapter.batches` ``closes``); otherwise at its wait, as before.

What it costs when it is wrong is time, never a reading: a station that stops sending
holds its partition's second open until the wait expires, once (the next second expects
only the stations of this one); a partition whose stations all fell silent is no longer
active two seconds on. A packet of an older second than its partition's newest
(a straggler) changes nothing. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Where a one-reading record's ``reading_id`` begins (ingest writes it first:
#: :meth:`civic_iot.contracts.readings.Reading.to_record`).
_ID_PREFIX = b'{"reading_id":"'
_NS_PER_S = 1_000_000_000


def packet_seconds(value: bytes) -> list[tuple[str, int]]:
    """(station, packet epoch second) of each reading in a readings record, read from
    its ``reading_id`` (``{device}:{event_time_ns}``) without decoding the record; a
    line that does not begin as ingest writes one is left out (the agent judges it)."""
    out: list[tuple[str, int]] = []
    start = len(_ID_PREFIX)
    for line in value.split(b"\n"):
        if not line.startswith(_ID_PREFIX):
            continue
        end = line.find(b'"', start)
        device, sep, ns = line[start:end].rpartition(b":")
        if not sep or not ns.isdigit():
            continue
        out.append((device.decode(errors="replace"), int(ns) // _NS_PER_S))
    return out


@dataclass(slots=True)
class _Partition:
    #: The newest packet second seen in the partition (None: none yet).
    second: int | None = None
    #: Stations that sent it.
    sent: set[str] = field(default_factory=set)
    #: Stations that sent the second before it (empty: unknown, never complete).
    expected: frozenset[str] = frozenset()


class StreamSeconds:
    """Which packet seconds each partition has in full (module doc)."""

    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}
        #: The newest packet second of any partition.
        self.newest: int | None = None

    def add(self, partition: int, packets: Iterable[tuple[str, int]]) -> bool:
        """Note a record's packets (``packet_seconds``) from ``partition``; returns
        whether the newest second is now complete (:meth:`complete`)."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        for station, second in packets:
            if part.second is None or second > part.second:
                # A new second: the stations of the one just before it are expected
                # (after a gap, nobody is known to be due: the wait decides).
                gap = part.second is None or second != part.second + 1
                part.expected = frozenset() if gap else frozenset(part.sent)
                part.second = second
                part.sent = {station}
                if self.newest is None or second > self.newest:
                    self.newest = second
            elif second == part.second:
                part.sent.add(station)
        return self.complete()

    def complete(self) -> bool:
        """Whether every active partition (one that sent the newest second or the one
        before it) has the newest second from every station that sent the one before."""
        newest = self.newest
        if newest is None:
            return False
        for part in self._parts.values():
            if part.second is None or part.second < newest - 1:
                continue  # silent for two seconds: not waited for
            if part.second != newest or not part.expected or not part.expected <= part.sent:
                return False
        return True


__all__ = ["StreamSeconds", "packet_seconds"]
