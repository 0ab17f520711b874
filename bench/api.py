"""Read API latency on the demo's data: latest readings and alerts, p50 / p99 / max.

Run by hand against the native stack after a demo (``civic-iot demo``) has filled the
production buckets::

    .venv/bin/python bench/api.py --n 300 --concurrency 4

It starts ``civic-iot api run`` on a free port (or uses ``--url`` of a running one),
warms it as a long-running service is warm (one request per kind, and one for every
device and township: the API learns which quantities each device reports, see
``api.store.Store.readings``), then sends ``--n`` requests of each kind below from
``--concurrency`` clients at once (aiohttp, kept-alive connections, one token so the
public rate limit does not count them), each for a device or township picked at random
from the registry, and prints the latency of each kind measured by the client (request
sent -> body read) and the bytes answered.

- ``device latest``: ``/api/v1/devices/{id}/readings/latest``
- ``township latest``: ``/api/v1/townships/{code}/readings/latest``
- ``open alerts``: ``/api/v1/alerts/open``
- ``alert history``: ``/api/v1/alerts?limit=50``
- ``sta latest``: ``/sta/v1.0/Datastreams('{id}:{quantity}')/Observations?$top=1&$orderby=...``
- ``device status``: ``/api/v1/devices/{id}`` (status, level figures, readings)
- ``devices page``: ``/api/v1/devices?limit=100`` (for scale: 100 statuses per request)

Everything runs on one machine: the figures include the client, the API process and
InfluxDB competing for the same cores. Results are appended to ``bench/results/api.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from civic_iot.auth import TokenStore
from civic_iot.registry import load_registry
from civic_iot.settings import get_settings, influx_token
from ops.pipeline import free_port

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def kinds(rng: random.Random) -> dict[str, Callable[[], str]]:
    registry = load_registry(get_settings().registry)
    devices = [d for d in registry if d.kind in ("air", "water")]
    towns = [t.code for t in registry.townships]
    quantity = {"air": "pm2_5_ugm3"}

    def sta() -> str:
        d = rng.choice([d for d in devices if d.kind == "air"])
        return (
            f"/sta/v1.0/Datastreams('{d.id}:{quantity['air']}')/Observations"
            "?$top=1&$orderby=phenomenonTime%20desc"
        )

    return {
        "device latest": lambda: f"/api/v1/devices/{rng.choice(devices).id}/readings/latest",
        "township latest": lambda: f"/api/v1/townships/{rng.choice(towns)}/readings/latest",
        "open alerts": lambda: "/api/v1/alerts/open",
        "alert history": lambda: "/api/v1/alerts?limit=50",
        "sta latest": sta,
        "device status": lambda: f"/api/v1/devices/{rng.choice(devices).id}",
        "devices page": lambda: f"/api/v1/devices?limit=100&offset={rng.randrange(0, 300)}",
    }


async def run_kind(
    session: aiohttp.ClientSession, base: str, make: Callable[[], str], n: int, conc: int
) -> tuple[list[float], int, int]:
    ms: list[float] = []
    sizes = 0
    errors = 0
    todo = iter(range(n))

    async def worker() -> None:
        nonlocal sizes, errors
        for _ in todo:
            path = make()
            t = time.perf_counter()
            async with session.get(base + path) as resp:
                body = await resp.read()
            ms.append((time.perf_counter() - t) * 1000)
            sizes += len(body)
            if resp.status != 200:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(conc)))
    return ms, sizes // max(1, n), errors


async def bench(base: str, token: str, n: int, conc: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        table = kinds(rng)
        warm = [make() for make in table.values()]  # connections, the SensorThings graph
        registry = load_registry(get_settings().registry)
        warm += [f"/api/v1/devices/{d.id}/readings/latest" for d in registry]
        warm += [f"/api/v1/townships/{t.code}/readings/latest" for t in registry.townships]
        for path in warm:
            async with session.get(base + path) as resp:
                await resp.read()
        print(f"{'kind':<16} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'bytes':>8} err")
        for name, make in table.items():
            count = n if name != "devices page" else max(10, n // 10)
            ms, size, errors = await run_kind(session, base, make, count, conc)
            row = {
                "kind": name,
                "n": count,
                "p50_ms": round(statistics.median(ms), 1),
                "p99_ms": round(pct(ms, 0.99), 1),
                "max_ms": round(max(ms), 1),
                "bytes": size,
                "errors": errors,
            }
            rows.append(row)
            print(
                f"{name:<16} {count:>5} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8} "
                f"{size:>8} {errors}"
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="requests per kind")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once")
    parser.add_argument("--url", help="a running API (default: start one)")
    parser.add_argument("--token", help="a token for --url (default: one made for the run)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = get_settings()
    proc = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    base, token = args.url, args.token
    if base is None:
        _, token = TokenStore.of(tmp).issue("bench", "agency")
        port = free_port()
        env = {
            **os.environ,
            "CIVIC_DATA_DIR": str(tmp),
            "CIVIC_INFLUX__TOKEN": influx_token(settings),
            "CIVIC_LOG_LEVEL": "WARNING",
        }
        cmd = [sys.executable, "-m", "ops.cli", "api", "run", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
    assert token is not None, "--token is needed with --url"
    try:
        rows = asyncio.run(bench(base, token, args.n, args.concurrency, args.seed))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "api.jsonl").open("a", encoding="utf-8") as f:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        f.write(json.dumps({"at": at, "concurrency": args.concurrency, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
