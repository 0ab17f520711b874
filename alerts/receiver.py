"""How a webhook receiver verifies a delivery: the example of ``docs/webhooks.md``.

Standard library only, so an agency can copy it as it is. A receiver must:

1. check the signature (:func:`alerts.signing.verify` shows the same computation):
   ``X-Civic-Signature: t=<unix s>,v2=<hex>[,v2=<hex>]`` where ``v2`` is
   HMAC-SHA256(secret, ``f"{t}.{message_id}."`` + raw body), ``message_id`` being the
   ``X-Civic-Message-Id`` header; any one ``v2`` matching is enough (two during a secret
   rotation);
2. refuse a timestamp more than 300 s from its clock (a captured request goes stale);
3. drop a message id it has already accepted: the service delivers at least once (a
   retry after a lost answer, a redelivery after a crash) and an attacker could replay a
   captured request within the 300 s. Answer 2xx to such a repeat (so the service stops
   sending it) and do not act on it again. Keep ids at least as long as the tolerance
   window (both ways: 600 s); longer (a day) also absorbs redeliveries after an outage.

Answer 2xx quickly once a message is verified and stored; do the work afterwards. A 3xx
is a failure (redirects are not followed), 4xx other than 408/425/429 is final (the
message is dead-lettered), 5xx and timeouts are retried.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Accepted", "Refused", "ReplayGuard", "verify_delivery"]

TOLERANCE_S = 300


class Refused(Exception):  # noqa: N818 - a receiver's verdict, as the docs name it
    """Not a valid delivery: answer 401 (or 400) and drop it."""


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    #: False for a message id accepted before: answer 2xx, do not act on it again.
    first_time: bool


@dataclass
class ReplayGuard:
    """The message ids accepted recently (kept ``keep_s`` seconds, at most ``max_ids``)."""

    keep_s: float = 86_400.0
    max_ids: int = 100_000
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def first_time(self, message_id: str, now: float) -> bool:
        while self._seen and (
            len(self._seen) >= self.max_ids or next(iter(self._seen.values())) < now - self.keep_s
        ):
            self._seen.popitem(last=False)
        if message_id in self._seen:
            return False
        self._seen[message_id] = now
        return True


def _header(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    raise Refused(f"missing header {name}")


def verify_delivery(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    guard: ReplayGuard,
    now: float | None = None,
) -> Accepted:
    """Verify one webhook POST (``body``: the raw bytes as received).

    Raises:
        Refused: bad or missing signature, stale timestamp.
    """
    now = time.time() if now is None else now
    message_id = _header(headers, "X-Civic-Message-Id")
    t, sigs = None, []
    for part in _header(headers, "X-Civic-Signature").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            t = int(value)
        elif name == "v2":
            sigs.append(value)
    if t is None or not sigs:
        raise Refused("malformed X-Civic-Signature")
    if abs(now - t) > TOLERANCE_S:
        raise Refused("signature timestamp too old or in the future")
    signed = f"{t}.{message_id}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, s) for s in sigs):
        raise Refused("bad signature")
    return Accepted(message_id, guard.first_time(message_id, now))
