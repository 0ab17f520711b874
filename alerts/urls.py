"""Where webhooks may go: the SSRF guard of the alert service.

A subscription's URL is chosen by an agency, and the alert service POSTs to it from
inside the operator's network, so the URL must not reach what only that network can:
the loopback interface, private (RFC 1918) and unique-local (``fc00::/7``) ranges,
link-local ones (``169.254.0.0/16``: cloud metadata services; ``fe80::/10``), ``0.0.0.0``
and ``::``, multicast, and every other range that is not globally routable (Python's
:attr:`ipaddress.IPv4Address.is_global`). IPv4-mapped IPv6 addresses are judged as the
IPv4 address they carry.

:class:`UrlPolicy` says what is allowed: ``https`` only unless ``allow_http``, and no
refused address unless it is inside one of ``allowed_networks``
(``CIVIC_ALERTS__WEBHOOK_ALLOWED_NETWORKS``: the demo's and the tests' receivers on
127.0.0.1 need ``["127.0.0.0/8"]``). It is applied twice:

- when a subscription is created (:meth:`UrlPolicy.check_url`: scheme, no user info, an
  address literal judged at once; a host name resolved once, for a clear answer);
- at every connection (:class:`GuardedResolver`): the addresses a host name resolves to
  are judged right before aiohttp connects to exactly those addresses, so a name that
  resolved to a public address at creation and to ``127.0.0.1`` later (DNS rebinding) is
  refused at connect time. aiohttp does not resolve address literals, so the delivery
  calls :meth:`UrlPolicy.check_url` before each attempt too.

Redirects are never followed (:mod:`alerts.webhooks`), so a receiver cannot send the
request on to an address the policy refuses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

__all__ = ["AddressRefusedError", "GuardedResolver", "UrlPolicy", "UrlRefusedError"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048


class UrlRefusedError(ValueError):
    """A webhook URL the policy does not allow (the message says why)."""


class AddressRefusedError(OSError):
    """A host name resolved to an address the policy does not allow (at connect time)."""


def _plain(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """What webhook URLs and addresses are allowed (see the module doc)."""

    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, allow_http: bool, networks: Iterable[str]) -> UrlPolicy:
        """From settings: ``networks`` in CIDR notation (``127.0.0.0/8``, ``::1/128``)."""
        return cls(
            allow_http=allow_http,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        )

    def address_allowed(self, address: str | IPAddress) -> bool:
        """Whether a connection to ``address`` is allowed."""
        try:
            ip = _plain(ipaddress.ip_address(address))
        except ValueError:
            return False  # not an address (a zone id, garbage): nothing to connect to
        if any(ip in net for net in self.allowed_networks if net.version == ip.version):
            return True
        return ip.is_global and not ip.is_multicast

    def why_refused(self, address: str) -> str:
        return (
            f"address {address} is not a public address (loopback, private, link-local, "
            "unique-local, unspecified, multicast or reserved) and not in "
            "alerts.webhook_allowed_networks"
        )

    def check_url(self, url: str) -> URL:
        """``url`` parsed, or :class:`UrlRefusedError` naming what is wrong with it."""
        if len(url) > MAX_URL_LENGTH:
            msg = f"URL longer than {MAX_URL_LENGTH} characters"
            raise UrlRefusedError(msg)
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            msg = f"not a URL: {exc}"
            raise UrlRefusedError(msg) from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parsed.scheme not in schemes:
            msg = f"URL scheme must be {' or '.join(schemes)}, got {parsed.scheme or 'none'!r}"
            raise UrlRefusedError(msg)
        if parsed.user is not None or parsed.password is not None:
            msg = "URL must not carry a user name or password"
            raise UrlRefusedError(msg)
        host = parsed.raw_host
        if not host:
            msg = "URL has no host"
            raise UrlRefusedError(msg)
        if parsed.fragment:
            msg = "URL must not have a fragment"
            raise UrlRefusedError(msg)
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            if "%" in literal or ":" in literal:
                msg = f"URL host {host!r} is not a valid address or name"
                raise UrlRefusedError(msg) from None
            return parsed
        if not self.address_allowed(literal):
            raise UrlRefusedError(self.why_refused(literal))
        return parsed

    async def check_resolved(self, url: URL, timeout_s: float = 2.0) -> None:
        """Resolve ``url``'s host name once and refuse it if any address is refused.

        A name that does not resolve (yet) passes: the connect-time check still applies.
        """
        host = url.raw_host or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            return  # an address literal: check_url judged it
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError):
            return
        for info in infos:
            address = str(info[4][0])
            if not self.address_allowed(address):
                msg = f"{host} resolves to {address}: {self.why_refused(address)}"
                raise UrlRefusedError(msg)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host whose addresses the policy refuses.

    aiohttp connects to exactly the addresses its resolver returns, so what is checked is
    what is connected to (no second lookup an attacker's DNS could answer differently).
    """

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            if not self._policy.address_allowed(r["host"]):
                raise AddressRefusedError(
                    f"{host} resolves to {r['host']}: " + self._policy.why_refused(r["host"])
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


def describe(exc: BaseException) -> Any:
    """The :class:`AddressRefusedError` behind an aiohttp connection error, if that was it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefusedError):
            return seen
        inner = getattr(seen, "os_error", None)
        if isinstance(inner, AddressRefusedError):
            return inner
        seen = seen.__cause__
    return None
