"""Devices gone silent: the periodic check, as a pure function of what a worker saw.

A device is silent when its newest reading (event time) is more than its kind's
``silent_after_s`` before a reference time, and nothing came from it on the processing
clock for ``grace_s`` either: per-device streams are delayed independently (publishers,
broker, backlog), so a device may lag its partition's event-time clock without being
silent.

The reference time: while readings of a kind keep arriving, each device is judged
against the newest event time of its own source partition: a replay, a backlog or a
compressed scenario runs on event time, and partitions progress at different speeds, so
a device is not silent because its clock or its partition is behind (a device whose
partition has no clock is judged against the slowest partition of its kind). When the
whole kind has gone quiet on the processing clock for ``silent_after_s``, or no reading
of it was read yet, the wall clock judges: an outage is silence too.

A silent device is reported once, until it reads again (:attr:`SilenceCheck.new`).
Times are epoch seconds (event time); durations are seconds of the processing clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from processors.detectors.health import silent_devices
from processors.detectors.windows import from_epoch

#: Seconds without a reading from a device on the processing clock before it may be
#: judged silent at all.
RECEIVED_GRACE_S = 30.0

#: How far, s, a device's gap must be from its kind's threshold for the floats alone to
#: judge it: far above the datetimes' microsecond rounding.
_CLEAR_S = 1e-3


@dataclass(frozen=True, slots=True)
class KindActivity:
    """What a worker saw of one kind of device (air, water, seismic)."""

    #: Device id -> newest event time in its state, epoch s: the devices to judge.
    last_seen: Mapping[str, float]
    #: Processing seconds since a reading of this kind last arrived (since the worker
    #: started, when none did).
    quiet_s: float
    #: Processing seconds since the worker started: at least how long a device absent
    #: from ``received_ago_s`` has been quiet.
    uptime_s: float
    #: Source partition -> newest event time read from it, epoch s.
    clocks: Mapping[int, float] = field(default_factory=dict)
    #: Device id -> the partition its readings come from.
    partition_of: Mapping[str, int] = field(default_factory=dict)
    #: Device id -> processing seconds since its last reading arrived.
    received_ago_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Silence:
    """A silent device: its newest reading and the time it was judged at, epoch s."""

    device_id: str
    kind: str
    last_seen_s: float
    judged_at_s: float


@dataclass(frozen=True, slots=True)
class SilenceCheck:
    """Every silent device, those not reported yet (``new``: report these), and the
    devices reported before that are still silent (add ``new`` once reported)."""

    silent: tuple[Silence, ...]
    new: tuple[Silence, ...]
    reported: frozenset[str]


def check_silence(
    activity: Mapping[str, KindActivity],
    *,
    now_s: float,
    silent_after_s: Mapping[str, float],
    reported: Set[str] = frozenset(),
    grace_s: float = RECEIVED_GRACE_S,
) -> SilenceCheck:
    """Judge every device of ``activity`` (by kind) at wall-clock time ``now_s``.

    ``silent_after_s`` gives each kind's silence threshold (s); ``reported`` are the
    devices reported silent before. A kind with no device in ``last_seen`` is skipped
    and keeps its reported devices.
    """
    still = set(reported)
    silent: list[Silence] = []
    for kind, act in activity.items():
        if not act.last_seen:
            continue
        after = silent_after_s[kind]
        by_wall = act.quiet_s >= after or not act.clocks
        slowest = min(act.clocks.values(), default=now_s)
        found: list[Silence] = []
        for device, last in act.last_seen.items():
            if act.received_ago_s.get(device, act.uptime_s) < grace_s:
                continue
            if by_wall:
                ref = now_s
            else:
                part = act.partition_of.get(device)
                ref = act.clocks.get(part, slowest) if part is not None else slowest
            # The judgement is silent_devices' (through datetimes, to the microsecond); a gap
            # clear of the threshold by far more than that is judged by the floats alone,
            # which is all but a few devices and a few percent of the cost (the check visits
            # every device of the fleet: 18,300 at Taiwan's scale).
            gap = ref - last
            if gap > after + _CLEAR_S or (
                gap >= after - _CLEAR_S
                and silent_devices({device: from_epoch(last)}, from_epoch(ref), after, factor=1)
            ):
                found.append(Silence(device, kind, last, ref))
        silent += found
        still -= set(act.last_seen) - {s.device_id for s in found}
    new = tuple(s for s in silent if s.device_id not in still)
    return SilenceCheck(tuple(silent), new, frozenset(still))


__all__ = ["RECEIVED_GRACE_S", "KindActivity", "Silence", "SilenceCheck", "check_silence"]
