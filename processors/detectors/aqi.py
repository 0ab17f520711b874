"""Taiwan Air Quality Index (MOENV), breakpoints in force since 2025-01-01.

The AQI is the highest pollutant sub-index; that pollutant is the leading pollutant. A
sub-index is the linear interpolation inside the concentration's band::

    I = (I_hi - I_lo) / (C_hi - C_lo) * (C - C_lo) + I_lo

Concentration keys and units accepted by :func:`compute_aqi` and :func:`sub_index`:

==========  ==========  ==============================================================
key         unit        averaging expected from the caller
==========  ==========  ==============================================================
``pm2_5``   ug/m3       0.5 * mean 12 h + 0.5 * mean 4 h (see :mod:`.air`)
``pm10``    ug/m3       same formula as PM2.5
``o3_8h``   ppm         8-hour moving average
``o3_1h``   ppm         hourly value
``co_8h``   ppm         8-hour moving average
``so2_1h``  ppb         hourly value
``so2_24h`` ppb         24-hour average (only used for SO2 sub-indices above 200)
``no2_1h``  ppb         hourly value
==========  ==========  ==============================================================

Rules implemented (see :func:`compute_aqi` for the remarks it reports):

* Before interpolation a concentration is brought to its table's resolution: MOENV
  *rounds* (PM2.5 to 0.1 ug/m3, PM10 to 1 ug/m3; the same half-up rounding is applied to
  O3 at 0.001 ppm, CO at 0.1 ppm, SO2 and NO2 at 1 ppb), US EPA *truncates*. The
  sub-index is then rounded half up to an integer.
* O3: the 8-hour table stops at AQI 300 (0.200 ppm). The 1-hour value (bands from AQI 101)
  is used when it gives the higher index, and is what decides above 300.
* SO2: the 1-hour value decides up to 200; above 200 MOENV uses the 24-hour value.
* Above a table's top band the sub-index is capped at the table's top (500; 300 for O3
  8 h) and a remark says so.
* Negative or non-finite concentrations have no sub-index (the health detector reports
  them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Literal

from civic_iot.thresholds import Pm25Breakpoints
from processors.detectors.state import frozen

Pollutant = Literal["pm2_5", "pm10", "o3_8h", "o3_1h", "co_8h", "so2_1h", "so2_24h", "no2_1h"]

#: Order used to break ties for the leading pollutant (first wins).
POLLUTANTS: tuple[Pollutant, ...] = (
    "pm2_5",
    "pm10",
    "o3_8h",
    "o3_1h",
    "co_8h",
    "so2_1h",
    "so2_24h",
    "no2_1h",
)

#: Unit of each concentration key, as written in field names.
UNITS: Mapping[Pollutant, str] = {
    "pm2_5": "ugm3",
    "pm10": "ugm3",
    "o3_8h": "ppm",
    "o3_1h": "ppm",
    "co_8h": "ppm",
    "so2_1h": "ppb",
    "so2_24h": "ppb",
    "no2_1h": "ppb",
}


@dataclass(frozen=True, slots=True)
class Band:
    """One AQI band: concentrations ``c_lo..c_hi`` map linearly onto ``i_lo..i_hi``."""

    c_lo: float
    c_hi: float
    i_lo: int
    i_hi: int


@dataclass(frozen=True, slots=True)
class BreakpointTable:
    """The bands of one pollutant, lowest first, and how concentrations are quantised.

    ``decimals`` is the resolution of the table (1 for 12.4 ug/m3, 3 for 0.054 ppm);
    ``rounding`` is ``"half_up"`` (MOENV) or ``"truncate"`` (US EPA).
    """

    name: str
    unit: str
    bands: tuple[Band, ...]
    decimals: int
    rounding: Literal["half_up", "truncate"] = "half_up"
    #: Each band's (c_lo, c_hi) as exact decimals, the quantum and the rounding mode:
    #: made once, used for every value.
    _edges: tuple[tuple[Decimal, Decimal], ...] = field(init=False, repr=False, compare=False)
    _quantum: Decimal = field(init=False, repr=False, compare=False)
    _mode: str = field(init=False, repr=False, compare=False)
    #: Concentration as given -> (sub-index, above the top band), or None: most values
    #: come again (quantised averages, the same hour's means), and each is quantised and
    #: worked out once (a Decimal costs more than the interpolation).
    _memo: dict[float, tuple[int, bool] | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        edges = tuple((Decimal(repr(b.c_lo)), Decimal(repr(b.c_hi))) for b in self.bands)
        object.__setattr__(self, "_edges", edges)
        object.__setattr__(self, "_quantum", Decimal(1).scaleb(-self.decimals))
        mode = ROUND_HALF_UP if self.rounding == "half_up" else ROUND_DOWN
        object.__setattr__(self, "_mode", mode)

    @property
    def top(self) -> Band:
        return self.bands[-1]

    def quantise(self, concentration: float) -> Decimal:
        """The concentration at the table's resolution (exact decimal arithmetic)."""
        return Decimal(repr(concentration)).quantize(self._quantum, self._mode)


def _table(
    name: str,
    unit: str,
    decimals: int,
    rows: list[tuple[float, float, int, int]],
    rounding: Literal["half_up", "truncate"] = "half_up",
) -> BreakpointTable:
    return BreakpointTable(name, unit, tuple(Band(*r) for r in rows), decimals, rounding)


# Source for the MOENV tables: MOENV AQI page (airtw.moenv.gov.tw), Air Quality Standards
# amendment of 2024-09-30 (in force 2025-01-01), Taichung EPB AQI table; via domain.md.
PM2_5_MOENV_2025 = _table(
    "PM2.5 MOENV 2025",
    "ug/m3",
    1,
    [
        (0.0, 12.4, 0, 50),
        (12.5, 30.4, 51, 100),
        (30.5, 50.4, 101, 150),
        (50.5, 125.4, 151, 200),
        (125.5, 225.4, 201, 300),
        (225.5, 325.4, 301, 400),
        (325.5, 500.4, 401, 500),
    ],
)
PM10_MOENV_2025 = _table(
    "PM10 MOENV 2025",
    "ug/m3",
    0,
    [
        (0, 30, 0, 50),
        (31, 75, 51, 100),
        (76, 190, 101, 150),
        (191, 354, 151, 200),
        (355, 424, 201, 300),
        (425, 504, 301, 400),
        (505, 604, 401, 500),
    ],
)
O3_8H_MOENV_2025 = _table(
    "O3 8h MOENV 2025",
    "ppm",
    3,
    [
        (0.000, 0.054, 0, 50),
        (0.055, 0.070, 51, 100),
        (0.071, 0.085, 101, 150),
        (0.086, 0.105, 151, 200),
        (0.106, 0.200, 201, 300),
    ],
)
O3_1H_MOENV_2025 = _table(
    "O3 1h MOENV 2025",
    "ppm",
    3,
    [
        (0.101, 0.134, 101, 150),
        (0.135, 0.204, 151, 200),
        (0.205, 0.404, 201, 300),
        (0.405, 0.504, 301, 400),
        (0.505, 0.604, 401, 500),
    ],
)
# CO, SO2 and NO2: from a secondary copy of the ministry's table (*unconfirmed*); the split
# of their top two bands follows the US EPA pattern (*unconfirmed*). Source: domain.md.
CO_8H_MOENV_2025 = _table(
    "CO 8h MOENV 2025 (unconfirmed)",
    "ppm",
    1,
    [
        (0.0, 4.4, 0, 50),
        (4.5, 9.4, 51, 100),
        (9.5, 12.4, 101, 150),
        (12.5, 15.4, 151, 200),
        (15.5, 30.4, 201, 300),
        (30.5, 40.4, 301, 400),
        (40.5, 50.4, 401, 500),
    ],
)
# SO2: the 1-hour value is used up to AQI 200 and the 24-hour value above (MOENV note);
# the two tables share the row of domain.md, split at 200.
SO2_1H_MOENV_2025 = _table(
    "SO2 1h MOENV 2025 (unconfirmed)",
    "ppb",
    0,
    [(0, 8, 0, 50), (9, 65, 51, 100), (66, 160, 101, 150), (161, 304, 151, 200)],
)
SO2_24H_MOENV_2025 = _table(
    "SO2 24h MOENV 2025 (unconfirmed)",
    "ppb",
    0,
    [(305, 604, 201, 300), (605, 804, 301, 400), (805, 1004, 401, 500)],
)
NO2_1H_MOENV_2025 = _table(
    "NO2 1h MOENV 2025 (unconfirmed)",
    "ppb",
    0,
    [
        (0, 21, 0, 50),
        (22, 100, 51, 100),
        (101, 360, 101, 150),
        (361, 649, 151, 200),
        (650, 1249, 201, 300),
        (1250, 1649, 301, 400),
        (1650, 2049, 401, 500),
    ],
)

# Named alternatives for PM2.5 (historical data and comparison).
# MOENV bands in force until 2024-12-31 (source: domain.md, MOENV AQI page).
PM2_5_MOENV_PRE2025 = _table(
    "PM2.5 MOENV pre-2025",
    "ug/m3",
    1,
    [
        (0.0, 15.4, 0, 50),
        (15.5, 35.4, 51, 100),
        (35.5, 54.4, 101, 150),
        (54.5, 150.4, 151, 200),
        (150.5, 250.4, 201, 300),
        (250.5, 350.4, 301, 400),
        (350.5, 500.4, 401, 500),
    ],
)
# US EPA 2024 (EPA-454/B-24-002): concentrations truncated, and one band 225.5-325.4 for
# AQI 301-500 (domain.md lists it as ">= 225.5"; the upper end is the EPA table's).
PM2_5_US_EPA_2024 = _table(
    "PM2.5 US EPA 2024",
    "ug/m3",
    1,
    [
        (0.0, 9.0, 0, 50),
        (9.1, 35.4, 51, 100),
        (35.5, 55.4, 101, 150),
        (55.5, 125.4, 151, 200),
        (125.5, 225.4, 201, 300),
        (225.5, 325.4, 301, 500),
    ],
    rounding="truncate",
)


#: The PM2.5 tables the thresholds file names (``air_quality.pm2_5_ugm3_breakpoints``).
PM2_5_TABLES: Mapping[str, BreakpointTable] = {
    "moenv_2025": PM2_5_MOENV_2025,
    "moenv_pre2025": PM2_5_MOENV_PRE2025,
    "us_epa_2024": PM2_5_US_EPA_2024,
}


def pm2_5_table(breakpoints: Pm25Breakpoints) -> BreakpointTable:
    """The PM2.5 table the thresholds file asks for: a name of :data:`PM2_5_TABLES`, or
    custom bands (ug/m3 from, to, AQI from, to) at MOENV's 0.1 ug/m3, rounded half up."""
    if isinstance(breakpoints, str):
        return PM2_5_TABLES[breakpoints]
    rows = [
        (float(c_lo), float(c_hi), int(i_lo), int(i_hi)) for c_lo, c_hi, i_lo, i_hi in breakpoints
    ]
    return _table("PM2.5 custom (thresholds file)", "ug/m3", 1, rows)


@dataclass(frozen=True, slots=True)
class AqiTables:
    """The breakpoint table of every pollutant; MOENV 2025 by default.

    Swap a table for historical data, e.g.
    ``AqiTables().with_table("pm2_5", PM2_5_MOENV_PRE2025)``.
    """

    pm2_5: BreakpointTable = PM2_5_MOENV_2025
    pm10: BreakpointTable = PM10_MOENV_2025
    o3_8h: BreakpointTable = O3_8H_MOENV_2025
    o3_1h: BreakpointTable = O3_1H_MOENV_2025
    co_8h: BreakpointTable = CO_8H_MOENV_2025
    so2_1h: BreakpointTable = SO2_1H_MOENV_2025
    so2_24h: BreakpointTable = SO2_24H_MOENV_2025
    no2_1h: BreakpointTable = NO2_1H_MOENV_2025

    def get(self, pollutant: Pollutant) -> BreakpointTable:
        table: BreakpointTable = getattr(self, pollutant)
        return table

    def with_table(self, pollutant: Pollutant, table: BreakpointTable) -> AqiTables:
        return replace(self, **{pollutant: table})


MOENV_2025 = AqiTables()


@dataclass(frozen=True, slots=True)
class AqiCategory:
    """One AQI category (MOENV): index range, English and Chinese name, colour."""

    low: int
    high: int
    name_en: str
    name_zh: str
    colour: str


# Source: MOENV AQI page via domain.md.
CATEGORIES: tuple[AqiCategory, ...] = (
    AqiCategory(0, 50, "Good", "良好", "green"),
    AqiCategory(51, 100, "Moderate", "普通", "yellow"),
    AqiCategory(101, 150, "Unhealthy for Sensitive Groups", "對敏感族群不健康", "orange"),
    AqiCategory(151, 200, "Unhealthy", "對所有族群不健康", "red"),
    AqiCategory(201, 300, "Very Unhealthy", "非常不健康", "purple"),
    AqiCategory(301, 500, "Hazardous", "危害", "maroon"),
)


def category(aqi: int) -> AqiCategory:
    """The category of an AQI value (0..500; values beyond are treated as 500)."""
    for cat in CATEGORIES:
        if aqi <= cat.high:
            return cat
    return CATEGORIES[-1]


# Remarks reported by compute_aqi.
REMARK_ABOVE_TABLE = "above_table"  # "above_table:<key>": capped at the table's top index
REMARK_O3_1H_USED = "o3_1h_used"  # the 1-hour O3 value gave the higher O3 index
REMARK_SO2_24H_USED = "so2_24h_used"  # SO2 above 200 decided by the 24-hour value
REMARK_SO2_1H_CAPPED = "so2_1h_capped_at_200"  # 1 h SO2 >= 305 ppb without a 24 h value


#: Quantised values a table remembers at most (its memo is emptied beyond).
_MEMO_KEPT = 50_000


def _interpolate(table: BreakpointTable, concentration: float) -> tuple[int, bool] | None:
    """(sub-index, above the top band) or None when the table has no band for it."""
    memo = table._memo
    found = memo.get(concentration, _UNKNOWN)
    if found is not _UNKNOWN:
        return found  # type: ignore[return-value]
    if not math.isfinite(concentration) or concentration < 0:
        return None  # not kept: NaN is no key
    if len(memo) >= _MEMO_KEPT:
        memo.clear()
    memo[concentration] = found = _band_index(table, table.quantise(concentration))
    return found


_UNKNOWN = object()


def _band_index(table: BreakpointTable, c: Decimal) -> tuple[int, bool] | None:
    """:func:`_interpolate` of a quantised concentration."""
    edges = table._edges
    if c < edges[0][0]:
        return None  # below the first band (O3 1 h under 0.101 ppm)
    if c > edges[-1][1]:
        return table.top.i_hi, True
    for band, (c_lo, c_hi) in zip(table.bands, edges, strict=True):
        if c <= c_hi:
            # A value between two bands (only with a custom table of a coarser
            # resolution) takes the lower edge of the next band.
            c = max(c, c_lo)
            index = Decimal(band.i_hi - band.i_lo) / (c_hi - c_lo) * (c - c_lo) + band.i_lo
            return int(index.quantize(Decimal(1), ROUND_HALF_UP)), False
    return None  # unreachable: c <= top.c_hi was checked above


def sub_index(
    pollutant: Pollutant, concentration: float, table: BreakpointTable | None = None
) -> int | None:
    """The sub-index of one concentration (unit per the module table), 0..500.

    ``table`` overrides the MOENV 2025 table of ``pollutant``. ``None`` when the table
    has no band for the value (negative, non-finite, O3 1 h below 0.101 ppm). Above the
    top band the table's top index is returned (500, or 300 for O3 8 h).
    """
    result = _interpolate(table or MOENV_2025.get(pollutant), concentration)
    return None if result is None else result[0]


@frozen
class AqiResult:
    """An AQI value with its leading pollutant, sub-indices, category and remarks.

    ``leading_pollutant`` always names the highest sub-index (MOENV publishes it only
    when the AQI is above 50; that presentation choice is left to the caller).
    """

    aqi: int
    leading_pollutant: Pollutant
    sub_indices: Mapping[Pollutant, int]
    category: AqiCategory
    remarks: tuple[str, ...] = field(default=())


def compute_aqi(
    concentrations: Mapping[Pollutant, float] | Mapping[str, float],
    tables: AqiTables = MOENV_2025,
) -> AqiResult | None:
    """The AQI from averaged concentrations (keys and units in the module table).

    Unknown keys are ignored. Returns ``None`` when no concentration gives a sub-index.

    O3: the index is the higher of the 8 h and 1 h sub-indices (the 1 h table starts at
    101); an 8 h value above 0.200 ppm counts as 300 and the 1 h value decides above that
    (remark ``above_table:o3_8h``). SO2: the 1 h sub-index is capped at 200; a 24 h value
    of 305 ppb or more gives the index above 200 (remark ``so2_24h_used``); a 1 h value
    of 305 ppb or more without a 24 h value stays at 200 (remark ``so2_1h_capped_at_200``).
    """
    subs: dict[Pollutant, int] = {}
    remarks: list[str] = []
    for key in POLLUTANTS:
        if key not in concentrations:
            continue
        result = _interpolate(tables.get(key), concentrations[key])
        if result is None:
            continue
        index, above = result
        if key == "so2_24h" and index <= 200:
            continue  # the 24-hour SO2 value only speaks above 200
        subs[key] = index
        if above and key != "so2_1h":
            remarks.append(f"{REMARK_ABOVE_TABLE}:{key}")
    if "so2_1h" in subs and "so2_24h" not in subs:
        so2_top = tables.so2_1h.top.c_hi
        if concentrations["so2_1h"] > so2_top:
            remarks.append(REMARK_SO2_1H_CAPPED)
    if not subs:
        return None
    if "o3_1h" in subs and subs["o3_1h"] > subs.get("o3_8h", -1):
        remarks.append(REMARK_O3_1H_USED)
    if "so2_24h" in subs:
        remarks.append(REMARK_SO2_24H_USED)
    leading = max(subs, key=lambda k: (subs[k], -POLLUTANTS.index(k)))
    aqi = subs[leading]
    return AqiResult(
        aqi=aqi,
        leading_pollutant=leading,
        sub_indices=subs,
        category=category(aqi),
        remarks=tuple(remarks),
    )
