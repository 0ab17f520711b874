"""The JSON form of a message: same facts and times as CAP, with status."""

from __future__ import annotations

import json
from datetime import datetime

from alerts.cap import parse_cap, to_cap_xml
from alerts.messages import JSON_SCHEMA_ID, to_json_bytes, to_json_dict

from .factories import lifecycle_messages


def test_json_matches_cap() -> None:
    alert, update, cancel = lifecycle_messages("earthquake")
    body = to_json_dict(cancel, "Test")
    cap = parse_cap(to_cap_xml(cancel, "Test"))
    assert body["schema"] == JSON_SCHEMA_ID
    assert body["status"] == cap["status"] == "Test"
    assert body["actual"] is False
    # JSON carries milliseconds, CAP whole seconds: the same moment.
    assert body["sent"][:19] == cap["sent"][:19]
    assert body["sent"][19:] == f".{cancel.sent.microsecond // 1000:03d}" + cap["sent"][19:]
    assert body["msg_type"] == cap["msgType"] == "Cancel"
    assert [(r["sender"], r["identifier"], r["sent"]) for r in body["references"]] == cap[
        "references"
    ]
    assert [r["identifier"] for r in body["references"]] == [alert.identifier, update.identifier]
    info = cap["infos"][0]
    assert body["urgency"] == info["urgency"] == "Past"
    assert body["category"] == info["category"]
    assert body["certainty"] == info["certainty"]
    assert body["expires"] is None
    assert len(body["area"]["cells"]) == 2


def test_json_times_have_offsets_and_no_z() -> None:
    body = to_json_dict(lifecycle_messages("air_quality")[0], "Exercise")
    for field in ("sent", "event_time", "detected_at", "expires"):
        assert body[field].endswith("+08:00"), field


def test_json_sent_and_detected_at_carry_milliseconds() -> None:
    msg = lifecycle_messages("earthquake")[0]
    sent = msg.sent.replace(microsecond=123_456)
    detected = msg.detected_at.replace(microsecond=7_999)
    body = to_json_dict(msg.model_copy(update={"sent": sent, "detected_at": detected}), "Test")
    assert body["sent"].endswith(".123+08:00"), body["sent"]
    assert body["detected_at"].endswith(".007+08:00"), body["detected_at"]
    assert datetime.fromisoformat(body["sent"]) == sent.replace(microsecond=123_000)
    cap = parse_cap(to_cap_xml(msg.model_copy(update={"sent": sent}), "Test"))
    assert "." not in cap["sent"]  # CAP keeps whole seconds


def test_json_bytes_are_stable_utf8() -> None:
    msg = lifecycle_messages("river")[1]
    raw = to_json_bytes(msg, "Actual")
    assert raw == to_json_bytes(msg, "Actual")
    decoded = json.loads(raw)
    assert decoded["status"] == "Actual"
    assert decoded["actual"] is True
    assert decoded == json.loads(json.dumps(to_json_dict(msg, "Actual")))
    # Compact, sorted and UTF-8 (not \u escapes): what the receiver's HMAC sees.
    compact = json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert raw == compact.encode()
    assert b'": ' not in raw
