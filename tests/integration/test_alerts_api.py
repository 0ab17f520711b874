"""The alert service's HTTP API and durable webhooks against real Kafka, Mosquitto and
InfluxDB, with real HTTP receivers on 127.0.0.1 (allow-listed for these tests).

- Webhooks survive SIGKILL: the service is a real process, killed while its deliveries
  are being retried; started again, it delivers every message at least once (repeats are
  recognised by message id, with the documented receiver example).
- Subscriptions are created through one instance's API and seen by every instance.
- A redirect is a failure, not a resend; the unauthenticated and wrong-role cases.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate as validate_openapi

from alerts.http import ApiClientError, HttpServer, call_api
from alerts.receiver import Refused, ReplayGuard, verify_delivery
from alerts.service import AlertService
from alerts.signing import MESSAGE_ID_HEADER
from civic_iot.settings import Settings
from civic_iot.topology import Topology

from .helpers import serve_posts, start_process
from .test_alerts_service import (
    alert_messages,
    api_tokens,
    candidate,
    clear_retained,
    env,
    free_port,
    read_topic,
    send_candidates,
    short_lifecycle,
    wait_until,
)

pytestmark = pytest.mark.integration
#: The alert service tests' fixtures, shared (pytest finds them by these names here).
FIXTURES = (env, api_tokens)


@dataclass
class Verifying:
    """A webhook receiver that verifies every POST as docs/webhooks.md says.

    ``answer`` is the status it gives; ``redirect_to`` answers 307 to that URL instead.
    """

    answer: int = 200
    redirect_to: str | None = None
    secret: str = ""
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    #: (message id, attempt header, status answered, first time) per POST.
    hits: list[tuple[str, str, int, bool]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        if self.redirect_to is not None:
            self.hits.append((req.headers.get(MESSAGE_ID_HEADER, ""), "", 307, True))
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        try:
            got = verify_delivery(self.secret, req.headers, body, self.guard)
        except Refused as exc:
            self.refused.append(str(exc))
            return web.Response(status=401)
        status = self.answer
        if status >= 300:
            # Not accepted: forget it, so the retry that gets a 2xx counts as the first.
            self.guard._seen.pop(got.message_id, None)
        attempt = req.headers.get("X-Civic-Delivery-Attempt", "")
        self.hits.append((got.message_id, attempt, status, got.first_time and status < 300))
        return web.Response(status=status)

    def accepted(self) -> set[str]:
        return {m for m, _, status, _ in self.hits if 200 <= status < 300}

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def serving(r: Verifying) -> AbstractAsyncContextManager[Verifying]:
    return serve_posts(r, "/hook")


def child_env(env: Settings, port: int) -> dict[str, str]:
    a = env.alerts
    return {
        "CIVIC_KAFKA__TOPIC_PREFIX": env.kafka.topic_prefix,
        "CIVIC_KAFKA__PARTITIONS": str(env.kafka.partitions),
        "CIVIC_INFLUX__BUCKET_ALERTS": env.influx.bucket_alerts,
        "CIVIC_ALERTS__CONSUMER_GROUP": a.consumer_group,
        "CIVIC_ALERTS__TICK_INTERVAL_S": str(a.tick_interval_s),
        "CIVIC_ALERTS__SESSION_TIMEOUT_S": str(a.session_timeout_s),
        "CIVIC_ALERTS__HEARTBEAT_INTERVAL_S": str(a.heartbeat_interval_s),
        "CIVIC_ALERTS__HTTP_PORT": str(port),
        "CIVIC_ALERTS__WEBHOOK_ALLOW_HTTP": "true",
        "CIVIC_ALERTS__WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        # Retried long enough to be killed in the middle of it.
        "CIVIC_ALERTS__WEBHOOK_MAX_ATTEMPTS": "1000",
        "CIVIC_ALERTS__WEBHOOK_TIMEOUT_S": "1",
        "CIVIC_ALERTS__WEBHOOK_BACKOFF_BASE_S": "0.1",
        "CIVIC_ALERTS__WEBHOOK_BACKOFF_CAP_S": "0.3",
        "PYTHONUNBUFFERED": "1",
    }


async def wait_ready(base: str, proc: Any, log: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (await asyncio.to_thread(log.read_text))[-3000:]
            pytest.fail(f"alerts process not ready (exit {proc.poll()}): {tail}")
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as resp:
                if (await resp.json()).get("role") == "active":
                    return
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.2)


def test_webhooks_survive_sigkill_while_retries_are_pending(
    env: Settings, unique: str, tmp_path: Path, api_tokens: dict[str, str]
) -> None:
    areas = [f"t{unique}k{i}" for i in range(5)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs: list[Any] = []

    async def run() -> None:
        async with serving(Verifying(answer=503)) as r:
            log1 = tmp_path / "alerts-1.log"
            first = start_process(["alerts", "run"], child_env(env, port), log1)
            procs.append(first)
            await wait_ready(base, first, log1)
            body = {"url": r.url(), "townships": areas, "format": "json"}
            created = await call_api(base, "POST", "/subscriptions", api_tokens["agency"], body)
            r.secret = created["secret"]

            await send_candidates(env, *(candidate(area, 2) for area in areas))
            # The first message is refused (503) and retried; one subscription's messages go
            # out in order, so the others wait behind it, read from Kafka and not committed.
            await wait_until(lambda: len(r.hits) >= 3, 30, "retries under way")
            assert r.accepted() == set()
            assert {attempt for _, attempt, _, _ in r.hits} >= {"1", "2", "3"}
            first.send_signal(signal.SIGKILL)
            first.wait(10)

            r.answer = 200
            log2 = tmp_path / "alerts-2.log"
            second = start_process(["alerts", "run"], child_env(env, port), log2)
            procs.append(second)
            issued = set()
            for area in areas:
                issued |= {m["identifier"] for m in await alert_messages(env, f"flood:{area}")}
            assert len(issued) == len(areas)
            # The killed member leaves the groups after the session timeout (6 s).
            await wait_until(lambda: r.accepted() >= issued, 60, "every message delivered")
            assert r.refused == []

        firsts = [m for m, _, status, first in r.hits if first]
        # Delivered at least once each; a repeat (if any) is recognised by its message id.
        assert set(firsts) == issued
        assert len(firsts) == len(issued)
        recs = await read_topic(env, Topology.of(env).alert_deadletter)
        assert recs == []

    try:
        asyncio.run(run())
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except Exception:  # noqa: BLE001 - make sure it is gone
                    p.kill()
        for area in areas:
            clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


def test_subscriptions_through_any_instance_and_roles(
    env: Settings, unique: str, api_tokens: dict[str, str]
) -> None:
    area = f"t{unique}"

    async def run() -> None:
        services = [AlertService(env, lifecycle=short_lifecycle(60)) for _ in range(2)]
        https = [HttpServer(s, host="127.0.0.1", port=0) for s in services]
        try:
            await asyncio.gather(*(s.start() for s in services))
            for h in https:
                await h.start()
            await wait_until(
                lambda: sorted(s.role for s in services) == ["active", "standby"], 15, "roles"
            )
            base = {
                s.role: f"http://127.0.0.1:{h.port}" for s, h in zip(services, https, strict=True)
            }
            agency, admin = api_tokens["agency"], api_tokens["admin"]

            # Created through the standby, seen through the active instance.
            body = {"url": "http://127.0.0.1:9/hook", "townships": [area], "format": "cap"}
            created = await call_api(base["standby"], "POST", "/subscriptions", agency, body)
            assert created["secret"].startswith("whsec_")
            await wait_until(
                lambda: all(s.subscriptions.get(created["id"]) for s in services), 10, "both"
            )
            listing = await call_api(base["active"], "GET", "/subscriptions", agency)
            assert [x["id"] for x in listing["subscriptions"]] == [created["id"]]
            assert "secret" not in listing["subscriptions"][0]
            # The topic holds no secret: only a nonce the secret is derived from.
            recs = await read_topic(env, Topology.of(env).alert_subscriptions)
            assert created["secret"].encode() not in b"".join(x.value or b"" for x in recs)

            # Unauthenticated, and another principal's: refused.
            with pytest.raises(ApiClientError) as info:
                await call_api(base["active"], "GET", "/subscriptions", "civ_bogus")
            assert info.value.status == 401
            with pytest.raises(ApiClientError) as info:
                await call_api(
                    base["active"], "POST", "/subscriptions", agency, body | {"owner": "other"}
                )
            assert info.value.status == 403
            with pytest.raises(ApiClientError) as info:
                await call_api(base["active"], "GET", "/metrics", agency)
            assert info.value.status == 403
            # SSRF: not allow-listed here.
            with pytest.raises(ApiClientError, match="not a public address") as info:
                await call_api(
                    base["active"], "POST", "/subscriptions", agency,
                    {"url": "http://169.254.169.254/latest/meta-data/"},
                )  # fmt: skip
            assert info.value.status == 400

            doc = await call_api(base["standby"], "GET", "/openapi.json", agency)
            validate_openapi(doc)

            # Deleted by an admin through the active one: gone everywhere.
            await call_api(base["active"], "DELETE", f"/subscriptions/{created['id']}", admin)
            await wait_until(
                lambda: not any(s.subscriptions.get(created["id"]) for s in services), 10, "gone"
            )
            listing = await call_api(base["standby"], "GET", "/subscriptions", agency)
            assert listing == {"subscriptions": []}
        finally:
            for h in https:
                await h.stop()
            await asyncio.gather(*(s.stop() for s in services))

    asyncio.run(run())


def test_a_redirect_is_a_failure_not_a_resend(
    env: Settings, unique: str, api_tokens: dict[str, str]
) -> None:
    area = f"t{unique}"

    async def run() -> None:
        async with serving(Verifying()) as thief, serving(Verifying()) as r:
            r.redirect_to = thief.url()
            async with contextlib_running(env) as (svc, base):
                body = {"url": r.url(), "townships": [area], "format": "json"}
                await call_api(base, "POST", "/subscriptions", api_tokens["agency"], body)
                await send_candidates(env, candidate(area, 2))
                await wait_until(lambda: bool(r.hits), 15, "the POST")
                await wait_until(lambda: svc.webhooks.pending == 0, 15, "the dead letter")
            assert thief.hits == []
            assert len(r.hits) == 1  # not retried either
        recs = await read_topic(env, Topology.of(env).alert_deadletter)
        [dead] = [json.loads(x.value) for x in recs if x.value]
        assert (dead["status_code"], dead["attempts"]) == (307, 1)
        assert "redirect" in dead["error"]

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


@asynccontextmanager
async def contextlib_running(env: Settings) -> AsyncIterator[tuple[AlertService, str]]:
    svc = AlertService(env, lifecycle=short_lifecycle(60))
    await svc.start()
    http = HttpServer(svc, host="127.0.0.1", port=0)
    try:
        await http.start()
        yield svc, f"http://127.0.0.1:{http.port}"
    finally:
        await http.stop()
        await svc.stop()
