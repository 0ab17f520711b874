"""The OpenAPI document the application generates (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from api.app import create_app
from civic_iot.settings import Settings


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def _ops(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{m.upper()} {p}", op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"].startswith("3.1.")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token: `civic-iot tokens create NAME --role agency|operator|admin`.",
    }


def test_bad_input_is_documented_as_400_with_the_error_shape(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"status", "error", "message"}
    for name, op in _ops(doc):
        assert "422" not in op["responses"], name
        if op.get("parameters"):
            ref = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), name


def test_public_and_token_operations(doc: dict[str, Any]) -> None:
    token_only = {
        "GET /api/v1/pipeline",
        "GET /api/v1/deadletters",
        "GET /api/v1/devices/{device_id}/thresholds",
        "GET /live/ops",
        "GET /console/me",
        "POST /console/alerts/{alert_id}/ack",
    }
    for name, op in _ops(doc):
        if name == "GET /health":
            assert "security" not in op
        elif name in token_only:
            assert op["security"] == [{"bearer": []}], name
            assert {"401", "403"} <= set(op["responses"]), name
        else:
            assert op["security"] == [{}, {"bearer": []}], name  # a token is optional
            assert "429" in op["responses"], name


def test_no_page_that_loads_a_cdn() -> None:
    app = create_app(Settings())
    paths = {getattr(r, "path", "") for r in app.routes}
    assert not paths & {"/docs", "/redoc", "/docs/oauth2-redirect"}
    assert app.docs_url is None
    assert app.redoc_url is None
