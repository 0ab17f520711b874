"""Which subscriptions a message goes to: hazard, severity and area."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from alerts.lifecycle import AlertMessage
from alerts.messages import to_json_dict
from alerts.subscriptions import Routing, SubscriptionFilter, point_in_polygon
from alerts.subscriptions import matches as _matches
from civic_iot.contracts.alerts import Circle

from .factories import candidate, lifecycle_messages, run

# A box around Taipei's Da'an district (lat, lon).
DAAN_BOX = ((25.00, 121.52), (25.00, 121.56), (25.05, 121.56), (25.05, 121.52))
# A box around central Taiwan's quake cells in the factory.
NANTOU_BOX = ((23.80, 120.90), (23.80, 121.00), (23.90, 121.00), (23.90, 120.90))
FAR_BOX = ((22.0, 120.0), (22.0, 120.1), (22.1, 120.1), (22.1, 120.0))


def sub(**fields: Any) -> SubscriptionFilter:
    return SubscriptionFilter(**fields)


def matches(s: SubscriptionFilter, msg: AlertMessage) -> bool:
    """Matching on the message, checked to agree with matching on its JSON form (what the
    webhook consumer reads back from the alerts topic)."""
    direct = _matches(s, msg)
    assert _matches(s, Routing.of_json(to_json_dict(msg, "Test"))) is direct
    return direct


def alert(level: int = 2, **overrides: Any) -> AlertMessage:
    _, [msg] = run([(0, candidate(level, 0, **overrides))])
    return msg


@pytest.mark.parametrize(
    ("hazards", "hazard", "ok"),
    [
        (frozenset(), "air_quality", True),
        (frozenset({"air_quality"}), "air_quality", True),
        (frozenset({"flood", "river"}), "air_quality", False),
        (frozenset({"flood", "river"}), "river", True),
    ],
)
def test_hazard_filter(hazards: frozenset[Any], hazard: Any, ok: bool) -> None:
    assert matches(sub(hazards=hazards), alert(hazard=hazard)) is ok


@pytest.mark.parametrize(
    ("min_severity", "level", "ok"),
    [
        ("Minor", 1, True),
        ("Moderate", 1, False),
        ("Moderate", 2, True),
        ("Severe", 2, False),
        ("Severe", 4, True),
        ("Extreme", 3, False),
    ],
)
def test_alert_severity_filter(min_severity: Any, level: int, ok: bool) -> None:
    assert matches(sub(min_severity=min_severity), alert(level)) is ok


def test_update_uses_peak_severity_and_cancel_skips_severity() -> None:
    _, msgs = run([(0, candidate(4, 0)), (60, candidate(1, 60)), (60 + 1800, None)])
    s = sub(min_severity="Severe")
    deescalated = msgs[1]
    assert deescalated.severity == "Minor"
    assert matches(s, deescalated)  # they were told about the Extreme alert
    _, low = run([(0, candidate(1, 0)), (60, candidate(2, 60))])
    assert not matches(s, low[1])  # a Moderate update of a never-severe alert
    cancel = lifecycle_messages("air_quality")[2]
    assert cancel.msg_type == "Cancel"
    assert matches(sub(min_severity="Extreme"), cancel)
    assert not matches(sub(min_severity="Extreme", hazards=frozenset({"flood"})), cancel)


@pytest.mark.parametrize(
    ("townships", "message", "ok"),
    [
        (frozenset({"6300300"}), {"geocodes": ("6300300",)}, True),
        (frozenset({"6300400"}), {"geocodes": ("6300300", "6300400")}, True),
        (frozenset({"6500100"}), {"geocodes": ("6300300",)}, False),
        (frozenset({"6300300"}), {"geocodes": ()}, True),  # the area code itself
    ],
)
def test_township_filter(townships: frozenset[str], message: dict[str, Any], ok: bool) -> None:
    assert matches(sub(townships=townships), alert(**message)) is ok


def test_quake_cell_townships_and_cell_centres() -> None:
    quake = lifecycle_messages("earthquake")[0]
    assert matches(sub(townships=frozenset({"1000801"})), quake)
    assert not matches(sub(townships=frozenset({"6300300"})), quake)
    assert matches(sub(polygon=NANTOU_BOX), quake)
    assert not matches(sub(polygon=FAR_BOX), quake)


def test_polygon_subscription_against_circle_and_polygon() -> None:
    circle_msg = alert(
        hazard="rain", geocodes=(), circle=Circle(lat=25.03, lon=121.54, radius_km=3)
    )
    assert matches(sub(polygon=DAAN_BOX), circle_msg)
    assert not matches(sub(polygon=FAR_BOX), circle_msg)
    flood = alert(hazard="flood")  # factory polygon lies inside DAAN_BOX
    assert matches(sub(polygon=DAAN_BOX), flood)
    assert not matches(sub(polygon=FAR_BOX), flood)
    # A small subscription polygon inside a large message polygon.
    big = ((24.0, 121.0), (24.0, 122.0), (26.0, 122.0), (26.0, 121.0))
    assert matches(sub(polygon=DAAN_BOX), alert(hazard="flood", polygon=big))


def test_no_area_means_everywhere_and_no_geometry_never_matches_polygon() -> None:
    msg = alert(geocodes=())
    assert matches(sub(), msg)
    assert not matches(sub(polygon=DAAN_BOX), msg)


@pytest.mark.parametrize(
    ("lat", "lon", "inside"),
    [
        (25.02, 121.54, True),
        (25.06, 121.54, False),
        (24.99, 121.54, False),
        (25.02, 121.51, False),
        (25.02, 121.57, False),
    ],
)
def test_point_in_polygon(lat: float, lon: float, inside: bool) -> None:
    assert point_in_polygon(lat, lon, DAAN_BOX) is inside
    assert point_in_polygon(lat, lon, (*DAAN_BOX, DAAN_BOX[0])) is inside


def test_point_in_concave_polygon() -> None:
    # An L shape: the notch at the top right is outside.
    ell = ((0.0, 0.0), (0.0, 2.0), (1.0, 2.0), (1.0, 1.0), (2.0, 1.0), (2.0, 0.0))
    assert point_in_polygon(0.5, 1.5, ell)
    assert point_in_polygon(1.5, 0.5, ell)
    assert not point_in_polygon(1.5, 1.5, ell)


def test_subscription_filter_validation() -> None:
    with pytest.raises(ValidationError, match="3 distinct"):
        sub(polygon=((25.0, 121.5), (25.1, 121.5)))
    with pytest.raises(ValidationError, match="less than or equal to 90"):
        sub(polygon=((95.0, 121.5), (25.1, 121.5), (25.1, 121.6)))
    with pytest.raises(ValidationError, match="finite"):
        sub(polygon=((float("nan"), 121.5), (25.1, 121.5), (25.1, 121.6)))
    with pytest.raises(ValidationError, match="Extra inputs"):
        SubscriptionFilter.model_validate({"secret": "x"})
    with pytest.raises(ValidationError, match="pattern"):
        sub(townships=frozenset({"63 00\n300"}))
    with pytest.raises(ValidationError, match="at most 400"):
        sub(townships=frozenset(str(i) for i in range(401)))
    assert sub(format="json").format == "json"
