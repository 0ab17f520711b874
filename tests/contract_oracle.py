"""An independent reading of the device contract (ingest/README.md), for judging ingest.

:func:`violations` looks at the raw bytes of a message that ingest ACCEPTED and lists every
way they break the contract as ingest/README.md writes it: it re-reads the JSON with
Python's own parser, keeps every key (duplicates too) and checks each rule from the
README's tables by hand, sharing no code with ingest's pydantic models. An empty list
means the acceptance was right. The property tests and ``bench/fuzz.py`` use it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

#: ingest/README.md, "Payload": field -> (low, high), inclusive.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "air": {
        "pm2_5_ugm3": (0, 1000),
        "pm10_ugm3": (0, 2000),
        "o3_ppb": (0, 1000),
        "co_ppm": (0, 100),
        "no2_ppb": (0, 5000),
        "so2_ppb": (0, 5000),
        "temperature_c": (-50, 70),
        "humidity_pct": (0, 100),
    },
    "water": {
        "water_level_m": (-100, 5000),
        "flood_depth_cm": (0, 1000),
        "rainfall_mm": (0, 500),
    },
    "seismic": {"pga_gal": (0, 4000), "pgv_cms": (0, 1000)},
}
POLLUTANTS = ("pm2_5_ugm3", "pm10_ugm3", "o3_ppb", "co_ppm", "no2_ppb", "so2_ppb")
RATES_HZ = (20.0, 25.0, 31.25, 40.0, 50.0, 100.0)
AXES = ("x_gal", "y_gal", "z_gal")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _number(v: Any) -> bool:
    """A JSON number: int or float, never a bool, finite."""
    return type(v) in (int, float) and math.isfinite(v)


def _ts(v: Any) -> datetime | None:
    if _number(v):
        return datetime.fromtimestamp(v / 1000, tz=UTC) if 0 <= v < 10**14 else None
    if isinstance(v, str) and RFC3339.fullmatch(v):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            return None
    return None


def violations(
    topic: str,
    raw: bytes,
    *,
    now: datetime,
    max_age: timedelta,
    skew: timedelta = timedelta(seconds=60),
    max_bytes: int = 64 * 1024,
) -> list[str]:
    """Every contract rule an accepted message breaks (category names); [] if none."""
    out: list[str] = []
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[2] not in RANGES:
        return ["bad_topic"]
    kind = parts[2]
    if len(raw) > max_bytes:
        out.append("oversize")
    pairs: list[list[tuple[str, Any]]] = []

    def keep(p: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs.append(p)
        return dict(p)

    try:
        doc = json.loads(raw, object_pairs_hook=keep)
    except (ValueError, RecursionError):
        return [*out, "not_json"]
    if not isinstance(doc, dict):
        return [*out, "not_object"]
    top = pairs[-1]
    if len({k for k, _ in top}) != len(top):
        out.append("duplicate_key")
    allowed = {"v", "ts", "kind", *RANGES[kind]}
    if kind == "seismic":
        allowed |= {"sample_rate_hz", *AXES}
    if set(doc) - allowed:
        out.append("unknown_field")
    if "v" in doc and not (type(doc["v"]) is int and doc["v"] == 1):
        out.append("version")
    if doc.get("kind", kind) != kind:
        out.append("wrong_kind")
    first = _ts(doc.get("ts"))
    if first is None:
        out.append("ts_form")
    for name, (lo, hi) in RANGES[kind].items():
        if name not in doc:
            continue
        v = doc[name]
        if not _number(v):
            out.append("non_number")
        elif not lo <= v <= hi:
            out.append("out_of_range")
    if kind == "air" and not any(p in doc for p in POLLUTANTS):
        out.append("no_value")
    if kind == "water" and not any(f in doc for f in RANGES["water"]):
        out.append("no_value")
    last = first
    if kind == "seismic":
        rate = doc.get("sample_rate_hz")
        if not _number(rate):
            out.append("non_number")
            rate = None
        elif rate not in RATES_HZ:
            out.append("bad_rate")
            rate = None
        lengths = set()
        for axis in AXES:
            samples = doc.get(axis)
            if not isinstance(samples, list) or not samples:
                out.append("samples")
                continue
            lengths.add(len(samples))
            if not all(_number(s) for s in samples):
                out.append("non_number")
            elif not all(-4000 <= s <= 4000 for s in samples):
                out.append("out_of_range")
        if len(lengths) > 1:
            out.append("length_mismatch")
        if rate and lengths:
            n = max(lengths)
            if n / rate > 10 or n > 1000:
                out.append("too_long")
            if first is not None:
                last = first + timedelta(seconds=(n - 1) / rate)
    if first is not None and last is not None:
        if last > now + skew:
            out.append("future")
        if first < now - max_age:
            out.append("too_old")
    return sorted(set(out))
