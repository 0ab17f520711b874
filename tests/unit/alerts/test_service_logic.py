"""The pure parts of the alert service and its delivery: records, topics, requests, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from alerts.cap import parse_cap
from alerts.delivery import (
    MESSAGE_ID_HEADER,
    DeliveryResult,
    SubscriptionError,
    ack_point,
    alert_point,
    delivery_point,
    load_subscriptions,
    mqtt_topic,
    retryable_status,
    webhook_request,
)
from alerts.http import open_alert_json
from alerts.lifecycle import LifecycleState, acknowledge, on_tick
from alerts.service import (
    alerts_topic_record,
    deadletter_record,
    replay_state,
    state_updates,
)
from alerts.signing import verify
from alerts.subscriptions import Subscription
from civic_iot.settings import InfluxSettings
from civic_iot.times import to_ns

from .factories import at, candidate, lifecycle_messages, run

REPO = Path(__file__).resolve().parents[3]


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
    cap = parse_cap(body["cap_xml"])
    assert (cap["identifier"], cap["msgType"], cap["status"]) == (
        msg.identifier,
        "Update",
        "Exercise",
    )


def test_deadletter_record_names_the_failure_without_the_body() -> None:
    msg = lifecycle_messages("flood")[0]
    result = DeliveryResult("webhook", "agency", msg, "failed", 6, 503, 123, "HTTP 503")
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
    result = DeliveryResult("webhook", "agency-1", msg, "retry", 2, 500, at_ns, "HTTP 500")
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


@pytest.mark.parametrize("fmt", ["cap", "json"])
def test_webhook_request_is_signed_and_names_the_message(fmt: str) -> None:
    msg = lifecycle_messages("river")[2]
    sub = Subscription(id="a", url="https://agency.example/hook", format=fmt, secret="k")
    req = webhook_request(sub, SecretStr("k"), msg, "Test", attempt=3, now_s=1_750_000_000)
    assert req.url == "https://agency.example/hook"
    assert req.headers[MESSAGE_ID_HEADER] == msg.identifier
    assert req.headers["X-Civic-Delivery-Attempt"] == "3"
    assert req.headers["X-Civic-Status"] == "Test"
    assert verify("k", req.body, req.headers, now=1_750_000_010)
    assert not verify("k", req.body + b" ", req.headers, now=1_750_000_010)
    if fmt == "cap":
        assert req.headers["Content-Type"].startswith("application/cap+xml")
        assert parse_cap(req.body)["msgType"] == "Cancel"
    else:
        assert req.headers["Content-Type"].startswith("application/json")
        assert json.loads(req.body)["msg_type"] == "Cancel"


# --------------------------------------------------------------------------- subscriptions file


def test_load_subscriptions_resolves_secret_refs(tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(
        "subscriptions:\n"
        "  - id: water\n"
        "    url: https://water.example/hook\n"
        "    hazards: [flood, river]\n"
        "    min_severity: Moderate\n"
        "    townships: ['6300300']\n"
        "    secret_ref: WATER_SECRET\n",
        encoding="utf-8",
    )
    [(sub, secret)] = load_subscriptions(path, {"WATER_SECRET": "s3"})
    assert sub.id == "water"
    assert sub.hazards == frozenset({"flood", "river"})
    assert secret.get_secret_value() == "s3"
    assert "s3" not in repr(sub)


@pytest.mark.parametrize(
    ("text", "env", "error"),
    [
        (
            "subscriptions:\n  - {id: a, url: 'https://a.example', secret: inline}\n",
            {},
            "writes its secret in the file",
        ),
        (
            "subscriptions:\n  - {id: a, url: 'https://a.example', secret_ref: A_KEY}\n",
            {},
            "'A_KEY'",
        ),
        (
            "subscriptions:\n"
            "  - {id: a, url: 'https://a.example', secret_ref: K}\n"
            "  - {id: a, url: 'https://b.example', secret_ref: K}\n",
            {"K": "x"},
            "appears twice",
        ),
        ("subscriptions:\n  - {id: a, url: 'not a url', secret_ref: K}\n", {"K": "x"}, "invalid"),
        ("subscriptions: {id: a}\n", {}, "must be a list"),
    ],
)
def test_load_subscriptions_refuses(
    tmp_path: Path, text: str, env: dict[str, str], error: str
) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SubscriptionError, match=error):
        load_subscriptions(path, env)


def test_missing_file_means_no_subscriptions_and_the_shipped_file_loads(tmp_path: Path) -> None:
    assert load_subscriptions(tmp_path / "none.yaml", {}) == []
    assert load_subscriptions(REPO / "deploy" / "subscriptions.yaml", {}) == []


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
