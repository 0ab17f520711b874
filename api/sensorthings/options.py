"""The resource path and the query options of a SensorThings request, parsed without
I/O: ``Things('air-0001')/Datastreams?$top=5&$expand=Observations($top=1;$orderby=...)``.

Supported: ``$top``, ``$skip``, ``$count``, ``$select``, ``$orderby`` (``asc``/``desc``),
``$expand`` (nested, with its own options after ``(`` separated by ``;``, and paths like
``Datastreams/Observations``) and ``$filter`` (:mod:`.filter`). Any other ``$`` option
(``$resultFormat``, ``$search`` ...) is refused, naming it; options without ``$`` are
left alone, as the specification asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from api.sensorthings.filter import Expr, FilterError, parse_expression, parse_filter

__all__ = [
    "Options",
    "OrderKey",
    "Segment",
    "parse_options",
    "parse_path",
    "split_top",
]

OPTIONS = ("$top", "$skip", "$count", "$select", "$orderby", "$expand", "$filter")


@dataclass(frozen=True, slots=True)
class OrderKey:
    expr: Expr
    desc: bool
    text: str


@dataclass(frozen=True)
class Options:
    """The query options of one level (the request, or one ``$expand`` item)."""

    top: int | None = None
    skip: int = 0
    count: bool = False
    select: tuple[str, ...] | None = None
    orderby: tuple[OrderKey, ...] = ()
    filter: Expr | None = None
    filter_text: str = ""
    #: navigation property -> the options of its expansion
    expand: Mapping[str, Options] = field(default_factory=dict)


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` where it is outside parentheses and quotes."""
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _int(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        msg = f"{name} must be a whole number >= 0 (got {value!r})"
        raise FilterError(msg)
    return int(value)


def _orderby(value: str) -> tuple[OrderKey, ...]:
    keys = []
    for part in split_top(value, ","):
        text = part.strip()
        m = re.fullmatch(r"(.+?)(?:\s+(asc|desc))?", text, re.IGNORECASE)
        if not text or m is None:
            msg = f"$orderby: empty item in {value!r}"
            raise FilterError(msg)
        try:
            expr = parse_expression(m.group(1))
        except FilterError as exc:
            msg = f"$orderby {text!r}: {exc}"
            raise FilterError(msg) from None
        keys.append(OrderKey(expr, (m.group(2) or "asc").lower() == "desc", text))
    return tuple(keys)


def _select(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(","))
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z@][A-Za-z0-9_.@]*", n)]
    if bad or not names:
        msg = f"$select: not property names: {bad or [value]}"
        raise FilterError(msg)
    return names


def _merge(a: Options, b: Options) -> Options:
    expand = dict(a.expand)
    for k, v in b.expand.items():
        expand[k] = _merge(expand[k], v) if k in expand else v
    changes = {
        k: getattr(b, k)
        for k in ("top", "select", "filter")
        if getattr(b, k) is not None and getattr(a, k) is None
    }
    if b.skip and not a.skip:
        changes["skip"] = b.skip
    if b.count:
        changes["count"] = True
    if b.orderby and not a.orderby:
        changes["orderby"] = b.orderby
    if b.filter_text and not a.filter_text:
        changes["filter_text"] = b.filter_text
    return replace(a, expand=expand, **changes)


def _item(text: str) -> tuple[list[str], str]:
    """``Nav/Nav2($opt=...;...)`` -> (path, the text inside the parentheses)."""
    m = re.match(r"([A-Za-z][A-Za-z0-9]*(?:/[A-Za-z][A-Za-z0-9]*)*)\s*", text)
    if m is None:
        msg = f"$expand: cannot read {text!r}; expected Nav or Nav($option=...;...)"
        raise FilterError(msg)
    path, rest = m.group(1).split("/"), text[m.end() :]
    if not rest:
        return path, ""
    close = _closing(rest) if rest.startswith("(") else -1
    if close != len(rest) - 1:
        msg = (
            f"$expand: cannot read {text!r}: options go in one pair of parentheses at the "
            "end, separated by ';' (a nested expansion: Nav($expand=Inner(...)))"
        )
        raise FilterError(msg)
    return path, rest[1:-1]


def _closing(text: str) -> int:
    """The index of the parenthesis closing ``text[0]`` (outside quotes), or -1."""
    depth, quoted = 0, False
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _expand(value: str) -> dict[str, Options]:
    out: dict[str, Options] = {}
    for item in split_top(value, ","):
        path, inside = _item(item.strip())
        inner: dict[str, str] = {}
        for opt in split_top(inside, ";"):
            if not opt.strip():
                continue
            name, eq, val = opt.partition("=")
            if not eq:
                msg = f"$expand {path[0]}: option {opt!r} needs a value ($name=value)"
                raise FilterError(msg)
            inner[name.strip()] = val
        opts = parse_options(inner.items())
        # Datastreams/Observations(...): Datastreams expanded, Observations(...) inside.
        for nav in reversed(path[1:]):
            opts = Options(expand={nav: opts})
        head = path[0]
        out[head] = _merge(out[head], opts) if head in out else opts
    return out


def parse_options(params: Iterable[tuple[str, str]]) -> Options:
    """The options of a query string's decoded pairs (repeated options refused)."""
    seen: dict[str, str] = {}
    for name, value in params:
        if not name.startswith("$"):
            continue
        if name not in OPTIONS:
            msg = f"query option {name!r} is not supported; supported: {', '.join(OPTIONS)}"
            raise FilterError(msg)
        if name in seen:
            msg = f"query option {name} given twice"
            raise FilterError(msg)
        seen[name] = value
    filt = None
    if "$filter" in seen:
        try:
            filt = parse_filter(seen["$filter"])
        except FilterError as exc:
            msg = f"$filter: {exc}"
            raise FilterError(msg) from None
    count = seen.get("$count", "false").strip().lower()
    if count not in ("true", "false"):
        msg = f"$count must be true or false (got {seen['$count']!r})"
        raise FilterError(msg)
    return Options(
        top=_int("$top", seen["$top"]) if "$top" in seen else None,
        skip=_int("$skip", seen["$skip"]) if "$skip" in seen else 0,
        count=count == "true",
        select=_select(seen["$select"]) if "$select" in seen else None,
        orderby=_orderby(seen["$orderby"]) if "$orderby" in seen else (),
        filter=filt,
        filter_text=seen.get("$filter", ""),
        expand=_expand(seen["$expand"]) if "$expand" in seen else {},
    )


@dataclass(frozen=True, slots=True)
class Segment:
    """One step of a resource path: a name, and the entity key when one is given."""

    name: str
    key: str | None = None


_SEGMENT = re.compile(r"([A-Za-z$@][A-Za-z0-9_.@]*)(?:\((?:'((?:[^']|'')*)'|(\d+))\))?")


def parse_path(path: str) -> list[Segment]:
    """``Things('a')/Datastreams`` -> segments; :class:`FilterError` when unreadable."""
    out: list[Segment] = []
    for raw in path.strip("/").split("/"):
        m = _SEGMENT.fullmatch(raw)
        if m is None:
            msg = f"cannot read the path segment {raw!r}; expected Name or Name('id')"
            raise FilterError(msg)
        key = m.group(2).replace("''", "'") if m.group(2) is not None else m.group(3)
        out.append(Segment(m.group(1), key))
    return out
