"""Per-station earthquake detection: STA/LTA trigger, P pick, PGA, PGV, Pd and intensity.

A station (a low-cost MEMS accelerometer such as OpenEEW or P-Alert) sends a packet of
three-component acceleration about once a second. :func:`process_packet` takes the
station's :class:`StationState` and one packet and returns a :class:`PacketResult` with
the new state; nothing is mutated and nothing does I/O, so the Faust agent only has to
keep ``result.state`` in its table.

Signal chain, every filter carried across packets so that a stream cut into packets gives
the same numbers as one long array:

1. **High-pass** each component (first-order, ``highpass_hz``, default 0.075 Hz): removes
   the sensor offset (gravity on the vertical axis of many MEMS boards) and slow drift.
   The first packet's mean seeds the filter so a 980 gal offset does not ring.
2. **Characteristic function**: squared high-passed acceleration, summed over the three
   components by default (orientation-free; ``use_vertical_only`` for the vertical only).
3. **Recursive STA/LTA** (ObsPy ``recursive_sta_lta``: ``sta += (cf - sta) / n_sta``),
   trigger when the ratio crosses ``trigger_ratio`` upwards; no trigger until ``lta_s`` of data
   has been seen (warm-up) nor within ``retrigger_lockout_s`` of the previous trigger
   (OpenEEW). The P pick is the first sample where the ratio reached the threshold.
4. **Velocity** and **displacement** by leaky integration (an integrator followed by a
   first-order high-pass at ``highpass_hz``; the leak is what stops MEMS noise from
   random-walking). 0.075 Hz is the corner Wu & Zhao (2006) used for Pd.

After a trigger the station's *event window* tracks PGA and PGV (peaks of the
three-component vector of high-passed acceleration and velocity: orientation-free and
never below any single component; whether CWA uses the vector or the larger horizontal
is *unconfirmed*), Pd (peak |vertical displacement| in the first ``pd_window_s`` after P,
as Wu & Zhao define it) and the CWA intensity reached so far. The window closes once the
STA/LTA ratio has fallen below ``detrigger_ratio`` and at least ``min_event_window_s``
have passed (long enough for the S wave at stations a few hundred km away), or after
``max_event_window_s`` whatever the ratio.

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

from civic_iot.thresholds import StaLtaThresholds
from processors.detectors.intensity import CWA_2020, IntensityScale, cwa_intensity
from processors.detectors.state import stored

__all__ = [
    "PacketResult",
    "SeismicConfig",
    "StationState",
    "process_packet",
]

FloatArray = NDArray[np.float64]
Vec3 = tuple[float, float, float]
_ZERO3: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class SeismicConfig:
    """Per-station detection settings (defaults from docs/domain.md "Early-warning practice").

    Attributes:
        sta_lta: the STA/LTA trigger (the thresholds file's ``seismic`` section): STA and
            LTA windows, s (the LTA is also the warm-up), trigger and detrigger ratios,
            re-trigger lockout, s, and the event window's minimum and maximum length
            after P, s.
        highpass_hz: corner of the first-order high-pass on acceleration and of the
            leaky integrators for velocity and displacement, Hz (0.075 Hz after Wu & Zhao
            2006).
        pd_window_s: Pd is the peak vertical displacement this long after P, s (3 s).
        max_gap_s: a jump in packet time larger than this (s) restarts the filters and the
            warm-up; smaller gaps are bridged as if contiguous.
        noise_window_s: time constant of the running RMS of vertical displacement outside
            event windows, s; Pd is compared with it (``pd_snr``) because MEMS noise
            integrates to displacements of a few hundredths of a cm.
        vertical_axis: column (0-2) holding the vertical component.
        use_vertical_only: STA/LTA on the vertical component alone instead of all three.
        intensity_scale: the intensity table.
    """

    sta_lta: StaLtaThresholds = field(default_factory=StaLtaThresholds)
    highpass_hz: float = 0.075
    pd_window_s: float = 3.0
    max_gap_s: float = 2.0
    noise_window_s: float = 30.0
    vertical_axis: int = 2
    use_vertical_only: bool = False
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
    #: Last displacement, cm.
    disp: Vec3 = _ZERO3
    #: Short- and long-term averages of the characteristic function, gal^2.
    sta: float = 0.0
    lta: float = 0.0
    #: Time of the last trigger (P pick), s; drives the re-trigger lockout.
    last_trigger_s: float | None = None
    #: Whether the event window is open.
    in_event: bool = False
    #: P time of the current (or last) event window, s.
    event_p_time_s: float | None = None
    #: Peaks in the current (or last) event window: PGA gal, PGV cm/s, Pd cm.
    event_pga_gal: float = 0.0
    event_pgv_cms: float = 0.0
    event_pd_cm: float = 0.0
    #: Running mean square of vertical displacement outside event windows, cm^2.
    disp_noise_ms: float = 0.0


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
        pd_cm: peak vertical displacement so far in the Pd window, cm (None if no window).
        pd_complete: the whole Pd window (``pd_window_s`` after P) has been seen.
        pd_snr: ``pd_cm`` over the RMS vertical displacement of the noise before the event
            (inf when no noise has been measured; None if no window).
        packet_pga_gal: peak vector acceleration in this packet, gal (for storage).
        packet_pgv_cms: peak vector velocity in this packet, cm/s.
        packet_max_ratio: highest STA/LTA ratio in this packet (0 during warm-up).
        warmed_up: the LTA has filled; triggers are possible.
        restarted: the filters restarted with this packet (first packet, gap, new rate).
        duplicate: every sample of this packet had been seen already; nothing changed.
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
    packet_pga_gal: float
    packet_pgv_cms: float
    packet_max_ratio: float
    warmed_up: bool
    restarted: bool
    duplicate: bool = False


@lru_cache(maxsize=256)
def _powers(coeffs: tuple[float, ...], m: int) -> tuple[FloatArray, FloatArray]:
    """``a**k`` and ``a**-k`` for k = 0..m-1, one column per coefficient (cached)."""
    k = np.arange(m, dtype=np.float64)[:, None]
    a = np.asarray(coeffs, dtype=np.float64)[None, :]
    p = a**k
    p.setflags(write=False)
    inv = 1.0 / p
    inv.setflags(write=False)
    return p, inv


def _recurse(coeffs: tuple[float, ...], u: FloatArray, y0: FloatArray) -> FloatArray:
    """Solve ``y[n] = a * y[n-1] + u[n]`` along axis 0 without a Python loop per sample.

    Closed form ``y[n] = a**n * (a * y[-1] + cumsum(u[k] * a**-k))``; worked in blocks so
    that ``a**-k`` spans a modest range (``a**-block`` < e**40) and precision holds.

    Args:
        coeffs: one pole ``a`` (0 < a < 1) per column of ``u``.
        u: input, shape (n, c).
        y0: the previous output ``y[-1]``, shape (c,).
    """
    n = u.shape[0]
    out = np.empty_like(u)
    block = max(1, int(40.0 / -math.log(max(min(coeffs), 1e-300))))
    a = np.asarray(coeffs, dtype=np.float64)
    prev = y0
    for start in range(0, n, block):
        seg = u[start : start + block]
        p, inv = _powers(coeffs, seg.shape[0])
        y = p * (a * prev + np.cumsum(seg * inv, axis=0))
        out[start : start + block] = y
        prev = y[-1]
    return out


def _as_samples(samples: NDArray[Any] | Sequence[Sequence[float]]) -> FloatArray:
    """Packet samples as an (n, 3) float array in gal."""
    if isinstance(samples, np.ndarray):
        arr = np.asarray(samples, dtype=np.float64)
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


def _first_true(mask: NDArray[np.bool_], start: int) -> int | None:
    """Index of the first True at or after ``start``, or None."""
    if start >= mask.shape[0]:
        return None
    sub = mask[start:]
    i = int(np.argmax(sub))
    return start + i if sub[i] else None


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
        # The re-trigger lockout survives so that a reconnecting station cannot re-fire.
        event_ended = st.in_event
        st = StationState(
            sample_rate_hz=fs,
            last_trigger_s=st.last_trigger_s,
            event_p_time_s=st.event_p_time_s,
            event_pga_gal=st.event_pga_gal,
            event_pgv_cms=st.event_pgv_cms,
            event_pd_cm=st.event_pd_cm,
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

    # 1. High-pass: y[n] = alpha * (y[n-1] + x[n] - x[n-1]).
    alpha = 1.0 / (1.0 + 2.0 * math.pi * cfg.highpass_hz * dt)
    dx = np.diff(x, axis=0, prepend=np.asarray(st.x_prev)[None, :])
    acc = _recurse((alpha,) * 3, alpha * dx, np.asarray(st.acc))
    # 4. Leaky integration: v[n] = beta * v[n-1] + a[n] * dt, and the same for d from v.
    beta = math.exp(-2.0 * math.pi * cfg.highpass_hz * dt)
    vel = _recurse((beta,) * 3, acc * dt, np.asarray(st.vel))
    disp = _recurse((beta,) * 3, vel * dt, np.asarray(st.disp))
    # 2-3. Characteristic function and recursive STA/LTA (two columns, one pass).
    vz = cfg.vertical_axis
    cf = acc[:, vz] ** 2 if cfg.use_vertical_only else np.einsum("ij,ij->i", acc, acc)
    c_sta = 1.0 / max(cfg.sta_lta.sta_s * fs, 1.0)
    c_lta = 1.0 / max(cfg.sta_lta.lta_s * fs, 1.0)
    avg = _recurse(
        (1.0 - c_sta, 1.0 - c_lta),
        cf[:, None] * np.asarray([c_sta, c_lta]),
        np.asarray([st.sta, st.lta]),
    )
    ratio = avg[:, 0] / np.maximum(avg[:, 1], 1e-12)
    n_lta = math.ceil(cfg.sta_lta.lta_s * fs)
    first_warm = max(0, n_lta - st.n_seen)  # index of the first sample past warm-up
    if first_warm > 0:
        ratio[: min(first_warm, n)] = 0.0

    # A trigger is an upward crossing of the threshold, as in ObsPy's trigger_onset: a
    # ratio still high when the lockout ends (long shaking, a spike's tail) is no new onset.
    prev_ratio = st.sta / st.lta if st.lta > 0 and first_warm == 0 else 0.0
    onset = ratio >= cfg.sta_lta.trigger_ratio
    onset[1:] &= ratio[:-1] < cfg.sta_lta.trigger_ratio
    onset[0] &= prev_ratio < cfg.sta_lta.trigger_ratio

    acc_norm = np.sqrt(np.einsum("ij,ij->i", acc, acc))
    vel_norm = np.sqrt(np.einsum("ij,ij->i", vel, vel))

    # Event windows and triggers. At most a couple of iterations per packet: a trigger is
    # followed by a window of >= min_event_window_s, so this is not a per-sample loop.
    in_event = st.in_event
    p_time = st.event_p_time_s
    last_trigger = st.last_trigger_s
    pga, pgv, pd = st.event_pga_gal, st.event_pgv_cms, st.event_pd_cm
    triggered = False
    new_p: float | None = None
    in_window = np.zeros(n, dtype=bool)
    i = 0
    while i < n:
        if in_event and p_time is not None:
            # The window's first sample *not* in it: the first sub-detrigger ratio after the
            # minimum length, or the maximum length, whichever comes first.
            min_end = _index_at(p_time + cfg.sta_lta.min_event_window_s, t0, fs)
            end = _index_at(p_time + cfg.sta_lta.max_event_window_s, t0, fs)
            below = _first_true(ratio < cfg.sta_lta.detrigger_ratio, max(i, min_end))
            if below is not None:
                end = min(end, below)
            end = max(end, i)
            stop = min(end, n)
            in_window[i:stop] = True
            if stop > i:
                pga = max(pga, float(acc_norm[i:stop].max()))
                pgv = max(pgv, float(vel_norm[i:stop].max()))
                pd_stop = min(_index_at(p_time + cfg.pd_window_s, t0, fs), stop)
                if pd_stop > i:
                    pd = max(pd, float(np.abs(disp[i:pd_stop, vz]).max()))
            if end >= n:
                break
            in_event = False
            event_ended = True
            i = end
            continue
        start = max(i, first_warm)
        if last_trigger is not None:
            start = max(start, _index_at(last_trigger + cfg.sta_lta.retrigger_lockout_s, t0, fs))
        j = _first_true(onset, start)
        if j is None:
            break
        triggered = True
        new_p = t0 + j * dt
        p_time = last_trigger = new_p
        in_event = True
        pga = pgv = pd = 0.0
        i = j

    noise_ms = st.disp_noise_ms
    quiet = disp[~in_window, vz : vz + 1]
    if quiet.shape[0]:
        # Only samples outside event windows teach us the noise level (the estimate is
        # frozen inside them), so an event cannot inflate it.
        c_noise = 1.0 / max(cfg.noise_window_s * fs, 1.0)
        noise_ms = float(
            _recurse((1.0 - c_noise,), c_noise * quiet**2, np.asarray([st.disp_noise_ms]))[-1, 0]
        )

    last = n - 1
    new_state = replace(
        st,
        next_t_s=t0 + n * dt,
        n_seen=min(st.n_seen + n, 1 << 30),
        x_prev=_vec(x[last]),
        acc=_vec(acc[last]),
        vel=_vec(vel[last]),
        disp=_vec(disp[last]),
        sta=float(avg[last, 0]),
        lta=float(avg[last, 1]),
        last_trigger_s=last_trigger,
        in_event=in_event,
        event_p_time_s=p_time,
        event_pga_gal=pga,
        event_pgv_cms=pgv,
        event_pd_cm=pd,
        disp_noise_ms=noise_ms,
    )
    return _result(
        new_state,
        cfg,
        restarted=restarted,
        event_ended=event_ended,
        triggered=triggered,
        p_time_s=new_p,
        packet_pga_gal=float(acc_norm.max()),
        packet_pgv_cms=float(vel_norm.max()),
        packet_max_ratio=float(ratio.max()),
    )


def _index_at(time_s: float, t0_s: float, fs: float) -> int:
    """Index of the first sample at or after ``time_s`` (may be < 0 or > packet length)."""
    # The small slack keeps a time that lands exactly on a sample from rounding up.
    return max(0, math.ceil((time_s - t0_s) * fs - 1e-6))


def _vec(row: FloatArray) -> Vec3:
    return (float(row[0]), float(row[1]), float(row[2]))


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
    noise_rms = math.sqrt(state.disp_noise_ms)
    pd_complete = (
        state.event_p_time_s is not None
        and state.next_t_s is not None
        and state.next_t_s >= state.event_p_time_s + cfg.pd_window_s
    )
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
        pd_snr=(
            (state.event_pd_cm / noise_rms if noise_rms > 0 else math.inf) if has_window else None
        ),
        packet_pga_gal=packet_pga_gal,
        packet_pgv_cms=packet_pgv_cms,
        packet_max_ratio=packet_max_ratio,
        warmed_up=state.n_seen >= math.ceil(cfg.sta_lta.lta_s * state.sample_rate_hz)
        if state.sample_rate_hz > 0
        else False,
        restarted=restarted,
        duplicate=duplicate,
    )
