"""The worker's /health body (storage outages count after a grace, lag never does), and
the start-up check that the topics behind the shaking table are co-partitioned."""

from __future__ import annotations

import pytest

from civic_iot.settings import Settings
from processors.app import worker_health
from processors.cli import copartitioning_errors


@pytest.mark.parametrize(
    ("failing", "healthy", "down"),
    [
        ({}, True, {}),
        ({"air": None, "water": None}, True, {}),
        ({"air": 100.0 - 29.9, "water": None}, True, {}),  # failing, within the grace
        ({"air": 100.0 - 30.0, "water": None}, False, {"air": 30.0}),  # at the grace
        ({"air": 100.0 - 45.0, "quake": 100.0 - 31.0}, False, {"air": 45.0, "quake": 31.0}),
    ],
)
def test_storage_failing_longer_than_the_grace_is_unhealthy(
    failing: dict[str, float | None], healthy: bool, down: dict[str, float]
) -> None:
    report = worker_health(failing, now=100.0, grace_s=30.0, lag=0, partitions=4, instance="w1")
    assert report["healthy"] is healthy
    assert report["storage_failing_s"] == down
    assert report["storage"] == ("ok" if healthy else "unavailable")


def test_not_ready_until_the_first_rebalance_is_done() -> None:
    report = worker_health(
        {}, now=0.0, grace_s=30.0, lag=0, partitions=0, instance="w", ready=False
    )
    assert report["healthy"] is False
    assert report["ready"] is False


def test_lag_and_no_partitions_are_reported_not_judged() -> None:
    report = worker_health({}, now=0.0, grace_s=30.0, lag=250_000, partitions=0, instance="w2")
    assert report == {
        "healthy": True,
        "ready": True,
        "instance": "w2",
        "storage": "ok",
        "storage_failing_s": {},
        "partitions": 0,
        "lag": 250_000,
    }


@pytest.mark.parametrize(
    ("counts", "errors"),
    [
        ({}, []),  # nothing created yet: Faust creates processors.shaking with N
        ({"readings.water": 4, "processors.shaking": 4}, []),
        (
            {"readings.water": 8, "processors.shaking": 4},
            ["readings.water has 8 partitions, CIVIC_KAFKA__PARTITIONS is 4"],
        ),
    ],
)
def test_topics_the_shaking_table_relies_on_must_be_copartitioned(
    counts: dict[str, int], errors: list[str]
) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka.partitions == 4
    assert copartitioning_errors(settings, counts) == errors
