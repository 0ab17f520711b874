"""Pure pieces around the agents: township water aggregation, the quake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.candidates import update_hazard
from processors.handlers import _watermark
from processors.messages import TownshipReport

T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _report(device: str, level: int, value: float, minutes: int = 0) -> TownshipReport:
    return TownshipReport(
        township="63000010", hazard="flood", device=device, level=level, value=value,
        metric="flood_depth_cm", threshold=30.0 if level == 2 else 10.0,
        event_time=T + timedelta(minutes=minutes),
    )  # fmt: skip


def test_township_flood_level_is_the_highest_device_level() -> None:
    a = update_hazard({}, 0, _report("f1", 2, 35.0))
    assert (a.level, a.changed, a.at_level, a.value) == (2, True, ("f1",), 35.0)
    b = update_hazard(a.devices, a.level, _report("f2", 1, 12.0))
    assert (b.level, b.changed) == (2, False)
    c = update_hazard(b.devices, b.level, _report("f1", 0, 2.0, minutes=5))
    assert (c.level, c.changed, c.at_level, c.value) == (1, True, ("f2",), 12.0)
    # An older report of a device does not undo a newer one.
    d = update_hazard(c.devices, c.level, _report("f1", 2, 40.0, minutes=-5))
    assert (d.level, d.changed) == (1, False)


@pytest.mark.parametrize(
    ("clocks", "previous", "expected"),
    [
        ({}, 5.0, 5.0),
        ({"0": (100.0, 1000.0), "1": (90.0, 1000.0)}, 0.0, 90.0),  # the slowest holds it
        ({"0": (100.0, 1000.0), "1": (10.0, 985.0)}, 0.0, 100.0),  # ... unless idle
        ({"0": (100.0, 1000.0), "1": (90.0, 1000.0)}, 95.0, 95.0),  # never backwards
    ],
)
def test_quake_clock_is_a_watermark(
    clocks: dict[str, tuple[float, float]], previous: float, expected: float
) -> None:
    assert _watermark(clocks, previous, 1000.0, 10.0) == expected
