"""The whole flow on the real stack: devices -> Mosquitto -> ingest -> Kafka -> Faust worker
-> InfluxDB + candidates -> alert service -> alerts, with the e2e scenario."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.registry import load_registry
from civic_iot.settings import Settings, influx_token
from ops.grafana import (
    bind_flux,
    load_dashboards,
    panel_queries,
    render_flux,
    resolve_variables,
)
from ops.pipeline import Pipeline, execute
from simulator.cli import plan_simulation

pytestmark = pytest.mark.e2e

SCENARIO = Path(__file__).parents[1] / "data" / "scenarios" / "e2e.yaml"

#: Panels the e2e scenario gives no data by design, with the reason.
NO_DATA_BY_DESIGN = {
    "Acknowledgements": "no operator acknowledges an alert during the test",
}


# The scenario runs in real time (about three minutes through ingest, the worker and the
# alert service), then every stored reading and every dashboard query is checked against
# InfluxDB, which on a development machine holds much more than this run's data.
@pytest.mark.timeout(600)
def test_scenario_end_to_end(stack: Settings, unique: str, tmp_path: Path) -> None:
    sc, start, messages = plan_simulation(SCENARIO, registry=load_registry(stack.registry))
    pipeline = Pipeline(stack, f"e2e{unique}.", tmp_path / "logs")
    pipeline.start()
    try:
        res = execute(stack, pipeline, sc, start, messages, drain_timeout_s=120)
    finally:
        pipeline.stop()
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in (tmp_path / "logs").iterdir()}
    failed = [c.text for c in res.checks if not c.ok]
    assert not failed, (failed, logs)

    quakes = [a for a in res.alerts if a["hazard"] == "earthquake" and a["msg_type"] == "Alert"]
    assert len(quakes) == 1, quakes
    quake = quakes[0]
    assert quake["status"] == "Exercise"  # the demo and tests never send Actual
    # No alert anywhere was raised by the spiking station alone.
    assert all(a["area"]["code"] != "seis-0002" for a in res.alerts)
    floods = {a["area"]["code"] for a in res.alerts if a["hazard"] == "flood"}
    assert floods == {"65000020", "65000030"}
    # Nothing accepted was lost: every reading of the run is a stored point (ingest's
    # count may also hold other publishers' readings when the broker is shared).
    assert res.stored_ids == res.expected_ids
    assert len(res.expected_ids) > 1000
    assert res.accepted >= len(res.expected_ids)
    # The demo's timing figures are measured, not defaulted.
    assert 0 < res.publish_s <= res.scenario_s + 60
    assert 0 <= res.stored_after_s < 120

    # Every Grafana panel's query runs on the data this scenario wrote: no Flux error, and
    # no empty panel except those listed with a reason.
    empty = dashboards_on_scenario_data(stack, start - timedelta(hours=1))
    # (Those may still show older data from a shared InfluxDB.)
    assert empty <= set(NO_DATA_BY_DESIGN), empty - set(NO_DATA_BY_DESIGN)


def dashboards_on_scenario_data(settings: Settings, since: datetime) -> set[str]:
    """Run every panel query as Grafana would on load; return the titles of empty ones."""
    i = settings.influx
    start = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stop = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    empty: set[str] = set()
    # Generous timeout: a development InfluxDB may hold much more than the scenario's data.
    with InfluxDBClient(url=i.url, token=influx_token(settings), org=i.org, timeout=300_000) as c:
        api = c.query_api()

        def run(flux: str) -> list[dict[str, object]]:
            return [dict(r.values) for t in api.query(flux) for r in t.records]

        for dashboard in load_dashboards():
            variables = resolve_variables(
                dashboard,
                lambda q: run(bind_flux(q, i)),
                start=start,
                stop=stop,
                window="1m",
                pick_first=False,
            )
            for q in panel_queries(dashboard):
                flux = render_flux(
                    bind_flux(q.query, i), variables, start=start, stop=stop, window="1m"
                )
                if not run(flux):  # a Flux error raises
                    empty.add(q.title)
    return empty
