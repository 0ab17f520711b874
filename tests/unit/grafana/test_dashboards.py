"""The committed dashboards: generated, well formed, and naming only the storage schema.

The schema is :mod:`civic_iot.storage.schema` (docs/storage.md is generated from it); the
provisioning payloads are checked as grafana-client sends them, through a fake
of the three API groups provisioning uses.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from grafana_client.client import GrafanaClientError
from typer.testing import CliRunner

from civic_iot.settings import REPO_ROOT, InfluxSettings
from civic_iot.storage import schema
from ops import grafana

GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"
EXPECTED_FILES = {
    "overview.json",
    "air-quality.json",
    "water.json",
    "earthquake.json",
    "alerts.json",
    "pipeline.json",
}


# ---------------------------------------------------------------------- the schema


@dataclass
class Measurement:
    tags: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)


def storage_schema() -> dict[str, dict[str, Measurement]]:
    """bucket -> measurement -> tags and fields, from the storage schema (which
    docs/storage.md is generated from, tests/unit/core/test_schema.py)."""
    out: dict[str, dict[str, Measurement]] = {b: {} for b in schema.BUCKET_ROLES}
    for m in schema.MEASUREMENTS:
        out[m.bucket][m.name] = Measurement(set(m.tag_names), set(m.field_names))
    return out


SCHEMA = storage_schema()
BUILTIN_COLUMNS = {"_time", "_value", "_field", "_measurement", "_start", "_stop"}


def test_the_schema_has_the_documented_layout() -> None:
    assert set(SCHEMA) == {"readings", "seismic", "derived", "alerts"}
    assert SCHEMA["derived"]["air_quality"].tags == {"device", "township"}
    assert {"aqi", "leading", "lat", "lon"} <= SCHEMA["derived"]["air_quality"].fields
    assert SCHEMA["readings"]["air"].tags == {"device", "township", "kind"}
    assert SCHEMA["alerts"]["alert"].fields >= {"alert_id", "sequence", "latency_ms"}
    assert SCHEMA["derived"]["water_level"].fields >= {"flood_depth_cm", "water_level_m"}
    # The 1-minute peaks are the packets' peaks, named as the components are.
    packet = SCHEMA["seismic"]["seismic_packet"].fields
    assert {f"{c}_peak_gal" for c in "xyz"} <= packet
    assert SCHEMA["derived"]["seismic_peak_1m"].fields == {f"{c}_gal" for c in "xyz"} <= packet


# ---------------------------------------------------------------------- the dashboards


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA_DIR / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DASHBOARDS = {
    p.name: json.loads(p.read_text(encoding="utf-8")) for p in grafana.DASHBOARDS_DIR.glob("*.json")
}


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, where, Flux) for every panel target and query variable."""
    out = []
    for name, d in DASHBOARDS.items():
        out += [(name, f"{q.title}/{q.ref_id}", q.query) for q in grafana.panel_queries(d)]
        out += [
            (name, f"${v['name']}", grafana.variable_query(v))
            for v in d["templating"]["list"]
            if v["type"] == "query"
        ]
    return out


QUERIES = all_queries()


def test_committed_json_is_the_generators_output() -> None:
    built = load_builder().build()
    assert set(built) == EXPECTED_FILES
    for name, text in built.items():
        committed = (grafana.DASHBOARDS_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"{name} is stale: run deploy/grafana/build.py"


def test_every_dashboard_has_a_unique_uid_and_title_and_live_defaults() -> None:
    assert set(DASHBOARDS) == EXPECTED_FILES
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    for d in DASHBOARDS.values():
        assert d["id"] is None
        assert d["refresh"] == "10s"
        assert d["time"]["to"] == "now"
        assert d["schemaVersion"] >= 39
        assert "civic-iot" in d["tags"]
        assert d["panels"]


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    for name, d in DASHBOARDS.items():
        taken: set[tuple[int, int]] = set()
        ids = [p["id"] for p in all_panels(d)]
        assert len(set(ids)) == len(ids), name
        for p in all_panels(d):
            g = p["gridPos"]
            assert g["x"] >= 0, (name, p["title"])
            assert g["x"] + g["w"] <= 24, (name, p["title"])
            cells = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & taken, f"{name}: {p['title']} overlaps another panel"
            taken |= cells


def test_every_panel_queries_civic_influxdb_with_flux() -> None:
    for name, d in DASHBOARDS.items():
        for p in all_panels(d):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "influxdb", "uid": "civic-influxdb"}, p["title"]
            assert p["targets"], f"{name}: {p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "civic-influxdb"
                assert t["query"].strip(), f"{name}: {p['title']} {t['refId']} is empty"
                assert "from(bucket:" in t["query"]
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] == "civic-influxdb"


def test_geomap_layers_read_lat_lon_from_their_own_query() -> None:
    for d in DASHBOARDS.values():
        for p in all_panels(d):
            if p["type"] != "geomap":
                continue
            refs = {t["refId"] for t in p["targets"]}
            for layer in p["options"]["layers"]:
                assert layer["location"] == {
                    "mode": "coords",
                    "latitude": "lat",
                    "longitude": "lon",
                }
                assert layer["filterData"]["options"] in refs
            for t in p["targets"]:
                assert '"lat"' in t["query"]
                assert '"lon"' in t["query"]


def _names(pattern: str, text: str) -> set[str]:
    return set(re.findall(pattern, text))


@pytest.mark.parametrize(
    ("name", "where", "flux"), QUERIES, ids=[f"{n}:{w}" for n, w, _ in QUERIES]
)
def test_query_names_only_documented_buckets_measurements_tags_and_fields(
    name: str, where: str, flux: str
) -> None:
    buckets = _names(r'bucket: "([^"]+)"', flux)
    assert buckets, f"{name} {where}: no bucket"
    for b in buckets:
        assert b in SCHEMA, f"{name} {where}: bucket {b!r} is not in the storage schema"
    measurements = _names(r'r\._measurement == "([^"]+)"', flux)
    assert measurements, f"{name} {where}: no measurement filter"
    known = {m: SCHEMA[b][m] for b in buckets for m in SCHEMA[b]}
    for m in measurements:
        assert m in known, f"{name} {where}: measurement {m!r} is not in bucket(s) {buckets}"
    tags = set().union(*(known[m].tags for m in measurements))
    fields = set().union(*(known[m].fields for m in measurements))
    for f in _names(r'r\._field == "([^"]+)"', flux):
        assert f in fields, f"{name} {where}: field {f!r} is not a field of {measurements}"
    for t in _names(r'\btag: "([^"]+)"', flux):
        assert t in tags, f"{name} {where}: {t!r} is not a tag of {measurements}"
    # Columns the query makes itself (rename targets) may be used after they are made.
    made = _names(r'rename\(columns: \{\w+: "(\w+)"\}\)', flux)
    columns = tags | fields | BUILTIN_COLUMNS | made
    used = _names(r"\br\.(\w+)", flux)
    for lst in re.findall(r"(?:columns|rowKey|columnKey): \[([^\]]*)\]", flux):
        used |= set(re.findall(r'"(\w+)"', lst))
    used |= _names(r'\bcolumn: "(\w+)"', flux)
    used |= _names(r"rename\(columns: \{(\w+):", flux)
    for c in used:
        assert c in columns, (
            f"{name} {where}: column {c!r} is neither a tag nor a field of {measurements}"
        )


def test_template_variables_resolve_in_order() -> None:
    for name, d in DASHBOARDS.items():
        defined: list[str] = []
        for v in d["templating"]["list"]:
            query = grafana.variable_query(v)
            for ref in re.findall(r"\$\{(\w+)", query):
                assert ref in defined, f"{name}: ${v['name']} uses ${ref} before it is defined"
            if v.get("includeAll"):
                assert v["allValue"] == ".*"
            defined.append(v["name"])
        for q in grafana.panel_queries(d):
            refs = set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", q.query))
            for ref in {a or b for a, b in refs}:
                assert ref in defined, f"{name}: {q.title} uses undefined ${ref}"
            # Every macro renders away: no ``$`` variable is left for InfluxDB to choke on.
            out = grafana.render_flux(
                q.query, dict.fromkeys(defined), start="-1h", stop="now()", window="10s"
            )
            assert "${" not in out
            assert "v.timeRange" not in out
            assert "v.windowPeriod" not in out


def test_operators_get_township_and_device_filters_where_they_expect_them() -> None:
    def names(file: str) -> list[str]:
        return [v["name"] for v in DASHBOARDS[file]["templating"]["list"]]

    assert names("air-quality.json") == ["township", "device"]
    assert names("water.json") == ["township", "device"]
    assert names("earthquake.json") == ["device", "event_id"]
    assert "hazard" in names("alerts.json")


# ---------------------------------------------------------------------- rendering


def test_render_flux_formats_variables_and_macros_as_grafana_does() -> None:
    q = 'from(bucket: "derived")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'
    q += "  |> filter(fn: (r) => r.township =~ /^${township:regex}$/)\n"
    q += '  |> filter(fn: (r) => r.event_id == "${event_id}")\n'
    q += "  |> aggregateWindow(every: v.windowPeriod, fn: max)"
    out = grafana.render_flux(
        q,
        {"township": ["63000050", "a.b"], "event_id": ["ev-1"]},
        start="2025-01-01T00:00:00Z",
        stop="2025-01-01T01:00:00Z",
        window="10000ms",
    )
    assert "range(start: 2025-01-01T00:00:00Z, stop: 2025-01-01T01:00:00Z)" in out
    assert r"r.township =~ /^(63000050|a\.b)$/" in out
    assert 'r.event_id == "ev-1"' in out
    assert "every: 10000ms" in out
    assert "/^.*$/" in grafana.render_flux(
        q, {"township": None, "event_id": ["x"]}, start="-1h", stop="now()", window="1s"
    )
    with pytest.raises(KeyError):
        grafana.render_flux(q, {}, start="-1h", stop="now()", window="1s")


def test_bind_buckets_points_queries_at_configured_buckets() -> None:
    influx = InfluxSettings(bucket_derived="t1-derived", bucket_alerts="t1-alerts")
    d = grafana.bind_buckets(DASHBOARDS["alerts.json"], influx)
    text = json.dumps(d)
    assert 'bucket: \\"t1-alerts\\"' in text
    assert 'bucket: \\"alerts\\"' not in text
    assert DASHBOARDS["alerts.json"] != d  # the input is not modified
    assert 'bucket: \\"alerts\\"' in json.dumps(DASHBOARDS["alerts.json"])


# ---------------------------------------------------------------------- provisioning


def test_datasource_payload_is_a_flux_influxdb_datasource() -> None:
    influx = InfluxSettings(org="civic", url="http://127.0.0.1:8086")
    ds = grafana.datasource_payload(influx, "tok", url="http://influxdb:8086")
    assert ds["uid"] == "civic-influxdb"
    assert ds["type"] == "influxdb"
    assert ds["access"] == "proxy"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["version"] == "Flux"
    assert ds["jsonData"]["organization"] == "civic"
    assert ds["jsonData"]["defaultBucket"] == "derived"
    assert ds["secureJsonData"] == {"token": "tok"}
    assert grafana.datasource_payload(influx, "tok")["url"] == "http://127.0.0.1:8086"


def test_dashboard_payload_overwrites_by_uid_into_the_folder() -> None:
    model = dict(DASHBOARDS["overview.json"], id=42)
    body = grafana.dashboard_payload(model)
    assert body["folderUid"] == "civic-iot"
    assert body["overwrite"] is True
    assert body["dashboard"]["uid"] == "civic-overview"
    assert body["dashboard"]["id"] is None
    assert body["message"]
    assert model["id"] == 42


def test_file_provisioning_matches_the_api_payload() -> None:
    ds_file = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/influxdb.yaml").read_text())
    (ds,) = ds_file["datasources"]
    api = grafana.datasource_payload(InfluxSettings(), "${CIVIC_INFLUX__TOKEN}")
    assert ds["uid"] == api["uid"] == "civic-influxdb"
    assert ds["type"] == api["type"]
    assert ds["name"] == api["name"]
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["organization"] == "${CIVIC_INFLUX__ORG}"
    assert ds["secureJsonData"]["token"] == "${CIVIC_INFLUX__TOKEN}"
    assert {k: v for k, v in ds["jsonData"].items() if k != "organization"} == {
        k: v for k, v in api["jsonData"].items() if k != "organization"
    }
    db_file = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/civic.yaml").read_text())
    (provider,) = db_file["providers"]
    assert provider["folder"] == "civic-iot"
    assert provider["folderUid"] == grafana.FOLDER_UID
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


class FakeGrafana:
    """The datasource, folder and dashboard groups of GrafanaApi, kept in dicts."""

    def __init__(self) -> None:
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.datasource = self
        self.folder = self
        self.dashboard = self

    @staticmethod
    def _missing() -> GrafanaClientError:
        return GrafanaClientError(404, {"message": "not found"}, "Client Error 404: not found")

    def get_datasource_by_uid(self, datasource_uid: str) -> dict[str, Any]:
        self.calls.append("get_datasource")
        if datasource_uid not in self.datasources:
            raise self._missing()
        return self.datasources[datasource_uid]

    def create_datasource(self, datasource: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create_datasource")
        self.datasources[datasource["uid"]] = datasource
        return {"datasource": datasource}

    def update_datasource_by_uid(
        self, datasource_uid: str, datasource: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("update_datasource")
        self.datasources[datasource_uid] = datasource
        return {"datasource": datasource}

    def get_folder(self, uid: str) -> dict[str, Any]:
        if uid not in self.folders:
            raise self._missing()
        return self.folders[uid]

    def create_folder(self, title: str, uid: str | None = None) -> dict[str, Any]:
        self.calls.append("create_folder")
        assert uid is not None
        self.folders[uid] = {"uid": uid, "title": title}
        return self.folders[uid]

    def update_folder(
        self,
        uid: str,
        title: str | None = None,
        version: int | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        self.calls.append("update_folder")
        self.folders[uid] = {"uid": uid, "title": title}
        return self.folders[uid]

    def update_dashboard(self, dashboard: dict[str, Any]) -> dict[str, Any]:
        assert set(dashboard) == {"dashboard", "folderUid", "overwrite", "message"}
        assert dashboard["overwrite"] is True
        uid = dashboard["dashboard"]["uid"]
        self.dashboards[uid] = dashboard
        return {"status": "success", "uid": uid, "url": f"/d/{uid}/x"}


def test_provision_is_idempotent() -> None:
    api = FakeGrafana()
    influx = InfluxSettings(bucket_derived="prod-derived")
    models = grafana.load_dashboards()
    first = grafana.provision_with(api, influx, token="tok", dashboards=models)
    assert (first.datasource, first.folder) == ("created", "created")
    assert {uid for uid, _ in first.dashboards} == {d["uid"] for d in models}
    assert all(b["folderUid"] == "civic-iot" for b in api.dashboards.values())
    assert 'bucket: \\"prod-derived\\"' in json.dumps(api.dashboards["civic-overview"])

    second = grafana.provision_with(api, influx, token="tok", dashboards=models)
    assert (second.datasource, second.folder) == ("updated", "unchanged")
    assert second.dashboards == first.dashboards
    assert api.calls.count("create_datasource") == 1
    assert api.calls.count("create_folder") == 1
    assert len(api.datasources) == 1
    assert len(api.dashboards) == len(models)


def test_provision_reports_a_refusal_with_the_object() -> None:
    class Refusing(FakeGrafana):
        def update_dashboard(self, dashboard: dict[str, Any]) -> dict[str, Any]:
            raise GrafanaClientError(403, {}, "Client Error 403: forbidden")

    with pytest.raises(grafana.GrafanaProvisionError, match="dashboard uid=civic-"):
        grafana.provision_with(
            Refusing(), InfluxSettings(), token="t", dashboards=grafana.load_dashboards()
        )


def test_provision_reports_an_unreachable_grafana() -> None:
    class Unreachable(FakeGrafana):
        def get_datasource_by_uid(self, datasource_uid: str) -> dict[str, Any]:
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(grafana.GrafanaProvisionError, match="datasource uid=civic-influxdb"):
        grafana.provision_with(Unreachable(), InfluxSettings(), token="t", dashboards=[])


def test_load_dashboards_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(grafana.GrafanaProvisionError, match=r"build\.py"):
        grafana.load_dashboards(tmp_path)


@pytest.mark.parametrize(
    ("token", "user", "password", "expected"),
    [("t", None, None, "t"), (None, "admin", "pw", ("admin", "pw"))],
)
def test_resolve_auth(
    token: str | None, user: str | None, password: str | None, expected: object
) -> None:
    assert grafana.resolve_auth(token, user, password) == expected


@pytest.mark.parametrize(
    ("token", "user", "password"), [(None, None, None), ("t", "admin", "pw"), (None, "admin", None)]
)
def test_resolve_auth_refuses_missing_or_mixed_credentials(
    token: str | None, user: str | None, password: str | None
) -> None:
    with pytest.raises(ValueError, match="token"):
        grafana.resolve_auth(token, user, password)


def test_provision_command_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(grafana.grafana_app, ["provision", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "credentials" in result.output
