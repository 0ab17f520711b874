"""The device registry's own checks (no services needed)."""

from __future__ import annotations

import pytest

from civic_iot.registry import Township


@pytest.mark.parametrize(
    ("r70", "r50", "ok"),
    [
        (250.0, None, True),  # R50 derived by the processors
        (250.0, 200.0, True),
        (250.0, 250.0, True),
        (None, 150.0, True),
        (250.0, 300.0, False),  # the threshold after strong shaking must not be higher
    ],
)
def test_township_refuses_an_r50_above_r70(r70: float | None, r50: float | None, ok: bool) -> None:
    def town() -> Township:
        return Township(
            code="65000290",
            name="Wulai",
            lat=24.865,
            lon=121.551,
            debris_flow_r70_mm=r70,
            debris_flow_r50_mm=r50,
        )

    if ok:
        assert town().debris_flow_r50_mm == r50
        return
    with pytest.raises(ValueError, match=r"65000290: debris_flow_r50_mm 300\.0 is above"):
        town()
