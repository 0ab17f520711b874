"""Region and device overrides of the thresholds file reach every detector, end to end:
the same reading through the same handler gives a different level where a region's or a
device's line differs."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from civic_iot.contracts.processing import TownshipReport
from civic_iot.contracts.readings import (
    AirPayload,
    Location,
    Reading,
    SeismicPayload,
    WaterPayload,
)
from civic_iot.registry import Device, Registry, Township
from civic_iot.settings import InfluxSettings
from civic_iot.thresholds import PM2_5_TABLE_NAMES, thresholds_from
from civic_iot.times import to_ns
from processors.detectors.aqi import PM2_5_TABLES
from processors.handlers import (
    Context,
    handle_air,
    handle_seismic,
    handle_township,
    handle_water,
)
from processors.states import AirDevice, SeismicDevice, TownshipState, WaterDevice

PLAIN, LOW, OTHER = "63000010", "63000020", "65000010"  # no override; overridden; county
REGISTRY = Registry(
    townships=(
        Township(code=PLAIN, name="Songshan", county="Taipei City", lat=25.05, lon=121.56),
        Township(code=LOW, name="Xinyi", county="Taipei City", lat=25.03, lon=121.57),
        Township(code=OTHER, name="Banqiao", county="New Taipei City", lat=25.01, lon=121.46),
    ),
    devices=tuple(
        Device(id=f"{kind}-{town}{suffix}", kind=k, lat=25.0, lon=121.5, township=town, sensor=s)
        for town in (PLAIN, LOW, OTHER)
        for suffix in ("", "-own")
        for kind, k, s in (
            ("air", "air", "air"),
            ("flood", "water", "flood"),
            ("river", "water", "river"),
            ("rain", "water", "rain"),
            ("seis", "seismic", "accelerometer"),
        )
    ),
)
THRESHOLDS = thresholds_from(
    {
        "defaults": {"silence": {"seismic_s": 90}, "quake": {"min_stations": 4}},
        "regions": {
            LOW: {
                "air_quality": {"aqi_levels": [50, 151, 201]},
                "flood": {"flood_depth_cm_levels": [5, 30, 50]},
                "river": {"water_level_m_red": 7.4},
                "rain": {"heavy_rain": {"rainfall_mm_1h": 20}},
                "debris_flow": {"r70_mm": 60},
                "health": {"pm2_5_ugm3": {"max_value": 50}},
                "seismic": {"trigger_ratio": 90},
            },
            "New Taipei City": {"debris_flow": {"r70_mm": 30}},
        },
        "devices": {
            f"air-{LOW}-own": {"air_quality": {"aqi_levels": [70, 151, 201]}},
            f"flood-{LOW}-own": {"flood": {"flood_depth_cm_levels": [8, 30, 50]}},
            f"river-{PLAIN}-own": {"river": {"water_level_m_red": 7.0}},
            f"rain-{LOW}-own": {"rain": {"heavy_rain": {"rainfall_mm_1h": 40}}},
            f"rain-{PLAIN}-own": {"debris_flow": {"r70_mm": 60}},
            f"seis-{PLAIN}-own": {"seismic": {"trigger_ratio": 90}},
            f"seis-{LOW}-own": {"seismic": {"trigger_ratio": 3}},
            f"air-{PLAIN}-own": {"health": {"pm2_5_ugm3": {"max_value": 50}}},
        },
    },
    REGISTRY,
)
CTX = Context.build(InfluxSettings(), REGISTRY, THRESHOLDS)
T = datetime(2025, 7, 1, 4, 0, tzinfo=UTC)


def reading(device_id: str, data: Any, t: datetime = T) -> Reading:
    dev = REGISTRY.get(device_id)
    assert dev is not None
    return Reading(
        reading_id=f"{device_id}:{to_ns(t)}",
        device_id=device_id,
        kind=dev.kind,
        event_time=t,
        received_at=t,
        location=Location(lat=dev.lat, lon=dev.lon, township=dev.township),
        data=data,
    )


def report(outcome: Any, hazard: str) -> TownshipReport:
    found: TownshipReport = next(r for r in outcome.reports if r.hazard == hazard)
    return found


def test_the_pm2_5_tables_the_file_names_are_the_detectors() -> None:
    assert set(PM2_5_TABLE_NAMES) == set(PM2_5_TABLES)


def test_air_quality_level_follows_the_region_and_device_aqi_lines() -> None:
    # NO2 40 ppb in the current hour: AQI 62 (the hourly NO2 decides at once).
    def level(device: str) -> int:
        data = AirPayload(ts=T, no2_ppb=40.0)
        return report(handle_air(AirDevice(), reading(device, data), CTX), "air_quality").level

    assert level(f"air-{PLAIN}") == 0  # default line 101
    assert level(f"air-{LOW}") == 1  # the township's line 50
    assert level(f"air-{LOW}-own") == 0  # the device's own line 70


def test_the_township_candidate_names_the_township_line() -> None:
    # Both air sensors of the township at level 1 (two must agree).
    state = TownshipState()
    candidates = []
    for device in (f"air-{LOW}", f"air-{LOW}-own"):
        r = TownshipReport(
            township=LOW, hazard="air_quality", device=device, level=1, value=62.0,
            metric="aqi", event_time=T,
        )  # fmt: skip
        decision = handle_township(state, r, CTX, T)
        state = decision.state
        candidates += decision.candidates
    (candidate,) = candidates
    assert (candidate.level, candidate.threshold) == (1, 50)  # the township's line


def test_flood_level_follows_the_region_and_device_depth_lines() -> None:
    def level(device: str) -> int:
        data = WaterPayload(ts=T, flood_depth_cm=6.0)
        return report(handle_water(WaterDevice(), reading(device, data), CTX), "flood").level

    assert level(f"flood-{PLAIN}") == 0  # 10 cm by default
    assert level(f"flood-{LOW}") == 1  # 5 cm in the township
    assert level(f"flood-{LOW}-own") == 0  # 8 cm for the device


def test_river_level_follows_the_region_and_device_lines() -> None:
    def level(device: str, stage_m: float) -> tuple[int, float | None]:
        data = WaterPayload(ts=T, water_level_m=stage_m)
        r = report(handle_water(WaterDevice(), reading(device, data), CTX), "river")
        return r.level, r.threshold

    assert level(f"river-{PLAIN}", 7.5) == (0, None)  # no lines by default
    assert level(f"river-{LOW}", 7.5) == (3, 7.4)  # the township's red line
    assert level(f"river-{LOW}", 7.2) == (0, None)
    assert level(f"river-{PLAIN}-own", 7.2) == (3, 7.0)  # the gauge's own red line


def test_rain_class_follows_the_region_and_device_criteria() -> None:
    def level(device: str) -> int:
        data = WaterPayload(ts=T, rainfall_mm=25.0)
        r = report(handle_water(WaterDevice(), reading(device, data), CTX), "rain")
        assert r.metric == "rainfall_mm_24h"
        assert r.evidence["rainfall_mm_1h"] == 25.0
        return r.level

    assert level(f"rain-{PLAIN}") == 0  # heavy rain from 40 mm in 1 h
    assert level(f"rain-{LOW}") == 1  # from 20 mm in the township
    assert level(f"rain-{LOW}-own") == 0  # the gauge's own 40 mm


def test_debris_flow_follows_the_county_township_and_device_r70() -> None:
    def judged(device: str) -> tuple[int, float | None]:
        data = WaterPayload(ts=T, rainfall_mm=50.0)
        r = report(handle_water(WaterDevice(), reading(device, data), CTX), "debris_flow")
        return r.level, r.threshold

    assert judged(f"rain-{PLAIN}") == (0, None)  # no R70: no level
    assert judged(f"rain-{PLAIN}-own") == (1, 60.0)  # the gauge's R70: yellow from 48
    assert judged(f"rain-{LOW}") == (1, 60.0)  # the township's
    assert judged(f"rain-{OTHER}") == (2, 30.0)  # the county's: red


def _packets(device: str, n_quiet: int, n_loud: int) -> list[Reading]:
    rng = random.Random(7)
    out = []
    for i in range(n_quiet + n_loud):
        amp = 0.05 if i < n_quiet else 40.0
        xs = [rng.gauss(0, 0.05) + amp * math.sin(2 * math.pi * 2 * k / 100) for k in range(100)]
        t = T + timedelta(seconds=i)
        data = SeismicPayload(ts=t, sample_rate_hz=100, x_gal=xs, y_gal=xs, z_gal=xs)
        out.append(reading(device, data, t))
    return out


@pytest.mark.parametrize(
    ("device", "triggers"),
    [
        (f"seis-{PLAIN}", True),  # trigger ratio 3 by default
        (f"seis-{LOW}", False),  # 90 in the township
        (f"seis-{LOW}-own", True),  # 3 for the station again
        (f"seis-{PLAIN}-own", False),  # 90 for the station
    ],
)
def test_sta_lta_trigger_follows_the_region_and_device_ratio(device: str, triggers: bool) -> None:
    env = SeismicDevice()
    fired = False
    for r in _packets(device, 15, 5):
        out = handle_seismic(env, r, CTX)
        env = out.state
        fired = fired or out.trigger is not None
    assert fired is triggers


@pytest.mark.parametrize(
    ("device", "flagged"),
    [(f"air-{OTHER}", False), (f"air-{LOW}", True), (f"air-{PLAIN}-own", True)],
)
def test_health_range_follows_the_region_and_device_rule(device: str, flagged: bool) -> None:
    out = handle_air(AirDevice(), reading(device, AirPayload(ts=T, pm2_5_ugm3=60.0)), CTX)
    issues = [dict(p.tags).get("issue") for p in out.points if p.measurement == "sensor_health"]
    assert ("out_of_range" in issues) is flagged


def test_network_wide_thresholds_reach_the_context() -> None:
    assert CTX.silent_after_s == {"air": 1800, "water": 1800, "seismic": 90}
    assert CTX.quake.association.min_stations == 4
    # Townships without overrides share the defaults' detector configs.
    assert CTX.for_township(PLAIN) is CTX.defaults
    assert CTX.for_device(f"flood-{PLAIN}", PLAIN) is CTX.defaults
