"""``$filter`` and ``$orderby`` over the static entities (everything but Observations),
in Python, by walking the syntax tree of :mod:`.filter`.

A path through a to-many navigation (``Datastreams/name`` on a Thing) stands for all the
values it reaches, and a comparison holds when it holds for one of them (as in FROST and
the STA examples: "Things with a Datastream named ..."). A missing property is ``null``:
``eq null`` holds, every other comparison does not. Values of different types never
compare equal or ordered (no error: the entity is simply not selected).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from api.sensorthings.filter import (
    Binary,
    Call,
    Expr,
    FilterError,
    Instant,
    Lit,
    Path,
    Unary,
)
from api.sensorthings.model import SETS, Entity, Graph

__all__ = ["Evaluator", "compare"]

_MIN = Instant(-(2**63))
_MAX = Instant(2**63 - 1)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Instant):
        return "instant"
    if isinstance(v, date):
        return "date"
    return type(v).__name__


def compare(op: str, a: Any, b: Any) -> bool:
    """``a op b`` with OData's null rules; values of different kinds never match."""
    if a is None or b is None:
        if op == "eq":
            return a is None and b is None
        if op == "ne":
            return (a is None) != (b is None)
        return False
    if _kind(a) != _kind(b):
        return False
    if op == "eq":
        return bool(a == b)
    if op == "ne":
        return bool(a != b)
    if isinstance(a, bool | dict | list | tuple):
        return False
    try:
        return bool({"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op])
    except TypeError:
        return False


def _dt(i: Instant) -> datetime:
    return datetime.fromtimestamp(i.ns // 1_000_000_000, UTC)


def _point(v: Any) -> tuple[float, float] | None:
    if isinstance(v, tuple) and len(v) == 2:
        return float(v[0]), float(v[1])
    if isinstance(v, dict) and v.get("type") == "Point":
        c = v.get("coordinates") or []
        if len(c) >= 2:
            return float(c[0]), float(c[1])
    return None


def _arith(op: str, a: Any, b: Any) -> Any:
    if _kind(a) != "number" or _kind(b) != "number":
        if op in ("add", "sub") and isinstance(a, Instant) and isinstance(b, int):
            return Instant(a.ns + b if op == "add" else a.ns - b)
        return None
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0:
        return None
    return a / b if op == "div" else math.fmod(a, b)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _function(name: str, args: Sequence[Any], now: Instant) -> Any:
    """One function on single values (``None`` when the arguments do not fit)."""
    if name == "now":
        return now
    if name == "mindatetime":
        return _MIN
    if name == "maxdatetime":
        return _MAX
    a = args[0]
    if name in ("substringof", "contains", "startswith", "endswith", "indexof", "concat"):
        x, y = _str(args[0]), _str(args[1])
        if x is None or y is None:
            return None
        if name == "substringof":
            return x in y
        if name == "contains":
            return y in x
        if name == "startswith":
            return x.startswith(y)
        if name == "endswith":
            return x.endswith(y)
        return x.find(y) if name == "indexof" else x + y
    if name in ("length", "tolower", "toupper", "trim"):
        s = _str(a)
        if s is None:
            return None
        return {"length": len, "tolower": str.lower, "toupper": str.upper, "trim": str.strip}[name](
            s
        )
    if name == "substring":
        s = _str(a)
        if s is None or not all(isinstance(x, int) for x in args[1:]):
            return None
        start = args[1]
        return s[start : start + args[2]] if len(args) == 3 else s[start:]
    if name in ("round", "floor", "ceiling"):
        if _kind(a) != "number":
            return None
        if name == "round":
            return math.floor(a + 0.5)
        return math.floor(a) if name == "floor" else math.ceil(a)
    if name == "geo.distance":
        p, q = _point(args[0]), _point(args[1])
        if p is None or q is None:
            return None
        # Planar distance in degrees, as FROST computes it on WGS 84 coordinates.
        return math.hypot(p[0] - q[0], p[1] - q[1])
    if isinstance(a, Instant):
        dt = _dt(a)
        parts: dict[str, Callable[[], Any]] = {
            "year": lambda: dt.year,
            "month": lambda: dt.month,
            "day": lambda: dt.day,
            "hour": lambda: dt.hour,
            "minute": lambda: dt.minute,
            "second": lambda: dt.second,
            "fractionalseconds": lambda: (a.ns % 1_000_000_000) / 1e9,
            "date": dt.date,
            "time": lambda: a.ns % 86_400_000_000_000,
            "totaloffsetminutes": lambda: 0,
        }
        return parts[name]() if name in parts else None
    if isinstance(a, date) and name in ("year", "month", "day"):
        return getattr(a, name)
    return None


class Evaluator:
    """Evaluates expressions on entities of one graph, at one instant (``now()``)."""

    def __init__(self, graph: Graph, now_ns: int) -> None:
        self.graph = graph
        self.now = Instant(now_ns)

    # ------------------------------------------------------------------ paths

    def resolve(self, entity: Entity, segments: Sequence[str], whole: str) -> list[Any]:
        """The values a path reaches from ``entity`` (several through a to-many link)."""
        if not segments:
            return [entity]
        head, rest = segments[0], segments[1:]
        spec = SETS[entity.set]
        if head in ("@iot.id", "id"):
            return [entity.id] if not rest else [None]
        if head in spec.navs:
            if spec.navs[head].target == "Observations":
                msg = (
                    f"$filter {whole!r}: filtering {entity.set} by their Observations is not "
                    "supported; query the Observations and filter on their Datastream"
                )
                raise FilterError(msg)
            return [
                v for e in self.graph.linked(entity, head) for v in self.resolve(e, rest, whole)
            ]
        if head not in entity.props:
            msg = (
                f"$filter {whole!r}: {entity.set} have no property or navigation {head!r}; "
                f"known: {', '.join([*spec.properties, *spec.navs])}"
            )
            raise FilterError(msg)
        value: Any = entity.props[head]
        for seg in rest:
            value = value.get(seg) if isinstance(value, dict) else None
        return [value]

    # ------------------------------------------------------------------ expressions

    def values(self, expr: Expr, entity: Entity) -> list[Any]:
        if isinstance(expr, Lit):
            return [expr.value]
        if isinstance(expr, Path):
            return self.resolve(entity, expr.segments, str(expr))
        if isinstance(expr, Call):
            arg_values = [self.values(a, entity) for a in expr.args]
            return [
                _function(expr.name, combo, self.now) for combo in itertools.product(*arg_values)
            ]
        if isinstance(expr, Unary):
            if expr.op == "not":
                return [not self.truth(expr.operand, entity)]
            return [-v if _kind(v) == "number" else None for v in self.values(expr.operand, entity)]
        if expr.op in ("and", "or") or expr.op in ("eq", "ne", "gt", "ge", "lt", "le"):
            return [self.truth(expr, entity)]
        lefts, rights = self.values(expr.left, entity), self.values(expr.right, entity)
        return [_arith(expr.op, a, b) for a in lefts for b in rights]

    def truth(self, expr: Expr, entity: Entity) -> bool:
        """Whether ``entity`` satisfies ``expr``."""
        if isinstance(expr, Binary):
            if expr.op == "and":
                return self.truth(expr.left, entity) and self.truth(expr.right, entity)
            if expr.op == "or":
                return self.truth(expr.left, entity) or self.truth(expr.right, entity)
            if expr.op in ("eq", "ne", "gt", "ge", "lt", "le"):
                lefts = self.values(expr.left, entity)
                rights = self.values(expr.right, entity)
                return any(compare(expr.op, a, b) for a in lefts for b in rights)
        if isinstance(expr, Unary) and expr.op == "not":
            return not self.truth(expr.operand, entity)
        return any(v is True for v in self.values(expr, entity))

    def sort_key(self, expr: Expr, entity: Entity) -> tuple[int, Any]:
        """An orderable key: ``null`` first, then by kind, then by value."""
        vals = self.values(expr, entity)
        v = vals[0] if vals else None
        if v is None:
            return (0, 0)
        rank = {"bool": 1, "number": 2, "string": 3, "instant": 4, "date": 5}.get(_kind(v))
        if rank is None:
            return (9, str(v))
        return (rank, v)
