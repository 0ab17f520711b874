"""One way to drive paho: a paho ``Client`` on the running asyncio loop, no thread.

:class:`MqttConnection` owns one paho client and drives it through paho's external-loop
API, as aiomqtt does: paho's socket callbacks become ``loop.add_reader`` /
``loop.add_writer``, ``loop_misc`` (keepalive, a dead connection noticed) runs on a
timer, every connection attempt after a failure or a drop waits the backoff of
:mod:`civic_iot.retry`, and a publish returns a future that its PUBACK resolves on the
loop. Every callback runs on the loop's thread, so nothing needs a lock and no PUBACK
can race the publish that caused it.

What ingest, the alert service, the simulator's fleet and the tests share is here:
connect and wait until connected, subscribe, publish at QoS 1 with an awaitable
acknowledgement, manual acknowledgements of received messages in arrival order, and a
clean stop. Messages are handed over as :class:`Message` (paho's ``MQTTMessage`` does not
travel inward), a list per readable event.

Public paho API only, with one exception that ingest opts into (``reader="own"``): see
:class:`_SlicingClient`, the one place that uses paho's private members, pinned to the
paho version in ``constraints.txt`` by ``tests/unit/core/test_mqtt.py``.

The TCP connect itself (inside paho's ``reconnect``) blocks the loop, bounded by paho's
``connect_timeout`` (5 s): the broker is on this host or its LAN. So does the TLS handshake
when ``tls_ca`` is given (paho makes it in blocking mode, within the same timeout): the
broker's certificate must chain to that CA and name the host we connect to, or nothing,
credentials included, is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot import retry

__all__ = [
    "MISC_INTERVAL_S",
    "RECONNECT_BASE_S",
    "RECONNECT_CAP_S",
    "SERVICE_RECONNECT_CAP_S",
    "Message",
    "MqttConnection",
    "MqttError",
    "Reader",
    "Reason",
    "tls_context",
]

logger = logging.getLogger(__name__)

#: Reconnect backoff (:mod:`civic_iot.retry`, full jitter), seconds: the window before the
#: first retry, and the widest window.
RECONNECT_BASE_S = 1.0
RECONNECT_CAP_S = 30.0
#: The widest window for a service process (ingest, the alert service), s: the broker
#: queues for ingest's session and alerts wait to go out while it is away, so coming back
#: soon after the broker matters more than sparing it (a few processes, not a fleet).
SERVICE_RECONNECT_CAP_S = 5.0
#: How often paho's housekeeping runs: keepalive PINGREQ, a connection that went quiet.
MISC_INTERVAL_S = 1.0
#: Packets paho's parser takes per readable event before the loop serves something else
#: (the socket stays readable, so the rest comes on the next turn).
_MAX_PACKETS_PER_READ = 1024

#: How received messages are read: ``paho`` (paho's own parser, public API) or ``own``
#: (:class:`_SlicingClient`: QoS 1 PUBLISHes sliced from one ``recv``, PUBACKs in one write).
Reader = Literal["paho", "own"]


class Message(NamedTuple):
    """A received message, converted at the edge."""

    topic: str
    payload: bytes
    #: Packet id (0 for QoS 0): what :meth:`MqttConnection.ack` takes.
    mid: int
    qos: int
    retain: bool


class Reason(NamedTuple):
    """An MQTT 5 reason code (PUBACK, SUBACK, CONNACK, DISCONNECT), converted at the edge."""

    value: int
    #: The specification's name for it, e.g. ``Success``, ``Not authorized``.
    name: str

    @property
    def is_failure(self) -> bool:
        """Reason codes from 0x80 on are failures."""
        return self.value >= 0x80

    def __str__(self) -> str:
        return self.name


#: One :class:`Reason` per (packet type, value): a PUBACK per message need not build one.
_REASONS: dict[tuple[int, int], Reason] = {}


def _reason(rc: ReasonCode) -> Reason:
    key = (rc.packetType, rc.value)
    reason = _REASONS.get(key)
    if reason is None:
        reason = _REASONS[key] = Reason(rc.value, rc.getName())
    return reason


class MqttError(RuntimeError):
    """The broker could not be reached, refused us, or paho refused a request."""


@lru_cache(maxsize=8)
def tls_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (PEM) and checks the host name, TLS 1.2
    or later; one per CA file, shared by every connection (a fleet of devices loads the
    CA once). A changed CA file is read by the next process."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class MqttConnection:
    """One paho client driven by the running asyncio loop, reconnecting with backoff.

    Call :meth:`start` on the loop, then :meth:`wait_connected`; :meth:`stop` says goodbye.
    A QoS 1 message published while disconnected stays in paho's queue and goes out on
    the next connection (paho re-sends an unacknowledged one with DUP after a reconnect),
    so its future completes then: a caller never needs to publish twice.

    Hooks, all called on the loop: ``on_connect(session_present)`` after each accepted
    CONNACK (subscribe there), ``on_disconnect(reason)`` when a connection ends (also a
    refused one), ``on_messages(batch)`` with the messages of one readable event, in
    arrival order, ``on_published(mid, reason)`` with the PUBACK of a message handed over
    by :meth:`send`.

    Args:
        host, port: the broker.
        client_id, username, password: who we are.
        keepalive_s: MQTT keepalive, s.
        clean_start: start a new session on every connect (False: resume it).
        session_expiry_s: MQTT 5 Session Expiry Interval, s (None: the broker's 0).
        receive_maximum: MQTT 5 Receive Maximum: unacknowledged messages the broker may
            have in flight to us.
        manual_ack: received QoS 1 messages are acknowledged only by :meth:`ack`.
        max_inflight: our QoS 1 messages in flight at once; more wait in paho's queue.
        reader: see :data:`Reader`.
        nodelay: TCP_NODELAY (latency over batching of small writes).
        retry_refused: keep retrying when the broker refuses the CONNECT (bad
            credentials, not authorised); False: give up, :attr:`refused` says why.
        reconnect_base_s, reconnect_cap_s: the reconnect backoff (:mod:`civic_iot.retry`),
            s: a client whose broker queues for it while it is away (ingest) comes back
            within the cap once the broker is up again.
        tls_ca: connect over TLS, trusting only this CA certificate (PEM); ``port``
            is then the broker's TLS listener. ``None``: plain MQTT.
        rng: the random source of the backoff's jitter (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        keepalive_s: int = 30,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        max_inflight: int = 20,
        reader: Reader = "paho",
        nodelay: bool = False,
        retry_refused: bool = True,
        tls_ca: Path | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[Reason], None] | None = None,
        on_messages: Callable[[list[Message]], None] | None = None,
        on_published: Callable[[int, Reason], None] | None = None,
        rng: retry.RandomSource | None = None,
        reconnect_base_s: float = RECONNECT_BASE_S,
        reconnect_cap_s: float = RECONNECT_CAP_S,
    ) -> None:
        self.host, self.port, self.client_id, self.username = host, port, client_id, username
        self._keepalive = keepalive_s
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._nodelay = nodelay
        self._retry_refused = retry_refused
        self._hook_connect = on_connect
        self._hook_disconnect = on_disconnect
        self._hook_messages = on_messages
        self._hook_published = on_published
        self._backoff = retry.Backoff(reconnect_base_s, reconnect_cap_s)
        if rng is not None:
            self._backoff.rng = rng
        cls = _SlicingClient if reader == "own" else mqtt.Client
        self.client: mqtt.Client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(max_inflight)
        self.tls = tls_ca is not None
        if tls_ca is not None:
            self.client.tls_set_context(tls_context(tls_ca))
        self._tls_more_soon = False
        #: Received messages of the current readable event, in arrival order (the slicing
        #: reader appends to the same list, so a message paho parses keeps its place).
        self._inbox: list[Message] = []
        if isinstance(self.client, _SlicingClient):
            self.client.inbox = self._inbox
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks: dict[int, asyncio.Future[Reason]] = {}
        self._subacks: dict[int, asyncio.Future[list[Reason]]] = {}
        self._events = 0  # paho callbacks so far: tells a read that parsed a packet
        self._sent = self._answered = 0  # messages handed to paho / completed by it
        self._attempt: asyncio.Handle | None = None
        self._misc: asyncio.Handle | None = None
        self._write_soon = False
        self._writer = False
        self._stopping = False
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._closed.set()
        #: Why the last attempt failed: a connect error or the CONNACK's reason.
        self.last_error = ""
        #: The CONNACK's reason when the broker refused us; None once it accepts.
        self.refused: Reason | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._connected.is_set()

    @property
    def gave_up(self) -> bool:
        """Refused and not retrying (``retry_refused=False``)."""
        return self.refused is not None and not self._retry_refused

    def start(self) -> None:
        """Begin connecting (at once) and keep connected until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        if self._session_expiry_s is not None:
            props.SessionExpiryInterval = self._session_expiry_s
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        # Only records where and how to connect; _connect makes the connection.
        self.client.connect_async(
            self.host,
            self.port,
            keepalive=self._keepalive,
            clean_start=self._clean_start,
            properties=props,
        )
        self._attempt = self._loop.call_soon(self._connect)
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._housekeeping)

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once the broker has accepted us; :class:`MqttError` after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            msg = (
                f"MQTT broker {self.host}:{self.port} did not accept user {self.username!r} "
                f"(client {self.client_id}) within {timeout_s:g} s "
                f"({self.last_error or 'no CONNACK'})"
            )
            raise MqttError(msg) from None

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Send DISCONNECT and close; futures still waiting for an answer are cancelled.

        With a persistent session the broker keeps what we did not acknowledge.
        """
        self._stopping = True
        for handle in (self._attempt, self._misc):
            if handle is not None:
                handle.cancel()
        self._attempt = self._misc = None
        if self.client.socket() is None:
            self.client.disconnect()  # no connection: paho just marks itself disconnected
        else:
            self.client.disconnect()  # queued; once written, paho closes the socket
            try:
                await asyncio.wait_for(self._closed.wait(), timeout_s)
            except TimeoutError:
                logger.warning(
                    "mqtt disconnect not sent within %g s client=%s; closing", timeout_s, self
                )
                self.abort()
        self._connected.clear()
        for ack in self._acks.values():
            ack.cancel()
        for suback in self._subacks.values():
            suback.cancel()
        self._acks.clear()
        self._subacks.clear()

    def abort(self) -> None:
        """Cut the connection without a goodbye, as a network failure would.

        paho meets the end of the stream itself (closes the socket, ``on_disconnect``),
        and, unless stopping, the connection is made again after the backoff.
        """
        sock = self.client.socket()
        if sock is None:
            return
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already broken: the read finds out anyway
                sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_read()

    def __repr__(self) -> str:
        return f"{self.client_id}@{self.host}:{self.port}" + (" (tls)" if self.tls else "")

    # ------------------------------------------------------------------ requests

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[Reason]:
        """Hand a message to paho; the future completes with the PUBACK's reason code.

        QoS 0 completes once written. Raises :class:`MqttError` when paho refuses the
        message (its queue is full, say); QoS 1 while disconnected is kept and sent on
        the next connection.
        """
        loop = self._running_loop()
        mid = self.send(topic, payload, qos=qos, retain=retain, properties=properties)
        fut: asyncio.Future[Reason] = loop.create_future()
        self._acks[mid] = fut
        return fut

    def send(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """:meth:`publish` without a future, for many small messages: returns the packet
        id, and the PUBACK goes to the ``on_published(mid, reason)`` hook."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        ):
            msg = f"paho refused the publish on {topic}: {mqtt.error_string(info.rc)}"
            raise MqttError(msg)
        self._sent += 1
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> asyncio.Future[list[Reason]]:
        """Subscribe; the future completes with the SUBACK's reason codes."""
        loop = self._running_loop()
        rc, mid = self.client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            msg = f"cannot subscribe to {topic}: {mqtt.error_string(rc)}"
            raise MqttError(msg)
        fut: asyncio.Future[list[Reason]] = loop.create_future()
        self._subacks[mid] = fut
        return fut

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (of a resumed session: one this client no longer wants)."""
        rc, _mid = self.client.unsubscribe(topic)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            msg = f"cannot unsubscribe from {topic}: {mqtt.error_string(rc)}"
            raise MqttError(msg)

    def ack(self, mids: Sequence[int], qos: int = 1) -> None:
        """Acknowledge received messages (``manual_ack``), in this order.

        The broker counts them against Receive Maximum until then. With the ``own``
        reader a batch of QoS 1 acknowledgements leaves in one write.
        """
        if isinstance(self.client, _SlicingClient) and qos == 1:
            self.client.puback_many(mids)
            return
        for mid in mids:
            self.client.ack(mid, qos)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            msg = f"MqttConnection {self} used before start()"
            raise RuntimeError(msg)
        return self._loop

    # ------------------------------------------------------------------ connecting

    def _connect(self) -> None:
        """One connection attempt (the CONNACK comes later, through the reader)."""
        self._attempt = None
        if self._stopping:
            return
        try:
            self.client.reconnect()
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, DNS: retry all
            self.last_error = repr(exc)
            wait = self._retry_later()
            if wait is not None:
                logger.warning(
                    "mqtt connect failed client=%s error=%r; retrying in %.1f s", self, exc, wait
                )

    def _retry_later(self) -> float | None:
        """Schedule the next attempt after the backoff; its delay, s (None: none planned)."""
        if self._stopping or self._attempt is not None or self._loop is None:
            return None
        wait = self._backoff.next_delay()
        self._attempt = self._loop.call_later(wait, self._connect)
        return wait

    def _housekeeping(self) -> None:
        assert self._loop is not None  # set by start()
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._housekeeping)
        if self.client.socket() is not None:
            self.client.loop_misc()

    # ------------------------------------------------------------------ socket <-> loop

    def _on_socket_open(self, client: mqtt.Client, _u: object, sock: Any) -> None:
        assert self._loop is not None  # paho opens sockets only in _connect
        if isinstance(client, _SlicingClient):
            client.drop_buffer()
        if self._nodelay and isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._closed.clear()
        self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: mqtt.Client, _u: object, sock: Any) -> None:
        if self._loop is not None:  # None: never started, so never registered
            self._loop.remove_reader(sock)
            if self._writer:
                self._loop.remove_writer(sock)
        self._writer = False
        if isinstance(client, _SlicingClient):
            client.drop_buffer()
        self._closed.set()

    def _on_socket_register_write(self, _c: mqtt.Client, _u: object, _sock: Any) -> None:
        # paho queued a packet. Write it at the end of this turn of the loop rather than
        # now: we may be inside a paho callback, and whatever else this turn queues (a
        # batch of publishes or acknowledgements) goes out in the same pass.
        if not self._write_soon and self._loop is not None:
            self._write_soon = True
            self._loop.call_soon(self._write)

    def _on_socket_unregister_write(self, _c: mqtt.Client, _u: object, sock: Any) -> None:
        if self._writer and self._loop is not None:
            self._loop.remove_writer(sock)
            self._writer = False

    def _write(self) -> None:
        self._write_soon = False
        client = self.client
        if client.socket() is None:
            return
        client.loop_write()
        sock = client.socket()
        if client.want_write() and sock is not None and not self._writer:
            # The kernel's buffer is full: the rest goes when the socket is writable.
            assert self._loop is not None
            self._loop.add_writer(sock, client.loop_write)
            self._writer = True

    def _on_readable(self) -> None:
        client = self.client
        if isinstance(client, _SlicingClient):
            client.read_publishes()
        else:
            # One loop_read parses at most one packet per message we await an answer for
            # (at least one), stopping early when the socket has nothing more. Call it
            # again only while a call used its whole allowance, so one readable event
            # takes what came without a last read that finds nothing. Stopping early
            # loses nothing: the socket stays readable and the loop comes back.
            for _ in range(_MAX_PACKETS_PER_READ):
                seen, allowance = self._events, max(1, self._sent - self._answered)
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._events - seen < allowance:
                    break
        if self._inbox:
            batch = self._inbox[:]
            self._inbox.clear()
            if self._hook_messages is not None:
                self._hook_messages(batch)
        if self.tls:
            self._tls_pending()

    def _tls_pending(self) -> None:
        # OpenSSL may still hold decrypted bytes that the kernel no longer reports as
        # readable (a read stopped early, at _MAX_PACKETS_PER_READ say): the loop would
        # not call us again for them, so come back on the next turn while any are left
        # (paho's own loop checks pending() the same way).
        sock = self.client.socket()
        if (
            isinstance(sock, ssl.SSLSocket)
            and sock.pending()
            and not self._tls_more_soon
            and self._loop is not None
        ):
            self._tls_more_soon = True
            self._loop.call_soon(self._read_pending)

    def _read_pending(self) -> None:
        self._tls_more_soon = False
        if self.client.socket() is not None:
            self._on_readable()

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: object,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: object,
    ) -> None:
        self._events += 1
        if rc.is_failure:
            self.refused = _reason(rc)
            self.last_error = f"refused: {rc}"
            logger.error("mqtt connect refused client=%s reason=%s", self, rc)
            return  # paho closes the connection: _on_disconnect decides what next
        self.refused = None
        self.last_error = ""
        self._backoff.reset()
        self._connected.set()
        logger.debug("mqtt connected client=%s session_present=%s", self, flags.session_present)
        if self._hook_connect is not None:
            self._hook_connect(flags.session_present)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        self._events += 1
        self._connected.clear()
        if self._hook_disconnect is not None:
            self._hook_disconnect(_reason(rc))
        if self._stopping:
            return
        if self.gave_up:
            logger.info("mqtt client=%s refused (%s); not retrying", self, self.refused)
            return
        wait = self._retry_later()
        if wait is not None:
            logger.warning(
                "mqtt disconnected client=%s reason=%s; reconnecting in %.1f s", self, rc, wait
            )

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        self._events += 1
        self._answered += 1
        fut = self._acks.pop(mid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(_reason(rc))
        elif self._hook_published is not None:
            self._hook_published(mid, _reason(rc))

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        self._events += 1
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result([_reason(rc) for rc in rcs])

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        self._events += 1
        self._inbox.append(Message(m.topic, bytes(m.payload), m.mid, m.qos, bool(m.retain)))


_PUBACK = struct.Struct("!BBH")


class _SlicingClient(mqtt.Client):
    """paho's client with its own reader for the packet ingest lives on: QoS 1 PUBLISH.

    :meth:`read_publishes` takes whatever the kernel holds in one ``recv`` and splits it
    into packets. A QoS 1 PUBLISH without MQTT 5 properties (what Mosquitto forwards from
    a device that set none) is sliced into a :class:`Message` right there: no
    ``MQTTMessage``, no callback, none of paho's three or four reads per packet. Every
    other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBLISH with properties or
    another QoS) is handed whole to paho's own parser, so paho keeps its state machine
    and callbacks; a message paho makes of it joins the same list, in its place.
    :meth:`puback_many` queues a batch of PUBACKs as one buffer: one ``send``.

    The two private members of paho 2.x it relies on (pinned exactly in pyproject.toml and
    constraints.txt; ``tests/unit/core/test_mqtt.py`` fails when their behaviour moves):

    - ``_sock_recv(bufsize)``: paho's parser reads through it; overridden to serve paho
      one whole packet from our buffer;
    - ``_packet_queue(command, packet, mid, qos)``: queues bytes for paho's writer.
    """

    _CHUNK = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()  # read, not yet a whole packet
        self._paho_in = bytearray()  # one whole packet for paho's parser
        self._feeding = False
        #: Where messages go (the connection's list), in arrival order.
        self.inbox: list[Message] = []

    @property
    def buffered(self) -> bool:
        """True while bytes already read from the socket wait for the rest of their packet."""
        return bool(self._rbuf)

    def drop_buffer(self) -> None:
        """Forget unparsed bytes: they belong to a connection that is gone."""
        self._rbuf.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._feeding:
            return super()._sock_recv(bufsize)
        buf = self._paho_in
        if not buf:
            raise BlockingIOError  # paho's "nothing more now": its packet is done
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def read_publishes(self) -> None:
        """Read the socket once; the messages in it go to :attr:`inbox`.

        Other packets go to paho as they come. EOF or a socket error is paho's to handle
        (it closes the socket and calls ``on_disconnect``), as is a malformed packet.
        """
        try:
            data = super()._sock_recv(self._CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop_read()  # paho meets the EOF or the error itself
            return
        buf = self._rbuf
        buf += data
        self._split(buf)

    def _split(self, buf: bytearray) -> None:
        """Take every whole packet off the head of ``buf``."""
        out = self.inbox
        pos, n = 0, len(buf)
        while n - pos >= 2:
            header = buf[pos]
            i, length, shift = pos + 1, 0, 0
            while i < n and shift < 28:  # remaining length: 1-4 bytes, 7 bits each
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if byte < 0x80:
                    break
            else:
                if shift < 28:
                    break  # the length itself is not all here yet
                self._to_paho(buf[pos:])  # 5 length bytes: malformed, paho disconnects
                pos = n
                break
            end = i + length
            if end > n:
                break  # the rest of this packet is still on its way
            # PUBLISH, QoS 1 (any DUP/RETAIN): [topic len:2][topic][id:2][props len][payload]
            if header & 0xF6 == 0x32 and length >= 5:
                t_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if t_end + 3 <= end and buf[t_end + 2] == 0:
                    out.append(
                        Message(
                            buf[i + 2 : t_end].decode("utf-8", "replace"),
                            bytes(buf[t_end + 3 : end]),
                            (buf[t_end] << 8) | buf[t_end + 1],
                            1,
                            bool(header & 0x01),
                        )
                    )
                    pos = end
                    continue
            self._to_paho(buf[pos:end])
            pos = end
            if self.socket() is None:  # paho closed the connection (DISCONNECT, protocol error)
                pos = n
                break
        del buf[:pos]  # cheap: a bytearray drops its head without copying the rest

    def _to_paho(self, packet: bytearray) -> None:
        """Let paho's own parser read and handle one whole packet."""
        self._paho_in += packet
        self._feeding = True
        try:
            self.loop_read()
        finally:
            self._feeding = False
            self._paho_in.clear()

    def puback_many(self, mids: Sequence[int]) -> None:
        """PUBACKs for these QoS 1 messages, in this order, queued as one buffer.

        The bytes ``ack(mid, 1)`` would queue one packet at a time (a PUBACK without
        reason code or properties: 0x40, length 2, the packet id).
        """
        if mids:
            packet = b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids])
            self._packet_queue(mqtt.PUBACK, packet, 0, 1)
