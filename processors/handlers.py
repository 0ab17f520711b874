"""What each agent does with one input, as pure functions of (state, input) -> outcome.

The agents in :mod:`processors.agents` only read the table, call one of these, write the
new state back, hand the points to the sink and the messages to the publisher. States
are the typed values of the changelog-backed Faust tables (:mod:`processors.states`):
:class:`~processors.states.AirDevice`, :class:`~processors.states.WaterDevice`,
:class:`~processors.states.SeismicDevice` (keyed by device id),
:class:`~processors.states.ShakingMark` (keyed by water device id: the strong shaking
whose R50 period ends last, read by :func:`handle_water` for the device),
:class:`~processors.states.TownshipState` (keyed by township code) and
:class:`~processors.states.QuakeState` (one key).

From strong shaking to debris flow: :func:`handle_quake` turns every earthquake update
whose estimated intensity in a township reaches the debris-flow shaking level (5-) into a
:class:`~processors.messages.StrongShakingNotice` per water device of that township (once
per earthquake, township and level); the worker sends them through Kafka, keyed by
device, to :func:`handle_shaking`, whose table :func:`handle_water` reads: that device's
rain is judged against R50 from the origin time for the configured period.

``open`` holds the last candidate of every (hazard, area) whose level is >= 1, sent
again by the worker's timer so the alert service does not expire it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.contracts.processing import (
    Observation,
    SeismicTick,
    StationStatus,
    StrongShakingNotice,
    TownshipReport,
    Trigger,
)
from civic_iot.contracts.readings import (
    POLLUTANT_FIELDS,
    AirPayload,
    Reading,
    SeismicPayload,
    WaterPayload,
    assemble,
)
from civic_iot.registry import Registry
from civic_iot.settings import InfluxSettings
from civic_iot.storage.points import Point
from civic_iot.storage.schema import windowed
from civic_iot.thresholds import Thresholds, ThresholdSet, thresholds_from
from civic_iot.timebounds import TimeBounds
from processors.candidates import DeviceLevel, township_candidate, update_hazard
from processors.detectors.air import (
    AirConfig,
    TownshipAggregate,
    TownshipLevel,
    update_air,
)
from processors.detectors.health import HealthConfig, HealthState, update_health
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.quake import (
    QuakeConfig,
    QuakeEvent,
    Township,
    to_alert_candidate,
    township_intensities,
)
from processors.detectors.seismic import PacketResult, SeismicConfig, process_packets
from processors.detectors.state import frozen
from processors.detectors.water import (
    DebrisFlowConfig,
    DebrisFlowState,
    FloodConfig,
    GaugeState,
    GaugeUpdate,
    RainConfig,
    RainState,
    RiverConfig,
    StrongShaking,
    mark_strong_shaking,
    strong_shaking,
    update_debris_flow,
    update_flood,
    update_rain,
    update_river,
)
from processors.guard import bound_clocks, bound_tick, not_ahead
from processors.points import (
    Where,
    air_quality_point,
    quake_points,
    rain_point,
    reading_points,
    seismic_station_point,
    sensor_health_point,
    strong_shaking_point,
    township_air_point,
    water_level_point,
    water_sensor,
)
from processors.states import (
    AirDevice,
    QuakeState,
    SeismicDevice,
    ShakingMark,
    TableValue,
    TownshipState,
    WaterDevice,
)

S = TypeVar("S", bound=TableValue)


@dataclass(frozen=True, slots=True)
class Detectors:
    """The detector configs in force for one township or device, built from what the
    thresholds file sets for it (:meth:`of`: the one place thresholds become configs)."""

    air: AirConfig
    flood: FloodConfig
    river: RiverConfig
    rain: RainConfig
    debris: DebrisFlowConfig
    seismic: SeismicConfig
    health: HealthConfig

    @classmethod
    def of(cls, t: ThresholdSet) -> Detectors:
        return cls(
            air=AirConfig(lines=t.air_quality),
            flood=FloodConfig(lines=t.flood),
            river=RiverConfig(lines=t.river),
            # The gauge keeps the daily totals the debris-flow rule discounts.
            rain=RainConfig(lines=t.rain, antecedent_days=t.debris_flow.antecedent_days),
            debris=t.debris_flow,
            # The P-wave filter is network-wide: the magnitude corrects for it.
            seismic=SeismicConfig(sta_lta=t.seismic, pd_highpass_hz=t.quake.pd_highpass_hz),
            health=HealthConfig(rules=t.health.rules()),
        )


@dataclass(frozen=True, slots=True)
class Context:
    """Everything the handlers need besides state and input; built once per worker."""

    buckets: InfluxSettings
    registry: Registry
    thresholds: Thresholds
    #: Detector configs: the defaults, and where a region or device overrides them.
    defaults: Detectors
    townships: Mapping[str, Detectors]
    devices: Mapping[str, Detectors]
    quake: QuakeConfig
    #: Seconds without a reading after which a device of a kind is silent.
    silent_after_s: Mapping[str, float]
    #: A seismic partition without a tick for this long (processing time, s) no longer
    #: holds the associator's clock back.
    quake_idle_s: float = 10.0
    #: Township code -> its registered air sensors, and its water devices' ids (counted
    #: once: a township is asked for every report).
    air_counts: Mapping[str, int] = field(default_factory=dict)
    water_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: How far ahead of the wall clock a stream time may be (processors.guard).
    bounds: TimeBounds = field(default_factory=TimeBounds)

    @classmethod
    def build(
        cls, buckets: InfluxSettings, registry: Registry, thresholds: Thresholds | None = None
    ) -> Context:
        """The context of a worker; ``thresholds`` default to the built-in defaults."""
        thr = thresholds if thresholds is not None else thresholds_from({}, registry)
        built: dict[int, Detectors] = {}

        def detectors(t: ThresholdSet) -> Detectors:
            # Townships without their own overrides share one set of configs.
            if id(t) not in built:
                built[id(t)] = Detectors.of(t)
            return built[id(t)]

        towns = tuple(Township(t.code, t.lat, t.lon) for t in registry.townships)
        return cls(
            buckets=buckets,
            registry=registry,
            thresholds=thr,
            defaults=detectors(thr.defaults),
            townships={code: detectors(t) for code, t in thr.townships.items()},
            devices={device: detectors(t) for device, t in thr.by_device.items()},
            quake=QuakeConfig(association=thr.defaults.quake, townships=towns),
            silent_after_s=thr.defaults.silence.by_kind(),
            air_counts=Counter(d.township for d in registry.devices if d.kind == "air"),
            water_ids=_group((d.township, d.id) for d in registry.devices if d.kind == "water"),
        )

    def for_township(self, code: str) -> Detectors:
        """The configs in force in a township."""
        return self.townships.get(code, self.defaults)

    def for_device(self, device_id: str, township: str) -> Detectors:
        """The configs in force for a device: its own overrides, else its township's."""
        found = self.devices.get(device_id)
        return found if found is not None else self.townships.get(township, self.defaults)

    def air_sensors_in(self, township: str) -> int | None:
        return self.air_counts.get(township) or None

    def shaking_min_intensity(self, township: str) -> str:
        """The CWA level from which an earthquake lowers a township's debris-flow line."""
        return self.for_township(township).debris.shaking_min_intensity

    def water_devices_in(self, township: str) -> list[str]:
        """Ids of the registry's water devices in a township (any may report rain)."""
        return list(self.water_ids.get(township, ()))


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return {k: tuple(v) for k, v in out.items()}


@frozen
class DeviceOutcome(Generic[S]):
    state: S
    points: list[Point]
    reports: list[TownshipReport]


def _last_seen(last: float | None, reading: Reading) -> float:
    t = reading.event_time.timestamp()
    return t if last is None else max(last, t)


def _health(
    last: float | None,
    state: HealthState,
    reading: Reading,
    values: Mapping[str, float],
    ctx: Context,
    kind: str,
    health: HealthConfig,
    where: Where,
) -> tuple[HealthState, list[Point]]:
    """Stuck and out-of-range checks, and the end of a silence (state-based, so a
    restarted worker still clears the ``silent`` issue it raised before); ``last`` is
    the device's last reading time before this one, epoch s."""
    t = reading.event_time.timestamp()
    points: list[Point] = []
    if last is not None and t - last > ctx.silent_after_s.get(kind, math.inf):
        p = sensor_health_point(
            where.device,
            where.township,
            "silent",
            active=False,
            detail=f"reading again after {t - last:.0f} s",
            at=reading.event_time,
            buckets=ctx.buckets,
        )
        points += [p] if p else []
    if values:
        upd = update_health(state, reading.device_id, reading.event_time, values, health)
        state = upd.state
        if upd.opened or upd.cleared:  # rarely: most readings change no issue
            for finding, active in [(f, True) for f in upd.opened] + [
                (f, False) for f in upd.cleared
            ]:
                p = sensor_health_point(
                    where.device,
                    where.township,
                    finding.issue,
                    active=active,
                    detail=f"{finding.quantity}: {finding.detail}",
                    at=reading.event_time,
                    buckets=ctx.buckets,
                )
                points += [p] if p else []
    return state, points


def handle_air(env: AirDevice, reading: Reading, ctx: Context) -> DeviceOutcome[AirDevice]:
    """Raw point, rolling means and AQI, health, and the township report."""
    data = reading.data
    assert isinstance(data, AirPayload), reading.reading_id
    values = {f: float(v) for f in POLLUTANT_FIELDS if (v := getattr(data, f)) is not None}
    township = reading.location.township
    det = ctx.for_device(reading.device_id, township)
    upd = update_air(env.air, reading.event_time, values, det.air)
    where = Where.of(reading)
    health, health_points = _health(
        env.last_seen, env.health, reading, values, ctx, "air", det.health, where
    )
    state = AirDevice(last_seen=_last_seen(env.last_seen, reading), health=health, air=upd.state)
    fig = upd.figures
    points = reading_points(reading, ctx.buckets)
    p = air_quality_point(where, fig, ctx.buckets)
    points += [p] if p else []
    points += health_points
    # Every field made by the detector (a level >= 0, an aware time): assembled, not
    # validated (the township agent validates the message it reads).
    report = assemble(
        TownshipReport,
        {
            "township": township,
            "hazard": "air_quality",
            "device": reading.device_id,
            "level": fig.level,
            "value": float(fig.aqi.aqi) if fig.aqi else None,
            "metric": "aqi",
            "threshold": None,
            "event_time": fig.as_of,
            "evidence": {},
        },
    )
    return DeviceOutcome(state, points, [report])


def handle_water(
    env: WaterDevice, reading: Reading, ctx: Context, shaking: StrongShaking | None = None
) -> DeviceOutcome[WaterDevice]:
    """Raw point; flood depth, river stage, rain and debris flow as the reading carries
    them; health; one township report per hazard.

    A flood or river gauge that has a rate of rise (or is still at rise level 1) also
    reports ``water_rise``: its rise level against its rise line (cm per 10 min). When
    a reading carries both a depth and a stage, the faster-rising gauge reports.

    ``shaking`` is the device's mark in the shaking table (:func:`handle_shaking`): that
    strong shaking is marked on the debris-flow state before the rain is judged, so R50
    applies within its period; the threshold in use, and the earthquake that lowered it,
    go into the stored figures and the report's evidence.
    """
    data = reading.data
    assert isinstance(data, WaterPayload), reading.reading_id
    dev = ctx.registry.get(reading.device_id)
    sensor = water_sensor(data, dev.sensor if dev else None)
    township = reading.location.township
    det = ctx.for_device(reading.device_id, township)
    where = Where.of(reading)
    values = {
        f: float(v)
        for f in ("water_level_m", "flood_depth_cm", "rainfall_mm")
        if (v := getattr(data, f)) is not None
    }
    health, health_points = _health(
        env.last_seen, env.health, reading, values, ctx, "water", det.health, where
    )
    gauge_states = {"flood": env.flood, "river": env.river}
    rain_state, debris_state = env.rain, env.debris
    points = reading_points(reading, ctx.buckets, sensor=sensor)
    reports: list[TownshipReport] = []

    def report(
        hazard: Any,
        level: int,
        value: float | None,
        metric: str,
        thr: float | None,
        at: datetime,
        evidence: dict[str, float | str] | None = None,
    ) -> None:
        reports.append(
            TownshipReport(
                township=township,
                hazard=hazard,
                device=reading.device_id,
                level=level,
                value=value,
                metric=metric,
                threshold=thr,
                event_time=at,
                evidence=evidence or {},
            )
        )

    gauges: list[tuple[str, GaugeUpdate]] = []
    if data.flood_depth_cm is not None:
        flood = env.flood or GaugeState()
        gauges.append(
            (
                "flood",
                update_flood(flood, reading.event_time, data.flood_depth_cm, det.flood),
            )
        )
    if data.water_level_m is not None:
        river = env.river or GaugeState()
        gauges.append(
            (
                "river",
                update_river(river, reading.event_time, data.water_level_m, det.river),
            )
        )
    for name, g in gauges:
        gauge_states[name] = g.state
        p = water_level_point(where, name, g.figures, ctx.buckets)
        points += [p] if p else []
        metric = "flood_depth_cm" if name == "flood" else "water_level_m"
        evidence: dict[str, float | str] = {}
        if g.figures.rise_cm_per_10min is not None:
            evidence["rise_cm_per_10min"] = round(g.figures.rise_cm_per_10min, 2)
        fig = g.figures
        report(name, fig.level, fig.value, metric, fig.threshold, fig.as_of, evidence)
    rising = [
        (name, g.figures)
        for name, g in gauges
        if g.figures.rise_cm_per_10min is not None or g.figures.rise_level > 0
    ]
    if rising:
        # A gauge without a rate yet (too few samples) says nothing about rising.
        name, fig = max(
            rising, key=lambda nf: (nf[1].rise_level, nf[1].rise_cm_per_10min or -math.inf)
        )
        rate = fig.rise_cm_per_10min
        line = fig.rise_threshold_cm_per_10min
        rise_ev: dict[str, float | str] = {
            "gauge": name,
            "flood_depth_cm" if name == "flood" else "water_level_m": fig.value,
            "gauge_level": float(fig.level),
        }
        if line is not None:
            rise_ev["rise_threshold_cm_per_10min"] = line
        report(
            "water_rise",
            fig.rise_level,
            round(rate, 2) if rate is not None else None,
            "rise_cm_per_10min",
            line if fig.rise_level > 0 else None,
            fig.as_of,
            rise_ev,
        )

    if data.rainfall_mm is not None:
        r = update_rain(
            env.rain or RainState.empty(det.rain),
            reading.event_time,
            float(data.rainfall_mm),
            det.rain,
        )
        debris = mark_strong_shaking(env.debris or DebrisFlowState(), shaking)
        d = update_debris_flow(debris, r, det.debris)
        rain_state, debris_state = r.state, d.state
        p = rain_point(where, r.figures, d.figures, ctx.buckets)
        points += [p] if p else []
        f = r.figures
        rain_ev: dict[str, float | str] = {
            windowed("rainfall_mm", "1h"): f.rainfall_mm_1h,
            windowed("rainfall_mm", "3h"): f.rainfall_mm_3h,
            windowed("rainfall_mm", "24h"): f.rainfall_mm_24h,
        }
        day = windowed("rainfall_mm", "24h")
        report("rain", f.level, f.rainfall_mm_24h, day, None, f.as_of, rain_ev)
        df = d.figures
        df_ev: dict[str, float | str] = {
            "rti": round(df.rti, 1),
            windowed("rainfall_mm", "1h"): df.rainfall_mm_1h,
        }
        if df.threshold_kind is not None and df.threshold_mm is not None:
            df_ev["debris_flow_threshold_kind"] = df.threshold_kind
            df_ev["debris_flow_threshold_mm"] = df.threshold_mm
        if df.r70_mm is not None:
            df_ev["r70_mm"] = df.r70_mm
        if df.shaking is not None:
            # Why the alert may come earlier than R70 would raise it.
            df_ev["r50_after_earthquake"] = df.shaking.event_id
            df_ev["r50_shaking_intensity"] = df.shaking.intensity
            df_ev["r50_until"] = datetime.fromtimestamp(df.shaking.until_s, UTC).isoformat(
                timespec="seconds"
            )
        report(
            "debris_flow",
            df.level,
            df.rainfall_mm_event,
            windowed("rainfall_mm", "event"),
            df.threshold_mm,
            df.as_of,
            df_ev,
        )
    points += health_points
    state = WaterDevice(
        last_seen=_last_seen(env.last_seen, reading),
        health=health,
        flood=gauge_states["flood"],
        river=gauge_states["river"],
        rain=rain_state,
        debris=debris_state,
    )
    return DeviceOutcome(state, points, reports)


@dataclass(frozen=True, slots=True)
class SeismicOutcome:
    """What a packet decides: the station's new state and what the associator needs.

    Its points (the packed raw waveform and the station's figures) are built when asked
    for (:attr:`points`), so that the worker sends the associator's ticks first: building
    them is about 40 % of deciding a packet, and storage is not on the warning path
    (:class:`~processors.agents.device.SeismicAgent`)."""

    state: SeismicDevice
    trigger: Trigger | None
    observation: Observation | None
    #: End of the packet (time of the sample after the last), epoch s.
    end_s: float
    #: Whether the station could trigger (the associator's constraints).
    status: StationStatus | None = None
    #: Builds the points: called by whoever stores them (each call builds them anew).
    build_points: Callable[[], list[Point]] = list

    @property
    def points(self) -> list[Point]:
        return self.build_points()


def handle_seismic(env: SeismicDevice, reading: Reading, ctx: Context) -> SeismicOutcome:
    """Raw samples, the station detector, and what the associator needs."""
    return handle_seismic_many([(env, reading)], ctx)[0]


def handle_seismic_many(
    packets: Sequence[tuple[SeismicDevice, Reading]], ctx: Context
) -> list[SeismicOutcome]:
    """:func:`handle_seismic` of many stations' packets, one per station (the detector
    runs their filters together, :func:`~processors.detectors.seismic.process_packets`):
    the same outcomes, in order."""
    work = []
    rows: list[NDArray[np.float64]] = []
    for env, reading in packets:
        data = reading.data
        assert isinstance(data, SeismicPayload), reading.reading_id
        # The components as rows, converted from the lists once: the detector reads
        # them as columns (samples as rows), the raw point packs them.
        comps = np.array((data.x_gal, data.y_gal, data.z_gal), dtype=np.float64)
        rows.append(comps)
        det = ctx.for_device(reading.device_id, reading.location.township)
        work.append(
            (env.station, comps.T, data.sample_rate_hz, reading.event_time.timestamp(), det.seismic)
        )
    results = process_packets(work)
    out = []
    for (env, reading), res, comps in zip(packets, results, rows, strict=True):
        data = reading.data
        assert isinstance(data, SeismicPayload)
        # No health checks on raw samples: the device's reading time only.
        state = SeismicDevice(last_seen=_last_seen(env.last_seen, reading), station=res.state)
        where = Where.of(reading)
        t0 = reading.event_time.timestamp()
        out.append(
            SeismicOutcome(
                state=state,
                trigger=res.trigger(where.device, where.lat, where.lon),
                observation=res.observation(where.device),
                end_s=t0 + len(data.x_gal) / data.sample_rate_hz,
                status=res.status(where.device, where.lat, where.lon),
                build_points=partial(_seismic_points, reading, comps, res, where, ctx.buckets),
            )
        )
    return out


def _seismic_points(
    reading: Reading,
    comps: NDArray[np.float64],
    res: PacketResult,
    where: Where,
    buckets: InfluxSettings,
) -> list[Point]:
    """A packet's points: its raw waveform (``comps``, the components as rows) and the
    station's figures from its detector result."""
    points = reading_points(reading, buckets, components=comps)
    p = seismic_station_point(where, res, reading.event_time_ns, buckets)
    return [*points, p] if p else points


@frozen
class Decision(Generic[S]):
    """New state, points, the candidates to publish now and, from the associator, the
    strong-shaking notices to send to the water devices."""

    state: S
    points: list[Point]
    candidates: list[AlertCandidate]
    notices: list[StrongShakingNotice] = field(default_factory=list)


def _remember(
    open_: Mapping[str, AlertCandidate], candidates: Iterable[AlertCandidate]
) -> dict[str, AlertCandidate]:
    """The open candidates after ``candidates``: level >= 1 kept by key, level 0 gone."""
    out = dict(open_)
    for c in candidates:
        if c.level > 0:
            out[c.key] = c
        else:
            out.pop(c.key, None)
    return out


def handle_township(
    env: TownshipState, report: TownshipReport, ctx: Context, detected_at: datetime
) -> Decision[TownshipState]:
    """Aggregate one device report into its township; a level change is a candidate."""
    town = _TownshipWork(env, ctx)
    air, candidates = town.add(report, detected_at)
    p = (
        None
        if air is None
        else township_air_point(report.township, air, report.event_time, ctx.buckets)
    )
    return Decision(town.state(), [p] if p else [], candidates)


class _TownshipWork:
    """One township's state while a batch of its reports is applied: the air sensors in
    one working copy (:class:`~processors.detectors.air.TownshipAggregate`), the water
    hazards' devices and levels, the open candidates; the state is made once, at the
    end (:meth:`state`). Private to the batch."""

    __slots__ = ("_air", "_ctx", "_env", "_levels", "_open", "_water")

    def __init__(self, env: TownshipState, ctx: Context) -> None:
        self._env = env
        self._ctx = ctx
        self._air: TownshipAggregate | None = None  # made at the first air report
        self._water: dict[str, dict[str, DeviceLevel]] | None = None  # copied at the first
        self._levels: dict[str, int] | None = None
        self._open: dict[str, AlertCandidate] | None = None

    def add(
        self, report: TownshipReport, detected_at: datetime
    ) -> tuple[TownshipLevel | None, list[AlertCandidate]]:
        """Apply one report: the township's air after an air report (None after a water
        one), and the candidates it makes."""
        ctx = self._ctx
        code = report.township
        town = ctx.registry.township(code)
        candidates: list[AlertCandidate] = []
        air_level: TownshipLevel | None = None
        if report.hazard == "air_quality":
            air = ctx.for_township(code).air
            aggregate = self._air
            if aggregate is None:
                aggregate = self._air = TownshipAggregate(
                    self._env.air, air, registered_sensors=ctx.air_sensors_in(code)
                )
            aqi = None if report.value is None else int(report.value)
            upd = aggregate.add(report.device, report.level, aqi, report.event_time)
            air_level = upd
            if upd.changed:
                line = air.ladder().threshold(upd.level)
                candidates.append(
                    township_candidate(
                        hazard="air_quality",
                        code=code,
                        township=town,
                        level=upd.level,
                        value=float(upd.aqi if upd.aqi is not None else (aqi or 0)),
                        metric="aqi",
                        threshold=line,
                        devices=upd.devices,
                        event_time=report.event_time,
                        detected_at=detected_at,
                        evidence={
                            "hotspot": "yes" if upd.hotspot else "no",
                            "sensors_agreeing": float(len(upd.devices)),
                        },
                    )
                )
        else:
            if self._water is None or self._levels is None:
                self._water, self._levels = dict(self._env.water), dict(self._env.levels)
            water, levels = self._water, self._levels
            h = update_hazard(water.get(report.hazard, {}), levels.get(report.hazard, 0), report)
            water[report.hazard] = h.devices
            levels[report.hazard] = h.level
            if h.changed:
                candidates.append(
                    township_candidate(
                        hazard=report.hazard,
                        code=code,
                        township=town,
                        level=h.level,
                        value=h.value,
                        metric=h.metric,
                        threshold=h.threshold,
                        devices=h.at_level,
                        event_time=report.event_time,
                        detected_at=detected_at,
                        evidence=report.evidence,
                    )
                )
        if candidates:
            self._open = _remember(self._env.open if self._open is None else self._open, candidates)
        return air_level, candidates

    def state(self) -> TownshipState:
        """The township's state after the reports applied so far."""
        env = self._env
        return TownshipState(
            air=env.air if self._air is None else self._air.state(),
            water=env.water if self._water is None else dict(self._water),
            levels=env.levels if self._levels is None else dict(self._levels),
            open=dict(env.open) if self._open is None else dict(self._open),
        )


def handle_township_reports(
    env: TownshipState, reports: Sequence[TownshipReport], ctx: Context, detected_at: datetime
) -> Decision[TownshipState]:
    """A batch's reports for one township, in order (:func:`handle_township` each): every
    level change is a candidate; of ``township_air`` points at one time only the last is
    kept (InfluxDB would keep only that one of a series at one time anyway)."""
    town = _TownshipWork(env, ctx)
    candidates: list[AlertCandidate] = []
    # Event time -> the township's air then (its point is made once, for the last).
    air: dict[datetime, tuple[str, TownshipLevel]] = {}
    for report in reports:
        upd, found = town.add(report, detected_at)
        candidates += found
        if upd is not None:
            air.pop(report.event_time, None)  # the newest goes last, as it was written
            air[report.event_time] = (report.township, upd)
    points = [
        p
        for at, (code, upd) in air.items()
        if (p := township_air_point(code, upd, at, ctx.buckets)) is not None
    ]
    return Decision(town.state(), points, candidates)


def handle_quake(
    env: QuakeState, ticks: Iterable[SeismicTick], ctx: Context, detected_at: datetime
) -> Decision[QuakeState]:
    """One associator step for a batch of ticks: events declared, changed or closed
    become candidates (``quake-<event id>``) and ``quake_event``/``quake_cell`` points."""
    wall = detected_at.timestamp()
    # No tick (nor a state written before the guard) moves a clock past wall + skew.
    ticks = [bound_tick(t, wall, ctx.bounds) for t in ticks]
    clocks = bound_clocks(env.clocks, wall, ctx.bounds)
    for t in ticks:
        src = str(t.partition)
        clocks[src] = (max(clocks.get(src, (t.now_s, 0.0))[0], t.now_s), wall)
    clock = _watermark(clocks, not_ahead(env.clock, wall, ctx.bounds), wall, ctx.quake_idle_s)
    out = env.assoc.step(
        now_s=clock,
        triggers=[t for k in ticks for t in k.triggers],
        observations=[o for k in ticks for o in k.observations],
        stations=[s for k in ticks for s in k.stations],
        config=ctx.quake,
    )
    points: list[Point] = []
    candidates: list[AlertCandidate] = []
    notices: list[StrongShakingNotice] = []
    shaken = {k: dict(v) for k, v in env.shaken.items()}
    for ev in out.updates:
        cand = to_alert_candidate(ev, detected_at=detected_at, config=ctx.quake)
        candidates.append(cand)
        points += quake_points(ev, ctx.buckets)
        found, shaken[ev.event_id] = strong_shaking_townships(
            ev, shaken.get(ev.event_id, {}), ctx.shaking_min_intensity
        )
        notices += [
            StrongShakingNotice(
                device=device,
                township=town,
                event_id=ev.event_id,
                intensity=level,
                origin_time=datetime.fromtimestamp(ev.origin_s, UTC),
            )
            for town, level in found.items()
            for device in ctx.water_devices_in(town)
        ]
        if ev.closed:
            shaken.pop(ev.event_id)  # its last update: nothing more to notify
    state = QuakeState(
        assoc=out.associator,
        clock=clock,
        clocks=clocks,
        # Events that never closed (the network went quiet) must not grow the state forever.
        shaken=dict(list(shaken.items())[-SHAKEN_MEMORY:]),
        open=_remember(env.open, candidates),
    )
    return Decision(state, points, candidates, notices)


#: Earthquakes whose notified townships the quake state remembers (open ones; a closed
#: event is forgotten at its last update). Bounds the state if events never close.
SHAKEN_MEMORY = 16


def strong_shaking_townships(
    event: QuakeEvent, notified: Mapping[str, int], min_level: str | Callable[[str], str]
) -> tuple[dict[str, str], dict[str, int]]:
    """Townships of an earthquake update to notify of strong shaking, and what is then
    notified.

    A township is notified when its estimated intensity (:func:`township_intensities`)
    reaches ``min_level`` (one level, or the township code -> its level: the
    ``debris_flow.shaking_min_intensity`` in force there) and is higher than what was
    notified for it before in this earthquake (``notified``: township code -> intensity
    ordinal). A later, lower estimate notifies nothing and lifts nothing: the R50 period
    runs its course.
    """
    out = dict(notified)
    found: dict[str, str] = {}
    for town, level in township_intensities(event).items():
        rank = intensity_ordinal(level)
        floor = intensity_ordinal(min_level if isinstance(min_level, str) else min_level(town))
        if rank >= floor and rank > out.get(town, -1):
            found[town] = level
            out[town] = rank
    return found, out


def handle_shaking(
    env: ShakingMark, notice: StrongShakingNotice, ctx: Context
) -> Decision[ShakingMark]:
    """Remember a strong shaking for a water device (the one whose R50 period ends last,
    see :func:`~processors.detectors.water.mark_strong_shaking`) and store a
    ``strong_shaking`` point for it."""
    debris = ctx.for_device(notice.device, notice.township).debris
    mark = strong_shaking(notice.event_id, notice.intensity, notice.origin_time.timestamp(), debris)
    if mark is None:  # below this worker's shaking level: not ours to mark
        return Decision(env, [], [])
    merged = mark_strong_shaking(DebrisFlowState(shaking=env.shaking), mark).shaking
    assert merged is not None
    p = strong_shaking_point(notice.device, notice.township, mark, ctx.buckets)
    return Decision(ShakingMark(shaking=merged), [p] if p else [], [])


def _watermark(
    clocks: Mapping[str, tuple[float, float]], previous: float, wall_s: float, idle_s: float
) -> float:
    """The associator's stream clock: the slowest source partition's, so that one
    partition racing ahead through a backlog cannot close an event before the others'
    triggers for it arrive. ``clocks`` maps a partition to (stream time of its newest
    packet, processing time of its last tick), epoch s; a partition silent for
    ``idle_s`` of processing time (its stations down) no longer holds the clock back.
    Never goes backwards."""
    live = [stream for stream, seen in clocks.values() if seen >= wall_s - idle_s]
    return max(previous, min(live)) if live else previous


def open_candidates(state: TownshipState | QuakeState | None) -> list[AlertCandidate]:
    """Every open (level >= 1) candidate in a state, by key."""
    if state is None:
        return []
    return [c for _, c in sorted(state.open.items())]
