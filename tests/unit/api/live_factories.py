"""Alert messages as the real chain makes them, for the live push tests: the earthquake
detector (:mod:`processors.detectors.quake`), the alert lifecycle and the JSON form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from alerts.lifecycle import LifecycleState, on_candidate, on_tick
from alerts.messages import to_json_dict
from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.contracts.processing import Observation, Trigger
from processors.detectors.quake import (
    Associator,
    GroundMotionModel,
    QuakeConfig,
    QuakeEvent,
    Township,
    distance_km,
    to_alert_candidate,
)

ORIGIN_S = 1_750_000_000.0
EPICENTRE = (24.8, 121.7)
#: Stations around the epicentre (degrees).
STATIONS = [
    ("seis-a", 24.85, 121.75),
    ("seis-b", 24.70, 121.65),
    ("seis-c", 24.90, 121.60),
    ("seis-d", 24.75, 121.82),
    ("seis-e", 25.00, 121.55),
]
TOWNSHIPS = (
    Township("T-NEAR", 24.78, 121.72),
    Township("T-MID", 25.03, 121.55),
    Township("T-FAR", 24.79, 121.00),
)


def quake_event(magnitude: float = 6.0, depth_km: float = 10.0) -> tuple[QuakeEvent, QuakeConfig]:
    """An event the associator declares from five stations' P times and peaks."""
    cfg = QuakeConfig(townships=TOWNSHIPS)
    gm = GroundMotionModel()
    triggers, observations = [], []
    for sid, lat, lon in STATIONS:
        r = float(np.hypot(distance_km(EPICENTRE[0], EPICENTRE[1], lat, lon), depth_km))
        p_time_s = ORIGIN_S + r / cfg.association.vp_kms
        triggers.append(Trigger(station_id=sid, lat=lat, lon=lon, p_time_s=p_time_s))
        pga = float(gm.pga_gal(magnitude, np.array([r]))[0])
        pgv = float(gm.pgv_cms(magnitude, np.array([r]))[0])
        observations.append(Observation(station_id=sid, pga_gal=pga, pgv_cms=pgv))
    now = max(t.p_time_s for t in triggers) + 1.0
    assoc = Associator().step(now_s=now, triggers=triggers, config=cfg).associator
    result = assoc.step(now_s=now + 0.5, observations=observations, config=cfg)
    (event,) = result.updates
    return event, cfg


def message_json(
    candidate: AlertCandidate, state: LifecycleState | None = None
) -> tuple[dict[str, Any], LifecycleState]:
    """The alert service's first message for ``candidate``, in JSON form, and the state."""
    now = candidate.detected_at
    after, msgs = on_candidate(state or LifecycleState(), candidate, now)
    assert msgs, "the lifecycle issued nothing"
    return to_json_dict(msgs[-1], "Exercise"), after


def quake_message() -> tuple[dict[str, Any], QuakeEvent, LifecycleState]:
    event, cfg = quake_event()
    detected = datetime.fromtimestamp(event.computed_at_s, UTC)
    msg, state = message_json(to_alert_candidate(event, detected_at=detected, config=cfg))
    return msg, event, state


def cancel_json(state: LifecycleState, candidate: AlertCandidate) -> dict[str, Any]:
    """The Cancel the lifecycle sends once ``candidate`` (level 0) has held long enough."""
    after, _ = on_candidate(state, candidate, candidate.detected_at)
    later = datetime.fromtimestamp(candidate.detected_at.timestamp() + 3600, UTC)
    _, msgs = on_tick(after, later)
    (cancel,) = [m for m in msgs if m.msg_type == "Cancel"]
    return to_json_dict(cancel, "Exercise")
