"""Flux queries to InfluxDB over its HTTP API (aiohttp), answers as plain rows.

``POST /api/v2/query`` with the annotated CSV dialect (a ``#datatype`` row per table),
parsed here into dicts with typed values: ``long`` and ``unsignedLong`` as ``int``,
``double`` as ``float``, ``boolean`` as ``bool``, times as integer nanoseconds (exact,
which a ``datetime`` is not), everything else as text. InfluxDB 2.7 (OSS) takes no query
parameters, so values enter a query only through :func:`flux_string`, :func:`flux_time`
and names checked against the registry and the storage schema (:mod:`api.queries`).

Errors become the project's own: :class:`StorageUnavailable` when InfluxDB cannot answer
(connection refused or reset, timeout, 5xx, 429, a wrong token), :class:`QueryFailed`
when it refuses the query (a bug here: the query is logged).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

__all__ = [
    "FluxClient",
    "QueryFailed",
    "Row",
    "StorageUnavailable",
    "flux_string",
    "flux_time",
    "format_ns",
    "parse_csv",
    "parse_time_ns",
]

Row = dict[str, Any]


class StorageUnavailable(Exception):  # noqa: N818 - the project's name for it
    """InfluxDB did not answer (down, timing out, overloaded, refusing our token)."""


class QueryFailed(Exception):  # noqa: N818
    """InfluxDB refused a query as written."""


# --------------------------------------------------------------------------- values


def flux_string(value: str) -> str:
    """A Flux string literal of ``value`` (quotes, backslashes and ``${`` escaped)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def format_ns(ns: int) -> str:
    """RFC 3339 UTC with as many fraction digits as needed (at most 9):
    ``2026-01-02T03:04:05.5Z``."""
    secs, frac = divmod(ns, 1_000_000_000)
    head = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        return f"{head}.{frac:09d}".rstrip("0") + "Z"
    return f"{head}Z"


def flux_time(ns: int) -> str:
    """A Flux time value of integer nanoseconds since the epoch."""
    return f"time(v: {flux_string(format_ns(ns))})"


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ns(text: str) -> int:
    """Integer nanoseconds of an RFC 3339 time with an offset (all 9 fraction digits
    kept); ``ValueError`` otherwise."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        msg = f"not an RFC 3339 time with an offset: {text!r}"
        raise ValueError(msg)
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    delta = dt - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000
    if frac:
        ns += int(frac.ljust(9, "0"))
    if not z:
        offset = (int(oh) * 60 + int(om)) * 60 * 1_000_000_000
        ns += -offset if sign == "+" else offset
    return ns


# --------------------------------------------------------------------------- CSV


def _convert(kind: str, text: str) -> Any:
    if text == "":
        return None
    if kind in ("long", "unsignedLong"):
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "boolean":
        return text == "true"
    if kind.startswith("dateTime"):
        return parse_time_ns(text)
    return text


def parse_csv(text: str, *, keep_result: bool = False) -> Iterator[Row]:
    """The rows of an annotated CSV answer (``#datatype`` annotations, a header per
    table); a Flux runtime error inside the answer raises :class:`QueryFailed`.
    ``keep_result``: keep the ``result`` column (the name a ``yield`` gave the table)."""
    skip = ("", "table") if keep_result else ("", "result", "table")
    types: list[str] | None = None
    header: list[str] | None = None
    for rec in csv.reader(text.splitlines()):
        if not rec or rec == [""]:
            types = header = None  # a blank line ends a table
            continue
        if rec[0] == "#datatype":
            types, header = rec, None
            continue
        if rec[0].startswith("#"):
            continue
        if header is None:
            header = rec
            if "error" in header and "reference" in header:
                types = None  # the error table: its one row follows
            continue
        if types is None:
            err = dict(zip(header, rec, strict=False))
            raise QueryFailed(err.get("error") or str(rec))
        yield {
            name: _convert(kind, value)
            for name, kind, value in zip(header, types, rec, strict=False)
            if name not in skip
        }


# --------------------------------------------------------------------------- client


class FluxClient:
    """One InfluxDB organisation's query endpoint, over a kept-alive aiohttp session."""

    def __init__(self, url: str, org: str, token: str, timeout_s: float) -> None:
        self.url = url.rstrip("/") + "/api/v2/query"
        self.org = org
        self._headers = {
            "Authorization": f"Token {token}",
            "Accept": "application/csv",
            "Content-Type": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
                timeout=self._timeout,
            )
        return self._session

    async def query_many(self, scripts: list[str]) -> list[list[Row]]:
        """Several queries in one request, each its own ``yield`` (InfluxDB plans and
        answers them together: one round trip and one planning instead of several);
        their rows in order. Each script is one pipeline; their imports are hoisted."""
        if len(scripts) == 1:
            return [await self.query(scripts[0])]
        imports: dict[str, None] = {}
        bodies = []
        for i, script in enumerate(scripts):
            lines = script.splitlines()
            imports.update((ln, None) for ln in lines if ln.startswith("import "))
            body = "\n".join(ln for ln in lines if not ln.startswith("import "))
            bodies.append(f'{body}\n  |> yield(name: "q{i}")')
        rows = await self.query("\n".join([*imports, *bodies]), keep_result=True)
        out: list[list[Row]] = [[] for _ in scripts]
        for row in rows:
            out[int(str(row.pop("result"))[1:])].append(row)
        return out

    async def query(self, flux: str, *, keep_result: bool = False) -> list[Row]:
        """Run a Flux query; every row of every table."""
        body = {
            "query": flux,
            "type": "flux",
            "dialect": {"header": True, "annotations": ["datatype"], "delimiter": ","},
        }
        try:
            async with self._open().post(
                self.url, params={"org": self.org}, json=body, headers=self._headers
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            msg = f"InfluxDB at {self.url} did not answer: {type(exc).__name__} {exc}"
            raise StorageUnavailable(msg) from None
        if status >= 500 or status in (401, 403, 404, 408, 429):
            msg = f"InfluxDB answered {status}: {text[:300]}"
            raise StorageUnavailable(msg)
        if status >= 400:
            logger.error("flux query refused status=%s answer=%s query=%s", status, text, flux)
            msg = f"InfluxDB refused a query ({status}): {text[:300]}"
            raise QueryFailed(msg)
        try:
            return list(parse_csv(text, keep_result=keep_result))
        except QueryFailed:
            logger.error("flux query failed answer=%s query=%s", text[:500], flux)
            raise

    async def ping(self) -> bool:
        """Whether InfluxDB answers its ``/ping`` (no token needed)."""
        try:
            async with self._open().get(self.url.removesuffix("/api/v2/query") + "/ping") as r:
                return r.status == 204
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
