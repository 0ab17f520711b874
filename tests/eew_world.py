"""Earthquake early warning scenarios, replayed the way the processors run them.

Pure and seeded (no I/O): synthetic accelerograms (:mod:`simulator.waveforms`) through
every station's detector (:func:`processors.detectors.seismic.process_packet`), grouped
into the associator's ticks per Kafka partition and packet second
(:func:`processors.agents.device.seismic_ticks`, what the seismic agent sends), the
stations hashed onto ``partitions`` partitions, the ticks of a second delivered in a
shuffled partition order and each one's contents shuffled, and the associator's clock
the slowest partition's (the watermark of :func:`processors.handlers.handle_quake`).

Used by the scenario matrix (``tests/unit/detectors/test_eew_scenarios.py``) and the
benchmark (``bench/eew.py``). The world and the detectors share the velocity model and
the ground-motion model unless a scenario says otherwise (``model``): the figures
measure the method, not a calibration.
"""

from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from civic_iot.contracts.processing import SeismicTick, Trigger
from processors.agents.device import seismic_ticks
from processors.detectors.intensity import cwa_intensity_ordinals
from processors.detectors.quake import (
    Associator,
    QuakeConfig,
    QuakeEvent,
    Township,
    distance_km,
)
from processors.detectors.seismic import SeismicConfig, StationState, process_packet
from processors.handlers import SeismicOutcome
from processors.states import SeismicDevice
from simulator.waveforms import (
    Burst,
    SimQuake,
    SimStation,
    Spike,
    WaveModel,
    hypocentral_distance_km,
    synthesize_packets,
)
from tests.stations import T0, TAIWAN, TOWNS

#: Noise before the quake: the station detectors' LTA warm-up (10 s) and some margin.
LEAD_S = 14.0


@dataclass(frozen=True)
class Scenario:
    """One replay: a quake (or none) and what else happens on the network.

    ``after_s``: how long to replay after the origin (or after ``LEAD_S`` without a
    quake), s. ``sample_rate_hz``: the stations' rate (20 Hz: a MEMS board's, and fast).
    """

    name: str
    quake: SimQuake | None
    stations: tuple[SimStation, ...] = tuple(TAIWAN)
    noise_gal: float = 0.3
    noisy: tuple[tuple[str, float], ...] = ()
    spikes: tuple[Spike, ...] = ()
    bursts: tuple[Burst, ...] = ()
    model: WaveModel = field(default_factory=WaveModel)
    after_s: float = 30.0
    #: Noise before the origin (at least the warm-up), s.
    lead_s: float = LEAD_S
    sample_rate_hz: float = 20.0
    #: Only stations within this epicentral distance of the quake are simulated, km
    #: (the rest are far beyond the association's reach; keeps the replay fast).
    radius_km: float = 250.0


@dataclass
class Outcome:
    """What a replay produced: every update (in order), every trigger, the P arrival
    at every simulated station (epoch s, nearest first; empty without a quake) and the
    CWA level each station observed."""

    scenario: Scenario
    updates: list[QuakeEvent]
    triggers: list[Trigger]
    p_arrivals_s: list[float]
    observed_levels: dict[str, int]
    stations: dict[str, SimStation]

    @property
    def first_p_s(self) -> float | None:
        return self.p_arrivals_s[0] if self.p_arrivals_s else None

    @property
    def event_ids(self) -> set[str]:
        return {e.event_id for e in self.updates}

    def first(self) -> QuakeEvent:
        return self.updates[0]

    def final(self) -> QuakeEvent:
        """The last estimate before the event closed (the closing report repeats it)."""
        return self.updates[-1]

    def epicentre_error_km(self, ev: QuakeEvent) -> float:
        q = self.scenario.quake
        assert q is not None
        return float(distance_km(ev.lat, ev.lon, q.lat, q.lon))

    def metrics(self) -> Metrics | None:
        """The figures of the one event (None when nothing was declared)."""
        q = self.scenario.quake
        if q is None or not self.updates:
            return None
        first = self.updates[0]
        final = self.updates[-1]
        return Metrics(
            first_error_km=self.epicentre_error_km(first),
            final_error_km=self.epicentre_error_km(final),
            first_depth_error_km=first.depth_km - q.depth_km,
            final_depth_error_km=final.depth_km - q.depth_km,
            first_magnitude_error=first.magnitude - q.magnitude,
            final_magnitude_error=final.magnitude - q.magnitude,
            first_alert_s=first.computed_at_s - q.origin_s,
            first_p_s=self.p_arrivals_s[0] - q.origin_s,
            fifth_p_s=self.p_arrivals_s[min(4, len(self.p_arrivals_s) - 1)] - q.origin_s,
            intensity_hit=self.intensity_hit_rate(final),
            first_quality=first.location.quality if first.location else "unknown",
            n_events=len(self.event_ids),
        )

    def intensity_hit_rate(self, ev: QuakeEvent) -> float:
        """Share of the stations that felt it (observed level >= 1, the S wave and the
        source's duration recorded) where the event's model (hypocentre, magnitude,
        ground-motion model; no station correction) puts the level within one CWA step
        of what the station observed."""
        q = self.scenario.quake
        assert q is not None
        end = q.origin_s + self.scenario.after_s
        vs = self.scenario.model.vs_kms
        src = 1.0 / self.scenario.model.corner_hz(q.magnitude)
        felt = [
            k
            for k, v in self.observed_levels.items()
            if v >= 1
            and q.origin_s
            + float(hypocentral_distance_km(q, self.stations[k].lat, self.stations[k].lon)) / vs
            + src
            <= end
        ]
        if not felt:
            return 1.0
        cfg = config()
        lat = np.array([self.stations[k].lat for k in felt])
        lon = np.array([self.stations[k].lon for k in felt])
        r = np.hypot(distance_km(ev.lat, ev.lon, lat, lon), ev.depth_km)
        gm = cfg.ground_motion
        predicted = cwa_intensity_ordinals(
            gm.pga_gal(ev.magnitude, r),
            gm.pgv_cms(ev.magnitude, r, ev.depth_km),
            cfg.intensity_scale,
        )
        observed = np.array([self.observed_levels[k] for k in felt])
        return float(np.mean(np.abs(predicted - observed) <= 1))


@dataclass(frozen=True)
class Metrics:
    """One declared quake's figures: epicentre errors, km; depth and magnitude errors
    (estimate - truth), km and units; the first alert, the first and the fifth P
    arrival, s after origin (stream time: data up to that moment had arrived); the share
    of felt stations whose level the final estimate gets within one CWA step."""

    first_error_km: float
    final_error_km: float
    first_depth_error_km: float
    final_depth_error_km: float
    first_magnitude_error: float
    final_magnitude_error: float
    first_alert_s: float
    first_p_s: float
    fifth_p_s: float
    intensity_hit: float
    first_quality: str
    n_events: int


def townships() -> tuple[Township, ...]:
    return tuple(Township(code, lat, lon) for code, lat, lon in TOWNS)


def config() -> QuakeConfig:
    return QuakeConfig(townships=townships())


def partition_of(station_id: str, partitions: int) -> int:
    """A stable stand-in for Kafka's key hash (murmur2 in the real client)."""
    return zlib.crc32(station_id.encode()) % partitions


@dataclass(frozen=True)
class Recording:
    """What the station detectors made of a scenario: per packet second, every station's
    outcome and partition-independent facts (the first P, the stations' observed peaks)."""

    scenario: Scenario
    seconds: list[list[tuple[str, SeismicOutcome]]]
    stations: dict[str, SimStation]
    start_s: float
    p_arrivals_s: list[float]
    observed_levels: dict[str, int]


def record(sc: Scenario, *, seed: int = 0, cfg: QuakeConfig | None = None) -> Recording:
    """Synthesise a scenario's packets and run them through every station's detector."""
    cfg = cfg if cfg is not None else config()
    q = sc.quake
    start = (q.origin_s - sc.lead_s) if q is not None else T0
    stations = list(sc.stations)
    if q is not None:
        stations = [
            s for s in stations if float(distance_km(q.lat, q.lon, s.lat, s.lon)) <= sc.radius_km
        ]
    packets = synthesize_packets(
        stations,
        start_s=start,
        duration_s=sc.lead_s + sc.after_s,
        sample_rate_hz=sc.sample_rate_hz,
        quake=q,
        spikes=sc.spikes,
        bursts=sc.bursts,
        noise_gal=sc.noise_gal,
        noisy=dict(sc.noisy),
        model=sc.model,
        seed=seed,
    )
    where = {s.station_id: s for s in stations}
    states = {s.station_id: StationState() for s in stations}
    # The P-wave filter is network-wide (as in processors.handlers.Detectors).
    seismic = SeismicConfig(pd_highpass_hz=cfg.association.pd_highpass_hz)
    seconds: list[list[tuple[str, SeismicOutcome]]] = []
    peaks: dict[str, tuple[float, float]] = {}
    for _, batch in groupby(packets, key=lambda p: p.t0_s):
        second: list[tuple[str, SeismicOutcome]] = []
        for p in batch:
            res = process_packet(states[p.station_id], p.samples, p.sample_rate_hz, p.t0_s, seismic)
            states[p.station_id] = res.state
            st = where[p.station_id]
            obs = res.observation(st.station_id)
            if obs is not None:
                old = peaks.get(st.station_id, (0.0, 0.0))
                peaks[st.station_id] = (max(old[0], obs.pga_gal), max(old[1], obs.pgv_cms))
            second.append(
                (
                    st.station_id,
                    SeismicOutcome(
                        state=SeismicDevice(station=res.state),
                        trigger=res.trigger(st.station_id, st.lat, st.lon),
                        observation=obs,
                        end_s=p.t0_s + p.samples.shape[0] / p.sample_rate_hz,
                        status=res.status(st.station_id, st.lat, st.lon),
                    ),
                )
            )
        seconds.append(second)
    arrivals = []
    if q is not None:
        arrivals = sorted(
            q.origin_s + float(hypocentral_distance_km(q, s.lat, s.lon)) / sc.model.vp_kms
            for s in stations
        )
    observed = {
        k: int(cwa_intensity_ordinals(np.array([a]), np.array([v]), cfg.intensity_scale)[0])
        for k, (a, v) in peaks.items()
    }
    return Recording(sc, seconds, where, start, arrivals, observed)


def associate(
    rec: Recording,
    *,
    partitions: int = 1,
    shuffle: int | None = None,
    cfg: QuakeConfig | None = None,
) -> Outcome:
    """Feed a recording to the associator as the seismic agents would send it.

    Args:
        rec: the station detectors' outcomes.
        partitions: how many ``readings.seismic`` partitions the stations hash onto.
        shuffle: seed for the order of partitions and of packets within a tick (None:
            partition and station order).
        cfg: the associator's settings (default: :func:`config`).
    """
    cfg = cfg if cfg is not None else config()
    rng = random.Random(shuffle)
    assoc = Associator()
    updates: list[QuakeEvent] = []
    triggers: list[Trigger] = []
    clocks: dict[int, float] = {}
    for second in rec.seconds:
        batch = [(o, None, partition_of(sid, partitions)) for sid, o in second]
        triggers += [o.trigger for _, o in second if o.trigger is not None]
        if shuffle is not None:
            rng.shuffle(batch)
        ticks = seismic_ticks(batch)
        if shuffle is not None:
            rng.shuffle(ticks)
            ticks = [_shuffled(t, rng) for t in ticks]
        for tick in ticks:
            part = tick.partition if tick.partition is not None else 0
            clocks[part] = max(clocks.get(part, 0.0), tick.now_s)
            # The watermark: every partition's data up to the slowest one's clock.
            now = min(clocks.values()) if len(clocks) == partitions else rec.start_s
            step = assoc.step(
                now_s=now,
                triggers=tick.triggers,
                observations=tick.observations,
                stations=tick.stations,
                config=cfg,
            )
            assoc = step.associator
            updates.extend(step.updates)
    # Let open events close on the stream clock, as an idle network would.
    now = max(clocks.values(), default=rec.start_s)
    for k in range(1, 4):
        step = assoc.step(now_s=now + 10.0 * k, config=cfg)
        assoc = step.associator
        updates.extend(step.updates)
    return Outcome(
        rec.scenario, updates, triggers, rec.p_arrivals_s, rec.observed_levels, rec.stations
    )


def replay(
    sc: Scenario,
    *,
    seed: int = 0,
    partitions: int = 1,
    shuffle: int | None = None,
    cfg: QuakeConfig | None = None,
) -> Outcome:
    """:func:`record` then :func:`associate` (a recording with the default settings
    is made once per scenario and seed)."""
    rec = record(sc, seed=seed, cfg=cfg) if cfg is not None else recorded(sc, seed)
    return associate(rec, partitions=partitions, shuffle=shuffle, cfg=cfg)


@functools.lru_cache(maxsize=4)
def recorded(sc: Scenario, seed: int) -> Recording:
    """:func:`record` with the default settings, made once (tests share it)."""
    return record(sc, seed=seed)


def _shuffled(tick: SeismicTick, rng: random.Random) -> SeismicTick:
    """The same tick with its triggers, observations and statuses in another order."""
    triggers, observations, stations = (
        list(tick.triggers),
        list(tick.observations),
        list(tick.stations),
    )
    rng.shuffle(triggers)
    rng.shuffle(observations)
    rng.shuffle(stations)
    return tick.model_copy(
        update={
            "triggers": tuple(triggers),
            "observations": tuple(observations),
            "stations": tuple(stations),
        }
    )


def quake(lat: float, lon: float, depth_km: float, magnitude: float) -> SimQuake:
    """A quake at ``T0 + LEAD_S`` (the replay starts at ``T0``)."""
    return SimQuake(lat, lon, depth_km, magnitude, T0 + LEAD_S)


def _coast() -> tuple[SimStation, ...]:
    """Only the east coast's stations, Toucheng to Taitung: a network nearly on a line."""
    ids = ("TCG", "ILA", "SUA", "NAO", "HEP", "TRK", "HUA", "SFG", "FBN", "CBN", "CGO", "TTT")
    return tuple(s for s in TAIWAN if s.station_id in ids)


def _noisy_nearest(lat: float, lon: float, k: int, gal: float) -> tuple[tuple[str, float], ...]:
    """The ``k`` stations nearest a place, noisier than the rest (``gal`` RMS)."""
    near = sorted(TAIWAN, key=lambda s: float(distance_km(lat, lon, s.lat, s.lon)))[:k]
    return tuple((s.station_id, gal) for s in near)


#: The scenario matrix: where Taiwan's large quakes start, and what gets in the way.
MATRIX: tuple[Scenario, ...] = (
    Scenario("offshore east of Hualien, M6.5, 20 km", quake(23.95, 121.95, 20.0, 6.5)),
    Scenario("offshore east of Yilan, M7.0, 40 km", quake(24.50, 122.30, 40.0, 7.0)),
    Scenario(
        "off Taitung (SE), M5.5, 30 km, noise x3",
        quake(22.60, 121.70, 30.0, 5.5),
        noise_gal=0.9,
    ),
    Scenario("deep under the island, M6.0, 90 km", quake(23.80, 121.00, 90.0, 6.0)),
    Scenario("inside the northern network, M5.0, 10 km", quake(24.80, 121.60, 10.0, 5.0)),
    Scenario("north-east edge off Keelung, M5.5, 10 km", quake(25.30, 122.10, 10.0, 5.5)),
    Scenario(
        "Hualien coast, M7.3, 15 km, nearest stations noisy",
        quake(23.80, 121.70, 15.0, 7.3),
        noisy=_noisy_nearest(23.80, 121.70, 4, 1.5),
    ),
    Scenario(
        "offshore Hualien, M6.0, collinear coast network",
        quake(23.50, 121.80, 20.0, 6.0),
        stations=_coast(),
    ),
    Scenario(
        "off Yilan, M6.3, slower world than the model, site delays",
        quake(24.20, 122.00, 20.0, 6.3),
        model=WaveModel(vp_kms=5.5, vs_kms=3.2, delay_sigma_s=0.15, noise_sigma_log10=0.2),
    ),
)


__all__ = ["LEAD_S", "MATRIX", "Metrics", "Outcome", "Scenario", "config", "quake", "replay"]
