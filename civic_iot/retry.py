"""Exponential backoff with full jitter: the one retry policy of every civic-iot process.

``delay = uniform(0, min(cap_s, base_s * 2**attempt))``: the "full jitter" of the AWS
Architecture Blog's "Exponential Backoff And Jitter". Spreading retries over the whole
window keeps many failing deliveries from hammering a receiver in lock-step when it comes
back. Pure: the caller passes the random source, so tests are deterministic;
:class:`Backoff` only adds the count of consecutive failures, for one owner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backoff", "RandomSource", "ceiling", "delay", "retryable_status"]

#: Exponent beyond which ``2**attempt`` only overflows; any sane cap is reached long before.
_MAX_EXPONENT = 62


class RandomSource(Protocol):
    """What :func:`delay` needs from a random generator (``random.Random`` has it)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


def ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The upper end of the delay window before retry ``attempt`` (0 = first retry), s."""
    if attempt < 0:
        msg = f"backoff attempt must be >= 0, got {attempt}"
        raise ValueError(msg)
    if base_s < 0 or cap_s < 0:
        msg = f"backoff base_s and cap_s must be >= 0, got base_s={base_s} cap_s={cap_s}"
        raise ValueError(msg)
    return min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))


def delay(attempt: int, base_s: float, cap_s: float, rng: RandomSource) -> float:
    """Seconds to wait before retry ``attempt`` (0 = first retry): in [0, ceiling)."""
    return rng.random() * ceiling(attempt, base_s, cap_s)


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer is worth retrying unchanged: 5xx, 408 Request Timeout,
    425 Too Early, 429 Too Many Requests (webhooks and InfluxDB writes alike).

    Any other 4xx means the receiver refuses this request as it is; sending it again
    unchanged cannot help.
    """
    return status >= 500 or status in (408, 425, 429)


@dataclass(slots=True)
class Backoff:
    """The consecutive failures of one thing (a connection, a batch) and its next delay.

    :meth:`next_delay` counts a failure and returns :func:`delay` for it (the first retry
    waits ``[0, base_s)``); :meth:`reset` after a success, so the next failure starts
    from the bottom again. Not thread-safe: one owner.
    """

    base_s: float
    cap_s: float
    rng: RandomSource = field(default_factory=random.Random)
    #: Failures since the last success.
    failures: int = 0

    def next_delay(self) -> float:
        """Count one more failure; seconds to wait before retrying."""
        wait = delay(self.failures, self.base_s, self.cap_s, self.rng)
        self.failures += 1
        return wait

    def reset(self) -> None:
        """A success: the next failure waits the shortest window again."""
        self.failures = 0
