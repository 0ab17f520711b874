"""The alert service's HTTP API over a fake service (the backend protocol of alerts.http, no
Kafka): authentication and roles on every route, JSON-only bodies, errors that are never
500 whatever the input, subscriptions owned by their principal, the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from alerts.api import ROUTES, openapi_document
from alerts.election import NotActiveError, Role
from alerts.http import build_app
from alerts.lifecycle import AckRecord, AlertRecord, LifecycleState, acknowledge
from alerts.service import AlertMetrics
from alerts.subscriptions import Subscription
from alerts.urls import UrlPolicy
from civic_iot.auth import Principal, TokenStore

from .factories import T0, candidate, run

ALERTS_ROUTES = [r for r in ROUTES if r.role is not None]
PUBLIC_URL = "https://93.184.216.34/hook"


class MemoryBook:
    """Subscriptions in memory (the store's interface, without Kafka)."""

    key = b"k" * 32

    def __init__(self) -> None:
        self.subs: dict[str, Subscription] = {}

    def get(self, sub_id: str) -> Subscription | None:
        return self.subs.get(sub_id)

    def all(self) -> list[Subscription]:
        return sorted(self.subs.values(), key=lambda s: (s.created_at, s.id))

    def of_owner(self, owner: str) -> list[Subscription]:
        return [s for s in self.all() if s.owner == owner]

    async def put(self, sub: Subscription, timeout_s: float = 10.0) -> None:
        self.subs[sub.id] = sub

    async def delete(self, sub_id: str, timeout_s: float = 10.0) -> None:
        self.subs.pop(sub_id, None)


@dataclass
class FakeService:
    tokens: TokenStore
    role: Role = "active"
    cap_config: Any = None
    metrics: AlertMetrics = field(default_factory=AlertMetrics)
    subscriptions: MemoryBook = field(default_factory=MemoryBook)
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    max_subscriptions_per_owner: int = 3
    secret_grace_s: float = 3600.0
    state: LifecycleState = field(default_factory=LifecycleState)

    def __post_init__(self) -> None:
        from alerts.cap import DEFAULT_CAP_CONFIG  # noqa: PLC0415

        self.cap_config = DEFAULT_CAP_CONFIG
        self.state, _ = run([(0, candidate(2, 0))])

    def now(self) -> datetime:
        return T0 + timedelta(minutes=5)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "role": self.role}

    def open_alerts(self) -> list[AlertRecord]:
        return self.state.open_alerts()

    async def acknowledge(self, alert_id: str, by: str, note: str = "") -> AckRecord:
        if self.role != "active":
            raise NotActiveError(self.role, "acknowledge on the active instance")
        self.state, ack = acknowledge(self.state, alert_id, by, self.now(), note)
        return ack


@dataclass
class Api:
    client: TestClient[Any, Any]
    service: FakeService
    tokens: dict[str, str]

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = None,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        h = dict(headers or {})
        if who is not None:
            h["Authorization"] = f"Bearer {self.tokens[who]}"
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=h) as resp:
            raw = await resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return resp.status, parsed, dict(resp.headers)


@asynccontextmanager
async def api(tmp_path: Path, **over: Any) -> AsyncIterator[Api]:
    tokens = TokenStore.of(tmp_path)
    issued = {}
    for name, role in [
        ("wra", "agency"),
        ("epa", "agency"),
        ("duty", "operator"),
        ("root", "admin"),
    ]:
        _, issued[name] = tokens.issue(name, role)  # type: ignore[arg-type]
    service = FakeService(tokens=tokens, **over)
    app = build_app(service, max_body_bytes=4096)
    async with TestClient(TestServer(app)) as client:
        yield Api(client, service, issued)


def drive(tmp_path: Path, test: Callable[[Api], Awaitable[None]], **over: Any) -> None:
    async def go() -> None:
        async with api(tmp_path, **over) as a:
            await test(a)

    asyncio.run(go())


def _alert_id(a: Api) -> str:
    return a.service.open_alerts()[0].alert_id


def _path(route_path: str, a: Api) -> str:
    return route_path.replace("{alert_id}", _alert_id(a)).replace(
        "{sub_id}", "0b6c0f3e-9d55-4b7e-8f21-3c4d5e6f7a8b"
    )


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "route", ALERTS_ROUTES, ids=[f"{r.method} {r.path}" for r in ALERTS_ROUTES]
)
def test_every_route_but_health_needs_a_valid_bearer_token(tmp_path: Path, route: Any) -> None:
    async def test(a: Api) -> None:
        path = _path(route.path, a)
        body = {} if route.request is not None else None
        status, answer, headers = await a.call(route.method, path, None, body)
        assert status == 401, answer
        assert "Authorization" in answer["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        bad = {"Authorization": "Bearer civ_000000000000_" + "A" * 43}
        status, answer, _ = await a.call(route.method, path, None, body, headers=bad)
        assert (status, answer["error"]) == (401, "invalid or revoked token")
        # A cookie or a Basic header is not a bearer token.
        for h in ({"Cookie": f"token={a.tokens['root']}"}, {"Authorization": "Basic cm9vdDp4"}):
            status, _, _ = await a.call(route.method, path, None, body, headers=h)
            assert status == 401

    drive(tmp_path, test)


@pytest.mark.parametrize(
    "route",
    [r for r in ALERTS_ROUTES if r.role == "operator"],
    ids=lambda r: f"{r.method} {r.path}",
)
def test_operator_routes_refuse_an_agency_token(tmp_path: Path, route: Any) -> None:
    async def test(a: Api) -> None:
        body = {} if route.request is not None else None
        status, answer, _ = await a.call(route.method, _path(route.path, a), "wra", body)
        assert status == 403
        assert "needs 'operator'" in answer["error"]
        status, _, _ = await a.call(route.method, _path(route.path, a), "duty", body)
        assert status == 200

    drive(tmp_path, test)


def test_revoked_token_is_refused_at_once(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        assert (await a.call("GET", "/alerts", "wra"))[0] == 200
        [record] = [r for r in a.service.tokens.records() if r.principal == "wra"]
        a.service.tokens.revoke([record.id])
        assert (await a.call("GET", "/alerts", "wra"))[0] == 401

    drive(tmp_path, test)


def test_health_is_open(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        status, body, _ = await a.call("GET", "/health")
        assert (status, body["status"]) == (200, "ok")

    drive(tmp_path, test)


# --------------------------------------------------------------------------- acknowledgement


def test_ack_by_alert_id_records_the_principal(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        path = f"/alerts/{_alert_id(a)}/ack"
        status, ack, _ = await a.call("POST", path, "duty", {"note": "on it"})
        assert status == 200
        assert (ack["by"], ack["note"]) == ("duty", "on it")
        # A second one by the same principal replaces the first.
        status, _, _ = await a.call("POST", path, "duty", {"note": "still on it"})
        [rec] = a.service.open_alerts()
        assert [(x.by, x.note) for x in rec.acks] == [("duty", "still on it")]
        # The body cannot name someone else.
        status, answer, _ = await a.call("POST", path, "duty", {"by": "root"})
        assert status == 400
        assert answer["details"][0]["loc"] == "by"

    drive(tmp_path, test)


@pytest.mark.parametrize(
    ("alert_id", "status", "error"),
    [
        ("air_quality:6300300", 400, "must be a UUID"),
        ("0b6c0f3e-9d55-4b7e-8f21-3c4d5e6f7a8b", 404, "no alert with alert id"),
    ],
)
def test_ack_refuses_keys_and_unknown_ids(
    tmp_path: Path, alert_id: str, status: int, error: str
) -> None:
    async def test(a: Api) -> None:
        got, answer, _ = await a.call("POST", f"/alerts/{alert_id}/ack", "duty", {})
        assert got == status
        assert error in answer["error"]

    drive(tmp_path, test)


def test_ack_cap_answers_409(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        path = f"/alerts/{_alert_id(a)}/ack"
        for i in range(10):
            a.service.state, _ = acknowledge(
                a.service.state, _alert_id(a), f"op-{i}", a.service.now()
            )
        status, answer, _ = await a.call("POST", path, "duty", {})
        assert status == 409
        assert "10 acknowledgements" in answer["error"]

    drive(tmp_path, test)


@pytest.mark.parametrize(("role", "retry"), [("standby", None), ("taking_over", "2")])
def test_not_active_answers_503_with_the_role(
    tmp_path: Path, role: Role, retry: str | None
) -> None:
    async def test(a: Api) -> None:
        status, body, headers = await a.call("GET", "/alerts", "wra")
        assert (status, body["role"]) == (503, role)
        assert role.replace("_", " ") in body["error"]
        assert headers.get("Retry-After") == retry
        status, body, _ = await a.call("POST", f"/alerts/{_alert_id(a)}/ack", "duty", {})
        assert (status, body["role"]) == (503, role)

    drive(tmp_path, test, role=role)


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("data", "content_type", "status", "error"),
    [
        (b'{"note": "x"}', "text/plain", 415, "must be application/json"),
        (b"note=x", "application/x-www-form-urlencoded", 415, "must be application/json"),
        (b'{"note": "x"}', None, 415, "must be application/json"),
        (b'{"note": "x"}', "application/json; charset=latin-1", 415, "must be UTF-8"),
        (b'{"note": "\xe9"}', "application/json", 400, "not valid UTF-8"),
        (b'{"note": "x"', "application/json", 400, "not valid JSON"),
        (b'{"note": NaN}', "application/json", 400, "not valid JSON"),
        (b"[1]", "application/json", 400, "must be a JSON object"),
        (b"[" * 100_000, "application/json", 413, "larger than 4096"),
        (b"[" * 2000 + b"]" * 2000, "application/json", 400, "nested too deeply"),
        (b'{"note": ' + b"[" * 1500 + b"]" * 1500 + b"}", "application/json", 400, "nested"),
        (b'{"note": 1}', "application/json", 400, "does not match the schema"),
        (b'{"note": "' + b"n" * 281 + b'"}', "application/json", 400, "does not match"),
        (b"\xef\xbb\xbf{}", "application/json", 400, "not valid JSON"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(
    tmp_path: Path, data: bytes, content_type: str | None, status: int, error: str
) -> None:
    async def test(a: Api) -> None:
        headers = {} if content_type is None else {"Content-Type": content_type}
        path = f"/alerts/{_alert_id(a)}/ack"
        got, answer, _ = await a.call("POST", path, "duty", data=data, headers=headers)
        assert got == status, answer
        assert error in answer["error"]

    drive(tmp_path, test)


def test_cross_site_form_post_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    """What a web page can send without a preflight: text/plain, no Authorization."""

    async def test(a: Api) -> None:
        path = f"/alerts/{_alert_id(a)}/ack"
        for who in (None, "duty"):
            status, _, _ = await a.call(
                "POST", path, who, data=b'{"note":"x"}', headers={"Content-Type": "text/plain"}
            )
            assert status == (401 if who is None else 415)
        assert a.service.open_alerts()[0].acks == ()

    drive(tmp_path, test)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=6000),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-16",
            "application/json; charset=nope",
            "text/plain",
            "application/json;;;",
            "",
        ]
    ),
    path=st.sampled_from(["ack", "/subscriptions", "/subscriptions/{sub}/rotate-secret"]),
)
def test_fuzzed_requests_never_get_500(
    tmp_path: Path, data: bytes, content_type: str, path: str
) -> None:
    async def test(a: Api) -> None:
        p = f"/alerts/{_alert_id(a)}/ack" if path == "ack" else path
        p = p.replace("{sub}", "0b6c0f3e-9d55-4b7e-8f21-3c4d5e6f7a8b")
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer, _ = await a.call("POST", p, "root", data=data, headers=headers)
        assert status < 500, (status, answer)
        if status >= 400:
            assert isinstance(answer, dict)
            assert answer["error"]

    drive(tmp_path, test)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
))  # fmt: skip
def test_fuzzed_json_subscriptions_never_get_500(tmp_path: Path, body: Any) -> None:
    async def test(a: Api) -> None:
        doc = body if not isinstance(body, dict) else {"url": PUBLIC_URL, **body}
        data = json.dumps(doc, allow_nan=True).encode()
        h = {"Content-Type": "application/json"}
        status, answer, _ = await a.call("POST", "/subscriptions", "wra", data=data, headers=h)
        assert status in (201, 400), (status, answer)

    drive(tmp_path, test)


# --------------------------------------------------------------------------- subscriptions


def test_subscription_lifecycle_and_ownership(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        new = {"url": PUBLIC_URL, "hazards": ["flood"], "townships": ["6300300"], "format": "json"}
        status, created, headers = await a.call("POST", "/subscriptions", "wra", new)
        assert status == 201, created
        assert headers["Cache-Control"] == "no-store"
        assert created["owner"] == "wra"
        assert created["secret"].startswith("whsec_")
        sub_id = created["id"]
        # The secret is shown only here: not in a listing or a read.
        status, listing, _ = await a.call("GET", "/subscriptions", "wra")
        assert [s["id"] for s in listing["subscriptions"]] == [sub_id]
        assert '"secret"' not in json.dumps(listing)
        status, one, _ = await a.call("GET", f"/subscriptions/{sub_id}", "wra")
        assert (status, "secret" in one) == (200, False)
        # Another agency neither sees nor touches it (404, as if it did not exist).
        assert (await a.call("GET", "/subscriptions", "epa"))[1] == {"subscriptions": []}
        for method, path, body in [
            ("GET", f"/subscriptions/{sub_id}", None),
            ("POST", f"/subscriptions/{sub_id}/rotate-secret", {}),
            ("DELETE", f"/subscriptions/{sub_id}", None),
        ]:
            status, _, _ = await a.call(method, path, "epa", body)
            assert status == 404
        # An agency cannot create one for someone else; an admin can.
        status, answer, _ = await a.call("POST", "/subscriptions", "epa", new | {"owner": "wra"})
        assert (status, answer["error"]) == (403, "only an admin creates a subscription for "
                                                   "another principal")  # fmt: skip
        status, for_epa, _ = await a.call("POST", "/subscriptions", "root", new | {"owner": "epa"})
        assert (status, for_epa["owner"]) == (201, "epa")
        status, everyone, _ = await a.call("GET", "/subscriptions", "root")
        assert {s["owner"] for s in everyone["subscriptions"]} == {"wra", "epa"}
        # Rotation: a new secret, the old one valid for the grace period.
        status, rotated, _ = await a.call(
            "POST", f"/subscriptions/{sub_id}/rotate-secret", "wra", {}
        )
        assert status == 200
        assert rotated["secret"] != created["secret"]
        assert rotated["previous_secret_valid_until"] == "2025-06-01T13:05:00+08:00"
        # Delete: gone.
        status, _, _ = await a.call("DELETE", f"/subscriptions/{sub_id}", "wra")
        assert status == 204
        assert (await a.call("GET", f"/subscriptions/{sub_id}", "wra"))[0] == 404

    drive(tmp_path, test)


def test_subscriptions_per_owner_are_limited(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        for _ in range(3):
            assert (await a.call("POST", "/subscriptions", "wra", {"url": PUBLIC_URL}))[0] == 201
        status, answer, _ = await a.call("POST", "/subscriptions", "wra", {"url": PUBLIC_URL})
        assert (status, answer["error"]) == (
            409,
            "wra already has 3 subscriptions, the most allowed",
        )

    drive(tmp_path, test)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://93.184.216.34/hook", "scheme must be https"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://10.1.2.3/hook", "not a public address"),
        ("https://192.168.0.1/hook", "not a public address"),
        ("https://0.0.0.0/hook", "not a public address"),
        ("https://[::1]/hook", "not a public address"),
        ("https://[fe80::1]/hook", "not a public address"),
        ("https://[fd00::1]/hook", "not a public address"),
        ("https://[::ffff:127.0.0.1]/hook", "not a public address"),
        ("https://localhost/hook", "resolves to 127.0.0.1"),
        ("https://user:pw@93.184.216.34/hook", "user name or password"),
        ("ftp://93.184.216.34/x", "scheme must be https"),
        ("not a url", "scheme must be https"),
    ],
)
def test_ssrf_guard_refuses_urls_at_creation(tmp_path: Path, url: str, error: str) -> None:
    async def test(a: Api) -> None:
        status, answer, _ = await a.call("POST", "/subscriptions", "wra", {"url": url})
        assert status == 400
        assert error in answer["error"]
        assert a.service.subscriptions.subs == {}

    drive(tmp_path, test)


def test_allow_list_lets_a_local_receiver_in(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        status, _, _ = await a.call(
            "POST", "/subscriptions", "wra", {"url": "http://127.0.0.1:9/h"}
        )
        assert status == 201
        status, _, _ = await a.call("POST", "/subscriptions", "wra", {"url": "http://10.0.0.1/h"})
        assert status == 400

    drive(tmp_path, test, url_policy=UrlPolicy.of(True, ["127.0.0.0/8"]))


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_valid_3_1_and_covers_every_route() -> None:
    doc = openapi_document()
    validate_openapi(doc)
    assert doc["openapi"] == "3.1.0"
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert ops == {(r.method, r.path) for r in ROUTES}
    for r in ROUTES:
        op = doc["paths"][r.path][r.method]
        if r.role is None:
            assert op["security"] == []
        else:
            assert op["x-required-role"] == r.role
            assert {"401", "403"} <= set(op["responses"])


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    registry: Registry[Any] = Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    fixed = json.loads(json.dumps(schema).replace('"#/components', '"urn:doc#/components'))
    return Draft202012Validator(fixed, registry=registry)


def test_answers_match_the_document(tmp_path: Path) -> None:
    async def test(a: Api) -> None:
        status, doc, _ = await a.call("GET", "/openapi.json", "wra")
        assert status == 200
        validate_openapi(doc)

        def check(path: str, method: str, code: int, body: Any) -> None:
            op = doc["paths"][path][method]
            schema = op["responses"][str(code)]["content"]["application/json"]["schema"]
            _validator(doc, schema).validate(body)

        await a.call("POST", f"/alerts/{_alert_id(a)}/ack", "duty", {"note": "n"})
        check("/alerts", "get", 200, (await a.call("GET", "/alerts", "wra"))[1])
        status, created, _ = await a.call("POST", "/subscriptions", "wra", {"url": PUBLIC_URL})
        check("/subscriptions", "post", 201, created)
        check("/subscriptions", "get", 200, (await a.call("GET", "/subscriptions", "wra"))[1])
        status, bad, _ = await a.call("POST", "/subscriptions", "wra", {"url": 1})
        check("/subscriptions", "post", 400, bad)
        status, unauth, _ = await a.call("GET", "/alerts")
        check("/alerts", "get", 401, unauth)

    drive(tmp_path, test)


def test_principal_roles_include_lower_ones() -> None:
    assert Principal(name="x", role="admin", token_id="0" * 12).may("agency")
    assert not Principal(name="x", role="agency", token_id="0" * 12).may("operator")
