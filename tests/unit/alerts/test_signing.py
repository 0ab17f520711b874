"""Webhook signatures (v2: timestamp, message id, body) and the documented receiver example:
round trip, tampering, wrong key, another message id, stale and future timestamps, replay."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from alerts.receiver import Refused, ReplayGuard, verify_delivery
from alerts.signing import MESSAGE_ID_HEADER, SIGNATURE_HEADER, header_value, sign, verify

SECRET = "whsec-test-0123456789"
BODY = b'{"identifier":"abc","status":"Exercise"}'
MID = "5b0c6a0e-7f0e-5d3c-9a51-0d6f3c1e2b4a"
T = 1_735_689_600


def test_header_format_and_known_value() -> None:
    headers = sign(SECRET, MID, BODY, T)
    assert list(headers) == [MESSAGE_ID_HEADER, SIGNATURE_HEADER]
    signed = f"1735689600.{MID}.".encode() + BODY
    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert headers == {
        "X-Civic-Message-Id": MID,
        "X-Civic-Signature": f"t=1735689600,v2={expected}",
    }


@pytest.mark.parametrize(
    ("secret", "body", "mid", "now", "ok"),
    [
        (SECRET, BODY, MID, T, True),
        (SECRET, BODY, MID, T + 300, True),  # at the tolerance
        (SECRET, BODY, MID, T - 300, True),
        (SECRET, BODY, MID, T + 301, False),  # stale: a replay
        (SECRET, BODY, MID, T - 301, False),  # from the future
        ("another-secret", BODY, MID, T, False),
        (SECRET, BODY + b" ", MID, T, False),  # body changed in transit
        (SECRET, BODY.replace(b"Exercise", b"Actual"), MID, T, False),
        (SECRET, BODY, "another-message-id", T, False),  # the id is signed
    ],
)
def test_verify_table(secret: str, body: bytes, mid: str, now: int, ok: bool) -> None:
    headers = sign(SECRET, MID, BODY, T) | {MESSAGE_ID_HEADER: mid}
    assert verify(secret, body, headers, now=now) is ok


def test_headers_are_looked_up_case_insensitively() -> None:
    headers = {k.lower(): v for k, v in sign(SECRET, MID, BODY, T).items()}
    assert verify(SECRET, BODY, headers, now=T)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "v2=deadbeef",
        f"t={T}",
        f"t=soon,v2={'0' * 64}",
        f"t={T},v2={'0' * 64}",
        f"t=-{T},v2={'0' * 64}",
        # The old scheme (no message id) is not accepted any more.
        f"t={T},v1={hmac.new(SECRET.encode(), f'{T}.'.encode() + BODY, 'sha256').hexdigest()}",
    ],
)
def test_malformed_or_unsigned_headers_fail(header: str) -> None:
    assert not verify(SECRET, BODY, {SIGNATURE_HEADER: header, MESSAGE_ID_HEADER: MID}, now=T)


def test_missing_or_bad_message_id_fails() -> None:
    headers = sign(SECRET, MID, BODY, T)
    assert not verify(SECRET, BODY, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, now=T)
    assert not verify(SECRET, BODY, headers | {MESSAGE_ID_HEADER: "a.b"}, now=T)
    with pytest.raises(ValueError, match="message id"):
        sign(SECRET, "has.dots", BODY, T)


def test_rotation_header_carries_both_and_either_verifies() -> None:
    value = header_value([SecretStr("new-secret"), SecretStr("old-secret")], MID, BODY, T)
    headers = {SIGNATURE_HEADER: value, MESSAGE_ID_HEADER: MID}
    assert value.count("v2=") == 2
    assert verify("new-secret", BODY, headers, now=T)
    assert verify("old-secret", BODY, headers, now=T)
    assert not verify("other-secret", BODY, headers, now=T)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        sign("", MID, BODY, T)
    with pytest.raises(ValueError, match="no webhook signing secret"):
        header_value([], MID, BODY, T)


# --------------------------------------------------------------------------- receiver example


def test_receiver_accepts_once_then_recognises_the_repeat() -> None:
    guard = ReplayGuard()
    headers = sign(SECRET, MID, BODY, T)
    first = verify_delivery(SECRET, headers, BODY, guard, now=T + 1)
    assert (first.message_id, first.first_time) == (MID, True)
    # A retry or a replay within the window: the same id, signed afresh or not.
    again = verify_delivery(SECRET, sign(SECRET, MID, BODY, T + 5), BODY, guard, now=T + 6)
    assert again.first_time is False


@pytest.mark.parametrize(
    ("secret", "body", "now", "error"),
    [
        ("wrong", BODY, T, "bad signature"),
        (SECRET, BODY + b"!", T, "bad signature"),
        (SECRET, BODY, T + 301, "too old"),
    ],
)
def test_receiver_refuses(secret: str, body: bytes, now: int, error: str) -> None:
    with pytest.raises(Refused, match=error):
        verify_delivery(secret, sign(SECRET, MID, BODY, T), body, ReplayGuard(), now=now)


def test_receiver_refuses_missing_headers_and_agrees_with_verify() -> None:
    with pytest.raises(Refused, match="missing header"):
        verify_delivery(SECRET, {}, BODY, ReplayGuard(), now=T)
    headers = sign(SECRET, MID, BODY, T)
    assert verify(SECRET, BODY, headers, now=T)
    assert verify_delivery(SECRET, headers, BODY, ReplayGuard(), now=T).first_time


def test_replay_guard_forgets_after_keep_s_and_is_bounded() -> None:
    guard = ReplayGuard(keep_s=600, max_ids=3)
    assert guard.first_time("a", 0)
    assert not guard.first_time("a", 599)
    assert guard.first_time("a", 1200)  # kept 600 s only
    for i, mid in enumerate("bcde"):
        assert guard.first_time(mid, 1201 + i)
    assert len(guard._seen) <= 3
