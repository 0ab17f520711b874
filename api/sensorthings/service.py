"""A SensorThings request resolved and answered: the resource path walked over the
graph, the query options applied, the entities serialised with their links.

Static entity sets are filtered, ordered and paged in Python (:mod:`.evaluate`);
Observations are read from InfluxDB (:mod:`.observations`), one query per level of an
expansion (``Things?$expand=Datastreams/Observations($top=1)`` is one query for every
Datastream of the page, not one per Datastream).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from api.influx import FluxClient, format_ns
from api.sensorthings import observations as obs
from api.sensorthings.evaluate import Evaluator
from api.sensorthings.filter import (
    Binary,
    Call,
    Expr,
    FilterError,
    Path,
    Unary,
    conjuncts,
    paths,
)
from api.sensorthings.model import (
    SETS,
    DatastreamRef,
    Entity,
    Graph,
    build_graph,
    observation_id,
    split_observation_id,
)
from api.sensorthings.options import Options, parse_options, parse_path
from civic_iot.registry import Registry
from civic_iot.settings import Settings

__all__ = ["VERSIONS", "NotFound", "StaService"]

#: Protocol versions served, and the GeoJSON media type each names.
VERSIONS = {"v1.1": "application/geo+json", "v1.0": "application/vnd.geo+json"}
_CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
]


class NotFound(Exception):  # noqa: N818 - an answer, not a failure
    """No entity or entity set at the path (HTTP 404)."""


@dataclass(frozen=True)
class _ObsSource:
    """Observations of some Datastreams (a collection not yet read)."""

    datastreams: tuple[DatastreamRef, ...]


@dataclass
class _Ctx:
    graph: Graph
    base: str  # .../sta/v1.1
    now_ns: int
    default_top: int
    max_top: int


def _quote_id(entity_id: str) -> str:
    return "'" + entity_id.replace("'", "''") + "'"


def _strip(expr: Expr, prefix: str) -> Expr:
    """``expr`` with ``prefix/`` removed from the start of every path."""
    if isinstance(expr, Path):
        segs = expr.segments[1:] if expr.segments[:1] == (prefix,) else expr.segments
        return Path(segs)
    if isinstance(expr, Unary):
        return Unary(expr.op, _strip(expr.operand, prefix))
    if isinstance(expr, Binary):
        return Binary(expr.op, _strip(expr.left, prefix), _strip(expr.right, prefix))
    if isinstance(expr, Call):
        return Call(expr.name, tuple(_strip(a, prefix) for a in expr.args))
    return expr


class StaService:
    """Answers SensorThings requests over one registry and one InfluxDB."""

    def __init__(self, settings: Settings, flux: FluxClient) -> None:
        self.settings = settings
        self.flux = flux
        self._graphs: dict[tuple[int, str], Graph] = {}

    def graph(self, registry: Registry, registry_version: int, version: str) -> Graph:
        key = (registry_version, version)
        if key not in self._graphs:
            self._graphs = {k: v for k, v in self._graphs.items() if k[0] == registry_version}
            self._graphs[key] = build_graph(
                registry, authority=self.settings.api.authority, geo_encoding=VERSIONS[version]
            )
        return self._graphs[key]

    # ------------------------------------------------------------------ entry points

    @staticmethod
    def root(base: str) -> dict[str, Any]:
        """The service root document."""
        return {
            "value": [{"name": name, "url": f"{base}/{name}"} for name in SETS],
            "serverSettings": {"conformance": _CONFORMANCE},
        }

    async def answer(
        self,
        graph: Graph,
        base: str,
        path: str,
        params: Sequence[tuple[str, str]],
        query_string: str,
    ) -> Any:
        """The JSON document (or, for ``/$value``, the text) of ``GET base/path?params``.
        Raises :class:`FilterError` (400) and :class:`NotFound` (404)."""
        api = self.settings.api
        c = _Ctx(graph, base, time.time_ns(), api.default_page, api.max_page)
        options = parse_options(params)
        segments = parse_path(path)
        head = segments[0]
        if head.name not in SETS:
            msg = f"no entity set {head.name!r}; the service has {', '.join(SETS)}"
            raise NotFound(msg)
        current: Any = self._set_source(c, head.name)
        set_name = head.name
        if head.key is not None:
            current = await self._by_key(c, set_name, current, head.key)
        for i, seg in enumerate(segments[1:], start=1):
            if isinstance(current, Entity):
                spec = SETS[current.set]
                if seg.name in spec.navs:
                    nav = spec.navs[seg.name]
                    set_name = nav.target
                    current = self._navigate(c, current, seg.name)
                    if seg.key is not None:
                        if not nav.many:
                            msg = f"{seg.name} leads to one entity: no key after it"
                            raise FilterError(msg)
                        current = await self._by_key(c, set_name, current, seg.key)
                    elif not nav.many and current is None:
                        raise NotFound(f"{path}: no {seg.name}")
                    continue
                if seg.name in spec.properties and seg.key is None:
                    if current.set == "Observations":
                        current = await self._observation(c, current.id)
                    value = current.props.get(seg.name)
                    rest = segments[i + 1 :]
                    if rest and [s.name for s in rest] == ["$value"]:
                        return value if isinstance(value, str) else _json_text(value)
                    if rest:
                        msg = f"after the property {seg.name} only /$value may follow"
                        raise FilterError(msg)
                    return {seg.name: value}
                known = ", ".join([*spec.properties, *spec.navs])
                msg = f"{current.set} have no property or navigation {seg.name!r}; known: {known}"
                raise NotFound(msg)
            msg = f"{seg.name!r} must follow one entity (give a key: Set('id')/{seg.name})"
            raise FilterError(msg)
        if isinstance(current, Entity):
            if current.set == "Observations" and not current.props:
                current = await self._observation(c, current.id)
            (doc,) = await self._serialize(c, [current], _single(options))
            return doc
        return await self._collection(
            c, set_name, current, options, query_string, self_path=path.strip("/")
        )

    # ------------------------------------------------------------------ resolution

    def _set_source(self, c: _Ctx, set_name: str) -> list[Entity] | _ObsSource:
        if set_name == "Observations":
            return _ObsSource(tuple(c.graph.datastreams.values()))
        return c.graph.all(set_name)

    async def _by_key(
        self, c: _Ctx, set_name: str, source: list[Entity] | _ObsSource, key: str
    ) -> Entity:
        if isinstance(source, _ObsSource):
            entity = await self._observation(c, key)
            parts = split_observation_id(key)
            mine = {(d.device.id, d.quantity.field) for d in source.datastreams}
            if parts is None or (parts[0], parts[1]) not in mine:
                raise NotFound(f"no Observation {key!r} here")
            return entity
        for e in source:
            if e.id == key:
                return e
        raise NotFound(f"no {SETS[set_name].singular} {key!r} here")

    async def _observation(self, c: _Ctx, key: str) -> Entity:
        parts = split_observation_id(key)
        ds = c.graph.datastreams.get(f"{parts[0]}:{parts[1]}") if parts else None
        if parts is None or ds is None:
            raise NotFound(f"no Observation {key!r}: ids are <device>:<quantity>:<ns>")
        q = obs.ObsQuery(
            datastreams=(ds,), predicate=None, imports=frozenset(),
            start_ns=parts[2], stop_ns=parts[2] + 1, orderby=(), top=1, skip=0,
        )  # fmt: skip
        rows = await obs.fetch(self.flux, self.settings.influx, q, c.now_ns)
        if not rows:
            raise NotFound(f"no Observation {key!r}")
        return _obs_entity(rows[0])

    def _navigate(self, c: _Ctx, entity: Entity, nav: str) -> Any:
        target = SETS[entity.set].navs[nav]
        if target.target == "Observations":
            return _ObsSource(tuple(c.graph.datastreams_of(entity)))
        if entity.set == "Observations":
            parts = split_observation_id(entity.id)
            assert parts is not None
            if nav == "Datastream":
                return c.graph.get("Datastreams", f"{parts[0]}:{parts[1]}")
            return c.graph.get("FeaturesOfInterest", parts[0])
        linked = c.graph.linked(entity, nav)
        if target.many:
            return linked
        return linked[0] if linked else None

    # ------------------------------------------------------------------ collections

    def _page(self, c: _Ctx, options: Options) -> tuple[int, int]:
        top = c.default_top if options.top is None else min(options.top, c.max_top)
        return top, options.skip

    async def _collection(
        self,
        c: _Ctx,
        set_name: str,
        source: list[Entity] | _ObsSource,
        options: Options,
        query_string: str,
        *,
        self_path: str,
    ) -> dict[str, Any]:
        top, skip = self._page(c, options)
        if isinstance(source, _ObsSource):
            q = self._obs_query(c, source, options, "none", top, skip)
            rows = await obs.fetch(self.flux, self.settings.influx, q, c.now_ns)
            total = None
            if options.count:
                total = (await obs.count(self.flux, self.settings.influx, q)).get(("", ""), 0)
            more = len(rows) > top
            entities = [_obs_entity(r) for r in rows[:top]]
        else:
            chosen = self._filter_static(c, source, options)
            total = len(chosen)
            more = skip + top < total
            entities = chosen[skip : skip + top]
        out: dict[str, Any] = {}
        if options.count:
            out["@iot.count"] = total
        out["value"] = await self._serialize(c, entities, options)
        if more:
            out["@iot.nextLink"] = _next_link(c.base, self_path, query_string, skip + top, top)
        return out

    def _filter_static(self, c: _Ctx, source: list[Entity], options: Options) -> list[Entity]:
        ev = Evaluator(c.graph, c.now_ns)
        chosen = source
        if options.filter is not None:
            chosen = [e for e in source if ev.truth(options.filter, e)]
        if options.orderby:
            for key in reversed(options.orderby):
                chosen = sorted(chosen, key=partial(_key, ev, key.expr), reverse=key.desc)
        else:
            chosen = sorted(chosen, key=lambda e: e.id)
        return chosen

    def _obs_query(
        self,
        c: _Ctx,
        source: _ObsSource,
        options: Options,
        group: obs.Group,
        top: int,
        skip: int,
    ) -> obs.ObsQuery:
        datastreams = list(source.datastreams)
        own: list[Expr] = []
        ev = Evaluator(c.graph, c.now_ns)
        for part in conjuncts(options.filter) if options.filter is not None else []:
            heads = {p.segments[0] for p in paths(part)}
            if heads and heads <= {"Datastream"}:
                cond = _strip(part, "Datastream")
                datastreams = [
                    d for d in datastreams if ev.truth(cond, c.graph.entities["Datastreams"][d.id])
                ]
            elif heads and heads <= {"FeatureOfInterest"}:
                cond = _strip(part, "FeatureOfInterest")
                foi = c.graph.entities["FeaturesOfInterest"]
                datastreams = [d for d in datastreams if ev.truth(cond, foi[d.device.id])]
            elif heads & {"Datastream", "FeatureOfInterest"}:
                msg = (
                    f"$filter on Observations: a condition mixes Observation properties with "
                    f"Datastream/ or FeatureOfInterest/ inside or/not ({options.filter_text!r}); "
                    "join them with a top-level 'and'"
                )
                raise FilterError(msg)
            else:
                own.append(part)
        imports: set[str] = set()
        predicate = None
        if own:
            expr = own[0]
            for e in own[1:]:
                expr = Binary("and", expr, e)
            try:
                t = obs.translate(expr, imports)
            except FilterError as exc:
                raise FilterError(f"$filter on Observations: {exc}") from None
            if t.type != "bool":
                raise FilterError("$filter on Observations must be a condition")
            predicate = t.code
        start, stop = obs.time_bounds(own)
        obs.sort_spec(options.orderby)  # refuses what Observations cannot sort by
        return obs.ObsQuery(
            datastreams=tuple(datastreams),
            predicate=predicate,
            imports=frozenset(imports),
            start_ns=start,
            stop_ns=stop,
            orderby=options.orderby,
            top=top,
            skip=skip,
            group=group,
        )

    # ------------------------------------------------------------------ serialisation

    def _check_select(self, set_name: str, select: tuple[str, ...] | None) -> None:
        if select is None:
            return
        spec = SETS[set_name]
        known = {"id", "@iot.id", "@iot.selfLink", *spec.properties, *spec.navs}
        bad = [s for s in select if s not in known]
        if bad:
            msg = (
                f"$select: {spec.name} have no {', '.join(bad)}; known: {', '.join(sorted(known))}"
            )
            raise FilterError(msg)

    async def _serialize(
        self, c: _Ctx, entities: Sequence[Entity], options: Options
    ) -> list[dict[str, Any]]:
        if not entities:
            return []
        set_name = entities[0].set
        spec = SETS[set_name]
        self._check_select(set_name, options.select)
        unknown = [n for n in options.expand if n not in spec.navs]
        if unknown:
            msg = (
                f"$expand: {spec.name} have no {', '.join(unknown)}; known: {', '.join(spec.navs)}"
            )
            raise FilterError(msg)
        sel = options.select
        docs: list[dict[str, Any]] = []
        for e in entities:
            link = f"{c.base}/{set_name}({_quote_id(e.id)})"
            d: dict[str, Any] = {}
            if sel is None or "id" in sel or "@iot.id" in sel:
                d["@iot.id"] = e.id
            if sel is None or "@iot.selfLink" in sel:
                d["@iot.selfLink"] = link
            for p in spec.properties:
                if (sel is None or p in sel) and e.props.get(p) is not None:
                    d[p] = e.props[p]
            for nav in spec.navs:
                if (sel is None or nav in sel) and nav not in options.expand:
                    d[f"{nav}@iot.navigationLink"] = f"{link}/{nav}"
            docs.append(d)
        for nav, sub in options.expand.items():
            await self._expand(c, entities, docs, nav, sub)
        return docs

    async def _expand(
        self,
        c: _Ctx,
        entities: Sequence[Entity],
        docs: list[dict[str, Any]],
        nav: str,
        sub: Options,
    ) -> None:
        spec = SETS[entities[0].set].navs[nav]
        top, skip = self._page(c, sub)
        if spec.target == "Observations":
            group: obs.Group = "datastream" if entities[0].set == "Datastreams" else "device"
            sources = [tuple(c.graph.datastreams_of(e)) for e in entities]
            all_ds = tuple({d.id: d for s in sources for d in s}.values())
            q = self._obs_query(c, _ObsSource(all_ds), sub, group, top, skip)
            rows = await obs.fetch(self.flux, self.settings.influx, q, c.now_ns)
            counts = await obs.count(self.flux, self.settings.influx, q) if sub.count else {}
            by_key: dict[tuple[str, str], list[Entity]] = defaultdict(list)
            for r in rows:
                key = (r.get("device", ""), r.get("_field", "") if group == "datastream" else "")
                by_key[key].append(_obs_entity(r))
            children_of = []
            for e in entities:
                if group == "datastream":
                    ds = c.graph.datastreams[e.id]
                    key = (ds.device.id, ds.quantity.field)
                else:
                    key = (e.id, "")
                children_of.append((key, by_key.get(key, [])))
            flat = [x for _, kids in children_of for x in kids[:top]]
            serialized = iter(await self._serialize(c, flat, sub))
            for doc, e, (key, kids) in zip(docs, entities, children_of, strict=True):
                doc[nav] = [next(serialized) for _ in kids[:top]]
                if sub.count:
                    doc[f"{nav}@iot.count"] = counts.get(key, 0)
                if len(kids) > top:
                    self_path = f"{e.set}({_quote_id(e.id)})/{nav}"
                    doc[f"{nav}@iot.nextLink"] = _next_link(
                        c.base, self_path, _options_query(sub), skip + top, top
                    )
            return
        if not spec.many:
            targets = [self._navigate(c, e, nav) for e in entities]
            present = [t for t in targets if t is not None]
            serialized = iter(await self._serialize(c, present, _single(sub)))
            for doc, t in zip(docs, targets, strict=True):
                if t is not None:
                    doc[nav] = next(serialized)
            return
        pages: list[tuple[list[Entity], int, bool]] = []
        for e in entities:
            chosen = self._filter_static(c, c.graph.linked(e, nav), sub)
            pages.append((chosen[skip : skip + top], len(chosen), skip + top < len(chosen)))
        flat = [x for page, _, _ in pages for x in page]
        serialized = iter(await self._serialize(c, flat, sub))
        for doc, e, (page, total, more) in zip(docs, entities, pages, strict=True):
            doc[nav] = [next(serialized) for _ in page]
            if sub.count:
                doc[f"{nav}@iot.count"] = total
            if more:
                self_path = f"{e.set}({_quote_id(e.id)})/{nav}"
                doc[f"{nav}@iot.nextLink"] = _next_link(
                    c.base, self_path, _options_query(sub), skip + top, top
                )


def _key(ev: Evaluator, expr: Expr, entity: Entity) -> tuple[int, Any]:
    return ev.sort_key(expr, entity)


def _single(options: Options) -> Options:
    """The options that apply to one entity: $select and $expand."""
    return replace(options, top=None, skip=0, count=False, orderby=(), filter=None)


def _obs_entity(row: Mapping[str, Any]) -> Entity:
    t = format_ns(row["_time"])
    return Entity(
        "Observations",
        observation_id(row.get("device", ""), row.get("_field", ""), row["_time"]),
        {"phenomenonTime": t, "resultTime": t, "result": row.get("_value")},
    )


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _options_query(options: Options) -> str:
    pairs = []
    if options.filter_text:
        pairs.append(("$filter", options.filter_text))
    if options.orderby:
        pairs.append(("$orderby", ",".join(k.text for k in options.orderby)))
    if options.select:
        pairs.append(("$select", ",".join(options.select)))
    return urlencode(pairs, quote_via=quote, safe="$'(),/:@")


def _next_link(base: str, self_path: str, query_string: str, skip: int, top: int) -> str:
    """The same request with ``$skip`` and ``$top`` set for the next page."""
    pairs = [
        (k, v)
        for k, v in parse_qsl(query_string, keep_blank_values=True)
        if k not in ("$skip", "$top")
    ]
    pairs += [("$top", str(top)), ("$skip", str(skip))]
    text = urlencode(pairs, quote_via=quote, safe="$'(),/:@")
    return f"{base}/{self_path}?{text}"
