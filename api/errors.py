"""The one error shape of the API, and the exception that carries it.

Every error answers JSON ``{"status": 404, "error": "not_found", "message": "..."}``:
``message`` says what was wrong and what is expected (the parameter, the value, the
allowed ones). Bad input is a 4xx, never a 500; InfluxDB unavailable is a 503 with
``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from pydantic import BaseModel, Field

__all__ = ["ApiError", "ErrorBody", "error_code"]


class ErrorBody(BaseModel):
    """An error answer."""

    status: int = Field(description="the HTTP status, repeated")
    error: str = Field(description="the status as a short code: bad_request, not_found ...")
    message: str = Field(description="what was wrong, naming the parameter or value")


def error_code(status: int) -> str:
    """``404`` -> ``not_found``."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class ApiError(Exception):
    """An answer other than success: raised anywhere below a route, answered as
    :class:`ErrorBody` by the handler :func:`api.app.create_app` installs."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(status=self.status, error=error_code(self.status), message=self.message)
