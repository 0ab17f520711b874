"""Synthetic three-component accelerograms for tests, the simulator and benchmarks.

Pure and seeded: the same arguments give the same samples. Nothing here is a physical
model fit to data; it is a plausible-looking stand-in with the properties the detectors
rely on:

- background noise of a few tenths of a gal (white, per component), per-station level,
  given as the RMS of a 100 Hz stream: a stream at another rate has the same noise
  density (a 20 Hz stream, anti-alias filtered as a sensor does, has sqrt(20/100) of it);
- a P wave at ``hypocentral distance / vp`` (mostly vertical, high-frequency, a fraction
  ``p_to_s`` of the S amplitude) carrying a low-frequency vertical displacement pulse whose
  peak in the first 3 s matches Wu & Zhao (2006) ``log Pd = -3.463 + 0.729 M - 1.374 log R``
  with the dominant period of Wu & Kanamori (2005) ``log tau_c = 0.296 M - 1.716``;
- an S wave at ``hypocentral distance / vs`` (mostly horizontal) whose peak horizontal
  vector acceleration follows a Campbell-type attenuation (see :class:`WaveModel`), with a
  log-normal site term and an exponential coda; its spectrum is the stochastic method's
  (Boore 2003): a Brune omega-squared source whose corner frequency falls with magnitude,
  the source lasting 1 / corner, anelastic attenuation along the path and kappa at the
  site. Low frequencies, and so PGV and the long shaking of a large quake, grow with
  magnitude as in real records;
- optional human-made noise: spikes (a slammed door: a short burst on one station) and
  bursts (the same on several neighbouring stations at nearly the same time: traffic,
  construction, a door on a floor shared by co-located stations), and noisy stations
  (a larger noise level);
- optional model error: per-station arrival delays (site terms, clock error) and noise
  levels spread log-normally, and any wave speeds (synthesise with one velocity model,
  locate with another).

Displacement pulses are built as displacement and differentiated twice, so the synthetic
velocity and displacement have no spurious offsets, as with real ground motion.

Samples are rows, components columns (east, north, vertical), in gal; times are epoch
seconds. ``packet.samples.T`` gives the 3 x n view.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from civic_iot.contracts.readings import SeismicPayload

__all__ = [
    "Burst",
    "Packet",
    "SimQuake",
    "SimStation",
    "Spike",
    "WaveModel",
    "arrival_times",
    "hypocentral_distance_km",
    "packetize",
    "synthesize_packets",
    "synthesize_traces",
]

FloatArray = NDArray[np.float64]
EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True, slots=True)
class SimStation:
    """A station: id and position (degrees, WGS 84)."""

    station_id: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class SimQuake:
    """A synthetic earthquake.

    Attributes:
        lat, lon: epicentre, degrees.
        depth_km: hypocentre depth, km (>= 0).
        magnitude: local magnitude, roughly 3-7.5 for sensible output.
        origin_s: origin time, epoch seconds.
    """

    lat: float
    lon: float
    depth_km: float
    magnitude: float
    origin_s: float


@dataclass(frozen=True, slots=True)
class Spike:
    """A human-made burst on one station: peak ``amplitude_gal`` (gal) over
    ``duration_s`` (s) starting at ``time_s`` (epoch s), energy around 5-20 Hz."""

    station_id: str
    time_s: float
    amplitude_gal: float = 150.0
    duration_s: float = 0.4


@dataclass(frozen=True, slots=True)
class Burst:
    """Human-made noise on several stations at nearly the same time.

    Each station gets the burst ``jitter_s`` (s, uniform) after ``time_s`` (epoch s), with
    its own amplitude: ``amplitude_gal`` (gal, peak) times a log-uniform factor within
    ``amplitude_spread`` (2: from half to twice). A burst is ``repeats`` impacts
    ``interval_s`` apart (construction), each ``duration_s`` long with its energy in
    ``band_hz`` (Hz; capped at 0.45 of the sample rate).
    """

    station_ids: tuple[str, ...]
    time_s: float
    amplitude_gal: float = 100.0
    duration_s: float = 0.4
    band_hz: tuple[float, float] = (5.0, 20.0)
    jitter_s: float = 0.5
    amplitude_spread: float = 2.0
    repeats: int = 1
    interval_s: float = 0.7


@dataclass(frozen=True, slots=True)
class WaveModel:
    """How the synthetic world behaves.

    The S-wave peak (gal) follows ``log10 PGA = a + b M - log10(R + c 10^(0.5 M)) - d R``
    (R hypocentral km): the Campbell-type form used for Taiwan by Wu, Shin & Teng (2001),
    with their coefficients as we recall them (*unconfirmed*). It gives about 150 gal at
    10 km and 11 gal at 100 km for M 6. The same form and numbers are the detector's
    default in ``processors.detectors.quake`` on purpose; change one side to test model
    error.

    The S wave's spectrum (its shape; the peak is the attenuation above) is the
    stochastic method's (Boore 2003, Pure Appl. Geophys. 160, 635-676, eqs. 3-5 and
    Table 4): Brune's omega-squared source, acceleration ``f^2 / (1 + (f / fc)^2)``
    with the corner ``fc = 4.906e6 beta (stress_drop / M0)^(1/3)`` (Hz; beta km/s, bars,
    M0 dyne-cm from ``log10 M0 = 1.5 M + 16.05``, Hanks & Kanamori 1979), times
    ``exp(-pi f R / (Q(f) beta))`` with ``Q = q0 f^q_eta`` along the path and
    ``exp(-pi kappa f)`` at the site. The source lasts ``1 / fc`` (Boore's source
    duration) and the train lengthens by ``0.05 R``. Stress drop, Q and kappa are the
    generic western-North-America values of Boore's Table 4 and Atkinson & Silva (2000)
    (70 bars, ``180 f^0.45``, 0.04 s), not a fit to Taiwan.

    Attributes:
        vp_kms, vs_kms: wave speeds, km/s (6.0 / 3.5; *unconfirmed* as Taiwan figures).
        pga_a, pga_b, pga_c, pga_d: attenuation coefficients (above).
        site_sigma_log10: standard deviation of the per-station log10 site term.
        p_to_s: high-frequency P amplitude as a fraction of the S amplitude.
        p_band_hz: pass band of the P wave train, Hz.
        stress_drop_bar, q0, q_eta, kappa_s: the S spectrum (above): bars, Q at 1 Hz,
            its frequency exponent, s.
        delay_sigma_s: standard deviation of a per-station delay of both arrivals, s
            (site terms and clock error the locator does not know; 0: none).
        noise_sigma_log10: standard deviation of the per-station log10 noise level
            around ``noise_gal`` (0: every station alike).
    """

    vp_kms: float = 6.0
    vs_kms: float = 3.5
    pga_a: float = 0.00215
    pga_b: float = 0.581
    pga_c: float = 0.00871
    pga_d: float = 0.00414
    site_sigma_log10: float = 0.15
    p_to_s: float = 0.25
    p_band_hz: tuple[float, float] = (3.0, 15.0)
    stress_drop_bar: float = 70.0
    q0: float = 180.0
    q_eta: float = 0.45
    kappa_s: float = 0.04
    delay_sigma_s: float = 0.0
    noise_sigma_log10: float = 0.0

    def pga_gal(self, magnitude: float, hyp_km: FloatArray) -> FloatArray:
        """Median peak horizontal acceleration, gal, at hypocentral distances (km)."""
        r = np.asarray(hyp_km, dtype=np.float64)
        log_pga = (
            self.pga_a
            + self.pga_b * magnitude
            - np.log10(r + self.pga_c * 10 ** (0.5 * magnitude))
            - self.pga_d * r
        )
        return np.asarray(10**log_pga, dtype=np.float64)

    def corner_hz(self, magnitude: float) -> float:
        """Brune corner frequency of the source, Hz (Boore 2003, eq. 4)."""
        moment = 10 ** (1.5 * magnitude + 16.05)  # dyne-cm (Hanks & Kanamori 1979)
        return float(4.906e6 * self.vs_kms * (self.stress_drop_bar / moment) ** (1.0 / 3.0))

    def s_spectrum(
        self, magnitude: float, hyp_km: FloatArray, f: NDArray[np.floating[Any]]
    ) -> FloatArray:
        """Shape of the S wave's acceleration amplitude spectrum (arbitrary scale) at
        frequencies ``f`` (Hz) for each hypocentral distance (km): (stations, freqs)."""
        r = np.asarray(hyp_km, dtype=np.float64)[:, None]
        fc = self.corner_hz(magnitude)
        ff = np.maximum(np.asarray(f, dtype=np.float64), 1e-6)[None, :]
        source = ff**2 / (1.0 + (ff / fc) ** 2)
        q = self.q0 * ff**self.q_eta
        path = np.exp(-np.pi * ff * r / (q * self.vs_kms))
        site = np.exp(-np.pi * self.kappa_s * ff)
        return np.asarray(source * path * site, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Packet:
    """One station packet: ``samples`` is (n, 3) gal (east, north, vertical), the first
    sample at ``t0_s`` (epoch s)."""

    station_id: str
    t0_s: float
    sample_rate_hz: float
    samples: FloatArray = field(repr=False)

    def payload(self, decimals: int = 3) -> SeismicPayload:
        """The packet as a device's seismic payload (samples rounded to ``decimals``)."""
        rounded = self.samples.round(decimals)
        return SeismicPayload(
            ts=datetime.fromtimestamp(self.t0_s, UTC),
            sample_rate_hz=self.sample_rate_hz,
            x_gal=rounded[:, 0].tolist(),
            y_gal=rounded[:, 1].tolist(),
            z_gal=rounded[:, 2].tolist(),
        )


def hypocentral_distance_km(
    quake: SimQuake, lat: FloatArray | float, lon: FloatArray | float
) -> FloatArray:
    """Straight-line distance from the hypocentre to points at the surface, km."""
    lat_r = np.radians(np.asarray(lat, dtype=np.float64))
    lon_r = np.radians(np.asarray(lon, dtype=np.float64))
    q_lat, q_lon = math.radians(quake.lat), math.radians(quake.lon)
    h = (
        np.sin((lat_r - q_lat) / 2) ** 2
        + math.cos(q_lat) * np.cos(lat_r) * np.sin((lon_r - q_lon) / 2) ** 2
    )
    epi = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return np.asarray(np.hypot(epi, quake.depth_km), dtype=np.float64)


def arrival_times(
    quake: SimQuake, station: SimStation, model: WaveModel | None = None
) -> tuple[float, float]:
    """P and S arrival times at ``station``, epoch seconds."""
    m = model if model is not None else WaveModel()
    r = float(hypocentral_distance_km(quake, station.lat, station.lon))
    return quake.origin_s + r / m.vp_kms, quake.origin_s + r / m.vs_kms


def _band_noise(
    rng: np.random.Generator, shape: tuple[int, ...], fs: float, band: tuple[float, float]
) -> FloatArray:
    """Gaussian noise along axis -2 shaped by a smooth band-pass, unit RMS per trace."""
    n = shape[-2]
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-2)
    f = np.fft.rfftfreq(n, 1.0 / fs)
    lo, hi = band
    with np.errstate(divide="ignore"):
        gain = 1.0 / np.sqrt((1.0 + (f / hi) ** 8) * (1.0 + (lo / np.maximum(f, 1e-9)) ** 8))
    out = np.fft.irfft(spec * gain[:, None], n=n, axis=-2)
    rms = np.sqrt(np.mean(out**2, axis=-2, keepdims=True))
    return np.asarray(out / np.maximum(rms, 1e-12), dtype=np.float64)


def _shaped_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], gain: FloatArray
) -> FloatArray:
    """Gaussian noise (stations, samples, components) whose amplitude spectrum along the
    samples follows ``gain`` (stations, rfft bins), unit RMS per trace."""
    n = shape[1]
    spec = np.fft.rfft(rng.standard_normal(shape), axis=1)
    out = np.fft.irfft(spec * gain[:, :, None], n=n, axis=1)
    rms = np.sqrt(np.mean(out**2, axis=1, keepdims=True))
    return np.asarray(out / np.maximum(rms, 1e-12), dtype=np.float64)


def _ramp(t: FloatArray, rise_s: float) -> FloatArray:
    """0 before t=0, a smooth sin^2 rise to 1 over ``rise_s``, 1 after."""
    x = np.clip(t / rise_s, 0.0, 1.0)
    return np.asarray(np.sin(0.5 * np.pi * x) ** 2, dtype=np.float64)


def synthesize_traces(
    stations: Sequence[SimStation],
    *,
    start_s: float,
    duration_s: float,
    sample_rate_hz: float = 100.0,
    quake: SimQuake | None = None,
    spikes: Iterable[Spike] = (),
    bursts: Iterable[Burst] = (),
    noise_gal: float = 0.3,
    noisy: Mapping[str, float] | None = None,
    offset_gal: tuple[float, float, float] = (0.0, 0.0, 0.0),
    model: WaveModel | None = None,
    seed: int = 0,
) -> dict[str, FloatArray]:
    """Continuous traces for every station.

    Args:
        stations: where the stations are.
        start_s: time of the first sample, epoch s.
        duration_s: length, s.
        sample_rate_hz: samples per second.
        quake: the earthquake, or None for noise (and spikes) only.
        spikes: human-made spikes to add (one station each).
        bursts: human-made bursts to add (several stations each).
        noise_gal: RMS background noise per component of a 100 Hz stream, gal (a few
            tenths for MEMS); other rates get the same noise density.
        noisy: station id -> RMS noise (gal, as ``noise_gal``) for stations noisier than
            the rest.
        offset_gal: constant sensor offset per component, gal (e.g. 980 on the vertical
            for a board that reports gravity).
        model: the synthetic world's parameters.
        seed: RNG seed.

    Returns:
        station id -> (n, 3) acceleration, gal.
    """
    m = model if model is not None else WaveModel()
    rng = np.random.default_rng(seed)
    fs = float(sample_rate_hz)
    n = round(duration_s * fs)
    k = len(stations)
    t = start_s + np.arange(n) / fs
    noise_levels = np.array(
        [(noisy or {}).get(s.station_id, noise_gal) for s in stations], dtype=np.float64
    )
    # The same noise density at every rate: RMS scales with the square root of the band.
    noise_levels *= math.sqrt(min(fs, 100.0) / 100.0)
    data = rng.standard_normal((k, n, 3)) * noise_levels[:, None, None]
    data += np.asarray(offset_gal)[None, None, :]

    if quake is not None and k:
        data += _quake_motion(stations, quake, t, fs, m, rng)
    if m.noise_sigma_log10 > 0 and k:
        # Drawn after the quake so that a model without spread keeps its samples.
        spread = 10 ** rng.normal(0.0, m.noise_sigma_log10, k)
        extra = np.sqrt(np.maximum(spread**2 - 1.0, 0.0)) * noise_levels
        data += rng.standard_normal((k, n, 3)) * extra[:, None, None]

    index = {s.station_id: i for i, s in enumerate(stations)}
    for spike in spikes:
        _add_burst(data[index[spike.station_id]], rng, fs, start_s, spike.time_s,
                   spike.amplitude_gal, spike.duration_s, (5.0, 20.0))  # fmt: skip
    for b in bursts:
        for sid in b.station_ids:
            when = b.time_s + float(rng.uniform(0.0, b.jitter_s))
            amp = b.amplitude_gal * float(b.amplitude_spread ** rng.uniform(-1.0, 1.0))
            for r in range(max(1, b.repeats)):
                scale = float(rng.uniform(0.5, 1.0)) if r else 1.0
                _add_burst(data[index[sid]], rng, fs, start_s, when + r * b.interval_s,
                           amp * scale, b.duration_s, b.band_hz)  # fmt: skip

    return {s.station_id: data[i] for i, s in enumerate(stations)}


def _add_burst(
    trace: FloatArray,
    rng: np.random.Generator,
    fs: float,
    start_s: float,
    time_s: float,
    amplitude_gal: float,
    duration_s: float,
    band_hz: tuple[float, float],
) -> None:
    """Add one burst of peak ``amplitude_gal`` to an (n, 3) trace, in place."""
    n = trace.shape[0]
    j0 = max(0, math.floor((time_s - start_s) * fs))
    j1 = min(n, j0 + max(1, round(duration_s * fs)))
    if j1 <= j0:
        return
    # Built at >= 200 Hz as displacement and differentiated twice, like the quake's
    # pulse (a door or a truck leaves the ground where it was: no net velocity), then
    # band-limited to 0.45 of the stream's rate and decimated, as a sensor's anti-alias
    # filter would: a 0.2 s knock is not a few samples of random numbers at 20 Hz.
    k = max(1, math.ceil(200.0 / fs))
    f_hi = fs * k
    lo, hi = band_hz
    m_hi = max(8, round(duration_s * f_hi))
    pad = 2 * k * max(8, round(0.5 * fs))  # room for the anti-alias filter's ringing
    disp = np.zeros((m_hi + 2 * pad, 3))
    shape = (np.hanning(m_hi) ** 2)[:, None]
    disp[pad : pad + m_hi] = _band_noise(rng, (m_hi, 3), f_hi, (lo, hi)) * shape
    acc = np.gradient(np.gradient(disp, 1.0 / f_hi, axis=0), 1.0 / f_hi, axis=0)
    f = np.fft.rfftfreq(acc.shape[0], 1.0 / f_hi)
    spec = np.fft.rfft(acc, axis=0) / np.sqrt(1.0 + (f / (0.4 * fs)) ** 16)[:, None]
    burst = np.fft.irfft(spec, n=acc.shape[0], axis=0)[::k]
    peak = float(np.max(np.abs(burst))) or 1.0
    j0 -= pad // k
    seg = burst * (amplitude_gal / peak)
    a, b = max(0, j0), min(n, j0 + seg.shape[0])
    if b > a:
        trace[a:b] += seg[a - j0 : b - j0]


def _quake_motion(
    stations: Sequence[SimStation],
    quake: SimQuake,
    t: FloatArray,
    fs: float,
    m: WaveModel,
    rng: np.random.Generator,
) -> FloatArray:
    """P and S wave trains for every station, (k, n, 3) gal."""
    k, n = len(stations), t.shape[0]
    mag = quake.magnitude
    lat = np.array([s.lat for s in stations])
    lon = np.array([s.lon for s in stations])
    r = hypocentral_distance_km(quake, lat, lon)
    tp = quake.origin_s + r / m.vp_kms
    ts = quake.origin_s + r / m.vs_kms
    site = 10 ** (rng.normal(0.0, m.site_sigma_log10, k))
    if m.delay_sigma_s > 0:
        delay = rng.normal(0.0, m.delay_sigma_s, k)
        tp, ts = tp + delay, ts + delay
    a_s = m.pga_gal(mag, r) * site
    # The source lasts 1 / corner (Boore 2003: ~4 s at M 6, ~20 s at M 7.3); the S
    # train lengthens with distance (0.05 R, Boore's path duration).
    src_s = 1.0 / m.corner_hz(mag)
    plateau = src_s + 0.05 * r
    coda_tau = 0.5 * src_s + 0.02 * r + 2.0

    dtp = t[None, :] - tp[:, None]  # (k, n) time since P
    dts = t[None, :] - ts[:, None]  # time since S
    # S: ramp, plateau, exponential coda; mostly horizontal.
    s_env = _ramp(dts, 0.5) * np.exp(-np.maximum(dts - plateau[:, None], 0.0) / coda_tau[:, None])
    # Shaped first, then windowed: the arrival stays sharp (a filter applied after the
    # window would smear low frequencies ahead of the S wave, into the P window).
    gain = m.s_spectrum(mag, r, np.fft.rfftfreq(n, 1.0 / fs))
    s_wave = _shaped_noise(rng, (k, n, 3), gain) * np.array([1.0, 1.0, 0.3])
    s_wave *= s_env[:, :, None]
    horiz_peak = np.sqrt(np.max(s_wave[:, :, 0] ** 2 + s_wave[:, :, 1] ** 2, axis=1))
    s_wave *= (a_s / np.maximum(horiz_peak, 1e-12))[:, None, None]

    # P: high-frequency train, mostly vertical, strongest at onset (what a trigger sees)
    # and fading over the source duration.
    p_env = _ramp(dtp, 0.1) * np.exp(-np.maximum(dtp, 0.0) / (src_s + 2.0))
    p_wave = _band_noise(rng, (k, n, 3), fs, m.p_band_hz) * np.array([0.5, 0.5, 1.0])
    p_wave *= p_env[:, :, None]
    vert_peak = np.max(np.abs(p_wave[:, :, 2]), axis=1)
    p_wave *= (m.p_to_s * a_s / np.maximum(vert_peak, 1e-12))[:, None, None]

    # Low-frequency vertical displacement pulse that sets Pd (Wu & Zhao 2006) with the
    # dominant period tau_c of Wu & Kanamori (2005); built as displacement, then
    # differentiated twice so that velocity and displacement carry no offset.
    pd_cm = 10 ** (-3.463 + 0.729 * mag - 1.374 * np.log10(r))
    tau_c = 10 ** (0.296 * mag - 1.716)
    d_env = _ramp(dtp, 0.5 * tau_c) * np.exp(-np.maximum(dtp - 3.0, 0.0) / (2.0 * tau_c))
    disp = pd_cm[:, None] * d_env * np.sin(2 * np.pi * np.maximum(dtp, 0.0) / tau_c)
    acc_z = np.gradient(np.gradient(disp, 1.0 / fs, axis=1), 1.0 / fs, axis=1)

    out = s_wave + p_wave
    out[:, :, 2] += acc_z
    return np.asarray(out, dtype=np.float64)


def packetize(
    traces: Mapping[str, FloatArray],
    *,
    start_s: float,
    sample_rate_hz: float = 100.0,
    packet_s: float = 1.0,
) -> list[Packet]:
    """Cut traces into packets of ``packet_s`` seconds, in time order (then station id),
    the order in which a network would deliver them."""
    per = max(1, round(packet_s * sample_rate_hz))
    packets: list[Packet] = []
    for sid, trace in traces.items():
        for j in range(0, trace.shape[0], per):
            packets.append(
                Packet(
                    station_id=sid,
                    t0_s=start_s + j / sample_rate_hz,
                    sample_rate_hz=sample_rate_hz,
                    samples=trace[j : j + per],
                )
            )
    packets.sort(key=lambda p: (p.t0_s, p.station_id))
    return packets


def synthesize_packets(
    stations: Sequence[SimStation],
    *,
    start_s: float,
    duration_s: float,
    sample_rate_hz: float = 100.0,
    packet_s: float = 1.0,
    quake: SimQuake | None = None,
    spikes: Iterable[Spike] = (),
    bursts: Iterable[Burst] = (),
    noise_gal: float = 0.3,
    noisy: Mapping[str, float] | None = None,
    offset_gal: tuple[float, float, float] = (0.0, 0.0, 0.0),
    model: WaveModel | None = None,
    seed: int = 0,
) -> list[Packet]:
    """:func:`synthesize_traces` then :func:`packetize`."""
    traces = synthesize_traces(
        stations,
        start_s=start_s,
        duration_s=duration_s,
        sample_rate_hz=sample_rate_hz,
        quake=quake,
        spikes=spikes,
        bursts=bursts,
        noise_gal=noise_gal,
        noisy=noisy,
        offset_gal=offset_gal,
        model=model,
        seed=seed,
    )
    return packetize(traces, start_s=start_s, sample_rate_hz=sample_rate_hz, packet_s=packet_s)
