"""What each agent does with one input, as pure functions of (state, input) -> outcome.

The agents in :mod:`processors.app` only read the table, call one of these, write the
new state back, hand the points to the sink and the messages to the publisher. States
are JSON-able dicts (the values of the plain changelog-backed Faust tables):

* device tables (keyed by device id): ``{"last_seen": epoch s, "health": ...,
  "air": ...}`` / ``{"flood" | "river" | "rain" | "debris": ...}`` / ``{"station": ...}``;
* township table (keyed by township code): ``{"air": TownshipAirState, "water":
  {hazard: {device: report}}, "levels": {hazard: level}, "open": {key: candidate JSON}}``;
* quake table (one key): ``{"assoc": Associator, "clock": epoch s, "open": {...}}``.

``open`` holds the last candidate of every (hazard, area) whose level is >= 1, sent
again by the worker's timer so the alert service does not expire it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from civic_iot.events import AlertCandidate
from civic_iot.registry import Registry
from civic_iot.settings import InfluxSettings
from ingest.models import POLLUTANT_FIELDS, AirPayload, Reading, SeismicPayload, WaterPayload
from processors.candidates import township_candidate, update_hazard
from processors.detectors.air import (
    AirConfig,
    AirState,
    TownshipAirState,
    update_air,
    update_township,
)
from processors.detectors.health import HealthConfig, HealthState, update_health
from processors.detectors.quake import (
    Associator,
    QuakeConfig,
    StationObservation,
    StationTrigger,
    Township,
    to_alert_candidate,
)
from processors.detectors.seismic import SeismicConfig, StationState, process_packet
from processors.detectors.water import (
    DebrisFlowConfig,
    DebrisFlowState,
    FloodConfig,
    GaugeState,
    GaugeUpdate,
    RainConfig,
    RainState,
    RiverConfig,
    update_debris_flow,
    update_flood,
    update_rain,
    update_river,
)
from processors.messages import Observation, SeismicTick, TownshipReport, Trigger
from processors.points import (
    Point,
    Where,
    air_quality_point,
    quake_points,
    rain_point,
    reading_points,
    seismic_station_point,
    sensor_health_point,
    township_air_point,
    water_level_point,
    water_sensor,
)

State = dict[str, Any]

#: Default seconds without a reading after which a device of a kind counts as silent.
SILENT_AFTER_S: Mapping[str, float] = {"air": 1800.0, "water": 1800.0, "seismic": 60.0}


@dataclass(frozen=True, slots=True)
class Context:
    """Everything the handlers need besides state and input; built once per worker."""

    buckets: InfluxSettings
    registry: Registry
    air: AirConfig = field(default_factory=AirConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    flood: FloodConfig = field(default_factory=FloodConfig)
    river: RiverConfig = field(default_factory=RiverConfig)
    rain: RainConfig = field(default_factory=RainConfig)
    debris: DebrisFlowConfig = field(default_factory=DebrisFlowConfig)
    seismic: SeismicConfig = field(default_factory=SeismicConfig)
    quake: QuakeConfig = field(default_factory=QuakeConfig)
    #: A seismic partition without a tick for this long (processing time, s) no longer
    #: holds the associator's clock back.
    quake_idle_s: float = 10.0
    #: Seconds without a reading after which a device of a kind is silent.
    silent_after_s: Mapping[str, float] = field(default_factory=lambda: dict(SILENT_AFTER_S))

    @classmethod
    def build(
        cls,
        buckets: InfluxSettings,
        registry: Registry,
        silent_after_s: Mapping[str, float] | None = None,
    ) -> Context:
        towns = tuple(Township(t.code, t.lat, t.lon) for t in registry.townships)
        return cls(
            buckets=buckets,
            registry=registry,
            quake=QuakeConfig(townships=towns),
            silent_after_s=dict(silent_after_s or SILENT_AFTER_S),
        )

    def air_sensors_in(self, township: str) -> int | None:
        n = sum(1 for d in self.registry.devices if d.kind == "air" and d.township == township)
        return n or None


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    state: State
    points: list[Point]
    reports: list[TownshipReport]


def _thresholds(ctx: Context, device_id: str) -> Mapping[str, float] | None:
    dev = ctx.registry.get(device_id)
    return dev.thresholds if dev else None


def _health(
    env: State, reading: Reading, values: Mapping[str, float], ctx: Context, kind: str
) -> tuple[State, list[Point]]:
    """Stuck and out-of-range checks, and the end of a silence (state-based, so a
    restarted worker still clears the ``silent`` issue it raised before)."""
    where = Where.of(reading)
    t = reading.event_time.timestamp()
    points: list[Point | None] = []
    last = env.get("last_seen")
    if last is not None and t - float(last) > ctx.silent_after_s.get(kind, math.inf):
        points.append(
            sensor_health_point(
                where.device,
                where.township,
                "silent",
                active=False,
                detail=f"reading again after {t - float(last):.0f} s",
                at=reading.event_time,
                buckets=ctx.buckets,
            )
        )
    out = dict(env)
    out["last_seen"] = t if last is None else max(float(last), t)
    if values:
        upd = update_health(
            HealthState.from_dict(env.get("health", {})),
            reading.device_id,
            reading.event_time,
            values,
            ctx.health,
        )
        out["health"] = upd.state.to_dict()
        for finding, active in [(f, True) for f in upd.opened] + [(f, False) for f in upd.cleared]:
            points.append(
                sensor_health_point(
                    where.device,
                    where.township,
                    finding.issue,
                    active=active,
                    detail=f"{finding.quantity}: {finding.detail}",
                    at=reading.event_time,
                    buckets=ctx.buckets,
                )
            )
    return out, [p for p in points if p is not None]


def handle_air(env: State, reading: Reading, ctx: Context) -> DeviceOutcome:
    """Raw point, rolling means and AQI, health, and the township report."""
    data = reading.data
    assert isinstance(data, AirPayload), reading.reading_id
    values = {f: float(v) for f in POLLUTANT_FIELDS if (v := getattr(data, f)) is not None}
    township = reading.location.township
    upd = update_air(
        AirState.from_dict(env.get("air", {})),
        reading.event_time,
        values,
        ctx.air,
        township=township,
        thresholds=_thresholds(ctx, reading.device_id),
    )
    state, health_points = _health(env, reading, values, ctx, "air")
    state["air"] = upd.state.to_dict()
    fig = upd.figures
    points = reading_points(reading, ctx.buckets)
    p = air_quality_point(Where.of(reading), fig, ctx.buckets)
    points += [p] if p else []
    points += health_points
    report = TownshipReport(
        township=township,
        hazard="air_quality",
        device=reading.device_id,
        level=fig.level,
        value=float(fig.aqi.aqi) if fig.aqi else None,
        metric="aqi",
        event_time=fig.as_of,
    )
    return DeviceOutcome(state, points, [report])


def handle_water(env: State, reading: Reading, ctx: Context) -> DeviceOutcome:
    """Raw point; flood depth, river stage, rain and debris flow as the reading carries
    them; health; one township report per hazard."""
    data = reading.data
    assert isinstance(data, WaterPayload), reading.reading_id
    dev = ctx.registry.get(reading.device_id)
    sensor = water_sensor(data, dev.sensor if dev else None)
    township = reading.location.township
    thresholds = dev.thresholds if dev else None
    where = Where.of(reading)
    values = {
        f: float(v)
        for f in ("water_level_m", "flood_depth_cm", "rainfall_mm")
        if (v := getattr(data, f)) is not None
    }
    state, health_points = _health(env, reading, values, ctx, "water")
    points = reading_points(reading, ctx.buckets, sensor=sensor)
    reports: list[TownshipReport] = []

    def report(
        hazard: Any,
        level: int,
        value: float,
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
        flood = GaugeState.from_dict(env.get("flood", {}))
        gauges.append(
            (
                "flood",
                update_flood(
                    flood,
                    reading.event_time,
                    data.flood_depth_cm,
                    ctx.flood,
                    township=township,
                    thresholds=thresholds,
                ),
            )
        )
    if data.water_level_m is not None:
        river = GaugeState.from_dict(env.get("river", {}))
        gauges.append(
            (
                "river",
                update_river(
                    river,
                    reading.event_time,
                    data.water_level_m,
                    ctx.river,
                    township=township,
                    thresholds=thresholds,
                ),
            )
        )
    for name, g in gauges:
        state[name] = g.state.to_dict()
        p = water_level_point(where, name, g.figures, ctx.buckets)
        points += [p] if p else []
        metric = "flood_depth_cm" if name == "flood" else "water_level_m"
        evidence: dict[str, float | str] = {}
        if g.figures.rise_cm_per_10min is not None:
            evidence["rise_cm_per_10min"] = round(g.figures.rise_cm_per_10min, 2)
        fig = g.figures
        report(name, fig.level, fig.value, metric, fig.threshold, fig.as_of, evidence)

    if data.rainfall_mm is not None:
        rain_state = (
            RainState.from_dict(env["rain"]) if "rain" in env else RainState.empty(ctx.rain)
        )
        r = update_rain(rain_state, reading.event_time, float(data.rainfall_mm), ctx.rain)
        town = ctx.registry.township(township)
        d = update_debris_flow(
            DebrisFlowState.from_dict(env.get("debris", {})),
            r,
            ctx.debris,
            r70_mm=town.debris_flow_r70_mm if town else None,
        )
        state["rain"] = r.state.to_dict()
        state["debris"] = d.state.to_dict()
        p = rain_point(where, r.figures, d.figures, ctx.buckets)
        points += [p] if p else []
        f = r.figures
        rain_ev: dict[str, float | str] = {
            "rain_1h_mm": f.rain_1h_mm,
            "rain_3h_mm": f.rain_3h_mm,
            "rain_24h_mm": f.rain_24h_mm,
        }
        report("rain", f.level, f.rain_24h_mm, "rain_24h_mm", None, f.as_of, rain_ev)
        df = d.figures
        df_ev: dict[str, float | str] = {
            "rti": round(df.rti, 1),
            "intensity_mm_h": df.intensity_mm_h,
        }
        report(
            "debris_flow",
            df.level,
            df.event_rain_mm,
            "event_rain_mm",
            df.threshold_mm,
            df.as_of,
            df_ev,
        )
    points += health_points
    return DeviceOutcome(state, points, reports)


@dataclass(frozen=True, slots=True)
class SeismicOutcome:
    state: State
    points: list[Point]
    trigger: Trigger | None
    observation: Observation | None
    #: End of the packet (time of the sample after the last), epoch s.
    end_s: float


def handle_seismic(env: State, reading: Reading, ctx: Context) -> SeismicOutcome:
    """Raw samples, the station detector, and what the associator needs."""
    data = reading.data
    assert isinstance(data, SeismicPayload), reading.reading_id
    samples = np.column_stack(
        (np.asarray(data.x_gal), np.asarray(data.y_gal), np.asarray(data.z_gal))
    )
    t0 = reading.event_time.timestamp()
    res = process_packet(
        StationState.from_dict(env.get("station", {})),
        samples,
        data.sample_rate_hz,
        t0,
        ctx.seismic,
    )
    state, _ = _health(env, reading, {}, ctx, "seismic")
    state["station"] = res.state.to_dict()
    where = Where.of(reading)
    points = reading_points(reading, ctx.buckets)
    p = seismic_station_point(where, res, reading.event_time_ns, ctx.buckets)
    points += [p] if p else []
    trig = StationTrigger.from_packet(where.device, where.lat, where.lon, res)
    obs = StationObservation.from_packet(where.device, res)
    pd_snr = obs.pd_snr if obs and obs.pd_snr is not None and math.isfinite(obs.pd_snr) else None
    return SeismicOutcome(
        state=state,
        points=points,
        trigger=Trigger(
            station_id=trig.station_id, lat=trig.lat, lon=trig.lon, p_time_s=trig.p_time_s
        )
        if trig
        else None,
        observation=Observation(
            station_id=obs.station_id,
            pga_gal=obs.pga_gal,
            pgv_cms=obs.pgv_cms,
            pd_cm=obs.pd_cm,
            pd_snr=pd_snr,
        )
        if obs
        else None,
        end_s=t0 + len(data.x_gal) / data.sample_rate_hz,
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """New state, points, and the candidates to publish now."""

    state: State
    points: list[Point]
    candidates: list[AlertCandidate]


def _remember(state: State, candidate: AlertCandidate) -> None:
    open_ = dict(state.get("open", {}))
    if candidate.level > 0:
        open_[candidate.key] = candidate.model_dump_json()
    else:
        open_.pop(candidate.key, None)
    state["open"] = open_


def handle_township(
    env: State, report: TownshipReport, ctx: Context, detected_at: datetime
) -> Decision:
    """Aggregate one device report into its township; a level change is a candidate."""
    state = dict(env)
    code = report.township
    town = ctx.registry.township(code)
    points: list[Point] = []
    candidates: list[AlertCandidate] = []
    if report.hazard == "air_quality":
        aqi = None if report.value is None else int(report.value)
        upd = update_township(
            TownshipAirState.from_dict(env.get("air", {})),
            report.device,
            report.level,
            aqi,
            report.event_time,
            ctx.air,
            registered_sensors=ctx.air_sensors_in(code),
        )
        state["air"] = upd.state.to_dict()
        p = township_air_point(code, upd, report.event_time, ctx.buckets)
        points += [p] if p else []
        if upd.changed:
            line = ctx.air.ladder(code).threshold(upd.level)
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
        water = {k: dict(v) for k, v in env.get("water", {}).items()}
        levels = dict(env.get("levels", {}))
        h = update_hazard(water.get(report.hazard, {}), int(levels.get(report.hazard, 0)), report)
        water[report.hazard] = h.devices
        levels[report.hazard] = h.level
        state["water"], state["levels"] = water, levels
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
    for c in candidates:
        _remember(state, c)
    return Decision(state, points, candidates)


def handle_quake(
    env: State, ticks: Iterable[SeismicTick], ctx: Context, detected_at: datetime
) -> Decision:
    """One associator step for a batch of ticks: events declared, changed or closed
    become candidates (``quake-<event id>``) and ``quake_event``/``quake_cell`` points."""
    ticks = list(ticks)
    assoc = Associator.from_dict(env["assoc"]) if "assoc" in env else Associator()
    wall = detected_at.timestamp()
    clocks = {str(k): (float(v[0]), float(v[1])) for k, v in env.get("clocks", {}).items()}
    for t in ticks:
        src = str(t.partition)
        clocks[src] = (max(clocks.get(src, (t.now_s, 0.0))[0], t.now_s), wall)
    clock = _watermark(clocks, float(env.get("clock") or 0.0), wall, ctx.quake_idle_s)
    triggers = [
        StationTrigger(t.station_id, t.lat, t.lon, t.p_time_s) for k in ticks for t in k.triggers
    ]
    observations = [
        StationObservation(o.station_id, o.pga_gal, o.pgv_cms, o.pd_cm, o.pd_snr)
        for k in ticks
        for o in k.observations
    ]
    out = assoc.step(now_s=clock, triggers=triggers, observations=observations, config=ctx.quake)
    state: State = dict(env)
    state["assoc"] = out.associator.to_dict()
    state["clock"] = clock
    state["clocks"] = {k: list(v) for k, v in clocks.items()}
    points: list[Point] = []
    candidates: list[AlertCandidate] = []
    for ev in out.updates:
        cand = to_alert_candidate(ev, detected_at=detected_at, config=ctx.quake)
        candidates.append(cand)
        points += quake_points(ev, ctx.buckets)
    for c in candidates:
        _remember(state, c)
    return Decision(state, points, candidates)


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


def open_candidates(state: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(key, candidate JSON) of every open (level >= 1) candidate in a state."""
    if not state:
        return []
    return sorted(state.get("open", {}).items())
