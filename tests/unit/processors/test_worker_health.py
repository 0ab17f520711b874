"""The worker's /health body (storage outages and stalls count after a grace, a lag never
does; not consuming is unhealthy with its reason), and
the start-up check that the topics behind the shaking table are co-partitioned."""

from __future__ import annotations

import pytest

from civic_iot.settings import Settings
from processors.app import Progress, group_instance_id, worker_health
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


def test_a_lag_is_reported_not_judged() -> None:
    report = worker_health({}, now=0.0, grace_s=30.0, lag=250_000, partitions=4, instance="w2")
    assert report == {
        "healthy": True,
        "reason": "",
        "ready": True,
        "instance": "w2",
        "storage": "ok",
        "storage_failing_s": {},
        "kafka": "ok",
        "partitions": 4,
        "lag": 250_000,
    }


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ready": False, "partitions": 0}, "starting: first rebalance"),
        ({"rebalancing": True}, "rebalancing"),
        ({"partitions": 0}, "no partition assigned"),
        ({"kafka": "kafka unavailable for 12 s (x)"}, "kafka unavailable for 12 s (x)"),
        ({"stalled_s": 30.0, "lag": 7}, "nothing committed for 30 s with a lag of 7"),
    ],
)
def test_a_worker_that_does_not_consume_is_unhealthy_and_says_why(
    kwargs: dict[str, object], reason: str
) -> None:
    args: dict[str, object] = {"lag": 0, "partitions": 4} | kwargs
    report = worker_health({}, now=0.0, grace_s=30.0, instance="w", **args)  # type: ignore[arg-type]
    assert report["healthy"] is False
    assert reason in report["reason"]


def test_a_stall_within_the_grace_is_healthy() -> None:
    report = worker_health(
        {}, now=0.0, grace_s=30.0, lag=9, partitions=4, instance="w", stalled_s=29.9
    )
    assert report["healthy"] is True


def test_progress_is_a_commit_or_no_lag() -> None:
    p = Progress()
    p.observe(0.0, committed=100, lag=50)
    p.observe(10.0, committed=100, lag=80)  # nothing committed while there is a lag
    assert p.stalled_s(25.0) == 25.0
    p.observe(30.0, committed=140, lag=60)  # committed: progress
    assert p.stalled_s(31.0) == 1.0
    p.observe(40.0, committed=140, lag=0)  # idle, nothing to commit
    p.observe(50.0, committed=140, lag=0)
    assert p.stalled_s(50.0) == 0.0


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


def test_static_membership_only_for_an_instance_set_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CIVIC_PROCESSORS__INSTANCE", raising=False)
    assert group_instance_id(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    monkeypatch.setenv("CIVIC_PROCESSORS__INSTANCE", "0")
    assert group_instance_id(Settings(_env_file=None)) == "worker-0"  # type: ignore[call-arg]
