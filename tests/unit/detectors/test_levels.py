"""Hysteresis level tracker: immediate escalation, no flapping at a line, serialisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.detectors.levels import Ladder, LevelTracker
from processors.detectors.state import dump_state, load_state

T0 = datetime(2025, 7, 1, tzinfo=UTC)
AQI = Ladder.of((101, 151, 201), 10)


def run(ladder: Ladder, values: list[float]) -> list[int]:
    tracker = LevelTracker()
    levels = []
    for i, value in enumerate(values):
        tracker = tracker.update(value, ladder, T0 + timedelta(minutes=i)).tracker
        levels.append(tracker.level)
    return levels


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # hovering at the line: enter once, no flapping
        ([101, 99, 101, 95, 100, 92], [1, 1, 1, 1, 1, 1]),
        # leaves only below line - margin (91), re-enters at the line
        ([101, 91, 90.9, 100, 101], [1, 1, 0, 0, 1]),
        # escalation is immediate, even across levels
        ([50, 250], [0, 3]),
        # de-escalation drops to the highest level still held
        ([250, 190, 120, 90], [3, 2, 1, 0]),
        ([250, 141], [3, 2]),
        ([250, 140.9], [3, 1]),
        ([250, 0], [3, 0]),
        # hovering at level 2's line
        ([151, 145, 152, 141, 151], [2, 2, 2, 2, 2]),
    ],
)
def test_hysteresis_sequences(values: list[float], expected: list[int]) -> None:
    assert run(AQI, values) == expected


def test_step_reports_changes_and_since() -> None:
    tracker = LevelTracker()
    first = tracker.update(120, AQI, T0)
    assert (first.changed, first.escalated, first.previous, first.level) == (True, True, 0, 1)
    assert first.tracker.since == T0
    second = first.tracker.update(95, AQI, T0 + timedelta(minutes=5))
    assert not second.changed
    assert second.tracker.since == T0  # since is the time the level was entered
    third = second.tracker.update(80, AQI, T0 + timedelta(minutes=10))
    assert third.changed
    assert not third.escalated
    assert third.tracker.since == T0 + timedelta(minutes=10)


def test_unset_thresholds_cannot_be_entered() -> None:
    ladder = Ladder.of((None, None, 12.5), 0.1)
    assert run(ladder, [12.0, 12.5, 12.45, 12.39]) == [0, 3, 3, 0]
    assert ladder.configured
    assert not Ladder.of((None, None), 1).configured
    assert ladder.threshold(3) == 12.5
    assert ladder.threshold(0) is None


def test_per_level_margins() -> None:
    ladder = Ladder.of((10, 30, 50), (5, 2, 1))
    assert run(ladder, [50, 49, 48.9, 28, 27.9, 5, 4.9]) == [3, 3, 2, 2, 1, 1, 0]


def test_shrunken_ladder_caps_the_level() -> None:
    tracker = LevelTracker(level=3, since=T0)
    step = tracker.update(150, Ladder.of((100,), 10), T0)
    assert step.level == 1


def test_advance_for_multi_criteria_detectors() -> None:
    tracker = LevelTracker(level=2, since=T0)
    assert tracker.advance(entered=1, held=2, at=T0).level == 2
    assert tracker.advance(entered=0, held=1, at=T0).level == 1
    assert tracker.advance(entered=3, held=0, at=T0).level == 3
    # held can never lift the level above where it was
    assert tracker.advance(entered=0, held=4, at=T0).level == 2


@pytest.mark.parametrize(
    ("thresholds", "margins"),
    [((10, 10), (1, 1)), ((30, 10), (1, 1)), ((10, 20), (1, -1)), ((10, 20), (1,))],
)
def test_invalid_ladders_are_refused(
    thresholds: tuple[float, ...], margins: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError, match="ladder"):
        Ladder(thresholds, margins)


def test_round_trip_through_json() -> None:
    tracker = LevelTracker(level=2, since=T0 + timedelta(seconds=90))
    restored = load_state(LevelTracker, dump_state(tracker))
    assert restored == tracker
    assert load_state(LevelTracker, dump_state(LevelTracker())) == LevelTracker()


@given(st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), min_size=1))
def test_level_never_below_what_the_value_reaches(values: list[float]) -> None:
    tracker = LevelTracker()
    for value in values:
        step = tracker.update(value, AQI, T0)
        assert step.level >= AQI.entered(value)  # escalation is immediate
        assert step.level <= max(step.previous, AQI.entered(value))  # no spontaneous rise
        tracker = step.tracker
