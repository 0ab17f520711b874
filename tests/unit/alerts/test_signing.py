"""Webhook signatures: round trip, tampering, wrong key, stale and future timestamps."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from alerts.signing import SIGNATURE_HEADER, sign, signature, verify

SECRET = "whsec-test-0123456789"
BODY = b'{"identifier":"abc","status":"Exercise"}'
T = 1_735_689_600


def test_header_format_and_known_value() -> None:
    headers = sign(SECRET, BODY, T)
    assert list(headers) == [SIGNATURE_HEADER] == ["X-Civic-Signature"]
    expected = hmac.new(SECRET.encode(), b"1735689600." + BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"t=1735689600,v1={expected}"


def test_round_trip() -> None:
    header = sign(SECRET, BODY, T)[SIGNATURE_HEADER]
    assert verify(SECRET, BODY, header, now=T + 10)


@pytest.mark.parametrize(
    ("secret", "body", "now", "ok"),
    [
        (SECRET, BODY, T, True),
        (SECRET, BODY, T + 300, True),  # at the tolerance
        (SECRET, BODY, T - 300, True),
        (SECRET, BODY, T + 301, False),  # stale: a replay
        (SECRET, BODY, T - 301, False),  # from the future
        ("another-secret", BODY, T, False),
        (SECRET, BODY + b" ", T, False),  # body changed in transit
        (SECRET, BODY.replace(b"Exercise", b"Actual"), T, False),
    ],
)
def test_verify_table(secret: str, body: bytes, now: int, ok: bool) -> None:
    header = sign(SECRET, BODY, T)[SIGNATURE_HEADER]
    assert verify(secret, body, header, now=now) is ok


def test_custom_tolerance() -> None:
    header = sign(SECRET, BODY, T)[SIGNATURE_HEADER]
    assert not verify(SECRET, BODY, header, now=T + 61, tolerance_s=60)
    assert verify(SECRET, BODY, header, now=T + 59, tolerance_s=60)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "v1=deadbeef",
        f"t={T}",
        f"t=soon,v1={'0' * 64}",
        f"t={T},v1={'0' * 64}",
        f"t={T},v0={signature(SECRET, BODY, T)}",  # unknown scheme only
    ],
)
def test_malformed_or_wrong_headers_fail(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=T)


def test_retimestamped_signature_fails() -> None:
    # Moving the timestamp forward to dodge the tolerance check breaks the HMAC.
    sig = signature(SECRET, BODY, T)
    assert not verify(SECRET, BODY, f"t={T + 1000},v1={sig}", now=T + 1000)


def test_one_matching_v1_among_several_is_enough() -> None:
    good = signature(SECRET, BODY, T)
    bad = signature("old-secret", BODY, T)
    assert verify(SECRET, BODY, f"t={T},v1={bad},v1={good}", now=T)
    assert not verify(SECRET, BODY, f"t={T},v1={bad}", now=T)


def test_header_mapping_is_looked_up_case_insensitively() -> None:
    headers = sign(SECRET, BODY, T)
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify(SECRET, BODY, lowered, now=T)
    assert not verify(SECRET, BODY, {"Content-Type": "application/json"}, now=T)


def test_secret_kinds() -> None:
    header = sign(SecretStr(SECRET), BODY, T)[SIGNATURE_HEADER]
    assert verify(SECRET.encode(), BODY, header, now=T)
    with pytest.raises(ValueError, match="empty"):
        sign("", BODY, T)
