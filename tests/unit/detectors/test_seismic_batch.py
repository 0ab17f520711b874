"""The station detector's CPU work must not change what it finds: the picks and every
number of every packet's result are pinned (computed before the filters were solved side
by side), and many stations' packets through :func:`process_packets` give exactly what
:func:`process_packet` gives each alone, over quakes, noise, spikes, gaps, re-sent and
ragged packets and both trigger bands."""

import dataclasses
import hashlib

import numpy as np
import pytest

from civic_iot.thresholds import StaLtaThresholds
from processors.detectors import seismic
from processors.detectors.seismic import (
    PacketResult,
    SeismicConfig,
    StationState,
    process_packet,
    process_packets,
)
from simulator.waveforms import SimQuake, SimStation, Spike, synthesize_traces

T0 = 1_700_000_000.0
STATIONS = [
    SimStation(f"G{i:02d}", 23.6 + 0.25 * (i % 4), 120.6 + 0.3 * (i // 4)) for i in range(12)
]
M6 = SimQuake(lat=24.0, lon=121.0, depth_km=10.0, magnitude=6.0, origin_s=T0 + 30)
M5 = SimQuake(lat=24.6, lon=121.9, depth_km=20.0, magnitude=5.0, origin_s=T0 + 30)
SPIKES = [Spike("G03", T0 + 25), Spike("G07", T0 + 40, amplitude_gal=400.0)]

#: (scenario, synthesis arguments, the picks (station, P time), sha256 of every packet's
#: PacketResult repr, stations in order): what the detector gave before issue 11's CPU
#: work on it. A change here is a change of behaviour, not of speed. Re-pinned with
#: issue 12's sixth round (the LTA's warm-up, the spike's tail, trigger ratio 2.5), once
#: stations together still gave what each gave alone.
PINNED = [
    (
        "M6 near",
        {"quake": M6},
        [
            ("G00", 1700000040.26),
            ("G01", 1700000037.55),
            ("G02", 1700000037.25),
            ("G03", 1700000039.56),
            ("G04", 1700000037.84),
            ("G05", 1700000033.7),
            ("G06", 1700000033.04),
            ("G07", 1700000036.95),
            ("G08", 1700000038.3799999),
            ("G09", 1700000034.76),
            ("G10", 1700000034.26),
            ("G11", 1700000037.57),
        ],
        "08af7d0fd4d262ea972217f7882cf4440d9973a2c85b9699043f9bb4df893f6c",
    ),
    (
        "M5 offshore",
        {"quake": M5},
        [
            # Issue 12's sixth round (trigger ratio 2.5, an unbiased LTA): the S wave
            # at three stations whose P stayed under the noise (S at 73.4, 67.9, 68.1).
            ("G04", 1700000080.54),
            ("G05", 1700000071.21),
            ("G06", 1700000049.89),
            ("G07", 1700000047.98),
            ("G08", 1700000069.21),
            ("G09", 1700000048.76),
            ("G10", 1700000045.6),
            ("G11", 1700000043.29),
        ],
        "bf7d4b227f66482a6b26bdebd97e63527cd5af30c5452ea720795fa5069ae093",
    ),
    (
        "noise and spikes",
        {"spikes": SPIKES, "noise_gal": 0.6},
        [("G03", 1700000025.05), ("G07", 1700000040.06)],
        "a268d48afbf8fc7ae8accb55ee93a5d576f7b23fa07aa465f13521c64a78a833",
    ),
]


#: The S picker's fields (issue 12, the S pick): not in the pinned P-side digest.
S_FIELDS = frozenset(
    {
        "s_time_s",
        "event_s_time_s",
        "s_sta",
        "s_sum",
        "s_count",
        "s_ref",
        "s_prev_ratio",
        "s_quiet_s",
    }
)


def p_side_repr(obj: object) -> str:
    """``repr`` of a result (or state) as it was before the S picker: its fields in order
    without the S picker's, so that the pinned digests still pin every P-side figure."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        inner = ", ".join(
            f"{f.name}={p_side_repr(getattr(obj, f.name))}"
            for f in dataclasses.fields(obj)
            if f.name not in S_FIELDS
        )
        return f"{type(obj).__qualname__}({inner})"
    return repr(obj)


def traces(**kw: object) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = synthesize_traces(
        STATIONS,
        start_s=T0,
        duration_s=90,
        sample_rate_hz=100.0,
        seed=7,
        **kw,  # type: ignore[arg-type]
    )
    return out


@pytest.mark.parametrize(("name", "kw", "picks", "digest"), PINNED, ids=[p[0] for p in PINNED])
@pytest.mark.parametrize("together", [False, True], ids=["one by one", "stations together"])
def test_the_picks_and_every_figure_are_those_pinned(
    name: str, kw: dict[str, object], picks: list[tuple[str, float]], digest: str, together: bool
) -> None:
    x = traces(**kw)
    results: dict[str, list[PacketResult]] = {s.station_id: [] for s in STATIONS}
    states = {s.station_id: StationState() for s in STATIONS}
    for i in range(0, 9000, 100):
        if together:
            batch = process_packets(
                [
                    (
                        states[s.station_id],
                        x[s.station_id][i : i + 100],
                        100.0,
                        T0 + i / 100,
                        SeismicConfig(),
                    )
                    for s in STATIONS
                ]
            )
        else:
            batch = [
                process_packet(
                    states[s.station_id], x[s.station_id][i : i + 100], 100.0, T0 + i / 100
                )
                for s in STATIONS
            ]
        for s, r in zip(STATIONS, batch, strict=True):
            results[s.station_id].append(r)
            states[s.station_id] = r.state
    h = hashlib.sha256()
    found = []
    for s in STATIONS:
        for r in results[s.station_id]:
            h.update(p_side_repr(r).encode())
            if r.triggered:
                found.append((s.station_id, r.p_time_s))
    assert found == picks
    assert h.hexdigest() == digest


@pytest.mark.parametrize("seed", range(6))
def test_stations_together_give_what_each_gives_alone(seed: int) -> None:
    """Rates 20-200 Hz, packets of 0.5-10 s, ragged lengths, gaps (restart), re-sent
    overlaps, repeated packets (nothing new), a 980 gal offset, both trigger bands mixed
    in one call."""
    rng = np.random.default_rng(seed)
    fs = [100.0, 50.0, 20.0, 100.0, 200.0, 100.0][seed]
    n = int([1.0, 1.0, 2.0, 0.5, 1.0, 10.0][seed] * fs)
    quake = SimQuake(
        lat=24.2,
        lon=121.0 + 0.2 * seed,
        depth_km=10.0,
        magnitude=4.5 + 0.4 * seed,
        origin_s=T0 + 35,
    )
    x = synthesize_traces(
        STATIONS,
        start_s=T0,
        duration_s=120,
        sample_rate_hz=fs,
        quake=quake,
        spikes=SPIKES,
        noise_gal=0.3,
        offset_gal=(0.0, 0.0, 980.0 if seed % 2 else 0.0),
        seed=seed,
    )
    configs = [
        SeismicConfig(),
        SeismicConfig(sta_lta=StaLtaThresholds(cf_vertical_only=False, cf_band_hz=(2.0, 8.0))),
    ]
    alone = {s.station_id: StationState() for s in STATIONS}
    together = dict(alone)
    pos = dict.fromkeys(alone, 0)
    k = 0
    triggered = 0
    while any(pos[s] < len(x[s]) for s in pos):
        calls = []
        for j, s in enumerate(STATIONS):
            sid = s.station_id
            i = pos[sid]
            if i >= len(x[sid]):
                continue
            m = n if (k + j) % 11 else max(1, n - int(rng.integers(0, n)))
            seg, t0 = x[sid][i : i + m], T0 + i / fs
            if (k + j) % 37 == 5:
                t0 += 5.0  # a gap: the filters restart
            elif (k + 2 * j) % 29 == 3 and i > n:
                seg, t0 = x[sid][i - n // 2 : i + m], T0 + (i - n // 2) / fs  # re-sent half
            elif (k + j) % 53 == 7 and i >= m:
                seg, t0 = x[sid][i - m : i], T0 + (i - m) / fs  # all seen already
            calls.append((sid, seg, t0, configs[j % 2]))
            pos[sid] = i + m
        ones = [process_packet(alone[sid], seg, fs, t0, cfg) for sid, seg, t0, cfg in calls]
        many = process_packets([(together[sid], seg, fs, t0, cfg) for sid, seg, t0, cfg in calls])
        for (sid, *_), a, b in zip(calls, ones, many, strict=True):
            assert repr(a) == repr(b), (sid, k)
            alone[sid], together[sid] = a.state, b.state
            triggered += a.triggered
        k += 1
    assert triggered > 0  # the comparison covered event windows, not only noise


def test_a_quiet_packet_takes_the_short_path_and_gets_the_full_paths_result() -> None:
    """The quiet packet's short path (:func:`_armed_quiet`, from the group's figures)
    gives what the branch-by-branch detector gives, to the last bit; it is never taken
    for a packet with a trigger, in an event window or in the warm-up, and is taken for
    most packets of a network (locked out after a quake or a spike included)."""
    x = traces(quake=M6, spikes=SPIKES)
    cfg = SeismicConfig()
    ids = [s.station_id for s in STATIONS]
    states = {sid: StationState() for sid in ids}
    taken = declined = 0
    for i in range(0, 9000, 100):
        preps = {
            sid: seismic._prepare(states[sid], x[sid][i : i + 100], 100.0, T0 + i / 100, cfg)
            for sid in ids
        }
        ready = {sid: p for sid, p in preps.items() if isinstance(p, seismic._Prepared)}
        filtered = seismic._filters_many(list(ready.values()))
        for (sid, prep), fil in zip(ready.items(), filtered, strict=True):
            full = seismic._detect_full(prep, fil, cfg)
            short = seismic._armed_quiet(prep, fil, cfg)
            if short is None:
                declined += 1
            else:
                taken += 1
                assert repr(short) == repr(full)
            if full.triggered or prep.st.in_event or prep.st.n_seen < 100 * cfg.sta_lta.lta_s:
                assert short is None
            states[sid] = full.state
    assert taken > declined > 0
