"""The alert service's HTTP API (aiohttp), and the client the CLI uses.

Routes, roles and models are in :mod:`alerts.api` (also the source of ``/openapi.json``):

- ``GET /health`` (open): 200 when the instance is active or standby (or taking over)
  and connected to the broker, else 503; ``role`` says which.
- ``GET /openapi.json`` (agency), ``GET /metrics`` (operator, Prometheus text).
- ``GET /alerts`` (agency): the open alerts; only the active instance holds them
  (elsewhere 503, naming the role).
- ``POST /alerts/{alert_id}/ack`` (operator), body ``{"note": "..."}``: the token's
  principal acknowledges the alert ``alert_id`` (a UUID, from ``GET /alerts``; the
  guessable ``hazard:area`` key is not accepted). Again by the same principal replaces
  the note; 409 once the alert holds as many acknowledgements as it may.
- ``/subscriptions`` (agency): create, list, get, rotate the secret of and delete
  webhook subscriptions; an agency sees and manages only its own (another's answers 404),
  an admin all. The secret is in the answer to create and rotate, and nowhere else.

Every route but ``/health`` needs ``Authorization: Bearer <token>``
(:mod:`civic_iot.auth`; cookies are never read). Errors are JSON ``{"error": ...}``:
401 (no or bad token, with ``WWW-Authenticate``), 403 (role too low), 400 (bad JSON,
bad field: ``details`` name each), 413 (body beyond ``alerts.http_max_body_bytes``), 415
(not ``application/json`` in UTF-8: a cross-site form or ``text/plain`` POST is refused
before its body is read), 404, 409, 503. Bad input never gives 500.

A standby does not forward an acknowledgement to the active instance: the election does
not tell it where that instance listens, and an answer that names the role lets the
operator, or a proxy that routes on ``/health``'s ``role``, go to the right one.
Subscriptions work on every instance (they live in Kafka, :mod:`alerts.subscription_store`).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from alerts.api import (
    ROUTES,
    AckIn,
    AckOut,
    ErrorDetail,
    ErrorOut,
    OpenAlertOut,
    RotateIn,
    Route,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
    SubscriptionWithSecret,
    openapi_document,
)
from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, cap_time
from alerts.election import NotActiveError, Role
from alerts.lifecycle import AckLimitError, AckRecord, AlertRecord, UnknownAlertError
from alerts.subscriptions import Subscription, derive_secret
from alerts.text import get_logger
from alerts.urls import UrlPolicy, UrlRefusedError
from civic_iot.auth import AuthError, Principal

logger = get_logger(__name__)

__all__ = [
    "AckError",
    "AlertsBackend",
    "ApiClientError",
    "HttpServer",
    "SubscriptionBook",
    "ack_json",
    "ack_via_http",
    "build_app",
    "call_api",
    "open_alert_json",
    "subscription_json",
]

M = TypeVar("M", bound=BaseModel)


class SubscriptionBook(Protocol):
    """Where subscriptions live (:class:`alerts.subscription_store.SubscriptionStore`)."""

    @property
    def key(self) -> bytes: ...

    def get(self, sub_id: str) -> Subscription | None: ...

    def all(self) -> list[Subscription]: ...

    def of_owner(self, owner: str) -> list[Subscription]: ...

    async def put(self, sub: Subscription, timeout_s: float = 10.0) -> None: ...

    async def delete(self, sub_id: str, timeout_s: float = 10.0) -> None: ...


class _Metrics(Protocol):
    def render(self) -> tuple[bytes, str]: ...


class _Tokens(Protocol):
    def authenticate_header(self, header: str | None) -> Principal: ...


class AlertsBackend(Protocol):
    """What the API needs from the service (:class:`alerts.service.AlertService`)."""

    @property
    def role(self) -> Role: ...

    @property
    def cap_config(self) -> CapConfig: ...

    @property
    def metrics(self) -> _Metrics: ...

    @property
    def subscriptions(self) -> SubscriptionBook: ...

    @property
    def url_policy(self) -> UrlPolicy: ...

    @property
    def tokens(self) -> _Tokens: ...

    #: Subscriptions one non-admin principal may hold; secret grace after a rotation.
    max_subscriptions_per_owner: int
    secret_grace_s: float

    def now(self) -> datetime: ...

    def health(self) -> dict[str, Any]: ...

    def open_alerts(self) -> list[AlertRecord]: ...

    async def acknowledge(self, alert_id: str, by: str, note: str = "") -> AckRecord: ...


class AckError(RuntimeError):
    """The service refused or could not take an acknowledgement."""


class ApiClientError(RuntimeError):
    """The API answered an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _RefusedError(Exception):
    """An error answer of a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[ErrorDetail] | None = None,
        role: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.role = status, message, details, role


# --------------------------------------------------------------------------- views (pure)


def ack_json(ack: AckRecord, tz: str = DEFAULT_CAP_CONFIG.timezone) -> dict[str, Any]:
    return AckOut(
        alert_id=ack.alert_id, key=ack.key, by=ack.by, at=cap_time(ack.at, tz), note=ack.note
    ).model_dump(mode="json")


def open_alert_json(rec: AlertRecord, tz: str = DEFAULT_CAP_CONFIG.timezone) -> dict[str, Any]:
    """One open alert for ``GET /alerts``: what was announced, and what is pending."""
    a = rec.announced
    return OpenAlertOut(
        key=rec.key,
        alert_id=rec.alert_id,
        hazard=a.hazard,
        area_code=a.area_code,
        area_desc=a.area_desc,
        level=a.level,
        severity=a.severity,
        peak_severity=rec.peak_severity,
        headline=a.headline,
        sequence=rec.sequence,
        opened=cap_time(rec.references[0].sent, tz),
        last_identifier=rec.references[-1].identifier,
        last_sent=cap_time(rec.references[-1].sent, tz),
        latest_level=rec.latest.level,
        latest_value=rec.latest.value,
        metric=rec.latest.metric,
        clearing_since=None if rec.zero_since is None else cap_time(rec.zero_since, tz),
        acknowledgements=[AckOut.model_validate(ack_json(x, tz)) for x in rec.acks],
    ).model_dump(mode="json")


def subscription_json(sub: Subscription, tz: str = DEFAULT_CAP_CONFIG.timezone) -> dict[str, Any]:
    """A subscription as the API shows it (never its secret)."""
    return SubscriptionOut(
        id=sub.id,
        owner=sub.owner,
        url=sub.url,
        hazards=sorted(sub.hazards),
        min_severity=sub.min_severity,
        townships=sorted(sub.townships),
        polygon=None if sub.polygon is None else [list(p) for p in sub.polygon],
        format=sub.format,
        created_at=cap_time(sub.created_at, tz),
        updated_at=cap_time(sub.updated_at, tz),
        previous_secret_valid_until=None
        if sub.previous_until is None
        else cap_time(sub.previous_until, tz),
    ).model_dump(mode="json")


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _RefusedError(400, f"{what} must be a UUID") from None


def _not_json(_text: str) -> Any:
    msg = "NaN and Infinity are not JSON"
    raise ValueError(msg)


def _details(exc: ValidationError) -> list[ErrorDetail]:
    # Never the input itself: it may be huge, or hold what the client should not see again.
    return [
        ErrorDetail(loc=".".join(str(p) for p in e["loc"])[:200], msg=str(e["msg"])[:300])
        for e in exc.errors(include_input=False, include_url=False)[:20]
    ]


async def read_body(request: web.Request, model: type[M]) -> M:
    """The JSON body of ``request`` as ``model``, or the error answer (415, 413, 400)."""
    if request.content_type != "application/json":
        msg = f"Content-Type must be application/json, got {request.content_type!r}"
        raise _RefusedError(415, msg)
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise _RefusedError(415, f"the JSON body must be UTF-8, got charset {charset[:40]!r}")
    raw = await request.read()  # 413 beyond the application's client_max_size
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _RefusedError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise _RefusedError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise _RefusedError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise _RefusedError(400, f"body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _RefusedError(400, "body does not match the schema", _details(exc)) from None
    except RecursionError:
        raise _RefusedError(400, "body is nested too deeply") from None


# --------------------------------------------------------------------------- server


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return web.Response(
        text=body,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _error(
    status: int, message: str, details: list[ErrorDetail] | None = None, role: str | None = None
) -> web.Response:
    body = ErrorOut(error=message, details=details, role=role)
    resp = _json(body.model_dump(mode="json", exclude_none=True), status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="civic-iot"'
    if status == 503 and role in ("joining", "taking_over"):
        resp.headers["Retry-After"] = "2"
    return resp


MAX_BODY = web.AppKey("max_body", int)

_HTTP_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed here",
}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except _RefusedError as exc:
        return _error(exc.status, exc.message, exc.details, exc.role)
    except AuthError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[MAX_BODY]
        return _error(413, f"body larger than {limit} bytes ({exc.reason})")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _HTTP_MESSAGES.get(exc.status, exc.reason))
    except Exception:
        logger.exception(
            "alerts http handler failed method=%s path=%s", request.method, request.path
        )
        return _error(500, "internal error (logged)")


def build_app(backend: AlertsBackend, *, max_body_bytes: int = 64 * 1024) -> web.Application:
    """The aiohttp application over ``backend``."""
    tz = backend.cap_config.timezone

    def principal(request: web.Request, route: Route) -> Principal:
        assert route.role is not None
        try:
            who = backend.tokens.authenticate_header(request.headers.get("Authorization"))
        except ValueError as exc:  # the token file is unreadable: not the caller's fault
            logger.error("api tokens unreadable error=%s", exc)
            raise _RefusedError(503, "token store unreadable; see the service log") from None
        who.require(route.role)
        return who

    def visible(who: Principal, sub_id: str) -> Subscription:
        sub = backend.subscriptions.get(_uuid(sub_id, "subscription id"))
        if sub is None or (sub.owner != who.name and not who.may("admin")):
            raise _RefusedError(404, f"no subscription {sub_id} of yours")
        return sub

    async def store(write: Awaitable[None]) -> None:
        try:
            await write
        except (KafkaError, TimeoutError) as exc:
            logger.error("subscription store write failed error=%s", exc)
            raise _RefusedError(503, "subscription store (Kafka) unavailable; try again") from None

    def with_secret(sub: Subscription, status: int) -> web.Response:
        body = subscription_json(sub, tz)
        secret = derive_secret(backend.subscriptions.key, sub.id, sub.nonce)
        out = SubscriptionWithSecret(**body, secret=secret.get_secret_value())
        return _json(out.model_dump(mode="json"), status)

    # ---------------------------------------------------------------- handlers

    async def health(_req: web.Request, _who: Principal | None) -> web.StreamResponse:
        body = backend.health()
        return _json(body, 200 if body.get("status") == "ok" else 503)

    async def openapi(req: web.Request, _who: Principal | None) -> web.StreamResponse:
        return _json(openapi_document(f"{req.scheme}://{req.host}"))

    async def metrics(_req: web.Request, _who: Principal | None) -> web.StreamResponse:
        body, content_type = backend.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def list_alerts(_req: web.Request, _who: Principal | None) -> web.StreamResponse:
        if backend.role != "active":
            raise _RefusedError(503, _not_active(backend.role), role=backend.role)
        return _json([open_alert_json(r, tz) for r in backend.open_alerts()])

    async def acknowledge(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        alert_id = req.match_info["alert_id"]
        try:
            uuid.UUID(alert_id)
        except ValueError:
            msg = "alert id must be a UUID: the alert_id of GET /alerts (not hazard:area)"
            raise _RefusedError(400, msg) from None
        body = await read_body(req, AckIn)
        try:
            record = await backend.acknowledge(alert_id, who.name, body.note)
        except UnknownAlertError as exc:
            raise _RefusedError(404, str(exc)) from None
        except AckLimitError as exc:
            raise _RefusedError(409, str(exc)) from None
        except NotActiveError as exc:
            raise _RefusedError(503, str(exc), role=exc.role) from None
        except ValueError as exc:
            raise _RefusedError(400, str(exc)) from None
        return _json(ack_json(record, tz))

    async def list_subscriptions(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        book = backend.subscriptions
        subs = book.all() if who.may("admin") else book.of_owner(who.name)
        owner = req.query.get("owner")
        if owner is not None:
            subs = [s for s in subs if s.owner == owner]
        out = SubscriptionList.model_validate(
            {"subscriptions": [subscription_json(s, tz) for s in subs]}
        )
        return _json(out.model_dump(mode="json"))

    async def create_subscription(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        body = await read_body(req, SubscriptionIn)
        owner = body.owner or who.name
        if owner != who.name and not who.may("admin"):
            raise AuthError(403, "only an admin creates a subscription for another principal")
        book = backend.subscriptions
        limit = backend.max_subscriptions_per_owner
        if not who.may("admin") and len(book.of_owner(owner)) >= limit:
            raise _RefusedError(409, f"{owner} already has {limit} subscriptions, the most allowed")
        try:
            url = backend.url_policy.check_url(body.url)
            await backend.url_policy.check_resolved(url)
        except UrlRefusedError as exc:
            raise _RefusedError(400, f"url refused: {exc}") from None
        now = backend.now()
        sub = Subscription(
            id=str(uuid.uuid4()),
            owner=owner,
            url=str(url),
            hazards=body.hazards,
            min_severity=body.min_severity,
            townships=body.townships,
            polygon=body.polygon,
            format=body.format,
            created_at=now,
            updated_at=now,
            nonce=secrets.token_hex(16),
        )
        await store(book.put(sub))
        logger.info(
            "webhook subscription created id=%s owner=%s by=%s url=%s", sub.id, owner, who.name, url
        )
        return with_secret(sub, 201)

    async def get_subscription(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        return _json(subscription_json(visible(who, req.match_info["sub_id"]), tz))

    async def rotate_secret(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        sub = visible(who, req.match_info["sub_id"])
        await read_body(req, RotateIn)
        now = backend.now()
        rotated = sub.model_copy(
            update={
                "nonce": secrets.token_hex(16),
                "previous_nonce": sub.nonce,
                "previous_until": now + timedelta(seconds=backend.secret_grace_s),
                "updated_at": now,
            }
        )
        await store(backend.subscriptions.put(rotated))
        logger.info("webhook secret rotated id=%s owner=%s by=%s", sub.id, sub.owner, who.name)
        return with_secret(rotated, 200)

    async def delete_subscription(req: web.Request, who: Principal | None) -> web.StreamResponse:
        assert who is not None
        sub = visible(who, req.match_info["sub_id"])
        await store(backend.subscriptions.delete(sub.id))
        logger.info(
            "webhook subscription deleted id=%s owner=%s by=%s", sub.id, sub.owner, who.name
        )
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    handlers: Mapping[str, Callable[[web.Request, Principal | None], Awaitable[web.StreamResponse]]]
    handlers = {
        "health": health,
        "openapi": openapi,
        "metrics": metrics,
        "list_alerts": list_alerts,
        "acknowledge": acknowledge,
        "list_subscriptions": list_subscriptions,
        "create_subscription": create_subscription,
        "get_subscription": get_subscription,
        "rotate_secret": rotate_secret,
        "delete_subscription": delete_subscription,
    }

    def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        handler = handlers[route.name]

        async def serve(request: web.Request) -> web.StreamResponse:
            # Authenticate before anything else is read: a body is never parsed for a
            # caller without the role.
            who = None if route.role is None else principal(request, route)
            return await handler(request, who)

        return serve

    app = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
    app[MAX_BODY] = max_body_bytes
    for route in ROUTES:
        app.router.add_route(route.method.upper(), route.path, endpoint(route))
    return app


def _not_active(role: str) -> str:
    return str(NotActiveError(role, "ask the active instance"))  # type: ignore[arg-type]


class HttpServer:
    """Runs :func:`build_app` on ``host:port`` (port 0: an ephemeral port, see ``port``)."""

    def __init__(
        self, backend: AlertsBackend, *, host: str, port: int, max_body_bytes: int = 64 * 1024
    ) -> None:
        app = build_app(backend, max_body_bytes=max_body_bytes)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        self._host, self._port = host, port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # With port 0 the system picked a port: report the one actually bound.
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        logger.info("alerts http listening host=%s port=%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()


# --------------------------------------------------------------------------- client


async def call_api(
    base_url: str,
    method: str,
    path: str,
    token: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 10.0,
) -> Any:
    """One API call; the JSON answer (None for 204).

    Raises:
        ApiClientError: an error answer (its ``error`` in the message), or no answer.
    """
    url = f"{base_url.rstrip('/')}{path}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(method, url, json=body, headers=headers, allow_redirects=False) as resp,
        ):
            if resp.status == 204:
                return None
            try:
                answer: Any = await resp.json(content_type=None)
            except ValueError:
                answer = (await resp.text())[:300]
            if resp.status >= 300:
                detail = answer.get("error") if isinstance(answer, dict) else answer
                if isinstance(answer, dict) and answer.get("details"):
                    detail = f"{detail}: {answer['details']}"
                msg = f"{method} {url}: HTTP {resp.status}: {detail}"
                raise ApiClientError(msg, resp.status)
            return answer
    except (aiohttp.ClientError, TimeoutError) as exc:
        msg = f"alert service not reachable at {url}: {exc or type(exc).__name__}"
        raise ApiClientError(msg) from exc


async def ack_via_http(
    base_url: str, alert_id: str, note: str = "", *, token: str, timeout_s: float = 10.0
) -> dict[str, Any]:
    """POST an acknowledgement as the principal of ``token``; the recorded acknowledgement.

    Raises:
        AckError: the service answered with an error, or could not be reached.
    """
    try:
        body = await call_api(
            base_url, "POST", f"/alerts/{alert_id}/ack", token, {"note": note}, timeout_s=timeout_s
        )
    except ApiClientError as exc:
        raise AckError(f"acknowledging {alert_id}: {exc}") from exc
    if not isinstance(body, dict):
        msg = f"unexpected answer from {base_url}: {body!r}"
        raise AckError(msg)
    return body
