"""Bounded event-time windows shared by the air and water detectors.

* :class:`BucketSeries`: sums and counts per fixed-width bucket (an hour, ten minutes, a
  local day), keyed by the bucket's start in epoch seconds. Only the newest ``keep``
  buckets are kept, so memory is bounded whatever the reporting rate.
* :class:`SampleBuffer`: the recent (time, value) samples of one gauge, sorted by event
  time and bounded by age and count, with a least-squares slope for rates of rise.

Both accept out-of-order readings inside their window; both are stored states
(:func:`~processors.detectors.state.stored`).
Times are epoch seconds (float) derived from tz-aware event times by :func:`epoch_s`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from datetime import UTC, datetime
from typing import Annotated, Self

from pydantic import Field, TypeAdapter

from processors.detectors.state import STATE_CONFIG, dump_state, stored


def epoch_s(t: datetime, what: str = "event_time") -> float:
    """Seconds since the Unix epoch of a tz-aware datetime; naive datetimes are refused."""
    if t.tzinfo is None or t.utcoffset() is None:
        msg = f"{what}: expected a timezone-aware datetime, got naive {t.isoformat()}"
        raise ValueError(msg)
    return t.timestamp()


def from_epoch(s: float) -> datetime:
    """The UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(s, tz=UTC)


@stored
class BucketSeries:
    """Per-bucket (sum, count) of values in ``width_s``-second event-time buckets.

    ``offset_s`` shifts bucket edges, e.g. ``8 * 3600`` with a one-day width gives local
    days in Taiwan (UTC+8, no daylight saving). ``keep`` is how many buckets, counting the
    newest, are kept; older ones are dropped.
    """

    width_s: int
    keep: int
    offset_s: int = 0
    buckets: Mapping[int, tuple[float, int]] = field(default_factory=dict)
    #: The older buckets' sums per window (:meth:`step`): worked out again from the
    #: buckets when missing, so not stored.
    older: Annotated[Older | None, Field(exclude=True)] = field(
        default=None, repr=False, compare=False
    )

    def start_of(self, t: float) -> int:
        """The start (epoch seconds) of the bucket holding ``t``."""
        return int((t + self.offset_s) // self.width_s) * self.width_s - self.offset_s

    def oldest_kept(self, now: float) -> int:
        """The start of the oldest bucket kept when the clock reads ``now``."""
        return self.start_of(now) - (self.keep - 1) * self.width_s

    def add(self, t: float, value: float, now: float) -> tuple[Self, bool]:
        """Add ``value`` at time ``t``; ``now`` is the series clock (newest event time).

        Returns the new series and whether the value was kept (False when ``t`` falls in a
        bucket older than the ones kept).
        """
        now = max(now, t)
        floor = self.oldest_kept(now)
        start = self.start_of(t)
        buckets = self.buckets
        if buckets and min(buckets) < floor:
            kept = {k: v for k, v in buckets.items() if k >= floor}
        else:
            kept = dict(buckets)
        if start < floor:
            return self._with(kept), False
        _add_value(kept, start, value)
        return self._with(kept), True

    def pruned(self, now: float) -> Self:
        """The series without buckets older than the window at ``now`` (itself when it
        has none)."""
        floor = self.oldest_kept(now)
        if not self.buckets or min(self.buckets) >= floor:
            return self
        return self._with({k: v for k, v in self.buckets.items() if k >= floor})

    def last(self, now: float, n: int) -> list[tuple[int, float, int]]:
        """(start, sum, count) of the existing buckets among the ``n`` newest at ``now``.

        The newest bucket is the one holding ``now``, usually still filling.
        """
        newest = self.start_of(now)
        oldest = newest - (n - 1) * self.width_s
        return sorted(
            (k, total, count) for k, (total, count) in self.buckets.items() if oldest <= k <= newest
        )

    def total(self, now: float, n: int) -> float:
        """Sum of the values in the ``n`` newest buckets at ``now``."""
        return sum(total for _, total, _ in self.last(now, n))

    def totals(self, now: float, counts: Iterable[int]) -> dict[int, float]:
        """:meth:`total` of each of ``counts`` newest buckets at ``now``, from one sort of
        the buckets (each sum taken oldest first, as :meth:`total` takes it)."""
        newest = self.start_of(now)
        kept = sorted((k, total) for k, (total, _) in self.buckets.items() if k <= newest)
        starts = [k for k, _ in kept]
        values = [total for _, total in kept]
        width = self.width_s
        return {
            n: sum(values[bisect.bisect_left(starts, newest - (n - 1) * width) :]) for n in counts
        }

    def mean_of_means(self, now: float, n: int) -> tuple[float | None, int]:
        """Mean of the per-bucket means over the ``n`` newest buckets, and how many had data.

        This is how hourly values become 4-, 8-, 12- or 24-hour averages: every hour
        weighs the same whatever the number of readings in it.
        """
        return self.means_of_means(now, (n,))[n]

    def means_of_means(
        self, now: float, windows: Iterable[int]
    ) -> dict[int, tuple[float | None, int]]:
        """:meth:`mean_of_means` of every window size in ``windows``, from one pass over
        the buckets: the newest bucket's mean first, then each older one's, every window
        taking the running sum when the pass reaches its edge."""
        return self.step(now, sorted(windows))[2]

    def step(
        self, now: float, windows: Sequence[int], t: float | None = None, value: float = 0.0
    ) -> tuple[Self, bool, dict[int, tuple[float | None, int]]]:
        """:meth:`add` ``value`` at ``t`` (when given), :meth:`pruned` and
        :meth:`means_of_means` of ``windows`` (ascending) at once: the series, whether
        the value was kept, and each window's mean and valid buckets. What a detector does
        with every reading.

        The buckets before the newest change only when the newest moves on (once an hour
        for hourly buckets) or a late value lands in one: until then each window's sum of
        their means is kept with the series (:attr:`older`), and a step adds the newest
        bucket's mean to it instead of going over every bucket again."""
        width, offset = self.width_s, self.offset_s
        if t is not None and t > now:
            now = t
        newest = int((now + offset) // width) * width - offset
        older = self.older
        if older is not None and older[0] == newest and older[1] == windows:
            # Nothing aged out since the sums were made (the newest is the same).
            buckets = self.buckets
            kept = t is not None
            series = self
            if t is not None:
                start = int((t + offset) // width) * width - offset
                if start == newest:
                    # _add_value and _with written out: this runs for every value of
                    # every reading.
                    new = dict(buckets)
                    old = new.get(start)
                    new[start] = (old[0] + value, old[1] + 1) if old is not None else (value, 1)
                    series = type(self)(width, self.keep, offset, new, older)
                    return series, True, _windows(new[start], older)
                if start >= newest - (self.keep - 1) * width:
                    return self._step(now, newest, windows, t, value)  # a late value
                kept = False
            return series, kept, _windows(buckets.get(newest), older)
        return self._step(now, newest, windows, t, value)

    def _step(
        self, now: float, newest: int, windows: Sequence[int], t: float | None, value: float
    ) -> tuple[Self, bool, dict[int, tuple[float | None, int]]]:
        """:meth:`step` going over every bucket, and the sums of the older ones made."""
        width, offset = self.width_s, self.offset_s
        floor = newest - (self.keep - 1) * width
        buckets = self.buckets
        # Filtered only when a bucket aged out (once an hour of a series), else copied
        # plainly when a value is added.
        new: dict[int, tuple[float, int]] | None = None
        if buckets and min(buckets) < floor:
            new = {k: v for k, v in buckets.items() if k >= floor}
        kept = t is not None
        if t is not None:
            start = int((t + offset) // width) * width - offset
            if start >= floor:
                new = dict(buckets) if new is None else new
                _add_value(new, start, value)
            else:
                kept = False
        current = self.buckets if new is None else new
        aged = [
            ((newest - k) // width, total / count)
            for k, (total, count) in current.items()
            if count > 0 and k < newest
        ]
        aged.sort()
        sums: list[float] = []
        valids: list[int] = []
        total_m = 0.0
        valid = 0
        i, n_aged = 0, len(aged)
        for n in windows:
            while i < n_aged and aged[i][0] < n:
                total_m += aged[i][1]
                valid += 1
                i += 1
            sums.append(total_m)
            valids.append(valid)
        older: Older = (newest, tuple(windows), tuple(sums), tuple(valids), [])
        series = self._with(current, older)  # the buckets are never changed in place
        return series, kept, _windows(current.get(newest), older)

    def _with(self, buckets: Mapping[int, tuple[float, int]], older: Older | None = None) -> Self:
        return type(self)(self.width_s, self.keep, self.offset_s, buckets, older)

    def json(self) -> bytes:
        """:func:`~processors.detectors.state.dump_state` of the series (its JSON as the
        changelog stores it), with the buckets before the newest written once per
        :attr:`older`, i.e. once an hour of hourly buckets, not at every reading.

        Those buckets change only when :meth:`step` makes :attr:`older` again (the newest
        moved on, a late value, a bucket aged out): until then a step changes the newest
        bucket alone, so their JSON is kept with :attr:`older` and only the newest is
        written. Any other series (no :attr:`older`, the newest not the last bucket in
        the mapping's order) is written whole."""
        older = self.older
        buckets = self.buckets
        if older is None or not isinstance(buckets, dict):
            return dump_state(self)
        newest = older[0]
        last = next(reversed(buckets), None)
        if last is not None and last != newest and newest in buckets:
            return dump_state(self)  # a bucket came after the newest: not the kept order
        memo = older[4]
        if not memo:
            before = {k: v for k, v in buckets.items() if k != newest}
            entries = _BUCKETS_JSON(before)[1:-1]  # without the braces
            head = b'{"width_s":%d,"keep":%d,"offset_s":%d,"buckets":{%b' % (
                self.width_s,
                self.keep,
                self.offset_s,
                entries,
            )
            memo += (head, head + b"," if entries else head)
        bucket = buckets.get(newest)
        if bucket is None:
            return memo[0] + b"}}"
        return b'%b"%d":%b}}' % (memo[1], newest, _BUCKET_JSON(bucket))


def _add_value(buckets: dict[int, tuple[float, int]], start: int, value: float) -> None:
    """Add ``value`` to the (total, count) of the bucket starting at ``start``."""
    old = buckets.get(start)
    buckets[start] = (old[0] + value, old[1] + 1) if old is not None else (value, 1)


#: What :meth:`BucketSeries.step` keeps of the buckets before the newest: the newest's
#: start, the window sizes, per window the sum of the older buckets' means in it and how
#: many there are, and (once the series is written, :meth:`BucketSeries.json`) its JSON
#: up to the newest bucket, without and with the comma before it: a memo, empty until then.
Older = tuple[int, tuple[int, ...], tuple[float, ...], tuple[int, ...], list[bytes]]

#: The JSON of buckets, and of one bucket, as :func:`dump_state` writes them in a series.
_BUCKETS_JSON = TypeAdapter(dict[int, tuple[float, int]], config=STATE_CONFIG).serializer.to_json
_BUCKET_JSON = TypeAdapter(tuple[float, int], config=STATE_CONFIG).serializer.to_json


def _windows(newest: tuple[float, int] | None, older: Older) -> dict[int, tuple[float | None, int]]:
    """Each window's mean of means and valid buckets: the older buckets' sums, then the
    newest bucket's mean (when it has values), in that order whichever path made them."""
    _, windows, sums, valids, _ = older
    if newest is None or newest[1] <= 0:
        return {
            n: ((total / valid) if valid else None, valid)
            for n, total, valid in zip(windows, sums, valids, strict=True)
        }
    mean = newest[0] / newest[1]
    return {
        n: ((total + mean) / (valid + 1), valid + 1)
        for n, total, valid in zip(windows, sums, valids, strict=True)
    }


@stored
class SampleBuffer:
    """Recent (epoch seconds, value) samples sorted by time, bounded by age and count."""

    samples: tuple[tuple[float, float], ...] = ()

    def add(self, t: float, value: float, keep_s: float, max_len: int) -> Self:
        """Insert a sample in time order; a second sample at the same time replaces the first.

        Samples older than ``keep_s`` before the newest are dropped, then the oldest
        beyond ``max_len``.
        """
        samples = self.samples
        if samples and t > samples[-1][0]:
            # The usual case, a sample newer than any: append, cut the old ones off.
            start = bisect.bisect_left(samples, (t - keep_s,))
            return type(self)((*samples[start:], (t, value))[-max_len:])
        items = [s for s in samples if s[0] != t]
        bisect.insort(items, (t, value))
        newest = items[-1][0]
        items = [s for s in items if s[0] >= newest - keep_s][-max_len:]
        return type(self)(tuple(items))

    def slope_per_s(
        self, now: float, window_s: float, min_samples: int, min_span_s: float
    ) -> float | None:
        """Least-squares slope (value units per second) over samples in ``[now - window_s, now]``.

        ``None`` when fewer than ``min_samples`` samples or they span less than
        ``min_span_s`` seconds: two readings a second apart say nothing about a trend.
        """
        samples = self.samples  # sorted by time: the window's are a slice
        pts = samples[
            bisect.bisect_left(samples, (now - window_s,)) : bisect.bisect_right(
                samples, (now, math.inf)
            )
        ]
        if len(pts) < max(min_samples, 2) or pts[-1][0] - pts[0][0] < min_span_s:
            return None
        t0 = pts[0][0]
        n = len(pts)
        ts = [t - t0 for t, _ in pts]
        vs = [v for _, v in pts]
        mean_t = sum(ts) / n
        mean_v = sum(vs) / n
        dts = [x - mean_t for x in ts]
        var_t = sum([d * d for d in dts])
        if var_t == 0:
            return None
        cov = sum([d * (v - mean_v) for d, v in zip(dts, vs, strict=True)])
        return cov / var_t
