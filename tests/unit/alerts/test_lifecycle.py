"""The alert lifecycle as tables of input sequences and the messages they must produce."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alerts.lifecycle import (
    DEFAULT_TIMINGS,
    AckLimitError,
    AlertMessage,
    HazardTiming,
    LifecycleConfig,
    LifecycleState,
    UnknownAlertError,
    acknowledge,
    changed_keys,
    on_candidate,
    on_tick,
)
from alerts.limits import Caps
from civic_iot.contracts.alerts import AlertCandidate, GridCell, Hazard

from .factories import at, candidate, run

M = 60.0  # seconds per minute: the tables are written in minutes

# A step: (minute, level or None for a timer tick, expected messages as "Type/reason" joined
# by spaces, "" for none). Air quality defaults: de-escalation and clear holds 30 min,
# expiry 6 h; earthquake: 60 s holds.
Step = tuple[float, int | None, str]

TABLES: dict[str, tuple[Hazard, list[Step]]] = {
    "new alert": ("air_quality", [(0, 2, "Alert/new")]),
    "level 0 with nothing open is silent": ("air_quality", [(0, 0, ""), (40, None, "")]),
    "duplicates are silent": (
        "air_quality",
        [(0, 2, "Alert/new"), (1, 2, ""), (2, 2, ""), (3, None, ""), (4, 2, "")],
    ),
    "escalation is immediate": (
        "air_quality",
        [(0, 1, "Alert/new"), (1, 3, "Update/escalated"), (2, 4, "Update/escalated")],
    ),
    "flapping between levels 1 and 2 sends nothing after the alert": (
        "air_quality",
        [(0, 2, "Alert/new")]
        + [(m, 1 if m % 2 else 2, "") for m in range(1, 60)]
        # Once it stays at 1 (from minute 59) the hold runs out and it de-escalates.
        + [(60, None, ""), (88, None, ""), (89, None, "Update/de-escalated")],
    ),
    "flapping around the clear line neither clears nor re-alerts": (
        "air_quality",
        [(0, 0, ""), (1, 1, "Alert/new")]
        + [(m, 0 if m % 2 else 1, "") for m in range(2, 90)]
        # Once it stays at 0 (from minute 89) the clear hold runs out.
        + [(90, None, ""), (118, None, ""), (119, None, "Cancel/cleared")],
    ),
    "de-escalation only after the hold": (
        "air_quality",
        [
            (0, 3, "Alert/new"),
            (10, 2, ""),
            (39, None, ""),
            (40, None, "Update/de-escalated"),
            (41, None, ""),
            (50, 2, ""),
        ],
    ),
    "de-escalation due when the next candidate arrives": (
        "air_quality",
        [(0, 3, "Alert/new"), (10, 2, ""), (45, 2, "Update/de-escalated"), (46, None, "")],
    ),
    "back to the announced level stops a pending de-escalation": (
        "air_quality",
        [(0, 3, "Alert/new"), (10, 2, ""), (20, 3, ""), (45, None, ""), (60, None, "")],
    ),
    "clear only after the hold": (
        "air_quality",
        [
            (0, 2, "Alert/new"),
            (5, 0, ""),
            (34, None, ""),
            (35, None, "Cancel/cleared"),
            (36, None, ""),
            (37, 0, ""),
        ],
    ),
    "re-escalation during the clear hold cancels the pending clear": (
        "air_quality",
        [(0, 2, "Alert/new"), (5, 0, ""), (20, 2, ""), (40, None, ""), (60, None, "")],
    ),
    "higher level during the clear hold is an escalation": (
        "air_quality",
        [(0, 2, "Alert/new"), (5, 0, ""), (20, 3, "Update/escalated"), (50, None, "")],
    ),
    "a new rise after a cancel is a new alert": (
        "air_quality",
        [(0, 2, "Alert/new"), (5, 0, ""), (35, None, "Cancel/cleared"), (40, 2, "Alert/new")],
    ),
    "a clear that was due is sent before the next rise": (
        "air_quality",
        [(0, 2, "Alert/new"), (5, 0, ""), (50, 2, "Cancel/cleared Alert/new")],
    ),
    "lower-but-nonzero after zero counts the hold from the first drop": (
        "air_quality",
        [
            (0, 3, "Alert/new"),
            (5, 0, ""),
            (20, 1, ""),
            (34, None, ""),
            (35, None, "Update/de-escalated"),
        ],
    ),
    "expiry without candidates": (
        "air_quality",
        [(0, 2, "Alert/new"), (359, None, ""), (360, None, "Cancel/expired"), (361, None, "")],
    ),
    "duplicates keep an alert alive": (
        "air_quality",
        [(0, 2, "Alert/new"), (300, 2, ""), (600, None, ""), (660, None, "Cancel/expired")],
    ),
    "earthquake clears 60 s after the event closes": (
        "earthquake",
        [
            (0, 4, "Alert/new"),
            (0.5, 5, "Update/escalated"),
            (1, 0, ""),
            (1.9, None, ""),
            (2, None, "Cancel/cleared"),
        ],
    ),
}


def _play(hazard: Hazard, steps: list[Step], *, restart: bool) -> list[list[str]]:
    """Run a table; with ``restart``, reload the state through JSON before every step."""
    state = LifecycleState()
    got: list[list[str]] = []
    for minute, level, _ in steps:
        if restart:
            state = LifecycleState.from_dict(json.loads(json.dumps(state.to_dict())))
        now = at(minute * M)
        if level is None:
            state, msgs = on_tick(state, now)
        else:
            state, msgs = on_candidate(state, candidate(level, minute * M, hazard=hazard), now)
        got.append([f"{m.msg_type}/{m.reason}" for m in msgs])
    return got


@pytest.mark.parametrize("restart", [False, True], ids=["steady", "restart-every-step"])
@pytest.mark.parametrize("name", list(TABLES))
def test_lifecycle_table(name: str, restart: bool) -> None:
    hazard, steps = TABLES[name]
    expected = [exp.split() for _, _, exp in steps]
    assert _play(hazard, steps, restart=restart) == expected


def test_value_hovering_at_the_line_for_hours_gives_one_alert() -> None:
    # Every 5 minutes for 4 hours the value crosses the line one way or the other, with a
    # slightly different value each time.
    steps: list[tuple[float, Any]] = [
        (m * M, candidate(1 if m % 10 else 0, m * M, value=100 + (m % 7) - 3))
        for m in range(5, 240, 5)
    ]
    _, msgs = run(steps)
    assert [m.msg_type for m in msgs] == ["Alert"]


def test_alert_id_stable_and_identifiers_unique() -> None:
    _, msgs = run(
        [
            (0, candidate(1, 0)),
            (60, candidate(2, 60)),
            (120, candidate(3, 120)),
            (180, candidate(0, 180)),
            (180 + 1800, None),
        ]
    )
    assert [m.sequence for m in msgs] == [1, 2, 3, 4]
    assert len({m.alert_id for m in msgs}) == 1
    assert len({m.identifier for m in msgs}) == 4


def test_identifiers_are_deterministic_for_a_replay() -> None:
    steps: list[tuple[float, Any]] = [(0, candidate(2, 0)), (60, candidate(3, 60))]
    _, first = run(steps)
    _, second = run(steps)
    assert [m.identifier for m in first] == [m.identifier for m in second]


def test_new_alert_after_cancel_gets_a_new_id() -> None:
    _, msgs = run(
        [
            (0, candidate(2, 0)),
            (60, candidate(0, 60)),
            (60 + 1800, None),
            (4000, candidate(2, 4000)),
        ]
    )
    assert [m.msg_type for m in msgs] == ["Alert", "Cancel", "Alert"]
    assert msgs[0].alert_id == msgs[1].alert_id != msgs[2].alert_id
    assert msgs[2].references == ()
    assert msgs[2].sequence == 1


def test_every_update_and_cancel_references_all_earlier_messages() -> None:
    _, msgs = run(
        [
            (0, candidate(1, 0)),
            (60, candidate(2, 60)),
            (120, candidate(3, 120)),
            (180, candidate(0, 180)),
            (180 + 1800, None),
        ]
    )
    for i, msg in enumerate(msgs):
        assert [r.identifier for r in msg.references] == [m.identifier for m in msgs[:i]]
        assert [r.sent for r in msg.references] == [m.sent for m in msgs[:i]]
        assert all(r.sender == msg.sender for r in msg.references)


def test_message_fields_come_from_the_candidate() -> None:
    cand = candidate(3, 0, value=180.0)
    _, [msg] = run([(5, cand)])
    assert (msg.hazard, msg.area_code, msg.level, msg.severity) == (
        "air_quality",
        "6300300",
        3,
        "Severe",
    )
    assert msg.detected_at == cand.detected_at
    assert msg.event_time == cand.event_time
    assert msg.sent == at(5)
    assert msg.value == 180.0
    assert msg.key == cand.key
    assert msg.expires == at(5 + DEFAULT_TIMINGS["air_quality"].expire_after_s)
    assert msg.sender == "alerts@civic-iot.example"


def test_peak_severity_survives_de_escalation() -> None:
    _, msgs = run([(0, candidate(4, 0)), (60, candidate(1, 60)), (60 + 1800, None)])
    assert [(m.reason, m.severity, m.peak_severity) for m in msgs] == [
        ("new", "Extreme", "Extreme"),
        ("de-escalated", "Minor", "Extreme"),
    ]


def test_cancel_on_clear_keeps_the_announced_area_and_shows_level_zero() -> None:
    _, msgs = run(
        [
            (0, candidate(2, 0, geocodes=("6300300", "6300400"))),
            (60, candidate(0, 60, geocodes=("6300300",), value=12.0)),
            (60 + 1800, None),
        ]
    )
    cancel = msgs[-1]
    assert cancel.msg_type == "Cancel"
    assert cancel.geocodes == ("6300300", "6300400")
    assert (cancel.level, cancel.value) == (0, 12.0)
    assert cancel.expires is None


# ------------------------------------------------------------------ area


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ({"geocodes": ("6300300", "6300400")}, ["Alert/new", "Update/area_changed"]),
        ({"geocodes": ()}, ["Alert/new", "Update/area_changed"]),
        ({"devices": ("aq-0001", "aq-0002", "aq-0003")}, ["Alert/new", "Update/area_changed"]),
        ({"devices": ("aq-0002", "aq-0001")}, ["Alert/new"]),  # same set, other order
        ({"value": 123.0}, ["Alert/new"]),  # a new value alone is not news
        (
            {"polygon": ((25.0, 121.5), (25.1, 121.5), (25.1, 121.6))},
            ["Alert/new", "Update/area_changed"],
        ),
    ],
)
def test_area_changes(second: dict[str, Any], expected: list[str]) -> None:
    _, msgs = run([(0, candidate(2, 0)), (60, candidate(2, 60, **second))])
    assert [f"{m.msg_type}/{m.reason}" for m in msgs] == expected


def test_area_grow_then_shrink_sends_two_updates_with_the_new_area() -> None:
    _, msgs = run(
        [
            (0, candidate(2, 0, geocodes=("A",))),
            (60, candidate(2, 60, geocodes=("A", "B"))),
            (120, candidate(2, 120, geocodes=("A", "B"))),
            (180, candidate(2, 180, geocodes=("A",))),
        ]
    )
    assert [m.geocodes for m in msgs] == [("A",), ("A", "B"), ("A",)]


def test_devices_change_can_be_switched_off() -> None:
    config = LifecycleConfig(devices_change_area=False)
    _, msgs = run(
        [(0, candidate(2, 0)), (60, candidate(2, 60, devices=("aq-0009",)))], config=config
    )
    assert [m.msg_type for m in msgs] == ["Alert"]


def test_area_change_during_de_escalation_hold_keeps_announced_level() -> None:
    _, msgs = run(
        [
            (0, candidate(3, 0, geocodes=("A",))),
            (60, candidate(2, 60, geocodes=("A", "B"))),
            (60 + 1800, None),
        ]
    )
    assert [(m.reason, m.level, m.severity, m.geocodes) for m in msgs] == [
        ("new", 3, "Severe", ("A",)),
        ("area_changed", 3, "Severe", ("A", "B")),
        ("de-escalated", 2, "Moderate", ("A", "B")),
    ]


def test_quake_cells_growing_is_an_area_change_but_intensity_shift_is_not() -> None:
    base = candidate(4, 0, hazard="earthquake")
    more = (*base.cells, GridCell(lat=24.05, lon=120.95, intensity="3", s_wave_s=7.0))
    shifted = tuple(c.model_copy(update={"intensity": "4"}) for c in base.cells)
    _, msgs = run(
        [
            (0, base),
            (1, candidate(4, 1, hazard="earthquake", cells=shifted)),
            (2, candidate(4, 2, hazard="earthquake", cells=more)),
        ]
    )
    assert [f"{m.msg_type}/{m.reason}" for m in msgs] == ["Alert/new", "Update/area_changed"]
    assert len(msgs[1].cells) == 3


# ------------------------------------------------------------------ acknowledgement


def test_ack_is_recorded_and_does_not_silence_escalation() -> None:
    state, [alert] = run([(0, candidate(2, 0))])
    state, ack = acknowledge(state, alert.alert_id, "operator-7", at(30), "called the EPB")
    assert (ack.by, ack.at, ack.note, ack.alert_id) == (
        "operator-7",
        at(30),
        "called the EPB",
        alert.alert_id,
    )
    assert state.records[alert.key].acks == (ack,)
    state, msgs = on_candidate(state, candidate(3, 60), at(60))
    assert [m.reason for m in msgs] == ["escalated"]
    assert msgs[0].acknowledgements == (ack,)


def test_ack_by_alert_id_and_survives_restart() -> None:
    state, [alert] = run([(0, candidate(2, 0))])
    state, ack = acknowledge(state, alert.alert_id, "ops", at(10))
    state = LifecycleState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert state.records[alert.key].acks == (ack,)


def test_ack_of_unknown_alert_raises() -> None:
    with pytest.raises(UnknownAlertError, match="nope"):
        acknowledge(LifecycleState(), "nope", "ops", at(0))


def test_ack_by_the_guessable_key_is_refused() -> None:
    state, [alert] = run([(0, candidate(2, 0))])
    with pytest.raises(UnknownAlertError):
        acknowledge(state, alert.key, "ops", at(1))


def test_acks_are_one_per_principal_and_capped() -> None:
    caps = Caps(acks=3)
    state, [alert] = run([(0, candidate(2, 0))])
    state, first = acknowledge(state, alert.alert_id, "ops-a", at(1), "first", caps=caps)
    state, _ = acknowledge(state, alert.alert_id, "ops-b", at(2), caps=caps)
    # Again by ops-a: replaces its note and time, in place; still two.
    state, again = acknowledge(state, alert.alert_id, "ops-a", at(3), "again", caps=caps)
    acks = state.records[alert.key].acks
    assert [(a.by, a.note, a.at) for a in acks] == [("ops-a", "again", at(3)), ("ops-b", "", at(2))]
    state, _ = acknowledge(state, alert.alert_id, "ops-c", at(4), caps=caps)
    with pytest.raises(AckLimitError, match="already has 3 acknowledgements"):
        acknowledge(state, alert.alert_id, "ops-d", at(5), caps=caps)
    # A principal already counted may still change its own.
    state, _ = acknowledge(state, alert.alert_id, "ops-b", at(6), "later", caps=caps)
    assert len(state.records[alert.key].acks) == 3
    assert first != again


@pytest.mark.parametrize(
    ("by", "note", "error"),
    [("", "", "'by' must be"), ("x" * 65, "", "'by' must be"), ("ops", "n" * 281, "note must")],
)
def test_ack_sizes_are_checked(by: str, note: str, error: str) -> None:
    state, [alert] = run([(0, candidate(2, 0))])
    with pytest.raises(ValueError, match=error):
        acknowledge(state, alert.alert_id, by, at(1), note)


def test_ack_text_is_made_xml_safe() -> None:
    state, [alert] = run([(0, candidate(2, 0))])
    _, ack = acknowledge(state, alert.alert_id, "ops\x00", at(1), "a\x1bb\ud800c")
    assert (ack.by, ack.note) == ("ops\ufffd", "a\ufffdb\ufffdc")


def test_references_keep_the_alert_and_the_newest() -> None:
    config = LifecycleConfig(caps=Caps(references=4))
    steps: list[tuple[float, AlertCandidate | None]] = [(0, candidate(1, 0))]
    # Escalate and move the area each time: one Update per step.
    for i in range(1, 8):
        steps.append((i, candidate(1 + i % 3 + (i > 3), i, devices=(f"aq-{i:04d}",))))
    state, msgs = run(steps, config=config)
    rec = state.records[msgs[0].key]
    assert len(rec.references) == 4
    assert rec.references[0].identifier == msgs[0].identifier
    assert [r.identifier for r in rec.references[1:]] == [m.identifier for m in msgs[-3:]]
    assert all(len(m.references) <= 4 for m in msgs)


# ------------------------------------------------------------------ restart


def _reload(state: LifecycleState) -> LifecycleState:
    return LifecycleState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_restart_then_replay_of_the_same_candidate_sends_no_duplicate_alert() -> None:
    first = candidate(2, 0)
    state, msgs = on_candidate(LifecycleState(), first, at(0))
    assert [m.msg_type for m in msgs] == ["Alert"]
    # The service persisted the state but crashed before committing the Kafka offset:
    # after the restart the same candidate arrives again.
    state, msgs = on_candidate(_reload(state), first, at(5))
    assert msgs == []


def test_a_candidate_read_again_changes_no_state() -> None:
    """A takeover re-reads candidates whose offsets were not committed: the one an open
    alert last took is no news (nothing to write, its quiet timer not restarted); the
    same level detected later is."""
    first = candidate(2, 0)
    state, _ = on_candidate(LifecycleState(), first, at(0))
    again, msgs = on_candidate(_reload(state), first, at(5))
    assert msgs == []
    assert changed_keys(state, again) == frozenset()
    later, msgs = on_candidate(state, candidate(2, 5), at(5))
    assert msgs == []
    assert changed_keys(state, later) == {first.key}


def test_restart_keeps_a_pending_clear() -> None:
    state, _ = run([(0, candidate(2, 0)), (300, candidate(0, 300))])
    state, msgs = on_tick(_reload(state), at(300 + 1799))
    assert msgs == []
    state, msgs = on_tick(_reload(state), at(300 + 1800))
    assert [f"{m.msg_type}/{m.reason}" for m in msgs] == ["Cancel/cleared"]
    assert len(msgs[0].references) == 1


def test_stale_candidates_replayed_after_a_cancel_do_not_reopen() -> None:
    old = candidate(2, 0)
    state, msgs = run([(0, old), (60, candidate(0, 60)), (60 + 1800, None)])
    assert [m.msg_type for m in msgs] == ["Alert", "Cancel"]
    state, msgs = on_candidate(_reload(state), old, at(2000))
    assert msgs == []


def test_out_of_order_candidate_is_ignored() -> None:
    state, msgs = run([(0, candidate(2, 0)), (120, candidate(1, 120))])
    state, msgs = on_candidate(state, candidate(4, 60), at(130))
    assert msgs == []
    assert state.records["air_quality:6300300"].latest.level == 1


def test_closed_records_are_pruned_after_retention() -> None:
    config = LifecycleConfig(closed_retention_s=3600)
    state, _ = run([(0, candidate(2, 0)), (60, candidate(0, 60)), (1860, None)], config=config)
    assert state.records["air_quality:6300300"].status == "closed"
    state, _ = on_tick(state, at(1860 + 3600), config=config)
    assert state.records == {}


def test_state_is_plain_json_with_version() -> None:
    state, _ = run([(0, candidate(2, 0, hazard="earthquake"))])
    data = state.to_dict()
    assert data["version"] == 1
    assert json.loads(json.dumps(data)) == data
    assert _reload(state) == state
    with pytest.raises(ValueError, match="version"):
        LifecycleState.from_dict({**data, "version": 99})


def test_from_records_and_changed_keys() -> None:
    before, _ = run([(0, candidate(2, 0)), (0, candidate(2, 0, hazard="rain"))])
    after, _ = on_candidate(before, candidate(3, 60), at(60))
    assert changed_keys(before, after) == {"air_quality:6300300"}
    per_key = {k: r.model_dump(mode="json") for k, r in after.records.items()}
    assert LifecycleState.from_records(per_key) == after


# ------------------------------------------------------------------ config and input checks


def test_per_hazard_hold_times_are_configurable() -> None:
    config = LifecycleConfig(
        timings={
            "air_quality": HazardTiming(deescalate_hold_s=60, clear_hold_s=120, expire_after_s=900)
        }
    )
    _, msgs = run(
        [
            (0, candidate(3, 0)),
            (10, candidate(2, 10)),
            (70, None),
            (80, candidate(0, 80)),
            (200, None),
        ],
        config=config,
    )
    assert [f"{m.msg_type}/{m.reason}" for m in msgs] == [
        "Alert/new",
        "Update/de-escalated",
        "Cancel/cleared",
    ]
    # Hazards not named keep their defaults.
    assert config.timing("rain") == DEFAULT_TIMINGS["rain"]


def test_defaults_match_the_documented_hold_times() -> None:
    assert DEFAULT_TIMINGS["air_quality"].clear_hold_s == 30 * M
    assert DEFAULT_TIMINGS["flood"].clear_hold_s == 20 * M
    assert DEFAULT_TIMINGS["rain"].clear_hold_s == 60 * M
    assert DEFAULT_TIMINGS["earthquake"].clear_hold_s == 60


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        on_tick(LifecycleState(), at(0).replace(tzinfo=None))


def test_messages_are_frozen() -> None:
    _, [msg] = run([(0, candidate(2, 0))])
    assert isinstance(msg, AlertMessage)
    with pytest.raises(ValueError, match="frozen"):
        msg.level = 9  # type: ignore[misc]
