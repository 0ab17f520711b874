"""Flux queries of the read API, built without I/O from the storage schema.

Measurements, tags and fields are named through :mod:`civic_iot.storage.schema` (a name
the schema lacks raises ``KeyError`` here, before any query runs); values enter only as
escaped literals (:func:`api.influx.flux_string`, :func:`api.influx.flux_time`) after the
routes have checked them against the registry or a pattern.

The "latest" queries end in a bare ``last()`` after tag-only filters, which InfluxDB
pushes down to its storage engine (one point read per series, whatever the range): the
answer costs the number of series, not the number of points.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from api.influx import flux_string, flux_time
from civic_iot.settings import InfluxSettings
from civic_iot.storage.schema import Measurement

__all__ = [
    "FAR_FUTURE_NS",
    "Aggregate",
    "Where",
    "Window",
    "bucket",
    "counts",
    "history",
    "in_pred",
    "latest",
    "newest_times",
    "rate",
    "recent_last",
    "series",
    "tag",
]

#: Upper bound of open-ended ranges: devices may be a little ahead of the server clock,
#: and a range's default stop (``now()``) would hide their newest points.
FAR_FUTURE_NS = 7_258_118_400 * 1_000_000_000  # 2200-01-01T00:00:00Z

Aggregate = Literal["mean", "min", "max", "sum", "count", "median", "first", "last"]
#: tag -> one value or any of several values
Where = Mapping[str, str | Sequence[str]]

_PLAIN = re.compile(r"[A-Za-z0-9_.:-]+")


def tag(m: Measurement, name: str) -> str:
    """``name`` if ``m`` has that tag (``KeyError`` otherwise)."""
    if name not in m.tag_names:
        msg = f"measurement {m.name} has no tag {name!r} (civic_iot/storage/schema.py)"
        raise KeyError(msg)
    return name


def bucket(m: Measurement, influx: InfluxSettings) -> str:
    """The configured bucket of a measurement."""
    return m.bucket_name(influx)


def in_pred(column: str, values: str | Sequence[str]) -> str:
    """``r.column`` equal to one of ``values``: ``==`` for one, an anchored regex for
    several plain values (pushed down to storage like ``==``), else ``or``-ed ``==``."""
    vals = [values] if isinstance(values, str) else list(dict.fromkeys(values))
    if not vals:
        return "false"
    if len(vals) == 1:
        return f"r.{column} == {flux_string(vals[0])}"
    if all(_PLAIN.fullmatch(v) for v in vals):
        alts = "|".join(re.sub(r"([.:-])", r"\\\1", v) for v in vals)
        return f"r.{column} =~ /^(?:{alts})$/"
    return "(" + " or ".join(f"r.{column} == {flux_string(v)}" for v in vals) + ")"


def _filter(m: Measurement, where: Where, fields: Sequence[str] | None) -> str:
    preds = [f"r._measurement == {flux_string(m.name)}"]
    preds += [in_pred(tag(m, k), v) for k, v in where.items()]
    if fields is not None:
        for f in fields:
            m.field(f)
        preds.append(in_pred("_field", fields))
    return " and ".join(preds)


def _range(start_ns: int | None, stop_ns: int | None) -> str:
    start = "0" if start_ns is None else flux_time(start_ns)
    stop = flux_time(FAR_FUTURE_NS if stop_ns is None else stop_ns)
    return f"range(start: {start}, stop: {stop})"


def _from(m: Measurement, influx: InfluxSettings) -> str:
    return f"from(bucket: {flux_string(bucket(m, influx))})"


def latest(
    m: Measurement,
    influx: InfluxSettings,
    where: Where = {},  # noqa: B006 - read only
    *,
    fields: Sequence[str] | None = None,
    start_ns: int | None = None,
    stop_ns: int | None = None,
) -> str:
    """The newest point of every series of ``m`` matching ``where`` (and ``fields``) in
    ``[start, stop)`` (default: all time)."""
    return (
        f"{_from(m, influx)}\n  |> {_range(start_ns, stop_ns)}\n"
        f"  |> filter(fn: (r) => {_filter(m, where, fields)})\n  |> last()"
    )


def recent_last(
    m: Measurement,
    influx: InfluxSettings,
    where: Where,
    fields: Sequence[str],
    *,
    start_ns: int,
) -> str:
    """The newest point of every series of ``m`` since ``start`` (a few minutes ago),
    found by reading those minutes rather than by a pushed-down ``last()``: InfluxDB reads
    the newest shard's recent blocks once instead of the end of every series in every
    shard, several times faster for a township's hundred series."""
    return (
        f"{_from(m, influx)}\n  |> {_range(start_ns, None)}\n"
        f"  |> filter(fn: (r) => {_filter(m, where, fields)})\n"
        '  |> keep(columns: ["_time", "_value", "_field", "device"])\n'
        '  |> group(columns: ["device", "_field"])\n  |> last()\n  |> group()'
    )


def rate(m: Measurement, influx: InfluxSettings, field: str, *, start_ns: int) -> str:
    """Per series, the newest per-second rate of a counter ``field`` since ``start``."""
    return (
        f"{_from(m, influx)}\n  |> {_range(start_ns, None)}\n"
        f"  |> filter(fn: (r) => {_filter(m, {}, [field])})\n"
        "  |> derivative(unit: 1s, nonNegative: true)\n  |> last()"
    )


@dataclass(frozen=True, slots=True)
class Window:
    """Downsampling: windows of ``every_s`` seconds, each reduced by ``aggregate``."""

    every_s: int
    aggregate: Aggregate


def series(
    m: Measurement,
    influx: InfluxSettings,
    where: Where,
    field: str,
    *,
    start_ns: int,
    stop_ns: int,
    window: Window | None,
    limit: int,
    offset: int = 0,
) -> str:
    """One field of one series over ``[start, stop)``, oldest first: raw points, or one
    per window (``_time`` its start; empty windows left out)."""
    q = (
        f"{_from(m, influx)}\n  |> {_range(start_ns, stop_ns)}\n"
        f"  |> filter(fn: (r) => {_filter(m, where, [field])})\n"
        '  |> keep(columns: ["_time", "_value"])\n'
    )
    if window is not None:
        q += (
            f"  |> aggregateWindow(every: {window.every_s}s, fn: {window.aggregate}, "
            'createEmpty: false, timeSrc: "_start")\n'
        )
    return q + f'  |> sort(columns: ["_time"])\n  |> limit(n: {limit}, offset: {offset})'


def history(
    m: Measurement,
    influx: InfluxSettings,
    where: Where = {},  # noqa: B006 - read only
    *,
    start_ns: int | None = None,
    stop_ns: int | None = None,
    match: Mapping[str, str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = True,
) -> str:
    """Whole points of ``m`` (one row per series and time, every field a column), newest
    first; ``match``: field -> value the points must have."""
    q = (
        f"{_from(m, influx)}\n  |> {_range(start_ns, stop_ns)}\n"
        f"  |> filter(fn: (r) => {_filter(m, where, None)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    )
    for f, v in (match or {}).items():
        m.field(f)
        q += f"  |> filter(fn: (r) => r.{f} == {flux_string(v)})\n"
    desc = "true" if newest_first else "false"
    q += f'  |> group()\n  |> sort(columns: ["_time"], desc: {desc})'
    if limit is not None:
        q += f"\n  |> limit(n: {limit}, offset: {offset})"
    return q


def newest_times(
    m: Measurement,
    influx: InfluxSettings,
    where: Where,
    field: str,
    *,
    start_ns: int | None,
    stop_ns: int | None,
    limit: int,
    offset: int,
) -> str:
    """The times (and tags) of points of ``m``, newest first, paged: one field read, each
    series cut to the page before the merge (a page of whole points costs then one small
    :func:`history` over the page's time span, not a pivot of everything)."""
    return (
        f"{_from(m, influx)}\n  |> {_range(start_ns, stop_ns)}\n"
        f"  |> filter(fn: (r) => {_filter(m, where, [field])})\n"
        f"  |> tail(n: {offset + limit})\n"
        '  |> drop(columns: ["_start", "_stop", "_measurement", "_field"])\n'
        '  |> group()\n  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> limit(n: {limit}, offset: {offset})"
    )


def counts(
    m: Measurement,
    influx: InfluxSettings,
    field: str,
    by: Sequence[str],
    *,
    start_ns: int,
) -> str:
    """The sum of ``field`` since ``start`` per combination of the tags ``by``."""
    cols = ", ".join(flux_string(tag(m, t)) for t in by)
    return (
        f"{_from(m, influx)}\n  |> {_range(start_ns, None)}\n"
        f"  |> filter(fn: (r) => {_filter(m, {}, [field])})\n"
        f"  |> group(columns: [{cols}])\n  |> sum()"
    )
