"""Publish simulated messages to Mosquitto as the real devices would.

Each device connects with its own credentials (user = device id, password derived from
the installation's device secret, see :func:`civic_iot.registry.device_password`) over
MQTT 5 and publishes at QoS 1 on its own topic. Hundreds of devices share one asyncio
loop: :class:`FleetPublisher` makes each a :class:`civic_iot.mqtt.MqttConnection`, the
one way civic-iot drives paho.

What is in flight is bounded, per client and overall, and released by each PUBACK:
paho's own bookkeeping slows down as unacknowledged messages pile up (see
``docs/stack-notes.md``), so a message waits in our backlog, not in paho's queue.

:func:`publish_all` paces messages in real time (each at ``message.at_s / speed`` wall
seconds after the start), or sends them as fast as the window allows with ``fast=True``.
It never waits forever: connecting, stalls (no acknowledgement while the window is full)
and the final drain all have timeouts, and whatever is left is counted as failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from civic_iot.mqtt import MqttConnection, MqttError, Reason
from civic_iot.registry import device_password, device_secret
from civic_iot.settings import Settings, mqtt_endpoint
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
    """The shape every publisher in civic-iot has: add, flush, close.

    ``add`` never waits (it sends or queues); ``flush`` waits for what was added.
    """

    def add(self, message: SimMessage) -> None: ...

    async def flush(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


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
    conn: MqttConnection
    state: _State = "connecting"
    #: packet id -> send time (monotonic s): published, not yet acknowledged.
    inflight: dict[int, float] = field(default_factory=dict)
    backlog: deque[int] = field(default_factory=deque)


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
    """Many device clients on one asyncio loop, with bounded in-flight windows.

    Each device is a :class:`civic_iot.mqtt.MqttConnection`; the loop serves every socket.
    Use :meth:`connect` with the device ids first, then :meth:`add` messages (sent at once
    when the windows allow, otherwise kept in a per-device backlog), :meth:`flush` to wait
    for acknowledgements and :meth:`close`. Not thread-safe: one loop owns it.
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
        #: Plain MQTT, or the TLS listener when ``CIVIC_MQTT__TLS`` (``simulate --tls``).
        self._broker = mqtt_endpoint(settings)
        self._window = window
        self._client_window = client_window
        self._keepalive = keepalive_s
        self._secret = secret
        self._devices: dict[str, _Device] = {}
        self._messages: list[SimMessage] = []
        self._waiting: deque[_Device] = deque()  # devices with a backlog, FIFO
        self._inflight = 0
        self._backlog = 0
        self._drain_soon = False
        self._idle = asyncio.Event()  # nothing in flight and no backlog
        self._idle.set()
        self.tally = _Tally()

    # -------------------------------------------------------------------- lifecycle
    async def connect(self, users: Iterable[str], timeout_s: float = 15.0) -> float:
        """Connect one client per user; returns the seconds it took.

        Users the broker refuses are marked refused (their messages fail as denied).
        Raises :class:`PublishError` when the broker cannot be reached at all.
        """
        secret = self._secret
        if secret is None:
            secret = device_secret(self._settings.data_dir)
        t0 = time.monotonic()
        for user in dict.fromkeys(users):
            if user in self._devices:
                continue
            dev = self._device(user, device_password(secret, user))
            self._devices[user] = dev
            dev.conn.start()
            # One turn of the loop: the TCP connect happens, and CONNACKs that came are
            # read as they come, so the broker's listen backlog never fills.
            await asyncio.sleep(0)
            if len(self._devices) == 1 and not dev.conn.connected and dev.conn.last_error:
                await self.close()
                b = self._broker
                msg = (
                    f"simulator: cannot reach Mosquitto at {b.host}:{b.port} as {user!r}: "
                    f"{dev.conn.last_error}"
                )
                raise PublishError(msg)
        deadline = t0 + timeout_s
        while any(d.state == "connecting" for d in self._devices.values()):
            if time.monotonic() > deadline:
                slow = [d.user for d in self._devices.values() if d.state == "connecting"]
                logger.warning("connect timeout devices=%d first=%s", len(slow), slow[:5])
                for user in slow:
                    self._devices[user].state = "lost"
                break
            await asyncio.sleep(0.05)
        return time.monotonic() - t0

    def _device(self, user: str, password: str) -> _Device:
        made: list[_Device] = []  # the hooks need the device, made just below
        conn = MqttConnection(
            host=self._broker.host,
            port=self._broker.port,
            tls_ca=self._broker.tls_ca,
            client_id=user,
            username=user,
            password=password,
            keepalive_s=self._keepalive,
            clean_start=True,
            max_inflight=self._client_window,
            nodelay=True,  # latency over batching: each small PUBLISH goes out at once
            retry_refused=False,
            on_connect=lambda _session_present: self._on_connect(made[0]),
            on_disconnect=lambda reason: self._on_disconnect(made[0], reason),
            on_published=lambda mid, reason: self._on_ack(made[0], mid, reason),
        )
        made.append(_Device(user, conn))
        return made[0]

    async def close(self) -> None:
        """Disconnect every client and release the sockets."""
        devices = list(self._devices.values())
        for dev in devices:
            dev.state = "closed"
        await asyncio.gather(*(dev.conn.stop(timeout_s=2.0) for dev in devices))
        self._devices.clear()
        self._waiting.clear()

    # -------------------------------------------------------------------- sending
    @property
    def window(self) -> int:
        """Most messages in flight over all devices."""
        return self._window

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
        self._idle.clear()

    def _can_send(self, dev: _Device) -> bool:
        return (
            dev.state == "connected"
            and len(dev.inflight) < self._client_window
            and self._inflight < self._window
        )

    def _send(self, dev: _Device, idx: int) -> None:
        m = self._messages[idx]
        try:
            mid = dev.conn.send(m.topic, m.payload, qos=1)
        except MqttError as exc:
            self.tally.failures[f"publish:{exc}"] += 1
            return
        dev.inflight[mid] = time.monotonic()
        self._inflight += 1
        self._idle.clear()
        self.tally.published += 1

    def _deny(self, reason: str) -> None:
        self.tally.denied += 1
        self.tally.failures["denied"] += 1
        logger.debug("denied reason=%s", reason)

    def _drain_later(self) -> None:
        """Drain the backlogs once this turn of the loop has taken every PUBACK it read."""
        if not self._drain_soon and self._waiting:
            self._drain_soon = True
            asyncio.get_running_loop().call_soon(self._drain_backlogs)

    def _drain_backlogs(self) -> None:
        """Send from device backlogs, oldest waiting device first, while windows allow."""
        self._drain_soon = False
        for _ in range(len(self._waiting)):
            if self._inflight >= self._window:
                break
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
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._inflight and not self._waiting:
            self._idle.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every added message is acknowledged or failed; False on timeout."""
        self._drain_later()
        self._check_idle()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
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
        self._check_idle()

    # -------------------------------------------------------------------- callbacks
    def _on_connect(self, dev: _Device) -> None:
        if dev.state == "closed":
            return
        dev.state = "connected"
        if dev.backlog and dev not in self._waiting:
            self._waiting.append(dev)
        self._drain_later()

    def _on_disconnect(self, dev: _Device, reason: Reason) -> None:
        if dev.state in ("refused", "closed"):
            return
        if dev.conn.refused is not None:
            dev.state = "refused"
            logger.info("connection refused device=%s reason=%s", dev.user, dev.conn.refused)
            self._drain_later()  # its backlog is denied there
            return
        dev.state = "lost"  # the connection reconnects by itself, after its backoff
        # A clean session forgets unacknowledged messages: they are lost, say so.
        if dev.inflight:
            self.tally.failures["disconnected"] += len(dev.inflight)
            self._inflight -= len(dev.inflight)
            dev.inflight.clear()
            self._check_idle()

    def _on_ack(self, dev: _Device, mid: int, reason: Reason) -> None:
        sent = dev.inflight.pop(mid, None)
        if sent is None:
            return  # counted as lost when its connection dropped
        self._inflight -= 1
        now = time.monotonic()
        self.tally.last_ack = now
        if reason.is_failure:
            self._deny(f"puback:{reason}")
        else:
            self.tally.acknowledged += 1
            self.tally.latencies.append(now - sent)
        self._drain_later()
        self._check_idle()


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

    Runs its own asyncio loop (call it from a thread of its own, not from a loop).

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
    return asyncio.run(
        _publish(
            fleet,
            messages,
            speed,
            progress_cb,
            fast=fast,
            connect_timeout_s=connect_timeout_s,
            stall_timeout_s=stall_timeout_s,
            drain_timeout_s=drain_timeout_s,
            progress_interval_s=progress_interval_s,
        )
    )


async def _publish(
    fleet: FleetPublisher,
    messages: Sequence[SimMessage],
    speed: float,
    progress_cb: Callable[[Progress], None] | None,
    *,
    fast: bool,
    connect_timeout_s: float,
    stall_timeout_s: float,
    drain_timeout_s: float,
    progress_interval_s: float,
) -> PublishReport:
    window = fleet.window
    try:
        connect_s = await fleet.connect((m.publisher for m in messages), connect_timeout_s)
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
            await asyncio.sleep(wait)  # the loop serves every device's socket meanwhile
        if not await fleet.flush(drain_timeout_s):
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
        await fleet.close()
