"""Webhook signatures: HMAC-SHA256 over a timestamp, the message id and the body.

Every webhook POST carries::

    X-Civic-Message-Id: 5b0c6a0e-7f0e-5d3c-9a51-0d6f3c1e2b4a
    X-Civic-Signature: t=1735689600,v2=<64 hex digits>

``v2`` is the hex HMAC-SHA256, keyed by the subscription's secret, of the bytes::

    f"{t}.{message_id}.".encode() + body

(``t`` in decimal Unix seconds, ``message_id`` as in ``X-Civic-Message-Id``, ``body`` the
raw body exactly as sent). Signing the id with the body means a receiver can trust it to
drop a replayed or repeated delivery (:mod:`alerts.receiver`); the timestamp bounds how
long a captured request stays usable (300 s by default, both ways). During a secret
rotation the header holds one ``v2`` entry per valid secret; one match is enough. The
attempt number (``X-Civic-Delivery-Attempt``) is informational and not signed: a receiver
must not act on it.

``v1`` (timestamp and body only, without the id) is gone: a receiver that still looks
for it fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from pydantic import SecretStr

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "MESSAGE_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "header_value",
    "sign",
    "signature",
    "verify",
]

SIGNATURE_HEADER = "X-Civic-Signature"
#: The message identifier, stable across retries and re-sends: receivers drop duplicates
#: by it (the lifecycle derives it from alert id and sequence, so a replay after a restart
#: gives the same one).
MESSAGE_ID_HEADER = "X-Civic-Message-Id"
SIGNATURE_SCHEME = "v2"
#: How far a signature's timestamp may be from the receiver's clock, seconds (both ways).
DEFAULT_TOLERANCE_S = 300

Secret = str | bytes | SecretStr
#: What a message id may be: it goes into the signed bytes between two dots.
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        msg = "webhook signing secret is empty"
        raise ValueError(msg)
    return key


def _signed(timestamp: int, message_id: str, body: bytes) -> bytes:
    if not _MESSAGE_ID.match(message_id):
        msg = f"message id must be 1-128 of A-Z a-z 0-9 _ -, got {message_id!r}"
        raise ValueError(msg)
    return f"{timestamp}.{message_id}.".encode() + body


def signature(secret: Secret, message_id: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{message_id}."`` + ``body``."""
    return hmac.new(_key(secret), _signed(timestamp, message_id, body), hashlib.sha256).hexdigest()


def header_value(secrets: Iterable[Secret], message_id: str, body: bytes, timestamp: int) -> str:
    """``t=...,v2=...[,v2=...]``: one signature per secret (two during a rotation)."""
    sigs = [f"{SIGNATURE_SCHEME}={signature(s, message_id, body, timestamp)}" for s in secrets]
    if not sigs:
        msg = "no webhook signing secret"
        raise ValueError(msg)
    return ",".join([f"t={timestamp}", *sigs])


def sign(secret: Secret, message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers to add to a webhook POST of ``body`` made at ``timestamp`` (Unix seconds)."""
    return {
        MESSAGE_ID_HEADER: message_id,
        SIGNATURE_HEADER: header_value([secret], message_id, body, timestamp),
    }


def _parse(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            if not value.isdigit() or len(value) > 12:
                return None, []
            timestamp = int(value)
        elif name == SIGNATURE_SCHEME:
            sigs.append(value)
    return timestamp, sigs


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify(
    secret: Secret,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``headers`` carry a valid, fresh signature of ``body`` and its message id.

    ``headers`` is the request's header mapping (looked up case-insensitively); ``now`` is
    the receiver's Unix time in seconds. A timestamp more than ``tolerance_s`` away from
    ``now`` fails; signatures compare in constant time. This checks authenticity only:
    drop repeats by message id as :mod:`alerts.receiver` shows.
    """
    header = _lookup(headers, SIGNATURE_HEADER)
    message_id = _lookup(headers, MESSAGE_ID_HEADER)
    if header is None or message_id is None or not _MESSAGE_ID.match(message_id):
        return False
    timestamp, sigs = _parse(header)
    if timestamp is None or not sigs:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, message_id, body, timestamp).encode()
    # Check every candidate without stopping early: no timing hint about which one matched.
    ok = False
    for sig in sigs:
        ok |= hmac.compare_digest(expected, sig.encode())
    return ok
