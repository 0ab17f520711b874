"""Sensor health: stuck values, implausible values, silent devices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.detectors.health import (
    HealthConfig,
    HealthState,
    HealthUpdate,
    QuantityRule,
    silent_devices,
    update_health,
)
from processors.detectors.state import dump_state, load_state

T0 = datetime(2025, 7, 1, tzinfo=UTC)
CONFIG = HealthConfig(
    rules={
        "pm2_5_ugm3": QuantityRule(min_value=0, max_value=1000, stuck_count=3),
        "water_level_m": QuantityRule(min_value=-20, max_value=4000, stuck_minutes=30),
        "rainfall_mm": QuantityRule(min_value=0, max_value=200, stuck_count=3, stuck_exempt=(0.0,)),
    }
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(field: str, readings: list[tuple[float, float]]) -> list[HealthUpdate]:
    state = HealthState()
    out = []
    for minute, value in readings:
        update = update_health(state, "dev-1", at(minute), {field: value}, CONFIG)
        state = update.state
        out.append(update)
    return out


def issues(update: HealthUpdate) -> list[str]:
    return [f.issue for f in update.findings]


@pytest.mark.parametrize(
    ("value", "bad"),
    [(0.0, False), (1000.0, False), (-0.1, True), (1000.1, True), (float("nan"), True)],
)
def test_range_edges(value: float, bad: bool) -> None:
    (update,) = run("pm2_5_ugm3", [(0, value)])
    assert ("out_of_range" in issues(update)) is bad


def test_out_of_range_opens_once_and_clears() -> None:
    updates = run("pm2_5_ugm3", [(0, 2000), (1, 3000), (2, 10)])
    assert [len(u.opened) for u in updates] == [1, 0, 0]
    assert updates[0].opened[0].since == at(0)
    assert updates[0].opened[0].device_id == "dev-1"
    assert issues(updates[1]) == ["out_of_range"]
    assert [f.issue for f in updates[2].cleared] == ["out_of_range"]
    assert updates[2].findings == ()


def test_stuck_by_count() -> None:
    updates = run("pm2_5_ugm3", [(0, 5.0), (1, 5.0), (2, 5.0), (3, 5.0), (4, 6.0)])
    assert [len(u.opened) for u in updates] == [0, 0, 1, 0, 0]
    assert updates[2].opened[0].since == at(0)  # stuck since the first equal value
    assert issues(updates[3]) == ["stuck"]
    assert [f.issue for f in updates[4].cleared] == ["stuck"]


def test_stuck_by_time_needs_three_readings() -> None:
    two = run("water_level_m", [(0, 12.0), (45, 12.0)])
    assert issues(two[-1]) == []
    three = run("water_level_m", [(0, 12.0), (20, 12.0), (30, 12.0)])
    assert issues(three[1]) == []  # 20 minutes < 30
    assert issues(three[2]) == ["stuck"]


def test_exempt_values_never_count_as_stuck() -> None:
    zeros = run("rainfall_mm", [(i, 0.0) for i in range(10)])
    assert all(issues(u) == [] for u in zeros)
    same = run("rainfall_mm", [(i, 0.5) for i in range(3)])
    assert issues(same[-1]) == ["stuck"]


def test_late_reading_does_not_extend_a_run() -> None:
    state = HealthState()
    for minute in (10, 11):
        state = update_health(state, "d", at(minute), {"pm2_5_ugm3": 5.0}, CONFIG).state
    late = update_health(state, "d", at(5), {"pm2_5_ugm3": 5.0}, CONFIG)
    assert issues(late) == []
    assert late.state.runs["pm2_5_ugm3"].count == 2
    # but a late reading is still range-checked
    late_bad = update_health(state, "d", at(5), {"pm2_5_ugm3": -3.0}, CONFIG)
    assert issues(late_bad) == ["out_of_range"]


def test_fields_without_a_rule_are_not_checked() -> None:
    update = update_health(HealthState(), "d", at(0), {"humidity_pct": -50.0}, CONFIG)
    assert update.findings == ()
    assert update.state.runs == {}


def test_default_rules_cover_air_and_water_fields() -> None:
    rules = HealthConfig().rules
    for field in ("pm2_5_ugm3", "o3_ppb", "flood_depth_cm", "water_level_m", "rainfall_mm"):
        assert field in rules
    assert 0.0 in rules["flood_depth_cm"].stuck_exempt


def test_state_round_trip() -> None:
    updates = run("pm2_5_ugm3", [(0, 5.0), (1, 5.0), (2, 5.0), (3, 2000.0)])
    state = updates[-1].state
    assert state.open["pm2_5_ugm3"]
    restored = load_state(HealthState, dump_state(state))
    assert restored == state


@pytest.mark.parametrize(
    ("age_s", "silent"),
    [(0, False), (299, False), (300, False), (301, True), (86400, True)],
)
def test_silent_edge(age_s: float, silent: bool) -> None:
    now = at(100)
    found = silent_devices({"a": now - timedelta(seconds=age_s)}, now, 100.0, factor=3)
    assert bool(found) is silent


def test_silent_devices_per_device_intervals() -> None:
    now = at(60)
    last_seen = {"b": at(0), "a": at(50), "c": at(0)}
    found = silent_devices(last_seen, now, {"a": 60.0, "b": 600.0}, factor=3)
    # a: 600 s > 180 s -> silent; b: 3600 s > 1800 s -> silent; c has no interval
    assert [(f.device_id, f.issue, f.since) for f in found] == [
        ("a", "silent", at(50)),
        ("b", "silent", at(0)),
    ]


def test_silent_devices_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        silent_devices({"a": datetime(2025, 7, 1)}, at(0), 60.0)
