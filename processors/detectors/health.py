"""Sensor health: stuck values, implausible values, and devices gone silent.

Per reading field (``pm2_5_ugm3``, ``flood_depth_cm`` ...) a :class:`QuantityRule` (the
thresholds file's ``health`` section) gives the plausible range and when a repeated value
counts as stuck. :func:`update_health`
checks one reading against them and reports the issues that opened or cleared, so a
fault is reported once, not with every reading. :func:`silent_devices` is the separate,
periodic check for devices that stopped reporting.

Only readings newer than the last one seen extend a run of equal values: a late reading
says nothing about which values were consecutive. Range checks apply to every reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from civic_iot.thresholds import HealthRule, HealthThresholds
from processors.detectors.state import frozen, stored
from processors.detectors.windows import epoch_s, from_epoch

Issue = Literal["stuck", "out_of_range", "silent"]
ISSUES: tuple[Issue, ...] = ("stuck", "out_of_range", "silent")


#: Plausible range and stuck rule of one reading field: the thresholds file's ``health``
#: section holds one per payload field (with the rules' defaults and their sources).
QuantityRule = HealthRule


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health rules by reading field; fields without a rule are not checked."""

    rules: Mapping[str, QuantityRule] = field(default_factory=lambda: HealthThresholds().rules())


@frozen
class HealthFinding:
    """One health issue of one device and reading field, open since ``since`` (event time)."""

    device_id: str
    quantity: str
    issue: Issue
    since: datetime
    value: float | None = None
    detail: str = ""


@stored
class Run:
    """The current run of equal values of one field: value, first and last time, count."""

    value: float
    first: float
    last: float
    count: int


@stored
class HealthState:
    """Per field: the current run of equal values and the open issues (issue -> since)."""

    runs: Mapping[str, Run] = field(default_factory=dict)
    open: Mapping[str, Mapping[Issue, float]] = field(default_factory=dict)


@frozen
class HealthUpdate:
    """New state, and the issues that opened or cleared with this reading."""

    state: HealthState
    opened: tuple[HealthFinding, ...]
    cleared: tuple[HealthFinding, ...]
    device_id: str = ""
    values: Mapping[str, float] = field(default_factory=dict)

    @property
    def findings(self) -> tuple[HealthFinding, ...]:
        """The issues now open, by field and issue (worked out when asked: the agents
        only need what opened and cleared)."""
        return tuple(
            _finding(self.device_id, q, i, since, self.values.get(q))
            for q, issues in sorted(self.state.open.items())
            for i, since in sorted(issues.items())
        )


def update_health(
    state: HealthState,
    device_id: str,
    event_time: datetime,
    values: Mapping[str, float],
    config: HealthConfig = HealthConfig(),
) -> HealthUpdate:
    """Check one reading's fields (units as in the field names) at tz-aware ``event_time``."""
    t = epoch_s(event_time)
    runs = dict(state.runs)
    # The open issues are copied only when one opens or clears (rarely).
    open_now: Mapping[str, Mapping[Issue, float]] = state.open
    copied = False
    opened: list[HealthFinding] = []
    cleared: list[HealthFinding] = []

    def change(quantity: str) -> dict[Issue, float]:
        nonlocal open_now, copied
        if not copied:
            open_now = {k: dict(v) for k, v in open_now.items()}
            copied = True
        issues: dict[Issue, float] = open_now.setdefault(quantity, {})  # type: ignore[attr-defined]
        return issues

    def set_issue(quantity: str, issue: Issue, active: bool, since: float, value: float) -> None:
        issues = open_now.get(quantity)
        if active and (issues is None or issue not in issues):
            change(quantity)[issue] = since
            opened.append(_finding(device_id, quantity, issue, since, value))
        elif not active and issues is not None and issue in issues:
            was = change(quantity).pop(issue)
            cleared.append(_finding(device_id, quantity, issue, was, value))

    rules = config.rules
    isfinite = math.isfinite
    for quantity, value in values.items():
        rule = rules.get(quantity)
        if rule is None:
            continue
        plausible = isfinite(value) and rule.min_value <= value <= rule.max_value
        # set_issue only where something may open or clear: a sound field of a device
        # without open issues (nearly every reading) skips it.
        if not plausible or open_now.get(quantity):
            set_issue(quantity, "out_of_range", not plausible, t, value)

        run = runs.get(quantity)
        if run is not None and t <= run.last:
            continue  # late or duplicate: the run of consecutive values is unchanged
        if run is not None and value == run.value:
            run = Run(value, run.first, t, run.count + 1)
        else:
            run = Run(value, t, t, 1)
        runs[quantity] = run
        stuck = run.count > 1 and _is_stuck(run, rule)
        if stuck or open_now.get(quantity):
            set_issue(quantity, "stuck", stuck, run.first, value)

    if copied:
        open_now = {k: v for k, v in open_now.items() if v}
    return HealthUpdate(
        state=HealthState(runs=runs, open=open_now),
        opened=tuple(opened),
        cleared=tuple(cleared),
        device_id=device_id,
        values=values,
    )


def _is_stuck(run: Run, rule: QuantityRule) -> bool:
    if run.value in rule.stuck_exempt:
        return False
    by_count = rule.stuck_count is not None and run.count >= rule.stuck_count
    by_time = (
        rule.stuck_minutes is not None
        and run.count >= 3
        and run.last - run.first >= rule.stuck_minutes * 60
    )
    return by_count or by_time


def _finding(
    device_id: str, quantity: str, issue: Issue, since: float, value: float | None
) -> HealthFinding:
    details = {
        "stuck": "same value repeated",
        "out_of_range": "value outside the plausible range",
        "silent": "no reading within the expected interval",
    }
    return HealthFinding(device_id, quantity, issue, from_epoch(since), value, details[issue])


def silent_devices(
    last_seen: Mapping[str, datetime],
    now: datetime,
    expected_interval_s: Mapping[str, float] | float,
    factor: float = 3,
) -> list[HealthFinding]:
    """Devices whose last reading is more than ``factor`` expected intervals before ``now``.

    ``expected_interval_s`` (seconds) is one value for all or one per device id; a device
    missing from the mapping is not checked. ``now`` is the caller's clock (processing
    time or the newest event time of the fleet). Sorted by device id; ``since`` is the
    last reading's time.
    """
    found: list[HealthFinding] = []
    now_s = epoch_s(now, "now")
    for device_id, seen in sorted(last_seen.items()):
        if isinstance(expected_interval_s, int | float):
            interval: float | None = float(expected_interval_s)
        else:
            interval = expected_interval_s.get(device_id)
        if interval is None:
            continue
        if now_s - epoch_s(seen, f"last_seen[{device_id}]") > factor * interval:
            found.append(_finding(device_id, "*", "silent", epoch_s(seen), None))
    return found
