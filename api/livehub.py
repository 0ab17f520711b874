"""The live hub: what the API's push streams and the console show, kept current from Kafka,
the alert service and InfluxDB, and fanned out to every connected client.

One :class:`LiveHub` per API process, started and stopped by the app's lifespan::

    hub = LiveHub(settings)
    await hub.start()          # returns once the open alerts are rebuilt
    app.state.live_hub = hub   # what api/live.py and api/console.py read
    ...
    await hub.stop()

Sources (names from :mod:`civic_iot.topology`, under the deployment's prefix):

- ``alerts`` (every issued Alert/Update/Cancel, kept forever) from its beginning: the open
  alerts and open earthquakes are rebuilt from it at start, silently, then each new
  message is pushed (stream ``alerts``; earthquakes also on ``quakes``);
- ``readings.{air,water,seismic}`` from their end: a device's last reception, the
  throughput, and, for devices and townships a client asked for, the readings themselves
  (decoded only then: the key is the device id);
- ``processors.township`` from its end: each device's current level per hazard (the map);
- InfluxDB, polled, with the API's read-only token: acknowledgements (the ``ack``
  measurement the alert service writes: an acknowledgement is state, not a message on
  the ``alerts`` topic), sensor health (``sensor_health`` is not on Kafka), and the last
  reception per device at start;
- the alert service: its open ``GET /health`` (which role the instance has), and
  acknowledgements made in the console, which :meth:`LiveHub.acknowledge` sends to its
  ``POST /alerts/{id}/ack`` with the caller's own bearer token (the alert service records
  the token's principal);
- the Kafka consumer groups of the processors and the alert service: their lag.

Streams and what a client may ask for: ``alerts``, ``quakes``, ``devices`` (levels and
last seen) and ``readings`` are public data; ``health`` and ``stats`` (throughput, lag,
clients) are for operators (the router decides who may subscribe).

Delivery: every event gets a sequence number; the id a client sees is ``{epoch}-{seq}``
(``epoch`` is random per hub, so an id from before a restart is recognised as stale).
Each stream keeps its last ``live_replay_events`` events: a client reconnecting with
``Last-Event-ID`` gets what it missed when none of it was dropped, else a fresh snapshot.
Each client has a bounded queue (``live_client_buffer``); a client that falls that far
behind is cut off with a ``reset`` (memory never grows with a slow browser), reconnects,
and gets a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from influxdb_client.client.influxdb_client import InfluxDBClient

from api import queries, views
from api.influx import FluxClient
from civic_iot.contracts.processing import TownshipReport
from civic_iot.contracts.readings import Reading
from civic_iot.kafka_admin import partition_counts
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, influx_token
from civic_iot.storage import schema
from civic_iot.topology import READING_KINDS, Topology
from civic_iot.warning import Quake, warn_township

logger = logging.getLogger(__name__)

__all__ = [
    "PUBLIC_STREAMS",
    "STREAMS",
    "AckFailedError",
    "ClientTooSlowError",
    "LiveEvent",
    "LiveHub",
    "RateLimiter",
    "Subscription",
    "sse_frame",
]

Stream = Literal["alerts", "quakes", "devices", "readings", "health", "stats"]
STREAMS: tuple[Stream, ...] = ("alerts", "quakes", "devices", "readings", "health", "stats")
PUBLIC_STREAMS: frozenset[str] = frozenset({"alerts", "quakes", "devices", "readings"})

#: Ended earthquakes kept for the console's panel (the latest few), besides open ones.
ENDED_QUAKES_KEPT = 3


class ClientTooSlowError(Exception):
    """A client's queue overflowed: it must reconnect and take a snapshot."""


class AckFailedError(Exception):
    """The alert service refused or could not take an acknowledgement."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event: ``data`` is its JSON text, ``keys`` what a filtered client matches on
    (``device:<id>``, ``township:<code>``, ``hazard:<h>``, ``area:<code>``)."""

    seq: int
    stream: str
    name: str
    data: str
    keys: frozenset[str] = frozenset()
    #: The SSE frame, made once for every client that gets it.
    frame: str = ""


def sse_frame(name: str, data: str, event_id: str | None = None) -> str:
    """One SSE event (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


_OVERFLOW = LiveEvent(-1, "", "", "")


class Subscription:
    """One client's queue over some streams, optionally only events sharing one of
    ``keys``. Bounded: on overflow the queue is emptied and the client told to resync."""

    def __init__(self, streams: frozenset[str], keys: frozenset[str] | None, maxsize: int) -> None:
        self.streams = streams
        self.keys = keys
        self._queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self.overflowed = False

    def matches(self, ev: LiveEvent) -> bool:
        return ev.stream in self.streams and (self.keys is None or bool(ev.keys & self.keys))

    def offer(self, ev: LiveEvent) -> None:
        if self.overflowed or not self.matches(ev):
            return
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_OVERFLOW)  # the one slot kept for it
            return
        self._queue.put_nowait(ev)

    def close(self) -> None:
        """End the client's stream at its next read (the server is stopping)."""
        self.overflowed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_OVERFLOW)

    async def get(self, timeout_s: float) -> LiveEvent | None:
        """The next event, or None after ``timeout_s`` without one.

        Raises:
            ClientTooSlowError: the queue overflowed.
        """
        try:
            ev = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if ev is _OVERFLOW:
            raise ClientTooSlowError
        return ev


class RateLimiter:
    """Public streams per client IP: at most ``per_ip`` open at once and a token bucket of
    ``per_minute`` new ones (burst = the same number); ``total`` open over all clients."""

    def __init__(
        self,
        *,
        per_ip: int,
        per_minute: float,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_ip, self.per_minute, self.total = per_ip, per_minute, total
        self._clock = clock
        self._open: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)

    @property
    def open_streams(self) -> int:
        return sum(self._open.values())

    def acquire(self, ip: str, *, public: bool = True) -> str | None:
        """Take a stream slot for ``ip``; None when granted, else why not. Operator
        streams (``public=False``) count towards ``total`` only."""
        if self.open_streams >= self.total:
            return f"the server has {self.total} streams open; try again later"
        if public:
            if self._open[ip] >= self.per_ip:
                return f"at most {self.per_ip} streams per client are open at once"
            now = self._clock()
            tokens, at = self._buckets.get(ip, (self.per_minute, now))
            tokens = min(self.per_minute, tokens + (now - at) * self.per_minute / 60.0)
            if tokens < 1.0:
                self._buckets[ip] = (tokens, now)
                return f"more than {self.per_minute:g} new streams a minute from one client"
            self._buckets[ip] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:
                self._prune(now)
        self._open[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]

    def retry_after_s(self, ip: str) -> int:
        tokens, _ = self._buckets.get(ip, (0.0, 0.0))
        return max(1, round((1.0 - tokens) * 60.0 / self.per_minute))

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket is full again and that hold no stream."""
        full_after = 60.0
        for ip in [
            ip
            for ip, (_, at) in self._buckets.items()
            if now - at > full_after and ip not in self._open
        ]:
            del self._buckets[ip]


@dataclass
class DeviceState:
    """What the map shows of one device."""

    id: str
    kind: str
    sensor: str
    lat: float
    lon: float
    township: str
    #: Last reception (Kafka record time, epoch seconds).
    last_seen_s: float | None = None
    #: hazard -> {"level", "value", "metric", "threshold", "at"} from the township reports.
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: issue -> detail of the sensor-health issues open now.
    health: dict[str, str] = field(default_factory=dict)
    #: issue -> when it was found (epoch s).
    health_at: dict[str, float] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "sensor": self.sensor,
            "lat": self.lat,
            "lon": self.lon,
            "township": self.township,
            "last_seen_s": self.last_seen_s,
            "level": max((int(v["level"]) for v in self.levels.values()), default=0),
            "levels": self.levels,
        }

    def health_view(self) -> dict[str, Any]:
        return {"id": self.id, "issues": dict(self.health)}


def _msg_keys(msg: Mapping[str, Any]) -> frozenset[str]:
    area = msg.get("area") or {}
    keys = {f"hazard:{msg.get('hazard')}", f"area:{area.get('code')}"}
    keys |= {f"township:{g}" for g in area.get("geocodes") or ()}
    return frozenset(keys)


class LiveHub:
    """Keeps the live state and fans events out; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        topology: Topology | None = None,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
        flux: FluxClient | None = None,
    ) -> None:
        self.settings = settings
        #: The API's InfluxDB query client (acknowledgements); None: not read.
        self.flux = flux
        self.api = settings.api
        self.topology = topology or Topology.of(settings)
        #: A registry given here is kept; otherwise the settings' file, re-read on change.
        self._registry_path = None if registry is not None else settings.registry
        self._registry_mtime: float | None = None
        self.clock = clock
        self.epoch = secrets.token_hex(4)
        self.limiter = RateLimiter(
            per_ip=self.api.live_streams_per_ip,
            per_minute=self.api.live_connects_per_minute,
            total=self.api.live_max_streams,
        )
        self.alerts_url = f"http://{settings.alerts.http_host}:{settings.alerts.http_port}"
        self._seq = 0
        self._rings: dict[str, deque[LiveEvent]] = {
            s: deque(maxlen=self.api.live_replay_events) for s in STREAMS
        }
        #: Per stream, the seq of the newest event the ring has let go of.
        self._dropped: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._subs: dict[str, set[Subscription]] = {s: set() for s in STREAMS}
        self._want_devices: Counter[str] = Counter()
        self._want_towns: Counter[str] = Counter()
        self.devices: dict[str, DeviceState] = {}
        self.registry = Registry()
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.acks: dict[str, list[dict[str, Any]]] = {}
        self.quakes: dict[str, Quake] = {}
        self._ended: deque[Quake] = deque(maxlen=ENDED_QUAKES_KEPT)
        self._dirty_devices: set[str] = set()
        self._dirty_health: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.lag: dict[str, int | None] = {"processors": None, "alerts": None}
        self.alert_service = "unknown"
        self.slow_clients = 0
        #: Readings per second by kind over the last stats period.
        self._rates: dict[str, float] = {}
        self.alerts_replayed = asyncio.Event()
        self.kafka_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._consumer: AIOKafkaConsumer | None = None
        if registry is not None:
            self._apply_registry(registry)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, replay_timeout_s: float = 30.0) -> None:
        """Start every source; return once the open alerts are rebuilt (or after
        ``replay_timeout_s``, logged: they then fill in as the replay goes on)."""
        self.reload_registry()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0))
        loops = {
            "kafka": self._kafka_loop,
            "batches": self._batch_loop,
            "acks": self._ack_loop,
            "health": self._health_loop,
            "lag": self._lag_loop,
        }
        self._tasks = [
            asyncio.create_task(self._guard(name, fn), name=f"live-{name}")
            for name, fn in loops.items()
        ]
        try:
            await asyncio.wait_for(self.alerts_replayed.wait(), replay_timeout_s)
        except TimeoutError:
            logger.warning(
                "live hub: alerts not replayed yet after_s=%.0f topic=%s",
                replay_timeout_s,
                self.topology.alerts,
            )

    async def stop(self) -> None:
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
        # Wake every client so that its stream ends now rather than at its next event.
        for subs in self._subs.values():
            for sub in subs:
                sub.close()

    async def _guard(self, name: str, fn: Callable[[], Any]) -> None:
        """Run a source loop; an error is logged and the loop restarted after a pause."""
        while not self._stopping.is_set():
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("live hub: %s loop failed; restarting in 2 s", name)
                await asyncio.sleep(2.0)

    def health(self) -> dict[str, Any]:
        ok = self.kafka_ready and self.alerts_replayed.is_set()
        return {
            "status": "ok" if ok else "starting",
            "kafka": self.kafka_ready,
            "alerts_replayed": self.alerts_replayed.is_set(),
            "streams": self.limiter.open_streams,
            "alert_service": self.alert_service,
        }

    # ------------------------------------------------------------------ registry

    def reload_registry(self) -> None:
        """Read the device registry again if it changed (devices join and leave live)."""
        if self._registry_path is None:
            return
        try:
            mtime = self._registry_path.stat().st_mtime
        except OSError:
            return
        if mtime == self._registry_mtime:
            return
        self._registry_mtime = mtime
        self._apply_registry(load_registry(self._registry_path))

    def _apply_registry(self, registry: Registry) -> None:
        self.registry = registry
        old = self.devices
        self.devices = {}
        for d in registry:
            st = old.get(d.id) or DeviceState(
                d.id, d.kind, d.sensor or d.kind, d.lat, d.lon, d.township
            )
            st.lat, st.lon, st.township = d.lat, d.lon, d.township
            self.devices[d.id] = st
        self._dirty_devices |= set(self.devices) ^ set(old)

    # ------------------------------------------------------------------ fan-out

    def publish(self, stream: Stream, name: str, data: Any, keys: Iterable[str] = ()) -> LiveEvent:
        self._seq += 1
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        frame = sse_frame(name, text, self.event_id(self._seq))
        ev = LiveEvent(self._seq, stream, name, text, frozenset(keys), frame)
        ring = self._rings[stream]
        if len(ring) == ring.maxlen:
            self._dropped[stream] = ring[0].seq
        ring.append(ev)
        for sub in list(self._subs[stream]):
            was = sub.overflowed
            sub.offer(ev)
            if sub.overflowed and not was:
                self.slow_clients += 1
        return ev

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    @property
    def seq(self) -> int:
        return self._seq

    def subscribe(
        self,
        streams: Iterable[str],
        keys: Iterable[str] | None = None,
        last_event_id: str | None = None,
    ) -> tuple[Subscription, list[LiveEvent] | None]:
        """Register a client. Returns its subscription and, when ``last_event_id`` is this
        hub's and nothing after it was dropped, the events it missed (possibly none);
        None means the client needs a snapshot taken now (:attr:`seq` is its position)."""
        wanted = frozenset(streams)
        key_set = None if keys is None else frozenset(keys)
        sub = Subscription(wanted, key_set, self.api.live_client_buffer)
        for s in wanted:
            self._subs[s].add(sub)
        for k in key_set or ():
            if k.startswith("device:"):
                self._want_devices[k[7:]] += 1
            elif k.startswith("township:"):
                self._want_towns[k[9:]] += 1
        return sub, self._replay(sub, last_event_id)

    def unsubscribe(self, sub: Subscription) -> None:
        for s in sub.streams:
            self._subs[s].discard(sub)
        for k in sub.keys or ():
            counter, name = (
                (self._want_devices, k[7:])
                if k.startswith("device:")
                else (self._want_towns, k[9:])
            )
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]

    def _replay(self, sub: Subscription, last_event_id: str | None) -> list[LiveEvent] | None:
        if not last_event_id:
            return None
        epoch, _, seq_text = last_event_id.strip().partition("-")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        last = int(seq_text)
        if last > self._seq or any(self._dropped[s] > last for s in sub.streams):
            return None
        missed = [ev for s in sub.streams for ev in self._rings[s] if ev.seq > last]
        return sorted((ev for ev in missed if sub.matches(ev)), key=lambda ev: ev.seq)

    # ------------------------------------------------------------------ views

    def alerts_view(self) -> list[dict[str, Any]]:
        """The open alerts (JSON form of each one's latest message) with their
        acknowledgements, oldest first."""
        out = []
        for alert_id, msg in self.open_alerts.items():
            out.append({**msg, "acknowledgements": self.acks.get(alert_id, [])})
        return sorted(out, key=lambda m: str(m.get("sent", "")))

    def quake_view(self, q: Quake) -> dict[str, Any]:
        """An earthquake for the console: facts, the cells, and per township of the
        registry its expected level and S-wave arrival (epoch s)."""
        towns: list[dict[str, Any]] = []
        for t in self.registry.townships:
            w = warn_township(q, t.code, t.lat, t.lon)
            towns.append(
                {
                    "code": t.code,
                    "name": t.name,
                    "intensity": w.intensity,
                    "s_arrival_s": round(w.arrival_s, 3),
                    "distance_km": round(w.distance_km, 1),
                }
            )
        towns.sort(key=lambda t: float(t["s_arrival_s"]))
        return {
            **q.summary(),
            "report_min": q.report_min,
            "cells": [[c.lat, c.lon, c.intensity, c.township] for c in q.cells],
            "townships": towns,
        }

    def quakes_view(self) -> list[dict[str, Any]]:
        """Open earthquakes and the last few that ended, newest first."""
        qs = [*self.quakes.values(), *self._ended]
        return [self.quake_view(q) for q in sorted(qs, key=lambda q: -q.origin_s)]

    def townships_view(self) -> list[dict[str, Any]]:
        return [
            {"code": t.code, "name": t.name, "county": t.county, "lat": t.lat, "lon": t.lon}
            for t in self.registry.townships
        ]

    def stats_view(self) -> dict[str, Any]:
        return {
            "at": self.clock(),
            "records": dict(self.counts),
            "rates": dict(self._rates),
            "lag": dict(self.lag),
            "open_alerts": len(self.open_alerts),
            "open_quakes": len(self.quakes),
            "alert_service": self.alert_service,
            "streams": self.limiter.open_streams,
            "slow_clients": self.slow_clients,
        }

    # ------------------------------------------------------------------ inputs (pure-ish)

    def on_alert_message(self, msg: Mapping[str, Any], *, replay: bool) -> None:
        """An issued alert message (JSON form). During the start-up replay the state is
        rebuilt silently."""
        alert_id = str(msg.get("alert_id"))
        if msg.get("msg_type") == "Cancel":
            self.open_alerts.pop(alert_id, None)
            self.acks.pop(alert_id, None)
        else:
            self.open_alerts[alert_id] = dict(msg)
            if msg.get("acknowledgements"):
                self.acks[alert_id] = list(msg["acknowledgements"])
        quake = Quake.from_message(msg)
        if quake is not None:
            if quake.ended:
                self.quakes.pop(alert_id, None)
                self._ended.append(quake)
            else:
                self.quakes[alert_id] = quake
        if replay:
            return
        self.publish(
            "alerts",
            "alert",
            {**msg, "acknowledgements": self.acks.get(alert_id, [])},
            _msg_keys(msg),
        )
        if quake is not None:
            self.publish("quakes", "quake", self.quake_view(quake), _msg_keys(msg))

    def on_township_report(self, report: TownshipReport) -> None:
        dev = self.devices.get(report.device)
        if dev is None:
            return
        new = {
            "level": report.level,
            "value": report.value,
            "metric": report.metric,
            "threshold": report.threshold,
            "at": report.event_time.timestamp(),
        }
        old = dev.levels.get(report.hazard)
        dev.levels[report.hazard] = new
        if old is None or old["level"] != new["level"] or old["value"] != new["value"]:
            self._dirty_devices.add(dev.id)

    def on_reading_record(self, kind: str, key: bytes | None, value: bytes, ts_ms: int) -> None:
        self.counts[kind] += 1
        device = key.decode(errors="replace") if key else ""
        dev = self.devices.get(device)
        if dev is not None:
            dev.last_seen_s = ts_ms / 1000.0
            self._dirty_devices.add(device)
            if "silent" in dev.health and dev.health_at.get("silent", 0.0) < dev.last_seen_s:
                del dev.health["silent"]
                self._dirty_health.add(device)
        town = dev.township if dev is not None else None
        if device not in self._want_devices and (town is None or town not in self._want_towns):
            return
        try:
            reading = Reading.from_record(value)
        except ValueError:
            logger.warning("live hub: undecodable reading kind=%s device=%s", kind, device)
            return
        self.publish(
            "readings",
            "reading",
            reading.model_dump(mode="json"),
            {f"device:{reading.device_id}", f"township:{reading.location.township}"},
        )

    def set_acks(
        self, by_alert: Mapping[str, list[dict[str, Any]]], *, only: Iterable[str] | None = None
    ) -> None:
        """Acknowledgements read now (``only``: of these alerts; default every open one).

        One per principal (again by the same principal replaces it, as the alert service
        does), and never taken back: one made here a moment ago may not be stored yet.
        """
        for alert_id in self.open_alerts if only is None else only:
            held = {str(a.get("by")): a for a in self.acks.get(alert_id, [])}
            for a in by_alert.get(alert_id, []):
                held.pop(str(a.get("by")), None)
                held[str(a.get("by"))] = a
            acks = list(held.values())
            if acks != self.acks.get(alert_id, []):
                self.acks[alert_id] = acks
                self._publish_ack(alert_id)

    def _publish_ack(self, alert_id: str) -> None:
        msg = self.open_alerts.get(alert_id, {})
        self.publish(
            "alerts",
            "ack",
            {
                "alert_id": alert_id,
                "key": msg.get("key"),
                "acknowledgements": self.acks.get(alert_id, []),
            },
            _msg_keys(msg),
        )

    def set_health(self, issues: Mapping[str, Mapping[str, tuple[str, float]]]) -> None:
        """Open sensor-health issues per device (device -> issue -> (detail, found at,
        epoch s)), all of them. A device heard from after it was found ``silent`` is not
        silent: the finding was cleared by nobody (a run that stopped, a worker that
        restarted and lost the device's state), so it is not shown."""
        for dev in self.devices.values():
            found = {
                issue: (detail, at)
                for issue, (detail, at) in issues.get(dev.id, {}).items()
                if not (issue == "silent" and (dev.last_seen_s or 0.0) > at)
            }
            now = {issue: detail for issue, (detail, _) in found.items()}
            dev.health_at = {issue: at for issue, (_, at) in found.items()}
            if now != dev.health:
                dev.health = now
                self._dirty_health.add(dev.id)

    def flush_batches(self) -> None:
        """Send the device and health changes gathered since the last call."""
        if self._dirty_devices:
            changed = [self.devices[d].public() for d in self._dirty_devices if d in self.devices]
            removed = [d for d in self._dirty_devices if d not in self.devices]
            self._dirty_devices = set()
            self.publish("devices", "devices", {"devices": changed, "removed": removed})
        if self._dirty_health:
            changed = [
                self.devices[d].health_view() for d in self._dirty_health if d in self.devices
            ]
            self._dirty_health = set()
            self.publish("health", "health", {"devices": changed})

    # ------------------------------------------------------------------ acknowledgements

    async def acknowledge(
        self, alert_id: str, authorization: str, note: str = ""
    ) -> dict[str, Any]:
        """Acknowledge at the alert service with the caller's ``Authorization`` header (the
        alert service checks the token and records its principal); returns its record.

        Raises:
            AckFailedError: with the HTTP status to answer (the alert service's, or 503
                when it cannot be reached).
        """
        if self._http is None:
            raise AckFailedError(503, "the live hub is not running")
        url = f"{self.alerts_url}/alerts/{quote(alert_id, safe='')}/ack"
        headers = {"Authorization": authorization}
        try:
            async with self._http.post(
                url, json={"note": note}, headers=headers, allow_redirects=False
            ) as resp:
                body: Any = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            msg = f"alert service not reachable at {self.alerts_url}: {exc or type(exc).__name__}"
            raise AckFailedError(503, msg) from exc
        if status != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else body
            raise AckFailedError(status if status >= 400 else 502, str(detail))
        target = str(body.get("alert_id") or alert_id)
        if target in self.open_alerts:
            self.set_acks({target: [body]}, only=[target])
        return body

    # ------------------------------------------------------------------ loops (I/O)

    async def _kafka_loop(self) -> None:
        top = self.topology
        reading_topics = {top.readings(k): k for k in READING_KINDS}
        names = [top.alerts, top.township, *reading_topics]
        bootstrap = self.settings.kafka.bootstrap
        while True:
            counts = await partition_counts(bootstrap, names)
            missing = [n for n in names if n not in counts]
            if not missing:
                break
            logger.info("live hub: waiting for kafka topics missing=%s", ",".join(missing))
            await asyncio.sleep(3.0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            client_id="civic-api-live",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        try:
            alert_tps = [TopicPartition(top.alerts, p) for p in range(counts[top.alerts])]
            other_tps = [
                TopicPartition(n, p) for n in names if n != top.alerts for p in range(counts[n])
            ]
            consumer.assign([*alert_tps, *other_tps])
            await consumer.seek_to_beginning(*alert_tps)
            await consumer.seek_to_end(*other_tps)
            replay_end: dict[TopicPartition, int] = await consumer.end_offsets(alert_tps)
            self.kafka_ready = True
            replaying = {tp for tp, n in replay_end.items() if n > 0}
            if not replaying:
                self.alerts_replayed.set()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    if tp.topic == top.alerts:
                        for r in records:
                            self._on_alert_record(r, replay=r.offset < replay_end.get(tp, 0))
                    elif tp.topic == top.township:
                        for r in records:
                            self._on_township_record(r)
                    else:
                        kind = reading_topics[tp.topic]
                        for r in records:
                            if r.value is not None:
                                self.on_reading_record(kind, r.key, r.value, r.timestamp)
                if replaying:
                    for tp in list(replaying):
                        if await consumer.position(tp) >= replay_end[tp]:
                            replaying.discard(tp)
                    if not replaying:
                        self.alerts_replayed.set()
                        logger.info(
                            "live hub: alerts replayed open=%d quakes=%d",
                            len(self.open_alerts),
                            len(self.quakes),
                        )
        finally:
            self.kafka_ready = False
            self._consumer = None
            await consumer.stop()

    def _on_alert_record(self, r: ConsumerRecord[bytes, bytes], *, replay: bool) -> None:
        try:
            msg = json.loads(r.value or b"")["json"]
        except (ValueError, KeyError, TypeError):
            logger.warning("live hub: unreadable alert record offset=%d", r.offset)
            return
        self.on_alert_message(msg, replay=replay)

    def _on_township_record(self, r: ConsumerRecord[bytes, bytes]) -> None:
        try:
            report = TownshipReport.model_validate_json(r.value or b"")
        except ValueError:
            logger.warning("live hub: unreadable township report offset=%d", r.offset)
            return
        self.on_township_report(report)

    async def _batch_loop(self) -> None:
        last_stats = 0.0
        last_counts: Counter[str] = Counter()
        while not self._stopping.is_set():
            await asyncio.sleep(self.api.live_device_batch_s)
            self.reload_registry()
            self.flush_batches()
            now = time.monotonic()
            if now - last_stats >= 2.0:
                if last_stats:
                    span = now - last_stats
                    self._rates = {
                        k: round((self.counts[k] - last_counts[k]) / span, 1) for k in READING_KINDS
                    }
                last_stats, last_counts = now, Counter(self.counts)
                self.publish("stats", "stats", self.stats_view())

    async def _ack_loop(self) -> None:
        assert self._http is not None
        while not self._stopping.is_set():
            try:
                async with self._http.get(f"{self.alerts_url}/health") as resp:
                    body: Any = await resp.json(content_type=None)
                role = body.get("role") if isinstance(body, dict) else None
                self.alert_service = str(role or f"http {resp.status}")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.alert_service = "unreachable"
            if self.flux is not None and self.open_alerts:
                try:
                    self.set_acks(await self._read_acks())
                except Exception as exc:  # noqa: BLE001 - keep the last known acks
                    logger.warning("live hub: acknowledgements not read from InfluxDB: %s", exc)
            await asyncio.sleep(self.api.live_ack_poll_s)

    async def _read_acks(self) -> dict[str, list[dict[str, Any]]]:
        """The stored acknowledgements of the open alerts (``ack``, oldest first). All of
        them are read: people make them, so they are few, and an alert may be acknowledged
        long before its newest message."""
        assert self.flux is not None
        q = queries.history(schema.ACK, self.settings.influx, newest_first=False)
        out: dict[str, list[dict[str, Any]]] = {}
        for alert_id, acks in views.acknowledgements(
            map(views.pivoted_point, await self.flux.query(q))
        ).items():
            msg = self.open_alerts.get(alert_id)
            if msg is not None:
                key = msg.get("key")
                out[alert_id] = [
                    {"alert_id": alert_id, "key": key, **a.model_dump(mode="json")} for a in acks
                ]
        return out

    def _influx(self) -> InfluxDBClient:
        i = self.settings.influx
        return InfluxDBClient(url=i.url, token=influx_token(self.settings, "api"), org=i.org)

    def _read_last_seen(self) -> dict[str, float]:
        i = self.settings.influx
        queries = [
            f'from(bucket: "{i.bucket_readings}") |> range(start: -1h) '
            '|> filter(fn: (r) => (r._measurement == "air" or r._measurement == "water") '
            'and r._field == "lat") |> group(columns: ["device"]) |> last() '
            '|> keep(columns: ["device", "_time"])',
            f'from(bucket: "{i.bucket_derived}") |> range(start: -1h) '
            '|> filter(fn: (r) => r._measurement == "seismic_station" and r._field == "pga_gal") '
            '|> group(columns: ["device"]) |> last() |> keep(columns: ["device", "_time"])',
        ]
        out: dict[str, float] = {}
        with self._influx() as c:
            for q in queries:
                for t in c.query_api().query(q):
                    for rec in t.records:
                        out[str(rec.values["device"])] = rec.get_time().timestamp()
        return out

    def _read_health(self) -> dict[str, dict[str, tuple[str, float]]]:
        """Open sensor-health issues: the last ``sensor_health`` point per device and issue
        within a week, where ``active`` is true: device -> issue -> (detail, epoch s)."""
        i = self.settings.influx
        q = (
            f'from(bucket: "{i.bucket_derived}") |> range(start: -7d) '
            '|> filter(fn: (r) => r._measurement == "sensor_health") '
            '|> group(columns: ["device", "issue", "_field"]) |> last()'
        )
        last: dict[tuple[str, str], dict[str, Any]] = {}
        with self._influx() as c:
            for t in c.query_api().query(q):
                for rec in t.records:
                    k = (str(rec.values.get("device")), str(rec.values.get("issue")))
                    fields = last.setdefault(k, {})
                    fields[str(rec.get_field())] = rec.get_value()
                    fields["at"] = max(float(fields.get("at", 0.0)), rec.get_time().timestamp())
        out: dict[str, dict[str, tuple[str, float]]] = {}
        for (device, issue), fields in last.items():
            if fields.get("active") is True:
                detail = str(fields.get("detail") or "")
                out.setdefault(device, {})[issue] = (detail, float(fields["at"]))
        return out

    async def _health_loop(self) -> None:
        try:
            seen = await asyncio.to_thread(self._read_last_seen)
        except Exception as exc:  # noqa: BLE001 - InfluxDB down: the map fills from Kafka
            logger.warning("live hub: last reception not read from InfluxDB: %s", exc)
        else:
            for device, at in seen.items():
                dev = self.devices.get(device)
                if dev is not None and (dev.last_seen_s or 0) < at:
                    dev.last_seen_s = at
                    self._dirty_devices.add(device)
        while not self._stopping.is_set():
            try:
                self.set_health(await asyncio.to_thread(self._read_health))
            except Exception as exc:  # noqa: BLE001 - keep the last known health
                logger.warning("live hub: sensor health not read from InfluxDB: %s", exc)
            await asyncio.sleep(self.api.live_health_poll_s)

    async def _lag_loop(self) -> None:
        top = self.topology
        groups = {
            "processors": (top.processors_app, [top.readings(k) for k in READING_KINDS]),
            "alerts": (top.alerts_group, [top.candidates]),
        }
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap)
        await admin.start()
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(self.api.live_lag_poll_s)
                consumer = self._consumer
                if consumer is None:
                    continue
                for name, (group, topics) in groups.items():
                    with contextlib.suppress(KafkaError, KeyError, ValueError):
                        self.lag[name] = await _group_lag(admin, consumer, group, topics)
        finally:
            await admin.close()


async def _group_lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str, topics: list[str]
) -> int | None:
    """Messages on ``topics`` that ``group`` has not committed yet; None without a group."""
    described = await admin.describe_topics(topics)
    tps = [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    ]
    committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    if not any(o.offset >= 0 for o in committed.values()):
        return None
    end = await consumer.end_offsets(tps)
    lag: int = sum(
        max(0, n - max(0, committed[tp].offset)) for tp, n in end.items() if tp in committed
    )
    return lag
