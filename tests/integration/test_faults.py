"""The two faults that once lost or stuck readings, on a PRIVATE Mosquitto + Kafka (own
data dir and ports, started here with ``deploy/stack.sh up mosquitto kafka``), so that
stopping a broker never touches the shared stack:

- Kafka restarts: ingest's producer fails, ``/health`` says why (503), and once Kafka is
  back every reading the broker acknowledged meanwhile reaches Kafka, without a restart
  of ingest, which then stops on SIGTERM within seconds;
- Mosquitto restarts: what devices publish (and the broker acknowledges) before ingest
  has reconnected waits in ingest's persistent session and reaches Kafka (the exclusive
  subscription: Mosquitto 2.0 does not restore a shared one, see
  ``bench/mosquitto_shared_restart.sh``; with ``CIVIC_INGEST__SUBSCRIPTION=shared`` this
  test loses those readings).

``bench/chaos.py`` runs every fault under load, with the whole pipeline.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from civic_iot.kafka_admin import ensure_topics
from civic_iot.registry import Registry
from civic_iot.settings import Settings
from civic_iot.topology import Topology
from ops.pipeline import free_port
from tests.integration.helpers import REPO, Device, read_topic, reading, start_process

pytestmark = pytest.mark.integration

TS_S = int(time.time()) - 600


class PrivateStack:
    """Mosquitto and Kafka of this module only (own data dir, own ports)."""

    def __init__(self) -> None:
        self.data = REPO / f".civic-faults-{uuid.uuid4().hex[:8]}"
        kafka_port = free_port()
        self.env = {
            "CIVIC_DATA_DIR": str(self.data),
            "CIVIC_MQTT__PORT": str(free_port()),
            "CIVIC_MQTT__TLS_PORT": str(free_port()),
            "CIVIC_KAFKA__BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "CIVIC_KAFKA_CONTROLLER_PORT": str(free_port()),
            # Not started here; a closed port, so nothing can reach the shared one.
            "CIVIC_INFLUX__URL": f"http://127.0.0.1:{free_port()}",
        }
        self.log = self.data.with_suffix(".log")

    def stack(self, *args: str) -> None:
        with self.log.open("ab") as out:
            subprocess.run(
                ["bash", str(REPO / "deploy" / "stack.sh"), *args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=180,
            )

    def settings(self, base: Settings) -> Settings:
        return base.model_copy(
            update={
                "data_dir": self.data,
                "mqtt": base.mqtt.model_copy(update={"port": int(self.env["CIVIC_MQTT__PORT"])}),
                "kafka": base.kafka.model_copy(
                    update={"bootstrap": self.env["CIVIC_KAFKA__BOOTSTRAP"]}
                ),
            }
        )


@pytest.fixture(scope="module")
def private() -> Iterator[PrivateStack]:
    s = PrivateStack()
    try:
        s.stack("up", "mosquitto", "kafka")
        yield s
    finally:
        s.stack("down", "mosquitto", "kafka")
        shutil.rmtree(s.data, ignore_errors=True)
        s.log.unlink(missing_ok=True)


@pytest.fixture
def penv(private: PrivateStack, settings: Settings, unique: str) -> tuple[Settings, dict[str, str]]:
    """Settings and process environment of one test on the private stack."""
    mine = private.settings(settings)
    prefix = f"f{unique}."
    asyncio.run(
        ensure_topics(
            mine.kafka.bootstrap, Topology(prefix=prefix, partitions=mine.kafka.partitions)
        )
    )
    return mine.model_copy(
        update={"kafka": mine.kafka.model_copy(update={"topic_prefix": prefix})}
    ), {
        **private.env,
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_INGEST__INSTANCE": f"f{unique}",
        "CIVIC_INGEST__HTTP_PORT": str(free_port()),
        "CIVIC_MQTT__SESSION_EXPIRY_S": "300",
    }


def health(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{env['CIVIC_INGEST__HTTP_PORT']}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())
    except OSError:
        return 0, {}


def wait_for(what: str, pred: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {within_s} s waiting for {what}"
        time.sleep(0.2)


def start_ingest(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = start_process(["ingest"], env, log)
    wait_for("ingest healthy", lambda: health(env)[0] == 200 or proc.poll() is not None, 30)
    assert proc.poll() is None, log.read_text()
    return proc


def publish(dev: Device, kind: str, n: int, start: int, **values: float) -> set[str]:
    """``n`` readings of ``dev``, each acknowledged by the broker; their reading ids."""
    ids = set()
    for i in range(start, start + n):
        ts_ms = TS_S * 1000 + i * 1000
        rc = dev.publish(f"devices/{dev.id}/{kind}", reading(ts_ms, **values))
        assert not rc.is_failure, rc
        ids.add(f"{dev.id}:{ts_ms * 1_000_000}")
    return ids


def on_kafka(settings: Settings, kind: str, want: int) -> set[str]:
    topic = Topology.of(settings).readings(kind)
    records = asyncio.run(read_topic(settings, topic, want=want, timeout_s=30))
    return {json.loads(v)["reading_id"] for _, v in records}


def test_ingest_recovers_by_itself_from_a_kafka_restart(
    private: PrivateStack,
    penv: tuple[Settings, dict[str, str]],
    registry: Registry,
    tmp_path: Path,
) -> None:
    settings, env = penv
    proc = start_ingest(env, tmp_path / "ingest.log")
    dev = Device(settings, registry.of_kind("air")[0].id)
    try:
        sent = publish(dev, "air", 10, 0, pm2_5_ugm3=8.0)
        assert on_kafka(settings, "air", 10) == sent
        private.stack("down", "kafka")
        # Acknowledged by the broker while Kafka is away: held in ingest's session.
        sent |= publish(dev, "air", 20, 10, pm2_5_ugm3=9.0)
        wait_for("/health 503", lambda: health(env)[0] == 503, 20)
        assert "kafka" in health(env)[1]["reason"], health(env)
        private.stack("up", "kafka")
        wait_for("/health 200 again", lambda: health(env)[0] == 200, 30)
        assert on_kafka(settings, "air", 30) == sent
    finally:
        dev.close()
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(30)
    assert time.monotonic() - t0 < 10, (tmp_path / "ingest.log").read_text()


def test_nothing_acknowledged_is_lost_across_a_mosquitto_restart(
    private: PrivateStack,
    penv: tuple[Settings, dict[str, str]],
    registry: Registry,
    tmp_path: Path,
) -> None:
    settings, env = penv
    proc = start_ingest(env, tmp_path / "ingest.log")
    device = registry.of_kind("air")[1].id
    try:
        dev = Device(settings, device)
        sent = publish(dev, "air", 5, 0, pm2_5_ugm3=8.0)
        dev.close()
        # Ingest held still across the restart, so that it comes back only after the
        # restarted broker has acknowledged these for its session.
        proc.send_signal(signal.SIGSTOP)
        private.stack("down", "mosquitto")
        private.stack("up", "mosquitto")
        dev = Device(settings, device)
        sent |= publish(dev, "air", 20, 5, pm2_5_ugm3=9.0)
        dev.close()
        proc.send_signal(signal.SIGCONT)
        assert on_kafka(settings, "air", 25) == sent
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
