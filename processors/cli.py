"""Start a processors worker: ``python -m processors.cli`` (``civic-iot worker``).

Several workers scale out on the Kafka partitions; give each its own
``CIVIC_PROCESSORS__WEB_PORT`` (or 0 for none) and ``CIVIC_PROCESSORS__INSTANCE``. The web
port serves ``/health`` (JSON; 503 while InfluxDB writes have been failing for
``CIVIC_PROCESSORS__HEALTH_STORAGE_GRACE_S``) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import logging
import sys

import faust

from civic_iot.settings import Settings, get_settings
from processors.app import create_app

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in this process until it is stopped (SIGTERM/SIGINT)."""
    app = create_app(settings)
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
