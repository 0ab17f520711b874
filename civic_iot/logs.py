"""Logging set up once, at a process's entry point (modules only ask for their logger)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


def setup_logging(level: str) -> None:
    """``key=value`` messages to stderr, one line each, at ``level`` (e.g. ``INFO``)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


class RepeatFilter(logging.Filter):
    """One record per kind (logger and message template) per ``interval_s``; the next one
    let through says how many like it were held back.

    A client library that logs every failed attempt (aiokafka logs each connection it
    cannot make, thousands a second while its broker is down) then writes a line per
    interval with a count, instead of filling the disk.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        #: (logger, template) -> [when one was last let through, how many held back since]
        self._seen: dict[tuple[str, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} (and {int(seen[1])} more like it in {now - seen[0]:.0f} s)"
        self._seen[key] = [now, 0]
        return True


def limit_repeats(prefix: str, interval_s: float = 10.0) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on the logger ``prefix`` and every logger below it
    that exists now (call it after the library is imported: a filter on a logger does not
    see its children's records)."""
    limiter = RepeatFilter(interval_s)
    names = [
        name
        for name, obj in logging.root.manager.loggerDict.items()
        if isinstance(obj, logging.Logger) and (name == prefix or name.startswith(prefix + "."))
    ]
    for name in {prefix, *names}:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(limiter)
    return limiter
