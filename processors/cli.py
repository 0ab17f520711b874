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

from civic_iot.kafka_admin import partition_counts
from civic_iot.logs import limit_repeats
from civic_iot.settings import Settings, get_settings
from civic_iot.topology import Topology
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


#: Kafka session of a worker, s: a worker that dies and does not come back loses its
#: partitions to the others after this (the broker's minimum is 6 s).
SESSION_TIMEOUT_S = 10.0
#: Heartbeats within a session: a third of it, so one lost heartbeat costs nothing.
HEARTBEAT_INTERVAL_S = SESSION_TIMEOUT_S / 3


def tune_recovery(app: faust.App, settings: Settings) -> None:
    """How fast a worker that was killed is replaced.

    Static membership (KIP-345): the consumer's group instance id is the worker's
    ``CIVIC_PROCESSORS__INSTANCE``, so a worker restarted with the same instance takes its
    partitions back at once, without waiting for the dead process's session to time out
    and without a rebalance of the others. Every worker of a deployment therefore needs an
    instance of its own (two with the same one fence each other: the older one stops).
    A stopped worker is not replaced before the session timeout either: scaling down
    costs that long; a crash loop costs nothing more.
    """
    app.conf.consumer_group_instance_id = f"worker-{settings.processors.instance}"
    app.conf.broker_session_timeout = SESSION_TIMEOUT_S
    app.conf.broker_heartbeat_interval = HEARTBEAT_INTERVAL_S


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
    # Faust makes its own directory (the app's) under this one, not the parents.
    app.conf.datadir.parent.mkdir(parents=True, exist_ok=True)
    tune_recovery(app, settings)
    limit_repeats("aiokafka")  # a Kafka outage: a line per interval, not per attempt
    logger.info(
        "processors worker starting id=%s instance=%s web_port=%d",
        app.conf.id,
        settings.processors.instance,
        settings.processors.web_port,
    )
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()


def main() -> int:
    run_worker(get_settings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
