"""In-memory recorders of the sink and publisher Protocols, for the agents' unit tests."""

from __future__ import annotations

from collections.abc import Iterable

from civic_iot.storage.points import Point


class RecordingSink:
    """PointSink: remembers what was flushed."""

    def __init__(self) -> None:
        self.pending: list[Point] = []
        self.stored: list[Point] = []

    def add(self, points: Iterable[Point]) -> None:
        self.pending.extend(points)

    async def flush(self) -> None:
        self.stored += self.pending
        self.pending = []

    async def close(self) -> None:
        return None


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def add(self, topic: str, key: str, value: bytes) -> None:
        self.sent.append((topic, key, value))

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
