"""The SSRF guard: which addresses a webhook may reach, and the check at connect time that
DNS rebinding cannot get past (a stub name server, a real local HTTP server)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from alerts.urls import AddressRefusedError, GuardedResolver, UrlPolicy, describe

STRICT = UrlPolicy()
LOCAL = UrlPolicy.of(True, ["127.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("address", "strict", "local"),
    [
        ("93.184.216.34", True, True),
        ("2606:2800:220:1:248:1893:25c8:1946", True, True),
        ("127.0.0.1", False, True),
        ("127.8.9.10", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped: judged as 127.0.0.1
        ("10.0.0.1", False, False),
        ("172.16.5.4", False, False),
        ("192.168.1.1", False, False),
        ("169.254.169.254", False, False),  # cloud metadata
        ("fe80::1", False, False),
        ("fd12:3456::1", False, False),  # unique-local
        ("0.0.0.0", False, False),
        ("::", False, False),
        ("100.64.0.1", False, False),  # carrier-grade NAT
        ("224.0.0.1", False, False),
        ("ff02::1", False, False),
        ("not-an-ip", False, False),
    ],
)
def test_address_policy(address: str, strict: bool, local: bool) -> None:
    assert STRICT.address_allowed(address) is strict
    assert LOCAL.address_allowed(address) is local


class StubResolver(AbstractResolver):
    """A name server an attacker controls: ``rebind.test`` answers what it is told."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.answer,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def _post(policy: UrlPolicy, stub: StubResolver, port: int) -> Any:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, stub), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://rebind.test:{port}/hook"
        async with session.post(url, data=b"x", allow_redirects=False) as resp:
            return resp.status


def test_dns_rebinding_is_refused_at_connect_time() -> None:
    """The name checked at creation may resolve elsewhere later: the addresses are judged
    by the resolver aiohttp connects with, so a name that now points at 127.0.0.1 fails
    and no request reaches the local server."""

    async def run() -> None:
        hits: list[str] = []

        async def hook(req: web.Request) -> web.Response:
            hits.append(req.path)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        try:
            stub = StubResolver("127.0.0.1")
            with pytest.raises(aiohttp.ClientError) as info:
                await _post(STRICT, stub, port)
            refused = describe(info.value)
            assert isinstance(refused, AddressRefusedError)
            assert "rebind.test resolves to 127.0.0.1" in str(refused)
            assert hits == []
            # With loopback allowed (a test's receiver), the same request goes through.
            assert await _post(LOCAL, stub, port) == 204
            assert hits == ["/hook"]
        finally:
            await runner.cleanup()

    asyncio.run(run())


def test_check_url_parses_and_refuses() -> None:
    assert str(LOCAL.check_url("http://127.0.0.1:8080/x?y=1")) == "http://127.0.0.1:8080/x?y=1"
    assert STRICT.check_url("https://agency.example/hook").host == "agency.example"
    with pytest.raises(ValueError, match="longer than 2048"):
        STRICT.check_url("https://a.example/" + "x" * 2048)
    with pytest.raises(ValueError, match="fragment"):
        STRICT.check_url("https://a.example/h#frag")
