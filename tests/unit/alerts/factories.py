"""Builders of alert candidates and messages for the alert unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.lifecycle import (
    DEFAULT_LIFECYCLE_CONFIG,
    AlertMessage,
    LifecycleConfig,
    LifecycleState,
    on_candidate,
    on_tick,
)
from civic_iot.contracts.alerts import AlertCandidate, Circle, GridCell, Hazard, Severity

#: A fixed processing-clock origin; every test time is an offset from it.
T0 = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)

_SEVERITY_BY_LEVEL: dict[int, Severity] = {
    0: "Minor",
    1: "Minor",
    2: "Moderate",
    3: "Severe",
    4: "Extreme",
}

#: A plausible area per hazard (Taipei Da'an district code 6300300 for townships).
_AREAS: dict[Hazard, dict[str, Any]] = {
    "air_quality": {"area_code": "6300300", "area_desc": "Da'an District, Taipei"},
    "flood": {"area_code": "6300300", "area_desc": "Da'an District, Taipei"},
    "river": {"area_code": "6500100", "area_desc": "Banqiao District, New Taipei"},
    "water_rise": {"area_code": "6500100", "area_desc": "Banqiao District, New Taipei"},
    "rain": {"area_code": "1000801", "area_desc": "Nantou City, Nantou County"},
    "debris_flow": {"area_code": "1000809", "area_desc": "Lugu Township, Nantou County"},
    "earthquake": {"area_code": "quake-20250601-0001", "area_desc": "Central Taiwan"},
}

_METRICS: dict[Hazard, str] = {
    "air_quality": "aqi",
    "flood": "flood_depth_cm",
    "river": "water_level_m",
    "water_rise": "rise_cm_per_10min",
    "rain": "rain_24h_mm",
    "debris_flow": "rti",
    "earthquake": "intensity",
}


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def candidate(
    level: int,
    t_s: float = 0.0,
    *,
    hazard: Hazard = "air_quality",
    value: float | None = None,
    **overrides: Any,
) -> AlertCandidate:
    """A candidate at ``level``, decided at T0 + ``t_s`` seconds."""
    fields: dict[str, Any] = {
        "hazard": hazard,
        **_AREAS[hazard],
        "level": level,
        "severity": _SEVERITY_BY_LEVEL[min(level, 4)],
        "headline": f"{hazard} level {level}",
        "description": "",
        "metric": _METRICS[hazard],
        "value": float(level * 50 if value is None else value),
        "threshold": 100.0,
        "event_time": at(t_s - 1),
        "detected_at": at(t_s),
        "devices": ("aq-0001", "aq-0002"),
        "geocodes": (str(_AREAS[hazard]["area_code"]),),
    }
    if hazard == "earthquake":
        fields |= {
            "geocodes": (),
            "devices": ("eew-01", "eew-02", "eew-03", "eew-04"),
            "circle": Circle(lat=23.85, lon=120.9, radius_km=60),
            "cells": (
                GridCell(lat=23.85, lon=120.95, intensity="5-", s_wave_s=3.2, township="1000809"),
                GridCell(lat=23.95, lon=120.95, intensity="4", s_wave_s=5.0, township="1000801"),
            ),
            "evidence": {"magnitude": 6.1, "depth_km": 12.0, "stations": 4.0},
        }
    if hazard in ("flood", "river"):
        fields["polygon"] = ((25.03, 121.53), (25.03, 121.55), (25.02, 121.55), (25.02, 121.53))
    fields |= overrides
    return AlertCandidate(**fields)


def run(
    steps: list[tuple[float, AlertCandidate | None]],
    *,
    config: LifecycleConfig = DEFAULT_LIFECYCLE_CONFIG,
    state: LifecycleState | None = None,
) -> tuple[LifecycleState, list[AlertMessage]]:
    """Feed ``(t_s, candidate or None for a tick)`` steps; all messages in order."""
    state = state or LifecycleState()
    out: list[AlertMessage] = []
    for t_s, cand in steps:
        if cand is None:
            state, msgs = on_tick(state, at(t_s), config=config)
        else:
            state, msgs = on_candidate(state, cand, at(t_s), config=config)
        out.extend(msgs)
    return state, out


def lifecycle_messages(hazard: Hazard) -> list[AlertMessage]:
    """An Alert, an escalation Update and a clearing Cancel for ``hazard``."""
    hold = DEFAULT_LIFECYCLE_CONFIG.timing(hazard).clear_hold_s
    _, msgs = run(
        [
            (0, candidate(2, 0, hazard=hazard)),
            (10, candidate(3, 10, hazard=hazard)),
            (20, candidate(0, 20, hazard=hazard)),
            (20 + hold, None),
        ]
    )
    assert [m.msg_type for m in msgs] == ["Alert", "Update", "Cancel"]
    return msgs
