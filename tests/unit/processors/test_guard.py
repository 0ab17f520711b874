"""The processors' defence in depth, pure: ingest's mark, the readings' time bounds, the
associator's clocks that no record moves past wall clock + skew, and the key setting."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from civic_iot.contracts.processing import SeismicTick, Trigger
from civic_iot.contracts.provenance import HEADER, Marker
from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
)
from civic_iot.settings import InfluxSettings, Settings, mark_key
from civic_iot.thresholds import thresholds_from
from civic_iot.timebounds import TimeBounds
from civic_iot.times import to_ns
from ops.mark_key import ensure_mark_key
from processors.app import create_app
from processors.guard import bound_clocks, bound_tick, judge_time, not_ahead, sample_span_s
from processors.handlers import Context, handle_quake
from processors.states import QuakeState
from tests.unit.processors.test_handlers import REGISTRY

KEY = b"unit-test-mark-key-0123456789abcdef"
MARK = Marker(KEY)
WALL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
BOUNDS = TimeBounds()  # 60 s ahead, 6 days old


# --- the mark -------------------------------------------------------------------------------


def test_a_marked_record_passes_and_any_change_breaks_the_mark() -> None:
    topic, key, value = "readings.air", b"air-1", b'{"reading_id": "air-1:1"}'
    headers = MARK.headers(topic, key, value)
    assert [k for k, _ in headers] == [HEADER]
    assert headers[0][1].startswith(b"v1=")
    assert MARK.problem(topic, key, value, headers) is None
    assert MARK.problem(topic, key, value, dict(headers)) is None  # faust's mapping form
    assert MARK.problem(topic, key, value, None) == "unmarked"
    assert MARK.problem(topic, key, value, [("other", b"x")]) == "unmarked"
    assert MARK.problem(topic, key, value + b" ", headers) == "bad_mark"
    assert MARK.problem("readings.water", key, value, headers) == "bad_mark"  # copied
    assert MARK.problem(topic, b"air-2", value, headers) == "bad_mark"  # re-keyed
    assert MARK.problem(topic, None, value, headers) == "bad_mark"
    assert MARK.problem(topic, key, None, headers) == "bad_mark"  # a tombstone
    assert MARK.problem(topic, key, value, headers * 2) == "bad_mark"  # two marks
    assert Marker(b"another-key-0123456789").problem(topic, key, value, headers) == "bad_mark"
    forged = [(HEADER, b"v1=" + b"0" * 64)]
    assert MARK.problem(topic, key, value, forged) == "bad_mark"


def test_fields_cannot_be_shifted_between_topic_key_and_value() -> None:
    """Length prefixes: ("ab", "c") and ("a", "bc") are different inputs."""
    assert MARK.mark("t", b"ab", b"c") != MARK.mark("t", b"a", b"bc")
    assert MARK.mark("ta", b"b", b"") != MARK.mark("t", b"ab", b"")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Marker(b"short")


def test_processes_refuse_to_start_without_a_good_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(RuntimeError, match="kafka-mark-key does not exist"):
        mark_key(settings)
    with pytest.raises(RuntimeError, match="kafka-mark-key does not exist"):
        create_app(settings, registry=REGISTRY, thresholds=thresholds_from({}, REGISTRY))
    path = ensure_mark_key(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    key = mark_key(settings)
    assert len(key) == 64
    assert ensure_mark_key(tmp_path) == path  # kept
    assert mark_key(settings) == key
    ensure_mark_key(tmp_path, rotate=True)
    assert mark_key(settings) != key
    path.write_text("changeme\n")
    with pytest.raises(RuntimeError, match="known default"):
        mark_key(settings)
    path.chmod(0o644)
    with pytest.raises(RuntimeError, match="open to other users"):
        mark_key(settings)
    with pytest.raises(ValidationError, match="CIVIC_KAFKA__MARK_KEY"):
        Settings(kafka={"mark_key": "secret"})  # type: ignore[arg-type]
    configured = Settings(data_dir=tmp_path, kafka={"mark_key": KEY.decode()})  # type: ignore[arg-type]
    assert mark_key(configured) == KEY


# --- the readings' time ---------------------------------------------------------------------


def _reading(kind: str, t: datetime, *, rate: float = 100.0, n: int = 100) -> Reading:
    data: AirPayload | SeismicPayload
    if kind == "seismic":
        # Built without validation: what the guard must hold whatever slipped through.
        data = SeismicPayload.model_construct(
            ts=t, sample_rate_hz=rate, x_gal=[0.0] * n, y_gal=[0.0] * n, z_gal=[0.0] * n
        )
    else:
        data = AirPayload(ts=t, pm2_5_ugm3=10.0)
    return Reading.model_construct(
        reading_id=f"d-1:{to_ns(t)}",
        device_id="d-1",
        kind=kind,
        event_time=t,
        received_at=t,
        late=False,
        location=Location(lat=25.0, lon=121.5, township="63000010"),
        data=data,
    )


NOW = datetime.fromtimestamp(WALL, UTC)


@pytest.mark.parametrize(
    ("kind", "t", "rate", "n", "expected"),
    [
        ("air", NOW, 100.0, 1, None),
        ("air", NOW + timedelta(seconds=60), 100.0, 1, None),
        ("air", NOW + timedelta(seconds=61), 100.0, 1, "future_timestamp"),
        ("air", NOW - timedelta(days=6), 100.0, 1, None),
        ("air", NOW - timedelta(days=6, seconds=1), 100.0, 1, "too_old"),
        ("air", datetime(1, 1, 1, tzinfo=UTC), 100.0, 1, "too_old"),
        ("air", datetime(9999, 12, 31, tzinfo=UTC), 100.0, 1, "future_timestamp"),
        ("seismic", NOW, 100.0, 100, None),
        # The last sample, not only the first, within the skew.
        ("seismic", NOW + timedelta(seconds=59), 100.0, 100, None),
        ("seismic", NOW + timedelta(seconds=59.5), 100.0, 100, "future_timestamp"),
        # A period sent as a rate, and the 1e-6 Hz: the packet "ends" months ahead.
        ("seismic", NOW, 0.01, 20, "future_timestamp"),
        ("seismic", NOW, 1e-6, 20, "future_timestamp"),
        ("seismic", NOW, 1e-300, 20, "future_timestamp"),
        ("seismic", NOW, 5e-324, 20, "schema"),  # (n - 1) / rate overflows to inf
        ("seismic", NOW, 0.0, 20, "schema"),
        ("seismic", NOW, -100.0, 20, "schema"),
        ("seismic", NOW, math.nan, 20, "schema"),
        ("seismic", NOW, math.inf, 20, "schema"),
    ],
)
def test_judge_time(kind: str, t: datetime, rate: float, n: int, expected: str | None) -> None:
    found = judge_time(_reading(kind, t, rate=rate, n=n), WALL, BOUNDS)
    assert (found[0] if found else None) == expected
    if found:
        assert "'d-1'" in found[1]  # the message names the device


def test_max_age_is_per_kind() -> None:
    bounds = TimeBounds(max_age_s={"air": 3600.0, "water": 3600.0, "seismic": 60.0})
    old = NOW - timedelta(minutes=30)
    assert judge_time(_reading("air", old), WALL, bounds) is None
    assert judge_time(_reading("seismic", old), WALL, bounds) is not None


def test_bounds_follow_ingest_settings() -> None:
    s = Settings(ingest={"max_age_s": 7200.0, "max_future_skew_s": 5.0})  # type: ignore[arg-type]
    b = TimeBounds.of(s)
    assert b.max_future_skew_s == 5.0
    assert dict(b.max_age_s) == {"air": 7200.0, "water": 7200.0, "seismic": 7200.0}
    backfill = TimeBounds.of(Settings(ingest={"backfill": True}))  # type: ignore[arg-type]
    assert backfill.max_age_s["seismic"] == 7 * 86_400 - 3600
    assert backfill.max_age_s["air"] == 30 * 86_400 - 3600


def test_sample_span_of_a_packet() -> None:
    assert sample_span_s(_reading("seismic", NOW, rate=50.0, n=100)) == (WALL, WALL + 99 / 50)
    assert sample_span_s(_reading("air", NOW)) == (WALL, WALL)


# --- the associator's clock -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (WALL, WALL),
        (WALL + 60, WALL + 60),
        (WALL + 61, WALL + 60),
        (1e18, WALL + 60),
        (math.inf, WALL + 60),
        (math.nan, WALL + 60),
        (-math.inf, WALL + 60),  # no finite number: the limit, never below the others
        (0.0, 0.0),
    ],
)
def test_not_ahead(t: float, expected: float) -> None:
    assert not_ahead(t, WALL, BOUNDS) == expected


def test_a_tick_from_the_future_is_bounded() -> None:
    trig = Trigger(station_id="A", lat=25.0, lon=121.5, p_time_s=WALL - 1)
    late = Trigger(station_id="B", lat=25.0, lon=121.5, p_time_s=WALL + 3600)
    fine = SeismicTick(now_s=WALL, triggers=(trig,), partition=0)
    assert bound_tick(fine, WALL, BOUNDS) is fine
    hostile = SeismicTick(now_s=1e12, triggers=(trig, late), partition=0)
    bounded = bound_tick(hostile, WALL, BOUNDS)
    assert bounded.now_s == WALL + 60
    assert bounded.triggers == (trig,)
    clocks = {"0": (1e12, WALL), "1": (WALL - 5, WALL)}
    assert bound_clocks(clocks, WALL, BOUNDS) == {"0": (WALL + 60, WALL), "1": (WALL - 5, WALL)}


CTX = Context.build(InfluxSettings(), REGISTRY)


def test_one_tick_cannot_move_the_associator_past_the_skew_and_a_poisoned_state_heals() -> None:
    at = datetime.fromtimestamp(WALL, UTC)
    hostile = SeismicTick(now_s=1e12, partition=0)
    d = handle_quake(QuakeState(), [hostile], CTX, at)
    assert d.state.clock <= WALL + 60
    assert all(s <= WALL + 60 for s, _ in d.state.clocks.values())
    # A state written before the guards (the 231 days ahead) is brought back
    # within the skew, which the wall clock then catches up with.
    poisoned = QuakeState(clock=WALL + 231 * 86_400, clocks={"0": (WALL + 231 * 86_400, WALL)})
    d = handle_quake(poisoned, [SeismicTick(now_s=WALL, partition=0)], CTX, at)
    assert d.state.clock == WALL + 60
    assert d.state.clocks["0"] == (WALL + 60, WALL)
    later = datetime.fromtimestamp(WALL + 120, UTC)
    d = handle_quake(d.state, [SeismicTick(now_s=WALL + 119, partition=0)], CTX, later)
    assert d.state.clock == WALL + 119
