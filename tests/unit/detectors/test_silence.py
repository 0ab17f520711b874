"""The silence watch: which devices are silent, judged against which clock, reported once."""

from __future__ import annotations

from typing import Any

import pytest

from processors.detectors.health import silent_devices
from processors.detectors.silence import KindActivity, Silence, check_silence
from processors.detectors.windows import from_epoch

NOW = 100_000.0
AFTER = {"air": 100.0, "water": 100.0, "seismic": 10.0}


def _air(**kw: Any) -> dict[str, KindActivity]:
    """Air activity: the kind read 1 s ago, the worker up for an hour, unless told."""
    base: dict[str, Any] = {"quiet_s": 1.0, "uptime_s": 3600.0}
    return {"air": KindActivity(**{**base, **kw})}


@pytest.mark.parametrize(
    ("activity", "silent"),
    [
        # Nothing read since the start (no partition clock): the wall clock judges.
        (_air(last_seen={"a": NOW - 101}), {"a": NOW}),
        (_air(last_seen={"a": NOW - 100}), {}),  # exactly the threshold is not silence
        # Readings arrive: each device against its own partition's newest event time.
        (
            _air(
                last_seen={"behind": NOW - 5000, "quiet": NOW - 300},
                clocks={0: NOW - 4950, 1: NOW - 50},
                partition_of={"behind": 0, "quiet": 1},
            ),
            {"quiet": NOW - 50},  # "behind" is 50 s behind its partition: not silent
        ),
        # A device whose partition is unknown: the slowest partition of its kind.
        (
            _air(last_seen={"a": NOW - 500}, clocks={0: NOW - 450, 1: NOW - 50}),
            {},
        ),
        (
            _air(last_seen={"a": NOW - 600}, clocks={0: NOW - 450, 1: NOW - 50}),
            {"a": NOW - 450},
        ),
        # The whole kind quiet for the threshold: an outage, the wall clock judges.
        (
            _air(
                last_seen={"a": NOW - 5000},
                quiet_s=100.0,
                clocks={0: NOW - 4950},
                partition_of={"a": 0},
            ),
            {"a": NOW},
        ),
        # Heard from within the grace on the processing clock: not judged at all.
        (_air(last_seen={"a": NOW - 500}, received_ago_s={"a": 29.0}), {}),
        (_air(last_seen={"a": NOW - 500}, received_ago_s={"a": 30.0}), {"a": NOW}),
        # Never heard since the start: quiet at least as long as the worker is up.
        (_air(last_seen={"a": NOW - 500}, uptime_s=10.0), {}),
        # Each kind has its own threshold.
        (
            {
                "air": KindActivity(last_seen={"a": NOW - 50}, quiet_s=1.0, uptime_s=3600.0),
                "seismic": KindActivity(last_seen={"s": NOW - 50}, quiet_s=1.0, uptime_s=3600.0),
            },
            {"s": NOW},
        ),
        (_air(last_seen={}), {}),
    ],
)
def test_silent_devices_and_the_clock_they_are_judged_against(
    activity: dict[str, KindActivity], silent: dict[str, float]
) -> None:
    check = check_silence(activity, now_s=NOW, silent_after_s=AFTER)
    assert {s.device_id: s.judged_at_s for s in check.silent} == silent
    for s in check.silent:
        assert s.last_seen_s == activity[s.kind].last_seen[s.device_id]
    assert check.new == check.silent  # nothing reported before
    assert check.reported == frozenset()


def test_a_silent_device_is_reported_once_until_it_reads_again() -> None:
    def check(last_seen: dict[str, float], reported: frozenset[str]) -> Any:
        act = {"water": KindActivity(last_seen=last_seen, quiet_s=1.0, uptime_s=3600.0)}
        return check_silence(act, now_s=NOW, silent_after_s=AFTER, reported=reported)

    first = check({"w1": NOW - 200, "w2": NOW - 10}, frozenset())
    assert [s.device_id for s in first.new] == ["w1"]
    reported = first.reported | {s.device_id for s in first.new}  # stored
    again = check({"w1": NOW - 200, "w2": NOW - 10}, reported)
    assert [s.device_id for s in again.silent] == ["w1"]
    assert again.new == ()
    assert again.reported == {"w1"}
    # w1 reads again: forgotten, so a later silence is reported anew.
    back = check({"w1": NOW - 5, "w2": NOW - 10}, again.reported)
    assert back.silent == ()
    assert back.reported == frozenset()
    # A kind with no device stored says nothing about the devices reported of it.
    empty = check_silence(
        {"water": KindActivity(last_seen={}, quiet_s=1.0, uptime_s=3600.0)},
        now_s=NOW,
        silent_after_s=AFTER,
        reported=frozenset({"w1"}),
    )
    assert empty.reported == {"w1"}


def test_a_report_that_was_not_stored_is_new_at_the_next_check() -> None:
    act = {"air": KindActivity(last_seen={"a": NOW - 500}, quiet_s=1.0, uptime_s=3600.0)}
    first = check_silence(act, now_s=NOW, silent_after_s=AFTER)
    # The caller failed to store it, so it does not add first.new to what it reported.
    second = check_silence(act, now_s=NOW + 60, silent_after_s=AFTER, reported=first.reported)
    assert second.new == (Silence("a", "air", NOW - 500, NOW + 60),)


@pytest.mark.parametrize(
    "gap_s", [-50.0, 99.0, 99.999, 99.9995, 100.0, 100.0000004, 100.000001, 100.0005, 100.01, 5e4]
)
def test_the_gap_is_judged_as_silent_devices_judges_it_to_the_microsecond(gap_s: float) -> None:
    # Far from the threshold the check judges by floats; near it, through datetimes as
    # silent_devices does: the same verdict either way.
    now = 1_800_000_000.123456
    last = now - gap_s
    expected = bool(silent_devices({"a": from_epoch(last)}, from_epoch(now), 100.0, factor=1))
    check = check_silence(_air(last_seen={"a": last}), now_s=now, silent_after_s=AFTER)
    assert bool(check.silent) == expected
