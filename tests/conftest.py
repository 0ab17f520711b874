"""Shared fixtures. Integration tests need the native stack: ``deploy/stack.sh up``."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, get_settings, influx_token
from tests.run_ids import ISSUED, made_here, new_id


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def registry(settings: Settings) -> Registry:
    return load_registry(settings.registry)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The real services, started by ``deploy/stack.sh up``. Missing services fail the test:
    integration tests are never silently skipped. When the session ends, the Kafka topics
    and InfluxDB buckets its tests made (named with :func:`tests.run_ids.new_id`) go."""
    kafka_host, kafka_port = settings.kafka.bootstrap.split(":")
    influx = settings.influx.url.removeprefix("http://").split(":")
    down = [
        name
        for name, host, port in [
            ("mosquitto", settings.mqtt.host, settings.mqtt.port),
            ("kafka", kafka_host, int(kafka_port)),
            ("influxdb", influx[0], int(influx[1].split("/")[0])),
        ]
        if not _port_open(host, port)
    ]
    if down:
        pytest.fail(f"services not running: {', '.join(down)}; start them with deploy/stack.sh up")
    yield settings
    if ISSUED:
        remove_what_the_session_made(settings)


def remove_what_the_session_made(settings: Settings) -> None:
    """Delete the topics and buckets named with this session's ids; a failure only warns
    (the tests' verdicts are in already)."""

    async def topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if made_here(t)]
            for i in range(0, len(names), 500):
                await admin.delete_topics(names[i : i + 500], timeout_ms=60_000)
        finally:
            await admin.close()

    try:
        asyncio.run(topics())
        i = settings.influx
        with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org) as c:
            api = c.buckets_api()
            for b in api.find_buckets_iter():
                if made_here(b.name):
                    api.delete_bucket(b)
    except Exception as e:  # noqa: BLE001 - clean-up only
        warnings.warn(f"could not remove the session's topics and buckets: {e!r}", stacklevel=1)


@pytest.fixture
def unique() -> str:
    """A short unique id for topic, bucket and client names of one test."""
    return new_id()
