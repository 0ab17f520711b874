"""Time conversions shared by the contracts and storage. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime

#: The epoch, made once: :func:`to_ns` runs for every stored point.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ns(dt: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (exact, no float)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
