"""A short-lived memory of expensive answers, shared by concurrent requests.

The open alerts are part of every device and township answer, and a map or a phone
polls the same device or township every few seconds: for ``ttl_s`` seconds
(``CIVIC_API__CACHE_TTL_S``, 1 s by default; 0 turns it off) an answer is reused, and
requests arriving while it is being computed wait for that one computation instead of
each asking InfluxDB. Failures are not kept. Live changes reach clients through the push
feeds, not through polling, so a second of staleness costs nothing there.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["Recent"]

T = TypeVar("T")


class Recent(Generic[T]):
    """Answers by key, each reused for ``ttl_s`` seconds; at most ``size`` keys."""

    def __init__(self, ttl_s: float, clock: Callable[[], float], size: int = 256) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._size = size
        self._done: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    async def get(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        if self.ttl_s <= 0:
            return await make()
        hit = self._done.get(key)
        if hit is not None and self._clock() - hit[0] < self.ttl_s:
            return hit[1]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = fut
        try:
            value = await make()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody logs it as lost
            raise
        else:
            fut.set_result(value)
            self._done[key] = (self._clock(), value)
            self._done.move_to_end(key)
            while len(self._done) > self._size:
                self._done.popitem(last=False)
            return value
        finally:
            del self._running[key]


def freeze(value: Any) -> Hashable:
    """A hashable key of a mapping of strings or string sequences."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value  # type: ignore[no-any-return]
