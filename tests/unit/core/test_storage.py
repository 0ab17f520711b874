"""The storage core without I/O: the encoder, how InfluxDB's answers are judged and
classified, the bisection that finds refused lines, the dead-letter record, the bound of
a sink that cannot hold its input, and what /health reports.

The InfluxDB messages below are the ones InfluxDB 2.7.12 gave on the development stack
(``tests/integration/test_storage.py`` asks it again)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from civic_iot.contracts.storage import REASON_CLASSES, StorageDeadLetter
from civic_iot.settings import InfluxSettings, Settings
from civic_iot.storage.points import Point
from civic_iot.storage.sink import (
    Answer,
    InfluxSink,
    SinkClosed,
    StorageMetrics,
    deadletter_report,
    halves,
    judge,
    next_step,
    reason_class,
)

TYPE_CONFLICT = (
    "failure writing points to database: partial write: field type conflict: input field "
    '"v" on measurement "m" is type string, already exists as type float dropped=2'
)
RETENTION = (
    "failure writing points to database: partial write: dropped 1 points outside retention "
    "policy of duration 1h0m0s - oldest point m,id=r2 at 2026-11-29T08:46:44.730383388Z dropped "
    "because it violates a Retention Policy Lower Bound at 2026-12-01T07:46:44.786630809Z, newest "
    "point m,id=r2 at 2026-11-29T08:46:44.730383388Z dropped because it violates a Retention "
    "Policy Lower Bound at 2026-12-01T07:46:44.786630809Z dropped=1 for database: "
    "00892d26c3d57657 for retention policy: autogen"
)


def _body(message: str, code: str = "invalid") -> str:
    return json.dumps({"code": code, "message": message})


# --------------------------------------------------------------------------- encoder


def test_line_protocol_of_every_field_type_and_escape() -> None:
    p = Point(
        "b",
        "m x,y",
        (("dev", "a b,c=d"), ("area", "A")),
        (("f", 1.5), ("i", 3), ("t", True), ("s", 'say "hi" \\ there'), ("z", 0.0)),
        42,
    )
    assert p.line() == (
        r"m\ x\,y,area=A,dev=a\ b\,c\=d "
        r'f=1.5,i=3i,t=true,s="say \"hi\" \\ there",z=0.0 42'
    )


def test_a_newline_in_a_string_field_is_written_as_it_is() -> None:
    # InfluxDB stores a raw newline inside a quoted string; "\\n" would be two characters.
    p = Point("b", "ack", (), (("note", "on it\nnow"),), 1)
    assert p.line() == 'ack note="on it\nnow" 1'


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("status", "body", "outcome", "message"),
    [
        (204, "", "written", ""),
        (422, _body(TYPE_CONFLICT, "unprocessable entity"), "refused", TYPE_CONFLICT),
        (400, _body("unable to parse 'garbage': missing fields"), "refused", "unable to parse"),
        (413, "", "refused", "HTTP 413"),
        (500, _body("internal error", "internal error"), "unavailable", "internal error"),
        (503, "<html>busy</html>", "unavailable", "<html>busy</html>"),
        (408, "", "unavailable", "HTTP 408"),
        (425, "", "unavailable", "HTTP 425"),
        (429, "", "unavailable", "HTTP 429"),
        # A wrong token, organisation or bucket is a configuration outage, not a verdict
        # on the points: they are kept until the operator fixes it.
        (401, _body("unauthorized access", "unauthorized"), "unavailable", "unauthorized"),
        (403, "", "unavailable", "HTTP 403"),
        (404, _body('bucket "nope" not found', "not found"), "unavailable", "not found"),
        (307, "", "unavailable", "HTTP 307"),
    ],
)
def test_judge(status: int, body: str, outcome: str, message: str) -> None:
    answer = judge(status, body)
    assert (answer.outcome, answer.status) == (outcome, status)
    assert message in answer.message


LINE = "m,id=a v=1.0 1796114804730383388"


@pytest.mark.parametrize(
    ("status", "message", "line", "cls"),
    [
        (422, TYPE_CONFLICT, LINE, "type_conflict"),
        (422, RETENTION, LINE, "retention"),
        (
            400,
            "unable to parse 'm,id=t2 v=1.0 9223372036854775807': time outside range "
            "-9223372036854775806 - 9223372036854775806",
            "m,id=t2 v=1.0 9223372036854775807",
            "timestamp",
        ),
        (  # a time beyond int64 (year 2300, or year 1 below it) fails as a number
            400,
            "unable to parse 'm v=1.0 -62135596800000000000': strconv.ParseInt: parsing "
            '"-62135596800000000000": value out of range',
            "m v=1.0 -62135596800000000000",
            "timestamp",
        ),
        (  # the same failure on a field value is a malformed line, not a timestamp
            400,
            "unable to parse 'm v=99999999999999999999i 1': strconv.ParseInt: parsing "
            '"99999999999999999999": value out of range',
            "m v=99999999999999999999i 1",
            "malformed",
        ),
        (400, "unable to parse 'm,id=y2 v= 1': missing field value", "m,id=y2 v= 1", "malformed"),
        (413, "HTTP 413", LINE, "refused"),
    ],
)
def test_reason_class(status: int, message: str, line: str, cls: str) -> None:
    assert reason_class(Answer("refused", status, message), line) == cls
    assert cls in REASON_CLASSES


# --------------------------------------------------------------------------- bisection


@pytest.mark.parametrize(
    ("outcome", "lines", "step"),
    [
        ("written", 5000, "done"),
        ("written", 1, "done"),
        ("unavailable", 5000, "retry"),
        ("unavailable", 1, "retry"),
        ("refused", 5000, "split"),
        ("refused", 2, "split"),
        ("refused", 1, "set_aside"),
    ],
)
def test_next_step(outcome: str, lines: int, step: str) -> None:
    answer = Answer(outcome, 0, "")  # type: ignore[arg-type]
    assert next_step(answer, lines) == step


@pytest.mark.parametrize(("lo", "hi"), [(0, 2), (0, 3), (0, 5000), (17, 18 + 17)])
def test_halves_cover_the_range_once(lo: int, hi: int) -> None:
    (a, b), (c, d) = halves(lo, hi)
    assert (a, d) == (lo, hi)
    assert b == c
    assert a < b < d


def _bisect(n: int, bad: set[int]) -> tuple[list[int], list[int], int]:
    """The sink's walk over ``n`` lines (next_step + halves) when InfluxDB refuses every
    request holding a line of ``bad``: (lines written, lines set aside, requests)."""
    parts, written, aside, requests = [(0, n)], [], [], 0
    while parts:
        lo, hi = parts.pop()
        requests += 1
        refused = any(lo <= i < hi for i in bad)
        step = next_step(Answer("refused" if refused else "written", 0, ""), hi - lo)
        if step == "split":
            first, second = halves(lo, hi)
            parts += [second, first]
        elif step == "set_aside":
            aside.append(lo)
        else:
            written += range(lo, hi)
    return written, aside, requests


@pytest.mark.parametrize(
    ("n", "bad"),
    [
        (1, set()),
        (1, {0}),
        (5000, set()),
        (5000, {2500}),
        (5000, {0, 4999}),
        (5000, set(range(0, 5000, 100))),
        (7, set(range(7))),
    ],
)
def test_bisection_sets_aside_exactly_the_refused_lines_in_order(n: int, bad: set[int]) -> None:
    written, aside, requests = _bisect(n, bad)
    assert aside == sorted(bad)
    assert sorted(written + aside) == list(range(n))  # every line once, none lost
    assert written == sorted(written)  # the first half goes first: the lines' order
    # About 2 k log2(n / k) requests for k refused lines; at most 2 n - 1.
    assert requests <= max(1, 2 * n - 1)
    if len(bad) == 1 and n == 5000:
        assert requests <= 2 * 13 + 1


# --------------------------------------------------------------------------- the record


def test_deadletter_record_round_trip_and_key() -> None:
    rec = StorageDeadLetter(
        line="air,device=a o3_ppb=35.0 1796114804730383388",
        bucket="readings",
        measurement="air",
        service="processors",
        sink="air",
        reason_class="type_conflict",
        reason=TYPE_CONFLICT,
        status=422,
        at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
    )
    assert rec.key() == b"air"
    back = StorageDeadLetter.model_validate_json(rec.encode())
    assert back == rec
    assert json.loads(rec.encode())["at"] == "2026-12-01T08:00:00Z"
    with pytest.raises(ValueError, match="reason_class"):
        StorageDeadLetter.model_validate({**rec.model_dump(), "reason_class": "oops"})


# --------------------------------------------------------------------------- bounded sink


class _NoPublisher:
    """The sink must not publish before a flush: any call fails the test."""

    async def add(self, topic: str, key: str, value: bytes) -> None:
        raise AssertionError("published on add")

    async def flush(self) -> None:
        raise AssertionError("published on add")

    async def close(self) -> None:
        return None


def _sink(max_pending: int | None, registry: CollectorRegistry) -> InfluxSink:
    return InfluxSink(
        url="http://127.0.0.1:9",
        token="t",
        org="o",
        name="alerts",
        service="alerts",
        deadletters=_NoPublisher(),
        deadletter_topic="storage.deadletter",
        max_pending=max_pending,
        metrics=StorageMetrics.of(registry),
    )


def _points(n: int) -> list[Point]:
    return [Point("alerts", "alert", (), (("level", i),), i) for i in range(n)]


def test_a_bounded_sink_sets_aside_what_it_cannot_hold_counted_never_silently() -> None:
    registry = CollectorRegistry()
    sink = _sink(3, registry)
    sink.add(_points(5))
    assert sink.pending == 3
    assert sink.deadletters == 2
    last = sink.last_deadletter
    assert last is not None
    assert (last.reason_class, last.status, last.line) == ("overflow", 0, "alert level=4i 4")
    assert (
        registry.get_sample_value(
            "civic_storage_deadletters_total", {"sink": "alerts", "reason": "overflow"}
        )
        == 2.0
    )
    report = deadletter_report({"alerts": sink})
    assert report["alerts"]["count"] == 2
    assert report["alerts"]["last_reason_class"] == "overflow"


def test_an_unbounded_sink_keeps_everything() -> None:
    sink = _sink(None, CollectorRegistry())
    sink.add(_points(1000))
    assert (sink.pending, sink.deadletters) == (1000, 0)
    assert deadletter_report({"air": sink, "other": object()}) == {}


def test_a_closed_sink_refuses_to_write_and_keeps_its_points() -> None:
    # Closing while the worker stops: no new session, no crash on the closed one; the
    # points stay unstored (their offsets uncommitted, Kafka delivers them again).
    sink = _sink(None, CollectorRegistry())
    sink.add(_points(3))

    async def run() -> None:
        await sink.close()
        with pytest.raises(SinkClosed):
            await sink.flush()

    asyncio.run(run())
    assert sink.pending == 3
    assert sink.write_errors == 0


def test_metrics_are_created_once_per_registry() -> None:
    registry = CollectorRegistry()
    assert StorageMetrics.of(registry) is StorageMetrics.of(registry)
    assert StorageMetrics.of(CollectorRegistry()) is not StorageMetrics.of(registry)


# --------------------------------------------------------------------------- settings


def test_write_knobs_live_in_influx_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIC_INFLUX__WRITE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CIVIC_INFLUX__WRITE_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("CIVIC_INFLUX__WRITE_BACKOFF_BASE_S", "0.1")
    monkeypatch.setenv("CIVIC_INFLUX__WRITE_BACKOFF_CAP_S", "1")
    monkeypatch.setenv("CIVIC_INFLUX__MAX_PENDING_POINTS", "10")
    i = Settings(_env_file=None).influx  # type: ignore[call-arg]
    assert (i.write_timeout_s, i.write_max_attempts) == (2.5, 3)
    assert (i.write_backoff_base_s, i.write_backoff_cap_s, i.max_pending_points) == (0.1, 1, 10)
    d = InfluxSettings()
    assert (d.write_timeout_s, d.write_max_attempts, d.max_pending_points) == (10.0, 5, 100_000)
