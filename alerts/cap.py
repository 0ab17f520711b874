"""OASIS CAP 1.2 XML for an :class:`~alerts.lifecycle.AlertMessage`, and a small parser.

Built with :mod:`xml.etree.ElementTree` only (no lxml at run time). The output validates
against the OASIS ``CAP-v1.2.xsd`` (the tests check every hazard and message type).

What CAP wants and where it comes from here:

- ``<sent>``, ``<expires>`` and the times in ``<references>`` are written as
  ``YYYY-MM-DDThh:mm:ss+hh:mm`` in :attr:`CapConfig.timezone` (default Asia/Taipei); CAP
  forbids ``Z``.
- ``<status>`` is passed by the caller (``AlertSettings.cap_status``); demos and tests
  never send ``Actual``.
- category, event, responseType, urgency and certainty come from a per-hazard table,
  :data:`DEFAULT_PROFILES`; severity comes from the candidate.
- Text: every character XML 1.0 forbids (controls, lone surrogates, U+FFFE/U+FFFF)
  becomes U+FFFD, whatever field it is in (:func:`alerts.text.xml_safe`).
- ``<area>``: the message's area (areaDesc, polygon closed if it was not, circle as
  ``lat,lon radius_km``, township codes as ``Taiwan_Geocode_103`` geocodes), then for an
  earthquake one area per expected intensity with a polygon per 0.1 deg grid cell.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from alerts.lifecycle import AlertMessage, Reference
from alerts.text import get_logger, xml_safe
from civic_iot.contracts.alerts import GridCell, Hazard

logger = get_logger(__name__)

__all__ = [
    "CAP_NS",
    "DEFAULT_CAP_CONFIG",
    "DEFAULT_PROFILES",
    "CapConfig",
    "CapStatus",
    "HazardProfile",
    "InfoCodes",
    "cap_time",
    "close_polygon",
    "info_codes",
    "parse_cap",
    "references_text",
    "to_cap_element",
    "to_cap_xml",
]

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"

CapStatus = Literal["Actual", "Exercise", "System", "Test", "Draft"]
Category = Literal[
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
]
ResponseType = Literal[
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear", "None"
]
Urgency = Literal["Immediate", "Expected", "Future", "Past", "Unknown"]
Certainty = Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]
Language = Literal["en-US", "zh-TW"]


class HazardProfile(BaseModel):
    """The CAP codes and wording for one hazard."""

    model_config = ConfigDict(frozen=True)

    categories: tuple[Category, ...] = Field(min_length=1)
    event_en: str
    event_zh: str
    #: Observed for measured hazards; Likely where the alert is an estimate or forecast.
    certainty: Certainty
    #: Urgency and response for Minor/Moderate severity ...
    urgency: Urgency
    response: tuple[ResponseType, ...]
    #: ... and for Severe/Extreme.
    urgency_severe: Urgency
    response_severe: tuple[ResponseType, ...]
    instruction_en: str
    instruction_zh: str


#: Per-hazard CAP codes. Categories follow the CAP 1.2 list (Env/Health for air, Met/Geo
#: for water, a fast water rise and rain, Geo for debris flow and earthquakes). Urgency:
#: an earthquake's shaking is seconds away (Immediate); other hazards are Expected until
#: severe, then Immediate. Certainty: Observed where a sensor measured the value (a rate
#: of rise too); Likely for a quake's expected intensity and for debris flow (a
#: rainfall-threshold warning, not an observed flow). Responses and wording are our
#: defaults (*unconfirmed* against agency practice).
DEFAULT_PROFILES: Mapping[Hazard, HazardProfile] = {
    "air_quality": HazardProfile(
        categories=("Env", "Health"),
        event_en="Air quality",
        event_zh="空氣品質不良",
        certainty="Observed",
        urgency="Expected",
        response=("Monitor",),
        urgency_severe="Immediate",
        response_severe=("Avoid",),
        instruction_en=(
            "Sensitive groups should reduce outdoor activity; everyone should avoid "
            "prolonged or heavy exertion outdoors."
        ),
        instruction_zh="敏感族群應減少戶外活動；一般民眾避免長時間或劇烈戶外活動。",
    ),
    "flood": HazardProfile(
        categories=("Met", "Geo"),
        event_en="Flooding",
        event_zh="淹水",
        certainty="Observed",
        urgency="Expected",
        response=("Monitor",),
        urgency_severe="Immediate",
        response_severe=("Avoid",),
        instruction_en="Avoid flooded roads and underpasses; do not drive or walk through water.",
        instruction_zh="避開淹水路段及地下道，切勿涉水通行。",
    ),
    "river": HazardProfile(
        categories=("Met", "Geo"),
        event_en="River high water",
        event_zh="河川高水位",
        certainty="Observed",
        urgency="Expected",
        response=("Prepare",),
        urgency_severe="Immediate",
        response_severe=("Evacuate",),
        instruction_en="Stay away from riverbanks and floodplains; follow evacuation orders.",
        instruction_zh="遠離河岸及高灘地，並依指示撤離。",
    ),
    "water_rise": HazardProfile(
        categories=("Met", "Geo"),
        event_en="Rapid water rise",
        event_zh="水位快速上升",
        certainty="Observed",
        urgency="Expected",
        response=("Prepare",),
        urgency_severe="Immediate",
        response_severe=("Avoid",),
        instruction_en=(
            "Water is rising fast at a river or flood gauge: keep away from riverbanks, "
            "underpasses and low roads, and be ready to move to higher ground."
        ),
        instruction_zh="河川或淹水感測水位快速上升：遠離河岸、地下道及低窪道路，並準備移往高處。",
    ),
    "rain": HazardProfile(
        categories=("Met", "Geo"),
        event_en="Heavy rain",
        event_zh="豪大雨",
        certainty="Observed",
        urgency="Expected",
        response=("Monitor",),
        urgency_severe="Immediate",
        response_severe=("Prepare",),
        instruction_en="Watch for flooding and landslides; avoid mountain areas and slopes.",
        instruction_zh="注意淹水及坡地災害，避免前往山區。",
    ),
    "debris_flow": HazardProfile(
        categories=("Geo",),
        event_en="Debris flow",
        event_zh="土石流",
        certainty="Likely",
        urgency="Expected",
        response=("Prepare",),
        urgency_severe="Immediate",
        response_severe=("Evacuate",),
        instruction_en=(
            "Residents of debris-flow potential areas should prepare to evacuate, and "
            "evacuate when ordered."
        ),
        instruction_zh="土石流潛勢區民眾應做好撤離準備，並依指示撤離。",
    ),
    "earthquake": HazardProfile(
        categories=("Geo",),
        event_en="Earthquake early warning",
        event_zh="地震速報",
        certainty="Likely",
        urgency="Immediate",
        response=("Shelter",),
        urgency_severe="Immediate",
        response_severe=("Shelter",),
        instruction_en="Drop, cover and hold on. Stay away from windows and falling objects.",
        instruction_zh="趴下、掩護、穩住，遠離窗戶及可能掉落的物品。",
    ),
}


class CapConfig(BaseModel):
    """How CAP documents are written."""

    model_config = ConfigDict(frozen=True)

    #: Time zone of every CAP time (IANA name). Taiwan's platform expects +08:00.
    timezone: str = "Asia/Taipei"
    #: One ``<info>`` per language, in this order.
    languages: tuple[Language, ...] = Field(default=("en-US", "zh-TW"), min_length=1)
    sender_name: str = "civic-iot"
    sender_name_zh: str = "civic-iot 民生公共物聯網示警"
    #: valueName of township geocodes: Taiwan's versioned town/village code set.
    geocode_value_name: str = "Taiwan_Geocode_103"
    #: Optional ``<web>`` link (absolute URI) and ``<contact>``.
    web: str | None = None
    contact: str | None = None
    #: Side of an earthquake grid cell, degrees (the micro-zoning grid is 0.1 x 0.1 deg).
    cell_size_deg: float = Field(default=0.1, gt=0)
    #: Per-hazard codes; a hazard missing here uses :data:`DEFAULT_PROFILES`.
    profiles: Mapping[Hazard, HazardProfile] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))

    def profile(self, hazard: Hazard) -> HazardProfile:
        """The CAP codes for ``hazard``."""
        return self.profiles.get(hazard) or DEFAULT_PROFILES[hazard]


DEFAULT_CAP_CONFIG = CapConfig()


class InfoCodes(BaseModel):
    """The CAP codes a message gets (shared by the XML and JSON forms)."""

    model_config = ConfigDict(frozen=True)

    categories: tuple[Category, ...]
    event: str
    response: tuple[ResponseType, ...]
    urgency: Urgency
    certainty: Certainty


def info_codes(msg: AlertMessage, config: CapConfig = DEFAULT_CAP_CONFIG) -> InfoCodes:
    """category, event, responseType, urgency and certainty of ``msg``."""
    profile = config.profile(msg.hazard)
    severe = msg.severity in ("Severe", "Extreme")
    if msg.msg_type == "Cancel":
        # The hazard is over (or no longer vouched for): nothing left to do.
        urgency: Urgency = "Past"
        response: tuple[ResponseType, ...] = ("AllClear",)
    else:
        urgency = profile.urgency_severe if severe else profile.urgency
        response = profile.response_severe if severe else profile.response
    return InfoCodes(
        categories=profile.categories,
        event=profile.event_en,
        response=response,
        urgency=urgency,
        certainty=profile.certainty,
    )


# --------------------------------------------------------------------------- formatting


def cap_time(dt: datetime, timezone: str = DEFAULT_CAP_CONFIG.timezone) -> str:
    """``dt`` as a CAP time, ``YYYY-MM-DDThh:mm:ss+hh:mm`` in ``timezone``; never ``Z``."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        msg = f"CAP time must be timezone-aware, got naive {dt.isoformat()}"
        raise ValueError(msg)
    return dt.astimezone(ZoneInfo(timezone)).replace(microsecond=0).isoformat()


def references_text(
    references: Iterable[Reference], timezone: str = DEFAULT_CAP_CONFIG.timezone
) -> str:
    """CAP ``<references>``: space-separated ``sender,identifier,sent`` triples."""
    return " ".join(f"{r.sender},{r.identifier},{cap_time(r.sent, timezone)}" for r in references)


def _num(x: float) -> str:
    # Five decimals of a degree is about a metre: enough, and keeps documents short.
    text = f"{x:.5f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def close_polygon(
    points: Sequence[tuple[float, float]],
) -> tuple[tuple[float, float], ...] | None:
    """``points`` (lat, lon) closed (first == last), or ``None`` if they make no polygon.

    CAP needs at least four pairs with the first equal to the last, i.e. three distinct
    corners.
    """
    pts = tuple((float(lat), float(lon)) for lat, lon in points)
    if len(set(pts)) < 3:
        return None
    if pts[0] != pts[-1]:
        pts = (*pts, pts[0])
    return pts


def _polygon_text(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_num(lat)},{_num(lon)}" for lat, lon in points)


def _cell_square(cell: GridCell, size: float) -> tuple[tuple[float, float], ...]:
    h = size / 2
    return (
        (cell.lat - h, cell.lon - h),
        (cell.lat - h, cell.lon + h),
        (cell.lat + h, cell.lon + h),
        (cell.lat + h, cell.lon - h),
        (cell.lat - h, cell.lon - h),
    )


def _intensity_sort_key(intensity: str) -> tuple[float, str]:
    # CWA levels: "0".."4", "5-", "5+", "6-", "6+", "7": strongest first.
    try:
        base = float(intensity.rstrip("+-"))
    except ValueError:
        base = -1.0
    bump = 0.5 if intensity.endswith("+") else 0.0
    return (-(base + bump), intensity)


# --------------------------------------------------------------------------- building


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        # Every text goes through here: whatever a candidate, an operator or the
        # configuration put in it, the document stays well-formed XML 1.0.
        el.text = xml_safe(text)
    return el


def _pair(parent: ET.Element, tag: str, name: str, value: str) -> None:
    el = _sub(parent, tag)
    _sub(el, "valueName", name)
    _sub(el, "value", value)


def _parameters(msg: AlertMessage, tz: str) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [
        ("alert_id", msg.alert_id),
        ("sequence", str(msg.sequence)),
        ("reason", msg.reason),
        ("level", str(msg.level)),
        ("peak_severity", msg.peak_severity),
        ("metric", msg.metric),
        ("value", f"{msg.value:g}"),
    ]
    if msg.threshold is not None:
        params.append(("threshold", f"{msg.threshold:g}"))
    params.append(("event_time", cap_time(msg.event_time, tz)))
    params.append(("detected_at", cap_time(msg.detected_at, tz)))
    if msg.devices:
        params.append(("device_count", str(len(msg.devices))))
    if msg.cells:
        strongest = min((c.intensity for c in msg.cells), key=_intensity_sort_key)
        params.append(("max_intensity", strongest))
        params.append(("s_wave_s_min", f"{min(c.s_wave_s for c in msg.cells):g}"))
    if msg.acknowledgements:
        params.append(("acknowledged_by", ",".join(a.by for a in msg.acknowledgements)))
    taken = {name for name, _ in params}
    for name, value in sorted(msg.evidence.items()):
        if name not in taken:  # evidence such as "magnitude" or "pga_gal"
            params.append((name, value if isinstance(value, str) else f"{value:g}"))
    return params


def _texts(msg: AlertMessage, lang: Language, profile: HazardProfile) -> tuple[str, str, str]:
    """headline, description, instruction in ``lang``."""
    cancel = msg.msg_type == "Cancel"
    if lang == "en-US":
        headline = f"Cancelled: {msg.headline}" if cancel else msg.headline
        if cancel:
            why = "the value stayed below the clear threshold for the hold time"
            if msg.reason == "expired":
                why = "no new data arrived within the expiry time"
            description = f"{profile.event_en} alert for {msg.area_desc} is over: {why}."
            instruction = "No further action is needed for this alert."
        else:
            description = msg.description or (
                f"{profile.event_en} level {msg.level} in {msg.area_desc}: "
                f"{msg.metric} = {msg.value:g}."
            )
            instruction = profile.instruction_en
        return headline, description, instruction
    if cancel:
        why = "數值已低於解除門檻並持續達保持時間"
        if msg.reason == "expired":
            why = "逾時未收到新資料"
        return (
            f"解除：{msg.area_desc}{profile.event_zh}示警",
            f"{msg.area_desc}{profile.event_zh}示警解除（{why}）。",
            "本示警無需再採取行動。",
        )
    return (
        f"{msg.area_desc}{profile.event_zh}示警（等級 {msg.level}）",
        f"{msg.area_desc}{profile.event_zh}等級 {msg.level}：{msg.metric} = {msg.value:g}。",
        profile.instruction_zh,
    )


def _areas(info: ET.Element, msg: AlertMessage, lang: Language, config: CapConfig) -> None:
    area = _sub(info, "area")
    _sub(area, "areaDesc", msg.area_desc)
    if msg.polygon is not None:
        closed = close_polygon(msg.polygon)
        if closed is None:
            logger.warning(
                "polygon dropped from CAP key=%s identifier=%s points=%d: fewer than 3 corners",
                msg.key,
                msg.identifier,
                len(msg.polygon),
            )
        else:
            _sub(area, "polygon", _polygon_text(closed))
    if msg.circle is not None:
        c = msg.circle
        _sub(area, "circle", f"{_num(c.lat)},{_num(c.lon)} {_num(c.radius_km)}")
    for code in msg.geocodes:
        _pair(area, "geocode", config.geocode_value_name, code)

    by_intensity: dict[str, list[GridCell]] = {}
    for cell in msg.cells:
        by_intensity.setdefault(cell.intensity, []).append(cell)
    for intensity in sorted(by_intensity, key=_intensity_sort_key):
        cells = by_intensity[intensity]
        cell_area = _sub(info, "area")
        if lang == "zh-TW":
            desc = f"{msg.area_desc} 預估震度 {intensity} 級（{len(cells)} 格）"
        else:
            plural = "" if len(cells) == 1 else "s"
            desc = f"{msg.area_desc}: expected intensity {intensity} ({len(cells)} cell{plural})"
        _sub(cell_area, "areaDesc", desc)
        for cell in cells:
            _sub(cell_area, "polygon", _polygon_text(_cell_square(cell, config.cell_size_deg)))
        for code in sorted({c.township for c in cells if c.township}):
            _pair(cell_area, "geocode", config.geocode_value_name, code)


def to_cap_element(
    msg: AlertMessage, status: CapStatus, *, config: CapConfig = DEFAULT_CAP_CONFIG
) -> ET.Element:
    """The CAP ``<alert>`` element of ``msg`` with ``<status>`` = ``status``."""
    tz = config.timezone
    codes = info_codes(msg, config)
    profile = config.profile(msg.hazard)

    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", msg.identifier)
    _sub(alert, "sender", msg.sender)
    _sub(alert, "sent", cap_time(msg.sent, tz))
    _sub(alert, "status", status)
    _sub(alert, "msgType", msg.msg_type)
    _sub(alert, "scope", "Public")
    if msg.msg_type == "Cancel":
        _sub(alert, "note", msg.reason)
    if msg.references:
        _sub(alert, "references", references_text(msg.references, tz))
    # Every message of one alert shares the alert id as its incident.
    _sub(alert, "incidents", msg.alert_id)

    params = _parameters(msg, tz)
    for lang in config.languages:
        info = _sub(alert, "info")
        _sub(info, "language", lang)
        for category in codes.categories:
            _sub(info, "category", category)
        _sub(info, "event", profile.event_en if lang == "en-US" else profile.event_zh)
        for response in codes.response:
            _sub(info, "responseType", response)
        _sub(info, "urgency", codes.urgency)
        _sub(info, "severity", msg.severity)
        _sub(info, "certainty", codes.certainty)
        if msg.expires is not None:
            _sub(info, "expires", cap_time(msg.expires, tz))
        _sub(info, "senderName", config.sender_name if lang == "en-US" else config.sender_name_zh)
        headline, description, instruction = _texts(msg, lang, profile)
        _sub(info, "headline", headline)
        _sub(info, "description", description)
        _sub(info, "instruction", instruction)
        if config.web is not None:
            _sub(info, "web", config.web)
        if config.contact is not None:
            _sub(info, "contact", config.contact)
        for name, value in params:
            _pair(info, "parameter", name, value)
        _areas(info, msg, lang, config)
    return alert


def to_cap_xml(
    msg: AlertMessage, status: CapStatus, *, config: CapConfig = DEFAULT_CAP_CONFIG
) -> bytes:
    """The CAP 1.2 document of ``msg`` as UTF-8 bytes with an XML declaration."""
    element = to_cap_element(msg, status, config=config)
    document: bytes = ET.tostring(
        element, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS
    )
    return document


# --------------------------------------------------------------------------- parsing


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(f"{{{CAP_NS}}}{tag}")
    return None if child is None else (child.text or "")


def _texts_all(el: ET.Element, tag: str) -> list[str]:
    return [c.text or "" for c in el.findall(f"{{{CAP_NS}}}{tag}")]


def _pairs(el: ET.Element, tag: str) -> list[tuple[str, str]]:
    return [
        (_text(p, "valueName") or "", _text(p, "value") or "")
        for p in el.findall(f"{{{CAP_NS}}}{tag}")
    ]


def parse_cap(xml: bytes | str) -> dict[str, Any]:
    """A CAP 1.2 document as a plain dict, for tests and simple consumers.

    The result carries ``status`` and ``actual`` (``status == "Actual"``): a consumer must
    not show a Test or Exercise message as real. ``references`` is a list of
    ``(sender, identifier, sent)`` triples; parameters and geocodes are lists of
    ``(valueName, value)`` pairs.

    The parser is the standard library's; feed it documents from trusted senders (ours),
    or use ``defusedxml`` for untrusted input.

    Raises:
        ValueError: the root is not a CAP 1.2 ``<alert>``.
    """
    root = ET.fromstring(xml)  # noqa: S314 -- trusted input, see docstring
    if root.tag != f"{{{CAP_NS}}}alert":
        msg = f"not a CAP 1.2 alert: root element is {root.tag!r}, expected {{{CAP_NS}}}alert"
        raise ValueError(msg)
    status = _text(root, "status")
    refs_text = _text(root, "references") or ""
    references = [tuple(t.split(",", 2)) for t in refs_text.split()]
    infos: list[dict[str, Any]] = []
    for info in root.findall(f"{{{CAP_NS}}}info"):
        areas = [
            {
                "areaDesc": _text(a, "areaDesc"),
                "polygons": _texts_all(a, "polygon"),
                "circles": _texts_all(a, "circle"),
                "geocodes": _pairs(a, "geocode"),
            }
            for a in info.findall(f"{{{CAP_NS}}}area")
        ]
        infos.append(
            {
                "language": _text(info, "language"),
                "category": _texts_all(info, "category"),
                "event": _text(info, "event"),
                "responseType": _texts_all(info, "responseType"),
                "urgency": _text(info, "urgency"),
                "severity": _text(info, "severity"),
                "certainty": _text(info, "certainty"),
                "expires": _text(info, "expires"),
                "senderName": _text(info, "senderName"),
                "headline": _text(info, "headline"),
                "description": _text(info, "description"),
                "instruction": _text(info, "instruction"),
                "parameters": _pairs(info, "parameter"),
                "areas": areas,
            }
        )
    return {
        "identifier": _text(root, "identifier"),
        "sender": _text(root, "sender"),
        "sent": _text(root, "sent"),
        "status": status,
        "actual": status == "Actual",
        "msgType": _text(root, "msgType"),
        "scope": _text(root, "scope"),
        "note": _text(root, "note"),
        "references": references,
        "incidents": _text(root, "incidents"),
        "infos": infos,
    }
