"""Create, inspect and delete a deployment's Kafka topics (:mod:`civic_iot.topology`).

``python -m civic_iot.kafka_admin`` creates the missing topics (idempotent; run by
``deploy/stack.sh up``); ``civic-iot topics create|delete|list`` is the operator's door.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from civic_iot.settings import get_settings
from civic_iot.topology import TopicSpec, Topology

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_MS = 15_000


def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=REQUEST_TIMEOUT_MS)


async def ensure_topics(bootstrap: str, topology: Topology) -> list[str]:
    """Create the deployment's missing topics; returns the names created. Two processes
    doing this at once is harmless: the broker creates each topic once."""
    return await ensure_specs(bootstrap, topology.specs())


async def ensure_specs(bootstrap: str, specs: list[TopicSpec]) -> list[str]:
    """Create those of ``specs`` that do not exist; returns the names created."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
            )
            logger.info("kafka topics created names=%s", ",".join(s.name for s in missing))
        return [s.name for s in missing]
    finally:
        await admin.close()


async def wait_for_topics(bootstrap: str, names: list[str], timeout_s: float = 10.0) -> list[str]:
    """Wait until these topics exist; returns those still missing after ``timeout_s``
    (a topic created a moment ago reaches the broker's metadata shortly after)."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            existing = set(await admin.list_topics())
            missing = [t for t in names if t not in existing]
            if not missing or loop.time() > deadline:
                return missing
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def deployment_topics(bootstrap: str, topology: Topology) -> list[str]:
    """Every topic of a prefixed deployment: the topology's and Faust's (changelogs,
    repartition topics), i.e. every topic whose name starts with the prefix."""
    if not topology.prefix:
        msg = "only a prefixed deployment's topics can be listed by prefix"
        raise ValueError(msg)
    admin = _admin(bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(topology.prefix))
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topology: Topology) -> list[str]:
    """Delete every topic of a prefixed deployment (never the unprefixed production one);
    returns the names deleted. Its consumer groups, left without topics, expire by the
    broker's ``offsets.retention.minutes``."""
    names = await deployment_topics(bootstrap, topology)
    admin = _admin(bootstrap)
    await admin.start()
    try:
        if names:
            await admin.delete_topics(names)
            logger.info("kafka topics deleted count=%d prefix=%s", len(names), topology.prefix)
        return names
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partitions of each of these topics that exists (missing ones are left out, and not
    created: a metadata request for a missing topic would create it on a broker with
    ``auto.create.topics.enable``)."""
    admin = _admin(bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [n for n in names if n in existing]
        described = await admin.describe_topics(present) if present else []
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    settings = get_settings()
    asyncio.run(ensure_topics(settings.kafka.bootstrap, Topology.of(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
