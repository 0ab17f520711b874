"""The live push and console endpoints over HTTP (FastAPI's test client, a hub that is
not started: no Kafka, no InfluxDB): every endpoint in the OpenAPI document, their
4xx answers, authentication, the per-IP limit, and the first events of each stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import console
from api.app import create_app
from api.context import ApiContext
from api.livehub import LiveHub
from civic_iot.auth import TokenStore
from civic_iot.registry import Registry
from civic_iot.settings import ApiSettings, Settings
from tests.unit.alerts.factories import candidate
from tests.unit.api.live_factories import ORIGIN_S, message_json, quake_message
from tests.unit.api.test_live_hub import DEVICES, TOWNS

#: The hub's clock: two seconds after the test earthquake's origin.
NOW = ORIGIN_S + 2.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, api=ApiSettings(live_streams_per_ip=3, live_heartbeat_s=0.2))


@pytest.fixture
def hub(settings: Settings) -> LiveHub:
    return LiveHub(settings, registry=Registry(townships=TOWNS, devices=DEVICES), clock=lambda: NOW)


@pytest.fixture
def ctx(settings: Settings) -> ApiContext:
    """The real app's shared context (its InfluxDB client is never asked here)."""
    return ApiContext.of(settings, "unused")


@pytest.fixture
def tokens(ctx: ApiContext) -> TokenStore:
    return ctx.tokens


@pytest.fixture
def client(settings: Settings, ctx: ApiContext, hub: LiveHub) -> Iterator[TestClient]:
    """The real application with a hub of the test's (fed by hand, not started)."""
    with TestClient(create_app(settings, ctx=ctx, hub=hub)) as c:
        yield c


def bearer(tokens: TokenStore, role: Any) -> dict[str, str]:
    _, token = tokens.issue(f"who-{role}", role)
    return {"Authorization": f"Bearer {token}"}


def events(client: TestClient, url: str, n: int, **kw: Any) -> list[tuple[str, Any]]:
    """The first ``n`` events of a stream (name, data); then the client leaves."""
    out: list[tuple[str, Any]] = []
    with client.stream("GET", url, **kw) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((str(name), json.loads(line[6:])))
                if len(out) == n:
                    break
    return out


def test_openapi_lists_the_live_and_console_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/live/alerts",
        "/live/quakes",
        "/live/readings",
        "/live/place",
        "/live/console",
        "/live/ops",
        "/console/me",
        "/console/alerts/{alert_id}/ack",
    } <= set(paths)
    assert "text/event-stream" in paths["/live/alerts"]["get"]["responses"]["200"]["content"]


def test_alerts_stream_starts_with_the_open_alerts_then_pushes(
    client: TestClient, hub: LiveHub
) -> None:
    flood, _ = message_json(candidate(2, hazard="flood"))
    hub.on_alert_message(flood, replay=True)
    ((name, snap),) = events(client, "/live/alerts", 1)
    assert name == "snapshot"
    assert [a["alert_id"] for a in snap] == [flood["alert_id"]]
    ((_, only_air),) = events(client, "/live/alerts?hazard=air_quality", 1)
    assert only_air == []
    assert client.get("/live/alerts?hazard=flood&area=x").status_code == 400


def test_reconnecting_with_last_event_id_gets_only_what_was_missed(
    client: TestClient, hub: LiveHub
) -> None:
    with client.stream("GET", "/live/alerts") as resp:
        head = next(line for line in resp.iter_lines() if line.startswith("id: "))
    seen = head[4:]
    air, _ = message_json(candidate(2, hazard="air_quality"))
    hub.on_alert_message(air, replay=False)
    ((name, msg),) = events(client, "/live/alerts", 1, headers={"Last-Event-ID": seen})
    assert (name, msg["alert_id"]) == ("alert", air["alert_id"])


def test_quakes_and_console_snapshots(client: TestClient, hub: LiveHub) -> None:
    quake, _, _ = quake_message()
    hub.on_alert_message(quake, replay=True)
    ((_, quakes),) = events(client, "/live/quakes", 1)
    assert [q["alert_id"] for q in quakes] == [quake["alert_id"]]
    ((name, snap),) = events(client, "/live/console", 1)
    assert name == "snapshot"
    assert {d["id"] for d in snap["devices"]} == {d.id for d in DEVICES}
    assert [t["code"] for t in snap["townships"]] == [t.code for t in TOWNS]
    assert [a["alert_id"] for a in snap["alerts"]] == [quake["alert_id"]]
    assert snap["now_s"] == NOW


def test_readings_stream_needs_one_known_device_or_township(client: TestClient) -> None:
    assert client.get("/live/readings").status_code == 400
    assert client.get("/live/readings?device=air-0001&township=65000020").status_code == 400
    assert client.get("/live/readings?device=nope").status_code == 404
    assert client.get("/live/readings?township=nope").status_code == 404
    assert events(client, "/live/readings?township=65000020", 1) == [
        ("ready", {"device": None, "township": "65000020"})
    ]


def test_place_warning_then_a_countdown(client: TestClient, hub: LiveHub) -> None:
    quake, event, _ = quake_message()
    hub.on_alert_message(quake, replay=True)
    far = next(c for c in event.cells if c.s_wave_s > 3)
    got = events(client, f"/live/place?lat={far.lat}&lon={far.lon}", 3)
    assert [n for n, _ in got] == ["ready", "warning", "countdown"]
    warning = got[1][1]
    assert warning["intensity"] == far.intensity
    assert warning["place"] == {"lat": far.lat, "lon": far.lon}
    assert warning["status"] == "Exercise"
    assert warning["seconds_left"] == pytest.approx(warning["s_arrival_s"] - NOW, abs=0.1)
    assert got[2][1]["seconds_left"] == warning["seconds_left"]  # the clock stands still here
    town = events(client, f"/live/place?township={TOWNS[0].code}", 2)
    assert town[1][1]["place"]["township"] == TOWNS[0].code


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("lat=25", 400),
        ("lat=25&lon=121&township=65000020", 400),
        ("lat=95&lon=121", 400),
    ],
)
def test_place_refuses_a_bad_place(client: TestClient, query: str, status: int) -> None:
    assert client.get(f"/live/place?{query}").status_code == status


def test_place_of_an_unknown_township(client: TestClient) -> None:
    resp = client.get("/live/place?township=nope")
    assert resp.status_code == 404
    assert "nope" in resp.json()["message"]


def test_ops_stream_needs_a_token(client: TestClient, tokens: TokenStore, hub: LiveHub) -> None:
    resp = client.get("/live/ops")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert client.get("/live/ops", headers={"Authorization": "Bearer civ_x"}).status_code == 401
    hub.set_health({"air-0001": {"stuck": ("pm2_5_ugm3", 1.0)}})
    ((name, snap),) = events(client, "/live/ops", 1, headers=bearer(tokens, "agency"))
    assert name == "snapshot"
    assert snap["health"] == [{"id": "air-0001", "issues": {"stuck": "pm2_5_ugm3"}}]
    assert set(snap["stats"]) >= {"rates", "lag", "open_alerts", "alert_service", "streams"}


def test_public_streams_are_limited_per_client(
    client: TestClient, hub: LiveHub, tokens: TokenStore
) -> None:
    with (
        client.stream("GET", "/live/alerts") as a,
        client.stream("GET", "/live/quakes") as b,
        client.stream("GET", "/live/console") as c,
    ):
        for held in (a, b, c):
            assert held.status_code == 200
            next(line for line in held.iter_lines() if line.startswith("data: "))
        resp = client.get("/live/alerts")
        assert resp.status_code == 429
        assert int(resp.headers["retry-after"]) >= 1
        assert "at most 3 streams" in resp.json()["message"]
        # A token's streams are not counted per client; a bad token is refused, not ignored.
        with client.stream("GET", "/live/alerts", headers=bearer(tokens, "agency")) as d:
            assert d.status_code == 200
            next(line for line in d.iter_lines() if line.startswith("data: "))
        assert (
            client.get("/live/alerts", headers={"Authorization": "Bearer civ_x"}).status_code == 401
        )
    # The slots come back as those streams end (the server notices the client left).
    deadline = time.monotonic() + 10
    while hub.limiter.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.limiter.open_streams == 0
    assert hub._subs["alerts"] == set()
    assert events(client, "/live/alerts", 1)[0][0] == "snapshot"


def test_console_page_and_assets(client: TestClient) -> None:
    resp = client.get("/console", follow_redirects=False)
    assert (resp.status_code, resp.headers["location"]) == (308, "/console/")
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # Nothing from elsewhere: every script and style is the console's own.
    assert "http" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for name in console.ASSETS:
        assert client.get(f"/console/{name}").status_code == 200
    outline = client.get("/console/taiwan.geojson").json()
    assert "Natural Earth" in outline["features"][0]["properties"]["source"]
    assert client.get("/console/outline.py").status_code == 404
    assert client.get("/console/..%2Flive.py").status_code == 404


def test_ack_needs_an_operator(client: TestClient, tokens: TokenStore) -> None:
    url = "/console/alerts/some-alert/ack"
    assert client.post(url, json={"note": ""}).status_code == 401
    assert client.post(url, json={}, headers=bearer(tokens, "agency")).status_code == 403
    assert client.get("/console/me", headers=bearer(tokens, "agency")).json() == {
        "name": "who-agency",
        "role": "agency",
    }
    # With the right role the request goes on to the alert service: not reachable here.
    resp = client.post(url, json={"note": "x" * 281}, headers=bearer(tokens, "operator"))
    assert resp.status_code == 400
    resp = client.post(url, json={"note": "seen"}, headers=bearer(tokens, "operator"))
    assert resp.status_code == 503
