"""Time conversions shared by the contracts and storage. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime


def to_ns(dt: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (exact, no float)."""
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
