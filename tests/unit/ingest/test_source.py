"""``MqttSource`` reading paho's packets from a buffer: no broker, a scripted socket."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import cast

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from civic_iot.settings import Settings
from ingest.service import Inbound, MqttSource


def publish(topic: str, payload: bytes, mid: int) -> bytes:
    """An MQTT 5 PUBLISH, QoS 1, no properties."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + b"\x00" + payload
    n, length = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (128 if n else 0)])
        if not n:
            break
    return b"\x32" + length + body


class ScriptedSocket:
    """What the kernel would hand out: one chunk per recv, then 'nothing now'."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.recvs = 0
        self.sent: list[bytes] = []
        self.eof = False  # the peer closed: every read from now on returns b""
        self._fd: int | None = None

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def recv(self, bufsize: int) -> bytes:
        self.recvs += 1
        if not self.chunks:
            if self.eof:
                return b""
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        if len(chunk) > bufsize:  # paho asks for a byte or two at a time
            self.chunks.insert(0, chunk[bufsize:])
        return chunk[:bufsize]

    def fileno(self) -> int:
        if self._fd is None:  # a real descriptor, for the loop to unregister on close
            self._fd = os.open(os.devnull, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@pytest.fixture
def source() -> Iterator[MqttSource]:
    base = Settings(_env_file=None)
    settings = base.model_copy(
        update={"mqtt": base.mqtt.model_copy(update={"ingest_password": SecretStr("x")})}
    )
    loop = asyncio.new_event_loop()
    source = MqttSource(settings, loop)
    source.client._sock = ScriptedSocket()  # type: ignore[assignment]
    yield source
    loop.close()


def test_one_read_parses_every_packet_that_came_and_keeps_a_partial_one(
    source: MqttSource,
) -> None:
    sock = cast(ScriptedSocket, source.client._sock)
    packets = [publish(f"devices/air-{i}/air", b'{"ts":%d}' % i, i + 1) for i in range(4)]
    packets.append(publish("devices/quake-1/seismic", b"x" * 300, 5))  # 2-byte length
    stream = b"".join(packets)
    cut = len(stream) - 100  # the last packet arrives in two pieces
    sock.chunks = [stream[:cut]]
    source._read()
    got = source.take(100)
    assert [(m.topic, m.payload, m.mid, m.qos) for m in got] == [
        (f"devices/air-{i}/air", b'{"ts":%d}' % i, i + 1, 1) for i in range(4)
    ]
    assert sock.recvs == 1  # one read for all of them: not three reads per packet
    sock.chunks = [stream[cut:]]
    source._read()
    [last] = source.take(100)
    assert (last.topic, last.payload, last.mid) == ("devices/quake-1/seismic", b"x" * 300, 5)
    assert not source.client.buffered


def test_packets_split_anywhere_come_out_whole(source: MqttSource) -> None:
    sock = cast(ScriptedSocket, source.client._sock)
    stream = b"".join(publish("devices/w-1/water", b"%d" % i, i + 1) for i in range(50))
    for i in range(0, len(stream), 7):
        sock.chunks = [stream[i : i + 7]]
        source._read()
    assert [m.payload for m in source.take(100)] == [b"%d" % i for i in range(50)]


def raw_publish(header: int, topic: bytes, mid: int | None, props: bytes, payload: bytes) -> bytes:
    """Any MQTT 5 PUBLISH: ``props`` is the encoded properties, their length included."""
    body = struct.pack("!H", len(topic)) + topic
    body += b"" if mid is None else struct.pack("!H", mid)
    body += props + payload
    assert len(body) < 128
    return bytes([header, len(body)]) + body


@pytest.mark.parametrize(
    "packet",
    [
        raw_publish(0x32, b"devices/a-1/air", 7, b"\x00", b'{"ts":1}'),  # the shortcut
        raw_publish(0x3B, b"devices/a-1/air", 8, b"\x00", b"{}"),  # dup and retain flags
        raw_publish(0x32, b"devices/a-1/air", 9, b"\x00", b""),  # empty payload
        raw_publish(0x32, b"devices/a-1/air", 10, b"\x02\x01\x01", b"{}"),  # a property
        raw_publish(0x30, b"devices/a-1/air", None, b"\x00", b"{}"),  # QoS 0: no packet id
        raw_publish(0x32, b"d/\xc3\xa9", 11, b"\x00", b"x"),  # UTF-8 topic
        raw_publish(0x32, b"", 13, b"\x00", b"x"),  # empty topic (topic alias in use)
    ],
)
def test_messages_are_what_paho_itself_makes_of_the_packet(
    source: MqttSource, packet: bytes
) -> None:
    got: list[tuple[object, ...]] = []
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    plain.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), m.mid, m.qos))
    sock = ScriptedSocket()
    sock.chunks = [packet]
    plain._sock = sock  # type: ignore[assignment]
    for _ in range(10):  # paho reads a packet in a few calls
        if plain.loop_read() != mqtt.MQTT_ERR_SUCCESS or got:
            break
    assert len(got) == 1

    cast(ScriptedSocket, source.client._sock).chunks = [packet * 3]  # and in one read
    source._read()
    assert [tuple(m)[:4] for m in source.take(10)] == got * 3


def test_a_publish_paho_parses_keeps_its_place_among_sliced_ones(source: MqttSource) -> None:
    with_property = raw_publish(0x32, b"devices/a-1/air", 2, b"\x02\x01\x01", b"2")
    stream = (
        publish("devices/a-1/air", b"1", 1) + with_property + publish("devices/a-1/air", b"3", 3)
    )
    cast(ScriptedSocket, source.client._sock).chunks = [stream]
    source._read()
    assert [(m.payload, m.mid) for m in source.take(10)] == [(b"1", 1), (b"2", 2), (b"3", 3)]


def test_other_packets_reach_paho_in_order_between_publishes(source: MqttSource) -> None:
    """A SUBACK and a PINGRESP amid readings: paho handles them, the readings still come."""
    subacks: list[int] = []
    source.client.on_subscribe = lambda _c, _u, mid, _rc, _p: subacks.append(mid)
    source.client._ping_t = 1.0  # a PINGREQ is out
    suback = b"\x90\x04\x00\x05\x00\x01"  # packet id 5, no properties, granted QoS 1
    pingresp = b"\xd0\x00"
    stream = (
        publish("devices/a-1/air", b"1", 1)
        + suback
        + publish("devices/a-1/air", b"2", 2)
        + pingresp
        + publish("devices/a-1/air", b"3", 3)
    )
    cast(ScriptedSocket, source.client._sock).chunks = [stream]
    source._read()
    assert [m.payload for m in source.take(10)] == [b"1", b"2", b"3"]
    assert subacks == [5]
    assert source.client._ping_t == 0  # paho saw the PINGRESP
    assert not source.client.buffered


def test_a_closed_connection_goes_through_pahos_disconnect(source: MqttSource) -> None:
    reasons: list[object] = []
    source.client.on_disconnect = lambda _c, _u, _f, rc, _p: reasons.append(rc)
    source.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    sock = cast(ScriptedSocket, source.client._sock)
    sock.eof = True
    source._read()
    assert source.client.socket() is None
    assert len(reasons) == 1


def test_a_malformed_length_is_a_protocol_error_not_a_hang(source: MqttSource) -> None:
    reasons: list[object] = []
    source.client.on_disconnect = lambda _c, _u, _f, rc, _p: reasons.append(rc)
    source.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    good = publish("devices/a-1/air", b"1", 1)
    cast(ScriptedSocket, source.client._sock).chunks = [good + b"\x32\xff\xff\xff\xff\x01"]
    source._read()
    assert [m.payload for m in source.take(10)] == [b"1"]
    assert source.client.socket() is None
    assert len(reasons) == 1


def test_connection_attempts_back_off_exponentially_up_to_the_cap(
    source: MqttSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    attempts: list[int] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    def reconnect() -> int:
        attempts.append(1)
        if len(attempts) < 8:
            raise ConnectionRefusedError(111, "refused")
        return 0

    monkeypatch.setattr("ingest.service.asyncio.sleep", fake_sleep)
    monkeypatch.setattr(source.client, "reconnect", reconnect)
    asyncio.run(source._connect_loop())
    assert len(attempts) == 8
    assert slept == [1, 2, 4, 8, 16, 30, 30]  # the first attempt at once


def test_a_drop_reconnects_after_the_minimum_delay_not_at_once(
    source: MqttSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    async def scenario() -> None:
        monkeypatch.setattr("ingest.service.asyncio.sleep", fake_sleep)
        monkeypatch.setattr(source.client, "reconnect", lambda: 0)
        monkeypatch.setattr(source.client, "subscribe", lambda *_a, **_k: (0, 1))
        source._loop = asyncio.get_running_loop()
        flags = mqtt.ConnectFlags(session_present=True)
        ok = ReasonCode(PacketTypes.CONNACK, "Success")
        source._on_connect(source.client, None, flags, ok, None)
        states = [source.connected]
        source._on_disconnect(source.client, None, None, ReasonCode(PacketTypes.DISCONNECT), None)
        states.append(source.connected)
        assert states == [True, False]
        assert source._connector is not None
        await source._connector

    asyncio.run(scenario())
    assert slept == [1]


def test_a_batch_of_pubacks_is_one_write_of_what_paho_would_send(source: MqttSource) -> None:
    def inbound(mid: int, qos: int = 1) -> Inbound:
        return Inbound("devices/a-1/air", b"{}", mid, qos, datetime.now(UTC))

    def written(client: mqtt.Client, ack: Callable[[], object]) -> list[bytes]:
        sock = ScriptedSocket()
        client._sock = sock  # type: ignore[assignment]
        client.on_socket_register_write = lambda *_: None
        client.on_socket_unregister_write = lambda *_: None
        ack()
        client.loop_write()
        return sock.sent

    batch = [inbound(7), inbound(0, qos=0), inbound(65535), inbound(1)]
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    one_by_one = written(plain, lambda: [plain.ack(i.mid, i.qos) for i in batch])
    assert len(one_by_one) == 3
    together = written(source.client, lambda: source.ack(batch))
    assert together == [b"".join(one_by_one)]
