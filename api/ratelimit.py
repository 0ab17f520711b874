"""Per-client rate limit of the public (token-less) endpoints: a token bucket per IP.

Each client IP has a bucket of at most ``burst`` requests that refills continuously at
``rate_per_s``. A request takes one; with none left it is refused (HTTP 429) with the
seconds until one is back (``Retry-After``). So a client may send ``burst`` requests at
once, then ``rate_per_s`` a second for as long as it likes; a map or a script polling
every few seconds never notices, a scraper in a loop is slowed to the sustained rate.

Memory is bounded: at most ``max_clients`` buckets are kept, the least recently seen
dropped first. A dropped bucket comes back full, which only matters for a client that
was both limited and idle longer than every other tracked client; a flood of new
addresses can therefore not exhaust memory, only cycle the table.

Pure: the caller passes the time (a monotonic clock, seconds).
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets keyed by client."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            msg = f"rate_per_s={rate_per_s}, burst={burst}, max_clients={max_clients}: all > 0"
            raise ValueError(msg)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        #: client -> (tokens left, time they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """Take one request from ``client``'s bucket: 0.0 when allowed, else the seconds
        until the next one would be (> 0)."""
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_per_s
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait_s: float) -> str:
    """``Retry-After`` in whole seconds (at least 1)."""
    return str(max(1, math.ceil(wait_s)))
