"""An earthquake message told per township (``alerts/earthquake/{township}``): which
townships, their expected intensity and S-wave countdown (the API's computation,
:mod:`civic_iot.warning`), the payload's shape and size, and the channel's topics."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.cap import DEFAULT_CAP_CONFIG
from alerts.delivery import DeliveryResult, mqtt_topic
from alerts.lifecycle import AlertMessage, LifecycleConfig, LifecycleState, on_candidate, on_tick
from alerts.limits import MQTT_PAYLOAD_BUDGET, clamp_candidate, worst_case_candidate
from alerts.messages import (
    MAX_PLACE_TOPICS,
    PLACE_SCHEMA_ID,
    to_json_dict,
    township_json_dict,
    township_warnings,
)
from alerts.service import WORST_FILLS, township_centroids, worst_case_sizes
from alerts.subscriptions import SubscriptionFilter, matches
from civic_iot.registry import load_registry
from civic_iot.settings import Settings
from civic_iot.warning import VS_KMS, Quake, hypocentral_km, intensity_rank
from processors.detectors.quake import QuakeEvent, to_alert_candidate
from tests.unit.alerts.factories import lifecycle_messages
from tests.unit.alerts.test_mqtt_channel import SUCCESS, channel, until
from tests.unit.api.live_factories import TOWNSHIPS, quake_event

CENTROIDS = {t.code: (t.lat, t.lon) for t in TOWNSHIPS}


def quake_alert() -> tuple[AlertMessage, QuakeEvent, LifecycleState]:
    """The alert service's first message for an M6 the real detector declared."""
    event, cfg = quake_event()
    detected = datetime.fromtimestamp(event.computed_at_s, UTC)
    cand = to_alert_candidate(event, detected_at=detected, config=cfg)
    state, msgs = on_candidate(LifecycleState(), cand, detected)
    return msgs[-1], event, state


def test_every_warned_township_gets_its_intensity_and_s_arrival() -> None:
    msg, event, _ = quake_alert()
    places = dict(township_warnings(msg, "Exercise", CENTROIDS))
    named = {c.township for c in event.cells if c.township}
    assert set(places) == set(event.townships) | named
    assert "T-NEAR" in places
    quake = Quake.from_message(to_json_dict(msg, "Exercise"))
    assert quake is not None
    for code, w in places.items():
        cells = [c for c in event.cells if c.township == code]
        # The highest of its reported cells; the earliest arrival over centroid and cells.
        expected = max((c.intensity for c in cells), key=intensity_rank, default=None)
        assert w.intensity == expected, code
        points = [CENTROIDS[code], *((c.lat, c.lon) for c in cells)]
        first = min(event.origin_s + hypocentral_km(quake, *p) / VS_KMS for p in points)
        assert w.arrival_s == pytest.approx(first, abs=1e-3), code
    # The detector's own countdown at its township agrees (same model, same origin).
    near = next(p for p in event.places if p.township == "T-NEAR")
    assert places["T-NEAR"].arrival_s <= near.s_arrival_s + 1e-3


def test_a_township_without_centroid_is_placed_by_its_cells_or_left_out() -> None:
    msg, event, _ = quake_alert()
    places = dict(township_warnings(msg, "Exercise", {}))
    # Without centroids only townships with a reported cell can be placed.
    assert set(places) == {c.township for c in event.cells if c.township}


def test_payload_carries_identity_intensity_and_countdown() -> None:
    msg, _, _ = quake_alert()
    [(code, w)] = [p for p in township_warnings(msg, "Exercise", CENTROIDS) if p[0] == "T-NEAR"]
    now_s = w.arrival_s - 7.25
    body = township_json_dict(msg, code, w, now_s)
    assert body["schema"] == PLACE_SCHEMA_ID
    assert (body["township"], body["alert_id"], body["identifier"]) == (
        "T-NEAR",
        msg.alert_id,
        msg.identifier,
    )
    assert (body["msg_type"], body["status"], body["actual"]) == ("Alert", "Exercise", False)
    assert body["intensity"] == w.intensity
    assert body["seconds_left"] == pytest.approx(7.25, abs=0.051)
    assert body["s_arrival_s"] == round(w.arrival_s, 3)
    # The same instant in the configured zone, with milliseconds.
    arrival = datetime.fromisoformat(body["s_arrival"])
    assert arrival.timestamp() == pytest.approx(w.arrival_s, abs=1e-3)
    assert body["s_arrival"].endswith("+08:00")
    assert body["magnitude"] == pytest.approx(msg.evidence["magnitude"])
    # Once it has arrived: 0 left, flagged.
    late = township_json_dict(msg, code, w, w.arrival_s + 3)
    assert (late["seconds_left"], late["arrived"]) == (0.0, True)


def test_a_cancel_is_told_to_the_townships_as_ended() -> None:
    msg, _, state = quake_alert()
    event2, cfg = quake_event()
    clear = to_alert_candidate(event2, detected_at=msg.detected_at, config=cfg).model_copy(
        update={"level": 0, "severity": "Minor"}
    )
    after, _ = on_candidate(state, clear, msg.detected_at)
    _, msgs = on_tick(after, datetime.fromtimestamp(msg.detected_at.timestamp() + 3600, UTC))
    [cancel] = [m for m in msgs if m.msg_type == "Cancel"]
    places = township_warnings(cancel, "Exercise", CENTROIDS)
    assert places
    assert all(township_json_dict(cancel, c, w, 0)["ended"] for c, w in places)


def test_other_hazards_and_quakes_without_evidence_have_no_townships() -> None:
    flood = lifecycle_messages("flood")[0]
    assert township_warnings(flood, "Exercise", CENTROIDS) == []
    # The factory's quake lacks the epicentre and origin: no countdown can be made.
    assert township_warnings(lifecycle_messages("earthquake")[0], "Exercise", {}) == []


def test_township_topic_is_the_hazard_topic_of_the_township() -> None:
    msg, _, _ = quake_alert()
    assert mqtt_topic(msg, "runs/r1/alerts", "1000801") == "runs/r1/alerts/earthquake/1000801"
    assert mqtt_topic(msg, "alerts", "a/b+#") == "alerts/earthquake/a_b__"


@pytest.mark.parametrize("fill", WORST_FILLS, ids=[repr(f) for f in WORST_FILLS])
def test_worst_township_payload_fits_mqtt(fill: str) -> None:
    sizes = worst_case_sizes(LifecycleConfig(), DEFAULT_CAP_CONFIG, "Exercise", fill)
    assert 0 < sizes["mqtt_township"] <= 0.1 * MQTT_PAYLOAD_BUDGET, sizes


def test_townships_per_message_are_capped_strongest_first() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    cand = clamp_candidate(worst_case_candidate("&", at))
    cand = cand.model_copy(
        update={
            "cells": tuple(
                c.model_copy(update={"intensity": "6-" if i < 5 else "4"})
                for i, c in enumerate(cand.cells)
            ),
            "evidence": {
                "magnitude": 6.5,
                "epicentre_lat": -89.0,
                "epicentre_lon": -179.0,
                "depth_km": 10.0,
                "origin_time": "2025-01-01T00:00:00.000+00:00",
            },
        }
    )
    _, [msg] = on_candidate(LifecycleState(), cand, at)
    places = township_warnings(msg, "Exercise", {})
    # 700 cells of 700 townships: more than one message may tell.
    assert len(places) == MAX_PLACE_TOPICS
    assert [c for c, _ in places] == sorted(c for c, _ in places)
    strong = {c.township for c in cand.cells if c.intensity == "6-"}
    assert strong <= {c for c, _ in places}


def test_a_township_subscription_matches_the_quake() -> None:
    msg, event, _ = quake_alert()
    for code in event.townships:
        assert matches(SubscriptionFilter(townships=frozenset({code})), msg), code
    assert not matches(SubscriptionFilter(townships=frozenset({"6300300"})), msg)


def test_channel_publishes_event_then_each_township_not_retained() -> None:
    msg, _, _ = quake_alert()
    results: list[DeliveryResult] = []
    ch, conn = channel(results)
    ch._townships = CENTROIDS
    codes = [c for c, _ in township_warnings(msg, "Exercise", CENTROIDS)]

    async def scenario() -> None:
        worker = asyncio.create_task(ch._run())
        await ch.add(msg)
        await until(lambda: len(conn.acks) == 1 + len(codes), conn.changed)
        for ack in conn.acks:
            ack.set_result(SUCCESS)
        await ch.flush()
        worker.cancel()

    asyncio.run(scenario())
    assert [(t, r) for t, _, r in conn.published] == [
        (mqtt_topic(msg, "runs/t/alerts"), True),
        *((f"runs/t/alerts/earthquake/{c}", False) for c in codes),
    ]
    bodies = [json.loads(p) for _, p, _ in conn.published[1:]]
    assert [b["township"] for b in bodies] == codes
    assert all(b["schema"] == PLACE_SCHEMA_ID and b["seconds_left"] >= 0 for b in bodies)
    assert [(r.message.identifier, r.outcome) for r in results] == [(msg.identifier, "delivered")]


def test_centroids_come_from_the_registry_and_a_missing_one_places_by_cells(
    tmp_path: Path,
) -> None:
    shipped = Settings()
    centroids = township_centroids(shipped)
    registry = load_registry(shipped.registry)
    assert centroids == {t.code: (t.lat, t.lon) for t in registry.townships}
    assert centroids
    missing = shipped.model_copy(update={"registry": tmp_path / "absent.yaml"})
    assert township_centroids(missing) == {}
