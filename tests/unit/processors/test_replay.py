"""A reading read again after a restart is told from a new one by its position: the
record's offset and the reading's index within it (a record holds several)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from processors.agents.tables import BatchState, seen
from processors.states import AirDevice


class _Event:
    """What the replay check reads of a Faust event (weak-referenceable, as one is)."""

    def __init__(self, offset: int) -> None:
        self.message = SimpleNamespace(offset=offset, partition=0)


def _event(offset: int) -> Any:
    return _Event(offset)


def test_position_is_offset_then_index() -> None:
    state = AirDevice(offset=10, index=3)
    assert seen(state, _event(9), 7)
    assert seen(state, _event(10), 0)
    assert seen(state, _event(10), 3)
    assert not seen(state, _event(10), 4)
    assert not seen(state, _event(11), 0)
    assert not seen(AirDevice(), _event(0), 0)


def test_a_written_state_records_its_last_readings_position() -> None:
    table: dict[str, AirDevice] = {}
    states = BatchState(table, AirDevice)
    states.set("dev", AirDevice(), _event(4), 2)
    states.set("dev", AirDevice(), _event(5), 1)
    assert table == {}  # staged until the batch is stored
    states.detach()
    assert table == {}  # set aside while its points are stored
    asyncio.run(states.write())
    assert (table["dev"].offset, table["dev"].index) == (5, 1)
    assert seen(table["dev"], _event(5), 1)
    assert not seen(table["dev"], _event(5), 2)
