"""The read API's data access: the queries of :mod:`api.queries` run on the Flux client,
their rows turned into answers by :mod:`api.views`. Thin: no decision is made here that
a unit test could not make on rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from api import queries, views
from api.cache import Recent, freeze
from api.catalogue import level_of, presence_field, quantities_of, raw_measurement
from api.influx import FluxClient, Row, parse_time_ns
from api.models import (
    Acknowledgement,
    AlertMessage,
    HealthIssue,
    OpenAlert,
    QuakeCell,
    QuakeEvent,
)
from api.queries import Where, Window
from civic_iot.registry import Device, Registry
from civic_iot.settings import InfluxSettings
from civic_iot.storage import schema
from civic_iot.storage.schema import Measurement

__all__ = ["Status", "Store"]

#: Within this much after an estimate's time lie all its cells (``time + i`` ns, i < 10^6).
_CELLS_SPAN_NS = 1_000_000
#: The window :meth:`Store.readings` reads first, ns.
RECENT_NS = 15 * 60 * 1_000_000_000
#: How long a device's all-time newest values are remembered, seconds; shorter than
#: :data:`RECENT_NS`, so that whatever was stored since is in the window.
KNOWN_FOR_S = 600.0
assert KNOWN_FOR_S * 1e9 < RECENT_NS


@dataclass(frozen=True)
class Status:
    """The stored facts a device status is made of (:meth:`Store.status`)."""

    last_seen: dict[str, int]
    levels: dict[str, views.StoredPoint]
    issues: dict[str, list[HealthIssue]]
    #: The newest readings' rows (detail only).
    readings: list[Row]


class Store:
    """Queries over one InfluxDB organisation and its configured buckets."""

    def __init__(
        self,
        flux: FluxClient,
        influx: InfluxSettings,
        *,
        cache_ttl_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flux = flux
        self.influx = influx
        self._clock = clock
        self._open_alerts: Recent[list[OpenAlert]] = Recent(cache_ttl_s, clock)
        #: device -> (when read, its all-time newest row of each quantity)
        self._known: dict[str, tuple[float, tuple[Row, ...]]] = {}
        self.recent: Recent[Any] = Recent(cache_ttl_s, clock)

    async def _latest(
        self, m: Measurement, where: Where, fields: Sequence[str] | None = None
    ) -> list[Row]:
        return await self.flux.query(queries.latest(m, self.influx, where, fields=fields))

    # ------------------------------------------------------------------ devices

    async def readings(
        self, devices: Sequence[Device], where: Where, *, also: Sequence[str] = ()
    ) -> tuple[list[Row], list[list[Row]]]:
        """The newest value of each quantity of these devices (``where``: the tags that
        select them in storage, e.g. one device or one township).

        The last :data:`RECENT_NS` are read first (cheap: a few minutes of points). A
        device is read over all time (a pushed-down ``last()`` per series: every series'
        end in every shard, dearer) when its all-time newest values are not remembered
        from an earlier read, or were remembered more than :data:`KNOWN_FOR_S` ago; else
        a quantity the window lacks takes the remembered value. That value is the newest:
        a reading stored since the all-time read is in the window, because the window is
        longer than the memory. (A backlog a device sends late, stamped before the window,
        shows once the memory expires.) So a busy township costs the window's points, a
        quiet one nothing more, and a quantity reported less often than the window keeps
        its newest value. ``also``: other queries sent in the same request, answered
        second.
        """
        now = self._clock()
        groups: dict[str, tuple[Measurement, set[str]]] = {}
        for d in devices:
            m = raw_measurement(d.kind)
            groups.setdefault(m.name, (m, set()))[1].update(q.field for q in quantities_of(d))
        start = time.time_ns() - RECENT_NS
        scripts = [
            queries.recent_last(m, self.influx, where, sorted(f), start_ns=start)
            for m, f in groups.values()
        ]
        answers = await self.flux.query_many([*scripts, *also]) if scripts or also else []
        recent, extra = answers[: len(scripts)], answers[len(scripts) :]
        newest: dict[tuple[str, str], Row] = {}
        for r in (r for part in recent for r in part):
            newest[(r.get("device") or "", r["_field"])] = r
        stale = []
        for d in devices:
            known = self._known.get(d.id)
            if known is None or now - known[0] > KNOWN_FOR_S:
                stale.append(d)
                continue
            for r in known[1]:
                key = (d.id, r["_field"])
                if key not in newest or r["_time"] > newest[key]["_time"]:
                    newest[key] = r
        if stale:
            full = await self._readings_all_time(stale)
            by_device: dict[str, list[Row]] = {d.id: [] for d in stale}
            for r in full:
                by_device.setdefault(r.get("device") or "", []).append(r)
                key = (r.get("device") or "", r["_field"])
                if key not in newest or r["_time"] > newest[key]["_time"]:
                    newest[key] = r
            for d in stale:
                self._known[d.id] = (now, tuple(by_device[d.id]))
        return list(newest.values()), extra

    async def _readings_all_time(self, devices: Sequence[Device]) -> list[Row]:
        groups: dict[str, tuple[Measurement, set[str], list[str]]] = {}
        for d in devices:
            m = raw_measurement(d.kind)
            g = groups.setdefault(m.name, (m, set(), []))
            g[1].update(q.field for q in quantities_of(d))
            g[2].append(d.id)
        results = await self.flux.query_many(
            [
                queries.latest(m, self.influx, {"device": ids}, fields=sorted(f))
                for m, f, ids in groups.values()
            ]
        )
        return [r for part in results for r in part]

    async def status(
        self, devices: Sequence[Device], where: Where, *, detail: bool = False
    ) -> Status:
        """What a device's status is made of, in one request to InfluxDB: the newest
        reading's time (from the one field every point of a raw measurement carries), the
        newest level point (its ranking field; with ``detail`` every field) and the open
        health issues; with ``detail`` the newest readings too (:meth:`readings`)."""
        presence = {raw_measurement(d.kind).name: raw_measurement(d.kind) for d in devices}
        wanted: dict[str, tuple[Measurement, set[str]]] = {}
        for d in devices:
            m, field = level_of(d)
            wanted.setdefault(m.name, (m, set()))[1].add(field)
        health = schema.SENSOR_HEALTH
        scripts = [
            *(
                queries.latest(m, self.influx, _device_tags(m, where), fields=None if detail
                               else sorted(fields))
                for m, fields in wanted.values()
            ),
            queries.latest(health, self.influx, _device_tags(health, where)),
        ]  # fmt: skip
        if not detail:
            scripts += [
                queries.latest(m, self.influx, where, fields=[presence_field(m)])
                for m in presence.values()
            ]
            answers = await self.flux.query_many(scripts)
            rows: list[Row] = []
        else:
            rows, answers = await self.readings(devices, where, also=scripts)
        n = len(wanted)
        levels: dict[str, views.StoredPoint] = {}
        for (m, _), level_rows in zip(wanted.values(), answers[:n], strict=True):
            for p in views.newest_points(level_rows, m):
                dev = p.get("device")
                if dev and (dev not in levels or p["_time"] > levels[dev]["_time"]):
                    levels[dev] = p
        seen = views.last_seen(rows if detail else [r for a in answers[n + 1 :] for r in a])
        return Status(seen, levels, views.health_issues(answers[n]), rows)

    # ------------------------------------------------------------------ alerts

    async def open_alerts(self, registry: Registry, where: Where = {}) -> list[OpenAlert]:  # noqa: B006
        """Open alerts (newest first), with their acknowledgements (reused for the cache's
        time: every device and township answer includes them)."""
        return await self._open_alerts.get(
            (id(registry), freeze(dict(where))), lambda: self._read_open_alerts(registry, where)
        )

    async def _read_open_alerts(self, registry: Registry, where: Where) -> list[OpenAlert]:
        m = schema.ALERT
        rows = await self._latest(m, where)
        opened = views.open_alerts(views.newest_points(rows, m), registry)
        if not opened:
            return opened
        ids = [a.alert_id for a in opened]
        start = min(_ns(a.opened or a.last.sent) for a in opened)
        ack_rows = await self.flux.query(
            queries.history(schema.ACK, self.influx, start_ns=start, newest_first=False)
        )
        acks = views.acknowledgements(
            p for p in map(views.pivoted_point, ack_rows) if p.get("alert_id") in ids
        )
        return [a.model_copy(update={"acknowledgements": acks.get(a.alert_id, [])}) for a in opened]

    async def alert_messages(
        self,
        where: Where,
        *,
        start_ns: int | None,
        stop_ns: int | None,
        limit: int,
        offset: int,
        alert_id: str | None = None,
        newest_first: bool = True,
    ) -> list[AlertMessage]:
        """Issued messages: those of one alert (every one, in order), or a page of all of
        them newest first (their times found first, then only those points read whole).
        Reused for the cache's time, like the open alerts (a feed clients poll)."""
        key = ("messages", freeze(dict(where)), start_ns, stop_ns, limit, offset, alert_id,
               newest_first)  # fmt: skip
        answer: list[AlertMessage] = await self.recent.get(
            key,
            lambda: self._alert_messages(
                where,
                start_ns=start_ns,
                stop_ns=stop_ns,
                limit=limit,
                offset=offset,
                alert_id=alert_id,
                newest_first=newest_first,
            ),
        )
        return answer

    async def _alert_messages(
        self,
        where: Where,
        *,
        start_ns: int | None,
        stop_ns: int | None,
        limit: int,
        offset: int,
        alert_id: str | None,
        newest_first: bool,
    ) -> list[AlertMessage]:
        m = schema.ALERT
        if alert_id is not None:
            q = queries.history(
                m,
                self.influx,
                where,
                start_ns=start_ns,
                stop_ns=stop_ns,
                match={"alert_id": alert_id},
                limit=limit,
                offset=offset,
                newest_first=newest_first,
            )
            return [views.alert_message(views.pivoted_point(r)) for r in await self.flux.query(q)]
        page = await self.flux.query(
            queries.newest_times(
                m,
                self.influx,
                where,
                "identifier",
                start_ns=start_ns,
                stop_ns=stop_ns,
                limit=limit,
                offset=offset,
            )
        )
        if not page:
            return []
        wanted = [(r["_time"], r.get("_value")) for r in page]
        times = [t for t, _ in wanted]
        rows = await self.flux.query(
            queries.history(m, self.influx, where, start_ns=min(times), stop_ns=max(times) + 1)
        )
        by_key = {(p["_time"], p.get("identifier")): p for p in map(views.pivoted_point, rows)}
        return [views.alert_message(by_key[k]) for k in wanted if k in by_key]

    async def acknowledgements(self, alert_id: str) -> list[Acknowledgement]:
        q = queries.history(
            schema.ACK, self.influx, match={"alert_id": alert_id}, newest_first=False
        )
        rows = await self.flux.query(q)
        return views.acknowledgements(map(views.pivoted_point, rows)).get(alert_id, [])

    # ------------------------------------------------------------------ earthquakes

    async def quake_events(
        self, *, start_ns: int | None, stop_ns: int | None, event_id: str | None = None
    ) -> list[QuakeEvent]:
        """Each event's latest estimate within the range, newest origin first."""
        m = schema.QUAKE_EVENT
        q = queries.latest(
            m,
            self.influx,
            {"event_id": event_id} if event_id else {},
            start_ns=start_ns,
            stop_ns=stop_ns,
        )
        events = [views.quake_event(p) for p in views.newest_points(await self.flux.query(q), m)]
        events.sort(key=lambda e: (e.origin_time or "", e.event_id), reverse=True)
        return events

    async def quake_cells(self, event: QuakeEvent) -> list[QuakeCell]:
        """The cells of an event's latest estimate, in grid order."""
        t = _ns(event.estimated_at)
        q = queries.history(
            schema.QUAKE_CELL,
            self.influx,
            {"event_id": event.event_id},
            start_ns=t,
            stop_ns=t + _CELLS_SPAN_NS,
            newest_first=False,
        )
        return [views.quake_cell(views.pivoted_point(r), t) for r in await self.flux.query(q)]

    # ------------------------------------------------------------------ series

    async def series(
        self,
        device: Device,
        field: str,
        *,
        start_ns: int,
        stop_ns: int,
        window: Window | None,
        limit: int,
        offset: int,
    ) -> list[Row]:
        m = raw_measurement(device.kind)
        q = queries.series(
            m,
            self.influx,
            {"device": device.id},
            field,
            start_ns=start_ns,
            stop_ns=stop_ns,
            window=window,
            limit=limit,
            offset=offset,
        )
        return await self.flux.query(q)

    # ------------------------------------------------------------------ operations

    async def pipeline(self, start_ns: int) -> tuple[list[views.StoredPoint], list[Row]]:
        """The newest ``pipeline`` point of each process instance, and the rows of the
        readings-in rate since ``start``."""
        m = schema.PIPELINE
        newest, rate = await asyncio.gather(
            self.flux.query(queries.latest(m, self.influx, {}, start_ns=start_ns)),
            self.flux.query(queries.rate(m, self.influx, "readings_in", start_ns=start_ns)),
        )
        return views.newest_points(newest, m), rate

    async def deadletters(self, start_ns: int) -> list[Row]:
        m = schema.DEADLETTER
        return await self.flux.query(
            queries.counts(m, self.influx, "count", ("reason", "kind"), start_ns=start_ns)
        )


def _device_tags(m: Measurement, where: Where) -> Where:
    """``where`` restricted to the tags ``m`` has (a level measurement may lack one)."""
    return {k: v for k, v in where.items() if k in m.tag_names}


def _ns(text: str) -> int:
    return parse_time_ns(text)
