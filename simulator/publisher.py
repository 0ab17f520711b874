"""Publish simulated messages to Mosquitto as the real devices would.

Each device connects with its own credentials (user = device id, password derived from
the installation's device secret, see :func:`civic_iot.registry.device_password`) over
MQTT 5 and publishes at QoS 1 on its own topic. Hundreds of devices share one thread:
:class:`FleetPublisher` drives every paho client through paho's external-loop API
(``loop_read`` / ``loop_write`` / ``loop_misc``) on one :mod:`selectors` selector.

What is in flight is bounded, per client and overall, and released in ``on_publish``:
paho's own bookkeeping slows down as unacknowledged messages pile up (see
``docs/stack-notes.md``), so a message waits in our backlog, not in paho's queue.

:func:`publish_all` paces messages in real time (each at ``message.at_s / speed`` wall
seconds after the start), or sends them as fast as the window allows with ``fast=True``.
It never waits forever: connecting, stalls (no acknowledgement while the window is full)
and the final drain all have timeouts, and whatever is left is counted as failed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import selectors
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.registry import device_password, device_secret
from civic_iot.settings import Settings
from simulator.scenario import SimMessage

__all__ = [
    "FleetPublisher",
    "LatencyStats",
    "MessageSink",
    "Progress",
    "PublishError",
    "PublishReport",
    "publish_all",
]

logger = logging.getLogger(__name__)

_State = Literal["connecting", "connected", "refused", "lost", "closed"]


class PublishError(Exception):
    """The simulator cannot publish at all (broker unreachable, no device secret)."""


class MessageSink(Protocol):
    """The shape every publisher in civic-iot has: add, flush, close."""

    def add(self, message: SimMessage) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Publish-to-PUBACK latency over the acknowledged messages, milliseconds."""

    count: int = 0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            return cls()
        ms = sorted(s * 1000 for s in seconds)

        def q(p: float) -> float:
            return ms[min(len(ms) - 1, math.ceil(p * len(ms)) - 1)]

        return cls(len(ms), sum(ms) / len(ms), q(0.50), q(0.95), q(0.99), ms[-1])


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays. Times in seconds."""

    total: int
    published: int
    acknowledged: int
    failed: int
    in_flight: int
    elapsed_s: float
    #: How far sending runs behind the schedule (0 in fast mode), s.
    lag_s: float


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What a run did.

    Attributes:
        total: messages given.
        published: handed to the broker (PUBLISH written, QoS 1).
        acknowledged: PUBACK with a success code.
        failed: not acknowledged: refused by the broker (see ``denied``), never sent
            (device not connected), or unacknowledged when the run ended.
        denied: of ``failed``, refused by the broker: connection not authorised (unknown
            credentials) or PUBACK with a failure code (topic not allowed by the ACL).
        failures: failure reason -> count.
        elapsed_s: wall time from the first send to the end of the drain, s.
        connect_s: time to connect every device, s.
        devices: distinct MQTT clients used.
        latency: publish-to-PUBACK latency.
        max_lag_s: the furthest sending fell behind the schedule, s.
    """

    total: int
    published: int
    acknowledged: int
    failed: int
    denied: int
    failures: dict[str, int]
    elapsed_s: float
    connect_s: float
    devices: int
    latency: LatencyStats
    max_lag_s: float

    @property
    def rate_per_s(self) -> float:
        """Acknowledged messages per second of sending."""
        return self.acknowledged / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(slots=True, eq=False)  # identity hash: devices live in sets
class _Device:
    user: str
    client: mqtt.Client
    state: _State = "connecting"
    #: mid -> (send time, message index)
    inflight: dict[int, tuple[float, int]] = field(default_factory=dict)
    backlog: deque[int] = field(default_factory=deque)
    next_retry: float = 0.0


@dataclass(slots=True)
class _Tally:
    published: int = 0
    acknowledged: int = 0
    denied: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    last_ack: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class FleetPublisher:
    """Many device clients on one thread, with bounded in-flight windows.

    Use :meth:`connect` with the device ids first, then :meth:`add` messages (sent at once
    when the windows allow, otherwise kept in a per-device backlog), :meth:`poll` to do
    network I/O, :meth:`flush` to wait for acknowledgements and :meth:`close`.
    Not thread-safe: one thread owns it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        window: int = 1000,
        client_window: int = 20,
        keepalive_s: int = 60,
        secret: bytes | None = None,
    ) -> None:
        if window < 1 or client_window < 1:
            msg = "window and client_window must be >= 1"
            raise ValueError(msg)
        self._settings = settings
        self._window = window
        self._client_window = client_window
        self._keepalive = keepalive_s
        self._secret = secret
        self._selector = selectors.DefaultSelector()
        self._devices: dict[str, _Device] = {}
        self._messages: list[SimMessage] = []
        self._waiting: deque[_Device] = deque()  # devices with a backlog, FIFO
        self._writers: set[_Device] = set()
        self._inflight = 0
        self._backlog = 0
        self._last_misc = 0.0
        self.tally = _Tally()

    # -------------------------------------------------------------------- lifecycle
    def connect(self, users: Iterable[str], timeout_s: float = 15.0) -> float:
        """Connect one client per user; returns the seconds it took.

        Users the broker refuses are marked refused (their messages fail as denied).
        Raises :class:`PublishError` when the broker cannot be reached at all.
        """
        secret = self._secret
        if secret is None:
            secret = device_secret(self._settings.data_dir)
        t0 = time.monotonic()
        host, port = self._settings.mqtt.host, self._settings.mqtt.port
        for user in dict.fromkeys(users):
            if user in self._devices:
                continue
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=user,
                protocol=mqtt.MQTTv5,
                userdata=None,
            )
            dev = _Device(user, client)
            client.user_data_set(dev)
            client.username_pw_set(user, device_password(secret, user))
            client.max_inflight_messages_set(self._client_window)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.on_socket_open = self._on_socket_open
            client.on_socket_close = self._on_socket_close
            self._devices[user] = dev
            try:
                client.connect(host, port, keepalive=self._keepalive, clean_start=True)
            except OSError as exc:
                self.close()
                msg = f"simulator: cannot reach Mosquitto at {host}:{port} as {user!r}: {exc}"
                raise PublishError(msg) from exc
            # Read CONNACKs as they come so the broker's listen backlog never fills.
            self.poll(0.0)
        deadline = t0 + timeout_s
        while any(d.state == "connecting" for d in self._devices.values()):
            if time.monotonic() > deadline:
                slow = [d.user for d in self._devices.values() if d.state == "connecting"]
                logger.warning("connect timeout devices=%d first=%s", len(slow), slow[:5])
                for user in slow:
                    self._devices[user].state = "lost"
                break
            self.poll(0.05)
        return time.monotonic() - t0

    def close(self) -> None:
        """Disconnect every client and release the sockets."""
        for dev in self._devices.values():
            was = dev.state
            dev.state = "closed"
            if was == "connected":
                dev.client.disconnect()  # writes DISCONNECT and closes the socket
            sock = dev.client.socket()
            if sock is not None:
                self._on_socket_close(dev.client, dev, sock)
            dev.client.on_socket_close = None
            dev.client.on_socket_open = None
        self._devices.clear()
        self._waiting.clear()
        self._writers.clear()
        self._selector.close()

    # -------------------------------------------------------------------- sending
    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged, over all devices."""
        return self._inflight

    @property
    def backlog(self) -> int:
        """Messages added but not yet published."""
        return self._backlog

    def add(self, message: SimMessage) -> None:
        """Send ``message`` as its device now, or queue it behind the device's backlog."""
        idx = len(self._messages)
        self._messages.append(message)
        dev = self._devices.get(message.publisher)
        if dev is None:
            self.tally.failures["not_connected"] += 1
            return
        if dev.state == "refused":
            self._deny(f"connect:{message.publisher}")
            return
        if not dev.backlog and self._can_send(dev):
            self._send(dev, idx)
            return
        if not dev.backlog:
            self._waiting.append(dev)
        dev.backlog.append(idx)
        self._backlog += 1

    def _can_send(self, dev: _Device) -> bool:
        return (
            dev.state == "connected"
            and len(dev.inflight) < self._client_window
            and self._inflight < self._window
        )

    def _send(self, dev: _Device, idx: int) -> None:
        m = self._messages[idx]
        info = dev.client.publish(m.topic, m.payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.tally.failures[f"publish:{mqtt.error_string(info.rc)}"] += 1
            return
        dev.inflight[info.mid] = (time.monotonic(), idx)
        self._inflight += 1
        self.tally.published += 1
        if dev.client.want_write():
            self._writers.add(dev)

    def _deny(self, reason: str) -> None:
        self.tally.denied += 1
        self.tally.failures["denied"] += 1
        logger.debug("denied reason=%s", reason)

    def _drain_backlogs(self) -> None:
        """Send from device backlogs, oldest waiting device first, while windows allow."""
        for _ in range(len(self._waiting)):
            if self._inflight >= self._window:
                return
            dev = self._waiting.popleft()
            if dev.state == "refused":
                for _i in dev.backlog:
                    self._deny(f"connect:{dev.user}")
                self._backlog -= len(dev.backlog)
                dev.backlog.clear()
                continue
            while dev.backlog and self._can_send(dev):
                self._backlog -= 1
                self._send(dev, dev.backlog.popleft())
            if dev.backlog:
                self._waiting.append(dev)

    # -------------------------------------------------------------------- I/O
    def poll(self, timeout_s: float) -> None:
        """One round of network I/O: reads (PUBACKs), pending writes, keepalives."""
        if self._selector.get_map():
            for key, _mask in self._selector.select(timeout_s):
                dev: _Device = key.data
                dev.client.loop_read()
                if dev.client.want_write():
                    self._writers.add(dev)
        elif timeout_s > 0:
            time.sleep(timeout_s)
        for dev in list(self._writers):
            self._writers.discard(dev)
            if dev.client.socket() is not None:
                dev.client.loop_write()
                if dev.client.want_write():
                    self._writers.add(dev)
        now = time.monotonic()
        if now - self._last_misc >= 1.0:
            self._last_misc = now
            for dev in self._devices.values():
                if dev.state == "connected":
                    dev.client.loop_misc()
                elif dev.state == "lost" and now >= dev.next_retry:
                    self._reconnect(dev, now)
        self._drain_backlogs()

    def _reconnect(self, dev: _Device, now: float) -> None:
        dev.next_retry = now + 2.0
        try:
            dev.state = "connecting"
            dev.client.reconnect()
        except OSError as exc:
            dev.state = "lost"
            logger.warning("reconnect failed device=%s error=%s", dev.user, exc)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every added message is acknowledged or failed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._inflight or self._waiting:
            if time.monotonic() > deadline:
                return False
            self.poll(0.05)
        return True

    def abandon(self, reason: str) -> None:
        """Count everything still in flight or waiting as failed with ``reason``."""
        for dev in self._devices.values():
            n = len(dev.inflight) + len(dev.backlog)
            if n:
                self.tally.failures[reason] += n
            self._inflight -= len(dev.inflight)
            self._backlog -= len(dev.backlog)
            dev.inflight.clear()
            dev.backlog.clear()
        self._waiting.clear()

    # -------------------------------------------------------------------- callbacks
    def _on_socket_open(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, dev)
        if isinstance(sock, socket.socket):
            # Latency over batching: each small PUBLISH goes out at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_socket_close(self, client: mqtt.Client, dev: _Device, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # never registered, or gone
            self._selector.unregister(sock)
        self._writers.discard(dev)

    def _on_connect(
        self,
        client: mqtt.Client,
        dev: _Device,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            dev.state = "refused"
            logger.info("connection refused device=%s reason=%s", dev.user, reason)
        else:
            dev.state = "connected"
            if dev.backlog and dev not in self._waiting:
                self._waiting.append(dev)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        dev: _Device,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if dev.state in ("refused", "closed"):
            return
        logger.warning("disconnected device=%s reason=%s", dev.user, reason)
        dev.state = "lost"
        dev.next_retry = time.monotonic() + 1.0
        # A clean session forgets unacknowledged messages: they are lost, say so.
        if dev.inflight:
            self.tally.failures["disconnected"] += len(dev.inflight)
            self._inflight -= len(dev.inflight)
            dev.inflight.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        dev: _Device,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        sent = dev.inflight.pop(mid, None)
        if sent is None:
            return
        self._inflight -= 1
        now = time.monotonic()
        self.tally.last_ack = now
        if reason.is_failure:
            self._deny(f"puback:{reason}")
            return
        self.tally.acknowledged += 1
        self.tally.latencies.append(now - sent[0])


def publish_all(
    messages: Sequence[SimMessage],
    settings: Settings,
    speed: float = 1.0,
    progress_cb: Callable[[Progress], None] | None = None,
    *,
    fast: bool = False,
    window: int = 1000,
    client_window: int = 20,
    connect_timeout_s: float = 15.0,
    stall_timeout_s: float = 30.0,
    drain_timeout_s: float = 30.0,
    progress_interval_s: float = 0.5,
    secret: bytes | None = None,
) -> PublishReport:
    """Publish ``messages`` (sorted by ``at_s``) as their devices; returns the counts.

    Args:
        messages: what to send, in order (see :func:`simulator.scenario.generate`).
        settings: broker address and data dir (for the device secret).
        speed: multiplies the scenario's own compression: a message goes out at
            ``at_s / speed`` wall seconds after the start.
        progress_cb: called every ``progress_interval_s`` seconds and once at the end.
        fast: ignore the schedule and send as fast as the window allows (benchmarks).
        window: most messages in flight over all devices.
        client_window: most messages in flight per device.
        connect_timeout_s: how long to wait for every device's CONNACK, s.
        stall_timeout_s: give up when nothing is acknowledged for this long while
            messages are waiting, s.
        drain_timeout_s: how long to wait for the last acknowledgements, s.
        secret: the device secret (default: read from ``settings.data_dir``).

    Raises:
        PublishError: the broker cannot be reached.
    """
    if speed <= 0:
        msg = f"speed must be > 0, got {speed}"
        raise ValueError(msg)
    fleet = FleetPublisher(settings, window=window, client_window=client_window, secret=secret)
    try:
        connect_s = fleet.connect((m.publisher for m in messages), connect_timeout_s)
        t0 = time.monotonic()
        fleet.tally.last_ack = t0
        n, i = len(messages), 0
        max_lag = 0.0
        next_progress = t0

        def report_progress(now: float, lag: float) -> None:
            if progress_cb is not None:
                t = fleet.tally
                progress_cb(
                    Progress(
                        n, t.published, t.acknowledged, t.failed, fleet.in_flight, now - t0, lag
                    )
                )

        while i < n:
            now = time.monotonic()
            elapsed = now - t0
            lag = 0.0
            # Release what is due, but keep the backlog short: it is the window that
            # paces us when the broker is slower than the schedule.
            while i < n and fleet.backlog < window:
                due = messages[i].at_s / speed
                if not fast and due > elapsed:
                    break
                lag = 0.0 if fast else elapsed - due
                fleet.add(messages[i])
                i += 1
            max_lag = max(max_lag, lag)
            if now >= next_progress:
                report_progress(now, lag)
                next_progress = now + progress_interval_s
            if fleet.backlog >= window and now - fleet.tally.last_ack > stall_timeout_s:
                logger.error("stalled seconds=%.0f unsent=%d", stall_timeout_s, n - i)
                fleet.tally.failures["stalled"] += n - i
                break
            if i < n and not fast:
                wait = max(0.0, min(0.05, messages[i].at_s / speed - (time.monotonic() - t0)))
            else:
                wait = 0.0 if fleet.backlog < window else 0.01
            fleet.poll(wait)
        if not fleet.flush(drain_timeout_s):
            fleet.abandon("timeout")
        end = time.monotonic()
        report_progress(end, 0.0)
        t = fleet.tally
        return PublishReport(
            total=n,
            published=t.published,
            acknowledged=t.acknowledged,
            failed=t.failed,
            denied=t.denied,
            failures=dict(t.failures),
            elapsed_s=end - t0,
            connect_s=connect_s,
            devices=len({m.publisher for m in messages}),
            latency=LatencyStats.of(t.latencies),
            max_lag_s=max_lag,
        )
    finally:
        fleet.close()
