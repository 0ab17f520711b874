"""Dependencies every router of the API shares: who is calling, and the public limit.

- :func:`principal` ``(role)``: a bearer token with at least ``role`` (:mod:`civic_iot.auth`);
  401 without a valid one (``WWW-Authenticate: Bearer``), 403 with too little right, both
  as the API's JSON error. Only the ``Authorization: Bearer`` header is read (no cookie,
  no query parameter).
- :func:`public`: data anyone may read. Without a token the request counts against its
  client IP's rate limit (:mod:`api.ratelimit`; 429 with ``Retry-After`` when spent);
  with a token the token must be valid (a bad one is a 401, not silently anonymous) and
  the request is not counted.

Routes declare them with ``Depends``; :data:`PUBLIC` is the ``openapi_extra`` of a public
route (its security is optional in the OpenAPI document).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.context import ApiContext
from api.errors import ApiError
from api.ratelimit import retry_after
from civic_iot.auth import AuthError, Principal, Role

__all__ = ["BEARER", "PUBLIC", "client_ip", "context", "principal", "public"]

#: The bearer scheme in the OpenAPI document (the header is parsed by civic_iot.auth).
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="An API token: `civic-iot tokens create NAME --role agency|operator|admin`.",
    auto_error=False,
)
#: ``openapi_extra`` of a public route: no token needed, one accepted.
PUBLIC: dict[str, Any] = {"security": [{}, {"bearer": []}]}


def context(request: Request) -> ApiContext:
    """The application's shared context."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def client_ip(request: Request) -> str:
    """The client's address (the proxy's ``X-Forwarded-For`` only from trusted proxies:
    uvicorn rewrites the peer when ``CIVIC_API__TRUSTED_PROXIES`` names them)."""
    return request.client.host if request.client is not None else "unknown"


def _auth_error(exc: AuthError) -> ApiError:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    return ApiError(exc.status, exc.message, headers)


def principal(required_role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's principal, whose role includes ``required_role``."""

    async def _principal(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(BEARER),  # noqa: B008
    ) -> Principal:
        try:
            who = context(request).tokens.authenticate_header(request.headers.get("authorization"))
            who.require(required_role)
        except AuthError as exc:
            raise _auth_error(exc) from None
        return who

    _principal.__name__ = f"principal_{required_role}"
    return _principal


async def public(request: Request) -> Principal | None:
    """A dependency of public routes: the principal when a token is sent, else ``None``
    once the client's IP has a request left."""
    ctx = context(request)
    header = request.headers.get("authorization")
    if header is not None:
        try:
            return ctx.tokens.authenticate_header(header)
        except AuthError as exc:
            raise _auth_error(exc) from None
    wait = ctx.limiter.take(client_ip(request), ctx.clock())
    if wait > 0:
        limit = ctx.settings.api
        msg = (
            f"rate limit without a token: {limit.public_rate_per_s:g} requests/s per client "
            f"(bursts of {limit.public_burst}); retry in {wait:.1f} s or send a token"
        )
        raise ApiError(429, msg, {"Retry-After": retry_after(wait)})
    return None
