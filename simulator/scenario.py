"""Scenarios as data, and the pure engine that turns one into a stream of device messages.

A scenario (``simulator/scenarios/*.yaml``) is a list of *phases*. Each phase lasts some
scenario time and is compressed by its own ``speed`` (scenario seconds per wall second):
hours of a pollution episode pass in a minute while an earthquake plays in real time. The
phases follow each other in event time; ``events`` inside a phase are timed from the
phase's start. The scenario also states what it should cause (``expect``): alerts by hazard
and township, health findings, and how many messages ingest or the broker must refuse.

:func:`generate` is pure and deterministic: the same scenario, registry, start time and seed
always give the same messages, byte for byte. Nothing here reads a clock or does I/O; the
caller chooses ``start`` (see :func:`aligned_start`) and :mod:`simulator.publisher` sends.

Baseline readings run for every device all the time (air every 1-5 min of scenario time,
water every 1-10 min, per device, with a little jitter); seismic stations send one packet a
second at ``sample_rate_hz`` but only during phases marked ``seismic: true`` (a day of
100 Hz packets from every station would drown the demo and adds nothing).

Durations in the YAML are seconds or text like ``90s``, ``15m``, ``4h``, ``1h30m``.
"""

from __future__ import annotations

import json
import math
import random
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from civic_iot.contracts.alerts import Hazard
from civic_iot.contracts.deadletter import ReasonCode
from civic_iot.registry import Device, Registry
from civic_iot.thresholds import Thresholds
from simulator.waveforms import SimQuake, SimStation, Spike, synthesize_packets

__all__ = [
    "NORMAL_RIVER_DEPTH_M",
    "TAIWAN",
    "Envelope",
    "Expectations",
    "ExpectedAlert",
    "GarbageVariant",
    "Phase",
    "Scenario",
    "SimMessage",
    "aligned_start",
    "generate",
    "load_scenario",
    "scenario_names",
]

#: Normal river depth above a gauge's datum (``Device.elevation_m``), m.
NORMAL_RIVER_DEPTH_M = 1.2
#: Devices report local time with an offset, as field loggers in Taiwan do.
TAIWAN = timezone(timedelta(hours=8))
#: Seismic packet length, s.
PACKET_S = 1.0
_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


def parse_duration(v: object) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"4h"``, ``"1h30m"`` -> seconds."""
    if isinstance(v, bool):
        msg = f"duration {v!r}: expected seconds or text like '15m'"
        raise ValueError(msg)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        m = _DURATION.match(v)
        if m and any(m.groups()):
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            return h * 3600 + mi * 60 + s
    msg = f"duration {v!r}: expected seconds or text like '90s', '15m', '4h', '1h30m'"
    raise ValueError(msg)


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Envelope(_Frozen):
    """A smooth rise, a plateau and a smooth fall, all in scenario seconds from the phase
    start; :meth:`at` is 0 outside and 1 on the plateau."""

    start: Seconds = 0.0
    rise: Seconds = 0.0
    hold: Seconds = 0.0
    fall: Seconds = 0.0

    @property
    def end(self) -> float:
        return self.start + self.rise + self.hold + self.fall

    def at(self, t: float) -> float:
        """Envelope value in [0, 1] at phase time ``t`` (s)."""
        x = t - self.start
        if x < 0 or x >= self.rise + self.hold + self.fall:
            return 0.0
        if x < self.rise:
            return math.sin(0.5 * math.pi * x / self.rise) ** 2
        x -= self.rise
        if x <= self.hold:
            return 1.0
        x -= self.hold
        return math.cos(0.5 * math.pi * x / self.fall) ** 2 if self.fall else 0.0


class PollutionEvent(Envelope):
    """PM2.5 in the listed townships rises to ``townships[code]`` (ug/m3), PM10 with it."""

    type: Literal["pollution"]
    townships: dict[str, float]


class RainEvent(Envelope):
    """Rain rate at the peak per township (mm/h); every other township gets
    ``background_mm_h`` (mm/h) with the same timing."""

    type: Literal["rain"]
    townships: dict[str, float]
    background_mm_h: float = Field(0.0, ge=0)


class RiverEvent(Envelope):
    """River gauges in ``townships`` peak ``margin_m`` (m) above their own warning level
    ``townships[code]`` (``l3``, ``l2`` or ``l1``); other gauges rise by
    ``background_rise_m`` (m)."""

    type: Literal["river"]
    townships: dict[str, Literal["l3", "l2", "l1"]]
    margin_m: float = 0.3
    background_rise_m: float = Field(0.5, ge=0)


class FloodEvent(Envelope):
    """Street/underpass water depth at the peak per township, cm."""

    type: Literal["flood"]
    townships: dict[str, float]


class QuakeEvent(_Frozen):
    """An earthquake: origin ``at`` (phase time), epicentre (degrees), depth (km)."""

    type: Literal["earthquake"]
    at: Seconds
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    depth_km: float = Field(ge=0)
    magnitude: float = Field(ge=0, le=9.5)


class SpikeEvent(_Frozen):
    """A human-made burst on one seismic station: peak ``amplitude_gal`` (gal) for
    ``duration_s`` (s)."""

    type: Literal["spike"]
    device: str
    at: Seconds
    amplitude_gal: float = Field(150.0, gt=0)
    duration_s: float = Field(0.4, gt=0)


class StuckFault(_Frozen):
    """The device repeats its first reading of the window, unchanged, for ``duration``."""

    type: Literal["stuck"]
    device: str
    start: Seconds
    duration: Seconds


class SilentFault(_Frozen):
    """The device sends nothing for ``duration``."""

    type: Literal["silent"]
    device: str
    start: Seconds
    duration: Seconds


GarbageVariant = Literal[
    "not_json",
    "out_of_range",
    "wrong_schema",
    "wrong_kind",
    "bad_topic",
    "unsupported_version",
    "future_timestamp",
    "oversize",
    "unknown_device",
    "foreign_topic",
]

#: What ingest answers to each variant (``None``: the broker keeps it out first).
GARBAGE_REASON: Mapping[GarbageVariant, ReasonCode] = {
    "not_json": "not_json",
    "out_of_range": "out_of_range",
    "wrong_schema": "schema",
    "wrong_kind": "wrong_kind",
    "bad_topic": "bad_topic",
    "unsupported_version": "unsupported_version",
    "future_timestamp": "future_timestamp",
    "oversize": "oversize",
    # Mosquitto refuses the connection (no credentials); ingest would say unknown_device.
    "unknown_device": "unknown_device",
}
#: Variants the broker refuses (no credentials, or the ACL forbids the topic).
BROKER_DENIED: frozenset[GarbageVariant] = frozenset({"unknown_device", "foreign_topic"})


class GarbageFault(_Frozen):
    """``count`` bad messages from ``device`` starting ``at``, ``every`` apart.

    ``unknown_device``: ``device`` is an id that is not registered. ``foreign_topic``:
    ``device`` publishes on ``target``'s topic (a valid payload for the target's kind).
    """

    type: Literal["garbage"]
    variant: GarbageVariant
    device: str
    at: Seconds
    count: int = Field(1, ge=1)
    every: Seconds = 60.0
    target: str | None = None

    @model_validator(mode="after")
    def _target(self) -> GarbageFault:
        if (self.variant == "foreign_topic") != (self.target is not None):
            msg = "garbage: `target` is required for foreign_topic and only for it"
            raise ValueError(msg)
        return self


Event = Annotated[
    PollutionEvent
    | RainEvent
    | RiverEvent
    | FloodEvent
    | QuakeEvent
    | SpikeEvent
    | StuckFault
    | SilentFault
    | GarbageFault,
    Field(discriminator="type"),
]


class Phase(_Frozen):
    """A stretch of scenario time with its own compression.

    Attributes:
        name: label for progress output.
        duration: scenario seconds.
        speed: scenario seconds per wall second at ``--speed 1`` (>= 1 compresses).
        seismic: whether seismic stations stream packets during this phase.
        events: hazards and faults, timed from the phase start.
    """

    name: str
    duration: Seconds
    speed: float = Field(1.0, gt=0)
    seismic: bool = False
    events: tuple[Event, ...] = ()


class ExpectedAlert(_Frozen):
    """An alert the scenario must (or, under ``no_alerts``, must not) cause.

    ``townships``: township codes the alert must cover (empty: any). ``count``: exact
    number of distinct alerts for the hazard (e.g. one quake event), if stated.
    ``devices``: devices whose readings alone must not raise it (``no_alerts``).
    """

    hazard: Hazard
    townships: tuple[str, ...] = ()
    count: int | None = None
    devices: tuple[str, ...] = ()
    note: str = ""


class ExpectedHealth(_Frozen):
    """A health finding the scenario must cause."""

    device: str
    issue: Literal["stuck", "silent", "out_of_range"]


class Expectations(_Frozen):
    """What a scenario should cause, for tests and the demo summary.

    ``refused``: ingest refusals by reason code (messages that reach ingest);
    ``broker_denied``: messages Mosquitto refuses (unknown credentials, foreign topic).
    """

    alerts: tuple[ExpectedAlert, ...] = ()
    no_alerts: tuple[ExpectedAlert, ...] = ()
    health: tuple[ExpectedHealth, ...] = ()
    refused: dict[ReasonCode, int] = Field(default_factory=dict)
    broker_denied: int = 0


class Scenario(_Frozen):
    """A scenario file. Intervals are scenario seconds ``[low, high]`` per device."""

    name: str
    description: str = ""
    seed: int = 1
    #: Seismic samples per second (<= 100); 20 keeps the demo's load sane.
    sample_rate_hz: float = Field(20.0, gt=0, le=100)
    air_interval_s: tuple[Seconds, Seconds] = (60.0, 300.0)
    water_interval_s: tuple[Seconds, Seconds] = (60.0, 600.0)
    phases: tuple[Phase, ...] = Field(min_length=1)
    expect: Expectations = Expectations()

    @model_validator(mode="after")
    def _intervals(self) -> Scenario:
        for lo, hi in (self.air_interval_s, self.water_interval_s):
            if not 0 < lo <= hi:
                msg = f"scenario {self.name}: report intervals must be 0 < low <= high"
                raise ValueError(msg)
        return self

    @property
    def duration_s(self) -> float:
        """Total scenario time, s."""
        return sum(p.duration for p in self.phases)

    def phase_starts(self) -> list[float]:
        """Scenario time at which each phase begins, s."""
        out, t = [], 0.0
        for p in self.phases:
            out.append(t)
            t += p.duration
        return out

    def wall_offset(self, t: float, speed: float = 1.0) -> float:
        """Wall seconds from the run's start until scenario time ``t`` (s) comes."""
        wall, start = 0.0, 0.0
        for p in self.phases:
            if t <= start + p.duration or p is self.phases[-1]:
                return (wall + (t - start) / p.speed) / speed
            wall += p.duration / p.speed
            start += p.duration
        return wall / speed  # pragma: no cover - the loop always returns

    def scenario_time(self, wall_s: float, speed: float = 1.0) -> float:
        """The inverse of :meth:`wall_offset`: scenario seconds reached after ``wall_s``."""
        w = wall_s * speed
        start = 0.0
        for p in self.phases:
            span = p.duration / p.speed
            if w <= span or p is self.phases[-1]:
                return start + w * p.speed
            w -= span
            start += p.duration
        return start  # pragma: no cover

    def wall_duration_s(self, speed: float = 1.0) -> float:
        """Wall seconds the whole scenario takes at ``speed``."""
        return self.wall_offset(self.duration_s, speed)

    def events(self) -> Iterator[tuple[float, Event]]:
        """Every event with its phase's start time (scenario s)."""
        for start, p in zip(self.phase_starts(), self.phases, strict=True):
            for e in p.events:
                yield start, e


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message as a device sends it.

    Attributes:
        device_id: the device the topic names.
        kind: ``air``, ``water`` or ``seismic`` (the registered kind of ``device_id``,
            or the kind the payload pretends to be).
        topic: MQTT topic, normally ``devices/{device_id}/{kind}``.
        payload: the bytes on the wire (garbage included).
        event_time: the reading's time (for seismic, the first sample's time).
        at_s: wall seconds after the run starts at ``speed`` 1 when it is sent.
        sender: the MQTT user (and client id) that publishes it; normally ``device_id``.
        fault: the garbage variant, or None for a genuine reading (stuck ones included).
        expected_reason: what ingest refuses it with, or None when it is accepted.
        broker_denied: True when Mosquitto must refuse it (auth or ACL).
    """

    device_id: str
    kind: str
    topic: str
    payload: bytes = field(repr=False)
    event_time: datetime
    at_s: float
    sender: str = ""
    fault: GarbageVariant | None = None
    expected_reason: ReasonCode | None = None
    broker_denied: bool = False

    @property
    def publisher(self) -> str:
        """The MQTT user that sends this message."""
        return self.sender or self.device_id


# ----------------------------------------------------------------------------- loading


def _scenario_dir() -> Path:
    return Path(str(resources.files("simulator") / "scenarios"))


def scenario_names() -> list[str]:
    """The scenarios shipped in ``simulator/scenarios``."""
    return sorted(p.stem for p in _scenario_dir().glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``typhoon``) or any scenario file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _scenario_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        msg = f"no scenario {str(name_or_path)!r}: not a file; shipped: {scenario_names()}"
        raise FileNotFoundError(msg)
    return Scenario.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def aligned_start(scenario: Scenario, now: datetime, speed: float = 1.0) -> datetime:
    """The event time of scenario second 0 such that no reading is ever in the future.

    Compressed phases run ahead of the wall clock, so they are placed in the past: the
    scenario's last instant lands at the wall-clock moment the run ends. Real-time phases
    at the end then carry live timestamps; compressed hours before them arrive "late".
    """
    return now + timedelta(seconds=scenario.wall_duration_s(speed) - scenario.duration_s)


# ----------------------------------------------------------------------------- engine


def _ts(dt: datetime) -> str:
    return dt.astimezone(TAIWAN).isoformat(timespec="milliseconds")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(doc).encode()


def _rng(seed: int, *parts: object) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across processes.
    return random.Random(":".join([str(seed), *map(str, parts)]))


@dataclass(slots=True)
class _Context:
    scenario: Scenario
    registry: Registry
    start: datetime
    seed: int
    until_s: float
    starts: list[float]
    start_s: float = 0.0
    #: River gauges' warning levels (what a RiverEvent's ``l3``/``l2``/``l1`` means).
    thresholds: Thresholds | None = None

    def abs_time(self, t: float) -> datetime:
        """Scenario second ``t`` as an aware datetime in Taiwan time, ms resolution."""
        return datetime.fromtimestamp(round(self.start_s + t, 3), TAIWAN)

    def phase_index(self, t: float) -> int:
        return max(0, bisect_right(self.starts, t) - 1)

    def events_at(self, t: float) -> tuple[float, Sequence[Event]]:
        i = self.phase_index(t)
        return self.starts[i], self.scenario.phases[i].events


def _local_hour(dt: datetime) -> float:
    return dt.hour + dt.minute / 60  # dt is in Taiwan time (abs_time)


def _report_times(rng: random.Random, interval: float, until: float) -> Iterator[float]:
    """A device's own schedule: a fixed interval (s) with +-5 % jitter, random phase."""
    t = rng.uniform(0, interval)
    while t < until:
        yield t
        t += interval * rng.uniform(0.95, 1.05)


class _DeviceModel:
    """Normal readings of one device, plus the hazards that touch its township."""

    def __init__(self, device: Device, ctx: _Context) -> None:
        self.device = device
        self.ctx = ctx
        r = _rng(ctx.seed, "device", device.id)
        self.rng = r
        sc = ctx.scenario
        lo, hi = sc.air_interval_s if device.kind == "air" else sc.water_interval_s
        self.interval = r.uniform(lo, hi)
        self.pm_base = r.uniform(7.0, 16.0)  # ug/m3, a clean day in northern Taiwan
        self.pm10_ratio = r.uniform(1.4, 1.9)
        self.o3_base = r.uniform(18.0, 30.0)  # ppb
        self.bucket_mm = 0.0  # rain not yet tipped
        self.last_t: float | None = None

    def values(self, t: float) -> dict[str, float]:
        """The reading fields at scenario time ``t`` (s); units in the field names."""
        d = self.device
        now = self.ctx.abs_time(t)
        p0, events = self.ctx.events_at(t)
        pt = t - p0
        r = self.rng
        town = d.township
        if d.kind == "air":
            hour = _local_hour(now)
            # Morning and evening traffic peaks; ozone follows the sun.
            diurnal = 1 + 0.2 * math.cos(2 * math.pi * (hour - 8) / 12)
            pm = self.pm_base * diurnal
            for e in events:
                if isinstance(e, PollutionEvent) and town in e.townships:
                    pm += max(0.0, e.townships[town] - pm) * e.at(pt)
            pm *= r.lognormvariate(0, 0.08)
            sun = max(0.0, math.sin(math.pi * (hour - 6) / 12))
            return {
                "pm2_5_ugm3": round(pm, 1),
                "pm10_ugm3": round(pm * self.pm10_ratio * r.lognormvariate(0, 0.05), 1),
                "o3_ppb": round(self.o3_base + 25 * sun + r.gauss(0, 2), 1),
                "temperature_c": round(26 + 4 * sun + r.gauss(0, 0.3), 1),
                "humidity_pct": round(min(100.0, 78 - 12 * sun + r.gauss(0, 1.5)), 1),
            }
        if d.sensor == "river":
            datum = d.elevation_m if d.elevation_m is not None else 0.0
            normal = datum + NORMAL_RIVER_DEPTH_M
            stage = normal
            lines = (
                self.ctx.thresholds.for_device(d.id, town).river if self.ctx.thresholds else None
            )
            for e in events:
                if isinstance(e, RiverEvent):
                    level = e.townships.get(town)
                    line = lines.line(level) if lines is not None and level is not None else None
                    rise = line + e.margin_m - normal if line is not None else e.background_rise_m
                    stage += rise * e.at(pt)
            return {"water_level_m": round(stage + r.gauss(0, 0.01), 2)}
        if d.sensor == "flood":
            depth = 0.0
            for e in events:
                if isinstance(e, FloodEvent) and town in e.townships:
                    depth += e.townships[town] * e.at(pt)
            if depth > 0.5:
                depth = max(0.0, depth + r.gauss(0, 0.8))
            return {"flood_depth_cm": round(depth, 1) if depth > 0.5 else 0.0}
        # Rain gauge: a tipping bucket of 0.5 mm; rain since the previous report.
        prev = self.last_t if self.last_t is not None else t - self.interval
        mid = (prev + t) / 2
        mp0, mevents = self.ctx.events_at(mid)
        rate = 0.0
        for e in mevents:
            if isinstance(e, RainEvent):
                peak = e.townships.get(town, e.background_mm_h)
                rate += peak * e.at(mid - mp0)
        self.bucket_mm += rate * (t - prev) / 3600 * (r.lognormvariate(0, 0.1) if rate else 1)
        tipped = math.floor(self.bucket_mm / 0.5) * 0.5
        self.bucket_mm -= tipped
        return {"rainfall_mm": min(tipped, 200.0)}


def _faults_for(ctx: _Context, device_id: str) -> tuple[list[StuckFault], list[SilentFault]]:
    stuck, silent = [], []
    for p0, e in ctx.scenario.events():
        if isinstance(e, StuckFault) and e.device == device_id:
            stuck.append(e.model_copy(update={"start": p0 + e.start}))
        elif isinstance(e, SilentFault) and e.device == device_id:
            silent.append(e.model_copy(update={"start": p0 + e.start}))
    return stuck, silent


def _readings(ctx: _Context) -> Iterator[SimMessage]:
    sc = ctx.scenario
    for device in ctx.registry:
        if device.kind == "seismic":
            continue
        model = _DeviceModel(device, ctx)
        stuck, silent = _faults_for(ctx, device.id)
        frozen: dict[int, dict[str, float]] = {}
        topic = f"devices/{device.id}/{device.kind}"
        for t in _report_times(model.rng, model.interval, ctx.until_s):
            values = model.values(t)
            model.last_t = t
            if any(f.start <= t < f.start + f.duration for f in silent):
                continue
            for i, f in enumerate(stuck):
                if f.start <= t < f.start + f.duration:
                    values = frozen.setdefault(i, values)
            when = ctx.abs_time(t)
            doc = {"v": 1, "ts": when.isoformat(timespec="milliseconds"), **values}
            yield SimMessage(device.id, device.kind, topic, _dumps(doc), when, sc.wall_offset(t))


def _seismic(ctx: _Context, sample_rate_hz: float) -> Iterator[SimMessage]:
    sc = ctx.scenario
    stations = [SimStation(d.id, d.lat, d.lon) for d in ctx.registry.of_kind("seismic")]
    if not stations:
        return
    for i, (p0, phase) in enumerate(zip(ctx.starts, sc.phases, strict=True)):
        if not phase.seismic or p0 >= ctx.until_s:
            continue
        duration = min(phase.duration, ctx.until_s - p0)
        t0 = ctx.abs_time(p0).timestamp()
        quakes = [e for e in phase.events if isinstance(e, QuakeEvent)]
        if len(quakes) > 1:
            msg = f"scenario {sc.name} phase {phase.name}: at most one earthquake per phase"
            raise ValueError(msg)
        quake = (
            SimQuake(
                quakes[0].lat,
                quakes[0].lon,
                quakes[0].depth_km,
                quakes[0].magnitude,
                t0 + quakes[0].at,
            )
            if quakes
            else None
        )
        spikes = [
            Spike(e.device, t0 + e.at, e.amplitude_gal, e.duration_s)
            for e in phase.events
            if isinstance(e, SpikeEvent)
        ]
        packets = synthesize_packets(
            stations,
            start_s=t0,
            duration_s=duration,
            sample_rate_hz=sample_rate_hz,
            packet_s=PACKET_S,
            quake=quake,
            spikes=spikes,
            seed=_rng(ctx.seed, "seismic", i).getrandbits(32),
        )
        silent = {d: _faults_for(ctx, d)[1] for d in {s.station_id for s in stations}}
        for pk in packets:
            t = pk.t0_s - t0 + p0
            if any(f.start <= t < f.start + f.duration for f in silent[pk.station_id]):
                continue
            s = np.clip(pk.samples, -4000.0, 4000.0)
            pga = float(np.max(np.hypot(s[:, 0], s[:, 1])))
            doc = {
                "v": 1,
                "ts": round(pk.t0_s * 1000),
                "sample_rate_hz": sample_rate_hz,
                "x_gal": [round(float(x), 2) for x in s[:, 0]],
                "y_gal": [round(float(x), 2) for x in s[:, 1]],
                "z_gal": [round(float(x), 2) for x in s[:, 2]],
                "pga_gal": round(pga, 2),
            }
            when = datetime.fromtimestamp(round(pk.t0_s * 1000) / 1000, tz=UTC)
            # A packet leaves the station when its last sample is in.
            send = sc.wall_offset(t + len(s) / sample_rate_hz)
            yield SimMessage(
                pk.station_id,
                "seismic",
                f"devices/{pk.station_id}/seismic",
                _dumps(doc),
                when,
                send,
            )


def _valid_doc(device: Device | None, kind: str, when: datetime) -> dict[str, Any]:
    """A well-formed payload of ``kind`` (for garbage built on a valid base)."""
    if kind == "air":
        return {"v": 1, "ts": _ts(when), "pm2_5_ugm3": 12.0, "pm10_ugm3": 20.0}
    if kind == "water":
        sensor = device.sensor if device is not None else "flood"
        field_ = {"river": "water_level_m", "rain": "rainfall_mm"}.get(sensor, "flood_depth_cm")
        return {"v": 1, "ts": _ts(when), field_: 0.0}
    return {
        "v": 1,
        "ts": round(when.timestamp() * 1000),
        "sample_rate_hz": 20,
        "x_gal": [0.1] * 20,
        "y_gal": [-0.1] * 20,
        "z_gal": [0.0] * 20,
    }


def _garbage(ctx: _Context) -> Iterator[SimMessage]:
    sc = ctx.scenario
    for p0, e in sc.events():
        if not isinstance(e, GarbageFault):
            continue
        for k in range(e.count):
            t = p0 + e.at + k * e.every
            if t >= ctx.until_s:
                break
            yield _garbage_message(ctx, e, t)


def _garbage_message(ctx: _Context, e: GarbageFault, t: float) -> SimMessage:
    when = ctx.abs_time(t)
    device = ctx.registry.get(e.device)
    v = e.variant
    if device is None and v != "unknown_device":
        msg = f"scenario {ctx.scenario.name}: garbage from unknown device {e.device!r}"
        raise ValueError(msg)
    kind = device.kind if device is not None else "air"
    topic_id = e.device
    if v == "foreign_topic":
        target = ctx.registry.get(e.target or "")
        if target is None:
            msg = f"scenario {ctx.scenario.name}: foreign_topic target {e.target!r} unknown"
            raise ValueError(msg)
        topic_id, kind, device = target.id, target.kind, target
    topic = f"devices/{topic_id}/{kind}"
    doc = _valid_doc(device, kind, when)
    value_field = next(k for k in doc if k not in {"v", "ts", "sample_rate_hz"})
    payload: bytes
    if v == "not_json":
        payload = _dumps(doc)[:-7]  # a packet cut short
    elif v == "out_of_range":
        doc[value_field] = [9999.0] * 20 if kind == "seismic" else 9999.0
        payload = _dumps(doc)
    elif v == "wrong_schema":
        doc["reading"] = doc.pop(value_field)
        payload = _dumps(doc)
    elif v == "wrong_kind":
        kind = "water" if kind != "water" else "air"
        topic = f"devices/{topic_id}/{kind}"
        payload = _dumps(doc)
    elif v == "bad_topic":
        topic += "/raw"
        payload = _dumps(doc)
    elif v == "unsupported_version":
        payload = _dumps({**doc, "v": 2})
    elif v == "future_timestamp":
        doc["ts"] = _ts(when + timedelta(days=1))
        payload = _dumps(doc)
    elif v == "oversize":
        payload = _dumps({**doc, "firmware_dump": "A" * (70 * 1024)})
    else:  # unknown_device, foreign_topic: a valid payload the broker must keep out
        payload = _dumps(doc)
    return SimMessage(
        device_id=topic_id,
        kind=kind,
        topic=topic,
        payload=payload,
        event_time=when,
        at_s=ctx.scenario.wall_offset(t),
        sender=e.device,
        fault=v,
        expected_reason=GARBAGE_REASON.get(v),
        broker_denied=v in BROKER_DENIED,
    )


def generate(
    scenario: Scenario,
    registry: Registry,
    *,
    start: datetime,
    seed: int | None = None,
    sample_rate_hz: float | None = None,
    until_s: float | None = None,
    kinds: Iterable[str] = ("air", "water", "seismic"),
    thresholds: Thresholds | None = None,
) -> list[SimMessage]:
    """Every message of ``scenario`` for the devices of ``registry``, ordered by send time.

    Args:
        scenario: the scenario.
        registry: the device network (townships, devices).
        start: event time of scenario second 0 (aware); see :func:`aligned_start`.
        seed: overrides the scenario's seed.
        sample_rate_hz: overrides the scenario's seismic sample rate (<= 100 Hz).
        until_s: stop after this much scenario time, s (default: the whole scenario).
        kinds: device kinds to simulate (garbage is always included).
        thresholds: the river gauges' warning levels a river event rises to; without
            them every river gauge rises by the event's background rise.

    Returns:
        Messages sorted by ``at_s`` (wall offset at speed 1), then event time, then device.
    """
    if start.tzinfo is None:
        msg = "generate: start must be an aware datetime"
        raise ValueError(msg)
    rate = sample_rate_hz if sample_rate_hz is not None else scenario.sample_rate_hz
    if not 0 < rate <= 100:
        msg = f"generate: sample_rate_hz {rate} outside (0, 100]"
        raise ValueError(msg)
    ctx = _Context(
        scenario=scenario,
        registry=registry,
        start=start,
        seed=scenario.seed if seed is None else seed,
        until_s=min(scenario.duration_s, until_s if until_s is not None else math.inf),
        starts=scenario.phase_starts(),
        start_s=start.timestamp(),
        thresholds=thresholds,
    )
    _check_references(scenario, registry)
    wanted = set(kinds)
    out: list[SimMessage] = []
    if wanted & {"air", "water"}:
        out.extend(m for m in _readings(ctx) if m.kind in wanted)
    if "seismic" in wanted:
        out.extend(_seismic(ctx, rate))
    out.extend(_garbage(ctx))
    out.sort(key=lambda m: (m.at_s, m.event_time, m.device_id, m.topic))
    return out


def _check_references(scenario: Scenario, registry: Registry) -> None:
    """Every township and device a scenario names exists (unknown_device aside)."""
    towns = {t.code for t in registry.townships}
    bad: list[str] = []
    for _, e in scenario.events():
        if isinstance(e, PollutionEvent | RainEvent | RiverEvent | FloodEvent):
            bad += [f"township {c}" for c in e.townships if c not in towns]
        if isinstance(e, SpikeEvent | StuckFault | SilentFault) and registry.get(e.device) is None:
            bad.append(f"device {e.device}")
    for a in (*scenario.expect.alerts, *scenario.expect.no_alerts):
        bad += [f"township {c}" for c in a.townships if c not in towns]
    for h in scenario.expect.health:
        if registry.get(h.device) is None:
            bad.append(f"device {h.device}")
    if bad:
        msg = f"scenario {scenario.name}: names what the registry lacks: {sorted(set(bad))}"
        raise ValueError(msg)
