"""``civic_iot.mqtt`` without a broker: a scripted socket and a recording loop.

The tests of the ``own`` reader are also the pin of the two private paho members it relies
on (``_sock_recv``, ``_packet_queue``): they compare its result with what paho itself makes
of the same bytes, so a paho release that changes either fails here, not in production.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import struct
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.mqtt import (
    RECONNECT_BASE_S,
    RECONNECT_CAP_S,
    Message,
    MqttConnection,
    MqttError,
    Reader,
    Reason,
)

REPO = Path(__file__).resolve().parents[3]


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


def raw_publish(header: int, topic: bytes, mid: int | None, props: bytes, payload: bytes) -> bytes:
    """Any MQTT 5 PUBLISH: ``props`` is the encoded properties, their length included."""
    body = struct.pack("!H", len(topic)) + topic
    body += b"" if mid is None else struct.pack("!H", mid)
    body += props + payload
    assert len(body) < 128
    return bytes([header, len(body)]) + body


class ScriptedSocket:
    """What the kernel would hand out: one chunk per recv, then 'nothing now'."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.recvs = 0
        self.sent: list[bytes] = []
        self.eof = False  # the peer closed: every read from now on returns b""
        self.full = False  # the send buffer is full: sends would block
        # A real descriptor, for the loop to register and unregister.
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def send(self, data: bytes) -> int:
        if self.full:
            raise BlockingIOError
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
        if self._pair is None:
            self._pair = socket.socketpair()
        return self._pair[0].fileno()

    def close(self) -> None:
        if self._pair is not None:
            for s in self._pair:
                s.close()
            self._pair = None


class Collected:
    def __init__(self) -> None:
        self.batches: list[list[Message]] = []
        self.connects: list[bool] = []
        self.disconnects: list[Reason] = []

    @property
    def messages(self) -> list[Message]:
        return [m for b in self.batches for m in b]


def make(reader: Reader = "own", **kwargs: Any) -> tuple[MqttConnection, ScriptedSocket, Collected]:
    got = Collected()
    kwargs.setdefault("manual_ack", True)
    conn = MqttConnection(
        host="127.0.0.1",
        port=1883,
        client_id="unit",
        username="u",
        password="p",
        reader=reader,
        on_messages=got.batches.append,
        on_connect=got.connects.append,
        on_disconnect=got.disconnects.append,
        **kwargs,
    )
    sock = ScriptedSocket()
    conn.client._sock = sock  # type: ignore[assignment]
    return conn, sock, got


@pytest.fixture(params=["own", "paho"])
def reader(request: pytest.FixtureRequest) -> Reader:
    return cast(Reader, request.param)


@pytest.fixture
def own() -> Iterator[tuple[MqttConnection, ScriptedSocket, Collected]]:
    conn, sock, got = make("own")
    yield conn, sock, got
    sock.close()


# ------------------------------------------------------------------ reading


def test_one_read_parses_every_packet_that_came_and_keeps_a_partial_one(
    own: tuple[MqttConnection, ScriptedSocket, Collected],
) -> None:
    conn, sock, got = own
    packets = [publish(f"devices/air-{i}/air", b'{"ts":%d}' % i, i + 1) for i in range(4)]
    packets.append(publish("devices/quake-1/seismic", b"x" * 300, 5))  # 2-byte length
    stream = b"".join(packets)
    cut = len(stream) - 100  # the last packet arrives in two pieces
    sock.chunks = [stream[:cut]]
    conn._on_readable()
    assert got.batches == [
        [Message(f"devices/air-{i}/air", b'{"ts":%d}' % i, i + 1, 1, False) for i in range(4)]
    ]
    assert sock.recvs == 1  # one read for all of them: not three reads per packet
    sock.chunks = [stream[cut:]]
    conn._on_readable()
    assert got.batches[1] == [Message("devices/quake-1/seismic", b"x" * 300, 5, 1, False)]
    assert not cast(Any, conn.client).buffered


def test_packets_split_anywhere_come_out_whole(reader: Reader) -> None:
    conn, sock, got = make(reader)
    stream = b"".join(publish("devices/w-1/water", b"%d" % i, i + 1) for i in range(50))
    for i in range(0, len(stream), 7):
        sock.chunks = [stream[i : i + 7]]
        conn._on_readable()
    assert [m.payload for m in got.messages] == [b"%d" % i for i in range(50)]


def test_the_paho_reader_takes_every_whole_packet_of_one_readable_event() -> None:
    conn, sock, got = make("paho")
    sock.chunks = [b"".join(publish("devices/a-1/air", b"%d" % i, i + 1) for i in range(30))]
    conn._on_readable()
    assert len(got.batches) == 1
    assert [m.mid for m in got.batches[0]] == list(range(1, 31))


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
def test_messages_are_what_paho_itself_makes_of_the_packet(packet: bytes) -> None:
    got: list[tuple[object, ...]] = []
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    plain.on_message = lambda _c, _u, m: got.append(
        (m.topic, bytes(m.payload), m.mid, m.qos, bool(m.retain))
    )
    sock = ScriptedSocket()
    sock.chunks = [packet]
    plain._sock = sock  # type: ignore[assignment]
    for _ in range(10):  # paho reads a packet in a few calls
        if plain.loop_read() != mqtt.MQTT_ERR_SUCCESS or got:
            break
    assert len(got) == 1

    for reader in ("own", "paho"):
        conn, scripted, collected = make(cast(Reader, reader))
        scripted.chunks = [packet * 3]  # and in one read
        for _ in range(3):
            conn._on_readable()
        assert [tuple(m) for m in collected.messages] == got * 3, reader


def test_a_publish_paho_parses_keeps_its_place_among_sliced_ones(
    own: tuple[MqttConnection, ScriptedSocket, Collected],
) -> None:
    conn, sock, got = own
    with_property = raw_publish(0x32, b"devices/a-1/air", 2, b"\x02\x01\x01", b"2")
    stream = (
        publish("devices/a-1/air", b"1", 1) + with_property + publish("devices/a-1/air", b"3", 3)
    )
    sock.chunks = [stream]
    conn._on_readable()
    assert [(m.payload, m.mid) for m in got.messages] == [(b"1", 1), (b"2", 2), (b"3", 3)]


def test_other_packets_reach_paho_in_order_between_publishes(
    own: tuple[MqttConnection, ScriptedSocket, Collected],
) -> None:
    """A SUBACK and a PINGRESP amid readings: paho handles them, the readings still come."""
    conn, sock, got = own

    async def scenario() -> list[Reason]:
        conn._loop = asyncio.get_running_loop()
        conn.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        suback = conn.subscribe("devices/#", qos=1)  # packet id 1
        conn.client._ping_t = 1.0  # a PINGREQ is out
        sock.chunks = [
            publish("devices/a-1/air", b"1", 1)
            + b"\x90\x04\x00\x01\x00\x01"  # SUBACK: packet id 1, no properties, QoS 1
            + publish("devices/a-1/air", b"2", 2)
            + b"\xd0\x00"  # PINGRESP
            + publish("devices/a-1/air", b"3", 3)
        ]
        conn._on_readable()
        return await asyncio.wait_for(suback, 1)

    granted = asyncio.run(scenario())
    assert [m.payload for m in got.messages] == [b"1", b"2", b"3"]
    assert [rc.value for rc in granted] == [1]
    assert conn.client._ping_t == 0  # paho saw the PINGRESP
    assert not cast(Any, conn.client).buffered


def test_a_closed_connection_goes_through_pahos_disconnect(reader: Reader) -> None:
    conn, sock, got = make(reader)
    conn.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    sock.eof = True
    conn._on_readable()
    assert conn.client.socket() is None
    assert len(got.disconnects) == 1


def test_a_malformed_length_is_a_protocol_error_not_a_hang(
    own: tuple[MqttConnection, ScriptedSocket, Collected],
) -> None:
    conn, sock, got = own
    conn.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    sock.chunks = [publish("devices/a-1/air", b"1", 1) + b"\x32\xff\xff\xff\xff\x01"]
    conn._on_readable()
    assert [m.payload for m in got.messages] == [b"1"]
    assert conn.client.socket() is None
    assert len(got.disconnects) == 1


# ------------------------------------------------------------------ acknowledging


def written(client: mqtt.Client, ack: Callable[[], object]) -> list[bytes]:
    sock = ScriptedSocket()
    client._sock = sock  # type: ignore[assignment]
    client.on_socket_register_write = lambda *_: None
    client.on_socket_unregister_write = lambda *_: None
    ack()
    client.loop_write()
    return sock.sent


def test_a_batch_of_pubacks_is_one_write_of_what_paho_would_send() -> None:
    mids = [7, 65535, 1]
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    one_by_one = written(plain, lambda: [plain.ack(mid, 1) for mid in mids])
    assert len(one_by_one) == 3
    own, _, _ = make("own")
    assert written(own.client, lambda: own.ack(mids)) == [b"".join(one_by_one)]
    public, _, _ = make("paho")
    assert written(public.client, lambda: public.ack(mids)) == one_by_one


def test_the_private_paho_members_the_own_reader_uses_are_there() -> None:
    """The own reader overrides ``_sock_recv`` and calls ``_packet_queue``: a clear failure
    if a paho release renames them or changes their parameters."""
    assert list(inspect.signature(mqtt.Client._sock_recv).parameters) == ["self", "bufsize"]
    assert list(inspect.signature(mqtt.Client._packet_queue).parameters) == [
        "self",
        "command",
        "packet",
        "mid",
        "qos",
        "info",
    ]


def test_the_installed_paho_is_the_pinned_one() -> None:
    """The reader is proven against one paho release: pyproject and constraints pin it."""
    pins = {
        path: re.findall(r"paho-mqtt==([\w.]+)", (REPO / path).read_text())
        for path in ("pyproject.toml", "constraints.txt")
    }
    assert pins == {path: [version("paho-mqtt")] for path in pins}


# ------------------------------------------------------------------ publishing


def test_a_puback_resolves_the_publish_future_on_the_loop() -> None:
    conn, sock, _ = make("paho", manual_ack=False)

    async def scenario() -> Reason:
        conn._loop = asyncio.get_running_loop()
        ack = conn.publish("alerts/flood/1", b"{}", retain=True)
        [mid] = list(conn._acks)
        await asyncio.sleep(0)  # the loop writes what paho queued
        assert sock.sent == [
            raw_publish(0x33, b"alerts/flood/1", mid, b"\x00", b"{}"),
        ]
        assert not ack.done()
        sock.chunks = [bytes([0x40, 2]) + struct.pack("!H", mid)]  # PUBACK, success
        conn._on_readable()
        return await asyncio.wait_for(ack, 1)

    assert not asyncio.run(scenario()).is_failure


def test_send_hands_the_puback_to_the_hook_without_a_future() -> None:
    published: list[tuple[int, Reason]] = []
    conn, sock, _ = make("paho", manual_ack=False, on_published=lambda *a: published.append(a))

    async def scenario() -> None:
        conn._loop = asyncio.get_running_loop()
        mid = conn.send("devices/a-1/air", b"{}")
        assert not conn._acks
        await asyncio.sleep(0)
        sock.chunks = [bytes([0x40, 3]) + struct.pack("!H", mid) + b"\x87"]  # Not authorized
        conn._on_readable()
        assert published == [(mid, Reason(0x87, "Not authorized"))]
        assert published[0][1].is_failure

    asyncio.run(scenario())
    sock.close()


def test_publishes_of_one_turn_are_written_in_one_pass_then_wait_for_writable() -> None:
    conn, sock, _ = make("paho")
    writes: list[object] = []

    async def scenario() -> None:
        conn._loop = asyncio.get_running_loop()
        for i in range(3):
            conn.publish("t", b"%d" % i)
        await asyncio.sleep(0)
        writes.append(len(sock.sent))
        sock.full = True
        conn.publish("t", b"3")
        await asyncio.sleep(0)
        writes.append(conn._writer)  # the kernel buffer is full: wait until writable
        sock.full = False
        await asyncio.sleep(0.05)
        writes.append(len(sock.sent))
        writes.append(conn._writer)

    asyncio.run(scenario())
    sock.close()
    assert writes == [3, True, 4, False]


def test_qos0_while_disconnected_is_refused_qos1_waits_for_the_connection() -> None:
    conn, _, _ = make("paho")
    conn.client._sock = None

    async def scenario() -> None:
        conn._loop = asyncio.get_running_loop()
        with pytest.raises(MqttError, match="refused the publish"):
            conn.publish("t", b"x", qos=0)
        kept = conn.publish("t", b"x", qos=1)
        assert not kept.done()
        assert len(conn.client._out_messages) == 1  # paho sends it after the CONNACK

    asyncio.run(scenario())


def test_publish_before_start_is_a_programming_error() -> None:
    conn, _, _ = make("paho")
    with pytest.raises(RuntimeError, match="before start"):
        conn.publish("t", b"x")


# ------------------------------------------------------------------ connecting


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class RecordingLoop:
    """The two scheduling calls the connection makes while (re)connecting, recorded."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.Handle:
        self.later.append((delay, callback))
        return cast(asyncio.Handle, _Handle())


class _Handle:
    def cancel(self) -> None:
        pass


def test_connection_attempts_back_off_with_full_jitter_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, _, _ = make("paho", rng=_Fixed(0.5))
    conn.client._sock = None  # never connected: nothing registered with the loop
    loop = RecordingLoop()
    conn._loop = cast(asyncio.AbstractEventLoop, loop)
    attempts: list[int] = []

    def refused() -> int:
        attempts.append(1)
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(conn.client, "reconnect", refused)
    conn._connect()  # the first attempt is at once
    for _ in range(6):
        _delay, again = loop.later[-1]
        again()
    assert len(attempts) == 7
    windows = [RECONNECT_BASE_S * 2**n for n in range(7)]
    assert [d for d, _ in loop.later] == [0.5 * min(RECONNECT_CAP_S, w) for w in windows]
    assert "ConnectionRefusedError" in conn.last_error


def test_a_drop_after_a_connack_starts_the_backoff_from_the_bottom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, _, got = make("paho", rng=_Fixed(0.999))
    conn.client._sock = None  # never connected: nothing registered with the loop
    loop = RecordingLoop()
    conn._loop = cast(asyncio.AbstractEventLoop, loop)
    conn._backoff.failures = 5  # a long outage before this connection
    flags = mqtt.ConnectFlags(session_present=True)
    conn._on_connect(conn.client, None, flags, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    assert conn.connected
    assert got.connects == [True]
    drop = ReasonCode(PacketTypes.DISCONNECT, "Session taken over")
    conn._on_disconnect(conn.client, None, None, drop, None)
    assert not conn.connected
    assert got.disconnects == [Reason(0x8E, "Session taken over")]  # converted at the edge
    [(wait, _)] = loop.later
    assert 0 < wait < RECONNECT_BASE_S  # not at once, not after the old outage's window


def test_a_refused_connect_is_retried_unless_told_not_to() -> None:
    for retry_refused, retries in ((True, 1), (False, 0)):
        conn, _, _ = make("paho", retry_refused=retry_refused)
        conn.client._sock = None
        loop = RecordingLoop()
        conn._loop = cast(asyncio.AbstractEventLoop, loop)
        refused = ReasonCode(PacketTypes.CONNACK, "Bad user name or password")
        flags = mqtt.ConnectFlags(session_present=False)
        conn._on_connect(conn.client, None, flags, refused, None)
        conn._on_disconnect(conn.client, None, None, refused, None)
        assert len(loop.later) == retries
        assert conn.refused == Reason(0x86, "Bad user name or password")
        assert conn.gave_up is not retry_refused
        assert not conn.connected
