"""Soak: a steady load for a long time, memory, CPU and lag of every process (run by hand).

    . .civic-private/env          # a private stack (see bench/chaos.py), or the shared one
    .venv/bin/python bench/soak.py --minutes 60 --rate 100

ingest, one processors worker and the alert service run as processes on a fresh topic
prefix (as in ``bench/chaos.py``), a lean device fleet (``bench/loadgen.py``) publishes
``--rate`` air readings/s from ``--devices`` devices, and every ``--sample`` s each
process's RSS (``/proc/<pid>/status``), its CPU share since the last sample
(``/proc/<pid>/stat``), the worker's lag and ingest's inbox (``/health``) are recorded.
At the end: memory growth after the warm-up (the first ``--warmup`` minutes), as % per
hour from a least-squares line through the samples; the largest lag; the ERROR lines of
every log. Samples go to ``bench/results/soak-<time>.jsonl``, the summary to
``bench/results/soak-<time>.json`` and one table row (the README's) is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from chaos import FleetPlan, HealthLog, Procs, fleet_main  # noqa: E402

from civic_iot.kafka_admin import ensure_topics  # noqa: E402
from civic_iot.registry import device_password, device_secret, load_registry  # noqa: E402
from civic_iot.settings import get_settings  # noqa: E402
from civic_iot.topology import Topology  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MiB) as % of the first value per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    slope = sum((t - mx) * (v - my) for t, v in points) / var  # MiB per minute
    return 100.0 * slope * 60.0 / points[0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=100.0, help="air readings/s")
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--sample", type=float, default=60.0, help="s between samples")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes not judged")
    args = ap.parse_args()

    settings = get_settings()
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"soak{stamp}."
    out_dir = REPO / "bench" / "results"
    log_dir = out_dir / f"soak-{stamp}"
    import asyncio  # noqa: PLC0415 - only for the topics

    asyncio.run(ensure_topics(settings.kafka.bootstrap, Topology.of(settings).with_prefix(prefix)))
    procs = Procs(settings, prefix, log_dir, {})
    for name in ("alerts", "worker", "ingest"):
        procs.start(name)
    health = HealthLog(procs)
    health.start()
    deadline = time.monotonic() + 180
    while len(health.latest()) < 3 or not all(s == 200 for s, _ in health.latest().values()):
        if time.monotonic() > deadline:
            sys.exit(f"not all healthy after 180 s: {health.latest()}; logs in {log_dir}")
        time.sleep(0.5)

    reg = load_registry(settings.registry)
    secret = device_secret(settings.data_dir)
    air = [(d.id, device_password(secret, d.id)) for d in reg.of_kind("air")[: args.devices]]
    seconds = args.minutes * 60
    plan = FleetPlan(settings.mqtt.host, settings.mqtt.port, air, [], args.rate, seconds)
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    fleet = ctx.Process(target=fleet_main, args=(theirs, plan), daemon=True)
    fleet.start()
    if not mine.poll(120) or mine.recv()[0] != "ready":
        sys.exit("the device fleet did not connect")
    print(f"soak {prefix} {args.rate:g}/s for {args.minutes:g} min, logs {log_dir}", flush=True)

    t0 = time.monotonic()
    pids = {name: p.pid for name, p in procs.procs.items()}
    last_cpu = {name: cpu_s(pid) for name, pid in pids.items()}
    last_t = t0
    samples: list[dict[str, Any]] = []
    with (out_dir / f"soak-{stamp}.jsonl").open("w") as f:
        while time.monotonic() - t0 < seconds:
            time.sleep(args.sample)
            now = time.monotonic()
            latest = health.latest()
            row: dict[str, Any] = {"minute": round((now - t0) / 60, 1)}
            for name, pid in pids.items():
                cpu = cpu_s(pid)
                row[name] = {
                    "rss_mib": round(rss_mib(pid), 1),
                    "cpu_pct": round(100 * (cpu - last_cpu[name]) / (now - last_t), 1),
                    "health": latest.get(name, (0, {}))[0],
                }
                last_cpu[name] = cpu
            row["lag"] = int(latest.get("worker", (0, {}))[1].get("lag", -1))
            row["inbox"] = int(latest.get("ingest", (0, {}))[1].get("inbox", -1))
            last_t = now
            samples.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
    mine.send(("stop",))
    tally = mine.recv()[2] if mine.poll(120) else None
    fleet.join(10)
    health.halt.set()
    stop_s = procs.stop_all()

    judged = [s for s in samples if s["minute"] >= args.warmup]
    summary: dict[str, Any] = {
        "prefix": prefix,
        "rate": args.rate,
        "devices": len(air),
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "samples": len(samples),
        "fleet": None
        if tally is None
        else {k: v for k, v in vars(tally).items() if k != "per_second"},
        "stop_s": stop_s,
        "lag_max": max((s["lag"] for s in judged), default=None),
        "lag_last": samples[-1]["lag"] if samples else None,
        "errors": {
            p.stem: sum(1 for line in p.open("rb") if b" ERROR " in line or b"[ERROR]" in line)
            for p in sorted(log_dir.glob("*.log"))
        },
    }
    for name in pids:
        pts = [(s["minute"], s[name]["rss_mib"]) for s in judged]
        summary[name] = {
            "rss_mib_after_warmup": pts[0][1] if pts else None,
            "rss_mib_end": pts[-1][1] if pts else None,
            "rss_growth_pct_per_hour": round(growth_per_hour(pts), 2),
            "cpu_pct_mean": round(sum(s[name]["cpu_pct"] for s in judged) / max(1, len(judged)), 1),
        }
    (out_dir / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    row = " | ".join(
        f"{n} {summary[n]['rss_mib_after_warmup']}->{summary[n]['rss_mib_end']} MiB "
        f"({summary[n]['rss_growth_pct_per_hour']:+.1f}%/h, CPU {summary[n]['cpu_pct_mean']}%)"
        for n in pids
    )
    print(f"| {args.minutes:g} min at {args.rate:g}/s | {row} | lag max {summary['lag_max']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
