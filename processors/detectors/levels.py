"""Alert levels with hysteresis, shared by the air and water detectors.

A :class:`Ladder` is an ordered list of thresholds: reaching threshold *k* (1-based) means
level *k*, level 0 is "below every line". A :class:`LevelTracker` remembers the level
reached and applies hysteresis so a value hovering at a line does not flap:

* escalation is immediate: the level rises as soon as the value reaches a higher line;
* a level is held until the value falls below that level's line minus its clear margin,
  and then drops to the highest level that is still held (possibly several at once).

In one formula, with ``t_k`` the threshold and ``m_k`` the clear margin of level *k*::

    new = max(entered, max{k <= old : value >= t_k - m_k})
    entered = max{k : value >= t_k}

Detectors whose level depends on several figures at once (the CWA rain classes) compute
``entered`` and ``held`` themselves and call :meth:`LevelTracker.advance`.

The lines themselves come from the thresholds file (:mod:`civic_iot.thresholds`), with a
region's or device's overrides already applied.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Self

from processors.detectors.state import frozen, stored


@dataclass(frozen=True, slots=True)
class Ladder:
    """Ordered thresholds (level 1 first) and the clear margin of each, in the value's unit.

    A threshold may be ``None``: that level is not configured and cannot be entered (a
    river station with only a red line still reports red as level 3). The present
    thresholds must be strictly increasing and every margin must be >= 0.
    """

    thresholds: tuple[float | None, ...]
    margins: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.margins):
            msg = (
                f"ladder: {len(self.thresholds)} thresholds but {len(self.margins)} margins; "
                "expected one clear margin per threshold"
            )
            raise ValueError(msg)
        present = [t for t in self.thresholds if t is not None]
        if any(not math.isfinite(t) for t in present) or any(
            b <= a for a, b in itertools.pairwise(present)
        ):
            msg = f"ladder: thresholds {self.thresholds} must be finite and strictly increasing"
            raise ValueError(msg)
        if any(m < 0 or not math.isfinite(m) for m in self.margins):
            msg = f"ladder: clear margins {self.margins} must be finite and >= 0"
            raise ValueError(msg)

    @classmethod
    def of(cls, thresholds: Sequence[float | None], margin: float | Sequence[float]) -> Self:
        """A ladder with one margin for every level, or one margin per level."""
        margins = (
            tuple(float(margin) for _ in thresholds)
            if isinstance(margin, int | float)
            else tuple(float(m) for m in margin)
        )
        return cls(tuple(thresholds), margins)

    @property
    def top(self) -> int:
        """The highest level this ladder can report."""
        return len(self.thresholds)

    @property
    def configured(self) -> bool:
        """Whether at least one threshold is set (an empty ladder never leaves level 0)."""
        return any(t is not None for t in self.thresholds)

    def threshold(self, level: int) -> float | None:
        """The line of ``level`` (1-based), or ``None`` for level 0 or an unset line."""
        return self.thresholds[level - 1] if 1 <= level <= self.top else None

    def entered(self, value: float) -> int:
        """The highest level whose threshold ``value`` reaches (no hysteresis)."""
        level = 0
        for k, t in enumerate(self.thresholds, 1):  # a loop: no generator per reading
            if t is not None and value >= t:
                level = k
        return level

    def held(self, value: float, current: int) -> int:
        """The highest level <= ``current`` not yet cleared (value >= line - margin)."""
        level = 0
        margins = self.margins
        for k, t in enumerate(self.thresholds[: max(current, 0)], 1):
            if t is not None and value >= t - margins[k - 1]:
                level = k
        return level


@frozen
class LevelStep:
    """The outcome of one tracker update."""

    tracker: LevelTracker
    previous: int

    @property
    def level(self) -> int:
        return self.tracker.level

    @property
    def changed(self) -> bool:
        """True when the level differs from before: this becomes an alert candidate."""
        return self.tracker.level != self.previous

    @property
    def escalated(self) -> bool:
        return self.tracker.level > self.previous


@stored
class LevelTracker:
    """The remembered level (0 = clear) and the event time it was entered.

    Immutable: every update returns a new tracker inside a :class:`LevelStep`.
    """

    level: int = 0
    since: datetime | None = None

    def advance(self, entered: int, held: int, at: datetime) -> LevelStep:
        """Move to ``max(entered, held)``; ``held`` must already be capped at the old level."""
        new = max(entered, min(held, self.level))
        tracker = self if new == self.level else LevelTracker(level=new, since=at)
        return LevelStep(tracker=tracker, previous=self.level)

    def update(self, value: float, ladder: Ladder, at: datetime) -> LevelStep:
        """Apply one value (in the ladder's unit) observed at event time ``at``.

        A ladder that shrank since the level was stored (thresholds removed from the
        registry) caps the level at the ladder's top.
        """
        current = min(self.level, ladder.top)
        return self.advance(ladder.entered(value), ladder.held(value, current), at)
