"""A minimal Faust app for the stack test: forwards every value from one topic to another."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ.get('CIVIC_KAFKA__BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    web_enabled=False,
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    datadir=os.environ["ECHO_DATADIR"],
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw")


@app.agent(source, concurrency=1)
async def echo(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        # Keep the key, so the output keeps the per-key order.
        await sink.send(key=event.key, value=b"echo:" + event.value)
