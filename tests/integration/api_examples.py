"""A request for every operation of the API's OpenAPI document, with the status it must
answer: :func:`tests.integration.test_api_read.test_every_operation_answers_as_documented`
walks the document and fails for an operation that has none here, so a new endpoint
cannot ship untested. Add the new operation's examples here (a success and a refusal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.influx import format_ns
from civic_iot.auth import Role
from tests.integration.api_env import ALERT_OPEN, MIN, QUAKE, ApiEnv

_STREAMS = (
    "test_api_read.py::test_live_streams_answer_on_the_process (the process), "
    "tests/unit/api/test_live_routes.py (every refusal, replay, countdown)"
)
#: Operations tested elsewhere, by design (path -> the tests): the push streams never end,
#: so a plain GET cannot walk them; acknowledging needs an alert service.
TESTED_ELSEWHERE: dict[str, str] = {
    "/live/alerts": _STREAMS,
    "/live/quakes": _STREAMS,
    "/live/readings": _STREAMS,
    "/live/place": _STREAMS,
    "/live/console": _STREAMS,
    "/live/ops": _STREAMS,
    "/console/alerts/{alert_id}/ack": (
        "tests/unit/api/test_live_routes.py::test_ack_needs_an_operator, "
        "tests/e2e/test_console.py (an ack in the browser, recorded by the alert service)"
    ),
}


@dataclass(frozen=True)
class Example:
    status: int
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    role: Role | None = None


def _iso(ns: int) -> str:
    return format_ns(ns)


def examples(api: ApiEnv) -> dict[tuple[str, str], list[Example]]:
    """(method, path template) -> requests and the statuses they must get."""
    t0 = api.t0_ns
    dev = {"device_id": "air-0001"}
    none_dev = {"device_id": "nope-0001"}
    out: dict[tuple[str, str], list[Example]] = {
        ("get", "/health"): [Example(200)],
        ("get", "/api/v1/devices"): [
            Example(200, query={"township": "63000010"}),
            Example(200, query={"kind": "water", "limit": 2, "offset": 1}),
            Example(400, query={"limit": 100_000}),
            Example(400, query={"kind": "volcano"}),
        ],
        ("get", "/api/v1/devices/{device_id}"): [
            Example(200, dev),
            Example(404, none_dev),
            Example(400, {"device_id": "bad id!"}),
        ],
        ("get", "/api/v1/devices/{device_id}/readings/latest"): [
            Example(200, dev),
            Example(404, none_dev),
        ],
        ("get", "/api/v1/devices/{device_id}/readings"): [
            Example(
                200,
                dev,
                {
                    "quantity": "pm2_5_ugm3",
                    "start": _iso(t0),
                    "stop": _iso(t0 + 20 * MIN),
                    "every": "1m",
                    "aggregate": "max",
                },
            ),
            Example(200, dev, {"quantity": "pm10_ugm3", "start": _iso(t0), "limit": 5}),
            Example(400, dev, {"quantity": "rainfall_mm"}),
            Example(400, dev, {"quantity": "pm2_5_ugm3", "every": "1 minute"}),
            Example(400, dev, {"quantity": "pm2_5_ugm3", "start": "2026-01-01T00:00:00"}),
        ],
        ("get", "/api/v1/devices/{device_id}/thresholds"): [
            Example(200, {"device_id": "river-0001"}, role="agency"),
            Example(401, {"device_id": "river-0001"}),
            Example(404, none_dev, role="agency"),
        ],
        ("get", "/api/v1/townships"): [Example(200)],
        ("get", "/api/v1/townships/{code}/readings/latest"): [
            Example(200, {"code": "63000010"}),
            Example(404, {"code": "99999999"}),
        ],
        ("get", "/api/v1/alerts/open"): [
            Example(200),
            Example(200, query={"hazard": "flood"}),
            Example(400, query={"hazard": "volcano"}),
        ],
        ("get", "/api/v1/alerts"): [
            Example(200, query={"limit": 2}),
            Example(200, query={"area": "63000010", "since": _iso(t0)}),
            Example(400, query={"since": "yesterday"}),
            Example(400, query={"area": "a b"}),
        ],
        ("get", "/api/v1/alerts/{alert_id}"): [
            Example(200, {"alert_id": ALERT_OPEN}),
            Example(404, {"alert_id": "44444444-4444-5444-8444-444444444444"}),
            Example(400, {"alert_id": "not-a-uuid"}),
        ],
        ("get", "/api/v1/quakes"): [Example(200), Example(400, query={"offset": -1})],
        ("get", "/api/v1/quakes/{event_id}"): [
            Example(200, {"event_id": QUAKE}),
            Example(200, {"event_id": QUAKE}, {"min_intensity_rank": 5}),
            Example(404, {"event_id": "nope"}),
            Example(400, {"event_id": QUAKE}, {"min_intensity_rank": 10}),
        ],
        ("get", "/api/v1/pipeline"): [
            Example(200, role="operator"),
            Example(403, role="agency"),
            Example(401),
        ],
        ("get", "/api/v1/deadletters"): [
            Example(200, query={"since": _iso(t0)}, role="operator"),
            Example(401),
        ],
        ("get", "/console/me"): [
            Example(200, role="agency"),
            Example(401),
        ],
        ("get", "/sta/{version}"): [
            Example(200, {"version": "v1.1"}),
            Example(200, {"version": "v1.0"}),
            Example(400, {"version": "v2.0"}),
        ],
    }
    keys = {
        "Things": ("'air-0001'", "Datastreams"),
        "Locations": ("'air-0001'", "Things"),
        "Sensors": ("'air.air'", "Datastreams"),
        "ObservedProperties": ("'pm2_5_ugm3'", "Datastreams"),
        "Datastreams": ("'air-0001:pm2_5_ugm3'", "Observations"),
        "Observations": (f"'air-0001:pm2_5_ugm3:{t0}'", "Datastream"),
        "FeaturesOfInterest": ("'air-0001'", "Observations"),
    }
    for name, (key, nav) in keys.items():
        v11, v10 = {"version": "v1.1"}, {"version": "v1.0"}
        out[("get", f"/sta/{{version}}/{name}")] = [
            Example(200, v11, {"$top": 2, "$count": "true"}),
            Example(200, v10),
            Example(400, v11, {"$filter": "name eq"}),
        ]
        out[("get", f"/sta/{{version}}/{name}({{entity_id}})")] = [
            Example(200, {**v11, "entity_id": key}),
            Example(404, {**v10, "entity_id": "'nope'"}),
        ]
        out[("get", f"/sta/{{version}}/{name}({{entity_id}})/{{rest}}")] = [
            Example(200, {**v11, "entity_id": key, "rest": nav}),
            Example(404, {**v11, "entity_id": key, "rest": "Nothing"}),
        ]
    return out
