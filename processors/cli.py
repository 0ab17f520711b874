"""Start a processors worker: ``python -m processors.cli`` (``civic-iot worker``).

Several workers scale out on the Kafka partitions; give each its own
``CIVIC_PROCESSORS__WEB_PORT`` (or 0 for none) and ``CIVIC_PROCESSORS__INSTANCE``. The web
port serves ``/health`` (JSON; 503 while InfluxDB writes have been failing for
``CIVIC_PROCESSORS__HEALTH_STORAGE_GRACE_S``) and ``/metrics`` (Prometheus). Faust keeps
its files under ``{CIVIC_DATA_DIR}/processors/{app id}``.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import faust

from civic_iot.kafka_admin import ensure_specs, partition_counts, wait_for_topics
from civic_iot.logs import limit_repeats
from civic_iot.settings import Settings, get_settings
from civic_iot.topology import TopicSpec, Topology
from processors.app import create_app

logger = logging.getLogger(__name__)


def copartitioning_errors(settings: Settings, counts: dict[str, int]) -> list[str]:
    """Topics whose partition count differs from ``CIVIC_KAFKA__PARTITIONS``.

    The water agent reads a gauge's strong-shaking mark from the ``shaking-state`` table,
    which Faust fills from ``processors.shaking``; that works only while both topics have
    the same partitions (Faust assigns co-partitioned topics by partition number). A
    mismatch would silently lose the R50 threshold after an earthquake, so it stops the
    worker instead.
    """
    n = settings.kafka.partitions
    return [
        f"{topic} has {have} partitions, CIVIC_KAFKA__PARTITIONS is {n}"
        for topic, have in sorted(counts.items())
        if have != n
    ]


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in this process until it is stopped (SIGTERM/SIGINT)."""
    names = list(Topology.of(settings).copartitioned())
    loop = asyncio.new_event_loop()  # not the thread's loop: Faust sets up its own
    try:
        counts = loop.run_until_complete(partition_counts(settings.kafka.bootstrap, names))
    finally:
        loop.close()
    errors = copartitioning_errors(settings, counts)
    if errors:
        msg = "processors worker not started: " + "; ".join(errors)
        logger.error(msg)
        raise SystemExit(msg)
    app = create_app(settings)
    _make_changelogs(settings, app)
    # Faust makes its own directory (the app's) under this one, not the parents.
    app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    limit_repeats("aiokafka")  # a Kafka outage: a line per interval, not per attempt
    logger.info(
        "processors worker starting id=%s instance=%s web_port=%d",
        app.conf.id,
        settings.processors.instance,
        settings.processors.web_port,
    )
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()


def changelog_specs(app: faust.App) -> list[TopicSpec]:
    """The changelog topic of each of the app's tables, as the worker makes it."""
    return [
        Topology.changelog_spec(
            table.changelog_topic.get_topic_name(),
            table.partitions or app.conf.topic_partitions,
        )
        for table in app.tables.values()
    ]


def _make_changelogs(settings: Settings, app: faust.App) -> None:
    """Create the tables' changelogs before Faust starts (Topology.changelog_spec: why)."""
    specs = changelog_specs(app)
    loop = asyncio.new_event_loop()
    try:
        bootstrap = settings.kafka.bootstrap
        loop.run_until_complete(ensure_specs(bootstrap, specs))
        loop.run_until_complete(wait_for_topics(bootstrap, [s.name for s in specs]))
    finally:
        loop.close()


def main() -> int:
    run_worker(get_settings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
