"""A lean device fleet for the chaos and soak benchmarks (run by hand, never by tests).

Each device is one MQTT 5 connection of its own (its id, its password), written with
asyncio streams and a few lines of packet encoding instead of paho: a soak runs tens of
thousands of devices from one process, which paho clients (a housekeeping timer and
several reads per packet each) cannot. It speaks only what a device needs: CONNECT,
PUBLISH at QoS 1, PUBACK, PINGREQ; a connection that drops is made again with the retry
policy's backoff (:mod:`civic_iot.retry`), and what it had in flight is counted as
unacknowledged, never as sent.

A reading counts as **acknowledged** when the broker's PUBACK says success (0x00, or
0x10 "no matching subscribers": the broker took it and delivered it to nobody, which is
precisely a loss downstream). That set is what the benchmarks hold InfluxDB to.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from civic_iot import retry

#: PUBACK reason codes that mean the broker took the message.
ACCEPTED = (0x00, 0x10)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, username: str, password: str, keepalive_s: int) -> bytes:
    """MQTT 5 CONNECT, clean start, user name and password, no properties."""
    body = (
        _str("MQTT")
        + bytes([5, 0x80 | 0x40 | 0x02])
        + struct.pack("!H", keepalive_s)
        + b"\x00"
        + _str(client_id)
        + _str(username)
        + _str(password)
    )
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """MQTT 5 PUBLISH, QoS 1, no properties."""
    body = _str(topic) + struct.pack("!H", mid) + b"\x00" + payload
    return b"\x32" + _varint(len(body)) + body


@dataclass
class Tally:
    """What a fleet did: per-second acknowledged counts and the totals."""

    sent: int = 0
    acked: int = 0
    refused: int = 0
    #: In flight when a connection dropped: the broker may or may not have them.
    unacknowledged: int = 0
    #: Not sent: the device was disconnected or its window full.
    skipped: int = 0
    connects: int = 0
    per_second: dict[int, int] = field(default_factory=dict)


class LeanDevice:
    """One device's connection. :meth:`publish` sends at once or returns False (not
    connected, or ``window`` messages already awaiting their PUBACK)."""

    def __init__(
        self,
        device_id: str,
        password: str,
        host: str,
        port: int,
        *,
        on_ack: Callable[[Any], None],
        tally: Tally,
        window: int = 100,
        keepalive_s: int = 600,
    ) -> None:
        self.id = device_id
        self._password = password
        self._host, self._port = host, port
        self._on_ack = on_ack
        self._tally = tally
        self._window = window
        self._keepalive_s = keepalive_s
        self._writer: asyncio.StreamWriter | None = None
        self._inflight: dict[int, object] = {}
        self._next_mid = 0
        self._connected = asyncio.Event()
        self._closing = False
        self._backoff = retry.Backoff(0.5, 5.0)
        self._last_write = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    def publish(self, topic: str, payload: bytes, tag: object) -> bool:
        writer = self._writer
        if writer is None or not self.connected or len(self._inflight) >= self._window:
            self._tally.skipped += 1
            return False
        self._next_mid = self._next_mid % 65535 + 1
        while self._next_mid in self._inflight:
            self._next_mid = self._next_mid % 65535 + 1
        self._inflight[self._next_mid] = tag
        writer.write(publish_packet(topic, payload, self._next_mid))
        self._last_write = time.monotonic()
        self._tally.sent += 1
        return True

    async def run(self) -> None:
        """Connect, read PUBACKs, reconnect with backoff; until :meth:`close`."""
        while not self._closing:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                await self._session()
            self._drop()
            if not self._closing:
                await asyncio.sleep(self._backoff.next_delay())

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(
                connect_packet(
                    f"lean-{self.id}-{id(self):x}", self.id, self._password, self._keepalive_s
                )
            )
            header = await reader.readexactly(1)
            body = await reader.readexactly(await _read_varint(reader))
            if header[0] != 0x20 or body[1] >= 0x80:
                self._tally.refused += 1
                await asyncio.sleep(5)  # refused (not registered yet?): try again later
                return
            self._writer = writer
            self._connected.set()
            self._backoff.reset()
            self._tally.connects += 1
            pinger = asyncio.create_task(self._ping())
            try:
                while True:
                    header = await reader.readexactly(1)
                    body = await reader.readexactly(await _read_varint(reader))
                    if header[0] & 0xF0 == 0x40:  # PUBACK
                        mid = (body[0] << 8) | body[1]
                        tag = self._inflight.pop(mid, None)
                        if tag is None:
                            continue
                        if len(body) < 3 or body[2] in ACCEPTED:
                            self._tally.acked += 1
                            sec = int(time.time())
                            self._tally.per_second[sec] = self._tally.per_second.get(sec, 0) + 1
                            self._on_ack(tag)
                        else:
                            self._tally.refused += 1
                    elif header[0] & 0xF0 == 0xE0:  # DISCONNECT from the broker
                        return
            finally:
                pinger.cancel()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            writer = self._writer
            if writer is not None and time.monotonic() - self._last_write > self._keepalive_s / 3:
                writer.write(b"\xc0\x00")

    def _drop(self) -> None:
        self._connected.clear()
        self._writer = None
        self._tally.unacknowledged += len(self._inflight)
        self._inflight.clear()

    async def close(self) -> None:
        self._closing = True
        writer = self._writer
        if writer is not None:
            writer.write(b"\xe0\x00")  # DISCONNECT, normal
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()


async def _read_varint(reader: asyncio.StreamReader) -> int:
    n, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n
        shift += 7
    msg = "malformed remaining length"
    raise ValueError(msg)
