"""Bucket series: the sums of the older buckets kept between steps give every window
exactly what going over all the buckets gives."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from processors.detectors.state import dump_state, load_state
from processors.detectors.windows import BucketSeries

WINDOWS = (1, 4, 8, 12, 24)


def _walk(rng: random.Random, steps: int) -> Iterator[tuple[float, float | None]]:
    """(clock, value time) of a sensor's readings: mostly on time, some late (sometimes
    older than kept), some hours without a value (the windows move on: time None)."""
    now = 1_764_000_000.0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.8:
            now += rng.uniform(0, 600)
            yield now, now
        elif roll < 0.9:
            yield now, now - rng.uniform(0, 30 * 3600)
        else:
            now += rng.uniform(0, 7200)
            yield now, None


def _plain(series: BucketSeries) -> BucketSeries:
    """The same buckets without the kept sums (as read back from the changelog)."""
    return BucketSeries(series.width_s, series.keep, series.offset_s, dict(series.buckets))


@pytest.mark.parametrize("seed", range(5))
def test_kept_sums_give_what_every_bucket_gives(seed: int) -> None:
    rng = random.Random(seed)
    series = BucketSeries(3600, 24)
    for now, t in _walk(rng, 3000):
        value = rng.uniform(0, 100)
        fast = series.step(now, WINDOWS, t, value)
        slow = _plain(series).step(now, WINDOWS, t, value)
        assert fast[1:] == slow[1:]  # kept, and each window's mean (to the last bit)
        assert dict(fast[0].buckets) == dict(slow[0].buckets)
        series = fast[0]
    assert series.older is not None


@pytest.mark.parametrize("seed", range(5))
def test_json_is_what_the_serializer_writes(seed: int) -> None:
    """BucketSeries.json (the buckets before the newest kept as JSON) gives dump_state's
    bytes after every step, written once or again: values in the newest hour, late ones
    (new older buckets after the newest in the mapping's order), hours without values."""
    rng = random.Random(seed)
    series = BucketSeries(3600, 24)
    for now, t in _walk(rng, 2000):
        series = series.step(now, WINDOWS, t, rng.choice([rng.uniform(0, 100), 0.0, 1e17]))[0]
        assert series.json() == dump_state(series)
        assert series.json() == dump_state(series)  # the kept part, written again
    assert series.older is not None
    assert len(series.older[4]) == 2
    assert _plain(series).json() == dump_state(series)


def test_kept_sums_are_not_stored() -> None:
    series, _, _ = BucketSeries(3600, 24).step(7200.0, WINDOWS, 7200.0, 3.0)
    assert series.older is not None
    stored = dump_state(series)
    assert b"older" not in stored
    back = load_state(BucketSeries, stored)
    assert back == series
    assert back.older is None
    assert (
        back.step(7300.0, WINDOWS, 7300.0, 5.0)[2] == series.step(7300.0, WINDOWS, 7300.0, 5.0)[2]
    )


@pytest.mark.parametrize("seed", range(3))
def test_totals_are_each_total(seed: int) -> None:
    rng = random.Random(seed)
    series = BucketSeries(600, 144)
    now = 1_764_000_000.0
    for _ in range(500):
        now += rng.uniform(0, 900)
        series, _ = series.add(now - rng.uniform(0, 4 * 3600), rng.uniform(0, 20), now)
        counts = (1, 6, 18, 144, 300)
        assert series.totals(now, counts) == {n: series.total(now, n) for n in counts}
