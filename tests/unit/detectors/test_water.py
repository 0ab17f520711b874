"""Water detectors: flood depth, river stage, rates of rise, rain classes, debris flow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from civic_iot.thresholds import FloodThresholds, RainCriteria, RainThresholds, RiverThresholds
from processors.detectors.state import dump_state, load_state
from processors.detectors.water import (
    DebrisFlowConfig,
    DebrisFlowState,
    DebrisFlowUpdate,
    FloodConfig,
    GaugeState,
    GaugeUpdate,
    RainConfig,
    RainState,
    RainUpdate,
    RiverConfig,
    StrongShaking,
    antecedent_rain,
    mark_strong_shaking,
    r50_threshold,
    strong_shaking,
    update_debris_flow,
    update_flood,
    update_rain,
    update_river,
)

T0 = datetime(2025, 7, 1, tzinfo=UTC)
DEFAULT_RAIN = RainConfig()
DEFAULT_DEBRIS = DebrisFlowConfig()


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def flood_run(readings: Sequence[tuple[float, float]], **kwargs: object) -> list[GaugeUpdate]:
    """(minute, depth cm) readings through update_flood."""
    state = GaugeState()
    out = []
    for minute, depth in readings:
        update = update_flood(state, at(minutes=minute), depth, **kwargs)  # type: ignore[arg-type]
        state = update.state
        out.append(update)
    return out


def river_run(
    readings: Sequence[tuple[float, float]], lines: RiverThresholds | None = None
) -> list[GaugeUpdate]:
    state = GaugeState()
    out = []
    config = RiverConfig(lines=lines) if lines is not None else RiverConfig()
    for minute, stage in readings:
        update = update_river(state, at(minutes=minute), stage, config)
        state = update.state
        out.append(update)
    return out


# --- flood ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth_cm", "level"),
    [(0, 0), (9.9, 0), (10, 1), (29.9, 1), (30, 2), (49.9, 2), (50, 3), (120, 3)],
)
def test_flood_ladder_edges(depth_cm: float, level: int) -> None:
    (update,) = flood_run([(0, depth_cm)])
    assert update.figures.level == level
    assert update.level_step.changed is (level > 0)


def test_flood_hysteresis() -> None:
    depths = [10, 6, 10.5, 5, 4.9, 9.9, 30, 25.1, 24.9]
    levels = [u.figures.level for u in flood_run([(i, d) for i, d in enumerate(depths)])]
    assert levels == [1, 1, 1, 1, 0, 0, 2, 2, 1]


def test_flood_lines_come_from_the_config() -> None:
    higher = FloodConfig(lines=FloodThresholds(flood_depth_cm_levels=(20, 30, 50)))
    (update,) = flood_run([(0, 15)], config=higher)
    assert update.figures.level == 0
    lower = FloodConfig(lines=FloodThresholds(flood_depth_cm_levels=(5, 30, 50)))
    (update,) = flood_run([(0, 6)], config=lower)
    assert update.figures.level == 1
    assert update.figures.threshold == 5


def test_flood_rate_of_rise() -> None:
    # +3 cm every 2 minutes = 15 cm per 10 min
    updates = flood_run([(2 * i, 3.0 * i) for i in range(6)])
    rates = [u.figures.rise_cm_per_10min for u in updates]
    assert rates[:3] == [None, None, None]  # fewer than 3 samples, or under 5 minutes
    assert rates[3] == pytest.approx(15.0)
    assert [u.figures.rising for u in updates] == [False, False, False, True, True, True]
    assert updates[3].rise_step.changed
    assert not updates[4].rise_step.changed
    assert updates[3].figures.value == 9.0
    assert updates[3].figures.rise_cm_per_10min == pytest.approx(15.0)
    assert updates[3].figures.rising


def test_flood_rise_clears_below_half_the_threshold() -> None:
    readings = [(2 * i, 3.0 * i) for i in range(6)]  # rising 15 cm / 10 min
    readings += [(10 + 2 * i, 15.0 + 0.8 * i) for i in range(1, 12)]  # then 4 cm / 10 min
    updates = flood_run(readings)
    assert updates[5].figures.rising
    assert not updates[-1].figures.rising
    assert updates[-1].figures.rise_cm_per_10min == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("own_line", "cm_per_2min", "rise_level", "line"),
    [
        (None, 3.0, 1, 10.0),  # 15 cm / 10 min against the 10 cm default
        (None, 2.0, 1, 10.0),  # exactly on the line: reached
        (None, 1.0, 0, 10.0),  # 5 cm / 10 min
        (20.0, 3.0, 0, 20.0),  # a gauge's own line
        (5.0, 1.0, 1, 5.0),
    ],
)
def test_flood_rise_level_against_its_line(
    own_line: float | None, cm_per_2min: float, rise_level: int, line: float
) -> None:
    config = (
        FloodConfig(lines=FloodThresholds(rise_cm_per_10min=own_line))
        if own_line
        else FloodConfig()
    )
    last = flood_run([(2 * i, cm_per_2min * i) for i in range(6)], config=config)[-1]
    assert last.figures.rise_level == rise_level
    assert last.figures.rise_threshold_cm_per_10min == line
    assert last.figures.rising is (rise_level > 0)


def test_flood_late_reading_does_not_move_the_level() -> None:
    updates = flood_run([(0, 40), (10, 0), (5, 60)])
    assert [u.figures.level for u in updates] == [2, 0, 0]
    assert updates[2].late
    assert not updates[2].level_step.changed
    assert updates[2].figures.value == 0  # the newest value, not the late one
    assert [t for t, _ in updates[2].state.samples.samples] == sorted(
        t for t, _ in updates[2].state.samples.samples
    )


def test_rise_window_expires() -> None:
    updates = flood_run([(0, 0), (2, 10), (4, 20), (6, 30), (60, 30)])
    assert updates[3].figures.rising
    assert updates[4].figures.rise_cm_per_10min is None  # nothing else in the last 20 min


def test_gauge_samples_stay_bounded() -> None:
    updates = flood_run([(i * 0.25, 1.0) for i in range(2000)])
    assert len(updates[-1].state.samples.samples) <= 240


def test_gauge_state_round_trip() -> None:
    state = flood_run([(2 * i, 3.0 * i) for i in range(6)])[-1].state
    restored = load_state(GaugeState, dump_state(state))
    assert restored == state


def test_gauge_refuses_non_finite_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        update_flood(GaugeState(), at(), float("nan"))


# --- river ---------------------------------------------------------------------------

RIVER = RiverThresholds(
    water_level_m_yellow=10.0, water_level_m_orange=11.0, water_level_m_red=12.0
)


def test_river_without_warning_levels_never_alerts() -> None:
    updates = river_run([(0, 5.0), (1, 50.0), (2, 500.0)])
    assert [u.figures.level for u in updates] == [0, 0, 0]
    assert not updates[-1].figures.has_levels


@pytest.mark.parametrize(
    ("stage_m", "level"),
    [(9.99, 0), (10.0, 1), (10.99, 1), (11.0, 2), (11.99, 2), (12.0, 3), (15.0, 3)],
)
def test_river_levels_yellow_orange_red(stage_m: float, level: int) -> None:
    (update,) = river_run([(0, stage_m)], RIVER)
    assert update.figures.level == level
    assert update.figures.has_levels


def test_river_hysteresis() -> None:
    stages = [12.0, 11.95, 11.91, 11.89, 10.95, 10.89]
    levels = [u.figures.level for u in river_run(list(enumerate(stages)), RIVER)]
    assert levels == [3, 3, 3, 2, 2, 1]


def test_river_with_only_a_red_line() -> None:
    (update,) = river_run([(0, 12.6)], RiverThresholds(water_level_m_red=12.5))
    assert update.figures.level == 3
    assert update.figures.threshold == 12.5


def test_river_rise_is_in_cm_per_10_minutes() -> None:
    # +0.05 m every 2 minutes = 25 cm per 10 min
    updates = river_run([(2 * i, 8.0 + 0.05 * i) for i in range(5)])
    assert updates[-1].figures.rise_cm_per_10min == pytest.approx(25.0)
    assert updates[-1].figures.rising
    assert updates[-1].figures.level == 0  # rising is a separate signal


# --- rain ----------------------------------------------------------------------------


def rain_run(readings: list[tuple[datetime, float]], state: RainState | None = None) -> RainUpdate:
    state = state or RainState()
    update = None
    for t, mm in readings:
        update = update_rain(state, t, mm)
        state = update.state
    assert update is not None
    return update


@pytest.mark.parametrize(
    ("readings", "level"),
    [
        # 1 h criterion of heavy rain: 40 mm
        ([39.9], 0),
        ([40.0], 1),
        # 3 h criteria: 3 readings an hour apart; 99.9 mm still heavy by 24 h >= 80
        ([33.3, 33.3, 33.3], 1),
        ([33.4, 33.3, 33.3], 2),
        ([66.6, 66.7, 66.6], 2),  # 199.9 mm in 3 h, 24 h criterion of 200 not reached
        ([66.7, 66.7, 66.6], 3),  # 200 mm / 3 h: torrential (unconfirmed criterion)
        # 24 h criteria: 20 hourly readings, each too small for the 1 h and 3 h criteria
        ([4.0] * 19 + [3.9], 0),
        ([4.0] * 20, 1),
        ([10.0] * 19 + [9.9], 1),
        ([10.0] * 20, 2),
        ([17.5] * 19 + [17.4], 2),
        ([17.5] * 20, 3),
        ([25.0] * 19 + [24.9], 3),
        ([25.0] * 20, 4),
    ],
)
def test_rain_class_edges(readings: list[float], level: int) -> None:
    update = rain_run([(at(h), mm) for h, mm in enumerate(readings)])
    assert update.figures.level == level


def test_rain_class_names() -> None:
    update = rain_run([(at(), 40.0)])
    assert (update.figures.class_en, update.figures.class_zh) == ("heavy rain", "大雨")
    assert update.step.changed
    assert rain_run([(at(), 1.0)]).figures.class_en is None


def test_rain_accumulation_windows_and_expiry() -> None:
    state = rain_run([(at(), 50.0)]).state
    still = update_rain(state, at(minutes=50), 0.0)
    assert still.figures.rainfall_mm_1h == 50.0
    gone = update_rain(still.state, at(minutes=60), 0.0)
    assert gone.figures.rainfall_mm_1h == 0.0
    assert gone.figures.rainfall_mm_3h == 50.0
    assert gone.figures.level == 0  # 1 h below 36 mm and 24 h below 72 mm
    assert gone.step.changed
    later = update_rain(gone.state, at(24), 0.0)
    assert later.figures.rainfall_mm_24h == 0.0


def rain_levels(
    readings: Sequence[tuple[float, float]], config: RainConfig = DEFAULT_RAIN
) -> list[int]:
    state = RainState()
    levels = []
    for minutes, mm in readings:
        update = update_rain(state, at(minutes=minutes), mm, config)
        state = update.state
        levels.append(update.figures.level)
    return levels


def test_rain_class_hysteresis() -> None:
    # Heavy rain by the hour only (the other classes as CWA's, out of reach here).
    hourly_only = RainConfig(lines=RainThresholds(heavy_rain=RainCriteria(rainfall_mm_1h=40.0)))
    readings = [(0, 40.0), (30, 37.0), (60, 0.0), (90, 0.0)]
    # at 60 min the 40 mm left the hour but 37 mm >= 0.9 * 40 still holds heavy rain;
    # at 90 min the hour is empty
    assert rain_levels(readings, hourly_only) == [1, 1, 1, 0]
    # with the CWA classes the 24 h total (77 mm >= 0.9 * 80) holds it too
    assert rain_levels(readings) == [1, 1, 1, 1]
    # 39.9 mm after 40 mm left the hour: 1 h 39.9 would not enter, but holds
    assert rain_levels([(0, 40.0), (30, 39.9), (60, 0.0)], hourly_only) == [1, 1, 1]
    assert rain_levels([(30, 39.9), (60, 0.0)], hourly_only) == [0, 0]


def test_duplicate_delivery_is_not_counted_twice() -> None:
    first = rain_run([(at(), 5.0)])
    again = update_rain(first.state, at(), 5.0)
    assert again.duplicate
    assert again.added_mm == 0.0
    assert again.figures.rainfall_mm_1h == 5.0


def test_out_of_order_rain_is_counted() -> None:
    update = rain_run([(at(minutes=20), 2.0), (at(minutes=10), 3.0)])
    assert update.figures.rainfall_mm_1h == 5.0
    assert update.figures.as_of == at(minutes=20)
    assert not update.duplicate


def test_daily_totals_use_taiwan_local_days() -> None:
    # 15:30 UTC is 23:30 local; 16:30 UTC is 00:30 the next local day
    update = rain_run([(at(15, 30), 3.0), (at(16, 30), 2.0)])
    assert update.figures.daily_mm[:2] == (2.0, 3.0)
    assert len(update.figures.daily_mm) == 8


def test_rain_older_than_24_hours_still_counts_for_its_day() -> None:
    state = rain_run([(at(40), 1.0)]).state
    late = update_rain(state, at(10), 7.0)  # 30 h late, still within the kept days
    assert late.figures.rainfall_mm_24h == 1.0
    assert late.added_mm == 7.0
    assert sum(late.figures.daily_mm) == 8.0


def test_rain_state_stays_bounded_and_round_trips() -> None:
    update = rain_run([(at(minutes=5 * i), 0.2) for i in range(3000)])
    assert len(update.state.tens.buckets) <= 144
    assert len(update.state.days.buckets) <= 8
    assert len(update.state.recent) <= 64
    restored = load_state(RainState, dump_state(update.state))
    assert restored == update.state


def test_rain_refuses_negative_amounts() -> None:
    with pytest.raises(ValueError, match="rainfall_mm"):
        update_rain(RainState(), at(), -1.0)


# --- debris flow ---------------------------------------------------------------------


def test_antecedent_rain_arithmetic() -> None:
    daily = (5.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 30.0)
    # 0.7 * 10 + 0.7^2 * 20 + 0.7^7 * 30 = 7 + 9.8 + 2.470629; today's 5 mm is excluded
    assert antecedent_rain(daily, 0.7, 7) == pytest.approx(19.270629)
    assert antecedent_rain(daily, 0.7, 1) == pytest.approx(7.0)
    assert antecedent_rain(daily, 0.5, 7) == pytest.approx(5 + 5 + 30 / 128)


class Gauge:
    """Rain and debris-flow state of one gauge, fed together as an agent would."""

    def __init__(self, config: DebrisFlowConfig = DEFAULT_DEBRIS) -> None:
        self.rain = RainState()
        self.debris = DebrisFlowState()
        self.config = config

    def report(
        self, t: datetime, mm: float, r70: float | None = 30.0, r50: float | None = None
    ) -> DebrisFlowUpdate:
        rain = update_rain(self.rain, t, mm)
        self.rain = rain.state
        config = self.config.model_copy(update={"r70_mm": r70, "r50_mm": r50})
        update = update_debris_flow(self.debris, rain, config)
        self.debris = update.state
        return update


def test_event_starts_at_4_mm_per_hour_and_ends_after_6_dry_hours() -> None:
    gauge = Gauge()
    assert not gauge.report(at(0), 2.0).figures.in_event
    start = gauge.report(at(0, 10), 2.0)  # 1 h rain reaches 4 mm
    assert start.event_started
    assert start.figures.rainfall_mm_event == 4.0  # the starting hour belongs to the event
    assert start.figures.event_start == at(0, 10) - timedelta(minutes=50)
    for hour in range(1, 6):
        assert not gauge.report(at(0, 10) + timedelta(hours=hour), 0.0).event_ended
    end = gauge.report(at(6, 10), 0.0)
    assert end.event_ended
    assert not end.figures.in_event
    assert end.figures.rainfall_mm_event == 0.0


def test_rain_after_the_start_accumulates_and_rti_is_i_times_rt() -> None:
    gauge = Gauge()
    # yesterday (local July 1): 20 mm, and an event that ends after 6 dry hours
    first = gauge.report(at(2), 20.0, r70=20.0)
    assert first.figures.level == 2  # observed event rain reached R70 = 20
    for hour in range(3, 8):
        assert not gauge.report(at(hour), 0.0, r70=20.0).event_ended
    ended = gauge.report(at(8), 0.0, r70=20.0)
    assert ended.event_ended
    assert ended.figures.level == 0
    assert ended.step.changed

    # today (local July 2 starts at 16:00 UTC): a new event
    day2 = at(24)
    start = gauge.report(day2, 10.0)
    assert start.event_started
    assert start.figures.antecedent_mm == pytest.approx(14.0)  # 0.7 * 20
    assert start.figures.rt_mm == pytest.approx(24.0)
    assert start.figures.rainfall_mm_1h == 10.0
    assert start.figures.rti == pytest.approx(240.0)
    assert start.figures.level == 0  # event rain 10 < 0.8 * 30
    yellow = gauge.report(day2 + timedelta(minutes=10), 15.0)
    assert yellow.figures.rainfall_mm_event == 25.0
    assert yellow.figures.rti == pytest.approx(25.0 * 39.0)
    assert (yellow.figures.level, yellow.step.changed) == (1, True)
    red = gauge.report(day2 + timedelta(minutes=20), 5.0)
    assert (red.figures.level, red.step.escalated) == (2, True)
    assert red.figures.threshold_kind == "r70"


def test_effective_rain_comparison() -> None:
    gauge = Gauge(DebrisFlowConfig(compare="effective"))
    gauge.report(at(2), 20.0, r70=None)
    for hour in range(3, 9):
        gauge.report(at(hour), 0.0, r70=None)
    start = gauge.report(at(24), 10.0)
    assert start.figures.rt_mm == pytest.approx(24.0)
    assert start.figures.level == 1  # Rt 24 >= 0.8 * 30


def test_without_r70_no_level() -> None:
    update = Gauge().report(at(), 80.0, r70=None)
    assert update.figures.in_event
    assert update.figures.level == 0
    assert update.figures.threshold_mm is None


# --- R50 after strong shaking ------------------------------------------------------------

QUAKE_S = at().timestamp()
MONTH_S = 30 * 86400.0


def shaking(
    intensity: str = "5-", since_s: float = QUAKE_S, days: float = 30, event: str = "q1"
) -> StrongShaking:
    return StrongShaking(event, intensity, since_s, since_s + days * 86400)


@pytest.mark.parametrize(
    ("intensity", "min_level", "marked"),
    [
        ("4", "5-", False),  # intensity 4 is below "intensity >= 5"
        ("5-", "5-", True),
        ("5+", "5-", True),
        ("7", "5-", True),
        ("5-", "5+", False),  # a stricter configured level
        ("4", "4", True),
    ],
)
def test_strong_shaking_starts_an_r50_period_at_the_origin(
    intensity: str, min_level: str, marked: bool
) -> None:
    config = DebrisFlowConfig(shaking_min_intensity=min_level, r50_days=10)
    mark = strong_shaking("q1", intensity, QUAKE_S, config)
    if not marked:
        assert mark is None
        return
    assert mark == StrongShaking("q1", intensity, QUAKE_S, QUAKE_S + 10 * 86400)
    by_default = strong_shaking(
        "q1", intensity, QUAKE_S, DebrisFlowConfig(shaking_min_intensity=min_level)
    )
    assert by_default == StrongShaking("q1", intensity, QUAKE_S, QUAKE_S + 30 * 86400)


@pytest.mark.parametrize(
    ("t_offset_s", "active"),
    [(-1.0, False), (0.0, True), (MONTH_S - 1, True), (MONTH_S, False), (MONTH_S + 1, False)],
)
def test_strong_shaking_period_is_half_open(t_offset_s: float, active: bool) -> None:
    assert shaking().active(QUAKE_S + t_offset_s) is active


@pytest.mark.parametrize(
    ("r70", "r50", "below", "expected"),
    [
        (250.0, None, 50.0, 200.0),  # one 50 mm step below R70
        (250.0, 180.0, 50.0, 180.0),  # the township's own R50 wins
        (None, 150.0, 50.0, 150.0),
        (None, None, 50.0, None),
        (50.0, None, 50.0, None),  # nothing left above 0: no R50, R70 stays in use
        (300.0, None, 100.0, 200.0),
        (300.0, None, 0.0, 300.0),
    ],
)
def test_r50_threshold(
    r70: float | None, r50: float | None, below: float, expected: float | None
) -> None:
    config = DebrisFlowConfig(r70_mm=r70, r50_mm=r50, r50_below_r70_mm=below)
    assert r50_threshold(config) == expected


@pytest.mark.parametrize(
    ("old", "new", "kept"),
    [
        (None, shaking(), "new"),
        (shaking(), None, "old"),
        (shaking(days=30), shaking(since_s=QUAKE_S + 86400, event="q2"), "new"),  # ends later
        (shaking(since_s=QUAKE_S + 86400, event="q2"), shaking(days=30), "old"),
        (shaking("5-"), shaking("6-"), "new"),  # same earthquake, a higher estimate
        (shaking("6-"), shaking("5-"), "old"),  # ... a lower one lifts nothing
        (shaking(), shaking(), "old"),  # marking twice is marking once
    ],
)
def test_mark_strong_shaking_keeps_the_period_that_ends_last(
    old: StrongShaking | None, new: StrongShaking | None, kept: str
) -> None:
    state = DebrisFlowState(event_rain_mm=12.0, shaking=old)
    marked = mark_strong_shaking(state, new)
    assert marked.shaking == (old if kept == "old" else new)
    assert marked.event_rain_mm == 12.0
    assert marked.strong_shaking


@pytest.mark.parametrize(
    ("t_offset_s", "kind", "threshold", "level", "kept"),
    [
        # 22 mm of event rain; R70 50 mm (yellow from 40), R50 20 mm (yellow from 16)
        (-3600.0, "r70", 50.0, 0, True),  # rain before the earthquake: R70
        (0.0, "r50", 20.0, 2, True),
        (3600.0, "r50", 20.0, 2, True),
        (MONTH_S - 600, "r50", 20.0, 2, True),
        (MONTH_S, "r70", 50.0, 0, False),  # the period is over and leaves the state
        (MONTH_S + 86400, "r70", 50.0, 0, False),
    ],
)
def test_r50_applies_within_the_strong_shaking_period(
    t_offset_s: float, kind: str, threshold: float, level: int, kept: bool
) -> None:
    gauge = Gauge()
    gauge.debris = mark_strong_shaking(gauge.debris, shaking())
    t = at() + timedelta(seconds=t_offset_s)
    update = gauge.report(t, 22.0, r70=50.0, r50=20.0)
    fig = update.figures
    assert (fig.threshold_kind, fig.threshold_mm, fig.level) == (kind, threshold, level)
    assert fig.r70_mm == 50.0
    assert fig.shaking == (shaking() if kind == "r50" else None)
    assert (update.state.shaking is not None) is kept


def test_r50_lowers_the_level_an_event_reaches() -> None:
    # 230 mm of event rain against R70 = 250 mm (yellow from 200) and R50 = 200 mm.
    plain, shaken = Gauge(), Gauge()
    shaken.debris = mark_strong_shaking(shaken.debris, shaking())
    for i in range(23):
        t = at(minutes=10 * i)
        by_r70 = plain.report(t, 10.0, r70=250.0, r50=200.0)
        by_r50 = shaken.report(t, 10.0, r70=250.0, r50=200.0)
    assert by_r70.figures.rainfall_mm_event == by_r50.figures.rainfall_mm_event == 230.0
    assert (by_r70.figures.level, by_r70.figures.threshold_kind) == (1, "r70")
    assert (by_r50.figures.level, by_r50.figures.threshold_kind) == (2, "r50")


def test_r50_unknown_falls_back_to_r70_and_says_so() -> None:
    gauge = Gauge()
    gauge.debris = mark_strong_shaking(gauge.debris, shaking())
    update = gauge.report(at(), 22.0, r70=50.0)
    assert (update.figures.threshold_kind, update.figures.level) == ("r70", 0)
    assert update.figures.shaking is None  # R70 in use: the shaking changed nothing
    assert update.state.shaking == shaking()  # ... but its period still runs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shaking_min_intensity": "5"}, "shaking_min_intensity"),
        ({"r50_days": 0.0}, "r50_days"),
        ({"r50_days": math.inf}, "r50_days"),
        ({"r50_below_r70_mm": -50.0}, "r50_below_r70_mm"),
        ({"r70_mm": 200.0, "r50_mm": 250.0}, "expected R50 <= R70"),
    ],
)
def test_debris_flow_config_refuses_nonsense(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DebrisFlowConfig(**changes)


def test_r50_from_config() -> None:
    gauge = Gauge(DebrisFlowConfig(use_r50=True))
    update = gauge.report(at(), 22.0, r70=50.0, r50=25.0)
    assert (update.figures.threshold_kind, update.figures.level) == ("r50", 1)


def test_late_rain_before_the_event_start_is_not_event_rain() -> None:
    gauge = Gauge()
    gauge.report(at(3), 10.0)  # event starts; it begins at 02:10
    late_in = gauge.report(at(2, 30), 1.0)
    assert late_in.figures.rainfall_mm_event == 11.0
    late_out = gauge.report(at(1), 1.0)
    assert late_out.figures.rainfall_mm_event == 11.0


def test_debris_flow_state_round_trip() -> None:
    gauge = Gauge()
    gauge.report(at(), 12.0)
    gauge.debris = mark_strong_shaking(gauge.debris, shaking("5+"))
    restored = load_state(DebrisFlowState, dump_state(gauge.debris))
    assert restored == gauge.debris
    assert restored.event_start is not None
    assert restored.shaking == shaking("5+")
    # A state stored before strong shaking was tracked reads as unmarked.
    assert load_state(DebrisFlowState, b'{"strong_shaking": false}').shaking is None
