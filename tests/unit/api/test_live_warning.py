"""The per-place earthquake warning (civic_iot.warning, shared by the API and the alert
service) against the detector's own figures."""

from __future__ import annotations

import math

import pytest

from civic_iot.warning import (
    CELL_DEG,
    VS_KMS,
    Quake,
    hypocentral_km,
    intensity_rank,
    warn_point,
    warn_township,
)
from processors.detectors.quake import QuakeConfig
from tests.unit.alerts.factories import candidate
from tests.unit.api.live_factories import ORIGIN_S, quake_message


def test_grid_and_speed_are_the_detectors() -> None:
    """The message does not carry them: the copies here must equal the detector's."""
    cfg = QuakeConfig()
    assert (cfg.cell_deg, cfg.association.vs_kms) == (CELL_DEG, VS_KMS)


def test_quake_from_the_alert_message() -> None:
    msg, event, _ = quake_message()
    q = Quake.from_message(msg)
    assert q is not None
    assert q.alert_id == msg["alert_id"]
    assert q.area_code == f"quake-{event.event_id}"
    assert q.status == "Exercise"
    assert (q.lat, q.lon, q.depth_km) == (event.lat, event.lon, event.depth_km)
    assert q.magnitude == event.magnitude
    assert q.origin_s == pytest.approx(event.origin_s, abs=1e-3)  # ms in the message
    assert len(q.cells) == len(event.cells) > 0
    assert q.report_min == "3"
    assert not q.ended
    assert set(q.stations) == set(event.station_ids)


def test_arrival_at_each_cell_is_the_detectors_countdown() -> None:
    """origin + R/Vs at a cell centre = the estimate's time + the cell's s_wave_s, for
    every cell the S wave had not reached yet (the detector floors the others at 0)."""
    msg, event, _ = quake_message()
    q = Quake.from_message(msg)
    assert q is not None
    ahead = [c for c in event.cells if c.s_wave_s > 0]
    assert ahead
    for c in ahead:
        assert q.arrival_s(c.lat, c.lon) == pytest.approx(
            event.computed_at_s + c.s_wave_s, abs=0.01
        )


def test_point_in_a_cell_gets_its_level_and_own_countdown() -> None:
    msg, event, _ = quake_message()
    q = Quake.from_message(msg)
    assert q is not None
    top = max(event.cells, key=lambda c: intensity_rank(c.intensity))
    lat, lon = top.lat + 0.03, top.lon - 0.04  # inside the cell, off its centre
    w = warn_point(q, lat, lon)
    assert w.intensity == top.intensity
    r = math.hypot(_km(q.lat, q.lon, lat, lon), q.depth_km)
    assert w.distance_km == pytest.approx(r)
    assert w.arrival_s == pytest.approx(q.origin_s + r / VS_KMS)
    # Warning time = R / Vs - time since origin, floored at 0.
    t = q.origin_s + 2.0
    assert w.seconds_left(t) == pytest.approx(max(0.0, r / VS_KMS - 2.0))
    assert w.seconds_left(q.origin_s + 1000) == 0
    body = w.to_json(t)
    assert body["arrived"] is (body["seconds_left"] == 0)
    assert body["below"] is None
    assert body["actual"] is False


def test_point_outside_every_reported_cell_is_below_the_minimum() -> None:
    msg, _, _ = quake_message()
    q = Quake.from_message(msg)
    assert q is not None
    w = warn_point(q, 22.0, 120.3)  # far south
    assert w.intensity is None
    assert w.to_json(ORIGIN_S)["below"] == "3"
    assert w.seconds_left(ORIGIN_S) == pytest.approx(hypocentral_km(q, 22.0, 120.3) / VS_KMS)


def test_township_takes_its_highest_cell_and_earliest_arrival() -> None:
    msg, event, _ = quake_message()
    q = Quake.from_message(msg)
    assert q is not None
    town = next(c.township for c in event.cells if c.township)
    assert town is not None
    cells = [c for c in event.cells if c.township == town]
    centroid = (25.5, 122.5)  # far away: a cell must win the arrival
    w = warn_township(q, town, *centroid)
    assert w.intensity == max((c.intensity for c in cells), key=intensity_rank)
    assert w.arrival_s == pytest.approx(min(q.arrival_s(c.lat, c.lon) for c in cells))
    # A township with no reported cell: below the minimum, arrival at its centroid.
    none = warn_township(q, "nowhere", 24.79, 121.0)
    assert none.intensity is None
    assert none.arrival_s == pytest.approx(q.arrival_s(24.79, 121.0))


def test_messages_that_are_not_quakes_are_none() -> None:
    from alerts.lifecycle import LifecycleState, on_candidate  # noqa: PLC0415
    from alerts.messages import to_json_dict  # noqa: PLC0415

    c = candidate(2, hazard="flood")
    _, msgs = on_candidate(LifecycleState(), c, c.detected_at)
    assert Quake.from_message(to_json_dict(msgs[0], "Exercise")) is None
    bad, _, _ = quake_message()
    bad = {**bad, "evidence": {}}
    assert Quake.from_message(bad) is None


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    from processors.detectors.quake import distance_km  # noqa: PLC0415

    return float(distance_km(lat1, lon1, lat2, lon2))
