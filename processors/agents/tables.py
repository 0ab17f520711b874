"""The agents' tables: typed values in Faust tables, seen through the current batch.

Every table holds one model of :mod:`processors.states`, written to and read from its
changelog by :class:`StateCodec` (JSON through pydantic). An agent reads and writes its
table only through a :class:`BatchState`, so nothing reaches the table (and its
changelog) before the batch's points are stored (:mod:`processors.agents.loop`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Generic, TypeVar, cast

import faust
from faust.serializers.codecs import Codec
from faust.types import EventT

from processors.faust_adapter import write_changelog
from processors.states import TableValue, decode_value, encode_value

S = TypeVar("S", bound=TableValue)


class StateCodec(Codec):
    """The changelog codec of a table whose values are ``model``s."""

    def __init__(self, model: type[TableValue], **kwargs: Any) -> None:
        super().__init__(model=model, **kwargs)
        self.model = model

    def _dumps(self, s: Any) -> bytes:
        return encode_value(s)

    def _loads(self, s: bytes) -> Any:
        return decode_value(self.model, s)


def state_table(
    app: faust.App, name: str, model: type[S], partitions: int
) -> MutableMapping[str, S]:
    """A changelog-backed table of ``model`` values keyed by string.

    A table takes its changelog codec from its ``value_serializer`` when it is added to
    the app (which creates its changelog topic), and ``app.Table`` would set that from
    the value type (faust Records only); so the table is made, given its codec, then
    added."""
    table: faust.Table[Any, Any] = faust.Table(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        key_type=None,
        value_type=None,
    )
    table.key_serializer = "json"
    table.value_serializer = StateCodec(model)
    app.tables.add(table)
    return cast(MutableMapping[str, S], table)


class BatchState(Generic[S]):
    """A table seen through the current batch: reads see the batch's own writes, and
    nothing reaches the table (and so its changelog) until :meth:`write` after the
    batch's points are stored. A crash before that leaves the old state, and the
    re-read batch recomputes the same figures; a crash after it finds each key's stored
    offset and skips what the state already holds (:func:`seen`).

    While a batch's points are being stored the next batch is already decided
    (:mod:`processors.agents.loop`): :meth:`detach` sets the finished batch's writes
    aside, still seen by reads under the new batch's own, until :meth:`write` puts them
    in the table."""

    def __init__(self, table: MutableMapping[str, S], model: type[S]) -> None:
        self.table = table
        self._empty = model()
        self._new: dict[str, tuple[S, EventT[Any], int]] = {}
        #: The finished batch's writes, waiting for its points to be stored.
        self._storing: dict[str, tuple[S, EventT[Any], int]] = {}

    def get(self, key: str) -> S:
        """The key's state as of this batch (a fresh one for a key never stored)."""
        hit = self._new.get(key) or self._storing.get(key)
        if hit is not None:
            return hit[0]
        value = self.table.get(key)
        return value if value is not None else self._empty

    def set(self, key: str, value: S, event: EventT[Any], index: int = 0) -> None:
        """The key's new state, having applied ``event`` (the input at ``index`` of its
        record; the position is recorded when the state is written). Within a batch a
        key's inputs come in order, so a staged state needs no position to tell them
        from replays."""
        self._new[key] = (value, event, index)

    def reset(self) -> None:
        """Forget a batch that did not finish (its events are not acked either)."""
        self._new.clear()

    def detach(self) -> None:
        """The batch is decided: set its writes aside for :meth:`write`, and begin the
        next batch's on top of them. The batch before must be written already."""
        if self._storing:
            msg = "the batch before is not written yet"
            raise RuntimeError(msg)
        self._storing, self._new = self._new, {}

    async def write(self) -> None:
        """The detached batch into the table, each key under its own last event (its
        changelog partition), with the position of its last input."""
        await write_changelog(
            self.table,
            (
                (
                    key,
                    value.model_copy(update={"offset": int(event.message.offset), "index": index}),
                    event,
                )
                for key, (value, event, index) in self._storing.items()
            ),
        )
        self._storing = {}


def seen(state: TableValue, event: EventT[Any], index: int = 0) -> bool:
    """Whether a key's state already includes this input: the one at ``index`` of the
    message (the position it stored).

    Faust writes a table's changelog as soon as the value is set, but the source offset
    is committed later; after a crash in between, the message comes again. Each key's
    input stays in one partition, so the position of the last input applied to a key
    tells a replay from a new input, and the detectors see every reading once.
    """
    if state.offset is None:
        return False
    offset = int(event.message.offset)
    return offset < state.offset or (offset == state.offset and index <= state.index)


__all__ = ["BatchState", "StateCodec", "seen", "state_table"]
