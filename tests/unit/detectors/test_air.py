"""Air detector: hourly means, real-time PM formula and validity, AQI level, townships."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from civic_iot.thresholds import AirQualityThresholds
from processors.detectors.air import (
    AirConfig,
    AirState,
    AirUpdate,
    TownshipAggregate,
    TownshipAirState,
    update_air,
    update_township,
)
from processors.detectors.state import dump_state, load_state

T0 = datetime(2025, 7, 1, tzinfo=UTC)
DEFAULT = AirConfig()


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def feed(
    readings: Iterable[tuple[datetime, dict[str, float]]],
    config: AirConfig = DEFAULT,
    state: AirState | None = None,
    **kwargs: object,
) -> AirUpdate:
    state = state or AirState()
    update = None
    for t, values in readings:
        update = update_air(state, t, values, config, **kwargs)  # type: ignore[arg-type]
        state = update.state
    assert update is not None
    return update


def test_pm_realtime_formula() -> None:
    # 8 hours at 10 then 4 hours at 40: mean12 = 20, mean4 = 40 -> 0.5*20 + 0.5*40 = 30.0
    readings = [(at(h, 30), {"pm2_5_ugm3": 10.0}) for h in range(8)]
    readings += [(at(h, 30), {"pm2_5_ugm3": 40.0}) for h in range(8, 12)]
    update = feed(readings)
    assert update.figures.aqi_inputs["pm2_5"] == 30.0
    assert update.figures.aqi is not None
    assert update.figures.aqi.aqi == 99  # (49 / 17.9) * 17.5 + 51 = 98.9


def test_pm_realtime_rounds_pm2_5_to_one_decimal_and_pm10_to_integer() -> None:
    readings = [(at(h), {"pm2_5_ugm3": 10.04, "pm10_ugm3": 20.6}) for h in range(12)]
    inputs = feed(readings).figures.aqi_inputs
    assert inputs["pm2_5"] == 10.0
    assert inputs["pm10"] == 21.0


@pytest.mark.parametrize(
    ("hours", "valid"),
    [
        (range(12), True),
        (range(6, 12), True),  # exactly 6 of 12, 4 of 4
        (range(7, 12), False),  # 5 of 12
        ([0, 1, 2, 3, 9, 10], True),  # 2 of the last 4 (8..11), the current 11 empty
        ([0, 1, 2, 3, 4, 10], False),  # 6 of 12 but 1 of the last 4
        ([0, 1, 2, 3, 4, 5, 11], False),  # only the current hour of the last 4
        ([0, 1, 2, 3, 4, 5, 6, 7], False),  # none of the last 4 hours (8..11)
    ],
)
def test_pm_validity_rule(hours: Iterable[int], valid: bool) -> None:
    readings = [(at(h, 10), {"pm2_5_ugm3": 20.0}) for h in hours]
    # a reading in hour 11 without PM moves the clock to hour 11 in every case
    readings.append((at(11, 50), {"no2_ppb": 10.0}))
    inputs = feed(readings).figures.aqi_inputs
    assert ("pm2_5" in inputs) is valid


def test_pm_validity_counts_the_current_partial_hour() -> None:
    # hours 0..4 and the current hour 5: 6 valid of 12 and 2 valid of the last 4
    readings = [(at(h, 0), {"pm2_5_ugm3": 20.0}) for h in range(5)]
    readings.append((at(5, 1), {"pm2_5_ugm3": 20.0}))
    assert "pm2_5" not in feed(readings[:-1]).figures.aqi_inputs  # 5 hours only
    assert feed(readings).figures.aqi_inputs["pm2_5"] == 20.0


def test_every_hour_weighs_the_same() -> None:
    # hour 0: 10 and 20 (hourly mean 15); hour 1: 30 -> 8 h mean 22.5, not 20
    update = feed(
        [
            (at(0, 5), {"pm10_ugm3": 10.0}),
            (at(0, 35), {"pm10_ugm3": 20.0}),
            (at(1, 5), {"pm10_ugm3": 30.0}),
        ]
    )
    means = update.figures.means["pm10_ugm3"]
    assert means.mean_8h == 22.5
    assert means.mean_1h == 30.0
    assert means.valid_hours_24h == 2


def test_o3_ppb_becomes_ppm_and_needs_six_of_eight_hours() -> None:
    readings = [(at(h), {"o3_ppb": 60.0}) for h in range(5)]
    assert "o3_8h" not in feed(readings).figures.aqi_inputs
    readings.append((at(5), {"o3_ppb": 60.0}))
    update = feed(readings)
    assert update.figures.aqi_inputs["o3_8h"] == pytest.approx(0.060)
    assert update.figures.aqi_inputs["o3_1h"] == pytest.approx(0.060)
    assert update.figures.aqi is not None
    assert update.figures.aqi.sub_indices["o3_8h"] == 67


def test_so2_24h_mean_feeds_the_aqi_after_18_hours() -> None:
    readings = [(at(h), {"so2_ppb": 400.0}) for h in range(18)]
    update = feed(readings)
    assert update.figures.aqi is not None
    assert update.figures.aqi.aqi == 232
    assert update.figures.aqi.leading_pollutant == "so2_24h"
    update = feed(readings[:17])
    assert update.figures.aqi is not None
    assert update.figures.aqi.aqi == 200  # 1 h capped at 200 without the 24 h value


def test_out_of_order_reading_lands_in_its_hour() -> None:
    first = feed([(at(0, 10), {"pm10_ugm3": 10.0}), (at(2, 10), {"pm10_ugm3": 30.0})])
    late = update_air(first.state, at(1, 10), {"pm10_ugm3": 20.0})
    assert late.accepted
    assert late.state.clock == first.state.clock  # the clock does not go back
    assert late.figures.as_of == at(2, 10)
    assert late.figures.means["pm10_ugm3"].mean_8h == 20.0  # (10 + 20 + 30) / 3
    assert late.figures.means["pm10_ugm3"].mean_1h == 30.0


def test_readings_older_than_24_hours_are_dropped() -> None:
    state = feed([(at(30), {"pm10_ugm3": 10.0})]).state
    too_old = update_air(state, at(6, 59), {"pm10_ugm3": 500.0})
    assert not too_old.accepted
    assert too_old.figures.means["pm10_ugm3"].mean_24h == 10.0
    kept = update_air(state, at(7), {"pm10_ugm3": 30.0})  # the oldest kept hour
    assert kept.accepted
    assert kept.figures.means["pm10_ugm3"].mean_24h == 20.0


def test_history_stays_bounded() -> None:
    readings = [(at(minutes=5 * i), {"pm2_5_ugm3": 10.0, "no2_ppb": 5.0}) for i in range(600)]
    state = feed(readings).state
    assert all(len(s.buckets) <= 24 for s in state.series.values())
    assert feed(readings).figures.means["pm2_5_ugm3"].valid_hours_24h == 24


def test_unknown_negative_and_non_finite_values_are_ignored() -> None:
    update = update_air(
        AirState(),
        at(0),
        {"temperature_c": 31.0, "pm2_5_ugm3": -2.0, "pm10_ugm3": float("nan")},
    )
    assert not update.accepted
    assert update.state.series == {}
    assert update.figures.aqi is None


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        update_air(AirState(), datetime(2025, 7, 1), {"pm2_5_ugm3": 1.0})


def no2_hours(*values: float) -> list[tuple[datetime, dict[str, float]]]:
    """One NO2 reading per hour: the AQI follows the hourly NO2 value."""
    return [(at(h, 5), {"no2_ppb": v}) for h, v in enumerate(values)]


def levels(
    readings: list[tuple[datetime, dict[str, float]]],
    config: AirConfig = DEFAULT,
    **kwargs: object,
) -> list[int]:
    state = AirState()
    out = []
    for t, values in readings:
        update = update_air(state, t, values, config, **kwargs)  # type: ignore[arg-type]
        state = update.state
        out.append(update.figures.level)
    return out


def test_alert_level_with_hysteresis() -> None:
    # NO2 ppb -> AQI: 101 -> 101; 92 -> 95 (held, >= 91); 80 -> 87 (cleared); 361 -> 151;
    # 330 -> 144 (held, >= 141); 300 -> 139 (down to 1); 90 -> 94 (held); 85 -> 91 (held)
    assert levels(no2_hours(101, 92, 80, 361, 330, 300, 90, 85)) == [1, 1, 0, 2, 2, 1, 1, 1]


def test_the_ladder_comes_from_the_lines() -> None:
    higher = AirConfig(lines=AirQualityThresholds(aqi_levels=(120, 151, 201)))
    assert levels(no2_hours(101), higher) == [0]
    lower = AirConfig(lines=AirQualityThresholds(aqi_levels=(80, 151, 201), aqi_clear_margin=0))
    assert levels(no2_hours(80), lower) == [1]
    assert lower.ladder().threshold(1) == 80


def test_the_pm2_5_breakpoints_come_from_the_lines() -> None:
    readings = [(at(h), {"pm2_5_ugm3": 15.4}) for h in range(12)]
    assert feed(readings).figures.aqi.aqi == 59  # type: ignore[union-attr]  # MOENV 2025
    old = AirConfig(lines=AirQualityThresholds(pm2_5_ugm3_breakpoints="moenv_pre2025"))
    assert feed(readings, old).figures.aqi.aqi == 50  # type: ignore[union-attr]
    custom = AirConfig(
        lines=AirQualityThresholds(
            pm2_5_ugm3_breakpoints=((0.0, 10.0, 0, 50), (10.1, 20.0, 51, 100))
        )
    )
    assert feed(readings, custom).figures.aqi.aqi == 77  # type: ignore[union-attr]


def test_figures_carry_the_readings_names_and_units() -> None:
    readings = [(at(h), {"pm2_5_ugm3": 35.0, "o3_ppb": 60.0}) for h in range(8)]
    figures = feed(readings).figures
    assert figures.concentrations["pm2_5_ugm3_1h"] == 35.0
    assert figures.concentrations["o3_ppb_8h"] == pytest.approx(60.0)
    assert figures.aqi_inputs["o3_8h"] == pytest.approx(0.06)  # the AQI's own unit, ppm
    assert figures.concentrations["pm2_5_ugm3_rt"] == 35.0  # 8 of 12 hours valid (>= 6)
    assert figures.aqi is not None
    assert figures.aqi.aqi == 112
    assert figures.level == 1


def test_state_round_trip() -> None:
    readings = [(at(minutes=7 * i), {"pm2_5_ugm3": 5.0 + i, "o3_ppb": 30.0}) for i in range(40)]
    state = feed(readings).state
    restored = load_state(AirState, dump_state(state))
    assert restored == state
    # and it keeps working from the restored state
    nxt = update_air(restored, at(5), {"pm2_5_ugm3": 50.0})
    assert nxt.figures.means["pm2_5_ugm3"].mean_1h == 50.0


# --- township -----------------------------------------------------------------------


def township_run(
    reports: list[tuple[str, int, int | None, datetime]],
    registered: int | None = None,
    config: AirConfig = DEFAULT,
) -> list[tuple[int, tuple[str, ...], bool, bool]]:
    state = TownshipAirState()
    out = []
    for device, level, aqi, t in reports:
        update = update_township(
            state, device, level, aqi, t, config, registered_sensors=registered
        )
        state = update.state
        out.append((update.level, update.devices, update.changed, update.hotspot))
    return out


def test_single_sensor_township_follows_its_sensor() -> None:
    result = township_run([("a", 2, 160, at(0)), ("a", 0, 40, at(1))], registered=1)
    assert result == [(2, ("a",), True, False), (0, (), True, False)]


def test_township_needs_two_agreeing_sensors() -> None:
    result = township_run(
        [
            ("a", 2, 160, at(0)),
            ("b", 1, 110, at(0, 1)),
            ("c", 2, 170, at(0, 2)),
            ("b", 1, 115, at(0, 3)),
        ],
        registered=3,
    )
    assert result == [
        (0, (), False, False),  # one sensor alone decides nothing
        (1, ("a", "b"), True, False),  # a and b agree on level >= 1
        (2, ("a", "c"), True, False),  # a and c agree on 2; 3 sensors at >= 1 not counted
        (2, ("a", "c"), False, False),  # unchanged: no new candidate
    ]


def test_hotspot_when_enough_sensors_agree() -> None:
    result = township_run(
        [("a", 1, 110, at(0)), ("b", 1, 120, at(0)), ("c", 1, 130, at(0))], registered=5
    )
    assert result[-1] == (1, ("a", "b", "c"), False, True)


def test_township_reports_highest_agreeing_aqi() -> None:
    state = TownshipAirState()
    state = update_township(state, "a", 1, 110, at(0), registered_sensors=2).state
    update = update_township(state, "b", 1, 125, at(0), registered_sensors=2)
    assert update.aqi == 125


def test_silent_sensors_are_forgotten() -> None:
    config = AirConfig(sensor_timeout_s=1800)
    result = township_run(
        [("a", 1, 110, at(0)), ("b", 1, 110, at(0)), ("c", 0, 40, at(0, 31))],
        config=config,
    )
    assert result[1][0] == 1
    assert result[2] == (0, (), True, False)


def test_late_report_does_not_overwrite_a_newer_one() -> None:
    state = TownshipAirState()
    state = update_township(state, "a", 2, 160, at(1), registered_sensors=1).state
    update = update_township(state, "a", 0, 40, at(0), registered_sensors=1)
    assert update.level == 2
    assert not update.changed


def test_township_state_round_trip() -> None:
    state = TownshipAirState()
    state = update_township(state, "a", 2, 160, at(0)).state
    state = update_township(state, "b", 1, None, at(0, 5)).state
    restored = load_state(TownshipAirState, dump_state(state))
    assert restored == state


@pytest.mark.parametrize("registered", [None, 3])
def test_a_township_aggregate_decides_as_update_township_after_each_report(
    registered: int | None,
) -> None:
    # Sensors that go quiet past the timeout, a late report, levels up and down: after
    # every report the aggregate's level is update_township's, and so is its final state.
    reports = [
        ("a", 1, 110, at(0)),
        ("b", 1, 120, at(0, 10)),
        ("c", 2, 160, at(0, 20)),
        ("c", 0, 40, at(0, 15)),  # late: ignored
        ("b", 2, 170, at(0, 50)),
        ("c", 2, 165, at(1, 40)),  # a and b (and the old c) time out
        ("d", 3, 210, at(1, 45)),
        ("a", 3, None, at(1, 50)),
        ("d", 0, 30, at(3)),
    ]
    state = TownshipAirState()
    town = TownshipAggregate(state, registered_sensors=registered)
    for device, level, aqi, when in reports:
        one = update_township(state, device, level, aqi, when, registered_sensors=registered)
        step = town.add(device, level, aqi, when)
        assert (step.level, step.previous, step.devices, step.hotspot, step.aqi) == (
            one.level,
            one.previous,
            one.devices,
            one.hotspot,
            one.aqi,
        )
        state = one.state
        assert town.state() == state
    assert list(state.sensors) == ["d"]


def _township_by_scan(
    sensors: dict[str, tuple[int, int | None, float]], need: int, hotspot: int
) -> tuple[int, tuple[str, ...], bool, int | None]:
    """The township's level decided as it was before the aggregate kept its sensors by
    level: every sensor gone over for every level (the reference)."""
    for candidate in range(max((lv for lv, _, _ in sensors.values()), default=0), 0, -1):
        agreeing = sorted(k for k, (lv, _, _) in sensors.items() if lv >= candidate)
        if len(agreeing) >= need:
            aqis = [a for k in agreeing if (a := sensors[k][1]) is not None]
            return candidate, tuple(agreeing), len(agreeing) >= hotspot, max(aqis, default=None)
    return 0, (), False, None


@pytest.mark.parametrize("seed", range(6))
def test_a_township_aggregate_decides_as_going_over_every_sensor(seed: int) -> None:
    # Hundreds of sensors, mostly at level 0, some up to 3; late reports, sensors timing
    # out, episodes rising and clearing: the aggregate kept by level decides as a scan of
    # every sensor would, after every report.
    rng = random.Random(seed)
    config = AirConfig()
    registered = rng.choice((None, 5, 400))
    town = TownshipAggregate(TownshipAirState(), config, registered_sensors=registered)
    sensors: dict[str, tuple[int, int | None, float]] = {}
    clock = 0.0
    episode = 0.0
    for i in range(3000):
        if i % 300 == 0:
            episode = rng.choice((0.0, 0.02, 0.3, 0.9))
        device = f"s{rng.randrange(rng.choice((3, 60, 450)))}"
        minutes = clock + rng.uniform(0, 0.5) - (rng.uniform(0, 90) if rng.random() < 0.05 else 0)
        clock = max(clock, minutes)
        level = rng.choice((1, 2, 3)) if rng.random() < episode else 0
        aqi = None if rng.random() < 0.1 else rng.randint(0, 300)
        when = at(minutes=minutes)
        step = town.add(device, level, aqi, when)
        t = when.timestamp()
        if device not in sensors or t >= sensors[device][2]:
            sensors[device] = (level, aqi, t)
        edge = at(minutes=clock).timestamp() - config.sensor_timeout_s
        sensors = {k: v for k, v in sensors.items() if v[2] >= edge}
        count = registered if registered is not None else len(sensors)
        need = max(1, min(config.min_agreeing_sensors, count))
        assert (step.level, step.devices, step.hotspot, step.aqi) == _township_by_scan(
            sensors, need, config.hotspot_min_sensors
        )
    assert dict(town.state().sensors) == {k: (lv, a, t) for k, (lv, a, t) in sensors.items()}
