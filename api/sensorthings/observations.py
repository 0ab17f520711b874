"""Observations: stored points read from InfluxDB, ``$filter`` translated to Flux.

An Observation is one field of one stored point of a Datastream's measurement:
``phenomenonTime`` and ``resultTime`` are the point's time (a sensor reports when it
measures), ``result`` its value. A ``$filter`` on Observations is split at its top-level
``and``: parts about the Observation itself (``result``, ``phenomenonTime``,
``resultTime``, with comparisons, arithmetic, the date/time and rounding functions) are
translated to a Flux predicate, and bounds on the time also narrow the query's range;
parts about ``Datastream/...`` or ``FeatureOfInterest/...`` choose the Datastreams (in
Python, over the static graph). A part mixing both inside ``or``/``not`` is refused,
naming it, and so is anything that has no meaning on a number or a time.

Reading order: storage returns each series oldest first, so for "oldest first" each
series is cut at ``$skip + $top + 1`` before the merge; "newest first" reads widening
windows back from now (1 h, 1 d, 7 d, 31 d, all) until enough points are found, and one
newest point per Datastream (``$top=1``, the usual "latest value" expansion) is InfluxDB's
pushed-down ``last()``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from api.influx import FluxClient, Row, flux_string, flux_time
from api.queries import FAR_FUTURE_NS, in_pred
from api.sensorthings.filter import Binary, Call, Expr, FilterError, Instant, Lit, Path, Unary
from api.sensorthings.model import DatastreamRef
from api.sensorthings.options import OrderKey
from civic_iot.settings import InfluxSettings

__all__ = ["Group", "ObsQuery", "Translation", "fetch", "time_bounds", "translate"]

Group = Literal["none", "datastream", "device"]
_TIME_PROPS = ("phenomenonTime", "resultTime")
_HOUR_NS = 3600 * 1_000_000_000
#: "newest first" reads back from now over these windows, then everything.
WINDOWS_NS = (_HOUR_NS, 24 * _HOUR_NS, 7 * 24 * _HOUR_NS, 31 * 24 * _HOUR_NS)
_DATE_PARTS = {
    "year": "date.year",
    "month": "date.month",
    "day": "date.monthDay",
    "hour": "date.hour",
    "minute": "date.minute",
    "second": "date.second",
}


@dataclass(frozen=True, slots=True)
class Translation:
    code: str
    type: Literal["float", "int", "time", "bool", "number"]


def _float_lit(v: float) -> str:
    text = format(float(v), ".15f").rstrip("0")
    return text + "0" if text.endswith(".") else text


def _num(t: Translation, want: Literal["float", "int"]) -> str:
    """A numeric translation as ``want``."""
    if t.type == "number":
        value = float(t.code)
        if want == "int" and value.is_integer():
            return str(int(value))
        return _float_lit(value)
    if t.type == "int" and want == "float":
        return f"float(v: {t.code})"
    return t.code


def _numeric_type(a: Translation, b: Translation) -> Literal["float", "int"]:
    if "float" in (a.type, b.type):
        return "float"
    if a.type == "int" or b.type == "int":
        literal = a if a.type == "number" else b
        if literal.type == "number" and not float(literal.code).is_integer():
            return "float"
        return "int"
    return "float"


_NUMERIC = ("float", "int", "number")
_CMP = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def translate(expr: Expr, imports: set[str]) -> Translation:
    """``expr`` (about one Observation) as a Flux expression over a row ``r``."""
    if isinstance(expr, Lit):
        if expr.kind == "number":
            return Translation(repr(float(expr.value)), "number")
        if expr.kind == "instant":
            return Translation(flux_time(expr.value.ns), "time")
        if expr.kind == "bool":
            return Translation("true" if expr.value else "false", "bool")
        msg = (
            f"{expr.kind} values do not apply to Observations here (result is a number, "
            "phenomenonTime and resultTime are times)"
        )
        raise FilterError(msg)
    if isinstance(expr, Path):
        name = str(expr)
        if name == "result":
            return Translation("r._value", "float")
        if name in _TIME_PROPS:
            return Translation("r._time", "time")
        if name in ("@iot.id", "id"):
            msg = "filtering Observations by @iot.id is not supported; ask Observations('<id>')"
            raise FilterError(msg)
        msg = (
            f"{name!r} cannot be filtered on Observations; use result, phenomenonTime, "
            "resultTime, or Datastream/... and FeatureOfInterest/... joined with 'and'"
        )
        raise FilterError(msg)
    if isinstance(expr, Call):
        return _call(expr, imports)
    if isinstance(expr, Unary):
        inner = translate(expr.operand, imports)
        if expr.op == "not":
            if inner.type != "bool":
                raise FilterError("'not' needs a condition")
            return Translation(f"not ({inner.code})", "bool")
        if inner.type not in _NUMERIC:
            raise FilterError("'-' needs a number")
        return Translation(f"-({inner.code})", inner.type)
    left, right = translate(expr.left, imports), translate(expr.right, imports)
    if expr.op in ("and", "or"):
        if left.type != "bool" or right.type != "bool":
            msg = f"'{expr.op}' needs conditions on both sides"
            raise FilterError(msg)
        return Translation(f"({left.code} {expr.op} {right.code})", "bool")
    if expr.op in _CMP:
        op = _CMP[expr.op]
        if left.type in _NUMERIC and right.type in _NUMERIC:
            t = _numeric_type(left, right)
            return Translation(f"({_num(left, t)} {op} {_num(right, t)})", "bool")
        if left.type == right.type == "time" or (
            left.type == right.type == "bool" and expr.op in ("eq", "ne")
        ):
            return Translation(f"({left.code} {op} {right.code})", "bool")
        msg = f"cannot compare a {left.type} with a {right.type} ('{expr.op}')"
        raise FilterError(msg)
    if left.type not in _NUMERIC or right.type not in _NUMERIC:
        msg = f"'{expr.op}' needs numbers on both sides"
        raise FilterError(msg)
    t = _numeric_type(left, right)
    if expr.op == "div":
        t = "float"
    a, b = _num(left, t), _num(right, t)
    if expr.op == "mod":
        if t == "float":
            imports.add("math")
            return Translation(f"math.mod(x: {a}, y: {b})", "float")
        return Translation(f"({a} % {b})", "int")
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[expr.op]
    return Translation(f"({a} {sym} {b})", t)


def _call(expr: Call, imports: set[str]) -> Translation:
    name = expr.name
    if name == "now":
        return Translation("now()", "time")
    if name in ("mindatetime", "maxdatetime"):
        return Translation(flux_time(0 if name == "mindatetime" else FAR_FUTURE_NS), "time")
    args = [translate(a, imports) for a in expr.args]
    if name in _DATE_PARTS or name in ("fractionalseconds", "totaloffsetminutes"):
        if args[0].type != "time":
            msg = f"{name}() needs a time (phenomenonTime, resultTime, now())"
            raise FilterError(msg)
        if name == "totaloffsetminutes":
            return Translation("0", "int")  # times are stored in UTC
        imports.add("date")
        if name == "fractionalseconds":
            return Translation(
                f"(float(v: date.nanosecond(t: {args[0].code})) / 1000000000.0)", "float"
            )
        return Translation(f"{_DATE_PARTS[name]}(t: {args[0].code})", "int")
    if name in ("round", "floor", "ceiling"):
        if args[0].type not in _NUMERIC:
            msg = f"{name}() needs a number"
            raise FilterError(msg)
        imports.add("math")
        fn = {"round": "math.round", "floor": "math.floor", "ceiling": "math.ceil"}[name]
        return Translation(f"{fn}(x: {_num(args[0], 'float')})", "float")
    msg = f"{name}() does not apply to Observations (result is a number)"
    raise FilterError(msg)


def time_bounds(parts: Sequence[Expr]) -> tuple[int | None, int | None]:
    """[start, stop) implied by top-level comparisons of the time with a literal."""
    start: int | None = None
    stop: int | None = None
    flip = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge", "eq": "eq"}
    for e in parts:
        if not isinstance(e, Binary) or e.op not in flip:
            continue
        left, right, op = e.left, e.right, e.op
        if isinstance(left, Lit) and isinstance(right, Path):
            left, right, op = right, left, flip[op]
        if not (isinstance(left, Path) and str(left) in _TIME_PROPS and isinstance(right, Lit)):
            continue
        if not isinstance(right.value, Instant):
            continue
        t = right.value.ns
        lo = {"gt": t + 1, "ge": t, "eq": t}.get(op)
        hi = {"lt": t, "le": t + 1, "eq": t + 1}.get(op)
        if lo is not None:
            start = lo if start is None else max(start, lo)
        if hi is not None:
            stop = hi if stop is None else min(stop, hi)
    return start, stop


@dataclass(frozen=True)
class ObsQuery:
    """What to read: which Datastreams, which points, in what order, how many."""

    datastreams: Sequence[DatastreamRef]
    predicate: str | None
    imports: frozenset[str]
    start_ns: int | None
    stop_ns: int | None
    orderby: tuple[OrderKey, ...]
    top: int
    skip: int
    group: Group = "none"


def sort_spec(orderby: Sequence[OrderKey]) -> tuple[list[str], bool]:
    """Flux sort columns and direction of an Observation ``$orderby``."""
    cols: list[str] = []
    dirs: set[bool] = set()
    for key in orderby or ():
        name = str(key.expr) if isinstance(key.expr, Path) else ""
        if name in _TIME_PROPS:
            cols.append("_time")
        elif name == "result":
            cols.append("_value")
        else:
            msg = (
                f"$orderby {key.text!r}: Observations sort by phenomenonTime, resultTime or result"
            )
            raise FilterError(msg)
        dirs.add(key.desc)
    if len(dirs) > 1:
        raise FilterError("$orderby on Observations: one direction for all keys")
    if not cols:
        return ["_time"], False
    if "_time" not in cols:
        cols.append("_time")
    return cols, dirs.pop()


_GROUP_COLS = {"datastream": '["device", "_field"]', "device": '["device"]', "none": "[]"}


def _source(
    q: ObsQuery, influx: InfluxSettings, start: int | None, stop: int | None, each: str = ""
) -> str:
    """The union of the Datastreams' series over ``[start, stop)``, ``each`` applied to
    every measurement's stream before the union (so that ``first()``/``last()`` and
    ``count()`` right after the filter stay pushed down to storage)."""
    by_m: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for ds in q.datastreams:
        m = ds.quantity.measurement
        by_m[(m.bucket_name(influx), m.name)][ds.quantity.field].append(ds.device.id)
    lo = "0" if start is None else flux_time(start)
    hi = flux_time(FAR_FUTURE_NS if stop is None else stop)
    streams = []
    for (bucket, measurement), fields in sorted(by_m.items()):
        per_field = " or ".join(
            f"(r._field == {flux_string(f)} and {in_pred('device', devs)})"
            for f, devs in sorted(fields.items())
        )
        streams.append(
            f"from(bucket: {flux_string(bucket)})\n  |> range(start: {lo}, stop: {hi})\n"
            f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and "
            f"({per_field})){each}"
        )
    if len(streams) == 1:
        return streams[0]
    return "union(tables: [\n" + ",\n".join(streams) + "])"


_KEEP = '\n  |> keep(columns: ["_time", "_value", "device", "_field"])'


def _imports(q: ObsQuery) -> str:
    return "".join(f'import "{i}"\n' for i in sorted(q.imports))


def _predicate(q: ObsQuery) -> str:
    return f"\n  |> filter(fn: (r) => {q.predicate})" if q.predicate else ""


def build(
    q: ObsQuery, influx: InfluxSettings, start: int | None, stop: int | None, *, count: bool
) -> str:
    """The Flux of one read (or count) of ``q`` over ``[start, stop)``."""
    if count:
        return _imports(q) + _source(q, influx, start, stop, _predicate(q) + "\n  |> count()")
    cols, desc = sort_spec(q.orderby)
    each = _predicate(q) + _KEEP
    if cols[0] == "_time":
        # Each series comes oldest first: cut it before the merge.
        each += f"\n  |> {'tail' if desc else 'limit'}(n: {q.skip + q.top + 1})"
    sort_cols = ", ".join(flux_string(c) for c in [*cols, "device", "_field"])
    return (
        _imports(q)
        + _source(q, influx, start, stop, each)
        + f"\n  |> group(columns: {_GROUP_COLS[q.group]})"
        + f"\n  |> sort(columns: [{sort_cols}], desc: {'true' if desc else 'false'})"
        + f"\n  |> limit(n: {q.top + 1}, offset: {q.skip})"
    )


def _edge_per_datastream(q: ObsQuery, influx: InfluxSettings, fn: str) -> str:
    """Each Datastream's newest (``last``) or oldest (``first``) point: pushed down to
    storage (one point read per series)."""
    return _source(q, influx, q.start_ns, q.stop_ns, f"\n  |> {fn}()" + _KEEP)


def _enough(rows: Sequence[Row], q: ObsQuery) -> bool:
    if q.group == "none":
        return len(rows) > q.top
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for r in rows:
        counts[(r.get("device", ""), r.get("_field", "") if q.group == "datastream" else "")] += 1
    return len(counts) == len(_groups(q)) and all(n > q.top for n in counts.values())


def _groups(q: ObsQuery) -> set[tuple[str, str]]:
    if q.group == "datastream":
        return {(d.device.id, d.quantity.field) for d in q.datastreams}
    return {(d.device.id, "") for d in q.datastreams}


async def fetch(flux: FluxClient, influx: InfluxSettings, q: ObsQuery, now_ns: int) -> list[Row]:
    """The rows of ``q``: per group (or overall) at most ``top + 1`` after ``skip``, in
    order (one more than asked, so the caller knows whether to give a next link; the
    pushed-down newest or oldest value per Datastream gives exactly one)."""
    if not q.datastreams or q.top == 0:
        return []
    cols, desc = sort_spec(q.orderby)
    by_time = cols[0] == "_time"
    if q.group == "datastream" and q.top == 1 and q.skip == 0 and q.predicate is None and by_time:
        return await flux.query(_edge_per_datastream(q, influx, "last" if desc else "first"))
    if not by_time:
        # Sorting by the result reads the whole time range asked for.
        return await flux.query(build(q, influx, q.start_ns, q.stop_ns, count=False))
    if desc:
        anchor = q.stop_ns if q.stop_ns is not None else now_ns
    elif q.start_ns is not None:
        anchor = q.start_ns
    else:
        firsts = await flux.query(_edge_per_datastream(q, influx, "first"))
        if not firsts:
            return []
        anchor = min(r["_time"] for r in firsts)
    rows: list[Row] = []
    for width in (*WINDOWS_NS, None):
        lo, hi = q.start_ns, q.stop_ns
        if width is not None:
            if desc:
                lo = max(anchor - width, q.start_ns) if q.start_ns is not None else anchor - width
            else:
                hi = min(anchor + width, q.stop_ns) if q.stop_ns is not None else anchor + width
        whole = (lo, hi) == (q.start_ns, q.stop_ns)
        rows = await flux.query(build(q, influx, lo, hi, count=False))
        if whole or _enough(rows, q):
            break
    return rows


async def count(
    flux: FluxClient, influx: InfluxSettings, q: ObsQuery
) -> dict[tuple[str, str], int]:
    """Observations matching ``q`` per group (``("", "")`` when not grouped); without a
    predicate InfluxDB counts each series in storage."""
    if not q.datastreams:
        return {}
    rows = await flux.query(build(q, influx, q.start_ns, q.stop_ns, count=True))
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r.get("device", "") or "", r.get("_field", "") or "")
        if q.group == "device":
            key = (key[0], "")
        elif q.group == "none":
            key = ("", "")
        out[key] = out.get(key, 0) + int(r.get("_value") or 0)
    return out
