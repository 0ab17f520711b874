"""What one record (or one timer run) made fail is logged and counted, never raised.

An exception that escapes a Faust agent stops it, and its unacked record holds the
partition's commit for good: a poison record would stall the stream on every restart. So
each agent catches what decoding and its handler raise for one record (the device
agents, :class:`~processors.agents.township.TownshipAgent`,
:class:`~processors.agents.shaking.ShakingAgent`, :class:`~processors.agents.quake.QuakeAgent`
per tick, :class:`~processors.agents.deadletter.DeadletterAgent`), counts it as
``detector_errors`` and moves on; a timer's run is wrapped alike (:func:`contained`).
Sending to Kafka and storing stay outside: an outage is not a record's fault.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import EventT

from processors.agents.stats import Stats

logger = logging.getLogger(__name__)


def failed(stats: Stats, agent: str, exc: BaseException, event: EventT[Any] | None = None) -> None:
    """Log ``exc`` with its traceback, naming the record, and count it."""
    stats.counters["detector_errors"] += 1
    if event is None:
        logger.error("agent step failed agent=%s", agent, exc_info=exc)
        return
    msg = event.message
    logger.error(
        "record failed agent=%s topic=%s partition=%s offset=%s",
        agent,
        msg.topic,
        msg.partition,
        msg.offset,
        exc_info=exc,
    )


def contained(
    run: Callable[[], Awaitable[None]], stats: Stats, name: str
) -> Callable[[], Awaitable[None]]:
    """``run`` (a timer's work) with any exception logged and counted: a timer whose
    run raised would never run again."""

    async def guarded() -> None:
        try:
            await run()
        except Exception as exc:  # noqa: BLE001 - see the module doc
            failed(stats, name, exc)

    guarded.__name__ = guarded.__qualname__ = f"{name}_timer"
    return guarded


__all__ = ["contained", "failed"]
