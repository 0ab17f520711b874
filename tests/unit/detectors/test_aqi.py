"""Taiwan AQI: both edges of every band, rounding, the O3 and SO2 rules, capping."""

from __future__ import annotations

import math

import pytest

from processors.detectors.aqi import (
    PM2_5_MOENV_PRE2025,
    PM2_5_US_EPA_2024,
    REMARK_O3_1H_USED,
    REMARK_SO2_1H_CAPPED,
    REMARK_SO2_24H_USED,
    AqiTables,
    Pollutant,
    category,
    compute_aqi,
    sub_index,
)

# (pollutant, concentration, expected sub-index): both edges of every band (domain.md).
EDGES: list[tuple[Pollutant, float, int]] = [
    ("pm2_5", 0.0, 0),
    ("pm2_5", 12.4, 50),
    ("pm2_5", 12.5, 51),
    ("pm2_5", 30.4, 100),
    ("pm2_5", 30.5, 101),
    ("pm2_5", 50.4, 150),
    ("pm2_5", 50.5, 151),
    ("pm2_5", 125.4, 200),
    ("pm2_5", 125.5, 201),
    ("pm2_5", 225.4, 300),
    ("pm2_5", 225.5, 301),
    ("pm2_5", 325.4, 400),
    ("pm2_5", 325.5, 401),
    ("pm2_5", 500.4, 500),
    ("pm10", 0, 0),
    ("pm10", 30, 50),
    ("pm10", 31, 51),
    ("pm10", 75, 100),
    ("pm10", 76, 101),
    ("pm10", 190, 150),
    ("pm10", 191, 151),
    ("pm10", 354, 200),
    ("pm10", 355, 201),
    ("pm10", 424, 300),
    ("pm10", 425, 301),
    ("pm10", 504, 400),
    ("pm10", 505, 401),
    ("pm10", 604, 500),
    ("o3_8h", 0.000, 0),
    ("o3_8h", 0.054, 50),
    ("o3_8h", 0.055, 51),
    ("o3_8h", 0.070, 100),
    ("o3_8h", 0.071, 101),
    ("o3_8h", 0.085, 150),
    ("o3_8h", 0.086, 151),
    ("o3_8h", 0.105, 200),
    ("o3_8h", 0.106, 201),
    ("o3_8h", 0.200, 300),
    ("o3_1h", 0.101, 101),
    ("o3_1h", 0.134, 150),
    ("o3_1h", 0.135, 151),
    ("o3_1h", 0.204, 200),
    ("o3_1h", 0.205, 201),
    ("o3_1h", 0.404, 300),
    ("o3_1h", 0.405, 301),
    ("o3_1h", 0.504, 400),
    ("o3_1h", 0.505, 401),
    ("o3_1h", 0.604, 500),
    ("co_8h", 0.0, 0),
    ("co_8h", 4.4, 50),
    ("co_8h", 4.5, 51),
    ("co_8h", 9.4, 100),
    ("co_8h", 9.5, 101),
    ("co_8h", 12.4, 150),
    ("co_8h", 12.5, 151),
    ("co_8h", 15.4, 200),
    ("co_8h", 15.5, 201),
    ("co_8h", 30.4, 300),
    ("co_8h", 30.5, 301),
    ("co_8h", 40.4, 400),
    ("co_8h", 40.5, 401),
    ("co_8h", 50.4, 500),
    ("so2_1h", 0, 0),
    ("so2_1h", 8, 50),
    ("so2_1h", 9, 51),
    ("so2_1h", 65, 100),
    ("so2_1h", 66, 101),
    ("so2_1h", 160, 150),
    ("so2_1h", 161, 151),
    ("so2_1h", 304, 200),
    ("so2_24h", 305, 201),
    ("so2_24h", 604, 300),
    ("so2_24h", 605, 301),
    ("so2_24h", 804, 400),
    ("so2_24h", 805, 401),
    ("so2_24h", 1004, 500),
    ("no2_1h", 0, 0),
    ("no2_1h", 21, 50),
    ("no2_1h", 22, 51),
    ("no2_1h", 100, 100),
    ("no2_1h", 101, 101),
    ("no2_1h", 360, 150),
    ("no2_1h", 361, 151),
    ("no2_1h", 649, 200),
    ("no2_1h", 650, 201),
    ("no2_1h", 1249, 300),
    ("no2_1h", 1250, 301),
    ("no2_1h", 1649, 400),
    ("no2_1h", 1650, 401),
    ("no2_1h", 2049, 500),
]


@pytest.mark.parametrize(("pollutant", "concentration", "expected"), EDGES)
def test_band_edges(pollutant: Pollutant, concentration: float, expected: int) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        # (49 / 17.9) * 7.5 + 51 = 71.53
        ("pm2_5", 20.0, 72),
        # (49 / 44) * 19 + 51 = 72.16
        ("pm10", 50, 72),
        # (49 / 0.015) * 0.005 + 51 = 67.33
        ("o3_8h", 0.060, 67),
        # (49 / 0.069) * 0.015 + 151 = 161.65
        ("o3_1h", 0.150, 162),
        # (99 / 299) * 95 + 201 = 232.45
        ("so2_24h", 400, 232),
    ],
)
def test_interpolation_inside_a_band(
    pollutant: Pollutant, concentration: float, expected: int
) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        # MOENV rounds half up: PM2.5 to 0.1 ug/m3, PM10 to 1 ug/m3.
        ("pm2_5", 12.45, 51),
        ("pm2_5", 12.449, 50),
        ("pm2_5", 30.44, 100),
        ("pm2_5", 30.45, 101),
        ("pm10", 30.4, 50),
        ("pm10", 30.5, 51),
        ("pm10", 75.49, 100),
        ("pm10", 75.5, 101),
        ("o3_8h", 0.0544, 50),
        ("o3_8h", 0.0545, 51),
        ("co_8h", 4.45, 51),
        ("no2_1h", 21.5, 51),
    ],
)
def test_rounding_to_table_resolution(
    pollutant: Pollutant, concentration: float, expected: int
) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("concentration", "expected"),
    [
        (0.0, 0),
        (9.0, 50),
        (9.05, 50),
        (9.1, 51),
        (35.4, 100),
        (35.49, 100),
        (35.5, 101),
        (55.4, 150),
        (55.5, 151),
        (125.4, 200),
        (125.5, 201),
        (225.4, 300),
        (225.5, 301),
        (325.4, 500),
        (400.0, 500),
    ],
)
def test_us_epa_2024_pm2_5_truncates(concentration: float, expected: int) -> None:
    assert sub_index("pm2_5", concentration, table=PM2_5_US_EPA_2024) == expected


@pytest.mark.parametrize(
    ("concentration", "expected"),
    [
        (0.0, 0),
        (15.4, 50),
        (15.5, 51),
        (35.4, 100),
        (35.5, 101),
        (54.4, 150),
        (54.5, 151),
        (150.4, 200),
        (150.5, 201),
        (250.4, 300),
        (250.5, 301),
        (350.4, 400),
        (350.5, 401),
        (500.4, 500),
    ],
)
def test_pre_2025_pm2_5_table(concentration: float, expected: int) -> None:
    assert sub_index("pm2_5", concentration, table=PM2_5_MOENV_PRE2025) == expected


@pytest.mark.parametrize(
    ("pollutant", "concentration", "expected"),
    [
        ("pm2_5", -0.1, None),
        ("pm2_5", math.nan, None),
        ("pm2_5", math.inf, None),
        ("o3_1h", 0.100, None),  # the 1-hour O3 table starts at AQI 101
        ("so2_24h", 304, None),  # the 24-hour SO2 table starts at AQI 201
        ("pm2_5", 500.5, 500),  # above the top band: capped
        ("pm10", 1000, 500),
        ("o3_8h", 0.201, 300),  # the 8-hour O3 table stops at 300
        ("so2_1h", 305, 200),  # the 1-hour SO2 table stops at 200
    ],
)
def test_values_outside_the_tables(
    pollutant: Pollutant, concentration: float, expected: int | None
) -> None:
    assert sub_index(pollutant, concentration) == expected


@pytest.mark.parametrize(
    ("aqi", "name_en", "name_zh", "colour"),
    [
        (0, "Good", "良好", "green"),
        (50, "Good", "良好", "green"),
        (51, "Moderate", "普通", "yellow"),
        (100, "Moderate", "普通", "yellow"),
        (101, "Unhealthy for Sensitive Groups", "對敏感族群不健康", "orange"),
        (150, "Unhealthy for Sensitive Groups", "對敏感族群不健康", "orange"),
        (151, "Unhealthy", "對所有族群不健康", "red"),
        (200, "Unhealthy", "對所有族群不健康", "red"),
        (201, "Very Unhealthy", "非常不健康", "purple"),
        (300, "Very Unhealthy", "非常不健康", "purple"),
        (301, "Hazardous", "危害", "maroon"),
        (500, "Hazardous", "危害", "maroon"),
    ],
)
def test_categories(aqi: int, name_en: str, name_zh: str, colour: str) -> None:
    cat = category(aqi)
    assert (cat.name_en, cat.name_zh, cat.colour) == (name_en, name_zh, colour)


def test_aqi_is_the_highest_sub_index() -> None:
    result = compute_aqi({"pm2_5": 35.0, "pm10": 50, "no2_1h": 30, "temperature_c": 40})
    assert result is not None
    assert result.aqi == 112  # PM2.5 35.0: (49 / 19.9) * 4.5 + 101 = 112.08
    assert result.leading_pollutant == "pm2_5"
    assert set(result.sub_indices) == {"pm2_5", "pm10", "no2_1h"}
    assert result.category.name_en == "Unhealthy for Sensitive Groups"
    assert result.remarks == ()


def test_no_usable_concentration_gives_none() -> None:
    assert compute_aqi({}) is None
    assert compute_aqi({"pm2_5": -1.0, "o3_1h": 0.05}) is None


def test_tie_goes_to_the_first_pollutant_in_order() -> None:
    result = compute_aqi({"no2_1h": 21, "pm10": 30, "pm2_5": 12.4})
    assert result is not None
    assert result.aqi == 50
    assert result.leading_pollutant == "pm2_5"


def test_above_the_top_band_is_capped_at_500_and_said() -> None:
    result = compute_aqi({"pm2_5": 612.0})
    assert result is not None
    assert result.aqi == 500
    assert result.category.name_en == "Hazardous"
    assert "above_table:pm2_5" in result.remarks


def test_o3_1h_used_when_higher() -> None:
    result = compute_aqi({"o3_8h": 0.060, "o3_1h": 0.150})
    assert result is not None
    assert result.aqi == 162
    assert result.leading_pollutant == "o3_1h"
    assert REMARK_O3_1H_USED in result.remarks


def test_o3_8h_wins_when_1h_lower() -> None:
    result = compute_aqi({"o3_8h": 0.090, "o3_1h": 0.102})
    assert result is not None
    assert result.leading_pollutant == "o3_8h"
    assert REMARK_O3_1H_USED not in result.remarks


def test_o3_above_8h_table_is_decided_by_1h() -> None:
    # 8 h above 0.200 ppm counts as 300; 1 h 0.450: (99 / 0.099) * 0.045 + 301 = 346
    result = compute_aqi({"o3_8h": 0.25, "o3_1h": 0.450})
    assert result is not None
    assert result.aqi == 346
    assert result.leading_pollutant == "o3_1h"
    assert "above_table:o3_8h" in result.remarks


def test_so2_1h_is_capped_at_200_without_a_24h_value() -> None:
    result = compute_aqi({"so2_1h": 400})
    assert result is not None
    assert result.aqi == 200
    assert REMARK_SO2_1H_CAPPED in result.remarks


def test_so2_24h_decides_above_200() -> None:
    result = compute_aqi({"so2_1h": 400, "so2_24h": 400})
    assert result is not None
    assert result.aqi == 232
    assert result.leading_pollutant == "so2_24h"
    assert REMARK_SO2_24H_USED in result.remarks
    assert REMARK_SO2_1H_CAPPED not in result.remarks


def test_low_so2_24h_is_ignored() -> None:
    result = compute_aqi({"so2_1h": 100, "so2_24h": 100})
    assert result is not None
    assert set(result.sub_indices) == {"so2_1h"}
    assert REMARK_SO2_24H_USED not in result.remarks


def test_tables_can_be_swapped() -> None:
    tables = AqiTables().with_table("pm2_5", PM2_5_MOENV_PRE2025)
    result = compute_aqi({"pm2_5": 15.4}, tables)
    assert result is not None
    assert result.aqi == 50
    default = compute_aqi({"pm2_5": 15.4})
    assert default is not None
    assert default.aqi == 59  # (49 / 17.9) * 2.9 + 51 = 58.94
