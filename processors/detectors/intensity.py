"""CWA seismic intensity scale (in force since 2020-01-01) and cell-broadcast criteria.

Levels ``"0"`` to ``"4"`` are read from peak ground acceleration (PGA, gal = cm/s^2);
from ``"5-"`` up they are read from peak ground velocity (PGV, cm/s), but only once PGA
has reached 80 gal: a record with PGA >= 80 gal and PGV < 15 cm/s stays ``"4"``, and a
record with PGA < 80 gal is read from PGA alone whatever its PGV (our reading of the
CWA table: PGV is the second step of the procedure, not an independent path).

The levels have an order; compare them through :func:`intensity_ordinal`, never as
strings (``"5-" < "5+"`` happens to hold in ASCII, ``"10" < "9"`` style surprises are
why we do not rely on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from civic_iot.contracts.alerts import INTENSITY_LEVELS

__all__ = [
    "CWA_2020",
    "INTENSITY_LEVELS",
    "CellBroadcastRule",
    "IntensityScale",
    "cell_broadcast_applies",
    "cell_broadcast_min_level",
    "cwa_intensity",
    "cwa_intensity_ordinals",
    "intensity_ordinal",
    "level_from_ordinal",
]

#: Every level in increasing order (INTENSITY_LEVELS); the index is its ordinal (0-9).
_ORDINAL = {level: i for i, level in enumerate(INTENSITY_LEVELS)}


@dataclass(frozen=True, slots=True)
class IntensityScale:
    """An intensity table: lower bounds (inclusive) per level.

    ``pga_bounds_gal[i]`` is the PGA (gal) at which level ``i + 1`` starts (levels 1-4);
    ``pgv_bounds_cms[j]`` is the PGV (cm/s) at which level ``5 + j`` starts (5- to 7);
    PGV is consulted only when PGA >= ``pgv_from_pga_gal``.
    """

    pga_bounds_gal: tuple[float, float, float, float]
    pgv_bounds_cms: tuple[float, float, float, float, float]
    pgv_from_pga_gal: float

    def __post_init__(self) -> None:
        for name, bounds in (("pga", self.pga_bounds_gal), ("pgv", self.pgv_bounds_cms)):
            if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
                msg = f"{name} bounds must increase strictly, got {bounds}"
                raise ValueError(msg)


# Source: Central Weather Administration (CWA, then CWB), seismic intensity scale in force
# since 2020-01-01 (交通部中央氣象署 地震震度分級表); copied from docs/domain.md.
#   0: PGA < 0.8 gal; 1: 0.8-2.5; 2: 2.5-8.0; 3: 8.0-25; 4: 25-80 (or >= 80 with PGV < 15)
#   5-: PGV 15-30 cm/s; 5+: 30-50; 6-: 50-80; 6+: 80-140; 7: >= 140
CWA_2020 = IntensityScale(
    pga_bounds_gal=(0.8, 2.5, 8.0, 25.0),
    pgv_bounds_cms=(15.0, 30.0, 50.0, 80.0, 140.0),
    pgv_from_pga_gal=80.0,
)


def intensity_ordinal(level: str) -> int:
    """The rank of a CWA level, 0 (``"0"``) to 9 (``"7"``), for comparisons."""
    try:
        return _ORDINAL[level]
    except KeyError:
        msg = f"unknown CWA intensity level {level!r}; expected one of {INTENSITY_LEVELS}"
        raise ValueError(msg) from None


def level_from_ordinal(ordinal: int) -> str:
    """The CWA level of rank ``ordinal`` (0-9)."""
    if not 0 <= ordinal < len(INTENSITY_LEVELS):
        msg = f"intensity ordinal must be 0-{len(INTENSITY_LEVELS) - 1}, got {ordinal}"
        raise ValueError(msg)
    return INTENSITY_LEVELS[ordinal]


def cwa_intensity(pga_gal: float, pgv_cms: float, scale: IntensityScale = CWA_2020) -> str:
    """The CWA intensity level for one record.

    Args:
        pga_gal: peak ground acceleration, gal (cm/s^2), >= 0.
        pgv_cms: peak ground velocity, cm/s, >= 0.
        scale: the table; the 2020 CWA scale by default.
    """
    pga = float(pga_gal)
    if pga < scale.pgv_from_pga_gal:
        return INTENSITY_LEVELS[sum(pga >= b for b in scale.pga_bounds_gal)]
    # PGA alone says at least "4"; from here PGV decides whether it is higher.
    return INTENSITY_LEVELS[4 + sum(float(pgv_cms) >= b for b in scale.pgv_bounds_cms)]


def cwa_intensity_ordinals(
    pga_gal: ArrayLike, pgv_cms: ArrayLike, scale: IntensityScale = CWA_2020
) -> NDArray[np.int64]:
    """Vectorised :func:`cwa_intensity` returning ordinals (0-9) of the same shape.

    Args:
        pga_gal: PGA values, gal.
        pgv_cms: PGV values, cm/s, broadcastable against ``pga_gal``.
        scale: the table.
    """
    pga = np.asarray(pga_gal, dtype=np.float64)
    pgv = np.asarray(pgv_cms, dtype=np.float64)
    # side="right": a value equal to a bound belongs to the level that bound starts.
    by_pga = np.searchsorted(np.asarray(scale.pga_bounds_gal), pga, side="right")
    by_pgv = 4 + np.searchsorted(np.asarray(scale.pgv_bounds_cms), pgv, side="right")
    out = np.where(pga >= scale.pgv_from_pga_gal, by_pgv, by_pga)
    return out.astype(np.int64)


@dataclass(frozen=True, slots=True)
class CellBroadcastRule:
    """Public cell broadcast goes to places with expected intensity >= ``min_level``
    when the magnitude is >= ``min_magnitude``."""

    min_magnitude: float
    min_level: str


# Source: CWA public-warning (cell broadcast) criteria in force from 2024-09-01, per
# docs/domain.md: M >= 5.0 with expected intensity >= 4, or M >= 6.5 with intensity >= 3.
CWA_CELL_BROADCAST_2024: tuple[CellBroadcastRule, ...] = (
    CellBroadcastRule(min_magnitude=6.5, min_level="3"),
    CellBroadcastRule(min_magnitude=5.0, min_level="4"),
)


def cell_broadcast_min_level(
    magnitude: float, rules: Sequence[CellBroadcastRule] = CWA_CELL_BROADCAST_2024
) -> str | None:
    """The lowest expected intensity that gets a public cell broadcast for a quake of
    ``magnitude`` (local magnitude, no unit), or ``None`` when no rule applies."""
    levels = [intensity_ordinal(r.min_level) for r in rules if magnitude >= r.min_magnitude]
    return level_from_ordinal(min(levels)) if levels else None


def cell_broadcast_applies(
    magnitude: float,
    expected_intensity: str,
    rules: Sequence[CellBroadcastRule] = CWA_CELL_BROADCAST_2024,
) -> bool:
    """Whether a place with ``expected_intensity`` gets a public cell broadcast for a
    quake of ``magnitude``."""
    min_level = cell_broadcast_min_level(magnitude, rules)
    return min_level is not None and intensity_ordinal(expected_intensity) >= intensity_ordinal(
        min_level
    )
