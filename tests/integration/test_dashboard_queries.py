"""Every dashboard query runs on the real InfluxDB and returns rows.

A small, realistic data set following the storage schema (docs/storage.md) is written to
buckets of this test run alone (``gtest-<id>-readings`` ...); the dashboards' queries are
pointed at them with
:func:`ops.grafana.bind_buckets`, Grafana's macros and template variables are
replaced as Grafana would (:func:`ops.grafana.render_flux`), and each query must come
back without error and with at least one row. The buckets are deleted at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules

from civic_iot.contracts.readings import SeismicPayload
from civic_iot.settings import InfluxSettings, get_settings, influx_token
from civic_iot.times import to_ns
from ops import grafana
from ops.grafana import (
    DASHBOARDS_DIR,
    PanelQuery,
    bind_buckets,
    bind_flux,
    load_dashboards,
    panel_queries,
    render_flux,
)
from ops.influx_setup import task_flux
from processors.points import seismic_packet_point
from tests.run_ids import new_id

pytestmark = pytest.mark.integration

DASHBOARDS = load_dashboards(DASHBOARDS_DIR)
QUERIES = [q for d in DASHBOARDS for q in panel_queries(d)]
NOW = datetime.now(UTC).replace(microsecond=0)
# As Grafana sends them for "last 1 hour": RFC 3339 literals and a window in ms.
START = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
STOP = (NOW + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
WINDOW = "10000ms"


@dataclass(frozen=True)
class Influx:
    client: InfluxDBClient
    settings: InfluxSettings

    def rows(self, flux: str) -> list[dict[str, Any]]:
        tables = self.client.query_api().query(flux, org=self.settings.org)
        return [dict(rec.values) for table in tables for rec in table.records]


@pytest.fixture(scope="module")
def influx() -> Iterator[Influx]:
    settings = get_settings()
    prefix = f"gtest-{new_id(8)}-"
    base = settings.influx
    mine = base.model_copy(
        update={
            "bucket_readings": prefix + base.bucket_readings,
            "bucket_seismic": prefix + base.bucket_seismic,
            "bucket_derived": prefix + base.bucket_derived,
            "bucket_alerts": prefix + base.bucket_alerts,
        }
    )
    client = InfluxDBClient(
        url=base.url, token=influx_token(settings), org=base.org, timeout=30_000
    )
    buckets = client.buckets_api()
    names = [mine.bucket_readings, mine.bucket_seismic, mine.bucket_derived, mine.bucket_alerts]
    created = [
        buckets.create_bucket(
            bucket_name=name,
            org=base.org,
            retention_rules=BucketRetentionRules(type="expire", every_seconds=0),
        )
        for name in names
    ]
    try:
        write_dataset(client, mine)
        yield Influx(client, mine)
    finally:
        for bucket in created:
            buckets.delete_bucket(bucket)
        client.close()


# ------------------------------------------------------------------------------ data set

AIR = [("air-g1", "63000050", 25.032, 121.518), ("air-g2", "63000060", 25.041, 121.55)]
WATER = [
    ("river-g1", "63000050", 25.05, 121.51, "river"),
    ("flood-g1", "63000060", 25.04, 121.56, "flood"),
    ("rain-g1", "65000100", 24.95, 121.60, "rain"),
]
SEISMIC = [("seis-g1", "63000050", 25.03, 121.52), ("seis-g2", "65000100", 24.96, 121.54)]
EVENT = "ev-20250101T000000-g"


def minutes_ago(m: float) -> datetime:
    return NOW - timedelta(minutes=m)


def packet_line(dev: str, town: str, t: datetime, amp: float, s: InfluxSettings) -> str:
    """A 1 s packet at 100 Hz through the processors' builder: x alternates +-amp, y is
    -amp / 2, z amp / 3 (peaks amp, amp / 2, amp / 3)."""
    xs = [amp * (-1) ** n for n in range(100)]
    data = SeismicPayload(
        ts=t, sample_rate_hz=100, x_gal=xs, y_gal=[-amp / 2] * 100, z_gal=[amp / 3] * 100
    )
    point = seismic_packet_point(dev, town, data, to_ns(t), s)
    assert point is not None
    return point.line()


def write_dataset(client: InfluxDBClient, s: InfluxSettings) -> None:
    """Forty minutes of every measurement of docs/storage.md, with their documented types."""
    readings: list[Point] = []
    seismic: list[str] = []
    derived: list[Point] = []
    alerts: list[Point] = []
    steps = range(9)  # one point every 5 minutes, 40 minutes ago .. now

    for i, (dev, town, lat, lon) in enumerate(AIR):
        for k in steps:
            t = minutes_ago(40 - 5 * k)
            pm = 20.0 + 6 * k + 10 * i
            readings.append(
                Point("air").tag("device", dev).tag("township", town).tag("kind", "air")
                .field("pm2_5_ugm3", pm).field("pm10_ugm3", pm * 1.6).field("o3_ppb", 31.0)
                .field("co_ppm", 0.4).field("no2_ppb", 12.0).field("so2_ppb", 2.0)
                .field("temperature_c", 27.5).field("humidity_pct", 71.0)
                .field("lat", lat).field("lon", lon).field("late", k == 3)
                .time(t)
            )  # fmt: skip
            aqi = int(50 + 12 * k + 20 * i)
            derived.append(
                Point("air_quality").tag("device", dev).tag("township", town)
                .field("aqi", aqi).field("category", "普通" if aqi <= 100 else "對敏感族群不健康")
                .field("leading", "pm2_5" if i == 0 else "o3_8h")
                .field("level", min(aqi // 50 - 1, 3))
                .field("pm2_5_ugm3_1h", pm).field("pm2_5_ugm3_rt", pm * 0.9)
                .field("pm10_ugm3_rt", pm * 1.5)
                .field("o3_ppb_8h", 45.0).field("co_ppm_8h", 0.5)
                .field("lat", lat).field("lon", lon)
                .time(t)
            )  # fmt: skip
            derived.append(
                Point("township_air").tag("township", town)
                .field("level", min(k // 3, 3)).field("sensors_agreeing", 1 + k % 3)
                .field("max_aqi", aqi)
                .time(t)
            )  # fmt: skip

    for dev, town, lat, lon, sensor in WATER:
        for k in steps:
            t = minutes_ago(40 - 5 * k)
            raw = Point("water").tag("device", dev).tag("township", town).tag("kind", "water")
            raw = raw.tag("sensor", sensor).field("lat", lat).field("lon", lon).field("late", False)
            if sensor == "river":
                raw = raw.field("water_level_m", 2.0 + 0.3 * k)
                derived.append(
                    Point("water_level").tag("device", dev).tag("township", town)
                    .tag("sensor", sensor).field("water_level_m", 2.0 + 0.3 * k)
                    .field("rise_cm_per_10min", 60.0).field("level", min(k // 3, 3))
                    .field("rise_level", 1).field("lat", lat).field("lon", lon)
                    .time(t)
                )  # fmt: skip
            elif sensor == "flood":
                raw = raw.field("flood_depth_cm", 4.0 * k)
                derived.append(
                    Point("water_level").tag("device", dev).tag("township", town)
                    .tag("sensor", sensor).field("flood_depth_cm", 4.0 * k)
                    .field("rise_cm_per_10min", 8.0).field("level", min(k // 4, 3))
                    .field("rise_level", 0).field("lat", lat).field("lon", lon)
                    .time(t)
                )  # fmt: skip
            else:
                raw = raw.field("rainfall_mm", 6.5)
                derived.append(
                    Point("rain").tag("device", dev).tag("township", town)
                    .field("rainfall_mm_1h", 40.0 + k).field("rainfall_mm_3h", 90.0 + 3 * k)
                    .field("rainfall_mm_24h", 150.0 + 5 * k).field("rain_class", 1 + k // 5)
                    .field("rti", 120.0 + 10 * k).field("rainfall_mm_event", 60.0 + 8 * k)
                    .field("debris_flow_level", min(k // 6, 2))
                    .field("debris_flow_threshold_mm", 250.0 if k < 10 else 200.0)
                    .field("debris_flow_threshold_kind", "r70" if k < 10 else "r50")
                    .field("lat", lat).field("lon", lon)
                    .time(t)
                )  # fmt: skip
            readings.append(raw.time(t))

    for i, (reason, kind) in enumerate([("schema", "air"), ("range", "water"), ("json", "air")]):
        readings.append(
            Point("deadletter").tag("reason", reason).tag("kind", kind)
            .field("count", 1).field("device", f"air-g{i + 1}")
            .field("error", f"{kind} payload refused: {reason}")
            .time(minutes_ago(30 - 10 * i))
        )  # fmt: skip

    t0 = minutes_ago(10)
    for dev, town, _lat, _lon in SEISMIC:
        for k in range(2):  # two 1 s packets at 100 Hz, as the processors store them
            t = t0 + timedelta(seconds=k)
            seismic.append(packet_line(dev, town, t, 3.0 if k == 0 else 80.0, s))
    ranks = ["0", "1", "2", "3", "4", "5-"]
    for i, (dev, town, lat, lon) in enumerate(SEISMIC):
        for k in range(6):
            t = t0 + timedelta(seconds=k)
            derived.append(
                Point("seismic_station").tag("device", dev).tag("township", town)
                .field("pga_gal", 2.0 + 15.0 * k + i).field("pgv_cms", 0.1 + 1.5 * k)
                .field("intensity", ranks[k]).field("intensity_rank", k)
                .field("triggered", k >= 2).field("lat", lat).field("lon", lon)
                .time(t)
            )  # fmt: skip

    for event, age, mag in ((EVENT, 9.0, 6.1), (EVENT + "-old", 35.0, 4.2)):
        for k in range(3):  # the estimate improves as stations join
            derived.append(
                Point("quake_event").tag("event_id", event)
                .field("lat", 24.8).field("lon", 121.3).field("depth_km", 12.0)
                .field("magnitude", mag - 0.3 + 0.15 * k).field("n_stations", 4 + 3 * k)
                .field("max_intensity_rank", 4 + k)
                .field("origin_time", minutes_ago(age + 0.1).isoformat())
                .time(minutes_ago(age - k / 60))
            )  # fmt: skip
    for n, (town, lat, lon, rank) in enumerate(
        [("63000050", 25.05, 121.55, 5), ("63000050", 25.05, 121.45, 4),
         ("65000100", 24.95, 121.45, 6), ("65000100", 24.85, 121.35, 7)]
    ):  # fmt: skip
        derived.append(
            Point("quake_cell").tag("event_id", EVENT).tag("township", town)
            .field("lat", lat).field("lon", lon).field("intensity_rank", rank)
            .field("intensity", ranks[min(rank, 5)]).field("s_wave_s", 4.0 + 3.5 * n)
            .time(minutes_ago(9) + timedelta(milliseconds=n))
        )  # fmt: skip

    derived.append(
        Point("sensor_health").tag("device", "air-g2").tag("township", "63000060")
        .tag("issue", "stuck").field("active", True)
        .field("detail", "pm2_5_ugm3 unchanged for 30 readings")
        .time(minutes_ago(20))
    )  # fmt: skip
    for proc, inst in (("ingest", "ingest-1"), ("worker", "worker-1"), ("alerts", "alerts-1")):
        for k in steps:
            derived.append(
                Point("pipeline").tag("process", proc).tag("instance", inst)
                .field("readings_in", 1000 * k).field("readings_out", 990 * k)
                .field("deadletters", 3 * k).field("write_errors", k // 4).field("lag", 12 - k)
                .field("latency_p50_ms", 14.0).field("latency_p99_ms", 85.0 + k)
                .time(minutes_ago(40 - 5 * k))
            )  # fmt: skip

    def alert(
        hazard: str, area: str, msg: str, sev: str, alert_id: str, seq: int, level: int, m: float
    ) -> Point:
        return (
            Point("alert").tag("hazard", hazard).tag("area", area).tag("msg_type", msg)
            .tag("severity", sev).tag("status", "Exercise")
            .field("identifier", f"{alert_id}/{seq}").field("alert_id", alert_id)
            .field("sequence", seq).field("level", level)
            .field("headline", f"{hazard} level {level} in {area}")
            .field("reason", {"Alert": "new", "Update": "escalated", "Cancel": "cleared"}[msg])
            .field("latency_ms", 180.0 + seq)
            .time(minutes_ago(m))
        )  # fmt: skip

    alerts += [
        alert("flood", "63000060", "Alert", "Moderate", "al-flood", 1, 1, 30),
        alert("flood", "63000060", "Update", "Severe", "al-flood", 2, 2, 15),
        alert("air_quality", "63000050", "Alert", "Moderate", "al-air", 1, 1, 38),
        alert("air_quality", "63000050", "Cancel", "Moderate", "al-air", 2, 0, 12),
        alert("earthquake", f"quake-{EVENT}", "Alert", "Extreme", "al-quake", 1, 3, 9),
    ]
    for n, (channel, outcome, code) in enumerate(
        [("mqtt", "delivered", 0), ("webhook", "retry", 503), ("webhook", "delivered", 200)]
    ):
        alerts.append(
            Point("delivery").tag("channel", channel).tag("subscriber", f"agency-{n}")
            .tag("outcome", outcome).field("identifier", "al-flood/2").field("attempt", 1 + n // 2)
            .field("status_code", code).field("latency_ms", 40.0 + 100 * n)
            .time(minutes_ago(14 - n))
        )  # fmt: skip
    alerts.append(
        Point("ack").tag("hazard", "flood").tag("area", "63000060")
        .field("alert_id", "al-flood").field("by", "taipei-eoc").field("note", "pumps dispatched")
        .time(minutes_ago(13))
    )  # fmt: skip

    with client.write_api(write_options=SYNCHRONOUS) as api:
        for bucket, points in (
            (s.bucket_readings, readings),
            (s.bucket_seismic, seismic),
            (s.bucket_derived, derived),
            (s.bucket_alerts, alerts),
        ):
            api.write(bucket=bucket, org=s.org, record=points)


# ------------------------------------------------------------------------------ helpers


def resolve_variables(
    influx: Influx, dashboard: Mapping[str, Any], *, pick_first: bool
) -> dict[str, list[str] | None]:
    """Run each query variable in order; select "All" (or the first value) as Grafana would."""
    chosen = grafana.resolve_variables(
        dashboard, influx.rows, start=START, stop=STOP, window=WINDOW, pick_first=pick_first
    )
    for name, values in chosen.items():
        assert values is None or values, f"variable ${name} of {dashboard['uid']} lists nothing"
    return chosen


def rendered(influx: Influx, q: PanelQuery, variables: Mapping[str, list[str] | None]) -> str:
    return render_flux(
        bind_flux(q.query, influx.settings), variables, start=START, stop=STOP, window=WINDOW
    )


def dashboard_by_uid(influx: Influx, uid: str) -> dict[str, Any]:
    return bind_buckets(next(d for d in DASHBOARDS if d["uid"] == uid), influx.settings)


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "q", QUERIES, ids=[f"{q.dashboard_uid}:{q.title}:{q.ref_id}" for q in QUERIES]
)
def test_panel_query_returns_rows(influx: Influx, q: PanelQuery) -> None:
    variables = resolve_variables(
        influx, dashboard_by_uid(influx, q.dashboard_uid), pick_first=False
    )
    flux = rendered(influx, q, variables)
    rows = influx.rows(flux)
    assert rows, f"panel {q.title!r} ({q.dashboard_uid}) returned no rows:\n{flux}"


@pytest.mark.parametrize("uid", [d["uid"] for d in DASHBOARDS])
def test_panels_run_with_one_value_selected(influx: Influx, uid: str) -> None:
    """The regex form of a concrete selection (not "All") is valid Flux everywhere."""
    dashboard = dashboard_by_uid(influx, uid)
    variables = resolve_variables(influx, dashboard, pick_first=True)
    for q in panel_queries(dashboard):
        influx.rows(rendered(influx, q, variables))  # raises on a Flux error


def test_open_alerts_are_latest_non_cancel_message_per_alert(influx: Influx) -> None:
    dashboard = dashboard_by_uid(influx, "civic-alerts")
    q = next(q for q in panel_queries(dashboard) if q.title.startswith("Open alerts (latest"))
    rows = influx.rows(rendered(influx, q, {"hazard": None}))
    got = {(r["alert_id"], r["msg_type"], r["sequence"]) for r in rows}
    assert got == {("al-flood", "Update", 2), ("al-quake", "Alert", 1)}


def test_event_variable_defaults_to_the_newest_event(influx: Influx) -> None:
    dashboard = dashboard_by_uid(influx, "civic-earthquake")
    variables = resolve_variables(influx, dashboard, pick_first=True)
    assert variables["event_id"] == [EVENT]
    cells = next(q for q in panel_queries(dashboard) if q.title.startswith("Grid cells:"))
    rows = influx.rows(rendered(influx, cells, variables))
    assert [r["intensity_rank"] for r in rows] == [5, 4, 6, 7]  # by S-wave seconds
    assert all({"lat", "lon", "s_wave_s", "intensity"} <= r.keys() for r in rows)


def test_geomap_layers_have_one_row_per_sensor_with_coordinates(influx: Influx) -> None:
    dashboard = dashboard_by_uid(influx, "civic-overview")
    geomap = next(p for p in dashboard["panels"] if p["type"] == "geomap")
    for target in geomap["targets"]:
        flux = render_flux(target["query"], {}, start=START, stop=STOP, window=WINDOW)
        rows = influx.rows(flux)
        devices = [r["device"] for r in rows]
        assert len(devices) == len(set(devices)), f"{target['refId']}: one row per sensor"
        assert all(isinstance(r["lat"], float) and isinstance(r["lon"], float) for r in rows)


def test_waveform_panel_shows_each_axis_peak_from_the_packets(influx: Influx) -> None:
    dashboard = dashboard_by_uid(influx, "civic-earthquake")
    q = next(q for q in panel_queries(dashboard) if q.title.startswith("Raw samples"))
    rows = influx.rows(rendered(influx, q, {"device": None}))
    peaks: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["device"], r["_field"])
        peaks[key] = max(peaks.get(key, 0.0), r["_value"])
    assert peaks == {
        (dev, f"{c}_peak_gal"): peak
        for dev, *_ in SEISMIC
        for c, peak in (("x", 80.0), ("y", 40.0), ("z", 80.0 / 3))
    }


def test_downsample_task_keeps_the_minute_peaks_of_the_packets(influx: Influx) -> None:
    """The task's script (ops.influx_setup) run as InfluxDB runs it, on packets of the
    last minute: per station and minute, each axis' largest packet peak, written to
    ``seismic_peak_1m`` in the derived bucket; older packets are not read again."""
    s = influx.settings
    now = datetime.now(UTC)
    # One packet a second from 35 s ago, the amplitude rising; and one 5 minutes ago.
    sent: dict[str, list[tuple[datetime, float]]] = {
        dev: [(now - timedelta(seconds=35 - k), 1.0 + k + 10 * i) for k in range(30)]
        for i, (dev, *_) in enumerate(SEISMIC)
    }
    lines = [
        packet_line(dev, town, t, amp, s)
        for dev, town, *_ in SEISMIC
        for t, amp in [*sent[dev], (now - timedelta(minutes=5), 999.0)]
    ]
    with influx.client.write_api(write_options=SYNCHRONOUS) as api:
        api.write(bucket=s.bucket_seismic, org=s.org, record=lines)
    settings = get_settings().model_copy(update={"influx": s})
    influx.rows(task_flux(settings))  # to() writes; the rows are what it wrote
    got = influx.rows(
        f'from(bucket: "{s.bucket_derived}") |> range(start: -1h)'
        ' |> filter(fn: (r) => r._measurement == "seismic_peak_1m")'
    )
    by_minute: dict[tuple[str, str, int], float] = {}
    for r in got:
        # A window's time is its end (a whole minute) or, for the minute in progress,
        # the task's now: either way within the minute after the packets'.
        minute = int((r["_time"] - timedelta(microseconds=1)).timestamp() // 60)
        by_minute[(r["device"], r["_field"], minute)] = r["_value"]
    want: dict[tuple[str, str, int], float] = {}
    for dev, packets in sent.items():
        for t, amp in packets:
            for c, peak in (("x", amp), ("y", amp / 2), ("z", amp / 3)):
                key = (dev, f"{c}_gal", int(t.timestamp() // 60))
                want[key] = max(want.get(key, 0.0), peak)
    assert by_minute == want
    assert {r["township"] for r in got} == {town for _, town, *_ in SEISMIC}
