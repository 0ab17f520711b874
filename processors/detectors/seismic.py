"""Per-station earthquake detection: STA/LTA trigger, P and S picks, P-wave features, PGA,
PGV.

A station (a low-cost MEMS accelerometer such as OpenEEW or P-Alert) sends a packet of
three-component acceleration about once a second. :func:`process_packet` takes the
station's :class:`StationState` and one packet and returns a :class:`PacketResult` with
the new state; nothing is mutated and nothing does I/O, so the Faust agent only has to
keep ``result.state`` in its table.

Signal chain, every filter carried across packets so that a stream cut into packets gives
the same numbers as one long array (each filter is a cascade of first-order sections,
solved in closed form per packet, :func:`_recurse`):

1. **High-pass** each component (first-order, ``highpass_hz``, default 0.075 Hz): removes
   the sensor offset (gravity on the vertical axis of many MEMS boards) and slow drift.
   The first packet's mean seeds the filter so a 980 gal offset does not ring.
2. **Characteristic function** (CF): the squared acceleration in the trigger band
   (``cf_band_hz``, two high-pass and two low-pass sections), on the vertical component
   by default. At 50-120 km the P onset is about a gal against a few tenths of MEMS
   noise spread over 0-50 Hz: the band keeps the P wave's energy and drops most of the
   noise, and the vertical is where P is strongest and S weakest, so a far station
   picks P instead of triggering on S.
3. **Recursive STA/LTA** (ObsPy ``recursive_sta_lta``: ``sta += (cf - sta) / n_sta``),
   trigger when the ratio crosses ``trigger_ratio`` upwards; none until ``lta_s`` of data
   has been seen (warm-up), during which the LTA is the plain mean of the samples so far
   (a recursive average from 0 would read 63 % of the noise when the station arms, and
   noise would cross the threshold). The LTA is **frozen** while the event window is open, as
   strong-motion recorders do: it keeps measuring the noise before the trigger, so the
   ratio says how far the signal stands above that noise, and a spike does not inflate
   the LTA and blind the station for the next minute.
4. **Velocity** by leaky integration (an integrator followed by a first-order high-pass
   at ``highpass_hz``; the leak stops MEMS noise from random-walking), for PGV.
5. **P-wave chain** on the vertical: a further high-pass at ``pd_highpass_hz`` and two
   leaky integrators at that corner give the velocity and displacement from which Pd
   (peak displacement), Pv and tau_c (Wu & Kanamori 2005, ``2 pi sqrt(sum u^2 / sum
   u'^2)``) are measured over the first ``pd_window_s`` after P. Wu & Zhao (2006) used
   0.075 Hz; MEMS noise integrates to ~0.025 cm of displacement at that corner, which
   hides the Pd of an M5 beyond ~20 km, hence a higher corner (the magnitude corrects for
   the filter, :mod:`processors.detectors.quake`).

6. **S pick**, inside an event window only (:func:`_s_pick`): the STA of the horizontal
   energy of the high-passed acceleration against its mean since the trigger (the P
   coda; frozen while the ratio stands high), an upward crossing of ``s_ratio`` at least
   ``s_min_after_p_s`` after P, picked back to where the ratio was last low. One pick
   per window, dropped when the window closes as a transient.

After a trigger the station's *event window* tracks PGA and PGV (peaks of the
three-component vector of high-passed acceleration and velocity: orientation-free and
never below any single component; whether CWA uses the vector or the larger horizontal
is *unconfirmed*), the P-wave features and the CWA intensity reached so far.

The window closes, and the station can trigger again:

- as a **transient** when the STA fades to ``transient_fraction`` of its peak within
  ``transient_max_s`` of the trigger (a spike, a slammed door): the station is armed again
  at once, so a real P wave a few seconds later is still picked, also in the spike's
  tail (a rise by the trigger ratio over the tail's lowest STA is an onset);
- otherwise once the ratio has fallen below ``detrigger_ratio`` and at least
  ``min_event_window_s`` have passed (long enough for the S wave at stations a few hundred
  km away), or after ``max_event_window_s`` whatever the ratio; then no new trigger until
  ``retrigger_lockout_s`` after the P pick (OpenEEW), so the coda of a real quake does not
  fire again.

Samples are rows, components columns: ``(n, 3)`` in gal, ordered east, north, vertical
(``vertical_axis`` says which column is vertical).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.processing import Observation, StationStatus, Trigger
from civic_iot.thresholds import StaLtaThresholds
from processors.detectors.intensity import CWA_2020, IntensityScale, cwa_intensity
from processors.detectors.state import stored

__all__ = [
    "PacketResult",
    "SeismicConfig",
    "StationState",
    "process_packet",
    "process_packets",
]

FloatArray = NDArray[np.float64]
Vec3 = tuple[float, float, float]
_ZERO3: Vec3 = (0.0, 0.0, 0.0)
#: Memory of the trigger band's four sections: (high-pass 1 input, high-pass 1 output,
#: high-pass 2 output, low-pass 1 output, low-pass 2 output), per CF component.
CfMemory = tuple[Vec3, Vec3, Vec3, Vec3, Vec3]
_CF_ZERO: CfMemory = (_ZERO3, _ZERO3, _ZERO3, _ZERO3, _ZERO3)


@dataclass(frozen=True, slots=True)
class SeismicConfig:
    """Per-station detection settings.

    Attributes:
        sta_lta: the STA/LTA trigger (the thresholds file's ``seismic`` section): STA and
            LTA windows, s (the LTA is also the warm-up), trigger and detrigger ratios,
            the trigger band, Hz, the transient and re-trigger rules, s, and the event
            window's minimum and maximum length after P, s.
        highpass_hz: corner of the first-order high-pass on acceleration and of the leaky
            integrator for velocity (PGV), Hz (0.075 Hz after Wu & Zhao 2006).
        pd_highpass_hz: corner of the P-wave chain (Pd, Pv, tau_c), Hz; network-wide (the
            thresholds file's ``quake.pd_highpass_hz``), since the magnitude corrects for it.
        pd_window_s: P-wave features are measured over this long after P, s (3 s).
        max_gap_s: a jump in packet time larger than this (s) restarts the filters and the
            warm-up; smaller gaps are bridged as if contiguous.
        noise_window_s: time constant of the running mean square of the P-wave chain's
            displacement outside event windows, s; Pd is compared with it (``pd_snr``).
        vertical_axis: column (0-2) holding the vertical component.
        intensity_scale: the intensity table.
    """

    sta_lta: StaLtaThresholds = field(default_factory=StaLtaThresholds)
    highpass_hz: float = 0.075
    pd_highpass_hz: float = 0.2
    pd_window_s: float = 3.0
    max_gap_s: float = 2.0
    noise_window_s: float = 30.0
    vertical_axis: int = 2
    intensity_scale: IntensityScale = field(default=CWA_2020)

    def __post_init__(self) -> None:
        if self.vertical_axis not in (0, 1, 2):
            msg = f"vertical_axis must be 0, 1 or 2, got {self.vertical_axis}"
            raise ValueError(msg)


@stored
class StationState:
    """Everything a station's detector carries between packets: a fixed set of numbers.

    Times are epoch seconds (float, UTC); accelerations gal; velocities cm/s;
    displacements cm. Build a fresh one with ``StationState()``.
    """

    #: Sample rate of the stream, Hz; 0 before the first packet.
    sample_rate_hz: float = 0.0
    #: Expected time of the next sample, s; None before the first packet.
    next_t_s: float | None = None
    #: Samples seen since the filters (re)started; capped, only compared with the warm-up.
    n_seen: int = 0
    #: Last raw sample (high-pass memory), gal.
    x_prev: Vec3 = _ZERO3
    #: Last high-passed acceleration, gal.
    acc: Vec3 = _ZERO3
    #: Last velocity, cm/s.
    vel: Vec3 = _ZERO3
    #: Trigger-band filter memory (see :data:`CfMemory`), gal.
    cf_mem: CfMemory = _CF_ZERO
    #: P-wave chain on the vertical: acceleration gal, velocity cm/s, displacement cm.
    pz: Vec3 = _ZERO3
    #: Short- and long-term averages of the characteristic function, gal^2.
    sta: float = 0.0
    lta: float = 0.0
    #: Time the warm-up ended (the LTA had filled), s; None before.
    warm_since_s: float | None = None
    #: No trigger before this time (the re-trigger lockout, or the end of a window), s.
    rearm_s: float | None = None
    #: Time of the last trigger (P pick), s.
    last_trigger_s: float | None = None
    #: Last time the ratio was below ``onset_ratio`` while armed, s (the P onset is
    #: picked back there: the ratio crosses the trigger ratio after the onset).
    quiet_s: float | None = None
    #: Whether the event window is open.
    in_event: bool = False
    #: P time of the current (or last) event window, s.
    event_p_time_s: float | None = None
    #: Peaks in the current (or last) event window: PGA gal, PGV cm/s.
    event_pga_gal: float = 0.0
    event_pgv_cms: float = 0.0
    #: P-wave features of that window (first ``pd_window_s``): Pd cm, Pv cm/s, Pa gal
    #: (trigger band), sums of squared displacement and velocity (tau_c), seconds seen.
    event_pd_cm: float = 0.0
    event_pv_cms: float = 0.0
    event_pa_gal: float = 0.0
    event_sum_d2: float = 0.0
    event_sum_v2: float = 0.0
    event_p_window_s: float = 0.0
    #: The LTA frozen at the trigger (the noise the signal stands against), gal^2.
    event_noise_ms: float = 0.0
    #: The last window closed as a transient (its STA faded within transient_max_s).
    event_transient: bool = False
    #: Highest STA since the trigger, gal^2 (the transient rule compares with it).
    event_sta_peak: float = 0.0
    #: The LTA stays frozen after a transient until the ratio is below detrigger.
    lta_hold: bool = False
    #: Lowest STA since that hold began, gal^2 (a P in the spike's tail is a rise over it).
    hold_floor: float = 0.0
    #: Running mean square of the P-wave chain's displacement outside windows, cm^2.
    disp_noise_ms: float = 0.0
    #: S pick of the current (or last) event window, s; None: none (yet).
    event_s_time_s: float | None = None
    #: The S picker in the open window (reset by each trigger): STA of the horizontal
    #: energy, gal^2; sum of that energy since the trigger, gal^2, and its sample count
    #: (their mean is the reference); the reference frozen while the ratio stands high,
    #: gal^2 (0: the running mean); the ratio at the last sample; last time the ratio
    #: was below ``s_onset_ratio``, s.
    s_sta: float = 0.0
    s_sum: float = 0.0
    s_count: int = 0
    s_ref: float = 0.0
    s_prev_ratio: float = 0.0
    s_quiet_s: float | None = None


@dataclass(frozen=True, slots=True)
class PacketResult:
    """What one packet did to a station.

    Attributes:
        state: the station's new state; store it.
        triggered: a new trigger happened in this packet.
        p_time_s: its P pick, epoch s (None unless ``triggered``).
        in_event: the event window is open after this packet.
        event_ended: an event window closed in this packet (with ``triggered`` also True,
            the previous window closed and a new one opened).
        event_p_time_s: P time of the current or last event window, epoch s.
        event_pga_gal: PGA so far in that window, gal.
        event_pgv_cms: PGV so far in that window, cm/s.
        event_intensity: CWA level from those two.
        pd_cm: peak vertical displacement so far in the P window, cm (None if no window).
        pd_complete: the whole P window (``pd_window_s`` after P) has been seen.
        pd_snr: ``pd_cm`` over the RMS displacement of the noise before the event
            (inf when no noise has been measured; None if no window).
        pv_cms: peak vertical velocity so far in the P window, cm/s (None if no window).
        pa_gal: peak vertical acceleration in the trigger band so far in the P window,
            gal (None if no window).
        pa_snr: ``pa_gal`` over the RMS of the trigger band before the trigger (inf when
            it was 0; None if no window).
        tau_c_s: Wu & Kanamori's tau_c over the P window so far, s (None until 0.5 s of
            P has been seen or when the velocity is zero).
        p_window_s: seconds of P wave the features cover (0 to ``pd_window_s``).
        transient: the window closed as a transient.
        armed_since_s: the detector has been able to trigger continuously since this
            time, epoch s, up to the packet's end; None when it cannot (warm-up, window
            open, lockout).
        noise_gal: RMS of the trigger band the station currently measures (sqrt LTA), gal.
        packet_pga_gal: peak vector acceleration in this packet, gal (for storage).
        packet_pgv_cms: peak vector velocity in this packet, cm/s.
        packet_max_ratio: highest STA/LTA ratio in this packet (0 during warm-up).
        warmed_up: the LTA has filled; triggers are possible.
        restarted: the filters restarted with this packet (first packet, gap, new rate).
        duplicate: every sample of this packet had been seen already; nothing changed.
        end_s: time of the sample after the packet's last, epoch s.
        s_time_s: the S pick of the current or last event window, epoch s (None: none
            yet, or none: a transient window, S - P under ``s_min_after_p_s``).
    """

    state: StationState
    triggered: bool
    p_time_s: float | None
    in_event: bool
    event_ended: bool
    event_p_time_s: float | None
    event_pga_gal: float
    event_pgv_cms: float
    event_intensity: str
    pd_cm: float | None
    pd_complete: bool
    pd_snr: float | None
    pv_cms: float | None
    pa_gal: float | None
    pa_snr: float | None
    tau_c_s: float | None
    p_window_s: float
    transient: bool
    armed_since_s: float | None
    noise_gal: float
    packet_pga_gal: float
    packet_pgv_cms: float
    packet_max_ratio: float
    warmed_up: bool
    restarted: bool
    duplicate: bool = False
    end_s: float | None = None
    s_time_s: float | None = None

    def trigger(self, station_id: str, lat: float, lon: float) -> Trigger | None:
        """The trigger in this packet for the associator, or None when it did not
        trigger. Position, degrees."""
        if not self.triggered or self.p_time_s is None:
            return None
        return Trigger(
            station_id=station_id, lat=lat, lon=lon, p_time_s=self.p_time_s, at_s=self.end_s
        )

    def observation(self, station_id: str) -> Observation | None:
        """The event window's figures for the associator, or None outside a window."""
        if self.event_p_time_s is None or not (self.in_event or self.event_ended):
            return None

        def finite(v: float | None) -> float | None:
            # JSON has no infinity: an unknown noise level is no ratio at all.
            return v if v is None or math.isfinite(v) else None

        return Observation(
            station_id=station_id,
            p_time_s=self.event_p_time_s,
            at_s=self.end_s,
            pga_gal=self.event_pga_gal,
            pgv_cms=self.event_pgv_cms,
            pd_cm=self.pd_cm,
            pd_snr=finite(self.pd_snr),
            pv_cms=self.pv_cms,
            pa_gal=self.pa_gal,
            pa_snr=finite(self.pa_snr),
            tau_c_s=self.tau_c_s,
            p_window_s=self.p_window_s,
            transient=self.transient and not self.in_event,
            s_time_s=self.s_time_s,
        )

    def status(self, station_id: str, lat: float, lon: float) -> StationStatus | None:
        """Whether the station could trigger, for the associator's constraints (None for
        a packet that brought nothing new)."""
        if self.end_s is None or self.duplicate:
            return None
        return StationStatus(
            station_id=station_id,
            lat=lat,
            lon=lon,
            until_s=self.end_s,
            armed_since_s=self.armed_since_s,
            noise_gal=self.noise_gal,
        )


@lru_cache(maxsize=256)
def _powers(coeffs: tuple[float, ...], m: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``a**k`` and ``a**-k`` for k = 0..m-1, one column per coefficient, and the
    coefficients as an array (cached: a packet's filters reuse them every packet)."""
    k = np.arange(m, dtype=np.float64)[:, None]
    a = np.asarray(coeffs, dtype=np.float64)[None, :]
    p = a**k
    p.setflags(write=False)
    inv = 1.0 / p
    inv.setflags(write=False)
    flat = a[0]
    flat.setflags(write=False)
    return p, inv, flat


@lru_cache(maxsize=256)
def _block(coeffs: tuple[float, ...]) -> float:
    """Samples :func:`_recurse_many` solves in one closed form for these poles (inf: any)."""
    smallest = max(min(coeffs), 1e-300)
    return math.inf if smallest >= 1.0 else max(1, int(40.0 / -math.log(smallest)))


def _recurse(coeffs: tuple[float, ...], u: FloatArray, y0: FloatArray) -> FloatArray:
    """Solve ``y[n] = a * y[n-1] + u[n]`` along axis 0 without a Python loop per sample:
    ``u`` (n, c), ``y0`` the previous output ``y[-1]`` (c,), one pole ``a`` (0 < a <= 1)
    per column (:func:`_recurse_many` for one station)."""
    y: FloatArray = _recurse_many(coeffs, u[:, None, :], y0[None, :])[:, 0, :]
    return y


def _diff(x: FloatArray, x_prev: FloatArray) -> FloatArray:
    """``x[n] - x[n-1]`` along axis 0, ``x_prev`` before the first row."""
    # np.diff(prepend=...) concatenates first: two subtractions into one array are
    # the same differences at a fraction of the cost.
    dx = np.empty_like(x)
    np.subtract(x[:1], x_prev, out=dx[:1])
    np.subtract(x[1:], x[:-1], out=dx[1:])
    return dx


def _alpha(corner_hz: float, dt: float) -> float:
    return 1.0 / (1.0 + 2.0 * math.pi * corner_hz * dt)


def _as_samples(samples: NDArray[Any] | Sequence[Sequence[float]]) -> FloatArray:
    """Packet samples as an (n, 3) float array in gal."""
    if isinstance(samples, np.ndarray):
        # Samples as rows in memory too: a reduction down the columns (the restart's
        # mean) adds in the same order whatever layout the caller's array had.
        arr = np.ascontiguousarray(samples, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            msg = f"packet samples: expected an (n, 3) array in gal, got shape {arr.shape}"
            raise ValueError(msg)
    else:
        if len(samples) != 3:
            msg = f"packet samples: expected three component sequences, got {len(samples)}"
            raise ValueError(msg)
        comps = [np.asarray(c, dtype=np.float64) for c in samples]
        if len({c.shape for c in comps}) != 1 or comps[0].ndim != 1:
            msg = "packet samples: the three components must be 1-D and of equal length"
            raise ValueError(msg)
        arr = np.stack(comps, axis=1)
    if not np.isfinite(arr).all():
        msg = "packet samples: NaN or infinite acceleration"
        raise ValueError(msg)
    return arr


def _first_true(mask: NDArray[np.bool_], start: int, stop: int | None = None) -> int | None:
    """Index of the first True in ``[start, stop)``, or None."""
    end = mask.shape[0] if stop is None else min(stop, mask.shape[0])
    if start >= end:
        return None
    sub = mask[start:end]
    i = int(np.argmax(sub))
    return start + i if sub[i] else None


@dataclass(frozen=True, slots=True)
class _Filtered:
    """A packet through the station's filters (see the module docstring): high-passed
    acceleration (n, 3) gal, velocity (n, 3) cm/s, the P-wave chain's acceleration,
    velocity and displacement (n, 1), the trigger band (n, c) gal and its new memory;
    and what :func:`_detect` derives from them whatever its branches (:func:`_derived`),
    computed with every station of the group at once."""

    acc: FloatArray
    vel: FloatArray
    pz_acc: FloatArray
    pz_vel: FloatArray
    pz_disp: FloatArray
    band: FloatArray
    cf_mem: CfMemory
    derived: _Derived


@dataclass(frozen=True, slots=True)
class _Derived:
    """Per sample (n,): the characteristic function cf, gal^2; the P window's
    amplitudes |Pa| gal, |Pv| cm/s, |Pd| cm; the vector acceleration gal and velocity
    cm/s. ``sta_lta`` (n, 2): the STA and LTA run from the state's over the whole packet
    as an armed station runs them (what :func:`_detect` computes when it starts armed;
    the station's own copy, the warm-up may overwrite its LTA column). ``disp_noise_ms``:
    the displacement noise after the packet had no sample been in an event window, cm^2.
    ``packet_pga_gal``, ``packet_pgv_cms``: the packet's peaks. For a station armed from
    the packet's first sample (:func:`_armed_quiet`), from ``sta_lta``: whether its ratio
    crosses the trigger ratio upwards anywhere (``onset``, from the state's ratio before
    the packet), the ratio's largest value and the last sample where it stands below the
    onset ratio (-1: none)."""

    cf: FloatArray
    pa_abs: FloatArray
    pv_abs: FloatArray
    pd_abs: FloatArray
    acc_norm: FloatArray
    vel_norm: FloatArray
    sta_lta: FloatArray
    disp_noise_ms: float
    packet_pga_gal: float
    packet_pgv_cms: float
    onset: bool
    max_ratio: float
    last_low: int


def _filters_many(preps: Sequence[_Prepared]) -> list[_Filtered]:
    """Every filter of the signal chain (the module docstring) over packets of one
    length, rate and filter settings, from each one's station memory, solved together:
    arrays (n, stations, columns), every element computed with the same operations on
    the same numbers whatever the other stations (elementwise, and ``cumsum`` down axis
    0), so a packet's results are the same to the last bit alone or in a crowd."""
    first = preps[0]
    cfg, fs = first.cfg, first.fs
    dt = 1.0 / fs
    thr = cfg.sta_lta
    vz = cfg.vertical_axis
    sts = [p.st for p in preps]
    x = np.stack([p.x for p in preps], axis=1)
    acc_prev = np.array([s.acc for s in sts], dtype=np.float64)
    alpha = _alpha(cfg.highpass_hz, dt)
    acc = _recurse_many(
        (alpha,) * 3,
        alpha * _diff(x, np.array([s.x_prev for s in sts], dtype=np.float64)),
        acc_prev,
    )
    beta = math.exp(-2.0 * math.pi * cfg.highpass_hz * dt)
    vel = _recurse_many((beta,) * 3, acc * dt, np.array([s.vel for s in sts], dtype=np.float64))
    pz0 = np.array([s.pz for s in sts], dtype=np.float64)
    a_pd = _alpha(cfg.pd_highpass_hz, dt)
    b_pd = math.exp(-2.0 * math.pi * cfg.pd_highpass_hz * dt)
    pz_acc = _recurse_many((a_pd,), a_pd * _diff(acc, acc_prev)[:, :, vz : vz + 1], pz0[:, 0:1])
    pz_vel = _recurse_many((b_pd,), pz_acc * dt, pz0[:, 1:2])
    pz_disp = _recurse_many((b_pd,), pz_vel * dt, pz0[:, 2:3])
    lo, hi = thr.cf_band_hz
    c = 1 if thr.cf_vertical_only else 3
    cf_in = acc[:, :, vz : vz + 1] if thr.cf_vertical_only else acc
    m = [np.array([s.cf_mem[j][:c] for s in sts], dtype=np.float64) for j in range(5)]
    a_lo = _alpha(lo, dt)
    h1 = _recurse_many((a_lo,) * c, a_lo * _diff(cf_in, m[0]), m[1])
    h2 = _recurse_many((a_lo,) * c, a_lo * _diff(h1, m[1]), m[2])
    band = h2
    l1, l2 = m[3], m[4]
    # A low-pass at or above ~0.45 fs does nothing useful (the band is already cut by
    # the sample rate, 20 Hz MEMS streams): skip it rather than distort the band.
    if hi < 0.45 * fs:
        b = math.exp(-2.0 * math.pi * hi * dt)
        y1 = _recurse_many((b,) * c, (1.0 - b) * h2, l1)
        band = _recurse_many((b,) * c, (1.0 - b) * y1, l2)
        l1, l2 = y1[-1], band[-1]

    def per_station(arr: FloatArray) -> FloatArray:
        # (stations, n, columns), each station's block contiguous.
        return np.ascontiguousarray(arr.transpose(1, 0, 2))

    def vecs(rows: FloatArray) -> list[Vec3]:
        if c == 3:
            return [(r[0], r[1], r[2]) for r in rows.tolist()]
        return [(r[0], 0.0, 0.0) for r in rows.tolist()]

    mems = list(zip(vecs(cf_in[-1]), vecs(h1[-1]), vecs(h2[-1]), vecs(l1), vecs(l2), strict=True))
    derived = _derived(preps, acc, vel, pz_vel, pz_disp, band)
    acc_s, vel_s, pza_s, pzv_s, pzd_s, band_s = (
        per_station(a) for a in (acc, vel, pz_acc, pz_vel, pz_disp, band)
    )
    return [
        _Filtered(acc_s[k], vel_s[k], pza_s[k], pzv_s[k], pzd_s[k], band_s[k], mems[k], derived[k])
        for k in range(len(preps))
    ]


def _derived(
    preps: Sequence[_Prepared],
    acc: FloatArray,
    vel: FloatArray,
    pz_vel: FloatArray,
    pz_disp: FloatArray,
    band: FloatArray,
) -> list[_Derived]:
    """:class:`_Derived` of each packet of a group (arrays (n, stations, columns) from
    :func:`_filters_many`), elementwise (and ``cumsum`` and ``max`` down axis 0) as
    :func:`_detect` computes them for one station, so the same to the last bit: numpy's
    per-call overhead, not the arithmetic, was most of a quiet station's detection."""
    first = preps[0]
    cfg, fs = first.cfg, first.fs
    thr = cfg.sta_lta
    sts = [p.st for p in preps]
    cf = np.einsum("nsc,nsc->ns", band, band)
    pa_abs = np.abs(band[:, :, 0]) if thr.cf_vertical_only else np.sqrt(cf)
    pv_abs = np.abs(pz_vel[:, :, 0])
    pd_abs = np.abs(pz_disp[:, :, 0])
    acc_norm = np.sqrt(np.einsum("nsc,nsc->ns", acc, acc))
    vel_norm = np.sqrt(np.einsum("nsc,nsc->ns", vel, vel))
    c_sta = 1.0 / max(thr.sta_s * fs, 1.0)
    c_lta = 1.0 / max(thr.lta_s * fs, 1.0)
    sta_lta = _recurse_many(
        (1.0 - c_sta, 1.0 - c_lta),
        cf[:, :, None] * np.asarray([c_sta, c_lta]),
        np.array([(s.sta, s.lta) for s in sts], dtype=np.float64),
    )
    c_noise = 1.0 / max(cfg.noise_window_s * fs, 1.0)
    noise = _recurse_many(
        (1.0 - c_noise,),
        c_noise * pz_disp**2,
        np.array([(s.disp_noise_ms,) for s in sts], dtype=np.float64),
    )[-1, :, 0].tolist()
    pga = acc_norm.max(axis=0).tolist()
    pgv = vel_norm.max(axis=0).tolist()
    # The armed branch of _detect over the whole packet, for every station at once (the
    # same elementwise operations, so the same bits): most packets are quiet, and their
    # dozen numpy calls each were most of the detector's time (:func:`_armed_quiet`).
    ratio = _armed_ratio(sta_lta)
    prev = np.array([s.sta / s.lta if s.lta > 0 else 0.0 for s in sts], dtype=np.float64)
    before = np.concatenate((prev[None, :], ratio[:-1]), axis=0)
    onset: list[bool] = np.any(_upward(ratio, before, thr.trigger_ratio), axis=0).tolist()
    max_ratio = ratio.max(axis=0).tolist()
    low = ratio < thr.onset_ratio
    n = low.shape[0]
    last_low = np.where(low.any(axis=0), n - 1 - np.argmax(low[::-1], axis=0), -1).tolist()

    def rows(arr: FloatArray) -> FloatArray:
        # (stations, ...), each station's block contiguous.
        return np.ascontiguousarray(np.moveaxis(arr, 1, 0))

    cf_s, pa_s, pv_s, pd_s, an_s, vn_s, sl_s = (
        rows(a) for a in (cf, pa_abs, pv_abs, pd_abs, acc_norm, vel_norm, sta_lta)
    )
    return [
        _Derived(
            cf_s[k],
            pa_s[k],
            pv_s[k],
            pd_s[k],
            an_s[k],
            vn_s[k],
            sl_s[k],
            noise[k],
            pga[k],
            pgv[k],
            onset[k],
            max_ratio[k],
            last_low[k],
        )
        for k in range(len(preps))
    ]


def _recurse_many(coeffs: tuple[float, ...], u: FloatArray, y0: FloatArray) -> FloatArray:
    """Solve ``y[n] = a * y[n-1] + u[n]`` along axis 0 for several stations at once,
    without a Python loop per sample: ``u`` (n, stations, c), ``y0`` the previous output
    ``y[-1]`` (stations, c), one pole ``a`` (0 < a <= 1) per column.

    Closed form ``y[n] = a**n * (a * y[-1] + cumsum(u[k] * a**-k))``; worked in blocks so
    that ``a**-k`` spans a modest range (``a**-block`` < e**40) and precision holds. Every
    element is computed with the same operations whatever the other stations, so a
    station's results are the same alone or in a crowd.
    """
    n = u.shape[0]
    block = _block(coeffs)
    if n <= block:
        p, inv, a = _powers(coeffs, n)
        y: FloatArray = p[:, None, :] * (a * y0 + np.cumsum(u * inv[:, None, :], axis=0))
        return y
    step = int(block)
    out = np.empty_like(u)
    a = _powers(coeffs, 1)[2]
    prev = y0
    for start in range(0, n, step):
        seg = u[start : start + step]
        p, inv, _ = _powers(coeffs, seg.shape[0])
        y = p[:, None, :] * (a * prev + np.cumsum(seg * inv[:, None, :], axis=0))
        out[start : start + step] = y
        prev = y[-1]
    return out


def process_packet(
    state: StationState,
    samples: NDArray[Any] | Sequence[Sequence[float]],
    sample_rate_hz: float,
    t0_s: float,
    config: SeismicConfig | None = None,
) -> PacketResult:
    """Run one packet through the station's detector.

    Args:
        state: the station's state from the previous packet (``StationState()`` at first).
        samples: acceleration in gal, either an ``(n, 3)`` array (rows are samples;
            columns east, north, vertical) or three per-component sequences of length n.
        sample_rate_hz: samples per second (> 0, up to ~100 Hz for MEMS stations).
        t0_s: time of the first sample, epoch seconds (UTC).
        config: detection settings; defaults when None.

    Returns:
        The packet's findings and the new state.
    """
    cfg = config if config is not None else SeismicConfig()
    prep = _prepare(state, samples, sample_rate_hz, t0_s, cfg)
    if isinstance(prep, PacketResult):
        return prep
    return _detect(prep, _filters_many([prep])[0], cfg)


def process_packets(
    packets: Sequence[
        tuple[StationState, NDArray[Any] | Sequence[Sequence[float]], float, float, SeismicConfig]
    ],
) -> list[PacketResult]:
    """:func:`process_packet` for many stations' packets at once: ``(state, samples,
    sample_rate_hz, t0_s, config)`` each, the results in the same order and the same to
    the last bit. Each packet must have its own station (one packet per state: a
    station's next packet needs this one's state).

    Why: a packet's filters are a dozen numpy calls on 100 x 3 numbers, so numpy's
    per-call overhead is most of their cost; the packets of equal length, rate and
    filter settings go through the filters together, one column per station
    (:func:`_filters_many`), and only the trigger logic runs station by station.
    """
    preps: list[_Prepared | PacketResult] = [
        _prepare(st, samples, fs, t0, cfg) for st, samples, fs, t0, cfg in packets
    ]
    filtered: list[_Filtered | None] = [None] * len(preps)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k, prep in enumerate(preps):
        if isinstance(prep, _Prepared):
            groups.setdefault(_filter_key(prep), []).append(k)
    for members in groups.values():
        group = [p for k in members if isinstance(p := preps[k], _Prepared)]
        for k, f in zip(members, _filters_many(group), strict=True):
            filtered[k] = f
    out: list[PacketResult] = []
    for prep, fil in zip(preps, filtered, strict=True):
        if isinstance(prep, PacketResult):
            out.append(prep)
        else:
            assert fil is not None
            out.append(_detect(prep, fil, prep.cfg))
    return out


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A packet ready for the filters: the state it starts from (fresh after a restart),
    its new samples (n >= 1, a re-sent packet's old ones dropped), their first time, s."""

    st: StationState
    x: FloatArray
    t0: float
    fs: float
    cfg: SeismicConfig
    restarted: bool
    event_ended: bool


def _filter_key(prep: _Prepared) -> tuple[Any, ...]:
    """What packets must share to go through the filters together."""
    cfg = prep.cfg
    thr = cfg.sta_lta
    return (
        prep.fs,
        prep.x.shape[0],
        cfg.highpass_hz,
        cfg.pd_highpass_hz,
        cfg.vertical_axis,
        thr.cf_band_hz,
        thr.cf_vertical_only,
        thr.sta_s,
        thr.lta_s,
        cfg.noise_window_s,
    )


def _prepare(
    state: StationState,
    samples: NDArray[Any] | Sequence[Sequence[float]],
    sample_rate_hz: float,
    t0_s: float,
    cfg: SeismicConfig,
) -> _Prepared | PacketResult:
    """Check a packet, restart the filters after a gap and drop re-sent samples; a
    packet with nothing new is already its result."""
    if not sample_rate_hz > 0:
        msg = f"sample_rate_hz must be > 0, got {sample_rate_hz}"
        raise ValueError(msg)
    fs = float(sample_rate_hz)
    dt = 1.0 / fs
    x = _as_samples(samples)
    t0 = float(t0_s)

    st = state
    restarted = False
    event_ended = False
    gap = None if st.next_t_s is None else t0 - st.next_t_s
    if st.sample_rate_hz != fs or gap is None or abs(gap) > cfg.max_gap_s:
        # New stream, new rate or a long gap: the filters' memory no longer applies.
        # A lockout in force survives so that a reconnecting station cannot re-fire.
        event_ended = st.in_event
        st = StationState(
            sample_rate_hz=fs,
            rearm_s=st.rearm_s,
            last_trigger_s=st.last_trigger_s,
            event_p_time_s=st.event_p_time_s,
            event_pga_gal=st.event_pga_gal,
            event_pgv_cms=st.event_pgv_cms,
            event_pd_cm=st.event_pd_cm,
            event_pv_cms=st.event_pv_cms,
            event_pa_gal=st.event_pa_gal,
            event_sum_d2=st.event_sum_d2,
            event_sum_v2=st.event_sum_v2,
            event_p_window_s=st.event_p_window_s,
            event_noise_ms=st.event_noise_ms,
            event_transient=st.event_transient,
            event_s_time_s=st.event_s_time_s,
            disp_noise_ms=st.disp_noise_ms,
            # Seeding the high-pass with the packet mean, not the first (noisy) sample,
            # keeps a ~1 gal step from integrating into a ~0.5 cm false displacement.
            x_prev=_vec(x.mean(axis=0)) if len(x) else _ZERO3,
        )
        restarted = True
    elif gap < -0.5 * dt:
        # Overlap (a re-sent packet): drop the samples already processed.
        skip = round(-gap * fs)
        x = x[skip:]
        t0 += skip * dt

    n = x.shape[0]
    if n == 0:
        return _result(st, cfg, restarted=restarted, event_ended=event_ended, duplicate=True)

    return _Prepared(st, x, t0, fs, cfg, restarted, event_ended)


def _detect(prep: _Prepared, f: _Filtered, cfg: SeismicConfig) -> PacketResult:
    """STA/LTA, the trigger and the event window over a filtered packet."""
    quiet = _armed_quiet(prep, f, cfg)
    return quiet if quiet is not None else _detect_full(prep, f, cfg)


def _armed_quiet(prep: _Prepared, f: _Filtered, cfg: SeismicConfig) -> PacketResult | None:
    """:func:`_detect_full` for the packet of nearly every station nearly every second:
    warmed up, not in an event window nor a spike's tail, and no onset in it (armed or
    locked out). Then only the armed branch runs, over the whole packet, and its figures
    come from the group (:class:`_Derived`): the same result to the last bit, without a
    dozen numpy calls per station. None: any other packet."""
    st = prep.st
    d = f.derived
    fs, t0 = prep.fs, prep.t0
    # (A lockout changes nothing here: it only hides onsets, and there are none.)
    if d.onset or st.in_event or st.lta_hold or st.n_seen < _warm_up_samples(cfg, fs):
        return None
    x = prep.x
    n = x.shape[0]
    dt = 1.0 / fs
    last = n - 1
    avg = d.sta_lta
    quiet = st.quiet_s if d.last_low < 0 else t0 + d.last_low * dt
    pz_acc, pz_vel, pz_disp = f.pz_acc, f.pz_vel, f.pz_disp
    new_state = replace(
        st,
        next_t_s=t0 + n * dt,
        n_seen=min(st.n_seen + n, 1 << 30),
        x_prev=_vec(x[last]),
        acc=_vec(f.acc[last]),
        vel=_vec(f.vel[last]),
        cf_mem=f.cf_mem,
        pz=(float(pz_acc[last, 0]), float(pz_vel[last, 0]), float(pz_disp[last, 0])),
        sta=float(avg[last, 0]),
        lta=float(avg[last, 1]),
        warm_since_s=t0 if st.warm_since_s is None else st.warm_since_s,
        quiet_s=quiet,
        disp_noise_ms=d.disp_noise_ms,
    )
    return _result(
        new_state,
        cfg,
        restarted=prep.restarted,
        event_ended=prep.event_ended,
        packet_pga_gal=d.packet_pga_gal,
        packet_pgv_cms=d.packet_pgv_cms,
        packet_max_ratio=d.max_ratio,
    )


def _detect_full(prep: _Prepared, f: _Filtered, cfg: SeismicConfig) -> PacketResult:
    """:func:`_detect` for any packet: the STA/LTA piecewise, branch by branch."""
    thr = cfg.sta_lta
    st, x, t0, fs = prep.st, prep.x, prep.t0, prep.fs
    restarted, event_ended = prep.restarted, prep.event_ended
    dt = 1.0 / fs
    n = x.shape[0]
    acc, vel, cf_mem = f.acc, f.vel, f.cf_mem
    pz_acc, pz_vel, pz_disp = f.pz_acc, f.pz_vel, f.pz_disp
    d = f.derived
    cf, pa_abs, pv_abs, pd_abs = d.cf, d.pa_abs, d.pv_abs, d.pd_abs
    acc_norm, vel_norm = d.acc_norm, d.vel_norm

    # 3. STA/LTA, piecewise: the LTA runs while armed and is frozen in event windows.
    c_sta = 1.0 / max(thr.sta_s * fs, 1.0)
    c_lta = 1.0 / max(thr.lta_s * fs, 1.0)
    n_lta = _warm_up_samples(cfg, fs)
    first_warm = max(0, n_lta - st.n_seen)  # index of the first sample past warm-up
    warm_since = st.warm_since_s
    if warm_since is None and first_warm < n:
        warm_since = t0 + first_warm * dt
    sta_out = np.empty(n)
    ratio = np.zeros(n)
    sta, lta = st.sta, st.lta
    prev_ratio = sta / lta if lta > 0 and first_warm == 0 else 0.0

    in_event = st.in_event
    p_time = st.event_p_time_s
    rearm = st.rearm_s
    last_trigger = st.last_trigger_s
    pga, pgv = st.event_pga_gal, st.event_pgv_cms
    pd, pv, pa = st.event_pd_cm, st.event_pv_cms, st.event_pa_gal
    sum_d2, sum_v2, p_win = st.event_sum_d2, st.event_sum_v2, st.event_p_window_s
    noise_ms, transient = st.event_noise_ms, st.event_transient
    sta_peak, hold, floor = st.event_sta_peak, st.lta_hold, st.hold_floor
    triggered = False
    new_p: float | None = None
    quiet = st.quiet_s
    s_time = st.event_s_time_s
    s_carry: _SCarry = (
        st.s_sta,
        st.s_sum,
        st.s_count,
        st.s_ref,
        st.s_prev_ratio,
        st.s_quiet_s,
    )
    in_window = np.zeros(n, dtype=bool)
    i = 0
    # At most a few iterations per packet (one per trigger and per window end): this is
    # not a per-sample loop.
    while i < n:
        if in_event and p_time is not None:
            seg = _recurse((1.0 - c_sta,), c_sta * cf[i:, None], np.asarray([sta]))[:, 0]
            r = seg / max(lta, 1e-12)
            below = r < thr.detrigger_ratio
            running_peak = np.maximum.accumulate(np.maximum(seg, sta_peak))
            # Transient: the STA has fallen to a small part of its peak soon after the
            # trigger (a spike); a quake's P is followed by more P and the S wave.
            t_end = _index_at(p_time + thr.transient_max_s, t0, fs) - i
            faded = seg <= thr.transient_fraction * running_peak
            end_rel = _first_true(faded, 0, max(t_end, 0))
            is_transient = end_rel is not None
            if end_rel is None:
                min_end = _index_at(p_time + thr.min_event_window_s, t0, fs) - i
                max_end = _index_at(p_time + thr.max_event_window_s, t0, fs) - i
                end_rel = _first_true(below, max(min_end, 0))
                end_rel = max_end if end_rel is None else min(end_rel, max_end)
                end_rel = max(end_rel, 0)
            stop = min(i + end_rel, n)
            sta_out[i:stop] = seg[: stop - i]
            # The trigger sample keeps the ratio that crossed the threshold.
            ratio[i:stop] = np.maximum(r[: stop - i], ratio[i:stop])
            in_window[i:stop] = True
            if stop > i:
                sta = float(seg[stop - i - 1])
                sta_peak = float(running_peak[stop - i - 1])
                pga = max(pga, float(acc_norm[i:stop].max()))
                pgv = max(pgv, float(vel_norm[i:stop].max()))
                p_stop = min(_index_at(p_time + cfg.pd_window_s, t0, fs), stop)
                if p_stop > i:
                    pd = max(pd, float(pd_abs[i:p_stop].max()))
                    pv = max(pv, float(pv_abs[i:p_stop].max()))
                    pa = max(pa, float(pa_abs[i:p_stop].max()))
                    sum_d2 += float(np.sum(pz_disp[i:p_stop, 0] ** 2))
                    sum_v2 += float(np.sum(pz_vel[i:p_stop, 0] ** 2))
                    p_win = min(cfg.pd_window_s, t0 + p_stop * dt - p_time)
                if s_time is None:
                    s_time, s_carry = _s_pick(acc[i:stop], t0 + i * dt, p_time, cfg, fs, s_carry)
            if i + end_rel >= n:
                break
            # The window closes at sample i + end_rel.
            i = i + end_rel
            in_event = False
            event_ended = True
            transient = is_transient
            if is_transient:
                s_time = None  # a spike's S pick would only mislead the locator
            end_time = t0 + i * dt
            # After a transient the station is armed at once, but the LTA stays frozen
            # until the spike's tail has gone (hold): it must not learn the spike as noise.
            hold = is_transient
            floor = sta
            rearm = end_time if is_transient else max(end_time, p_time + thr.retrigger_lockout_s)
            continue
        if hold:
            # A spike's tail: the STA runs against the frozen LTA until the ratio is back
            # below the detrigger ratio; a P wave arriving meanwhile still triggers.
            seg = _recurse((1.0 - c_sta,), c_sta * cf[i:, None], np.asarray([sta]))[:, 0]
            r = seg / max(lta, 1e-12)
            h_end = _first_true(r < thr.detrigger_ratio, 0)
            limit = n - i if h_end is None else h_end
            before = np.concatenate(([ratio[i - 1] if i > 0 else prev_ratio], r[:-1]))
            onset = _upward(r, before, thr.trigger_ratio)
            # A P wave in the tail may never let the ratio fall below the threshold first
            # (a spike 6 s before a near P: the tail still stood 10x over the noise):
            # its onset is a rise by the trigger ratio over the tail's lowest STA so far,
            # which a decaying tail never makes.
            low = np.minimum.accumulate(np.minimum(seg, floor))
            rise = seg / np.maximum(low, lta)
            rise_before = np.concatenate(([sta / max(floor, lta, 1e-12)], rise[:-1]))
            onset |= _upward(rise, rise_before, thr.trigger_ratio)
            start = 0 if rearm is None else max(0, _index_at(rearm, t0, fs) - i)
            j = _first_true(onset, start, limit)
            stop = limit if j is None else j
            sta_out[i : i + stop] = seg[:stop]
            ratio[i : i + stop] = r[:stop]
            if stop > 0:
                sta = float(seg[stop - 1])
                floor = float(low[stop - 1])
            if j is not None:
                ratio[i + j] = r[j]
                triggered, new_p = True, t0 + (i + j) * dt
                p_time = last_trigger = new_p
                in_event, transient, hold = True, False, False
                noise_ms = lta
                pga = pgv = pd = pv = pa = sum_d2 = sum_v2 = p_win = sta_peak = 0.0
                s_time, s_carry = None, _S_FRESH
                i += j
                continue
            if h_end is None:
                break
            hold = False
            i += h_end
            continue
        # Armed (or warming up, or locked out): both averages run.
        avg = (
            d.sta_lta  # from the state's averages: computed with the group
            if i == 0
            else _recurse(
                (1.0 - c_sta, 1.0 - c_lta),
                cf[i:, None] * np.asarray([c_sta, c_lta]),
                np.asarray([sta, lta]),
            )
        )
        if first_warm > i:
            # During the warm-up the LTA is the plain mean of the samples so far: the
            # recursive average started from 0 reads 63 % of the noise when the warm-up
            # ends (1 - 1/e) and still 86 % an LTA later, so every (re)started station
            # stood 1.2-1.6 times closer to its threshold and noise crossed it.
            m = min(first_warm, n) - i
            seen = st.n_seen + i + np.arange(1.0, m + 1.0)
            mean = (lta * (seen[0] - 1.0) + np.cumsum(cf[i : i + m])) / seen
            avg[:m, 1] = mean
            if m < n - i:
                avg[m:, 1] = _recurse(
                    (1.0 - c_lta,), c_lta * cf[i + m :, None], np.asarray([mean[-1]])
                )[:, 0]
        r = _armed_ratio(avg)
        if first_warm > i:
            r[: first_warm - i] = 0.0
        # A trigger is an upward crossing of the threshold, as in ObsPy's trigger_onset: a
        # ratio still high when the lockout ends (long shaking, a spike's tail) is no new
        # onset.
        before = np.concatenate(([prev_ratio if i == 0 else ratio[i - 1]], r[:-1]))
        onset = _upward(r, before, thr.trigger_ratio)
        start = max(0, first_warm - i)
        if rearm is not None:
            start = max(start, _index_at(rearm, t0, fs) - i)
        j = _first_true(onset, start)
        low = np.flatnonzero(r[: n - i if j is None else j] < thr.onset_ratio)
        if low.size:
            quiet = t0 + (i + int(low[-1])) * dt
        if j is None:
            sta_out[i:] = avg[:, 0]
            ratio[i:] = r
            sta, lta = float(avg[-1, 0]), float(avg[-1, 1])
            break
        # The trigger sample opens the window (its peaks count); the STA is taken up
        # again from the sample before it, the LTA frozen at the trigger.
        sta_out[i : i + j] = avg[:j, 0]
        ratio[i : i + j + 1] = r[: j + 1]
        sta = float(avg[j - 1, 0]) if j > 0 else sta
        lta = float(avg[j, 1])
        triggered = True
        t_cross = t0 + (i + j) * dt
        # The onset: just after the ratio was last quiet, at most max_backtrack_s before
        # the crossing (a weak, emergent P crosses the threshold late).
        new_p = t_cross
        if quiet is not None:
            new_p = min(t_cross, max(quiet + dt, t_cross - thr.max_backtrack_s))
        p_time = last_trigger = new_p
        in_event = True
        transient = False
        noise_ms = lta
        pga = pgv = pd = pv = pa = sum_d2 = sum_v2 = p_win = sta_peak = 0.0
        s_time, s_carry = None, _S_FRESH
        i += j

    disp_noise = st.disp_noise_ms
    outside = pz_disp[~in_window] if in_window.any() else None
    if outside is None:
        disp_noise = d.disp_noise_ms  # every sample outside windows: with the group
    elif outside.shape[0]:
        # Only samples outside event windows teach us the noise level (the estimate is
        # frozen inside them), so an event cannot inflate it.
        c_noise = 1.0 / max(cfg.noise_window_s * fs, 1.0)
        disp_noise = float(
            _recurse((1.0 - c_noise,), c_noise * outside**2, np.asarray([disp_noise]))[-1, 0]
        )

    last = n - 1
    new_state = replace(
        st,
        next_t_s=t0 + n * dt,
        n_seen=min(st.n_seen + n, 1 << 30),
        x_prev=_vec(x[last]),
        acc=_vec(acc[last]),
        vel=_vec(vel[last]),
        cf_mem=cf_mem,
        pz=(float(pz_acc[last, 0]), float(pz_vel[last, 0]), float(pz_disp[last, 0])),
        sta=float(sta_out[last]),
        lta=lta,
        warm_since_s=warm_since,
        rearm_s=rearm,
        last_trigger_s=last_trigger,
        quiet_s=quiet,
        in_event=in_event,
        event_p_time_s=p_time,
        event_pga_gal=pga,
        event_pgv_cms=pgv,
        event_pd_cm=pd,
        event_pv_cms=pv,
        event_pa_gal=pa,
        event_sum_d2=sum_d2,
        event_sum_v2=sum_v2,
        event_p_window_s=p_win,
        event_noise_ms=noise_ms,
        event_transient=transient,
        event_sta_peak=sta_peak,
        lta_hold=hold,
        hold_floor=floor,
        disp_noise_ms=disp_noise,
        event_s_time_s=s_time,
        s_sta=s_carry[0],
        s_sum=s_carry[1],
        s_count=s_carry[2],
        s_ref=s_carry[3],
        s_prev_ratio=s_carry[4],
        s_quiet_s=s_carry[5],
    )
    return _result(
        new_state,
        cfg,
        restarted=restarted,
        event_ended=event_ended,
        triggered=triggered,
        p_time_s=new_p,
        packet_pga_gal=d.packet_pga_gal,
        packet_pgv_cms=d.packet_pgv_cms,
        packet_max_ratio=float(ratio.max()),
    )


#: The S picker's memory in an open window (see :class:`StationState`): STA of the
#: horizontal energy, its sum and sample count since the trigger, the reference the
#: ratio is taken against (frozen while the ratio stands high; 0: the running mean),
#: the last ratio, the last time the ratio was low.
_SCarry = tuple[float, float, int, float, float, float | None]
_S_FRESH: _SCarry = (0.0, 0.0, 0, 0.0, 0.0, None)


def _s_pick(
    acc: FloatArray, t_first: float, p_time: float, cfg: SeismicConfig, fs: float, carry: _SCarry
) -> tuple[float | None, _SCarry]:
    """The S picker over a stretch of an open event window: ``acc`` (m, 3) high-passed
    acceleration, gal, its first sample at ``t_first``, s; P at ``p_time``, s. Returns the
    S pick (epoch s, or None) and the picker's new memory.

    The S wave is mostly horizontal, the P wave mostly vertical: on the horizontals the
    S wave stands several times over the P coda. The characteristic function is the
    horizontal energy (the two horizontal components squared, gal^2), its STA over
    ``s_sta_s`` against its mean since the trigger (the P coda and the noise under it:
    no pre-event average has to run on quiet packets). While the ratio stands at or
    over ``s_onset_ratio`` that reference is frozen at its last quiet value, as the
    P trigger's LTA is in a window: the S wave must not raise the reference it is
    measured against (with a running mean, an S wave 1-2 s after P could never stand
    4 times over it). The pick is an upward crossing of ``s_ratio`` at least
    ``s_min_after_p_s`` after P, picked back to just after the ratio was last below
    ``s_onset_ratio``, at most ``s_max_backtrack_s`` before the crossing (an S wave
    rises over a few tenths of a second)."""
    thr = cfg.sta_lta
    vz = cfg.vertical_axis
    dt = 1.0 / fs
    s_sta, s_sum, s_count, s_ref, s_prev, s_quiet = carry
    horiz = acc[:, [k for k in range(3) if k != vz]]
    h = np.einsum("nc,nc->n", horiz, horiz)
    m = h.shape[0]
    c = 1.0 / max(thr.s_sta_s * fs, 1.0)
    sta = _recurse((1.0 - c,), c * h[:, None], np.asarray([s_sta]))[:, 0]
    total = s_sum + np.cumsum(h)
    mean = total / (s_count + np.arange(1.0, m + 1.0))
    ratio = np.empty(m)
    # Piecewise, one piece per change between a running and a frozen reference: a few
    # per packet, not a loop per sample.
    ref = s_ref
    last_mean = s_sum / s_count if s_count else 0.0
    i = 0
    while i < m:
        if ref <= 0.0:
            r = sta[i:] / np.maximum(mean[i:], 1e-12)
            k = _first_true(r >= thr.s_onset_ratio, 0)
            stop = m - i if k is None else k
            ratio[i : i + stop] = r[:stop]
            if k is None:
                break
            # Frozen at the mean up to the sample before (the last quiet one).
            ref = max(mean[i + k - 1] if i + k > 0 else last_mean, 1e-12)
            i += k
        else:
            r = sta[i:] / ref
            k = _first_true(r < thr.s_onset_ratio, 0)
            stop = m - i if k is None else k
            ratio[i : i + stop] = r[:stop]
            if k is None:
                break
            ref = 0.0
            i += k
    before = np.concatenate(([s_prev], ratio[:-1]))
    start = _index_at(p_time + thr.s_min_after_p_s, t_first, fs)
    j = _first_true(_upward(ratio, before, thr.s_ratio), start)
    low = np.flatnonzero(ratio[: m if j is None else j] < thr.s_onset_ratio)
    if low.size:
        s_quiet = t_first + int(low[-1]) * dt
    new_carry: _SCarry = (
        float(sta[-1]),
        float(total[-1]),
        s_count + m,
        float(ref),
        float(ratio[-1]),
        s_quiet,
    )
    if j is None:
        return None, new_carry
    t_cross = t_first + j * dt
    onset = t_cross
    if s_quiet is not None:
        onset = min(t_cross, max(s_quiet + dt, t_cross - thr.s_max_backtrack_s))
    # One pick per window: the memory is done with (and so the same however the stream
    # was cut into packets after the pick).
    return max(onset, p_time + thr.s_min_after_p_s), _S_FRESH


def _warm_up_samples(cfg: SeismicConfig, fs: float) -> int:
    """Samples a station sees before it may trigger: one LTA window."""
    return math.ceil(cfg.sta_lta.lta_s * fs)


def _armed_ratio(sta_lta: FloatArray) -> FloatArray:
    """STA / LTA of an armed station's running averages (last axis: STA, LTA)."""
    ratio: FloatArray = sta_lta[..., 0] / np.maximum(sta_lta[..., 1], 1e-12)
    return ratio


def _upward(ratio: FloatArray, before: FloatArray, level: float) -> NDArray[np.bool_]:
    """Where a ratio crosses ``level`` upwards, as ObsPy's ``trigger_onset``: at or over
    it, the sample before under it."""
    crossed: NDArray[np.bool_] = (ratio >= level) & (before < level)
    return crossed


def _index_at(time_s: float, t0_s: float, fs: float) -> int:
    """Index of the first sample at or after ``time_s`` (may be < 0 or > packet length)."""
    # The small slack keeps a time that lands exactly on a sample from rounding up.
    return max(0, math.ceil((time_s - t0_s) * fs - 1e-6))


def _vec(row: FloatArray) -> Vec3:
    return (float(row[0]), float(row[1]), float(row[2]))


def _snr(value: float, noise_ms: float) -> float:
    rms = math.sqrt(max(noise_ms, 0.0))
    return value / rms if rms > 0 else math.inf


def _result(
    state: StationState,
    cfg: SeismicConfig,
    *,
    restarted: bool,
    event_ended: bool,
    triggered: bool = False,
    p_time_s: float | None = None,
    packet_pga_gal: float = 0.0,
    packet_pgv_cms: float = 0.0,
    packet_max_ratio: float = 0.0,
    duplicate: bool = False,
) -> PacketResult:
    has_window = state.event_p_time_s is not None
    end = state.next_t_s
    pd_complete = (
        state.event_p_time_s is not None
        and end is not None
        and end >= state.event_p_time_s + cfg.pd_window_s
    )
    warmed = state.warm_since_s is not None
    armed = (
        warmed
        and not state.in_event
        and end is not None
        and (state.rearm_s is None or state.rearm_s <= end)
    )
    armed_since = None
    if armed and state.warm_since_s is not None:
        armed_since = max(state.warm_since_s, state.rearm_s or state.warm_since_s)
    tau_c = None
    if has_window and state.event_p_window_s >= 0.5 and state.event_sum_v2 > 0:
        tau_c = 2.0 * math.pi * math.sqrt(state.event_sum_d2 / state.event_sum_v2)
    return PacketResult(
        state=state,
        triggered=triggered,
        p_time_s=p_time_s,
        in_event=state.in_event,
        event_ended=event_ended,
        event_p_time_s=state.event_p_time_s,
        event_pga_gal=state.event_pga_gal,
        event_pgv_cms=state.event_pgv_cms,
        event_intensity=cwa_intensity(
            state.event_pga_gal, state.event_pgv_cms, cfg.intensity_scale
        ),
        pd_cm=state.event_pd_cm if has_window else None,
        pd_complete=pd_complete,
        pd_snr=_snr(state.event_pd_cm, state.disp_noise_ms) if has_window else None,
        pv_cms=state.event_pv_cms if has_window else None,
        pa_gal=state.event_pa_gal if has_window else None,
        pa_snr=_snr(state.event_pa_gal, state.event_noise_ms) if has_window else None,
        tau_c_s=tau_c,
        p_window_s=state.event_p_window_s if has_window else 0.0,
        transient=state.event_transient,
        armed_since_s=armed_since,
        noise_gal=math.sqrt(max(state.lta, 0.0)),
        packet_pga_gal=packet_pga_gal,
        packet_pgv_cms=packet_pgv_cms,
        packet_max_ratio=packet_max_ratio,
        warmed_up=warmed,
        restarted=restarted,
        duplicate=duplicate,
        end_s=end,
        s_time_s=state.event_s_time_s,
    )
