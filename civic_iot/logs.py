"""Logging set up once, at a process's entry point (modules only ask for their logger)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    """``key=value`` messages to stderr, one line each, at ``level`` (e.g. ``INFO``)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
