"""CWA intensity scale (2020): both edges of every level, the PGV step, cell broadcast."""

import numpy as np
import pytest

from processors.detectors.intensity import (
    INTENSITY_LEVELS,
    cell_broadcast_applies,
    cell_broadcast_min_level,
    cwa_intensity,
    cwa_intensity_ordinals,
    intensity_ordinal,
    level_from_ordinal,
)

# (pga gal, pgv cm/s, expected level): lower bounds are inclusive.
CASES = [
    (0.0, 0.0, "0"),
    (0.79, 0.0, "0"),
    (0.8, 0.0, "1"),
    (2.49, 0.0, "1"),
    (2.5, 0.0, "2"),
    (7.99, 0.0, "2"),
    (8.0, 0.0, "3"),
    (24.99, 0.0, "3"),
    (25.0, 0.0, "4"),
    (79.99, 0.0, "4"),
    # Below 80 gal PGV is not consulted, however large.
    (79.99, 200.0, "4"),
    (50.0, 20.0, "4"),
    # From 80 gal PGV decides; under 15 cm/s it stays 4.
    (80.0, 0.0, "4"),
    (400.0, 14.99, "4"),
    (80.0, 15.0, "5-"),
    (200.0, 29.99, "5-"),
    (200.0, 30.0, "5+"),
    (200.0, 49.99, "5+"),
    (200.0, 50.0, "6-"),
    (300.0, 79.99, "6-"),
    (300.0, 80.0, "6+"),
    (900.0, 139.99, "6+"),
    (900.0, 140.0, "7"),
    (2000.0, 400.0, "7"),
]


@pytest.mark.parametrize(("pga", "pgv", "level"), CASES)
def test_cwa_intensity_table(pga: float, pgv: float, level: str) -> None:
    assert cwa_intensity(pga, pgv) == level


def test_vectorised_matches_scalar() -> None:
    pga = np.array([c[0] for c in CASES])
    pgv = np.array([c[1] for c in CASES])
    got = cwa_intensity_ordinals(pga, pgv)
    assert [level_from_ordinal(int(o)) for o in got] == [c[2] for c in CASES]


def test_ordinals_order_levels() -> None:
    assert [intensity_ordinal(lv) for lv in INTENSITY_LEVELS] == list(range(10))
    assert intensity_ordinal("5+") > intensity_ordinal("5-") > intensity_ordinal("4")
    with pytest.raises(ValueError, match="unknown CWA intensity"):
        intensity_ordinal("5")
    with pytest.raises(ValueError, match="ordinal"):
        level_from_ordinal(10)


@pytest.mark.parametrize(
    ("magnitude", "intensity", "expected"),
    [
        (4.9, "7", False),
        (5.0, "4", True),
        (5.0, "3", False),
        (6.4, "3", False),
        (6.5, "3", True),
        (6.5, "2", False),
        (7.0, "5-", True),
    ],
)
def test_cell_broadcast(magnitude: float, intensity: str, expected: bool) -> None:
    assert cell_broadcast_applies(magnitude, intensity) is expected


def test_cell_broadcast_min_level() -> None:
    assert cell_broadcast_min_level(4.9) is None
    assert cell_broadcast_min_level(5.0) == "4"
    assert cell_broadcast_min_level(6.5) == "3"
