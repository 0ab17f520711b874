"""MQTT over TLS against a real Mosquitto: the listener ``deploy/stack.sh`` opens on 8883.

Each test runs a Mosquitto of its own on free ports, configured and given its local CA
and certificate exactly as ``deploy/stack.sh up`` does (``ops.broker.prepare``: the shared
settings, a plain listener on 127.0.0.1 and a TLS one; started as root it drops to the
``mosquitto`` account), with its own data dir and a copy of the registry: the shared
broker, started before this listener existed, is never touched.

What must hold: a device publishes over TLS and the real ingest process, connected over
TLS, takes the reading to Kafka; so do the simulator's fleet and the alert channel when
asked; a client that does not trust the local CA is refused before it sends anything;
nothing readable (user name, password, payload) crosses the wire of that listener; a
plain MQTT client gets no answer from it; paho's reader and ingest's own both get every
message, in order, over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerts.cap import DEFAULT_CAP_CONFIG
from alerts.delivery import MqttChannel
from civic_iot.accounts import ALERTS_USER, INGEST_USER
from civic_iot.kafka_admin import ensure_topics
from civic_iot.mqtt import Message, MqttConnection, MqttError
from civic_iot.registry import Registry, device_password, device_secret, load_registry
from civic_iot.settings import Settings, mqtt_password
from civic_iot.topology import Topology
from ops import broker
from ops.mark_key import ensure_mark_key
from ops.pipeline import free_port
from simulator.publisher import publish_all
from simulator.scenario import SimMessage
from tests.integration.helpers import read_topic, reading, start_process

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class TlsBroker:
    """A private Mosquitto with a plain and a TLS listener, and the settings to reach it."""

    settings: Settings
    registry: Registry
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def tls_port(self) -> int:
        return self.settings.mqtt.tls_port

    @property
    def ca(self) -> Path:
        return broker.TlsFiles.of(self.data_dir).ca_crt

    def password(self, user: str) -> str:
        return device_password(device_secret(self.data_dir), user)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def env(self) -> dict[str, str]:
        """What a civic-iot process needs to use this broker over TLS."""
        return {
            "CIVIC_DATA_DIR": str(self.data_dir),
            "CIVIC_REGISTRY": str(self.settings.registry),
            "CIVIC_MQTT__PORT": str(self.settings.mqtt.port),
            "CIVIC_MQTT__TLS": "true",
            "CIVIC_MQTT__TLS_PORT": str(self.tls_port),
        }


def _broker_user() -> str:
    """As ``deploy/stack.sh``: the invoking user, or ``mosquitto`` when that is root."""
    if os.geteuid() != 0:
        return getpass.getuser()
    pwd.getpwnam("mosquitto")  # KeyError: the Debian package was not installed
    return "mosquitto"


@pytest.fixture
def tls_broker(settings: Settings, tmp_path: Path) -> Iterator[TlsBroker]:
    data = tmp_path / "civic"
    registry_file = tmp_path / "devices.yaml"
    shutil.copy(settings.registry, registry_file)
    s = settings.model_copy(
        update={
            "data_dir": data,
            "registry": registry_file,
            "mqtt": settings.mqtt.model_copy(
                update={"port": free_port(), "tls_port": free_port(), "tls": True}
            ),
        }
    )
    registry = load_registry(registry_file)
    user = _broker_user()
    listeners = [
        broker.Listener(s.mqtt.port, "127.0.0.1"),
        broker.Listener(s.mqtt.tls_port, "127.0.0.1", tls=True),
    ]
    assert broker.prepare(data, listeners, user=user) is True
    assert broker.prepare(data, listeners, user=user) is False  # idempotent
    broker.sync(registry, data)
    ensure_mark_key(data)  # as deploy/stack.sh up: ingest refuses to start without it
    work = broker.broker_dir(data)
    if os.geteuid() == 0:  # as deploy/stack.sh: the folder belongs to the broker's account
        account = pwd.getpwnam(user)
        for path in [work, *work.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
    b = TlsBroker(s, registry, log_path=work / "mosquitto.log")
    log = b.log_path.open("ab")
    b.proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(work / "mosquitto.conf")],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert b.proc.poll() is None, b.log()
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", s.mqtt.tls_port), timeout=1).close()
                break
            assert time.monotonic() < deadline, f"private mosquitto not up:\n{b.log()}"
            time.sleep(0.1)
        yield b
    finally:
        b.proc.terminate()
        b.proc.wait(10)
        log.close()


# ------------------------------------------------------------------ a recording proxy


class Recorder:
    """A TCP relay on a free port of 127.0.0.1 that keeps every byte the client sends."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.sent = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()


# ------------------------------------------------------------------ tests


def test_the_broker_does_not_run_as_root(tls_broker: TlsBroker) -> None:
    assert tls_broker.proc is not None
    status = Path(f"/proc/{tls_broker.proc.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert "0" not in uids, status
    conf = (broker.broker_dir(tls_broker.data_dir) / "mosquitto.conf").read_text()
    assert f"listener {tls_broker.tls_port} 127.0.0.1\ncertfile tls/server.crt" in conf


def test_tls_files_are_private_from_the_start(tls_broker: TlsBroker) -> None:
    files = broker.TlsFiles.of(tls_broker.data_dir)
    copy = broker.broker_dir(tls_broker.data_dir) / "tls"
    for key in (files.ca_key, files.server_key, copy / "server.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert files.dir.stat().st_mode & 0o777 == 0o700


def _air(device: str, n: int, start_s: int) -> list[SimMessage]:
    return [
        SimMessage(
            device_id=device,
            kind="air",
            topic=f"devices/{device}/air",
            payload=reading((start_s + i) * 1000, pm2_5_ugm3=10 + i % 7).encode(),
            event_time=datetime.fromtimestamp(start_s + i, UTC),
            at_s=0.0,
            sender=device,
        )
        for i in range(n)
    ]


def test_simulated_devices_publish_over_tls_and_ingest_takes_it_to_kafka(
    tls_broker: TlsBroker, unique: str, tmp_path: Path
) -> None:
    """The real ingest process, on TLS, and the simulator's fleet (``simulate --tls``)."""
    prefix = f"t{unique}."
    topology = Topology(prefix=prefix, partitions=tls_broker.settings.kafka.partitions)
    asyncio.run(ensure_topics(tls_broker.settings.kafka.bootstrap, topology))
    log = tmp_path / "ingest.log"
    # The plain port named to both is closed: whatever connects went through TLS.
    closed = free_port()
    s = tls_broker.settings.model_copy(
        update={"mqtt": tls_broker.settings.mqtt.model_copy(update={"port": closed})}
    )
    env = {
        **tls_broker.env,
        "CIVIC_MQTT__PORT": str(closed),
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_INGEST__INSTANCE": f"t{unique}",
        "CIVIC_INGEST__HTTP_PORT": "0",
        "CIVIC_MQTT__SESSION_EXPIRY_S": "60",
    }
    proc = start_process(["ingest"], env, log)
    try:
        deadline = time.monotonic() + 30
        while "mqtt connected" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        devices = [d.id for d in tls_broker.registry.of_kind("air")[:3]]
        start_s = int(time.time()) - 600
        messages = sorted(
            (m for d in devices for m in _air(d, 200, start_s)), key=lambda m: m.device_id
        )
        report = publish_all(messages, s, fast=True, connect_timeout_s=20)
        assert report.acknowledged == len(messages), report
        got = asyncio.run(
            read_topic(
                tls_broker.settings.model_copy(
                    update={
                        "kafka": tls_broker.settings.kafka.model_copy(
                            update={"topic_prefix": prefix}
                        )
                    }
                ),
                topology.readings("air"),
                want=len(messages),
                timeout_s=60,
            )
        )
        ids = {json.loads(v)["reading_id"] for _, v in got}
        assert len(ids) == len(messages)
        assert {i.split(":")[0] for i in ids} == set(devices)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("reader", ["paho", "own"])
def test_every_message_arrives_over_tls_whatever_the_reader(
    tls_broker: TlsBroker, unique: str, reader: str
) -> None:
    """2,000 messages, several per TLS record: each reader gets them all, in order."""
    device = tls_broker.registry.of_kind("water")[0].id
    topic = f"devices/{device}/water"
    n = 2000

    async def run() -> list[Message]:
        got: list[Message] = []
        done = asyncio.Event()
        sub: MqttConnection

        def on_messages(batch: list[Message]) -> None:
            got.extend(batch)
            sub.ack([m.mid for m in batch])
            if len(got) >= n:
                done.set()

        sub = MqttConnection(
            host="127.0.0.1",
            port=tls_broker.tls_port,
            tls_ca=tls_broker.ca,
            client_id=f"t-sub-{unique}",
            username=INGEST_USER,
            password=mqtt_password(tls_broker.settings, INGEST_USER),
            manual_ack=True,
            reader=reader,  # type: ignore[arg-type]
            receive_maximum=n,
            on_messages=on_messages,
        )
        pub = MqttConnection(
            host="localhost",
            port=tls_broker.tls_port,
            tls_ca=tls_broker.ca,
            client_id=f"t-pub-{unique}",
            username=device,
            password=tls_broker.password(device),
            max_inflight=1000,
        )
        sub.start()
        pub.start()
        try:
            await sub.wait_connected(10)
            await pub.wait_connected(10)
            await sub.subscribe(topic, qos=1)
            acks = [pub.publish(topic, f"{i:05d}" + "x" * 300) for i in range(n)]
            assert not any(r.is_failure for r in await asyncio.gather(*acks))
            await asyncio.wait_for(done.wait(), 30)
            return got
        finally:
            await pub.stop()
            await sub.stop()

    got = asyncio.run(run())
    assert [m.payload[:5].decode() for m in got] == [f"{i:05d}" for i in range(n)]


def test_nothing_readable_crosses_the_tls_listener(tls_broker: TlsBroker, unique: str) -> None:
    device = tls_broker.registry.of_kind("air")[0].id
    password = tls_broker.password(device)
    relay = Recorder(tls_broker.tls_port)

    async def run() -> None:
        conn = MqttConnection(
            host="127.0.0.1",  # the relay's address: the certificate names it too
            port=relay.port,
            tls_ca=tls_broker.ca,
            client_id=f"t-{unique}",
            username=device,
            password=password,
        )
        conn.start()
        try:
            await conn.wait_connected(10)
            reason = await asyncio.wait_for(
                conn.publish(f"devices/{device}/air", f"secret-payload-{unique}"), 10
            )
            assert not reason.is_failure
        finally:
            await conn.stop()

    try:
        asyncio.run(run())
    finally:
        relay.close()
    sent = bytes(relay.sent)
    assert sent[:1] == b"\x16"  # a TLS handshake record, not an MQTT CONNECT (0x10)
    for clear in (password, device, f"secret-payload-{unique}", "MQTT"):
        assert clear.encode() not in sent, clear


def test_a_client_that_does_not_trust_the_local_ca_is_refused(
    tls_broker: TlsBroker, unique: str, tmp_path: Path
) -> None:
    device = tls_broker.registry.of_kind("air")[0].id
    password = tls_broker.password(device)
    relay = Recorder(tls_broker.tls_port)
    try:
        # The system's trust store: the local CA is not in it.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{unique}")
        client.username_pw_set(device, password)
        client.tls_set()
        with pytest.raises(ssl.SSLCertVerificationError):
            client.connect("127.0.0.1", relay.port)
        # Another CA (an impostor broker's, as far as the client knows): refused too.
        other = tmp_path / "other"
        broker.ensure_tls(other)

        async def run() -> None:
            conn = MqttConnection(
                host="127.0.0.1",
                port=relay.port,
                tls_ca=broker.TlsFiles.of(other).ca_crt,
                client_id=f"t-{unique}-b",
                username=device,
                password=password,
                retry_refused=False,
            )
            conn.start()
            try:
                with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED"):
                    await conn.wait_connected(3)
            finally:
                await conn.stop()

        asyncio.run(run())
    finally:
        relay.close()
    assert password.encode() not in bytes(relay.sent)
    assert device.encode() not in bytes(relay.sent)


def test_a_plain_client_gets_nothing_from_the_tls_listener(
    tls_broker: TlsBroker, unique: str
) -> None:
    """A device configured without TLS is never accepted there (no CONNACK, ever)."""
    device = tls_broker.registry.of_kind("air")[0].id
    connacks: list[object] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{unique}", protocol=mqtt.MQTTv5)
    client.username_pw_set(device, tls_broker.password(device))
    client.on_connect = lambda *args: connacks.append(args[3])
    closed = threading.Event()
    client.on_disconnect = lambda *_: closed.set()
    client.connect("127.0.0.1", tls_broker.tls_port)
    client.loop_start()
    try:
        assert closed.wait(10), "the TLS listener kept a plain MQTT connection open"
    finally:
        client.loop_stop()
    assert connacks == []


def test_the_alert_channel_connects_over_tls(tls_broker: TlsBroker) -> None:
    async def report(_result: object) -> None:
        return None

    async def run() -> str:
        channel = MqttChannel(
            host="127.0.0.1",
            port=tls_broker.tls_port,
            tls_ca=tls_broker.ca,
            username=ALERTS_USER,
            password=SecretStr(mqtt_password(tls_broker.settings, ALERTS_USER)),
            status="Exercise",
            report=report,
            cap_config=DEFAULT_CAP_CONFIG,
        )
        await channel.start(timeout_s=10)
        try:
            assert channel.connected
            return repr(channel._mqtt)
        finally:
            await channel.close()

    assert asyncio.run(run()).endswith("(tls)")
