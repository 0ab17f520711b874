"""Defence in depth: no single record moves a clock, window or state of the processors
outside ``[wall clock - max age, wall clock + future skew]`` (the bounds ingest holds,
:class:`civic_iot.timebounds.TimeBounds`). Pure functions; the agents pass the wall
clock in.

Ingest refuses such readings already; these guards hold if something slipped through
(an ingest bug, a record written by someone holding the mark key, a state written
before the guards existed):

- :func:`judge_time`: a reading whose first sample is older than its kind's max age is
  ``too_old`` (its raw point is stored, the detectors do not see it); one whose last
  sample is ahead of the clock by more than the skew is ``future_timestamp`` (refused);
  one whose time cannot be computed (a sample rate of 0, a period sent as a rate that
  overflows) is ``schema`` (refused).
- :func:`not_ahead` and :func:`bound_tick`: the earthquake associator's per-partition
  stream clocks and its triggers, never ahead of the wall clock by more than the skew,
  whatever a tick on ``seismic.triggers`` says or a stored state holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from civic_iot.contracts.processing import SeismicTick
from civic_iot.contracts.readings import Reading, SeismicPayload
from civic_iot.timebounds import TimeBounds

#: What :func:`judge_time` finds wrong with a reading's time (dead-letter reason codes).
TimeProblem = Literal["too_old", "future_timestamp", "schema"]


def sample_span_s(reading: Reading) -> tuple[float, float] | None:
    """The times of a reading's first and last sample, epoch s (a seismic packet's last
    sample is one period before its end); ``None`` when they are not finite numbers (or
    the sample rate is no finite positive number)."""
    try:
        first = reading.event_time.timestamp()
        last = first
        data = reading.data
        if isinstance(data, SeismicPayload):
            rate = float(data.sample_rate_hz)
            if not (math.isfinite(rate) and rate > 0):
                return None
            last = first + (len(data.x_gal) - 1) / rate
    except (ArithmeticError, ValueError, TypeError):
        return None
    if not (math.isfinite(first) and math.isfinite(last)) or last < first:
        return None
    return first, last


def judge_time(
    reading: Reading, wall_s: float, bounds: TimeBounds
) -> tuple[TimeProblem, str] | None:
    """``None`` when every sample of ``reading`` lies within the bounds at ``wall_s``
    (epoch s); else the problem and a message naming the device and the times."""
    span = sample_span_s(reading)
    if span is None:
        return "schema", f"{_who(reading)}: its sample times are not finite numbers"
    first, last = span
    ahead = wall_s + bounds.max_future_skew_s
    if last > ahead:
        return "future_timestamp", (
            f"{_who(reading)}: last sample {last:.3f} is more than "
            f"{bounds.max_future_skew_s:g} s ahead of the processors' clock {wall_s:.3f} "
            "(epoch s)"
        )
    max_age = bounds.max_age_s.get(reading.kind, min(bounds.max_age_s.values(), default=0.0))
    if first < wall_s - max_age:
        return "too_old", (
            f"{_who(reading)}: first sample {first:.3f} is more than {max_age:g} s older than the "
            f"processors' clock {wall_s:.3f} (epoch s); stored, not given to the detectors"
        )
    return None


def _who(reading: Reading) -> str:
    # Only for a reading refused: every reading is judged.
    return f"device {reading.device_id!r} reading {reading.reading_id!r}"


def not_ahead(t_s: float, wall_s: float, bounds: TimeBounds) -> float:
    """A stream time (epoch s) never ahead of the wall clock by more than the skew; a
    value that is no finite number counts as that limit."""
    limit = wall_s + bounds.max_future_skew_s
    return t_s if math.isfinite(t_s) and t_s <= limit else limit


def bound_clocks(
    clocks: Mapping[str, tuple[float, float]], wall_s: float, bounds: TimeBounds
) -> dict[str, tuple[float, float]]:
    """The associator's per-partition (stream time, processing time) with every stream
    time :func:`not_ahead` (heals a state that a record moved ahead before)."""
    return {k: (not_ahead(s, wall_s, bounds), seen) for k, (s, seen) in clocks.items()}


def bound_tick(tick: SeismicTick, wall_s: float, bounds: TimeBounds) -> SeismicTick:
    """A tick whose clock is :func:`not_ahead` and whose triggers (P arrivals) are not
    ahead of the wall clock either: a tick that says otherwise was not written by the
    seismic agent, which reads only readings within the bounds."""
    limit = wall_s + bounds.max_future_skew_s
    now_s = not_ahead(tick.now_s, wall_s, bounds)
    triggers = tuple(t for t in tick.triggers if math.isfinite(t.p_time_s) and t.p_time_s <= limit)
    if now_s == tick.now_s and len(triggers) == len(tick.triggers):
        return tick
    return tick.model_copy(update={"now_s": now_s, "triggers": triggers})


__all__ = [
    "TimeProblem",
    "bound_clocks",
    "bound_tick",
    "judge_time",
    "not_ahead",
    "sample_span_s",
]
