"""The device registry's own checks (no services needed)."""

from __future__ import annotations

import pytest

from civic_iot.registry import Device, Township


@pytest.mark.parametrize("name", ["debris_flow_r70_mm", "debris_flow_r50_mm"])
def test_township_refuses_a_threshold_and_says_where_it_lives(name: str) -> None:
    # Thresholds moved to the thresholds file: one left behind is refused, not ignored.
    with pytest.raises(ValueError, match=r"township 65000290: .* regions\.65000290"):
        Township.model_validate(
            {"code": "65000290", "name": "Wulai", "lat": 24.865, "lon": 121.551, name: 250.0}
        )


def test_device_refuses_a_thresholds_mapping_and_says_where_it_lives() -> None:
    with pytest.raises(ValueError, match=r"device river-1: thresholds moved .* devices\.river-1"):
        Device.model_validate(
            {
                "id": "river-1",
                "kind": "water",
                "lat": 25.0,
                "lon": 121.5,
                "township": "63000040",
                "thresholds": {"river_level_m_l1": 7.4},
            }
        )
