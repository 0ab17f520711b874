"""One InfluxDB point type and its line-protocol encoder, built without I/O.

Every service that stores something builds :class:`Point` values through the schema
(:meth:`civic_iot.storage.schema.Measurement.point`: the processors from
readings and detector figures, the alert service from issued messages and deliveries) and
hands them to one sink (:mod:`civic_iot.storage.sink`). :meth:`Point.line` encodes InfluxDB
line protocol with nanosecond precision: ``int`` fields get the ``i`` suffix, ``float``
fields are written as Python's shortest round-trip form, strings are quoted.
"""

from __future__ import annotations

from dataclasses import dataclass

FieldValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: the bucket it belongs in, series, fields and time (ns)."""

    bucket: str
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int

    def line(self) -> str:
        """Line protocol, tags sorted (InfluxDB's canonical order)."""
        key = (self.measurement, self.tags)
        head = _HEADS.get(key)
        if head is None:
            head = _escape(self.measurement, _MEASUREMENT)
            for k, v in sorted(self.tags):
                head += f",{_escape(k, _TAG)}={_escape(v, _TAG)}"
            if len(_HEADS) >= _KEPT:
                _HEADS.clear()
            _HEADS[key] = head
        body = ",".join([f"{_name(k)}={_field(v)}" for k, v in self.fields])
        return f"{head} {body} {self.time_ns}"


_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_TAG = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n"})
#: Series (measurement and tags) and field names already escaped: a few thousand
#: devices write the same series again and again. Emptied when one holds _KEPT.
_HEADS: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_NAMES: dict[str, str] = {}
_KEPT = 100_000


def _escape(s: str, table: dict[int, str]) -> str:
    return s.replace("\\", "\\\\").translate(table)


def _name(k: str) -> str:
    name = _NAMES.get(k)
    if name is None:
        if len(_NAMES) >= _KEPT:
            _NAMES.clear()
        name = _NAMES[k] = _escape(k, _TAG)
    return name


def _field(v: FieldValue) -> str:
    t = type(v)
    if t is float:
        return repr(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return f"{v}i"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v)
    # Only backslash and double quote are escaped in a string field: a newline is kept as
    # it is (InfluxDB 2.7 stores it as a newline; "\\n" would be stored as two characters).
    escaped = v.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
