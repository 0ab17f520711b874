"""The operator's CLI against real services: the device lifecycle on a real Mosquitto
(add in bulk, remove, reload by SIGHUP, nothing restarted) and topics by prefix on the
real Kafka.

The device tests never touch the shared broker's credentials: each runs its own
Mosquitto on a free port, with its own data dir and a copy of the registry
(``CIVIC_DATA_DIR``, ``CIVIC_REGISTRY``), configured as ``deploy/stack.sh`` configures
the shared one (its listener line, ``user``, then ``deploy/mosquitto/mosquitto.conf``),
with its pid file where the CLI looks for it.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.accounts import INGEST_USER, is_service_account
from civic_iot.kafka_admin import partition_counts, wait_for_topics
from civic_iot.registry import device_password, device_secret, load_registry, service_password
from civic_iot.settings import Settings
from civic_iot.topology import TABLES, Topology
from ops.pipeline import free_port, group_lag
from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class PrivateBroker:
    """A Mosquitto of the test's own: port, data dir, registry copy, the CLI's env."""

    port: int
    data_dir: Path
    registry: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the broker was not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CIVIC_DATA_DIR": str(self.data_dir),
            "CIVIC_REGISTRY": str(self.registry),
            "CIVIC_MQTT__PORT": str(self.port),
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def password(self, user: str) -> str:
        """The password of a device or service account under the test's own secret."""
        if is_service_account(user):
            return service_password(self.data_dir, user)
        return device_password(device_secret(self.data_dir), user)

    def log(self) -> str:
        return (self.data_dir / "mosquitto" / "mosquitto.log").read_text(errors="replace")


@pytest.fixture
def broker(settings: Settings, tmp_path: Path) -> Iterator[PrivateBroker]:
    data = tmp_path / "civic"
    registry = tmp_path / "devices.yaml"
    shutil.copy(settings.registry, registry)
    port = free_port()
    b = PrivateBroker(port, data, registry)
    synced = b.cli("devices", "sync", "--quiet")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    work = data / "mosquitto"
    (work / "data").mkdir(parents=True, exist_ok=True)
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nuser {getpass.getuser()}\n"
        + (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    log = (work / "mosquitto.log").open("ab")
    b.proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], cwd=work, stdout=log, stderr=subprocess.STDOUT
    )
    (work / "mosquitto.pid").write_text(str(b.proc.pid), encoding="ascii")
    try:
        deadline = time.monotonic() + 20
        while True:
            assert b.running(), b.log()
            client, rc = connect(b, INGEST_USER, b.password(INGEST_USER))
            disconnect(client)
            if accepted(rc):
                break
            assert time.monotonic() < deadline, f"private mosquitto not up:\n{b.log()}"
            time.sleep(0.2)
        yield b
    finally:
        b.proc.terminate()
        b.proc.wait(10)
        log.close()


def connect(b: PrivateBroker, user: str, password: str) -> tuple[mqtt.Client, ReasonCode | None]:
    """A connected client and its CONNACK reason (``None``: no answer). The reason of each
    disconnection the broker makes is kept in :func:`dropped`."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{time.time_ns()}",
        protocol=mqtt.MQTTv5,
        userdata=[],
    )
    client.username_pw_set(user, password)
    got: list[ReasonCode] = []
    done = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        got.append(rc)
        done.set()

    def on_disconnect(
        _c: object, drops: list[ReasonCode], _f: object, rc: ReasonCode, _p: object
    ) -> None:
        drops.append(rc)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", b.port)
    except OSError:
        return client, None
    client.loop_start()
    done.wait(5)
    return client, (got[0] if got else None)


def accepted(rc: ReasonCode | None) -> bool:
    """Whether a CONNACK said yes."""
    return rc is not None and not rc.is_failure


def disconnect(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def dropped(client: mqtt.Client) -> list[ReasonCode]:
    """The reasons of the disconnections so far (the broker's, or ours)."""
    drops: list[ReasonCode] = client.user_data_get()
    return drops


class Reader:
    """``civic-ingest`` subscribed to ``devices/#`` on the private broker."""

    def __init__(self, b: PrivateBroker) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client, rc = connect(b, INGEST_USER, b.password(INGEST_USER))
        assert accepted(rc), rc
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.subscribe("devices/#", qos=1)
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Everything received until ``(topic, payload)`` arrived (it included)."""
        with self._cond:
            assert self._cond.wait_for(lambda: (topic, payload) in self.got, timeout), (
                f"{topic} {payload!r} never arrived; got {self.got}"
            )
            return self.got[: self.got.index((topic, payload)) + 1]


def publish(client: mqtt.Client, topic: str, payload: bytes) -> ReasonCode:
    """QoS 1 publish; the PUBACK's reason (``Not authorized`` when the ACL refuses)."""
    acks: dict[int, ReasonCode] = {}
    done = threading.Event()

    def on_publish(_c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        acks[mid] = rc
        done.set()

    client.on_publish = on_publish
    info = client.publish(topic, payload, qos=1)
    assert done.wait(5), f"no PUBACK for {topic}"
    return acks[info.mid]


def test_devices_added_in_bulk_publish_and_removed_ones_are_refused(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    reader = Reader(broker)
    old = load_registry(broker.registry).devices[0].id
    # An existing device connected before the change and stays connected across it.
    old_client, rc = connect(broker, old, broker.password(old))
    assert accepted(rc), rc

    batch = tmp_path / "new.jsonl"
    new_ids = [f"bulk-{i:03d}" for i in range(3)]
    batch.write_text(
        "\n".join(
            json.dumps(
                {"id": d, "kind": "air", "lat": 25.05, "lon": 121.55, "township": "63000010"}
            )
            for d in new_ids
        ),
        encoding="utf-8",
    )
    added = broker.cli("devices", "add", "--file", str(batch))
    assert added.returncode == 0, added.stdout + added.stderr
    assert f"broker (pid {broker.pid}) reloaded" in added.stdout, added.stdout
    assert "3 password hash(es) computed" in added.stdout, added.stdout
    assert [d.id for d in load_registry(broker.registry).devices[-3:]] == new_ids

    # The new devices can connect and publish at once (same broker process).
    clients = {}
    for d in new_ids:
        clients[d], rc = connect(broker, d, broker.password(d))
        assert accepted(rc), (d, rc, broker.log()[-2000:])
        assert not publish(clients[d], f"devices/{d}/air", d.encode()).is_failure
        reader.wait_for(f"devices/{d}/air", d.encode())
    assert broker.running()

    gone = clients.pop(new_ids[0])
    removed = broker.cli("devices", "remove", new_ids[0])
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"broker (pid {broker.pid}) reloaded" in removed.stdout

    # The reload re-applies the credentials to connected clients: the removed device's
    # open connection is closed, and a new one is refused.
    deadline = time.monotonic() + 10
    while not dropped(gone):
        assert time.monotonic() < deadline, "the removed device's connection is still open"
        time.sleep(0.05)
    gone.loop_stop()
    refused, rc = connect(broker, new_ids[0], broker.password(new_ids[0]))
    disconnect(refused)
    assert rc is not None
    assert rc.getName() == "Not authorized", rc

    # The other devices, new and old, are unaffected, the open old connection included;
    # and the removed device's message never reached the reader (the marker comes after).
    for d, c in clients.items():
        assert not publish(c, f"devices/{d}/air", b"still here").is_failure
    assert not publish(old_client, f"devices/{old}/air", b"marker").is_failure
    reader.wait_for(f"devices/{old}/air", b"marker")
    fresh, rc = connect(broker, old, broker.password(old))
    assert accepted(rc), rc
    # Nobody else was disconnected by either reload, and the broker never restarted.
    for c in (*clients.values(), old_client, reader.client):
        assert dropped(c) == []
    for c in (*clients.values(), old_client, fresh, reader.client):
        disconnect(c)
    assert broker.running()


def test_a_bad_batch_changes_nothing(broker: PrivateBroker, tmp_path: Path) -> None:
    before_registry = broker.registry.read_bytes()
    passwd = broker.data_dir / "mosquitto" / "passwd"
    before_passwd = passwd.read_bytes()
    existing = load_registry(broker.registry).devices[0].id
    batch = tmp_path / "bad.csv"
    batch.write_text(
        "id,kind,lat,lon,township\n"
        "ok-001,air,25.05,121.55,63000010\n"
        f"{existing},air,25.05,121.55,63000010\n"
        "civic-alerts,air,25.05,121.55,63000010\n"
        "no/slash,air,25.05,121.55,63000010\n"
        "ok-002,air,25.05,121.55,99999999\n",
        encoding="utf-8",
    )
    out = broker.cli("devices", "add", "--file", str(batch))
    assert out.returncode == 1
    for expected in (
        f"line 3 (id '{existing}'): already registered",
        "line 4 (id 'civic-alerts'): the id is an MQTT service account",
        "line 5 (id 'no/slash'): not a valid device id",
        "line 6 (id 'ok-002'): unknown township '99999999'",
    ):
        assert expected in out.stdout, out.stdout
    assert "line 2" not in out.stdout
    assert broker.registry.read_bytes() == before_registry
    assert passwd.read_bytes() == before_passwd
    # A device of the refused batch cannot connect.
    client, rc = connect(broker, "ok-001", broker.password("ok-001"))
    disconnect(client)
    assert not accepted(rc), rc


def test_topics_created_listed_and_deleted_by_prefix(stack: Settings, unique: str) -> None:
    prefix = f"t-cli-{unique}."
    topology = Topology.of(stack).with_prefix(prefix)
    names = [s.name for s in topology.specs()]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "topics", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        created = cli("create", "--prefix", prefix)
        assert created.returncode == 0, created.stdout + created.stderr
        assert f"{len(names)} topic(s) created, 0 already there" in created.stdout
        counts = asyncio.run(partition_counts(stack.kafka.bootstrap, names))
        assert counts == {s.name: s.partitions for s in topology.specs()}

        again = cli("create", "--prefix", prefix)
        assert f"0 topic(s) created, {len(names)} already there" in again.stdout, again.stdout

        listed = cli("list", "--prefix", prefix)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        for spec in topology.specs():
            assert spec.name in listed.stdout
        # Faust's changelogs are listed too, as missing (no worker ran on this prefix),
        # and listing them did not create them.
        assert topology.changelog("air-state") in listed.stdout
        assert "missing" in listed.stdout
        changelogs = [topology.changelog(t) for t in TABLES]
        assert asyncio.run(wait_for_topics(stack.kafka.bootstrap, changelogs, 0)) == changelogs

        for refused_prefix in ("", "alerts", "a"):
            refused = cli("delete", "--prefix", refused_prefix, "--yes")
            assert refused.returncode == 1, refused.stdout
            assert "refused" in refused.stdout

        deleted = cli("delete", "--prefix", prefix, "--yes")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert f"deleted {len(names)} topic(s)" in deleted.stdout
    finally:
        cli("delete", "--prefix", prefix, "--yes")
    # Deleted topics leave the broker's list shortly after the call returns (listed, not
    # described: describing a missing topic would create it on this broker).
    deadline = time.monotonic() + 30
    while set(asyncio.run(wait_for_topics(stack.kafka.bootstrap, names, 0))) != set(names):
        assert time.monotonic() < deadline, "topics still there after delete"
        time.sleep(0.5)


def test_a_stage_counts_as_consumed_once_its_group_committed_to_the_end(
    stack: Settings, unique: str
) -> None:
    """What the e2e drain (ops.pipeline.wait_consumed) waits on, on the real Kafka."""
    topic, group = f"t-lag-{unique}", f"t-lag-{unique}"
    bootstrap = stack.kafka.bootstrap

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 2, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for p in (0, 1, 1):
                await producer.send_and_wait(topic, b"x", partition=p)
            behind = await group_lag(stack, group, [topic], timeout_s=0)
            assert sorted(behind) == [f"{topic}[0] -/1", f"{topic}[1] -/2"]
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            try:
                got = 0
                async with asyncio.timeout(30):
                    while got < 3:
                        batch = await consumer.getmany(timeout_ms=500)
                        got += sum(len(r) for r in batch.values())
                # Consumed but not committed: still behind.
                assert len(await group_lag(stack, group, [topic], timeout_s=0)) == 2
                await consumer.commit()
            finally:
                await consumer.stop()
            assert await group_lag(stack, group, [topic], timeout_s=5) == []
        finally:
            await producer.stop()
            await admin.delete_topics([topic])
            await admin.close()

    asyncio.run(run())
