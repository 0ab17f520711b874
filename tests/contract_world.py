"""The small world in which the contract's property tests and ``bench/fuzz.py`` judge
ingest: a fixed clock, one township, one device of each kind."""

from __future__ import annotations

from datetime import UTC, datetime

from civic_iot.registry import Device, Registry, Township

#: The clock ingest validates against (a fixed instant: the generated times are relative).
NOW = datetime(2026, 11, 25, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
REGISTRY = Registry(
    townships=(Township(code="63000030", name="Da'an", lat=25.026, lon=121.543),),
    devices=(
        Device(id="air-1", kind="air", lat=25.02, lon=121.54, township="63000030"),
        Device(id="water-1", kind="water", lat=25.03, lon=121.55, township="63000030"),
        Device(id="quake-1", kind="seismic", lat=25.04, lon=121.56, township="63000030"),
    ),
)
#: The registered device of each kind.
DEVICE_FOR = {"air": "air-1", "water": "water-1", "seismic": "quake-1"}
