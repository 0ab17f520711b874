"""Exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest

from civic_iot.retry import Backoff, ceiling, delay


class _Fixed:
    """A random source that always returns one value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (10, 30.0), (10_000, 30.0)],
)
def test_ceiling_doubles_then_caps(attempt: int, expected: float) -> None:
    assert ceiling(attempt, base_s=0.5, cap_s=30.0) == expected


def test_delay_is_the_random_fraction_of_the_ceiling() -> None:
    assert delay(3, 0.5, 30.0, _Fixed(0.0)) == 0.0
    assert delay(3, 0.5, 30.0, _Fixed(0.5)) == 2.0
    assert delay(3, 0.5, 30.0, _Fixed(0.999)) == pytest.approx(3.996)


def test_delays_spread_over_the_whole_window() -> None:
    rng = random.Random(7)
    samples = [delay(4, 1.0, 60.0, rng) for _ in range(2000)]
    assert all(0.0 <= s < 16.0 for s in samples)
    # Full jitter: not clustered at the top like "equal jitter" would be.
    assert min(samples) < 1.0
    assert max(samples) > 15.0
    assert 6.0 < sum(samples) / len(samples) < 10.0


def test_same_seed_same_delays() -> None:
    a = [delay(n, 1.0, 60.0, random.Random(42)) for n in range(8)]
    b = [delay(n, 1.0, 60.0, random.Random(42)) for n in range(8)]
    assert a == b


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s"), [(-1, 1.0, 10.0), (0, -1.0, 10.0), (0, 1.0, -1.0)]
)
def test_bad_arguments(attempt: int, base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        ceiling(attempt, base_s, cap_s)


def test_backoff_counts_failures_and_starts_over_after_a_success() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, rng=_Fixed(0.5))
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next_delay() == 0.5
