"""The quake agent steps the associator once per stream second of a batch
(:func:`processors.agents.quake.tick_seconds`), with every partition's ticks of that
second, instead of once per tick."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.contracts.processing import SeismicTick
from processors.agents.device import seismic_ticks
from processors.agents.quake import tick_seconds
from processors.handlers import handle_quake
from processors.states import QuakeState
from tests.eew_world import MATRIX, partition_of, recorded
from tests.unit.processors.test_states import CTX


def test_ticks_are_stepped_per_second_in_time_order_with_every_partition() -> None:
    ticks = [
        SeismicTick(now_s=101.0, partition=1),
        SeismicTick(now_s=100.0, partition=0),
        SeismicTick(now_s=99.99, partition=2),
        SeismicTick(now_s=101.0, partition=0),
        SeismicTick(now_s=math.inf, partition=3),  # a hostile time steps last, alone
        SeismicTick(now_s=100.0, partition=1),
    ]
    steps = tick_seconds(ticks)
    assert [[(t.now_s, t.partition) for t in s] for s in steps] == [
        [(99.99, 2), (100.0, 0), (100.0, 1)],
        [(101.0, 1), (101.0, 0)],
        [(math.inf, 3)],
    ]
    assert tick_seconds([]) == []


def _candidates(batches: list[list[list[SeismicTick]]]) -> list[AlertCandidate]:
    """Every candidate of the steps of ``batches`` (each a list of steps), as the agent
    makes them: each step at the wall time of its newest tick."""
    state, out = QuakeState(), []
    for steps in batches:
        for step in steps:
            at = datetime.fromtimestamp(max(t.now_s for t in step), UTC)
            decision = handle_quake(state, step, CTX, at)
            state = decision.state
            out += decision.candidates
    return out


def _key(c: AlertCandidate) -> tuple[object, ...]:
    return (c.key, c.level, round(c.value, 3), c.area_code, tuple(c.devices))


def test_a_step_per_second_gives_the_candidates_of_a_step_per_tick() -> None:
    # A recorded M6.5 on 4 partitions, ticks as the station agent sends them (one per
    # partition and second): stepped one tick at a time, as the agent did, and one
    # second at a time over batches of 3 s (a quake agent behind its input).
    rec = recorded(MATRIX[0], 0)
    seconds = [
        seismic_ticks([(o, None, partition_of(sid, 4)) for sid, o in second])
        for second in rec.seconds
    ]
    per_tick = _candidates([[[t] for t in ticks] for ticks in seconds])
    flat = [t for ticks in seconds for t in ticks]
    per_second = _candidates([tick_seconds(flat[i : i + 12]) for i in range(0, len(flat), 12)])
    assert per_tick
    assert [_key(c) for c in per_second] == [_key(c) for c in per_tick]
