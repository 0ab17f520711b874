"""After any packet the processors accept, a quake replay still alerts (issue 13).

Generated seismic packets that decode as readings (any time, from year 1 to year 9999,
any allowed rate and length, any amplitude in range) go through what the seismic agent
does with a record (the time guard, :func:`handle_seismic`, its ticks,
:func:`handle_quake` at the wall clock; a handler that raises is counted and skipped, as
the agents do); then the synthetic M6 of ``tests/stations.py`` is replayed live through
the same handlers, and the associator must still declare it.

The replay of a station no packet reached is the same in every example, so it is
computed once; each example recomputes only the stations it hit.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civic_iot.contracts.readings import SEISMIC_RATES_HZ, Location, Reading, SeismicPayload
from civic_iot.registry import Device, Registry
from civic_iot.settings import InfluxSettings
from civic_iot.timebounds import TimeBounds
from civic_iot.times import to_ns
from processors.agents.device import seismic_ticks
from processors.guard import judge_time
from processors.handlers import Context, SeismicOutcome, handle_quake, handle_seismic
from processors.states import QuakeState, SeismicDevice
from simulator.waveforms import SimQuake, synthesize_packets
from tests.stations import STATIONS, T0

REGISTRY = Registry(
    townships=(),
    devices=tuple(
        Device(id=s.station_id, kind="seismic", lat=s.lat, lon=s.lon, township="") for s in STATIONS
    ),
)
CTX = Context.build(InfluxSettings(), REGISTRY)
BOUNDS = TimeBounds()
WHERE = {s.station_id: s for s in STATIONS}
QUAKE = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
#: The hostile packets arrive just before the replay starts.
WALL = T0 - 5.0
REPLAY_S = 60.0
PARTITIONS = 4


def partition(station: str) -> int:
    return zlib.crc32(station.encode()) % PARTITIONS


def reading(station: str, t: datetime, rate: float, x: list[float], y: list[float]) -> Reading:
    s = WHERE[station]
    return Reading(
        reading_id=f"{station}:{to_ns(t)}",
        device_id=station,
        kind="seismic",
        event_time=t,
        received_at=t,
        location=Location(lat=s.lat, lon=s.lon, township=""),
        data=SeismicPayload(ts=t, sample_rate_hz=rate, x_gal=x, y_gal=y, z_gal=x),
    )


@cache
def scenario() -> tuple[tuple[float, tuple[Reading, ...]], ...]:
    """The M6's packets as readings, grouped by packet start (epoch s)."""
    packets = synthesize_packets(
        STATIONS,
        start_s=T0,
        duration_s=REPLAY_S,
        quake=QUAKE,
        offset_gal=(0.0, 0.0, 980.0),
        seed=7,
    )
    by_t: dict[float, list[Reading]] = {}
    for p in packets:
        t = datetime.fromtimestamp(p.t0_s, UTC)
        r = reading(
            p.station_id, t, p.sample_rate_hz, p.samples[:, 0].tolist(), p.samples[:, 1].tolist()
        )
        # z keeps gravity (the detectors remove it): rebuild it exactly.
        data = r.data.model_copy(update={"z_gal": p.samples[:, 2].tolist()})
        by_t.setdefault(p.t0_s, []).append(r.model_copy(update={"data": data}))
    return tuple((t, tuple(rs)) for t, rs in sorted(by_t.items()))


def station_outcomes(station: str, start: SeismicDevice) -> list[SeismicOutcome | None]:
    """The station's outcome for each packet of the replay (None: its handler raised)."""
    out: list[SeismicOutcome | None] = []
    state = start
    for _, group in scenario():
        r = next(r for r in group if r.device_id == station)
        try:
            o = handle_seismic(state, r, CTX)
        except Exception:  # noqa: BLE001 - what the agent does: counted, skipped
            out.append(None)
            continue
        state = o.state
        out.append(o)
    return out


@cache
def clean_outcomes(station: str) -> tuple[SeismicOutcome | None, ...]:
    return tuple(station_outcomes(station, SeismicDevice()))


def step(
    state: QuakeState, batch: Sequence[tuple[SeismicOutcome, int]], wall_s: float
) -> tuple[QuakeState, list[str]]:
    """The seismic agent's ticks for a batch, then the quake agent's steps at ``wall_s``."""
    declared: list[str] = []
    ticks = seismic_ticks([(o, None, part) for o, part in batch])
    for tick in sorted(ticks, key=lambda k: k.now_s):
        try:
            d = handle_quake(state, [tick], CTX, datetime.fromtimestamp(wall_s, UTC))
        except Exception:  # noqa: BLE001 - what the agent does: counted, skipped
            continue
        state = d.state
        declared += [c.key for c in d.candidates if c.hazard == "earthquake" and c.level > 0]
    return state, declared


def replay(stations: dict[str, SeismicDevice], quake: QuakeState) -> list[str]:
    """The M6 live, from these states; the earthquake candidates, until the first."""
    outcomes = {
        s.station_id: (
            station_outcomes(s.station_id, stations[s.station_id])
            if s.station_id in stations
            else clean_outcomes(s.station_id)
        )
        for s in STATIONS
    }
    for i, (t0, _) in enumerate(scenario()):
        batch = [
            (o, partition(sid)) for sid, outs in outcomes.items() if (o := outs[i]) is not None
        ]
        quake, declared = step(quake, batch, t0 + 1.0)
        if declared:
            return declared
    return []


def feed(packets: Iterable[Reading]) -> tuple[dict[str, SeismicDevice], QuakeState]:
    """What the seismic and quake agents make of these records at ``WALL``."""
    stations: dict[str, SeismicDevice] = {}
    quake = QuakeState()
    for r in packets:
        if judge_time(r, WALL, BOUNDS) is not None:
            continue  # refused or kept from the detectors
        try:
            o = handle_seismic(stations.get(r.device_id, SeismicDevice()), r, CTX)
        except Exception:  # noqa: BLE001 - what the agent does: counted, skipped
            continue
        stations[r.device_id] = o.state
        quake, _ = step(quake, [(o, partition(r.device_id))], WALL)
    return stations, quake


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXTREMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 50, tzinfo=UTC),
    datetime.fromtimestamp(WALL, UTC) + timedelta(seconds=59),
    datetime.fromtimestamp(WALL, UTC) + timedelta(days=231),
    datetime.fromtimestamp(WALL, UTC) - timedelta(days=6),
]


@st.composite
def packets(draw: st.DrawFn) -> Reading:
    station = draw(st.sampled_from([s.station_id for s in STATIONS]))
    t = draw(
        st.one_of(
            st.sampled_from(EXTREMES),
            # Anything from a week back to a minute ahead, to the millisecond.
            st.integers(-7 * 86_400_000, 60_000).map(
                lambda ms: datetime.fromtimestamp(WALL, UTC) + timedelta(milliseconds=ms)
            ),
        )
    )
    rate = draw(st.sampled_from(SEISMIC_RATES_HZ))
    n = draw(st.integers(1, min(60, int(10 * rate))))
    amp = st.one_of(st.sampled_from([0.0, 4000.0, -4000.0]), st.floats(-4000, 4000))
    x = draw(st.lists(amp, min_size=n, max_size=n))
    y = draw(st.lists(amp, min_size=n, max_size=n))
    return reading(station, t, rate, x, y)


def test_the_clean_replay_alerts() -> None:
    assert replay({}, QuakeState())


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(packets(), min_size=1, max_size=3))
def test_after_any_accepted_packet_a_quake_replay_still_alerts(hostile: list[Reading]) -> None:
    stations, quake = feed(hostile)
    assert replay(stations, quake), [
        (r.device_id, r.event_time.isoformat(), r.data.sample_rate_hz) for r in hostile
    ]
