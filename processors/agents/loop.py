"""The commit-after-sink loop, written once: every agent runs :func:`commit_after_sink`.

An agent (:class:`BatchAgent`) says what it does with each event of a batch and after
the batch; the loop does the rest, the same way for all of them:

1. :func:`processors.faust_adapter.batches` reads with ``stream.noack_take(max,
   within)``, which yields buffered *events* and never acks them. A readings record
   holds many readings (:mod:`civic_iot.contracts.readings`), so a batch is cut again
   after the events that make ``batch_max`` inputs (a record is never split).
2. The agent handles every event of the batch: its state goes to its
   :class:`~processors.agents.tables.BatchState` (not yet to the table), its points to
   its sink, its messages (alert candidates, ticks, notices) to the app's producer at
   once, and what it gathers over the batch (township reports) after the last event.
   Between events the loop lets other agents run once :data:`YIELD_AFTER_S` has passed
   since it last did: a batch of bulk readings never holds the event loop for more than
   that and one record (at Taiwan's trickle a record holds a reading or two, and a
   yield after each cost the bulk worker an event-loop turn per reading).
3. The sink (:func:`civic_iot.storage.sink.store`) stores the batch's points while the
   next batch is read and decided: the agent never waits for InfluxDB between batches,
   only when a batch is decided before the one before it is stored (one batch is stored
   at a time, in order). The store retries with backoff while InfluxDB is down.
4. Only once the batch's points are stored is its state written to the table (and so
   its changelog), each key under its own last event, and each event acked
   (``Stream.ack`` -> ``Consumer.ack``). The next batch reads the state through the
   batch before (:meth:`~processors.agents.tables.BatchState.detach`).

The consumer commits, every ``broker_commit_interval``, only the highest *contiguous*
acked offset per partition (``Consumer._new_offset``), after flushing the producer
(``Consumer._commit_offsets``). An event whose points are not stored is never acked, so
neither it nor anything after it in its partition is committed; after a crash it is
read again and its points rewritten to the same series and time: storage sees each
reading's effect exactly once. Because the changelog never runs ahead of storage, a
re-read batch recomputes the same figures; because each key's state records the offset
of the last message applied to it (:func:`~processors.agents.tables.seen`), a message
read again after its state was written is skipped by the detectors. Messages to other
topics go through the app's own producer, which the consumer flushes before it commits.

Every agent runs with ``concurrency=1`` (faust-streaming #606: more can commit past an
unfinished message), and the app sets ``stream_wait_empty=False`` so that stopping the
worker commits what is acked instead of waiting for events that cannot be stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from faust.streams import Stream
from faust.types import EventT

from civic_iot.storage.sink import PointSink, SinkClosed, store
from processors.agents.tables import BatchState
from processors.faust_adapter import batches

logger = logging.getLogger(__name__)


#: How long, s, an agent's batch may hold the event loop before it lets another agent (the
#: seismic path) run, besides the record it is on.
YIELD_AFTER_S = 0.002


class Turns:
    """Lets the other agents (the seismic path) run once :data:`YIELD_AFTER_S` has passed
    since this did last: a long piece of work never holds the event loop for longer."""

    def __init__(self) -> None:
        self._since = time.monotonic()

    async def give(self) -> None:
        """Yield to the event loop if the time has come."""
        if time.monotonic() - self._since >= YIELD_AFTER_S:
            await asyncio.sleep(0)
            self._since = time.monotonic()


class BatchAgent(ABC):
    """What one agent does with the events of a batch; :func:`commit_after_sink` runs it."""

    #: Names the agent (with the deployment prefix), its sink and its log lines.
    name: str
    sink: PointSink
    #: Its table through the batch; None for an agent without state.
    state: BatchState[Any] | None = None
    #: Set by :func:`commit_after_sink`: since when (monotonic s) the agent has waited for
    #: events, None inside a batch (deciding, storing, acking); :class:`StallRepair`.
    idle_since_s: float | None = None

    def begin_batch(self) -> None:
        """Forget whatever a batch that did not finish left staged."""
        if self.state is not None:
            self.state.reset()

    @abstractmethod
    async def on_event(self, event: EventT[Any]) -> int | None:
        """Decode one event, decide, stage the state, add points, send messages; returns
        how many inputs (readings) the event held (None: one)."""

    async def on_batch(self) -> None:  # noqa: B027 - most agents have nothing to do here
        """After every event of the batch, before its points are stored."""

    def on_stored(self, events: Sequence[EventT[Any]]) -> None:  # noqa: B027
        """After the batch's points are stored, its state written and its events acked."""

    def batch_closer(self) -> Callable[[EventT[Any]], bool] | None:
        """What closes a batch before its wait, event by event (None: only the wait and
        ``batch_max``; :func:`processors.faust_adapter.batches`)."""
        return None


async def commit_after_sink(
    stream: Stream[Any], agent: BatchAgent, *, batch_max: int, within_s: float, retry_s: float
) -> None:
    """Run ``agent`` on ``stream`` until the stream stops (see the module docstring)."""
    clock = time.monotonic
    agent.idle_since_s = clock()
    #: The batch whose points are being stored: True once stored, written and acked,
    #: False when the worker stopped before (its sink closed).
    storing: asyncio.Task[bool] | None = None

    async def settle(done: list[EventT[Any]]) -> bool:
        try:
            await store(agent.sink, what=agent.name, retry_s=retry_s)
        except SinkClosed:
            # The worker is stopping and closed its sinks before this batch was stored:
            # end here, nothing acked, so the batch is read again after the restart.
            # (Raising would crash the agent, and faust restarting a crashed agent
            # while it stops hangs the worker.)
            logger.info(
                "stopping before the batch was stored agent=%s events=%d", agent.name, len(done)
            )
            return False
        if agent.state is not None:
            await agent.state.write()
        for event in done:
            await stream.ack(event)
        agent.on_stored(done)
        return True

    taking = batches(stream, batch_max, within_s, agent.batch_closer())
    taken: asyncio.Future[Sequence[EventT[Any]]] | None = None
    try:
        while True:
            taken = asyncio.ensure_future(anext(taking))
            if storing is not None and not storing.done():
                # Wait for events, but end at once if the batch before cannot be stored
                # (and raise what went wrong storing it).
                await asyncio.wait((taken, storing), return_when=asyncio.FIRST_COMPLETED)
            if storing is not None and storing.done():
                if not storing.result():
                    return
                storing = None
                if not taken.done():
                    agent.idle_since_s = clock()
            try:
                events = await taken
            except StopAsyncIteration:
                break
            agent.idle_since_s = None
            stopping, storing = await _decide(agent, events, batch_max, storing, settle)
            if stopping:
                return
        if storing is not None:
            await storing
    finally:
        for task in (taken, storing):
            if task is not None and not task.done():
                task.cancel()


async def _decide(
    agent: BatchAgent,
    events: Sequence[EventT[Any]],
    batch_max: int,
    storing: asyncio.Task[bool] | None,
    settle: Callable[[list[EventT[Any]]], Coroutine[Any, Any, bool]],
) -> tuple[bool, asyncio.Task[bool] | None]:
    """Decide ``events`` in batches of ``batch_max`` inputs, each stored once the one
    before is (``storing``); returns whether the worker stops (a batch's sink closed)
    and the last batch's store."""
    turns = Turns()
    i = 0
    while i < len(events):
        agent.begin_batch()
        inputs = 0
        done: list[EventT[Any]] = []
        while i < len(events) and inputs < batch_max:
            event = events[i]
            n = await agent.on_event(event)
            inputs += 1 if n is None else n
            done.append(event)
            i += 1
            await turns.give()
        await agent.on_batch()
        # One batch stored at a time, in order: the one before is stored, its state
        # written and its events acked before this one's points go.
        if storing is not None and not await storing:
            return True, None
        if agent.state is not None:
            agent.state.detach()
        storing = asyncio.create_task(settle(done))
    return False, storing


class StallRepair:
    """Which input partitions to seek again to their committed offset: those with a lag
    whose committed offset has not moved for ``after_s`` while their agent, idle (not in
    a batch), received nothing for as long.

    Why: across quick successive rebalances faust can lose records it had fetched but not
    yet handed to the agent (its read offset moves on when the flow is suspended
    mid-delivery; see :mod:`processors.faust_adapter`). The partition then stalls with a
    lag forever (seen: 4 workers joining one after another, 17 records of one partition
    never processed, every worker idle). Seeking it to its committed offset reads them
    again; an agent in a batch (storing, e.g. through an InfluxDB outage) is never
    touched, so nothing it holds is read twice. Pure: the worker's timer applies it."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._seen: dict[Any, tuple[int | None, float]] = {}

    def due(
        self,
        now: float,
        partitions: dict[Any, tuple[int | None, int]],
        idle_since: dict[str, float | None],
    ) -> list[Any]:
        """``partitions``: per input partition (``.topic`` names it) its committed offset
        (None: none) and its end offset; ``idle_since``: per topic, since when (monotonic
        s) its agent has been idle without events, None while it is in a batch. Returns
        the partitions to seek now (each then waits ``after_s`` again)."""
        out = []
        seen = self._seen
        for tp in list(seen):
            if tp not in partitions:
                del seen[tp]
        for tp, (committed, end) in partitions.items():
            lag = end - (committed or 0)
            before = seen.get(tp)
            if lag <= 0 or before is None or before[0] != committed:
                seen[tp] = (committed, now)
                continue
            idle = idle_since.get(tp.topic)
            if idle is None or now - idle < self.after_s or now - before[1] < self.after_s:
                continue
            out.append(tp)
            seen[tp] = (committed, now)
        return out


__all__ = ["BatchAgent", "StallRepair", "Turns", "commit_after_sink"]
