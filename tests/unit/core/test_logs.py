"""``RepeatFilter``: a library that logs every failed attempt writes one line per interval."""

from __future__ import annotations

import logging

import pytest

from civic_iot.logs import RepeatFilter, limit_repeats


def record(msg: str, name: str = "aiokafka", *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_one_line_per_kind_and_interval_then_the_count() -> None:
    now = [0.0]
    limiter = RepeatFilter(10.0, clock=lambda: now[0])
    let_through = []
    for t in (0.0, 0.001, 0.002, 5.0, 10.5, 10.6, 30.0):
        now[0] = t
        rec = record("Unable connect to node with id %s: %s", "aiokafka", 1, "refused")
        if limiter.filter(rec):
            let_through.append((t, rec.getMessage()))
    assert let_through == [
        (0.0, "Unable connect to node with id 1: refused"),
        (10.5, "Unable connect to node with id 1: refused (and 3 more like it in 10 s)"),
        (30.0, "Unable connect to node with id 1: refused (and 1 more like it in 20 s)"),
    ]


def test_kinds_are_counted_apart() -> None:
    limiter = RepeatFilter(10.0, clock=lambda: 0.0)
    assert limiter.filter(record("a %s", "aiokafka", 1))
    assert limiter.filter(record("b %s", "aiokafka", 1))
    assert limiter.filter(record("a %s", "aiokafka.conn", 1))
    assert not limiter.filter(record("a %s", "aiokafka", 2))  # same template, other args


def test_limit_repeats_covers_the_loggers_below_the_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = logging.getLogger("civictest.lib.client")
    other = logging.getLogger("civictestother")
    limit_repeats("civictest", interval_s=60)
    limit_repeats("civictest", interval_s=60)  # again: still one filter per logger
    assert len(child.filters) == 1
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            child.warning("cannot connect")
            other.warning("cannot connect")
    assert [r.name for r in caplog.records].count("civictest.lib.client") == 1
    assert [r.name for r in caplog.records].count("civictestother") == 5
