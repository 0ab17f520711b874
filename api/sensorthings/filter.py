"""The ``$filter`` language of SensorThings (OData's, the part STA 1.1 names), parsed
into a small syntax tree. Nothing is evaluated here and nothing is ever handed to
``eval``: :mod:`.evaluate` walks the tree over static entities, :mod:`.observations`
translates it to Flux.

Grammar, lowest precedence first (OData 4.0 / STA 1.1 section 9.3.3.5)::

    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := additive (("eq"|"ne"|"gt"|"ge"|"lt"|"le") additive)?
    additive:= multiply (("add"|"sub") multiply)*
    multiply:= unary (("mul"|"div"|"mod") unary)*
    unary   := "-" unary | primary
    primary := literal | path | function "(" [expr ("," expr)*] ")" | "(" expr ")"

Literals: 'text' (a quote doubled inside), numbers, true, false, null, date-times
(``2026-01-01T08:00:00Z``, ``...+08:00``, fractions), dates (``2026-01-01``), and the
typed ``geography'POINT(lon lat)'`` and ``duration'P1DT2H'``. Paths: property names and
navigation joined by ``/`` (``properties/stationID``, ``Datastream/Thing/name``,
``@iot.id``). Functions: :data:`FUNCTIONS`; any other name is refused, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

__all__ = [
    "FUNCTIONS",
    "Binary",
    "Call",
    "Expr",
    "FilterError",
    "Instant",
    "Lit",
    "Path",
    "Unary",
    "parse_filter",
]


class FilterError(ValueError):
    """A ``$filter`` (or ``$orderby``) this server cannot parse or does not support."""


@dataclass(frozen=True, order=True, slots=True)
class Instant:
    """A point in time, integer nanoseconds since the epoch (UTC)."""

    ns: int


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any
    kind: Literal["string", "number", "bool", "null", "instant", "date", "duration", "point"]


@dataclass(frozen=True, slots=True)
class Path:
    segments: tuple[str, ...]

    def __str__(self) -> str:
        return "/".join(self.segments)


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Unary:
    op: Literal["not", "neg"]
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr


Expr = Lit | Path | Call | Unary | Binary

COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
ARITHMETIC = ("add", "sub", "mul", "div", "mod")
#: Supported functions and how many arguments each takes (min, max).
FUNCTIONS: dict[str, tuple[int, int]] = {
    # strings
    "substringof": (2, 2),
    "contains": (2, 2),
    "startswith": (2, 2),
    "endswith": (2, 2),
    "length": (1, 1),
    "indexof": (2, 2),
    "substring": (2, 3),
    "tolower": (1, 1),
    "toupper": (1, 1),
    "trim": (1, 1),
    "concat": (2, 2),
    # date and time
    "year": (1, 1),
    "month": (1, 1),
    "day": (1, 1),
    "hour": (1, 1),
    "minute": (1, 1),
    "second": (1, 1),
    "fractionalseconds": (1, 1),
    "date": (1, 1),
    "time": (1, 1),
    "totaloffsetminutes": (1, 1),
    "now": (0, 0),
    "mindatetime": (0, 0),
    "maxdatetime": (0, 0),
    # math
    "round": (1, 1),
    "floor": (1, 1),
    "ceiling": (1, 1),
    # geospatial (points)
    "geo.distance": (2, 2),
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<instant>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\d:T]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^']|'')*')
  | (?P<typed>(?:geography|geometry|duration)'(?:[^']|'')*')
  | (?P<name>[A-Za-z_@$][A-Za-z0-9_.@$]*(?:/[A-Za-z_@$][A-Za-z0-9_.@$]*)*)
  | (?P<punct>[(),-])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", *COMPARISONS, *ARITHMETIC, "true", "false", "null"}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            msg = f"unexpected character {text[pos]!r} at position {pos}"
            raise FilterError(msg)
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return out


def parse_instant(text: str) -> Instant:
    """An RFC 3339 date-time (seconds optional) as an :class:`Instant`."""
    t = text.replace("Z", "+00:00")
    frac = 0
    m = re.match(r"(.*T\d{2}:\d{2}:\d{2})\.(\d{1,9})(.*)", t)
    if m:
        t, frac = m.group(1) + m.group(3), int(m.group(2).ljust(9, "0"))
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        msg = f"not a valid date-time: {text!r}"
        raise FilterError(msg) from None
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return Instant((delta.days * 86_400 + delta.seconds) * 1_000_000_000 + frac)


_DURATION = re.compile(
    r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE
)


def _typed(tok: _Tok) -> Lit:
    kind, _, rest = tok.text.partition("'")
    body = rest[:-1].replace("''", "'")
    if kind == "duration":
        m = _DURATION.fullmatch(body)
        if m is None or body.upper() in ("P", "PT"):
            msg = f"not an ISO 8601 duration (PnDTnHnMnS): {body!r} at position {tok.pos}"
            raise FilterError(msg)
        d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        return Lit(round(((d * 24 + h) * 60 + mi) * 60e9 + s * 1e9), "duration")
    m = re.fullmatch(
        r"\s*(?:SRID=\d+;)?\s*POINT\s*\(\s*(-?[\d.]+(?:[eE][+-]?\d+)?)\s+(-?[\d.]+(?:[eE][+-]?\d+)?)\s*\)\s*",
        body,
        re.IGNORECASE,
    )
    if m is None:
        msg = f"only POINT geometries are supported in {kind}'...' (got {body!r})"
        raise FilterError(msg)
    return Lit((float(m.group(1)), float(m.group(2))), "point")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            msg = "unexpected end of the expression"
            raise FilterError(msg)
        self.i += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind == "name" and tok.text in words:
            self.i += 1
            return tok.text
        return None

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            msg = f"expected {text!r} at position {tok.pos}, got {tok.text!r}"
            raise FilterError(msg)

    # --- precedence levels
    def parse(self) -> Expr:
        if not self.toks:
            msg = "empty expression"
            raise FilterError(msg)
        expr = self.or_()
        tok = self.peek()
        if tok is not None:
            msg = f"unexpected {tok.text!r} at position {tok.pos}"
            raise FilterError(msg)
        return expr

    def or_(self) -> Expr:
        left = self.and_()
        while self.keyword("or"):
            left = Binary("or", left, self.and_())
        return left

    def and_(self) -> Expr:
        left = self.not_()
        while self.keyword("and"):
            left = Binary("and", left, self.not_())
        return left

    def not_(self) -> Expr:
        if self.keyword("not"):
            return Unary("not", self.not_())
        return self.compare()

    def compare(self) -> Expr:
        left = self.additive()
        op = self.keyword(*COMPARISONS)
        if op:
            return Binary(op, left, self.additive())
        return left

    def additive(self) -> Expr:
        left = self.multiply()
        while op := self.keyword("add", "sub"):
            left = Binary(op, left, self.multiply())
        return left

    def multiply(self) -> Expr:
        left = self.unary()
        while op := self.keyword("mul", "div", "mod"):
            left = Binary(op, left, self.unary())
        return left

    def unary(self) -> Expr:
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == "-":
            self.i += 1
            return Unary("neg", self.unary())
        return self.primary()

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind == "punct" and tok.text == "(":
            inner = self.or_()
            self.expect(")")
            return inner
        if tok.kind == "string":
            return Lit(tok.text[1:-1].replace("''", "'"), "string")
        if tok.kind == "number":
            num = float(tok.text)
            return Lit(int(num) if re.fullmatch(r"-?\d+", tok.text) else num, "number")
        if tok.kind == "instant":
            return Lit(parse_instant(tok.text), "instant")
        if tok.kind == "date":
            try:
                return Lit(date.fromisoformat(tok.text), "date")
            except ValueError:
                msg = f"not a valid date: {tok.text!r} at position {tok.pos}"
                raise FilterError(msg) from None
        if tok.kind == "typed":
            return _typed(tok)
        if tok.kind == "name":
            return self.name(tok)
        msg = f"unexpected {tok.text!r} at position {tok.pos}"
        raise FilterError(msg)

    def name(self, tok: _Tok) -> Expr:
        if tok.text in ("true", "false"):
            return Lit(tok.text == "true", "bool")
        if tok.text == "null":
            return Lit(None, "null")
        if tok.text in _KEYWORDS:
            msg = f"unexpected {tok.text!r} at position {tok.pos}"
            raise FilterError(msg)
        nxt = self.peek()
        if nxt is not None and nxt.text == "(" and "/" not in tok.text:
            return self.call(tok)
        return Path(tuple(tok.text.split("/")))

    def call(self, tok: _Tok) -> Expr:
        name = tok.text.lower() if tok.text.lower() in FUNCTIONS else tok.text
        if name not in FUNCTIONS:
            msg = (
                f"function {tok.text!r} (position {tok.pos}) is not supported; supported: "
                f"{', '.join(sorted(FUNCTIONS))}"
            )
            raise FilterError(msg)
        self.expect("(")
        args: list[Expr] = []
        if self.peek() is not None and self.peek().text != ")":  # type: ignore[union-attr]
            args.append(self.or_())
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.i += 1
                args.append(self.or_())
        self.expect(")")
        lo, hi = FUNCTIONS[name]
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo}-{hi}"
            msg = f"{name}() takes {want} argument(s), got {len(args)} (position {tok.pos})"
            raise FilterError(msg)
        return Call(name, tuple(args))


def parse_filter(text: str) -> Expr:
    """The syntax tree of a ``$filter`` expression; :class:`FilterError` names what is
    wrong and where."""
    return _Parser(text).parse()


def parse_expression(text: str) -> Expr:
    """One expression of ``$orderby`` (a property path, usually)."""
    return _Parser(text).parse()


def conjuncts(expr: Expr) -> list[Expr]:
    """The operands of a top-level ``and`` chain."""
    if isinstance(expr, Binary) and expr.op == "and":
        return conjuncts(expr.left) + conjuncts(expr.right)
    return [expr]


def paths(expr: Expr) -> list[Path]:
    """Every property path in an expression."""
    if isinstance(expr, Path):
        return [expr]
    if isinstance(expr, Unary):
        return paths(expr.operand)
    if isinstance(expr, Binary):
        return paths(expr.left) + paths(expr.right)
    if isinstance(expr, Call):
        return [p for a in expr.args for p in paths(a)]
    return []
