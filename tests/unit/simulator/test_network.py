"""The generated northern-Taiwan device network."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from civic_iot.registry import Registry, load_registry
from civic_iot.settings import REPO_ROOT
from civic_iot.thresholds import Thresholds, load_thresholds
from simulator.network import (
    DEFAULT_SEED,
    TOWNS,
    build_network,
    dump_registry,
    nearest_township,
    network_thresholds,
    with_thresholds,
)

DEVICES_YAML = REPO_ROOT / "deploy" / "devices.yaml"
THRESHOLDS_YAML = REPO_ROOT / "deploy" / "thresholds.yaml"


@pytest.fixture(scope="module")
def network() -> Registry:
    return build_network(DEFAULT_SEED)


@pytest.fixture(scope="module")
def thresholds() -> Thresholds:
    return network_thresholds(DEFAULT_SEED)


def test_round_trips_through_the_registry_model(network: Registry, tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(dump_registry(network, DEFAULT_SEED), encoding="utf-8")
    loaded = load_registry(path)
    assert loaded == network
    assert Registry.model_validate(network.model_dump(mode="json")) == network


def test_committed_devices_yaml_is_the_generated_one(network: Registry) -> None:
    # Regenerate with `python -m simulator.network --out deploy/devices.yaml`.
    assert DEVICES_YAML.read_text(encoding="utf-8") == dump_registry(network, DEFAULT_SEED)


def test_committed_thresholds_yaml_ends_with_the_generated_sections(
    network: Registry, thresholds: Thresholds
) -> None:
    # Regenerate with `python -m simulator.network` (the defaults above stay as written).
    text = THRESHOLDS_YAML.read_text(encoding="utf-8")
    assert with_thresholds(text, DEFAULT_SEED) == text
    loaded = load_thresholds(THRESHOLDS_YAML, network)
    assert (loaded.regions, loaded.devices) == (thresholds.regions, thresholds.devices)


def test_regenerating_keeps_the_hand_written_defaults() -> None:
    head = "# mine\ndefaults:\n  flood: {flood_depth_cm_levels: [15, 30, 50]}\n"
    once = with_thresholds(head, DEFAULT_SEED)
    assert once.startswith(head)
    assert with_thresholds(once, DEFAULT_SEED) == once


def test_counts(network: Registry) -> None:
    assert 30 <= len(network.townships) <= 40
    sensors = Counter(d.sensor for d in network)
    assert sensors == {"air": 300, "river": 20, "flood": 20, "rain": 20, "accelerometer": 26}
    kinds = Counter(d.kind for d in network)
    assert kinds == {"air": 300, "water": 60, "seismic": 26}
    assert [d.id for d in network.of_kind("air")][:2] == ["air-0001", "air-0002"]


def test_townships_are_real_looking(network: Registry) -> None:
    codes = [t.code for t in network.townships]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"\d{8}", c) for c in codes)
    zhongzheng = network.township("63000050")
    assert zhongzheng is not None
    assert zhongzheng.name == "Zhongzheng District 中正區"
    counties = {t.county for t in network.townships}
    assert counties >= {"Taipei City", "New Taipei City", "Keelung City", "Taoyuan City"}
    assert any("Hsinchu" in c for c in counties)
    assert "Yilan County" in counties
    for t in network.townships:
        assert re.search(r"[\u4e00-\u9fff]", t.name), t.name
        assert 24.4 < t.lat < 25.4
        assert 120.9 < t.lon < 122.1


def test_every_device_is_in_its_nearest_township(network: Registry) -> None:
    for d in network:
        assert nearest_township(d.lat, d.lon).code == d.township, d.id
        town = network.township(d.township)
        assert town is not None
        assert abs(d.lat - town.lat) < 0.05
        assert abs(d.lon - town.lon) < 0.05


def test_hilly_townships_have_an_r70_in_50_mm_steps(
    network: Registry, thresholds: Thresholds
) -> None:
    hilly = [t for t in TOWNS if t.r70_mm is not None]
    assert len(hilly) >= 20
    for t in network.townships:
        r70 = thresholds.for_township(t.code).debris_flow.r70_mm
        if r70 is not None:
            assert 250 <= r70 <= 500
            assert r70 % 50 == 0
    assert sum(
        thresholds.for_township(t.code).debris_flow.r70_mm is not None for t in TOWNS
    ) == len(hilly)


def test_river_thresholds_are_elevations_above_the_normal_stage(
    network: Registry, thresholds: Thresholds
) -> None:
    rivers = [d for d in network if d.sensor == "river"]
    assert rivers
    for d in rivers:
        assert d.kind == "water"
        assert d.elevation_m is not None
        yellow, orange, red = thresholds.for_device(d.id, d.township).river.levels
        assert yellow is not None
        assert orange is not None
        assert red is not None
        assert d.elevation_m + 1.2 < yellow < orange < red


def test_seismic_stations_spread_over_the_area(network: Registry) -> None:
    stations = network.of_kind("seismic")
    assert len(stations) >= 24
    assert all(s.sensor == "accelerometer" for s in stations)
    lats = [s.lat for s in stations]
    lons = [s.lon for s in stations]
    assert max(lats) - min(lats) > 0.5
    assert max(lons) - min(lons) > 0.7
    assert len({s.township for s in stations}) >= 24


def test_deterministic() -> None:
    a, b = build_network(DEFAULT_SEED), build_network(DEFAULT_SEED)
    assert dump_registry(a, DEFAULT_SEED) == dump_registry(b, DEFAULT_SEED)
    c = build_network(DEFAULT_SEED + 1)
    assert [d.lat for d in c] != [d.lat for d in a]
    assert len(TOWNS) == len(a.townships)
