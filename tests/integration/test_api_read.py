"""The read API as a process against the real InfluxDB, over data written through the
project's sink: every operation of its OpenAPI document answers as documented, and what
it says matches what was stored."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import mean
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from api.influx import format_ns
from civic_iot.auth import TokenStore
from civic_iot.settings import Settings
from civic_iot.storage import schema
from ops.pipeline import free_port
from tests.integration.api_env import (
    ALERT_CANCELLED,
    ALERT_OPEN,
    ALERT_QUAKE,
    MIN,
    QUAKE,
    ApiEnv,
    S,
    api_env,
    start_api,
    stop,
    write_points,
)
from tests.integration.api_examples import TESTED_ELSEWHERE, examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiEnv]:
    yield from api_env(stack, tmp_path_factory.mktemp("api-read"))


def _schema(doc: dict[str, Any], op: dict[str, Any], status: int) -> dict[str, Any] | None:
    resp = op.get("responses", {}).get(str(status))
    if resp is None:
        return None
    return resp.get("content", {}).get("application/json", {}).get("schema", {})


def test_every_operation_answers_as_documented(api: ApiEnv) -> None:
    """Walk /openapi.json: every operation has examples (a success and a refusal), each
    answers the status it must, the status is documented for the operation, and the body
    validates against the documented schema."""
    doc = requests.get(f"{api.base}/openapi.json", timeout=10).json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    table = examples(api)
    operations = [
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if path not in TESTED_ELSEWHERE
    ]
    missing = [f"{m.upper()} {p}" for m, p in operations if (m, p) not in table]
    assert not missing, f"operations without examples in api_examples.py: {missing}"
    stale = [f"{m.upper()} {p}" for m, p in table if (m, p) not in operations]
    assert not stale, f"examples for operations the document lacks: {stale}"
    failures = []
    for method, template in operations:
        op = doc["paths"][template][method]
        assert {"200"} <= set(op["responses"]), f"{template}: no 200 documented"
        for ex in table[(method, template)]:
            path = re.sub(r"\{(\w+)(?::path)?\}", lambda m, ex=ex: ex.path[m.group(1)], template)
            resp = api.get(path, token=api.tokens[ex.role] if ex.role else None, **ex.query)
            where = f"{method.upper()} {path} {ex.query} (role {ex.role})"
            if resp.status_code != ex.status:
                failures.append(f"{where}: {resp.status_code} != {ex.status}: {resp.text[:300]}")
                continue
            schema = _schema(doc, op, ex.status)
            if schema is None:
                failures.append(f"{where}: status {ex.status} is not documented")
                continue
            body = resp.json()
            if ex.status >= 400:
                assert set(body) == {"status", "error", "message"}, where
                assert body["status"] == ex.status, where
                assert body["message"], where
            errors = list(
                Draft202012Validator({**schema, "components": doc["components"]}).iter_errors(body)
            )
            if errors:
                failures.append(f"{where}: body does not match the schema: {errors[0].message}")
    assert not failures, "\n".join(failures)


def test_openapi_loads_nothing_from_a_cdn(api: ApiEnv) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert api.get(path).status_code == 404
    assert "cdn" not in requests.get(f"{api.base}/openapi.json", timeout=10).text.lower()


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in items}


def test_device_status_is_what_was_stored(api: ApiEnv) -> None:
    page = api.get("/api/v1/devices", township="63000010", limit=1000).json()
    devices = _by_id(page["items"])
    assert page["total"] == len(page["items"]) == 11
    a1, a2, seis = devices["air-0001"], devices["air-0002"], devices["seis-0001"]
    assert a1["last_seen"] == format_ns(api.facts["air1_last_ns"])
    assert a1["health"] == "ok"
    assert a1["issues"] == []
    assert a1["level"]["measurement"] == "air_quality"
    assert a1["level"]["value"] == 2
    assert [a["alert_id"] for a in a1["open_alerts"]] == [ALERT_OPEN]
    # stuck is open; the silence was cleared two minutes later.
    assert a2["health"] == "degraded"
    assert [(i["issue"], i["detail"]) for i in a2["issues"]] == [("stuck", "20.0 for 30 min")]
    assert a2["last_seen"] == format_ns(api.facts["air2_last_ns"])
    assert seis["last_seen"] == format_ns(api.t0_ns + 2 * S)
    assert seis["level"]["field"] == "intensity_rank"
    assert seis["level"]["value"] == 1
    # A registered device without data is unknown, not ok.
    quiet = next(
        d for d in page["items"] if d["id"] not in ("air-0001", "air-0002", "air-0003", "seis-0001")
    )
    assert quiet["health"] == "unknown"
    assert quiet["last_seen"] is None
    rain = api.get("/api/v1/devices/rain-0001").json()
    assert rain["level"]["field"] == "rain_class"
    assert rain["level"]["value"] == 2
    assert rain["level"]["figures"]["rainfall_mm_1h"] == 20.0
    assert [(r["quantity"], r["value"]) for r in rain["readings"]] == [("rainfall_mm", 3.5)]


def test_device_pages_follow_next_links(api: ApiEnv) -> None:
    seen: list[str] = []
    url: str | None = f"{api.base}/api/v1/devices?kind=water&limit=25"
    while url:
        page = requests.get(url, timeout=30).json()
        seen += [d["id"] for d in page["items"]]
        url = page["next"]
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == page["total"] == 60


def test_latest_readings_per_device_and_township(api: ApiEnv) -> None:
    last_t, last_v = api.facts["air1_pm"][-1]
    latest = {r["quantity"]: r for r in api.get("/api/v1/devices/air-0001/readings/latest").json()}
    assert set(latest) == {"pm2_5_ugm3", "pm10_ugm3", "temperature_c"}
    assert latest["pm2_5_ugm3"]["value"] == last_v
    assert latest["pm2_5_ugm3"]["at"] == format_ns(last_t)
    assert latest["pm2_5_ugm3"]["unit"] == "ug/m3"
    assert latest["pm2_5_ugm3"]["name"] == "PM2.5"
    town = api.get("/api/v1/townships/63000010/readings/latest").json()
    assert town["township"]["devices"] == 11
    assert town["air"] == {
        "level": 1,
        "sensors_agreeing": 2,
        "max_aqi": 170,
        "at": format_ns(api.t0_ns + 15 * MIN),
    }
    devs = _by_id(town["devices"])
    assert devs["air-0001"]["readings"][0]["value"] == last_v
    assert devs["air-0002"]["readings"] == [
        {
            "quantity": "pm2_5_ugm3",
            "name": "PM2.5",
            "unit": "ug/m3",
            "value": 20.0,
            "at": format_ns(api.facts["air2_last_ns"]),
        }
    ]
    assert [a["alert_id"] for a in town["open_alerts"]] == [ALERT_OPEN]


def test_a_quantity_reported_rarely_keeps_its_newest_value(api: ApiEnv) -> None:
    """air-0003 sent PM2.5 every minute lately and CO once, 25 minutes ago: the recent
    window the API reads first lacks the CO, which the first request reads over all time
    and the next ones remember; a reading stored meanwhile shows at once."""
    t0 = api.t0_ns

    def newest() -> dict[str, tuple[float, str]]:
        body = api.get("/api/v1/devices/air-0003").json()
        return {r["quantity"]: (r["value"], r["at"]) for r in body["readings"]}

    for _ in range(2):
        assert newest() == {
            "pm2_5_ugm3": (28.0, format_ns(t0 + 28 * MIN)),
            "co_ppm": (0.4, format_ns(t0 + 5 * MIN)),
        }
    now = time.time_ns()
    point = schema.AIR.point(
        api.settings.influx,
        {"device": "air-0003", "township": "63000010", "kind": "air"},
        {"pm2_5_ugm3": 99.0, "late": False},
        now,
    )
    assert point is not None
    asyncio.run(write_points(api.settings, [point]))
    assert newest() == {
        "pm2_5_ugm3": (99.0, format_ns(now)),
        "co_ppm": (0.4, format_ns(t0 + 5 * MIN)),
    }


def test_series_downsampled_and_paged(api: ApiEnv) -> None:
    t0, pm = api.t0_ns, api.facts["air1_pm"]
    series = api.get(
        "/api/v1/devices/air-0001/readings",
        quantity="pm2_5_ugm3",
        start=format_ns(t0),
        stop=format_ns(t0 + 20 * MIN),
        every="1m",
    ).json()
    assert series["aggregate"] == "mean"
    assert series["every"] == "1m"
    assert len(series["points"]) == 20
    for i, p in enumerate(series["points"]):
        window = [v for t, v in pm if t0 + i * MIN <= t < t0 + (i + 1) * MIN]
        assert p["time"] == format_ns(t0 + i * MIN)
        assert p["value"] == pytest.approx(mean(window))
    raw: list[dict[str, Any]] = []
    url: str | None = (
        f"{api.base}/api/v1/devices/air-0001/readings?quantity=pm2_5_ugm3&limit=50"
        f"&start={format_ns(t0)}&stop={format_ns(t0 + 30 * MIN)}"
    )
    while url:
        page = requests.get(url, timeout=30).json()
        raw += page["points"]
        url = page["next"]
    assert [(p["time"], p["value"]) for p in raw] == [(format_ns(t), v) for t, v in pm]
    too_many = api.get(
        "/api/v1/devices/air-0001/readings", quantity="pm2_5_ugm3", start=format_ns(0), every="1s"
    )
    assert too_many.status_code == 400
    assert "windows" in too_many.json()["message"]


def test_open_alerts_history_and_acknowledgements(api: ApiEnv) -> None:
    t0 = api.t0_ns
    opened = {a["alert_id"]: a for a in api.get("/api/v1/alerts/open").json()}
    assert set(opened) == {ALERT_OPEN, ALERT_QUAKE}
    air = opened[ALERT_OPEN]
    assert air["key"] == "air_quality:63000010"
    assert air["area_name"].startswith("Songshan")
    assert air["opened"] == format_ns(t0 + MIN)
    assert (air["last"]["msg_type"], air["last"]["sequence"], air["last"]["level"]) == (
        "Update",
        2,
        2,
    )
    assert [(k["by"], k["note"]) for k in air["acknowledgements"]] == [("op-1", "seen")]
    assert [a["alert_id"] for a in api.get("/api/v1/alerts/open", hazard="earthquake").json()] == [
        ALERT_QUAKE
    ]
    # History, newest first, two at a time; the next pages are fixed by 'until'.
    sent: list[tuple[str, int]] = []
    url: str | None = f"{api.base}/api/v1/alerts?limit=2"
    while url:
        page = requests.get(url, timeout=30).json()
        sent += [(m["alert_id"], m["sequence"]) for m in page["items"]]
        url = page["next"]
        assert url is None or "until=" in url
    assert sent == [
        (ALERT_QUAKE, 1),
        (ALERT_CANCELLED, 2),
        (ALERT_OPEN, 2),
        (ALERT_CANCELLED, 1),
        (ALERT_OPEN, 1),
    ]
    flood = api.get("/api/v1/alerts", hazard="flood", msg_type="Cancel").json()["items"]
    assert [(m["alert_id"], m["reason"]) for m in flood] == [(ALERT_CANCELLED, "cleared")]
    closed = api.get(f"/api/v1/alerts/{ALERT_CANCELLED}").json()
    assert closed["open"] is False
    assert [m["msg_type"] for m in closed["messages"]] == ["Alert", "Cancel"]


def test_quake_event_and_its_latest_grid(api: ApiEnv) -> None:
    _, newer = api.facts["quake_estimates"]
    events = api.get("/api/v1/quakes").json()["items"]
    assert [(e["event_id"], e["magnitude"], e["max_intensity"]) for e in events] == [
        (QUAKE, 6.1, "5-")
    ]
    quake = api.get(f"/api/v1/quakes/{QUAKE}").json()
    assert quake["estimated_at"] == format_ns(newer)
    assert [(c["township"], c["intensity_rank"], c["s_wave_at"]) for c in quake["cells"]] == [
        ("63000010", 5, format_ns(newer + 4 * S)),
        ("63000040", 4, format_ns(newer + 5 * S)),
        ("65000010", 3, format_ns(newer + 6 * S)),
    ]
    strong = api.get(f"/api/v1/quakes/{QUAKE}", min_intensity_rank=4).json()["cells"]
    assert [c["intensity_rank"] for c in strong] == [5, 4]


def test_operations_need_an_operator_token(api: ApiEnv) -> None:
    anonymous = api.get("/api/v1/pipeline")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert api.get("/api/v1/pipeline", token="civ_000000000000_" + "x" * 43).status_code == 401
    assert api.get("/api/v1/pipeline", token=api.tokens["agency"]).status_code == 403
    (worker,) = api.get("/api/v1/pipeline", token=api.tokens["operator"]).json()
    assert (worker["process"], worker["instance"]) == ("worker", "0")
    assert worker["figures"]["readings_in"] == 1500
    assert worker["figures"]["lag"] == 6
    assert worker["readings_in_per_s"] == pytest.approx(50.0)
    dead = api.get(
        "/api/v1/deadletters", token=api.tokens["operator"], since=format_ns(api.t0_ns)
    ).json()
    assert dead["counts"] == [{"reason": "schema", "kind": "air", "count": 3}]
    limits = api.get("/api/v1/devices/river-0001/thresholds", token=api.tokens["agency"]).json()
    assert limits["thresholds"]["river"]["water_level_m_yellow"] == 4.9
    # A public endpoint takes a token, but not a bad one.
    assert api.get("/api/v1/townships", token=api.tokens["agency"]).status_code == 200
    assert api.get("/api/v1/townships", token="nonsense").status_code == 401


def _first_event(api: ApiEnv, path: str, token: str | None = None) -> tuple[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with requests.get(f"{api.base}{path}", headers=headers, stream=True, timeout=10) as resp:
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                return str(name), json.loads(line[6:])
    raise AssertionError(f"{path}: the stream ended without an event")


def test_live_streams_answer_on_the_process(api: ApiEnv) -> None:
    """The process's live hub is started by its lifespan: each stream opens with its
    first event (the snapshots of an empty deployment); /health says the hub is ready."""
    live = requests.get(f"{api.base}/health", timeout=10).json()["live"]
    assert (live["status"], live["kafka"], live["alerts_replayed"]) == ("ok", True, True)
    assert _first_event(api, "/live/alerts") == ("snapshot", [])
    assert _first_event(api, "/live/quakes") == ("snapshot", [])
    name, console = _first_event(api, "/live/console")
    assert name == "snapshot"
    assert "air-0001" in {d["id"] for d in console["devices"]}
    assert _first_event(api, "/live/readings?device=air-0001") == (
        "ready",
        {"device": "air-0001", "township": None},
    )
    name, ready = _first_event(api, "/live/place?township=63000010")
    assert (name, ready["quakes"]) == ("ready", 0)
    name, ops = _first_event(api, "/live/ops", api.tokens["agency"])
    assert name == "snapshot"
    assert ops["stats"]["open_alerts"] == 0


@dataclass(frozen=True)
class Offline:
    """One API process for the two tests below (a process start costs seconds): its
    InfluxDB does not answer, and its public limit is small (a burst of 3, then one
    request per 5 s)."""

    base: str
    proc: subprocess.Popen[bytes]
    token: str

    def get(self, path: str, *, token: bool = False) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        return requests.get(f"{self.base}{path}", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def offline(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offline]:
    tmp = tmp_path_factory.mktemp("api-offline")
    _, token = TokenStore.of(tmp).issue("test-agency", "agency")
    env = {
        "CIVIC_INFLUX__URL": f"http://127.0.0.1:{free_port()}",
        "CIVIC_API__QUERY_TIMEOUT_S": "2",
        "CIVIC_API__PUBLIC_BURST": "3",
        "CIVIC_API__PUBLIC_RATE_PER_S": "0.2",
    }
    base, proc, _log = start_api(stack, tmp, env, health=503)
    try:
        yield Offline(base, proc, token)
    finally:
        stop(proc)


def test_storage_unavailable_is_503_with_retry_after(offline: Offline) -> None:
    """InfluxDB not answering: /health says so, reads answer 503 (not 500) and say when
    to retry; what needs no storage still answers; the process stays up. (With a token:
    the token-less budget is the next test's.)"""
    body = offline.get("/health").json()
    assert (body["status"], body["storage"]) == ("degraded", "unavailable")
    assert body["live"]["status"] == "ok"  # the live push does not need InfluxDB
    for path in ("/api/v1/devices/air-0001", "/api/v1/alerts/open", "/sta/v1.1/Observations"):
        resp = offline.get(path, token=True)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.headers["Retry-After"] == "5"
        assert "storage unavailable" in resp.json()["message"]
    assert offline.get("/sta/v1.1/Things('air-0001')", token=True).status_code == 200
    assert offline.get("/api/v1/townships", token=True).status_code == 200
    assert offline.proc.poll() is None


def test_public_reads_are_rate_limited_per_client(offline: Offline) -> None:
    """Without a token: a burst, then 429 with Retry-After, for every public route alike
    (one bucket per client IP); a token is not counted; /health is never limited."""
    paths = ["/api/v1/townships", "/sta/v1.1/Things('air-0001')", "/api/v1/townships"]
    assert [offline.get(p).status_code for p in paths] == [200] * 3
    refused = offline.get("/sta/v1.0")
    assert refused.status_code == 429
    # 1 / 0.2 s for the next request, less the time the burst took.
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert "send a token" in refused.json()["message"]
    assert [offline.get("/api/v1/townships", token=True).status_code for _ in range(5)] == [200] * 5
    assert offline.get("/health").status_code == 503  # answered (storage down), not limited
    assert offline.get("/api/v1/townships").status_code == 429
