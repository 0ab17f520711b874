"""The mark ingest puts on every record it produces, so that the processors can tell
ingest's records from anyone else's. No I/O.

Anyone who can produce to Kafka can write to ``readings.{kind}``; only ingest and the
processors know the mark key (``<data dir>/secrets/kafka-mark-key``, see
:func:`civic_iot.settings.mark_key`). The mark is a Kafka header, :data:`HEADER`, whose
value is ``v1=`` and the hex HMAC-SHA256, under that key, of the record's topic, key and
value (each length-prefixed, so no two records share an input): a record copied to
another topic or under another key loses its mark, and a changed byte breaks it.

A replayed record (the same bytes again, on the same topic and key) keeps its mark: the
processors judge its time like any other's (:mod:`processors.guard`), and a reading read
twice collapses by ``reading_id``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

#: The Kafka header that carries the mark.
HEADER = "civic-mark"
#: The mark's version prefix: a new scheme gets a new one.
_VERSION = b"v1="

#: Why a record has no valid mark.
MarkProblem = Literal["unmarked", "bad_mark"]

#: Kafka record headers as aiokafka gives them (a list of pairs) or as a mapping.
Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes]


def _input(topic: str, key: bytes | None, value: bytes) -> bytes:
    t = topic.encode()
    k = b"" if key is None else key
    return b"%d:%b%d:%b" % (len(t), t, len(k), k) + value


@dataclass(frozen=True, slots=True)
class Marker:
    """Marks records and checks marks under one key (at least 16 bytes)."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            msg = "the record mark key must be at least 16 bytes"
            raise ValueError(msg)

    def mark(self, topic: str, key: bytes | None, value: bytes) -> bytes:
        """The header value for one record."""
        return _VERSION + hmac.digest(self.key, _input(topic, key, value), "sha256").hex().encode()

    def headers(self, topic: str, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """The headers to produce a record with (aiokafka's form)."""
        return [(HEADER, self.mark(topic, key, value))]

    def problem(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> MarkProblem | None:
        """``None`` when the record carries exactly one valid mark; else why not."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        marks = [v for k, v in pairs if k == HEADER]
        if not marks:
            return "unmarked"
        if len(marks) > 1 or value is None or not isinstance(marks[0], bytes):
            return "bad_mark"
        ok = hmac.compare_digest(marks[0], self.mark(topic, key, value))
        return None if ok else "bad_mark"


__all__ = ["HEADER", "Headers", "MarkProblem", "Marker"]
