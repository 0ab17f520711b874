"""``civic_iot.mqtt`` against the real Mosquitto: service accounts from the data dir's
secrets, a unique alert root per test (``runs/{unique}/alerts``, which ``civic-alerts`` may
write and ``civic-subscriber`` may read). The shared broker is never restarted: a dropped
connection is made from this side (the socket shut down, or the client id taken over)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from civic_iot.accounts import ALERTS_USER, SUBSCRIBER_USER
from civic_iot.mqtt import Message, MqttConnection, MqttError, Reason
from civic_iot.settings import Settings, mqtt_password

pytestmark = pytest.mark.integration


class Side:
    """One connection with what it received and how its connections went."""

    def __init__(self, settings: Settings, user: str, client_id: str, **kwargs: object) -> None:
        self.messages: list[Message] = []
        self.connects: list[bool] = []
        self.disconnects: list[Reason] = []
        self.conn = MqttConnection(
            host=settings.mqtt.host,
            port=settings.mqtt.port,
            client_id=client_id,
            username=user,
            password=mqtt_password(settings, user),
            on_messages=self.messages.extend,
            on_connect=self.connects.append,
            on_disconnect=self.disconnects.append,
            **kwargs,  # type: ignore[arg-type]
        )

    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


class _Fixed:
    """A random source that always returns one value (the backoff's jitter)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


async def until(what: Callable[[], bool], timeout_s: float, why: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def pair(stack: Settings, unique: str) -> AsyncIterator[tuple[Side, Side, str]]:
    """A publisher (civic-alerts) and a subscriber (civic-subscriber) on this test's root."""
    root = f"runs/{unique}/alerts"
    # The publisher's reconnect waits most of its first backoff window (0.9 s of [0, 1)).
    pub = Side(stack, ALERTS_USER, f"test-mqtt-pub-{unique}", rng=_Fixed(0.9))
    sub = Side(stack, SUBSCRIBER_USER, f"test-mqtt-sub-{unique}")
    for side in (pub, sub):
        side.conn.start()
        await side.conn.wait_connected(10)
    granted = await asyncio.wait_for(sub.conn.subscribe(f"{root}/#", qos=1), 10)
    assert [rc.value for rc in granted] == [1]
    try:
        yield pub, sub, root
    finally:
        for side in (pub, sub):
            await side.conn.stop()


def test_publish_qos1_is_acknowledged_and_received(stack: Settings, unique: str) -> None:
    asyncio.run(_publish_and_receive(stack, unique))


async def _publish_and_receive(stack: Settings, unique: str) -> None:
    async with pair(stack, unique) as (pub, sub, root):
        await _first(pub, sub, root)


async def _first(pub: Side, sub: Side, root: str) -> None:
    ack = await asyncio.wait_for(pub.conn.publish(f"{root}/flood/1", b"first"), 10)
    assert not ack.is_failure
    await until(lambda: sub.payloads() == [b"first"], 10, f"subscriber got {sub.payloads()}")
    [msg] = sub.messages
    assert (msg.topic, msg.qos, msg.retain) == (f"{root}/flood/1", 1, False)


def test_a_publish_the_acl_forbids_is_acknowledged_with_a_refusal(
    stack: Settings, unique: str
) -> None:
    """The subscriber account may only read: the PUBACK says so, the future carries it."""
    asyncio.run(_forbidden(stack, unique))


async def _forbidden(stack: Settings, unique: str) -> None:
    side = Side(stack, SUBSCRIBER_USER, f"test-mqtt-ro-{unique}")
    side.conn.start()
    try:
        await side.conn.wait_connected(10)
        ack = await asyncio.wait_for(side.conn.publish(f"runs/{unique}/alerts/x", b"no"), 10)
        assert (ack.value, ack.name, ack.is_failure) == (0x87, "Not authorized", True)
    finally:
        await side.conn.stop()


def test_a_cut_connection_comes_back_and_sends_what_waited_once(
    stack: Settings, unique: str
) -> None:
    asyncio.run(_cut(stack, unique))


async def _cut(stack: Settings, unique: str) -> None:
    async with pair(stack, unique) as (pub, sub, root):
        await _cut_and_resend(pub, sub, root)


async def _cut_and_resend(pub: Side, sub: Side, root: str) -> None:
    sock = pub.conn.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # the network goes away under paho
    await until(lambda: not pub.conn.connected, 10, "the cut was not noticed")
    waiting = pub.conn.publish(f"{root}/flood/2", b"while down")  # paho keeps it
    assert not pub.conn.connected
    await pub.conn.wait_connected(10)  # reconnected by itself, after the backoff
    assert len(pub.connects) == 2
    assert not (await asyncio.wait_for(waiting, 10)).is_failure
    # A later message marks the end: anything sent twice would have arrived before it.
    await asyncio.wait_for(pub.conn.publish(f"{root}/flood/2", b"marker"), 10)
    await until(lambda: b"marker" in sub.payloads(), 10, f"subscriber got {sub.payloads()}")
    assert sub.payloads() == [b"while down", b"marker"]


def test_a_client_id_taken_over_reconnects_and_resumes_its_session(
    stack: Settings, unique: str
) -> None:
    """A persistent session (as ingest's): the broker drops us for another client with our
    id; we reconnect after the backoff, and what was published meanwhile is delivered."""
    asyncio.run(_taken_over(stack, unique))


async def _taken_over(stack: Settings, unique: str) -> None:
    cid = f"test-mqtt-session-{unique}"
    root = f"runs/{unique}/alerts"
    sub = Side(
        stack,
        SUBSCRIBER_USER,
        cid,
        clean_start=False,
        session_expiry_s=60,
        manual_ack=True,
    )
    sub.conn.start()
    pub = Side(stack, ALERTS_USER, f"test-mqtt-pub-{unique}")
    pub.conn.start()
    try:
        await sub.conn.wait_connected(10)
        await pub.conn.wait_connected(10)
        await asyncio.wait_for(sub.conn.subscribe(f"{root}/#", qos=1), 10)
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        intruder.username_pw_set(SUBSCRIBER_USER, mqtt_password(stack, SUBSCRIBER_USER))
        keep = Properties(PacketTypes.CONNECT)
        keep.SessionExpiryInterval = 60  # resumes the session and leaves it in place
        intruder.connect(stack.mqtt.host, stack.mqtt.port, clean_start=False, properties=keep)
        try:
            await until(lambda: bool(sub.disconnects), 10, "the broker did not drop us")
            # The session (and its subscription) lives on while we are away.
            await asyncio.wait_for(pub.conn.publish(f"{root}/x", b"meanwhile"), 10)
        finally:
            intruder.disconnect()
        await until(lambda: len(sub.connects) == 2, 15, "did not reconnect")
        assert sub.connects[1] is True  # session present
        await until(lambda: b"meanwhile" in sub.payloads(), 10, f"got {sub.payloads()}")
        sub.conn.ack([m.mid for m in sub.messages if m.qos == 1])
    finally:
        await pub.conn.stop()
        await sub.conn.stop()
        forget = Side(stack, SUBSCRIBER_USER, cid, clean_start=True)  # drop the session
        forget.conn.start()
        await forget.conn.wait_connected(10)
        await forget.conn.stop()


def test_wrong_credentials_are_refused_and_named(stack: Settings, unique: str) -> None:
    asyncio.run(_refused(stack, unique))


async def _refused(stack: Settings, unique: str) -> None:
    conn = MqttConnection(
        host=stack.mqtt.host,
        port=stack.mqtt.port,
        client_id=f"test-mqtt-bad-{unique}",
        username=ALERTS_USER,
        password="not-the-password",
        retry_refused=False,
    )
    conn.start()
    try:
        with pytest.raises(MqttError, match=r"civic-alerts.*refused"):
            await conn.wait_connected(3)
        assert conn.gave_up
    finally:
        await conn.stop()


def test_stop_says_goodbye_and_releases_the_socket(stack: Settings, unique: str) -> None:
    asyncio.run(_stop(stack, unique))


async def _stop(stack: Settings, unique: str) -> None:
    side = Side(stack, ALERTS_USER, f"test-mqtt-stop-{unique}")
    side.conn.start()
    await side.conn.wait_connected(10)
    await side.conn.stop()
    assert side.conn.client.socket() is None
    assert not side.conn.connected
    [reason] = side.disconnects
    assert not reason.is_failure  # our own DISCONNECT, not a lost connection
