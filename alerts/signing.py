"""Webhook signatures: HMAC-SHA256 over a timestamp and the body, in the style of Stripe.

Every webhook POST carries one header::

    X-Civic-Signature: t=1735689600,v1=<64 hex digits>

``v1`` is the hex HMAC-SHA256, keyed by the subscription's secret, of
``f"{t}.".encode() + body`` (the raw body bytes, exactly as sent). A receiver recomputes it
and also checks that ``t`` is recent, so a captured request cannot be replayed later.
During a secret rotation the header may hold several ``v1`` entries; one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import SecretStr

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "sign",
    "signature",
    "verify",
]

SIGNATURE_HEADER = "X-Civic-Signature"
SIGNATURE_SCHEME = "v1"
#: How far a signature's timestamp may be from the receiver's clock, seconds (both ways).
DEFAULT_TOLERANCE_S = 300

Secret = str | bytes | SecretStr


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        msg = "webhook signing secret is empty"
        raise ValueError(msg)
    return key


def signature(secret: Secret, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}."`` + ``body``."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()


def sign(secret: Secret, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers to add to a webhook POST of ``body`` made at ``timestamp`` (Unix seconds)."""
    value = f"t={timestamp},{SIGNATURE_SCHEME}={signature(secret, body, timestamp)}"
    return {SIGNATURE_HEADER: value}


def _parse(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None, []
        elif name == SIGNATURE_SCHEME:
            sigs.append(value)
    return timestamp, sigs


def verify(
    secret: Secret,
    body: bytes,
    header: str | Mapping[str, str],
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``header`` is a valid, fresh signature of ``body`` under ``secret``.

    ``header`` is the header value, or a header mapping that contains it (looked up
    case-insensitively). ``now`` is the receiver's Unix time in seconds. A timestamp more
    than ``tolerance_s`` away from ``now`` fails; signatures compare in constant time.
    """
    if not isinstance(header, str):
        wanted = SIGNATURE_HEADER.lower()
        found = next((v for k, v in header.items() if k.lower() == wanted), None)
        if found is None:
            return False
        header = found
    timestamp, sigs = _parse(header)
    if timestamp is None or not sigs:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp)
    # Check every candidate without stopping early: no timing hint about which one matched.
    ok = False
    for sig in sigs:
        ok |= hmac.compare_digest(expected.encode(), sig.encode())
    return ok
