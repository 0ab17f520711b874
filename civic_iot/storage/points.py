"""One InfluxDB point type and its line-protocol encoder, built without I/O.

Every service that stores something builds :class:`Point` values through the schema
(:meth:`civic_iot.storage.schema.Measurement.point`: the processors from
readings and detector figures, the alert service from issued messages and deliveries) and
hands them to one sink (:mod:`civic_iot.storage.sink`). :meth:`Point.line` encodes InfluxDB
line protocol with nanosecond precision: ``int`` fields get the ``i`` suffix, ``float``
fields are written as Python's shortest round-trip form, strings are quoted.

The schema encodes a point's line as it builds the point (one pass over its fields, with
the series and field names escaped once per measurement) and hands it to the point; a
point built otherwise encodes its line when asked. Both use the encoders below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FieldValue = float | int | bool | str


class Point:
    """One InfluxDB point: the bucket it belongs in, series, fields and time (ns).

    Immutable (the sink holds points until they are stored); equal when bucket, series,
    fields and time are. ``encoded`` is the point's line when its builder already made it
    (:meth:`~civic_iot.storage.schema.Measurement.point`), from the same values.
    """

    __slots__ = ("_line", "bucket", "fields", "measurement", "tags", "time_ns")

    bucket: str
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int
    _line: str | None

    def __init__(
        self,
        bucket: str,
        measurement: str,
        tags: tuple[tuple[str, str], ...],
        fields: tuple[tuple[str, FieldValue], ...],
        time_ns: int,
        encoded: str | None = None,
    ) -> None:
        # Written through the slots: a frozen dataclass's __init__ cost several times
        # more, and the processors build two or three points per reading.
        _set_bucket(self, bucket)
        _set_measurement(self, measurement)
        _set_tags(self, tags)
        _set_fields(self, fields)
        _set_time_ns(self, time_ns)
        _set_line(self, encoded)

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"cannot assign to field {name!r}: a Point is immutable"
        raise AttributeError(msg)

    def __delattr__(self, name: str) -> None:
        msg = f"cannot delete field {name!r}: a Point is immutable"
        raise AttributeError(msg)

    def _key(self) -> tuple[object, ...]:
        return (self.bucket, self.measurement, self.tags, self.fields, self.time_ns)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Point:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Point(bucket={self.bucket!r}, measurement={self.measurement!r}, "
            f"tags={self.tags!r}, fields={self.fields!r}, time_ns={self.time_ns!r})"
        )

    def line(self) -> str:
        """Line protocol, tags sorted (InfluxDB's canonical order)."""
        if self._line is not None:
            return self._line
        key = (self.measurement, self.tags)
        head = _HEADS.get(key)
        if head is None:
            head = series_head(self.measurement, self.tags)
            if len(_HEADS) >= _KEPT:
                _HEADS.clear()
            _HEADS[key] = head
        body = ",".join([f"{_name(k)}={encode_field(v)}" for k, v in self.fields])
        return f"{head} {body} {self.time_ns}"


def _slot(name: str) -> Callable[[Point, Any], None]:
    """The setter of a slot, past ``__setattr__`` (only ``__init__`` writes one)."""
    setter: Callable[[Point, Any], None] = Point.__dict__[name].__set__
    return setter


_set_bucket = _slot("bucket")
_set_measurement = _slot("measurement")
_set_tags = _slot("tags")
_set_fields = _slot("fields")
_set_time_ns = _slot("time_ns")
_set_line = _slot("_line")

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_TAG = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\n": r"\n"})
#: Series (measurement and tags) and field names already escaped: a few thousand
#: devices write the same series again and again. Emptied when one holds _KEPT.
_HEADS: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_NAMES: dict[str, str] = {}
_KEPT = 100_000


def _escape(s: str, table: dict[int, str]) -> str:
    return s.replace("\\", "\\\\").translate(table)


def series_head(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """The series part of a line: the measurement and ``tags`` (sorted), escaped."""
    head = _escape(measurement, _MEASUREMENT)
    for k, v in sorted(tags):
        head += f",{_escape(k, _TAG)}={_escape(v, _TAG)}"
    return head


def field_name(k: str) -> str:
    """A field name escaped as line protocol writes it."""
    return _escape(k, _TAG)


def _name(k: str) -> str:
    name = _NAMES.get(k)
    if name is None:
        if len(_NAMES) >= _KEPT:
            _NAMES.clear()
        name = _NAMES[k] = field_name(k)
    return name


def _int(v: int) -> str:
    return f"{v}i"


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _str(v: str) -> str:
    # Only backslash and double quote are escaped in a string field: a newline is kept as
    # it is (InfluxDB 2.7 stores it as a newline; "\\n" would be stored as two characters).
    escaped = v.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


#: The encoder of a field value of each exact type (a float: its shortest round-trip
#: form, which ``repr`` gives).
ENCODERS: dict[type, Callable[[FieldValue], str]] = {
    float: repr,
    int: _int,  # type: ignore[dict-item]
    bool: _bool,  # type: ignore[dict-item]
    str: _str,  # type: ignore[dict-item]
}


def encode_field(v: FieldValue) -> str:
    """A field value as line protocol writes it."""
    enc = ENCODERS.get(type(v))
    if enc is not None:
        return enc(v)
    # Subclasses (a numpy float, an IntEnum): by what they are.
    if isinstance(v, bool):
        return _bool(v)
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, float):
        return repr(v)
    return _str(v)
