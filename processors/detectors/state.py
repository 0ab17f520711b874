"""What a detector keeps between inputs: typed, and serialised one way.

Every detector state (and every part of one) is declared with :func:`stored`: a frozen,
slotted dataclass whose annotations pydantic reads to serialise it to JSON and to
validate it back (:func:`dump_state`, :func:`load_state`, and the processors' table
values in :mod:`processors.states`, which hold these states as fields). No state writes
its own ``to_dict``/``from_dict``.

Validation happens where a state comes in from outside (the changelog), not at every
construction: the detectors build states many times per reading, and re-validating
their windows each time (a pydantic dataclass) cost about a fifth of an air reading's
handling. The detectors are type-checked (mypy strict) instead; the round-trip tests
(``tests/unit/processors/test_states.py``) serialise the states they really produce.

States, and the values the detectors return with them, are immutable but built cheaply:
a frozen dataclass's ``__init__`` assigns each field through ``object.__setattr__``,
about four times the cost of a plain assignment, and an air reading builds some twenty
of them. :func:`frozen` (and so :func:`stored`) keeps the dataclass frozen (assigning a
field still raises) and gives it an ``__init__`` that writes its slots directly.

The small records a state holds by the hundred (a township's sensor reports) are
``typing.NamedTuple``s instead: pydantic writes a named tuple as a JSON array, so the
changelog does not repeat its field names in every entry (a township of 430 sensors:
25 KB -> 14 KB, and a third less CPU to write), and reads it back from an array or from
the object that :data:`STATE_VERSION <processors.states.STATE_VERSION>` 2 wrote. (A
record cannot have a field named as a tuple's method: ``count``, ``index``.)

Infinity is a value some states hold (a station's Pd signal-to-noise ratio before any
noise was measured), so it is written as ``Infinity`` rather than JSON ``null``, which
would not read back as a float.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

from pydantic import ConfigDict, TypeAdapter

T = TypeVar("T")

#: How every stored state validates and serialises.
STATE_CONFIG = ConfigDict(ser_json_inf_nan="constants")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def stored(cls: type[T]) -> type[T]:
    """Declare a detector state: a frozen, slotted dataclass that pydantic serialises."""
    cls.__pydantic_config__ = STATE_CONFIG  # type: ignore[attr-defined]  # read by pydantic
    return frozen(cls)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: type[T]) -> type[T]:
    """``dataclass(frozen=True, slots=True)`` with a cheaper ``__init__``: the same
    parameters, defaults, default factories and ``__post_init__``, but each field
    written through its slot's descriptor rather than ``object.__setattr__``."""
    made = dataclasses.dataclass(frozen=True, slots=True)(cls)
    _slot_init(made)
    return made


_NO_VALUE = object()


def _slot_init(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    if len(fields) != len(cls.__dataclass_fields__) or any(f.kw_only for f in fields):
        return  # InitVar, ClassVar or keyword-only fields: keep dataclasses' __init__
    names: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    params: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields):
        setter = f"_dc_set{i}"
        # The slot's descriptor, on the class that declared the field (a base's).
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        names[setter] = slot.__set__
        has_default = f.default is not dataclasses.MISSING
        has_factory = f.default_factory is not dataclasses.MISSING
        names[f"_dc_default{i}"] = f.default
        names[f"_dc_factory{i}"] = f.default_factory
        if not f.init:
            if has_default:
                body.append(f"{setter}(self, _dc_default{i})")
            elif has_factory:
                body.append(f"{setter}(self, _dc_factory{i}())")
            continue
        if has_default:
            params.append(f"{f.name}=_dc_default{i}")
            body.append(f"{setter}(self, {f.name})")
        elif has_factory:
            params.append(f"{f.name}=_NO_VALUE")
            value = f"_dc_factory{i}() if {f.name} is _NO_VALUE else {f.name}"
            body.append(f"{setter}(self, {value})")
        else:
            params.append(f.name)
            body.append(f"{setter}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, names)  # noqa: S102  # built from the dataclass's own field names
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(kind: type[Any]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        # A record (a named tuple) has no config of its own: inside a state it takes the
        # state's, alone it is given it here.
        config = STATE_CONFIG if issubclass(kind, tuple) else None
        adapter = _ADAPTERS[kind] = TypeAdapter(kind, config=config)
    return adapter


def dump_state(value: object) -> bytes:
    """The JSON of a state (or of any pydantic-serialisable value)."""
    return _adapter(type(value)).dump_json(value)


def load_state(kind: type[T], data: bytes | str) -> T:
    """A state of type ``kind`` from :func:`dump_state`'s JSON; raises
    :class:`pydantic.ValidationError` when the data is not one."""
    value: T = _adapter(kind).validate_json(data)
    return value


__all__ = ["STATE_CONFIG", "dump_state", "frozen", "load_state", "stored"]
