"""StallRepair: which stalled input partitions the worker reads again (pure)."""

from __future__ import annotations

from typing import NamedTuple

from processors.agents.loop import StallRepair


class TP(NamedTuple):
    topic: str
    partition: int


AIR, WATER = TP("readings.air", 3), TP("readings.water", 0)


def test_a_partition_stalled_with_its_agent_idle_is_read_again_once_per_wait() -> None:
    repair = StallRepair(after_s=30)
    idle = {"readings.air": 0.0}
    assert repair.due(0, {AIR: (7, 24)}, idle) == []  # first sight: the clock starts
    assert repair.due(29, {AIR: (7, 24)}, idle) == []
    assert repair.due(30, {AIR: (7, 24)}, idle) == [AIR]
    assert repair.due(35, {AIR: (7, 24)}, idle) == []  # then it waits again
    assert repair.due(60, {AIR: (7, 24)}, idle) == [AIR]


def test_progress_no_lag_or_a_busy_agent_is_never_touched() -> None:
    repair = StallRepair(after_s=30)
    repair.due(0, {AIR: (7, 24), WATER: (5, 5)}, {"readings.air": 0.0, "readings.water": 0.0})
    # The committed offset moved: the clock starts again.
    assert repair.due(40, {AIR: (8, 24), WATER: (5, 5)}, {"readings.air": 0.0}) == []
    assert repair.due(69, {AIR: (8, 24)}, {"readings.air": 0.0}) == []
    # In a batch (e.g. storing through an InfluxDB outage): what it holds is not re-read.
    assert repair.due(80, {AIR: (8, 24)}, {"readings.air": None}) == []
    # Idle, but only for 10 s (it just finished a batch): not yet.
    assert repair.due(90, {AIR: (8, 24)}, {"readings.air": 80.0}) == []
    assert repair.due(110, {AIR: (8, 24)}, {"readings.air": 80.0}) == [AIR]
    # Caught up: no lag, never due however long it stays.
    assert repair.due(500, {WATER: (5, 5)}, {"readings.water": 0.0}) == []


def test_a_partition_without_a_commit_and_one_revoked_and_assigned_again() -> None:
    repair = StallRepair(after_s=30)
    idle = {"readings.air": 0.0}
    repair.due(0, {AIR: (None, 40)}, idle)
    assert repair.due(30, {AIR: (None, 40)}, idle) == [AIR]
    # Revoked, then assigned again later: its clock starts from the new sighting.
    assert repair.due(40, {}, idle) == []
    assert repair.due(50, {AIR: (None, 40)}, idle) == []
    assert repair.due(79, {AIR: (None, 40)}, idle) == []
    assert repair.due(80, {AIR: (None, 40)}, idle) == [AIR]
