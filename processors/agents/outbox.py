"""Where the agents' messages go: alert candidates and the messages between agents."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import faust
from pydantic import BaseModel

from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.storage.sink import Publisher
from civic_iot.topology import Topology
from processors.faust_adapter import sent_logged

logger = logging.getLogger(__name__)


class FaustPublisher:
    """:class:`~civic_iot.storage.sink.Publisher` on the app's own producer, so the
    consumer's commit (which flushes that producer first) never passes an unsent
    message. Each message goes straight to the producer (``Producer.send``, partitioned
    by its key as a topic's send does) without faust's per-message topic machinery."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def add(self, topic: str, key: str, value: bytes) -> None:
        producer = await self._app.maybe_start_producer()
        fut = await producer.send(topic, key.encode(), value, None, None, None)
        fut.add_done_callback(sent_logged)

    async def flush(self) -> None:
        await self._app.producer.flush()

    async def close(self) -> None:
        return None

    def partitions(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, as the consumer's metadata says (None: not
        known, e.g. a topic the worker does not read)."""
        try:
            return self._app.consumer.topic_partitions(topic)
        except Exception:  # noqa: BLE001 - unknown: the caller does without
            return None


class Outbox:
    """The agents' messages as JSON on the deployment's topics."""

    def __init__(self, publisher: Publisher, topics: Topology) -> None:
        self.publisher = publisher
        self.topics = topics
        #: A topic's partitions, when the publisher knows them (the app's producer).
        self.partitions: Callable[[str], int | None] = (
            publisher.partitions if isinstance(publisher, FaustPublisher) else _unknown
        )

    async def send(self, topic: str, key: str, message: BaseModel) -> None:
        await self.publisher.add(topic, key, message.model_dump_json().encode())

    async def candidates(self, candidates: Iterable[AlertCandidate]) -> None:
        for c in candidates:
            await self.send(self.topics.candidates, c.key, c)
            logger.info("alert candidate key=%s level=%d value=%s", c.key, c.level, f"{c.value:g}")


def _unknown(_topic: str) -> None:
    return None


__all__ = ["FaustPublisher", "Outbox"]
