"""Pure pieces around the agents: township water aggregation, the quake clock, strong
shaking from the associator to the rain gauges (R50), the rate of rise as a candidate."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from civic_iot.contracts.processing import (
    Observation,
    SeismicTick,
    StrongShakingNotice,
    TownshipReport,
    Trigger,
)
from civic_iot.contracts.readings import Location, Reading, WaterPayload
from civic_iot.registry import Device, Registry, Township
from civic_iot.settings import InfluxSettings
from civic_iot.thresholds import thresholds_from
from civic_iot.times import to_ns
from processors.candidates import update_hazard
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.quake import CellShaking, QuakeEvent, distance_km
from processors.detectors.water import StrongShaking
from processors.handlers import (
    Context,
    Decision,
    DeviceOutcome,
    _watermark,
    handle_quake,
    handle_shaking,
    handle_township,
    handle_township_reports,
    handle_water,
    open_candidates,
    strong_shaking_townships,
)
from processors.states import QuakeState, ShakingMark, TownshipState, WaterDevice

T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _report(device: str, level: int, value: float, minutes: int = 0) -> TownshipReport:
    return TownshipReport(
        township="63000010", hazard="flood", device=device, level=level, value=value,
        metric="flood_depth_cm", threshold=30.0 if level == 2 else 10.0,
        event_time=T + timedelta(minutes=minutes),
    )  # fmt: skip


def test_township_flood_level_is_the_highest_device_level() -> None:
    a = update_hazard({}, 0, _report("f1", 2, 35.0))
    assert (a.level, a.changed, a.at_level, a.value) == (2, True, ("f1",), 35.0)
    b = update_hazard(a.devices, a.level, _report("f2", 1, 12.0))
    assert (b.level, b.changed) == (2, False)
    c = update_hazard(b.devices, b.level, _report("f1", 0, 2.0, minutes=5))
    assert (c.level, c.changed, c.at_level, c.value) == (1, True, ("f2",), 12.0)
    # An older report of a device does not undo a newer one.
    d = update_hazard(c.devices, c.level, _report("f1", 2, 40.0, minutes=-5))
    assert (d.level, d.changed) == (1, False)


@pytest.mark.parametrize(
    ("clocks", "previous", "expected"),
    [
        ({}, 5.0, 5.0),
        ({"0": (100.0, 1000.0), "1": (90.0, 1000.0)}, 0.0, 90.0),  # the slowest holds it
        ({"0": (100.0, 1000.0), "1": (10.0, 985.0)}, 0.0, 100.0),  # ... unless idle
        ({"0": (100.0, 1000.0), "1": (90.0, 1000.0)}, 95.0, 95.0),  # never backwards
    ],
)
def test_quake_clock_is_a_watermark(
    clocks: dict[str, tuple[float, float]], previous: float, expected: float
) -> None:
    assert _watermark(clocks, previous, 1000.0, 10.0) == expected


# --- strong shaking -> R50, and the rate of rise as its own candidate -----------------------

QUAKE_TOWN, FAR_TOWN = "10002010", "64000010"  # Yilan City; Kaohsiung, far from the quake
REGISTRY = Registry(
    townships=(
        Township(code=QUAKE_TOWN, name="Yilan", lat=24.76, lon=121.75),
        Township(code=FAR_TOWN, name="Kaohsiung", lat=22.6, lon=120.3),
    ),
    devices=(
        Device(id="rain-1", kind="water", lat=24.75, lon=121.74, township=QUAKE_TOWN,
               sensor="rain"),
        Device(id="flood-1", kind="water", lat=24.76, lon=121.75, township=QUAKE_TOWN,
               sensor="flood"),
        Device(id="air-1", kind="air", lat=24.76, lon=121.75, township=QUAKE_TOWN),
        Device(id="rain-2", kind="water", lat=22.6, lon=120.3, township=FAR_TOWN, sensor="rain"),
    ),
)  # fmt: skip
CTX = Context.build(
    InfluxSettings(),
    REGISTRY,
    thresholds_from({"regions": {QUAKE_TOWN: {"debris_flow": {"r70_mm": 250.0}}}}, REGISTRY),
)
QUAKE_T0 = 1_700_000_000.0
ORIGIN = (24.80, 121.60)
QUAKE_STATIONS = [("WLI", 24.87, 121.55), ("DTG", 24.68, 121.60), ("ILA", 24.76, 121.75)]


def _p_time(lat: float, lon: float) -> float:
    r = math.hypot(float(distance_km(ORIGIN[0], ORIGIN[1], lat, lon)), 10.0)
    return QUAKE_T0 + r / 6.0


def _tick(now_s: float, *, triggers: bool = False, pgv_cms: float = 0.0) -> SeismicTick:
    return SeismicTick(
        now_s=now_s,
        triggers=tuple(
            Trigger(station_id=s, lat=la, lon=lo, p_time_s=_p_time(la, lo))
            for s, la, lo in QUAKE_STATIONS
        )
        if triggers
        else (),
        observations=tuple(
            Observation(station_id=s, pga_gal=10 * pgv_cms, pgv_cms=pgv_cms)
            for s, _, _ in QUAKE_STATIONS
        )
        if pgv_cms
        else (),
        partition=0,
    )


def _quake(env: QuakeState, tick: SeismicTick) -> Decision[QuakeState]:
    return handle_quake(env, [tick], CTX, datetime.fromtimestamp(tick.now_s, UTC))


@pytest.mark.parametrize(
    ("cells", "notified", "min_level", "found", "after"),
    [
        ([("4", "A")], {}, "5-", {}, {}),  # below the shaking level
        ([("5-", "A"), ("3", "B")], {}, "5-", {"A": "5-"}, {"A": 5}),
        ([("5-", "A")], {"A": 5}, "5-", {}, {"A": 5}),  # already notified at that level
        ([("6-", "A")], {"A": 5}, "5-", {"A": "6-"}, {"A": 7}),  # a higher estimate
        ([("5-", "A")], {"A": 7}, "5-", {}, {"A": 7}),  # a lower one lifts nothing
        ([("5+", "A"), ("5-", "B")], {}, "5+", {"A": "5+"}, {"A": 6}),
        ([("5-", None)], {}, "5-", {}, {}),  # a cell no township is named for
    ],
)
def test_strong_shaking_townships(
    cells: list[tuple[str, str | None]],
    notified: dict[str, int],
    min_level: str,
    found: dict[str, str],
    after: dict[str, int],
) -> None:
    event = QuakeEvent(
        event_id="e1", origin_s=QUAKE_T0, lat=24.8, lon=121.6, depth_km=10.0, rms_s=0.1,
        magnitude=6.0, magnitude_method="pd", station_ids=("A1", "A2", "A3"),
        max_intensity="6-",
        cells=tuple(
            CellShaking(24.8, 121.6 + 0.1 * i, 100.0, 20.0, level, 0.0, town)
            for i, (level, town) in enumerate(cells)
        ),
        townships=(), first_trigger_s=QUAKE_T0, computed_at_s=QUAKE_T0 + 6,
    )  # fmt: skip
    assert strong_shaking_townships(event, notified, min_level) == (found, after)


def test_quake_notifies_each_water_device_of_a_strongly_shaken_township_once() -> None:
    declared = _quake(QuakeState(), _tick(QUAKE_T0 + 6, triggers=True))
    assert [c.hazard for c in declared.candidates] == ["earthquake"]
    assert declared.notices == []  # nothing observed yet
    eid = declared.candidates[0].area_code.removeprefix("quake-")
    # (PGV cm/s observed at every station, intensity expected in the township, notified)
    steps = [
        (8.0, "4", set()),  # intensity 4: below the debris-flow shaking level
        (16.0, "5-", {"rain-1", "flood-1"}),  # water devices only; none far away
        (16.0, "5-", set()),  # the same again: notified once
        (20.0, "5+", {"rain-1", "flood-1"}),  # a higher estimate: notified again
    ]
    state = declared.state
    for i, (pgv, level, devices) in enumerate(steps):
        d = _quake(state, _tick(QUAKE_T0 + 7 + i, pgv_cms=pgv))
        state = d.state
        assert {n.device for n in d.notices} == devices, (pgv, d.notices)
        for n in d.notices:
            assert (n.township, n.intensity, n.event_id) == (QUAKE_TOWN, level, eid)
            assert abs(n.origin_time.timestamp() - QUAKE_T0) < 2  # the located origin
        if devices:
            assert state.shaken == {eid: {QUAKE_TOWN: intensity_ordinal(level)}}
    closed = _quake(state, _tick(QUAKE_T0 + 60))
    assert [c.level for c in closed.candidates] == [0]
    assert closed.notices == []
    assert closed.state.shaken == {}  # its last update: the event is forgotten


def _notice(intensity: str, origin_s: float = QUAKE_T0, event: str = "e1") -> StrongShakingNotice:
    return StrongShakingNotice(
        device="rain-1",
        township=QUAKE_TOWN,
        event_id=event,
        intensity=intensity,
        origin_time=datetime.fromtimestamp(origin_s, UTC),
    )


@pytest.mark.parametrize(
    ("notices", "kept"),
    [
        ([("5-", QUAKE_T0, "e1")], ("e1", "5-")),
        ([("5-", QUAKE_T0, "e1"), ("6-", QUAKE_T0, "e1")], ("e1", "6-")),  # raised
        ([("6-", QUAKE_T0, "e1"), ("5-", QUAKE_T0, "e1")], ("e1", "6-")),
        ([("6+", QUAKE_T0, "e1"), ("5-", QUAKE_T0 + 86400, "e2")], ("e2", "5-")),  # later
        ([("4", QUAKE_T0, "e1")], None),  # below this worker's level: not marked
    ],
)
def test_shaking_handler_keeps_the_period_that_ends_last(
    notices: list[tuple[str, float, str]], kept: tuple[str, str] | None
) -> None:
    env = ShakingMark()
    points = []
    for level, origin_s, event in notices:
        decision = handle_shaking(env, _notice(level, origin_s, event), CTX)
        env = decision.state
        points += decision.points
        assert decision.candidates == []
    if kept is None:
        assert env == ShakingMark()
        assert points == []
        return
    mark = env.shaking
    assert mark is not None
    assert (mark.event_id, mark.intensity) == kept
    assert mark.until_s - mark.since_s == 30 * 86400
    # One point per notice, at the earthquake's origin, naming the device's R50 period.
    assert len(points) == len(notices)
    last = points[-1]
    assert last.measurement == "strong_shaking"
    assert dict(last.tags) == {
        "device": "rain-1",
        "township": QUAKE_TOWN,
        "event_id": notices[-1][2],
    }
    assert dict(last.fields)["intensity"] == notices[-1][0]


def _water(device: str, t: datetime, **values: float) -> Reading:
    dev = REGISTRY.get(device)
    assert dev is not None
    return Reading(
        reading_id=f"{device}:{to_ns(t)}", device_id=device, kind="water", event_time=t,
        received_at=t, location=Location(lat=dev.lat, lon=dev.lon, township=dev.township),
        data=WaterPayload(ts=t, **values),
    )  # fmt: skip


def _rain(shaking: StrongShaking | None, minutes: int) -> list[DeviceOutcome[WaterDevice]]:
    """10 mm every 10 minutes at rain-1 (R70 250 mm), with a shaking-table mark."""
    env = WaterDevice()
    start = datetime.fromtimestamp(QUAKE_T0, UTC) + timedelta(hours=1)
    out = []
    for i in range(minutes // 10):
        o = handle_water(
            env, _water("rain-1", start + timedelta(minutes=10 * i), rainfall_mm=10.0), CTX,
            shaking=shaking,
        )  # fmt: skip
        env = o.state
        out.append(o)
    return out


def _debris(outcome: DeviceOutcome[WaterDevice]) -> TownshipReport:
    return next(r for r in outcome.reports if r.hazard == "debris_flow")


@pytest.mark.parametrize(
    ("shaking", "level", "threshold", "kind"),
    [
        (None, 1, 250.0, "r70"),  # 230 mm: yellow (from 200) under R70 = 250
        (StrongShaking("e1", "5-", QUAKE_T0, QUAKE_T0 + 30 * 86400),
         2, 200.0, "r50"),  # red under R50
        (StrongShaking("e1", "5-", QUAKE_T0 - 40 * 86400, QUAKE_T0 - 10 * 86400),
         1, 250.0, "r70"),  # period over
    ],
)  # fmt: skip
def test_water_handler_judges_rain_against_r50_after_strong_shaking(
    shaking: StrongShaking | None, level: int, threshold: float, kind: str
) -> None:
    last = _rain(shaking, 230)[-1]
    report = _debris(last)
    assert (report.level, report.value, report.threshold) == (level, 230.0, threshold)
    assert report.metric == "rainfall_mm_event"
    assert report.evidence["debris_flow_threshold_kind"] == kind
    assert report.evidence["debris_flow_threshold_mm"] == threshold
    assert report.evidence["r70_mm"] == 250.0
    if kind == "r50":
        assert report.evidence["r50_after_earthquake"] == "e1"
        assert report.evidence["r50_shaking_intensity"] == "5-"
        assert report.evidence["r50_until"] == datetime.fromtimestamp(
            QUAKE_T0 + 30 * 86400, UTC
        ).isoformat(timespec="seconds")
    else:
        assert "r50_after_earthquake" not in report.evidence
    # The stored figures say which threshold was used.
    rain = next(p for p in last.points if p.measurement == "rain")
    fields = dict(rain.fields)
    assert fields["debris_flow_threshold_kind"] == kind
    assert fields["debris_flow_threshold_mm"] == threshold
    assert fields["debris_flow_level"] == level
    assert fields["rainfall_mm_event"] == 230.0


def _flood(depths: list[tuple[float, float]]) -> list[DeviceOutcome[WaterDevice]]:
    """(minute, depth cm) readings of flood-1."""
    env = WaterDevice()
    start = datetime.fromtimestamp(QUAKE_T0, UTC)
    out = []
    for minute, depth in depths:
        o = handle_water(
            env, _water("flood-1", start + timedelta(minutes=minute), flood_depth_cm=depth), CTX
        )
        env = o.state
        out.append(o)
    return out


@pytest.mark.parametrize(
    ("depths", "rise_levels"),
    [
        # Too few samples for a rate: no rise report at all.
        ([(0, 0.0), (2, 3.0)], [None, None]),
        # +3 cm every 2 min = 15 cm / 10 min from the 4th reading (5 min, 3 samples).
        ([(2 * i, 3.0 * i) for i in range(5)], [None, None, None, 1, 1]),
        # Slow: 5 cm / 10 min stays at 0 (reported, for the township's aggregate).
        ([(2 * i, 1.0 * i) for i in range(5)], [None, None, None, 0, 0]),
        # Fast, then level: the rate falls (13.4, 11.6, 10, 8.6, 7.5, 5.5, 3.6 cm / 10 min)
        # and the level is held down to half the line, then cleared.
        (
            [(2 * i, 3.0 * i) for i in range(6)] + [(10 + 2 * i, 15.0) for i in range(1, 8)],
            [None, None, None, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        ),
    ],
)
def test_flood_gauge_reports_its_rise_level(
    depths: list[tuple[float, float]], rise_levels: list[int | None]
) -> None:
    got: list[int | None] = []
    for o in _flood(depths):
        rise = [r for r in o.reports if r.hazard == "water_rise"]
        got.append(rise[0].level if rise else None)
        if rise:
            r = rise[0]
            assert r.metric == "rise_cm_per_10min"
            assert r.threshold == (10.0 if r.level else None)
            assert r.evidence["gauge"] == "flood"
            assert r.evidence["rise_threshold_cm_per_10min"] == 10.0
            stored = next(p for p in o.points if p.measurement == "water_level")
            assert dict(stored.fields)["rise_level"] == r.level
    assert got == rise_levels


def test_fast_rise_is_a_township_candidate_of_its_own() -> None:
    # Rising 19 cm / 10 min while still under the 10 cm flood line.
    outcomes = _flood([(0, 0.0), (2.5, 4.5), (5, 9.5)])
    township = TownshipState()
    cands = []
    for o in outcomes:
        for r in o.reports:
            d = handle_township(township, r, CTX, T)
            township = d.state
            cands += d.candidates
    assert [(c.hazard, c.level) for c in cands] == [("water_rise", 1)]
    c = cands[0]
    assert c.key == f"water_rise:{QUAKE_TOWN}"
    assert c.severity == "Moderate"
    assert c.value == pytest.approx(19.0, abs=0.5)
    assert c.threshold == 10.0
    assert c.evidence["flood_depth_cm"] == 9.5
    assert c.headline.startswith("Water rising fast in Yilan")
    assert open_candidates(township) == [c]


def test_a_batch_of_township_reports_stores_what_one_at_a_time_stores() -> None:
    # Air reports of a township, some at one time: the batch keeps only the last
    # township_air point of a time, which is the one InfluxDB keeps of a series anyway.
    levels = [(0, 40.0, 0), (1, 80.0, 0), (2, 160.0, 1), (1, 90.0, 1), (2, 170.0, 1), (0, 30.0, 3)]
    reports = [
        TownshipReport(
            township=QUAKE_TOWN,
            hazard="air_quality",
            device=f"air-{i % 3}",
            level=level,
            value=aqi,
            metric="aqi",
            event_time=T + timedelta(minutes=minute),
        )
        for i, (level, aqi, minute) in enumerate(levels)
    ]
    one = TownshipState()
    one_points: list[Any] = []
    one_candidates = []
    for r in reports:
        d = handle_township(one, r, CTX, T)
        one, one_points, one_candidates = (
            d.state,
            one_points + d.points,
            one_candidates + d.candidates,
        )
    batch = handle_township_reports(TownshipState(), reports, CTX, T)
    assert batch.state == one
    assert batch.candidates == one_candidates
    assert len(one_candidates) >= 2

    def stored(points: list[Any]) -> dict[Any, Any]:
        return {(p.measurement, p.tags, p.time_ns): p.fields for p in points}

    assert stored(list(batch.points)) == stored(one_points)
    air = [p for p in batch.points if p.measurement == "township_air"]
    assert len({p.time_ns for p in air}) == len(air) == 3
