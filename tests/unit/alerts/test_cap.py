"""CAP 1.2 XML: schema-valid for every hazard and message type, and field by field right."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, get_args

import pytest
import xmlschema

from alerts.cap import (
    CAP_NS,
    DEFAULT_PROFILES,
    CapConfig,
    CapStatus,
    cap_time,
    close_polygon,
    parse_cap,
    references_text,
    to_cap_xml,
)
from alerts.lifecycle import AckRecord, AlertMessage
from alerts.text import xml_safe
from civic_iot.contracts.alerts import Hazard

from .factories import at, candidate, lifecycle_messages, run

XSD = Path(__file__).resolve().parents[2] / "data" / "cap" / "CAP-v1.2.xsd"
HAZARDS: tuple[Hazard, ...] = get_args(Hazard)
CAP_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
NS = {"cap": CAP_NS}


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(XSD))


def _times(doc: ET.Element) -> list[str]:
    """Every CAP time in a document: sent, expires, and the sent part of each reference."""
    texts = [e.text or "" for e in doc.iter(f"{{{CAP_NS}}}sent")]
    texts += [e.text or "" for e in doc.iter(f"{{{CAP_NS}}}expires")]
    for refs in doc.iter(f"{{{CAP_NS}}}references"):
        texts += [triple.split(",")[2] for triple in (refs.text or "").split()]
    return texts


def test_schema_file_is_the_oasis_cap_1_2_schema() -> None:
    text = XSD.read_text()
    assert "Copyright OASIS Open 2010" in text
    assert 'targetNamespace = "urn:oasis:names:tc:emergency:cap:1.2"' in text


@pytest.mark.parametrize("hazard", HAZARDS)
def test_every_hazard_and_msg_type_validates(schema: xmlschema.XMLSchema, hazard: Hazard) -> None:
    msgs = lifecycle_messages(hazard)
    for msg in msgs:
        xml = to_cap_xml(msg, "Exercise")
        schema.validate(xml.decode())
        doc = ET.fromstring(xml)
        assert doc.findtext("cap:msgType", namespaces=NS) == msg.msg_type
        times = _times(doc)
        assert times, "a document without times"
        for t in times:
            assert "Z" not in t
            assert CAP_TIME.match(t), t
            assert t.endswith("+08:00")


def test_de_escalation_and_area_change_validate(schema: xmlschema.XMLSchema) -> None:
    _, msgs = run(
        [
            (0, candidate(3, 0, hazard="flood")),
            (60, candidate(2, 60, hazard="flood", geocodes=("6300300", "6300400"))),
            (60 + 1200, None),
            (60 + 1200 + 6 * 3600, None),
        ]
    )
    assert [m.reason for m in msgs] == ["new", "area_changed", "de-escalated", "expired"]
    for msg in msgs:
        schema.validate(to_cap_xml(msg, "Test").decode())


def test_header_fields() -> None:
    alert, update, cancel = lifecycle_messages("air_quality")
    parsed = parse_cap(to_cap_xml(update, "Exercise"))
    assert parsed["identifier"] == update.identifier
    assert parsed["sender"] == "alerts@civic-iot.example"
    assert parsed["sent"] == cap_time(update.sent)
    assert parsed["msgType"] == "Update"
    assert parsed["scope"] == "Public"
    assert parsed["incidents"] == update.alert_id
    cancelled = parse_cap(to_cap_xml(cancel, "Exercise"))
    assert cancelled["note"] == "cleared"
    assert parse_cap(to_cap_xml(alert, "Exercise"))["references"] == []


def test_references_are_sender_identifier_sent_triples_of_all_earlier_messages() -> None:
    alert, update, cancel = lifecycle_messages("rain")
    parsed = parse_cap(to_cap_xml(cancel, "Test"))
    assert parsed["references"] == [
        ("alerts@civic-iot.example", alert.identifier, cap_time(alert.sent)),
        ("alerts@civic-iot.example", update.identifier, cap_time(update.sent)),
    ]
    doc = ET.fromstring(to_cap_xml(cancel, "Test"))
    text = doc.findtext("cap:references", namespaces=NS) or ""
    assert text == references_text(cancel.references)
    assert re.fullmatch(r"(\S+,\S+,\S+)( \S+,\S+,\S+)*", text)


@pytest.mark.parametrize("status", get_args(CapStatus))
def test_status_is_honoured(status: CapStatus) -> None:
    msg = lifecycle_messages("flood")[0]
    parsed = parse_cap(to_cap_xml(msg, status))
    assert parsed["status"] == status
    assert parsed["actual"] is (status == "Actual")


@pytest.mark.parametrize(
    ("hazard", "categories", "certainty"),
    [
        ("air_quality", ["Env", "Health"], "Observed"),
        ("flood", ["Met", "Geo"], "Observed"),
        ("river", ["Met", "Geo"], "Observed"),
        ("water_rise", ["Met", "Geo"], "Observed"),
        ("rain", ["Met", "Geo"], "Observed"),
        ("debris_flow", ["Geo"], "Likely"),
        ("earthquake", ["Geo"], "Likely"),
    ],
)
def test_codes_per_hazard(hazard: Hazard, categories: list[str], certainty: str) -> None:
    alert, update, cancel = lifecycle_messages(hazard)
    info = parse_cap(to_cap_xml(alert, "Exercise"))["infos"][0]
    assert info["category"] == categories
    assert info["certainty"] == certainty
    assert info["severity"] == alert.severity == "Moderate"
    assert info["event"] == DEFAULT_PROFILES[hazard].event_en
    expected_urgency = "Immediate" if hazard == "earthquake" else "Expected"
    assert info["urgency"] == expected_urgency
    # The update is Severe: every hazard is then Immediate.
    assert parse_cap(to_cap_xml(update, "Exercise"))["infos"][0]["urgency"] == "Immediate"
    cancel_info = parse_cap(to_cap_xml(cancel, "Exercise"))["infos"][0]
    assert cancel_info["responseType"] == ["AllClear"]
    assert cancel_info["urgency"] == "Past"
    assert cancel_info["expires"] is None


def test_two_languages_english_first() -> None:
    msg = lifecycle_messages("air_quality")[0]
    infos = parse_cap(to_cap_xml(msg, "Exercise"))["infos"]
    assert [i["language"] for i in infos] == ["en-US", "zh-TW"]
    assert infos[0]["headline"] == msg.headline
    assert "空氣品質" in infos[1]["event"]
    assert msg.expires is not None
    assert infos[0]["expires"] == infos[1]["expires"] == cap_time(msg.expires)
    one = CapConfig(languages=("en-US",))
    assert len(parse_cap(to_cap_xml(msg, "Exercise", config=one))["infos"]) == 1


def test_parameters_carry_level_metric_value_and_evidence() -> None:
    msg = lifecycle_messages("earthquake")[1]
    params = dict(parse_cap(to_cap_xml(msg, "Exercise"))["infos"][0]["parameters"])
    assert params["level"] == "3"
    assert params["metric"] == "intensity"
    assert params["value"] == "150"
    assert params["magnitude"] == "6.1"
    assert params["max_intensity"] == "5-"
    assert params["s_wave_s_min"] == "3.2"
    assert params["alert_id"] == msg.alert_id
    assert params["sequence"] == "2"
    assert params["detected_at"] == cap_time(msg.detected_at)


def _area(msg: AlertMessage, index: int = 0) -> dict[str, Any]:
    areas: list[dict[str, Any]] = parse_cap(to_cap_xml(msg, "Exercise"))["infos"][0]["areas"]
    return areas[index]


def _pairs(polygon: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in polygon.split())]


def test_open_polygon_is_closed() -> None:
    msg = lifecycle_messages("flood")[0]  # factory polygon: 4 corners, not closed
    [polygon] = _area(msg)["polygons"]
    pairs = _pairs(polygon)
    assert len(pairs) == 5
    assert pairs[0] == pairs[-1] == (25.03, 121.53)


def test_closed_polygon_is_not_closed_twice_and_triangle_gets_four_pairs() -> None:
    triangle = ((25.0, 121.5), (25.1, 121.5), (25.1, 121.6))
    _, [msg] = run([(0, candidate(2, 0, hazard="flood", polygon=triangle))])
    pairs = _pairs(_area(msg)["polygons"][0])
    assert len(pairs) == 4
    assert pairs[0] == pairs[-1]
    _, [msg] = run([(0, candidate(2, 0, hazard="flood", polygon=(*triangle, triangle[0])))])
    assert len(_pairs(_area(msg)["polygons"][0])) == 4


def test_degenerate_polygon_is_dropped_not_emitted(schema: xmlschema.XMLSchema) -> None:
    _, [msg] = run([(0, candidate(2, 0, hazard="flood", polygon=((25.0, 121.5), (25.1, 121.5))))])
    assert _area(msg)["polygons"] == []
    schema.validate(to_cap_xml(msg, "Exercise").decode())


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(1.0, 1.0), (1.0, 2.0), (2.0, 2.0)], 4),
        ([(1.0, 1.0), (1.0, 2.0), (2.0, 2.0), (1.0, 1.0)], 4),
        ([(1.0, 1.0), (1.0, 2.0), (1.0, 1.0)], None),
        ([], None),
    ],
)
def test_close_polygon(points: list[tuple[float, float]], expected: int | None) -> None:
    closed = close_polygon(points)
    if expected is None:
        assert closed is None
    else:
        assert closed is not None
        assert len(closed) == expected
        assert closed[0] == closed[-1]


def test_circle_geocodes_and_quake_cells() -> None:
    msg = lifecycle_messages("earthquake")[0]
    main = _area(msg, 0)
    assert main["areaDesc"] == "Central Taiwan"
    assert main["circles"] == ["23.85,120.9 60"]
    strongest, weaker = _area(msg, 1), _area(msg, 2)
    assert "5-" in strongest["areaDesc"]
    assert "4" in weaker["areaDesc"]
    [cell] = strongest["polygons"]
    pairs = _pairs(cell)
    assert len(pairs) == 5
    assert pairs[0] == pairs[-1]
    assert strongest["geocodes"] == [("Taiwan_Geocode_103", "1000809")]


def test_township_geocodes() -> None:
    msg = lifecycle_messages("air_quality")[0]
    assert _area(msg)["geocodes"] == [("Taiwan_Geocode_103", "6300300")]


def test_timezone_is_configurable_and_still_never_z(schema: xmlschema.XMLSchema) -> None:
    msg = lifecycle_messages("rain")[1]
    xml = to_cap_xml(msg, "Test", config=CapConfig(timezone="UTC"))
    schema.validate(xml.decode())
    assert parse_cap(xml)["sent"] == msg.sent.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert "Z<" not in xml.decode()


def test_cap_time_format() -> None:
    assert cap_time(at(0.75)) == "2025-06-01T12:00:00+08:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        cap_time(at(0).replace(tzinfo=None))


def test_output_is_utf8_with_declaration_and_default_namespace() -> None:
    xml = to_cap_xml(lifecycle_messages("river")[0], "Exercise")
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert f'<alert xmlns="{CAP_NS}">'.encode() in xml
    assert "河川".encode() in xml


def test_parse_cap_refuses_other_documents() -> None:
    with pytest.raises(ValueError, match=r"not a CAP 1\.2 alert"):
        parse_cap("<alert xmlns='urn:oasis:names:tc:emergency:cap:1.1'/>")


def test_schema_check_has_teeth(schema: xmlschema.XMLSchema) -> None:
    msg = lifecycle_messages("air_quality")[0]
    good = to_cap_xml(msg, "Exercise").decode()
    assert schema.is_valid(good)
    sent = cap_time(msg.sent)
    with_z = good.replace(f"<sent>{sent}</sent>", f"<sent>{sent[:-6]}Z</sent>")
    assert with_z != good
    assert not schema.is_valid(with_z)
    assert not schema.is_valid(good.replace("<status>Exercise</status>", "<status>Demo</status>"))


# --------------------------------------------------------------------------- any text


#: Character classes that XML 1.0 forbids, or that need escaping, or that are unusual.
CHAR_CLASSES: dict[str, str] = {
    "nul": "\x00",
    "c0_control": "\x01\x08\x0b\x0c\x1b\x1f",
    "del_c1": "\x7f\x85\x9f",
    "lone_surrogate": "\ud800\udfff",
    "fffe_ffff": "\ufffe\uffff",
    "markup": "<&>\"']]>",
    "whitespace": "\t\n\r",
    "astral": "\U0001f6a8\U00010000",
    "bidi_separators": "\u202e\u2028\u2029",
}

#: Every text of a message that comes from outside (candidate, acknowledgement, config).
TEXT_FIELDS = (
    "area_code",
    "area_desc",
    "headline",
    "description",
    "metric",
    "device",
    "geocode",
    "cell_township",
    "evidence_name",
    "evidence_text",
    "ack_by",
    "ack_note",
    "sender",
)


def _message_with(field: str, text: str) -> AlertMessage:
    msg = lifecycle_messages("earthquake")[1]
    bad = f"a{text}z"
    if field in ("area_code", "area_desc", "headline", "description", "metric", "sender"):
        return msg.model_copy(update={field: bad})
    if field == "device":
        return msg.model_copy(update={"devices": (bad,)})
    if field == "geocode":
        return msg.model_copy(update={"geocodes": (bad,)})
    if field == "cell_township":
        cell = msg.cells[0].model_copy(update={"township": bad})
        return msg.model_copy(update={"cells": (cell,)})
    if field == "evidence_name":
        return msg.model_copy(update={"evidence": {bad: 1.0}})
    if field == "evidence_text":
        return msg.model_copy(update={"evidence": {"note": bad}})
    ack = AckRecord(alert_id=msg.alert_id, key=msg.key, by="ops", at=msg.sent)
    ack = ack.model_copy(update={"by" if field == "ack_by" else "note": bad})
    return msg.model_copy(update={"acknowledgements": (ack,)})


@pytest.mark.parametrize("char_class", sorted(CHAR_CLASSES))
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_any_text_in_any_field_gives_a_valid_document(
    schema: xmlschema.XMLSchema, field: str, char_class: str
) -> None:
    """The issue's finding: a control character made the next CAP message malformed XML
    (49 of 156 field x character combinations). Now every one parses and validates."""
    msg = _message_with(field, CHAR_CLASSES[char_class])
    xml = to_cap_xml(msg, "Exercise")
    schema.validate(xml.decode())
    parsed = parse_cap(xml)
    assert parsed["identifier"] == msg.identifier
    text = xml.decode()
    assert "a" in text
    assert "z" in text
    for ch in CHAR_CLASSES[char_class]:
        if xml_safe(ch) != ch:
            assert ch not in text


def test_xml_safe_keeps_what_xml_allows_and_marks_what_it_forbids() -> None:
    assert xml_safe("Da'an 大安 <&> \t\n\r \U0001f6a8") == "Da'an 大安 <&> \t\n\r \U0001f6a8"
    assert xml_safe("a\x00b\x1bc\ud800d\ufffee") == "a\ufffdb\ufffdc\ufffdd\ufffde"
