"""The scenario engine: files load, payloads honour the device contract, hazards reach
their thresholds, time is ordered and compressed. No I/O; small device subsets keep it fast
(each device's stream depends only on the seed and its own id)."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from civic_iot.contracts.alerts import Hazard
from civic_iot.registry import Device, Registry
from ingest.refusals import Limits, ReadingRefusedError
from ingest.validate import validate
from simulator.network import DEFAULT_SEED, build_network, network_thresholds
from simulator.scenario import (
    GarbageFault,
    Phase,
    PollutionEvent,
    RiverEvent,
    Scenario,
    SimMessage,
    SpikeEvent,
    aligned_start,
    generate,
    load_scenario,
    parse_duration,
    scenario_names,
)

START = datetime(2025, 9, 1, 0, 0, tzinfo=UTC)
SCENARIOS = ["demo", "earthquake", "faults", "pollution", "typhoon"]
LIMITS = Limits()


@pytest.fixture(scope="module")
def network() -> Registry:
    return build_network(DEFAULT_SEED)


def subset(network: Registry, keep: Iterable[Device]) -> Registry:
    """The same townships with only some devices."""
    by_id = {d.id: d for d in keep}
    return Registry(townships=network.townships, devices=tuple(by_id.values()))


def few_per_sensor(network: Registry, n: int = 2) -> list[Device]:
    seen: Counter[str] = Counter()
    out = []
    for d in network:
        if seen[d.sensor] < n:
            seen[d.sensor] += 1
            out.append(d)
    return out


def named_devices(network: Registry, sc: Scenario) -> list[Device]:
    ids = {getattr(e, "device", None) for _, e in sc.events()}
    ids |= {getattr(e, "target", None) for _, e in sc.events()}
    return [d for d in network if d.id in ids]


def receive_time(m: SimMessage) -> datetime:
    """When ingest would see it: just after the reading (a packet's last sample)."""
    return m.event_time + timedelta(seconds=2)


def docs(messages: Iterable[SimMessage]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages]


# ------------------------------------------------------------------ files


def test_every_shipped_scenario_loads() -> None:
    assert scenario_names() == SCENARIOS
    for name in SCENARIOS:
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.description
        assert sc.expect.alerts or sc.expect.health


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_names_only_what_the_registry_has(network: Registry, name: str) -> None:
    sc = load_scenario(name)
    # kinds=() generates only garbage and runs the reference check.
    generate(sc, network, start=START, kinds=())
    for a in sc.expect.alerts:
        assert a.hazard in get_args(Hazard)
        sensor = {"air_quality": "air", "flood": "flood", "river": "river", "rain": "rain"}
        wanted = sensor.get(a.hazard)
        for town in a.townships:
            if wanted is not None:
                assert any(d.township == town and d.sensor == wanted for d in network), (
                    f"{name}: no {wanted} sensor in {town} for the expected {a.hazard} alert"
                )


@pytest.mark.parametrize("name", SCENARIOS)
def test_garbage_counts_match_the_stated_expectations(network: Registry, name: str) -> None:
    sc = load_scenario(name)
    msgs = generate(sc, network, start=START, kinds=())
    refused = Counter(m.expected_reason for m in msgs if m.expected_reason and not m.broker_denied)
    assert refused == Counter(sc.expect.refused)
    assert sum(m.broker_denied for m in msgs) == sc.expect.broker_denied


def test_demo_lasts_a_few_minutes_and_has_every_hazard() -> None:
    sc = load_scenario("demo")
    assert 120 <= sc.wall_duration_s() <= 360
    assert {a.hazard for a in sc.expect.alerts} >= {"air_quality", "rain", "flood", "earthquake"}
    assert any(a.hazard == "earthquake" and a.count == 1 for a in sc.expect.alerts)
    assert sc.expect.health


def test_durations_parse() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration(12) == 12
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


# ------------------------------------------------------------------ the device contract


@pytest.mark.parametrize("name", SCENARIOS)
def test_normal_payloads_pass_ingest_and_garbage_is_refused_as_intended(
    network: Registry, name: str
) -> None:
    sc = load_scenario(name)
    keep = few_per_sensor(network) + named_devices(network, sc)
    if any(p.seismic for p in sc.phases):
        keep += network.of_kind("seismic")[:4]
        keep += [d for d in network if d.id in {"seis-0002"}]
    msgs = generate(sc, subset(network, keep), start=START, until_s=min(sc.duration_s, 8 * 3600))
    assert msgs
    kinds = Counter(m.kind for m in msgs if m.fault is None)
    assert kinds["air"]
    assert kinds["water"]
    for m in msgs:
        now = receive_time(m)
        if m.expected_reason is None:
            reading = validate(m.topic, m.payload, registry=network, limits=LIMITS, now=now)
            assert reading.device_id == m.device_id
            assert reading.event_time == m.event_time
            continue
        with pytest.raises(ReadingRefusedError) as info:
            validate(m.topic, m.payload, registry=network, limits=LIMITS, now=now)
        assert info.value.reason == m.expected_reason, (m.fault, info.value.message)


def test_seismic_packets_follow_the_contract(network: Registry) -> None:
    sc = load_scenario("earthquake")
    stations = network.of_kind("seismic")[:3]
    msgs = generate(sc, subset(network, stations), start=START, until_s=5, kinds=["seismic"])
    assert len(msgs) == 3 * 5
    d = json.loads(msgs[0].payload)
    assert d["sample_rate_hz"] == 20
    assert len(d["x_gal"]) == len(d["y_gal"]) == len(d["z_gal"]) == 20
    assert isinstance(d["ts"], int)
    fast = generate(
        sc, subset(network, stations), start=START, until_s=2, kinds=["seismic"], sample_rate_hz=100
    )
    assert len(json.loads(fast[0].payload)["z_gal"]) == 100


# ------------------------------------------------------------------ hazards


def hourly_means(msgs: Iterable[SimMessage], field: str) -> dict[str, dict[int, float]]:
    """device id -> clock hour index -> mean of ``field``."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in msgs:
        if m.fault is None:
            value = json.loads(m.payload).get(field)
            if value is not None:
                hour = int((m.event_time - START).total_seconds() // 3600)
                acc[m.device_id][hour].append(value)
    return {d: {h: sum(v) / len(v) for h, v in hours.items()} for d, hours in acc.items()}


@pytest.mark.parametrize("name", ["pollution", "demo"])
def test_pollution_goes_well_above_the_aqi_150_band(network: Registry, name: str) -> None:
    sc = load_scenario(name)
    expected = {t for a in sc.expect.alerts if a.hazard == "air_quality" for t in a.townships}
    clean = {t for a in sc.expect.no_alerts if a.hazard == "air_quality" for t in a.townships}
    assert expected
    air = [d for d in network.of_kind("air") if d.township in expected | clean]
    by_town: dict[str, list[Device]] = defaultdict(list)
    for d in air:
        by_town[d.township].append(d)
    keep = [d for devs in by_town.values() for d in devs[:3]] + named_devices(network, sc)
    msgs = generate(sc, subset(network, keep), start=START, kinds=["air"])
    means = hourly_means(msgs, "pm2_5_ugm3")
    hours = int(sc.duration_s // 3600)
    for town, devs in by_town.items():
        peak_index = 0.0
        for h in range(11, hours):
            per_hour = [
                sum(means[d.id][k] for d in devs[:3] if k in means[d.id]) / len(devs[:3])
                for k in range(h - 11, h + 1)
            ]
            # MOENV real-time PM2.5: 0.5 * 12 h mean + 0.5 * 4 h mean.
            index = 0.5 * sum(per_hour) / 12 + 0.5 * sum(per_hour[-4:]) / 4
            peak_index = max(peak_index, index)
        if town in expected:
            assert peak_index > 50.4 + 20, (town, peak_index)  # well above AQI 150
        else:
            assert peak_index < 30.5, (town, peak_index)  # AQI <= 100


@pytest.mark.parametrize("name", ["typhoon", "demo"])
def test_typhoon_reaches_the_rain_river_and_flood_thresholds(network: Registry, name: str) -> None:
    sc = load_scenario(name)
    want = {a.hazard: set(a.townships) for a in sc.expect.alerts}
    quiet = {t for a in sc.expect.no_alerts if a.hazard == "rain" for t in a.townships}
    water = network.of_kind("water")
    small = subset(network, water + named_devices(network, sc))
    lines = network_thresholds(DEFAULT_SEED)
    msgs = generate(sc, small, start=START, kinds=["water"], thresholds=lines)
    rain: dict[str, list[tuple[float, float]]] = defaultdict(list)
    peak: dict[str, float] = defaultdict(float)
    for m in msgs:
        if m.fault is not None:
            continue
        d = json.loads(m.payload)
        t = (m.event_time - START).total_seconds()
        if "rainfall_mm" in d:
            rain[m.device_id].append((t, d["rainfall_mm"]))
        for f in ("water_level_m", "flood_depth_cm"):
            if f in d:
                peak[m.device_id] = max(peak[m.device_id], d[f])
    for dev in water:
        if dev.sensor == "rain":
            series = rain[dev.id]
            total = sum(v for _, v in series)
            max_1h = max(sum(v for t, v in series if s - 3600 < t <= s) for s, _ in series)
            if dev.township in want["rain"]:
                assert max_1h >= 40, (dev.id, max_1h)  # heavy rain by the hour
                assert total >= 200, (dev.id, total)  # extremely heavy rain in 24 h
            elif dev.township in quiet:
                assert max_1h < 40
                assert total < 80
            if dev.township in want["debris_flow"]:
                r70 = lines.for_township(dev.township).debris_flow.r70_mm
                assert r70 is not None
                assert total > r70
        elif dev.sensor == "river":
            l3 = lines.for_device(dev.id, dev.township).river.water_level_m_yellow
            assert l3 is not None
            if dev.township in want["river"]:
                assert peak[dev.id] > l3, dev.id
            else:
                assert peak[dev.id] < l3, dev.id
        elif dev.sensor == "flood":
            if dev.township in want["flood"]:
                assert peak[dev.id] > 30, dev.id
            else:
                assert peak[dev.id] == 0, dev.id
    l2_towns = {
        t
        for _, e in sc.events()
        if isinstance(e, RiverEvent)
        for t, v in e.townships.items()
        if v == "l2"
    }
    assert l2_towns
    for dev in water:
        if dev.sensor == "river" and dev.township in l2_towns:
            orange = lines.for_device(dev.id, dev.township).river.water_level_m_orange
            assert orange is not None
            assert peak[dev.id] > orange


@pytest.mark.parametrize("name", ["earthquake", "demo"])
def test_quake_shakes_near_stations_and_the_spike_hits_one(network: Registry, name: str) -> None:
    sc = load_scenario(name)
    p0, spike = next((p0, e) for p0, e in sc.events() if isinstance(e, SpikeEvent))
    quake = next(a for a in sc.expect.alerts if a.hazard == "earthquake")
    stations = [
        d
        for i, d in enumerate(network.of_kind("seismic"))
        if i < 3 or d.id == spike.device or d.township in quake.townships
    ]
    small = subset(network, stations + named_devices(network, sc))
    msgs = generate(sc, small, start=START, kinds=["seismic"])
    near = {d.id for d in stations if d.township in quake.townships}
    assert near
    pga: dict[str, dict[int, float]] = defaultdict(dict)
    for m in msgs:
        if m.fault is not None:
            continue
        second = round((m.event_time - START).total_seconds() - p0)
        pga[m.device_id][second] = json.loads(m.payload)["pga_gal"]
    t_spike = int(spike.at)
    for sid, series in pga.items():
        quiet = max(v for s, v in series.items() if s < 15)
        assert quiet < 3, sid  # background noise of a few tenths of a gal
        if sid == spike.device:
            assert series[t_spike] > 50
        else:
            assert series[t_spike] < 3
        if sid in near:
            assert max(series.values()) > 40, sid  # intensity 4 or more near the epicentre


def test_faults_stuck_and_silent(network: Registry) -> None:
    sc = load_scenario("faults")
    keep = named_devices(network, sc)
    msgs = generate(sc, subset(network, keep), start=START)
    stuck = [m for m in msgs if m.device_id == "air-0042"]
    values = [
        tuple(v for k, v in json.loads(m.payload).items() if k != "ts")
        for m in stuck
        if 3600 <= (m.event_time - START).total_seconds() < 5 * 3600
    ]
    assert len(values) >= 36 or len(values) * 300 >= 3 * 3600
    assert len(set(values)) == 1
    silent = sorted(
        (m.event_time - START).total_seconds() for m in msgs if m.device_id == "river-0005"
    )
    gaps = [b - a for a, b in itertools.pairwise(silent)]
    assert max(gaps) >= 3 * 3600
    unknown = [m for m in msgs if m.fault == "unknown_device"]
    assert unknown
    assert all(m.publisher == "air-9999" and m.broker_denied for m in unknown)
    foreign = [m for m in msgs if m.fault == "foreign_topic"]
    assert all(m.publisher == "air-0011" and m.topic == "devices/air-0012/air" for m in foreign)


# ------------------------------------------------------------------ time


def test_deterministic_given_seed_and_start(network: Registry) -> None:
    sc = load_scenario("demo")
    small = subset(network, few_per_sensor(network) + named_devices(network, sc))
    a = generate(sc, small, start=START, until_s=3 * 3600)
    b = generate(sc, small, start=START, until_s=3 * 3600)
    assert a == b
    c = generate(sc, small, start=START, until_s=3 * 3600, seed=99)
    assert [m.payload for m in a] != [m.payload for m in c]


def test_messages_are_ordered_and_compressed(network: Registry) -> None:
    sc = load_scenario("demo")
    small = subset(network, few_per_sensor(network) + named_devices(network, sc))
    msgs = generate(sc, small, start=START)
    at = [m.at_s for m in msgs]
    assert at == sorted(at)
    starts = sc.phase_starts()
    for m in msgs:
        t = (m.event_time - START).total_seconds()
        if m.kind == "seismic":
            assert t >= starts[2]
            # Real time: sent when the 1 s packet is complete.
            assert m.at_s == pytest.approx(sc.wall_offset(t) + 1.0, abs=0.01)
        elif m.fault is None and t < starts[1]:
            assert m.at_s == pytest.approx(t / 720, abs=0.01)
    assert sc.wall_offset(sc.duration_s) == pytest.approx(13 * 3600 / 720 + 12 * 3600 / 720 + 150)
    assert sc.wall_offset(sc.duration_s, speed=2) == pytest.approx(sc.wall_duration_s() / 2)
    for w in (0.0, 10.0, 70.0, 130.0, 200.0):
        assert sc.wall_offset(sc.scenario_time(w)) == pytest.approx(w)


def test_aligned_start_never_puts_a_reading_in_the_future(network: Registry) -> None:
    sc = load_scenario("demo")
    now = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
    for speed in (1.0, 3.0):
        start = aligned_start(sc, now, speed)
        small = subset(network, few_per_sensor(network, 1) + named_devices(network, sc))
        msgs = generate(sc, small, start=start)
        for m in msgs:
            if m.fault != "future_timestamp":
                assert m.event_time <= now + timedelta(seconds=m.at_s / speed + 1e-3)
        # The real-time quake phase at the end carries live timestamps.
        assert start + timedelta(seconds=sc.duration_s) == now + timedelta(
            seconds=sc.wall_duration_s(speed)
        )


def test_inline_scenario_and_validation(network: Registry) -> None:
    sc = Scenario(
        name="inline",
        phases=(
            Phase(
                name="p",
                duration=3600,
                speed=60,
                events=(
                    PollutionEvent(type="pollution", townships={"63000050": 90}, rise=600),
                    GarbageFault(type="garbage", variant="not_json", device="air-0001", at=60),
                ),
            ),
        ),
    )
    msgs = generate(sc, subset(network, few_per_sensor(network, 1)), start=START)
    assert msgs[-1].at_s <= 60
    bad = sc.model_copy(
        update={
            "phases": (
                Phase(
                    name="p",
                    duration=60,
                    events=(SpikeEvent(type="spike", device="seis-9999", at=1),),
                ),
            )
        }
    )
    with pytest.raises(ValueError, match="seis-9999"):
        generate(bad, network, start=START)
    with pytest.raises(ValueError, match="target"):
        GarbageFault(type="garbage", variant="foreign_topic", device="air-0001", at=0)
