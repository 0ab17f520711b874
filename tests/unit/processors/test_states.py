"""Every stored state round-trips exactly through the one serialisation there is: each
detector state through :func:`dump_state`/:func:`load_state`, each table value through
the changelog codec (:class:`StateCodec`). Properties over generated states, then the
states the handlers really produce."""

from __future__ import annotations

import logging
import math
from dataclasses import FrozenInstanceError, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civic_iot.contracts.processing import (
    Observation,
    SeismicTick,
    StrongShakingNotice,
    TownshipReport,
    Trigger,
)
from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
    WaterPayload,
)
from civic_iot.registry import Device, Registry, Township
from civic_iot.settings import InfluxSettings, Settings
from civic_iot.thresholds import thresholds_from
from civic_iot.times import to_ns
from civic_iot.topology import TABLES
from processors import states
from processors.agents.tables import StateCodec
from processors.app import create_app
from processors.candidates import DeviceLevel, township_candidate
from processors.detectors.air import AirState, SensorReport, TownshipAirState
from processors.detectors.health import ISSUES, HealthState, Run
from processors.detectors.levels import LevelTracker
from processors.detectors.quake import (
    Associator,
    EventStation,
    Hypocentre,
    _EventState,
    distance_km,
)
from processors.detectors.seismic import StationState
from processors.detectors.state import dump_state, frozen, load_state
from processors.detectors.water import DebrisFlowState, GaugeState, RainState, StrongShaking
from processors.detectors.windows import BucketSeries, SampleBuffer
from processors.handlers import (
    Context,
    handle_air,
    handle_quake,
    handle_seismic,
    handle_shaking,
    handle_township,
    handle_water,
)
from processors.states import (
    READABLE_VERSIONS,
    STATE_VERSION,
    AirDevice,
    QuakeState,
    SeismicDevice,
    ShakingMark,
    TableValue,
    TownshipState,
    WaterDevice,
    decode_value,
    encode_value,
)
from tests.unit.processors.recorders import RecordingPublisher, RecordingSink

# --- strategies -----------------------------------------------------------------------

#: Any float JSON can carry back: infinities included (a Pd SNR without noise is inf).
floats = st.floats(allow_nan=False)
finite = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=-(2**53), max_value=2**53)
opt_floats = st.none() | floats
names = st.text(min_size=1, max_size=12)
times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2100, 1, 1),
    timezones=st.builds(
        timezone, st.integers(-14 * 60, 14 * 60).map(lambda m: timedelta(minutes=m))
    ),
)

trackers = st.builds(LevelTracker, level=st.integers(0, 5), since=st.none() | times)
bucket_series = st.builds(
    BucketSeries,
    width_s=st.integers(1, 86400),
    keep=st.integers(1, 200),
    offset_s=ints,
    buckets=st.dictionaries(ints, st.tuples(floats, st.integers(0, 10**6)), max_size=8),
)
sample_buffers = st.builds(
    SampleBuffer, samples=st.lists(st.tuples(floats, floats), max_size=8).map(tuple)
)
runs = st.builds(Run, value=floats, first=floats, last=floats, count=st.integers(0, 10**6))
health = st.builds(
    HealthState,
    runs=st.dictionaries(names, runs, max_size=4),
    open=st.dictionaries(names, st.dictionaries(st.sampled_from(ISSUES), floats), max_size=3),
)
air = st.builds(
    AirState,
    series=st.dictionaries(names, bucket_series, max_size=3),
    clock=opt_floats,
    tracker=trackers,
)
sensor_reports = st.builds(
    SensorReport, level=st.integers(0, 3), aqi=st.none() | st.integers(0, 500), last_seen=floats
)
township_air = st.builds(
    TownshipAirState,
    sensors=st.dictionaries(names, sensor_reports, max_size=4),
    level=st.integers(0, 3),
    clock=opt_floats,
)
gauges = st.builds(
    GaugeState, samples=sample_buffers, clock=opt_floats, level=trackers, rise=trackers
)
rains = st.builds(
    RainState,
    tens=bucket_series,
    days=bucket_series,
    clock=opt_floats,
    tracker=trackers,
    recent=st.lists(floats, max_size=6).map(tuple),
)
shakings = st.builds(StrongShaking, event_id=names, intensity=names, since_s=floats, until_s=floats)
debris = st.builds(
    DebrisFlowState,
    event_start=opt_floats,
    last_wet=opt_floats,
    event_rain_mm=floats,
    antecedent_mm=floats,
    tracker=trackers,
    shaking=st.none() | shakings,
)
vec3 = st.tuples(floats, floats, floats)
stations = st.builds(
    StationState,
    sample_rate_hz=floats,
    next_t_s=opt_floats,
    n_seen=st.integers(0, 10**9),
    x_prev=vec3,
    acc=vec3,
    vel=vec3,
    cf_mem=st.tuples(vec3, vec3, vec3, vec3, vec3),
    pz=vec3,
    sta=floats,
    lta=floats,
    warm_since_s=opt_floats,
    rearm_s=opt_floats,
    last_trigger_s=opt_floats,
    quiet_s=opt_floats,
    in_event=st.booleans(),
    event_p_time_s=opt_floats,
    event_pga_gal=floats,
    event_pgv_cms=floats,
    event_pd_cm=floats,
    event_pv_cms=floats,
    event_pa_gal=floats,
    event_sum_d2=floats,
    event_sum_v2=floats,
    event_p_window_s=floats,
    event_noise_ms=floats,
    event_transient=st.booleans(),
    disp_noise_ms=floats,
)
triggers = st.builds(Trigger, station_id=names, lat=finite, lon=finite, p_time_s=finite)
event_stations = st.builds(
    EventStation,
    station_id=names,
    lat=floats,
    lon=floats,
    p_time_s=floats,
    picked=st.booleans(),
    pga_gal=floats,
    pgv_cms=floats,
    pd_cm=opt_floats,
    pd_snr=opt_floats,
    pv_cms=opt_floats,
    pa_gal=opt_floats,
    pa_snr=opt_floats,
    tau_c_s=opt_floats,
    p_window_s=floats,
    transient=st.booleans(),
)
events = st.builds(
    _EventState,
    event_id=names,
    stations=st.lists(event_stations, max_size=4).map(tuple),
    first_trigger_s=floats,
    last_trigger_s=floats,
    hypo=st.builds(
        Hypocentre, floats, floats, floats, floats, floats, floats, floats,
        st.integers(0, 100), st.integers(0, 100), st.sampled_from(["good", "fair", "poor"]),
    ),
    published=st.none() | st.tuples(st.integers(0, 100), floats, st.integers(0, 9), floats, floats),
    closed_at_s=opt_floats,
    warned=st.lists(names, max_size=3).map(tuple),
    located_at_s=floats,
)  # fmt: skip
associators = st.builds(
    Associator,
    pending=st.lists(event_stations, max_size=4).map(tuple),
    inbox=st.lists(triggers, max_size=3).map(tuple),
    events=st.lists(events, max_size=2).map(tuple),
    recent=st.lists(events, max_size=2).map(tuple),
    armed=st.dictionaries(names, st.tuples(floats, floats, opt_floats, floats, floats), max_size=3),
)
device_levels = st.builds(
    DeviceLevel, level=st.integers(0, 3), value=opt_floats, threshold=opt_floats, metric=names,
    t=floats,
)  # fmt: skip

DETECTOR_STATES: dict[type[Any], st.SearchStrategy[Any]] = {
    LevelTracker: trackers,
    BucketSeries: bucket_series,
    SampleBuffer: sample_buffers,
    Run: runs,
    HealthState: health,
    AirState: air,
    SensorReport: sensor_reports,
    TownshipAirState: township_air,
    GaugeState: gauges,
    RainState: rains,
    StrongShaking: shakings,
    DebrisFlowState: debris,
    StationState: stations,
    EventStation: event_stations,
    _EventState: events,
    Associator: associators,
    DeviceLevel: device_levels,
}

T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
CANDIDATE = township_candidate(
    hazard="flood", code="63000010", township=None, level=2, value=35.0,
    metric="flood_depth_cm", threshold=30.0, devices=("f1", "f2"), event_time=T,
    detected_at=T + timedelta(seconds=1), evidence={"rise_cm_per_10min": 4.2, "gauge": "flood"},
)  # fmt: skip
candidates = st.dictionaries(names, st.just(CANDIDATE), max_size=2)
offsets = st.none() | st.integers(0, 2**62)
last_seen = opt_floats

TABLE_VALUES: dict[type[TableValue], st.SearchStrategy[Any]] = {
    AirDevice: st.builds(AirDevice, offset=offsets, last_seen=last_seen, health=health, air=air),
    WaterDevice: st.builds(
        WaterDevice,
        offset=offsets,
        last_seen=last_seen,
        health=health,
        flood=st.none() | gauges,
        river=st.none() | gauges,
        rain=st.none() | rains,
        debris=st.none() | debris,
    ),
    SeismicDevice: st.builds(SeismicDevice, offset=offsets, last_seen=last_seen, station=stations),
    ShakingMark: st.builds(ShakingMark, offset=offsets, shaking=st.none() | shakings),
    TownshipState: st.builds(
        TownshipState,
        offset=offsets,
        air=township_air,
        water=st.dictionaries(names, st.dictionaries(names, device_levels, max_size=3), max_size=3),
        levels=st.dictionaries(names, st.integers(0, 5), max_size=3),
        open=candidates,
    ),
    QuakeState: st.builds(
        QuakeState,
        offset=offsets,
        assoc=associators,
        clock=floats,
        clocks=st.dictionaries(st.integers(0, 63).map(str), st.tuples(floats, floats), max_size=4),
        shaken=st.dictionaries(names, st.dictionaries(names, st.integers(0, 9)), max_size=3),
        open=candidates,
    ),
}


# --- properties -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DETECTOR_STATES), ids=lambda k: k.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_detector_state_round_trips_exactly(kind: type[Any], data: st.DataObject) -> None:
    state = data.draw(DETECTOR_STATES[kind])
    stored = dump_state(state)
    back = load_state(kind, stored)
    assert back == state
    assert dump_state(back) == stored


@pytest.mark.parametrize("kind", list(TABLE_VALUES), ids=lambda k: k.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_table_value_round_trips_exactly_through_the_changelog_codec(
    kind: type[TableValue], data: st.DataObject
) -> None:
    value = data.draw(TABLE_VALUES[kind])
    codec = StateCodec(kind)
    stored = codec.dumps(value)
    back = codec.loads(stored)
    assert back == value
    assert codec.dumps(back) == stored


def test_a_stored_candidate_is_republished_byte_for_byte() -> None:
    state = TownshipState(open={CANDIDATE.key: CANDIDATE})
    back = decode_value(TownshipState, encode_value(state))
    assert back is not None
    assert back.open[CANDIDATE.key].model_dump_json() == CANDIDATE.model_dump_json()


def test_every_table_of_the_app_is_covered_here() -> None:
    app = create_app(
        Settings(
            processors={"web_port": 0},  # type: ignore[arg-type]
            kafka={"mark_key": "unit-test-mark-key-0123456789abcdef"},  # type: ignore[arg-type]
        ),
        registry=REGISTRY,
        thresholds=thresholds_from({}, REGISTRY),
        sink_factory=lambda _name: RecordingSink(),
        publisher=RecordingPublisher(),
    )
    models = {name: t.value_serializer.model for name, t in app.tables.items()}
    assert set(models) == set(TABLES)
    assert set(models.values()) == set(TABLE_VALUES)


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        (b'{"v": 1, "last_seen": 5.0}', "written under another version"),
        (b'{"v": 4, "last_seen": 5.0}', "written by a newer worker"),
        (b'{"last_seen": 5.0}', "the layout before versions (dicts of the first release)"),
        (b'{"v": 3, "health": {"runs": {"pm2_5_ugm3": [1, 2]}}}', "not an AirDevice"),
        (b'{"v": 3, "health": {"runs": {"pm2_5_ugm3": {"value": 1}}}}', "not an AirDevice"),
        (b"not json", "not JSON"),
    ],
)
def test_a_state_that_cannot_be_read_starts_afresh(stored: bytes, why: str) -> None:
    assert STATE_VERSION == 3
    assert {2, 3} == READABLE_VERSIONS
    assert decode_value(AirDevice, stored) is None, why


def test_starting_afresh_is_logged_with_the_count_of_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a version change every key of a table starts afresh: a warning at the
    1st, 10th, 100th ... key, with the count (the others at debug)."""
    caplog.set_level(logging.DEBUG, logger="processors.states")
    states._afresh.clear()
    for _ in range(12):
        assert decode_value(ShakingMark, b'{"v": 1}') is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(caplog.records) == 12
    assert [m.split(" why=")[0] for m in warned] == [
        "stored state not read, key starts afresh kind=ShakingMark count=1",
        "stored state not read, key starts afresh kind=ShakingMark count=10",
    ]


def test_a_value_records_its_version() -> None:
    assert b'"v":3' in encode_value(AirDevice())


#: Values written by a worker of STATE_VERSION 2 (main at 7e70fce: handle_air of three
#: readings, handle_township of two sensors' reports), the records as objects.
V2_AIR = (
    b'{"v":2,"offset":41,"index":2,"last_seen":1795597200.0,"health":{"runs":{"pm2_5_ugm3":'
    b'{"value":42.0,"first":1795597200.0,"last":1795597200.0,"count":1},"pm10_ugm3":{"value":'
    b'20.0,"first":1795593600.0,"last":1795597200.0,"count":3}},"open":{}},"air":{"series":'
    b'{"pm10_ugm3":{"width_s":3600,"keep":24,"offset_s":0,"buckets":{"1795593600":[40.0,2],'
    b'"1795597200":[20.0,1]}},"pm2_5_ugm3":{"width_s":3600,"keep":24,"offset_s":0,"buckets":'
    b'{"1795593600":[81.0,2],"1795597200":[42.0,1]}}},"clock":1795597200.0,"tracker":'
    b'{"level":0,"since":null}}}'
)
V2_TOWN = (
    b'{"v":2,"offset":7,"index":0,"air":{"sensors":{"air-1":{"level":1,"aqi":120,"last_seen":'
    b'1795593600.0},"air-2":{"level":1,"aqi":121,"last_seen":1795593660.0}},"level":1,'
    b'"clock":1795593660.0},"water":{},"levels":{},"open":{}}'
)


def test_a_value_of_version_2_is_read_whole_and_written_again_as_3() -> None:
    """An upgrade from 2 keeps every device's windows and every township's sensors: the
    same values, written next with the records as arrays."""
    air = decode_value(AirDevice, V2_AIR)
    assert air is not None
    assert (air.v, air.offset, air.index, air.last_seen) == (3, 41, 2, 1795597200.0)
    assert air.health.runs["pm10_ugm3"] == Run(20.0, 1795593600.0, 1795597200.0, 3)
    assert air.air.series["pm2_5_ugm3"].buckets == {1795593600: (81.0, 2), 1795597200: (42.0, 1)}
    stored = encode_value(air)
    assert stored.startswith(b'{"v":3,"offset":41,"index":2,')
    assert decode_value(AirDevice, stored) == air
    # The same state as the handler makes from the same readings now.
    now = AirDevice()
    for i in range(3):
        t = T + timedelta(minutes=30 * i)
        payload = AirPayload(ts=t, pm2_5_ugm3=40.0 + i, pm10_ugm3=20.0)
        now = handle_air(now, _reading("air-1", t, payload), CTX).state
    assert now.model_copy(update={"offset": 41, "index": 2}) == air

    town = decode_value(TownshipState, V2_TOWN)
    assert town is not None
    assert town.v == 3
    assert town.air.sensors == {
        "air-1": SensorReport(1, 120, 1795593600.0),
        "air-2": SensorReport(1, 121, 1795593660.0),
    }
    assert b'"sensors":{"air-1":[1,120,1795593600.0],"air-2":[1,121,1795593660.0]}' in (
        encode_value(town)
    )


# --- the states the handlers produce --------------------------------------------------

TOWN = "10002010"
REGISTRY = Registry(
    townships=(Township(code=TOWN, name="Yilan", lat=24.76, lon=121.75),),
    devices=(
        Device(id="air-1", kind="air", lat=24.75, lon=121.74, township=TOWN),
        Device(id="w-1", kind="water", lat=24.75, lon=121.74, township=TOWN, sensor="rain"),
        Device(id="s-1", kind="seismic", lat=24.75, lon=121.74, township=TOWN),
    ),
)
CTX = Context.build(
    InfluxSettings(),
    REGISTRY,
    thresholds_from({"regions": {TOWN: {"debris_flow": {"r70_mm": 250.0}}}}, REGISTRY),
)


def _reading(device: str, t: datetime, data: Any) -> Reading:
    dev = REGISTRY.get(device)
    assert dev is not None
    return Reading(
        reading_id=f"{device}:{to_ns(t)}", device_id=device, kind=data.kind, event_time=t,
        received_at=t, location=Location(lat=dev.lat, lon=dev.lon, township=TOWN), data=data,
    )  # fmt: skip


def _round_trips(value: TableValue) -> None:
    codec = StateCodec(type(value))
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert codec.dumps(back) == codec.dumps(value)


def test_device_states_of_real_readings_round_trip() -> None:
    a, w, s = AirDevice(), WaterDevice(), SeismicDevice()
    shaking = StrongShaking("q1", "5+", T.timestamp() - 3600, T.timestamp() + 86400)
    rng = np.random.default_rng(3)
    for i in range(30):
        t = T + timedelta(minutes=10 * i)
        a = handle_air(a, _reading("air-1", t, AirPayload(ts=t, pm2_5_ugm3=40.0 + i)), CTX).state
        water = WaterPayload(
            ts=t, rainfall_mm=5.0, flood_depth_cm=2.0 * i, water_level_m=1 + i / 10
        )
        w = handle_water(w, _reading("w-1", t, water), CTX, shaking=shaking).state
        xs = rng.normal(0, 1, (100, 3)).tolist()
        packet = SeismicPayload(
            ts=t, sample_rate_hz=100.0, x_gal=[x[0] for x in xs], y_gal=[x[1] for x in xs],
            z_gal=[x[2] + 980 for x in xs],
        )  # fmt: skip
        s = handle_seismic(s, _reading("s-1", t, packet), CTX).state
    assert a.air.series
    assert w.rain is not None
    assert w.debris is not None
    assert w.debris.shaking == shaking
    assert w.flood is not None
    assert w.river is not None
    assert s.station.n_seen > 0
    for value in (a, w, s):
        _round_trips(value.model_copy(update={"offset": 41}))


@pytest.mark.parametrize("seed", range(3))
def test_an_air_state_is_encoded_as_the_serializer_writes_it(seed: int) -> None:
    """encode_value of an air sensor (its series spliced in, each with the hours before
    the current one written once an hour) is model_dump_json's bytes after every
    reading: a day and more of readings, pollutants that come and go, late readings,
    silences, states written once or again and read back from the changelog."""
    rng = np.random.default_rng(seed)
    a = AirDevice()
    spliced = 0
    t = T
    for i in range(1500):
        t += timedelta(minutes=float(rng.choice([1, 5, 10, 90], p=[0.5, 0.3, 0.17, 0.03])))
        at = t - timedelta(hours=float(rng.uniform(0, 30))) if rng.random() < 0.05 else t
        values = {
            f: float(rng.uniform(0, 80))
            for f in ("pm2_5_ugm3", "pm10_ugm3", "o3_ppb", "co_ppm")
            if rng.random() < (0.9 if f == "pm2_5_ugm3" else 0.4)
        }
        data = AirPayload.model_validate({"ts": at, **(values or {"pm2_5_ugm3": 10.0})})
        a = handle_air(a, _reading("air-1", at, data), CTX).state
        if i % 97 == 0:
            a = states.decode_value(AirDevice, states.encode_value(a)) or a  # as recovered
        expected = a.model_dump_json().encode()
        assert states.encode_value(a) == expected
        assert states.encode_value(a) == expected  # again: the kept hours
        spliced += sum(len(s.buckets) for s in a.air.series.values()) >= states._SPLICE_FROM
    assert spliced > 1000


def test_township_shaking_and_quake_states_of_real_inputs_round_trip() -> None:
    town = TownshipState()
    for i, (device, hazard, level) in enumerate(
        [("air-1", "air_quality", 2), ("w-1", "flood", 2), ("w-1", "rain", 1)]
    ):
        report = TownshipReport(
            township=TOWN, hazard=hazard, device=device, level=level, value=120.0 + i,
            metric="m", threshold=10.0, event_time=T + timedelta(minutes=i),
        )  # fmt: skip
        town = handle_township(town, report, CTX, T).state
    assert town.open
    assert town.water
    assert town.air.sensors
    _round_trips(town)

    notice = StrongShakingNotice(
        device="w-1", township=TOWN, event_id="q1", intensity="5-", origin_time=T
    )
    _round_trips(handle_shaking(ShakingMark(), notice, CTX).state)

    t0 = T.timestamp()
    where = [("A", 24.87, 121.55), ("B", 24.68, 121.60), ("C", 24.76, 121.75)]

    def p_time(lat: float, lon: float) -> float:
        return t0 + math.hypot(float(distance_km(24.8, 121.6, lat, lon)), 10.0) / 6.0

    quake = QuakeState()
    ticks = [
        SeismicTick(
            now_s=t0 + 6, partition=0,
            triggers=tuple(Trigger(station_id=s, lat=la, lon=lo, p_time_s=p_time(la, lo))
                           for s, la, lo in where),
        ),
        SeismicTick(
            now_s=t0 + 7, partition=1,
            observations=tuple(Observation(station_id=s, pga_gal=160.0, pgv_cms=16.0,
                                           pd_cm=0.2, pd_snr=math.inf) for s, _, _ in where),
        ),
    ]  # fmt: skip
    for tick in ticks:
        quake = handle_quake(quake, [tick], CTX, datetime.fromtimestamp(tick.now_s, UTC)).state
    assert quake.open
    assert quake.shaken
    assert quake.assoc.events
    assert any(st.pd_snr == math.inf for st in quake.assoc.events[0].stations)
    _round_trips(quake)


def test_a_frozen_value_is_built_as_a_dataclass_would_build_it() -> None:
    @frozen
    class Made:
        a: int
        b: tuple[int, ...] = (1,)
        c: list[int] = field(default_factory=list, compare=False)
        d: int = field(init=False, default=7)
        e: list[int] = field(init=False, default_factory=list, compare=False)
        f: int = field(init=False, repr=False, compare=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "f", self.a * 2)

    x = Made(3)
    assert (x.a, x.b, x.c, x.d, x.e, x.f) == (3, (1,), [], 7, [], 6)
    assert Made(3).c is not x.c  # a fresh default each time
    y = Made(a=4, b=(2,), c=[1])
    assert (y.a, y.b, y.c, y.f) == (4, (2,), [1], 8)
    assert x == Made(3)
    assert hash(Made(3, (5,))) == hash(Made(3, (5,), [2]))
    assert replace(x, a=5).f == 10
    with pytest.raises(FrozenInstanceError):
        x.a = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        Made()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Made(1, d=2)  # type: ignore[call-arg]


def test_a_frozen_subclass_sets_its_bases_fields_too() -> None:
    @frozen
    class Base:
        a: int
        b: int = 2

    @frozen
    class Child(Base):
        c: str = "c"

    x = Child(1, 3, "z")
    assert (x.a, x.b, x.c) == (1, 3, "z")
    assert (Child(5).b, Child(5).c) == (2, "c")
    assert isinstance(x, Base)
    with pytest.raises(FrozenInstanceError):
        x.a = 4  # type: ignore[misc]
