"""Fuzz ingest's validation with a million payloads (run by hand, no services needed).

    .venv/bin/python bench/fuzz.py                 # 1,000,000 payloads, seed 1
    .venv/bin/python bench/fuzz.py -n 200000 --seed 7

Each payload goes through :func:`ingest.validate.validate` exactly as ingest calls it. The
payloads are what the field sends when things go wrong: random bytes, truncated and
bit-flipped valid readings, valid readings with one field retyped (numeric strings,
booleans, null, nested values), pushed out of range, dropped or duplicated, odd
timestamps (numeric strings, year 1, far future, no offset), odd sample rates (the period
instead of the rate, 1e-300), overlong packets, deep nesting, oversize payloads, odd
topics; and valid readings, so that wrong refusals would show too.

Reported:
* crashes: any exception other than a refusal (with the first few payloads);
* wrongly accepted, by category: accepted payloads that break ingest/README.md, judged by
  an independent reading of the contract (``tests/contract_oracle.py``);
* outcomes by reason, and the valid readings refused (should be 0);
* CPU per payload (process CPU time over the loop) and per-call time p50/p99, and peak
  memory (max RSS).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from civic_iot.contracts.readings import SEISMIC_RATES_HZ  # noqa: E402
from ingest.refusals import Limits, ReadingRefusedError  # noqa: E402
from ingest.validate import validate  # noqa: E402
from tests.contract_oracle import RANGES, violations  # noqa: E402
from tests.contract_world import DEVICE_FOR, NOW, NOW_MS, REGISTRY  # noqa: E402

LIMITS = Limits()
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    "12.5",
    "1_000",
    "1e2",
    "NaN",
    "",
    [1.0],
    {"v": 1},
    -1e308,
    1e308,
    1e-300,
    -0.0,
    10**30,
    "\u0000",
]
ODD_TS: list[Any] = [
    str(NOW_MS),
    str(NOW_MS // 1000),
    "1e12",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-11-25T08:00:00+0800",
    "2026-11-25T08:00:00",
    "2026-11-24",
    "2026-11-24T23:59:59.1234567891Z",
    0,
    -1,
    10**14,
    NOW_MS + 61_000,
    NOW_MS - 7 * 86_400_000,
    True,
    None,
]
ODD_TOPICS = [
    "devices/air-1/air/raw",
    "devices/air-1",
    "devices//air",
    "devices/ghost/air",
    "devices/air-1/water",
    "alerts/air-1/air",
    "devices/air-1/noise",
    "devices/air-1/air\u0000",
]


class Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def valid(self, kind: str) -> dict[str, Any]:
        r = self.rng
        doc: dict[str, Any] = {"ts": NOW_MS - r.randrange(0, 6 * 86_400_000 - 20_000)}
        if r.random() < 0.5:
            doc["v"] = 1
        if kind == "seismic":
            rate = r.choice(SEISMIC_RATES_HZ)
            n = r.randint(1, round(rate * 10))
            for axis in ("x_gal", "y_gal", "z_gal"):
                doc[axis] = [round(r.gauss(0, 3), 3) for _ in range(n)]
            doc["sample_rate_hz"] = rate
        fields = RANGES[kind]
        names = {n for n in fields if r.random() < 0.5}
        if kind == "air":
            names.add("pm2_5_ugm3")
        if not names:
            names.add(r.choice(sorted(fields)))
        for name in names:
            lo, hi = fields[name]
            doc[name] = round(r.uniform(lo, hi), 2) if r.random() < 0.8 else r.choice([lo, hi])
        return doc

    def mutate(self, kind: str, doc: dict[str, Any]) -> tuple[str, bytes]:
        r = self.rng
        how = r.randrange(12)
        key = r.choice(sorted(doc))
        if how == 0:
            doc.pop(key)
        elif how == 1:
            doc[key] = r.choice(ODD_VALUES)
        elif how == 2 and key in RANGES[kind]:
            lo, hi = RANGES[kind][key]
            doc[key] = r.choice([lo - 0.001, hi + 0.001, lo - 1e6, hi * 1e6])
        elif how == 3:
            doc["ts"] = r.choice(ODD_TS)
        elif how == 4 and kind == "seismic":
            doc["sample_rate_hz"] = r.choice([0.01, 1e-6, 1e-300, 0, -50, 100.1, 200, "100", 49.9])
        elif how == 5 and kind == "seismic":
            n = r.choice([501, 1001, 2000, 0])
            doc["x_gal"] = doc["y_gal"] = doc["z_gal"] = [0.1] * n
        elif how == 6 and kind == "seismic":
            axis = r.choice(["x_gal", "y_gal", "z_gal"])
            doc[axis] = [*doc[axis][:-1], r.choice(ODD_VALUES)]
        elif how == 7:
            doc[r.choice(["extra", "Ts", "pm25", "kind"])] = r.choice([1, "air", "water"])
        elif how == 8:
            doc["v"] = r.choice([2, 0, 1.0, "1", True])
        raw = json.dumps(doc)
        if how == 9:  # a key named twice
            raw = raw[:-1] + f", {json.dumps(key)}: {json.dumps(r.choice(ODD_VALUES))}}}"
        if how == 10:  # truncated
            raw = raw[: r.randrange(len(raw))]
        data = raw.encode()
        if how == 11 and data:  # one flipped byte
            i = r.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ (1 << r.randrange(8))]) + data[i + 1 :]
        return f"devices/{DEVICE_FOR[kind]}/{kind}", data

    def payload(self) -> tuple[str, str, bytes]:
        """(category, topic, raw)."""
        r = self.rng
        kind = r.choice(("air", "water", "seismic"))
        topic = f"devices/{DEVICE_FOR[kind]}/{kind}"
        pick = r.random()
        if pick < 0.25:
            return "valid", topic, json.dumps(self.valid(kind)).encode()
        if pick < 0.80:
            return ("mutated", *self.mutate(kind, self.valid(kind)))
        if pick < 0.88:
            return "random_bytes", topic, r.randbytes(r.randrange(0, 300))
        if pick < 0.92:
            depth = r.choice([10, 100, 10_000])
            return "nested", topic, b"[" * depth + b"]" * depth
        if pick < 0.94:
            return "huge", topic, b'{"ts": 1, "pm2_5_ugm3": [' + b"1," * 40_000 + b"1]}"
        if pick < 0.97:
            doc = self.valid(kind)
            return "odd_topic", r.choice(ODD_TOPICS), json.dumps(doc).encode()
        doc = {r.choice(["ts", "v", "kind", *RANGES[kind]]): r.choice(ODD_VALUES + ODD_TS)}
        return "random_json", topic, json.dumps(doc).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="payloads")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    gen = Generator(random.Random(args.seed))
    outcomes: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    valid_refused: Counter[str] = Counter()
    crashes: list[tuple[str, bytes, str]] = []
    per_call_ns: list[int] = []
    cpu_s = 0.0
    cpu_by: Counter[str] = Counter()
    n_by: Counter[str] = Counter()
    for _ in range(args.n):
        category, topic, raw = gen.payload()
        cpu0 = time.process_time()
        t0 = time.perf_counter_ns()
        try:
            reading = validate(topic, raw, registry=REGISTRY, limits=LIMITS, now=NOW)
        except ReadingRefusedError as exc:
            reading = None
            outcomes[exc.reason] += 1
            if category == "valid":
                valid_refused[exc.reason] += 1
        except Exception as exc:  # noqa: BLE001 - a crash is what this bench counts
            reading = None
            outcomes["CRASH"] += 1
            if len(crashes) < 5:
                crashes.append((topic, raw[:200], repr(exc)))
        per_call_ns.append(time.perf_counter_ns() - t0)
        spent = time.process_time() - cpu0
        cpu_s += spent
        cpu_by[category] += spent  # type: ignore[assignment]
        n_by[category] += 1
        if reading is not None:
            outcomes["accepted"] += 1
            kind = topic.rsplit("/", 1)[-1]
            for v in violations(topic, raw, now=NOW, max_age=LIMITS.max_age[kind]):
                wrong[v] += 1

    per_call_ns.sort()
    q = statistics.quantiles(per_call_ns, n=100, method="inclusive")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz: {args.n:,} payloads, seed {args.seed}")
    print(f"  crashes: {outcomes['CRASH']}")
    for topic, raw, err in crashes:
        print(f"    {topic} {raw!r}: {err}")
    print(f"  wrongly accepted: {sum(wrong.values())}")
    for cat, n in wrong.most_common():
        print(f"    {cat}: {n}")
    print(f"  valid readings refused: {sum(valid_refused.values())} {dict(valid_refused)}")
    print("  outcomes: " + ", ".join(f"{k} {v:,}" for k, v in outcomes.most_common()))
    print(
        f"  CPU per payload: {cpu_s / args.n * 1e6:.1f} us; per call p50 {q[49] / 1000:.1f} us, "
        f"p99 {q[98] / 1000:.1f} us (wall, one thread)"
    )
    print(
        "  CPU per payload by category: "
        + ", ".join(f"{c} {cpu_by[c] / n_by[c] * 1e6:.1f} us" for c, _ in n_by.most_common())
    )
    print(f"  peak memory: {peak_mib:.0f} MiB (max RSS)")
    return 1 if outcomes["CRASH"] or wrong or valid_refused else 0


if __name__ == "__main__":
    sys.exit(main())
