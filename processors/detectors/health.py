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
    # Made at the first field whose issues may open or clear (rarely: a sound field of a
    # device without open issues, nearly every reading, needs none).
    issues: _Issues | None = None
    rules = config.rules
    isfinite = math.isfinite
    for quantity, value in values.items():
        rule = rules.get(quantity)
        if rule is None:
            continue
        plausible = isfinite(value) and rule.min_value <= value <= rule.max_value
        if not plausible or (state.open if issues is None else issues.open).get(quantity):
            if issues is None:
                issues = _Issues(device_id, state.open)
            issues.set(quantity, "out_of_range", not plausible, t, value)

        run = runs.get(quantity)
        if run is not None and t <= run.last:
            continue  # late or duplicate: the run of consecutive values is unchanged
        if run is not None and value == run.value:
            run = Run(value, run.first, t, run.count + 1)
        else:
            run = Run(value, t, t, 1)
        runs[quantity] = run
        stuck = run.count > 1 and _is_stuck(run, rule)
        if stuck or (state.open if issues is None else issues.open).get(quantity):
            if issues is None:
                issues = _Issues(device_id, state.open)
            issues.set(quantity, "stuck", stuck, run.first, value)

    if issues is None:
        return HealthUpdate(HealthState(runs, state.open), (), (), device_id, values)
    return HealthUpdate(
        state=HealthState(runs=runs, open=issues.state()),
        opened=tuple(issues.opened),
        cleared=tuple(issues.cleared),
        device_id=device_id,
        values=values,
    )


class _Issues:
    """The open issues of one reading's update: copied at the first that opens or
    clears, and what opened and cleared. Private to :func:`update_health`."""

    __slots__ = ("cleared", "copied", "device_id", "open", "opened")

    def __init__(self, device_id: str, open_: Mapping[str, Mapping[Issue, float]]) -> None:
        self.device_id = device_id
        self.open = open_
        self.copied = False
        self.opened: list[HealthFinding] = []
        self.cleared: list[HealthFinding] = []

    def _change(self, quantity: str) -> dict[Issue, float]:
        if not self.copied:
            self.open = {k: dict(v) for k, v in self.open.items()}
            self.copied = True
        issues: dict[Issue, float] = self.open.setdefault(quantity, {})  # type: ignore[attr-defined]
        return issues

    def set(self, quantity: str, issue: Issue, active: bool, since: float, value: float) -> None:
        issues = self.open.get(quantity)
        if active and (issues is None or issue not in issues):
            self._change(quantity)[issue] = since
            self.opened.append(_finding(self.device_id, quantity, issue, since, value))
        elif not active and issues is not None and issue in issues:
            was = self._change(quantity).pop(issue)
            self.cleared.append(_finding(self.device_id, quantity, issue, was, value))

    def state(self) -> Mapping[str, Mapping[Issue, float]]:
        """The open issues after the reading: a field whose last issue cleared is gone."""
        return {k: v for k, v in self.open.items() if v} if self.copied else self.open


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
