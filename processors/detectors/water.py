"""Water: flood depth, river stage, rain accumulation and class, debris-flow index.

Four detectors, each a pure function of (state, one reading, configuration):

* :func:`update_flood`: street/underpass flood depth (cm) against a depth ladder, and its
  rate of rise;
* :func:`update_river`: river stage (m, an elevation) against the station's warning
  levels from the device registry, and its rate of rise. A station without warning
  levels never raises a river level (figures and rate are still reported);
* :func:`update_rain`: a rain gauge's accumulations over 1, 3 and 24 hours, daily totals,
  and the CWA rain class;
* :func:`update_debris_flow`: the rainfall triggering index (RTI) of a gauge's rain
  event and the township's debris-flow level against its threshold R70, or R50 for a
  while after strong shaking (:func:`mark_strong_shaking`).

Each returns figures for storage and :class:`~.levels.LevelStep` objects whose
``changed`` flag is what becomes an alert candidate: the depth or stage level, the rise
level of a gauge (its own candidate, hazard ``water_rise``), the rain class and the
debris-flow level. Times are tz-aware event times; readings arriving out of order inside
a window are counted, older ones are dropped.

The lines come from the thresholds file (:mod:`civic_iot.thresholds`: sections
``flood``, ``river``, ``rain`` and ``debris_flow``), with the device's region and device
overrides already applied: each config carries the lines in force for one gauge.
Figures are named by the storage rule (:func:`civic_iot.storage.schema.windowed`):
``rainfall_mm_1h`` is the 1-hour accumulation of the readings' ``rainfall_mm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Self

from civic_iot.thresholds import (
    DebrisFlowThresholds,
    FloodThresholds,
    RainThresholds,
    RiverThresholds,
)
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.levels import Ladder, LevelStep, LevelTracker
from processors.detectors.state import frozen, stored
from processors.detectors.windows import (
    BucketSeries,
    SampleBuffer,
    epoch_s,
    from_epoch,
)

TEN_MIN_S = 600
HOUR_S = 3600
DAY_S = 86400

# --- flood depth and river stage --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RiseConfig:
    """How the rate of rise is estimated: least-squares slope over recent samples.

    The slope is taken over the samples of the last ``window_s`` seconds (inclusive) and
    needs ``min_samples`` spanning ``min_span_s``; 20 minutes and 3 samples suit gauges
    reporting every 1 to 10 minutes. Local choices.
    """

    window_s: float = 1200.0
    min_samples: int = 3
    min_span_s: float = 300.0
    #: Samples kept: age (s) and count bounds.
    keep_s: float = 3600.0
    max_samples: int = 240


@dataclass(frozen=True, slots=True)
class FloodConfig:
    """A flood gauge's depth ladder (cm) and rise line (the thresholds file's ``flood``
    section) and how its rate of rise is estimated."""

    lines: FloodThresholds = field(default_factory=FloodThresholds)
    rise: RiseConfig = RiseConfig()
    #: The depth ladder and the rise ladder, made once (every reading uses them).
    ladders: tuple[Ladder, Ladder] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lines = self.lines
        depth = Ladder.of(lines.flood_depth_cm_levels, lines.flood_depth_cm_clear_margin)
        rise = _rise_ladder(lines.rise_cm_per_10min, lines.rise_clear_fraction)
        object.__setattr__(self, "ladders", (depth, rise))


@dataclass(frozen=True, slots=True)
class RiverConfig:
    """A river gauge's warning levels (m) and rise line (the thresholds file's ``river``
    section: no default elevations, a station without lines never raises a level) and
    how its rate of rise is estimated."""

    lines: RiverThresholds = field(default_factory=RiverThresholds)
    rise: RiseConfig = RiseConfig()
    #: The stage ladder and the rise ladder, made once (every reading uses them).
    ladders: tuple[Ladder, Ladder] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lines = self.lines
        stage = Ladder.of(lines.levels, lines.water_level_m_clear_margin)
        rise = _rise_ladder(lines.rise_cm_per_10min, lines.rise_clear_fraction)
        object.__setattr__(self, "ladders", (stage, rise))


@stored
class GaugeState:
    """A flood or river gauge: recent samples (gauge unit), clock, level and rise trackers."""

    samples: SampleBuffer = field(default_factory=SampleBuffer)
    #: Newest event time seen, epoch seconds.
    clock: float | None = None
    level: LevelTracker = field(default_factory=LevelTracker)
    rise: LevelTracker = field(default_factory=LevelTracker)


@frozen
class GaugeFigures:
    """Derived figures of a flood (cm) or river (m) gauge as of the newest event time."""

    as_of: datetime
    #: Newest value in the gauge unit (flood cm, river m).
    value: float
    #: Least-squares rate in cm per 10 minutes, None with too few samples.
    rise_cm_per_10min: float | None
    level: int
    #: The line of the current level in the gauge unit (None at level 0).
    threshold: float | None
    rising: bool
    #: False when no warning level is configured (a river station without elevations).
    has_levels: bool
    #: The rise level (0: not rising fast, 1: rising at least the rise line) and that
    #: line, cm per 10 minutes.
    rise_level: int = 0
    rise_threshold_cm_per_10min: float | None = None


@frozen
class GaugeUpdate:
    state: GaugeState
    figures: GaugeFigures
    level_step: LevelStep
    rise_step: LevelStep
    #: True when the reading was older than the newest one: it refines the rate only.
    late: bool


def _update_gauge(
    state: GaugeState,
    event_time: datetime,
    value: float,
    ladder: Ladder,
    rise_ladder: Ladder,
    rise: RiseConfig,
    cm_per_unit: float,
) -> GaugeUpdate:
    if not math.isfinite(value):
        msg = f"gauge value at {event_time.isoformat()}: expected a finite number, got {value}"
        raise ValueError(msg)
    t = epoch_s(event_time)
    late = state.clock is not None and t < state.clock
    clock = t if state.clock is None else max(state.clock, t)
    samples = state.samples.add(t, value, rise.keep_s, rise.max_samples)
    as_of = from_epoch(clock)
    newest = samples.samples[-1][1]

    # A late value must not move the level back to an older state of the water.
    if late:
        level_step = LevelStep(tracker=state.level, previous=state.level.level)
    else:
        level_step = state.level.update(value, ladder, as_of)

    slope = samples.slope_per_s(clock, rise.window_s, rise.min_samples, rise.min_span_s)
    rate = None if slope is None else slope * TEN_MIN_S * cm_per_unit
    rise_step = (
        LevelStep(tracker=state.rise, previous=state.rise.level)
        if rate is None
        else state.rise.update(rate, rise_ladder, as_of)
    )
    figures = GaugeFigures(
        as_of=as_of,
        value=newest,
        rise_cm_per_10min=rate,
        level=level_step.level,
        threshold=ladder.threshold(level_step.level),
        rising=rise_step.level > 0,
        has_levels=ladder.configured,
        rise_level=rise_step.level,
        rise_threshold_cm_per_10min=rise_ladder.threshold(1),
    )
    new_state = GaugeState(samples, clock, level_step.tracker, rise_step.tracker)
    return GaugeUpdate(new_state, figures, level_step, rise_step, late)


def _rise_ladder(threshold: float, clear_fraction: float) -> Ladder:
    return Ladder.of((threshold,), threshold * (1.0 - clear_fraction))


def update_flood(
    state: GaugeState,
    event_time: datetime,
    depth_cm: float,
    config: FloodConfig = FloodConfig(),
) -> GaugeUpdate:
    """One flood-depth reading (cm of water above the road surface, >= 0).

    Levels 1/2/3 at ``flood_depth_cm_levels`` (10/30/50 cm by default); ``rising`` (rise
    level 1) when the depth rises at least ``rise_cm_per_10min``, held until the rate
    falls below ``rise_clear_fraction`` of that line (escalation at once, hysteresis on
    the way down, as for the depth ladder).
    """
    depth, rise = config.ladders
    return _update_gauge(state, event_time, depth_cm, depth, rise, config.rise, cm_per_unit=1.0)


def update_river(
    state: GaugeState,
    event_time: datetime,
    stage_m: float,
    config: RiverConfig = RiverConfig(),
) -> GaugeUpdate:
    """One river-stage reading (m, the water surface elevation used by the station).

    Levels: 1 at ``water_level_m_yellow``, 2 at ``water_level_m_orange``, 3 at
    ``water_level_m_red``. Missing lines cannot be entered; with none the level stays 0
    and ``figures.has_levels`` is False. ``rising`` as for floods, in cm per 10 min.
    """
    stage, rise = config.ladders
    return _update_gauge(state, event_time, stage_m, stage, rise, config.rise, cm_per_unit=100.0)


# --- rain ------------------------------------------------------------------------------


def _mm(total: float) -> float:
    """A rain sum without float summation noise (33.4 + 33.3 + 33.3 must reach 100 mm).

    Gauges resolve 0.1 to 0.5 mm, so rounding to 1e-6 mm loses nothing.
    """
    return round(total, 6)


@dataclass(frozen=True, slots=True)
class RainClass:
    """A CWA rain class: met when any (hours, mm) criterion is reached."""

    level: int
    name_en: str
    name_zh: str
    criteria: tuple[tuple[int, float], ...]


#: Names of the CWA rain classes, levels 1 to 4 (source: CWA, via domain.md); their
#: criteria are the thresholds file's ``rain`` section.
CWA_RAIN_CLASS_NAMES: tuple[tuple[str, str], ...] = (
    ("heavy rain", "大雨"),
    ("extremely heavy rain", "豪雨"),
    ("torrential rain", "大豪雨"),
    ("extremely torrential rain", "超大豪雨"),
)


def rain_classes(lines: RainThresholds) -> tuple[RainClass, ...]:
    """The CWA rain classes with the criteria of ``lines``."""
    return tuple(
        RainClass(level, en, zh, criteria.criteria)
        for level, ((en, zh), criteria) in enumerate(
            zip(CWA_RAIN_CLASS_NAMES, lines.classes, strict=True), start=1
        )
    )


@dataclass(frozen=True, slots=True)
class RainConfig:
    """Rain gauge configuration.

    Accumulations use 10-minute buckets; an *N*-hour accumulation is the sum of the
    current bucket and the ``6N - 1`` before it, so it covers between ``N`` hours minus
    10 minutes and ``N`` hours (it never includes rain older than ``N`` hours). The
    classes and their hysteresis are ``lines`` (the thresholds file's ``rain`` section).
    """

    lines: RainThresholds = field(default_factory=RainThresholds)
    #: Daily totals are local days: Taiwan is UTC+8 with no daylight saving.
    utc_offset_s: int = 8 * HOUR_S
    #: Daily totals kept before today, for the debris-flow antecedent rain (domain.md);
    #: the worker sets it from ``debris_flow.antecedent_days``.
    antecedent_days: int = 7
    #: Recent reading times remembered to drop duplicate deliveries.
    dedupe_keep: int = 64
    classes: tuple[RainClass, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", rain_classes(self.lines))

    @property
    def clear_fraction(self) -> float:
        """A class is held until every criterion is below this fraction of its value."""
        return self.lines.clear_fraction


@stored
class RainState:
    """One rain gauge: 10-minute sums over 24 h, daily sums, class tracker, clock."""

    tens: BucketSeries = field(default_factory=lambda: BucketSeries(TEN_MIN_S, 24 * 6))
    days: BucketSeries = field(default_factory=lambda: BucketSeries(DAY_S, 8, 8 * HOUR_S))
    clock: float | None = None
    tracker: LevelTracker = field(default_factory=LevelTracker)
    recent: tuple[float, ...] = ()

    @classmethod
    def empty(cls, config: RainConfig) -> Self:
        """An empty state whose daily buckets follow ``config``'s offset and day count."""
        return cls(days=BucketSeries(DAY_S, config.antecedent_days + 1, config.utc_offset_s))


@frozen
class RainFigures:
    """Accumulations of ``rainfall_mm`` (mm) as of the newest event time, and the class."""

    as_of: datetime
    rainfall_mm_1h: float
    rainfall_mm_3h: float
    rainfall_mm_24h: float
    #: Local-day totals: index 0 is today (so far), 1 yesterday ... up to 7 days back.
    daily_mm: tuple[float, ...]
    level: int
    class_en: str | None
    class_zh: str | None


@frozen
class RainUpdate:
    state: RainState
    figures: RainFigures
    step: LevelStep
    #: Event time of this reading and the rain it added (0 for a duplicate or too old).
    reading_time: datetime
    added_mm: float
    duplicate: bool


def update_rain(
    state: RainState,
    event_time: datetime,
    rainfall_mm: float,
    config: RainConfig = RainConfig(),
) -> RainUpdate:
    """One rain report: ``rainfall_mm`` (>= 0) is the rain since the gauge's previous report.

    A second report with the same event time is a duplicate delivery and adds nothing.
    """
    if not math.isfinite(rainfall_mm) or rainfall_mm < 0:
        msg = (
            f"rainfall_mm at {event_time.isoformat()}: expected a finite value >= 0, "
            f"got {rainfall_mm}"
        )
        raise ValueError(msg)
    t = epoch_s(event_time)
    clock = t if state.clock is None else max(state.clock, t)
    duplicate = t in state.recent
    tens, days = state.tens, state.days
    added = 0.0
    if not duplicate:
        # A reading too old for the 24 h buckets may still count in its day's total.
        tens, _ = tens.add(t, rainfall_mm, clock)
        days, kept = days.add(t, rainfall_mm, clock)
        added = rainfall_mm if kept else 0.0
    tens, days = tens.pruned(clock), days.pruned(clock)
    recent = state.recent if duplicate else (*state.recent, t)[-config.dedupe_keep :]

    hours = {1, 3, 24} | {h for c in config.classes for h, _ in c.criteria}
    in_tens = tens.totals(clock, {h * HOUR_S // TEN_MIN_S for h in hours})
    sums = {h: _mm(in_tens[h * HOUR_S // TEN_MIN_S]) for h in hours}
    by_day = {start: _mm(total) for start, total, _ in days.last(clock, days.keep)}
    today = days.start_of(clock)
    daily = tuple(by_day.get(today - d * DAY_S, 0.0) for d in range(days.keep))
    as_of = from_epoch(clock)

    def met(rain_class: RainClass, fraction: float) -> bool:
        return any(sums[h] >= fraction * mm for h, mm in rain_class.criteria)

    entered = max((c.level for c in config.classes if met(c, 1.0)), default=0)
    held = max(
        (
            c.level
            for c in config.classes
            if c.level <= state.tracker.level and met(c, config.clear_fraction)
        ),
        default=0,
    )
    step = state.tracker.advance(entered, held, as_of)
    current = next((c for c in config.classes if c.level == step.level), None)
    figures = RainFigures(
        as_of=as_of,
        rainfall_mm_1h=sums[1],
        rainfall_mm_3h=sums[3],
        rainfall_mm_24h=sums[24],
        daily_mm=daily,
        level=step.level,
        class_en=current.name_en if current else None,
        class_zh=current.name_zh if current else None,
    )
    new_state = RainState(tens, days, clock, step.tracker, recent)
    return RainUpdate(new_state, figures, step, event_time, added, duplicate)


# --- debris flow -----------------------------------------------------------------------


#: Debris-flow rule and a township's thresholds: the thresholds file's ``debris_flow``
#: section as in force for one gauge (the model documents every value and its source).
DebrisFlowConfig = DebrisFlowThresholds
DEFAULT_DEBRIS_FLOW = DebrisFlowConfig()


@stored
class StrongShaking:
    """Shaking of CWA intensity ``intensity`` (>= the configured level) in a gauge's
    township by earthquake ``event_id``: R50 applies to rain from ``since_s`` (the
    origin time) until ``until_s`` (epoch s, event time)."""

    event_id: str
    intensity: str
    since_s: float
    until_s: float

    def active(self, t_s: float) -> bool:
        """Whether R50 applies at event time ``t_s`` (epoch s)."""
        return self.since_s <= t_s < self.until_s


def strong_shaking(
    event_id: str, intensity: str, origin_s: float, config: DebrisFlowConfig = DEFAULT_DEBRIS_FLOW
) -> StrongShaking | None:
    """The R50 period an earthquake's shaking of ``intensity`` (a CWA level) starts at its
    origin time ``origin_s`` (epoch s) and ends ``config.r50_days`` later, or None below
    ``config.shaking_min_intensity``."""
    if intensity_ordinal(intensity) < intensity_ordinal(config.shaking_min_intensity):
        return None
    return StrongShaking(event_id, intensity, origin_s, origin_s + config.r50_days * DAY_S)


def r50_threshold(config: DebrisFlowConfig) -> float | None:
    """The R50 in force (mm): ``config.r50_mm``, else ``r50_below_r70_mm`` below R70 when
    that is still above 0; None without either."""
    if config.r50_mm is not None:
        return config.r50_mm
    if config.r70_mm is None:
        return None
    derived = config.r70_mm - config.r50_below_r70_mm
    return derived if derived > 0 else None


@stored
class DebrisFlowState:
    """The current rain event of a gauge (if any), its level, and the strong shaking
    whose R50 period has not ended yet (if any)."""

    event_start: float | None = None
    last_wet: float | None = None
    event_rain_mm: float = 0.0
    antecedent_mm: float = 0.0
    tracker: LevelTracker = field(default_factory=LevelTracker)
    shaking: StrongShaking | None = None

    @property
    def strong_shaking(self) -> bool:
        """Whether a strong shaking is marked (its R50 period may not have begun yet)."""
        return self.shaking is not None


def mark_strong_shaking(state: DebrisFlowState, shaking: StrongShaking | None) -> DebrisFlowState:
    """The state with a strong shaking marked: of the marked one and ``shaking``, the one
    whose R50 period ends later (the stronger one when they end together, as two updates
    of one earthquake do). ``None`` leaves the state as it is; a period that has ended is
    dropped by :func:`update_debris_flow`. Marking twice is marking once."""
    if shaking is None:
        return state
    old = state.shaking
    if old is not None and (old.until_s, intensity_ordinal(old.intensity)) >= (
        shaking.until_s,
        intensity_ordinal(shaking.intensity),
    ):
        return state
    return replace(state, shaking=shaking)


@frozen
class DebrisFlowFigures:
    """RTI figures as of the rain clock. Rain in mm, RTI in mm^2/h.

    ``rainfall_mm_event``: the event's rain; ``antecedent_mm``: the discounted rain of
    the days before; ``rt_mm`` = the two (the effective rain Rt); ``rainfall_mm_1h``: the
    intensity I (mm in the last hour, read as mm/h).
    """

    as_of: datetime
    in_event: bool
    event_start: datetime | None
    rainfall_mm_event: float
    antecedent_mm: float
    rt_mm: float
    rainfall_mm_1h: float
    rti: float
    #: The threshold in use (mm) and which one; None without a township threshold.
    threshold_mm: float | None
    threshold_kind: Literal["r70", "r50"] | None
    level: int
    #: The township's R70 (mm), whichever threshold is in use.
    r70_mm: float | None = None
    #: The strong shaking that put R50 in use (None when R70 is, or ``use_r50`` did).
    shaking: StrongShaking | None = None


@frozen
class DebrisFlowUpdate:
    state: DebrisFlowState
    figures: DebrisFlowFigures
    step: LevelStep
    event_started: bool
    event_ended: bool


def antecedent_rain(daily_mm: tuple[float, ...], discount: float, days: int) -> float:
    """Sum over d = 1..days of ``discount ** d * daily_mm[d]`` (index 0 is today), mm."""
    return sum(discount**d * daily_mm[d] for d in range(1, min(days, len(daily_mm) - 1) + 1))


def update_debris_flow(
    state: DebrisFlowState,
    rain: RainUpdate,
    config: DebrisFlowConfig = DEFAULT_DEBRIS_FLOW,
) -> DebrisFlowUpdate:
    """Advance a gauge's rain event with the result of :func:`update_rain`.

    ``config.r70_mm`` and :func:`r50_threshold` are the township's thresholds (mm, in
    50 mm steps); without R70 the figures are computed but the level stays 0.
    R50 applies with ``config.use_r50`` or while the rain clock is inside the state's
    strong-shaking period; when it applies but is not known, R70 is used
    (``threshold_kind`` says which). A period that has ended leaves the state. A level
    reached under R50 is judged against R70 again once the period ends (and drops if the
    rain is below R70's lines: the thresholds carry no clear margin).
    """
    fig = rain.figures
    now = epoch_s(fig.as_of)
    intensity = fig.rainfall_mm_1h
    wet = intensity >= config.event_start_rainfall_mm_1h
    start, last_wet = state.event_start, state.last_wet
    event_rain, antecedent = state.event_rain_mm, state.antecedent_mm
    started = ended = False

    if start is not None:
        if rain.added_mm > 0 and epoch_s(rain.reading_time) >= start:
            event_rain = _mm(event_rain + rain.added_mm)
        if wet:
            last_wet = now if last_wet is None else max(last_wet, now)
        elif last_wet is not None and now - last_wet >= config.event_end_dry_h * HOUR_S:
            start, last_wet, event_rain, ended = None, None, 0.0, True
    if start is None and wet:
        # The hour that reached the start rate belongs to the event: it starts with the
        # oldest 10-minute bucket of the 1 h accumulation.
        start = rain.state.tens.start_of(now) - 5 * TEN_MIN_S
        last_wet, event_rain, started = now, intensity, True
        antecedent = antecedent_rain(
            fig.daily_mm, config.antecedent_discount, config.antecedent_days
        )
    if start is None:
        antecedent = antecedent_rain(
            fig.daily_mm, config.antecedent_discount, config.antecedent_days
        )

    rt = event_rain + antecedent
    shaking = state.shaking
    if shaking is not None and now >= shaking.until_s:
        shaking = None
    shaken = shaking is not None and shaking.active(now)
    reduced = config.use_r50 or shaken
    r70_mm, r50_mm = config.r70_mm, r50_threshold(config)
    kind: Literal["r70", "r50"] = "r50" if reduced and r50_mm is not None else "r70"
    threshold = r50_mm if kind == "r50" else r70_mm
    at = fig.as_of
    if threshold is None or start is None:
        step = state.tracker.advance(0, 0, at)
    else:
        ladder = Ladder.of((config.yellow_fraction * threshold, threshold), 0.0)
        compared = event_rain if config.compare == "event" else rt
        step = state.tracker.update(compared, ladder, at)
    new_state = DebrisFlowState(start, last_wet, event_rain, antecedent, step.tracker, shaking)
    figures = DebrisFlowFigures(
        as_of=at,
        in_event=start is not None,
        event_start=from_epoch(start) if start is not None else None,
        rainfall_mm_event=event_rain,
        antecedent_mm=antecedent,
        rt_mm=rt,
        rainfall_mm_1h=intensity,
        rti=intensity * rt,
        threshold_mm=threshold,
        threshold_kind=kind if threshold is not None else None,
        level=step.level,
        r70_mm=r70_mm,
        shaking=shaking if shaken and kind == "r50" else None,
    )
    return DebrisFlowUpdate(new_state, figures, step, started, ended)
