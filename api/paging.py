"""Paging and time parameters shared by the read routes."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated

from fastapi import Query, Request
from starlette.datastructures import URL

from api.deps import context
from api.errors import ApiError
from civic_iot.times import to_ns

__all__ = ["Limit", "Offset", "absolute_url", "next_url", "now_ns", "time_ns", "window_s"]

Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]
Limit = Annotated[
    int | None,
    Query(ge=1, description="items per page (default CIVIC_API__DEFAULT_PAGE, at most _MAX_PAGE)"),
]


def page_size(request: Request, limit: int | None) -> int:
    api = context(request).settings.api
    if limit is None:
        return api.default_page
    if limit > api.max_page:
        msg = f"query parameter 'limit': at most {api.max_page} (got {limit})"
        raise ApiError(400, msg)
    return limit


def absolute_url(request: Request, url: URL) -> str:
    """``url`` as clients reach it (``CIVIC_API__PUBLIC_URL`` when behind a proxy)."""
    public = context(request).settings.api.public_url
    if public:
        base = URL(public.rstrip("/"))
        url = url.replace(scheme=base.scheme, netloc=base.netloc, path=base.path + url.path)
    return str(url)


def next_url(request: Request, offset: int, limit: int, more: bool) -> str | None:
    """The URL of the following page, or ``None`` on the last."""
    if not more:
        return None
    url = request.url.include_query_params(offset=offset + limit, limit=limit)
    return absolute_url(request, url)


def now_ns() -> int:
    return time.time_ns()


def time_ns(value: datetime | None, default: int) -> int:
    return default if value is None else to_ns(value)


_DURATION = re.compile(r"([1-9][0-9]{0,6})(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_s(every: str) -> int:
    """Seconds of a window like ``1m``, ``15s``, ``1h``, ``1d``; 400 otherwise."""
    m = _DURATION.fullmatch(every)
    if m is None:
        msg = f"query parameter 'every': a whole number and s, m, h or d, e.g. 1m (got {every!r})"
        raise ApiError(400, msg)
    return int(m.group(1)) * _UNIT_S[m.group(2)]
