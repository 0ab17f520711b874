"""The alert service's HTTP API described once: request and answer models, the routes
with the role each needs, and the OpenAPI 3.1 document generated from them (pure).

:mod:`alerts.http` serves the routes (aiohttp) and validates every body with these
models; ``GET /openapi.json`` serves :func:`openapi_document`, built from the same route
table and the models' JSON Schemas (pydantic writes JSON Schema 2020-12, the dialect of
OpenAPI 3.1), so the document cannot drift from what the handlers accept and answer.

Why not FastAPI: the service already runs aiohttp (its webhook client, and the HTTP
server with the election beside it on one event loop), the API has eight routes, and
the errors it must give (400 for a bad body where FastAPI gives 422, 413, 415 with JSON
messages, never 500) are what a framework's defaults would have to be bent to. A route
table and pydantic's schema generator give the document with less machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from alerts.subscriptions import Format, SubscriptionFilter
from civic_iot.auth import PRINCIPAL_PATTERN, Role
from civic_iot.contracts.alerts import Hazard, Severity

__all__ = [
    "ROUTES",
    "AckIn",
    "AckOut",
    "ErrorDetail",
    "ErrorOut",
    "HealthOut",
    "OpenAlertOut",
    "RotateIn",
    "Route",
    "SubscriptionIn",
    "SubscriptionList",
    "SubscriptionOut",
    "SubscriptionWithSecret",
    "openapi_document",
]

API_VERSION = "2.0.0"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


# --------------------------------------------------------------------------- models


class ErrorDetail(BaseModel):
    """One problem of a request body: where, and what."""

    loc: str = Field(description="dotted path of the field, empty for the whole body")
    msg: str


class ErrorOut(BaseModel):
    """Every error answer: a sentence saying what is wrong and what is expected."""

    error: str
    details: list[ErrorDetail] | None = None
    role: str | None = Field(
        default=None, description="on 503: this instance's role (joining, standby, taking_over)"
    )


class HealthOut(BaseModel):
    """``GET /health``: open to anyone, so it names no subscriber and no alert."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded"]
    ready: bool
    role: Literal["joining", "standby", "taking_over", "active"]
    instance: str
    mqtt_connected: bool
    open_alerts: int | None
    webhook_subscriptions: int
    webhook_pending: int


class AckIn(BaseModel):
    """An acknowledgement: the principal of the token is who acknowledges."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=280, description="kept with the acknowledgement")


class AckOut(BaseModel):
    alert_id: str
    key: str
    by: str = Field(description="the principal whose token acknowledged")
    at: str = Field(description="CAP time, configured time zone")
    note: str


class OpenAlertOut(BaseModel):
    """One open alert: what was announced, and what is pending."""

    key: str = Field(description="hazard:area, for reading only: acknowledge by alert_id")
    alert_id: str
    hazard: Hazard
    area_code: str
    area_desc: str
    level: int
    severity: Severity
    peak_severity: Severity
    headline: str
    sequence: int
    opened: str
    last_identifier: str
    last_sent: str
    latest_level: int
    latest_value: float
    metric: str
    clearing_since: str | None
    acknowledgements: list[AckOut]


class SubscriptionIn(SubscriptionFilter):
    """A new webhook subscription. The service chooses its id and its secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="https URL the service POSTs to (http, private and loopback addresses "
        "only where the deployment allows them)",
    )
    owner: str | None = Field(
        default=None,
        pattern=PRINCIPAL_PATTERN,
        description="whose it is; default the caller; only an admin names another",
    )


class RotateIn(BaseModel):
    """``POST /subscriptions/{id}/rotate-secret`` takes an empty JSON object."""

    model_config = ConfigDict(extra="forbid")


class SubscriptionOut(BaseModel):
    id: str
    owner: str
    url: str
    hazards: list[Hazard]
    min_severity: Severity
    townships: list[str]
    polygon: list[list[float]] | None
    format: Format
    created_at: str
    updated_at: str
    previous_secret_valid_until: str | None = Field(
        description="after a rotation: until when webhooks are signed with the old secret too"
    )


class SubscriptionWithSecret(SubscriptionOut):
    secret: str = Field(description="the HMAC key of the webhooks: shown this once only")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: path, method, the role it needs (None: open), models, answers."""

    method: Literal["get", "post", "delete"]
    path: str
    name: str
    summary: str
    role: Role | None
    ok: int = 200
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_list: bool = False
    #: Content type of a non-JSON answer (``/metrics``).
    content_type: str | None = None
    errors: tuple[int, ...] = ()


_AUTH = (401, 403)
_BODY = (400, 413, 415)

ROUTES: tuple[Route, ...] = (
    Route("get", "/health", "health", "Liveness and role of this instance", None, 200,
          response=HealthOut, errors=(503,)),
    Route("get", "/openapi.json", "openapi", "This document", "agency",
          content_type="application/json", errors=_AUTH),
    Route("get", "/metrics", "metrics", "Prometheus metrics", "operator",
          content_type="text/plain; version=0.0.4", errors=_AUTH),
    Route("get", "/alerts", "list_alerts", "Open alerts (active instance only)", "agency",
          response=OpenAlertOut, response_list=True, errors=(*_AUTH, 503)),
    Route("post", "/alerts/{alert_id}/ack", "acknowledge",
          "Acknowledge an alert by its alert_id (one acknowledgement per principal)",
          "operator", request=AckIn, response=AckOut,
          errors=(*_AUTH, *_BODY, 404, 409, 503)),
    Route("get", "/subscriptions", "list_subscriptions",
          "The caller's webhook subscriptions (an admin: everyone's)", "agency",
          response=SubscriptionList, errors=_AUTH),
    Route("post", "/subscriptions", "create_subscription",
          "Create a webhook subscription; the answer holds its secret, shown once", "agency",
          ok=201, request=SubscriptionIn, response=SubscriptionWithSecret,
          errors=(*_AUTH, *_BODY, 409, 503)),
    Route("get", "/subscriptions/{sub_id}", "get_subscription", "One subscription", "agency",
          response=SubscriptionOut, errors=(*_AUTH, 404)),
    Route("delete", "/subscriptions/{sub_id}", "delete_subscription", "Delete a subscription",
          "agency", ok=204, errors=(*_AUTH, 404, 503)),
    Route("post", "/subscriptions/{sub_id}/rotate-secret", "rotate_secret",
          "A new secret (shown once); the old one stays valid for the grace period",
          "agency", request=RotateIn, response=SubscriptionWithSecret,
          errors=(*_AUTH, *_BODY, 404, 503)),
)  # fmt: skip

_REASONS = {
    200: "OK",
    201: "Created",
    204: "Deleted",
    400: "Bad request: the body or a parameter is invalid (the error says which)",
    401: "No valid bearer token",
    403: "The token's role does not allow this",
    404: "No such alert or subscription (or not the caller's)",
    409: "A limit was reached (acknowledgements per alert, subscriptions per owner)",
    413: "Body too large",
    415: "Body must be application/json (UTF-8)",
    503: "Not the active instance, or Kafka unavailable; try again",
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    out = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            out.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": UUID_PATTERN},
                    "description": "a UUID"
                    + (" (the alert's alert_id)" if name == "alert_id" else ""),
                }
            )
    return out


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ROUTES`."""
    inputs = [r.request for r in ROUTES if r.request is not None]
    outputs = [r.response for r in ROUTES if r.response is not None]
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "validation") for m in dict.fromkeys(inputs)
    ]
    answers: list[type[BaseModel]] = [*outputs, ErrorOut]
    models += [(m, "serialization") for m in dict.fromkeys(answers)]
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    error = {"application/json": {"schema": ref(ErrorOut, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        params = _path_parameters(r.path)
        if params:
            op["parameters"] = params
        if r.role is None:
            op["security"] = []
        else:
            op["x-required-role"] = r.role
            op["description"] = f"Needs a bearer token of role {r.role} or higher."
        if r.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(r.request, "validation")}},
            }
        ok: dict[str, Any] = {"description": _REASONS[r.ok]}
        if r.response is not None:
            body = ref(r.response, "serialization")
            if r.response_list:
                body = {"type": "array", "items": body}
            ok["content"] = {"application/json": {"schema": body}}
        elif r.content_type is not None:
            ok["content"] = {r.content_type: {"schema": {"type": "string"}}}
            if r.content_type == "application/json":
                ok["content"] = {r.content_type: {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(r.ok): ok}
        for status in r.errors:
            responses[str(status)] = {"description": _REASONS[status], "content": error}
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "civic-iot alert service",
            "version": API_VERSION,
            "description": (
                "Open alerts, acknowledgements and self-service webhook subscriptions. "
                "Every operation but /health needs 'Authorization: Bearer <token>' "
                "(civic-iot tokens create); roles agency < operator < admin. Request "
                "bodies are JSON (Content-Type: application/json, UTF-8) only. Webhook "
                "signatures: docs/webhooks.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "civ_<id>_<secret>, from civic-iot tokens create",
                }
            },
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
