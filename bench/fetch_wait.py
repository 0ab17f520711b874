"""Why the warning path's fetches wait at most ``CIVIC_KAFKA__WARNING_FETCH_WAIT_S`` (run by hand).

A real Kafka, one consumer as a seismic worker has it: a ``packets`` topic (4 partitions)
that gets a second's packets at the top of each second, and a one-partition ``ticks``
topic that gets a burst of ticks (one per source partition, a few ms apart) once those
are decided. The consumer takes what the fetcher has, then is busy for a while with the
packets (the stations' deciding) and takes the ticks when it next asks.

aiokafka leaves a partition whose fetched records are not yet taken out of the next fetch
(after ``prefetch_backoff``), and sends one fetch at a time to a broker: a tick that
comes while such a fetch is out waits until it ends, i.e. until the next second's
packets come or ``fetch_max_wait_ms`` runs out (faust: 1.5 s). Prints, per fetch wait,
the delay from each tick's record time to the consumer having it::

    .venv/bin/python bench/fetch_wait.py                       # CIVIC_KAFKA__BOOTSTRAP
    .venv/bin/python bench/fetch_wait.py --waits 1500 500 100 50 20 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from civic_iot.settings import Settings


async def produce(bootstrap: str, packets: str, ticks: str, seconds: float, busy_s: float) -> None:
    """Each second: 600 packets over 4 partitions, then (after the deciding) three ticks
    5 ms apart."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        start = time.monotonic()
        second = 0
        while time.monotonic() - start < seconds:
            target = start + second
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            for i in range(600):
                await producer.send(packets, b"p" * 200, partition=i % 4)
            await producer.flush()
            await asyncio.sleep(busy_s)
            for _ in range(3):
                await producer.send_and_wait(ticks, str(time.time()).encode(), partition=0)
                await asyncio.sleep(0.005)
            second += 1
    finally:
        await producer.stop()


class Consumer:
    """aiokafka's consumer in a thread of its own, as faust runs it
    (``AIOKafkaConsumerThread``): its fetcher goes on while the agents are busy."""

    def __init__(self, bootstrap: str, topics: tuple[str, str], wait_ms: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.consumer = self.call(self._make(bootstrap, topics, wait_ms))

    @staticmethod
    async def _make(bootstrap: str, topics: tuple[str, str], wait_ms: int) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=f"fetch-wait-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="latest",
            fetch_max_wait_ms=wait_ms,
        )
        await consumer.start()
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event
            await asyncio.sleep(0.05)
        return consumer

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.call(self.consumer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def consume(c: Consumer, ticks: str, seconds: float, busy_s: float, step_s: float) -> list[float]:
    """Takes what the fetcher has; busy ``busy_s`` after packets (the stations' deciding)
    and ``step_s`` after ticks (the associator's step)."""
    delays: list[float] = []
    end = time.monotonic() + seconds + 2
    while time.monotonic() < end:
        batch = c.call(c.consumer.getmany(timeout_ms=200))
        now_ms = time.time() * 1000
        got = {tp.topic for tp in batch}
        for tp, records in batch.items():
            if tp.topic == ticks:
                delays += [now_ms - r.timestamp for r in records]
        if ticks in got:
            time.sleep(step_s)
        if got - {ticks}:
            time.sleep(busy_s)
    return delays


def run(bootstrap: str, wait_ms: int, seconds: float, busy_s: float, step_s: float) -> list[float]:
    run_id = uuid.uuid4().hex[:8]
    packets, ticks = f"fetch-wait-{run_id}-packets", f"fetch-wait-{run_id}-ticks"

    async def admin(create: bool) -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await client.start()
        try:
            if create:
                await client.create_topics([NewTopic(packets, 4, 1), NewTopic(ticks, 1, 1)])
            else:
                await client.delete_topics([packets, ticks])
        finally:
            await client.close()

    asyncio.run(admin(create=True))
    try:
        c = Consumer(bootstrap, (packets, ticks), wait_ms)
        try:
            producer = threading.Thread(
                target=lambda: asyncio.run(produce(bootstrap, packets, ticks, seconds, busy_s))
            )
            producer.start()
            delays = consume(c, ticks, seconds, busy_s, step_s)
            producer.join()
            return delays
        finally:
            c.close()
    finally:
        asyncio.run(admin(create=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--waits", type=int, nargs="+", default=[1500, 50], help="fetch_max_wait_ms")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--busy", type=float, default=0.13, help="deciding a second's packets, s")
    ap.add_argument("--step", type=float, default=0.1, help="the associator's step, s")
    args = ap.parse_args()
    bootstrap = Settings().kafka.bootstrap
    print("| fetch_max_wait_ms | ticks | p50 ms | p99 ms | max ms | over 300 ms |")
    print("|---|---|---|---|---|---|")
    for wait_ms in args.waits:
        d = sorted(run(bootstrap, wait_ms, args.seconds, args.busy, args.step))
        if not d:
            print(f"| {wait_ms} | 0 | | | | |")
            continue
        p99 = d[min(len(d) - 1, round(0.99 * (len(d) - 1)))]
        over = sum(x > 300 for x in d)
        print(
            f"| {wait_ms} | {len(d)} | {statistics.median(d):.0f} | {p99:.0f} | {d[-1]:.0f} "
            f"| {over} |"
        )


if __name__ == "__main__":
    main()
