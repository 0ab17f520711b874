"""Create civic-iot's Kafka topics (idempotent): ``python -m civic_iot.kafka_setup``.

Faust creates its own changelog and repartition topics; these are the ones the
processes exchange. Partitions are the unit of scale-out (``CIVIC_KAFKA__PARTITIONS``).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from civic_iot.settings import KafkaSettings, get_settings
from civic_iot.topics import READING_KINDS, Topics

logger = logging.getLogger(__name__)

WEEK_MS = 7 * 86_400_000


def topic_specs(kafka: KafkaSettings) -> list[NewTopic]:
    t = Topics.from_settings(kafka)
    n = kafka.partitions
    specs = [
        NewTopic(t.readings(k), n, 1, topic_configs={"retention.ms": str(WEEK_MS)})
        for k in READING_KINDS
    ]
    specs += [
        NewTopic(t.deadletter, n, 1, topic_configs={"retention.ms": str(4 * WEEK_MS)}),
        NewTopic(t.candidates, n, 1, topic_configs={"retention.ms": str(WEEK_MS)}),
        # Issued messages are the record of "who was told what": keep them.
        NewTopic(t.alerts, n, 1, topic_configs={"retention.ms": "-1"}),
        # Lifecycle state: the latest value per key survives restarts.
        NewTopic(t.alert_state, 1, 1, topic_configs={"cleanup.policy": "compact"}),
        # Leader election of the alert service: exactly one partition, never any records.
        NewTopic(t.alert_leader, 1, 1),
    ]
    return specs


async def ensure_topics(kafka: KafkaSettings) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(kafka) if s.name not in existing]
        if missing:
            await admin.create_topics(missing)
            logger.info("kafka topics created names=%s", ",".join(s.name for s in missing))
        return [s.name for s in missing]
    finally:
        await admin.close()


async def partition_counts(kafka: KafkaSettings, names: list[str]) -> dict[str, int]:
    """Partitions of each of these topics that exists (missing ones are left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(ensure_topics(get_settings().kafka))
    return 0


if __name__ == "__main__":
    sys.exit(main())
