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
    return dataclasses.dataclass(frozen=True, slots=True)(cls)


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(kind: type[Any]) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    return adapter


def dump_state(value: object) -> bytes:
    """The JSON of a state (or of any pydantic-serialisable value)."""
    return _adapter(type(value)).dump_json(value)


def load_state(kind: type[T], data: bytes | str) -> T:
    """A state of type ``kind`` from :func:`dump_state`'s JSON; raises
    :class:`pydantic.ValidationError` when the data is not one."""
    value: T = _adapter(kind).validate_json(data)
    return value


__all__ = ["STATE_CONFIG", "dump_state", "load_state", "stored"]
