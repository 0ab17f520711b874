"""Network earthquake detection: association, location, magnitude and expected shaking.

Pure and I/O-free. The Faust agent keeps one :class:`Associator` (a stored state) in its
table, feeds it the station triggers, observations and statuses that
:func:`processors.detectors.seismic.process_packet` produced (the contract's
:class:`~civic_iot.contracts.processing.Trigger`, ``Observation`` and ``StationStatus``),
and publishes an :class:`~civic_iot.contracts.alerts.AlertCandidate`
(:func:`to_alert_candidate`) for every :class:`QuakeEvent` in ``result.updates``::

    result = assoc.step(now_s=t, triggers=[...], observations=[...], stations=[...])
    for event in result.updates:
        publish(to_alert_candidate(event, detected_at=datetime.now(UTC), config=cfg))

The thresholds are the thresholds file's ``quake`` section
(:class:`~civic_iot.thresholds.QuakeThresholds`, where each has its source); the rules:

- **Order.** ``now_s`` is a watermark: every station's data up to it has arrived. A
  trigger, an observation or a station status is taken only once ``now_s`` has passed
  the end of the packet that carried it (a pick may lie a second before the packet that
  found it), and those taken in a step are taken in time order (triggers by P time, then
  station id), so the result does not depend on how stations are spread over partitions
  nor on the order messages arrive in (tested on 1, 4 and 8 partitions, shuffled).
- **Declaration.** Triggers not explained by an open event wait in ``pending``. An
  event is declared from the largest group of pending picks that are pairwise
  consistent with P travel (within ``pair_max_km`` and ``pair_max_dt_s``, and
  ``|dt| <= distance / vp + pair_tolerance_s``) and come from ``min_stations`` distinct
  sites, once it passes the noise tests: picks whose P wave looks human-made (high
  frequency, no low-frequency P pulse) do not count; with only ``min_stations`` picks,
  at least one must look like an earthquake and the location must not be poor; the
  armed stations that should have triggered (amplitude over distance) must have; the
  picks' magnitudes must agree. One station's spike, or a burst on a few neighbours,
  never makes an event. A location from a few picks that leaves the epicentre or the
  magnitude open waits for more, a bounded time (``QuakeConfig.declare_*``).
- **Location.** Grid search over the whole warning region and depth (origin time in
  closed form), coarse to fine around the best few minima, robust to an odd pick, with
  the stations that did NOT trigger as constraints (EPIC): a hypocentre that would have
  reached an armed station nearer than the farthest pick, long enough ago, is penalised.
  The quality (the size of the confidence region, the azimuthal gap) is reported and a
  poor location is flagged. Every station that joins an event is tried as a P pick at
  every relocation: no station is locked out by an early, wrong solution.
- **Magnitude.** Pd (Wu & Zhao 2006, corrected for the station's P-wave filter) where
  it stands ``pd_magnitude_min_snr`` above the noise, updated as picks and seconds of P
  arrive; the P amplitude through the ground-motion model until a Pd qualifies; the PGA
  of stations whose own data show the S wave has passed, once there are three (before
  that, the PGA so far of two stations past their S wave is a floor).
- **Expected shaking.** For each 0.1 x 0.1 degree cell of the warning region and each
  township centroid, PGA and PGV from :class:`GroundMotionModel`, then the CWA level; a
  place near a station (``station_correction_km``) is raised to the level that station
  has observed. The S wave reaches a place at ``origin + R / vs``.
- **Updates.** An event is reported when declared, when it changes materially (a new
  station, magnitude change >= ``change_magnitude``, a different maximum intensity, an
  epicentre moved >= ``change_location_km``) and once more when it closes
  (``closed=True``; its candidate has level 0 and the alert service cancels it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.alerts import AlertCandidate, Circle, GridCell, PlaceShaking, Severity
from civic_iot.contracts.processing import Observation, StationStatus, Trigger
from civic_iot.thresholds import QuakeThresholds
from processors.detectors.intensity import (
    CWA_2020,
    IntensityScale,
    cell_broadcast_min_level,
    cwa_intensity_ordinals,
    intensity_ordinal,
    level_from_ordinal,
)
from processors.detectors.state import stored

__all__ = [
    "TAU_C_MAX_MAGNITUDE",
    "AssociationResult",
    "Associator",
    "CellShaking",
    "EventStation",
    "GroundMotionModel",
    "Hypocentre",
    "PWindow",
    "QuakeConfig",
    "QuakeEvent",
    "Township",
    "distance_km",
    "locate",
    "magnitude_from_pd",
    "magnitude_from_tau_c",
    "magnitudes_from_tau_c",
    "to_alert_candidate",
    "township_intensities",
]

FloatArray = NDArray[np.float64]
_T = TypeVar("_T")
EARTH_RADIUS_KM = 6371.0

# Wu & Zhao (2006), GRL 33 L16312: log10 Pd = A + B M + C log10 R (Pd cm, R hypocentral km).
WU_ZHAO_A, WU_ZHAO_B, WU_ZHAO_C = -3.463, 0.729, -1.374
# Wu & Kanamori (2005), BSSA 95: log10 tau_c = A + B M (tau_c s).
WU_KANAMORI_A, WU_KANAMORI_B = -1.716, 0.296


#: Nearly simultaneous picks (within ``pair_tolerance_s``) pair up to this many times
#: ``pair_max_km`` apart (a deep source between them; :func:`_consistent`).
WIDE_PAIR_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class GroundMotionModel:
    """Median peak motion at hypocentral distance R (km) for magnitude M.

    PGA (gal): ``log10 PGA = a + b M - log10(R + c 10^(0.5 M)) - d R``, the Campbell-type
    form Wu, Shin & Teng (2001) fit to Taiwan data; coefficients as we recall them,
    *unconfirmed* for Taiwan. About 150 gal at 10 km and 11 gal at 100 km for M 6.

    PGV (cm/s): Si & Midorikawa (1999, J. Struct. Constr. Eng. AIJ 523, 63-70), crustal
    events on engineering bedrock (Vs 600 m/s): ``log10 PGV = 0.58 M + 0.0038 D - 1.29 -
    log10(X + 0.0028 10^(0.5 M)) - 0.002 X`` (D depth km, X fault distance km, taken as
    the hypocentral distance: a point source; sigma 0.23), times ``pgv_site`` to the
    surface: 1.4, Midorikawa et al. (1994) ``log10 amp = 1.83 - 0.66 log10 Vs30`` at Vs30
    about 350 m/s (a stiff-soil site). Published, widely used for ShakeMaps in Japan's
    similar tectonics; a Taiwan-specific PGV relation (Wu, Shin & Chang 2001) would be
    preferred once its coefficients are confirmed. The magnitude is taken as Mw.
    """

    pga_a: float = 0.00215
    pga_b: float = 0.581
    pga_c: float = 0.00871
    pga_d: float = 0.00414
    pgv_a: float = 0.58
    pgv_h: float = 0.0038
    pgv_b: float = -1.29
    pgv_c: float = 0.0028
    pgv_d: float = 0.002
    pgv_site: float = 1.4

    def pga_gal(self, magnitude: float, hyp_km: FloatArray) -> FloatArray:
        """Median PGA, gal, at hypocentral distances ``hyp_km`` (km)."""
        r = np.asarray(hyp_km, dtype=np.float64)
        return np.asarray(10 ** self._log_pga(magnitude, r), dtype=np.float64)

    def pgv_cms(self, magnitude: float, hyp_km: FloatArray, depth_km: float = 0.0) -> FloatArray:
        """Median PGV at the surface, cm/s, at hypocentral distances ``hyp_km`` (km) from
        a source ``depth_km`` (km) deep."""
        r = np.asarray(hyp_km, dtype=np.float64)
        log_pgv = (
            self.pgv_a * magnitude
            + self.pgv_h * depth_km
            + self.pgv_b
            - np.log10(r + self.pgv_c * 10 ** (0.5 * magnitude))
            - self.pgv_d * r
        )
        return np.asarray(self.pgv_site * 10**log_pgv, dtype=np.float64)

    def magnitude_from_pga(
        self, pga_gal: FloatArray, hyp_km: FloatArray, lo: float = 1.0, hi: float = 9.5
    ) -> FloatArray:
        """Invert :meth:`pga_gal` per station (monotonic in M), clipped to [lo, hi]."""
        grid = np.linspace(lo, hi, 426)  # 0.02 magnitude steps
        r = np.asarray(hyp_km, dtype=np.float64)
        target = np.log10(np.maximum(np.asarray(pga_gal, dtype=np.float64), 1e-6))
        # Each station's curve (``_log_pga(grid[None, :], r[:, None])``, increasing) is
        # read at four knots only: its ends and the two around the target, found by
        # bisection. A curve rises by 0.0016 or more per knot (``pga_b`` per magnitude
        # against at most 0.5 for the log term), far above its rounding, so the knots at
        # or below the target are a prefix, as many as :func:`_interp_rows` counts; and
        # a ufunc gives each knot's value the same number as in the whole curve. The
        # whole curves were 426 logs per station, hundreds of stations per update.
        below = np.zeros(r.size, dtype=np.intp)  # knots known at or below the target
        above = np.full(r.size, grid.size, dtype=np.intp)  # first knot known above
        while True:
            open_ = np.flatnonzero(below < above)
            if not open_.size:
                break
            mid = (below[open_] + above[open_]) // 2
            up = self._log_pga(grid[mid], r[open_]) <= target[open_]
            below[open_] = np.where(up, mid + 1, below[open_])
            above[open_] = np.where(up, above[open_], mid)
        j = np.clip(below - 1, 0, grid.size - 2)
        knots = np.stack((np.zeros_like(j), j, j + 1, np.full_like(j, grid.size - 1)), axis=1)
        curves = self._log_pga(grid[knots], r[:, None])  # (stations, 4)
        return _interp_rows(target, curves, grid, knots)

    def _log_pga(self, magnitude: float | FloatArray, r: FloatArray) -> FloatArray:
        return np.asarray(
            self.pga_a
            + self.pga_b * magnitude
            - np.log10(r + self.pga_c * 10 ** (0.5 * np.asarray(magnitude)))
            - self.pga_d * r,
            dtype=np.float64,
        )


def _interp_rows(
    x: FloatArray, xp: FloatArray, fp: FloatArray, knots: NDArray[np.intp] | None = None
) -> FloatArray:
    """``np.interp(x[i], xp[i], fp)`` for every row ``i`` of ``xp`` (each increasing),
    the same numbers as numpy's loop (its formula and its ends) in one pass: a row per
    station was a call per station, hundreds per update of a strong quake.

    ``knots`` (rows, 4): ``xp`` holds only each row's first knot, numpy's ``j`` and
    ``j + 1`` and its last knot, at these indices of ``fp`` and in this order."""
    x = np.asarray(x, dtype=np.float64)
    n = fp.size
    if knots is not None:
        j = knots[:, 1]
        x0, x1 = xp[:, 1], xp[:, 2]
    else:
        # numpy's j: the last knot at or below x (x below the first: fp[0]; above the
        # last or on it: fp[-1]).
        j = np.clip(np.sum(xp <= x[:, None], axis=1) - 1, 0, n - 2)
        rows = np.arange(x.size)
        x0, x1 = xp[rows, j], xp[rows, j + 1]
    y0, y1 = fp[j], fp[j + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (y1 - y0) / (x1 - x0) * (x - x0) + y0
        again = (y1 - y0) / (x1 - x0) * (x - x1) + y1
    out = np.where(np.isnan(out), np.where(np.isnan(again) & (y0 == y1), y0, again), out)
    out = np.where(x < xp[:, 0], fp[0], out)
    out = np.where(x >= xp[:, -1], fp[-1], out)
    return np.asarray(np.where(np.isnan(x), np.nan, out), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Township:
    """A township (鄉鎮市區) centroid for naming cells and warning places: code, degrees."""

    code: str
    lat: float
    lon: float


#: Depths of the coarse location grid, km (clipped to the thresholds' depth range).
COARSE_DEPTHS_KM = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0)


@dataclass(frozen=True, slots=True)
class QuakeConfig:
    """Network settings that are not thresholds. Times s, distances km, angles degrees.

    Attributes:
        association: the thresholds file's ``quake`` section (every threshold, with
            its source).
        closed_memory_s: how long a closed event still absorbs late triggers (s).
        pd_window_s: the stations' P window (3 s, as in the station detector).
        station_highpass_hz: the stations' high-pass on acceleration (0.075 Hz), part of
            the P-wave filter the magnitude corrects Pd for.
        min_magnitude, max_magnitude: magnitude clip.
        cell_deg: shaking grid cell size (0.1 deg, the Civil IoT micro-zoning grid).
        township_cell_km: a cell is named for the nearest township centroid within this
            distance (beyond, at sea, it has no township).
        station_correction_km: a place this close to a station takes at least the level
            that station observed.
        change_magnitude, change_location_km: what is worth a new update.
        max_pending, max_event_stations, max_open_events, max_location_picks,
            max_constraint_stations, max_inbox: bounds (memory, and the location's cost).
        location_spread_km: beyond ``max_location_picks`` picks a location takes the
            first pick of each neighbourhood this wide before a second one there.
        max_location_s_picks: S picks a relocation takes, from its first P picks (the
            nearest stations: their S - P times fix the depth best); a new S pick
            relocates an event only while it has fewer (the location's cost).
        constraint_radius_km: stations that did not trigger constrain the location within
            this distance of the first pick.
        declare_max_magnitude_span: an event is not declared from fewer than
            2 x ``min_stations`` picks while the depths they allow change its magnitude
            by more than this (the issue's target for the first magnitude, 0.7: only
            until the S wave could have reached the nearest pick from every depth
            allowed, and from five picks no longer than ``declare_wide_wait_s`` after
            the fifth), nor while their confidence region reaches beyond the
            thresholds' ``declare_max_uncertainty_km``, unless no pick (P time) came
            for ``declare_max_wait_s`` (s: a packet, then two seconds).
        declare_wide_km, declare_wide_max_picks, declare_wide_wait_s: fewer than
            ``declare_wide_max_picks`` picks whose confidence region reaches beyond
            ``declare_wide_km`` wait for more, but no longer than ``declare_wide_wait_s``
            after the group's fifth pick (s): picks along one coast fit a deep source
            near it and a shallow one far out alike, and the next second's picks, a step
            inland, tell them apart; the bound keeps the alert within the issue's 3 s
            after the fifth P wherever the region stays wide (one-sided networks): with
            1 s packets a decision comes at most a second after the wait ends, and a
            fifth pick 0.1-0.2 s after the fifth P is common, so 3 - 1 - 0.2 s. At 1.5 s
            a 60 km deep M7.4 off Yilan under noise was declared 48 km out a second
            before the picks that put it 2 km off; at 2 s two quakes under noise, whose
            fifth pick came late, were declared just past the fifth P + 3 s.
        s_floor_min_s, s_floor_min_stations: the PGA of ``s_floor_min_stations``
            stations or more that have recorded ``s_floor_min_s`` of the S wave (s) is
            a floor for a magnitude from the P wave (:func:`_s_wave_floor`).
        velocity_scales, velocity_min_picks, velocity_min_gain: a settled event with
            at least ``velocity_min_picks`` picks is also located with the P velocity
            times each of ``velocity_scales`` (the crust is rarely the model's: 4-12%
            off is common, and an 8% slower world put depths 20-33 km too shallow); one
            is kept when its cost (squared pick errors over the pick error) is lower by
            ``velocity_min_gain`` (chi-square, one more unknown, 95%) times the misfit
            left per degree of freedom, at least ``velocity_min_spread`` (picks half as
            good as the pick error assumes): an F test, so the model's velocity stays
            unless the picks' moveout says otherwise.
        townships: centroids to name cells and warn places by; empty means no names.
        ground_motion, intensity_scale: the models.
    """

    association: QuakeThresholds = field(default_factory=QuakeThresholds)
    closed_memory_s: float = 120.0
    pd_window_s: float = 3.0
    station_highpass_hz: float = 0.075
    min_magnitude: float = 2.0
    max_magnitude: float = 8.5
    cell_deg: float = 0.1
    township_cell_km: float = 15.0
    station_correction_km: float = 10.0
    change_magnitude: float = 0.2
    change_location_km: float = 5.0
    max_pending: int = 256
    max_event_stations: int = 1000
    max_open_events: int = 8
    max_location_picks: int = 40
    max_location_s_picks: int = 10
    location_spread_km: float = 10.0
    max_constraint_stations: int = 60
    max_inbox: int = 2000
    constraint_radius_km: float = 150.0
    declare_max_magnitude_span: float = 0.7
    declare_max_wait_s: float = 3.0
    declare_wide_km: float = 60.0
    declare_wide_max_picks: int = 9
    declare_wide_wait_s: float = 1.8
    s_floor_min_s: float = 1.0
    s_floor_min_stations: int = 2
    velocity_scales: tuple[float, ...] = (0.88, 0.92, 0.96, 1.04, 1.08)
    velocity_min_picks: int = 10
    velocity_min_gain: float = 3.84
    velocity_min_spread: float = 0.25
    townships: tuple[Township, ...] = ()
    ground_motion: GroundMotionModel = field(default_factory=GroundMotionModel)
    intensity_scale: IntensityScale = CWA_2020


@stored
class PWindow:
    """A station's P-wave features over its first ``p_window_s`` seconds of P: Pd cm with
    its ratio to the displacement noise, Pa gal with its ratio to the band's noise,
    tau_c s (None: not measured)."""

    p_window_s: float
    pd_cm: float | None = None
    pd_snr: float | None = None
    pa_gal: float | None = None
    pa_snr: float | None = None
    tau_c_s: float | None = None


#: Shorter P windows an event station keeps (packets are 1 s and the P window 3 s: its
#: first three windows are the shorter ones).
MAX_SHORTER_WINDOWS = 4


@stored
class EventStation:
    """A station's pick and what it has seen. ``picked``: its P time locates the event
    (otherwise it triggered on the S wave or the coda, or does not fit yet).

    Times epoch s; PGA and Pa gal, PGV and Pv cm/s, Pd cm, tau_c and p_window s.
    """

    station_id: str
    lat: float
    lon: float
    p_time_s: float
    picked: bool
    pga_gal: float = 0.0
    pgv_cms: float = 0.0
    pd_cm: float | None = None
    pd_snr: float | None = None
    pv_cms: float | None = None
    pa_gal: float | None = None
    pa_snr: float | None = None
    tau_c_s: float | None = None
    p_window_s: float = 0.0
    transient: bool = False
    #: The end of the newest packet observed, epoch s (0: unknown, the stream clock).
    seen_until_s: float = 0.0
    #: The features of the shorter windows before the current one, shortest first: near
    #: the source the S wave arrives within the 3 s P window (1.7 s after P at 14 km)
    #: and sets its peaks, while a shorter window still measures the P wave alone.
    shorter: tuple[PWindow, ...] = ()
    #: The station's S pick in the window its P pick opened, epoch s (None: none yet).
    s_time_s: float | None = None

    def features(
        self, max_window_s: float = math.inf, min_shorter_s: float = 0.0
    ) -> PWindow | None:
        """The features of the longest window at most ``max_window_s`` long (s); a window
        shorter than the current one only if it is at least ``min_shorter_s`` long."""
        if self.p_window_s <= max_window_s:
            return PWindow(
                self.p_window_s, self.pd_cm, self.pd_snr, self.pa_gal, self.pa_snr, self.tau_c_s
            )
        return next(
            (w for w in reversed(self.shorter) if min_shorter_s <= w.p_window_s <= max_window_s),
            None,
        )


@stored
class Hypocentre:
    """A location: origin time (epoch s), epicentre (degrees), depth (km), RMS P residual
    of the picks (s), and its quality: the farthest epicentre within the confidence
    region (km), the depths it spans (km), the largest azimuthal gap between picks seen
    from the epicentre (degrees), the picks used, the stations that did not trigger
    used as constraints, and ``quality`` "good", "fair" or "poor" (see the thresholds'
    ``poor_location_km``)."""

    origin_s: float
    lat: float
    lon: float
    depth_km: float
    rms_s: float
    uncertainty_km: float = 0.0
    gap_deg: float = 360.0
    n_picks: int = 0
    n_constraints: int = 0
    quality: str = "poor"
    #: Shallowest and deepest depth within the confidence region, km (None: unknown).
    depth_range_km: tuple[float, float] | None = None
    #: The P velocity the picks chose, as a factor of the model's (1: the model's; see
    #: ``QuakeConfig.velocity_scales``).
    vp_scale: float = 1.0
    #: S picks used (of stations among the P picks).
    n_s_picks: int = 0


@dataclass(frozen=True, slots=True)
class CellShaking:
    """Expected shaking in one grid cell: centre degrees, PGA gal, PGV cm/s, CWA level,
    seconds from ``computed_at_s`` until the S wave (0: arrived), nearest township code."""

    lat: float
    lon: float
    pga_gal: float
    pgv_cms: float
    intensity: str
    s_wave_s: float
    township: str | None = None


@dataclass(frozen=True, slots=True)
class PlaceWarning:
    """A township's expected CWA level and the S wave's arrival there, epoch s."""

    township: str
    intensity: str
    s_arrival_s: float


@dataclass(frozen=True, slots=True)
class QuakeEvent:
    """One earthquake as the network sees it at ``computed_at_s``.

    Attributes:
        event_id: stable across updates (UTC time of the first trigger).
        origin_s, lat, lon, depth_km, rms_s: the hypocentre (epoch s, degrees, km, s).
        magnitude: estimated magnitude; ``magnitude_method`` "pd", "pa", "pga" or "none".
        station_ids: every station attributed to the event.
        max_intensity: the highest expected or observed CWA level anywhere.
        cells: cells at or above the configured minimum level.
        townships: township codes warned (at or above the minimum level now or at an
            earlier update of this event), sorted.
        first_trigger_s: earliest P time, epoch s.
        computed_at_s: the stream time of this estimate, epoch s.
        closed: the event is over; this is its last report.
        cell_broadcast_level: lowest level that gets a public cell broadcast under the CWA
            2024 criteria for this magnitude, or None.
        location: the hypocentre with its quality.
        places: the warning per township (``townships``, in that order).
        n_picks: stations whose P pick locates the event.
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
    location: Hypocentre | None = None
    places: tuple[PlaceWarning, ...] = ()
    n_picks: int = 0

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
    #: (n_stations, magnitude, max intensity ordinal, lat, lon) last reported, or None.
    published: tuple[int, float, int, float, float] | None = None
    closed_at_s: float | None = None
    #: Townships warned at an earlier update: they stay listed until the event ends.
    warned: tuple[str, ...] = ()
    #: Stream time of the last relocation, s.
    located_at_s: float = 0.0

    def station(self, station_id: str) -> EventStation | None:
        return next((s for s in self.stations if s.station_id == station_id), None)

    @property
    def picks(self) -> tuple[EventStation, ...]:
        return tuple(s for s in self.stations if s.picked)


@dataclass(frozen=True, slots=True)
class AssociationResult:
    """The new associator and the events to report (declared, changed, closed)."""

    associator: Associator
    updates: tuple[QuakeEvent, ...]


# --------------------------------------------------------------------------- geometry


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


def grid_distance_km(
    lat_ax: FloatArray, lon_ax: FloatArray, lat: FloatArray, lon: FloatArray
) -> FloatArray:
    """:func:`distance_km` from every point of the grid ``lat_ax`` x ``lon_ax`` (rows of
    latitude, the points in ``np.meshgrid(lat_ax, lon_ax, indexing="ij")`` order) to
    every point (``lat``, ``lon``), shape (grid points, points): the same terms, each
    worked out once per grid row or column rather than once per grid point (the
    locator's trial epicentres against every pick and silent station)."""
    p1 = np.radians(np.asarray(lat_ax, dtype=np.float64))[:, None]
    p2 = np.radians(np.asarray(lat, dtype=np.float64))[None, :]
    along = np.sin((p2 - p1) / 2) ** 2  # (rows, points)
    cosines = np.cos(p1) * np.cos(p2)  # (rows, points)
    dl = np.radians(
        np.asarray(lon, dtype=np.float64)[None, :] - np.asarray(lon_ax, dtype=np.float64)[:, None]
    )
    across = np.sin(dl / 2) ** 2  # (columns, points)
    h = along[:, None, :] + cosines[:, None, :] * across[None, :, :]
    h = h.reshape(-1, h.shape[-1])
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1))), np.float64)


def _azimuth_deg(lat0: float, lon0: float, lat: FloatArray, lon: FloatArray) -> FloatArray:
    """Azimuths from (lat0, lon0) to points, degrees (flat-earth: fine at these ranges)."""
    dx = (np.asarray(lon) - lon0) * math.cos(math.radians(lat0))
    dy = np.asarray(lat) - lat0
    return np.asarray(np.degrees(np.arctan2(dx, dy)) % 360.0, dtype=np.float64)


def _gap_deg(lat0: float, lon0: float, lat: FloatArray, lon: FloatArray) -> float:
    az = np.sort(_azimuth_deg(lat0, lon0, lat, lon))
    if az.size < 2:
        return 360.0
    gaps = np.diff(np.concatenate((az, [az[0] + 360.0])))
    return float(gaps.max())


# --------------------------------------------------------------------------- location


@dataclass(frozen=True, slots=True)
class _Constraints:
    """Armed stations that did not trigger: position degrees, armed since and data until
    (epoch s), noise of the trigger band (gal), the watermark ``now_s``, and the
    magnitude the event is believed to have (None: not known yet)."""

    lat: FloatArray
    lon: FloatArray
    since_s: FloatArray
    until_s: FloatArray
    now_s: float
    noise_gal: FloatArray = field(default_factory=lambda: np.zeros(0))
    magnitude: float | None = None
    ground_motion: GroundMotionModel = field(default_factory=GroundMotionModel)

    @classmethod
    def none(cls, now_s: float = 0.0) -> _Constraints:
        e = np.zeros(0)
        return cls(e, e, e, e, now_s, e)

    def __len__(self) -> int:
        return int(self.lat.shape[0])


def _costs_for(
    lat_ax: FloatArray,
    lon_ax: FloatArray,
    depths: FloatArray,
    p_lat: FloatArray,
    p_lon: FloatArray,
    p_t: FloatArray,
    cons: _Constraints,
    thr: QuakeThresholds,
    sigmas: tuple[float, ...] = (),
    n_s: int = 0,
) -> tuple[list[FloatArray], FloatArray]:
    """Cost, for each pick error in ``sigmas`` (s; none given: ``pick_sigma_s``), and
    origin time of every (epicentre, depth) pair, shape (depths, epicentres: the grid
    ``lat_ax`` x ``lon_ax`` in :func:`grid_distance_km`'s order); the travel times are
    worked out once. The last ``n_s`` picks are S picks (of stations among the P picks):
    their travel time at ``vs_kms``, their error ``s_pick_sigma_s`` over
    ``pick_sigma_s`` times each of ``sigmas``.

    The cost is in units of the pick error: squared P residuals over ``pick_sigma_s``
    squared, each capped at 9 (an odd pick, an S taken for P, weighs like a 3-sigma one),
    plus the squared delay by which an armed station that did not trigger should have
    (EPIC's "not yet arrived"), capped like a pick (a noisy station may miss a weak P),
    and once the magnitude is known only where that P would stand
    ``unpicked_min_pa_snr`` above the station's noise, plus a weak prior on depth. The
    origin is the median of ``p - travel time``.
    """
    sigmas = sigmas or (thr.pick_sigma_s,)
    z2 = (np.asarray(depths, dtype=np.float64) ** 2)[:, None, None]
    whole = depths.size * lat_ax.size * lon_ax.size >= _PICK_COSTS_FROM
    if whole:
        key = (
            *(a.tobytes() for a in (lat_ax, lon_ax, depths, p_lat, p_lon, p_t)),
            thr.vp_kms, thr.depth_prior_km, thr.depth_prior_sigma_km, sigmas,
            n_s, thr.vs_kms, thr.s_pick_sigma_s,
        )  # fmt: skip
        hit = _PICK_COSTS.get(key)
        if hit is not None:
            epi, costs, origin = hit
            return _late_costs(lat_ax, lon_ax, z2, epi, costs, origin, cons, thr, sigmas)
    epi = grid_distance_km(lat_ax, lon_ax, p_lat, p_lon)
    # Each array of the trial points' size worked in place (the same numbers as the
    # expressions in the comments, without their temporaries).
    delay = epi**2 + z2  # (D, G, N): p - sqrt(epi ** 2 + z2) / vp
    np.sqrt(delay, out=delay)
    if n_s:
        delay[:, :, :-n_s] /= thr.vp_kms
        delay[:, :, -n_s:] /= thr.vs_kms
    else:
        delay /= thr.vp_kms
    np.subtract(p_t[None, None, :], delay, out=delay)
    origin = _median_last(delay)
    delay -= origin[:, :, None]
    # A weak prior on depth: three or four picks do not resolve depth from origin time,
    # and a free depth slides along that trade-off (EPIC and ElarmS fix it at 8 km).
    prior = ((depths[:, None] - thr.depth_prior_km) / thr.depth_prior_sigma_km) ** 2
    costs = []
    for sigma in sigmas:
        res = delay / sigma
        if n_s:
            res[:, :, -n_s:] *= thr.pick_sigma_s / thr.s_pick_sigma_s
        res *= res
        costs.append(np.sum(np.minimum(res, 9.0, out=res), axis=2) + prior)
    if whole:
        if len(_PICK_COSTS) >= _PICK_COSTS_KEPT:
            _PICK_COSTS.clear()
        for a in (epi, origin, *costs):
            a.setflags(write=False)
        _PICK_COSTS[key] = (epi, costs, origin)
    return _late_costs(lat_ax, lon_ax, z2, epi, costs, origin, cons, thr, sigmas)


#: :func:`_costs_for`'s picks' part of a whole-region grid (this many trial hypocentres
#: or more) by grid, picks and model: a declaration locates its picks alone, then
#: with the silent stations (:func:`_largest_magnitude`, :func:`_declare`). Bounded
#: like :data:`_ALONE`; the arrays are never written.
_PICK_COSTS_FROM = 4096
_PICK_COSTS: dict[tuple[Any, ...], tuple[FloatArray, list[FloatArray], FloatArray]] = {}
_PICK_COSTS_KEPT = 16


def _late_costs(
    lat_ax: FloatArray,
    lon_ax: FloatArray,
    z2: FloatArray,
    epi: FloatArray,
    costs: list[FloatArray],
    origin: FloatArray,
    cons: _Constraints,
    thr: QuakeThresholds,
    sigmas: tuple[float, ...],
) -> tuple[list[FloatArray], FloatArray]:
    """:func:`_costs_for` from the picks' part (``epi``: the trial epicentres' distances
    to the picks, ``costs`` for each of ``sigmas``, ``origin``; ``z2``: the depths
    squared, (D, 1, 1)): the late silent stations' costs added, in new arrays."""
    if not len(cons):
        return list(costs), origin
    epi_c = grid_distance_km(lat_ax, lon_ax, cons.lat, cons.lon)
    # Only a station nearer a trial epicentre than that point's farthest pick can be
    # late (the rest cost nothing): only those pairs' travel times are worked out (a
    # third of them or fewer near a solution), and only the columns of the stations
    # near some point are summed.
    far = epi.max(axis=1)  # (G,)
    pair = epi_c < far[:, None]
    near = np.flatnonzero(pair.any(axis=0))
    if not near.size:
        return list(costs), origin
    g_at, c_at = np.nonzero(pair[:, near])  # c_at: a column of ``near``
    at_c = near[c_at]
    # The farthest pick's travel time, from its distance: the same number as the
    # largest of the picks' times (each step of the travel time is monotonic).
    tt_far = np.sqrt(far[None, :] ** 2 + z2[:, :, 0]) / thr.vp_kms  # (D, G)
    tt_c = epi_c[g_at, at_c][None, :] ** 2 + z2[:, :, 0]  # (D, K): sqrt(. + z2) / vp
    np.sqrt(tt_c, out=tt_c)
    tt_c /= thr.vp_kms
    tp_c = origin[:, g_at]  # + tt_c
    tp_c += tt_c
    limit = np.minimum(cons.until_s, cons.now_s)[at_c][None, :] - thr.unpicked_margin_s
    late = tp_c >= cons.since_s[at_c][None, :]  # & (tp_c < limit) & (tt_c < tt_far[:, g_at])
    late &= tp_c < limit
    late &= tt_c < tt_far[:, g_at]
    if cons.magnitude is not None and cons.noise_gal.size and late.any():
        # The P amplitude only matters where a station is late at all.
        bar = thr.unpicked_min_pa_snr * np.maximum(cons.noise_gal, 1e-3)
        late &= _heard(
            cons.ground_motion, pa_reading(cons.magnitude, thr), thr.p_to_s_ratio,
            tt_c * thr.vp_kms, bar, at_c, late,
        )  # fmt: skip
    d_at, k_at = np.nonzero(late)
    if not d_at.size:
        return list(costs), origin
    # Summed over the near stations' columns, zeros where none is late: the same sums
    # to the last bit as the dense form. Only the trial points with a late station
    # have a row (a third of them or fewer): the others' sum is 0.0, and adding it
    # changes no cost.
    point = d_at * origin.shape[1] + g_at[k_at]
    has = np.zeros(origin.size, dtype=np.bool_)
    has[point] = True
    rows = np.flatnonzero(has)
    row = (np.cumsum(has) - 1)[point]
    col = c_at[k_at]
    short = limit[0, k_at] - tp_c[d_at, k_at]
    out = []
    for sigma, cost in zip(sigmas, costs, strict=True):
        v = np.minimum(short, 3.0 * sigma) / sigma
        squares = np.zeros((rows.size, near.size))
        squares[row, col] = v * v
        total = cost.copy()
        total.reshape(-1)[rows] += np.sum(squares, axis=1)
        out.append(total)
    return out, origin


def _heard(
    gm: GroundMotionModel,
    magnitude: float,
    ratio: float,
    r_km: FloatArray,
    bar: FloatArray,
    station: NDArray[np.intp],
    asked: NDArray[np.bool_],
) -> NDArray[np.bool_]:
    """Where ``asked``: ``ratio * gm.pga_gal(magnitude, r_km) >= bar[station]`` (the
    same booleans; elsewhere any), ``r_km`` (depths, pairs) and ``station`` each pair's.

    The amplitude falls strictly with distance (its log by at least ``pga_d`` per km),
    so each station is above its bar up to one distance and under it beyond
    (:func:`_crossings`). Distances clear of that crossing by :data:`_HEARD_MARGIN_KM`
    are decided from it: over that margin the amplitude changes by a ten-thousandth at
    least, ten orders of magnitude above its rounding. Only the few within are
    evaluated (a ufunc gives a value the same number wherever it stands in an array).
    An amplitude per late pair of every trial point, gathered and scattered back, was a
    quarter of a whole-region location; a few pairs (a refinement's box) are simply
    evaluated.
    """
    if np.count_nonzero(asked) < 4096 or not float(r_km.max()) < _HEARD_TOP_KM:
        at = np.nonzero(asked)
        out = np.zeros(asked.shape, dtype=np.bool_)
        out[at] = ratio * gm.pga_gal(magnitude, r_km[at]) >= bar[station[at[1]]]
        return out
    lo, hi = _crossings(gm, magnitude, ratio, bar)
    out = r_km < (lo - _HEARD_MARGIN_KM)[station]
    unsure = np.nonzero(asked & ~out & (r_km <= (hi + _HEARD_MARGIN_KM)[station]))
    if unsure[0].size:
        out[unsure] = ratio * gm.pga_gal(magnitude, r_km[unsure]) >= bar[station[unsure[1]]]
    return out


#: :func:`_heard`'s decided distances: hypocentral, km, under this bound (a larger one
#: is evaluated), decided this far (km) from a station's crossing.
_HEARD_TOP_KM = 20_000.0
_HEARD_MARGIN_KM = 0.02
#: :func:`_crossings` by (model, magnitude, ratio, bars); a location asks for the same
#: ones in every trial grid. Bounded like :data:`_ALONE`.
_CROSSINGS: dict[tuple[GroundMotionModel, float, float, bytes], tuple[FloatArray, FloatArray]] = {}
_CROSSINGS_KEPT = 64


def _crossings(
    gm: GroundMotionModel, magnitude: float, ratio: float, bar: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per bar, distances (km) ``lo`` < ``hi`` at which ``ratio * gm.pga_gal(magnitude,
    .)`` is at or above the bar (``lo``) and under it (``hi``), by bisection over
    [0, :data:`_HEARD_TOP_KM`]; ``lo`` -inf and ``hi`` 0 where it is under the bar
    everywhere (or the bar is NaN), ``lo`` the bound and ``hi`` +inf where above it
    everywhere."""
    key = (gm, magnitude, ratio, bar.tobytes())
    hit = _CROSSINGS.get(key)
    if hit is not None:
        return hit
    lo = np.zeros(bar.size)
    hi = np.full(bar.size, _HEARD_TOP_KM)
    at_lo = ratio * gm.pga_gal(magnitude, lo) >= bar
    at_hi = ratio * gm.pga_gal(magnitude, hi) >= bar
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        up = ratio * gm.pga_gal(magnitude, mid) >= bar
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    lo = np.where(at_hi, _HEARD_TOP_KM, np.where(at_lo, lo, -np.inf))
    hi = np.where(at_hi, np.inf, np.where(at_lo, hi, 0.0))
    if len(_CROSSINGS) >= _CROSSINGS_KEPT:
        _CROSSINGS.clear()
    _CROSSINGS[key] = (lo, hi)
    return lo, hi


def _median_last(x: FloatArray) -> FloatArray:
    """``np.median(x, axis=-1)`` for data without NaN, to the last bit (the middle one
    or the mean of the middle two), without its checks and copies: the locator takes
    one for every trial hypocentre."""
    n = x.shape[-1]
    h = n // 2
    if n % 2:
        return np.asarray(np.partition(x, h, axis=-1)[..., h], dtype=np.float64)
    part = np.partition(x, (h - 1, h), axis=-1)
    return np.asarray((part[..., h - 1] + part[..., h]) / 2.0, dtype=np.float64)


def locate(
    lats: Sequence[float],
    lons: Sequence[float],
    p_times_s: Sequence[float],
    config: QuakeConfig,
    *,
    constraints: _Constraints | None = None,
    around: Hypocentre | None = None,
    s_picks: Sequence[tuple[float, float, float]] = (),
) -> Hypocentre:
    """Grid-search hypocentre and origin time from P picks (and S picks).

    For each trial hypocentre the origin time is solved in closed form (the median of
    ``p - travel time``), so only latitude, longitude and depth are searched: the whole
    warning region (``region_deg``) at ``search_step_deg`` and :data:`COARSE_DEPTHS_KM`,
    or a box around ``around`` (a relocation), then three grids each four times finer
    around the three best distinct minima (mirror solutions of a poor geometry are kept
    until the finer grids decide). Cost: ``len(picks) + len(constraints)`` distances per
    trial point, a few thousand points in all.

    Args:
        lats, lons, p_times_s: the picks, degrees and epoch s.
        config: the settings (velocities, region, depth range, pick error).
        constraints: armed stations that did not trigger (see :func:`_costs_for`).
        around: search near this hypocentre only (a relocation with more picks).
        s_picks: S picks of stations among the P picks, (lat, lon, S time epoch s): the S
            - P time is a distance, so a station's S pick fixes how far the source is
            where P picks on one side, or all at one distance, leave it open (depth and
            origin time trade; a one-sided network slides the epicentre along its
            azimuth). Weighted by ``s_pick_sigma_s``; the RMS, gap and pick count are
            the P picks'.
    """
    thr = config.association
    n_p, n_s = len(p_times_s), len(s_picks)
    p_lat = np.asarray([*lats, *(s[0] for s in s_picks)], dtype=np.float64)
    p_lon = np.asarray([*lons, *(s[1] for s in s_picks)], dtype=np.float64)
    p_t = np.asarray([*p_times_s, *(s[2] for s in s_picks)], dtype=np.float64)
    cons = constraints if constraints is not None else _Constraints.none()
    z_lo, z_hi = thr.depth_km
    lat0, lon0, lat1, lon1 = thr.region_deg
    step = thr.search_step_deg
    if around is None:
        lat_ax = np.arange(lat0 + step / 2, lat1, step)
        lon_ax = np.arange(lon0 + step / 2, lon1, step)
        depths = np.clip(np.asarray(COARSE_DEPTHS_KM), z_lo, z_hi)
        depths = np.unique(depths)
    else:
        span = 2.0 * step
        lat_ax = np.arange(around.lat - span, around.lat + span + step / 8, step / 4)
        lon_ax = np.arange(around.lon - span, around.lon + span + step / 8, step / 4)
        depths = np.unique(np.clip(around.depth_km + np.arange(-20.0, 21.0, 5.0), z_lo, z_hi))
        step /= 4
    g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_ax, lon_ax, indexing="ij"))
    # Picks all around a source (a deep one ringed by its first stations) leave a misfit
    # valley narrower than the grid's step: every grid point misses it by a second or
    # more, each pick's misfit is capped, and the three best points can lie anywhere (a
    # 98 km deep M5.3 first put 32-41 km off at RMS 2.3-2.7 s from five good picks). The
    # same grid judged with a pick error as wide as half a step's travel time finds the
    # valley's basin: its best point is refined too (from 4 picks, on the whole region).
    sigmas: tuple[float, ...] = (thr.pick_sigma_s,)
    if around is None and n_p >= 4:
        sigmas = (thr.pick_sigma_s, math.hypot(thr.pick_sigma_s, 0.5 * step * 111.2 / thr.vp_kms))
    costs, _ = _costs_for(lat_ax, lon_ax, depths, p_lat, p_lon, p_t, cons, thr, sigmas, n_s)
    cost = costs[0]
    # Every point tried, for the confidence region: (lat, lon, depth, cost).
    tried = [
        (
            np.broadcast_to(g_lat, cost.shape),
            np.broadcast_to(g_lon, cost.shape),
            np.broadcast_to(depths[:, None], cost.shape),
            cost,
        )
    ]

    # The best few distinct minima of the first grid, each refined.
    order = np.argsort(cost, axis=None)
    seeds: list[tuple[float, float, float]] = []
    for flat in order[: min(order.size, 400)]:
        d, g = np.unravel_index(flat, cost.shape)
        cand = (float(g_lat[g]), float(g_lon[g]), float(depths[d]))
        if all(abs(cand[0] - s[0]) > 2 * step or abs(cand[1] - s[1]) > 2 * step for s in seeds):
            seeds.append(cand)
        if len(seeds) == 3:
            break
    if len(costs) > 1:
        wide = costs[1]
        d, g = np.unravel_index(int(np.argmin(wide)), wide.shape)
        cand = (float(g_lat[g]), float(g_lon[g]), float(depths[d]))
        if all(abs(cand[0] - s[0]) > 2 * step or abs(cand[1] - s[1]) > 2 * step for s in seeds):
            seeds.append(cand)
    best = (math.inf, 0.0, 0.0, 0.0, 0.0)  # cost, lat, lon, depth, origin
    for s_lat, s_lon, s_z in seeds:
        c_lat, c_lon, c_z = s_lat, s_lon, s_z
        h_step, z_step = step, 10.0
        c_cost, c_origin = math.inf, 0.0
        for _ in range(3):
            h_step /= 4
            z_step /= 2.5
            # Walk the box downhill until its best point is inside it: a valley (the
            # depth-origin trade-off of few picks) is followed, not cut at the box edge.
            for _walk in range(6):
                la = c_lat + h_step * np.arange(-4.0, 5.0)
                lo = c_lon + h_step * np.arange(-4.0, 5.0)
                zs = np.unique(np.clip(c_z + z_step * np.arange(-3, 4), z_lo, z_hi))
                f_lat, f_lon = (a.ravel() for a in np.meshgrid(la, lo, indexing="ij"))
                f_costs, f_origin = _costs_for(la, lo, zs, p_lat, p_lon, p_t, cons, thr, n_s=n_s)
                f_cost = f_costs[0]
                tried.append(
                    (
                        np.broadcast_to(f_lat, f_cost.shape),
                        np.broadcast_to(f_lon, f_cost.shape),
                        np.broadcast_to(zs[:, None], f_cost.shape),
                        f_cost,
                    )
                )
                d, g = np.unravel_index(int(np.argmin(f_cost)), f_cost.shape)
                if not f_cost[d, g] < c_cost:
                    break
                c_cost = float(f_cost[d, g])
                c_lat, c_lon, c_z = float(f_lat[g]), float(f_lon[g]), float(zs[d])
                c_origin = float(f_origin[d, g])
                i_lat, i_lon = divmod(int(g), lo.size)
                inside = bool(0 < i_lat < la.size - 1 and 0 < i_lon < lo.size - 1)
                inside = inside and bool(0 < d < zs.size - 1 or float(zs[d]) in (z_lo, z_hi))
                if inside:
                    break
        if c_cost < best[0]:
            best = (c_cost, c_lat, c_lon, c_z, c_origin)
    b_cost, b_lat, b_lon, b_z, b_origin = best

    # Mean origin over the picks that fit (the median served the search), an S pick
    # weighted by its error against a P pick's.
    r_b = np.hypot(distance_km(b_lat, b_lon, p_lat, p_lon), b_z)
    is_p = np.arange(p_t.size) < n_p
    speed = np.where(is_p, thr.vp_kms, thr.vs_kms)
    sigma = np.where(is_p, thr.pick_sigma_s, thr.s_pick_sigma_s)
    res = p_t - r_b / speed - b_origin
    fit = np.abs(res) <= 3 * sigma
    if fit.any():
        w = fit / sigma**2
        b_origin += float(np.sum(w * res) / np.sum(w) if n_s else np.mean(res[fit]))
    res = (p_t - r_b / speed - b_origin)[:n_p]
    rms = float(np.sqrt(np.mean(res**2))) if res.size else 0.0

    # Confidence region: every point tried within a chi-square step (~90 %, 3 unknowns
    # that matter here) of the best; its reach from the solution is the uncertainty.
    reach = 0.0
    z_min, z_max = b_z, b_z
    for t_lat, t_lon, t_z, t_cost in tried:
        ok = t_cost <= b_cost + 6.25
        if ok.any():
            far = distance_km(b_lat, b_lon, t_lat[ok], t_lon[ok])
            reach = max(reach, float(far.max()))
            z_min, z_max = min(z_min, float(t_z[ok].min())), max(z_max, float(t_z[ok].max()))
    uncertainty = reach
    p_lat, p_lon = p_lat[:n_p], p_lon[:n_p]
    gap = _gap_deg(b_lat, b_lon, p_lat, p_lon)
    quality = "good" if uncertainty <= 0.5 * thr.poor_location_km else "fair"
    if uncertainty > thr.poor_location_km:
        quality = "poor"
    n_used = 0
    if len(cons):
        n_used = int(
            np.sum(
                distance_km(b_lat, b_lon, cons.lat, cons.lon)
                <= distance_km(b_lat, b_lon, p_lat, p_lon).max()
            )
        )
    return Hypocentre(
        origin_s=b_origin,
        lat=b_lat,
        lon=b_lon,
        depth_km=b_z,
        rms_s=rms,
        uncertainty_km=round(uncertainty, 1),
        gap_deg=round(gap, 1),
        n_picks=n_p,
        n_constraints=n_used,
        n_s_picks=n_s,
        quality=quality,
        depth_range_km=(z_min, z_max),
    )


# --------------------------------------------------------------------------- magnitude


def magnitude_from_pd(pd_cm: FloatArray, hyp_km: FloatArray) -> FloatArray:
    """Per-station magnitude from Pd (cm) at hypocentral distance (km), Wu & Zhao 2006."""
    pd = np.maximum(np.asarray(pd_cm, dtype=np.float64), 1e-9)
    r = np.maximum(np.asarray(hyp_km, dtype=np.float64), 1.0)
    return np.asarray(
        (np.log10(pd) - WU_ZHAO_A - WU_ZHAO_C * np.log10(r)) / WU_ZHAO_B, dtype=np.float64
    )


def pa_reading(magnitude: float, thr: QuakeThresholds) -> float:
    """The magnitude a quake of ``magnitude`` reads from its P amplitude over the first
    seconds of P, through the ground-motion model and ``p_to_s_ratio``: lower by
    ``pa_shortfall_m5`` at M5 and by ``pa_shortfall_per_m`` more per unit above. The
    P train's peak sets the ratio; its first seconds hold a smaller share of it the
    longer the train lasts (the source's duration grows with the magnitude)."""
    return magnitude - thr.pa_shortfall_m5 - thr.pa_shortfall_per_m * (magnitude - 5.0)


def magnitude_from_pa_reading(read: FloatArray, thr: QuakeThresholds) -> FloatArray:
    """The magnitude whose :func:`pa_reading` is ``read`` (its inverse)."""
    a, b = thr.pa_shortfall_m5, thr.pa_shortfall_per_m
    return np.asarray((np.asarray(read) + a - 5.0 * b) / (1.0 - b), dtype=np.float64)


def _pd_filter_gain(magnitude: FloatArray, cfg: QuakeConfig) -> FloatArray:
    """How much of Pd the stations' P-wave chain keeps for a quake of this magnitude: the
    gain of the chain (high-pass at ``station_highpass_hz``, then a high-pass and two
    leaky integrators at ``pd_highpass_hz``) at 1 / tau_c of Wu & Kanamori (2005)."""
    tau_c = 10 ** (WU_KANAMORI_A + WU_KANAMORI_B * np.asarray(magnitude))
    f = 1.0 / tau_c
    a, p = cfg.station_highpass_hz, cfg.association.pd_highpass_hz
    gain = f / np.sqrt(f * f + a * a) * (f / np.sqrt(f * f + p * p)) ** 3
    return np.asarray(gain, dtype=np.float64)


def _magnitude_pd(pd_cm: FloatArray, hyp_km: FloatArray, cfg: QuakeConfig) -> FloatArray:
    """Wu & Zhao magnitude of Pd measured through the stations' filter (corrected)."""
    m = magnitude_from_pd(pd_cm, hyp_km)
    for _ in range(4):  # the correction depends on M: a fixed point, reached in a few steps
        m = magnitude_from_pd(np.asarray(pd_cm) / _pd_filter_gain(m, cfg), hyp_km)
    return m


#: The largest magnitude tau_c tells: beyond, the P window (3 s) and the stations'
#: 0.2 Hz P-wave filter cut the longer periods and the measured tau_c stops following
#: the magnitude (Wu & Kanamori 2005 saw it saturate near M 6.5-7 over 3 s).
TAU_C_MAX_MAGNITUDE = 6.5
#: Magnitudes over which the tau_c relation is inverted (0.05 steps up to the largest).
_TAU_C_MAGNITUDES = tuple(round(3.0 + 0.05 * k, 2) for k in range(71))


@lru_cache(maxsize=64)
def _tau_c_curve(
    window_s: float, station_hz: float, pd_hz: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The tau_c the stations measure over ``window_s`` of P, against magnitude, up to
    where it saturates: (tau_c s, magnitude), both rising.

    The P pulse is a sinusoid of Wu & Kanamori's period that grows over half a period
    (an emergent onset), taken through the stations' P-wave chain (high-pass at
    ``station_hz``, high-pass at ``pd_hz``, two leaky integrators at ``pd_hz``; 100 Hz),
    up to :data:`TAU_C_MAX_MAGNITUDE`. A window cutting the pulse mid-cycle makes the
    curve wiggle: only the points above every smaller magnitude's are kept.
    """
    dt = 0.01
    n = max(2, round(window_s / dt))
    t = np.arange(n) * dt
    a_st = 1.0 / (1.0 + 2.0 * math.pi * station_hz * dt)
    a_pd = 1.0 / (1.0 + 2.0 * math.pi * pd_hz * dt)
    b_pd = math.exp(-2.0 * math.pi * pd_hz * dt)
    taus: list[float] = []
    for m in _TAU_C_MAGNITUDES:
        period = 10 ** (WU_KANAMORI_A + WU_KANAMORI_B * m)
        disp = np.minimum(t / (0.5 * period), 1.0) * np.sin(2.0 * math.pi * t / period)
        acc = np.gradient(np.gradient(disp, dt), dt)
        x0 = h1 = h2 = v = u = 0.0
        prev_h1 = 0.0
        sum_u2 = sum_v2 = 0.0
        for x in acc.tolist():
            h1 = a_st * (h1 + x - x0)
            x0 = x
            h2 = a_pd * (h2 + h1 - prev_h1)
            prev_h1 = h1
            v = b_pd * v + h2 * dt
            u = b_pd * u + v * dt
            sum_u2 += u * u
            sum_v2 += v * v
        taus.append(2.0 * math.pi * math.sqrt(sum_u2 / sum_v2) if sum_v2 > 0 else 0.0)
    keep = [0]
    for k in range(1, len(taus)):
        if taus[k] > taus[keep[-1]]:
            keep.append(k)
    return tuple(taus[k] for k in keep), tuple(_TAU_C_MAGNITUDES[k] for k in keep)


def magnitude_from_tau_c(tau_c_s: float, window_s: float, cfg: QuakeConfig) -> float:
    """Magnitude from tau_c (s) measured over ``window_s`` of P by the stations' P-wave
    chain: Wu & Kanamori (2005), ``log10 tau_c = -1.716 + 0.296 M``, corrected for the
    chain and the window (:func:`_tau_c_curve`), at most :data:`TAU_C_MAX_MAGNITUDE`.
    Distance does not enter, so a poor early location does not bias it; it saturates,
    so it bounds the magnitude from below."""
    return float(magnitudes_from_tau_c([tau_c_s], [window_s], cfg)[0])


def magnitudes_from_tau_c(
    tau_c_s: Sequence[float], window_s: Sequence[float], cfg: QuakeConfig
) -> FloatArray:
    """:func:`magnitude_from_tau_c` of every (tau_c, window) pair: one curve lookup per
    distinct window (half-second steps), not one per station."""
    out = np.empty(len(tau_c_s), dtype=np.float64)
    by_window: dict[float, list[int]] = {}
    for i, w in enumerate(window_s):
        by_window.setdefault(min(max(round(w * 2.0) / 2.0, 0.5), cfg.pd_window_s), []).append(i)
    taus_in = np.asarray(tau_c_s, dtype=np.float64)
    for window, at in by_window.items():
        taus, mags = _tau_c_curve(window, cfg.station_highpass_hz, cfg.association.pd_highpass_hz)
        out[at] = np.interp(taus_in[at], taus, mags)
    return out


_NO_P = PWindow(0.0)


def _arrivals(
    stations: Sequence[EventStation], hypo: Hypocentre, cfg: QuakeConfig
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Hypocentral distance (km, at least 1), P and S arrival (epoch s) at each station."""
    thr = cfg.association
    lat = np.array([s.lat for s in stations])
    lon = np.array([s.lon for s in stations])
    r = np.maximum(_hypocentral_km(hypo, lat, lon), 1.0)
    t_p = hypo.origin_s + r / (thr.vp_kms * hypo.vp_scale)
    return r, t_p, hypo.origin_s + r / thr.vs_kms


def _clear_features(
    stations: Sequence[EventStation], s_minus_p_s: FloatArray, cfg: QuakeConfig
) -> list[PWindow | None]:
    """Each station's features over its longest P window that ends 0.2 s before the
    S wave (``s_minus_p_s``: S - P time, s, at each station), or None. A shorter window
    than the newest counts from ``pd_min_window_s`` (1 s): the first fraction of a
    second of a large quake's P wave is a fraction of its size (an M7.5's 0.4 s read
    two units low, and the spread of the picks' magnitudes held its first alert 13 s)."""
    least = cfg.association.pd_min_window_s
    return [
        s.features(float(lim) - 0.2, least) for s, lim in zip(stations, s_minus_p_s, strict=True)
    ]


def _station_magnitudes(
    stations: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per-station magnitudes from Pd, from Pa, from PGA after the S wave and from
    tau_c (NaN where a station has none), in the order of ``stations``. tau_c counts
    where the P pulse stands clear of the displacement noise (``pd_min_snr`` + 1, the
    bar of an earthquake-like pick: noise alone reads a long period)."""
    m_pd, m_pa, m_s, m_tc, _ = _measures(stations, hypo, now_s, cfg)
    return m_pd, m_pa, m_s, m_tc


def _measures(
    stations: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, list[PWindow | None]]:
    """:func:`_station_magnitudes` and the P windows they were measured on
    (:func:`_clear_features`)."""
    thr = cfg.association
    n = len(stations)
    m_pd = np.full(n, np.nan)
    m_pa = np.full(n, np.nan)
    m_s = np.full(n, np.nan)
    m_tc = np.full(n, np.nan)
    if not n:
        return m_pd, m_pa, m_s, m_tc, []
    m_read = np.full(n, np.nan)
    r, t_p, t_s = _arrivals(stations, hypo, cfg)
    # The P window must end before the S wave arrives, or S sets the peaks: the longest
    # window that does (near the source, a shorter one than the newest).
    feats = _clear_features(stations, t_s - t_p, cfg)
    gm = cfg.ground_motion
    # Which stations have which measure, then each relation once over all of them.
    pd_at: list[int] = []
    pa_at: list[int] = []
    tc_at: list[int] = []
    for i, (st, s) in enumerate(zip(stations, feats, strict=True)):
        if s is None or not st.picked:
            continue
        if (
            s.pd_cm is not None
            and s.pd_cm > 0
            and s.p_window_s >= thr.pd_min_window_s
            and (s.pd_snr is None or s.pd_snr >= thr.pd_magnitude_min_snr)
        ):
            pd_at.append(i)
        if s.pa_gal is not None and s.pa_gal > 0 and (s.pa_snr is None or s.pa_snr >= 3.0):
            pa_at.append(i)
        if (
            s.tau_c_s is not None
            and s.tau_c_s > 0
            and s.p_window_s >= thr.pd_min_window_s
            and s.pd_snr is not None
            and s.pd_snr >= thr.pd_min_snr + 1.0
        ):
            tc_at.append(i)
    if tc_at:
        m_tc[tc_at] = magnitudes_from_tau_c(
            [(feats[i] or _NO_P).tau_c_s or 0.0 for i in tc_at],
            [(feats[i] or _NO_P).p_window_s for i in tc_at],
            cfg,
        )
    if pd_at:
        pd = np.array([(feats[i] or _NO_P).pd_cm or 0.0 for i in pd_at])
        m_pd[pd_at] = _magnitude_pd(pd, r[pd_at], cfg)
    if pa_at:
        pa = np.array([((feats[i] or _NO_P).pa_gal or 0.0) / thr.p_to_s_ratio for i in pa_at])
        read = gm.magnitude_from_pga(pa, r[pa_at])
        m_pa[pa_at] = magnitude_from_pa_reading(read, thr)
        m_read[pa_at] = read
    # PGA counts once the S wave has passed for a source duration's worth (it only grows).
    seen = np.array([s.pga_gal for s in stations])
    ok = seen > 0
    if ok.any():
        # The source's duration from a rough magnitude: the P amplitudes as read (before
        # their shortfall is made up), as the wait was set. Taken from the corrected
        # magnitudes, an M7's stations waited 22 s after S instead of 16 and, in the
        # scenario benchmark's 30 s, two M7 finals fell back to a saturated Pd (-0.58).
        both = np.concatenate((m_pd, m_read))
        rough = np.nanmedian(both) if np.isfinite(both).any() else 5.0
        duration = 10 ** (0.5 * rough - 2.3) + 2.0
        # Judged on the station's own data (its newest packet), not on the clock: a
        # station whose window closed has shown all it will.
        until = np.array([s.seen_until_s or now_s for s in stations])
        passed = ok & (until >= t_s + duration)
        if passed.any():
            m_s[passed] = gm.magnitude_from_pga(seen[passed], r[passed])
    return m_pd, m_pa, m_s, m_tc, feats


def _magnitude(
    stations: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> tuple[float, str]:
    """The event's magnitude and how it was estimated: the median over stations of the
    best kind available (PGA after S from 3 stations, else Pd, else Pa, else PGA so far).
    One station's Pd just above its threshold does not outweigh the others' Pa: over a
    network, the 3 s window's displacement noise now and then peaks above it (a deep
    M6.2 under heavy noise read M7.1 from one station at 6.5x its noise while 34 P
    amplitudes said 6.0); at twice the threshold it is a P pulse, and it does (an M7.4's
    first Pd said 6.8 while the first P amplitudes said 6.2)."""
    m_pd, m_pa, m_s, m_tc, feats = _measures(stations, hypo, now_s, cfg)
    has_pd = np.isfinite(m_pd)
    # A lone Pd counts when it stands well clear of the noise (twice the threshold).
    clear: list[bool] = []
    if has_pd.any():
        clear = [
            (f.pd_snr is None or f.pd_snr >= 2 * cfg.association.pd_magnitude_min_snr)
            for f, ok in zip(feats, has_pd, strict=True)
            if ok and f is not None
        ]
    if np.sum(np.isfinite(m_s)) >= 3:
        m, method = float(np.nanmedian(m_s)), "pga"
    elif len(clear) >= 2 or any(clear) or (clear and not np.isfinite(m_pa).any()):
        m, method = float(np.nanmedian(m_pd)), "pd"
    elif np.isfinite(m_pa).any():
        m, method = float(np.nanmedian(m_pa)), "pa"
        # The P amplitude of a few seconds reads low (a growing, band-limited P wave);
        # tau_c does not depend on the distance and reads low only when it saturates:
        # from two stations or more, its lower median bounds the magnitude from below.
        tc = np.sort(m_tc[np.isfinite(m_tc)])
        if tc.size >= 2 and float(tc[(tc.size - 1) // 2]) > m:
            m, method = float(tc[(tc.size - 1) // 2]), "tau_c"
    else:
        pga = np.array([s.pga_gal for s in stations])
        seen = pga > 0
        if not seen.any():
            return cfg.min_magnitude, "none"
        lat = np.array([s.lat for s in stations])[seen]
        lon = np.array([s.lon for s in stations])[seen]
        r = _hypocentral_km(hypo, lat, lon)
        m, method = float(np.median(cfg.ground_motion.magnitude_from_pga(pga[seen], r))), "pga"
    if method in ("pd", "pa", "tau_c"):
        # The S wave seen so far bounds the magnitude from below (PGA only grows): near
        # a large quake the stations' P windows clear of S are too short to count, and
        # the farther stations' first fractions of a second of P read one or two units
        # low (an M7.0 under the network first read 5.8 while its two nearest stations
        # had recorded 1-2 s of S).
        floor = _s_wave_floor(stations, hypo, now_s, cfg)
        if floor is not None and floor > m:
            m, method = floor, "pga"
    return float(np.clip(round(m, 2), cfg.min_magnitude, cfg.max_magnitude)), method


def _s_wave_floor(
    stations: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> float | None:
    """The lower median of the magnitudes the PGA so far gives at the stations that have
    recorded at least ``s_floor_min_s`` of the S wave (on their own data), from
    ``s_floor_min_stations`` of them; None with fewer. A lower bound: the peak grows
    with the S wave and the source's duration (and their PGA counts in full once both
    have passed, :func:`_station_magnitudes`)."""
    if len(stations) < cfg.s_floor_min_stations:
        return None
    pga = np.array([s.pga_gal for s in stations])
    r, _, t_s = _arrivals(stations, hypo, cfg)
    until = np.array([s.seen_until_s or now_s for s in stations])
    ok = (pga > 0) & (until >= t_s + cfg.s_floor_min_s)
    if int(ok.sum()) < cfg.s_floor_min_stations:
        return None
    m = np.sort(cfg.ground_motion.magnitude_from_pga(pga[ok], r[ok]))
    return float(m[(m.size - 1) // 2])


# --------------------------------------------------------------------------- association


@stored
class Associator:
    """The network's association state: triggers, observations and statuses waiting for
    the watermark (``inbox*``), picks no event explains (``pending``), open and recently
    closed events, the stations' armed status (position, armed since, data until, noise
    of the trigger band) and the newest watermark (``clock_s``). Bounded by the config's
    ``max_*`` settings."""

    pending: tuple[EventStation, ...] = ()
    inbox: tuple[Trigger, ...] = ()
    events: tuple[_EventState, ...] = ()
    recent: tuple[_EventState, ...] = ()
    #: station id -> (lat, lon, armed since or None, data until, noise gal).
    armed: dict[str, tuple[float, float, float | None, float, float]] = field(default_factory=dict)
    inbox_obs: tuple[Observation, ...] = ()
    inbox_status: tuple[StationStatus, ...] = ()
    clock_s: float = -math.inf

    def step(
        self,
        *,
        now_s: float,
        triggers: Iterable[Trigger] = (),
        observations: Iterable[Observation] = (),
        stations: Iterable[StationStatus] = (),
        config: QuakeConfig | None = None,
    ) -> AssociationResult:
        """Take new triggers, observations and station statuses; declare, relocate, close
        and report.

        Args:
            now_s: the watermark, epoch s: every station's data up to here has arrived.
                Triggers, observations and statuses are taken once it passes the end of
                the packet that carried them (``at_s``, ``until_s``; a trigger without
                ``at_s``: its P time), all of a kind in time order, so the result does
                not depend on how stations are spread over partitions nor on the order
                messages arrive in; events close and S-wave countdowns run on this
                clock, so replays are exact.
            triggers: new station triggers (any order, any partition).
            observations: latest event-window figures of triggered stations.
            stations: the status of stations that sent packets (armed or not).
            config: settings; defaults when None.
        """
        cfg = config if config is not None else QuakeConfig()
        thr = cfg.association
        due, waiting = _split(
            {(t.station_id, t.p_time_s): t for t in (*self.inbox, *triggers)}.values(),
            now_s,
            lambda t: (t.at_s if t.at_s is not None else t.p_time_s, t.p_time_s, t.station_id),
            cfg.max_inbox,
        )
        obs_list, obs_waiting = _split(
            {(o.station_id, o.p_time_s, o.at_s): o for o in (*self.inbox_obs, *observations)}
            .values(),
            now_s,
            lambda o: (o.at_s if o.at_s is not None else -math.inf, o.station_id,
                       o.p_time_s or 0.0, o.p_window_s),
            cfg.max_inbox,
        )  # fmt: skip
        st_due, st_waiting = _split(
            {(s.station_id, s.until_s): s for s in (*self.inbox_status, *stations)}.values(),
            now_s,
            lambda s: (s.until_s, s.station_id),
            cfg.max_inbox,
        )
        if not (due or obs_list or st_due) and now_s <= self.clock_s:
            # Nothing new has passed the watermark: another partition's tick of a second
            # the network has not finished. The same state, holding what came.
            held = replace(
                self, inbox=tuple(waiting), inbox_obs=tuple(obs_waiting),
                inbox_status=tuple(st_waiting),
            )  # fmt: skip
            return AssociationResult(associator=held, updates=())
        due.sort(key=lambda t: (t.p_time_s, t.station_id))
        armed = dict(self.armed)
        for s in st_due:
            old = armed.get(s.station_id)
            if old is None or s.until_s >= old[3]:
                armed[s.station_id] = (s.lat, s.lon, s.armed_since_s, s.until_s, s.noise_gal)

        events = {e.event_id: e for e in self.events}
        recent = list(self.recent)
        pending = list(self.pending)
        touched: set[str] = set()
        relocate: set[str] = set()

        for trig in due:
            eid = _take(trig, events, recent, cfg)
            if eid is None:
                pending = [u for u in pending if u.station_id != trig.station_id]
                pending.append(_station(trig, picked=True))
            elif eid:
                touched.add(eid)
                relocate.add(eid)

        # Observations: event stations and pending picks (whose features decide whether
        # they may declare an event).
        # Indexed by station once per step, not searched per observation: during a strong
        # quake every station of a dense network reports each second.
        if obs_list:
            members = {eid: list(ev.stations) for eid, ev in events.items()}
            at: dict[str, dict[str, int]] = {}
            for eid, ev in events.items():
                at[eid] = {}
                for k, member in enumerate(ev.stations):
                    at[eid].setdefault(member.station_id, k)
            waiting_at: dict[str, list[int]] = {}
            for k, u in enumerate(pending):
                waiting_at.setdefault(u.station_id, []).append(k)
            observed: set[str] = set()
            # S picks each event's relocations may still take (a new one relocates).
            s_room = {
                eid: cfg.max_location_s_picks
                - sum(m.picked and m.s_time_s is not None for m in ev.stations)
                for eid, ev in events.items()
            }
            for obs in obs_list:
                for eid in events:
                    where = at[eid].get(obs.station_id)
                    if where is not None:
                        was = members[eid][where]
                        new = _observe(was, obs)
                        if new != was:
                            members[eid][where] = new
                            observed.add(eid)
                            if new.picked and was.s_time_s is None and new.s_time_s is not None:
                                s_room[eid] -= 1
                                if s_room[eid] >= 0:
                                    relocate.add(eid)  # a new S pick locates too
                for k in waiting_at.get(obs.station_id, ()):
                    pending[k] = _observe(pending[k], obs)
            for eid in observed:
                events[eid] = replace(events[eid], stations=tuple(members[eid]))
            touched |= observed

        horizon = now_s - thr.pair_max_dt_s
        pending = [u for u in pending if u.p_time_s >= horizon][-cfg.max_pending :]

        # Relocate events with new stations: every station tried again as a P pick.
        for eid in sorted(relocate):
            events[eid] = _relocate(events[eid], armed, now_s, cfg)
        # A relocated event may now explain pending picks.
        for eid in sorted(relocate):
            ev = events[eid]
            took = [u for u in pending if _fits(u, ev, cfg) is not None]
            if took:
                ev = replace(ev, stations=(*ev.stations, *(replace(u, picked=True) for u in took)))
                ev = replace(ev, last_trigger_s=max(ev.last_trigger_s, *(u.p_time_s for u in took)))
                events[eid] = _relocate(ev, armed, now_s, cfg)
                names = {u.station_id for u in took}
                pending = [u for u in pending if u.station_id not in names]

        # Declare from pending picks.
        if len(pending) >= thr.min_stations and len(events) < cfg.max_open_events:
            taken = {*events, *(e.event_id for e in recent)}
            found = _declare(pending, armed, now_s, taken, cfg)
            if found is not None:
                used = {s.station_id for s in found.stations}
                rest = [u for u in pending if u.station_id not in used]
                # Picks already waiting that the group left out (beyond pair range of
                # its members, or not judged yet) are tried as a new trigger would be:
                # no later trigger may come to bring them in.
                took = [u for u in rest if _fits(u, found, cfg) is not None]
                if took:
                    found = replace(
                        found,
                        stations=(*found.stations, *(replace(u, picked=True) for u in took)),
                        last_trigger_s=max(found.last_trigger_s, *(u.p_time_s for u in took)),
                    )
                    found = _relocate(found, armed, now_s, cfg, with_s=False)
                    names = {u.station_id for u in took}
                    rest = [u for u in rest if u.station_id not in names]
                # Judged with every pick it took: the group alone may be narrower.
                news = now_s - max(u.p_time_s for u in pending) < cfg.declare_max_wait_s
                if news and _too_wide(found.picks, found.hypo, now_s, cfg):
                    found = None
                else:
                    pending = rest
                    events[found.event_id] = found
                    touched.add(found.event_id)

        updates: list[QuakeEvent] = []
        still_open: list[_EventState] = []
        for ev in sorted(events.values(), key=lambda e: e.first_trigger_s):
            closing = now_s - ev.last_trigger_s >= thr.close_after_s
            if not (closing or ev.event_id in touched):
                still_open.append(ev)
                continue
            snapshot = _snapshot(ev, now_s, cfg, closed=closing)
            key = (
                snapshot.n_stations,
                snapshot.magnitude,
                intensity_ordinal(snapshot.max_intensity),
                snapshot.lat,
                snapshot.lon,
            )
            warned = tuple(sorted({*ev.warned, *snapshot.townships}))
            if closing:
                updates.append(snapshot)
                recent.append(replace(ev, published=key, closed_at_s=now_s, warned=warned))
                continue
            if _material(ev.published, key, cfg):
                updates.append(snapshot)
                still_open.append(replace(ev, published=key, warned=warned))
            else:
                still_open.append(ev)

        recent = [
            e
            for e in recent
            if e.closed_at_s is None or now_s - e.closed_at_s < cfg.closed_memory_s
        ][-cfg.max_open_events :]
        # Stations silent for long are forgotten (bounded state; they come back with data).
        armed = {k: v for k, v in armed.items() if v[3] >= now_s - 600.0}
        return AssociationResult(
            associator=Associator(
                pending=tuple(pending),
                inbox=tuple(waiting),
                events=tuple(still_open),
                recent=tuple(recent),
                armed=armed,
                inbox_obs=tuple(obs_waiting),
                inbox_status=tuple(st_waiting),
                clock_s=max(now_s, self.clock_s),
            ),
            updates=tuple(updates),
        )


def _split(
    items: Iterable[_T], now_s: float, key: Callable[[_T], tuple[Any, ...]], limit: int
) -> tuple[list[_T], list[_T]]:
    """Items whose time (``key``'s first element) the watermark has passed, in key
    order, and the rest, in key order and at most ``limit`` of them (the newest dropped:
    a bound on memory should a partition stall)."""
    ordered = sorted(items, key=key)
    due = [x for x in ordered if key(x)[0] <= now_s]
    return due, [x for x in ordered if key(x)[0] > now_s][:limit]


def _station(trig: Trigger, *, picked: bool) -> EventStation:
    return EventStation(trig.station_id, trig.lat, trig.lon, trig.p_time_s, picked=picked)


def _observe(st: EventStation, obs: Observation) -> EventStation:
    """A station with an observation of one of its windows: peaks always (an S-wave
    window of the same station is the same shaking), features only from the window its
    pick opened."""
    same = obs.p_time_s is None or abs(obs.p_time_s - st.p_time_s) <= 0.05
    pga, pgv = max(st.pga_gal, obs.pga_gal), max(st.pgv_cms, obs.pgv_cms)
    until = max(st.seen_until_s, obs.at_s or 0.0)
    if not same:
        if (pga, pgv, until) == (st.pga_gal, st.pgv_cms, st.seen_until_s):
            return st
        return replace(st, pga_gal=pga, pgv_cms=pgv, seen_until_s=until)
    if obs.p_window_s < st.p_window_s:
        # An older packet of the window: nothing new.
        return replace(st, pga_gal=pga, pgv_cms=pgv, seen_until_s=until)
    shorter = st.shorter
    if obs.p_window_s > st.p_window_s > 0:
        # The window grew: its shorter self may be the one the S wave has not reached.
        kept = st.features()
        if kept is not None:
            shorter = (*st.shorter, kept)[-MAX_SHORTER_WINDOWS:]
    return replace(
        st,
        shorter=shorter,
        pga_gal=pga,
        pgv_cms=pgv,
        seen_until_s=until,
        pd_cm=obs.pd_cm if obs.pd_cm is not None else st.pd_cm,
        pd_snr=_finite_or_none(obs.pd_snr) if obs.pd_cm is not None else st.pd_snr,
        pv_cms=obs.pv_cms if obs.pv_cms is not None else st.pv_cms,
        pa_gal=obs.pa_gal if obs.pa_gal is not None else st.pa_gal,
        pa_snr=_finite_or_none(obs.pa_snr) if obs.pa_gal is not None else st.pa_snr,
        tau_c_s=obs.tau_c_s if obs.tau_c_s is not None else st.tau_c_s,
        p_window_s=obs.p_window_s,
        transient=obs.transient,
        s_time_s=obs.s_time_s if obs.s_time_s is not None else st.s_time_s,
    )


def _finite_or_none(v: float | None) -> float | None:
    """None for an unknown ratio (NaN); infinity (no noise measured) is kept."""
    if v is None or math.isnan(v):
        return None
    return v


def _predicted(ev: _EventState, lat: float, lon: float, cfg: QuakeConfig) -> tuple[float, float]:
    """Predicted P and S arrival times at a place, epoch s."""
    h = ev.hypo
    r = _hypocentral_km(h, lat, lon)
    thr = cfg.association
    return float(h.origin_s + r / (thr.vp_kms * h.vp_scale)), float(h.origin_s + r / thr.vs_kms)


def _hypocentral_km(h: Hypocentre, lat: FloatArray | float, lon: FloatArray | float) -> FloatArray:
    """Distance from the hypocentre to places at the surface, km."""
    return np.asarray(np.hypot(distance_km(h.lat, h.lon, lat, lon), h.depth_km), dtype=np.float64)


def _residual(s: EventStation, h: Hypocentre, cfg: QuakeConfig) -> float:
    """A pick's P time minus the one ``h`` predicts, s."""
    r = float(_hypocentral_km(h, s.lat, s.lon))
    return s.p_time_s - (h.origin_s + r / (cfg.association.vp_kms * h.vp_scale))


def _tolerance(h: Hypocentre, cfg: QuakeConfig) -> float:
    """How far a P pick may be from its prediction: the join tolerance, widened by the
    location's uncertainty (a poor early location predicts poorly)."""
    thr = cfg.association
    return thr.join_tolerance_s + min(h.uncertainty_km, 100.0) / thr.vp_kms


def _fits(u: EventStation, ev: _EventState, cfg: QuakeConfig) -> str | None:
    """``"p"`` when a pick fits an event's predicted P, ``"s"`` when it falls in its
    shaking (from P to S + ``absorb_after_s_s``), else None."""
    thr = cfg.association
    tp, ts = _predicted(ev, u.lat, u.lon, cfg)
    if abs(u.p_time_s - tp) <= _tolerance(ev.hypo, cfg):
        return "p"
    if tp <= u.p_time_s <= ts + thr.absorb_after_s_s:
        return "s"
    return None


def _take(
    trig: Trigger, events: dict[str, _EventState], recent: list[_EventState], cfg: QuakeConfig
) -> str | None:
    """Attribute a trigger: the id of the open event it joins, ``""`` when it is absorbed
    (a duplicate, a re-trigger, a straggler of a closed event) or None (pending)."""
    for ev in recent:
        if ev.station(trig.station_id) is not None:
            return ""
        if _fits(_station(trig, picked=True), ev, cfg) is not None:
            return ""
    best: tuple[float, str] | None = None
    for eid, ev in events.items():
        st = ev.station(trig.station_id)
        if st is not None:
            if st.picked or _fits(_station(trig, picked=True), ev, cfg) != "p":
                return ""  # a second trigger of the station: its S wave or the coda
            # The station's first trigger did not fit (a spike before the P wave); this
            # one does: it is the station's P pick.
            new = _station(trig, picked=True)
            events[eid] = replace(
                ev,
                stations=tuple(new if s is st else s for s in ev.stations),
                last_trigger_s=max(ev.last_trigger_s, trig.p_time_s),
            )
            return eid
        u = _station(trig, picked=True)
        kind = _fits(u, ev, cfg)
        if kind is None and not _young(ev, cfg):
            continue
        if kind is None and not _near(u, ev, cfg):
            continue
        tp, _ = _predicted(ev, trig.lat, trig.lon, cfg)
        score = abs(trig.p_time_s - tp)
        if best is None or score < best[0]:
            best = (score, eid)
    if best is None:
        return None
    ev = events[best[1]]
    if len(ev.stations) >= cfg.max_event_stations:
        return ""
    kind = _fits(_station(trig, picked=True), ev, cfg)
    # A trigger that fits neither P nor S of a young event is tried as a pick: the
    # relocation keeps it if it fits the better solution it may bring.
    st = _station(trig, picked=kind != "s")
    events[best[1]] = replace(
        ev, stations=(*ev.stations, st), last_trigger_s=max(ev.last_trigger_s, trig.p_time_s)
    )
    return best[1]


def _young(ev: _EventState, cfg: QuakeConfig) -> bool:
    """An event whose location may still move a lot: few picks or a poor location."""
    return len(ev.picks) < 2 * cfg.association.min_stations or ev.hypo.quality == "poor"


def _near(u: EventStation, ev: _EventState, cfg: QuakeConfig) -> bool:
    """A trigger within pair range (space and time) of one of the event's picks."""
    thr = cfg.association
    for s in ev.picks:
        if (
            abs(u.p_time_s - s.p_time_s) <= thr.pair_max_dt_s
            and float(distance_km(u.lat, u.lon, s.lat, s.lon)) <= thr.pair_max_km
        ):
            return True
    return False


def _constraints(
    armed: dict[str, tuple[float, float, float | None, float, float]],
    exclude: set[str],
    near_lat: float,
    near_lon: float,
    now_s: float,
    cfg: QuakeConfig,
    magnitude: float | None = None,
) -> tuple[_Constraints, list[str]]:
    """The armed stations that did not trigger, nearest first, within range."""
    ids = [k for k, v in armed.items() if k not in exclude and v[2] is not None]
    if not ids:
        return _Constraints.none(now_s), []
    lat = np.array([armed[k][0] for k in ids])
    lon = np.array([armed[k][1] for k in ids])
    d = distance_km(near_lat, near_lon, lat, lon)
    order = [i for i in np.argsort(d, kind="stable") if d[i] <= cfg.constraint_radius_km]
    order = order[: cfg.max_constraint_stations]
    sel = [ids[i] for i in order]
    return (
        _Constraints(
            lat=lat[order],
            lon=lon[order],
            since_s=np.array([armed[k][2] or 0.0 for k in sel]),
            until_s=np.array([armed[k][3] for k in sel]),
            now_s=now_s,
            noise_gal=np.array([armed[k][4] for k in sel]),
            magnitude=magnitude,
            ground_motion=cfg.ground_motion,
        ),
        sel,
    )


def _spread_picks(picks: Sequence[EventStation], cfg: QuakeConfig) -> list[EventStation]:
    """The picks a location uses, in time order: all of them up to
    ``max_location_picks``; beyond that the first pick of every neighbourhood
    (``location_spread_km`` across, in time order) before any second one there.

    The first picks by time alone are the nearest few neighbourhoods' stations: under a
    dense network (Taiwan's 615 stations, several to a town) the first 40 of 115 picks of
    an M5.2 at the network's edge stood in five towns, and the location went 276 km out
    and took every station with it; the neighbourhoods' first picks keep the geometry."""
    use = sorted(picks, key=lambda s: (s.p_time_s, s.station_id))
    cap = cfg.max_location_picks
    if len(use) <= cap:
        return use
    first = _first_apart(use, cfg.location_spread_km, most=cap)
    chosen = set(first)
    rest = [k for k in range(len(use)) if k not in chosen][: cap - len(first)]
    return [use[k] for k in sorted(first + rest)]


def _locate_picks(
    picks: Sequence[EventStation],
    armed: dict[str, tuple[float, float, float | None, float, float]],
    exclude: set[str],
    now_s: float,
    cfg: QuakeConfig,
    around: Hypocentre | None = None,
    magnitude: float | None = None,
    with_s: bool = False,
) -> Hypocentre:
    """The picks' hypocentre with the silent stations as constraints; ``with_s``: the
    picked stations' S picks too (a declared event's: a declaration is judged on P
    picks alone, whose rules were set on them; an S pick near the source comes within
    seconds and made a location "good" from four picks, declared a second earlier on a
    1 s Pd a unit high)."""
    use = _spread_picks(picks, cfg)
    cons, _ = _constraints(armed, exclude, use[0].lat, use[0].lon, now_s, cfg, magnitude)
    lats = [s.lat for s in use]
    lons = [s.lon for s in use]
    times = [s.p_time_s for s in use]
    s_picks = [(s.lat, s.lon, s.s_time_s) for s in use if with_s and s.s_time_s is not None]
    s_picks = s_picks[: cfg.max_location_s_picks]
    hypo = locate(lats, lons, times, cfg, constraints=cons, around=around, s_picks=s_picks)
    if around is None or len(use) < cfg.velocity_min_picks:
        return hypo
    # A settled event with many picks: the picks' moveout also measures the velocity.
    # The velocity trades off mostly with depth and origin time: each factor is scanned
    # over depth near the epicentre (a fraction of a location's cost), and only the one
    # kept is located in full.
    thr = cfg.association
    scan = {
        k: _depth_scan(lats, lons, times, s_picks, thr, k, cons, hypo)
        for k in (1.0, *cfg.velocity_scales)
    }
    k_best = min(cfg.velocity_scales, key=lambda k: scan[k], default=1.0)
    # An F test: the gain against the misfit left per degree of freedom (picks minus
    # origin, position, depth and velocity), in units of the pick error; real pick
    # errors are often well below it and the cost alone would understate the evidence.
    spread = max(scan[k_best] / max(len(use) - 5, 1), cfg.velocity_min_spread)
    if k_best == 1.0 or scan[1.0] - scan[k_best] < cfg.velocity_min_gain * spread:
        return hypo
    scaled = replace(cfg, association=_scaled(thr, k_best))
    return replace(
        locate(lats, lons, times, scaled, constraints=cons, around=hypo, s_picks=s_picks),
        vp_scale=k_best,
    )


def _scaled(thr: QuakeThresholds, vp_scale: float) -> QuakeThresholds:
    """The model's wave speeds times ``vp_scale`` (a slower crust slows S as it does P)."""
    return thr.model_copy(update={"vp_kms": thr.vp_kms * vp_scale, "vs_kms": thr.vs_kms * vp_scale})


def _depth_scan(
    lats: Sequence[float],
    lons: Sequence[float],
    times: Sequence[float],
    s_picks: Sequence[tuple[float, float, float]],
    thr: QuakeThresholds,
    vp_scale: float,
    cons: _Constraints,
    near: Hypocentre,
) -> float:
    """The lowest cost with the P velocity times ``vp_scale`` over every depth (2.5 km
    steps) and the epicentres within two fine grid steps of ``near``'s (0.05 deg: the
    velocity also moves a one-sided solution along its azimuth)."""
    step = thr.search_step_deg / 8.0
    ax = step * np.arange(-2.0, 3.0)
    z_lo, z_hi = thr.depth_km
    cost, _ = _costs_for(
        near.lat + ax,
        near.lon + ax,
        np.arange(z_lo, z_hi + 1e-6, 2.5),
        np.asarray([*lats, *(s[0] for s in s_picks)], dtype=np.float64),
        np.asarray([*lons, *(s[1] for s in s_picks)], dtype=np.float64),
        np.asarray([*times, *(s[2] for s in s_picks)], dtype=np.float64),
        cons,
        _scaled(thr, vp_scale),
        n_s=len(s_picks),
    )
    return float(cost[0].min())


def _relocate(
    ev: _EventState,
    armed: dict[str, tuple[float, float, float | None, float, float]],
    now_s: float,
    cfg: QuakeConfig,
    *,
    with_s: bool = True,
) -> _EventState:
    """Locate with the event's picks (and their S picks unless ``with_s`` is False: an
    event being declared), then try every station again as a P pick (keep those within
    tolerance of the new solution), until the picks stop changing."""
    thr = cfg.association
    names = {s.station_id for s in ev.stations}
    stations = list(ev.stations)
    hypo = ev.hypo
    # The magnitude so far decides which silent stations should have seen the P wave.
    mag, method = _magnitude(ev.stations, hypo, now_s, cfg)
    known = mag if method != "none" else None
    for _ in range(3):
        picks = [s for s in stations if s.picked]
        if len(picks) < thr.min_stations:
            break
        # A young or poor event is searched over the whole region; a settled one near
        # its solution (bounded cost).
        around = None if _young(replace(ev, stations=tuple(stations)), cfg) else hypo
        hypo = _locate_picks(
            picks, armed, names, now_s, cfg, around=around, magnitude=known, with_s=with_s
        )
        tol = _tolerance(hypo, cfg)
        # Every station's predicted P at once (the same numbers as :func:`_predicted`).
        lat = np.array([s.lat for s in stations])
        lon = np.array([s.lon for s in stations])
        tp = hypo.origin_s + _hypocentral_km(hypo, lat, lon) / (thr.vp_kms * hypo.vp_scale)
        fits = (np.abs(np.array([s.p_time_s for s in stations]) - tp) <= tol).tolist()
        new = [
            s if s.picked == ok else replace(s, picked=ok)
            for s, ok in zip(stations, fits, strict=True)
        ]
        if sum(s.picked for s in new) < thr.min_stations:
            break
        changed = [s.picked for s in new] != [s.picked for s in stations]
        stations = new
        if not changed:
            break
    return replace(ev, stations=tuple(stations), hypo=hypo, located_at_s=now_s)


def _consistent_pairs(picks: Sequence[EventStation], thr: QuakeThresholds) -> NDArray[np.bool_]:
    """For every pair of picks (n x n, symmetric): could P have reached both stations
    this far apart in time?

    Beyond ``pair_max_km`` (up to ``WIDE_PAIR_FACTOR`` times it) only picks within
    ``pair_tolerance_s`` of each other: a deep source puts its first stations 50-60 km
    out on every side, picked within a second of each other 100-120 km apart (a 98 km
    deep M5.3 under 3x noise had six good picks and no group of more than three).

    One array for the pairs, not a call per pair: the greedy grouping asks about every
    pair of a group again for every anchor, and a strong quake under a dense network
    triggers hundreds of stations within seconds (615 stations: a step took 30-90 s
    when each pair was asked for alone)."""
    lat = np.array([s.lat for s in picks], dtype=np.float64)
    lon = np.array([s.lon for s in picks], dtype=np.float64)
    t = np.array([s.p_time_s for s in picks], dtype=np.float64)
    d = distance_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    dt = np.abs(t[:, None] - t[None, :])
    near = (d <= thr.pair_max_km) | (
        (d <= WIDE_PAIR_FACTOR * thr.pair_max_km) & (dt <= thr.pair_tolerance_s)
    )
    return np.asarray(
        near & (dt <= thr.pair_max_dt_s) & (dt <= d / thr.vp_kms + thr.pair_tolerance_s),
        dtype=np.bool_,
    )


def _consistent(a: EventStation, b: EventStation, thr: QuakeThresholds) -> bool:
    """Could P have reached both stations this far apart in time? (One pair of
    :func:`_consistent_pairs`.)"""
    return bool(_consistent_pairs((a, b), thr)[0, 1])


def _noise_like(s: EventStation, thr: QuakeThresholds) -> bool:
    """A pick whose P wave looks human-made: high frequency, strong, no low-frequency
    pulse (dominant period ``2 pi sqrt(Pd / Pa)`` or tau_c short), or a transient."""
    if s.transient:
        return True
    if s.p_window_s < 0.5 or s.pa_gal is None or not s.pa_gal > 0:
        return False
    if s.pa_snr is not None and s.pa_snr < thr.noise_min_pa_snr:
        return False
    period = 2 * math.pi * math.sqrt(max(s.pd_cm or 0.0, 0.0) / s.pa_gal)
    return period < thr.noise_max_period_s


def _quake_like(s: EventStation, thr: QuakeThresholds) -> bool:
    """A pick with a low-frequency P pulse well above the noise: what an earthquake has
    and a door or a truck has not."""
    if s.p_window_s < 0.5 or s.pa_gal is None or not s.pa_gal > 0 or s.pd_cm is None:
        return False
    if s.pd_snr is not None and s.pd_snr < thr.pd_min_snr + 1.0:
        return False
    period = 2 * math.pi * math.sqrt(s.pd_cm / s.pa_gal)
    return period >= thr.noise_max_period_s


def _sites(picks: Sequence[EventStation], thr: QuakeThresholds) -> int:
    """Distinct sites among picks: stations closer than ``min_site_km`` count once
    (greedily, in the picks' order: a pick near one already kept is not a site)."""
    return len(_first_apart(picks, thr.min_site_km, closer=True))


def _first_apart(
    picks: Sequence[EventStation], km: float, *, most: int | None = None, closer: bool = False
) -> list[int]:
    """Indices of the picks, in their order, that are not within ``km`` (``closer``:
    closer than ``km``) of an earlier one so chosen; at most ``most`` of them."""
    n = len(picks)
    if not n:
        return []
    lat = np.array([s.lat for s in picks], dtype=np.float64)
    lon = np.array([s.lon for s in picks], dtype=np.float64)
    # Each chosen pick's distances to the picks after it only: a dense network's picks
    # fall in a few dozen neighbourhoods, and the pairs of all of them (:func:`_within`)
    # were a tenth of a relocating step at Taiwan's density. The same distances
    # (``distance_km`` from the chosen pick), the same comparison.
    covered = np.zeros(n, dtype=np.bool_)
    first: list[int] = []
    for k in range(n):
        if covered[k]:
            continue
        first.append(k)
        if most is not None and len(first) == most:
            break
        d = distance_km(lat[k : k + 1], lon[k : k + 1], lat[k + 1 :], lon[k + 1 :])
        covered[k + 1 :] |= d < km if closer else d <= km
    return first


def _group(
    anchor: int,
    picks: Sequence[EventStation],
    consistent: NDArray[np.bool_],
    order: NDArray[np.intp],
    best: int = 0,
) -> list[int]:
    """Greedy largest set containing ``picks[anchor]`` whose members are pairwise
    consistent (``consistent``: :func:`_consistent_pairs`), as indices into ``picks``:
    the anchor's consistent picks nearest in time first (ties by station id: ``order``,
    each pick's rank by station id). Empty when it cannot be larger than ``best``."""
    me = picks[anchor].station_id
    others = np.flatnonzero(consistent[anchor])
    others = np.array([j for j in others.tolist() if picks[j].station_id != me], dtype=np.intp)
    if len(others) + 1 <= best:
        return []
    t = np.array([picks[j].p_time_s for j in others.tolist()], dtype=np.float64)
    # lexsort: the last key is the primary one.
    others = others[np.lexsort((order[others], np.abs(t - picks[anchor].p_time_s)))]
    group = [anchor]
    # Which picks are consistent with every member after the anchor (the anchor's own
    # consistency is the candidates' condition).
    fits = np.ones(len(picks), dtype=np.bool_)
    for j in others.tolist():
        if fits[j]:
            group.append(j)
            fits &= consistent[j]
    return group


def _declare(
    pending: Sequence[EventStation],
    armed: dict[str, tuple[float, float, float | None, float, float]],
    now_s: float,
    taken: set[str],
    cfg: QuakeConfig,
) -> _EventState | None:
    """A new event from pending picks, or None while the evidence is not there yet."""
    thr = cfg.association
    # A pick counts once its P wave has been seen long enough to judge it (or when it
    # carries no waveform features at all), and when it does not look human-made.
    usable = sorted(
        (
            u
            for u in pending
            if (u.pa_gal is None or u.p_window_s >= 0.5) and not _noise_like(u, thr)
        ),
        key=lambda u: (u.p_time_s, u.station_id),
    )
    consistent = _consistent_pairs(usable, thr)
    ranks = np.empty(len(usable), dtype=np.intp)
    ranks[sorted(range(len(usable)), key=lambda i: usable[i].station_id)] = np.arange(len(usable))
    chosen: list[int] = []
    for anchor in range(len(usable)):
        g = _group(anchor, usable, consistent, ranks, len(chosen))
        if len(g) > len(chosen):
            chosen = g
    best = [usable[i] for i in chosen]
    if _sites(best, thr) < thr.min_stations:
        return None
    names = {s.station_id for s in best}
    # The silent stations are judged at the largest magnitude the picks allow.
    largest = _largest_magnitude(best, now_s, cfg)
    hypo = _locate_picks(best, armed, names, now_s, cfg, magnitude=largest)
    if hypo.rms_s > thr.max_rms_s:
        # An odd pick in the group (noise a second before the P, an S taken for P): the
        # location is robust to it (its residual is capped), the RMS is not. Without the
        # picks far off that solution, the rest are judged as a group of their own; the
        # odd ones stay pending (a trigger 1.2 s before the origin held an offshore M7.3
        # back for 6 s, until it expired).
        keep = [s for s in best if abs(_residual(s, hypo, cfg)) <= 3.0 * thr.pick_sigma_s]
        if len(keep) == len(best) or _sites(keep, thr) < thr.min_stations:
            return None
        best = keep
        names = {s.station_id for s in best}
        hypo = _locate_picks(
            best, armed, names, now_s, cfg, magnitude=_largest_magnitude(best, now_s, cfg)
        )
        if hypo.rms_s > thr.max_rms_s:
            return None
    # Few picks that leave the epicentre or the magnitude open wait for one more (about
    # a second), unless none has come for a while: a small quake may never bring more.
    # A line of picks fits near and far offshore alike; a depth the picks do not
    # resolve is a magnitude they do not resolve (Pd's distance is mostly depth under
    # the network).
    # Any pick counts as news, usable yet or not: a group's newest pick may be seconds old
    # while the next stations' picks are still being judged.
    recent = now_s - max(u.p_time_s for u in pending) < cfg.declare_max_wait_s
    if (
        recent
        and len(best) < 2 * thr.min_stations
        and (
            hypo.uncertainty_km > thr.declare_max_uncertainty_km
            or _depth_open(best, hypo, now_s, cfg)
        )
    ):
        return None
    sites = _sites(best, thr)
    if sites <= thr.min_stations:
        if hypo.quality == "poor":
            return None
        # Triggers alone (an external picker, no waveform features) cannot be judged.
        featured = [s for s in best if s.pa_gal is not None]
        if featured and not any(_quake_like(s, thr) for s in featured):
            return None
    first = min(s.p_time_s for s in best)
    ev = _EventState(
        event_id=_event_id(first, taken),
        stations=tuple(sorted(best, key=lambda s: (s.p_time_s, s.station_id))),
        first_trigger_s=first,
        last_trigger_s=max(s.p_time_s for s in best),
        hypo=hypo,
        located_at_s=now_s,
    )
    if _contradicted(ev, armed, now_s, cfg) or _disagree(ev, now_s, cfg):
        return None
    return ev


def _largest_magnitude(
    picks: Sequence[EventStation], now_s: float, cfg: QuakeConfig
) -> float | None:
    """The largest magnitude the picks allow, at which a declaration judges the armed
    stations that did not trigger: located alone (no silent station), the largest of
    the magnitudes at the located depth and at the ends of the depths the picks allow
    (a deeper source is farther from every station, so it reads larger). None while no
    measure gives one, from ``min_stations`` picks or fewer (three picks do not locate
    alone: four unknowns), or where the picks alone do not fit one source (RMS over
    twice the pick error: an odd pick the location may have taken for the P).

    A silent station whose P would stand under ``unpicked_min_pa_snr`` times its noise
    even at this magnitude cannot object. Without a magnitude every late station costs
    like a bad pick, however far under its noise that P would be: the six stations above
    a 98 km deep M5.3 under noise pulled its five picks' solution 32-41 km off (RMS
    2.3-2.7 s) and held its alert to 5.1 s after the fifth P. At the magnitude of the
    picks' own location instead, a deep quake that the picks alone put shallow reads low
    and excuses the very stations that would pull it down (a deep M6.2 was first put 64
    km too shallow and read 1.5 low): the largest magnitude does not depend on the depth
    the silent stations are to decide."""
    thr = cfg.association
    if len(picks) <= thr.min_stations:
        return None
    alone = _located_alone(picks, now_s, cfg)
    if alone.rms_s > 2.0 * thr.pick_sigma_s:
        return None
    depths = {alone.depth_km, *(alone.depth_range_km or ())}
    mags = [_magnitude(picks, replace(alone, depth_km=z), now_s, cfg) for z in sorted(depths)]
    known = [m for m, method in mags if method != "none"]
    return max(known) if known else None


#: :func:`_located_alone`'s locations by pick set, each with the config it was made with.
_ALONE: dict[
    tuple[tuple[float, str, float, float, float | None], ...], tuple[QuakeConfig, Hypocentre]
] = {}
#: How many pick sets :data:`_ALONE` keeps (then it starts again).
_ALONE_KEPT = 256


def _located_alone(picks: Sequence[EventStation], now_s: float, cfg: QuakeConfig) -> Hypocentre:
    """The picks located alone (no silent station): a function of the picks only, so
    kept by pick set. A declaration waiting for one more pick asks every second with the
    same picks, and at Taiwan's density each location is a whole-region search."""
    key = tuple(sorted((s.p_time_s, s.station_id, s.lat, s.lon, s.s_time_s) for s in picks))
    hit = _ALONE.get(key)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    hypo = _locate_picks(picks, {}, set(), now_s, cfg)
    if len(_ALONE) >= _ALONE_KEPT:
        _ALONE.clear()
    _ALONE[key] = (cfg, hypo)
    return hypo


def _too_wide(
    picks: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> bool:
    """A first location from a handful of picks whose confidence region is still wide
    (``declare_wide_km``) while the next pick can come in time: until
    ``declare_wide_wait_s`` after the group's fifth pick. Picks along one coast fit a
    deep source near it and a shallow one farther out alike (the depth prior then
    chooses the shallow one: 35-64 km off); a second later the stations a step inland
    tell them apart."""
    if len(picks) >= cfg.declare_wide_max_picks or hypo.uncertainty_km <= cfg.declare_wide_km:
        return False
    times = sorted(u.p_time_s for u in picks)
    fifth = times[min(4, len(times) - 1)]
    return now_s < fifth + cfg.declare_wide_wait_s


def _wait_until(picks: Sequence[EventStation], cfg: QuakeConfig) -> float:
    """How long a first location may wait for one more pick once it has five:
    ``declare_wide_wait_s`` after the fifth pick (epoch s; without five picks, no bound:
    the issue's 3 s after the fifth P has not started)."""
    if len(picks) < 5:
        return math.inf
    return sorted(u.p_time_s for u in picks)[4] + cfg.declare_wide_wait_s


def _depth_open(
    picks: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> bool:
    """A first location whose magnitude changes by more than
    ``declare_max_magnitude_span`` over the depths the picks allow waits for one more
    pick: only while the S wave has not surely reached the nearest station (at every
    depth the picks allow; once it has, the places nearest the source need the warning
    now, and a shallow source near the stations is what the depth prior expects), and
    from five picks on no longer than a wide location waits (:func:`_wait_until`: the
    alert stays within 3 s of the fifth P)."""
    if now_s >= min(_first_s_arrival(picks, hypo, cfg), _wait_until(picks, cfg)):
        return False
    return _magnitude_span(picks, hypo, now_s, cfg) > cfg.declare_max_magnitude_span


def _first_s_arrival(stations: Sequence[EventStation], hypo: Hypocentre, cfg: QuakeConfig) -> float:
    """When the S wave has surely reached one of ``stations`` (picks), epoch s: the
    earliest over the stations of their own P pick plus the S - P time at the deepest
    depth the picks allow (``hypo.depth_range_km``).

    The S - P time grows with the hypocentral distance, so a depth the picks do not
    resolve is an S arrival they do not resolve: at the located depth alone, a 71 km deep
    M5.6 first put at 15 km (its origin 6 s late) had its S "at" the nearest station 2 s
    before the alert, and was declared a unit low while the picks allowed 92 km."""
    thr = cfg.association
    lat = np.array([s.lat for s in stations])
    lon = np.array([s.lon for s in stations])
    deepest = hypo.depth_km if hypo.depth_range_km is None else max(hypo.depth_range_km)
    r = _hypocentral_km(replace(hypo, depth_km=deepest), lat, lon)
    s_minus_p = r * (1.0 / thr.vs_kms - 1.0 / (thr.vp_kms * hypo.vp_scale))
    return float(np.min(np.array([s.p_time_s for s in stations]) + s_minus_p))


def _magnitude_span(
    stations: Sequence[EventStation], hypo: Hypocentre, now_s: float, cfg: QuakeConfig
) -> float:
    """How much the magnitude changes over the depths the picks allow (the confidence
    region's): Pd and the P amplitude fall with hypocentral distance, so a depth the
    picks do not constrain is a magnitude they do not constrain, most where the
    stations are near the epicentre (a deep quake under the network)."""
    if hypo.depth_range_km is None:
        return 0.0
    # Each station keeps the P window the located hypocentre chose: the span measures
    # what the depth does to the distances, not which shorter window a station offers
    # (a shallower source brings S closer to P, and a shorter window reads lower).
    _, t_p, t_s = _arrivals(stations, hypo, cfg)
    frozen = [
        replace(s, shorter=())
        if f is None
        else replace(
            s,
            shorter=(),
            p_window_s=f.p_window_s,
            pd_cm=f.pd_cm,
            pd_snr=f.pd_snr,
            pa_gal=f.pa_gal,
            pa_snr=f.pa_snr,
            tau_c_s=f.tau_c_s,
        )
        for s, f in zip(stations, _clear_features(stations, t_s - t_p, cfg), strict=True)
    ]
    mags = [_magnitude(frozen, replace(hypo, depth_km=z), now_s, cfg) for z in hypo.depth_range_km]
    if any(method == "none" for _, method in mags):
        return 0.0
    return abs(mags[1][0] - mags[0][0])


def _disagree(ev: _EventState, now_s: float, cfg: QuakeConfig) -> bool:
    """The picks' P-amplitude magnitudes spread more than an earthquake's would (a burst
    of unrelated noise on a few stations is not one source)."""
    _, m_pa, _, _ = _station_magnitudes(ev.picks, ev.hypo, now_s, cfg)
    m = m_pa[np.isfinite(m_pa)]
    return m.size >= 3 and float(m.max() - m.min()) > 2 * cfg.association.max_magnitude_spread


def _contradicted(
    ev: _EventState,
    armed: dict[str, tuple[float, float, float | None, float, float]],
    now_s: float,
    cfg: QuakeConfig,
) -> bool:
    """Armed stations that should have triggered by now (their predicted P passed and the
    magnitude says they would see it well above their noise) but did not: more than a
    third of the picks' number of them means the picks are not one earthquake."""
    thr = cfg.association
    names = {s.station_id for s in ev.stations}
    cons, ids = _constraints(armed, names, ev.hypo.lat, ev.hypo.lon, now_s, cfg)
    if not ids:
        return False
    mag, _ = _magnitude(ev.picks, ev.hypo, now_s, cfg)
    h = ev.hypo
    r = _hypocentral_km(h, cons.lat, cons.lon)
    tp = h.origin_s + r / (thr.vp_kms * h.vp_scale)
    due = (tp >= cons.since_s) & (tp + thr.unpicked_margin_s <= np.minimum(cons.until_s, now_s))
    if not due.any():
        return False
    noise = np.array([max(armed[k][4], 1e-3) for k in ids])
    expected = thr.p_to_s_ratio * cfg.ground_motion.pga_gal(pa_reading(mag, thr), r)
    missing = int(np.sum(due & (expected >= thr.unpicked_min_pa_snr * noise)))
    return missing > max(1, len(ev.picks) // 3)


def _event_id(first_p_s: float, taken: set[str]) -> str:
    stamp = datetime.fromtimestamp(first_p_s, UTC)
    base = f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 100_000}"
    eid, n = base, 1
    while eid in taken:
        n += 1
        eid = f"{base}-{n}"
    return eid


def _material(
    published: tuple[int, float, int, float, float] | None,
    key: tuple[int, float, int, float, float],
    cfg: QuakeConfig,
) -> bool:
    if published is None:
        return True
    n, mag, level, lat, lon = published
    moved = float(distance_km(lat, lon, key[3], key[4]))
    return (
        key[0] > n
        or abs(key[1] - mag) >= cfg.change_magnitude
        or key[2] != level
        or moved >= cfg.change_location_km
    )


# --------------------------------------------------------------------------- shaking


def _within(
    lat: FloatArray, lon: FloatArray, p_lat: FloatArray, p_lon: FloatArray, km: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], FloatArray]:
    """The pairs (place ``i``, point ``j``) at most ``km`` apart, and their distances, km.

    Distances only for pairs in the same band of latitude (a great-circle distance is at
    least the meridian arc between the two latitudes) and of longitude, not for every
    pair: the region's 2,475 cells against 615 stations were 1.5 million distances per
    update."""
    order = np.argsort(lat, kind="stable")
    by_lat = lat[order]
    band = math.degrees(km / EARTH_RADIUS_KM) * (1 + 1e-9) + 1e-9
    lo = np.searchsorted(by_lat, p_lat - band, side="left")
    counts = np.maximum(np.searchsorted(by_lat, p_lat + band, side="right") - lo, 0)
    j = np.repeat(np.arange(p_lat.size, dtype=np.intp), counts)
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    i = order[first + np.arange(j.size, dtype=np.intp)]
    # And in the same band of longitude, as wide as a parallel's arc of ``km`` is at the
    # highest latitude (haversine: h >= cos(lat1) cos(lat2) sin^2(dlon / 2)).
    top = max(float(np.abs(lat).max(initial=0.0)), float(np.abs(p_lat).max(initial=0.0)))
    top = min(math.radians(top + band), math.pi / 2)
    reach = math.sin(km / (2 * EARTH_RADIUS_KM)) / max(math.cos(top), 1e-12)
    if reach < 1.0:
        lon_band = math.degrees(2 * math.asin(reach)) * (1 + 1e-9) + 1e-9
        dl = np.abs(lon[i] - p_lon[j])
        keep = np.minimum(dl, 360.0 - dl) <= lon_band
        i, j = i[keep], j[keep]
    d = distance_km(lat[i], lon[i], p_lat[j], p_lon[j])
    ok = d <= km
    return i[ok], j[ok], np.asarray(d[ok], dtype=np.float64)


def _level_at(
    lat: FloatArray,
    lon: FloatArray,
    h: Hypocentre,
    mag: float,
    stations: Sequence[EventStation],
    cfg: QuakeConfig,
) -> tuple[FloatArray, FloatArray, NDArray[np.int64], FloatArray]:
    """PGA gal, PGV cm/s, CWA ordinal (raised to what a near station observed) and
    hypocentral distance km at places."""
    r = _hypocentral_km(h, lat, lon)
    gm = cfg.ground_motion
    pga = gm.pga_gal(mag, r)
    pgv = gm.pgv_cms(mag, r, h.depth_km)
    levels = cwa_intensity_ordinals(pga, pgv, cfg.intensity_scale)
    if stations and lat.size:
        s_lat = np.array([s.lat for s in stations])
        s_lon = np.array([s.lon for s in stations])
        observed = cwa_intensity_ordinals(
            np.array([s.pga_gal for s in stations]),
            np.array([s.pgv_cms for s in stations]),
            cfg.intensity_scale,
        )
        place, station, _ = _within(lat, lon, s_lat, s_lon, cfg.station_correction_km)
        seen = np.zeros(lat.shape, dtype=np.int64)
        np.maximum.at(seen, place, observed[station])
        levels = np.maximum(levels, seen)
    return pga, pgv, np.asarray(levels, dtype=np.int64), np.asarray(r, dtype=np.float64)


def _snapshot(ev: _EventState, now_s: float, cfg: QuakeConfig, *, closed: bool) -> QuakeEvent:
    """The event's current magnitude and expected shaking."""
    thr = cfg.association
    h = ev.hypo
    st = ev.stations
    mag, method = _magnitude(st, h, now_s, cfg)

    # The warning region's cells, snapped to the grid so cells are the same across updates.
    lat0, lon0, lat1, lon1 = thr.region_deg
    c = cfg.cell_deg
    lat_c = (np.arange(math.floor(lat0 / c + 1e-9), math.ceil(lat1 / c - 1e-9)) + 0.5) * c
    lon_c = (np.arange(math.floor(lon0 / c + 1e-9), math.ceil(lon1 / c - 1e-9)) + 0.5) * c
    g_lat, g_lon = (a.ravel() for a in np.meshgrid(lat_c, lon_c, indexing="ij"))
    pga, pgv, levels, r = _level_at(g_lat, g_lon, h, mag, st, cfg)
    s_wave = np.maximum(0.0, h.origin_s + r / thr.vs_kms - now_s)
    observed = cwa_intensity_ordinals(
        np.array([s.pga_gal for s in st]), np.array([s.pgv_cms for s in st]), cfg.intensity_scale
    )
    max_level = int(max(levels.max(initial=0), observed.max(initial=0)))
    floor = intensity_ordinal(thr.report_min_intensity)

    keep = np.flatnonzero(levels >= floor)
    towns: list[str | None] = [None] * len(keep)
    places: list[PlaceWarning] = []
    if cfg.townships:
        t_lat = np.array([t.lat for t in cfg.townships])
        t_lon = np.array([t.lon for t in cfg.townships])
        if len(keep):
            cell, town_of, d_ct = _within(
                g_lat[keep], g_lon[keep], t_lat, t_lon, cfg.township_cell_km
            )
            # Per cell the nearest township in reach (the first of equals).
            by = np.lexsort((town_of, d_ct, cell))
            firsts = by[np.flatnonzero(np.diff(cell[by], prepend=-1))]
            for k in firsts.tolist():
                towns[int(cell[k])] = cfg.townships[int(town_of[k])].code
        _, _, t_levels, t_r = _level_at(t_lat, t_lon, h, mag, st, cfg)
        warned = set(ev.warned)
        for i, town in enumerate(cfg.townships):
            if t_levels[i] >= floor or town.code in warned:
                places.append(
                    PlaceWarning(
                        township=town.code,
                        intensity=level_from_ordinal(int(t_levels[i])),
                        s_arrival_s=h.origin_s + float(t_r[i]) / thr.vs_kms,
                    )
                )
        # Each township's highest cell, in one pass over the cells.
        cell_best: dict[str, int] = {}
        for k, t in enumerate(towns):
            if t is not None:
                cell_best[t] = max(cell_best.get(t, 0), int(levels[keep[k]]))
        index = {t.code: k for k, t in reversed(list(enumerate(cfg.townships)))}
        # A township whose cell reaches the level is warned even if its centroid does not.
        for code in sorted(cell_best.keys() - {p.township for p in places}):
            i = index[code]
            best = cell_best[code]
            places.append(
                PlaceWarning(
                    township=code,
                    intensity=level_from_ordinal(max(best, int(t_levels[i]))),
                    s_arrival_s=h.origin_s + float(t_r[i]) / thr.vs_kms,
                )
            )
        places.sort(key=lambda p: p.township)
    # Hundreds of cells per update: their numbers taken out of the arrays at once.
    ordinals = levels[keep].tolist()
    names = {o: level_from_ordinal(o) for o in set(ordinals)}
    cells = tuple(
        CellShaking(
            lat=round(c_lat, 4),
            lon=round(c_lon, 4),
            pga_gal=c_pga,
            pgv_cms=c_pgv,
            intensity=names[o],
            s_wave_s=c_s,
            township=town,
        )
        for c_lat, c_lon, c_pga, c_pgv, o, c_s, town in zip(
            g_lat[keep].tolist(),
            g_lon[keep].tolist(),
            pga[keep].tolist(),
            pgv[keep].tolist(),
            ordinals,
            s_wave[keep].tolist(),
            towns,
            strict=True,
        )
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
        townships=tuple(p.township for p in places),
        first_trigger_s=ev.first_trigger_s,
        computed_at_s=now_s,
        closed=closed,
        cell_broadcast_level=cell_broadcast_min_level(mag),
        location=h,
        places=tuple(places),
        n_picks=len(ev.picks),
    )


def township_intensities(event: QuakeEvent) -> dict[str, str]:
    """The highest CWA level of each warned township, by township code: its place
    warning and its reported cells (a cell belongs to the township with the nearest
    centroid, :attr:`QuakeConfig.townships`; cells without a township are left out)."""
    best: dict[str, str] = {}
    named = [(p.township, p.intensity) for p in event.places]
    named += [(c.township, c.intensity) for c in event.cells if c.township is not None]
    for town, level in named:
        if town not in best or intensity_ordinal(level) > intensity_ordinal(best[town]):
            best[town] = level
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
    Seconds to the S wave count from ``detected_at``: the S wave's arrival is a moment
    (origin + distance / vs) whatever the clock the event was computed on.

    Args:
        event: the event to report.
        detected_at: when the processor decided (processing clock, aware).
        config: the settings used for the event (for the minimum level).
    """
    cfg = config if config is not None else QuakeConfig()
    thr = cfg.association
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
    # The cells' countdowns were computed at the event's stream time; shift them to the
    # decision's clock.
    lag = detected_at.timestamp() - event.computed_at_s
    loc = event.location
    quality = loc.quality if loc is not None else "unknown"
    evidence: dict[str, float | str] = {
        "magnitude": event.magnitude,
        "magnitude_method": event.magnitude_method,
        "depth_km": event.depth_km,
        "origin_time": origin.isoformat(timespec="milliseconds"),
        "epicentre_lat": event.lat,
        "epicentre_lon": event.lon,
        "n_stations": float(event.n_stations),
        "n_picks": float(event.n_picks),
        "max_intensity": event.max_intensity,
        "rms_residual_s": event.rms_s,
        "location_quality": quality,
        "cell_broadcast_min_level": event.cell_broadcast_level or "none",
    }
    if loc is not None:
        evidence["location_uncertainty_km"] = loc.uncertainty_km
        evidence["azimuthal_gap_deg"] = loc.gap_deg
        evidence["n_s_picks"] = float(loc.n_s_picks)
    uncertain = " (location uncertain)" if quality == "poor" else ""
    return AlertCandidate(
        hazard="earthquake",
        area_code=f"quake-{event.event_id}",
        area_desc=f"Earthquake M{event.magnitude:.1f} near {lat_lon}",
        level=level,
        severity=_SEVERITY_FROM_ORDINAL[level],
        headline=f"Earthquake M{event.magnitude:.1f} near {lat_lon}{uncertain}, {state}",
        description=(
            f"Origin {origin.isoformat(timespec='seconds')}, depth {event.depth_km:.0f} km, "
            f"{event.n_stations} stations; {len(event.cells)} cells at intensity "
            f">= {thr.report_min_intensity}; location {quality}."
        ),
        metric="cwa_intensity_ordinal",
        value=float(level),
        threshold=float(intensity_ordinal(thr.report_min_intensity)),
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
                s_wave_s=max(0.0, c.s_wave_s - lag),
                township=c.township,
            )
            for c in event.cells
        ),
        places=tuple(
            PlaceShaking(
                township=p.township,
                intensity=p.intensity,
                s_wave_s=max(0.0, p.s_arrival_s - detected_at.timestamp()),
            )
            for p in event.places
        ),
        evidence=evidence,
    )
