"""Shared fixtures. Integration tests need the native stack: ``deploy/stack.sh up``."""

from __future__ import annotations

import socket
import uuid

import pytest

from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, get_settings


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
def stack(settings: Settings) -> Settings:
    """The real services, started by ``deploy/stack.sh up``. Missing services fail the test:
    integration tests are never silently skipped."""
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
    return settings


@pytest.fixture
def unique() -> str:
    """A short unique id for topic, bucket and client names of one test."""
    return uuid.uuid4().hex[:10]
