"""The pure parts of the alert service and its delivery: records, topics, requests, config."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from alerts.cap import parse_cap
from alerts.delivery import (
    DeliveryResult,
    MessageRef,
    ack_point,
    alert_point,
    delivery_point,
    mqtt_topic,
)
from alerts.http import open_alert_json
from alerts.lifecycle import LifecycleState, acknowledge, on_tick
from alerts.service import (
    alerts_topic_record,
    deadletter_record,
    replay_state,
    state_updates,
)
from alerts.signing import MESSAGE_ID_HEADER, verify
from alerts.subscriptions import Subscription, derive_secret
from alerts.webhooks import MessageView, OffsetTracker, webhook_request
from civic_iot.retry import retryable_status
from civic_iot.settings import InfluxSettings
from civic_iot.times import to_ns

from .factories import T0, at, candidate, lifecycle_messages, run

KEY = b"k" * 32


def _replay(updates: list[tuple[bytes, bytes | None]]) -> LifecycleState:
    return replay_state([(k, v, 1) for k, v in updates])


# --------------------------------------------------------------------------- state topic


def test_state_updates_replay_to_the_same_state_including_tombstones() -> None:
    s1, _ = run([(0, candidate(2, 0)), (1, candidate(3, 1, hazard="flood"))])
    log = state_updates(LifecycleState(), s1)
    assert [k for k, _ in log] == [b"air_quality:6300300", b"flood:6300300"]
    assert _replay(log) == s1

    # Clear one alert, then prune it: the compacted topic ends with a tombstone for it.
    s2, msgs = run([(10, candidate(0, 10))], state=s1)
    s3, cancel = on_tick(s2, at(10 + 1800))
    assert [m.msg_type for m in cancel] == ["Cancel"]
    s4, _ = on_tick(s3, at(10 + 1800 + 24 * 3600 + 1))
    steps = [state_updates(s1, s2), state_updates(s2, s3), state_updates(s3, s4)]
    # The cleared air alert is pruned (a tombstone); the silent flood alert has expired.
    assert steps[2][0] == (b"air_quality:6300300", None)
    assert s4.records["flood:6300300"].status == "closed"
    full = log + [u for step in steps for u in step]
    assert _replay(full) == s4
    assert "air_quality:6300300" not in s4.records
    assert _replay(log + steps[0] + steps[1]) == s3
    assert msgs == []


def test_state_updates_empty_when_nothing_changed() -> None:
    s1, _ = run([(0, candidate(2, 0))])
    s2, _ = run([(1, candidate(2, 1))], state=s1)
    assert state_updates(s1, s1) == []
    # The newest candidate is kept even without a message: that is a change to persist.
    assert [k for k, _ in state_updates(s1, s2)] == [b"air_quality:6300300"]


def test_replay_refuses_another_state_version() -> None:
    s1, _ = run([(0, candidate(2, 0))])
    [(key, value)] = state_updates(LifecycleState(), s1)
    with pytest.raises(ValueError, match="state version 99"):
        replay_state([(key, value, 99)])
    assert replay_state([(None, value, 1)]) == LifecycleState()


def test_acknowledgement_survives_the_state_topic() -> None:
    s1, [alert] = run([(0, candidate(2, 0))])
    s2, _ = acknowledge(s1, alert.alert_id, "duty", at(5), "seen")
    assert _replay(state_updates(LifecycleState(), s1) + state_updates(s1, s2)) == s2


# --------------------------------------------------------------------------- Kafka records


def test_alerts_topic_record_holds_json_and_cap_of_the_same_message() -> None:
    msg = lifecycle_messages("earthquake")[1]
    key, value = alerts_topic_record(msg, "Exercise")
    body = json.loads(value)
    assert key == msg.alert_id.encode()
    assert (body["identifier"], body["msg_type"], body["status"]) == (
        msg.identifier,
        "Update",
        "Exercise",
    )
    assert body["json"]["identifier"] == msg.identifier
    assert (body["sent_ns"], body["detected_at_ns"]) == (to_ns(msg.sent), to_ns(msg.detected_at))
    cap = parse_cap(body["cap_xml"])
    assert (cap["identifier"], cap["msgType"], cap["status"]) == (
        msg.identifier,
        "Update",
        "Exercise",
    )


def test_deadletter_record_names_the_failure_without_the_body() -> None:
    msg = lifecycle_messages("flood")[0]
    ref = MessageRef.of(msg)
    result = DeliveryResult("webhook", "agency", ref, "failed", 6, 503, 123, "HTTP 503")
    key, value = deadletter_record(result)
    body = json.loads(value)
    assert key == msg.identifier.encode()
    assert body == {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "key": msg.key,
        "msg_type": "Alert",
        "channel": "webhook",
        "subscriber": "agency",
        "attempts": 6,
        "status_code": 503,
        "error": "HTTP 503",
        "failed_at_ns": 123,
    }


# --------------------------------------------------------------------------- InfluxDB points


def test_alert_point_follows_storage_md() -> None:
    msg = lifecycle_messages("flood")[0]
    p = alert_point(msg, "Exercise", InfluxSettings())
    assert (p.bucket, p.measurement) == ("alerts", "alert")
    assert dict(p.tags) == {
        "area": "6300300",
        "hazard": "flood",
        "msg_type": "Alert",
        "severity": "Moderate",
        "status": "Exercise",
    }
    # Field types as stored before the core's Point (dashboards read them): ints stay ints.
    assert dict(p.fields) == {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "sequence": 1,
        "level": 2,
        "headline": "flood level 2",
        "reason": "new",
        "latency_ms": 0.0,  # the factory issues at the detection time
    }
    assert [type(v) for _, v in p.fields] == [str, str, int, int, str, str, float]
    line = p.line()
    assert line.startswith(
        "alert,area=6300300,hazard=flood,msg_type=Alert,severity=Moderate,status=Exercise "
    )
    for part in (
        f'identifier="{msg.identifier}"',
        f'alert_id="{msg.alert_id}"',
        "sequence=1i",
        "level=2i",
        'reason="new"',
        "latency_ms=0.0",
    ):
        assert part in line
    assert line.endswith(str(int(msg.sent.timestamp() * 1e9)))


def test_delivery_point_and_latency() -> None:
    msg = lifecycle_messages("rain")[0]
    at_ns = int(msg.sent.timestamp() * 1e9) + 250_000_000
    ref = MessageRef.of(msg)
    result = DeliveryResult("webhook", "agency-1", ref, "retry", 2, 500, at_ns, "HTTP 500")
    assert result.latency_ms == pytest.approx(250.0)
    p = delivery_point(result, InfluxSettings())
    assert p.measurement == "delivery"
    assert [type(v) for _, v in p.fields] == [str, int, int, float]
    line = p.line()
    assert line.startswith("delivery,channel=webhook,outcome=retry,subscriber=agency-1 ")
    assert "attempt=2i" in line
    assert "status_code=500i" in line
    assert f'identifier="{msg.identifier}"' in line
    assert line.endswith(str(at_ns))


def test_ack_point() -> None:
    s1, [alert] = run([(0, candidate(2, 0))])
    _, ack = acknowledge(s1, alert.alert_id, "duty officer", at(3), 'on it\n"now"')
    p = ack_point(ack, InfluxSettings())
    line = p.line()
    assert line.startswith("ack,area=6300300,hazard=air_quality ")
    assert 'by="duty officer"' in line
    # A newline in a note is stored as a newline (only \\ and " are escaped).
    assert 'note="on it\n\\"now\\""' in line
    assert line.endswith(f" {to_ns(at(3))}")


# --------------------------------------------------------------------------- MQTT and webhooks


@pytest.mark.parametrize(
    ("area", "topic"),
    [
        ("6300300", "alerts/flood/6300300"),
        ("quake-20250601-0001", "alerts/flood/quake-20250601-0001"),
        ("a/b+c#d", "alerts/flood/a_b_c_d"),
    ],
)
def test_mqtt_topic(area: str, topic: str) -> None:
    msg = lifecycle_messages("flood")[0].model_copy(update={"area_code": area})
    assert mqtt_topic(msg) == topic


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (422, False),
    ],
)
def test_retryable_status(status: int, retry: bool) -> None:
    assert retryable_status(status) is retry


def _sub(fmt: Any = "json", **over: Any) -> Subscription:
    fields: dict[str, Any] = {
        "id": "0b6c0f3e-9d55-4b7e-8f21-3c4d5e6f7a8b",
        "owner": "wra",
        "url": "https://agency.example/hook",
        "format": fmt,
        "created_at": T0,
        "updated_at": T0,
        "nonce": "ab" * 16,
    }
    return Subscription(**(fields | over))


@pytest.mark.parametrize("fmt", ["cap", "json"])
def test_webhook_request_is_signed_and_names_the_message(fmt: str) -> None:
    msg = lifecycle_messages("river")[2]
    _, value = alerts_topic_record(msg, "Test")
    view = MessageView.from_record(value)
    sub = _sub(fmt)
    secret = derive_secret(KEY, sub.id, sub.nonce)
    req = webhook_request(sub, [secret], view, attempt=3, now_s=1_750_000_000)
    assert req.url == "https://agency.example/hook"
    assert req.headers[MESSAGE_ID_HEADER] == msg.identifier
    assert req.headers["X-Civic-Delivery-Attempt"] == "3"
    assert req.headers["X-Civic-Status"] == "Test"
    assert verify(secret, req.body, req.headers, now=1_750_000_010)
    assert not verify(secret, req.body + b" ", req.headers, now=1_750_000_010)
    # The message id is signed: the same body under another id does not verify.
    other = dict(req.headers) | {MESSAGE_ID_HEADER: lifecycle_messages("river")[0].identifier}
    assert not verify(secret, req.body, other, now=1_750_000_010)
    if fmt == "cap":
        assert req.headers["Content-Type"].startswith("application/cap+xml")
        assert parse_cap(req.body)["msgType"] == "Cancel"
    else:
        assert req.headers["Content-Type"].startswith("application/json")
        assert json.loads(req.body)["msg_type"] == "Cancel"
        # The body read back from the topic is the bytes the message encodes to.
        from alerts.messages import to_json_bytes  # noqa: PLC0415

        assert req.body == to_json_bytes(msg, "Test")


def test_rotation_signs_with_both_secrets_during_the_grace_period() -> None:
    sub = _sub(previous_nonce="cd" * 16, previous_until=T0 + timedelta(hours=1))
    old = derive_secret(KEY, sub.id, "cd" * 16)
    new = derive_secret(KEY, sub.id, sub.nonce)
    assert old.get_secret_value() != new.get_secret_value()
    assert new.get_secret_value().startswith("whsec_")
    msg = lifecycle_messages("river")[0]
    view = MessageView.from_record(alerts_topic_record(msg, "Test")[1])
    from alerts.subscriptions import signing_secrets  # noqa: PLC0415

    during = signing_secrets(sub, KEY, T0 + timedelta(minutes=59))
    after = signing_secrets(sub, KEY, T0 + timedelta(minutes=61))
    assert [s.get_secret_value() for s in during] == [
        new.get_secret_value(),
        old.get_secret_value(),
    ]
    assert [s.get_secret_value() for s in after] == [new.get_secret_value()]
    req = webhook_request(sub, during, view, attempt=1, now_s=1_750_000_000)
    assert verify(old, req.body, req.headers, now=1_750_000_000)
    assert verify(new, req.body, req.headers, now=1_750_000_000)
    # Another key, another subscription, another nonce: another secret.
    assert derive_secret(b"x" * 32, sub.id, sub.nonce) != new


def test_message_view_refuses_what_is_not_an_alerts_record() -> None:
    for value in (b"", b"{}", b"[1]", b'{"json": 1}', b"\xff"):
        with pytest.raises(ValueError, match="not an alerts topic record"):
            MessageView.from_record(value)


def test_offset_tracker_commits_below_the_first_pending_record() -> None:
    from aiokafka import TopicPartition  # noqa: PLC0415

    tp, other = TopicPartition("alerts", 0), TopicPartition("alerts", 1)
    t = OffsetTracker()
    t.take(tp, 10, 2)  # two subscribers
    t.take(tp, 11, 0)  # nobody wants it
    t.take(tp, 12, 1)
    t.take(other, 5, 0)
    assert t.committable() == {tp: 10, other: 6}
    t.done(tp, 12)
    assert t.committable()[tp] == 10  # 10 still waits for one delivery
    t.done(tp, 10)
    assert t.committable()[tp] == 10
    t.done(tp, 10)
    assert t.committable()[tp] == 13
    assert t.pending == 0
    t.take(tp, 13, 1)
    t.forget([tp])
    t.done(tp, 13)  # a delivery ending after its partition was revoked
    assert t.committable() == {other: 6}


# --------------------------------------------------------------------------- HTTP views


def test_open_alert_json() -> None:
    s1, [alert] = run([(0, candidate(2, 0)), (5, candidate(0, 5))])
    s2, _ = acknowledge(s1, alert.alert_id, "duty", at(6), "seen")
    [rec] = s2.open_alerts()
    view = open_alert_json(rec)
    assert view["alert_id"] == alert.alert_id
    assert (view["level"], view["latest_level"], view["severity"]) == (2, 0, "Moderate")
    assert view["opened"] == "2025-06-01T12:00:00+08:00"
    assert view["clearing_since"] == "2025-06-01T12:00:05+08:00"
    assert view["acknowledgements"] == [
        {
            "alert_id": alert.alert_id,
            "key": "air_quality:6300300",
            "by": "duty",
            "at": "2025-06-01T12:00:06+08:00",
            "note": "seen",
        }
    ]
    json.dumps(view)
