"""The thresholds file: what it accepts, what it refuses (and how it says so), the layers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from civic_iot.registry import Device, Registry, Township, load_registry
from civic_iot.settings import REPO_ROOT, Settings
from civic_iot.thresholds import (
    ThresholdsError,
    ThresholdSet,
    load_thresholds,
    thresholds_from,
)

SHIPPED = REPO_ROOT / "deploy" / "thresholds.yaml"
SOURCE = "deploy/thresholds.yaml"

REGISTRY = Registry(
    townships=(
        Township(code="63000080", name="Wenshan", county="Taipei City", lat=24.99, lon=121.57),
        Township(code="63000090", name="Nangang", county="Taipei City", lat=25.05, lon=121.61),
        Township(code="65000290", name="Wulai", county="New Taipei City", lat=24.86, lon=121.55),
    ),
    devices=(
        Device(id="river-1", kind="water", lat=24.99, lon=121.57, township="63000080"),
        Device(id="air-1", kind="air", lat=25.05, lon=121.61, township="63000090"),
    ),
)


def refused(data: Any) -> str:
    with pytest.raises(ThresholdsError) as info:
        thresholds_from(data, REGISTRY, source=SOURCE)
    return str(info.value)


# --- the shipped file ---------------------------------------------------------------------


def test_the_shipped_file_loads_against_the_shipped_registry() -> None:
    settings = Settings()
    assert settings.thresholds == SHIPPED
    thresholds = load_thresholds(settings.thresholds, load_registry(settings.registry))
    assert thresholds.for_township("65000290").debris_flow.r70_mm == 250
    assert thresholds.for_device("river-0001", "63000040").river.water_level_m_red is not None


def _leaves(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        out |= _leaves(value, path) if isinstance(value, dict) else {path}
    return out


def test_the_shipped_defaults_are_the_models_and_name_every_threshold() -> None:
    """The file shows every threshold a newcomer may change, with the built-in value: the
    model's default (its one place in code, with the source) and the file cannot drift."""
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))["defaults"]
    assert ThresholdSet.model_validate(raw) == ThresholdSet()
    every = _leaves(ThresholdSet().model_dump(exclude_none=True))
    missing = {p for p in every if not p.startswith("health.")} - _leaves(raw)
    assert not missing, f"deploy/thresholds.yaml does not show {sorted(missing)}"
    assert set(raw["health"]) == set(ThresholdSet().health.rules())


def test_a_newcomer_finds_pm2_5_debris_flow_and_sta_lta_by_name() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    for name in ("pm2_5_ugm3_breakpoints", "debris_flow:", "r70_mm", "sta_s", "lta_s"):
        assert name in text, name


# --- refusals -------------------------------------------------------------------------------


def test_an_unknown_name_is_refused_with_the_names_expected() -> None:
    msg = refused({"defaults": {"flood": {"flood_depth_cm_l1": 20}}})
    assert msg.startswith(f"{SOURCE}: defaults.flood.flood_depth_cm_l1: unknown name")
    assert "flood_depth_cm_levels" in msg
    assert "rise_cm_per_10min" in msg


def test_an_unknown_section_or_top_level_key_is_refused() -> None:
    assert "defaults.floods: unknown name; expected one of air_quality, flood" in refused(
        {"defaults": {"floods": {}}}
    )
    assert "threshold: unknown name; expected one of defaults, regions, devices" in refused(
        {"threshold": {}}
    )
    assert "regions.63000080.floods: unknown section; expected one of" in refused(
        {"regions": {"63000080": {"floods": {"x": 1}}}}
    )


def test_an_unknown_name_in_a_region_or_device_is_refused() -> None:
    msg = refused({"devices": {"river-1": {"river": {"river_level_m_l1": 7.4}}}})
    assert f"{SOURCE}: devices.river-1.river.river_level_m_l1: unknown name" in msg
    assert "water_level_m_red" in msg


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        ({"flood": {"rise_cm_per_10min": -1}}, "flood.rise_cm_per_10min", "greater than 0"),
        ({"air_quality": {"aqi_levels": [101, 151]}}, "air_quality.aqi_levels", "expected 3 lines"),
        ({"air_quality": {"aqi_levels": [101, 151, 600]}}, "aqi_levels.2", "less than or"),
        ({"seismic": {"trigger_ratio": "high"}}, "seismic.trigger_ratio", "valid number"),
        ({"debris_flow": {"shaking_min_intensity": "5"}}, "shaking_min_intensity", "'5-'"),
        ({"quake": {"min_stations": 1}}, "quake.min_stations", "greater than or equal to 2"),
        (
            {"health": {"pm2_5_ugm3": {"min_value": 5, "max_value": 1}}},
            "health.pm2_5_ugm3",
            "below",
        ),
        ({"seismic": {"sta_s": 20}}, "defaults.seismic", "shorter than lta_s"),
        ({"silence": {"air_s": 0}}, "silence.air_s", "greater than 0"),
        ({"flood": {"flood_depth_cm_levels": [10, 5, 50]}}, "flood_depth_cm_levels", "increase"),
    ],
)
def test_a_bad_value_is_refused_with_its_path(
    data: dict[str, Any], path: str, expected: str
) -> None:
    msg = refused({"defaults": data})
    assert msg.startswith(f"{SOURCE}: ")
    assert path in msg
    assert expected in msg


@pytest.mark.parametrize(
    ("section", "lines", "what"),
    [
        ("air_quality", {"aqi_levels": [151, 101, 201]}, "must increase strictly"),
        ("flood", {"flood_depth_cm_levels": [10, 30, 30]}, "must increase strictly"),
        (
            "river",
            {"water_level_m_yellow": 6.0, "water_level_m_red": 5.0},
            "water_level_m_yellow < water_level_m_orange < water_level_m_red",
        ),
        ("rain", {"torrential_rain": {"rainfall_mm_24h": 150}}, "rain classes' rainfall_mm_24h"),
        (
            "air_quality",
            {"pm2_5_ugm3_breakpoints": [[0, 12.4, 0, 50], [12.0, 30.4, 51, 100]]},
            "must start above the band before it",
        ),
    ],
)
def test_a_ladder_that_does_not_increase_is_refused(
    section: str, lines: dict[str, Any], what: str
) -> None:
    msg = refused({"defaults": {section: lines}})
    assert f"defaults.{section}" in msg
    assert what in msg


def test_r50_above_r70_is_refused_where_the_combination_is_made() -> None:
    msg = refused({"regions": {"63000080": {"debris_flow": {"r70_mm": 250, "r50_mm": 300}}}})
    assert msg == (
        f"{SOURCE}: regions.63000080.debris_flow: r50_mm 300 is above r70_mm 250; expected "
        "R50 <= R70 (the threshold after strong shaking is the lower one)"
    )
    # A county's R50 and a township's R70 that do not fit: the township's entry is named.
    msg = refused(
        {
            "regions": {
                "Taipei City": {"debris_flow": {"r50_mm": 300}},
                "63000080": {"debris_flow": {"r70_mm": 250}},
            }
        }
    )
    assert "regions.63000080.debris_flow: r50_mm 300 is above r70_mm 250" in msg


def test_an_unknown_township_or_device_is_refused() -> None:
    msg = refused({"regions": {"99999999": {"flood": {"rise_cm_per_10min": 5}}}})
    assert msg.startswith(f"{SOURCE}: regions.99999999: not a township code or county")
    assert "New Taipei City, Taipei City" in msg
    msg = refused({"devices": {"river-9": {"river": {"water_level_m_red": 7}}}})
    assert msg == f"{SOURCE}: devices.river-9: no device with this id in the device registry"


def test_a_network_wide_section_in_a_region_or_device_is_refused() -> None:
    msg = refused({"regions": {"63000080": {"quake": {"min_stations": 4}}}})
    assert "regions.63000080.quake: network-wide; set it under defaults only" in msg
    msg = refused({"devices": {"air-1": {"silence": {"air_s": 60}}}})
    assert "devices.air-1.silence: network-wide" in msg


def test_a_region_must_hold_sections_of_names() -> None:
    assert "regions.63000080: expected a mapping of sections" in refused(
        {"regions": {"63000080": 5}}
    )
    assert "regions.63000080.flood: expected a mapping" in refused(
        {"regions": {"63000080": {"flood": 10}}}
    )


def test_an_unreadable_or_broken_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsError, match=r"missing\.yaml: cannot read the thresholds file"):
        load_thresholds(tmp_path / "missing.yaml", REGISTRY)
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults: {flood: [\n", encoding="utf-8")
    with pytest.raises(ThresholdsError, match=r"broken\.yaml: not valid YAML"):
        load_thresholds(broken, REGISTRY)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ThresholdsError, match=r"list\.yaml: expected a mapping"):
        load_thresholds(listing, REGISTRY)


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing overridden\n", encoding="utf-8")
    thresholds = load_thresholds(empty, REGISTRY)
    assert thresholds.defaults == ThresholdSet()
    assert thresholds.for_device("river-1", "63000080") is thresholds.defaults


# --- layers ---------------------------------------------------------------------------------


def test_defaults_then_county_then_township_then_device() -> None:
    thresholds = thresholds_from(
        {
            "defaults": {"flood": {"rise_cm_per_10min": 12}},
            "regions": {
                "Taipei City": {"flood": {"flood_depth_cm_levels": [15, 30, 50]}},
                # Unquoted in YAML a code reads as an integer: it is still the township.
                63000080: {"flood": {"flood_depth_cm_clear_margin": 2}},
            },
            "devices": {"river-1": {"flood": {"flood_depth_cm_levels": [5, 30, 50]}}},
        },
        REGISTRY,
    )
    nangang = thresholds.for_township("63000090").flood  # county only
    assert (nangang.flood_depth_cm_levels, nangang.flood_depth_cm_clear_margin) == ((15, 30, 50), 5)
    assert nangang.rise_cm_per_10min == 12  # the file's default carries through
    wenshan = thresholds.for_township("63000080").flood  # county, then township
    assert (wenshan.flood_depth_cm_levels, wenshan.flood_depth_cm_clear_margin) == ((15, 30, 50), 2)
    device = thresholds.for_device("river-1", "63000080").flood  # ... then the device
    assert (device.flood_depth_cm_levels, device.flood_depth_cm_clear_margin) == ((5, 30, 50), 2)
    # Another device of the township has the township's; elsewhere the defaults.
    assert thresholds.for_device("other", "63000080").flood == wenshan
    assert thresholds.for_township("65000290") is thresholds.defaults
    assert thresholds.for_township("65000290").flood.flood_depth_cm_levels == (10, 30, 50)


def test_nested_overrides_merge_name_by_name() -> None:
    thresholds = thresholds_from(
        {
            "regions": {
                "65000290": {
                    "health": {"rainfall_mm": {"max_value": 300}},
                    "rain": {"heavy_rain": {"rainfall_mm_1h": 30}},
                }
            }
        },
        REGISTRY,
    )
    wulai = thresholds.for_township("65000290")
    assert wulai.health.rainfall_mm.max_value == 300
    assert wulai.health.rainfall_mm.stuck_count == 12  # the rest of the rule is kept
    assert wulai.rain.heavy_rain.rainfall_mm_1h == 30
    assert wulai.rain.heavy_rain.rainfall_mm_24h == 80


def test_the_summary_says_what_is_in_force(caplog: pytest.LogCaptureFixture) -> None:
    thresholds = thresholds_from(
        {
            "defaults": {"air_quality": {"pm2_5_ugm3_breakpoints": "moenv_pre2025"}},
            "regions": {
                "63000080": {"debris_flow": {"r70_mm": 450}},
                "65000290": {"debris_flow": {"r70_mm": 250}},
            },
            "devices": {"river-1": {"river": {"water_level_m_red": 7.4}}},
        },
        REGISTRY,
        source=SOURCE,
    )
    lines = thresholds.summary()
    assert lines[0] == f"thresholds file={SOURCE} regions=2 devices=1"
    assert any("air_quality: aqi_levels=[101,151,201]" in x and "moenv_pre2025" in x for x in lines)
    seismic = "seismic: sta_s=0.75 lta_s=10 trigger_ratio=2.5 detrigger_ratio=1"
    assert any(seismic in x for x in lines)
    assert "thresholds regions n=2 override debris_flow.r70_mm: 63000080 65000290" in lines
    assert "thresholds devices n=1 override river.water_level_m_red: river-1" in lines
    with caplog.at_level(logging.INFO, logger="civic_iot.thresholds"):
        thresholds.log_in_force()
    assert [r.getMessage() for r in caplog.records] == lines
