"""Air quality: rolling means, real-time AQI and alert level per sensor, and per township.

Reading fields (keys of ``values``) and units accepted by :func:`update_air`:

===============  =======  ==========================================================
key              unit     note
===============  =======  ==========================================================
``pm2_5_ugm3``   ug/m3    0..1000 plausible
``pm10_ugm3``    ug/m3    0..2000 plausible
``o3_ppb``       ppb      converted to ppm for the AQI
``co_ppm``       ppm
``no2_ppb``      ppb
``so2_ppb``      ppb
===============  =======  ==========================================================

Other keys (temperature, humidity ...) are ignored, as are negative or non-finite values
(the health detector reports those).

How a sensor that reports every few minutes is averaged
-------------------------------------------------------
Readings go into clock-hour buckets (event time, UTC hours; Taiwan is a whole-hour
offset so they are also local hours). An hour's value is the mean of its readings, and
an hour is *valid* when it has at least one reading. The current, still filling hour
counts as the newest hour. An N-hour mean is the mean of the valid hourly values among
the current hour and the N-1 before it, so every hour weighs the same whatever the
reporting rate. The "1 h" figures are the current hour's mean.

The AQI inputs (source: domain.md, MOENV):

* PM2.5, PM10: ``0.5 * mean12h + 0.5 * mean4h``, only when at least 2 of the last 4 and 6
  of the last 12 hours are valid; PM2.5 rounded to 0.1 ug/m3, PM10 to 1 ug/m3.
* O3 and CO: the 8-hour moving average, when at least ``min_valid_8h`` of the 8 hours are
  valid; O3 also as the 1-hour value (see :mod:`.aqi` for the O3 rule).
* NO2 and SO2: the current hour; SO2 also the 24-hour mean (used above AQI 200) when
  at least ``min_valid_24h`` hours are valid.

The alert level comes from a :class:`~.levels.LevelTracker` on the AQI, against the
``air_quality`` lines of the thresholds file (:class:`civic_iot.thresholds.AirQualityThresholds`).

Figures are named by the storage rule (:func:`civic_iot.storage.schema.windowed`): the
reading field plus the window, in the reading's unit (``pm2_5_ugm3_1h``, ``o3_ppb_8h``,
``pm2_5_ugm3_rt`` for the MOENV real-time average).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from civic_iot.storage.schema import Window, windowed
from civic_iot.thresholds import AirQualityThresholds
from processors.detectors.aqi import (
    MOENV_2025,
    AqiResult,
    AqiTables,
    Pollutant,
    compute_aqi,
    pm2_5_table,
)
from processors.detectors.levels import Ladder, LevelStep, LevelTracker
from processors.detectors.state import frozen, stored
from processors.detectors.windows import BucketSeries, epoch_s, from_epoch

#: Reading field -> short pollutant name used in figures.
AIR_FIELDS: Mapping[str, str] = {
    "pm2_5_ugm3": "pm2_5",
    "pm10_ugm3": "pm10",
    "o3_ppb": "o3",
    "co_ppm": "co",
    "no2_ppb": "no2",
    "so2_ppb": "so2",
}

HOUR_S = 3600


@dataclass(frozen=True, slots=True)
class AirConfig:
    """Air detector configuration; every default is cited where it is set."""

    # Real-time PM formula and its validity rule: MOENV via domain.md.
    pm_short_hours: int = 4
    pm_long_hours: int = 12
    pm_min_valid_short: int = 2
    pm_min_valid_long: int = 6
    #: Valid hours needed for an 8-hour O3/CO average. *unconfirmed*: the US EPA 75 %
    #: completeness convention (6 of 8); domain.md gives no number.
    min_valid_8h: int = 6
    #: Valid hours needed for the 24-hour SO2 mean. *unconfirmed*: US EPA 75 % (18 of 24).
    min_valid_24h: int = 18
    #: Hours of history kept per pollutant (the longest window, SO2 24 h).
    history_hours: int = 24
    #: The alert ladder on the AQI and the PM2.5 breakpoints (the thresholds file's
    #: ``air_quality`` section, with a region's or device's overrides applied).
    lines: AirQualityThresholds = field(default_factory=AirQualityThresholds)
    # Township aggregation (local choices).
    #: A township level needs this many sensors at or above it (fewer if it has fewer).
    min_agreeing_sensors: int = 2
    #: With this many agreeing sensors the finding is flagged a hot spot.
    hotspot_min_sensors: int = 3
    #: A sensor not heard for this long (event time) no longer counts for its township.
    sensor_timeout_s: float = 3600.0
    #: The breakpoint tables: MOENV 2025 with ``lines``' PM2.5 table.
    tables: AqiTables = field(init=False, default=MOENV_2025)
    _ladder: Ladder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tables = MOENV_2025.with_table("pm2_5", pm2_5_table(self.lines.pm2_5_ugm3_breakpoints))
        object.__setattr__(self, "tables", tables)
        ladder = Ladder.of(self.lines.aqi_levels, self.lines.aqi_clear_margin)
        object.__setattr__(self, "_ladder", ladder)

    def ladder(self) -> Ladder:
        """The alert ladder on the AQI: levels 1/2/3 and their clear margin."""
        return self._ladder


@stored
class AirState:
    """One air sensor's hourly buckets (per reading field), clock and alert level."""

    series: Mapping[str, BucketSeries] = field(default_factory=dict)
    #: Newest event time seen, epoch seconds; windows end here.
    clock: float | None = None
    tracker: LevelTracker = field(default_factory=LevelTracker)


@frozen
class PollutantMeans:
    """Rolling means of one pollutant in its reading unit, and valid hours in 24 h."""

    mean_1h: float | None
    mean_8h: float | None
    mean_24h: float | None
    valid_hours_24h: int


@frozen
class AirFigures:
    """What one update derives, for storage and display.

    ``aqi_inputs`` are the averaged concentrations given to :func:`.aqi.compute_aqi`
    (keys and units of :mod:`.aqi`: PM ug/m3, O3 and CO ppm, SO2 and NO2 ppb);
    ``concentrations`` are the same figures named and measured as the readings are
    (``pm2_5_ugm3_rt``, ``o3_ppb_8h`` ...), plus ``pm2_5_ugm3_1h``, the current hour's
    mean of PM2.5.
    """

    as_of: datetime
    #: Per reading field: window hours -> (mean of the hourly means, valid hours).
    windows: Mapping[str, Windows]
    aqi_inputs: Mapping[Pollutant, float]
    aqi: AqiResult | None
    level: int
    concentrations: Mapping[str, float] = field(default_factory=dict)
    #: The longest window, hours (``AirConfig.history_hours``).
    history_hours: int = 24

    @property
    def means(self) -> Mapping[str, PollutantMeans]:
        """Each reading field's rolling means (made when asked: the worker stores the
        concentrations, not these)."""
        return {k: _means(w, self.history_hours) for k, w in self.windows.items()}


@frozen
class AirUpdate:
    """The new state, the figures, the level step and whether the reading was kept."""

    state: AirState
    figures: AirFigures
    step: LevelStep
    #: False when every value was older than the kept history (or unusable).
    accepted: bool


def update_air(
    state: AirState,
    event_time: datetime,
    values: Mapping[str, float],
    config: AirConfig = AirConfig(),
) -> AirUpdate:
    """Add one reading (tz-aware event time, fields per the module table) and re-derive.

    Out-of-order readings within the 24-hour history land in their hour and the figures
    are recomputed as of the newest event time seen; older ones are dropped
    (``accepted=False``). ``config`` carries the lines in force for the sensor.
    """
    t = epoch_s(event_time)
    clock = t if state.clock is None or t > state.clock else state.clock
    sizes = _window_sizes(config)
    usable = {k: v for k, v in values.items() if k in AIR_FIELDS and math.isfinite(v) and v >= 0}
    # Each series: the reading's value added, old hours dropped and every window's mean,
    # in one pass over its buckets.
    series: dict[str, BucketSeries] = {}
    windows: dict[str, Windows] = {}
    accepted = False
    for reading_field in sorted(state.series.keys() | usable.keys()):
        current = state.series.get(reading_field) or BucketSeries(HOUR_S, config.history_hours)
        if reading_field in usable:
            new, kept, win = current.step(clock, sizes, t, usable[reading_field])
            accepted = accepted or kept
        else:
            new, _, win = current.step(clock, sizes)
        series[reading_field], windows[reading_field] = new, win
    inputs, concentrations = _aqi_inputs(windows, config)
    pm25 = windows.get("pm2_5_ugm3")
    if pm25 is not None and pm25[1][0] is not None:
        concentrations[windowed("pm2_5_ugm3", "1h")] = pm25[1][0]
    result = compute_aqi(inputs, config.tables)
    as_of = from_epoch(clock)
    if result is None:
        step = LevelStep(tracker=state.tracker, previous=state.tracker.level)
    else:
        step = state.tracker.update(result.aqi, config.ladder(), as_of)
    new_state = AirState(series=series, clock=clock, tracker=step.tracker)
    figures = AirFigures(
        as_of, windows, inputs, result, step.level, concentrations, config.history_hours
    )
    return AirUpdate(state=new_state, figures=figures, step=step, accepted=accepted)


#: Window sizes (hours) -> mean of the hourly means and valid hours, of one series.
Windows = Mapping[int, tuple[float | None, int]]


def _window_sizes(config: AirConfig) -> tuple[int, ...]:
    """Every window (hours) the figures and the AQI inputs need, ascending."""
    # By identity: hashing a config (a frozen dataclass of tables) costs more than the
    # windows themselves. The config is kept with its sizes, so its id is never reused.
    found = _SIZES.get(id(config))
    if found is None:
        hours = {1, 8, config.history_hours, config.pm_short_hours, config.pm_long_hours}
        found = _SIZES[id(config)] = (config, tuple(sorted(hours)))
    return found[1]


_SIZES: dict[int, tuple[AirConfig, tuple[int, ...]]] = {}


def _means(windows: Windows, history_hours: int) -> PollutantMeans:
    mean_1h, _ = windows[1]
    mean_8h, _ = windows[8]
    mean_24h, valid = windows[history_hours]
    return PollutantMeans(mean_1h, mean_8h, mean_24h, valid)


def _aqi_inputs(
    series: Mapping[str, Windows], config: AirConfig
) -> tuple[dict[Pollutant, float], dict[str, float]]:
    """The AQI inputs (keys and units of :mod:`.aqi`) and the same figures in the
    readings' names and units, from each series' windows."""
    inputs: dict[Pollutant, float] = {}
    named: dict[str, float] = {}
    pm, averaged = _input_plan(config)
    for reading_field, pollutant, name in pm:
        s = series.get(reading_field)
        if s is None:
            continue
        long, valid_long = s[config.pm_long_hours]
        short, valid_short = s[config.pm_short_hours]
        if (
            long is not None
            and short is not None
            and valid_long >= config.pm_min_valid_long
            and valid_short >= config.pm_min_valid_short
        ):
            table = config.tables.get(pollutant)
            inputs[pollutant] = named[name] = float(table.quantise(0.5 * long + 0.5 * short))

    for reading_field, hours, min_valid, key, divisor, name in averaged:
        s = series.get(reading_field)
        if s is None:
            continue
        value, valid = s[hours]
        if value is not None and valid >= min_valid:
            inputs[key] = value / divisor if divisor != 1.0 else value
            named[name] = value
    return inputs, named


#: (reading field, AQI key, stored name) of the real-time PM averages.
_PmPlan = tuple[tuple[str, Pollutant, str], ...]
#: (reading field, hours, valid hours needed, AQI key, divisor to the AQI unit, stored
#: name) of the other averages.
_AveragedPlan = tuple[tuple[str, int, int, Pollutant, float, str], ...]


def _input_plan(config: AirConfig) -> tuple[_PmPlan, _AveragedPlan]:
    """What :func:`_aqi_inputs` takes from which window, made once per config (kept by
    identity, as :func:`_window_sizes`)."""
    found = _PLANS.get(id(config))
    if found is None:
        pm: _PmPlan = (
            ("pm2_5_ugm3", "pm2_5", windowed("pm2_5_ugm3", "rt")),
            ("pm10_ugm3", "pm10", windowed("pm10_ugm3", "rt")),
        )
        averaged: list[tuple[str, int, int, Pollutant, float, str]] = []
        for reading_field, hours, min_valid, key, divisor in (
            ("o3_ppb", 8, config.min_valid_8h, "o3_8h", 1000.0),  # ppb -> ppm
            ("o3_ppb", 1, 1, "o3_1h", 1000.0),
            ("co_ppm", 8, config.min_valid_8h, "co_8h", 1.0),
            ("so2_ppb", 1, 1, "so2_1h", 1.0),
            ("so2_ppb", config.history_hours, config.min_valid_24h, "so2_24h", 1.0),
            ("no2_ppb", 1, 1, "no2_1h", 1.0),
        ):
            window: Window = "8h" if hours == 8 else "1h" if hours == 1 else "24h"
            name = windowed(reading_field, window)
            averaged.append((reading_field, hours, min_valid, key, divisor, name))  # type: ignore[arg-type]
        found = _PLANS[id(config)] = (config, (pm, tuple(averaged)))
    return found[1]


_PLANS: dict[int, tuple[AirConfig, tuple[_PmPlan, _AveragedPlan]]] = {}


# --- township aggregation -------------------------------------------------------------


class SensorReport(NamedTuple):
    """A sensor's latest level and AQI as the township aggregator knows them.

    A record (:mod:`.state`): a township holds hundreds, each written as a JSON array."""

    level: int
    aqi: int | None
    #: Event time of the report, epoch seconds.
    last_seen: float


@stored
class TownshipAirState:
    """The sensors heard recently in one township and the township's current level."""

    sensors: Mapping[str, SensorReport] = field(default_factory=dict)
    level: int = 0
    clock: float | None = None


@frozen
class TownshipLevel:
    """The township's level after one sensor report.

    ``changed`` is what becomes an alert candidate (also back to 0); ``devices`` are the
    sensors at or above the level, ``aqi`` the highest AQI among them.
    """

    level: int
    previous: int
    devices: tuple[str, ...]
    hotspot: bool
    aqi: int | None

    @property
    def changed(self) -> bool:
        return self.level != self.previous


@frozen
class TownshipUpdate(TownshipLevel):
    """The township's level after one sensor report, and its new state."""

    state: TownshipAirState


def update_township(
    state: TownshipAirState,
    device_id: str,
    level: int,
    aqi: int | None,
    event_time: datetime,
    config: AirConfig = AirConfig(),
    *,
    registered_sensors: int | None = None,
) -> TownshipUpdate:
    """Record one sensor's level (0..3) and AQI at ``event_time`` and decide the township.

    The township level is the highest level reached by at least
    ``min(min_agreeing_sensors, n)`` sensors, where ``n`` is ``registered_sensors`` (the
    registry's count for the township) or, when not given, the sensors heard within
    ``sensor_timeout_s``; so a township with a single sensor follows that sensor. Pass
    ``registered_sensors`` so that one noisy sensor cannot decide alone while its
    neighbours are silent. A report older than the sensor's last one is ignored.
    """
    town = TownshipAggregate(state, config, registered_sensors=registered_sensors)
    step = town.add(device_id, level, aqi, event_time)
    return TownshipUpdate(
        step.level, step.previous, step.devices, step.hotspot, step.aqi, town.state()
    )


class TownshipAggregate:
    """:func:`update_township` for a batch of reports of one township: the same level
    after each report, with the sensors kept in one working copy (not copied and
    filtered again for every report) and the state made once, at the end
    (:meth:`state`). Private to the batch that made it."""

    __slots__ = ("_at", "_config", "_oldest", "_registered", "clock", "level", "sensors")

    def __init__(
        self,
        state: TownshipAirState,
        config: AirConfig = AirConfig(),
        *,
        registered_sensors: int | None = None,
    ) -> None:
        self.sensors = dict(state.sensors)
        self.level = state.level
        self.clock = state.clock
        self._config = config
        self._registered = registered_sensors
        #: No sensor was last seen before this (epoch s): the timeout filter runs only
        #: when the clock's edge passes it.
        self._oldest = math.inf
        #: Level (>= 1) -> the sensors at that level: a report is decided from the few
        #: sensors above level 0, not by going over all of a township's (hundreds).
        self._at: dict[int, set[str]] = {}
        self._index()

    def _index(self) -> None:
        """:attr:`_oldest` and :attr:`_at` from the sensors."""
        self._oldest = min((r.last_seen for r in self.sensors.values()), default=math.inf)
        at: dict[int, set[str]] = {}
        for k, r in self.sensors.items():
            if r.level > 0:
                at.setdefault(r.level, set()).add(k)
        self._at = at

    def add(
        self, device_id: str, level: int, aqi: int | None, event_time: datetime
    ) -> TownshipLevel:
        """Record one sensor's report and decide the township (:func:`update_township`)."""
        config = self._config
        t = epoch_s(event_time)
        clock = t if self.clock is None else max(self.clock, t)
        self.clock = clock
        sensors = self.sensors
        at = self._at
        known = sensors.get(device_id)
        if known is None or t >= known.last_seen:
            if known is not None and known.level > 0:
                at[known.level].discard(device_id)
            sensors[device_id] = SensorReport(level, aqi, t)
            if level > 0:
                at.setdefault(level, set()).add(device_id)
            self._oldest = min(self._oldest, t)
        edge = clock - config.sensor_timeout_s
        if self._oldest < edge:
            kept = {k: r for k, r in sensors.items() if r.last_seen >= edge}
            sensors.clear()
            sensors.update(kept)
            self._index()
            at = self._at

        registered = self._registered
        count = registered if registered is not None else len(sensors)
        need = max(1, min(config.min_agreeing_sensors, count))
        new_level = 0
        agreeing: list[str] = []
        # The highest level that ``need`` sensors reach: the sensors at or above each
        # level, counted down from the highest level held.
        at_or_above = 0
        for candidate in range(max((k for k, ids in at.items() if ids), default=0), 0, -1):
            at_or_above += len(at.get(candidate, ()))
            if at_or_above >= need:
                new_level = candidate
                agreeing = sorted(k for lv, ids in at.items() if lv >= candidate for k in ids)
                break
        aqis = [a for k in agreeing if (a := sensors[k].aqi) is not None]
        previous, self.level = self.level, new_level
        return TownshipLevel(
            new_level,
            previous,
            tuple(agreeing),
            new_level > 0 and len(agreeing) >= config.hotspot_min_sensors,
            max(aqis, default=None),
        )

    def state(self) -> TownshipAirState:
        """The township's state after the reports added so far."""
        return TownshipAirState(sensors=dict(self.sensors), level=self.level, clock=self.clock)
