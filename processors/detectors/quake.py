"""Network earthquake detection: association, location, magnitude and expected shaking.

Pure and I/O-free. The Faust agent keeps one :class:`Associator` (a stored state) in its
table, feeds it the station triggers and observations that
:func:`processors.detectors.seismic.process_packet` produced, and publishes an
:class:`~civic_iot.events.AlertCandidate` (:func:`to_alert_candidate`) for every
:class:`QuakeEvent` in ``result.updates``::

    result = assoc.step(now_s=t, triggers=[...], observations=[...], config=cfg)
    for event in result.updates:
        publish(to_alert_candidate(event, detected_at=datetime.now(UTC), config=cfg))

Rules (defaults from docs/domain.md "Early-warning practice"):

- **Association.** A trigger first tries the open events: it *joins* one when its P time is
  within ``join_tolerance_s`` of the P time predicted from the current hypocentre, and is
  *absorbed* (kept for shaking, not used for location) when it falls between that
  prediction and the predicted S arrival plus ``absorb_after_s_s`` (a far station that
  triggers on the S wave or the coda must not start a second event). Otherwise it waits
  in ``pending``. An event is declared only when ``min_stations`` (3; OpenEEW uses 4)
  pending triggers are pairwise consistent with P travel: within ``pair_max_km`` (100 km)
  and ``pair_max_dt_s`` (15 s) of each other (Taiwan Earthworm EEW practice) and
  ``|dt| <= distance / vp + pair_tolerance_s``. One station's spike (a truck, a door)
  therefore never makes an event. An event with no new trigger for ``close_after_s``
  (20 s) is closed; it is remembered for ``closed_memory_s`` so stragglers are absorbed.
- **Location.** Grid search over epicentre (origin time solved in closed form, depth fixed
  at ``depth_km``), minimising squared P residuals with constant ``vp_kms``; coarse grid
  then finer grids around the best point.
- **Magnitude.** From Pd: ``log10 Pd = -3.463 + 0.729 M - 1.374 log10 R`` (Wu & Zhao 2006;
  Pd cm, R hypocentral km), averaged over picked stations whose Pd window is complete and
  whose Pd stands ``pd_min_snr`` above their noise. Until one exists, the PGA seen so
  far is inverted through the ground-motion model (:class:`GroundMotionModel`); early in
  the P wave that underestimates, which the later Pd estimate corrects.
- **Expected shaking.** For each 0.1 x 0.1 degree cell of the covered area, PGA and PGV
  from :class:`GroundMotionModel`, then the CWA level; a cell near a station
  (``station_correction_km``) is raised to the level that station has observed. Seconds
  to the S wave: ``R / vs_kms - (now - origin)``, floored at 0 (arrived / blind zone).
- **Updates.** An event is reported when declared, when it changes materially (a new
  station, magnitude change >= ``change_magnitude``, a different maximum intensity) and
  once more when it closes (``closed=True``; its candidate has level 0 and the alert
  service cancels it after its hold time).

Velocities: Vp 6.0 / Vs 3.5 km/s constant is a fair first model, *unconfirmed* as a Taiwan
figure (Taiwan EEW uses depth-dependent speeds, about 5.1 / 2.9 km/s near the surface).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.alerts import AlertCandidate, Circle, GridCell, Severity
from civic_iot.thresholds import QuakeThresholds
from processors.detectors.intensity import (
    CWA_2020,
    IntensityScale,
    cell_broadcast_min_level,
    cwa_intensity_ordinals,
    intensity_ordinal,
    level_from_ordinal,
)
from processors.detectors.seismic import PacketResult
from processors.detectors.state import stored

__all__ = [
    "AssociationResult",
    "Associator",
    "CellShaking",
    "GroundMotionModel",
    "QuakeConfig",
    "QuakeEvent",
    "StationObservation",
    "StationTrigger",
    "Township",
    "distance_km",
    "locate",
    "magnitude_from_pd",
    "to_alert_candidate",
    "township_intensities",
]

FloatArray = NDArray[np.float64]
EARTH_RADIUS_KM = 6371.0

# Wu & Zhao (2006), GRL 33 L16312: log10 Pd = A + B M + C log10 R (Pd cm, R hypocentral km).
WU_ZHAO_A, WU_ZHAO_B, WU_ZHAO_C = -3.463, 0.729, -1.374


@dataclass(frozen=True, slots=True)
class GroundMotionModel:
    """Median peak motion at hypocentral distance R (km) for magnitude M.

    PGA (gal): ``log10 PGA = a + b M - log10(R + c 10^(0.5 M)) - d R``, the Campbell-type
    form Wu, Shin & Teng (2001) fit to Taiwan data; coefficients as we recall them,
    *unconfirmed* for Taiwan. About 150 gal at 10 km and 11 gal at 100 km for M 6.

    PGV (cm/s): ``log10 PGV = log10 PGA + e + f M``: PGV/PGA (a period-like ratio, s) of
    about 0.1 s at M 6 growing with magnitude. A placeholder calibration, *unconfirmed*;
    replace with a published Taiwan PGV relation.
    """

    pga_a: float = 0.00215
    pga_b: float = 0.581
    pga_c: float = 0.00871
    pga_d: float = 0.00414
    pgv_e: float = -2.8
    pgv_f: float = 0.3

    def pga_gal(self, magnitude: float, hyp_km: FloatArray) -> FloatArray:
        """Median PGA, gal, at hypocentral distances ``hyp_km`` (km)."""
        r = np.asarray(hyp_km, dtype=np.float64)
        return np.asarray(10 ** self._log_pga(magnitude, r), dtype=np.float64)

    def pgv_cms(self, magnitude: float, hyp_km: FloatArray) -> FloatArray:
        """Median PGV, cm/s, at hypocentral distances ``hyp_km`` (km)."""
        r = np.asarray(hyp_km, dtype=np.float64)
        log_pgv = self._log_pga(magnitude, r) + self.pgv_e + self.pgv_f * magnitude
        return np.asarray(10**log_pgv, dtype=np.float64)

    def magnitude_from_pga(
        self, pga_gal: FloatArray, hyp_km: FloatArray, lo: float = 1.0, hi: float = 9.5
    ) -> FloatArray:
        """Invert :meth:`pga_gal` per station (monotonic in M), clipped to [lo, hi]."""
        grid = np.linspace(lo, hi, 426)  # 0.02 magnitude steps
        r = np.asarray(hyp_km, dtype=np.float64)
        curves = self._log_pga(grid[None, :], r[:, None])  # (stations, grid), increasing
        target = np.log10(np.maximum(np.asarray(pga_gal, dtype=np.float64), 1e-6))
        out = np.array([np.interp(t, c, grid) for t, c in zip(target, curves, strict=True)])
        return np.asarray(out, dtype=np.float64)

    def _log_pga(self, magnitude: float | FloatArray, r: FloatArray) -> FloatArray:
        return np.asarray(
            self.pga_a
            + self.pga_b * magnitude
            - np.log10(r + self.pga_c * 10 ** (0.5 * np.asarray(magnitude)))
            - self.pga_d * r,
            dtype=np.float64,
        )


@dataclass(frozen=True, slots=True)
class Township:
    """A township (鄉鎮市區) centroid for naming cells: code and degrees."""

    code: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class QuakeConfig:
    """Network settings. Times s, distances km, angles degrees.

    Attributes:
        association: the thresholds file's ``quake`` section: ``min_stations``, triggers
            needed to declare an event (3; OpenEEW uses 4); ``pair_max_km`` and
            ``pair_max_dt_s``, two triggers can be the same quake only within this
            distance and time of each other (100 km, 15 s; Taiwan Earthworm EEW);
            ``close_after_s``, an event with no new trigger for this long is closed (20 s);
            ``report_min_intensity``, cells (and townships) at or above this CWA level are
            reported ("3").
        pair_tolerance_s: slack on ``|dt| <= distance / vp`` for pick error (s).
        join_tolerance_s: a trigger joins an event when its P time is this close to the
            predicted one (s).
        absorb_after_s_s: triggers up to this long after the predicted S arrival belong to
            the event's shaking and never start a new event (s).
        closed_memory_s: how long a closed event still absorbs late triggers (s).
        vp_kms, vs_kms: P and S speeds (6.0 / 3.5 km/s, *unconfirmed* for Taiwan).
        depth_km: fixed hypocentre depth for location (10 km).
        search_margin_deg, search_step_deg, refine_levels: grid search: the stations'
            bounding box plus a margin, a first step, then ``refine_levels`` grids each
            five times finer around the best point (0.05 deg -> 0.002 deg, ~200 m).
        pd_min_snr: Pd counts for magnitude only this far above the station's noise.
        pd_window_s: the Pd window after P (3 s, as in the station detector).
        pd_skip_s_in_window: ignore Pd where the predicted S wave arrives inside the Pd
            window (hypocentral distance below ~25 km at 6.0 / 3.5 km/s): there the S
            wave, not the P wave, sets the peak and inflates the magnitude.
        min_magnitude, max_magnitude: magnitude clip.
        cell_deg: shaking grid cell size (0.1 deg, the Civil IoT micro-zoning grid).
        cell_margin_deg: covered area is the event stations' bounding box plus this,
            unless ``region_bbox`` (lat_min, lon_min, lat_max, lon_max) is given.
        station_correction_km: a cell this close to a station takes at least the level
            that station observed.
        change_magnitude: magnitude change that is worth a new update.
        max_pending, max_event_stations, max_open_events: memory bounds.
        townships: centroids to name cells by (nearest); empty means no names.
        ground_motion, intensity_scale: the models.
    """

    association: QuakeThresholds = field(default_factory=QuakeThresholds)
    pair_tolerance_s: float = 1.0
    join_tolerance_s: float = 2.0
    absorb_after_s_s: float = 30.0
    closed_memory_s: float = 120.0
    vp_kms: float = 6.0
    vs_kms: float = 3.5
    depth_km: float = 10.0
    search_margin_deg: float = 0.5
    search_step_deg: float = 0.05
    refine_levels: int = 2
    pd_min_snr: float = 5.0
    pd_window_s: float = 3.0
    pd_skip_s_in_window: bool = True
    min_magnitude: float = 2.0
    max_magnitude: float = 8.5
    cell_deg: float = 0.1
    cell_margin_deg: float = 0.5
    region_bbox: tuple[float, float, float, float] | None = None
    station_correction_km: float = 10.0
    change_magnitude: float = 0.2
    max_pending: int = 256
    max_event_stations: int = 1000
    max_open_events: int = 8
    townships: tuple[Township, ...] = ()
    ground_motion: GroundMotionModel = field(default_factory=GroundMotionModel)
    intensity_scale: IntensityScale = CWA_2020


@stored
class StationTrigger:
    """A station's STA/LTA trigger: P time epoch s, position degrees."""

    station_id: str
    lat: float
    lon: float
    p_time_s: float

    @classmethod
    def from_packet(
        cls, station_id: str, lat: float, lon: float, result: PacketResult
    ) -> StationTrigger | None:
        """The trigger in ``result``, or None when the packet did not trigger."""
        if not result.triggered or result.p_time_s is None:
            return None
        return cls(station_id=station_id, lat=lat, lon=lon, p_time_s=result.p_time_s)


@dataclass(frozen=True, slots=True)
class StationObservation:
    """What a triggered station has seen so far in its event window.

    ``pga_gal`` gal, ``pgv_cms`` cm/s; ``pd_cm`` (cm) only once the Pd window is complete,
    with ``pd_snr`` its ratio to the station's displacement noise (None: unknown).
    """

    station_id: str
    pga_gal: float
    pgv_cms: float
    pd_cm: float | None = None
    pd_snr: float | None = None

    @classmethod
    def from_packet(cls, station_id: str, result: PacketResult) -> StationObservation | None:
        """The event-window figures in ``result``, or None outside an event window."""
        if result.event_p_time_s is None or not (result.in_event or result.event_ended):
            return None
        complete = result.pd_complete and result.pd_cm is not None
        return cls(
            station_id=station_id,
            pga_gal=result.event_pga_gal,
            pgv_cms=result.event_pgv_cms,
            pd_cm=result.pd_cm if complete else None,
            pd_snr=result.pd_snr if complete else None,
        )


@stored
class EventStation:
    """A station in an event. ``picked``: its P time is used for location."""

    station_id: str
    lat: float
    lon: float
    p_time_s: float
    picked: bool
    pga_gal: float = 0.0
    pgv_cms: float = 0.0
    pd_cm: float | None = None
    pd_snr: float | None = None


@stored
class Hypocentre:
    """Origin time (epoch s), epicentre (degrees), depth (km), RMS P residual (s)."""

    origin_s: float
    lat: float
    lon: float
    depth_km: float
    rms_s: float


@dataclass(frozen=True, slots=True)
class CellShaking:
    """Expected shaking in one grid cell: centre degrees, PGA gal, PGV cm/s, CWA level,
    seconds until the S wave (0: arrived), nearest township code."""

    lat: float
    lon: float
    pga_gal: float
    pgv_cms: float
    intensity: str
    s_wave_s: float
    township: str | None = None


@dataclass(frozen=True, slots=True)
class QuakeEvent:
    """One earthquake as the network sees it at ``computed_at_s``.

    Attributes:
        event_id: stable across updates (UTC time of the first trigger).
        origin_s, lat, lon, depth_km, rms_s: the hypocentre (epoch s, degrees, km, s).
        magnitude: estimated magnitude; ``magnitude_method`` "pd", "pga" or "none".
        station_ids: every station attributed to the event.
        max_intensity: the highest expected or observed CWA level anywhere.
        cells: cells at or above the configured minimum level.
        townships: township codes at or above the minimum level, sorted.
        first_trigger_s: earliest P time, epoch s.
        computed_at_s: the stream time of this estimate, epoch s.
        closed: the event is over; this is its last report.
        cell_broadcast_level: lowest level that gets a public cell broadcast under the CWA
            2024 criteria for this magnitude, or None.
    """

    event_id: str
    origin_s: float
    lat: float
    lon: float
    depth_km: float
    rms_s: float
    magnitude: float
    magnitude_method: str
    station_ids: tuple[str, ...]
    max_intensity: str
    cells: tuple[CellShaking, ...]
    townships: tuple[str, ...]
    first_trigger_s: float
    computed_at_s: float
    closed: bool = False
    cell_broadcast_level: str | None = None

    @property
    def n_stations(self) -> int:
        """Stations attributed to the event."""
        return len(self.station_ids)


@stored
class _EventState:
    event_id: str
    stations: tuple[EventStation, ...]
    first_trigger_s: float
    last_trigger_s: float
    hypo: Hypocentre
    #: (n_stations, magnitude, max intensity ordinal) last reported, or None.
    published: tuple[int, float, int] | None = None
    closed_at_s: float | None = None

    def station(self, station_id: str) -> EventStation | None:
        return next((s for s in self.stations if s.station_id == station_id), None)


@dataclass(frozen=True, slots=True)
class AssociationResult:
    """The new associator and the events to report (declared, changed, closed)."""

    associator: Associator
    updates: tuple[QuakeEvent, ...]


def distance_km(
    lat1: FloatArray | float,
    lon1: FloatArray | float,
    lat2: FloatArray | float,
    lon2: FloatArray | float,
) -> FloatArray:
    """Great-circle distance, km (haversine; broadcasts)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1))), np.float64)


def locate(
    lats: Sequence[float], lons: Sequence[float], p_times_s: Sequence[float], config: QuakeConfig
) -> Hypocentre:
    """Grid-search epicentre and origin time from P picks at fixed depth.

    For each trial epicentre the origin time minimising squared residuals is the mean of
    ``p - travel_time``, so only latitude and longitude are searched: first on
    ``search_step_deg`` over the stations' box plus ``search_margin_deg``, then
    ``refine_levels`` times on a five-times-finer grid around the best point.
    """
    la = np.asarray(lats, dtype=np.float64)
    lo = np.asarray(lons, dtype=np.float64)
    p = np.asarray(p_times_s, dtype=np.float64)
    step = config.search_step_deg
    m = config.search_margin_deg
    lat_ax = np.arange(la.min() - m, la.max() + m + step / 2, step)
    lon_ax = np.arange(lo.min() - m, lo.max() + m + step / 2, step)
    best = (float(la[0]), float(lo[0]), 0.0, math.inf)
    for level in range(config.refine_levels + 1):
        if level:
            half = 2 * step
            step /= 5
            lat_ax = np.arange(best[0] - half, best[0] + half + step / 2, step)
            lon_ax = np.arange(best[1] - half, best[1] + half + step / 2, step)
        g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_ax, lon_ax, indexing="ij"))
        epi = distance_km(g_lat[:, None], g_lon[:, None], la[None, :], lo[None, :])
        tt = np.hypot(epi, config.depth_km) / config.vp_kms
        origin = np.mean(p[None, :] - tt, axis=1)
        cost = np.sum((p[None, :] - tt - origin[:, None]) ** 2, axis=1)
        k = int(np.argmin(cost))
        best = (float(g_lat[k]), float(g_lon[k]), float(origin[k]), float(cost[k]))
    return Hypocentre(
        origin_s=best[2],
        lat=best[0],
        lon=best[1],
        depth_km=config.depth_km,
        rms_s=math.sqrt(best[3] / len(p)),
    )


def magnitude_from_pd(pd_cm: FloatArray, hyp_km: FloatArray) -> FloatArray:
    """Per-station magnitude from Pd (cm) at hypocentral distance (km), Wu & Zhao 2006."""
    pd = np.maximum(np.asarray(pd_cm, dtype=np.float64), 1e-9)
    r = np.maximum(np.asarray(hyp_km, dtype=np.float64), 1.0)
    return np.asarray(
        (np.log10(pd) - WU_ZHAO_A - WU_ZHAO_C * np.log10(r)) / WU_ZHAO_B, dtype=np.float64
    )


@stored
class Associator:
    """The network's association state: pending triggers, open and recently closed
    events. Bounded by the config's ``max_*`` settings."""

    pending: tuple[StationTrigger, ...] = ()
    events: tuple[_EventState, ...] = ()
    recent: tuple[_EventState, ...] = ()

    def step(
        self,
        *,
        now_s: float,
        triggers: Iterable[StationTrigger] = (),
        observations: Iterable[StationObservation] = (),
        config: QuakeConfig | None = None,
    ) -> AssociationResult:
        """Take new triggers and observations, close stale events, report changes.

        Args:
            now_s: stream time, epoch s: the end of the newest packet processed. Events
                close and S-wave countdowns run on this clock, so replays are exact.
            triggers: new station triggers (any order).
            observations: latest event-window figures of triggered stations.
            config: settings; defaults when None.
        """
        cfg = config if config is not None else QuakeConfig()
        events = {e.event_id: e for e in self.events}
        recent = list(self.recent)
        pending = list(self.pending)
        touched: set[str] = set()
        relocate: set[str] = set()

        for trig in sorted(triggers, key=lambda t: t.p_time_s):
            target = _attribute(trig, [*events.values(), *recent], cfg)
            if target is not None:
                ev, picked = target
                if ev.event_id in events and len(ev.stations) < cfg.max_event_stations:
                    events[ev.event_id] = _add_station(ev, trig, picked=picked)
                    touched.add(ev.event_id)
                    if picked:
                        relocate.add(ev.event_id)
                continue  # attributed to a closed event, or a full one: nothing new
            pending = [u for u in pending if u.station_id != trig.station_id]
            pending.append(trig)
            group = _consistent_group(trig, pending, cfg)
            if len(group) >= cfg.association.min_stations and len(events) < cfg.max_open_events:
                ev = _new_event(group, {*events, *(e.event_id for e in recent)}, cfg)
                events[ev.event_id] = ev
                touched.add(ev.event_id)
                used = {g.station_id for g in group}
                pending = [u for u in pending if u.station_id not in used]
                # Earlier triggers that did not fit the first group may fit the solution.
                for u in list(pending):
                    hit = _attribute(u, [ev], cfg)
                    if hit is not None:
                        ev = _add_station(ev, u, picked=hit[1])
                        pending.remove(u)
                        if hit[1]:
                            relocate.add(ev.event_id)
                events[ev.event_id] = ev

        horizon = now_s - cfg.association.pair_max_dt_s
        pending = [u for u in pending if u.p_time_s >= horizon][-cfg.max_pending :]

        for obs in observations:
            for eid, ev in events.items():
                st = ev.station(obs.station_id)
                if st is not None:
                    events[eid] = _observe(ev, st, obs)
                    touched.add(eid)

        for eid in relocate:
            ev = events[eid]
            picks = [s for s in ev.stations if s.picked]
            hypo = locate(
                [s.lat for s in picks], [s.lon for s in picks], [s.p_time_s for s in picks], cfg
            )
            events[eid] = replace(ev, hypo=hypo)

        updates: list[QuakeEvent] = []
        still_open: list[_EventState] = []
        for ev in events.values():
            closing = now_s - ev.last_trigger_s >= cfg.association.close_after_s
            if not (closing or ev.event_id in touched):
                still_open.append(ev)
                continue
            snapshot = _snapshot(ev, now_s, cfg, closed=closing)
            key = (
                snapshot.n_stations,
                snapshot.magnitude,
                intensity_ordinal(snapshot.max_intensity),
            )
            if closing:
                updates.append(snapshot)
                recent.append(replace(ev, published=key, closed_at_s=now_s))
                continue
            if _material(ev.published, key, cfg):
                updates.append(snapshot)
                still_open.append(replace(ev, published=key))
            else:
                still_open.append(ev)

        recent = [
            e
            for e in recent
            if e.closed_at_s is None or now_s - e.closed_at_s < cfg.closed_memory_s
        ][-cfg.max_open_events :]
        return AssociationResult(
            associator=Associator(
                pending=tuple(pending), events=tuple(still_open), recent=tuple(recent)
            ),
            updates=tuple(updates),
        )


def _consistent(a: StationTrigger, b: StationTrigger, cfg: QuakeConfig) -> bool:
    """Could P have reached both stations this far apart in time?"""
    d = float(distance_km(a.lat, a.lon, b.lat, b.lon))
    dt = abs(a.p_time_s - b.p_time_s)
    return (
        d <= cfg.association.pair_max_km
        and dt <= cfg.association.pair_max_dt_s
        and dt <= d / cfg.vp_kms + cfg.pair_tolerance_s
    )


def _consistent_group(
    trig: StationTrigger, pending: Sequence[StationTrigger], cfg: QuakeConfig
) -> list[StationTrigger]:
    """Greedy largest set containing ``trig`` whose members are pairwise consistent."""
    group = [trig]
    others = sorted(
        (u for u in pending if u.station_id != trig.station_id and _consistent(trig, u, cfg)),
        key=lambda u: abs(u.p_time_s - trig.p_time_s),
    )
    for u in others:
        if all(_consistent(u, g, cfg) for g in group[1:]):
            group.append(u)
    return group


def _attribute(
    trig: StationTrigger, events: Sequence[_EventState], cfg: QuakeConfig
) -> tuple[_EventState, bool] | None:
    """The event a trigger belongs to and whether it is a usable P pick, or None."""
    for ev in events:
        if ev.station(trig.station_id) is not None:
            return ev, False  # already counted; a second trigger is coda
        h = ev.hypo
        r = float(np.hypot(distance_km(h.lat, h.lon, trig.lat, trig.lon), h.depth_km))
        p_pred = h.origin_s + r / cfg.vp_kms
        s_pred = h.origin_s + r / cfg.vs_kms
        if abs(trig.p_time_s - p_pred) <= cfg.join_tolerance_s:
            return ev, True
        if p_pred <= trig.p_time_s <= s_pred + cfg.absorb_after_s_s:
            return ev, False
    return None


def _add_station(ev: _EventState, trig: StationTrigger, *, picked: bool) -> _EventState:
    if ev.station(trig.station_id) is not None:
        return ev
    st = EventStation(trig.station_id, trig.lat, trig.lon, trig.p_time_s, picked=picked)
    return replace(
        ev,
        stations=(*ev.stations, st),
        last_trigger_s=max(ev.last_trigger_s, trig.p_time_s),
    )


def _observe(ev: _EventState, st: EventStation, obs: StationObservation) -> _EventState:
    new = replace(
        st,
        pga_gal=max(st.pga_gal, obs.pga_gal),
        pgv_cms=max(st.pgv_cms, obs.pgv_cms),
        pd_cm=obs.pd_cm if obs.pd_cm is not None else st.pd_cm,
        pd_snr=obs.pd_snr if obs.pd_cm is not None else st.pd_snr,
    )
    return replace(ev, stations=tuple(new if s is st else s for s in ev.stations))


def _event_id(first_p_s: float, taken: set[str]) -> str:
    stamp = datetime.fromtimestamp(first_p_s, UTC)
    base = f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 100_000}"
    eid, n = base, 1
    while eid in taken:
        n += 1
        eid = f"{base}-{n}"
    return eid


def _new_event(group: Sequence[StationTrigger], taken: set[str], cfg: QuakeConfig) -> _EventState:
    first = min(t.p_time_s for t in group)
    hypo = locate([t.lat for t in group], [t.lon for t in group], [t.p_time_s for t in group], cfg)
    return _EventState(
        event_id=_event_id(first, taken),
        stations=tuple(
            EventStation(t.station_id, t.lat, t.lon, t.p_time_s, picked=True)
            for t in sorted(group, key=lambda t: t.p_time_s)
        ),
        first_trigger_s=first,
        last_trigger_s=max(t.p_time_s for t in group),
        hypo=hypo,
    )


def _material(
    published: tuple[int, float, int] | None, key: tuple[int, float, int], cfg: QuakeConfig
) -> bool:
    if published is None:
        return True
    n, mag, level = published
    return key[0] > n or abs(key[1] - mag) >= cfg.change_magnitude or key[2] != level


def _magnitude(ev: _EventState, cfg: QuakeConfig) -> tuple[float, str]:
    h = ev.hypo
    st = ev.stations
    lat = np.array([s.lat for s in st])
    lon = np.array([s.lon for s in st])
    r = np.hypot(distance_km(h.lat, h.lon, lat, lon), h.depth_km)
    s_minus_p = r / cfg.vs_kms - r / cfg.vp_kms
    clear_of_s = s_minus_p >= cfg.pd_window_s if cfg.pd_skip_s_in_window else np.ones(len(st), bool)
    pd_ok = clear_of_s & np.array(
        [
            s.picked
            and s.pd_cm is not None
            and s.pd_cm > 0
            and (s.pd_snr is None or s.pd_snr >= cfg.pd_min_snr)
            for s in st
        ]
    )
    if pd_ok.any():
        pd = np.array([s.pd_cm or 0.0 for s in st])[pd_ok]
        m = float(np.mean(magnitude_from_pd(pd, r[pd_ok])))
        method = "pd"
    else:
        pga = np.array([s.pga_gal for s in st])
        seen = pga > 0
        if not seen.any():
            return cfg.min_magnitude, "none"
        m = float(np.mean(cfg.ground_motion.magnitude_from_pga(pga[seen], r[seen])))
        method = "pga"
    return float(np.clip(round(m, 2), cfg.min_magnitude, cfg.max_magnitude)), method


def _snapshot(ev: _EventState, now_s: float, cfg: QuakeConfig, *, closed: bool) -> QuakeEvent:
    """The event's current magnitude and expected shaking."""
    h = ev.hypo
    mag, method = _magnitude(ev, cfg)
    st = ev.stations
    s_lat = np.array([s.lat for s in st])
    s_lon = np.array([s.lon for s in st])

    # The covered area, snapped to the cell grid so cells are the same across updates.
    if cfg.region_bbox is not None:
        lat0, lon0, lat1, lon1 = cfg.region_bbox
    else:
        mg = cfg.cell_margin_deg
        lat0, lat1 = float(s_lat.min()) - mg, float(s_lat.max()) + mg
        lon0, lon1 = float(s_lon.min()) - mg, float(s_lon.max()) + mg
    c = cfg.cell_deg
    lat_c = (np.arange(math.floor(lat0 / c), math.ceil(lat1 / c)) + 0.5) * c
    lon_c = (np.arange(math.floor(lon0 / c), math.ceil(lon1 / c)) + 0.5) * c
    g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_c, lon_c, indexing="ij"))

    r = np.hypot(distance_km(h.lat, h.lon, g_lat, g_lon), h.depth_km)
    gm = cfg.ground_motion
    pga = gm.pga_gal(mag, r)
    pgv = gm.pgv_cms(mag, r)
    levels = cwa_intensity_ordinals(pga, pgv, cfg.intensity_scale)

    # Observed shaking overrides a lower prediction near the station that saw it.
    s_pga = np.array([s.pga_gal for s in st])
    s_pgv = np.array([s.pgv_cms for s in st])
    observed = cwa_intensity_ordinals(s_pga, s_pgv, cfg.intensity_scale)
    d_cs = distance_km(g_lat[:, None], g_lon[:, None], s_lat[None, :], s_lon[None, :])
    nearest = np.argmin(d_cs, axis=1)
    near = d_cs[np.arange(len(g_lat)), nearest] <= cfg.station_correction_km
    levels = np.where(near, np.maximum(levels, observed[nearest]), levels)

    s_wave = np.maximum(0.0, r / cfg.vs_kms - (now_s - h.origin_s))
    max_level = int(max(levels.max(initial=0), observed.max(initial=0)))

    keep = np.flatnonzero(levels >= intensity_ordinal(cfg.association.report_min_intensity))
    towns: list[str | None] = [None] * len(keep)
    if cfg.townships and len(keep):
        t_lat = np.array([t.lat for t in cfg.townships])
        t_lon = np.array([t.lon for t in cfg.townships])
        d_ct = distance_km(g_lat[keep, None], g_lon[keep, None], t_lat[None, :], t_lon[None, :])
        towns = [cfg.townships[int(i)].code for i in np.argmin(d_ct, axis=1)]
    cells = tuple(
        CellShaking(
            lat=round(float(g_lat[i]), 4),
            lon=round(float(g_lon[i]), 4),
            pga_gal=float(pga[i]),
            pgv_cms=float(pgv[i]),
            intensity=level_from_ordinal(int(levels[i])),
            s_wave_s=float(s_wave[i]),
            township=town,
        )
        for i, town in zip(keep, towns, strict=True)
    )
    return QuakeEvent(
        event_id=ev.event_id,
        origin_s=h.origin_s,
        lat=h.lat,
        lon=h.lon,
        depth_km=h.depth_km,
        rms_s=h.rms_s,
        magnitude=mag,
        magnitude_method=method,
        station_ids=tuple(s.station_id for s in st),
        max_intensity=level_from_ordinal(max_level),
        cells=cells,
        townships=tuple(sorted({t for t in towns if t is not None})),
        first_trigger_s=ev.first_trigger_s,
        computed_at_s=now_s,
        closed=closed,
        cell_broadcast_level=cell_broadcast_min_level(mag),
    )


def township_intensities(event: QuakeEvent) -> dict[str, str]:
    """The highest CWA level among each township's reported cells, by township code.

    Only cells at or above the configured minimum level are reported, and a cell belongs
    to the township with the nearest centroid (:attr:`QuakeConfig.townships`); cells
    without a township are left out.
    """
    best: dict[str, str] = {}
    for cell in event.cells:
        town = cell.township
        if town is None:
            continue
        if town not in best or intensity_ordinal(cell.intensity) > intensity_ordinal(best[town]):
            best[town] = cell.intensity
    return dict(sorted(best.items()))


# Severity by the highest expected CWA level; our mapping (no national table says this):
# up to 3 people feel it, 4 things fall, 5-/5+ damage to weak buildings, 6- and up serious.
_SEVERITY_FROM_ORDINAL: tuple[Severity, ...] = (
    "Minor", "Minor", "Minor", "Minor", "Moderate", "Severe", "Severe",
    "Extreme", "Extreme", "Extreme",
)  # fmt: skip


def to_alert_candidate(
    event: QuakeEvent, *, detected_at: datetime, config: QuakeConfig | None = None
) -> AlertCandidate:
    """The shared alert candidate for an event.

    ``level`` is the ordinal (0-9) of the highest expected CWA level, and 0 once the event
    is closed (the alert service cancels it after its hold time). ``severity``:
    levels up to 3 Minor, 4 Moderate, 5-/5+ Severe, 6- and above Extreme. The circle is
    centred on the epicentre and reaches the farthest reported cell (at least 10 km).

    Args:
        event: the event to report.
        detected_at: when the processor decided (processing clock, aware).
        config: the settings used for the event (for the minimum level).
    """
    cfg = config if config is not None else QuakeConfig()
    level = 0 if event.closed else intensity_ordinal(event.max_intensity)
    lat_lon = f"{event.lat:.2f}N {event.lon:.2f}E"
    radius = 10.0
    if event.cells:
        far = distance_km(
            event.lat,
            event.lon,
            np.array([c.lat for c in event.cells]),
            np.array([c.lon for c in event.cells]),
        )
        radius = max(radius, float(far.max()) + cfg.cell_deg * 111.0 / 2)
    origin = datetime.fromtimestamp(event.origin_s, UTC)
    state = "ended" if event.closed else f"expected intensity up to {event.max_intensity}"
    return AlertCandidate(
        hazard="earthquake",
        area_code=f"quake-{event.event_id}",
        area_desc=f"Earthquake M{event.magnitude:.1f} near {lat_lon}",
        level=level,
        severity=_SEVERITY_FROM_ORDINAL[level],
        headline=f"Earthquake M{event.magnitude:.1f} near {lat_lon}, {state}",
        description=(
            f"Origin {origin.isoformat(timespec='seconds')}, depth {event.depth_km:.0f} km, "
            f"{event.n_stations} stations; {len(event.cells)} cells at intensity "
            f">= {cfg.association.report_min_intensity}."
        ),
        metric="cwa_intensity_ordinal",
        value=float(level),
        threshold=float(intensity_ordinal(cfg.association.report_min_intensity)),
        event_time=datetime.fromtimestamp(event.computed_at_s, UTC),
        detected_at=detected_at,
        devices=event.station_ids,
        geocodes=event.townships,
        circle=Circle(lat=event.lat, lon=event.lon, radius_km=round(radius, 1)),
        cells=tuple(
            GridCell(
                lat=c.lat,
                lon=c.lon,
                intensity=c.intensity,
                s_wave_s=c.s_wave_s,
                township=c.township,
            )
            for c in event.cells
        ),
        evidence={
            "magnitude": event.magnitude,
            "magnitude_method": event.magnitude_method,
            "depth_km": event.depth_km,
            "origin_time": origin.isoformat(timespec="milliseconds"),
            "epicentre_lat": event.lat,
            "epicentre_lon": event.lon,
            "n_stations": float(event.n_stations),
            "max_intensity": event.max_intensity,
            "rms_residual_s": event.rms_s,
            "cell_broadcast_min_level": event.cell_broadcast_level or "none",
        },
    )
