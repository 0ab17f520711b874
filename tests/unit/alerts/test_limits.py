"""Every record the alert service writes fits its broker's limit by design: the worst case
the caps allow, computed for every costly character, and the clamping that enforces the caps."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from alerts.lifecycle import LifecycleConfig
from alerts.limits import (
    DEFAULT_CAPS,
    KAFKA_MAX_MESSAGE_BYTES,
    KAFKA_RECORD_BUDGET,
    MQTT_MAX_PACKET_BYTES,
    MQTT_PAYLOAD_BUDGET,
    CandidateRefusedError,
    Caps,
    clamp_candidate,
    worst_case_candidate,
)
from alerts.service import WORST_FILLS, check_record_sizes, worst_case_sizes
from alerts.text import log_value
from civic_iot.contracts.alerts import GridCell
from civic_iot.settings import REPO_ROOT

from .factories import candidate

AT = datetime(2025, 1, 1, tzinfo=UTC)


def test_budgets_sit_below_the_brokers_limits() -> None:
    assert KAFKA_RECORD_BUDGET < KAFKA_MAX_MESSAGE_BYTES
    assert MQTT_PAYLOAD_BUDGET < MQTT_MAX_PACKET_BYTES
    # The Mosquitto limit assumed here is the one deployed.
    conf = (REPO_ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert f"max_packet_size {MQTT_MAX_PACKET_BYTES}" in conf


@pytest.mark.parametrize("fill", WORST_FILLS, ids=[repr(f) for f in WORST_FILLS])
def test_worst_case_records_fit_with_room_to_spare(fill: str) -> None:
    """The issue's finding: ~58 full-size acks pushed the MQTT JSON past 128 KiB and ~450
    made a Kafka record exceed 1 MB. Now the largest message and state record the caps
    allow (every list full, every text at its cap in the costliest characters, every
    acknowledgement and reference slot taken) stay within the budgets."""
    sizes = worst_case_sizes(LifecycleConfig(), _cap_config(), "Exercise", fill)
    assert sizes["mqtt"] <= MQTT_PAYLOAD_BUDGET, sizes
    assert sizes["alerts"] <= KAFKA_RECORD_BUDGET, sizes
    assert sizes["alerts.state"] <= KAFKA_RECORD_BUDGET, sizes
    # The binding limit is MQTT's: a tenth of it is kept free for what the caps do not
    # bound (the configuration's own texts).
    assert sizes["mqtt"] <= 0.9 * MQTT_PAYLOAD_BUDGET, sizes
    assert sizes["alerts"] <= 0.5 * KAFKA_RECORD_BUDGET, sizes


def _cap_config():  # type: ignore[no-untyped-def]
    from alerts.cap import DEFAULT_CAP_CONFIG  # noqa: PLC0415

    return DEFAULT_CAP_CONFIG


def test_worst_case_uses_every_cap() -> None:
    c = clamp_candidate(worst_case_candidate("&", AT))
    caps = DEFAULT_CAPS
    assert (len(c.cells), len(c.devices), len(c.geocodes)) == (
        caps.cells,
        caps.devices,
        caps.geocodes,
    )
    assert len(c.polygon or ()) == caps.polygon
    assert len(c.evidence) == caps.evidence
    assert (len(c.headline), len(c.description)) == (caps.headline, caps.description)


def test_service_refuses_caps_that_would_not_fit() -> None:
    check_record_sizes(LifecycleConfig(), _cap_config(), "Exercise")
    too_many = LifecycleConfig(caps=Caps(cells=5000))
    with pytest.raises(ValueError, match=r"mqtt \d+ bytes > 130048"):
        check_record_sizes(too_many, _cap_config(), "Exercise")


def test_clamp_cuts_texts_lists_and_keeps_the_strongest_cells() -> None:
    caps = Caps(headline=10, devices=2, cells=2, geocodes=1, evidence=1, polygon=4)
    cells = (
        GridCell(lat=24.05, lon=121.05, intensity="3", s_wave_s=9.0),
        GridCell(lat=24.15, lon=121.05, intensity="6-", s_wave_s=2.123456, township="bad code"),
        GridCell(lat=24.25, lon=121.05, intensity="5+", s_wave_s=float("inf")),
    )
    cand = candidate(
        3,
        headline="H\x00" + "x" * 50,
        devices=("c", "a", "b\nforged", "b"),
        geocodes=("1", "2"),
        cells=cells,
        evidence={"z": 1.0, "a": float("nan"), "b c": 1.0},
        polygon=tuple((25.0 + i / 1000, 121.0 + (i % 2) / 1000) for i in range(10)),
    )
    c = clamp_candidate(cand, caps)
    assert c.headline == "H\ufffd" + "x" * 7 + "\u2026"
    assert c.devices == ("a", "b")  # sorted, the invalid id dropped
    assert c.geocodes == ("1",)
    assert [x.intensity for x in c.cells] == ["6-", "5+"]  # the strongest, in grid order
    assert c.cells[0].township is None
    assert c.cells[0].s_wave_s == 2.1
    assert c.cells[1].s_wave_s == 0.0
    assert c.evidence == {"z": 1.0}
    assert c.polygon is not None
    assert len(c.polygon) <= 4
    # Within the caps already: the very same object.
    assert clamp_candidate(c, caps) is c


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"area_code": "x" * 65}, "area_code has 65 characters"),
        ({"value": float("nan")}, "value is nan"),
        ({"threshold": float("inf")}, "threshold is inf"),
    ],
)
def test_clamp_refuses_what_would_be_a_wrong_key_or_invalid_json(
    over: dict[str, object], error: str
) -> None:
    with pytest.raises(CandidateRefusedError, match=error):
        clamp_candidate(candidate(2, **over))


# --------------------------------------------------------------------------- logs


def test_a_newline_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from alerts.text import get_logger  # noqa: PLC0415

    logger = get_logger("alerts.test_forge")
    with caplog.at_level(logging.INFO, logger="alerts.test_forge"):
        logger.info("alert acknowledged by=%s n=%d", "ops\n2025-01-01 ERROR forged=1", 3)
    [record] = caplog.records
    line = record.getMessage()
    assert "\n" not in line
    assert line == 'alert acknowledged by="ops\\n2025-01-01 ERROR forged=1" n=3'


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("a b", '"a b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("line\u2028sep", "line\\u2028sep"),
        ("back\\slash\nx", "back\\\\slash\\nx"),
        (ValueError("bad\nthing"), "bad\\nthing"),
    ],
)
def test_log_value(value: object, logged: str) -> None:
    assert log_value(value) == logged


def test_every_alerts_module_logs_through_the_escaping_filter() -> None:
    import alerts  # noqa: PLC0415

    root = REPO_ROOT / "alerts"
    for path in sorted(root.glob("*.py")):
        text = path.read_text()
        if path.name == "text.py":
            continue
        assert "logging.getLogger(" not in text, f"{path.name}: use alerts.text.get_logger"
    assert alerts is not None
    json.dumps({})
