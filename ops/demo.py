"""The demo (README's first command): a scenario through the whole flow, shown live.

:func:`run_demo` starts a :class:`~ops.pipeline.Pipeline` on a fresh deployment prefix (so
each run's figures are its own), publishes a scenario as the registered devices would,
shows a live table, waits for the pipeline to drain and prints a summary checked against
the scenario's expectations.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from civic_iot.auth import TokenStore
from civic_iot.registry import load_registry
from civic_iot.settings import Settings
from ops.pipeline import (
    Pipeline,
    RunResult,
    alert_latencies,
    execute,
    percentiles,
    refused_counts,
)
from processors.detectors.quake import distance_km
from simulator.cli import plan_simulation
from simulator.publisher import Progress
from simulator.scenario import QuakeEvent, Scenario


def run_demo(
    settings: Settings,
    *,
    scenario: str = "demo",
    speed: float = 1.0,
    workers: int = 1,
    drain_timeout_s: float = 180,
) -> int:
    """The README's first command. Returns 0 when every expectation held."""
    from rich.console import Console  # noqa: PLC0415 - only the demo draws
    from rich.live import Live  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    run = datetime.now(UTC).strftime("demo%Y%m%d%H%M%S")
    pipeline = Pipeline(
        settings, f"{run}.", settings.data_dir / "logs" / run, workers=workers, api=True
    )
    console.rule(f"civic-iot demo: scenario [bold]{scenario}[/bold], run {run}")
    console.print(
        f"starting ingest, {workers} bulk Faust worker(s) and a seismic one, the alert "
        "service and the API "
        f"(logs in {pipeline.log_dir})"
    )
    pipeline.start()
    try:
        # Planned once the processes are up, so that the real-time phases' event times
        # are the wall clock's (the console's S-wave countdown runs on it).
        sc, start, messages = plan_simulation(
            scenario, registry=load_registry(settings.registry), speed=speed
        )
    except BaseException:
        pipeline.stop()
        raise
    console.print(f"{len(messages):,} messages, ~{sc.wall_duration_s(speed):.0f} s")
    # An operator token for this run only (revoked at the end), handed to the page in the
    # URL's fragment: a browser never sends the fragment to a server.
    tokens = TokenStore.at(settings.tokens_file)
    token_record, token = tokens.issue(f"demo-{run}", "operator", note="civic-iot demo")
    console.print(
        f"operations console: [link]{pipeline.console_url}#token={token}[/link]\n"
        f"  (public view: {pipeline.console_url}; the token is revoked when the demo ends)"
    )

    def table(p: Progress | None) -> Table:
        t = Table(title="live", expand=False)
        for col in ("published", "acked", "accepted", "dead letters", "open alerts", "msg/s"):
            t.add_column(col, justify="right")
        counts = pipeline.ingest_counts()
        opened = pipeline.open_alerts()
        t.add_row(
            f"{p.published:,}" if p else "0",
            f"{p.acknowledged:,}" if p else "0",
            f"{int(counts.get('accepted', 0)):,}",
            f"{sum(refused_counts(counts).values()):,}",
            str(len(opened)),
            f"{p.published / p.elapsed_s:,.0f}" if p and p.elapsed_s else "-",
        )
        for a in opened[:10]:
            t.add_row(
                "",
                "",
                "",
                a.get("hazard", ""),
                str(a.get("area_desc", ""))[:30],
                f"{a.get('severity', '')} L{a.get('level')}",
            )
        return t

    try:
        with Live(table(None), console=console, refresh_per_second=2, transient=False) as live:
            res = execute(
                settings,
                pipeline,
                sc,
                start,
                messages,
                speed=speed,
                drain_timeout_s=drain_timeout_s,
                on_progress=lambda p: live.update(table(p)),
            )
    finally:
        pipeline.stop()
        tokens.revoke([token_record.id])
    print_summary(console, settings, res)
    for line in quake_figures(sc, start, res.alerts):
        console.print(line)
    return 0 if res.ok else 1


def quake_figures(scenario: Scenario, start: datetime, alerts: list[dict[str, Any]]) -> list[str]:
    """One line per scenario earthquake: the warning's first and final epicentre error
    (km), magnitude and depth against the scenario's truth, and the seconds from the
    origin to the first alert (its ``detected_at``; the real-time phase's event times
    are the wall clock's). An event is the scenario quake's when its origin is within
    30 s of the true one."""
    lines = []
    t0 = start.timestamp()
    events: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        if a["hazard"] == "earthquake" and a["msg_type"] in ("Alert", "Update"):
            events.setdefault(a["area"]["code"], []).append(a)
    for p0, e in scenario.events():
        if not isinstance(e, QuakeEvent):
            continue
        origin = t0 + p0 + e.at
        truth = f"M{e.magnitude:.1f} at {e.lat:.2f}N {e.lon:.2f}E, {e.depth_km:.0f} km"
        mine = [
            msgs
            for msgs in events.values()
            if abs(datetime.fromisoformat(msgs[0]["evidence"]["origin_time"]).timestamp() - origin)
            <= 30.0
        ]
        if not mine:
            lines.append(f"earthquake {truth}: no alert")
            continue
        first, final = mine[0][0], mine[0][-1]
        after = datetime.fromisoformat(first["detected_at"]).timestamp() - origin
        lines.append(
            f"earthquake {truth}: first alert {after:.1f} s after the origin, "
            f"{_against(first, e)}; final {_against(final, e)}; {len(mine)} event(s)"
        )
    return lines


def _against(alert: dict[str, Any], quake: QuakeEvent) -> str:
    """An earthquake alert's estimate against the scenario's quake."""
    ev = alert["evidence"]
    err = float(distance_km(ev["epicentre_lat"], ev["epicentre_lon"], quake.lat, quake.lon))
    mag = float(ev["magnitude"])
    return (
        f"epicentre {err:.1f} km off, M{mag:.1f} ({mag - quake.magnitude:+.1f}), "
        f"depth {float(ev['depth_km']):.0f} km"
    )


def print_summary(console: Any, settings: Settings, res: RunResult) -> None:
    """The demo's closing tables and checks."""
    from rich.table import Table  # noqa: PLC0415

    summary = Table(title=f"summary of {res.run}")
    summary.add_column("")
    summary.add_column("", justify="right")
    summary.add_row("readings published (broker-acknowledged)", f"{res.report.acknowledged:,}")
    summary.add_row("refused by the broker (ACL/credentials)", f"{res.report.denied:,}")
    summary.add_row("accepted by ingest", f"{res.accepted:,}")
    summary.add_row(
        "dead-lettered", ", ".join(f"{k} {v}" for k, v in sorted(res.refused.items())) or "0"
    )
    summary.add_row("stored in InfluxDB (this run's readings found)", f"{len(res.stored_ids):,}")
    summary.add_row(
        "published over (scenario length)",
        f"{res.publish_s:.0f} s ({res.scenario_s:.0f} s)",
    )
    summary.add_row("everything stored after the last message", f"{res.stored_after_s:.0f} s")
    by_type = Counter(a["msg_type"] for a in res.alerts)
    summary.add_row(
        "alert messages", ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "0"
    )
    # Only what a detector decided: a Cancel a timer issues after the clear hold is not a
    # latency of the pipeline (ops.pipeline.ISSUED_BY).
    latency = alert_latencies(settings, res.alerts)
    lat = percentiles(list(latency.values()))
    if lat:
        summary.add_row(
            f"detector decision -> alert issued ({len(latency)} messages a detector decided)",
            f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms",
        )
    console.print(summary)
    issued = Table(title="alerts issued")
    for col in ("hazard", "area", "severity", "level", "headline", "latency ms"):
        issued.add_column(col)
    for a in res.alerts:
        if a["msg_type"] == "Alert":
            # The ``alert`` point's figure (ms); the message's own times are whole seconds.
            ms = latency.get(a["identifier"])
            issued.add_row(
                a["hazard"],
                a["area"]["desc"][:40],
                a["severity"],
                str(a["level"]),
                a["headline"][:60],
                "-" if ms is None else f"{ms:.0f}",
            )
    console.print(issued)
    for c in res.checks:
        console.print(("[green]ok  [/green]" if c.ok else "[red]FAIL[/red]") + f" {c.text}")
    i = settings.influx
    console.print(
        "\nSee the data: Flux, e.g. "
        f'[cyan]from(bucket: "{i.bucket_derived}") |> range(start: -2d) |> filter(fn: (r) => '
        'r._measurement == "air_quality" and r._field == "aqi")[/cyan]\n'
        f"  at {i.url} (token in {settings.data_dir / 'secrets' / 'influx-token'}); "
        "Grafana: `docker compose up -d` on a host with Docker (dashboards provisioned), "
        "or `civic-iot grafana provision --url ...` for an existing Grafana."
    )
