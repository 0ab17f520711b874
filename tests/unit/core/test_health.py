"""KafkaWatch: since when Kafka has not answered and why, logged once each way."""

from __future__ import annotations

import asyncio
import logging

import pytest

from civic_iot.health import KafkaWatch, kafka_answers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_counts_from_its_first_unanswered_question(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = KafkaWatch("svc", clock)
    watch.record("")
    assert watch.reason() == ""
    with caplog.at_level(logging.INFO, logger="civic_iot.health"):
        watch.record("KafkaConnectionError()")
        clock.now += 5
        watch.record("no broker answered a metadata request")
        clock.now += 7
        assert watch.reason() == (
            "kafka unavailable for 12 s (no broker answered a metadata request)"
        )
        watch.record("")
    assert watch.reason() == ""
    assert watch.failing_since is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "svc kafka unavailable error=KafkaConnectionError()",
        "svc kafka answers again after_s=12.0",
    ]


class Client:
    """The one call kafka_answers makes of an AIOKafkaClient."""

    def __init__(self, answer: bool | None, exc: Exception | None = None) -> None:
        self.answer, self.exc = answer, exc

    async def force_metadata_update(self) -> bool:
        if self.exc is not None:
            raise self.exc
        if self.answer is None:
            await asyncio.sleep(10)
        return bool(self.answer)


@pytest.mark.parametrize(
    ("client", "error"),
    [
        (Client(True), ""),
        (Client(False), "no broker answered a metadata request"),
        (Client(None), "no answer to a metadata request within 0.05 s"),
        (Client(True, RuntimeError("closed")), "RuntimeError('closed')"),
    ],
)
def test_kafka_answers_says_why_not(client: Client, error: str) -> None:
    assert asyncio.run(kafka_answers(client, 0.05)) == error
