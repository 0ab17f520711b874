"""Property tier over the device contract: for every payload, either a reading that keeps
the contract and whose stored points round-trip, or a dead letter with a reason and the
exact bytes.

Payloads are generated the way the field sends them: valid readings, valid readings
mutated one way (a field dropped, retyped, pushed out of range, duplicated; odd
timestamps, sample rates and packet lengths), arbitrary JSON with the contract's keys,
and raw bytes. Accepted ones are judged by an independent reading of ingest/README.md
(``tests/contract_oracle.py``), not by ingest's own models.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import timedelta
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from civic_iot.contracts.deadletter import ReasonCode, deadletter_record
from civic_iot.contracts.readings import SEISMIC_RATES_HZ, Reading, SeismicPayload
from civic_iot.settings import InfluxSettings
from civic_iot.storage.waveform import stored, unpack
from ingest.refusals import Limits, ReadingRefusedError
from ingest.validate import validate
from processors.points import reading_points
from tests.contract_oracle import RANGES, violations
from tests.contract_world import DEVICE_FOR, NOW, NOW_MS, REGISTRY

LIMITS = Limits()
BUCKETS = InfluxSettings()
KINDS = tuple(DEVICE_FOR)

# ---------------------------------------------------------------- generators

odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["12.5", "1_000", "1e2", "NaN", "", "0x10"]),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-300, max_value=1e-300),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
odd_ts = st.one_of(
    odd_values,
    st.integers(NOW_MS - 30 * 86_400_000, NOW_MS + 86_400_000),
    st.sampled_from(
        [
            str(NOW_MS),
            str(NOW_MS // 1000),
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-11-25T08:00:00+0800",
            "2026-11-25T08:00:00",
            "2026-11-25 07:59:00+08:00",
            "2026-11-24T23:59:59.123456789Z",
            NOW_MS - 1000,
            NOW_MS + 61_000,
            float(NOW_MS) + 0.5,
        ]
    ),
)
ok_ts = st.integers(NOW_MS - 6 * 86_400_000 + 20_000, NOW_MS + 40_000)


def _in(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False) | st.integers(math.ceil(lo), math.floor(hi))


@st.composite
def valid_doc(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"ts": draw(ok_ts)}
    if draw(st.booleans()):
        doc["v"] = 1
    if kind == "seismic":
        rate = draw(st.sampled_from(SEISMIC_RATES_HZ))
        n = draw(st.integers(1, min(200, round(rate * 10))))
        axis = st.lists(_in(-4000, 4000), min_size=n, max_size=n)
        doc |= {"sample_rate_hz": rate, "x_gal": draw(axis), "y_gal": draw(axis)}
        doc["z_gal"] = draw(axis)
    fields = RANGES[kind]
    names = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
    if kind == "air":
        names.add("pm2_5_ugm3")
    for name in names:
        doc[name] = draw(_in(*fields[name]))
    return doc


@st.composite
def mutated_doc(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    doc = draw(valid_doc(kind))
    how = draw(st.sampled_from(["drop", "retype", "range", "add", "ts", "rate", "long"]))
    key = draw(st.sampled_from(sorted(doc)))
    if how == "drop":
        doc.pop(key)
    elif how == "retype":
        doc[key] = draw(odd_values)
    elif how == "range" and key in RANGES[kind]:
        lo, hi = RANGES[kind][key]
        doc[key] = draw(st.sampled_from([lo - 0.001, hi + 0.001, -1e300, 1e300]))
    elif how == "add":
        doc[draw(st.text(max_size=12))] = draw(odd_values)
    elif how == "ts":
        doc["ts"] = draw(odd_ts)
    elif how == "rate" and kind == "seismic":
        doc["sample_rate_hz"] = draw(odd_values | st.floats(1e-300, 1000))
    elif how == "long" and kind == "seismic":
        n = draw(st.integers(1, 1100))
        doc["x_gal"] = doc["y_gal"] = doc["z_gal"] = [0.5] * n
    return doc


def _encode(doc: dict[str, Any], duplicate: str | None) -> bytes:
    raw = json.dumps(doc)
    if duplicate is not None and duplicate in doc:
        # The same key again, last: what a buggy firmware's string building produces.
        raw = raw[:-1] + f", {json.dumps(duplicate)}: {json.dumps(doc[duplicate])}}}"
    return raw.encode()


@st.composite
def message(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    topic = f"devices/{DEVICE_FOR[kind]}/{kind}"
    source = draw(st.sampled_from(["valid", "mutated", "json", "bytes"]))
    if source == "bytes":
        return topic, draw(st.binary(max_size=200))
    if source == "json":
        keys = st.sampled_from(["v", "ts", "kind", *RANGES[kind], "sample_rate_hz", "x_gal"])
        doc = draw(st.dictionaries(keys, odd_values, max_size=6))
    else:
        doc = draw(valid_doc(kind) if source == "valid" else mutated_doc(kind))
    dup = draw(st.none() | st.sampled_from(sorted(doc) or ["ts"]))
    return topic, _encode(doc, dup if draw(st.integers(0, 9)) == 0 else None)


# ---------------------------------------------------------------- line protocol, read back


def _field_value(text: str) -> float | int | bool | str:
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    """(measurement, tags, fields, time ns) of one line of what we write (no escaped
    spaces or commas in our values: device ids and townships are registry codes)."""
    head, fields_text, time_text = line.rsplit(" ", 2)
    measurement, *tag_parts = head.split(",")
    tags = dict(t.split("=", 1) for t in tag_parts)
    fields = {k: _field_value(v) for k, v in (f.split("=", 1) for f in fields_text.split(","))}
    return measurement, tags, fields, int(time_text)


def assert_points_round_trip(reading: Reading) -> None:
    points = reading_points(reading, BUCKETS)
    data = reading.data
    if isinstance(data, SeismicPayload):
        # One point per packet at its first sample; every sample back as its float32.
        [p] = points
        measurement, tags, fields, t = parse_line(p.line())
        assert (measurement, tags["device"]) == ("seismic_packet", reading.device_id)
        assert t == reading.event_time_ns
        for c in ("x_gal", "y_gal", "z_gal"):
            sent = getattr(data, c)
            assert unpack(fields[c]) == stored(sent)
            assert fields[c.replace("_gal", "_peak_gal")] == max(abs(x) for x in sent)
        assert (fields["samples"], fields["sample_rate_hz"]) == (
            len(data.x_gal),
            float(data.sample_rate_hz),
        )
        return
    [p] = points
    measurement, tags, fields, t = parse_line(p.line())
    assert measurement == reading.kind
    assert tags["device"] == reading.device_id
    assert t == reading.event_time_ns
    for name in RANGES[reading.kind]:
        value = getattr(data, name, None)
        assert fields.get(name) == value, name


# ---------------------------------------------------------------- the property


def _judge(topic: str, raw: bytes) -> Reading | ReadingRefusedError:
    try:
        return validate(topic, raw, registry=REGISTRY, limits=LIMITS, now=NOW)
    except ReadingRefusedError as exc:
        return exc


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
)
@given(msg=message())
def test_every_payload_is_a_sound_reading_or_a_dead_letter(msg: tuple[str, bytes]) -> None:
    topic, raw = msg
    kind = topic.rsplit("/", 1)[-1]
    outcome = _judge(topic, raw)
    if isinstance(outcome, ReadingRefusedError):
        assert outcome.reason in get_args(ReasonCode)
        assert DEVICE_FOR[kind] in outcome.message
        record = json.loads(
            deadletter_record(
                topic=topic,
                raw=raw,
                reason=outcome.reason,
                error=outcome.message,
                device_id=DEVICE_FOR[kind],
                received_at=NOW,
            )
        )
        assert base64.b64decode(record["payload_b64"]) == raw
        assert record["reason"] == outcome.reason
        return
    reading = outcome
    wrong = violations(topic, raw, now=NOW, max_age=LIMITS.max_age[kind])
    assert not wrong, (wrong, raw[:300])
    assert Reading.from_record(reading.to_record()) == reading
    assert_points_round_trip(reading)


def _outcome(msg: tuple[str, bytes]) -> str:
    outcome = _judge(*msg)
    return outcome.reason if isinstance(outcome, ReadingRefusedError) else "accepted"


@pytest.mark.parametrize("wanted", ["accepted", "schema", "out_of_range", "not_json"])
def test_the_generator_reaches_both_outcomes(wanted: str) -> None:
    """The property above is only as good as its inputs: both outcomes and several
    reasons must come up (a generator that only makes garbage would pass vacuously).
    ``find`` searches until one comes up, so the test does not hang on chance."""
    found = find(
        message(),
        lambda msg: _outcome(msg) == wanted,
        settings=settings(
            max_examples=2000,
            phases=[Phase.generate],  # any example will do: no shrinking
            database=None,
            suppress_health_check=list(HealthCheck),
            deadline=None,
        ),
    )
    assert _outcome(found) == wanted


def test_the_oracle_sees_what_the_contract_forbids() -> None:
    """The oracle flags each forbidden kind of payload (so 'no violation' means something)."""
    ts = NOW_MS - 1000
    cases = {
        b'{"ts": %d, "pm2_5_ugm3": "12.5"}' % ts: "non_number",
        b'{"ts": %d, "pm2_5_ugm3": true}' % ts: "non_number",
        b'{"ts": %d, "pm2_5_ugm3": 1, "pm2_5_ugm3": 2}' % ts: "duplicate_key",
        b'{"ts": "%d", "pm2_5_ugm3": 1}' % ts: "ts_form",
        b'{"v": true, "ts": %d, "pm2_5_ugm3": 1}' % ts: "version",
        b'{"ts": "0001-01-01T00:00:00Z", "pm2_5_ugm3": 1}': "too_old",
        b'{"ts": %d, "pm2_5_ugm3": 1001}' % ts: "out_of_range",
    }
    for raw, category in cases.items():
        assert category in violations("devices/air-1/air", raw, now=NOW, max_age=timedelta(days=6))
    packet = {
        "ts": ts,
        "sample_rate_hz": 1e-6,
        "x_gal": [0.0] * 20,
        "y_gal": [0.0] * 20,
        "z_gal": [0.0] * 20,
    }
    assert "bad_rate" in violations(
        "devices/quake-1/seismic",
        json.dumps(packet).encode(),
        now=NOW,
        max_age=timedelta(days=6),
    )
