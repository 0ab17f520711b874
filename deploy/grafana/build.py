"""Generate civic-iot's Grafana dashboards from compact panel specs.

    .venv/bin/python deploy/grafana/build.py          # (re)write dashboards/*.json
    .venv/bin/python deploy/grafana/build.py --check  # exit 1 if a committed file differs

The JSON files are committed (Grafana's file provisioning and ``civic-iot grafana
provision`` read them); ``tests/unit/grafana/test_dashboards.py`` checks they equal this
generator's output, so edit the specs here, never the JSON.

Every query is Flux against the InfluxDB datasource ``civic-influxdb`` and names its
measurement through the storage schema (:mod:`civic_iot.storage.schema`, from which
``docs/storage.md`` is generated): the bucket is the measurement's, and a field the
measurement lacks stops the build. Grafana replaces
``v.timeRangeStart``, ``v.timeRangeStop`` and ``v.windowPeriod`` and the template variables
(``${township:regex}`` and friends; "All" is the regex ``.*``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from civic_iot.storage import schema
from civic_iot.storage.schema import Measurement

Json = dict[str, Any]

DATASOURCE: Json = {"type": "influxdb", "uid": "civic-influxdb"}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
TAGS = ["civic-iot"]
GRID_WIDTH = 24

# ---------------------------------------------------------------------------- Flux helpers

RANGE = "range(start: v.timeRangeStart, stop: v.timeRangeStop)"
#: "Open" alerts are judged over a fixed look-back, not the dashboard's range: an alert
#: issued yesterday and never cancelled is open now. The longest expiry is 12 h
#: (alerts.lifecycle), so a week is ample.
OPEN_LOOKBACK = "range(start: -7d)"
WINDOW_MAX = "aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)"
WINDOW_MEAN = "aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)"
WINDOW_LAST = "aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)"
WINDOW_SUM = "aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)"
WINDOW_COUNT = "aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)"


def _regex(tag: str, var: str | None = None) -> str:
    """A filter on a multi-value variable; its "All" value is the regex ``.*``."""
    return f"r.{tag} =~ /^${{{var or tag}:regex}}$/"


TOWNSHIP = _regex("township")
DEVICE = _regex("device")


def flux(
    measurement: Measurement | Sequence[Measurement],
    fields: Sequence[str] = (),
    *,
    where: Sequence[str] = (),
    then: Sequence[str] = (),
    imports: Sequence[str] = (),
    range_: str = RANGE,
) -> str:
    """``from |> range |> filter(measurement) |> filter(fields) |> filter(where) |> then``.

    The bucket is the measurements' (by its default name, the role; ``ops.grafana``
    points it at the configured bucket), and every field must be one of theirs.
    """
    ms = [measurement] if isinstance(measurement, Measurement) else list(measurement)
    buckets = {m.bucket for m in ms}
    if len(buckets) != 1:
        msg = f"one query, one bucket: {[m.name for m in ms]} live in {sorted(buckets)}"
        raise ValueError(msg)
    for f in fields:
        if not any(f in m.field_names for m in ms):
            msg = f"no measurement of {[m.name for m in ms]} has a field {f!r} (schema.py)"
            raise KeyError(msg)
    lines = [f'import "{name}"' for name in imports]
    if imports:
        lines.append("")
    lines += [f'from(bucket: "{ms[0].bucket}")', f"  |> {range_}"]
    lines.append(
        "  |> filter(fn: (r) => " + " or ".join(f'r._measurement == "{m.name}"' for m in ms) + ")"
    )
    if fields:
        lines.append(
            "  |> filter(fn: (r) => " + " or ".join(f'r._field == "{f}"' for f in fields) + ")"
        )
    lines += [f"  |> filter(fn: (r) => {w})" for w in where]
    lines += [f"  |> {step}" for step in then]
    return "\n".join(lines)


def latest_row(key: str, keep: Sequence[str]) -> list[str]:
    """Steps that turn the latest value of each field into one row per ``key``."""
    return [
        "last()",
        f'pivot(rowKey: ["{key}"], columnKey: ["_field"], valueColumn: "_value")',
        "group()",
        f"keep(columns: {json.dumps(list(keep))})",
    ]


def as_flag() -> str:
    """Map a bool or a level to 1 when set / at level >= 1, else 0 (so sums never go empty)."""
    return "map(fn: (r) => ({r with _value: if r._value then 1 else 0}))"


def open_alerts(keep: Sequence[str], where: Sequence[str] = ()) -> list[str]:
    """Steps after the alert filter: the latest message of each alert_id, unless a Cancel."""
    return [
        *(f"filter(fn: (r) => {w})" for w in where),
        'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        'group(columns: ["alert_id"])',
        # sequence counts the messages of one alert (Alert = 1, each Update/Cancel + 1).
        'max(column: "sequence")',
        'filter(fn: (r) => r.msg_type != "Cancel")',
        "group()",
        *([f"keep(columns: {json.dumps(list(keep))})"] if keep else []),
    ]


def count_by(key: str | Sequence[str], column: str) -> list[str]:
    """Steps counting rows per ``key`` into one table with a ``count`` column."""
    keys = [key] if isinstance(key, str) else list(key)
    return [
        f"group(columns: {json.dumps(keys)})",
        f'count(column: "{column}")',
        "group()",
        f'rename(columns: {{{column}: "count"}})',
        'sort(columns: ["count"], desc: true)',
    ]


OPEN_COUNT = ['count(column: "alert_id")', 'rename(columns: {alert_id: "open"})']


def open_alerts_query(then: Sequence[str], where: Sequence[str] = ()) -> str:
    return flux(schema.ALERT, range_=OPEN_LOOKBACK, then=[*open_alerts((), where), *then])


# ------------------------------------------------------------------- field configuration


def steps(*pairs: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in pairs]}


def value_map(labels: Sequence[tuple[int, str, str]]) -> list[Json]:
    return [
        {
            "type": "value",
            "options": {str(v): {"text": text, "color": color, "index": i}},
        }
        for i, (v, text, color) in enumerate(labels)
    ]


# Taiwan MOENV AQI bands (processors/detectors/aqi.py).
AQI_STEPS = steps(
    (None, "green"),
    (51, "yellow"),
    (101, "orange"),
    (151, "red"),
    (201, "purple"),
    (301, "dark-red"),
)
# Alert-style levels 0-3 (air township level, water gauge level).
LEVEL_MAP = value_map(
    [
        (0, "normal", "green"),
        (1, "level 1", "yellow"),
        (2, "level 2", "orange"),
        (3, "level 3", "red"),
    ]
)
LEVEL_STEPS = steps((None, "green"), (1, "yellow"), (2, "orange"), (3, "red"))
# A gauge's rise level (processors/detectors/water.py): 1 at or above its rise line.
RISE_MAP = value_map([(0, "steady", "green"), (1, "rising fast", "orange")])
# Debris-flow levels against the threshold in use (R70, or R50 after strong shaking).
DEBRIS_MAP = value_map([(0, "normal", "green"), (1, "yellow", "yellow"), (2, "red", "red")])
# CWA rain classes (processors/detectors/water.py).
RAIN_MAP = value_map(
    [
        (0, "none", "green"),
        (1, "heavy rain 大雨", "yellow"),
        (2, "extremely heavy 豪雨", "orange"),
        (3, "torrential 大豪雨", "red"),
        (4, "extremely torrential 超大豪雨", "purple"),
    ]
)
RAIN_STEPS = steps((None, "green"), (1, "yellow"), (2, "orange"), (3, "red"), (4, "purple"))
# CWA intensity scale: rank 0-9 = 0, 1, 2, 3, 4, 5-, 5+, 6-, 6+, 7.
INTENSITY_MAP = value_map(
    [
        (0, "0", "green"),
        (1, "1", "green"),
        (2, "2", "yellow"),
        (3, "3", "yellow"),
        (4, "4", "orange"),
        (5, "5-", "orange"),
        (6, "5+", "red"),
        (7, "6-", "red"),
        (8, "6+", "purple"),
        (9, "7", "purple"),
    ]
)
INTENSITY_STEPS = steps((None, "green"), (2, "yellow"), (4, "orange"), (6, "red"), (8, "purple"))


def field_config(
    *,
    unit: str | None = None,
    thresholds: Json | None = None,
    mappings: list[Json] | None = None,
    display_name: str | None = None,
    color: str = "palette-classic",
    custom: Json | None = None,
    decimals: int | None = None,
    min_: float | None = None,
    no_value: str | None = None,
    overrides: list[Json] | None = None,
) -> Json:
    defaults: Json = {"color": {"mode": color}}
    if unit is not None:
        defaults["unit"] = unit
    defaults["thresholds"] = thresholds or steps((None, "green"))
    defaults["mappings"] = mappings or []
    if display_name is not None:
        defaults["displayName"] = display_name
    if custom is not None:
        defaults["custom"] = custom
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_ is not None:
        defaults["min"] = min_
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"defaults": defaults, "overrides": overrides or []}


def by_name(name: str, **props: Any) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


# ------------------------------------------------------------------------ panel builders

Size = tuple[int, int]  # (width of 24, height)


def _panel(
    kind: str, title: str, queries: Sequence[str], size: Size, description: str, **extra: Any
) -> Json:
    panel: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "query": q}
            for i, q in enumerate(queries)
        ],
        "gridPos": {"w": size[0], "h": size[1]},
    }
    panel.update(extra)
    return panel


def timeseries(
    title: str,
    query: str,
    *,
    size: Size = (12, 8),
    description: str = "",
    unit: str | None = None,
    legend: str | None = None,
    thresholds: Json | None = None,
    bars: bool = False,
    points: bool = False,
    decimals: int | None = None,
) -> Json:
    draw = "bars" if bars else "points" if points else "line"
    custom: Json = {
        "drawStyle": draw,
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "pointSize": 8 if points else 4,
        "showPoints": "always" if points else "auto",
        "spanNulls": False,
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    return _panel(
        "timeseries",
        title,
        [query],
        size,
        description,
        fieldConfig=field_config(
            unit=unit, display_name=legend, thresholds=thresholds, custom=custom, decimals=decimals
        ),
        options={
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def state_timeline(
    title: str,
    query: str,
    *,
    mappings: list[Json],
    thresholds: Json,
    legend: str,
    size: Size = (12, 8),
    description: str = "",
) -> Json:
    return _panel(
        "state-timeline",
        title,
        [query],
        size,
        description,
        fieldConfig=field_config(
            mappings=mappings, thresholds=thresholds, display_name=legend, color="thresholds"
        ),
        options={
            "showValue": "auto",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        },
    )


def stat(
    title: str,
    query: str,
    *,
    size: Size = (4, 4),
    description: str = "",
    unit: str | None = None,
    thresholds: Json | None = None,
    mappings: list[Json] | None = None,
    no_value: str | None = None,
    decimals: int | None = None,
    text_mode: str = "value",
) -> Json:
    return _panel(
        "stat",
        title,
        [query],
        size,
        description,
        fieldConfig=field_config(
            unit=unit,
            thresholds=thresholds,
            mappings=mappings,
            color="thresholds",
            no_value=no_value,
            decimals=decimals,
        ),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": text_mode,
            "justifyMode": "auto",
        },
    )


def bargauge(
    title: str,
    query: str,
    *,
    size: Size = (8, 8),
    description: str = "",
    thresholds: Json | None = None,
) -> Json:
    """One bar per row of a single table: the row's string columns name the bar."""
    return _panel(
        "bargauge",
        title,
        [query],
        size,
        description,
        fieldConfig=field_config(thresholds=thresholds, color="thresholds", min_=0),
        options={
            "reduceOptions": {"calcs": [], "fields": "/^count$/", "values": True},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
    )


def table(
    title: str,
    query: str,
    *,
    size: Size = (24, 8),
    description: str = "",
    overrides: list[Json] | None = None,
) -> Json:
    return _panel(
        "table",
        title,
        [query],
        size,
        description,
        fieldConfig=field_config(
            overrides=overrides,
            custom={"align": "auto", "filterable": True, "cellOptions": {"type": "auto"}},
        ),
        options={"showHeader": True, "footer": {"show": False}, "cellHeight": "sm"},
    )


def marker_layer(name: str, ref_id: str, color_field: str) -> Json:
    return {
        "type": "markers",
        "name": name,
        "config": {
            "showLegend": True,
            "style": {
                "color": {"field": color_field, "fixed": "dark-green"},
                "opacity": 0.8,
                "size": {"fixed": 6},
                "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
            },
        },
        "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
        "filterData": {"id": "byRefId", "options": ref_id},
        "tooltip": True,
    }


def geomap(
    title: str,
    layers: Sequence[tuple[str, str, str, Json, list[Json]]],
    *,
    size: Size = (12, 14),
    description: str = "",
    center: tuple[float, float] = (23.7, 121.0),
    zoom: float = 7,
) -> Json:
    """``layers``: (name, query, colour field, thresholds, value mappings) per layer."""
    return _panel(
        "geomap",
        title,
        [q for _, q, _, _, _ in layers],
        size,
        description,
        fieldConfig=field_config(
            color="thresholds",
            overrides=[
                by_name(fld, thresholds=th, mappings=maps, **{"color": {"mode": "thresholds"}})
                for _, _, fld, th, maps in layers
            ],
        ),
        options={
            "view": {"id": "coords", "lat": center[0], "lon": center[1], "zoom": zoom},
            "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [
                marker_layer(name, chr(ord("A") + i), fld)
                for i, (name, _, fld, _, _) in enumerate(layers)
            ],
            "tooltip": {"mode": "details"},
        },
    )


def row(title: str) -> Json:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": 24, "h": 1},
    }


# -------------------------------------------------------------------------- variables


def query_variable(
    name: str,
    label: str,
    query: str,
    *,
    multi: bool = True,
    sort: int = 1,
) -> Json:
    """A Flux query variable; multi-value ones offer "All" as the regex ``.*``."""
    var: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,  # on time range change: new devices appear without a reload
        "sort": sort,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }
    if multi:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return var


def tag_values(measurement: Measurement, tag: str, where: Sequence[str] = ()) -> str:
    if tag not in measurement.tag_names:
        msg = f"measurement {measurement.name} has no tag {tag!r} (schema.py)"
        raise KeyError(msg)
    predicate = " and ".join([f'r._measurement == "{measurement.name}"', *where])
    return (
        'import "influxdata/influxdb/schema"\n\n'
        f'schema.tagValues(bucket: "{measurement.bucket}", tag: "{tag}", '
        f"predicate: (r) => {predicate}, start: -30d)"
    )


def township_var(measurement: Measurement) -> Json:
    return query_variable("township", "Township", tag_values(measurement, "township"))


def device_var(measurement: Measurement, *, township: bool = True) -> Json:
    where = [TOWNSHIP] if township else []
    return query_variable("device", "Device", tag_values(measurement, "device", where))


# -------------------------------------------------------------------------- dashboards


def layout(panels: Iterable[Json]) -> list[Json]:
    """Place panels left to right in a 24-column grid and give them ids."""
    out: list[Json] = []
    x = y = row_h = 0
    for i, src in enumerate(panels, start=1):
        panel = json.loads(json.dumps(src))
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > GRID_WIDTH:
            x, y, row_h = 0, y + row_h, 0
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        panel["id"] = i
        x += w
        row_h = max(row_h, h)
        out.append(panel)
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: Iterable[Json],
    *,
    variables: Sequence[Json] = (),
    time_from: str = "now-6h",
) -> Json:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
        "schemaVersion": SCHEMA_VERSION,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "type": "dashboards",
                "title": "civic-iot",
                "tags": TAGS,
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": list(variables)},
        "panels": layout(panels),
    }


# ---- overview


def _map_layer(measurement: Measurement, value: str, extra_tags: Sequence[str] = ()) -> str:
    keep = ["device", "township", *extra_tags, value, "lat", "lon"]
    return flux(measurement, [value, "lat", "lon"], then=latest_row("device", keep))


def overview() -> Json:
    rate_in = flux(
        schema.PIPELINE,
        ["readings_in", "readings_out"],
        then=[
            # Totals since each process started; the rate survives restarts (nonNegative).
            "derivative(unit: 1s, nonNegative: true)",
            'group(columns: ["process", "_field"])',
            WINDOW_SUM,
        ],
    )
    panels = [
        stat(
            "Open alerts",
            open_alerts_query(OPEN_COUNT),
            no_value="0",
            thresholds=steps((None, "green"), (1, "red")),
            description="Alerts whose latest message is not a Cancel (last 7 days).",
        ),
        stat(
            "Highest AQI now",
            flux(schema.AIR_QUALITY, ["aqi"], then=["last()", "group()", "max()"]),
            thresholds=AQI_STEPS,
            description="The highest latest AQI over every air sensor.",
        ),
        stat(
            "Gauges at a warning level",
            flux(
                schema.WATER_LEVEL,
                ["level"],
                then=[
                    "last()",
                    "map(fn: (r) => ({r with _value: if r._value >= 1 then 1 else 0}))",
                    "group()",
                    "sum()",
                ],
            ),
            thresholds=steps((None, "green"), (1, "orange")),
            description="River and flood gauges whose latest level is 1 or more.",
        ),
        stat(
            "Seismic stations triggered",
            flux(
                schema.SEISMIC_STATION,
                ["triggered"],
                then=["last()", as_flag(), "group()", "sum()"],
            ),
            thresholds=steps((None, "green"), (1, "red")),
            description="Stations whose latest packet triggered (STA/LTA and PGA).",
        ),
        stat(
            "Highest rain class",
            flux(schema.RAIN, ["rain_class"], then=["last()", "group()", "max()"]),
            thresholds=RAIN_STEPS,
            mappings=RAIN_MAP,
        ),
        stat(
            "Readings stored / s",
            flux(
                schema.PIPELINE,
                ["readings_out"],
                where=['r.process == "worker"'],
                then=["derivative(unit: 1s, nonNegative: true)", "last()", "group()", "sum()"],
            ),
            unit="reqps",
            decimals=1,
            description="Rate of readings written to InfluxDB by the Faust workers.",
        ),
        geomap(
            "Sensors: latest AQI, water level, rain class, intensity",
            [
                ("Air (AQI)", _map_layer(schema.AIR_QUALITY, "aqi"), "aqi", AQI_STEPS, []),
                (
                    "Water gauges (level)",
                    _map_layer(schema.WATER_LEVEL, "level", ["sensor"]),
                    "level",
                    LEVEL_STEPS,
                    LEVEL_MAP,
                ),
                (
                    "Rain gauges (class)",
                    _map_layer(schema.RAIN, "rain_class"),
                    "rain_class",
                    RAIN_STEPS,
                    RAIN_MAP,
                ),
                (
                    "Seismic stations (intensity)",
                    _map_layer(schema.SEISMIC_STATION, "intensity_rank"),
                    "intensity_rank",
                    INTENSITY_STEPS,
                    INTENSITY_MAP,
                ),
            ],
            size=(14, 18),
            description="Each sensor at its position, coloured by its latest derived value.",
        ),
        bargauge(
            "Open alerts by hazard",
            open_alerts_query(count_by("hazard", "alert_id")),
            size=(10, 6),
            thresholds=steps((None, "orange"), (2, "red")),
        ),
        table(
            "Open alerts",
            open_alerts_query(
                [
                    'keep(columns: ["_time", "hazard", "area", "severity", "level", "headline"])',
                    'sort(columns: ["_time"], desc: true)',
                ]
            ),
            size=(10, 6),
        ),
        timeseries(
            "Pipeline throughput (readings / s)",
            rate_in,
            size=(10, 6),
            unit="reqps",
            legend="${__field.labels.process} ${__field.name}",
        ),
    ]
    return dashboard(
        "civic-overview",
        "civic-iot: national overview",
        "Every sensor on one map, open alerts and pipeline throughput.",
        panels,
        time_from="now-3h",
    )


# ---- air quality


def air_quality() -> Json:
    per_device = "${__field.labels.device}"
    latest = flux(
        schema.AIR_QUALITY,
        [
            "aqi",
            "category",
            "leading",
            "level",
            "pm2_5_ugm3_rt",
            "pm2_5_ugm3_1h",
            "pm10_ugm3_rt",
            "o3_ppb_8h",
            "co_ppm_8h",
        ],
        where=[TOWNSHIP, DEVICE],
        then=[
            *latest_row(
                "device",
                [
                    "device",
                    "township",
                    "aqi",
                    "category",
                    "leading",
                    "level",
                    "pm2_5_ugm3_rt",
                    "pm2_5_ugm3_1h",
                    "pm10_ugm3_rt",
                    "o3_ppb_8h",
                    "co_ppm_8h",
                ],
            ),
            'sort(columns: ["aqi"], desc: true)',
        ],
    )
    panels = [
        timeseries(
            "AQI per township (highest sensor)",
            flux(
                schema.AIR_QUALITY,
                ["aqi"],
                where=[TOWNSHIP],
                then=['group(columns: ["township"])', WINDOW_MAX],
            ),
            legend="${__field.labels.township}",
            thresholds=AQI_STEPS,
        ),
        state_timeline(
            "Township air level",
            flux(
                schema.TOWNSHIP_AIR,
                ["level"],
                where=[TOWNSHIP],
                then=[WINDOW_MAX],
            ),
            mappings=LEVEL_MAP,
            thresholds=LEVEL_STEPS,
            legend="${__field.labels.township}",
            description="The township's level, decided when enough sensors agree.",
        ),
        timeseries(
            "PM2.5 real-time (µg/m³)",
            flux(
                schema.AIR_QUALITY, ["pm2_5_ugm3_rt"], where=[TOWNSHIP, DEVICE], then=[WINDOW_MAX]
            ),
            unit="conμgm3",
            legend=per_device,
            description="MOENV real-time PM2.5: 0.5 x 12-h mean + 0.5 x 4-h mean.",
        ),
        timeseries(
            "PM2.5 1-hour mean (µg/m³)",
            flux(
                schema.AIR_QUALITY, ["pm2_5_ugm3_1h"], where=[TOWNSHIP, DEVICE], then=[WINDOW_MAX]
            ),
            unit="conμgm3",
            legend=per_device,
        ),
        table(
            "Latest per sensor: AQI, category, leading pollutant",
            latest,
            size=(16, 9),
            overrides=[
                by_name(
                    "aqi",
                    **{
                        "thresholds": AQI_STEPS,
                        "color": {"mode": "thresholds"},
                        "custom.cellOptions": {"type": "color-background"},
                    },
                ),
                by_name("level", mappings=LEVEL_MAP),
            ],
        ),
        bargauge(
            "Leading pollutant (sensors)",
            flux(
                schema.AIR_QUALITY,
                ["leading"],
                where=[TOWNSHIP, DEVICE],
                then=[
                    "last()",
                    "group()",
                    'rename(columns: {_value: "leading"})',
                    *count_by("leading", "device"),
                ],
            ),
            size=(8, 9),
            thresholds=steps((None, "blue")),
        ),
        timeseries(
            "Township: highest AQI and sensors agreeing",
            flux(
                schema.TOWNSHIP_AIR,
                ["max_aqi", "sensors_agreeing"],
                where=[TOWNSHIP],
                then=[WINDOW_MAX],
            ),
            legend="${__field.labels.township} ${__field.name}",
        ),
        timeseries(
            "O3 8-hour (ppb) and CO 8-hour (ppm)",
            flux(
                schema.AIR_QUALITY,
                ["o3_ppb_8h", "co_ppm_8h"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_MAX],
            ),
            legend="${__field.labels.device} ${__field.name}",
            description="The units are in the field names: O3 in ppb, CO in ppm.",
        ),
        timeseries(
            "Raw readings: PM2.5 and PM10 (µg/m³)",
            flux(
                schema.AIR,
                ["pm2_5_ugm3", "pm10_ugm3"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_MEAN],
            ),
            unit="conμgm3",
            legend="${__field.labels.device} ${__field.name}",
            size=(24, 8),
            description="What the sensors sent, before averaging.",
        ),
    ]
    return dashboard(
        "civic-air-quality",
        "civic-iot: air quality",
        "AQI per township and sensor (MOENV 2025), PM2.5, leading pollutant, township levels.",
        panels,
        variables=[township_var(schema.AIR_QUALITY), device_var(schema.AIR_QUALITY)],
        time_from="now-12h",
    )


# ---- water and rain


def water() -> Json:
    per_device = "${__field.labels.device}"
    panels = [
        timeseries(
            "River stage (m)",
            flux(
                schema.WATER_LEVEL,
                ["water_level_m"],
                where=['r.sensor == "river"', TOWNSHIP, DEVICE],
                then=[WINDOW_MAX],
            ),
            unit="lengthm",
            legend=per_device,
            decimals=2,
        ),
        timeseries(
            "Flood depth (cm)",
            flux(
                schema.WATER_LEVEL,
                ["flood_depth_cm"],
                where=['r.sensor == "flood"', TOWNSHIP, DEVICE],
                then=[WINDOW_MAX],
            ),
            unit="lengthcm",
            legend=per_device,
        ),
        state_timeline(
            "Gauge warning level",
            flux(schema.WATER_LEVEL, ["level"], where=[TOWNSHIP, DEVICE], then=[WINDOW_MAX]),
            mappings=LEVEL_MAP,
            thresholds=LEVEL_STEPS,
            legend=per_device,
            description="Each gauge's level against its own warning levels.",
        ),
        timeseries(
            "Rise rate (cm / 10 min)",
            flux(
                schema.WATER_LEVEL,
                ["rise_cm_per_10min"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_MAX],
            ),
            legend=per_device,
        ),
        table(
            "Gauges now",
            flux(
                schema.WATER_LEVEL,
                ["level", "water_level_m", "flood_depth_cm", "rise_cm_per_10min", "rise_level"],
                where=[TOWNSHIP, DEVICE],
                then=[
                    *latest_row(
                        "device",
                        [
                            "device",
                            "township",
                            "sensor",
                            "level",
                            "water_level_m",
                            "flood_depth_cm",
                            "rise_cm_per_10min",
                            "rise_level",
                        ],
                    ),
                    'sort(columns: ["level", "rise_level"], desc: true)',
                ],
            ),
            overrides=[
                by_name("level", mappings=LEVEL_MAP),
                by_name("rise_level", mappings=RISE_MAP),
            ],
            description="Rise level 1: rising at least the gauge's rise line (an alert of "
            "its own, hazard water_rise).",
        ),
        timeseries(
            "Rain accumulation 1 h / 3 h / 24 h (mm)",
            flux(
                schema.RAIN,
                ["rainfall_mm_1h", "rainfall_mm_3h", "rainfall_mm_24h"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_LAST],
            ),
            unit="lengthmm",
            legend="${__field.labels.device} ${__field.name}",
        ),
        state_timeline(
            "Rain class (CWA)",
            flux(schema.RAIN, ["rain_class"], where=[TOWNSHIP, DEVICE], then=[WINDOW_MAX]),
            mappings=RAIN_MAP,
            thresholds=RAIN_STEPS,
            legend=per_device,
        ),
        timeseries(
            "Rainfall triggering index (RTI)",
            flux(schema.RAIN, ["rti"], where=[TOWNSHIP, DEVICE], then=[WINDOW_MAX]),
            legend=per_device,
            description="Debris-flow rainfall triggering index of each rain gauge.",
        ),
        timeseries(
            "Debris flow: event rain against the threshold in use (mm)",
            flux(
                schema.RAIN,
                ["rainfall_mm_event", "debris_flow_threshold_mm"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_MAX],
            ),
            unit="lengthmm",
            legend="${__field.labels.device} ${__field.name}",
            description="The threshold is the township's R70, or R50 for a while after "
            "intensity >= 5 shaking: a step down marks the earthquake.",
        ),
        table(
            "Rain gauges now: debris flow",
            flux(
                schema.RAIN,
                [
                    "debris_flow_level",
                    "rainfall_mm_event",
                    "debris_flow_threshold_mm",
                    "debris_flow_threshold_kind",
                    "rti",
                ],
                where=[TOWNSHIP, DEVICE],
                then=[
                    *latest_row(
                        "device",
                        [
                            "device",
                            "township",
                            "debris_flow_level",
                            "rainfall_mm_event",
                            "debris_flow_threshold_mm",
                            "debris_flow_threshold_kind",
                            "rti",
                        ],
                    ),
                    'sort(columns: ["debris_flow_level", "rainfall_mm_event"], desc: true)',
                ],
            ),
            overrides=[by_name("debris_flow_level", mappings=DEBRIS_MAP)],
            description="Threshold kind r50: the gauge's township shook at intensity >= 5 "
            "and its lower threshold applies (measurement strong_shaking says which "
            "earthquake, until when).",
        ),
        timeseries(
            "Raw readings: water level, flood depth, rainfall",
            flux(
                schema.WATER,
                ["water_level_m", "flood_depth_cm", "rainfall_mm"],
                where=[TOWNSHIP, DEVICE],
                then=[WINDOW_MEAN],
            ),
            legend="${__field.labels.device} ${__field.name}",
            size=(24, 8),
            description="What the gauges sent, before windows and levels.",
        ),
    ]
    return dashboard(
        "civic-water",
        "civic-iot: water and rain",
        "River stage and flood depth against warning levels; rain 1/3/24 h, rain class, RTI.",
        panels,
        variables=[township_var(schema.WATER), device_var(schema.WATER)],
        time_from="now-12h",
    )


# ---- earthquake

EVENT = 'r.event_id == "${event_id}"'


def earthquake() -> Json:
    per_device = "${__field.labels.device}"
    event_var = query_variable(
        "event_id",
        "Event",
        flux(
            schema.QUAKE_EVENT,
            ["magnitude"],
            range_="range(start: -30d)",
            then=[
                "last()",
                "group()",
                'sort(columns: ["_time"], desc: true)',
                'keep(columns: ["event_id"])',
            ],
        ),
        multi=False,
        sort=0,  # newest first, as the query returns them: the default is the latest event
    )
    cells = flux(
        schema.QUAKE_CELL,
        ["lat", "lon", "intensity_rank", "intensity", "s_wave_s"],
        range_="range(start: -30d)",
        where=[EVENT],
        then=[
            'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            # The newest estimate of each 0.1 degree cell.
            'group(columns: ["lat", "lon"])',
            'last(column: "intensity_rank")',
            "group()",
            'keep(columns: ["township", "lat", "lon", "intensity_rank", "intensity", "s_wave_s"])',
            'sort(columns: ["s_wave_s"])',
        ],
    )
    panels = [
        timeseries(
            "Station PGA (gal)",
            flux(schema.SEISMIC_STATION, ["pga_gal"], where=[DEVICE], then=[WINDOW_MAX]),
            unit="suffix: gal",
            legend=per_device,
            description="Peak ground acceleration per station (1 gal = 1 cm/s²).",
        ),
        timeseries(
            "Station PGV (cm/s)",
            flux(schema.SEISMIC_STATION, ["pgv_cms"], where=[DEVICE], then=[WINDOW_MAX]),
            unit="suffix: cm/s",
            legend=per_device,
        ),
        state_timeline(
            "Station intensity (CWA)",
            flux(schema.SEISMIC_STATION, ["intensity_rank"], where=[DEVICE], then=[WINDOW_MAX]),
            mappings=INTENSITY_MAP,
            thresholds=INTENSITY_STEPS,
            legend=per_device,
        ),
        timeseries(
            "Event timeline (magnitude)",
            flux(
                schema.QUAKE_EVENT,
                ["magnitude"],
                then=['group(columns: ["event_id"])', WINDOW_MAX],
            ),
            legend="${__field.labels.event_id}",
            points=True,
            decimals=1,
            description="Each event's magnitude estimate as stations joined it.",
        ),
        stat(
            "Selected event",
            flux(
                schema.QUAKE_EVENT,
                ["magnitude", "depth_km", "n_stations", "max_intensity_rank"],
                range_="range(start: -30d)",
                where=[EVENT],
                then=latest_row(
                    "event_id", ["magnitude", "depth_km", "n_stations", "max_intensity_rank"]
                ),
            ),
            size=(8, 5),
            thresholds=steps((None, "blue")),
            description="Latest estimate of the event chosen above (default: the newest).",
        ),
        table(
            "Events",
            flux(
                schema.QUAKE_EVENT,
                [
                    "origin_time",
                    "magnitude",
                    "depth_km",
                    "lat",
                    "lon",
                    "n_stations",
                    "max_intensity_rank",
                ],
                then=[
                    *latest_row(
                        "event_id",
                        [
                            "event_id",
                            "origin_time",
                            "magnitude",
                            "depth_km",
                            "lat",
                            "lon",
                            "n_stations",
                            "max_intensity_rank",
                        ],
                    ),
                    'sort(columns: ["origin_time"], desc: true)',
                ],
            ),
            size=(16, 5),
            overrides=[by_name("max_intensity_rank", mappings=INTENSITY_MAP)],
        ),
        geomap(
            "Grid cells of the event: intensity",
            [("Cells (intensity)", cells, "intensity_rank", INTENSITY_STEPS, INTENSITY_MAP)],
            size=(12, 14),
            center=(24.5, 121.2),
            zoom=7.5,
        ),
        table(
            "Grid cells: intensity and seconds until the S wave",
            cells,
            size=(12, 14),
            overrides=[by_name("s_wave_s", unit="s", decimals=1)],
            description="s_wave_s: seconds from the alert to the S wave at the cell centre.",
        ),
        table(
            "Stations now",
            flux(
                schema.SEISMIC_STATION,
                ["pga_gal", "pgv_cms", "intensity", "triggered"],
                where=[DEVICE],
                then=[
                    *latest_row(
                        "device",
                        ["device", "township", "pga_gal", "pgv_cms", "intensity", "triggered"],
                    ),
                    'sort(columns: ["pga_gal"], desc: true)',
                ],
            ),
            size=(12, 8),
        ),
        {
            **timeseries(
                "Raw samples: peak |acceleration| (gal)",
                flux(
                    schema.SEISMIC_PACKET,
                    ["x_peak_gal", "y_peak_gal", "z_peak_gal"],
                    where=[DEVICE],
                    then=[WINDOW_MAX],
                ),
                legend="${__field.labels.device} ${__field.name}",
                description=(
                    "Largest absolute raw sample per display interval, per axis, from each "
                    "packet's peak (x_peak_gal ...: one value per 1 s packet, so the panel is "
                    "exact at 1 s resolution and coarser, its smallest interval). The samples "
                    "themselves are packed in seismic_packet (docs/storage.md; 7-day bucket)."
                ),
            ),
            "interval": "1s",
        },
    ]
    return dashboard(
        "civic-earthquake",
        "civic-iot: earthquake",
        "Station PGA/PGV and intensity, events, grid-cell intensity and S-wave warning time.",
        panels,
        variables=[
            device_var(schema.SEISMIC_STATION, township=False),
            event_var,
        ],
        time_from="now-1h",
    )


# ---- alerts

HAZARD = _regex("hazard")


def alerts() -> Json:
    history_keep = [
        "_time",
        "hazard",
        "area",
        "msg_type",
        "severity",
        "status",
        "level",
        "reason",
        "headline",
        "alert_id",
        "sequence",
        "latency_ms",
    ]
    panels = [
        stat(
            "Open alerts",
            open_alerts_query(OPEN_COUNT, where=[HAZARD]),
            no_value="0",
            thresholds=steps((None, "green"), (1, "red")),
            size=(4, 6),
        ),
        bargauge(
            "Open alerts by severity",
            open_alerts_query(count_by("severity", "alert_id"), where=[HAZARD]),
            size=(8, 6),
            thresholds=steps((None, "orange"), (2, "red")),
        ),
        timeseries(
            "Messages by type",
            flux(
                schema.ALERT,
                ["sequence"],
                where=[HAZARD],
                then=['group(columns: ["msg_type"])', WINDOW_COUNT],
            ),
            legend="${__field.labels.msg_type}",
            bars=True,
        ),
        table(
            "Open alerts (latest message of each alert)",
            open_alerts_query(
                [
                    f"keep(columns: {json.dumps(history_keep)})",
                    'sort(columns: ["_time"], desc: true)',
                ],
                where=[HAZARD],
            ),
            size=(24, 8),
            overrides=[by_name("level", mappings=LEVEL_MAP)],
            description="Latest message per alert_id whose type is not Cancel (last 7 days).",
        ),
        table(
            "History",
            flux(
                schema.ALERT,
                where=[HAZARD],
                then=[
                    'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                    "group()",
                    f"keep(columns: {json.dumps(history_keep)})",
                    'sort(columns: ["_time"], desc: true)',
                    "limit(n: 500)",
                ],
            ),
            size=(24, 9),
        ),
        timeseries(
            "Issue latency, candidate to message (ms)",
            flux(
                schema.ALERT,
                ["latency_ms"],
                where=[HAZARD],
                then=['group(columns: ["hazard"])', WINDOW_MAX],
            ),
            unit="ms",
            legend="${__field.labels.hazard}",
            points=True,
        ),
        bargauge(
            "Deliveries by channel and outcome",
            flux(
                schema.DELIVERY,
                ["attempt"],
                then=count_by(["channel", "outcome"], "_value"),
            ),
            size=(12, 8),
            thresholds=steps((None, "blue")),
        ),
        timeseries(
            "Delivery results over time",
            flux(
                schema.DELIVERY,
                ["attempt"],
                then=['group(columns: ["channel", "outcome"])', WINDOW_COUNT],
            ),
            legend="${__field.labels.channel} ${__field.labels.outcome}",
            bars=True,
        ),
        timeseries(
            "Delivery latency, issued to delivered (ms)",
            flux(
                schema.DELIVERY,
                ["latency_ms"],
                where=['r.outcome == "delivered"'],
                then=['group(columns: ["channel"])', WINDOW_MAX],
            ),
            unit="ms",
            legend="${__field.labels.channel}",
        ),
        table(
            "Latest delivery attempts",
            flux(
                schema.DELIVERY,
                then=[
                    'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                    "group()",
                    'keep(columns: ["_time", "channel", "subscriber", "outcome", "attempt", '
                    '"status_code", "latency_ms", "identifier"])',
                    'sort(columns: ["_time"], desc: true)',
                    "limit(n: 200)",
                ],
            ),
            size=(12, 8),
        ),
        table(
            "Acknowledgements",
            flux(
                schema.ACK,
                where=[HAZARD],
                then=[
                    'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                    "group()",
                    'keep(columns: ["_time", "hazard", "area", "alert_id", "by", "note"])',
                    'sort(columns: ["_time"], desc: true)',
                ],
            ),
            size=(24, 6),
        ),
    ]
    return dashboard(
        "civic-alerts",
        "civic-iot: alerts",
        "Open alerts, message history, delivery results and acknowledgements.",
        panels,
        variables=[query_variable("hazard", "Hazard", tag_values(schema.ALERT, "hazard"))],
        time_from="now-24h",
    )


# ---- pipeline

PROCESS = _regex("process")


def pipeline() -> Json:
    per_instance = "${__field.labels.process}/${__field.labels.instance}"
    panels = [
        timeseries(
            "Readings in / out (per second)",
            flux(
                schema.PIPELINE,
                ["readings_in", "readings_out"],
                where=[PROCESS],
                then=[
                    "derivative(unit: 1s, nonNegative: true)",
                    'group(columns: ["process", "_field"])',
                    WINDOW_SUM,
                ],
            ),
            unit="reqps",
            legend="${__field.labels.process} ${__field.name}",
        ),
        timeseries(
            "Dead letters by reason",
            flux(
                schema.DEADLETTER,
                ["count"],
                then=['group(columns: ["reason"])', WINDOW_SUM],
            ),
            legend="${__field.labels.reason}",
            bars=True,
            description="Readings refused by validation, kept aside with their reason.",
        ),
        timeseries(
            "Write errors and dead letters (per interval)",
            flux(
                schema.PIPELINE,
                ["write_errors", "deadletters"],
                where=[PROCESS],
                then=["difference(nonNegative: true)", WINDOW_SUM],
            ),
            legend=per_instance + " ${__field.name}",
            bars=True,
        ),
        timeseries(
            "Kafka consumer lag (messages)",
            flux(schema.PIPELINE, ["lag"], where=[PROCESS], then=[WINDOW_MAX]),
            legend=per_instance,
        ),
        timeseries(
            "Latency p50 / p99 (ms)",
            flux(
                schema.PIPELINE,
                ["latency_p50_ms", "latency_p99_ms"],
                where=[PROCESS],
                then=[WINDOW_MAX],
            ),
            unit="ms",
            legend=per_instance + " ${__field.name}",
        ),
        table(
            "Process totals since start",
            flux(
                schema.PIPELINE,
                ["readings_in", "readings_out", "deadletters", "write_errors", "lag"],
                where=[PROCESS],
                then=[
                    "last()",
                    'pivot(rowKey: ["process", "instance"], columnKey: ["_field"], '
                    'valueColumn: "_value")',
                    "group()",
                    'keep(columns: ["process", "instance", "readings_in", "readings_out", '
                    '"deadletters", "write_errors", "lag"])',
                ],
            ),
            size=(12, 8),
        ),
        table(
            "Latest dead letters",
            flux(
                schema.DEADLETTER,
                then=[
                    'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                    "group()",
                    'keep(columns: ["_time", "reason", "kind", "device", "error"])',
                    'sort(columns: ["_time"], desc: true)',
                    "limit(n: 200)",
                ],
            ),
            size=(12, 8),
        ),
        timeseries(
            "Late readings (per interval)",
            flux(
                [schema.AIR, schema.WATER],
                ["late"],
                then=[as_flag(), 'group(columns: ["_measurement"])', WINDOW_SUM],
            ),
            legend="${__series.name}",
            bars=True,
            description="Readings that arrived after their window had closed, per kind.",
        ),
        table(
            "Sensor health: active issues",
            flux(
                schema.SENSOR_HEALTH,
                ["active", "detail"],
                then=[
                    "last()",
                    'pivot(rowKey: ["device", "issue"], columnKey: ["_field"], '
                    'valueColumn: "_value")',
                    "group()",
                    "filter(fn: (r) => r.active)",
                    'keep(columns: ["device", "township", "issue", "detail"])',
                ],
            ),
            size=(12, 8),
            description="Stuck, out-of-range or silent sensors (latest state per issue).",
        ),
    ]
    return dashboard(
        "civic-pipeline",
        "civic-iot: pipeline health",
        "Throughput, Kafka lag, latencies, dead letters and write errors of every process.",
        panels,
        variables=[query_variable("process", "Process", tag_values(schema.PIPELINE, "process"))],
        time_from="now-1h",
    )


# -------------------------------------------------------------------------- entry point

BUILDERS = {
    "overview.json": overview,
    "air-quality.json": air_quality,
    "water.json": water,
    "earthquake.json": earthquake,
    "alerts.json": alerts,
    "pipeline.json": pipeline,
}


def render(model: Json) -> str:
    """The committed text of one dashboard: stable key order, two-space indent."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def build() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(make()) for name, make in BUILDERS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path: Path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run deploy/grafana/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
