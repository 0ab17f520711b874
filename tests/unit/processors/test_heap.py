"""The worker's heap once it is ready (:func:`processors.app.settle_heap`): what was alive
is out of the collector's reach, the young generation is collected less often, and a
cycle made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from processors.app import GC_YOUNG_THRESHOLD, GC_YOUNG_THRESHOLD_STATIONS, settle_heap


class _Node:
    other: object = None


def test_a_settled_heap_still_collects_the_cycles_made_after() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        node = _Node()
        node.other = node  # a cycle: reference counting alone never frees it
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_seismic_workers_young_generation_holds_a_batch() -> None:
    """A stations batch (up to batch_max packets, ~40 young objects each) is decided
    between two young collections."""
    before = gc.get_threshold()
    try:
        settle_heap(GC_YOUNG_THRESHOLD_STATIONS)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD_STATIONS, *before[1:])
        assert GC_YOUNG_THRESHOLD_STATIONS >= 40 * 500
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
