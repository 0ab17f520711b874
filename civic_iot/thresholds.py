"""Every detector threshold in one validated file: defaults, regions and devices.

``deploy/thresholds.yaml`` (``CIVIC_THRESHOLDS``) holds the lines the detectors judge
readings against, in three layers, each later one overriding the earlier::

    defaults:            # every threshold, one section per detector (the models below)
      air_quality: {aqi_levels: [101, 151, 201], ...}
      debris_flow: {r70_mm: null, ...}
      seismic: {sta_s: 0.5, lta_s: 10.0, trigger_ratio: 3.0, ...}
    regions:             # by county (registry ``county``) or township code
      "Taipei City": {flood: {flood_depth_cm_levels: [15, 30, 50]}}
      "63000080": {debris_flow: {r70_mm: 450}}
    devices:             # by device id
      river-0001: {river: {water_level_m_yellow: 9.1, ...}}

A device is judged against ``defaults``, then its county's entry, then its township's,
then its own. Names carry their unit (``flood_depth_cm_levels``, ``r70_mm``, ``sta_s``)
and quantities keep the names they have from payload to alert (``rainfall_mm_1h`` is the
1-hour accumulation of the payload's ``rainfall_mm``). The network-wide sections
(``quake``, ``silence``) exist in ``defaults`` only.

Every value is written once, here, as the default of its model field with its source
(``domain.md``, an agency, or "local choice"); the file restates or overrides them. The
loader refuses an unknown name, a value out of range, a ladder that does not increase,
an R50 above R70, a region or device the registry lacks, with the file, the path in it
and what was expected. The detectors' configs are built from the resolved models in one
place (``processors.handlers.Context.build``).

Kept in settings instead (``civic_iot.settings``): how the processes run (intervals,
batch sizes, ports, timeouts). A value belongs here when changing it changes which
readings raise an alert or a health finding.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from civic_iot.contracts.alerts import IntensityLevel
from civic_iot.registry import Registry

__all__ = [
    "OVERRIDABLE",
    "AirQualityThresholds",
    "DebrisFlowThresholds",
    "FloodThresholds",
    "HealthRule",
    "HealthThresholds",
    "Pm25Breakpoints",
    "QuakeThresholds",
    "RainCriteria",
    "RainThresholds",
    "RiverThresholds",
    "SilenceThresholds",
    "StaLtaThresholds",
    "ThresholdSet",
    "Thresholds",
    "ThresholdsError",
    "load_thresholds",
    "thresholds_from",
]

logger = logging.getLogger(__name__)


def _level_text(v: object) -> object:
    """A CWA intensity level written as a bare number in YAML (``3``) is its text."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ThresholdsError(ValueError):
    """The thresholds file is unreadable or holds something wrong; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _three(v: object) -> object:
    if isinstance(v, list | tuple) and len(v) != 3:
        msg = f"expected 3 lines, for alert levels 1, 2 and 3; got {len(v)}: {list(v)}"
        raise ValueError(msg)
    return v


def _increasing(values: Sequence[float | None], what: str) -> None:
    present = [v for v in values if v is not None]
    if any(b <= a for a, b in itertools.pairwise(present)):
        msg = f"{what} must increase strictly from level to level, got {list(values)}".lstrip()
        raise ValueError(msg)


# --- air quality ---------------------------------------------------------------------------

#: The PM2.5 AQI breakpoint tables kept with their sources in
#: ``processors/detectors/aqi.py``, by the name the file uses.
Pm25TableName = Literal["moenv_2025", "moenv_pre2025", "us_epa_2024"]
PM2_5_TABLE_NAMES: tuple[str, ...] = get_args(Pm25TableName)
#: One band of a custom PM2.5 table: ug/m3 from, ug/m3 to, AQI from, AQI to.
Pm25Band = tuple[
    Annotated[float, Field(ge=0)],
    Annotated[float, Field(ge=0)],
    Annotated[int, Field(ge=0, le=500)],
    Annotated[int, Field(ge=0, le=500)],
]
Pm25Breakpoints = Pm25TableName | tuple[Pm25Band, ...]


class AirQualityThresholds(_Strict):
    """Air quality: the alert ladder on the AQI, and the PM2.5 breakpoints.

    Levels 1/2/3 start at the first index of the MOENV orange, red and purple categories
    (101, 151, 201; categories from domain.md, the choice of categories is local). A level
    is left only below its line minus ``aqi_clear_margin`` (local choice).
    ``pm2_5_ugm3_breakpoints`` names a table (``moenv_2025``: MOENV, in force since
    2025-01-01; ``moenv_pre2025``: the bands until 2024-12-31; ``us_epa_2024``) or gives
    custom bands ``[ug/m3 from, ug/m3 to, AQI from, AQI to]`` at 0.1 ug/m3, rounded half
    up as MOENV does.
    """

    aqi_levels: tuple[
        Annotated[float, Field(gt=0, le=500)],
        Annotated[float, Field(gt=0, le=500)],
        Annotated[float, Field(gt=0, le=500)],
    ] = (101, 151, 201)
    aqi_clear_margin: float = Field(default=10, ge=0, le=100)
    pm2_5_ugm3_breakpoints: Pm25Breakpoints = "moenv_2025"

    _levels = field_validator("aqi_levels", mode="before")(_three)

    @field_validator("aqi_levels")
    @classmethod
    def _ladder(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        _increasing(v, "")
        return v

    @field_validator("pm2_5_ugm3_breakpoints")
    @classmethod
    def _bands(cls, bands: Pm25Breakpoints) -> Pm25Breakpoints:
        if isinstance(bands, tuple):
            if not bands:
                msg = "a custom table needs at least one band"
                raise ValueError(msg)
            for c_lo, c_hi, i_lo, i_hi in bands:
                if c_hi <= c_lo or i_hi <= i_lo:
                    msg = (
                        f"band {[c_lo, c_hi, i_lo, i_hi]} must go "
                        "from a lower to a higher concentration and index"
                    )
                    raise ValueError(msg)
            for a, b in itertools.pairwise(bands):
                if b[0] <= a[1] or b[2] <= a[3]:
                    msg = (
                        f"band {list(b)} must start above the band "
                        f"before it {list(a)} (concentrations and indices increase)"
                    )
                    raise ValueError(msg)
        return bands


# --- water -----------------------------------------------------------------------------------


class FloodThresholds(_Strict):
    """Street/underpass flood depth, cm, and its rate of rise.

    WRA counts >= 10 cm as a flooding record; the 10/30/50 cm ladder is a sensible
    default, no national value is confirmed (domain.md). Margin and rise line: local
    choices. The rise signal (its own alert, ``water_rise``) clears below
    ``rise_clear_fraction`` of its line.
    """

    flood_depth_cm_levels: tuple[
        Annotated[float, Field(gt=0, le=1000)],
        Annotated[float, Field(gt=0, le=1000)],
        Annotated[float, Field(gt=0, le=1000)],
    ] = (10, 30, 50)
    flood_depth_cm_clear_margin: float = Field(default=5, ge=0, le=100)
    rise_cm_per_10min: float = Field(default=10, gt=0, le=1000)
    rise_clear_fraction: float = Field(default=0.5, ge=0, lt=1)

    _levels = field_validator("flood_depth_cm_levels", mode="before")(_three)

    @field_validator("flood_depth_cm_levels")
    @classmethod
    def _ladder(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        _increasing(v, "")
        return v


RiverLevel = Annotated[float, Field(ge=-100, le=5000)]


class RiverThresholds(_Strict):
    """River stage warning levels, m (elevations, as the station measures the stage).

    WRA sets them per station (domain.md): yellow (WRA level 3, high floodplain reached
    within 2 h), orange (level 2, flood level within 5 h), red (level 1, within 2 h);
    they are alert levels 1, 2 and 3. No default: a station without lines never raises
    a level (its stage and rate of rise are still stored). A station may have only some
    of them. Margin and rise line: local choices.
    """

    water_level_m_yellow: RiverLevel | None = None
    water_level_m_orange: RiverLevel | None = None
    water_level_m_red: RiverLevel | None = None
    water_level_m_clear_margin: float = Field(default=0.10, ge=0, le=10)
    rise_cm_per_10min: float = Field(default=10, gt=0, le=1000)
    rise_clear_fraction: float = Field(default=0.5, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        _increasing(self.levels, "water_level_m_yellow < water_level_m_orange < water_level_m_red")
        return self

    @property
    def levels(self) -> tuple[float | None, float | None, float | None]:
        """Alert levels 1, 2, 3: yellow, orange, red (m)."""
        return (self.water_level_m_yellow, self.water_level_m_orange, self.water_level_m_red)

    def line(self, wra_level: Literal["l1", "l2", "l3"]) -> float | None:
        """The line of a WRA warning level: ``l3`` yellow, ``l2`` orange, ``l1`` red."""
        return {"l3": self.levels[0], "l2": self.levels[1], "l1": self.levels[2]}[wra_level]


RainMm = Annotated[float, Field(gt=0, le=5000)]


class RainCriteria(_Strict):
    """One CWA rain class: met when any of its accumulations (mm) is reached."""

    rainfall_mm_1h: RainMm | None = None
    rainfall_mm_3h: RainMm | None = None
    rainfall_mm_24h: RainMm | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not self.criteria:
            msg = "a rain class needs rainfall_mm_1h, rainfall_mm_3h or rainfall_mm_24h"
            raise ValueError(msg)
        return self

    @property
    def criteria(self) -> tuple[tuple[int, float], ...]:
        """(hours, mm) of every criterion set, longest window first."""
        hours = ((24, self.rainfall_mm_24h), (3, self.rainfall_mm_3h), (1, self.rainfall_mm_1h))
        return tuple((h, mm) for h, mm in hours if mm is not None)


class RainThresholds(_Strict):
    """CWA rain classes (revised 2015-09-01, domain.md), levels 1 to 4.

    The 3-hour criterion of torrential rain (200 mm / 3 h) is *unconfirmed*. A class is
    held until every criterion of it is below ``clear_fraction`` of its value (local
    choice: hysteresis as the 24 h window slides).
    """

    heavy_rain: RainCriteria = RainCriteria(rainfall_mm_1h=40, rainfall_mm_24h=80)
    extremely_heavy_rain: RainCriteria = RainCriteria(rainfall_mm_3h=100, rainfall_mm_24h=200)
    torrential_rain: RainCriteria = RainCriteria(rainfall_mm_3h=200, rainfall_mm_24h=350)
    extremely_torrential_rain: RainCriteria = RainCriteria(rainfall_mm_24h=500)
    clear_fraction: float = Field(default=0.9, gt=0, le=1)

    @property
    def classes(self) -> tuple[RainCriteria, RainCriteria, RainCriteria, RainCriteria]:
        """Levels 1 to 4."""
        return (
            self.heavy_rain,
            self.extremely_heavy_rain,
            self.torrential_rain,
            self.extremely_torrential_rain,
        )

    @model_validator(mode="after")
    def _check(self) -> Self:
        for window in ("rainfall_mm_1h", "rainfall_mm_3h", "rainfall_mm_24h"):
            _increasing([getattr(c, window) for c in self.classes], f"rain classes' {window}")
        return self


class DebrisFlowThresholds(_Strict):
    """Debris flow: the rainfall triggering index (RTI) rule and the township thresholds.

    Source: Agency of Rural Development and Soil and Water Conservation via domain.md.
    ``r70_mm``: the township's R70 (rain accumulated at I = 10 mm/h, in 50 mm steps);
    none by default, so no level without a region's value. Red (level 2) when the
    observed rain reaches it; yellow officially needs a rain forecast above it, which
    this platform does not have, so yellow is raised at ``yellow_fraction`` of it (local
    choice). ``compare``: the event's rain (``event``) or the effective rain including the
    discounted antecedent rain (``effective``).

    RTI = I x Rt, Rt = event rain + sum over d = 1..``antecedent_days`` of
    ``antecedent_discount ** d`` x the d-th local day's rain before (discount *unconfirmed*,
    0.7 is common in the literature). An event starts when ``rainfall_mm_1h`` reaches
    ``event_start_rainfall_mm_1h`` and ends after ``event_end_dry_h`` hours below it
    (*unconfirmed*: a common convention, 4 mm/h and 6 h).

    After shaking of CWA intensity ``shaking_min_intensity`` or above (domain.md:
    "after intensity >= 5 shaking the threshold drops (R50)") the lower R50 applies for
    ``r50_days`` from the earthquake's origin (30 days: local choice, no agency figure
    confirmed): ``r50_mm`` when given, else ``r50_below_r70_mm`` below R70 (one 50 mm
    step: local choice, *unconfirmed*). ``use_r50`` applies R50 everywhere, always.
    """

    r70_mm: float | None = Field(default=None, gt=0, le=5000)
    r50_mm: float | None = Field(default=None, gt=0, le=5000)
    r50_below_r70_mm: float = Field(default=50, ge=0, le=5000)
    yellow_fraction: float = Field(default=0.8, gt=0, le=1)
    compare: Literal["event", "effective"] = "event"
    event_start_rainfall_mm_1h: float = Field(default=4, gt=0, le=500)
    event_end_dry_h: float = Field(default=6, gt=0, le=240)
    antecedent_discount: float = Field(default=0.7, gt=0, le=1)
    antecedent_days: int = Field(default=7, ge=0, le=30)
    shaking_min_intensity: IntensityLevel = "5-"
    _intensity = field_validator("shaking_min_intensity", mode="before")(_level_text)
    r50_days: float = Field(default=30, gt=0, le=3650)
    use_r50: bool = False

    @model_validator(mode="after")
    def _r50_not_above_r70(self) -> Self:
        if self.r50_mm is not None and self.r70_mm is not None and self.r50_mm > self.r70_mm:
            msg = (
                f"r50_mm {self.r50_mm:g} is above r70_mm {self.r70_mm:g}; expected R50 <= R70 "
                "(the threshold after strong shaking is the lower one)"
            )
            raise ValueError(msg)
        return self


# --- earthquake ------------------------------------------------------------------------------


class StaLtaThresholds(_Strict):
    """Per-station STA/LTA trigger (domain.md "Early-warning practice").

    STA 0.5-1 s, LTA 10-11 s (also the warm-up), trigger ratio 3-3.5, detrigger about 1
    (ObsPy tutorial, OpenEEW); 2.5 here (the LTA is unbiased after the warm-up and a weak
    P at 50-120 km stands 2-3 times over the noise: docs/eew.md). The characteristic
    function is the acceleration in ``cf_band_hz`` (local choice: 1-10 Hz holds the P
    wave of local and regional quakes and drops most of a MEMS sensor's white noise), on
    the vertical component when ``cf_vertical_only`` (P is strongest there, S weakest).

    The LTA is frozen while a window is open. A window whose STA has faded to
    ``transient_fraction`` of its peak within ``transient_max_s`` of the trigger was a
    transient (a spike, a door; a quake's P is followed by more P and the S wave): the
    station is armed again at once, its LTA kept frozen until the ratio is back below
    the detrigger ratio, so the spike is not learnt as noise (local choices: a 0.75 s
    STA fades to 5 % in about 2.5 s after a 0.4 s spike; the P coda of an M4.5 keeps
    about 15 % after 3 s). Any other window stays open at least
    ``min_event_window_s`` after P (long enough for the S wave a few hundred km away),
    closes after ``max_event_window_s`` whatever the ratio, and no new trigger comes
    within ``retrigger_lockout_s`` of its P (60 s, OpenEEW), so a quake's coda does not
    fire again (local choices).

    S pick (inside an open event window only; docs/eew.md "S picks at the station"): the S
    wave is mostly horizontal and stands several times over the P coda there (2-5 times in
    amplitude on the horizontals: *unconfirmed*, a rule of thumb), so the energy of the two
    horizontal components (high-passed acceleration) is averaged over ``s_sta_s`` and
    compared with its mean since the trigger (the horizontal P coda and the noise under it),
    that mean frozen while the ratio stands at or over ``s_onset_ratio``. The S pick is an
    upward crossing of ``s_ratio`` no earlier than ``s_min_after_p_s`` after P, picked back
    to just after the ratio was last below ``s_onset_ratio``, at most ``s_max_backtrack_s``
    before the crossing (as the P pick). Local choices measured with bench/spicks.py over
    random quakes, noise and harsher worlds: a 0.5 s STA follows the S wave's rise within
    its first half second (0.3 s: five times the picks in noise windows; 1 s: later picks);
    an energy ratio of 3 (1.7 in amplitude) still picks an S wave only 1.5-2.5 times over
    the P coda in amplitude (4, a quiet level of 1.5 and a 0.5 s backtrack gave 5 times the
    picks more than 1 s off where P is 0.8 of S); S - P under 1 s (hypocentres within about
    8 km) cannot be told from the P onset's own rise.
    """

    sta_s: float = Field(default=0.75, gt=0, le=60)
    lta_s: float = Field(default=10.0, gt=0, le=600)
    trigger_ratio: float = Field(default=2.5, gt=0, le=100)
    detrigger_ratio: float = Field(default=1.0, gt=0, le=100)
    onset_ratio: float = Field(default=1.5, gt=0, le=100)
    max_backtrack_s: float = Field(default=1.0, ge=0, le=10)
    cf_band_hz: tuple[
        Annotated[float, Field(gt=0, le=100)], Annotated[float, Field(gt=0, le=500)]
    ] = (1.0, 10.0)
    cf_vertical_only: bool = True
    transient_max_s: float = Field(default=3.0, ge=0, le=60)
    transient_fraction: float = Field(default=0.05, gt=0, lt=1)
    retrigger_lockout_s: float = Field(default=60.0, ge=0, le=3600)
    min_event_window_s: float = Field(default=30.0, gt=0, le=3600)
    max_event_window_s: float = Field(default=120.0, gt=0, le=3600)
    s_sta_s: float = Field(default=0.5, gt=0, le=10)
    s_ratio: float = Field(default=3.0, gt=1, le=100)
    s_onset_ratio: float = Field(default=1.2, gt=0, le=100)
    s_min_after_p_s: float = Field(default=1.0, ge=0, le=60)
    s_max_backtrack_s: float = Field(default=1.0, ge=0, le=10)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.s_onset_ratio < self.s_ratio:
            msg = f"s_onset_ratio {self.s_onset_ratio:g} must be below s_ratio {self.s_ratio:g}"
            raise ValueError(msg)
        if not self.sta_s < self.lta_s:
            msg = f"sta_s {self.sta_s:g} must be shorter than lta_s {self.lta_s:g}"
            raise ValueError(msg)
        if not self.trigger_ratio > self.detrigger_ratio:
            msg = (
                f"trigger_ratio {self.trigger_ratio:g} must be above detrigger_ratio "
                f"{self.detrigger_ratio:g}"
            )
            raise ValueError(msg)
        if not self.min_event_window_s <= self.max_event_window_s:
            msg = (
                f"min_event_window_s {self.min_event_window_s:g} must not exceed "
                f"max_event_window_s {self.max_event_window_s:g}"
            )
            raise ValueError(msg)
        if not self.cf_band_hz[0] < self.cf_band_hz[1]:
            msg = f"cf_band_hz {list(self.cf_band_hz)} must go from a lower to a higher corner"
            raise ValueError(msg)
        if not self.transient_max_s < self.min_event_window_s:
            msg = (
                f"transient_max_s {self.transient_max_s:g} must be shorter than "
                f"min_event_window_s {self.min_event_window_s:g}"
            )
            raise ValueError(msg)
        return self


Degrees = Annotated[float, Field(ge=-180, le=180)]


class QuakeThresholds(_Strict):
    """The earthquake network (domain.md "Early-warning practice"); network-wide.

    Association: an event needs ``min_stations`` P picks (3-4; OpenEEW uses 4) pairwise
    within ``pair_max_km`` and ``pair_max_dt_s`` (Taiwan Earthworm EEW: 100 km, 15 s) and
    ``|dt| <= distance / vp + pair_tolerance_s``; a trigger is a P pick of an event when
    its residual against the relocated hypocentre is within ``join_tolerance_s``, and
    belongs to its shaking (an S or coda trigger) up to ``absorb_after_s_s`` after the
    predicted S; an event with no new trigger for ``close_after_s`` (20 s) is closed.
    Cells and townships at or above ``report_min_intensity`` are reported (local choice).

    Location: a grid search over ``region_deg`` (lat_min, lon_min, lat_max, lon_max: the
    Taiwan warning region, about 21-26.5 N, 119-123.5 E) and ``depth_km`` (0-100 km),
    coarse ``search_step_deg`` then finer, with a weak prior on depth
    (``depth_prior_km`` +- ``depth_prior_sigma_km``: a few picks do not resolve depth from
    origin time; EPIC and ElarmS fix it at 8 km; local choice); constant ``vp_kms`` /
    ``vs_kms`` (6.0 / 3.5,
    *unconfirmed* for Taiwan, which uses depth-dependent speeds of about 5.1 / 2.9 km/s
    near the surface). A station's S pick (its S - P time is a distance: it fixes depth
    and a one-sided epicentre) locates with an error of ``s_pick_sigma_s``, twice a P
    pick's (the S wave starts in the P coda, and its onset is emergent). Stations that
    have NOT triggered constrain it (ShakeAlert/EPIC): a
    station armed and nearer the trial hypocentre than the farthest pick must have
    triggered ``unpicked_margin_s`` after its predicted P. A location whose
    ``pick_sigma_s`` confidence region reaches further than ``poor_location_km`` from the
    solution is *poor* (ill-conditioned geometry, nearly collinear stations): an event
    with only ``min_stations`` picks waits for one more while its location is poor, and
    one with fewer than ``2 * min_stations`` while its region reaches beyond
    ``declare_max_uncertainty_km`` (local choices).

    Noise discrimination (zero false alarms is the bar): a pick whose trigger-band peak
    stands ``noise_min_pa_snr`` above the noise and whose dominant period
    ``2 pi sqrt(Pd / Pa)`` is below ``noise_max_period_s`` is a human-made transient (a
    door, a truck: energy above 5 Hz and no low-frequency P pulse); tau_c below
    ``noise_max_period_s`` says the same. Such picks never declare an event. An event
    whose picks' magnitudes (from Pa) spread more than ``max_magnitude_spread``, or whose
    nearest armed stations did not trigger although its amplitudes say they must
    (``unpicked_min_pa_snr`` times their noise), is not declared (local choices).

    Magnitude: Pd (Wu & Zhao 2006) over at least ``pd_min_window_s`` of P, where Pd stands
    ``pd_magnitude_min_snr`` above the noise (the displacement noise is narrow-band near
    the high-pass corner, so its peak over a 3 s window reaches 3-4 times its RMS: below
    that Pd measures the noise) and the S wave has not yet arrived, corrected for the
    station's P-wave high-pass at ``pd_highpass_hz`` (Wu & Zhao used 0.075 Hz) with the
    dominant period of Wu & Kanamori (2005). Until a Pd qualifies, the trigger-band P
    amplitude through the ground-motion model and ``p_to_s_ratio`` (*unconfirmed*), which
    over the first seconds of P reads ``pa_shortfall_m5`` low at M5 and
    ``pa_shortfall_per_m`` more per unit above (the ratio is the P train's peak; the
    longer a larger source's train, the smaller the share of it its first seconds hold:
    measured over 240 synthetic quakes, docs/eew.md); once the S wave has passed
    stations, their PGA and PGV through the ground-motion model.
    """

    min_stations: int = Field(default=3, ge=2, le=100)
    min_site_km: float = Field(default=1.0, ge=0, le=100)
    pair_max_km: float = Field(default=100.0, gt=0, le=2000)
    pair_max_dt_s: float = Field(default=15.0, gt=0, le=600)
    pair_tolerance_s: float = Field(default=1.0, ge=0, le=30)
    join_tolerance_s: float = Field(default=2.0, gt=0, le=30)
    absorb_after_s_s: float = Field(default=30.0, ge=0, le=600)
    close_after_s: float = Field(default=20.0, gt=0, le=3600)
    report_min_intensity: IntensityLevel = "3"
    _intensity = field_validator("report_min_intensity", mode="before")(_level_text)
    region_deg: tuple[Degrees, Degrees, Degrees, Degrees] = (21.0, 119.0, 26.5, 123.5)
    depth_km: tuple[
        Annotated[float, Field(ge=0, le=700)], Annotated[float, Field(ge=0, le=700)]
    ] = (0.0, 100.0)
    search_step_deg: float = Field(default=0.2, gt=0, le=2)
    depth_prior_km: float = Field(default=10.0, ge=0, le=700)
    depth_prior_sigma_km: float = Field(default=35.0, gt=0, le=1000)
    vp_kms: float = Field(default=6.0, gt=0, le=20)
    vs_kms: float = Field(default=3.5, gt=0, le=20)
    pick_sigma_s: float = Field(default=0.3, gt=0, le=10)
    s_pick_sigma_s: float = Field(default=0.6, gt=0, le=20)
    max_rms_s: float = Field(default=1.0, gt=0, le=30)
    unpicked_margin_s: float = Field(default=1.5, ge=0, le=30)
    poor_location_km: float = Field(default=30.0, gt=0, le=1000)
    declare_max_uncertainty_km: float = Field(default=100.0, gt=0, le=10_000)
    noise_min_pa_snr: float = Field(default=20.0, gt=0, le=10_000)
    noise_max_period_s: float = Field(default=0.4, ge=0, le=10)
    max_magnitude_spread: float = Field(default=1.0, gt=0, le=10)
    unpicked_min_pa_snr: float = Field(default=10.0, gt=0, le=10_000)
    pd_highpass_hz: float = Field(default=0.2, gt=0, le=5)
    pd_min_snr: float = Field(default=3.0, gt=0, le=1000)
    pd_magnitude_min_snr: float = Field(default=6.0, gt=0, le=1000)
    pd_min_window_s: float = Field(default=1.0, gt=0, le=10)
    p_to_s_ratio: float = Field(default=0.25, gt=0, le=10)
    pa_shortfall_m5: float = Field(default=0.12, ge=0, le=2)
    pa_shortfall_per_m: float = Field(default=0.11, ge=0, lt=0.9)

    @model_validator(mode="after")
    def _check(self) -> Self:
        lat0, lon0, lat1, lon1 = self.region_deg
        if not (-90 <= lat0 < lat1 <= 90 and lon0 < lon1):
            msg = (
                f"region_deg {list(self.region_deg)} must be [lat_min, lon_min, lat_max, "
                "lon_max] with lat_min < lat_max <= 90 and lon_min < lon_max"
            )
            raise ValueError(msg)
        if not self.depth_km[0] <= self.depth_km[1]:
            msg = f"depth_km {list(self.depth_km)} must go from the shallower to the deeper"
            raise ValueError(msg)
        if not self.vs_kms < self.vp_kms:
            msg = f"vs_kms {self.vs_kms:g} must be slower than vp_kms {self.vp_kms:g}"
            raise ValueError(msg)
        return self


# --- sensor health ---------------------------------------------------------------------------


class HealthRule(_Strict):
    """Plausible range and stuck rule of one reading field (units of the field's name).

    A value is stuck when it repeats for ``stuck_count`` consecutive readings or for
    ``stuck_minutes`` of event time (at least 3 readings), whichever comes first; ``None``
    disables that half. ``stuck_exempt`` values never count as stuck (a dry rain gauge
    or street reads 0 for weeks).
    """

    min_value: float
    max_value: float
    stuck_count: int | None = Field(default=None, ge=2)
    stuck_minutes: float | None = Field(default=None, gt=0)
    stuck_exempt: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.min_value < self.max_value:
            msg = f"min_value {self.min_value:g} must be below max_value {self.max_value:g}"
            raise ValueError(msg)
        return self


_AIR_RULE = {"min_value": 0, "stuck_count": 36, "stuck_minutes": 180}


class HealthThresholds(_Strict):
    """Sensor health per payload field. The ranges span typical low-cost and hydrological
    sensors and the stuck rules are the project's starting choice: local values, not
    from domain.md."""

    pm2_5_ugm3: HealthRule = HealthRule(**_AIR_RULE, max_value=1000)
    pm10_ugm3: HealthRule = HealthRule(**_AIR_RULE, max_value=2000)
    o3_ppb: HealthRule = HealthRule(**_AIR_RULE, max_value=1000)
    co_ppm: HealthRule = HealthRule(**_AIR_RULE, max_value=100)
    no2_ppb: HealthRule = HealthRule(**_AIR_RULE, max_value=3000)
    so2_ppb: HealthRule = HealthRule(**_AIR_RULE, max_value=2000)
    flood_depth_cm: HealthRule = HealthRule(
        min_value=0, max_value=500, stuck_count=60, stuck_minutes=360, stuck_exempt=(0.0,)
    )
    #: River stage is an elevation; some stations sit below mean sea level.
    water_level_m: HealthRule = HealthRule(min_value=-20, max_value=4000, stuck_minutes=1440)
    #: Rain since the previous report (typically 1-10 minutes apart).
    rainfall_mm: HealthRule = HealthRule(
        min_value=0, max_value=200, stuck_count=12, stuck_exempt=(0.0,)
    )

    def rules(self) -> dict[str, HealthRule]:
        """Payload field -> its rule."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class SilenceThresholds(_Strict):
    """A device is silent after this long without a reading, s (event time against the
    fleet's newest); network-wide. Air and water sensors report every few minutes,
    accelerometers every second: local choices."""

    air_s: float = Field(default=1800, gt=0)
    water_s: float = Field(default=1800, gt=0)
    seismic_s: float = Field(default=60, gt=0)

    def by_kind(self) -> dict[str, float]:
        return {"air": self.air_s, "water": self.water_s, "seismic": self.seismic_s}


# --- the file --------------------------------------------------------------------------------


class ThresholdSet(_Strict):
    """Every detector's thresholds: the ``defaults`` of the file, or what is in force
    for one township or device once its overrides are applied."""

    air_quality: AirQualityThresholds = AirQualityThresholds()
    flood: FloodThresholds = FloodThresholds()
    river: RiverThresholds = RiverThresholds()
    rain: RainThresholds = RainThresholds()
    debris_flow: DebrisFlowThresholds = DebrisFlowThresholds()
    seismic: StaLtaThresholds = StaLtaThresholds()
    health: HealthThresholds = HealthThresholds()
    quake: QuakeThresholds = QuakeThresholds()
    silence: SilenceThresholds = SilenceThresholds()


#: Sections a region or device may override; ``quake`` and ``silence`` are network-wide.
OVERRIDABLE: tuple[str, ...] = (
    "air_quality",
    "flood",
    "river",
    "rain",
    "debris_flow",
    "seismic",
    "health",
)

Overrides = Mapping[str, Any]


@dataclass(frozen=True)
class Thresholds:
    """The validated file: defaults, overrides by region and device, and what is in force
    for every township and device (resolved at load, so a lookup costs a dict access)."""

    source: str
    defaults: ThresholdSet = field(default_factory=ThresholdSet)
    #: The file's overrides as written (validated), by county or township code / device id.
    regions: Mapping[str, Overrides] = field(default_factory=dict)
    devices: Mapping[str, Overrides] = field(default_factory=dict)
    #: What is in force where something overrides the defaults.
    townships: Mapping[str, ThresholdSet] = field(default_factory=dict)
    by_device: Mapping[str, ThresholdSet] = field(default_factory=dict)

    def for_township(self, code: str) -> ThresholdSet:
        """The thresholds in force in a township (defaults, county, township)."""
        return self.townships.get(code, self.defaults)

    def for_device(self, device_id: str, township: str) -> ThresholdSet:
        """The thresholds in force for a device (its township's, then its own)."""
        found = self.by_device.get(device_id)
        return found if found is not None else self.townships.get(township, self.defaults)

    def summary(self) -> list[str]:
        """Compact ``key=value`` lines: the defaults per section, then which regions and
        devices override what."""
        lines = [f"thresholds file={self.source} regions={len(self.regions)} "
                 f"devices={len(self.devices)}"]  # fmt: skip
        for section, model in self.defaults:
            if isinstance(model, HealthThresholds):
                values = " ".join(f"{k}={_rule(r)}" for k, r in model.rules().items())
            else:
                dumped = model.model_dump(exclude_none=True)
                values = " ".join(f"{k}={_show(v)}" for k, v in _leaves(dumped, ""))
            lines.append(f"thresholds defaults {section}: {values}")
        for what, entries in (("regions", self.regions), ("devices", self.devices)):
            # Entries overriding the same names share a line.
            by_paths: dict[tuple[str, ...], list[str]] = {}
            for key, override in entries.items():
                paths = tuple(sorted(path for path, _ in _leaves(override, "")))
                by_paths.setdefault(paths, []).append(key)
            for paths, keys in sorted(by_paths.items()):
                shown = " ".join(keys[:5]) + (f" (+{len(keys) - 5})" if len(keys) > 5 else "")
                lines.append(f"thresholds {what} n={len(keys)} override {','.join(paths)}: {shown}")
        return lines

    def log_in_force(self) -> None:
        """Log :meth:`summary` (the worker does at start-up)."""
        for line in self.summary():
            logger.info("%s", line)


def _leaves(data: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


def _rule(r: HealthRule) -> str:
    stuck = [
        f"{r.stuck_count}x" if r.stuck_count else "",
        f"{r.stuck_minutes:g}min" if r.stuck_minutes else "",
    ]
    return f"{r.min_value:g}..{r.max_value:g}" + (
        f",stuck={'|'.join(s for s in stuck if s)}" if any(stuck) else ""
    )


def _show(v: Any) -> str:
    if isinstance(v, tuple | list):
        return "[" + ",".join(_show(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --- loading ---------------------------------------------------------------------------------


class _File(_Strict):
    defaults: ThresholdSet = ThresholdSet()
    regions: dict[str, Any] = Field(default_factory=dict)
    devices: dict[str, Any] = Field(default_factory=dict)


def load_thresholds(path: Path, registry: Registry) -> Thresholds:
    """Read and validate the thresholds file against the device registry.

    Raises :class:`ThresholdsError` naming the file, the path in it and what was expected.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read the thresholds file ({exc.strerror}); set CIVIC_THRESHOLDS"
        raise ThresholdsError(msg) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML: {exc}"
        raise ThresholdsError(msg) from exc
    return thresholds_from(data if data is not None else {}, registry, source=str(path))


def thresholds_from(
    data: object, registry: Registry, *, source: str = "<thresholds>"
) -> Thresholds:
    """Validate a parsed thresholds document (see the module docstring) against the
    registry: regions must be its counties or township codes, devices its device ids."""
    if not isinstance(data, Mapping):
        msg = f"{source}: expected a mapping with defaults, regions and devices"
        raise ThresholdsError(msg)
    data = {k: _keys_as_text(v) if k in ("regions", "devices") else v for k, v in data.items()}
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise ThresholdsError(_explain(exc, source, _File, ())) from exc

    towns = {t.code: t for t in registry.townships}
    counties = {t.county for t in registry.townships if t.county}
    for key in parsed.regions:
        if key not in towns and key not in counties:
            msg = (
                f"{source}: regions.{key}: not a township code or county of the device "
                f"registry; expected one of its {len(towns)} township codes or counties "
                f"({', '.join(sorted(counties)) or 'none'})"
            )
            raise ThresholdsError(msg)
    for key in parsed.devices:
        if registry.get(key) is None:
            msg = f"{source}: devices.{key}: no device with this id in the device registry"
            raise ThresholdsError(msg)

    # Counties first, then townships, then devices: each layer validated as a whole, so
    # an error names the entry that made the combination wrong.
    townships: dict[str, ThresholdSet] = {}
    for code, town in towns.items():
        current = parsed.defaults
        for key in (town.county, code):
            if key in parsed.regions:
                current = _apply(current, parsed.regions[key], f"regions.{key}", source)
        if current is not parsed.defaults:
            townships[code] = current
    by_device: dict[str, ThresholdSet] = {}
    for device_id, override in parsed.devices.items():
        dev = registry.get(device_id)
        assert dev is not None  # checked above
        start = townships.get(dev.township, parsed.defaults)
        by_device[device_id] = _apply(start, override, f"devices.{device_id}", source)
    return Thresholds(
        source=source,
        defaults=parsed.defaults,
        regions=parsed.regions,
        devices=parsed.devices,
        townships=townships,
        by_device=by_device,
    )


def _keys_as_text(v: object) -> object:
    """Township codes written without quotes read as YAML integers: use their text."""
    if isinstance(v, Mapping):
        return {str(k): x for k, x in v.items()}
    return v


def _apply(base: ThresholdSet, override: object, where: str, source: str) -> ThresholdSet:
    """``base`` with one region's or device's override applied, validated whole."""
    if not isinstance(override, Mapping):
        msg = f"{source}: {where}: expected a mapping of sections ({', '.join(OVERRIDABLE)})"
        raise ThresholdsError(msg)
    merged = base.model_dump()
    for section, values in override.items():
        if section not in OVERRIDABLE:
            if section in ThresholdSet.model_fields:
                msg = (
                    f"{source}: {where}.{section}: network-wide; set it under defaults only "
                    f"(a region or device may override {', '.join(OVERRIDABLE)})"
                )
            else:
                msg = (
                    f"{source}: {where}.{section}: unknown section; expected one of "
                    f"{', '.join(OVERRIDABLE)}"
                )
            raise ThresholdsError(msg)
        if not isinstance(values, Mapping) or not values:
            msg = f"{source}: {where}.{section}: expected a mapping of threshold names to values"
            raise ThresholdsError(msg)
        merged[section] = _merge(merged[section], values)
    try:
        return ThresholdSet.model_validate(merged)
    except ValidationError as exc:
        raise ThresholdsError(_explain(exc, source, ThresholdSet, tuple(where.split(".")))) from exc


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings merged key by key (health rules, rain classes); anything else,
    lists included, replaced whole."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = _merge(old, v) if isinstance(old, Mapping) and isinstance(v, Mapping) else v
    return out


def _explain(
    exc: ValidationError, source: str, root: type[BaseModel], prefix: tuple[str, ...]
) -> str:
    """One line per error: file, dotted path, what was wrong and what was expected."""
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        # Drop the union members pydantic names in the location (``literal[...]``).
        loc = tuple(str(p) for p in err["loc"] if "[" not in str(p))
        path = ".".join(prefix + loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            names = _names_at(root, loc[:-1])
            expected = f"; expected one of {', '.join(names)}" if names else ""
            by_path.setdefault(path, []).append(f"unknown name{expected}")
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        shown = err.get("input")
        # Our own messages quote the values; pydantic's say only what was expected.
        got = (
            ""
            if err["type"] == "value_error" or isinstance(shown, Mapping)
            else f" (got {shown!r})"
        )
        by_path.setdefault(path, []).append(f"{msg}{got}")
    return "\n".join(f"{source}: {path}: {'; or '.join(msgs)}" for path, msgs in by_path.items())


def _names_at(root: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The field names of the model reached by following ``loc`` from ``root``."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        info = model.model_fields.get(part)
        if info is None:
            # A key of a mapping (a region or device): the same model continues.
            continue
        model = _model_of(info.annotation)
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None
